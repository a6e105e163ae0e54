//! The pending overlay (docs/architecture.md, "Local-first writes"): a device's own changes are
//! shown in its tables at once, rebased when committed entries arrive, gone when refused, no
//! longer pending once committed; `verify` accounts for them.

use lsync_storage::verify::Problem;
use lsync_storage::{decode, verify, Change, Database, ModelHandler, OutboxState, Tag, TagHandler};
use tempfile::TempDir;
use uuid::Uuid;

use crate::common::*;

/// The tag `id` as this device's table shows it: (name, version), `None` if absent.
fn shown(db: &Database, id: &str) -> Option<(String, i64)> {
    let stored = db.with_reader(|conn| TagHandler.load(conn, id)).unwrap()?;
    Some((decode::<Tag>(&stored.data).unwrap().name, stored.version))
}

fn committed(name: &str, version: i64) -> Option<(String, i64)> {
    Some((name.to_owned(), version))
}

/// `verify` of `db` finds nothing wrong; returns the pending proposals it replayed.
fn verifies(db: &Database) -> u64 {
    let report = verify(db.path(), db.registry()).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    report.pending_proposals
}

/// The records with a captured committed row.
fn captured(db: &Database) -> Vec<String> {
    db.pending_undo().unwrap().into_iter().map(|(m, r, _)| format!("{m}/{r}")).collect()
}

/// A leader with tag `t1` ("one", version 1) and a follower caught up.
fn library(dir: &TempDir) -> (Leader, lsync_storage::Applier) {
    let l = leader(dir, registry(false));
    l.tm.commit(Change::insert(&tag("t1", "one"))).unwrap();
    let f = follower(dir, "f", &l, registry(false));
    catch_up(&l.db, &f, 100);
    (l, f)
}

fn device(f: &lsync_storage::Applier) -> Uuid {
    f.database().sync_state().unwrap().device_id
}

#[test]
fn a_pending_change_is_shown_at_once_over_the_committed_rows() {
    let dir = TempDir::new().unwrap();
    let (_l, f) = library(&dir);
    let db = f.database();
    let p = Uuid::new_v4();
    let changes = vec![
        Change::update(&tag("t1", "mine")),
        Change::insert(&tag("t2", "new")),
        Change::insert(&note("n1", "body")),
    ];
    assert!(db.outbox_push(p, &changes).unwrap());
    assert_eq!(shown(db, "t1"), committed("mine", 2), "the committed version + 1");
    assert_eq!(shown(db, "t2"), committed("new", 1));
    assert_eq!(db.last_position().unwrap().sequence, 1, "the log stays committed-only");
    let undo = db.pending_undo().unwrap();
    assert_eq!(undo.len(), 3, "{undo:?}");
    assert_eq!(undo[0].0, "note");
    assert_eq!(undo[0].2, None, "n1 does not exist committed");
    assert_eq!((undo[1].1.as_str(), undo[1].2.as_ref().map(|s| s.version)), ("t1", Some(1)));
    assert_eq!((undo[2].1.as_str(), undo[2].2.as_ref()), ("t2", None));
    assert_eq!(verifies(db), 1);
}

#[test]
fn a_committed_entry_under_a_pending_change_is_rebased_and_the_pending_one_stays_on_top() {
    let dir = TempDir::new().unwrap();
    let (l, f) = library(&dir);
    let db = f.database();
    let p = Uuid::new_v4();
    let mine = vec![Change::update(&tag("t1", "mine"))];
    db.outbox_push(p, &mine).unwrap();
    // another device's edit of the same record is committed first
    l.tm.commit(Change::update(&tag("t1", "theirs"))).unwrap();
    l.tm.commit(Change::insert(&tag("t3", "other"))).unwrap();
    catch_up(&l.db, &f, 100);
    assert_eq!(shown(db, "t1"), committed("mine", 3), "still on top, over version 2");
    assert_eq!(shown(db, "t3"), committed("other", 1));
    let undo = db.pending_undo().unwrap();
    assert_eq!(undo.len(), 1);
    assert_eq!(decode::<Tag>(&undo[0].2.as_ref().unwrap().data).unwrap().name, "theirs");
    assert_eq!(verifies(db), 1);

    // the proposal is committed (after "theirs": it wins by leader order), and comes back
    l.tm.commit_proposal(p, device(&f), mine).unwrap();
    let since = db.last_position().unwrap().sequence;
    let outcome = f.apply(&l.db.fetch_since(since, 100).unwrap()).unwrap();
    assert_eq!(outcome.settled, 1);
    assert_eq!(db.outbox_list_all().unwrap(), vec![], "no longer pending");
    assert!(captured(db).is_empty());
    assert_eq!(shown(db, "t1"), committed("mine", 3));
    assert_eq!(db.dump().unwrap(), l.db.dump().unwrap(), "identical to the leader");
    assert_eq!(verifies(db), 0);
}

#[test]
fn a_refused_pending_change_is_rolled_back_under_the_later_ones() {
    let dir = TempDir::new().unwrap();
    let (_l, f) = library(&dir);
    let db = f.database();
    let (p1, p2) = (Uuid::new_v4(), Uuid::new_v4());
    db.outbox_push(p1, &[Change::update(&tag("t1", "first")), Change::insert(&tag("t2", "x"))])
        .unwrap();
    db.outbox_push(p2, &[Change::update(&tag("t1", "second"))]).unwrap();
    assert_eq!(shown(db, "t1"), committed("second", 3));

    assert!(db.outbox_mark_failed(p1, "refused", 1).unwrap());
    assert_eq!(shown(db, "t1"), committed("second", 2), "p2 alone over the committed row");
    assert_eq!(shown(db, "t2"), None, "p1's insert is gone");
    assert_eq!(captured(db), vec!["tag/t1"]);
    assert_eq!(verifies(db), 1);

    assert!(db.outbox_mark_failed(p2, "refused", 1).unwrap());
    assert_eq!(shown(db, "t1"), committed("one", 1), "the committed row again");
    assert!(captured(db).is_empty());
    assert_eq!(verifies(db), 0);

    // an operator's retry shows it again, at its place in the order
    assert!(db.outbox_retry(p1).unwrap());
    assert_eq!(shown(db, "t2"), committed("x", 1));
    assert_eq!(shown(db, "t1"), committed("first", 2));
    assert_eq!(verifies(db), 1);
    // a discarded failed entry changes nothing shown
    assert!(db.outbox_discard(p2).unwrap());
    assert_eq!(shown(db, "t1"), committed("first", 2));
    assert_eq!(verifies(db), 1);
}

#[test]
fn a_delivered_proposal_stays_shown_until_the_log_reaches_it() {
    let dir = TempDir::new().unwrap();
    let (l, f) = library(&dir);
    let db = f.database();
    let p = Uuid::new_v4();
    let mine = vec![Change::update(&tag("t1", "mine"))];
    db.outbox_push(p, &mine).unwrap();
    let outcome = l.tm.commit_proposal(p, device(&f), mine.clone()).unwrap();
    // the leader's answer arrives before its entries
    assert!(db.outbox_settle(p, outcome.last_sequence).unwrap());
    let entry = db.outbox_get(p).unwrap().unwrap();
    assert_eq!(entry.state, OutboxState::Delivered { last_sequence: 2 });
    assert_eq!(db.outbox_count().unwrap(), 0, "not delivered again");
    assert_eq!(shown(db, "t1"), committed("mine", 2), "still shown");
    assert_eq!(verifies(db), 1);
    catch_up(&l.db, &f, 100);
    assert_eq!(db.outbox_list_all().unwrap(), vec![]);
    assert!(captured(db).is_empty());
    assert_eq!(db.dump().unwrap(), l.db.dump().unwrap());

    // an answer that arrives after the entries removes it at once
    let q = Uuid::new_v4();
    let again = vec![Change::update(&tag("t1", "again")), Change::delete::<Tag>("gone")];
    db.outbox_push(q, &again).unwrap();
    let outcome = l.tm.commit_proposal(q, device(&f), again).unwrap();
    catch_up(&l.db, &f, 100);
    assert_eq!(db.outbox_count().unwrap(), 1, "its dropped delete: the log holds a first part");
    assert!(db.outbox_settle(q, outcome.last_sequence).unwrap());
    assert_eq!(db.outbox_list_all().unwrap(), vec![]);
    assert!(captured(db).is_empty());
    assert_eq!(db.dump().unwrap(), l.db.dump().unwrap());
}

#[test]
fn a_leader_evaluates_proposals_on_committed_rows_and_drops_its_own_once_committed() {
    let dir = TempDir::new().unwrap();
    let l = leader(&dir, registry(false));
    l.tm.commit(Change::insert(&tag("t1", "one"))).unwrap();
    // the leader's own pending change (e.g. queued while a transfer held its writes)
    let own = Uuid::new_v4();
    let mine = vec![Change::update(&tag("t1", "own"))];
    l.db.outbox_push(own, &mine).unwrap();
    assert_eq!(shown(&l.db, "t1"), committed("own", 2));

    // a member's proposal to the same record: evaluated on the committed row (version 1)
    let member = l.tm.commit_proposal(
        Uuid::new_v4(),
        Uuid::new_v4(),
        vec![Change::update(&tag("t1", "member"))],
    );
    assert_eq!(member.unwrap().entries[0].version, 2);
    assert_eq!(shown(&l.db, "t1"), committed("own", 3), "the pending one on top");
    assert_eq!(verifies(&l.db), 1);

    // its own proposal committed: out of the outbox in the same transaction
    l.tm.commit_proposal(own, l.device_id, mine).unwrap();
    assert_eq!(l.db.outbox_list_all().unwrap(), vec![]);
    assert!(captured(&l.db).is_empty());
    assert_eq!(shown(&l.db, "t1"), committed("own", 3));
    assert_eq!(verifies(&l.db), 0);

    // without pending changes nothing is captured
    l.tm.commit_proposal(Uuid::new_v4(), l.device_id, vec![Change::insert(&tag("t2", "x"))])
        .unwrap();
    assert!(captured(&l.db).is_empty());
}

#[test]
fn a_full_reconciliation_keeps_showing_the_pending_changes() {
    let dir = TempDir::new().unwrap();
    let (l, f) = library(&dir);
    let db = f.database();
    db.outbox_push(Uuid::new_v4(), &[Change::update(&tag("t1", "mine"))]).unwrap();
    f.reset().unwrap();
    assert_eq!(shown(db, "t1"), committed("mine", 1), "over the empty tables");
    assert_eq!(verifies(db), 1);
    catch_up(&l.db, &f, 100);
    assert_eq!(shown(db, "t1"), committed("mine", 2), "rebased over the rebuilt log");
    assert_eq!(verifies(db), 1);
}

/// Tampers through a connection of its own, as the sqlite3 CLI would.
fn tamper(db: &Database, sql: &str) {
    use diesel::prelude::*;
    let mut conn = SqliteConnection::establish(db.path().to_str().unwrap()).unwrap();
    assert_eq!(diesel::sql_query(sql).execute(&mut conn).unwrap(), 1, "{sql}");
}

#[test]
fn verify_still_finds_tampering_under_a_pending_overlay() {
    let dir = TempDir::new().unwrap();
    let (_l, f) = library(&dir);
    let db = f.database();
    db.outbox_push(Uuid::new_v4(), &[Change::update(&tag("t1", "mine"))]).unwrap();
    assert_eq!(verifies(db), 1);

    tamper(db, "UPDATE tag SET name = 'forged' WHERE id = 't1'");
    let report = verify(db.path(), db.registry()).unwrap();
    assert!(
        matches!(&report.problems[..], [Problem::RowDiffers { table, .. }] if table == "tag"),
        "{:?}",
        report.problems
    );
    tamper(db, "UPDATE tag SET name = 'mine' WHERE id = 't1'");
    assert_eq!(verifies(db), 1);

    // the captured committed row is not the committed one
    tamper(db, "UPDATE pending_undo SET version = 7 WHERE record_id = 't1'");
    let report = verify(db.path(), db.registry()).unwrap();
    assert!(
        matches!(&report.problems[..], [Problem::Pending { record_id, .. }] if record_id == "t1"),
        "{:?}",
        report.problems
    );
    // a pending change without a captured row
    tamper(db, "DELETE FROM pending_undo WHERE record_id = 't1'");
    let report = verify(db.path(), db.registry()).unwrap();
    assert!(
        matches!(&report.problems[..], [Problem::Pending { reason, .. }] if reason.contains("not captured")),
        "{:?}",
        report.problems
    );
}

#[test]
fn changes_queued_before_the_upgrade_are_shown_at_the_next_open() {
    let dir = TempDir::new().unwrap();
    let (_l, f) = library(&dir);
    let path = f.database().path().to_owned();
    // queued as a version before local-first writes did: the outbox row only
    let registry = f.database().registry().clone();
    let changes = vec![Change::update(&tag("t1", "queued before"))];
    f.database()
        .write(|conn| lsync_storage::outbox::push(conn, &registry, Uuid::new_v4(), &changes))
        .unwrap();
    assert_eq!(shown(f.database(), "t1"), committed("one", 1));
    drop(f);
    let db = Database::open(&path, &Default::default(), registry).unwrap();
    assert_eq!(shown(&db, "t1"), committed("queued before", 2));
    assert_eq!(verifies(&db), 1);
}

/// A leader answered a proposal committed and then lost it (a failover replaced its tail, or
/// its disk went back): this device's log reaches the answered sequence without the proposal.
/// The delivered entry goes back to pending — still shown, proposed again — never dropped.
#[test]
fn a_delivered_proposal_the_log_reached_without_it_is_proposed_again() {
    let dir = TempDir::new().unwrap();
    let (l, f) = library(&dir);
    let db = f.database();
    let p = Uuid::new_v4();
    let mine = vec![Change::update(&tag("t1", "mine"))];
    db.outbox_push(p, &mine).unwrap();
    // the leader answered "committed at 2" — and that commit did not last
    assert!(db.outbox_settle(p, 2).unwrap());
    assert_eq!(
        db.outbox_get(p).unwrap().unwrap().state,
        OutboxState::Delivered { last_sequence: 2 }
    );
    // the log reaches 2 with another entry
    l.tm.commit(Change::insert(&tag("t9", "someone else's"))).unwrap();
    catch_up(&l.db, &f, 100);
    assert_eq!(db.last_position().unwrap().sequence, 2);
    assert_eq!(db.outbox_get(p).unwrap().unwrap().state, OutboxState::Pending, "proposed again");
    assert_eq!(db.outbox_count().unwrap(), 1);
    assert_eq!(shown(db, "t1"), committed("mine", 2), "still shown");
    assert_eq!(verifies(db), 1);
    // committed for real this time: gone from the outbox once the log holds it
    let outcome = l.tm.commit_proposal(p, device(&f), mine).unwrap();
    catch_up(&l.db, &f, 100);
    assert!(!db.outbox_settle(p, outcome.last_sequence).unwrap_or(false));
    assert_eq!(db.outbox_list_all().unwrap(), vec![]);
    assert_eq!(db.dump().unwrap(), l.db.dump().unwrap());
}

/// At a new term, a delivered proposal this log does not hold goes back to pending (the leader
/// that answered may have lost it); one the log holds is left to settle.
#[test]
fn a_new_term_sends_again_the_delivered_proposals_this_log_does_not_hold() {
    let dir = TempDir::new().unwrap();
    let (_l, f) = library(&dir);
    let db = f.database();
    let p = Uuid::new_v4();
    db.outbox_push(p, &[Change::update(&tag("t1", "mine"))]).unwrap();
    assert!(db.outbox_settle(p, 40).unwrap(), "answered committed at 40, far ahead");
    assert_eq!(db.outbox_redeliver_unheld().unwrap(), 1);
    assert_eq!(db.outbox_get(p).unwrap().unwrap().state, OutboxState::Pending);
    assert_eq!(shown(db, "t1"), committed("mine", 2), "still shown");
    assert_eq!(db.outbox_redeliver_unheld().unwrap(), 0, "nothing delivered any more");
}
