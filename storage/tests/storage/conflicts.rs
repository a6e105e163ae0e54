//! Conflicts (docs/architecture.md, "Conflicts"): a change based on an older version of a
//! record that sets a field another device set since is decided by the model's policy —
//! last-writer-wins by the timestamp each change got where it was made, not by the order the
//! leader sequences them, or reject — and recorded in the log (model `lsync.conflict`) on every
//! device.

use lsync_protocol::{ChangeType, Configuration, Hlc, Member, MemberRole, SyncRole};
use lsync_storage::conflicts::{self, CONFLICT_MODEL_TYPE};
use lsync_storage::{
    decode, verify, Applier, Change, ConflictOutcome, ConflictPolicy, Database, ModelHandler,
    ModelRegistry, StorageError, Tag, TagHandler, TransactionManager,
};
use serde_json::json;
use tempfile::TempDir;
use uuid::Uuid;

use crate::common::*;

fn member(device_id: Uuid) -> Member {
    Member {
        device_id,
        peer_id: libp2p::identity::Keypair::generate_ed25519().public().to_peer_id().to_string(),
        name: "d".into(),
        addresses: vec!["/ip4/127.0.0.1/tcp/7700".into()],
        role: MemberRole::Voter,
        preference: Default::default(),
    }
}

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
        [l.device_id, device(a.database()), device(b.database())].map(member).to_vec();
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
    b.database().set_leadership(SyncRole::Leader, 2, Some(device(b.database()))).unwrap();
    let b_tm = TransactionManager::new(b.database().clone(), device(b.database()));
    a.database().set_leadership(SyncRole::Follower, 2, Some(device(b.database()))).unwrap();
    let pa = Uuid::new_v4();
    a.database().outbox_push(pa, &[paint("#0000ff", at(device(a.database()), 1000))]).unwrap();
    let changes = a.database().outbox_list().unwrap().remove(0).changes;
    b_tm.commit_proposal(pa, device(a.database()), changes).unwrap();

    // The old leader repairs: its red edit is an orphan, proposed again with its timestamp.
    l.db.set_leadership(SyncRole::Follower, 2, Some(device(b.database()))).unwrap();
    let old_leader = Applier::new(l.db.clone());
    old_leader.reset_for_repair().unwrap();
    catch_up(b.database(), &old_leader, 100);
    let recovered = old_leader.recover_orphans().unwrap();
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
    b.database().set_leadership(SyncRole::Leader, 2, Some(device(b.database()))).unwrap();
    let b_tm = TransactionManager::new(b.database().clone(), device(b.database()));
    l.db.set_leadership(SyncRole::Follower, 2, Some(device(b.database()))).unwrap();
    let old_leader = Applier::new(l.db.clone());
    old_leader.reset_for_repair().unwrap();
    catch_up(b.database(), &old_leader, 100);
    let recovered = old_leader.recover_orphans().unwrap();
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
