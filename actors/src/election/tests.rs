//! Unit tests of each rule: one call, the exact list of actions it returns.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::SeedableRng;

use super::*;

const HB: Duration = Duration::from_millis(10);
const ET: Duration = Duration::from_millis(100);

fn id(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

fn members(n: u128) -> BTreeSet<Uuid> {
    (1..=n).map(id).collect()
}

/// Voters `1..=n`, and the given learners.
fn membership(n: u128, learners: &[u128]) -> Membership {
    Membership::new(members(n), learners.iter().copied().map(id).collect())
}

fn machine(me: u128, n: u128, persisted: PersistedElection, now: Instant) -> Election<StdRng> {
    with_learners(me, n, &[], persisted, now)
}

/// Device `me` of a library of voters `1..=n` and the given learners.
fn with_learners(
    me: u128,
    n: u128,
    learners: &[u128],
    persisted: PersistedElection,
    now: Instant,
) -> Election<StdRng> {
    let config = ElectionConfig::new(HB, ET);
    let rng = StdRng::seed_from_u64(me as u64);
    Election::new(id(me), membership(n, learners), persisted, config, now, rng)
}

fn request(term: u64, candidate: u128, log: (u64, u64), transfer: bool) -> VoteRequest {
    VoteRequest {
        term,
        candidate: id(candidate),
        last_log_term: log.0,
        last_log_sequence: log.1,
        transfer,
        pre_vote: false,
    }
}

fn pre_request(term: u64, candidate: u128, log: (u64, u64)) -> VoteRequest {
    VoteRequest { pre_vote: true, ..request(term, candidate, log, false) }
}

fn response(to: u128, term: u64, voter: u128, granted: bool) -> Action {
    Action::SendVoteResponse {
        to: id(to),
        response: VoteResponse { term, voter: id(voter), granted, pre_vote: false },
    }
}

fn pre_response(to: u128, term: u64, voter: u128, granted: bool) -> Action {
    Action::SendVoteResponse {
        to: id(to),
        response: VoteResponse { term, voter: id(voter), granted, pre_vote: true },
    }
}

/// A vote (`pre_vote: false`) or pre-vote answer as the candidate receives it.
fn vote(term: u64, voter: u128, granted: bool, pre_vote: bool) -> VoteResponse {
    VoteResponse { term, voter: id(voter), granted, pre_vote }
}

fn persist(term: u64, voted_for: Option<u128>, leader: Option<u128>) -> Action {
    Action::Persist { term, voted_for: voted_for.map(id), leader: leader.map(id) }
}

/// A follower of `leader` in `term` that heard it at `now`.
fn follower_of(me: u128, n: u128, leader: u128, term: u64, now: Instant) -> Election<StdRng> {
    let persisted = PersistedElection { term, voted_for: None, leader: Some(id(leader)) };
    let mut e = machine(me, n, persisted, now);
    let (verdict, actions) = e.on_leader_message(id(leader), term, now);
    assert_eq!(verdict, LeaderVerdict::Accepted);
    assert!(actions.is_empty(), "{actions:?}");
    e
}

/// Device `me` of voters `1..=n` (and `learners`) after its election deadline passed and other
/// voters granted its pre-vote: a candidate of the next term. Returns the instant it is at.
fn candidate(
    me: u128,
    n: u128,
    learners: &[u128],
    persisted: PersistedElection,
    now: Instant,
) -> (Election<StdRng>, Instant) {
    let mut e = with_learners(me, n, learners, persisted, now);
    let at = e.next_deadline().unwrap();
    e.tick(at);
    for voter in (1..=n).filter(|v| *v != me) {
        let Some(term) = e.pre_vote_term() else { break };
        e.on_vote_response(vote(term, voter, true, true), at);
    }
    assert_eq!(e.role(), SyncRole::Candidate);
    (e, at)
}

#[test]
fn follower_times_out_and_asks_for_pre_votes_with_its_log() {
    let t0 = Instant::now();
    let mut e = machine(1, 3, PersistedElection::default(), t0);
    e.set_last_log(LogPosition { term: 3, sequence: 7 });
    let deadline = e.next_deadline().unwrap();
    assert!(deadline >= t0 + ET && deadline < t0 + 2 * ET, "{deadline:?}");
    assert_eq!(e.tick(deadline - Duration::from_nanos(1)), vec![]);
    let req = pre_request(2, 1, (3, 7));
    assert_eq!(
        e.tick(deadline),
        vec![
            Action::SendRequestVote { to: id(2), request: req },
            Action::SendRequestVote { to: id(3), request: req },
        ],
        "no Persist, no role change: the term, the vote and the role are untouched"
    );
    assert_eq!((e.role(), e.term(), e.voted_for()), (SyncRole::Follower, 0, None));
    assert_eq!(e.pre_vote_term(), Some(2));
    let next = e.next_deadline().unwrap();
    assert!(next >= deadline + ET && next < deadline + 2 * ET);
}

#[test]
fn a_pre_vote_majority_starts_the_real_election() {
    let t0 = Instant::now();
    let mut e = machine(1, 3, PersistedElection::default(), t0);
    e.set_last_log(LogPosition { term: 3, sequence: 7 });
    let t1 = e.next_deadline().unwrap();
    e.tick(t1);
    let req = request(2, 1, (3, 7), false);
    assert_eq!(
        e.on_vote_response(vote(2, 2, true, true), t1),
        vec![
            persist(2, Some(1), None),
            Action::BecomeCandidate { term: 2 },
            Action::SendRequestVote { to: id(2), request: req },
            Action::SendRequestVote { to: id(3), request: req },
        ]
    );
    assert_eq!(e.role(), SyncRole::Candidate);
    assert_eq!(e.pre_vote_term(), None);
    let next = e.next_deadline().unwrap();
    assert!(next >= t1 + ET && next < t1 + 2 * ET);
}

#[test]
fn a_pre_vote_round_that_cannot_win_bumps_no_term() {
    let t0 = Instant::now();
    let persisted = PersistedElection { term: 6, voted_for: None, leader: Some(id(2)) };
    let mut e = machine(1, 3, persisted, t0);
    let req = pre_request(7, 1, (0, 0));
    let asks = vec![
        Action::SendRequestVote { to: id(2), request: req },
        Action::SendRequestVote { to: id(3), request: req },
    ];
    let mut now = t0;
    for _ in 0..50 {
        let next = e.next_deadline().unwrap();
        assert!(next >= now + ET && next < now + 2 * ET, "a redrawn deadline");
        now = next;
        assert_eq!(e.tick(now), asks);
        // Refusals of the other voters, in their (lower or equal) terms, change nothing.
        assert_eq!(e.on_vote_response(vote(6, 2, false, true), now), vec![]);
        assert_eq!(e.on_vote_response(vote(5, 3, false, true), now), vec![]);
    }
    assert_eq!(e.persisted(), persisted);
    assert_eq!(e.role(), SyncRole::Follower);
}

#[test]
fn a_pre_vote_grant_changes_nothing_on_the_voter() {
    let t0 = Instant::now();
    let persisted = PersistedElection { term: 3, voted_for: None, leader: None };
    let mut e = machine(1, 3, persisted, t0);
    e.set_last_log(LogPosition { term: 3, sequence: 10 });
    let deadline = e.next_deadline();
    let later = t0 + ET / 2;
    assert_eq!(
        e.on_vote_request(pre_request(4, 2, (3, 10)), later),
        vec![pre_response(2, 4, 1, true)],
        "a grant answers with the term asked for, and persists nothing"
    );
    assert_eq!(e.persisted(), persisted);
    assert_eq!(e.next_deadline(), deadline, "no deadline reset");
    // The real vote of that term is still free, for another candidate too.
    assert_eq!(
        e.on_vote_request(request(4, 3, (3, 10), false), later),
        vec![
            persist(4, Some(3), None),
            Action::BecomeFollower { term: 4, leader: None },
            response(3, 4, 1, true),
        ]
    );
}

#[test]
fn a_pre_vote_is_refused_for_a_term_not_above_the_voters_or_a_stale_log() {
    let t0 = Instant::now();
    let persisted = PersistedElection { term: 4, voted_for: None, leader: None };
    let mut e = machine(1, 3, persisted, t0);
    e.set_last_log(LogPosition { term: 3, sequence: 10 });
    let cases = [(4, (3, 10), false), (3, (9, 9), false), (5, (3, 9), false), (5, (3, 10), true)];
    for (term, log, granted) in cases {
        let answer = pre_response(2, if granted { term } else { 4 }, 1, granted);
        assert_eq!(
            e.on_vote_request(pre_request(term, 2, log), t0),
            vec![answer],
            "{term} {log:?}"
        );
    }
    assert_eq!(e.persisted(), persisted);
}

#[test]
fn a_pre_vote_is_refused_while_a_live_leader_is_heard() {
    let t0 = Instant::now();
    let mut e = follower_of(1, 3, 2, 3, t0);
    assert_eq!(
        e.on_vote_request(pre_request(4, 3, (9, 9)), t0 + ET / 2),
        vec![pre_response(3, 3, 1, false)]
    );
    assert_eq!(
        e.on_vote_request(pre_request(4, 3, (9, 9)), t0 + ET),
        vec![pre_response(3, 4, 1, true)],
        "granted once the leader has been silent for the minimum election timeout"
    );
    assert_eq!((e.term(), e.leader()), (3, Some(id(2))));
    let mut leader = machine(1, 3, PersistedElection::founder(id(1)), t0);
    assert_eq!(
        leader.on_vote_request(pre_request(7, 2, (9, 9)), t0 + 10 * ET),
        vec![pre_response(2, 1, 1, false)],
        "a leader is its own live leader"
    );
}

#[test]
fn a_refused_pre_vote_with_a_higher_term_is_adopted() {
    let t0 = Instant::now();
    let mut e = machine(1, 3, PersistedElection { term: 3, ..Default::default() }, t0);
    let t1 = e.next_deadline().unwrap();
    e.tick(t1);
    assert_eq!(e.pre_vote_term(), Some(4));
    assert_eq!(
        e.on_vote_response(vote(6, 2, false, true), t1),
        vec![persist(6, None, None), Action::BecomeFollower { term: 6, leader: None }]
    );
    assert_eq!(e.pre_vote_term(), None, "the round is abandoned");
}

#[test]
fn stale_pre_vote_grants_are_ignored() {
    let t0 = Instant::now();
    let mut e = machine(1, 3, PersistedElection { term: 3, ..Default::default() }, t0);
    assert_eq!(e.on_vote_response(vote(4, 2, true, true), t0), vec![], "no round in progress");
    let t1 = e.next_deadline().unwrap();
    e.tick(t1);
    e.observe_term(5, t1);
    let t2 = e.next_deadline().unwrap();
    e.tick(t2);
    assert_eq!(e.pre_vote_term(), Some(6));
    assert_eq!(e.on_vote_response(vote(4, 2, true, true), t2), vec![], "the older round's grant");
    assert_eq!(e.on_vote_response(vote(6, 9, true, true), t2), vec![], "a non-member's grant");
    assert_eq!(e.on_vote_response(vote(6, 1, true, true), t2), vec![], "its own grant");
    assert_eq!((e.role(), e.term()), (SyncRole::Follower, 5));
    assert_eq!(
        e.on_vote_response(vote(6, 3, true, true), t2)[1],
        Action::BecomeCandidate { term: 6 }
    );
}

#[test]
fn candidate_wins_with_a_majority_then_heartbeats() {
    let t0 = Instant::now();
    let (mut e, t1) = candidate(1, 5, &[], PersistedElection::default(), t0);
    let vote = |voter, granted| vote(2, voter, granted, false);
    assert_eq!(e.on_vote_response(vote(2, true), t1), vec![]);
    assert_eq!(e.on_vote_response(vote(2, true), t1), vec![], "a duplicate vote counts once");
    assert_eq!(e.on_vote_response(vote(3, false), t1), vec![]);
    assert_eq!(e.on_vote_response(vote(9, true), t1), vec![], "a non-member's vote does not count");
    assert_eq!(
        e.on_vote_response(vote(4, true), t1),
        vec![
            persist(2, Some(1), Some(1)),
            Action::BecomeLeader { term: 2 },
            Action::SendHeartbeats { term: 2 },
        ]
    );
    assert!(e.is_leader());
    assert_eq!(e.next_deadline(), Some(t1 + HB));
    assert_eq!(e.tick(t1 + HB / 2), vec![]);
    assert_eq!(e.tick(t1 + HB), vec![Action::SendHeartbeats { term: 2 }]);
    assert_eq!(e.on_vote_response(vote(5, true), t1 + HB), vec![], "late votes change nothing");
}

#[test]
fn a_candidate_asks_for_pre_votes_again_on_timeout() {
    let t0 = Instant::now();
    let (mut e, _) = candidate(1, 3, &[], PersistedElection::default(), t0);
    let t2 = e.next_deadline().unwrap();
    let req = pre_request(3, 1, (0, 0));
    assert_eq!(
        e.tick(t2),
        vec![
            Action::SendRequestVote { to: id(2), request: req },
            Action::SendRequestVote { to: id(3), request: req },
        ]
    );
    assert_eq!((e.role(), e.term(), e.voted_for()), (SyncRole::Candidate, 2, Some(id(1))));
    let actions = e.on_vote_response(vote(3, 3, true, true), t2);
    assert_eq!(actions[..2], [persist(3, Some(1), None), Action::BecomeCandidate { term: 3 }]);
    assert_eq!(actions.len(), 4);
    // A vote of the previous term does not count.
    assert_eq!(e.on_vote_response(vote(2, 2, true, false), t2), vec![]);
    assert_eq!(e.role(), SyncRole::Candidate);
}

#[test]
fn one_vote_per_term() {
    let t0 = Instant::now();
    let mut e = machine(1, 3, PersistedElection::default(), t0);
    assert_eq!(
        e.on_vote_request(request(2, 2, (0, 0), false), t0),
        vec![
            persist(2, Some(2), None),
            Action::BecomeFollower { term: 2, leader: None },
            response(2, 2, 1, true),
        ]
    );
    assert_eq!(e.on_vote_request(request(2, 3, (0, 0), false), t0), vec![response(3, 2, 1, false)]);
    assert_eq!(
        e.on_vote_request(request(2, 2, (0, 0), false), t0),
        vec![response(2, 2, 1, true)],
        "a repeated request of the same candidate is granted again, without a new persist"
    );
    // The next term frees the vote.
    assert_eq!(
        e.on_vote_request(request(3, 3, (0, 0), false), t0),
        vec![
            persist(3, Some(3), None),
            Action::BecomeFollower { term: 3, leader: None },
            response(3, 3, 1, true),
        ]
    );
    // An older term is refused with the current one.
    assert_eq!(e.on_vote_request(request(2, 2, (0, 0), false), t0), vec![response(2, 3, 1, false)]);
}

#[test]
fn a_granted_vote_resets_the_election_deadline() {
    let t0 = Instant::now();
    let mut e = machine(1, 3, PersistedElection::default(), t0);
    let later = t0 + ET + ET / 2;
    e.on_vote_request(request(2, 2, (0, 0), false), later);
    assert!(e.next_deadline().unwrap() >= later + ET);
}

#[test]
fn vote_refused_for_a_less_up_to_date_log() {
    let t0 = Instant::now();
    let cases =
        [((2, 50), false), ((3, 9), false), ((3, 10), true), ((3, 11), true), ((4, 1), true)];
    for (log, granted) in cases {
        let mut e = machine(1, 3, PersistedElection { term: 4, ..Default::default() }, t0);
        e.set_last_log(LogPosition { term: 3, sequence: 10 });
        let actions = e.on_vote_request(request(5, 2, log, false), t0);
        let voted = granted.then_some(2);
        assert_eq!(
            actions,
            vec![
                persist(5, voted, None),
                Action::BecomeFollower { term: 5, leader: None },
                response(2, 5, 1, granted),
            ],
            "candidate log {log:?}"
        );
    }
}

#[test]
fn vote_refused_while_a_live_leader_is_heard_unless_transfer() {
    let t0 = Instant::now();
    let mut e = follower_of(1, 3, 2, 3, t0);
    let soon = t0 + ET / 2;
    assert_eq!(
        e.on_vote_request(request(4, 3, (9, 9), false), soon),
        vec![response(3, 3, 1, false)],
        "refused, and the term is left alone"
    );
    assert_eq!(e.term(), 3);
    assert_eq!(e.leader(), Some(id(2)));

    let mut transfer = follower_of(1, 3, 2, 3, t0);
    assert_eq!(
        transfer.on_vote_request(request(4, 3, (0, 0), true), soon),
        vec![
            persist(4, Some(3), None),
            Action::BecomeFollower { term: 4, leader: None },
            response(3, 4, 1, true),
        ]
    );

    // Once the leader has been silent for the minimum election timeout, the vote is free.
    assert_eq!(
        e.on_vote_request(request(4, 3, (0, 0), false), t0 + ET).last(),
        Some(&response(3, 4, 1, true))
    );

    // A leader is its own live leader.
    let mut leader = machine(1, 3, PersistedElection::founder(id(1)), t0);
    assert_eq!(
        leader.on_vote_request(request(7, 2, (9, 9), false), t0 + 10 * ET),
        vec![response(2, 1, 1, false)]
    );
    assert!(leader.is_leader());
}

#[test]
fn a_newer_term_in_any_message_makes_a_leader_step_down() {
    let t0 = Instant::now();
    let founder = PersistedElection::founder(id(1));
    let stepped = vec![persist(5, None, None), Action::BecomeFollower { term: 5, leader: None }];

    let mut e = machine(1, 3, founder, t0);
    assert_eq!(e.on_vote_response(vote(5, 2, false, false), t0), stepped);
    assert_eq!(e.role(), SyncRole::Follower);

    let mut e = machine(1, 3, founder, t0);
    assert_eq!(e.on_follower_response(id(2), 5, t0), stepped);

    let mut e = machine(1, 3, founder, t0);
    assert_eq!(e.observe_term(5, t0), stepped);
    assert_eq!(e.observe_term(4, t0), vec![]);

    let mut e = machine(1, 3, founder, t0);
    let (verdict, actions) = e.on_leader_message(id(3), 5, t0);
    assert_eq!(verdict, LeaderVerdict::Accepted);
    assert_eq!(
        actions,
        vec![persist(5, None, Some(3)), Action::BecomeFollower { term: 5, leader: Some(id(3)) }]
    );
    // A stepped-down leader's timers are a follower's.
    let next = e.next_deadline().unwrap();
    assert!(next >= t0 + ET);
}

#[test]
fn a_candidate_follows_the_winner_of_its_term() {
    let t0 = Instant::now();
    let (mut e, t1) = candidate(1, 3, &[], PersistedElection::default(), t0);
    let (verdict, actions) = e.on_leader_message(id(2), 2, t1);
    assert_eq!(verdict, LeaderVerdict::Accepted);
    assert_eq!(
        actions,
        vec![persist(2, Some(1), Some(2)), Action::BecomeFollower { term: 2, leader: Some(id(2)) }]
    );
}

#[test]
fn leader_messages_of_an_older_term_are_refused() {
    let t0 = Instant::now();
    let mut e = follower_of(1, 3, 2, 5, t0);
    assert_eq!(
        e.on_leader_message(id(3), 4, t0),
        (LeaderVerdict::Stale { current_term: 5, leader: Some(id(2)) }, vec![])
    );
    assert_eq!(
        e.on_leader_message(id(3), 5, t0),
        (LeaderVerdict::Refused, vec![]),
        "second leader"
    );
    assert_eq!(e.on_leader_message(id(1), 6, t0), (LeaderVerdict::Refused, vec![]), "itself");
    assert_eq!(e.on_timeout_now(id(3), 4, t0), vec![]);
    assert_eq!(e.term(), 5);
    // A follower re-points when its leader's messages resume after a restart.
    let (verdict, actions) = e.on_leader_message(id(2), 5, t0 + ET);
    assert_eq!((verdict, actions), (LeaderVerdict::Accepted, vec![]));
}

#[test]
fn leader_messages_keep_a_follower_from_campaigning() {
    let t0 = Instant::now();
    let mut e = follower_of(1, 3, 2, 1, t0);
    let mut now = t0;
    for _ in 0..50 {
        now += ET * 9 / 10;
        assert_eq!(e.on_leader_message(id(2), 1, now).0, LeaderVerdict::Accepted);
        assert_eq!(e.tick(now), vec![]);
    }
    assert_eq!(e.role(), SyncRole::Follower);
}

#[test]
fn two_member_library_elects_with_one_vote_in_its_own_terms() {
    let t0 = Instant::now();
    let mut a = machine(1, 2, PersistedElection::founder(id(1)), t0);
    let mut b =
        machine(2, 2, PersistedElection { term: 1, voted_for: None, leader: Some(id(1)) }, t0);
    assert_eq!(a.majority(), 1);
    // b (the higher uuid) owns the odd terms from 3 on.
    let t1 = b.next_deadline().unwrap();
    assert_eq!(
        b.tick(t1),
        vec![
            persist(3, Some(2), Some(2)),
            Action::BecomeLeader { term: 3 },
            Action::SendHeartbeats { term: 3 }
        ]
    );
    // a, partitioned from b, keeps leading term 1; had it lost it, it would campaign in term 2.
    let mut a2 =
        machine(1, 2, PersistedElection { term: 1, voted_for: None, leader: Some(id(2)) }, t0);
    let t2 = a2.next_deadline().unwrap();
    assert_eq!(a2.tick(t2)[0], persist(2, Some(1), Some(1)));
    // On healing, the newer term wins.
    let (verdict, actions) = a.on_leader_message(id(2), 3, t1);
    assert_eq!(verdict, LeaderVerdict::Accepted);
    assert_eq!(actions[1], Action::BecomeFollower { term: 3, leader: Some(id(2)) });
    assert_eq!(
        b.on_leader_message(id(1), 1, t1).0,
        LeaderVerdict::Stale { current_term: 3, leader: Some(id(2)) }
    );
}

#[test]
fn one_member_library_leads_at_the_first_tick() {
    let t0 = Instant::now();
    let mut e = machine(1, 1, PersistedElection::default(), t0);
    assert_eq!(e.next_deadline(), Some(t0));
    assert_eq!(
        e.tick(t0),
        vec![
            persist(2, Some(1), Some(1)),
            Action::BecomeLeader { term: 2 },
            Action::SendHeartbeats { term: 2 }
        ]
    );
}

#[test]
fn a_device_restarting_as_leader_resumes_its_term() {
    let t0 = Instant::now();
    let mut e = machine(1, 3, PersistedElection::founder(id(1)), t0);
    assert!(e.is_leader());
    assert_eq!(e.next_deadline(), Some(t0));
    assert_eq!(e.tick(t0), vec![Action::SendHeartbeats { term: 1 }]);
    let persisted = PersistedElection { term: 4, voted_for: Some(id(1)), leader: Some(id(2)) };
    let f = machine(1, 3, persisted, t0);
    assert_eq!((f.role(), f.term(), f.leader()), (SyncRole::Follower, 4, Some(id(2))));
}

#[test]
fn transfer_leadership_flow() {
    let t0 = Instant::now();
    let mut leader = machine(1, 3, PersistedElection::founder(id(1)), t0);
    let mut target = follower_of(2, 3, 1, 1, t0);
    let mut other = follower_of(3, 3, 1, 1, t0);
    leader.set_last_log(LogPosition { term: 1, sequence: 10 });
    target.set_last_log(LogPosition { term: 1, sequence: 10 });
    other.set_last_log(LogPosition { term: 1, sequence: 8 });

    assert_eq!(leader.transfer_leadership(id(1), t0), Err(TransferError::ToSelf));
    assert_eq!(leader.transfer_leadership(id(9), t0), Err(TransferError::NotAMember(id(9))));
    assert_eq!(
        target.transfer_leadership(id(3), t0),
        Err(TransferError::NotLeader { leader: Some(id(1)) })
    );
    assert_eq!(leader.transfer_leadership(id(2), t0), Ok(()));
    assert!(leader.is_transferring());
    assert_eq!(leader.transfer_target(), Some(id(2)));
    assert_eq!(leader.on_target_caught_up(id(3), t0), vec![]);
    let now = t0 + HB;
    assert_eq!(
        leader.on_target_caught_up(id(2), now),
        vec![Action::SendTimeoutNow { to: id(2), term: 1 }]
    );

    let req = request(2, 2, (1, 10), true);
    assert_eq!(
        target.on_timeout_now(id(1), 1, now),
        vec![
            persist(2, Some(2), None),
            Action::BecomeCandidate { term: 2 },
            Action::SendRequestVote { to: id(1), request: req },
            Action::SendRequestVote { to: id(3), request: req },
        ]
    );
    // Both voters still hear the leader; the transfer flag makes them vote anyway.
    assert_eq!(
        leader.on_vote_request(req, now),
        vec![
            persist(2, Some(2), None),
            Action::BecomeFollower { term: 2, leader: None },
            response(2, 2, 1, true),
        ]
    );
    assert!(!leader.is_transferring());
    assert_eq!(other.on_vote_request(req, now).last(), Some(&response(2, 2, 3, true)));
    assert_eq!(
        target.on_vote_response(vote(2, 3, true, false), now),
        vec![
            persist(2, Some(2), Some(2)),
            Action::BecomeLeader { term: 2 },
            Action::SendHeartbeats { term: 2 }
        ]
    );
    let (verdict, actions) = leader.on_leader_message(id(2), 2, now);
    assert_eq!(verdict, LeaderVerdict::Accepted);
    assert_eq!(
        actions,
        vec![persist(2, Some(2), Some(2)), Action::BecomeFollower { term: 2, leader: Some(id(2)) }]
    );
}

#[test]
fn transfer_times_out() {
    let t0 = Instant::now();
    let mut leader = machine(1, 3, PersistedElection::founder(id(1)), t0);
    leader.tick(t0);
    leader.transfer_leadership(id(3), t0).unwrap();
    let mut now = t0;
    let mut aborted = false;
    while now <= t0 + ET {
        now = leader.next_deadline().unwrap();
        // A follower answers: the check quorum keeps the leader.
        leader.on_follower_response(id(2), 1, now);
        let actions = leader.tick(now);
        if actions.contains(&Action::TransferAborted { to: id(3) }) {
            aborted = true;
            break;
        }
    }
    assert!(aborted);
    assert_eq!(now, t0 + ET, "transfer_timeout defaults to the election timeout");
    assert!(!leader.is_transferring());
    assert!(leader.is_leader());
    assert_eq!(leader.on_target_caught_up(id(3), now), vec![]);
    // Removing the target aborts too.
    leader.transfer_leadership(id(2), now).unwrap();
    assert_eq!(
        leader.set_membership(Membership::new([id(1), id(3)].into(), [id(2)].into()), now),
        vec![Action::TransferAborted { to: id(2) }],
        "the target became a learner"
    );
}

#[test]
fn check_quorum_steps_down_a_leader_cut_off_from_the_majority() {
    let t0 = Instant::now();
    assert!(ElectionConfig::new(HB, ET).check_quorum && ElectionConfig::default().check_quorum);
    let mut e = with_learners(1, 3, &[4], PersistedElection::founder(id(1)), t0);
    let mut now = t0;
    while now < t0 + ET {
        now = e.next_deadline().unwrap();
        e.on_follower_response(id(2), 1, now);
        assert!(!e.tick(now).contains(&Action::BecomeFollower { term: 1, leader: None }));
    }
    assert!(e.is_leader(), "one follower heard: a majority of three");
    let mut stepped = Vec::new();
    while e.is_leader() && now < t0 + 3 * ET {
        now = e.next_deadline().unwrap();
        e.on_follower_response(id(4), 1, now);
        stepped = e.tick(now);
    }
    assert_eq!(
        stepped,
        vec![persist(1, Some(1), None), Action::BecomeFollower { term: 1, leader: None }]
    );
    assert_eq!(now, t0 + 2 * ET, "the learner heard all along does not count");
}

#[test]
fn check_quorum_does_nothing_with_two_voters() {
    let t0 = Instant::now();
    let mut e = with_learners(1, 2, &[3, 4], PersistedElection::founder(id(1)), t0);
    let mut now = t0;
    while now < t0 + 10 * ET {
        assert_eq!(e.next_deadline(), Some(now), "heartbeats only: no quorum deadline");
        assert_eq!(e.tick(now), vec![Action::SendHeartbeats { term: 1 }]);
        now += HB;
    }
    assert!(e.is_leader());
}

#[test]
fn a_leader_that_is_no_longer_a_voter_checks_the_quorum_even_with_two_voters() {
    let t0 = Instant::now();
    let mut e = machine(1, 3, PersistedElection::founder(id(1)), t0);
    // It removed itself: voters 2 and 3, and it is not one of them.
    e.set_membership(Membership::new([id(2), id(3)].into(), BTreeSet::new()), t0);
    let mut now = t0;
    while now < t0 + ET {
        now = e.next_deadline().unwrap();
        e.on_follower_response(id(2), 1, now);
        e.on_follower_response(id(3), 1, now);
        e.tick(now);
    }
    assert!(e.is_leader(), "both voters heard: it leads on until its removal commits");
    let mut stepped = Vec::new();
    while e.is_leader() && now < t0 + 4 * ET {
        now = e.next_deadline().unwrap();
        stepped = e.tick(now);
    }
    assert_eq!(
        stepped,
        vec![persist(1, Some(1), None), Action::BecomeFollower { term: 1, leader: None }],
        "the voters refuse it (they applied the removal): it steps down"
    );
}

#[test]
fn set_membership_can_complete_an_election() {
    let t0 = Instant::now();
    let (mut e, t1) = candidate(1, 5, &[], PersistedElection::default(), t0);
    e.on_vote_response(vote(2, 2, true, false), t1);
    assert_eq!(
        e.set_membership(membership(3, &[4, 5]), t1),
        vec![
            persist(2, Some(1), Some(1)),
            Action::BecomeLeader { term: 2 },
            Action::SendHeartbeats { term: 2 }
        ]
    );
}

#[test]
fn the_last_voter_left_campaigns_at_once() {
    let t0 = Instant::now();
    let mut f = follower_of(1, 3, 2, 4, t0);
    assert_eq!(f.set_membership(membership(1, &[2, 3]), t0), vec![]);
    assert_eq!(f.next_deadline(), Some(t0));
    assert_eq!(f.tick(t0)[1], Action::BecomeLeader { term: 5 });
}

#[test]
fn a_leader_that_is_no_longer_a_voter_keeps_leading() {
    let t0 = Instant::now();
    let mut e = machine(1, 3, PersistedElection::founder(id(1)), t0);
    let demoted = Membership::new([id(2), id(3)].into(), [id(1)].into());
    assert_eq!(e.set_membership(demoted, t0), vec![]);
    assert!(e.is_leader());
    assert_eq!(e.next_deadline(), Some(t0));
    assert_eq!(e.tick(t0), vec![Action::SendHeartbeats { term: 1 }]);
    let removed = Membership::all_voters([id(2), id(3)]);
    assert_eq!(e.set_membership(removed, t0), vec![]);
    assert!(e.is_leader());
}

#[test]
fn resign_steps_a_leader_down() {
    let t0 = Instant::now();
    let mut e = machine(1, 3, PersistedElection::founder(id(1)), t0);
    e.set_membership(Membership::new([id(2), id(3)].into(), [id(1)].into()), t0);
    assert_eq!(
        e.resign(t0 + HB),
        vec![persist(1, Some(1), None), Action::BecomeFollower { term: 1, leader: None }]
    );
    assert_eq!(e.next_deadline(), None, "a learner has no election deadline");
    assert_eq!(e.tick(t0 + 10 * ET), vec![]);
    assert_eq!(e.resign(t0 + 10 * ET), vec![], "a follower has nothing to resign");
}

#[test]
fn a_candidate_that_is_no_longer_a_voter_steps_down() {
    let t0 = Instant::now();
    let (mut e, t1) = candidate(1, 3, &[], PersistedElection::default(), t0);
    let both = Membership::new(members(3), [id(1)].into());
    assert_eq!(e.set_membership(both, t1), vec![], "listed as both, a voter still");
    assert_eq!(e.role(), SyncRole::Candidate);
    let demoted = Membership::new([id(2), id(3)].into(), [id(1)].into());
    assert_eq!(
        e.set_membership(demoted, t1),
        vec![Action::BecomeFollower { term: 2, leader: None }]
    );
    assert_eq!(e.next_deadline(), None);
}

#[test]
fn a_follower_that_becomes_a_learner_loses_its_deadline_and_regains_one_as_a_voter() {
    let t0 = Instant::now();
    let mut e = follower_of(1, 3, 2, 4, t0);
    let learner = Membership::new([id(2), id(3)].into(), [id(1)].into());
    assert_eq!(e.set_membership(learner, t0), vec![]);
    assert_eq!(e.next_deadline(), None);
    let later = t0 + 10 * ET;
    assert_eq!(e.set_membership(membership(3, &[]), later), vec![]);
    let next = e.next_deadline().unwrap();
    assert!(next >= later + ET && next < later + 2 * ET, "a fresh deadline, not a past one");
}

#[test]
fn election_deadlines_are_spread_over_one_timeout() {
    let t0 = Instant::now();
    let config = ElectionConfig::new(HB, ET);
    let deadlines: BTreeSet<Instant> = (0..200)
        .map(|seed| {
            let rng = StdRng::seed_from_u64(seed);
            let persisted = PersistedElection::default();
            let voters = Membership::all_voters(members(3));
            Election::new(id(1), voters, persisted, config, t0, rng).next_deadline().unwrap()
        })
        .collect();
    assert!(deadlines.len() > 190);
    assert!(deadlines.iter().all(|d| *d >= t0 + ET && *d < t0 + 2 * ET));
    assert!(*deadlines.first().unwrap() < t0 + ET + ET / 4);
    assert!(*deadlines.last().unwrap() >= t0 + ET + ET * 3 / 4);
}

#[test]
fn odd_inputs_do_not_panic() {
    let t0 = Instant::now();
    let zero = ElectionConfig::new(Duration::ZERO, Duration::ZERO);
    let huge = ElectionConfig::new(Duration::MAX, Duration::MAX);
    for config in [zero, huge] {
        for (n, learners) in [(0, &[][..]), (1, &[1, 2]), (2, &[3]), (3, &[])] {
            for persisted in [
                PersistedElection::default(),
                PersistedElection::founder(id(1)),
                PersistedElection { term: u64::MAX, voted_for: Some(id(7)), leader: Some(id(8)) },
                PersistedElection { term: u64::MAX - 1, voted_for: None, leader: None },
            ] {
                let full = membership(n, learners);
                let rng = StdRng::seed_from_u64(3);
                let mut e = Election::new(id(1), full.clone(), persisted, config, t0, rng);
                let later = t0 + Duration::from_secs(1);
                for now in [t0, later, t0] {
                    e.tick(now);
                    e.on_vote_request(request(u64::MAX, 2, (u64::MAX, u64::MAX), true), now);
                    e.on_vote_request(request(0, 1, (0, 0), false), now);
                    e.on_vote_request(pre_request(u64::MAX, 2, (u64::MAX, u64::MAX)), now);
                    e.on_vote_request(pre_request(0, 3, (0, 0)), now);
                    e.set_log_floor(LogPosition { term: u64::MAX, sequence: u64::MAX });
                    e.on_vote_response(vote(u64::MAX, 2, true, false), now);
                    e.on_vote_response(vote(u64::MAX, 2, true, true), now);
                    e.on_vote_response(vote(u64::MAX, 3, false, true), now);
                    e.set_log_floor(LogPosition::default());
                    e.on_leader_message(id(2), u64::MAX, now);
                    e.on_timeout_now(id(3), u64::MAX, now);
                    e.on_follower_response(id(1), 0, now);
                    let _ = e.transfer_leadership(id(2), now);
                    e.on_target_caught_up(id(2), now);
                    e.set_membership(Membership::default(), now);
                    e.resign(now);
                    e.set_membership(full.clone(), now);
                    e.tick(now);
                    e.resign(now);
                    let _ = e.next_deadline();
                }
                assert!(e.term() >= persisted.term);
            }
        }
    }
}

#[test]
fn term_space_exhaustion_stops_campaigning() {
    let t0 = Instant::now();
    let persisted = PersistedElection { term: u64::MAX, voted_for: None, leader: None };
    let mut e = machine(1, 3, persisted, t0);
    let t1 = e.next_deadline().unwrap();
    assert_eq!(e.tick(t1), vec![]);
    assert_eq!(e.term(), u64::MAX);
    assert!(e.next_deadline().unwrap() > t1);
}

#[test]
fn a_leader_restarted_after_leading_its_term_comes_back_a_follower_with_no_leader() {
    let led = PersistedElection { term: 5, voted_for: Some(id(1)), leader: Some(id(1)) };
    assert_eq!(
        led.restarted(id(1), true),
        PersistedElection { term: 5, voted_for: Some(id(1)), leader: None }
    );
}

#[test]
fn a_leadership_begun_outside_the_election_is_resumed_at_its_first_start() {
    let founder = PersistedElection::founder(id(1));
    assert_eq!(founder.restarted(id(1), false), founder);
}

#[test]
fn a_follower_restarts_as_it_was() {
    let follower = PersistedElection { term: 5, voted_for: Some(id(2)), leader: Some(id(2)) };
    assert_eq!(follower.restarted(id(1), false), follower);
    assert_eq!(follower.restarted(id(1), true), follower, "led_before is about this device");
}

#[test]
fn a_restarted_sole_voter_campaigns_for_a_new_term_at_once() {
    let t0 = Instant::now();
    let led = PersistedElection { term: 5, voted_for: Some(id(1)), leader: Some(id(1)) };
    let mut e = machine(1, 1, led.restarted(id(1), true), t0);
    assert_eq!((e.role(), e.leader()), (SyncRole::Follower, None));
    assert_eq!(
        e.tick(t0),
        vec![
            persist(6, Some(1), Some(1)),
            Action::BecomeLeader { term: 6 },
            Action::SendHeartbeats { term: 6 },
        ]
    );
}

#[test]
fn a_restarted_leader_of_three_voters_never_heartbeats_its_old_term() {
    let t0 = Instant::now();
    let led = PersistedElection { term: 5, voted_for: Some(id(1)), leader: Some(id(1)) };
    let mut e = machine(1, 3, led.restarted(id(1), true), t0);
    e.set_last_log(LogPosition { term: 5, sequence: 40 });
    assert_eq!(e.tick(t0), vec![], "no heartbeat of term 5");
    let t1 = e.next_deadline().unwrap();
    let req = pre_request(6, 1, (5, 40));
    assert_eq!(
        e.tick(t1),
        vec![
            Action::SendRequestVote { to: id(2), request: req },
            Action::SendRequestVote { to: id(3), request: req },
        ]
    );
}

#[test]
fn a_machine_rebuilt_with_itself_as_leader_resumes_leading() {
    // What the creator's first start (and a restarted election actor in a running service)
    // does: heartbeats of its term at once, nothing persisted.
    let t0 = Instant::now();
    let mut e = machine(1, 3, PersistedElection::founder(id(1)), t0);
    assert_eq!(e.tick(t0), vec![Action::SendHeartbeats { term: 1 }]);
}

/// Terms a hostile member could send (docs/protocol.md §6): the largest SQLite integer and
/// the largest u64.
const HOSTILE_TERMS: [u64; 2] = [i64::MAX as u64, u64::MAX];

#[test]
fn a_vote_request_beyond_the_highest_term_is_refused_and_not_adopted() {
    let t0 = Instant::now();
    let persisted = PersistedElection { term: 4, voted_for: None, leader: None };
    let mut e = machine(1, 3, persisted, t0);
    for term in HOSTILE_TERMS {
        assert_eq!(
            e.on_vote_request(request(term, 2, (u64::MAX, u64::MAX), true), t0),
            vec![response(2, 4, 1, false)]
        );
        assert_eq!(
            e.on_vote_request(pre_request(term, 2, (u64::MAX, u64::MAX)), t0),
            vec![pre_response(2, 4, 1, false)]
        );
    }
    assert_eq!(e.persisted(), persisted);
}

#[test]
fn a_leader_message_beyond_the_highest_term_is_stale() {
    let t0 = Instant::now();
    let mut e = follower_of(1, 3, 2, 4, t0);
    for term in HOSTILE_TERMS {
        assert_eq!(
            e.on_leader_message(id(3), term, t0),
            (LeaderVerdict::Stale { current_term: 4, leader: Some(id(2)) }, vec![])
        );
        assert_eq!(e.on_timeout_now(id(3), term, t0), vec![]);
    }
    assert_eq!((e.term(), e.leader()), (4, Some(id(2))));
}

#[test]
fn a_term_beyond_the_highest_seen_anywhere_else_is_not_adopted() {
    let t0 = Instant::now();
    let (mut e, t1) = candidate(1, 3, &[], PersistedElection::default(), t0);
    for term in HOSTILE_TERMS {
        assert_eq!(e.on_vote_response(vote(term, 2, false, false), t1), vec![]);
        assert_eq!(e.on_vote_response(vote(term, 2, false, true), t1), vec![]);
        assert_eq!(e.on_follower_response(id(2), term, t1), vec![]);
        assert_eq!(e.observe_term(term, t1), vec![]);
    }
    assert_eq!((e.role(), e.term()), (SyncRole::Candidate, 2));
}

#[test]
fn elections_go_on_after_a_term_beyond_the_highest() {
    let t0 = Instant::now();
    let persisted = PersistedElection { term: 4, voted_for: None, leader: None };
    let mut e = machine(1, 3, persisted, t0);
    for term in HOSTILE_TERMS {
        e.on_vote_request(request(term, 2, (0, 0), false), t0);
        e.observe_term(term, t0);
    }
    let t1 = e.next_deadline().unwrap();
    e.tick(t1);
    let req = request(5, 1, (0, 0), false);
    assert_eq!(
        e.on_vote_response(vote(5, 2, true, true), t1),
        vec![
            persist(5, Some(1), None),
            Action::BecomeCandidate { term: 5 },
            Action::SendRequestVote { to: id(2), request: req },
            Action::SendRequestVote { to: id(3), request: req },
        ]
    );
}

#[test]
fn a_device_at_the_highest_term_does_not_campaign() {
    let t0 = Instant::now();
    let persisted = PersistedElection { term: MAX_TERM, voted_for: None, leader: None };
    let mut e = machine(1, 1, persisted, t0);
    assert_eq!(e.tick(t0), vec![], "a sole voter would campaign at once");
    assert_eq!((e.role(), e.term()), (SyncRole::Follower, MAX_TERM));
}

#[test]
fn the_highest_term_is_the_last_one_campaigned_in() {
    let t0 = Instant::now();
    let persisted = PersistedElection { term: MAX_TERM - 1, voted_for: None, leader: None };
    let mut e = machine(1, 1, persisted, t0);
    assert_eq!(
        e.tick(t0),
        vec![
            persist(MAX_TERM, Some(1), Some(1)),
            Action::BecomeLeader { term: MAX_TERM },
            Action::SendHeartbeats { term: MAX_TERM },
        ]
    );
}

#[test]
fn a_parity_that_would_pass_the_highest_term_stops_campaigning() {
    let t0 = Instant::now();
    // Device 2 of two voters owns the odd terms: after MAX_TERM - 1 its next would be
    // MAX_TERM + 1 (MAX_TERM is even).
    let persisted = PersistedElection { term: MAX_TERM - 1, voted_for: None, leader: None };
    let mut e = machine(2, 2, persisted, t0);
    let t1 = e.next_deadline().unwrap();
    assert_eq!(e.tick(t1), vec![]);
    assert_eq!(e.term(), MAX_TERM - 1);
}

#[test]
fn a_candidate_yields_to_a_better_candidate_of_its_term() {
    let t0 = Instant::now();
    let (mut e, t1) = candidate(1, 3, &[], PersistedElection::default(), t0);
    e.set_last_log(LogPosition { term: 3, sequence: 19 });
    assert_eq!(
        e.on_vote_request(request(2, 3, (3, 19), false), t1),
        vec![response(3, 2, 1, false)]
    );
    assert!(e.next_deadline().unwrap() < t1 + 2 * ET, "an equal log: no yielding");
    assert_eq!(
        e.on_vote_request(request(2, 3, (3, 21), false), t1),
        vec![response(3, 2, 1, false)]
    );
    let next = e.next_deadline().unwrap();
    assert!(next >= t1 + 2 * ET && next < t1 + 3 * ET, "{next:?}");
    // The better candidate's next term gets the vote.
    assert_eq!(
        e.on_vote_request(request(3, 3, (3, 21), false), t1).last(),
        Some(&response(3, 3, 1, true))
    );
}

#[test]
fn two_members_left_without_a_leader_campaign_in_different_terms() {
    // A three-member library lost its leader to a membership change: both remaining followers
    // of term 7 time out together; each would win with its own vote.
    let t0 = Instant::now();
    let persisted = PersistedElection { term: 7, voted_for: None, leader: None };
    let mut a = machine(1, 2, persisted, t0);
    let mut b = machine(2, 2, persisted, t0);
    let now = t0 + 2 * ET;
    assert_eq!(a.tick(now)[1], Action::BecomeLeader { term: 8 });
    assert_eq!(b.tick(now)[1], Action::BecomeLeader { term: 9 });
    assert_eq!(a.on_leader_message(id(2), 9, now).0, LeaderVerdict::Accepted);
    assert_eq!(
        b.on_leader_message(id(1), 8, now).0,
        LeaderVerdict::Stale { current_term: 9, leader: Some(id(2)) }
    );
}

#[test]
fn a_learner_never_campaigns() {
    let t0 = Instant::now();
    let mut e = with_learners(4, 3, &[4], PersistedElection::default(), t0);
    assert_eq!(e.next_deadline(), None);
    for k in 1..20 {
        assert_eq!(e.tick(t0 + k * ET), vec![]);
    }
    let mut outsider = machine(9, 3, PersistedElection::default(), t0);
    assert_eq!(outsider.next_deadline(), None);
    assert_eq!(outsider.tick(t0 + 10 * ET), vec![]);
    assert_eq!((e.term(), e.role(), e.pre_vote_term()), (0, SyncRole::Follower, None));
}

#[test]
fn the_sole_voter_leads_at_the_first_tick_despite_learners() {
    let t0 = Instant::now();
    let mut e = with_learners(1, 1, &[2, 3], PersistedElection::default(), t0);
    assert_eq!(e.majority(), 1);
    assert_eq!(e.next_deadline(), Some(t0));
    assert_eq!(
        e.tick(t0),
        vec![
            persist(2, Some(1), Some(1)),
            Action::BecomeLeader { term: 2 },
            Action::SendHeartbeats { term: 2 }
        ]
    );
}

#[test]
fn a_non_member_refuses_votes_and_pre_votes_and_persists_nothing() {
    let t0 = Instant::now();
    let persisted = PersistedElection { term: 3, voted_for: None, leader: None };
    let mut e = with_learners(9, 3, &[4], persisted, t0);
    assert_eq!(
        e.on_vote_request(request(5, 1, (9, 9), false), t0 + 10 * ET),
        vec![response(1, 3, 9, false)]
    );
    assert_eq!(
        e.on_vote_request(request(5, 2, (9, 9), true), t0 + 10 * ET),
        vec![response(2, 3, 9, false)]
    );
    assert_eq!(
        e.on_vote_request(pre_request(5, 1, (9, 9)), t0 + 10 * ET),
        vec![pre_response(1, 3, 9, false)]
    );
    assert_eq!(e.persisted(), persisted);
    assert_eq!(e.next_deadline(), None);
}

#[test]
fn a_learner_answers_votes_it_may_have_been_promoted_without_knowing() {
    // A candidate asks only the devices its configuration makes voters: 4 may have been
    // promoted while it was unreachable. Its vote counts only for such a candidate.
    let t0 = Instant::now();
    let persisted = PersistedElection { term: 3, voted_for: None, leader: None };
    let mut e = with_learners(4, 3, &[4], persisted, t0);
    assert_eq!(
        e.on_vote_request(pre_request(5, 1, (9, 9)), t0 + 10 * ET),
        vec![pre_response(1, 5, 4, true)]
    );
    assert_eq!(
        e.on_vote_request(request(5, 1, (9, 9), false), t0 + 10 * ET),
        vec![
            persist(5, Some(1), None),
            Action::BecomeFollower { term: 5, leader: None },
            response(1, 5, 4, true)
        ]
    );
    assert_eq!(e.next_deadline(), None, "still no campaign of its own");
}

#[test]
fn a_voter_grants_a_candidate_it_does_not_know_as_a_voter() {
    // 4 was promoted while 1 was down: 1 still lists it as a learner, yet 4's rule is what
    // decides whose votes count, and 1 votes once in term 5 all the same.
    let t0 = Instant::now();
    let persisted = PersistedElection { term: 3, voted_for: None, leader: None };
    let mut e = with_learners(1, 3, &[4], persisted, t0);
    assert_eq!(
        e.on_vote_request(request(5, 4, (9, 9), false), t0 + 10 * ET),
        vec![
            persist(5, Some(4), None),
            Action::BecomeFollower { term: 5, leader: None },
            response(4, 5, 1, true)
        ]
    );
}

#[test]
fn a_candidate_ignores_a_granted_vote_from_a_learner() {
    let t0 = Instant::now();
    let (mut e, t1) = candidate(1, 3, &[4, 5], PersistedElection::default(), t0);
    assert_eq!(e.on_vote_response(vote(2, 4, true, false), t1), vec![]);
    assert_eq!(e.on_vote_response(vote(2, 5, true, false), t1), vec![]);
    assert_eq!(e.role(), SyncRole::Candidate);
    assert_eq!(
        e.on_vote_response(vote(2, 2, true, false), t1)[1],
        Action::BecomeLeader { term: 2 }
    );
}

#[test]
fn a_pre_candidate_ignores_a_granted_pre_vote_from_a_learner() {
    let t0 = Instant::now();
    let mut e = with_learners(1, 3, &[4], PersistedElection::default(), t0);
    let t1 = e.next_deadline().unwrap();
    let asks = e.tick(t1);
    assert_eq!(asks.len(), 2, "pre-votes go to the other voters only: {asks:?}");
    assert_eq!(e.on_vote_response(vote(2, 4, true, true), t1), vec![]);
    assert_eq!(e.role(), SyncRole::Follower);
}

#[test]
fn two_voter_parity_is_unchanged_by_learners() {
    // Voters 5 and 7; learners below, between and above them.
    let t0 = Instant::now();
    let persisted = PersistedElection { term: 1, voted_for: None, leader: None };
    for learners in [&[][..], &[1], &[6], &[9], &[1, 6, 9]] {
        let voters =
            Membership::new([id(5), id(7)].into(), learners.iter().copied().map(id).collect());
        for (me, term) in [(5, 2), (7, 3)] {
            let rng = StdRng::seed_from_u64(me as u64);
            let config = ElectionConfig::new(HB, ET);
            let mut e = Election::new(id(me), voters.clone(), persisted, config, t0, rng);
            assert_eq!(e.majority(), 1);
            let at = e.next_deadline().unwrap();
            assert_eq!(e.tick(at)[1], Action::BecomeLeader { term }, "{me} with {learners:?}");
        }
    }
}

#[test]
fn a_device_behind_its_high_water_mark_votes_only_for_a_log_that_reaches_it() {
    // A restored copy: its log ends at (3, 10), it once held (4, 30).
    let t0 = Instant::now();
    let persisted = PersistedElection { term: 4, voted_for: None, leader: None };
    let mut e = machine(1, 3, persisted, t0);
    e.set_last_log(LogPosition { term: 3, sequence: 10 });
    e.set_log_floor(LogPosition { term: 4, sequence: 30 });
    assert_eq!(
        e.on_vote_request(request(5, 2, (4, 20), false), t0),
        vec![
            persist(5, None, None),
            Action::BecomeFollower { term: 5, leader: None },
            response(2, 5, 1, false)
        ],
        "a stale candidate its own log would let it elect"
    );
    assert_eq!(
        e.on_vote_request(request(5, 3, (4, 30), false), t0),
        vec![persist(5, Some(3), None), response(3, 5, 1, true)]
    );
    let t1 = e.next_deadline().unwrap();
    assert_eq!(e.tick(t1), vec![], "nor does it campaign");
}

#[test]
fn no_campaign_below_the_log_floor() {
    let t0 = Instant::now();
    let mut e = machine(1, 1, PersistedElection::default(), t0);
    e.set_last_log(LogPosition { term: 2, sequence: 5 });
    e.set_log_floor(LogPosition { term: 3, sequence: 10 });
    assert_eq!(e.log_floor(), LogPosition { term: 3, sequence: 10 });
    assert_eq!(e.tick(t0), vec![], "the sole voter, rebuilding, does not lead");
    let mut three = machine(1, 3, PersistedElection::default(), t0);
    three.set_log_floor(LogPosition { term: 3, sequence: 10 });
    let t1 = three.next_deadline().unwrap();
    assert_eq!(three.tick(t1), vec![], "no pre-vote either");
    three.set_last_log(LogPosition { term: 3, sequence: 10 });
    let t2 = three.next_deadline().unwrap();
    assert_eq!(three.tick(t2).len(), 2, "back at its floor: pre-votes");
}

#[test]
fn a_candidate_above_the_log_but_below_the_floor_is_refused() {
    let t0 = Instant::now();
    let persisted = PersistedElection { term: 4, voted_for: None, leader: None };
    let mut e = machine(1, 3, persisted, t0);
    e.set_last_log(LogPosition { term: 2, sequence: 5 });
    e.set_log_floor(LogPosition { term: 3, sequence: 10 });
    assert_eq!(
        e.on_vote_request(pre_request(5, 2, (3, 7)), t0),
        vec![pre_response(2, 4, 1, false)]
    );
    assert_eq!(
        e.on_vote_request(request(5, 2, (3, 7), false), t0),
        vec![
            persist(5, None, None),
            Action::BecomeFollower { term: 5, leader: None },
            response(2, 5, 1, false)
        ]
    );
    assert_eq!(
        e.on_vote_request(request(5, 2, (3, 10), false), t0).last(),
        Some(&response(2, 5, 1, true))
    );
}

#[test]
fn transfer_to_a_learner_is_refused() {
    let t0 = Instant::now();
    let mut leader = with_learners(1, 3, &[4], PersistedElection::founder(id(1)), t0);
    assert_eq!(leader.transfer_leadership(id(4), t0), Err(TransferError::NotAVoter(id(4))));
    assert_eq!(leader.transfer_leadership(id(9), t0), Err(TransferError::NotAMember(id(9))));
    assert!(!leader.is_transferring());
}

#[test]
fn a_learner_told_to_campaign_does_not() {
    let t0 = Instant::now();
    let mut e = with_learners(
        4,
        3,
        &[4],
        PersistedElection { term: 1, voted_for: None, leader: Some(id(1)) },
        t0,
    );
    assert_eq!(e.on_timeout_now(id(1), 1, t0), vec![]);
    assert_eq!((e.role(), e.term()), (SyncRole::Follower, 1));
}

#[test]
fn membership_counts_a_device_in_both_sets_as_a_voter() {
    let m = Membership::new([id(1), id(2)].into(), [id(2), id(3)].into());
    assert_eq!(m.voters(), &BTreeSet::from([id(1), id(2)]));
    assert_eq!(m.learners(), &BTreeSet::from([id(3)]));
    assert!(m.is_voter(&id(2)) && !m.is_voter(&id(3)) && !m.is_voter(&id(4)));
    assert!(m.is_member(&id(3)) && !m.is_member(&id(4)));
    assert_eq!(
        (m.majority(), membership(3, &[4, 5]).majority(), membership(5, &[]).majority()),
        (1, 2, 3)
    );
}

// ---- elections during a voter change: the rule of both sets ------------------------------

fn set(ns: &[u128]) -> BTreeSet<Uuid> {
    ns.iter().copied().map(id).collect()
}

/// Voters `latest`, no learner, and the voters `previous` before the last voter change, which
/// the device does not know to be committed.
fn changing(latest: &[u128], previous: &[u128]) -> Membership {
    Membership::new(set(latest), BTreeSet::new()).with_previous(Some(set(previous)))
}

/// Device `me` with `membership`, a follower of `term` without a leader.
fn device(me: u128, membership: Membership, term: u64, now: Instant) -> Election<StdRng> {
    let config = ElectionConfig::new(HB, ET);
    let persisted = PersistedElection { term, voted_for: None, leader: None };
    Election::new(id(me), membership, persisted, config, now, StdRng::seed_from_u64(me as u64))
}

fn ask_all(to: &[u128], request: VoteRequest) -> Vec<Action> {
    to.iter().map(|&n| Action::SendRequestVote { to: id(n), request }).collect()
}

#[test]
fn a_previous_set_is_kept_only_if_it_differs_and_is_not_empty() {
    let latest = Membership::new(set(&[1, 2]), BTreeSet::new());
    assert_eq!(latest.clone().with_previous(None).previous_voters(), None);
    assert_eq!(latest.clone().with_previous(Some(set(&[]))).previous_voters(), None);
    assert_eq!(latest.clone().with_previous(Some(set(&[1, 2]))).previous_voters(), None);
    assert_eq!(latest.with_previous(Some(set(&[1]))).previous_voters(), Some(&set(&[1])));
}

#[test]
fn one_to_two_voters_the_new_voter_needs_the_old_sole_voter() {
    // 1 (the sole voter) appended {1,2}; 2 holds it and does not know it is committed. Under
    // {1,2} alone 2 would win term 3 by itself while 1, on {1} alone, could win it too.
    let t0 = Instant::now();
    let mut b = device(2, changing(&[1, 2], &[1]), 1, t0);
    let at = b.next_deadline().unwrap();
    assert_eq!(b.tick(at), ask_all(&[1], pre_request(3, 2, (0, 0))), "no election alone");
    assert_eq!(
        b.on_vote_response(vote(3, 1, true, true), at),
        vec![
            persist(3, Some(2), None),
            Action::BecomeCandidate { term: 3 },
            Action::SendRequestVote { to: id(1), request: request(3, 2, (0, 0), false) }
        ],
        "with the old sole voter's pre-vote"
    );
}

#[test]
fn one_to_two_voters_the_new_voter_wins_alone_once_the_change_is_known_committed() {
    let t0 = Instant::now();
    let mut b = device(2, changing(&[1, 2], &[1]), 1, t0);
    assert_eq!(b.set_membership(Membership::new(set(&[1, 2]), BTreeSet::new()), t0), vec![]);
    let at = b.next_deadline().unwrap();
    assert_eq!(
        b.tick(at),
        vec![
            persist(3, Some(2), Some(2)),
            Action::BecomeLeader { term: 3 },
            Action::SendHeartbeats { term: 3 }
        ]
    );
}

#[test]
fn one_to_two_voters_the_old_sole_voter_wins_only_its_own_terms() {
    // 1 holds {1,2} and still {1}: alone, but only in the even terms it owns in {1,2}.
    let t0 = Instant::now();
    let mut a = device(1, changing(&[1, 2], &[1]), 2, t0);
    let at = a.next_deadline().unwrap();
    assert_eq!(
        a.tick(at),
        vec![
            persist(4, Some(1), Some(1)),
            Action::BecomeLeader { term: 4 },
            Action::SendHeartbeats { term: 4 }
        ]
    );
}

#[test]
fn two_to_one_voter_the_remaining_voter_keeps_its_parity_until_the_removal_commits() {
    // {1,2} became {1}; 2 may still lead odd terms on {1,2}, so 1 skips them.
    let t0 = Instant::now();
    let mut a = device(1, changing(&[1], &[1, 2]), 4, t0);
    assert_eq!(a.next_deadline(), Some(t0), "the sole voter of its latest set");
    assert_eq!(
        a.tick(t0),
        vec![
            persist(6, Some(1), Some(1)),
            Action::BecomeLeader { term: 6 },
            Action::SendHeartbeats { term: 6 }
        ]
    );
}

#[test]
fn two_to_one_voter_the_removed_voter_campaigns_only_with_the_other_ones_vote() {
    // 2 holds {1} after {1,2}, not known committed: it still counts in {1,2} (its odd terms)
    // and may hold the only log that can be elected, but {1} needs 1's vote.
    let t0 = Instant::now();
    let mut b = device(2, changing(&[1], &[1, 2]), 4, t0);
    let at = b.next_deadline().unwrap();
    assert_eq!(b.tick(at), ask_all(&[1], pre_request(5, 2, (0, 0))));
}

#[test]
fn two_to_one_voter_the_removed_voter_stops_once_it_knows_the_removal_committed() {
    let t0 = Instant::now();
    let mut b = device(2, Membership::new(set(&[1]), BTreeSet::new()), 4, t0);
    assert_eq!(b.next_deadline(), None);
    assert_eq!(b.tick(t0 + 10 * ET), vec![]);
}

#[test]
fn two_to_three_voters_the_joiner_needs_both_old_voters() {
    // 1 appended {1,2,3}; 3 holds it, 2 may not yet: 2 could win an odd term alone on {1,2},
    // so 3 needs 2's vote (and 1's) whatever the majority of {1,2,3} says.
    let t0 = Instant::now();
    let mut c = device(3, changing(&[1, 2, 3], &[1, 2]), 1, t0);
    let at = c.next_deadline().unwrap();
    assert_eq!(c.tick(at), ask_all(&[1, 2], pre_request(2, 3, (0, 0))));
    assert_eq!(
        c.on_vote_response(vote(2, 1, true, true), at),
        vec![],
        "a majority of {{1,2,3}} but not both of {{1,2}}"
    );
    assert_eq!(
        c.on_vote_response(vote(2, 2, true, true), at),
        vec![
            persist(2, Some(3), None),
            Action::BecomeCandidate { term: 2 },
            Action::SendRequestVote { to: id(1), request: request(2, 3, (0, 0), false) },
            Action::SendRequestVote { to: id(2), request: request(2, 3, (0, 0), false) },
        ]
    );
}

#[test]
fn two_to_three_voters_an_old_voter_campaigns_only_in_its_own_terms() {
    // 1 holds {1,2,3} after {1,2}: it skips the odd terms 2 owns in {1,2}.
    let t0 = Instant::now();
    let mut a = device(1, changing(&[1, 2, 3], &[1, 2]), 2, t0);
    let at = a.next_deadline().unwrap();
    assert_eq!(a.tick(at), ask_all(&[2, 3], pre_request(4, 1, (0, 0))));
}

#[test]
fn three_to_two_voters_the_remaining_pair_still_needs_a_majority_of_three() {
    // {1,2,3} became {1,2}; 2 and 3 may still elect on {1,2,3}, so 1 needs one of them, and
    // the removed 3 is asked too.
    let t0 = Instant::now();
    let mut a = device(1, changing(&[1, 2], &[1, 2, 3]), 1, t0);
    let at = a.next_deadline().unwrap();
    assert_eq!(a.tick(at), ask_all(&[2, 3], pre_request(2, 1, (0, 0))), "not alone");
    assert_eq!(
        a.on_vote_response(vote(2, 3, true, true), at),
        vec![
            persist(2, Some(1), None),
            Action::BecomeCandidate { term: 2 },
            Action::SendRequestVote { to: id(2), request: request(2, 1, (0, 0), false) },
            Action::SendRequestVote { to: id(3), request: request(2, 1, (0, 0), false) },
        ],
        "a previous voter's pre-vote counts for the previous set"
    );
}

#[test]
fn three_to_four_voters_needs_a_majority_of_both() {
    let t0 = Instant::now();
    let m = changing(&[1, 2, 3, 4], &[1, 2, 3]);
    assert_eq!(
        [&[4, 1][..], &[4, 1, 2], &[4, 1, 3], &[1, 2, 3]].map(|v| m.wins(id(4), 6, &set(v))),
        [false, true, true, true]
    );
    let (mut e, t1) = {
        let mut e = device(4, m, 5, t0);
        let at = e.next_deadline().unwrap();
        e.tick(at);
        e.on_vote_response(vote(6, 1, true, true), at);
        e.on_vote_response(vote(6, 2, true, true), at);
        (e, at)
    };
    assert_eq!(e.role(), SyncRole::Candidate);
    assert_eq!(e.on_vote_response(vote(6, 1, true, false), t1), vec![]);
    assert_eq!(
        e.on_vote_response(vote(6, 3, true, false), t1),
        vec![
            persist(6, Some(4), Some(4)),
            Action::BecomeLeader { term: 6 },
            Action::SendHeartbeats { term: 6 }
        ]
    );
}

#[test]
fn four_to_five_voters_a_majority_of_five_is_not_enough_without_one_of_four() {
    // {5,3,4} is a majority of five but only two of four. The rule of both sets holds whatever
    // their sizes (here it is stricter than needed: three of five and three of four always
    // share a device).
    let t0 = Instant::now();
    let (mut e, t1) = {
        let mut e = device(5, changing(&[1, 2, 3, 4, 5], &[1, 2, 3, 4]), 5, t0);
        let at = e.next_deadline().unwrap();
        e.tick(at);
        for voter in [3, 4, 1] {
            e.on_vote_response(vote(6, voter, true, true), at);
        }
        (e, at)
    };
    assert_eq!(e.role(), SyncRole::Candidate);
    e.on_vote_response(vote(6, 3, true, false), t1);
    assert_eq!(e.on_vote_response(vote(6, 4, true, false), t1), vec![]);
    assert_eq!(e.role(), SyncRole::Candidate);
    assert_eq!(
        e.on_vote_response(vote(6, 2, true, false), t1),
        vec![
            persist(6, Some(5), Some(5)),
            Action::BecomeLeader { term: 6 },
            Action::SendHeartbeats { term: 6 }
        ]
    );
}

#[test]
fn four_to_three_voters_a_removal_not_known_committed_needs_three_of_four() {
    // The price of the rule: 2 and 3 are a majority of {1,2,3}, but while 2 does not know
    // that the removal of 4 committed, it also needs three of {1,2,3,4}.
    let t0 = Instant::now();
    let mut e = device(2, changing(&[1, 2, 3], &[1, 2, 3, 4]), 5, t0);
    let at = e.next_deadline().unwrap();
    assert_eq!(e.tick(at), ask_all(&[1, 3, 4], pre_request(6, 2, (0, 0))));
    assert_eq!(e.on_vote_response(vote(6, 3, true, true), at), vec![]);
    assert_eq!(e.pre_vote_term(), Some(6));
    assert_eq!(
        e.on_vote_response(vote(6, 4, true, true), at)[1],
        Action::BecomeCandidate { term: 6 }
    );
}

#[test]
fn conflicting_two_voter_parities_stop_campaigning() {
    // Not a single-voter change, so it never comes from a log: 2 owns odd terms in {1,2} and
    // even ones in {2,3}; no term is its own in both.
    let t0 = Instant::now();
    let m = Membership::new(set(&[1, 2]), BTreeSet::new()).with_previous(Some(set(&[2, 3])));
    let mut e = device(2, m, 4, t0);
    let at = e.next_deadline().unwrap();
    assert_eq!(e.tick(at), vec![]);
    assert_eq!((e.term(), e.role(), e.pre_vote_term()), (4, SyncRole::Follower, None));
    assert!(e.next_deadline().is_some_and(|next| next > at), "still a voter, a new deadline");
}

#[test]
fn agreeing_two_voter_parities_pick_the_next_term_owned_in_both() {
    // 2 is the lower of {2,3} and of {2,5}: even terms in both.
    let t0 = Instant::now();
    let m = Membership::new(set(&[2, 3]), BTreeSet::new()).with_previous(Some(set(&[2, 5])));
    let mut e = device(2, m, 2, t0);
    let at = e.next_deadline().unwrap();
    assert_eq!(
        e.tick(at),
        vec![
            persist(4, Some(2), Some(2)),
            Action::BecomeLeader { term: 4 },
            Action::SendHeartbeats { term: 4 }
        ]
    );
}

#[test]
fn a_leader_this_device_does_not_know_is_followed() {
    // 1 holds {1,2,3}; 4 joined and leads while 1 was down: 1 must follow it to learn of it.
    let t0 = Instant::now();
    let mut e = machine(1, 3, PersistedElection { term: 4, voted_for: None, leader: None }, t0);
    assert_eq!(
        e.on_leader_message(id(4), 5, t0),
        (
            LeaderVerdict::Accepted,
            vec![
                persist(5, None, Some(4)),
                Action::BecomeFollower { term: 5, leader: Some(id(4)) }
            ]
        )
    );
}

#[test]
fn a_voter_of_the_previous_set_only_still_votes() {
    // 3 holds {1,2} after {1,2,3}, not known committed: 1 may still need it for {1,2,3}.
    let t0 = Instant::now();
    let mut removed = device(3, changing(&[1, 2], &[1, 2, 3]), 4, t0);
    assert_eq!(
        removed.on_vote_request(request(6, 1, (9, 9), false), t0 + 10 * ET),
        vec![
            persist(6, Some(1), None),
            Action::BecomeFollower { term: 6, leader: None },
            response(1, 6, 3, true)
        ]
    );
}

#[test]
fn a_device_that_knows_its_removal_committed_no_longer_votes() {
    let t0 = Instant::now();
    let mut removed = device(3, Membership::new(set(&[1, 2]), BTreeSet::new()), 4, t0);
    assert_eq!(
        removed.on_vote_request(request(6, 1, (9, 9), false), t0 + 10 * ET),
        vec![response(1, 4, 3, false)]
    );
}
