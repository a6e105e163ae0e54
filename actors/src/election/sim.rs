//! A discrete-event simulator of a library's elections with replicated membership: thousands
//! of seeded schedules in which every device derives its configuration from its own log, as
//! the actors do (docs/architecture.md), while leaders replicate, write, commit and change the
//! configuration, the network and the devices fail, and a device whose log is cut proposes
//! the writes it lost again.
//!
//! # What it models
//! - **Devices**: each has its [`Election`] machine, its election record (what its last
//!   [`Action::Persist`] wrote, with a full sync: every crash keeps it; a restart rebuilds the
//!   machine from it and from its log, by the product's restart rule — a device whose record
//!   names it leader of its term comes back a follower of that term and never leads it again,
//!   [`super::PersistedElection::restarted`]), its own log (`sim/log.rs`: entries `(term, id)`, each carrying either a
//!   [`lsync_protocol::Configuration`] or a write id), its durable outbox, its known commit
//!   sequence, and its configuration in
//!   effect: the latest configuration entry of its own log, with the voters before the last
//!   voter change while it does not know that change is committed ([`Membership::with_previous`]);
//!   a truncated log falls back to the latest configuration entry left in it.
//! - **Replication**: Raft's AppendEntries, which is also the heartbeat: `(prev sequence, prev
//!   term)` log matching, a follower cutting a conflicting suffix, acknowledgements `(term,
//!   sequence matched, term there)` fed to the leader's real
//!   [`crate::leader::membership::CommitTracker`] (term start = its first entry, a
//!   configuration entry restating its configuration written as soon as it wins; every
//!   configuration entry given to the tracker before the append is reported; the previous
//!   voters first when it takes over a voter change not known committed), and the leader's
//!   commit sequence on every message, which followers adopt up to what they matched. A leader sends to the members of its latest configuration and to the previous
//!   voters while its last voter change is not committed.
//! - **Configuration changes** by the leader, with the real
//!   [`crate::leader::membership::check_change`] and
//!   [`crate::leader::membership::next_voter_change`] (promotions of caught-up learners,
//!   demotions), and random `Add` (a new device, a learner),
//!   `Remove` (any member, the leader itself and one of two voters included) and
//!   `SetPreference` through `Configuration::with_change`. A device removed is cut off: no
//!   message passes between it and a device that applied (knows committed) its removal. A leader
//!   resigns ([`Election::resign`]) once a configuration that does not make it a voter is
//!   committed.
//! - **Writes and divergence repair** (docs/architecture.md, "Concurrent changes" → "Nothing
//!   lost across failover"): a leader appends a write every 5 to 40 ms until the drain (none
//!   during a transfer); each write gets a unique write id, the product's proposal id. When a
//!   follower's log is cut (a conflicting suffix overwritten), the ordinary writes cut go into
//!   its outbox; configuration entries, the leaders' first entries of their terms among them,
//!   are never proposed again. Its proposer sends the outbox (up to [`BATCH`] ids at a time) to
//!   the leader it follows, over the same faulty network, again after 20 ms doubling up to
//!   [`PROPOSE_RETRY_MAX`] while it holds anything (at once after an answer if writes that no
//!   leader of its term answered remain); a device that leads appends its own outbox directly.
//!   A leader (not transferring) appends each proposed write as a new entry of its term unless
//!   its log already holds that write id (at most once, as with proposal ids), and answers
//!   with them all. The proposer keeps a write in its outbox until its own log holds it
//!   *committed*; an answer only stops it sending that write again while it is in the
//!   answering leader's term. The outbox survives restarts.
//!
//!   Dropping a write on the answer or on seeing it in its own log, committed or not (the
//!   product's proposer drops a proposal on `ProposalResult`, which the leader sends once the
//!   entries are in its own log), loses writes: the leader that answered loses its leadership
//!   before the entry replicates and is removed before it proposes its cut entries again, so
//!   the only copy is cut off with it. With that rule 12 of the seeds 0 to 22,999 fail (3071,
//!   3657, 4346, 6056, 9042, 9642, 11627, 13196, 13869, 15189, 16053, 19409), none of the
//!   default run's.
//! - **Faults**: message loss, delay, duplication and reordering; partitions, one-way link
//!   cuts; crashes and restarts; power losses, which lose what was written without a full sync:
//!   the election record stays, the log loses a random part of its tail above what the commit
//!   rule counted on (its known commit, the committed prefix, any entry another device holds —
//!   the model assumes those synced, which the product's `majority` level of issue 16 is to
//!   guarantee), so a leader loses the writes it took and nobody else got, and a write whose
//!   only copy that was is not required at the end; leadership transfers; a joiner that starts with only the
//!   configuration it was given (as a learner) and sometimes cannot reach anyone for up to 30
//!   election timeouts. Libraries start with 1 to 5 voters and up to 2 learners; 20 % of the
//!   schedules make no random change (promotions only).
//!
//! # Invariants, checked after every event
//! - at most one leader per term over the whole run;
//! - terms never decrease on a device, across restarts too; a persisted vote never changes
//!   within a term;
//! - the machine's state equals what it last asked to persist, and every vote request, granted
//!   vote and heartbeat is sent only after the Persist it depends on; a pre-vote request or
//!   grant asks for a term above the persisted one; the machine uses the configuration its
//!   own log gives;
//! - a device that is a voter neither of its own latest configuration nor of the previous
//!   voters it keeps never campaigns, pre-votes or becomes leader; a device that is neither a
//!   member of its own configuration nor one of its previous voters never grants a vote or a
//!   pre-vote (learners answer: a candidate that counts them as voters may need them; every
//!   candidate's request also goes to the learners of its configuration, which its rule must
//!   not count);
//! - log matching: two logs holding an entry of the same term at a sequence hold the same entry;
//!   a write id is never in one log twice;
//! - commits: a device's entries up to its own known commit sequence are the committed ones
//!   (the longest prefix any leader committed), no device learns a commit sequence no leader
//!   reached, a committed entry is never truncated from a device that holds it, and a leader
//!   just elected holds every committed entry; so no two different configurations are ever
//!   both committed at one sequence. (Devices outside the commit majority may hold another,
//!   uncommitted entry at a committed sequence until the leader overwrites it: that is Raft.)
//! - the commit rule on the devices' actual logs: when a leader's commit sequence grows, the
//!   entry there is held by a commit majority of its latest voters and, while its last voter
//!   change was not committed, of the voters before it (with two voters: both; so the two sides
//!   of a partition of a two-voter library never both commit a configuration change, and
//!   growing two voters to three cannot commit two different configurations);
//! - a configuration change is a single-voter change, and a leader appends one only when the
//!   previous configuration entry of its log and its first entry of its term are each held by
//!   a commit majority of the voters (checked on the logs, independently of its tracker);
//! - liveness: once the network heals (no loss, no partition, joiners reconnected) a leader
//!   followed by every up member of its configuration emerges within [`LIVENESS_TIMEOUTS`]
//!   election timeouts. Every device comes back at the heal, except a few that may stay down
//!   if each is a voter of no set in use (learners, removed devices) or if the library has
//!   settled (every other device holds the same latest configuration, known committed, with a
//!   commit majority of its voters up). "A majority of the latest committed configuration up"
//!   is not enough while devices hold different configurations: a leader that appended its
//!   own demotion and crashed holds the most up-to-date log yet cannot campaign (any rule that
//!   uses the latest configuration of the log), and a device that does not know a removal
//!   committed needs the voters before it too (the rule of both sets).
//!
//! # The drain, and no write lost
//! Once a leader is followed by every up member after the heal, the drain begins: leaders
//! write no more, every device left down comes back, and within [`DRAIN_TIMEOUTS`] election
//! timeouts a leader must be followed by every member of its configuration, every member must
//! hold its whole log, all of it committed, and every member's outbox must be empty. Then
//! every member's log is the leader's, and every write id that any member ever held (in its
//! log; an outbox is filled from the log) is in it exactly once. A write that no member of the
//! final configuration ever held lived only on devices removed since (a removed device is cut
//! off, its outbox undeliverable, as in the product): such writes are counted, not required.
//!
//! This is the check for two voters, the one documented exception to "no two disjoint
//! majorities" (docs/architecture.md, "Two voters"): either device may be elected alone, each
//! in its own half of the terms, so the two sides of a partition each lead and write (neither
//! commits: that needs both), and at the heal the device whose log loses gets its writes back
//! through its outbox. The run counts the schedules where both devices of a two-voter library
//! led at once and both wrote in those terms, and those of them where a write of those terms
//! was cut, proposed again and appended. The commit rule above checks the other half of the
//! exception: growing two voters to three cannot commit two different configurations.
//!
//! A failing schedule panics with a one-line replay command; `replay` runs one seed
//! (`LSYNC_SIM_SEED`) and prints its trace. `LSYNC_SIM_SCHEDULES` sets how many schedules the
//! main test runs (default [`DEFAULT_SCHEDULES`]), `LSYNC_SIM_FIRST_SEED` the first seed, and
//! `LSYNC_SIM_KEEP_GOING` runs them all and lists every failure.

use std::time::Duration;

#[allow(unused_imports)] // for the documentation's links
use super::{Action, Election, Membership};

mod log;
mod world;

const ET: Duration = Duration::from_millis(100);
const HB: Duration = Duration::from_millis(30);
/// Election timeouts from the heal to a leader followed by every up member.
const LIVENESS_TIMEOUTS: u32 = 10;
/// The most entries in one AppendEntries; also the catch-up distance of a learner.
const BATCH: usize = 8;
/// The most devices a schedule adds up to.
const MAX_DEVICES: usize = 9;
/// Election timeouts from the drain's start (a stable leader after the heal) to every member
/// holding the leader's whole log, committed, with an empty outbox.
const DRAIN_TIMEOUTS: u32 = 10;
/// A proposer's first retry delay, doubled after each attempt up to the second.
const PROPOSE_RETRY_MIN: Duration = Duration::from_millis(20);
const PROPOSE_RETRY_MAX: Duration = Duration::from_millis(320);
/// Schedules of the default run.
const DEFAULT_SCHEDULES: u64 = 3_000;

/// What one schedule did.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Outcome {
    pub steps: u64,
    /// From healing to a leader followed by every up member.
    pub heal_to_leader: Duration,
    pub leaders: usize,
    pub restarts: u32,
    pub transfers: u32,
    /// Transfers whose target won the election it started on TimeoutNow.
    pub transfers_completed: u32,
    /// Pre-vote rounds that asked other voters.
    pub pre_vote_rounds: u32,
    /// Initial voters and learners; devices at the end.
    pub voters: usize,
    pub learners: usize,
    pub devices: usize,
    /// Configuration entries appended by leaders (restatements excluded), committed (all).
    pub changes: u32,
    pub configs_committed: u32,
    pub joiners: u32,
    pub isolated_joiners: u32,
    pub resignations: u32,
    /// Devices left down at the heal.
    pub stayed_down: usize,
    /// Committed voter changes, by number of voters before and after.
    pub transitions: [[u32; MAX_DEVICES + 1]; MAX_DEVICES + 1],
    /// Both devices of a two-voter library led at once (each in its own terms).
    pub two_voter_split: bool,
    /// ... and both appended writes in those terms.
    pub split_wrote: bool,
    /// ... and a write first appended in one of those terms was appended again from an
    /// outbox (the side whose log lost got it back).
    pub split_rescued: bool,
    /// From the drain's start to every member drained.
    pub drain: Duration,
    /// Write ids appended by leaders (the initial logs' included).
    pub writes: u32,
    /// Writes put into an outbox when a log was cut.
    pub set_aside: u32,
    /// Proposed writes a leader appended as new entries, and those it already held.
    pub reappended: u32,
    pub duplicate_proposals: u32,
    /// Write ids no member of the final configuration ever held (they lived only on devices
    /// since removed).
    pub lost_with_removed: u32,
    /// Power losses, and the write ids whose every copy was on a log tail one took.
    pub power_losses: u32,
    pub lost_with_power: u32,
    /// Heartbeats at which telling the tracker the leader's last sequence again raised its
    /// commit (see `world.rs`, `SendHeartbeats`).
    pub late_commits: u32,
}

/// Runs the schedule of `seed`; with `verbose`, the error carries the trace.
fn run(seed: u64, verbose: bool) -> Result<Outcome, String> {
    let mut sim = world::build(seed, verbose);
    sim.run().map_err(|e| match sim.trace() {
        Some(trace) => format!("{e}\n--- trace ---\n{trace}"),
        None => e,
    })
}

fn replay_command(seed: u64) -> String {
    format!("LSYNC_SIM_SEED={seed} cargo test -p lsync-actors --lib election::sim::replay -- --nocapture")
}

#[test]
fn simulated_schedules_keep_the_invariants() {
    let count: u64 = std::env::var("LSYNC_SIM_SCHEDULES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_SCHEDULES);
    let first: u64 =
        std::env::var("LSYNC_SIM_FIRST_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    // Run every schedule and list the failures at the end (to measure how often a defect shows).
    let keep_going = std::env::var("LSYNC_SIM_KEEP_GOING").is_ok();
    let mut failures = Vec::new();
    let mut total = Outcome::default();
    let (mut worst, mut leaders, mut by_size) = (Duration::ZERO, 0usize, [0u32; 6]);
    let (mut devices, mut stayed_down, mut with_learners) = (0usize, 0usize, 0u32);
    let mut transitions = [[0u32; MAX_DEVICES + 1]; MAX_DEVICES + 1];
    let (mut splits, mut split_wrote, mut split_rescued) = (0u32, 0u32, 0u32);
    let mut slowest_drain = Duration::ZERO;
    for seed in first..first + count {
        match run(seed, false) {
            Ok(o) => {
                total.steps += o.steps;
                worst = worst.max(o.heal_to_leader);
                leaders += o.leaders;
                total.restarts += o.restarts;
                total.transfers += o.transfers;
                total.transfers_completed += o.transfers_completed;
                total.pre_vote_rounds += o.pre_vote_rounds;
                total.changes += o.changes;
                total.configs_committed += o.configs_committed;
                total.joiners += o.joiners;
                total.isolated_joiners += o.isolated_joiners;
                total.resignations += o.resignations;
                devices += o.devices;
                stayed_down += o.stayed_down;
                with_learners += u32::from(o.learners > 0);
                splits += u32::from(o.two_voter_split);
                split_wrote += u32::from(o.split_wrote);
                split_rescued += u32::from(o.split_rescued);
                slowest_drain = slowest_drain.max(o.drain);
                total.writes += o.writes;
                total.set_aside += o.set_aside;
                total.reappended += o.reappended;
                total.duplicate_proposals += o.duplicate_proposals;
                total.lost_with_removed += o.lost_with_removed;
                total.power_losses += o.power_losses;
                total.lost_with_power += o.lost_with_power;
                total.late_commits += o.late_commits;
                for (from, row) in o.transitions.iter().enumerate() {
                    for (to, n) in row.iter().enumerate() {
                        transitions[from][to] += n;
                    }
                }
                if let Some(n) = by_size.get_mut(o.voters) {
                    *n += 1;
                }
            }
            Err(e) => {
                let first_line = e.lines().next().unwrap_or_default().to_owned();
                if !keep_going {
                    panic!(
                        "schedule seed {seed} failed: {first_line}\nreplay: {}",
                        replay_command(seed)
                    );
                }
                failures.push(format!("{seed}: {first_line}"));
            }
        }
    }
    eprintln!(
        "election simulator: {count} schedules (initial voters 1..5: {:?}, {with_learners} with \
         learners), {} steps, {leaders} \
         leaders, {} pre-vote rounds, {} restarts, {} devices left down at the heal, {} \
         transfers ({} completed), {} configuration changes appended ({} configuration entries \
         committed), {} joiners ({} isolated), {} resignations, {devices} devices in all; \
         {splits} schedules with both devices of a two-voter library leading at once \
         ({split_wrote} with both writing, {split_rescued} of them with a write of those terms \
         cut, proposed again and appended); {} writes, {} set aside by a cut log, {} appended \
         again from an outbox, {} proposed again already held, {} only ever on devices since \
         removed, {} lost with a log tail in {} power losses; {} commits raised at a heartbeat; committed voter changes {}; slowest heal -> \
         stable leader {worst:?} ({:.1} election timeouts); slowest drain {slowest_drain:?}",
        &by_size[1..],
        total.steps,
        total.pre_vote_rounds,
        total.restarts,
        stayed_down,
        total.transfers,
        total.transfers_completed,
        total.changes,
        total.configs_committed,
        total.joiners,
        total.isolated_joiners,
        total.resignations,
        total.writes,
        total.set_aside,
        total.reappended,
        total.duplicate_proposals,
        total.lost_with_removed,
        total.lost_with_power,
        total.power_losses,
        total.late_commits,
        describe_transitions(&transitions),
        worst.as_secs_f64() / ET.as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "{} schedules failed (replay one with {}):\n{}",
        failures.len(),
        replay_command(0).replace("=0", "=SEED"),
        failures.join("\n")
    );
}

/// `from->to: count` for every voter change that committed.
fn describe_transitions(transitions: &[[u32; MAX_DEVICES + 1]; MAX_DEVICES + 1]) -> String {
    let mut out = Vec::new();
    for (from, row) in transitions.iter().enumerate() {
        for (to, n) in row.iter().enumerate() {
            if *n > 0 {
                out.push(format!("{from}->{to}: {n}"));
            }
        }
    }
    out.join(", ")
}

/// Replays the schedule `LSYNC_SIM_SEED` (default 0), printing its trace when the variable is
/// set.
#[test]
fn replay() {
    let seed = std::env::var("LSYNC_SIM_SEED").ok().and_then(|v| v.parse().ok());
    let mut sim = world::build(seed.unwrap_or(0), true);
    let result = sim.run();
    if seed.is_some() {
        eprintln!("{}", sim.trace().unwrap_or_default());
    }
    match result {
        Ok(outcome) => eprintln!("seed {}: {outcome:?}", seed.unwrap_or(0)),
        Err(e) => panic!("seed {} failed: {e}", seed.unwrap_or(0)),
    }
}
