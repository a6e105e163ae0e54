//! The pending overlay: this device's own changes that no leader has committed yet, shown in
//! its model tables at once (docs/architecture.md, "Local-first writes").
//!
//! **The invariant**: a device's model tables are the replay of its committed log with the
//! changes of its overlay entries — the outbox entries that are pending or delivered
//! ([`crate::outbox::overlay`]), in outbox order — applied on top by the proposal rule
//! ([`apply_change`]). Every record a change of an overlay entry touches has a row in
//! `pending_undo` holding its committed row (or "absent"), captured the first time an overlay
//! change touched it; no other record has one.
//!
//! Everything that changes the committed rows of such a record, or the overlay, **rebases** in
//! the same transaction: [`Rebase::begin`] puts the committed rows of the records concerned back
//! (from `pending_undo`), the caller writes (committed entries, an outbox change), and
//! [`Rebase::finish`] drops the overlay entries that are now in the log and replays the rest of
//! the overlay over those records, capturing their committed rows again. A device without
//! overlay entries pays one `EXISTS` query per transaction ([`crate::outbox::has_overlay`]).
//! The sync log is never touched here: it stays committed-only.

use std::collections::HashSet;

use diesel::prelude::*;
use diesel::sqlite::SqliteConnection;
use lsync_protocol::{ChangeType, SyncLogEntry};
use uuid::Uuid;

use crate::change::Change;
use crate::error::{Result, StorageError};
use crate::model::{ModelHandler, ModelRegistry, StoredRecord};
use crate::outbox::{self, OutboxEntry, OutboxState};
use crate::schema::pending_undo;
use crate::sync_log::SyncLog;

/// A record: (model type, record id).
pub(crate) type Key = (String, String);

/// The record a change writes rows of, if it writes any (Bulk and configuration changes do not).
fn key_of(change: &Change) -> Option<Key> {
    matches!(
        change.change_type,
        ChangeType::Insert | ChangeType::Update | ChangeType::Patch | ChangeType::Delete
    )
    .then(|| (change.model_type.clone(), change.record_id.clone()))
}

/// The records `changes` write.
pub(crate) fn keys_of_changes(changes: &[Change]) -> Vec<Key> {
    changes.iter().filter_map(key_of).collect()
}

/// The records the changes of `entry` write.
fn keys_of(entry: &OutboxEntry) -> impl Iterator<Item = Key> + '_ {
    entry.changes.iter().filter_map(key_of)
}

/// A row of the entry `change` would make at `version`, for a handler's `apply`.
fn entry_of(change: &Change, change_type: ChangeType, version: i64) -> SyncLogEntry {
    SyncLogEntry {
        sequence: 0,
        term: 0,
        origin_device: Uuid::nil(),
        timestamp_ms: 0,
        model_type: change.model_type.clone(),
        record_id: change.record_id.clone(),
        change_type,
        version,
        data: if change_type == ChangeType::Delete { Vec::new() } else { change.data.clone() },
        proposal_id: None,
        hash: None,
        stamp: None,
    }
}

/// Applies one pending change to the tables as the leader's proposal rule would
/// (docs/architecture.md, "Concurrent changes"): an Insert or Update is an upsert of the whole
/// record at the current version + 1 (1 if absent), a Patch sets its fields of the record if
/// present (merged into the row shown, [`crate::fields::merge`]; dropped otherwise), a Delete
/// removes the record if present (and is dropped otherwise); Bulk and configuration changes write no rows. The verifier
/// replays the overlay with this same function.
pub(crate) fn apply_change(
    conn: &mut SqliteConnection,
    handler: &dyn ModelHandler,
    change: &Change,
) -> Result<()> {
    match change.change_type {
        ChangeType::Insert | ChangeType::Update => {
            let version = match handler.current_version(conn, &change.record_id)? {
                None => 1,
                Some(v) => v.checked_add(1).ok_or_else(|| {
                    StorageError::InvalidChange(format!(
                        "version overflow of {} {:?}",
                        change.model_type, change.record_id
                    ))
                })?,
            };
            handler.apply(conn, &entry_of(change, ChangeType::Update, version))
        }
        ChangeType::Patch => {
            let Some(stored) = handler.load(conn, &change.record_id)? else { return Ok(()) };
            let version = stored.version.checked_add(1).ok_or_else(|| {
                StorageError::InvalidChange(format!(
                    "version overflow of {} {:?}",
                    change.model_type, change.record_id
                ))
            })?;
            // A patch the record cannot take (a field it lacks) is not shown — the leader
            // refuses it too — rather than failing the committed write this replay follows.
            let data = match crate::fields::merge(&stored.data, &change.data) {
                Ok(data) => data,
                Err(error) => {
                    tracing::warn!(model_type = %change.model_type,
                        record_id = %change.record_id, %error, "pending patch not shown");
                    return Ok(());
                }
            };
            let merged = Change { data, change_type: ChangeType::Update, ..change.clone() };
            handler.apply(conn, &entry_of(&merged, ChangeType::Update, version))
        }
        ChangeType::Delete => match handler.current_version(conn, &change.record_id)? {
            Some(v) => handler.apply(conn, &entry_of(change, ChangeType::Delete, v)),
            None => Ok(()),
        },
        ChangeType::Bulk | ChangeType::Config | ChangeType::Unknown => Ok(()),
    }
}

/// The records with a captured committed row.
fn undo_keys(conn: &mut SqliteConnection) -> Result<HashSet<Key>> {
    Ok(pending_undo::table
        .select((pending_undo::model_type, pending_undo::record_id))
        .load::<Key>(conn)?
        .into_iter()
        .collect())
}

/// Every captured committed row: (model type, record id, the row or `None` if absent).
pub(crate) fn undo_rows(
    conn: &mut SqliteConnection,
) -> Result<Vec<(String, String, Option<StoredRecord>)>> {
    let rows = pending_undo::table
        .select((
            pending_undo::model_type,
            pending_undo::record_id,
            pending_undo::data,
            pending_undo::version,
        ))
        .order((pending_undo::model_type.asc(), pending_undo::record_id.asc()))
        .load::<(String, String, Option<Vec<u8>>, Option<i64>)>(conn)?;
    Ok(rows
        .into_iter()
        .map(|(m, r, data, version)| {
            let stored = data.zip(version).map(|(data, version)| StoredRecord { data, version });
            (m, r, stored)
        })
        .collect())
}

/// Captures the committed row of `key` unless it is captured already (the row in the table is
/// the committed one then: no overlay change touched it yet).
fn capture(conn: &mut SqliteConnection, handler: &dyn ModelHandler, key: &Key) -> Result<()> {
    let captured = diesel::select(diesel::dsl::exists(
        pending_undo::table
            .filter(pending_undo::model_type.eq(&key.0))
            .filter(pending_undo::record_id.eq(&key.1)),
    ))
    .get_result::<bool>(conn)?;
    if captured {
        return Ok(());
    }
    let stored = handler.load(conn, &key.1)?;
    let (data, version) = stored.map(|s| (s.data, s.version)).unzip();
    diesel::insert_into(pending_undo::table)
        .values((
            pending_undo::model_type.eq(&key.0),
            pending_undo::record_id.eq(&key.1),
            pending_undo::data.eq(data),
            pending_undo::version.eq(version),
        ))
        .execute(conn)?;
    Ok(())
}

/// Puts the committed rows of `keys` back (those with a captured row; the others show their
/// committed row already) and forgets them.
fn restore(
    conn: &mut SqliteConnection,
    registry: &ModelRegistry,
    keys: &HashSet<Key>,
) -> Result<()> {
    for (model_type, record_id) in keys {
        let row = pending_undo::table
            .filter(pending_undo::model_type.eq(model_type))
            .filter(pending_undo::record_id.eq(record_id))
            .select((pending_undo::data, pending_undo::version))
            .get_result::<(Option<Vec<u8>>, Option<i64>)>(conn)
            .optional()?;
        let Some((data, version)) = row else { continue };
        if let Some(handler) = registry.handler(model_type) {
            let change = Change {
                model_type: model_type.clone(),
                record_id: record_id.clone(),
                change_type: ChangeType::Update,
                data: data.unwrap_or_default(),
                hlc: None,
                base_version: None,
            };
            match version {
                Some(version) => {
                    handler.apply(conn, &entry_of(&change, ChangeType::Update, version))?
                }
                None => handler.apply(conn, &entry_of(&change, ChangeType::Delete, 0))?,
            }
        }
        diesel::delete(
            pending_undo::table
                .filter(pending_undo::model_type.eq(model_type))
                .filter(pending_undo::record_id.eq(record_id)),
        )
        .execute(conn)?;
    }
    Ok(())
}

/// Applies the overlay's changes of `entries` (in order) to the records in `keys` (all of them
/// if `None`), capturing each record's committed row first. A change of an unregistered model
/// type is not shown (nothing can write it).
fn replay(
    conn: &mut SqliteConnection,
    registry: &ModelRegistry,
    entries: &[OutboxEntry],
    keys: Option<&HashSet<Key>>,
) -> Result<()> {
    for entry in entries {
        for change in &entry.changes {
            let Some(key) = key_of(change) else { continue };
            if keys.is_some_and(|keys| !keys.contains(&key)) {
                continue;
            }
            let Some(handler) = registry.handler(&change.model_type) else { continue };
            capture(conn, handler, &key)?;
            apply_change(conn, handler, change)?;
        }
    }
    Ok(())
}

/// Queues proposal `proposal_id` in the outbox (its changes validated by the caller) and shows
/// its changes at once, over everything shown before. Returns whether it was queued now (an id
/// queued already changes nothing).
///
/// A change without a timestamp gets one of this device's clock, and one without a base
/// version the version of the record this device holds committed (0 if it holds none): what
/// the change was based on (docs/architecture.md, "Conflicts"). A change re-proposed from a
/// log entry keeps the ones it had.
pub(crate) fn push(
    conn: &mut SqliteConnection,
    registry: &ModelRegistry,
    proposal_id: Uuid,
    changes: &[Change],
) -> Result<bool> {
    if outbox::get(conn, proposal_id)?.is_some() {
        return Ok(false);
    }
    let changes = &stamp(conn, registry, changes)?;
    if !outbox::push_unchecked(conn, proposal_id, changes)? {
        return Ok(false);
    }
    let entry = OutboxEntry {
        proposal_id,
        created_at_ms: 0,
        changes: changes.to_vec(),
        attempts: 0,
        next_attempt_ms: 0,
        last_error: None,
        state: OutboxState::Pending,
    };
    replay(conn, registry, std::slice::from_ref(&entry), None)?;
    Ok(true)
}

/// `changes`, each with a timestamp and a base version ([`push`]).
fn stamp(
    conn: &mut SqliteConnection,
    registry: &ModelRegistry,
    changes: &[Change],
) -> Result<Vec<Change>> {
    let mut out = changes.to_vec();
    if out.iter().all(|c| c.hlc.is_some() && c.base_version.is_some()) {
        return Ok(out);
    }
    let mut clock = match crate::hlc::clock(conn) {
        Ok(clock) => clock,
        // no device yet (a bare outbox): the leader stamps the changes when it commits them
        Err(StorageError::NotInitialized) => return Ok(out),
        Err(e) => return Err(e),
    };
    let now = crate::hlc::now();
    for change in &mut out {
        if change.change_type == ChangeType::Bulk {
            continue;
        }
        if change.hlc.is_none() {
            change.hlc = Some(clock.tick(now));
        }
        if change.base_version.is_none() {
            change.base_version = Some(committed_version(conn, registry, change)?.unwrap_or(0));
        }
    }
    crate::hlc::store(conn, clock.last())?;
    Ok(out)
}

/// The version of `change`'s record this device holds committed: the captured committed row's
/// if the overlay covers the record, else the table's.
fn committed_version(
    conn: &mut SqliteConnection,
    registry: &ModelRegistry,
    change: &Change,
) -> Result<Option<i64>> {
    let captured = pending_undo::table
        .filter(pending_undo::model_type.eq(&change.model_type))
        .filter(pending_undo::record_id.eq(&change.record_id))
        .select(pending_undo::version)
        .get_result::<Option<i64>>(conn)
        .optional()?;
    match (captured, registry.handler(&change.model_type)) {
        (Some(version), _) => Ok(version),
        (None, Some(handler)) => handler.current_version(conn, &change.record_id),
        (None, None) => Ok(None),
    }
}

/// Runs `f`, a change of outbox entry `proposal_id` (removing it, marking it failed, putting it
/// back to pending), rebasing the records it writes around it.
pub(crate) fn around_entry<R>(
    conn: &mut SqliteConnection,
    registry: &ModelRegistry,
    proposal_id: Uuid,
    f: impl FnOnce(&mut SqliteConnection) -> Result<R>,
) -> Result<R> {
    let Some(entry) = outbox::get(conn, proposal_id)? else { return f(conn) };
    let keys: HashSet<Key> = keys_of(&entry).collect();
    restore(conn, registry, &keys)?;
    let result = f(conn)?;
    let overlay = outbox::overlay(conn)?;
    replay(conn, registry, &overlay, Some(&keys))?;
    Ok(result)
}

/// After the model tables were cleared (full reconciliation): forgets every captured row and
/// shows the whole overlay over the empty tables.
pub(crate) fn after_clear(conn: &mut SqliteConnection, registry: &ModelRegistry) -> Result<()> {
    diesel::delete(pending_undo::table).execute(conn)?;
    let overlay = outbox::overlay(conn)?;
    replay(conn, registry, &overlay, None)
}

/// A rebase around committed writes: see the module documentation.
#[derive(Debug)]
pub(crate) struct Rebase {
    /// The records whose committed rows were put back, to replay the overlay over.
    keys: HashSet<Key>,
    /// Overlay entries that may be in the log after the write: of a proposal the write names,
    /// or delivered.
    candidates: Vec<OutboxEntry>,
}

impl Rebase {
    /// Before committed rows are written: `None` if there is no overlay (nothing to do);
    /// otherwise puts back the committed rows of the records `touched` (what the write is about
    /// to change) and of the overlay entries that may settle — those of the proposals named in
    /// `proposals` (the write commits them), and the delivered ones.
    pub(crate) fn begin(
        conn: &mut SqliteConnection,
        registry: &ModelRegistry,
        touched: impl IntoIterator<Item = Key>,
        proposals: &HashSet<Uuid>,
    ) -> Result<Option<Rebase>> {
        if !outbox::has_overlay(conn)? {
            return Ok(None);
        }
        let undo = undo_keys(conn)?;
        let candidates: Vec<OutboxEntry> = outbox::overlay(conn)?
            .into_iter()
            .filter(|e| {
                proposals.contains(&e.proposal_id)
                    || matches!(e.state, OutboxState::Delivered { .. })
            })
            .collect();
        let keys: HashSet<Key> = touched
            .into_iter()
            .chain(candidates.iter().flat_map(keys_of))
            .filter(|k| undo.contains(k))
            .collect();
        restore(conn, registry, &keys)?;
        Ok(Some(Rebase { keys, candidates }))
    }

    /// After the committed rows were written and the log holds them: removes the candidate
    /// entries that are committed now — a delivered one once the log reaches the sequence its
    /// leader gave, any other once the log holds the whole proposal — and replays the rest of
    /// the overlay over the records put back. Returns how many entries were removed, and how
    /// many delivered ones were put back to pending (their proposer must run again).
    pub(crate) fn finish(
        self,
        conn: &mut SqliteConnection,
        registry: &ModelRegistry,
    ) -> Result<(u64, u64)> {
        let last = SyncLog::last(conn)?.sequence;
        let (mut settled, mut redelivered) = (0, 0);
        for entry in &self.candidates {
            let committed = match entry.state {
                OutboxState::Delivered { last_sequence } if last_sequence <= last => {
                    if !held_whole(conn, entry)? {
                        // The log reached the leader's sequence without the proposal: that
                        // leader's commit did not last (its tail was replaced after a failover,
                        // or its disk went back). Proposed again — once: the log decides.
                        if outbox::redeliver(conn, entry.proposal_id)? {
                            redelivered += 1;
                        }
                        tracing::info!(proposal = %entry.proposal_id, at = last_sequence,
                            "a delivered proposal is not in the log it reached: proposed again");
                        continue;
                    }
                    true
                }
                OutboxState::Delivered { .. } => false,
                _ => {
                    let present = SyncLog::proposal_entries(conn, entry.proposal_id)?;
                    !present.is_empty()
                        && crate::transaction::missing_part(&entry.changes, &present).is_none()
                }
            };
            if committed && outbox::remove(conn, entry.proposal_id)? {
                settled += 1;
            }
        }
        if !self.keys.is_empty() {
            let overlay = outbox::overlay(conn)?;
            replay(conn, registry, &overlay, Some(&self.keys))?;
        }
        Ok((settled, redelivered))
    }
}

/// Settles proposal `proposal_id`, which a leader answered as committed as far as
/// `last_sequence`: removed from the outbox (and the overlay, rebased) if this device's log
/// reaches that sequence, else moved to [`OutboxState::Delivered`] (still shown) until the log
/// gets there. Returns whether an overlay entry was found.
pub(crate) fn settle(
    conn: &mut SqliteConnection,
    registry: &ModelRegistry,
    proposal_id: Uuid,
    last_sequence: u64,
) -> Result<bool> {
    let Some(entry) = outbox::get(conn, proposal_id)? else { return Ok(false) };
    match entry.state {
        OutboxState::Failed { .. } => Ok(false),
        _ if SyncLog::last(conn)?.sequence >= last_sequence => {
            if held_whole(conn, &entry)? {
                around_entry(conn, registry, proposal_id, |conn| outbox::remove(conn, proposal_id))
            } else {
                // The log is past the answer without the proposal: the commit did not last
                // (or the answer was for another copy of it). Proposed again, at once; marked
                // delivered it would wait for a write that may never come.
                outbox::redeliver(conn, proposal_id)?;
                tracing::info!(proposal = %proposal_id, at = last_sequence,
                    "a committed proposal is not in the log past its sequence: proposed again");
                Ok(true)
            }
        }
        OutboxState::Pending => outbox::mark_delivered(conn, proposal_id, last_sequence),
        OutboxState::Delivered { .. } => Ok(true),
    }
}

/// Puts back to pending every delivered proposal this device's log does not hold whole (see
/// `Command::Redeliver` of the proposer): its leader's commit may not have lasted. Returns how
/// many were moved.
pub(crate) fn redeliver_unheld(conn: &mut SqliteConnection) -> Result<u64> {
    let mut moved = 0;
    for entry in outbox::overlay(conn)? {
        if matches!(entry.state, OutboxState::Delivered { .. })
            && !held_whole(conn, &entry)?
            && outbox::redeliver(conn, entry.proposal_id)?
        {
            moved += 1;
        }
    }
    Ok(moved)
}

/// Whether this device's log holds the whole of `entry`'s proposal: its entries (by proposal
/// id) commit every change but deletes that may have been dropped (a delete of a record that
/// did not exist writes no entry; a proposal of deletes only may write none, and counts as held)
/// and changes a conflict decided against (a conflict record of the proposal and the change's
/// record is in the log instead: docs/architecture.md, "Conflicts").
fn held_whole(conn: &mut SqliteConnection, entry: &OutboxEntry) -> Result<bool> {
    let present = SyncLog::proposal_entries(conn, entry.proposal_id)?;
    let from = if present.is_empty() {
        0
    } else {
        match crate::transaction::missing_part(&entry.changes, &present) {
            None => return Ok(true),
            Some(from) => from,
        }
    };
    for change in entry.changes.iter().skip(from) {
        if change.change_type == ChangeType::Delete {
            continue;
        }
        // only a change stamped where it was made is ever decided by a conflict
        let Some(hlc) = change.hlc else { return Ok(false) };
        let id = crate::conflicts::conflict_id(
            entry.proposal_id,
            &change.model_type,
            &change.record_id,
            hlc,
        );
        if !crate::conflicts::exists(conn, &id)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// At open: a database whose outbox holds entries but which remembers no committed row (its
/// entries were queued by a version before local-first writes, whose tables showed the
/// committed rows only) shows its pending changes now, over the committed rows. Afterwards
/// every overlay change of a registered model has its captured row, so this does nothing.
pub(crate) fn show_after_upgrade(
    conn: &mut SqliteConnection,
    registry: &ModelRegistry,
) -> Result<()> {
    let remembers =
        diesel::select(diesel::dsl::exists(pending_undo::table.select(pending_undo::model_type)))
            .get_result::<bool>(conn)?;
    if remembers || !outbox::has_overlay(conn)? {
        return Ok(());
    }
    let overlay = outbox::overlay(conn)?;
    replay(conn, registry, &overlay, None)
}
