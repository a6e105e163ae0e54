//! The event loop: owns the Swarm, `select!`s between its events, the command channel and the
//! library actors' answers. It never blocks and never panics on peer input. It keeps the
//! libraries (members, sink, guest welcome, removed devices), tells the gate what each peer is,
//! routes inbound requests ([`verdict`]) and picks the protocol version of each outbound one
//! ([`PeerVersions`]).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use futures::future::LocalBoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use libp2p::core::transport::ListenerId;
use libp2p::core::upgrade;
use libp2p::identity::Keypair;
use libp2p::request_response::{
    self, InboundFailure, OutboundFailure, OutboundRequestId, ProtocolSupport, ResponseChannel,
};
use libp2p::swarm::{ConnectionId, ListenError, NetworkBehaviour, SwarmEvent};
use libp2p::{noise, tcp, Multiaddr, PeerId, Swarm};
use lsync_protocol::{ErrorCode, SyncCodec, SyncMessage, PROTOCOL, PROTOCOL_V1};
use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::{debug, info, trace, warn};
use uuid::Uuid;

use super::codec::{NetworkCodec, WireRequest};
use super::gate::{GateBehaviour, GateEvent, Refused, Standing};
use super::version::{needs_version_2, PeerVersions, Speak};
use super::{Command, InboundRequest, NetworkConfig, NetworkEvent, NetworkStats};
use crate::transport::NetworkError;

/// Devices remembered as removed, per library; the oldest is forgotten first.
pub(super) const MAX_REMOVED: usize = 64;

/// The node's behaviour. The gate comes first, so a connection is refused before any other
/// behaviour sees it. `sync` speaks version 2 outbound and accepts both versions inbound;
/// `sync_v1` speaks version 1 outbound only (one outbound protocol each keeps the negotiation
/// lazy, see `version.rs`).
#[derive(NetworkBehaviour)]
pub(super) struct Behaviour {
    gate: GateBehaviour,
    sync: request_response::Behaviour<NetworkCodec>,
    sync_v1: request_response::Behaviour<NetworkCodec>,
}

/// Builds the swarm described in [`NetworkConfig`].
pub(super) fn build_swarm(
    keypair: Keypair,
    config: &NetworkConfig,
) -> Result<Swarm<Behaviour>, NetworkError> {
    let codec = NetworkCodec(SyncCodec::new(config.max_frame));
    let sync_config = request_response::Config::default()
        .with_request_timeout(config.request_timeout)
        .with_max_concurrent_streams(config.max_concurrent_streams);
    let idle = config.idle_connection_timeout;
    let swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            super::muxer::Config::default,
        )
        .map_err(|e| NetworkError::Io(format!("cannot set up the transport: {e}")))?
        .with_behaviour(|_| Behaviour {
            gate: GateBehaviour::new(config.guest_timeout),
            sync: request_response::Behaviour::with_codec(
                codec,
                [(PROTOCOL, ProtocolSupport::Full), (PROTOCOL_V1, ProtocolSupport::Inbound)],
                sync_config.clone(),
            ),
            sync_v1: request_response::Behaviour::with_codec(
                codec,
                [(PROTOCOL_V1, ProtocolSupport::Outbound)],
                sync_config,
            ),
        })
        .map_err(|e| NetworkError::Io(format!("cannot set up the behaviour: {e}")))?
        // Every request opens a substream and negotiates its protocol on it. With plain V1 the
        // requester waits for the listener's confirmation before it writes the request: one
        // more round trip per request. V1Lazy sends the proposal with the request (same wire
        // format; a listener without the protocol refuses it and the request fails, unread).
        // It is lazy only with a single protocol proposed, hence two behaviours.
        .with_swarm_config(|c| {
            c.with_idle_connection_timeout(idle)
                .with_substream_upgrade_protocol_override(upgrade::Version::V1Lazy)
        })
        .with_connection_timeout(config.connection_timeout)
        .build();
    Ok(swarm)
}

/// Starts a listener on every address and drives the swarm until each reported its real
/// address. Returns every listener with its addresses.
pub(super) async fn listen(
    swarm: &mut Swarm<Behaviour>,
    addresses: &[Multiaddr],
    timeout: Duration,
) -> Result<Vec<(ListenerId, Vec<Multiaddr>)>, NetworkError> {
    let mut listeners = Vec::with_capacity(addresses.len());
    for address in addresses {
        let id = swarm
            .listen_on(address.clone())
            .map_err(|e| NetworkError::Io(format!("cannot listen on {address}: {e}")))?;
        listeners.push((id, Vec::new()));
    }
    let wait = async {
        while listeners.iter().any(|(_, addrs)| addrs.is_empty()) {
            match swarm.select_next_some().await {
                SwarmEvent::NewListenAddr { listener_id, address } => {
                    if let Some((_, addrs)) =
                        listeners.iter_mut().find(|(id, _)| *id == listener_id)
                    {
                        addrs.push(address);
                    }
                }
                SwarmEvent::ListenerClosed { listener_id, reason, .. } => {
                    let reason = reason.err().map(|e| e.to_string()).unwrap_or_default();
                    return Err(NetworkError::Io(format!(
                        "listener {listener_id} closed: {reason}"
                    )));
                }
                SwarmEvent::ListenerError { listener_id, error } => {
                    return Err(NetworkError::Io(format!(
                        "listener {listener_id} failed: {error}"
                    )));
                }
                other => trace!(event = ?other, "swarm event before start"),
            }
        }
        Ok(())
    };
    match tokio::time::timeout(timeout, wait).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err(NetworkError::Io("listeners did not report their addresses".into())),
    }
    // A listener on an unspecified address (0.0.0.0) reports one address per interface, one
    // event each: take the ones that follow at once too (the loopback one alone is useless to
    // another machine, e.g. in an invitation token).
    let unspecified = addresses.iter().any(|a| {
        a.iter().any(|p| match p {
            libp2p::multiaddr::Protocol::Ip4(ip) => ip.is_unspecified(),
            libp2p::multiaddr::Protocol::Ip6(ip) => ip.is_unspecified(),
            _ => false,
        })
    });
    while let Ok(event) = tokio::time::timeout(
        if unspecified { ADDRESS_GRACE } else { Duration::ZERO },
        swarm.select_next_some(),
    )
    .await
    {
        match event {
            SwarmEvent::NewListenAddr { listener_id, address } => {
                if let Some((_, addrs)) = listeners.iter_mut().find(|(id, _)| *id == listener_id) {
                    addrs.push(address);
                }
            }
            other => trace!(event = ?other, "swarm event before start"),
        }
    }
    Ok(listeners)
}

/// How long [`listen`] keeps taking addresses after every listener reported one.
const ADDRESS_GRACE: Duration = Duration::from_millis(100);

/// A library known to the network.
struct Library {
    /// Its members and the addresses to dial them at.
    members: HashMap<PeerId, Vec<Multiaddr>>,
    /// Its actor; `None` for an entry [`Command::PrepareJoin`] made before the library is
    /// registered (its requests are answered `UnknownLibrary`).
    sink: Option<actix::Recipient<InboundRequest>>,
    /// Whether it welcomes guests (it has an open invitation).
    welcome_guests: bool,
    /// Devices removed from it, oldest first, at most [`MAX_REMOVED`].
    removed: VecDeque<PeerId>,
}

impl Library {
    fn new(sink: Option<actix::Recipient<InboundRequest>>) -> Self {
        Self { members: HashMap::new(), sink, welcome_guests: false, removed: VecDeque::new() }
    }
}

/// What becomes of an inbound request, decided from its library alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Hand it to the library's actor.
    Route,
    /// The library is not registered (or has no sink yet).
    UnknownLibrary,
    /// A response-only variant.
    NotARequest,
    /// A message of version 2 only that came on version 1.
    NotInVersion1,
    /// From a device removed from the library.
    Removed,
    /// From a peer that is neither a member nor removed: a member of another library, or a
    /// guest (the event loop tells them apart by the peer's standing).
    Outsider,
}

/// The rules of docs/protocol.md §10 for one request of `peer` on a stream of `version`;
/// `library` is the request's library if it is registered (with a sink). A member's request is
/// routed; a `Join` to a library that welcomes guests is routed whoever
/// sends it (the library checks the invitation; a removed device must be able to join again
/// with a new one); every other request of a non-member is refused.
fn verdict(
    library: Option<&Library>,
    peer: &PeerId,
    message: &SyncMessage,
    version: u32,
) -> Verdict {
    let Some(library) = library else {
        return Verdict::UnknownLibrary;
    };
    let member = library.members.contains_key(peer);
    let joining = !member && library.welcome_guests && matches!(message, SyncMessage::Join { .. });
    if !member && !joining {
        return if library.removed.contains(peer) { Verdict::Removed } else { Verdict::Outsider };
    }
    if message.is_response_only() {
        return Verdict::NotARequest;
    }
    if version == 1 && needs_version_2(message) {
        return Verdict::NotInVersion1;
    }
    Verdict::Route
}

/// Marks `peer` as the newest device removed (moving it if it was marked already); returns the
/// device forgotten to keep at most [`MAX_REMOVED`].
fn mark_removed(removed: &mut VecDeque<PeerId>, peer: PeerId) -> Option<PeerId> {
    removed.retain(|p| *p != peer);
    removed.push_back(peer);
    if removed.len() > MAX_REMOVED {
        removed.pop_front()
    } else {
        None
    }
}

/// An inbound request the library's actor has answered (or not, in time).
struct Answered {
    peer: PeerId,
    library_id: Uuid,
    kind: &'static str,
    channel: ResponseChannel<SyncMessage>,
    /// `Err` = timed out; `Ok(Err)` = the actor dropped the reply sender.
    outcome: Result<Result<SyncMessage, oneshot::error::RecvError>, tokio::time::error::Elapsed>,
}

type OutboundReply = oneshot::Sender<Result<SyncMessage, NetworkError>>;

/// An outbound request: by protocol version, since each behaviour numbers its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum RequestKey {
    V2(OutboundRequestId),
    V1(OutboundRequestId),
}

/// An outbound request waiting for its response.
struct Outbound {
    reply: OutboundReply,
    /// A copy to resend on version 1 if the peer refuses version 2 (kept only while the peer's
    /// version is unknown).
    copy: Option<SyncMessage>,
}

pub(super) struct EventLoop {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    events: broadcast::Sender<NetworkEvent>,
    stats: Arc<NetworkStats>,
    listeners: Vec<ListenerId>,
    libraries: HashMap<Uuid, Library>,
    /// Outbound requests waiting for their response.
    outbound: HashMap<RequestKey, Outbound>,
    /// Inbound requests waiting for their library actor's answer.
    inbound: FuturesUnordered<LocalBoxFuture<'static, Answered>>,
    /// The last dial error of each allowed peer, to explain a `DialFailure`.
    dial_errors: HashMap<PeerId, String>,
    /// The protocol version of each peer.
    versions: PeerVersions,
    /// Connections on which a refusal was logged at info already (later ones go to debug).
    noted: HashSet<ConnectionId>,
    request_timeout: Duration,
    max_pending: usize,
}

impl EventLoop {
    pub(super) fn new(
        swarm: Swarm<Behaviour>,
        commands: mpsc::Receiver<Command>,
        events: broadcast::Sender<NetworkEvent>,
        stats: Arc<NetworkStats>,
        listeners: Vec<ListenerId>,
        config: &NetworkConfig,
    ) -> Self {
        Self {
            swarm,
            commands,
            events,
            stats,
            listeners,
            libraries: HashMap::new(),
            outbound: HashMap::new(),
            inbound: FuturesUnordered::new(),
            dial_errors: HashMap::new(),
            versions: PeerVersions::default(),
            noted: HashSet::new(),
            request_timeout: config.request_timeout,
            max_pending: config.max_pending_requests.max(1),
        }
    }

    pub(super) async fn run(mut self) {
        loop {
            tokio::select! {
                command = self.commands.recv() => match command {
                    Some(Command::Shutdown { reply }) => {
                        self.shutdown();
                        let _ = reply.send(());
                        return;
                    }
                    Some(command) => self.on_command(command),
                    None => {
                        debug!("every network handle dropped, stopping");
                        self.shutdown();
                        return;
                    }
                },
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                Some(answered) = self.inbound.next(), if !self.inbound.is_empty() => {
                    self.on_answered(answered);
                }
            }
        }
    }

    fn bump(&self, counter: impl Fn(&NetworkStats) -> &AtomicU64) {
        NetworkStats::bump(counter(&self.stats));
    }

    // ---- commands ----

    fn on_command(&mut self, command: Command) {
        match command {
            Command::RegisterLibrary { library_id, members, sink, reply } => {
                self.register_library(library_id, members, sink);
                let _ = reply.send(());
            }
            Command::UnregisterLibrary { library_id, reply } => {
                if let Some(library) = self.libraries.remove(&library_id) {
                    info!(library = %library_id, "library unregistered");
                    for peer in library.members.into_keys().chain(library.removed) {
                        self.refresh(peer);
                    }
                    self.refresh_welcome();
                }
                let _ = reply.send(());
            }
            Command::AddMember { library_id, peer, addrs, reply } => {
                let _ = reply.send(self.add_member(library_id, peer, addrs));
            }
            Command::RemoveMember { library_id, peer, reply } => {
                let removed = self
                    .libraries
                    .get_mut(&library_id)
                    .is_some_and(|library| library.members.remove(&peer).is_some());
                if removed {
                    info!(library = %library_id, peer = %peer, "member removed");
                    self.refresh(peer);
                }
                let _ = reply.send(());
            }
            Command::RevokeMember { library_id, peer, reply } => {
                let _ = reply.send(self.revoke_member(library_id, peer));
            }
            Command::SetMemberAddresses { library_id, peer, addrs, reply } => {
                let _ = reply.send(self.set_member_addresses(library_id, peer, addrs));
            }
            Command::WelcomeGuests { library_id, welcome, reply } => {
                let result = match self.libraries.get_mut(&library_id) {
                    Some(library) if library.sink.is_some() => {
                        library.welcome_guests = welcome;
                        info!(library = %library_id, welcome, "guests welcome");
                        self.refresh_welcome();
                        Ok(())
                    }
                    _ => Err(NetworkError::Io(format!("library {library_id} is not registered"))),
                };
                let _ = reply.send(result);
            }
            Command::PrepareJoin { library_id, peer, addrs, reply } => {
                self.libraries.entry(library_id).or_insert_with(|| Library::new(None));
                let _ = self.add_member(library_id, peer, addrs);
                let _ = reply.send(());
            }
            Command::PeerVersion { peer, reply } => {
                let _ = reply.send(self.versions.version(&peer));
            }
            Command::Request { peer, message, reply } => self.send_request(peer, message, reply),
            Command::ConnectedPeers { reply } => {
                let _ = reply.send(self.swarm.connected_peers().copied().collect());
            }
            // Handled by `run`, which has to stop the loop.
            Command::Shutdown { reply } => {
                let _ = reply.send(());
            }
        }
    }

    fn register_library(
        &mut self,
        library_id: Uuid,
        members: Vec<(PeerId, Vec<Multiaddr>)>,
        sink: actix::Recipient<InboundRequest>,
    ) {
        let mut new_members: HashMap<PeerId, Vec<Multiaddr>> = HashMap::new();
        for (peer, addrs) in members {
            let known = new_members.entry(peer).or_default();
            for addr in dialable(peer, addrs) {
                if !known.contains(&addr) {
                    known.push(addr);
                }
            }
        }
        let library = self.libraries.entry(library_id).or_insert_with(|| Library::new(None));
        library.removed.retain(|peer| !new_members.contains_key(peer));
        library.sink = Some(sink);
        let previous = std::mem::replace(&mut library.members, new_members);
        let current: Vec<(PeerId, Vec<Multiaddr>)> =
            library.members.iter().map(|(peer, addrs)| (*peer, addrs.clone())).collect();
        let member_count = current.len();
        for (peer, addrs) in current {
            self.add_addresses(peer, &addrs);
            self.refresh(peer);
        }
        for peer in previous.into_keys() {
            self.refresh(peer);
        }
        self.refresh_welcome();
        info!(library = %library_id, members = member_count, "library registered");
    }

    fn add_member(
        &mut self,
        library_id: Uuid,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
    ) -> Result<(), NetworkError> {
        let Some(library) = self.libraries.get_mut(&library_id) else {
            return Err(NetworkError::Io(format!("library {library_id} is not registered")));
        };
        let addrs = dialable(peer, addrs);
        let known = library.members.entry(peer).or_default();
        for addr in &addrs {
            if !known.contains(addr) {
                known.push(addr.clone());
            }
        }
        library.removed.retain(|p| *p != peer);
        self.add_addresses(peer, &addrs);
        self.refresh(peer);
        info!(library = %library_id, peer = %peer, "member added");
        Ok(())
    }

    fn revoke_member(&mut self, library_id: Uuid, peer: PeerId) -> Result<(), NetworkError> {
        let Some(library) = self.libraries.get_mut(&library_id) else {
            return Err(NetworkError::Io(format!("library {library_id} is not registered")));
        };
        library.members.remove(&peer);
        let forgotten = mark_removed(&mut library.removed, peer);
        info!(library = %library_id, peer = %peer, "member revoked");
        self.refresh(peer);
        if let Some(forgotten) = forgotten {
            debug!(library = %library_id, peer = %forgotten, "removed device forgotten");
            self.refresh(forgotten);
        }
        Ok(())
    }

    fn set_member_addresses(
        &mut self,
        library_id: Uuid,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
    ) -> Result<(), NetworkError> {
        let Some(known) =
            self.libraries.get_mut(&library_id).and_then(|library| library.members.get_mut(&peer))
        else {
            return Err(NetworkError::Io(format!(
                "peer {peer} is not a member of library {library_id}"
            )));
        };
        let mut addrs = dialable(peer, addrs);
        addrs.dedup();
        *known = addrs.clone();
        self.add_addresses(peer, &addrs);
        debug!(library = %library_id, peer = %peer, addresses = ?addrs, "member addresses set");
        Ok(())
    }

    /// Gives `peer`'s addresses to the swarm.
    fn add_addresses(&mut self, peer: PeerId, addrs: &[Multiaddr]) {
        if peer == *self.swarm.local_peer_id() {
            return;
        }
        for addr in addrs {
            self.swarm.add_peer_address(peer, addr.clone());
        }
    }

    /// Tells the gate what `peer` is now (member, removed, nothing); a peer that lost its
    /// standing is disconnected by the gate.
    fn refresh(&mut self, peer: PeerId) {
        if peer == *self.swarm.local_peer_id() {
            return;
        }
        let standing = if self.is_member(&peer) {
            Some(Standing::Member)
        } else if self.libraries.values().any(|library| library.removed.contains(&peer)) {
            Some(Standing::Removed)
        } else {
            None
        };
        let previous = self.swarm.behaviour().gate.standing(&peer);
        if previous == standing {
            return;
        }
        if previous == Some(Standing::Member) {
            self.dial_errors.remove(&peer);
            info!(peer = %peer, "peer is a member of no library, disallowed");
        }
        if standing.is_none() {
            self.versions.forget(&peer);
        }
        self.swarm.behaviour_mut().gate.set_standing(peer, standing);
    }

    /// Tells the gate whether any library welcomes guests.
    fn refresh_welcome(&mut self) {
        let welcome =
            self.libraries.values().any(|library| library.welcome_guests && library.sink.is_some());
        self.swarm.behaviour_mut().gate.set_welcome(welcome);
    }

    fn is_member(&self, peer: &PeerId) -> bool {
        self.libraries.values().any(|library| library.members.contains_key(peer))
    }

    /// Every address known for `peer`, over all libraries.
    fn addresses_of(&self, peer: &PeerId) -> Vec<Multiaddr> {
        let mut addrs: Vec<Multiaddr> = Vec::new();
        for library in self.libraries.values() {
            for addr in library.members.get(peer).into_iter().flatten() {
                if !addrs.contains(addr) {
                    addrs.push(addr.clone());
                }
            }
        }
        addrs
    }

    fn send_request(&mut self, peer: PeerId, message: SyncMessage, reply: OutboundReply) {
        if !self.is_member(&peer) {
            self.bump(|s| &s.outbound_failures);
            let _ = reply.send(Err(NetworkError::Dial(format!(
                "peer {peer} is a member of no registered library"
            ))));
            return;
        }
        if self.outbound.len() >= self.max_pending {
            // Forget requests whose caller gave up before failing a live one.
            self.outbound.retain(|_, outbound| !outbound.reply.is_closed());
            if self.outbound.len() >= self.max_pending {
                self.bump(|s| &s.outbound_failures);
                warn!(peer = %peer, pending = self.outbound.len(), "too many requests in flight");
                let _ = reply.send(Err(NetworkError::Busy));
                return;
            }
        }
        self.dispatch(peer, message, reply);
    }

    /// Hands the request to the behaviour of the version `peer` speaks.
    fn dispatch(&mut self, peer: PeerId, message: SyncMessage, reply: OutboundReply) {
        let speak = self.versions.speak(&peer, &message);
        if speak == Speak::Unsupported {
            self.bump(|s| &s.outbound_failures);
            debug!(peer = %peer, kind = message.kind(), "not sent: the peer speaks version 1 only");
            let _ = reply.send(Err(NetworkError::UnsupportedProtocol));
            return;
        }
        // Addresses travel with each request: the swarm's own address cache forgets an address
        // after one failed dial, and a member that was down must stay reachable later.
        let addrs =
            if self.swarm.is_connected(&peer) { Vec::new() } else { self.addresses_of(&peer) };
        trace!(peer = %peer, kind = message.kind(), version = ?speak, "sending request");
        let (key, copy) = match speak {
            Speak::V1 => {
                let id = self.swarm.behaviour_mut().sync_v1.send_request_with_addresses(
                    &peer,
                    WireRequest::Message(message),
                    addrs,
                );
                (RequestKey::V1(id), None)
            }
            Speak::V2 { keep_copy } => {
                let copy = keep_copy.then(|| message.clone());
                let id = self.swarm.behaviour_mut().sync.send_request_with_addresses(
                    &peer,
                    WireRequest::Message(message),
                    addrs,
                );
                (RequestKey::V2(id), copy)
            }
            Speak::Unsupported => return,
        };
        self.bump(|s| &s.outbound_requests);
        self.outbound.insert(key, Outbound { reply, copy });
    }

    fn shutdown(&mut self) {
        self.commands.close();
        for id in std::mem::take(&mut self.listeners) {
            self.swarm.remove_listener(id);
        }
        let peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        for peer in peers {
            let _ = self.swarm.disconnect_peer_id(peer);
        }
        for (_, outbound) in self.outbound.drain() {
            let _ = outbound.reply.send(Err(NetworkError::Closed));
        }
        // Dropping the queued commands drops their reply senders: their callers get `Closed`.
        while self.commands.try_recv().is_ok() {}
        info!(peer = %self.swarm.local_peer_id(), "network stopped");
    }

    // ---- swarm events ----

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Sync(event)) => self.on_sync_event(2, event),
            SwarmEvent::Behaviour(BehaviourEvent::SyncV1(event)) => self.on_sync_event(1, event),
            SwarmEvent::Behaviour(BehaviourEvent::Gate(event)) => self.on_gate_event(event),
            SwarmEvent::ConnectionEstablished { peer_id, num_established, endpoint, .. } => {
                self.bump(|s| &s.connections_established);
                self.dial_errors.remove(&peer_id);
                debug!(peer = %peer_id, address = %endpoint.get_remote_address(), "connection established");
                if num_established.get() == 1 {
                    let _ = self.events.send(NetworkEvent::PeerConnected(peer_id));
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id, connection_id, num_established, cause, ..
            } => {
                self.bump(|s| &s.connections_closed);
                self.noted.remove(&connection_id);
                debug!(peer = %peer_id, cause = ?cause, "connection closed");
                if num_established == 0 {
                    let member = self.is_member(&peer_id);
                    self.versions.disconnected(&peer_id, member);
                    let _ = self.events.send(NetworkEvent::PeerDisconnected(peer_id));
                }
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                debug!(peer = ?peer_id, error = %error, "dial failed");
                if let Some(peer) = peer_id.filter(|p| self.is_member(p)) {
                    self.dial_errors.insert(peer, error.to_string());
                }
            }
            SwarmEvent::IncomingConnectionError { peer_id, send_back_addr, error, .. } => {
                let refused = match &error {
                    ListenError::Denied { cause } => cause.downcast_ref::<Refused>().copied(),
                    _ => None,
                };
                if let Some(Refused::GuestsFull(peer)) = refused {
                    self.bump(|s| &s.refused_guest_connections);
                    info!(peer = %peer, address = %send_back_addr, "guest refused: too many guests connected");
                } else {
                    debug!(peer = ?peer_id, address = %send_back_addr, error = %error, "incoming connection refused");
                }
            }
            SwarmEvent::NewListenAddr { address, .. } => info!(address = %address, "listening"),
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                info!(address = %address, "listen address expired");
            }
            SwarmEvent::ListenerClosed { addresses, reason, .. } => match reason {
                Ok(()) => debug!(addresses = ?addresses, "listener closed"),
                Err(error) => warn!(addresses = ?addresses, error = %error, "listener failed"),
            },
            SwarmEvent::ListenerError { error, .. } => warn!(error = %error, "listener error"),
            other => trace!(event = ?other, "swarm event"),
        }
    }

    fn on_gate_event(&mut self, event: GateEvent) {
        match event {
            GateEvent::GuestAdmitted { peer, connection } => {
                self.bump(|s| &s.guest_connections);
                debug!(peer = %peer, connection = %connection, "guest connected");
            }
            GateEvent::GuestTimedOut { peer, connection } => {
                self.bump(|s| &s.guest_timeouts);
                debug!(peer = %peer, connection = %connection, "guest connection timed out, closing");
            }
        }
    }

    /// `version`: of the behaviour the event comes from (2: `sync`, 1: `sync_v1`).
    fn on_sync_event(
        &mut self,
        version: u32,
        event: request_response::Event<WireRequest, SyncMessage>,
    ) {
        match event {
            request_response::Event::Message { peer, connection_id, message } => match message {
                request_response::Message::Request { request, channel, .. } => {
                    self.on_inbound_request(peer, connection_id, request, channel);
                }
                request_response::Message::Response { request_id, response } => {
                    if let Some(outbound) = self.outbound.remove(&key(version, request_id)) {
                        self.versions.negotiated(peer, version);
                        let _ = outbound.reply.send(Ok(response));
                    }
                }
            },
            request_response::Event::OutboundFailure { peer, request_id, error, .. } => {
                let Some(outbound) = self.outbound.remove(&key(version, request_id)) else {
                    return;
                };
                if version == 2 && is_refusal(&error) {
                    self.versions.refused_version_2(peer);
                    if let Some(copy) = outbound.copy {
                        self.bump(|s| &s.protocol_fallbacks);
                        debug!(peer = %peer, kind = copy.kind(), "peer refused version 2, resending on version 1");
                        self.dispatch(peer, copy, outbound.reply);
                        return;
                    }
                }
                self.bump(|s| &s.outbound_failures);
                debug!(peer = %peer, version, error = %error, "request failed");
                let error = match error {
                    OutboundFailure::DialFailure => NetworkError::Dial(
                        self.dial_errors
                            .get(&peer)
                            .cloned()
                            .unwrap_or_else(|| format!("cannot dial {peer}")),
                    ),
                    OutboundFailure::Timeout => NetworkError::Timeout,
                    OutboundFailure::ConnectionClosed => NetworkError::ConnectionClosed,
                    error if is_refusal(&error) => NetworkError::UnsupportedProtocol,
                    OutboundFailure::Io(error) => NetworkError::Io(error.to_string()),
                    OutboundFailure::UnsupportedProtocols => NetworkError::UnsupportedProtocol,
                };
                let _ = outbound.reply.send(Err(error));
            }
            request_response::Event::InboundFailure { peer, error, .. } => match error {
                InboundFailure::Io(error) => {
                    self.bump(|s| &s.rejected_malformed);
                    warn!(peer = %peer, error = %error, "inbound stream failed");
                }
                InboundFailure::Timeout => warn!(peer = %peer, "inbound request timed out"),
                InboundFailure::ResponseOmission => {
                    warn!(peer = %peer, "inbound request got no response")
                }
                InboundFailure::ConnectionClosed => {
                    debug!(peer = %peer, "connection closed before the response was sent");
                }
                InboundFailure::UnsupportedProtocols => {
                    debug!(peer = %peer, "inbound stream of an unsupported protocol");
                }
            },
            request_response::Event::ResponseSent { peer, .. } => {
                trace!(peer = %peer, "response sent");
            }
        }
    }

    fn on_inbound_request(
        &mut self,
        peer: PeerId,
        connection: ConnectionId,
        request: WireRequest,
        channel: ResponseChannel<SyncMessage>,
    ) {
        self.bump(|s| &s.inbound_requests);
        let (message, version) = match request {
            WireRequest::Received { message, version } => (message, version),
            WireRequest::Message(message) => (message, 2),
            WireRequest::Unreadable(error) => {
                self.bump(|s| &s.rejected_malformed);
                warn!(peer = %peer, error = %error, "rejected malformed request");
                let reply = SyncMessage::error(
                    Uuid::nil(),
                    ErrorCode::BadRequest,
                    format!("malformed request: {error}"),
                );
                self.respond(peer, channel, reply);
                return;
            }
        };
        self.versions.negotiated(peer, version);
        let library_id = message.library_id();
        let kind = message.kind();
        let library = self.libraries.get(&library_id).filter(|library| library.sink.is_some());
        let reply = match verdict(library, &peer, &message, version) {
            Verdict::Route => {
                let Some(sink) = library.and_then(|library| library.sink.as_ref()) else {
                    return;
                };
                if self.inbound.len() >= self.max_pending {
                    self.reject_busy(peer, library_id, kind, channel);
                    return;
                }
                let (reply, answer) = oneshot::channel();
                match sink.try_send(InboundRequest { peer, message, reply }) {
                    Ok(()) => {
                        let timeout = self.request_timeout;
                        self.inbound.push(
                            async move {
                                let outcome = tokio::time::timeout(timeout, answer).await;
                                Answered { peer, library_id, kind, channel, outcome }
                            }
                            .boxed_local(),
                        );
                    }
                    Err(_) => self.reject_busy(peer, library_id, kind, channel),
                }
                return;
            }
            Verdict::UnknownLibrary => {
                self.bump(|s| &s.rejected_unknown_library);
                debug!(peer = %peer, library = %library_id, kind, "request for an unknown library");
                SyncMessage::error(
                    library_id,
                    ErrorCode::UnknownLibrary,
                    "this node does not hold the library",
                )
            }
            Verdict::NotARequest => {
                self.bump(|s| &s.rejected_bad_request);
                warn!(peer = %peer, library = %library_id, kind, "response sent as a request");
                SyncMessage::error(
                    library_id,
                    ErrorCode::BadRequest,
                    format!("{kind} is a response, not a request"),
                )
            }
            Verdict::NotInVersion1 => {
                self.bump(|s| &s.rejected_bad_request);
                warn!(peer = %peer, library = %library_id, kind, "version-2 message on version 1");
                SyncMessage::error(
                    library_id,
                    ErrorCode::BadRequest,
                    format!("{kind} does not exist in version 1 of the protocol"),
                )
            }
            Verdict::Removed => {
                self.bump(|s| &s.rejected_removed);
                self.log_refusal(
                    connection,
                    peer,
                    library_id,
                    kind,
                    "request from a removed device",
                );
                SyncMessage::error(
                    library_id,
                    ErrorCode::Unauthorized,
                    format!("this device was removed from library {library_id}"),
                )
            }
            Verdict::Outsider if self.swarm.behaviour().gate.standing(&peer).is_some() => {
                self.bump(|s| &s.rejected_unauthorized);
                warn!(peer = %peer, library = %library_id, kind, "request from a non-member");
                SyncMessage::error(
                    library_id,
                    ErrorCode::Unauthorized,
                    "the peer is not a member of the library",
                )
            }
            Verdict::Outsider => {
                self.bump(|s| &s.rejected_guest);
                self.log_refusal(connection, peer, library_id, kind, "guest request refused");
                SyncMessage::error(
                    library_id,
                    ErrorCode::Unauthorized,
                    "a guest may only send Join to a library with an open invitation",
                )
            }
        };
        self.respond(peer, channel, reply);
    }

    /// Logs a refusal of a guest or a removed device: at info the first time on a connection,
    /// at debug after that.
    fn log_refusal(
        &mut self,
        connection: ConnectionId,
        peer: PeerId,
        library_id: Uuid,
        kind: &'static str,
        what: &'static str,
    ) {
        if self.noted.insert(connection) {
            info!(peer = %peer, library = %library_id, kind, "{what}");
        } else {
            debug!(peer = %peer, library = %library_id, kind, "{what}");
        }
    }

    fn reject_busy(
        &mut self,
        peer: PeerId,
        library_id: Uuid,
        kind: &'static str,
        channel: ResponseChannel<SyncMessage>,
    ) {
        self.bump(|s| &s.rejected_busy);
        warn!(peer = %peer, library = %library_id, kind, "library busy, request refused");
        self.respond(peer, channel, SyncMessage::error(library_id, ErrorCode::Internal, "busy"));
    }

    fn on_answered(&mut self, answered: Answered) {
        let Answered { peer, library_id, kind, channel, outcome } = answered;
        let response = match outcome {
            Ok(Ok(response)) => response,
            Ok(Err(_)) => {
                warn!(peer = %peer, library = %library_id, kind, "library actor dropped a request");
                SyncMessage::error(library_id, ErrorCode::Internal, "the request was not answered")
            }
            Err(_) => {
                warn!(peer = %peer, library = %library_id, kind, "library actor did not answer in time");
                // libp2p has timed the stream out as well; nothing can be sent any more.
                return;
            }
        };
        if let SyncMessage::Error { code, .. } = &response {
            self.stats.count_error_answer(*code);
        }
        self.respond(peer, channel, response);
    }

    fn respond(
        &mut self,
        peer: PeerId,
        channel: ResponseChannel<SyncMessage>,
        response: SyncMessage,
    ) {
        if self.swarm.behaviour_mut().sync.send_response(channel, response).is_err() {
            debug!(peer = %peer, "stream closed before the response");
        }
    }
}

fn key(version: u32, id: OutboundRequestId) -> RequestKey {
    if version == 1 {
        RequestKey::V1(id)
    } else {
        RequestKey::V2(id)
    }
}

/// Whether an outbound request failed because the peer refused its protocol. With V1Lazy
/// negotiation a refused protocol shows up when the response is read, as an I/O error.
fn is_refusal(error: &OutboundFailure) -> bool {
    match error {
        OutboundFailure::UnsupportedProtocols => true,
        OutboundFailure::Io(error) => error
            .get_ref()
            .and_then(|e| e.downcast_ref())
            .is_some_and(|e| matches!(e, upgrade::NegotiationError::Failed)),
        _ => false,
    }
}

/// `addrs` ending in `/p2p/<peer>` (the form the swarm dials, so duplicates are recognised);
/// an address naming another peer is dropped.
fn dialable(peer: PeerId, addrs: Vec<Multiaddr>) -> Vec<Multiaddr> {
    addrs
        .into_iter()
        .filter_map(|addr| match addr.with_p2p(peer) {
            Ok(addr) => Some(addr),
            Err(addr) => {
                warn!(peer = %peer, address = %addr, "address names another peer, ignored");
                None
            }
        })
        .collect()
}

#[cfg(test)]
mod unit_tests {
    use lsync_protocol::SyncRole;

    use super::*;

    fn heartbeat(library_id: Uuid) -> SyncMessage {
        SyncMessage::Heartbeat {
            commit_sequence: 0,
            features: 0,
            library_id,
            term: 1,
            current_sequence: 0,
            last_term: 0,
            role: SyncRole::Follower,
            last_hash: None,
        }
    }

    fn join(library_id: Uuid) -> SyncMessage {
        SyncMessage::Join {
            library_id,
            secret: vec![7; 16],
            device_id: Uuid::nil(),
            name: "new".into(),
            addresses: Vec::new(),
        }
    }

    /// A registered library (`verdict` never looks at the sink).
    fn library(members: &[PeerId], welcome_guests: bool, removed: &[PeerId]) -> Library {
        Library {
            members: members.iter().map(|peer| (*peer, Vec::new())).collect(),
            sink: None,
            welcome_guests,
            removed: removed.iter().copied().collect(),
        }
    }

    #[test]
    fn response_only_variants() {
        let library_id = Uuid::new_v4();
        assert!(SyncMessage::error(library_id, ErrorCode::Internal, "x").is_response_only());
        assert!(SyncMessage::SyncRequired {
            library_id,
            term: 1,
            reason: String::new(),
            leader_last_sequence: 0,
        }
        .is_response_only());
        assert!(!SyncMessage::Acknowledge {
            last_term: 0,
            term: 0,
            library_id,
            up_to_sequence: 1,
            last_hash: None
        }
        .is_response_only());
    }

    #[test]
    fn a_members_request_is_routed() {
        let peer = PeerId::random();
        let library = library(&[peer], false, &[]);
        assert_eq!(verdict(Some(&library), &peer, &heartbeat(Uuid::nil()), 2), Verdict::Route);
    }

    #[test]
    fn a_request_for_an_unregistered_library_is_refused() {
        let peer = PeerId::random();
        assert_eq!(verdict(None, &peer, &heartbeat(Uuid::nil()), 2), Verdict::UnknownLibrary);
    }

    #[test]
    fn a_join_to_a_welcoming_library_is_routed_from_anyone() {
        let guest = PeerId::random();
        let library = library(&[], true, &[]);
        assert_eq!(verdict(Some(&library), &guest, &join(Uuid::nil()), 2), Verdict::Route);
    }

    #[test]
    fn a_join_to_a_library_without_an_invitation_is_refused() {
        let guest = PeerId::random();
        let library = library(&[], false, &[]);
        assert_eq!(verdict(Some(&library), &guest, &join(Uuid::nil()), 2), Verdict::Outsider);
    }

    #[test]
    fn a_guest_may_send_nothing_but_join() {
        let guest = PeerId::random();
        let library = library(&[], true, &[]);
        assert_eq!(verdict(Some(&library), &guest, &heartbeat(Uuid::nil()), 2), Verdict::Outsider);
    }

    #[test]
    fn a_removed_device_is_told_so() {
        let removed = PeerId::random();
        let library = library(&[], false, &[removed]);
        assert_eq!(verdict(Some(&library), &removed, &heartbeat(Uuid::nil()), 2), Verdict::Removed);
    }

    #[test]
    fn a_removed_device_may_join_again_with_an_invitation() {
        let removed = PeerId::random();
        let library = library(&[], true, &[removed]);
        assert_eq!(verdict(Some(&library), &removed, &join(Uuid::nil()), 2), Verdict::Route);
        assert_eq!(verdict(Some(&library), &removed, &heartbeat(Uuid::nil()), 2), Verdict::Removed);
    }

    #[test]
    fn a_response_is_not_a_request() {
        let peer = PeerId::random();
        let library = library(&[peer], false, &[]);
        let error = SyncMessage::error(Uuid::nil(), ErrorCode::Internal, "x");
        assert_eq!(verdict(Some(&library), &peer, &error, 2), Verdict::NotARequest);
    }

    #[test]
    fn a_version_2_message_on_version_1_is_refused() {
        let peer = PeerId::random();
        let library = library(&[peer], false, &[]);
        let announce = SyncMessage::AnnounceAddresses { library_id: Uuid::nil(), hints: vec![] };
        assert_eq!(verdict(Some(&library), &peer, &announce, 1), Verdict::NotInVersion1);
        assert_eq!(verdict(Some(&library), &peer, &heartbeat(Uuid::nil()), 1), Verdict::Route);
    }

    #[test]
    fn the_oldest_removed_device_is_forgotten_first() {
        let mut removed = VecDeque::new();
        let peers: Vec<PeerId> = (0..=MAX_REMOVED).map(|_| PeerId::random()).collect();
        for peer in &peers[..MAX_REMOVED] {
            assert_eq!(mark_removed(&mut removed, *peer), None);
        }
        assert_eq!(mark_removed(&mut removed, peers[MAX_REMOVED]), Some(peers[0]));
        assert_eq!(removed.len(), MAX_REMOVED);
    }

    #[test]
    fn removing_a_device_again_makes_it_the_newest() {
        let mut removed = VecDeque::new();
        let (a, b) = (PeerId::random(), PeerId::random());
        mark_removed(&mut removed, a);
        mark_removed(&mut removed, b);
        assert_eq!(mark_removed(&mut removed, a), None);
        assert_eq!(removed, VecDeque::from([b, a]));
    }
}
