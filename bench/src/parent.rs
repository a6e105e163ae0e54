//! The parent process: the leader node(s), the phases, the report.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use lsync::crates::protocol::SyncRole;
use lsync::crates::storage::{Applier, Database, StorageOptions, SyncState};
use lsync::{Node, NodeConfig, SyncConfig};
use serde_json::{json, Map, Value};
use uuid::Uuid;

use crate::child::{device_json, parse_device};
use crate::model::{self, now_us};
use crate::procs::{self, ChildProc};

/// Sizes of the run.
#[derive(Debug, Clone)]
pub struct Opts {
    pub quick: bool,
    pub out: PathBuf,
    /// Single-change commits per latency run.
    pub latency_commits: u64,
    /// Commits per second during the latency runs.
    pub latency_rate: u64,
    /// The poller's (scaled) interval.
    pub poll_interval_ms: u64,
    /// How long the leader commits during the polling run.
    pub poll_duration: Duration,
    /// Entries committed per throughput run.
    pub throughput_entries: u64,
    /// Entries behind for the catch-up run.
    pub catchup_entries: u64,
    /// Heartbeat interval during the idle run, and how long it is counted.
    pub idle_heartbeat_ms: u64,
    pub idle_window: Duration,
    /// Also measure latency with `notify_window = 0`.
    pub window0: bool,
}

impl Opts {
    pub fn new(quick: bool, out: PathBuf) -> Self {
        if quick {
            Opts {
                quick,
                out,
                latency_commits: 2_000,
                latency_rate: 1_000,
                poll_interval_ms: 50,
                poll_duration: Duration::from_secs(3),
                throughput_entries: 50_000,
                catchup_entries: 100_000,
                idle_heartbeat_ms: 200,
                idle_window: Duration::from_secs(3),
                window0: true,
            }
        } else {
            Opts {
                quick,
                out,
                latency_commits: 10_000,
                latency_rate: 1_000,
                poll_interval_ms: 50,
                poll_duration: Duration::from_secs(10),
                throughput_entries: 200_000,
                catchup_entries: 1_000_000,
                idle_heartbeat_ms: 250,
                idle_window: Duration::from_secs(10),
                window0: true,
            }
        }
    }
}

const BATCH: usize = 1_000;
const WAIT: Duration = Duration::from_secs(120);

fn say(line: impl AsRef<str>) {
    eprintln!("lsync-bench: {}", line.as_ref());
}

async fn start_leader(dir: &Path, sync: SyncConfig) -> anyhow::Result<Node> {
    start_leader_with(dir, sync, StorageOptions::default()).await
}

async fn start_leader_with(
    dir: &Path,
    sync: SyncConfig,
    storage: StorageOptions,
) -> anyhow::Result<Node> {
    let config =
        NodeConfig { registry: model::registry(None), sync, storage, ..NodeConfig::default() };
    Ok(Node::builder(dir).name("leader").config(config).start().await?)
}

fn child_args(kind: &str, dir: &Path, extra: &[String]) -> Vec<String> {
    let mut args = vec![kind.to_owned(), "--dir".to_owned(), dir.display().to_string()];
    args.extend_from_slice(extra);
    args
}

async fn spawn_followers(
    root: &Path,
    tag: &str,
    n: usize,
    heartbeat_ms: u64,
    record: bool,
    synchronous: Option<&str>,
) -> anyhow::Result<Vec<ChildProc>> {
    let mut children = Vec::with_capacity(n);
    for i in 0..n {
        let dir = root.join(format!("{tag}-follower-{i}"));
        let mut extra = vec!["--heartbeat-ms".to_owned(), heartbeat_ms.to_string()];
        if record {
            extra.push("--record".to_owned());
        }
        if let Some(s) = synchronous {
            extra.extend(["--synchronous".to_owned(), s.to_owned()]);
        }
        children.push(
            ChildProc::spawn(&format!("{tag}-follower-{i}"), &child_args("follower", &dir, &extra))
                .await?,
        );
    }
    Ok(children)
}

/// Adds every child to the library as a member and has it join.
async fn join_all(
    leader: &Node,
    library_id: Uuid,
    children: &mut [ChildProc],
) -> anyhow::Result<()> {
    for c in children.iter() {
        leader.add_device(library_id, parse_device(&c.ready)?).await?;
    }
    let leader_info = device_json(&leader.device_info());
    // Every member device (with elections, a follower counts the members for majorities).
    let members: Vec<Value> = children.iter().map(|c| c.ready.clone()).collect();
    for c in children.iter_mut() {
        c.send(json!({
            "cmd": "join",
            "library_id": library_id.to_string(),
            "leader": leader_info,
            "members": members,
            "wait_term": true,
        }))?;
        c.expect("joined", WAIT).await?;
    }
    Ok(())
}

/// Every child reports when it applied `target`; returns their `reached` lines.
async fn reach(
    children: &mut [ChildProc],
    target: u64,
    wait: Duration,
) -> anyhow::Result<Vec<Value>> {
    for c in children.iter_mut() {
        c.send(json!({"cmd": "target", "target": target}))?;
    }
    let mut out = Vec::with_capacity(children.len());
    for c in children.iter_mut() {
        let r = c.expect("reached", wait).await?;
        if r["missed_events"].as_u64().unwrap_or(0) > 0 {
            say(format!(
                "  warning: {} found {} applied position(s) in its database with no EntriesApplied event",
                c.name, r["missed_events"]
            ));
        }
        out.push(r);
    }
    Ok(out)
}

async fn samples(children: &mut [ChildProc]) -> anyhow::Result<(Vec<u64>, u64)> {
    let mut all = Vec::new();
    let mut unmatched = 0;
    for c in children.iter_mut() {
        c.send(json!({"cmd": "samples"}))?;
        let v = c.expect("samples", WAIT).await?;
        unmatched += v["unmatched"].as_u64().unwrap_or(0);
        all.extend(v["samples"].as_array().into_iter().flatten().filter_map(Value::as_u64));
    }
    Ok((all, unmatched))
}

/// A new library led by `leader`, the children joined, one warm-up entry applied by all.
async fn library_with(leader: &Node, children: &mut [ChildProc]) -> anyhow::Result<(Uuid, u64)> {
    let library_id = leader.create_library().await?;
    join_all(leader, library_id, children).await?;
    let seq = leader.commit(library_id, model::change(0)).await?.sequence;
    reach(children, seq, WAIT).await?;
    samples(children).await?; // drop the warm-up's sample
    Ok((library_id, seq))
}

/// Percentiles of latency samples (µs).
#[derive(Debug, Clone, Copy, Default)]
pub struct Percentiles {
    pub n: usize,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub max: u64,
}

impl Percentiles {
    pub fn of(mut v: Vec<u64>) -> Percentiles {
        if v.is_empty() {
            return Percentiles::default();
        }
        v.sort_unstable();
        let at = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        Percentiles {
            n: v.len(),
            mean: v.iter().sum::<u64>() as f64 / v.len() as f64,
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            max: *v.last().expect("not empty"),
        }
    }
}

async fn paced_commits(
    leader: &Node,
    library_id: Uuid,
    first_n: u64,
    count: u64,
    rate: u64,
) -> anyhow::Result<u64> {
    let period = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let start = tokio::time::Instant::now();
    let mut last = 0;
    for i in 0..count {
        tokio::time::sleep_until(start + period * i as u32).await;
        last = leader.commit(library_id, model::change(first_n + i)).await?.sequence;
    }
    Ok(last)
}

/// Phase 1: Latency: single-change commits at a modest rate; each follower records, per entry, the
/// time from the commit call on the leader to the end of its apply transaction.
async fn latency(
    leader: &Node,
    root: &Path,
    tag: &str,
    followers: usize,
    opts: &Opts,
) -> anyhow::Result<(Percentiles, u64)> {
    let mut children = spawn_followers(root, tag, followers, 30_000, true, None).await?;
    let (library_id, _) = library_with(leader, &mut children).await?;
    let last =
        paced_commits(leader, library_id, 1, opts.latency_commits, opts.latency_rate).await?;
    reach(&mut children, last, WAIT).await?;
    let (all, unmatched) = samples(&mut children).await?;
    for c in children {
        c.quit().await;
    }
    Ok((Percentiles::of(all), unmatched))
}

/// Phase 2: The polling baseline: a poller every `poll_interval_ms`, commits paced at 200/s.
async fn polling(leader: &Node, root: &Path, opts: &Opts) -> anyhow::Result<Percentiles> {
    let dir = root.join("poller");
    let extra = vec!["--interval-ms".to_owned(), opts.poll_interval_ms.to_string()];
    let mut children = vec![ChildProc::spawn("poller", &child_args("poller", &dir, &extra)).await?];
    let (library_id, _) = library_with(leader, &mut children).await?;
    let rate = 200;
    let count = (opts.poll_duration.as_secs_f64() * rate as f64) as u64;
    let last = paced_commits(leader, library_id, 1, count, rate).await?;
    reach(&mut children, last, WAIT).await?;
    let (all, _) = samples(&mut children).await?;
    for c in children {
        c.quit().await;
    }
    Ok(Percentiles::of(all))
}

/// What a throughput run measured.
struct Throughput {
    /// Entries per second of the slowest follower: first commit → its last apply.
    eps_slowest: f64,
    eps_per_follower: Vec<f64>,
    leader_commit_eps: f64,
    follower_peak_rss_mb: f64,
    library_id: Uuid,
    /// Fetches the followers sent ahead of the response before them, and those that missed
    /// (summed over the followers).
    fetches_ahead: u64,
    fetches_ahead_missed: u64,
}

/// Phase 3: Sustained replication: the leader commits `throughput_entries` as fast as it can, in
/// batches of 1,000; each follower's rate runs from the first commit to its last apply.
async fn throughput(
    leader: &Node,
    root: &Path,
    tag: &str,
    followers: usize,
    opts: &Opts,
) -> anyhow::Result<Throughput> {
    let mut children = spawn_followers(root, tag, followers, 30_000, false, None).await?;
    let (library_id, warm) = library_with(leader, &mut children).await?;
    let total = opts.throughput_entries;
    let t0 = now_us();
    let mut n = 0;
    while n < total {
        let k = (total - n).min(BATCH as u64);
        let batch = (n..n + k).map(|i| model::change(i + 1)).collect();
        leader.commit_batch(library_id, batch).await?;
        n += k;
    }
    let t_committed = now_us();
    let reached = reach(&mut children, warm + total, WAIT * 5).await?;
    let mut eps = Vec::new();
    for r in &reached {
        let t = r["t_us"].as_i64().unwrap_or(t0);
        eps.push(total as f64 / ((t - t0).max(1) as f64 / 1e6));
    }
    let rss = children.iter().filter_map(ChildProc::peak_rss_mb).fold(0.0, f64::max);
    for c in children {
        c.quit().await;
    }
    let count = |key: &str| reached.iter().filter_map(|r| r[key].as_u64()).sum::<u64>();
    Ok(Throughput {
        fetches_ahead: count("fetches_ahead"),
        fetches_ahead_missed: count("fetches_ahead_missed"),
        eps_slowest: eps.iter().copied().fold(f64::INFINITY, f64::min),
        eps_per_follower: eps,
        leader_commit_eps: total as f64 / ((t_committed - t0).max(1) as f64 / 1e6),
        follower_peak_rss_mb: rss,
        library_id,
    })
}

/// What the catch-up run measured.
struct CatchUp {
    total_s: f64,
    first10_eps: f64,
    last10_eps: f64,
    leader_commit_s: f64,
    follower_peak_rss_mb: f64,
}

/// Phase 5: Catch-up: a follower joins `catchup_entries` behind.
async fn catch_up(leader: &Node, root: &Path, opts: &Opts) -> anyhow::Result<CatchUp> {
    let total = opts.catchup_entries;
    let library_id = leader.create_library().await?;
    let started = Instant::now();
    let mut n = 0;
    while n < total {
        let k = (total - n).min(BATCH as u64);
        let batch = (n..n + k).map(|i| model::change(i + 1)).collect();
        leader.commit_batch(library_id, batch).await?;
        n += k;
    }
    let leader_commit_s = started.elapsed().as_secs_f64();
    say(format!("  {total} entries committed in {leader_commit_s:.1} s; the follower joins"));
    let mut children = spawn_followers(root, "catchup", 1, 30_000, false, None).await?;
    join_all(leader, library_id, &mut children).await?;
    let r = reach(&mut children, total, WAIT * 5).await?.remove(0);
    let rss = children.iter().filter_map(ChildProc::peak_rss_mb).fold(0.0, f64::max);
    for c in children {
        c.quit().await;
    }
    let t = |v: &Value| v.as_i64().unwrap_or(0);
    let start = t(&r["started_us"]);
    let end = t(&r["t_us"]);
    let (s10, t10) = (r["mark10"][0].as_u64().unwrap_or(0), t(&r["mark10"][1]));
    let (s90, t90) = (r["mark90"][0].as_u64().unwrap_or(0), t(&r["mark90"][1]));
    Ok(CatchUp {
        total_s: (end - start) as f64 / 1e6,
        first10_eps: s10 as f64 / ((t10 - start).max(1) as f64 / 1e6),
        last10_eps: (total - s90) as f64 / ((end - t90).max(1) as f64 / 1e6),
        leader_commit_s,
        follower_peak_rss_mb: rss,
    })
}

/// What the idle run measured (already scaled to the default 30 s heartbeat).
struct Idle {
    requests_measured: u64,
    msgs_per_min: f64,
    bytes_per_min: Option<f64>,
    frame_bytes_per_min: f64,
}

/// Phase 6: Idle: a leader and one follower with a short heartbeat, no commits; count the requests
/// between them on the leader's network (every request is answered: 2 messages) and the TCP
/// bytes of their sockets, then scale to the default 30 s heartbeat.
async fn idle(root: &Path, opts: &Opts) -> anyhow::Result<Idle> {
    let h = opts.idle_heartbeat_ms;
    let sync = SyncConfig { heartbeat_interval: Duration::from_millis(h), ..SyncConfig::default() };
    let leader = start_leader(&root.join("idle-leader"), sync).await?;
    let mut children = spawn_followers(root, "idle", 1, h, false, None).await?;
    library_with(&leader, &mut children).await?;
    tokio::time::sleep(Duration::from_millis(3 * h)).await;
    let stats = leader.network().stats();
    let count = || {
        stats.inbound_requests.load(Ordering::Relaxed)
            + stats.outbound_requests.load(Ordering::Relaxed)
    };
    let leader_port = procs::port_of(&device_json(&leader.device_info()))?;
    let follower_port = procs::port_of(&children[0].ready)?;
    let bytes = || procs::tcp_bytes(leader_port, follower_port);
    let (r0, b0) = (count(), bytes());
    let start = Instant::now();
    tokio::time::sleep(opts.idle_window).await;
    let (r1, b1) = (count(), bytes());
    let window = start.elapsed().as_secs_f64();
    for c in children {
        c.quit().await;
    }
    leader.shutdown().await;
    // Heartbeats are periodic: scale the measured rate by h / 30 s, then to a minute.
    let scale = (h as f64 / 30_000.0) * (60.0 / window);
    let requests = r1 - r0;
    // Application bytes of one heartbeat exchange (request + response frames), both ways.
    let hb = lsync::crates::protocol::SyncMessage::Heartbeat {
        commit_sequence: 0,
        features: 0,
        library_id: Uuid::new_v4(),
        term: 1,
        current_sequence: 1_000_000,
        last_term: 1,
        role: SyncRole::Leader,
        last_hash: None,
    };
    let frame = lsync::crates::protocol::codec::encode_frame(&hb, usize::MAX)?.len() as f64;
    Ok(Idle {
        requests_measured: requests,
        msgs_per_min: (2 * requests) as f64 * scale,
        bytes_per_min: b0.zip(b1).map(|(a, b)| b.saturating_sub(a) as f64 * scale),
        frame_bytes_per_min: (2 * requests) as f64 * frame * scale,
    })
}

/// Phase 4: The ceiling: the entries of a throughput run, applied locally through the same storage
/// code (`Applier`, 100 per transaction), no network. Entries are read into memory first; only
/// the applies are timed.
fn ceiling(leader_db: &Database, dir: &Path) -> anyhow::Result<(f64, u64)> {
    let mut entries = Vec::new();
    loop {
        let since = entries.last().map_or(0, |e: &lsync::SyncLogEntry| e.sequence);
        let chunk = leader_db.fetch_since(since, 10_000)?;
        if chunk.is_empty() {
            break;
        }
        entries.extend(chunk);
    }
    let db =
        Database::open(&dir.join("ceiling.db"), &StorageOptions::default(), model::registry(None))?;
    let library_id = Uuid::new_v4();
    db.init_sync_state(&SyncState {
        library_id,
        device_id: Uuid::new_v4(),
        role: SyncRole::Follower,
        current_term: 1,
        voted_for: None,
        leader_device: None,
        last_synced_sequence: 0,
    })?;
    let applier = Applier::new(db);
    let start = Instant::now();
    for chunk in entries.chunks(100) {
        applier.apply(chunk)?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    Ok((entries.len() as f64 / elapsed, entries.len() as u64))
}

/// A fresh library database `<dir>/leader.db` whose sync state names a new device its leader
/// (term 1); that device's id.
fn leader_db(dir: &Path, options: &StorageOptions) -> anyhow::Result<(Database, Uuid)> {
    let db = Database::open(&dir.join("leader.db"), options, model::registry(None))?;
    let leader_id = Uuid::new_v4();
    db.init_sync_state(&SyncState {
        library_id: Uuid::new_v4(),
        device_id: leader_id,
        role: SyncRole::Leader,
        current_term: 1,
        voted_for: Some(leader_id),
        leader_device: Some(leader_id),
        last_synced_sequence: 0,
    })?;
    Ok((db, leader_id))
}

/// `lsync-bench ceiling`: only the ceiling, on `n` entries committed locally first (for
/// profiling the storage write paths without the network).
pub fn ceiling_only(n: u64) -> anyhow::Result<()> {
    let temp = tempfile::Builder::new().prefix("lsync-bench-").tempdir()?;
    let (db, leader_id) = leader_db(temp.path(), &StorageOptions::default())?;
    let tm = lsync::crates::storage::TransactionManager::new(db.clone(), leader_id);
    let start = Instant::now();
    let mut i = 0;
    while i < n {
        let k = (n - i).min(BATCH as u64);
        tm.commit_batch((i..i + k).map(|j| model::change(j + 1)).collect())?;
        i += k;
    }
    let commit_eps = n as f64 / start.elapsed().as_secs_f64();
    let (eps, _) = ceiling(&db, temp.path())?;
    println!(
        "{}",
        json!({"entries": n, "commit_eps": commit_eps.round(), "ceiling_eps": eps.round()})
    );
    Ok(())
}

/// `lsync-bench throughput`: only the throughput phase with a fresh leader and `followers`
/// follower processes (for profiling the replication path).
pub async fn throughput_only(followers: usize, entries: u64) -> anyhow::Result<()> {
    let temp = tempfile::Builder::new().prefix("lsync-bench-").tempdir()?;
    let root = temp.path().to_path_buf();
    let leader = start_leader(&root.join("leader"), SyncConfig::default()).await?;
    let mut opts = Opts::new(true, root.join("unused.json"));
    opts.throughput_entries = entries;
    let t = throughput(&leader, &root, "tp", followers, &opts).await?;
    println!(
        "{}",
        json!({
            "followers": followers,
            "entries": entries,
            "eps_slowest": t.eps_slowest.round(),
            "eps_each": t.eps_per_follower.iter().map(|x| x.round()).collect::<Vec<_>>(),
            "leader_commit_eps": t.leader_commit_eps.round(),
            "fetches_served_cached": leader.metrics().fetches_served_cached.load(Ordering::Relaxed),
            "fetches_served_storage": leader.metrics().fetches_served_storage.load(Ordering::Relaxed),
            "fetches_ahead": t.fetches_ahead,
            "fetches_ahead_missed": t.fetches_ahead_missed,
            "leader_peak_rss_mb": procs::own_peak_rss_mb(),
            "follower_peak_rss_mb": t.follower_peak_rss_mb,
        })
    );
    leader.shutdown().await;
    Ok(())
}

/// Runs every phase; prints the table and writes the JSON.
pub async fn run(opts: Opts) -> anyhow::Result<()> {
    let begun = Instant::now();
    let temp = tempfile::Builder::new().prefix("lsync-bench-").tempdir()?;
    let root = temp.path().to_path_buf();
    let machine = procs::machine_info();
    let mut r = Map::new();
    let mut put = |k: &str, v: Value| {
        r.insert(k.to_owned(), v);
    };
    let f1 = |x: f64| (x * 10.0).round() / 10.0;

    let leader = start_leader(&root.join("leader"), SyncConfig::default()).await?;

    say(format!(
        "1/7 latency: {} single-change commits at {}/s, default config (notify window {:?})",
        opts.latency_commits,
        opts.latency_rate,
        SyncConfig::default().notify_window
    ));
    let (l1, u1) = latency(&leader, &root, "lat1", 1, &opts).await?;
    say(format!("  1 follower: p50 {} µs p99 {} µs", l1.p50, l1.p99));
    let (l3, u3) = latency(&leader, &root, "lat3", 3, &opts).await?;
    say(format!("  3 followers: p50 {} µs p99 {} µs", l3.p50, l3.p99));
    let lat_json = |p: &Percentiles| json!({"n": p.n, "mean_us": f1(p.mean), "p50_us": p.p50, "p90_us": p.p90, "p99_us": p.p99, "max_us": p.max});
    put("latency_p50_us", json!(l1.p50));
    put("latency_p90_us", json!(l1.p90));
    put("latency_p99_us", json!(l1.p99));
    put("latency_max_us", json!(l1.max));
    put("latency_p50_us_3f", json!(l3.p50));
    put("latency_p90_us_3f", json!(l3.p90));
    put("latency_p99_us_3f", json!(l3.p99));
    put("latency_max_us_3f", json!(l3.max));
    put("latency_samples", json!(l1.n));
    put("latency_samples_3f", json!(l3.n));
    put("latency_unmatched", json!(u1 + u3));
    let mut w0 = None;
    if opts.window0 {
        say("   same with notify_window = 0 (every commit announced at once)");
        let sync = SyncConfig { notify_window: Duration::ZERO, ..SyncConfig::default() };
        let leader0 = start_leader(&root.join("leader-w0"), sync).await?;
        let a = latency(&leader0, &root, "lat1w0", 1, &opts).await?.0;
        say(format!("  1 follower: p50 {} µs p99 {} µs", a.p50, a.p99));
        let b = latency(&leader0, &root, "lat3w0", 3, &opts).await?.0;
        say(format!("  3 followers: p50 {} µs p99 {} µs", b.p50, b.p99));
        leader0.shutdown().await;
        put("latency_w0_1f", lat_json(&a));
        put("latency_w0_3f", lat_json(&b));
        put("latency_p50_us_w0", json!(a.p50));
        put("latency_p99_us_w0", json!(a.p99));
        put("latency_p50_us_3f_w0", json!(b.p50));
        put("latency_p99_us_3f_w0", json!(b.p99));
        w0 = Some((a, b));
    }

    say(format!("2/7 polling baseline: a poller every {} ms", opts.poll_interval_ms));
    let poll = polling(&leader, &root, &opts).await?;
    let half = opts.poll_interval_ms as f64 * 1000.0 / 2.0;
    // Latency = wait for the next poll (uniform over the interval) + fetch and apply: the
    // 5 s equivalent replaces the scaled half-interval by 2.5 s.
    let poll_5s_p50 = poll.p50 as f64 - half + 2_500_000.0;
    let poll_5s_mean = poll.mean - half + 2_500_000.0;
    say(format!(
        "  scaled p50 {} µs mean {:.0} µs; 5 s equivalent p50 {:.0} µs",
        poll.p50, poll.mean, poll_5s_p50
    ));
    put("poll_interval_ms", json!(opts.poll_interval_ms));
    put("poll_latency_p50_us_scaled", json!(poll.p50));
    put("poll_latency_mean_us_scaled", json!(f1(poll.mean)));
    put("poll_latency_p99_us_scaled", json!(poll.p99));
    put("poll_latency_p50_us", json!(poll_5s_p50.round()));
    put("poll_latency_mean_us", json!(poll_5s_mean.round()));
    put("push_over_poll_p50", json!(l1.p50 as f64 / poll_5s_p50));
    put("push_over_poll_p50_scaled", json!(l1.p50 as f64 / poll.p50.max(1) as f64));

    let rss_reset = procs::reset_own_peak_rss();
    say(format!(
        "3/7 throughput: {} entries committed in batches of {BATCH}",
        opts.throughput_entries
    ));
    let t1 = throughput(&leader, &root, "tp1", 1, &opts).await?;
    say(format!(
        "  1 follower: {:.0} entries/s (leader commits {:.0}/s)",
        t1.eps_slowest, t1.leader_commit_eps
    ));
    let t3 = throughput(&leader, &root, "tp3", 3, &opts).await?;
    say(format!(
        "  3 followers: {:.0} entries/s per follower (slowest); fetches sent ahead {} ({} missed)",
        t3.eps_slowest, t3.fetches_ahead, t3.fetches_ahead_missed
    ));
    put("throughput_eps_1f", json!(t1.eps_slowest.round()));
    put("throughput_fetches_ahead_3f", json!(t3.fetches_ahead));
    put("throughput_fetches_ahead_missed_3f", json!(t3.fetches_ahead_missed));
    put("throughput_eps_3f", json!(t3.eps_slowest.round()));
    put(
        "throughput_eps_3f_each",
        json!(t3.eps_per_follower.iter().map(|x| x.round()).collect::<Vec<_>>()),
    );
    put("leader_commit_eps", json!(t1.leader_commit_eps.round()));
    put("throughput_entries", json!(opts.throughput_entries));

    say(format!("5/7 catch-up: a follower joins {} entries behind", opts.catchup_entries));
    let cu = catch_up(&leader, &root, &opts).await?;
    say(format!(
        "  {:.1} s; first 10 % {:.0}/s, last 10 % {:.0}/s",
        cu.total_s, cu.first10_eps, cu.last10_eps
    ));
    let leader_rss = procs::own_peak_rss_mb().unwrap_or(0.0);
    let follower_rss =
        t1.follower_peak_rss_mb.max(t3.follower_peak_rss_mb).max(cu.follower_peak_rss_mb);
    put("catchup_entries", json!(opts.catchup_entries));
    put("catchup_1m_s", json!((cu.total_s * 100.0).round() / 100.0));
    put("catchup_rate_first10_eps", json!(cu.first10_eps.round()));
    put("catchup_rate_last10_eps", json!(cu.last10_eps.round()));
    put("catchup_leader_commit_s", json!(f1(cu.leader_commit_s)));
    put("leader_peak_rss_mb", json!(f1(leader_rss)));
    put("leader_peak_rss_reset", json!(rss_reset));
    put("follower_peak_rss_mb", json!(f1(follower_rss)));
    put(
        "follower_peak_rss_mb_throughput",
        json!(f1(t1.follower_peak_rss_mb.max(t3.follower_peak_rss_mb))),
    );
    put("follower_peak_rss_mb_catchup", json!(f1(cu.follower_peak_rss_mb)));

    say(format!(
        "6/7 idle: heartbeat every {} ms, counted for {:?}, scaled to the default 30 s",
        opts.idle_heartbeat_ms, opts.idle_window
    ));
    let id = idle(&root, &opts).await?;
    say(format!(
        "  {} requests measured → {:.1} messages/min",
        id.requests_measured, id.msgs_per_min
    ));
    put("idle_heartbeat_ms_measured", json!(opts.idle_heartbeat_ms));
    put("idle_requests_measured", json!(id.requests_measured));
    put("idle_msgs_per_follower_per_min", json!(f1(id.msgs_per_min)));
    put("idle_bytes_per_follower_per_min", json!(id.bytes_per_min.map(|b| b.round())));
    put("idle_frame_bytes_per_follower_per_min", json!(id.frame_bytes_per_min.round()));

    say("4/7 ceiling: the 1-follower run's entries applied locally, 100 per transaction");
    let (ceiling_eps, ceiling_n) =
        ceiling(&leader.database(t1.library_id)?, &root).context("ceiling run")?;
    say(format!("  {ceiling_n} entries: {ceiling_eps:.0} entries/s"));
    put("ceiling_eps", json!(ceiling_eps.round()));
    put("throughput_over_ceiling_1f", json!(t1.eps_slowest / ceiling_eps));
    put("throughput_over_ceiling_3f", json!(t3.eps_slowest / ceiling_eps));
    leader.shutdown().await;

    put("quick", json!(opts.quick));
    put("elapsed_s", json!(f1(begun.elapsed().as_secs_f64())));
    let mut report = Map::new();
    report.insert("machine".into(), machine.clone());
    report.insert(
        "command".into(),
        json!(if opts.quick {
            "cargo run --release -p lsync-bench -- --quick"
        } else {
            "cargo run --release -p lsync-bench"
        }),
    );
    report.insert("measured_at_unix_s".into(), json!(now_us() / 1_000_000));
    report.extend(r.clone());
    let report = Value::Object(report);
    procs::ensure_parent(&opts.out)?;
    std::fs::write(&opts.out, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("cannot write {}", opts.out.display()))?;

    print_table(&r, &machine, w0.as_ref(), &opts);
    println!("\nJSON: {}", opts.out.display());
    Ok(())
}

fn print_table(
    r: &Map<String, Value>,
    machine: &Value,
    w0: Option<&(Percentiles, Percentiles)>,
    opts: &Opts,
) {
    let n = |k: &str| r.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
    let ms = |k: &str| format!("{:.2} ms", n(k) / 1000.0);
    let ok = |pass: bool| if pass { "ok" } else { "MISS" };
    println!(
        "lsync-bench{} — {} ({} cores), kernel {}, {}",
        if opts.quick { " --quick" } else { "" },
        machine["cpu"].as_str().unwrap_or("?"),
        machine["cores"],
        machine["kernel"].as_str().unwrap_or("?"),
        machine["rustc"].as_str().unwrap_or("rustc ?"),
    );
    println!("{:<46} {:>22} {:>14} {:>5}", "metric", "measured", "target", "");
    let row = |name: &str, value: String, target: &str, status: &str| {
        println!("{name:<46} {value:>22} {target:>14} {status:>5}");
    };
    row(
        "latency p50 / p99, 1 follower",
        format!("{} / {}", ms("latency_p50_us"), ms("latency_p99_us")),
        "1 / 5 ms",
        ok(n("latency_p50_us") <= 1000.0 && n("latency_p99_us") <= 5000.0),
    );
    row("  p90 / max", format!("{} / {}", ms("latency_p90_us"), ms("latency_max_us")), "", "");
    row(
        "latency p50 / p99, 3 followers",
        format!("{} / {}", ms("latency_p50_us_3f"), ms("latency_p99_us_3f")),
        "1 / 5 ms",
        ok(n("latency_p50_us_3f") <= 1000.0 && n("latency_p99_us_3f") <= 5000.0),
    );
    row(
        "  p90 / max",
        format!("{} / {}", ms("latency_p90_us_3f"), ms("latency_max_us_3f")),
        "",
        "",
    );
    if let Some((a, b)) = w0 {
        row(
            "latency p50 / p99, 1 f., notify_window=0",
            format!("{:.2} ms / {:.2} ms", a.p50 as f64 / 1e3, a.p99 as f64 / 1e3),
            "1 / 5 ms",
            ok(a.p50 <= 1000 && a.p99 <= 5000),
        );
        row(
            "latency p50 / p99, 3 f., notify_window=0",
            format!("{:.2} ms / {:.2} ms", b.p50 as f64 / 1e3, b.p99 as f64 / 1e3),
            "1 / 5 ms",
            ok(b.p50 <= 1000 && b.p99 <= 5000),
        );
    }
    row(
        &format!("polling every {} ms: p50 / mean", opts.poll_interval_ms),
        format!("{} / {}", ms("poll_latency_p50_us_scaled"), ms("poll_latency_mean_us_scaled")),
        "",
        "",
    );
    row(
        "polling every 5 s (equivalent): p50",
        format!("{:.0} ms", n("poll_latency_p50_us") / 1e3),
        "",
        "",
    );
    row("push p50 ÷ poll p50 (5 s)", format!("{:.5}", n("push_over_poll_p50")), "", "");
    row(
        "throughput, 1 follower",
        format!("{:.0} /s", n("throughput_eps_1f")),
        "50,000 /s",
        ok(n("throughput_eps_1f") >= 50_000.0),
    );
    row(
        "throughput, 3 followers (each, slowest)",
        format!("{:.0} /s", n("throughput_eps_3f")),
        "50,000 /s",
        ok(n("throughput_eps_3f") >= 50_000.0),
    );
    row(
        "leader commit rate (batches of 1,000)",
        format!("{:.0} /s", n("leader_commit_eps")),
        "",
        "",
    );
    row(
        "ceiling: local Applier, 100 per transaction",
        format!("{:.0} /s", n("ceiling_eps")),
        "",
        "",
    );
    row(
        "replication ÷ ceiling, 1 / 3 followers",
        format!("{:.2} / {:.2}", n("throughput_over_ceiling_1f"), n("throughput_over_ceiling_3f")),
        "",
        "",
    );
    row(
        &format!("catch-up of {} entries", opts.catchup_entries),
        format!("{:.1} s", n("catchup_1m_s")),
        if opts.quick { "" } else { "30 s" },
        if opts.quick { "" } else { ok(n("catchup_1m_s") <= 30.0) },
    );
    row(
        "catch-up rate, first 10 % / last 10 %",
        format!("{:.0} / {:.0} /s", n("catchup_rate_first10_eps"), n("catchup_rate_last10_eps")),
        "last ≥ first",
        ok(n("catchup_rate_last10_eps") >= 0.9 * n("catchup_rate_first10_eps")),
    );
    row(
        "idle messages per follower per minute (30 s)",
        format!("{:.1}", n("idle_msgs_per_follower_per_min")),
        "heartbeats",
        ok(n("idle_msgs_per_follower_per_min") <= 8.5),
    );
    let bytes = r.get("idle_bytes_per_follower_per_min").and_then(Value::as_f64);
    row(
        "idle bytes per follower per minute (TCP)",
        bytes.map_or("n/a".into(), |b| format!("{b:.0} B")),
        "",
        "",
    );
    row(
        "peak RSS, leader / follower (during 3 and 5)",
        format!("{:.1} / {:.1} MiB", n("leader_peak_rss_mb"), n("follower_peak_rss_mb")),
        "bounded",
        "",
    );
}

/// `lsync-bench commits`: the leader's commit path alone (no network), `proposals` one-change
/// proposals through `TransactionManager::commit_proposal` from `writers` threads, under
/// `synchronous` = normal and full: commits per second, per-commit latency, and how many
/// transactions the group commit ran. Then the hash chain's cost: SHA-256 over the same
/// entries' canonical encodings, per entry.
pub fn commits_only(writers: usize, proposals: u64) -> anyhow::Result<()> {
    use lsync::crates::storage::{Synchronous, TransactionManager};
    let mut runs = Vec::new();
    for (name, synchronous) in [("normal", Synchronous::Normal), ("full", Synchronous::Full)] {
        for threads in [1, writers.max(1)] {
            let temp = tempfile::Builder::new().prefix("lsync-bench-").tempdir()?;
            let options = StorageOptions { synchronous, ..StorageOptions::default() };
            let (db, leader_id) = leader_db(temp.path(), &options)?;
            let tm = TransactionManager::new(db, leader_id);
            let per = proposals / threads as u64;
            let start = Instant::now();
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let tm = tm.clone();
                    std::thread::spawn(move || -> anyhow::Result<Vec<f64>> {
                        let mut lat = Vec::with_capacity(per as usize);
                        for i in 0..per {
                            let n = t as u64 * per + i + 1;
                            let asked = Instant::now();
                            tm.commit_proposal(Uuid::new_v4(), leader_id, vec![model::change(n)])?;
                            lat.push(asked.elapsed().as_secs_f64() * 1e3);
                        }
                        Ok(lat)
                    })
                })
                .collect();
            let mut lat = Vec::new();
            for h in handles {
                lat.extend(h.join().map_err(|_| anyhow::anyhow!("a writer panicked"))??);
            }
            let secs = start.elapsed().as_secs_f64();
            lat.sort_by(f64::total_cmp);
            let pct = |q: f64| lat[((lat.len() - 1) as f64 * q) as usize];
            runs.push(json!({
                "synchronous": name,
                "writers": threads,
                "commits": lat.len(),
                "commits_per_s": (lat.len() as f64 / secs).round(),
                "p50_ms": (pct(0.5) * 1000.0).round() / 1000.0,
                "p99_ms": (pct(0.99) * 1000.0).round() / 1000.0,
                "transactions": tm.group_commits(),
            }));
        }
    }
    // The hash chain: what the leader adds per entry.
    let entries: Vec<_> = (1..=proposals)
        .map(|n| {
            let c = model::change(n);
            lsync::SyncLogEntry {
                sequence: n,
                term: 1,
                origin_device: Uuid::nil(),
                timestamp_ms: 0,
                model_type: c.model_type,
                record_id: c.record_id,
                change_type: c.change_type,
                version: 1,
                data: c.data,
                proposal_id: Some(Uuid::nil()),
                hash: None,
                stamp: None,
            }
        })
        .collect();
    let start = Instant::now();
    let mut h = lsync::crates::protocol::ChainHash::GENESIS;
    for e in &entries {
        h = lsync::crates::protocol::chain_hash(&h, e);
    }
    let ns = start.elapsed().as_nanos() as f64 / entries.len() as f64;
    println!(
        "{}",
        json!({"runs": runs, "hash_ns_per_entry": ns.round(), "hash_head": h.to_string()})
    );
    Ok(())
}

/// Sizes of `lsync-bench majority`.
#[derive(Debug, Clone, Copy)]
pub struct MajorityOpts {
    /// Sequential one-change writes timed per level and configuration.
    pub writes: u64,
    /// Concurrent writers of the throughput run.
    pub writers: usize,
    /// Writes per writer in the throughput run.
    pub writes_per_writer: u64,
    /// Also run under synchronous = normal.
    pub normal: bool,
}

/// What one level measured in one configuration.
#[derive(Default)]
struct LevelRun {
    /// Sequential writes' latencies, µs.
    latencies: Vec<u64>,
    /// Writes of the throughput runs, and their wall time.
    writes: u64,
    secs: f64,
    /// Writes answered otherwise than `Committed` (a `majority` write answered `Pending`).
    not_committed: u64,
    /// For the sequential writes: from the write call to the end of the apply transaction on
    /// each follower, µs (every follower's samples together).
    applied: Vec<u64>,
}

/// `lsync-bench majority`: the cost of `Durability::Majority`. For each `synchronous`
/// setting (full, and normal with `--normal`), on the leader *and* the followers, and for 1
/// and 3 follower processes (2 and 4 voters: a majority is 2 and 3 devices): a fresh leader
/// and library, then one-change writes through `Node::write_with` at `local` and at
/// `majority` — `writes` sequential writes (latency of each call) and `writers` concurrent
/// writers of `writes_per_writer` each (throughput). The levels alternate local, majority,
/// majority, local (half of each size per turn), so a drift of the machine's speed weighs on
/// both alike. The followers record, for the sequential writes, the time from the write call
/// to the end of their apply transaction (what a `majority` write waits for, before the
/// follower's acknowledgement travels back). Prints one JSON object.
pub async fn majority_only(o: MajorityOpts) -> anyhow::Result<()> {
    use lsync::crates::storage::Synchronous;
    use lsync::Durability;
    let temp = tempfile::Builder::new().prefix("lsync-bench-").tempdir()?;
    let root = temp.path().to_path_buf();
    let mut settings = vec![("full", Synchronous::Full)];
    if o.normal {
        settings.push(("normal", Synchronous::Normal));
    }
    let mut runs = Vec::new();
    for (name, synchronous) in settings {
        for followers in [1usize, 3] {
            let tag = format!("maj-{name}-{followers}f");
            say(format!("majority: synchronous = {name}, {followers} follower(s)"));
            let storage = StorageOptions { synchronous, ..StorageOptions::default() };
            let leader = start_leader_with(
                &root.join(format!("{tag}-leader")),
                SyncConfig::default(),
                storage,
            )
            .await?;
            let mut children =
                spawn_followers(&root, &tag, followers, 30_000, true, Some(name)).await?;
            let (library_id, _) = library_with(&leader, &mut children).await?;
            // one write, not in the figures: with three followers the first one after they
            // joined waits for the leader lease's first heartbeat round
            let first = Instant::now();
            leader
                .write_with(
                    library_id,
                    Uuid::new_v4(),
                    Durability::Local,
                    vec![model::change(999_999)],
                )
                .await?;
            let first_write_us = first.elapsed().as_micros() as u64;
            say(format!("  the first write after the followers joined: {first_write_us} µs"));
            let mut next = 1_000_000u64; // record ids of this run's writes
            let mut local = LevelRun::default();
            let mut majority = LevelRun::default();
            for level in
                [Durability::Local, Durability::Majority, Durability::Majority, Durability::Local]
            {
                let run = if level == Durability::Local { &mut local } else { &mut majority };
                samples(&mut children).await?; // drop what the previous turn left
                let mut last = 0;
                for _ in 0..o.writes / 2 {
                    next += 1;
                    let asked = Instant::now();
                    let out = leader
                        .write_with(library_id, Uuid::new_v4(), level, vec![model::change(next)])
                        .await?;
                    run.latencies.push(asked.elapsed().as_micros() as u64);
                    match out {
                        lsync::WriteOutcome::Committed { last_sequence, .. }
                        | lsync::WriteOutcome::Pending { last_sequence, .. } => {
                            last = last_sequence;
                            run.not_committed +=
                                u64::from(matches!(out, lsync::WriteOutcome::Pending { .. }));
                        }
                        lsync::WriteOutcome::Queued { .. } => run.not_committed += 1,
                    }
                }
                // every follower applied them: their write → applied times
                reach(&mut children, last, WAIT).await?;
                run.applied.extend(samples(&mut children).await?.0);
                let per = (o.writes_per_writer / 2).max(1);
                let start = Instant::now();
                let tasks: Vec<_> = (0..o.writers.max(1) as u64)
                    .map(|w| {
                        let leader = leader.clone();
                        let base = next + w * per;
                        actix_rt::spawn(async move {
                            let mut not_committed = 0u64;
                            for i in 1..=per {
                                let out = leader
                                    .write_with(
                                        library_id,
                                        Uuid::new_v4(),
                                        level,
                                        vec![model::change(base + i)],
                                    )
                                    .await?;
                                if !matches!(out, lsync::WriteOutcome::Committed { .. }) {
                                    not_committed += 1;
                                }
                            }
                            anyhow::Ok(not_committed)
                        })
                    })
                    .collect();
                for t in tasks {
                    run.not_committed += t.await??;
                }
                run.secs += start.elapsed().as_secs_f64();
                run.writes += per * o.writers.max(1) as u64;
                next += per * o.writers.max(1) as u64;
                // the next turn starts with every follower caught up
                let head = leader.database(library_id)?.last_position()?.sequence;
                reach(&mut children, head, WAIT).await?;
            }
            // Where a majority write's time goes: `local` writes, each followed by status
            // reads back to back (no sleep) until the leader's commit sequence covers it —
            // the earliest moment `Node::write_with` can answer `majority` (it wakes when the
            // leader actor publishes its commit sequence) — and what one status read costs.
            let mut commit_seen = Vec::new();
            let mut status_calls = Vec::new();
            for _ in 0..o.writes / 2 {
                next += 1;
                let asked = Instant::now();
                let out = leader
                    .write_with(
                        library_id,
                        Uuid::new_v4(),
                        Durability::Local,
                        vec![model::change(next)],
                    )
                    .await?;
                let lsync::WriteOutcome::Committed { last_sequence, .. } = out else {
                    anyhow::bail!("a local write answered {out:?}");
                };
                loop {
                    let read = Instant::now();
                    let st = leader.status(library_id).await?;
                    status_calls.push(read.elapsed().as_micros() as u64);
                    if st.commit_sequence >= last_sequence {
                        break;
                    }
                }
                commit_seen.push(asked.elapsed().as_micros() as u64);
            }
            for c in children {
                c.quit().await;
            }
            leader.shutdown().await;
            let summary = |r: &LevelRun| {
                let p = Percentiles::of(r.latencies.clone());
                let a = Percentiles::of(r.applied.clone());
                json!({
                    "follower_applied_p50_us": a.p50,
                    "follower_applied_p99_us": a.p99,
                    "writes": p.n,
                    "p50_us": p.p50,
                    "p90_us": p.p90,
                    "p99_us": p.p99,
                    "max_us": p.max,
                    "mean_us": p.mean.round(),
                    "throughput_writes": r.writes,
                    "throughput_per_s": (r.writes as f64 / r.secs.max(1e-9)).round(),
                    "not_committed": r.not_committed,
                })
            };
            let (l, m) = (
                Percentiles::of(local.latencies.clone()),
                Percentiles::of(majority.latencies.clone()),
            );
            let ratio = |a: u64, b: u64| (a as f64 / b.max(1) as f64 * 100.0).round() / 100.0;
            let tl = local.writes as f64 / local.secs.max(1e-9);
            let tm = majority.writes as f64 / majority.secs.max(1e-9);
            let seen = Percentiles::of(commit_seen);
            let seen_json = json!({"writes": seen.n, "p50_us": seen.p50, "p99_us": seen.p99});
            let reads = Percentiles::of(status_calls);
            let status_json = json!({"reads": reads.n, "p50_us": reads.p50, "p99_us": reads.p99});
            let line = json!({
                "synchronous": name,
                "followers": followers,
                "voters": followers + 1,
                "first_write_us": first_write_us,
                "writers": o.writers,
                "local": summary(&local),
                "majority": summary(&majority),
                "majority_over_local_p50": ratio(m.p50, l.p50),
                "majority_over_local_p99": ratio(m.p99, l.p99),
                "majority_over_local_throughput": (tm / tl * 100.0).round() / 100.0,
                "local_then_commit_seen": seen_json,
                "status_read": status_json,
            });
            say(format!("  {line}"));
            runs.push(line);
        }
    }
    println!("{}", json!({"machine": procs::machine_info(), "runs": runs}));
    Ok(())
}

/// Sizes of `lsync-bench stamps`.
#[derive(Debug, Clone, Copy)]
pub struct StampsOpts {
    /// Inserts the leader commits itself (`commit_batch` of [`BATCH`]).
    pub entries: u64,
    /// One-change proposals of updates made on another device (timestamped there).
    pub proposals: u64,
    /// Rounds; each measures both feature versions, in alternating order.
    pub rounds: usize,
}

/// A configuration of one voter, `leader_id`, at `feature_version`: what a library's creation
/// writes, at the version the bench pins (2: no stamps; 3: stamps and field clocks).
fn configuration_at(
    feature_version: u32,
    leader_id: Uuid,
) -> lsync::crates::protocol::Configuration {
    use lsync::crates::protocol::{Configuration, Member, MemberRole, RolePreference};
    let key = libp2p::identity::Keypair::generate_ed25519();
    Configuration::new(
        feature_version,
        vec![Member {
            device_id: leader_id,
            peer_id: key.public().to_peer_id().to_string(),
            addresses: vec![],
            name: "bench".into(),
            role: MemberRole::Voter,
            preference: RolePreference::Auto,
        }],
    )
}

/// What one feature version measured in one round.
fn stamps_run(feature_version: u32, o: StampsOpts) -> anyhow::Result<Value> {
    use lsync::crates::protocol::{codec::encode_frame, Hlc, SyncMessage};
    use lsync::crates::storage::{Synchronous, TransactionManager};
    let temp = tempfile::Builder::new().prefix("lsync-bench-").tempdir()?;
    // `normal`: the CPU cost of stamps, not hidden behind an fsync per transaction
    let options = StorageOptions { synchronous: Synchronous::Normal, ..StorageOptions::default() };
    let (db, leader_id) = leader_db(temp.path(), &options)?;
    let tm = TransactionManager::new(db.clone(), leader_id);
    tm.commit_config(&configuration_at(feature_version, leader_id))?;

    // 1. The leader's own inserts, 1,000 per transaction (stamped by the leader's clock).
    let start = Instant::now();
    let mut versions = Vec::with_capacity(o.entries as usize);
    let mut i = 0;
    while i < o.entries {
        let k = (o.entries - i).min(BATCH as u64);
        let written = tm.commit_batch((i..i + k).map(|j| model::change(j + 1)).collect())?;
        versions.extend(written.iter().map(|e| e.version));
        i += k;
    }
    let insert_eps = o.entries as f64 / start.elapsed().as_secs_f64();

    // 2. Updates proposed by another device, each timestamped there and based on the version
    //    it saw: at feature version 3 the leader reads the record's field clock for each
    //    (a conflict check; none conflicts here), at 2 the timestamp is ignored.
    let other = Uuid::new_v4();
    let physical_ms = model::now_us() as u64 / 1_000;
    let proposals = o.proposals.min(o.entries);
    let start = Instant::now();
    for n in 1..=proposals {
        let mut change = lsync::Change::update(&model::BenchRow {
            id: format!("r{n}"),
            commit_us: model::now_us(),
            payload: format!("bench row {n:>10} updated ...."),
        });
        change.hlc = Some(Hlc { physical_ms, counter: n as u32, device: other });
        change.base_version = Some(versions[(n - 1) as usize]);
        tm.commit_proposal(Uuid::new_v4(), other, vec![change])?;
    }
    let proposal_s = start.elapsed().as_secs_f64();

    // 3. A follower applying the whole log (the ceiling's method: 100 entries per
    //    transaction through the storage `Applier`, the field clock kept at version 3).
    let (apply_eps, applied) = ceiling(&db, temp.path())?;

    // 4. Bytes per entry: the wire (an `EntriesResponse` of 100 entries, framed, per entry)
    //    and the budget every response and apply batch counts (`entry_bytes`).
    let log = db.fetch_since(0, 1_000_000_000)?;
    let wire = |kind: lsync::ChangeType| -> anyhow::Result<(f64, f64, usize)> {
        let of: Vec<_> =
            log.iter().filter(|e| e.change_type == kind).take(1_000).cloned().collect();
        let mut frame_bytes = 0usize;
        for chunk in of.chunks(100) {
            let msg = SyncMessage::EntriesResponse {
                library_id: Uuid::nil(),
                term: 1,
                entries: chunk.to_vec(),
                has_more: false,
                leader_last_sequence: 0,
                commit_sequence: 0,
            };
            frame_bytes += encode_frame(&msg, usize::MAX)?.len();
        }
        let budget: usize = of.iter().map(lsync::crates::protocol::entry_bytes).sum();
        let stamped = of.iter().filter(|e| e.stamp.is_some()).count();
        let n = of.len().max(1) as f64;
        Ok((frame_bytes as f64 / n, budget as f64 / n, stamped))
    };
    let (insert_wire, insert_budget, inserts_stamped) = wire(lsync::ChangeType::Insert)?;
    let (update_wire, update_budget, updates_stamped) = wire(lsync::ChangeType::Update)?;
    let db_bytes: u64 = ["leader.db", "leader.db-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(temp.path().join(f)).ok())
        .map(|m| m.len())
        .sum();
    Ok(json!({
        "feature_version": feature_version,
        "insert_entries": o.entries,
        "leader_insert_eps": insert_eps.round(),
        "proposals": proposals,
        "leader_proposals_per_s": (proposals as f64 / proposal_s).round(),
        "leader_proposal_us": (proposal_s * 1e6 / proposals.max(1) as f64 * 10.0).round() / 10.0,
        "follower_apply_eps": apply_eps.round(),
        "applied": applied,
        "insert_wire_bytes": insert_wire.round(),
        "insert_budget_bytes": insert_budget.round(),
        "inserts_stamped": inserts_stamped,
        "update_wire_bytes": update_wire.round(),
        "update_budget_bytes": update_budget.round(),
        "updates_stamped": updates_stamped,
        "leader_db_bytes_per_entry": (db_bytes as f64 / log.len().max(1) as f64).round(),
    }))
}

/// `lsync-bench stamps`: what the conflict machinery of issue 18 costs on the storage path,
/// no network: a library pinned at feature version 2 (no stamps, no field clock) beside one at
/// 3, each in a fresh database under `synchronous = normal`. For each, the leader's own inserts
/// (1,000 per transaction), one-change update proposals timestamped on another device (the
/// leader's conflict check reads the record's field clock at 3), a follower's apply of the
/// whole log (the ceiling's method), and the bytes per entry. The versions take turns, in
/// alternating order, `rounds` times.
pub fn stamps_only(o: StampsOpts) -> anyhow::Result<()> {
    let mut runs = Vec::new();
    for round in 0..o.rounds.max(1) {
        let order = if round % 2 == 0 { [2, 3] } else { [3, 2] };
        for fv in order {
            say(format!("stamps: round {round}, feature version {fv}"));
            let mut run = stamps_run(fv, o)?;
            run["round"] = json!(round);
            runs.push(run);
        }
    }
    // Per round: version 3 ÷ version 2 of each rate.
    let ratio = |key: &str| -> Vec<f64> {
        (0..o.rounds.max(1))
            .filter_map(|r| {
                let of = |fv: u32| {
                    runs.iter()
                        .find(|x| x["round"] == json!(r) && x["feature_version"] == json!(fv))
                        .and_then(|x| x[key].as_f64())
                };
                Some((of(3)? / of(2)? * 1000.0).round() / 1000.0)
            })
            .collect()
    };
    println!(
        "{}",
        json!({
            "machine": procs::machine_info(),
            "runs": runs,
            "v3_over_v2": {
                "leader_insert_eps": ratio("leader_insert_eps"),
                "leader_proposals_per_s": ratio("leader_proposals_per_s"),
                "follower_apply_eps": ratio("follower_apply_eps"),
            },
        })
    );
    Ok(())
}
