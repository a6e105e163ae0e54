//! lsync actors: the actix actors of a node and the pure state machines they run.
//!
//! # Layout: one folder per role
//! Each role folder holds its pure machine (decisions, no I/O: inputs in, an ordered list of
//! commands out), the actor that runs it (the shell: performs the commands — requests, storage
//! calls on the blocking pool, events — and feeds the results back), and their tests.
//!
//! | folder | pure machine | actor / shell |
//! |---|---|---|
//! | [`election`] | [`election::Election`] (terms, votes, timeouts, pre-vote, transfer; a seeded simulator in `election/sim.rs`) | [`election::actor::ElectionActor`]: runs the election, persists term and vote, tells the SyncService about role changes |
//! | [`follower`] | [`follower::Replicator`] (NewEntries → fetch pipeline → apply → acknowledge, gaps, reconnect with [`backoff`], reconciliation, repair) | [`follower::actor::FollowerActor`]: the follower role of a library |
//! | [`leader`] | [`leader::core::LeaderCore`] (commit sequence, configuration changes, promotions), [`leader::link::FollowerLink`] (one per follower: notifications batched by [`window`], the term rule, positions) | [`leader::actor::LeaderActor`] (runs the core), [`leader::link_actor::LinkActor`] (on the leader, one per follower: runs its link; serves fetches with [`leader::serve`], from [`log_cache`]) |
//! | [`proposer`] | [`proposer::ProposerCore`] (outbox delivery to the leader, at most once) | [`proposer::Proposer`] (a task) |
//! | [`service`] | [`service::route`] (which actor answers an inbound request), [`service::supervise`] (what the watchdog restarts) | [`SyncService`]: one per library, supervisor of the actors and the proposer's task |
//! | [`network`] | [`network`]'s `gate` (who may connect) | one task owns the libp2p Swarm; [`network::NetworkHandle`] is the client every actor uses |
//!
//! Shared, below the roles: [`messages`] (what one role tells another, or the service),
//! [`limits`], [`transport`] (the request seam between actors and network; tests script it),
//! [`events`] (events and status snapshots for the host), [`config`] (timers), [`metrics`],
//! [`fencing`] (the term rule), [`window`], [`backoff`], [`log_cache`]. Dependencies point one
//! way (docs/architecture.md, "Layering"; enforced by a test).
//!
//! The whole-device simulator (sim/) runs the same machines. docs/architecture.md tells how the
//! pieces fit.
// `deny`, not `forbid`: `election::clock` is the one module allowed unsafe code (the system
// calls that read a clock counting suspend, for the leader lease).
#![deny(unsafe_code)]

pub mod backoff;
mod blocking;
pub mod config;
pub mod election;
pub mod events;
pub mod fencing;
pub mod follower;
#[cfg(test)]
mod layering;
pub mod leader;
pub mod limits;
pub mod log_cache;
pub mod messages;
pub mod metrics;
pub mod network;
pub mod proposer;
pub mod service;
pub mod task;
#[cfg(test)]
mod testkit;
pub mod transport;
pub mod window;

pub use config::SyncConfig;
pub use events::{
    ApplierStatus, FollowerState, FollowerStatus, LibraryStatus, Progress, SyncEvent,
};
pub use messages::Shutdown;
pub use metrics::Metrics;
pub use service::{AddMember, GetStatus, LibraryContext, SyncService};
pub use transport::{NetworkError, Transport};
