//! The durable outbox: proposals waiting to be committed by the leader.
//!
//! Local to each device (never replicated), in the library's database so that it survives
//! restarts. A change made while no leader is reachable — or an orphaned change recovered by
//! divergence repair ([`crate::Applier::recover_orphans`]) — waits here until a leader commits
//! it ([`crate::TransactionManager::commit_proposal`] dedups by the proposal id, so resending
//! after a lost reply is safe). The functions take a connection; callers hold the transaction
//! ([`crate::Database`] has wrappers that open one).
//!
//! An entry is [`OutboxState::Pending`] (the proposer delivers it), [`OutboxState::Delivered`]
//! (a leader committed it, this device's log has not reached it yet) or
//! [`OutboxState::Failed`]: refused for good by a leader, or too large for a frame. A failed entry is kept, with its
//! reason, instead of deleted, so nothing the user was told is `queued` disappears silently;
//! it stays until an operator [`retry`]s it (back to pending) or [`discard`]s it
//! (docs/architecture.md, "Outbox").
//!
//! Pending and delivered entries are this device's **pending overlay**: their changes are shown
//! in its model tables over the committed rows ([`crate::pending`]). The functions here touch
//! the `outbox` table only; [`crate::Database`]'s wrappers keep the overlay in step.

use diesel::prelude::*;
use diesel::sqlite::SqliteConnection;
use lsync_protocol::ProposedChange;
use uuid::Uuid;

use crate::change::Change;
use crate::error::{now_ms, parse_uuid, Result, StorageError};
use crate::model::ModelRegistry;
use crate::schema::outbox;

/// Where an outbox entry stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboxState {
    /// Waiting to be delivered; the proposer retries it.
    Pending,
    /// A leader committed it, as far as sequence `last_sequence` of its log, and this device's
    /// log has not reached that sequence yet: still shown over the committed rows (the
    /// overlay), no longer delivered; removed once the log gets there.
    Delivered {
        /// The last sequence of the proposal (or of the leader's log, if it wrote no entry).
        last_sequence: u64,
    },
    /// Refused for good: the proposer no longer sends it.
    Failed {
        /// Why (the leader's refusal, or the size check).
        reason: String,
        /// When it was refused, milliseconds since the Unix epoch.
        at_ms: i64,
    },
}

impl OutboxState {
    /// `pending` or `failed`, as stored in the `state` column.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Pending => PENDING,
            Self::Delivered { .. } => DELIVERED,
            Self::Failed { .. } => FAILED,
        }
    }
}

const PENDING: &str = "pending";
const FAILED: &str = "failed";
const DELIVERED: &str = "delivered";

/// One queued proposal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    /// The proposal's id (sent as `Propose.proposal_id`; the leader commits it at most once).
    pub proposal_id: Uuid,
    /// When it was queued, milliseconds since the Unix epoch.
    pub created_at_ms: i64,
    /// The changes, in order.
    pub changes: Vec<Change>,
    /// Failed delivery attempts so far.
    pub attempts: u32,
    /// Not to be sent before this time (milliseconds since the Unix epoch); a new entry is due
    /// at once (`created_at_ms`).
    pub next_attempt_ms: i64,
    /// Why the last attempt failed, if one did.
    pub last_error: Option<String>,
    /// Pending, or failed for good.
    pub state: OutboxState,
}

type OutboxRow = (
    String,
    i64,
    Vec<u8>,
    i32,
    i64,
    Option<String>,
    String,
    Option<String>,
    Option<i64>,
    Option<i64>,
);

fn row_to_entry(row: OutboxRow) -> Result<OutboxEntry> {
    let (
        proposal_id,
        created_at_ms,
        changes,
        attempts,
        next_attempt_ms,
        last_error,
        state,
        failed_reason,
        failed_at_ms,
        committed_last,
    ) = row;
    let proposal_id = parse_uuid(&proposal_id, "outbox proposal_id")?;
    let state = match state.as_str() {
        PENDING => OutboxState::Pending,
        DELIVERED => OutboxState::Delivered {
            last_sequence: committed_last.and_then(|l| u64::try_from(l).ok()).unwrap_or(0),
        },
        FAILED => OutboxState::Failed {
            reason: failed_reason.unwrap_or_default(),
            at_ms: failed_at_ms.unwrap_or(0),
        },
        other => {
            return Err(StorageError::Corrupt(format!(
                "outbox proposal {proposal_id}: unknown state {other:?}"
            )))
        }
    };
    let changes: Vec<ProposedChange> = rmp_serde::from_slice(&changes).map_err(|e| {
        StorageError::Corrupt(format!("outbox proposal {proposal_id}: undecodable changes: {e}"))
    })?;
    Ok(OutboxEntry {
        proposal_id,
        created_at_ms,
        changes: changes.into_iter().map(Change::from).collect(),
        attempts: u32::try_from(attempts).unwrap_or(0),
        next_attempt_ms,
        last_error,
        state,
    })
}

fn columns() -> (
    outbox::proposal_id,
    outbox::created_at_ms,
    outbox::changes,
    outbox::attempts,
    outbox::next_attempt_ms,
    outbox::last_error,
    outbox::state,
    outbox::failed_reason,
    outbox::failed_at_ms,
    outbox::committed_last,
) {
    (
        outbox::proposal_id,
        outbox::created_at_ms,
        outbox::changes,
        outbox::attempts,
        outbox::next_attempt_ms,
        outbox::last_error,
        outbox::state,
        outbox::failed_reason,
        outbox::failed_at_ms,
        outbox::committed_last,
    )
}

/// Checks every change of a proposal: not empty, each model type registered, each change
/// accepted by its handler's [`crate::ModelHandler::validate`] (the data decodes as the model
/// and matches the record id; a Delete carries no data); a Patch must be a map of fields
/// ([`crate::fields::check_patch`]).
///
/// # Errors
/// [`StorageError::InvalidChange`] (also for no changes), [`StorageError::UnknownModel`].
pub fn validate(registry: &ModelRegistry, changes: &[Change]) -> Result<()> {
    if changes.is_empty() {
        return Err(StorageError::InvalidChange("a proposal needs at least one change".to_owned()));
    }
    for change in changes {
        let handler = registry
            .handler(&change.model_type)
            .ok_or_else(|| StorageError::UnknownModel(change.model_type.clone()))?;
        if change.change_type == lsync_protocol::ChangeType::Patch {
            // the merged record is validated by the leader (`ModelHandler::validate` never
            // sees a patch)
            crate::fields::check_patch(&change.data).map_err(|e| {
                StorageError::InvalidChange(format!(
                    "{} {}: {e}",
                    change.model_type, change.record_id
                ))
            })?;
        } else {
            handler.validate(change)?;
        }
    }
    Ok(())
}

/// Queues proposal `proposal_id` after validating its changes (see [`validate`]), so bad
/// input is refused before it is queued. Idempotent: if the id is queued already, nothing
/// changes and `false` is returned (`true` if it was queued now). Due at once.
///
/// # Errors
/// Nothing is written on any error: [`StorageError::InvalidChange`],
/// [`StorageError::UnknownModel`].
pub fn push(
    conn: &mut SqliteConnection,
    registry: &ModelRegistry,
    proposal_id: Uuid,
    changes: &[Change],
) -> Result<bool> {
    validate(registry, changes)?;
    push_unchecked(conn, proposal_id, changes)
}

/// [`push`] without the validation (the caller did it).
pub(crate) fn push_unchecked(
    conn: &mut SqliteConnection,
    proposal_id: Uuid,
    changes: &[Change],
) -> Result<bool> {
    let proposed: Vec<ProposedChange> = changes.iter().cloned().map(ProposedChange::from).collect();
    let blob = rmp_serde::to_vec_named(&proposed)
        .map_err(|e| StorageError::InvalidChange(format!("cannot encode proposal: {e}")))?;
    let seq = outbox::table
        .select(diesel::dsl::max(outbox::seq))
        .get_result::<Option<i64>>(conn)?
        .unwrap_or(0)
        + 1;
    let now = now_ms();
    let inserted = diesel::insert_or_ignore_into(outbox::table)
        .values((
            outbox::proposal_id.eq(proposal_id.to_string()),
            outbox::created_at_ms.eq(now),
            outbox::changes.eq(blob),
            outbox::attempts.eq(0),
            outbox::next_attempt_ms.eq(now),
            outbox::last_error.eq(None::<String>),
            outbox::seq.eq(seq),
        ))
        .execute(conn)?;
    Ok(inserted > 0)
}

/// Every pending proposal (the ones the proposer delivers), oldest first (the order they were
/// pushed in).
pub fn list(conn: &mut SqliteConnection) -> Result<Vec<OutboxEntry>> {
    outbox::table
        .select(columns())
        .filter(outbox::state.eq(PENDING))
        .order(outbox::seq.asc())
        .load::<OutboxRow>(conn)?
        .into_iter()
        .map(row_to_entry)
        .collect()
}

/// The entries of the pending overlay (pending and delivered), oldest first: the changes shown
/// over the committed rows, in the order they are replayed ([`crate::pending`]).
pub fn overlay(conn: &mut SqliteConnection) -> Result<Vec<OutboxEntry>> {
    outbox::table
        .select(columns())
        .filter(outbox::state.ne(FAILED))
        .order(outbox::seq.asc())
        .load::<OutboxRow>(conn)?
        .into_iter()
        .map(row_to_entry)
        .collect()
}

/// Whether the pending overlay holds any entry (one cheap query: the commit paths ask it
/// before anything else, so a device without pending changes pays nothing more).
pub fn has_overlay(conn: &mut SqliteConnection) -> Result<bool> {
    Ok(diesel::select(diesel::dsl::exists(outbox::table.filter(outbox::state.ne(FAILED))))
        .get_result(conn)?)
}

/// Moves the pending entry `proposal_id` to [`OutboxState::Delivered`] with the last sequence
/// the leader gave: no longer delivered, still in the overlay. Returns whether it was moved.
pub fn mark_delivered(
    conn: &mut SqliteConnection,
    proposal_id: Uuid,
    last_sequence: u64,
) -> Result<bool> {
    let last = crate::error::to_i64(last_sequence, "committed_last")?;
    let updated = diesel::update(
        outbox::table.find(proposal_id.to_string()).filter(outbox::state.eq(PENDING)),
    )
    .set((outbox::state.eq(DELIVERED), outbox::committed_last.eq(last)))
    .execute(conn)?;
    Ok(updated > 0)
}

/// Puts the delivered entry `proposal_id` back to pending, due at once: the commit its leader
/// answered did not last (this device's log reached its sequence without it). Returns whether
/// a delivered entry was moved.
pub fn redeliver(conn: &mut SqliteConnection, proposal_id: Uuid) -> Result<bool> {
    let updated = diesel::update(
        outbox::table.find(proposal_id.to_string()).filter(outbox::state.eq(DELIVERED)),
    )
    .set((
        outbox::state.eq(PENDING),
        outbox::committed_last.eq(None::<i64>),
        outbox::next_attempt_ms.eq(now_ms()),
    ))
    .execute(conn)?;
    Ok(updated > 0)
}

/// Every entry, pending, delivered and failed, oldest first (what `lsync outbox list` shows).
pub fn list_all(conn: &mut SqliteConnection) -> Result<Vec<OutboxEntry>> {
    outbox::table
        .select(columns())
        .order(outbox::seq.asc())
        .load::<OutboxRow>(conn)?
        .into_iter()
        .map(row_to_entry)
        .collect()
}

/// The outbox entry `proposal_id` (pending or failed), if any.
pub fn get(conn: &mut SqliteConnection, proposal_id: Uuid) -> Result<Option<OutboxEntry>> {
    outbox::table
        .find(proposal_id.to_string())
        .select(columns())
        .get_result::<OutboxRow>(conn)
        .optional()?
        .map(row_to_entry)
        .transpose()
}

/// Removes proposal `proposal_id` (committed, or given up); returns whether it was queued.
pub fn remove(conn: &mut SqliteConnection, proposal_id: Uuid) -> Result<bool> {
    let deleted = diesel::delete(outbox::table.find(proposal_id.to_string())).execute(conn)?;
    Ok(deleted > 0)
}

/// Moves `proposal_id` to [`OutboxState::Failed`] with `reason`, refused at `at_ms`: the
/// proposer stops sending it, and it stays until [`retry`] or [`discard`]. Returns whether a
/// pending entry was moved.
pub fn mark_failed(
    conn: &mut SqliteConnection,
    proposal_id: Uuid,
    reason: &str,
    at_ms: i64,
) -> Result<bool> {
    let updated = diesel::update(
        outbox::table.find(proposal_id.to_string()).filter(outbox::state.eq(PENDING)),
    )
    .set((
        outbox::state.eq(FAILED),
        outbox::failed_reason.eq(reason),
        outbox::failed_at_ms.eq(at_ms),
    ))
    .execute(conn)?;
    Ok(updated > 0)
}

/// Puts the failed entry `proposal_id` back to pending, due at once with no attempts counted
/// (an operator's `lsync outbox retry`, e.g. after the leader was upgraded). It keeps its
/// place in the order. Returns whether a failed entry was moved.
pub fn retry(conn: &mut SqliteConnection, proposal_id: Uuid) -> Result<bool> {
    let updated = diesel::update(
        outbox::table.find(proposal_id.to_string()).filter(outbox::state.eq(FAILED)),
    )
    .set((
        outbox::state.eq(PENDING),
        outbox::failed_reason.eq(None::<String>),
        outbox::failed_at_ms.eq(None::<i64>),
        outbox::attempts.eq(0),
        outbox::next_attempt_ms.eq(now_ms()),
    ))
    .execute(conn)?;
    Ok(updated > 0)
}

/// Deletes the failed entry `proposal_id` (an operator's `lsync outbox discard`: the change is
/// given up). A pending entry is not touched (it may be in flight; it never blocks others).
/// Returns whether a failed entry was deleted.
pub fn discard(conn: &mut SqliteConnection, proposal_id: Uuid) -> Result<bool> {
    let deleted = diesel::delete(
        outbox::table.find(proposal_id.to_string()).filter(outbox::state.eq(FAILED)),
    )
    .execute(conn)?;
    Ok(deleted > 0)
}

/// Records a failed delivery of `proposal_id`: `attempts + 1`, `last_error = error`, not to be
/// retried before `next_attempt_ms`. Returns whether it was queued.
pub fn record_failure(
    conn: &mut SqliteConnection,
    proposal_id: Uuid,
    error: &str,
    next_attempt_ms: i64,
) -> Result<bool> {
    let updated = diesel::update(outbox::table.find(proposal_id.to_string()))
        .set((
            outbox::attempts.eq(outbox::attempts + 1),
            outbox::last_error.eq(error),
            outbox::next_attempt_ms.eq(next_attempt_ms),
        ))
        .execute(conn)?;
    Ok(updated > 0)
}

/// The number of pending proposals (failed and delivered ones are not counted: see
/// [`count_failed`]).
pub fn count(conn: &mut SqliteConnection) -> Result<u64> {
    let count = outbox::table.filter(outbox::state.eq(PENDING)).count().get_result::<i64>(conn)?;
    crate::error::to_u64(count, "outbox count")
}

/// The number of failed proposals.
pub fn count_failed(conn: &mut SqliteConnection) -> Result<u64> {
    let count = outbox::table.filter(outbox::state.eq(FAILED)).count().get_result::<i64>(conn)?;
    crate::error::to_u64(count, "outbox failed count")
}
