//! The event loop: owns the Swarm, `select!`s between its events, the command channel and the
//! library actors' answers. It never blocks and never panics on peer input.

use std::collections::HashMap;
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
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{allow_block_list, noise, tcp, yamux, Multiaddr, PeerId, Swarm};
use lsync_protocol::{ErrorCode, SyncCodec, SyncMessage, PROTOCOL};
use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::{debug, info, trace, warn};
use uuid::Uuid;

use super::codec::{NetworkCodec, WireRequest};
use super::{Command, InboundRequest, NetworkConfig, NetworkEvent, NetworkStats};
use crate::transport::NetworkError;

/// The node's behaviour. The allow list comes first, so a connection is refused before any
/// other behaviour sees it.
#[derive(NetworkBehaviour)]
pub(super) struct Behaviour {
    allow: allow_block_list::Behaviour<allow_block_list::AllowedPeers>,
    sync: request_response::Behaviour<NetworkCodec>,
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
        .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)
        .map_err(|e| NetworkError::Io(format!("cannot set up the transport: {e}")))?
        .with_behaviour(|_| Behaviour {
            allow: allow_block_list::Behaviour::default(),
            sync: request_response::Behaviour::with_codec(
                codec,
                [(PROTOCOL, ProtocolSupport::Full)],
                sync_config,
            ),
        })
        .map_err(|e| NetworkError::Io(format!("cannot set up the behaviour: {e}")))?
        // Every request opens a substream and negotiates `PROTOCOL` on it. With plain V1 the
        // requester waits for the listener's confirmation before it writes the request: one
        // more round trip per request. V1Lazy sends the proposal with the request (same wire
        // format; a listener without the protocol refuses it and the request fails).
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
        Ok(Ok(())) => Ok(listeners),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(NetworkError::Io("listeners did not report their addresses".into())),
    }
}

/// A registered library.
struct Library {
    /// Its members and the addresses to dial them at.
    members: HashMap<PeerId, Vec<Multiaddr>>,
    /// Its actor.
    sink: actix::Recipient<InboundRequest>,
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

pub(super) struct EventLoop {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    events: broadcast::Sender<NetworkEvent>,
    stats: Arc<NetworkStats>,
    listeners: Vec<ListenerId>,
    libraries: HashMap<Uuid, Library>,
    /// Outbound requests waiting for their response.
    outbound: HashMap<OutboundRequestId, OutboundReply>,
    /// Inbound requests waiting for their library actor's answer.
    inbound: FuturesUnordered<LocalBoxFuture<'static, Answered>>,
    /// The last dial error of each allowed peer, to explain a `DialFailure`.
    dial_errors: HashMap<PeerId, String>,
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
                    for peer in library.members.into_keys() {
                        self.disallow_if_orphan(peer);
                    }
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
                    self.disallow_if_orphan(peer);
                }
                let _ = reply.send(());
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
        for (peer, addrs) in &new_members {
            self.allow(*peer, addrs);
        }
        let member_count = new_members.len();
        let previous = self.libraries.insert(library_id, Library { members: new_members, sink });
        if let Some(previous) = previous {
            for peer in previous.members.into_keys() {
                self.disallow_if_orphan(peer);
            }
        }
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
        self.allow(peer, &addrs);
        info!(library = %library_id, peer = %peer, "member added");
        Ok(())
    }

    /// Puts `peer` on the allow list and gives its addresses to the swarm.
    fn allow(&mut self, peer: PeerId, addrs: &[Multiaddr]) {
        if peer == *self.swarm.local_peer_id() {
            return;
        }
        self.swarm.behaviour_mut().allow.allow_peer(peer);
        for addr in addrs {
            self.swarm.add_peer_address(peer, addr.clone());
        }
    }

    /// Takes `peer` off the allow list (closing its connections) if no library has it.
    fn disallow_if_orphan(&mut self, peer: PeerId) {
        if self.is_member(&peer) {
            return;
        }
        self.dial_errors.remove(&peer);
        if self.swarm.behaviour_mut().allow.disallow_peer(peer) {
            info!(peer = %peer, "peer is a member of no library, disallowed");
        }
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
            self.outbound.retain(|_, reply| !reply.is_closed());
            if self.outbound.len() >= self.max_pending {
                self.bump(|s| &s.outbound_failures);
                warn!(peer = %peer, pending = self.outbound.len(), "too many requests in flight");
                let _ = reply.send(Err(NetworkError::Busy));
                return;
            }
        }
        // Addresses travel with each request: the swarm's own address cache forgets an address
        // after one failed dial, and a member that was down must stay reachable later.
        let addrs =
            if self.swarm.is_connected(&peer) { Vec::new() } else { self.addresses_of(&peer) };
        trace!(peer = %peer, kind = message.kind(), "sending request");
        let id = self.swarm.behaviour_mut().sync.send_request_with_addresses(
            &peer,
            WireRequest::Message(message),
            addrs,
        );
        self.bump(|s| &s.outbound_requests);
        self.outbound.insert(id, reply);
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
        for (_, reply) in self.outbound.drain() {
            let _ = reply.send(Err(NetworkError::Closed));
        }
        // Dropping the queued commands drops their reply senders: their callers get `Closed`.
        while self.commands.try_recv().is_ok() {}
        info!(peer = %self.swarm.local_peer_id(), "network stopped");
    }

    // ---- swarm events ----

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Sync(event)) => self.on_sync_event(event),
            SwarmEvent::Behaviour(BehaviourEvent::Allow(never)) => match never {},
            SwarmEvent::ConnectionEstablished { peer_id, num_established, endpoint, .. } => {
                self.bump(|s| &s.connections_established);
                self.dial_errors.remove(&peer_id);
                debug!(peer = %peer_id, address = %endpoint.get_remote_address(), "connection established");
                if num_established.get() == 1 {
                    let _ = self.events.send(NetworkEvent::PeerConnected(peer_id));
                }
            }
            SwarmEvent::ConnectionClosed { peer_id, num_established, cause, .. } => {
                self.bump(|s| &s.connections_closed);
                debug!(peer = %peer_id, cause = ?cause, "connection closed");
                if num_established == 0 {
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
                debug!(peer = ?peer_id, address = %send_back_addr, error = %error, "incoming connection refused");
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

    fn on_sync_event(&mut self, event: request_response::Event<WireRequest, SyncMessage>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request { request, channel, .. } => {
                    self.on_inbound_request(peer, request, channel);
                }
                request_response::Message::Response { request_id, response } => {
                    if let Some(reply) = self.outbound.remove(&request_id) {
                        let _ = reply.send(Ok(response));
                    }
                }
            },
            request_response::Event::OutboundFailure { peer, request_id, error, .. } => {
                self.bump(|s| &s.outbound_failures);
                debug!(peer = %peer, error = %error, "request failed");
                let error = match error {
                    OutboundFailure::DialFailure => NetworkError::Dial(
                        self.dial_errors
                            .get(&peer)
                            .cloned()
                            .unwrap_or_else(|| format!("cannot dial {peer}")),
                    ),
                    OutboundFailure::Timeout => NetworkError::Timeout,
                    OutboundFailure::ConnectionClosed => NetworkError::ConnectionClosed,
                    OutboundFailure::UnsupportedProtocols => NetworkError::UnsupportedProtocol,
                    // With V1Lazy negotiation a refused protocol shows up when the
                    // response is read.
                    OutboundFailure::Io(error)
                        if error
                            .get_ref()
                            .and_then(|e| e.downcast_ref())
                            .is_some_and(|e| matches!(e, upgrade::NegotiationError::Failed)) =>
                    {
                        NetworkError::UnsupportedProtocol
                    }
                    OutboundFailure::Io(error) => NetworkError::Io(error.to_string()),
                };
                if let Some(reply) = self.outbound.remove(&request_id) {
                    let _ = reply.send(Err(error));
                }
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
        request: WireRequest,
        channel: ResponseChannel<SyncMessage>,
    ) {
        self.bump(|s| &s.inbound_requests);
        let message = match request {
            WireRequest::Message(message) => message,
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
        let library_id = message.library_id();
        let kind = message.kind();
        let Some(library) = self.libraries.get(&library_id) else {
            self.bump(|s| &s.rejected_unknown_library);
            debug!(peer = %peer, library = %library_id, kind, "request for an unknown library");
            let reply = SyncMessage::error(
                library_id,
                ErrorCode::UnknownLibrary,
                "this node does not hold the library",
            );
            self.respond(peer, channel, reply);
            return;
        };
        if !library.members.contains_key(&peer) {
            self.bump(|s| &s.rejected_unauthorized);
            warn!(peer = %peer, library = %library_id, kind, "request from a non-member");
            let reply = SyncMessage::error(
                library_id,
                ErrorCode::Unauthorized,
                "the peer is not a member of the library",
            );
            self.respond(peer, channel, reply);
            return;
        }
        if is_response_only(&message) {
            self.bump(|s| &s.rejected_bad_request);
            warn!(peer = %peer, library = %library_id, kind, "response sent as a request");
            let reply = SyncMessage::error(
                library_id,
                ErrorCode::BadRequest,
                format!("{kind} is a response, not a request"),
            );
            self.respond(peer, channel, reply);
            return;
        }
        if self.inbound.len() >= self.max_pending {
            self.reject_busy(peer, library_id, kind, channel);
            return;
        }
        let (reply, answer) = oneshot::channel();
        match library.sink.try_send(InboundRequest { peer, message, reply }) {
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

/// Variants that only ever answer a request.
fn is_response_only(message: &SyncMessage) -> bool {
    message.is_response_only()
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    #[test]
    fn response_only_variants() {
        let library_id = Uuid::new_v4();
        assert!(is_response_only(&SyncMessage::error(library_id, ErrorCode::Internal, "x")));
        assert!(is_response_only(&SyncMessage::SyncRequired {
            library_id,
            term: 1,
            reason: String::new(),
            leader_last_sequence: 0,
        }));
        assert!(!is_response_only(&SyncMessage::Acknowledge {
            last_term: 0,
            term: 0,
            library_id,
            up_to_sequence: 1
        }));
    }
}
