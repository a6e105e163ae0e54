//! lsync actors: the actix actors of a node and the pure state machines they wrap.
//!
//! # Layout
//! - [`network`] — the libp2p Swarm, driven by one task; [`network::NetworkHandle`] is the
//!   cloneable client every actor uses. Routes inbound requests by `library_id`.
//! - [`service`] — `SyncService`, one per library: supervisor of the role actors.
//! - leader path: [`notifier`] (`LeaderNotifier`: commit events → announcements, batched by
//!   [`window`]) → [`session`] (`FollowerSession`, one per follower: NewEntries, serves
//!   FetchEntries / Acknowledge / Heartbeat, from [`log_cache`] when another follower fetched the
//!   same block).
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
//!   under Raft's commit rule, when a configuration change may start, promotions and demotions.
//! - [`transport`] — the request seam between actors and network (tests script it).
//! - [`events`] — events and status snapshots for the host; [`config`] — timers and limits.
//!
//! Decision logic with no I/O lives in [`election`], [`follower`], [`membership`], [`fencing`],
//! [`window`] and [`backoff`]; actors are thin shells.
#![forbid(unsafe_code)]

pub mod applier;
pub mod backoff;
mod blocking;
pub mod config;
pub mod election;
pub mod events;
pub mod fencing;
pub mod follower;
pub mod log_cache;
pub mod membership;
pub mod metrics;
pub mod network;
pub mod notifier;
pub mod proposer;
pub mod service;
pub mod session;
#[cfg(test)]
mod testkit;
pub mod transport;
pub mod watcher;
pub mod window;

pub use config::SyncConfig;
pub use events::{
    ApplierStatus, FollowerState, FollowerStatus, LibraryStatus, Progress, SyncEvent,
};
pub use metrics::Metrics;
pub use service::{AddMember, GetStatus, LibraryContext, Shutdown, SyncService};
pub use transport::{NetworkError, Transport};
