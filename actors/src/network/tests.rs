//! Real swarms on 127.0.0.1: routing, the allow list, refusals, malformed frames, shutdown.

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, ActorContext, Context, Handler, Recipient};
use futures::{AsyncRead, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::identity::Keypair;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::{noise, tcp, yamux, Multiaddr, PeerId, StreamProtocol};
use lsync_protocol::{ErrorCode, SyncMessage, SyncRole, DEFAULT_MAX_FRAME, PROTOCOL};
use tokio::sync::broadcast;
use uuid::Uuid;

use super::{InboundRequest, NetworkConfig, NetworkEvent, NetworkHandle};
use crate::transport::{NetworkError, Transport};

/// Upper bound of every wait in these tests; conditions are awaited, never slept for.
const WAIT: Duration = Duration::from_secs(20);

async fn within<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(WAIT, future).await.expect("timed out")
}

/// Polls `condition` until it holds (or panics after [`WAIT`]).
async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn next_event(events: &mut broadcast::Receiver<NetworkEvent>, wanted: NetworkEvent) {
    within(async {
        loop {
            match events.recv().await {
                Ok(event) if event == wanted => return,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => {
                    panic!("events closed before {wanted:?}")
                }
            }
        }
    })
    .await
}

fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

fn heartbeat(library_id: Uuid) -> SyncMessage {
    SyncMessage::Heartbeat {
        commit_sequence: 0,
        features: 0,
        library_id,
        term: 1,
        current_sequence: 0,
        last_term: 0,
        role: SyncRole::Follower,
    }
}

fn assert_error(response: &SyncMessage, expected: ErrorCode) {
    match response {
        SyncMessage::Error { code, .. } if *code == expected => {}
        other => panic!("expected Error({expected}), got {other:?}"),
    }
}

/// A library actor for tests: answers Heartbeat with Heartbeat, drops the reply of an
/// Acknowledge, answers anything else with Error(BadRequest); counts what it saw.
struct Echo {
    seen: Arc<AtomicUsize>,
}

impl Actor for Echo {
    type Context = Context<Self>;
}

impl Handler<InboundRequest> for Echo {
    type Result = ();

    fn handle(&mut self, request: InboundRequest, _: &mut Context<Self>) {
        self.seen.fetch_add(1, Ordering::SeqCst);
        match request.message {
            SyncMessage::Heartbeat { library_id, .. } => {
                let _ = request.reply.send(heartbeat(library_id));
            }
            SyncMessage::Acknowledge { .. } => drop(request.reply),
            other => {
                let reply = SyncMessage::error(other.library_id(), ErrorCode::BadRequest, "no");
                let _ = request.reply.send(reply);
            }
        }
    }
}

/// An actor that stops as soon as it starts.
struct Stopped;

impl Actor for Stopped {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

impl Handler<InboundRequest> for Stopped {
    type Result = ();

    fn handle(&mut self, _: InboundRequest, _: &mut Context<Self>) {}
}

struct Node {
    handle: NetworkHandle,
    addrs: Vec<Multiaddr>,
    peer: PeerId,
    seen: Arc<AtomicUsize>,
    sink: Recipient<InboundRequest>,
}

impl Node {
    fn member(&self) -> (PeerId, Vec<Multiaddr>) {
        (self.peer, self.addrs.clone())
    }

    fn seen(&self) -> usize {
        self.seen.load(Ordering::SeqCst)
    }
}

async fn node_with(config: NetworkConfig) -> Node {
    let (handle, addrs) =
        NetworkHandle::start(Keypair::generate_ed25519(), config).await.expect("network starts");
    assert_eq!(addrs.len(), 1);
    assert!(!addrs[0].to_string().ends_with("/tcp/0"), "port resolved: {}", addrs[0]);
    let seen = Arc::new(AtomicUsize::new(0));
    let sink = Echo { seen: seen.clone() }.start().recipient();
    Node { peer: handle.local_peer_id(), handle, addrs, seen, sink }
}

async fn node() -> Node {
    node_with(NetworkConfig::default()).await
}

/// Two nodes holding `library` with each other as member.
async fn pair(library: Uuid) -> (Node, Node) {
    let a = node().await;
    let b = node().await;
    a.handle.register_library(library, vec![b.member()], a.sink.clone()).await.unwrap();
    b.handle.register_library(library, vec![a.member()], b.sink.clone()).await.unwrap();
    (a, b)
}

#[actix_rt::test]
async fn request_round_trips_between_members() {
    let library = Uuid::new_v4();
    let (a, b) = pair(library).await;
    let mut a_events = a.handle.subscribe();

    let response = within(a.handle.request(b.peer, heartbeat(library))).await.unwrap();
    assert_eq!(response, heartbeat(library));
    assert_eq!(b.seen(), 1);
    next_event(&mut a_events, NetworkEvent::PeerConnected(b.peer)).await;
    assert_eq!(within(a.handle.connected_peers()).await.unwrap(), vec![b.peer]);

    // The other direction, through the `Transport` seam.
    let transport: Arc<dyn Transport> = Arc::new(b.handle.clone());
    let response = within(transport.request(a.peer, heartbeat(library))).await.unwrap();
    assert_eq!(response, heartbeat(library));
    assert_eq!(a.seen(), 1);

    // An actor dropping its reply sender makes the network answer Internal.
    let ack =
        SyncMessage::Acknowledge { last_term: 0, term: 0, library_id: library, up_to_sequence: 3 };
    let response = within(a.handle.request(b.peer, ack)).await.unwrap();
    assert_error(&response, ErrorCode::Internal);

    let (a_stats, b_stats) = (a.handle.stats(), b.handle.stats());
    assert_eq!(get(&a_stats.outbound_requests), 2);
    assert_eq!(get(&a_stats.inbound_requests), 1);
    assert_eq!(get(&b_stats.inbound_requests), 2);
    assert_eq!(get(&b_stats.outbound_requests), 1);
    assert_eq!(get(&a_stats.outbound_failures), 0);
    assert!(get(&a_stats.connections_established) >= 1);
}

#[actix_rt::test]
async fn a_request_leaves_before_its_future_is_polled() {
    let library = Uuid::new_v4();
    let (a, b) = pair(library).await;
    let transport: Arc<dyn Transport> = Arc::new(a.handle.clone());
    // Created, not awaited: the follower's fetch pipelining holds the next fetch like this
    // while it applies the previous response.
    let pending = transport.request(b.peer, heartbeat(library));
    wait_until("b received the request", || b.seen() == 1).await;
    assert_eq!(within(pending).await.unwrap(), heartbeat(library));
}

#[actix_rt::test]
async fn non_member_cannot_connect() {
    let library = Uuid::new_v4();
    let server = node().await;
    let member = node().await;
    let outsider = node().await;
    server
        .handle
        .register_library(library, vec![member.member()], server.sink.clone())
        .await
        .unwrap();
    // The outsider believes the server is a member of its library; the server disagrees.
    outsider
        .handle
        .register_library(library, vec![server.member()], outsider.sink.clone())
        .await
        .unwrap();

    let result = within(outsider.handle.request(server.peer, heartbeat(library))).await;
    assert!(result.is_err(), "an outsider got a response: {result:?}");
    assert_eq!(server.seen(), 0);
    assert_eq!(get(&server.handle.stats().inbound_requests), 0);
    assert!(!within(server.handle.connected_peers()).await.unwrap().contains(&outsider.peer));

    // Nor can the server reach a peer that is a member of none of its libraries.
    let result = within(server.handle.request(outsider.peer, heartbeat(library))).await;
    assert!(matches!(result, Err(NetworkError::Dial(_))), "{result:?}");
}

#[actix_rt::test]
async fn refusals_are_answered_by_the_network() {
    let (library_a, library_b) = (Uuid::new_v4(), Uuid::new_v4());
    let server = node().await;
    let client = node().await;
    let stranger = PeerId::random();
    server
        .handle
        .register_library(library_a, vec![client.member()], server.sink.clone())
        .await
        .unwrap();
    server
        .handle
        .register_library(library_b, vec![(stranger, Vec::new())], server.sink.clone())
        .await
        .unwrap();
    client
        .handle
        .register_library(library_a, vec![server.member()], client.sink.clone())
        .await
        .unwrap();

    let response = within(client.handle.request(server.peer, heartbeat(library_b))).await.unwrap();
    assert_error(&response, ErrorCode::Unauthorized);

    let response = within(client.handle.request(server.peer, heartbeat(Uuid::new_v4()))).await;
    assert_error(&response.unwrap(), ErrorCode::UnknownLibrary);

    let entries = SyncMessage::EntriesResponse {
        commit_sequence: 0,
        library_id: library_a,
        term: 1,
        entries: Vec::new(),
        has_more: false,
        leader_last_sequence: 0,
    };
    let response = within(client.handle.request(server.peer, entries)).await.unwrap();
    assert_error(&response, ErrorCode::BadRequest);

    assert_eq!(server.seen(), 0);
    let stats = server.handle.stats();
    assert_eq!(get(&stats.rejected_unauthorized), 1);
    assert_eq!(get(&stats.rejected_unknown_library), 1);
    assert_eq!(get(&stats.rejected_bad_request), 1);
    assert_eq!(get(&stats.inbound_requests), 3);

    // A library whose actor has stopped: the network answers Internal "busy".
    let library_c = Uuid::new_v4();
    let dead = Stopped.start().recipient::<InboundRequest>();
    wait_until("the actor stops", || !dead.connected()).await;
    server.handle.register_library(library_c, vec![client.member()], dead).await.unwrap();
    let response = within(client.handle.request(server.peer, heartbeat(library_c))).await.unwrap();
    assert_error(&response, ErrorCode::Internal);
    assert_eq!(get(&stats.rejected_busy), 1);

    // A member of the right library is still served.
    let response = within(client.handle.request(server.peer, heartbeat(library_a))).await.unwrap();
    assert_eq!(response, heartbeat(library_a));
}

/// A client codec that writes its request bytes verbatim and reads a normal response.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl request_response::Codec for RawCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = SyncMessage;

    async fn read_request<T>(&mut self, _: &StreamProtocol, _: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        Err(io::Error::other("the raw client serves nothing"))
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<SyncMessage>
    where
        T: AsyncRead + Unpin + Send,
    {
        lsync_protocol::codec::read_frame(io, DEFAULT_MAX_FRAME).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        bytes: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&bytes).await?;
        io.flush().await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        _: &mut T,
        _: SyncMessage,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        Err(io::Error::other("the raw client serves nothing"))
    }
}

/// A plain libp2p swarm speaking `protocol` with [`RawCodec`], outside lsync's network code.
fn raw_swarm(
    keypair: Keypair,
    protocol: StreamProtocol,
    support: ProtocolSupport,
) -> libp2p::Swarm<request_response::Behaviour<RawCodec>> {
    libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(tcp::Config::default(), noise::Config::new, yamux::Config::default)
        .expect("transport")
        .with_behaviour(|_| {
            request_response::Behaviour::<RawCodec>::new(
                [(protocol, support)],
                request_response::Config::default(),
            )
        })
        .expect("behaviour")
        .build()
}

/// Sends `bytes` as a request on a fresh connection; the response or why there is none.
async fn raw_request(
    keypair: Keypair,
    server: PeerId,
    addrs: Vec<Multiaddr>,
    bytes: Vec<u8>,
) -> Result<SyncMessage, String> {
    let mut swarm = raw_swarm(keypair, PROTOCOL, ProtocolSupport::Outbound);
    let id = swarm.behaviour_mut().send_request_with_addresses(&server, bytes, addrs);
    within(async {
        loop {
            match swarm.select_next_some().await {
                SwarmEvent::Behaviour(request_response::Event::Message {
                    message: request_response::Message::Response { request_id, response },
                    ..
                }) if request_id == id => return Ok(response),
                SwarmEvent::Behaviour(request_response::Event::OutboundFailure {
                    request_id,
                    error,
                    ..
                }) if request_id == id => return Err(error.to_string()),
                _ => {}
            }
        }
    })
    .await
}

#[actix_rt::test]
async fn malformed_and_oversized_frames_are_refused_and_the_server_keeps_serving() {
    let library = Uuid::new_v4();
    let server = node_with(NetworkConfig { max_frame: 1024, ..NetworkConfig::default() }).await;
    let client = node().await;
    let raw_key = Keypair::generate_ed25519();
    let raw_peer = raw_key.public().to_peer_id();
    server
        .handle
        .register_library(
            library,
            vec![client.member(), (raw_peer, Vec::new())],
            server.sink.clone(),
        )
        .await
        .unwrap();
    client
        .handle
        .register_library(library, vec![server.member()], client.sink.clone())
        .await
        .unwrap();
    let stats = server.handle.stats();

    // A well-framed body that is not MessagePack of any message (0xc1 is never used).
    let garbage = vec![0, 0, 0, 5, 0xc1, 0xc1, 0xc1, 0xc1, 0xc1];
    let result = raw_request(raw_key.clone(), server.peer, server.addrs.clone(), garbage).await;
    assert_error(&result.expect("a malformed request is answered"), ErrorCode::BadRequest);
    assert_eq!(get(&stats.rejected_malformed), 1);

    // A length prefix over the server's limit of 1 KiB (the client's own limit is 16 MiB).
    let mut oversized = 2048u32.to_be_bytes().to_vec();
    oversized.extend(std::iter::repeat_n(0x90, 2048));
    let result = raw_request(raw_key, server.peer, server.addrs.clone(), oversized).await;
    if let Ok(response) = &result {
        assert_error(response, ErrorCode::BadRequest);
    }
    wait_until("the oversized frame is counted", || get(&stats.rejected_malformed) == 2).await;
    assert_eq!(server.seen(), 0);

    // Everyone else is still served.
    let response = within(client.handle.request(server.peer, heartbeat(library))).await.unwrap();
    assert_eq!(response, heartbeat(library));
    assert_eq!(server.seen(), 1);
}

#[actix_rt::test]
async fn removed_member_is_disconnected_and_refused() {
    let library = Uuid::new_v4();
    let (a, b) = pair(library).await;
    within(a.handle.request(b.peer, heartbeat(library))).await.unwrap();
    let mut a_events = a.handle.subscribe();

    b.handle.remove_member(library, a.peer).await.unwrap();
    next_event(&mut a_events, NetworkEvent::PeerDisconnected(b.peer)).await;
    let result = within(b.handle.request(a.peer, heartbeat(library))).await;
    assert!(matches!(result, Err(NetworkError::Dial(_))), "{result:?}");
    let result = within(a.handle.request(b.peer, heartbeat(library))).await;
    assert!(result.is_err(), "a removed member got a response: {result:?}");
    assert_eq!(b.seen(), 1);

    // Adding it back lets it in again.
    b.handle.add_member(library, a.peer, a.addrs.clone()).await.unwrap();
    let response = within(a.handle.request(b.peer, heartbeat(library))).await.unwrap();
    assert_eq!(response, heartbeat(library));
    assert!(matches!(
        b.handle.add_member(Uuid::new_v4(), a.peer, Vec::new()).await,
        Err(NetworkError::Io(_))
    ));
}

#[actix_rt::test]
async fn shutdown_closes_the_network() {
    let library = Uuid::new_v4();
    let (a, b) = pair(library).await;
    within(a.handle.request(b.peer, heartbeat(library))).await.unwrap();
    let mut a_events = a.handle.subscribe();
    let mut b_events = b.handle.subscribe();

    within(a.handle.shutdown()).await;
    assert_eq!(a.handle.request(b.peer, heartbeat(library)).await, Err(NetworkError::Closed));
    assert_eq!(a.handle.connected_peers().await, Err(NetworkError::Closed));
    assert_eq!(
        a.handle.register_library(library, Vec::new(), a.sink.clone()).await,
        Err(NetworkError::Closed)
    );
    within(a.handle.shutdown()).await;
    assert!(matches!(a_events.recv().await, Err(broadcast::error::RecvError::Closed)));
    assert!(matches!(a.handle.subscribe().recv().await, Err(broadcast::error::RecvError::Closed)));

    next_event(&mut b_events, NetworkEvent::PeerDisconnected(a.peer)).await;
    let result = within(b.handle.request(a.peer, heartbeat(library))).await;
    assert!(result.is_err(), "a stopped node answered: {result:?}");
}

#[actix_rt::test]
async fn a_peer_without_the_protocol_is_reported_as_such() {
    // A member that speaks another protocol (say, a future version of lsync's): it refuses
    // version 2, then version 1.
    let mut other = raw_swarm(
        Keypair::generate_ed25519(),
        StreamProtocol::new("/spacedrive/sync/3.0.0"),
        ProtocolSupport::Full,
    );
    other.listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap()).unwrap();
    let addr = within(async {
        loop {
            if let SwarmEvent::NewListenAddr { address, .. } = other.select_next_some().await {
                return address;
            }
        }
    })
    .await;
    let other_peer = *other.local_peer_id();
    let driver = tokio::spawn(async move {
        loop {
            other.select_next_some().await;
        }
    });

    let library = Uuid::new_v4();
    let client = node().await;
    client
        .handle
        .register_library(library, vec![(other_peer, vec![addr])], client.sink.clone())
        .await
        .unwrap();
    let result = within(client.handle.request(other_peer, heartbeat(library))).await;
    driver.abort();
    assert!(matches!(result, Err(NetworkError::UnsupportedProtocol)), "{result:?}");
}
