//! One simulated device's log and what it derives from it: its configuration in effect (the
//! latest configuration entry of its own log), the voters before the last voter change while
//! it does not know that change is committed, the devices whose removal it applied, and the
//! ordinary writes it holds.
//!
//! Entries are `(term, id)` plus either a [`Configuration`] or a write id; `id` is unique over a
//! run, so two entries are the same entry iff their keys are equal. A write id is given when a
//! leader appends a write of its own and kept when the write is proposed again after a
//! truncation (docs/architecture.md, "Nothing lost across failover"), so one write may be
//! carried by several entries over a run, never by two entries of one log. Sequences start
//! at 1.

use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use lsync_protocol::Configuration;
use lsync_storage::LogPosition;
use uuid::Uuid;

use crate::election::Membership;

/// One log entry.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub term: u64,
    /// Unique over the run: the entry's identity.
    pub id: u64,
    /// A configuration entry's configuration.
    pub config: Option<Rc<Configuration>>,
    /// An ordinary write's id (None for configuration entries): the proposal id of the
    /// product, kept when the write is proposed again.
    pub write: Option<u64>,
}

/// What identifies an entry: `(term, id)`.
pub(super) type Key = (u64, u64);

impl Entry {
    pub fn key(&self) -> Key {
        (self.term, self.id)
    }
}

/// A device's log, its known commit sequence, and the configuration a joiner was given.
#[derive(Debug, Clone, Default)]
pub(super) struct Log {
    entries: Vec<Entry>,
    /// The sequences of the configuration entries, ascending.
    configs: Vec<u64>,
    /// A joiner's configuration, as given with its invitation: `(sequence of the entry that
    /// added it in the leader's log, configuration)`. In effect until the log reaches that
    /// sequence; from then on the log decides.
    given: Option<(u64, Rc<Configuration>)>,
    /// The highest sequence this device knows to be committed (from its leaders' messages, or
    /// its own tracker while it leads). Kept across restarts, like the storage's
    /// `previous_voters` being cleared for good.
    commit: u64,
    /// What `derive` computes from the above, kept up to date by every change.
    derived: Derived,
    /// The sequence of each write id the log holds.
    writes: BTreeMap<u64, u64>,
    /// A write id pushed while the log already held it: `(write, first sequence, second)`.
    doubled: Option<(u64, u64, u64)>,
    /// Every write id this log ever held (the simulator's record, not the device's state).
    ever: BTreeSet<u64>,
    /// Bumped whenever `derived` is computed again.
    generation: u64,
}

/// The configuration in effect, the pending previous voters and the election membership.
#[derive(Debug, Clone, Default)]
struct Derived {
    config: Option<(u64, Rc<Configuration>)>,
    previous: Option<(u64, BTreeSet<Uuid>)>,
    membership: Membership,
}

/// What a follower's log did with a leader's entries.
pub(super) struct Accepted {
    /// The sequence up to which the log now matches the leader's.
    pub matched: u64,
    /// The entries cut from the log (a conflicting suffix), in order.
    pub truncated: Vec<Entry>,
}

/// Why a leader's entries could not be written.
pub(super) enum Refusal {
    /// The log does not hold `(prev_seq, prev_term)`: the leader must back up. `hint` is the
    /// sequence to resend after.
    Mismatch { hint: u64 },
}

impl Log {
    /// A log holding `entries`, of which the first `commit` are known committed.
    pub fn new(entries: Vec<Entry>, commit: u64) -> Self {
        let mut log = Self { commit, ..Self::default() };
        for e in entries {
            log.push(e);
        }
        log
    }

    /// A joiner's empty log with the configuration it was given.
    pub fn joiner(at: u64, config: Rc<Configuration>) -> Self {
        let mut log = Self { given: Some((at, config)), ..Self::default() };
        log.derive();
        log
    }

    pub fn commit(&self) -> u64 {
        self.commit
    }

    /// Raises the known commit sequence to `commit` (never lowers it).
    pub fn set_commit(&mut self, commit: u64) {
        if commit > self.commit {
            self.commit = commit;
            if self.derived.previous.is_some() {
                self.derive();
            }
        }
    }

    pub fn len(&self) -> u64 {
        self.entries.len() as u64
    }

    pub fn entry(&self, seq: u64) -> Option<&Entry> {
        if seq == 0 {
            return None;
        }
        self.entries.get(usize::try_from(seq - 1).ok()?)
    }

    pub fn key(&self, seq: u64) -> Option<Key> {
        self.entry(seq).map(Entry::key)
    }

    /// The term of the entry at `seq` (0 for sequence 0 or beyond the log).
    pub fn term_at(&self, seq: u64) -> u64 {
        self.entry(seq).map_or(0, |e| e.term)
    }

    pub fn last(&self) -> LogPosition {
        LogPosition { term: self.term_at(self.len()), sequence: self.len() }
    }

    /// Entries `from..from + max` (sequences), cloned.
    pub fn slice(&self, from: u64, max: usize) -> Vec<Entry> {
        let start = usize::try_from(from.saturating_sub(1)).unwrap_or(usize::MAX);
        self.entries.iter().skip(start).take(max).cloned().collect()
    }

    /// The sequence of this device's first entry of `term`.
    pub fn first_of_term(&self, term: u64) -> Option<u64> {
        self.entries.iter().position(|e| e.term == term).map(|i| i as u64 + 1)
    }

    pub fn push(&mut self, entry: Entry) {
        let config = entry.config.is_some();
        let seq = self.len() + 1;
        if config {
            self.configs.push(seq);
        }
        if let Some(w) = entry.write {
            self.ever.insert(w);
            if let Some(first) = self.writes.insert(w, seq) {
                self.doubled.get_or_insert((w, first, seq));
            }
        }
        self.entries.push(entry);
        if config || self.given.is_some() {
            self.derive();
        }
    }

    /// Drops every entry after `len` and returns them.
    fn truncate(&mut self, len: u64) -> Vec<Entry> {
        if len >= self.len() {
            return Vec::new();
        }
        let cut = self.entries.split_off(usize::try_from(len).unwrap_or(usize::MAX));
        for w in cut.iter().filter_map(|e| e.write) {
            self.writes.remove(&w);
        }
        self.configs.retain(|s| *s <= len);
        self.derive();
        cut
    }

    /// A power loss: drops every entry after `len` (never below the known commit sequence)
    /// and returns them. Unlike a cut by a leader, the writes lost are not set aside: the
    /// device does not know it lost them.
    pub fn lose_tail(&mut self, len: u64) -> Vec<Entry> {
        self.truncate(len.max(self.commit))
    }

    /// Whether the log holds write `w`.
    pub fn holds(&self, w: u64) -> bool {
        self.writes.contains_key(&w)
    }

    /// Whether the log holds write `w` at or below its known commit sequence.
    pub fn holds_committed(&self, w: u64) -> bool {
        self.writes.get(&w).is_some_and(|s| *s <= self.commit)
    }

    /// A write id pushed while the log already held it: `(write, first sequence, second)`.
    pub fn doubled(&self) -> Option<(u64, u64, u64)> {
        self.doubled
    }

    /// Every write id this log ever held.
    pub fn ever(&self) -> &BTreeSet<u64> {
        &self.ever
    }

    /// The write ids of the log's entries, in log order (a write held twice appears twice).
    pub fn write_ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.entries.iter().filter_map(|e| e.write)
    }

    /// Raft's AppendEntries on a follower: the log must hold `(prev_seq, prev_term)`; then each
    /// entry is skipped if the log holds one of the same term there (the same entry, by log
    /// matching), else the log is cut there and the entry appended. Returns the sequence up to
    /// which the log now matches the leader's (`prev_seq + entries.len()`) with the entries
    /// cut, or why not. `on_write(log, seq, entry)` is called before any change, for the
    /// invariants.
    pub fn accept(
        &mut self,
        prev_seq: u64,
        prev_term: u64,
        entries: &[Entry],
        mut on_write: impl FnMut(&Log, u64, &Entry) -> Result<(), String>,
    ) -> Result<Result<Accepted, Refusal>, String> {
        if prev_seq > self.len() {
            return Ok(Err(Refusal::Mismatch { hint: self.len() }));
        }
        let held = self.term_at(prev_seq);
        if held != prev_term {
            // Back up past the whole conflicting term at once (Raft's usual shortcut; one entry
            // per round trip made a long divergent tail take longer than the drain allows).
            let first = self.first_of_term(held).unwrap_or(prev_seq);
            return Ok(Err(Refusal::Mismatch { hint: first.min(prev_seq).saturating_sub(1) }));
        }
        let mut truncated = Vec::new();
        for (k, e) in entries.iter().enumerate() {
            let seq = prev_seq + 1 + k as u64;
            match self.entry(seq) {
                Some(held) if held.term == e.term => {
                    if held.id != e.id {
                        return Err(format!(
                            "log matching broken at {seq}: {:?} held, {:?} sent",
                            held.key(),
                            e.key()
                        ));
                    }
                }
                _ => {
                    on_write(self, seq, e)?;
                    truncated.extend(self.truncate(seq - 1));
                    self.push(e.clone());
                }
            }
        }
        Ok(Ok(Accepted { matched: prev_seq + entries.len() as u64, truncated }))
    }

    /// The configuration in effect: the latest configuration entry of the log (with its
    /// sequence), or the given one while the log is shorter than its sequence.
    pub fn config(&self) -> Option<(u64, Rc<Configuration>)> {
        self.derived.config.clone()
    }

    /// The last voter change of the log, if it is not known to be committed: `(sequence of the
    /// configuration entry before it, its voters)`. None while a given configuration is in
    /// effect.
    pub fn previous(&self) -> Option<(u64, BTreeSet<Uuid>)> {
        self.derived.previous.clone()
    }

    /// The election membership this device uses: the latest configuration's voters and
    /// learners, with the previous voters while the last voter change is not known committed.
    pub fn membership(&self) -> &Membership {
        &self.derived.membership
    }

    fn derive(&mut self) {
        let config = self.derive_config();
        let previous = self.derive_previous();
        let membership = match &config {
            Some((_, c)) => Membership::new(c.voters(), c.learners())
                .with_previous(previous.as_ref().map(|(_, voters)| voters.clone())),
            None => Membership::default(),
        };
        self.derived = Derived { config, previous, membership };
        self.generation += 1;
    }

    /// Changes whenever the configuration, previous voters or membership may have changed.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    fn derive_config(&self) -> Option<(u64, Rc<Configuration>)> {
        if let Some((at, given)) = &self.given {
            if self.len() < *at {
                return Some((*at, Rc::clone(given)));
            }
        }
        let seq = *self.configs.last()?;
        Some((seq, self.config_at(seq)?))
    }

    fn config_at(&self, seq: u64) -> Option<Rc<Configuration>> {
        self.entry(seq).and_then(|e| e.config.clone())
    }

    fn derive_previous(&self) -> Option<(u64, BTreeSet<Uuid>)> {
        if self.given.as_ref().is_some_and(|(at, _)| self.len() < *at) {
            return None;
        }
        // Walk back to the latest configuration entry whose voters differ from the one before.
        for w in self.configs.windows(2).rev() {
            let (before, after) = (self.config_at(w[0])?, self.config_at(w[1])?);
            let (old, new) = (before.voters(), after.voters());
            if old != new {
                return (w[1] > self.commit).then_some((w[0], old));
            }
        }
        None
    }

    /// The devices whose removal this device applied: members of a configuration entry at or
    /// below its commit sequence that the latest such entry no longer lists.
    pub fn removed(&self) -> BTreeSet<Uuid> {
        let applied: Vec<u64> =
            self.configs.iter().copied().filter(|s| *s <= self.commit).collect();
        let Some(last) = applied.last().and_then(|s| self.config_at(*s)) else {
            return BTreeSet::new();
        };
        let mut ever = BTreeSet::new();
        for s in &applied {
            if let Some(c) = self.config_at(*s) {
                ever.extend(c.members.iter().map(|m| m.device_id));
            }
        }
        ever.retain(|d| !last.contains(*d));
        ever
    }

    /// The configuration entries' sequences.
    pub fn config_sequences(&self) -> &[u64] {
        &self.configs
    }
}
