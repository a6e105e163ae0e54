//! Integration tests of lsync-storage. Each test uses its own temporary directory.

mod applier;
mod commit;
mod common;
mod convergence;
mod database;
mod sync_log;
