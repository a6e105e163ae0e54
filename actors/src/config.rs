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
    /// The most bytes, counted by [`lsync_protocol::entry_bytes`], the leader puts in one
    /// `EntriesResponse` or `NewEntries` (a response always carries at least one entry): half
    /// the frame limit by default ([`SyncConfig::for_frame`]). At most `max_frame` minus
    /// [`lsync_protocol::ENVELOPE_BYTES`], so that a response always fits in a frame
    /// ([`SyncConfig::check_frame_limits`]).
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
    /// This configuration for a network frame limit of `max_frame` bytes: `max_frame`, and
    /// `max_response_bytes` half of it (the other half leaves room for a change of the largest
    /// size, `max_frame / 2`, alone in a response, with its envelope).
    pub fn for_frame(self, max_frame: usize) -> Self {
        Self { max_frame, max_response_bytes: max_frame / 2, ..self }
    }

    /// Why a device with this configuration could build a frame over `max_frame` (or refuse
    /// every change), if it could; `None` when every response and push it builds fits. Checked
    /// when a node starts: a configuration that fails is refused there, with this reason.
    ///
    /// The bound: an `EntriesResponse` or `NewEntries` body is at most
    /// [`lsync_protocol::ENVELOPE_BYTES`] plus its entries' [`lsync_protocol::entry_bytes`];
    /// the leader caps that sum at `max_response_bytes` unless one entry alone is larger, and
    /// one entry is at most the largest change, `max_frame / 2`.
    pub fn check_frame_limits(&self) -> Option<String> {
        use lsync_protocol::{ENVELOPE_BYTES, MIN_FRAME_BYTES};
        if self.max_frame < MIN_FRAME_BYTES {
            return Some(format!(
                "the frame limit (network.max_frame_bytes) is {} bytes: at least {MIN_FRAME_BYTES}",
                self.max_frame
            ));
        }
        let room = self.max_frame - ENVELOPE_BYTES;
        if self.max_response_bytes == 0 || self.max_response_bytes > room {
            return Some(format!(
                "max_response_bytes is {}: between 1 and {room} (the frame limit {} minus \
                 {ENVELOPE_BYTES} bytes of envelope), or a response could exceed a frame",
                self.max_response_bytes, self.max_frame
            ));
        }
        None
    }

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
