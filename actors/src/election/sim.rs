//! A discrete-event simulator of a library's election: thousands of seeded schedules with
//! message loss, delay, duplication and reordering, partitions and their healing, crashes and
//! restarts (a restarted device is rebuilt from its last [`Action::Persist`] only), leaders
//! appending to their logs and leadership transfers. Every device shares one [`Membership`]:
//! two, three or five voters, and in some schedules one or two learners; pre-vote and check
//! quorum are on (the defaults). Invariants are checked after every step:
//!
//! - at most one leader per term, over the whole run (every library size);
//! - terms never decrease on a device, across restarts too;
//! - a persisted vote never changes within a term, a persisted term never decreases;
//! - the machine's state equals what it last asked to persist once its actions are performed,
//!   and every vote request, granted vote and heartbeat is sent only after the Persist it
//!   depends on; a pre-vote request or grant asks for a term above the persisted one;
//! - a device that is not a voter never sends a vote or pre-vote request, nor grants either
//!   (the learners are asked too, as by a candidate whose configuration counts them as voters);
//! - liveness: once the network heals (no loss, no partition) with a majority of the voters up
//!   (and every learner), a leader followed by every up device emerges within
//!   [`LIVENESS_TIMEOUTS`] election timeouts.
//!
//! Set `LSYNC_ELECTION_SCHEDULES` to run more schedules than the default.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

const ET: Duration = Duration::from_millis(100);
const HB: Duration = Duration::from_millis(30);
const LIVENESS_TIMEOUTS: u32 = 10;

#[derive(Debug, Clone, Copy)]
enum Msg {
    Vote(VoteRequest),
    VoteReply(VoteResponse),
    Heartbeat { term: u64, log: LogPosition },
    Ack { term: u64 },
    TimeoutNow { term: u64 },
}

#[derive(Debug, Clone, Copy)]
enum Event {
    Deliver { from: usize, to: usize, msg: Msg },
    Tick(usize),
    Chaos,
    Append,
    CaughtUp { leader: usize, to: usize },
    Heal,
}

struct Scheduled {
    at: Duration,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    /// Reversed: the heap pops the earliest event first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

struct Node {
    id: Uuid,
    machine: Option<Election<StdRng>>,
    persisted: PersistedElection,
    log: LogPosition,
    max_term: u64,
    timer_at: Option<Duration>,
    group: u8,
    /// The term of the election this node started on a TimeoutNow.
    transfer_term: Option<u64>,
    /// A voter (else a learner).
    voter: bool,
}

/// What one schedule did.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Outcome {
    pub steps: u64,
    /// From healing to a leader followed by every up device.
    pub heal_to_leader: Duration,
    pub leaders: usize,
    pub restarts: u32,
    pub transfers: u32,
    /// Transfers whose target won the election it started on TimeoutNow.
    pub transfers_completed: u32,
    /// Pre-vote rounds that asked other voters.
    pub pre_vote_rounds: u32,
    /// Whether the library had learners.
    pub learners: bool,
}

struct Sim {
    rng: StdRng,
    base: Instant,
    now: Duration,
    seq: u64,
    queue: BinaryHeap<Scheduled>,
    nodes: Vec<Node>,
    membership: Membership,
    config: ElectionConfig,
    loss: f64,
    duplicate: f64,
    max_delay_ms: u64,
    chaos_until: Duration,
    healed_at: Option<Duration>,
    /// Every leader of the run, by term.
    leaders: BTreeMap<u64, Uuid>,
    outcome: Outcome,
    trace: Option<String>,
}

/// Runs one schedule of a library of `size` voters (and, in some schedules, learners).
pub(super) fn run(seed: u64, size: usize, verbose: bool) -> Result<Outcome, String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let config = ElectionConfig::new(HB, ET);
    let learners = if rng.gen_bool(0.3) { rng.gen_range(1..=2) } else { 0 };
    let ids: Vec<Uuid> = (0..size + learners).map(|_| Uuid::from_u128(rng.gen())).collect();
    let membership = Membership::new(
        ids[..size].iter().copied().collect(),
        ids[size..].iter().copied().collect(),
    );
    // 0: a new library whose members have not heard of its creator yet; 1: they have;
    // 2: a library whose leader just left it (every member a follower of term 4, no leader).
    let start = rng.gen_range(0..3);
    let nodes = ids
        .iter()
        .enumerate()
        .map(|(i, &id)| {
            let persisted = match start {
                2 => PersistedElection { term: 4, voted_for: None, leader: None },
                _ if i == 0 => PersistedElection::founder(id),
                1 => PersistedElection { term: 1, voted_for: None, leader: Some(ids[0]) },
                _ => PersistedElection::default(),
            };
            Node {
                id,
                machine: None,
                persisted,
                log: LogPosition::default(),
                max_term: persisted.term,
                timer_at: None,
                group: 0,
                transfer_term: None,
                voter: i < size,
            }
        })
        .collect();
    let mut sim = Sim {
        loss: if rng.gen_bool(0.2) { 0.0 } else { rng.gen_range(0.0..0.3) },
        duplicate: rng.gen_range(0.0..0.1),
        max_delay_ms: *[5u64, 20, 50, 150].get(rng.gen_range(0..4)).unwrap_or(&20),
        chaos_until: ET * rng.gen_range(5..25),
        rng,
        base: Instant::now(),
        now: Duration::ZERO,
        seq: 0,
        queue: BinaryHeap::new(),
        nodes,
        membership,
        config,
        healed_at: None,
        leaders: BTreeMap::new(),
        outcome: Outcome { learners: learners > 0, ..Outcome::default() },
        trace: verbose.then(String::new),
    };
    for i in 0..size + learners {
        sim.start(i)?;
    }
    sim.schedule(Duration::from_millis(1), Event::Chaos);
    sim.schedule(Duration::from_millis(10), Event::Append);
    sim.schedule(sim.chaos_until, Event::Heal);
    sim.run().map_err(|e| match &sim.trace {
        Some(trace) => format!("{e}\n--- trace ---\n{trace}"),
        None => e,
    })
}

impl Sim {
    fn at(&self) -> Instant {
        self.base + self.now
    }

    fn log(&mut self, line: impl FnOnce() -> String) {
        if let Some(trace) = &mut self.trace {
            let _ = writeln!(trace, "{:>6}ms {}", self.now.as_millis(), line());
        }
    }

    fn schedule(&mut self, after: Duration, event: Event) {
        self.seq += 1;
        self.queue.push(Scheduled { at: self.now + after, seq: self.seq, event });
    }

    fn index(&self, id: Uuid) -> Option<usize> {
        self.nodes.iter().position(|n| n.id == id)
    }

    fn up(&self, i: usize) -> bool {
        self.nodes[i].machine.is_some()
    }

    /// (Re)builds node `i`'s machine from its persisted state.
    fn start(&mut self, i: usize) -> Result<(), String> {
        let seed = self.rng.gen();
        let node = &mut self.nodes[i];
        let mut machine = Election::new(
            node.id,
            self.membership.clone(),
            node.persisted,
            self.config,
            self.base + self.now,
            StdRng::seed_from_u64(seed),
        );
        machine.set_last_log(node.log);
        if machine.term() < node.max_term {
            return Err(format!(
                "node {i} restarted at term {} < {}",
                machine.term(),
                node.max_term
            ));
        }
        node.machine = Some(machine);
        node.timer_at = None;
        self.log(|| format!("node {i} up"));
        self.after_step(i)
    }

    fn run(&mut self) -> Result<Outcome, String> {
        let limit = self.chaos_until + ET * LIVENESS_TIMEOUTS;
        while let Some(Scheduled { at, event, .. }) = self.queue.pop() {
            self.now = at;
            self.outcome.steps += 1;
            if self.now > limit {
                return Err(format!(
                    "no stable leader {LIVENESS_TIMEOUTS} election timeouts after healing: {}",
                    self.describe()
                ));
            }
            self.handle(event)?;
            self.check()?;
            if let Some(healed) = self.healed_at {
                if self.stable_leader() {
                    self.outcome.heal_to_leader = self.now - healed;
                    self.outcome.leaders = self.leaders.len();
                    return Ok(self.outcome);
                }
            }
        }
        Err("event queue ran dry".into())
    }

    fn describe(&self) -> String {
        let mut out = String::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let _ = match &n.machine {
                Some(m) => write!(
                    out,
                    "[{i}: {} term {} leader {:?} log {}] ",
                    m.role(),
                    m.term(),
                    m.leader().and_then(|l| self.index(l)),
                    n.log
                ),
                None => write!(out, "[{i}: down] "),
            };
        }
        out
    }

    fn handle(&mut self, event: Event) -> Result<(), String> {
        match event {
            Event::Deliver { from, to, msg } => self.deliver(from, to, msg),
            Event::Tick(i) => {
                if self.nodes[i].timer_at == Some(self.now) {
                    self.nodes[i].timer_at = None;
                }
                let now = self.at();
                let Some(m) = self.nodes[i].machine.as_mut() else { return Ok(()) };
                let actions = m.tick(now);
                self.execute(i, actions)?;
                self.after_step(i)
            }
            Event::Append => {
                for i in 0..self.nodes.len() {
                    let node = &mut self.nodes[i];
                    let Some(m) = node.machine.as_mut() else { continue };
                    if m.is_leader() {
                        let log = LogPosition { term: m.term(), sequence: node.log.sequence + 1 };
                        m.set_last_log(log);
                        node.log = log;
                    }
                }
                let next = Duration::from_millis(self.rng.gen_range(5..40));
                self.schedule(next, Event::Append);
                Ok(())
            }
            Event::Chaos => {
                if self.healed_at.is_none() {
                    self.chaos()?;
                    let next = Duration::from_millis(self.rng.gen_range(5..200));
                    self.schedule(next, Event::Chaos);
                }
                Ok(())
            }
            Event::CaughtUp { leader, to } => {
                if !self.up(leader) || !self.up(to) || !self.linked(leader, to) {
                    return Ok(());
                }
                let log = self.nodes[leader].log;
                self.nodes[to].log = log;
                let to_id = self.nodes[to].id;
                let now = self.at();
                if let Some(m) = self.nodes[to].machine.as_mut() {
                    m.set_last_log(log);
                }
                let Some(m) = self.nodes[leader].machine.as_mut() else { return Ok(()) };
                let actions = m.on_target_caught_up(to_id, now);
                self.execute(leader, actions)?;
                self.after_step(leader)
            }
            Event::Heal => {
                self.healed_at = Some(self.now);
                self.loss = 0.0;
                self.duplicate = 0.0;
                self.max_delay_ms = self.max_delay_ms.min(20);
                for n in &mut self.nodes {
                    n.group = 0;
                }
                // Everyone up but a random minority of the voters.
                let voters = self.membership.voters().len();
                let may_stay_down = voters - majority_of(voters);
                let mut down: Vec<usize> = (0..self.nodes.len()).filter(|i| !self.up(*i)).collect();
                // Down voters first (the nodes are voters first), then learners, which all come
                // back up.
                let down_voters = down.iter().filter(|i| self.nodes[**i].voter).count();
                let stay_down = self.rng.gen_range(0..=may_stay_down.min(down_voters));
                down.drain(down_voters - stay_down..down_voters);
                for i in down {
                    self.outcome.restarts += 1;
                    self.start(i)?;
                }
                self.log(|| "healed".into());
                Ok(())
            }
        }
    }

    fn chaos(&mut self) -> Result<(), String> {
        let size = self.nodes.len();
        match self.rng.gen_range(0..6) {
            0 => {
                let groups = self.rng.gen_range(1..=3u8);
                for n in &mut self.nodes {
                    n.group = self.rng.gen_range(0..groups);
                }
                let groups: Vec<u8> = self.nodes.iter().map(|n| n.group).collect();
                self.log(|| format!("partition {groups:?}"));
            }
            1 => {
                for n in &mut self.nodes {
                    n.group = 0;
                }
                self.log(|| "partitions healed".into());
            }
            2 => {
                let i = self.rng.gen_range(0..size);
                if self.up(i) {
                    self.nodes[i].machine = None;
                    self.nodes[i].timer_at = None;
                    self.log(|| format!("node {i} crashed"));
                }
            }
            3 => {
                let i = self.rng.gen_range(0..size);
                if !self.up(i) {
                    self.outcome.restarts += 1;
                    self.start(i)?;
                }
            }
            _ => {
                let leader = (0..size)
                    .find(|i| self.nodes[*i].machine.as_ref().is_some_and(|m| m.is_leader()));
                let to = self.rng.gen_range(0..size);
                if let Some(leader) = leader {
                    let to_id = self.nodes[to].id;
                    let now = self.at();
                    let Some(m) = self.nodes[leader].machine.as_mut() else { return Ok(()) };
                    if m.transfer_leadership(to_id, now).is_ok() {
                        self.outcome.transfers += 1;
                        self.log(|| format!("transfer {leader} -> {to}"));
                        let delay = Duration::from_millis(self.rng.gen_range(0..80));
                        self.schedule(delay, Event::CaughtUp { leader, to });
                    }
                }
            }
        }
        Ok(())
    }

    fn linked(&self, a: usize, b: usize) -> bool {
        self.nodes[a].group == self.nodes[b].group
    }

    fn send(&mut self, from: usize, to: usize, msg: Msg) {
        if !self.linked(from, to) {
            return;
        }
        let copies = if self.rng.gen_bool(self.duplicate) { 2 } else { 1 };
        for _ in 0..copies {
            if self.rng.gen_bool(self.loss) {
                continue;
            }
            let delay = Duration::from_millis(self.rng.gen_range(1..=self.max_delay_ms));
            self.schedule(delay, Event::Deliver { from, to, msg });
        }
    }

    fn deliver(&mut self, from: usize, to: usize, msg: Msg) -> Result<(), String> {
        if !self.up(to) || !self.linked(from, to) {
            return Ok(());
        }
        self.log(|| format!("{from} -> {to}: {msg:?}"));
        let from_id = self.nodes[from].id;
        let now = self.at();
        let Some(m) = self.nodes[to].machine.as_mut() else { return Ok(()) };
        match msg {
            Msg::Vote(request) => {
                let actions = m.on_vote_request(request, now);
                self.execute(to, actions)?;
            }
            Msg::VoteReply(response) => {
                let actions = m.on_vote_response(response, now);
                self.execute(to, actions)?;
            }
            Msg::Heartbeat { term, log } => {
                let (verdict, actions) = m.on_leader_message(from_id, term, now);
                self.execute(to, actions)?;
                match verdict {
                    LeaderVerdict::Accepted => {
                        // Replication, instantly: the follower's log becomes the leader's
                        // (a diverged tail is rebuilt from the leader).
                        self.nodes[to].log = log;
                        let Some(m) = self.nodes[to].machine.as_mut() else { return Ok(()) };
                        m.set_last_log(log);
                        let term = m.term();
                        self.send(to, from, Msg::Ack { term });
                    }
                    LeaderVerdict::Stale { current_term, .. } => {
                        self.send(to, from, Msg::Ack { term: current_term });
                    }
                    LeaderVerdict::Refused => {}
                }
            }
            Msg::Ack { term } => {
                let actions = m.on_follower_response(from_id, term, now);
                self.execute(to, actions)?;
            }
            Msg::TimeoutNow { term } => {
                let actions = m.on_timeout_now(from_id, term, now);
                self.nodes[to].transfer_term = actions.iter().find_map(|a| match a {
                    Action::BecomeCandidate { term } | Action::BecomeLeader { term } => Some(*term),
                    _ => None,
                });
                self.execute(to, actions)?;
            }
        }
        self.after_step(to)
    }

    /// Performs node `i`'s actions in order, checking that each send follows the Persist it
    /// depends on.
    fn execute(&mut self, i: usize, actions: Vec<Action>) -> Result<(), String> {
        let me = self.nodes[i].id;
        let voter = self.nodes[i].voter;
        let mut learners_asked = false;
        for action in actions {
            self.log(|| format!("  node {i}: {action:?}"));
            let p = self.nodes[i].persisted;
            match action {
                Action::Persist { term, voted_for, leader } => {
                    if term < p.term {
                        return Err(format!("node {i} persisted term {term} < {}", p.term));
                    }
                    if term == p.term && p.voted_for.is_some() && voted_for != p.voted_for {
                        return Err(format!(
                            "node {i} changed its vote in term {term}: {:?} -> {voted_for:?}",
                            p.voted_for
                        ));
                    }
                    if term == p.term
                        && p.leader.is_some()
                        && leader.is_some()
                        && leader != p.leader
                    {
                        return Err(format!("node {i} changed the leader of term {term}"));
                    }
                    self.nodes[i].persisted = PersistedElection { term, voted_for, leader };
                }
                Action::BecomeLeader { term } => {
                    if (p.term, p.leader) != (term, Some(me)) {
                        return Err(format!("node {i} leads {term} before persisting it: {p:?}"));
                    }
                    if self.nodes[i].transfer_term == Some(term) {
                        self.outcome.transfers_completed += 1;
                    }
                }
                Action::BecomeFollower { term, .. } | Action::BecomeCandidate { term } => {
                    if p.term != term {
                        return Err(format!("node {i} changed role in {term} unpersisted: {p:?}"));
                    }
                }
                Action::SendRequestVote { to, request } => {
                    if !voter {
                        return Err(format!("node {i}, not a voter, asks for votes: {request:?}"));
                    }
                    if request.pre_vote {
                        if request.term <= p.term {
                            return Err(format!("node {i} pre-votes for an old term: {p:?}"));
                        }
                    } else if (p.term, p.voted_for) != (request.term, Some(me)) {
                        return Err(format!("node {i} asks votes before persisting: {p:?}"));
                    }
                    let Some(to) = self.index(to) else { return Err("unknown member".into()) };
                    self.send(i, to, Msg::Vote(request));
                    if !learners_asked {
                        self.outcome.pre_vote_rounds += u32::from(request.pre_vote);
                        // The learners are asked too, as by a candidate whose configuration
                        // still counts them as voters: they must refuse.
                        learners_asked = true;
                        let learners: Vec<usize> =
                            (0..self.nodes.len()).filter(|l| !self.nodes[*l].voter).collect();
                        for l in learners {
                            self.send(i, l, Msg::Vote(request));
                        }
                    }
                }
                Action::SendVoteResponse { to, response } => {
                    if response.granted && !voter {
                        return Err(format!("node {i}, not a voter, grants a vote: {response:?}"));
                    }
                    if response.granted && response.pre_vote {
                        if response.term <= p.term {
                            return Err(format!("node {i} grants a pre-vote for an old term"));
                        }
                    } else if response.granted && (p.term, p.voted_for) != (response.term, Some(to))
                    {
                        return Err(format!("node {i} grants a vote before persisting: {p:?}"));
                    }
                    if let Some(to) = self.index(to) {
                        self.send(i, to, Msg::VoteReply(response));
                    }
                }
                Action::SendHeartbeats { term } => {
                    if (p.term, p.leader) != (term, Some(me)) {
                        return Err(format!("node {i} heartbeats before persisting: {p:?}"));
                    }
                    let log = self.nodes[i].log;
                    for to in 0..self.nodes.len() {
                        if to != i {
                            self.send(i, to, Msg::Heartbeat { term, log });
                        }
                    }
                }
                Action::SendTimeoutNow { to, term } => {
                    if let Some(to) = self.index(to) {
                        self.send(i, to, Msg::TimeoutNow { term });
                    }
                }
                Action::TransferAborted { .. } => {}
            }
        }
        Ok(())
    }

    /// Re-arms node `i`'s timer.
    fn after_step(&mut self, i: usize) -> Result<(), String> {
        let Some(m) = self.nodes[i].machine.as_ref() else { return Ok(()) };
        let Some(deadline) = m.next_deadline() else { return Ok(()) };
        let at = deadline.saturating_duration_since(self.base).max(self.now);
        if self.nodes[i].timer_at.is_none_or(|t| at < t) {
            self.nodes[i].timer_at = Some(at);
            self.seq += 1;
            self.queue.push(Scheduled { at, seq: self.seq, event: Event::Tick(i) });
        }
        Ok(())
    }

    fn check(&mut self) -> Result<(), String> {
        for i in 0..self.nodes.len() {
            let node = &mut self.nodes[i];
            let Some(m) = node.machine.as_ref() else { continue };
            if m.term() < node.max_term {
                return Err(format!(
                    "node {i}'s term went back to {} < {}",
                    m.term(),
                    node.max_term
                ));
            }
            node.max_term = m.term();
            if m.persisted() != node.persisted {
                return Err(format!(
                    "node {i} holds {:?}, persisted {:?}",
                    m.persisted(),
                    node.persisted
                ));
            }
            if m.is_leader() {
                let (id, term) = (node.id, m.term());
                if *self.leaders.entry(term).or_insert(id) != id {
                    return Err(format!("two leaders in term {term}: {}", self.describe()));
                }
            }
        }
        Ok(())
    }

    /// A leader that every up device follows in its term.
    fn stable_leader(&self) -> bool {
        let Some(leader) =
            self.nodes.iter().find_map(|n| n.machine.as_ref().filter(|m| m.is_leader()))
        else {
            return false;
        };
        let (id, term) = (leader.me(), leader.term());
        self.nodes
            .iter()
            .filter_map(|n| n.machine.as_ref())
            .all(|m| m.term() == term && m.leader() == Some(id))
    }
}

fn majority_of(size: usize) -> usize {
    match size {
        0..=2 => 1,
        n => n / 2 + 1,
    }
}

#[test]
fn simulated_schedules_keep_the_invariants() {
    let scale: u64 = std::env::var("LSYNC_ELECTION_SCHEDULES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    // 45 % three voters, 35 % five, 20 % two; learners as `run` draws them.
    let plan = [(3usize, scale * 45 / 100), (5, scale * 35 / 100), (2, scale * 20 / 100)];
    let (mut schedules, mut steps, mut worst, mut leaders) = (0u64, 0u64, Duration::ZERO, 0usize);
    let (mut restarts, mut transfers, mut completed) = (0u32, 0u32, 0u32);
    let (mut pre_votes, mut with_learners) = (0u32, 0u64);
    for (size, count) in plan {
        for n in 0..count {
            let seed = size as u64 * 1_000_000 + n;
            match run(seed, size, false) {
                Ok(o) => {
                    schedules += 1;
                    steps += o.steps;
                    worst = worst.max(o.heal_to_leader);
                    leaders += o.leaders;
                    restarts += o.restarts;
                    transfers += o.transfers;
                    completed += o.transfers_completed;
                    pre_votes += o.pre_vote_rounds;
                    with_learners += u64::from(o.learners);
                }
                Err(e) => {
                    let detail = run(seed, size, true).err().unwrap_or(e);
                    panic!("schedule seed {seed} ({size} voters) failed: {detail}");
                }
            }
        }
    }
    eprintln!(
        "election simulator: {schedules} schedules ({with_learners} with learners), {steps} steps, \
         {leaders} leaders elected, {pre_votes} pre-vote rounds, {restarts} restarts, {transfers} \
         transfers started ({completed} completed), slowest heal → stable leader {worst:?} \
         ({:.1} election timeouts)",
        worst.as_secs_f64() / ET.as_secs_f64()
    );
}
