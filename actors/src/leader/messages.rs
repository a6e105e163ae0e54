//! The data the leader's pieces pass each other: what the leader's core hands every follower
//! link ([`NewCommit`]), what a link hands the core ([`FollowerProgress`]), and what the core
//! answers the SyncService about a membership change ([`ConfigOutcome`], [`ConfigError`]) and
//! its status ([`LeaderStatus`]); what it reports on its own goes through
//! [`crate::messages::LeaderReport`]. Plain data: the pure machines ([`super::link`],
//! [`super::core`]) take and return them, the actors ([`super::link_actor`], [`super::actor`])
//! carry them.

use std::sync::Arc;

use actix::prelude::*;
use lsync_protocol::{ChainHash, SyncLogEntry};
use lsync_storage::{CommitEvent, Membership};
use uuid::Uuid;

use crate::leader::membership::{AckPosition, FollowerPosition};
use crate::window::Announce;

/// One commit, as the leader's core hands it to every link actor.
#[derive(Message, Debug, Clone, PartialEq, Eq)]
#[rtype(result = "()")]
pub struct NewCommit {
    /// The committed range.
    pub range: Announce,
    /// The term of the entry before the range.
    pub prev_term: u64,
    /// The chain hash of the entry before the range (`NewEntries.prev_hash`), when known.
    pub prev_hash: Option<ChainHash>,
    /// The committed entries, when the commit was small (see
    /// [`lsync_storage::COMMIT_EVENT_MAX_ENTRIES`]): a link actor sends them inside `NewEntries`.
    pub entries: Option<Arc<[SyncLogEntry]>>,
}

impl NewCommit {
    /// The commit a transaction manager's [`CommitEvent`] announces, as the leader actor (and
    /// the simulator's device) hands it to every link.
    pub fn of(event: &CommitEvent) -> Self {
        NewCommit {
            range: Announce {
                from_sequence: event.first_sequence,
                to_sequence: event.last_sequence,
                term: event.term,
            },
            prev_term: event.prev_term,
            prev_hash: Some(event.prev_hash),
            entries: event.entries.clone(),
        }
    }
}

/// The chain hashes of the leader's own entries that `event` tells, `(sequence, hash)`: the one
/// before its range, and every entry's when the event carries them (small commits). What the
/// leader actor (and the simulator's device) hand the core before the event
/// ([`super::core::LeaderCore::note_hashes`]); for a commit without entries the shell reads the
/// last one's from storage.
pub fn commit_hashes(event: &CommitEvent) -> Vec<(u64, ChainHash)> {
    let before = event.first_sequence.checked_sub(1).map(|s| (s, event.prev_hash));
    let carried = event.entries.iter().flat_map(|entries| entries.iter());
    before.into_iter().chain(carried.filter_map(|e| Some((e.sequence, e.hash?)))).collect()
}

/// Whether `event`'s entries end with its last one's chain hash (else [`commit_hashes`] lacks
/// it: a commit too large to carry its entries).
pub fn carries_last_hash(event: &CommitEvent) -> bool {
    let last = event.entries.as_ref().and_then(|entries| entries.last());
    last.is_some_and(|e| e.sequence == event.last_sequence && e.hash.is_some())
}

/// A follower reported its position (an acknowledgement, the answer to `NewEntries`, a
/// heartbeat); its link checked its term first.
#[derive(Message, Debug, Clone, Copy, PartialEq, Eq)]
#[rtype(result = "()")]
pub struct FollowerProgress {
    /// The follower.
    pub device: Uuid,
    /// What it reported.
    pub ack: AckPosition,
    /// The chain hash of its entry at `ack.sequence`, when it said (`last_hash`): the
    /// position counts toward the commit sequence only if it is the leader's there.
    pub hash: Option<ChainHash>,
    /// The library feature version it supports, when it said (heartbeats).
    pub features: Option<u32>,
}

/// The outcome of a configuration change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigOutcome {
    /// The configuration entry that carries the change (or the one in effect, when the
    /// change was already made).
    pub config_sequence: u64,
    /// Whether it is committed (held by the majorities the commit rule needs).
    pub committed: bool,
}

/// Why a configuration change was not made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The change cannot be made (e.g. removing the last voter, an unknown device).
    #[error("{0}")]
    Invalid(String),
    /// The previous change did not commit in time (or too many changes wait): nothing was
    /// written; ask again later.
    #[error("a configuration change is pending: {0}; retry later")]
    Pending(String),
    /// Writing the entry failed (e.g. this device just stopped leading).
    #[error("cannot write the configuration entry: {0}")]
    Storage(String),
}

/// The leadership as its core sees it, for status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderStatus {
    /// The commit sequence.
    pub commit_sequence: u64,
    /// The leader's first entry of its term, once written.
    pub term_start: Option<u64>,
    /// The configuration in effect.
    pub membership: Membership,
    /// Each follower's reported and matched positions.
    pub positions: Vec<FollowerPosition>,
    /// Changes waiting for the previous one to commit.
    pub queued_changes: usize,
}
