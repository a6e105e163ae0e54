//! Integration tests of lsync-storage. Each test uses its own temporary directory.

mod applier;
mod chain;
mod commit;
mod common;
mod conflicts;
mod convergence;
mod database;
mod fields;
mod hlc;
mod membership;
mod outbox;
mod pending;
mod proposals;
mod repair;
mod sync_log;
mod verify;
