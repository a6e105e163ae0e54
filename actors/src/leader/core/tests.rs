//! Unit tests of each rule of the leader's core: one call, the exact list of commands it
//! returns; and a seeded run of random inputs checking what must hold whatever comes.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use libp2p::identity::Keypair;
use lsync_protocol::{Member, MemberRole, MembershipChange, RolePreference, FEATURE_VERSION};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::leader::membership::AckPosition;

const TERM: u64 = 4;
const CATCH_UP: u64 = 10;
/// The log's last sequence when the leadership starts; the term start is the next entry.
const LAST: u64 = 5;
const START: u64 = LAST + 1;
const WAIT: Duration = Duration::from_secs(5);

fn id(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

fn member(n: u128, role: MemberRole) -> Member {
    let key = Keypair::ed25519_from_bytes([n as u8; 32]).expect("32 bytes make a key");
    Member {
        device_id: id(n),
        peer_id: key.public().to_peer_id().to_string(),
        addresses: vec![],
        name: format!("d{n}"),
        role,
        preference: RolePreference::Auto,
    }
}

fn voter(n: u128) -> Member {
    member(n, MemberRole::Voter)
}

fn learner(n: u128) -> Member {
    member(n, MemberRole::Learner)
}

fn config(members: Vec<Member>) -> Configuration {
    Configuration::new(FEATURE_VERSION, members)
}

/// `configuration` in effect since its entry at `sequence`, its voters since `voters_since`.
fn membership(configuration: Configuration, sequence: u64, voters_since: u64) -> Membership {
    Membership { configuration, sequence, voters_since, previous_voters: None }
}

/// Leader 1 of [`TERM`] with `configuration` in effect since sequence 1.
fn core(configuration: Configuration) -> LeaderCore {
    let cfg = CoreConfig { library_id: id(100), me: id(1), term: TERM, catch_up: CATCH_UP };
    LeaderCore::new(cfg, membership(configuration, 1, 1))
}

/// A position of this term whose last entry is of this term.
fn at(device: u128, sequence: u64) -> FollowerProgress {
    FollowerProgress {
        device: id(device),
        ack: AckPosition { term: TERM, sequence, last_term: TERM },
        hash: None,
        features: Some(FEATURE_VERSION),
    }
}

fn publish(commit_sequence: u64, term_start: Option<u64>, last: u64) -> Command {
    Command::Publish { commit_sequence, term_start, last }
}

fn report(m: &Membership) -> Command {
    Command::Report(LeaderReport::Membership(m.clone()))
}

fn committed(token: Token, config_sequence: u64, committed: bool) -> Command {
    Command::Answer { token, result: Ok(ConfigOutcome { config_sequence, committed }) }
}

fn refused(token: Token, error: ConfigError) -> Command {
    Command::Answer { token, result: Err(error) }
}

fn add(n: u128) -> MembershipChange {
    MembershipChange::Add { member: learner(n) }
}

/// The core of `configuration` after its term start was written at [`START`] (not committed).
fn started(configuration: Configuration, t0: Instant) -> LeaderCore {
    let mut c = core(configuration.clone());
    c.start(LAST, t0);
    let written =
        ConfigWritten { sequence: START, membership: membership(configuration, START, 1) };
    c.on_config_written(Ok(written), t0);
    c.on_commit(TERM, START, t0);
    c
}

/// [`started`] with its term start committed by follower 2.
fn committed_start(configuration: Configuration, t0: Instant) -> LeaderCore {
    let mut c = started(configuration, t0);
    c.on_progress(at(2, START), t0);
    assert_eq!(c.commit_sequence(), START);
    c
}

// ---- term start ---------------------------------------------------------------------------

#[test]
fn the_term_start_is_written_first() {
    let t0 = Instant::now();
    let c3 = config(vec![voter(1), voter(2), voter(3)]);
    let mut c = core(c3.clone());
    assert_eq!(c.start(LAST, t0), vec![publish(0, None, LAST), Command::WriteConfig(c3)]);
    assert!(c.is_writing());
}

#[test]
fn the_written_term_start_is_reported_and_published() {
    let t0 = Instant::now();
    let c3 = config(vec![voter(1), voter(2), voter(3)]);
    let mut c = core(c3.clone());
    c.start(LAST, t0);
    let m = membership(c3, START, 1);
    assert_eq!(
        c.on_config_written(Ok(ConfigWritten { sequence: START, membership: m.clone() }), t0),
        vec![report(&m), publish(0, Some(START), LAST)]
    );
    assert_eq!(c.status().term_start, Some(START));
}

#[test]
fn nothing_commits_before_the_term_start() {
    let t0 = Instant::now();
    let mut c = core(config(vec![voter(1), voter(2), voter(3)]));
    c.start(LAST, t0);
    assert_eq!(c.on_progress(at(2, LAST), t0), vec![], "the term start is not written yet");
    assert_eq!(c.commit_sequence(), 0);
}

#[test]
fn a_library_without_configuration_entries_writes_no_term_start() {
    let t0 = Instant::now();
    let v1 = Configuration::new(1, vec![voter(1), voter(2)]);
    let cfg = CoreConfig { library_id: id(100), me: id(1), term: TERM, catch_up: CATCH_UP };
    let mut c = LeaderCore::new(cfg, membership(v1, 0, 0));
    assert_eq!(c.start(LAST, t0), vec![publish(0, None, LAST)]);
}

// ---- commit sequence ----------------------------------------------------------------------

#[test]
fn a_majority_commits_and_the_commit_is_published() {
    let t0 = Instant::now();
    let mut c = started(config(vec![voter(1), voter(2), voter(3)]), t0);
    assert_eq!(c.on_progress(at(2, START), t0), vec![publish(START, Some(START), START)]);
}

#[test]
fn a_commit_event_of_another_term_is_not_this_leaderships() {
    let t0 = Instant::now();
    let mut c = started(config(vec![voter(1), voter(2), voter(3)]), t0);
    assert_eq!(c.on_commit(TERM - 1, 50, t0), vec![]);
    assert_eq!(c.status().commit_sequence, 0);
}

#[test]
fn a_sole_voter_commits_with_its_own_append() {
    let t0 = Instant::now();
    let mut c = core(config(vec![voter(1)]));
    c.start(LAST, t0);
    let m = membership(config(vec![voter(1)]), START, 1);
    c.on_config_written(Ok(ConfigWritten { sequence: START, membership: m }), t0);
    assert_eq!(c.on_commit(TERM, START, t0), vec![publish(START, Some(START), START)]);
}

// ---- synchronous = NORMAL: appended before synced -----------------------------------------

/// The commit event comes before the fsync of the leader's copy: the last sequence is published
/// at once (the links record a follower's position only up to it), the commit sequence not.
#[test]
fn an_appended_commit_publishes_the_last_sequence_at_once() {
    let t0 = Instant::now();
    let mut c = committed_start(config(vec![voter(1), voter(2)]), t0);
    assert_eq!(c.on_appended(TERM, START + 2, t0), vec![publish(START, Some(START), START + 2)]);
    assert_eq!(c.commit_sequence(), START);
}

/// A follower that synced and acknowledged the entries before the leader's fsync was done:
/// its position is counted, and the leader's sync alone then commits (two voters need both).
#[test]
fn a_follower_ahead_of_the_leaders_sync_commits_once_the_leader_syncs() {
    let t0 = Instant::now();
    let mut c = committed_start(config(vec![voter(1), voter(2)]), t0);
    c.on_appended(TERM, START + 2, t0);
    assert_eq!(c.on_progress(at(2, START + 2), t0), vec![], "the leader's copy is not synced");
    assert_eq!(
        c.on_commit(TERM, START + 2, t0),
        vec![publish(START + 2, Some(START), START + 2)],
        "committed without another report of the follower"
    );
}

/// An fsync that covers less than what is appended (commits made while it ran) does not lower
/// the published last sequence, and counts the leader's copy only as far as it covers.
#[test]
fn a_sync_behind_the_appended_last_counts_only_what_it_covers() {
    let t0 = Instant::now();
    let mut c = committed_start(config(vec![voter(1), voter(2)]), t0);
    c.on_appended(TERM, START + 1, t0);
    c.on_appended(TERM, START + 3, t0);
    c.on_progress(at(2, START + 3), t0);
    assert_eq!(c.on_commit(TERM, START + 1, t0), vec![publish(START + 1, Some(START), START + 3)]);
    assert_eq!(c.on_commit(TERM, START + 3, t0), vec![publish(START + 3, Some(START), START + 3)]);
}

#[test]
fn an_appended_commit_of_another_term_is_not_this_leaderships() {
    let t0 = Instant::now();
    let mut c = committed_start(config(vec![voter(1), voter(2)]), t0);
    assert_eq!(c.on_appended(TERM - 1, 50, t0), vec![]);
}

// ---- configuration changes ----------------------------------------------------------------

#[test]
fn a_change_waits_while_the_term_start_is_not_committed() {
    let t0 = Instant::now();
    let mut c = started(config(vec![voter(1), voter(2), voter(3)]), t0);
    assert_eq!(c.on_change(add(4), WAIT, 7, t0), vec![]);
    assert_eq!(c.status().queued_changes, 1);
}

#[test]
fn a_waiting_change_is_written_once_the_previous_entry_commits() {
    let t0 = Instant::now();
    let c3 = config(vec![voter(1), voter(2), voter(3)]);
    let mut c = started(c3.clone(), t0);
    c.on_change(add(4), WAIT, 7, t0);
    let next = c3.with_change(&add(4)).unwrap();
    assert_eq!(
        c.on_progress(at(2, START), t0),
        vec![publish(START, Some(START), START), Command::WriteConfig(next)]
    );
}

#[test]
fn a_change_waits_for_the_previous_one_to_commit() {
    let t0 = Instant::now();
    let c3 = config(vec![voter(1), voter(2), voter(3)]);
    let mut c = committed_start(c3.clone(), t0);
    c.on_change(add(4), WAIT, 7, t0);
    let with4 = c3.with_change(&add(4)).unwrap();
    c.on_config_written(
        Ok(ConfigWritten { sequence: START + 1, membership: membership(with4, START + 1, 1) }),
        t0,
    );
    assert_eq!(c.on_change(add(5), WAIT, 8, t0), vec![], "entry 7 is not committed");
    assert_eq!(c.status().queued_changes, 1);
}

#[test]
fn a_change_asked_while_an_entry_is_written_waits_for_the_write() {
    let t0 = Instant::now();
    let mut c = core(config(vec![voter(1)]));
    c.start(LAST, t0);
    assert_eq!(c.on_change(add(4), WAIT, 7, t0), vec![]);
}

#[test]
fn a_change_is_answered_committed_when_the_commit_covers_it() {
    let t0 = Instant::now();
    let c3 = config(vec![voter(1), voter(2), voter(3)]);
    let mut c = committed_start(c3.clone(), t0);
    c.on_change(add(4), WAIT, 7, t0);
    let m7 = membership(c3.with_change(&add(4)).unwrap(), START + 1, 1);
    assert_eq!(
        c.on_config_written(Ok(ConfigWritten { sequence: START + 1, membership: m7.clone() }), t0),
        vec![report(&m7)],
        "written, not committed"
    );
    c.on_commit(TERM, START + 1, t0);
    assert_eq!(
        c.on_progress(at(3, START + 1), t0),
        vec![publish(START + 1, Some(START), START + 1), committed(7, START + 1, true)]
    );
}

#[test]
fn a_change_not_committed_in_time_is_answered_not_committed_at_its_deadline() {
    let t0 = Instant::now();
    let c3 = config(vec![voter(1), voter(2), voter(3)]);
    let mut c = committed_start(c3.clone(), t0);
    c.on_change(add(4), WAIT, 7, t0);
    let m7 = membership(c3.with_change(&add(4)).unwrap(), START + 1, 1);
    c.on_config_written(Ok(ConfigWritten { sequence: START + 1, membership: m7 }), t0);
    assert_eq!(c.next_deadline(), Some(t0 + WAIT));
    assert_eq!(c.tick(t0 + WAIT - Duration::from_millis(1)), vec![]);
    assert_eq!(c.tick(t0 + WAIT), vec![committed(7, START + 1, false)]);
    assert_eq!(c.next_deadline(), None);
}

#[test]
fn a_change_that_never_started_is_refused_pending_at_its_deadline() {
    let t0 = Instant::now();
    let mut c = started(config(vec![voter(1), voter(2), voter(3)]), t0);
    c.on_change(add(4), WAIT, 7, t0);
    assert_eq!(c.tick(t0 + WAIT), vec![refused(7, not_in_time())]);
    assert_eq!(c.status().queued_changes, 0);
}

#[test]
fn a_waiting_change_behind_a_longer_one_is_answered_at_its_own_deadline() {
    // Found while moving the core into this machine: only the first waiting change was
    // expired, so a short wait behind a long one was answered late.
    let t0 = Instant::now();
    let mut c = started(config(vec![voter(1), voter(2), voter(3)]), t0);
    c.on_change(add(4), WAIT * 10, 7, t0);
    c.on_change(add(5), WAIT, 8, t0);
    assert_eq!(c.next_deadline(), Some(t0 + WAIT));
    assert_eq!(c.tick(t0 + WAIT), vec![refused(8, not_in_time())]);
}

#[test]
fn more_waiting_changes_than_the_queue_holds_are_refused_at_once() {
    let t0 = Instant::now();
    let mut c = started(config(vec![voter(1), voter(2), voter(3)]), t0);
    for token in 0..MAX_QUEUED_CHANGES as Token {
        c.on_change(add(4), WAIT, token, t0);
    }
    assert_eq!(
        c.on_change(add(4), WAIT, 99, t0),
        vec![refused(99, ConfigError::Pending("16 changes wait already".into()))]
    );
}

#[test]
fn an_invalid_change_is_refused() {
    let t0 = Instant::now();
    let c3 = config(vec![voter(1), voter(2), voter(3)]);
    let mut c = committed_start(c3.clone(), t0);
    let change = MembershipChange::Remove { device_id: id(9) };
    let why = c3.with_change(&change).unwrap_err().0;
    assert_eq!(c.on_change(change, WAIT, 7, t0), vec![refused(7, ConfigError::Invalid(why))]);
}

#[test]
fn a_change_already_made_is_answered_with_the_configuration_in_effect() {
    let t0 = Instant::now();
    let mut c = committed_start(config(vec![voter(1), voter(2), voter(3)]), t0);
    let again = MembershipChange::Add { member: voter(2) };
    assert_eq!(c.on_change(again, WAIT, 7, t0), vec![committed(7, START, true)]);
}

#[test]
fn a_change_already_made_does_not_hold_the_next_one_back() {
    // Found while moving the core into this machine: after answering a change already made
    // (or an invalid or late one), the next waiting change waited for another position.
    let t0 = Instant::now();
    let c3 = config(vec![voter(1), voter(2), voter(3)]);
    let mut c = started(c3.clone(), t0);
    c.on_change(MembershipChange::Add { member: voter(2) }, WAIT, 7, t0);
    c.on_change(add(4), WAIT, 8, t0);
    assert_eq!(
        c.on_progress(at(2, START), t0),
        vec![
            publish(START, Some(START), START),
            committed(7, START, true),
            Command::WriteConfig(c3.with_change(&add(4)).unwrap()),
        ]
    );
}

#[test]
fn a_change_whose_entry_cannot_be_written_is_refused() {
    let t0 = Instant::now();
    let mut c = committed_start(config(vec![voter(1), voter(2), voter(3)]), t0);
    c.on_change(add(4), WAIT, 7, t0);
    assert_eq!(
        c.on_config_written(Err("disk full".into()), t0),
        vec![refused(7, ConfigError::Storage("disk full".into()))]
    );
    assert!(!c.is_writing());
}

#[test]
fn a_write_result_nobody_asked_for_is_ignored() {
    let t0 = Instant::now();
    let mut c = committed_start(config(vec![voter(1), voter(2), voter(3)]), t0);
    let m = membership(config(vec![voter(1)]), 50, 50);
    assert_eq!(c.on_config_written(Ok(ConfigWritten { sequence: 50, membership: m }), t0), vec![]);
}

// ---- promotions and demotions -------------------------------------------------------------

#[test]
fn a_caught_up_learner_is_promoted() {
    let t0 = Instant::now();
    let c2 = config(vec![voter(1), learner(2)]);
    let mut c = core(c2.clone());
    c.start(LAST, t0);
    let m = membership(c2.clone(), START, 1);
    c.on_config_written(Ok(ConfigWritten { sequence: START, membership: m }), t0);
    c.on_commit(TERM, START, t0);
    let mut promoted = c2;
    promoted.members[1].role = MemberRole::Voter;
    assert_eq!(c.on_progress(at(2, START), t0), vec![Command::WriteConfig(promoted)]);
}

#[test]
fn no_learner_is_promoted_while_a_transfer_holds_changes_and_is_once_released() {
    let t0 = Instant::now();
    let c2 = config(vec![voter(1), learner(2)]);
    let mut c = core(c2.clone());
    c.start(LAST, t0);
    let m = membership(c2.clone(), START, 1);
    c.on_config_written(Ok(ConfigWritten { sequence: START, membership: m }), t0);
    c.on_commit(TERM, START, t0);
    c.hold_changes(true);
    assert_eq!(c.on_progress(at(2, START), t0), vec![]);
    c.hold_changes(false);
    let mut promoted = c2;
    promoted.members[1].role = MemberRole::Voter;
    assert_eq!(c.on_progress(at(2, START), t0), vec![Command::WriteConfig(promoted)]);
}

#[test]
fn a_learner_behind_is_not_promoted() {
    let t0 = Instant::now();
    let c2 = config(vec![voter(1), learner(2)]);
    let mut c = core(c2.clone());
    c.start(LAST, t0);
    let m = membership(c2, START, 1);
    c.on_config_written(Ok(ConfigWritten { sequence: START, membership: m }), t0);
    c.on_commit(TERM, START + CATCH_UP + 1, t0);
    let behind = FollowerProgress {
        device: id(2),
        ack: AckPosition { term: TERM, sequence: LAST, last_term: TERM - 1 },
        hash: None,
        features: None,
    };
    assert_eq!(c.on_progress(behind, t0), vec![]);
}

// ---- resignation --------------------------------------------------------------------------

#[test]
fn the_leader_resigns_once_a_configuration_without_it_as_voter_commits() {
    let t0 = Instant::now();
    let c3 = config(vec![voter(1), voter(2), voter(3)]);
    let mut c = committed_start(c3.clone(), t0);
    let leave = MembershipChange::Remove { device_id: id(1) };
    c.on_change(leave.clone(), WAIT, 7, t0);
    let without = c3.with_change(&leave).unwrap();
    let mut m7 = membership(without, START + 1, START + 1);
    m7.previous_voters = Some(c3.voters());
    c.on_config_written(Ok(ConfigWritten { sequence: START + 1, membership: m7.clone() }), t0);
    c.on_commit(TERM, START + 1, t0);
    assert_eq!(
        c.on_progress(at(2, START + 1), t0),
        vec![],
        "both majorities: {{1,2,3}} and {{2,3}}"
    );
    m7.previous_voters = None;
    assert_eq!(
        c.on_progress(at(3, START + 1), t0),
        vec![
            publish(START + 1, Some(START), START + 1),
            Command::NoteCommit(START + 1),
            report(&m7),
            committed(7, START + 1, true),
            Command::Report(LeaderReport::Resign),
        ]
    );
    assert_eq!(c.on_progress(at(2, START + 1), t0), vec![], "once");
}

// ---- feature upgrade ----------------------------------------------------------------------

fn version_1(t0: Instant) -> LeaderCore {
    let v1 = Configuration::new(1, vec![voter(1), voter(2), voter(3)]);
    let cfg = CoreConfig { library_id: id(100), me: id(1), term: TERM, catch_up: CATCH_UP };
    let mut c = LeaderCore::new(cfg, membership(v1, 0, 0));
    c.start(LAST, t0);
    c
}

fn supports(device: u128, features: u32) -> FollowerProgress {
    FollowerProgress {
        device: id(device),
        ack: AckPosition { term: TERM, sequence: LAST, last_term: 1 },
        hash: None,
        features: Some(features),
    }
}

#[test]
fn the_feature_version_waits_for_every_member() {
    let t0 = Instant::now();
    let mut c = version_1(t0);
    assert_eq!(c.on_progress(supports(2, FEATURE_VERSION), t0), vec![]);
    assert_eq!(c.on_progress(supports(3, 1), t0), vec![], "3 does not support it");
}

#[test]
fn the_feature_version_is_raised_once_every_member_reported_support() {
    let t0 = Instant::now();
    let mut c = version_1(t0);
    c.on_progress(supports(2, FEATURE_VERSION), t0);
    assert_eq!(
        c.on_progress(supports(3, FEATURE_VERSION), t0),
        vec![Command::WriteConfig(config(vec![voter(1), voter(2), voter(3)]))]
    );
}

#[test]
fn the_first_configuration_entry_is_the_term_start() {
    let t0 = Instant::now();
    let mut c = version_1(t0);
    c.on_progress(supports(2, FEATURE_VERSION), t0);
    c.on_progress(supports(3, FEATURE_VERSION), t0);
    let m = membership(config(vec![voter(1), voter(2), voter(3)]), START, START);
    assert_eq!(
        c.on_config_written(Ok(ConfigWritten { sequence: START, membership: m.clone() }), t0),
        vec![report(&m), publish(0, Some(START), LAST)]
    );
}

// ---- whatever comes -----------------------------------------------------------------------

/// What storage makes of `configuration` written after `before` at `sequence`.
fn written(before: &Membership, configuration: Configuration, sequence: u64) -> Membership {
    let voters_changed = configuration.voters() != before.configuration.voters();
    Membership {
        voters_since: if voters_changed { sequence } else { before.voters_since },
        previous_voters: if voters_changed {
            Some(before.configuration.voters())
        } else {
            before.previous_voters.clone()
        },
        configuration,
        sequence,
    }
}

fn random_change(rng: &mut StdRng) -> MembershipChange {
    let device = rng.gen_range(1..=6u128);
    match rng.gen_range(0..3) {
        0 => MembershipChange::Add { member: learner(device) },
        1 => MembershipChange::Remove { device_id: id(device) },
        _ => MembershipChange::SetPreference {
            device_id: id(device),
            preference: [RolePreference::Auto, RolePreference::Voter, RolePreference::Learner]
                [rng.gen_range(0..3)],
        },
    }
}

#[test]
fn whatever_comes_every_change_is_answered_once_and_writes_are_serialized() {
    for seed in 0..30u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let t0 = Instant::now();
        let mut now = t0;
        let mut c = core(config(vec![voter(1), voter(2), learner(3)]));
        let mut m = c.membership().clone();
        let mut last = LAST;
        let mut writing: Option<Configuration> = None;
        let mut answered: BTreeMap<Token, usize> = BTreeMap::new();
        let mut asked: BTreeSet<Token> = BTreeSet::new();
        let mut commit = 0;
        let mut out = c.start(last, now);
        for step in 0..300u64 {
            for command in &out {
                match command {
                    Command::WriteConfig(next) => {
                        assert!(writing.is_none(), "seed {seed} step {step}: two writes at once");
                        writing = Some(next.clone());
                    }
                    Command::Answer { token, .. } => *answered.entry(*token).or_default() += 1,
                    Command::Publish { commit_sequence, .. } => {
                        assert!(*commit_sequence >= commit, "seed {seed}: the commit went down");
                        commit = *commit_sequence;
                    }
                    _ => {}
                }
            }
            if let Some(at) = out.iter().position(|c| matches!(c, Command::WriteConfig(_))) {
                assert_eq!(at, out.len() - 1, "seed {seed}: WriteConfig not last: {out:?}");
            }
            now += Duration::from_millis(rng.gen_range(0..400));
            out = match rng.gen_range(0..6) {
                0 if writing.is_some() => {
                    let next = writing.take().expect("checked");
                    if rng.gen_bool(0.9) {
                        last += 1;
                        m = written(&m, next, last);
                        let w = ConfigWritten { sequence: last, membership: m.clone() };
                        let mut o = c.on_config_written(Ok(w), now);
                        o.extend(c.on_commit(TERM, last, now));
                        o
                    } else {
                        c.on_config_written(Err("disk".into()), now)
                    }
                }
                1 => {
                    last += rng.gen_range(0..3);
                    c.on_commit(TERM, last, now)
                }
                2 | 3 => {
                    let device = rng.gen_range(2..=6u128);
                    let sequence = rng.gen_range(0..=last + 1);
                    let progress = FollowerProgress {
                        device: id(device),
                        ack: AckPosition { term: TERM, sequence, last_term: TERM },
                        hash: None,
                        features: rng.gen_bool(0.5).then_some(FEATURE_VERSION),
                    };
                    c.on_progress(progress, now)
                }
                4 => {
                    asked.insert(step);
                    let wait = Duration::from_millis(rng.gen_range(0..3_000));
                    c.on_change(random_change(&mut rng), wait, step, now)
                }
                _ => c.tick(now),
            };
        }
        // Every change ends answered: fail the writes, then wait out every deadline.
        loop {
            for command in &out {
                if let Command::Answer { token, .. } = command {
                    *answered.entry(*token).or_default() += 1;
                }
            }
            if !out.iter().any(|c| matches!(c, Command::WriteConfig(_))) && writing.is_none() {
                break;
            }
            writing = None;
            out = c.on_config_written(Err("stopped".into()), now);
        }
        for command in c.tick(now + Duration::from_secs(3600)) {
            if let Command::Answer { token, .. } = command {
                *answered.entry(token).or_default() += 1;
            }
        }
        assert_eq!(answered.keys().copied().collect::<BTreeSet<_>>(), asked, "seed {seed}");
        assert!(answered.values().all(|n| *n == 1), "seed {seed}: {answered:?}");
    }
}

// ---- the hash chain ---------------------------------------------------------------------

#[test]
fn a_position_naming_another_hash_than_the_leaders_commits_nothing() {
    let t0 = Instant::now();
    let mut c = started(config(vec![voter(1), voter(2), voter(3)]), t0);
    c.note_hashes([(START, lsync_protocol::ChainHash([1; 32]))]);
    let reused =
        FollowerProgress { hash: Some(lsync_protocol::ChainHash([2; 32])), ..at(2, START) };
    assert_eq!(c.on_progress(reused, t0), vec![]);
    assert_eq!(c.commit_sequence(), 0);
}

#[test]
fn a_position_naming_the_leaders_hash_commits() {
    let t0 = Instant::now();
    let mut c = started(config(vec![voter(1), voter(2), voter(3)]), t0);
    c.note_hashes([(START, lsync_protocol::ChainHash([1; 32]))]);
    let same = FollowerProgress { hash: Some(lsync_protocol::ChainHash([1; 32])), ..at(2, START) };
    assert_eq!(c.on_progress(same, t0), vec![publish(START, Some(START), START)]);
}
