//! Divergence repair: Applier::reset_for_repair, the rebuild, Applier::recover_orphans, and
//! re-proposing the orphans to the new leader.

use std::collections::BTreeSet;

use lsync_protocol::{ChangeType, SyncRole};
use lsync_storage::{
    Applier, BulkOperation, Change, Database, ModelRegistry, RecoveredOrphans, StorageError,
    TransactionManager,
};
use tempfile::TempDir;
use uuid::Uuid;

use crate::common::*;

/// Device A led term 1 and committed entries 1..=15; only 1..=10 reached device B, which then
/// led term 2 and committed 11..=20. A now follows B.
struct Deposed {
    dir: TempDir,
    a: Leader,
    b: Database,
    b_tm: TransactionManager,
    b_device: Uuid,
}

impl Deposed {
    fn new(tail: impl FnOnce(&TransactionManager)) -> Self {
        let dir = TempDir::new().unwrap();
        let a = leader(&dir, registry(false));
        let b_applier = follower(&dir, "b", &a, registry(false));
        for i in 1..=10 {
            a.tm.commit(Change::insert(&tag(&format!("t{i}"), "a"))).unwrap();
        }
        catch_up(&a.db, &b_applier, 100);
        tail(&a.tm);
        assert_eq!(a.db.last_position().unwrap().sequence, 15);

        let b = b_applier.database().clone();
        let b_device = b.sync_state().unwrap().device_id;
        b.set_leadership(SyncRole::Leader, 2, Some(b_device)).unwrap();
        let b_tm = TransactionManager::new(b.clone(), b_device);
        b_tm.commit(Change::update(&tag("t1", "b"))).unwrap();
        for i in 12..=20 {
            b_tm.commit(Change::insert(&tag(&format!("b{i}"), "b"))).unwrap();
        }
        a.db.set_leadership(SyncRole::Follower, 2, Some(b_device)).unwrap();
        Deposed { dir, a, b, b_tm, b_device }
    }

    /// The default tail: five changes of A's own, no proposal ids.
    fn plain() -> Self {
        Self::new(|tm| {
            tm.commit(Change::update(&tag("t1", "a, later"))).unwrap();
            for i in 12..=15 {
                tm.commit(Change::insert(&tag(&format!("a{i}"), "a"))).unwrap();
            }
        })
    }

    fn applier(&self) -> Applier {
        Applier::new(self.a.db.clone())
    }

    /// Re-proposes A's outbox to B (as A would), removes what was committed, and brings A up
    /// to date. Returns the outcomes' duplicate flags.
    fn deliver_outbox(&self) -> Vec<bool> {
        let mut duplicates = Vec::new();
        for entry in self.a.db.outbox_list().unwrap() {
            let out = self.b_tm.commit_proposal(entry.proposal_id, self.a.device_id, entry.changes);
            duplicates.push(out.unwrap().duplicate);
            assert!(self.a.db.outbox_remove(entry.proposal_id).unwrap());
        }
        catch_up(&self.b, &self.applier(), 7);
        duplicates
    }
}

fn tags(db: &Database) -> Vec<String> {
    db.dump().unwrap()["tag"].clone()
}

#[test]
fn a_deposed_leaders_tail_is_re_proposed_and_the_rebuild_equals_the_leader() {
    let s = Deposed::plain();
    let applier = s.applier();
    let err = applier.apply(&s.b.fetch_since(10, 100).unwrap()).unwrap_err();
    assert!(matches!(err, StorageError::Diverged { sequence: 11, local_term: 1, remote_term: 2 }));

    assert_eq!(applier.reset_for_repair().unwrap(), 15);
    assert_eq!(s.a.db.stashed_count().unwrap(), 15);
    assert!(tags(&s.a.db).is_empty());
    assert_eq!(s.a.db.last_position().unwrap().sequence, 0);
    assert_eq!(s.a.db.sync_state().unwrap().last_synced_sequence, 0);
    catch_up(&s.b, &applier, 7);
    assert_eq!(s.a.db.dump().unwrap(), s.b.dump().unwrap(), "rebuilt tables equal the leader's");

    let recovered = applier.recover_orphans().unwrap();
    assert_eq!(
        recovered,
        RecoveredOrphans {
            configurations: 0,
            proposals: 5,
            changes: 5,
            dropped: 0,
            replicated: 10,
            already_queued: 0
        }
    );
    assert_eq!(s.a.db.stashed_count().unwrap(), 0);
    let (mine, leaders) = (s.a.db.dump().unwrap(), s.b.dump().unwrap());
    assert_eq!(mine["sync_log"], leaders["sync_log"], "recovering writes no log entry");
    // the orphans are pending changes of A now: shown over the rebuilt rows at once
    // (docs/architecture.md, "Local-first writes")
    let shown = tags(&s.a.db);
    assert!(shown.contains(&"'t1'|'a, later'|NULL|3".to_owned()), "{shown:?}");
    assert!(shown.contains(&"'a12'|'a'|NULL|1".to_owned()), "{shown:?}");
    assert_eq!(shown.len(), tags(&s.b).len() + 4, "the four orphaned inserts");
    let report = lsync_storage::verify(s.a.db.path(), s.a.db.registry()).unwrap();
    assert!(report.is_ok() && report.pending_proposals == 5, "{report:?}");
    let outbox = s.a.db.outbox_list().unwrap();
    assert_eq!(outbox.len(), 5, "one proposal per orphan");
    let orphaned: Vec<_> = outbox
        .iter()
        .map(|e| {
            assert_eq!(e.changes.len(), 1);
            (e.changes[0].record_id.clone(), e.changes[0].change_type)
        })
        .collect();
    assert_eq!(
        orphaned,
        vec![
            ("t1".to_owned(), ChangeType::Update),
            ("a12".to_owned(), ChangeType::Insert),
            ("a13".to_owned(), ChangeType::Insert),
            ("a14".to_owned(), ChangeType::Insert),
            ("a15".to_owned(), ChangeType::Insert),
        ],
        "in the order they were committed"
    );

    // Re-proposed to the new leader: committed as new entries, the proposer as origin; the
    // re-proposed update of t1 is the last write in leader order.
    assert_eq!(s.deliver_outbox(), vec![false; 5]);
    assert_eq!(s.b.last_position().unwrap().sequence, 25);
    let tail = s.b.fetch_range(21, 25).unwrap();
    assert!(tail.iter().all(|e| e.origin_device == s.a.device_id && e.term == 2));
    assert_eq!(s.a.db.dump().unwrap(), s.b.dump().unwrap());
    let ids: BTreeSet<String> =
        tags(&s.b).iter().map(|r| r.split('|').next().unwrap().to_owned()).collect();
    let mut expected: BTreeSet<String> = (1..=10).map(|i| format!("'t{i}'")).collect();
    expected.extend((12..=20).map(|i| format!("'b{i}'")));
    expected.extend((12..=15).map(|i| format!("'a{i}'")));
    assert_eq!(ids, expected, "every change made on either side");
    assert!(tags(&s.b).contains(&"'t1'|'a, later'|NULL|3".to_owned()));
}

#[test]
fn replicated_entries_are_not_re_proposed() {
    let dir = TempDir::new().unwrap();
    let l = leader(&dir, registry(false));
    let f = follower(&dir, "f", &l, registry(false));
    for i in 0..30 {
        l.tm.commit(Change::insert(&tag(&format!("t{i}"), "x"))).unwrap();
    }
    l.tm.commit_proposal(
        Uuid::new_v4(),
        Uuid::new_v4(),
        vec![Change::delete::<lsync_storage::Tag>("t0")],
    )
    .unwrap();
    catch_up(&l.db, &f, 100);

    assert_eq!(f.reset_for_repair().unwrap(), 31);
    catch_up(&l.db, &f, 100);
    let recovered = f.recover_orphans().unwrap();
    assert_eq!(
        recovered,
        RecoveredOrphans { configurations: 0, replicated: 31, ..RecoveredOrphans::default() }
    );
    assert_eq!(f.database().outbox_count().unwrap(), 0);
    assert_eq!(f.database().stashed_count().unwrap(), 0);
    assert_eq!(f.database().dump().unwrap(), l.db.dump().unwrap());
}

#[test]
fn crashes_and_repeated_recovery_create_no_duplicates() {
    let s = Deposed::plain();
    let path = s.a.db.path().to_owned();
    assert_eq!(s.applier().reset_for_repair().unwrap(), 15);

    // Crash before the rebuild: the stash is in the database.
    let reopen = |s: &Deposed| {
        let db = Database::open(&path, &Default::default(), registry(false)).unwrap();
        assert_eq!(db.sync_state().unwrap().device_id, s.a.device_id);
        Applier::new(db)
    };
    let a = reopen(&s);
    assert_eq!(a.database().stashed_count().unwrap(), 15);

    // Crash in the middle of the rebuild (12 of 20 entries), then a new repair: the stash is
    // appended to (entries 11 and 12 of term 2 join it), nothing is lost.
    a.apply(&s.b.fetch_since(0, 12).unwrap()).unwrap();
    drop(a);
    let a = reopen(&s);
    assert_eq!(a.reset_for_repair().unwrap(), 2, "only the term-2 entries are new to the stash");
    assert_eq!(a.database().stashed_count().unwrap(), 17);
    catch_up(&s.b, &a, 100);

    // A copy of the database at this point recovers the same proposal ids (deterministic).
    let copy_path = s.dir.path().join("copy.db");
    std::fs::copy(&path, &copy_path).unwrap();
    for ext in ["-wal", "-shm"] {
        let wal = path.with_file_name(format!("leader.db{ext}"));
        if wal.exists() {
            std::fs::copy(&wal, s.dir.path().join(format!("copy.db{ext}"))).unwrap();
        }
    }
    let copy =
        Applier::new(Database::open(&copy_path, &Default::default(), registry(false)).unwrap());
    let sql = |db: &Database, sql: &'static str| {
        db.with_writer(|conn| {
            use lsync_storage::diesel::RunQueryDsl;
            lsync_storage::diesel::sql_query(sql).execute(conn)?;
            Ok(())
        })
        .unwrap()
    };
    sql(copy.database(), "CREATE TABLE saved_stash AS SELECT * FROM stashed_entries");

    let recovered = a.recover_orphans().unwrap();
    assert_eq!((recovered.proposals, recovered.changes, recovered.replicated), (5, 5, 12));
    let ids: Vec<Uuid> =
        a.database().outbox_list().unwrap().iter().map(|e| e.proposal_id).collect();
    assert_eq!(ids.len(), 5);
    assert_eq!(a.recover_orphans().unwrap(), RecoveredOrphans::default(), "second run: nothing");
    assert_eq!(a.database().outbox_count().unwrap(), 5);

    // The copy gets the same ids.
    copy.recover_orphans().unwrap();
    let copy_ids: Vec<Uuid> =
        copy.database().outbox_list().unwrap().iter().map(|e| e.proposal_id).collect();
    assert_eq!(copy_ids, ids);
    // The same stash recovered again while the outbox holds its proposals: none queued twice.
    sql(copy.database(), "INSERT INTO stashed_entries SELECT * FROM saved_stash");
    let again = copy.recover_orphans().unwrap();
    assert_eq!(
        again,
        RecoveredOrphans {
            configurations: 0,
            proposals: 0,
            changes: 0,
            dropped: 0,
            replicated: 12,
            already_queued: 5
        }
    );
    assert_eq!(copy.database().outbox_list().unwrap().len(), 5);

    // Delivering both devices' outboxes (as if both copies existed): each change committed
    // once, the second delivery of every proposal is recognised.
    let a_db = a.database().clone();
    for entry in a_db.outbox_list().unwrap() {
        let first = s.b_tm.commit_proposal(entry.proposal_id, s.a.device_id, entry.changes);
        assert!(!first.unwrap().duplicate);
        let copy_entry = copy.database().outbox_get(entry.proposal_id).unwrap().unwrap();
        let second = s.b_tm.commit_proposal(entry.proposal_id, s.a.device_id, copy_entry.changes);
        assert!(second.unwrap().duplicate);
        a_db.outbox_remove(entry.proposal_id).unwrap();
    }
    assert_eq!(s.b.last_position().unwrap().sequence, 25);
    catch_up(&s.b, &a, 100);
    assert_eq!(a_db.dump().unwrap(), s.b.dump().unwrap());
}

#[test]
fn an_orphan_committed_by_the_new_leader_under_its_proposal_id_is_a_duplicate() {
    let proposer = Uuid::new_v4();
    let p = Uuid::new_v4();
    let proposed = vec![Change::insert(&tag("p1", "proposed")), Change::insert(&tag("p2", "too"))];
    let for_a = proposed.clone();
    // A commits proposal P (11..=12, term 1) and its own changes 13..=15, none replicated;
    // the reply to the proposer is lost.
    let s = Deposed::new(move |tm| {
        let out = tm.commit_proposal(p, proposer, for_a).unwrap();
        assert_eq!((out.first_sequence, out.last_sequence), (11, 12));
        tm.commit(Change::insert(&tag("a13", "a"))).unwrap();
        tm.commit(Change::delete::<lsync_storage::Tag>("t2")).unwrap();
        tm.commit(Change::insert(&tag("a15", "a"))).unwrap();
    });
    // The proposer retries P at the new leader B: committed there (21..=22, term 2).
    let out = s.b_tm.commit_proposal(p, proposer, proposed).unwrap();
    assert_eq!((out.first_sequence, out.last_sequence, out.duplicate), (21, 22, false));

    let applier = s.applier();
    applier.reset_for_repair().unwrap();
    catch_up(&s.b, &applier, 100);
    let recovered = applier.recover_orphans().unwrap();
    assert_eq!(
        recovered,
        RecoveredOrphans {
            configurations: 0,
            proposals: 4,
            changes: 5,
            dropped: 0,
            replicated: 10,
            already_queued: 0
        }
    );
    let outbox = s.a.db.outbox_list().unwrap();
    assert_eq!(outbox[0].proposal_id, p, "the orphan keeps its proposal id");
    assert_eq!(outbox[0].changes.len(), 2, "the entries of one proposal stay together");
    assert_eq!(outbox[0].changes[0].record_id, "p1");

    // Re-proposed: P is a duplicate (nothing applied twice), the others are committed.
    assert_eq!(s.deliver_outbox(), vec![true, false, false, false]);
    let log = s.b.fetch_since(0, 100).unwrap();
    assert_eq!(log.iter().filter(|e| e.proposal_id == Some(p)).count(), 2);
    assert_eq!(log.iter().filter(|e| e.record_id == "p1").count(), 1);
    assert_eq!(log.len(), 25);
    assert_eq!(s.a.db.dump().unwrap(), s.b.dump().unwrap());
    assert!(!tags(&s.b).iter().any(|r| r.starts_with("'t2'")), "A's delete re-proposed");
    assert_eq!(s.b_device, s.b.sync_state().unwrap().device_id);
}

#[test]
fn bulk_and_unregistered_orphans_are_dropped() {
    let s = Deposed::new(|tm| {
        tm.commit_bulk(BulkOperation {
            model_type: "location".into(),
            record_id: "l1".into(),
            data: vec![1, 2],
        })
        .unwrap();
        tm.commit(Change::insert(&note("n1", "a note"))).unwrap();
        tm.commit(Change::insert(&tag("a13", "a"))).unwrap();
        tm.commit(Change::insert(&tag("a14", "a"))).unwrap();
        tm.commit(Change::insert(&tag("a15", "a"))).unwrap();
    });
    let applier = s.applier();
    applier.reset_for_repair().unwrap();
    catch_up(&s.b, &applier, 100);
    let path = s.a.db.path().to_owned();
    drop(applier);
    drop(s.a);
    // Reopened without the `note` model.
    let db = Database::open(&path, &Default::default(), ModelRegistry::with_builtin()).unwrap();
    let recovered = Applier::new(db.clone()).recover_orphans().unwrap();
    assert_eq!(
        recovered,
        RecoveredOrphans {
            configurations: 0,
            proposals: 3,
            changes: 3,
            dropped: 2,
            replicated: 10,
            already_queued: 0
        }
    );
    assert_eq!(db.stashed_count().unwrap(), 0);
}

/// Device A led term 1: entries 1..=8, then proposal P (three changes, p1..p3) at 9..=11. A
/// response ended inside P: device B got 1..=10 (p1, p2), device C got 1..=8. Returns the
/// directory, A, B's and C's appliers, P's id, its proposer and its changes.
fn split_proposal() -> (TempDir, Leader, Applier, Applier, Uuid, Uuid, Vec<Change>) {
    let dir = TempDir::new().unwrap();
    let a = leader(&dir, registry(false));
    let b = follower(&dir, "b", &a, registry(false));
    let c = follower(&dir, "c", &a, registry(false));
    for i in 1..=8 {
        a.tm.commit(Change::insert(&tag(&format!("t{i}"), "a"))).unwrap();
    }
    let (p, proposer) = (Uuid::new_v4(), Uuid::new_v4());
    let changes: Vec<Change> =
        (1..=3).map(|i| Change::insert(&tag(&format!("p{i}"), "part of P"))).collect();
    let out = a.tm.commit_proposal(p, proposer, changes.clone()).unwrap();
    assert_eq!((out.first_sequence, out.last_sequence), (9, 11));
    b.apply(&a.db.fetch_range(1, 10).unwrap()).unwrap();
    c.apply(&a.db.fetch_range(1, 8).unwrap()).unwrap();
    (dir, a, b, c, p, proposer, changes)
}

/// Makes `db` the leader of `term`.
fn lead(db: &Database, term: u64) -> TransactionManager {
    let device = db.sync_state().unwrap().device_id;
    db.set_leadership(SyncRole::Leader, term, Some(device)).unwrap();
    TransactionManager::new(db.clone(), device)
}

/// Repairs `applier` against `leader`'s log (stash, rebuild, recover) and returns its outbox.
fn repair(applier: &Applier, leader: &Database) -> Vec<lsync_storage::OutboxEntry> {
    applier.reset_for_repair().unwrap();
    catch_up(leader, applier, 100);
    applier.recover_orphans().unwrap();
    applier.database().outbox_list().unwrap()
}

/// How often each of `records` is in `db`'s log.
fn counts(db: &Database, records: &[&str]) -> Vec<usize> {
    let log = db.fetch_since(0, 1_000).unwrap();
    records.iter().map(|r| log.iter().filter(|e| e.record_id == *r).count()).collect()
}

#[test]
fn a_partly_replicated_proposal_re_proposed_from_the_stash_is_committed_whole_once() {
    // B, holding p1 and p2, leads term 2; A, holding all of P, repairs against B.
    let (_dir, a, b, _c, p, proposer, changes) = split_proposal();
    let b_tm = lead(b.database(), 2);
    b_tm.commit(Change::insert(&tag("b11", "b"))).unwrap();
    a.db.set_leadership(SyncRole::Follower, 2, Some(b_tm.device_id())).unwrap();
    let a_applier = Applier::new(a.db.clone());
    a_applier.reset_for_repair().unwrap();
    catch_up(b.database(), &a_applier, 100);
    let recovered = a_applier.recover_orphans().unwrap();
    assert_eq!((recovered.proposals, recovered.changes, recovered.replicated), (1, 1, 10));

    // P goes out under its own id, as far as A knows it; B commits exactly the missing p3.
    let queued = a.db.outbox_list().unwrap();
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].proposal_id, p);
    assert_eq!(bare(&queued[0].changes), changes);
    let out = b_tm.commit_proposal(p, a.device_id, queued[0].changes.clone()).unwrap();
    assert_eq!((out.duplicate, out.completed), (false, true));
    assert_eq!((out.first_sequence, out.last_sequence), (9, 12));
    let new: Vec<_> = out.entries.iter().map(|e| (e.sequence, e.record_id.as_str())).collect();
    assert_eq!(new, [(12, "p3")]);
    assert_eq!(out.entries[0].proposal_id, Some(p));

    // The proposer's own retry, and the stash's again, are duplicates now.
    for _ in 0..2 {
        let again = b_tm.commit_proposal(p, proposer, changes.clone()).unwrap();
        assert_eq!((again.duplicate, again.first_sequence, again.last_sequence), (true, 9, 12));
    }
    assert_eq!(counts(b.database(), &["p1", "p2", "p3"]), [1, 1, 1]);
    catch_up(b.database(), &a_applier, 100);
    assert_eq!(a.db.dump().unwrap(), b.database().dump().unwrap());
}

#[test]
fn a_stash_holding_a_first_part_does_not_cut_the_proposal_short() {
    // C, holding none of P, leads term 2. B (p1, p2) and A (all of P) repair against it, and
    // B's shorter P reaches C first: committed as it is; A's then adds p3; the proposer's
    // retry is a duplicate.
    let (_dir, a, b, c, p, proposer, changes) = split_proposal();
    let c_tm = lead(c.database(), 2);
    c_tm.commit(Change::insert(&tag("c9", "c"))).unwrap();
    for db in [&a.db, b.database()] {
        db.set_leadership(SyncRole::Follower, 2, Some(c_tm.device_id())).unwrap();
    }
    let from_b = repair(&b, c.database());
    let from_a = repair(&Applier::new(a.db.clone()), c.database());
    assert_eq!((from_b[0].proposal_id, from_b[0].changes.len()), (p, 2));
    assert_eq!((from_a[0].proposal_id, from_a[0].changes.len()), (p, 3));

    let out = c_tm.commit_proposal(
        p,
        b.database().sync_state().unwrap().device_id,
        from_b[0].changes.clone(),
    );
    assert_eq!((out.as_ref().unwrap().duplicate, out.unwrap().last_sequence), (false, 11));
    let out = c_tm.commit_proposal(p, a.device_id, from_a[0].changes.clone()).unwrap();
    assert_eq!(
        (out.duplicate, out.completed, out.first_sequence, out.last_sequence),
        (false, true, 10, 12)
    );
    let again = c_tm.commit_proposal(p, proposer, changes).unwrap();
    assert!(again.duplicate);
    assert_eq!(counts(c.database(), &["p1", "p2", "p3"]), [1, 1, 1]);
}

#[test]
fn a_proposal_stashed_from_two_logs_is_re_proposed_once() {
    // A commits P at 9..=11 in term 1; C gets all of it, B none. B leads term 2 and commits P
    // again (its proposer retried). A repairs against B, but before it recovers, C leads term 3
    // and A repairs against C: A's stash holds P twice, from term 1 and from term 2.
    let (_dir, a, b, c, p, proposer, changes) = split_proposal();
    c.apply(&a.db.fetch_range(9, 11).unwrap()).unwrap();
    b.reset().unwrap();
    b.apply(&a.db.fetch_range(1, 8).unwrap()).unwrap();
    let b_tm = lead(b.database(), 2);
    let out = b_tm.commit_proposal(p, proposer, changes.clone()).unwrap();
    assert_eq!((out.first_sequence, out.last_sequence, out.duplicate), (9, 11, false));
    let a_applier = Applier::new(a.db.clone());
    a_applier.reset_for_repair().unwrap();
    catch_up(b.database(), &a_applier, 100);

    let c_tm = lead(c.database(), 3);
    c_tm.commit(Change::insert(&tag("c12", "c"))).unwrap();
    assert_eq!(a_applier.reset_for_repair().unwrap(), 3, "P of term 2 joins the stash");
    catch_up(c.database(), &a_applier, 100);
    let recovered = a_applier.recover_orphans().unwrap();
    assert_eq!((recovered.proposals, recovered.changes, recovered.replicated), (1, 3, 11));
    let queued = a.db.outbox_list().unwrap();
    assert_eq!(queued.len(), 1);
    assert_eq!((queued[0].proposal_id, bare(&queued[0].changes)), (p, changes.clone()), "P once");

    let out = c_tm.commit_proposal(p, a.device_id, queued[0].changes.clone()).unwrap();
    assert!(out.duplicate, "C holds P whole");
    assert_eq!(counts(c.database(), &["p1", "p2", "p3"]), [1, 1, 1]);
}

/// `changes` without the timestamps and base versions a re-proposal carries.
fn bare(changes: &[Change]) -> Vec<Change> {
    changes.iter().map(|c| Change { hlc: None, base_version: None, ..c.clone() }).collect()
}
