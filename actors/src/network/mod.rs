//! Network: the one task that owns the node's libp2p Swarm, shared by all of its libraries.
//!
//! ```text
//!  actors ── NetworkHandle (cheap clone) ──▶ bounded command channel ──▶ event loop ──▶ Swarm
//!     ▲        commands carry oneshot reply senders                       │   TCP + noise + yamux
//!     │                                                                   │   gate (members,
//!     │                                                                   │     removed, guests)
//!     ├── InboundRequest { peer, message, reply } ◀── routed by library_id ┤   request-response
//!     └── NetworkEvent (broadcast) ◀── first connection opened / last one closed   ×2 (v2, v1)
//! ```
//!
//! Receives: [`NetworkHandle`] calls (register/unregister a library and its members, add,
//! remove or revoke a member, set a member's addresses, welcome guests, prepare a join, send a
//! request, list connected peers, a peer's protocol version, shut down) and the swarm's events.
//! Emits: [`InboundRequest`]s to the registered library's actor (which answers on a oneshot;
//! dropping it answers `Error(Internal)`), [`NetworkEvent`]s, and the [`NetworkStats`] counters.
//!
//! Security (docs/protocol.md §10): the gate (`gate.rs`) admits a connection by its peer id:
//! members of any registered library; devices removed from a library
//! ([`NetworkHandle::revoke_member`]), so that they learn it; and, only while a library welcomes
//! guests ([`NetworkHandle::welcome_guests`]: it has an open invitation), at most 16 guest
//! connections of any other peer, each closed after [`NetworkConfig::guest_timeout`] unless its
//! peer has become a member. Every other peer cannot connect at all, and only members are ever dialed.
//! An inbound request is answered by the network itself, without reaching any actor, when:
//! - its library is not registered (`UnknownLibrary`);
//! - its peer is not a member of that library (`Unauthorized`), except a `Join` to a library
//!   that welcomes guests, which is routed (the library checks the invitation's secret) —
//!   whoever sends it: a guest, a member of another library, or a device removed from that
//!   library (re-invited: it needs a new invitation, which a member made);
//! - its peer was removed from that library: `Unauthorized`, "this device was removed from
//!   library `<id>`" (remembered for the last 64 removals per library; `add_member` clears it);
//! - it is a response-only variant (`BadRequest`), or it came on version 1 but does not exist
//!   there (`BadRequest`);
//! - its frame cannot be read (`BadRequest`: oversized, truncated or undecodable — logged at
//!   warn with the peer and counted as malformed).
//!
//! Refusals of guests and removed devices, and guests over the bound, are counted in
//! [`NetworkStats`] and logged at debug level with the peer, the first one of each connection
//! at info.
//!
//! Versions (docs/protocol.md §11; `version.rs`): requests go on
//! [`PROTOCOL`](lsync_protocol::PROTOCOL) (version 2) with lazy negotiation; a peer that refuses
//! it gets the request again on [`PROTOCOL_V1`](lsync_protocol::PROTOCOL_V1), and every later
//! one there until its last connection closes; a message version 1 lacks fails with
//! [`NetworkError::UnsupportedProtocol`] without being sent to such a peer. Both versions are
//! accepted inbound.
//!
//! Joining: a node that joins a library through an invitation calls
//! [`NetworkHandle::prepare_join`] with the inviting member before the library is registered,
//! sends its `Join`, and registers the library (with its sink) once it is a member.
//!
//! Bounds: the command channel ([`NetworkConfig::command_capacity`]), the requests in flight in
//! each direction ([`NetworkConfig::max_pending_requests`]), the streams per connection
//! ([`NetworkConfig::max_concurrent_streams`]), the frame size ([`NetworkConfig::max_frame`]),
//! the time an actor may take to answer ([`NetworkConfig::request_timeout`]), the guest
//! connections (16) and their lifetime ([`NetworkConfig::guest_timeout`]), the removed devices
//! remembered (64 per library) and the event broadcast (256 events; a slow subscriber lags, it
//! does not hold memory).

mod codec;
mod event_loop;
mod gate;
pub mod muxer;
#[cfg(test)]
mod tests;
mod version;

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use lsync_protocol::{ErrorCode, SyncMessage, DEFAULT_MAX_FRAME};
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
    /// A guest's connection (a peer that is a member of no library, admitted while a library
    /// welcomes guests) is closed this long after it opened, unless the peer has become a
    /// member meanwhile. Default 30 s.
    pub guest_timeout: Duration,
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
            guest_timeout: Duration::from_secs(30),
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
    /// The authenticated sender: a member of the request's library, or, for a `Join` to a
    /// library that welcomes guests, any peer (the library must check the invitation).
    pub peer: PeerId,
    /// The request; never a response-only variant.
    pub message: SyncMessage,
    /// Where the response goes.
    pub reply: oneshot::Sender<SyncMessage>,
}

impl actix::Message for InboundRequest {
    type Result = ();
}

/// A change of a peer's connectivity. Guests and removed devices connect too: a subscriber
/// that cares about members only checks the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkEvent {
    /// The first connection to the peer was established.
    PeerConnected(PeerId),
    /// The last connection to the peer closed.
    PeerDisconnected(PeerId),
}

/// Every error code, in the order of [`NetworkStats::error_answers`], with its metric label.
pub const ERROR_CODES: [(ErrorCode, &str); 6] = [
    (ErrorCode::Unauthorized, "unauthorized"),
    (ErrorCode::UnknownLibrary, "unknown_library"),
    (ErrorCode::NotLeader, "not_leader"),
    (ErrorCode::BadRequest, "bad_request"),
    (ErrorCode::StaleTerm, "stale_term"),
    (ErrorCode::Internal, "internal"),
];

/// Counters of the network, updated by the event loop.
#[derive(Debug, Default)]
pub struct NetworkStats {
    /// Requests received, whatever became of them (malformed and rejected ones included).
    pub inbound_requests: AtomicU64,
    /// Requests handed to the swarm for sending.
    pub outbound_requests: AtomicU64,
    /// Inbound requests from a member of another library (not a member of the request's).
    pub rejected_unauthorized: AtomicU64,
    /// Inbound requests from a guest (a peer with no standing here) other than a `Join` to a
    /// library that welcomes guests.
    pub rejected_guest: AtomicU64,
    /// Inbound requests from a device removed from the request's library.
    pub rejected_removed: AtomicU64,
    /// Inbound requests about a library that is not registered.
    pub rejected_unknown_library: AtomicU64,
    /// Inbound requests of a response-only variant.
    pub rejected_bad_request: AtomicU64,
    /// Inbound requests whose frame could not be read (undecodable, oversized, truncated), and
    /// inbound streams that failed with an I/O error.
    pub rejected_malformed: AtomicU64,
    /// Inbound requests refused because the library's actor or the network was saturated.
    pub rejected_busy: AtomicU64,
    /// `Error` answers the library's actors gave to requests that reached them (a stale
    /// term, not the leader, a bad acknowledgement…), by code: see [`NetworkStats::error_answers_of`].
    pub error_answers: [AtomicU64; ERROR_CODES.len()],
    /// Outbound requests that got no response (dial failure, timeout, closed connection…).
    pub outbound_failures: AtomicU64,
    /// Connections established.
    pub connections_established: AtomicU64,
    /// Connections closed.
    pub connections_closed: AtomicU64,
    /// Guest connections admitted.
    pub guest_connections: AtomicU64,
    /// Guest connections refused because 16 were open already.
    pub refused_guest_connections: AtomicU64,
    /// Guest connections closed by the guest timeout.
    pub guest_timeouts: AtomicU64,
    /// Requests resent on version 1 after the peer refused version 2.
    pub protocol_fallbacks: AtomicU64,
}

impl NetworkStats {
    /// Counts an `Error` answer of `code` given by a library's actors.
    pub fn count_error_answer(&self, code: ErrorCode) {
        if let Some(i) = ERROR_CODES.iter().position(|(c, _)| *c == code) {
            Self::bump(&self.error_answers[i]);
        }
    }

    /// The `Error` answers of `code` given so far.
    pub fn error_answers_of(&self, code: ErrorCode) -> u64 {
        ERROR_CODES
            .iter()
            .position(|(c, _)| *c == code)
            .map_or(0, |i| self.error_answers[i].load(std::sync::atomic::Ordering::Relaxed))
    }

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
    RevokeMember {
        library_id: Uuid,
        peer: PeerId,
        reply: oneshot::Sender<Result<(), NetworkError>>,
    },
    SetMemberAddresses {
        library_id: Uuid,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        reply: oneshot::Sender<Result<(), NetworkError>>,
    },
    WelcomeGuests {
        library_id: Uuid,
        welcome: bool,
        reply: oneshot::Sender<Result<(), NetworkError>>,
    },
    PrepareJoin {
        library_id: Uuid,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        reply: oneshot::Sender<()>,
    },
    PeerVersion {
        peer: PeerId,
        reply: oneshot::Sender<Option<u32>>,
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
    /// Builds the Swarm (TCP + noise + yamux, the gate, request-response with `SyncCodec` on
    /// `PROTOCOL` and `PROTOCOL_V1`, explicit idle timeout), starts listening on every configured address,
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
    /// again (or one [`prepare_join`](Self::prepare_join) made) replaces its members and sink;
    /// whether it welcomes guests and the devices removed from it are kept, except that a
    /// listed member is no longer marked removed.
    pub async fn register_library(
        &self,
        library_id: Uuid,
        members: Vec<(PeerId, Vec<Multiaddr>)>,
        sink: actix::Recipient<InboundRequest>,
    ) -> Result<(), NetworkError> {
        self.call(|reply| Command::RegisterLibrary { library_id, members, sink, reply }).await
    }

    /// Stops routing requests of `library_id` and forgets it (its guest welcome and removed
    /// devices included); its members that are members of no other library are disallowed and
    /// disconnected. Unregistering an unknown library does nothing.
    pub async fn unregister_library(&self, library_id: Uuid) -> Result<(), NetworkError> {
        self.call(|reply| Command::UnregisterLibrary { library_id, reply }).await
    }

    /// Adds a member to a registered library (allow list + addresses known to the swarm for
    /// dialing); adding an existing member adds its new addresses. A device marked removed from
    /// the library ([`revoke_member`](Self::revoke_member)) is no longer. Fails with
    /// [`NetworkError::Io`] if the library is neither registered nor prepared by
    /// [`prepare_join`](Self::prepare_join).
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

    /// Revokes a member: like [`remove_member`](Self::remove_member) (its connections close if
    /// it is a member of no other library), and the device is remembered as removed from
    /// `library_id` (the last 64 per library): it may still connect, and every request it
    /// sends about that library is answered `Error(Unauthorized, "this device was removed from
    /// library <id>")` by the network, so that it learns it; it is never dialed.
    /// [`add_member`](Self::add_member) (or registering the library with it) clears the mark.
    /// Fails with [`NetworkError::Io`] if the library is not registered.
    pub async fn revoke_member(&self, library_id: Uuid, peer: PeerId) -> Result<(), NetworkError> {
        self.call(|reply| Command::RevokeMember { library_id, peer, reply }).await?
    }

    /// Replaces the addresses at which `peer`, a member of `library_id`, is dialed (a device
    /// that restarted on another port announced new ones; the caller has verified the signed
    /// hint). Dialing a peer uses the addresses of every library it is a member of, so a hint
    /// is best applied to each. Fails with [`NetworkError::Io`] if the library is not known or
    /// `peer` is not a member of it.
    pub async fn set_member_addresses(
        &self,
        library_id: Uuid,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
    ) -> Result<(), NetworkError> {
        self.call(|reply| Command::SetMemberAddresses { library_id, peer, addrs, reply }).await?
    }

    /// Whether `library_id` welcomes guests: set it while the library has an open invitation.
    /// While at least one library does, any peer may connect as a guest (at most 16 guest
    /// connections at once, each closed after [`NetworkConfig::guest_timeout`] unless its peer
    /// has become a member) and send `Join` to the libraries that welcome guests; every other
    /// request of a guest is answered `Error(Unauthorized)`. Turning it off admits no new
    /// guests; connected guests keep their connection until their timeout. Fails with
    /// [`NetworkError::Io`] if the library is not registered.
    pub async fn welcome_guests(
        &self,
        library_id: Uuid,
        welcome: bool,
    ) -> Result<(), NetworkError> {
        self.call(|reply| Command::WelcomeGuests { library_id, welcome, reply }).await?
    }

    /// Before joining `library_id` through an invitation: makes `peer`, the inviting member,
    /// a member of that library on this node, with the addresses the invitation gives, so that
    /// the `Join` request can be sent to it. If the library is not registered, this makes an
    /// entry for it with no sink yet (requests about it are answered `UnknownLibrary` until
    /// [`register_library`](Self::register_library) gives it one; if the join fails,
    /// [`unregister_library`](Self::unregister_library) forgets it). If it is registered (a
    /// removed device joining again), this is [`add_member`](Self::add_member).
    pub async fn prepare_join(
        &self,
        library_id: Uuid,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
    ) -> Result<(), NetworkError> {
        self.call(|reply| Command::PrepareJoin { library_id, peer, addrs, reply }).await
    }

    /// The protocol version (1 or 2) of the last stream negotiated with `peer`, in either
    /// direction; `None` if none was. Kept for members after they disconnect; the next request
    /// to a peer that reconnected tries version 2 again whatever this says.
    pub async fn peer_version(&self, peer: PeerId) -> Result<Option<u32>, NetworkError> {
        self.call(|reply| Command::PeerVersion { peer, reply }).await
    }

    /// Sends `msg` to `peer` (dialing it if needed) and resolves to its response.
    ///
    /// Fails with [`NetworkError::Busy`] at once if the command channel is full, with
    /// [`NetworkError::Dial`] at once if `peer` is a member of no registered library, and with
    /// [`NetworkError::UnsupportedProtocol`] if `peer` speaks version 1 only and `msg` does not
    /// exist there (nothing is sent) or if it speaks neither version.
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

    /// The peers with at least one open connection (guests and removed devices included).
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
