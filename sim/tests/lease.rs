//! The leader lease in the simulator (docs/testing.md, "The simulator"): the checker's rule
//! "no committed answer in a term after another device won a later one" fails on seeds whose
//! leader is paused or suspended while writes wait for it, when the simulated leaders answer
//! without the lease (`Options::lease` false), and holds on the same seeds with it.

use std::time::Duration;

use lsync_sim::Options;

/// Seed `seed` as docs/testing.md's `--strict-sequences` batch runs it (three devices, the
/// safe faults, 8 s of them), without `--strict-sequences`: a `local` answer's sequence may
/// still move when a leader is deposed before any follower fetched it.
fn options(seed: u64, lease: bool) -> Options {
    let mut o = Options::new(seed);
    o.devices = 3;
    o.fault_phase = Duration::from_millis(8_000);
    o.lease = lease;
    o
}

/// Runs `seed` without the lease, then with it: the first breaks the rule (its leader of
/// `term` woke after another device won `term + 1`), the second passes, its woken leader
/// having waited for rounds it could not confirm.
fn breaks_the_rule_only_without_the_lease(seed: u64, term: u64) {
    let (without, _) = lsync_sim::run(options(seed, false));
    let rule = format!("answered a write committed in term {term} (3 voters) after device");
    assert!(
        without.failures.first().is_some_and(|f| f.contains(&rule)),
        "seed {seed} without the lease: {:?}",
        without.failures
    );
    let (with, _) = lsync_sim::run(options(seed, true));
    assert!(with.ok(), "seed {seed} with the lease: {:?}", with.failures);
    assert!(with.lease_waits > 0, "seed {seed}: no answer waited for a round: {with:?}");
    assert!(with.lease_unconfirmed > 0, "seed {seed}: every waiting answer confirmed: {with:?}");
}

/// Seed 3: device 0, leader of term 1, is paused (SIGSTOP) for 2 s; device 2 wins term 2.
#[test]
fn a_paused_leader_answers_committed_in_a_term_another_device_has_won_only_without_the_lease() {
    breaks_the_rule_only_without_the_lease(3, 1);
}

/// Seed 2: device 0, leader of term 1, is suspended (its monotonic clock stops, the lease's
/// boot clock does not) for 1.5 s; device 2 wins term 2.
#[test]
fn a_suspended_leader_answers_committed_in_a_term_another_device_has_won_only_without_the_lease() {
    breaks_the_rule_only_without_the_lease(2, 1);
}
