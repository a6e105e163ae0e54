//! SyncService — one per open library; the supervisor of its actors and tasks and the keeper of
//! the library's membership on this device.
//!
//! Receives: every inbound request of its library (from the Network), membership changes
//! (configurations applied by the follower, written by the leader's core, asked for by the
//! host), connection events, status queries. Starts the role actors for the device's role —
//! leader: a [`LeaderActor`] (the leader's core) and one [`LinkActor`] per other
//! member; follower: a [`FollowerActor`] — and routes each inbound request to the role actor
//! that answers it.
//!
//! Membership (docs/architecture.md, "Membership"): the configuration in effect comes from the
//! library's log only. Whenever it changes the service tells the network (who may connect, and
//! a removed device is refused from then on), the election (voters, learners, the previous
//! voters while a voter change is not known to be committed), the proposer, and, when leading,
//! the links (one per member; a removed member's link first delivers the entry that
//! removes it). It also answers `Join` (a guest presenting an invitation this device issued),
//! `ChangeMembership` (the leader only) and `AnnounceAddresses` (signed address hints).
//! While the database is behind its high-water mark with a configuration older than the one
//! this device last knew (a restored backup), the members of that one are let in too, so
//! that it follows their leader and catches up (`Database::admitted_while_behind`;
//! docs/architecture.md, "Restores are detected").
//!
//! Supervision (docs/architecture.md, "Supervision"): it starts the election actor, the role's
//! actors and the proposer's task, and its watchdog restarts whichever of them died (decided by
//! [`supervise`], counted by kind in [`crate::metrics::Metrics::restarts`]). It reads their
//! state only through their observe calls. It is not itself run under actix's `Supervisor`: a
//! supervised actor is restarted whenever it stops while an address to it exists, so it could
//! never be shut down for good.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use libp2p::identity::Keypair;
use libp2p::{Multiaddr, PeerId};
use lsync_protocol::{
    AddressHint, ErrorCode, Member, MemberRole, MembershipChange, RolePreference, SyncMessage,
    SyncRole,
};
use lsync_storage::{Applier, Database, Device, Membership, SyncState, TransactionManager};
use rand::RngCore;
use tokio::sync::broadcast;
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::blocking::run_blocking;
use crate::config::SyncConfig;
use crate::election::actor::{
    persisted_of, start_state, ElectionActor, ElectionContext, ObserveElection, Resign,
    SetMembership, TransferLeadership,
};
use crate::election::Membership as ElectionMembership;
use crate::events::{LibraryStatus, MemberStatus, MembershipStatus, SyncEvent};
use crate::follower::actor::{FollowerActor, FollowerContext, ObserveFollower, WatchCommit};
use crate::leader::actor::{ChangeConfig, LeaderActor, LeaderContext, ObserveLeader, SetLinks};
use crate::leader::context::{new_log_cache, LeaderShared, LinkContext};
use crate::leader::link_actor::{Connection, Leaving, LinkActor, ObserveLink};
use crate::leader::messages::{ConfigError, ConfigOutcome};
use crate::limits::MAILBOX_CAPACITY;
use crate::log_cache::LogCache;
use crate::messages::{
    who_leads, ConfirmLease, ElectionInput, FollowerMembership, HeartbeatNow, LeaderHint,
    LeaderReport, LeaseAnswer, LinkLeft, RoleChange, Shutdown,
};
use crate::metrics::Child;
use crate::network::{InboundRequest, NetworkEvent, NetworkHandle};
use crate::proposer::{lease_unconfirmed, serve_proposal, LeaderView, Proposer, Submitted};
use crate::task::{spawn_supervised, Task};
use crate::transport::Transport;

pub mod peers;
mod route;
pub mod supervise;

pub use self::peers::{follows_hint, keeps_role_actors, PeerBook};
pub use self::route::{route, Heard, Route, Serving, View as RouteView};

/// How often the service checks that its actors and tasks are alive (a panic closes an actor's
/// mailbox and ends a task; neither actix nor tokio restarts them): see [`supervise`].
pub const WATCHDOG_INTERVAL: Duration = Duration::from_millis(250);

/// How long the leader waits for a configuration change asked over the network to commit
/// before it answers `committed: false` (well inside the requester's request timeout).
pub const REMOTE_CHANGE_WAIT: Duration = Duration::from_secs(5);

/// How long a member answering `Join` waits for its own log to hold the configuration entry
/// that adds the joiner (pushed by the leader within a round trip) before it answers anyway.
const JOIN_APPLY_WAIT: Duration = Duration::from_secs(5);

/// Everything a library's actors share.
#[derive(Clone)]
pub struct LibraryContext {
    pub library_id: Uuid,
    pub device_id: Uuid,
    pub db: Database,
    pub tm: TransactionManager,
    pub network: NetworkHandle,
    pub transport: Arc<dyn Transport>,
    pub config: SyncConfig,
    pub events: broadcast::Sender<SyncEvent>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Set while a leadership transfer holds new writes (the host checks it before committing).
    pub writes_paused: Arc<AtomicBool>,
    /// Cleared while this device is not a member of the configuration in effect, or once a
    /// leader refused it as removed (the host refuses writes then).
    pub is_member: Arc<AtomicBool>,
    /// This device's libp2p key: signs its address hints.
    pub keypair: Keypair,
    /// The addresses this device listens on (announced as a signed hint).
    pub listen_addrs: Vec<Multiaddr>,
    /// Where the role actors publish the commit sequence and the batches applied, and the
    /// service its role changes, for the host's waits (`Node::write_with`).
    pub progress: crate::messages::ProgressWatch,
}

/// Adds (or updates) a member device by hand: only for a library of feature version 1, whose
/// members are still given by hand on every device (a library with configuration entries
/// changes its members with [`ChangeMembershipRequest`]).
#[derive(Message)]
#[rtype(result = "Result<(), String>")]
pub struct AddMember(pub Device);

/// Whether the service has loaded its library (state and membership) and started its actors.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct Ready;

impl Handler<Ready> for SyncService {
    type Result = bool;
    fn handle(&mut self, _: Ready, _: &mut Context<Self>) -> bool {
        self.state.is_some() && self.membership.is_some()
    }
}

/// Reads the library's status snapshot.
#[derive(Message)]
#[rtype(result = "Result<LibraryStatus, String>")]
pub struct GetStatus;

/// Asks for a membership change, from any member: made by this device's leader core when it
/// leads, else forwarded to the leader (`ChangeMembership`). Answered once the configuration
/// entry is committed, or with `committed: false` when it is not after `wait`.
#[derive(Message)]
#[rtype(result = "Result<ConfigOutcome, String>")]
pub struct ChangeMembershipRequest {
    pub change: MembershipChange,
    pub wait: Duration,
}

/// Issues an invitation: a one-time secret (returned; only its hash is stored), valid for
/// `expires`; the invited device stays a learner for good when `learner`.
#[derive(Message)]
#[rtype(result = "Result<Vec<u8>, String>")]
pub struct CreateInvitation {
    pub learner: bool,
    pub expires: Duration,
}

#[derive(Message)]
#[rtype(result = "()")]
struct Started {
    state: SyncState,
    membership: Membership,
    connected: Vec<PeerId>,
    /// The members let in while restored ([`SyncService::restored`]).
    restored: Vec<Member>,
}

/// What [`SyncService::check_restored`] found: the members let in while restored.
#[derive(Message)]
#[rtype(result = "()")]
struct RestoredMembers(Result<Vec<Member>, String>);

#[derive(Message)]
#[rtype(result = "()")]
struct PeerEvent(NetworkEvent);

#[derive(Message)]
#[rtype(result = "()")]
struct InvitationsChanged;

enum Role {
    Leader {
        core: Addr<LeaderActor>,
        links: HashMap<PeerId, Addr<LinkActor>>,
        /// The log blocks this term's links serve fetches from (shared by all of them).
        cache: Arc<LogCache>,
        /// The commit sequence of this leadership.
        shared: Arc<LeaderShared>,
    },
    Follower {
        follower: Addr<FollowerActor>,
    },
    /// No leader known yet, the role actors are not started, or this device is no longer a
    /// member.
    Idle,
}

/// The supervisor of one library.
pub struct SyncService {
    cx: LibraryContext,
    state: Option<SyncState>,
    membership: Option<Membership>,
    /// Every other member: peer → device.
    peers: PeerBook,
    /// Members removed while this device leads, whose link delivers the removal first.
    leaving: HashSet<PeerId>,
    /// A leader that removed itself, kept in (see `install`) until another leader or term.
    outgoing_leader: Option<(PeerId, Uuid)>,
    /// When this idle device last asked who leads ([`SyncService::ask_who_leads`]).
    asked_who_leads: Option<std::time::Instant>,
    connected: HashSet<PeerId>,
    role: Role,
    election: Option<Addr<ElectionActor>>,
    local_peer: Option<PeerId>,
    self_addr: Option<Addr<SyncService>>,
    proposer: Proposer,
    proposer_task: Option<tokio::task::JoinHandle<()>>,
    /// The leader's commit sequence as a follower actor of this device last showed it (a new
    /// follower actor starts from it).
    follower_commit: u64,
    /// The follower actor tells the service when the leader's commit reaches this (a voter
    /// change is committed); `u64::MAX`: nothing watched.
    commit_watch: u64,
    /// Why a member refused this device as removed, if one did.
    removed_hint: Option<String>,
    /// This device's signed address hint (counter: when it was made).
    own_hint: Option<AddressHint>,
    /// An expiry check of the invitations is scheduled.
    invitation_timer: Option<SpawnHandle>,
    /// The members of the configuration this device last knew that the configuration in effect
    /// lacks, let in while the database is behind its high-water mark (restored to an older
    /// copy) so that it catches up from the leader they elected: see [`SyncService::restored`].
    restored: Vec<Member>,
    /// A look at the database for [`SyncService::restored`] is under way; `pending`: another
    /// was asked for meanwhile.
    restored_check: (bool, bool),
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl SyncService {
    /// A service for the library in `cx`.
    pub fn new(cx: LibraryContext) -> Self {
        let proposer = Proposer::new(
            cx.library_id,
            cx.device_id,
            cx.db.clone(),
            cx.tm.clone(),
            cx.transport.clone(),
            cx.config.clone(),
            cx.events.clone(),
            cx.metrics.clone(),
            cx.writes_paused.clone(),
        );
        Self {
            proposer,
            proposer_task: None,
            cx,
            state: None,
            membership: None,
            peers: PeerBook::default(),
            leaving: HashSet::new(),
            outgoing_leader: None,
            asked_who_leads: None,
            connected: Default::default(),
            role: Role::Idle,
            election: None,
            local_peer: None,
            self_addr: None,
            follower_commit: 0,
            commit_watch: u64::MAX,
            removed_hint: None,
            own_hint: None,
            invitation_timer: None,
            restored: Vec::new(),
            restored_check: (false, false),
        }
    }

    fn device_of(&self, peer: &PeerId) -> Option<Uuid> {
        self.peers.device_of(peer)
    }

    fn peer_of(&self, device: Uuid) -> Option<PeerId> {
        self.peers.peer_of(device)
    }

    /// The role this device's actors play now.
    fn serving(&self) -> Serving {
        match self.role {
            Role::Leader { .. } => Serving::Leader,
            Role::Follower { .. } => Serving::Follower,
            Role::Idle => Serving::Idle,
        }
    }

    /// Whether this device is a member of the configuration in effect.
    fn is_member(&self) -> bool {
        self.membership.as_ref().is_none_or(|m| m.configuration.contains(self.cx.device_id))
    }

    /// Every member (this device included) and its peer, for the election.
    fn peer_map(&self) -> BTreeMap<Uuid, PeerId> {
        let Some(m) = &self.membership else { return BTreeMap::new() };
        m.configuration
            .members
            .iter()
            .filter_map(|mem| mem.peer_id.parse::<PeerId>().ok().map(|p| (mem.device_id, p)))
            .collect()
    }

    /// The election's view of the configuration in effect.
    fn election_membership(&self) -> ElectionMembership {
        match &self.membership {
            // The voters before the latest voter change, while it is not known to be committed:
            // elections need both sets' votes meanwhile (docs/architecture.md, "Membership").
            Some(m) => {
                ElectionMembership::new(m.configuration.voters(), m.configuration.learners())
                    .with_previous(m.previous_voters.clone())
            }
            None => ElectionMembership::new(BTreeSet::new(), BTreeSet::new()),
        }
    }

    /// Every member (this device included) and its peer, for the proposer.
    fn member_map(&self) -> BTreeMap<Uuid, PeerId> {
        let mut m: BTreeMap<Uuid, PeerId> =
            self.peers.members.iter().map(|(p, d)| (*d, *p)).collect();
        if let Some(me) = self.local_peer {
            m.insert(self.cx.device_id, me);
        }
        m
    }

    fn start_election(&mut self, ctx: &mut Context<Self>) {
        let Some(state) = self.state.as_ref() else { return };
        // A restarted election actor resumes from what is on disk (the election record over
        // the row): this service's copy follows role changes only and can miss a vote granted
        // within a term. The copy serves only if the disk cannot be read.
        let persisted = match self.cx.db.sync_state() {
            Ok(stored) => persisted_of(&stored),
            Err(e) => {
                tracing::warn!(library_id = %self.cx.library_id, error = %e,
                    "cannot read the election state; the election resumes from memory");
                persisted_of(state)
            }
        };
        let me = ctx.address();
        let election = ElectionActor::new(ElectionContext {
            library_id: self.cx.library_id,
            device_id: self.cx.device_id,
            db: self.cx.db.clone(),
            transport: self.cx.transport.clone(),
            config: self.cx.config.clone(),
            events: self.cx.events.clone(),
            metrics: self.cx.metrics.clone(),
            members: self.peer_map(),
            membership: self.election_membership(),
            persisted,
            role_changes: me.clone().recipient(),
            heartbeats: me.clone().recipient(),
            writes_paused: self.cx.writes_paused.clone(),
            hints: Some(me.recipient()),
        })
        .start();
        self.election = Some(election);
    }

    /// Checks every actor and task this service started and restarts the dead ones (a panic
    /// closes an actor's mailbox, ends a task): decided by [`supervise::supervise`], counted by
    /// kind in the metrics.
    fn watchdog(&mut self, ctx: &mut Context<Self>) {
        let mut seen = Vec::new();
        if let Some(e) = &self.election {
            seen.push((Child::Election, e.connected()));
        }
        match &self.role {
            Role::Leader { core, links, .. } => {
                seen.push((Child::Leader, core.connected()));
                seen.extend(links.values().map(|l| (Child::Link, l.connected())));
            }
            Role::Follower { follower } => seen.push((Child::Follower, follower.connected())),
            Role::Idle => {}
        }
        if let Some(task) = &self.proposer_task {
            seen.push((Child::Proposer, !task.is_finished()));
        }
        // An idle follower asks again, once per leader timeout, until it knows whom to follow.
        let idle_follower = matches!(self.role, Role::Idle)
            && self.state.as_ref().is_some_and(|s| s.role == SyncRole::Follower);
        if idle_follower
            && self.asked_who_leads.is_none_or(|at| at.elapsed() >= self.cx.config.leader_timeout)
        {
            self.ask_who_leads();
        }
        // Members let in while restored: until the log has caught up past its mark.
        if !self.restored.is_empty() {
            self.check_restored();
        }
        let library_id = self.cx.library_id;
        for action in supervise::supervise(&seen) {
            match action {
                supervise::Action::Count(child) => {
                    tracing::error!(%library_id, kind = child.name(),
                        "{} stopped unexpectedly (panic?); restarting", child.name());
                    self.cx.metrics.restarts.count(child);
                }
                supervise::Action::RestartElection => self.start_election(ctx),
                supervise::Action::RestartRole => self.start_role(),
                supervise::Action::RestartProposer => self.start_proposer(),
            }
        }
    }

    /// An idle device (no leader whose peer it knows) asks every member it knows who leads: a
    /// `FetchEntries`, which a follower answers `NotLeader` naming the leader and its peer id,
    /// handled as any [`LeaderHint`]. A learner never campaigns, so without this one that
    /// restarted knowing its leader's device but not its peer (the leader joined after it)
    /// stayed idle for good (found by the simulator, seed 14900; docs/testing.md).
    fn ask_who_leads(&mut self) {
        self.asked_who_leads = Some(std::time::Instant::now());
        let (Some(state), Some(me)) = (self.state.as_ref(), self.self_addr.clone()) else {
            return;
        };
        let last = self.cx.db.last_position().unwrap_or_default();
        for (peer, device) in &self.peers.members {
            if *device == self.cx.device_id {
                continue;
            }
            let question = who_leads(self.cx.library_id, state.current_term, last);
            let answer = self.cx.transport.request(*peer, question);
            let me = me.clone();
            spawn_supervised(
                Task::LeaderProbe,
                self.cx.metrics.clone(),
                async move {
                    if let Some(hint) = answer.await.ok().as_ref().and_then(LeaderHint::named_in) {
                        me.do_send(hint);
                    }
                },
                |_| {},
            );
        }
    }

    /// Spawns the proposer's task (it starts from the stored leader, members and outbox).
    fn start_proposer(&mut self) {
        if let Some(old) = self.proposer_task.replace(actix_rt::spawn(self.proposer.clone().run()))
        {
            old.abort();
        }
    }

    /// Sets the sequence the follower actor watches (see [`FollowerContext::commit_watch`]).
    fn watch_commit(&mut self, m: &Membership) {
        let watch = if m.previous_voters.is_some() { m.voters_since } else { u64::MAX };
        if watch != self.commit_watch {
            self.commit_watch = watch;
            if let Role::Follower { follower } = &self.role {
                follower.do_send(WatchCommit(watch));
            }
        }
    }

    fn stop_role(&mut self) {
        match std::mem::replace(&mut self.role, Role::Idle) {
            Role::Leader { core, links, .. } => {
                core.do_send(Shutdown);
                for s in links.values() {
                    s.do_send(Shutdown);
                }
                // A removed member whose link was delivering its removal: refuse it now.
                for peer in std::mem::take(&mut self.leaving) {
                    self.revoke(peer);
                }
            }
            Role::Follower { follower } => follower.do_send(Shutdown),
            Role::Idle => {}
        }
    }

    /// A device that won an election while entries stashed by a divergence repair were still
    /// waiting for the end of its rebuild (the follower recovers them only after a complete
    /// round from a leader) recovers them now: a leader's log holds every committed entry, so
    /// a stashed entry it lacks at its (sequence, term) is an orphan, re-proposed through the
    /// outbox like any other ([`Applier::recover_orphans`]). Without this the stash waited for
    /// a later rebuild that may never come, and acknowledged writes in it were lost.
    fn recover_stash_as_leader(&self) {
        let db = self.cx.db.clone();
        let proposer = self.proposer.clone();
        let library_id = self.cx.library_id;
        spawn_supervised(
            Task::StashRecovery,
            self.cx.metrics.clone(),
            async move {
                let recover = move || {
                    if db.stashed_count()? == 0 {
                        return Ok(None);
                    }
                    Applier::new(db).recover_orphans().map(Some)
                };
                match run_blocking(recover).await {
                    Ok(Some(recovered)) => {
                        info!(%library_id, ?recovered, "stashed entries recovered on taking office");
                        proposer.wake();
                    }
                    Ok(None) => {}
                    Err(e) => warn!(%library_id, error = %e, "cannot recover the stashed entries"),
                }
            },
            |_| {},
        );
    }

    fn start_role(&mut self) {
        self.stop_role();
        let Some(state) = self.state.clone() else { return };
        if let Some((peer, device)) = self.outgoing_leader {
            if state.leader_device != Some(device) {
                // A removed leader kept in until another leader or term is known: out now.
                self.outgoing_leader = None;
                self.peers.provisional.remove(&peer);
                if !self.peers.members.contains_key(&peer) {
                    self.revoke(peer);
                }
            }
        }
        let Some(membership) = self.membership.clone() else { return };
        let library_id = self.cx.library_id;
        self.proposer.set_leader(LeaderView {
            term: state.current_term,
            leader: if state.role == SyncRole::Candidate { None } else { state.leader_device },
        });
        if !self.is_member() {
            // Its copy is kept, read-only. It still follows a leader it knows (a removal that
            // never commits is undone by the leader's log, and the device is a member again);
            // a leader that applied the removal refuses it, and status says so. A leader that
            // removed itself keeps leading until the removal commits, then resigns.
            info!(%library_id, "this device is not a member of the library's configuration");
        }
        if state.role == SyncRole::Leader && state.leader_device == Some(self.cx.device_id) {
            let shared = Arc::new(LeaderShared::default());
            let core = LeaderActor::leading(
                self.cx.tm.subscribe(),
                LeaderContext {
                    library_id,
                    me: self.cx.device_id,
                    term: state.current_term,
                    db: self.cx.db.clone(),
                    tm: self.cx.tm.clone(),
                    membership,
                    catch_up: self.cx.config.max_entries_per_response,
                    shared: shared.clone(),
                    reports: self.self_addr.clone().map(|a| a.recipient()),
                    metrics: self.cx.metrics.clone(),
                    writes_paused: self.cx.writes_paused.clone(),
                    progress: self.cx.progress.clone(),
                },
            )
            .start();
            // A new cache per start: the leader's log only grows while it leads this term.
            let cache = new_log_cache(self.cx.config.max_entries_per_response);
            let mut links = HashMap::new();
            for (peer, device) in self.peers.members.clone() {
                links.insert(peer, self.start_link(&state, &cache, &shared, &core, device, peer));
            }
            cache.set_readers(links.len());
            core.do_send(SetLinks(links.values().map(|a| a.clone().recipient()).collect()));
            info!(%library_id, term = state.current_term, followers = links.len(), "leading");
            self.role = Role::Leader { core, links, cache, shared };
            self.recover_stash_as_leader();
        } else if let Some(leader_peer) = state.leader_device.and_then(|d| self.peer_of(d)) {
            let follower = FollowerActor::new(FollowerContext {
                library_id,
                db: self.cx.db.clone(),
                transport: self.cx.transport.clone(),
                events: self.cx.events.clone(),
                config: self.cx.config.clone(),
                metrics: self.cx.metrics.clone(),
                leader: leader_peer,
                leader_device: state.leader_device,
                election: self.self_addr.clone().map(|a| a.recipient()),
                proposer: Some(self.proposer.clone()),
                repoint: self.self_addr.clone().map(|a| a.recipient()),
                term: state.current_term,
                membership: self.self_addr.clone().map(|a| a.recipient()),
                leader_commit: self.follower_commit,
                commit_watch: self.commit_watch,
                progress: self.cx.progress.clone(),
            })
            .start();
            info!(%library_id, term = state.current_term, leader = %leader_peer, "following");
            self.role = Role::Follower { follower };
        } else if state.role == SyncRole::Candidate {
            info!(%library_id, term = state.current_term, "campaigning; no role actors until a leader is known");
        } else {
            warn!(%library_id, leader = ?state.leader_device, "no reachable leader known; idle");
            self.ask_who_leads();
        }
        let _ = self.cx.events.send(SyncEvent::RoleChanged {
            library_id,
            role: state.role,
            term: state.current_term,
        });
        self.cx.progress.note_change();
    }

    fn start_link(
        &self,
        state: &SyncState,
        cache: &Arc<LogCache>,
        shared: &Arc<LeaderShared>,
        core: &Addr<LeaderActor>,
        device: Uuid,
        peer: PeerId,
    ) -> Addr<LinkActor> {
        Self::start_link_with(
            &self.cx,
            self.self_addr.as_ref(),
            &self.connected,
            state,
            cache,
            shared,
            core,
            device,
            peer,
        )
    }

    /// The peers of `m`'s members other than this device, with the addresses to dial them at,
    /// and those of the members let in while restored ([`SyncService::restored`]).
    fn peers_of(&self, m: &Membership) -> HashMap<PeerId, (Uuid, Vec<Multiaddr>)> {
        m.configuration
            .members
            .iter()
            .chain(self.restored.iter())
            .filter(|mem| mem.device_id != self.cx.device_id)
            .filter_map(|mem| match mem.peer_id.parse::<PeerId>() {
                Ok(p) => Some((p, (mem.device_id, addrs_of(mem)))),
                Err(_) => {
                    warn!(device = %mem.device_id, peer_id = %mem.peer_id, "member with an invalid peer id ignored");
                    None
                }
            })
            .collect()
    }

    /// Makes `m` the configuration in effect on this device (see the module documentation),
    /// keeps it as the one this device last knew if it is newer, and looks again at who is let
    /// in while restored ([`SyncService::check_restored`]).
    fn install_membership(&mut self, m: Membership) {
        if self.membership.as_ref() == Some(&m) {
            return;
        }
        self.apply_membership(m);
        self.check_restored();
    }

    /// Looks at the database, off the actor's thread: keeps the configuration in effect as the
    /// one this device last knew if it is newer (`Database::mark_configuration`), and finds
    /// the members let in while restored (`Database::admitted_while_behind`, the rule of
    /// docs/architecture.md, "Restores are detected"), which [`RestoredMembers`] brings back.
    /// One look at a time; one asked for meanwhile follows it.
    fn check_restored(&mut self) {
        if self.restored_check.0 {
            self.restored_check.1 = true;
            return;
        }
        let Some(me) = self.self_addr.clone() else { return };
        self.restored_check = (true, false);
        let db = self.cx.db.clone();
        let library_id = self.cx.library_id;
        spawn_supervised(
            Task::Network,
            self.cx.metrics.clone(),
            async move {
                run_blocking(move || {
                    if let Err(e) = db.mark_configuration() {
                        warn!(%library_id, error = %e, "cannot keep the configuration in effect");
                    }
                    db.admitted_while_behind()
                })
                .await
                .map_err(|e| e.to_string())
            },
            move |outcome| {
                let outcome = outcome.map_err(|_| "panicked".to_owned()).and_then(|r| r);
                me.do_send(RestoredMembers(outcome));
            },
        );
    }

    /// Lets `members` in as the members admitted while restored (see
    /// [`SyncService::restored`]), and out those no longer admitted.
    fn set_restored(&mut self, members: Vec<Member>) {
        if members == self.restored {
            return;
        }
        let library_id = self.cx.library_id;
        if members.is_empty() {
            info!(%library_id, "caught up: the configuration in effect says who the members are");
        } else {
            let devices: Vec<Uuid> = members.iter().map(|m| m.device_id).collect();
            warn!(%library_id, ?devices, "behind the high-water mark with an older configuration: \
                the members of the configuration this device last knew are let in until it has \
                caught up");
        }
        self.restored = members;
        if let Some(m) = self.membership.clone() {
            self.apply_membership(m);
        }
    }

    /// Makes `m` the configuration in effect, with the members let in while restored.
    fn apply_membership(&mut self, m: Membership) {
        let library_id = self.cx.library_id;
        let was_member = self.is_member();
        // The members of the configuration that was in effect: a peer that leaves without
        // having been one of them was only let in while restored, and is not told it was
        // removed (it was not).
        let configured: HashSet<Uuid> = self
            .membership
            .iter()
            .flat_map(|m| m.configuration.members.iter().map(|mem| mem.device_id))
            .collect();
        let new = self.peers_of(&m);
        let removed: Vec<(PeerId, Uuid)> = self
            .peers
            .members
            .iter()
            .filter(|(p, d)| new.get(p).is_none_or(|(nd, _)| nd != *d))
            .map(|(p, d)| (*p, *d))
            .collect();
        let added: Vec<(PeerId, Uuid, Vec<Multiaddr>)> = new
            .iter()
            .filter(|(p, _)| !self.peers.members.contains_key(p))
            .map(|(p, (d, a))| (*p, *d, a.clone()))
            .collect();
        debug!(%library_id, sequence = m.sequence, added = added.len(), removed = removed.len(),
            "configuration in effect");
        self.peers.set_members(new.iter().map(|(p, (d, _))| (*p, *d)).collect());
        self.cx.is_member.store(m.configuration.contains(self.cx.device_id), Ordering::Release);
        self.watch_commit(&m);
        self.membership = Some(m);
        for (peer, device, addrs) in &added {
            info!(%library_id, device = %device, "member added");
            let (network, peer, addrs) = (self.cx.network.clone(), *peer, addrs.clone());
            spawn_supervised(
                Task::Network,
                self.cx.metrics.clone(),
                async move {
                    if let Err(e) = network.add_member(library_id, peer, addrs).await {
                        warn!(%library_id, %peer, error = %e, "cannot allow a new member");
                    }
                },
                |_| {},
            );
        }
        let sequence = self.membership.as_ref().map_or(0, |m| m.sequence);
        for (peer, device) in &removed {
            info!(%library_id, device = %device, "member removed");
            match &self.role {
                Role::Leader { links, .. } if links.contains_key(peer) => {
                    // Its link delivers the entry that removes it first (bounded), then
                    // reports back and the peer is refused.
                    self.leaving.insert(*peer);
                    if let Some(s) = links.get(peer) {
                        s.do_send(Leaving { sequence });
                    }
                }
                _ if self.state.as_ref().and_then(|s| s.leader_device) == Some(*device)
                    && *device != self.cx.device_id =>
                {
                    // The leader removed itself: it leads until the removal commits, and it
                    // learns that from this device's acknowledgements. Keep it in (as a leader
                    // let in although not a member) until another leader or term is known;
                    // refused at once, it never learned, and led its old term for good.
                    self.peers.provisional.insert(*peer, *device);
                    self.outgoing_leader = Some((*peer, *device));
                }
                _ if !configured.contains(device) => self.forget(*peer),
                _ => self.revoke(*peer),
            }
        }
        if let Role::Leader { core, links, cache, shared } = &mut self.role {
            if let Some(state) = self.state.as_ref() {
                let mut started = false;
                for (peer, device, _) in &added {
                    // A member removed and added again while its link was delivering the
                    // removal: that link stops by itself; give it a fresh one.
                    if self.leaving.remove(peer) {
                        if let Some(old) = links.remove(peer) {
                            old.do_send(Shutdown);
                        }
                    }
                    if !links.contains_key(peer) {
                        let s = Self::start_link_with(
                            &self.cx,
                            self.self_addr.as_ref(),
                            &self.connected,
                            state,
                            cache,
                            shared,
                            core,
                            *device,
                            *peer,
                        );
                        links.insert(*peer, s);
                        started = true;
                    }
                }
                if started {
                    cache.set_readers(links.len());
                    core.do_send(SetLinks(links.values().map(|a| a.clone().recipient()).collect()));
                }
            }
        }
        if let Some(w) = &self.election {
            w.do_send(SetMembership {
                peers: self.peer_map(),
                membership: self.election_membership(),
            });
        }
        self.proposer.set_members(self.member_map());
        let member = self.is_member();
        if was_member && !member {
            warn!(%library_id, "this device was removed from the library; its copy is kept, read-only");
        } else if !was_member && member {
            info!(%library_id, "this device is a member of the library again");
            self.removed_hint = None;
            self.start_role();
        } else if matches!(self.role, Role::Idle)
            && self
                .state
                .as_ref()
                .and_then(|s| s.leader_device)
                .is_some_and(|l| self.peer_of(l).is_some() && l != self.cx.device_id)
        {
            // The leader we were waiting for is now known.
            self.start_role();
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn start_link_with(
        cx: &LibraryContext,
        service: Option<&Addr<SyncService>>,
        connected: &HashSet<PeerId>,
        state: &SyncState,
        cache: &Arc<LogCache>,
        shared: &Arc<LeaderShared>,
        core: &Addr<LeaderActor>,
        device: Uuid,
        peer: PeerId,
    ) -> Addr<LinkActor> {
        let link = LinkActor::new(
            LinkContext {
                library_id: cx.library_id,
                db: cx.db.clone(),
                transport: cx.transport.clone(),
                events: cx.events.clone(),
                term: state.current_term,
                max_entries_per_response: cx.config.max_entries_per_response,
                max_response_bytes: cx.config.max_response_bytes,
                max_frame: cx.config.max_frame,
                notify_window: cx.config.notify_window,
                election: service.map(|a| a.clone().recipient()),
                lease: service.map(|a| a.clone().recipient()),
                cache: cache.clone(),
                metrics: cx.metrics.clone(),
                leader_device: Some(cx.device_id),
                leader: shared.clone(),
                progress: Some(core.clone().recipient()),
                left: service.map(|a| a.clone().recipient()),
            },
            device,
            peer,
        )
        .start();
        if connected.contains(&peer) {
            link.do_send(Connection(true));
        }
        link
    }

    /// `peer`, let in while restored only, is not any more: the network forgets it (it is not
    /// told it was removed from the library).
    fn forget(&mut self, peer: PeerId) {
        let (network, library_id) = (self.cx.network.clone(), self.cx.library_id);
        spawn_supervised(
            Task::Network,
            self.cx.metrics.clone(),
            async move {
                if let Err(e) = network.remove_member(library_id, peer).await {
                    warn!(%library_id, %peer, error = %e, "cannot forget a member let in while restored");
                }
            },
            |_| {},
        );
    }

    /// `peer` is no longer a member: refused from now on (told so), its link stopped.
    fn revoke(&mut self, peer: PeerId) {
        self.leaving.remove(&peer);
        if let Role::Leader { links, cache, core, .. } = &mut self.role {
            if let Some(s) = links.remove(&peer) {
                s.do_send(Shutdown);
                cache.set_readers(links.len());
                core.do_send(SetLinks(links.values().map(|a| a.clone().recipient()).collect()));
            }
        }
        let (network, library_id) = (self.cx.network.clone(), self.cx.library_id);
        spawn_supervised(
            Task::Network,
            self.cx.metrics.clone(),
            async move {
                if let Err(e) = network.revoke_member(library_id, peer).await {
                    warn!(%library_id, %peer, error = %e, "cannot refuse a removed member");
                }
            },
            |_| {},
        );
    }

    /// The peer id of the leader this device knows, for `NotLeader` replies.
    fn leader_peer_hint(&self) -> Option<String> {
        let leader = self.state.as_ref().and_then(|s| s.leader_device)?;
        self.peer_of(leader).map(|p| p.to_string())
    }

    /// Whether this device leads now.
    fn leading(&self) -> Option<(&Addr<LeaderActor>, u64)> {
        match (&self.role, &self.state) {
            (Role::Leader { core, .. }, Some(s)) => Some((core, s.current_term)),
            _ => None,
        }
    }

    /// Makes `change` through this device's leader core, or asks the leader for it.
    fn change_membership(
        &self,
        change: MembershipChange,
        wait: Duration,
    ) -> futures::future::BoxFuture<'static, Result<ConfigOutcome, String>> {
        if let Some((core, _)) = self.leading() {
            let core = core.clone();
            return Box::pin(async move {
                core.send(ChangeConfig { change, wait })
                    .await
                    .map_err(|_| "the leader's core stopped".to_string())?
                    .map_err(|e| e.to_string())
            });
        }
        let state = self.state.clone();
        let leader = state.as_ref().and_then(|s| s.leader_device);
        let Some(peer) = leader.filter(|l| *l != self.cx.device_id).and_then(|l| self.peer_of(l))
        else {
            return Box::pin(async {
                Err("no leader is known now: the change cannot be made; retry once one is".into())
            });
        };
        let (transport, library_id) = (self.cx.transport.clone(), self.cx.library_id);
        let term = state.map_or(0, |s| s.current_term);
        Box::pin(async move {
            let request = SyncMessage::ChangeMembership {
                library_id,
                term,
                request_id: Uuid::new_v4(),
                change,
            };
            match transport.request(peer, request).await {
                Ok(SyncMessage::MembershipResult { config_sequence, committed, .. }) => {
                    Ok(ConfigOutcome { config_sequence, committed })
                }
                Ok(SyncMessage::Error { code, message, .. }) => {
                    Err(format!("the leader refused the change ({code}): {message}"))
                }
                Ok(other) => Err(format!("unexpected answer {}", other.kind())),
                Err(e) => Err(format!("the leader could not be reached: {e}")),
            }
        })
    }

    /// Answers a `Join`: a guest presents an invitation this device issued.
    fn handle_join(&mut self, req: InboundRequest, ctx: &mut Context<Self>) {
        let library_id = self.cx.library_id;
        let SyncMessage::Join { secret, device_id, name, addresses, .. } = req.message else {
            return;
        };
        let refuse = |req_reply: tokio::sync::oneshot::Sender<SyncMessage>, code, msg: String| {
            let _ = req_reply.send(SyncMessage::error(library_id, code, msg));
        };
        if secret.len() != lsync_storage::invitations::SECRET_LEN {
            return refuse(
                req.reply,
                ErrorCode::BadRequest,
                "an invitation secret is 32 bytes".into(),
            );
        }
        if let Err(e) = lsync_protocol::membership::check_addresses(&addresses) {
            return refuse(req.reply, ErrorCode::BadRequest, e);
        }
        if name.len() > lsync_protocol::membership::MAX_TEXT || device_id == self.cx.device_id {
            return refuse(req.reply, ErrorCode::BadRequest, "bad device id or name".into());
        }
        if !self.is_member() {
            return refuse(
                req.reply,
                ErrorCode::Unauthorized,
                "this device is no longer a member".into(),
            );
        }
        let peer = req.peer;
        let member = Member {
            device_id,
            peer_id: peer.to_string(),
            addresses,
            name,
            role: MemberRole::Learner,
            preference: RolePreference::Auto,
        };
        let db = self.cx.db.clone();
        let claim_secret = secret.clone();
        let claim = run_blocking(move || db.invitation_claim(&claim_secret, device_id, now_ms()));
        let reply = req.reply;
        ctx.spawn(claim.into_actor(self).then(move |claimed, this, ctx| {
            let mut member = member;
            let outcome = match claimed {
                Ok(Ok(invitation)) => {
                    if invitation.learner {
                        member.preference = RolePreference::Learner;
                    }
                    Ok(this.change_membership(MembershipChange::Add { member }, REMOTE_CHANGE_WAIT))
                }
                Ok(Err(refused)) => Err((ErrorCode::Unauthorized, refused.to_string())),
                Err(e) => Err((ErrorCode::Internal, e.to_string())),
            };
            ctx.notify(InvitationsChanged);
            let db = this.cx.db.clone();
            let state = this.state.clone();
            async move {
                let change = match outcome {
                    Ok(change) => change,
                    Err((code, message)) => {
                        info!(%library_id, %peer, %message, "join refused");
                        let _ = reply.send(SyncMessage::error(library_id, code, message));
                        return;
                    }
                };
                match change.await {
                    Ok(outcome) => {
                        // Answer with the configuration holding the joiner: this device's own,
                        // once its log has the entry (the leader pushes it at once).
                        let deadline = tokio::time::Instant::now() + JOIN_APPLY_WAIT;
                        let membership = loop {
                            let db = db.clone();
                            let m = run_blocking(move || db.membership()).await;
                            match m {
                                Ok(m) if m.sequence >= outcome.config_sequence
                                    && m.configuration.contains(device_id) =>
                                {
                                    break Some(m)
                                }
                                _ if tokio::time::Instant::now() >= deadline => break None,
                                _ => tokio::time::sleep(Duration::from_millis(20)).await,
                            }
                        };
                        let Some(membership) = membership else {
                            let _ = reply.send(SyncMessage::error(
                                library_id,
                                ErrorCode::Internal,
                                "the configuration that adds the device did not arrive here in time; retry",
                            ));
                            return;
                        };
                        info!(%library_id, device = %device_id, sequence = outcome.config_sequence,
                            committed = outcome.committed, "device joined as a learner");
                        let _ = reply.send(SyncMessage::Joined {
                            library_id,
                            term: state.as_ref().map_or(0, |s| s.current_term),
                            leader: state.as_ref().and_then(|s| s.leader_device),
                            configuration: membership.configuration,
                            config_sequence: membership.sequence,
                            committed: outcome.committed,
                        });
                    }
                    Err(message) => {
                        let _ = run_blocking(move || db.invitation_release(&secret, device_id)).await;
                        info!(%library_id, %peer, %message, "join failed");
                        let _ = reply.send(SyncMessage::error(library_id, ErrorCode::Internal, message));
                    }
                }
            }
            .into_actor(this)
        }));
    }

    /// Answers a `ChangeMembership` from a member (the leader only).
    fn handle_change(&mut self, req: InboundRequest, from: Option<Uuid>) {
        let library_id = self.cx.library_id;
        let SyncMessage::ChangeMembership { request_id, change, .. } = req.message else { return };
        if from.is_none() {
            let _ = req.reply.send(SyncMessage::error(
                library_id,
                ErrorCode::Unauthorized,
                "only a member changes the membership",
            ));
            return;
        }
        let Some((core, term)) = self.leading() else {
            let _ = req.reply.send(SyncMessage::Error {
                leader_peer: self.leader_peer_hint(),
                library_id,
                code: ErrorCode::NotLeader,
                message: "this device does not lead the library".into(),
                leader_hint: self.state.as_ref().and_then(|s| s.leader_device),
                term: self.state.as_ref().map_or(0, |s| s.current_term),
            });
            return;
        };
        let core = core.clone();
        let answer = async move {
            match core.send(ChangeConfig { change, wait: REMOTE_CHANGE_WAIT }).await {
                Ok(Ok(o)) => SyncMessage::MembershipResult {
                    library_id,
                    term,
                    request_id,
                    config_sequence: o.config_sequence,
                    committed: o.committed,
                },
                Ok(Err(ConfigError::Invalid(m))) => {
                    SyncMessage::error(library_id, ErrorCode::BadRequest, m)
                }
                Ok(Err(e)) => SyncMessage::error(library_id, ErrorCode::Internal, e.to_string()),
                Err(_) => {
                    SyncMessage::error(library_id, ErrorCode::Internal, "the leader's core stopped")
                }
            }
        };
        // The requester waits for the answer: a task that panicked answers `Error(Internal)`.
        let reply = req.reply;
        spawn_supervised(Task::Answer, self.cx.metrics.clone(), answer, move |r| {
            let _ = reply.send(r.unwrap_or_else(|e| {
                SyncMessage::error(library_id, ErrorCode::Internal, e.to_string())
            }));
        });
    }

    /// This device's signed hint, made once per start.
    fn own_hint(&mut self) -> AddressHint {
        if let Some(h) = &self.own_hint {
            return h.clone();
        }
        let addresses: Vec<String> = self.cx.listen_addrs.iter().map(|a| a.to_string()).collect();
        let counter = u64::try_from(now_ms()).unwrap_or(0);
        let hint = AddressHint::sign(&self.cx.keypair, self.cx.device_id, counter, addresses);
        self.own_hint = Some(hint.clone());
        hint
    }

    /// Verifies the hints against the members' peer ids, keeps the newer ones and dials their
    /// devices there from now on.
    fn take_hints(&self, hints: Vec<AddressHint>) {
        let Some(m) = &self.membership else { return };
        let mut verified = Vec::new();
        for hint in hints.into_iter().take(lsync_protocol::membership::MAX_MEMBERS) {
            if hint.device_id == self.cx.device_id {
                continue;
            }
            let Some(peer) = m
                .configuration
                .member(hint.device_id)
                .and_then(|mem| mem.peer_id.parse::<PeerId>().ok())
            else {
                continue;
            };
            if hint.verify(&peer) {
                verified.push((peer, hint));
            } else {
                debug!(device = %hint.device_id, "address hint with a bad signature ignored");
            }
        }
        if verified.is_empty() {
            return;
        }
        let (db, network, library_id) =
            (self.cx.db.clone(), self.cx.network.clone(), self.cx.library_id);
        spawn_supervised(
            Task::Network,
            self.cx.metrics.clone(),
            async move {
                for (peer, hint) in verified {
                    let stored = {
                        let (db, hint) = (db.clone(), hint.clone());
                        run_blocking(move || db.hint_store(&hint)).await
                    };
                    if matches!(stored, Ok(true)) {
                        let addrs: Vec<Multiaddr> =
                            hint.addresses.iter().filter_map(|a| a.parse().ok()).collect();
                        debug!(%library_id, device = %hint.device_id, ?addrs, "new addresses of a member");
                        let _ = network.set_member_addresses(library_id, peer, addrs).await;
                    }
                }
            },
            |_| {},
        );
    }

    /// The hints to send: this device's own, then every one it stored.
    fn hints_to_send(&mut self) -> impl std::future::Future<Output = Vec<AddressHint>> + 'static {
        let own = self.own_hint();
        let db = self.cx.db.clone();
        async move {
            let mut hints = vec![own];
            if let Ok(stored) = run_blocking(move || db.hints()).await {
                hints.extend(stored);
            }
            hints.truncate(lsync_protocol::membership::MAX_MEMBERS);
            hints
        }
    }

    /// Announces this device's addresses to `peer` and takes its hints back.
    fn announce_to(&mut self, peer: PeerId, ctx: &mut Context<Self>) {
        let hints = self.hints_to_send();
        let (transport, library_id) = (self.cx.transport.clone(), self.cx.library_id);
        let work = async move {
            let request = SyncMessage::AnnounceAddresses { library_id, hints: hints.await };
            match transport.request(peer, request).await {
                Ok(SyncMessage::AnnounceAddresses { hints, .. }) => hints,
                _ => Vec::new(),
            }
        };
        ctx.spawn(work.into_actor(self).map(|hints, this, _| this.take_hints(hints)));
    }

    /// Tells the network whether guests may connect (while an invitation is open, and for a
    /// grace period after it expired or was used, so that a late device is told why it is
    /// refused), and schedules the next check.
    fn check_invitations(&mut self, ctx: &mut Context<Self>) {
        let (db, network, library_id) =
            (self.cx.db.clone(), self.cx.network.clone(), self.cx.library_id);
        let work = async move {
            let now = now_ms();
            let until = run_blocking(move || db.invitations_welcome_until()).await.ok().flatten();
            let welcome = until.is_some_and(|t| t > now);
            let _ = network.welcome_guests(library_id, welcome).await;
            until
                .filter(|_| welcome)
                .map(|at| Duration::from_millis(u64::try_from(at - now).unwrap_or(0) + 1))
        };
        ctx.spawn(work.into_actor(self).map(|next, this, ctx| {
            if let Some(h) = this.invitation_timer.take() {
                ctx.cancel_future(h);
            }
            if let Some(delay) = next {
                this.invitation_timer =
                    Some(ctx.run_later(delay, |this, ctx| this.check_invitations(ctx)));
            }
        }));
    }
}

fn addrs_of(member: &Member) -> Vec<Multiaddr> {
    member.addresses.iter().filter_map(|a| a.parse().ok()).collect()
}

impl Actor for SyncService {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Inbound requests arrive with try_send; a small mailbox would refuse bursts.
        ctx.set_mailbox_capacity(MAILBOX_CAPACITY);
        self.self_addr = Some(ctx.address());
        self.proposer.set_lease(ctx.address().recipient());
        let cx = self.cx.clone();
        let me = ctx.address();
        let mut net_events = cx.network.subscribe();
        ctx.spawn(
            async move {
                loop {
                    match net_events.recv().await {
                        Ok(ev) => {
                            if me.send(PeerEvent(ev)).await.is_err() {
                                break;
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(broadcast::error::RecvError::Closed) => break,
                    }
                }
            }
            .into_actor(self),
        );
        let me = ctx.address();
        let setup = async move {
            let db = cx.db.clone();
            let library_id = cx.library_id;
            let (state, membership, hints, former, restored) = run_blocking(move || {
                if let Err(e) = db.mark_configuration() {
                    warn!(%library_id, error = %e, "cannot keep the configuration in effect");
                }
                // Read errors of the marked configuration leave no one let in (as before it).
                let restored = db.admitted_while_behind().unwrap_or_else(|e| {
                    warn!(%library_id, error = %e, "cannot read the configuration last known");
                    Vec::new()
                });
                Ok((
                    start_state(&db)?,
                    db.membership()?,
                    db.hints()?,
                    db.former_members()?,
                    restored,
                ))
            })
            .await
            .map_err(|e| e.to_string())?;
            if !restored.is_empty() {
                let devices: Vec<Uuid> = restored.iter().map(|m| m.device_id).collect();
                warn!(%library_id, ?devices, "behind the high-water mark with an older \
                    configuration: the members of the configuration this device last knew are \
                    let in until it has caught up (docs/architecture.md, \"Restores are detected\")");
            }
            let mut routes = Vec::new();
            for m in membership
                .configuration
                .members
                .iter()
                .chain(restored.iter())
                .filter(|m| m.device_id != cx.device_id)
            {
                let Ok(peer) = m.peer_id.parse::<PeerId>() else { continue };
                let mut addrs = addrs_of(m);
                // The latest signed hint first: it is where the member was last heard of.
                if let Some(h) = hints.iter().find(|h| h.device_id == m.device_id) {
                    let hinted: Vec<Multiaddr> =
                        h.addresses.iter().filter_map(|a| a.parse().ok()).collect();
                    addrs.retain(|a| !hinted.contains(a));
                    addrs.splice(0..0, hinted);
                }
                routes.push((peer, addrs));
            }
            cx.network
                .register_library(cx.library_id, routes, me.clone().recipient())
                .await
                .map_err(|e| e.to_string())?;
            // Devices removed before this start are still told so when they come back — but
            // not one the configuration this device last knew has again (removed before an
            // older copy was made, added back since: it is let in while restored).
            let let_in: HashSet<Uuid> = restored.iter().map(|m| m.device_id).collect();
            for m in former.iter().take(64).rev().filter(|m| !let_in.contains(&m.device_id)) {
                if let Ok(peer) = m.peer_id.parse::<PeerId>() {
                    let _ = cx.network.revoke_member(cx.library_id, peer).await;
                }
            }
            let connected = cx.network.connected_peers().await.unwrap_or_default();
            me.do_send(Started { state, membership, connected, restored });
            Ok::<_, String>(())
        };
        let library_id = self.cx.library_id;
        ctx.wait(
            async move {
                if let Err(e) = setup.await {
                    warn!(%library_id, error = %e, "sync service could not start");
                }
            }
            .into_actor(self),
        );
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.stop_role();
        if let Some(t) = self.proposer_task.take() {
            t.abort();
        }
    }
}

impl Handler<Started> for SyncService {
    type Result = ();
    fn handle(&mut self, msg: Started, ctx: &mut Context<Self>) {
        self.connected = msg.connected.into_iter().collect();
        self.local_peer = Some(self.cx.network.local_peer_id());
        self.state = Some(msg.state);
        self.restored = msg.restored;
        let members = self.peers_of(&msg.membership).into_iter().map(|(p, (d, _))| (p, d));
        self.peers.set_members(members.collect());
        self.cx
            .is_member
            .store(msg.membership.configuration.contains(self.cx.device_id), Ordering::Release);
        self.watch_commit(&msg.membership);
        self.membership = Some(msg.membership);
        self.proposer.set_members(self.member_map());
        self.start_proposer();
        self.start_role();
        self.start_election(ctx);
        self.check_invitations(ctx);
        for peer in self.connected.clone() {
            if self.peers.members.contains_key(&peer) {
                self.announce_to(peer, ctx);
            }
        }
        ctx.run_interval(WATCHDOG_INTERVAL, |this, ctx| this.watchdog(ctx));
    }
}

impl Handler<RestoredMembers> for SyncService {
    type Result = ();
    fn handle(&mut self, msg: RestoredMembers, _: &mut Context<Self>) {
        let again = self.restored_check.1;
        self.restored_check = (false, false);
        match msg.0 {
            Ok(members) => self.set_restored(members),
            Err(e) => warn!(library_id = %self.cx.library_id, error = %e,
                "cannot tell whom to let in while behind the high-water mark"),
        }
        if again {
            self.check_restored();
        }
    }
}

impl Handler<Shutdown> for SyncService {
    type Result = ();
    fn handle(&mut self, _: Shutdown, ctx: &mut Context<Self>) {
        self.stop_role();
        if let Some(w) = self.election.take() {
            w.do_send(Shutdown);
        }
        let network = self.cx.network.clone();
        let library_id = self.cx.library_id;
        spawn_supervised(
            Task::Network,
            self.cx.metrics.clone(),
            async move {
                let _ = network.unregister_library(library_id).await;
            },
            |_| {},
        );
        ctx.stop();
    }
}

impl Handler<PeerEvent> for SyncService {
    type Result = ();
    fn handle(&mut self, msg: PeerEvent, ctx: &mut Context<Self>) {
        let (peer, up) = match msg.0 {
            NetworkEvent::PeerConnected(p) => (p, true),
            NetworkEvent::PeerDisconnected(p) => (p, false),
        };
        if up {
            self.connected.insert(peer);
            if self.peers.members.contains_key(&peer) && self.state.is_some() {
                self.announce_to(peer, ctx);
            }
        } else {
            self.connected.remove(&peer);
        }
        if let Role::Leader { links, .. } = &self.role {
            if let Some(s) = links.get(&peer) {
                s.do_send(Connection(up));
            }
        }
    }
}

impl Handler<InboundRequest> for SyncService {
    type Result = ();
    fn handle(&mut self, req: InboundRequest, ctx: &mut Context<Self>) {
        let library_id = self.cx.library_id;
        let leader_hint = self.state.as_ref().and_then(|s| s.leader_device);
        let current_term = self.state.as_ref().map_or(0, |s| s.current_term);
        let busy = |req: InboundRequest, what: &str| {
            let _ = req.reply.send(SyncMessage::error(
                library_id,
                ErrorCode::Internal,
                format!("{what} busy"),
            ));
        };
        let from = self.device_of(&req.peer);
        let view = route::View {
            library_id,
            member: self.is_member(),
            serving: self.serving(),
            term: current_term,
            leader: leader_hint,
            leader_peer: self.leader_peer_hint(),
            election: self.election.is_some(),
        };
        let (to, heard) = route::route(&req.message, from, &view);
        if let Some(w) = &self.election {
            match heard {
                Some(route::Heard::Leader { from, term }) => {
                    w.do_send(ElectionInput::LeaderHeard { from, term })
                }
                Some(route::Heard::Follower { from, term }) => {
                    w.do_send(ElectionInput::FollowerContact { from, term })
                }
                None => {}
            }
        }
        match to {
            Route::Reply(reply) => {
                let _ = req.reply.send(reply);
            }
            Route::Join => self.handle_join(req, ctx),
            Route::ChangeMembership => self.handle_change(req, from),
            Route::Announce => {
                let SyncMessage::AnnounceAddresses { hints, .. } = &req.message else { return };
                self.take_hints(hints.clone());
                let hints = self.hints_to_send();
                let reply = req.reply;
                spawn_supervised(Task::Answer, self.cx.metrics.clone(), hints, move |r| {
                    let _ = reply.send(match r {
                        Ok(hints) => SyncMessage::AnnounceAddresses { library_id, hints },
                        Err(e) => {
                            SyncMessage::error(library_id, ErrorCode::Internal, e.to_string())
                        }
                    });
                });
            }
            Route::Election => {
                if let Some(w) = &self.election {
                    if let Err(e) = w.try_send(req) {
                        busy(e.into_inner(), "election");
                    }
                }
            }
            Route::Propose { term } => {
                let (tm, reply, message) = (self.cx.tm.clone(), req.reply, req.message);
                // a leadership transfer holds proposals too (docs/architecture.md)
                let held = self.cx.writes_paused.load(Ordering::Acquire);
                let election = self.election.clone();
                let serving = async move {
                    let served = run_blocking(move || {
                        Ok(serve_proposal(&tm, library_id, term, message, held))
                    })
                    .await?;
                    // Committed here: answered so only under the leader lease, checked now,
                    // after the commit (docs/architecture.md, "The leader lease").
                    if matches!(served, SyncMessage::ProposalResult { .. })
                        && !confirm_lease(election).await
                    {
                        return Ok(lease_unconfirmed(library_id, term));
                    }
                    Ok::<_, lsync_storage::StorageError>(served)
                };
                // The proposer waits for the answer: a task that panicked answers
                // `Error(Internal)`, and the proposal is delivered again.
                spawn_supervised(Task::Answer, self.cx.metrics.clone(), serving, move |r| {
                    let resp = match r {
                        Ok(Ok(resp)) => resp,
                        Ok(Err(e)) => {
                            SyncMessage::error(library_id, ErrorCode::Internal, e.to_string())
                        }
                        Err(e) => {
                            SyncMessage::error(library_id, ErrorCode::Internal, e.to_string())
                        }
                    };
                    let _ = reply.send(resp);
                });
            }
            Route::Link => match &self.role {
                Role::Leader { links, .. } => match links.get(&req.peer) {
                    Some(s) => {
                        if let Err(e) = s.try_send(req) {
                            busy(e.into_inner(), "leader link to the follower");
                        }
                    }
                    None => {
                        let _ = req.reply.send(SyncMessage::error(
                            library_id,
                            ErrorCode::Unauthorized,
                            "not a member of this library",
                        ));
                    }
                },
                _ => busy(req, "leader link to the follower"),
            },
            Route::Follower => match &self.role {
                Role::Follower { follower } => {
                    if let Err(e) = follower.try_send(req) {
                        busy(e.into_inner(), "follower actor");
                    }
                }
                _ => busy(req, "follower actor"),
            },
        }
    }
}

impl Handler<AddMember> for SyncService {
    type Result = ResponseActFuture<Self, Result<(), String>>;
    fn handle(&mut self, msg: AddMember, _: &mut Context<Self>) -> Self::Result {
        let device = msg.0;
        let cx = self.cx.clone();
        let replicated = self.membership.as_ref().is_some_and(Membership::is_replicated);
        let fut = async move {
            if replicated {
                return Err("this library keeps its members in its log: add a device with an \
                            invitation or a membership change"
                    .to_string());
            }
            device
                .peer_id
                .parse::<PeerId>()
                .map_err(|e| format!("invalid peer id {:?}: {e}", device.peer_id))?;
            for a in &device.addresses {
                a.parse::<Multiaddr>().map_err(|e| format!("invalid address {a:?}: {e}"))?;
            }
            let db = cx.db.clone();
            let d = device.clone();
            run_blocking(move || {
                db.upsert_device(&d)?;
                db.membership()
            })
            .await
            .map_err(|e| e.to_string())
        };
        Box::pin(fut.into_actor(self).map(|res, this, _| {
            this.install_membership(res?);
            Ok(())
        }))
    }
}

impl Handler<ChangeMembershipRequest> for SyncService {
    type Result = ResponseFuture<Result<ConfigOutcome, String>>;
    fn handle(&mut self, msg: ChangeMembershipRequest, _: &mut Context<Self>) -> Self::Result {
        if !self.membership.as_ref().is_some_and(Membership::is_replicated) {
            return Box::pin(async {
                Err("this library has no configuration entries yet (feature version 1): every \
                     member must run a version that supports them first"
                    .to_string())
            });
        }
        self.change_membership(msg.change, msg.wait)
    }
}

impl Handler<CreateInvitation> for SyncService {
    type Result = ResponseActFuture<Self, Result<Vec<u8>, String>>;
    fn handle(&mut self, msg: CreateInvitation, _: &mut Context<Self>) -> Self::Result {
        let db = self.cx.db.clone();
        let (network, library_id) = (self.cx.network.clone(), self.cx.library_id);
        let allowed =
            self.is_member() && self.membership.as_ref().is_some_and(Membership::is_replicated);
        let fut = async move {
            if !allowed {
                return Err("this device cannot invite: it is not a member of a library with \
                            configuration entries"
                    .to_string());
            }
            let mut secret = vec![0u8; lsync_storage::invitations::SECRET_LEN];
            rand::rngs::OsRng.fill_bytes(&mut secret);
            let created = now_ms();
            let expires =
                created.saturating_add(i64::try_from(msg.expires.as_millis()).unwrap_or(i64::MAX));
            let s = secret.clone();
            run_blocking(move || db.invitation_create(&s, created, expires, msg.learner))
                .await
                .map_err(|e| e.to_string())?;
            // Guests are admitted before the token is handed out: the new device may dial at
            // once.
            network.welcome_guests(library_id, true).await.map_err(|e| e.to_string())?;
            Ok(secret)
        };
        Box::pin(fut.into_actor(self).map(|res, this, ctx| {
            if res.is_ok() {
                this.check_invitations(ctx);
            }
            res
        }))
    }
}

impl Handler<InvitationsChanged> for SyncService {
    type Result = ();
    fn handle(&mut self, _: InvitationsChanged, ctx: &mut Context<Self>) {
        self.check_invitations(ctx);
    }
}

impl Handler<LeaderReport> for SyncService {
    type Result = ();
    fn handle(&mut self, msg: LeaderReport, _: &mut Context<Self>) {
        match msg {
            LeaderReport::Membership(m) => self.install_membership(m),
            LeaderReport::Resign => {
                if let Some(w) = &self.election {
                    w.do_send(Resign);
                }
            }
        }
    }
}

impl Handler<FollowerMembership> for SyncService {
    type Result = ();
    fn handle(&mut self, msg: FollowerMembership, ctx: &mut Context<Self>) {
        match msg {
            FollowerMembership::Applied(m) => self.install_membership(m),
            FollowerMembership::Committed(commit) => {
                let db = self.cx.db.clone();
                let work = run_blocking(move || {
                    db.note_commit(commit)?;
                    db.membership()
                });
                ctx.spawn(work.into_actor(self).map(|m, this, _| match m {
                    Ok(m) => this.install_membership(m),
                    Err(e) => warn!(error = %e, "cannot note the commit of a voter change"),
                }));
            }
            FollowerMembership::Removed(message) => {
                if self.removed_hint.is_none() {
                    warn!(library_id = %self.cx.library_id, %message, "the leader refuses this device as removed");
                }
                // The leader will not serve the entry that removed this device, so its own
                // configuration may never say so: the host refuses writes from now on, as its
                // status says (a write queued here could never be delivered). Installing a
                // configuration sets the flag again (a device invited back applies its re-adding).
                self.cx.is_member.store(false, Ordering::Release);
                self.removed_hint = Some(message);
            }
        }
    }
}

impl Handler<LinkLeft> for SyncService {
    type Result = ();
    fn handle(&mut self, msg: LinkLeft, _: &mut Context<Self>) {
        // The link of a removed member delivered the removal (or gave up): refuse it now,
        // unless it became a member again meanwhile.
        if self.leaving.contains(&msg.peer) && !self.peers.members.contains_key(&msg.peer) {
            self.revoke(msg.peer);
        }
    }
}

impl Handler<GetStatus> for SyncService {
    type Result = ResponseActFuture<Self, Result<LibraryStatus, String>>;
    fn handle(&mut self, _: GetStatus, _: &mut Context<Self>) -> Self::Result {
        let db = self.cx.db.clone();
        // the live view (role changes and re-pointing reach it before or without the database)
        let live = self.state.clone();
        let library_id = self.cx.library_id;
        let device_id = self.cx.device_id;
        let links: Vec<_> = match &self.role {
            Role::Leader { links, .. } => links.values().cloned().collect(),
            _ => Vec::new(),
        };
        let core = match &self.role {
            Role::Leader { core, .. } => Some(core.clone()),
            _ => None,
        };
        let applier = match &self.role {
            Role::Follower { follower } => Some(follower.clone()),
            _ => None,
        };
        let known_commit = self.follower_commit;
        let removed_hint = self.removed_hint.clone();
        // the leader lease, asked of a leader's election only
        let election = core.as_ref().and(self.election.clone());
        // what writes are checked against (Node::write): the configuration installed here,
        // which may trail the database by a moment
        let acts_as_member = self.is_member();
        let status = async move {
            let (
                state,
                head,
                (outbox_pending, outbox_failed, conflicts),
                membership,
                rebuild_mark,
                mark,
            ) = run_blocking(move || {
                Ok((
                    db.sync_state()?,
                    db.head()?,
                    (
                        db.outbox_count()?,
                        db.outbox_count_failed()?,
                        db.with_reader(lsync_storage::conflicts::count)?,
                    ),
                    db.membership()?,
                    db.rebuild_mark()?,
                    db.mark_state()?,
                ))
            })
            .await
            .map_err(|e| e.to_string())?;
            let last = head.position;
            let lease_held = match election {
                Some(e) => e.send(ObserveElection).await.ok().and_then(|s| s.lease_held),
                None => None,
            };
            let leader = match core {
                Some(n) => n.send(ObserveLeader).await.ok(),
                None => None,
            };
            let mut followers = Vec::with_capacity(links.len());
            for s in links {
                if let Ok(mut f) = s.send(ObserveLink { leader_last_sequence: last.sequence }).await
                {
                    f.role = membership.configuration.member(f.device_id).map(|m| m.role);
                    f.matched_sequence = leader.as_ref().and_then(|l| {
                        l.positions.iter().find(|p| p.device == f.device_id).and_then(|p| p.matched)
                    });
                    followers.push(f);
                }
            }
            followers.sort_by_key(|f| f.device_id);
            let follower = match applier {
                Some(a) => a.send(ObserveFollower).await.ok(),
                None => None,
            };
            let follower_commit =
                follower.as_ref().map_or(known_commit, |f| f.leader_commit.max(known_commit));
            let applier = follower.map(|f| f.status);
            let commit_sequence = leader.as_ref().map_or(follower_commit, |l| l.commit_sequence);
            let member = membership.configuration.member(device_id).cloned();
            let status_membership = MembershipStatus {
                config_sequence: membership.sequence,
                feature_version: membership.configuration.feature_version,
                voters_since: membership.voters_since,
                pending: membership.is_replicated() && commit_sequence < membership.sequence,
                previous_voters: membership
                    .previous_voters
                    .clone()
                    .map(|p| p.into_iter().collect()),
                members: membership
                    .configuration
                    .members
                    .iter()
                    .map(|m| MemberStatus {
                        device_id: m.device_id,
                        peer_id: m.peer_id.clone(),
                        name: m.name.clone(),
                        role: m.role,
                        preference: m.preference,
                        addresses: m.addresses.clone(),
                    })
                    .collect(),
            };
            Ok(LibraryStatus {
                library_id,
                device_id,
                role: live.as_ref().map_or(state.role, |s| s.role),
                term: live.as_ref().map_or(state.current_term, |s| s.current_term),
                leader: live.as_ref().map_or(state.leader_device, |s| s.leader_device),
                last_sequence: last.sequence,
                commit_sequence,
                member_role: member.as_ref().map(|m| m.role),
                member: member.is_some() && acts_as_member,
                removed: removed_hint,
                membership: status_membership,
                rebuild_mark: (rebuild_mark.sequence > 0).then_some(rebuild_mark.sequence),
                followers,
                applier,
                outbox_pending,
                outbox_failed,
                conflicts,
                head_hash: head.hash.to_string(),
                // behind its mark, or holding another history at the mark's sequence
                // (docs/architecture.md, "Restores are detected")
                behind_mark: mark.held_behind(),
                mark_diverged: mark.divergence(),
                lease_held,
            })
        };
        // What the follower actor showed of the leader's commit sequence is kept for the next
        // follower actor (a restart does not make status forget it).
        Box::pin(status.into_actor(self).map(|status, this, _| {
            if let Ok(st) = &status {
                if st.applier.is_some() {
                    this.follower_commit = this.follower_commit.max(st.commit_sequence);
                }
            }
            status
        }))
    }
}

/// Writes changes from this device as proposal `proposal_id`, whatever its role: proposed to
/// the leader through the durable outbox (committed locally by the proposer when this device
/// leads). The committed entries carry `proposal_id`; an id already in the outbox is not
/// queued again ([`Proposer::submit`]).
#[derive(Message)]
#[rtype(result = "Result<Submitted, String>")]
pub struct Submit {
    pub proposal_id: Uuid,
    pub changes: Vec<lsync_storage::Change>,
}

/// The host changed the outbox (an entry retried, docs/operations.md "lsync outbox"): the
/// proposer looks at it again at once.
#[derive(Message)]
#[rtype(result = "()")]
pub struct WakeProposer;

impl Handler<WakeProposer> for SyncService {
    type Result = ();
    fn handle(&mut self, _: WakeProposer, _: &mut Context<Self>) {
        self.proposer.wake();
    }
}

impl Handler<Submit> for SyncService {
    type Result = ResponseFuture<Result<Submitted, String>>;
    fn handle(&mut self, msg: Submit, _: &mut Context<Self>) -> Self::Result {
        let proposer = self.proposer.clone();
        let Submit { proposal_id, changes } = msg;
        Box::pin(
            async move { proposer.submit(proposal_id, changes).await.map_err(|e| e.to_string()) },
        )
    }
}

impl Handler<RoleChange> for SyncService {
    type Result = ();
    fn handle(&mut self, msg: RoleChange, _: &mut Context<Self>) {
        let serving = self.serving();
        let Some(state) = self.state.as_mut() else { return };
        // A follower that only learns a newer term of the leader it follows keeps its actors
        // (the follower actor adopts the term from the leader's messages); anything else
        // restarts them.
        let unchanged = keeps_role_actors(
            serving,
            (state.role, state.current_term, state.leader_device),
            (msg.role, msg.term, msg.leader),
        );
        state.role = msg.role;
        state.current_term = msg.term;
        state.leader_device = msg.leader;
        state.voted_for = msg.voted_for;
        if !unchanged {
            info!(library_id = %self.cx.library_id, role = %msg.role, term = msg.term, leader = ?msg.leader, "role change");
            self.start_role();
        }
        // the term and the leader a `majority` write's wait compares with (status shows them)
        self.cx.progress.note_change();
    }
}

impl Handler<LeaderHint> for SyncService {
    type Result = ();
    fn handle(&mut self, msg: LeaderHint, _: &mut Context<Self>) {
        let hint = msg.device;
        let mut is_member = self.peer_of(hint).is_some();
        if let (false, Some(peer)) = (is_member, msg.peer) {
            // A member named a leader this device does not know: it missed the membership
            // change that brought it while it was away. Let that device connect (it is a
            // member of the leader's configuration, and the member that named it is one of
            // ours): following it brings the log, and the configuration, up to date.
            info!(library_id = %self.cx.library_id, leader = %hint, %peer,
                "a member named a leader this device does not know yet; letting it in");
            self.peers.let_in(peer, hint);
            let (network, library_id) = (self.cx.network.clone(), self.cx.library_id);
            spawn_supervised(
                Task::Network,
                self.cx.metrics.clone(),
                async move {
                    let _ = network.add_member(library_id, peer, Vec::new()).await;
                },
                |_| {},
            );
            is_member = true;
        }
        let serving = self.serving();
        let Some(state) = self.state.as_mut() else { return };
        let me = self.cx.device_id;
        if follows_hint(serving, state.role, state.leader_device, me, hint, is_member) {
            info!(library_id = %self.cx.library_id, leader = %hint, "following the leader a NotLeader reply named");
            state.leader_device = Some(hint);
            self.start_role();
        }
    }
}

impl Handler<HeartbeatNow> for SyncService {
    type Result = ();
    fn handle(&mut self, msg: HeartbeatNow, _: &mut Context<Self>) {
        if let Role::Leader { links, .. } = &self.role {
            for s in links.values() {
                s.do_send(msg);
            }
        }
    }
}

impl Handler<LeaseAnswer> for SyncService {
    type Result = ();
    fn handle(&mut self, msg: LeaseAnswer, _: &mut Context<Self>) {
        if let Some(election) = &self.election {
            election.do_send(msg);
        }
    }
}

impl Handler<ConfirmLease> for SyncService {
    type Result = ResponseFuture<bool>;
    fn handle(&mut self, _: ConfirmLease, _: &mut Context<Self>) -> Self::Result {
        Box::pin(confirm_lease(self.election.clone()))
    }
}

/// Asks `election` whether a write committed on this leader may be answered as committed
/// ([`ConfirmLease`]); `false` without an election actor, or when it stopped.
async fn confirm_lease(election: Option<Addr<ElectionActor>>) -> bool {
    match election {
        Some(e) => e.send(ConfirmLease).await.unwrap_or(false),
        None => false,
    }
}

impl Handler<ElectionInput> for SyncService {
    type Result = ();
    fn handle(&mut self, msg: ElectionInput, _: &mut Context<Self>) {
        if let Some(w) = &self.election {
            w.do_send(msg);
        }
    }
}

impl Handler<TransferLeadership> for SyncService {
    type Result = ResponseFuture<Result<(), String>>;
    fn handle(&mut self, msg: TransferLeadership, _: &mut Context<Self>) -> Self::Result {
        let election = self.election.clone();
        let learner = self
            .membership
            .as_ref()
            .and_then(|m| m.configuration.member(msg.0))
            .is_some_and(|m| m.role == MemberRole::Learner);
        Box::pin(async move {
            if learner {
                return Err(format!(
                    "{} is a learner: leadership goes to voters only (it is promoted once caught \
                     up, unless it was invited with --learner)",
                    msg.0
                ));
            }
            match election {
                Some(w) => {
                    w.send(msg).await.map_err(|_| "the election actor stopped".to_string())?
                }
                None => Err("the library is not started yet".into()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use libp2p::identity::Keypair;
    use lsync_storage::Device;

    use super::*;
    use crate::election::actor::{ElectionStatus, ObserveElection};
    use crate::messages::InjectPanic;
    use crate::network::NetworkConfig;
    use crate::proposer::ProposerStatus;
    use crate::testkit::follower_db;

    /// Test only: makes the running child of this kind panic.
    #[derive(Message)]
    #[rtype(result = "()")]
    struct InjectPanicInto(Child);

    impl Handler<InjectPanicInto> for SyncService {
        type Result = ();
        fn handle(&mut self, msg: InjectPanicInto, _: &mut Context<Self>) {
            match (msg.0, &self.role, &self.election) {
                (Child::Follower, Role::Follower { follower }, _) => follower.do_send(InjectPanic),
                (Child::Election, _, Some(election)) => election.do_send(InjectPanic),
                (Child::Proposer, _, _) => self.proposer.inject_panic(),
                (child, _, _) => panic!("no {} to make panic", child.name()),
            }
        }
    }

    /// Test only: the proposer task's state (`None`: no task answers).
    #[derive(Message)]
    #[rtype(result = "Option<ProposerStatus>")]
    struct ObserveProposer;

    impl Handler<ObserveProposer> for SyncService {
        type Result = ResponseFuture<Option<ProposerStatus>>;
        fn handle(&mut self, _: ObserveProposer, _: &mut Context<Self>) -> Self::Result {
            let proposer = self.proposer.clone();
            Box::pin(async move { proposer.observe().await })
        }
    }

    /// Test only: the election actor's state (`None`: none answers).
    #[derive(Message)]
    #[rtype(result = "Option<ElectionStatus>")]
    struct ObserveElectionOf;

    impl Handler<ObserveElectionOf> for SyncService {
        type Result = ResponseFuture<Option<ElectionStatus>>;
        fn handle(&mut self, _: ObserveElectionOf, _: &mut Context<Self>) -> Self::Result {
            let election = self.election.clone();
            Box::pin(async move { election?.send(ObserveElection).await.ok() })
        }
    }

    struct Running {
        _dir: tempfile::TempDir,
        service: Addr<SyncService>,
        metrics: Arc<crate::metrics::Metrics>,
        network: NetworkHandle,
        /// The term the library was persisted with.
        term: u64,
        db: lsync_storage::Database,
        /// The (absent) leader: its device and peer.
        leader: (Uuid, PeerId),
    }

    /// A follower whose leader never answers (its follower actor just keeps retrying), once
    /// its follower actor runs.
    async fn follower_service() -> Running {
        let dir = tempfile::tempdir().unwrap();
        let lib = Uuid::new_v4();
        let leader = Uuid::new_v4();
        let leader_peer = PeerId::random();
        let db = follower_db(&dir, lib, leader);
        let me = db.sync_state().unwrap().device_id;
        db.upsert_device(&Device {
            device_id: leader,
            peer_id: leader_peer.to_string(),
            addresses: vec![],
            name: "absent leader".into(),
        })
        .unwrap();
        let keypair = Keypair::generate_ed25519();
        db.upsert_device(&Device {
            device_id: me,
            peer_id: keypair.public().to_peer_id().to_string(),
            addresses: vec![],
            name: "me".into(),
        })
        .unwrap();
        let term = db.sync_state().unwrap().current_term;
        let (network, _) =
            NetworkHandle::start(keypair.clone(), NetworkConfig::default()).await.unwrap();
        let (events, _) = broadcast::channel(64);
        let metrics = Arc::new(crate::metrics::Metrics::default());
        let service = SyncService::new(LibraryContext {
            library_id: lib,
            device_id: me,
            db: db.clone(),
            tm: lsync_storage::TransactionManager::new(db.clone(), me),
            network: network.clone(),
            transport: Arc::new(network.clone()),
            config: SyncConfig { leader_timeout: Duration::from_secs(3600), ..SyncConfig::fast() },
            events,
            metrics: metrics.clone(),
            writes_paused: Default::default(),
            is_member: Arc::new(AtomicBool::new(true)),
            keypair,
            listen_addrs: Vec::new(),
            progress: Default::default(),
        })
        .start();
        let running = Running {
            _dir: dir,
            service,
            metrics,
            network,
            term,
            db,
            leader: (leader, leader_peer),
        };
        wait_until("the follower actor runs", || has_follower(&running.service)).await;
        running
    }

    async fn has_follower(service: &Addr<SyncService>) -> bool {
        service.send(GetStatus).await.unwrap().unwrap().applier.is_some()
    }

    /// Waits (generously) until `done` holds.
    async fn wait_until<F: std::future::Future<Output = bool>>(what: &str, done: impl Fn() -> F) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while !done().await {
            assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The restarts counted, by kind (in [`Child::ALL`]'s order).
    fn restarts(r: &Running) -> [u64; 5] {
        Child::ALL.map(|c| r.metrics.restarts.of(c))
    }

    #[actix_rt::test]
    async fn a_panic_in_the_follower_actors_work_is_restarted_and_counted() {
        let r = follower_service().await;
        r.service.send(InjectPanicInto(Child::Follower)).await.unwrap();
        // The follower actor's mailbox closes with the panic; the watchdog notices, counts it
        // and starts the role again.
        wait_until("the follower actor restarted", || async {
            r.metrics.restarts.of(Child::Follower) == 1 && has_follower(&r.service).await
        })
        .await;
        assert_eq!(restarts(&r), [0, 0, 0, 1, 0], "election, leader, link, follower, proposer");
        let st = r.service.send(GetStatus).await.unwrap().unwrap();
        assert_eq!(st.role, SyncRole::Follower);
        r.network.shutdown().await;
    }

    #[actix_rt::test]
    async fn a_panic_in_the_proposer_task_is_restarted_and_counted() {
        let r = follower_service().await;
        wait_until("the proposer task answers", || async {
            r.service.send(ObserveProposer).await.unwrap().is_some()
        })
        .await;
        r.service.send(InjectPanicInto(Child::Proposer)).await.unwrap();
        // The task ends with the panic; the watchdog notices, counts it and spawns a new task,
        // which answers again.
        wait_until("the proposer task restarted", || async {
            r.metrics.restarts.of(Child::Proposer) == 1
                && r.service.send(ObserveProposer).await.unwrap().is_some()
        })
        .await;
        assert_eq!(restarts(&r), [0, 0, 0, 0, 1], "the role actors were left alone");
        r.network.shutdown().await;
    }

    #[actix_rt::test]
    async fn a_panicking_election_actor_is_restarted_from_the_persisted_state_and_counted() {
        let r = follower_service().await;
        r.service.send(InjectPanicInto(Child::Election)).await.unwrap();
        wait_until("the election actor restarted", || async {
            r.metrics.restarts.of(Child::Election) == 1
                && r.service.send(ObserveElectionOf).await.unwrap().is_some()
        })
        .await;
        let election = r.service.send(ObserveElectionOf).await.unwrap().unwrap();
        assert_eq!((election.role, election.term), (SyncRole::Follower, r.term));
        assert_eq!(restarts(&r), [1, 0, 0, 0, 0]);
        r.network.shutdown().await;
    }

    /// Sends the election a `RequestVote` of the leader's device in `term`; its answer.
    async fn vote_request(r: &Running, term: u64) -> SyncMessage {
        let (candidate, peer) = r.leader;
        let request = crate::election::VoteRequest {
            term,
            candidate,
            last_log_term: 0,
            last_log_sequence: 0,
            transfer: false,
            pre_vote: false,
        };
        let (reply, answer) = tokio::sync::oneshot::channel();
        let message =
            crate::election::actor::request_vote(r.db.sync_state().unwrap().library_id, &request);
        r.service.send(InboundRequest { peer, message, reply }).await.unwrap();
        answer.await.unwrap()
    }

    async fn election_of(r: &Running) -> ElectionStatus {
        r.service.send(ObserveElectionOf).await.unwrap().expect("an election actor")
    }

    #[actix_rt::test]
    async fn a_term_that_could_not_be_written_is_undone_in_memory() {
        let r = follower_service().await;
        let higher = r.term + 5;
        // the election record cannot be replaced: its temporary file's path is a directory
        let mut blocked = r.db.election_record_path().into_os_string();
        blocked.push(".tmp");
        std::fs::create_dir(&blocked).unwrap();
        let answer = vote_request(&r, higher).await;
        assert!(
            matches!(&answer, SyncMessage::Error { code: ErrorCode::Internal, .. }),
            "{answer:?}"
        );
        assert_eq!(r.db.sync_state().unwrap().current_term, r.term, "nothing written");
        let e = election_of(&r).await;
        assert_eq!(
            (e.term, e.voted_for),
            (r.term, None),
            "the machine went back to the disk's state"
        );
        // once the disk takes writes again, the same request is served in full
        std::fs::remove_dir(&blocked).unwrap();
        let answer = vote_request(&r, higher).await;
        assert!(matches!(answer, SyncMessage::Vote { .. }), "{answer:?}");
        assert_eq!(r.db.sync_state().unwrap().current_term, higher);
        assert_eq!(election_of(&r).await.term, higher);
        r.network.shutdown().await;
    }

    #[actix_rt::test]
    async fn a_restarted_election_actor_resumes_from_the_disk_not_from_a_copy() {
        let r = follower_service().await;
        // a vote within the term, written by the election (no role change tells the service)
        let candidate = Uuid::new_v4();
        let record = lsync_storage::ElectionRecord {
            term: r.term,
            voted_for: Some(candidate),
            leader: None,
        };
        r.db.persist_election(SyncRole::Follower, &record).unwrap();
        r.service.send(InjectPanicInto(Child::Election)).await.unwrap();
        wait_until("the election actor restarted", || async {
            r.metrics.restarts.of(Child::Election) == 1
                && r.service.send(ObserveElectionOf).await.unwrap().is_some()
        })
        .await;
        let e = election_of(&r).await;
        assert_eq!((e.term, e.voted_for), (r.term, Some(candidate)), "the vote on disk is kept");
        r.network.shutdown().await;
    }
}

macro_rules! impl_shutdown {
    ($($actor:ty),*) => {$(
        impl Handler<Shutdown> for $actor {
            type Result = ();
            fn handle(&mut self, _: Shutdown, ctx: &mut Context<Self>) {
                ctx.stop();
            }
        }
    )*};
}
impl_shutdown!(LeaderActor, LinkActor, FollowerActor, ElectionActor);
