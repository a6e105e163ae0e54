//! Property test: the machine against a model leader's log and a model of the storage, through
//! a network that reorders, duplicates, loses and gaps answers (and delivers answers to
//! fetches the machine dropped). Checked at every step: every batch the machine applies
//! continues the follower's log exactly with the leader's entries; at most one batch applies;
//! the pipeline holds at most [`PIPELINE`] responses and [`FETCHES_IN_FLIGHT`] fetches; every
//! acknowledgement and heartbeat carries the log's real last position; the machine's position
//! is the log's whenever nothing is being written. Checked once the network behaves: the
//! follower ends caught up at the leader's last sequence with the leader's log, and every
//! request of the leader was answered exactly once.

use std::collections::{BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use lsync_protocol::{ChangeType, ErrorCode, SyncLogEntry, SyncMessage};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::SeedableRng;

use super::*;
use crate::transport::NetworkError;

const LIB: Uuid = Uuid::from_u128(0x11);

fn entry(sequence: u64, term: u64) -> SyncLogEntry {
    SyncLogEntry {
        sequence,
        term,
        origin_device: Uuid::nil(),
        timestamp_ms: 0,
        model_type: "tag".into(),
        record_id: format!("t{sequence}"),
        change_type: ChangeType::Insert,
        version: 1,
        data: vec![0; 20],
        proposal_id: None,
        hash: None,
        stamp: None,
    }
}

fn last_position(log: &[SyncLogEntry]) -> LogPosition {
    log.last().map(LogPosition::of).unwrap_or_default()
}

/// What the network does to one delivery.
#[derive(Debug, Clone, Copy)]
enum Fault {
    None,
    /// The answer arrives twice.
    Duplicate,
    /// The request times out.
    Lose,
    /// The answer starts `n` entries later than asked (or earlier, for `n == 0`).
    Gap(u64),
    /// An answer to a dropped fetch arrives anyway.
    Stale,
}

#[derive(Debug, Clone, Copy)]
enum Op {
    /// Deliver the pending completion at this index (modulo their number).
    Deliver(usize, Fault),
    /// The leader pushes entries `from..from + len` (from: the follower's next entry plus
    /// `skew`, which may be 0 or make them not continue the log).
    Push { skew: u64, len: u64 },
    /// The leader heartbeats the follower.
    LeaderHeartbeat,
    /// Time passes up to the machine's next deadline.
    Tick,
}

fn op() -> impl Strategy<Value = Op> {
    let fault = prop_oneof![
        6 => Just(Fault::None),
        1 => Just(Fault::Duplicate),
        1 => Just(Fault::Lose),
        1 => (0u64..4).prop_map(Fault::Gap),
        1 => Just(Fault::Stale),
    ];
    prop_oneof![
        10 => (any::<usize>(), fault).prop_map(|(i, f)| Op::Deliver(i, f)),
        1 => ((0u64..3), (1u64..6)).prop_map(|(skew, len)| Op::Push { skew, len }),
        1 => Just(Op::LeaderHeartbeat),
        1 => Just(Op::Tick),
    ]
}

/// A completion the shell would feed back.
#[derive(Debug, Clone)]
enum Pending {
    Fetch { id: RequestId, since: LogPosition, term: u64 },
    Apply { id: RequestId, entries: Vec<SyncLogEntry> },
    Ack { id: RequestId },
    Heartbeat { id: RequestId },
    Position,
    Reset,
    Settle,
    Recover,
}

struct World {
    leader: Vec<SyncLogEntry>,
    leader_term: u64,
    /// The leader's blocks (need not be the follower's `max_entries_per_response`).
    block: u64,
    follower: Vec<SyncLogEntry>,
    machine: Replicator<StdRng>,
    now: Instant,
    pending: VecDeque<Pending>,
    /// Fetches the machine dropped: (id, since, term).
    dropped: Vec<(RequestId, LogPosition, u64)>,
    in_flight: BTreeSet<RequestId>,
    replies_owed: BTreeSet<u64>,
    next_reply: u64,
}

impl World {
    fn term_at(&self, sequence: u64) -> Option<u64> {
        match sequence {
            0 => Some(0),
            s => self.leader.get(s as usize - 1).map(|e| e.term),
        }
    }

    /// The model leader's answer to `FetchEntries` after `since` in `term`.
    fn serve(&self, since: LogPosition, term: u64) -> SyncMessage {
        let n = self.leader.len() as u64;
        if term < self.leader_term {
            return SyncMessage::Error {
                leader_peer: None,
                term: self.leader_term,
                library_id: LIB,
                code: ErrorCode::StaleTerm,
                message: "stale".into(),
                leader_hint: None,
            };
        }
        if self.term_at(since.sequence) != Some(since.term) {
            return SyncMessage::SyncRequired {
                library_id: LIB,
                term: self.leader_term,
                reason: "diverged".into(),
                leader_last_sequence: n,
            };
        }
        let end = ((since.sequence / self.block) + 1) * self.block;
        let end = end.min(n);
        SyncMessage::EntriesResponse {
            commit_sequence: n,
            library_id: LIB,
            term: self.leader_term,
            entries: self.leader[since.sequence as usize..end as usize].to_vec(),
            has_more: end < n,
            leader_last_sequence: n,
        }
    }

    /// `answer` made to start elsewhere than asked.
    fn gapped(&self, since: LogPosition, answer: SyncMessage, shift: u64) -> SyncMessage {
        let SyncMessage::EntriesResponse { entries, .. } = &answer else { return answer };
        if entries.is_empty() {
            return answer;
        }
        let start =
            if shift == 0 { since.sequence.saturating_sub(1) } else { since.sequence + shift };
        let n = self.leader.len() as u64;
        if start == since.sequence || start >= n {
            return answer;
        }
        let end = (start + self.block).min(n);
        SyncMessage::EntriesResponse {
            commit_sequence: n,
            library_id: LIB,
            term: self.leader_term,
            entries: self.leader[start as usize..end as usize].to_vec(),
            has_more: end < n,
            leader_last_sequence: n,
        }
    }

    /// The model storage's `Applier::apply`.
    fn store(&mut self, entries: &[SyncLogEntry]) -> BatchOutcome {
        let last = self.follower.len() as u64;
        let mut skipped = 0;
        for e in entries {
            if e.sequence == 0 || e.sequence > last {
                break;
            }
            let local = self.follower[e.sequence as usize - 1].term;
            if local != e.term {
                return BatchOutcome::Diverged {
                    sequence: e.sequence,
                    local_term: local,
                    remote_term: e.term,
                };
            }
            skipped += 1;
        }
        for (expected, e) in (last + 1..).zip(&entries[skipped..]) {
            if e.sequence != expected {
                return BatchOutcome::Gap;
            }
        }
        self.follower.extend_from_slice(&entries[skipped..]);
        BatchOutcome::Applied { last: last_position(&self.follower), last_hash: None }
    }

    fn applying(&self) -> bool {
        self.pending.iter().any(|p| matches!(p, Pending::Apply { .. } | Pending::Reset))
    }

    /// Performs the machine's commands as a shell would, checking each.
    fn perform(&mut self, commands: Vec<Command>) {
        for command in commands {
            match command {
                Command::ReadPosition => self.pending.push_back(Pending::Position),
                Command::Fetch { id, since, term, .. } => {
                    self.in_flight.insert(id);
                    assert!(
                        self.in_flight.len() <= FETCHES_IN_FLIGHT,
                        "{} fetches in flight",
                        self.in_flight.len()
                    );
                    self.pending.push_back(Pending::Fetch { id, since, term });
                }
                Command::DropFetch { id } => {
                    self.in_flight.remove(&id);
                    if let Some(i) = self
                        .pending
                        .iter()
                        .position(|p| matches!(p, Pending::Fetch { id: f, .. } if *f == id))
                    {
                        if let Some(Pending::Fetch { id, since, term }) = self.pending.remove(i) {
                            self.dropped.push((id, since, term));
                        }
                    }
                }
                Command::Apply { id, entries } => {
                    assert!(!self.applying(), "a second batch while one applies");
                    let next = self.follower.len() as u64 + 1;
                    assert_eq!(
                        entries.first().map(|e| e.sequence),
                        Some(next),
                        "the batch does not continue the log"
                    );
                    for (e, sequence) in entries.iter().zip(next..) {
                        assert_eq!(e.sequence, sequence, "a batch with a hole");
                        assert_eq!(
                            Some(e),
                            self.leader.get(sequence as usize - 1),
                            "not the leader's entry"
                        );
                    }
                    self.pending.push_back(Pending::Apply { id, entries });
                }
                Command::Acknowledge { id, position, term, .. } => {
                    assert_eq!(position, last_position(&self.follower), "acknowledged position");
                    assert_eq!(term, self.machine.term());
                    assert!(
                        !self.pending.iter().any(|p| matches!(p, Pending::Ack { .. })),
                        "two acknowledgements in flight"
                    );
                    self.pending.push_back(Pending::Ack { id });
                }
                Command::Heartbeat { id, position, .. } => {
                    assert_eq!(position, last_position(&self.follower), "heartbeat position");
                    self.pending.push_back(Pending::Heartbeat { id });
                }
                Command::Reply { to, message } => {
                    assert!(self.replies_owed.remove(&to.0), "request {} answered twice", to.0);
                    if let SyncMessage::Acknowledge { up_to_sequence, .. } = message {
                        assert!(up_to_sequence <= self.follower.len() as u64);
                    }
                }
                Command::ResetForRepair => {
                    assert!(!self.applying(), "a reset while a batch applies");
                    self.pending.push_back(Pending::Reset);
                }
                Command::Settle => self.pending.push_back(Pending::Settle),
                Command::RecoverOrphans => self.pending.push_back(Pending::Recover),
                Command::AdoptTerm(term) => assert!(term <= self.leader_term),
                Command::WakeProposer
                | Command::Event(_)
                | Command::Repoint(_)
                | Command::Membership(_)
                | Command::LeaderCommit(_)
                | Command::CountMetric(..) => {}
            }
        }
        assert!(self.machine.responses_held() <= PIPELINE);
        if !self.applying() {
            if let Some(applied) = self.machine.applied() {
                assert_eq!(applied, last_position(&self.follower), "the machine's position");
            }
        }
    }

    /// Delivers pending completion `i` through `fault`.
    fn deliver(&mut self, i: usize, fault: Fault) {
        if let Fault::Stale = fault {
            if !self.dropped.is_empty() {
                let (id, since, term) = self.dropped[i % self.dropped.len()];
                let answer = self.serve(since, term);
                let commands = self.machine.on_fetched(id, Ok(answer), self.now);
                return self.perform(commands);
            }
        }
        if self.pending.is_empty() {
            return;
        }
        let Some(pending) = self.pending.remove(i % self.pending.len()) else { return };
        let now = self.now;
        let commands = match pending {
            Pending::Fetch { id, since, term } => {
                self.in_flight.remove(&id);
                let answer = match fault {
                    Fault::Lose => Err(NetworkError::Timeout),
                    Fault::Gap(shift) => Ok(self.gapped(since, self.serve(since, term), shift)),
                    _ => Ok(self.serve(since, term)),
                };
                let mut commands = self.machine.on_fetched(id, answer.clone(), now);
                if let Fault::Duplicate = fault {
                    self.perform(std::mem::take(&mut commands));
                    commands = self.machine.on_fetched(id, answer, now);
                }
                commands
            }
            Pending::Apply { id, entries } => {
                let outcome = self.store(&entries);
                self.machine.on_applied(id, outcome, now)
            }
            Pending::Ack { id } => {
                let answer = match fault {
                    Fault::Lose => Err(NetworkError::Timeout),
                    _ => Ok(self.leader_heartbeat()),
                };
                self.machine.on_acknowledged(id, answer)
            }
            Pending::Heartbeat { id } => {
                let answer = match fault {
                    Fault::Lose => Err(NetworkError::Timeout),
                    _ => Ok(self.leader_heartbeat()),
                };
                self.machine.on_heartbeat(id, answer, now)
            }
            Pending::Position => {
                let position = last_position(&self.follower);
                self.machine.on_position(Ok(position), now)
            }
            Pending::Reset => {
                let stashed = self.follower.len() as u64;
                self.follower.clear();
                self.machine.on_reset(Ok(stashed), now)
            }
            Pending::Settle => self.machine.on_settled(Ok(None), now),
            Pending::Recover => self.machine.on_orphans_recovered(Ok(None), now),
        };
        self.perform(commands);
    }

    fn leader_heartbeat(&self) -> SyncMessage {
        let n = self.leader.len() as u64;
        SyncMessage::Heartbeat {
            commit_sequence: n,
            features: lsync_protocol::FEATURE_VERSION,
            library_id: LIB,
            term: self.leader_term,
            current_sequence: n,
            last_term: self.leader.last().map_or(0, |e| e.term),
            role: SyncRole::Leader,
            last_hash: None,
        }
    }

    fn request(&mut self, message: SyncMessage) {
        let to = ReplyTo(self.next_reply);
        self.next_reply += 1;
        self.replies_owed.insert(to.0);
        let commands = self.machine.on_request(to, true, message, self.now);
        self.perform(commands);
    }

    fn push(&mut self, skew: u64, len: u64) {
        let n = self.leader.len() as u64;
        let from = self.follower.len() as u64 + 1 + skew;
        if from > n {
            return;
        }
        let to = (from + len - 1).min(n);
        let message = SyncMessage::NewEntries {
            commit_sequence: n,
            library_id: LIB,
            term: self.leader_term,
            from_sequence: from,
            to_sequence: to,
            entry_count: to - from + 1,
            prev_term: self.term_at(from - 1).unwrap_or(0),
            entries: self.leader[from as usize - 1..to as usize].to_vec(),
            prev_hash: None,
        };
        self.request(message);
    }

    fn tick(&mut self) {
        if let Some(at) = self.machine.next_deadline() {
            self.now = self.now.max(at);
            let commands = self.machine.tick(self.now);
            self.perform(commands);
        }
    }
}

/// A leader log of `n` entries whose term rises at the given sequences, and a follower that
/// holds its first `prefix` entries (at most `n`) then `diverged` entries of a term the leader
/// never had.
#[allow(clippy::too_many_arguments)]
fn world(
    n: u64,
    rises: &BTreeSet<u64>,
    prefix: u64,
    diverged: u64,
    block: u64,
    follower_block: u64,
    max_bytes: usize,
    ack_every: u64,
    seed: u64,
) -> World {
    let mut term = 1;
    let leader: Vec<_> = (1..=n)
        .map(|s| {
            if rises.contains(&s) {
                term += 1;
            }
            entry(s, term)
        })
        .collect();
    let leader_term = term + u64::from(rises.contains(&0));
    let prefix = prefix.min(n);
    let mut follower = leader[..prefix as usize].to_vec();
    follower.extend((prefix + 1..=prefix + diverged).map(|s| entry(s, 1_000)));
    let config = SyncConfig {
        heartbeat_interval: Duration::from_millis(500),
        backoff_initial: Duration::from_millis(10),
        backoff_max: Duration::from_millis(200),
        max_entries_per_response: follower_block,
        max_response_bytes: max_bytes,
        ack_every,
        ..SyncConfig::default()
    };
    let leader_ref = Leader { device: None, peer: "leader".into() };
    World {
        leader,
        leader_term,
        block,
        follower,
        machine: Replicator::new(LIB, leader_ref, 1, config, StdRng::seed_from_u64(seed)),
        now: Instant::now(),
        pending: VecDeque::new(),
        dropped: Vec::new(),
        in_flight: BTreeSet::new(),
        replies_owed: BTreeSet::new(),
        next_reply: 0,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn the_follower_applies_only_continuations_and_catches_up_once_the_network_behaves(
        n in 0u64..80,
        rises in proptest::collection::btree_set(0u64..80, 0..4),
        prefix in 0u64..80,
        diverged in prop_oneof![3 => Just(0u64), 1 => 1u64..5],
        block in 3u64..12,
        follower_block in prop_oneof![Just(None), (3u64..12).prop_map(Some)],
        max_bytes in 200usize..2_000,
        ack_every in 1u64..40,
        seed in any::<u64>(),
        ops in proptest::collection::vec(op(), 0..250),
    ) {
        let follower_block = follower_block.unwrap_or(block);
        let mut w = world(
            n, &rises, prefix, diverged, block, follower_block, max_bytes, ack_every, seed,
        );
        let commands = w.machine.start(w.now);
        w.perform(commands);
        for op in ops {
            match op {
                Op::Deliver(i, fault) => w.deliver(i, fault),
                Op::Push { skew, len } => w.push(skew, len),
                Op::LeaderHeartbeat => {
                    let heartbeat = w.leader_heartbeat();
                    w.request(heartbeat);
                }
                Op::Tick => w.tick(),
            }
        }
        // The network behaves: everything is delivered in order, time passes when nothing is
        // pending.
        let mut steps = 0;
        while !(w.pending.is_empty()
            && w.follower == w.leader
            && w.machine.status().state == FollowerState::CaughtUp)
        {
            steps += 1;
            prop_assert!(steps < 20_000, "no progress: {:?}", w.machine.status());
            if w.pending.is_empty() {
                prop_assert!(w.machine.next_deadline().is_some(), "stuck: {:?}", w.machine);
                w.tick();
            } else {
                w.deliver(0, Fault::None);
            }
        }
        prop_assert_eq!(w.machine.applied(), Some(last_position(&w.leader)));
        prop_assert!(w.replies_owed.is_empty(), "unanswered: {:?}", w.replies_owed);
    }
}
