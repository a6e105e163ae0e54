//! The hash chain in storage (docs/protocol.md, "The hash chain"): every write path stores each
//! entry's link computed from the previous row's, the applier refuses a carried hash that
//! differs, and a database of the previous schema gets its chain at open.

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel_migrations::{FileBasedMigrations, MigrationHarness};
use lsync_protocol::{chain_hash, ChainHash, Configuration, FEATURE_VERSION};
use lsync_storage::{BulkOperation, Change, Database, SqliteConnection, StorageError, SyncLog};
use tempfile::TempDir;
use uuid::Uuid;

use crate::common::*;

/// Every stored hash, checked against the chain computed from the entries themselves.
fn assert_chained(db: &Database) -> ChainHash {
    let entries = db.fetch_since(0, u64::MAX / 2).unwrap();
    let mut prev = ChainHash::GENESIS;
    for e in &entries {
        let computed = chain_hash(&prev, e);
        assert_eq!(e.hash, Some(computed), "sequence {}", e.sequence);
        prev = computed;
    }
    assert_eq!(db.head().unwrap().hash, prev);
    assert_eq!(db.head().unwrap().position.sequence, entries.len() as u64);
    prev
}

#[test]
fn every_leader_write_path_stores_the_chain_and_returns_the_hashes() {
    let dir = TempDir::new().unwrap();
    let l = leader(&dir, registry(false));
    let mut events = l.tm.subscribe();
    assert_eq!(l.db.head().unwrap().hash, ChainHash::GENESIS);
    let config =
        l.tm.commit_config(&Configuration::new(FEATURE_VERSION, vec![voter(l.device_id)])).unwrap();
    let batch = l.tm.commit_batch(vec![
        Change::insert(&tag("a", "A")),
        Change::insert(&tag("b", "B")),
        Change::update(&tag("a", "A2")),
    ]);
    let batch = batch.unwrap();
    let proposal =
        l.tm.commit_proposal(
            Uuid::new_v4(),
            l.device_id,
            vec![Change::delete::<lsync_storage::Tag>("b")],
        )
        .unwrap();
    let bulk = l.tm.commit_bulk(BulkOperation {
        model_type: "location".into(),
        record_id: "l1".into(),
        data: vec![1, 2, 3],
    });
    let bulk = bulk.unwrap();
    let head = assert_chained(&l.db);
    // The entries handed back carry their hash, as stored.
    let stored = l.db.fetch_since(0, 100).unwrap();
    let mut returned = vec![config];
    returned.extend(batch);
    returned.extend(proposal.entries);
    returned.push(bulk);
    assert_eq!(returned, stored);
    assert_eq!(head, stored.last().unwrap().hash.unwrap());
    // Each commit event names the hash its entries extend.
    let mut seen = 0;
    while let Ok(event) = events.try_recv() {
        let expected = l.db.hash_at(event.first_sequence - 1).unwrap().unwrap();
        assert_eq!(event.prev_hash, expected, "event at {}", event.first_sequence);
        let carried = event.entries.unwrap();
        assert_eq!(&carried[..], &stored[event.first_sequence as usize - 1..][..carried.len()]);
        seen += 1;
    }
    assert_eq!(seen, 4);
    assert_eq!(l.db.hash_at(0).unwrap(), Some(ChainHash::GENESIS));
    assert_eq!(l.db.hash_at(99).unwrap(), None);
}

#[test]
fn a_follower_stores_the_same_chain_and_reports_its_head_hash() {
    let dir = TempDir::new().unwrap();
    let l = leader(&dir, registry(false));
    for i in 0..30 {
        l.tm.commit(Change::insert(&tag(&format!("t{i}"), "x"))).unwrap();
    }
    let f = follower(&dir, "f", &l, registry(false));
    let first = l.db.fetch_since(0, 10).unwrap();
    let outcome = f.apply(&first).unwrap();
    assert_eq!(outcome.last_hash, first[9].hash.unwrap());
    catch_up(&l.db, &f, 7);
    assert_eq!(assert_chained(f.database()), assert_chained(&l.db));
    assert_eq!(f.database().dump().unwrap(), l.db.dump().unwrap());
    // An empty batch reports the head too.
    assert_eq!(f.apply(&[]).unwrap().last_hash, l.db.head().unwrap().hash);
}

#[test]
fn entries_without_a_hash_get_the_computed_one() {
    let dir = TempDir::new().unwrap();
    let l = leader(&dir, registry(false));
    let f = follower(&dir, "f", &l, registry(false));
    let entries: Vec<_> =
        (1..=3).map(|s| entry(s, 1, Change::insert(&tag(&format!("t{s}"), "x")), 1)).collect();
    assert!(entries.iter().all(|e| e.hash.is_none()));
    f.apply(&entries).unwrap();
    assert_chained(f.database());
}

/// A new entry whose carried hash is not the one this log computes is refused, with its whole
/// batch: nothing is written.
#[test]
fn a_new_entry_carrying_another_hash_is_refused_and_nothing_changes() {
    let dir = TempDir::new().unwrap();
    let l = leader(&dir, registry(false));
    for i in 0..5 {
        l.tm.commit(Change::insert(&tag(&format!("t{i}"), "x"))).unwrap();
    }
    let f = follower(&dir, "f", &l, registry(false));
    catch_up(&l.db, &f, 100);
    let before = f.database().dump().unwrap();
    let mut next = vec![
        entry(6, 1, Change::insert(&tag("n6", "x")), 1),
        entry(7, 1, Change::insert(&tag("n7", "x")), 1),
    ];
    let good6 = chain_hash(&l.db.head().unwrap().hash, &next[0]);
    next[0].hash = Some(good6);
    next[1].hash = Some(ChainHash([9; 32]));
    let err = f.apply(&next).unwrap_err();
    match err {
        StorageError::ChainMismatch { sequence, carried, computed } => {
            assert_eq!(sequence, 7);
            assert_eq!(carried, ChainHash([9; 32]));
            assert_eq!(computed, chain_hash(&good6, &next[1]));
        }
        other => panic!("expected ChainMismatch, got {other:?}"),
    }
    assert_eq!(f.database().dump().unwrap(), before);
    // The same batch with the right hash applies.
    next[1].hash = Some(chain_hash(&good6, &next[1]));
    assert_eq!(f.apply(&next).unwrap().applied, 2);
}

/// The case terms cannot see: the leader lost its last transactions and wrote other entries at
/// the same (sequence, term). A follower holding the lost ones refuses the new ones, whether it
/// meets them as duplicates of its own or as entries after them.
#[test]
fn a_reused_sequence_and_term_with_other_content_is_a_chain_mismatch() {
    let dir = TempDir::new().unwrap();
    let l = leader(&dir, registry(false));
    for i in 0..3 {
        l.tm.commit(Change::insert(&tag(&format!("t{i}"), "x"))).unwrap();
    }
    let f = follower(&dir, "f", &l, registry(false));
    catch_up(&l.db, &f, 100);
    // The leader "loses" entry 3 and commits another one at (3, 1), then entry 4.
    l.db.with_writer(|conn| SyncLog::truncate_after(conn, 2).map(|_| ())).unwrap();
    l.db.write(|conn| {
        diesel::sql_query("DELETE FROM tag WHERE id = 't2'").execute(conn)?;
        Ok(())
    })
    .unwrap();
    l.tm.commit(Change::insert(&tag("other", "y"))).unwrap();
    l.tm.commit(Change::insert(&tag("after", "y"))).unwrap();
    let theirs = l.db.fetch_since(2, 10).unwrap();
    assert_eq!((theirs[0].sequence, theirs[0].term), (3, 1));
    let before = f.database().dump().unwrap();
    // As a duplicate of its own entry 3 (same term: terms alone would skip it).
    match f.apply(&theirs).unwrap_err() {
        StorageError::ChainMismatch { sequence: 3, carried, computed } => {
            assert_eq!(carried, theirs[0].hash.unwrap());
            assert_eq!(computed, f.database().head().unwrap().hash);
        }
        other => panic!("expected ChainMismatch at 3, got {other:?}"),
    }
    // As the entry after its entry 3.
    match f.apply(&theirs[1..]).unwrap_err() {
        StorageError::ChainMismatch { sequence: 4, .. } => {}
        other => panic!("expected ChainMismatch at 4, got {other:?}"),
    }
    assert_eq!(f.database().dump().unwrap(), before);
}

#[test]
fn appends_after_a_truncation_chain_from_the_new_last_entry() {
    let dir = TempDir::new().unwrap();
    let db = open(&dir, "log", registry(false));
    db.write(|conn| {
        for s in 1..=10 {
            SyncLog::append(conn, &entry(s, 1, Change::insert(&tag(&format!("t{s}"), "x")), 1))?;
        }
        SyncLog::truncate_after(conn, 6)?;
        let e = entry(7, 2, Change::insert(&tag("again", "x")), 1);
        let hash = SyncLog::append(conn, &e)?;
        let prev = SyncLog::hash_at(conn, 6)?.unwrap();
        assert_eq!(hash, chain_hash(&prev, &e));
        // Cleared entirely: the next first entry chains from the genesis hash.
        SyncLog::truncate_after(conn, 0)?;
        let e = entry(1, 3, Change::insert(&tag("first", "x")), 1);
        assert_eq!(SyncLog::append(conn, &e)?, chain_hash(&ChainHash::GENESIS, &e));
        Ok(())
    })
    .unwrap();
    assert_chained(&db);
}

/// The migrations before the hash chain, applied to a new database at `path`.
pub fn create_previous_schema(path: &std::path::Path) -> SqliteConnection {
    let dir = TempDir::new().unwrap();
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    for migration in std::fs::read_dir(&source).unwrap() {
        let migration = migration.unwrap();
        let name = migration.file_name().into_string().unwrap();
        // the chain's and everything later that changes `sync_log` (or builds on those)
        let later = ["_chain", "_conflicts", "_tombstones", "_field_clock_without_rowid"];
        if later.iter().any(|m| name.ends_with(m)) {
            continue;
        }
        let target = dir.path().join(&name);
        std::fs::create_dir(&target).unwrap();
        for file in ["up.sql", "down.sql"] {
            std::fs::copy(migration.path().join(file), target.join(file)).unwrap();
        }
    }
    let mut conn = SqliteConnection::establish(path.to_str().unwrap()).unwrap();
    conn.batch_execute("PRAGMA journal_mode = WAL;").unwrap();
    let migrations = FileBasedMigrations::from_path(dir.path()).unwrap();
    conn.run_pending_migrations(migrations).unwrap();
    conn
}

/// A database written before the hash chain existed (the previous migrations, rows without a
/// hash) gets the same chain at open as if it had been written with it — over more rows than
/// one filling batch.
#[test]
fn a_database_of_the_previous_schema_gets_its_chain_at_open() {
    let dir = TempDir::new().unwrap();
    // The reference: the same log written by this version.
    let l = leader(&dir, registry(false));
    let changes: Vec<_> =
        (0..4500).map(|i| Change::insert(&tag(&format!("t{i}"), &format!("n{i}")))).collect();
    for chunk in changes.chunks(500) {
        l.tm.commit_batch(chunk.to_vec()).unwrap();
    }
    let reference = assert_chained(&l.db);
    let reference_path = l.db.path().to_owned();

    let old_path = dir.path().join("old.db");
    let mut old = create_previous_schema(&old_path);
    assert!(diesel::sql_query("SELECT hash FROM sync_log").execute(&mut old).is_err());
    old.batch_execute(&format!(
        "ATTACH DATABASE '{}' AS reference;
         INSERT INTO sync_log SELECT sequence, term, origin_device, timestamp_ms, model_type,
             record_id, change_type, version, data, proposal_id FROM reference.sync_log;
         INSERT INTO tag SELECT * FROM reference.tag;
         INSERT INTO sync_state (id, library_id, device_id, role, current_term,
             leader_device, last_synced_sequence) SELECT id, library_id, device_id, role,
             current_term, leader_device, last_synced_sequence FROM reference.sync_state;
         DETACH DATABASE reference;",
        reference_path.display()
    ))
    .unwrap();
    drop(old);

    let db = Database::open(&old_path, &Default::default(), registry(false)).unwrap();
    assert_eq!(assert_chained(&db), reference);
    assert_eq!(db.dump().unwrap(), l.db.dump().unwrap());
    // Opening again finds nothing to fill, and the chain goes on from the filled head.
    drop(db);
    let db = Database::open(&old_path, &Default::default(), registry(false)).unwrap();
    let tm = lsync_storage::TransactionManager::new(db.clone(), l.device_id);
    tm.commit(Change::insert(&tag("new", "x"))).unwrap();
    assert_chained(&db);
    let report = lsync_storage::verify(&old_path, &registry(false)).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(report.entries, 4501);
}

/// A fill cut short (the rows after some point still without a hash, as after a crash between
/// two batches) is completed at the next open.
#[test]
fn a_partly_filled_chain_is_completed_at_the_next_open() {
    let dir = TempDir::new().unwrap();
    let l = leader(&dir, registry(false));
    for i in 0..50 {
        l.tm.commit(Change::insert(&tag(&format!("t{i}"), "x"))).unwrap();
    }
    let head = assert_chained(&l.db);
    let path = l.db.path().to_owned();
    drop(l);
    let mut conn = SqliteConnection::establish(path.to_str().unwrap()).unwrap();
    diesel::sql_query("UPDATE sync_log SET hash = NULL WHERE sequence > 20")
        .execute(&mut conn)
        .unwrap();
    drop(conn);
    let report = lsync_storage::verify(&path, &registry(false)).unwrap();
    assert_eq!(report.first_bad_sequence(), Some(21), "{:?}", report.problems);
    let db = Database::open(&path, &Default::default(), registry(false)).unwrap();
    assert_eq!(assert_chained(&db), head);
}
