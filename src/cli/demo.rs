//! `lsync demo`: a leader and followers syncing on 127.0.0.1, shown live.
//!
//! The devices are `device-1..N` (the table shows each one's role beside it, as roles change);
//! they are set up as `lsync library invite` / `lsync library join TOKEN` do: device-1 creates
//! the library and invites each other device, which joins with the token.
//!
//! The script: the leader writes at a steady rate; a follower is stopped and brought back (it
//! catches up from its persisted sequence, with a progress bar); the leader is stopped (the
//! followers elect a new one and the writes go on there), then comes back as a follower; some
//! changes are written on a follower. At the end every device must hold identical tables and
//! logs, and every change the demo wrote (its own list of writes, `Demo::written`) must be in
//! every device's log exactly once — the exit status is 0 only if both hold.
//!
//! The terminal tells the story: one line per event, and a table of the devices that redraws in
//! place on a terminal (plain snapshots otherwise; nothing but a JSON summary with `--json`).
//! The nodes' logs — the warnings a stopped leader causes are expected here — go to `demo.log`
//! in the demo's directory, whose path is printed at the start and the end; a temporary
//! directory is removed at the end unless the demo failed.

use std::collections::HashMap;
use std::io::{IsTerminal, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use lsync::{
    Change, FollowerState, Location, MemberRole, Node, SyncConfig, SyncRole, Tag, WriteOutcome,
};
use uuid::Uuid;

pub struct DemoArgs {
    pub followers: usize,
    pub changes: u64,
    pub keep: Option<PathBuf>,
    pub json: bool,
}

/// How long the demo waits for an election or for the devices to converge.
const WAIT: Duration = Duration::from_secs(120);
/// Changes per second the leader writes.
const RATE: u64 = 2_000;
/// The nodes' log file, in the demo's directory.
const LOG_FILE: &str = "demo.log";
/// A follower this far behind gets a progress bar in the table.
const SHOW_LAG: u64 = 100;

/// Runs the demo. The nodes' logs go to `demo.log` in the demo's directory (the `lsync` binary
/// does not log to stderr for the demo): RUST_LOG, else `info`.
pub fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let mut temp = None;
    let root = match &args.keep {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            dir.clone()
        }
        None => {
            let t = tempfile::tempdir().context("cannot create a temporary directory")?;
            let path = t.path().to_path_buf();
            temp = Some(t);
            path
        }
    };
    let log = root.join(LOG_FILE);
    log_to_file(&log)?;
    let json = args.json;
    let kept = args.keep.is_some();
    if !json {
        println!(
            "demo directory {}; the nodes' logs go to {}{}",
            root.display(),
            log.display(),
            if kept {
                ""
            } else {
                " (removed at the end unless the demo fails; --keep DIR keeps it)"
            }
        );
    }
    let system = actix::System::new();
    let outcome = system.block_on(Demo::new(args).run(root));
    let failed = !matches!(outcome, Ok(ExitCode::SUCCESS));
    // a failed demo keeps its directory, logs included
    let kept = kept || (failed && temp.take().map(tempfile::TempDir::keep).is_some());
    let line = if kept {
        format!("logs: {} (kept)", log.display())
    } else {
        format!("logs: {} (removed with the demo's directory)", log.display())
    };
    if json {
        if failed {
            eprintln!("{line}");
        }
    } else {
        println!("{line}");
    }
    outcome
}

/// Sends every log line of this process to `path` (no colours), from now on.
fn log_to_file(path: &Path) -> anyhow::Result<()> {
    let file = std::fs::File::create(path)
        .with_context(|| format!("cannot create the log file {}", path.display()))?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::sync::Mutex::new(file))
        .with_ansi(false)
        .try_init()
        .map_err(|e| anyhow::anyhow!("cannot log to {}: {e}", path.display()))
}

/// The terminal: event lines, and the device table — redrawn in place on a terminal (the
/// events scroll above it), printed as a snapshot every half second otherwise.
struct Screen {
    quiet: bool,
    tty: bool,
    /// Lines of the table drawn last (on a terminal), to erase before drawing again.
    drawn: usize,
}

impl Screen {
    fn new(json: bool) -> Self {
        Self { quiet: json, tty: std::io::stdout().is_terminal(), drawn: 0 }
    }

    /// How often the table is drawn.
    fn every(&self) -> Duration {
        Duration::from_millis(if self.tty { 200 } else { 500 })
    }

    fn erase(&mut self) {
        if self.tty && self.drawn > 0 {
            print!("\x1b[{}A\x1b[J", self.drawn);
            self.drawn = 0;
        }
    }

    /// One event, on one line.
    fn event(&mut self, line: &str) {
        if self.quiet {
            return;
        }
        self.erase();
        println!("{line}");
        let _ = std::io::stdout().flush();
    }

    /// The device table under its header line.
    fn table(&mut self, header: &str, rows: &[String]) {
        if self.quiet {
            return;
        }
        self.erase();
        println!("{header}");
        for r in rows {
            println!("{r}");
        }
        if self.tty {
            self.drawn = rows.len() + 1;
        }
        let _ = std::io::stdout().flush();
    }

    /// The table stays as the last picture; what follows goes under it.
    fn keep_table(&mut self) {
        self.drawn = 0;
    }
}

struct Device {
    name: String,
    dir: PathBuf,
    node: Option<Node>,
    addrs: Vec<libp2p::Multiaddr>,
    /// The device id, as the table shows it.
    id: Uuid,
    /// A catch-up the table follows: since when, from which sequence, up to which.
    catch_up: Option<(Instant, u64, u64)>,
    /// Its last sequence when it was last stopped.
    stopped_at: u64,
}

impl Device {
    fn node(&self) -> &Node {
        self.node.as_ref().expect("device is running")
    }
}

/// Timers short enough that an election takes about a second.
fn demo_config() -> SyncConfig {
    SyncConfig {
        heartbeat_interval: Duration::from_millis(250),
        leader_timeout: Duration::from_millis(1_000),
        ..SyncConfig::default()
    }
}

async fn start_node(
    dir: &Path,
    name: &str,
    listen: Vec<libp2p::Multiaddr>,
) -> anyhow::Result<Node> {
    let mut last = None;
    // a restarted device reuses its address; the port may take a moment to be released
    for _ in 0..100 {
        match Node::builder(dir)
            .name(name)
            .listen(listen.clone())
            .sync_config(demo_config())
            .start()
            .await
        {
            Ok(n) => return Ok(n),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("device {name} did not start: {}", last.map(|e| e.to_string()).unwrap_or_default())
}

fn change(i: u64) -> Change {
    match i % 10 {
        0..=5 => {
            Change::insert(&Tag { id: format!("tag-{i}"), name: format!("tag {i}"), color: None })
        }
        6 | 7 => Change::insert(&Location {
            id: format!("loc-{i}"),
            name: format!("location {i}"),
            path: format!("/volumes/{i}"),
        }),
        // rename a tag written earlier in this block of ten
        _ => Change::update(&Tag {
            id: format!("tag-{}", i - i % 10),
            name: format!("renamed {i}"),
            color: Some("#ff8800".into()),
        }),
    }
}

struct Demo {
    args: DemoArgs,
    devices: Vec<Device>,
    library_id: Uuid,
    leader: usize,
    leader_changes: u64,
    follower_writes: u64,
    /// Every change the demo wrote (committed or queued), by its index for [`change`]: the
    /// oracle the devices' logs are checked against at the end.
    written: Vec<u64>,
    started: Instant,
    last_view: Instant,
    screen: Screen,
}

impl Demo {
    fn new(args: DemoArgs) -> Self {
        let screen = Screen::new(args.json);
        Self {
            args,
            devices: Vec::new(),
            library_id: Uuid::nil(),
            leader: 0,
            leader_changes: 0,
            follower_writes: 0,
            written: Vec::new(),
            started: Instant::now(),
            last_view: Instant::now(),
            screen,
        }
    }

    fn say(&mut self, line: String) {
        self.screen.event(&line);
    }

    /// `device-2 (follower)`: a device's name and its role now.
    async fn who(&self, d: usize) -> String {
        let dev = &self.devices[d];
        let role = match &dev.node {
            Some(n) => n
                .status(self.library_id)
                .await
                .map_or_else(|_| "?".to_owned(), |s| s.role.to_string().to_lowercase()),
            None => "stopped".to_owned(),
        };
        format!("{} ({role})", dev.name)
    }

    async fn run(mut self, root: PathBuf) -> anyhow::Result<ExitCode> {
        let loopback: libp2p::Multiaddr = "/ip4/127.0.0.1/tcp/0".parse().expect("valid address");
        for i in 0..=self.args.followers {
            let name = format!("device-{}", i + 1);
            let dir = root.join(&name);
            let node = start_node(&dir, &name, vec![loopback.clone()]).await?;
            self.devices.push(Device {
                addrs: node.listen_addrs(),
                id: node.device_id(),
                name,
                dir,
                node: Some(node),
                catch_up: None,
                stopped_at: 0,
            });
        }
        self.library_id = self.devices[0].node().create_library().await?;
        let lib = self.library_id;
        // Each follower joins with an invitation, as `lsync library invite` / `join TOKEN` do:
        // it starts as a learner; the leader promotes learners once caught up, keeping the
        // number of voters odd (1, 2, 3, then 5).
        for f in 1..self.devices.len() {
            let invitation =
                self.devices[0].node().invite(lib, false, Duration::from_secs(600)).await?;
            self.devices[f].node().join_with_invite(&invitation.token).await?;
            self.wait_for_configuration(f + 1, None).await?;
        }
        let voters = match self.devices.len() {
            n @ 0..=2 => n,
            n => (if n % 2 == 1 { n } else { n - 1 }).min(5),
        };
        self.wait_for_configuration(self.devices.len(), Some(voters)).await?;
        let followers = (1..self.devices.len()).map(|f| self.devices[f].name.clone());
        self.say(format!(
            "library {lib}: device-1 leads, {} follow; {} changes at {RATE}/s",
            followers.collect::<Vec<_>>().join(", "),
            self.args.changes
        ));

        let n = self.args.changes;
        let (stop_follower, restart_follower, stop_leader, restart_leader, follower_writes_from) =
            (n / 5, 2 * n / 5, 3 * n / 5, 7 * n / 10, 4 * n / 5);
        let mut i = 0u64;
        let mut phase_started = Instant::now();
        let mut committed_in_phase = 0u64;
        let mut old_leader = None;
        let mut told_follower_writes = false;
        while i < n {
            // a steady rate: write what is due by now
            let due = ((phase_started.elapsed().as_secs_f64() * RATE as f64) as u64)
                .saturating_sub(committed_in_phase)
                .clamp(1, 500)
                .min(n - i);
            if i >= follower_writes_from && self.args.followers >= 2 {
                // a change made on a follower: proposed to the leader, applied back here
                let f = (1..self.devices.len())
                    .find(|&f| f != self.leader && self.devices[f].node.is_some());
                if let Some(f) = f {
                    if !told_follower_writes {
                        told_follower_writes = true;
                        let who = self.who(f).await;
                        self.say(format!(
                            "-- from change {i} on, some changes are written on {who}: proposed \
                             to the leader, applied back there"
                        ));
                    }
                    self.devices[f].node().write(lib, vec![change(i)]).await?;
                    self.written.push(i);
                    self.follower_writes += 1;
                    i += 1;
                    committed_in_phase += 1;
                }
            }
            let batch: Vec<_> = (i..(i + due).min(n)).map(change).collect();
            if !batch.is_empty() {
                let written = batch.len() as u64;
                match self.devices[self.leader].node().write(lib, batch).await {
                    Ok(WriteOutcome::Committed { .. })
                    | Ok(WriteOutcome::Queued { .. })
                    | Ok(WriteOutcome::Pending { .. }) => {
                        self.written.extend(i..i + written);
                        i += written;
                        committed_in_phase += written;
                    }
                    // held during a handover: try again shortly
                    Err(lsync::NodeError::WritesPaused(_)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            self.milestones(
                i,
                stop_follower,
                restart_follower,
                stop_leader,
                restart_leader,
                &mut old_leader,
                &mut phase_started,
                &mut committed_in_phase,
            )
            .await?;
            self.view(false).await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if let Some(o) = old_leader.take() {
            self.restart(o).await?;
        }
        self.finish().await
    }

    #[allow(clippy::too_many_arguments)]
    async fn milestones(
        &mut self,
        i: u64,
        stop_follower: u64,
        restart_follower: u64,
        stop_leader: u64,
        restart_leader: u64,
        old_leader: &mut Option<usize>,
        phase_started: &mut Instant,
        committed: &mut u64,
    ) -> anyhow::Result<()> {
        let lib = self.library_id;
        if i >= stop_follower && self.devices[1].node.is_some() && i < restart_follower {
            let who = self.who(1).await;
            self.say(format!("-- stopping {who} after {i} changes"));
            self.stop(1).await;
        }
        if i >= restart_follower && self.devices[1].node.is_none() && old_leader.is_none() {
            let at = Instant::now();
            self.restart(1).await?;
            self.follow_catch_up(1, at).await;
        }
        if i >= stop_leader
            && old_leader.is_none()
            && self.leader_changes == 0
            && self.args.followers >= 2
        {
            let old = self.leader;
            self.say(format!(
                "-- stopping {}, the leader, after {i} changes",
                self.devices[old].name
            ));
            self.stop(old).await;
            let since = Instant::now();
            let (new, term) = self.wait_for_leader(old).await?;
            self.leader = new;
            self.leader_changes += 1;
            *old_leader = Some(old);
            self.say(format!(
                "-- {} was elected leader of term {term} after {} ms; the writes go on there",
                self.devices[new].name,
                since.elapsed().as_millis()
            ));
            *phase_started = Instant::now();
            *committed = 0;
        }
        if i >= restart_leader {
            if let Some(o) = old_leader.take() {
                let at = Instant::now();
                self.restart(o).await?;
                self.follow_catch_up(o, at).await;
            }
        }
        let _ = lib;
        Ok(())
    }

    async fn stop(&mut self, d: usize) {
        if let Some(n) = self.devices[d].node.take() {
            let held = n.status(self.library_id).await.map_or(0, |s| s.last_sequence);
            n.shutdown().await;
            self.devices[d].stopped_at = held;
        }
    }

    /// The running device that leads now (of the highest term, should two say so for a
    /// moment) and its last sequence.
    async fn current_leader(&self) -> Option<(usize, u64)> {
        let mut best: Option<(u64, usize, u64)> = None;
        for (i, d) in self.devices.iter().enumerate() {
            let Some(n) = &d.node else { continue };
            if let Ok(st) = n.status(self.library_id).await {
                if st.role == SyncRole::Leader && best.is_none_or(|(t, _, _)| st.term > t) {
                    best = Some((st.term, i, st.last_sequence));
                }
            }
        }
        best.map(|(_, i, last)| (i, last))
    }

    /// The leader's last sequence; while none leads (an election), the highest last sequence
    /// of the running devices.
    async fn head(&self) -> u64 {
        if let Some((_, last)) = self.current_leader().await {
            return last;
        }
        let mut head = 0;
        for n in self.devices.iter().filter_map(|d| d.node.as_ref()) {
            if let Ok(st) = n.status(self.library_id).await {
                head = head.max(st.last_sequence);
            }
        }
        head
    }

    /// Says that device `d` was restarted and how far behind it is; the table follows its
    /// catch-up and an event line says when it is done.
    async fn follow_catch_up(&mut self, d: usize, restarted: Instant) {
        // the sequence it held when it stopped (it may have fetched some while it started)
        let from = self.devices[d].stopped_at;
        let to = self.head().await;
        let name = self.devices[d].name.clone();
        let leader = match self.current_leader().await {
            Some((l, _)) => self.devices[l].name.clone(),
            None => "the next leader".to_owned(),
        };
        if from > to {
            self.say(format!(
                "-- restarted {name}: it rejoins as a follower of {leader}; it holds {} entries \
                 beyond the leader's {to}, which the new leader lacks: it sets them aside, takes \
                 the leader's log and proposes its changes again",
                from - to
            ));
        } else {
            self.say(format!(
                "-- restarted {name}: it rejoins as a follower of {leader} and catches up from \
                 sequence {from}, where it stopped ({} entries behind)",
                to - from
            ));
        }
        self.devices[d].catch_up = Some((restarted, from, to));
        // a frame at once: a short catch-up may be over before the next one
        self.view(true).await;
    }

    async fn restart(&mut self, d: usize) -> anyhow::Result<()> {
        let dev = &self.devices[d];
        let node = start_node(&dev.dir, &dev.name, dev.addrs.clone()).await?;
        self.devices[d].node = Some(node);
        Ok(())
    }

    /// Waits until the first `members` devices (those that joined), where running, hold the
    /// same committed configuration of `members` members (and `voters` voters, if given).
    async fn wait_for_configuration(
        &mut self,
        members: usize,
        voters: Option<usize>,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + WAIT;
        loop {
            let mut configs = Vec::new();
            for node in self.devices[..members].iter().filter_map(|d| d.node.as_ref()) {
                configs.push(node.status(self.library_id).await.ok().map(|st| st.membership));
            }
            let settled = configs.iter().all(|m| {
                m.as_ref().is_some_and(|m| {
                    !m.pending
                        && m.members.len() == members
                        && voters.is_none_or(|v| {
                            m.members.iter().filter(|x| x.role == MemberRole::Voter).count() == v
                        })
                        && Some(m.config_sequence) == configs[0].as_ref().map(|c| c.config_sequence)
                })
            });
            if settled {
                return Ok(());
            }
            if Instant::now() > deadline {
                let seen: Vec<String> = configs
                    .iter()
                    .map(|m| match m {
                        Some(m) => format!(
                            "entry {} of {} members{}",
                            m.config_sequence,
                            m.members.len(),
                            if m.pending { " (pending)" } else { "" }
                        ),
                        None => "no status".into(),
                    })
                    .collect();
                bail!(
                    "the devices did not settle on {members} members within {} s: they hold {}",
                    WAIT.as_secs(),
                    seen.join(", ")
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until one running device other than `old` leads, and returns it and its term.
    async fn wait_for_leader(&mut self, old: usize) -> anyhow::Result<(usize, u64)> {
        let deadline = Instant::now() + WAIT;
        loop {
            for (i, d) in self.devices.iter().enumerate() {
                if i == old {
                    continue;
                }
                if let Some(node) = &d.node {
                    if let Ok(st) = node.status(self.library_id).await {
                        if st.role == SyncRole::Leader {
                            return Ok((i, st.term));
                        }
                    }
                }
            }
            if Instant::now() > deadline {
                bail!("no new leader was elected within {} s", WAIT.as_secs());
            }
            self.view(false).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for convergence, compares every device with the leader row by row, and checks
    /// every device's log against what the demo wrote.
    async fn finish(mut self) -> anyhow::Result<ExitCode> {
        let lib = self.library_id;
        let deadline = Instant::now() + WAIT;
        loop {
            let leader_last =
                self.devices[self.leader].node().database(lib)?.last_position()?.sequence;
            let mut settled = true;
            for d in self.devices.iter().filter_map(|d| d.node.as_ref()) {
                let st = d.status(lib).await?;
                // A rebuilt device sets aside the entries the leader lacked, then moves them
                // to its outbox: until then it is not done, whatever its last sequence.
                let stashed = d.database(lib)?.stashed_count()?;
                if st.last_sequence != leader_last || st.outbox_pending > 0 || stashed > 0 {
                    settled = false;
                }
            }
            if settled || Instant::now() > deadline {
                break;
            }
            self.view(false).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.view(true).await;
        self.screen.keep_table();
        let expected = self.devices[self.leader].node().database(lib)?.dump()?;
        let mut converged = true;
        for d in &self.devices {
            let got = d.node().database(lib)?.dump()?;
            if got != expected {
                converged = false;
                self.screen.event(&format!("{} differs from the leader", d.name));
            }
        }
        let entries = expected.get("sync_log").map_or(0, |r| r.len());
        let mut problems = Vec::new();
        for d in &self.devices {
            let log = whole_log(d.node(), lib)?;
            problems.extend(
                check_writes(&self.written, &log).into_iter().map(|p| format!("{}: {p}", d.name)),
            );
        }
        let all_once = problems.is_empty() && self.written.len() as u64 == self.args.changes;
        let ok = converged && all_once;
        if self.args.json {
            let summary = serde_json::json!({
                "converged": converged,
                "all_writes_once": all_once,
                "writes": self.written.len(),
                "devices": self.devices.len(),
                "entries": entries,
                "leader_changes": self.leader_changes,
                "follower_writes": self.follower_writes,
                "library_id": lib,
                "elapsed_ms": self.started.elapsed().as_millis() as u64,
            });
            println!("{summary}");
        } else {
            for p in problems.iter().take(10) {
                println!("  {p}");
            }
            let tables = if converged {
                format!("the {} devices hold identical tables and logs", self.devices.len())
            } else {
                "the devices' tables or logs DIFFER".to_owned()
            };
            let writes = if all_once {
                format!(
                    "every one of the {} changes the demo wrote is in every log exactly once",
                    self.written.len()
                )
            } else {
                format!(
                    "NOT every change the demo wrote ({}) is in every log exactly once ({} \
                     problems)",
                    self.written.len(),
                    problems.len()
                )
            };
            println!(
                "{}: {tables} ({entries} entries); {writes}; {} leader change(s), {} changes \
                 written on a follower, {:.1} s",
                if ok { "OK" } else { "FAILED" },
                self.leader_changes,
                self.follower_writes,
                self.started.elapsed().as_secs_f64()
            );
        }
        for i in 0..self.devices.len() {
            self.stop(i).await;
        }
        Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
    }

    /// The device table: per device its name, id, role, term, last sequence and lag, and a
    /// progress bar for a follower catching up; drawn every [`Screen::every`] (or now, if
    /// `force`). Also notices a followed catch-up's end (an event line).
    async fn view(&mut self, force: bool) {
        if !force && self.last_view.elapsed() < self.screen.every() {
            return;
        }
        self.last_view = Instant::now();
        let lib = self.library_id;
        let head = self.head().await;
        let leader_id = self.current_leader().await.map(|(l, _)| self.devices[l].id);
        let mut rows = Vec::new();
        let mut done = Vec::new();
        for (i, d) in self.devices.iter().enumerate() {
            let id = d.id.simple().to_string();
            let short = &id[..8];
            let Some(node) = &d.node else {
                rows.push(format!(" {:<8}  {short}  stopped", d.name));
                continue;
            };
            match node.status(lib).await {
                Ok(st) => {
                    let lag = head.saturating_sub(st.last_sequence);
                    // a learner is a follower that does not vote
                    let role = match (st.role, st.member_role) {
                        (SyncRole::Leader, _) => "leader".to_owned(),
                        (SyncRole::Follower, Some(MemberRole::Learner)) => "learner".to_owned(),
                        (r, _) => r.to_string().to_lowercase(),
                    };
                    let mut line = format!(
                        " {:<8}  {short}  {role:<9}  {:>4}  {:>7}  {:>6}",
                        d.name, st.term, st.last_sequence, lag
                    );
                    let state = st.applier.as_ref().map(|a| a.state);
                    if let Some((since, from, to)) = d.catch_up {
                        // done: following the leader of now, at least where it was at the
                        // restart, not rebuilding, nothing set aside
                        let caught_up = state != Some(FollowerState::Reconciling)
                            && st.leader.is_some()
                            && st.leader == leader_id
                            && st.last_sequence >= to
                            && st.rebuild_mark.is_none()
                            && st.outbox_pending == 0;
                        if caught_up {
                            done.push((i, since.elapsed(), to.saturating_sub(from)));
                        }
                    }
                    let run = st.applier.as_ref().and_then(|a| a.progress);
                    match (state, run) {
                        (Some(FollowerState::Reconciling), Some(p)) => {
                            let cells = bar(p.applied, p.target);
                            let cells = cells.split(' ').next().unwrap_or_default();
                            line.push_str(&format!("  {cells} rebuilding"))
                        }
                        _ if lag > SHOW_LAG && head > 0 => {
                            line.push_str(&format!("  {}", bar(st.last_sequence, head)))
                        }
                        _ => {}
                    }
                    rows.push(line);
                }
                Err(e) => rows.push(format!(" {:<8}  {short}  error: {e}", d.name)),
            }
        }
        for (i, took, entries) in done {
            self.devices[i].catch_up = None;
            let name = self.devices[i].name.clone();
            self.screen.event(&format!(
                "-- {name} caught up: the {entries} entries it missed are applied, {:.1} s \
                 after its restart",
                took.as_secs_f64()
            ));
        }
        // narrow enough for an 80-column terminal, where the table redraws in place
        rows.insert(
            0,
            format!(
                " {:<8}  {:<8}  {:<9}  {:>4}  {:>7}  {:>6}  catching up",
                "device", "id", "role", "term", "seq", "lag"
            ),
        );
        let header = format!(
            "[{:>5.1} s]  the leader's sequence: {head}",
            self.started.elapsed().as_secs_f64()
        );
        self.screen.table(&header, &rows);
    }
}

/// `[####......]  41%`.
fn bar(done: u64, of: u64) -> String {
    let filled = (done.min(of) * 10 / of.max(1)) as usize;
    format!(
        "[{}{}] {:>3}%",
        "#".repeat(filled),
        ".".repeat(10 - filled),
        done.min(of) * 100 / of.max(1)
    )
}

/// A device's whole log, oldest first.
fn whole_log(node: &Node, library: Uuid) -> anyhow::Result<Vec<lsync::SyncLogEntry>> {
    let db = node.database(library)?;
    let mut out: Vec<lsync::SyncLogEntry> = Vec::new();
    loop {
        let since = out.last().map_or(0, |e| e.sequence);
        let page = db.fetch_since(since, 10_000)?;
        if page.is_empty() {
            return Ok(out);
        }
        out.extend(page);
    }
}

/// What is wrong with `log` against the demo's writes (`written`, indices for [`change`]):
/// each must be in it exactly once — an entry of the same model, record and data, or the
/// conflict record of a write an older timestamp made lose (docs/architecture.md, "Conflicts")
/// — and it must hold no other change (configuration entries aside). Empty when all is well.
fn check_writes(written: &[u64], log: &[lsync::SyncLogEntry]) -> Vec<String> {
    let mut found: HashMap<(String, String, Vec<u8>), u64> = HashMap::new();
    let mut changes = 0u64;
    for e in log.iter().filter(|e| e.change_type != lsync::ChangeType::Config) {
        if e.model_type == lsync::crates::storage::conflicts::CONFLICT_MODEL_TYPE {
            // A change an older timestamp made lose (last-writer-wins) is in the log as the
            // conflict record that decided it, not as an entry.
            let Ok(c) = lsync::crates::storage::decode::<lsync::Conflict>(&e.data) else {
                continue;
            };
            if c.outcome != lsync::ConflictOutcome::Change {
                *found.entry((c.model_type, c.record_id, c.proposed)).or_default() += 1;
                changes += 1;
            }
            continue;
        }
        *found.entry((e.model_type.clone(), e.record_id.clone(), e.data.clone())).or_default() += 1;
        changes += 1;
    }
    let mut problems = Vec::new();
    for &i in written {
        let c = change(i);
        let n = found.get(&(c.model_type.clone(), c.record_id.clone(), c.data.clone()));
        match n.copied().unwrap_or(0) {
            1 => {}
            n => problems.push(format!(
                "change {i} ({} {}) is in the log {n} times",
                c.model_type, c.record_id
            )),
        }
    }
    if changes != written.len() as u64 {
        problems.push(format!("the log holds {changes} changes; the demo wrote {}", written.len()));
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(sequence: u64, c: &Change) -> lsync::SyncLogEntry {
        lsync::SyncLogEntry {
            sequence,
            term: 1,
            origin_device: Uuid::nil(),
            timestamp_ms: 0,
            model_type: c.model_type.clone(),
            record_id: c.record_id.clone(),
            change_type: c.change_type,
            version: 1,
            data: c.data.clone(),
            proposal_id: None,
            hash: None,
            stamp: None,
        }
    }

    #[test]
    fn a_log_with_every_write_once_passes() {
        let log: Vec<_> = (0..20).map(|i| entry(i + 1, &change(i))).collect();
        assert_eq!(check_writes(&(0..20).collect::<Vec<_>>(), &log), Vec::<String>::new());
    }

    #[test]
    fn a_missing_write_is_named() {
        let log: Vec<_> = (0..20).filter(|&i| i != 7).map(|i| entry(i + 1, &change(i))).collect();
        let problems = check_writes(&(0..20).collect::<Vec<_>>(), &log);
        assert!(
            problems.iter().any(|p| p.contains("change 7 ") && p.contains("0 times")),
            "{problems:?}"
        );
    }

    #[test]
    fn a_write_committed_twice_is_named() {
        let mut log: Vec<_> = (0..20).map(|i| entry(i + 1, &change(i))).collect();
        log.push(entry(21, &change(9)));
        let problems = check_writes(&(0..20).collect::<Vec<_>>(), &log);
        assert!(
            problems.iter().any(|p| p.contains("change 9 ") && p.contains("2 times")),
            "{problems:?}"
        );
        assert!(problems.iter().any(|p| p.contains("holds 21 changes")), "{problems:?}");
    }

    #[test]
    fn every_demo_change_is_distinct() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..1000 {
            let c = change(i);
            assert!(seen.insert((c.model_type, c.record_id, c.data)), "change {i} repeats one");
        }
    }

    #[test]
    fn bars_are_bounded() {
        assert_eq!(bar(0, 100), "[..........]   0%");
        assert_eq!(bar(50, 100), "[#####.....]  50%");
        assert_eq!(bar(150, 100), "[##########] 100%");
        assert_eq!(bar(0, 0), "[..........]   0%");
    }
}
