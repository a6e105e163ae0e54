//! The replicated log: functions over a connection, the caller holds the transaction.
//!
//! Every row holds its link of the hash chain (`hash`, docs/protocol.md, "The hash chain"),
//! computed here from the previous row's whenever a row is written ([`SyncLog::chain`]); a
//! database whose rows predate the chain gets it filled at open ([`fill_chain`]).

use diesel::prelude::*;
use diesel::sqlite::SqliteConnection;
use lsync_protocol::{chain_hash, ChainHash, ChangeType, EntryStamp, SyncLogEntry};

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

/// The last entry of the log: its position and its chain hash. An empty log's head is
/// `(0, 0)` with [`ChainHash::GENESIS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct LogHead {
    /// The position of the last entry.
    pub position: LogPosition,
    /// The chain hash at that entry.
    pub hash: ChainHash,
}

impl std::fmt::Display for LogHead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.position, self.hash.short())
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
    hash: Option<Vec<u8>>,
    stamp: Option<Vec<u8>>,
}

/// A `sync_log` (or `stashed_entries`) row, columns in table order.
pub(crate) type LogRow = (
    i64,
    i64,
    String,
    i64,
    String,
    String,
    String,
    i64,
    Vec<u8>,
    Option<String>,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
);

/// The stored form of an entry's stamp (MessagePack, named fields).
pub(crate) fn encode_stamp(stamp: Option<&EntryStamp>) -> Option<Vec<u8>> {
    stamp.map(crate::model::encode)
}

/// A stored hash: 32 bytes, else the row is corrupt.
pub(crate) fn stored_hash(bytes: &[u8], sequence: i64) -> Result<ChainHash> {
    ChainHash::from_slice(bytes).ok_or_else(|| {
        StorageError::Corrupt(format!(
            "sync_log sequence {sequence}: a hash of {} bytes, not 32",
            bytes.len()
        ))
    })
}

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
        hash,
        stamp,
    ) = row;
    let stamp = stamp
        .map(|b| {
            rmp_serde::from_slice::<EntryStamp>(&b).map_err(|e| {
                StorageError::Corrupt(format!("sync_log sequence {sequence}: stamp: {e}"))
            })
        })
        .transpose()?;
    let hash = hash.map(|h| stored_hash(&h, sequence)).transpose()?;
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
        hash,
        stamp,
    })
}

impl SyncLog {
    /// Appends `entry`, which must be the next entry of the log, with its chain hash computed
    /// from the last entry's; returns that hash.
    ///
    /// # Errors
    /// [`StorageError::Gap`] unless `entry.sequence` is the last sequence + 1;
    /// [`StorageError::ChainMismatch`] if `entry` carries a hash other than the computed one.
    pub fn append(conn: &mut SqliteConnection, entry: &SyncLogEntry) -> Result<ChainHash> {
        let head = Self::head(conn)?;
        let expected = head.position.sequence + 1;
        if entry.sequence != expected {
            return Err(StorageError::Gap { expected, got: entry.sequence });
        }
        Self::insert_unchecked(conn, &head.hash, entry)
    }

    /// The chain hashes of `entries`, consecutive entries following a log whose last hash is
    /// `prev` (docs/protocol.md, "The hash chain"). Pure: reads nothing.
    ///
    /// # Errors
    /// [`StorageError::ChainMismatch`] for the first entry that carries a hash
    /// ([`SyncLogEntry::hash`]) other than the computed one: the sender's log differs from
    /// this one at that entry or before it.
    pub fn chain(prev: &ChainHash, entries: &[SyncLogEntry]) -> Result<Vec<ChainHash>> {
        let mut prev = *prev;
        let mut hashes = Vec::with_capacity(entries.len());
        for entry in entries {
            let hash = chain_hash(&prev, entry);
            if let Some(carried) = entry.hash {
                if carried != hash {
                    return Err(StorageError::ChainMismatch {
                        sequence: entry.sequence,
                        carried,
                        computed: hash,
                    });
                }
            }
            hashes.push(hash);
            prev = hash;
        }
        Ok(hashes)
    }

    /// Inserts `entry` after a log whose last hash is `prev`, without checking that it
    /// continues the log (the caller did); returns its hash. See [`SyncLog::chain`].
    pub(crate) fn insert_unchecked(
        conn: &mut SqliteConnection,
        prev: &ChainHash,
        entry: &SyncLogEntry,
    ) -> Result<ChainHash> {
        let hashes = Self::insert_many_unchecked(conn, prev, std::slice::from_ref(entry))?;
        Ok(hashes[0])
    }

    /// Inserts `entries` after a log whose last hash is `prev` (the caller checked that they
    /// continue it), with their chain hashes ([`SyncLog::chain`], which refuses a carried hash
    /// that differs before anything is written); returns the hashes.
    pub(crate) fn insert_many_unchecked(
        conn: &mut SqliteConnection,
        prev: &ChainHash,
        entries: &[SyncLogEntry],
    ) -> Result<Vec<ChainHash>> {
        let hashes = Self::chain(prev, entries)?;
        Self::insert_hashed(conn, entries, &hashes)?;
        Ok(hashes)
    }

    /// Inserts `entries` with their `hashes` (computed by [`SyncLog::chain`]), with one
    /// multi-row `INSERT` per 100 entries (see [`crate::in_cached_chunks!`]): diesel builds and
    /// looks up the SQL of a statement at every execution, which cost more than SQLite's own
    /// work when every entry was its own statement (docs/performance.md).
    pub(crate) fn insert_hashed(
        conn: &mut SqliteConnection,
        entries: &[SyncLogEntry],
        hashes: &[ChainHash],
    ) -> Result<()> {
        let mut rows = Vec::with_capacity(entries.len());
        for (entry, hash) in entries.iter().zip(hashes) {
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
                hash: Some(hash.0.to_vec()),
                stamp: encode_stamp(entry.stamp.as_ref()),
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

    /// The last entry's position and chain hash; `(0, 0)` and [`ChainHash::GENESIS`] for an
    /// empty log. One primary-key lookup, like [`SyncLog::last`].
    ///
    /// # Errors
    /// [`StorageError::Corrupt`] if the last row has no hash (never once the database is open:
    /// [`fill_chain`] runs at open).
    pub fn head(conn: &mut SqliteConnection) -> Result<LogHead> {
        use diesel::dsl::max;
        let newest = diesel::alias!(sync_log as newest);
        let last = sync_log::table
            .filter(
                sync_log::sequence
                    .nullable()
                    .eq(newest.select(max(newest.field(sync_log::sequence))).single_value()),
            )
            .select((sync_log::term, sync_log::sequence, sync_log::hash))
            .get_result::<(i64, i64, Option<Vec<u8>>)>(conn)
            .optional()?;
        match last {
            Some((term, sequence, hash)) => Ok(LogHead {
                position: LogPosition {
                    term: to_u64(term, "sync_log term")?,
                    sequence: to_u64(sequence, "sync_log sequence")?,
                },
                hash: required_hash(hash, sequence)?,
            }),
            None => Ok(LogHead::default()),
        }
    }

    /// The chain hash at `sequence`: [`ChainHash::GENESIS`] at 0, `None` if there is no entry
    /// there.
    ///
    /// # Errors
    /// [`StorageError::Corrupt`] if the row has no hash (see [`SyncLog::head`]).
    pub fn hash_at(conn: &mut SqliteConnection, sequence: u64) -> Result<Option<ChainHash>> {
        if sequence == 0 {
            return Ok(Some(ChainHash::GENESIS));
        }
        let Ok(sequence) = i64::try_from(sequence) else { return Ok(None) };
        let hash = sync_log::table
            .find(sequence)
            .select(sync_log::hash)
            .get_result::<Option<Vec<u8>>>(conn)
            .optional()?;
        hash.map(|h| required_hash(h, sequence)).transpose()
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

/// A stored hash that must be there (see [`SyncLog::head`]).
fn required_hash(hash: Option<Vec<u8>>, sequence: i64) -> Result<ChainHash> {
    match hash {
        Some(bytes) => stored_hash(&bytes, sequence),
        None => Err(StorageError::Corrupt(format!(
            "sync_log sequence {sequence} has no hash (the chain was not filled)"
        ))),
    }
}

/// Rows whose hash [`fill_chain`] computes in one transaction.
const FILL_BATCH: i64 = 2_000;

/// Fills the hash chain over the rows that have no hash yet — every row of a database written
/// before the chain existed (the migration adds the column empty: SQL cannot compute SHA-256),
/// or rows a downgraded build appended — and returns how many it filled. Run at open, right
/// after the embedded migrations, on the writer connection.
///
/// In batches of [`FILL_BATCH`] rows, each in its own immediate transaction, from the first row
/// without a hash (found through the partial index `sync_log_unhashed`: one lookup when there
/// is none, the usual case), each link computed from the row before it: resumable, a crash
/// between batches leaves a prefix filled and the next open goes on from there. A row missing
/// before the first unhashed one (a gap, which no build writes) is skipped over: the chain
/// continues from the last row before it, and `lsync verify` reports the gap.
pub(crate) fn fill_chain(conn: &mut SqliteConnection) -> Result<u64> {
    use diesel::dsl::{max, min};
    let mut filled = 0u64;
    loop {
        let done = conn.immediate_transaction(|conn| -> Result<Option<u64>> {
            let first = sync_log::table
                .filter(sync_log::hash.is_null())
                .select(min(sync_log::sequence))
                .get_result::<Option<i64>>(conn)?;
            let Some(first) = first else { return Ok(None) };
            let before = sync_log::table
                .filter(sync_log::sequence.lt(first))
                .select(max(sync_log::sequence))
                .get_result::<Option<i64>>(conn)?;
            let mut prev = match before {
                Some(sequence) => {
                    let hash = sync_log::table
                        .find(sequence)
                        .select(sync_log::hash)
                        .get_result::<Option<Vec<u8>>>(conn)?;
                    required_hash(hash, sequence)?
                }
                None => ChainHash::GENESIS,
            };
            let rows = sync_log::table
                .filter(sync_log::sequence.between(first, first.saturating_add(FILL_BATCH - 1)))
                .order(sync_log::sequence.asc())
                .load::<LogRow>(conn)?;
            let mut count = 0;
            for row in rows {
                let sequence = row.0;
                let entry = row_to_entry(row)?;
                prev = chain_hash(&prev, &entry);
                diesel::update(sync_log::table.find(sequence))
                    .set(sync_log::hash.eq(prev.0.to_vec()))
                    .execute(conn)?;
                count += 1;
            }
            Ok(Some(count))
        })?;
        match done {
            Some(count) => filled += count,
            None => break,
        }
    }
    if filled > 0 {
        tracing::info!(filled, "hash chain computed over the existing log");
    }
    Ok(filled)
}

/// The record `record_id` of `model_type` as the last log entry that wrote it left it (`None`
/// if none did, or the last one deleted it): the default of [`crate::ModelHandler::load`]. A
/// scan of the log.
pub(crate) fn last_write(
    conn: &mut SqliteConnection,
    model_type: &str,
    record_id: &str,
) -> Result<Option<crate::model::StoredRecord>> {
    last_write_before(conn, model_type, record_id, i64::MAX)
}

/// The record as the last log entry before sequence `before` that wrote it left it (`None`
/// if none did, or it was a Delete).
pub(crate) fn last_write_before(
    conn: &mut SqliteConnection,
    model_type: &str,
    record_id: &str,
    before: i64,
) -> Result<Option<crate::model::StoredRecord>> {
    let last = sync_log::table
        .filter(sync_log::model_type.eq(model_type))
        .filter(sync_log::record_id.eq(record_id))
        .filter(sync_log::sequence.lt(before))
        .filter(sync_log::change_type.eq_any([
            ChangeType::Insert.as_str(),
            ChangeType::Update.as_str(),
            ChangeType::Delete.as_str(),
        ]))
        .order(sync_log::sequence.desc())
        .select((sync_log::change_type, sync_log::data, sync_log::version))
        .first::<(String, Vec<u8>, i64)>(conn)
        .optional()?;
    Ok(last.and_then(|(change_type, data, version)| {
        (change_type != ChangeType::Delete.as_str())
            .then_some(crate::model::StoredRecord { data, version })
    }))
}
