//! End-to-end tests of the `lsync` program: the built binary, run as an operator would — `lsync
//! init`, `lsync run` daemons on 127.0.0.1 (port 0 everywhere, each in its own temp dir), the
//! client commands and the control API. Every daemon is a [`Daemon`] whose `Drop` kills it by
//! its pid, so a failing test leaves no process behind.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use uuid::Uuid;

const LSYNC: &str = env!("CARGO_BIN_EXE_lsync");
/// Generous: the e2e tests share a loaded machine with the rest of the suite.
const DEADLINE: Duration = Duration::from_secs(45);

/// Runs `lsync --data-dir DIR ARGS…` to completion.
fn lsync(dir: &Path, args: &[&str]) -> Output {
    Command::new(LSYNC)
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .env("RUST_LOG", "warn")
        .env_remove("LSYNC_DATA_DIR")
        .stdin(Stdio::null())
        .output()
        .expect("run lsync")
}

/// Runs a command that must succeed; returns its stdout.
fn ok(dir: &Path, args: &[&str]) -> String {
    let out = lsync(dir, args);
    assert!(
        out.status.success(),
        "lsync {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 stdout")
}

/// Runs a command that must fail with exactly one line on stderr containing `expect`.
fn fails_with_one_line(dir: &Path, args: &[&str], expect: &str) -> String {
    let out = lsync(dir, args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "lsync {args:?} should fail; stderr: {stderr}");
    let lines: Vec<_> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "lsync {args:?} should print one line, got: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    assert!(lines[0].contains(expect), "lsync {args:?}: {stderr:?} lacks {expect:?}");
    stderr
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A running `lsync run`; killed by its pid when dropped.
struct Daemon {
    child: Child,
    dir: PathBuf,
}

impl Daemon {
    /// `lsync init` (loopback, port 0) in a new directory under `root`, then `lsync run`.
    fn init_and_start(root: &Path, name: &str) -> Daemon {
        let dir = root.join(name);
        ok(&dir, &["init", "--name", name, "--listen", "/ip4/127.0.0.1/tcp/0"]);
        Daemon::start(&dir)
    }

    /// `lsync run` on an initialized directory; waits until its control API answers.
    fn start(dir: &Path) -> Daemon {
        let log = std::fs::File::create(dir.join("daemon.log")).expect("log file");
        let child = Command::new(LSYNC)
            .arg("--data-dir")
            .arg(dir)
            .arg("run")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn lsync run");
        let mut d = Daemon { child, dir: dir.to_path_buf() };
        wait_until("the daemon serves its control API", || {
            if let Some(status) = d.child.try_wait().expect("try_wait") {
                panic!("daemon exited early ({status}): {}", d.log());
            }
            dir.join("control.addr").exists() && lsync(dir, &["status", "--json"]).status.success()
        });
        d
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    fn ok(&self, args: &[&str]) -> String {
        ok(&self.dir, args)
    }

    fn status(&self) -> Value {
        json(&self.ok(&["status", "--json"]))
    }

    /// `--device-id X --peer-id Y --addr Z…` of this device, from its status.
    fn device(&self) -> (String, String, Vec<String>) {
        let s = self.status();
        let d = &s["device"];
        let addrs =
            d["addresses"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_owned());
        (
            d["device_id"].as_str().unwrap().into(),
            d["peer_id"].as_str().unwrap().into(),
            addrs.collect(),
        )
    }

    fn library(&self, library: &str) -> Value {
        let s = self.status();
        s["libraries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["library_id"] == library)
            .cloned()
            .unwrap_or(Value::Null)
    }

    fn addr(&self) -> String {
        std::fs::read_to_string(self.dir.join("control.addr")).unwrap().trim().to_owned()
    }

    fn token(&self) -> String {
        std::fs::read_to_string(self.dir.join("control.token")).unwrap().trim().to_owned()
    }

    /// An HTTP call to the control API: `(status, body)`.
    fn http(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, String) {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .new_agent();
        let url = format!("http://{}{path}", self.addr());
        let auth = token.map(|t| format!("Bearer {t}"));
        let resp = match method {
            "GET" => {
                let mut r = agent.get(&url);
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                r.call()
            }
            _ => {
                let mut r = agent.post(&url);
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                r.send_json(body.unwrap_or(Value::Null))
            }
        };
        let mut resp = resp.expect("http call");
        let status = resp.status().as_u16();
        (status, resp.body_mut().read_to_string().unwrap())
    }

    /// Sends SIGTERM and waits for a clean exit.
    fn terminate(mut self) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().expect("run kill");
        assert!(sent.success());
        let start = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                break s;
            }
            assert!(start.elapsed() < DEADLINE, "daemon ignored SIGTERM: {}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(status.success(), "daemon exited with {status}: {}", self.log());
        assert!(!self.dir.join("control.addr").exists(), "control.addr left behind");
        assert!(self.log().contains("lsync: stopped"), "{}", self.log());
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // kills this child only, by its pid; a no-op after a clean exit
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn last_sequence(d: &Daemon, library: &str) -> u64 {
    d.library(library)["last_sequence"].as_u64().unwrap_or(0)
}

/// Leader + two followers set up with the commands the README gives, changes committed with
/// `lsync put`, `lsync tag add` and `POST /libraries/{id}/changes`; the followers converge;
/// one is stopped with SIGTERM, misses changes, restarts and catches up.
#[test]
fn three_daemons_replicate_through_the_cli_and_the_api() {
    let root = tempfile::tempdir().unwrap();
    let leader = Daemon::init_and_start(root.path(), "leader");
    let mut followers: Vec<Daemon> =
        ["f1", "f2"].iter().map(|n| Daemon::init_and_start(root.path(), n)).collect();

    let created = json(&leader.ok(&["library", "create", "--json"]));
    let lib = created["library_id"].as_str().unwrap().to_owned();
    let (lid, lpeer, laddrs) = leader.device();
    for f in &followers {
        let (id, peer, addrs) = f.device();
        let mut args = vec!["library", "add-device", "--library", &lib, "--device-id", &id];
        args.extend(["--peer-id", &peer]);
        for a in &addrs {
            args.extend(["--addr", a]);
        }
        leader.ok(&args);
        let mut join = vec!["library", "join", "--library", &lib, "--leader-device-id", &lid];
        join.extend(["--leader-peer-id", &lpeer]);
        for a in &laddrs {
            join.extend(["--leader-addr", a]);
        }
        f.ok(&join);
    }

    let out = leader.ok(&["put", "--library", &lib, "tag", r#"{"id":"t1","name":"holiday"}"#]);
    assert!(out.contains("committed sequence 1"), "{out}");
    leader.ok(&["tag", "add", "--id", "t2", "--color", "#ff8800", "work"]); // the only library
    leader.ok(&["put", "--change", "update", "tag", r#"{"id":"t1","name":"holidays"}"#]);
    leader.ok(&["put", "location", r#"{"id":"l1","name":"photos","path":"/media/photos"}"#]);
    let token = leader.token();
    for i in 0..100 {
        let body = serde_json::json!({"model_type": "tag", "data": {"id": format!("bulk-{i}"), "name": format!("n{i}")}});
        let (status, resp) =
            leader.http("POST", &format!("/libraries/{lib}/changes"), Some(&token), Some(body));
        assert_eq!(status, 200, "{resp}");
    }
    let total = 104;
    assert_eq!(last_sequence(&leader, &lib), total);

    for f in &followers {
        wait_until("the followers applied every entry", || {
            let l = f.library(&lib);
            l["last_sequence"] == total && l["applier"]["state"] == "caught_up"
        });
        let l = f.library(&lib);
        assert_eq!(l["role"], "Follower");
        assert_eq!(l["applier"]["leader_last_sequence"], total);
        assert!(l["applier"].get("progress").is_some(), "{l}");
        assert_eq!(l["outbox_size"], 0);
    }
    wait_until("the leader saw both acknowledgements", || {
        let l = leader.library(&lib);
        let fs = l["followers"].as_array().cloned().unwrap_or_default();
        fs.len() == 2 && fs.iter().all(|f| f["acked_sequence"] == total && f["lag"] == 0)
    });

    // the follower's log is the leader's, entry by entry
    let page = |d: &Daemon| json(&d.ok(&["log", "--json", "--limit", "1000"]))["entries"].clone();
    assert_eq!(page(&followers[0]), page(&leader));
    let text = followers[1].ok(&["log", "--limit", "3"]);
    assert!(text.contains("holidays") && text.contains("more"), "{text}");

    // metrics on both sides
    let (status, metrics) = leader.http("GET", "/metrics", Some(&token), None);
    assert_eq!(status, 200);
    assert!(metrics.contains(&format!("lsync_entries_committed_total {total}")), "{metrics}");
    assert!(metrics.contains(&format!("lsync_library_last_sequence{{library=\"{lib}\"}} {total}")));
    let f0 = &followers[0];
    let (_, m) = f0.http("GET", "/metrics", Some(&f0.token()), None);
    assert!(m.contains(&format!("lsync_entries_applied_total {total}")), "{m}");
    assert!(m.contains("# TYPE lsync_commit_to_apply_seconds histogram"), "{m}");

    // a follower stops cleanly, misses changes, comes back and catches up
    let stopped = followers.remove(1);
    let dir = stopped.dir.clone();
    stopped.terminate();
    for i in 0..20 {
        leader.ok(&["put", "tag", &format!(r#"{{"id":"late-{i}","name":"late"}}"#)]);
    }
    let total = total + 20;
    let back = Daemon::start(&dir);
    wait_until("the restarted follower caught up", || last_sequence(&back, &lib) == total);
    wait_until("the other follower has them too", || last_sequence(&followers[0], &lib) == total);
    leader.terminate();
}

/// Every control API request needs the daemon's token: none or a wrong one is 401, through
/// HTTP and through the CLI. Bad requests are 400 with a message; an unknown library 404.
#[test]
fn control_api_requires_the_token_and_checks_input() {
    let root = tempfile::tempdir().unwrap();
    let d = Daemon::init_and_start(root.path(), "solo");
    let token = d.token();
    assert_eq!(token.len(), 64);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(d.dir.join("control.token")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert!(d.addr().starts_with("127.0.0.1:"), "{}", d.addr());
    for path in ["/status", "/metrics", "/libraries/x/log", "/nope"] {
        assert_eq!(d.http("GET", path, None, None).0, 401, "{path} without a token");
        assert_eq!(d.http("GET", path, Some("wrong"), None).0, 401, "{path} with a wrong token");
    }
    assert_eq!(d.http("POST", "/libraries", None, None).0, 401);
    assert_eq!(d.http("GET", "/status", Some(&token), None).0, 200);
    assert_eq!(d.http("GET", "/nope", Some(&token), None).0, 404);

    let created = json(&d.ok(&["library", "create", "--json"]));
    let lib = created["library_id"].as_str().unwrap().to_owned();
    let changes = format!("/libraries/{lib}/changes");
    let post = |body: Value| d.http("POST", &changes, Some(&token), Some(body));
    let (s, body) = post(serde_json::json!({"model_type": "album", "data": {"id": "a"}}));
    assert_eq!(s, 400);
    assert!(json(&body)["error"].as_str().unwrap().contains("unknown model type \"album\""));
    assert_eq!(post(serde_json::json!({"model_type": "tag", "data": {"id": 5}})).0, 400);
    assert_eq!(
        post(serde_json::json!({"model_type": "tag", "data": {"id": "t", "name": "n"}})).0,
        200
    );
    // writes are upserts on every device: inserting it again updates it
    let (s, body) =
        post(serde_json::json!({"model_type": "tag", "data": {"id": "t", "name": "n2"}}));
    assert_eq!(s, 200, "{body}");
    assert_eq!(json(&body)["status"], "committed");
    let log = format!("/libraries/{lib}/log");
    for bad in ["?limit=0", "?limit=x", "?since=-1", "?what=1"] {
        assert_eq!(d.http("GET", &format!("{log}{bad}"), Some(&token), None).0, 400, "{bad}");
    }
    let (s, body) = d.http("GET", &format!("{log}?since=0&limit=1000000"), Some(&token), None);
    assert_eq!(s, 200);
    // the insert and the update that the second insert became
    assert_eq!(json(&body)["entries"].as_array().unwrap().len(), 2);

    let unknown = Uuid::new_v4().to_string();
    let (s, _) = d.http("GET", &format!("/libraries/{unknown}/log"), Some(&token), None);
    assert_eq!(s, 404);
    fails_with_one_line(&d.dir, &["log", "--library", &unknown], "is not open on this device");
    fails_with_one_line(&d.dir, &["put", "album", r#"{"id":"a"}"#], "unknown model type");

    // the CLI with a wrong token on disk
    std::fs::write(d.dir.join("control.token"), "0000").unwrap();
    fails_with_one_line(&d.dir, &["status"], "refused the token");
    std::fs::write(d.dir.join("control.token"), &token).unwrap();
    d.ok(&["status"]);
    // a second daemon on the same directory is refused
    fails_with_one_line(&d.dir, &["run"], "already runs");
}

/// Bad configuration: one line on stderr saying what is wrong and what to do, non-zero exit.
#[test]
fn bad_configuration_is_one_clear_line() {
    let root = tempfile::tempdir().unwrap();
    let none = root.path().join("missing");
    fails_with_one_line(&none, &["run"], "run `lsync init --data-dir");
    fails_with_one_line(&none, &["status"], "does not exist");
    fails_with_one_line(&none, &["init", "--listen", "localhost:7700"], "bad listen address");

    let dir = root.path().join("dev");
    ok(&dir, &["init", "--listen", "/ip4/127.0.0.1/tcp/0"]);
    fails_with_one_line(&dir, &["status"], "no lsync daemon is running");
    // a daemon that was killed left its address behind
    std::fs::write(dir.join("control.addr"), "127.0.0.1:1\n").unwrap();
    std::fs::write(dir.join("control.token"), "x\n").unwrap();
    fails_with_one_line(&dir, &["status"], "cannot reach the lsync daemon");
    std::fs::remove_file(dir.join("control.addr")).unwrap();

    let config = dir.join("lsync.toml");
    let good = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, good.replace("/ip4/127.0.0.1/tcp/0", "tcp://nope")).unwrap();
    fails_with_one_line(&dir, &["run"], "bad listen address \"tcp://nope\"");
    std::fs::write(&config, format!("{good}\n[extra]\nkey = 1\n")).unwrap();
    fails_with_one_line(&dir, &["run"], "unknown field `extra`");
    std::fs::write(&config, "listen = [").unwrap();
    fails_with_one_line(&dir, &["run"], "line 1");

    // the control port is taken
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    std::fs::write(&config, good.replace("port = 0", &format!("port = {port}"))).unwrap();
    fails_with_one_line(&dir, &["run"], "cannot serve the control API");
    std::fs::write(&config, good).unwrap();
    fails_with_one_line(&dir, &["run", "--config", "/nonexistent/x.toml"], "not found");
}

/// `lsync demo --json` converges and says so.
#[test]
fn demo_json_reports_convergence() {
    let out = Command::new(LSYNC)
        .args(["demo", "--json", "--changes", "500", "--followers", "2"])
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .output()
        .expect("run lsync demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed ({}): {stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = json(&stdout);
    assert_eq!(summary["converged"], true, "{summary}");
    assert_eq!(summary["devices"], 3, "{summary}");
}
