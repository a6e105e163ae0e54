//! The leader's side of replication.
pub mod membership;
pub mod notifier;
pub mod session;
