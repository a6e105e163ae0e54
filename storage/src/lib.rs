//! lsync storage: one SQLite database file per library (WAL, `busy_timeout`), holding the
//! model tables and the replicated sync log, so a change and its log entry commit in ONE
//! transaction.
//!
//! # Layout
//!
//! - [`Database`]: opens a library file (creating it, running the embedded migrations and
//!   every registered handler's `migrate`); one writer and one reader connection;
//! - [`SyncLog`] / [`LogPosition`] / [`LogHead`]: the `sync_log` table, 1-based and gapless,
//!   sequenced from the log itself inside the write transaction, each row with its link of the
//!   hash chain (docs/protocol.md, "The hash chain");
//! - [`sync_state`] / [`SyncState`]: this device's view of the library (role, term, vote,
//!   leader, last synced sequence), a single row;
//! - [`devices`] / [`Device`]: the library's member devices; [`membership`] /
//!   [`Membership`]: the configuration in effect, kept equal to a configuration entry of the
//!   log; [`invitations`]: one-time invitation secrets (hashed); [`address_hints`]: signed
//!   address hints of the members;
//! - [`TransactionManager`]: the leader's write path ([`Change`], [`BulkOperation`],
//!   [`CommitEvent`]), and `commit_proposal` for changes made on any device
//!   ([`ProposalOutcome`]: whole and at most once per proposal id — a retry completes a
//!   proposal the log holds only in part — concurrent changes resolved by leader order);
//! - [`outbox`] / [`OutboxEntry`]: the durable outbox of proposals waiting for a leader;
//! - [`Applier`]: the follower's write path ([`ApplyOutcome`]), plus `reset` for full
//!   reconciliation and `reset_for_repair` / `recover_orphans` ([`RecoveredOrphans`]) for
//!   divergence repair;
//! - [`local_jobs`] / [`LocalJob`]: jobs queued by bulk entries on a follower;
//! - [`verify()`] / [`VerifyReport`]: checks a library database read-only (gapless sequences,
//!   the hash chain, model tables equal to the replay of the log);
//! - [`Syncable`], [`ModelHandler`], [`ModelRegistry`]: replicated model types; the built-in
//!   [`Tag`] and [`Location`] live in [`models`].
//!
//! # Tables
//!
//! `sync_log(sequence INTEGER PRIMARY KEY, term, origin_device, timestamp_ms, model_type,
//! record_id, change_type, version, data BLOB, proposal_id, hash BLOB)`, `sync_state` (one row),
//! `devices`, `local_jobs`, the local (never replicated) `outbox`, `proposals` and
//! `stashed_entries`, and one table per model (`tag`, `location`, each row with `version`).
//! Numbers are `u64` in the API and `i64` in SQLite; a value above `i64::MAX` is refused,
//! never wrapped.
//!
//! # SQLite settings
//!
//! The first [`Database::open`] of the process switches SQLite to multi-thread mode and turns
//! its memory statistics off, unless the host initialized SQLite before ([`sqlite_setup`]
//! says what happened and why).
// `deny`, not `forbid`: `sqlite_setup` is the one module allowed unsafe code (two
// `sqlite3_config` calls); everything else refuses it.
#![deny(unsafe_code)]

pub mod address_hints;
mod applier;
mod change;
pub mod conflicts;
mod database;
pub mod devices;
mod error;
pub mod field_clock;
pub mod fields;
pub mod hlc;
pub mod invitations;
pub mod local_jobs;
pub mod mark;
pub mod membership;
mod model;
pub mod models;
pub mod outbox;
mod pending;
mod schema;
pub mod sqlite_setup;
mod sync_log;
pub mod sync_state;
mod transaction;
pub mod verify;

pub use applier::{Applier, ApplyOutcome, RecoveredOrphans};
pub use change::{BulkOperation, Change};
pub use conflicts::{Conflict, ConflictOutcome, ConflictPolicy};
pub use database::{Database, StorageOptions, Synchronous};
pub use devices::Device;
pub use error::{Result, StorageError};
pub use invitations::{Invitation, InvitationRefused};
pub use local_jobs::LocalJob;
pub use mark::{Mark, MarkState};
pub use membership::Membership;
pub use model::{
    apply_in_runs, decode, encode, validate_syncable, ModelHandler, ModelRegistry, StoredRecord,
    Syncable, UPSERT_CHUNK,
};
pub use models::{Location, LocationHandler, Tag, TagHandler};
pub use outbox::{OutboxEntry, OutboxState};
pub use sync_log::{LogHead, LogPosition, SyncLog};
pub use sync_state::{ElectionRecord, SyncState};
pub use transaction::{
    CommitEvent, ProposalOutcome, TransactionManager, COMMIT_EVENT_CAPACITY,
    COMMIT_EVENT_MAX_ENTRIES,
};
pub use verify::{verify, VerifyReport};

/// Re-exported so hosts implementing [`ModelHandler`] use the same diesel as this crate.
pub use diesel;
/// The connection type every storage function takes.
pub use diesel::sqlite::SqliteConnection;
