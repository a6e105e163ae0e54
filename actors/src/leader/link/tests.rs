//! Unit tests of each rule of the link: one call, the exact list of commands it returns; and a
//! seeded run of random inputs checking what must hold whatever comes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lsync_protocol::{ErrorCode, SyncLogEntry, SyncMessage, SyncRole};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use uuid::Uuid;

use super::*;
use crate::testkit::entry;

const TERM: u64 = 3;
const WINDOW: Duration = Duration::from_millis(100);
const COMMIT: u64 = 7;
const LAST: u64 = 100;

fn lib() -> Uuid {
    Uuid::from_u128(10)
}

fn follower() -> Uuid {
    Uuid::from_u128(2)
}

fn leader() -> Uuid {
    Uuid::from_u128(1)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A link to `follower()` in term 3 (at most 100 entries and 8 MiB per response, a 100 ms
/// window), the leader's commit sequence 7 and last sequence 100.
fn link() -> FollowerLink {
    let mut l = FollowerLink::new(LinkConfig {
        library_id: lib(),
        device: follower(),
        peer: PeerId::random(),
        term: TERM,
        leader_device: Some(leader()),
        max_entries_per_response: 100,
        max_response_bytes: 8 << 20,
        notify_window: WINDOW,
    });
    l.set_leader_view(LeaderView { commit_sequence: COMMIT, last_sequence: Some(LAST) });
    l
}

/// The entries `from..=to` (of `data` bytes each).
fn entries(from: u64, to: u64, data: usize) -> Vec<SyncLogEntry> {
    (from..=to).map(|i| entry(i, data)).collect()
}

/// A commit of `from..=to`, carrying its entries (`data` bytes each) or not.
fn commit(from: u64, to: u64, data: Option<usize>) -> NewCommit {
    NewCommit {
        range: Announce { from_sequence: from, to_sequence: to, term: TERM },
        prev_term: u64::from(from > 1),
        prev_hash: None,
        entries: data.map(|d| Arc::from(entries(from, to, d))),
    }
}

/// The announcement of `from..=to` carrying `carried` (empty: none).
fn notify(from: u64, to: u64, carried: Vec<SyncLogEntry>) -> Command {
    let prev_term = if carried.is_empty() { 0 } else { u64::from(from > 1) };
    Command::Notify {
        from,
        to,
        prev_term,
        prev_hash: None,
        entries: carried,
        commit_sequence: COMMIT,
    }
}

fn ack(up_to: u64, term: u64, last_term: u64) -> SyncMessage {
    SyncMessage::Acknowledge {
        library_id: lib(),
        up_to_sequence: up_to,
        term,
        last_term,
        last_hash: None,
    }
}

fn follower_heartbeat(sequence: u64, term: u64, features: u32) -> SyncMessage {
    SyncMessage::Heartbeat {
        library_id: lib(),
        term,
        current_sequence: sequence,
        last_term: term,
        role: SyncRole::Follower,
        commit_sequence: 0,
        features,
        last_hash: None,
    }
}

fn fetch(since: u64, term: u64) -> SyncMessage {
    SyncMessage::FetchEntries {
        library_id: lib(),
        term,
        since_sequence: since,
        since_term: 1,
        limit: 100,
        since_hash: None,
    }
}

fn progress(sequence: u64, term: u64, last_term: u64, features: Option<u32>) -> Command {
    Command::Progress(FollowerProgress {
        device: follower(),
        ack: AckPosition { term, sequence, last_term },
        hash: None,
        features,
    })
}

fn contact(term: u64) -> Command {
    Command::Election(ElectionInput::FollowerContact { from: follower(), term })
}

fn serve(to: RequestId, request: SyncMessage) -> Command {
    Command::Serve { to, request }
}

// ---- notifications ------------------------------------------------------------------------

#[test]
fn the_first_commit_is_notified_at_once() {
    let t0 = Instant::now();
    let mut l = link();
    assert_eq!(l.on_commit(commit(1, 1, Some(10)), t0), vec![notify(1, 1, entries(1, 1, 10))]);
    assert_eq!(l.next_deadline(), None, "nothing waits");
}

#[test]
fn a_burst_while_one_is_outstanding_goes_as_one_more_when_the_follower_answers() {
    let t0 = Instant::now();
    let mut l = link();
    l.on_commit(commit(1, 1, None), t0);
    for i in 2..=40 {
        assert_eq!(l.on_commit(commit(i, i, None), t0 + ms(i)), vec![], "commit {i} is held");
    }
    assert_eq!(
        l.on_notify_answer(Some(ack(1, TERM, TERM)), t0 + ms(30)),
        vec![contact(TERM), progress(1, TERM, TERM, None), notify(2, 40, vec![])],
        "the answer is a position, and the burst goes at once, as one notification"
    );
}

#[test]
fn a_commit_not_answered_goes_one_window_after_it_at_the_latest() {
    let t0 = Instant::now();
    let mut l = link();
    l.on_commit(commit(1, 1, None), t0);
    assert_eq!(l.on_commit(commit(2, 2, None), t0 + ms(10)), vec![]);
    assert_eq!(l.next_deadline(), Some(t0 + ms(10) + WINDOW));
    assert_eq!(l.tick(t0 + ms(109)), vec![], "not a whole window yet");
    assert_eq!(l.tick(t0 + ms(110)), vec![notify(2, 2, vec![])], "sent although unanswered");
}

#[test]
fn with_two_outstanding_no_deadline_is_set_and_the_next_answer_sends_the_overdue_range() {
    // Found while moving the link actor into this machine: the link actor re-armed a zero-delay
    // timer about once a millisecond while two notifications were outstanding and a range's
    // window was over, until the follower answered.
    let t0 = Instant::now();
    let mut l = link();
    l.on_commit(commit(1, 1, None), t0);
    l.on_commit(commit(2, 2, None), t0 + ms(10));
    assert_eq!(l.tick(t0 + ms(110)), vec![notify(2, 2, vec![])]);
    assert_eq!(l.on_commit(commit(3, 3, None), t0 + ms(120)), vec![]);
    assert_eq!(l.outstanding(), 2);
    assert_eq!(l.next_deadline(), None, "a tick could send nothing");
    assert_eq!(l.on_notify_answer(None, t0 + ms(400)), vec![notify(3, 3, vec![])]);
}

#[test]
fn an_undelivered_notification_frees_the_window_without_a_position() {
    let t0 = Instant::now();
    let mut l = link();
    l.on_commit(commit(1, 1, None), t0);
    l.on_commit(commit(2, 3, None), t0 + ms(1));
    assert_eq!(l.on_notify_answer(None, t0 + ms(5)), vec![notify(2, 3, vec![])]);
    assert_eq!(l.acked(), 0);
}

// ---- inline entries -----------------------------------------------------------------------

#[test]
fn merged_commits_carry_their_entries_when_they_are_exactly_the_range() {
    let t0 = Instant::now();
    let mut l = link();
    l.on_commit(commit(1, 1, Some(10)), t0);
    l.on_commit(commit(2, 3, Some(10)), t0);
    l.on_commit(commit(4, 4, Some(10)), t0);
    assert_eq!(l.on_notify_answer(None, t0), vec![notify(2, 4, entries(2, 4, 10))]);
}

#[test]
fn a_commit_without_its_entries_makes_the_notification_carry_none() {
    let t0 = Instant::now();
    let mut l = link();
    l.on_commit(commit(1, 1, Some(10)), t0);
    l.on_commit(commit(2, 2, Some(10)), t0);
    l.on_commit(commit(3, 3, None), t0);
    assert_eq!(l.on_notify_answer(None, t0), vec![notify(2, 3, vec![])]);
}

#[test]
fn commits_that_do_not_follow_each_other_carry_no_entries() {
    let t0 = Instant::now();
    let mut l = link();
    l.on_commit(commit(1, 1, Some(10)), t0);
    l.on_commit(commit(2, 2, Some(10)), t0);
    l.on_commit(commit(4, 4, Some(10)), t0);
    assert_eq!(l.on_notify_answer(None, t0), vec![notify(2, 4, vec![])]);
}

#[test]
fn more_entries_than_a_response_holds_are_not_carried() {
    let t0 = Instant::now();
    let mut l = link();
    l.on_commit(commit(1, 1, Some(10)), t0);
    l.on_commit(commit(2, 60, Some(10)), t0);
    l.on_commit(commit(61, 102, Some(10)), t0);
    assert_eq!(l.on_notify_answer(None, t0), vec![notify(2, 102, vec![])], "101 entries");
}

#[test]
fn more_bytes_than_a_response_holds_are_not_carried() {
    let t0 = Instant::now();
    let mut l = link();
    l.on_commit(commit(1, 1, Some(10)), t0);
    l.on_commit(commit(2, 2, Some(5 << 20)), t0);
    l.on_commit(commit(3, 3, Some(5 << 20)), t0);
    assert_eq!(l.on_notify_answer(None, t0), vec![notify(2, 3, vec![])], "10 MiB");
}

// ---- the term rule ------------------------------------------------------------------------

#[test]
fn a_request_of_an_older_term_is_refused_with_this_term_and_nothing_is_recorded() {
    let mut l = link();
    for (id, request) in
        [fetch(0, 2), follower_heartbeat(5, 0, 2), ack(5, 1, 1)].into_iter().enumerate()
    {
        let id = id as RequestId;
        let their = match &request {
            SyncMessage::FetchEntries { term, .. }
            | SyncMessage::Heartbeat { term, .. }
            | SyncMessage::Acknowledge { term, .. } => *term,
            _ => unreachable!(),
        };
        let refusal = stale_term(lib(), request.kind(), their, TERM, Some(leader()));
        assert!(
            matches!(refusal, SyncMessage::Error { code: ErrorCode::StaleTerm, term: TERM, .. }),
            "{refusal:?}"
        );
        assert_eq!(l.on_request(id, request), vec![Command::Reply { to: id, message: refusal }]);
    }
    assert_eq!(l.acked(), 0);
}

#[test]
fn a_request_of_a_newer_term_tells_the_election_and_is_answered_not_leader() {
    let mut l = link();
    assert_eq!(
        l.on_request(4, fetch(0, 5)),
        vec![
            Command::Election(ElectionInput::TermSeen { term: 5 }),
            Command::Reply { to: 4, message: not_leader_of(lib(), 5, TERM) },
        ]
    );
    assert!(matches!(
        not_leader_of(lib(), 5, TERM),
        SyncMessage::Error { code: ErrorCode::NotLeader, .. }
    ));
}

#[test]
fn an_acknowledgement_without_a_term_is_not_fenced_and_is_recorded() {
    // A version-1 follower: its position is kept for the lag (the core never counts it).
    let mut l = link();
    assert_eq!(
        l.on_request(1, ack(5, 0, 0)),
        vec![progress(5, 0, 0, None), serve(1, ack(5, 0, 0))]
    );
    assert_eq!(l.acked(), 5);
}

// ---- positions ----------------------------------------------------------------------------

#[test]
fn an_acknowledgement_is_recorded_then_served() {
    let mut l = link();
    assert_eq!(
        l.on_request(1, ack(7, TERM, 1)),
        vec![progress(7, TERM, 1, None), serve(1, ack(7, TERM, 1))]
    );
    assert_eq!(l.status(LAST).acked_sequence, 7);
    assert_eq!(l.status(LAST).lag, LAST - 7);
}

#[test]
fn an_acknowledgement_beyond_the_last_sequence_is_not_recorded() {
    // Storage then answers it BadRequest (see the link actor's tests): the link only serves it.
    let mut l = link();
    assert_eq!(
        l.on_request(1, ack(LAST + 1, TERM, TERM)),
        vec![serve(1, ack(LAST + 1, TERM, TERM))]
    );
    assert_eq!(l.acked(), 0);
}

#[test]
fn without_a_known_last_sequence_any_position_is_recorded() {
    let mut l = link();
    l.set_leader_view(LeaderView { commit_sequence: COMMIT, last_sequence: None });
    assert_eq!(
        l.on_request(1, ack(LAST + 1, TERM, TERM)),
        vec![progress(LAST + 1, TERM, TERM, None), serve(1, ack(LAST + 1, TERM, TERM))]
    );
}

#[test]
fn a_lower_position_is_believed() {
    let mut l = link();
    l.on_request(1, ack(50, TERM, TERM));
    assert_eq!(
        l.on_request(2, ack(20, TERM, TERM)),
        vec![progress(20, TERM, TERM, None), serve(2, ack(20, TERM, TERM))],
        "the follower rebuilt its log"
    );
    assert_eq!(l.acked(), 20);
}

#[test]
fn a_follower_heartbeat_is_its_position_and_its_features() {
    let mut l = link();
    let hb = follower_heartbeat(9, TERM, 2);
    assert_eq!(l.on_request(1, hb.clone()), vec![progress(9, TERM, TERM, Some(2)), serve(1, hb)]);
}

#[test]
fn an_answer_of_an_older_term_is_contact_but_no_position() {
    let t0 = Instant::now();
    let mut l = link();
    l.on_commit(commit(1, 1, None), t0);
    assert_eq!(l.on_notify_answer(Some(ack(1, 2, 2)), t0), vec![contact(2)]);
    assert_eq!(l.acked(), 0);
}

#[test]
fn an_answer_without_a_term_is_contact_in_this_term() {
    let t0 = Instant::now();
    let mut l = link();
    l.on_commit(commit(1, 1, None), t0);
    assert_eq!(
        l.on_notify_answer(Some(ack(1, 0, 0)), t0),
        vec![contact(TERM), progress(1, 0, 0, None)]
    );
}

#[test]
fn an_unexpected_answer_to_a_notification_is_no_position() {
    let t0 = Instant::now();
    let mut l = link();
    l.on_commit(commit(1, 1, None), t0);
    l.on_commit(commit(2, 2, None), t0);
    let other = SyncMessage::error(lib(), ErrorCode::Internal, "busy");
    assert_eq!(l.on_notify_answer(Some(other), t0), vec![notify(2, 2, vec![])]);
}

// ---- heartbeats ---------------------------------------------------------------------------

#[test]
fn heartbeats_carry_the_commit_sequence() {
    let mut l = link();
    l.set_leader_view(LeaderView { commit_sequence: 42, last_sequence: Some(LAST) });
    assert_eq!(l.on_heartbeat_tick(), vec![Command::Heartbeat { commit_sequence: 42 }]);
}

#[test]
fn a_heartbeat_answer_is_contact_and_a_position_with_features() {
    let mut l = link();
    assert_eq!(
        l.on_heartbeat_answer(follower_heartbeat(30, TERM, 2)),
        vec![contact(TERM), progress(30, TERM, TERM, Some(2))]
    );
}

#[test]
fn a_heartbeat_answer_of_a_newer_term_is_contact_only() {
    // The election adopts the term (and steps down); the position is not this leader's.
    let mut l = link();
    assert_eq!(l.on_heartbeat_answer(follower_heartbeat(30, 9, 2)), vec![contact(9)]);
}

#[test]
fn a_stale_term_refusal_naming_a_newer_term_deposes_the_leader() {
    let mut l = link();
    let refusal = |term| SyncMessage::Error {
        library_id: lib(),
        code: ErrorCode::StaleTerm,
        message: "stale".into(),
        leader_hint: None,
        term,
        leader_peer: None,
    };
    let seen = vec![Command::Election(ElectionInput::TermSeen { term: 9 })];
    assert_eq!(l.on_heartbeat_answer(refusal(9)), seen);
    assert_eq!(l.on_notify_answer(Some(refusal(9)), Instant::now()), seen);
    // one naming this leader's own term (or an older one) says nothing new
    assert_eq!(l.on_heartbeat_answer(refusal(TERM)), vec![]);
}

// ---- connection ---------------------------------------------------------------------------

#[test]
fn a_connection_change_is_one_event() {
    let mut l = link();
    let up = SyncEvent::FollowerConnected { library_id: lib(), device_id: follower() };
    let down = SyncEvent::FollowerLost { library_id: lib(), device_id: follower() };
    assert_eq!(l.on_connection(true), vec![Command::Event(up)]);
    assert_eq!(l.on_connection(true), vec![], "no change");
    assert_eq!(l.on_connection(false), vec![Command::Event(down)]);
    assert!(!l.status(0).connected);
}

// ---- leaving ------------------------------------------------------------------------------

#[test]
fn a_leaving_member_hears_of_nothing_after_its_removal() {
    let t0 = Instant::now();
    let mut l = link();
    l.on_leaving(50, t0);
    assert_eq!(l.on_commit(commit(51, 60, Some(10)), t0), vec![], "wholly after");
    assert_eq!(
        l.on_commit(commit(45, 60, Some(10)), t0),
        vec![notify(45, 50, vec![])],
        "cut at the removal, without entries"
    );
}

#[test]
fn a_leaving_members_pending_notification_carries_no_entries_past_its_removal() {
    // Found while moving the link actor into this machine: entries merged before the removal was
    // known went inside NewEntries to the removed member.
    let t0 = Instant::now();
    let mut l = link();
    l.on_commit(commit(1, 1, Some(10)), t0);
    l.on_commit(commit(2, 5, Some(10)), t0);
    l.on_leaving(3, t0);
    assert_eq!(l.on_notify_answer(None, t0), vec![notify(2, 5, vec![])]);
}

#[test]
fn a_leaving_member_is_served_nothing_after_its_removal() {
    let t0 = Instant::now();
    let mut l = link();
    l.on_leaving(150, t0);
    let response = SyncMessage::EntriesResponse {
        library_id: lib(),
        term: TERM,
        entries: entries(101, 200, 0),
        has_more: true,
        leader_last_sequence: 250,
        commit_sequence: COMMIT,
    };
    let capped = SyncMessage::EntriesResponse {
        library_id: lib(),
        term: TERM,
        entries: entries(101, 150, 0),
        has_more: false,
        leader_last_sequence: 150,
        commit_sequence: COMMIT,
    };
    assert_eq!(l.on_served(3, response), vec![Command::Reply { to: 3, message: capped }]);
}

#[test]
fn a_leaving_member_gets_no_heartbeat_answer_past_its_removal() {
    let t0 = Instant::now();
    let mut l = link();
    l.on_leaving(150, t0);
    let leader_hb = SyncMessage::Heartbeat {
        library_id: lib(),
        term: TERM,
        current_sequence: 250,
        last_term: TERM,
        role: SyncRole::Leader,
        commit_sequence: COMMIT,
        features: 2,
        last_hash: None,
    };
    let removed = SyncMessage::error(
        lib(),
        ErrorCode::Unauthorized,
        format!("this device was removed from library {}", lib()),
    );
    assert_eq!(l.on_served(1, leader_hb), vec![Command::Reply { to: 1, message: removed }]);
}

#[test]
fn a_leaving_member_leaves_when_it_holds_its_removal() {
    let t0 = Instant::now();
    let mut l = link();
    l.on_leaving(50, t0);
    assert_eq!(
        l.on_request(1, ack(50, TERM, TERM)),
        vec![progress(50, TERM, TERM, None), Command::Left, serve(1, ack(50, TERM, TERM))]
    );
    assert!(l.has_left());
}

#[test]
fn a_member_that_holds_its_removal_already_leaves_at_once() {
    let t0 = Instant::now();
    let mut l = link();
    l.on_request(1, ack(60, TERM, TERM));
    assert_eq!(l.on_leaving(50, t0), vec![Command::Left]);
}

#[test]
fn a_leaving_member_leaves_after_the_grace() {
    let t0 = Instant::now();
    let mut l = link();
    assert_eq!(l.on_leaving(50, t0), vec![]);
    assert_eq!(l.next_deadline(), Some(t0 + LEAVING_GRACE));
    assert_eq!(l.tick(t0 + LEAVING_GRACE - ms(1)), vec![]);
    assert_eq!(l.tick(t0 + LEAVING_GRACE), vec![Command::Left]);
    assert_eq!(l.tick(t0 + LEAVING_GRACE + ms(1)), vec![], "once");
}

#[test]
fn only_the_first_removal_counts() {
    let t0 = Instant::now();
    let mut l = link();
    l.on_leaving(50, t0);
    assert_eq!(l.on_leaving(80, t0 + ms(5)), vec![]);
    assert_eq!(l.leaving_cap(), Some(50));
    assert_eq!(l.next_deadline(), Some(t0 + LEAVING_GRACE));
}

#[test]
fn after_leaving_the_link_only_answers_requests() {
    let t0 = Instant::now();
    let mut l = link();
    l.on_leaving(0, t0);
    assert!(l.has_left());
    assert_eq!(l.on_commit(commit(1, 1, None), t0), vec![]);
    assert_eq!(l.on_heartbeat_tick(), vec![]);
    assert_eq!(l.on_heartbeat_answer(follower_heartbeat(1, TERM, 2)), vec![]);
    assert_eq!(l.on_notify_answer(Some(ack(0, TERM, TERM)), t0), vec![]);
    assert_eq!(l.next_deadline(), None);
    assert_eq!(l.on_request(1, fetch(0, TERM)), vec![serve(1, fetch(0, TERM))]);
}

// ---- whatever comes -----------------------------------------------------------------------

/// A random request, terms and sequences around the leader's and at the extremes.
fn random_request(rng: &mut StdRng) -> SyncMessage {
    let term = [0, 1, TERM - 1, TERM, TERM, TERM + 1, u64::MAX][rng.gen_range(0..7)];
    let seq = [0, 1, 50, LAST, LAST + 1, u64::MAX][rng.gen_range(0..6)];
    match rng.gen_range(0..5) {
        0 => fetch(seq, term),
        1 => ack(seq, term, rng.gen_range(0..=TERM + 1)),
        2 => follower_heartbeat(seq, term, rng.gen_range(0..4)),
        3 => SyncMessage::NewEntries {
            library_id: lib(),
            term,
            from_sequence: seq,
            to_sequence: seq,
            entry_count: 1,
            prev_term: 0,
            entries: vec![],
            commit_sequence: 0,
            prev_hash: None,
        },
        _ => SyncMessage::error(lib(), ErrorCode::Internal, "a response, not a request"),
    }
}

#[test]
fn whatever_comes_every_request_is_answered_once_and_a_tick_leaves_no_deadline_in_the_past() {
    for seed in 0..40u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut l = link();
        let mut now = Instant::now();
        let mut next_commit = 1u64;
        let mut served: Vec<RequestId> = Vec::new();
        let mut lefts = 0;
        for step in 0..400u64 {
            now += ms(rng.gen_range(0..80));
            let mut ticked = false;
            let out = match rng.gen_range(0..10) {
                0..=2 => {
                    let len = rng.gen_range(1..30);
                    let data = (rng.gen_range(0..4) > 0).then_some(10);
                    let c = commit(next_commit, next_commit + len - 1, data);
                    next_commit += len;
                    l.on_commit(c, now)
                }
                3 => {
                    let reply = match rng.gen_range(0..3) {
                        0 => None,
                        1 => Some(ack(rng.gen_range(0..next_commit), TERM, TERM)),
                        _ => Some(random_request(&mut rng)),
                    };
                    l.on_notify_answer(reply, now)
                }
                4 => {
                    ticked = true;
                    l.tick(now)
                }
                5 => {
                    let id = step;
                    let out = l.on_request(id, random_request(&mut rng));
                    let answers: Vec<_> = out
                        .iter()
                        .filter(|c| {
                            matches!(c, Command::Reply { to, .. } | Command::Serve { to, .. } if *to == id)
                        })
                        .collect();
                    assert_eq!(answers.len(), 1, "seed {seed}: request {id}: {out:?}");
                    if matches!(answers[0], Command::Serve { .. }) {
                        served.push(id);
                    }
                    out
                }
                6 if !served.is_empty() => {
                    let id = served.swap_remove(rng.gen_range(0..served.len()));
                    let out = l.on_served(id, random_request(&mut rng));
                    assert!(
                        matches!(out.as_slice(), [Command::Reply { to, .. }] if *to == id),
                        "seed {seed}: {out:?}"
                    );
                    out
                }
                7 => l.on_heartbeat_answer(random_request(&mut rng)),
                8 => l.on_leaving(rng.gen_range(0..next_commit + 5), now),
                _ => l.on_connection(rng.gen_bool(0.5)),
            };
            lefts += out.iter().filter(|c| **c == Command::Left).count();
            if ticked {
                assert!(
                    l.next_deadline().is_none_or(|at| at > now),
                    "seed {seed} step {step}: a deadline in the past would fire again at once"
                );
            }
        }
        assert!(lefts <= 1, "seed {seed}: Left {lefts} times");
    }
}

// ---- the hash chain -----------------------------------------------------------------------

#[test]
fn inline_entries_name_the_hash_before_them() {
    let t0 = Instant::now();
    let mut l = link();
    let mut c = commit(1, 1, Some(10));
    c.prev_hash = Some(lsync_protocol::ChainHash::GENESIS);
    let carried = entries(1, 1, 10);
    assert_eq!(
        l.on_commit(c, t0),
        vec![Command::Notify {
            from: 1,
            to: 1,
            prev_term: 0,
            prev_hash: Some(lsync_protocol::ChainHash::GENESIS),
            entries: carried,
            commit_sequence: COMMIT,
        }]
    );
}

#[test]
fn an_acknowledgement_hands_its_hash_to_the_core() {
    let mut l = link();
    let hash = lsync_protocol::ChainHash([7; 32]);
    let mut request = ack(7, TERM, TERM);
    if let SyncMessage::Acknowledge { last_hash, .. } = &mut request {
        *last_hash = Some(hash);
    }
    assert_eq!(
        l.on_request(1, request.clone()),
        vec![
            Command::Progress(FollowerProgress {
                device: follower(),
                ack: AckPosition { term: TERM, sequence: 7, last_term: TERM },
                hash: Some(hash),
                features: None,
            }),
            serve(1, request),
        ]
    );
}
