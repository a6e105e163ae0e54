//! The storage error type and the checked integer conversions used at the SQLite boundary.

use uuid::Uuid;

/// The result type of every storage operation.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// Everything that can go wrong in the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// A query failed.
    #[error("database error: {0}")]
    Database(#[from] diesel::result::Error),
    /// The database file could not be opened.
    #[error("cannot open database: {0}")]
    Connection(#[from] diesel::ConnectionError),
    /// An embedded migration (or a model handler's `migrate`) failed.
    #[error("migration failed: {0}")]
    Migration(String),
    /// The `sync_state` row does not exist yet (see [`crate::Database::init_sync_state`]).
    #[error("sync state is not initialized")]
    NotInitialized,
    /// A commit was refused because this device does not lead the library.
    #[error("not the leader in term {term} (leader: {})", display_leader(leader))]
    NotLeader {
        /// The current term this device knows of.
        term: u64,
        /// The leader this device knows of, if any.
        leader: Option<Uuid>,
    },
    /// A batch of entries does not continue the local log (or is not contiguous).
    #[error("gap in the sync log: expected sequence {expected}, got {got}")]
    Gap {
        /// The sequence that would continue the log.
        expected: u64,
        /// The sequence that was offered.
        got: u64,
    },
    /// An entry overlaps the local log with another term: the logs diverged.
    #[error(
        "sync log diverged at sequence {sequence}: local term {local_term}, remote term {remote_term}"
    )]
    Diverged {
        /// The sequence present in both logs.
        sequence: u64,
        /// The term of the local entry.
        local_term: u64,
        /// The term of the offered entry.
        remote_term: u64,
    },
    /// An entry carries a chain hash other than the one this log computes for it at its
    /// sequence (docs/protocol.md, "The hash chain"): the sender's log and this one differ at
    /// that entry or before it, whatever their terms say. Nothing of the batch is written.
    #[error("hash chain mismatch at sequence {sequence}: the entry carries {carried}, this log computes {computed}")]
    ChainMismatch {
        /// The entry's sequence.
        sequence: u64,
        /// The hash the entry carried (the sender's).
        carried: lsync_protocol::ChainHash,
        /// The hash of the entry after this log's previous one, or this log's own hash at that
        /// sequence for an entry the log already holds.
        computed: lsync_protocol::ChainHash,
    },
    /// No handler is registered for this model type.
    #[error("unknown model type {0:?}")]
    UnknownModel(String),
    /// Bad input to a commit (undecodable data, insert of an existing record, update or delete
    /// of a missing record, empty batch, out-of-range number...).
    #[error("invalid change: {0}")]
    InvalidChange(String),
    /// A stored row cannot be read back.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// An entry needs a newer version of lsync than this one (an unknown change type, or a
    /// configuration of a newer feature version): nothing of its batch is applied.
    #[error("entry {sequence} needs a newer version of lsync: {reason}")]
    UpgradeNeeded {
        /// The entry's sequence.
        sequence: u64,
        /// What this build cannot handle.
        reason: String,
    },
    /// A file system operation failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

fn display_leader(leader: &Option<Uuid>) -> String {
    match leader {
        Some(id) => id.to_string(),
        None => "unknown".to_owned(),
    }
}

/// `u64` → `i64` for values written to SQLite; an out-of-range value is refused, never wrapped.
pub(crate) fn to_i64(value: u64, what: &str) -> Result<i64> {
    i64::try_from(value)
        .map_err(|_| StorageError::InvalidChange(format!("{what} {value} exceeds i64::MAX")))
}

/// `i64` → `u64` for values read back from SQLite; a negative value means a corrupt row.
pub(crate) fn to_u64(value: i64, what: &str) -> Result<u64> {
    u64::try_from(value).map_err(|_| StorageError::Corrupt(format!("negative {what} {value}")))
}

/// `u64` → `i64` for query bounds, where saturating is the exact meaning (no sequence, term or
/// row count can exceed `i64::MAX` in SQLite).
pub(crate) fn saturating_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Parses a uuid stored as text.
pub(crate) fn parse_uuid(text: &str, what: &str) -> Result<Uuid> {
    Uuid::parse_str(text).map_err(|e| StorageError::Corrupt(format!("bad {what} {text:?}: {e}")))
}

/// The current time in milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
