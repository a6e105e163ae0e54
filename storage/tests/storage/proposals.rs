//! Proposals: TransactionManager::commit_proposal (at most once per id, the proposal rule).

use lsync_protocol::{ChangeType, SyncRole};
use lsync_storage::{Change, StorageError, Tag, TransactionManager};
use tempfile::TempDir;
use tokio::sync::broadcast::error::TryRecvError;
use uuid::Uuid;

use crate::common::*;

#[test]
fn commits_with_the_proposer_as_origin_and_the_id_on_each_entry() {
    let dir = TempDir::new().unwrap();
    let l = leader(&dir, registry(false));
    let f = follower(&dir, "f", &l, registry(false));
    let mut events = l.tm.subscribe();
    l.tm.commit(Change::insert(&tag("t0", "leader's own"))).unwrap();
    assert_eq!(events.try_recv().unwrap().last_sequence, 1);

    let proposer = Uuid::new_v4();
    let id = Uuid::new_v4();
    let out =
        l.tm.commit_proposal(
            id,
            proposer,
            vec![Change::insert(&tag("t1", "one")), Change::insert(&location("l1", "/a"))],
        )
        .unwrap();
    assert!(!out.duplicate);
    assert_eq!((out.first_sequence, out.last_sequence), (2, 3));
    assert_eq!(out.entries.len(), 2);
    for e in &out.entries {
        assert_eq!(e.origin_device, proposer);
        assert_eq!(e.proposal_id, Some(id));
        assert_eq!(e.term, 1);
    }
    let ev = events.try_recv().unwrap();
    assert_eq!((ev.first_sequence, ev.last_sequence), (2, 3));
    assert_eq!(l.db.sync_state().unwrap().last_synced_sequence, 3);

    // Stored and read back with the id; the leader's own entry has none.
    let log = l.db.fetch_since(0, 10).unwrap();
    assert_eq!(log[0].proposal_id, None);
    assert_eq!(&log[1..], &out.entries[..]);

    // A follower copies the id with the entry: logs and tables identical.
    catch_up(&l.db, &f, 100);
    assert_eq!(f.database().fetch_since(0, 10).unwrap(), log);
    assert_eq!(f.database().dump().unwrap(), l.db.dump().unwrap());
    // The proposal id, then the chain hash (the last column).
    assert!(l.db.dump().unwrap()["sync_log"][1].contains(&format!("|'{id}'|X'")));
}

#[test]
fn a_retried_proposal_is_committed_once() {
    let dir = TempDir::new().unwrap();
    let l = leader(&dir, registry(false));
    let mut events = l.tm.subscribe();
    let proposer = Uuid::new_v4();
    let id = Uuid::new_v4();
    let changes = vec![Change::insert(&tag("t1", "one")), Change::insert(&tag("t2", "two"))];
    let first = l.tm.commit_proposal(id, proposer, changes.clone()).unwrap();
    assert!(events.try_recv().is_ok());
    l.tm.commit(Change::insert(&tag("t3", "three"))).unwrap();
    assert!(events.try_recv().is_ok());
    let before = l.db.dump().unwrap();

    for _ in 0..3 {
        let again = l.tm.commit_proposal(id, proposer, changes.clone()).unwrap();
        assert!(again.duplicate);
        assert_eq!((again.first_sequence, again.last_sequence), (1, 2));
        assert_eq!(again.entries, first.entries);
    }
    // Even with other content: the id decides.
    let other = l.tm.commit_proposal(id, proposer, vec![Change::delete::<Tag>("t1")]).unwrap();
    assert!(other.duplicate);
    assert_eq!(l.db.dump().unwrap(), before, "nothing written by a retry");
    assert_eq!(events.try_recv(), Err(TryRecvError::Empty), "no event for a retry");
}

#[test]
fn a_retry_is_recognised_by_a_later_leader() {
    let dir = TempDir::new().unwrap();
    let l = leader(&dir, registry(false));
    let f = follower(&dir, "f", &l, registry(false));
    let proposer = Uuid::new_v4();
    let id = Uuid::new_v4();
    let changes = vec![Change::insert(&tag("t1", "one")), Change::insert(&note("n1", "body"))];
    l.tm.commit(Change::insert(&tag("t0", "zero"))).unwrap();
    let first = l.tm.commit_proposal(id, proposer, changes.clone()).unwrap();
    catch_up(&l.db, &f, 100);

    // The follower becomes the leader of term 2; the proposer retries there (the reply from
    // the old leader was lost).
    let fdb = f.database().clone();
    let f_device = fdb.sync_state().unwrap().device_id;
    fdb.set_leadership(SyncRole::Leader, 2, Some(f_device)).unwrap();
    let tm = TransactionManager::new(fdb.clone(), f_device);
    let mut events = tm.subscribe();
    let before = fdb.dump().unwrap();
    let again = tm.commit_proposal(id, proposer, changes).unwrap();
    assert!(again.duplicate);
    assert_eq!((again.first_sequence, again.last_sequence), (2, 3));
    assert_eq!(again.entries, first.entries);
    assert_eq!(fdb.dump().unwrap(), before);
    assert_eq!(events.try_recv(), Err(TryRecvError::Empty));

    // A new proposal there is committed in term 2.
    let next = tm.commit_proposal(Uuid::new_v4(), proposer, vec![Change::delete::<Tag>("t1")]);
    let next = next.unwrap();
    assert_eq!((next.first_sequence, next.entries[0].term), (4, 2));
}

#[test]
fn proposals_are_upserts_and_deletes_of_missing_records_are_dropped() {
    let dir = TempDir::new().unwrap();
    let l = leader(&dir, registry(false));
    let mut events = l.tm.subscribe();
    let p = Uuid::new_v4();
    l.tm.commit(Change::insert(&tag("t1", "one"))).unwrap();
    events.try_recv().unwrap();

    // Insert of an existing record → Update, version + 1.
    let out = l.tm.commit_proposal(Uuid::new_v4(), p, vec![Change::insert(&tag("t1", "uno"))]);
    let e = &out.unwrap().entries[0];
    assert_eq!((e.sequence, e.change_type, e.version), (2, ChangeType::Update, 2));
    // Update of a missing record → Insert, version 1.
    let out = l.tm.commit_proposal(Uuid::new_v4(), p, vec![Change::update(&tag("t2", "two"))]);
    let e = &out.unwrap().entries[0];
    assert_eq!((e.sequence, e.change_type, e.version), (3, ChangeType::Insert, 1));
    // Concurrent updates of one record: the last in leader order wins.
    let q = Uuid::new_v4();
    l.tm.commit_proposal(Uuid::new_v4(), p, vec![Change::update(&tag("t2", "from p"))]).unwrap();
    l.tm.commit_proposal(Uuid::new_v4(), q, vec![Change::update(&tag("t2", "from q"))]).unwrap();
    let tags = l.db.dump().unwrap()["tag"].clone();
    assert_eq!(tags, vec!["'t1'|'uno'|NULL|2".to_owned(), "'t2'|'from q'|NULL|3".to_owned()]);
    while events.try_recv().is_ok() {}

    // Delete of a missing record → dropped; the proposal is still remembered.
    let before = l.db.dump().unwrap();
    let gone = Uuid::new_v4();
    let out = l.tm.commit_proposal(gone, p, vec![Change::delete::<Tag>("nope")]).unwrap();
    assert!(!out.duplicate);
    assert!(out.entries.is_empty());
    assert_eq!((out.first_sequence, out.last_sequence), (5, 5), "the current last sequence");
    assert_eq!(events.try_recv(), Err(TryRecvError::Empty), "no entry, no event");
    assert_eq!(l.db.dump().unwrap(), before);
    l.tm.commit(Change::insert(&tag("t9", "later"))).unwrap();
    let retry = l.tm.commit_proposal(gone, p, vec![Change::delete::<Tag>("nope")]).unwrap();
    assert!(retry.duplicate);
    assert_eq!((retry.first_sequence, retry.last_sequence), (5, 5));

    // Within one proposal each change sees the ones before it; dropped changes leave no gap.
    let out =
        l.tm.commit_proposal(
            Uuid::new_v4(),
            p,
            vec![
                Change::delete::<Tag>("nope"),
                Change::insert(&tag("t5", "five")),
                Change::insert(&tag("t5", "FIVE")),
                Change::delete::<Tag>("t5"),
                Change::delete::<Tag>("t5"),
            ],
        )
        .unwrap();
    let got: Vec<_> = out.entries.iter().map(|e| (e.sequence, e.change_type, e.version)).collect();
    assert_eq!(
        got,
        vec![(7, ChangeType::Insert, 1), (8, ChangeType::Update, 2), (9, ChangeType::Delete, 3)]
    );
    assert_eq!((out.first_sequence, out.last_sequence), (7, 9));
}

#[test]
fn invalid_proposals_write_nothing_and_are_not_remembered() {
    let dir = TempDir::new().unwrap();
    let l = leader(&dir, registry(false));
    let mut events = l.tm.subscribe();
    let p = Uuid::new_v4();
    let id = Uuid::new_v4();
    let good = Change::insert(&tag("t1", "one"));
    let unknown = Change { model_type: "album".into(), ..good.clone() };
    let garbage = Change { data: vec![0xc1, 0xff], ..good.clone() };
    let wrong_id = Change { record_id: "t2".into(), ..good.clone() };

    let err = l.tm.commit_proposal(id, p, vec![good.clone(), unknown]).unwrap_err();
    assert!(matches!(err, StorageError::UnknownModel(ref m) if m == "album"), "{err}");
    for bad in [garbage, wrong_id] {
        let err = l.tm.commit_proposal(id, p, vec![good.clone(), bad]).unwrap_err();
        assert!(matches!(err, StorageError::InvalidChange(_)), "{err}");
    }
    let err = l.tm.commit_proposal(id, p, vec![]).unwrap_err();
    assert!(matches!(err, StorageError::InvalidChange(_)), "{err}");
    assert_eq!(l.db.last_position().unwrap().sequence, 0);
    assert!(l.db.dump().unwrap()["tag"].is_empty());
    assert_eq!(events.try_recv(), Err(TryRecvError::Empty));

    // The id was not used up.
    let out = l.tm.commit_proposal(id, p, vec![good]).unwrap();
    assert!(!out.duplicate);
    assert_eq!(out.last_sequence, 1);
}

#[test]
fn only_the_leader_commits_proposals() {
    let dir = TempDir::new().unwrap();
    let l = leader(&dir, registry(false));
    let f = follower(&dir, "f", &l, registry(false));
    let fdb = f.database().clone();
    let tm = TransactionManager::new(fdb.clone(), fdb.sync_state().unwrap().device_id);
    let err =
        tm.commit_proposal(Uuid::new_v4(), Uuid::new_v4(), vec![Change::insert(&tag("t", "t"))]);
    assert!(
        matches!(err, Err(StorageError::NotLeader { term: 1, leader: Some(d) }) if d == l.device_id)
    );
    assert_eq!(fdb.last_position().unwrap().sequence, 0);
}

#[test]
fn a_retry_commits_exactly_the_part_a_new_leader_lacks() {
    // The leader commits P (three changes) at 2..=4; a response ended inside it, so the
    // follower that leads term 2 holds only 2..=3.
    let dir = TempDir::new().unwrap();
    let l = leader(&dir, registry(false));
    let f = follower(&dir, "f", &l, registry(false));
    let (proposer, id) = (Uuid::new_v4(), Uuid::new_v4());
    let changes: Vec<Change> =
        ["p1", "p2", "p3"].iter().map(|r| Change::insert(&tag(r, "P"))).collect();
    l.tm.commit(Change::insert(&tag("t0", "zero"))).unwrap();
    l.tm.commit_proposal(id, proposer, changes.clone()).unwrap();
    f.apply(&l.db.fetch_range(1, 3).unwrap()).unwrap();
    let fdb = f.database().clone();
    let f_device = fdb.sync_state().unwrap().device_id;
    fdb.set_leadership(SyncRole::Leader, 2, Some(f_device)).unwrap();
    let tm = TransactionManager::new(fdb.clone(), f_device);
    let mut events = tm.subscribe();

    let out = tm.commit_proposal(id, proposer, changes.clone()).unwrap();
    assert_eq!((out.duplicate, out.completed), (false, true));
    assert_eq!((out.first_sequence, out.last_sequence), (2, 4), "from P's first entry");
    let new: Vec<_> =
        out.entries.iter().map(|e| (e.sequence, e.term, e.record_id.as_str())).collect();
    assert_eq!(new, [(4, 2, "p3")]);
    assert_eq!((out.entries[0].proposal_id, out.entries[0].origin_device), (Some(id), proposer));
    let ev = events.try_recv().unwrap();
    assert_eq!((ev.first_sequence, ev.last_sequence, ev.prev_term), (4, 4, 1));

    let before = fdb.dump().unwrap();
    let again = tm.commit_proposal(id, proposer, changes).unwrap();
    assert_eq!((again.duplicate, again.completed), (true, false));
    assert_eq!((again.first_sequence, again.last_sequence), (2, 4));
    assert_eq!(again.entries.len(), 3, "every entry of P");
    assert_eq!(fdb.dump().unwrap(), before);
    assert_eq!(events.try_recv(), Err(TryRecvError::Empty));
}

#[test]
fn a_complete_proposal_stays_a_duplicate_whatever_deletes_it_dropped() {
    let dir = TempDir::new().unwrap();
    let l = leader(&dir, registry(false));
    let mut events = l.tm.subscribe();
    let proposer = Uuid::new_v4();
    let (a, b) = (Change::insert(&tag("a", "A")), Change::insert(&tag("b", "B")));
    let gone = Change::delete::<Tag>("gone");
    for changes in [
        vec![a.clone(), b.clone()],
        vec![a.clone(), gone.clone(), b.clone()],
        vec![a.clone(), b.clone(), gone.clone()],
    ] {
        let id = Uuid::new_v4();
        let first = l.tm.commit_proposal(id, proposer, changes.clone()).unwrap();
        assert_eq!(first.entries.len(), 2);
        while events.try_recv().is_ok() {}
        let before = l.db.dump().unwrap();
        let again = l.tm.commit_proposal(id, proposer, changes).unwrap();
        assert_eq!((again.duplicate, again.completed), (true, false));
        assert_eq!(
            (again.first_sequence, again.last_sequence),
            (first.first_sequence, first.last_sequence)
        );
        assert_eq!(again.entries, first.entries);
        assert_eq!(l.db.dump().unwrap(), before, "nothing written");
        assert_eq!(events.try_recv(), Err(TryRecvError::Empty), "no event");
    }
}
