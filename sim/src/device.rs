//! One simulated device: the product's machines and storage, run by a shell of this simulator
//! instead of the actors.
//!
//! What runs is the product's own code: the election ([`Election`]), the follower's
//! [`Replicator`], the leader's [`LeaderCore`] and one [`FollowerLink`] per follower, the
//! [`ProposerCore`], the routing of inbound requests ([`route`]), the leader's serving
//! ([`serve`], [`serve_cached`], [`serve_proposal`]) and the storage crate on a real SQLite
//! database. What this file adds is what the actors add around them, rule for rule:
//!
//! | actor (actors/src) | here |
//! |---|---|
//! | `ElectionActor` (election/actor.rs): persist before acting, vote replies | [`Device::election`] |
//! | `SyncService` (service/mod.rs): role changes, the configuration in effect, leader hints | [`Device::service`] |
//! | `LeaderActor` (leader/actor.rs): commit events, configuration writes | [`Device::core`] |
//! | `LinkActor` (leader/link_actor.rs): the transport and storage of one link | [`Device::link`] |
//! | `FollowerActor` (follower/actor.rs): the transport and storage of the replicator | [`Device::follower`] |
//! | `Proposer` (proposer/mod.rs): the outbox's storage and transport | [`Device::proposer`] |
//! | `Node::write` (src/node.rs): commit when leading, else the outbox | [`Device::write`] |
//! | the leader lease (election/actor.rs, `ConfirmLease`, `LeaseAnswer`) | [`Device::confirm_lease`] |
//!
//! Each actor's mailbox is a [`Work`] item in one queue, processed in order: a machine's
//! commands for another actor become work at the back of the queue, as messages would; a
//! storage call is made at once and its result queued (the blocking pool answering later);
//! the election's persist and the leader actor's configuration write complete before anything
//! after them, as their actors wait for them. Work for a role that has stopped is dropped,
//! as a stopped actor's mailbox is.
//!
//! The leader lease is the product's own [`Lease`] machine, fed as the election actor feeds it
//! (its term and transfers from the election after every step of it, the voters of each
//! configuration, every heartbeat round stamped before it goes out, the link's report of each
//! follower's answer to a round) and read from the world's [`BootClock`], which counts while
//! a device is paused or suspended as `CLOCK_BOOTTIME` does. Every answer that says committed
//! on a leader — the host's write, the proposer's local delivery, a member's `Propose` — asks
//! it after the commit, immediately before the answer, and waits for a round when it expired
//! (docs/architecture.md, "The leader lease"). `Options::lease` false answers without it (to
//! show what the checker finds then).
//!
//! Not simulated: invitations and `Join` (a device joins by a configuration change the leader
//! makes and a database set up as `Node::join_library` sets one up), address hints, leadership
//! transfers, bulk jobs, metrics and events.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use libp2p::PeerId;
use lsync_actors::config::SyncConfig;
use lsync_actors::election::actor::{
    election_request, persisted_of, probe_for_leader, request_vote, role_change, start_state, view,
    vote, vote_of, ElectionRequest,
};
use lsync_actors::election::lease::{lease_duration, Lease, LeaseClock, LeaseState};
use lsync_actors::election::{
    Action, Election, ElectionConfig, Membership as ElectionMembership, VoteRequest, VoteResponse,
};
use lsync_actors::follower::effects::{fetch_entries, StorageCall, StorageDone};
use lsync_actors::follower::{
    self, BatchOutcome, Command as FollowerCommand, Leader as FollowerLeader, Replicator, ReplyTo,
    RequestId as FetchId,
};
use lsync_actors::leader::context::{new_log_cache, write_config, LeaderShared, LinkContext};
use lsync_actors::leader::core::{Command as CoreCommand, CoreConfig, LeaderCore};
use lsync_actors::leader::link::{
    new_entries, Command as LinkCommand, FollowerLink, LeaderView as LinkView,
};
use lsync_actors::leader::messages::{
    carries_last_hash, commit_hashes, ConfigError, ConfigOutcome, FollowerProgress, NewCommit,
};
use lsync_actors::leader::serve::{leader_heartbeat, serve, serve_cached, storage_failure};
use lsync_actors::messages::{
    who_leads, ElectionInput, FollowerMembership, LeaderHint, LeaderReport, RoleChange,
};
use lsync_actors::proposer::{
    deliver_locally, entries_at_least, lease_unconfirmed, majority_holds, propose, serve_proposal,
    Command as ProposerCommand, Delivery, LeaderView as ProposerView, MajorityView, ProposerCore,
    SubmitOutcome, Target, LEASE_UNCONFIRMED,
};
use lsync_actors::service::{
    follows_hint, keeps_role_actors, route, Heard, PeerBook, Route, RouteView, Serving,
};
use lsync_actors::{Metrics, NetworkError, Transport};
use lsync_protocol::{ErrorCode, MembershipChange, SyncMessage, SyncRole};
use lsync_storage::{
    Applier, Change, CommitEvent, Database, ElectionRecord, Membership, StorageError, SyncState,
    TransactionManager,
};
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::net::{Ix, RequestId as NetId};
use crate::oracle::Outcome;

/// A device's name for one request it sent, to match the answer.
pub type Token = u64;

/// How long a `majority` write waits for a majority to hold it before it is answered pending:
/// `Node::write_with` waits the request timeout (the simulated network's, 2 s).
pub const MAJORITY_TIMEOUT: Duration = Duration::from_secs(2);

/// A `majority` write answered committed by the leader, waiting until this device sees a
/// majority hold it (`Node::write_with`'s wait, [`majority_holds`]).
#[derive(Debug, Clone, Copy)]
struct MajorityWait {
    write: usize,
    proposal_id: Uuid,
    /// How many entries the proposal writes at least ([`entries_at_least`]).
    expected: usize,
    answered: (u64, u64),
    deadline: Instant,
}

/// The devices' lease clock: the simulation's time since its start, shared by every device of
/// one world. It counts while a device is paused (SIGSTOP) or suspended (a laptop lid), as
/// `CLOCK_BOOTTIME` does, unlike the device's monotonic clock (which skips a suspend); a device
/// that restarts reads on from where it was (the machine did not reboot).
#[derive(Debug, Clone, Default)]
pub struct BootClock(Arc<AtomicU64>);

impl BootClock {
    /// The simulation's time is now `micros` since its start.
    pub fn set(&self, micros: u64) {
        self.0.store(micros, Ordering::Relaxed);
    }
}

impl LeaseClock for BootClock {
    fn now(&self) -> Duration {
        Duration::from_micros(self.0.load(Ordering::Relaxed))
    }

    fn counts_suspend(&self) -> bool {
        true
    }
}

/// An answer that says committed, waiting for the leader lease ([`Device::confirm_lease`]):
/// the three paths on which a leader answers so (docs/architecture.md, "The leader lease").
#[derive(Debug)]
enum AfterLease {
    /// The host's write (`Node::write`), committed here at `first..=last`: answered
    /// `Committed` (then, at `majority`, once a majority holds it), or `OutcomeUnknown`.
    Write { write: usize, first: u64, last: u64 },
    /// The proposer's local delivery of this device's outbox entry (proposer/mod.rs,
    /// `deliver`): delivered, or a failed attempt (`LEASE_UNCONFIRMED`) retried later.
    Local { proposal_id: Uuid, delivery: Delivery },
    /// A member's `Propose` (the service's `Route::Propose`): answered `reply`, a
    /// `ProposalResult`, or `lease_unconfirmed`.
    Propose { id: NetId, reply: SyncMessage },
}

/// A committed answer waiting for a heartbeat round (the election actor's `waiters`).
#[derive(Debug)]
struct LeaseWaiter {
    /// When it asked (a reading of the lease clock).
    asked_at: Duration,
    /// When it gives up, unconfirmed: one leader timeout after it asked, on the device's
    /// monotonic clock (the actor's `run_later`).
    deadline: Instant,
    /// The term the leader committed it in.
    term: u64,
    /// The answer it waits to give.
    then: AfterLease,
}

/// What the device asks of the simulation.
#[derive(Debug, Clone)]
pub enum Output {
    /// Send `msg` to `to`; answer with [`Device::response`] or [`Device::failure`] and `token`.
    Request { to: PeerId, msg: SyncMessage, token: Token },
    /// Answer the inbound request `id`.
    Respond { id: NetId, msg: SyncMessage },
    /// The write `write` was told `outcome`.
    Answer { write: usize, outcome: Outcome },
    /// The membership change `token` was answered.
    Changed { token: u64, result: Result<ConfigOutcome, ConfigError> },
    /// This device, leading `term`, published a commit sequence.
    Committed { term: u64, commit_sequence: u64 },
    /// Something worth a line in the trace (repair, refused batches, deliveries).
    Note(String),
    /// The leader lease decided an answer that says committed, for a write this device
    /// committed as leader of `term` with `voters` voters: `confirmed` (the answer says
    /// committed now) or not (it says unknown, or the delivery is retried); `waited` if it found
    /// the lease expired and waited for a round.
    Lease { term: u64, voters: usize, confirmed: bool, waited: bool },
}

/// Why a device could not start.
pub type BootError = StorageError;

/// Someone's request in flight, to route its answer.
#[derive(Debug, Clone, Copy)]
enum Pending {
    Vote,
    /// A voter that refused a pre-vote asked who leads.
    LeaderProbe,
    TimeoutNow,
    Fetch(FetchId),
    Ack(FetchId),
    Heartbeat(FetchId),
    Notify(PeerId),
    /// A heartbeat of the round stamped `.1` (the lease clock).
    LeaderHeartbeat(PeerId, Duration),
    Propose(Uuid),
}

/// A message to one of the device's actors.
#[derive(Debug)]
enum Work {
    // ElectionActor
    ElectionInput(ElectionInput),
    VoteRequest {
        reply: NetId,
        request: VoteRequest,
    },
    TimeoutNow {
        reply: NetId,
        from: Uuid,
        term: u64,
    },
    Vote(VoteResponse),
    SetMembership,
    Resign,
    ElectionTick,
    /// A link's report: the follower `from` answered, in `term`, the round stamped `sent_at`.
    LeaseAnswer {
        from: Uuid,
        term: u64,
        sent_at: Duration,
    },
    // SyncService
    RoleChange(RoleChange),
    Install(Membership),
    FollowerMembership(FollowerMembership),
    Hint(LeaderHint),
    /// A heartbeat round stamped with the lease clock.
    HeartbeatNow(Duration),
    Left(PeerId),
    // LeaderActor (role generation)
    Commit(u64, CommitEvent),
    Progress(u64, FollowerProgress),
    Change {
        change: MembershipChange,
        token: u64,
        wait: Duration,
    },
    CoreTick(u64),
    // LinkActor
    Link(u64, PeerId, LinkInput),
    // FollowerActor
    Follower(u64, FollowerInput),
    // Proposer
    Proposer(ProposerInput),
}

#[derive(Debug)]
enum LinkInput {
    Commit(NewCommit),
    NotifyAnswer(Option<SyncMessage>),
    HeartbeatTick(Duration),
    HeartbeatAnswer(SyncMessage, Duration),
    Request(NetId, SyncMessage),
    Leaving(u64),
    Tick,
}

#[derive(Debug)]
enum FollowerInput {
    Request(NetId, PeerId, SyncMessage),
    Fetched(FetchId, Result<SyncMessage, NetworkError>),
    Acked(FetchId, Result<SyncMessage, NetworkError>),
    Heartbeat(FetchId, Result<SyncMessage, NetworkError>),
    Storage(StorageDone),
    Tick,
}

#[derive(Debug)]
enum ProposerInput {
    Wake,
    Leader(ProposerView),
    Members(BTreeMap<Uuid, PeerId>),
    Submitted(Uuid, u64),
    Listed(Result<Vec<lsync_storage::OutboxEntry>, String>),
    Delivered(Uuid, Delivery),
    Tick,
}

struct Lead {
    core: LeaderCore,
    links: BTreeMap<PeerId, Link>,
    shared: Arc<LeaderShared>,
    cx: LinkContext,
}

struct Link {
    link: FollowerLink,
    /// The follower's device.
    device: Uuid,
    /// The stamp of the last heartbeat round (the link actor's `round`).
    round: Duration,
    replies: BTreeMap<u64, NetId>,
    next: u64,
}

struct Follow {
    rep: Replicator<StdRng>,
    leader: PeerId,
    leader_device: Option<Uuid>,
    replies: BTreeMap<u64, NetId>,
    next: u64,
}

enum Role {
    Idle,
    Leader(Box<Lead>),
    Follower(Box<Follow>),
}

/// A transport that is never used: the link actor context wants one, serving never sends.
struct NoTransport;

impl Transport for NoTransport {
    fn request(
        &self,
        _: PeerId,
        _: SyncMessage,
    ) -> lsync_actors::transport::BoxFuture<Result<SyncMessage, NetworkError>> {
        Box::pin(async { Err(NetworkError::Closed) })
    }
}

/// One device of the simulation, up (a crash drops it; [`Device::boot`] starts it again from
/// its disk).
pub struct Device {
    /// When this device, idle, last asked who leads.
    asked_who_leads: Option<Instant>,
    /// The members of the configuration this device last knew that its database's lacks, let
    /// in while it is behind its high-water mark (`Database::admitted_while_behind`, as the
    /// service's `restored`).
    restored: Vec<lsync_protocol::Member>,
    /// `LSYNC_SIM_DEBUG` is set: the follower's commands and fetch answers go to the trace too.
    debug: bool,
    pub ix: Ix,
    pub id: Uuid,
    pub peer: PeerId,
    library_id: Uuid,
    config: SyncConfig,
    db: Database,
    tm: TransactionManager,
    commits: broadcast::Receiver<CommitEvent>,
    metrics: Arc<Metrics>,
    events: broadcast::Sender<lsync_actors::SyncEvent>,
    election: Election<StdRng>,
    state: SyncState,
    membership: Membership,
    /// The other members' peers, and leaders let in by a hint (as the service's).
    peers: PeerBook,
    leaving: BTreeSet<PeerId>,
    role: Role,
    role_gen: u64,
    proposer: ProposerCore<StdRng>,
    pending: BTreeMap<Token, (Pending, u64)>,
    next_token: Token,
    answers: BTreeMap<u64, usize>,
    next_answer: u64,
    leader_commit: u64,
    /// The writes asked at the `majority` level (write → proposal, entries it writes at
    /// least), until answered.
    majority: BTreeMap<usize, (Uuid, usize)>,
    waits: Vec<MajorityWait>,
    commit_watch: u64,
    removed_hint: Option<String>,
    work: VecDeque<Work>,
    out: Vec<Output>,
    now: Instant,
    now_ms: i64,
    /// When the proposer next looks over the outbox whatever happened (its sweep).
    next_sweep: Instant,
    /// The leader lease (the election actor's), its clock, and whether answers ask it.
    lease: Lease,
    lease_clock: BootClock,
    lease_on: bool,
    /// How many voters the lease counts.
    lease_voters: usize,
    lease_waiters: Vec<LeaseWaiter>,
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn election_membership(m: &Membership) -> ElectionMembership {
    ElectionMembership::new(m.configuration.voters(), m.configuration.learners())
        .with_previous(m.previous_voters.clone())
}

impl Device {
    /// Starts device `ix` from its database, as the service starts a library: the state and
    /// the configuration in effect from disk, the proposer, the role, the election.
    #[allow(clippy::too_many_arguments)]
    pub fn boot(
        ix: Ix,
        id: Uuid,
        peer: PeerId,
        db: Database,
        config: SyncConfig,
        seed: u64,
        now: Instant,
        now_ms: i64,
        lease_clock: BootClock,
        lease_on: bool,
    ) -> Result<(Self, Vec<Output>), BootError> {
        let state = start_state(&db)?;
        let membership = db.membership()?;
        let tm = TransactionManager::new(db.clone(), id);
        let commits = tm.subscribe();
        let election = Election::new(
            id,
            election_membership(&membership),
            persisted_of(&state),
            ElectionConfig::from_sync(&config),
            now,
            StdRng::seed_from_u64(seed),
        );
        let proposer = ProposerCore::new(
            id,
            config.backoff_initial,
            config.backoff_max,
            StdRng::seed_from_u64(seed ^ 0x5eed),
        );
        let (events, _) = broadcast::channel(16);
        // as the election actor starts its lease: the latest configuration's voters, and the
        // previous ones while the change is not known committed
        let duration = lease_duration(config.leader_timeout);
        let mut lease = Lease::new(id, duration, lease_clock.counts_suspend());
        let m = election_membership(&membership);
        let lease_voters = m.voters().len();
        lease.set_voters(m.voters().clone(), m.previous_voters().cloned());
        let mut d = Self {
            asked_who_leads: None,
            restored: Vec::new(),
            debug: std::env::var_os("LSYNC_SIM_DEBUG").is_some(),
            ix,
            id,
            peer,
            library_id: state.library_id,
            config,
            db,
            tm,
            commits,
            metrics: Arc::new(Metrics::default()),
            events,
            election,
            state,
            membership: membership.clone(),
            peers: PeerBook::default(),
            leaving: BTreeSet::new(),
            role: Role::Idle,
            role_gen: 0,
            proposer,
            pending: BTreeMap::new(),
            next_token: 0,
            answers: BTreeMap::new(),
            next_answer: 0,
            leader_commit: 0,
            majority: BTreeMap::new(),
            waits: Vec::new(),
            commit_watch: u64::MAX,
            removed_hint: None,
            work: VecDeque::new(),
            out: Vec::new(),
            now,
            now_ms,
            next_sweep: now + lsync_actors::proposer::SWEEP,
            lease,
            lease_clock,
            lease_on,
            lease_voters,
            lease_waiters: Vec::new(),
        };
        d.sync_lease();
        // as the service's setup: keep the configuration in effect if newer than the one last
        // known, and let in the members a restored database's older configuration lacks
        let _ = d.db.mark_configuration();
        d.restored = d.db.admitted_while_behind().unwrap_or_default();
        d.peers.set_members(d.peers_of(&membership));
        d.commit_watch =
            if membership.previous_voters.is_some() { membership.voters_since } else { u64::MAX };
        let members = d.member_map();
        d.work.push_back(Work::Proposer(ProposerInput::Members(members)));
        d.start_role();
        d.work.push_back(Work::ElectionTick);
        d.run();
        let out = std::mem::take(&mut d.out);
        Ok((d, out))
    }

    // ---- what the simulation sees ------------------------------------------------------

    /// The library's database.
    pub fn db(&self) -> &Database {
        &self.db
    }

    /// The election's view: role, term, leader.
    pub fn election_view(&self) -> (SyncRole, u64, Option<Uuid>) {
        (self.election.role(), self.election.term(), self.election.leader())
    }

    /// Whether this device's actors lead (a leader's core runs).
    pub fn leads(&self) -> Option<u64> {
        match &self.role {
            Role::Leader(l) => Some(l.cx.term),
            _ => None,
        }
    }

    /// The configuration in effect here.
    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// Whether this device is a member of the configuration in effect here.
    pub fn is_member(&self) -> bool {
        self.membership.configuration.contains(self.id)
    }

    /// The earliest deadline of any machine.
    pub fn next_deadline(&self) -> Option<Instant> {
        let mut at = [
            self.election.next_deadline(),
            self.proposer.next_deadline(),
            self.next_ask(),
            Some(self.next_sweep),
        ]
        .into_iter()
        .chain(self.waits.iter().map(|w| Some(w.deadline)))
        .chain(self.lease_waiters.iter().map(|w| Some(w.deadline)))
        .flatten()
        .min();
        let mut add = |d: Option<Instant>| {
            if let Some(d) = d {
                at = Some(at.map_or(d, |a| a.min(d)));
            }
        };
        match &self.role {
            Role::Leader(l) => {
                add(l.core.next_deadline());
                for link in l.links.values() {
                    add(link.link.next_deadline());
                }
            }
            Role::Follower(f) => add(f.rep.next_deadline()),
            Role::Idle => {}
        }
        at
    }

    // ---- inputs ---------------------------------------------------------------------------

    fn begin(&mut self, now: Instant, now_ms: i64) {
        self.now = self.now.max(now);
        self.now_ms = now_ms;
    }

    fn finish(&mut self) -> Vec<Output> {
        self.run();
        self.check_waits();
        for o in &self.out {
            if let Output::Answer { write, .. } = o {
                self.majority.remove(write);
            }
        }
        std::mem::take(&mut self.out)
    }

    /// Answers a write that the leader committed at `first..=last`: at once at the `local`
    /// level, once a majority holds it at `majority`.
    fn committed(&mut self, write: usize, first: u64, last: u64) {
        match self.majority.remove(&write) {
            Some((proposal_id, expected)) => self.waits.push(MajorityWait {
                write,
                proposal_id,
                expected,
                answered: (first, last),
                deadline: self.now + MAJORITY_TIMEOUT,
            }),
            None => {
                self.out.push(Output::Answer { write, outcome: Outcome::Committed { first, last } })
            }
        }
    }

    /// The `majority` writes a majority now holds are answered committed (at the sequences of
    /// this device's log), those past their deadline pending; as `Node::write_with` decides,
    /// from this device's view: the leader it knows, its term, its log, the commit sequence it
    /// knows.
    fn check_waits(&mut self) {
        if self.waits.is_empty() {
            return;
        }
        let (_, term, leader) = self.election_view();
        let commit_sequence = match &self.role {
            Role::Leader(l) => l.shared.commit_sequence(),
            _ => self.leader_commit,
        };
        let Ok(head) = self.db.head() else { return };
        let view = MajorityView {
            leader_known: leader.is_some(),
            term,
            head: head.position,
            commit_sequence,
        };
        for wait in std::mem::take(&mut self.waits) {
            let found: Vec<u64> = self
                .db
                .with_reader(|conn| {
                    lsync_storage::SyncLog::proposal_entries(conn, wait.proposal_id)
                })
                .map(|e| e.iter().map(|e| e.sequence).collect())
                .unwrap_or_default();
            let outcome = match majority_holds(view, &found, wait.expected, wait.answered) {
                Some((first, last)) => Outcome::Committed { first, last },
                None if self.now >= wait.deadline => Outcome::Unresolved,
                None => {
                    self.waits.push(wait);
                    continue;
                }
            };
            self.out.push(Output::Answer { write: wait.write, outcome });
        }
    }

    /// The machines whose deadline passed run.
    pub fn tick(&mut self, now: Instant, now_ms: i64) -> Vec<Output> {
        self.begin(now, now_ms);
        let due = |d: Option<Instant>| d.is_some_and(|d| d <= now);
        if due(self.election.next_deadline()) {
            self.work.push_back(Work::ElectionTick);
        }
        if due(self.proposer.next_deadline()) {
            self.work.push_back(Work::Proposer(ProposerInput::Tick));
        }
        if due(Some(self.next_sweep)) {
            // the proposer's sweep, as the actor's (actors/src/proposer/mod.rs, SWEEP)
            self.next_sweep = now + lsync_actors::proposer::SWEEP;
            self.work.push_back(Work::Proposer(ProposerInput::Wake));
        }
        if due(self.next_ask()) {
            self.ask_who_leads();
        }
        // the lease waiters' `run_later`: not confirmed within the leader timeout
        let (late, waiting): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.lease_waiters).into_iter().partition(|w| w.deadline <= now);
        self.lease_waiters = waiting;
        for w in late {
            self.lease_decided(w.term, w.then, false, true);
        }
        let gen = self.role_gen;
        match &self.role {
            Role::Leader(l) => {
                if due(l.core.next_deadline()) {
                    self.work.push_back(Work::CoreTick(gen));
                }
                for (peer, link) in &l.links {
                    if due(link.link.next_deadline()) {
                        self.work.push_back(Work::Link(gen, *peer, LinkInput::Tick));
                    }
                }
            }
            Role::Follower(f) => {
                if due(f.rep.next_deadline()) {
                    self.work.push_back(Work::Follower(gen, FollowerInput::Tick));
                }
            }
            Role::Idle => {}
        }
        self.finish()
    }

    /// An inbound request `id` from `from`.
    pub fn request(
        &mut self,
        id: NetId,
        from: PeerId,
        msg: SyncMessage,
        now: Instant,
        now_ms: i64,
    ) -> Vec<Output> {
        self.begin(now, now_ms);
        self.inbound(id, from, msg);
        self.finish()
    }

    /// The answer to this device's request `token`.
    pub fn response(
        &mut self,
        token: Token,
        msg: SyncMessage,
        now: Instant,
        now_ms: i64,
    ) -> Vec<Output> {
        self.begin(now, now_ms);
        self.answered(token, Ok(msg));
        self.finish()
    }

    /// This device's request `token` failed.
    pub fn failure(
        &mut self,
        token: Token,
        error: NetworkError,
        now: Instant,
        now_ms: i64,
    ) -> Vec<Output> {
        self.begin(now, now_ms);
        if self.debug {
            let what = self.pending.get(&token).map(|(p, g)| format!("{p:?} gen {g}"));
            self.out
                .push(Output::Note(format!("failure {error} of {what:?} (gen {})", self.role_gen)));
        }
        self.answered(token, Err(error));
        self.finish()
    }

    /// A write on this device (`Node::write`): committed at once when it leads, else queued in
    /// the outbox and proposed. Answered with [`Output::Answer`].
    pub fn write(
        &mut self,
        write: usize,
        proposal_id: Uuid,
        changes: Vec<Change>,
        majority: bool,
        now: Instant,
        now_ms: i64,
    ) -> Vec<Output> {
        self.begin(now, now_ms);
        if majority {
            self.majority.insert(write, (proposal_id, entries_at_least(&changes)));
        }
        if !self.is_member() {
            self.out.push(Output::Answer {
                write,
                outcome: Outcome::Refused("this device is not a member any more".into()),
            });
            return self.finish();
        }
        match self.tm.commit_proposal(proposal_id, self.id, changes.clone()) {
            Ok(o) => {
                self.drain_commits();
                // answered committed only under the leader lease, checked after the commit
                let (first, last) = (o.first_sequence, o.last_sequence);
                let term = self.election.term();
                self.confirm_lease(term, AfterLease::Write { write, first, last });
            }
            Err(StorageError::NotLeader { .. }) => match self.db.outbox_push(proposal_id, &changes)
            {
                Ok(_) => {
                    self.next_answer += 1;
                    self.answers.insert(self.next_answer, write);
                    self.work.push_back(Work::Proposer(ProposerInput::Submitted(
                        proposal_id,
                        self.next_answer,
                    )));
                }
                Err(e) => self.out.push(Output::Answer {
                    write,
                    outcome: Outcome::Refused(format!("outbox: {e}")),
                }),
            },
            Err(e) => self.out.push(Output::Answer { write, outcome: Outcome::Refused(err(e)) }),
        }
        self.finish()
    }

    /// A membership change asked of this device (the leader's `ChangeConfig`): answered with
    /// [`Output::Changed`].
    pub fn change_membership(
        &mut self,
        change: MembershipChange,
        token: u64,
        wait: Duration,
        now: Instant,
        now_ms: i64,
    ) -> Vec<Output> {
        self.begin(now, now_ms);
        if matches!(self.role, Role::Leader(_)) {
            self.work.push_back(Work::Change { change, token, wait });
        } else {
            self.out.push(Output::Changed {
                token,
                result: Err(ConfigError::Storage("this device does not lead".into())),
            });
        }
        self.finish()
    }

    // ---- the work queue --------------------------------------------------------------------

    fn run(&mut self) {
        // Bounded: every item is one message of one actor; a step that loops would show here.
        let mut budget = 100_000u32;
        while let Some(w) = self.work.pop_front() {
            budget -= 1;
            assert!(budget > 0, "device {} does not settle: work keeps coming", self.ix);
            self.handle(w);
            self.drain_commits();
        }
    }

    fn handle(&mut self, w: Work) {
        let gen = self.role_gen;
        match w {
            Work::ElectionInput(input) => {
                let now = self.now;
                self.election(None, move |e| match input {
                    ElectionInput::LeaderHeard { from, term } => {
                        e.on_leader_message(from, term, now).1
                    }
                    ElectionInput::FollowerContact { from, term } => {
                        e.on_follower_response(from, term, now)
                    }
                    ElectionInput::TermSeen { term } => e.observe_term(term, now),
                })
            }
            Work::VoteRequest { reply, request } => {
                let now = self.now;
                self.election(Some(reply), move |e| e.on_vote_request(request, now))
            }
            Work::TimeoutNow { reply, from, term } => {
                let now = self.now;
                self.election(Some(reply), move |e| e.on_timeout_now(from, term, now))
            }
            Work::Vote(v) => {
                let now = self.now;
                self.election(None, move |e| e.on_vote_response(v, now));
                // as the watcher does: a refused pre-vote while no leader is known asks who leads
                if probe_for_leader(&v, self.election.leader()) {
                    if let Some(peer) = self.member_map().get(&v.voter).copied() {
                        let (term, last) = (self.election.term(), self.election.last_log());
                        self.send(
                            peer,
                            who_leads(self.library_id, term, last),
                            Pending::LeaderProbe,
                        );
                    }
                }
            }
            Work::SetMembership => {
                let (m, now) = (election_membership(&self.membership), self.now);
                self.lease_voters = m.voters().len();
                self.lease.set_voters(m.voters().clone(), m.previous_voters().cloned());
                self.election(None, move |e| e.set_membership(m, now))
            }
            Work::LeaseAnswer { from, term, sent_at } => {
                if self.lease.on_answer(from, term, sent_at) {
                    self.settle_lease_waiters();
                }
            }
            Work::Resign => {
                let now = self.now;
                self.election(None, move |e| e.resign(now))
            }
            Work::ElectionTick => {
                // the service's watchdog looks again while anyone is let in
                if !self.restored.is_empty() {
                    self.check_restored();
                }
                let now = self.now;
                self.election(None, move |e| e.tick(now))
            }
            Work::RoleChange(RoleChange { role, term, leader, voted_for }) => {
                self.role_change(role, term, leader, voted_for)
            }
            Work::Install(m) => self.install(m),
            Work::FollowerMembership(m) => self.follower_membership(m),
            Work::Hint(h) => self.hint(h),
            Work::HeartbeatNow(sent_at) => {
                if let Role::Leader(l) = &self.role {
                    let peers: Vec<PeerId> = l.links.keys().copied().collect();
                    for p in peers {
                        self.work.push_back(Work::Link(gen, p, LinkInput::HeartbeatTick(sent_at)));
                    }
                }
            }
            Work::Left(peer) => {
                if let Role::Leader(l) = &mut self.role {
                    l.links.remove(&peer);
                }
                self.leaving.remove(&peer);
            }
            Work::Commit(g, ev) if g == gen => {
                // The core learns the event's chain hashes first (the last one read when the
                // event does not carry it), as the leader actor hands them over.
                let mut hashes = commit_hashes(&ev);
                if !carries_last_hash(&ev) {
                    if let Ok(Some(h)) = self.db.hash_at(ev.last_sequence) {
                        hashes.push((ev.last_sequence, h));
                    }
                }
                // Under NORMAL the core counts this device's own copy once it is fsynced, as
                // the leader actor does (`LeaderActor::count_own`): the fsync made at once.
                let normal = self.db.synchronous() == lsync_storage::Synchronous::Normal;
                let position =
                    lsync_storage::LogPosition { term: ev.term, sequence: ev.last_sequence };
                let own = if normal { self.db.acknowledge(position).is_ok() } else { true };
                self.core(|c, now| {
                    c.note_hashes(hashes);
                    if own {
                        c.on_commit(ev.term, ev.last_sequence, now)
                    } else {
                        Vec::new()
                    }
                })
            }
            Work::Progress(g, p) if g == gen => self.core(|c, now| c.on_progress(p, now)),
            Work::Change { change, token, wait } => {
                if matches!(self.role, Role::Leader(_)) {
                    self.core(|c, now| c.on_change(change, wait, token, now));
                } else {
                    self.out.push(Output::Changed {
                        token,
                        result: Err(ConfigError::Storage("the leader stopped".into())),
                    });
                }
            }
            Work::CoreTick(g) if g == gen => self.core(|c, now| c.tick(now)),
            Work::Link(g, peer, input) if g == gen => self.link(peer, input),
            Work::Follower(g, input) if g == gen => self.follower(input),
            Work::Proposer(input) => self.proposer(input),
            // for a role that stopped
            Work::Commit(..)
            | Work::Progress(..)
            | Work::CoreTick(_)
            | Work::Link(..)
            | Work::Follower(..) => {}
        }
    }

    /// Commit events of the transaction manager go to the leader's core and links, as the
    /// leader actor forwards them.
    fn drain_commits(&mut self) {
        loop {
            let ev = match self.commits.try_recv() {
                Ok(ev) => ev,
                Err(broadcast::error::TryRecvError::Lagged(_)) => continue,
                Err(_) => return,
            };
            let gen = self.role_gen;
            if let Role::Leader(l) = &self.role {
                let commit = NewCommit::of(&ev);
                self.work.push_back(Work::Commit(gen, ev));
                let peers: Vec<PeerId> = l.links.keys().copied().collect();
                for p in peers {
                    self.work.push_back(Work::Link(gen, p, LinkInput::Commit(commit.clone())));
                }
            }
        }
    }

    fn send(&mut self, to: PeerId, msg: SyncMessage, what: Pending) {
        self.next_token += 1;
        self.pending.insert(self.next_token, (what, self.role_gen));
        self.out.push(Output::Request { to, msg, token: self.next_token });
    }

    fn respond(&mut self, id: NetId, msg: SyncMessage) {
        self.out.push(Output::Respond { id, msg });
    }

    fn answered(&mut self, token: Token, result: Result<SyncMessage, NetworkError>) {
        let Some((what, gen)) = self.pending.remove(&token) else { return };
        let same_role = gen == self.role_gen;
        match what {
            Pending::Vote => {
                if let Some(v) = result.ok().as_ref().and_then(vote_of) {
                    self.work.push_back(Work::Vote(v));
                }
            }
            Pending::TimeoutNow => {}
            Pending::LeaderProbe => {
                if let Some(hint) = result.ok().as_ref().and_then(LeaderHint::named_in) {
                    self.out.push(Output::Note(format!("told {} leads", hint.device)));
                    self.hint(hint);
                }
            }
            Pending::Fetch(id) if same_role => {
                self.work.push_back(Work::Follower(gen, FollowerInput::Fetched(id, result)))
            }
            Pending::Ack(id) if same_role => {
                self.work.push_back(Work::Follower(gen, FollowerInput::Acked(id, result)))
            }
            Pending::Heartbeat(id) if same_role => {
                self.work.push_back(Work::Follower(gen, FollowerInput::Heartbeat(id, result)))
            }
            Pending::Notify(peer) if same_role => {
                self.work.push_back(Work::Link(gen, peer, LinkInput::NotifyAnswer(result.ok())))
            }
            Pending::LeaderHeartbeat(peer, round) if same_role => {
                if let Ok(reply) = result {
                    let answer = LinkInput::HeartbeatAnswer(reply, round);
                    self.work.push_back(Work::Link(gen, peer, answer));
                }
            }
            Pending::Propose(proposal_id) => {
                let delivery = Delivery::of_reply(proposal_id, result);
                self.work
                    .push_back(Work::Proposer(ProposerInput::Delivered(proposal_id, delivery)));
            }
            _ => {}
        }
    }

    // ---- SyncService ------------------------------------------------------------------------

    fn device_of(&self, peer: &PeerId) -> Option<Uuid> {
        self.peers.device_of(peer)
    }

    fn peer_of(&self, device: Uuid) -> Option<PeerId> {
        self.peers.peer_of(device)
    }

    fn serving(&self) -> Serving {
        match self.role {
            Role::Leader(_) => Serving::Leader,
            Role::Follower(_) => Serving::Follower,
            Role::Idle => Serving::Idle,
        }
    }

    fn peers_of(&self, m: &Membership) -> BTreeMap<PeerId, Uuid> {
        m.configuration
            .members
            .iter()
            .chain(self.restored.iter())
            .filter(|mem| mem.device_id != self.id)
            .filter_map(|mem| mem.peer_id.parse::<PeerId>().ok().map(|p| (p, mem.device_id)))
            .collect()
    }

    fn member_map(&self) -> BTreeMap<Uuid, PeerId> {
        let mut m: BTreeMap<Uuid, PeerId> =
            self.peers.members.iter().map(|(p, d)| (*d, *p)).collect();
        m.insert(self.id, self.peer);
        m
    }

    fn leader_peer_hint(&self) -> Option<String> {
        self.state.leader_device.and_then(|d| self.peer_of(d)).map(|p| p.to_string())
    }

    fn inbound(&mut self, id: NetId, peer: PeerId, msg: SyncMessage) {
        let from = self.device_of(&peer);
        let view = RouteView {
            library_id: self.library_id,
            member: self.is_member(),
            serving: self.serving(),
            term: self.state.current_term,
            leader: self.state.leader_device,
            leader_peer: self.leader_peer_hint(),
            election: true,
        };
        let (to, heard) = route(&msg, from, &view);
        match heard {
            Some(Heard::Leader { from, term }) => {
                self.work.push_back(Work::ElectionInput(ElectionInput::LeaderHeard { from, term }))
            }
            Some(Heard::Follower { from, term }) => self
                .work
                .push_back(Work::ElectionInput(ElectionInput::FollowerContact { from, term })),
            None => {}
        }
        let gen = self.role_gen;
        match to {
            Route::Reply(reply) => self.respond(id, reply),
            Route::Join | Route::ChangeMembership | Route::Announce => self.respond(
                id,
                SyncMessage::error(self.library_id, ErrorCode::BadRequest, "not simulated"),
            ),
            Route::Election => match election_request(self.library_id, msg, from) {
                ElectionRequest::Vote(request) => {
                    self.work.push_back(Work::VoteRequest { reply: id, request })
                }
                ElectionRequest::TimeoutNow { from, term } => {
                    self.work.push_back(Work::TimeoutNow { reply: id, from, term })
                }
                ElectionRequest::Refused(refusal) => self.respond(id, refusal),
            },
            Route::Propose { term } => {
                let reply = serve_proposal(&self.tm, self.library_id, term, msg, false);
                // committed here: answered so only under the leader lease, checked now
                if matches!(reply, SyncMessage::ProposalResult { .. }) {
                    self.drain_commits();
                    self.confirm_lease(term, AfterLease::Propose { id, reply });
                } else {
                    self.respond(id, reply);
                }
            }
            Route::Link => {
                let has = matches!(&self.role, Role::Leader(l) if l.links.contains_key(&peer));
                if has {
                    self.work.push_back(Work::Link(gen, peer, LinkInput::Request(id, msg)));
                } else {
                    let msg = SyncMessage::error(
                        self.library_id,
                        ErrorCode::Unauthorized,
                        "not a member of this library",
                    );
                    self.respond(id, msg);
                }
            }
            Route::Follower => {
                self.work.push_back(Work::Follower(gen, FollowerInput::Request(id, peer, msg)))
            }
        }
    }

    fn role_change(
        &mut self,
        role: SyncRole,
        term: u64,
        leader: Option<Uuid>,
        voted_for: Option<Uuid>,
    ) {
        let serving = self.serving();
        let s = &mut self.state;
        let unchanged = keeps_role_actors(
            serving,
            (s.role, s.current_term, s.leader_device),
            (role, term, leader),
        );
        s.role = role;
        s.current_term = term;
        s.leader_device = leader;
        s.voted_for = voted_for;
        if !unchanged {
            self.start_role();
        }
    }

    fn stop_role(&mut self) {
        self.role_gen += 1;
        if let Role::Leader(_) = std::mem::replace(&mut self.role, Role::Idle) {
            self.leaving.clear();
        }
    }

    fn start_role(&mut self) {
        self.stop_role();
        let state = self.state.clone();
        self.work.push_back(Work::Proposer(ProposerInput::Leader(ProposerView {
            term: state.current_term,
            leader: if state.role == SyncRole::Candidate { None } else { state.leader_device },
        })));
        if state.role == SyncRole::Leader && state.leader_device == Some(self.id) {
            let shared = Arc::new(LeaderShared::default());
            let cache = new_log_cache(self.config.max_entries_per_response);
            let cx = LinkContext {
                library_id: self.library_id,
                db: self.db.clone(),
                transport: Arc::new(NoTransport),
                events: self.events.clone(),
                term: state.current_term,
                max_entries_per_response: self.config.max_entries_per_response,
                max_response_bytes: self.config.max_response_bytes,
                max_frame: self.config.max_frame,
                notify_window: self.config.notify_window,
                election: None,
                lease: None,
                cache: cache.clone(),
                metrics: self.metrics.clone(),
                leader_device: Some(self.id),
                leader: shared.clone(),
                progress: None,
                left: None,
            };
            let core = LeaderCore::new(
                CoreConfig {
                    library_id: self.library_id,
                    me: self.id,
                    term: state.current_term,
                    catch_up: self.config.max_entries_per_response,
                },
                self.membership.clone(),
            );
            let mut lead = Lead { core, links: BTreeMap::new(), shared, cx };
            for (peer, device) in self.peers.members.clone() {
                lead.links.insert(peer, Self::new_link(&lead.cx, device, peer));
            }
            cache.set_readers(lead.links.len());
            self.role = Role::Leader(Box::new(lead));
            let last = self.db.last_position().map(|p| p.sequence).unwrap_or(0);
            self.core(|c, now| c.start(last, now));
            // as the service does on taking office: a stash left by an unfinished rebuild
            if self.db.stashed_count().unwrap_or(0) > 0 {
                let r = Applier::new(self.db.clone()).recover_orphans();
                self.out.push(Output::Note(format!("leader: stash recovered: {r:?}")));
                self.work.push_back(Work::Proposer(ProposerInput::Wake));
            }
        } else if let Some(leader) = state.leader_device.and_then(|d| self.peer_of(d)) {
            let rep = Replicator::new(
                self.library_id,
                FollowerLeader { device: state.leader_device, peer: leader.to_string() },
                state.current_term,
                self.config.clone(),
                StdRng::seed_from_u64(self.role_gen ^ (self.ix as u64) << 32),
            );
            self.role = Role::Follower(Box::new(Follow {
                rep,
                leader,
                leader_device: state.leader_device,
                replies: BTreeMap::new(),
                next: 0,
            }));
            let now = self.now;
            let cmds = match &mut self.role {
                Role::Follower(f) => f.rep.start(now),
                _ => unreachable!(),
            };
            self.perform_follower(cmds);
        } else if state.role == SyncRole::Follower {
            self.ask_who_leads();
        }
    }

    /// As the service does when idle: asks every member it knows who leads (and again once per
    /// leader timeout while idle, from [`Device::tick`]).
    fn ask_who_leads(&mut self) {
        self.asked_who_leads = Some(self.now);
        let last = self.db.last_position().unwrap_or_default();
        let members: Vec<(PeerId, Uuid)> =
            self.peers.members.iter().map(|(p, d)| (*p, *d)).collect();
        for (peer, device) in members {
            if device == self.id {
                continue;
            }
            let msg = who_leads(self.library_id, self.state.current_term, last);
            self.send(peer, msg, Pending::LeaderProbe);
        }
    }

    /// When an idle follower asks again who leads.
    fn next_ask(&self) -> Option<Instant> {
        let idle = matches!(self.role, Role::Idle) && self.state.role == SyncRole::Follower;
        idle.then(|| self.asked_who_leads.map(|at| at + self.config.leader_timeout)).flatten()
    }

    fn new_link(cx: &LinkContext, device: Uuid, peer: PeerId) -> Link {
        Link {
            link: FollowerLink::new(cx.link_config(device, peer)),
            device,
            round: Duration::ZERO,
            replies: BTreeMap::new(),
            next: 0,
        }
    }

    /// `install_membership` of the service, then its `check_restored`.
    fn install(&mut self, m: Membership) {
        if self.membership == m {
            return;
        }
        self.apply_membership(m);
        self.check_restored();
    }

    /// The service's `check_restored`: keeps the configuration in effect if newer than the one
    /// last known, and lets in (or out again, once caught up) the members of the one last
    /// known that the database's lacks (docs/architecture.md, "Restores are detected").
    fn check_restored(&mut self) {
        let _ = self.db.mark_configuration();
        let Ok(restored) = self.db.admitted_while_behind() else { return };
        if restored != self.restored {
            self.restored = restored;
            self.apply_membership(self.membership.clone());
        }
    }

    /// The membership `m` in effect: peers, links, the proposer's members, the role.
    fn apply_membership(&mut self, m: Membership) {
        let was_member = self.is_member();
        let new = self.peers_of(&m);
        let members = &self.peers.members;
        let removed: Vec<PeerId> =
            members.iter().filter(|(p, d)| new.get(p) != Some(d)).map(|(p, _)| *p).collect();
        let added: Vec<(PeerId, Uuid)> =
            new.iter().filter(|(p, _)| !members.contains_key(p)).map(|(p, d)| (*p, *d)).collect();
        self.peers.set_members(new);
        self.commit_watch = if m.previous_voters.is_some() { m.voters_since } else { u64::MAX };
        // also when the leader's commit reached it before it was watched, as the follower
        // actor tells it (`check_commit_watch`)
        if self.leader_commit >= self.commit_watch {
            self.work.push_back(Work::FollowerMembership(FollowerMembership::Committed(
                self.leader_commit,
            )));
        }
        let sequence = m.sequence;
        self.membership = m;
        let gen = self.role_gen;
        for peer in removed {
            let has = matches!(&self.role, Role::Leader(l) if l.links.contains_key(&peer));
            if has {
                self.leaving.insert(peer);
                self.work.push_back(Work::Link(gen, peer, LinkInput::Leaving(sequence)));
            }
        }
        if let Role::Leader(l) = &mut self.role {
            let mut started = false;
            for (peer, device) in &added {
                if self.leaving.remove(peer) {
                    l.links.remove(peer);
                }
                if !l.links.contains_key(peer) {
                    let link = Self::new_link(&l.cx, *device, *peer);
                    l.links.insert(*peer, link);
                    started = true;
                }
            }
            if started {
                l.cx.cache.set_readers(l.links.len());
            }
        }
        self.work.push_back(Work::SetMembership);
        let members = self.member_map();
        self.work.push_back(Work::Proposer(ProposerInput::Members(members)));
        let member = self.is_member();
        if !was_member && member {
            self.removed_hint = None;
            self.start_role();
        } else if matches!(self.role, Role::Idle)
            && self.state.leader_device.is_some_and(|l| self.peer_of(l).is_some() && l != self.id)
        {
            self.start_role();
        }
    }

    fn follower_membership(&mut self, m: FollowerMembership) {
        match m {
            FollowerMembership::Applied(m) => self.install(m),
            FollowerMembership::Committed(commit) => {
                let m = self.db.note_commit(commit).and_then(|_| self.db.membership());
                if let Ok(m) = m {
                    self.install(m);
                }
            }
            FollowerMembership::Removed(message) => self.removed_hint = Some(message),
        }
    }

    fn hint(&mut self, h: LeaderHint) {
        let mut known = self.peer_of(h.device).is_some();
        if let (false, Some(peer)) = (known, h.peer) {
            self.peers.let_in(peer, h.device);
            known = true;
        }
        let (serving, s) = (self.serving(), &self.state);
        if follows_hint(serving, s.role, s.leader_device, self.id, h.device, known) {
            self.state.leader_device = Some(h.device);
            self.start_role();
        }
    }

    // ---- ElectionActor ----------------------------------------------------------------------

    /// Refreshes the log position, runs `f`, persists first, then acts.
    fn election(
        &mut self,
        reply: Option<NetId>,
        f: impl FnOnce(&mut Election<StdRng>) -> Vec<Action>,
    ) {
        // as the election actor does: the floor is the rebuild mark or the high-water mark
        if let (Ok(pos), Ok(floor)) = (self.db.last_position(), self.db.election_floor()) {
            self.election.set_last_log(pos);
            self.election.set_log_floor(floor);
        }
        let actions = f(&mut self.election);
        if let Some(p) = actions.iter().find_map(Action::persisted) {
            let role = self.election.role();
            let record = ElectionRecord { term: p.term, voted_for: p.voted_for, leader: p.leader };
            let written = self.db.persist_election(role, &record);
            if written.is_err() {
                if let Some(r) = reply {
                    let msg = SyncMessage::error(
                        self.library_id,
                        ErrorCode::Internal,
                        "cannot persist vote",
                    );
                    self.respond(r, msg);
                }
                self.sync_lease();
                return;
            }
        }
        let mut reply = reply;
        let library_id = self.library_id;
        for action in actions {
            let change =
                |role, term, e: &Election<StdRng>| Work::RoleChange(role_change(role, term, e));
            match action {
                Action::Persist { .. } | Action::TransferAborted { .. } => {}
                Action::BecomeLeader { term } => {
                    self.work.push_back(change(SyncRole::Leader, term, &self.election))
                }
                Action::BecomeCandidate { term } => {
                    self.work.push_back(change(SyncRole::Candidate, term, &self.election))
                }
                Action::BecomeFollower { term, .. } => {
                    self.work.push_back(change(SyncRole::Follower, term, &self.election))
                }
                Action::SendRequestVote { to, request } => {
                    let Some(peer) = self.member_map().get(&to).copied() else { continue };
                    self.send(peer, request_vote(library_id, &request), Pending::Vote);
                }
                Action::SendVoteResponse { response, .. } => {
                    if let Some(r) = reply.take() {
                        self.respond(r, vote(library_id, &response));
                    }
                }
                Action::SendHeartbeats { .. } => self.send_round(),
                Action::SendTimeoutNow { to, term } => {
                    let Some(peer) = self.member_map().get(&to).copied() else { continue };
                    self.send(
                        peer,
                        SyncMessage::TimeoutNow { library_id, term },
                        Pending::TimeoutNow,
                    );
                }
            }
        }
        if let Some(r) = reply {
            let msg = view(library_id, &self.election);
            self.respond(r, msg);
        }
        self.sync_lease();
    }

    // ---- the leader lease (the election actor's) ------------------------------------------

    /// `sync_lease` of the election actor: the lease leads the election's term (from now on,
    /// if it did not already), held back while a transfer runs, released when one ends with
    /// this device still leading, stopped when it does not lead; then the waiting answers it
    /// decides now are given.
    fn sync_lease(&mut self) {
        let leading = self.election.is_leader().then(|| self.election.term());
        self.lease.follow(leading, self.election.is_transferring(), self.lease_clock.now());
        self.settle_lease_waiters();
    }

    /// A heartbeat round: stamped with the lease clock, recorded, sent to every follower
    /// (the election actor's `send_round`, then the service's `HeartbeatNow`).
    fn send_round(&mut self) {
        let sent_at = self.lease_clock.now();
        self.lease.round_sent(sent_at);
        self.work.push_back(Work::HeartbeatNow(sent_at));
    }

    /// `ConfirmLease`, asked after a commit, immediately before an answer that says
    /// committed (the election actor's handler): answered at once when the lease holds or is
    /// not needed, refused when this device no longer leads; else it waits for a heartbeat
    /// round (one is sent unless the last can still confirm it), at most a leader timeout.
    fn confirm_lease(&mut self, term: u64, then: AfterLease) {
        if !self.lease_on {
            return self.lease_decided(term, then, true, false);
        }
        let now = self.lease_clock.now();
        match self.lease.state(now, now) {
            LeaseState::Held | LeaseState::NotNeeded => self.lease_decided(term, then, true, false),
            LeaseState::NotLeading => self.lease_decided(term, then, false, false),
            LeaseState::Expired => {
                self.out.push(Output::Note(format!(
                    "lease expired (term {term}): {then:?} waits for a heartbeat round"
                )));
                let deadline = self.now + self.config.leader_timeout;
                self.lease_waiters.push(LeaseWaiter { asked_at: now, deadline, term, then });
                if self.lease.wants_round(now, now) {
                    self.send_round();
                }
            }
        }
    }

    /// The election actor's `settle_waiters`: every waiting answer the lease decides now.
    fn settle_lease_waiters(&mut self) {
        if self.lease_waiters.is_empty() {
            return;
        }
        let now = self.lease_clock.now();
        for w in std::mem::take(&mut self.lease_waiters) {
            match self.lease.state(now, w.asked_at) {
                LeaseState::Held | LeaseState::NotNeeded => {
                    self.lease_decided(w.term, w.then, true, true)
                }
                LeaseState::NotLeading => self.lease_decided(w.term, w.then, false, true),
                LeaseState::Expired => self.lease_waiters.push(w),
            }
        }
    }

    /// The answer waiting for the lease, given: committed if `confirmed`, else what each path
    /// answers on real nodes when `ConfirmLease` says no (src/node.rs: `OutcomeUnknown`;
    /// proposer/mod.rs: a failed attempt, retried under the same proposal id; service/mod.rs:
    /// `lease_unconfirmed`).
    fn lease_decided(&mut self, term: u64, then: AfterLease, confirmed: bool, waited: bool) {
        let voters = self.lease_voters;
        self.out.push(Output::Lease { term, voters, confirmed, waited });
        match then {
            AfterLease::Write { write, first, last } => {
                if confirmed {
                    self.committed(write, first, last);
                } else {
                    self.out.push(Output::Answer { write, outcome: Outcome::Unknown });
                }
            }
            AfterLease::Local { proposal_id, delivery } => {
                let delivery =
                    if confirmed { delivery } else { Delivery::Failed(LEASE_UNCONFIRMED.into()) };
                self.work
                    .push_back(Work::Proposer(ProposerInput::Delivered(proposal_id, delivery)));
            }
            AfterLease::Propose { id, reply } => {
                let reply =
                    if confirmed { reply } else { lease_unconfirmed(self.library_id, term) };
                self.respond(id, reply);
            }
        }
    }

    // ---- LeaderActor ---------------------------------------------------------------------

    fn core(&mut self, f: impl FnOnce(&mut LeaderCore, Instant) -> Vec<CoreCommand>) {
        let now = self.now;
        let Role::Leader(l) = &mut self.role else { return };
        let mut queue: VecDeque<CoreCommand> = f(&mut l.core, now).into();
        while let Some(cmd) = queue.pop_front() {
            let Role::Leader(l) = &mut self.role else { return };
            match cmd {
                CoreCommand::Publish { commit_sequence, term_start, last } => {
                    l.shared.publish(commit_sequence, term_start, last);
                    let term = l.cx.term;
                    self.out.push(Output::Committed { term, commit_sequence });
                }
                CoreCommand::NoteCommit(c) => {
                    let _ = self.db.note_commit(c);
                }
                CoreCommand::Report(LeaderReport::Membership(m)) => {
                    self.work.push_back(Work::Install(m))
                }
                CoreCommand::Report(LeaderReport::Resign) => self.work.push_back(Work::Resign),
                CoreCommand::Answer { token, result } => {
                    self.out.push(Output::Changed { token, result })
                }
                CoreCommand::WriteConfig(configuration) => {
                    let result = write_config(&self.tm, &self.db, &configuration);
                    let Role::Leader(l) = &mut self.role else { return };
                    queue.extend(l.core.on_config_written(result, now));
                }
            }
        }
    }

    // ---- LinkActor ----------------------------------------------------------------------

    fn link(&mut self, peer: PeerId, input: LinkInput) {
        let now = self.now;
        let gen = self.role_gen;
        let Role::Leader(l) = &mut self.role else { return };
        let view = LinkView {
            commit_sequence: l.shared.commit_sequence(),
            last_sequence: Some(l.shared.last_sequence()),
        };
        let cap = l.links.get(&peer).and_then(|k| k.link.leaving_cap());
        let Some(k) = l.links.get_mut(&peer) else { return };
        k.link.set_leader_view(view);
        let cmds = match input {
            LinkInput::Commit(commit) => {
                l.cx.note_commit(&commit, cap);
                k.link.on_commit(commit, now)
            }
            LinkInput::NotifyAnswer(reply) => k.link.on_notify_answer(reply, now),
            LinkInput::HeartbeatTick(sent_at) => {
                k.round = sent_at;
                k.link.on_heartbeat_tick()
            }
            LinkInput::HeartbeatAnswer(reply, sent_at) => {
                // the link actor reports an answer to the round to the election's lease
                if k.link.answers_round(&reply) {
                    let (from, term) = (k.device, l.cx.term);
                    self.work.push_back(Work::LeaseAnswer { from, term, sent_at });
                }
                k.link.on_heartbeat_answer(reply)
            }
            LinkInput::Request(id, msg) => {
                k.next += 1;
                k.replies.insert(k.next, id);
                k.link.on_request(k.next, msg)
            }
            LinkInput::Leaving(sequence) => k.link.on_leaving(sequence, now),
            LinkInput::Tick => k.link.tick(now),
        };
        let mut queue: VecDeque<LinkCommand> = cmds.into();
        while let Some(cmd) = queue.pop_front() {
            let library_id = self.library_id;
            let Role::Leader(l) = &mut self.role else { return };
            let term = l.cx.term;
            match cmd {
                LinkCommand::Notify {
                    from,
                    to,
                    prev_term,
                    prev_hash,
                    entries,
                    commit_sequence,
                } => {
                    let msg = new_entries(
                        library_id,
                        term,
                        from,
                        to,
                        prev_term,
                        prev_hash,
                        entries,
                        commit_sequence,
                    );
                    self.send(peer, msg, Pending::Notify(peer));
                }
                LinkCommand::Heartbeat { commit_sequence } => {
                    let Ok(head) = self.db.head() else { continue };
                    let msg = leader_heartbeat(
                        library_id,
                        term,
                        head.position,
                        Some(head.hash),
                        commit_sequence,
                    );
                    let round = l.links.get(&peer).map_or(Duration::ZERO, |k| k.round);
                    self.send(peer, msg, Pending::LeaderHeartbeat(peer, round));
                }
                LinkCommand::Reply { to, message } => {
                    let id = l.links.get_mut(&peer).and_then(|k| k.replies.remove(&to));
                    if let Some(id) = id {
                        self.respond(id, message);
                    }
                }
                LinkCommand::Serve { to, request } => {
                    let response = match serve_cached(&l.cx, &request) {
                        Some(r) => r,
                        None => serve(&self.db, &l.cx, request)
                            .unwrap_or_else(|e| storage_failure(library_id, &e)),
                    };
                    if let Some(k) = l.links.get_mut(&peer) {
                        queue.extend(k.link.on_served(to, response));
                    }
                }
                LinkCommand::Progress(p) => self.work.push_back(Work::Progress(gen, p)),
                LinkCommand::Election(input) => self.work.push_back(Work::ElectionInput(input)),
                LinkCommand::Event(_) => {}
                LinkCommand::Left => self.work.push_back(Work::Left(peer)),
            }
        }
    }

    // ---- FollowerActor ----------------------------------------------------------------------

    fn follower(&mut self, input: FollowerInput) {
        let now = self.now;
        match &input {
            FollowerInput::Storage(
                StorageDone::Reset(_) | StorageDone::Orphans(_) | StorageDone::Settled(_),
            ) => {
                self.out.push(Output::Note(format!("follower: {input:?}")));
            }
            FollowerInput::Fetched(id, r) if self.debug => {
                let r = r.as_ref().map(|m| m.kind());
                self.out.push(Output::Note(format!("follower: fetched {id:?} {r:?}")));
            }
            FollowerInput::Storage(StorageDone::Applied(_, o))
                if !matches!(o, BatchOutcome::Applied { .. }) =>
            {
                self.out.push(Output::Note(format!("follower: batch {o:?}")));
            }
            _ => {}
        }
        let Role::Follower(f) = &mut self.role else { return };
        let cmds = match input {
            FollowerInput::Request(id, peer, msg) => {
                f.next += 1;
                f.replies.insert(f.next, id);
                let from_leader = peer == f.leader;
                f.rep.on_request(ReplyTo(f.next), from_leader, msg, now)
            }
            FollowerInput::Fetched(id, r) => f.rep.on_fetched(id, r, now),
            FollowerInput::Acked(id, r) => f.rep.on_acknowledged(id, r),
            FollowerInput::Heartbeat(id, r) => f.rep.on_heartbeat(id, r, now),
            FollowerInput::Storage(done) => done.feed(&mut f.rep, now),
            FollowerInput::Tick => f.rep.tick(now),
        };
        self.perform_follower(cmds);
    }

    fn perform_follower(&mut self, cmds: Vec<FollowerCommand>) {
        if self.debug {
            for c in &cmds {
                let d = match c {
                    FollowerCommand::Apply { id, entries } => format!(
                        "Apply {id:?} {:?}..{:?}",
                        entries.first().map(|e| e.sequence),
                        entries.last().map(|e| e.sequence)
                    ),
                    FollowerCommand::Fetch { id, since, .. } => format!("Fetch {id:?} {since:?}"),
                    FollowerCommand::Reply { .. } => "Reply".into(),
                    other => format!("{other:?}").chars().take(120).collect(),
                };
                self.out.push(Output::Note(format!("follower cmd: {d}")));
            }
        }
        let gen = self.role_gen;
        let library_id = self.library_id;
        for cmd in cmds {
            let Role::Follower(f) = &mut self.role else { return };
            let (leader, leader_device) = (f.leader, f.leader_device);
            let cmd = match StorageCall::of(cmd) {
                Ok(call) => {
                    let mut effects = Vec::new();
                    let done = call.run(&self.db, library_id, |c| effects.push(c));
                    effects.into_iter().for_each(|c| self.follower_effect(c));
                    self.work.push_back(Work::Follower(gen, FollowerInput::Storage(done)));
                    continue;
                }
                Err(cmd) => *cmd,
            };
            match cmd {
                FollowerCommand::Fetch { id, since, since_hash, term } => {
                    let limit = self.config.max_entries_per_response;
                    let msg = fetch_entries(library_id, term, since, since_hash, limit);
                    self.send(leader, msg, Pending::Fetch(id));
                }
                FollowerCommand::DropFetch { id } => {
                    self.pending.retain(|_, (p, _)| !matches!(p, Pending::Fetch(f) if *f == id));
                }
                FollowerCommand::Acknowledge { id, position, hash, term } => {
                    let msg = follower::position_ack(library_id, term, position, hash);
                    self.send(leader, msg, Pending::Ack(id));
                }
                FollowerCommand::Heartbeat { id, position, hash, term } => {
                    let msg = follower::follower_heartbeat(library_id, term, position, hash);
                    self.send(leader, msg, Pending::Heartbeat(id));
                }
                FollowerCommand::Reply { to, message } => {
                    if let Some(id) = f.replies.remove(&to.0) {
                        self.respond(id, message);
                    }
                }
                FollowerCommand::AdoptTerm(term) => {
                    if let Some(from) = leader_device {
                        self.work.push_back(Work::ElectionInput(ElectionInput::LeaderHeard {
                            from,
                            term,
                        }));
                    }
                }
                other => self.follower_effect(other),
            }
        }
    }

    /// The commands of the follower that only tell someone something.
    fn follower_effect(&mut self, cmd: FollowerCommand) {
        match cmd {
            FollowerCommand::WakeProposer => {
                self.work.push_back(Work::Proposer(ProposerInput::Wake))
            }
            FollowerCommand::Repoint(hint) => self.work.push_back(Work::Hint(hint)),
            FollowerCommand::Membership(m) => self.work.push_back(Work::FollowerMembership(m)),
            FollowerCommand::LeaderCommit(commit) => {
                let before = self.leader_commit;
                self.leader_commit = before.max(commit);
                if before < self.commit_watch && commit >= self.commit_watch {
                    self.work
                        .push_back(Work::FollowerMembership(FollowerMembership::Committed(commit)));
                }
            }
            _ => {}
        }
    }

    // ---- Proposer ---------------------------------------------------------------------------

    fn proposer(&mut self, input: ProposerInput) {
        let now = self.now;
        let p = &mut self.proposer;
        let cmds = match input {
            ProposerInput::Wake => p.wake(),
            ProposerInput::Leader(view) => p.set_leader(view),
            ProposerInput::Members(m) => p.set_members(m),
            ProposerInput::Submitted(id, token) => p.submitted(id, token),
            ProposerInput::Listed(Ok(entries)) => p.listed(entries, now),
            ProposerInput::Listed(Err(_)) => p.list_failed(now),
            ProposerInput::Delivered(id, d) => {
                self.out.push(Output::Note(format!("proposal {id}: {d:?}")));
                p.delivered(id, d, now)
            }
            ProposerInput::Tick => p.tick(now),
        };
        for cmd in cmds {
            match cmd {
                ProposerCommand::Redeliver => {
                    let _ = self.db.outbox_redeliver_unheld();
                }
                ProposerCommand::ListOutbox => {
                    let r = self.db.outbox_list().map_err(err);
                    self.work.push_back(Work::Proposer(ProposerInput::Listed(r)));
                }
                ProposerCommand::Deliver { proposal_id, target: Target::Local, changes } => {
                    let d = deliver_locally(&self.tm, self.id, proposal_id, changes);
                    // committed here: delivered so only under the leader lease
                    if matches!(d, Delivery::Committed { .. }) {
                        let term = self.election.term();
                        self.confirm_lease(term, AfterLease::Local { proposal_id, delivery: d });
                    } else {
                        let input = ProposerInput::Delivered(proposal_id, d);
                        self.work.push_back(Work::Proposer(input));
                    }
                }
                ProposerCommand::Deliver {
                    proposal_id,
                    target: Target::Remote { peer, term },
                    changes,
                } => {
                    let msg = propose(self.library_id, self.id, proposal_id, term, changes);
                    self.send(peer, msg, Pending::Propose(proposal_id));
                }
                ProposerCommand::Remove { proposal_id, last_sequence } => {
                    // still shown (the pending overlay) until this device's log holds it; put
                    // back to pending if the log is past the answer without it (as the actor)
                    let _ = self.db.outbox_settle(proposal_id, last_sequence);
                    if let Ok(Some(e)) = self.db.outbox_get(proposal_id) {
                        if e.state == lsync_storage::OutboxState::Pending {
                            self.work.push_back(Work::Proposer(ProposerInput::Wake));
                        }
                    }
                }
                ProposerCommand::MarkFailed { proposal_id, reason } => {
                    let _ = self.db.outbox_mark_failed(proposal_id, &reason, self.now_ms);
                }
                ProposerCommand::RecordFailure { proposal_id, reason, .. } => {
                    let _ = self.db.outbox_record_failure(proposal_id, &reason, self.now_ms);
                }
                ProposerCommand::Answer { token, outcome } => {
                    if let Some(write) = self.answers.remove(&token) {
                        let outcome = match outcome {
                            SubmitOutcome::Committed { first, last } => {
                                self.committed(write, first, last);
                                continue;
                            }
                            SubmitOutcome::Queued => Outcome::Queued,
                            SubmitOutcome::Refused(r) => Outcome::Refused(r),
                        };
                        self.majority.remove(&write);
                        self.out.push(Output::Answer { write, outcome });
                    }
                }
            }
        }
    }
}
