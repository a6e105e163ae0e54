//! Child processes seen from the parent, and what /proc and the system tell about them.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use serde_json::Value;
use tokio::sync::mpsc;

/// A child process of the bench (this binary re-executed). Killed by pid when dropped, so an
/// error or a panic in the parent never leaves one behind.
pub struct ChildProc {
    pub name: String,
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::UnboundedReceiver<Value>,
    /// The child's `ready` line.
    pub ready: Value,
}

impl ChildProc {
    /// Starts `lsync-bench <args…>` and waits for its `ready` line.
    pub async fn spawn(name: &str, args: &[String]) -> anyhow::Result<ChildProc> {
        let exe = std::env::current_exe().context("cannot find the bench binary")?;
        let mut child = Command::new(exe)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::unbounded_channel();
        let label = name.to_owned();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                match serde_json::from_str::<Value>(&line) {
                    Ok(v) => {
                        if tx.send(v).is_err() {
                            break;
                        }
                    }
                    Err(_) => eprintln!("[{label}] {line}"),
                }
            }
        });
        let mut proc = ChildProc { name: name.to_owned(), child, stdin, lines, ready: Value::Null };
        proc.ready = proc.expect("ready", Duration::from_secs(30)).await?;
        Ok(proc)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends one command line.
    pub fn send(&mut self, v: Value) -> anyhow::Result<()> {
        writeln!(self.stdin, "{v}")
            .and_then(|()| self.stdin.flush())
            .with_context(|| format!("{} does not take commands", self.name))
    }

    /// Waits for the next line whose `ev` is `ev` (other lines are skipped; an `error` line
    /// fails).
    pub async fn expect(&mut self, ev: &str, timeout: Duration) -> anyhow::Result<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(v)) if v["ev"] == ev => return Ok(v),
                Ok(Some(v)) if v["ev"] == "error" => {
                    bail!("{}: {}", self.name, v["error"].as_str().unwrap_or_default())
                }
                Ok(Some(_)) => {}
                Ok(None) => bail!("{} exited while the bench waited for {ev:?}", self.name),
                Err(_) => bail!("{} did not report {ev:?} within {timeout:?}", self.name),
            }
        }
    }

    /// Peak resident memory so far, MiB.
    pub fn peak_rss_mb(&self) -> Option<f64> {
        peak_rss_mb(self.pid())
    }

    /// Asks the child to exit; kills it if it has not within a second.
    pub async fn quit(mut self) {
        let _ = self.send(serde_json::json!({"cmd": "quit"}));
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Drop kills it.
    }
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// `VmHWM` of a process, MiB.
pub fn peak_rss_mb(pid: u32) -> Option<f64> {
    status_kb(&format!("/proc/{pid}/status"), "VmHWM:").map(|kb| kb as f64 / 1024.0)
}

/// `VmHWM` of this process, MiB.
pub fn own_peak_rss_mb() -> Option<f64> {
    status_kb("/proc/self/status", "VmHWM:").map(|kb| kb as f64 / 1024.0)
}

/// Resets this process's `VmHWM` to its current RSS (Linux ≥ 4.0), so a later reading covers
/// only what follows.
pub fn reset_own_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn status_kb(path: &str, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(path).ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].trim().trim_end_matches("kB").trim().parse().ok()
}

/// Bytes sent + received (TCP payload: noise + yamux + frames, without TCP/IP headers) on the
/// sockets whose local port is `local` or whose peer port is `peer`, from `ss -tinH`.
/// `None` if `ss` is not available.
pub fn tcp_bytes(local: u16, peer: u16) -> Option<u64> {
    let out = Command::new("ss").args(["-tinH"]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let port = |addr: &str| addr.rsplit(':').next().and_then(|p| p.parse::<u16>().ok());
    let mut total = 0u64;
    let mut matching = false;
    for line in text.lines() {
        if !line.starts_with(char::is_whitespace) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            matching =
                cols.len() >= 5 && (port(cols[3]) == Some(local) || port(cols[4]) == Some(peer));
            continue;
        }
        if matching {
            for field in line.split_whitespace() {
                for key in ["bytes_sent:", "bytes_received:"] {
                    if let Some(v) = field.strip_prefix(key) {
                        total += v.parse::<u64>().unwrap_or(0);
                    }
                }
            }
        }
    }
    Some(total)
}

/// The TCP port of the first address of a device's `addrs`.
pub fn port_of(device: &Value) -> anyhow::Result<u16> {
    let addr = device["addrs"][0].as_str().ok_or_else(|| anyhow!("no address in {device}"))?;
    let ma: libp2p::Multiaddr = addr.parse()?;
    ma.iter()
        .find_map(|p| match p {
            libp2p::multiaddr::Protocol::Tcp(port) => Some(port),
            _ => None,
        })
        .ok_or_else(|| anyhow!("no tcp port in {addr}"))
}

/// What the machine is.
pub fn machine_info() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_owned());
    let kernel =
        std::fs::read_to_string("/proc/sys/kernel/osrelease").ok().map(|s| s.trim().to_owned());
    let mem_total_mb = status_kb("/proc/meminfo", "MemTotal:").map(|kb| kb / 1024);
    let loadavg = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "));
    let rustc = Command::new("rustc")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    serde_json::json!({
        "cpu": cpu,
        "cores": std::thread::available_parallelism().map(|n| n.get()).ok(),
        "mem_total_mb": mem_total_mb,
        "kernel": kernel,
        "rustc": rustc,
        "loadavg_at_start": loadavg,
        "profile": if cfg!(debug_assertions) { "debug" } else { "release" },
    })
}

/// Creates the parent directory of `path`.
pub fn ensure_parent(path: &Path) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    Ok(())
}
