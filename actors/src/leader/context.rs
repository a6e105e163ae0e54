//! What the leader's actors share, for one leadership: the context every [`LinkActor`] (and
//! [`super::serve`]) works in, the leadership the [`LeaderActor`] publishes to them
//! ([`LeaderShared`]), and the log cache they serve fetches from ([`new_log_cache`]).
//!
//! Its own module so that serving (plain reads) and the link actor, which performs those reads,
//! both depend on it and not on each other (docs/architecture.md, "Layering").
//!
//! [`LinkActor`]: super::link_actor::LinkActor
//! [`LeaderActor`]: super::actor::LeaderActor

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use lsync_protocol::entry_bytes;
use lsync_storage::Database;
use tokio::sync::broadcast;
use uuid::Uuid;

use super::messages::FollowerProgress;
use crate::events::SyncEvent;
use crate::limits::DEFAULT_LOG_CACHE_BYTES;
use crate::log_cache::LogCache;
use crate::messages::{ElectionInput, LinkLeft};
use crate::metrics::Metrics;
use crate::transport::Transport;

/// What a link actor needs to know about its library.
#[derive(Clone)]
pub struct LinkContext {
    pub library_id: Uuid,
    pub db: Database,
    pub transport: Arc<dyn Transport>,
    pub events: broadcast::Sender<SyncEvent>,
    pub term: u64,
    pub max_entries_per_response: u64,
    /// Payload bytes one response may carry (entry count aside).
    pub max_response_bytes: usize,
    /// The longest a commit waits for its announcement while the follower has not answered
    /// the previous one (see [`crate::window`]).
    pub notify_window: Duration,
    /// Where terms seen in followers' messages go (the library's election).
    pub election: Option<Recipient<ElectionInput>>,
    /// The blocks of the log the link actors of this term serve fetches from (one per term,
    /// shared by every link actor of the library; see [`new_log_cache`]).
    pub cache: Arc<LogCache>,
    /// Where fetches served are counted.
    pub metrics: Arc<Metrics>,
    /// This device (the leader), named in refusals.
    pub leader_device: Option<Uuid>,
    /// The leadership's commit sequence, sent on every leader message.
    pub leader: Arc<LeaderShared>,
    /// Where the follower's reported positions go (the leader's core, which counts them).
    pub progress: Option<Recipient<FollowerProgress>>,
    /// Where a link actor whose member was removed reports that it is done (the SyncService then
    /// refuses the peer).
    pub left: Option<Recipient<LinkLeft>>,
}

/// The leadership as the [`LeaderActor`] publishes it (it alone writes it, from its core's
/// `Publish` command); the link actors read it lock-free — every leader message carries the
/// commit sequence — and so does status.
///
/// [`LeaderActor`]: super::actor::LeaderActor
#[derive(Debug, Default)]
pub struct LeaderShared {
    /// The commit sequence (0 until the term's first entry commits).
    pub commit_sequence: AtomicU64,
    /// The sequence of the leader's first entry of its term (0 until written).
    pub term_start: AtomicU64,
    /// The leader's last sequence as the core last heard it (a follower cannot hold more).
    pub last_sequence: AtomicU64,
}

impl LeaderShared {
    /// The commit sequence now.
    pub fn commit_sequence(&self) -> u64 {
        self.commit_sequence.load(Ordering::Acquire)
    }

    /// The leader's last sequence as the core last heard it.
    pub fn last_sequence(&self) -> u64 {
        self.last_sequence.load(Ordering::Acquire)
    }
}

/// A leader's log cache for responses of at most `max_entries_per_response` entries: blocks of
/// that many entries, at most [`DEFAULT_LOG_CACHE_BYTES`] of them, counted like a response.
pub fn new_log_cache(max_entries_per_response: u64) -> Arc<LogCache> {
    Arc::new(LogCache::new(max_entries_per_response, DEFAULT_LOG_CACHE_BYTES, entry_bytes))
}
