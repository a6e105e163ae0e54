//! `lsync demo`: a leader and followers syncing on 127.0.0.1, shown live.
//!
//! The devices are set up as `lsync library invite` / `lsync library join TOKEN` do: the
//! leader creates the library and invites each follower, which joins with the token.
//!
//! The script: the leader writes at a steady rate; a follower is stopped and brought back (it
//! catches up from its persisted sequence, with a progress bar); the leader is stopped (the
//! followers elect a new one and the writes go on there), then comes back as a follower; some
//! changes are written on a follower; at the end every device must hold identical tables and
//! logs — the exit status is 0 only if they do.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use lsync::{Change, Location, MemberRole, Node, SyncConfig, SyncRole, Tag, WriteOutcome};
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

pub fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let temp;
    let root = match &args.keep {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            dir.clone()
        }
        None => {
            temp = tempfile::tempdir().context("cannot create a temporary directory")?;
            temp.path().to_path_buf()
        }
    };
    let system = actix::System::new();
    system.block_on(Demo::new(args).run(root))
}

struct Device {
    name: String,
    dir: PathBuf,
    node: Option<Node>,
    addrs: Vec<libp2p::Multiaddr>,
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
    started: Instant,
    last_view: Instant,
}

impl Demo {
    fn new(args: DemoArgs) -> Self {
        Self {
            args,
            devices: Vec::new(),
            library_id: Uuid::nil(),
            leader: 0,
            leader_changes: 0,
            follower_writes: 0,
            started: Instant::now(),
            last_view: Instant::now(),
        }
    }

    fn say(&self, line: String) {
        if !self.args.json {
            println!("{line}");
        }
    }

    async fn run(mut self, root: PathBuf) -> anyhow::Result<ExitCode> {
        let loopback: libp2p::Multiaddr = "/ip4/127.0.0.1/tcp/0".parse().expect("valid address");
        for i in 0..=self.args.followers {
            let name = if i == 0 { "leader".to_string() } else { format!("follower-{i}") };
            let dir = root.join(&name);
            let node = start_node(&dir, &name, vec![loopback.clone()]).await?;
            self.devices.push(Device { addrs: node.listen_addrs(), name, dir, node: Some(node) });
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
        self.say(format!(
            "library {lib}: 1 leader, {} followers, {} changes at {RATE}/s",
            self.args.followers, self.args.changes
        ));

        let n = self.args.changes;
        let (stop_follower, restart_follower, stop_leader, restart_leader, follower_writes_from) =
            (n / 5, 2 * n / 5, 3 * n / 5, 7 * n / 10, 4 * n / 5);
        let mut i = 0u64;
        let mut phase_started = Instant::now();
        let mut committed_in_phase = 0u64;
        let mut old_leader = None;
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
                    self.devices[f].node().write(lib, vec![change(i)]).await?;
                    self.follower_writes += 1;
                    i += 1;
                    committed_in_phase += 1;
                }
            }
            let batch: Vec<_> = (i..(i + due).min(n)).map(change).collect();
            if !batch.is_empty() {
                let written = batch.len() as u64;
                match self.devices[self.leader].node().write(lib, batch).await {
                    Ok(WriteOutcome::Committed { .. }) | Ok(WriteOutcome::Queued { .. }) => {
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
            self.say(format!("-- stopping {} at sequence {i}", self.devices[1].name));
            self.stop(1).await;
        }
        if i >= restart_follower && self.devices[1].node.is_none() && old_leader.is_none() {
            self.say(format!(
                "-- restarting {}: it catches up from its persisted sequence",
                self.devices[1].name
            ));
            self.restart(1).await?;
        }
        if i >= stop_leader
            && old_leader.is_none()
            && self.leader_changes == 0
            && self.args.followers >= 2
        {
            let old = self.leader;
            self.say(format!(
                "-- stopping the leader ({}) at sequence {i}",
                self.devices[old].name
            ));
            self.stop(old).await;
            let since = Instant::now();
            let (new, term) = self.wait_for_leader(old).await?;
            self.leader = new;
            self.leader_changes += 1;
            *old_leader = Some(old);
            self.say(format!(
                "-- {} was elected leader of term {term} after {} ms; writes go on there",
                self.devices[new].name,
                since.elapsed().as_millis()
            ));
            *phase_started = Instant::now();
            *committed = 0;
        }
        if i >= restart_leader {
            if let Some(o) = old_leader.take() {
                self.say(format!(
                    "-- restarting {}: it rejoins as a follower",
                    self.devices[o].name
                ));
                self.restart(o).await?;
            }
        }
        let _ = lib;
        Ok(())
    }

    async fn stop(&mut self, d: usize) {
        if let Some(n) = self.devices[d].node.take() {
            n.shutdown().await;
        }
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

    /// Waits for convergence and compares every device with the leader, row by row.
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
        let expected = self.devices[self.leader].node().database(lib)?.dump()?;
        let mut converged = true;
        for d in &self.devices {
            let got = d.node().database(lib)?.dump()?;
            if got != expected {
                converged = false;
                self.say(format!("{} differs from the leader", d.name));
            }
        }
        let entries = expected.get("sync_log").map_or(0, |r| r.len());
        if self.args.json {
            let summary = serde_json::json!({
                "converged": converged,
                "devices": self.devices.len(),
                "entries": entries,
                "leader_changes": self.leader_changes,
                "follower_writes": self.follower_writes,
                "library_id": lib,
                "elapsed_ms": self.started.elapsed().as_millis() as u64,
            });
            println!("{summary}");
        } else if converged {
            println!(
                "converged: {} devices hold identical tables and logs ({entries} entries, {} leader change(s), {} follower writes) after {:.1} s",
                self.devices.len(),
                self.leader_changes,
                self.follower_writes,
                self.started.elapsed().as_secs_f64()
            );
        } else {
            println!("NOT converged");
        }
        for i in 0..self.devices.len() {
            self.stop(i).await;
        }
        Ok(if converged { ExitCode::SUCCESS } else { ExitCode::FAILURE })
    }

    /// One line per device every half second: role, term, last sequence, lag, and a progress
    /// bar for a device catching up.
    async fn view(&mut self, force: bool) {
        if self.args.json || (!force && self.last_view.elapsed() < Duration::from_millis(500)) {
            return;
        }
        self.last_view = Instant::now();
        let lib = self.library_id;
        let leader_last = match &self.devices[self.leader].node {
            Some(n) => n
                .database(lib)
                .and_then(|db| Ok(db.last_position()?))
                .map(|p| p.sequence)
                .unwrap_or(0),
            None => 0,
        };
        let mut lines = Vec::new();
        for d in &self.devices {
            let Some(node) = &d.node else {
                lines.push(format!("  {:<11} stopped", d.name));
                continue;
            };
            match node.status(lib).await {
                Ok(st) => {
                    let lag = leader_last.saturating_sub(st.last_sequence);
                    let mut line = format!(
                        "  {:<11} {:<9} term {:<3} seq {:>7}  lag {:>6}",
                        d.name,
                        st.role.to_string(),
                        st.term,
                        st.last_sequence,
                        lag
                    );
                    if lag > 100 && leader_last > 0 {
                        let done = (st.last_sequence * 20 / leader_last) as usize;
                        line.push_str(&format!(
                            "  catching up [{}{}] {}%",
                            "#".repeat(done),
                            ".".repeat(20 - done.min(20)),
                            st.last_sequence * 100 / leader_last
                        ));
                    }
                    lines.push(line);
                }
                Err(e) => lines.push(format!("  {:<11} error: {e}", d.name)),
            }
        }
        println!("[{:>5.1} s]\n{}", self.started.elapsed().as_secs_f64(), lines.join("\n"));
    }
}
