//! Limits that more than one module of this crate uses, in one place. The configurable
//! timers and sizes are in [`crate::config::SyncConfig`] (docs/operations.md,
//! "Configuration"); a limit used by one module only stays in it.

/// Mailbox capacity of the actors that receive inbound requests (actix's default is 16):
/// requests arrive with `try_send`, and a small mailbox would refuse bursts.
pub const MAILBOX_CAPACITY: usize = 1024;

/// The largest block of the leader's log cache, in entries, whatever
/// `max_entries_per_response` says; the configuration refuses a larger
/// `max_entries_per_response`, and a follower guesses block ends with it.
pub const MAX_BLOCK: u64 = 1024;

/// The default memory bound of a leader's log cache (entries' bytes, counted like in a
/// response: [`lsync_protocol::entry_bytes`]).
pub const DEFAULT_LOG_CACHE_BYTES: usize = 4 << 20;
