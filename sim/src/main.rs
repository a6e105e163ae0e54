//! `lsync-sim`: runs seeds of the whole-device simulation (docs/testing.md, "Simulation").
//!
//! ```text
//! lsync-sim --seeds 1000                 # seeds 0..1000, every core, a JSON summary at the end
//! lsync-sim --seeds 100000 --from 5000   # a long search
//! lsync-sim --seed 42 --trace            # one seed, its trace and report
//! lsync-sim --seed 42 --faults crash,power --strict-sequences
//! ```
//!
//! Exit status 0 only if every seed passed; each failing seed prints one line with the command
//! that replays it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use clap::Parser;
use lsync_sim::{Fault, Options, Report};
use lsync_storage::Synchronous;

#[derive(Parser, Debug)]
#[command(name = "lsync-sim", about = "Deterministic simulation of whole lsync devices")]
struct Args {
    /// Run this one seed (with its report, and its trace with --trace).
    #[arg(long, conflicts_with = "seeds")]
    seed: Option<u64>,
    /// Run this many seeds.
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// The first seed.
    #[arg(long, default_value_t = 0)]
    from: u64,
    /// Devices per seed (default: 3 to 5, drawn from the seed).
    #[arg(long)]
    devices: Option<usize>,
    /// The fault kinds, comma-separated: crash, pause, suspend, partition, one-way, power,
    /// restore; "safe" (the default) is all but power and restore, "all" is every kind.
    #[arg(long, default_value = "safe")]
    faults: String,
    /// Simulated milliseconds of faults and writes per seed.
    #[arg(long, default_value_t = 20_000)]
    fault_phase_ms: u64,
    /// A write acknowledged at the `local` level found at another sequence than its answer
    /// fails the seed (a `majority` write's always does).
    #[arg(long)]
    strict_sequences: bool,
    /// Leaders answer writes as committed without the leader lease (to see what the checker
    /// finds without it; real nodes always ask it).
    #[arg(long)]
    no_lease: bool,
    /// The share of writes made at the `majority` level, 0 to 1 (the others at `local`).
    #[arg(long, default_value_t = 0.5)]
    majority_share: f64,
    /// The share of the workload's changes that are Patches of one field (`name` or `color`) of
    /// a record already committed (the others are whole-record upserts).
    #[arg(long, default_value_t = 0.3)]
    patch_share: f64,
    /// The devices' `storage.synchronous`: full (the default, as the product's) or normal
    /// (a power loss loses what was not synced).
    #[arg(long, default_value = "full")]
    synchronous: String,
    /// Print every event of the seed (with --seed).
    #[arg(long)]
    trace: bool,
    /// Threads (default: every core).
    #[arg(long)]
    jobs: Option<usize>,
}

fn faults(spec: &str) -> Result<BTreeSet<Fault>, String> {
    match spec {
        "safe" => Ok(Fault::SAFE.into_iter().collect()),
        "all" => Ok(Fault::ALL.into_iter().collect()),
        "none" => Ok(BTreeSet::new()),
        list => list
            .split(',')
            .map(|n| Fault::parse(n.trim()).ok_or_else(|| format!("unknown fault kind {n:?}")))
            .collect(),
    }
}

fn options(args: &Args, seed: u64, faults: &BTreeSet<Fault>) -> Options {
    let mut o = Options::new(seed);
    if let Some(d) = args.devices {
        o.devices = d.clamp(1, 7);
    }
    o.faults = faults.clone();
    o.fault_phase = Duration::from_millis(args.fault_phase_ms);
    o.strict_sequences = args.strict_sequences;
    o.lease = !args.no_lease;
    o.majority_share = args.majority_share;
    o.patch_share = args.patch_share;
    o.synchronous =
        if args.synchronous == "normal" { Synchronous::Normal } else { Synchronous::Full };
    o.trace = args.trace;
    o.trace_live = args.trace && args.seed.is_some();
    o
}

#[derive(Default, serde::Serialize)]
struct Summary {
    seeds: u64,
    passed: u64,
    failed: u64,
    failing_seeds: Vec<u64>,
    writes: u64,
    acknowledged: u64,
    majority: u64,
    unresolved: u64,
    queued: u64,
    refused: u64,
    unknown: u64,
    lost_with_disk: u64,
    moved: u64,
    patches: u64,
    decided_away: u64,
    conflicts: u64,
    lease_waits: u64,
    lease_unconfirmed: u64,
    faults: BTreeMap<String, u64>,
    leader_changes: u64,
    messages: u64,
    messages_lost: u64,
    simulated_s: u64,
}

impl Summary {
    fn add(&mut self, r: &Report) {
        self.seeds += 1;
        if r.ok() {
            self.passed += 1;
        } else {
            self.failed += 1;
            self.failing_seeds.push(r.seed);
        }
        self.writes += r.writes;
        self.acknowledged += r.acknowledged;
        self.majority += r.majority;
        self.unresolved += r.unresolved;
        self.queued += r.queued;
        self.refused += r.refused;
        self.unknown += r.unknown;
        self.lost_with_disk += r.lost_with_disk;
        self.moved += r.moved;
        self.patches += r.patches;
        self.decided_away += r.decided_away;
        self.conflicts += r.conflicts;
        self.lease_waits += r.lease_waits;
        self.lease_unconfirmed += r.lease_unconfirmed;
        for (k, n) in &r.faults {
            *self.faults.entry(k.clone()).or_default() += n;
        }
        self.leader_changes += r.leader_changes;
        self.messages += r.messages;
        self.messages_lost += r.messages_lost;
        self.simulated_s += r.simulated_ms / 1_000;
    }
}

fn main() {
    let args = Args::parse();
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .init();
    }
    let faults = match faults(&args.faults) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("lsync-sim: {e}");
            std::process::exit(2);
        }
    };
    if !matches!(args.synchronous.as_str(), "full" | "normal") {
        eprintln!("lsync-sim: --synchronous is {:?}: use full or normal", args.synchronous);
        std::process::exit(2);
    }
    if !(0.0..=1.0).contains(&args.patch_share) {
        eprintln!("lsync-sim: --patch-share is {}: use 0 to 1", args.patch_share);
        std::process::exit(2);
    }
    if !(0.0..=1.0).contains(&args.majority_share) {
        eprintln!("lsync-sim: --majority-share is {}: use 0 to 1", args.majority_share);
        std::process::exit(2);
    }
    if let Some(seed) = args.seed {
        let opts = options(&args, seed, &faults);
        let replay = opts.replay_command();
        let (report, trace) = lsync_sim::run(opts);
        for line in &trace {
            println!("{line}");
        }
        println!("{}", serde_json::to_string(&report).expect("a report serializes"));
        if !report.ok() {
            for f in &report.failures {
                eprintln!("seed {seed}: {f}");
            }
            eprintln!("replay: {replay}");
            std::process::exit(1);
        }
        return;
    }
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let next = AtomicU64::new(args.from);
    let end = args.from.saturating_add(args.seeds);
    let summary = Mutex::new(Summary::default());
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= end {
                    return;
                }
                let opts = options(&args, seed, &faults);
                let replay = opts.replay_command();
                let (report, _) = lsync_sim::run(opts);
                if !report.ok() {
                    eprintln!(
                        "FAIL seed {seed}: {} | replay: {replay}",
                        report.failures.join("; ")
                    );
                }
                summary.lock().expect("summary lock").add(&report);
            });
        }
    });
    let mut summary = summary.into_inner().expect("summary lock");
    summary.failing_seeds.sort_unstable();
    println!("{}", serde_json::to_string(&summary).expect("a summary serializes"));
    if summary.failed > 0 {
        std::process::exit(1);
    }
}
