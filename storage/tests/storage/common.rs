//! Shared fixtures: databases in temporary directories, a leader and followers, and `note`, a
//! test model whose handler can be told to fail for one record id.

use std::sync::Arc;

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use lsync_protocol::{ChangeType, SyncLogEntry, SyncRole};
use lsync_storage::{
    decode, validate_syncable, Applier, Change, Database, ModelHandler, ModelRegistry, Result,
    SqliteConnection, StorageError, StorageOptions, SyncState, Syncable, TransactionManager,
};
use serde::{Deserialize, Serialize};
use tempfile::TempDir;
use uuid::Uuid;

/// A test model stored in table `note`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Note {
    pub id: String,
    pub body: String,
}

impl Syncable for Note {
    const MODEL_TYPE: &'static str = "note";
    fn record_id(&self) -> String {
        self.id.clone()
    }
}

/// The record id for which [`NoteHandler`] fails when told to.
pub const BOOM: &str = "boom";

/// Handler of [`Note`]; with `fail` set, `apply` fails for record id [`BOOM`].
pub struct NoteHandler {
    pub fail: bool,
}

#[derive(QueryableByName)]
struct Version {
    #[diesel(sql_type = BigInt)]
    version: i64,
}

impl ModelHandler for NoteHandler {
    fn model_type(&self) -> &str {
        Note::MODEL_TYPE
    }

    fn table_name(&self) -> &str {
        "note"
    }

    fn migrate(&self, conn: &mut SqliteConnection) -> Result<()> {
        diesel::sql_query(
            "CREATE TABLE IF NOT EXISTS note (id TEXT PRIMARY KEY NOT NULL, body TEXT NOT NULL, \
             version BIGINT NOT NULL)",
        )
        .execute(conn)?;
        Ok(())
    }

    fn validate(&self, change: &Change) -> Result<()> {
        validate_syncable::<Note>(change)
    }

    fn current_version(&self, conn: &mut SqliteConnection, record_id: &str) -> Result<Option<i64>> {
        let row = diesel::sql_query("SELECT version FROM note WHERE id = ?")
            .bind::<Text, _>(record_id)
            .get_result::<Version>(conn)
            .optional()?;
        Ok(row.map(|r| r.version))
    }

    fn apply(&self, conn: &mut SqliteConnection, entry: &SyncLogEntry) -> Result<()> {
        if self.fail && entry.record_id == BOOM {
            return Err(StorageError::Corrupt("injected failure".to_owned()));
        }
        match entry.change_type {
            ChangeType::Insert | ChangeType::Update => {
                let note: Note = decode(&entry.data)?;
                diesel::sql_query("REPLACE INTO note (id, body, version) VALUES (?, ?, ?)")
                    .bind::<Text, _>(&note.id)
                    .bind::<Text, _>(&note.body)
                    .bind::<BigInt, _>(entry.version)
                    .execute(conn)?;
            }
            ChangeType::Delete => {
                diesel::sql_query("DELETE FROM note WHERE id = ?")
                    .bind::<Text, _>(&entry.record_id)
                    .execute(conn)?;
            }
            ChangeType::Bulk | ChangeType::Patch | ChangeType::Config | ChangeType::Unknown => {}
        }
        Ok(())
    }

    fn clear(&self, conn: &mut SqliteConnection) -> Result<()> {
        diesel::sql_query("DELETE FROM note").execute(conn)?;
        Ok(())
    }
}

/// Built-in models plus `note` (failing for [`BOOM`] when `fail`).
pub fn registry(fail: bool) -> ModelRegistry {
    let mut registry = ModelRegistry::with_builtin();
    registry.register(Arc::new(NoteHandler { fail }));
    registry
}

/// Opens `<dir>/<name>.db`.
pub fn open(dir: &TempDir, name: &str, registry: ModelRegistry) -> Database {
    Database::open(&dir.path().join(format!("{name}.db")), &StorageOptions::default(), registry)
        .expect("open database")
}

pub fn state(library_id: Uuid, device_id: Uuid, role: SyncRole, leader: Option<Uuid>) -> SyncState {
    SyncState {
        library_id,
        device_id,
        role,
        current_term: 1,
        voted_for: None,
        leader_device: leader,
        last_synced_sequence: 0,
    }
}

/// A leader device of a fresh library.
pub struct Leader {
    pub db: Database,
    pub tm: TransactionManager,
    pub library_id: Uuid,
    pub device_id: Uuid,
}

pub fn leader(dir: &TempDir, registry: ModelRegistry) -> Leader {
    let db = open(dir, "leader", registry);
    let library_id = Uuid::new_v4();
    let device_id = Uuid::new_v4();
    db.init_sync_state(&state(library_id, device_id, SyncRole::Leader, Some(device_id)))
        .expect("init state");
    let tm = TransactionManager::new(db.clone(), device_id);
    Leader { db, tm, library_id, device_id }
}

/// A follower device (named `name`) of `leader`'s library.
pub fn follower(dir: &TempDir, name: &str, leader: &Leader, registry: ModelRegistry) -> Applier {
    let db = open(dir, name, registry);
    db.init_sync_state(&state(
        leader.library_id,
        Uuid::new_v4(),
        SyncRole::Follower,
        Some(leader.device_id),
    ))
    .expect("init state");
    Applier::new(db)
}

/// Applies the leader's whole log to `applier` in batches of `batch`.
pub fn catch_up(leader: &Database, applier: &Applier, batch: u64) {
    loop {
        let since = applier.database().last_position().expect("last").sequence;
        let entries = leader.fetch_since(since, batch).expect("fetch");
        if entries.is_empty() {
            break;
        }
        let outcome = applier.apply(&entries).expect("apply");
        assert_eq!(outcome.applied, entries.len() as u64);
    }
}

/// A hand-made entry (for applier tests that need entries the leader would never produce).
pub fn entry(sequence: u64, term: u64, change: Change, version: i64) -> SyncLogEntry {
    SyncLogEntry {
        sequence,
        term,
        origin_device: Uuid::nil(),
        timestamp_ms: 1_700_000_000_000,
        model_type: change.model_type,
        record_id: change.record_id,
        change_type: change.change_type,
        version,
        data: change.data,
        proposal_id: None,
        hash: None,
        stamp: None,
    }
}

pub fn tag(id: &str, name: &str) -> lsync_storage::Tag {
    lsync_storage::Tag { id: id.to_owned(), name: name.to_owned(), color: None }
}

pub fn location(id: &str, path: &str) -> lsync_storage::Location {
    lsync_storage::Location { id: id.to_owned(), name: format!("loc {id}"), path: path.to_owned() }
}

pub fn note(id: &str, body: &str) -> Note {
    Note { id: id.to_owned(), body: body.to_owned() }
}

/// A member of a configuration: `device_id` with `role`, a fresh peer id (the storage crate
/// never parses it, the configuration does), a loopback address.
pub fn member(device_id: Uuid, role: lsync_protocol::MemberRole) -> lsync_protocol::Member {
    lsync_protocol::Member {
        device_id,
        peer_id: libp2p::identity::Keypair::generate_ed25519().public().to_peer_id().to_string(),
        addresses: vec!["/ip4/127.0.0.1/tcp/7700".into()],
        name: format!("device {device_id}"),
        role,
        preference: lsync_protocol::RolePreference::Auto,
    }
}

/// A voter ([`member`]).
pub fn voter(device_id: Uuid) -> lsync_protocol::Member {
    member(device_id, lsync_protocol::MemberRole::Voter)
}
