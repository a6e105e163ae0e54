//! LogCache — on the leader, one per term, shared by every link actor of the library.
//!
//! Followers replicating the same stretch of the log fetch the same entries. Without a cache the
//! leader reads and decodes each response from SQLite once per follower (on the blocking pool).
//! The cache keeps the log in aligned blocks of `block` entries — block `k` holds the sequences
//! `k·block + 1 ..= (k + 1)·block` — each read from SQLite once, with the term of the entry
//! before it. A fetch is answered from one block: a response never crosses a block's end, so a
//! follower's next fetch starts at the next block's first entry, and a cached block answers it
//! without SQLite and without leaving the link actor's thread.
//!
//! Only complete blocks of committed entries are kept. The leader's log only grows while it
//! leads (only a follower's log is ever truncated), and the service makes a new cache whenever
//! it (re)starts the leader's role actors, so a cached block can never be stale.
//!
//! Short-lived: a block is dropped as soon as it has been served to as many fetches as the
//! leader has followers ([`LogCache::set_readers`]); with a single follower nothing is kept.
//! Bounded: at most `max_bytes` of entries (each counted like in a response, see
//! [`crate::link actor`]) — what a follower that stopped fetching leaves behind — the lowest block
//! evicted first (followers move forward, so it is the least likely to be asked for again); a
//! block larger than a quarter of that is served but not kept.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use lsync_protocol::SyncLogEntry;

use crate::limits::MAX_BLOCK;

/// One aligned block of the log.
#[derive(Debug)]
pub struct Block {
    /// The term of the entry before the block's first (0 before sequence 1).
    pub prev_term: u64,
    /// The block's entries, `block` of them, in order.
    pub entries: Vec<SyncLogEntry>,
    bytes: usize,
    /// Fetches answered from this block so far.
    served: AtomicUsize,
}

#[derive(Debug, Default)]
struct Inner {
    /// By block index (`(first sequence − 1) / block`).
    blocks: BTreeMap<u64, Arc<Block>>,
    bytes: usize,
}

/// Counts, for tests and logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub blocks: usize,
    pub bytes: usize,
}

/// The leader's cache of log blocks (see the module docs).
#[derive(Debug)]
pub struct LogCache {
    block: u64,
    max_bytes: usize,
    entry_bytes: fn(&SyncLogEntry) -> usize,
    /// The highest sequence known to be committed (from commits and storage reads).
    last: AtomicU64,
    /// How many followers fetch from this leader: a block served that often is dropped.
    readers: AtomicUsize,
    inner: Mutex<Inner>,
}

impl LogCache {
    /// A cache of blocks of `block` entries (clamped to `1..=MAX_BLOCK`), holding at most
    /// `max_bytes` of entries as counted by `entry_bytes`.
    pub fn new(block: u64, max_bytes: usize, entry_bytes: fn(&SyncLogEntry) -> usize) -> Self {
        Self {
            block: block.clamp(1, MAX_BLOCK),
            max_bytes,
            entry_bytes,
            last: AtomicU64::new(0),
            readers: AtomicUsize::new(0),
            inner: Mutex::new(Inner::default()),
        }
    }

    /// The first and last sequence of the block holding `sequence` (≥ 1).
    pub fn block_of(&self, sequence: u64) -> (u64, u64) {
        let k = sequence.saturating_sub(1) / self.block;
        let first = k * self.block + 1;
        (first, first.saturating_add(self.block - 1))
    }

    /// Records that the log holds at least `sequence`.
    pub fn note_last(&self, sequence: u64) {
        self.last.fetch_max(sequence, Ordering::Relaxed);
    }

    /// The highest sequence known to be committed.
    pub fn last(&self) -> u64 {
        self.last.load(Ordering::Relaxed)
    }

    /// Sets how many followers fetch from this leader (its link actors).
    pub fn set_readers(&self, followers: usize) {
        self.readers.store(followers, Ordering::Relaxed);
    }

    /// Whether a complete block read now would be kept: more than one follower fetches.
    pub fn keeps_blocks(&self) -> bool {
        self.readers.load(Ordering::Relaxed) > 1
    }

    /// The cached block holding `sequence`, if any and if `usable` says it answers the fetch
    /// at hand; the block is dropped from the cache once it has answered as many fetches as
    /// there are followers.
    pub fn get_for(
        &self,
        sequence: u64,
        usable: impl FnOnce(&Block) -> bool,
    ) -> Option<Arc<Block>> {
        let k = sequence.checked_sub(1)? / self.block;
        let mut inner = self.lock();
        let block = inner.blocks.get(&k).filter(|b| usable(b))?.clone();
        let served = block.served.fetch_add(1, Ordering::Relaxed) + 1;
        if served >= self.readers.load(Ordering::Relaxed) {
            inner.blocks.remove(&k);
            inner.bytes -= block.bytes;
        }
        Some(block)
    }

    /// Builds the block starting at `first` from `rows`: the entry before it (absent when
    /// `first` is 1) followed by the block's entries. `None` unless `rows` are exactly that, in
    /// order. Kept if it fits (see the module docs); returned either way.
    pub fn insert(&self, first: u64, mut rows: Vec<SyncLogEntry>) -> Option<Arc<Block>> {
        let (start, end) = self.block_of(first);
        if start != first {
            return None;
        }
        let prev_term = if first == 1 { 0 } else { rows.first()?.term };
        let skip = usize::from(first != 1);
        let expected = (first..=end).zip(rows.iter().skip(skip)).all(|(s, e)| e.sequence == s);
        if !expected || rows.len() - skip != usize::try_from(self.block).ok()? {
            return None;
        }
        if first != 1 && rows[0].sequence != first - 1 {
            return None;
        }
        rows.drain(..skip);
        let bytes = rows.iter().map(self.entry_bytes).sum();
        // The fetch that read it is its first.
        let block =
            Arc::new(Block { prev_term, entries: rows, bytes, served: AtomicUsize::new(1) });
        self.note_last(end);
        if bytes > self.max_bytes / 4 || !self.keeps_blocks() {
            return Some(block);
        }
        let k = (first - 1) / self.block;
        let mut inner = self.lock();
        if inner.blocks.contains_key(&k) {
            return Some(block);
        }
        while inner.bytes + bytes > self.max_bytes {
            let Some((_, old)) = inner.blocks.pop_first() else { break };
            inner.bytes -= old.bytes;
        }
        inner.bytes += bytes;
        inner.blocks.insert(k, block.clone());
        Some(block)
    }

    /// [`Self::get_for`] a fetch the block answers whatever it is.
    pub fn get(&self, sequence: u64) -> Option<Arc<Block>> {
        self.get_for(sequence, |_| true)
    }

    /// How much the cache holds.
    pub fn stats(&self) -> CacheStats {
        let inner = self.lock();
        CacheStats { blocks: inner.blocks.len(), bytes: inner.bytes }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The critical sections cannot panic half-way; a poisoned lock still holds a
        // consistent map.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Block {
    /// The term of the entry at `sequence`, for `first − 1 ..= last` of this block (`first` =
    /// the block's first sequence).
    pub fn term_at(&self, sequence: u64) -> Option<u64> {
        let first = self.entries.first()?.sequence;
        if sequence.checked_add(1) == Some(first) {
            return Some(self.prev_term);
        }
        let i = usize::try_from(sequence.checked_sub(first)?).ok()?;
        self.entries.get(i).map(|e| e.term)
    }

    /// [`Self::slice`] as a vector: moved out when nobody else holds the block (it was not
    /// kept in the cache), cloned otherwise.
    pub fn into_vec(self: Arc<Self>, from: u64, to: u64) -> Vec<SyncLogEntry> {
        match Arc::try_unwrap(self) {
            Ok(block) => {
                let range = block.range(from, to);
                let mut entries = block.entries;
                entries.truncate(range.end);
                entries.drain(..range.start);
                entries
            }
            Err(shared) => shared.slice(from, to).to_vec(),
        }
    }

    /// The entries from `from` to at most `to` (both inclusive); empty when `to < from` or
    /// the range misses the block.
    pub fn slice(&self, from: u64, to: u64) -> &[SyncLogEntry] {
        &self.entries[self.range(from, to)]
    }

    /// Indices of the entries with sequences in `from..=to`, clamped to the block.
    fn range(&self, from: u64, to: u64) -> std::ops::Range<usize> {
        let Some(first) = self.entries.first().map(|e| e.sequence) else { return 0..0 };
        let len = self.entries.len();
        let index = |s: u64| usize::try_from(s.saturating_sub(first)).map_or(len, |i| i.min(len));
        if to < from || to < first {
            return 0..0;
        }
        let lo = index(from);
        let hi = index(to).saturating_add(1).min(len);
        lo.min(hi)..hi
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::entry;

    fn bytes(e: &SyncLogEntry) -> usize {
        e.data.len() + 64
    }

    /// Entries of 100 counted bytes, the term changing every 5 sequences.
    fn rows(from: u64, to: u64) -> Vec<SyncLogEntry> {
        (from..=to).map(|s| SyncLogEntry { term: s / 5 + 1, ..entry(s, 36) }).collect()
    }

    #[test]
    fn blocks_are_aligned() {
        let c = LogCache::new(100, 1 << 20, bytes);
        assert_eq!(c.block_of(1), (1, 100));
        assert_eq!(c.block_of(100), (1, 100));
        assert_eq!(c.block_of(101), (101, 200));
        assert_eq!(LogCache::new(0, 1, bytes).block_of(7), (7, 7), "a block is at least one entry");
        assert_eq!(LogCache::new(u64::MAX, 1, bytes).block_of(1), (1, MAX_BLOCK));
    }

    #[test]
    fn a_block_is_kept_only_when_complete_and_in_order() {
        let c = LogCache::new(10, 1 << 20, bytes);
        c.set_readers(100);
        assert!(c.insert(1, rows(1, 9)).is_none(), "incomplete");
        assert!(c.insert(11, rows(11, 20)).is_none(), "the entry before the block is missing");
        assert!(c.insert(5, rows(4, 14)).is_none(), "not aligned");
        let mut shuffled = rows(10, 20);
        shuffled.swap(3, 4);
        assert!(c.insert(11, shuffled).is_none(), "out of order");
        assert_eq!(c.stats().blocks, 0);

        let first = c.insert(1, rows(1, 10)).expect("block 1..=10");
        assert_eq!(first.prev_term, 0);
        let b = c.insert(11, rows(10, 20)).expect("block 11..=20");
        assert_eq!(b.entries.len(), 10);
        assert_eq!(b.prev_term, 3, "the term of entry 10");
        assert_eq!(b.term_at(10), Some(3));
        assert_eq!(b.term_at(14), Some(3));
        assert_eq!(b.term_at(15), Some(4));
        assert_eq!(b.term_at(21), None);
        assert_eq!(b.term_at(9), None);
        assert_eq!(
            b.slice(15, 30).iter().map(|e| e.sequence).collect::<Vec<_>>(),
            [15, 16, 17, 18, 19, 20]
        );
        assert_eq!(c.get(20).unwrap().entries[0].sequence, 11);
        assert!(c.get(21).is_none());
        assert!(c.get(0).is_none());
        assert_eq!(c.last(), 20, "a complete block proves its entries committed");
        assert_eq!(c.stats().blocks, 2);
    }

    #[test]
    fn an_empty_or_outside_range_yields_no_entries() {
        let c = LogCache::new(10, 1 << 20, bytes);
        c.set_readers(1);
        let seqs = |v: &[SyncLogEntry]| v.iter().map(|e| e.sequence).collect::<Vec<_>>();
        let b = c.insert(11, rows(10, 20)).unwrap();
        assert!(b.slice(15, 14).is_empty(), "to < from");
        assert!(b.slice(5, 8).is_empty(), "before the block");
        assert!(b.slice(21, 30).is_empty(), "after the block");
        assert_eq!(seqs(b.slice(5, 12)), [11, 12], "clamped to the block");
        assert_eq!(seqs(b.slice(20, u64::MAX)), [20]);
        assert!(b.clone().into_vec(15, 14).is_empty(), "shared, to < from");
        assert_eq!(b.term_at(u64::MAX), None);
        assert!(b.into_vec(15, 14).is_empty(), "owned, to < from");
    }

    #[test]
    fn memory_is_bounded_oldest_block_first() {
        // 10 entries of 100 bytes = 1,000 bytes per block; room for 4.
        let c = LogCache::new(10, 4_500, bytes);
        c.set_readers(3);
        for k in 0..6u64 {
            let first = k * 10 + 1;
            c.insert(first, rows(first.max(2) - 1, first + 9)).unwrap();
            assert!(c.stats().bytes <= 4_500);
        }
        assert_eq!(c.stats(), CacheStats { blocks: 4, bytes: 4_000 });
        assert!(c.get(20).is_none(), "the oldest blocks went first");
        assert!(c.get(21).is_some() && c.get(60).is_some());

        // A block larger than a quarter of the bound is served but not kept.
        let small = LogCache::new(10, 3_000, bytes);
        small.set_readers(3);
        assert!(small.insert(1, rows(1, 10)).is_some());
        assert_eq!(small.stats().blocks, 0);
    }

    #[test]
    fn a_block_goes_once_every_follower_had_it() {
        let c = LogCache::new(10, 1 << 20, bytes);
        c.set_readers(3);
        c.insert(1, rows(1, 10)).unwrap(); // the first follower's fetch read it
        assert!(c.get(5).is_some(), "second follower");
        assert_eq!(c.stats().blocks, 1);
        assert!(c.get(10).is_some(), "third follower");
        assert_eq!(c.stats(), CacheStats::default(), "nobody else will ask");
        assert!(c.get(1).is_none());
        c.insert(21, rows(20, 30)).unwrap();
        assert!(c.get_for(25, |_| false).is_none(), "a block that cannot answer is not counted");
        assert!(c.get_for(25, |_| false).is_none());
        assert!(c.get(25).is_some());
        assert_eq!(c.stats().blocks, 1);
        assert!(c.get(30).is_some());
        assert_eq!(c.stats(), CacheStats::default());

        // With one follower nobody would ask again: nothing is kept (and nothing is copied).
        c.set_readers(1);
        let b = c.insert(11, rows(10, 20)).expect("still served");
        let held = c.insert(1, rows(1, 10)).unwrap();
        let shared = held.clone(); // somebody else still holds this one
        for (block, from, to) in [(b, 15, 99), (held, 1, 3)] {
            let want: Vec<_> = block.slice(from, to).to_vec();
            assert_eq!(block.into_vec(from, to), want);
        }
        drop(shared);
        assert_eq!(c.stats(), CacheStats::default());
        assert_eq!(c.last(), 30, "the highest block seen");
    }
}
