//! SyncService — one per open library; the supervisor of its role actors.
//!
//! Receives: every inbound request of its library (from the Network), membership changes,
//! connection events, status queries. Starts the role actors for the device's role — leader:
//! a [`LeaderNotifier`] and one [`FollowerSession`] per follower; follower: a
//! [`FollowerApplier`] — and routes each inbound request to the role actor that answers it.
//! It is not itself run under actix's `Supervisor`: a supervised actor is restarted whenever it
//! stops while an address to it exists, so it could never be shut down for good. Instead the
//! service owns the lifecycle of its role actors: it stops them and starts new ones from the
//! persisted state.

use std::collections::HashMap;
use std::sync::Arc;

use actix::prelude::*;
use libp2p::{Multiaddr, PeerId};
use lsync_protocol::{ErrorCode, SyncMessage, SyncRole};
use lsync_storage::{Database, Device, SyncState, TransactionManager};
use tokio::sync::broadcast;
use tracing::{info, warn};
use uuid::Uuid;

use crate::applier::{ApplierContext, FollowerApplier, GetApplierStatus};
use crate::blocking::run_blocking;
use crate::config::SyncConfig;
use crate::events::{LibraryStatus, SyncEvent};
use crate::log_cache::LogCache;
use crate::network::{InboundRequest, NetworkEvent, NetworkHandle};
use crate::notifier::{LeaderNotifier, SetSessions};
use crate::proposer::{serve_proposal, LeaderView, Proposer, Submitted};
use crate::session::{
    new_log_cache, Connection, FollowerSession, GetFollowerStatus, SessionContext,
};
use crate::transport::Transport;
use crate::watcher::{
    persisted_of, ElectionInput, ElectionWatcher, FollowerAcked, HeartbeatNow, RoleChange,
    SetMembers, TransferLeadership, WatcherContext,
};

/// How often the service checks that its role actors are alive (a panic closes an actor's
/// mailbox; actix does not restart it).
const WATCHDOG_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);

/// Mailbox capacity of the actors that receive inbound requests (actix's default is 16).
pub(crate) const MAILBOX_CAPACITY: usize = 1024;

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
    pub writes_paused: Arc<std::sync::atomic::AtomicBool>,
}

/// Stops an actor.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown;

/// Adds (or updates) a member device of the library.
#[derive(Message)]
#[rtype(result = "Result<(), String>")]
pub struct AddMember(pub Device);

/// Reads the library's status snapshot.
#[derive(Message)]
#[rtype(result = "Result<LibraryStatus, String>")]
pub struct GetStatus;

#[derive(Message)]
#[rtype(result = "()")]
struct Started {
    state: SyncState,
    members: Vec<(Uuid, PeerId)>,
    connected: Vec<PeerId>,
}

#[derive(Message)]
#[rtype(result = "()")]
struct PeerEvent(NetworkEvent);

enum Role {
    Leader {
        notifier: Addr<LeaderNotifier>,
        sessions: HashMap<PeerId, Addr<FollowerSession>>,
        /// The log blocks this term's sessions serve fetches from (shared by all of them).
        cache: Arc<LogCache>,
    },
    Follower {
        applier: Addr<FollowerApplier>,
    },
    /// No leader known yet, or the role actors are not started.
    Idle,
}

/// The supervisor of one library.
pub struct SyncService {
    cx: LibraryContext,
    state: Option<SyncState>,
    members: HashMap<PeerId, Uuid>,
    connected: std::collections::HashSet<PeerId>,
    role: Role,
    watcher: Option<Addr<ElectionWatcher>>,
    local_peer: Option<PeerId>,
    self_addr: Option<Addr<SyncService>>,
    proposer: Proposer,
    proposer_task: Option<tokio::task::JoinHandle<()>>,
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
        );
        Self {
            proposer,
            proposer_task: None,
            cx,
            state: None,
            members: HashMap::new(),
            connected: Default::default(),
            role: Role::Idle,
            watcher: None,
            local_peer: None,
            self_addr: None,
        }
    }

    fn device_of(&self, peer: &PeerId) -> Option<Uuid> {
        self.members.get(peer).copied()
    }

    /// Every member (this device included) and its peer id, for the election.
    fn member_map(&self) -> std::collections::BTreeMap<Uuid, PeerId> {
        let mut m: std::collections::BTreeMap<Uuid, PeerId> =
            self.members.iter().map(|(p, d)| (*d, *p)).collect();
        if let Some(me) = self.local_peer {
            m.insert(self.cx.device_id, me);
        }
        m
    }

    fn start_watcher(&mut self, ctx: &mut Context<Self>) {
        let Some(state) = self.state.as_ref() else { return };
        let me = ctx.address();
        let watcher = ElectionWatcher::new(WatcherContext {
            library_id: self.cx.library_id,
            device_id: self.cx.device_id,
            db: self.cx.db.clone(),
            transport: self.cx.transport.clone(),
            config: self.cx.config.clone(),
            events: self.cx.events.clone(),
            metrics: self.cx.metrics.clone(),
            members: self.member_map(),
            persisted: persisted_of(state),
            role_changes: me.clone().recipient(),
            heartbeats: me.clone().recipient(),
            acks: me.recipient(),
            writes_paused: self.cx.writes_paused.clone(),
        })
        .start();
        self.watcher = Some(watcher);
    }

    /// Restarts any role actor (or the watcher) whose mailbox closed — the sign of a panic.
    fn watchdog(&mut self, ctx: &mut Context<Self>) {
        let library_id = self.cx.library_id;
        if self.watcher.as_ref().is_some_and(|w| !w.connected()) {
            tracing::error!(%library_id, "election watcher stopped unexpectedly (panic?); restarting it");
            crate::metrics::Metrics::add(&self.cx.metrics.actor_restarts, 1);
            self.start_watcher(ctx);
        }
        let dead = match &self.role {
            Role::Leader { notifier, sessions, .. } => {
                !notifier.connected() || sessions.values().any(|s| !s.connected())
            }
            Role::Follower { applier } => !applier.connected(),
            Role::Idle => false,
        };
        if dead {
            tracing::error!(%library_id, "a role actor stopped unexpectedly (panic?); restarting the role actors");
            crate::metrics::Metrics::add(&self.cx.metrics.actor_restarts, 1);
            self.start_role();
        }
    }

    fn stop_role(&mut self) {
        match std::mem::replace(&mut self.role, Role::Idle) {
            Role::Leader { notifier, sessions, .. } => {
                notifier.do_send(Shutdown);
                for s in sessions.values() {
                    s.do_send(Shutdown);
                }
            }
            Role::Follower { applier } => applier.do_send(Shutdown),
            Role::Idle => {}
        }
    }

    fn start_role(&mut self) {
        self.stop_role();
        let Some(state) = self.state.clone() else { return };
        let library_id = self.cx.library_id;
        let leading =
            state.role == SyncRole::Leader && state.leader_device == Some(self.cx.device_id);
        self.proposer.set_leader(LeaderView {
            term: state.current_term,
            leader: if state.role == SyncRole::Candidate { None } else { state.leader_device },
        });
        let _ = leading;
        if state.role == SyncRole::Leader && state.leader_device == Some(self.cx.device_id) {
            let notifier = LeaderNotifier::new(self.cx.tm.subscribe()).start();
            // A new cache per start: the leader's log only grows while it leads this term.
            let cache = new_log_cache(self.cx.config.max_entries_per_response);
            let mut sessions = HashMap::new();
            for (peer, device) in self.members.clone() {
                sessions.insert(peer, self.start_session(&state, &cache, device, peer));
            }
            cache.set_readers(sessions.len());
            notifier
                .do_send(SetSessions(sessions.values().map(|a| a.clone().recipient()).collect()));
            info!(%library_id, term = state.current_term, followers = sessions.len(), "leading");
            self.role = Role::Leader { notifier, sessions, cache };
        } else if let Some(leader_peer) = state
            .leader_device
            .and_then(|d| self.members.iter().find(|(_, dev)| **dev == d).map(|(p, _)| *p))
        {
            let applier = FollowerApplier::new(ApplierContext {
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
            })
            .start();
            info!(%library_id, term = state.current_term, leader = %leader_peer, "following");
            self.role = Role::Follower { applier };
        } else if state.role == SyncRole::Candidate {
            info!(%library_id, term = state.current_term, "campaigning; no role actors until a leader is known");
        } else {
            warn!(%library_id, leader = ?state.leader_device, "no reachable leader known; idle");
        }
        let _ = self.cx.events.send(SyncEvent::RoleChanged {
            library_id,
            role: state.role,
            term: state.current_term,
        });
    }

    fn start_session(
        &self,
        state: &SyncState,
        cache: &Arc<LogCache>,
        device: Uuid,
        peer: PeerId,
    ) -> Addr<FollowerSession> {
        let session = FollowerSession::new(
            SessionContext {
                library_id: self.cx.library_id,
                db: self.cx.db.clone(),
                transport: self.cx.transport.clone(),
                events: self.cx.events.clone(),
                term: state.current_term,
                max_entries_per_response: self.cx.config.max_entries_per_response,
                max_response_bytes: self.cx.config.max_response_bytes,
                notify_window: self.cx.config.notify_window,
                election: Some(self.self_addr.clone().expect("service started").recipient()),
                cache: cache.clone(),
                metrics: self.cx.metrics.clone(),
            },
            device,
            peer,
        )
        .start();
        if self.connected.contains(&peer) {
            session.do_send(Connection(true));
        }
        session
    }
}

impl Actor for SyncService {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Inbound requests arrive with try_send; a small mailbox would refuse bursts.
        ctx.set_mailbox_capacity(MAILBOX_CAPACITY);
        self.self_addr = Some(ctx.address());
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
            let (state, devices) = run_blocking(move || Ok((db.sync_state()?, db.devices()?)))
                .await
                .map_err(|e| e.to_string())?;
            let mut members = Vec::new();
            let mut routes = Vec::new();
            for d in devices.into_iter().filter(|d| d.device_id != cx.device_id) {
                let Ok(peer) = d.peer_id.parse::<PeerId>() else {
                    warn!(device = %d.device_id, peer_id = %d.peer_id, "member with an invalid peer id ignored");
                    continue;
                };
                let addrs: Vec<Multiaddr> =
                    d.addresses.iter().filter_map(|a| a.parse().ok()).collect();
                members.push((d.device_id, peer));
                routes.push((peer, addrs));
            }
            cx.network
                .register_library(cx.library_id, routes, me.clone().recipient())
                .await
                .map_err(|e| e.to_string())?;
            let connected = cx.network.connected_peers().await.unwrap_or_default();
            me.do_send(Started { state, members, connected });
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
        self.members = msg.members.into_iter().map(|(d, p)| (p, d)).collect();
        self.connected = msg.connected.into_iter().collect();
        self.local_peer = Some(self.cx.network.local_peer_id());
        self.state = Some(msg.state);
        self.proposer.set_members(self.member_map());
        self.proposer_task = Some(actix_rt::spawn(self.proposer.clone().run()));
        self.start_role();
        self.start_watcher(ctx);
        ctx.run_interval(WATCHDOG_INTERVAL, |this, ctx| this.watchdog(ctx));
    }
}

impl Handler<Shutdown> for SyncService {
    type Result = ();
    fn handle(&mut self, _: Shutdown, ctx: &mut Context<Self>) {
        self.stop_role();
        if let Some(w) = self.watcher.take() {
            w.do_send(Shutdown);
        }
        let network = self.cx.network.clone();
        let library_id = self.cx.library_id;
        actix_rt::spawn(async move {
            let _ = network.unregister_library(library_id).await;
        });
        ctx.stop();
    }
}

impl Handler<PeerEvent> for SyncService {
    type Result = ();
    fn handle(&mut self, msg: PeerEvent, _: &mut Context<Self>) {
        let (peer, up) = match msg.0 {
            NetworkEvent::PeerConnected(p) => (p, true),
            NetworkEvent::PeerDisconnected(p) => (p, false),
        };
        if up {
            self.connected.insert(peer);
        } else {
            self.connected.remove(&peer);
        }
        if let Role::Leader { sessions, .. } = &self.role {
            if let Some(s) = sessions.get(&peer) {
                s.do_send(Connection(up));
            }
        }
    }
}

impl Handler<InboundRequest> for SyncService {
    type Result = ();
    fn handle(&mut self, req: InboundRequest, _: &mut Context<Self>) {
        let library_id = self.cx.library_id;
        let leader_hint = self.state.as_ref().and_then(|s| s.leader_device);
        let busy = |req: InboundRequest, what: &str| {
            let _ = req.reply.send(SyncMessage::error(
                library_id,
                ErrorCode::Internal,
                format!("{what} busy"),
            ));
        };
        let from = self.device_of(&req.peer);
        // A leader of an older term heartbeating us learns our term from the answer (and steps
        // down): whatever our role, answer with our own view.
        if let (SyncMessage::Heartbeat { term, role: SyncRole::Leader, .. }, Some(state)) =
            (&req.message, &self.state)
        {
            if *term < state.current_term {
                let _ = req.reply.send(SyncMessage::Heartbeat {
                    commit_sequence: 0,
                    features: 0,
                    library_id,
                    term: state.current_term,
                    current_sequence: state.last_synced_sequence,
                    last_term: 0,
                    role: state.role,
                });
                return;
            }
        }
        match (&req.message, &self.watcher, from) {
            (SyncMessage::RequestVote { .. } | SyncMessage::TimeoutNow { .. }, Some(w), _) => {
                if let Err(e) = w.try_send(req) {
                    busy(e.into_inner(), "election");
                }
                return;
            }
            (
                SyncMessage::NewEntries { term, .. }
                | SyncMessage::Heartbeat { term, role: SyncRole::Leader, .. },
                Some(w),
                Some(from),
            ) => w.do_send(ElectionInput::LeaderHeard { from, term: *term }),
            (
                SyncMessage::FetchEntries { term, .. } | SyncMessage::Heartbeat { term, .. },
                Some(w),
                Some(from),
            ) if matches!(self.role, Role::Leader { .. }) => {
                w.do_send(ElectionInput::FollowerContact { from, term: *term })
            }
            _ => {}
        }
        if let SyncMessage::Propose { origin_device, .. } = &req.message {
            let (leading, term) = match (&self.role, &self.state) {
                (Role::Leader { .. }, Some(s)) => (true, s.current_term),
                _ => (false, 0),
            };
            let reply = if from != Some(*origin_device) {
                Some(SyncMessage::error(
                    library_id,
                    ErrorCode::Unauthorized,
                    "a device proposes only its own changes",
                ))
            } else if !leading {
                Some(SyncMessage::Error {
                    term: 0,
                    library_id,
                    code: ErrorCode::NotLeader,
                    message: "this device does not lead the library".into(),
                    leader_hint,
                })
            } else {
                None
            };
            match reply {
                Some(r) => {
                    let _ = req.reply.send(r);
                }
                None => {
                    let tm = self.cx.tm.clone();
                    actix_rt::spawn(async move {
                        let resp = run_blocking(move || {
                            Ok(serve_proposal(&tm, library_id, term, req.message))
                        })
                        .await
                        .unwrap_or_else(|e| {
                            SyncMessage::error(library_id, ErrorCode::Internal, e.to_string())
                        });
                        let _ = req.reply.send(resp);
                    });
                }
            }
            return;
        }
        match &self.role {
            Role::Leader { sessions, .. } => match sessions.get(&req.peer) {
                Some(s) => {
                    if let Err(e) = s.try_send(req) {
                        busy(e.into_inner(), "follower session");
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
            Role::Follower { applier } => {
                if let Err(e) = applier.try_send(req) {
                    busy(e.into_inner(), "follower applier");
                }
            }
            Role::Idle => {
                let _ = req.reply.send(SyncMessage::Error {
                    term: 0,
                    library_id,
                    code: ErrorCode::NotLeader,
                    message: "this device does not serve the library right now".into(),
                    leader_hint,
                });
            }
        }
    }
}

impl Handler<AddMember> for SyncService {
    type Result = ResponseActFuture<Self, Result<(), String>>;
    fn handle(&mut self, msg: AddMember, _: &mut Context<Self>) -> Self::Result {
        let device = msg.0;
        let cx = self.cx.clone();
        let fut = async move {
            let peer: PeerId = device
                .peer_id
                .parse()
                .map_err(|e| format!("invalid peer id {:?}: {e}", device.peer_id))?;
            let mut addrs = Vec::new();
            for a in &device.addresses {
                addrs.push(
                    a.parse::<Multiaddr>().map_err(|e| format!("invalid address {a:?}: {e}"))?,
                );
            }
            let db = cx.db.clone();
            let d = device.clone();
            run_blocking(move || db.upsert_device(&d)).await.map_err(|e| e.to_string())?;
            if device.device_id != cx.device_id {
                cx.network
                    .add_member(cx.library_id, peer, addrs)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Ok::<_, String>((device.device_id, peer))
        };
        Box::pin(fut.into_actor(self).map(|res, this, _| {
            let (device, peer) = res?;
            if device == this.cx.device_id {
                return Ok(());
            }
            this.members.insert(peer, device);
            if let Some(w) = &this.watcher {
                w.do_send(SetMembers(this.member_map()));
            }
            this.proposer.set_members(this.member_map());
            let state = this.state.clone();
            let mut new_session = None;
            if let (Role::Leader { sessions, cache, .. }, Some(state)) =
                (&this.role, state.as_ref())
            {
                if !sessions.contains_key(&peer) {
                    new_session = Some(this.start_session(state, cache, device, peer));
                }
            }
            match &mut this.role {
                Role::Leader { notifier, sessions, cache } => {
                    if let Some(s) = new_session {
                        sessions.insert(peer, s);
                        cache.set_readers(sessions.len());
                        notifier.do_send(SetSessions(
                            sessions.values().map(|a| a.clone().recipient()).collect(),
                        ));
                    }
                }
                Role::Idle if state.as_ref().and_then(|s| s.leader_device) == Some(device) => {
                    // The leader we were waiting for is now known.
                    this.start_role();
                }
                _ => {}
            }
            Ok(())
        }))
    }
}

impl Handler<GetStatus> for SyncService {
    type Result = ResponseFuture<Result<LibraryStatus, String>>;
    fn handle(&mut self, _: GetStatus, _: &mut Context<Self>) -> Self::Result {
        let db = self.cx.db.clone();
        // the live view (role changes and re-pointing reach it before or without the database)
        let live = self.state.clone();
        let library_id = self.cx.library_id;
        let device_id = self.cx.device_id;
        let sessions: Vec<_> = match &self.role {
            Role::Leader { sessions, .. } => sessions.values().cloned().collect(),
            _ => Vec::new(),
        };
        let applier = match &self.role {
            Role::Follower { applier } => Some(applier.clone()),
            _ => None,
        };
        Box::pin(async move {
            let (state, last, outbox_pending) = run_blocking(move || {
                Ok((db.sync_state()?, db.last_position()?, db.outbox_count()?))
            })
            .await
            .map_err(|e| e.to_string())?;
            let mut followers = Vec::with_capacity(sessions.len());
            for s in sessions {
                if let Ok(f) =
                    s.send(GetFollowerStatus { leader_last_sequence: last.sequence }).await
                {
                    followers.push(f);
                }
            }
            followers.sort_by_key(|f| f.device_id);
            let applier = match applier {
                Some(a) => a.send(GetApplierStatus).await.ok(),
                None => None,
            };
            Ok(LibraryStatus {
                library_id,
                device_id,
                role: live.as_ref().map_or(state.role, |s| s.role),
                term: live.as_ref().map_or(state.current_term, |s| s.current_term),
                leader: live.as_ref().map_or(state.leader_device, |s| s.leader_device),
                last_sequence: last.sequence,
                followers,
                applier,
                outbox_pending,
            })
        })
    }
}

/// Writes changes from this device, whatever its role: committed at once when it leads,
/// otherwise proposed to the leader through the durable outbox.
#[derive(Message)]
#[rtype(result = "Result<Submitted, String>")]
pub struct Submit(pub Vec<lsync_storage::Change>);

impl Handler<Submit> for SyncService {
    type Result = ResponseFuture<Result<Submitted, String>>;
    fn handle(&mut self, msg: Submit, _: &mut Context<Self>) -> Self::Result {
        let proposer = self.proposer.clone();
        Box::pin(async move { proposer.submit(msg.0).await.map_err(|e| e.to_string()) })
    }
}

impl Handler<RoleChange> for SyncService {
    type Result = ();
    fn handle(&mut self, msg: RoleChange, _: &mut Context<Self>) {
        let Some(state) = self.state.as_mut() else { return };
        // A follower that only learns a newer term of the leader it follows keeps its actors
        // (the applier adopts the term from the leader's messages); anything else restarts them.
        let unchanged = state.role == msg.role
            && state.leader_device == msg.leader
            && (state.current_term == msg.term || msg.role == SyncRole::Follower)
            && !matches!(self.role, Role::Idle);
        state.role = msg.role;
        state.current_term = msg.term;
        state.leader_device = msg.leader;
        state.voted_for = msg.voted_for;
        if !unchanged {
            info!(library_id = %self.cx.library_id, role = %msg.role, term = msg.term, leader = ?msg.leader, "role change");
            self.start_role();
        }
    }
}

impl Handler<crate::watcher::LeaderHint> for SyncService {
    type Result = ();
    fn handle(&mut self, msg: crate::watcher::LeaderHint, _: &mut Context<Self>) {
        let hint = msg.0;
        let is_member = self.members.values().any(|d| *d == hint);
        let Some(state) = self.state.as_mut() else { return };
        if matches!(self.role, Role::Follower { .. })
            && is_member
            && hint != self.cx.device_id
            && state.leader_device != Some(hint)
        {
            info!(library_id = %self.cx.library_id, leader = %hint, "following the leader a NotLeader reply named");
            state.leader_device = Some(hint);
            self.start_role();
        }
    }
}

impl Handler<HeartbeatNow> for SyncService {
    type Result = ();
    fn handle(&mut self, _: HeartbeatNow, _: &mut Context<Self>) {
        if let Role::Leader { sessions, .. } = &self.role {
            for s in sessions.values() {
                s.do_send(HeartbeatNow);
            }
        }
    }
}

impl Handler<ElectionInput> for SyncService {
    type Result = ();
    fn handle(&mut self, msg: ElectionInput, _: &mut Context<Self>) {
        if let Some(w) = &self.watcher {
            w.do_send(msg);
        }
    }
}

impl Handler<FollowerAcked> for SyncService {
    type Result = ResponseFuture<Option<u64>>;
    fn handle(&mut self, msg: FollowerAcked, _: &mut Context<Self>) -> Self::Result {
        let session = match &self.role {
            Role::Leader { sessions, .. } => self
                .members
                .iter()
                .find(|(_, d)| **d == msg.0)
                .and_then(|(p, _)| sessions.get(p).cloned()),
            _ => None,
        };
        Box::pin(async move {
            let s = session?;
            s.send(GetFollowerStatus { leader_last_sequence: 0 })
                .await
                .ok()
                .map(|st| st.acked_sequence)
        })
    }
}

impl Handler<TransferLeadership> for SyncService {
    type Result = ResponseFuture<Result<(), String>>;
    fn handle(&mut self, msg: TransferLeadership, _: &mut Context<Self>) -> Self::Result {
        let watcher = self.watcher.clone();
        Box::pin(async move {
            match watcher {
                Some(w) => w.send(msg).await.map_err(|_| "election watcher stopped".to_string())?,
                None => Err("the library is not started yet".into()),
            }
        })
    }
}

#[cfg(test)]
impl Handler<crate::applier::InjectPanic> for SyncService {
    type Result = ();
    fn handle(&mut self, msg: crate::applier::InjectPanic, _: &mut Context<Self>) {
        if let Role::Follower { applier } = &self.role {
            applier.do_send(msg);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use libp2p::identity::Keypair;
    use lsync_storage::Device;

    use super::*;
    use crate::network::NetworkConfig;
    use crate::testkit::follower_db;

    #[actix_rt::test]
    async fn a_panicking_role_actor_is_restarted_by_the_watchdog() {
        let dir = tempfile::tempdir().unwrap();
        let lib = Uuid::new_v4();
        let leader = Uuid::new_v4();
        let db = follower_db(&dir, lib, leader);
        let me = db.sync_state().unwrap().device_id;
        // a leader that never answers: the follower's applier just keeps retrying
        db.upsert_device(&Device {
            device_id: leader,
            peer_id: PeerId::random().to_string(),
            addresses: vec![],
            name: "absent leader".into(),
        })
        .unwrap();
        let (network, _) =
            NetworkHandle::start(Keypair::generate_ed25519(), NetworkConfig::default())
                .await
                .unwrap();
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
        })
        .start();
        let has_applier = |service: Addr<SyncService>| async move {
            service.send(GetStatus).await.unwrap().unwrap().applier.is_some()
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while !has_applier(service.clone()).await {
            assert!(tokio::time::Instant::now() < deadline, "applier never started");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        service.send(crate::applier::InjectPanic).await.unwrap();
        // the applier's mailbox closes with the panic; the watchdog notices, counts it and
        // starts a new applier
        let restarts = || metrics.actor_restarts.load(std::sync::atomic::Ordering::Relaxed);
        while restarts() == 0 || !has_applier(service.clone()).await {
            assert!(tokio::time::Instant::now() < deadline, "applier not restarted");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(restarts(), 1);
        let st = service.send(GetStatus).await.unwrap().unwrap();
        assert_eq!(st.role, SyncRole::Follower);
        network.shutdown().await;
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
impl_shutdown!(LeaderNotifier, FollowerSession, FollowerApplier, ElectionWatcher);
