//! Timers and limits of the sync actors. Every timer is configurable so tests run in
//! milliseconds; the defaults are the ones in docs/operations.md ("Configuration").

use std::time::Duration;

/// Configuration shared by every sync actor of a node.
#[derive(Debug, Clone)]
pub struct SyncConfig {
    /// How often the leader heartbeats each follower and each follower heartbeats its leader.
    pub heartbeat_interval: Duration,
    /// How long a follower waits without hearing its leader before it calls an election
    /// (used by the election watcher).
    pub leader_timeout: Duration,
    /// The notification window: a commit is announced to a follower at once unless a
    /// notification to it is outstanding; commits made meanwhile become one more announcement,
    /// sent when the follower answers or at the latest this long after the first of them.
    pub notify_window: Duration,
    /// The most entries the leader puts in one `EntriesResponse`, whatever the request asks;
    /// also the leader's log cache block, so values above
    /// [`crate::limits::MAX_BLOCK`] act as that.
    pub max_entries_per_response: u64,
    /// The most payload bytes the leader puts in one `EntriesResponse` (at least one entry is
    /// always sent); half the default frame limit, so a response always fits in a frame.
    pub max_response_bytes: usize,
    /// First reconnect delay of a follower that lost its leader.
    pub backoff_initial: Duration,
    /// Upper bound of the reconnect delay.
    pub backoff_max: Duration,
    /// A follower acknowledges at least every this many applied entries while catching up.
    pub ack_every: u64,
    /// The frame limit of the network (its `NetworkConfig::max_frame`, docs/protocol.md
    /// "Framing"): the proposer refuses a change whose `Propose` would exceed it before
    /// queuing it. Default [`lsync_protocol::DEFAULT_MAX_FRAME`].
    pub max_frame: usize,
}

impl Default for SyncConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(30),
            leader_timeout: Duration::from_secs(60),
            notify_window: Duration::from_millis(100),
            max_entries_per_response: 100,
            max_response_bytes: lsync_protocol::DEFAULT_MAX_FRAME / 2,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(30),
            ack_every: 1_000,
            max_frame: lsync_protocol::DEFAULT_MAX_FRAME,
        }
    }
}

impl SyncConfig {
    /// Millisecond timers for tests.
    pub fn fast() -> Self {
        Self {
            heartbeat_interval: Duration::from_millis(200),
            leader_timeout: Duration::from_millis(1_000),
            notify_window: Duration::from_millis(20),
            backoff_initial: Duration::from_millis(20),
            backoff_max: Duration::from_millis(500),
            ..Self::default()
        }
    }
}
