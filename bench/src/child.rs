//! The child processes: `lsync-bench follower` (a real lsync node following the leader) and
//! `lsync-bench poller` (the seed's polling design, over a raw `NetworkHandle`).
//!
//! Protocol with the parent: commands are JSON lines on stdin, results JSON lines on stdout.
//! - child → `{"ev":"ready","device_id","peer_id","addrs":[..]}` once its network listens;
//! - parent → `{"cmd":"join","library_id","leader":{device_id,peer_id,addrs},"members":[..],
//!   "wait_term":bool}` → `joined` (with `wait_term`, once the follower learnt the leader's
//!   term; the poller ignores both extra fields);
//! - parent → `{"cmd":"target","target":N}` → `reached` (with timestamps) once sequence N is
//!   applied (at once if it already is);
//! - parent → `{"cmd":"samples"}` → `samples` (latencies in µs recorded so far, then cleared);
//! - parent → `{"cmd":"quit"}`, or stdin closed: the child exits.
//!
//! Every timestamp is wall-clock µs ([`now_us`]), comparable across the processes.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use anyhow::{anyhow, Context as _};
use libp2p::{Multiaddr, PeerId};
use lsync::crates::actors::network::{InboundRequest, NetworkHandle};
use lsync::crates::protocol::{SyncMessage, SyncRole};
use lsync::crates::storage::{Applier, Database, StorageOptions, SyncState};
use lsync::{DeviceInfo, Metrics, Node, NodeConfig, SyncConfig, SyncEvent};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::model::{self, now_us, Recorder};

/// Prints one result line.
pub fn emit(v: Value) {
    println!("{v}");
}

/// Stdin lines as JSON values; the channel closes when stdin does.
fn stdin_commands() -> mpsc::UnboundedReceiver<Value> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            match serde_json::from_str::<Value>(&line) {
                Ok(v) => {
                    if tx.send(v).is_err() {
                        break;
                    }
                }
                Err(e) => eprintln!("lsync-bench child: bad command {line:?}: {e}"),
            }
        }
    });
    rx
}

/// The leader as the parent describes it.
pub fn parse_device(v: &Value) -> anyhow::Result<DeviceInfo> {
    let s = |k: &str| v[k].as_str().ok_or_else(|| anyhow!("device without {k}: {v}"));
    let addresses = v["addrs"]
        .as_array()
        .ok_or_else(|| anyhow!("device without addrs: {v}"))?
        .iter()
        .map(|a| a.as_str().unwrap_or_default().parse::<Multiaddr>())
        .collect::<Result<Vec<_>, _>>()?;
    Ok(DeviceInfo {
        device_id: s("device_id")?.parse()?,
        peer_id: s("peer_id")?.parse()?,
        addresses,
        name: v["name"].as_str().unwrap_or("device").to_owned(),
    })
}

/// A device as JSON (the inverse of [`parse_device`]).
pub fn device_json(d: &DeviceInfo) -> Value {
    json!({
        "device_id": d.device_id.to_string(),
        "peer_id": d.peer_id.to_string(),
        "addrs": d.addresses.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        "name": d.name,
    })
}

/// What both kinds of child track about what they applied.
struct Progress {
    recorder: Option<Recorder>,
    samples: Vec<u64>,
    last: u64,
    started_us: i64,
    first_apply_us: Option<i64>,
    target: Option<u64>,
    /// (sequence reached, time) at the first apply reaching 10 % and 90 % of the target.
    mark10: Option<(u64, i64)>,
    mark90: Option<(u64, i64)>,
    applies: u64,
    lagged: u64,
    /// Times the applied position stayed ahead of every `EntriesApplied` seen for a whole
    /// poll period in the database (an event lost: see `follower_main`).
    missed_events: u64,
    /// The database's applied position at the previous poll, when it was ahead of the events.
    db_ahead: Option<u64>,
    /// The node's counters (the fetches sent ahead and their misses go in `reached`).
    metrics: Option<Arc<Metrics>>,
}

impl Progress {
    fn new(recorder: Option<Recorder>) -> Self {
        Self {
            recorder,
            samples: Vec::new(),
            last: 0,
            started_us: now_us(),
            first_apply_us: None,
            target: None,
            mark10: None,
            mark90: None,
            applies: 0,
            lagged: 0,
            missed_events: 0,
            db_ahead: None,
            metrics: None,
        }
    }

    /// Entries `first..=last` were applied (their transaction committed).
    fn on_applied(&mut self, first: u64, last: u64) {
        let now = now_us();
        if let Some(r) = &self.recorder {
            let mut map = r.lock().expect("recorder lock");
            for seq in first..=last {
                if let Some(t) = map.remove(&seq) {
                    self.samples.push(now.saturating_sub(t).max(0) as u64);
                }
            }
        }
        self.applies += 1;
        self.first_apply_us.get_or_insert(now);
        self.last = self.last.max(last);
        if let Some(target) = self.target {
            if self.mark10.is_none() && self.last * 10 >= target {
                self.mark10 = Some((self.last, now));
            }
            if self.mark90.is_none() && self.last * 10 >= target * 9 {
                self.mark90 = Some((self.last, now));
            }
        }
        self.check_target(now);
    }

    /// The database says entries up to `last` are applied (polled every 250 ms while a target
    /// is pending). A position that was already ahead of the events at the previous poll and
    /// still is was never announced: it is taken from the database. (The event normally
    /// arrives within a millisecond of the commit.)
    fn on_position(&mut self, last: u64) {
        match self.db_ahead {
            Some(prev) if self.last < prev => {
                self.missed_events += 1;
                // No latency samples for these: their apply time is unknown (they stay in the
                // recorder and are reported as unmatched).
                let recorder = self.recorder.take();
                self.on_applied(self.last + 1, prev);
                self.recorder = recorder;
                self.applies -= 1;
            }
            _ => {}
        }
        self.db_ahead = (last > self.last).then_some(last);
    }

    fn check_target(&mut self, now: i64) {
        if let Some(target) = self.target {
            if self.last >= target {
                self.target = None;
                emit(json!({
                    "ev": "reached",
                    "target": target,
                    "last": self.last,
                    "t_us": now,
                    "started_us": self.started_us,
                    "first_apply_us": self.first_apply_us,
                    "mark10": self.mark10.map(|(s, t)| json!([s, t])),
                    "mark90": self.mark90.map(|(s, t)| json!([s, t])),
                    "applies": self.applies,
                    "lagged_events": self.lagged,
                    "missed_events": self.missed_events,
                    "fetches_ahead": self.metrics.as_ref()
                        .map(|m| m.fetches_ahead.load(Ordering::Relaxed)),
                    "fetches_ahead_missed": self.metrics.as_ref()
                        .map(|m| m.fetches_ahead_missed.load(Ordering::Relaxed)),
                }));
            }
        }
    }

    /// A command every child understands; returns false on `quit`.
    fn command(&mut self, cmd: &Value) -> bool {
        match cmd["cmd"].as_str() {
            Some("target") => {
                let target = cmd["target"].as_u64().unwrap_or(0);
                self.target = Some(target);
                self.mark10 = None;
                self.mark90 = None;
                if self.last * 10 >= target {
                    self.mark10 = Some((self.last, now_us()));
                }
                if self.last * 10 >= target * 9 {
                    self.mark90 = Some((self.last, now_us()));
                }
                self.check_target(now_us());
            }
            Some("samples") => {
                let pending = self.recorder.as_ref().map_or(0, |r| r.lock().expect("lock").len());
                emit(json!({
                    "ev": "samples",
                    "samples": std::mem::take(&mut self.samples),
                    "unmatched": pending,
                    "lagged_events": self.lagged,
                    "missed_events": self.missed_events,
                }));
            }
            Some("quit") => return false,
            other => emit(json!({"ev": "error", "error": format!("unknown command {other:?}")})),
        }
        true
    }
}

/// `lsync-bench follower`: an lsync node that joins the leader's library.
pub fn follower(
    dir: PathBuf,
    heartbeat_ms: u64,
    record: bool,
    synchronous: Option<&str>,
) -> anyhow::Result<()> {
    let storage = storage_options(synchronous)?;
    actix::System::new().block_on(async move {
        let result = follower_main(dir, heartbeat_ms, record, storage).await;
        if let Err(e) = &result {
            emit(json!({"ev": "error", "error": format!("{e:#}")}));
        }
        result
    })
}

/// The storage options of a `--synchronous` argument (`normal` or `full`; none: the default).
pub fn storage_options(synchronous: Option<&str>) -> anyhow::Result<StorageOptions> {
    use lsync::crates::storage::Synchronous;
    let synchronous = match synchronous {
        None => return Ok(StorageOptions::default()),
        Some("normal") => Synchronous::Normal,
        Some("full") => Synchronous::Full,
        Some(other) => anyhow::bail!("--synchronous {other:?}: expected normal or full"),
    };
    Ok(StorageOptions { synchronous, ..StorageOptions::default() })
}

async fn follower_main(
    dir: PathBuf,
    heartbeat_ms: u64,
    record: bool,
    storage: StorageOptions,
) -> anyhow::Result<()> {
    let recorder: Option<Recorder> = record.then(Default::default);
    let config = NodeConfig {
        registry: model::registry(recorder.clone()),
        sync: SyncConfig {
            heartbeat_interval: Duration::from_millis(heartbeat_ms),
            ..SyncConfig::default()
        },
        storage,
        ..NodeConfig::default()
    };
    let node = Node::builder(&dir).name("follower").config(config).start().await?;
    let mut events = node.subscribe();
    let mut commands = stdin_commands();
    let mut progress = Progress::new(recorder);
    progress.metrics = Some(node.metrics().clone());
    let trace_events = std::env::var_os("LSYNC_BENCH_EVENTS").is_some();
    let mut joined: Option<Uuid> = None;
    let mut position_tick = tokio::time::interval(Duration::from_millis(250));
    position_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ready = device_json(&node.device_info());
    ready["ev"] = json!("ready");
    emit(ready);
    loop {
        tokio::select! {
            cmd = commands.recv() => {
                let Some(cmd) = cmd else { break };
                if cmd["cmd"] == "join" {
                    let library_id: Uuid = cmd["library_id"]
                        .as_str()
                        .context("join without library_id")?
                        .parse()?;
                    let leader = parse_device(&cmd["leader"])?;
                    let members = cmd["members"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(parse_device)
                        .collect::<anyhow::Result<Vec<_>>>()?;
                    progress.started_us = now_us();
                    node.join_library(library_id, leader, members).await?;
                    if cmd["wait_term"].as_bool().unwrap_or(false) {
                        // A joining follower starts in term 0 and learns the leader's term from
                        // its first response; adopting it restarts its applier. Waiting for
                        // that here keeps the restart away from the first entries (see
                        // docs/performance.md, "The bench on the election tree").
                        wait_for_term(&node, &mut events, library_id, &mut progress).await?;
                    }
                    joined = Some(library_id);
                    emit(json!({"ev": "joined", "t_us": progress.started_us}));
                } else if !progress.command(&cmd) {
                    break;
                }
            }
            _ = position_tick.tick(), if progress.target.is_some() => {
                // Fallback for a lost `EntriesApplied` (an applier restarted while its apply
                // was on the blocking pool): the database has the truth.
                if let Some(library_id) = joined {
                    let db = node.database(library_id)?;
                    let pos = tokio::task::spawn_blocking(move || db.last_position()).await??;
                    progress.on_position(pos.sequence);
                }
            }
            ev = events.recv() => match ev {
                Ok(ev) if trace_events && !matches!(ev, SyncEvent::EntriesApplied { .. }) => {
                    eprintln!("[follower event] {ev:?}");
                }
                Ok(SyncEvent::EntriesApplied { first, last, .. }) => progress.on_applied(first, last),
                Ok(SyncEvent::ApplyFailed { error, .. }) => {
                    emit(json!({"ev": "error", "error": format!("apply failed: {error}")}));
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => progress.lagged += n,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            }
        }
    }
    node.shutdown().await;
    Ok(())
}

/// Waits (at most 10 s) until the follower of `library_id` learnt the leader's term (its
/// persisted `current_term` ≥ 1, or a `RoleChanged` in a term ≥ 1), then a little longer for a
/// restart of its role actors to settle; applies seen meanwhile are recorded. Not learning it in
/// time is not an error: the position poll covers a lost event.
async fn wait_for_term(
    node: &Node,
    events: &mut tokio::sync::broadcast::Receiver<SyncEvent>,
    library_id: Uuid,
    progress: &mut Progress,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut poll = tokio::time::interval(Duration::from_millis(10));
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {
                eprintln!("lsync-bench follower: the leader's term not learnt within 10 s");
                return Ok(());
            }
            _ = poll.tick() => {
                let db = node.database(library_id)?;
                let state = tokio::task::spawn_blocking(move || db.sync_state()).await??;
                if state.current_term >= 1 {
                    break;
                }
            }
            ev = events.recv() => match ev {
                Ok(SyncEvent::RoleChanged { library_id: l, role: SyncRole::Follower, term })
                    if l == library_id && term >= 1 => break,
                Ok(SyncEvent::EntriesApplied { first, last, .. }) => progress.on_applied(first, last),
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => progress.lagged += n,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                    anyhow::bail!("the node's events closed")
                }
            }
        }
    }
    // The term is persisted before the role actors (may) restart in it.
    tokio::time::sleep(Duration::from_millis(50)).await;
    Ok(())
}

/// Answers the leader's requests to the poller (it acknowledges, nothing more).
struct PollerSink {
    applied: Arc<AtomicU64>,
}

impl Actor for PollerSink {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(1024);
    }
}

impl Handler<InboundRequest> for PollerSink {
    type Result = ();
    fn handle(&mut self, req: InboundRequest, _: &mut Context<Self>) {
        let library_id = req.message.library_id();
        let applied = self.applied.load(Ordering::Relaxed);
        let reply = match req.message {
            SyncMessage::Heartbeat { term, .. } => SyncMessage::Heartbeat {
                commit_sequence: 0,
                features: 0,
                library_id,
                term,
                current_sequence: applied,
                last_term: if applied == 0 { 0 } else { 1 },
                role: SyncRole::Follower,
                last_hash: None,
            },
            _ => SyncMessage::Acknowledge {
                last_term: 0,
                term: 0,
                library_id,
                up_to_sequence: applied,
                last_hash: None,
            },
        };
        let _ = req.reply.send(reply);
    }
}

/// `lsync-bench poller`: the seed's "before" design — every `interval_ms` it asks the leader
/// for what is new (FetchEntries over a raw NetworkHandle, until `has_more` is false) and
/// applies it with the storage `Applier`. No push.
pub fn poller(dir: PathBuf, interval_ms: u64) -> anyhow::Result<()> {
    actix::System::new().block_on(async move {
        let result = poller_main(dir, interval_ms).await;
        if let Err(e) = &result {
            emit(json!({"ev": "error", "error": format!("{e:#}")}));
        }
        result
    })
}

async fn poller_main(dir: PathBuf, interval_ms: u64) -> anyhow::Result<()> {
    let recorder: Recorder = Default::default();
    let keypair = libp2p::identity::Keypair::generate_ed25519();
    let (network, addrs) = NetworkHandle::start(keypair, lsync::NetworkConfig::default()).await?;
    let device_id = Uuid::new_v4();
    let me = DeviceInfo {
        device_id,
        peer_id: network.local_peer_id(),
        addresses: addrs,
        name: "poller".into(),
    };
    let mut ready = device_json(&me);
    ready["ev"] = json!("ready");
    emit(ready);

    let mut commands = stdin_commands();
    let mut progress = Progress::new(Some(recorder.clone()));
    let applied = Arc::new(AtomicU64::new(0));
    let mut joined: Option<(Uuid, PeerId, Applier)> = None;
    let mut since_term = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            cmd = commands.recv() => {
                let Some(cmd) = cmd else { break };
                if cmd["cmd"] == "join" {
                    let library_id: Uuid = cmd["library_id"]
                        .as_str()
                        .context("join without library_id")?
                        .parse()?;
                    let leader = parse_device(&cmd["leader"])?;
                    let path = dir.join(format!("{library_id}.db"));
                    let db = Database::open(
                        &path,
                        &StorageOptions::default(),
                        model::registry(Some(recorder.clone())),
                    )?;
                    db.init_sync_state(&SyncState {
                        library_id,
                        device_id,
                        role: SyncRole::Follower,
                        current_term: 1,
                        voted_for: None,
                        leader_device: Some(leader.device_id),
                        last_synced_sequence: 0,
                    })?;
                    let sink = PollerSink { applied: applied.clone() }.start();
                    network
                        .register_library(
                            library_id,
                            vec![(leader.peer_id, leader.addresses.clone())],
                            sink.recipient(),
                        )
                        .await?;
                    progress.started_us = now_us();
                    joined = Some((library_id, leader.peer_id, Applier::new(db)));
                    emit(json!({"ev": "joined", "t_us": progress.started_us}));
                } else if !progress.command(&cmd) {
                    break;
                }
            }
            _ = tick.tick() => {
                let Some((library_id, leader, applier)) = &joined else { continue };
                // One poll: fetch until the leader has nothing more.
                loop {
                    let since = applied.load(Ordering::Relaxed);
                    let request = SyncMessage::FetchEntries {
                        library_id: *library_id,
                        term: 1,
                        since_sequence: since,
                        since_term,
                        limit: 100,
                        since_hash: None,
                    };
                    let entries = match network.request(*leader, request).await {
                        Ok(SyncMessage::EntriesResponse { entries, has_more, .. }) => {
                            (entries, has_more)
                        }
                        Ok(other) => {
                            emit(json!({"ev": "error", "error": format!("poll answered {}", other.kind())}));
                            break;
                        }
                        Err(e) => {
                            emit(json!({"ev": "error", "error": format!("poll failed: {e}")}));
                            break;
                        }
                    };
                    let (entries, has_more) = entries;
                    if let Some(last) = entries.last() {
                        let (first, last_seq, term) =
                            (entries[0].sequence, last.sequence, last.term);
                        let applier = applier.clone();
                        let outcome =
                            tokio::task::spawn_blocking(move || applier.apply(&entries)).await?;
                        outcome?;
                        applied.store(last_seq, Ordering::Relaxed);
                        since_term = term;
                        progress.on_applied(first, last_seq);
                    }
                    if !has_more {
                        break;
                    }
                }
            }
        }
    }
    network.shutdown().await;
    Ok(())
}
