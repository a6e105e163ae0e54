//! CI's share of the simulator: 1,000 seeds of whole devices under the safe faults (crash,
//! pause, suspend, partition, one-way link), each checked on every step and against the oracle
//! at the end, plus the seeds that once found a defect. Four tests of 250 seeds run in
//! parallel; each seed's fault phase is shortened to keep CI under its budget (the long search
//! is `cargo run --release -p lsync-sim -- --seeds 100000`, docs/testing.md).

use std::time::Duration;

use lsync_sim::Options;

/// The fault phase of CI's seeds (the binary's default is 20 s).
const PHASE: Duration = Duration::from_secs(8);

/// Seeds of CI's range that fail today on a defect that is open, each with the defect. They
/// are run and reported but kept out of the pass/fail until it is fixed (docs/testing.md, "Known
/// defects"); a listed seed that passes is reported too (the defect may be fixed, or the seed's
/// schedule moved off it: check before removing it from the list). Empty: every seed of the
/// range passes (the last 85, listed for last-writer-wins and an unexplained missing write,
/// pass since the fixes of issue 18).
const KNOWN: &[(u64, &str)] = &[];

/// Runs `seeds` and fails naming every failing seed with its first failure and replay command.
fn run_seeds(seeds: impl IntoIterator<Item = (u64, Duration)>) {
    let options = seeds.into_iter().map(|(seed, phase)| {
        let mut opts = Options::new(seed);
        opts.fault_phase = phase;
        opts
    });
    run_options(options, KNOWN);
}

/// Runs every one of `options`; a failing seed not in `known` fails the test.
fn run_options(options: impl IntoIterator<Item = Options>, known: &[(u64, &str)]) {
    let mut failed = Vec::new();
    let mut ran = 0;
    for opts in options {
        let seed = opts.seed;
        let replay = opts.replay_command();
        let (report, _) = lsync_sim::run(opts);
        ran += 1;
        assert!(report.writes > 0 || !report.ok(), "seed {seed} wrote nothing");
        if let Some(why) = &report.operator_needed {
            eprintln!("seed {seed}: beyond the fault model, waits for an operator: {why}");
        }
        let known = known.iter().find(|(s, _)| *s == seed).map(|(_, why)| *why);
        match (report.ok(), known) {
            (true, None) => {}
            (true, Some(why)) => eprintln!("seed {seed}, listed as failing ({why}), passed"),
            (false, Some(why)) => {
                eprintln!("seed {seed} failed as known ({why}): {}", report.failures[0])
            }
            (false, None) => {
                failed.push(format!("seed {seed}: {}\n  replay: {replay}", report.failures[0]))
            }
        }
    }
    assert!(failed.is_empty(), "{} of {ran} seeds failed:\n{}", failed.len(), failed.join("\n"));
}

/// Seeds 1–60 with every fault kind (`--faults all`: power losses and restores of older copies
/// too) that fail on an open defect (docs/testing.md, "Known defects"). The five listed first
/// (16, 19, 20, 37, 45) pass since acknowledgements are durable (`synchronous = full` by
/// default, a follower's batch fsynced and under its mark before it is acknowledged); the next
/// (13, and four of last-writer-wins) since the fixes of issue 18. (Seed 11 puts back the disks
/// of two of three voters, losing committed entries: it ends waiting for an operator, as
/// designed, reported as `operator_needed`.)
const KNOWN_ALL_FAULTS: &[(u64, &str)] = &[];

/// Seeds 31–60 with every fault under `synchronous = normal` that fail on an open defect: none.
const KNOWN_NORMAL: &[(u64, &str)] = &[];

/// The first 60 seeds under every fault kind, power losses and restores included, with 8 s of
/// faults, half the writes at the `majority` level (each checked at its answered sequences):
/// every one passes (seed 59 failed before the simulator kept a high-water mark: a restored
/// device won a later term).
#[test]
fn seeds_1_to_60_with_every_fault() {
    let options = (1..=60).map(|seed| {
        let mut opts = Options::new(seed);
        opts.fault_phase = PHASE;
        opts.faults = lsync_sim::Fault::ALL.into_iter().collect();
        opts
    });
    run_options(options, KNOWN_ALL_FAULTS);
}

fn range(from: u64, to: u64) -> impl Iterator<Item = (u64, Duration)> {
    (from..=to).map(|s| (s, PHASE))
}

#[test]
fn seeds_1_to_250() {
    run_seeds(range(1, 250));
}

#[test]
fn seeds_251_to_500() {
    run_seeds(range(251, 500));
}

#[test]
fn seeds_501_to_750() {
    run_seeds(range(501, 750));
}

#[test]
fn seeds_751_to_1000() {
    run_seeds(range(751, 1000));
}

/// Seeds (with the default 20 s fault phase) that found a defect, kept for good.
#[test]
fn seeds_that_found_defects() {
    let default = Options::new(0).fault_phase;
    // 1: a wake-up rounded below its deadline re-armed forever (the simulator's own bug);
    // 7: a device that won an election with a stash waiting never recovered it (7 acknowledged
    //    writes lost);
    // 24, 32, 39: a proposal split at a block boundary lost its rest in repair;
    // 14900: a restarted learner that knew its leader's id but not its peer stayed idle.
    run_seeds([1, 7, 24, 32, 39, 14900].map(|s| (s, default)));
}

/// Seeds 31–60 under every fault kind with `synchronous = NORMAL` (`--synchronous normal`: a
/// power loss loses the commits since the last sync point). Seeds 58 and 60 failed while the
/// leader counted its own copy toward the commit sequence before it was on disk: a leader that
/// lost power with its last commits was elected again by a voter that never fetched them.
#[test]
fn seeds_31_to_60_with_every_fault_under_normal() {
    let options = (31..=60).map(|seed| {
        let mut opts = Options::new(seed);
        opts.fault_phase = PHASE;
        opts.faults = lsync_sim::Fault::ALL.into_iter().collect();
        opts.synchronous = lsync_storage::Synchronous::Normal;
        opts
    });
    run_options(options, KNOWN_NORMAL);
}
