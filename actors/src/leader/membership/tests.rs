//! Unit tests of each rule: one call, the exact verdict, commit sequence or configuration it
//! gives; and a property test of the commit rule against an independent model.

use std::collections::{BTreeMap, BTreeSet};

use libp2p::identity::Keypair;
use lsync_protocol::{Member, FEATURE_VERSION};
use proptest::prelude::*;

use super::*;

/// The leader's term in every test.
const TERM: u64 = 4;

fn id(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

fn voters(ns: &[u128]) -> BTreeSet<Uuid> {
    ns.iter().copied().map(id).collect()
}

fn ack(term: u64, sequence: u64, last_term: u64) -> AckPosition {
    AckPosition { term, sequence, last_term }
}

/// An acknowledgement of the current term whose last entry is of the current term.
fn current(sequence: u64) -> AckPosition {
    ack(TERM, sequence, TERM)
}

/// Leader 1 of [`TERM`], its term starting at `term_start`, its log ending at `last`, with
/// `voters` in a configuration at sequence 1 (committed as soon as anything commits).
fn tracker(term_start: u64, last: u64, ns: &[u128]) -> CommitTracker {
    let mut t = CommitTracker::new(id(1), TERM);
    t.set_configuration(1, voters(ns));
    t.on_leader_appended(last);
    t.set_term_start(term_start);
    t
}

// ---- acknowledgements ---------------------------------------------------------------------

fn hash(byte: u8) -> ChainHash {
    ChainHash([byte; 32])
}

#[test]
fn a_position_naming_the_leaders_own_hash_counts() {
    let mut t = tracker(3, 5, &[1, 2, 3]);
    t.note_own_hash(5, hash(5));
    assert_eq!(t.on_ack_hashed(id(2), current(5), Some(hash(5))), AckVerdict::Counted);
    assert_eq!(t.commit_sequence(), 5);
}

#[test]
fn a_position_naming_another_hash_is_recorded_but_does_not_count() {
    // A (sequence, term) reused: the follower holds another entry 5 of this term.
    let mut t = tracker(3, 5, &[1, 2, 3]);
    t.note_own_hash(5, hash(5));
    assert_eq!(
        t.on_ack_hashed(id(2), current(5), Some(hash(9))),
        AckVerdict::NotCounted(NotCounted::HashDiffers)
    );
    assert_eq!(t.commit_sequence(), 0);
    assert_eq!(t.matched(id(2)), None);
    assert_eq!(t.positions()[0].sequence, 5, "recorded for lag and status");
}

#[test]
fn a_position_naming_a_hash_the_tracker_does_not_know_does_not_count() {
    let mut t = tracker(3, 5, &[1, 2, 3]);
    t.note_own_hash(4, hash(4));
    assert_eq!(
        t.on_ack_hashed(id(2), current(5), Some(hash(5))),
        AckVerdict::NotCounted(NotCounted::HashUnknown)
    );
    assert_eq!(t.commit_sequence(), 0);
}

#[test]
fn a_position_naming_no_hash_is_judged_by_the_terms_alone() {
    let mut t = tracker(3, 5, &[1, 2, 3]);
    t.note_own_hash(5, hash(5));
    assert_eq!(t.on_ack_hashed(id(2), current(5), None), AckVerdict::Counted);
    assert_eq!(t.commit_sequence(), 5);
}

#[test]
fn a_matching_report_after_a_differing_one_counts_again() {
    let mut t = tracker(3, 6, &[1, 2, 3]);
    t.note_own_hash(5, hash(5));
    t.note_own_hash(6, hash(6));
    t.on_ack_hashed(id(2), current(5), Some(hash(9)));
    assert_eq!(t.on_ack_hashed(id(2), current(6), Some(hash(6))), AckVerdict::Counted);
    assert_eq!(t.commit_sequence(), 6);
}

#[test]
fn only_the_latest_own_hashes_are_kept() {
    let last = MAX_OWN_HASHES as u64 + 1;
    let mut t = tracker(1, last, &[1, 2, 3]);
    for s in 1..=last {
        t.note_own_hash(s, hash(s as u8));
    }
    assert_eq!(
        t.on_ack_hashed(id(2), current(1), Some(hash(1))),
        AckVerdict::NotCounted(NotCounted::HashUnknown),
        "the oldest was dropped"
    );
    assert_eq!(t.on_ack_hashed(id(2), current(2), Some(hash(2))), AckVerdict::Counted);
}

#[test]
fn figure_8_an_older_terms_entry_on_a_majority_is_not_committed_by_that_alone() {
    // Raft's Figure 8: sequence 2 is of term 2, sequence 3 is the leader's first of term 4.
    let mut t = tracker(3, 3, &[1, 2, 3, 4, 5]);
    for follower in [2, 3] {
        let verdict = t.on_ack(id(follower), ack(TERM, 2, 2));
        assert_eq!(verdict, AckVerdict::NotCounted(NotCounted::LastTermDiffers));
    }
    assert_eq!(t.commit_sequence(), 0, "sequence 2 is on 3 of 5 devices, of an older term");

    assert_eq!(t.on_ack(id(2), current(3)), AckVerdict::Counted);
    assert_eq!(t.commit_sequence(), 0, "sequence 3 is on 2 of 5");
    assert_eq!(t.on_ack(id(3), current(3)), AckVerdict::Counted);
    assert_eq!(t.commit_sequence(), 3, "sequence 3 (and 2 with it) is on 3 of 5");
}

#[test]
fn an_ack_of_an_older_term_is_refused_and_not_recorded() {
    let mut t = tracker(5, 10, &[1, 2]);
    assert_eq!(
        t.on_ack(id(2), ack(TERM - 1, 10, TERM - 1)),
        AckVerdict::Refused(AckRefusal::StaleTerm)
    );
    assert_eq!(t.positions(), vec![]);
    assert_eq!(t.commit_sequence(), 0);
}

#[test]
fn an_ack_of_a_newer_term_is_refused_and_not_recorded() {
    let mut t = tracker(5, 10, &[1, 2]);
    assert_eq!(
        t.on_ack(id(2), ack(TERM + 1, 10, TERM)),
        AckVerdict::Refused(AckRefusal::NewerTerm)
    );
    assert_eq!(t.positions(), vec![]);
    assert_eq!(t.commit_sequence(), 0);
}

#[test]
fn an_ack_beyond_the_leaders_last_sequence_is_refused_and_not_recorded() {
    let mut t = tracker(5, 10, &[1, 2]);
    assert_eq!(t.on_ack(id(2), current(11)), AckVerdict::Refused(AckRefusal::BeyondLast));
    assert_eq!(t.positions(), vec![]);
    assert_eq!(t.commit_sequence(), 0);
}

/// `synchronous = NORMAL`: the leader's log holds 12 entries, only 10 on its disk. A
/// follower's position at 12 is recorded (not beyond the leader's last) and counts for the
/// follower; with two voters nothing past 10 commits until the leader's own copy is synced.
#[test]
fn a_position_beyond_the_leaders_synced_copy_is_recorded_and_commits_once_the_leader_syncs() {
    let mut t = tracker(5, 10, &[1, 2]);
    t.on_leader_logged(12);
    assert_eq!(t.on_ack(id(2), current(12)), AckVerdict::Counted);
    assert_eq!(t.commit_sequence(), 10, "the leader's own copy is on disk up to 10 only");
    t.on_leader_durable(12);
    assert_eq!(t.commit_sequence(), 12, "no further report of the follower needed");
}

#[test]
fn the_leaders_own_match_is_its_synced_copy() {
    let mut t = tracker(5, 10, &[1, 2, 3]);
    t.on_leader_logged(12);
    assert_eq!((t.leader_last(), t.leader_durable(), t.matched(id(1))), (12, 10, Some(10)));
    t.on_leader_durable(11);
    assert_eq!(t.matched(id(1)), Some(11));
    t.on_leader_durable(9);
    assert_eq!(t.matched(id(1)), Some(11), "a synced copy does not go back");
}

/// Three voters: two followers that synced entries the leader has not synced yet are a
/// majority (Raft counts every voter's durable copy, the leader's being one of them).
#[test]
fn two_followers_commit_what_the_leader_has_not_synced_yet() {
    let mut t = tracker(5, 10, &[1, 2, 3]);
    t.on_leader_logged(12);
    t.on_ack(id(2), current(12));
    assert_eq!(t.on_ack(id(3), current(12)), AckVerdict::Counted);
    assert_eq!(t.commit_sequence(), 12);
}

#[test]
fn a_position_beyond_the_leaders_logged_last_is_still_refused() {
    let mut t = tracker(5, 10, &[1, 2]);
    t.on_leader_logged(12);
    assert_eq!(t.on_ack(id(2), current(13)), AckVerdict::Refused(AckRefusal::BeyondLast));
    assert_eq!(t.positions(), vec![]);
}

#[test]
fn an_ack_claiming_to_come_from_the_leader_is_refused_and_not_recorded() {
    let mut t = tracker(5, 10, &[1, 2]);
    assert_eq!(t.on_ack(id(1), current(10)), AckVerdict::Refused(AckRefusal::FromLeader));
    assert_eq!(t.positions(), vec![]);
}

#[test]
fn an_ack_whose_last_term_differs_is_recorded_but_not_counted() {
    let mut t = tracker(5, 10, &[1, 2]);
    assert_eq!(
        t.on_ack(id(2), ack(TERM, 10, TERM - 1)),
        AckVerdict::NotCounted(NotCounted::LastTermDiffers)
    );
    let position = FollowerPosition { device: id(2), sequence: 10, matched: None, counts: false };
    assert_eq!(t.positions(), vec![position]);
    assert_eq!(t.commit_sequence(), 0);
}

#[test]
fn an_ack_without_a_term_is_recorded_for_lag_but_never_counted() {
    let mut t = tracker(5, 10, &[1, 2]);
    assert_eq!(t.on_ack(id(2), ack(0, 10, TERM)), AckVerdict::NotCounted(NotCounted::NoTerm));
    let position = FollowerPosition { device: id(2), sequence: 10, matched: None, counts: false };
    assert_eq!(t.positions(), vec![position]);
    assert_eq!(t.commit_sequence(), 0);
}

#[test]
fn an_ack_below_the_term_start_is_not_counted() {
    let mut t = tracker(5, 10, &[1, 2]);
    assert_eq!(t.on_ack(id(2), current(4)), AckVerdict::NotCounted(NotCounted::BeforeTermStart));
    assert_eq!(t.matched(id(2)), None);
    assert_eq!(t.commit_sequence(), 0);
}

#[test]
fn nothing_commits_until_the_term_start_is_set() {
    let mut t = CommitTracker::new(id(1), TERM);
    t.set_configuration(1, voters(&[1, 2]));
    t.on_leader_appended(10);
    assert_eq!(t.on_ack(id(2), current(10)), AckVerdict::NotCounted(NotCounted::BeforeTermStart));
    assert_eq!(t.commit_sequence(), 0);
    assert_eq!(t.term_start(), None);

    t.set_term_start(5);
    assert_eq!(t.commit_sequence(), 10, "the recorded position counts once the start is known");
}

#[test]
fn the_term_start_is_set_once() {
    let mut t = tracker(5, 10, &[1]);
    t.set_term_start(8);
    assert_eq!(t.term_start(), Some(5));
}

#[test]
fn a_position_that_goes_down_is_believed_but_the_commit_sequence_never_decreases() {
    let mut t = tracker(5, 10, &[1, 2]);
    assert_eq!(t.on_ack(id(2), current(10)), AckVerdict::Counted);
    assert_eq!(t.commit_sequence(), 10);

    assert_eq!(t.on_ack(id(2), current(7)), AckVerdict::Counted);
    let position = FollowerPosition { device: id(2), sequence: 7, matched: Some(7), counts: true };
    assert_eq!(t.positions(), vec![position]);
    assert_eq!(t.commit_sequence(), 10, "a recomputed 7 is ignored");

    t.on_leader_appended(12);
    assert_eq!(t.commit_sequence(), 10, "sequence 11 needs the follower again");
    t.on_ack(id(2), current(12));
    assert_eq!(t.commit_sequence(), 12);
}

#[test]
fn a_rebuilt_follower_that_reports_an_older_last_term_stops_counting() {
    let mut t = tracker(5, 10, &[1, 2]);
    t.on_ack(id(2), current(10));
    assert_eq!(
        t.on_ack(id(2), ack(TERM, 3, TERM - 1)),
        AckVerdict::NotCounted(NotCounted::LastTermDiffers)
    );
    let position = FollowerPosition { device: id(2), sequence: 3, matched: None, counts: false };
    assert_eq!(t.positions(), vec![position]);
    assert_eq!(t.commit_sequence(), 10);
}

// ---- majorities ---------------------------------------------------------------------------

#[test]
fn commit_majorities_are_half_plus_one() {
    let majorities: Vec<usize> = (1..=6).map(commit_majority).collect();
    assert_eq!(majorities, vec![1, 2, 2, 3, 3, 4]);
}

#[test]
fn one_voter_commits_alone() {
    let t = tracker(5, 10, &[1]);
    assert_eq!(t.commit_sequence(), 10);
}

#[test]
fn two_voters_need_both() {
    let mut t = tracker(5, 10, &[1, 2]);
    assert_eq!(t.commit_sequence(), 0, "the leader alone is not a majority of two");
    t.on_ack(id(2), current(8));
    assert_eq!(t.commit_sequence(), 8);
}

#[test]
fn three_voters_need_two() {
    let mut t = tracker(5, 10, &[1, 2, 3]);
    t.on_ack(id(2), current(6));
    assert_eq!(t.commit_sequence(), 6);
    t.on_ack(id(3), current(9));
    assert_eq!(t.commit_sequence(), 9, "the leader and device 3 hold 9");
}

#[test]
fn learners_never_count() {
    let mut t = tracker(5, 10, &[1, 2, 3]);
    assert_eq!(t.on_ack(id(4), current(10)), AckVerdict::NotCounted(NotCounted::NotVoter));
    assert_eq!(t.on_ack(id(5), current(10)), AckVerdict::NotCounted(NotCounted::NotVoter));
    assert_eq!(t.commit_sequence(), 0);
    let position =
        FollowerPosition { device: id(4), sequence: 10, matched: Some(10), counts: false };
    assert_eq!(t.positions()[0], position);
    assert_eq!(t.matched(id(4)), Some(10), "a learner's match is kept for its promotion");
}

// ---- a pending configuration --------------------------------------------------------------

/// Leader 1, term start 2, `before` committed up to 2, then a configuration entry at 3 with
/// `after`.
fn changing(before: &[u128], after: &[u128]) -> CommitTracker {
    let mut t = tracker(2, 2, before);
    for &follower in before.iter().filter(|&&n| n != 1) {
        t.on_ack(id(follower), current(2));
    }
    assert_eq!(t.commit_sequence(), 2);
    t.set_configuration(3, voters(after));
    t.on_leader_appended(3);
    t
}

#[test]
fn growing_two_voters_to_three_needs_both_devices_of_the_two() {
    let mut t = changing(&[1, 2], &[1, 2, 3]);
    assert_eq!(t.on_ack(id(3), current(3)), AckVerdict::Counted);
    assert_eq!(t.commit_sequence(), 2, "the leader and the new voter are not both of {{1, 2}}");
    t.on_ack(id(2), current(3));
    assert_eq!(t.commit_sequence(), 3);
}

#[test]
fn once_committed_the_previous_configuration_is_forgotten() {
    let mut t = changing(&[1, 2], &[1, 2, 3]);
    t.on_ack(id(3), current(3));
    t.on_ack(id(2), current(3));
    t.on_leader_appended(4);
    t.on_ack(id(3), current(4));
    assert_eq!(t.commit_sequence(), 4, "a majority of {{1, 2, 3}} suffices now");
}

#[test]
fn shrinking_three_voters_to_two_needs_both_devices_of_the_two() {
    let mut t = changing(&[1, 2, 3], &[1, 3]);
    assert_eq!(t.on_ack(id(2), current(3)), AckVerdict::Counted, "a voter of the pending one");
    assert_eq!(t.commit_sequence(), 2);
    t.on_ack(id(3), current(3));
    assert_eq!(t.commit_sequence(), 3);
    t.on_leader_appended(4);
    assert_eq!(t.on_ack(id(2), current(4)), AckVerdict::NotCounted(NotCounted::NotVoter));
}

#[test]
fn once_the_previous_voters_stop_counting_the_latest_ones_commit_what_they_hold_at_once() {
    // {1, 2} becomes {1}: the leader appended past the change before 2 acknowledged it.
    let mut t = changing(&[1, 2], &[1]);
    t.on_leader_appended(4);
    t.on_ack(id(2), current(3));
    // 3 is held by both sets; 4 by the leader alone, the only voter now (found by the
    // election simulator, seed 93: it waited for the next append or acknowledgement)
    assert_eq!(t.commit_sequence(), 4);
}

#[test]
fn a_leader_that_is_not_a_voter_of_the_latest_configuration_counts_only_in_the_previous_one() {
    let mut t = changing(&[1, 2, 3], &[2, 3]);
    t.on_ack(id(2), current(3));
    assert_eq!(t.commit_sequence(), 2, "{{1, 2}} hold 3, but {{2, 3}} needs device 3");
    t.on_ack(id(3), current(3));
    assert_eq!(t.commit_sequence(), 3);

    t.on_leader_appended(4);
    t.on_ack(id(2), current(4));
    assert_eq!(t.commit_sequence(), 3, "the leader does not count in {{2, 3}}");
    t.on_ack(id(3), current(4));
    assert_eq!(t.commit_sequence(), 4);
}

#[test]
fn a_configuration_at_a_committed_sequence_has_no_pending_previous() {
    let mut t = tracker(2, 6, &[1, 2, 3]);
    t.on_ack(id(2), current(6));
    assert_eq!(t.commit_sequence(), 6);
    t.set_configuration(5, voters(&[1, 3]));
    t.on_leader_appended(7);
    assert_eq!(t.on_ack(id(2), current(7)), AckVerdict::NotCounted(NotCounted::NotVoter));
    assert_eq!(t.commit_sequence(), 6);
}

#[test]
fn a_restatement_keeps_a_pending_change_pending() {
    // A leader elected with {1,2} -> {1,2,3} (at 3) not committed writes its first entry of
    // the term at 4, restating {1,2,3}.
    let mut t = CommitTracker::new(id(1), TERM);
    t.set_configuration(1, voters(&[1, 2]));
    t.set_configuration(3, voters(&[1, 2, 3]));
    t.set_configuration(4, voters(&[1, 2, 3]));
    t.on_leader_appended(4);
    t.set_term_start(4);
    assert_eq!(t.on_ack(id(3), current(4)), AckVerdict::Counted);
    assert_eq!(t.commit_sequence(), 0, "a majority of {{1, 2, 3}}, not both of {{1, 2}}");
    assert_eq!(t.on_ack(id(2), current(4)), AckVerdict::Counted);
    assert_eq!(t.commit_sequence(), 4);
}

#[test]
fn a_forgotten_device_holds_nothing() {
    let mut t = tracker(5, 10, &[1, 2, 3]);
    t.on_ack(id(2), current(8));
    t.forget(id(2));
    assert_eq!(t.positions(), vec![]);
    assert_eq!(t.matched(id(2)), None);
    assert_eq!(t.commit_sequence(), 8, "what committed stays committed");
}

// ---- configuration-change admission -------------------------------------------------------

#[test]
fn a_change_is_allowed_once_the_previous_one_and_the_term_start_are_committed() {
    assert_eq!(check_change(3, 7, Some(7)), Ok(()));
    assert_eq!(check_change(0, 7, Some(5)), Ok(()));
}

#[test]
fn a_change_waits_for_the_previous_one() {
    let refused = check_change(8, 7, Some(5));
    assert_eq!(refused, Err(ChangeRefused::PreviousPending { sequence: 8 }));
    assert_eq!(
        refused.unwrap_err().to_string(),
        "the previous configuration change (sequence 8) is not committed yet"
    );
}

#[test]
fn a_change_waits_for_the_leaders_first_entry_of_its_term() {
    assert_eq!(check_change(3, 7, Some(8)), Err(ChangeRefused::TermNotStarted));
    assert_eq!(check_change(3, 7, None), Err(ChangeRefused::TermNotStarted));
    assert_eq!(
        ChangeRefused::TermNotStarted.to_string(),
        "the leader has not committed an entry of its term yet"
    );
}

// ---- promotions and demotions -------------------------------------------------------------

const LEADER: u128 = 1;
const LAST: u64 = 100;
const CATCH_UP: u64 = 10;

/// A member `n` with `role` and `preference`.
fn member(n: u128, role: MemberRole, preference: RolePreference) -> Member {
    let key = Keypair::ed25519_from_bytes([n as u8; 32]).expect("32 bytes make a key");
    Member {
        device_id: id(n),
        peer_id: key.public().to_peer_id().to_string(),
        addresses: vec![],
        name: format!("d{n}"),
        role,
        preference,
    }
}

fn voter(n: u128) -> Member {
    member(n, MemberRole::Voter, RolePreference::Auto)
}

fn learner(n: u128) -> Member {
    member(n, MemberRole::Learner, RolePreference::Auto)
}

fn config(members: Vec<Member>) -> Configuration {
    Configuration::new(FEATURE_VERSION, members)
}

/// `config` with `n`'s role set to `role`.
fn with(config: &Configuration, n: u128, role: MemberRole) -> Configuration {
    let mut next = config.clone();
    next.members.iter_mut().find(|m| m.device_id == id(n)).expect("a member").role = role;
    next
}

/// [`next_voter_change`] with leader 1, last sequence [`LAST`], catch-up [`CATCH_UP`] and the
/// matched sequences `at` (devices not listed: none). Checks that a change is a single-voter
/// change from `config` before returning it.
fn next(config: &Configuration, at: &[(u128, u64)]) -> Option<Configuration> {
    let at: BTreeMap<Uuid, u64> = at.iter().map(|&(n, s)| (id(n), s)).collect();
    let change = next_voter_change(config, id(LEADER), |d| at.get(&d).copied(), LAST, CATCH_UP);
    if let Some(next) = &change {
        assert!(next.is_single_voter_change_from(config));
        assert_ne!(next.voters(), config.voters());
    }
    change
}

#[test]
fn one_voter_and_a_caught_up_learner_make_two_voters() {
    let c = config(vec![voter(1), learner(2)]);
    assert_eq!(next(&c, &[(2, LAST)]), Some(with(&c, 2, MemberRole::Voter)));
}

#[test]
fn two_voters_and_a_caught_up_learner_make_three() {
    let c = config(vec![voter(1), voter(2), learner(3)]);
    assert_eq!(next(&c, &[(2, LAST), (3, LAST)]), Some(with(&c, 3, MemberRole::Voter)));
}

#[test]
fn three_voters_and_one_learner_stay() {
    let c = config(vec![voter(1), voter(2), voter(3), learner(4)]);
    assert_eq!(next(&c, &[(2, LAST), (3, LAST), (4, LAST)]), None);
}

#[test]
fn three_voters_and_two_caught_up_learners_make_four_then_five() {
    let c = config(vec![voter(1), voter(2), voter(3), learner(4), learner(5)]);
    let at = [(2, LAST), (3, LAST), (4, LAST - 5), (5, LAST)];
    let four = next(&c, &at).expect("a promotion");
    assert_eq!(four, with(&c, 5, MemberRole::Voter), "the learner with the highest match first");
    assert_eq!(next(&four, &at), Some(with(&four, 4, MemberRole::Voter)));
}

#[test]
fn a_promotion_tie_goes_to_the_lower_device_id() {
    let c = config(vec![voter(1), voter(2), voter(3), learner(4), learner(5)]);
    let at = [(4, LAST), (5, LAST)];
    assert_eq!(next(&c, &at), Some(with(&c, 4, MemberRole::Voter)));
}

#[test]
fn five_voters_stay_five() {
    let c = config(vec![voter(1), voter(2), voter(3), voter(4), voter(5), learner(6), learner(7)]);
    assert_eq!(next(&c, &[(6, LAST), (7, LAST)]), None);
}

#[test]
fn a_pinned_learner_stays_a_learner() {
    let c = config(vec![voter(1), member(2, MemberRole::Learner, RolePreference::Learner)]);
    assert_eq!(next(&c, &[(2, LAST)]), None);
}

#[test]
fn a_learner_that_has_not_caught_up_waits() {
    let c = config(vec![voter(1), learner(2)]);
    assert_eq!(next(&c, &[(2, LAST - CATCH_UP - 1)]), None);
    assert_eq!(next(&c, &[]), None, "no matched position at all");
    assert_eq!(
        next(&c, &[(2, LAST - CATCH_UP)]),
        Some(with(&c, 2, MemberRole::Voter)),
        "within one response of the leader's last sequence"
    );
}

#[test]
fn a_learner_preferring_voter_is_promoted_beyond_five_voters() {
    let c = config(vec![
        voter(1),
        voter(2),
        voter(3),
        voter(4),
        voter(5),
        learner(6),
        member(7, MemberRole::Learner, RolePreference::Voter),
    ]);
    assert_eq!(next(&c, &[(6, LAST), (7, LAST - 1)]), Some(with(&c, 7, MemberRole::Voter)));
}

#[test]
fn four_voters_and_no_learner_demote_the_least_caught_up_auto_voter_but_the_leader() {
    let c = config(vec![
        voter(1),
        member(2, MemberRole::Voter, RolePreference::Voter),
        voter(3),
        voter(4),
    ]);
    // The leader's own match is its last sequence whatever `matched` says.
    let at = [(1, 0), (2, 1), (3, 80), (4, 50)];
    assert_eq!(next(&c, &at), Some(with(&c, 4, MemberRole::Learner)));
}

#[test]
fn four_voters_preferring_voter_are_not_demoted() {
    let pinned = |n| member(n, MemberRole::Voter, RolePreference::Voter);
    let c = config(vec![voter(1), pinned(2), pinned(3), pinned(4)]);
    assert_eq!(next(&c, &[(2, 1), (3, 1), (4, 1)]), None);
}

#[test]
fn two_voters_are_not_demoted() {
    let c = config(vec![voter(1), voter(2)]);
    assert_eq!(next(&c, &[(2, 0)]), None);
}

// ---- property: the commit rule against a model --------------------------------------------

/// Devices 1..=DEVICES; the leader is 1.
const DEVICES: u128 = 6;

#[derive(Debug, Clone)]
enum Op {
    /// The leader appends `n` entries.
    Append(u64),
    /// Device `from` acknowledges: `term` and `last_term` picked among interesting values,
    /// `sequence` taken modulo a little more than the leader's last.
    Ack { from: u128, term: u8, sequence: u64, last_term: u8 },
    /// The leader appends a configuration entry toggling `device`'s vote, if allowed.
    Toggle(u128),
    /// The leader forgets `device`.
    Forget(u128),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (1..4u64).prop_map(Op::Append),
        (1..=DEVICES, 0..4u8, any::<u64>(), 0..4u8).prop_map(
            |(from, term, sequence, last_term)| { Op::Ack { from, term, sequence, last_term } }
        ),
        (1..=DEVICES).prop_map(Op::Toggle),
        (2..=DEVICES).prop_map(Op::Forget),
    ]
}

/// The model's own reading of the rule, written apart from the tracker.
struct Model {
    term_start: u64,
    last: u64,
    /// Terms of the leader's log, index `sequence - 1`.
    log: Vec<u64>,
    latest: (u64, BTreeSet<Uuid>),
    previous: Option<BTreeSet<Uuid>>,
    acks: BTreeMap<Uuid, AckPosition>,
}

impl Model {
    fn held(&self, device: Uuid) -> u64 {
        if device == id(1) {
            return self.last;
        }
        match self.acks.get(&device) {
            Some(a) if a.term == TERM && a.last_term == TERM && a.sequence >= self.term_start => {
                a.sequence
            }
            _ => 0,
        }
    }

    fn required(&self, commit: u64) -> Vec<BTreeSet<Uuid>> {
        let mut required = vec![self.latest.1.clone()];
        if commit < self.latest.0 {
            required.extend(self.previous.clone());
        }
        required
    }

    /// Whether `s` is held by a commit majority of every required configuration.
    fn held_by_majorities(&self, s: u64, commit: u64) -> bool {
        self.required(commit).iter().all(|voters| {
            voters.iter().filter(|&&v| self.held(v) >= s).count() >= commit_majority(voters.len())
        })
    }
}

proptest! {
    #[test]
    fn the_commit_sequence_never_decreases_and_is_held_by_majorities(
        old_terms in proptest::collection::vec(1..TERM, 0..6),
        first_voters in proptest::collection::btree_set(1..=DEVICES, 1..=DEVICES as usize),
        ops in proptest::collection::vec(op(), 0..80),
    ) {
        let mut log = old_terms;
        log.sort_unstable();
        log.push(TERM);
        let term_start = log.len() as u64;
        let first: BTreeSet<Uuid> = first_voters.into_iter().map(id).collect();
        let mut m = Model {
            term_start,
            last: term_start,
            log,
            latest: (0, first.clone()),
            previous: None,
            acks: BTreeMap::new(),
        };
        let mut t = CommitTracker::new(id(1), TERM);
        t.set_configuration(0, first);
        t.on_leader_appended(term_start);
        t.set_term_start(term_start);
        let mut commit = 0;
        if m.held_by_majorities(term_start, 0) {
            commit = term_start;
        }
        prop_assert_eq!(t.commit_sequence(), commit);

        for op in ops {
            match op {
                Op::Append(n) => {
                    m.log.extend(std::iter::repeat_n(TERM, n as usize));
                    m.last += n;
                    t.on_leader_appended(m.last);
                }
                Op::Ack { from, term, sequence, last_term } => {
                    let term = [0, TERM - 1, TERM, TERM + 1][term as usize];
                    let sequence = sequence % (m.last + 3);
                    let own = m.log.get((sequence as usize).wrapping_sub(1)).copied();
                    let last_term = [own.unwrap_or(0), TERM, 1, 0][last_term as usize];
                    let a = ack(term, sequence, last_term);
                    let refused = sequence > m.last
                        || term > TERM
                        || (term != 0 && term < TERM)
                        || from == 1;
                    let counts = !refused
                        && term == TERM
                        && last_term == TERM
                        && sequence >= m.term_start
                        && m.required(commit).iter().any(|v| v.contains(&id(from)));
                    let verdict = t.on_ack(id(from), a);
                    prop_assert_eq!(matches!(verdict, AckVerdict::Refused(_)), refused);
                    prop_assert_eq!(verdict == AckVerdict::Counted, counts);
                    if !refused {
                        m.acks.insert(id(from), a);
                    }
                }
                Op::Toggle(device) => {
                    let mut next = m.latest.1.clone();
                    if !next.remove(&id(device)) {
                        next.insert(id(device));
                    }
                    let allowed = check_change(m.latest.0, commit, Some(m.term_start)).is_ok();
                    if allowed && !next.is_empty() {
                        m.log.push(TERM);
                        m.last += 1;
                        let before = std::mem::replace(&mut m.latest, (m.last, next.clone()));
                        m.previous = Some(before.1);
                        // Known before the leader's last covers it: see set_configuration.
                        t.set_configuration(m.last, next);
                        t.on_leader_appended(m.last);
                    }
                }
                Op::Forget(device) => {
                    m.acks.remove(&id(device));
                    t.forget(id(device));
                }
            }
            // The model's commit: the highest sequence in [term_start, last] held by the
            // required majorities, if above the current one.
            let highest = (m.term_start..=m.last)
                .rev()
                .find(|&s| m.held_by_majorities(s, commit))
                .unwrap_or(0);
            let now = t.commit_sequence();
            prop_assert!(now >= commit, "decreased from {} to {}", commit, now);
            if now > commit {
                prop_assert!(now >= m.term_start && now <= m.last);
                prop_assert!(m.held_by_majorities(now, commit), "{} not held by majorities", now);
            }
            prop_assert_eq!(now, highest.max(commit));
            commit = now;
            if commit >= m.latest.0 {
                m.previous = None;
            }
        }
    }
}
