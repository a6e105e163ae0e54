//! `lsync demo`: a leader and followers syncing on 127.0.0.1, shown live.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use lsync::{Change, Location, Node, SyncConfig, Tag};
use uuid::Uuid;

pub struct DemoArgs {
    pub followers: usize,
    pub changes: u64,
    pub keep: Option<PathBuf>,
    pub json: bool,
}

/// How long the demo waits for the followers to converge at the end.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(120);
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
    system.block_on(demo(args, root))
}

struct Device {
    name: String,
    dir: PathBuf,
    node: Option<Node>,
    addrs: Vec<libp2p::Multiaddr>,
}

impl Device {
    async fn start(
        name: String,
        dir: PathBuf,
        listen: Vec<libp2p::Multiaddr>,
    ) -> anyhow::Result<Device> {
        let node = start_node(&dir, &name, listen).await?;
        Ok(Device { addrs: node.listen_addrs(), name, dir, node: Some(node) })
    }

    fn node(&self) -> &Node {
        self.node.as_ref().expect("device is running")
    }
}

async fn start_node(
    dir: &std::path::Path,
    name: &str,
    listen: Vec<libp2p::Multiaddr>,
) -> anyhow::Result<Node> {
    let mut last = None;
    // a restarted device reuses its address; the port may take a moment to be released
    for _ in 0..100 {
        let sync =
            SyncConfig { heartbeat_interval: Duration::from_secs(1), ..SyncConfig::default() };
        match Node::builder(dir).name(name).listen(listen.clone()).sync_config(sync).start().await {
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
        // rename a tag inserted earlier in this block of ten
        _ => Change::update(&Tag {
            id: format!("tag-{}", i - i % 10),
            name: format!("renamed {i}"),
            color: Some("#ff8800".into()),
        }),
    }
}

async fn demo(args: DemoArgs, root: PathBuf) -> anyhow::Result<ExitCode> {
    let loopback: libp2p::Multiaddr = "/ip4/127.0.0.1/tcp/0".parse().expect("valid address");
    let say = |line: String| {
        if !args.json {
            println!("{line}");
        }
    };
    let mut devices = Vec::new();
    for i in 0..=args.followers {
        let name = if i == 0 { "leader".to_string() } else { format!("follower-{i}") };
        devices.push(Device::start(name.clone(), root.join(&name), vec![loopback.clone()]).await?);
    }
    let library_id = devices[0].node().create_library().await?;
    let leader_info = devices[0].node().device_info();
    let infos: Vec<_> = devices[1..].iter().map(|d| d.node().device_info()).collect();
    for info in &infos {
        devices[0].node().add_device(library_id, info.clone()).await?;
    }
    for d in &devices[1..] {
        d.node().join_library(library_id, leader_info.clone(), infos.clone()).await?;
    }
    say(format!(
        "library {library_id}: 1 leader, {} followers, {} changes at {RATE}/s",
        args.followers, args.changes
    ));

    let stop_at = args.changes / 3;
    let restart_at = 2 * args.changes / 3;
    let started = Instant::now();
    let mut last_view = Instant::now();
    let mut i = 0u64;
    while i < args.changes {
        // a steady rate: commit what is due by now, in one batch
        let due =
            ((started.elapsed().as_secs_f64() * RATE as f64) as u64).clamp(i + 1, args.changes);
        let batch: Vec<_> = (i..due).map(change).collect();
        devices[0].node().commit_batch(library_id, batch).await?;
        let before = i;
        i = due;
        if args.followers >= 1 && before < stop_at && i >= stop_at {
            say(format!("-- stopping {} at sequence {i}", devices[1].name));
            if let Some(n) = devices[1].node.take() {
                n.shutdown().await;
            }
        }
        if before < restart_at && i >= restart_at && devices[1].node.is_none() {
            say(format!(
                "-- restarting {}: it catches up from its persisted sequence",
                devices[1].name
            ));
            devices[1].node = Some(
                start_node(&devices[1].dir, &devices[1].name, devices[1].addrs.clone()).await?,
            );
        }
        if last_view.elapsed() >= Duration::from_millis(500) {
            last_view = Instant::now();
            if !args.json {
                print_view(&devices, library_id).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let leader_last = devices[0].node().database(library_id)?.last_position()?.sequence;
    let deadline = Instant::now() + CONVERGE_TIMEOUT;
    loop {
        let mut behind = 0;
        for d in &devices[1..] {
            if d.node().database(library_id)?.last_position()?.sequence < leader_last {
                behind += 1;
            }
        }
        if behind == 0 || Instant::now() > deadline {
            break;
        }
        if last_view.elapsed() >= Duration::from_millis(500) {
            last_view = Instant::now();
            if !args.json {
                print_view(&devices, library_id).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if !args.json {
        print_view(&devices, library_id).await;
    }

    let expected = devices[0].node().database(library_id)?.dump()?;
    let mut converged = true;
    for d in &devices[1..] {
        let got = d.node().database(library_id)?.dump()?;
        if got != expected {
            converged = false;
            say(format!("{} differs from the leader", d.name));
        }
    }
    let entries = expected.get("sync_log").map_or(0, |r| r.len());
    if args.json {
        let summary = serde_json::json!({
            "converged": converged,
            "devices": devices.len(),
            "entries": entries,
            "leader_changes": 0,
            "follower_writes": 0,
            "library_id": library_id,
            "elapsed_ms": started.elapsed().as_millis() as u64,
        });
        println!("{summary}");
    } else if converged {
        println!(
            "converged: {} devices hold identical tables and logs ({entries} entries) after {:.1} s",
            devices.len(),
            started.elapsed().as_secs_f64()
        );
    } else {
        println!("NOT converged");
    }
    for d in &devices {
        if let Some(n) = &d.node {
            n.shutdown().await;
        }
    }
    Ok(if converged { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

async fn print_view(devices: &[Device], library_id: Uuid) {
    let mut line = String::new();
    let mut leader_last = 0;
    for d in devices {
        let Some(node) = &d.node else {
            line.push_str(&format!("  {:<11} stopped          ", d.name));
            continue;
        };
        match node.status(library_id).await {
            Ok(st) => {
                if st.role == lsync::SyncRole::Leader {
                    leader_last = st.last_sequence;
                }
                let lag = leader_last.saturating_sub(st.last_sequence);
                line.push_str(&format!(
                    "  {:<11} {:<8} t{} seq {:>7} lag {:>5}",
                    d.name,
                    st.role.to_string(),
                    st.term,
                    st.last_sequence,
                    lag
                ));
            }
            Err(e) => line.push_str(&format!("  {:<11} error: {e}", d.name)),
        }
    }
    println!("{}", line.trim_start());
}
