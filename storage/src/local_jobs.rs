//! Local jobs queued by bulk entries applied on this device (`local_jobs` table, not replicated).

use diesel::prelude::*;
use diesel::sqlite::SqliteConnection;
use lsync_protocol::SyncLogEntry;

use crate::error::{now_ms, to_i64, to_u64, Result};
use crate::schema::local_jobs as table;

/// The status of a freshly queued job.
pub const STATUS_QUEUED: &str = "queued";

/// A local job: a bulk operation to run on this device (e.g. "index this location here").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalJob {
    /// Local id (autoincrement).
    pub id: i64,
    /// The sequence of the bulk entry that queued the job.
    pub sequence: u64,
    /// The entry's model type.
    pub model_type: String,
    /// The entry's record id.
    pub record_id: String,
    /// The bulk metadata (MessagePack, as in the entry).
    pub data: Vec<u8>,
    /// `queued` when created; the host sets its own statuses with [`set_status`].
    pub status: String,
    /// When the job was queued, in milliseconds since the Unix epoch (local clock).
    pub created_at_ms: i64,
}

type JobRow = (i64, i64, String, String, Vec<u8>, String, i64);

fn row_to_job(row: JobRow) -> Result<LocalJob> {
    let (id, sequence, model_type, record_id, data, status, created_at_ms) = row;
    Ok(LocalJob {
        id,
        sequence: to_u64(sequence, "local_jobs sequence")?,
        model_type,
        record_id,
        data,
        status,
        created_at_ms,
    })
}

/// Queues a job for the bulk entry `entry` (status `queued`) and returns it.
pub fn insert(conn: &mut SqliteConnection, entry: &SyncLogEntry) -> Result<LocalJob> {
    let sequence = to_i64(entry.sequence, "sequence")?;
    let created_at_ms = now_ms();
    let id = diesel::insert_into(table::table)
        .values((
            table::sequence.eq(sequence),
            table::model_type.eq(&entry.model_type),
            table::record_id.eq(&entry.record_id),
            table::data.eq(&entry.data),
            table::status.eq(STATUS_QUEUED),
            table::created_at_ms.eq(created_at_ms),
        ))
        .returning(table::id)
        .get_result::<i64>(conn)?;
    Ok(LocalJob {
        id,
        sequence: entry.sequence,
        model_type: entry.model_type.clone(),
        record_id: entry.record_id.clone(),
        data: entry.data.clone(),
        status: STATUS_QUEUED.to_owned(),
        created_at_ms,
    })
}

/// Every job, ordered by id.
pub fn list(conn: &mut SqliteConnection) -> Result<Vec<LocalJob>> {
    table::table.order(table::id.asc()).load::<JobRow>(conn)?.into_iter().map(row_to_job).collect()
}

/// Sets the status of job `id`; returns whether it exists.
pub fn set_status(conn: &mut SqliteConnection, id: i64, status: &str) -> Result<bool> {
    let rows = diesel::update(table::table.find(id)).set(table::status.eq(status)).execute(conn)?;
    Ok(rows > 0)
}

/// Removes job `id`; returns whether it existed.
pub fn remove(conn: &mut SqliteConnection, id: i64) -> Result<bool> {
    let rows = diesel::delete(table::table.find(id)).execute(conn)?;
    Ok(rows > 0)
}
