//! The leader's write path: TransactionManager.

use lsync_protocol::{ChangeType, SyncRole};
use lsync_storage::{BulkOperation, Change, Location, StorageError, Tag, TransactionManager};
use tempfile::TempDir;
use tokio::sync::broadcast::error::TryRecvError;
use uuid::Uuid;

use crate::common::*;

#[test]
fn versions_sequences_and_events() {
    let dir = TempDir::new().unwrap();
    let l = leader(&dir, registry(false));
    let mut events = l.tm.subscribe();

    let t = tag("t1", "one");
    let e1 = l.tm.commit(Change::insert(&t)).unwrap();
    assert_eq!((e1.sequence, e1.term, e1.version), (1, 1, 1));
    assert_eq!(e1.origin_device, l.device_id);
    assert_eq!(e1.change_type, ChangeType::Insert);
    assert_eq!(e1.model_type, "tag");
    assert_eq!(e1.record_id, "t1");
    assert_eq!(lsync_storage::decode::<Tag>(&e1.data).unwrap(), t);

    let entries =
        l.tm.commit_batch(vec![
            Change::update(&Tag { color: Some("#f00".into()), ..t.clone() }),
            Change::insert(&location("l1", "/a")),
            Change::delete::<Tag>("t1"),
        ])
        .unwrap();
    let got: Vec<_> = entries.iter().map(|e| (e.sequence, e.version, e.change_type)).collect();
    assert_eq!(
        got,
        vec![(2, 2, ChangeType::Update), (3, 1, ChangeType::Insert), (4, 3, ChangeType::Delete)]
    );
    assert!(entries[2].data.is_empty());

    let ev1 = events.try_recv().unwrap();
    assert_eq!(
        (ev1.library_id, ev1.term, ev1.first_sequence, ev1.last_sequence),
        (l.library_id, 1, 1, 1)
    );
    assert_eq!(ev1.prev_term, 0, "nothing before sequence 1");
    let ev2 = events.try_recv().unwrap();
    assert_eq!((ev2.first_sequence, ev2.last_sequence, ev2.prev_term), (2, 4, 1));
    // Small commits carry their entries, for the leader to send inside NewEntries.
    assert_eq!(ev2.entries.as_deref(), Some(&entries[..]));
    assert_eq!(events.try_recv(), Err(TryRecvError::Empty));

    assert_eq!(l.db.sync_state().unwrap().last_synced_sequence, 4);
    let dump = l.db.dump().unwrap();
    assert!(dump["tag"].is_empty());
    assert_eq!(dump["location"], vec!["'l1'|'loc l1'|'/a'|1".to_owned()]);
    assert_eq!(dump["sync_log"].len(), 4);
    // A re-insert after a delete starts the versions over.
    assert_eq!(l.tm.commit(Change::insert(&t)).unwrap().version, 1);
}

#[test]
fn failure_in_the_middle_of_a_batch_writes_nothing() {
    let dir = TempDir::new().unwrap();
    let l = leader(&dir, registry(true));
    l.tm.commit(Change::insert(&tag("t0", "zero"))).unwrap();
    let before = l.db.dump().unwrap();
    let mut events = l.tm.subscribe();

    let err =
        l.tm.commit_batch(vec![
            Change::insert(&tag("t1", "one")),
            Change::insert(&note("n1", "fine")),
            Change::update(&tag("t0", "zero again")),
            Change::insert(&note(BOOM, "fails")),
            Change::insert(&location("l1", "/x")),
        ])
        .unwrap_err();
    assert!(matches!(err, StorageError::Corrupt(ref m) if m == "injected failure"), "{err:?}");
    assert_eq!(l.db.dump().unwrap(), before);
    assert_eq!(l.db.last_position().unwrap().sequence, 1);
    assert_eq!(l.db.sync_state().unwrap().last_synced_sequence, 1);
    assert_eq!(events.try_recv(), Err(TryRecvError::Empty));

    // The next commit continues the log without a gap.
    assert_eq!(l.tm.commit(Change::insert(&tag("t1", "one"))).unwrap().sequence, 2);
}

#[test]
fn reopening_continues_the_log_gaplessly() {
    let dir = TempDir::new().unwrap();
    let (library_id, device_id) = {
        let l = leader(&dir, registry(false));
        for i in 0..5 {
            l.tm.commit(Change::insert(&tag(&format!("t{i}"), "x"))).unwrap();
        }
        (l.library_id, l.device_id)
    };
    // Everything dropped: open the same file again.
    let db = open(&dir, "leader", registry(false));
    let state = db.sync_state().unwrap();
    assert_eq!(
        (state.library_id, state.device_id, state.last_synced_sequence),
        (library_id, device_id, 5)
    );
    let tm = TransactionManager::new(db.clone(), device_id);
    assert_eq!(tm.commit(Change::insert(&tag("t5", "x"))).unwrap().sequence, 6);
    let batch = tm
        .commit_batch(vec![Change::update(&tag("t5", "y")), Change::delete::<Tag>("t0")])
        .unwrap();
    assert_eq!(batch.iter().map(|e| e.sequence).collect::<Vec<_>>(), vec![7, 8]);
    let all = db.fetch_since(0, 1000).unwrap();
    assert_eq!(all.iter().map(|e| e.sequence).collect::<Vec<_>>(), (1..=8).collect::<Vec<_>>());
}

#[test]
fn not_leader_is_refused_and_writes_nothing() {
    let dir = TempDir::new().unwrap();
    let l = leader(&dir, registry(false));
    l.tm.commit(Change::insert(&tag("t0", "zero"))).unwrap();
    let before = l.db.dump().unwrap();
    let other = Uuid::new_v4();

    // Follower that knows the leader.
    l.db.set_leadership(SyncRole::Follower, 3, Some(other)).unwrap();
    let err = l.tm.commit(Change::insert(&tag("t1", "one"))).unwrap_err();
    assert!(
        matches!(err, StorageError::NotLeader { term: 3, leader: Some(x) } if x == other),
        "{err:?}"
    );

    // Claims leadership, but of another device.
    l.db.set_leadership(SyncRole::Leader, 4, Some(other)).unwrap();
    let err = l.tm.commit_bulk(BulkOperation {
        model_type: "location".into(),
        record_id: "l".into(),
        data: vec![1],
    });
    assert!(matches!(err, Err(StorageError::NotLeader { term: 4, leader: Some(x) }) if x == other));

    // Candidate without a leader.
    l.db.set_leadership(SyncRole::Candidate, 5, None).unwrap();
    let err = l.tm.commit_batch(vec![Change::insert(&tag("t1", "one"))]).unwrap_err();
    assert!(matches!(err, StorageError::NotLeader { term: 5, leader: None }), "{err:?}");
    assert_eq!(err.to_string(), "not the leader in term 5 (leader: unknown)");

    assert_eq!(l.db.dump().unwrap(), before);

    // Leader again, of a later term: entries carry it.
    l.db.set_leadership(SyncRole::Leader, 6, Some(l.device_id)).unwrap();
    let e = l.tm.commit(Change::insert(&tag("t1", "one"))).unwrap();
    assert_eq!((e.sequence, e.term), (2, 6));
    assert_eq!(l.db.term_at(1).unwrap(), Some(1));
    assert_eq!(l.db.term_at(2).unwrap(), Some(6));
}

#[test]
fn commit_without_sync_state_is_not_initialized() {
    let dir = TempDir::new().unwrap();
    let db = open(&dir, "db", registry(false));
    let tm = TransactionManager::new(db.clone(), Uuid::new_v4());
    assert!(matches!(db.sync_state(), Err(StorageError::NotInitialized)));
    let err = tm.commit(Change::insert(&tag("t", "t"))).unwrap_err();
    assert!(matches!(err, StorageError::NotInitialized), "{err:?}");
    assert_eq!(db.last_position().unwrap(), Default::default());
}

#[test]
fn bad_input_changes_nothing() {
    let dir = TempDir::new().unwrap();
    let l = leader(&dir, registry(false));
    l.tm.commit(Change::insert(&tag("t0", "zero"))).unwrap();
    let before = l.db.dump().unwrap();
    let mut events = l.tm.subscribe();

    let invalid = |changes: Vec<Change>, what: &str| {
        let err = l.tm.commit_batch(changes).unwrap_err();
        assert!(matches!(err, StorageError::InvalidChange(_)), "{what}: {err:?}");
        assert_eq!(l.db.dump().unwrap(), before, "{what}");
    };
    invalid(vec![], "empty batch");
    invalid(
        vec![Change {
            model_type: "tag".into(),
            record_id: "t1".into(),
            change_type: ChangeType::Insert,
            data: vec![0xc1, 0x00],
            base_version: None,
            hlc: None,
        }],
        "undecodable data",
    );
    invalid(
        vec![Change {
            model_type: "location".into(),
            record_id: "t1".into(),
            change_type: ChangeType::Insert,
            data: lsync_storage::encode(&tag("t1", "a tag")),
            base_version: None,
            hlc: None,
        }],
        "data of another model",
    );
    invalid(
        vec![Change { record_id: "other".into(), ..Change::insert(&tag("t1", "one")) }],
        "record id mismatch",
    );
    invalid(
        vec![Change::insert(&tag("t1", "one")), Change::update(&tag("t2", "two"))],
        "update of missing",
    );
    invalid(vec![Change::delete::<Location>("nope")], "delete of missing");
    invalid(vec![Change::insert(&tag("t0", "again"))], "insert of existing");
    invalid(
        vec![Change { data: vec![1, 2, 3], ..Change::delete::<Tag>("t0") }],
        "delete with data",
    );
    invalid(vec![Change::insert(&tag("", "empty id"))], "empty record id");

    let err =
        l.tm.commit_batch(vec![
            Change::insert(&tag("t1", "one")),
            Change { model_type: "album".into(), ..Change::insert(&tag("a", "a")) },
        ])
        .unwrap_err();
    assert!(matches!(err, StorageError::UnknownModel(ref m) if m == "album"), "{err:?}");
    let err =
        l.tm.commit_bulk(BulkOperation {
            model_type: "album".into(),
            record_id: "a".into(),
            data: vec![],
        })
        .unwrap_err();
    assert!(matches!(err, StorageError::UnknownModel(_)), "{err:?}");
    assert_eq!(l.db.dump().unwrap(), before);
    assert_eq!(events.try_recv(), Err(TryRecvError::Empty));
}

#[test]
fn bulk_is_one_entry_without_rows() {
    let dir = TempDir::new().unwrap();
    let l = leader(&dir, registry(false));
    l.tm.commit(Change::insert(&location("l1", "/big"))).unwrap();
    let meta = lsync_storage::encode(&("index", 1_000_000u64));
    let e =
        l.tm.commit_bulk(BulkOperation {
            model_type: "location".into(),
            record_id: "l1".into(),
            data: meta.clone(),
        })
        .unwrap();
    assert_eq!((e.sequence, e.version, e.change_type), (2, 0, ChangeType::Bulk));
    assert_eq!(e.data, meta);
    let dump = l.db.dump().unwrap();
    assert_eq!(dump["location"], vec!["'l1'|'loc l1'|'/big'|1".to_owned()]);
    assert_eq!(dump["sync_log"].len(), 2);
    assert!(l.db.local_jobs().unwrap().is_empty());
}

#[test]
fn a_commit_larger_than_the_limit_carries_no_entries() {
    let dir = TempDir::new().unwrap();
    let l = leader(&dir, registry(false));
    let mut events = l.tm.subscribe();
    let max = lsync_storage::COMMIT_EVENT_MAX_ENTRIES;
    let batch = |n: usize, from: usize| -> Vec<Change> {
        (from..from + n).map(|i| Change::insert(&tag(&format!("t{i}"), "x"))).collect()
    };
    l.tm.commit_batch(batch(max, 0)).unwrap();
    let ev = events.try_recv().unwrap();
    assert_eq!(ev.entries.map(|e| e.len()), Some(max));
    // One more than the limit: the followers fetch it.
    l.tm.commit_batch(batch(max + 1, max)).unwrap();
    let ev = events.try_recv().unwrap();
    assert_eq!(
        (ev.first_sequence, ev.last_sequence, ev.prev_term),
        (max as u64 + 1, 2 * max as u64 + 1, 1)
    );
    assert_eq!(ev.entries, None);
}
