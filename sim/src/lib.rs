//! Deterministic simulation of whole lsync devices (docs/testing.md, "Simulation").
//!
//! # Layout
//! - [`world`] — one seed's world: devices, network, clock, nemesis, workload, drain.
//! - [`device`] — one device: the product's machines and storage, run by a shell that mirrors
//!   the actors rule for rule.
//! - [`net`] — the simulated request–response network and its faults.
//! - [`disk`] — a device's real SQLite database and the copies that model power loss and
//!   restores.
//! - [`oracle`] — every write and what its writer was told, checked against the final log.
//! - [`check`] — the invariants checked on every step, convergence, the final checks.
//!
//! [`run`] runs one seed; the `lsync-sim` binary runs many.
#![forbid(unsafe_code)]

pub mod check;
pub mod device;
pub mod disk;
pub mod net;
pub mod oracle;
pub mod world;

pub use world::{Fault, Options, Report};

/// Runs one seed: its report, and its trace if `opts.trace`.
pub fn run(opts: Options) -> (Report, Vec<String>) {
    let seed = opts.seed;
    match world::World::new(opts) {
        Ok(w) => w.run(),
        Err(e) => (
            Report { seed, failures: vec![format!("setup failed: {e:#}")], ..Report::default() },
            Vec::new(),
        ),
    }
}
