//! The follower's write path: Applier.

use lsync_protocol::{ChangeType, SyncRole};
use lsync_storage::{BulkOperation, Change, LogPosition, StorageError, Tag};
use tempfile::TempDir;

use crate::common::*;

#[test]
fn applies_and_copies_entries_identically() {
    let dir = TempDir::new().unwrap();
    let l = leader(&dir, registry(false));
    l.tm.commit_batch(vec![
        Change::insert(&tag("t1", "one")),
        Change::insert(&location("l1", "/a")),
        Change::update(&tag("t1", "uno")),
    ])
    .unwrap();
    let f = follower(&dir, "f", &l, registry(false));
    let entries = l.db.fetch_since(0, 100).unwrap();
    let outcome = f.apply(&entries).unwrap();
    assert_eq!(outcome.applied, 3);
    assert_eq!(outcome.skipped, 0);
    assert_eq!(outcome.last, LogPosition { term: 1, sequence: 3 });
    assert!(outcome.bulk_jobs.is_empty());
    assert_eq!(f.database().fetch_since(0, 100).unwrap(), entries);
    assert_eq!(f.database().sync_state().unwrap().last_synced_sequence, 3);
    assert_eq!(f.database().dump().unwrap(), l.db.dump().unwrap());
}

#[test]
fn empty_batch_is_ok() {
    let dir = TempDir::new().unwrap();
    let l = leader(&dir, registry(false));
    let f = follower(&dir, "f", &l, registry(false));
    assert_eq!(f.apply(&[]).unwrap(), Default::default());
    l.tm.commit(Change::insert(&tag("t1", "one"))).unwrap();
    catch_up(&l.db, &f, 10);
    let outcome = f.apply(&[]).unwrap();
    assert_eq!((outcome.applied, outcome.skipped, outcome.last.sequence), (0, 0, 1));
}

#[test]
fn failure_in_the_middle_of_a_batch_applies_nothing() {
    let dir = TempDir::new().unwrap();
    let l = leader(&dir, registry(false));
    l.tm.commit(Change::insert(&tag("t0", "zero"))).unwrap();
    l.tm.commit_batch(vec![
        Change::insert(&tag("t1", "one")),
        Change::insert(&note("n1", "fine")),
        Change::insert(&note(BOOM, "fails on the follower")),
        Change::insert(&location("l1", "/x")),
    ])
    .unwrap();
    let f = follower(&dir, "f", &l, registry(true));
    f.apply(&l.db.fetch_since(0, 1).unwrap()).unwrap();
    let before = f.database().dump().unwrap();

    let err = f.apply(&l.db.fetch_since(1, 100).unwrap()).unwrap_err();
    assert!(matches!(err, StorageError::Corrupt(ref m) if m == "injected failure"), "{err:?}");
    assert_eq!(f.database().dump().unwrap(), before);
    assert_eq!(f.database().last_position().unwrap().sequence, 1);
    assert_eq!(f.database().sync_state().unwrap().last_synced_sequence, 1);
}

#[test]
fn gap_is_refused() {
    let dir = TempDir::new().unwrap();
    let l = leader(&dir, registry(false));
    for i in 0..5 {
        l.tm.commit(Change::insert(&tag(&format!("t{i}"), "x"))).unwrap();
    }
    let all = l.db.fetch_since(0, 100).unwrap();
    let f = follower(&dir, "f", &l, registry(false));

    let err = f.apply(&all[1..3]).unwrap_err();
    assert!(matches!(err, StorageError::Gap { expected: 1, got: 2 }), "{err:?}");

    // Not contiguous inside the batch: nothing of it is applied.
    let batch = vec![all[0].clone(), all[1].clone(), all[3].clone()];
    let err = f.apply(&batch).unwrap_err();
    assert!(matches!(err, StorageError::Gap { expected: 3, got: 4 }), "{err:?}");
    assert_eq!(f.database().last_position().unwrap(), LogPosition::default());
    assert!(f.database().dump().unwrap()["tag"].is_empty());

    // Sequence 0 is never valid.
    let zero = entry(0, 1, Change::insert(&tag("z", "z")), 1);
    assert!(matches!(f.apply(&[zero]), Err(StorageError::Gap { expected: 1, got: 0 })));

    f.apply(&all[..2]).unwrap();
    let err = f.apply(&all[3..]).unwrap_err();
    assert!(matches!(err, StorageError::Gap { expected: 3, got: 4 }), "{err:?}");
    assert_eq!(f.database().last_position().unwrap().sequence, 2);
}

#[test]
fn duplicates_are_skipped() {
    let dir = TempDir::new().unwrap();
    let l = leader(&dir, registry(false));
    for i in 0..6 {
        l.tm.commit(Change::insert(&tag(&format!("t{i}"), "x"))).unwrap();
    }
    let all = l.db.fetch_since(0, 100).unwrap();
    let f = follower(&dir, "f", &l, registry(false));
    assert_eq!(f.apply(&all[..4]).unwrap().applied, 4);
    let dump = f.database().dump().unwrap();

    // The whole batch again: a no-op.
    let outcome = f.apply(&all[..4]).unwrap();
    assert_eq!((outcome.applied, outcome.skipped), (0, 4));
    assert_eq!(outcome.last, LogPosition { term: 1, sequence: 4 });
    assert_eq!(f.database().dump().unwrap(), dump);

    // Overlapping: the known part is skipped, the rest applied.
    let outcome = f.apply(&all[2..]).unwrap();
    assert_eq!((outcome.applied, outcome.skipped), (2, 2));
    assert_eq!(outcome.last.sequence, 6);
    assert_eq!(f.database().dump().unwrap(), l.db.dump().unwrap());
}

#[test]
fn divergence_is_detected() {
    let dir = TempDir::new().unwrap();
    let l = leader(&dir, registry(false));
    for i in 0..3 {
        l.tm.commit(Change::insert(&tag(&format!("t{i}"), "x"))).unwrap();
    }
    let all = l.db.fetch_since(0, 100).unwrap();
    let f = follower(&dir, "f", &l, registry(false));
    f.apply(&all).unwrap();
    let dump = f.database().dump().unwrap();

    // Another leader's view of sequences 2..=4, in term 2.
    let mut other: Vec<_> = all[1..].to_vec();
    for e in &mut other {
        e.term = 2;
    }
    other.push(entry(4, 2, Change::insert(&tag("t9", "new")), 1));
    let err = f.apply(&other).unwrap_err();
    assert!(
        matches!(err, StorageError::Diverged { sequence: 2, local_term: 1, remote_term: 2 }),
        "{err:?}"
    );
    // The last entry differs too.
    let mut last = all[2].clone();
    last.term = 3;
    let err = f.apply(&[last]).unwrap_err();
    assert!(matches!(err, StorageError::Diverged { sequence: 3, local_term: 1, remote_term: 3 }));
    assert_eq!(f.database().dump().unwrap(), dump);
}

#[test]
fn unknown_model_applies_nothing_until_registered() {
    let dir = TempDir::new().unwrap();
    let l = leader(&dir, registry(false));
    l.tm.commit_batch(vec![
        Change::insert(&tag("t1", "one")),
        Change::insert(&note("n1", "note")),
        Change::insert(&tag("t2", "two")),
    ])
    .unwrap();
    let entries = l.db.fetch_since(0, 100).unwrap();

    // A follower that does not know `note`.
    let f = follower(&dir, "f", &l, lsync_storage::ModelRegistry::with_builtin());
    let err = f.apply(&entries).unwrap_err();
    assert!(matches!(err, StorageError::UnknownModel(ref m) if m == "note"), "{err:?}");
    assert_eq!(f.database().last_position().unwrap(), LogPosition::default());
    assert!(f.database().dump().unwrap()["tag"].is_empty());
    let path = f.database().path().to_owned();
    drop(f);

    // Reopened with the model registered, it resumes.
    let db = lsync_storage::Database::open(&path, &Default::default(), registry(false)).unwrap();
    let f = lsync_storage::Applier::new(db);
    assert_eq!(f.apply(&entries).unwrap().applied, 3);
    assert_eq!(f.database().dump().unwrap(), l.db.dump().unwrap());
}

#[test]
fn bulk_queues_a_local_job_and_writes_no_rows() {
    let dir = TempDir::new().unwrap();
    let l = leader(&dir, registry(false));
    l.tm.commit(Change::insert(&location("l1", "/big"))).unwrap();
    let op = BulkOperation {
        model_type: "location".into(),
        record_id: "l1".into(),
        data: lsync_storage::encode(&("index", 1_000_000u64)),
    };
    l.tm.commit_bulk(op.clone()).unwrap();
    l.tm.commit(Change::insert(&tag("t1", "after"))).unwrap();

    let f = follower(&dir, "f", &l, registry(false));
    let outcome = f.apply(&l.db.fetch_since(0, 100).unwrap()).unwrap();
    assert_eq!(outcome.applied, 3);
    assert_eq!(outcome.bulk_jobs.len(), 1);
    let job = &outcome.bulk_jobs[0];
    assert_eq!(
        (job.sequence, job.model_type.as_str(), job.record_id.as_str(), job.status.as_str()),
        (2, "location", "l1", "queued")
    );
    assert_eq!(job.data, op.data);
    assert_eq!(f.database().local_jobs().unwrap(), outcome.bulk_jobs);
    // No model rows beyond those of the ordinary entries; the log is identical.
    assert_eq!(f.database().dump().unwrap(), l.db.dump().unwrap());
    assert_eq!(f.database().term_at(2).unwrap(), Some(1));

    assert!(f.database().set_local_job_status(job.id, "done").unwrap());
    assert_eq!(f.database().local_jobs().unwrap()[0].status, "done");
    // A duplicate delivery queues nothing again.
    let outcome = f.apply(&l.db.fetch_since(0, 100).unwrap()).unwrap();
    assert_eq!((outcome.applied, outcome.skipped, outcome.bulk_jobs.len()), (0, 3, 0));
    assert_eq!(f.database().local_jobs().unwrap().len(), 1);
}

#[test]
fn update_and_delete_of_missing_rows_do_not_fail() {
    let dir = TempDir::new().unwrap();
    let l = leader(&dir, registry(false));
    let f = follower(&dir, "f", &l, registry(false));
    let entries = vec![
        entry(1, 1, Change::update(&tag("t1", "never inserted")), 4),
        entry(2, 1, Change::delete::<Tag>("ghost"), 2),
        entry(3, 1, Change::insert(&location("l1", "/a")), 1),
        entry(4, 1, Change::insert(&location("l1", "/b")), 1),
    ];
    assert_eq!(f.apply(&entries).unwrap().applied, 4);
    let dump = f.database().dump().unwrap();
    assert_eq!(dump["tag"], vec!["'t1'|'never inserted'|NULL|4".to_owned()]);
    assert_eq!(dump["location"], vec!["'l1'|'loc l1'|'/b'|1".to_owned()]);
    assert_eq!(
        f.database().fetch_since(0, 10).unwrap().iter().map(|e| e.change_type).collect::<Vec<_>>(),
        vec![ChangeType::Update, ChangeType::Delete, ChangeType::Insert, ChangeType::Insert]
    );
}

#[test]
fn reset_clears_models_and_log_but_keeps_jobs() {
    let dir = TempDir::new().unwrap();
    let l = leader(&dir, registry(false));
    l.tm.commit_batch(vec![
        Change::insert(&tag("t1", "one")),
        Change::insert(&note("n1", "note")),
        Change::insert(&location("l1", "/a")),
    ])
    .unwrap();
    l.tm.commit_bulk(BulkOperation {
        model_type: "location".into(),
        record_id: "l1".into(),
        data: vec![],
    })
    .unwrap();
    let f = follower(&dir, "f", &l, registry(false));
    catch_up(&l.db, &f, 100);
    assert_eq!(f.database().local_jobs().unwrap().len(), 1);

    f.reset().unwrap();
    let dump = f.database().dump().unwrap();
    assert!(dump.values().all(Vec::is_empty), "{dump:?}");
    assert_eq!(f.database().sync_state().unwrap().last_synced_sequence, 0);
    assert_eq!(f.database().sync_state().unwrap().role, SyncRole::Follower);
    assert_eq!(f.database().local_jobs().unwrap().len(), 1);

    // Rebuild from the leader.
    catch_up(&l.db, &f, 2);
    assert_eq!(f.database().dump().unwrap(), l.db.dump().unwrap());
}

#[test]
fn apply_requires_sync_state() {
    let dir = TempDir::new().unwrap();
    let db = open(&dir, "f", registry(false));
    let f = lsync_storage::Applier::new(db);
    let err = f.apply(&[entry(1, 1, Change::insert(&tag("t", "t")), 1)]).unwrap_err();
    assert!(matches!(err, StorageError::NotInitialized), "{err:?}");
    assert_eq!(f.database().last_position().unwrap(), LogPosition::default());
}
