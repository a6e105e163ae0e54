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
//! A stamped Delete leaves a **deletion marker** (a tombstone): the row of the deleted record
//! keeps the version and timestamp of the delete, flagged `deleted`, so that a change made
//! before the delete and arriving after it is decided against the delete like against any
//! write ([`crate::conflicts`]). A marker is replaced by the clock of the next write of its
//! record (its re-creation) and removed by an unstamped one, and cleared with the tables; it
//! is otherwise kept — one row per deleted record, never more than the Delete entries the log
//! itself holds (docs/architecture.md, "Conflicts").

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

/// The table, as the storage's migration creates it (for `lsync verify`'s scratch replica).
pub(crate) const DDL: &str = "CREATE TABLE IF NOT EXISTS field_clock (
    model_type TEXT NOT NULL,
    record_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    hlc BLOB,
    fields BLOB,
    deleted BOOLEAN NOT NULL DEFAULT 0,
    PRIMARY KEY (model_type, record_id)
)";

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
    let unstamped = || RecordClock {
        whole: FieldStamp { version, hlc: None },
        fields: Vec::new(),
        deleted: false,
    };
    match find(conn, model_type, record_id)? {
        None => Ok(unstamped()),
        Some(row) => {
            let clock = decode_row(model_type, record_id, row)?;
            Ok(if clock.deleted { unstamped() } else { clock })
        }
    }
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

fn store(
    conn: &mut SqliteConnection,
    model_type: &str,
    record_id: &str,
    clock: &RecordClock,
) -> Result<()> {
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
    diesel::replace_into(field_clock::table)
        .values((
            field_clock::model_type.eq(model_type),
            field_clock::record_id.eq(record_id),
            field_clock::version.eq(clock.whole.version),
            field_clock::hlc.eq(clock.whole.hlc.map(|h| h.to_bytes().to_vec())),
            field_clock::fields.eq(fields),
            field_clock::deleted.eq(clock.deleted),
        ))
        .execute(conn)?;
    Ok(())
}

fn forget(conn: &mut SqliteConnection, model_type: &str, record_id: &str) -> Result<()> {
    diesel::delete(field_clock::table.find((model_type, record_id))).execute(conn)?;
    Ok(())
}

/// Takes in `entries` (in log order, just applied to the model tables): each Insert, Update
/// and Delete of a host model sets the clock of its record — a whole-record write with a stamp
/// replaces it (a deletion marker included), a field-level one (a stamp naming fields) sets
/// those fields, a Delete with a stamp leaves a deletion marker, and any entry without a stamp
/// removes it. Returns the latest timestamp the entries carried.
pub(crate) fn record(conn: &mut SqliteConnection, entries: &[SyncLogEntry]) -> Result<Option<Hlc>> {
    let mut latest: Option<Hlc> = None;
    for entry in entries {
        if !matches!(
            entry.change_type,
            ChangeType::Insert | ChangeType::Update | ChangeType::Delete
        ) || entry.model_type.starts_with(RESERVED_MODEL_PREFIX)
        {
            continue;
        }
        let (model_type, record_id) = (entry.model_type.as_str(), entry.record_id.as_str());
        let Some(stamp) = &entry.stamp else {
            forget(conn, model_type, record_id)?;
            continue;
        };
        latest = latest.max(Some(stamp.hlc));
        let now = FieldStamp { version: entry.version, hlc: Some(stamp.hlc) };
        let deleted = entry.change_type == ChangeType::Delete;
        let clock = if deleted || stamp.fields.is_empty() {
            RecordClock { whole: now, fields: Vec::new(), deleted }
        } else {
            let before = entry.version.saturating_sub(1);
            let mut clock = load(conn, model_type, record_id, before)?;
            for field in &stamp.fields {
                match clock.fields.iter_mut().find(|(name, _)| name == field) {
                    Some((_, s)) => *s = now,
                    None => clock.fields.push((field.clone(), now)),
                }
            }
            clock
        };
        store(conn, model_type, record_id, &clock)?;
    }
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
