//! One device of a chaos run: an `lsync run` process in its own data directory, set up with
//! the real `lsync` binary exactly as the README says (`lsync init`, then `lsync run`), its
//! configuration edited for fast timers and to announce its [`crate::proxy::Front`].
//!
//! Everything the nemesis does to a device goes through here: start, kill -9, SIGSTOP and
//! SIGCONT, a clean stop (SIGTERM), and copying its library database aside and back. Every
//! incarnation's stderr is appended to one log file per device in the run directory (the
//! checker greps it for panics).

use std::fs::OpenOptions;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use lsync::config::{Config, CONFIG_FILE};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The timers written into every device's `[sync]` and `[network]` sections.
#[derive(Debug, Clone, Copy)]
pub struct Timers {
    /// `sync.heartbeat_interval_ms`.
    pub heartbeat_ms: u64,
    /// `sync.leader_timeout_ms`.
    pub leader_timeout_ms: u64,
    /// `network.request_timeout_ms` and `network.connection_timeout_ms`.
    pub request_timeout_ms: u64,
}

impl Default for Timers {
    fn default() -> Self {
        Timers { heartbeat_ms: 150, leader_timeout_ms: 1_000, request_timeout_ms: 2_000 }
    }
}

/// How long a daemon may take to print its first line.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a daemon may take to stop after SIGTERM.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// A device and its daemon process (if running).
pub struct Daemon {
    /// The device's index in the run (`dN`).
    pub index: usize,
    /// Its data directory.
    pub dir: PathBuf,
    /// The file every incarnation's stderr is appended to.
    pub log: PathBuf,
    lsync: PathBuf,
    child: Option<Child>,
    paused: bool,
    /// The libp2p listen port of the running (or last) incarnation.
    pub listen_port: u16,
}

impl Daemon {
    /// Creates the device with `lsync init` in `<run>/d<index>` (its log in `<run>/d<index>.log`)
    /// and writes its configuration: listen on 127.0.0.1 (a free port), announce `announce`,
    /// fast timers.
    pub fn init(
        lsync: &Path,
        run_dir: &Path,
        index: usize,
        announce: &str,
        timers: Timers,
    ) -> anyhow::Result<Daemon> {
        let dir = run_dir.join(format!("d{index}"));
        let out = Command::new(lsync)
            .arg("init")
            .arg("--data-dir")
            .arg(&dir)
            .args(["--name", &format!("d{index}"), "--listen", "/ip4/127.0.0.1/tcp/0"])
            .args(["--control-port", "0"])
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot run {}", lsync.display()))?;
        if !out.status.success() {
            bail!("lsync init failed for d{index}: {}", String::from_utf8_lossy(&out.stderr));
        }
        let d = Daemon {
            index,
            log: run_dir.join(format!("d{index}.log")),
            dir,
            lsync: lsync.to_path_buf(),
            child: None,
            paused: false,
            listen_port: 0,
        };
        d.edit_config(|c| {
            c.announce = vec![announce.to_owned()];
            c.sync.heartbeat_interval_ms = timers.heartbeat_ms;
            c.sync.leader_timeout_ms = timers.leader_timeout_ms;
            c.sync.notify_window_ms = 20;
            c.sync.backoff_initial_ms = 20;
            c.sync.backoff_max_ms = 500;
            c.network.request_timeout_ms = timers.request_timeout_ms;
            c.network.connection_timeout_ms = timers.request_timeout_ms;
        })?;
        Ok(d)
    }

    /// Reads, changes and writes back `lsync.toml`.
    pub fn edit_config(&self, f: impl FnOnce(&mut Config)) -> anyhow::Result<()> {
        let path = self.dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let mut config: Config =
            toml::from_str(&text).with_context(|| format!("cannot parse {}", path.display()))?;
        f(&mut config);
        std::fs::write(&path, config.to_toml())
            .with_context(|| format!("cannot write {}", path.display()))
    }

    /// The daemon's pid, if it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether a process was started and not yet reaped.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(_) => {
                self.child = None;
                false
            }
            None => false,
        }
    }

    /// Whether it is stopped by SIGSTOP now.
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// Starts `lsync run` and waits for its first line; returns its libp2p listen port.
    /// `spawned` is told the pid as soon as the process exists (it may dial before its first
    /// line).
    pub fn start(&mut self, spawned: impl FnOnce(u32)) -> anyhow::Result<u16> {
        if self.is_running() {
            bail!("d{} runs already", self.index);
        }
        let offset = std::fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("cannot open {}", self.log.display()))?;
        let child = Command::new(&self.lsync)
            .arg("run")
            .arg("--data-dir")
            .arg(&self.dir)
            .env("RUST_LOG", std::env::var("LSYNC_CHAOS_LOG").unwrap_or_else(|_| "info".into()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", self.lsync.display()))?;
        spawned(child.id());
        self.child = Some(child);
        self.paused = false;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match self.first_line_port(offset) {
                Ok(Some(port)) => {
                    self.listen_port = port;
                    return Ok(port);
                }
                Ok(None) => {}
                Err(e) => {
                    self.kill9();
                    return Err(e);
                }
            }
            if !self.is_running() {
                let tail = self.log_since(offset).unwrap_or_default();
                bail!("d{} exited at start: {}", self.index, tail.trim());
            }
            if Instant::now() >= deadline {
                self.kill9();
                bail!("d{} printed no first line within {START_TIMEOUT:?}", self.index);
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_since(&self, offset: u64) -> anyhow::Result<String> {
        let mut f = std::fs::File::open(&self.log)?;
        std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(offset))?;
        let mut text = String::new();
        f.read_to_string(&mut text)?;
        Ok(text)
    }

    /// The listen port named by this incarnation's first line (`lsync running: … listening on
    /// /ip4/127.0.0.1/tcp/PORT …`), once it is printed.
    fn first_line_port(&self, offset: u64) -> anyhow::Result<Option<u16>> {
        let text = self.log_since(offset)?;
        // only whole lines: the daemon writes its first line in several pieces
        let whole = text.rfind('\n').map_or("", |end| &text[..end]);
        let Some(line) = whole.lines().find(|l| l.starts_with("lsync running:")) else {
            return Ok(None);
        };
        parse_listen_port(line)
            .map(Some)
            .ok_or_else(|| anyhow!("d{}: no listen port in {line:?}", self.index))
    }

    /// kill -9, and reaps the process.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.paused = false;
    }

    /// SIGSTOP.
    pub fn pause(&mut self) -> anyhow::Result<()> {
        let pid = self.pid().ok_or_else(|| anyhow!("d{} is not running", self.index))?;
        kill(Pid::from_raw(pid as i32), Signal::SIGSTOP)?;
        self.paused = true;
        Ok(())
    }

    /// SIGCONT.
    pub fn resume(&mut self) -> anyhow::Result<()> {
        if let Some(pid) = self.pid() {
            kill(Pid::from_raw(pid as i32), Signal::SIGCONT)?;
        }
        self.paused = false;
        Ok(())
    }

    /// SIGTERM (then SIGCONT if paused) and waits for the exit; kill -9 after
    /// [`STOP_TIMEOUT`]. Returns whether it stopped by itself with status 0.
    pub fn stop_clean(&mut self) -> bool {
        let Some(mut child) = self.child.take() else { return true };
        // SIGTERM first, then SIGCONT if it is paused: it wakes up with the signal pending.
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        if self.paused {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGCONT);
            self.paused = false;
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return status.success(),
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return false;
                }
            }
        }
    }

    /// The library databases' directory.
    pub fn libraries_dir(&self) -> PathBuf {
        self.dir.join("libraries")
    }

    /// The database of library `library` (with its `-wal` and `-shm` files beside it).
    pub fn database(&self, library: &str) -> PathBuf {
        self.libraries_dir().join(format!("{library}.db"))
    }

    /// Copies the library's database files into `to` (the daemon must be stopped).
    pub fn copy_database(&self, library: &str, to: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(to)?;
        for suffix in ["", "-wal", "-shm"] {
            let name = format!("{library}.db{suffix}");
            let src = self.libraries_dir().join(&name);
            let dst = to.join(&name);
            if src.exists() {
                std::fs::copy(&src, &dst)
                    .with_context(|| format!("cannot copy {}", src.display()))?;
            } else if dst.exists() {
                std::fs::remove_file(&dst)?;
            }
        }
        Ok(())
    }

    /// Puts a copy made by [`Daemon::copy_database`] back (the daemon must be stopped).
    pub fn restore_database(&self, library: &str, from: &Path) -> anyhow::Result<()> {
        for suffix in ["", "-wal", "-shm"] {
            let name = format!("{library}.db{suffix}");
            let dst = self.libraries_dir().join(&name);
            let src = from.join(&name);
            if dst.exists() {
                std::fs::remove_file(&dst)?;
            }
            if src.exists() {
                std::fs::copy(&src, &dst)
                    .with_context(|| format!("cannot restore {}", dst.display()))?;
            }
        }
        Ok(())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // never leave a daemon behind, even on an error path
        self.kill9();
    }
}

/// The first `/ip4/…/tcp/PORT` after "listening on " in the daemon's first line.
pub fn parse_listen_port(line: &str) -> Option<u16> {
    let rest = line.split_once("listening on ")?.1;
    let addr = rest.split_whitespace().next()?.trim_end_matches(',');
    let (_, port) = addr.rsplit_once("/tcp/")?;
    port.split('/').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_first_line_is_read_only_once_it_is_whole() {
        let dir = tempfile::tempdir().unwrap();
        let d = Daemon {
            index: 0,
            dir: dir.path().join("d0"),
            log: dir.path().join("d0.log"),
            lsync: PathBuf::from("lsync"),
            child: None,
            paused: false,
            listen_port: 0,
        };
        std::fs::write(&d.log, "earlier incarnation\nlsync running: device x (d0), peer ").unwrap();
        assert_eq!(d.first_line_port(0).unwrap(), None);
        let whole = "earlier incarnation\nlsync running: device x (d0), peer p, listening on \
                     /ip4/127.0.0.1/tcp/4242, control API at 127.0.0.1:1\n";
        std::fs::write(&d.log, whole).unwrap();
        assert_eq!(d.first_line_port(0).unwrap(), Some(4242));
        // an offset past the earlier incarnations' lines
        assert_eq!(d.first_line_port(whole.len() as u64).unwrap(), None);
    }

    #[test]
    fn reads_the_listen_port_from_the_first_line() {
        let line = "lsync running: device 5b1 (d0), peer 12D3, listening on \
                    /ip4/127.0.0.1/tcp/41234 (announced as /ip4/127.0.0.1/tcp/5000), control API \
                    at 127.0.0.1:4000 (token in /x); Ctrl-C stops";
        assert_eq!(parse_listen_port(line), Some(41234));
        let plain = "lsync running: device x (d0), peer p, listening on /ip4/127.0.0.1/tcp/7, \
                     control API at 127.0.0.1:1";
        assert_eq!(parse_listen_port(plain), Some(7));
        assert_eq!(parse_listen_port("something else"), None);
    }
}
