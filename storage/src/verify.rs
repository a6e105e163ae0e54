//! [`verify`]: checks a library database end to end, read-only, whether or not a daemon has it
//! open (docs/operations.md, "Verifying a library").
//!
//! Three checks, all on one consistent snapshot of the database (one read transaction):
//!
//! 1. **Sequences** are gapless from 1.
//! 2. **The hash chain** (docs/protocol.md, "The hash chain"): every row's stored `hash` is
//!    `SHA-256(previous row's stored hash || canonical(row))`, the first one's previous being
//!    the genesis hash. Each link is checked against the stored one before it, so a row whose
//!    content was changed is named itself (and a changed hash names its own row and the next).
//! 3. **The model tables equal the replay of the log**: the log is applied, in order, to an
//!    empty temporary database by the applier's own model code (`model::apply_entries`, what
//!    [`crate::Applier::apply`] and the leader's commit run), then every registered model table
//!    is compared row by row with the replica. Tables that bulk jobs write locally (the model
//!    types named by a Bulk entry: the leader did the operation itself and a follower runs a
//!    local job, neither of which is in the log) are excluded and named.
//!    **This device's pending changes** (the pending overlay, docs/architecture.md, "Local-first
//!    writes": outbox entries pending or delivered) are part of what the tables show: before the
//!    comparison, each captured committed row (`pending_undo`) is checked against the replay
//!    (it must be the committed row), every record an overlay change writes must have one, and
//!    the overlay's changes are then applied to the replica in outbox order by the same code the
//!    device uses. So the tables must equal the replay of the log with the pending changes on
//!    top.
//!
//! The database is opened with `mode=ro` (a URI filename): nothing is written to it, and a
//! running daemon's committed transactions, in its WAL, are seen. The read transaction holds
//! the WAL from being checkpointed past it while the check runs. The replica lives in a
//! temporary file, removed afterwards; its size is that of the model tables.

use std::path::{Path, PathBuf};

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable, Text};
use diesel::sqlite::SqliteConnection;
use lsync_protocol::{chain_hash, ChainHash, ChangeType, SyncLogEntry};
use uuid::Uuid;

use crate::error::{Result, StorageError};
use crate::model::ModelRegistry;
use crate::schema::sync_log;
use crate::sync_log::{row_to_entry, stored_hash, LogHead, LogPosition, LogRow};

/// Entries read and replayed at a time.
const BATCH: i64 = 1_000;

/// Problems listed at most (the rest are counted in [`VerifyReport::more_problems`]).
pub const MAX_PROBLEMS: usize = 100;

/// What [`verify`] found wrong, each naming where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The log has no entry at `expected`; the next one is at `found`.
    Gap {
        /// The missing sequence.
        expected: u64,
        /// The sequence of the row found instead.
        found: u64,
    },
    /// The row at `sequence` has no stored hash.
    HashMissing {
        /// The row's sequence.
        sequence: u64,
    },
    /// The row's stored hash is not the link computed from the row before it and its content:
    /// the row (or the hash before it) was changed after it was written.
    ChainBroken {
        /// The row's sequence.
        sequence: u64,
        /// The hash stored in the row.
        stored: ChainHash,
        /// The hash computed from the previous row's stored hash and this row's content.
        computed: ChainHash,
    },
    /// The row at `sequence` cannot be read as an entry.
    Unreadable {
        /// The row's sequence.
        sequence: u64,
        /// Why.
        reason: String,
    },
    /// Applying the entry at `sequence` to the replica failed.
    Replay {
        /// The entry's sequence.
        sequence: u64,
        /// The handler's error.
        reason: String,
    },
    /// The pending overlay's record of the committed row of a record is wrong: the captured
    /// row differs from the replay of the log, or a pending change writes a record with no
    /// captured row.
    Pending {
        /// The model type.
        model_type: String,
        /// The record.
        record_id: String,
        /// What is wrong.
        reason: String,
    },
    /// A row of a model table differs from the replay of the log (or is only on one side).
    RowDiffers {
        /// The model table.
        table: String,
        /// The row's primary key (SQLite's `quote()` of each key column).
        key: String,
        /// The last log entry that wrote this record, if any.
        sequence: Option<u64>,
        /// The row in the database (`quote()` of every column), `None` if it is not there.
        stored: Option<String>,
        /// The row in the replay, `None` if the replay has none.
        replayed: Option<String>,
    },
}

impl Problem {
    /// The log sequence the problem is at, if it names one.
    pub fn sequence(&self) -> Option<u64> {
        match self {
            Self::Gap { expected, .. } => Some(*expected),
            Self::HashMissing { sequence }
            | Self::ChainBroken { sequence, .. }
            | Self::Unreadable { sequence, .. }
            | Self::Replay { sequence, .. } => Some(*sequence),
            Self::RowDiffers { sequence, .. } => *sequence,
            Self::Pending { .. } => None,
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Gap { expected, found } => {
                write!(f, "sequence {expected}: missing (the log goes on at {found})")
            }
            Self::HashMissing { sequence } => write!(f, "sequence {sequence}: no hash stored"),
            Self::ChainBroken { sequence, stored, computed } => write!(
                f,
                "sequence {sequence}: hash chain broken (stored {}, computed {})",
                stored.short(),
                computed.short()
            ),
            Self::Unreadable { sequence, reason } => {
                write!(f, "sequence {sequence}: unreadable entry: {reason}")
            }
            Self::Replay { sequence, reason } => {
                write!(f, "sequence {sequence}: the entry cannot be replayed: {reason}")
            }
            Self::Pending { model_type, record_id, reason } => {
                write!(f, "pending change of {model_type} {record_id:?}: {reason}")
            }
            Self::RowDiffers { table, key, sequence, stored, replayed } => {
                if let Some(sequence) = sequence {
                    write!(f, "sequence {sequence}: ")?;
                }
                write!(f, "{table} row {key} ")?;
                match (stored, replayed) {
                    (Some(stored), Some(replayed)) => write!(
                        f,
                        "differs from the replay of the log: stored {stored}, replayed {replayed}"
                    ),
                    (Some(stored), None) => {
                        write!(f, "is not in the replay of the log: stored {stored}")
                    }
                    (None, Some(replayed)) => {
                        write!(f, "is missing: the replay of the log has {replayed}")
                    }
                    (None, None) => write!(f, "differs"),
                }
            }
        }
    }
}

/// A model table [`verify`] did not compare, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExcludedTable {
    /// The table.
    pub table: String,
    /// Why it was not compared.
    pub reason: String,
}

/// What [`verify`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// The database checked.
    pub path: PathBuf,
    /// Rows in the log.
    pub entries: u64,
    /// The last row's position and stored hash (the genesis hash for an empty log).
    pub head: LogHead,
    /// Model tables compared with the replay.
    pub tables_checked: Vec<String>,
    /// Model tables not compared, each with the reason.
    pub tables_excluded: Vec<ExcludedTable>,
    /// Model types of log entries that no registered handler knows: not replayed.
    pub unregistered_models: Vec<String>,
    /// This device's pending proposals (outbox entries pending or delivered) whose changes were
    /// applied over the replay before the tables were compared.
    pub pending_proposals: u64,
    /// What is wrong, in the order found (log, then tables), at most [`MAX_PROBLEMS`].
    pub problems: Vec<Problem>,
    /// Problems found beyond [`MAX_PROBLEMS`].
    pub more_problems: u64,
}

impl VerifyReport {
    /// Whether nothing is wrong.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }

    /// The lowest log sequence a problem names.
    pub fn first_bad_sequence(&self) -> Option<u64> {
        self.problems.iter().filter_map(Problem::sequence).min()
    }

    fn push(&mut self, problem: Problem) {
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(problem);
        } else {
            self.more_problems += 1;
        }
    }
}

/// Checks the library database at `path` (see the module documentation), replaying with the
/// handlers of `registry`. Reads the database only.
///
/// # Errors
/// The database cannot be opened read-only or read (a missing file, a database of a version
/// before the hash chain that no daemon of this version has opened yet, a broken table), or
/// the temporary replica cannot be written. Problems *in* the data are not errors: they are
/// in the report.
pub fn verify(path: &Path, registry: &ModelRegistry) -> Result<VerifyReport> {
    let mut source = open_read_only(path)?;
    let mut replica = Replica::create(registry)?;
    let mut report = VerifyReport {
        path: path.to_owned(),
        entries: 0,
        head: LogHead::default(),
        tables_checked: Vec::new(),
        tables_excluded: Vec::new(),
        unregistered_models: Vec::new(),
        pending_proposals: 0,
        problems: Vec::new(),
        more_problems: 0,
    };
    // One read transaction: the log and the tables are one snapshot.
    source.transaction(|source| {
        if !column_exists(source, "sync_log", "hash")? {
            return Err(StorageError::Migration(
                "the database predates the hash chain: open it once with this version (start \
                 its daemon) so the chain is computed, then verify"
                    .to_owned(),
            ));
        }
        if !column_exists(source, "sync_log", "stamp")? {
            return Err(StorageError::Migration(
                "the database predates stamped entries: open it once with this version (start \
                 its daemon) so it is migrated, then verify"
                    .to_owned(),
            ));
        }
        let bulk = check_log(source, replica.conn(), registry, &mut report)?;
        overlay_pending(source, replica.conn(), registry, &mut report)?;
        compare_tables(source, replica.conn(), registry, &bulk, &mut report)?;
        compare_field_clocks(source, replica.conn(), &mut report)
    })?;
    Ok(report)
}

/// Opens `path` read-only (`file:…?mode=ro`): never created, never written.
fn open_read_only(path: &Path) -> Result<SqliteConnection> {
    if !path.is_file() {
        return Err(StorageError::Io(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no database at {}", path.display()),
        )));
    }
    let text = path.to_str().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("database path {} is not valid UTF-8", path.display()),
        )
    })?;
    let mut uri = String::from("file:");
    for c in text.chars() {
        match c {
            '%' => uri.push_str("%25"),
            '?' => uri.push_str("%3f"),
            '#' => uri.push_str("%23"),
            '\\' if cfg!(windows) => uri.push('/'),
            c => uri.push(c),
        }
    }
    uri.push_str("?mode=ro");
    crate::sqlite_setup::configure();
    let mut conn = SqliteConnection::establish(&uri)?;
    conn.batch_execute("PRAGMA busy_timeout = 5000; PRAGMA query_only = ON;")?;
    Ok(conn)
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

fn column_exists(conn: &mut SqliteConnection, table: &str, column: &str) -> Result<bool> {
    let found = diesel::sql_query("SELECT count(*) AS n FROM pragma_table_info(?) WHERE name = ?")
        .bind::<Text, _>(table)
        .bind::<Text, _>(column)
        .get_result::<Count>(conn)?;
    Ok(found.n > 0)
}

/// The model types named by Bulk entries, with the first such entry's sequence.
type BulkModels = Vec<(String, u64)>;

/// Checks sequences and the chain, and replays the log into `replica`; returns the model types
/// bulk entries name.
fn check_log(
    source: &mut SqliteConnection,
    replica: &mut SqliteConnection,
    registry: &ModelRegistry,
    report: &mut VerifyReport,
) -> Result<BulkModels> {
    let mut bulk: BulkModels = Vec::new();
    let mut expected: u64 = 1;
    let mut prev = ChainHash::GENESIS;
    let mut from: i64 = 1;
    let Some(last) = sync_log::table
        .select(diesel::dsl::max(sync_log::sequence))
        .get_result::<Option<i64>>(source)?
    else {
        return Ok(bulk);
    };
    // A row at sequence 0 or below is not part of a 1-based log.
    let below =
        sync_log::table.filter(sync_log::sequence.lt(1)).count().get_result::<i64>(source)?;
    if below > 0 {
        report.push(Problem::Unreadable {
            sequence: 0,
            reason: format!("{below} row(s) with a sequence below 1"),
        });
    }
    while from <= last {
        let to = from.saturating_add(BATCH - 1);
        let rows = sync_log::table
            .filter(sync_log::sequence.between(from, to))
            .order(sync_log::sequence.asc())
            .load::<LogRow>(source)?;
        let mut entries = Vec::with_capacity(rows.len());
        for row in rows {
            let sequence = row.0 as u64;
            let stored = row.10.clone();
            report.entries += 1;
            if sequence != expected {
                report.push(Problem::Gap { expected, found: sequence });
            }
            expected = sequence + 1;
            let stored = match stored.map(|h| stored_hash(&h, row.0)).transpose() {
                Ok(stored) => stored,
                Err(e) => {
                    report.push(Problem::Unreadable { sequence, reason: e.to_string() });
                    None
                }
            };
            let entry = match row_to_entry(row) {
                Ok(entry) => entry,
                Err(e) => {
                    report.push(Problem::Unreadable { sequence, reason: e.to_string() });
                    prev = stored.unwrap_or(prev);
                    continue;
                }
            };
            let computed = chain_hash(&prev, &entry);
            match stored {
                None => report.push(Problem::HashMissing { sequence }),
                Some(stored) if stored != computed => {
                    report.push(Problem::ChainBroken { sequence, stored, computed })
                }
                Some(_) => {}
            }
            // The next link is checked against this row's stored hash: each changed row is
            // named on its own.
            prev = stored.unwrap_or(computed);
            report.head = LogHead { position: LogPosition::of(&entry), hash: prev };
            if entry.change_type == ChangeType::Bulk
                && !bulk.iter().any(|(m, _)| *m == entry.model_type)
            {
                bulk.push((entry.model_type.clone(), sequence));
            }
            if matches!(entry.change_type, ChangeType::Bulk | ChangeType::Config) {
                continue;
            }
            if !registry.contains(&entry.model_type) {
                if !report.unregistered_models.contains(&entry.model_type) {
                    report.unregistered_models.push(entry.model_type.clone());
                }
                continue;
            }
            entries.push(entry);
        }
        replay(replica, registry, &entries, report)?;
        from = to.saturating_add(1);
    }
    Ok(bulk)
}

/// Applies `entries` to the replica in one transaction, as the applier does; if that fails,
/// entry by entry, naming each that fails.
fn replay(
    replica: &mut SqliteConnection,
    registry: &ModelRegistry,
    entries: &[SyncLogEntry],
    report: &mut VerifyReport,
) -> Result<()> {
    let whole = replica
        .transaction(|conn| crate::transaction::replay_entries(conn, registry, entries).map(drop));
    if whole.is_ok() {
        return Ok(());
    }
    for entry in entries {
        let one = replica.transaction(|conn| {
            crate::transaction::replay_entries(conn, registry, std::slice::from_ref(entry))
                .map(drop)
        });
        if let Err(e) = one {
            report.push(Problem::Replay { sequence: entry.sequence, reason: e.to_string() });
        }
    }
    Ok(())
}

/// Checks the pending overlay's captured rows against the replay (which holds the committed
/// rows now), then applies the overlay's changes to the replica, in outbox order. A database no
/// daemon of this version opened yet has no overlay.
fn overlay_pending(
    source: &mut SqliteConnection,
    replica: &mut SqliteConnection,
    registry: &ModelRegistry,
    report: &mut VerifyReport,
) -> Result<()> {
    if !column_exists(source, "outbox", "committed_last")? {
        return Ok(());
    }
    let undo = crate::pending::undo_rows(source)?;
    let mut captured = std::collections::HashSet::new();
    for (model_type, record_id, stored) in undo {
        let Some(handler) = registry.handler(&model_type) else { continue };
        // A handler reading its rows from the log (the default `load`) cannot read the
        // replica: its captured rows are not checked.
        if let Ok(replayed) = handler.load(replica, &record_id) {
            if replayed != stored {
                let show = |r: &Option<crate::StoredRecord>| {
                    r.as_ref().map_or("absent".to_owned(), |r| format!("version {}", r.version))
                };
                report.push(Problem::Pending {
                    model_type: model_type.clone(),
                    record_id: record_id.clone(),
                    reason: format!(
                        "the captured committed row ({}) is not the replay of the log ({})",
                        show(&stored),
                        show(&replayed)
                    ),
                });
            }
        }
        captured.insert((model_type, record_id));
    }
    let overlay = crate::outbox::overlay(source)?;
    report.pending_proposals = overlay.len() as u64;
    replica.transaction(|replica| {
        for entry in &overlay {
            for change in &entry.changes {
                let Some(handler) = registry.handler(&change.model_type) else { continue };
                if !matches!(
                    change.change_type,
                    ChangeType::Insert
                        | ChangeType::Update
                        | ChangeType::Patch
                        | ChangeType::Delete
                ) {
                    continue;
                }
                let key = (change.model_type.clone(), change.record_id.clone());
                if !captured.contains(&key) {
                    captured.insert(key);
                    report.push(Problem::Pending {
                        model_type: change.model_type.clone(),
                        record_id: change.record_id.clone(),
                        reason: format!(
                            "proposal {} changes it but its committed row was not captured",
                            entry.proposal_id
                        ),
                    });
                }
                crate::pending::apply_change(replica, handler, change)?;
            }
        }
        Ok::<_, StorageError>(())
    })
}

#[derive(QueryableByName)]
struct Column {
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    pk: i32,
}

#[derive(QueryableByName)]
struct KeyedRow {
    #[diesel(sql_type = Text)]
    key: String,
    #[diesel(sql_type = Nullable<Text>)]
    record: Option<String>,
    #[diesel(sql_type = Text)]
    row: String,
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Compares every registered model table not written by bulk jobs with the replica.
/// Compares the field clocks (docs/architecture.md, "Conflicts": derived from the log's
/// stamps, what decides conflicts) with the replay's; a difference is a `RowDiffers` of table
/// `field_clock`.
fn compare_field_clocks(
    source: &mut SqliteConnection,
    replica: &mut SqliteConnection,
    report: &mut VerifyReport,
) -> Result<()> {
    let stored = crate::field_clock::all(source)?;
    let replayed = crate::field_clock::all(replica)?;
    let show = |c: &crate::field_clock::RecordClock| format!("{c:?}");
    let mut keys: Vec<(&String, &String)> =
        stored.iter().chain(&replayed).map(|(m, r, _)| (m, r)).collect();
    keys.sort();
    keys.dedup();
    for (model_type, record_id) in keys {
        let find = |rows: &[(String, String, crate::field_clock::RecordClock)]| {
            rows.iter()
                .find(|(m, r, _)| m == model_type && r == record_id)
                .map(|(_, _, c)| c.clone())
        };
        let (a, b) = (find(&stored), find(&replayed));
        if a != b {
            report.push(Problem::RowDiffers {
                table: "field_clock".to_owned(),
                key: format!("{model_type}|{record_id}"),
                sequence: None,
                stored: a.as_ref().map(show),
                replayed: b.as_ref().map(show),
            });
        }
    }
    Ok(())
}

fn compare_tables(
    source: &mut SqliteConnection,
    replica: &mut SqliteConnection,
    registry: &ModelRegistry,
    bulk: &BulkModels,
    report: &mut VerifyReport,
) -> Result<()> {
    for handler in registry.handlers() {
        let table = handler.table_name().to_owned();
        if let Some((_, sequence)) = bulk.iter().find(|(m, _)| m == handler.model_type()) {
            report.tables_excluded.push(ExcludedTable {
                table,
                reason: format!(
                    "written locally by bulk jobs (bulk entries of model {:?}, the first at \
                     sequence {sequence})",
                    handler.model_type()
                ),
            });
            continue;
        }
        let columns = diesel::sql_query("SELECT name, pk FROM pragma_table_info(?) ORDER BY cid")
            .bind::<Text, _>(&table)
            .load::<Column>(source)?;
        if columns.is_empty() {
            report.tables_excluded.push(ExcludedTable {
                table,
                reason: "the table does not exist in the database".to_owned(),
            });
            continue;
        }
        let mut pk: Vec<&Column> = columns.iter().filter(|c| c.pk > 0).collect();
        pk.sort_by_key(|c| c.pk);
        let key = if pk.is_empty() {
            "quote(rowid)".to_owned()
        } else {
            pk.iter()
                .map(|c| format!("quote({})", quote_ident(&c.name)))
                .collect::<Vec<_>>()
                .join(" || '|' || ")
        };
        let record = match pk.as_slice() {
            [one] => format!("CAST({} AS TEXT)", quote_ident(&one.name)),
            _ => "NULL".to_owned(),
        };
        let row = columns
            .iter()
            .map(|c| format!("quote({})", quote_ident(&c.name)))
            .collect::<Vec<_>>()
            .join(" || '|' || ");
        let sql = format!(
            "SELECT {key} AS key, {record} AS record, {row} AS row FROM {} ORDER BY key",
            quote_ident(&table)
        );
        let stored = diesel::sql_query(&sql).load::<KeyedRow>(source)?;
        let replayed = diesel::sql_query(&sql).load::<KeyedRow>(replica)?;
        let mut differing = Vec::new();
        let (mut a, mut b) = (stored.into_iter().peekable(), replayed.into_iter().peekable());
        loop {
            let order = match (a.peek(), b.peek()) {
                (None, None) => break,
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (Some(x), Some(y)) => x.key.as_bytes().cmp(y.key.as_bytes()),
            };
            match order {
                std::cmp::Ordering::Less => {
                    let x = a.next().expect("peeked");
                    differing.push((x.key, x.record, Some(x.row), None));
                }
                std::cmp::Ordering::Greater => {
                    let y = b.next().expect("peeked");
                    differing.push((y.key, y.record, None, Some(y.row)));
                }
                std::cmp::Ordering::Equal => {
                    let (x, y) = (a.next().expect("peeked"), b.next().expect("peeked"));
                    if x.row != y.row {
                        differing.push((x.key, x.record, Some(x.row), Some(y.row)));
                    }
                }
            }
        }
        for (key, record, stored, replayed) in differing {
            let sequence = if report.problems.len() < MAX_PROBLEMS {
                match record {
                    Some(record) => last_write(source, handler.model_type(), &record)?,
                    None => None,
                }
            } else {
                None
            };
            report.push(Problem::RowDiffers {
                table: table.clone(),
                key,
                sequence,
                stored,
                replayed,
            });
        }
        report.tables_checked.push(table);
    }
    Ok(())
}

/// The last log entry that wrote record `record_id` of `model_type` (a scan of the log: only
/// run for the rows that differ).
fn last_write(
    conn: &mut SqliteConnection,
    model_type: &str,
    record_id: &str,
) -> Result<Option<u64>> {
    use diesel::dsl::max;
    let last = sync_log::table
        .filter(sync_log::model_type.eq(model_type))
        .filter(sync_log::record_id.eq(record_id))
        .filter(sync_log::change_type.ne(ChangeType::Bulk.as_str()))
        .select(max(sync_log::sequence))
        .get_result::<Option<i64>>(conn)?;
    Ok(last.and_then(|s| u64::try_from(s).ok()))
}

/// The temporary database the log is replayed into, removed when dropped.
struct Replica {
    conn: Option<SqliteConnection>,
    path: PathBuf,
}

impl Replica {
    fn create(registry: &ModelRegistry) -> Result<Self> {
        let path = std::env::temp_dir().join(format!("lsync-verify-{}.db", Uuid::new_v4()));
        let url = path.to_str().ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("temporary path {} is not valid UTF-8", path.display()),
            )
        })?;
        crate::sqlite_setup::configure();
        let conn = SqliteConnection::establish(url)?;
        // From here on the file exists: `Drop` removes it whatever happens next.
        let mut replica = Self { conn: Some(conn), path };
        let conn = replica.conn();
        // A scratch copy: no journal, no syncs.
        conn.batch_execute("PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;")?;
        conn.batch_execute(crate::field_clock::DDL)?;
        for handler in registry.handlers() {
            handler.migrate(conn).map_err(|e| {
                StorageError::Migration(format!("replica, model {}: {e}", handler.model_type()))
            })?;
        }
        Ok(replica)
    }

    fn conn(&mut self) -> &mut SqliteConnection {
        self.conn.as_mut().expect("the connection is only taken when dropped")
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        // Closed first, so the file can be removed on every platform.
        drop(self.conn.take());
        let _ = std::fs::remove_file(&self.path);
    }
}
