//! Real swarms on 127.0.0.1: routing, the gate (members, guests, removed devices), refusals,
//! malformed frames, protocol versions, address changes, shutdown.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::{Actor, ActorContext, Context, Handler, Recipient};
use futures::{AsyncRead, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::identity::Keypair;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::{noise, tcp, yamux, Multiaddr, PeerId, StreamProtocol};
use lsync_protocol::{
    ErrorCode, SyncCodec, SyncMessage, SyncRole, DEFAULT_MAX_FRAME, PROTOCOL, PROTOCOL_V1,
};
use tokio::sync::{broadcast, mpsc, oneshot};
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
        last_hash: None,
    }
}

fn assert_error(response: &SyncMessage, expected: ErrorCode) {
    match response {
        SyncMessage::Error { code, .. } if *code == expected => {}
        other => panic!("expected Error({expected}), got {other:?}"),
    }
}

/// A library actor for tests: answers Heartbeat with Heartbeat, drops the reply of an
/// Acknowledge, answers anything else with Error(BadRequest); counts what it saw and logs who
/// sent what.
struct Echo {
    seen: Arc<AtomicUsize>,
    log: Arc<Mutex<Vec<(PeerId, &'static str)>>>,
}

impl Actor for Echo {
    type Context = Context<Self>;
}

impl Handler<InboundRequest> for Echo {
    type Result = ();

    fn handle(&mut self, request: InboundRequest, _: &mut Context<Self>) {
        self.seen.fetch_add(1, Ordering::SeqCst);
        self.log.lock().unwrap().push((request.peer, request.message.kind()));
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
    key: Keypair,
    seen: Arc<AtomicUsize>,
    log: Arc<Mutex<Vec<(PeerId, &'static str)>>>,
    sink: Recipient<InboundRequest>,
}

impl Node {
    fn member(&self) -> (PeerId, Vec<Multiaddr>) {
        (self.peer, self.addrs.clone())
    }

    fn seen(&self) -> usize {
        self.seen.load(Ordering::SeqCst)
    }

    /// Who sent what to the library actor, in order.
    fn log(&self) -> Vec<(PeerId, &'static str)> {
        self.log.lock().unwrap().clone()
    }
}

async fn node_with(config: NetworkConfig) -> Node {
    node_with_key(Keypair::generate_ed25519(), config).await
}

async fn node_with_key(key: Keypair, config: NetworkConfig) -> Node {
    let (handle, addrs) = NetworkHandle::start(key.clone(), config).await.expect("network starts");
    assert_eq!(addrs.len(), 1);
    assert!(!addrs[0].to_string().ends_with("/tcp/0"), "port resolved: {}", addrs[0]);
    let seen = Arc::new(AtomicUsize::new(0));
    let log = Arc::new(Mutex::new(Vec::new()));
    let sink = Echo { seen: seen.clone(), log: log.clone() }.start().recipient();
    Node { peer: handle.local_peer_id(), handle, addrs, key, seen, log, sink }
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
    let ack = SyncMessage::Acknowledge {
        last_term: 0,
        term: 0,
        library_id: library,
        up_to_sequence: 3,
        last_hash: None,
    };
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

    // An Error the library's actor answers (here: the echo refuses a TimeoutNow) is counted
    // by its code; the refusals the network made itself are not counted there.
    assert_eq!(stats.error_answers_of(ErrorCode::BadRequest), 0);
    let timeout_now = SyncMessage::TimeoutNow { library_id: library_a, term: 1 };
    let response = within(client.handle.request(server.peer, timeout_now)).await.unwrap();
    assert_error(&response, ErrorCode::BadRequest);
    assert_eq!(stats.error_answers_of(ErrorCode::BadRequest), 1);
    assert_eq!(stats.error_answers_of(ErrorCode::Unauthorized), 0);
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
    raw_request_on(&mut swarm, server, addrs, bytes).await
}

/// [`raw_request`] from `swarm` (a connection it holds is reused).
async fn raw_request_on(
    swarm: &mut libp2p::Swarm<request_response::Behaviour<RawCodec>>,
    server: PeerId,
    addrs: Vec<Multiaddr>,
    bytes: Vec<u8>,
) -> Result<SyncMessage, String> {
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

/// A peer whose yamux writes every data frame as large as the credit the server grants (as
/// js-libp2p's does), not in rust-yamux's 16 KiB pieces.
fn large_frame_swarm(keypair: Keypair) -> libp2p::Swarm<request_response::Behaviour<RawCodec>> {
    libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(tcp::Config::default(), noise::Config::new, || {
            super::muxer::Config::with_split_send_size(64 << 20)
        })
        .expect("transport")
        .with_behaviour(|_| {
            request_response::Behaviour::<RawCodec>::new(
                [(PROTOCOL, ProtocolSupport::Outbound)],
                request_response::Config::default().with_request_timeout(WAIT),
            )
        })
        .expect("behaviour")
        .build()
}

#[actix_rt::test]
async fn a_large_request_written_in_window_sized_yamux_frames_arrives() {
    let library = Uuid::new_v4();
    let server = node().await;
    let raw_key = Keypair::generate_ed25519();
    let raw_peer = raw_key.public().to_peer_id();
    server
        .handle
        .register_library(library, vec![(raw_peer, Vec::new())], server.sink.clone())
        .await
        .unwrap();
    // 12 MiB of data: the server grants windows that rust-yamux's auto-tuning grows on a fast
    // link; a window over 1 MiB would let this peer write a frame the server refuses
    // (`FrameTooLarge`), closing the connection (docs/protocol.md, "Framing")
    let request = SyncMessage::Propose {
        library_id: library,
        term: 1,
        proposal_id: Uuid::new_v4(),
        origin_device: Uuid::new_v4(),
        changes: vec![lsync_protocol::ProposedChange {
            model_type: "tag".into(),
            record_id: "big".into(),
            change_type: lsync_protocol::ChangeType::Insert,
            data: vec![7; 12 << 20],
            base_version: None,
            hlc: None,
        }],
    };
    let bytes = lsync_protocol::codec::encode_frame(&request, DEFAULT_MAX_FRAME).unwrap();
    // one connection: its windows grow from one request to the next
    let mut swarm = large_frame_swarm(raw_key);
    for n in 0..8 {
        let answer =
            raw_request_on(&mut swarm, server.peer, server.addrs.clone(), bytes.clone()).await;
        // the Echo library answers a Propose with Error(BadRequest, "no"): it arrived whole
        match answer {
            Ok(SyncMessage::Error { message, .. }) if message == "no" => {}
            Ok(other) => panic!("request {n}: unexpected answer {}", other.kind()),
            Err(e) => panic!("request {n} of 12 MiB did not arrive: {e}"),
        }
    }
    assert_eq!(server.seen(), 8);
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

// ---- the gate: guests and removed devices ----

fn join(library_id: Uuid) -> SyncMessage {
    SyncMessage::Join {
        library_id,
        secret: vec![7; 16],
        device_id: Uuid::new_v4(),
        name: "new device".into(),
        addresses: Vec::new(),
    }
}

fn announce(library_id: Uuid) -> SyncMessage {
    SyncMessage::AnnounceAddresses { library_id, hints: Vec::new() }
}

/// Polls an async `condition` until it holds (or panics after [`WAIT`]).
async fn wait_for<F: Future<Output = bool>>(what: &str, mut condition: impl FnMut() -> F) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !condition().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn is_connected(node: &Node, peer: PeerId) -> bool {
    node.handle.connected_peers().await.unwrap().contains(&peer)
}

/// A plain swarm that dials `server` and holds the connection (it opens no stream) until the
/// returned task is aborted.
fn raw_guest(server: PeerId, addrs: Vec<Multiaddr>) -> (PeerId, tokio::task::JoinHandle<()>) {
    let key = Keypair::generate_ed25519();
    let peer = key.public().to_peer_id();
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(tcp::Config::default(), noise::Config::new, yamux::Config::default)
        .expect("transport")
        .with_behaviour(|_| {
            request_response::Behaviour::<RawCodec>::new(
                [(PROTOCOL, ProtocolSupport::Outbound)],
                request_response::Config::default(),
            )
        })
        .expect("behaviour")
        .with_swarm_config(|c| c.with_idle_connection_timeout(WAIT))
        .build();
    let dial = libp2p::swarm::dial_opts::DialOpts::peer_id(server).addresses(addrs).build();
    swarm.dial(dial).expect("dial");
    let task = tokio::spawn(async move {
        loop {
            swarm.select_next_some().await;
        }
    });
    (peer, task)
}

#[actix_rt::test]
async fn an_unknown_peer_is_admitted_only_while_a_library_welcomes_guests() {
    let library = Uuid::new_v4();
    let server = node().await;
    let newcomer = node().await;
    server.handle.register_library(library, Vec::new(), server.sink.clone()).await.unwrap();
    // The newcomer has an invitation naming the server; it holds no library yet.
    newcomer.handle.prepare_join(library, server.peer, server.addrs.clone()).await.unwrap();

    let result = within(newcomer.handle.request(server.peer, join(library))).await;
    assert!(result.is_err(), "a stranger got through: {result:?}");
    assert_eq!(server.seen(), 0);
    wait_for("the refused connection is gone", || async {
        !is_connected(&newcomer, server.peer).await
    })
    .await;

    server.handle.welcome_guests(library, true).await.unwrap();
    let response = within(newcomer.handle.request(server.peer, join(library))).await.unwrap();
    // Echo's answer: the Join reached the library, which refused it (it knows no invitation).
    assert_error(&response, ErrorCode::BadRequest);
    assert_eq!(server.log(), vec![(newcomer.peer, "Join")]);
    let stats = server.handle.stats();
    assert_eq!(get(&stats.guest_connections), 1);
    assert_eq!(server.handle.peer_version(newcomer.peer).await.unwrap(), Some(2));

    // welcome_guests needs a registered library.
    assert!(matches!(
        server.handle.welcome_guests(Uuid::new_v4(), true).await,
        Err(NetworkError::Io(_))
    ));
}

#[actix_rt::test]
async fn a_guest_may_send_join_and_nothing_else() {
    let (open, closed) = (Uuid::new_v4(), Uuid::new_v4());
    let server = node().await;
    let guest = node().await;
    server.handle.register_library(open, Vec::new(), server.sink.clone()).await.unwrap();
    server.handle.register_library(closed, Vec::new(), server.sink.clone()).await.unwrap();
    server.handle.welcome_guests(open, true).await.unwrap();
    guest.handle.prepare_join(open, server.peer, server.addrs.clone()).await.unwrap();

    within(guest.handle.request(server.peer, join(open))).await.unwrap();
    assert_eq!(server.log(), vec![(guest.peer, "Join")]);

    let response = within(guest.handle.request(server.peer, heartbeat(open))).await.unwrap();
    assert_error(&response, ErrorCode::Unauthorized);
    // A Join to a library without an open invitation is refused as well.
    let response = within(guest.handle.request(server.peer, join(closed))).await.unwrap();
    assert_error(&response, ErrorCode::Unauthorized);
    assert_eq!(server.seen(), 1, "only the Join was routed");
    let stats = server.handle.stats();
    assert_eq!(get(&stats.rejected_guest), 2);
    assert_eq!(get(&stats.rejected_unauthorized), 0);

    // The server never dials a guest.
    let result = within(server.handle.request(guest.peer, heartbeat(open))).await;
    assert!(matches!(result, Err(NetworkError::Dial(_))), "{result:?}");

    // Once a member, the same connection carries its requests to the library.
    server.handle.add_member(open, guest.peer, guest.addrs.clone()).await.unwrap();
    let response = within(guest.handle.request(server.peer, heartbeat(open))).await.unwrap();
    assert_eq!(response, heartbeat(open));
}

#[actix_rt::test]
async fn guests_beyond_sixteen_are_refused() {
    let library = Uuid::new_v4();
    let server = node().await;
    server.handle.register_library(library, Vec::new(), server.sink.clone()).await.unwrap();
    server.handle.welcome_guests(library, true).await.unwrap();
    let stats = server.handle.stats();

    let mut guests = Vec::new();
    for n in 1..=16 {
        guests.push(raw_guest(server.peer, server.addrs.clone()));
        wait_until("the guest is admitted", || get(&stats.guest_connections) == n).await;
    }
    let (late, task) = raw_guest(server.peer, server.addrs.clone());
    guests.push((late, task));
    wait_until("the 17th guest is refused", || get(&stats.refused_guest_connections) == 1).await;

    let connected = within(server.handle.connected_peers()).await.unwrap();
    assert_eq!(connected.len(), 16, "{connected:?}");
    assert!(!connected.contains(&late));
    assert_eq!(get(&stats.guest_connections), 16);
    for (_, task) in guests {
        task.abort();
    }
}

#[actix_rt::test]
async fn a_guest_connection_is_closed_after_the_guest_timeout() {
    let library = Uuid::new_v4();
    let config =
        NetworkConfig { guest_timeout: Duration::from_millis(300), ..NetworkConfig::default() };
    let server = node_with(config).await;
    server.handle.register_library(library, Vec::new(), server.sink.clone()).await.unwrap();
    server.handle.welcome_guests(library, true).await.unwrap();
    let mut events = server.handle.subscribe();
    let stats = server.handle.stats();

    let (guest, task) = raw_guest(server.peer, server.addrs.clone());
    next_event(&mut events, NetworkEvent::PeerConnected(guest)).await;
    // The guest keeps its side open (idle timeout of 20 s): the server closes it.
    next_event(&mut events, NetworkEvent::PeerDisconnected(guest)).await;
    assert_eq!(get(&stats.guest_timeouts), 1);
    assert!(!within(server.handle.connected_peers()).await.unwrap().contains(&guest));
    task.abort();
}

#[actix_rt::test]
async fn a_revoked_member_is_told_it_was_removed_until_it_is_added_again() {
    let library = Uuid::new_v4();
    let (a, b) = pair(library).await;
    within(a.handle.request(b.peer, heartbeat(library))).await.unwrap();

    b.handle.revoke_member(library, a.peer).await.unwrap();
    // The connection stays (answers in flight still arrive); `a` still believes it is a
    // member, asks, and learns.
    let response = within(a.handle.request(b.peer, heartbeat(library))).await.unwrap();
    match &response {
        SyncMessage::Error { code: ErrorCode::Unauthorized, message, .. } => {
            assert_eq!(message, &format!("this device was removed from library {library}"));
        }
        other => panic!("expected Unauthorized, got {other:?}"),
    }
    let response = within(a.handle.request(b.peer, heartbeat(library))).await.unwrap();
    assert_error(&response, ErrorCode::Unauthorized);
    assert_eq!(b.seen(), 1, "nothing of the removed device was routed");
    let stats = b.handle.stats();
    assert_eq!(get(&stats.rejected_removed), 2);
    // `b` never dials it.
    let result = within(b.handle.request(a.peer, heartbeat(library))).await;
    assert!(matches!(result, Err(NetworkError::Dial(_))), "{result:?}");

    // Added again: served again.
    b.handle.add_member(library, a.peer, a.addrs.clone()).await.unwrap();
    let response = within(a.handle.request(b.peer, heartbeat(library))).await.unwrap();
    assert_eq!(response, heartbeat(library));
    assert_eq!(b.seen(), 2);
    assert_eq!(get(&stats.rejected_removed), 2);

    assert!(matches!(
        b.handle.revoke_member(Uuid::new_v4(), a.peer).await,
        Err(NetworkError::Io(_))
    ));
}

// ---- protocol versions ----

type OutgoingV1 =
    (PeerId, Vec<Multiaddr>, SyncMessage, oneshot::Sender<Result<SyncMessage, String>>);

/// A peer that speaks version 1 only (`/spacedrive/sync/1.0.0` with lsync's own codec): it
/// answers every request with a Heartbeat of the request's library and sends what it is told.
struct V1Peer {
    peer: PeerId,
    addrs: Vec<Multiaddr>,
    received: Arc<Mutex<Vec<&'static str>>>,
    outgoing: mpsc::UnboundedSender<OutgoingV1>,
    task: tokio::task::JoinHandle<()>,
}

impl V1Peer {
    async fn start() -> V1Peer {
        let mut swarm = libp2p::SwarmBuilder::with_existing_identity(Keypair::generate_ed25519())
            .with_tokio()
            .with_tcp(tcp::Config::default(), noise::Config::new, yamux::Config::default)
            .expect("transport")
            .with_behaviour(|_| {
                request_response::Behaviour::with_codec(
                    SyncCodec::default(),
                    [(PROTOCOL_V1, ProtocolSupport::Full)],
                    request_response::Config::default(),
                )
            })
            .expect("behaviour")
            .with_swarm_config(|c| c.with_idle_connection_timeout(WAIT))
            .build();
        swarm.listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap()).unwrap();
        let addr = within(async {
            loop {
                if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
                    return address;
                }
            }
        })
        .await;
        let peer = *swarm.local_peer_id();
        let received = Arc::new(Mutex::new(Vec::new()));
        let (outgoing, mut requests) = mpsc::unbounded_channel::<OutgoingV1>();
        let log = received.clone();
        let task = tokio::spawn(async move {
            let mut waiting = HashMap::new();
            loop {
                tokio::select! {
                    Some((to, addrs, message, reply)) = requests.recv() => {
                        let id = swarm.behaviour_mut().send_request_with_addresses(&to, message, addrs);
                        waiting.insert(id, reply);
                    }
                    event = swarm.select_next_some() => match event {
                        SwarmEvent::Behaviour(request_response::Event::Message { message, .. }) => {
                            match message {
                                request_response::Message::Request { request, channel, .. } => {
                                    log.lock().unwrap().push(request.kind());
                                    let answer = heartbeat(request.library_id());
                                    let _ = swarm.behaviour_mut().send_response(channel, answer);
                                }
                                request_response::Message::Response { request_id, response } => {
                                    if let Some(reply) = waiting.remove(&request_id) {
                                        let _ = reply.send(Ok(response));
                                    }
                                }
                            }
                        }
                        SwarmEvent::Behaviour(request_response::Event::OutboundFailure {
                            request_id, error, ..
                        }) => {
                            if let Some(reply) = waiting.remove(&request_id) {
                                let _ = reply.send(Err(error.to_string()));
                            }
                        }
                        _ => {}
                    },
                }
            }
        });
        V1Peer { peer, addrs: vec![addr], received, outgoing, task }
    }

    fn member(&self) -> (PeerId, Vec<Multiaddr>) {
        (self.peer, self.addrs.clone())
    }

    fn received(&self) -> Vec<&'static str> {
        self.received.lock().unwrap().clone()
    }

    async fn request(&self, to: &Node, message: SyncMessage) -> Result<SyncMessage, String> {
        let (reply, response) = oneshot::channel();
        self.outgoing.send((to.peer, to.addrs.clone(), message, reply)).unwrap();
        within(response).await.unwrap()
    }
}

impl Drop for V1Peer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[actix_rt::test]
async fn a_version_1_peer_is_spoken_to_on_version_1_after_it_refuses_version_2() {
    let library = Uuid::new_v4();
    let old = V1Peer::start().await;
    let client = node().await;
    client.handle.register_library(library, vec![old.member()], client.sink.clone()).await.unwrap();
    let stats = client.handle.stats();

    // Tried on version 2, refused unread, sent again on version 1.
    let response = within(client.handle.request(old.peer, heartbeat(library))).await.unwrap();
    assert_eq!(response, heartbeat(library));
    assert_eq!(old.received(), vec!["Heartbeat"]);
    assert_eq!(get(&stats.protocol_fallbacks), 1);
    assert_eq!(client.handle.peer_version(old.peer).await.unwrap(), Some(1));

    // The next one goes on version 1 at once.
    within(client.handle.request(old.peer, heartbeat(library))).await.unwrap();
    assert_eq!(old.received(), vec!["Heartbeat", "Heartbeat"]);
    assert_eq!(get(&stats.protocol_fallbacks), 1);

    // A message version 1 lacks is not sent at all.
    let result = within(client.handle.request(old.peer, announce(library))).await;
    assert_eq!(result, Err(NetworkError::UnsupportedProtocol));
    let result = within(client.handle.request(old.peer, join(library))).await;
    assert_eq!(result, Err(NetworkError::UnsupportedProtocol));
    assert_eq!(old.received().len(), 2);

    // Its own requests are answered.
    let response = old.request(&client, heartbeat(library)).await.unwrap();
    assert_eq!(response, heartbeat(library));
    assert_eq!(client.log(), vec![(old.peer, "Heartbeat")]);
}

#[actix_rt::test]
async fn a_version_2_message_to_a_version_1_peer_fails_without_being_sent() {
    let library = Uuid::new_v4();
    let old = V1Peer::start().await;
    let client = node().await;
    client.handle.register_library(library, vec![old.member()], client.sink.clone()).await.unwrap();
    let stats = client.handle.stats();

    // First contact with a message of version 2 only: refused, and not resent on version 1.
    let result = within(client.handle.request(old.peer, announce(library))).await;
    assert_eq!(result, Err(NetworkError::UnsupportedProtocol));
    assert_eq!(old.received(), Vec::<&str>::new());
    assert_eq!(get(&stats.protocol_fallbacks), 0);
    assert_eq!(client.handle.peer_version(old.peer).await.unwrap(), Some(1));

    // The peer is known as version 1 now: a heartbeat goes there directly.
    within(client.handle.request(old.peer, heartbeat(library))).await.unwrap();
    assert_eq!(old.received(), vec!["Heartbeat"]);
    assert_eq!(get(&stats.protocol_fallbacks), 0);
}

#[actix_rt::test]
async fn a_peer_that_sent_a_version_1_request_is_answered_and_spoken_to_on_version_1() {
    let library = Uuid::new_v4();
    let old = V1Peer::start().await;
    let server = node().await;
    server.handle.register_library(library, vec![old.member()], server.sink.clone()).await.unwrap();

    let response = old.request(&server, heartbeat(library)).await.unwrap();
    assert_eq!(response, heartbeat(library));
    assert_eq!(server.log(), vec![(old.peer, "Heartbeat")]);
    assert_eq!(server.handle.peer_version(old.peer).await.unwrap(), Some(1));

    // A message of version 2 only that arrives on version 1 is refused there.
    let response = old.request(&server, announce(library)).await.unwrap();
    assert_error(&response, ErrorCode::BadRequest);
    assert_eq!(server.seen(), 1);

    within(server.handle.request(old.peer, heartbeat(library))).await.unwrap();
    assert_eq!(old.received(), vec!["Heartbeat"]);
    assert_eq!(get(&server.handle.stats().protocol_fallbacks), 0);
}

#[actix_rt::test]
async fn version_2_peers_speak_version_2() {
    let library = Uuid::new_v4();
    let (a, b) = pair(library).await;
    within(a.handle.request(b.peer, announce(library))).await.unwrap();
    assert_eq!(b.log(), vec![(a.peer, "AnnounceAddresses")]);
    assert_eq!(a.handle.peer_version(b.peer).await.unwrap(), Some(2));
    assert_eq!(b.handle.peer_version(a.peer).await.unwrap(), Some(2));
    assert_eq!(get(&a.handle.stats().protocol_fallbacks), 0);
}

// ---- addresses ----

#[actix_rt::test]
async fn a_member_restarted_on_another_port_is_reached_at_its_new_addresses() {
    let library = Uuid::new_v4();
    let (a, b) = pair(library).await;
    within(a.handle.request(b.peer, heartbeat(library))).await.unwrap();
    let mut a_events = a.handle.subscribe();

    within(b.handle.shutdown()).await;
    next_event(&mut a_events, NetworkEvent::PeerDisconnected(b.peer)).await;
    let restarted = node_with_key(b.key.clone(), NetworkConfig::default()).await;
    assert_eq!(restarted.peer, b.peer);
    restarted
        .handle
        .register_library(library, vec![a.member()], restarted.sink.clone())
        .await
        .unwrap();

    if restarted.addrs != b.addrs {
        let result = within(a.handle.request(b.peer, heartbeat(library))).await;
        assert!(result.is_err(), "reached at its old address: {result:?}");
    }
    a.handle.set_member_addresses(library, b.peer, restarted.addrs.clone()).await.unwrap();
    let response = within(a.handle.request(b.peer, heartbeat(library))).await.unwrap();
    assert_eq!(response, heartbeat(library));
    assert_eq!(restarted.seen(), 1);

    // Only a member's addresses can be set.
    assert!(matches!(
        a.handle.set_member_addresses(library, PeerId::random(), Vec::new()).await,
        Err(NetworkError::Io(_))
    ));
}

/// The address of the interface this machine would use to reach `192.0.2.1` (TEST-NET: no
/// packet is sent), if it has one that is not loopback.
fn outbound_interface() -> Option<std::net::Ipv4Addr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:9").ok()?;
    match socket.local_addr().ok()?.ip() {
        std::net::IpAddr::V4(ip) if !ip.is_loopback() && !ip.is_unspecified() => Some(ip),
        _ => None,
    }
}

#[actix_rt::test]
async fn listening_on_every_interface_reports_every_interfaces_address() {
    let config = NetworkConfig {
        listen: vec!["/ip4/0.0.0.0/tcp/0".parse().unwrap()],
        ..NetworkConfig::default()
    };
    let (handle, addrs) =
        NetworkHandle::start(Keypair::generate_ed25519(), config).await.expect("network starts");
    let ips: Vec<std::net::Ipv4Addr> = addrs
        .iter()
        .filter_map(|a| {
            a.iter().find_map(|p| match p {
                libp2p::multiaddr::Protocol::Ip4(ip) => Some(ip),
                _ => None,
            })
        })
        .collect();
    assert!(ips.iter().any(|ip| ip.is_loopback()), "{addrs:?}");
    // On a machine with a network interface, its address is reported too (not only the first
    // address the listener happened to report).
    if let Some(ip) = outbound_interface() {
        assert!(ips.contains(&ip), "{ip} missing from {addrs:?}");
    }
    handle.shutdown().await;
}
