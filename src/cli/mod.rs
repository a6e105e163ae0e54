//! Command-line interface.

mod demo;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// lsync keeps a library (tags, locations, …) identical across a user's devices: the leader
/// commits every change with an entry in a gapless sync log and pushes a notification at once;
/// followers fetch, apply in order and acknowledge.
#[derive(Debug, Parser)]
#[command(name = "lsync", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a leader and followers on 127.0.0.1 in temporary directories, write changes at a
    /// steady rate, show each device's role, sequence and lag live, stop a follower and bring
    /// it back, and check that every device ends with identical tables and logs
    /// (exit status 0 only if they do).
    Demo {
        /// Number of followers.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=16))]
        followers: u16,
        /// Number of changes the leader commits.
        #[arg(long, default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
        changes: u64,
        /// Keep the data directories in DIR (each library at DIR/<device>/libraries/<uuid>.db).
        #[arg(long, value_name = "DIR")]
        keep: Option<PathBuf>,
        /// Print a machine-readable summary on stdout instead of the live view.
        #[arg(long)]
        json: bool,
    },
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Demo { followers, changes, keep, json } => {
            demo::run(demo::DemoArgs { followers: followers as usize, changes, keep, json })
        }
    }
}
