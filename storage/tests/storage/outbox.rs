//! The durable outbox.

use lsync_protocol::{ChangeType, ProposedChange};
use lsync_storage::{outbox, BulkOperation, Change, OutboxState, StorageError, Tag};
use tempfile::TempDir;
use uuid::Uuid;

use crate::common::*;

#[test]
fn push_list_remove_and_failures_survive_a_reopen() {
    let dir = TempDir::new().unwrap();
    let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let changes_a = vec![Change::insert(&tag("t1", "one")), Change::delete::<Tag>("t0")];
    let changes_b = vec![Change::update(&note("n1", "body"))];
    let changes_c = vec![Change::insert(&location("l1", "/x"))];
    {
        let db = open(&dir, "dev", registry(false));
        assert_eq!(db.outbox_count().unwrap(), 0);
        assert!(db.outbox_list().unwrap().is_empty());
        assert!(db.outbox_push(a, &changes_a).unwrap());
        assert!(db.outbox_push(b, &changes_b).unwrap());
        assert!(db.outbox_push(c, &changes_c).unwrap());
        // Idempotent: the same id again changes nothing.
        assert!(!db.outbox_push(a, &changes_b).unwrap());
        assert_eq!(db.outbox_count().unwrap(), 3);
        assert!(db.outbox_record_failure(b, "leader unreachable", 123_456).unwrap());
        assert!(db.outbox_record_failure(b, "timed out", 234_567).unwrap());
        assert!(!db.outbox_record_failure(Uuid::new_v4(), "x", 0).unwrap());
    }
    let db = open(&dir, "dev", registry(false));
    let list = db.outbox_list().unwrap();
    assert_eq!(list.iter().map(|e| e.proposal_id).collect::<Vec<_>>(), vec![a, b, c], "FIFO");
    assert_eq!(list[0].changes, changes_a);
    assert_eq!((list[0].attempts, list[0].last_error.as_deref()), (0, None));
    assert_eq!(list[0].next_attempt_ms, list[0].created_at_ms, "due at once");
    assert!(list[0].created_at_ms > 1_600_000_000_000);
    assert_eq!(list[1].changes, changes_b);
    assert_eq!(
        (list[1].attempts, list[1].last_error.as_deref(), list[1].next_attempt_ms),
        (2, Some("timed out"), 234_567)
    );
    assert_eq!(db.outbox_get(c).unwrap().unwrap(), list[2]);
    assert_eq!(db.outbox_get(Uuid::new_v4()).unwrap(), None);

    assert!(db.outbox_remove(b).unwrap());
    assert!(!db.outbox_remove(b).unwrap());
    let d = Uuid::new_v4();
    db.outbox_push(d, &changes_b).unwrap();
    drop(db);
    let db = open(&dir, "dev", registry(false));
    let ids: Vec<_> = db.outbox_list().unwrap().iter().map(|e| e.proposal_id).collect();
    assert_eq!(ids, vec![a, c, d]);
    assert_eq!(db.outbox_count().unwrap(), 3);
    // The outbox is local: not part of the replicated dump.
    assert!(!db.dump().unwrap().contains_key("outbox"));
}

#[test]
fn push_refuses_bad_changes_and_writes_nothing() {
    let dir = TempDir::new().unwrap();
    let db = open(&dir, "dev", registry(false));
    let good = Change::insert(&tag("t1", "one"));
    let id = Uuid::new_v4();

    let unknown = Change { model_type: "album".into(), ..good.clone() };
    let err = db.outbox_push(id, &[good.clone(), unknown]).unwrap_err();
    assert!(matches!(err, StorageError::UnknownModel(ref m) if m == "album"), "{err}");
    for bad in [
        Change { data: vec![0xc1], ..good.clone() },
        Change { record_id: "other".into(), ..good.clone() },
        Change { data: vec![1], ..Change::delete::<Tag>("t1") },
    ] {
        let err = db.outbox_push(id, &[good.clone(), bad]).unwrap_err();
        assert!(matches!(err, StorageError::InvalidChange(_)), "{err}");
    }
    assert!(matches!(db.outbox_push(id, &[]), Err(StorageError::InvalidChange(_))));
    assert_eq!(db.outbox_count().unwrap(), 0);

    // The functions over a connection, with the registry passed in.
    let registry = db.registry().clone();
    db.write(|conn| {
        let err = outbox::push(conn, &registry, id, &[Change { data: vec![], ..good.clone() }]);
        assert!(matches!(err, Err(StorageError::InvalidChange(_))));
        assert!(outbox::push(conn, &registry, id, std::slice::from_ref(&good))?);
        let bulk: Change =
            BulkOperation { model_type: "location".into(), record_id: "l1".into(), data: vec![1] }
                .into();
        assert!(outbox::push(conn, &registry, Uuid::new_v4(), &[bulk])?);
        assert_eq!(outbox::count(conn)?, 2);
        assert_eq!(outbox::get(conn, id)?.unwrap().changes, vec![good.clone()]);
        assert!(outbox::remove(conn, id)?);
        assert_eq!(outbox::list(conn)?.len(), 1);
        Ok(())
    })
    .unwrap();
}

#[test]
fn change_and_proposed_change_convert_both_ways() {
    let change = Change::insert(&tag("t1", "one"));
    let proposed = ProposedChange::from(change.clone());
    assert_eq!(proposed.model_type, "tag");
    assert_eq!(proposed.record_id, "t1");
    assert_eq!(proposed.change_type, ChangeType::Insert);
    assert_eq!(proposed.data, change.data);
    assert_eq!(Change::from(proposed), change);
}

#[test]
fn a_failed_entry_is_kept_with_its_reason_out_of_the_delivery_list_until_retried_or_discarded() {
    let dir = TempDir::new().unwrap();
    let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    {
        let db = open(&dir, "dev", registry(false));
        for id in [a, b, c] {
            db.outbox_push(id, &[Change::delete::<Tag>(id.to_string())]).unwrap();
        }
        assert!(db.outbox_mark_failed(b, "unknown model type \"album\"", 42).unwrap());
        assert!(!db.outbox_mark_failed(b, "again", 43).unwrap(), "already failed");
        assert!(!db.outbox_mark_failed(Uuid::new_v4(), "x", 0).unwrap());
        assert!(!db.outbox_retry(a).unwrap(), "a pending entry is not retried");
        assert!(!db.outbox_discard(a).unwrap(), "a pending entry is not discarded");
    }
    let db = open(&dir, "dev", registry(false));
    let pending: Vec<_> = db.outbox_list().unwrap().iter().map(|e| e.proposal_id).collect();
    assert_eq!(pending, vec![a, c], "the proposer no longer sees it");
    assert_eq!((db.outbox_count().unwrap(), db.outbox_count_failed().unwrap()), (2, 1));
    let all = db.outbox_list_all().unwrap();
    assert_eq!(all.iter().map(|e| e.proposal_id).collect::<Vec<_>>(), vec![a, b, c]);
    assert_eq!(
        all[1].state,
        OutboxState::Failed { reason: "unknown model type \"album\"".into(), at_ms: 42 }
    );
    assert_eq!(all[0].state, OutboxState::Pending);
    assert_eq!(db.outbox_get(b).unwrap().unwrap().state.name(), "failed");

    db.outbox_record_failure(b, "x", 7).unwrap();
    assert!(db.outbox_retry(b).unwrap());
    let again = db.outbox_list().unwrap();
    assert_eq!(again.iter().map(|e| e.proposal_id).collect::<Vec<_>>(), vec![a, b, c], "in place");
    assert_eq!((again[1].state.clone(), again[1].attempts), (OutboxState::Pending, 0));

    assert!(db.outbox_mark_failed(c, "too large", 50).unwrap());
    assert!(db.outbox_discard(c).unwrap());
    assert!(!db.outbox_discard(c).unwrap());
    assert_eq!(db.outbox_get(c).unwrap(), None);
    assert_eq!((db.outbox_count().unwrap(), db.outbox_count_failed().unwrap()), (2, 0));
}
