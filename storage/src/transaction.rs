//! [`TransactionManager`]: the leader's write path.

use std::collections::{HashMap, HashSet};

use lsync_protocol::{ChainHash, ChangeType, Configuration, EntryStamp, SyncLogEntry, SyncRole};
use tokio::sync::broadcast;
use uuid::Uuid;

use diesel::sqlite::SqliteConnection;

use crate::change::{BulkOperation, Change};
use crate::database::Database;
use crate::error::{now_ms, Result, StorageError};
use crate::model::ModelRegistry;
use crate::pending::Rebase;
use crate::sync_log::{LogHead, SyncLog};
use crate::sync_state;

/// Capacity of the commit-event broadcast channel.
pub const COMMIT_EVENT_CAPACITY: usize = 1024;

/// Entries a [`CommitEvent`] carries at most (a larger commit carries none: followers fetch
/// it). The leader's notifier sends them inside `NewEntries`, so a follower can apply a small
/// commit without fetching it.
pub const COMMIT_EVENT_MAX_ENTRIES: usize = 100;

/// Sent after every successful commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitEvent {
    /// The library committed to.
    pub library_id: Uuid,
    /// The term of the new entries.
    pub term: u64,
    /// The first new sequence.
    pub first_sequence: u64,
    /// The last new sequence.
    pub last_sequence: u64,
    /// The term of the entry before `first_sequence` (0 if there is none).
    pub prev_term: u64,
    /// The chain hash at `first_sequence - 1` (the genesis hash if there is no entry there):
    /// what `NewEntries.prev_hash` names (docs/protocol.md, "The hash chain").
    pub prev_hash: ChainHash,
    /// The new entries, if there are at most [`COMMIT_EVENT_MAX_ENTRIES`], each with its
    /// chain hash.
    pub entries: Option<std::sync::Arc<[SyncLogEntry]>>,
}

/// The leader's write path: sequences changes and writes each with its log entry in ONE
/// transaction. Clones share the commit-event channel.
#[derive(Clone)]
pub struct TransactionManager {
    db: Database,
    device_id: Uuid,
    events: broadcast::Sender<CommitEvent>,
    /// Proposals waiting for a group commit (shared by clones).
    group: std::sync::Arc<Group>,
    group_commits: std::sync::Arc<std::sync::atomic::AtomicU64>,
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
        Self { db, device_id, events, group: Default::default(), group_commits: Default::default() }
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
        let (library_id, term, entries, prev) = self.db.write(|conn| {
            let state = leader_state(conn, device_id)?;
            let term = state.current_term;
            let touched = crate::pending::keys_of_changes(&changes);
            let rebase = Rebase::begin(conn, registry, touched, &HashSet::new())?;
            let indexed = changes.into_iter().map(|c| (c, false));
            let Written { entries, prev, .. } =
                write_changes(conn, registry, term, origin, None, indexed)?;
            if let Some(rebase) = rebase {
                rebase.finish(conn, registry)?;
            }
            Ok((state.library_id, term, entries, prev))
        })?;
        self.emit(library_id, term, prev, &entries);
        Ok(entries)
    }

    /// Commits a proposal: the `changes` another device (or this one, from its outbox) made,
    /// under the proposal's id, at most once however often it is retried, on whichever device
    /// leads when it arrives — and **whole**: if only part of it reached this leader's log, the
    /// rest is committed now (docs/architecture.md, "Whole, not in part").
    ///
    /// **Group commit**: proposals committed concurrently (from several threads, e.g. the
    /// blocking pool serving several writers) share one immediate transaction — one `COMMIT`,
    /// so one fsync under `synchronous = FULL` — each in a savepoint of its own: the first
    /// writer that finds no batch running commits every proposal queued by then, the others
    /// wait for it; a refused one is rolled back alone. [`TransactionManager::group_commits`] counts the transactions. A writer
    /// alone commits alone, as before.
    ///
    /// In ONE immediate transaction on the writer connection (one savepoint of it):
    ///
    /// 1. Leadership is checked as for [`TransactionManager::commit_batch`].
    /// 2. **Retry**: if the log already holds entries with this `proposal_id` (the log is the
    ///    source of truth: the id is replicated with every entry, so a leader elected after the
    ///    first commit recognises it too), they are matched against `changes`
    ///    (`missing_part`: each entry, in log order, to the next change it commits).
    ///    - If the changes after the last matched one are all that is missing (the log holds a
    ///      first part of the proposal: a response ended inside it and its leader was deposed
    ///      before the rest was replicated), those changes are committed as in 3, under the same
    ///      `proposal_id`: the outcome has `completed = true`, the range from the first entry of
    ///      the proposal to the last new one, and only the new entries.
    ///    - Otherwise (every change is in the log, or the log holds entries the changes do not
    ///      explain — a retry that knows only part of the proposal, e.g. a repair's stash), or
    ///      if the missing changes all turn out to be dropped deletes, the proposal is a
    ///      **duplicate**: nothing is written, no [`CommitEvent`] is sent, the outcome has the
    ///      entries' range, the entries and `duplicate = true`.
    ///
    ///    Likewise a duplicate, with an empty `entries`, for a proposal this device committed
    ///    earlier without writing any entry (see 4) — once its changes, evaluated again, write
    ///    nothing now either (a repair may have proposed only part of it before).
    /// 3. Otherwise every change becomes an entry `last + 1 ..` of the current term with
    ///    `origin_device` = `origin_device` (the proposer) and `proposal_id` = `proposal_id`,
    ///    with the **proposal rule** (concurrent changes to one record resolve by leader
    ///    order, the last write wins):
    ///    - a proposed Insert or Update is an upsert: written as an Insert (version 1) if the
    ///      record does not exist at the leader now, else as an Update (version = current + 1);
    ///    - a proposed Delete of an existing record is a Delete (version = current + 1); a
    ///      proposed Delete of a record that does not exist (any more) is dropped: no entry;
    ///    - a Bulk change is committed as in [`TransactionManager::commit_bulk`];
    ///    - in a library at feature version 3, a change based on an older version than the
    ///      record's is decided by the model's conflict policy, and the conflict recorded
    ///      (docs/architecture.md, "Conflicts"); `reject` refuses the whole proposal. So is an
    ///      Insert or Update of a record a stamped Delete removed (its deletion marker) that was
    ///      made without seeing the delete: it re-creates the record only if it is the later.
    ///
    ///    The changes are evaluated in order, each seeing the ones before it. The outcome's
    ///    range is that of the new entries; `last_synced_sequence` is set to the last one and a
    ///    [`CommitEvent`] is sent.
    /// 4. If every change was dropped, no entry is written; the proposal is remembered in this
    ///    device's local `proposals` table and the outcome is `first_sequence = last_sequence =`
    ///    the current last sequence (the proposer sees the result once it has applied that far),
    ///    `duplicate = false`, no entries, no event. That table is not replicated: a retry
    ///    that reaches another leader re-evaluates the proposal, and dropping a delete of a
    ///    missing record again is idempotent. (Only if another device re-created that record
    ///    in between would the retried delete remove it — a later write in leader order,
    ///    consistent with the rule.)
    ///
    /// # Errors
    /// Any error rolls everything back (no rows, no entries, nothing remembered, no event):
    /// [`StorageError::InvalidChange`] (an empty proposal, data that does not decode or does
    /// not match its record id), [`StorageError::UnknownModel`],
    /// [`StorageError::NotInitialized`], [`StorageError::NotLeader`].
    pub fn commit_proposal(
        &self,
        proposal_id: Uuid,
        origin_device: Uuid,
        changes: Vec<Change>,
    ) -> Result<ProposalOutcome> {
        if changes.is_empty() {
            return Err(StorageError::InvalidChange(format!("empty proposal {proposal_id}")));
        }
        let job = std::sync::Arc::new(GroupJob {
            proposal_id,
            origin_device,
            changes: std::sync::Mutex::new(Some(changes)),
            result: std::sync::Mutex::new(None),
        });
        // One batch at a time: a writer that finds no batch running commits every proposal
        // queued by then, its own included, in one transaction; the others wait for a batch
        // to end (theirs answered, or their turn to run the next).
        let mut state = lock(&self.group.state);
        state.queue.push(job.clone());
        loop {
            if let Some(result) = lock(&job.result).take() {
                return result;
            }
            if state.committing {
                state =
                    self.group.done.wait(state).unwrap_or_else(std::sync::PoisonError::into_inner);
                continue;
            }
            state.committing = true;
            let batch = std::mem::take(&mut state.queue);
            drop(state);
            // ends the batch even if it panics (its proposals are then answered with an error)
            let running = Running { group: &self.group, batch: &batch };
            self.commit_group(&batch);
            drop(running);
            state = lock(&self.group.state);
        }
    }

    /// Commits the proposals of `batch` (in order) in ONE immediate transaction, each in a
    /// savepoint of its own, so that a proposal refused (an invalid change, an unknown model)
    /// is rolled back alone and the others commit: group commit, one `COMMIT` — one fsync
    /// under `synchronous = FULL` — for every writer that queued meanwhile. Sends the commit
    /// events in order once the transaction is committed, and leaves each job's answer in it.
    fn commit_group(&self, batch: &[std::sync::Arc<GroupJob>]) {
        use diesel::Connection;
        let device_id = self.device_id;
        let registry = self.db.registry();
        let mut done: Vec<Result<Committed>> = Vec::with_capacity(batch.len());
        let written = self.db.write(|conn| {
            for job in batch {
                let changes = lock(&job.changes).take().unwrap_or_default();
                let (proposal_id, origin_device) = (job.proposal_id, job.origin_device);
                done.push(conn.transaction(|conn| {
                    commit_one(conn, registry, device_id, proposal_id, origin_device, changes)
                }));
            }
            Ok(())
        });
        self.group_commits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Err(e) = written {
            // The transaction itself failed (e.g. the disk is full): nothing was committed.
            let text = e.to_string();
            let mut first = Some(e);
            for job in batch {
                let err = first
                    .take()
                    .unwrap_or_else(|| StorageError::Io(std::io::Error::other(text.clone())));
                *lock(&job.result) = Some(Err(err));
            }
            return;
        }
        for (job, result) in batch.iter().zip(done) {
            let answer = result.and_then(|(library_id, term, outcome, prev, refused)| {
                let proposal_id = job.proposal_id;
                if outcome.duplicate {
                    tracing::debug!(%proposal_id, first = outcome.first_sequence,
                        last = outcome.last_sequence, "retried proposal already committed");
                } else {
                    if outcome.completed {
                        tracing::info!(%proposal_id, first = outcome.first_sequence,
                            last = outcome.last_sequence, missing = outcome.entries.len(),
                            "partly replicated proposal completed");
                    }
                    self.emit(library_id, term, prev, &outcome.entries);
                }
                match refused {
                    // its conflict records are committed; the proposal is not
                    Some(why) => Err(StorageError::InvalidChange(why)),
                    None => Ok(outcome),
                }
            });
            *lock(&job.result) = Some(answer);
        }
    }

    /// Transactions [`TransactionManager::commit_proposal`] has run: fewer than the proposals
    /// when concurrent writers shared one (group commit).
    pub fn group_commits(&self) -> u64 {
        self.group_commits.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Commits `configuration` as a configuration entry of the current term
    /// ([`lsync_protocol::ChangeType::Config`], origin this device) and makes it the
    /// configuration in effect ([`crate::membership::install`]), in ONE immediate transaction;
    /// sets `last_synced_sequence` and sends a [`CommitEvent`]. The leader's first entry of
    /// every term is one (restating the configuration), and every membership change is one.
    /// Whether a change may be made now (the previous one committed) is the caller's decision.
    ///
    /// # Errors
    /// Nothing is written on any error: [`StorageError::InvalidChange`] for a configuration
    /// that does not validate or has an older feature version than the one in effect,
    /// [`StorageError::NotLeader`], [`StorageError::NotInitialized`].
    pub fn commit_config(&self, configuration: &Configuration) -> Result<SyncLogEntry> {
        configuration
            .validate()
            .map_err(|e| StorageError::InvalidChange(format!("configuration: {e}")))?;
        let device_id = self.device_id;
        let registry = self.db.registry();
        let (library_id, term, entry, prev) = self.db.write(|conn| {
            let state = leader_state(conn, device_id)?;
            let current = crate::membership::load(conn)?;
            if configuration.feature_version < current.configuration.feature_version {
                return Err(StorageError::InvalidChange(format!(
                    "configuration of feature version {} after {}",
                    configuration.feature_version, current.configuration.feature_version
                )));
            }
            let prev = SyncLog::head(conn)?;
            let mut entry = crate::membership::entry(
                state.current_term,
                prev.position.sequence + 1,
                device_id,
                configuration,
            );
            let rebase = Rebase::begin(conn, registry, [], &HashSet::new())?;
            entry.hash = Some(SyncLog::insert_unchecked(conn, &prev.hash, &entry)?);
            crate::membership::install(conn, configuration, entry.sequence)?;
            sync_state::set_last_synced(conn, entry.sequence)?;
            // delivered proposals this entry's sequence reaches leave the overlay
            if let Some(rebase) = rebase {
                rebase.finish(conn, registry)?;
            }
            Ok((state.library_id, state.current_term, entry, prev))
        })?;
        tracing::info!(
            sequence = entry.sequence,
            term,
            members = configuration.members.len(),
            voters = configuration.voters().len(),
            "configuration entry committed"
        );
        self.emit(library_id, term, prev, std::slice::from_ref(&entry));
        Ok(entry)
    }

    /// Recovery when a majority of the voters is gone for good (docs/operations.md, "Quorum
    /// lost for good"; UNSAFE: entries that only the lost devices held are lost, and if they
    /// were not lost after all, two configurations may now live side by side). In ONE
    /// immediate transaction, whatever this device's role: it becomes leader of the term after
    /// its current one (voting for itself), writes `configuration` as a configuration entry of
    /// that term after its own last entry, and installs it. Sends a [`CommitEvent`].
    ///
    /// # Errors
    /// Nothing is written on any error: [`StorageError::InvalidChange`] unless `configuration`
    /// validates and lists this device as a voter; [`StorageError::NotInitialized`].
    pub fn force_reconfigure(&self, configuration: &Configuration) -> Result<SyncLogEntry> {
        configuration
            .validate()
            .map_err(|e| StorageError::InvalidChange(format!("configuration: {e}")))?;
        let device_id = self.device_id;
        if !configuration.is_voter(device_id) {
            return Err(StorageError::InvalidChange(format!(
                "this device ({device_id}) must be a voter of the forced configuration"
            )));
        }
        let (library_id, term, entry, prev) = self.db.write(|conn| {
            let state = sync_state::load(conn)?.ok_or(StorageError::NotInitialized)?;
            let term = state.current_term.checked_add(1).ok_or_else(|| {
                StorageError::InvalidChange("the term space is exhausted".to_owned())
            })?;
            sync_state::set_leadership(conn, SyncRole::Leader, term, Some(device_id))?;
            sync_state::set_vote(conn, term, Some(device_id))?;
            let prev = SyncLog::head(conn)?;
            let mut entry = crate::membership::entry(
                term,
                prev.position.sequence + 1,
                device_id,
                configuration,
            );
            entry.hash = Some(SyncLog::insert_unchecked(conn, &prev.hash, &entry)?);
            crate::membership::install(conn, configuration, entry.sequence)?;
            // Forced: the voters before it are gone for good, nothing waits for them.
            crate::membership::note_commit(conn, entry.sequence)?;
            sync_state::set_last_synced(conn, entry.sequence)?;
            Ok((state.library_id, term, entry, prev))
        })?;
        tracing::warn!(sequence = entry.sequence, term, voters = ?configuration.voters(),
            "configuration forced without a majority");
        self.emit(library_id, term, prev, std::slice::from_ref(&entry));
        Ok(entry)
    }

    /// Sends the [`CommitEvent`] of `entries`, written after `prev`.
    fn emit(&self, library_id: Uuid, term: u64, prev: LogHead, entries: &[SyncLogEntry]) {
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else { return };
        if let Err(e) = self.db.acknowledge_commit(crate::LogPosition::of(last)) {
            // The entries are committed; only restore detection is weaker until the next
            // heartbeat raises the fsynced mark.
            tracing::warn!(error = %e, "cannot raise the acknowledgement mark");
        }
        // Only clone the entries when somebody listens.
        let carried = (entries.len() <= COMMIT_EVENT_MAX_ENTRIES
            && self.events.receiver_count() > 0)
            .then(|| entries.into());
        let event = CommitEvent {
            library_id,
            term,
            first_sequence: first.sequence,
            last_sequence: last.sequence,
            prev_term: prev.position.term,
            prev_hash: prev.hash,
            entries: carried,
        };
        tracing::trace!(?event, "committed");
        // An error only means nobody is subscribed.
        let _ = self.events.send(event);
    }
}

/// What [`TransactionManager::commit_proposal`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProposalOutcome {
    /// The first sequence of the proposal's entries (if it wrote none: the last sequence of the
    /// log when it was committed).
    pub first_sequence: u64,
    /// The last sequence of the proposal's entries (if it wrote none: as `first_sequence`).
    pub last_sequence: u64,
    /// The proposal had been committed before (a retry): nothing was written now.
    pub duplicate: bool,
    /// The log held a first part of the proposal (it was only partly replicated before its
    /// leader was deposed): the rest was written now, after it, under the same id. The range
    /// then runs from the proposal's first entry to its last new one and may hold other
    /// entries between the parts.
    pub completed: bool,
    /// The entries written now (for a duplicate: the ones committed before, in log order);
    /// empty if every change was dropped.
    pub entries: Vec<SyncLogEntry>,
}

/// What one proposal of a group wrote: library, term, outcome, and the log head before it.
/// Refused (policy `reject`), the last element says why: only the conflict records (the
/// outcome's entries) were written.
type Committed = (Uuid, u64, ProposalOutcome, LogHead, Option<String>);

/// One proposal waiting for a group commit ([`TransactionManager::commit_proposal`]).
struct GroupJob {
    proposal_id: Uuid,
    origin_device: Uuid,
    changes: std::sync::Mutex<Option<Vec<Change>>>,
    result: std::sync::Mutex<Option<Result<ProposalOutcome>>>,
}

/// The proposals waiting for the next group commit, whether a batch is being committed, and
/// the signal that one ended.
#[derive(Default)]
struct Group {
    state: std::sync::Mutex<GroupState>,
    done: std::sync::Condvar,
}

/// A batch being committed; dropped (also when the commit panics) it answers every proposal
/// of the batch left without an answer, ends the batch and wakes the writers waiting.
struct Running<'a> {
    group: &'a Group,
    batch: &'a [std::sync::Arc<GroupJob>],
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        for job in self.batch {
            let mut result = lock(&job.result);
            if result.is_none() {
                *result = Some(Err(StorageError::Io(std::io::Error::other(
                    "the commit of this proposal's group failed unexpectedly (a panic): \
                     nothing of it was committed",
                ))));
            }
        }
        lock(&self.group.state).committing = false;
        self.group.done.notify_all();
    }
}

#[derive(Default)]
struct GroupState {
    queue: Vec<std::sync::Arc<GroupJob>>,
    committing: bool,
}

/// Locks `m`, whatever a panicking holder left (the data is an answer slot or a queue).
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Commits one proposal on `conn` (inside the group's transaction, in its own savepoint): the
/// rules of [`TransactionManager::commit_proposal`]. If this device has pending changes (its
/// overlay, docs/architecture.md, "Local-first writes"), the records the proposal writes are
/// evaluated on their committed rows and the overlay is rebased over them; the proposal's own
/// outbox entry, if this device queued it, leaves the overlay once the log holds it.
fn commit_one(
    conn: &mut SqliteConnection,
    registry: &ModelRegistry,
    device_id: Uuid,
    proposal_id: Uuid,
    origin_device: Uuid,
    changes: Vec<Change>,
) -> Result<Committed> {
    let state = leader_state(conn, device_id)?;
    let touched = crate::pending::keys_of_changes(&changes);
    let rebase = Rebase::begin(conn, registry, touched, &HashSet::from([proposal_id]))?;
    let committed =
        commit_one_committed(conn, registry, state, proposal_id, origin_device, changes)?;
    if let Some(rebase) = rebase {
        rebase.finish(conn, registry)?;
    }
    Ok(committed)
}

/// [`commit_one`] on the committed rows.
fn commit_one_committed(
    conn: &mut SqliteConnection,
    registry: &ModelRegistry,
    state: sync_state::SyncState,
    proposal_id: Uuid,
    origin_device: Uuid,
    changes: Vec<Change>,
) -> Result<Committed> {
    let term = state.current_term;
    let library_id = state.library_id;
    let present = SyncLog::proposal_entries(conn, proposal_id)?;
    if let (Some(first), Some(last)) = (present.first(), present.last()) {
        let duplicate = ProposalOutcome {
            first_sequence: first.sequence,
            last_sequence: last.sequence,
            duplicate: true,
            completed: false,
            entries: Vec::new(),
        };
        let first_sequence = first.sequence;
        let Some(from) = missing_part(&changes, &present) else {
            let outcome = ProposalOutcome { entries: present, ..duplicate };
            return Ok((library_id, term, outcome, LogHead::default(), None));
        };
        let rest = changes.into_iter().skip(from).map(|c| (c, true));
        let mut w = write_proposed(conn, registry, term, origin_device, proposal_id, rest)?;
        let refused = w.rejected.take().map(|r| r.0);
        let Some(new_last) = w.change_entries().last() else {
            // Refused, or the missing changes were deletes of records that do not exist now,
            // or changes older than the stored values they conflict with: only conflict
            // records, if any, were written now.
            let outcome = if w.entries.is_empty() {
                ProposalOutcome { entries: present, ..duplicate }
            } else {
                ProposalOutcome { entries: w.entries, duplicate: false, ..duplicate }
            };
            return Ok((library_id, term, outcome, w.prev, refused));
        };
        let outcome = ProposalOutcome {
            first_sequence,
            last_sequence: new_last.sequence,
            duplicate: false,
            completed: true,
            entries: w.entries,
        };
        return Ok((library_id, term, outcome, w.prev, None));
    }
    // Committed here before with no entry (every change dropped): evaluated again all the
    // same — the id may come back with changes the first copy lacked (a repair proposes again
    // only the part of a proposal its log held), and a dropped change is dropped again.
    let remembered = proposals::get(conn, proposal_id)?;
    let indexed = changes.into_iter().map(|c| (c, true));
    let mut w = write_proposed(conn, registry, term, origin_device, proposal_id, indexed)?;
    let refused = w.rejected.take().map(|r| r.0);
    if let (Some((first, last)), true, None) = (remembered, w.entries.is_empty(), &refused) {
        let outcome = ProposalOutcome {
            first_sequence: first,
            last_sequence: last,
            duplicate: true,
            completed: false,
            entries: Vec::new(),
        };
        return Ok((library_id, term, outcome, LogHead::default(), None));
    }
    let range = w.change_entries().first().zip(w.change_entries().last());
    let outcome = match range {
        Some((first, last)) => ProposalOutcome {
            first_sequence: first.sequence,
            last_sequence: last.sequence,
            duplicate: false,
            completed: false,
            entries: w.entries,
        },
        None => {
            let last = SyncLog::last(conn)?.sequence;
            if refused.is_none() {
                proposals::remember(conn, proposal_id, last)?;
            }
            ProposalOutcome {
                first_sequence: last,
                last_sequence: last,
                duplicate: false,
                completed: false,
                entries: w.entries,
            }
        }
    };
    Ok((library_id, term, outcome, w.prev, refused))
}

/// [`write_changes`] of a proposal's changes; if the `reject` policy refused one, nothing of
/// the proposal is written, only the conflicts (their entries are the result's, `rejected`
/// says why).
fn write_proposed(
    conn: &mut SqliteConnection,
    registry: &ModelRegistry,
    term: u64,
    origin: Uuid,
    proposal_id: Uuid,
    changes: impl IntoIterator<Item = Indexed>,
) -> Result<Written> {
    let mut w = write_changes(conn, registry, term, origin, Some(proposal_id), changes)?;
    if let Some((why, conflicts)) = w.rejected.take() {
        let mut sequence = w.prev.position.sequence;
        let timestamp_ms = now_ms();
        for conflict in &conflicts {
            if !crate::conflicts::exists(conn, &conflict.id)? {
                sequence += 1;
                w.entries.push(conflict_entry(sequence, term, origin, timestamp_ms, conflict));
            }
        }
        log_entries(conn, registry, &w.prev, &mut w.entries)?;
        tracing::info!(%proposal_id, %why, "proposal refused");
        w.rejected = Some((why, Vec::new()));
    }
    Ok(w)
}

/// The sync state, if it names this device the leader.
fn leader_state(conn: &mut SqliteConnection, device_id: Uuid) -> Result<sync_state::SyncState> {
    let state = sync_state::load(conn)?.ok_or(StorageError::NotInitialized)?;
    if state.role != SyncRole::Leader || state.leader_device != Some(device_id) {
        return Err(StorageError::NotLeader {
            term: state.current_term,
            leader: state.leader_device,
        });
    }
    Ok(state)
}

/// Which of a retried proposal's `changes` are missing from the log, given the entries the log
/// holds for it (`present`, in log order, not empty): `Some(i)` if `changes[i..]` are, `None` if
/// nothing is (the proposal is a duplicate).
///
/// Each entry is matched, in order, to the next change it commits ([`commits`]); the changes
/// skipped between two matches are deletes the proposal rule dropped. If every entry is
/// matched, the changes after the last matched one are the missing part (a response ended
/// inside the proposal before its leader was deposed; a retry of the rest under the same id
/// then commits exactly it). If some entry matches no change, the changes are not the ones the
/// log committed under this id — a retry that knows only a first part of the proposal, such as
/// a repair's stash of a device that received only that part — and nothing is missing: writing
/// anything could commit a change twice.
///
/// Dropped deletes right after the present part are retried too: a delete of a record that is
/// still missing is dropped again, one of a record that was re-created since removes it — a
/// later write in leader order, as for any retried delete.
pub(crate) fn missing_part(changes: &[Change], present: &[SyncLogEntry]) -> Option<usize> {
    let mut next = 0;
    for entry in present {
        let skipped = changes.get(next..)?.iter().position(|c| commits(entry, c))?;
        next += skipped + 1;
    }
    (next < changes.len()).then_some(next)
}

/// Whether `entry` is what the proposal rule made of `change` ([`Change::same_as`]).
fn commits(entry: &SyncLogEntry, change: &Change) -> bool {
    change.same_as(&entry.model_type, &entry.record_id, entry.change_type, &entry.data)
}

/// What [`write_changes`] wrote.
pub(crate) struct Written {
    /// Every entry written, in log order: the changes' and, after them, the conflict records.
    pub(crate) entries: Vec<SyncLogEntry>,
    /// How many of `entries`, from the first, are the changes' (the rest record conflicts).
    pub(crate) changes: usize,
    /// The head of the log before them.
    pub(crate) prev: LogHead,
    /// Set if a change was refused by the `reject` policy: why, and the conflicts to record.
    /// Nothing was written then.
    pub(crate) rejected: Option<(String, Vec<crate::conflicts::Conflict>)>,
}

impl Written {
    /// The entries of the changes (without the conflict records).
    pub(crate) fn change_entries(&self) -> &[SyncLogEntry] {
        &self.entries[..self.changes]
    }
}

/// One change to write, and whether the proposal rule applies to it.
pub(crate) type Indexed = (Change, bool);

/// Validates, sequences, applies and logs `changes` (each with whether the proposal rule
/// applies to it) as entries of `term`, each with its chain hash; sets `last_synced_sequence`
/// if any entry was written. In a library at feature version 3 each Insert, Update and Delete
/// entry gets a stamp (the change's timestamp, or one of this device's clock for a change
/// without), and a proposed change based on an older version than the record's, or re-creating
/// a record deleted by a delete it did not see, is checked for
/// conflicts (docs/architecture.md, "Conflicts"): resolved by the model's policy, each
/// recorded as an entry of model `lsync.conflict` after the changes' entries. The caller holds
/// the transaction.
fn write_changes(
    conn: &mut SqliteConnection,
    registry: &ModelRegistry,
    term: u64,
    origin: Uuid,
    proposal_id: Option<Uuid>,
    changes: impl IntoIterator<Item = Indexed>,
) -> Result<Written> {
    use crate::conflicts::{self, Decision};
    let prev = SyncLog::head(conn)?;
    let mut sequence = prev.position.sequence;
    let timestamp_ms = now_ms();
    let stamping = crate::membership::feature_version(conn)? >= 3;
    let mut clock = if stamping { Some(crate::hlc::clock(conn)?) } else { None };
    let clock_before = clock.map(|c| c.last());
    let physical = crate::hlc::now();
    let changes = changes.into_iter();
    let mut entries = Vec::with_capacity(changes.size_hint().0);
    let mut recorded: Vec<conflicts::Conflict> = Vec::new();
    // The versions this batch has given so far (`None`: deleted), by (model type, record id):
    // each change sees the ones before it, although the rows are written after the loop.
    let mut written: HashMap<(String, String), Option<i64>> = HashMap::new();
    for (mut change, proposed) in changes {
        let handler = registry
            .handler(&change.model_type)
            .ok_or_else(|| StorageError::UnknownModel(change.model_type.clone()))?;
        if proposed && change.model_type.starts_with(lsync_protocol::RESERVED_MODEL_PREFIX) {
            return Err(StorageError::InvalidChange(format!(
                "model type {:?} is lsync's own: it cannot be proposed",
                change.model_type
            )));
        }
        let mut stamp = None;
        let version = if change.change_type == ChangeType::Bulk {
            0
        } else {
            let key = (change.model_type.clone(), change.record_id.clone());
            let in_batch = written.get(&key).copied();
            let current = match in_batch {
                Some(version) => version,
                None => handler.current_version(conn, &change.record_id)?,
            };
            let hlc = clock.as_mut().map(|c| match change.hlc {
                Some(h) => {
                    c.observe(h, physical);
                    h
                }
                None => c.tick(physical),
            });
            // the fields the entry sets (empty: the whole record)
            let mut fields = if change.change_type == ChangeType::Patch {
                crate::fields::patch_fields(&change.data)
            } else {
                Vec::new()
            };
            // The version the change's base is compared with: the record's before this batch.
            // A change following another of the same record in its proposal is decided against
            // the same stored clock (the fields set since its base by other devices), not waved
            // through: an older whole-record change after a patch would otherwise overwrite
            // newer fields. A record deleted earlier in the batch is being re-created: no check.
            let stored = match in_batch {
                None => current,
                Some(Some(_)) => handler.current_version(conn, &change.record_id)?,
                Some(None) => None,
            };
            // A change stamped where it was made is decided against the fields set since its
            // base or later than it (conflicts::decide); one this leader stamps now is the
            // latest write of every field it sets.
            let made_elsewhere = change.hlc.is_some();
            // what was decided, and against what: (the record's version, deleted)
            let mut decided: Option<(Decision, i64, i64, bool)> = None;
            match (hlc, stored, proposal_id, proposed && made_elsewhere) {
                (Some(hlc), Some(now), Some(proposal), true)
                    if change.change_type != ChangeType::Bulk =>
                {
                    let base = change.base_version.unwrap_or(now);
                    let touched = match change.change_type {
                        ChangeType::Delete => Vec::new(),
                        _ => crate::fields::patch_fields(&change.data),
                    };
                    let record = crate::field_clock::load(conn, &key.0, &key.1, now)?;
                    let policy = registry.policy(&change.model_type);
                    let (decision, report) =
                        conflicts::decide(policy, &touched, &record, base, hlc);
                    if let Some((conflicting, kept, taken)) = report {
                        let stored_hlc = conflicting
                            .iter()
                            .map(|f| record.field(f).hlc)
                            .max()
                            .unwrap_or(record.latest().hlc);
                        let stored = handler.load(conn, &change.record_id)?.map(|r| r.data);
                        let about = (proposal, origin, hlc, timestamp_ms);
                        recorded.push(conflicts::Conflict {
                            outcome: conflicts::outcome_of(&decision, &kept, &taken),
                            fields: conflicting,
                            kept,
                            taken,
                            base_version: base,
                            current_version: now,
                            stored: stored.unwrap_or_default(),
                            stored_hlc,
                            ..conflicts::Conflict::about(&change, about, policy)
                        });
                    }
                    decided = Some((decision, now, base, false));
                }
                // A record deleted before this batch that the change would re-create: decided
                // against the delete's marker, if it left one (a tombstone: a stamped Delete).
                (Some(hlc), None, Some(proposal), true)
                    if in_batch.is_none()
                        && matches!(
                            change.change_type,
                            ChangeType::Insert | ChangeType::Update
                        ) =>
                {
                    if let Some(marker) = crate::field_clock::marker(conn, &key.0, &key.1)? {
                        let policy = registry.policy(&change.model_type);
                        let (decision, report) =
                            conflicts::decide_deleted(policy, marker, change.base_version, hlc);
                        let base = change.base_version.unwrap_or(0);
                        if report.is_some() {
                            // the stored side is the deletion: no record, version 0, the
                            // delete's timestamp; the whole record is in conflict
                            let about = (proposal, origin, hlc, timestamp_ms);
                            recorded.push(conflicts::Conflict {
                                outcome: conflicts::outcome_of(&decision, &[], &[]),
                                base_version: base,
                                stored_hlc: marker.hlc,
                                ..conflicts::Conflict::about(&change, about, policy)
                            });
                        }
                        decided = Some((decision, marker.version, base, true));
                    }
                }
                _ => {}
            }
            if let Some((decision, version, base, deleted)) = decided {
                match decision {
                    Decision::Apply => {}
                    Decision::Reject => {
                        let why = if deleted {
                            format!(
                                "conflict: {} {:?} was deleted by another device at version \
                                 {version}, after version {base} this change was based on \
                                 (policy reject)",
                                change.model_type, change.record_id
                            )
                        } else {
                            format!(
                                "conflict: {} {:?} is at version {version}, this change was \
                                 based on version {base} and sets fields another device \
                                 changed since (policy reject)",
                                change.model_type, change.record_id
                            )
                        };
                        return Ok(Written {
                            entries: Vec::new(),
                            changes: 0,
                            prev,
                            rejected: Some((why, recorded)),
                        });
                    }
                    Decision::Drop => {
                        tracing::info!(model_type = %change.model_type,
                            record_id = %change.record_id, ?proposal_id, deleted,
                            "change older than the stored values it conflicts with: not applied");
                        continue;
                    }
                    Decision::Partial { taken } => {
                        change.data = crate::fields::extract(&change.data, &taken)?;
                        change.change_type = ChangeType::Patch;
                        fields = taken;
                    }
                }
            }
            if change.change_type == ChangeType::Patch {
                let Some(merged) = merge_patch(conn, handler, &change, current, &entries)? else {
                    if proposed {
                        tracing::debug!(
                            model_type = %change.model_type,
                            record_id = %change.record_id,
                            ?proposal_id,
                            "proposed patch of a missing record dropped"
                        );
                        // An edit of a record deleted since is a conflict the delete won:
                        // recorded (with stamps), so the edit is accounted for and its writer
                        // settles it.
                        if let (Some(hlc), Some(proposal)) = (hlc, proposal_id) {
                            let fields = crate::fields::patch_fields(&change.data);
                            let about = (proposal, origin, hlc, timestamp_ms);
                            let policy = registry.policy(&change.model_type);
                            // the delete's timestamp, if it left a marker (not one of this batch)
                            let marker = match written.get(&key) {
                                None => crate::field_clock::marker(conn, &key.0, &key.1)?,
                                Some(_) => None,
                            };
                            recorded.push(conflicts::Conflict {
                                fields: fields.clone(),
                                kept: fields,
                                base_version: change.base_version.unwrap_or(0),
                                stored_hlc: marker.and_then(|m| m.hlc),
                                ..conflicts::Conflict::about(&change, about, policy)
                            });
                        }
                        continue;
                    }
                    return Err(StorageError::InvalidChange(format!(
                        "update of missing record {} {:?}",
                        change.model_type, change.record_id
                    )));
                };
                change.data = merged;
                change.change_type = ChangeType::Update;
            }
            handler.validate(&change)?;
            if proposed {
                match (change.change_type, current) {
                    (ChangeType::Insert | ChangeType::Update, None) => {
                        change.change_type = ChangeType::Insert;
                        // a record (re-)created: every field is set
                        fields.clear();
                    }
                    (ChangeType::Insert | ChangeType::Update, Some(_)) => {
                        change.change_type = ChangeType::Update;
                    }
                    (ChangeType::Delete, None) => {
                        tracing::debug!(
                            model_type = %change.model_type,
                            record_id = %change.record_id,
                            ?proposal_id,
                            "proposed delete of a missing record dropped"
                        );
                        continue;
                    }
                    (ChangeType::Delete | ChangeType::Bulk, _) => {}
                    // merged into an Update above; refused by `validate` above
                    (ChangeType::Patch | ChangeType::Config | ChangeType::Unknown, _) => {}
                }
            }
            let version = next_version(&change, current)?;
            let after = (change.change_type != ChangeType::Delete).then_some(version);
            written.insert(key, after);
            let reserved = change.model_type.starts_with(lsync_protocol::RESERVED_MODEL_PREFIX);
            stamp = hlc.filter(|_| !reserved).map(|hlc| EntryStamp { hlc, fields });
            version
        };
        sequence += 1;
        entries.push(SyncLogEntry {
            sequence,
            term,
            origin_device: origin,
            timestamp_ms,
            model_type: change.model_type,
            record_id: change.record_id,
            change_type: change.change_type,
            version,
            data: change.data,
            proposal_id,
            hash: None,
            stamp,
        });
    }
    let changes = entries.len();
    for conflict in recorded {
        if crate::conflicts::exists(conn, &conflict.id)? {
            continue;
        }
        sequence += 1;
        entries.push(conflict_entry(sequence, term, origin, timestamp_ms, &conflict));
    }
    if let (Some(clock), Some(before)) = (clock, clock_before) {
        if clock.last() != before {
            crate::hlc::store(conn, clock.last())?;
        }
    }
    log_entries(conn, registry, &prev, &mut entries)?;
    Ok(Written { entries, changes, prev, rejected: None })
}

/// Applies `entries` (sequenced after `prev`) to the tables, logs them with their hashes (set
/// on them) and sets `last_synced_sequence` to the last. Nothing if there are none.
fn log_entries(
    conn: &mut SqliteConnection,
    registry: &ModelRegistry,
    prev: &LogHead,
    entries: &mut [SyncLogEntry],
) -> Result<()> {
    let Some(last) = entries.last().map(|e| e.sequence) else { return Ok(()) };
    apply_entries(conn, registry, entries)?;
    let hashes = SyncLog::insert_many_unchecked(conn, &prev.hash, entries)?;
    for (entry, hash) in entries.iter_mut().zip(hashes) {
        entry.hash = Some(hash);
    }
    sync_state::set_last_synced(conn, last)
}

/// The entry recording `conflict` (an Insert of model `lsync.conflict` by the leader, no
/// proposal id: it belongs to no proposal, so a retried proposal never counts it as its own).
fn conflict_entry(
    sequence: u64,
    term: u64,
    leader: Uuid,
    timestamp_ms: i64,
    conflict: &crate::conflicts::Conflict,
) -> SyncLogEntry {
    let change = crate::conflicts::record_change(conflict);
    SyncLogEntry {
        sequence,
        term,
        origin_device: leader,
        timestamp_ms,
        model_type: change.model_type,
        record_id: change.record_id,
        change_type: ChangeType::Insert,
        version: 1,
        data: change.data,
        proposal_id: None,
        hash: None,
        stamp: None,
    }
}

/// Writes the model rows of `entries` ([`crate::model::apply_entries`]) and their field clocks,
/// and observes the latest timestamp they carry (so this device's next change is later than
/// every change it holds). The caller holds the transaction.
pub(crate) fn apply_entries(
    conn: &mut SqliteConnection,
    registry: &ModelRegistry,
    entries: &[SyncLogEntry],
) -> Result<()> {
    if let Some(latest) = replay_entries(conn, registry, entries)? {
        match crate::hlc::observe(conn, latest) {
            Ok(crate::hlc::Observed::Merged) => {}
            Ok(crate::hlc::Observed::TooFarAhead) => {
                tracing::warn!(hlc = %latest,
                    "an entry's timestamp lies far ahead of this clock: not observed");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes the model rows and field clocks of `entries`, as [`apply_entries`] does, without
/// observing their timestamps (`lsync verify`'s replica, which is no device, has no clock).
/// Returns the latest timestamp the entries carry.
pub(crate) fn replay_entries(
    conn: &mut SqliteConnection,
    registry: &ModelRegistry,
    entries: &[SyncLogEntry],
) -> Result<Option<lsync_protocol::Hlc>> {
    crate::model::apply_entries(conn, registry, entries)?;
    crate::field_clock::record(conn, entries)
}

/// The record a Patch `change` makes (docs/architecture.md, "Field-level changes"): its
/// fields merged into the record's row as it stands now — the last entry of `entries` (the
/// batch being written, whose rows are written after it) that wrote the record, else the
/// stored row — or `None` if the record does not exist (`current`, its version now, is
/// `None`).
fn merge_patch(
    conn: &mut SqliteConnection,
    handler: &dyn crate::model::ModelHandler,
    change: &Change,
    current: Option<i64>,
    entries: &[SyncLogEntry],
) -> Result<Option<Vec<u8>>> {
    let what = || format!("{} {:?}", change.model_type, change.record_id);
    crate::fields::check_patch(&change.data)
        .map_err(|e| StorageError::InvalidChange(format!("{}: {e}", what())))?;
    if current.is_none() {
        return Ok(None);
    }
    let in_batch = entries.iter().rev().find(|e| {
        e.record_id == change.record_id
            && e.model_type == change.model_type
            && matches!(e.change_type, ChangeType::Insert | ChangeType::Update)
    });
    let row = match in_batch {
        Some(entry) => Some(entry.data.clone()),
        None => handler.load(conn, &change.record_id)?.map(|stored| stored.data),
    };
    let Some(row) = row else { return Ok(None) };
    crate::fields::merge(&row, &change.data)
        .map(Some)
        .map_err(|e| StorageError::InvalidChange(format!("{}: {e}", what())))
}

/// The local `proposals` table: proposals committed here that wrote no entry.
pub(crate) mod proposals {
    use diesel::prelude::*;
    use diesel::sqlite::SqliteConnection;
    use uuid::Uuid;

    use crate::error::{now_ms, to_i64, to_u64, Result};
    use crate::schema::proposals;

    /// Remembers `proposal_id` as committed with no entry at log position `at`.
    pub(crate) fn remember(conn: &mut SqliteConnection, proposal_id: Uuid, at: u64) -> Result<()> {
        let at = to_i64(at, "sequence")?;
        diesel::insert_or_ignore_into(proposals::table)
            .values((
                proposals::proposal_id.eq(proposal_id.to_string()),
                proposals::first_sequence.eq(at),
                proposals::last_sequence.eq(at),
                proposals::committed_at_ms.eq(now_ms()),
            ))
            .execute(conn)?;
        Ok(())
    }

    /// The range remembered for `proposal_id`, if any.
    pub(crate) fn get(
        conn: &mut SqliteConnection,
        proposal_id: Uuid,
    ) -> Result<Option<(u64, u64)>> {
        let row = proposals::table
            .find(proposal_id.to_string())
            .select((proposals::first_sequence, proposals::last_sequence))
            .get_result::<(i64, i64)>(conn)
            .optional()?;
        row.map(|(first, last)| {
            Ok((to_u64(first, "proposals sequence")?, to_u64(last, "proposals sequence")?))
        })
        .transpose()
    }

    /// Forgets every remembered proposal (their positions refer to a log being replaced).
    pub(crate) fn clear(conn: &mut SqliteConnection) -> Result<u64> {
        Ok(diesel::delete(proposals::table).execute(conn)? as u64)
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
        (ChangeType::Patch | ChangeType::Config | ChangeType::Unknown, _) => {
            Err(StorageError::InvalidChange(format!(
                "a {} entry is not a change of {}",
                change.change_type.as_str(),
                what()
            )))
        }
    }
}

#[cfg(test)]
mod tests;
