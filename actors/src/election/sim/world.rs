//! The simulated world: devices (an [`Election`] machine, a persisted election state, a log, a
//! leader's [`CommitTracker`], an outbox of writes to propose again), the network between
//! them, the fault schedule, the invariants checked after every event, and the final drain
//! with its check that no write was lost. See the parent module for what it models.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::fmt::Write as _;
use std::rc::Rc;
use std::time::{Duration, Instant};

use lsync_protocol::{
    Configuration, Member, MemberRole, MembershipChange, RolePreference, FEATURE_VERSION,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use uuid::Uuid;

use super::log::{Accepted, Entry, Key, Log, Refusal};
use super::{
    Outcome, BATCH, DRAIN_TIMEOUTS, ET, HB, LIVENESS_TIMEOUTS, MAX_DEVICES, PROPOSE_RETRY_MAX,
    PROPOSE_RETRY_MIN,
};
use crate::election::{
    Action, Election, ElectionConfig, LeaderVerdict, PersistedElection, VoteRequest, VoteResponse,
};
use crate::leader::membership::{check_change, next_voter_change, AckPosition, CommitTracker};

/// A leader's AppendEntries (also its heartbeat): log matching by `(prev_seq, prev_term)`.
#[derive(Debug)]
struct Append {
    term: u64,
    prev_seq: u64,
    prev_term: u64,
    entries: Vec<Entry>,
    commit: u64,
}

#[derive(Debug, Clone)]
enum Msg {
    Vote(VoteRequest),
    VoteReply(VoteResponse),
    Append(Rc<Append>),
    /// A follower's answer: its term, and on success the sequence up to which its log matches
    /// the leader's with the term of its entry there; on a mismatch, where to resend from.
    AppendReply {
        term: u64,
        success: bool,
        sequence: u64,
        last_term: u64,
    },
    /// The answer to a leader message of an older term.
    Stale {
        term: u64,
    },
    TimeoutNow {
        term: u64,
    },
    /// A device's outbox (its first [`BATCH`] write ids) proposed to the leader it follows.
    Propose {
        writes: Vec<u64>,
    },
    /// The leader's answer: these write ids are in its log of `term` (appended now, or held
    /// already).
    Proposed {
        term: u64,
        writes: Vec<u64>,
    },
}

#[derive(Debug, Clone)]
enum Event {
    Deliver {
        from: usize,
        to: usize,
        msg: Msg,
    },
    Tick(usize),
    /// A device's proposer: delivers its outbox (retried while it holds anything).
    Propose(usize),
    Chaos,
    Write,
    Change,
    CaughtUp {
        leader: usize,
        to: usize,
    },
    /// A random partition (scheduled right after a configuration change, sometimes).
    Partition,
    Reconnect(usize),
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

/// What a leader keeps for its term.
struct Lead {
    term: u64,
    tracker: CommitTracker,
    /// The next sequence to send to each device.
    next: BTreeMap<usize, u64>,
}

struct Node {
    id: Uuid,
    machine: Option<Election<StdRng>>,
    /// The election record: what the last [`Action::Persist`] wrote, with a full sync (a crash
    /// of any kind keeps it).
    persisted: PersistedElection,
    /// Whether the election record exists: written at the node's first start and at every
    /// Persist (the initial state of a schedule was written without the election, as a
    /// created library's is).
    recorded: bool,
    log: Log,
    max_term: u64,
    timer_at: Option<Duration>,
    group: u8,
    /// A joiner that cannot reach anyone (until a `Reconnect`).
    isolated: bool,
    lead: Option<Lead>,
    /// The term of the election this node started on a TimeoutNow.
    transfer_term: Option<u64>,
    /// The devices whose removal this device applied: no message between them.
    cut: BTreeSet<Uuid>,
    /// The log's [`Log::generation`] at which the machine's membership was last found equal
    /// to the log's (None after a restart).
    synced: Option<u64>,
    /// The write ids cut from its log, to propose again until its log holds them committed
    /// (durable: kept across restarts).
    outbox: Vec<u64>,
    /// Writes of the outbox a leader answered it appended, with that leader's term: not sent
    /// again while this device is in that term.
    answered: BTreeMap<u64, u64>,
    /// When its proposer runs next, and the delay after that (doubling up to a bound).
    propose_at: Option<Duration>,
    propose_backoff: Duration,
}

impl Node {
    fn new(id: Uuid, persisted: PersistedElection, log: Log) -> Self {
        Node {
            id,
            machine: None,
            persisted,
            recorded: false,
            log,
            max_term: persisted.term,
            timer_at: None,
            group: 0,
            isolated: false,
            lead: None,
            transfer_term: None,
            cut: BTreeSet::new(),
            synced: None,
            outbox: Vec::new(),
            answered: BTreeMap::new(),
            propose_at: None,
            propose_backoff: PROPOSE_RETRY_MIN,
        }
    }

    /// Drops from the outbox every write its log holds committed.
    fn drop_committed(&mut self) {
        let log = &self.log;
        self.outbox.retain(|w| !log.holds_committed(*w));
        let outbox = &self.outbox;
        self.answered.retain(|w, _| outbox.contains(w));
    }
}

pub(super) struct Sim {
    rng: StdRng,
    base: Instant,
    now: Duration,
    seq: u64,
    queue: BinaryHeap<Scheduled>,
    nodes: Vec<Node>,
    config: ElectionConfig,
    loss: f64,
    duplicate: f64,
    max_delay_ms: u64,
    /// Links cut one way: (from, to).
    one_way: BTreeSet<(usize, usize)>,
    /// Random configuration changes (Add, Remove, SetPreference) before the heal.
    random_changes: bool,
    chaos_until: Duration,
    healed_at: Option<Duration>,
    /// Every leader of the run, by term.
    leaders: BTreeMap<u64, Uuid>,
    /// The longest committed prefix any device ever knew, by entry key.
    committed: Vec<Key>,
    next_entry: u64,
    /// Every write id a leader ever appended (those of the initial logs included), with the
    /// term of the first entry that carried it.
    appended: BTreeMap<u64, u64>,
    /// Writes appended by the leader of each term (its own and proposed ones).
    writes_by_term: BTreeMap<u64, u32>,
    /// Write ids a leader appended again from an outbox.
    reappended: BTreeSet<u64>,
    /// Write ids whose every copy was on a log tail a power loss took (not required at the
    /// end).
    lost_to_power: BTreeSet<u64>,
    /// The terms of two devices that led a two-voter library at once.
    split_terms: BTreeSet<(u64, u64)>,
    /// When the drain began: a leader followed by every up member after the heal; from then
    /// on no new writes, and every device is up.
    drain_from: Option<Duration>,
    outcome: Outcome,
    trace: Option<String>,
}

fn member(rng: &mut StdRng, role: MemberRole) -> Member {
    let bytes: [u8; 32] = rng.gen();
    let device_id = Uuid::from_u128(rng.gen());
    // A valid peer id made of the random bytes as a SHA-256 multihash (as a key's hash would
    // be): deriving an Ed25519 key for it cost a tenth of the run.
    let multihash: Vec<u8> = [0x12, 32].into_iter().chain(bytes).collect();
    let peer_id = match libp2p::PeerId::from_bytes(&multihash) {
        Ok(peer) => peer.to_string(),
        Err(_) => libp2p::PeerId::random().to_string(),
    };
    Member {
        device_id,
        peer_id,
        addresses: vec!["/ip4/127.0.0.1/tcp/7700".into()],
        name: format!("d{}", device_id.as_u128() % 1000),
        role,
        preference: RolePreference::Auto,
    }
}

/// Sets up one schedule from `seed`.
pub(super) fn build(seed: u64, verbose: bool) -> Sim {
    let mut rng = StdRng::seed_from_u64(seed);
    let voters = *[1usize, 2, 2, 2, 3, 3, 3, 4, 5, 5].get(rng.gen_range(0..10)).unwrap_or(&3);
    let learners = if rng.gen_bool(0.4) { rng.gen_range(1..=2) } else { 0 };
    let mut members: Vec<Member> = (0..voters + learners)
        .map(|i| member(&mut rng, if i < voters { MemberRole::Voter } else { MemberRole::Learner }))
        .collect();
    members.sort_by_key(|m| m.device_id);
    let genesis = Rc::new(Configuration::new(FEATURE_VERSION, members.clone()));
    // The creator: the first voter in creation order; ids are random, so any rank.
    let founder = members.iter().find(|m| m.role == MemberRole::Voter).map(|m| m.device_id);
    let mut next_entry = 1;
    let mut entry = |term: u64, config: Option<Rc<Configuration>>| {
        next_entry += 1;
        let write = config.is_none().then_some(next_entry);
        Entry { term, id: next_entry, config, write }
    };
    let mut common = vec![entry(1, Some(Rc::clone(&genesis)))];
    // 0: a new library whose members have not heard of its creator yet; 1: they have;
    // 2: a library whose leader of term 3 just left (every member a follower of term 4, no
    // leader), with a common committed prefix and a tail of term 3 on some.
    let start = rng.gen_range(0..3);
    let mut tail = Vec::new();
    if start == 2 {
        for _ in 0..rng.gen_range(0..6) {
            common.push(entry(2, None));
        }
        for _ in 0..rng.gen_range(0..6) {
            tail.push(entry(3, None));
        }
    }
    let committed: Vec<Key> = common.iter().map(Entry::key).collect();
    let nodes: Vec<Node> = members
        .iter()
        .map(|m| {
            let id = m.device_id;
            let persisted = match start {
                2 => PersistedElection { term: 4, voted_for: None, leader: None },
                _ if Some(id) == founder => PersistedElection::founder(id),
                1 => PersistedElection { term: 1, voted_for: None, leader: founder },
                _ => PersistedElection::default(),
            };
            let mut entries = common.clone();
            let held = rng.gen_range(0..=tail.len());
            entries.extend(tail[..held].iter().cloned());
            Node::new(id, persisted, Log::new(entries, committed.len() as u64))
        })
        .collect();
    // The writes of the initial logs that some device holds (the leaders of terms 2 and 3
    // appended them; one of term 3 that no device holds left with its leader).
    let appended = [&common, &tail]
        .into_iter()
        .flatten()
        .filter(|e| nodes.iter().any(|n| e.write.is_some_and(|w| n.log.holds(w))))
        .filter_map(|e| Some((e.write?, e.term)))
        .collect();
    Sim {
        loss: if rng.gen_bool(0.2) { 0.0 } else { rng.gen_range(0.0..0.3) },
        duplicate: rng.gen_range(0.0..0.1),
        max_delay_ms: *[5u64, 20, 50, 150].get(rng.gen_range(0..4)).unwrap_or(&20),
        chaos_until: ET * rng.gen_range(5..25),
        random_changes: rng.gen_bool(0.8),
        rng,
        base: Instant::now(),
        now: Duration::ZERO,
        seq: 0,
        queue: BinaryHeap::new(),
        nodes,
        config: ElectionConfig::new(HB, ET),
        one_way: BTreeSet::new(),
        healed_at: None,
        leaders: BTreeMap::new(),
        committed,
        next_entry: next_entry + 1,
        appended,
        writes_by_term: BTreeMap::new(),
        reappended: BTreeSet::new(),
        lost_to_power: BTreeSet::new(),
        split_terms: BTreeSet::new(),
        drain_from: None,
        outcome: Outcome { voters, learners, ..Outcome::default() },
        trace: verbose.then(String::new),
    }
}

impl Sim {
    pub(super) fn trace(&self) -> Option<&str> {
        self.trace.as_deref()
    }

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

    /// A new configuration entry.
    fn fresh_entry(&mut self, term: u64, config: Rc<Configuration>) -> Entry {
        self.next_entry += 1;
        Entry { term, id: self.next_entry, config: Some(config), write: None }
    }

    /// A new entry carrying write `write`, or a new write (its id the entry's) for None.
    fn fresh_write(&mut self, term: u64, write: Option<u64>) -> Entry {
        self.next_entry += 1;
        let id = self.next_entry;
        Entry { term, id, config: None, write: Some(write.unwrap_or(id)) }
    }

    // ---- running ------------------------------------------------------------------------

    pub(super) fn run(&mut self) -> Result<Outcome, String> {
        for i in 0..self.nodes.len() {
            self.start(i)?;
        }
        self.schedule(Duration::from_millis(1), Event::Chaos);
        self.schedule(Duration::from_millis(10), Event::Write);
        self.schedule(Duration::from_millis(20), Event::Change);
        self.schedule(self.chaos_until, Event::Heal);
        while let Some(Scheduled { at, event, .. }) = self.queue.pop() {
            self.now = at;
            self.outcome.steps += 1;
            match self.drain_from {
                None if self.now > self.chaos_until + ET * LIVENESS_TIMEOUTS => {
                    return Err(format!(
                        "no leader followed by every up member {LIVENESS_TIMEOUTS} election \
                         timeouts after healing: {}",
                        self.describe()
                    ));
                }
                Some(from) if self.now > from + ET * DRAIN_TIMEOUTS => {
                    return Err(format!(
                        "not drained {DRAIN_TIMEOUTS} election timeouts after a stable leader \
                         (every member on the leader's log, all committed, no outbox): {}",
                        self.describe()
                    ));
                }
                _ => {}
            }
            self.handle(event)?;
            self.check()?;
            let Some(healed) = self.healed_at else { continue };
            match self.drain_from {
                None if self.stable_leader() => {
                    self.outcome.heal_to_leader = self.now - healed;
                    self.drain()?;
                }
                Some(from) => {
                    if let Some(leader) = self.drained() {
                        self.outcome.drain = self.now - from;
                        self.check_writes(leader)?;
                        self.outcome.leaders = self.leaders.len();
                        self.outcome.devices = self.nodes.len();
                        return Ok(self.outcome);
                    }
                }
                None => {}
            }
        }
        Err("event queue ran dry".into())
    }

    /// A leader is followed by every up member after the heal: no more writes, and every
    /// device that stayed down comes back, so that every member's log and outbox can drain.
    fn drain(&mut self) -> Result<(), String> {
        self.drain_from = Some(self.now);
        self.log(|| "drain: no more writes, every device up".into());
        for i in 0..self.nodes.len() {
            if !self.up(i) {
                self.outcome.restarts += 1;
                self.start(i)?;
            }
        }
        Ok(())
    }

    /// The drain is over: a leader followed by every member of its configuration, every member
    /// holding its log (the same last entry), everything committed, and every member's outbox
    /// empty. Returns the leader.
    fn drained(&self) -> Option<usize> {
        let i = self.stable_leader_index()?;
        let log = &self.nodes[i].log;
        let (len, last) = (log.len(), log.key(log.len()));
        if log.commit() != len || !self.nodes[i].outbox.is_empty() {
            return None;
        }
        let (_, config) = log.config()?;
        config
            .members
            .iter()
            .all(|m| {
                self.index(m.device_id).is_some_and(|j| {
                    let n = &self.nodes[j];
                    n.machine.is_some()
                        && n.log.len() == len
                        && n.log.key(len) == last
                        && n.log.commit() == len
                        && n.outbox.is_empty()
                })
            })
            .then_some(i)
    }

    /// After the drain, leader `i`'s configuration: every member's log is the leader's, and
    /// every write id that a member ever held (in its log, hence in its outbox) is in it
    /// exactly once. A write that no member ever held lived only on devices since removed (a
    /// removed device is cut off, its outbox undeliverable): counted, not required.
    fn check_writes(&mut self, i: usize) -> Result<(), String> {
        let log = &self.nodes[i].log;
        let keys: Vec<Option<Key>> = (1..=log.len()).map(|s| log.key(s)).collect();
        let mut count: BTreeMap<u64, u32> = BTreeMap::new();
        for w in log.write_ids() {
            *count.entry(w).or_default() += 1;
        }
        let Some((_, config)) = log.config() else { return Err("no configuration".into()) };
        let mut required = BTreeSet::new();
        for m in &config.members {
            let Some(j) = self.index(m.device_id) else { return Err("unknown member".into()) };
            let held = &self.nodes[j].log;
            if (1..=held.len()).map(|s| held.key(s)).ne(keys.iter().copied()) {
                return Err(format!("after the drain, member {j}'s log is not leader {i}'s"));
            }
            required.extend(held.ever().iter().copied());
        }
        for (w, n) in &count {
            if *n != 1 {
                return Err(format!("write {w} is {n} times in the final log of leader {i}"));
            }
        }
        for w in &required {
            let Some(term) = self.appended.get(w) else {
                return Err(format!("write {w} held by a member was appended by no leader"));
            };
            if !count.contains_key(w) && !self.lost_to_power.contains(w) {
                let holders: Vec<usize> = (0..self.nodes.len())
                    .filter(|j| self.nodes[*j].log.ever().contains(w))
                    .collect();
                let outboxes: Vec<usize> =
                    (0..self.nodes.len()).filter(|j| self.nodes[*j].outbox.contains(w)).collect();
                return Err(format!(
                    "write {w} (first appended in term {term}) is lost: not in the final log; \
                     ever held by {holders:?}, in the outboxes of {outboxes:?}: {}",
                    self.describe()
                ));
            }
        }
        self.outcome.writes = self.appended.len() as u32;
        self.outcome.lost_with_removed = self
            .appended
            .keys()
            .filter(|w| !required.contains(*w) && !self.lost_to_power.contains(*w))
            .count() as u32;
        self.outcome.lost_with_power = self.lost_to_power.len() as u32;
        let wrote = |t: &u64| self.writes_by_term.get(t).is_some_and(|n| *n > 0);
        let split_wrote: Vec<&(u64, u64)> =
            self.split_terms.iter().filter(|(a, b)| wrote(a) && wrote(b)).collect();
        self.outcome.split_wrote = !split_wrote.is_empty();
        // A write first appended in one of those terms came back through an outbox.
        self.outcome.split_rescued = self.reappended.iter().any(|w| {
            self.appended.get(w).is_some_and(|t| split_wrote.iter().any(|(a, b)| t == a || t == b))
        });
        Ok(())
    }

    fn describe(&self) -> String {
        let mut out = String::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let m = n.log.membership();
            let cfg = format!(
                "voters {:?} learners {:?} previous {:?}",
                self.indices(m.voters()),
                self.indices(m.learners()),
                m.previous_voters().map(|p| self.indices(p))
            );
            let _ = match &n.machine {
                Some(e) => write!(
                    out,
                    "\n  [{i}: {} term {} leader {:?} log {} commit {} {cfg}]",
                    e.role(),
                    e.term(),
                    e.leader().and_then(|l| self.index(l)),
                    n.log.last(),
                    n.log.commit(),
                ),
                None => write!(
                    out,
                    "\n  [{i}: down, log {} commit {} {cfg}]",
                    n.log.last(),
                    n.log.commit()
                ),
            };
        }
        let outboxes: Vec<(usize, usize)> = (0..self.nodes.len())
            .filter(|i| !self.nodes[*i].outbox.is_empty())
            .map(|i| (i, self.nodes[i].outbox.len()))
            .collect();
        let _ = write!(
            out,
            "\n  committed: {}; outboxes (device, writes): {outboxes:?}",
            self.committed.len()
        );
        out
    }

    fn indices(&self, ids: &BTreeSet<Uuid>) -> Vec<usize> {
        ids.iter().filter_map(|d| self.index(*d)).collect()
    }

    /// (Re)builds node `i`'s machine from its persisted state and its log, as the product
    /// starts a library (`election::actor::start_state`): a node whose election record names it
    /// leader of its term comes back a follower of that term with no leader
    /// ([`PersistedElection::restarted`]), and the record is written for the state it starts
    /// in.
    fn start(&mut self, i: usize) -> Result<(), String> {
        let seed = self.rng.gen();
        let now = self.at();
        let node = &mut self.nodes[i];
        let led_before = node.recorded && node.persisted.leader == Some(node.id);
        node.persisted = node.persisted.restarted(node.id, led_before);
        node.recorded = true;
        let mut machine = Election::new(
            node.id,
            node.log.membership().clone(),
            node.persisted,
            self.config,
            now,
            StdRng::seed_from_u64(seed),
        );
        machine.set_last_log(node.log.last());
        if machine.term() < node.max_term {
            return Err(format!(
                "node {i} restarted at term {} < {}",
                machine.term(),
                node.max_term
            ));
        }
        let resumes = machine.is_leader();
        if resumes && led_before {
            return Err(format!("node {i} resumes leading term {} it led before", machine.term()));
        }
        node.machine = Some(machine);
        node.timer_at = None;
        node.lead = None;
        node.synced = None;
        node.propose_at = None;
        if !node.outbox.is_empty() {
            node.propose_backoff = PROPOSE_RETRY_MIN;
            self.arm_propose(i, PROPOSE_RETRY_MIN);
        }
        self.log(|| format!("node {i} up"));
        if resumes {
            let term = self.nodes[i].persisted.term;
            self.take_over(i, term)?;
        }
        self.settle(i)
    }

    fn crash(&mut self, i: usize) {
        if self.up(i) {
            let node = &mut self.nodes[i];
            node.machine = None;
            node.timer_at = None;
            node.lead = None;
            self.log(|| format!("node {i} crashed"));
        }
    }

    /// A power loss on node `i` (down, or brought down): what was written without a full sync
    /// is lost. The election record (term, vote, leader) was written with one and stays; the
    /// log, written under `synchronous = NORMAL`, loses a random part of its tail — but never
    /// below what the commit rule counted on, which this model assumes synced (its known
    /// commit, the committed prefix, and any entry another device holds: a device counted in
    /// a majority must hold what it acknowledged, or no safety argument holds). What is lost is
    /// the unreplicated tail of a leader — the writes it took and nobody else got — or the
    /// last entries a follower received but nobody counted; a write whose only copy was there
    /// is gone with it, as the documentation admits.
    fn power_loss(&mut self, i: usize) {
        self.crash(i);
        let len = self.nodes[i].log.len();
        let keys_elsewhere = |s: u64| {
            let key = self.nodes[i].log.key(s);
            (0..self.nodes.len()).any(|j| j != i && self.nodes[j].log.key(s) == key)
        };
        let committed = self.committed.len() as u64;
        let mut floor = self.nodes[i].log.commit().max(committed.min(len));
        if let Some(held) = (floor + 1..=len).rev().find(|s| keys_elsewhere(*s)) {
            floor = held;
        }
        if floor >= len {
            return;
        }
        let keep = self.rng.gen_range(floor..len);
        let lost = self.nodes[i].log.lose_tail(keep);
        for w in lost.iter().filter_map(|e| e.write) {
            // Not required at the end any more (an outbox that holds it may still bring it
            // back, or may be a removed device's).
            if !(0..self.nodes.len()).any(|j| self.nodes[j].log.holds(w)) {
                self.lost_to_power.insert(w);
            }
        }
        self.outcome.power_losses += 1;
        self.log(|| format!("node {i} lost power: its log goes back from {len} to {keep}"));
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
                self.settle(i)
            }
            Event::Write => {
                if self.drain_from.is_some() {
                    return Ok(());
                }
                for i in 0..self.nodes.len() {
                    let Some(lead) = &self.nodes[i].lead else { continue };
                    let term = lead.term;
                    if self.nodes[i].machine.as_ref().is_some_and(|m| m.is_transferring()) {
                        continue; // writes are held during a transfer
                    }
                    let entry = self.fresh_write(term, None);
                    self.append_write(i, entry)?;
                    self.settle(i)?;
                }
                let next = Duration::from_millis(self.rng.gen_range(5..40));
                self.schedule(next, Event::Write);
                Ok(())
            }
            Event::Change => {
                for i in 0..self.nodes.len() {
                    if self.nodes[i].lead.is_some() {
                        self.change(i)?;
                    }
                }
                let next = Duration::from_millis(self.rng.gen_range(20..250));
                self.schedule(next, Event::Change);
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
            Event::CaughtUp { leader, to } => self.caught_up(leader, to),
            Event::Propose(i) => {
                if self.nodes[i].propose_at == Some(self.now) {
                    self.nodes[i].propose_at = None;
                    self.propose(i)?;
                }
                Ok(())
            }
            Event::Partition => {
                if self.healed_at.is_none() {
                    self.partition();
                }
                Ok(())
            }
            Event::Reconnect(i) => {
                if self.nodes[i].isolated {
                    self.nodes[i].isolated = false;
                    self.log(|| format!("joiner {i} reconnected"));
                }
                Ok(())
            }
            Event::Heal => self.heal(),
        }
    }

    fn chaos(&mut self) -> Result<(), String> {
        let size = self.nodes.len();
        match self.rng.gen_range(0..8) {
            0 => self.partition(),
            1 => {
                for n in &mut self.nodes {
                    n.group = 0;
                }
                self.one_way.clear();
                self.log(|| "partitions healed".into());
            }
            2 => {
                let (a, b) = (self.rng.gen_range(0..size), self.rng.gen_range(0..size));
                if a != b {
                    self.one_way.insert((a, b));
                    self.log(|| format!("link {a} -> {b} cut one way"));
                }
            }
            3 => {
                let i = self.rng.gen_range(0..size);
                self.crash(i);
            }
            4 => {
                let i = self.rng.gen_range(0..size);
                self.power_loss(i);
            }
            5 => {
                let i = self.rng.gen_range(0..size);
                if !self.up(i) {
                    self.outcome.restarts += 1;
                    self.start(i)?;
                }
            }
            _ => {
                let leader = (0..size).find(|i| self.nodes[*i].lead.is_some());
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

    /// Splits the devices into up to three random groups.
    fn partition(&mut self) {
        let groups = self.rng.gen_range(1..=3u8);
        for n in &mut self.nodes {
            n.group = self.rng.gen_range(0..groups);
        }
        let groups: Vec<u8> = self.nodes.iter().map(|n| n.group).collect();
        self.log(|| format!("partition {groups:?}"));
    }

    fn caught_up(&mut self, leader: usize, to: usize) -> Result<(), String> {
        let to_id = self.nodes[to].id;
        let Some(m) = self.nodes[leader].machine.as_ref() else { return Ok(()) };
        if m.transfer_target() != Some(to_id) {
            return Ok(());
        }
        let Some(lead) = &self.nodes[leader].lead else { return Ok(()) };
        if lead.tracker.matched(to_id) != Some(self.nodes[leader].log.len()) {
            self.schedule(Duration::from_millis(10), Event::CaughtUp { leader, to });
            return Ok(());
        }
        let now = self.at();
        let Some(m) = self.nodes[leader].machine.as_mut() else { return Ok(()) };
        let actions = m.on_target_caught_up(to_id, now);
        self.execute(leader, actions)?;
        self.settle(leader)
    }

    /// Every device comes back up and every link heals, but for a few devices that may stay
    /// down as long as every voter set in use keeps a commit majority of devices that are up
    /// and voters of their own configuration (see the parent module on liveness).
    fn heal(&mut self) -> Result<(), String> {
        self.healed_at = Some(self.now);
        self.loss = 0.0;
        self.duplicate = 0.0;
        self.max_delay_ms = self.max_delay_ms.min(20);
        self.one_way.clear();
        for n in &mut self.nodes {
            n.group = 0;
            n.isolated = false;
        }
        let size = self.nodes.len();
        let mut stay_down = BTreeSet::new();
        for _ in 0..self.rng.gen_range(0..=2) {
            let i = self.rng.gen_range(0..size);
            stay_down.insert(i);
            if !self.may_stay_down(&stay_down) {
                stay_down.remove(&i);
            }
        }
        if !stay_down.is_empty() {
            // What they sent before going down is lost (a fault allowed before the heal):
            // otherwise it could change the configurations the choice was based on.
            let queue = std::mem::take(&mut self.queue);
            self.queue = queue
                .into_iter()
                .filter(|s| !matches!(s.event, Event::Deliver { from, .. } if stay_down.contains(&from)))
                .collect();
        }
        for i in 0..size {
            if stay_down.contains(&i) {
                self.crash(i);
            } else if !self.up(i) {
                self.outcome.restarts += 1;
                self.start(i)?;
            }
        }
        self.outcome.stayed_down = stay_down.len();
        self.log(|| format!("healed, down: {stay_down:?}"));
        Ok(())
    }

    /// Whether the devices of `down` may stay down at the heal with a leader still expected:
    /// each is a voter of no set in use (no device's latest or previous voters list it: a
    /// learner, a removed device), or the library has settled: every other device holds the
    /// same latest configuration entry and knows it committed, and a commit majority of its
    /// voters is among them. (A majority of the latest committed configuration up is not
    /// enough, see the module documentation.)
    fn may_stay_down(&self, down: &BTreeSet<usize>) -> bool {
        let in_use = |d: Uuid| {
            self.nodes.iter().any(|n| {
                let m = n.log.membership();
                m.is_voter(&d) || m.previous_voters().is_some_and(|p| p.contains(&d))
            })
        };
        if down.iter().all(|i| !in_use(self.nodes[*i].id)) {
            return true;
        }
        let up: Vec<&Node> =
            (0..self.nodes.len()).filter(|i| !down.contains(i)).map(|i| &self.nodes[i]).collect();
        let Some((seq, config)) = up.first().and_then(|n| n.log.config()) else { return false };
        let key = up.first().and_then(|n| n.log.key(seq));
        let settled = up.iter().all(|n| {
            n.log.config().is_some_and(|(s, _)| s == seq)
                && n.log.key(seq) == key
                && n.log.previous().is_none()
                && n.log.commit() >= seq
        });
        let voters = config.voters();
        let up_voters = up.iter().filter(|n| voters.contains(&n.id)).count();
        settled && up_voters >= majority(voters.len())
    }

    // ---- the network ----------------------------------------------------------------------

    fn linked(&self, a: usize, b: usize) -> bool {
        let (x, y) = (&self.nodes[a], &self.nodes[b]);
        x.group == y.group
            && !self.one_way.contains(&(a, b))
            && !x.isolated
            && !y.isolated
            && !x.cut.contains(&y.id)
            && !y.cut.contains(&x.id)
    }

    fn send(&mut self, from: usize, to: usize, msg: Msg) {
        if from == to || !self.linked(from, to) {
            return;
        }
        let copies = if self.rng.gen_bool(self.duplicate) { 2 } else { 1 };
        for _ in 0..copies {
            if self.rng.gen_bool(self.loss) {
                continue;
            }
            let delay = Duration::from_millis(self.rng.gen_range(1..=self.max_delay_ms));
            self.schedule(delay, Event::Deliver { from, to, msg: msg.clone() });
        }
    }

    fn deliver(&mut self, from: usize, to: usize, msg: Msg) -> Result<(), String> {
        if !self.up(to) || !self.linked(from, to) {
            return Ok(());
        }
        self.log(|| match &msg {
            Msg::Append(a) => format!(
                "{from} -> {to}: Append term {} prev ({}, {}) {} entries commit {}",
                a.term,
                a.prev_seq,
                a.prev_term,
                a.entries.len(),
                a.commit
            ),
            other => format!("{from} -> {to}: {other:?}"),
        });
        let from_id = self.nodes[from].id;
        let now = self.at();
        let Some(m) = self.nodes[to].machine.as_mut() else { return Ok(()) };
        match msg {
            Msg::Propose { writes } => self.on_propose(to, from, writes)?,
            Msg::Proposed { term, writes } => {
                // Appended: kept until its log holds them committed, not sent again in this
                // term; the rest goes on at once.
                let current = m.term();
                let node = &mut self.nodes[to];
                for w in writes {
                    if node.outbox.contains(&w) {
                        node.answered.insert(w, term);
                    }
                }
                node.propose_backoff = PROPOSE_RETRY_MIN;
                if node.outbox.iter().any(|w| node.answered.get(w) != Some(&current)) {
                    self.arm_propose(to, Duration::ZERO);
                }
            }
            Msg::Vote(request) => {
                let actions = m.on_vote_request(request, now);
                self.execute(to, actions)?;
            }
            Msg::VoteReply(response) => {
                let actions = m.on_vote_response(response, now);
                self.execute(to, actions)?;
            }
            Msg::Append(append) => {
                let (verdict, actions) = m.on_leader_message(from_id, append.term, now);
                self.execute(to, actions)?;
                match verdict {
                    LeaderVerdict::Accepted => self.follow(to, from, &append)?,
                    LeaderVerdict::Stale { current_term, .. } => {
                        self.send(to, from, Msg::Stale { term: current_term });
                    }
                    LeaderVerdict::Refused => {}
                }
            }
            Msg::AppendReply { term, success, sequence, last_term } => {
                let actions = m.on_follower_response(from_id, term, now);
                self.execute(to, actions)?;
                self.settle(to)?;
                self.on_reply(to, from, term, success, sequence, last_term)?;
            }
            Msg::Stale { term } => {
                let actions = m.observe_term(term, now);
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
        self.settle(to)
    }

    // ---- replication ----------------------------------------------------------------------

    /// Follower `i` handles the entries of its leader `from` (accepted by its machine).
    fn follow(&mut self, i: usize, from: usize, append: &Append) -> Result<(), String> {
        let committed = &self.committed;
        let result =
            self.nodes[i].log.accept(append.prev_seq, append.prev_term, &append.entries, {
                |log: &Log, seq: u64, e: &Entry| {
                    let Some(&key) = committed.get(seq as usize - 1) else { return Ok(()) };
                    if log.key(seq) == Some(key) {
                        return Err(format!(
                            "node {i} truncates committed entry {seq} {key:?} for {:?}",
                            e.key()
                        ));
                    }
                    Ok(())
                }
            })?;
        let term = self.nodes[i].machine.as_ref().map_or(0, |m| m.term());
        match result {
            Ok(Accepted { matched, truncated }) => {
                self.set_aside(i, &truncated);
                let commit = append.commit.min(matched);
                if commit > self.nodes[i].log.commit() {
                    self.adopt_commit(i, commit)?;
                }
                let last_term = self.nodes[i].log.term_at(matched);
                self.settle(i)?;
                self.send(
                    i,
                    from,
                    Msg::AppendReply { term, success: true, sequence: matched, last_term },
                );
            }
            Err(Refusal::Mismatch { hint }) => {
                self.send(
                    i,
                    from,
                    Msg::AppendReply { term, success: false, sequence: hint, last_term: 0 },
                );
            }
        }
        Ok(())
    }

    /// Follower `i`'s log was cut: its ordinary writes go into its outbox (configuration
    /// entries, the leaders' first entries of their terms among them, are never proposed
    /// again).
    fn set_aside(&mut self, i: usize, truncated: &[Entry]) {
        let node = &mut self.nodes[i];
        let before = node.outbox.len();
        for w in truncated.iter().filter_map(|e| e.write) {
            if !node.outbox.contains(&w) {
                node.outbox.push(w);
                self.outcome.set_aside += 1;
            }
        }
        node.drop_committed();
        if before == 0 && !node.outbox.is_empty() {
            let ids = node.outbox.clone();
            self.log(|| format!("node {i} sets aside writes {ids:?}"));
            self.nodes[i].propose_backoff = PROPOSE_RETRY_MIN;
            self.arm_propose(i, Duration::from_millis(1));
        }
    }

    /// Node `i`'s proposer: while its outbox holds anything, appends it as the leader (what
    /// its log does not hold) or proposes it to the leader it follows (what no leader of its
    /// current term answered), and runs again after a delay that doubles up to
    /// [`PROPOSE_RETRY_MAX`], until its log holds every write committed.
    fn propose(&mut self, i: usize) -> Result<(), String> {
        let node = &mut self.nodes[i];
        let Some((leader, term)) = node.machine.as_ref().map(|m| (m.leader(), m.term())) else {
            return Ok(());
        };
        node.drop_committed();
        if node.outbox.is_empty() {
            node.propose_backoff = PROPOSE_RETRY_MIN;
            return Ok(());
        }
        if node.lead.is_some() {
            // The leader's own outbox: appended directly, all of it.
            let log = &node.log;
            let writes: Vec<u64> = node.outbox.iter().copied().filter(|w| !log.holds(*w)).collect();
            if !writes.is_empty() {
                self.on_propose(i, i, writes)?;
            }
        } else {
            let answered = &node.answered;
            let writes: Vec<u64> = node
                .outbox
                .iter()
                .copied()
                .filter(|w| answered.get(w) != Some(&term))
                .take(BATCH)
                .collect();
            if let Some(j) = leader.and_then(|l| self.index(l)).filter(|j| *j != i) {
                if !writes.is_empty() {
                    self.send(i, j, Msg::Propose { writes });
                }
            }
        }
        let node = &mut self.nodes[i];
        let delay = node.propose_backoff;
        node.propose_backoff = (delay * 2).min(PROPOSE_RETRY_MAX);
        if !node.outbox.is_empty() {
            self.arm_propose(i, delay);
        }
        Ok(())
    }

    /// Runs node `i`'s proposer after `after`, unless it runs sooner already.
    fn arm_propose(&mut self, i: usize, after: Duration) {
        let at = self.now + after;
        if self.nodes[i].propose_at.is_none_or(|t| at < t) {
            self.nodes[i].propose_at = Some(at);
            self.schedule(after, Event::Propose(i));
        }
    }

    /// Leader `j` (if it leads and is not transferring) handles `from`'s proposed writes: it
    /// appends each one its log does not hold, at most once per write id, as the product's
    /// leader does with a proposal id, and answers with them all.
    fn on_propose(&mut self, j: usize, from: usize, writes: Vec<u64>) -> Result<(), String> {
        let Some(term) = self.nodes[j].lead.as_ref().map(|l| l.term) else { return Ok(()) };
        if self.nodes[j].machine.as_ref().is_none_or(|m| m.is_transferring()) {
            return Ok(()); // writes are held during a transfer
        }
        for &w in &writes {
            if self.nodes[j].log.holds(w) {
                self.outcome.duplicate_proposals += 1;
            } else {
                let entry = self.fresh_write(term, Some(w));
                self.log(|| format!("leader {j} appends write {w} proposed by {from}"));
                self.append_write(j, entry)?;
                self.reappended.insert(w);
                self.outcome.reappended += 1;
            }
        }
        if from != j {
            self.send(j, from, Msg::Proposed { term, writes });
        }
        self.settle(j)
    }

    /// Follower `i` learned that its log is committed up to `commit`: its entries there must be
    /// the committed ones.
    fn adopt_commit(&mut self, i: usize, commit: u64) -> Result<(), String> {
        let known = self.committed.len() as u64;
        if commit > known {
            return Err(format!("node {i} learned commit {commit} beyond any leader's ({known})"));
        }
        let log = &self.nodes[i].log;
        for seq in log.commit() + 1..=commit {
            if log.key(seq) != self.committed.get(seq as usize - 1).copied() {
                return Err(format!(
                    "node {i} learns commit {commit} but holds {:?} at {seq}, committed {:?}",
                    log.key(seq),
                    self.committed.get(seq as usize - 1)
                ));
            }
        }
        self.nodes[i].log.set_commit(commit);
        self.on_commit(i);
        Ok(())
    }

    /// Node `i`'s known commit grew: its outbox drops what is now committed in its log, and
    /// whom it cut off is derived again.
    fn on_commit(&mut self, i: usize) {
        self.nodes[i].drop_committed();
        let removed = self.nodes[i].log.removed();
        if removed != self.nodes[i].cut {
            let ids = self.indices(&removed);
            self.log(|| format!("node {i} cut off {ids:?}"));
            self.nodes[i].cut = removed;
        }
    }

    /// Leader `i` handles follower `j`'s answer.
    fn on_reply(
        &mut self,
        i: usize,
        j: usize,
        term: u64,
        success: bool,
        sequence: u64,
        last_term: u64,
    ) -> Result<(), String> {
        let from = self.nodes[j].id;
        let len = self.nodes[i].log.len();
        let Some(lead) = self.nodes[i].lead.as_mut() else { return Ok(()) };
        if term != lead.term {
            return Ok(());
        }
        if success {
            lead.tracker.on_ack(from, AckPosition { term, sequence, last_term });
            let next = lead.next.entry(j).or_insert(1);
            *next = (*next).max(sequence + 1);
            let behind = *next <= len;
            self.settle(i)?;
            if behind {
                self.send_append(i, j);
            }
        } else {
            let next = lead.next.entry(j).or_insert(1);
            *next = (*next).min(sequence + 1).max(1);
            self.send_append(i, j);
        }
        Ok(())
    }

    /// Leader `i` sends its next entries (up to [`BATCH`]) and its commit to `j`.
    fn send_append(&mut self, i: usize, j: usize) {
        let node = &self.nodes[i];
        let Some(lead) = &node.lead else { return };
        let next = lead.next.get(&j).copied().unwrap_or(node.log.len() + 1).max(1);
        let prev_seq = next - 1;
        let append = Append {
            term: lead.term,
            prev_seq,
            prev_term: node.log.term_at(prev_seq),
            entries: node.log.slice(next, BATCH),
            commit: lead.tracker.commit_sequence(),
        };
        self.send(i, j, Msg::Append(Rc::new(append)));
    }

    /// The devices leader `i` replicates to: the members of its latest configuration and the
    /// previous voters while its last voter change is not committed.
    fn targets(&self, i: usize) -> Vec<usize> {
        let log = &self.nodes[i].log;
        let mut ids: BTreeSet<Uuid> = BTreeSet::new();
        if let Some((_, config)) = log.config() {
            ids.extend(config.members.iter().map(|m| m.device_id));
        }
        if let Some((_, previous)) = log.previous() {
            ids.extend(previous);
        }
        ids.iter().filter_map(|d| self.index(*d)).filter(|j| *j != i).collect()
    }

    /// Node `i` won (or resumed) the leadership of `term`: a tracker fed with its
    /// configuration (the previous voters first while its last voter change is not known
    /// committed), and, unless it resumes, its first entry of the term restating its
    /// configuration.
    fn take_over(&mut self, i: usize, term: u64) -> Result<(), String> {
        let me = self.nodes[i].id;
        let log = &self.nodes[i].log;
        let resumed = log.first_of_term(term);
        // Leader completeness: a leader just elected holds every committed entry (one that
        // resumes its term after a restart may be stale: it is deposed, never commits).
        if let Some(seq) = (1..=self.committed.len() as u64)
            .filter(|_| resumed.is_none())
            .find(|s| log.key(*s) != self.committed.get(*s as usize - 1).copied())
        {
            return Err(format!(
                "node {i}, leader of {term}, holds {:?} at committed {seq} ({:?}): {}",
                log.key(seq),
                self.committed.get(seq as usize - 1),
                self.describe()
            ));
        }
        let Some((config_seq, config)) = log.config() else {
            return Err(format!("node {i} leads without a configuration"));
        };
        let mut tracker = CommitTracker::new(me, term);
        if let Some((seq, voters)) = log.previous() {
            tracker.set_configuration(seq, voters);
        }
        tracker.set_configuration(config_seq, config.voters());
        let last = log.len();
        let next = (0..self.nodes.len()).map(|j| (j, last + 1)).collect();
        self.nodes[i].lead = Some(Lead { term, tracker, next });
        match resumed {
            Some(start) => {
                let lead = self.nodes[i].lead.as_mut().ok_or("no lead")?;
                lead.tracker.on_leader_appended(last);
                lead.tracker.set_term_start(start);
                self.log(|| format!("node {i} resumes leading {term} from {start}"));
            }
            None => {
                let entry = self.fresh_entry(term, Rc::clone(&config));
                self.append_own(i, entry)?;
                let lead = self.nodes[i].lead.as_mut().ok_or("no lead")?;
                lead.tracker.set_term_start(last + 1);
                self.log(|| format!("node {i} leads {term}, first entry {}", last + 1));
            }
        }
        Ok(())
    }

    /// Leader `i` appends the write `entry` carries, recording it.
    fn append_write(&mut self, i: usize, entry: Entry) -> Result<(), String> {
        if let Some(w) = entry.write {
            self.appended.entry(w).or_insert(entry.term);
            *self.writes_by_term.entry(entry.term).or_default() += 1;
        }
        self.append_own(i, entry)
    }

    /// Leader `i` appends `entry` to its own log (a configuration entry is given to its
    /// tracker first, as the tracker's documentation requires).
    fn append_own(&mut self, i: usize, entry: Entry) -> Result<(), String> {
        let seq = self.nodes[i].log.len() + 1;
        let node = &mut self.nodes[i];
        let Some(lead) = node.lead.as_mut() else { return Err("append without lead".into()) };
        if let Some(config) = &entry.config {
            lead.tracker.set_configuration(seq, config.voters());
        }
        node.log.push(entry);
        lead.tracker.on_leader_appended(seq);
        Ok(())
    }

    /// Leader `i` may change the configuration: a promotion or demotion first, else (before
    /// the heal) a random Add, Remove or SetPreference.
    fn change(&mut self, i: usize) -> Result<(), String> {
        let node = &self.nodes[i];
        let (Some(lead), Some((config_seq, config))) = (&node.lead, node.log.config()) else {
            return Ok(());
        };
        let commit = lead.tracker.commit_sequence();
        if check_change(config_seq, commit, lead.tracker.term_start()).is_err() {
            return Ok(());
        }
        let last = node.log.len();
        let tracker = &lead.tracker;
        let mut next =
            next_voter_change(&config, node.id, |d| tracker.matched(d), last, BATCH as u64);
        let mut joiner = None;
        if next.is_none() && self.random_changes && self.healed_at.is_none() {
            let members = config.members.len();
            let pick = config.members[self.rng.gen_range(0..members)].device_id;
            let change = match self.rng.gen_range(0..10) {
                0..=2 if self.nodes.len() < MAX_DEVICES => {
                    let m = member(&mut self.rng, MemberRole::Learner);
                    joiner = Some(m.clone());
                    Some(MembershipChange::Add { member: m })
                }
                3..=5 => Some(MembershipChange::Remove { device_id: pick }),
                6..=8 => {
                    let preference =
                        [RolePreference::Auto, RolePreference::Learner, RolePreference::Voter]
                            [self.rng.gen_range(0..3)];
                    Some(MembershipChange::SetPreference { device_id: pick, preference })
                }
                _ => None,
            };
            next = change.and_then(|c| config.with_change(&c).ok());
        }
        let Some(next) = next.filter(|n| *n != *config) else { return Ok(()) };
        self.append_config(i, config_seq, &config, next, joiner)
    }

    /// Leader `i` appends the configuration `next` after `config` (at `config_seq`), checking
    /// first, independently of its tracker, that the change may start.
    fn append_config(
        &mut self,
        i: usize,
        config_seq: u64,
        config: &Configuration,
        next: Configuration,
        joiner: Option<Member>,
    ) -> Result<(), String> {
        if !next.is_single_voter_change_from(config) {
            return Err(format!("leader {i} changes more than one voter: {config:?} -> {next:?}"));
        }
        // A change never starts before the previous one (and the leader's first entry of its
        // term) reached a commit majority.
        let node = &self.nodes[i];
        let term_start =
            node.lead.as_ref().and_then(|l| l.tracker.term_start()).unwrap_or(u64::MAX);
        for seq in [config_seq, term_start] {
            let held = node.log.key(seq);
            let voters = config.voters();
            let holders = voters
                .iter()
                .filter(|d| self.index(**d).is_some_and(|j| self.nodes[j].log.key(seq) == held))
                .count();
            if held.is_none() || holders < majority(voters.len()) {
                return Err(format!(
                    "leader {i} changes the configuration while entry {seq} is on {holders} of \
                     {} voters: {}",
                    voters.len(),
                    self.describe()
                ));
            }
        }
        let Some(term) = node.lead.as_ref().map(|l| l.term) else { return Ok(()) };
        let seq = node.log.len() + 1;
        let next = Rc::new(next);
        let entry = self.fresh_entry(term, Rc::clone(&next));
        let (before, after) = (self.indices(&config.voters()), self.indices(&next.voters()));
        self.log(|| {
            format!("leader {i} appends configuration {seq}: voters {before:?} -> {after:?}")
        });
        self.append_own(i, entry)?;
        self.outcome.changes += 1;
        if self.rng.gen_bool(0.3) {
            // A partition while the change propagates.
            let soon = Duration::from_millis(self.rng.gen_range(0..20));
            self.schedule(soon, Event::Partition);
        }
        if let Some(m) = joiner {
            self.add_joiner(m, seq, next)?;
        }
        self.settle(i)
    }

    /// A device added by the entry at `seq`: it starts with only that configuration, as a
    /// learner, and sometimes cannot reach anyone for a long time.
    fn add_joiner(
        &mut self,
        member: Member,
        seq: u64,
        config: Rc<Configuration>,
    ) -> Result<(), String> {
        let i = self.nodes.len();
        let isolated = self.rng.gen_bool(0.3);
        let mut node =
            Node::new(member.device_id, PersistedElection::default(), Log::joiner(seq, config));
        node.isolated = isolated;
        self.nodes.push(node);
        self.outcome.joiners += 1;
        if isolated {
            self.outcome.isolated_joiners += 1;
            let until = ET * self.rng.gen_range(3..30);
            self.schedule(until, Event::Reconnect(i));
        }
        self.log(|| format!("joiner {i} added (isolated: {isolated})"));
        self.start(i)
    }

    // ---- the machines' actions ------------------------------------------------------------

    /// Brings node `i` in line with its log: the leader's commit and resignation, the
    /// machine's membership and last log position; then re-arms its timer.
    fn settle(&mut self, i: usize) -> Result<(), String> {
        for _ in 0..8 {
            let now = self.at();
            let node = &mut self.nodes[i];
            let Some(m) = node.machine.as_mut() else { return Ok(()) };
            if node.lead.as_ref().is_some_and(|l| !m.is_leader() || m.term() != l.term) {
                node.lead = None;
            }
            if let Some(lead) = &node.lead {
                let commit = lead.tracker.commit_sequence();
                if commit > node.log.commit() {
                    node.log.set_commit(commit);
                    self.extend_committed(i)?;
                    self.on_commit(i);
                    continue;
                }
                let node = &mut self.nodes[i];
                let Some(m) = node.machine.as_mut() else { return Ok(()) };
                if let Some((seq, config)) = node.log.config() {
                    if node.log.commit() >= seq && !config.is_voter(node.id) {
                        let actions = m.resign(now);
                        self.outcome.resignations += 1;
                        self.log(|| format!("node {i} resigns"));
                        self.execute(i, actions)?;
                        continue;
                    }
                }
            }
            let node = &mut self.nodes[i];
            let Some(m) = node.machine.as_mut() else { return Ok(()) };
            let generation = node.log.generation();
            if node.synced != Some(generation) {
                if m.membership() != node.log.membership() {
                    let actions = m.set_membership(node.log.membership().clone(), now);
                    self.execute(i, actions)?;
                    continue;
                }
                node.synced = Some(generation);
            }
            m.set_last_log(node.log.last());
            return self.arm(i);
        }
        Err(format!("node {i} does not settle"))
    }

    /// Leader `i`'s commit sequence grew beyond the committed prefix: check its log against
    /// it, extend it, and check every device's log and the commit majorities on the new part.
    fn extend_committed(&mut self, i: usize) -> Result<(), String> {
        let log = &self.nodes[i].log;
        let commit = log.commit();
        let known = self.committed.len() as u64;
        for seq in 1..=commit.min(known) {
            if log.key(seq) != self.committed.get(seq as usize - 1).copied() {
                return Err(format!(
                    "leader {i} commits {commit} but holds {:?} at committed {seq} ({:?}): {}",
                    log.key(seq),
                    self.committed.get(seq as usize - 1),
                    self.describe()
                ));
            }
        }
        if commit <= known {
            return Ok(());
        }
        // The commit rule, on the devices' actual logs: the entry at `commit` is held by a
        // commit majority of the leader's latest voters and, if its last voter change was not
        // committed before, of the voters before it.
        // The voters before the change must hold the change itself (or `commit`, if it is
        // before the change): once the change is committed, the latest voters alone commit
        // what follows it.
        let mut sets = Vec::new();
        if let Some((_, config)) = log.config() {
            sets.push((config.voters(), commit));
        }
        if let Some((seq, voters)) = self.last_voter_change(i) {
            if seq > known {
                sets.push((voters, commit.min(seq)));
            }
        }
        for (voters, at) in &sets {
            let Some(key) = log.key(*at) else {
                return Err(format!("leader {i} commits beyond its log"));
            };
            let holders = voters
                .iter()
                .filter(|d| {
                    self.index(**d).is_some_and(|j| self.nodes[j].log.key(*at) == Some(key))
                })
                .count();
            if holders < majority(voters.len()) {
                return Err(format!(
                    "leader {i} commits {commit}, {at} held by {holders} of voters {:?}: {}",
                    self.indices(voters),
                    self.describe()
                ));
            }
        }
        for seq in known + 1..=commit {
            let Some(entry) = log.entry(seq) else { break };
            if let Some(config) = &entry.config {
                self.outcome.configs_committed += 1;
                let before = log.config_sequences().iter().rev().find(|s| **s < seq);
                let before =
                    before.and_then(|s| log.entry(*s)?.config.as_ref()).map(|c| c.voters());
                let (from, to) = (before.map_or(0, |v| v.len()), config.voters().len());
                if from != to {
                    if let Some(n) =
                        self.outcome.transitions.get_mut(from).and_then(|r| r.get_mut(to))
                    {
                        *n += 1;
                    }
                }
            }
            self.committed.push(entry.key());
        }
        Ok(())
    }

    /// Leader `i`'s last voter change: `(its sequence, the voters before it)`, whether known
    /// committed or not.
    fn last_voter_change(&self, i: usize) -> Option<(u64, BTreeSet<Uuid>)> {
        let log = &self.nodes[i].log;
        let seqs = log.config_sequences();
        seqs.windows(2).rev().find_map(|w| {
            let before = log.entry(w[0])?.config.as_ref()?.voters();
            let after = log.entry(w[1])?.config.as_ref()?.voters();
            (before != after).then_some((w[1], before))
        })
    }

    /// Performs node `i`'s actions in order, checking that each send follows the Persist it
    /// depends on and that a non-voter never campaigns or grants.
    fn execute(&mut self, i: usize, actions: Vec<Action>) -> Result<(), String> {
        let me = self.nodes[i].id;
        let mut learners_asked = false;
        for action in actions {
            self.log(|| format!("  node {i}: {action:?}"));
            let p = self.nodes[i].persisted;
            // Read from the configuration itself, not from the Membership derived from it.
            let config = self.nodes[i].log.config().map(|(_, c)| c);
            let member = config.as_ref().is_some_and(|c| c.contains(me));
            let previous = self.nodes[i].log.previous().is_some_and(|(_, p)| p.contains(&me));
            // A voter of its latest configuration or of the previous voters it keeps.
            let voter = config.as_ref().is_some_and(|c| c.is_voter(me)) || previous;
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
                    if !voter {
                        return Err(format!("node {i}, not a voter, became leader of {term}"));
                    }
                    if self.nodes[i].transfer_term == Some(term) {
                        self.outcome.transfers_completed += 1;
                    }
                    let id = me;
                    if *self.leaders.entry(term).or_insert(id) != id {
                        return Err(format!("two leaders in term {term}: {}", self.describe()));
                    }
                    self.take_over(i, term)?;
                }
                Action::BecomeCandidate { term } => {
                    if p.term != term {
                        return Err(format!("node {i} campaigns in {term} unpersisted: {p:?}"));
                    }
                    if !voter {
                        return Err(format!("node {i}, not a voter, campaigns in {term}"));
                    }
                }
                Action::BecomeFollower { term, .. } => {
                    if p.term != term {
                        return Err(format!("node {i} follows in {term} unpersisted: {p:?}"));
                    }
                    self.nodes[i].lead = None;
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
                        let learners =
                            config.map(|c| self.indices(&c.learners())).unwrap_or_default();
                        for l in learners {
                            self.send(i, l, Msg::Vote(request));
                        }
                    }
                }
                Action::SendVoteResponse { to, response } => {
                    if response.granted && !member && !previous {
                        return Err(format!("node {i}, not a member, grants: {response:?}"));
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
                    // The tracker recomputes only when told something; once the last voter
                    // change commits it forgets the previous voters but keeps the commit it
                    // computed with them, below what the latest voters alone hold. With no
                    // append and no ack to follow (a leader left as the only voter) that
                    // commit would stay there: tell it the leader's last sequence again.
                    let len = self.nodes[i].log.len();
                    if let Some(lead) = self.nodes[i].lead.as_mut() {
                        let before = lead.tracker.commit_sequence();
                        lead.tracker.on_leader_appended(len);
                        if lead.tracker.commit_sequence() > before {
                            self.outcome.late_commits += 1;
                        }
                    }
                    for j in self.targets(i) {
                        self.send_append(i, j);
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
    fn arm(&mut self, i: usize) -> Result<(), String> {
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

    // ---- invariants -----------------------------------------------------------------------

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
            // Compared again only when the log's derivation changed since they were found
            // equal: the machine's membership changes only through `set_membership`.
            let generation = node.log.generation();
            if node.synced != Some(generation) {
                if m.membership() != node.log.membership() {
                    return Err(format!("node {i}'s machine is not on its log's configuration"));
                }
                node.synced = Some(generation);
            }
            if let Some((w, first, second)) = node.log.doubled() {
                return Err(format!(
                    "node {i}'s log holds write {w} twice: at {first} and {second}"
                ));
            }
            if node.log.commit() > self.committed.len() as u64 {
                return Err(format!(
                    "node {i} knows commit {} beyond any leader's",
                    node.log.commit()
                ));
            }
            if m.is_leader() {
                let (id, term) = (node.id, m.term());
                if *self.leaders.entry(term).or_insert(id) != id {
                    return Err(format!("two leaders in term {term}: {}", self.describe()));
                }
            }
        }
        // Coverage: both devices of a two-voter library leading at once (in their own terms);
        // the terms are kept to count the schedules where both sides wrote.
        if self.nodes.iter().filter(|n| n.lead.is_some()).nth(1).is_some() {
            let leading: Vec<(&Node, u64)> =
                self.nodes.iter().filter_map(|n| Some((n, n.lead.as_ref()?.term))).collect();
            let mut pairs = Vec::new();
            for (k, (a, ta)) in leading.iter().enumerate() {
                let voters = a.log.membership().voters();
                for (b, tb) in &leading[k + 1..] {
                    if voters.len() == 2 && b.log.membership().voters() == voters {
                        pairs.push(((*ta).min(*tb), (*ta).max(*tb)));
                    }
                }
            }
            self.outcome.two_voter_split |= !pairs.is_empty();
            self.split_terms.extend(pairs);
        }
        Ok(())
    }

    /// A leader that every up member of its configuration (and every previous voter it still
    /// replicates to) follows in its term. (A removed device cut off from everyone may still
    /// believe it leads an old term: it is no member of anyone's configuration.)
    fn stable_leader(&self) -> bool {
        self.stable_leader_index().is_some()
    }

    /// The leader [`Self::stable_leader`] finds.
    fn stable_leader_index(&self) -> Option<usize> {
        (0..self.nodes.len()).filter(|i| self.nodes[*i].lead.is_some()).find(|&i| {
            let Some(leader) = self.nodes[i].machine.as_ref() else { return false };
            let (id, term) = (leader.me(), leader.term());
            self.targets(i)
                .into_iter()
                .filter_map(|j| self.nodes[j].machine.as_ref())
                .all(|m| m.term() == term && m.leader() == Some(id))
        })
    }
}

/// A commit majority of `n` voters, `n / 2 + 1`: the simulator's own, so that a defect in the
/// code under test cannot weaken its checks.
fn majority(n: usize) -> usize {
    n / 2 + 1
}
