//! Serving a follower's requests from the leader's log: plain storage and log-cache reads, no
//! actor state, no decisions about the follower (those are [`super::link`]'s). The
//! [`LinkActor`](super::link_actor::LinkActor) performs a link's
//! [`Serve`](super::link::Command::Serve) with [`serve_cached`] on its own thread when the log
//! cache holds the block, else with [`serve`] on the blocking pool.

use lsync_protocol::{
    chain_hash, entry_bytes, ChainHash, ErrorCode, SyncLogEntry, SyncMessage, SyncRole,
    ENVELOPE_BYTES,
};
use lsync_storage::{Database, StorageError, SyncLog};
use uuid::Uuid;

use super::context::LinkContext;
use crate::fencing::{fence, not_leader_of, stale_term, Verdict};
use crate::log_cache::Block;
use crate::metrics::Metrics;

/// Answers one follower request from the leader's log. Pure storage reads; no actor state.
pub fn serve(
    db: &Database,
    cx: &LinkContext,
    msg: SyncMessage,
) -> Result<SyncMessage, StorageError> {
    let library_id = cx.library_id;
    let term = cx.term;
    let commit_sequence = cx.leader.commit_sequence();
    db.with_reader(|conn| {
        let head = SyncLog::head(conn)?;
        let last = head.position;
        let sync_required = |reason| SyncMessage::SyncRequired {
            library_id,
            term,
            reason,
            leader_last_sequence: last.sequence,
        };
        Ok(match msg {
            SyncMessage::FetchEntries {
                term: their,
                since_sequence,
                since_term,
                limit,
                since_hash,
                ..
            } => {
                if fence(SyncRole::Leader, their, term).is_newer() {
                    not_leader_of(library_id, their, term)
                } else if limit == 0 {
                    SyncMessage::error(
                        library_id,
                        ErrorCode::BadRequest,
                        "limit must be at least 1",
                    )
                } else if let Some(reason) =
                    divergence(conn, last, since_sequence, since_term, since_hash)?
                {
                    sync_required(reason)
                } else {
                    let (mut entries, cached) =
                        read_through(conn, cx, last, since_sequence, limit)?;
                    let counter = if cached {
                        &cx.metrics.fetches_served_cached
                    } else {
                        &cx.metrics.fetches_served_storage
                    };
                    Metrics::add(counter, 1);
                    cap_bytes(&mut entries, cx.max_response_bytes);
                    if let Some(refusal) = frame_refusal(cx, &entries) {
                        return Ok(refusal);
                    }
                    let served_to = entries.last().map_or(since_sequence, |e| e.sequence);
                    SyncMessage::EntriesResponse {
                        commit_sequence,
                        library_id,
                        term,
                        has_more: served_to < last.sequence,
                        entries,
                        leader_last_sequence: last.sequence,
                    }
                }
            }
            SyncMessage::Heartbeat {
                term: their, current_sequence, last_term, last_hash, ..
            } => {
                if fence(SyncRole::Leader, their, term).is_newer() {
                    not_leader_of(library_id, their, term)
                } else if let Some(reason) =
                    divergence(conn, last, current_sequence, last_term, last_hash)?
                {
                    sync_required(reason)
                } else {
                    leader_heartbeat(library_id, term, last, Some(head.hash), commit_sequence)
                }
            }
            SyncMessage::Acknowledge { up_to_sequence, .. } => {
                if up_to_sequence > last.sequence {
                    SyncMessage::error(
                        library_id,
                        ErrorCode::BadRequest,
                        format!(
                            "acknowledged {up_to_sequence} beyond the last sequence {}",
                            last.sequence
                        ),
                    )
                } else {
                    leader_heartbeat(library_id, term, last, Some(head.hash), commit_sequence)
                }
            }
            SyncMessage::NewEntries { term: their, .. }
                if fence(SyncRole::Leader, their, term) == Verdict::Stale =>
            {
                stale_term(library_id, "NewEntries", their, term, cx.leader_device)
            }
            SyncMessage::NewEntries { .. } => SyncMessage::error(
                library_id,
                ErrorCode::BadRequest,
                "this device leads the library; only a leader sends NewEntries",
            ),
            other => SyncMessage::error(
                library_id,
                ErrorCode::BadRequest,
                format!("{} is a response, not a request", other.kind()),
            ),
        })
    })
}

/// Answers a `FetchEntries` from the log cache when the block holding its first entry is cached
/// and the follower's entry at `since_sequence` has the leader's term — and, when the fetch
/// names one, the leader's chain hash (checked by the link of the entry after it); `None`
/// otherwise (the request then goes to [`serve`], which answers whatever it is). Same answer as [`serve`]'s, except that
/// `leader_last_sequence` may be a few commits old (as if read a moment earlier).
pub fn serve_cached(cx: &LinkContext, msg: &SyncMessage) -> Option<SyncMessage> {
    let SyncMessage::FetchEntries {
        term: their,
        since_sequence,
        since_term,
        limit,
        since_hash,
        ..
    } = *msg
    else {
        return None;
    };
    if their != cx.term || limit == 0 {
        return None;
    }
    let first = since_sequence.checked_add(1)?;
    let block = cx.cache.get_for(first, |b| {
        b.term_at(since_sequence) == Some(since_term)
            && since_hash.is_none_or(|h| chain_continues(b, since_sequence, &h))
    })?;
    let (_, end) = cx.cache.block_of(first);
    let upto = end.min(since_sequence.saturating_add(limit.min(cx.max_entries_per_response)));
    let mut entries = block.slice(first, upto).to_vec();
    cap_bytes(&mut entries, cx.max_response_bytes);
    if let Some(refusal) = frame_refusal(cx, &entries) {
        return Some(refusal);
    }
    let last = cx.cache.last().max(end);
    let served_to = entries.last().map_or(since_sequence, |e| e.sequence);
    Some(SyncMessage::EntriesResponse {
        commit_sequence: cx.leader.commit_sequence(),
        library_id: cx.library_id,
        term: cx.term,
        has_more: served_to < last,
        entries,
        leader_last_sequence: last,
    })
}

/// The entries after `since` for a response (before the byte cap): at most `limit` (capped at
/// `max_entries_per_response`) and never past the end of `since + 1`'s cache block, so that a
/// follower's next fetch starts a block. When several followers fetch, a complete block is read
/// whole (with the entry before it, for its term) and kept in the cache for the others; the
/// log's last, incomplete block, and every block when one follower fetches, is read as asked
/// and not kept. Also says whether the entries came from the cache.
fn read_through(
    conn: &mut diesel::SqliteConnection,
    cx: &LinkContext,
    last: lsync_storage::LogPosition,
    since: u64,
    limit: u64,
) -> Result<(Vec<SyncLogEntry>, bool), StorageError> {
    cx.cache.note_last(last.sequence);
    let first = since.saturating_add(1);
    let (start, end) = cx.cache.block_of(first);
    let upto = end.min(since.saturating_add(limit.min(cx.max_entries_per_response)));
    if end <= last.sequence && cx.cache.keeps_blocks() {
        // Requests are served one at a time on the reader connection: another follower's
        // request may have read this block while this one waited for the connection.
        if let Some(block) = cx.cache.get(first) {
            return Ok((block.slice(first, upto).to_vec(), true));
        }
        let rows = SyncLog::fetch_range(conn, start.saturating_sub(1).max(1), end)?;
        if let Some(block) = cx.cache.insert(start, rows) {
            return Ok((block.into_vec(first, upto), false));
        }
    }
    Ok((SyncLog::fetch_since(conn, since, upto.saturating_sub(since))?, false))
}

/// Keeps the longest prefix of `entries` whose payloads fit in `max_bytes` (at least one entry,
/// so a follower always progresses), keeping every response well inside the frame limit.
/// The answer to a fetch whose first entry cannot travel in a frame of this device's limit
/// (`cx.max_frame`) even alone, if it cannot: `Error(Internal)` naming the entry, the sizes and
/// the setting to raise, logged as an error. Sending it would fail to encode and break the
/// stream, and the follower would retry in silence. Only an entry committed under a larger
/// limit (another device's, or this device's before its `network.max_frame_bytes` was
/// lowered) can be that large: a change is at most half the frame where it is committed.
pub fn frame_refusal(cx: &LinkContext, entries: &[SyncLogEntry]) -> Option<SyncMessage> {
    let [entry] = entries else { return None };
    let bytes = entry_bytes(entry).saturating_add(ENVELOPE_BYTES);
    if bytes <= cx.max_frame {
        return None;
    }
    let reason = format!(
        "entry {} is {bytes} bytes with its envelope, over this device's frame limit of {} \
         bytes: raise network.max_frame_bytes (every device of a library should use the same)",
        entry.sequence, cx.max_frame
    );
    tracing::error!(library_id = %cx.library_id, "cannot serve a fetch: {reason}");
    Some(SyncMessage::error(cx.library_id, ErrorCode::Internal, reason))
}

fn cap_bytes(entries: &mut Vec<SyncLogEntry>, max_bytes: usize) {
    let mut total = 0usize;
    let keep = entries
        .iter()
        .position(|e| {
            total += entry_bytes(e);
            total > max_bytes
        })
        .unwrap_or(entries.len())
        .max(1);
    entries.truncate(keep);
}

/// The leader's `Heartbeat` of `term`: its last position, that entry's chain hash (when known)
/// and its commit sequence. Sent by the link actor (and the simulator's device), and the answer
/// to a follower's heartbeat.
pub fn leader_heartbeat(
    library_id: Uuid,
    term: u64,
    last: lsync_storage::LogPosition,
    last_hash: Option<ChainHash>,
    commit_sequence: u64,
) -> SyncMessage {
    SyncMessage::Heartbeat {
        commit_sequence,
        features: lsync_protocol::FEATURE_VERSION,
        library_id,
        term,
        current_sequence: last.sequence,
        last_term: last.term,
        role: SyncRole::Leader,
        last_hash,
    }
}

/// The answer to a request whose serving failed in storage: `Error(Internal)`.
pub fn storage_failure(library_id: Uuid, error: &StorageError) -> SyncMessage {
    SyncMessage::error(library_id, ErrorCode::Internal, format!("storage error: {error}"))
}

/// Whether the block's entry at `since` — the entry before the block's first, or one of its
/// own — has the chain hash `hash`: the block's entry after `since` carries the leader's hash
/// there, which is the link after `hash` exactly when `hash` is the leader's at `since`
/// (docs/protocol.md, "The hash chain"). `false` when the block cannot tell.
fn chain_continues(block: &Block, since: u64, hash: &ChainHash) -> bool {
    let Some(first) = block.entries.first() else { return false };
    let Some(i) = since.checked_add(1).and_then(|next| next.checked_sub(first.sequence)) else {
        return false;
    };
    let Some(next) = usize::try_from(i).ok().and_then(|i| block.entries.get(i)) else {
        return false;
    };
    next.hash.is_some_and(|carried| carried == chain_hash(hash, next))
}

/// Whether a follower whose log ends at `(term, sequence)` — with chain hash `hash` there, when
/// it said — can continue from the leader's log: the leader holds an entry at `sequence`, of
/// that term, and (when `hash` is present) with that hash. A hash that differs is a divergence
/// whatever the terms say: a (sequence, term) reused by a leader that lost its last writes
/// (docs/protocol.md, "The hash chain"). `None` if it can continue, else why not.
fn divergence(
    conn: &mut diesel::SqliteConnection,
    leader_last: lsync_storage::LogPosition,
    sequence: u64,
    term: u64,
    hash: Option<ChainHash>,
) -> Result<Option<String>, StorageError> {
    if sequence > leader_last.sequence {
        return Ok(Some(format!(
            "follower log ends at {sequence}, beyond the leader's last sequence {}",
            leader_last.sequence
        )));
    }
    if sequence != 0 {
        match SyncLog::term_at(conn, sequence)? {
            Some(t) if t == term => {}
            Some(t) => {
                return Ok(Some(format!(
                    "follower entry {sequence} has term {term}, the leader's has term {t}: logs \
                     diverged"
                )))
            }
            None => return Ok(Some(format!("the leader no longer holds entry {sequence}"))),
        }
    }
    let Some(theirs) = hash else { return Ok(None) };
    match SyncLog::hash_at(conn, sequence)? {
        Some(ours) if ours == theirs => Ok(None),
        Some(ours) => Ok(Some(format!(
            "follower entry {sequence} has chain hash {}, the leader's has {}: logs diverged",
            theirs.short(),
            ours.short()
        ))),
        None => Ok(Some(format!("the leader no longer holds entry {sequence}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log_cache::LogCache;
    use crate::testkit::{entry, leader_db, link_context, ScriptedTransport};

    /// A leader's database with 6 entries of term 1 and a link context over it.
    fn leader() -> (tempfile::TempDir, Database, LinkContext) {
        let dir = tempfile::tempdir().unwrap();
        let lib = Uuid::from_u128(7);
        let (db, _tm) = leader_db(&dir, lib, 6);
        let transport = ScriptedTransport::new(|_, _| Err(crate::NetworkError::Closed));
        let cx = link_context(lib, db.clone(), transport);
        (dir, db, cx)
    }

    fn fetch(cx: &LinkContext, since: u64, since_hash: Option<ChainHash>) -> SyncMessage {
        SyncMessage::FetchEntries {
            library_id: cx.library_id,
            term: 1,
            since_sequence: since,
            since_term: 1,
            limit: 100,
            since_hash,
        }
    }

    fn heartbeat(cx: &LinkContext, at: u64, last_hash: Option<ChainHash>) -> SyncMessage {
        SyncMessage::Heartbeat {
            commit_sequence: 0,
            features: lsync_protocol::FEATURE_VERSION,
            library_id: cx.library_id,
            term: 1,
            current_sequence: at,
            last_term: 1,
            role: SyncRole::Follower,
            last_hash,
        }
    }

    #[test]
    fn a_fetch_naming_the_leaders_hash_is_served() {
        let (_dir, db, cx) = leader();
        let hash = db.hash_at(3).unwrap();
        let answer = serve(&db, &cx, fetch(&cx, 3, hash)).unwrap();
        let SyncMessage::EntriesResponse { entries, .. } = answer else {
            panic!("not served: {answer:?}")
        };
        assert_eq!(entries.first().map(|e| e.sequence), Some(4));
    }

    #[test]
    fn a_fetch_naming_another_hash_is_answered_sync_required() {
        let (_dir, db, cx) = leader();
        let ours = db.hash_at(3).unwrap().unwrap();
        let theirs = ChainHash([9; 32]);
        let last = db.last_position().unwrap().sequence;
        assert_eq!(
            serve(&db, &cx, fetch(&cx, 3, Some(theirs))).unwrap(),
            SyncMessage::SyncRequired {
                library_id: cx.library_id,
                term: 1,
                reason: format!(
                    "follower entry 3 has chain hash {}, the leader's has {}: logs diverged",
                    theirs.short(),
                    ours.short()
                ),
                leader_last_sequence: last,
            }
        );
    }

    /// An entry too large for this device's frame even alone (committed under a larger
    /// limit) is answered with an error naming it, not sent (which would break the stream);
    /// the entries before it are served.
    #[test]
    fn an_entry_too_large_for_the_frame_is_refused_with_an_error_naming_it() {
        let (_dir, db, mut cx) = leader();
        let entry_4 = entry_bytes(&db.fetch_range(3, 4).unwrap()[0]);
        cx.max_frame = ENVELOPE_BYTES + entry_4 - 1;
        cx.max_response_bytes = entry_4 - 1;
        match serve(&db, &cx, fetch(&cx, 3, None)).unwrap() {
            SyncMessage::Error { code: ErrorCode::Internal, message, .. } => {
                assert!(message.contains("entry 4 is") && message.contains("max_frame_bytes"))
            }
            other => panic!("{other:?}"),
        }
        // the same cap with room for the entry in the frame: served alone
        cx.max_frame = ENVELOPE_BYTES + entry_4;
        let SyncMessage::EntriesResponse { entries, has_more, .. } =
            serve(&db, &cx, fetch(&cx, 3, None)).unwrap()
        else {
            panic!("not served")
        };
        assert_eq!((entries.len(), has_more), (1, true));
    }

    #[test]
    fn a_follower_heartbeat_naming_another_hash_is_answered_sync_required() {
        let (_dir, db, cx) = leader();
        let answer = serve(&db, &cx, heartbeat(&cx, 3, Some(ChainHash([9; 32])))).unwrap();
        assert!(matches!(answer, SyncMessage::SyncRequired { .. }), "{answer:?}");
    }

    #[test]
    fn the_leaders_heartbeat_names_its_last_hash() {
        let (_dir, db, cx) = leader();
        let head = db.head().unwrap();
        let answer = serve(&db, &cx, heartbeat(&cx, 3, db.hash_at(3).unwrap())).unwrap();
        assert_eq!(answer, leader_heartbeat(cx.library_id, 1, head.position, Some(head.hash), 0));
    }

    #[test]
    fn a_cached_block_checks_the_hash_before_it_by_its_first_entrys_link() {
        let (_dir, db, _cx) = leader();
        let cache = LogCache::new(2, 1 << 20, entry_bytes);
        // Block 3..=4, read with the entry before it.
        let block = cache.insert(3, db.fetch_range(2, 4).unwrap()).unwrap();
        let at = |s| db.hash_at(s).unwrap().unwrap();
        assert!(chain_continues(&block, 2, &at(2)), "the entry before the block");
        assert!(chain_continues(&block, 3, &at(3)), "an entry of the block");
        assert!(!chain_continues(&block, 2, &at(1)));
        assert!(!chain_continues(&block, 3, &ChainHash([9; 32])));
        assert!(!chain_continues(&block, 4, &at(4)), "the block cannot tell: no next entry");
    }

    #[test]
    fn byte_cap_keeps_at_least_one_entry() {
        let sized = |n: usize| entry(1, n);
        let mut v = vec![sized(600), sized(600), sized(600)];
        cap_bytes(&mut v, 1_000);
        assert_eq!(v.len(), 1);
        let mut v = vec![sized(5_000)];
        cap_bytes(&mut v, 1_000);
        assert_eq!(v.len(), 1, "a single large entry still goes");
        let mut v = vec![sized(10), sized(10)];
        cap_bytes(&mut v, 1_000);
        assert_eq!(v.len(), 2);
    }
}
