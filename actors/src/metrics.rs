//! Counters and latency histograms of a node, shared by all its libraries' actors.
//! Lock-free (atomics); rendered as Prometheus text by the host (see the `lsync` daemon).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds, in seconds, of the latency histograms' buckets.
pub const LATENCY_BUCKETS: [f64; 14] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

/// A fixed-bucket latency histogram.
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_us: AtomicU64,
}

/// A histogram read at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// `(upper bound in seconds, cumulative count)`, the last bound being +∞.
    pub buckets: Vec<(f64, u64)>,
    /// Sum of the observations, in seconds.
    pub sum_seconds: f64,
    /// Number of observations.
    pub count: u64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = LATENCY_BUCKETS.iter().position(|&b| secs <= b).unwrap_or(LATENCY_BUCKETS.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(d.as_micros().min(u64::MAX as u128) as u64, Ordering::Relaxed);
    }

    /// Reads the histogram (cumulative buckets, as Prometheus wants them).
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(self.counts.len());
        for (i, c) in self.counts.iter().enumerate() {
            cumulative += c.load(Ordering::Relaxed);
            buckets.push((LATENCY_BUCKETS.get(i).copied().unwrap_or(f64::INFINITY), cumulative));
        }
        HistogramSnapshot {
            buckets,
            sum_seconds: self.sum_us.load(Ordering::Relaxed) as f64 / 1e6,
            count: cumulative,
        }
    }
}

/// Everything a node counts.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Entries committed by this device as leader.
    pub entries_committed: AtomicU64,
    /// Entries applied by this device as follower.
    pub entries_applied: AtomicU64,
    /// Times a follower found its leader unreachable and backed off.
    pub reconnects: AtomicU64,
    /// Elections this device started.
    pub elections: AtomicU64,
    /// Pre-vote requests this device sent (one per other voter each time it asks whether it
    /// could win). Growing while `elections` does not: the device keeps asking and no
    /// majority would vote for it (e.g. the others hear a leader, or refuse its log).
    pub pre_vote_requests: AtomicU64,
    /// Full reconciliations this device ran.
    pub resyncs: AtomicU64,
    /// Actors and tasks the SyncService restarted after they stopped unexpectedly (a panic),
    /// by kind.
    pub restarts: Restarts,
    /// One-shot tasks that panicked, by kind (see [`crate::task`]).
    pub task_panics: TaskPanics,
    /// FetchEntries answered by this device as leader from its log cache (another follower
    /// had fetched the same block), without reading SQLite.
    pub fetches_served_cached: AtomicU64,
    /// FetchEntries answered by this device as leader from SQLite.
    pub fetches_served_storage: AtomicU64,
    /// FetchEntries this device sent as follower ahead of the response before them, starting
    /// where that response was expected to end (see docs/architecture.md, "Fetch pipeline").
    pub fetches_ahead: AtomicU64,
    /// Of those, the ones dropped because the response before them ended elsewhere (a term
    /// change, a byte-capped response, the end of the leader's log).
    pub fetches_ahead_missed: AtomicU64,
    /// Proposals of this device's outbox refused for good and moved to its `failed` state
    /// (docs/architecture.md, "Outbox").
    pub proposals_failed: AtomicU64,
    /// Writes committed on this device as leader that found its lease expired and waited for
    /// a heartbeat round before being answered (docs/architecture.md, "The leader lease").
    pub lease_waits: AtomicU64,
    /// Of those, the ones whose answer did not say committed: the lease was not confirmed in
    /// time, or this device stopped leading meanwhile.
    pub lease_unconfirmed: AtomicU64,
    /// Round trip of a FetchEntries request, seen by the follower.
    pub fetch_rtt: Histogram,
    /// From the leader's commit (the entry's timestamp) to the follower's apply. Across
    /// devices this includes their clock difference.
    pub commit_to_apply: Histogram,
}

impl Metrics {
    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// What a library's SyncService supervises (docs/architecture.md, "Supervision"): the kinds
/// its restarts are counted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Child {
    /// The election actor (always running).
    Election,
    /// The leader actor, which runs the leader's core (leader role).
    Leader,
    /// A link actor, one per follower (leader role).
    Link,
    /// The follower actor (follower role).
    Follower,
    /// The proposer's task, which delivers the outbox (always running).
    Proposer,
}

impl Child {
    /// Every kind, in the order they are shown.
    pub const ALL: [Child; 5] =
        [Child::Election, Child::Leader, Child::Link, Child::Follower, Child::Proposer];

    /// Its name in metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            Child::Election => "election",
            Child::Leader => "leader",
            Child::Link => "link",
            Child::Follower => "follower",
            Child::Proposer => "proposer",
        }
    }
}

/// Restarts counted by [`Child`] kind.
#[derive(Debug, Default)]
pub struct Restarts([AtomicU64; Child::ALL.len()]);

impl Restarts {
    /// Counts one restart of a `child`.
    pub fn count(&self, child: Child) {
        self.counter(child).fetch_add(1, Ordering::Relaxed);
    }

    /// The restarts of `child` so far.
    pub fn of(&self, child: Child) -> u64 {
        self.counter(child).load(Ordering::Relaxed)
    }

    /// The counter of `child`.
    pub fn counter(&self, child: Child) -> &AtomicU64 {
        &self.0[child as usize]
    }

    /// Every restart so far, whatever its kind.
    pub fn total(&self) -> u64 {
        Child::ALL.iter().map(|c| self.of(*c)).sum()
    }
}

/// The one-shot tasks the actors spawn ([`crate::task::spawn_supervised`]): the kinds their
/// panics are counted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Task {
    /// The election asks for a vote or a pre-vote.
    VoteRequest,
    /// The election sends a leadership transfer's `TimeoutNow`.
    TimeoutNow,
    /// A device asks a member who leads.
    LeaderProbe,
    /// A link sends `NewEntries`.
    Notify,
    /// A link sends the leader's heartbeat.
    Heartbeat,
    /// A link serves a follower's request from storage.
    Serve,
    /// The leader notes the commit of a voter change.
    NoteCommit,
    /// The follower fetches entries.
    Fetch,
    /// The service answers a request (a membership change, addresses, a proposal).
    Answer,
    /// The service tells the network of a member, or stores address hints.
    Network,
    /// A new leader recovers the entries a rebuild stashed.
    StashRecovery,
}

impl Task {
    /// Every kind, in the order they are shown.
    pub const ALL: [Task; 11] = [
        Task::VoteRequest,
        Task::TimeoutNow,
        Task::LeaderProbe,
        Task::Notify,
        Task::Heartbeat,
        Task::Serve,
        Task::NoteCommit,
        Task::Fetch,
        Task::Answer,
        Task::Network,
        Task::StashRecovery,
    ];

    /// Its name in metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            Task::VoteRequest => "vote_request",
            Task::TimeoutNow => "timeout_now",
            Task::LeaderProbe => "leader_probe",
            Task::Notify => "notify",
            Task::Heartbeat => "heartbeat",
            Task::Serve => "serve",
            Task::NoteCommit => "note_commit",
            Task::Fetch => "fetch",
            Task::Answer => "answer",
            Task::Network => "network",
            Task::StashRecovery => "stash_recovery",
        }
    }
}

/// Panics of one-shot tasks counted by [`Task`] kind.
#[derive(Debug, Default)]
pub struct TaskPanics([AtomicU64; Task::ALL.len()]);

impl TaskPanics {
    /// Counts one panic of a task of `kind`.
    pub fn count(&self, kind: Task) {
        self.0[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// The panics of tasks of `kind` so far.
    pub fn of(&self, kind: Task) -> u64 {
        self.0[kind as usize].load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_are_counted_by_kind() {
        let r = Restarts::default();
        r.count(Child::Proposer);
        r.count(Child::Link);
        r.count(Child::Link);
        assert_eq!(Child::ALL.map(|c| r.of(c)), [0, 0, 2, 0, 1]);
        assert_eq!(r.total(), 3);
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(50));
        h.observe(Duration::from_micros(700));
        h.observe(Duration::from_secs(10));
        let s = h.snapshot();
        assert_eq!(s.count, 3);
        assert_eq!(s.buckets[0], (0.0001, 1));
        assert_eq!(s.buckets[3], (0.001, 2));
        assert_eq!(s.buckets.last().unwrap().1, 3);
        assert!(s.buckets.last().unwrap().0.is_infinite());
        assert!((s.sum_seconds - 10.00075).abs() < 1e-9);
    }
}
