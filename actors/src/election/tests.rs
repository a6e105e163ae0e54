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

fn machine(me: u128, n: u128, persisted: PersistedElection, now: Instant) -> Election<StdRng> {
    let config = ElectionConfig::new(HB, ET);
    Election::new(id(me), members(n), persisted, config, now, StdRng::seed_from_u64(me as u64))
}

fn request(term: u64, candidate: u128, log: (u64, u64), transfer: bool) -> VoteRequest {
    VoteRequest {
        term,
        candidate: id(candidate),
        last_log_term: log.0,
        last_log_sequence: log.1,
        transfer,
    }
}

fn response(to: u128, term: u64, voter: u128, granted: bool) -> Action {
    Action::SendVoteResponse {
        to: id(to),
        response: VoteResponse { term, voter: id(voter), granted },
    }
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

#[test]
fn follower_times_out_and_campaigns_with_its_log() {
    let t0 = Instant::now();
    let mut e = machine(1, 3, PersistedElection::default(), t0);
    e.set_last_log(LogPosition { term: 3, sequence: 7 });
    let deadline = e.next_deadline().unwrap();
    assert!(deadline >= t0 + ET && deadline < t0 + 2 * ET, "{deadline:?}");
    assert_eq!(e.tick(deadline - Duration::from_nanos(1)), vec![]);
    let req = request(2, 1, (3, 7), false);
    assert_eq!(
        e.tick(deadline),
        vec![
            persist(2, Some(1), None),
            Action::BecomeCandidate { term: 2 },
            Action::SendRequestVote { to: id(2), request: req },
            Action::SendRequestVote { to: id(3), request: req },
        ]
    );
    assert_eq!(e.role(), SyncRole::Candidate);
    let next = e.next_deadline().unwrap();
    assert!(next >= deadline + ET && next < deadline + 2 * ET);
}

#[test]
fn candidate_wins_with_a_majority_then_heartbeats() {
    let t0 = Instant::now();
    let mut e = machine(1, 5, PersistedElection::default(), t0);
    let t1 = e.next_deadline().unwrap();
    e.tick(t1);
    let vote = |voter, granted| VoteResponse { term: 2, voter: id(voter), granted };
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
fn candidate_starts_a_new_election_on_timeout() {
    let t0 = Instant::now();
    let mut e = machine(1, 3, PersistedElection::default(), t0);
    let t1 = e.next_deadline().unwrap();
    e.tick(t1);
    let t2 = e.next_deadline().unwrap();
    let actions = e.tick(t2);
    assert_eq!(actions[..2], [persist(3, Some(1), None), Action::BecomeCandidate { term: 3 }]);
    assert_eq!(actions.len(), 4);
    // A vote of the previous term does not count.
    let old = VoteResponse { term: 2, voter: id(2), granted: true };
    assert_eq!(e.on_vote_response(old, t2), vec![]);
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
    let reply = VoteResponse { term: 5, voter: id(2), granted: false };
    assert_eq!(e.on_vote_response(reply, t0), stepped);
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
    let mut e = machine(1, 3, PersistedElection::default(), t0);
    let t1 = e.next_deadline().unwrap();
    e.tick(t1);
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
    assert_eq!(e.on_leader_message(id(9), 6, t0), (LeaderVerdict::Refused, vec![]), "non-member");
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
        target.on_vote_response(VoteResponse { term: 2, voter: id(3), granted: true }, now),
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
        leader.set_members(members(3).into_iter().filter(|m| *m != id(2)).collect(), now),
        vec![Action::TransferAborted { to: id(2) }]
    );
}

#[test]
fn check_quorum_steps_down_a_leader_cut_off_from_the_majority() {
    let t0 = Instant::now();
    let config = ElectionConfig { check_quorum: true, ..ElectionConfig::new(HB, ET) };
    let mut e = Election::new(
        id(1),
        members(3),
        PersistedElection::founder(id(1)),
        config,
        t0,
        StdRng::seed_from_u64(1),
    );
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
        stepped = e.tick(now);
    }
    assert_eq!(
        stepped,
        vec![persist(1, Some(1), None), Action::BecomeFollower { term: 1, leader: None }]
    );
    assert_eq!(now, t0 + 2 * ET);
}

#[test]
fn set_members_can_complete_an_election() {
    let t0 = Instant::now();
    let mut e = machine(1, 5, PersistedElection::default(), t0);
    let t1 = e.next_deadline().unwrap();
    e.tick(t1);
    e.on_vote_response(VoteResponse { term: 2, voter: id(2), granted: true }, t1);
    assert_eq!(
        e.set_members(members(3), t1),
        vec![
            persist(2, Some(1), Some(1)),
            Action::BecomeLeader { term: 2 },
            Action::SendHeartbeats { term: 2 }
        ]
    );
    // Dropped from the library: step down, never campaign.
    let others: BTreeSet<Uuid> = [id(2), id(3)].into();
    assert_eq!(
        e.set_members(others, t1),
        vec![persist(2, Some(1), None), Action::BecomeFollower { term: 2, leader: None }]
    );
    assert_eq!(e.next_deadline(), None);
    assert_eq!(e.tick(t1 + 10 * ET), vec![]);
    // Left alone in the library: campaign at once.
    let mut f = follower_of(1, 3, 2, 4, t0);
    assert_eq!(f.set_members(members(1), t0), vec![]);
    assert_eq!(f.next_deadline(), Some(t0));
    assert_eq!(f.tick(t0)[1], Action::BecomeLeader { term: 5 });
}

#[test]
fn election_deadlines_are_spread_over_one_timeout() {
    let t0 = Instant::now();
    let config = ElectionConfig::new(HB, ET);
    let deadlines: BTreeSet<Instant> = (0..200)
        .map(|seed| {
            let rng = StdRng::seed_from_u64(seed);
            let persisted = PersistedElection::default();
            Election::new(id(1), members(3), persisted, config, t0, rng).next_deadline().unwrap()
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
        for n in [0, 1, 2, 3] {
            for persisted in [
                PersistedElection::default(),
                PersistedElection::founder(id(1)),
                PersistedElection { term: u64::MAX, voted_for: Some(id(7)), leader: Some(id(8)) },
                PersistedElection { term: u64::MAX - 1, voted_for: None, leader: None },
            ] {
                let mut e = Election::new(
                    id(1),
                    members(n),
                    persisted,
                    config,
                    t0,
                    StdRng::seed_from_u64(3),
                );
                let later = t0 + Duration::from_secs(1);
                for now in [t0, later, t0] {
                    e.tick(now);
                    e.on_vote_request(request(u64::MAX, 2, (u64::MAX, u64::MAX), true), now);
                    e.on_vote_request(request(0, 1, (0, 0), false), now);
                    e.on_vote_response(
                        VoteResponse { term: u64::MAX, voter: id(2), granted: true },
                        now,
                    );
                    e.on_leader_message(id(2), u64::MAX, now);
                    e.on_timeout_now(id(3), u64::MAX, now);
                    e.on_follower_response(id(1), 0, now);
                    let _ = e.transfer_leadership(id(2), now);
                    e.on_target_caught_up(id(2), now);
                    e.set_members(BTreeSet::new(), now);
                    e.set_members(members(n), now);
                    e.tick(now);
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
fn a_candidate_yields_to_a_better_candidate_of_its_term() {
    let t0 = Instant::now();
    let mut e = machine(1, 3, PersistedElection::default(), t0);
    e.set_last_log(LogPosition { term: 3, sequence: 19 });
    let t1 = e.next_deadline().unwrap();
    e.tick(t1);
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
