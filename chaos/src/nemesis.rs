//! The nemesis's choices: which fault each cycle injects, on which devices, for how long.
//! Pure: every choice is drawn from the run's seeded rng, so one seed gives one schedule of
//! faults and writes (the processes' timing, not seeded, varies from run to run). What each
//! fault does is in docs/testing.md, "The nemesis"; [`crate::run`] carries the plans out.

use rand::rngs::StdRng;
use rand::Rng;
use serde::Serialize;

/// A kind of fault, as counted in the summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// kill -9 of a device chosen at random, then a restart.
    Kill,
    /// kill -9 of the leader, then a restart.
    KillLeader,
    /// kill -9 of the leader right after a burst of writes to it, then a restart.
    KillLeaderAfterBurst,
    /// A restart (after a kill) on another libp2p port, another control port and another
    /// announced address.
    RestartOtherPort,
    /// SIGSTOP for longer than the leader timeout, then SIGCONT.
    Pause,
    /// Both directions between two devices cut, then healed.
    Partition,
    /// One direction between two devices cut, then healed.
    OneWayPartition,
    /// Every link of the leader cut, then healed.
    IsolateLeader,
    /// A device stopped cleanly and its library database copied aside, then restarted.
    Snapshot,
    /// A device stopped and an older copy of its database put back, then restarted.
    Restore,
}

impl FaultKind {
    /// Every kind, for the summary's counters.
    pub const ALL: [FaultKind; 10] = [
        FaultKind::Kill,
        FaultKind::KillLeader,
        FaultKind::KillLeaderAfterBurst,
        FaultKind::RestartOtherPort,
        FaultKind::Pause,
        FaultKind::Partition,
        FaultKind::OneWayPartition,
        FaultKind::IsolateLeader,
        FaultKind::Snapshot,
        FaultKind::Restore,
    ];

    /// The summary's name of the kind.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::KillLeader => "kill_leader",
            FaultKind::KillLeaderAfterBurst => "kill_leader_after_burst",
            FaultKind::RestartOtherPort => "restart_other_port",
            FaultKind::Pause => "pause",
            FaultKind::Partition => "partition",
            FaultKind::OneWayPartition => "one_way_partition",
            FaultKind::IsolateLeader => "isolate_leader",
            FaultKind::Snapshot => "snapshot",
            FaultKind::Restore => "restore",
        }
    }
}

/// Who a fault hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Victim {
    /// This device.
    Device(usize),
    /// Whichever device leads when the fault starts (this one if none is found).
    Leader { fallback: usize },
}

/// One cycle's fault, every choice made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// kill -9 the victim; `burst` writes go to it just before (0: no burst, the cycle's writes
    /// are spread); it stays down `down_ms`, then restarts (on other ports if `elsewhere`).
    Kill { victim: Victim, burst: usize, burst_lead_ms: u64, down_ms: u64, elsewhere: bool },
    /// SIGSTOP the victim for `pause_ms`.
    Pause { victim: Victim, pause_ms: u64 },
    /// Cut `a → b` (and `b → a` unless `one_way`) for `cut_ms`.
    Partition { a: usize, b: usize, one_way: bool, cut_ms: u64 },
    /// Cut every link of the leader for `cut_ms`.
    IsolateLeader { fallback: usize, cut_ms: u64 },
    /// Stop the device, copy its database aside, start it.
    Snapshot { device: usize },
    /// Stop the device, put its older copy back, start it.
    Restore { device: usize },
}

impl Plan {
    /// The kind the summary counts it under (a kill restarted elsewhere also counts
    /// [`FaultKind::RestartOtherPort`]).
    pub fn kind(&self) -> FaultKind {
        match self {
            Plan::Kill { victim: Victim::Device(_), .. } => FaultKind::Kill,
            Plan::Kill { burst: 0, .. } => FaultKind::KillLeader,
            Plan::Kill { .. } => FaultKind::KillLeaderAfterBurst,
            Plan::Pause { .. } => FaultKind::Pause,
            Plan::Partition { one_way: false, .. } => FaultKind::Partition,
            Plan::Partition { one_way: true, .. } => FaultKind::OneWayPartition,
            Plan::IsolateLeader { .. } => FaultKind::IsolateLeader,
            Plan::Snapshot { .. } => FaultKind::Snapshot,
            Plan::Restore { .. } => FaultKind::Restore,
        }
    }
}

/// Draws one cycle's fault of a kind in `allowed` (every kind when empty; a kill is restarted
/// on other ports only if [`FaultKind::RestartOtherPort`] is allowed too): [`plan`] again
/// until one is, at most 10,000 times (then the last one drawn).
pub fn plan_among(
    rng: &mut StdRng,
    allowed: &[FaultKind],
    devices: usize,
    with_copy: &[bool],
    writes_per_cycle: usize,
    leader_timeout_ms: u64,
) -> Plan {
    let mut p = plan(rng, devices, with_copy, writes_per_cycle, leader_timeout_ms);
    if allowed.is_empty() {
        return p;
    }
    for _ in 0..10_000 {
        if allowed.contains(&p.kind()) {
            break;
        }
        p = plan(rng, devices, with_copy, writes_per_cycle, leader_timeout_ms);
    }
    if let Plan::Kill { elsewhere, .. } = &mut p {
        *elsewhere &= allowed.contains(&FaultKind::RestartOtherPort);
    }
    p
}

/// The kinds named in a comma-separated list of summary names (`kill_leader,restore`).
pub fn parse_kinds(list: &str) -> Result<Vec<FaultKind>, String> {
    list.split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(|n| {
            FaultKind::ALL.into_iter().find(|k| k.name() == n).ok_or_else(|| {
                let names: Vec<&str> = FaultKind::ALL.iter().map(|k| k.name()).collect();
                format!("unknown fault {n:?}: one of {}", names.join(", "))
            })
        })
        .collect()
}

/// Draws one cycle's fault. `devices` ≥ 2; `with_copy[d]`: device `d` has an older copy of its
/// database to restore; `leader_timeout_ms` scales the durations (a fault lasts between
/// 1.5 and 4 leader timeouts, long enough for an election).
pub fn plan(
    rng: &mut StdRng,
    devices: usize,
    with_copy: &[bool],
    writes_per_cycle: usize,
    leader_timeout_ms: u64,
) -> Plan {
    let lt = leader_timeout_ms.max(1);
    let long = |rng: &mut StdRng| rng.gen_range(lt * 3 / 2..=lt * 4);
    let any = |rng: &mut StdRng| rng.gen_range(0..devices);
    let pair = |rng: &mut StdRng| {
        let a = rng.gen_range(0..devices);
        let b = (a + rng.gen_range(1..devices)) % devices;
        (a, b)
    };
    match rng.gen_range(0..100u32) {
        0..=14 => Plan::Kill {
            victim: Victim::Device(any(rng)),
            burst: 0,
            burst_lead_ms: 0,
            down_ms: long(rng),
            elsewhere: rng.gen_bool(0.3),
        },
        15..=29 => Plan::Kill {
            victim: Victim::Leader { fallback: any(rng) },
            burst: 0,
            burst_lead_ms: 0,
            down_ms: long(rng),
            elsewhere: rng.gen_bool(0.3),
        },
        30..=44 => Plan::Kill {
            victim: Victim::Leader { fallback: any(rng) },
            burst: writes_per_cycle.max(1),
            burst_lead_ms: rng.gen_range(0..=40),
            down_ms: long(rng),
            elsewhere: rng.gen_bool(0.3),
        },
        45..=56 => {
            let victim = if rng.gen_bool(0.5) {
                Victim::Leader { fallback: any(rng) }
            } else {
                Victim::Device(any(rng))
            };
            Plan::Pause { victim, pause_ms: long(rng) }
        }
        57..=68 => {
            let (a, b) = pair(rng);
            Plan::Partition { a, b, one_way: false, cut_ms: long(rng) }
        }
        69..=80 => {
            let (a, b) = pair(rng);
            Plan::Partition { a, b, one_way: true, cut_ms: long(rng) }
        }
        81..=88 => Plan::IsolateLeader { fallback: any(rng), cut_ms: long(rng) },
        _ => {
            let with: Vec<usize> =
                (0..devices).filter(|&d| with_copy.get(d) == Some(&true)).collect();
            if !with.is_empty() && rng.gen_bool(0.6) {
                Plan::Restore { device: with[rng.gen_range(0..with.len())] }
            } else {
                Plan::Snapshot { device: any(rng) }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use rand::SeedableRng;

    use super::*;

    #[test]
    fn only_allowed_kinds_are_drawn() {
        let mut rng = StdRng::seed_from_u64(5);
        let allowed = [FaultKind::KillLeader, FaultKind::Restore, FaultKind::Snapshot];
        for _ in 0..500 {
            let p = plan_among(&mut rng, &allowed, 3, &[true, false, false], 10, 1000);
            assert!(allowed.contains(&p.kind()), "{p:?}");
            if let Plan::Kill { elsewhere, .. } = p {
                assert!(!elsewhere, "restarts on other ports were not allowed");
            }
        }
    }

    #[test]
    fn fault_lists_name_kinds_by_their_summary_names() {
        assert_eq!(
            parse_kinds("kill_leader, restore").unwrap(),
            vec![FaultKind::KillLeader, FaultKind::Restore]
        );
        assert!(parse_kinds("kill,nope").unwrap_err().contains("unknown fault \"nope\""));
    }

    #[test]
    fn one_seed_gives_one_schedule() {
        let draw = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..50).map(|_| plan(&mut rng, 3, &[true, false, false], 10, 1000)).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn every_kind_but_the_restart_elsewhere_is_drawn() {
        let mut rng = StdRng::seed_from_u64(1);
        let kinds: BTreeSet<FaultKind> =
            (0..2000).map(|_| plan(&mut rng, 3, &[true, true, true], 10, 1000).kind()).collect();
        let expected: BTreeSet<FaultKind> =
            FaultKind::ALL.into_iter().filter(|k| *k != FaultKind::RestartOtherPort).collect();
        assert_eq!(kinds, expected);
    }

    #[test]
    fn a_restore_needs_a_copy_and_pairs_are_two_devices() {
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..2000 {
            match plan(&mut rng, 3, &[false, true, false], 10, 1000) {
                Plan::Restore { device } => assert_eq!(device, 1),
                Plan::Partition { a, b, .. } => assert!(a != b && a < 3 && b < 3),
                Plan::Kill { down_ms, .. } | Plan::Pause { pause_ms: down_ms, .. } => {
                    assert!((1500..=4000).contains(&down_ms))
                }
                _ => {}
            }
        }
    }
}
