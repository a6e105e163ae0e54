//! lsync actors: the actix actors of a node and the pure state machines they wrap.
//!
//! # Layout
//! - [`network`] — the libp2p Swarm, driven by one task; [`network::NetworkHandle`] is the
//!   cloneable client every actor uses. Routes inbound requests by `library_id`.
//! - [`service`] — `SyncService`, one per library: supervisor of the role actors.
//! - [`leader`] — the leader path, one folder: the pure [`leader::core::LeaderCore`] (term
//!   start, commit sequence, configuration changes, promotions, upgrade, resignation) run by
//!   [`notifier`] (`LeaderNotifier`: commit events → `NewCommit` to every session), and per
//!   follower the pure [`leader::link::FollowerLink`] (notifications batched by [`window`],
//!   inline entries, the term rule, positions, leaving) run by [`session`] (`FollowerSession`:
//!   NewEntries, Heartbeat, serves FetchEntries / Acknowledge / Heartbeat with
//!   [`leader::serve`], from [`log_cache`] when another follower fetched the same block).
//!   [`notifier`], [`session`] and [`membership`] are re-exported here from [`leader`].
//! - follower path: [`follower`] (`Replicator`, a pure machine: NewEntries → fetch pipeline →
//!   apply → acknowledge, gaps, reconnect with [`backoff`], full reconciliation; its unit tests
//!   in `follower/tests.rs`, a proptest against a model leader in `follower/prop.rs`), run by
//!   [`applier`] (`FollowerApplier`, its actor shell: performs the machine's commands — requests,
//!   storage calls, events — and feeds the results back).
//! - [`proposer`] — delivers the library's durable outbox (writes made on a device that does
//!   not lead) to the leader, which commits each proposal at most once.
//! - [`watcher`] — `ElectionWatcher`, one per library: runs the [`election`] state machine,
//!   persists term and vote, tells the SyncService about role changes.
//! - [`membership`] — the leader's side of replicated membership, pure: the commit sequence
//!   under Raft's commit rule, when a configuration change may start, promotions and demotions
//!   (in [`leader`]).
//! - [`transport`] — the request seam between actors and network (tests script it).
//! - [`events`] — events and status snapshots for the host; [`config`] — timers and limits.
//!
//! Decision logic with no I/O lives in pure machines — [`election`], [`follower`],
//! [`leader::core`], [`leader::link`], [`membership`], [`proposer::ProposerCore`],
//! [`service::route`], [`fencing`], [`window`], [`backoff`] — that the actors run as thin
//! shells. The whole-device simulator (sim/) runs the same machines.
#![forbid(unsafe_code)]

pub mod applier;
pub mod backoff;
mod blocking;
pub mod config;
pub mod election;
pub mod events;
pub mod fencing;
pub mod follower;
pub mod leader;
pub mod log_cache;
pub mod metrics;
pub mod network;
pub mod proposer;
pub mod service;
#[cfg(test)]
mod testkit;
pub mod transport;
pub mod watcher;
pub mod window;

pub use config::SyncConfig;
pub use events::{
    ApplierStatus, FollowerState, FollowerStatus, LibraryStatus, Progress, SyncEvent,
};
pub use leader::{membership, notifier, session};
pub use metrics::Metrics;
pub use service::{AddMember, GetStatus, LibraryContext, Shutdown, SyncService};
pub use transport::{NetworkError, Transport};
