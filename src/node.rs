//! [`Node`]: a running lsync device inside the host's actix System.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use actix::{Actor, Addr};
use libp2p::{Multiaddr, PeerId};
use lsync_actors::network::{NetworkConfig, NetworkHandle};
use lsync_actors::{
    AddMember, GetStatus, LibraryContext, LibraryStatus, Metrics, Shutdown, SyncConfig, SyncEvent,
    SyncService,
};
use lsync_protocol::{SyncLogEntry, SyncRole};
use lsync_storage::{
    BulkOperation, Change, Database, Device, ModelRegistry, StorageError, StorageOptions,
    SyncState, TransactionManager,
};
use tokio::sync::broadcast;
use tracing::info;
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
    #[error("sync service of library {0} is not running")]
    ServiceStopped(Uuid),
    #[error("library {0} is handing leadership over; retry once the new leader is known")]
    WritesPaused(Uuid),
    #[error("leadership transfer refused: {0}")]
    Transfer(String),
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
    /// No leader was reachable: the changes wait in this device's durable outbox and will be
    /// committed, once, by whichever device leads next.
    Queued { proposal_id: Uuid },
}

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
}

impl NodeBuilder {
    /// Listen on these addresses (default: 127.0.0.1, a free TCP port).
    pub fn listen(mut self, addrs: Vec<Multiaddr>) -> Self {
        self.config.network.listen = addrs;
        self
    }

    /// Replaces the whole configuration.
    pub fn config(mut self, config: NodeConfig) -> Self {
        self.config = config;
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
    pub async fn start(self) -> Result<Node, NodeError> {
        let identity = Identity::load_or_create(&self.data_dir)?;
        let (network, listen_addrs) =
            NetworkHandle::start(identity.keypair.clone(), self.config.network.clone()).await?;
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        let node = Node {
            inner: Arc::new(Inner {
                identity,
                name: self.name,
                data_dir: self.data_dir,
                config: self.config,
                network,
                listen_addrs,
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

struct Library {
    db: Database,
    tm: TransactionManager,
    service: Addr<SyncService>,
    /// Set while a leadership transfer holds new writes.
    writes_paused: Arc<std::sync::atomic::AtomicBool>,
}

struct Inner {
    identity: Identity,
    name: String,
    data_dir: PathBuf,
    config: NodeConfig,
    network: NetworkHandle,
    listen_addrs: Vec<Multiaddr>,
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
        NodeBuilder { data_dir, config: NodeConfig::default(), name }
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

    /// How other devices reach this one.
    pub fn device_info(&self) -> DeviceInfo {
        DeviceInfo {
            device_id: self.device_id(),
            peer_id: self.peer_id(),
            addresses: self.listen_addrs(),
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

    /// Creates a library led by this device (term 1).
    pub async fn create_library(&self) -> Result<Uuid, NodeError> {
        let library_id = Uuid::new_v4();
        let me = self.device_info();
        self.init_library(
            library_id,
            SyncState {
                library_id,
                device_id: self.device_id(),
                role: SyncRole::Leader,
                current_term: 1,
                voted_for: Some(self.device_id()),
                leader_device: Some(self.device_id()),
                last_synced_sequence: 0,
            },
            vec![me],
        )
        .await?;
        Ok(library_id)
    }

    /// Joins an existing library as a follower of `leader`; `members` are the other member
    /// devices known so far (the leader included or not).
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
        let mut all = vec![self.device_info(), leader.clone()];
        all.extend(
            members
                .into_iter()
                .filter(|m| m.device_id != leader.device_id && m.device_id != self.device_id()),
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
            all,
        )
        .await
    }

    async fn init_library(
        &self,
        library_id: Uuid,
        state: SyncState,
        devices: Vec<DeviceInfo>,
    ) -> Result<(), NodeError> {
        if self.inner.libraries.lock().expect("libraries lock").contains_key(&library_id)
            || self.library_path(library_id).exists()
        {
            return Err(NodeError::LibraryExists(library_id));
        }
        let path = self.library_path(library_id);
        let options = self.inner.config.storage.clone();
        let registry = self.inner.config.registry.clone();
        tokio::task::spawn_blocking(move || -> Result<(), StorageError> {
            let db = Database::open(&path, &options, registry)?;
            db.init_sync_state(&state)?;
            for d in &devices {
                db.upsert_device(&d.to_device())?;
            }
            Ok(())
        })
        .await
        .map_err(|e| NodeError::Io(std::io::Error::other(e.to_string())))??;
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
        };
        let service = SyncService::new(cx).start();
        self.inner
            .libraries
            .lock()
            .expect("libraries lock")
            .insert(library_id, Arc::new(Library { db, tm, service, writes_paused }));
        Ok(())
    }

    /// Adds (or updates) a member device of a library.
    pub async fn add_device(&self, library_id: Uuid, device: DeviceInfo) -> Result<(), NodeError> {
        let lib = self.library(library_id)?;
        lib.service
            .send(AddMember(device.to_device()))
            .await
            .map_err(|_| NodeError::ServiceStopped(library_id))?
            .map_err(NodeError::InvalidInput)
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
            .send(lsync_actors::watcher::TransferLeadership(to))
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
    /// committed exactly once. Inserts and updates are upserts and a delete of a record that no
    /// longer exists is dropped: concurrent writes to one record resolve by leader order
    /// (docs/architecture.md, "Concurrent changes").
    pub async fn write(
        &self,
        library_id: Uuid,
        changes: Vec<Change>,
    ) -> Result<WriteOutcome, NodeError> {
        if changes.is_empty() {
            return Err(NodeError::InvalidInput("nothing to write".into()));
        }
        let tm = self.writer(library_id)?;
        let lib = self.library(library_id)?;
        let me = self.device_id();
        let direct = changes.clone();
        let n = changes.len() as u64;
        match blocking(move || tm.commit_proposal(Uuid::new_v4(), me, direct)).await {
            Ok(o) => {
                Metrics::add(&self.inner.metrics.entries_committed, n);
                return Ok(WriteOutcome::Committed {
                    first_sequence: o.first_sequence,
                    last_sequence: o.last_sequence,
                });
            }
            Err(NodeError::Storage(StorageError::NotLeader { .. })) => {}
            Err(e) => return Err(e),
        }
        let submitted = lib
            .service
            .send(lsync_actors::service::Submit(changes))
            .await
            .map_err(|_| NodeError::ServiceStopped(library_id))?
            .map_err(NodeError::InvalidInput)?;
        match submitted {
            lsync_actors::proposer::Submitted::Queued { proposal_id } => {
                Ok(WriteOutcome::Queued { proposal_id })
            }
            lsync_actors::proposer::Submitted::Committed { first, last } => {
                let deadline = tokio::time::Instant::now() + READ_YOUR_WRITES_TIMEOUT;
                loop {
                    let db = lib.db.clone();
                    let applied = blocking(move || db.last_position()).await?.sequence;
                    if applied >= last || tokio::time::Instant::now() > deadline {
                        break;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                }
                Ok(WriteOutcome::Committed { first_sequence: first, last_sequence: last })
            }
        }
    }

    /// Commits one change (this device must lead the library).
    pub async fn commit(
        &self,
        library_id: Uuid,
        change: Change,
    ) -> Result<SyncLogEntry, NodeError> {
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
        let tm = self.writer(library_id)?;
        let entry = blocking(move || tm.commit_bulk(op)).await?;
        Metrics::add(&self.inner.metrics.entries_committed, 1);
        Ok(entry)
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

async fn blocking<R: Send + 'static>(
    f: impl FnOnce() -> Result<R, StorageError> + Send + 'static,
) -> Result<R, NodeError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| NodeError::Io(std::io::Error::other(e.to_string())))?
        .map_err(NodeError::from)
}
