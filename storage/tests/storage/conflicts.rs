//! Conflicts (docs/architecture.md, "Conflicts"): a change based on an older version of a
//! record that sets a field another device set since is decided by the model's policy —
//! last-writer-wins by the timestamp each change got where it was made, not by the order the
//! leader sequences them, or reject — and recorded in the log (model `lsync.conflict`) on every
//! device. A delete is such a write: a stamped Delete leaves a deletion marker in the field
//! clock, and an Insert or Update that would re-create the record without having seen the
//! delete is decided against it.

use lsync_protocol::{ChangeType, Configuration, Hlc, Member, SyncRole};
use lsync_storage::conflicts::{self, CONFLICT_MODEL_TYPE};
use lsync_storage::field_clock::{self, FieldStamp, RecordClock};
use lsync_storage::{
    decode, verify, Applier, Change, ConflictOutcome, ConflictPolicy, Database, ModelHandler,
    ModelRegistry, StorageError, Tag, TagHandler, TransactionManager,
};
use serde_json::json;
use tempfile::TempDir;
use uuid::Uuid;

use crate::common::*;

fn device(db: &Database) -> Uuid {
    db.sync_state().unwrap().device_id
}

/// A library at feature version 3 (stamped entries) of a leader and followers `a` and `b`,
/// holding tag `t1` ("one", no color) at version 1, caught up everywhere.
fn library(dir: &TempDir, registry: ModelRegistry) -> (Leader, Applier, Applier) {
    let l = leader(dir, registry.clone());
    let a = follower(dir, "a", &l, registry.clone());
    let b = follower(dir, "b", &l, registry);
    let mut members: Vec<Member> =
        [l.device_id, device(a.database()), device(b.database())].map(voter).to_vec();
    members.sort_by_key(|m| m.device_id);
    l.tm.commit_config(&Configuration::new(3, members)).unwrap();
    l.tm.commit(Change::insert(&tag("t1", "one"))).unwrap();
    catch_up(&l.db, &a, 100);
    catch_up(&l.db, &b, 100);
    (l, a, b)
}

/// Tag `t1` as `db` shows it.
fn shown(db: &Database) -> Tag {
    let stored = db.with_reader(|conn| TagHandler.load(conn, "t1")).unwrap().unwrap();
    decode::<Tag>(&stored.data).unwrap()
}

fn paint(color: &str, hlc: Hlc) -> Change {
    Change { hlc: Some(hlc), ..Change::update_fields("tag", "t1", &json!({ "color": color })) }
}

/// A timestamp of `device` at `ms` past now (later ones compare later).
fn at(device: Uuid, ms: u64) -> Hlc {
    let now = u64::try_from(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis(),
    )
    .unwrap();
    Hlc { physical_ms: now + ms, counter: 0, device }
}

fn recorded(db: &Database) -> Vec<lsync_storage::Conflict> {
    db.with_reader(|conn| conflicts::list(conn, 100)).unwrap()
}

/// `b` leads term 2 (without what the old leader wrote since it last fetched): its
/// transaction manager.
fn b_leads(b: &Applier) -> TransactionManager {
    let b_id = device(b.database());
    b.database().set_leadership(SyncRole::Leader, 2, Some(b_id)).unwrap();
    TransactionManager::new(b.database().clone(), b_id)
}

/// The deposed leader `l` follows `b` in term 2 and repairs: its log rebuilt from `b`'s, its
/// orphans moved to its outbox. Its applier, and what the repair recovered.
fn repair_from(l: &Leader, b: &Applier) -> (Applier, lsync_storage::RecoveredOrphans) {
    l.db.set_leadership(SyncRole::Follower, 2, Some(device(b.database()))).unwrap();
    let old_leader = Applier::new(l.db.clone());
    old_leader.reset_for_repair().unwrap();
    catch_up(b.database(), &old_leader, 100);
    let recovered = old_leader.recover_orphans().unwrap();
    (old_leader, recovered)
}

fn identical_and_verified(l: &Leader, followers: &[&Applier]) {
    for f in followers {
        catch_up(&l.db, f, 100);
        assert_eq!(f.database().dump().unwrap(), l.db.dump().unwrap(), "identical");
        let report = verify(f.database().path(), f.database().registry()).unwrap();
        assert!(report.is_ok(), "{:?}", report.problems);
    }
    let report = verify(l.db.path(), l.db.registry()).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
}

#[test]
fn the_later_edit_of_a_field_wins_even_when_it_is_sequenced_first() {
    let dir = TempDir::new().unwrap();
    let (l, a, b) = library(&dir, registry(false));
    // Partitioned, a paints t1 red, then b paints it blue (a later timestamp).
    let (pa, pb) = (Uuid::new_v4(), Uuid::new_v4());
    a.database().outbox_push(pa, &[paint("#ff0000", at(device(a.database()), 0))]).unwrap();
    b.database().outbox_push(pb, &[paint("#0000ff", at(device(b.database()), 1000))]).unwrap();
    assert_eq!(shown(a.database()).color.as_deref(), Some("#ff0000"), "its own edit at once");

    // b's reaches the leader first; a's, older and based on version 1, loses.
    let queued = |f: &Applier| f.database().outbox_list().unwrap().remove(0).changes;
    l.tm.commit_proposal(pb, device(b.database()), queued(&b)).unwrap();
    let out = l.tm.commit_proposal(pa, device(a.database()), queued(&a)).unwrap();
    assert!(!out.duplicate);
    assert_eq!(shown(&l.db).color.as_deref(), Some("#0000ff"), "the later timestamp wins");

    let found = recorded(&l.db);
    assert_eq!(found.len(), 1, "{found:?}");
    let c = &found[0];
    assert_eq!((c.model_type.as_str(), c.record_id.as_str()), ("tag", "t1"));
    assert_eq!((c.policy, c.outcome), (ConflictPolicy::LastWriterWins, ConflictOutcome::Stored));
    assert_eq!(
        (c.fields.clone(), c.kept.clone()),
        (vec!["color".to_owned()], vec!["color".to_owned()])
    );
    assert_eq!((c.base_version, c.current_version), (1, 2));
    assert_eq!(decode::<Tag>(&c.stored).unwrap().color.as_deref(), Some("#0000ff"));
    assert_eq!(c.proposed, paint("#ff0000", at(Uuid::nil(), 0)).data, "both values");
    assert_eq!((c.origin_device, c.proposal_id), (device(a.database()), pa));

    // Every device ends with blue and holds the conflict; a's proposal leaves its outbox
    // once a holds the conflict that decided it (as its proposer settles it).
    catch_up(&l.db, &a, 100);
    a.database().outbox_settle(pa, out.last_sequence).unwrap();
    assert_eq!(a.database().outbox_list_all().unwrap(), vec![], "a's losing edit is settled");
    b.database().outbox_settle(pb, out.first_sequence).unwrap();
    identical_and_verified(&l, &[&a, &b]);
    assert_eq!(shown(a.database()).color.as_deref(), Some("#0000ff"));
    assert_eq!(recorded(a.database()), found);
}

#[test]
fn an_older_edit_of_another_field_still_applies() {
    let dir = TempDir::new().unwrap();
    let (l, a, b) = library(&dir, registry(false));
    let rename = Change {
        hlc: Some(at(device(a.database()), 0)),
        ..Change::update_fields("tag", "t1", &json!({ "name": "renamed" }))
    };
    l.tm.commit_proposal(
        Uuid::new_v4(),
        device(b.database()),
        vec![Change { base_version: Some(1), ..paint("#0000ff", at(device(b.database()), 1000)) }],
    )
    .unwrap();
    l.tm.commit_proposal(
        Uuid::new_v4(),
        device(a.database()),
        vec![Change { base_version: Some(1), ..rename }],
    )
    .unwrap();
    let t = shown(&l.db);
    assert_eq!((t.name.as_str(), t.color.as_deref()), ("renamed", Some("#0000ff")));
    assert_eq!(recorded(&l.db), vec![], "different fields: no conflict");
    identical_and_verified(&l, &[&a, &b]);
}

#[test]
fn reject_refuses_the_stale_change_and_the_writers_view_rolls_back() {
    let dir = TempDir::new().unwrap();
    let mut policies = registry(false);
    policies.set_policy("tag", ConflictPolicy::Reject);
    let (l, a, b) = library(&dir, policies);
    let (pa, pb) = (Uuid::new_v4(), Uuid::new_v4());
    b.database().outbox_push(pb, &[paint("#0000ff", at(device(b.database()), 0))]).unwrap();
    // a's edit is later, but based on version 1: refused whatever its timestamp.
    a.database().outbox_push(pa, &[paint("#ff0000", at(device(a.database()), 1000))]).unwrap();
    let queued = |f: &Applier| f.database().outbox_list().unwrap().remove(0).changes;
    l.tm.commit_proposal(pb, device(b.database()), queued(&b)).unwrap();
    let refused = l.tm.commit_proposal(pa, device(a.database()), queued(&a));
    let Err(StorageError::InvalidChange(why)) = refused else { panic!("{refused:?}") };
    assert!(why.contains("conflict") && why.contains("version 2"), "{why}");
    assert_eq!(shown(&l.db).color.as_deref(), Some("#0000ff"));
    // Refused again when retried, recorded once.
    assert!(l.tm.commit_proposal(pa, device(a.database()), queued(&a)).is_err());
    let found = recorded(&l.db);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(
        (found[0].policy, found[0].outcome),
        (ConflictPolicy::Reject, ConflictOutcome::Rejected)
    );

    // The writer marks it failed (as its proposer does on a refusal): its view rolls back.
    assert_eq!(shown(a.database()).color.as_deref(), Some("#ff0000"));
    a.database().outbox_mark_failed(pa, &why, 0).unwrap();
    catch_up(&l.db, &a, 100);
    assert_eq!(shown(a.database()).color.as_deref(), Some("#0000ff"));
    assert_eq!(recorded(a.database()), found);
    identical_and_verified(&l, &[&a, &b]);
}

#[test]
fn a_deposed_leaders_re_proposed_change_does_not_undo_a_newer_value() {
    let dir = TempDir::new().unwrap();
    let (l, a, b) = library(&dir, registry(false));
    // The leader paints t1 red; nobody fetches it before it is deposed.
    let old = at(l.device_id, 0);
    l.tm.commit_proposal(Uuid::new_v4(), l.device_id, vec![paint("#ff0000", old)]).unwrap();
    // b leads term 2; a paints t1 blue there, later.
    let b_tm = b_leads(&b);
    a.database().set_leadership(SyncRole::Follower, 2, Some(device(b.database()))).unwrap();
    let pa = Uuid::new_v4();
    a.database().outbox_push(pa, &[paint("#0000ff", at(device(a.database()), 1000))]).unwrap();
    let changes = a.database().outbox_list().unwrap().remove(0).changes;
    b_tm.commit_proposal(pa, device(a.database()), changes).unwrap();

    // The old leader repairs: its red edit is an orphan, proposed again with its timestamp.
    let (old_leader, recovered) = repair_from(&l, &b);
    assert_eq!(recovered.changes, 1);
    let orphan = l.db.outbox_list().unwrap().remove(0);
    assert_eq!(orphan.changes[0].hlc, Some(old), "it keeps the timestamp it was made with");
    assert_eq!(orphan.changes[0].base_version, Some(1));
    assert_eq!(
        (orphan.changes[0].change_type, orphan.changes[0].data.clone()),
        (lsync_protocol::ChangeType::Patch, paint("#ff0000", old).data),
        "only the field it set, not the whole record it committed"
    );
    let out =
        b_tm.commit_proposal(orphan.proposal_id, l.device_id, orphan.changes.clone()).unwrap();

    assert_eq!(shown(b.database()).color.as_deref(), Some("#0000ff"), "the newer value stays");
    let found = recorded(b.database());
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].outcome, ConflictOutcome::Stored);
    assert_eq!(found[0].proposed_hlc, old);
    for (f, proposal) in [(&a, pa), (&old_leader, orphan.proposal_id)] {
        catch_up(b.database(), f, 100);
        f.database().outbox_settle(proposal, out.last_sequence).unwrap();
        assert_eq!(f.database().outbox_list_all().unwrap(), vec![], "settled");
        assert_eq!(f.database().dump().unwrap(), b.database().dump().unwrap());
        assert_eq!(shown(f.database()).color.as_deref(), Some("#0000ff"));
        let report = verify(f.database().path(), f.database().registry()).unwrap();
        assert!(report.is_ok(), "{:?}", report.problems);
    }
}

/// A change the deposed leader decided away left no entry, only its conflict record; when that
/// record is an orphan, the change is proposed again from it, so that the new leader decides it
/// again and records the conflict (simulator seed 717: the record was dropped with nothing
/// left of the change — neither in the log nor in a conflict record).
#[test]
fn a_change_decided_away_by_a_deposed_leader_is_decided_again_by_the_new_one() {
    let dir = TempDir::new().unwrap();
    let (l, a, b) = library(&dir, registry(false));
    // a paints t1 blue (later); everyone fetches it.
    let newer = at(device(a.database()), 1000);
    l.tm.commit_proposal(Uuid::new_v4(), device(a.database()), vec![paint("#0000ff", newer)])
        .unwrap();
    catch_up(&l.db, &a, 100);
    catch_up(&l.db, &b, 100);
    // b's older red edit, based on version 1, is decided away by the leader: a conflict record
    // and nothing else, which nobody fetches before the leader is deposed (b's outbox already
    // dropped the proposal: it was answered).
    let older = at(device(b.database()), 0);
    let pb = Uuid::new_v4();
    let decided =
        l.tm.commit_proposal(pb, device(b.database()), vec![paint("#ff0000", older)]).unwrap();
    assert_eq!(decided.entries.len(), 1, "the conflict record only");
    assert_eq!(decided.entries[0].model_type, CONFLICT_MODEL_TYPE);

    // b leads term 2; the old leader repairs from it.
    let b_tm = b_leads(&b);
    let (old_leader, recovered) = repair_from(&l, &b);
    assert_eq!((recovered.proposals, recovered.changes), (1, 1), "{recovered:?}");
    let orphan = l.db.outbox_list().unwrap().remove(0);
    assert_eq!(orphan.proposal_id, pb, "under the proposal that carried it");
    assert_eq!(orphan.changes.len(), 1);
    let change = &orphan.changes[0];
    assert_eq!(change.hlc, Some(older), "with the timestamp it was made with");
    assert_eq!(change.base_version, Some(2), "based on the record where the logs parted");
    assert_eq!(
        (change.change_type, &change.data),
        (ChangeType::Patch, &paint("#ff0000", older).data)
    );

    let out =
        b_tm.commit_proposal(orphan.proposal_id, l.device_id, orphan.changes.clone()).unwrap();
    assert_eq!(shown(b.database()).color.as_deref(), Some("#0000ff"), "the newer value stays");
    let found = recorded(b.database());
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!((found[0].outcome, found[0].proposed_hlc), (ConflictOutcome::Stored, older));
    assert_eq!(found[0].proposal_id, pb);
    for f in [&a, &old_leader] {
        catch_up(b.database(), f, 100);
        f.database().outbox_settle(orphan.proposal_id, out.last_sequence).unwrap();
        assert_eq!(f.database().outbox_list_all().unwrap(), vec![], "settled");
        assert_eq!(f.database().dump().unwrap(), b.database().dump().unwrap(), "identical");
        assert_eq!(recorded(f.database()), found);
        let report = verify(f.database().path(), f.database().registry()).unwrap();
        assert!(report.is_ok(), "{:?}", report.problems);
    }
}

/// Two changes of one record in one proposal, decided away in two evaluations of it (a retry
/// or a repair proposing first a part, then the whole): each gets its own conflict record — by
/// proposal and record alone, the second found the first one's and was decided away with none,
/// neither in the log nor in a conflict record (simulator seed 21).
#[test]
fn two_changes_of_one_record_in_a_proposal_are_two_conflicts() {
    let dir = TempDir::new().unwrap();
    let (l, a, b) = library(&dir, registry(false));
    let (a_id, b_id) = (device(a.database()), device(b.database()));
    // a sets both fields, later
    let newer = at(a_id, 1000);
    let both = Change {
        hlc: Some(newer),
        ..Change::update_fields("tag", "t1", &json!({ "name": "a's", "color": "#0000ff" }))
    };
    l.tm.commit_proposal(Uuid::new_v4(), a_id, vec![both]).unwrap();
    // b's older proposal sets them one by one, both based on version 1
    let name = Change {
        hlc: Some(at(b_id, 1)),
        base_version: Some(1),
        ..Change::update_fields("tag", "t1", &json!({ "name": "b's" }))
    };
    let color = Change { base_version: Some(1), ..paint("#ff0000", at(b_id, 2)) };
    let pb = Uuid::new_v4();
    l.tm.commit_proposal(pb, b_id, vec![name.clone()]).unwrap();
    l.tm.commit_proposal(pb, b_id, vec![name, color]).unwrap();

    let found = recorded(&l.db);
    let fields: Vec<&[String]> = found.iter().map(|c| c.fields.as_slice()).collect();
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(
        fields.contains(&&["name".to_owned()][..]) && fields.contains(&&["color".to_owned()][..])
    );
    assert_ne!(found[0].id, found[1].id);
    assert!(found.iter().all(|c| c.outcome == ConflictOutcome::Stored && c.proposal_id == pb));
    assert_eq!(shown(&l.db).name, "a's");
}

/// A change the deposed leader committed in part (the fields it won) left two orphans: its
/// entry and the conflict record of the fields it lost. It goes back whole, as proposed, so
/// that the new leader decides every field again and records the conflict — as a Patch of the
/// part its entry holds, the lost fields were in no record (simulator seeds 103 and 155).
#[test]
fn a_change_committed_in_part_by_a_deposed_leader_goes_back_whole() {
    let dir = TempDir::new().unwrap();
    let (l, a, b) = library(&dir, registry(false));
    let (a_id, b_id) = (device(a.database()), device(b.database()));
    // a renames t1 (later); everyone fetches it
    let rename = Change {
        hlc: Some(at(a_id, 1000)),
        ..Change::update_fields("tag", "t1", &json!({ "name": "a's" }))
    };
    l.tm.commit_proposal(Uuid::new_v4(), a_id, vec![rename]).unwrap();
    catch_up(&l.db, &a, 100);
    catch_up(&l.db, &b, 100);
    // b's older whole-record update: its color wins, its name loses; nobody fetches it
    let older = at(b_id, 0);
    let mut whole = tag("t1", "b's");
    whole.color = Some("#ff0000".into());
    let update = Change { hlc: Some(older), base_version: Some(1), ..Change::update(&whole) };
    let pb = Uuid::new_v4();
    let out = l.tm.commit_proposal(pb, b_id, vec![update.clone()]).unwrap();
    assert_eq!(out.entries.len(), 2, "the part it won, and the conflict record");

    let b_tm = b_leads(&b);
    repair_from(&l, &b);
    let orphan = l.db.outbox_list().unwrap().remove(0);
    assert_eq!(orphan.changes.len(), 1, "{:?}", orphan.changes);
    let change = &orphan.changes[0];
    assert_eq!((change.change_type, &change.data), (update.change_type, &update.data), "whole");
    assert_eq!((change.hlc, change.base_version), (Some(older), Some(2)));

    b_tm.commit_proposal(orphan.proposal_id, l.device_id, orphan.changes.clone()).unwrap();
    let shown_b = shown(b.database());
    assert_eq!((shown_b.name.as_str(), shown_b.color.as_deref()), ("a's", Some("#ff0000")));
    let found = recorded(b.database());
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!((found[0].kept.clone(), found[0].proposed_hlc), (vec!["name".to_owned()], older));
}

#[test]
fn conflict_records_cannot_be_proposed() {
    let dir = TempDir::new().unwrap();
    let (l, _a, _b) = library(&dir, registry(false));
    let forged =
        Change { model_type: CONFLICT_MODEL_TYPE.to_owned(), ..Change::delete::<Tag>("x") };
    let err = l.tm.commit_proposal(Uuid::new_v4(), Uuid::new_v4(), vec![forged]);
    assert!(matches!(err, Err(StorageError::InvalidChange(m)) if m.contains("lsync's own")));
}

#[test]
fn below_feature_version_3_nothing_is_stamped_and_leader_order_decides() {
    let dir = TempDir::new().unwrap();
    let l = leader(&dir, registry(false));
    l.tm.commit(Change::insert(&tag("t1", "one"))).unwrap();
    let newer = Change { base_version: Some(1), ..paint("#0000ff", at(Uuid::from_u128(2), 1000)) };
    let older = Change { base_version: Some(1), ..paint("#ff0000", at(Uuid::from_u128(1), 0)) };
    l.tm.commit_proposal(Uuid::new_v4(), Uuid::from_u128(2), vec![newer]).unwrap();
    let out = l.tm.commit_proposal(Uuid::new_v4(), Uuid::from_u128(1), vec![older]).unwrap();
    assert_eq!(out.entries[0].stamp, None);
    assert_eq!(shown(&l.db).color.as_deref(), Some("#ff0000"), "the last sequenced wins");
    assert_eq!(recorded(&l.db), vec![]);
}

/// Tag `t1` as `db` shows it, if it exists.
fn found(db: &Database) -> Option<Tag> {
    let stored = db.with_reader(|conn| TagHandler.load(conn, "t1")).unwrap();
    stored.map(|s| decode::<Tag>(&s.data).unwrap())
}

/// `device`'s delete of `t1` made at `hlc`, based on version 1.
fn delete_t1(hlc: Hlc) -> Change {
    Change { hlc: Some(hlc), base_version: Some(1), ..Change::delete::<Tag>("t1") }
}

/// An update of the whole `t1` (named `name`) made at `hlc`, based on version `base`.
fn rewrite(name: &str, base: i64, hlc: Hlc) -> Change {
    Change { hlc: Some(hlc), base_version: Some(base), ..Change::update(&tag("t1", name)) }
}

/// b deletes `t1` (version 2) at 1000 ms past now; returns the delete's timestamp.
fn deleted_by_b(l: &Leader, b: &Applier) -> Hlc {
    let hlc = at(device(b.database()), 1000);
    l.tm.commit_proposal(Uuid::new_v4(), device(b.database()), vec![delete_t1(hlc)]).unwrap();
    assert_eq!(found(&l.db), None);
    hlc
}

fn clocks(db: &Database) -> Vec<(String, String, RecordClock)> {
    db.with_reader(field_clock::all).unwrap()
}

#[test]
fn an_update_older_than_a_delete_it_never_saw_leaves_the_record_deleted() {
    let dir = TempDir::new().unwrap();
    let (l, a, b) = library(&dir, registry(false));
    let deleted = deleted_by_b(&l, &b);
    // a rewrote t1 before b deleted it (an older timestamp), based on version 1; it arrives
    // after the delete
    let (pa, older) = (Uuid::new_v4(), at(device(a.database()), 0));
    let out =
        l.tm.commit_proposal(pa, device(a.database()), vec![rewrite("older", 1, older)]).unwrap();
    assert_eq!(found(&l.db), None, "the later delete wins: t1 stays deleted");
    assert!(out.entries.iter().all(|e| e.model_type == CONFLICT_MODEL_TYPE), "{out:?}");

    let c = recorded(&l.db);
    assert_eq!(c.len(), 1, "{c:?}");
    let c = &c[0];
    assert_eq!((c.policy, c.outcome), (ConflictPolicy::LastWriterWins, ConflictOutcome::Stored));
    assert_eq!((c.change_type.as_str(), c.fields.clone()), ("update", vec![]), "the whole record");
    assert_eq!((c.base_version, c.current_version, c.stored.clone()), (1, 0, vec![]), "deleted");
    assert_eq!((c.stored_hlc, c.proposed_hlc), (Some(deleted), older), "both timestamps");
    assert_eq!(c.proposed, rewrite("older", 1, older).data);
    assert_eq!((c.origin_device, c.proposal_id), (device(a.database()), pa));
    identical_and_verified(&l, &[&a, &b]);
    assert_eq!(found(a.database()), None);
}

#[test]
fn an_update_later_than_a_delete_it_never_saw_re_creates_the_record() {
    let dir = TempDir::new().unwrap();
    let (l, a, b) = library(&dir, registry(false));
    let deleted = deleted_by_b(&l, &b);
    let later = at(device(a.database()), 2000);
    let out = l
        .tm
        .commit_proposal(Uuid::new_v4(), device(a.database()), vec![rewrite("later", 1, later)])
        .unwrap();
    assert_eq!(out.entries[0].change_type, lsync_protocol::ChangeType::Insert, "re-created");
    assert_eq!(found(&l.db).map(|t| t.name).as_deref(), Some("later"));

    let c = recorded(&l.db);
    assert_eq!(c.len(), 1, "recorded although the update won: {c:?}");
    assert_eq!(c[0].outcome, ConflictOutcome::Change);
    assert_eq!((c[0].stored_hlc, c[0].proposed_hlc), (Some(deleted), later));
    assert_eq!((c[0].current_version, c[0].stored.clone()), (0, vec![]));
    identical_and_verified(&l, &[&a, &b]);
    let marker_gone = clocks(&l.db);
    assert_eq!(marker_gone.len(), 1);
    assert!(!marker_gone[0].2.deleted, "the re-creation replaced the marker: {marker_gone:?}");
}

#[test]
fn reject_refuses_an_update_of_a_record_another_device_deleted_since() {
    let dir = TempDir::new().unwrap();
    let mut policies = registry(false);
    policies.set_policy("tag", ConflictPolicy::Reject);
    let (l, a, b) = library(&dir, policies);
    deleted_by_b(&l, &b);
    let pa = Uuid::new_v4();
    // later than the delete, but based on version 1: refused whatever its timestamp
    let stale = vec![rewrite("later", 1, at(device(a.database()), 2000))];
    let refused = l.tm.commit_proposal(pa, device(a.database()), stale.clone());
    let Err(StorageError::InvalidChange(why)) = refused else { panic!("{refused:?}") };
    assert!(why.starts_with("conflict:") && why.contains("deleted"), "{why}");
    assert_eq!(found(&l.db), None, "still deleted");
    assert!(l.tm.commit_proposal(pa, device(a.database()), stale).is_err(), "refused again");
    let c = recorded(&l.db);
    assert_eq!(c.len(), 1, "recorded once: {c:?}");
    assert_eq!((c[0].policy, c[0].outcome), (ConflictPolicy::Reject, ConflictOutcome::Rejected));
    identical_and_verified(&l, &[&a, &b]);
}

#[test]
fn a_re_creation_based_on_the_deleted_record_is_no_conflict_even_under_reject() {
    let dir = TempDir::new().unwrap();
    let mut policies = registry(false);
    policies.set_policy("tag", ConflictPolicy::Reject);
    let (l, a, b) = library(&dir, policies);
    deleted_by_b(&l, &b);
    let a_id = device(a.database());
    // based on the version before the delete: a conflict, refused
    let stale = rewrite("again", 1, at(a_id, 2000));
    assert!(l.tm.commit_proposal(Uuid::new_v4(), a_id, vec![stale]).is_err());
    // a applied the delete (it holds no t1: base 0) and writes t1 again: no conflict
    catch_up(&l.db, &a, 100);
    let deliberate = rewrite("again", 0, at(a_id, 3000));
    let out = l.tm.commit_proposal(Uuid::new_v4(), a_id, vec![deliberate]).unwrap();
    assert_eq!(out.entries.len(), 1, "the Insert only, no conflict record: {out:?}");
    assert_eq!(found(&l.db).map(|t| t.name).as_deref(), Some("again"));
    let c = recorded(&l.db);
    assert_eq!(c.len(), 1, "only the refused one: {c:?}");
    assert_eq!(c[0].outcome, ConflictOutcome::Rejected);
    identical_and_verified(&l, &[&a, &b]);
}

#[test]
fn every_device_derives_the_deletion_marker_and_verify_checks_it() {
    let dir = TempDir::new().unwrap();
    let (l, a, b) = library(&dir, registry(false));
    let deleted = deleted_by_b(&l, &b);
    let marker = RecordClock {
        whole: FieldStamp { version: 2, hlc: Some(deleted) },
        fields: vec![],
        deleted: true,
    };
    let expected = vec![("tag".to_owned(), "t1".to_owned(), marker)];
    assert_eq!(clocks(&l.db), expected, "the delete's version and timestamp are kept");
    identical_and_verified(&l, &[&a, &b]);
    assert_eq!(clocks(a.database()), expected, "derived from the log on every device");
    assert_eq!(clocks(b.database()), expected);

    // a lost marker is a difference with the replay
    use lsync_storage::diesel::{self, RunQueryDsl};
    a.database()
        .with_writer(|conn| {
            diesel::sql_query("DELETE FROM field_clock").execute(conn)?;
            Ok(())
        })
        .unwrap();
    let report = verify(a.database().path(), a.database().registry()).unwrap();
    let problems = format!("{:?}", report.problems);
    assert!(!report.is_ok() && problems.contains("field_clock"), "{problems}");
}

#[test]
fn below_feature_version_3_a_delete_leaves_no_marker_and_an_update_re_creates() {
    let dir = TempDir::new().unwrap();
    let l = leader(&dir, registry(false));
    l.tm.commit(Change::insert(&tag("t1", "one"))).unwrap();
    l.tm.commit(Change::delete::<Tag>("t1")).unwrap();
    let long_ago = Hlc { physical_ms: 1_000, counter: 0, device: Uuid::from_u128(1) };
    let stale = rewrite("stale", 1, long_ago);
    let out = l.tm.commit_proposal(Uuid::new_v4(), Uuid::from_u128(1), vec![stale]).unwrap();
    assert_eq!(out.entries[0].change_type, lsync_protocol::ChangeType::Insert);
    assert_eq!(found(&l.db).map(|t| t.name).as_deref(), Some("stale"), "as before: re-created");
    assert_eq!((recorded(&l.db), clocks(&l.db)), (vec![], vec![]));

    // from feature version 3 on, the same stale update after a delete is decided against it
    l.tm.commit_config(&Configuration::new(3, vec![voter(l.device_id)])).unwrap();
    l.tm.commit(Change::delete::<Tag>("t1")).unwrap();
    let stale = rewrite("stale", 1, long_ago);
    l.tm.commit_proposal(Uuid::new_v4(), Uuid::from_u128(1), vec![stale]).unwrap();
    assert_eq!(found(&l.db), None, "the delete is later");
    assert_eq!(recorded(&l.db).len(), 1);
    let report = verify(l.db.path(), l.db.registry()).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
}
