//! The `lsync-chaos` binary: parses the flags, runs [`lsync_chaos::run::run`], prints the one
//! JSON summary line on stdout, exits 0 only if the run is clean (1: problems found, 2: the
//! run itself failed).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use lsync_chaos::daemon::Timers;
use lsync_chaos::nemesis::parse_kinds;
use lsync_chaos::run::{run, Options};
use lsync_chaos::workload::lsync_next_to_me;

/// Runs N `lsync run` daemons on 127.0.0.1 under a seeded nemesis (kill -9, SIGSTOP,
/// partitions through a loopback proxy, restarts on other ports, restores of an older
/// database copy) while writing through the control API and the CLI, then checks every
/// device's database against every write's outcome. Prints one JSON line; exit 0 only if
/// clean. See docs/testing.md.
#[derive(Debug, Parser)]
#[command(name = "lsync-chaos", version, about, long_about)]
struct Args {
    /// Seed of the nemesis and the workload: the same seed draws the same faults and writes.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Number of devices (daemons).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(2..=7))]
    devices: u64,
    /// Number of fault cycles.
    #[arg(long, default_value_t = 10)]
    cycles: usize,
    /// Writes per cycle, to random devices.
    #[arg(long, default_value_t = 12)]
    writes_per_cycle: usize,
    /// Only these fault kinds, comma-separated by their summary names (e.g.
    /// `snapshot,restore,kill_leader`); default: every kind.
    #[arg(long, value_name = "KINDS")]
    faults: Option<String>,
    /// Keep the run directory even when the run is clean (it is always kept otherwise).
    #[arg(long)]
    keep: bool,
    /// The lsync binary (default: the one next to lsync-chaos).
    #[arg(long, value_name = "PATH")]
    lsync: Option<PathBuf>,
    /// Where to make the run directory (default: the system's temporary directory).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// The devices' heartbeat interval.
    #[arg(long, default_value_t = 200)]
    heartbeat_ms: u64,
    /// The devices' leader timeout (every fault lasts 1.5 to 4 of them).
    #[arg(long, default_value_t = 1000)]
    leader_timeout_ms: u64,
    /// How long the devices get to agree after the last heal, in seconds.
    #[arg(long, default_value_t = 120)]
    settle_s: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let Some(lsync) = args.lsync.or_else(lsync_next_to_me) else {
        eprintln!("error: no lsync binary next to lsync-chaos: build it (cargo build -p lsync) or pass --lsync PATH");
        return ExitCode::from(2);
    };
    if args.leader_timeout_ms <= args.heartbeat_ms {
        eprintln!("error: --leader-timeout-ms must be greater than --heartbeat-ms");
        return ExitCode::from(2);
    }
    let faults = match args.faults.as_deref().map(parse_kinds).transpose() {
        Ok(f) => f.unwrap_or_default(),
        Err(e) => {
            eprintln!("error: --faults: {e}");
            return ExitCode::from(2);
        }
    };
    let opts = Options {
        seed: args.seed,
        devices: args.devices as usize,
        cycles: args.cycles,
        writes_per_cycle: args.writes_per_cycle,
        faults,
        keep: args.keep,
        lsync,
        base_dir: args.dir,
        timers: Timers {
            heartbeat_ms: args.heartbeat_ms,
            leader_timeout_ms: args.leader_timeout_ms,
            request_timeout_ms: (args.leader_timeout_ms * 2).max(1000),
        },
        settle_timeout: Duration::from_secs(args.settle_s),
    };
    match run(opts) {
        Ok(summary) => {
            match serde_json::to_string(&summary) {
                Ok(line) => println!("{line}"),
                Err(e) => {
                    eprintln!("error: cannot print the summary: {e}");
                    return ExitCode::from(2);
                }
            }
            if summary.clean {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
