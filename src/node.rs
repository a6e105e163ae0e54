//! [`Node`]: a running lsync device inside the host's actix System.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use actix::{Actor, Addr};
use libp2p::{Multiaddr, PeerId};
use lsync_actors::network::{NetworkConfig, NetworkHandle};
use lsync_actors::service::{ChangeMembershipRequest, CreateInvitation};
use lsync_actors::{
    AddMember, GetStatus, LibraryContext, LibraryStatus, Metrics, Shutdown, SyncConfig, SyncEvent,
    SyncService,
};
use lsync_protocol::{
    Configuration, Member, MemberRole, MembershipChange, RolePreference, SyncLogEntry, SyncMessage,
    SyncRole, ENTRY_OVERHEAD, FEATURE_VERSION,
};
use lsync_storage::{
    BulkOperation, Change, Database, Device, Membership, ModelRegistry, StorageError,
    StorageOptions, SyncState, TransactionManager,
};
use tokio::sync::broadcast;
use tracing::{info, warn};

use crate::invite::InviteToken;
use uuid::Uuid;

use crate::identity::Identity;

/// Capacity of the node's event channel; a subscriber that falls further behind loses the
/// oldest events (and is told so by `RecvError::Lagged`).
const EVENT_CAPACITY: usize = 4096;

/// Everything that can go wrong with a node call.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("network error: {0}")]
    Network(#[from] lsync_actors::NetworkError),
    #[error("library {0} is not open on this node")]
    UnknownLibrary(Uuid),
    #[error("library {0} already exists on this node")]
    LibraryExists(Uuid),
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The node's configuration cannot work (see [`NodeBuilder::start`]); nothing started.
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("sync service of library {0} is not running")]
    ServiceStopped(Uuid),
    /// The library's sync service stopped while a change was being submitted to it, or this
    /// device committed it as leader but could not confirm in time that it still leads (its
    /// leader lease, docs/architecture.md): the change may be committed (then once) or not.
    #[error(
        "the outcome of the write to library {0} is unknown (its sync service stopped, or this \
         leader could not confirm in time that it still leads): it may or may not be committed \
         (if it is, then once); look for it in the log before writing it again"
    )]
    OutcomeUnknown(Uuid),
    /// A change (or the changes of one write) larger than [`Node::max_change_bytes`]: nothing
    /// was written.
    #[error(
        "the change is {bytes} bytes, over the largest a change may be, {limit} bytes (half of \
         network.max_frame_bytes = {max_frame_bytes}, so that it fits in one frame with room \
         for the envelope; see docs/operations.md): nothing was written; split it or store the \
         large part outside the library"
    )]
    ChangeTooLarge { bytes: usize, limit: usize, max_frame_bytes: usize },
    #[error("library {0} is handing leadership over; retry once the new leader is known")]
    WritesPaused(Uuid),
    #[error("leadership transfer refused: {0}")]
    Transfer(String),
    /// A membership change was refused (nothing changed) or could not be asked for.
    #[error("membership change refused: {0}")]
    Membership(String),
    /// An invitation could not be made or used.
    #[error("invitation: {0}")]
    Invitation(String),
}

/// Configuration of a node.
#[derive(Clone)]
pub struct NodeConfig {
    pub sync: SyncConfig,
    pub network: NetworkConfig,
    pub storage: StorageOptions,
    /// The model types of every library on this node.
    pub registry: ModelRegistry,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            sync: SyncConfig::default(),
            network: NetworkConfig::default(),
            storage: StorageOptions::default(),
            registry: ModelRegistry::with_builtin(),
        }
    }
}

/// What became of a [`Node::write`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The leader sequenced the changes as entries `first_sequence..=last_sequence`, and they
    /// are applied on this device (read-your-writes).
    Committed { first_sequence: u64, last_sequence: u64 },
    /// **Pending**: no leader took the changes yet. They wait in this device's durable outbox
    /// and will be committed, once, by whichever device leads next — and this device's tables
    /// show them already, over the committed rows, until they are committed (or refused for
    /// good: then they disappear again, with a `ProposalFailed` event). See
    /// docs/architecture.md, "Local-first writes". (Named `Queued`, not `Pending`: `Pending`
    /// is a [`Durability::Majority`] write the leader sequenced but a majority did not hold
    /// in time.)
    Queued { proposal_id: Uuid },
    /// A [`Durability::Majority`] write the leader sequenced (at `first_sequence..=
    /// last_sequence` when it answered) that a majority of the voters did not hold within the
    /// request timeout (`network.request_timeout`): it is in the leader's log and commits once
    /// a majority fetches it — or, if that leader is deposed first, is proposed again and
    /// commits once elsewhere, at other sequences. Never dropped; `lsync status --proposal`
    /// (or the log) tells where it ended.
    Pending { proposal_id: Uuid, first_sequence: u64, last_sequence: u64 },
}

/// How durable a write is when [`Node::write_with`] answers `Committed` (docs/operations.md,
/// "Durability").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Committed on the leader's disk: it survives a crash of any device; its sequence may
    /// still change if that leader is deposed before a majority fetched it (the change is then
    /// proposed again, never lost).
    #[default]
    Local,
    /// Held by a majority of the voters (at or below the commit sequence): its sequence is
    /// final, and it survives the loss of any minority of the devices. Answered
    /// [`WriteOutcome::Pending`] when no majority holds it within the request timeout.
    Majority,
}

impl Durability {
    /// Parses `local` or `majority`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "local" => Some(Self::Local),
            "majority" => Some(Self::Majority),
            _ => None,
        }
    }
}

/// What became of a membership change ([`Node::add_device`], [`Node::remove_device`],
/// [`Node::set_device_preference`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MembershipOutcome {
    /// The configuration entry that carries the change.
    pub config_sequence: u64,
    /// Whether it is committed: held by the majorities the commit rule needs. Until then the
    /// change is in use but *pending*: status shows it, and it may still be undone if the
    /// leader is deposed before a majority holds it (ask again then).
    pub committed: bool,
}

/// An invitation made by [`Node::invite`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invitation {
    /// The one-line token to give the new device ([`Node::join_with_invite`]).
    pub token: String,
    /// When it stops being accepted (ms since the Unix epoch).
    pub expires_at_ms: i64,
    /// The new device stays a learner for good.
    pub learner: bool,
}

/// What became of [`Node::join_with_invite`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinOutcome {
    /// The library joined.
    pub library_id: Uuid,
    /// The configuration entry that added this device (as a learner).
    pub config_sequence: u64,
    /// Whether that entry is committed (see [`MembershipOutcome::committed`]).
    pub committed: bool,
    /// The leader to follow, as the inviting member knew it.
    pub leader: Option<Uuid>,
}

/// The largest a change may be, in the bytes [`change_bytes`] counts, for a frame limit of
/// `max_frame_bytes` (`network.max_frame_bytes`): half of it. One write's changes travel as one
/// `Propose` frame from a follower, and each change becomes an entry that a response carries
/// alone if need be; half the frame leaves room for the envelope and for a response's other
/// entries (docs/operations.md, "The control API"; docs/protocol.md §8 for the frame limit).
pub fn max_change_bytes(max_frame_bytes: usize) -> usize {
    max_frame_bytes / 2
}

/// What changes count against [`max_change_bytes`]: per change its data, model type and record
/// id plus `lsync_protocol::ENTRY_OVERHEAD` for the fixed fields and their encoding — what a
/// log entry counts against a response's byte budget (`lsync_protocol::entry_bytes`).
pub fn change_bytes<'a>(changes: impl IntoIterator<Item = &'a Change>) -> usize {
    changes
        .into_iter()
        .map(|c| c.data.len() + c.model_type.len() + c.record_id.len() + ENTRY_OVERHEAD)
        .fold(0usize, usize::saturating_add)
}

/// How long a membership change waits to be committed before its answer says pending.
const MEMBERSHIP_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// How long [`Node::write`] on a follower waits for its committed changes to be applied
/// locally before it answers anyway.
const READ_YOUR_WRITES_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A member device of a library, as another device must know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    pub device_id: Uuid,
    pub peer_id: PeerId,
    pub addresses: Vec<Multiaddr>,
    pub name: String,
}

impl DeviceInfo {
    /// This device as a member of a configuration.
    pub fn to_member(&self, role: MemberRole, preference: RolePreference) -> Member {
        Member {
            device_id: self.device_id,
            peer_id: self.peer_id.to_string(),
            addresses: self.addresses.iter().map(|a| a.to_string()).collect(),
            name: self.name.clone(),
            role,
            preference,
        }
    }

    fn to_device(&self) -> Device {
        Device {
            device_id: self.device_id,
            peer_id: self.peer_id.to_string(),
            addresses: self.addresses.iter().map(|a| a.to_string()).collect(),
            name: self.name.clone(),
        }
    }
}

/// Builds a [`Node`].
pub struct NodeBuilder {
    data_dir: PathBuf,
    config: NodeConfig,
    name: String,
    announce: Vec<Multiaddr>,
}

impl NodeBuilder {
    /// Listen on these addresses (default: 127.0.0.1, a free TCP port).
    pub fn listen(mut self, addrs: Vec<Multiaddr>) -> Self {
        self.config.network.listen = addrs;
        self
    }

    /// The addresses other devices are told to dial this one at, instead of the listen
    /// addresses: in invitation tokens, in this device's membership entry and in its signed
    /// address hints (a NAT's public address, a proxy). Empty (the default): the listen
    /// addresses, ports resolved.
    pub fn announce(mut self, addrs: Vec<Multiaddr>) -> Self {
        self.announce = addrs;
        self
    }

    /// Replaces the whole configuration.
    pub fn config(mut self, config: NodeConfig) -> Self {
        self.config = config;
        self
    }

    /// Replaces the model types of every library on this node, with their conflict policies
    /// ([`ModelRegistry::set_policy`]; default [`ModelRegistry::with_builtin`], every model
    /// `last_writer_wins`). Every device of a library must register the same models and
    /// policies: whichever device leads decides conflicts (docs/architecture.md, "Conflicts").
    pub fn registry(mut self, registry: ModelRegistry) -> Self {
        self.config.registry = registry;
        self
    }

    /// Replaces the sync timers and limits.
    pub fn sync_config(mut self, sync: SyncConfig) -> Self {
        self.config.sync = sync;
        self
    }

    /// The device's human-readable name (default: the data directory's name).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Starts the node: loads or creates the identity, starts the network, opens every library
    /// found in `<data_dir>/libraries/`. Must run inside an actix System.
    ///
    /// The sync limits follow the network's frame limit: `sync.max_frame` is set to
    /// `network.max_frame`, and a configuration under which a response could exceed a frame
    /// ([`SyncConfig::check_frame_limits`]: a frame limit under 4 KiB, or `max_response_bytes`
    /// over the frame minus its envelope) is refused with [`NodeError::Config`] before anything
    /// starts ([`SyncConfig::for_frame`] derives a valid one).
    pub async fn start(mut self) -> Result<Node, NodeError> {
        self.config.sync.max_frame = self.config.network.max_frame;
        if let Some(reason) = self.config.sync.check_frame_limits() {
            return Err(NodeError::Config(reason));
        }
        let identity = Identity::load_or_create(&self.data_dir)?;
        let (network, listen_addrs) =
            NetworkHandle::start(identity.keypair.clone(), self.config.network.clone()).await?;
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        let announce_addrs =
            if self.announce.is_empty() { listen_addrs.clone() } else { self.announce };
        let node = Node {
            inner: Arc::new(Inner {
                identity,
                name: self.name,
                data_dir: self.data_dir,
                config: self.config,
                network,
                listen_addrs,
                announce_addrs,
                events,
                metrics: Arc::new(Metrics::default()),
                libraries: Mutex::new(HashMap::new()),
            }),
        };
        let dir = node.libraries_dir();
        std::fs::create_dir_all(&dir)?;
        let mut ids = Vec::new();
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("db") {
                continue;
            }
            if let Some(id) =
                path.file_stem().and_then(|s| s.to_str()).and_then(|s| s.parse::<Uuid>().ok())
            {
                ids.push(id);
            }
        }
        for id in ids {
            node.open_library(id).await?;
        }
        info!(device_id = %node.device_id(), peer_id = %node.peer_id(), addrs = ?node.listen_addrs(), "node started");
        Ok(node)
    }
}

/// How a new library's membership starts.
enum Bootstrap {
    /// This device creates it: the first log entry is this configuration.
    Create(Configuration),
    /// This device joins: the configuration it was given (at this sequence of the leader's
    /// log) is in effect until its log holds a newer one.
    Given(Configuration, u64),
}

struct Library {
    db: Database,
    tm: TransactionManager,
    service: Addr<SyncService>,
    /// Set while a leadership transfer holds new writes.
    writes_paused: Arc<std::sync::atomic::AtomicBool>,
    /// Whether this device is a member of the library's configuration in effect.
    is_member: Arc<std::sync::atomic::AtomicBool>,
    /// What its actors publish of the commit sequence, the batches applied and the role
    /// changes: what [`Node::write_with`] waits on.
    progress: lsync_actors::messages::ProgressWatch,
}

struct Inner {
    identity: Identity,
    name: String,
    data_dir: PathBuf,
    config: NodeConfig,
    network: NetworkHandle,
    listen_addrs: Vec<Multiaddr>,
    /// What other devices are told to dial: the announced addresses, else `listen_addrs`.
    announce_addrs: Vec<Multiaddr>,
    events: broadcast::Sender<SyncEvent>,
    metrics: Arc<Metrics>,
    libraries: Mutex<HashMap<Uuid, Arc<Library>>>,
}

/// A running lsync device: a cheap, cloneable handle.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

impl Node {
    /// A builder for a node keeping its state in `data_dir`.
    pub fn builder(data_dir: impl AsRef<Path>) -> NodeBuilder {
        let data_dir = data_dir.as_ref().to_path_buf();
        let name =
            data_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        NodeBuilder { data_dir, config: NodeConfig::default(), name, announce: Vec::new() }
    }

    /// The largest a change — or the changes of one [`Node::write`] together — may be, in the
    /// bytes [`change_bytes`] counts: [`max_change_bytes`] of this node's frame limit. A larger
    /// one is refused with [`NodeError::ChangeTooLarge`] before anything is written.
    pub fn max_change_bytes(&self) -> usize {
        max_change_bytes(self.inner.config.network.max_frame)
    }

    /// Refuses `changes` if together they are over [`Node::max_change_bytes`].
    fn check_size<'a>(
        &self,
        changes: impl IntoIterator<Item = &'a Change>,
    ) -> Result<(), NodeError> {
        let bytes = change_bytes(changes);
        let limit = self.max_change_bytes();
        if bytes > limit {
            return Err(NodeError::ChangeTooLarge {
                bytes,
                limit,
                max_frame_bytes: self.inner.config.network.max_frame,
            });
        }
        Ok(())
    }

    /// This device's uuid.
    pub fn device_id(&self) -> Uuid {
        self.inner.identity.device_id
    }

    /// This device's libp2p peer id.
    pub fn peer_id(&self) -> PeerId {
        self.inner.identity.peer_id()
    }

    /// The addresses the node listens on (ports resolved).
    pub fn listen_addrs(&self) -> Vec<Multiaddr> {
        self.inner.listen_addrs.clone()
    }

    /// The addresses other devices are told to dial this one at (invitation tokens, its
    /// membership entry, its signed address hints): those given to
    /// [`NodeBuilder::announce`], else the listen addresses.
    pub fn announce_addrs(&self) -> Vec<Multiaddr> {
        self.inner.announce_addrs.clone()
    }

    /// How other devices reach this one.
    pub fn device_info(&self) -> DeviceInfo {
        DeviceInfo {
            device_id: self.device_id(),
            peer_id: self.peer_id(),
            addresses: self.announce_addrs(),
            name: self.inner.name.clone(),
        }
    }

    /// The node's network handle (statistics, connected peers).
    pub fn network(&self) -> &NetworkHandle {
        &self.inner.network
    }

    /// The node's counters and latency histograms.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// Events of every library on this node.
    pub fn subscribe(&self) -> broadcast::Receiver<SyncEvent> {
        self.inner.events.subscribe()
    }

    /// The database file of a library.
    pub fn library_path(&self, library_id: Uuid) -> PathBuf {
        self.libraries_dir().join(format!("{library_id}.db"))
    }

    /// The database file of library `library_id` in the data directory `data_dir` (where
    /// [`Node::library_path`] puts it), whether or not a node runs there.
    pub fn library_file(data_dir: &Path, library_id: Uuid) -> PathBuf {
        data_dir.join("libraries").join(format!("{library_id}.db"))
    }

    /// Checks library `library_id` of the data directory `data_dir`, reading its database only,
    /// whether or not a daemon runs there (docs/operations.md, "Verifying a library"): the
    /// sequences are gapless, the hash chain holds end to end, and the model tables of
    /// `registry` equal the replay of the log (tables that bulk jobs write locally are excluded
    /// and named). Blocking: run it off an async runtime's threads (or use
    /// [`Node::verify_library`]).
    ///
    /// # Errors
    /// The database is missing or cannot be read; problems in its data are in the report.
    pub fn verify(
        data_dir: &Path,
        library_id: Uuid,
        registry: &ModelRegistry,
    ) -> Result<lsync_storage::VerifyReport, NodeError> {
        Ok(lsync_storage::verify(&Self::library_file(data_dir, library_id), registry)?)
    }

    /// [`Node::verify`] of one of this node's libraries, with its registry, on a blocking
    /// thread.
    pub async fn verify_library(
        &self,
        library_id: Uuid,
    ) -> Result<lsync_storage::VerifyReport, NodeError> {
        let data_dir = self.inner.data_dir.clone();
        let registry = self.inner.config.registry.clone();
        tokio::task::spawn_blocking(move || Self::verify(&data_dir, library_id, &registry))
            .await
            .map_err(|e| NodeError::Io(std::io::Error::other(e.to_string())))?
    }

    fn libraries_dir(&self) -> PathBuf {
        self.inner.data_dir.join("libraries")
    }

    /// Libraries open on this node.
    pub fn libraries(&self) -> Vec<Uuid> {
        let mut ids: Vec<_> =
            self.inner.libraries.lock().expect("libraries lock").keys().copied().collect();
        ids.sort();
        ids
    }

    fn library(&self, library_id: Uuid) -> Result<Arc<Library>, NodeError> {
        self.inner
            .libraries
            .lock()
            .expect("libraries lock")
            .get(&library_id)
            .cloned()
            .ok_or(NodeError::UnknownLibrary(library_id))
    }

    /// The database of an open library.
    pub fn database(&self, library_id: Uuid) -> Result<Database, NodeError> {
        Ok(self.library(library_id)?.db.clone())
    }

    /// Creates a library led by this device (term 1), its only voter: the library's first log
    /// entry is the configuration holding this device.
    pub async fn create_library(&self) -> Result<Uuid, NodeError> {
        let library_id = Uuid::new_v4();
        let me = self.device_id();
        let configuration = Configuration::new(
            FEATURE_VERSION,
            vec![self.device_info().to_member(MemberRole::Voter, RolePreference::Auto)],
        );
        self.init_library(
            library_id,
            SyncState {
                library_id,
                device_id: me,
                role: SyncRole::Leader,
                current_term: 1,
                voted_for: Some(me),
                leader_device: Some(me),
                last_synced_sequence: 0,
            },
            Bootstrap::Create(configuration),
        )
        .await?;
        Ok(library_id)
    }

    /// Joins an existing library as a follower of `leader`, for scripted setups where the
    /// leader already added this device ([`Node::add_device`] there; an invitation,
    /// [`Node::join_with_invite`], needs no ids copied by hand). `members` are other member
    /// devices known so far. They are only where the device starts: its membership comes from
    /// the library's log as soon as it fetched the first configuration entry.
    pub async fn join_library(
        &self,
        library_id: Uuid,
        leader: DeviceInfo,
        members: Vec<DeviceInfo>,
    ) -> Result<(), NodeError> {
        if leader.device_id == self.device_id() {
            return Err(NodeError::InvalidInput(
                "a device cannot join a library as its own follower".into(),
            ));
        }
        let mut all = vec![
            self.device_info().to_member(MemberRole::Learner, RolePreference::Auto),
            leader.to_member(MemberRole::Voter, RolePreference::Auto),
        ];
        all.extend(
            members
                .into_iter()
                .filter(|m| m.device_id != leader.device_id && m.device_id != self.device_id())
                .map(|m| m.to_member(MemberRole::Voter, RolePreference::Auto)),
        );
        self.init_library(
            library_id,
            SyncState {
                library_id,
                device_id: self.device_id(),
                role: SyncRole::Follower,
                current_term: 0,
                voted_for: None,
                leader_device: Some(leader.device_id),
                last_synced_sequence: 0,
            },
            // Sequence 0: any configuration entry of the log replaces it.
            Bootstrap::Given(Configuration::new(FEATURE_VERSION, all), 0),
        )
        .await
    }

    async fn init_library(
        &self,
        library_id: Uuid,
        state: SyncState,
        bootstrap: Bootstrap,
    ) -> Result<(), NodeError> {
        if self.inner.libraries.lock().expect("libraries lock").contains_key(&library_id)
            || self.library_path(library_id).exists()
        {
            return Err(NodeError::LibraryExists(library_id));
        }
        let path = self.library_path(library_id);
        let options = self.inner.config.storage.clone();
        let registry = self.inner.config.registry.clone();
        let me = self.device_id();
        let created = tokio::task::spawn_blocking(move || -> Result<(), StorageError> {
            let db = Database::open(&path, &options, registry)?;
            db.init_sync_state(&state)?;
            match bootstrap {
                Bootstrap::Create(configuration) => {
                    TransactionManager::new(db.clone(), me).commit_config(&configuration)?;
                }
                Bootstrap::Given(configuration, sequence) => {
                    db.install_membership(&configuration, sequence)?;
                }
            }
            Ok(())
        })
        .await
        .map_err(|e| NodeError::Io(std::io::Error::other(e.to_string())))?;
        if let Err(e) = created {
            // Nothing half-made stays behind: the next attempt starts from scratch.
            let path = self.library_path(library_id);
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
            }
            return Err(e.into());
        }
        self.open_library(library_id).await
    }

    async fn open_library(&self, library_id: Uuid) -> Result<(), NodeError> {
        let path = self.library_path(library_id);
        let options = self.inner.config.storage.clone();
        let registry = self.inner.config.registry.clone();
        let db = tokio::task::spawn_blocking(move || Database::open(&path, &options, registry))
            .await
            .map_err(|e| NodeError::Io(std::io::Error::other(e.to_string())))??;
        let tm = TransactionManager::new(db.clone(), self.device_id());
        let writes_paused = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let is_member = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let progress = lsync_actors::messages::ProgressWatch::default();
        let cx = LibraryContext {
            library_id,
            device_id: self.device_id(),
            db: db.clone(),
            tm: tm.clone(),
            network: self.inner.network.clone(),
            transport: Arc::new(self.inner.network.clone()),
            config: self.inner.config.sync.clone(),
            events: self.inner.events.clone(),
            metrics: self.inner.metrics.clone(),
            writes_paused: writes_paused.clone(),
            is_member: is_member.clone(),
            keypair: self.inner.identity.keypair.clone(),
            // what the signed address hints announce
            listen_addrs: self.inner.announce_addrs.clone(),
            progress: progress.clone(),
        };
        let service = SyncService::new(cx).start();
        actix_rt::spawn(report_committed_conflicts(
            library_id,
            tm.subscribe(),
            db.clone(),
            self.inner.events.clone(),
        ));
        // Calls made right after opening (a membership change, an invitation) need the
        // service to have loaded its state: wait for it, bounded.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        while !service.send(lsync_actors::service::Ready).await.unwrap_or(false) {
            if tokio::time::Instant::now() >= deadline {
                return Err(NodeError::ServiceStopped(library_id));
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        self.inner.libraries.lock().expect("libraries lock").insert(
            library_id,
            Arc::new(Library { db, tm, service, writes_paused, is_member, progress }),
        );
        Ok(())
    }

    /// Adds a member device to a library, as a learner (the leader promotes it to voter once it
    /// caught up, keeping the number of voters odd): a configuration entry committed by the
    /// leader, asked for from any member. Answered once committed, or `committed: false` when
    /// not within a few seconds (the change stays in use; status shows it pending). For
    /// scripted setups; [`Node::invite`] needs no ids copied by hand. In a library of feature
    /// version 1 (no configuration entries yet) the device is only added to this device's own
    /// list, as before.
    pub async fn add_device(
        &self,
        library_id: Uuid,
        device: DeviceInfo,
    ) -> Result<MembershipOutcome, NodeError> {
        let lib = self.library(library_id)?;
        let replicated = self.membership(library_id).await?.is_replicated();
        if !replicated {
            lib.service
                .send(AddMember(device.to_device()))
                .await
                .map_err(|_| NodeError::ServiceStopped(library_id))?
                .map_err(NodeError::InvalidInput)?;
            return Ok(MembershipOutcome { config_sequence: 0, committed: false });
        }
        let member = device.to_member(MemberRole::Learner, RolePreference::Auto);
        member.validate().map_err(|e| NodeError::InvalidInput(e.0))?;
        self.change_membership(library_id, MembershipChange::Add { member }).await
    }

    /// Removes a device from a library (from any member; the leader commits it). Every device
    /// refuses it as soon as it applies the entry; the removed device keeps its copy, read-only,
    /// and its status says it is no longer a member. In a two-voter library the removal of the
    /// other voter commits only once that device holds it: a lost device's removal stays
    /// pending (see `force_reconfigure` in docs/operations.md).
    pub async fn remove_device(
        &self,
        library_id: Uuid,
        device_id: Uuid,
    ) -> Result<MembershipOutcome, NodeError> {
        let membership = self.membership(library_id).await?;
        if !membership.configuration.contains(device_id) {
            return Err(NodeError::Membership(format!(
                "device {device_id} is not a member of library {library_id}"
            )));
        }
        self.change_membership(library_id, MembershipChange::Remove { device_id }).await
    }

    /// Sets what the leader may make of a member: `Learner` keeps it a learner for good (a voter
    /// is demoted), `Voter` promotes it once caught up whatever the number of voters, `Auto`
    /// lets the leader keep the number of voters odd.
    pub async fn set_device_preference(
        &self,
        library_id: Uuid,
        device_id: Uuid,
        preference: RolePreference,
    ) -> Result<MembershipOutcome, NodeError> {
        self.change_membership(
            library_id,
            MembershipChange::SetPreference { device_id, preference },
        )
        .await
    }

    async fn change_membership(
        &self,
        library_id: Uuid,
        change: MembershipChange,
    ) -> Result<MembershipOutcome, NodeError> {
        let lib = self.library(library_id)?;
        let outcome = lib
            .service
            .send(ChangeMembershipRequest { change, wait: MEMBERSHIP_WAIT })
            .await
            .map_err(|_| NodeError::ServiceStopped(library_id))?
            .map_err(NodeError::Membership)?;
        Ok(MembershipOutcome {
            config_sequence: outcome.config_sequence,
            committed: outcome.committed,
        })
    }

    /// The configuration in effect on this device for a library.
    pub async fn membership(&self, library_id: Uuid) -> Result<Membership, NodeError> {
        let db = self.library(library_id)?.db.clone();
        blocking(move || db.membership()).await
    }

    /// Makes an invitation to a library: a one-line token whose one-time secret this device
    /// stores hashed, valid for `expires`. The new device gives it to
    /// [`Node::join_with_invite`] (or `lsync library join TOKEN`); it joins as a learner, and
    /// stays one for good when `learner`. While an invitation is open this device accepts
    /// connections from unknown devices, which may only present an invitation.
    pub async fn invite(
        &self,
        library_id: Uuid,
        learner: bool,
        expires: std::time::Duration,
    ) -> Result<Invitation, NodeError> {
        let lib = self.library(library_id)?;
        if self.inner.announce_addrs.is_empty() {
            return Err(NodeError::Invitation("this device listens on no address".into()));
        }
        let secret = lib
            .service
            .send(CreateInvitation { learner, expires })
            .await
            .map_err(|_| NodeError::ServiceStopped(library_id))?
            .map_err(NodeError::Invitation)?;
        let secret: [u8; 32] = secret
            .try_into()
            .map_err(|_| NodeError::Invitation("the secret has the wrong length".into()))?;
        let token = InviteToken {
            library_id,
            device_id: self.device_id(),
            peer_id: self.peer_id(),
            addresses: self.inner.announce_addrs.clone(),
            secret,
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        Ok(Invitation {
            token: token.encode(),
            expires_at_ms: now.saturating_add(expires.as_millis().min(i64::MAX as u128) as i64),
            learner,
        })
    }

    /// Joins a library with an invitation token from [`Node::invite`]: dials the member that
    /// made it, presents the secret, and — once the leader added this device as a learner —
    /// creates the library here and starts following. Presenting the same token again from
    /// this device (a lost answer) gets the same answer; from another device, or after it
    /// expired, it is refused with the reason. A device that holds the library already — it
    /// was removed and is invited again, or it missed membership changes while it was away
    /// and cannot find the leader — takes the configuration of the answer if it is newer than
    /// its own, and keeps its copy.
    pub async fn join_with_invite(&self, token: &str) -> Result<JoinOutcome, NodeError> {
        let token = InviteToken::decode(token).map_err(NodeError::Invitation)?;
        let library_id = token.library_id;
        if token.device_id == self.device_id() {
            return Err(NodeError::Invitation(
                "this device made the invitation: run the join on the new device".into(),
            ));
        }
        // The library may be here already: a device removed and invited again, or a member
        // that missed membership changes while it was away (a leader it never heard of) and
        // refreshes its configuration this way.
        let existing = self.library(library_id).ok();
        let network = &self.inner.network;
        if existing.is_some() {
            network.add_member(library_id, token.peer_id, token.addresses.clone()).await?;
        } else {
            network.prepare_join(library_id, token.peer_id, token.addresses.clone()).await?;
        }
        let request = SyncMessage::Join {
            library_id,
            secret: token.secret.to_vec(),
            device_id: self.device_id(),
            name: self.inner.name.clone(),
            addresses: self.announce_addrs().iter().map(|a| a.to_string()).collect(),
        };
        let answer = network.request(token.peer_id, request).await;
        let (term, leader, configuration, config_sequence, committed) = match answer {
            Ok(SyncMessage::Joined {
                term,
                leader,
                configuration,
                config_sequence,
                committed,
                ..
            }) => (term, leader, configuration, config_sequence, committed),
            Ok(SyncMessage::Error { message, .. }) => {
                self.forget_inviter(existing.is_none(), library_id, token.peer_id).await;
                return Err(NodeError::Invitation(format!("refused: {message}")));
            }
            Ok(other) => {
                self.forget_inviter(existing.is_none(), library_id, token.peer_id).await;
                return Err(NodeError::Invitation(format!("unexpected answer {}", other.kind())));
            }
            Err(e) => {
                self.forget_inviter(existing.is_none(), library_id, token.peer_id).await;
                return Err(NodeError::Invitation(format!(
                    "cannot reach the inviting device at {:?}: {e}",
                    token.addresses
                )));
            }
        };
        if let Err(e) = configuration.validate() {
            return Err(NodeError::Invitation(format!(
                "the configuration received is invalid: {e}"
            )));
        }
        if !configuration.contains(self.device_id()) {
            return Err(NodeError::Invitation(
                "the configuration received does not hold this device".into(),
            ));
        }
        match existing {
            // Re-joining after a removal: the copy is kept; the service takes the new
            // configuration and catches up (a log that diverged is rebuilt as usual).
            Some(lib) => {
                let db = lib.db.clone();
                let current = {
                    let db = db.clone();
                    blocking(move || db.membership()).await?
                };
                if config_sequence > current.sequence
                    || !current.configuration.contains(self.device_id())
                {
                    blocking(move || db.install_membership(&configuration, config_sequence))
                        .await?;
                    self.restart_library(library_id).await?;
                }
            }
            None => {
                self.init_library(
                    library_id,
                    SyncState {
                        library_id,
                        device_id: self.device_id(),
                        role: SyncRole::Follower,
                        current_term: term,
                        voted_for: None,
                        leader_device: leader,
                        last_synced_sequence: 0,
                    },
                    Bootstrap::Given(configuration, config_sequence),
                )
                .await?;
            }
        }
        info!(%library_id, config_sequence, committed, "joined with an invitation");
        Ok(JoinOutcome { library_id, config_sequence, committed, leader })
    }

    /// After a failed join: the inviting device is no member here (unless the library exists).
    async fn forget_inviter(&self, prepared: bool, library_id: Uuid, _peer: PeerId) {
        if prepared {
            let _ = self.inner.network.unregister_library(library_id).await;
        }
    }

    /// UNSAFE recovery when a majority of a library's voters is gone for good (docs/operations.md,
    /// "Quorum lost for good"): this device becomes leader of a new term with a configuration
    /// whose voters are `voters` (this device among them); the other voters of the current
    /// configuration are removed, learners stay. Entries only the lost devices held are lost;
    /// if they come back, they are refused (removed) — never run it while they may be alive.
    pub async fn force_reconfigure(
        &self,
        library_id: Uuid,
        voters: Vec<Uuid>,
    ) -> Result<MembershipOutcome, NodeError> {
        let membership = self.membership(library_id).await?;
        if !voters.contains(&self.device_id()) {
            return Err(NodeError::Membership(
                "the forced configuration must make this device a voter".into(),
            ));
        }
        let mut members = Vec::new();
        for v in &voters {
            let Some(m) = membership.configuration.member(*v) else {
                return Err(NodeError::Membership(format!(
                    "device {v} is not a member of library {library_id}"
                )));
            };
            members.push(Member { role: MemberRole::Voter, ..m.clone() });
        }
        members.extend(
            membership
                .configuration
                .members
                .iter()
                .filter(|m| m.role == MemberRole::Learner && !voters.contains(&m.device_id))
                .cloned(),
        );
        let version = membership.configuration.feature_version.max(FEATURE_VERSION);
        let configuration = Configuration::new(version, members);
        configuration.validate().map_err(|e| NodeError::Membership(e.0))?;
        let lib = self.library(library_id)?;
        let _ = lib.service.send(Shutdown).await;
        let tm = lib.tm.clone();
        let entry = blocking(move || tm.force_reconfigure(&configuration)).await;
        self.inner.libraries.lock().expect("libraries lock").remove(&library_id);
        self.open_library(library_id).await?;
        let entry = entry?;
        warn!(%library_id, sequence = entry.sequence, term = entry.term, "configuration forced");
        Ok(MembershipOutcome { config_sequence: entry.sequence, committed: voters.len() == 1 })
    }

    /// Stops a library's actors and starts them again from its database.
    async fn restart_library(&self, library_id: Uuid) -> Result<(), NodeError> {
        let lib = self.library(library_id)?;
        let _ = lib.service.send(Shutdown).await;
        self.inner.libraries.lock().expect("libraries lock").remove(&library_id);
        self.open_library(library_id).await
    }

    /// The transaction manager of a library that accepts writes now.
    fn writer(&self, library_id: Uuid) -> Result<TransactionManager, NodeError> {
        let lib = self.library(library_id)?;
        if lib.writes_paused.load(std::sync::atomic::Ordering::Acquire) {
            return Err(NodeError::WritesPaused(library_id));
        }
        Ok(lib.tm.clone())
    }

    /// Hands the leadership of a library over to `to` (this device must lead it): new writes
    /// are held, the target catches up, then it takes the next term.
    pub async fn transfer_leadership(&self, library_id: Uuid, to: Uuid) -> Result<(), NodeError> {
        let lib = self.library(library_id)?;
        lib.service
            .send(lsync_actors::election::actor::TransferLeadership(to))
            .await
            .map_err(|_| NodeError::ServiceStopped(library_id))?
            .map_err(NodeError::Transfer)
    }

    /// Writes changes on any device: the same call on the leader and on a follower.
    ///
    /// On the leader the changes commit at once; on a follower they are queued in the durable
    /// outbox and proposed to the leader, and the call returns once the leader committed them
    /// *and* this device applied them ([`WriteOutcome::Committed`]), or — when no leader can be
    /// reached — once they are safely queued ([`WriteOutcome::Queued`]). Either way they are
    /// committed exactly once, and this device's tables show them when the call returns
    /// (local-first: a queued write is shown over the committed rows until it commits,
    /// docs/architecture.md, "Local-first writes"). Inserts and updates are upserts and a delete of a record that no
    /// longer exists is dropped: concurrent writes to one record resolve by leader order
    /// (docs/architecture.md, "Concurrent changes"). Changes over [`Node::max_change_bytes`]
    /// together are refused ([`NodeError::ChangeTooLarge`]) before anything is written.
    ///
    /// The write is a proposal with a fresh id: [`Node::write_with_id`] with
    /// [`Uuid::new_v4`].
    pub async fn write(
        &self,
        library_id: Uuid,
        changes: Vec<Change>,
    ) -> Result<WriteOutcome, NodeError> {
        self.write_with_id(library_id, Uuid::new_v4(), changes).await
    }

    /// [`Node::write`] as proposal `proposal_id`, chosen by the caller (the control API's
    /// `proposal_id`, which `lsync put` always sends): every entry committed for it carries
    /// that id in the log (`lsync status --proposal ID` finds them), so a caller whose answer
    /// was lost knows what to look up.
    ///
    /// Idempotent: writing an id again never commits its changes twice. If this device's log
    /// holds entries of `proposal_id`, the answer is [`WriteOutcome::Committed`] with their
    /// range and nothing is written; if its outbox holds it, nothing is queued again and the
    /// answer is what became of that entry (committed, queued, or refused when it is in the
    /// `failed` state); a leader commits one proposal id at most once whatever it receives
    /// (docs/protocol.md §4). The id names the first write's changes: changes sent again with it
    /// are not compared with them. A nil id is refused ([`NodeError::InvalidInput`]).
    pub async fn write_with_id(
        &self,
        library_id: Uuid,
        proposal_id: Uuid,
        changes: Vec<Change>,
    ) -> Result<WriteOutcome, NodeError> {
        if proposal_id.is_nil() {
            return Err(NodeError::InvalidInput(
                "the proposal id is the nil uuid: give a random (v4) uuid, or none".into(),
            ));
        }
        if changes.is_empty() {
            return Err(NodeError::InvalidInput("nothing to write".into()));
        }
        // one proposal frame carries them all
        self.check_size(&changes)?;
        let lib = self.library(library_id)?;
        // written already? (a retry whose first answer was lost)
        let db = lib.db.clone();
        let (committed, queued) = blocking(move || {
            let entries =
                db.with_reader(|conn| lsync_storage::SyncLog::proposal_entries(conn, proposal_id))?;
            let range = entries.first().zip(entries.last()).map(|(f, l)| (f.sequence, l.sequence));
            Ok((range, db.outbox_get(proposal_id)?.is_some()))
        })
        .await?;
        if let Some((first_sequence, last_sequence)) = committed {
            info!(%library_id, proposal = %proposal_id, "written again: committed already");
            return Ok(WriteOutcome::Committed { first_sequence, last_sequence });
        }
        let tm = self.writer(library_id)?;
        let me = self.device_id();
        if !lib.is_member.load(std::sync::atomic::Ordering::Acquire) {
            return Err(NodeError::Membership(format!(
                "this device is not a member of library {library_id} any more (it was removed); its \
                 copy is read-only"
            )));
        }
        // one in the outbox is delivered by the proposer (also when this device leads)
        if !queued {
            let direct = changes.clone();
            match blocking(move || tm.commit_proposal(proposal_id, me, direct)).await {
                Ok(o) => {
                    if !o.duplicate {
                        Metrics::add(&self.inner.metrics.entries_committed, o.entries.len() as u64);
                    }
                    // answered committed only under the leader lease, checked after the commit
                    // (docs/architecture.md, "The leader lease")
                    let confirmed = lib.service.send(lsync_actors::messages::ConfirmLease).await;
                    if !confirmed.unwrap_or(false) {
                        return Err(NodeError::OutcomeUnknown(library_id));
                    }
                    return Ok(WriteOutcome::Committed {
                        first_sequence: o.first_sequence,
                        last_sequence: o.last_sequence,
                    });
                }
                Err(NodeError::Storage(StorageError::NotLeader { .. })) => {}
                Err(e) => return Err(e),
            }
        }
        let submitted = lib
            .service
            .send(lsync_actors::service::Submit { proposal_id, changes })
            .await
            // the service may have stopped after the proposer queued the change
            .map_err(|_| NodeError::OutcomeUnknown(library_id))?
            .map_err(NodeError::InvalidInput)?;
        match submitted {
            lsync_actors::proposer::Submitted::Queued { proposal_id } => {
                Ok(WriteOutcome::Queued { proposal_id })
            }
            lsync_actors::proposer::Submitted::Committed { first, last } => {
                // read your writes: the leader committed it; wait until this device applied
                // it, woken by each batch its follower actor applies
                let deadline = tokio::time::Instant::now() + READ_YOUR_WRITES_TIMEOUT;
                let mut progress = lib.progress.subscribe();
                loop {
                    progress.borrow_and_update();
                    let db = lib.db.clone();
                    let applied = blocking(move || db.last_position()).await?.sequence;
                    if applied >= last {
                        break;
                    }
                    match tokio::time::timeout_at(deadline, progress.changed()).await {
                        Ok(Ok(())) => {}
                        // the deadline passed, or the library was closed
                        Ok(Err(_)) | Err(_) => break,
                    }
                }
                Ok(WriteOutcome::Committed { first_sequence: first, last_sequence: last })
            }
        }
    }

    /// [`Node::write_with_id`] at a [`Durability`] level. `Local` answers as `write_with_id`
    /// does. `Majority` answers `Committed` only once a majority of the voters hold the
    /// write: this device's view of the commit sequence covers its entries, and this
    /// device's log matches the current leader's there (its last entry is of the current
    /// term, so Raft's log matching makes everything before it the leader's) — the sequences
    /// in that answer are final, read from this device's log (if the change had to be proposed
    /// again after a deposed leader, they are where it ended). Within the request timeout
    /// (`network.request_timeout`) or the answer is [`WriteOutcome::Pending`]; a queued write
    /// is answered `Queued` at either level. In a two-voter library a majority is both
    /// devices: a device leading alone answers `Pending`.
    pub async fn write_with(
        &self,
        library_id: Uuid,
        proposal_id: Uuid,
        durability: Durability,
        changes: Vec<Change>,
    ) -> Result<WriteOutcome, NodeError> {
        let expected = lsync_actors::proposer::entries_at_least(&changes);
        let outcome = self.write_with_id(library_id, proposal_id, changes).await?;
        match (durability, outcome) {
            (Durability::Majority, WriteOutcome::Committed { first_sequence, last_sequence }) => {
                let answered = (first_sequence, last_sequence);
                self.wait_for_majority(library_id, proposal_id, expected, answered).await
            }
            (_, outcome) => Ok(outcome),
        }
    }

    /// Waits until a majority holds proposal `proposal_id` (see [`Node::write_with`]), at
    /// most the request timeout; `expected` is how many entries it writes at least,
    /// `answered` the range the leader answered with.
    ///
    /// Not a poll: it reads the view (status, the proposal's entries in the log) once, then
    /// again each time the library's actors publish something it may be waiting for
    /// ([`lsync_actors::messages::Progress`]): a batch applied or a role change always, a
    /// commit sequence only once one at least at the proposal's last entry is published (the
    /// commit sequence status shows is one of the published values, so a majority cannot
    /// hold it before).
    async fn wait_for_majority(
        &self,
        library_id: Uuid,
        proposal_id: Uuid,
        expected: usize,
        answered: (u64, u64),
    ) -> Result<WriteOutcome, NodeError> {
        let deadline = tokio::time::Instant::now() + self.inner.config.network.request_timeout;
        let lib = self.library(library_id)?;
        let db = lib.db.clone();
        let mut progress = lib.progress.subscribe();
        loop {
            // what is published from now on, also while the view is read, wakes the wait below
            let seen = *progress.borrow_and_update();
            let st = self.status(library_id).await?;
            let read = db.clone();
            let (head, entries) = blocking(move || {
                let entries = read.with_reader(|conn| {
                    lsync_storage::SyncLog::proposal_entries(conn, proposal_id)
                })?;
                Ok((read.head()?.position, entries))
            })
            .await?;
            let found: Vec<u64> = entries.iter().map(|e| e.sequence).collect();
            let view = lsync_actors::proposer::MajorityView {
                leader_known: st.leader.is_some(),
                term: st.term,
                head,
                commit_sequence: st.commit_sequence,
            };
            if let Some((first_sequence, last_sequence)) =
                lsync_actors::proposer::majority_holds(view, &found, expected, answered)
            {
                return Ok(WriteOutcome::Committed { first_sequence, last_sequence });
            }
            // the commit sequence it needs at least, when the whole proposal is in the log
            let needed = match found.last() {
                Some(last) if found.len() >= expected => Some(*last),
                None if expected == 0 => Some(answered.1),
                _ => None,
            };
            // a publication since the view was read that may make it hold (not the value now:
            // a commit sequence published above status's would wake it again at once)
            let may_hold = async {
                loop {
                    progress.changed().await?;
                    let p = *progress.borrow_and_update();
                    if p.others != seen.others || needed.is_none_or(|n| p.commit >= n) {
                        return Ok::<_, tokio::sync::watch::error::RecvError>(());
                    }
                }
            };
            let woken = tokio::time::timeout_at(deadline, may_hold).await;
            match woken {
                Ok(Ok(_)) => {}
                // the deadline passed, or the library was closed: pending
                Ok(Err(_)) | Err(_) => {
                    info!(%library_id, proposal = %proposal_id, commit = st.commit_sequence,
                        "majority write not held by a majority within the request timeout: pending");
                    return Ok(WriteOutcome::Pending {
                        proposal_id,
                        first_sequence: answered.0,
                        last_sequence: answered.1,
                    });
                }
            }
        }
    }

    /// Commits one change (this device must lead the library).
    pub async fn commit(
        &self,
        library_id: Uuid,
        change: Change,
    ) -> Result<SyncLogEntry, NodeError> {
        self.check_size([&change])?;
        let tm = self.writer(library_id)?;
        let entry = blocking(move || tm.commit(change)).await?;
        Metrics::add(&self.inner.metrics.entries_committed, 1);
        Ok(entry)
    }

    /// Commits many changes in one transaction.
    pub async fn commit_batch(
        &self,
        library_id: Uuid,
        changes: Vec<Change>,
    ) -> Result<Vec<SyncLogEntry>, NodeError> {
        // each becomes an entry of its own: each must fit
        for c in &changes {
            self.check_size([c])?;
        }
        let tm = self.writer(library_id)?;
        let entries = blocking(move || tm.commit_batch(changes)).await?;
        Metrics::add(&self.inner.metrics.entries_committed, entries.len() as u64);
        Ok(entries)
    }

    /// Commits one metadata entry for a large operation; followers queue a local job for it.
    pub async fn commit_bulk(
        &self,
        library_id: Uuid,
        op: BulkOperation,
    ) -> Result<SyncLogEntry, NodeError> {
        self.check_size([&Change::from(op.clone())])?;
        let tm = self.writer(library_id)?;
        let entry = blocking(move || tm.commit_bulk(op)).await?;
        Metrics::add(&self.inner.metrics.entries_committed, 1);
        Ok(entry)
    }

    /// This device's outbox of a library: every proposal waiting to be delivered
    /// ([`lsync_storage::OutboxState::Pending`]) or refused for good by a leader
    /// ([`lsync_storage::OutboxState::Failed`], with the reason), oldest first.
    pub async fn outbox(
        &self,
        library_id: Uuid,
    ) -> Result<Vec<lsync_storage::OutboxEntry>, NodeError> {
        let db = self.database(library_id)?;
        blocking(move || db.outbox_list_all()).await
    }

    /// Puts a failed outbox entry back to pending (it keeps its place in the queue) and wakes
    /// the proposer: it is delivered again, under the same proposal id (committed at most
    /// once). `false`: no failed entry has that id.
    pub async fn outbox_retry(
        &self,
        library_id: Uuid,
        proposal_id: Uuid,
    ) -> Result<bool, NodeError> {
        let lib = self.library(library_id)?;
        let db = lib.db.clone();
        let retried = blocking(move || db.outbox_retry(proposal_id)).await?;
        if retried {
            lib.service.do_send(lsync_actors::service::WakeProposer);
        }
        Ok(retried)
    }

    /// Deletes a failed outbox entry: the change is given up for good (a pending entry is never
    /// discarded: it may be committed at any moment). `false`: no failed entry has that id.
    pub async fn outbox_discard(
        &self,
        library_id: Uuid,
        proposal_id: Uuid,
    ) -> Result<bool, NodeError> {
        let db = self.database(library_id)?;
        blocking(move || db.outbox_discard(proposal_id)).await
    }

    /// The conflicts recorded in this device's copy of a library (docs/architecture.md,
    /// "Conflicts"), the most recently decided first, at most `limit`. Every device holds the
    /// same ones: the leader commits each in the log next to the change it decided.
    pub async fn conflicts(
        &self,
        library_id: Uuid,
        limit: u64,
    ) -> Result<Vec<lsync_storage::Conflict>, NodeError> {
        let db = self.database(library_id)?;
        blocking(move || db.with_reader(|conn| lsync_storage::conflicts::list(conn, limit))).await
    }

    /// A status snapshot of one library.
    pub async fn status(&self, library_id: Uuid) -> Result<LibraryStatus, NodeError> {
        let lib = self.library(library_id)?;
        lib.service
            .send(GetStatus)
            .await
            .map_err(|_| NodeError::ServiceStopped(library_id))?
            .map_err(|e| NodeError::Storage(StorageError::Corrupt(e)))
    }

    /// Stops every library's actors and the network.
    pub async fn shutdown(&self) {
        let libs: Vec<_> = self.inner.libraries.lock().expect("libraries lock").drain().collect();
        for (_, lib) in libs {
            let _ = lib.service.send(Shutdown).await;
        }
        self.inner.network.shutdown().await;
    }
}

/// Sends a [`SyncEvent::ConflictRecorded`] for each conflict record this device commits as
/// leader of `library_id` (the follower's apply reports those it applies,
/// `lsync_actors::follower::committed`), until the transaction manager's commit events end. A
/// commit too large to carry its entries is read back from `db`.
async fn report_committed_conflicts(
    library_id: Uuid,
    mut commits: broadcast::Receiver<lsync_storage::CommitEvent>,
    db: Database,
    events: broadcast::Sender<SyncEvent>,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let commit = match commits.recv().await {
            Ok(commit) => commit,
            Err(RecvError::Lagged(n)) => {
                warn!(%library_id, missed = n, "commit events missed: conflict events may be missing");
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        let entries: Vec<SyncLogEntry> = match &commit.entries {
            Some(entries) => entries
                .iter()
                .filter(|e| e.model_type == lsync_storage::conflicts::CONFLICT_MODEL_TYPE)
                .cloned()
                .collect(),
            None => {
                let (since, count) = (
                    commit.first_sequence.saturating_sub(1),
                    commit.last_sequence.saturating_sub(commit.first_sequence).saturating_add(1),
                );
                let db = db.clone();
                match blocking(move || db.fetch_since(since, count)).await {
                    Ok(entries) => entries,
                    Err(e) => {
                        warn!(%library_id, error = %e, "cannot read a commit back: conflict events may be missing");
                        continue;
                    }
                }
            }
        };
        for event in SyncEvent::conflicts_recorded(library_id, &entries) {
            // an error only means nobody is subscribed
            let _ = events.send(event);
        }
    }
}

async fn blocking<R: Send + 'static>(
    f: impl FnOnce() -> Result<R, StorageError> + Send + 'static,
) -> Result<R, NodeError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| NodeError::Io(std::io::Error::other(e.to_string())))?
        .map_err(NodeError::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a device tells the others (token, membership entry) is the announced address,
    /// not the one it listens on.
    #[actix_rt::test]
    async fn announced_addresses_replace_the_listen_ones_in_what_others_are_told() {
        let dir = tempfile::tempdir().unwrap();
        let announced: Multiaddr = "/ip4/127.0.0.1/tcp/9".parse().unwrap();
        let node = Node::builder(dir.path())
            .listen(vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()])
            .announce(vec![announced.clone()])
            .start()
            .await
            .unwrap();
        assert_ne!(node.listen_addrs(), vec![announced.clone()]);
        assert_eq!(node.announce_addrs(), vec![announced.clone()]);
        let library = node.create_library().await.unwrap();
        let invitation =
            node.invite(library, false, std::time::Duration::from_secs(60)).await.unwrap();
        let token = InviteToken::decode(&invitation.token).unwrap();
        assert_eq!(token.addresses, vec![announced.clone()]);
        let membership = node.membership(library).await.unwrap();
        let me = membership.configuration.members.iter().find(|m| m.device_id == node.device_id());
        assert_eq!(me.map(|m| m.addresses.clone()), Some(vec![announced.to_string()]));
        node.shutdown().await;
    }

    /// docs/protocol.md §4, `SyncLogEntry.proposal_id`: a leader's own `write` carries a
    /// proposal id; a direct `commit` and a configuration entry carry none.
    #[actix_rt::test]
    async fn a_leaders_own_write_carries_a_proposal_id_a_direct_commit_none() {
        let dir = tempfile::tempdir().unwrap();
        let node = Node::builder(dir.path())
            .listen(vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()])
            .start()
            .await
            .unwrap();
        let library = node.create_library().await.unwrap();
        let tag = |id: &str| crate::Tag { id: id.into(), name: id.into(), color: None };
        let written = node.write(library, vec![Change::insert(&tag("w"))]).await.unwrap();
        let WriteOutcome::Committed { last_sequence, .. } = written else {
            panic!("the leader commits at once: {written:?}")
        };
        let direct = node.commit(library, Change::insert(&tag("c"))).await.unwrap();
        let log = node.database(library).unwrap().fetch_since(0, 100).unwrap();
        let by_sequence = |s: u64| log.iter().find(|e| e.sequence == s).unwrap().clone();
        assert!(by_sequence(last_sequence).proposal_id.is_some());
        assert_eq!(by_sequence(direct.sequence).proposal_id, None);
        let config =
            log.iter().find(|e| e.change_type == lsync_protocol::ChangeType::Config).unwrap();
        assert_eq!(config.proposal_id, None);
        node.shutdown().await;
    }

    /// A configuration under which a response could exceed a frame is refused at start,
    /// before anything is created; the same limits derived with `for_frame` start.
    #[actix_rt::test]
    async fn a_configuration_whose_responses_could_exceed_a_frame_is_refused_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let network = NetworkConfig { max_frame: 1 << 20, ..NetworkConfig::default() };
        let start = |sync: SyncConfig| {
            Node::builder(dir.path().join("dev"))
                .config(NodeConfig { network: network.clone(), sync, ..NodeConfig::default() })
                .listen(vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()])
                .start()
        };
        // responses of up to 8 MiB with 1 MiB frames
        match start(SyncConfig::default()).await {
            Err(NodeError::Config(reason)) => {
                assert!(reason.contains("max_response_bytes is 8388608"), "{reason}")
            }
            Err(other) => panic!("{other}"),
            Ok(_) => panic!("started"),
        }
        assert!(!dir.path().join("dev").exists(), "something was created");
        let node = start(SyncConfig::default().for_frame(1 << 20)).await.unwrap();
        node.shutdown().await;
    }

    /// A change over the size limit is refused before anything is written, by `write` and by
    /// `commit`; one at the limit is written.
    #[actix_rt::test]
    async fn a_change_over_the_size_limit_is_refused_and_nothing_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let network = NetworkConfig { max_frame: 4096, ..NetworkConfig::default() };
        let sync = SyncConfig::default().for_frame(4096);
        let node = Node::builder(dir.path())
            .config(NodeConfig { network, sync, ..NodeConfig::default() })
            .listen(vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()])
            .start()
            .await
            .unwrap();
        assert_eq!(node.max_change_bytes(), 2048);
        let library = node.create_library().await.unwrap();
        // the leader writes its term's first entry after the library is created: wait for it,
        // so that nothing else changes the log while the refusals are checked
        let last = || node.database(library).unwrap().last_position().unwrap().sequence;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while last() < 2 {
            assert!(std::time::Instant::now() < deadline, "the term never started");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let before = last();
        let tag = |name: String| Change::insert(&crate::Tag { id: "t".into(), name, color: None });
        let big = tag("x".repeat(2048));
        let bytes = change_bytes([&big]);
        assert!(bytes > 2048, "{bytes}");
        match node.write(library, vec![big.clone()]).await {
            Err(NodeError::ChangeTooLarge { bytes: b, limit: 2048, max_frame_bytes: 4096 }) => {
                assert_eq!(b, bytes)
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            node.commit(library, big).await,
            Err(NodeError::ChangeTooLarge { limit: 2048, .. })
        ));
        // two changes that fit alone but not together in one write (one proposal)
        let half = tag("y".repeat(1000));
        assert!(matches!(
            node.write(library, vec![half.clone(), half.clone()]).await,
            Err(NodeError::ChangeTooLarge { .. })
        ));
        assert_eq!(node.database(library).unwrap().last_position().unwrap().sequence, before);
        // at the limit: written
        let fits = (0..2048)
            .rev()
            .map(|n| tag("z".repeat(n)))
            .find(|c| change_bytes([c]) <= 2048)
            .unwrap();
        let fits_bytes = change_bytes([&fits]);
        assert!(fits_bytes <= 2048 && fits_bytes > 2000, "{fits_bytes}");
        assert!(matches!(
            node.write(library, vec![fits]).await,
            Ok(WriteOutcome::Committed { .. })
        ));
        node.shutdown().await;
    }
}
