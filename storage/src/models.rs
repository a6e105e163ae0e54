//! The built-in models, [`Tag`] (table `tag`) and [`Location`] (table `location`), and their
//! handlers.

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sqlite::SqliteConnection;
use lsync_protocol::SyncLogEntry;
use serde::{Deserialize, Serialize};

use crate::change::Change;
use crate::error::{Result, StorageError};
use crate::model::{
    apply_in_runs, decode, encode, validate_syncable, ModelHandler, StoredRecord, Syncable,
};
use crate::schema::{location, tag};

/// A tag (model type `tag`, table `tag`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Tag {
    /// Primary key.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Optional color, e.g. `#ff0000`.
    pub color: Option<String>,
}

impl Syncable for Tag {
    const MODEL_TYPE: &'static str = "tag";
    fn record_id(&self) -> String {
        self.id.clone()
    }
}

/// A location (model type `location`, table `location`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Location {
    /// Primary key.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Path on the device that added it.
    pub path: String,
}

impl Syncable for Location {
    const MODEL_TYPE: &'static str = "location";
    fn record_id(&self) -> String {
        self.id.clone()
    }
}

/// Borrowed views decoded without copying the strings (the hot path of the applier).
#[derive(Deserialize)]
struct TagRef<'a> {
    id: &'a str,
    name: &'a str,
    color: Option<&'a str>,
}

#[derive(Deserialize)]
struct LocationRef<'a> {
    id: &'a str,
    name: &'a str,
    path: &'a str,
}

fn check_id(entry: &SyncLogEntry, id: &str) -> Result<()> {
    if id == entry.record_id {
        Ok(())
    } else {
        Err(StorageError::InvalidChange(format!(
            "{} entry {} has record id {:?} but its data has {id:?}",
            entry.model_type, entry.sequence, entry.record_id
        )))
    }
}

const TAG_DDL: &str = "CREATE TABLE IF NOT EXISTS tag (
    id TEXT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL,
    color TEXT,
    version BIGINT NOT NULL
)";

const LOCATION_DDL: &str = "CREATE TABLE IF NOT EXISTS location (
    id TEXT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL,
    path TEXT NOT NULL,
    version BIGINT NOT NULL
)";

/// The [`ModelHandler`] of [`Tag`].
#[derive(Debug, Clone, Copy, Default)]
pub struct TagHandler;

impl ModelHandler for TagHandler {
    fn model_type(&self) -> &str {
        Tag::MODEL_TYPE
    }

    fn table_name(&self) -> &str {
        "tag"
    }

    fn migrate(&self, conn: &mut SqliteConnection) -> Result<()> {
        conn.batch_execute(TAG_DDL)?;
        Ok(())
    }

    fn validate(&self, change: &Change) -> Result<()> {
        validate_syncable::<Tag>(change)
    }

    fn current_version(&self, conn: &mut SqliteConnection, record_id: &str) -> Result<Option<i64>> {
        // `get_result`, not `first`: no bound `LIMIT ?`, which makes SQLite re-prepare the
        // statement at every execution (docs/performance.md).
        Ok(tag::table.find(record_id).select(tag::version).get_result(conn).optional()?)
    }

    fn load(&self, conn: &mut SqliteConnection, record_id: &str) -> Result<Option<StoredRecord>> {
        let row = tag::table
            .find(record_id)
            .select((tag::id, tag::name, tag::color, tag::version))
            .get_result::<(String, String, Option<String>, i64)>(conn)
            .optional()?;
        Ok(row.map(|(id, name, color, version)| StoredRecord {
            data: encode(&Tag { id, name, color }),
            version,
        }))
    }

    fn apply(&self, conn: &mut SqliteConnection, entry: &SyncLogEntry) -> Result<()> {
        self.apply_batch(conn, &[entry])
    }

    fn apply_batch(&self, conn: &mut SqliteConnection, entries: &[&SyncLogEntry]) -> Result<()> {
        apply_in_runs(
            conn,
            entries,
            |conn, run| {
                let mut rows = Vec::with_capacity(run.len());
                for entry in run {
                    let t: TagRef<'_> = decode(&entry.data)?;
                    check_id(entry, t.id)?;
                    // Owned values: the statement's type must be `'static` to be cached.
                    rows.push((
                        tag::id.eq(t.id.to_owned()),
                        tag::name.eq(t.name.to_owned()),
                        tag::color.eq(t.color.map(str::to_owned)),
                        tag::version.eq(entry.version),
                    ));
                }
                crate::in_cached_chunks!(&rows[..], |chunk| {
                    diesel::replace_into(tag::table).values(chunk).execute(conn)?
                });
                Ok(())
            },
            |conn, entry| {
                diesel::delete(tag::table.find(&entry.record_id)).execute(conn)?;
                Ok(())
            },
        )
    }

    fn clear(&self, conn: &mut SqliteConnection) -> Result<()> {
        diesel::delete(tag::table).execute(conn)?;
        Ok(())
    }
}

/// The [`ModelHandler`] of [`Location`].
#[derive(Debug, Clone, Copy, Default)]
pub struct LocationHandler;

impl ModelHandler for LocationHandler {
    fn model_type(&self) -> &str {
        Location::MODEL_TYPE
    }

    fn table_name(&self) -> &str {
        "location"
    }

    fn migrate(&self, conn: &mut SqliteConnection) -> Result<()> {
        conn.batch_execute(LOCATION_DDL)?;
        Ok(())
    }

    fn validate(&self, change: &Change) -> Result<()> {
        validate_syncable::<Location>(change)
    }

    fn current_version(&self, conn: &mut SqliteConnection, record_id: &str) -> Result<Option<i64>> {
        // `get_result`, not `first`: no bound `LIMIT ?`, which makes SQLite re-prepare the
        // statement at every execution (docs/performance.md).
        Ok(location::table.find(record_id).select(location::version).get_result(conn).optional()?)
    }

    fn load(&self, conn: &mut SqliteConnection, record_id: &str) -> Result<Option<StoredRecord>> {
        let row = location::table
            .find(record_id)
            .select((location::id, location::name, location::path, location::version))
            .get_result::<(String, String, String, i64)>(conn)
            .optional()?;
        Ok(row.map(|(id, name, path, version)| StoredRecord {
            data: encode(&Location { id, name, path }),
            version,
        }))
    }

    fn apply(&self, conn: &mut SqliteConnection, entry: &SyncLogEntry) -> Result<()> {
        self.apply_batch(conn, &[entry])
    }

    fn apply_batch(&self, conn: &mut SqliteConnection, entries: &[&SyncLogEntry]) -> Result<()> {
        apply_in_runs(
            conn,
            entries,
            |conn, run| {
                let mut rows = Vec::with_capacity(run.len());
                for entry in run {
                    let l: LocationRef<'_> = decode(&entry.data)?;
                    check_id(entry, l.id)?;
                    // Owned values: the statement's type must be `'static` to be cached.
                    rows.push((
                        location::id.eq(l.id.to_owned()),
                        location::name.eq(l.name.to_owned()),
                        location::path.eq(l.path.to_owned()),
                        location::version.eq(entry.version),
                    ));
                }
                crate::in_cached_chunks!(&rows[..], |chunk| {
                    diesel::replace_into(location::table).values(chunk).execute(conn)?
                });
                Ok(())
            },
            |conn, entry| {
                diesel::delete(location::table.find(&entry.record_id)).execute(conn)?;
                Ok(())
            },
        )
    }

    fn clear(&self, conn: &mut SqliteConnection) -> Result<()> {
        diesel::delete(location::table).execute(conn)?;
        Ok(())
    }
}
