//! The world of one seed: the devices, the network, the clock, the nemesis, the workload, and
//! the checks made on every step and at the end.
//!
//! Time is simulated, in microseconds, and only moves from one event to the next; every event
//! is an entry of one ordered queue (time, then insertion order), and every choice comes from
//! one generator seeded with the seed. A device's clock is the simulation's minus the time it
//! spent suspended (a monotonic clock does not count a suspend); a device that is paused
//! (SIGSTOP) or suspended handles nothing until it resumes, then everything that arrived.
//!
//! A run has two phases. During the **fault phase** the workload writes and the nemesis
//! strikes. Then the **drain**: every link heals, every device resumes or restarts, the network
//! stops losing messages, no new writes; the devices must then converge within the drain limit.
//! The final checks follow (see [`crate::check`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use libp2p::PeerId;
use lsync_actors::config::SyncConfig;
use lsync_actors::NetworkError;
use lsync_protocol::{
    Configuration, Member, MemberRole, MembershipChange, RolePreference, SyncRole, FEATURE_VERSION,
};
use lsync_storage::{Change, Database, SyncState, Synchronous, Tag, TransactionManager};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use uuid::Uuid;

use crate::check::Checker;
use crate::device::{BootClock, Device, Output};
use crate::disk::Disk;
use crate::net::{Delivery, InFlight, Ix, Micros, Net, NetFaults, RequestId};
use crate::oracle::{token_of_change, tokens_of, Oracle, Outcome, Part};

const MS: Micros = 1_000;
const SEC: Micros = 1_000_000;

/// The kinds of fault the nemesis may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// kill -9 of a device, restarted a moment later (a committed transaction survives).
    Crash,
    /// SIGSTOP, SIGCONT a moment later (the clock runs on).
    Pause,
    /// A suspend: paused, and the device's monotonic clock does not count it.
    Suspend,
    /// A set of devices cut off from the others, both ways.
    Partition,
    /// One link cut one way.
    OneWay,
    /// Power loss: a crash that loses what was not synced — nothing under `synchronous =
    /// FULL` (the default; then it is a crash), the commits since the last sync point under
    /// `NORMAL` (`--synchronous normal`).
    Power,
    /// An older copy of a device's database put back.
    Restore,
}

impl Fault {
    /// Every kind, in order.
    pub const ALL: [Fault; 7] = [
        Fault::Crash,
        Fault::Pause,
        Fault::Suspend,
        Fault::Partition,
        Fault::OneWay,
        Fault::Power,
        Fault::Restore,
    ];

    /// The kinds whose every failure is a defect of the product. Power losses and restores
    /// lose what the documentation says they may lose, and more until issue 16 is done (a
    /// reused (sequence, term), a vote forgotten): they run only when asked for.
    pub const SAFE: [Fault; 5] =
        [Fault::Crash, Fault::Pause, Fault::Suspend, Fault::Partition, Fault::OneWay];

    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Fault::Crash => "crash",
            Fault::Pause => "pause",
            Fault::Suspend => "suspend",
            Fault::Partition => "partition",
            Fault::OneWay => "one-way",
            Fault::Power => "power",
            Fault::Restore => "restore",
        }
    }

    /// The kind named `name`.
    pub fn parse(name: &str) -> Option<Fault> {
        Fault::ALL.into_iter().find(|f| f.name() == name)
    }
}

/// What one run does.
#[derive(Debug, Clone)]
pub struct Options {
    pub seed: u64,
    /// Devices (the first creates the library; the others join by a configuration change).
    pub devices: usize,
    /// How long the fault phase lasts (simulated).
    pub fault_phase: Duration,
    /// The longest the drain may take (simulated).
    pub drain_limit: Duration,
    /// Mean time between two writes.
    pub write_every: Duration,
    /// Mean time between two faults.
    pub fault_every: Duration,
    /// The fault kinds the nemesis draws from.
    pub faults: BTreeSet<Fault>,
    /// The network's faults during the fault phase.
    pub net: NetFaults,
    /// Whether a write acknowledged at the `local` level found at another sequence than its
    /// answer fails the run (a `majority` write's always does: that is its promise; a `local`
    /// one's may move after a failover, docs/operations.md, and is counted as `moved`).
    pub strict_sequences: bool,
    /// The share of writes made at the `majority` level (the others at `local`).
    pub majority_share: f64,
    /// The share of changes that are Patches of one field of a committed record (the others
    /// whole-record upserts).
    pub patch_share: f64,
    /// The devices' `storage.synchronous` (default `FULL`, as the product's).
    pub synchronous: Synchronous,
    /// Where the devices' files go (a temporary directory if `None`).
    pub dir: Option<PathBuf>,
    /// Record a trace of every event (printed on failure by the binary).
    pub trace: bool,
    /// Print the trace to stderr as it happens instead of recording it.
    pub trace_live: bool,
    /// Leaders answer writes as committed only under the leader lease, as real nodes do
    /// (docs/architecture.md, "The leader lease"). Off (`--no-lease`), they answer at once:
    /// what the checker's rule "no committed answer in a term after a later one was won"
    /// is shown to find.
    pub lease: bool,
}

impl Options {
    /// The defaults for `seed`: 3 to 5 devices (from the seed), 20 simulated seconds of faults.
    pub fn new(seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed ^ 0xdead_beef);
        Self {
            seed,
            devices: rng.gen_range(3..=5),
            fault_phase: Duration::from_secs(20),
            drain_limit: Duration::from_secs(60),
            write_every: Duration::from_millis(40),
            fault_every: Duration::from_millis(1_500),
            faults: Fault::SAFE.into_iter().collect(),
            net: NetFaults {
                loss: 0.02,
                duplicate: 0.01,
                delay: (200, 8 * MS),
                request_timeout: 2 * SEC,
            },
            strict_sequences: false,
            majority_share: 0.5,
            patch_share: 0.3,
            synchronous: Synchronous::Full,
            dir: None,
            trace: false,
            trace_live: false,
            lease: true,
        }
    }

    /// The one-line command that replays this run.
    pub fn replay_command(&self) -> String {
        let faults: Vec<&str> = self.faults.iter().map(|f| f.name()).collect();
        let mut cmd = format!(
            "cargo run --release -p lsync-sim -- --seed {} --devices {} --faults {}",
            self.seed,
            self.devices,
            faults.join(",")
        );
        let phase = self.fault_phase.as_millis();
        if phase != Self::new(self.seed).fault_phase.as_millis() {
            cmd.push_str(&format!(" --fault-phase-ms {phase}"));
        }
        if self.strict_sequences {
            cmd.push_str(" --strict-sequences");
        }
        if self.synchronous == Synchronous::Normal {
            cmd.push_str(" --synchronous normal");
        }
        if self.majority_share != Self::new(self.seed).majority_share {
            cmd.push_str(&format!(" --majority-share {}", self.majority_share));
        }
        if self.patch_share != Self::new(self.seed).patch_share {
            cmd.push_str(&format!(" --patch-share {}", self.patch_share));
        }
        if !self.lease {
            cmd.push_str(" --no-lease");
        }
        cmd.push_str(" --trace");
        cmd
    }
}

/// What one run did and found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub seed: u64,
    pub devices: usize,
    pub writes: u64,
    pub acknowledged: u64,
    /// Of the acknowledged, those at the `majority` level (each at its answered sequences).
    pub majority: u64,
    /// `majority` writes no majority held within the request timeout (answered pending).
    pub unresolved: u64,
    pub queued: u64,
    pub refused: u64,
    pub unknown: u64,
    pub lost_with_disk: u64,
    pub moved: u64,
    /// Patches among the writes' changes.
    pub patches: u64,
    /// Changes that had to commit, missing because later writes set every field they set.
    pub decided_away: u64,
    /// Conflict records in the final log.
    pub conflicts: u64,
    /// Answers that said committed only after a wait for a heartbeat round (the leader lease
    /// had expired), and answers the lease did not confirm (the write's outcome unknown, or its
    /// delivery retried).
    pub lease_waits: u64,
    pub lease_unconfirmed: u64,
    pub faults: BTreeMap<String, u64>,
    pub leader_changes: u64,
    pub messages: u64,
    pub messages_lost: u64,
    pub simulated_ms: u64,
    pub drain_ms: u64,
    /// Set when a committed entry was left on no disk (more devices lost acknowledged data
    /// than the library tolerates): the run then may end without a leader — by design the
    /// library waits for an operator — and is not failed for it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operator_needed: Option<String>,
    pub failures: Vec<String>,
}

impl Report {
    /// Whether the run found nothing wrong.
    pub fn ok(&self) -> bool {
        self.failures.is_empty()
    }
}

/// What happens at an instant.
#[derive(Debug)]
enum Ev {
    Net(InFlight),
    Wake(Ix, u64),
    Write,
    Fault,
    Heal,
    Resume(Ix),
    Restart(Ix),
    Join(Ix),
    Sync(Ix),
    Drain,
    DrainCheck,
}

/// What a paused device has not handled yet.
#[derive(Debug)]
enum Held {
    Delivery(Delivery),
    Write { write: usize, proposal_id: Uuid, changes: Vec<Change>, majority: bool },
}

/// One device's place in the world.
struct Slot {
    id: Uuid,
    peer: PeerId,
    member: Member,
    disk: Disk,
    device: Option<Device>,
    /// Its database exists (it created the library or joined it).
    joined: bool,
    /// A join is asked of the leader.
    joining: bool,
    /// Paused until it resumes; what arrived meanwhile.
    paused: bool,
    held: Vec<Held>,
    /// Suspended time, not counted by its clock.
    suspended: Micros,
    suspend_started: Option<Micros>,
    timer: u64,
    /// The time it went down, while down.
    down_since: Option<Micros>,
    /// Its disk lost data since the last check of its term (terms may go back then).
    disk_lost: bool,
    last_term: u64,
    /// Its role and term at the last check, and the last commit sequence it published (traced
    /// when they change).
    last_role: Option<(SyncRole, u64)>,
    last_commit: u64,
    /// [`Database::syncs`] of its database at the last look (`synchronous = NORMAL`: an fsync
    /// the product made is a sync point).
    seen_syncs: u64,
}

/// The world of one seed.
pub struct World {
    /// `LSYNC_SIM_DEBUG` is set: failures' arrivals are traced too.
    debug: bool,
    /// The devices that ran since the last check.
    touched: BTreeSet<Ix>,
    opts: Options,
    rng: StdRng,
    now: Micros,
    base: Instant,
    queue: BTreeMap<(Micros, u64), Ev>,
    seq: u64,
    net: Net,
    slots: Vec<Slot>,
    /// The requests in flight: net id → (sender, its token).
    tokens: BTreeMap<RequestId, (Ix, u64)>,
    oracle: Oracle,
    checker: Checker,
    /// The devices' lease clock: the simulated time, counting pauses and suspends.
    boot_clock: BootClock,
    report: Report,
    library_id: Uuid,
    next_write: u64,
    /// Membership changes asked: token → the device joining.
    changes: BTreeMap<u64, Ix>,
    next_change: u64,
    draining: bool,
    drain_started: Micros,
    done: bool,
    pub trace: Vec<String>,
    _tmp: Option<tempfile::TempDir>,
}

fn config() -> SyncConfig {
    SyncConfig {
        heartbeat_interval: Duration::from_millis(100),
        leader_timeout: Duration::from_millis(600),
        notify_window: Duration::from_millis(10),
        max_entries_per_response: 16,
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(500),
        ack_every: 32,
        ..SyncConfig::default()
    }
}

impl World {
    /// The world of `opts`, its library created on device 0.
    pub fn new(opts: Options) -> anyhow::Result<Self> {
        let mut rng = StdRng::seed_from_u64(opts.seed);
        let (tmp, dir) = match &opts.dir {
            Some(d) => (None, d.clone()),
            None => {
                // Memory-backed when the machine has it: the simulated disk decides what
                // survives a power loss, so the real one's fsyncs only cost time (3× here).
                let shm = std::path::Path::new("/dev/shm");
                let builder = {
                    let mut b = tempfile::Builder::new();
                    b.prefix("lsync-sim-");
                    b
                };
                let t = if shm.is_dir() {
                    builder.tempdir_in(shm).or_else(|_| builder.tempdir())?
                } else {
                    builder.tempdir()?
                };
                let p = t.path().to_owned();
                (Some(t), p)
            }
        };
        let mut slots = Vec::new();
        for ix in 0..opts.devices {
            let bytes: [u8; 32] = rng.gen();
            let multihash: Vec<u8> = [0x12, 32].into_iter().chain(bytes).collect();
            let peer = PeerId::from_bytes(&multihash)?;
            let id = Uuid::from_u128(rng.gen());
            let member = Member {
                device_id: id,
                peer_id: peer.to_string(),
                addresses: vec![format!("/ip4/127.0.0.1/tcp/{}", 7000 + ix)],
                name: format!("device-{ix}"),
                role: MemberRole::Learner,
                preference: RolePreference::Auto,
            };
            slots.push(Slot {
                id,
                peer,
                member,
                disk: Disk::new(dir.join(format!("device-{ix}")), opts.synchronous)?,
                device: None,
                joined: false,
                joining: false,
                paused: false,
                held: Vec::new(),
                suspended: 0,
                suspend_started: None,
                timer: 0,
                down_since: None,
                disk_lost: false,
                last_term: 0,
                last_role: None,
                last_commit: 0,
                seen_syncs: 0,
            });
        }
        let library_id = Uuid::from_u128(rng.gen());
        let net = Net::new(opts.net.clone());
        let mut world = Self {
            checker: Checker::new(opts.strict_sequences),
            report: Report { seed: opts.seed, devices: opts.devices, ..Report::default() },
            debug: std::env::var_os("LSYNC_SIM_DEBUG").is_some(),
            opts,
            touched: BTreeSet::new(),
            rng,
            now: 0,
            base: Instant::now(),
            queue: BTreeMap::new(),
            seq: 0,
            net,
            slots,
            tokens: BTreeMap::new(),
            oracle: Oracle::default(),
            boot_clock: BootClock::default(),
            library_id,
            next_write: 0,
            changes: BTreeMap::new(),
            next_change: 0,
            draining: false,
            drain_started: 0,
            done: false,
            trace: Vec::new(),
            _tmp: tmp,
        };
        world.create()?;
        Ok(world)
    }

    fn at(&mut self, at: Micros, ev: Ev) {
        self.seq += 1;
        self.queue.insert((at, self.seq), ev);
    }

    fn after(&mut self, delay: Micros, ev: Ev) {
        self.at(self.now + delay, ev);
    }

    fn exp(&mut self, mean: Duration) -> Micros {
        let mean = mean.as_micros().max(1) as f64;
        let u: f64 = self.rng.gen_range(f64::EPSILON..1.0);
        (-u.ln() * mean) as Micros
    }

    fn log(&mut self, line: impl FnOnce() -> String) {
        if self.opts.trace {
            let t = self.now as f64 / 1_000.0;
            let line = format!("{t:>10.3} ms  {}", line());
            if self.opts.trace_live {
                eprintln!("{line}");
            } else {
                self.trace.push(line);
            }
        }
    }

    fn clock(&self, ix: Ix) -> (Instant, i64) {
        let local = self.now.saturating_sub(self.slots[ix].suspended);
        (self.base + Duration::from_micros(local), self.wall_ms() as i64)
    }

    /// The simulated wall clock, in milliseconds since the Unix epoch.
    fn wall_ms(&self) -> u64 {
        1_800_000_000_000 + self.now / MS
    }

    /// Device 0 creates the library (as `Node::create_library`); the others join later.
    fn create(&mut self) -> anyhow::Result<()> {
        let s = &self.slots[0];
        let db = s.disk.open()?;
        db.init_sync_state(&SyncState {
            library_id: self.library_id,
            device_id: s.id,
            role: SyncRole::Leader,
            current_term: 1,
            voted_for: Some(s.id),
            leader_device: Some(s.id),
            last_synced_sequence: 0,
        })?;
        let me = Member { role: MemberRole::Voter, ..s.member.clone() };
        TransactionManager::new(db.clone(), s.id)
            .commit_config(&Configuration::new(FEATURE_VERSION, vec![me]))?;
        self.slots[0].joined = true;
        self.boot(0, db)?;
        for ix in 1..self.opts.devices {
            let at = 50 * MS * ix as Micros;
            self.at(at, Ev::Join(ix));
        }
        let first_write = self.exp(self.opts.write_every);
        self.at(first_write, Ev::Write);
        let first_fault = 2 * SEC + self.exp(self.opts.fault_every);
        self.at(first_fault, Ev::Fault);
        let drain = self.opts.fault_phase.as_micros() as Micros;
        self.at(drain, Ev::Drain);
        for ix in 0..self.opts.devices {
            let at = self.exp(Duration::from_millis(500));
            self.at(at, Ev::Sync(ix));
        }
        Ok(())
    }

    fn boot(&mut self, ix: Ix, db: Database) -> anyhow::Result<()> {
        let (now, wall) = self.clock(ix);
        let seed = self.rng.gen();
        let s = &self.slots[ix];
        let syncs = db.syncs();
        let (clock, lease) = (self.boot_clock.clone(), self.opts.lease);
        let (device, out) =
            Device::boot(ix, s.id, s.peer, db, config(), seed, now, wall, clock, lease)?;
        self.slots[ix].device = Some(device);
        self.slots[ix].seen_syncs = syncs;
        self.slots[ix].down_since = None;
        self.log(|| format!("device {ix} up"));
        self.outputs(ix, out);
        Ok(())
    }

    /// Runs the world to its end.
    pub fn run(mut self) -> (Report, Vec<String>) {
        // Timestamps (last-writer-wins) read the simulated wall clock, so a seed decides every
        // conflict the same way at every run (the storage's thread clock: the whole world runs
        // on this thread).
        let wall = std::rc::Rc::new(std::cell::Cell::new(self.wall_ms()));
        let read = wall.clone();
        lsync_storage::hlc::set_thread_clock(Some(Box::new(move || read.get())));
        while !self.done {
            let Some(((at, _), ev)) = self.queue.pop_first() else {
                self.fail("nothing left to happen before the end".into());
                break;
            };
            self.now = at;
            wall.set(self.wall_ms());
            self.boot_clock.set(self.now);
            if let Err(e) = self.step(ev) {
                self.fail(format!("simulation error: {e:#}"));
                break;
            }
            if let Err(e) = self.follow_syncs() {
                self.fail(format!("simulation error: {e:#}"));
                break;
            }
            self.check_step();
            if !self.report.failures.is_empty() {
                // the first broken rule is the one to replay; what follows is its echo
                break;
            }
        }
        self.report.simulated_ms = self.now / MS;
        self.report.messages = self.net.sent;
        self.report.messages_lost = self.net.lost;
        let trace = std::mem::take(&mut self.trace);
        // the devices close their databases before the directory goes
        for s in &mut self.slots {
            s.device = None;
        }
        (self.report, trace)
    }

    fn step(&mut self, ev: Ev) -> anyhow::Result<()> {
        match ev {
            Ev::Net(flight) => self.arrive(flight),
            Ev::Wake(ix, timer) => {
                if self.slots[ix].timer == timer && !self.slots[ix].paused {
                    let (now, wall) = self.clock(ix);
                    if let Some(d) = self.slots[ix].device.as_mut() {
                        let out = d.tick(now, wall);
                        self.outputs(ix, out);
                    }
                }
            }
            Ev::Write => {
                if !self.draining {
                    self.write();
                    let next = self.exp(self.opts.write_every);
                    self.after(next, Ev::Write);
                }
            }
            Ev::Fault => {
                if !self.draining {
                    self.fault()?;
                    let next = self.exp(self.opts.fault_every);
                    self.after(next, Ev::Fault);
                }
            }
            Ev::Heal => {
                self.net.heal();
                self.log(|| "network healed".into());
            }
            Ev::Resume(ix) => self.resume(ix),
            Ev::Restart(ix) => self.restart(ix)?,
            Ev::Join(ix) => self.join(ix),
            Ev::Sync(ix) => {
                // The copies matter only to the faults that go back to one: without power losses
                // and restores they are skipped (the draw is kept, so a seed's schedule does not
                // depend on it).
                let backup = self.rng.gen_bool(0.2);
                let copies = self.opts.faults.contains(&Fault::Power)
                    || self.opts.faults.contains(&Fault::Restore);
                if let (true, Some(d)) = (copies, &self.slots[ix].device) {
                    let db = d.db().clone();
                    // under FULL every commit is a sync point already
                    if self.opts.synchronous == Synchronous::Normal {
                        self.slots[ix].disk.sync(&db)?;
                    }
                    // The high-water mark follows what is on disk (the election actor raises
                    // it after an fsync of the database, at most once per heartbeat; here, at
                    // each sync point): a restore of an older copy leaves the database behind
                    // it, a power loss never does.
                    db.raise_mark()?;
                    if backup {
                        self.slots[ix].disk.backup(&db)?;
                    }
                }
                // Now and then (it replays the whole log): the device's tables are its
                // committed log replayed with its pending changes on top.
                if self.rng.gen_bool(0.05) {
                    if let Some(d) = &self.slots[ix].device {
                        if let Err(p) = crate::check::tables_match_log_and_pending(d.db()) {
                            self.fail(format!(
                                "device {ix}'s tables are not its log and pending changes: {p}"
                            ));
                        }
                    }
                }
                if !self.draining {
                    let next = self.exp(Duration::from_millis(700));
                    self.after(next, Ev::Sync(ix));
                }
            }
            Ev::Drain => self.drain()?,
            Ev::DrainCheck => self.drain_check(),
        }
        Ok(())
    }

    // ---- devices and the network ------------------------------------------------------------

    fn ix_of(&self, peer: &PeerId) -> Option<Ix> {
        self.slots.iter().position(|s| s.peer == *peer)
    }

    fn outputs(&mut self, ix: Ix, out: Vec<Output>) {
        self.touched.insert(ix);
        for o in out {
            match o {
                Output::Request { to, msg, token } => {
                    let Some(target) = self.ix_of(&to) else {
                        // no such device: the dial fails at once
                        let (now, wall) = self.clock(ix);
                        if let Some(d) = self.slots[ix].device.as_mut() {
                            let error = NetworkError::Dial("unknown peer".into());
                            let out = d.failure(token, error, now, wall);
                            self.outputs(ix, out);
                        }
                        continue;
                    };
                    let text = self.opts.trace.then(|| describe(&msg));
                    let (id, flights) = self.net.request(self.now, ix, target, msg, &mut self.rng);
                    if let Some(text) = text {
                        self.log(|| format!("{ix} → {target} #{id} {text}"));
                    }
                    self.tokens.insert(id, (ix, token));
                    for f in flights {
                        self.at(f.at, Ev::Net(f));
                    }
                }
                Output::Respond { id, msg } => {
                    self.log(|| format!("{ix} answers #{id} {}", describe(&msg)));
                    if let Some(f) = self.net.respond(self.now, id, msg, &mut self.rng) {
                        self.at(f.at, Ev::Net(f));
                    }
                }
                Output::Answer { write, outcome } => {
                    self.log(|| format!("write {write} on {ix}: {outcome:?}"));
                    self.oracle.answer(write, outcome);
                }
                Output::Changed { token, result } => self.changed(token, result),
                Output::Note(note) => self.log(|| format!("{ix}: {note}")),
                Output::Lease { term, voters, confirmed, waited } => {
                    self.report.lease_waits += u64::from(waited);
                    self.report.lease_unconfirmed += u64::from(!confirmed);
                    if waited || !confirmed {
                        self.log(|| format!("{ix}: lease of term {term}: confirmed {confirmed}"));
                    }
                    // the first broken rule is the one to report (the step's other answers echo it)
                    if confirmed && self.report.failures.is_empty() {
                        if let Err(e) = self.checker.on_committed_answer(ix, term, voters) {
                            self.fail(e);
                        }
                    }
                }
                Output::Committed { term, commit_sequence } => {
                    if self.slots[ix].last_commit != commit_sequence {
                        self.slots[ix].last_commit = commit_sequence;
                        self.log(|| format!("{ix} commits {commit_sequence} in term {term}"));
                    }
                    if let Some(d) = &self.slots[ix].device {
                        let db = d.db().clone();
                        if let Err(e) = self.checker.on_commit(ix, term, commit_sequence, &db) {
                            self.fail(e);
                        }
                    }
                }
            }
        }
        self.arm(ix);
    }

    /// Schedules the device's next wake-up at its earliest deadline.
    fn arm(&mut self, ix: Ix) {
        let Some(d) = &self.slots[ix].device else { return };
        let Some(deadline) = d.next_deadline() else { return };
        // rounded up: a wake-up before the deadline would find nothing due and re-arm forever
        let local =
            deadline.saturating_duration_since(self.base).as_nanos().div_ceil(1000) as Micros;
        let at = (local + self.slots[ix].suspended).max(self.now);
        self.slots[ix].timer += 1;
        let timer = self.slots[ix].timer;
        self.at(at, Ev::Wake(ix, timer));
    }

    fn arrive(&mut self, flight: InFlight) {
        let to = flight.to;
        if self.debug {
            if let Delivery::Failure { id, .. } = &flight.delivery {
                let (id, outstanding, token) =
                    (*id, self.net.is_outstanding(*id), self.tokens.contains_key(id));
                self.log(|| format!("{to}: failure of #{id} arrives ({outstanding} {token})"));
            }
        }
        let Some(delivery) = self.net.arrive(flight) else { return };
        if self.slots[to].device.is_none() {
            // A request to a device that is down: the connection fails.
            if let Delivery::Request { id, from, .. } = delivery {
                let f = InFlight {
                    at: self.now + MS,
                    to: from,
                    delivery: Delivery::Failure {
                        id,
                        peer: to,
                        reason: "connection closed".into(),
                    },
                    lost: false,
                };
                self.at(f.at, Ev::Net(f));
            }
            return;
        }
        if self.slots[to].paused {
            self.slots[to].held.push(Held::Delivery(delivery));
            return;
        }
        self.deliver(to, delivery);
    }

    fn deliver(&mut self, to: Ix, delivery: Delivery) {
        let (now, wall) = self.clock(to);
        let out = match delivery {
            Delivery::Request { id, from, msg } => {
                let peer = self.slots[from].peer;
                let d = self.slots[to].device.as_mut().expect("up");
                d.request(id, peer, msg, now, wall)
            }
            Delivery::Response { id, msg, .. } => {
                let Some((_, token)) = self.tokens.remove(&id) else { return };
                let d = self.slots[to].device.as_mut().expect("up");
                d.response(token, msg, now, wall)
            }
            Delivery::Failure { id, reason, .. } => {
                let Some((_, token)) = self.tokens.remove(&id) else { return };
                let error = if reason.contains("timed out") {
                    NetworkError::Timeout
                } else {
                    NetworkError::ConnectionClosed
                };
                let d = self.slots[to].device.as_mut().expect("up");
                d.failure(token, error, now, wall)
            }
        };
        self.outputs(to, out);
    }

    // ---- the workload -----------------------------------------------------------------------

    fn write(&mut self) {
        let up: Vec<Ix> = (0..self.slots.len())
            .filter(|&i| self.slots[i].device.is_some() && self.slots[i].joined)
            .collect();
        if up.is_empty() {
            return;
        }
        let ix = up[self.rng.gen_range(0..up.len())];
        self.next_write += 1;
        let n = self.next_write;
        let count = self.rng.gen_range(1..=3);
        let names: Vec<String> = (0..count).map(|k| format!("op-{n}.{k}")).collect();
        let mut changes = Vec::with_capacity(count);
        let mut parts = Vec::with_capacity(count);
        for name in &names {
            // half of the patches go to a few hot records, so that devices edit the same
            // field concurrently (while partitioned, from their outboxes)
            let patch = self.rng.gen_bool(self.opts.patch_share.clamp(0.0, 1.0));
            let hot = self.rng.gen_bool(0.5);
            let field = if self.rng.gen_bool(0.5) { "name" } else { "color" };
            let record = format!("r{}", self.rng.gen_range(0..if patch && hot { 6 } else { 24 }));
            if patch && self.patchable(ix, &record) {
                let fields: BTreeMap<&str, &str> = [(field, name.as_str())].into();
                changes.push(Change::update_fields("tag", record.clone(), &fields));
                parts.push(Part { record, field: Some(field) });
            } else {
                let tag = Tag { id: record.clone(), name: name.clone(), color: Some(name.clone()) };
                changes.push(Change::insert(&tag));
                parts.push(Part { record, field: None });
            }
        }
        let patches = parts.iter().filter(|p| p.field.is_some()).count();
        let what: Vec<String> =
            parts.iter().map(|p| format!("{}.{}", p.record, p.field.unwrap_or("*"))).collect();
        let proposal_id = Uuid::from_u128(self.rng.gen());
        let majority = self.rng.gen_bool(self.opts.majority_share.clamp(0.0, 1.0));
        let write = self.oracle.record(ix, proposal_id, names, parts, majority);
        let level = if majority { "majority" } else { "local" };
        self.log(|| {
            format!("write {write} on {ix} ({count} changes, {patches} patches, {level}): {what:?}")
        });
        if self.slots[ix].paused {
            self.slots[ix].held.push(Held::Write { write, proposal_id, changes, majority });
            return;
        }
        self.submit(ix, write, proposal_id, changes, majority);
    }

    fn submit(
        &mut self,
        ix: Ix,
        write: usize,
        proposal_id: Uuid,
        changes: Vec<Change>,
        majority: bool,
    ) {
        let (now, wall) = self.clock(ix);
        let Some(d) = self.slots[ix].device.as_mut() else { return };
        let out = d.write(write, proposal_id, changes, majority, now, wall);
        self.outputs(ix, out);
        self.read_stamps(ix, write, proposal_id);
    }

    /// Whether device `ix` may patch `record`: some leader committed it (so it exists at any
    /// later leader: records are never deleted) and the device shows it.
    fn patchable(&self, ix: Ix, record: &str) -> bool {
        if !self.checker.committed_records().contains(record) {
            return false;
        }
        let Some(d) = &self.slots[ix].device else { return false };
        let db = d.db();
        let Some(handler) = db.registry().handler("tag") else { return false };
        matches!(db.with_reader(|conn| handler.load(conn, record)), Ok(Some(_)))
    }

    /// Reads back the timestamps the changes of `write` got where they were stamped: its outbox
    /// entry (queued), or its entries (committed here, by this device as leader — answered
    /// already, or waiting for a majority: then they are the last entries of its log).
    fn read_stamps(&mut self, ix: Ix, write: usize, proposal_id: Uuid) {
        let Some(d) = &self.slots[ix].device else { return };
        let db = d.db();
        if let Ok(Some(entry)) = db.outbox_get(proposal_id) {
            for c in &entry.changes {
                if let (Some(token), Some(hlc)) = (token_of_change(c), c.hlc) {
                    self.oracle.stamped(&token, hlc);
                }
            }
            return;
        }
        let (first, last) = match self.oracle.writes()[write].outcome {
            Outcome::Committed { first, last } => (first, last),
            Outcome::Pending => {
                let Ok(head) = db.last_position() else { return };
                let count = self.oracle.writes()[write].names.len() as u64;
                (head.sequence.saturating_sub(count).max(1), head.sequence)
            }
            _ => return,
        };
        let Ok(entries) = db.fetch_range(first, last) else { return };
        for e in entries.iter().filter(|e| e.proposal_id == Some(proposal_id)) {
            if let Some(stamp) = &e.stamp {
                for token in tokens_of(e) {
                    self.oracle.stamped(&token, stamp.hlc);
                }
            }
        }
    }

    /// The device that leads the highest term among those up.
    fn leader(&self) -> Option<Ix> {
        (0..self.slots.len())
            .filter_map(|i| {
                let d = self.slots[i].device.as_ref()?;
                d.leads().map(|t| (t, i))
            })
            .max()
            .map(|(_, i)| i)
    }

    fn join(&mut self, ix: Ix) {
        if self.slots[ix].joined {
            return;
        }
        let Some(leader) = self.leader().filter(|l| !self.slots[*l].paused) else {
            self.after(300 * MS, Ev::Join(ix));
            return;
        };
        self.next_change += 1;
        let token = self.next_change;
        self.changes.insert(token, ix);
        self.slots[ix].joining = true;
        let member = self.slots[ix].member.clone();
        self.log(|| format!("device {ix} asks {leader} to join"));
        let (now, wall) = self.clock(leader);
        let d = self.slots[leader].device.as_mut().expect("up");
        let out = d.change_membership(
            MembershipChange::Add { member },
            token,
            Duration::from_secs(5),
            now,
            wall,
        );
        self.outputs(leader, out);
    }

    fn changed(
        &mut self,
        token: u64,
        result: Result<
            lsync_actors::leader::messages::ConfigOutcome,
            lsync_actors::leader::messages::ConfigError,
        >,
    ) {
        let Some(ix) = self.changes.remove(&token) else { return };
        match result {
            Ok(outcome) if outcome.committed => {
                if self.slots[ix].joined {
                    return;
                }
                // The leader's configuration, as the joiner is told it (`Node::join_library`).
                let Some(leader) = self.leader() else {
                    self.after(300 * MS, Ev::Join(ix));
                    return;
                };
                let d = self.slots[leader].device.as_ref().expect("up");
                let configuration = d.membership().configuration.clone();
                let leader_id = self.slots[leader].id;
                let s = &self.slots[ix];
                let setup = s.disk.open().and_then(|db| {
                    db.init_sync_state(&SyncState {
                        library_id: self.library_id,
                        device_id: s.id,
                        role: SyncRole::Follower,
                        current_term: 0,
                        voted_for: None,
                        leader_device: Some(leader_id),
                        last_synced_sequence: 0,
                    })?;
                    db.install_membership(&configuration, 0)?;
                    Ok(db)
                });
                match setup {
                    Ok(db) => {
                        self.slots[ix].joined = true;
                        self.slots[ix].joining = false;
                        self.log(|| format!("device {ix} joined"));
                        if let Err(e) = self.boot(ix, db) {
                            self.fail(format!("device {ix} cannot start: {e}"));
                        }
                    }
                    Err(e) => self.fail(format!("device {ix} cannot join: {e}")),
                }
            }
            _ => {
                self.log(|| format!("device {ix}'s join not committed yet; asking again"));
                self.after(300 * MS, Ev::Join(ix));
            }
        }
    }

    // ---- the nemesis ------------------------------------------------------------------------

    fn fault(&mut self) -> anyhow::Result<()> {
        let kinds: Vec<Fault> = self.opts.faults.iter().copied().collect();
        if kinds.is_empty() {
            return Ok(());
        }
        let kind = kinds[self.rng.gen_range(0..kinds.len())];
        let joined: Vec<Ix> = (0..self.slots.len()).filter(|&i| self.slots[i].joined).collect();
        let up: Vec<Ix> = joined
            .iter()
            .copied()
            .filter(|&i| self.slots[i].device.is_some() && !self.slots[i].paused)
            .collect();
        // The leader half the time: that is where the interesting faults are.
        let pick = |w: &mut Self, from: &[Ix]| -> Option<Ix> {
            if from.is_empty() {
                return None;
            }
            match w.leader() {
                Some(l) if from.contains(&l) && w.rng.gen_bool(0.5) => Some(l),
                _ => Some(from[w.rng.gen_range(0..from.len())]),
            }
        };
        *self.report.faults.entry(kind.name().to_string()).or_default() += 1;
        match kind {
            Fault::Crash | Fault::Power | Fault::Restore => {
                let Some(ix) = pick(self, &up) else { return Ok(()) };
                self.crash(ix);
                if kind != Fault::Crash {
                    self.lose(ix, kind)?;
                }
                let back = 200 * MS + self.rng.gen_range(0..3 * SEC);
                self.after(back, Ev::Restart(ix));
            }
            Fault::Pause | Fault::Suspend => {
                let Some(ix) = pick(self, &up) else { return Ok(()) };
                self.slots[ix].paused = true;
                if kind == Fault::Suspend {
                    self.slots[ix].suspend_started = Some(self.now);
                }
                self.log(|| format!("device {ix} {}", kind.name()));
                // longer than the leader timeout, often
                let back = 100 * MS + self.rng.gen_range(0..2 * SEC);
                self.after(back, Ev::Resume(ix));
            }
            Fault::Partition => {
                if joined.len() < 2 {
                    return Ok(());
                }
                let mut side = BTreeSet::new();
                let size = self.rng.gen_range(1..=joined.len() / 2);
                while side.len() < size {
                    side.insert(joined[self.rng.gen_range(0..joined.len())]);
                }
                self.log(|| format!("partition {side:?}"));
                self.net.partition(&side, self.slots.len());
                let heal = 300 * MS + self.rng.gen_range(0..3 * SEC);
                self.after(heal, Ev::Heal);
            }
            Fault::OneWay => {
                if joined.len() < 2 {
                    return Ok(());
                }
                let a = joined[self.rng.gen_range(0..joined.len())];
                let b = loop {
                    let b = joined[self.rng.gen_range(0..joined.len())];
                    if b != a {
                        break b;
                    }
                };
                self.log(|| format!("link {a} → {b} cut"));
                self.net.cut(a, b);
                let heal = 300 * MS + self.rng.gen_range(0..3 * SEC);
                self.after(heal, Ev::Heal);
            }
        }
        Ok(())
    }

    fn crash(&mut self, ix: Ix) {
        self.log(|| format!("device {ix} crashes"));
        self.slots[ix].device = None;
        self.slots[ix].paused = false;
        self.slots[ix].held.clear();
        self.slots[ix].down_since = Some(self.now);
        self.tokens.retain(|_, (from, _)| *from != ix);
        let failures = self.net.crash(self.now, ix, &mut self.rng);
        for f in failures {
            self.at(f.at, Ev::Net(f));
        }
        self.oracle.crashed(ix);
    }

    /// A power loss or a restore on `ix` (down): its disk goes back; the writes whose every
    /// copy was there may be missing from now on.
    fn lose(&mut self, ix: Ix, kind: Fault) -> anyhow::Result<()> {
        let before = crate::check::names_on(&self.slots[ix].disk.open()?)?;
        let changed = match kind {
            Fault::Power if self.slots[ix].disk.synchronous() == Synchronous::Full => {
                self.log(|| format!("device {ix} lost power: every commit was on disk (full)"));
                false
            }
            Fault::Power => {
                // a log already behind its mark (a restored copy not caught up yet) stays so
                let was_behind = {
                    let db = self.slots[ix].disk.open()?;
                    db.mark()?.is_some_and(|m| db.last_position().is_ok_and(|l| l < m))
                };
                self.slots[ix].disk.lose_unsynced()?;
                // the mark never runs ahead of what survives a power loss
                if self.slots[ix].disk.db_path().exists() && !was_behind {
                    let db = self.slots[ix].disk.open()?;
                    if let (last, Some(mark)) = (db.last_position()?, db.mark()?) {
                        if last < mark {
                            self.fail(format!(
                                "a power loss left device {ix}'s log at {last:?}, behind its \
                                 high-water mark {mark:?}"
                            ));
                        }
                    }
                }
                true
            }
            _ => self.slots[ix].disk.restore_backup(self.rng.gen())?,
        };
        if !changed {
            return Ok(());
        }
        self.slots[ix].disk_lost = true;
        let after = if self.slots[ix].disk.db_path().exists() {
            crate::check::names_on(&self.slots[ix].disk.open()?)?
        } else {
            BTreeSet::new()
        };
        let mut gone: BTreeSet<String> = before.difference(&after).cloned().collect();
        // Held elsewhere only in a writer's outbox: that copy goes once the writer hears the
        // answer this device sent before it lost them (committed: the `local` promise allows
        // the loss, docs/operations.md); if it never hears one, it proposes them again.
        let mut outboxed = BTreeSet::new();
        for (i, s) in self.slots.iter().enumerate() {
            if i == ix || !s.joined || gone.is_empty() {
                continue;
            }
            let (logged, queued) = match &s.device {
                Some(d) => crate::check::names_held(d.db())?,
                None => crate::check::names_held(&s.disk.open()?)?,
            };
            gone.retain(|n| !logged.contains(n));
            outboxed.extend(gone.iter().filter(|n| queued.contains(*n)).cloned());
        }
        gone.retain(|n| !outboxed.contains(n));
        self.log(|| {
            let some: Vec<&str> = gone.iter().take(8).map(String::as_str).collect();
            format!(
                "device {ix} lost {} changes held nowhere else ({some:?}…), {} held elsewhere \
                 only in an outbox",
                gone.len(),
                outboxed.len()
            )
        });
        self.oracle.note_loss(&gone);
        self.oracle.note_outboxed_loss(&outboxed);
        self.checker.disk_lost(ix);
        if self.report.operator_needed.is_none() {
            let mut logs = Vec::new();
            for s in self.slots.iter().filter(|s| s.joined) {
                let log = match &s.device {
                    Some(d) => crate::check::whole_log(d.db()),
                    None => s
                        .disk
                        .open()
                        .map_err(|e| e.to_string())
                        .and_then(|db| crate::check::whole_log(&db)),
                };
                logs.push(log.map_err(anyhow::Error::msg)?);
            }
            if let Some(sequence) = self.checker.committed_lost(&logs) {
                let why = format!(
                    "committed entry {sequence} is on no disk after device {ix} lost its data: \
                     more devices lost acknowledged data than the library tolerates"
                );
                self.log(|| format!("beyond the fault model: {why}"));
                self.report.operator_needed = Some(why);
            }
        }
        Ok(())
    }

    fn restart(&mut self, ix: Ix) -> anyhow::Result<()> {
        if self.slots[ix].device.is_some() || !self.slots[ix].joined {
            return Ok(());
        }
        if !self.slots[ix].disk.db_path().exists() {
            // Power lost before its first sync point: nothing on disk. It is set up again as a
            // joiner would be, by a new configuration change? No: it is simply gone for good
            // as a device with an empty disk would be; it stays down.
            self.log(|| format!("device {ix} has no database left; it stays down"));
            self.slots[ix].joined = false;
            return Ok(());
        }
        let db = self.slots[ix].disk.open()?;
        self.boot(ix, db)
    }

    fn resume(&mut self, ix: Ix) {
        if !self.slots[ix].paused {
            return;
        }
        self.slots[ix].paused = false;
        if let Some(started) = self.slots[ix].suspend_started.take() {
            self.slots[ix].suspended += self.now - started;
        }
        self.log(|| format!("device {ix} resumes"));
        for h in std::mem::take(&mut self.slots[ix].held) {
            if self.slots[ix].device.is_none() {
                break;
            }
            match h {
                Held::Delivery(d) => self.deliver(ix, d),
                Held::Write { write, proposal_id, changes, majority } => {
                    self.submit(ix, write, proposal_id, changes, majority)
                }
            }
        }
        let (now, wall) = self.clock(ix);
        if let Some(d) = self.slots[ix].device.as_mut() {
            let out = d.tick(now, wall);
            self.outputs(ix, out);
        }
    }

    // ---- the drain and the end --------------------------------------------------------------

    fn drain(&mut self) -> anyhow::Result<()> {
        self.draining = true;
        self.drain_started = self.now;
        self.log(|| "drain: heal, resume, restart; no more writes".into());
        self.net.heal();
        self.net.faults.loss = 0.0;
        self.net.faults.duplicate = 0.0;
        for ix in 0..self.slots.len() {
            self.resume(ix);
            if self.slots[ix].device.is_none() && self.slots[ix].joined {
                self.restart(ix)?;
            }
            if !self.slots[ix].joined && !self.slots[ix].joining {
                self.at(self.now, Ev::Join(ix));
            }
        }
        self.after(500 * MS, Ev::DrainCheck);
        Ok(())
    }

    fn drain_check(&mut self) {
        let limit = self.opts.drain_limit.as_micros() as Micros;
        match self.checker.converged(&self.slots_view()) {
            Ok(()) => {
                self.report.drain_ms = (self.now - self.drain_started) / MS;
                self.finish();
            }
            Err(why)
                if self.now - self.drain_started > limit
                    && self.report.operator_needed.is_some() =>
            {
                // by design: no leader elects a log without a committed entry (the run is
                // beyond the fault model; its every-step checks held)
                self.log(|| format!("drain: waits for an operator, as designed: {why}"));
                self.report.writes = self.oracle.writes().len() as u64;
                self.done = true;
            }
            Err(why) if self.now - self.drain_started > limit => {
                self.report
                    .failures
                    .push(format!("did not converge within {} s of the drain: {why}", limit / SEC));
                self.done = true;
            }
            Err(why) => {
                self.log(|| format!("drain: not yet: {why}"));
                self.after(500 * MS, Ev::DrainCheck)
            }
        }
    }

    fn slots_view(&self) -> Vec<Option<&Device>> {
        self.slots.iter().map(|s| s.device.as_ref().filter(|_| s.joined)).collect()
    }

    fn finish(&mut self) {
        self.done = true;
        let view = self.slots_view();
        let verdict = self.checker.final_check(&view, &self.oracle);
        match verdict {
            Ok(v) => {
                self.report.writes = v.writes;
                self.report.acknowledged = v.acknowledged;
                self.report.majority = v.majority;
                self.report.unresolved = v.unresolved;
                self.report.queued = v.queued;
                self.report.refused = v.refused;
                self.report.unknown = v.unknown;
                self.report.lost_with_disk = v.lost_with_disk;
                self.report.moved = v.moved;
                self.report.patches = v.patches;
                self.report.decided_away = v.decided_away;
                self.report.conflicts = v.conflicts;
                self.report.failures.extend(v.failures);
            }
            Err(e) => self.fail(e),
        }
        self.report.leader_changes = self.checker.leader_changes();
    }

    fn fail(&mut self, why: String) {
        self.log(|| format!("FAILURE: {why}"));
        self.report.failures.push(why);
    }

    /// The rules, on the devices that did something in this step (the others are unchanged).
    /// Under `synchronous = NORMAL`, an fsync the product made in this step (a follower's
    /// applied batch before its acknowledgement, a mark raised) is a sync point: what a power
    /// loss keeps. Taken at the end of the step, so it may keep a commit made after the fsync
    /// within the same step (an over-approximation of what is durable, on one device's step).
    fn follow_syncs(&mut self) -> anyhow::Result<()> {
        let copies = self.opts.faults.contains(&Fault::Power);
        if self.opts.synchronous != Synchronous::Normal || !copies {
            return Ok(());
        }
        for &ix in &self.touched {
            let Some(db) = self.slots[ix].device.as_ref().map(|d| d.db().clone()) else {
                continue;
            };
            let syncs = db.syncs();
            if syncs != self.slots[ix].seen_syncs {
                self.slots[ix].seen_syncs = syncs;
                self.slots[ix].disk.sync(&db)?;
            }
        }
        Ok(())
    }

    fn check_step(&mut self) {
        for ix in std::mem::take(&mut self.touched) {
            let Some(d) = &self.slots[ix].device else { continue };
            let (role, term, _) = d.election_view();
            let db = d.db().clone();
            if term < self.slots[ix].last_term && !self.slots[ix].disk_lost {
                self.fail(format!(
                    "device {ix}'s term went back from {} to {term}",
                    self.slots[ix].last_term
                ));
            }
            self.slots[ix].last_term = term;
            if self.slots[ix].last_role != Some((role, term)) {
                self.slots[ix].last_role = Some((role, term));
                self.log(|| format!("device {ix} is {role:?} in term {term}"));
            }
            self.slots[ix].disk_lost = false;
            if role == SyncRole::Leader {
                if let Err(e) = self.checker.on_leader(ix, term, &db) {
                    self.fail(e);
                }
                // a device whose database went back (a restored copy) never leads before it
                // has caught up past its high-water mark
                if let (Ok(last), Ok(Some(mark))) = (db.last_position(), db.mark()) {
                    if last < mark {
                        self.fail(format!(
                            "device {ix} leads term {term} with its log at {last:?}, behind its \
                             high-water mark {mark:?}"
                        ));
                    }
                }
            }
            if let Err(e) = self.checker.check_log(ix, &db) {
                self.fail(e);
            }
        }
    }
}

/// A message's kind, and for errors their code (the trace's word for a response).
fn describe(msg: &lsync_protocol::SyncMessage) -> String {
    use lsync_protocol::SyncMessage as M;
    match msg {
        M::Error { code, term, .. } => format!("Error({code:?}, term {term})"),
        M::NewEntries { term, from_sequence, to_sequence, entries, .. } => {
            format!("NewEntries t{term} {from_sequence}..={to_sequence} ({} inline)", entries.len())
        }
        M::FetchEntries { term, since_sequence, since_term, .. } => {
            format!("FetchEntries t{term} since ({since_term}, {since_sequence})")
        }
        M::EntriesResponse { entries, .. } => format!(
            "EntriesResponse {:?}..{:?}",
            entries.first().map(|e| e.sequence),
            entries.last().map(|e| e.sequence)
        ),
        M::Acknowledge { up_to_sequence, term, .. } => {
            format!("Acknowledge t{term} up to {up_to_sequence}")
        }
        M::Heartbeat { term, current_sequence, role, .. } => {
            format!("Heartbeat t{term} {role:?} at {current_sequence}")
        }
        other => other.kind().to_string(),
    }
}
