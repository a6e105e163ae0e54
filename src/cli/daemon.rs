//! `lsync init` (identity + config file) and `lsync run` (the daemon).

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use lsync::config::{Config, Resolved, CONFIG_FILE, DEFAULT_LISTEN};
use lsync::control::{ControlServer, ADDR_FILE, TOKEN_FILE};
use lsync::{FollowerState, Identity, Node, NodeConfig, SyncEvent};
use tracing::{error, info, warn};

use super::progress::{CatchUp, ProgressDisplay};

/// The identity key file `Identity` writes (its presence means `lsync init` ran).
const IDENTITY_FILE: &str = "identity.key";

pub struct InitArgs {
    pub data_dir: PathBuf,
    pub name: Option<String>,
    pub listen: Vec<String>,
    pub control_port: u16,
    pub force: bool,
}

pub fn init(args: InitArgs) -> anyhow::Result<ExitCode> {
    let dir = &args.data_dir;
    let config_path = dir.join(CONFIG_FILE);
    let config = Config {
        name: args.name.clone(),
        listen: if args.listen.is_empty() { vec![DEFAULT_LISTEN.into()] } else { args.listen },
        control: lsync::config::ControlSection { port: args.control_port },
        ..Config::default()
    };
    // check before creating anything
    config.resolve(&config_path)?;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the data directory {}", dir.display()))?;
    let identity = Identity::load_or_create(dir)
        .with_context(|| format!("cannot create the device identity in {}", dir.display()))?;
    let kept = config_path.exists() && !args.force;
    if !kept {
        let text = format!(
            "# lsync daemon configuration; every key and its default: docs/operations.md\n{}",
            config.to_toml()
        );
        std::fs::write(&config_path, text)
            .with_context(|| format!("cannot write {}", config_path.display()))?;
    }
    let resolved = Config::load(&config_path)?;
    println!("device id:  {}", identity.device_id);
    println!("peer id:    {}", identity.peer_id());
    for a in &resolved.listen {
        println!("listen:     {a}");
    }
    if kept {
        println!("config:     {} (exists, kept; --force rewrites it)", config_path.display());
    } else {
        println!("config:     {}", config_path.display());
    }
    if resolved.listen.iter().any(|a| a.to_string().starts_with("/ip4/0.0.0.0")) {
        println!(
            "other devices reach this one at its LAN address, e.g. /ip4/<this device's IP>/tcp/<port>; \
             `lsync status` lists the addresses once the daemon runs"
        );
    }
    println!("start the daemon: lsync run --data-dir {}", dir.display());
    Ok(ExitCode::SUCCESS)
}

pub fn run(data_dir: PathBuf, config: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let config_path = config.unwrap_or_else(|| data_dir.join(CONFIG_FILE));
    let cfg = Config::load(&config_path)?;
    let dir = cfg.data_dir.display().to_string();
    if !cfg.data_dir.join(IDENTITY_FILE).exists() {
        bail!("{dir} has no device identity: run `lsync init --data-dir {dir}` first");
    }
    if let Some(addr) = running_daemon(&cfg.data_dir) {
        bail!(
            "another lsync daemon already runs for {dir} (control API at {addr}): stop it first, \
             or use another --data-dir"
        );
    }
    let system = actix::System::new();
    system.block_on(daemon(cfg))
}

/// The address of a daemon answering on `<dir>/control.addr`, if any.
fn running_daemon(dir: &Path) -> Option<SocketAddr> {
    let addr: SocketAddr =
        std::fs::read_to_string(dir.join(ADDR_FILE)).ok()?.trim().parse().ok()?;
    TcpStream::connect_timeout(&addr, Duration::from_millis(300)).ok().map(|_| addr)
}

async fn daemon(cfg: Resolved) -> anyhow::Result<ExitCode> {
    let file = cfg.path.display().to_string();
    let node = Node::builder(&cfg.data_dir)
        .name(cfg.name.clone())
        .config(NodeConfig {
            sync: cfg.sync.clone(),
            network: cfg.network.clone(),
            storage: cfg.storage.clone(),
            registry: cfg.registry.clone(),
        })
        .announce(cfg.announce.clone())
        .start()
        .await
        .map_err(|e| {
            let addrs: Vec<_> = cfg.listen.iter().map(ToString::to_string).collect();
            anyhow!(
                "cannot start the node listening on {} ({e}): is another program using the \
                 port? change `listen` in {file}",
                addrs.join(", ")
            )
        })?;
    let control = match ControlServer::start(node.clone(), cfg.control_port, &cfg.data_dir).await {
        Ok(c) => c,
        Err(e) => {
            node.shutdown().await;
            bail!(
                "cannot serve the control API on 127.0.0.1:{} ({e}): change `port` under \
                 [control] in {file} (0 picks a free port)",
                cfg.control_port
            );
        }
    };
    let addrs: Vec<_> = node.listen_addrs().iter().map(ToString::to_string).collect();
    let announced = if cfg.announce.is_empty() {
        String::new()
    } else {
        let a: Vec<_> = node.announce_addrs().iter().map(ToString::to_string).collect();
        format!(" (announced as {})", a.join(" "))
    };
    eprintln!(
        "lsync running: device {} ({}), peer {}, listening on {}{announced}, control API at {} \
         (token in {}); Ctrl-C stops",
        node.device_id(),
        cfg.name,
        node.peer_id(),
        addrs.join(" "),
        control.addr(),
        cfg.data_dir.join(TOKEN_FILE).display()
    );
    info!(device_id = %node.device_id(), control = %control.addr(), "daemon started");

    let events = actix_rt::spawn(log_events(node.clone()));
    let progress = actix_rt::spawn(show_progress(node.clone()));
    let signal = wait_for_signal().await;
    info!(signal, "stopping");
    eprintln!("lsync: {signal}, stopping");
    progress.abort();
    events.abort();
    control.stop().await;
    node.shutdown().await;
    eprintln!("lsync: stopped");
    Ok(ExitCode::SUCCESS)
}

/// Waits for SIGINT (Ctrl-C) or SIGTERM; returns its name.
async fn wait_for_signal() -> &'static str {
    #[cfg(unix)]
    {
        use actix_rt::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = actix_rt::signal::ctrl_c() => "SIGINT",
                _ = term.recv() => "SIGTERM",
            },
            Err(e) => {
                warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops the daemon");
                let _ = actix_rt::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = actix_rt::signal::ctrl_c().await;
        "Ctrl-C"
    }
}

/// Logs the events an operator must see, with what to do.
async fn log_events(node: Node) {
    let mut rx = node.subscribe();
    loop {
        match rx.recv().await {
            Ok(SyncEvent::ApplyFailed { library_id, error }) => error!(
                %library_id, %error,
                "applier stalled: nothing more is applied until this is fixed (an unknown model \
                 type needs an lsync build that knows it; then restart the daemon)"
            ),
            Ok(SyncEvent::ResyncStarted { library_id, reason, target }) => {
                warn!(%library_id, %reason, target, "rebuilding the library from the leader")
            }
            Ok(SyncEvent::ResyncDone { library_id, last_sequence }) => {
                info!(%library_id, last_sequence, "library rebuilt")
            }
            Ok(SyncEvent::RoleChanged { library_id, role, term }) => {
                info!(%library_id, %role, term, "role changed")
            }
            Ok(SyncEvent::FollowerConnected { library_id, device_id }) => {
                info!(%library_id, %device_id, "follower connected")
            }
            Ok(SyncEvent::FollowerLost { library_id, device_id }) => {
                info!(%library_id, %device_id, "follower disconnected")
            }
            Ok(SyncEvent::ConflictRecorded { library_id, id, model_type, record_id, outcome }) => {
                info!(%library_id, %id, %model_type, %record_id, outcome = outcome.as_str(),
                    "conflict recorded (lsync conflicts list shows both values)")
            }
            Ok(_) => {}
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Polls the libraries' status and draws a bar while a follower catches up.
async fn show_progress(node: Node) {
    let mut display = ProgressDisplay::stderr();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        for id in node.libraries() {
            let catch_up = match node.status(id).await {
                Ok(s) => s.applier.as_ref().and_then(|a| {
                    let state = match a.state {
                        FollowerState::Fetching => "fetching",
                        FollowerState::Reconciling => "reconciling",
                        _ => "",
                    };
                    CatchUp::from_status(
                        state,
                        a.progress.map(|p| (p.applied, p.target, p.elapsed_ms)),
                    )
                }),
                Err(_) => None,
            };
            display.update(id, catch_up);
        }
    }
}
