//! Unit tests of each rule: one call, the exact list of commands it returns.

use std::time::{Duration, Instant};

use lsync_protocol::{ChangeType, ErrorCode, SyncLogEntry, SyncMessage};
use rand::rngs::StdRng;
use rand::SeedableRng;

use super::*;
use crate::transport::NetworkError;

const LIB: Uuid = Uuid::from_u128(0x11);
const LEADER: Uuid = Uuid::from_u128(0x22);
const SEED: u64 = 7;
const HB: Duration = Duration::from_secs(1);
const INITIAL: Duration = Duration::from_millis(100);
const MAX: Duration = Duration::from_millis(1_600);

/// Blocks of 10 entries, 25 entries between acknowledgements, 1 s heartbeats, backoff from
/// 100 ms to 1.6 s.
fn config() -> SyncConfig {
    SyncConfig {
        heartbeat_interval: HB,
        backoff_initial: INITIAL,
        backoff_max: MAX,
        max_entries_per_response: 10,
        max_response_bytes: 10_000,
        ack_every: 25,
        ..SyncConfig::default()
    }
}

fn machine(term: u64) -> Replicator<StdRng> {
    machine_with(term, config())
}

fn machine_with(term: u64, config: SyncConfig) -> Replicator<StdRng> {
    let leader = Leader { device: Some(LEADER), peer: "leader-peer".into() };
    Replicator::new(LIB, leader, term, config, StdRng::seed_from_u64(SEED))
}

/// The delays a fresh backoff of [`config`] draws with the machine's seed.
fn delays(n: usize) -> Vec<Duration> {
    let mut rng = StdRng::seed_from_u64(SEED);
    let mut backoff = Backoff::new(INITIAL, MAX);
    (0..n).map(|_| backoff.next_delay(&mut rng)).collect()
}

fn pos(sequence: u64, term: u64) -> LogPosition {
    LogPosition { sequence, term }
}

fn id(n: u64) -> RequestId {
    RequestId(n)
}

fn entry(sequence: u64, term: u64) -> SyncLogEntry {
    SyncLogEntry {
        sequence,
        term,
        origin_device: Uuid::nil(),
        timestamp_ms: 0,
        model_type: "tag".into(),
        record_id: format!("t{sequence}"),
        change_type: ChangeType::Insert,
        version: 1,
        data: vec![0; 36],
        proposal_id: None,
        hash: None,
        stamp: None,
    }
}

/// Entries `from..=to` of `term`.
fn entries(from: u64, to: u64, term: u64) -> Vec<SyncLogEntry> {
    (from..=to).map(|s| entry(s, term)).collect()
}

/// The leader's answer in term 1 with entries `from..=to` of term 1 (none if `from > to`).
fn response(from: u64, to: u64, has_more: bool, leader_last: u64) -> SyncMessage {
    SyncMessage::EntriesResponse {
        commit_sequence: 0,
        library_id: LIB,
        term: 1,
        entries: if from <= to { entries(from, to, 1) } else { vec![] },
        has_more,
        leader_last_sequence: leader_last,
    }
}

fn fetch(n: u64, since: LogPosition, term: u64) -> Command {
    Command::Fetch { id: id(n), since, since_hash: None, term }
}

/// A fetch that names the chain hash at `since`.
fn fetch_hashed(n: u64, since: LogPosition, hash: ChainHash, term: u64) -> Command {
    Command::Fetch { id: id(n), since, since_hash: Some(hash), term }
}

fn apply(n: u64, from: u64, to: u64) -> Command {
    Command::Apply { id: id(n), entries: entries(from, to, 1) }
}

fn applied(sequence: u64) -> BatchOutcome {
    BatchOutcome::Applied { last: pos(sequence, 1), last_hash: None }
}

fn new_entries(term: u64, from: u64, to: u64, prev_term: u64, commit: u64) -> SyncMessage {
    SyncMessage::NewEntries {
        commit_sequence: commit,
        library_id: LIB,
        term,
        from_sequence: from,
        to_sequence: to,
        entry_count: to - from + 1,
        prev_term,
        entries: entries(from, to, 1),
        prev_hash: None,
    }
}

fn leader_heartbeat(term: u64, current: u64, commit: u64) -> SyncMessage {
    SyncMessage::Heartbeat {
        commit_sequence: commit,
        features: lsync_protocol::FEATURE_VERSION,
        library_id: LIB,
        term,
        current_sequence: current,
        last_term: 1,
        role: SyncRole::Leader,
        last_hash: None,
    }
}

fn error(code: ErrorCode, term: u64, message: &str) -> SyncMessage {
    SyncMessage::Error {
        leader_peer: None,
        term,
        library_id: LIB,
        code,
        message: message.into(),
        leader_hint: None,
    }
}

fn ack(term: u64, position: LogPosition) -> SyncMessage {
    position_ack(LIB, term, position, None)
}

/// A machine in `term` whose log ends at `at`, that fetched once (fetch 1, answered: nothing
/// more), acknowledged (2, answered), settled and recovered: caught up and idle at `t0`. The
/// next id is 3.
fn caught_up(term: u64, at: LogPosition, t0: Instant) -> Replicator<StdRng> {
    let mut m = machine(term);
    assert_eq!(m.start(t0), vec![Command::ReadPosition]);
    assert_eq!(m.on_position(Ok(at), t0), vec![fetch(1, at, term)]);
    let nothing = SyncMessage::EntriesResponse {
        commit_sequence: 0,
        library_id: LIB,
        term,
        entries: vec![],
        has_more: false,
        leader_last_sequence: at.sequence,
    };
    assert_eq!(
        m.on_fetched(id(1), Ok(nothing), t0),
        vec![Command::Acknowledge { id: id(2), position: at, hash: None, term }, Command::Settle]
    );
    assert_eq!(m.on_settled(Ok(None), t0), vec![Command::RecoverOrphans]);
    assert_eq!(m.on_orphans_recovered(Ok(None), t0), vec![]);
    assert_eq!(m.on_acknowledged(id(2), Ok(leader_heartbeat(term, at.sequence, 0))), vec![]);
    assert_eq!(m.status().state, FollowerState::CaughtUp);
    m
}

/// A machine in term 1 at position 0 whose first fetch (1) learned that the leader has
/// `leader_last` entries: it applies batch 2 (entries 1..=10) and fetches 3 from 10 and 4 (a
/// guess) from 20.
fn fetching_ahead(t0: Instant, leader_last: u64) -> Replicator<StdRng> {
    let mut m = machine(1);
    m.start(t0);
    m.on_position(Ok(pos(0, 0)), t0);
    assert_eq!(
        m.on_fetched(id(1), Ok(response(1, 10, true, leader_last)), t0),
        vec![
            apply(2, 1, 10),
            fetch(3, pos(10, 1), 1),
            Command::CountMetric(Counter::FetchesAhead, 1),
            fetch(4, pos(20, 1), 1),
        ]
    );
    m
}

// --- start ---

#[test]
fn start_reads_the_position_then_fetches_from_it() {
    let t0 = Instant::now();
    let mut m = machine(1);
    assert_eq!(m.start(t0), vec![Command::ReadPosition]);
    assert_eq!(m.applied(), None);
    // Nothing is known of the leader's log yet: one fetch, no guess.
    assert_eq!(m.on_position(Ok(pos(5, 1)), t0), vec![fetch(1, pos(5, 1), 1)]);
    assert_eq!(m.status().state, FollowerState::Fetching);
    assert_eq!(m.start(t0), vec![], "starts once");
}

#[test]
fn a_position_that_cannot_be_read_stalls_and_is_retried() {
    let t0 = Instant::now();
    let mut m = machine(1);
    m.start(t0);
    assert_eq!(
        m.on_position(Err("disk on fire".into()), t0),
        vec![Command::Event(SyncEvent::ApplyFailed {
            library_id: LIB,
            error: "cannot read the sync log: disk on fire".into(),
        })]
    );
    assert_eq!(m.status().state, FollowerState::Stalled);
    assert_eq!(m.next_deadline(), Some(t0 + MAX));
    assert_eq!(m.tick(t0 + MAX), vec![Command::ReadPosition]);
}

// --- the leader's requests ---

#[test]
fn a_leader_message_of_an_older_term_is_refused_with_stale_term() {
    let t0 = Instant::now();
    let mut m = caught_up(3, pos(5, 3), t0);
    assert_eq!(
        m.on_request(ReplyTo(1), true, leader_heartbeat(2, 9, 4), t0),
        vec![Command::Reply {
            to: ReplyTo(1),
            message: crate::fencing::stale_term(LIB, "Heartbeat", 2, 3, Some(LEADER)),
        }]
    );
    assert_eq!(m.status().leader_last_sequence, 5, "nothing of it is believed");
}

#[test]
fn a_request_from_another_peer_is_refused_with_not_leader() {
    let t0 = Instant::now();
    let mut m = caught_up(1, pos(5, 1), t0);
    let commands = m.on_request(ReplyTo(1), false, new_entries(1, 6, 6, 1, 6), t0);
    assert_eq!(
        commands,
        vec![Command::Reply {
            to: ReplyTo(1),
            message: SyncMessage::Error {
                leader_peer: Some("leader-peer".into()),
                term: 0,
                library_id: LIB,
                code: ErrorCode::NotLeader,
                message: "this device follows another leader".into(),
                leader_hint: Some(LEADER),
            },
        }]
    );
}

#[test]
fn fetches_and_acknowledgements_are_refused_by_a_follower() {
    let t0 = Instant::now();
    let mut m = caught_up(1, pos(5, 1), t0);
    let fetch = SyncMessage::FetchEntries {
        library_id: LIB,
        term: 1,
        since_sequence: 0,
        since_term: 0,
        limit: 10,
        since_hash: None,
    };
    let commands = m.on_request(ReplyTo(1), true, fetch, t0);
    assert!(
        matches!(
            &commands[..],
            [Command::Reply {
                to: ReplyTo(1),
                message: SyncMessage::Error { code: ErrorCode::NotLeader, .. }
            }]
        ),
        "{commands:?}"
    );
    let commands = m.on_request(ReplyTo(2), true, ack(1, pos(5, 1)), t0);
    assert!(
        matches!(
            &commands[..],
            [Command::Reply {
                to: ReplyTo(2),
                message: SyncMessage::Error { code: ErrorCode::NotLeader, .. }
            }]
        ),
        "{commands:?}"
    );
}

#[test]
fn a_leader_heartbeat_is_answered_with_the_position_and_wakes_only_when_it_differs() {
    let t0 = Instant::now();
    let mut m = caught_up(1, pos(5, 1), t0);
    let position = follower_heartbeat(LIB, 1, pos(5, 1), None);
    assert_eq!(
        m.on_request(ReplyTo(1), true, leader_heartbeat(1, 5, 0), t0),
        vec![Command::Reply { to: ReplyTo(1), message: position.clone() }]
    );
    assert_eq!(
        m.on_request(ReplyTo(2), true, leader_heartbeat(1, 8, 5), t0),
        vec![
            Command::LeaderCommit(5),
            Command::Reply { to: ReplyTo(2), message: position },
            fetch(3, pos(5, 1), 1),
        ]
    );
    assert_eq!(m.status().leader_last_sequence, 8);
}

#[test]
fn pushed_entries_that_continue_the_log_are_applied_without_a_fetch() {
    let t0 = Instant::now();
    let mut m = caught_up(1, pos(5, 1), t0);
    assert_eq!(
        m.on_request(ReplyTo(1), true, new_entries(1, 6, 8, 1, 4), t0),
        vec![Command::LeaderCommit(4), apply(3, 6, 8)]
    );
    // Answered once applied, with the new position; caught up, nothing fetched.
    assert_eq!(
        m.on_applied(id(3), applied(8), t0),
        vec![Command::Reply { to: ReplyTo(1), message: ack(1, pos(8, 1)) }]
    );
    assert_eq!(m.status().state, FollowerState::CaughtUp);
    assert_eq!(m.applied(), Some(pos(8, 1)));
}

#[test]
fn pushed_entries_of_a_newer_term_adopt_it_first() {
    let t0 = Instant::now();
    let mut m = caught_up(1, pos(5, 1), t0);
    assert_eq!(
        m.on_request(ReplyTo(1), true, new_entries(2, 6, 6, 1, 0), t0),
        vec![Command::AdoptTerm(2), apply(3, 6, 6)]
    );
    assert_eq!(
        m.on_applied(id(3), applied(6), t0),
        vec![Command::Reply { to: ReplyTo(1), message: ack(2, pos(6, 1)) }]
    );
}

#[test]
fn pushed_entries_that_do_not_continue_the_log_are_answered_at_once_and_fetched() {
    let t0 = Instant::now();
    let mut m = caught_up(1, pos(5, 1), t0);
    // Another term at sequence 5 than this log's: the leader's check of `since_term` decides.
    assert_eq!(
        m.on_request(ReplyTo(1), true, new_entries(1, 6, 8, 7, 0), t0),
        vec![Command::Reply { to: ReplyTo(1), message: ack(1, pos(5, 1)) }, fetch(3, pos(5, 1), 1)]
    );
}

#[test]
fn pushed_entries_that_do_not_match_their_range_are_not_used() {
    let t0 = Instant::now();
    let mut m = caught_up(1, pos(5, 1), t0);
    let mut request = new_entries(1, 6, 8, 1, 0);
    if let SyncMessage::NewEntries { entries, .. } = &mut request {
        entries.remove(0);
    }
    assert_eq!(
        m.on_request(ReplyTo(1), true, request, t0),
        vec![Command::Reply { to: ReplyTo(1), message: ack(1, pos(5, 1)) }, fetch(3, pos(5, 1), 1)]
    );
}

#[test]
fn pushed_entries_are_not_taken_during_a_round() {
    let t0 = Instant::now();
    let mut m = machine(1);
    m.start(t0);
    m.on_position(Ok(pos(5, 1)), t0);
    // Fetch 1 is in flight: the entries would wait for the round's end.
    assert_eq!(
        m.on_request(ReplyTo(1), true, new_entries(1, 6, 8, 1, 0), t0),
        vec![Command::Reply { to: ReplyTo(1), message: ack(1, pos(5, 1)) }]
    );
}

#[test]
fn a_newer_pushed_request_answers_the_older_one_with_the_position() {
    let t0 = Instant::now();
    let mut m = caught_up(1, pos(5, 1), t0);
    // A heartbeat to the leader is in flight: the pushed entries wait for its answer.
    assert_eq!(
        m.tick(t0 + HB),
        vec![Command::Heartbeat { id: id(3), position: pos(5, 1), hash: None, term: 1 }]
    );
    assert_eq!(m.on_request(ReplyTo(1), true, new_entries(1, 6, 6, 1, 0), t0 + HB), vec![]);
    assert_eq!(
        m.on_request(ReplyTo(2), true, new_entries(1, 6, 7, 1, 0), t0 + HB),
        vec![Command::Reply { to: ReplyTo(1), message: ack(1, pos(5, 1)) }]
    );
    // The heartbeat's answer: nothing more than announced; the pushed entries apply.
    assert_eq!(m.on_heartbeat(id(3), Ok(leader_heartbeat(1, 7, 0)), t0 + HB), vec![apply(4, 6, 7)]);
}

// --- rounds ---

#[test]
fn a_response_applies_and_the_next_fetch_leaves_while_it_does() {
    let t0 = Instant::now();
    let mut m = machine(1);
    m.start(t0);
    m.on_position(Ok(pos(0, 0)), t0);
    // The leader has 15 entries: the next fetch starts at the response's end; a guess after
    // it would start at 20, beyond the leader's log: none.
    assert_eq!(
        m.on_fetched(id(1), Ok(response(1, 10, true, 15)), t0),
        vec![apply(2, 1, 10), fetch(3, pos(10, 1), 1)]
    );
}

#[test]
fn a_round_ends_with_an_acknowledgement_then_settles_and_recovers() {
    let t0 = Instant::now();
    let mut m = machine(1);
    m.start(t0);
    m.on_position(Ok(pos(0, 0)), t0);
    assert_eq!(m.on_fetched(id(1), Ok(response(1, 4, false, 4)), t0), vec![apply(2, 1, 4)]);
    assert_eq!(
        m.on_applied(id(2), applied(4), t0),
        vec![
            Command::Acknowledge { id: id(3), position: pos(4, 1), hash: None, term: 1 },
            Command::Settle
        ]
    );
    assert_eq!(m.status().progress, Some(Progress { applied: 4, target: 4, elapsed_ms: 0 }));
    assert_eq!(m.on_settled(Ok(None), t0), vec![Command::RecoverOrphans]);
    assert_eq!(m.on_orphans_recovered(Ok(None), t0), vec![]);
    assert_eq!(m.status().state, FollowerState::CaughtUp);
    assert_eq!(m.status().progress, None);
}

#[test]
fn the_membership_is_settled_after_the_first_round_only() {
    let t0 = Instant::now();
    let mut m = caught_up(1, pos(5, 1), t0);
    m.on_request(ReplyTo(1), true, leader_heartbeat(1, 6, 0), t0);
    assert_eq!(
        m.on_fetched(id(3), Ok(response(6, 6, false, 6)), t0),
        vec![Command::Apply { id: id(4), entries: entries(6, 6, 1) }]
    );
    assert_eq!(
        m.on_applied(id(4), applied(6), t0),
        vec![
            Command::Acknowledge { id: id(5), position: pos(6, 1), hash: None, term: 1 },
            Command::RecoverOrphans
        ]
    );
}

#[test]
fn recovered_orphans_wake_the_proposer() {
    let t0 = Instant::now();
    let mut m = machine(1);
    m.start(t0);
    m.on_position(Ok(pos(0, 0)), t0);
    m.on_fetched(id(1), Ok(response(1, 0, false, 0)), t0);
    m.on_settled(Ok(None), t0);
    let recovered = RecoveredOrphans { proposals: 1, changes: 2, ..Default::default() };
    assert_eq!(m.on_orphans_recovered(Ok(Some(recovered)), t0), vec![Command::WakeProposer]);
}

#[test]
fn a_settle_that_failed_is_tried_again_after_the_next_round() {
    let t0 = Instant::now();
    let mut m = machine(1);
    m.start(t0);
    m.on_position(Ok(pos(5, 1)), t0);
    m.on_fetched(id(1), Ok(response(6, 5, false, 5)), t0);
    assert_eq!(m.on_settled(Err("busy".into()), t0), vec![Command::RecoverOrphans]);
    m.on_orphans_recovered(Ok(None), t0);
    m.on_request(ReplyTo(1), true, leader_heartbeat(1, 6, 0), t0);
    m.on_fetched(id(3), Ok(response(6, 6, false, 6)), t0);
    assert_eq!(
        m.on_applied(id(4), applied(6), t0),
        vec![Command::Settle],
        "the acknowledgement 2 is still in flight"
    );
}

#[test]
fn a_wake_during_a_round_runs_one_more_round() {
    let t0 = Instant::now();
    let mut m = machine(1);
    m.start(t0);
    m.on_position(Ok(pos(0, 0)), t0);
    // Two notifications during the round make one more round.
    m.on_request(ReplyTo(1), true, leader_heartbeat(1, 3, 0), t0);
    m.on_request(ReplyTo(2), true, leader_heartbeat(1, 4, 0), t0);
    m.on_fetched(id(1), Ok(response(1, 4, false, 4)), t0);
    m.on_applied(id(2), applied(4), t0);
    m.on_settled(Ok(None), t0);
    assert_eq!(m.on_orphans_recovered(Ok(None), t0), vec![fetch(4, pos(4, 1), 1)]);
}

#[test]
fn responses_that_arrived_during_an_apply_are_applied_together_within_max_response_bytes() {
    let t0 = Instant::now();
    // Each entry counts 36 + 3 + 2..4 + ENTRY_OVERHEAD (320) bytes: about 3,620 per response
    // of 10.
    let mut m = machine_with(1, SyncConfig { max_response_bytes: 7_400, ..config() });
    m.start(t0);
    m.on_position(Ok(pos(0, 0)), t0);
    m.on_fetched(id(1), Ok(response(1, 10, true, 100)), t0);
    // Batch 2 (1..=10) applies while 3 (from 10) and 4 (guess from 20) are in flight.
    assert_eq!(
        m.on_fetched(id(3), Ok(response(11, 20, true, 100)), t0),
        vec![Command::CountMetric(Counter::FetchesAhead, 1), fetch(5, pos(30, 1), 1)]
    );
    assert_eq!(m.on_fetched(id(4), Ok(response(21, 30, true, 100)), t0), vec![]);
    assert_eq!(m.on_fetched(id(5), Ok(response(31, 40, true, 100)), t0), vec![]);
    // Three responses ready: the first two fit in 7,400 bytes, the third waits.
    assert_eq!(
        m.on_applied(id(2), applied(10), t0),
        vec![
            Command::Apply { id: id(6), entries: entries(11, 30, 1) },
            fetch(7, pos(40, 1), 1),
            Command::CountMetric(Counter::FetchesAhead, 1),
            fetch(8, pos(50, 1), 1),
        ]
    );
}

#[test]
fn the_pipeline_never_holds_more_than_three_responses() {
    let t0 = Instant::now();
    let mut m = fetching_ahead(t0, 100);
    assert_eq!(m.responses_held(), 2);
    // Batch 2 still applies: each answer makes room for one more fetch until three are held.
    assert_eq!(
        m.on_fetched(id(3), Ok(response(11, 20, true, 100)), t0),
        vec![Command::CountMetric(Counter::FetchesAhead, 1), fetch(5, pos(30, 1), 1)]
    );
    assert_eq!(m.responses_held(), 3);
    assert_eq!(m.on_fetched(id(4), Ok(response(21, 30, true, 100)), t0), vec![]);
    assert_eq!(m.responses_held(), 3);
    assert_eq!(m.on_fetched(id(5), Ok(response(31, 40, true, 100)), t0), vec![]);
    assert_eq!(m.responses_held(), 3, "three received, none in flight");
}

#[test]
fn an_answer_that_arrives_before_the_one_ahead_of_it_waits() {
    let t0 = Instant::now();
    let mut m = fetching_ahead(t0, 100);
    // The guess (4) is answered first: nothing is read before fetch 3's answer.
    assert_eq!(m.on_fetched(id(4), Ok(response(21, 30, true, 100)), t0), vec![]);
    assert_eq!(
        m.on_fetched(id(3), Ok(response(11, 20, true, 100)), t0),
        vec![Command::CountMetric(Counter::FetchesAhead, 1), fetch(5, pos(30, 1), 1),]
    );
    assert_eq!(m.responses_held(), 3, "11..=20 and 21..=30 ready, 5 in flight");
}

#[test]
fn a_guess_that_missed_is_dropped_unread() {
    let t0 = Instant::now();
    let mut m = fetching_ahead(t0, 100);
    // The response from 10 ends at 15 (a byte cap): the guess from 20 missed.
    assert_eq!(
        m.on_fetched(id(3), Ok(response(11, 15, true, 100)), t0),
        vec![
            Command::CountMetric(Counter::FetchesAheadMissed, 1),
            Command::DropFetch { id: id(4) },
            fetch(5, pos(15, 1), 1),
            Command::CountMetric(Counter::FetchesAhead, 1),
            fetch(6, pos(20, 1), 1),
        ]
    );
    // Its answer, should it come, is not read.
    assert_eq!(m.on_fetched(id(4), Ok(response(21, 30, true, 100)), t0), vec![]);
    assert_eq!(m.responses_held(), 3);
}

#[test]
fn a_guess_of_the_wrong_term_is_dropped_even_when_its_answer_is_sync_required() {
    let t0 = Instant::now();
    let mut m = fetching_ahead(t0, 100);
    // The guess asked for (20, 1); the leader answers SyncRequired, first.
    let refused = SyncMessage::SyncRequired {
        library_id: LIB,
        term: 1,
        reason: "term mismatch".into(),
        leader_last_sequence: 100,
    };
    assert_eq!(m.on_fetched(id(4), Ok(refused), t0), vec![]);
    // The response from 10 ends at 20 with term 2: the guess missed, its answer is dropped.
    let mut answer = response(11, 20, true, 100);
    if let SyncMessage::EntriesResponse { entries, .. } = &mut answer {
        entries[9].term = 2;
    }
    assert_eq!(
        m.on_fetched(id(3), Ok(answer), t0),
        vec![
            Command::CountMetric(Counter::FetchesAheadMissed, 1),
            Command::DropFetch { id: id(4) },
            fetch(5, pos(20, 2), 1),
            Command::CountMetric(Counter::FetchesAhead, 1),
            fetch(6, pos(30, 2), 1),
        ]
    );
}

#[test]
fn guesses_stop_after_two_misses_in_a_pass() {
    let t0 = Instant::now();
    let mut m = fetching_ahead(t0, 100);
    m.on_fetched(id(3), Ok(response(11, 15, true, 100)), t0); // miss 1: 5 from 15, 6 from 20
    assert_eq!(
        m.on_fetched(id(5), Ok(response(16, 18, true, 100)), t0),
        vec![
            Command::CountMetric(Counter::FetchesAheadMissed, 1),
            Command::DropFetch { id: id(6) },
            fetch(7, pos(18, 1), 1),
        ],
        "the second miss: no guess any more"
    );
}

#[test]
fn a_response_that_skips_entries_restarts_the_pass_from_the_applied_position() {
    let t0 = Instant::now();
    let mut m = machine(1);
    m.start(t0);
    m.on_position(Ok(pos(0, 0)), t0);
    // Asked after 0, answered from 2.
    assert_eq!(m.on_fetched(id(1), Ok(response(2, 11, true, 0)), t0), vec![fetch(2, pos(0, 0), 1)]);
}

#[test]
fn a_response_of_an_older_term_is_discarded_and_the_pass_fetches_again_in_its_term() {
    let t0 = Instant::now();
    let mut m = machine(2);
    m.start(t0);
    assert_eq!(m.on_position(Ok(pos(0, 0)), t0), vec![fetch(1, pos(0, 0), 2)]);
    let before = m.status();
    // The leader of term 1 answers with entries, its last sequence and a commit sequence: none
    // of it is applied or noted, and the fetch leaves again, in term 2.
    let stale = SyncMessage::EntriesResponse {
        commit_sequence: 5,
        library_id: LIB,
        term: 1,
        entries: entries(1, 5, 1),
        has_more: false,
        leader_last_sequence: 5,
    };
    assert_eq!(m.on_fetched(id(1), Ok(stale), t0), vec![fetch(2, pos(0, 0), 2)]);
    assert_eq!(m.status(), before);
    assert_eq!(m.applied(), Some(pos(0, 0)));
}

#[test]
fn a_restart_waits_for_the_batch_applying_and_drops_the_fetches() {
    let t0 = Instant::now();
    let mut m = fetching_ahead(t0, 100);
    // Fetch 3 (from 10) is answered from 12: the pass restarts once batch 2 is applied.
    assert_eq!(
        m.on_fetched(id(3), Ok(response(12, 20, true, 100)), t0),
        vec![Command::DropFetch { id: id(4) }]
    );
    assert_eq!(
        m.on_applied(id(2), applied(10), t0),
        vec![
            fetch(5, pos(10, 1), 1),
            Command::CountMetric(Counter::FetchesAhead, 1),
            fetch(6, pos(20, 1), 1),
        ]
    );
}

#[test]
fn a_gap_found_while_applying_restarts_the_pass() {
    let t0 = Instant::now();
    let mut m = fetching_ahead(t0, 100);
    assert_eq!(
        m.on_applied(id(2), BatchOutcome::Gap, t0),
        vec![
            Command::DropFetch { id: id(3) },
            Command::DropFetch { id: id(4) },
            fetch(5, pos(0, 0), 1),
            Command::CountMetric(Counter::FetchesAhead, 1),
            fetch(6, pos(10, 1), 1),
        ]
    );
}

#[test]
fn a_round_gives_up_after_nine_passes_that_do_not_continue_the_log() {
    let t0 = Instant::now();
    let mut m = machine(1);
    m.start(t0);
    m.on_position(Ok(pos(0, 0)), t0);
    for pass in 1..=MAX_RESTARTS as u64 {
        assert_eq!(
            m.on_fetched(id(pass), Ok(response(2, 11, true, 0)), t0),
            vec![fetch(pass + 1, pos(0, 0), 1)],
            "pass {pass} restarts"
        );
    }
    let last = MAX_RESTARTS as u64 + 1;
    let delay = delays(1)[0];
    assert_eq!(
        m.on_fetched(id(last), Ok(response(2, 11, true, 0)), t0),
        vec![
            Command::CountMetric(Counter::Reconnects, 1),
            Command::Event(SyncEvent::LeaderUnreachable {
                library_id: LIB,
                error: "the leader's responses did not continue the log 9 times in a row".into(),
                retry_in_ms: delay.as_millis() as u64,
            }),
        ]
    );
    assert_eq!(m.status().state, FollowerState::Reconnecting);
    assert_eq!(m.next_deadline(), Some(t0 + delay));
    // Retried after the backoff, from the applied position.
    assert_eq!(m.tick(t0 + delay), vec![fetch(last + 1, pos(0, 0), 1)]);
}

#[test]
fn acknowledgements_go_every_ack_every_entries_while_catching_up() {
    let t0 = Instant::now();
    let mut m = machine(1);
    m.start(t0);
    m.on_position(Ok(pos(0, 0)), t0);
    m.on_fetched(id(1), Ok(response(1, 10, true, 30)), t0); // apply 2, fetch 3 from 10, 4 from 20
    m.on_applied(id(2), applied(10), t0);
    m.on_fetched(id(3), Ok(response(11, 20, true, 30)), t0); // apply 5
    m.on_fetched(id(4), Ok(response(21, 30, false, 30)), t0);
    // 20 applied: no acknowledgement yet (every 25).
    assert_eq!(m.on_applied(id(5), applied(20), t0), vec![apply(6, 21, 30)]);
    assert_eq!(
        m.on_applied(id(6), applied(30), t0),
        vec![
            Command::Acknowledge { id: id(7), position: pos(30, 1), hash: None, term: 1 },
            Command::Settle,
        ],
        "one at 30 (every 25); the one of the round's end waits for its answer"
    );
}

#[test]
fn an_acknowledgement_carries_the_term_and_the_last_entrys_term() {
    let t0 = Instant::now();
    // Term 3, a log that ends with an entry of term 2.
    let mut m = machine(3);
    m.start(t0);
    m.on_position(Ok(pos(7, 2)), t0);
    let nothing = SyncMessage::EntriesResponse {
        commit_sequence: 0,
        library_id: LIB,
        term: 3,
        entries: vec![],
        has_more: false,
        leader_last_sequence: 7,
    };
    assert_eq!(
        m.on_fetched(id(1), Ok(nothing), t0),
        vec![
            Command::Acknowledge { id: id(2), position: pos(7, 2), hash: None, term: 3 },
            Command::Settle
        ]
    );
    assert_eq!(
        position_ack(LIB, 3, pos(7, 2), None),
        SyncMessage::Acknowledge {
            library_id: LIB,
            up_to_sequence: 7,
            term: 3,
            last_term: 2,
            last_hash: None
        }
    );
}

#[test]
fn only_one_acknowledgement_is_in_flight_and_the_next_follows_its_answer() {
    let t0 = Instant::now();
    let mut m = machine(1);
    m.start(t0);
    m.on_position(Ok(pos(0, 0)), t0);
    m.on_fetched(id(1), Ok(response(1, 5, false, 5)), t0);
    assert_eq!(
        m.on_applied(id(2), applied(5), t0),
        vec![
            Command::Acknowledge { id: id(3), position: pos(5, 1), hash: None, term: 1 },
            Command::Settle
        ]
    );
    m.on_settled(Ok(None), t0);
    m.on_orphans_recovered(Ok(None), t0);
    // Another round ends while acknowledgement 3 is unanswered: no second one.
    m.on_request(ReplyTo(1), true, leader_heartbeat(1, 6, 0), t0);
    m.on_fetched(id(4), Ok(response(6, 6, false, 6)), t0);
    assert_eq!(m.on_applied(id(5), applied(6), t0), vec![Command::RecoverOrphans]);
    // Once 3 is answered, the position now goes.
    assert_eq!(
        m.on_acknowledged(id(3), Ok(leader_heartbeat(1, 6, 5))),
        vec![
            Command::LeaderCommit(5),
            Command::Acknowledge { id: id(6), position: pos(6, 1), hash: None, term: 1 }
        ]
    );
    assert_eq!(m.on_acknowledged(id(3), Ok(leader_heartbeat(1, 6, 5))), vec![], "answered once");
}

#[test]
fn an_acknowledgement_refused_with_stale_term_teaches_the_term() {
    let t0 = Instant::now();
    let mut m = machine(1);
    m.start(t0);
    m.on_position(Ok(pos(0, 0)), t0);
    m.on_fetched(id(1), Ok(response(1, 0, false, 0)), t0);
    assert_eq!(
        m.on_acknowledged(id(2), Ok(error(ErrorCode::StaleTerm, 4, "stale"))),
        vec![Command::AdoptTerm(4)]
    );
    assert_eq!(m.term(), 4);
}

#[test]
fn the_leaders_commit_sequence_is_passed_on_when_it_rises() {
    let t0 = Instant::now();
    let mut m = caught_up(1, pos(5, 1), t0);
    assert_eq!(
        m.on_request(ReplyTo(1), true, leader_heartbeat(1, 5, 3), t0),
        vec![
            Command::LeaderCommit(3),
            Command::Reply { to: ReplyTo(1), message: follower_heartbeat(LIB, 1, pos(5, 1), None) }
        ]
    );
    assert_eq!(
        m.on_request(ReplyTo(2), true, leader_heartbeat(1, 5, 2), t0),
        vec![Command::Reply {
            to: ReplyTo(2),
            message: follower_heartbeat(LIB, 1, pos(5, 1), None)
        }]
    );
}

// --- heartbeats ---

#[test]
fn an_idle_follower_heartbeats_its_leader_every_interval() {
    let t0 = Instant::now();
    let mut m = caught_up(1, pos(5, 1), t0);
    assert_eq!(m.next_deadline(), Some(t0 + HB));
    assert_eq!(m.tick(t0 + HB - Duration::from_nanos(1)), vec![]);
    assert_eq!(
        m.tick(t0 + HB),
        vec![Command::Heartbeat { id: id(3), position: pos(5, 1), hash: None, term: 1 }]
    );
    assert_eq!(m.next_deadline(), None, "waiting for the answer");
    assert_eq!(m.on_heartbeat(id(3), Ok(leader_heartbeat(1, 5, 0)), t0 + HB), vec![]);
    assert_eq!(m.next_deadline(), Some(t0 + 2 * HB));
}

#[test]
fn a_heartbeat_answer_showing_the_leader_ahead_starts_a_round_in_its_term() {
    let t0 = Instant::now();
    let mut m = caught_up(1, pos(5, 1), t0);
    m.tick(t0 + HB);
    assert_eq!(
        m.on_heartbeat(id(3), Ok(leader_heartbeat(2, 9, 4)), t0 + HB),
        vec![Command::AdoptTerm(2), Command::LeaderCommit(4), fetch(4, pos(5, 1), 2)]
    );
}

#[test]
fn a_heartbeat_that_fails_backs_off() {
    let t0 = Instant::now();
    let mut m = caught_up(1, pos(5, 1), t0);
    m.tick(t0 + HB);
    let delay = delays(1)[0];
    assert_eq!(
        m.on_heartbeat(id(3), Err(NetworkError::Timeout), t0 + HB),
        vec![
            Command::CountMetric(Counter::Reconnects, 1),
            Command::Event(SyncEvent::LeaderUnreachable {
                library_id: LIB,
                error: "request timed out".into(),
                retry_in_ms: delay.as_millis() as u64,
            }),
        ]
    );
    assert_eq!(m.tick(t0 + HB + delay), vec![fetch(4, pos(5, 1), 1)]);
}

// --- failures ---

#[test]
fn an_unreachable_leader_is_retried_with_growing_delays() {
    let t0 = Instant::now();
    let mut m = machine(1);
    m.start(t0);
    m.on_position(Ok(pos(5, 1)), t0);
    let expected = delays(4);
    let mut now = t0;
    for (attempt, delay) in expected.iter().enumerate() {
        let n = attempt as u64 + 1;
        assert_eq!(
            m.on_fetched(id(n), Err(NetworkError::ConnectionClosed), now),
            vec![
                Command::CountMetric(Counter::Reconnects, 1),
                Command::Event(SyncEvent::LeaderUnreachable {
                    library_id: LIB,
                    error: "connection closed".into(),
                    retry_in_ms: delay.as_millis() as u64,
                }),
            ]
        );
        assert_eq!(m.status().reconnect_attempts, n);
        assert_eq!(m.next_deadline(), Some(now + *delay));
        now += *delay;
        assert_eq!(m.tick(now), vec![fetch(n + 1, pos(5, 1), 1)], "from the applied position");
    }
    // Each step doubles: 100, 200, 400, 800 ms, each delay in the upper half of its step.
    for (delay, step) in expected.iter().zip([100u64, 200, 400, 800]) {
        let ms = delay.as_millis() as u64;
        assert!(ms >= step / 2 && ms <= step, "{ms} ms for a step of {step} ms");
    }
}

#[test]
fn reaching_the_leader_again_resets_the_backoff_and_the_attempts() {
    let t0 = Instant::now();
    let mut m = machine(1);
    m.start(t0);
    m.on_position(Ok(pos(5, 1)), t0);
    m.on_fetched(id(1), Err(NetworkError::Timeout), t0);
    let t1 = t0 + delays(1)[0];
    m.tick(t1);
    m.on_fetched(id(2), Ok(response(6, 5, false, 5)), t1);
    m.on_settled(Ok(None), t1);
    m.on_orphans_recovered(Ok(None), t1);
    assert_eq!(m.status().reconnect_attempts, 0);
    // The next failure draws from the first step again.
    let mut rng = StdRng::seed_from_u64(SEED);
    let mut backoff = Backoff::new(INITIAL, MAX);
    backoff.next_delay(&mut rng);
    backoff.reset();
    let delay = backoff.next_delay(&mut rng);
    m.on_request(ReplyTo(1), true, leader_heartbeat(1, 6, 0), t1);
    assert_eq!(
        m.on_fetched(id(4), Err(NetworkError::Timeout), t1),
        vec![
            Command::CountMetric(Counter::Reconnects, 1),
            Command::Event(SyncEvent::LeaderUnreachable {
                library_id: LIB,
                error: "request timed out".into(),
                retry_in_ms: delay.as_millis() as u64,
            }),
        ]
    );
    assert_eq!(m.status().reconnect_attempts, 1);
}

#[test]
fn stale_term_naming_a_newer_term_retries_at_once_in_that_term() {
    let t0 = Instant::now();
    let mut m = machine(1);
    m.start(t0);
    m.on_position(Ok(pos(5, 1)), t0);
    assert_eq!(
        m.on_fetched(id(1), Ok(error(ErrorCode::StaleTerm, 3, "stale")), t0),
        vec![Command::AdoptTerm(3), fetch(2, pos(5, 1), 3)]
    );
    assert_eq!(m.term(), 3);
}

#[test]
fn stale_term_naming_no_newer_term_is_an_unreachable_leader() {
    let t0 = Instant::now();
    let mut m = machine(3);
    m.start(t0);
    m.on_position(Ok(pos(5, 1)), t0);
    let commands = m.on_fetched(id(1), Ok(error(ErrorCode::StaleTerm, 3, "stale")), t0);
    assert_eq!(commands[0], Command::CountMetric(Counter::Reconnects, 1));
    assert_eq!(m.status().state, FollowerState::Reconnecting);
}

#[test]
fn not_leader_naming_another_device_repoints_the_follower() {
    let t0 = Instant::now();
    let mut m = machine(1);
    m.start(t0);
    m.on_position(Ok(pos(5, 1)), t0);
    let other = Uuid::from_u128(0x33);
    let peer = libp2p::PeerId::random();
    let refused = SyncMessage::Error {
        leader_peer: Some(peer.to_string()),
        term: 1,
        library_id: LIB,
        code: ErrorCode::NotLeader,
        message: "not the leader".into(),
        leader_hint: Some(other),
    };
    let commands = m.on_fetched(id(1), Ok(refused), t0);
    assert_eq!(commands[0], Command::Repoint(LeaderHint { device: other, peer: Some(peer) }));
    assert_eq!(commands[1], Command::CountMetric(Counter::Reconnects, 1));
    assert_eq!(commands.len(), 3);
}

#[test]
fn a_removal_is_reported_to_the_service() {
    let t0 = Instant::now();
    let mut m = machine(1);
    m.start(t0);
    m.on_position(Ok(pos(5, 1)), t0);
    let message = "this device was removed from library";
    let commands = m.on_fetched(id(1), Ok(error(ErrorCode::Unauthorized, 1, message)), t0);
    assert_eq!(commands[0], Command::Membership(FollowerMembership::Removed(message.into())));
    assert_eq!(m.status().last_error, Some(format!("leader refused: Unauthorized: {message}")));
}

#[test]
fn upgrade_needed_stalls_and_waits_the_maximum_backoff() {
    let t0 = Instant::now();
    let mut m = machine(1);
    m.start(t0);
    m.on_position(Ok(pos(0, 0)), t0);
    m.on_fetched(id(1), Ok(response(1, 5, false, 5)), t0);
    let error = "entry 3 needs a newer version of lsync".to_string();
    assert_eq!(
        m.on_applied(id(2), BatchOutcome::UpgradeNeeded(error.clone()), t0),
        vec![Command::Event(SyncEvent::ApplyFailed { library_id: LIB, error: error.clone() })]
    );
    let status = m.status();
    assert_eq!((status.state, status.last_error), (FollowerState::UpgradeNeeded, Some(error)));
    assert_eq!(m.next_deadline(), Some(t0 + MAX));
    assert_eq!(m.tick(t0 + MAX), vec![fetch(3, pos(0, 0), 1)]);
}

#[test]
fn any_other_apply_failure_stalls_and_waits_the_maximum_backoff() {
    let t0 = Instant::now();
    let mut m = machine(1);
    m.start(t0);
    m.on_position(Ok(pos(0, 0)), t0);
    m.on_fetched(id(1), Ok(response(1, 5, false, 5)), t0);
    assert_eq!(
        m.on_applied(id(2), BatchOutcome::Failed("unknown model type \"x\"".into()), t0),
        vec![Command::Event(SyncEvent::ApplyFailed {
            library_id: LIB,
            error: "applying entries failed: unknown model type \"x\"".into(),
        })]
    );
    assert_eq!(m.status().state, FollowerState::Stalled);
    assert_eq!(m.next_deadline(), Some(t0 + MAX));
}

#[test]
fn a_failed_batch_wins_over_the_ending_that_waited_for_it() {
    let t0 = Instant::now();
    let mut m = fetching_ahead(t0, 100);
    // The network fails while batch 2 applies; then batch 2 fails too.
    assert_eq!(
        m.on_fetched(id(3), Err(NetworkError::Timeout), t0),
        vec![Command::DropFetch { id: id(4) }]
    );
    let error = "entry 3 needs a newer version of lsync".to_string();
    assert_eq!(
        m.on_applied(id(2), BatchOutcome::UpgradeNeeded(error.clone()), t0),
        vec![Command::Event(SyncEvent::ApplyFailed { library_id: LIB, error })]
    );
    assert_eq!(m.status().state, FollowerState::UpgradeNeeded);
}

// --- rebuilds ---

#[test]
fn sync_required_resets_the_library_and_fetches_from_zero() {
    let t0 = Instant::now();
    let mut m = machine(1);
    m.start(t0);
    m.on_position(Ok(pos(5, 1)), t0);
    let refused = SyncMessage::SyncRequired {
        library_id: LIB,
        term: 1,
        reason: "diverged".into(),
        leader_last_sequence: 12,
    };
    assert_eq!(
        m.on_fetched(id(1), Ok(refused), t0),
        vec![
            Command::CountMetric(Counter::Resyncs, 1),
            Command::Event(SyncEvent::ResyncStarted {
                library_id: LIB,
                reason: "diverged".into(),
                target: 12,
            }),
            Command::ResetForRepair,
        ]
    );
    assert_eq!(m.status().state, FollowerState::Reconciling);
    // The empty log's hash is known: the genesis hash.
    assert_eq!(m.on_reset(Ok(5), t0), vec![fetch_hashed(2, pos(0, 0), ChainHash::GENESIS, 1)]);
    assert_eq!(m.status().state, FollowerState::Reconciling, "not Fetching");
}

#[test]
fn a_rebuild_reports_its_progress_then_settles_and_recovers() {
    let t0 = Instant::now();
    let t1 = t0 + Duration::from_millis(30);
    let mut m = machine(1);
    m.start(t0);
    m.on_position(Ok(pos(5, 1)), t0);
    let refused = SyncMessage::SyncRequired {
        library_id: LIB,
        term: 1,
        reason: "diverged".into(),
        leader_last_sequence: 12,
    };
    m.on_fetched(id(1), Ok(refused), t0);
    m.on_reset(Ok(5), t0);
    assert_eq!(
        m.on_fetched(id(2), Ok(response(1, 10, true, 12)), t0),
        vec![apply(3, 1, 10), fetch(4, pos(10, 1), 1)]
    );
    assert_eq!(m.on_applied(id(3), applied(10), t0), vec![], "fewer than 1,000: no event");
    assert_eq!(m.on_fetched(id(4), Ok(response(11, 12, false, 12)), t0), vec![apply(5, 11, 12)]);
    assert_eq!(
        m.on_applied(id(5), applied(12), t1),
        vec![
            Command::Event(SyncEvent::ResyncProgress { library_id: LIB, applied: 12, target: 12 }),
            Command::Acknowledge { id: id(6), position: pos(12, 1), hash: None, term: 1 },
            Command::Event(SyncEvent::ResyncDone { library_id: LIB, last_sequence: 12 }),
            Command::Settle,
        ]
    );
    assert_eq!(m.status().progress, Some(Progress { applied: 12, target: 12, elapsed_ms: 30 }));
    assert_eq!(m.on_settled(Ok(None), t1), vec![Command::RecoverOrphans]);
    let recovered = RecoveredOrphans { proposals: 1, changes: 1, ..Default::default() };
    assert_eq!(m.on_orphans_recovered(Ok(Some(recovered)), t1), vec![Command::WakeProposer]);
    assert_eq!(m.status().state, FollowerState::CaughtUp);
}

#[test]
fn a_rebuild_reports_progress_every_thousand_entries() {
    let t0 = Instant::now();
    let mut m = machine_with(
        1,
        SyncConfig {
            max_entries_per_response: 1_000,
            max_response_bytes: 1 << 20,
            ack_every: 10_000,
            ..config()
        },
    );
    m.start(t0);
    m.on_position(Ok(pos(0, 0)), t0);
    let refused = SyncMessage::SyncRequired {
        library_id: LIB,
        term: 1,
        reason: "diverged".into(),
        leader_last_sequence: 2_500,
    };
    m.on_fetched(id(1), Ok(refused), t0);
    m.on_reset(Ok(0), t0);
    m.on_fetched(id(2), Ok(response(1, 1_000, true, 2_500)), t0); // apply 3, fetch 4, guess 5
    assert_eq!(
        m.on_applied(id(3), applied(1_000), t0),
        vec![Command::Event(SyncEvent::ResyncProgress {
            library_id: LIB,
            applied: 1_000,
            target: 2_500,
        })]
    );
}

#[test]
fn a_divergence_found_while_applying_starts_a_rebuild() {
    let t0 = Instant::now();
    let mut m = machine(1);
    m.start(t0);
    m.on_position(Ok(pos(2, 1)), t0);
    m.on_fetched(id(1), Ok(response(3, 5, false, 5)), t0);
    let diverged = BatchOutcome::Diverged { sequence: 3, local_term: 1, remote_term: 2 };
    assert_eq!(
        m.on_applied(id(2), diverged, t0),
        vec![
            Command::CountMetric(Counter::Resyncs, 1),
            Command::Event(SyncEvent::ResyncStarted {
                library_id: LIB,
                reason: "local entry 3 has term 1, the leader's has term 2".into(),
                target: 5,
            }),
            Command::ResetForRepair,
        ]
    );
}

#[test]
fn sync_required_during_a_rebuild_runs_again_at_once() {
    let t0 = Instant::now();
    let mut m = machine(1);
    m.start(t0);
    m.on_position(Ok(pos(5, 1)), t0);
    let refused = |target| SyncMessage::SyncRequired {
        library_id: LIB,
        term: 1,
        reason: "diverged".into(),
        leader_last_sequence: target,
    };
    m.on_fetched(id(1), Ok(refused(12)), t0);
    m.on_reset(Ok(5), t0);
    m.on_fetched(id(2), Ok(response(1, 10, true, 12)), t0);
    m.on_applied(id(3), applied(10), t0);
    // Fetch 4 (from 10) is refused: a plain round from where the rebuild got.
    assert_eq!(m.on_fetched(id(4), Ok(refused(12)), t0), vec![fetch(5, pos(10, 1), 1)]);
    assert_eq!(m.status().state, FollowerState::Fetching);
}

#[test]
fn a_reset_that_fails_stalls() {
    let t0 = Instant::now();
    let mut m = machine(1);
    m.start(t0);
    m.on_position(Ok(pos(5, 1)), t0);
    let refused = SyncMessage::SyncRequired {
        library_id: LIB,
        term: 1,
        reason: "diverged".into(),
        leader_last_sequence: 12,
    };
    m.on_fetched(id(1), Ok(refused), t0);
    assert_eq!(
        m.on_reset(Err("locked".into()), t0),
        vec![Command::Event(SyncEvent::ApplyFailed {
            library_id: LIB,
            error: "cannot reset the library: locked".into(),
        })]
    );
    assert_eq!(m.status().state, FollowerState::Stalled);
}

#[test]
fn a_rebuild_interrupted_by_an_unreachable_leader_settles_once_complete() {
    // The first round settles; then a rebuild is cut short and completed by a plain round:
    // that round must settle the membership (and clear the rebuild mark) too.
    let t0 = Instant::now();
    let mut m = caught_up(1, pos(5, 1), t0);
    m.on_request(ReplyTo(1), true, leader_heartbeat(1, 6, 0), t0);
    let refused = SyncMessage::SyncRequired {
        library_id: LIB,
        term: 1,
        reason: "diverged".into(),
        leader_last_sequence: 6,
    };
    m.on_fetched(id(3), Ok(refused), t0);
    assert_eq!(m.on_reset(Ok(5), t0), vec![fetch_hashed(4, pos(0, 0), ChainHash::GENESIS, 1)]);
    m.on_fetched(id(4), Err(NetworkError::Timeout), t0);
    assert_eq!(m.tick(t0 + MAX), vec![fetch_hashed(5, pos(0, 0), ChainHash::GENESIS, 1)]);
    m.on_fetched(id(5), Ok(response(1, 6, false, 6)), t0 + MAX);
    assert_eq!(
        m.on_applied(id(6), applied(6), t0 + MAX),
        vec![
            Command::Acknowledge { id: id(7), position: pos(6, 1), hash: None, term: 1 },
            Command::Settle
        ]
    );
}

// --- robustness ---

#[test]
fn answers_nobody_waits_for_are_ignored() {
    let t0 = Instant::now();
    let mut m = caught_up(1, pos(5, 1), t0);
    assert_eq!(m.on_fetched(id(99), Ok(response(6, 6, false, 6)), t0), vec![]);
    assert_eq!(m.on_applied(id(99), applied(9), t0), vec![]);
    assert_eq!(m.on_heartbeat(id(99), Ok(leader_heartbeat(1, 9, 0)), t0), vec![]);
    assert_eq!(m.on_acknowledged(id(99), Ok(leader_heartbeat(1, 9, 0))), vec![]);
    assert_eq!(m.on_position(Ok(pos(9, 1)), t0), vec![]);
    assert_eq!(m.on_reset(Ok(1), t0), vec![]);
    assert_eq!(m.on_settled(Ok(None), t0), vec![]);
    assert_eq!(m.on_orphans_recovered(Ok(None), t0), vec![]);
    assert_eq!(m.applied(), Some(pos(5, 1)));
    assert_eq!(m.status().state, FollowerState::CaughtUp);
}

#[test]
fn a_duplicated_answer_is_read_once() {
    let t0 = Instant::now();
    let mut m = fetching_ahead(t0, 100);
    let first = m.on_fetched(id(3), Ok(response(11, 20, true, 100)), t0);
    assert!(!first.is_empty());
    assert_eq!(m.on_fetched(id(3), Ok(response(11, 20, true, 100)), t0), vec![]);
}

#[test]
fn extreme_sequences_do_not_panic() {
    let t0 = Instant::now();
    let mut m = caught_up(1, pos(5, 1), t0);
    let mut request = new_entries(1, 6, 6, 1, u64::MAX);
    if let SyncMessage::NewEntries { from_sequence, to_sequence, .. } = &mut request {
        *from_sequence = 0;
        *to_sequence = u64::MAX;
    }
    let commands = m.on_request(ReplyTo(1), true, request, t0);
    assert!(matches!(commands[0], Command::LeaderCommit(u64::MAX)), "{commands:?}");
    // A response that ends at the last sequence there is.
    let mut answer = response(6, 6, true, u64::MAX);
    if let SyncMessage::EntriesResponse { entries, .. } = &mut answer {
        entries[0].sequence = u64::MAX;
    }
    let _ = m.on_fetched(id(3), Ok(answer), t0);
    let mut m = machine(1);
    m.start(t0);
    m.on_position(Ok(pos(u64::MAX, u64::MAX)), t0);
    let _ = m.on_fetched(id(1), Ok(response(1, 1, true, u64::MAX)), t0);
    assert_eq!(next_guess(pos(u64::MAX, 1), u64::MAX, 10), None);
}

// --- the hash chain (docs/protocol.md, "The hash chain") ---

/// A chain hash made of one repeated byte.
fn h(byte: u8) -> ChainHash {
    ChainHash([byte; 32])
}

/// [`caught_up`], the log's head read with its chain hash `hash`.
fn caught_up_hashed(at: LogPosition, hash: ChainHash, t0: Instant) -> Replicator<StdRng> {
    let mut m = machine(1);
    assert_eq!(m.start(t0), vec![Command::ReadPosition]);
    let head = LogHead { position: at, hash };
    assert_eq!(m.on_head(Ok(head), t0), vec![fetch_hashed(1, at, hash, 1)]);
    m.on_fetched(id(1), Ok(response(1, 0, false, at.sequence)), t0);
    m.on_settled(Ok(None), t0);
    m.on_orphans_recovered(Ok(None), t0);
    m.on_acknowledged(id(2), Ok(leader_heartbeat(1, at.sequence, 0)));
    assert_eq!(m.status().state, FollowerState::CaughtUp);
    m
}

/// `new_entries` naming `prev_hash` as the chain hash before them.
fn new_entries_after(from: u64, to: u64, prev_hash: ChainHash) -> SyncMessage {
    let mut request = new_entries(1, from, to, 1, 0);
    if let SyncMessage::NewEntries { prev_hash: named, .. } = &mut request {
        *named = Some(prev_hash);
    }
    request
}

#[test]
fn the_head_read_at_start_names_its_hash_in_the_first_fetch() {
    let t0 = Instant::now();
    let mut m = machine(1);
    m.start(t0);
    let head = LogHead { position: pos(5, 1), hash: h(5) };
    assert_eq!(m.on_head(Ok(head), t0), vec![fetch_hashed(1, pos(5, 1), h(5), 1)]);
}

#[test]
fn the_next_fetch_names_the_hash_of_the_last_entry_received() {
    let t0 = Instant::now();
    let mut m = machine(1);
    m.start(t0);
    m.on_head(Ok(LogHead { position: pos(0, 0), hash: ChainHash::GENESIS }), t0);
    let mut first = entries(1, 10, 1);
    first[9].hash = Some(h(10));
    let answer = SyncMessage::EntriesResponse {
        commit_sequence: 0,
        library_id: LIB,
        term: 1,
        entries: first.clone(),
        has_more: true,
        leader_last_sequence: 15,
    };
    // The batch applies and the fetch from its last entry names that entry's hash.
    assert_eq!(
        m.on_fetched(id(1), Ok(answer), t0),
        vec![Command::Apply { id: id(2), entries: first }, fetch_hashed(3, pos(10, 1), h(10), 1),]
    );
}

#[test]
fn an_acknowledgement_names_the_hash_the_applied_batch_ended_with() {
    let t0 = Instant::now();
    let mut m = machine(1);
    m.start(t0);
    m.on_head(Ok(LogHead { position: pos(0, 0), hash: ChainHash::GENESIS }), t0);
    m.on_fetched(id(1), Ok(response(1, 5, false, 5)), t0);
    let outcome = BatchOutcome::Applied { last: pos(5, 1), last_hash: Some(h(5)) };
    assert_eq!(
        m.on_applied(id(2), outcome, t0),
        vec![
            Command::Acknowledge { id: id(3), position: pos(5, 1), hash: Some(h(5)), term: 1 },
            Command::Settle,
        ]
    );
}

#[test]
fn a_chain_mismatch_found_while_applying_starts_a_rebuild() {
    let t0 = Instant::now();
    let mut m = fetching_ahead(t0, 40);
    // The leader's entry 3 carries another hash than this log's: the logs differ at or before
    // it, although every term matched.
    let mismatch = BatchOutcome::ChainMismatch { sequence: 3, carried: h(1), computed: h(2) };
    assert_eq!(
        m.on_applied(id(2), mismatch, t0),
        vec![
            Command::DropFetch { id: id(3) },
            Command::DropFetch { id: id(4) },
            Command::CountMetric(Counter::Resyncs, 1),
            Command::Event(SyncEvent::ResyncStarted {
                library_id: LIB,
                reason: format!(
                    "the leader's entry 3 carries chain hash {}, this log has {}: the logs \
                     differ at or before it",
                    h(1).short(),
                    h(2).short()
                ),
                target: 40,
            }),
            Command::ResetForRepair,
        ]
    );
    assert_eq!(m.status().state, FollowerState::Reconciling);
}

#[test]
fn pushed_entries_after_this_logs_hash_are_applied() {
    let t0 = Instant::now();
    let mut m = caught_up_hashed(pos(5, 1), h(5), t0);
    assert_eq!(
        m.on_request(ReplyTo(1), true, new_entries_after(6, 8, h(5)), t0),
        vec![apply(3, 6, 8)]
    );
}

#[test]
fn pushed_entries_after_another_hash_are_answered_at_once_and_fetched() {
    let t0 = Instant::now();
    let mut m = caught_up_hashed(pos(5, 1), h(5), t0);
    // Same (sequence, term) before them, another hash: the leader's check of `since_hash`
    // decides.
    assert_eq!(
        m.on_request(ReplyTo(1), true, new_entries_after(6, 8, h(9)), t0),
        vec![
            Command::Reply { to: ReplyTo(1), message: position_ack(LIB, 1, pos(5, 1), Some(h(5))) },
            fetch_hashed(3, pos(5, 1), h(5), 1),
        ]
    );
}

#[test]
fn pushed_entries_naming_a_hash_wait_for_a_round_while_this_logs_is_unknown() {
    let t0 = Instant::now();
    // The position was read without its hash.
    let mut m = caught_up(1, pos(5, 1), t0);
    assert_eq!(
        m.on_request(ReplyTo(1), true, new_entries_after(6, 8, h(5)), t0),
        vec![Command::Reply { to: ReplyTo(1), message: ack(1, pos(5, 1)) }, fetch(3, pos(5, 1), 1)]
    );
}

#[test]
fn a_leader_heartbeat_at_this_sequence_with_another_hash_wakes_the_machine() {
    let t0 = Instant::now();
    let mut m = caught_up_hashed(pos(5, 1), h(5), t0);
    let mut beat = leader_heartbeat(1, 5, 0);
    if let SyncMessage::Heartbeat { last_hash, .. } = &mut beat {
        *last_hash = Some(h(9));
    }
    assert_eq!(
        m.on_request(ReplyTo(1), true, beat, t0),
        vec![
            Command::Reply {
                to: ReplyTo(1),
                message: follower_heartbeat(LIB, 1, pos(5, 1), Some(h(5))),
            },
            fetch_hashed(3, pos(5, 1), h(5), 1),
        ]
    );
}

#[test]
fn a_leader_heartbeat_at_this_sequence_with_this_hash_does_not_wake_the_machine() {
    let t0 = Instant::now();
    let mut m = caught_up_hashed(pos(5, 1), h(5), t0);
    let mut beat = leader_heartbeat(1, 5, 0);
    if let SyncMessage::Heartbeat { last_hash, .. } = &mut beat {
        *last_hash = Some(h(5));
    }
    assert_eq!(
        m.on_request(ReplyTo(1), true, beat, t0),
        vec![Command::Reply {
            to: ReplyTo(1),
            message: follower_heartbeat(LIB, 1, pos(5, 1), Some(h(5))),
        }]
    );
}

#[test]
fn a_heartbeat_to_the_leader_names_this_logs_hash() {
    let t0 = Instant::now();
    let mut m = caught_up_hashed(pos(5, 1), h(5), t0);
    assert_eq!(
        m.tick(t0 + HB),
        vec![Command::Heartbeat { id: id(3), position: pos(5, 1), hash: Some(h(5)), term: 1 }]
    );
}

/// A conflict record (model `lsync.conflict`) as the leader commits it, at `sequence`.
fn conflict_entry(sequence: u64, id: &str) -> SyncLogEntry {
    let conflict = crate::testkit::conflict(id, lsync_storage::ConflictOutcome::Stored);
    SyncLogEntry {
        model_type: lsync_storage::conflicts::CONFLICT_MODEL_TYPE.into(),
        record_id: id.into(),
        data: lsync_storage::encode(&conflict),
        ..entry(sequence, 1)
    }
}

/// A committed batch reports each conflict record it wrote, not one it found present already
/// (a duplicate was reported when it was written).
#[test]
fn a_batch_reports_the_conflict_records_it_wrote_not_the_ones_present() {
    let batch = vec![entry(4, 1), conflict_entry(5, "p:0"), conflict_entry(6, "q:0")];
    let outcome = ApplyOutcome {
        applied: 1,
        skipped: 2,
        last: pos(6, 1),
        last_hash: lsync_protocol::ChainHash::GENESIS,
        bulk_jobs: Vec::new(),
        membership: None,
        settled: 0,
        redelivered: 0,
    };
    assert_eq!(
        committed(LIB, outcome.clone(), &batch),
        vec![
            Command::CountMetric(Counter::EntriesApplied, 1),
            Command::Event(SyncEvent::EntriesApplied {
                library_id: LIB,
                first: 6,
                last: 6,
                count: 1
            }),
            Command::Event(SyncEvent::ConflictRecorded {
                library_id: LIB,
                id: "q:0".into(),
                model_type: "tag".into(),
                record_id: "t1".into(),
                outcome: lsync_storage::ConflictOutcome::Stored,
            }),
        ]
    );
    // a batch that put delivered proposals back to pending wakes the proposer
    let redelivered = ApplyOutcome { applied: 0, redelivered: 1, ..outcome };
    assert_eq!(committed(LIB, redelivered, &batch), vec![Command::WakeProposer]);
}
