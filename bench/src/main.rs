//! `lsync-bench`: how fast lsync is on this machine, beside the baselines that matter, in one
//! run (issue 7; figures and findings in docs/performance.md).
//!
//! ```sh
//! cargo run --release -p lsync-bench            # full run, a few minutes
//! cargo run --release -p lsync-bench -- --quick # under 2 minutes
//! ```
//!
//! The parent process runs the leader node(s); every follower is its own OS process (this
//! binary re-executed as `lsync-bench follower …` or `lsync-bench poller …`), driven by JSON
//! lines on its stdin and reporting JSON lines on its stdout (see `child.rs`). Real libp2p TCP
//! on 127.0.0.1, temporary SQLite files. Prints a table and writes `target/bench/latest.json`.
#![forbid(unsafe_code)]

mod child;
mod model;
mod parent;
mod procs;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "lsync-bench",
    about = "Benchmark lsync: latency, throughput, catch-up, idle, memory"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// A smaller run (under 2 minutes) reporting the same keys.
    #[arg(long)]
    quick: bool,
    /// Where the JSON goes (default: target/bench/latest.json of the workspace).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Single-change commits per latency run (default 10,000; --quick 2,000).
    #[arg(long)]
    latency_commits: Option<u64>,
    /// Commits per second during the latency runs.
    #[arg(long)]
    latency_rate: Option<u64>,
    /// Entries behind for the catch-up run (default 1,000,000; --quick 100,000).
    #[arg(long)]
    catchup_entries: Option<u64>,
    /// Entries per throughput run (default 200,000; --quick 50,000).
    #[arg(long)]
    throughput_entries: Option<u64>,
    /// Skip the extra latency runs with notify_window = 0.
    #[arg(long)]
    no_window0: bool,
}

#[derive(Subcommand)]
enum Command {
    /// (internal) A follower node in its own process, driven by the parent over stdin/stdout.
    Follower {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 30_000)]
        heartbeat_ms: u64,
        /// Record commit → apply latencies of `bench` entries.
        #[arg(long)]
        record: bool,
        /// `PRAGMA synchronous` of its databases (`normal` or `full`; default: the storage
        /// default).
        #[arg(long)]
        synchronous: Option<String>,
    },
    /// Only the ceiling (local commit, then local apply; no network), for profiling.
    Ceiling {
        #[arg(long, default_value_t = 200_000)]
        entries: u64,
    },
    /// Only the throughput phase (fresh leader, N followers), for profiling.
    Throughput {
        #[arg(long, default_value_t = 3)]
        followers: usize,
        #[arg(long, default_value_t = 200_000)]
        entries: u64,
    },
    /// Only the leader's commit path: one-change proposals from 1 and N writer threads under
    /// synchronous = normal and full (group commit), and the hash chain's cost per entry.
    Commits {
        #[arg(long, default_value_t = 8)]
        writers: usize,
        #[arg(long, default_value_t = 4_000)]
        proposals: u64,
    },
    /// Only the cost of `Durability::Majority`: one-change writes through `Node::write_with`
    /// on a leader with 1 and 3 follower processes, at `local` and `majority`, under
    /// synchronous = full (and normal with `--normal`), on every device: latency of one
    /// writer, and throughput of N concurrent writers.
    Majority {
        /// Sequential writes timed per level and configuration.
        #[arg(long, default_value_t = 400)]
        writes: u64,
        /// Concurrent writers of the throughput run.
        #[arg(long, default_value_t = 8)]
        writers: usize,
        /// Writes per writer in the throughput run.
        #[arg(long, default_value_t = 100)]
        writes_per_writer: u64,
        /// Also measure under synchronous = normal.
        #[arg(long)]
        normal: bool,
    },
    /// Only the cost of stamps and field clocks (issue 18), no network: a library pinned at
    /// feature version 2 (no stamps) beside one at 3 — the leader's own inserts, update
    /// proposals timestamped on another device (the conflict check), a follower's apply, and
    /// the bytes per entry.
    Stamps {
        /// Inserts the leader commits itself, 1,000 per transaction.
        #[arg(long, default_value_t = 100_000)]
        entries: u64,
        /// One-change update proposals from another device.
        #[arg(long, default_value_t = 5_000)]
        proposals: u64,
        /// Rounds, each measuring both versions (in alternating order).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// (internal) The polling baseline in its own process.
    Poller {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 50)]
        interval_ms: u64,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // lsync's own log (warnings by default; `RUST_LOG=lsync_actors=debug` for more) goes to
    // stderr, which the children inherit; stdout carries the children's JSON lines.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    match cli.command {
        Some(Command::Follower { dir, heartbeat_ms, record, synchronous }) => {
            child::follower(dir, heartbeat_ms, record, synchronous.as_deref())
        }
        Some(Command::Poller { dir, interval_ms }) => child::poller(dir, interval_ms),
        Some(Command::Ceiling { entries }) => parent::ceiling_only(entries),
        Some(Command::Commits { writers, proposals }) => parent::commits_only(writers, proposals),
        Some(Command::Majority { writes, writers, writes_per_writer, normal }) => {
            actix::System::new().block_on(parent::majority_only(parent::MajorityOpts {
                writes,
                writers,
                writes_per_writer,
                normal,
            }))
        }
        Some(Command::Stamps { entries, proposals, rounds }) => {
            parent::stamps_only(parent::StampsOpts { entries, proposals, rounds })
        }
        Some(Command::Throughput { followers, entries }) => {
            actix::System::new().block_on(parent::throughput_only(followers, entries))
        }
        None => {
            let out = cli.out.unwrap_or_else(|| {
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench/latest.json")
            });
            let mut opts = parent::Opts::new(cli.quick, out);
            if let Some(n) = cli.latency_commits {
                opts.latency_commits = n;
            }
            if let Some(n) = cli.latency_rate {
                opts.latency_rate = n;
            }
            if let Some(n) = cli.catchup_entries {
                opts.catchup_entries = n;
            }
            if let Some(n) = cli.throughput_entries {
                opts.throughput_entries = n;
            }
            opts.window0 = !cli.no_window0;
            actix::System::new().block_on(parent::run(opts))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_sample() {
        let p = parent::Percentiles::of((1..=100).collect());
        assert_eq!((p.p50, p.p90, p.p99, p.max), (50, 90, 99, 100));
        assert!((p.mean - 50.5).abs() < 1e-9);
    }

    #[test]
    fn cli_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
