//! lsync keeps a user's *library* (tags, locations, … any registered model) identical across
//! that user's devices. One device per library leads: every change commits there together with
//! an entry of a gapless sync log, the leader pushes a notification at once, followers fetch,
//! apply in order and acknowledge.
//!
//! # Layout
//! - this crate: the embedding API — [`Node`] (built by [`NodeBuilder`] inside the host's actix
//!   System) and the `lsync` binary (`src/main.rs`, `src/cli/`); [`config`] (the daemon's TOML
//!   configuration) and [`control`] (its token-guarded local HTTP API and Prometheus metrics).
//! - `lsync-protocol` (`protocol/`): `SyncMessage`, `SyncLogEntry`, the codec, the protocol id.
//! - `lsync-storage` (`storage/`): one SQLite file per library — sync log, model tables,
//!   `TransactionManager` (leader commits) and `Applier` (follower applies).
//! - `lsync-actors` (`actors/`): the Network (libp2p swarm), and per library the `SyncService`
//!   with its role actors.
//!
//! # The leader's path
//! ```text
//! Node::commit ─▶ TransactionManager ── one SQLite transaction: model row + sync_log entry
//!                        │ CommitEvent (broadcast)
//!                        ▼
//!                 LeaderActor (the leader's core) ── NewCommit to every link
//!                        │
//!                        ▼
//!                 LinkActor (one per follower) ── window: first commit at once, bursts
//!                                                  coalesced ── NewEntries ─▶ network
//! ```
//! # The follower's path
//! ```text
//! network ─▶ SyncService ─▶ FollowerActor (runs the Replicator machine)
//!   FetchEntries ─▶ leader's LinkActor ─▶ EntriesResponse (≤ 100 entries)
//!   Applier: one SQLite transaction (model rows + log copy + last_synced_sequence)
//!   Acknowledge ─▶ leader
//! ```
#![forbid(unsafe_code)]

pub mod config;
pub mod control;
mod identity;
pub mod invite;
mod node;

pub use identity::Identity;
pub use lsync_actors::network::NetworkConfig;
pub use lsync_actors::{
    ApplierStatus, FollowerState, FollowerStatus, LibraryStatus, Metrics, Progress, SyncConfig,
    SyncEvent,
};
pub use lsync_protocol::{ChangeType, SyncLogEntry, SyncRole};
pub use lsync_protocol::{MemberRole, RolePreference};
pub use lsync_storage::{
    BulkOperation, Change, Conflict, ConflictOutcome, ConflictPolicy, Database, LocalJob, Location,
    ModelHandler, ModelRegistry, StorageOptions, Syncable, Synchronous, Tag, VerifyReport,
};
pub use node::{
    change_bytes, max_change_bytes, DeviceInfo, Durability, Invitation, JoinOutcome,
    MembershipOutcome, Node, NodeBuilder, NodeConfig, NodeError, WriteOutcome,
};

/// Re-exports of the member crates, for hosts that need more than the facade.
pub mod crates {
    pub use {lsync_actors as actors, lsync_protocol as protocol, lsync_storage as storage};
}
