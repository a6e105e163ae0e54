//! [`Applier`]: the follower's write path.

use lsync_protocol::{ChangeType, SyncLogEntry};

use crate::database::Database;
use crate::error::{Result, StorageError};
use crate::local_jobs::{self, LocalJob};
use crate::sync_log::{LogPosition, SyncLog};
use crate::sync_state;

/// What [`Applier::apply`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyOutcome {
    /// Entries newly written to the local log.
    pub applied: u64,
    /// Entries already present with the same term (duplicates, no-ops).
    pub skipped: u64,
    /// The position of the last local entry after the batch.
    pub last: LogPosition,
    /// Local jobs queued by the batch's bulk entries, in log order.
    pub bulk_jobs: Vec<LocalJob>,
}

/// The follower's write path: applies the leader's entries, each batch in ONE transaction.
#[derive(Debug, Clone)]
pub struct Applier {
    db: Database,
}

impl Applier {
    /// An applier writing to `db`.
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    /// The database written to.
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Applies a batch of entries in ONE immediate transaction, or nothing at all.
    ///
    /// Entries at or below the local last sequence must have the local term there (duplicates,
    /// counted in `skipped`); the others must continue the log contiguously from last + 1.
    /// Insert/Update upsert the row with the entry's version, Delete removes it if present,
    /// Bulk queues a [`LocalJob`] (no model rows). Each entry is copied identically into the
    /// local log and `last_synced_sequence` is set to the new last sequence. An empty batch is
    /// `Ok` with zero counts.
    ///
    /// # Errors
    /// Nothing of the batch is applied on any error: [`StorageError::UnknownModel`] if any
    /// entry's model type is not registered, [`StorageError::Diverged`] if an overlapping
    /// entry has another term, [`StorageError::Gap`], [`StorageError::NotInitialized`].
    pub fn apply(&self, entries: &[SyncLogEntry]) -> Result<ApplyOutcome> {
        if entries.is_empty() {
            return Ok(ApplyOutcome { last: self.db.last_position()?, ..ApplyOutcome::default() });
        }
        let registry = self.db.registry();
        let mut handlers = Vec::with_capacity(entries.len());
        for entry in entries {
            let handler = registry
                .handler(&entry.model_type)
                .ok_or_else(|| StorageError::UnknownModel(entry.model_type.clone()))?;
            handlers.push(handler);
        }
        let outcome = self.db.write(|conn| {
            let start = SyncLog::last(conn)?;
            let mut outcome = ApplyOutcome { last: start, ..ApplyOutcome::default() };
            let mut next = start.sequence + 1;
            for (entry, handler) in entries.iter().zip(&handlers) {
                if outcome.applied == 0 && entry.sequence != 0 && entry.sequence <= start.sequence {
                    let local_term = if entry.sequence == start.sequence {
                        Some(start.term)
                    } else {
                        SyncLog::term_at(conn, entry.sequence)?
                    };
                    match local_term {
                        Some(term) if term == entry.term => outcome.skipped += 1,
                        Some(term) => {
                            return Err(StorageError::Diverged {
                                sequence: entry.sequence,
                                local_term: term,
                                remote_term: entry.term,
                            })
                        }
                        // Only a log missing its head (never the case) has no entry here.
                        None => {
                            return Err(StorageError::Gap { expected: next, got: entry.sequence })
                        }
                    }
                    continue;
                }
                if entry.sequence != next {
                    return Err(StorageError::Gap { expected: next, got: entry.sequence });
                }
                if entry.change_type == ChangeType::Bulk {
                    outcome.bulk_jobs.push(local_jobs::insert(conn, entry)?);
                } else {
                    handler.apply(conn, entry)?;
                }
                SyncLog::insert_unchecked(conn, entry)?;
                next += 1;
                outcome.applied += 1;
                outcome.last = LogPosition::of(entry);
            }
            sync_state::set_last_synced(conn, outcome.last.sequence)?;
            Ok(outcome)
        })?;
        tracing::trace!(
            applied = outcome.applied,
            skipped = outcome.skipped,
            last = %outcome.last,
            "applied batch"
        );
        Ok(outcome)
    }

    /// Full reconciliation, step 1: in one transaction, deletes every row of every registered
    /// model ([`crate::ModelHandler::clear`]) and every `sync_log` row, and sets
    /// `last_synced_sequence` to 0. Local jobs are kept.
    ///
    /// # Errors
    /// [`StorageError::NotInitialized`] if there is no sync state (nothing is deleted then).
    pub fn reset(&self) -> Result<()> {
        let registry = self.db.registry();
        self.db.write(|conn| {
            for handler in registry.handlers() {
                handler.clear(conn)?;
            }
            let deleted = SyncLog::truncate_after(conn, 0)?;
            sync_state::set_last_synced(conn, 0)?;
            tracing::info!(deleted, "library reset for full reconciliation");
            Ok(())
        })
    }
}
