//! The workload: writes with unique ids to chosen devices, through the control API
//! (`POST /libraries/{id}/changes`) or the CLI (`lsync put`), and what became of each.
//!
//! Every write inserts a tag whose id is unique in the run ([`write_id`]). Its outcome is
//! *acknowledged* (the answer said `committed` or `queued`), *refused* (an error answer from the
//! daemon, or the request never reached it: the change is not committed), or *unknown* (the
//! connection broke or timed out after the request may have been sent: it may be committed).
//! A pool of writer threads runs the writes the nemesis queues, so a device that hangs
//! (SIGSTOP) holds one writer, not the run.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use lsync::control::api::WriteJson;
use serde::Serialize;

/// How long a write through the API may take (a follower's write waits up to 30 s for its
/// committed change to be applied here).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(45);
/// How long `lsync put` may take before it is killed (its own limit is 60 s).
const CLI_TIMEOUT: Duration = Duration::from_secs(70);

/// The unique id of write `n`: a tag id and the tag's name prefix.
pub fn write_id(n: u64) -> String {
    format!("cw{n:08}")
}

/// The write numbers found in `bytes` (ids made by [`write_id`] anywhere in them: a record id,
/// a MessagePack blob of an outbox entry).
pub fn ids_in(bytes: &[u8]) -> Vec<u64> {
    let mut out = Vec::new();
    let mut i = 0;
    while i + 10 <= bytes.len() {
        if &bytes[i..i + 2] == b"cw" && bytes[i + 2..i + 10].iter().all(u8::is_ascii_digit) {
            let digits = std::str::from_utf8(&bytes[i + 2..i + 10]).unwrap_or("x");
            if let Ok(n) = digits.parse() {
                out.push(n);
            }
            i += 10;
        } else {
            i += 1;
        }
    }
    out
}

/// The path a write takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    Api,
    Cli,
}

/// What became of a write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum Outcome {
    /// The answer said committed (`queued: false`) or queued in the device's outbox.
    Acknowledged { queued: bool },
    /// The change is not committed: an error answer, or the request never left.
    Refused { reason: String },
    /// It may or may not be committed.
    Unknown { reason: String },
}

/// One write and its outcome.
#[derive(Debug, Clone, Serialize)]
pub struct WriteRecord {
    /// The write's number, and its id ([`write_id`]).
    pub n: u64,
    pub id: String,
    /// The device it was sent to.
    pub device: usize,
    pub via: Via,
    pub cycle: usize,
    pub outcome: Outcome,
    /// Milliseconds since the run started, when it was sent and answered.
    pub sent_ms: u64,
    pub answered_ms: u64,
}

impl WriteRecord {
    /// Whether the write was acknowledged.
    pub fn acknowledged(&self) -> bool {
        matches!(self.outcome, Outcome::Acknowledged { .. })
    }
}

/// A write to do.
#[derive(Debug, Clone)]
pub struct Job {
    /// The write's number ([`write_id`] makes its id).
    pub n: u64,
    /// The device it is sent to.
    pub device: usize,
    pub via: Via,
    /// The nemesis cycle it belongs to.
    pub cycle: usize,
}

/// Where to reach a device's daemon.
#[derive(Debug, Clone)]
pub struct Target {
    /// The device's data directory (`control.addr`, `control.token`, `--data-dir`).
    pub data_dir: PathBuf,
    /// The library written to.
    pub library: String,
    /// The `lsync` binary, for `lsync put`.
    pub lsync: PathBuf,
}

/// The JSON body of a write.
pub fn body(id: &str, device: usize, via: Via) -> serde_json::Value {
    serde_json::json!({
        "model_type": "tag",
        "data": { "id": id, "name": format!("{id} via {via:?} on d{device}") },
    })
}

/// Classifies the answer to a write through the API: the HTTP status and body. An error
/// answer that says `"outcome": "unknown"` (docs/operations.md, section 3: the daemon cannot
/// tell whether the change was queued) is unknown, any other error answer a refusal.
pub fn classify_answer(status: u16, body: &str) -> Outcome {
    if (200..300).contains(&status) {
        return classify_write_json(body, &format!("unexpected answer {status}"));
    }
    let unknown = serde_json::from_str::<serde_json::Value>(body)
        .is_ok_and(|v| v.get("outcome").and_then(|o| o.as_str()) == Some("unknown"));
    let reason = format!("HTTP {status}: {}", body.trim());
    if unknown {
        Outcome::Unknown { reason }
    } else {
        Outcome::Refused { reason }
    }
}

/// A write's answer as JSON (`{"status": "committed" | "queued", …}`).
fn classify_write_json(body: &str, what: &str) -> Outcome {
    match serde_json::from_str::<WriteJson>(body.trim()) {
        Ok(w) if w.status == "committed" => Outcome::Acknowledged { queued: false },
        Ok(w) if w.status == "queued" => Outcome::Acknowledged { queued: true },
        _ => Outcome::Unknown { reason: format!("{what}: {}", body.trim()) },
    }
}

/// Classifies `lsync put --json` by its exit status (docs/operations.md, section 1): 0
/// committed and 3 queued (its answer on stdout), 2 refused and 5 too large (nothing was
/// done), 4 unknown; any other status (a signal, a crash) is unknown.
pub fn classify_cli(code: Option<i32>, stdout: &str, stderr: &str) -> Outcome {
    let reason = stderr.trim().to_owned();
    match code {
        Some(0) | Some(3) => classify_write_json(stdout, "unexpected output"),
        Some(2) | Some(5) => Outcome::Refused { reason },
        Some(4) => Outcome::Unknown { reason },
        // An older lsync (exit 1 for every error): read its message.
        Some(1) => classify_cli_failure(stderr),
        _ => Outcome::Unknown { reason: format!("exit status {code:?}: {reason}") },
    }
}

/// Classifies a failure of an `lsync put` that exits 1 on every error (before the exit
/// statuses of docs/operations.md section 1) by its stderr.
pub fn classify_cli_failure(stderr: &str) -> Outcome {
    let reason = stderr.trim().to_owned();
    let delivered_and_answered = reason.contains("(HTTP ") || reason.contains("refused the token");
    let never_sent = reason.contains("no lsync daemon is running")
        || reason.contains("cannot read the control token")
        || reason.contains("Connection refused");
    if delivered_and_answered || never_sent {
        Outcome::Refused { reason }
    } else {
        Outcome::Unknown { reason }
    }
}

/// Sends one write; never panics.
pub fn execute(target: &Target, job: &Job) -> Outcome {
    let id = write_id(job.n);
    match job.via {
        Via::Api => write_api(target, &id, job.device),
        Via::Cli => write_cli(target, &id, job.device),
    }
}

fn write_api(target: &Target, id: &str, device: usize) -> Outcome {
    let read = |name: &str| std::fs::read_to_string(target.data_dir.join(name));
    let (addr, token) = match (read("control.addr"), read("control.token")) {
        (Ok(a), Ok(t)) => (a.trim().to_owned(), t.trim().to_owned()),
        (Err(e), _) | (_, Err(e)) => {
            return Outcome::Refused { reason: format!("no control files: {e}") }
        }
    };
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(3)))
        .timeout_global(Some(WRITE_TIMEOUT))
        .build()
        .new_agent();
    let url = format!("http://{addr}/libraries/{}/changes", target.library);
    let resp = agent.post(&url).header("Authorization", format!("Bearer {token}")).send_json(body(
        id,
        device,
        Via::Api,
    ));
    match resp {
        Ok(mut r) => {
            let status = r.status().as_u16();
            match r.body_mut().read_to_string() {
                Ok(text) => classify_answer(status, &text),
                Err(e) => Outcome::Unknown { reason: format!("reading the answer {status}: {e}") },
            }
        }
        Err(e) => classify_transport_error(&e),
    }
}

/// A request that could not be connected never reached the daemon; anything else may have.
fn classify_transport_error(e: &ureq::Error) -> Outcome {
    let reason = e.to_string();
    let never_sent = match e {
        ureq::Error::Io(io) => io.kind() == std::io::ErrorKind::ConnectionRefused,
        ureq::Error::ConnectionFailed | ureq::Error::HostNotFound => true,
        _ => false,
    } || reason.contains("Connection refused");
    if never_sent {
        Outcome::Refused { reason }
    } else {
        Outcome::Unknown { reason }
    }
}

fn write_cli(target: &Target, id: &str, device: usize) -> Outcome {
    let record = body(id, device, Via::Cli)["data"].to_string();
    let child = Command::new(&target.lsync)
        .arg("put")
        .arg("--data-dir")
        .arg(&target.data_dir)
        .args(["--library", &target.library, "--json", "tag", &record])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return Outcome::Refused { reason: format!("cannot run lsync put: {e}") },
    };
    let deadline = Instant::now() + CLI_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Outcome::Unknown { reason: "lsync put timed out".into() };
            }
        }
    }
    let out = match child.wait_with_output() {
        Ok(o) => o,
        Err(e) => return Outcome::Unknown { reason: format!("lsync put: {e}") },
    };
    classify_cli(
        out.status.code(),
        &String::from_utf8_lossy(&out.stdout),
        &String::from_utf8_lossy(&out.stderr),
    )
}

/// Writer threads running queued jobs; the records of every finished job.
pub struct Writers {
    tx: Option<mpsc::Sender<Job>>,
    records: Arc<Mutex<Vec<WriteRecord>>>,
    pending: Arc<Mutex<u64>>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Writers {
    /// Starts `threads` writers; `targets[d]` says how to reach device `d`.
    pub fn start(threads: usize, targets: Vec<Target>, epoch: Instant) -> Writers {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let records = Arc::new(Mutex::new(Vec::new()));
        let pending = Arc::new(Mutex::new(0u64));
        let targets = Arc::new(targets);
        let threads = (0..threads)
            .map(|i| {
                let (rx, records, pending, targets) =
                    (rx.clone(), records.clone(), pending.clone(), targets.clone());
                thread::Builder::new()
                    .name(format!("writer-{i}"))
                    .spawn(move || loop {
                        let job = match rx.lock().unwrap_or_else(|e| e.into_inner()).recv() {
                            Ok(j) => j,
                            Err(_) => return,
                        };
                        let sent_ms = epoch.elapsed().as_millis() as u64;
                        let outcome = match targets.get(job.device) {
                            Some(t) => execute(t, &job),
                            None => Outcome::Refused { reason: "no such device".into() },
                        };
                        let record = WriteRecord {
                            n: job.n,
                            id: write_id(job.n),
                            device: job.device,
                            via: job.via,
                            cycle: job.cycle,
                            outcome,
                            sent_ms,
                            answered_ms: epoch.elapsed().as_millis() as u64,
                        };
                        records.lock().unwrap_or_else(|e| e.into_inner()).push(record);
                        *pending.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
                    })
                    .expect("spawning a writer thread")
            })
            .collect();
        Writers { tx: Some(tx), records, pending, threads }
    }

    /// Queues a write.
    pub fn submit(&self, job: Job) {
        *self.pending.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        if let Some(tx) = &self.tx {
            if tx.send(job).is_err() {
                *self.pending.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
            }
        }
    }

    /// Writes queued or running.
    pub fn pending(&self) -> u64 {
        *self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until no write is queued or running, at most `timeout`; whether they all ended.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.pending() > 0 {
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(10));
        }
        true
    }

    /// Stops the writers once the queued writes are done; returns every record.
    pub fn finish(mut self) -> Vec<WriteRecord> {
        self.tx = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let mut records =
            std::mem::take(&mut *self.records.lock().unwrap_or_else(|e| e.into_inner()));
        records.sort_by_key(|r| r.n);
        records
    }
}

/// The path of the `lsync` binary next to the running executable.
pub fn lsync_next_to_me() -> Option<PathBuf> {
    let me = std::env::current_exe().ok()?;
    let dir = me.parent()?;
    let candidate = dir.join("lsync");
    if candidate.exists() {
        return Some(candidate);
    }
    // a test binary lives in target/<profile>/deps
    let up = dir.parent().map(|p: &Path| p.join("lsync"))?;
    up.exists().then_some(up)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_found_in_any_bytes() {
        let blob = [b"\x92\xa2id\xaacw00000042\xa4name".as_slice(), b"xxcw00000007"].concat();
        assert_eq!(ids_in(&blob), vec![42, 7]);
        assert_eq!(ids_in(b"cw1234567"), Vec::<u64>::new());
        assert_eq!(write_id(42), "cw00000042");
    }

    #[test]
    fn an_answer_is_acknowledged_only_when_it_says_committed_or_queued() {
        let c = r#"{"status":"committed","first_sequence":3,"last_sequence":3,"proposal_id":null}"#;
        assert_eq!(classify_answer(200, c), Outcome::Acknowledged { queued: false });
        let q = r#"{"status":"queued","first_sequence":null,"last_sequence":null,"proposal_id":"2f1c3d3e-0000-4000-8000-000000000000"}"#;
        assert_eq!(classify_answer(200, q), Outcome::Acknowledged { queued: true });
        assert!(matches!(classify_answer(200, "garbage"), Outcome::Unknown { .. }));
        assert!(matches!(
            classify_answer(503, r#"{"error":"handing leadership over"}"#),
            Outcome::Refused { .. }
        ));
        assert!(matches!(
            classify_answer(503, r#"{"error":"the service stopped","outcome":"unknown"}"#),
            Outcome::Unknown { .. }
        ));
    }

    #[test]
    fn a_cli_write_is_classified_by_its_exit_status() {
        let q = r#"{"status":"queued","first_sequence":null,"last_sequence":null,"proposal_id":"2f1c3d3e-0000-4000-8000-000000000000"}"#;
        assert_eq!(classify_cli(Some(3), q, ""), Outcome::Acknowledged { queued: true });
        let c = r#"{"status":"committed","first_sequence":3,"last_sequence":3,"proposal_id":null}"#;
        assert_eq!(classify_cli(Some(0), c, ""), Outcome::Acknowledged { queued: false });
        assert!(matches!(classify_cli(Some(2), "", "error: x"), Outcome::Refused { .. }));
        assert!(matches!(classify_cli(Some(5), "", "error: too large"), Outcome::Refused { .. }));
        assert!(matches!(classify_cli(Some(4), "", "error: lost"), Outcome::Unknown { .. }));
        assert!(matches!(classify_cli(None, "", ""), Outcome::Unknown { .. }));
        assert!(matches!(classify_cli(Some(0), "garbage", ""), Outcome::Unknown { .. }));
    }

    #[test]
    fn a_cli_failure_is_refused_only_when_answered_or_never_sent() {
        assert!(matches!(
            classify_cli_failure("error: database is locked (HTTP 503)"),
            Outcome::Refused { .. }
        ));
        assert!(matches!(
            classify_cli_failure(
                "error: cannot reach the lsync daemon at 127.0.0.1:1 (io: Connection refused (os error 111))"
            ),
            Outcome::Refused { .. }
        ));
        assert!(matches!(
            classify_cli_failure(
                "error: cannot reach the lsync daemon at 127.0.0.1:1 (io: Connection reset by peer)"
            ),
            Outcome::Unknown { .. }
        ));
        assert!(matches!(
            classify_cli_failure("error: cannot read the daemon's response (200)"),
            Outcome::Unknown { .. }
        ));
    }
}
