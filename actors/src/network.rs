//! Network: the one task that owns the node's libp2p Swarm, shared by all of its libraries.
//!
//! ```text
//!  actors ── NetworkHandle (cheap clone) ──▶ bounded command channel ──▶ event loop ──▶ Swarm
//!     ▲        commands carry oneshot reply senders                       │   TCP + noise + yamux
//!     │                                                                   │   allow list (members)
//!     │                                                                   │   request-response
//!     ├── InboundRequest { peer, message, reply } ◀── routed by library_id ┤   (SyncCodec, PROTOCOL)
//!     └── NetworkEvent (broadcast) ◀── first connection opened / last one closed
//! ```
//!
//! Receives: [`NetworkHandle`] calls (register/unregister a library and its members, add/remove a
//! member, send a request, list connected peers, shut down) and the swarm's events.
//! Emits: [`InboundRequest`]s to the registered library's actor (which answers on a oneshot;
//! dropping it answers `Error(Internal)`), [`NetworkEvent`]s, and the [`NetworkStats`] counters.
//!
//! Security: the swarm's allow list is the union of every registered library's members, so a
//! peer that is a member of no library cannot connect at all. An inbound request is answered by
//! the network itself, without reaching any actor, when its library is not registered
//! (`UnknownLibrary`), its peer is not a member of that library (`Unauthorized`), it is a
//! response-only variant (`BadRequest`), or its frame cannot be read (`BadRequest`: oversized,
//! truncated or undecodable — logged at warn with the peer and counted as malformed).
//!
//! Bounds: the command channel ([`NetworkConfig::command_capacity`]), the requests in flight in
//! each direction ([`NetworkConfig::max_pending_requests`]), the streams per connection
//! ([`NetworkConfig::max_concurrent_streams`]), the frame size ([`NetworkConfig::max_frame`]),
//! the time an actor may take to answer ([`NetworkConfig::request_timeout`]) and the event
//! broadcast (256 events; a slow subscriber lags, it does not hold memory).

mod codec;
mod event_loop;
#[cfg(test)]
mod tests;

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use lsync_protocol::{SyncMessage, DEFAULT_MAX_FRAME};
use tokio::sync::{broadcast, mpsc, oneshot};
use uuid::Uuid;

use crate::transport::{BoxFuture, NetworkError, Transport};

/// Capacity of the [`NetworkEvent`] broadcast channel.
const EVENT_CAPACITY: usize = 256;

/// How long [`NetworkHandle::start`] waits for the listeners to report their addresses.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings of the node's network.
#[derive(Debug, Clone)]
pub struct NetworkConfig {
    /// Addresses to listen on; port 0 picks a free port (the real address is returned by
    /// [`NetworkHandle::start`]). Default: `/ip4/127.0.0.1/tcp/0`.
    pub listen: Vec<Multiaddr>,
    /// Time a request may take, on both sides: an outbound request gets no response within it
    /// → [`NetworkError::Timeout`]; an inbound request the library's actor has not answered
    /// within it is dropped. Default 10 s.
    pub request_timeout: Duration,
    /// A connection without open streams is closed after this long. Default 120 s.
    pub idle_connection_timeout: Duration,
    /// Largest frame body accepted or sent, in bytes. Default [`DEFAULT_MAX_FRAME`] (16 MiB).
    pub max_frame: usize,
    /// Capacity of the command channel between handles and the event loop. Default 1024.
    pub command_capacity: usize,
    /// Streams (inbound + outbound requests) open at once on one connection. Default 256.
    pub max_concurrent_streams: usize,
    /// Time to establish a connection (TCP connect + noise + yamux). Default 10 s.
    pub connection_timeout: Duration,
    /// Requests in flight at once, per direction: beyond it an outbound request fails with
    /// [`NetworkError::Busy`] and an inbound one is answered `Error(Internal, "busy")`.
    /// Default 4096.
    pub max_pending_requests: usize,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        let loopback =
            Multiaddr::empty().with(Protocol::Ip4(Ipv4Addr::LOCALHOST)).with(Protocol::Tcp(0));
        Self {
            listen: vec![loopback],
            request_timeout: Duration::from_secs(10),
            idle_connection_timeout: Duration::from_secs(120),
            max_frame: DEFAULT_MAX_FRAME,
            command_capacity: 1024,
            max_concurrent_streams: 256,
            connection_timeout: Duration::from_secs(10),
            max_pending_requests: 4096,
        }
    }
}

/// An inbound request routed to a library's actor; answer by sending exactly one
/// [`SyncMessage`] on `reply` (dropping `reply` makes the network answer `Error{code: Internal}`).
///
/// The network delivers it with `try_send` and never waits: a full or closed mailbox gets the
/// peer `Error(Internal, "busy")`. actix mailboxes hold 16 messages by default; a library actor
/// that serves many peers should raise that (`ctx.set_mailbox_capacity`). An answer later than
/// [`NetworkConfig::request_timeout`] is dropped.
#[derive(Debug)]
pub struct InboundRequest {
    /// The authenticated sender (a member of the request's library).
    pub peer: PeerId,
    /// The request; never a response-only variant.
    pub message: SyncMessage,
    /// Where the response goes.
    pub reply: oneshot::Sender<SyncMessage>,
}

impl actix::Message for InboundRequest {
    type Result = ();
}

/// A change of a peer's connectivity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkEvent {
    /// The first connection to the peer was established.
    PeerConnected(PeerId),
    /// The last connection to the peer closed.
    PeerDisconnected(PeerId),
}

/// Counters of the network, updated by the event loop.
#[derive(Debug, Default)]
pub struct NetworkStats {
    /// Requests received, whatever became of them (malformed and rejected ones included).
    pub inbound_requests: AtomicU64,
    /// Requests handed to the swarm for sending.
    pub outbound_requests: AtomicU64,
    /// Inbound requests from a peer that is not a member of the request's library.
    pub rejected_unauthorized: AtomicU64,
    /// Inbound requests about a library that is not registered.
    pub rejected_unknown_library: AtomicU64,
    /// Inbound requests of a response-only variant.
    pub rejected_bad_request: AtomicU64,
    /// Inbound requests whose frame could not be read (undecodable, oversized, truncated), and
    /// inbound streams that failed with an I/O error.
    pub rejected_malformed: AtomicU64,
    /// Inbound requests refused because the library's actor or the network was saturated.
    pub rejected_busy: AtomicU64,
    /// Outbound requests that got no response (dial failure, timeout, closed connection…).
    pub outbound_failures: AtomicU64,
    /// Connections established.
    pub connections_established: AtomicU64,
    /// Connections closed.
    pub connections_closed: AtomicU64,
}

impl NetworkStats {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// A command for the event loop; each carries the sender of its reply.
enum Command {
    RegisterLibrary {
        library_id: Uuid,
        members: Vec<(PeerId, Vec<Multiaddr>)>,
        sink: actix::Recipient<InboundRequest>,
        reply: oneshot::Sender<()>,
    },
    UnregisterLibrary {
        library_id: Uuid,
        reply: oneshot::Sender<()>,
    },
    AddMember {
        library_id: Uuid,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        reply: oneshot::Sender<Result<(), NetworkError>>,
    },
    RemoveMember {
        library_id: Uuid,
        peer: PeerId,
        reply: oneshot::Sender<()>,
    },
    Request {
        peer: PeerId,
        message: SyncMessage,
        reply: oneshot::Sender<Result<SyncMessage, NetworkError>>,
    },
    ConnectedPeers {
        reply: oneshot::Sender<Vec<PeerId>>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

/// The client side of the network: a cheap, cloneable handle on the event loop.
#[derive(Clone)]
pub struct NetworkHandle {
    commands: mpsc::Sender<Command>,
    events: broadcast::WeakSender<NetworkEvent>,
    stats: Arc<NetworkStats>,
    local_peer_id: PeerId,
    /// Upper bound of one `request()`: connecting plus the request timeout, plus a margin.
    request_deadline: Duration,
}

impl std::fmt::Debug for NetworkHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetworkHandle")
            .field("local_peer_id", &self.local_peer_id)
            .field("closed", &self.commands.is_closed())
            .finish_non_exhaustive()
    }
}

impl NetworkHandle {
    /// Builds the Swarm (TCP + noise + yamux, request-response with `SyncCodec` on `PROTOCOL`,
    /// an allow list, explicit idle timeout), starts listening on every configured address,
    /// spawns the event loop with `actix_rt::spawn` (so it must be called inside an actix System
    /// / actix-rt runtime), and returns once every listener reported its real address (port 0
    /// resolved).
    pub async fn start(
        keypair: Keypair,
        config: NetworkConfig,
    ) -> Result<(NetworkHandle, Vec<Multiaddr>), NetworkError> {
        let stats = Arc::new(NetworkStats::default());
        let local_peer_id = keypair.public().to_peer_id();
        let mut swarm = event_loop::build_swarm(keypair, &config)?;
        let listeners = event_loop::listen(&mut swarm, &config.listen, LISTEN_TIMEOUT).await?;
        let addresses: Vec<Multiaddr> = listeners.iter().flat_map(|(_, a)| a.clone()).collect();
        tracing::info!(peer = %local_peer_id, addresses = ?addresses, "network listening");

        let (command_tx, command_rx) = mpsc::channel(config.command_capacity.max(1));
        let (event_tx, _) = broadcast::channel(EVENT_CAPACITY);
        let handle = NetworkHandle {
            commands: command_tx,
            events: event_tx.downgrade(),
            stats: stats.clone(),
            local_peer_id,
            request_deadline: config.connection_timeout
                + config.request_timeout
                + Duration::from_secs(1),
        };
        let event_loop = event_loop::EventLoop::new(
            swarm,
            command_rx,
            event_tx,
            stats,
            listeners.into_iter().map(|(id, _)| id).collect(),
            &config,
        );
        actix_rt::spawn(event_loop.run());
        Ok((handle, addresses))
    }

    /// This node's peer id.
    pub fn local_peer_id(&self) -> PeerId {
        self.local_peer_id
    }

    /// The network's counters.
    pub fn stats(&self) -> Arc<NetworkStats> {
        self.stats.clone()
    }

    /// Routes inbound requests whose `library_id` is `library_id` to `sink`; `members` are the
    /// peers allowed for that library (with addresses to dial them at). Registering a library
    /// again replaces its members and sink.
    pub async fn register_library(
        &self,
        library_id: Uuid,
        members: Vec<(PeerId, Vec<Multiaddr>)>,
        sink: actix::Recipient<InboundRequest>,
    ) -> Result<(), NetworkError> {
        self.call(|reply| Command::RegisterLibrary { library_id, members, sink, reply }).await
    }

    /// Stops routing requests of `library_id`; its members that are members of no other library
    /// are disallowed and disconnected. Unregistering an unknown library does nothing.
    pub async fn unregister_library(&self, library_id: Uuid) -> Result<(), NetworkError> {
        self.call(|reply| Command::UnregisterLibrary { library_id, reply }).await
    }

    /// Adds a member to a registered library (allow list + addresses known to the swarm for
    /// dialing); adding an existing member adds its new addresses. Fails with
    /// [`NetworkError::Io`] if the library is not registered.
    pub async fn add_member(
        &self,
        library_id: Uuid,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
    ) -> Result<(), NetworkError> {
        self.call(|reply| Command::AddMember { library_id, peer, addrs, reply }).await?
    }

    /// Removes a member from a library; once it is a member of no library it is disallowed and
    /// disconnected. Removing a non-member does nothing.
    pub async fn remove_member(&self, library_id: Uuid, peer: PeerId) -> Result<(), NetworkError> {
        self.call(|reply| Command::RemoveMember { library_id, peer, reply }).await
    }

    /// Sends `msg` to `peer` (dialing it if needed) and resolves to its response.
    ///
    /// Fails with [`NetworkError::Busy`] at once if the command channel is full, and with
    /// [`NetworkError::Dial`] at once if `peer` is a member of no registered library.
    pub async fn request(
        &self,
        peer: PeerId,
        msg: SyncMessage,
    ) -> Result<SyncMessage, NetworkError> {
        self.send_request(peer, msg).await
    }

    /// Hands the request to the network task at once (not when the returned future is first
    /// polled), so that a caller can send the next request before it does other work — the
    /// follower's fetch pipelining relies on it. The future resolves to the response.
    fn send_request(
        &self,
        peer: PeerId,
        msg: SyncMessage,
    ) -> BoxFuture<Result<SyncMessage, NetworkError>> {
        let (reply, response) = oneshot::channel();
        let sent = self.commands.try_send(Command::Request { peer, message: msg, reply }).map_err(
            |error| match error {
                mpsc::error::TrySendError::Full(_) => NetworkError::Busy,
                mpsc::error::TrySendError::Closed(_) => NetworkError::Closed,
            },
        );
        let deadline = self.request_deadline;
        Box::pin(async move {
            sent?;
            match tokio::time::timeout(deadline, response).await {
                Ok(Ok(result)) => result,
                Ok(Err(_)) => Err(NetworkError::Closed),
                Err(_) => Err(NetworkError::Timeout),
            }
        })
    }

    /// The peers with at least one open connection.
    pub async fn connected_peers(&self) -> Result<Vec<PeerId>, NetworkError> {
        self.call(|reply| Command::ConnectedPeers { reply }).await
    }

    /// Connectivity events: connected = first connection to a peer, disconnected = its last one
    /// closed. The receiver ends (`RecvError::Closed`) when the network stops; it lags rather
    /// than grows if it falls more than 256 events behind.
    pub fn subscribe(&self) -> broadcast::Receiver<NetworkEvent> {
        match self.events.upgrade() {
            Some(sender) => sender.subscribe(),
            None => broadcast::channel(1).1,
        }
    }

    /// Stops the loop, closes listeners and connections, fails the requests in flight with
    /// [`NetworkError::Closed`]; every later call fails with `Closed`. Idempotent.
    pub async fn shutdown(&self) {
        let _ = self.call(|reply| Command::Shutdown { reply }).await;
    }

    async fn call<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, NetworkError> {
        let (reply, response) = oneshot::channel();
        self.commands.send(command(reply)).await.map_err(|_| NetworkError::Closed)?;
        response.await.map_err(|_| NetworkError::Closed)
    }
}

impl Transport for NetworkHandle {
    fn request(
        &self,
        peer: PeerId,
        msg: SyncMessage,
    ) -> BoxFuture<Result<SyncMessage, NetworkError>> {
        self.send_request(peer, msg)
    }
}
