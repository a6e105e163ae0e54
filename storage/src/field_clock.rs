//! When each field of a record was last set: the local table `field_clock`, derived on every
//! device from the stamps of the log it applies (docs/architecture.md, "Conflicts"), so that
//! whichever device leads decides a conflict the same way.
//!
//! One row per record written by a stamped entry: the version and timestamp of the last write
//! of the whole record, and the fields set since by field-level changes, each with its version
//! and timestamp. A record without a row had every field last set at its current version,
//! without a timestamp (entries written before stamps, or by a library below feature version
//! 3). Rows are written in the transaction that applies the entries, and cleared with the
//! model tables.
//!
//! The table is `WITHOUT ROWID` (one B-tree keyed by model type and record id), and
//! [`record`] writes each record's final clock of a batch of entries once, with multi-row
//! statements: a clock row per entry, each its own `REPLACE` into a rowid table with a primary-key
//! index, made a library at feature version 3 commit a third slower than at 2
//! (docs/performance.md, "Conflicts (issue 18): what stamps cost").
//!
//! A stamped Delete leaves a **deletion marker** (a tombstone): the row of the deleted record
//! keeps the version and timestamp of the delete, flagged `deleted`, so that a change made
//! before the delete and arriving after it is decided against the delete like against any
//! write ([`crate::conflicts`]). A marker is replaced by the clock of the next write of its
//! record (its re-creation) and removed by an unstamped one, and cleared with the tables; it
//! is otherwise kept — one row per deleted record, never more than the Delete entries the log
//! itself holds (docs/architecture.md, "Conflicts").

use std::collections::BTreeMap;

use diesel::prelude::*;
use diesel::sqlite::SqliteConnection;
use lsync_protocol::{ChangeType, Hlc, SyncLogEntry, RESERVED_MODEL_PREFIX};

use crate::error::{Result, StorageError};
use crate::schema::field_clock;

/// When one field (or the whole record) was last set: the record's version after that write
/// and the timestamp of the change, if it had one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldStamp {
    /// The record's version after the write.
    pub version: i64,
    /// The timestamp of the change that wrote it (`None`: a change without one, older than
    /// every stamped change).
    pub hlc: Option<Hlc>,
}

/// The clock of one record: the stamp of its last whole-record write and those of the fields
/// set since by field-level changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordClock {
    /// The last write of the whole record.
    pub whole: FieldStamp,
    /// Fields set since, by name.
    pub fields: Vec<(String, FieldStamp)>,
    /// A deletion marker: the record was deleted by the write `whole` (a stamped Delete, at
    /// its version and timestamp); `fields` is empty.
    pub deleted: bool,
}

impl RecordClock {
    /// When `field` was last set.
    pub fn field(&self, field: &str) -> FieldStamp {
        self.fields.iter().find(|(name, _)| name == field).map_or(self.whole, |(_, s)| *s)
    }

    /// The latest write of any field (the record as a whole): the largest version, and the
    /// largest timestamp.
    pub fn latest(&self) -> FieldStamp {
        self.fields.iter().fold(self.whole, |acc, (_, s)| FieldStamp {
            version: acc.version.max(s.version),
            hlc: acc.hlc.max(s.hlc),
        })
    }
}

/// The table, as the storage's migrations leave it (for `lsync verify`'s scratch replica).
pub(crate) const DDL: &str = "CREATE TABLE IF NOT EXISTS field_clock (
    model_type TEXT NOT NULL,
    record_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    hlc BLOB,
    fields BLOB,
    deleted BOOLEAN NOT NULL DEFAULT 0,
    PRIMARY KEY (model_type, record_id)
) WITHOUT ROWID";

type Row = (i64, Option<Vec<u8>>, Option<Vec<u8>>, bool);

fn find(conn: &mut SqliteConnection, model_type: &str, record_id: &str) -> Result<Option<Row>> {
    Ok(field_clock::table
        .find((model_type, record_id))
        .select((field_clock::version, field_clock::hlc, field_clock::fields, field_clock::deleted))
        .get_result::<Row>(conn)
        .optional()?)
}

/// The clock of record `record_id` of `model_type`, which exists at version `version`. (A
/// deletion marker left of an earlier life of the record is not its clock: every field was
/// then last set at `version`, without a timestamp.)
pub(crate) fn load(
    conn: &mut SqliteConnection,
    model_type: &str,
    record_id: &str,
    version: i64,
) -> Result<RecordClock> {
    match find(conn, model_type, record_id)? {
        None => Ok(unstamped(version)),
        Some(row) => {
            let clock = decode_row(model_type, record_id, row)?;
            Ok(if clock.deleted { unstamped(version) } else { clock })
        }
    }
}

/// The clock of a record without a row: every field last set at `version`, without a
/// timestamp.
fn unstamped(version: i64) -> RecordClock {
    RecordClock { whole: FieldStamp { version, hlc: None }, fields: Vec::new(), deleted: false }
}

/// The deletion marker of record `record_id` of `model_type`, which does not exist: the
/// version and timestamp of the stamped Delete that removed it, if it has one.
pub(crate) fn marker(
    conn: &mut SqliteConnection,
    model_type: &str,
    record_id: &str,
) -> Result<Option<FieldStamp>> {
    match find(conn, model_type, record_id)? {
        None => Ok(None),
        Some(row) => {
            let clock = decode_row(model_type, record_id, row)?;
            Ok(clock.deleted.then_some(clock.whole))
        }
    }
}

fn corrupt(model_type: &str, record_id: &str, what: impl std::fmt::Display) -> StorageError {
    StorageError::Corrupt(format!("field_clock of {model_type} {record_id:?}: {what}"))
}

fn decode_row(model_type: &str, record_id: &str, row: Row) -> Result<RecordClock> {
    let (version, hlc, fields, deleted) = row;
    let hlc = hlc
        .map(|b| Hlc::from_bytes(&b).ok_or_else(|| corrupt(model_type, record_id, "hlc")))
        .transpose()?;
    let fields = match fields {
        None => Vec::new(),
        Some(blob) => {
            let raw: Vec<(String, i64, Option<serde_bytes::ByteBuf>)> =
                rmp_serde::from_slice(&blob).map_err(|e| corrupt(model_type, record_id, e))?;
            raw.into_iter()
                .map(|(name, version, hlc)| {
                    let hlc = hlc
                        .map(|b| {
                            Hlc::from_bytes(&b)
                                .ok_or_else(|| corrupt(model_type, record_id, "field hlc"))
                        })
                        .transpose()?;
                    Ok((name, FieldStamp { version, hlc }))
                })
                .collect::<Result<Vec<_>>>()?
        }
    };
    Ok(RecordClock { whole: FieldStamp { version, hlc }, fields, deleted })
}

/// A row of the table, owned (the statement's type must be `'static` for diesel to cache it:
/// [`crate::in_cached_chunks!`]).
type NewRow = (
    diesel::dsl::Eq<field_clock::model_type, String>,
    diesel::dsl::Eq<field_clock::record_id, String>,
    diesel::dsl::Eq<field_clock::version, i64>,
    diesel::dsl::Eq<field_clock::hlc, Option<Vec<u8>>>,
    diesel::dsl::Eq<field_clock::fields, Option<Vec<u8>>>,
    diesel::dsl::Eq<field_clock::deleted, bool>,
);

fn new_row(model_type: &str, record_id: &str, clock: &RecordClock) -> NewRow {
    let fields = (!clock.fields.is_empty()).then(|| {
        let raw: Vec<(&str, i64, Option<serde_bytes::ByteBuf>)> = clock
            .fields
            .iter()
            .map(|(name, s)| {
                (name.as_str(), s.version, s.hlc.map(|h| serde_bytes::ByteBuf::from(h.to_bytes())))
            })
            .collect();
        rmp_serde::to_vec(&raw).unwrap_or_default()
    });
    (
        field_clock::model_type.eq(model_type.to_owned()),
        field_clock::record_id.eq(record_id.to_owned()),
        field_clock::version.eq(clock.whole.version),
        field_clock::hlc.eq(clock.whole.hlc.map(|h| h.to_bytes().to_vec())),
        field_clock::fields.eq(fields),
        field_clock::deleted.eq(clock.deleted),
    )
}

/// Records ids deleted per statement by [`write`] (well below SQLite's limit of bound
/// parameters).
const FORGET_CHUNK: usize = 500;

/// Writes what a batch left of each record (`None`: no row) — one row per record whatever the
/// number of its entries: a multi-row `REPLACE` per 100 records, in key order, and one `DELETE`
/// per model type and chunk of record ids.
///
/// `REPLACE`, not an upsert (`INSERT … ON CONFLICT DO UPDATE`): diesel never caches the
/// prepared statement of an upsert, and preparing a 100-row statement for every chunk cost a
/// third of this function's time (docs/performance.md); in a `WITHOUT ROWID` table the
/// `REPLACE` of an existing row rewrites it in the one B-tree.
fn write(
    conn: &mut SqliteConnection,
    batch: BTreeMap<(&str, &str), Option<RecordClock>>,
) -> Result<()> {
    let mut rows = Vec::with_capacity(batch.len());
    let mut forgotten: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for ((model_type, record_id), clock) in batch {
        match clock {
            Some(clock) => rows.push(new_row(model_type, record_id, &clock)),
            None => forgotten.entry(model_type).or_default().push(record_id),
        }
    }
    for (model_type, ids) in forgotten {
        for ids in ids.chunks(FORGET_CHUNK) {
            diesel::delete(
                field_clock::table
                    .filter(field_clock::model_type.eq(model_type))
                    .filter(field_clock::record_id.eq_any(ids)),
            )
            .execute(conn)?;
        }
    }
    crate::in_cached_chunks!(&rows[..], |chunk| {
        diesel::replace_into(field_clock::table).values(chunk).execute(conn)?
    });
    Ok(())
}

/// Takes in `entries` (in log order, just applied to the model tables): each Insert, Update
/// and Delete of a host model sets the clock of its record — a whole-record write with a stamp
/// replaces it (a deletion marker included), a field-level one (a stamp naming fields) sets
/// those fields, a Delete with a stamp leaves a deletion marker, and any entry without a stamp
/// removes it. Returns the latest timestamp the entries carried.
///
/// The clocks are worked out in memory first, entry by entry (a field-level stamp builds on
/// the clock the entries before it in the batch left, else on the stored row), and each
/// record's final clock is written once at the end ([`write`]): the same rows as writing
/// after every entry.
pub(crate) fn record(conn: &mut SqliteConnection, entries: &[SyncLogEntry]) -> Result<Option<Hlc>> {
    let mut latest: Option<Hlc> = None;
    // What the entries so far left of each record they wrote: its clock, or none.
    let mut batch: BTreeMap<(&str, &str), Option<RecordClock>> = BTreeMap::new();
    for entry in entries {
        if !matches!(
            entry.change_type,
            ChangeType::Insert | ChangeType::Update | ChangeType::Delete
        ) || entry.model_type.starts_with(RESERVED_MODEL_PREFIX)
        {
            continue;
        }
        let key = (entry.model_type.as_str(), entry.record_id.as_str());
        let Some(stamp) = &entry.stamp else {
            batch.insert(key, None);
            continue;
        };
        latest = latest.max(Some(stamp.hlc));
        let now = FieldStamp { version: entry.version, hlc: Some(stamp.hlc) };
        let deleted = entry.change_type == ChangeType::Delete;
        let clock = if deleted || stamp.fields.is_empty() {
            RecordClock { whole: now, fields: Vec::new(), deleted }
        } else {
            let before = entry.version.saturating_sub(1);
            let mut clock = match batch.remove(&key) {
                Some(Some(clock)) if !clock.deleted => clock,
                // no row, or a deletion marker: as `load` reads them
                Some(_) => unstamped(before),
                None => load(conn, key.0, key.1, before)?,
            };
            for field in &stamp.fields {
                match clock.fields.iter_mut().find(|(name, _)| name == field) {
                    Some((_, s)) => *s = now,
                    None => clock.fields.push((field.clone(), now)),
                }
            }
            clock
        };
        batch.insert(key, Some(clock));
    }
    write(conn, batch)?;
    Ok(latest)
}

/// Forgets every clock (the model tables were cleared).
pub(crate) fn clear(conn: &mut SqliteConnection) -> Result<()> {
    diesel::delete(field_clock::table).execute(conn)?;
    Ok(())
}

/// Every row, in key order, as (model type, record id, clock), deletion markers included:
/// what `lsync verify` compares with the replay of the log.
pub fn all(conn: &mut SqliteConnection) -> Result<Vec<(String, String, RecordClock)>> {
    let rows = field_clock::table
        .select((
            field_clock::model_type,
            field_clock::record_id,
            field_clock::version,
            field_clock::hlc,
            field_clock::fields,
            field_clock::deleted,
        ))
        .order((field_clock::model_type.asc(), field_clock::record_id.asc()))
        .load::<(String, String, i64, Option<Vec<u8>>, Option<Vec<u8>>, bool)>(conn)?;
    rows.into_iter()
        .map(|(m, r, v, h, f, d)| {
            let clock = decode_row(&m, &r, (v, h, f, d))?;
            Ok((m, r, clock))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use diesel::connection::SimpleConnection;
    use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};
    use lsync_protocol::EntryStamp;
    use uuid::Uuid;

    fn conn() -> SqliteConnection {
        let mut conn = SqliteConnection::establish(":memory:").unwrap();
        conn.batch_execute(DDL).unwrap();
        conn
    }

    fn hlc(ms: u64) -> Hlc {
        Hlc { physical_ms: ms, counter: 0, device: Uuid::from_u128(7) }
    }

    /// An entry of `record` at `version`: an Update (a Delete if `delete`), stamped at `ms`
    /// with `fields` unless `ms` is 0.
    fn entry(record: &str, version: i64, ms: u64, fields: &[&str], delete: bool) -> SyncLogEntry {
        SyncLogEntry {
            sequence: 1,
            term: 1,
            origin_device: Uuid::from_u128(7),
            timestamp_ms: 0,
            model_type: "tag".to_owned(),
            record_id: record.to_owned(),
            change_type: if delete { ChangeType::Delete } else { ChangeType::Update },
            version,
            data: Vec::new(),
            proposal_id: None,
            hash: None,
            stamp: (ms > 0).then(|| EntryStamp {
                hlc: hlc(ms),
                fields: fields.iter().map(|f| (*f).to_owned()).collect(),
            }),
        }
    }

    /// Entries whose stamps build on each other within one batch: field-level changes after a
    /// whole-record write and after a deletion marker, an unstamped write in between, two
    /// records interleaved — on top of stored rows.
    fn history() -> (Vec<SyncLogEntry>, Vec<SyncLogEntry>) {
        let stored = vec![
            entry("a", 1, 10, &[], false),
            entry("b", 1, 11, &["name"], false),
            entry("c", 3, 12, &[], true),
            entry("d", 1, 13, &[], false),
        ];
        let batch = vec![
            entry("a", 2, 20, &["name"], false),
            entry("b", 2, 21, &["color"], false),
            entry("a", 3, 22, &["color", "name"], false),
            entry("c", 4, 23, &["name"], false),
            entry("d", 2, 0, &[], false),
            entry("e", 1, 24, &[], false),
            entry("e", 2, 0, &[], false),
            entry("e", 3, 25, &["name"], false),
            entry("b", 3, 26, &[], true),
            entry("b", 4, 27, &["name"], false),
        ];
        (stored, batch)
    }

    #[test]
    fn a_batch_leaves_the_rows_that_one_entry_at_a_time_leaves() {
        let (stored, batch) = history();
        let mut one_by_one = conn();
        for e in stored.iter().chain(&batch) {
            record(&mut one_by_one, std::slice::from_ref(e)).unwrap();
        }
        let mut batched = conn();
        record(&mut batched, &stored).unwrap();
        assert_eq!(record(&mut batched, &batch).unwrap(), Some(hlc(27)));
        let rows = all(&mut batched).unwrap();
        assert_eq!(rows, all(&mut one_by_one).unwrap());
        // and those rows are what the stamps say
        let find = |id: &str| rows.iter().find(|(_, r, _)| r == id).map(|(_, _, c)| c.clone());
        let at = |version: i64, ms: u64| FieldStamp { version, hlc: Some(hlc(ms)) };
        let a = find("a").unwrap();
        assert_eq!((a.whole, a.field("name"), a.field("color")), (at(1, 10), at(3, 22), at(3, 22)));
        let b = find("b").unwrap();
        // a field-level change after a deletion marker builds on an unstamped record
        let recreated = FieldStamp { version: 3, hlc: None };
        assert_eq!((b.whole, b.field("name"), b.field("color")), (recreated, at(4, 27), recreated));
        let c = find("c").unwrap();
        assert_eq!((c.whole, c.field("name"), c.deleted), (recreated, at(4, 23), false));
        assert_eq!(find("d"), None);
        let e = find("e").unwrap();
        assert_eq!((e.whole.hlc, e.field("name")), (None, at(3, 25)));
    }

    #[test]
    fn an_unstamped_entry_removes_a_stored_row_and_one_written_earlier_in_its_batch() {
        let mut conn = conn();
        record(&mut conn, &[entry("a", 1, 10, &[], false), entry("b", 1, 11, &[], true)]).unwrap();
        let batch = [entry("a", 2, 0, &[], false), entry("c", 1, 12, &[], false)];
        record(&mut conn, &batch).unwrap();
        record(&mut conn, &[entry("c", 2, 0, &[], false), entry("b", 2, 0, &[], false)]).unwrap();
        assert_eq!(all(&mut conn).unwrap(), Vec::new());
    }

    #[test]
    fn a_stored_row_is_replaced_by_the_next_batch() {
        let mut conn = conn();
        record(&mut conn, &[entry("a", 1, 10, &["name"], false)]).unwrap();
        record(&mut conn, &[entry("a", 2, 20, &[], true)]).unwrap();
        let marker = RecordClock {
            whole: FieldStamp { version: 2, hlc: Some(hlc(20)) },
            fields: Vec::new(),
            deleted: true,
        };
        assert_eq!(all(&mut conn).unwrap(), vec![("tag".to_owned(), "a".to_owned(), marker)]);
    }

    const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

    /// The migration to a `WITHOUT ROWID` table keeps every row (deletion markers included)
    /// and leaves a table without a rowid.
    #[test]
    fn the_migration_without_rowid_keeps_the_rows() {
        let mut conn = SqliteConnection::establish(":memory:").unwrap();
        let mut migrations =
            diesel::migration::MigrationSource::<diesel::sqlite::Sqlite>::migrations(&MIGRATIONS)
                .unwrap();
        migrations.sort_by_key(|m| m.name().to_string());
        let at = migrations
            .iter()
            .position(|m| m.name().to_string().ends_with("_field_clock_without_rowid"))
            .unwrap();
        for _ in 0..at {
            conn.run_next_migration(MIGRATIONS).unwrap();
        }
        let (stored, batch) = history();
        record(&mut conn, &stored).unwrap();
        record(&mut conn, &batch).unwrap();
        let before = all(&mut conn).unwrap();
        assert_eq!(before.len(), 4);
        assert!(conn.batch_execute("SELECT rowid FROM field_clock").is_ok());
        assert_eq!(conn.pending_migrations(MIGRATIONS).unwrap().len(), migrations.len() - at);
        conn.run_pending_migrations(MIGRATIONS).unwrap();
        assert_eq!(all(&mut conn).unwrap(), before);
        assert!(conn.batch_execute("SELECT rowid FROM field_clock").is_err());
    }
}
