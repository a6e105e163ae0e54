//! The follower's storage calls and requests as its shells perform them: which [`Command`]s of
//! the [`Replicator`] are storage calls ([`StorageCall`]), how each is made on the library's
//! database (a blocking call: the actor makes it on the blocking pool), how its result goes
//! back to the machine ([`StorageDone::feed`]), and the `FetchEntries` a [`Command::Fetch`]
//! sends ([`fetch_entries`]).
//!
//! The `FollowerActor` (follower/actor.rs) and the whole-device simulator (sim/src/device.rs)
//! both perform the follower's commands with it, so a change of how one is performed reaches
//! both (docs/testing.md, "Simulation").

use std::time::Instant;

use lsync_protocol::{ChainHash, SyncLogEntry, SyncMessage};
use lsync_storage::{
    Applier, Database, LogHead, LogPosition, Membership, RecoveredOrphans, StorageError,
};
use rand::Rng;
use uuid::Uuid;

use super::{committed, BatchOutcome, Command, Replicator, RequestId};

/// The `FetchEntries` of a [`Command::Fetch`]: the entries after `since` (whose chain hash is
/// `since_hash`, when known), in `term`, at most `limit` of them.
pub fn fetch_entries(
    library_id: Uuid,
    term: u64,
    since: LogPosition,
    since_hash: Option<ChainHash>,
    limit: u64,
) -> SyncMessage {
    SyncMessage::FetchEntries {
        library_id,
        term,
        since_sequence: since.sequence,
        since_term: since.term,
        limit,
        since_hash,
    }
}

/// A command of the replicator that is a storage call.
#[derive(Debug, Clone)]
pub enum StorageCall {
    /// [`Command::ReadPosition`].
    ReadPosition,
    /// [`Command::Apply`].
    Apply { id: RequestId, entries: Vec<SyncLogEntry> },
    /// [`Command::ResetForRepair`].
    ResetForRepair,
    /// [`Command::Settle`].
    Settle,
    /// [`Command::RecoverOrphans`].
    RecoverOrphans,
}

/// The result of a [`StorageCall`], to feed to the replicator.
#[derive(Debug)]
pub enum StorageDone {
    /// The log's last entry: its position and chain hash ([`Replicator::on_head`]).
    Position(Result<LogHead, String>),
    /// The batch `id` was applied, or not ([`Replicator::on_applied`]).
    Applied(RequestId, BatchOutcome),
    /// The log was reset for a repair ([`Replicator::on_reset`]).
    Reset(Result<u64, String>),
    /// The membership was settled ([`Replicator::on_settled`]).
    Settled(Result<Option<Membership>, String>),
    /// The stashed entries' orphans were recovered ([`Replicator::on_orphans_recovered`]).
    Orphans(Result<Option<RecoveredOrphans>, String>),
}

fn text<T>(result: Result<T, StorageError>) -> Result<T, String> {
    result.map_err(|e| e.to_string())
}

impl StorageCall {
    /// The storage call `command` is; any other command comes back as `Err`.
    pub fn of(command: Command) -> Result<Self, Box<Command>> {
        Ok(match command {
            Command::ReadPosition => Self::ReadPosition,
            Command::Apply { id, entries } => Self::Apply { id, entries },
            Command::ResetForRepair => Self::ResetForRepair,
            Command::Settle => Self::Settle,
            Command::RecoverOrphans => Self::RecoverOrphans,
            other => return Err(Box::new(other)),
        })
    }

    /// Makes the call on `db` (blocking). A batch applied is one transaction; the commands
    /// that go with a committed batch ([`committed`]: counters, events, the configuration it
    /// put in effect) are handed to `effects` before this returns, so that no shell can
    /// separate a committed batch from them.
    pub fn run(self, db: &Database, library_id: Uuid, effects: impl FnMut(Command)) -> StorageDone {
        let applier = Applier::new(db.clone());
        match self {
            Self::ReadPosition => StorageDone::Position(text(db.head())),
            Self::Apply { id, entries } => {
                let result = applier.apply(&entries);
                let outcome = BatchOutcome::from_storage(&result);
                if let Ok(applied) = result {
                    committed(library_id, applied, &entries).into_iter().for_each(effects);
                }
                StorageDone::Applied(id, outcome)
            }
            Self::ResetForRepair => StorageDone::Reset(text(applier.reset_for_repair())),
            Self::Settle => StorageDone::Settled(text(applier.settle())),
            Self::RecoverOrphans => StorageDone::Orphans(if db.stashed_count().unwrap_or(0) == 0 {
                Ok(None)
            } else {
                text(applier.recover_orphans().map(Some))
            }),
        }
    }

    /// The result of this call when it could not be made at all (the task that made it failed
    /// with `error`): a failure the machine handles as a storage failure.
    pub fn failed(self, error: String) -> StorageDone {
        match self {
            Self::ReadPosition => StorageDone::Position(Err(error)),
            Self::Apply { id, .. } => StorageDone::Applied(id, BatchOutcome::Failed(error)),
            Self::ResetForRepair => StorageDone::Reset(Err(error)),
            Self::Settle => StorageDone::Settled(Err(error)),
            Self::RecoverOrphans => StorageDone::Orphans(Err(error)),
        }
    }
}

impl StorageDone {
    /// Feeds the result to `machine`; what it commands next.
    pub fn feed<R: Rng>(self, machine: &mut Replicator<R>, now: Instant) -> Vec<Command> {
        match self {
            Self::Position(r) => machine.on_head(r, now),
            Self::Applied(id, outcome) => machine.on_applied(id, outcome, now),
            Self::Reset(r) => machine.on_reset(r, now),
            Self::Settled(r) => machine.on_settled(r, now),
            Self::Orphans(r) => machine.on_orphans_recovered(r, now),
        }
    }
}
