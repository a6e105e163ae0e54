//! The leader's side of replication: for each library this device leads, one core and one
//! link per follower, each a pure state machine run by a thin actor.
//!
//! | file | what it owns |
//! |---|---|
//! | [`core`] | `LeaderCore`, pure: term start, the commit sequence, configuration changes and their answers, promotions and demotions, feature upgrade, resignation |
//! | [`actor`] | `LeaderActor`, runs the core: commit events in, `NewCommit` to every link actor, configuration writes, the published leadership ([`context::LeaderShared`]) |
//! | [`link`] | `FollowerLink`, pure, one per follower: notifications (window, inline entries), the term rule on requests, the follower's position, heartbeats, a removed member's leaving |
//! | [`link_actor`] | `LinkActor`, on the leader, one per follower: runs its link — the transport, the storage reads, the timer |
//! | [`context`] | what the leader's actors share for one leadership: the link actors' context, the published leadership (`LeaderShared`), the log cache |
//! | [`serve`] | answering FetchEntries / Acknowledge / Heartbeat from storage or the log cache (plain reads) |
//! | [`membership`] | the commit rule (`CommitTracker`), when a configuration change may start, the next promotion or demotion: pure decisions the core uses |
//! | [`messages`] | the data the leader's pieces pass each other (what goes to other roles or the service is in [`crate::messages`]) |
//!
//! Dependencies point one way: the machines (`core`, `link`, `membership`) use `messages` and
//! nothing of the actors; the actors run the machines. docs/architecture.md, "The life of one
//! commit" and "Membership", tells the rules.

pub mod actor;
pub mod context;
pub mod core;
pub mod link;
pub mod link_actor;
pub mod membership;
pub mod messages;
pub mod serve;
