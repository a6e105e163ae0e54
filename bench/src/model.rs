//! The bench's own replicated model type, registered by the host like any other: `bench`
//! (table `bench_row`). Its data carries the wall-clock time of the commit on the leader, in
//! microseconds since the Unix epoch, so a follower on the same machine (same CLOCK_REALTIME)
//! can tell how long after the commit each entry was applied.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sqlite::SqliteConnection;
use lsync::crates::protocol::SyncLogEntry;
use lsync::crates::storage::{self as storage, decode, validate_syncable};
use lsync::{Change, ModelHandler, ModelRegistry, Syncable};
use serde::{Deserialize, Serialize};

diesel::table! {
    bench_row (id) {
        id -> Text,
        commit_us -> BigInt,
        payload -> Text,
        version -> BigInt,
    }
}

const DDL: &str = "CREATE TABLE IF NOT EXISTS bench_row (
    id TEXT PRIMARY KEY NOT NULL,
    commit_us BIGINT NOT NULL,
    payload TEXT NOT NULL,
    version BIGINT NOT NULL
)";

/// One row of the bench model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchRow {
    pub id: String,
    /// Wall-clock time of the commit call on the leader, µs since the Unix epoch.
    pub commit_us: i64,
    /// Filler, about the size of a tag's name.
    pub payload: String,
}

impl Syncable for BenchRow {
    const MODEL_TYPE: &'static str = "bench";
    fn record_id(&self) -> String {
        self.id.clone()
    }
}

#[derive(Deserialize)]
struct BenchRef<'a> {
    id: &'a str,
    commit_us: i64,
    payload: &'a str,
}

/// Sequence → commit time (µs), filled by the handler inside the apply transaction and drained
/// by the follower once the transaction committed (on `EntriesApplied`).
pub type Recorder = Arc<Mutex<HashMap<u64, i64>>>;

/// The handler of [`BenchRow`]; records commit times when it has a recorder.
pub struct BenchHandler {
    recorder: Option<Recorder>,
}

impl ModelHandler for BenchHandler {
    fn model_type(&self) -> &str {
        BenchRow::MODEL_TYPE
    }

    fn table_name(&self) -> &str {
        "bench_row"
    }

    fn migrate(&self, conn: &mut SqliteConnection) -> storage::Result<()> {
        conn.batch_execute(DDL)?;
        Ok(())
    }

    fn validate(&self, change: &Change) -> storage::Result<()> {
        validate_syncable::<BenchRow>(change)
    }

    fn current_version(
        &self,
        conn: &mut SqliteConnection,
        record_id: &str,
    ) -> storage::Result<Option<i64>> {
        // Like the built-in handlers: `get_result`, not `first` (whose bound `LIMIT ?` makes
        // SQLite re-prepare the statement at every execution; docs/performance.md).
        Ok(bench_row::table
            .find(record_id)
            .select(bench_row::version)
            .get_result(conn)
            .optional()?)
    }

    fn apply(&self, conn: &mut SqliteConnection, entry: &SyncLogEntry) -> storage::Result<()> {
        self.apply_batch(conn, &[entry])
    }

    /// Like the built-in handlers: runs of upserts as one multi-row statement.
    fn apply_batch(
        &self,
        conn: &mut SqliteConnection,
        entries: &[&SyncLogEntry],
    ) -> storage::Result<()> {
        storage::apply_in_runs(
            conn,
            entries,
            |conn, run| {
                let mut rows = Vec::with_capacity(run.len());
                let mut times = Vec::with_capacity(run.len());
                for entry in run {
                    let row: BenchRef<'_> = decode(&entry.data)?;
                    rows.push((
                        bench_row::id.eq(row.id.to_owned()),
                        bench_row::commit_us.eq(row.commit_us),
                        bench_row::payload.eq(row.payload.to_owned()),
                        bench_row::version.eq(entry.version),
                    ));
                    times.push((entry.sequence, row.commit_us));
                }
                storage::in_cached_chunks!(&rows[..], |chunk| {
                    diesel::replace_into(bench_row::table).values(chunk).execute(conn)?
                });
                if let Some(r) = &self.recorder {
                    r.lock().expect("recorder lock").extend(times);
                }
                Ok(())
            },
            |conn, entry| {
                diesel::delete(bench_row::table.find(&entry.record_id)).execute(conn)?;
                Ok(())
            },
        )
    }

    fn clear(&self, conn: &mut SqliteConnection) -> storage::Result<()> {
        diesel::delete(bench_row::table).execute(conn)?;
        Ok(())
    }
}

/// The built-in models plus `bench`.
pub fn registry(recorder: Option<Recorder>) -> ModelRegistry {
    let mut registry = ModelRegistry::with_builtin();
    registry.register(Arc::new(BenchHandler { recorder }));
    registry
}

/// Wall-clock time, µs since the Unix epoch (CLOCK_REALTIME, shared by the processes).
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// An insert of row `n`, stamped with the current time.
pub fn change(n: u64) -> Change {
    Change::insert(&BenchRow {
        id: format!("r{n}"),
        commit_us: now_us(),
        payload: format!("bench row {n:>10} ............"),
    })
}
