//! Membership in storage: configuration entries committed and applied with the `devices` rows
//! in one transaction, the configuration in effect during a rebuild, the rebuild mark,
//! entries of a newer version, invitations and address hints.

use lsync_protocol::{
    AddressHint, ChangeType, Configuration, Member, MemberRole, SyncRole, FEATURE_VERSION,
};
use lsync_storage::{Change, InvitationRefused, LogPosition, StorageError, TransactionManager};
use uuid::Uuid;

use crate::common::*;

fn config(members: Vec<Member>) -> Configuration {
    Configuration::new(FEATURE_VERSION, members)
}

fn devices(db: &lsync_storage::Database) -> Vec<(Uuid, MemberRole)> {
    db.membership().unwrap().configuration.members.iter().map(|m| (m.device_id, m.role)).collect()
}

#[test]
fn a_configuration_entry_is_committed_with_the_devices_rows_in_one_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let l = leader(&dir, registry(false));
    let mut events = l.tm.subscribe();
    let learner = Uuid::new_v4();
    let c =
        config(vec![member(l.device_id, MemberRole::Voter), member(learner, MemberRole::Learner)]);
    let entry = l.tm.commit_config(&c).unwrap();
    assert_eq!((entry.sequence, entry.term, entry.change_type), (1, 1, ChangeType::Config));
    assert_eq!(Configuration::decode(&entry.data).unwrap(), c);
    let m = l.db.membership().unwrap();
    assert_eq!((m.sequence, &m.configuration), (1, &c));
    assert!(m.is_replicated());
    assert_eq!(events.try_recv().unwrap().last_sequence, 1);
    assert_eq!(l.db.sync_state().unwrap().last_synced_sequence, 1);

    // A configuration without a voter, or of an older feature version, writes nothing.
    let bad = config(vec![member(l.device_id, MemberRole::Learner)]);
    assert!(matches!(l.tm.commit_config(&bad), Err(StorageError::InvalidChange(_))));
    let mut older = c.clone();
    older.feature_version = FEATURE_VERSION - 1;
    assert!(matches!(l.tm.commit_config(&older), Err(StorageError::InvalidChange(_))));
    assert_eq!(l.db.last_position().unwrap().sequence, 1);
    assert_eq!(l.db.membership().unwrap().configuration, c);

    // Not the leader: refused, nothing written.
    let other = TransactionManager::new(l.db.clone(), Uuid::new_v4());
    assert!(matches!(other.commit_config(&c), Err(StorageError::NotLeader { .. })));
    assert_eq!(l.db.last_position().unwrap().sequence, 1);
}

#[test]
fn a_follower_applies_configuration_entries_with_its_devices_rows() {
    let dir = tempfile::tempdir().unwrap();
    let l = leader(&dir, registry(false));
    let f = follower(&dir, "f", &l, registry(false));
    let me = f.database().sync_state().unwrap().device_id;
    let first = config(vec![member(l.device_id, MemberRole::Voter)]);
    l.tm.commit_config(&first).unwrap();
    l.tm.commit(Change::insert(&tag("t1", "one"))).unwrap();
    let second =
        config(vec![member(l.device_id, MemberRole::Voter), member(me, MemberRole::Learner)]);
    l.tm.commit_config(&second).unwrap();
    let outcome = f.apply(&l.db.fetch_since(0, 10).unwrap()).unwrap();
    assert_eq!(outcome.applied, 3);
    let installed = outcome.membership.expect("the batch's latest configuration");
    assert_eq!((installed.sequence, &installed.configuration), (3, &second));
    assert_eq!(devices(f.database()), devices(&l.db));
    assert_eq!(f.database().dump().unwrap(), l.db.dump().unwrap());
}

#[test]
fn a_joiner_keeps_the_configuration_it_was_given_while_it_replays_older_ones() {
    let dir = tempfile::tempdir().unwrap();
    let l = leader(&dir, registry(false));
    let f = follower(&dir, "f", &l, registry(false));
    let me = f.database().sync_state().unwrap().device_id;
    l.tm.commit_config(&config(vec![member(l.device_id, MemberRole::Voter)])).unwrap();
    l.tm.commit(Change::insert(&tag("t1", "one"))).unwrap();
    let with_me =
        config(vec![member(l.device_id, MemberRole::Voter), member(me, MemberRole::Learner)]);
    l.tm.commit_config(&with_me).unwrap();
    // The joiner was given the configuration at 3 (in `Joined`) before its log holds it.
    f.database().install_membership(&with_me, 3).unwrap();
    let outcome = f.apply(&l.db.fetch_since(0, 1).unwrap()).unwrap();
    assert_eq!(outcome.membership, None, "entry 1 is older than what is in effect");
    assert_eq!(f.database().membership().unwrap().sequence, 3);
    assert!(f.database().membership().unwrap().configuration.contains(me));
    catch_up(&l.db, &f, 10);
    assert_eq!(f.database().membership().unwrap().configuration, with_me);
}

#[test]
fn a_rebuild_keeps_its_mark_and_configuration_until_it_is_complete() {
    let dir = tempfile::tempdir().unwrap();
    let l = leader(&dir, registry(false));
    let f = follower(&dir, "f", &l, registry(false));
    let me = f.database().sync_state().unwrap().device_id;
    let c = config(vec![member(l.device_id, MemberRole::Voter), member(me, MemberRole::Voter)]);
    l.tm.commit_config(&c).unwrap();
    for i in 0..5 {
        l.tm.commit(Change::insert(&tag(&format!("t{i}"), "x"))).unwrap();
    }
    catch_up(&l.db, &f, 100);
    // The follower's own copy diverges: two entries of a term the leader never had, and a
    // configuration entry among them that drops the leader.
    let own = config(vec![member(me, MemberRole::Voter)]);
    let mut tail = vec![
        entry(7, 2, Change::insert(&tag("x1", "mine")), 1),
        lsync_storage::membership::entry(2, 8, me, &own),
    ];
    tail[0].origin_device = me;
    f.apply(&tail).unwrap();
    assert_eq!(f.database().membership().unwrap().sequence, 8);

    let held = f.database().last_position().unwrap();
    assert_eq!(held, LogPosition { sequence: 8, term: 2 });
    f.reset_for_repair().unwrap();
    assert_eq!(f.database().rebuild_mark().unwrap(), held);
    // While it rebuilds, the configuration it had stays in effect.
    catch_up(&l.db, &f, 3);
    assert_eq!(f.database().membership().unwrap().sequence, 8);
    // Complete: the leader's latest configuration is installed; the mark stays, since the
    // rebuilt log (6, term 1) is behind what the device held (8, term 2).
    let settled = f.settle().unwrap().expect("the leader's configuration");
    assert_eq!((settled.sequence, settled.configuration), (1, c.clone()));
    assert_eq!(f.database().rebuild_mark().unwrap(), held);
    // Once the log passes the mark (a newer term's entry), the mark is cleared.
    l.db.set_leadership(SyncRole::Leader, 3, Some(l.device_id)).unwrap();
    l.tm.commit_config(&c).unwrap();
    catch_up(&l.db, &f, 10);
    assert_eq!(f.database().membership().unwrap().sequence, 7, "applied with its entry");
    assert_eq!(f.settle().unwrap(), None, "nothing more to install");
    assert_eq!(f.database().rebuild_mark().unwrap(), LogPosition::default());
    assert_eq!(f.database().dump().unwrap(), l.db.dump().unwrap());
}

#[test]
fn configuration_entries_of_a_stash_are_never_proposed_again() {
    let dir = tempfile::tempdir().unwrap();
    let l = leader(&dir, registry(false));
    let f = follower(&dir, "f", &l, registry(false));
    let me = f.database().sync_state().unwrap().device_id;
    l.tm.commit_config(&config(vec![member(l.device_id, MemberRole::Voter)])).unwrap();
    catch_up(&l.db, &f, 10);
    let mut orphan = entry(2, 2, Change::insert(&tag("x1", "mine")), 1);
    orphan.origin_device = me;
    let lone = config(vec![member(me, MemberRole::Voter)]);
    f.apply(&[orphan, lsync_storage::membership::entry(2, 3, me, &lone)]).unwrap();
    f.reset_for_repair().unwrap();
    catch_up(&l.db, &f, 10);
    let recovered = f.recover_orphans().unwrap();
    assert_eq!((recovered.proposals, recovered.changes, recovered.configurations), (1, 1, 1));
    let queued = f.database().outbox_list().unwrap();
    assert_eq!(queued.len(), 1);
    assert!(queued[0].changes.iter().all(|c| c.change_type != ChangeType::Config));
}

#[test]
fn entries_of_a_newer_version_are_refused_whole() {
    let dir = tempfile::tempdir().unwrap();
    let l = leader(&dir, registry(false));
    let f = follower(&dir, "f", &l, registry(false));
    let ok = entry(1, 1, Change::insert(&tag("t1", "one")), 1);
    let mut unknown = entry(2, 1, Change::insert(&tag("t2", "two")), 1);
    unknown.change_type = ChangeType::Unknown;
    match f.apply(&[ok.clone(), unknown]) {
        Err(StorageError::UpgradeNeeded { sequence: 2, reason }) => {
            assert!(reason.contains("change type"), "{reason}")
        }
        other => panic!("expected UpgradeNeeded, got {other:?}"),
    }
    let mut newer = config(vec![member(l.device_id, MemberRole::Voter)]);
    newer.feature_version = FEATURE_VERSION + 1;
    let future = lsync_storage::membership::entry(1, 2, l.device_id, &newer);
    match f.apply(&[ok.clone(), future]) {
        Err(StorageError::UpgradeNeeded { sequence: 2, reason }) => {
            assert!(reason.contains("feature version"), "{reason}")
        }
        other => panic!("expected UpgradeNeeded, got {other:?}"),
    }
    let mut garbled = lsync_storage::membership::entry(1, 2, l.device_id, &newer);
    garbled.data = vec![0xc1];
    assert!(matches!(f.apply(&[ok, garbled]), Err(StorageError::UpgradeNeeded { .. })));
    assert_eq!(f.database().last_position().unwrap().sequence, 0, "nothing applied");
}

#[test]
fn force_reconfigure_leads_a_new_term_with_the_given_voters() {
    let dir = tempfile::tempdir().unwrap();
    let l = leader(&dir, registry(false));
    let f = follower(&dir, "f", &l, registry(false));
    let me = f.database().sync_state().unwrap().device_id;
    let three = config(vec![
        member(l.device_id, MemberRole::Voter),
        member(me, MemberRole::Voter),
        member(Uuid::new_v4(), MemberRole::Voter),
    ]);
    l.tm.commit_config(&three).unwrap();
    catch_up(&l.db, &f, 10);
    let tm = TransactionManager::new(f.database().clone(), me);
    let alone = config(vec![member(me, MemberRole::Voter)]);
    let not_me = config(vec![member(l.device_id, MemberRole::Voter)]);
    assert!(matches!(tm.force_reconfigure(&not_me), Err(StorageError::InvalidChange(_))));
    let entry = tm.force_reconfigure(&alone).unwrap();
    assert_eq!((entry.sequence, entry.term), (2, 2));
    let state = f.database().sync_state().unwrap();
    assert_eq!(
        (state.role, state.current_term, state.leader_device),
        (SyncRole::Leader, 2, Some(me))
    );
    let m = f.database().membership().unwrap();
    assert_eq!(m.configuration, alone);
    assert_eq!(m.previous_voters, None, "the lost voters are not waited for");
    tm.commit(Change::insert(&tag("t1", "after"))).unwrap();
}

#[test]
fn an_invitation_is_used_once_by_one_device_until_it_expires() {
    let dir = tempfile::tempdir().unwrap();
    let l = leader(&dir, registry(false));
    let secret = [7u8; 32];
    l.db.invitation_create(&secret, 1_000, 2_000, true).unwrap();
    assert_eq!(l.db.invitations_open(1_500).unwrap(), (1, Some(2_000)));
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    assert_eq!(
        l.db.invitation_claim(&[8u8; 32], a, 1_500).unwrap(),
        Err(InvitationRefused::Unknown)
    );
    let claimed = l.db.invitation_claim(&secret, a, 1_500).unwrap().unwrap();
    assert!(claimed.learner);
    assert_eq!(claimed.used_by, Some(a));
    assert!(l.db.invitation_claim(&secret, a, 1_600).unwrap().is_ok(), "the same device again");
    assert_eq!(l.db.invitation_claim(&secret, b, 1_600).unwrap(), Err(InvitationRefused::Used));
    assert_eq!(l.db.invitations_open(1_600).unwrap(), (0, None));
    // Released (the leader refused the change): usable again, until it expires.
    l.db.invitation_release(&secret, a).unwrap();
    assert!(l.db.invitation_claim(&secret, b, 1_700).unwrap().is_ok());
    l.db.invitation_release(&secret, b).unwrap();
    assert_eq!(l.db.invitation_claim(&secret, b, 2_000).unwrap(), Err(InvitationRefused::Expired));
    // Unknown devices may connect to present it until ten minutes after its last use.
    let until = l.db.invitations_welcome_until().unwrap().unwrap();
    assert_eq!(until, 2_000 + lsync_storage::invitations::REFUSAL_GRACE_MS);
    // Only a hash is stored.
    let stored = l.db.invitations().unwrap();
    assert_eq!(stored.len(), 1);
    assert_ne!(stored[0].secret_hash, secret);
}

#[test]
fn only_a_newer_address_hint_replaces_the_stored_one() {
    let dir = tempfile::tempdir().unwrap();
    let l = leader(&dir, registry(false));
    let key = libp2p::identity::Keypair::generate_ed25519();
    let device = Uuid::new_v4();
    let hint = |counter, port: u16| {
        AddressHint::sign(&key, device, counter, vec![format!("/ip4/127.0.0.1/tcp/{port}")])
    };
    assert!(l.db.hint_store(&hint(5, 7000)).unwrap());
    assert!(!l.db.hint_store(&hint(5, 7001)).unwrap(), "same counter");
    assert!(!l.db.hint_store(&hint(4, 7002)).unwrap(), "older");
    assert!(l.db.hint_store(&hint(6, 7003)).unwrap());
    assert_eq!(l.db.hints().unwrap(), vec![hint(6, 7003)]);
}

#[test]
#[should_panic(expected = "reserved")]
fn a_host_cannot_register_a_reserved_model_type() {
    struct Reserved;
    impl lsync_storage::ModelHandler for Reserved {
        fn model_type(&self) -> &str {
            "lsync.config"
        }
        fn table_name(&self) -> &str {
            "reserved"
        }
        fn migrate(&self, _: &mut lsync_storage::SqliteConnection) -> lsync_storage::Result<()> {
            Ok(())
        }
        fn validate(&self, _: &Change) -> lsync_storage::Result<()> {
            Ok(())
        }
        fn current_version(
            &self,
            _: &mut lsync_storage::SqliteConnection,
            _: &str,
        ) -> lsync_storage::Result<Option<i64>> {
            Ok(None)
        }
        fn apply(
            &self,
            _: &mut lsync_storage::SqliteConnection,
            _: &lsync_protocol::SyncLogEntry,
        ) -> lsync_storage::Result<()> {
            Ok(())
        }
        fn clear(&self, _: &mut lsync_storage::SqliteConnection) -> lsync_storage::Result<()> {
            Ok(())
        }
    }
    lsync_storage::ModelRegistry::new().register(std::sync::Arc::new(Reserved));
}

#[test]
fn the_previous_voters_are_kept_until_the_voter_change_is_known_committed() {
    let dir = tempfile::tempdir().unwrap();
    let l = leader(&dir, registry(false));
    let (b, c) = (Uuid::new_v4(), Uuid::new_v4());
    let one = config(vec![member(l.device_id, MemberRole::Voter)]);
    l.tm.commit_config(&one).unwrap();
    let m = l.db.membership().unwrap();
    assert_eq!((m.voters_since, m.previous_voters), (1, None), "a new library has no previous");
    // A learner joins: the voters do not change.
    let mb = member(b, MemberRole::Learner);
    let with_b = config(vec![member(l.device_id, MemberRole::Voter), mb.clone()]);
    l.tm.commit_config(&with_b).unwrap();
    assert_eq!(l.db.membership().unwrap().voters_since, 1);
    // It is promoted: the voters change at 3, the previous ones are kept.
    let mut promoted = with_b.clone();
    promoted.members.iter_mut().find(|m| m.device_id == b).unwrap().role = MemberRole::Voter;
    l.tm.commit_config(&promoted).unwrap();
    let m = l.db.membership().unwrap();
    assert_eq!(m.voters_since, 3);
    assert_eq!(m.previous_voters, Some([l.device_id].into()));
    // A restatement of the same voters (a new term's first entry) keeps the epoch.
    let mut restated = promoted.clone();
    restated.members.push(member(c, MemberRole::Learner));
    restated = Configuration::new(FEATURE_VERSION, restated.members);
    l.tm.commit_config(&restated).unwrap();
    let m = l.db.membership().unwrap();
    assert_eq!((m.sequence, m.voters_since), (4, 3));
    assert!(m.previous_voters.is_some());
    // A commit below the change forgets nothing; one that covers it forgets the previous.
    assert!(!l.db.note_commit(2).unwrap());
    assert!(l.db.membership().unwrap().previous_voters.is_some());
    assert!(l.db.note_commit(3).unwrap());
    assert_eq!(l.db.membership().unwrap().previous_voters, None);
    assert!(!l.db.note_commit(9).unwrap(), "nothing left to forget");
}

#[test]
fn a_device_joining_by_hand_keeps_its_starting_configuration_until_the_log_holds_it() {
    let dir = tempfile::tempdir().unwrap();
    let l = leader(&dir, registry(false));
    let f = follower(&dir, "f", &l, registry(false));
    let me = f.database().sync_state().unwrap().device_id;
    l.tm.commit_config(&config(vec![member(l.device_id, MemberRole::Voter)])).unwrap();
    l.tm.commit(Change::insert(&tag("t1", "one"))).unwrap();
    let with_me =
        config(vec![member(l.device_id, MemberRole::Voter), member(me, MemberRole::Learner)]);
    l.tm.commit_config(&with_me).unwrap();
    // What `Node::join_library` starts with: the leader and itself, at sequence 0.
    let bootstrap =
        config(vec![member(l.device_id, MemberRole::Voter), member(me, MemberRole::Learner)]);
    f.database().install_membership(&bootstrap, 0).unwrap();
    let outcome = f.apply(&l.db.fetch_since(0, 2).unwrap()).unwrap();
    assert_eq!(outcome.membership, None, "entry 1 does not hold the joining device");
    assert!(f.database().membership().unwrap().configuration.contains(me));
    assert_eq!(f.settle().unwrap(), None, "not even when a round ends there");
    let outcome = f.apply(&l.db.fetch_since(2, 10).unwrap()).unwrap();
    assert_eq!(outcome.membership.map(|m| m.sequence), Some(3), "the entry that adds it");
}
