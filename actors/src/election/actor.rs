//! ElectionActor — runs the library's election: one per open library, on every member device,
//! whatever its role.
//!
//! Receives: vote requests and TimeoutNow (routed by the SyncService), [`ElectionInput`]s
//! (a leader was heard, a follower answered, a newer term was seen), membership changes and
//! leadership-transfer requests, [`LeaseAnswer`]s and [`ConfirmLease`] questions (the leader
//! lease), [`ObserveElection`]; its own timer.
//! Emits: RequestVote (votes and pre-votes) / Vote / TimeoutNow messages, and [`RoleChange`] /
//! [`HeartbeatNow`] to its SyncService; the answers to [`ConfirmLease`].
//!
//! It also holds the leader's [`Lease`] (election/lease.rs, docs/architecture.md "The leader
//! lease"): every heartbeat round is stamped with its [`LeaseClock`] before it goes out, the
//! link actors report the answers to it, and a write committed on this leader asks
//! [`ConfirmLease`] before it is answered. A write that finds the lease expired waits (at most
//! one leader timeout, in a bounded list: one entry per write in flight) while a heartbeat round
//! goes out; it is answered `true` when a majority answered, `false` when this device stops
//! leading or the time is up.
//!
//! A thin shell around the pure [`Election`] machine: it feeds it events with the current time
//! and the device's last log position, and performs the returned actions in order. A
//! [`Action::Persist`] is written *before* anything after it is performed — the actor's mailbox
//! waits meanwhile — to the election record with a full sync, then to `sync_state`
//! ([`Database::persist_election`]), so no vote or request is ever sent that a crash or a power
//! loss could make this device forget (docs/architecture.md, "Terms and votes on disk").
//! When that write fails, the machine's change is undone: the machine is rebuilt from the last
//! state that was written ([`ElectionActor::undo`]), so the actor never acts on — nor reports —
//! a term or vote its disk does not have; the event is retried when it comes again.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use libp2p::PeerId;
use lsync_protocol::{ErrorCode, SyncMessage, SyncRole};
use lsync_storage::{Database, ElectionRecord, LogHead, LogPosition, StorageError, SyncState};
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::sync::{broadcast, oneshot};
use tracing::{debug, info, warn};
use uuid::Uuid;

use super::lease::{lease_duration, Lease, LeaseClock, LeaseState, SystemClock};
use super::{
    Action, Election, ElectionConfig, Membership, PersistedElection, VoteRequest, VoteResponse,
};
use crate::blocking::run_blocking;
use crate::config::SyncConfig;
use crate::events::SyncEvent;
use crate::leader::serve::leader_heartbeat;
use crate::messages::{
    who_leads, ConfirmLease, ElectionInput, HeartbeatNow, LeaderHint, LeaseAnswer, RoleChange,
};
use crate::metrics::Metrics;
use crate::network::InboundRequest;
use crate::task::{spawn_supervised, Task};
use crate::transport::Transport;

/// The configuration in effect changed: every member's peer (this device included) and the
/// election's view of it (voters, learners).
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetMembership {
    pub peers: BTreeMap<Uuid, PeerId>,
    pub membership: Membership,
}

/// A configuration that does not make this leader a voter is committed: step down.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct Resign;

/// Hand leadership over to a device (the leader only).
#[derive(Message)]
#[rtype(result = "Result<(), String>")]
pub struct TransferLeadership(pub Uuid);

/// Reads the election's state: the election actor's one observe call.
#[derive(Message)]
#[rtype(result = "ElectionStatus")]
pub struct ObserveElection;

/// The election's state, as [`ObserveElection`] shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElectionStatus {
    pub role: SyncRole,
    pub term: u64,
    pub leader: Option<Uuid>,
    pub voted_for: Option<Uuid>,
    /// The device a leadership transfer hands over to, while one runs.
    pub transfer_target: Option<Uuid>,
    /// A leader of three or more voters: whether it holds its lease now (it answers writes
    /// at once while it does). `None` on a follower or candidate, and with one or two voters
    /// (no lease).
    pub lease_held: Option<bool>,
    /// While this device's log is behind a position it held before (its high-water mark after
    /// a restored backup or a power loss, or its rebuild mark): that position. It neither
    /// campaigns nor votes for a log behind it meanwhile.
    pub behind: Option<LogPosition>,
}

#[derive(Message)]
#[rtype(result = "()")]
struct VoteReceived(VoteResponse);

/// What the watcher needs.
pub struct ElectionContext {
    pub library_id: Uuid,
    pub device_id: Uuid,
    pub db: Database,
    pub transport: Arc<dyn Transport>,
    pub config: SyncConfig,
    pub events: broadcast::Sender<SyncEvent>,
    pub metrics: Arc<Metrics>,
    /// Every member's peer (this device included).
    pub members: BTreeMap<Uuid, PeerId>,
    /// The election's view of the configuration in effect.
    pub membership: Membership,
    pub persisted: PersistedElection,
    pub role_changes: Recipient<RoleChange>,
    pub heartbeats: Recipient<HeartbeatNow>,
    /// Set while a leadership transfer holds new writes.
    pub writes_paused: Arc<AtomicBool>,
    /// Where a leader named by a member this device asked goes (see [`probe_for_leader`]).
    pub hints: Option<Recipient<LeaderHint>>,
}

/// The election of one library on this device.
pub struct ElectionActor {
    cx: ElectionContext,
    election: Election<StdRng>,
    timer: Option<SpawnHandle>,
    /// When the high-water mark was last raised (see [`ElectionActor::raise_mark`]).
    mark_raised: Option<Instant>,
    /// The last state written to disk (the start state, then every persist that succeeded):
    /// what the machine goes back to when a write fails.
    written: PersistedElection,
    /// The leader lease (see the module documentation).
    lease: Lease,
    clock: Arc<dyn LeaseClock>,
    /// Writes waiting for the lease: id, when they asked (a lease clock reading), the answer.
    waiters: Vec<(u64, Duration, oneshot::Sender<bool>)>,
    next_waiter: u64,
}

fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

impl ElectionActor {
    /// A watcher resuming from `cx.persisted`, its lease read from the system's clock that
    /// counts suspend ([`SystemClock`]).
    pub fn new(cx: ElectionContext) -> Self {
        Self::with_clock(cx, Arc::new(SystemClock::new()))
    }

    /// A watcher whose lease reads time from `clock` (tests inject one that jumps).
    pub fn with_clock(cx: ElectionContext, clock: Arc<dyn LeaseClock>) -> Self {
        let election = Election::new(
            cx.device_id,
            cx.membership.clone(),
            cx.persisted,
            ElectionConfig::from_sync(&cx.config),
            now(),
            StdRng::from_entropy(),
        );
        let written = cx.persisted;
        let duration = lease_duration(cx.config.leader_timeout);
        let mut lease = Lease::new(cx.device_id, duration, clock.counts_suspend());
        lease.set_voters(cx.membership.voters().clone(), cx.membership.previous_voters().cloned());
        let mut actor = Self {
            cx,
            election,
            timer: None,
            mark_raised: None,
            written,
            lease,
            clock,
            waiters: Vec::new(),
            next_waiter: 0,
        };
        actor.sync_lease();
        actor
    }

    /// Brings the lease in line with the election: leading the election's term (from now on,
    /// if it did not already), held back while a transfer runs, released when one ends with
    /// this device still leading, stopped when it does not lead; then answers the writes
    /// that can be answered.
    fn sync_lease(&mut self) {
        let leading = self.election.is_leader().then(|| self.election.term());
        self.lease.follow(leading, self.election.is_transferring(), self.clock.now());
        self.settle_waiters();
    }

    /// Answers every waiting write the lease decides now: `true` when held (or not needed),
    /// `false` when this device no longer leads.
    fn settle_waiters(&mut self) {
        if self.waiters.is_empty() {
            return;
        }
        let now = self.clock.now();
        for (id, asked_at, tx) in std::mem::take(&mut self.waiters) {
            match self.lease.state(now, asked_at) {
                LeaseState::Held | LeaseState::NotNeeded => {
                    let _ = tx.send(true);
                }
                LeaseState::NotLeading => {
                    let _ = tx.send(false);
                }
                LeaseState::Expired => self.waiters.push((id, asked_at, tx)),
            }
        }
    }

    /// Stamps a heartbeat round with the lease clock, records it, and has the service send it
    /// to every follower.
    fn send_round(&mut self) {
        let sent_at = self.clock.now();
        self.lease.round_sent(sent_at);
        self.cx.heartbeats.do_send(HeartbeatNow { sent_at });
    }

    /// A persist failed: the machine is rebuilt from the last state written (its membership as
    /// the actor knows it), dropping the change the write was for and any transfer in progress
    /// (its held writes resume). Nothing that followed the failed persist was performed.
    fn undo(&mut self) {
        self.election = Election::new(
            self.cx.device_id,
            self.cx.membership.clone(),
            self.written,
            ElectionConfig::from_sync(&self.cx.config),
            now(),
            StdRng::from_entropy(),
        );
        if self.cx.writes_paused.swap(false, Ordering::AcqRel) {
            warn!(library_id = %self.cx.library_id, "leadership transfer abandoned: the election state could not be written");
        }
        self.sync_lease();
    }

    /// Raises the high-water mark to the log's last position ([`Database::raise_mark`], one
    /// fsync), at most once per heartbeat interval: a follower when it hears its leader, a
    /// leader when it heartbeats. The mark lags the log by up to that interval; a database
    /// found behind it at any later time went back (docs/architecture.md, "Restores are
    /// detected").
    fn raise_mark(&mut self) {
        let now = now();
        if self
            .mark_raised
            .is_some_and(|at| now.saturating_duration_since(at) < self.cx.config.heartbeat_interval)
        {
            return;
        }
        self.mark_raised = Some(now);
        let (db, library_id) = (self.cx.db.clone(), self.cx.library_id);
        actix_rt::spawn(async move {
            if let Err(e) = run_blocking(move || db.raise_mark()).await {
                warn!(%library_id, error = %e, "cannot raise the high-water mark");
            }
        });
    }

    fn peer(&self, device: Uuid) -> Option<PeerId> {
        self.cx.members.get(&device).copied()
    }

    /// Refreshes the log position, then runs `f` on the machine and performs its actions.
    fn with_log<F>(
        &mut self,
        ctx: &mut Context<Self>,
        reply: Option<oneshot::Sender<SyncMessage>>,
        f: F,
    ) where
        F: FnOnce(&mut Election<StdRng>, Instant) -> Vec<Action> + 'static,
    {
        let db = self.cx.db.clone();
        let read = run_blocking(move || Ok((db.last_position()?, db.election_floor()?)));
        ctx.wait(read.into_actor(self).map(move |pos, this, ctx| {
            match pos {
                Ok((pos, floor)) => {
                    // A device rebuilding its log, or whose database went back below its
                    // high-water mark, neither campaigns nor votes for a log behind what it
                    // held before (docs/architecture.md, "Membership", "Restores are
                    // detected").
                    let was_behind = this.election.last_log() < this.election.log_floor();
                    this.election.set_last_log(pos);
                    this.election.set_log_floor(floor);
                    if pos < floor && !was_behind {
                        warn!(library_id = %this.cx.library_id, log = %pos, held = %floor,
                            "this device's log is behind a position it held before (a restored \
                             backup, writes lost to a power loss, or a rebuild): it neither \
                             campaigns nor votes for a log behind that until it has caught up");
                    }
                }
                Err(e) => warn!(library_id = %this.cx.library_id, error = %e, "cannot read the log position"),
            }
            let actions = f(&mut this.election, now());
            this.perform(actions, reply, ctx);
        }));
    }

    /// Performs `actions` in order: a Persist first (the mailbox waits for it), then the rest.
    fn perform(
        &mut self,
        actions: Vec<Action>,
        reply: Option<oneshot::Sender<SyncMessage>>,
        ctx: &mut Context<Self>,
    ) {
        let persist = actions.iter().find_map(Action::persisted);
        match persist {
            Some(p) => {
                let db = self.cx.db.clone();
                let role = self.election.role();
                let record =
                    ElectionRecord { term: p.term, voted_for: p.voted_for, leader: p.leader };
                let write = run_blocking(move || db.persist_election(role, &record));
                ctx.wait(write.into_actor(self).map(move |res, this, ctx| match res {
                    Ok(()) => {
                        this.written = p;
                        this.dispatch(actions, reply, ctx)
                    }
                    Err(e) => {
                        // Nothing that depends on the unwritten state may go out, and the
                        // machine must not keep it either.
                        warn!(library_id = %this.cx.library_id, error = %e, term = p.term,
                            "cannot persist the election state; the change is undone");
                        this.undo();
                        if let Some(r) = reply {
                            let _ = r.send(SyncMessage::error(
                                this.cx.library_id,
                                ErrorCode::Internal,
                                "cannot persist vote",
                            ));
                        }
                        this.arm_timer(ctx);
                    }
                }));
            }
            None => self.dispatch(actions, reply, ctx),
        }
    }

    fn dispatch(
        &mut self,
        actions: Vec<Action>,
        mut reply: Option<oneshot::Sender<SyncMessage>>,
        ctx: &mut Context<Self>,
    ) {
        let library_id = self.cx.library_id;
        for action in actions {
            match action {
                Action::Persist { .. } => {}
                Action::BecomeLeader { term } => self.role_change(SyncRole::Leader, term),
                Action::BecomeCandidate { term } => {
                    Metrics::add(&self.cx.metrics.elections, 1);
                    info!(%library_id, term, "campaigning");
                    self.role_change(SyncRole::Candidate, term);
                }
                Action::BecomeFollower { term, .. } => {
                    if self.cx.writes_paused.swap(false, Ordering::AcqRel) {
                        info!(%library_id, term, "leadership transfer finished");
                    }
                    self.role_change(SyncRole::Follower, term);
                }
                Action::SendRequestVote { to, request } => {
                    let Some(peer) = self.peer(to) else { continue };
                    if request.pre_vote {
                        Metrics::add(&self.cx.metrics.pre_vote_requests, 1);
                    }
                    let fut = self.cx.transport.request(peer, request_vote(library_id, &request));
                    let me = ctx.address();
                    // A vote that never comes (the task panicked) is a vote not delivered: the
                    // election's timer campaigns again.
                    let metrics = self.cx.metrics.clone();
                    spawn_supervised(Task::VoteRequest, metrics, fut, move |r| match r {
                        Ok(Ok(reply)) => match vote_of(&reply) {
                            Some(response) => me.do_send(VoteReceived(response)),
                            None => {
                                debug!(reply = reply.kind(), "vote request answered without a vote")
                            }
                        },
                        Ok(Err(e)) => debug!(error = %e, "vote request not delivered"),
                        Err(e) => debug!(error = %e, "vote request not delivered"),
                    });
                }
                Action::SendVoteResponse { response, .. } => {
                    if let Some(r) = reply.take() {
                        let _ = r.send(vote(library_id, &response));
                    }
                }
                Action::SendHeartbeats { .. } => {
                    self.send_round();
                    self.raise_mark();
                }
                Action::SendTimeoutNow { to, term } => {
                    let Some(peer) = self.peer(to) else { continue };
                    let fut = self
                        .cx
                        .transport
                        .request(peer, SyncMessage::TimeoutNow { library_id, term });
                    spawn_supervised(Task::TimeoutNow, self.cx.metrics.clone(), fut, |r| {
                        if let Ok(Err(e)) = r {
                            debug!(error = %e, "TimeoutNow not delivered");
                        }
                    });
                }
                Action::TransferAborted { to } => {
                    self.cx.writes_paused.store(false, Ordering::Release);
                    warn!(%library_id, %to, "leadership transfer aborted; still leading");
                }
            }
        }
        if let Some(r) = reply.take() {
            // Requests that needed no vote (TimeoutNow) are answered with this device's view.
            let _ = r.send(view(library_id, &self.election));
        }
        self.sync_lease();
        self.arm_timer(ctx);
    }

    fn role_change(&self, role: SyncRole, term: u64) {
        self.cx.role_changes.do_send(role_change(role, term, &self.election));
    }

    fn arm_timer(&mut self, ctx: &mut Context<Self>) {
        if let Some(h) = self.timer.take() {
            ctx.cancel_future(h);
        }
        if let Some(deadline) = self.election.next_deadline() {
            let delay = deadline.saturating_duration_since(now());
            self.timer = Some(ctx.run_later(delay, |this, ctx| {
                this.timer = None;
                this.with_log(ctx, None, |e, now| e.tick(now));
            }));
        }
    }

    /// While a transfer runs: asks the target where its log ends (a heartbeat of this term,
    /// answered with its position and chain hash) and tells the machine when it ends exactly
    /// at this leader's head ([`target_caught_up`]). The answer of a fresh exchange, not an
    /// acknowledgement recorded earlier: the target may have lost its tail in a crash since
    /// (it would campaign with a shorter log and lose), or hold other entries at those
    /// sequences after a restore.
    fn poll_transfer(&mut self, ctx: &mut Context<Self>) {
        let Some(target) = self.election.transfer_target() else { return };
        let peer = self.peer(target);
        let (library_id, term) = (self.cx.library_id, self.election.term());
        let transport = self.cx.transport.clone();
        let db = self.cx.db.clone();
        let check = async move {
            let peer = peer?;
            let head = run_blocking(move || db.head()).await.ok()?;
            // commit sequence 0: a follower keeps the larger one it knows
            let ask = leader_heartbeat(library_id, term, head.position, Some(head.hash), 0);
            let answer = transport.request(peer, ask).await.ok()?;
            Some(target_caught_up(&answer, term, &head))
        };
        let check = async move { check.await.unwrap_or(false) };
        ctx.spawn(check.into_actor(self).map(move |caught_up, this, ctx| {
            if this.election.transfer_target() != Some(target) {
                return;
            }
            if caught_up {
                let actions = this.election.on_target_caught_up(target, now());
                this.perform(actions, None, ctx);
            }
            let every = (this.cx.config.heartbeat_interval / 4)
                .clamp(Duration::from_millis(10), Duration::from_millis(250));
            ctx.run_later(every, |this, ctx| this.poll_transfer(ctx));
        }));
    }
}

/// Whether `answer`, a transfer target's answer to this leader's heartbeat of `term`, shows
/// its log ending exactly at `head`: a `Heartbeat` of the same term naming the same last
/// sequence, last term and chain hash (a peer that does not send hashes, an older version,
/// is judged by sequence and term alone, as docs/protocol.md says of an absent hash).
pub fn target_caught_up(answer: &SyncMessage, term: u64, head: &LogHead) -> bool {
    match answer {
        SyncMessage::Heartbeat { term: t, current_sequence, last_term, last_hash, .. } => {
            *t == term
                && *current_sequence == head.position.sequence
                && *last_term == head.position.term
                && last_hash.is_none_or(|h| h == head.hash)
        }
        _ => false,
    }
}

impl Actor for ElectionActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(crate::limits::MAILBOX_CAPACITY);
        // A resumed leader heartbeats at once; a follower arms its election deadline.
        self.with_log(ctx, None, |e, now| e.tick(now));
    }
}

impl Handler<ElectionInput> for ElectionActor {
    type Result = ();
    fn handle(&mut self, input: ElectionInput, ctx: &mut Context<Self>) {
        let now = now();
        let actions = match input {
            ElectionInput::LeaderHeard { from, term } => {
                self.raise_mark();
                self.election.on_leader_message(from, term, now).1
            }
            ElectionInput::FollowerContact { from, term } => {
                self.election.on_follower_response(from, term, now)
            }
            ElectionInput::TermSeen { term } => self.election.observe_term(term, now),
        };
        if !actions.is_empty() {
            self.perform(actions, None, ctx);
        }
    }
}

impl Handler<VoteReceived> for ElectionActor {
    type Result = ();
    fn handle(&mut self, msg: VoteReceived, ctx: &mut Context<Self>) {
        let response = msg.0;
        let actions = self.election.on_vote_response(response, now());
        self.perform(actions, None, ctx);
        if probe_for_leader(&response, self.election.leader()) {
            self.ask_for_leader(response.voter);
        }
    }
}

/// Whether a vote answer should make this device ask the voter who leads: a pre-vote refused
/// while this device knows no leader. A voter refuses a pre-vote when it hears a live leader
/// (leader stickiness), so that leader exists; a device that missed the configuration entry
/// naming it (it was away while that device joined and took the lead) refuses the leader's own
/// messages and, knowing no leader, asked no one — it never learned (found by the simulator,
/// docs/testing.md). The voter answers the question (a `FetchEntries`) with `NotLeader`
/// naming the leader and its peer id (docs/protocol.md, `Error.leader_peer`), which lets the
/// leader in.
pub fn probe_for_leader(response: &VoteResponse, leader: Option<Uuid>) -> bool {
    response.pre_vote && !response.granted && leader.is_none()
}

impl ElectionActor {
    /// Asks `voter` who leads ([`probe_for_leader`]); a `NotLeader` answer naming a leader goes
    /// to the service as a [`LeaderHint`].
    fn ask_for_leader(&self, voter: Uuid) {
        let (Some(peer), Some(hints)) = (self.peer(voter), self.cx.hints.clone()) else { return };
        let question =
            who_leads(self.cx.library_id, self.election.term(), self.election.last_log());
        let answer = self.cx.transport.request(peer, question);
        spawn_supervised(Task::LeaderProbe, self.cx.metrics.clone(), answer, move |r| {
            if let Some(hint) = r.ok().and_then(Result::ok).as_ref().and_then(LeaderHint::named_in)
            {
                hints.do_send(hint);
            }
        });
    }
}

impl Handler<InboundRequest> for ElectionActor {
    type Result = ();
    fn handle(&mut self, req: InboundRequest, ctx: &mut Context<Self>) {
        let library_id = self.cx.library_id;
        let from = self.cx.members.iter().find(|(_, p)| **p == req.peer).map(|(d, _)| *d);
        match election_request(library_id, req.message, from) {
            ElectionRequest::Vote(request) => {
                self.with_log(ctx, Some(req.reply), move |e, now| e.on_vote_request(request, now));
            }
            ElectionRequest::TimeoutNow { from, term } => {
                self.with_log(ctx, Some(req.reply), move |e, now| {
                    e.on_timeout_now(from, term, now)
                });
            }
            ElectionRequest::Refused(refusal) => {
                let _ = req.reply.send(refusal);
            }
        }
    }
}

impl Handler<SetMembership> for ElectionActor {
    type Result = ();
    fn handle(&mut self, msg: SetMembership, ctx: &mut Context<Self>) {
        self.cx.members = msg.peers;
        self.cx.membership = msg.membership.clone();
        self.lease
            .set_voters(msg.membership.voters().clone(), msg.membership.previous_voters().cloned());
        let actions = self.election.set_membership(msg.membership, now());
        self.perform(actions, None, ctx);
    }
}

impl Handler<Resign> for ElectionActor {
    type Result = ();
    fn handle(&mut self, _: Resign, ctx: &mut Context<Self>) {
        let actions = self.election.resign(now());
        self.perform(actions, None, ctx);
    }
}

impl Handler<TransferLeadership> for ElectionActor {
    type Result = Result<(), String>;
    fn handle(&mut self, msg: TransferLeadership, ctx: &mut Context<Self>) -> Self::Result {
        self.election.transfer_leadership(msg.0, now()).map_err(|e| e.to_string())?;
        info!(library_id = %self.cx.library_id, to = %msg.0, "leadership transfer: holding writes until the target caught up");
        self.cx.writes_paused.store(true, Ordering::Release);
        self.sync_lease();
        self.poll_transfer(ctx);
        self.arm_timer(ctx);
        Ok(())
    }
}

impl Handler<ObserveElection> for ElectionActor {
    type Result = MessageResult<ObserveElection>;
    fn handle(&mut self, _: ObserveElection, _: &mut Context<Self>) -> Self::Result {
        let e = &self.election;
        MessageResult(ElectionStatus {
            role: e.role(),
            term: e.term(),
            leader: e.leader(),
            voted_for: e.voted_for(),
            transfer_target: e.transfer_target(),
            lease_held: match self.lease.state(self.clock.now(), self.clock.now()) {
                LeaseState::Held => Some(true),
                LeaseState::Expired => Some(false),
                LeaseState::NotLeading | LeaseState::NotNeeded => None,
            },
            behind: (e.last_log() < e.log_floor()).then_some(e.log_floor()),
        })
    }
}

impl Handler<LeaseAnswer> for ElectionActor {
    type Result = ();
    fn handle(&mut self, msg: LeaseAnswer, _: &mut Context<Self>) {
        if self.lease.on_answer(msg.from, msg.term, msg.sent_at) {
            self.settle_waiters();
        }
    }
}

impl Handler<ConfirmLease> for ElectionActor {
    type Result = ResponseFuture<bool>;
    fn handle(&mut self, _: ConfirmLease, ctx: &mut Context<Self>) -> Self::Result {
        let now = self.clock.now();
        match self.lease.state(now, now) {
            LeaseState::Held | LeaseState::NotNeeded => return Box::pin(async { true }),
            LeaseState::NotLeading => return Box::pin(async { false }),
            LeaseState::Expired => {}
        }
        Metrics::add(&self.cx.metrics.lease_waits, 1);
        debug!(library_id = %self.cx.library_id, term = self.election.term(),
            "lease expired: the write waits for a heartbeat round");
        let (tx, rx) = oneshot::channel();
        let id = self.next_waiter;
        self.next_waiter = self.next_waiter.wrapping_add(1);
        self.waiters.push((id, now, tx));
        if self.lease.wants_round(now, now) {
            self.send_round();
        }
        ctx.run_later(self.cx.config.leader_timeout, move |this, _| {
            if let Some(i) = this.waiters.iter().position(|(w, ..)| *w == id) {
                let (_, _, tx) = this.waiters.swap_remove(i);
                let _ = tx.send(false);
            }
        });
        let metrics = self.cx.metrics.clone();
        Box::pin(async move {
            let confirmed = rx.await.unwrap_or(false);
            if !confirmed {
                Metrics::add(&metrics.lease_unconfirmed, 1);
            }
            confirmed
        })
    }
}

/// Test only: makes the election actor panic in a handler.
#[cfg(test)]
impl Handler<crate::messages::InjectPanic> for ElectionActor {
    type Result = ();
    fn handle(&mut self, _: crate::messages::InjectPanic, _: &mut Context<Self>) {
        panic!("injected panic in the election actor");
    }
}

/// An election request read from the wire ([`election_request`]).
#[derive(Debug, Clone, PartialEq)]
pub enum ElectionRequest {
    /// A vote (or pre-vote) request, sent by its candidate.
    Vote(VoteRequest),
    /// A leadership transfer's `TimeoutNow` from `from`, a member.
    TimeoutNow { from: Uuid, term: u64 },
    /// Anything else: refused with this `BadRequest` answer.
    Refused(SyncMessage),
}

/// Reads an inbound election message from `from` (the sender's device when it is a member): a
/// `RequestVote` only from the candidate it names, a `TimeoutNow` only from a member; anything
/// else is refused ([`ElectionRequest::Refused`]). The election actor and the
/// simulator's device (sim/src/device.rs) both read requests with it.
pub fn election_request(
    library_id: Uuid,
    message: SyncMessage,
    from: Option<Uuid>,
) -> ElectionRequest {
    match (message, from) {
        (
            SyncMessage::RequestVote {
                term,
                candidate,
                last_log_term,
                last_log_sequence,
                transfer,
                pre_vote,
                ..
            },
            Some(from),
        ) if from == candidate => ElectionRequest::Vote(VoteRequest {
            term,
            candidate,
            last_log_term,
            last_log_sequence,
            transfer,
            pre_vote,
        }),
        (SyncMessage::TimeoutNow { term, .. }, Some(from)) => {
            ElectionRequest::TimeoutNow { from, term }
        }
        (other, _) => ElectionRequest::Refused(SyncMessage::error(
            library_id,
            ErrorCode::BadRequest,
            format!("{} from a device that is not its sender", other.kind()),
        )),
    }
}

/// The `RequestVote` message of [`Action::SendRequestVote`].
pub fn request_vote(library_id: Uuid, request: &VoteRequest) -> SyncMessage {
    SyncMessage::RequestVote {
        pre_vote: request.pre_vote,
        library_id,
        term: request.term,
        candidate: request.candidate,
        last_log_term: request.last_log_term,
        last_log_sequence: request.last_log_sequence,
        transfer: request.transfer,
    }
}

/// The `Vote` message of [`Action::SendVoteResponse`].
pub fn vote(library_id: Uuid, response: &VoteResponse) -> SyncMessage {
    SyncMessage::Vote {
        pre_vote: response.pre_vote,
        library_id,
        term: response.term,
        voter: response.voter,
        granted: response.granted,
    }
}

/// The vote a `Vote` message carries; `None` for any other message.
pub fn vote_of(message: &SyncMessage) -> Option<VoteResponse> {
    match *message {
        SyncMessage::Vote { term, voter, granted, pre_vote, .. } => {
            Some(VoteResponse { term, voter, granted, pre_vote })
        }
        _ => None,
    }
}

/// The answer to an election request that needed no vote (a `TimeoutNow`): this device's view
/// of the election, as a `Heartbeat`.
pub fn view<R: rand::Rng>(library_id: Uuid, election: &Election<R>) -> SyncMessage {
    let pos = election.last_log();
    SyncMessage::Heartbeat {
        commit_sequence: 0,
        features: 0,
        library_id,
        term: election.term(),
        current_sequence: pos.sequence,
        last_term: pos.term,
        role: election.role(),
        last_hash: None,
    }
}

/// The [`RoleChange`] the role actors are told of when the election makes this device `role`
/// in `term` (its leader and vote as the election holds them now).
pub fn role_change<R: rand::Rng>(role: SyncRole, term: u64, election: &Election<R>) -> RoleChange {
    RoleChange { role, term, leader: election.leader(), voted_for: election.voted_for() }
}

/// The persisted election state of a library.
pub fn persisted_of(state: &lsync_storage::SyncState) -> PersistedElection {
    PersistedElection {
        term: state.current_term,
        voted_for: state.voted_for,
        leader: state.leader_device,
    }
}

/// The sync state a library starts from — the SyncService (and the simulator) call it once,
/// before starting any role or the election: the stored state (the election record over the
/// row, [`Database::sync_state`]) restarted by [`PersistedElection::restarted`] — a device
/// whose election record already names it leader of its term comes back a follower of that
/// term, with no leader — and recorded: the election record is written, fsynced, for the
/// state it starts in before anything runs, so that the next start knows this device ran in
/// that term (docs/architecture.md, "Terms and votes on disk").
pub fn start_state(db: &Database) -> Result<SyncState, StorageError> {
    let state = db.sync_state()?;
    let me = state.device_id;
    let record = db.election_record()?;
    let led_before = record.is_some_and(|r| r.term == state.current_term && r.leader == Some(me));
    let stored = persisted_of(&state);
    let start = stored.restarted(me, led_before);
    let role = if start.leader == Some(me) { SyncRole::Leader } else { SyncRole::Follower };
    if start != stored {
        info!(library_id = %state.library_id, term = start.term,
            "this device led term {} before it restarted; it never leads that term again \
             and campaigns for a new one if it must lead", start.term);
    }
    let record =
        ElectionRecord { term: start.term, voted_for: start.voted_for, leader: start.leader };
    db.persist_election(role, &record)?;
    Ok(SyncState {
        role,
        current_term: start.term,
        voted_for: start.voted_for,
        leader_device: start.leader,
        ..state
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(granted: bool, pre_vote: bool) -> VoteResponse {
        VoteResponse { term: 4, voter: Uuid::from_u128(2), granted, pre_vote }
    }

    fn open(dir: &std::path::Path) -> Database {
        Database::open(
            &dir.join("library.db"),
            &lsync_storage::StorageOptions::default(),
            lsync_storage::ModelRegistry::with_builtin(),
        )
        .unwrap()
    }

    fn founder_state(me: Uuid) -> SyncState {
        SyncState {
            library_id: Uuid::from_u128(100),
            device_id: me,
            role: SyncRole::Leader,
            current_term: 1,
            voted_for: Some(me),
            leader_device: Some(me),
            last_synced_sequence: 0,
        }
    }

    /// A transfer target is caught up only when its fresh answer ends exactly at the
    /// leader's head: same sequence, term and chain hash, in this term.
    #[test]
    fn a_transfer_target_is_caught_up_only_at_the_leaders_head_and_hash() {
        use lsync_protocol::ChainHash;
        let lib = Uuid::from_u128(100);
        let head =
            LogHead { position: LogPosition { sequence: 40, term: 3 }, hash: ChainHash([4; 32]) };
        let answer = |term, sequence, last_term, hash| SyncMessage::Heartbeat {
            commit_sequence: 0,
            features: lsync_protocol::FEATURE_VERSION,
            library_id: lib,
            term,
            current_sequence: sequence,
            last_term,
            role: SyncRole::Follower,
            last_hash: hash,
        };
        let ours = Some(ChainHash([4; 32]));
        assert!(target_caught_up(&answer(3, 40, 3, ours), 3, &head));
        // an older peer without hashes: sequence and term
        assert!(target_caught_up(&answer(3, 40, 3, None), 3, &head));
        // behind (its tail lost since it acknowledged), ahead, another term there, another
        // entry there (a restored copy), another current term, or not a heartbeat
        assert!(!target_caught_up(&answer(3, 39, 3, ours), 3, &head));
        assert!(!target_caught_up(&answer(3, 41, 3, ours), 3, &head));
        assert!(!target_caught_up(&answer(3, 40, 2, ours), 3, &head));
        assert!(!target_caught_up(&answer(3, 40, 3, Some(ChainHash([5; 32]))), 3, &head));
        assert!(!target_caught_up(&answer(4, 40, 3, ours), 3, &head));
        let refusal = SyncMessage::error(lib, ErrorCode::StaleTerm, "stale");
        assert!(!target_caught_up(&refusal, 3, &head));
    }

    #[test]
    fn the_first_start_of_a_created_library_leads_its_term_and_records_it() {
        let dir = tempfile::tempdir().unwrap();
        let me = Uuid::from_u128(1);
        let db = open(dir.path());
        db.init_sync_state(&founder_state(me)).unwrap();
        assert_eq!(start_state(&db).unwrap(), founder_state(me));
        let recorded = ElectionRecord { term: 1, voted_for: Some(me), leader: Some(me) };
        assert_eq!(db.election_record().unwrap(), Some(recorded));
    }

    #[test]
    fn a_leader_that_restarts_comes_back_a_follower_of_its_term_with_no_leader() {
        let dir = tempfile::tempdir().unwrap();
        let me = Uuid::from_u128(1);
        let db = open(dir.path());
        db.init_sync_state(&founder_state(me)).unwrap();
        start_state(&db).unwrap();
        drop(db);
        let db = open(dir.path());
        let restarted = start_state(&db).unwrap();
        let follower =
            SyncState { role: SyncRole::Follower, leader_device: None, ..founder_state(me) };
        assert_eq!(restarted, follower);
        assert_eq!(db.sync_state().unwrap(), follower, "the demotion is persisted");
        let recorded = ElectionRecord { term: 1, voted_for: Some(me), leader: None };
        assert_eq!(db.election_record().unwrap(), Some(recorded));
    }

    #[test]
    fn a_follower_that_restarts_keeps_its_term_vote_and_leader() {
        let dir = tempfile::tempdir().unwrap();
        let (me, leader) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let db = open(dir.path());
        let follower = SyncState {
            role: SyncRole::Follower,
            current_term: 7,
            voted_for: Some(leader),
            leader_device: Some(leader),
            ..founder_state(me)
        };
        db.init_sync_state(&follower).unwrap();
        assert_eq!(start_state(&db).unwrap(), follower);
        assert_eq!(start_state(&db).unwrap(), follower);
    }

    #[test]
    fn a_database_behind_its_high_water_mark_raises_the_election_floor_to_it() {
        let dir = tempfile::tempdir().unwrap();
        let me = Uuid::from_u128(1);
        let db = open(dir.path());
        db.init_sync_state(&founder_state(me)).unwrap();
        let config = lsync_protocol::Configuration::new(
            lsync_protocol::FEATURE_VERSION,
            vec![lsync_protocol::Member {
                device_id: me,
                peer_id: PeerId::random().to_string(),
                addresses: vec![],
                name: "a".into(),
                role: lsync_protocol::MemberRole::Voter,
                preference: lsync_protocol::RolePreference::Auto,
            }],
        );
        lsync_storage::TransactionManager::new(db.clone(), me).commit_config(&config).unwrap();
        let held = LogPosition { term: 1, sequence: 1 };
        assert_eq!(db.raise_mark().unwrap(), held);
        assert_eq!(db.election_floor().unwrap(), held, "caught up: the floor is the log's end");
        // The database goes back (a restored copy): the mark, outside it, says what was held.
        let before = LogPosition { term: 1, sequence: 7 };
        let mark = lsync_storage::sync_state::mark_path(db.path());
        lsync_storage::sync_state::write_mark(&mark, before).unwrap();
        assert_eq!(db.raise_mark().unwrap(), before, "a mark is never lowered");
        assert_eq!(db.election_floor().unwrap(), before);
        assert!(db.last_position().unwrap() < db.election_floor().unwrap());
    }

    /// The service's side of an election actor under test: it records the stamps of the
    /// heartbeat rounds it is asked to send (and sends none: the test answers for the peers).
    struct RoundSink {
        rounds: Arc<std::sync::Mutex<Vec<Duration>>>,
    }

    impl Actor for RoundSink {
        type Context = Context<Self>;
    }

    impl Handler<HeartbeatNow> for RoundSink {
        type Result = ();
        fn handle(&mut self, msg: HeartbeatNow, _: &mut Context<Self>) {
            self.rounds.lock().unwrap().push(msg.sent_at);
        }
    }

    impl Handler<RoleChange> for RoundSink {
        type Result = ();
        fn handle(&mut self, _: RoleChange, _: &mut Context<Self>) {}
    }

    /// The leader of term 1 of a three-voter library (itself and two peers), its lease read
    /// from a fake clock, as the election actor of a running node has it: its mailbox, the
    /// rounds it sent, its metrics and its two peers. No network: the peers' answers to a
    /// round are the [`LeaseAnswer`]s the test sends, as the link actors would.
    struct LeaseRig {
        addr: Addr<ElectionActor>,
        rounds: Arc<std::sync::Mutex<Vec<Duration>>>,
        metrics: Arc<Metrics>,
        peers: [Uuid; 2],
        _dir: tempfile::TempDir,
    }

    impl LeaseRig {
        fn start(clock: Arc<super::super::clock::FakeClock>, config: SyncConfig) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let library_id = Uuid::from_u128(100);
            let (db, _) = crate::testkit::leader_db(&dir, library_id, 0);
            let me = db.sync_state().unwrap().device_id;
            let peers = [Uuid::from_u128(2), Uuid::from_u128(3)];
            let voters = [me, peers[0], peers[1]];
            let rounds = Arc::new(std::sync::Mutex::new(Vec::new()));
            let sink = RoundSink { rounds: rounds.clone() }.start();
            let metrics = Arc::new(Metrics::default());
            let transport = crate::testkit::ScriptedTransport::new(|_, _| {
                Err(crate::transport::NetworkError::Dial("no network in this test".into()))
            });
            let cx = ElectionContext {
                library_id,
                device_id: me,
                db,
                transport,
                config,
                events: broadcast::channel(16).0,
                metrics: metrics.clone(),
                members: voters.iter().map(|d| (*d, PeerId::random())).collect(),
                membership: Membership::all_voters(voters),
                persisted: PersistedElection { term: 1, voted_for: Some(me), leader: Some(me) },
                role_changes: sink.clone().recipient(),
                heartbeats: sink.recipient(),
                writes_paused: Arc::default(),
                hints: None,
            };
            let addr = ElectionActor::with_clock(cx, clock).start();
            Self { addr, rounds, metrics, peers, _dir: dir }
        }

        /// The stamp of round `n` (0: the first), once the actor sent it.
        async fn round(&self, n: usize) -> Duration {
            crate::testkit::wait_for("a heartbeat round", || self.rounds.lock().unwrap().len() > n)
                .await;
            self.rounds.lock().unwrap()[n]
        }

        /// Peer `i` answers, in term 1, the round stamped `sent_at`.
        fn answer(&self, i: usize, sent_at: Duration) {
            self.addr.do_send(LeaseAnswer { from: self.peers[i], term: 1, sent_at });
        }

        /// Whether the leader holds its lease (after every message sent before).
        async fn lease_held(&self) -> Option<bool> {
            self.addr.send(ObserveElection).await.unwrap().lease_held
        }

        /// Asks [`ConfirmLease`] as a committed write does; the answer arrives on the receiver.
        fn confirm(&self) -> oneshot::Receiver<bool> {
            let (tx, rx) = oneshot::channel();
            let asked = self.addr.send(ConfirmLease);
            actix_rt::spawn(async move {
                let _ = tx.send(asked.await.unwrap_or(false));
            });
            rx
        }
    }

    fn count(counter: &std::sync::atomic::AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Waits (generous deadline) for the answer to a [`LeaseRig::confirm`].
    async fn answered(rx: oneshot::Receiver<bool>) -> bool {
        tokio::time::timeout(Duration::from_secs(60), rx)
            .await
            .expect("the write was answered within the deadline")
            .expect("the confirmation was answered")
    }

    /// issue 16, "the lease clock": the lease clock jumps an hour (the machine slept, the
    /// process was stopped) while the leader's peers stay reachable. The leader stops
    /// answering writes as committed at once — the next write waits, and a fresh heartbeat
    /// round goes out, stamped after the jump; late answers to the round before it do not
    /// count — and answers it as soon as a majority answered that fresh round.
    #[actix_rt::test]
    async fn a_leader_whose_lease_clock_jumps_past_the_lease_answers_only_after_a_fresh_round() {
        let clock = Arc::new(super::super::clock::FakeClock::new(Duration::from_secs(1_000), true));
        // default timers: leader timeout 60 s, lease 48 s, heartbeats every 30 s (real time)
        let rig = LeaseRig::start(clock.clone(), SyncConfig::default());
        // a resumed leader heartbeats at once; one peer's answer makes two of three voters
        let first = rig.round(0).await;
        rig.answer(0, first);
        assert_eq!(rig.lease_held().await, Some(true));
        assert!(answered(rig.confirm()).await, "held: answered at once");
        clock.jump(Duration::from_secs(10));
        assert!(answered(rig.confirm()).await, "10 s later, still within the lease");
        assert_eq!(count(&rig.metrics.lease_waits), 0, "no write waited");
        assert_eq!(rig.rounds.lock().unwrap().len(), 1, "no round was needed");

        // the lid closes for an hour; the boot clock counts it
        clock.jump(Duration::from_secs(3_600));
        assert_eq!(rig.lease_held().await, Some(false), "the lease ended at the first reading");
        let mut waiting = rig.confirm();
        let fresh = rig.round(1).await;
        assert_eq!(fresh, clock.now(), "the write's round is stamped after the jump");
        assert_eq!(count(&rig.metrics.lease_waits), 1, "the write waits for it");
        // both peers' answers to the round before the jump arrive late: they vouch for nothing
        rig.answer(0, first);
        rig.answer(1, first);
        assert_eq!(rig.lease_held().await, Some(false));
        assert!(waiting.try_recv().is_err(), "not answered committed on an old round");

        // a peer answers the fresh round: two of three voters heard this leader after the jump
        rig.answer(1, fresh);
        assert!(answered(waiting).await, "answered committed after one round");
        assert_eq!(rig.lease_held().await, Some(true));
        assert!(answered(rig.confirm()).await, "and the next write at once");
        assert_eq!(rig.rounds.lock().unwrap().len(), 2);
        assert_eq!(count(&rig.metrics.lease_unconfirmed), 0);
    }

    /// The same jump with both peers gone silent: the waiting write is never answered
    /// committed; it gets `false` (the node answers `OutcomeUnknown`) within the leader
    /// timeout, once the time is up or check quorum deposes the leader.
    #[actix_rt::test]
    async fn a_leader_whose_lease_clock_jumps_and_whose_peers_are_silent_never_confirms() {
        let clock = Arc::new(super::super::clock::FakeClock::new(Duration::from_secs(1_000), true));
        // a short leader timeout (real time), so that the wait ends within the test
        let config = SyncConfig {
            heartbeat_interval: Duration::from_secs(1),
            leader_timeout: Duration::from_secs(3),
            ..SyncConfig::default()
        };
        let rig = LeaseRig::start(clock.clone(), config);
        let first = rig.round(0).await;
        rig.answer(0, first);
        assert!(answered(rig.confirm()).await, "held before the jump");

        clock.jump(Duration::from_secs(3_600));
        let waiting = rig.confirm();
        assert!(!answered(waiting).await, "no majority answered after the jump: not committed");
        assert_eq!(count(&rig.metrics.lease_waits), 1);
        assert_eq!(count(&rig.metrics.lease_unconfirmed), 1);
        // every round after the first was stamped after the jump, and none was answered
        let rounds = rig.rounds.lock().unwrap().clone();
        assert!(rounds.len() >= 2 && rounds[1..].iter().all(|r| *r >= clock.now()), "{rounds:?}");
    }

    #[test]
    fn a_refused_pre_vote_with_no_leader_known_asks_the_voter_who_leads() {
        assert!(probe_for_leader(&answer(false, true), None));
    }

    #[test]
    fn nothing_is_asked_with_a_leader_known_for_a_granted_pre_vote_or_for_a_real_vote() {
        assert!(!probe_for_leader(&answer(false, true), Some(Uuid::from_u128(9))));
        assert!(!probe_for_leader(&answer(true, true), None));
        // a refused real vote: this device campaigns in a term no leader holds yet
        assert!(!probe_for_leader(&answer(false, false), None));
    }
}
