//! The process-wide SQLite settings of `lsync_storage::sqlite_setup`, in a process of their own:
//! nothing has initialized SQLite before the first `Database::open` here.
// The raw connection below checks the threading mode through SQLite's C API.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::ptr;

use libsqlite3_sys as ffi;
use lsync_storage::sqlite_setup::{self, SqliteSetup};
use lsync_storage::{Database, ModelRegistry, StorageOptions, SyncLog};

/// Whether a connection opened with SQLite's default flags gets a mutex (serialized mode) or
/// not (multi-thread mode).
fn default_connection_has_mutex(path: &std::path::Path) -> bool {
    let path = CString::new(path.to_str().unwrap()).unwrap();
    let mut db = ptr::null_mut();
    // SAFETY: a plain open/close of a connection used by this thread only; `db` is closed
    // before returning.
    unsafe {
        let rc = ffi::sqlite3_open_v2(
            path.as_ptr(),
            &mut db,
            ffi::SQLITE_OPEN_READWRITE | ffi::SQLITE_OPEN_CREATE,
            ptr::null(),
        );
        assert_eq!(rc, ffi::SQLITE_OK, "open failed");
        let has_mutex = !ffi::sqlite3_db_mutex(db).is_null();
        ffi::sqlite3_close(db);
        has_mutex
    }
}

#[test]
fn the_first_open_switches_sqlite_to_multi_thread_mode_and_databases_still_work_across_threads() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::open(
        &dir.path().join("library.db"),
        &StorageOptions::default(),
        ModelRegistry::with_builtin(),
    )
    .unwrap();
    assert_eq!(sqlite_setup::configure(), SqliteSetup::MultiThread);
    assert!(
        !default_connection_has_mutex(&dir.path().join("raw.db")),
        "a connection opened with default flags still has a mutex: SQLite is not in \
         multi-thread mode"
    );

    // Writer and reader connections used from several threads at once, while the checkpoint
    // thread works on its own connection (woken every 64 commits: 100 commits here).
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let db = db.clone();
            std::thread::spawn(move || {
                for i in 0..50 {
                    if t % 2 == 0 {
                        db.write(|conn| {
                            use lsync_storage::diesel::connection::SimpleConnection;
                            conn.batch_execute(&format!(
                                "CREATE TABLE IF NOT EXISTS t{t} (i INTEGER); \
                                 INSERT INTO t{t} VALUES ({i});"
                            ))?;
                            Ok(())
                        })
                        .unwrap();
                    } else {
                        db.with_reader(SyncLog::last).unwrap();
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let count = db
        .with_reader(|conn| {
            use lsync_storage::diesel::prelude::*;
            #[derive(QueryableByName)]
            struct N {
                #[diesel(sql_type = lsync_storage::diesel::sql_types::BigInt)]
                n: i64,
            }
            Ok(lsync_storage::diesel::sql_query(
                "SELECT (SELECT count(*) FROM t0) + (SELECT count(*) FROM t2) AS n",
            )
            .get_result::<N>(conn)?
            .n)
        })
        .unwrap();
    assert_eq!(count, 100);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while db.background_checkpoints() == 0 {
        assert!(std::time::Instant::now() < deadline, "no background checkpoint ran");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
