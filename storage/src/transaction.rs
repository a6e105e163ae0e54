//! [`TransactionManager`]: the leader's write path.

use lsync_protocol::{ChangeType, SyncLogEntry, SyncRole};
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::change::{BulkOperation, Change};
use crate::database::Database;
use crate::error::{now_ms, Result, StorageError};
use crate::sync_log::SyncLog;
use crate::sync_state;

/// Capacity of the commit-event broadcast channel.
pub const COMMIT_EVENT_CAPACITY: usize = 1024;

/// Sent after every successful commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitEvent {
    /// The library committed to.
    pub library_id: Uuid,
    /// The term of the new entries.
    pub term: u64,
    /// The first new sequence.
    pub first_sequence: u64,
    /// The last new sequence.
    pub last_sequence: u64,
}

/// The leader's write path: sequences changes and writes each with its log entry in ONE
/// transaction. Clones share the commit-event channel.
#[derive(Clone)]
pub struct TransactionManager {
    db: Database,
    device_id: Uuid,
    events: broadcast::Sender<CommitEvent>,
}

impl std::fmt::Debug for TransactionManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransactionManager")
            .field("db", &self.db)
            .field("device_id", &self.device_id)
            .finish_non_exhaustive()
    }
}

impl TransactionManager {
    /// A manager committing as `device_id` (commits are refused unless the sync state names
    /// this device the leader). The event channel holds [`COMMIT_EVENT_CAPACITY`] events.
    pub fn new(db: Database, device_id: Uuid) -> Self {
        let (events, _) = broadcast::channel(COMMIT_EVENT_CAPACITY);
        Self { db, device_id, events }
    }

    /// Receives a [`CommitEvent`] after every successful commit.
    pub fn subscribe(&self) -> broadcast::Receiver<CommitEvent> {
        self.events.subscribe()
    }

    /// The database written to.
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// The device commits are made as.
    pub fn device_id(&self) -> Uuid {
        self.device_id
    }

    /// Commits one change; see [`TransactionManager::commit_batch`].
    pub fn commit(&self, change: Change) -> Result<SyncLogEntry> {
        let mut entries = self.commit_batch(vec![change])?;
        Ok(entries.remove(0))
    }

    /// Commits a bulk operation as ONE [`ChangeType::Bulk`] entry.
    ///
    /// The model type must be registered. Nothing is written to model tables (the leader has
    /// done the operation itself) and no local job is queued here; followers queue one. The
    /// entry's `version` is 0: a bulk entry does not version a record.
    pub fn commit_bulk(&self, op: BulkOperation) -> Result<SyncLogEntry> {
        self.commit(op.into())
    }

    /// Commits `changes` in ONE immediate transaction on the writer connection, as entries
    /// `last + 1 ..` of the current term with `origin_device` = this device.
    ///
    /// Each change is validated by its model's handler; Insert requires the record to be
    /// absent, Update/Delete require it present; its version becomes the stored version + 1
    /// (1 for an insert). A [`ChangeType::Bulk`] change is committed as in
    /// [`TransactionManager::commit_bulk`]. `last_synced_sequence` is set to the last new
    /// sequence. On success a [`CommitEvent`] is sent.
    ///
    /// # Errors
    /// Any error rolls everything back (no rows, no entries, no event):
    /// [`StorageError::InvalidChange`] (also for an empty batch), [`StorageError::UnknownModel`],
    /// [`StorageError::NotInitialized`], [`StorageError::NotLeader`] unless the sync state says
    /// role Leader with `leader_device` = this device.
    pub fn commit_batch(&self, changes: Vec<Change>) -> Result<Vec<SyncLogEntry>> {
        self.commit_batch_from(self.device_id, changes)
    }

    /// Like [`TransactionManager::commit_batch`], with `origin_device` = `origin` — for changes
    /// proposed by another device of the library (leadership is still checked against this
    /// device).
    pub fn commit_batch_from(
        &self,
        origin: Uuid,
        changes: Vec<Change>,
    ) -> Result<Vec<SyncLogEntry>> {
        if changes.is_empty() {
            return Err(StorageError::InvalidChange("empty batch".to_owned()));
        }
        let device_id = self.device_id;
        let registry = self.db.registry();
        let (library_id, term, entries) = self.db.write(|conn| {
            let state = sync_state::load(conn)?.ok_or(StorageError::NotInitialized)?;
            if state.role != SyncRole::Leader || state.leader_device != Some(device_id) {
                return Err(StorageError::NotLeader {
                    term: state.current_term,
                    leader: state.leader_device,
                });
            }
            let term = state.current_term;
            let mut sequence = SyncLog::last(conn)?.sequence;
            let timestamp_ms = now_ms();
            let mut entries = Vec::with_capacity(changes.len());
            for change in changes {
                let handler = registry
                    .handler(&change.model_type)
                    .ok_or_else(|| StorageError::UnknownModel(change.model_type.clone()))?;
                let version = if change.change_type == ChangeType::Bulk {
                    0
                } else {
                    handler.validate(&change)?;
                    let current = handler.current_version(conn, &change.record_id)?;
                    next_version(&change, current)?
                };
                sequence += 1;
                let entry = SyncLogEntry {
                    sequence,
                    term,
                    origin_device: origin,
                    timestamp_ms,
                    model_type: change.model_type,
                    record_id: change.record_id,
                    change_type: change.change_type,
                    version,
                    data: change.data,
                };
                if entry.change_type != ChangeType::Bulk {
                    handler.apply(conn, &entry)?;
                }
                SyncLog::insert_unchecked(conn, &entry)?;
                entries.push(entry);
            }
            sync_state::set_last_synced(conn, sequence)?;
            Ok((state.library_id, term, entries))
        })?;
        let event = CommitEvent {
            library_id,
            term,
            first_sequence: entries[0].sequence,
            last_sequence: entries[entries.len() - 1].sequence,
        };
        tracing::trace!(?event, "committed");
        // An error only means nobody is subscribed.
        let _ = self.events.send(event);
        Ok(entries)
    }
}

fn next_version(change: &Change, current: Option<i64>) -> Result<i64> {
    let what = || format!("{} {:?}", change.model_type, change.record_id);
    match (change.change_type, current) {
        (ChangeType::Insert, None) => Ok(1),
        (ChangeType::Insert, Some(_)) => {
            Err(StorageError::InvalidChange(format!("insert of existing record {}", what())))
        }
        (ChangeType::Update | ChangeType::Delete, Some(version)) => version
            .checked_add(1)
            .ok_or_else(|| StorageError::InvalidChange(format!("version overflow of {}", what()))),
        (ChangeType::Update, None) => {
            Err(StorageError::InvalidChange(format!("update of missing record {}", what())))
        }
        (ChangeType::Delete, None) => {
            Err(StorageError::InvalidChange(format!("delete of missing record {}", what())))
        }
        (ChangeType::Bulk, _) => Ok(0),
    }
}
