//! [`Applier`]: the follower's write path.

use std::collections::{HashMap, HashSet};

use diesel::prelude::*;
use diesel::sqlite::SqliteConnection;
use lsync_protocol::{ChainHash, ChangeType, Hlc, SyncLogEntry};
use uuid::Uuid;

use crate::change::Change;
use crate::database::Database;
use crate::error::{Result, StorageError};
use crate::local_jobs::{self, LocalJob};
use crate::membership::{self, Membership};
use crate::model::ModelRegistry;
use crate::pending::{self, Rebase};
use crate::schema::stashed_entries;
use crate::sync_log::{row_to_entry, LogPosition, LogRow, SyncLog};
use crate::sync_state;
use crate::transaction::proposals;

/// What [`Applier::apply`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyOutcome {
    /// Entries newly written to the local log.
    pub applied: u64,
    /// Entries already present with the same term (duplicates, no-ops).
    pub skipped: u64,
    /// The position of the last local entry after the batch.
    pub last: LogPosition,
    /// The chain hash of the last local entry after the batch (docs/protocol.md, "The hash
    /// chain"): what `Acknowledge.last_hash` names.
    pub last_hash: ChainHash,
    /// Local jobs queued by the batch's bulk entries, in log order.
    pub bulk_jobs: Vec<LocalJob>,
    /// The configuration the batch put in effect (its latest configuration entry, if that is
    /// at least as recent as the configuration in effect before; see [`crate::membership`]).
    pub membership: Option<Membership>,
    /// This device's pending proposals the batch committed: they left its outbox and its
    /// pending overlay (docs/architecture.md, "Local-first writes").
    pub settled: u64,
    /// This device's delivered proposals the batch showed were not committed after all (the
    /// log reached the sequence their leader gave without them): back to pending, to be
    /// proposed again — the proposer must be woken.
    pub redelivered: u64,
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
    /// Entries at or below the local last sequence must have the local term there, and the
    /// local chain hash if they carry one (duplicates, counted in `skipped`); the others must
    /// continue the log contiguously from last + 1, and each that carries a hash
    /// ([`SyncLogEntry::hash`]) must carry the one this log computes for it after its previous
    /// entry (docs/protocol.md, "The hash chain"). An entry without a hash (from a version 2
    /// peer) gets the computed one.
    /// Insert/Update upsert the row with the entry's version, Delete removes it if present,
    /// Bulk queues a [`LocalJob`] (no model rows). Each entry is copied identically into the
    /// local log and `last_synced_sequence` is set to the new last sequence. An empty batch is
    /// `Ok` with zero counts. Before it returns, the log's new end is made safe to acknowledge
    /// ([`Database::acknowledge`]: fsynced under `synchronous = NORMAL`, under the mark).
    ///
    /// A configuration entry writes no model row: the configuration it carries becomes the
    /// one in effect (the `devices` rows) in the same transaction, if it is at least as recent
    /// as the one in effect ([`crate::membership::on_entry`]).
    ///
    /// # Errors
    /// Nothing of the batch is applied on any error: [`StorageError::UpgradeNeeded`] for an
    /// entry of a change type this build does not know or a configuration it cannot read,
    /// [`StorageError::UnknownModel`] if any entry's model type is not registered,
    /// [`StorageError::InvalidChange`] for a Patch entry (no leader writes one),
    /// [`StorageError::Diverged`] if an overlapping entry has another term,
    /// [`StorageError::ChainMismatch`] if an entry carries another hash than this log's (an
    /// overlapping entry: the local one's; a new one: the one computed after the local log) —
    /// either way the logs differ at or before that entry, whatever the terms say —
    /// [`StorageError::Gap`], [`StorageError::NotInitialized`]; [`StorageError::Io`] if the
    /// batch committed but could not be made safe to acknowledge (applying it again is then a
    /// duplicate that retries that step).
    pub fn apply(&self, entries: &[SyncLogEntry]) -> Result<ApplyOutcome> {
        if entries.is_empty() {
            let head = self.db.head()?;
            return Ok(ApplyOutcome {
                last: head.position,
                last_hash: head.hash,
                ..ApplyOutcome::default()
            });
        }
        let registry = self.db.registry();
        let mut latest_config = None;
        for entry in entries {
            match entry.change_type {
                ChangeType::Unknown => {
                    return Err(StorageError::UpgradeNeeded {
                        sequence: entry.sequence,
                        reason: "its change type is unknown to this build".to_owned(),
                    })
                }
                ChangeType::Patch => {
                    return Err(StorageError::InvalidChange(format!(
                        "entry {} is a Patch: a leader commits a patch as an Update, never as an \
                         entry",
                        entry.sequence
                    )))
                }
                ChangeType::Config => {
                    latest_config = Some((entry.sequence, membership::check_entry(entry)?));
                }
                _ if !registry.contains(&entry.model_type) => {
                    return Err(StorageError::UnknownModel(entry.model_type.clone()));
                }
                _ => {}
            }
        }
        let outcome = self.db.write(|conn| {
            let head = SyncLog::head(conn)?;
            let start = head.position;
            let mut outcome =
                ApplyOutcome { last: start, last_hash: head.hash, ..ApplyOutcome::default() };
            // Entries this log holds already come first (duplicates: same term, or a
            // divergence); the rest must continue the log from last + 1.
            let mut skipped = 0;
            for entry in entries {
                if entry.sequence == 0 || entry.sequence > start.sequence {
                    break;
                }
                let local_term = if entry.sequence == start.sequence {
                    Some(start.term)
                } else {
                    SyncLog::term_at(conn, entry.sequence)?
                };
                match local_term {
                    Some(term) if term == entry.term => {
                        if let Some(carried) = entry.hash {
                            let local = if entry.sequence == start.sequence {
                                Some(head.hash)
                            } else {
                                SyncLog::hash_at(conn, entry.sequence)?
                            };
                            if let Some(local) = local.filter(|local| *local != carried) {
                                return Err(StorageError::ChainMismatch {
                                    sequence: entry.sequence,
                                    carried,
                                    computed: local,
                                });
                            }
                        }
                        skipped += 1
                    }
                    Some(term) => {
                        return Err(StorageError::Diverged {
                            sequence: entry.sequence,
                            local_term: term,
                            remote_term: entry.term,
                        })
                    }
                    // Only a log missing its head (never the case) has no entry here.
                    None => {
                        return Err(StorageError::Gap {
                            expected: start.sequence + 1,
                            got: entry.sequence,
                        })
                    }
                }
            }
            let new = &entries[skipped..];
            for (expected, entry) in (start.sequence + 1..).zip(new) {
                if entry.sequence != expected {
                    return Err(StorageError::Gap { expected, got: entry.sequence });
                }
            }
            outcome.skipped = skipped as u64;
            let Some(last) = new.last() else { return Ok(outcome) };
            // The chain first: a carried hash that differs refuses the batch before any write.
            let hashes = SyncLog::chain(&head.hash, new)?;
            for entry in new.iter().filter(|e| e.change_type == ChangeType::Bulk) {
                outcome.bulk_jobs.push(local_jobs::insert(conn, entry)?);
            }
            // This device's pending changes are rebased over the new committed rows
            // (docs/architecture.md, "Local-first writes").
            let touched = new
                .iter()
                .filter(|e| !matches!(e.change_type, ChangeType::Bulk | ChangeType::Config))
                .map(|e| (e.model_type.clone(), e.record_id.clone()));
            let proposals: HashSet<Uuid> = new.iter().filter_map(|e| e.proposal_id).collect();
            let rebase = Rebase::begin(conn, registry, touched, &proposals)?;
            crate::transaction::apply_entries(conn, registry, new)?;
            SyncLog::insert_hashed(conn, new, &hashes)?;
            if let Some(rebase) = rebase {
                (outcome.settled, outcome.redelivered) = rebase.finish(conn, registry)?;
            }
            outcome.applied = new.len() as u64;
            outcome.last = LogPosition::of(last);
            outcome.last_hash = hashes.last().copied().unwrap_or(head.hash);
            sync_state::set_last_synced(conn, outcome.last.sequence)?;
            if let Some((sequence, configuration)) = &latest_config {
                if *sequence > start.sequence {
                    outcome.membership = membership::on_entry(conn, configuration, *sequence)?;
                }
            }
            Ok(outcome)
        })?;
        // What the caller reports to its leader must be on disk and under the mark first.
        self.db.acknowledge(outcome.last)?;
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
    /// `last_synced_sequence` to 0. Local jobs, the outbox and the repair stash are kept.
    ///
    /// # Errors
    /// [`StorageError::NotInitialized`] if there is no sync state (nothing is deleted then).
    pub fn reset(&self) -> Result<()> {
        let registry = self.db.registry();
        self.db.write(|conn| {
            keep_rebuild_mark(conn)?;
            clear_library(conn, registry)
        })
    }

    /// After a rebuild is complete (the log reached the leader's last sequence), in one
    /// transaction: the latest configuration entry of the rebuilt log becomes the one in
    /// effect if it is not already, and the rebuild mark is cleared once the log is at least as
    /// up to date as it ([`crate::membership::settle`]). Returns the configuration installed,
    /// if any. Cheap when there is nothing to do.
    pub fn settle(&self) -> Result<Option<Membership>> {
        self.db.write(membership::settle)
    }

    /// Divergence repair, step 1 (instead of [`Applier::reset`] when this device's log may hold
    /// entries the leader's lacks): in ONE transaction, copies every local `sync_log` entry into
    /// the local `stashed_entries` table (keyed by the entry's identity (sequence, term);
    /// entries stashed already — by an earlier repair that crashed before
    /// [`Applier::recover_orphans`] — are kept, not replaced), then does what
    /// [`Applier::reset`] does. Returns the number of entries newly stashed. (An earlier
    /// stash is also there when a rebuild was cut short by another divergence: the stash then
    /// holds entries of several logs.)
    ///
    /// Step 2 is the rebuild from the leader ([`Applier::apply`]); step 3 is
    /// [`Applier::recover_orphans`]. A crash anywhere in between loses nothing: the stash is in
    /// the database, a later `reset_for_repair` appends to it, and `recover_orphans` after the
    /// next complete rebuild handles all of it.
    ///
    /// # Errors
    /// [`StorageError::NotInitialized`] if there is no sync state (nothing changes then).
    pub fn reset_for_repair(&self) -> Result<u64> {
        let registry = self.db.registry();
        self.db.write(|conn| {
            keep_rebuild_mark(conn)?;
            let stashed = diesel::sql_query(
                "INSERT OR IGNORE INTO stashed_entries (sequence, term, origin_device, \
                 timestamp_ms, model_type, record_id, change_type, version, data, proposal_id, \
                 hash, stamp) \
                 SELECT sequence, term, origin_device, timestamp_ms, model_type, record_id, \
                 change_type, version, data, proposal_id, hash, stamp FROM sync_log",
            )
            .execute(conn)? as u64;
            clear_library(conn, registry)?;
            tracing::info!(stashed, "local log stashed for divergence repair");
            Ok(stashed)
        })
    }

    /// Divergence repair, step 3, once the rebuild from the leader is COMPLETE (the local log
    /// has reached the leader's last sequence): moves the changes of the stashed entries the
    /// leader's log lacks (orphans) into the outbox, to be re-proposed, in ONE transaction.
    ///
    /// For every stashed entry, in (term, sequence) order:
    /// - if the rebuilt log holds an entry with the same (sequence, term) **and the same
    ///   content** (origin device, model type, record id, change type, data, proposal id), its
    ///   change was replicated: nothing to re-propose (`replicated`). The content is compared,
    ///   not just the identity: a leader that lost its last transactions (power loss, a
    ///   restored backup) and restarted in the same term commits other entries at the same
    ///   (sequence, term) (docs/protocol.md, "The hash chain");
    /// - otherwise it is an orphan. A Bulk orphan, one of a model type not registered here, or
    ///   one its handler no longer validates, is dropped with a warning (`dropped`): a bulk
    ///   entry is a job hook, not a change to re-propose. A configuration orphan is never
    ///   re-proposed (`configurations`).
    ///
    /// Every other orphan's change goes into the outbox, one proposal per proposal id, the
    /// changes of one proposal in order. An entry that came from a proposal goes under that
    /// proposal's id, **together with the proposal's stashed entries that were replicated**:
    /// the proposal as far as this device knows it, its copies from several logs counted once
    /// (`merge_run`). The leader matches it against the entries its log holds for the id and
    /// commits exactly the changes missing there
    /// ([`crate::TransactionManager::commit_proposal`]): nothing if its proposer already got
    /// it committed whole (a duplicate), the rest if a response ended inside it before its
    /// leader was deposed and only a first part reached the new leader — also when another
    /// device's repair, knowing a shorter part, got there first. An entry without a proposal
    /// id goes under a Uuid v5 of (origin device, term, sequence). Every id is the same on
    /// every run, so recovering twice never queues a change twice (the outbox push is
    /// idempotent), and a proposal still queued here is not queued twice.
    ///
    /// Then the stash is cleared. Re-proposed changes follow the proposal rule (upsert; a
    /// delete of a missing record is dropped), so they land after the leader's own changes to
    /// the same records: the last write in leader order wins.
    ///
    /// Calling it before the rebuild is complete would take entries the leader has but that
    /// were not fetched yet for orphans (re-proposing an old value); the caller must not.
    ///
    /// # Errors
    /// [`StorageError::Corrupt`] for an unreadable stashed row; nothing changes on any error.
    pub fn recover_orphans(&self) -> Result<RecoveredOrphans> {
        let registry = self.db.registry();
        let recovered = self.db.write(|conn| {
            let rows = stashed_entries::table
                .order((stashed_entries::term.asc(), stashed_entries::sequence.asc()))
                .load::<LogRow>(conn)?;
            let mut recovered = RecoveredOrphans::default();
            let mut stashed = Vec::with_capacity(rows.len());
            // The proposals with an orphan: only their replicated entries are needed.
            let mut orphaned: HashSet<Uuid> = HashSet::new();
            for row in rows {
                let entry = row_to_entry(row)?;
                let replicated = SyncLog::get(conn, entry.sequence)?
                    .is_some_and(|rebuilt| same_change(&rebuilt, &entry));
                if let (false, Some(p)) = (replicated, entry.proposal_id) {
                    orphaned.insert(p);
                }
                stashed.push((entry, replicated));
            }
            // Changes the deposed log holds only as a conflict record (decided away there: the
            // stored values won): proposed again from the record, so that the new leader decides
            // them again and records the conflict — a change is always either in the log or in
            // a conflict record (docs/architecture.md, "Conflicts").
            let (decided_away, partial) = decided_away_orphans(conn, &stashed)?;
            orphaned.extend(decided_away.values().map(|(proposal, _)| *proposal));
            // Proposals to queue, in the order of their first stashed entry.
            let mut groups = Groups::default();
            // Where the logs parted: an orphan was made over the record as it stood there, so
            // that is its base (docs/architecture.md, "Conflicts") — not the version before it
            // in the deposed log, which the new leader's log does not share.
            let parted = stashed
                .iter()
                .filter(|(e, replicated)| !replicated && e.change_type != ChangeType::Config)
                .map(|(e, _)| e.sequence)
                .min()
                .map_or(i64::MAX, crate::error::saturating_i64);
            for (entry, replicated) in stashed {
                if replicated {
                    recovered.replicated += 1;
                    // Kept only for its proposal's sake, if that has an orphan: the leader
                    // needs the part it holds to find the missing one.
                    if !entry.proposal_id.is_some_and(|p| orphaned.contains(&p))
                        || entry.change_type == ChangeType::Config
                    {
                        continue;
                    }
                } else if entry.model_type.starts_with(lsync_protocol::RESERVED_MODEL_PREFIX)
                    && entry.change_type != ChangeType::Config
                {
                    // A conflict record is never re-proposed: it is written again when the
                    // change it decided is (that change's own orphan goes back to the leader,
                    // or, decided away, the change rebuilt from the record).
                    if let Some((id, change)) = decided_away.get(&entry.sequence) {
                        let mut change = change.clone();
                        base_where_parted(conn, &mut change, parted)?;
                        groups.of(*id).add(LogPosition::of(&entry), change, true);
                    }
                    continue;
                } else if entry.change_type == ChangeType::Config {
                    // A membership change is never re-proposed from a deposed leader's tail:
                    // whoever asked for it is told it is pending, and asks again.
                    recovered.configurations += 1;
                    continue;
                }
                let position = LogPosition::of(&entry);
                if !replicated && entry.change_type == ChangeType::Bulk {
                    tracing::warn!(%position, model_type = %entry.model_type,
                        record_id = %entry.record_id,
                        "orphaned bulk entry dropped: a bulk operation is not re-proposed");
                    recovered.dropped += 1;
                    continue;
                }
                let Some(handler) = registry.handler(&entry.model_type) else {
                    if !replicated {
                        tracing::warn!(%position, model_type = %entry.model_type,
                            record_id = %entry.record_id,
                            "orphaned entry of an unregistered model type dropped");
                        recovered.dropped += 1;
                    }
                    continue;
                };
                let id = entry.proposal_id.unwrap_or_else(|| orphan_proposal_id(&entry));
                // an orphan committed in part whose conflict record is an orphan too goes
                // back whole, as proposed (decided_away_orphans)
                let whole = match (entry.proposal_id, &entry.stamp) {
                    (Some(p), Some(stamp)) if !replicated => partial.get(&(p, stamp.hlc)).cloned(),
                    _ => None,
                };
                let mut change = whole.unwrap_or_else(|| Change::from_entry(entry));
                if !replicated && change.base_version.is_some() {
                    base_where_parted(conn, &mut change, parted)?;
                }
                let valid = match change.change_type {
                    ChangeType::Bulk => Ok(()),
                    ChangeType::Patch => crate::fields::check_patch(&change.data),
                    _ => handler.validate(&change),
                };
                {
                    if let Err(error) = valid {
                        if !replicated {
                            tracing::warn!(%position, %error, "invalid orphaned entry dropped");
                            recovered.dropped += 1;
                        }
                        continue;
                    }
                }
                groups.of(id).add(position, change, !replicated);
            }
            for group in groups.list {
                let (id, orphans, changes) = group.finish();
                if orphans == 0 {
                    // Its orphans were all dropped: nothing to re-propose.
                    continue;
                }
                if pending::push(conn, registry, id, &changes)? {
                    recovered.proposals += 1;
                    recovered.changes += orphans;
                } else {
                    recovered.already_queued += 1;
                }
            }
            diesel::delete(stashed_entries::table).execute(conn)?;
            Ok(recovered)
        })?;
        if recovered != RecoveredOrphans::default() {
            tracing::info!(?recovered, "divergence repair: orphaned changes moved to the outbox");
        }
        Ok(recovered)
    }
}

/// Bases orphan `change` on its record as it stood where the logs parted (before sequence
/// `parted`): the version of the last write of it there, 0 if none — not the version before it
/// in the deposed log, which the new leader's log does not share.
fn base_where_parted(conn: &mut SqliteConnection, change: &mut Change, parted: i64) -> Result<()> {
    let base =
        crate::sync_log::last_write_before(conn, &change.model_type, &change.record_id, parted)?;
    change.base_version = Some(base.map_or(0, |r| r.version));
    Ok(())
}

/// What the orphaned conflict records of `stashed` (each entry with whether the rebuilt log
/// holds it) say of the changes they decided, each change rebuilt from its record (its type,
/// data and timestamp as proposed; the caller sets its base):
/// - by the record's sequence, with its proposal: a change with no entry of its own (of its
///   proposal, for its record, with its timestamp) in the stash or the rebuilt log — decided
///   away by the deposed leader, which only the record keeps;
/// - by (proposal, timestamp): a change whose own entry is an orphan too — committed in part
///   (the fields it won): proposed again whole, not as the part its entry holds, so that the
///   new leader decides every field it set again and records the conflict (a Patch of the part
///   alone left the fields it lost in no record: seeds 103 and 155).
type Rebuilt = (HashMap<u64, (Uuid, Change)>, HashMap<(Uuid, Hlc), Change>);

fn decided_away_orphans(
    conn: &mut SqliteConnection,
    stashed: &[(SyncLogEntry, bool)],
) -> Result<Rebuilt> {
    let (mut away, mut partial) = (HashMap::new(), HashMap::new());
    for (entry, replicated) in stashed {
        if *replicated || entry.model_type != crate::conflicts::CONFLICT_MODEL_TYPE {
            continue;
        }
        let Ok(conflict) = crate::decode::<crate::conflicts::Conflict>(&entry.data) else {
            continue;
        };
        let Some(change_type) = ChangeType::parse(&conflict.change_type) else { continue };
        // the change's own entry: its proposal, its record and — another change of the same
        // record in the proposal may have one (seed 21) — its timestamp
        let of_it = |e: &SyncLogEntry| {
            e.proposal_id == Some(conflict.proposal_id)
                && e.model_type == conflict.model_type
                && e.record_id == conflict.record_id
                && e.stamp.as_ref().is_none_or(|s| s.hlc == conflict.proposed_hlc)
        };
        let orphan_entry = stashed.iter().any(|(e, replicated)| !replicated && of_it(e));
        let kept = stashed.iter().any(|(e, replicated)| *replicated && of_it(e))
            || SyncLog::proposal_entries(conn, conflict.proposal_id)?.iter().any(of_it);
        let change = Change {
            model_type: conflict.model_type,
            record_id: conflict.record_id,
            change_type,
            data: conflict.proposed,
            hlc: Some(conflict.proposed_hlc),
            base_version: Some(conflict.base_version),
        };
        match (orphan_entry, kept) {
            (false, false) => {
                away.insert(entry.sequence, (conflict.proposal_id, change));
            }
            (true, false) => {
                partial.insert((conflict.proposal_id, conflict.proposed_hlc), change);
            }
            // its entry is in the new log: the change is accounted for there
            (_, true) => {}
        }
    }
    Ok((away, partial))
}

/// What [`Applier::recover_orphans`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecoveredOrphans {
    /// Proposals newly queued in the outbox.
    pub proposals: u64,
    /// Orphaned changes in those proposals (one per orphaned entry; a partly replicated
    /// proposal also carries its replicated changes, counted in `replicated`).
    pub changes: u64,
    /// Orphaned entries dropped (Bulk, unregistered model type, invalid), each with a warning.
    pub dropped: u64,
    /// Stashed entries found in the rebuilt log (replicated, nothing to do).
    pub replicated: u64,
    /// Proposals that were in the outbox already (same id), left as they were.
    pub already_queued: u64,
    /// Configuration entries the leader's log lacks: never re-proposed (a membership change
    /// that did not commit is asked for again by whoever wanted it).
    pub configurations: u64,
}

/// One proposal [`Applier::recover_orphans`] re-proposes, built from its stashed entries.
///
/// The stash may hold a proposal's entries from several logs (a repair interrupted by another
/// divergence stashes the log it had rebuilt so far too), and a log may hold a proposal in
/// parts (a leader completed it after a failover). The entries come in (term, sequence) order
/// and fall into **runs**: entries of one term at consecutive sequences, i.e. one commit, or
/// the part of it that one log held. Each run is merged into the proposal as known so far
/// ([`merge_run`]), so that copies from several logs count once.
/// The proposals to queue, in the order of their first stashed entry.
#[derive(Default)]
struct Groups {
    list: Vec<Group>,
    index: HashMap<Uuid, usize>,
}

impl Groups {
    /// The group of proposal `id`, a new one at the end if there is none yet.
    fn of(&mut self, id: Uuid) -> &mut Group {
        let i = *self.index.entry(id).or_insert_with(|| {
            self.list.push(Group::new(id));
            self.list.len() - 1
        });
        &mut self.list[i]
    }
}

struct Group {
    id: Uuid,
    /// The proposal as known so far (the runs merged before `run`).
    known: Vec<Change>,
    /// The run being read, and the position of its last entry.
    run: Vec<Change>,
    last: Option<LogPosition>,
    /// How many of its stashed entries are orphans.
    orphans: u64,
}

impl Group {
    fn new(id: Uuid) -> Self {
        Self { id, known: Vec::new(), run: Vec::new(), last: None, orphans: 0 }
    }

    /// Adds the next stashed entry (in (term, sequence) order) of this proposal.
    fn add(&mut self, position: LogPosition, change: Change, orphan: bool) {
        let continues = self.last.is_some_and(|last| {
            last.term == position.term && last.sequence.checked_add(1) == Some(position.sequence)
        });
        if !continues {
            merge_run(&mut self.known, &std::mem::take(&mut self.run));
        }
        self.run.push(change);
        self.last = Some(position);
        self.orphans += u64::from(orphan);
    }

    /// The id, the number of orphans and the changes to propose.
    fn finish(mut self) -> (Uuid, u64, Vec<Change>) {
        merge_run(&mut self.known, &self.run);
        (self.id, self.orphans, self.known)
    }
}

/// Merges `run` — the changes of one run of a proposal's stashed entries (see [`Group`]) —
/// into `known`, the proposal as known so far.
///
/// A run is a stretch of the proposal's changes: from its start (the first commit of it, in
/// whatever log held it) or from where a leader's log ended when it completed the proposal.
/// It is laid over `known` at the first place it agrees with ([`Change::same_as`] for every
/// change the two have side by side), the end of `known` at the latest, and what it has past
/// the end of `known` is added. So a copy of a part already known adds nothing, and the rest
/// of the proposal continues it. A proposal that repeats a change exactly, at the place where
/// it was split (`[x = 1, y, x = 1]` cut after `y`), is taken for a copy there and loses the
/// repetition; telling them apart would need the log each entry was stashed from.
pub(crate) fn merge_run(known: &mut Vec<Change>, run: &[Change]) {
    let agrees = |at: usize| {
        known[at..]
            .iter()
            .zip(run)
            .all(|(k, r)| k.same_as(&r.model_type, &r.record_id, r.change_type, &r.data))
    };
    let at = (0..known.len()).find(|&at| agrees(at)).unwrap_or(known.len());
    let overlap = known.len() - at;
    if let Some(rest) = run.get(overlap..) {
        known.extend_from_slice(rest);
    }
}

/// Whether the rebuilt log's entry `rebuilt` is the stashed entry `stashed` replicated: the
/// same term and the same change (its timestamp, version and hash may differ only if its
/// history did; the change is what a repair re-proposes).
fn same_change(rebuilt: &SyncLogEntry, stashed: &SyncLogEntry) -> bool {
    rebuilt.term == stashed.term
        && rebuilt.origin_device == stashed.origin_device
        && rebuilt.model_type == stashed.model_type
        && rebuilt.record_id == stashed.record_id
        && rebuilt.change_type == stashed.change_type
        && rebuilt.data == stashed.data
        && rebuilt.proposal_id == stashed.proposal_id
        && rebuilt.stamp == stashed.stamp
}

/// Namespace of the ids [`Applier::recover_orphans`] gives orphans without a proposal id.
const ORPHAN_NAMESPACE: Uuid = Uuid::from_u128(0x6c73_796e_635f_4f52_8000_7068_616e_7321);

/// The deterministic proposal id of an orphaned entry that had none: Uuid v5 of its origin
/// device, term and sequence.
fn orphan_proposal_id(entry: &SyncLogEntry) -> Uuid {
    let mut name = [0u8; 32];
    name[..16].copy_from_slice(entry.origin_device.as_bytes());
    name[16..24].copy_from_slice(&entry.term.to_be_bytes());
    name[24..].copy_from_slice(&entry.sequence.to_be_bytes());
    Uuid::new_v5(&ORPHAN_NAMESPACE, &name)
}

/// Before the log is cleared: the rebuild mark becomes the log's last position if that is more
/// up to date than the mark (docs/architecture.md, "Membership": a rebuilding device never
/// campaigns, and never votes for a log behind what it held).
fn keep_rebuild_mark(conn: &mut SqliteConnection) -> Result<()> {
    let last = SyncLog::last(conn)?;
    if last > membership::rebuild_mark(conn)? {
        membership::set_rebuild_mark(conn, last)?;
    }
    Ok(())
}

/// Clears the model rows, the log and the local memory of entry-less proposals, and sets
/// `last_synced_sequence` to 0; the caller holds the transaction.
fn clear_library(conn: &mut SqliteConnection, registry: &ModelRegistry) -> Result<()> {
    for handler in registry.handlers() {
        handler.clear(conn)?;
    }
    crate::field_clock::clear(conn)?;
    let deleted = SyncLog::truncate_after(conn, 0)?;
    proposals::clear(conn)?;
    sync_state::set_last_synced(conn, 0)?;
    // the outbox is kept: its changes are still shown, now over the empty tables
    pending::after_clear(conn, registry)?;
    tracing::info!(deleted, "library reset for full reconciliation");
    Ok(())
}

/// The number of stashed entries.
pub(crate) fn stashed_count(conn: &mut SqliteConnection) -> Result<u64> {
    let count = stashed_entries::table.count().get_result::<i64>(conn)?;
    crate::error::to_u64(count, "stashed_entries count")
}

#[cfg(test)]
mod tests;
