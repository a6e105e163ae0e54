//! The replicated log: functions over a connection, the caller holds the transaction.

use diesel::prelude::*;
use diesel::sqlite::SqliteConnection;
use lsync_protocol::{ChangeType, SyncLogEntry};

use uuid::Uuid;

use crate::error::{parse_uuid, saturating_i64, to_i64, to_u64, Result, StorageError};
use crate::schema::sync_log;

/// The position of a log entry: its term and sequence. `(0, 0)` stands for an empty log.
///
/// Ordered by term, then sequence — "at least as up to date" in the election sense.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, PartialOrd, Ord, Hash)]
pub struct LogPosition {
    /// The term of the entry.
    pub term: u64,
    /// The sequence of the entry.
    pub sequence: u64,
}

impl LogPosition {
    /// The position of `entry`.
    pub fn of(entry: &SyncLogEntry) -> Self {
        Self { term: entry.term, sequence: entry.sequence }
    }
}

impl std::fmt::Display for LogPosition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.sequence, self.term)
    }
}

/// Functions over the `sync_log` table. They take a connection; callers hold the transaction.
#[derive(Debug, Clone, Copy)]
pub struct SyncLog;

/// A row to insert. Owned values, so that the statement's type is `'static` and diesel can
/// cache the prepared statement (see [`crate::in_cached_chunks!`]);
/// `treat_none_as_default_value = false`: a `None` proposal id is bound as NULL rather than
/// written as `DEFAULT`, so that several rows are ONE multi-row `INSERT` on SQLite (diesel
/// falls back to one statement per row when a row may hold `DEFAULT`).
#[derive(Insertable)]
#[diesel(table_name = sync_log, treat_none_as_default_value = false)]
struct NewLogRow {
    sequence: i64,
    term: i64,
    origin_device: String,
    timestamp_ms: i64,
    model_type: String,
    record_id: String,
    change_type: &'static str,
    version: i64,
    data: Vec<u8>,
    proposal_id: Option<String>,
}

/// A `sync_log` (or `stashed_entries`) row, columns in table order.
pub(crate) type LogRow =
    (i64, i64, String, i64, String, String, String, i64, Vec<u8>, Option<String>);

pub(crate) fn row_to_entry(row: LogRow) -> Result<SyncLogEntry> {
    let (
        sequence,
        term,
        origin_device,
        timestamp_ms,
        model_type,
        record_id,
        change_type,
        version,
        data,
        proposal_id,
    ) = row;
    let change_type = ChangeType::parse(&change_type).ok_or_else(|| {
        StorageError::Corrupt(format!(
            "sync_log sequence {sequence}: unknown change_type {change_type:?}"
        ))
    })?;
    Ok(SyncLogEntry {
        sequence: to_u64(sequence, "sync_log sequence")?,
        term: to_u64(term, "sync_log term")?,
        origin_device: parse_uuid(&origin_device, "sync_log origin_device")?,
        timestamp_ms,
        model_type,
        record_id,
        change_type,
        version,
        data,
        proposal_id: proposal_id.map(|id| parse_uuid(&id, "sync_log proposal_id")).transpose()?,
    })
}

impl SyncLog {
    /// Appends `entry`, which must be the next entry of the log.
    ///
    /// # Errors
    /// [`StorageError::Gap`] unless `entry.sequence` is the last sequence + 1.
    pub fn append(conn: &mut SqliteConnection, entry: &SyncLogEntry) -> Result<()> {
        let last = Self::last(conn)?;
        let expected = last.sequence + 1;
        if entry.sequence != expected {
            return Err(StorageError::Gap { expected, got: entry.sequence });
        }
        Self::insert_unchecked(conn, entry)
    }

    /// Inserts `entry` without checking that it continues the log (the caller did).
    pub(crate) fn insert_unchecked(
        conn: &mut SqliteConnection,
        entry: &SyncLogEntry,
    ) -> Result<()> {
        Self::insert_many_unchecked(conn, std::slice::from_ref(entry))
    }

    /// Inserts `entries` without checking that they continue the log (the caller did), with
    /// one multi-row `INSERT` per 100 entries (see [`crate::in_cached_chunks!`]): diesel builds
    /// and looks up the SQL of a statement at every execution, which cost more than SQLite's
    /// own work when every entry was its own statement (docs/performance.md).
    pub(crate) fn insert_many_unchecked(
        conn: &mut SqliteConnection,
        entries: &[SyncLogEntry],
    ) -> Result<()> {
        let mut rows = Vec::with_capacity(entries.len());
        for entry in entries {
            rows.push(NewLogRow {
                sequence: to_i64(entry.sequence, "sequence")?,
                term: to_i64(entry.term, "term")?,
                origin_device: entry.origin_device.hyphenated().to_string(),
                timestamp_ms: entry.timestamp_ms,
                model_type: entry.model_type.clone(),
                record_id: entry.record_id.clone(),
                change_type: entry.change_type.as_str(),
                version: entry.version,
                data: entry.data.clone(),
                proposal_id: entry.proposal_id.map(|id| id.hyphenated().to_string()),
            });
        }
        crate::in_cached_chunks!(&rows[..], |chunk| {
            diesel::insert_into(sync_log::table).values(chunk).execute(conn)?
        });
        Ok(())
    }

    /// At most `limit` entries with `sequence > since`, in order (a primary-key range scan of
    /// `since + 1 ..= since + limit`: the log is gapless).
    pub fn fetch_since(
        conn: &mut SqliteConnection,
        since: u64,
        limit: u64,
    ) -> Result<Vec<SyncLogEntry>> {
        if limit == 0 || since >= i64::MAX as u64 {
            return Ok(Vec::new());
        }
        // The log is gapless, so the `limit` entries after `since` are the sequences
        // `since + 1 ..= since + limit`: a primary-key range without a bound `LIMIT ?`, which
        // would make SQLite re-prepare the statement at every execution (docs/performance.md).
        let from = saturating_i64(since) + 1;
        let to = from.saturating_add(saturating_i64(limit) - 1);
        let rows = sync_log::table
            .filter(sync_log::sequence.between(from, to))
            .order(sync_log::sequence.asc())
            .load_iter::<LogRow, diesel::connection::DefaultLoadingMode>(conn)?;
        let mut entries = Vec::with_capacity(usize::try_from(limit.min(1024)).unwrap_or(1024));
        for row in rows {
            entries.push(row_to_entry(row?)?);
        }
        Ok(entries)
    }

    /// The entries with `from <= sequence <= to`, in order (empty when `from > to`).
    pub fn fetch_range(
        conn: &mut SqliteConnection,
        from: u64,
        to: u64,
    ) -> Result<Vec<SyncLogEntry>> {
        if from > to || from > i64::MAX as u64 {
            return Ok(Vec::new());
        }
        let rows = sync_log::table
            .filter(sync_log::sequence.between(saturating_i64(from), saturating_i64(to)))
            .order(sync_log::sequence.asc())
            .load_iter::<LogRow, diesel::connection::DefaultLoadingMode>(conn)?;
        let mut entries = Vec::new();
        for row in rows {
            entries.push(row_to_entry(row?)?);
        }
        Ok(entries)
    }

    /// The position of the last entry, `(0, 0)` for an empty log.
    pub fn last(conn: &mut SqliteConnection) -> Result<LogPosition> {
        use diesel::dsl::max;
        // `WHERE sequence = (SELECT max(sequence) FROM sync_log AS newest)`: one statement,
        // answered from the rowid b-tree's last page, without diesel's bound `LIMIT ?`
        // (`first`), which makes SQLite re-prepare the statement at every execution
        // (docs/performance.md).
        let newest = diesel::alias!(sync_log as newest);
        let last = sync_log::table
            .filter(
                sync_log::sequence
                    .nullable()
                    .eq(newest.select(max(newest.field(sync_log::sequence))).single_value()),
            )
            .select((sync_log::term, sync_log::sequence))
            .get_result::<(i64, i64)>(conn)
            .optional()?;
        match last {
            Some((term, sequence)) => Ok(LogPosition {
                term: to_u64(term, "sync_log term")?,
                sequence: to_u64(sequence, "sync_log sequence")?,
            }),
            None => Ok(LogPosition::default()),
        }
    }

    /// The term of the entry at `sequence`, `None` if there is none.
    pub fn term_at(conn: &mut SqliteConnection, sequence: u64) -> Result<Option<u64>> {
        let Ok(sequence) = i64::try_from(sequence) else { return Ok(None) };
        // By primary key, so `get_result` (no bound `LIMIT ?`, see `last`).
        let term = sync_log::table
            .find(sequence)
            .select(sync_log::term)
            .get_result::<i64>(conn)
            .optional()?;
        term.map(|t| to_u64(t, "sync_log term")).transpose()
    }

    /// The entry at `sequence`, `None` if there is none.
    pub fn get(conn: &mut SqliteConnection, sequence: u64) -> Result<Option<SyncLogEntry>> {
        let Ok(sequence) = i64::try_from(sequence) else { return Ok(None) };
        let row = sync_log::table.find(sequence).get_result::<LogRow>(conn).optional()?;
        row.map(row_to_entry).transpose()
    }

    /// Deletes every entry with `sequence > sequence`; returns how many were deleted.
    pub fn truncate_after(conn: &mut SqliteConnection, sequence: u64) -> Result<u64> {
        let Ok(sequence) = i64::try_from(sequence) else { return Ok(0) };
        let deleted = diesel::delete(sync_log::table.filter(sync_log::sequence.gt(sequence)))
            .execute(conn)?;
        Ok(deleted as u64)
    }

    /// The sequences `(first, last)` of the entries committing proposal `proposal_id`, `None`
    /// if the log holds none (an index lookup on `proposal_id`).
    pub fn proposal_range(
        conn: &mut SqliteConnection,
        proposal_id: Uuid,
    ) -> Result<Option<(u64, u64)>> {
        use diesel::dsl::{max, min};
        let mut buf = Uuid::encode_buffer();
        let id = &*proposal_id.hyphenated().encode_lower(&mut buf);
        let (first, last) = sync_log::table
            .filter(sync_log::proposal_id.eq(id))
            .select((min(sync_log::sequence), max(sync_log::sequence)))
            .get_result::<(Option<i64>, Option<i64>)>(conn)?;
        match (first, last) {
            (Some(first), Some(last)) => {
                Ok(Some((to_u64(first, "sync_log sequence")?, to_u64(last, "sync_log sequence")?)))
            }
            _ => Ok(None),
        }
    }

    /// The entries committing proposal `proposal_id`, in sequence order (an index lookup on
    /// `proposal_id`); empty if the log holds none. Usually consecutive; a proposal completed
    /// after a failover (docs/architecture.md, "Whole, not in part") has its parts apart.
    pub fn proposal_entries(
        conn: &mut SqliteConnection,
        proposal_id: Uuid,
    ) -> Result<Vec<SyncLogEntry>> {
        let mut buf = Uuid::encode_buffer();
        let id = &*proposal_id.hyphenated().encode_lower(&mut buf);
        let rows = sync_log::table
            .filter(sync_log::proposal_id.eq(id))
            .order(sync_log::sequence.asc())
            .load_iter::<LogRow, diesel::connection::DefaultLoadingMode>(conn)?;
        let mut entries = Vec::new();
        for row in rows {
            entries.push(row_to_entry(row?)?);
        }
        Ok(entries)
    }

    /// The number of entries.
    pub fn count(conn: &mut SqliteConnection) -> Result<u64> {
        let count = sync_log::table.count().get_result::<i64>(conn)?;
        to_u64(count, "sync_log count")
    }
}
