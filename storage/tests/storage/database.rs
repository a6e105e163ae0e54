//! Database: opening, sync state, devices, dump.

use std::time::Duration;

use lsync_protocol::SyncRole;
use lsync_storage::{
    Change, Database, Device, ModelRegistry, StorageError, StorageOptions, SyncState, Synchronous,
};
use tempfile::TempDir;
use uuid::Uuid;

use crate::common::*;

#[test]
fn open_creates_parent_directories_and_tables() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("data/libraries/lib.db");
    let options =
        StorageOptions { synchronous: Synchronous::Full, busy_timeout: Duration::from_millis(100) };
    let db = Database::open(&path, &options, ModelRegistry::with_builtin()).unwrap();
    assert!(path.exists());
    assert_eq!(db.path(), path);
    assert_eq!(db.registry().model_types(), ["location", "lsync.conflict", "tag"]);
    let dump = db.dump().unwrap();
    assert_eq!(
        dump.keys().collect::<Vec<_>>(),
        vec!["location", "lsync_conflict", "sync_log", "tag"]
    );
    let mode = db
        .with_reader(|conn| {
            use diesel::prelude::*;
            #[derive(QueryableByName)]
            struct Mode {
                #[diesel(sql_type = diesel::sql_types::Text)]
                journal_mode: String,
            }
            Ok(diesel::sql_query("PRAGMA journal_mode").get_result::<Mode>(conn)?.journal_mode)
        })
        .unwrap();
    assert_eq!(mode, "wal");
    // Opening again runs no migration twice.
    drop(db);
    Database::open(&path, &options, ModelRegistry::with_builtin()).unwrap();
    // A registry of no host model lists only the log and lsync's own conflict records.
    let db = Database::open(&path, &options, ModelRegistry::new()).unwrap();
    assert_eq!(db.dump().unwrap().keys().collect::<Vec<_>>(), vec!["lsync_conflict", "sync_log"]);
}

#[test]
fn sync_state_init_is_idempotent() {
    let dir = TempDir::new().unwrap();
    let db = open(&dir, "db", registry(false));
    assert!(matches!(db.sync_state(), Err(StorageError::NotInitialized)));
    assert!(matches!(
        db.set_leadership(SyncRole::Leader, 1, None),
        Err(StorageError::NotInitialized)
    ));
    let me = Uuid::new_v4();
    let first = state(Uuid::new_v4(), me, SyncRole::Follower, None);
    db.init_sync_state(&first).unwrap();
    assert_eq!(db.sync_state().unwrap(), first);
    db.init_sync_state(&state(Uuid::new_v4(), me, SyncRole::Leader, Some(me))).unwrap();
    assert_eq!(db.sync_state().unwrap(), first);

    let other = Uuid::new_v4();
    db.set_vote(7, Some(other)).unwrap();
    db.set_leadership(SyncRole::Follower, 7, Some(other)).unwrap();
    let s = db.sync_state().unwrap();
    assert_eq!(
        (s.role, s.current_term, s.voted_for, s.leader_device),
        (SyncRole::Follower, 7, Some(other), Some(other))
    );
    assert!(matches!(db.set_vote(u64::MAX, None), Err(StorageError::InvalidChange(_))));
}

#[test]
fn devices_upsert_list_get_remove() {
    let dir = TempDir::new().unwrap();
    let db = open(&dir, "db", registry(false));
    let mut a = Device {
        device_id: Uuid::from_u128(1),
        peer_id: "12D3KooWA".into(),
        addresses: vec!["/ip4/127.0.0.1/tcp/4001".into(), "/ip6/::1/tcp/4001".into()],
        name: "laptop".into(),
    };
    let b = Device {
        device_id: Uuid::from_u128(2),
        peer_id: "12D3KooWB".into(),
        addresses: vec![],
        name: "phone".into(),
    };
    db.upsert_device(&b).unwrap();
    db.upsert_device(&a).unwrap();
    assert_eq!(db.devices().unwrap(), vec![a.clone(), b.clone()]);
    a.addresses.pop();
    a.name = "laptop 2".into();
    db.upsert_device(&a).unwrap();
    assert_eq!(db.device(a.device_id).unwrap(), Some(a.clone()));
    assert!(db.remove_device(b.device_id).unwrap());
    assert!(!db.remove_device(b.device_id).unwrap());
    assert_eq!(db.devices().unwrap(), vec![a]);
    assert_eq!(db.device(b.device_id).unwrap(), None);
}

#[test]
fn dump_renders_quoted_rows_in_key_order() {
    let dir = TempDir::new().unwrap();
    let l = leader(&dir, registry(false));
    l.tm.commit_batch(vec![
        Change::insert(&lsync_storage::Tag {
            id: "b".into(),
            name: "it's".into(),
            color: Some("#fff".into()),
        }),
        Change::insert(&tag("a", "plain")),
    ])
    .unwrap();
    let dump = l.db.dump().unwrap();
    assert_eq!(
        dump["tag"],
        vec!["'a'|'plain'|NULL|1".to_owned(), "'b'|'it''s'|'#fff'|1".to_owned()]
    );
    assert_eq!(dump["sync_log"].len(), 2);
    assert!(dump["sync_log"][0].starts_with("1|1|'"), "{}", dump["sync_log"][0]);
    assert!(dump["sync_log"][0].contains("|'tag'|'b'|'insert'|1|X'"), "{}", dump["sync_log"][0]);
    assert!(dump["note"].is_empty());
}

#[test]
fn writer_recovers_from_a_panic() {
    let dir = TempDir::new().unwrap();
    let l = leader(&dir, registry(false));
    l.tm.commit(Change::insert(&tag("t1", "one"))).unwrap();
    let db = l.db.clone();
    let result = std::thread::spawn(move || {
        db.write(|conn| -> lsync_storage::Result<()> {
            lsync_storage::SyncLog::truncate_after(conn, 0)?;
            panic!("boom inside a transaction (expected by this test)")
        })
    })
    .join();
    assert!(result.is_err());
    // The half-done transaction was dropped with the connection.
    assert_eq!(l.db.last_position().unwrap().sequence, 1);
    assert_eq!(l.tm.commit(Change::insert(&tag("t2", "two"))).unwrap().sequence, 2);
}

#[test]
fn handles_are_send_and_sync() {
    fn assert_send_sync<T: Send + Sync + Clone + 'static>() {}
    assert_send_sync::<Database>();
    assert_send_sync::<lsync_storage::TransactionManager>();
    assert_send_sync::<lsync_storage::Applier>();
    assert_send_sync::<ModelRegistry>();
}

#[test]
fn a_background_thread_checkpoints_the_wal_and_stops_with_the_database() {
    let dir = TempDir::new().unwrap();
    let l = leader(&dir, registry(false));
    let file = l.db.path().to_owned();
    let size = || std::fs::metadata(&file).unwrap().len();
    let initial = size();
    // 200 commits of 20 changes: some 2,000 WAL pages at most, below SQLite's own automatic
    // checkpoint (10,000 pages), so only the background checkpointer copies them back.
    for batch in 0..200 {
        let changes =
            (0..20).map(|i| Change::insert(&tag(&format!("t{batch}-{i}"), "name"))).collect();
        l.tm.commit_batch(changes).unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while l.db.background_checkpoints() == 0 || size() <= initial {
        assert!(std::time::Instant::now() < deadline, "no background checkpoint within 60 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(l.db.last_position().unwrap().sequence, 4_000);

    // Dropping the last handle stops and joins the thread (its connection closes): the file
    // reopens, and nothing was lost.
    let path = l.db.path().to_owned();
    drop(l);
    let reopened = Database::open(&path, &StorageOptions::default(), registry(false)).unwrap();
    assert_eq!(reopened.last_position().unwrap().sequence, 4_000);
    assert_eq!(reopened.dump().unwrap()["tag"].len(), 4_000);
}

#[test]
fn set_last_synced_updates_the_row_and_refuses_a_missing_one() {
    use lsync_storage::sync_state::set_last_synced;
    let dir = TempDir::new().unwrap();
    let db = open(&dir, "l", ModelRegistry::with_builtin());
    assert!(matches!(
        db.with_writer(|conn| set_last_synced(conn, 5)),
        Err(StorageError::NotInitialized)
    ));
    let initial = state(Uuid::new_v4(), Uuid::new_v4(), SyncRole::Follower, None);
    db.init_sync_state(&initial).unwrap();
    for n in [5, 6, u64::from(u32::MAX) + 1] {
        db.with_writer(|conn| set_last_synced(conn, n)).unwrap();
        assert_eq!(db.sync_state().unwrap(), SyncState { last_synced_sequence: n, ..initial });
    }
    assert!(db.with_writer(|conn| set_last_synced(conn, u64::MAX)).is_err());
    assert_eq!(db.sync_state().unwrap().last_synced_sequence, u64::from(u32::MAX) + 1);
}

/// A follower's applied batch is under its mark before `apply` returns (what it then
/// acknowledges), fsynced first under `synchronous = NORMAL`; a database put back behind it
/// is found behind its mark.
#[test]
fn an_applied_batch_is_marked_before_it_is_acknowledged() {
    for synchronous in [Synchronous::Full, Synchronous::Normal] {
        let dir = TempDir::new().unwrap();
        let l = leader(&dir, registry(false));
        for i in 0..5 {
            l.tm.commit(Change::insert(&tag(&format!("t{i}"), "x"))).unwrap();
        }
        let path = dir.path().join("f.db");
        let options = StorageOptions { synchronous, ..StorageOptions::default() };
        let db = Database::open(&path, &options, registry(false)).unwrap();
        db.init_sync_state(&state(
            l.library_id,
            Uuid::new_v4(),
            SyncRole::Follower,
            Some(l.device_id),
        ))
        .unwrap();
        let f = lsync_storage::Applier::new(db.clone());
        assert_eq!(db.mark().unwrap(), None);
        let entries = l.db.fetch_since(0, 3).unwrap();
        let outcome = f.apply(&entries).unwrap();
        assert_eq!(db.mark().unwrap(), Some(outcome.last), "{synchronous:?}");
        let synced = db.syncs();
        assert_eq!(synced, u64::from(synchronous == Synchronous::Normal), "{synchronous:?}");
        // applying the same batch again marks nothing new (no second fsync)
        f.apply(&entries).unwrap();
        assert_eq!(db.syncs(), synced);
        let rest = l.db.fetch_since(3, 10).unwrap();
        let last = f.apply(&rest).unwrap().last;
        assert_eq!(db.mark().unwrap(), Some(last));
        // The database is put back to an empty log (as a restore would): behind its mark.
        f.reset().unwrap();
        assert_eq!(db.last_position().unwrap(), lsync_storage::LogPosition::default());
        assert_eq!(db.election_floor().unwrap(), last, "{synchronous:?}");
    }
}

/// A leader's commit is under its mark at once under `synchronous = FULL` (it is on disk);
/// under `NORMAL` it is not (not on disk yet): the fsynced mark follows at heartbeats.
#[test]
fn a_leader_commit_is_marked_only_when_it_is_on_disk() {
    for synchronous in [Synchronous::Full, Synchronous::Normal] {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("l.db");
        let options = StorageOptions { synchronous, ..StorageOptions::default() };
        let db = Database::open(&path, &options, registry(false)).unwrap();
        let device = Uuid::new_v4();
        db.init_sync_state(&state(Uuid::new_v4(), device, SyncRole::Leader, Some(device))).unwrap();
        let tm = lsync_storage::TransactionManager::new(db.clone(), device);
        let entry = tm.commit(Change::insert(&tag("t", "x"))).unwrap();
        let held = lsync_storage::LogPosition::of(&entry);
        let expected = (synchronous == Synchronous::Full).then_some(held);
        assert_eq!(db.mark().unwrap(), expected, "{synchronous:?}");
        assert_eq!(db.syncs(), 0, "no fsync beyond the commit's own");
        assert_eq!(db.raise_mark().unwrap(), held);
        assert_eq!(db.mark().unwrap(), Some(held));
    }
}

/// What a power loss may leave of the acknowledgement mark (written without an fsync) — a torn
/// file — reads as no mark: the fsynced mark still holds, and nothing refuses to start.
#[test]
fn a_torn_acknowledgement_mark_falls_back_to_the_fsynced_one() {
    let dir = TempDir::new().unwrap();
    let l = leader(&dir, registry(false));
    l.tm.commit(Change::insert(&tag("t", "x"))).unwrap();
    let held = l.db.raise_mark().unwrap();
    l.tm.commit(Change::insert(&tag("u", "x"))).unwrap();
    let later = l.db.mark().unwrap().expect("marked at commit");
    assert!(later > held);
    std::fs::write(lsync_storage::sync_state::ack_mark_path(l.db.path()), b"lsync high-wa")
        .unwrap();
    assert_eq!(l.db.mark().unwrap(), Some(held));
}

/// The high-water mark carries the chain hash of its entry (docs/architecture.md, "Restores
/// are detected"): a database whose log holds another entry at the mark's sequence — here the
/// data of another device of the same term under this device's mark files, as a copied data
/// directory leaves it — is found diverged even though its log reaches the mark: its election
/// floor is past every position of the mark's term, a heartbeat's `raise_mark` does not raise
/// the mark past it, and only an acknowledgement of more entries (applied from a leader, their
/// chain checked) or a newer term ends it.
#[test]
fn a_log_holding_another_history_at_its_marks_sequence_is_found_diverged() {
    use lsync_storage::mark::{ack_mark_path, mark_path};
    use lsync_storage::{LogPosition, Mark, MarkState};
    let dir = TempDir::new().unwrap();
    let l = leader(&dir, registry(false));
    for i in 0..5 {
        l.tm.commit(Change::insert(&tag(&format!("a{i}"), "x"))).unwrap();
    }
    let f = follower(&dir, "f", &l, registry(false));
    catch_up(&l.db, &f, 100);
    let fdb = f.database();
    fdb.raise_mark().unwrap();
    let head = fdb.head().unwrap();
    // acknowledged and raised: both files hold the head's position and its hash
    assert_eq!(fdb.high_water_mark().unwrap(), Some(Mark::from(head)));
    assert_eq!(lsync_storage::mark::read_mark(&mark_path(fdb.path())).unwrap(), Some(head.into()));
    assert_eq!(fdb.mark_state().unwrap(), MarkState::Clear);
    assert_eq!(fdb.election_floor().unwrap(), head.position);

    // another device's log of the same term, one entry longer, under this device's mark files
    // (opened afresh, as a device starts on a copied data directory)
    let other_dir = TempDir::new().unwrap();
    let other = leader(&other_dir, registry(false));
    for i in 0..6 {
        other.tm.commit(Change::insert(&tag(&format!("b{i}"), "y"))).unwrap();
    }
    let path = other.db.path().to_owned();
    drop(other);
    for file in [mark_path, ack_mark_path] {
        std::fs::copy(file(fdb.path()), file(&path)).unwrap();
    }
    let odb = Database::open(&path, &StorageOptions::default(), registry(false)).unwrap();
    let found = odb.with_reader(|c| lsync_storage::SyncLog::hash_at(c, head.position.sequence));
    let found = found.unwrap().unwrap();
    assert_ne!(found, head.hash, "another history at the mark's sequence");
    let last = odb.head().unwrap();
    assert!(last.position > head.position, "past the mark by position");
    let diverged =
        MarkState::Diverged { mark: Mark::from(head), found_term: head.position.term, found };
    assert_eq!(odb.mark_state().unwrap(), diverged);
    let floor = odb.election_floor().unwrap();
    assert_eq!(floor, LogPosition { term: head.position.term, sequence: u64::MAX });
    assert!(last.position < floor, "it does not campaign");
    // a heartbeat's raise leaves the mark where it is
    assert_eq!(odb.raise_mark().unwrap(), head.position);
    assert_eq!(odb.high_water_mark().unwrap(), Some(Mark::from(head)));
    assert_eq!(odb.mark_state().unwrap(), diverged);
    // an acknowledgement of its last entry (what a follower does once it applied entries a
    // leader sent on top of its log, the chain checked) marks that entry, with its hash: over
    odb.acknowledge(last.position).unwrap();
    assert_eq!(odb.high_water_mark().unwrap(), Some(Mark::from(last)));
    assert_eq!(odb.mark_state().unwrap(), MarkState::Clear);
    assert_eq!(odb.election_floor().unwrap(), last.position);
}

/// A mark file written before the hash chain (`lsync high-water mark 1`, a position alone) is
/// read as before: compared by position only — behind below it, clear at or past it.
#[test]
fn a_mark_file_without_a_hash_is_compared_by_position_as_before() {
    use lsync_storage::mark::{ack_mark_path, mark_path};
    use lsync_storage::{LogPosition, MarkState};
    let dir = TempDir::new().unwrap();
    let l = leader(&dir, registry(false));
    for i in 0..5 {
        l.tm.commit(Change::insert(&tag(&format!("a{i}"), "x"))).unwrap();
    }
    let _ = std::fs::remove_file(ack_mark_path(l.db.path()));
    let last = l.db.last_position().unwrap();
    let old =
        |p: LogPosition| format!("lsync high-water mark 1\nposition {} {}\n", p.term, p.sequence);
    std::fs::write(mark_path(l.db.path()), old(last)).unwrap();
    assert_eq!(l.db.mark().unwrap(), Some(last));
    assert_eq!(l.db.mark_state().unwrap(), MarkState::Clear);
    let ahead = LogPosition { term: last.term, sequence: last.sequence + 3 };
    std::fs::write(mark_path(l.db.path()), old(ahead)).unwrap();
    assert!(
        matches!(l.db.mark_state().unwrap(), MarkState::Behind { mark } if mark.position == ahead && mark.hash.is_none())
    );
    assert_eq!(l.db.election_floor().unwrap(), ahead);
}

/// The configuration this device last knew (docs/architecture.md, "Restores are detected"):
/// kept beside the mark files whenever a newer one is in effect, read back as written, never
/// taken back by a database put back to an older copy — whose configuration lacks the devices
/// that joined since, which are then admitted while it is behind its mark. A device whose
/// files predate it (no members file) admits no one beyond its configuration, as before.
#[test]
fn the_configuration_last_known_is_kept_beside_the_marks_and_admits_its_members_when_restored() {
    use lsync_protocol::{Configuration, Member, FEATURE_VERSION};
    use lsync_storage::mark::{members_path, read_members, MarkedConfiguration};
    use lsync_storage::{LogPosition, MarkState};
    let dir = TempDir::new().unwrap();
    let l = leader(&dir, registry(false));
    let path = members_path(l.db.path());
    // a library without configuration entries keeps none
    assert!(!l.db.mark_configuration().unwrap());
    assert_eq!(l.db.marked_configuration().unwrap(), None);

    // the founder alone
    let founder = voter(l.device_id);
    let alone = Configuration::new(FEATURE_VERSION, vec![founder.clone()]);
    let first = l.tm.commit_config(&alone).unwrap();
    assert!(l.db.mark_configuration().unwrap(), "a newer configuration is written");
    let at_first = LogPosition::of(&first);
    let kept = MarkedConfiguration { position: at_first, configuration: alone.clone() };
    assert_eq!(l.db.marked_configuration().unwrap(), Some(kept.clone()));
    assert_eq!(read_members(&path).unwrap(), Some(kept));
    let written = std::fs::metadata(&path).unwrap().modified().unwrap();
    assert!(!l.db.mark_configuration().unwrap(), "unchanged: nothing written");
    assert_eq!(std::fs::metadata(&path).unwrap().modified().unwrap(), written);
    for i in 0..3 {
        l.tm.commit(Change::insert(&tag(&format!("a{i}"), "x"))).unwrap();
    }
    assert!(!l.db.mark_configuration().unwrap(), "data entries change nothing");

    // a copy of the founder's database, taken while it was alone
    let copy = dir.path().join("copy");
    std::fs::create_dir_all(&copy).unwrap();
    let db_path = l.db.path().to_owned();
    let name = db_path.file_name().unwrap().to_str().unwrap().to_owned();
    l.db.write(|_| {
        for suffix in ["", "-wal"] {
            let from = dir.path().join(format!("{name}{suffix}"));
            if from.exists() {
                std::fs::copy(&from, copy.join(format!("{name}{suffix}"))).unwrap();
            }
        }
        Ok(())
    })
    .unwrap();

    // two devices join; more is written and marked
    let (b, c) = (voter(Uuid::new_v4()), voter(Uuid::new_v4()));
    let three = Configuration::new(FEATURE_VERSION, vec![founder, b.clone(), c.clone()]);
    let joined = l.tm.commit_config(&three).unwrap();
    assert!(l.db.mark_configuration().unwrap());
    let at_joined = LogPosition::of(&joined);
    let kept = MarkedConfiguration { position: at_joined, configuration: three.clone() };
    assert_eq!(l.db.marked_configuration().unwrap(), Some(kept.clone()));
    for i in 0..3 {
        l.tm.commit(Change::insert(&tag(&format!("b{i}"), "x"))).unwrap();
    }
    l.db.raise_mark().unwrap();
    assert_eq!(l.db.admitted_while_behind().unwrap(), Vec::<Member>::new(), "caught up");

    // the database is put back to the copy, its mark files kept
    let Leader { db, tm, .. } = l;
    drop((db, tm));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(dir.path().join(format!("{name}{suffix}")));
        let from = copy.join(format!("{name}{suffix}"));
        if from.exists() {
            std::fs::copy(&from, dir.path().join(format!("{name}{suffix}"))).unwrap();
        }
    }
    let db = Database::open(&db_path, &StorageOptions::default(), registry(false)).unwrap();
    assert!(matches!(db.mark_state().unwrap(), MarkState::Behind { .. }));
    assert_eq!(db.membership().unwrap().configuration, alone);
    // the older copy does not take the kept configuration back
    assert!(!db.mark_configuration().unwrap());
    assert_eq!(db.marked_configuration().unwrap(), Some(kept));
    // behind, with an older configuration: the members it lacks are admitted
    let joiners: Vec<Member> = three
        .members
        .iter()
        .filter(|m| [b.device_id, c.device_id].contains(&m.device_id))
        .cloned()
        .collect();
    assert_eq!(joiners.len(), 2);
    assert_eq!(db.admitted_while_behind().unwrap(), joiners);

    // files of a version before the members file: no one beyond the configuration, as before
    std::fs::remove_file(&path).unwrap();
    assert_eq!(db.marked_configuration().unwrap(), None);
    assert_eq!(db.admitted_while_behind().unwrap(), Vec::<Member>::new());
    assert!(matches!(db.mark_state().unwrap(), MarkState::Behind { .. }), "the marks still read");
    // and a restored database without the file writes its own configuration there (no newer
    // one is known)
    let reopened = Database::open(&db_path, &StorageOptions::default(), registry(false)).unwrap();
    assert!(reopened.mark_configuration().unwrap());
    assert_eq!(reopened.marked_configuration().unwrap().unwrap().position, at_first);
}
