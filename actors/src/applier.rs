//! FollowerApplier — on a follower, one per library.
//!
//! Receives: the leader's NewEntries and Heartbeat requests (routed by the SyncService).
//! Emits: FetchEntries, Acknowledge and Heartbeat requests to the leader; EntriesApplied,
//! LeaderUnreachable, Resync*, BulkJobQueued and ApplyFailed events.
//!
//! The actor answers requests at once and wakes its worker, a task that owns the replication
//! loop: fetch from the persisted position, keep fetching while a batch is applied (network and
//! SQLite overlap), one fetch ahead of the response in flight on a checked guess of where it
//! ends, apply the responses that arrived in ONE transaction through the storage `Applier`,
//! acknowledge, repeat while `has_more`. On a network failure it retries
//! with exponential backoff and jitter, always resuming from the persisted sequence, so nothing
//! is applied twice or skipped. On a gap it re-fetches; on SyncRequired (or a divergence found
//! while applying) it rebuilds the library from the leader's log, reporting progress.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use actix::prelude::*;
use libp2p::PeerId;
use lsync_protocol::{ErrorCode, SyncLogEntry, SyncMessage, SyncRole};
use lsync_storage::{Applier, Database, LogPosition, StorageError};
use tokio::sync::{broadcast, Notify};
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::backoff::Backoff;
use crate::blocking::run_blocking;
use crate::config::SyncConfig;
use crate::events::{ApplierStatus, FollowerState, Progress, SyncEvent};
use crate::network::InboundRequest;
use crate::transport::{BoxFuture, NetworkError, Transport};

/// Everything the follower's worker needs.
#[derive(Clone)]
pub struct ApplierContext {
    pub library_id: Uuid,
    pub db: Database,
    pub transport: Arc<dyn Transport>,
    pub events: broadcast::Sender<SyncEvent>,
    pub config: SyncConfig,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The leader's peer id.
    pub leader: PeerId,
    /// The leader's device id (named in NotLeader replies).
    pub leader_device: Option<Uuid>,
    /// Where newer terms heard from the leader go (the library's election).
    pub election: Option<Recipient<crate::watcher::ElectionInput>>,
    /// Re-proposes the changes a repair recovered.
    pub proposer: Option<crate::proposer::Proposer>,
    /// Where a `NotLeader` hint goes (the SyncService re-points the follower).
    pub repoint: Option<Recipient<crate::watcher::LeaderHint>>,
    /// The term this follower knows.
    pub term: u64,
    /// Where configurations this follower applies (or learns it was removed) go: the
    /// SyncService.
    pub membership: Option<Recipient<FollowerMembership>>,
    /// The leader's commit sequence as last heard (read by status; raised by every leader
    /// message).
    pub leader_commit: Arc<AtomicU64>,
    /// When the leader's commit sequence reaches this, the SyncService is told (it forgets
    /// the previous voters once a voter change is committed); `u64::MAX`: never.
    pub commit_watch: Arc<AtomicU64>,
}

/// What the follower learned about the library's membership.
#[derive(Message, Debug, Clone, PartialEq, Eq)]
#[rtype(result = "()")]
pub enum FollowerMembership {
    /// A configuration entry it applied (or a rebuild that settled) is now in effect.
    Applied(lsync_storage::Membership),
    /// The leader's commit sequence reached the watched sequence.
    Committed(u64),
    /// The leader refused this device as removed from the library.
    Removed(String),
}

/// Reads the applier's status.
#[derive(Message)]
#[rtype(result = "ApplierStatus")]
pub struct GetApplierStatus;

struct Shared {
    wake: Notify,
    /// The follower's applied position, for immediate replies.
    applied: Mutex<LogPosition>,
    leader_last: AtomicU64,
    term: AtomicU64,
    status: Mutex<ApplierStatus>,
    ack_in_flight: AtomicBool,
    /// `applied` is the log's real position (read once from the database; from then on only
    /// this worker's applies and resets change the follower's log).
    position_known: AtomicBool,
    /// The worker is in a replication round (pushed entries would wait for its end).
    in_round: AtomicBool,
    /// A rebuild may have left the configuration or the rebuild mark to settle.
    settle_pending: AtomicBool,
    /// Entries the leader pushed inside `NewEntries`, waiting for the worker.
    pushed: Mutex<Option<Pushed>>,
}

/// Entries pushed inside a `NewEntries` that continue this follower's log: the worker applies
/// them without fetching, then answers the request with the new position.
struct Pushed {
    /// The position the entries continue: `(from_sequence - 1, prev_term)`.
    after: LogPosition,
    /// The leader's term in the request.
    term: u64,
    entries: Vec<SyncLogEntry>,
    reply: tokio::sync::oneshot::Sender<SyncMessage>,
}

/// The follower side of one library.
pub struct FollowerApplier {
    cx: ApplierContext,
    shared: Arc<Shared>,
    worker: Option<tokio::task::JoinHandle<()>>,
}

impl FollowerApplier {
    /// An applier following `cx.leader`.
    pub fn new(cx: ApplierContext) -> Self {
        let shared = Arc::new(Shared {
            wake: Notify::new(),
            applied: Mutex::new(LogPosition::default()),
            leader_last: AtomicU64::new(0),
            term: AtomicU64::new(cx.term),
            status: Mutex::new(ApplierStatus {
                state: FollowerState::Fetching,
                leader_last_sequence: 0,
                progress: None,
                reconnect_attempts: 0,
                last_error: None,
            }),
            ack_in_flight: AtomicBool::new(false),
            position_known: AtomicBool::new(false),
            in_round: AtomicBool::new(false),
            settle_pending: AtomicBool::new(true),
            pushed: Mutex::new(None),
        });
        Self { cx, shared, worker: None }
    }
}

impl Actor for FollowerApplier {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(crate::service::MAILBOX_CAPACITY);
        let worker = Worker { cx: self.cx.clone(), shared: self.shared.clone() };
        self.worker = Some(actix_rt::spawn(worker.run()));
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        if let Some(w) = self.worker.take() {
            w.abort();
        }
    }
}

/// Test only: makes the applier panic inside a handler.
#[cfg(test)]
#[derive(Message)]
#[rtype(result = "()")]
pub struct InjectPanic;

#[cfg(test)]
impl Handler<InjectPanic> for FollowerApplier {
    type Result = ();
    fn handle(&mut self, _: InjectPanic, _: &mut Context<Self>) {
        panic!("injected panic");
    }
}

impl Handler<GetApplierStatus> for FollowerApplier {
    type Result = MessageResult<GetApplierStatus>;
    fn handle(&mut self, _: GetApplierStatus, _: &mut Context<Self>) -> Self::Result {
        let mut s = self.shared.status.lock().expect("status lock").clone();
        s.leader_last_sequence = self.shared.leader_last.load(Ordering::Relaxed);
        MessageResult(s)
    }
}

impl Handler<InboundRequest> for FollowerApplier {
    type Result = ();
    fn handle(&mut self, req: InboundRequest, _: &mut Context<Self>) {
        let library_id = self.cx.library_id;
        let term = self.shared.term.load(Ordering::Relaxed);
        let applied = *self.shared.applied.lock().expect("applied lock");
        let reply = match req.message {
            SyncMessage::NewEntries { term: their, .. }
            | SyncMessage::Heartbeat { term: their, .. }
                if crate::fencing::fence(their, term) == crate::fencing::Fence::Stale =>
            {
                crate::fencing::stale_term(
                    library_id,
                    req.message.kind(),
                    their,
                    term,
                    self.cx.leader_device,
                )
            }
            _ if req.peer != self.cx.leader => SyncMessage::Error {
                leader_peer: self.cx.leader_device.map(|_| self.cx.leader.to_string()),
                term: 0,
                library_id,
                code: ErrorCode::NotLeader,
                message: "this device follows another leader".into(),
                leader_hint: self.cx.leader_device,
            },
            SyncMessage::NewEntries {
                term: their,
                from_sequence,
                to_sequence,
                prev_term,
                entries,
                commit_sequence,
                ..
            } => {
                self.shared.leader_last.fetch_max(to_sequence, Ordering::Relaxed);
                note_leader_commit(&self.cx, commit_sequence);
                let after =
                    LogPosition { term: prev_term, sequence: from_sequence.wrapping_sub(1) };
                let count = entries.len() as u64;
                let usable = count > 0
                    && count <= self.cx.config.max_entries_per_response
                    && entries.first().map(|e| e.sequence) == Some(from_sequence)
                    && to_sequence.checked_sub(from_sequence).map(|d| d + 1) == Some(count)
                    && after == applied
                    && self.shared.position_known.load(Ordering::Acquire)
                    && !self.shared.in_round.load(Ordering::Acquire);
                self.shared.wake.notify_one();
                if usable {
                    // Answered by the worker once applied (with the new position).
                    let pushed = Pushed { after, term: their, entries, reply: req.reply };
                    let older = self.shared.pushed.lock().expect("pushed lock").replace(pushed);
                    if let Some(older) = older {
                        let _ = older.reply.send(position_ack(library_id, term, applied));
                    }
                    return;
                }
                position_ack(library_id, term.max(their), applied)
            }
            SyncMessage::Heartbeat { current_sequence, commit_sequence, .. } => {
                self.shared.leader_last.fetch_max(current_sequence, Ordering::Relaxed);
                note_leader_commit(&self.cx, commit_sequence);
                if current_sequence != applied.sequence {
                    self.shared.wake.notify_one();
                }
                SyncMessage::Heartbeat {
                    commit_sequence: 0,
                    features: lsync_protocol::FEATURE_VERSION,
                    library_id,
                    term,
                    current_sequence: applied.sequence,
                    last_term: applied.term,
                    role: SyncRole::Follower,
                }
            }
            SyncMessage::FetchEntries { .. } | SyncMessage::Acknowledge { .. } => {
                SyncMessage::Error {
                    leader_peer: self.cx.leader_device.map(|_| self.cx.leader.to_string()),
                    term: 0,
                    library_id,
                    code: ErrorCode::NotLeader,
                    message: "this device is a follower of the library".into(),
                    leader_hint: self.cx.leader_device,
                }
            }
            other => SyncMessage::error(
                library_id,
                ErrorCode::BadRequest,
                format!("{} is a response, not a request", other.kind()),
            ),
        };
        let _ = req.reply.send(reply);
    }
}

/// Why a replication round stopped.
#[derive(Debug)]
enum RoundError {
    /// The leader could not be reached or refused for a reason that may pass.
    Unreachable(String),
    /// The leader says this follower must rebuild the library.
    SyncRequired { reason: String, target: u64 },
    /// Applying stopped on something a retry cannot fix by itself.
    Fatal(String),
    /// An entry needs a newer version of lsync: nothing after it applies until this device is
    /// upgraded.
    UpgradeNeeded(String),
    /// The leader refused a request of an older term and taught this follower its term: ask
    /// again at once, in that term.
    TermLearned(u64),
}

impl From<NetworkError> for RoundError {
    fn from(e: NetworkError) -> Self {
        Self::Unreachable(e.to_string())
    }
}

struct Worker {
    cx: ApplierContext,
    shared: Arc<Shared>,
}

impl Worker {
    fn set_state(&self, state: FollowerState, error: Option<String>) {
        let mut s = self.shared.status.lock().expect("status lock");
        s.state = state;
        s.last_error = error;
        if state == FollowerState::CaughtUp {
            s.progress = None;
            s.reconnect_attempts = 0;
        }
    }

    async fn run(self) {
        let mut backoff = Backoff::new(self.cx.config.backoff_initial, self.cx.config.backoff_max);
        let mut rng = rand::rngs::StdRng::from_entropy();
        let heartbeat = self.cx.config.heartbeat_interval;
        let mut next_heartbeat = tokio::time::Instant::now() + heartbeat;
        // A follower that starts syncs at once.
        let mut run_now = true;
        loop {
            if !run_now {
                tokio::select! {
                    _ = self.shared.wake.notified() => {}
                    _ = tokio::time::sleep_until(next_heartbeat) => {
                        next_heartbeat = tokio::time::Instant::now() + heartbeat;
                        match self.heartbeat().await {
                            Ok(false) => continue,
                            Ok(true) => {}
                            Err(e) => {
                                self.on_error(e, &mut backoff, &mut rng).await;
                                run_now = true;
                                continue;
                            }
                        }
                    }
                }
            }
            run_now = false;
            if self.apply_pushed().await {
                self.set_state(FollowerState::CaughtUp, None);
                continue;
            }
            self.shared.in_round.store(true, Ordering::Release);
            match self.round().await {
                Ok(()) => {
                    backoff.reset();
                    self.settle_membership().await;
                    self.recover_orphans().await;
                    self.set_state(FollowerState::CaughtUp, None);
                }
                Err(e) => {
                    run_now = self.on_error(e, &mut backoff, &mut rng).await;
                }
            }
            self.shared.in_round.store(false, Ordering::Release);
        }
    }

    /// Handles a failed round; returns whether to retry at once.
    async fn on_error(
        &self,
        e: RoundError,
        backoff: &mut Backoff,
        rng: &mut rand::rngs::StdRng,
    ) -> bool {
        match e {
            RoundError::Unreachable(error) => {
                let delay = backoff.next_delay(rng);
                warn!(library_id = %self.cx.library_id, %error, retry_in_ms = delay.as_millis() as u64, "leader unreachable");
                {
                    let mut s = self.shared.status.lock().expect("status lock");
                    s.reconnect_attempts += 1;
                }
                crate::metrics::Metrics::add(&self.cx.metrics.reconnects, 1);
                self.set_state(FollowerState::Reconnecting, Some(error.clone()));
                let _ = self.cx.events.send(SyncEvent::LeaderUnreachable {
                    library_id: self.cx.library_id,
                    error,
                    retry_in_ms: delay.as_millis() as u64,
                });
                tokio::time::sleep(delay).await;
                true
            }
            RoundError::SyncRequired { reason, target } => {
                match self.reconcile(reason, target).await {
                    Ok(()) => {
                        backoff.reset();
                        self.shared.settle_pending.store(true, Ordering::Release);
                        self.settle_membership().await;
                        self.recover_orphans().await;
                        self.set_state(FollowerState::CaughtUp, None);
                        false
                    }
                    Err(RoundError::SyncRequired { .. }) => true,
                    Err(e) => Box::pin(self.on_error(e, backoff, rng)).await,
                }
            }
            RoundError::TermLearned(term) => {
                debug!(library_id = %self.cx.library_id, term, "learned the leader's term");
                true
            }
            RoundError::UpgradeNeeded(error) => {
                warn!(library_id = %self.cx.library_id, %error, "upgrade needed: this device \
                    cannot apply the library's entries any more");
                self.set_state(FollowerState::UpgradeNeeded, Some(error.clone()));
                let _ = self
                    .cx
                    .events
                    .send(SyncEvent::ApplyFailed { library_id: self.cx.library_id, error });
                // Nothing will change until the binary does; check rarely.
                tokio::time::sleep(self.cx.config.backoff_max).await;
                true
            }
            RoundError::Fatal(error) => {
                let delay = backoff.next_delay(rng);
                warn!(library_id = %self.cx.library_id, %error, "applier stalled");
                self.set_state(FollowerState::Stalled, Some(error.clone()));
                let _ = self
                    .cx
                    .events
                    .send(SyncEvent::ApplyFailed { library_id: self.cx.library_id, error });
                // Retry later (e.g. once the host registered the missing model type).
                tokio::time::sleep(delay.max(self.cx.config.backoff_max)).await;
                true
            }
        }
    }

    fn position(&self) -> LogPosition {
        *self.shared.applied.lock().expect("applied lock")
    }

    /// Applies entries the leader pushed inside `NewEntries` if they still continue this log,
    /// and answers that request with the position reached. Returns whether the follower is
    /// then caught up with what the leader announced (no round needed).
    async fn apply_pushed(&self) -> bool {
        let Some(pushed) = self.shared.pushed.lock().expect("pushed lock").take() else {
            return false;
        };
        let library_id = self.cx.library_id;
        let ack = |pos: LogPosition, term: u64| position_ack(library_id, term, pos);
        let pos = self.position();
        if pos != pushed.after {
            // A round got there first (or the log changed): nothing to do with them.
            let _ = pushed.reply.send(ack(pos, self.shared.term.load(Ordering::Relaxed)));
            return pos.sequence >= self.shared.leader_last.load(Ordering::Relaxed);
        }
        if pushed.term > self.shared.term.load(Ordering::Relaxed) {
            let _ = self.adopt_term(pushed.term).await;
        }
        let applied = self.apply(pushed.entries).await.is_ok();
        let pos = self.position();
        let _ = pushed.reply.send(ack(pos, self.shared.term.load(Ordering::Relaxed)));
        // Any failure (a gap, a divergence, a model this device lacks) is the round's to
        // handle, from the persisted position.
        applied && pos.sequence >= self.shared.leader_last.load(Ordering::Relaxed)
    }

    /// The applied position: from memory once it was read from the database (only this
    /// worker changes the follower's log), which saves a blocking-pool hop per round.
    async fn current_position(&self) -> Result<LogPosition, RoundError> {
        if self.shared.position_known.load(Ordering::Acquire) {
            Ok(self.position())
        } else {
            self.load_position().await
        }
    }

    async fn load_position(&self) -> Result<LogPosition, RoundError> {
        let db = self.cx.db.clone();
        let pos = run_blocking(move || db.last_position())
            .await
            .map_err(|e| RoundError::Fatal(format!("cannot read the sync log: {e}")))?;
        *self.shared.applied.lock().expect("applied lock") = pos;
        self.shared.position_known.store(true, Ordering::Release);
        Ok(pos)
    }

    /// Heartbeats the leader; returns whether a round should run.
    async fn heartbeat(&self) -> Result<bool, RoundError> {
        let pos = self.current_position().await?;
        let msg = SyncMessage::Heartbeat {
            commit_sequence: 0,
            features: lsync_protocol::FEATURE_VERSION,
            library_id: self.cx.library_id,
            term: self.shared.term.load(Ordering::Relaxed),
            current_sequence: pos.sequence,
            last_term: pos.term,
            role: SyncRole::Follower,
        };
        match self.cx.transport.request(self.cx.leader, msg).await? {
            SyncMessage::Heartbeat { current_sequence, term, commit_sequence, .. } => {
                if term > self.shared.term.load(Ordering::Relaxed) {
                    self.adopt_term(term).await?;
                }
                note_leader_commit(&self.cx, commit_sequence);
                self.shared.term.fetch_max(term, Ordering::Relaxed);
                self.shared.leader_last.fetch_max(current_sequence, Ordering::Relaxed);
                Ok(current_sequence > pos.sequence)
            }
            SyncMessage::SyncRequired { reason, leader_last_sequence, .. } => {
                Err(RoundError::SyncRequired { reason, target: leader_last_sequence })
            }
            other => Err(self.refusal(other)),
        }
    }

    fn fetch(&self, since: LogPosition) -> BoxFuture<Result<SyncMessage, NetworkError>> {
        let metrics = self.cx.metrics.clone();
        let started = Instant::now();
        let fut = self.cx.transport.request(
            self.cx.leader,
            SyncMessage::FetchEntries {
                library_id: self.cx.library_id,
                term: self.shared.term.load(Ordering::Relaxed),
                since_sequence: since.sequence,
                since_term: since.term,
                limit: self.cx.config.max_entries_per_response,
            },
        );
        Box::pin(async move {
            let res = fut.await;
            metrics.fetch_rtt.observe(started.elapsed());
            res
        })
    }

    /// Fetches and applies until the leader has nothing more.
    async fn round(&self) -> Result<(), RoundError> {
        self.round_with_progress(None).await
    }

    /// The pipeline: the next fetch leaves as soon as a response arrives (even while a batch
    /// applies), and the responses that arrived meanwhile are applied together, in one
    /// transaction, as long as they total at most `max_response_bytes` (always at least one).
    /// One fetch goes ahead of the response before it, on a guess of where that response ends
    /// ([`Self::next_guess`]), checked before its answer is used. Memory: the batch applying,
    /// plus at most [`PIPELINE`] responses received or in flight (and, for a moment, the answer
    /// to a dropped guess that the network task is still reading: it is discarded unread).
    ///
    /// A response that does not continue what was asked for, or a batch that meets a gap,
    /// drops the pipeline and starts again from the applied position, at most
    /// [`MAX_RESTARTS`] times per round (a leader that keeps answering out of order is then
    /// treated as unreachable, and retried after the usual backoff). The round ends with a
    /// final progress report (`done`), even when it applied nothing.
    async fn round_with_progress(
        &self,
        mut progress: Option<(Instant, u64)>,
    ) -> Result<(), RoundError> {
        for _ in 0..=MAX_RESTARTS {
            match self.pipeline(&mut progress).await? {
                Pass::Done { applied, target } => {
                    self.report_progress(&mut progress, applied, target, true);
                    self.acknowledge();
                    return Ok(());
                }
                Pass::Restart => continue,
            }
        }
        Err(RoundError::Unreachable(format!(
            "the leader's responses did not continue the log {} times in a row",
            MAX_RESTARTS + 1
        )))
    }

    /// One pass of the pipeline from the applied position (see [`Self::round_with_progress`]).
    async fn pipeline(&self, progress: &mut Option<(Instant, u64)>) -> Result<Pass, RoundError> {
        let start_pos = self.current_position().await?;
        if progress.is_none() {
            self.set_state(FollowerState::Fetching, None);
        }
        // Fetches in flight, oldest first, each with the position it fetches after. The first
        // always starts at `tip`; the one after it (if any) is a guess (see `next_guess`).
        let mut fetching: VecDeque<(LogPosition, BoxFuture<Result<SyncMessage, NetworkError>>)> =
            VecDeque::with_capacity(FETCHES_IN_FLIGHT);
        // Received and checked, not applied yet.
        let mut ready: VecDeque<Vec<SyncLogEntry>> = VecDeque::with_capacity(PIPELINE);
        // The last entry received (or the applied position), and whether the leader said it
        // has more after it.
        let (mut tip, mut more) = (start_pos, true);
        // Guesses that missed in this pass: after MAX_MISSED_GUESSES, no more (a leader whose
        // blocks are not this follower's `max_entries_per_response` would make every guess
        // miss, each an extra request).
        let mut missed = 0;
        let mut applying: Option<(u64, Applying<'_>)> = None;
        let (mut since_ack, mut applied_total, mut leader_last) = (0u64, 0u64, 0u64);
        loop {
            if applying.is_none() && !ready.is_empty() {
                let batch = self.take_batch(&mut ready);
                let count = batch.len() as u64;
                applying = Some((count, Box::pin(self.apply(batch))));
            }
            // Keep fetches going while the responses held stay within PIPELINE.
            while fetching.len() < FETCHES_IN_FLIGHT && ready.len() + fetching.len() < PIPELINE {
                let next = match fetching.back() {
                    None if more => tip,
                    None => break,
                    Some(_) if missed >= MAX_MISSED_GUESSES => break,
                    Some((since, _)) => {
                        // Every response's `leader_last_sequence` went into it (fetch_max).
                        let known = self.shared.leader_last.load(Ordering::Relaxed);
                        match self.next_guess(*since, known) {
                            Some(guess) => {
                                crate::metrics::Metrics::add(&self.cx.metrics.fetches_ahead, 1);
                                guess
                            }
                            None => break,
                        }
                    }
                };
                fetching.push_back((next, self.fetch(next)));
            }
            let event = match (fetching.front_mut(), &mut applying) {
                (Some((_, f)), Some((_, a))) => tokio::select! {
                    biased;
                    r = a => Step::Applied(r),
                    r = f => Step::Fetched(r),
                },
                (Some((_, f)), None) => Step::Fetched(f.await),
                (None, Some((_, a))) => Step::Applied(a.await),
                (None, None) => break,
            };
            match event {
                Step::Fetched(response) => {
                    let since = fetching.pop_front().expect("a fetch was in flight").0;
                    let response = match response {
                        Ok(response) => response,
                        Err(e) => {
                            // The next round starts from the applied position: let the batch
                            // in progress land first.
                            Self::settle(applying.take()).await?;
                            return Err(e.into());
                        }
                    };
                    let (term, entries, has_more, last) = match response {
                        SyncMessage::EntriesResponse {
                            term,
                            entries,
                            has_more,
                            leader_last_sequence,
                            commit_sequence,
                            ..
                        } => {
                            note_leader_commit(&self.cx, commit_sequence);
                            (term, entries, has_more, leader_last_sequence)
                        }
                        SyncMessage::SyncRequired { reason, leader_last_sequence, .. } => {
                            Self::settle(applying.take()).await?;
                            return Err(RoundError::SyncRequired {
                                reason,
                                target: leader_last_sequence,
                            });
                        }
                        other => {
                            Self::settle(applying.take()).await?;
                            return Err(self.refusal(other));
                        }
                    };
                    if term > self.shared.term.load(Ordering::Relaxed) {
                        self.adopt_term(term).await?;
                    }
                    self.shared.leader_last.fetch_max(last, Ordering::Relaxed);
                    leader_last = leader_last.max(last);
                    if entries.first().is_some_and(|first| first.sequence != since.sequence + 1) {
                        // Not a continuation of what we asked for: drop the pipeline and
                        // re-fetch from the applied position.
                        debug!(expected = since.sequence + 1, "gap in response, re-fetching");
                        Self::settle(applying.take()).await?;
                        return Ok(Pass::Restart);
                    }
                    if let Some(last) = entries.last() {
                        tip = LogPosition::of(last);
                        ready.push_back(entries);
                    }
                    more = has_more && tip.sequence > since.sequence;
                    // A guess that missed (the response ended elsewhere, or the entry it ends
                    // with has another term) is dropped, unanswered: the fetch from `tip`
                    // replaces it.
                    if fetching.front().is_some_and(|(next, _)| *next != tip) {
                        missed += 1;
                        let dropped = fetching.len() as u64;
                        crate::metrics::Metrics::add(
                            &self.cx.metrics.fetches_ahead_missed,
                            dropped,
                        );
                        fetching.clear();
                    }
                }
                Step::Applied(result) => {
                    let (count, _) = applying.take().expect("a batch was applying");
                    match result {
                        Ok(()) => {}
                        Err(ApplyError::Gap) => return Ok(Pass::Restart),
                        Err(ApplyError::Other(e)) => return Err(e),
                    }
                    applied_total += count;
                    since_ack += count;
                    if since_ack >= self.cx.config.ack_every {
                        since_ack = 0;
                        self.acknowledge();
                    }
                    let target = leader_last.saturating_sub(start_pos.sequence);
                    self.report_progress(progress, applied_total, target, false);
                }
            }
        }
        let target = leader_last.saturating_sub(start_pos.sequence);
        Ok(Pass::Done { applied: applied_total, target })
    }

    /// Where the response to a fetch after `since` most likely ends, when the leader has
    /// entries past it (`known` is the leader's last sequence as last heard): the leader
    /// answers up to the end of `since + 1`'s block of `max_entries_per_response` entries
    /// (its log cache's blocks, see [`crate::log_cache`]), and the entry there most likely
    /// has the term of the entry at `since` (1, the first leader's term, after position 0).
    /// A guess is only ever sent as a fetch; its response is used only if the response before
    /// it ends exactly there, with that term.
    fn next_guess(&self, since: LogPosition, known: u64) -> Option<LogPosition> {
        let block = self.cx.config.max_entries_per_response.clamp(1, crate::log_cache::MAX_BLOCK);
        let end = (since.sequence / block).checked_add(1)?.checked_mul(block)?;
        (end < known).then_some(LogPosition { sequence: end, term: since.term.max(1) })
    }

    /// The next batch: the oldest ready response, and the ones after it while the batch stays
    /// within `max_response_bytes`.
    fn take_batch(&self, ready: &mut VecDeque<Vec<SyncLogEntry>>) -> Vec<SyncLogEntry> {
        let mut batch = ready.pop_front().unwrap_or_default();
        let mut bytes: usize = batch.iter().map(crate::session::entry_bytes).sum();
        while let Some(next) = ready.front() {
            let more: usize = next.iter().map(crate::session::entry_bytes).sum();
            if bytes + more > self.cx.config.max_response_bytes {
                break;
            }
            bytes += more;
            batch.extend(ready.pop_front().unwrap_or_default());
        }
        batch
    }

    /// Waits for a batch being applied before the round ends or restarts (its result is
    /// kept in the log either way; only a failure other than a gap is reported).
    async fn settle(applying: Option<(u64, Applying<'_>)>) -> Result<(), RoundError> {
        match applying {
            Some((_, batch)) => match batch.await {
                Err(ApplyError::Other(e)) => Err(e),
                _ => Ok(()),
            },
            None => Ok(()),
        }
    }

    fn report_progress(
        &self,
        progress: &mut Option<(Instant, u64)>,
        applied: u64,
        target: u64,
        done: bool,
    ) {
        let (started, reported) = match progress {
            Some((s, r)) => (*s, r),
            None => {
                let mut s = self.shared.status.lock().expect("status lock");
                s.progress = Some(Progress { applied, target, elapsed_ms: 0 });
                return;
            }
        };
        let elapsed_ms = started.elapsed().as_millis() as u64;
        self.shared.status.lock().expect("status lock").progress =
            Some(Progress { applied, target, elapsed_ms });
        if done || applied >= *reported + 1_000 {
            *reported = applied;
            let _ = self.cx.events.send(SyncEvent::ResyncProgress {
                library_id: self.cx.library_id,
                applied,
                target,
            });
        }
    }

    /// The leader answered in a newer term than this follower knew: the election persists it
    /// (and re-points the follower if needed); this worker goes on in that term.
    async fn adopt_term(&self, term: u64) -> Result<(), RoundError> {
        if let (Some(e), Some(from)) = (&self.cx.election, self.cx.leader_device) {
            e.do_send(crate::watcher::ElectionInput::LeaderHeard { from, term });
        }
        self.shared.term.fetch_max(term, Ordering::Relaxed);
        debug!(library_id = %self.cx.library_id, term, "the leader is in a newer term");
        Ok(())
    }

    async fn apply(&self, entries: Vec<SyncLogEntry>) -> Result<(), ApplyError> {
        let committed_ms = entries.last().map_or(0, |e| e.timestamp_ms);
        let applier = Applier::new(self.cx.db.clone());
        let (events, metrics, shared, library_id, membership) = (
            self.cx.events.clone(),
            self.cx.metrics.clone(),
            self.shared.clone(),
            self.cx.library_id,
            self.cx.membership.clone(),
        );
        // The events are sent in the same blocking task as the transaction: a worker aborted
        // while it waits (its role changed, the node stops) cannot separate a committed batch
        // from its EntriesApplied / BulkJobQueued events.
        let outcome = run_blocking(move || {
            let out = applier.apply(&entries)?;
            *shared.applied.lock().expect("applied lock") = out.last;
            if out.applied > 0 {
                crate::metrics::Metrics::add(&metrics.entries_applied, out.applied);
                let now_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as i64);
                let ms = now_ms.saturating_sub(committed_ms).max(0) as u64;
                metrics.commit_to_apply.observe(std::time::Duration::from_millis(ms));
                let _ = events.send(SyncEvent::EntriesApplied {
                    library_id,
                    first: out.last.sequence + 1 - out.applied,
                    last: out.last.sequence,
                    count: out.applied,
                });
            }
            for job in out.bulk_jobs {
                let _ = events.send(SyncEvent::BulkJobQueued { library_id, job });
            }
            if let (Some(m), Some(r)) = (out.membership, &membership) {
                r.do_send(FollowerMembership::Applied(m));
            }
            Ok(())
        })
        .await;
        match outcome {
            Ok(()) => Ok(()),
            Err(StorageError::Gap { expected, got }) => {
                debug!(expected, got, "gap while applying, re-fetching");
                Err(ApplyError::Gap)
            }
            Err(e @ StorageError::UpgradeNeeded { .. }) => {
                Err(ApplyError::Other(RoundError::UpgradeNeeded(e.to_string())))
            }
            Err(StorageError::Diverged { sequence, local_term, remote_term }) => {
                Err(ApplyError::Other(RoundError::SyncRequired {
                    reason: format!(
                        "local entry {sequence} has term {local_term}, the leader's has term {remote_term}"
                    ),
                    target: self.shared.leader_last.load(Ordering::Relaxed),
                }))
            }
            Err(e) => Err(ApplyError::Other(RoundError::Fatal(format!("applying entries failed: {e}")))),
        }
    }

    /// After the first complete round and after every rebuild: the log's latest configuration
    /// becomes the one in effect if it is not already, and the rebuild mark is cleared once the
    /// log passed it (see `lsync_storage::Applier::settle`).
    async fn settle_membership(&self) {
        if !self.shared.settle_pending.swap(false, Ordering::AcqRel) {
            return;
        }
        let applier = Applier::new(self.cx.db.clone());
        match run_blocking(move || applier.settle()).await {
            Ok(Some(m)) => {
                info!(library_id = %self.cx.library_id, sequence = m.sequence,
                    "the rebuilt log's configuration is in effect");
                if let Some(r) = &self.cx.membership {
                    r.do_send(FollowerMembership::Applied(m));
                }
            }
            Ok(None) => {}
            Err(e) => {
                self.shared.settle_pending.store(true, Ordering::Release);
                warn!(library_id = %self.cx.library_id, error = %e, "cannot settle the rebuilt log")
            }
        }
    }

    /// After a complete rebuild: the changes of the stashed entries that the leader's log lacks
    /// go to the outbox, and the proposer re-proposes them.
    async fn recover_orphans(&self) {
        let db = self.cx.db.clone();
        if run_blocking(move || db.stashed_count()).await.unwrap_or(0) == 0 {
            return;
        }
        let applier = Applier::new(self.cx.db.clone());
        match run_blocking(move || applier.recover_orphans()).await {
            Ok(r) => {
                info!(
                    library_id = %self.cx.library_id,
                    proposals = r.proposals,
                    changes = r.changes,
                    dropped = r.dropped,
                    "changes the leader lacked are proposed again"
                );
                if let Some(p) = &self.cx.proposer {
                    p.wake();
                }
            }
            Err(e) => {
                warn!(library_id = %self.cx.library_id, error = %e, "cannot recover orphaned changes")
            }
        }
    }

    /// Tells the leader what is applied; one acknowledgement in flight at most.
    fn acknowledge(&self) {
        if self.shared.ack_in_flight.swap(true, Ordering::AcqRel) {
            return;
        }
        let term = self.shared.term.load(Ordering::Relaxed);
        let fut = self
            .cx
            .transport
            .request(self.cx.leader, position_ack(self.cx.library_id, term, self.position()));
        let shared = self.shared.clone();
        let cx = self.cx.clone();
        actix_rt::spawn(async move {
            match fut.await {
                Ok(SyncMessage::Heartbeat { commit_sequence, .. }) => {
                    note_leader_commit(&cx, commit_sequence)
                }
                Ok(SyncMessage::Error { code: ErrorCode::StaleTerm, term, .. }) if term > 0 => {
                    // The leader is in a newer term: learn it (the next round uses it).
                    shared.term.fetch_max(term, Ordering::Relaxed);
                    if let (Some(e), Some(from)) = (&cx.election, cx.leader_device) {
                        e.do_send(crate::watcher::ElectionInput::LeaderHeard { from, term });
                    }
                }
                Ok(other) => debug!(reply = other.kind(), "acknowledgement answered"),
                Err(e) => debug!(error = %e, "acknowledgement not delivered"),
            }
            shared.ack_in_flight.store(false, Ordering::Release);
        });
    }

    /// Full reconciliation: clear the library and rebuild it from the leader's log.
    async fn reconcile(&self, reason: String, target: u64) -> Result<(), RoundError> {
        warn!(library_id = %self.cx.library_id, %reason, target, "full reconciliation");
        crate::metrics::Metrics::add(&self.cx.metrics.resyncs, 1);
        self.set_state(FollowerState::Reconciling, None);
        let _ = self.cx.events.send(SyncEvent::ResyncStarted {
            library_id: self.cx.library_id,
            reason,
            target,
        });
        // Keep this device's log aside: the entries the leader lacks are re-proposed after the
        // rebuild, so nothing committed here is lost.
        let applier = Applier::new(self.cx.db.clone());
        let stashed = run_blocking(move || applier.reset_for_repair())
            .await
            .map_err(|e| RoundError::Fatal(format!("cannot reset the library: {e}")))?;
        debug!(library_id = %self.cx.library_id, stashed, "local log stashed for repair");
        *self.shared.applied.lock().expect("applied lock") = LogPosition::default();
        self.round_with_progress(Some((Instant::now(), 0))).await?;
        let last = self.position().sequence;
        info!(library_id = %self.cx.library_id, last_sequence = last, "full reconciliation done");
        let _ = self
            .cx
            .events
            .send(SyncEvent::ResyncDone { library_id: self.cx.library_id, last_sequence: last });
        Ok(())
    }
}

enum ApplyError {
    Gap,
    Other(RoundError),
}

/// How one pass of the pipeline ended.
enum Pass {
    /// The leader had nothing more: `applied` entries of the `target` it reported.
    Done { applied: u64, target: u64 },
    /// The responses did not continue the applied log: start again from it.
    Restart,
}

/// What the round waited for.
enum Step {
    Fetched(Result<SyncMessage, NetworkError>),
    Applied(Result<(), ApplyError>),
}

/// A batch being applied.
type Applying<'a> = futures::future::BoxFuture<'a, Result<(), ApplyError>>;

/// Responses a round holds besides the batch it applies: received, or fetch in flight.
const PIPELINE: usize = 3;

/// Fetches a round keeps in flight: the one from the last entry received, and one guess
/// beyond it ([`Worker::next_guess`]).
const FETCHES_IN_FLIGHT: usize = 2;

/// Guesses that may miss in one pass of the pipeline before it stops guessing: a term change
/// costs one miss; a leader whose blocks do not end where this follower's
/// `max_entries_per_response` says would cost one per fetch. A miss also costs the leader a
/// response (and, with several followers, one use of a cached block).
const MAX_MISSED_GUESSES: u32 = 2;

/// Fresh starts a round makes after responses that do not continue the log, before it gives
/// up until the next retry.
const MAX_RESTARTS: usize = 8;

impl Worker {
    /// A refusal from the device this follower took for its leader. `NotLeader` with a hint
    /// re-points the follower to the hinted device.
    fn refusal(&self, msg: SyncMessage) -> RoundError {
        if let SyncMessage::Error { code: ErrorCode::StaleTerm, term, .. } = &msg {
            // The leader is in a newer term than this follower knew (e.g. a device that just
            // joined, or one that missed an election): learn it, and ask again at once.
            if *term > self.shared.term.load(Ordering::Relaxed) {
                self.shared.term.fetch_max(*term, Ordering::Relaxed);
                if let (Some(e), Some(from)) = (&self.cx.election, self.cx.leader_device) {
                    e.do_send(crate::watcher::ElectionInput::LeaderHeard { from, term: *term });
                }
                return RoundError::TermLearned(*term);
            }
        }
        if let SyncMessage::Error { code: ErrorCode::Unauthorized, message, .. } = &msg {
            if message.contains("removed from library") {
                if let Some(m) = &self.cx.membership {
                    m.do_send(FollowerMembership::Removed(message.clone()));
                }
            }
        }
        if let SyncMessage::Error {
            code: ErrorCode::NotLeader,
            leader_hint: Some(hint),
            leader_peer,
            ..
        } = &msg
        {
            if Some(*hint) != self.cx.leader_device {
                if let Some(r) = &self.cx.repoint {
                    info!(library_id = %self.cx.library_id, leader = %hint, "re-pointing to the leader the old one named");
                    r.do_send(crate::watcher::LeaderHint {
                        device: *hint,
                        peer: leader_peer.as_deref().and_then(|p| p.parse().ok()),
                    });
                }
            }
        }
        refusal(msg)
    }
}

/// The follower's position as it reports it: `Acknowledge` of its last entry, with its term
/// and that entry's term (the leader counts it toward its commit sequence only if both are
/// its own term).
fn position_ack(library_id: Uuid, term: u64, position: LogPosition) -> SyncMessage {
    SyncMessage::Acknowledge {
        library_id,
        up_to_sequence: position.sequence,
        term,
        last_term: position.term,
    }
}

/// The leader said its commit sequence is `commit`: raise what this follower knows of it, and
/// tell the SyncService once it reaches the sequence it watches (a voter change committed).
fn note_leader_commit(cx: &ApplierContext, commit: u64) {
    let before = cx.leader_commit.fetch_max(commit, Ordering::AcqRel);
    let watch = cx.commit_watch.load(Ordering::Acquire);
    if before < watch && commit >= watch {
        if let Some(m) = &cx.membership {
            m.do_send(FollowerMembership::Committed(commit));
        }
    }
}

fn refusal(msg: SyncMessage) -> RoundError {
    match msg {
        SyncMessage::Error { code, message, .. } => match code {
            ErrorCode::Unauthorized | ErrorCode::UnknownLibrary => {
                RoundError::Unreachable(format!("leader refused: {code}: {message}"))
            }
            _ => RoundError::Unreachable(format!("leader answered {code}: {message}")),
        },
        other => RoundError::Unreachable(format!("unexpected reply {}", other.kind())),
    }
}

use rand::SeedableRng;

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::session::serve;
    use crate::testkit::{follower_db, leader_db, session_context, wait_for, ScriptedTransport};

    struct Setup {
        _dir: tempfile::TempDir,
        lib: Uuid,
        leader: Database,
        follower: Database,
        events: broadcast::Receiver<SyncEvent>,
        leader_peer: PeerId,
        metrics: Arc<crate::metrics::Metrics>,
    }

    type Script = dyn Fn(usize, &SyncMessage, &Database) -> Option<Result<SyncMessage, NetworkError>>
        + Send
        + Sync
        + 'static;

    /// A follower applier whose transport is `script`, which may serve from the leader's log.
    fn start(
        n: u64,
        script: impl Fn(usize, &SyncMessage, &Database) -> Option<Result<SyncMessage, NetworkError>>
            + Send
            + Sync
            + 'static,
    ) -> (Setup, Arc<ScriptedTransport>, Addr<FollowerApplier>) {
        let config =
            SyncConfig { heartbeat_interval: Duration::from_secs(3600), ..SyncConfig::fast() };
        start_prepared(n, |_, _| {}, config, Box::new(script))
    }

    /// [`start`], with `prepare` run on the leader's database after its first `n` entries,
    /// before the applier starts, and the follower's `config`.
    fn start_prepared(
        n: u64,
        prepare: impl FnOnce(&Database, &lsync_storage::TransactionManager),
        config: SyncConfig,
        script: Box<Script>,
    ) -> (Setup, Arc<ScriptedTransport>, Addr<FollowerApplier>) {
        let dir = tempfile::tempdir().unwrap();
        let lib = Uuid::new_v4();
        let (leader, tm) = leader_db(&dir, lib, n);
        prepare(&leader, &tm);
        let follower = follower_db(&dir, lib, Uuid::new_v4());
        let (etx, events) = broadcast::channel(1024);
        let leader_db = leader.clone();
        let scx = session_context(
            lib,
            leader.clone(),
            ScriptedTransport::new(|_, _| Err(NetworkError::Closed)),
        );
        let transport = ScriptedTransport::new(move |i, msg| match script(i, msg, &leader_db) {
            Some(r) => r,
            None => Ok(serve(&leader_db, &scx, msg.clone()).expect("serve")),
        });
        let leader_peer = PeerId::random();
        let metrics = Arc::new(crate::metrics::Metrics::default());
        let applier = FollowerApplier::new(ApplierContext {
            library_id: lib,
            db: follower.clone(),
            transport: transport.clone(),
            events: etx,
            config,
            metrics: metrics.clone(),
            leader: leader_peer,
            leader_device: None,
            election: None,
            proposer: None,
            repoint: None,
            term: 1,
            membership: None,
            leader_commit: Default::default(),
            commit_watch: Arc::new(AtomicU64::new(u64::MAX)),
        })
        .start();
        (
            Setup { _dir: dir, lib, leader, follower, events, leader_peer, metrics },
            transport,
            applier,
        )
    }

    /// `n` inserts of new tags `{prefix}0`, `{prefix}1`, ….
    fn tag_inserts(prefix: &str, n: usize) -> Vec<lsync_storage::Change> {
        (0..n)
            .map(|i| {
                lsync_storage::Change::insert(&lsync_storage::Tag {
                    id: format!("{prefix}{i}"),
                    name: "x".into(),
                    color: None,
                })
            })
            .collect()
    }

    fn last(db: &Database) -> u64 {
        db.last_position().unwrap().sequence
    }

    fn drain(rx: &mut broadcast::Receiver<SyncEvent>) -> Vec<SyncEvent> {
        std::iter::from_fn(|| rx.try_recv().ok()).collect()
    }

    #[actix_rt::test]
    async fn new_entries_turn_into_fetches_until_has_more_is_false() {
        let (s, transport, applier) = start(0, |_, _, _| None);
        // the applier syncs once at start: nothing there yet
        wait_for("the initial fetch", || !transport.sent("FetchEntries").is_empty()).await;
        let tm = lsync_storage::TransactionManager::new(
            s.leader.clone(),
            s.leader.sync_state().unwrap().device_id,
        );
        tm.commit_batch(tag_inserts("n", 250)).unwrap();
        let note = SyncMessage::NewEntries {
            commit_sequence: 0,
            library_id: s.lib,
            term: 1,
            from_sequence: 1,
            to_sequence: 250,
            entry_count: 250,
            prev_term: 0,
            entries: vec![],
        };
        // from another peer than its leader: refused, nothing fetched
        let fetches_before = transport.sent("FetchEntries").len();
        let (reply, rx) = tokio::sync::oneshot::channel();
        applier
            .send(InboundRequest { peer: PeerId::random(), message: note.clone(), reply })
            .await
            .unwrap();
        assert!(matches!(rx.await.unwrap(), SyncMessage::Error { code: ErrorCode::NotLeader, .. }));
        assert_eq!(transport.sent("FetchEntries").len(), fetches_before);
        // from its leader: answered at once with the follower's position, then fetched
        let (reply, rx) = tokio::sync::oneshot::channel();
        applier.send(InboundRequest { peer: s.leader_peer, message: note, reply }).await.unwrap();
        assert!(matches!(rx.await.unwrap(), SyncMessage::Acknowledge { up_to_sequence: 0, .. }));
        wait_for("all 250 entries applied", || last(&s.follower) == 250).await;
        assert_eq!(s.follower.dump().unwrap(), s.leader.dump().unwrap());
        let sinces = since_sequences(&transport);
        assert!(sinces.ends_with(&[0, 100, 200]), "pages fetched in order: {sinces:?}");
        wait_for("an acknowledgement of 250", || {
            transport
                .sent("Acknowledge")
                .iter()
                .any(|m| matches!(m, SyncMessage::Acknowledge { up_to_sequence: 250, .. }))
        })
        .await;
    }

    /// The `(since_sequence, since_term)` of every FetchEntries sent, in order.
    fn fetched_since(transport: &ScriptedTransport) -> Vec<(u64, u64)> {
        transport
            .sent("FetchEntries")
            .iter()
            .map(|m| match m {
                SyncMessage::FetchEntries { since_sequence, since_term, .. } => {
                    (*since_sequence, *since_term)
                }
                _ => unreachable!(),
            })
            .collect()
    }

    /// The `since_sequence` of every FetchEntries sent, in order.
    fn since_sequences(transport: &ScriptedTransport) -> Vec<u64> {
        fetched_since(transport).into_iter().map(|(since, _)| since).collect()
    }

    #[actix_rt::test]
    async fn responses_that_arrive_during_an_apply_are_applied_together() {
        // The scripted leader answers at once, so the next responses are there long before a
        // 100-entry transaction is done: the round applies them together, up to PIPELINE.
        let (s, transport, _applier) = start(3_000, |_, _, _| None);
        let mut events = s.events.resubscribe();
        wait_for("all 3,000 entries applied", || last(&s.follower) == 3_000).await;
        assert_eq!(s.follower.dump().unwrap(), s.leader.dump().unwrap());
        let mut batches = Vec::new();
        wait_for("every EntriesApplied event", || {
            for ev in drain(&mut events) {
                if let SyncEvent::EntriesApplied { first, last, count, .. } = ev {
                    batches.push((first, last, count));
                }
            }
            batches.last().is_some_and(|b| b.1 == 3_000)
        })
        .await;
        let mut next = 1;
        for &(first, last, count) in &batches {
            assert_eq!((first, last - first + 1), (next, count), "in order, no gap: {batches:?}");
            assert!(
                count <= PIPELINE as u64 * 100,
                "at most {PIPELINE} responses per transaction: {batches:?}"
            );
            next = last + 1;
        }
        assert!(batches.iter().any(|b| b.2 > 100), "responses were applied together: {batches:?}");
        let sinces = since_sequences(&transport);
        assert_eq!(sinces, (0..30).map(|i| i * 100).collect::<Vec<_>>(), "each page fetched once");
        // Fetches left ahead of the response before them (the others waited for room in the
        // pipeline), and every guess held.
        assert!(s.metrics.fetches_ahead.load(Ordering::Relaxed) > 0);
        assert_eq!(s.metrics.fetches_ahead_missed.load(Ordering::Relaxed), 0);
    }

    #[actix_rt::test]
    async fn a_fetch_ahead_that_guessed_the_wrong_term_is_dropped_and_nothing_is_rebuilt() {
        // Entries 1..=199 of term 1, 200..=350 of term 2: the fetch sent ahead from 100 guesses
        // that entry 200 has term 1, and the leader answers that guess with SyncRequired. The
        // follower must drop that answer (the response from 100 ends with term 2), fetch from
        // (200, 2) and converge without a rebuild.
        let (s, transport, _applier) = start_prepared(
            199,
            |leader, tm| {
                leader.set_vote(2, leader.sync_state().unwrap().voted_for).unwrap();
                tm.commit_batch(tag_inserts("u", 151)).unwrap();
            },
            SyncConfig { heartbeat_interval: Duration::from_secs(3600), ..SyncConfig::fast() },
            Box::new(|_, _, _| None),
        );
        wait_for("all 350 entries applied", || last(&s.follower) == 350).await;
        assert_eq!(s.follower.dump().unwrap(), s.leader.dump().unwrap());
        assert_eq!(s.follower.term_at(200).unwrap(), Some(2));
        let sinces = fetched_since(&transport);
        assert!(sinces.contains(&(200, 1)), "the wrong guess was sent: {sinces:?}");
        assert!(sinces.contains(&(200, 2)), "then the right fetch: {sinces:?}");
        assert!(s.metrics.fetches_ahead_missed.load(Ordering::Relaxed) >= 1);
        assert_eq!(s.metrics.resyncs.load(Ordering::Relaxed), 0, "nothing was rebuilt");
    }

    #[actix_rt::test]
    async fn a_follower_whose_guesses_keep_missing_stops_guessing() {
        // The follower expects blocks of 500 entries, the leader answers blocks of 100: every
        // guess would miss. After MAX_MISSED_GUESSES the pass fetches one response at a time.
        let (s, transport, _applier) = start_prepared(
            1_000,
            |_, _| {},
            SyncConfig {
                heartbeat_interval: Duration::from_secs(3600),
                max_entries_per_response: 500,
                ..SyncConfig::fast()
            },
            Box::new(|_, _, _| None),
        );
        wait_for("all 1,000 entries applied", || last(&s.follower) == 1_000).await;
        assert_eq!(s.follower.dump().unwrap(), s.leader.dump().unwrap());
        let missed = s.metrics.fetches_ahead_missed.load(Ordering::Relaxed);
        assert_eq!(missed, MAX_MISSED_GUESSES as u64, "{:?}", fetched_since(&transport));
        assert_eq!(s.metrics.fetches_ahead.load(Ordering::Relaxed), missed);
        // Each fetch from a real end; the first knows nothing of the leader's log, so no guess
        // goes with it; the next two are followed by a guess of 500, then none.
        let sinces = since_sequences(&transport);
        assert_eq!(sinces, [0, 100, 500, 200, 500, 300, 400, 500, 600, 700, 800, 900]);
    }

    /// Sends `msg` to the applier as its leader; returns the reply.
    async fn from_leader(
        applier: &Addr<FollowerApplier>,
        s: &Setup,
        message: SyncMessage,
    ) -> SyncMessage {
        let (reply, rx) = tokio::sync::oneshot::channel();
        applier.send(InboundRequest { peer: s.leader_peer, message, reply }).await.unwrap();
        rx.await.unwrap()
    }

    fn pushed(s: &Setup, from: u64, to: u64, prev_term: u64) -> SyncMessage {
        SyncMessage::NewEntries {
            commit_sequence: 0,
            library_id: s.lib,
            term: 1,
            from_sequence: from,
            to_sequence: to,
            entry_count: to - from + 1,
            prev_term,
            entries: s.leader.fetch_range(from, to).unwrap(),
        }
    }

    #[actix_rt::test]
    async fn pushed_entries_that_continue_the_log_are_applied_without_a_fetch() {
        let (s, transport, applier) = start(0, |_, _, _| None);
        let mut events = s.events.resubscribe();
        let tm = lsync_storage::TransactionManager::new(
            s.leader.clone(),
            s.leader.sync_state().unwrap().device_id,
        );
        let tag = |i: u64| {
            lsync_storage::Change::insert(&lsync_storage::Tag {
                id: format!("p{i}"),
                name: "x".into(),
                color: None,
            })
        };
        // Wait until the start-up round is over (position read, worker idle).
        let mut idle = false;
        for _ in 0..12_000 {
            let st = applier.send(GetApplierStatus).await.unwrap();
            if st.state == FollowerState::CaughtUp {
                idle = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(idle, "the applier never caught up at start");
        let fetches = transport.sent("FetchEntries").len();

        tm.commit_batch((1..=3).map(tag).collect()).unwrap();
        // Answered once applied, with the new position; no fetch.
        let reply = from_leader(&applier, &s, pushed(&s, 1, 3, 0)).await;
        assert!(matches!(reply, SyncMessage::Acknowledge { up_to_sequence: 3, .. }), "{reply:?}");
        assert_eq!(last(&s.follower), 3);
        assert_eq!(s.follower.dump().unwrap(), s.leader.dump().unwrap());
        assert!(drain(&mut events)
            .iter()
            .any(|e| matches!(e, SyncEvent::EntriesApplied { first: 1, last: 3, count: 3, .. })));
        assert_eq!(transport.sent("FetchEntries").len(), fetches, "nothing fetched");

        // Entries that do not continue the log (another term at sequence 3: the logs would
        // diverge there) are not applied; the follower answers with its position and fetches,
        // and the leader's check of `since_term` decides.
        tm.commit(tag(4)).unwrap();
        let reply = from_leader(&applier, &s, pushed(&s, 4, 4, 7)).await;
        assert!(matches!(reply, SyncMessage::Acknowledge { up_to_sequence: 3, .. }), "{reply:?}");
        wait_for("entry 4 fetched", || last(&s.follower) == 4).await;
        assert!(transport.sent("FetchEntries").len() > fetches, "fetched instead");

        // Entries that do not match their announced range are not used either.
        tm.commit_batch((5..=6).map(tag).collect()).unwrap();
        let mut bad = pushed(&s, 5, 6, 1);
        if let SyncMessage::NewEntries { entries, .. } = &mut bad {
            entries.remove(0);
        }
        let reply = from_leader(&applier, &s, bad).await;
        assert!(matches!(reply, SyncMessage::Acknowledge { up_to_sequence: 4, .. }), "{reply:?}");
        wait_for("entries 5 and 6 fetched", || last(&s.follower) == 6).await;
        assert_eq!(s.follower.dump().unwrap(), s.leader.dump().unwrap());
    }

    /// A response to a fetch from 0 that starts at entry 2 (entries 2..=11 of the leader's
    /// log): it does not continue the follower's log.
    fn skipping_entry_one(library_id: Uuid, leader: &Database, last: u64) -> SyncMessage {
        SyncMessage::EntriesResponse {
            commit_sequence: 0,
            library_id,
            term: 1,
            entries: leader.fetch_since(1, 10).unwrap(),
            has_more: true,
            leader_last_sequence: last,
        }
    }

    #[actix_rt::test]
    async fn a_response_with_a_gap_is_refetched_from_the_persisted_position() {
        // the first response skips entry 1: the applier must not apply it and must ask again
        let (s, transport, _applier) = start(150, |i, msg, leader| match (i, msg) {
            (0, SyncMessage::FetchEntries { library_id, .. }) => {
                Some(Ok(skipping_entry_one(*library_id, leader, 150)))
            }
            _ => None,
        });
        wait_for("all 150 entries applied", || last(&s.follower) == 150).await;
        assert_eq!(s.follower.dump().unwrap(), s.leader.dump().unwrap());
        let fetches = transport.sent("FetchEntries");
        assert!(
            matches!(fetches[1], SyncMessage::FetchEntries { since_sequence: 0, .. }),
            "re-fetched from 0: {fetches:?}"
        );
    }

    #[actix_rt::test]
    async fn a_leader_that_keeps_answering_out_of_order_is_given_up_on_and_retried() {
        // The first 20 responses skip entry 1: a round restarts from the applied position a
        // bounded number of times, then backs off as from an unreachable leader.
        let (mut s, transport, _applier) = start(50, |i, msg, leader| match msg {
            SyncMessage::FetchEntries { library_id, .. } if i < 20 => {
                Some(Ok(skipping_entry_one(*library_id, leader, 50)))
            }
            _ => None,
        });
        wait_for("all 50 entries applied", || last(&s.follower) == 50).await;
        assert_eq!(s.follower.dump().unwrap(), s.leader.dump().unwrap());
        let gave_up = drain(&mut s.events)
            .into_iter()
            .filter(|e| {
                matches!(e, SyncEvent::LeaderUnreachable { error, .. }
                    if error.contains("did not continue the log"))
            })
            .count();
        assert!(gave_up >= 2, "each round gave up after {} passes: {gave_up}", MAX_RESTARTS + 1);
        assert!(transport.sent("FetchEntries").len() >= 21);
    }

    #[actix_rt::test]
    async fn a_rebuild_reports_its_final_progress_once_even_when_nothing_was_applied() {
        for n in [0u64, 120] {
            let (mut s, _transport, _applier) = start(n, move |i, msg, _| match (i, msg) {
                (0, SyncMessage::FetchEntries { library_id, .. }) => {
                    Some(Ok(SyncMessage::SyncRequired {
                        library_id: *library_id,
                        term: 1,
                        reason: "test".into(),
                        leader_last_sequence: n,
                    }))
                }
                _ => None,
            });
            let mut seen = Vec::new();
            wait_for("the done event", || {
                seen.extend(drain(&mut s.events));
                seen.iter().any(|e| matches!(e, SyncEvent::ResyncDone { .. }))
            })
            .await;
            let finals: Vec<_> = seen
                .iter()
                .filter_map(|e| match e {
                    SyncEvent::ResyncProgress { applied, target, .. } => Some((*applied, *target)),
                    _ => None,
                })
                .filter(|&(applied, _)| applied == n)
                .collect();
            assert_eq!(finals, [(n, n)], "one final report of {n} entries: {seen:?}");
            assert_eq!(last(&s.follower), n);
        }
    }

    #[actix_rt::test]
    async fn an_entry_of_a_newer_version_stops_the_follower_with_upgrade_needed() {
        // The leader (a newer lsync) sends an entry of a change type this build does not know.
        let (mut s, transport, applier) = start(5, |_, msg, leader| match msg {
            SyncMessage::FetchEntries { library_id, since_sequence: 0, .. } => {
                let mut entries = leader.fetch_since(0, 5).unwrap();
                entries[2].change_type = lsync_protocol::ChangeType::Unknown;
                Some(Ok(SyncMessage::EntriesResponse {
                    library_id: *library_id,
                    term: 1,
                    entries,
                    has_more: false,
                    leader_last_sequence: 5,
                    commit_sequence: 0,
                }))
            }
            _ => None,
        });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let st = applier.send(GetApplierStatus).await.unwrap();
            if st.state == FollowerState::UpgradeNeeded {
                let error = st.last_error.unwrap_or_default();
                assert!(error.contains("newer version"), "{error}");
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "never reported: {st:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(last(&s.follower), 0, "nothing of the batch is applied");
        assert!(drain(&mut s.events)
            .iter()
            .any(|e| matches!(e, SyncEvent::ApplyFailed { error, .. } if error.contains("newer"))));
        // It waits (the maximum backoff) instead of refetching in a loop.
        let fetches = transport.sent("FetchEntries").len();
        assert!(fetches <= 2, "{fetches} fetches");
    }

    #[actix_rt::test]
    async fn sync_required_rebuilds_the_library_from_the_leaders_log() {
        let (mut s, transport, _applier) = start(120, |i, msg, _| match (i, msg) {
            (0, SyncMessage::FetchEntries { library_id, .. }) => {
                Some(Ok(SyncMessage::SyncRequired {
                    library_id: *library_id,
                    term: 1,
                    reason: "test".into(),
                    leader_last_sequence: 120,
                }))
            }
            _ => None,
        });
        wait_for("the library rebuilt", || last(&s.follower) == 120).await;
        assert_eq!(s.follower.dump().unwrap(), s.leader.dump().unwrap());
        wait_for("the done event", || {
            drain(&mut s.events)
                .iter()
                .any(|e| matches!(e, SyncEvent::ResyncDone { last_sequence: 120, .. }))
        })
        .await;
        assert!(transport.sent("FetchEntries").len() >= 3);
    }

    #[actix_rt::test]
    async fn an_unreachable_leader_is_retried_with_backoff_and_resumed_from_the_persisted_sequence()
    {
        let (s, transport, applier) = start(300, |i, _, _| {
            (2..6).contains(&i).then_some(Err(NetworkError::ConnectionClosed))
        });
        wait_for("all 300 entries applied", || last(&s.follower) == 300).await;
        assert_eq!(s.follower.dump().unwrap(), s.leader.dump().unwrap());
        // the worker reports CaughtUp once the round that applied the last entry returns
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while applier.send(GetApplierStatus).await.unwrap().state != FollowerState::CaughtUp {
            assert!(tokio::time::Instant::now() < deadline, "never caught up");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // after the failures the applier resumed where its log ended, never from 0 again
        let sinces: Vec<u64> = transport
            .sent("FetchEntries")
            .iter()
            .filter_map(|m| match m {
                SyncMessage::FetchEntries { since_sequence, .. } => Some(*since_sequence),
                _ => None,
            })
            .collect();
        assert!(sinces.iter().skip(2).all(|&s| s >= 100), "{sinces:?}");
    }
}
