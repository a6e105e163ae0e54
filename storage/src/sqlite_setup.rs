//! Process-wide SQLite settings, applied once, before lsync opens its first connection.
//!
//! SQLite is built (libsqlite3-sys, `bundled`) in *serialized* mode: every API call on a
//! connection or statement locks that connection's mutex, and, with memory statistics on, every
//! allocation inside SQLite locks one process-wide mutex. lsync needs neither: each of its
//! connections is a diesel `SqliteConnection` (`Send` but not `Sync`) that is used by one thread
//! at a time — the writer and the reader sit behind a `std::sync::Mutex`, the checkpointer's
//! connection belongs to its thread. So, the first time a [`crate::Database`] opens,
//! [`configure`] switches SQLite to *multi-thread* mode (`SQLITE_CONFIG_MULTITHREAD`:
//! connections opened without `SQLITE_OPEN_FULLMUTEX` have no mutex; SQLite's own global
//! structures keep theirs) and turns its memory statistics off (`SQLITE_CONFIG_MEMSTATUS`).
//! With three followers and a leader on two cores this saved about 5 % of all CPU time and
//! raised the replication rate by about as much (docs/performance.md, "Fifth round").
//!
//! `sqlite3_config` only works before SQLite initializes. If the host used SQLite in this
//! process before lsync opened a database, SQLite refuses (`SQLITE_MISUSE`), nothing changes,
//! and lsync runs in serialized mode, just as correctly. `sqlite3_config` must not race with
//! another thread's first use of SQLite: a host whose threads may use SQLite while it starts
//! lsync calls [`configure`] itself first, or initializes SQLite first. A host that shares one
//! SQLite connection between threads at once opens it with `SQLITE_OPEN_FULLMUTEX` (rusqlite
//! opens with `SQLITE_OPEN_NOMUTEX` by default, so its connections are unaffected), or
//! initializes SQLite itself before lsync opens a database.
#![allow(unsafe_code)]

use std::os::raw::c_int;
use std::sync::OnceLock;

/// What [`configure`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqliteSetup {
    /// Multi-thread mode and no memory statistics, as described in the module docs.
    MultiThread,
    /// SQLite was already initialized in this process: its settings were left as they were.
    AlreadyInitialized,
}

/// Applies the settings the first time it is called; returns what the first call found.
pub fn configure() -> SqliteSetup {
    static SETUP: OnceLock<SqliteSetup> = OnceLock::new();
    *SETUP.get_or_init(|| {
        // SAFETY: `sqlite3_config` must not run while another thread uses SQLite; it is called
        // once, before lsync opens any connection, and it returns SQLITE_MISUSE without
        // changing anything once SQLite is initialized (a host that already used SQLite). The
        // variadic arguments have the types SQLite reads: none for MULTITHREAD, one `int` for
        // MEMSTATUS.
        let (threading, memstatus) = unsafe {
            (
                libsqlite3_sys::sqlite3_config(libsqlite3_sys::SQLITE_CONFIG_MULTITHREAD),
                libsqlite3_sys::sqlite3_config(libsqlite3_sys::SQLITE_CONFIG_MEMSTATUS, 0 as c_int),
            )
        };
        if threading == libsqlite3_sys::SQLITE_OK {
            if memstatus != libsqlite3_sys::SQLITE_OK {
                tracing::debug!(code = memstatus, "SQLite kept its memory statistics");
            }
            tracing::debug!("SQLite set to multi-thread mode for lsync's connections");
            SqliteSetup::MultiThread
        } else {
            tracing::info!(
                code = threading,
                "SQLite was initialized before lsync opened a database: keeping its threading \
                 mode (serialized by default; correct, a little slower)"
            );
            SqliteSetup::AlreadyInitialized
        }
    })
}
