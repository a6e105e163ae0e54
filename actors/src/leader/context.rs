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
use libp2p::PeerId;
use lsync_protocol::entry_bytes;
use lsync_protocol::Configuration;
use lsync_storage::{Database, TransactionManager};
use tokio::sync::broadcast;
use uuid::Uuid;

use super::core::ConfigWritten;
use super::link::LinkConfig;
use super::messages::{FollowerProgress, NewCommit};
use crate::events::SyncEvent;
use crate::limits::DEFAULT_LOG_CACHE_BYTES;
use crate::log_cache::LogCache;
use crate::messages::{ElectionInput, LeaseAnswer, LinkLeft};
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
    /// The network's frame limit: an entry too large to travel alone in a frame of it is
    /// refused with an error answer instead of breaking the stream (see
    /// [`super::serve::frame_refusal`]).
    pub max_frame: usize,
    /// The longest a commit waits for its announcement while the follower has not answered
    /// the previous one (see [`crate::window`]).
    pub notify_window: Duration,
    /// Where terms seen in followers' messages go (the library's election).
    pub election: Option<Recipient<ElectionInput>>,
    /// Where the followers' answers to heartbeat rounds go, with the rounds' stamps (the
    /// library's election, for the leader lease).
    pub lease: Option<Recipient<LeaseAnswer>>,
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

impl LeaderShared {
    /// Performs the core's `Publish` command: the last sequence only grows, the term's start
    /// is set once known, the commit sequence is the core's. The leader actor (and the
    /// simulator's device) publish with it.
    pub fn publish(&self, commit_sequence: u64, term_start: Option<u64>, last: u64) {
        self.last_sequence.fetch_max(last, Ordering::AcqRel);
        if let Some(start) = term_start {
            self.term_start.store(start, Ordering::Release);
        }
        self.commit_sequence.store(commit_sequence, Ordering::Release);
    }
}

/// Performs the core's `WriteConfig` command: commits `configuration` through `tm` and reads
/// the configuration in effect back from `db` (a blocking call), as the core takes it.
pub fn write_config(
    tm: &TransactionManager,
    db: &Database,
    configuration: &Configuration,
) -> Result<ConfigWritten, String> {
    let written = || {
        let entry = tm.commit_config(configuration)?;
        Ok(ConfigWritten { sequence: entry.sequence, membership: db.membership()? })
    };
    written().map_err(|e: lsync_storage::StorageError| e.to_string())
}

impl LinkContext {
    /// The configuration of the link to `device` (reachable as `peer`) in this context.
    pub fn link_config(&self, device: Uuid, peer: PeerId) -> LinkConfig {
        LinkConfig {
            library_id: self.library_id,
            device,
            peer,
            term: self.term,
            leader_device: self.leader_device,
            max_entries_per_response: self.max_entries_per_response,
            max_response_bytes: self.max_response_bytes,
            notify_window: self.notify_window,
        }
    }

    /// A link's part of a new commit for the log cache: it notes the commit's last sequence,
    /// up to `cap` (a leaving member's removal; `None`: no cap), so that a fetch served from the
    /// cache knows whether the leader has more.
    pub fn note_commit(&self, commit: &NewCommit, cap: Option<u64>) {
        let cap = cap.unwrap_or(u64::MAX);
        if commit.range.from_sequence <= cap {
            self.cache.note_last(commit.range.to_sequence.min(cap));
        }
    }
}

/// A leader's log cache for responses of at most `max_entries_per_response` entries: blocks of
/// that many entries, at most [`DEFAULT_LOG_CACHE_BYTES`] of them, counted like a response.
pub fn new_log_cache(max_entries_per_response: u64) -> Arc<LogCache> {
    Arc::new(LogCache::new(max_entries_per_response, DEFAULT_LOG_CACHE_BYTES, entry_bytes))
}
