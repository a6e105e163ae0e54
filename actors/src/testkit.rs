//! Test helpers for actor-level tests: a leader database and a scripted transport.

use std::sync::{Arc, Mutex};

use libp2p::PeerId;
use lsync_protocol::{SyncMessage, SyncRole};
use lsync_storage::{Change, Database, ModelRegistry, SyncState, Tag, TransactionManager};
use tempfile::TempDir;
use uuid::Uuid;

use crate::leader::context::{new_log_cache, LinkContext};
use crate::transport::{BoxFuture, NetworkError, Transport};

/// A leader link actor's context in term 1 with the default limits (100 entries, 8 MiB per
/// response, 100 ms window), no election, its own log cache and metrics.
pub fn link_context(library_id: Uuid, db: Database, transport: Arc<dyn Transport>) -> LinkContext {
    LinkContext {
        library_id,
        db,
        transport,
        events: tokio::sync::broadcast::channel(16).0,
        term: 1,
        max_entries_per_response: 100,
        max_response_bytes: 8 << 20,
        max_frame: lsync_protocol::DEFAULT_MAX_FRAME,
        notify_window: std::time::Duration::from_millis(100),
        election: None,
        lease: None,
        cache: new_log_cache(100),
        metrics: Default::default(),
        leader_device: None,
        leader: Default::default(),
        progress: None,
        left: None,
    }
}

/// A tag Insert entry at `sequence` in term 1 with `data` zero bytes (record `t<sequence>`),
/// for tests that only move entries around.
pub fn entry(sequence: u64, data: usize) -> lsync_protocol::SyncLogEntry {
    lsync_protocol::SyncLogEntry {
        sequence,
        term: 1,
        origin_device: Uuid::nil(),
        timestamp_ms: 0,
        model_type: "tag".into(),
        record_id: format!("t{sequence}"),
        change_type: lsync_protocol::ChangeType::Insert,
        version: 1,
        data: vec![0; data],
        proposal_id: None,
        hash: None,
        stamp: None,
    }
}

/// A library database with `n` committed tag inserts, led by a fresh device.
pub fn leader_db(dir: &TempDir, library_id: Uuid, n: u64) -> (Database, TransactionManager) {
    leader_db_with(dir, library_id, n, &Default::default())
}

/// [`leader_db`], the database opened with `options`.
pub fn leader_db_with(
    dir: &TempDir,
    library_id: Uuid,
    n: u64,
    options: &lsync_storage::StorageOptions,
) -> (Database, TransactionManager) {
    let device = Uuid::new_v4();
    let db = Database::open(&dir.path().join("leader.db"), options, ModelRegistry::with_builtin())
        .expect("open leader db");
    db.init_sync_state(&SyncState {
        library_id,
        device_id: device,
        role: SyncRole::Leader,
        current_term: 1,
        voted_for: Some(device),
        leader_device: Some(device),
        last_synced_sequence: 0,
    })
    .expect("init");
    let tm = TransactionManager::new(db.clone(), device);
    let changes: Vec<_> = (0..n)
        .map(|i| {
            Change::insert(&Tag { id: format!("t{i}"), name: format!("tag {i}"), color: None })
        })
        .collect();
    if n > 0 {
        tm.commit_batch(changes).expect("commit");
    }
    (db, tm)
}

/// An empty follower database.
pub fn follower_db(dir: &TempDir, library_id: Uuid, leader: Uuid) -> Database {
    let db = Database::open(
        &dir.path().join("follower.db"),
        &Default::default(),
        ModelRegistry::with_builtin(),
    )
    .expect("open follower db");
    db.init_sync_state(&SyncState {
        library_id,
        device_id: Uuid::new_v4(),
        role: SyncRole::Follower,
        current_term: 1,
        voted_for: None,
        leader_device: Some(leader),
        last_synced_sequence: 0,
    })
    .expect("init");
    db
}

type Script = dyn Fn(usize, &SyncMessage) -> Result<SyncMessage, NetworkError> + Send + Sync;

/// A transport that records every request and answers with a script
/// (called with the request's index and the request).
pub struct ScriptedTransport {
    pub requests: Mutex<Vec<(PeerId, SyncMessage)>>,
    script: Box<Script>,
}

impl ScriptedTransport {
    pub fn new(
        script: impl Fn(usize, &SyncMessage) -> Result<SyncMessage, NetworkError>
            + Send
            + Sync
            + 'static,
    ) -> Arc<Self> {
        Arc::new(Self { requests: Mutex::new(Vec::new()), script: Box::new(script) })
    }

    /// The requests of one kind, in order.
    pub fn sent(&self, kind: &str) -> Vec<SyncMessage> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, m)| m.kind() == kind)
            .map(|(_, m)| m.clone())
            .collect()
    }
}

impl Transport for ScriptedTransport {
    fn request(
        &self,
        peer: PeerId,
        msg: SyncMessage,
    ) -> BoxFuture<Result<SyncMessage, NetworkError>> {
        let i = {
            let mut r = self.requests.lock().unwrap();
            r.push((peer, msg.clone()));
            r.len() - 1
        };
        let res = (self.script)(i, &msg);
        Box::pin(async move { res })
    }
}

/// Waits (polling, generous deadline) until `cond` holds.
pub async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// A conflict record (docs/architecture.md, "Conflicts") of tag `t1` with id `id` and
/// `outcome`: a patch of `name`, based on version 1, decided against version 2.
pub fn conflict(id: &str, outcome: lsync_storage::ConflictOutcome) -> lsync_storage::Conflict {
    let device = Uuid::from_u128(0x33);
    lsync_storage::Conflict {
        id: id.into(),
        model_type: "tag".into(),
        record_id: "t1".into(),
        policy: lsync_storage::ConflictPolicy::LastWriterWins,
        outcome,
        fields: vec!["name".into()],
        kept: vec!["name".into()],
        taken: vec![],
        change_type: "patch".into(),
        base_version: 1,
        current_version: 2,
        stored: Vec::new(),
        stored_hlc: None,
        proposed: Vec::new(),
        proposed_hlc: lsync_protocol::Hlc { physical_ms: 5, counter: 0, device },
        origin_device: device,
        proposal_id: Uuid::from_u128(0x44),
        decided_at_ms: 7,
    }
}
