//! End-to-end tests of the `lsync` program: the built binary, run as an operator would — `lsync
//! init`, `lsync run` daemons on 127.0.0.1 (port 0 everywhere, each in its own temp dir), the
//! client commands and the control API. Every daemon is a [`Daemon`] whose `Drop` kills it by
//! its pid, so a failing test leaves no process behind. Sequences are never assumed: a
//! library's log starts with a configuration entry, each leadership's first entry is one, and
//! the leader promotes learners with more; tests read positions from status instead.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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

/// Runs a command that must fail (exit status 2) with exactly one line on stderr containing
/// `expect`.
fn fails_with_one_line(dir: &Path, args: &[&str], expect: &str) -> String {
    let out = lsync(dir, args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "lsync {args:?} should fail; stderr: {stderr}");
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

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// A running `lsync run`; killed by its pid when dropped.
struct Daemon {
    child: Child,
    dir: PathBuf,
}

impl Daemon {
    /// `lsync init` (loopback, port 0) in a new directory under `root`, then `lsync run`. The
    /// sync timers are shortened in `lsync.toml` (a heartbeat every 200 ms, an election after
    /// 1.5 s of silence) so that a failover takes seconds, not minutes.
    fn init_and_start(root: &Path, name: &str) -> Daemon {
        let dir = root.join(name);
        ok(&dir, &["init", "--name", name, "--listen", "/ip4/127.0.0.1/tcp/0"]);
        let config = dir.join("lsync.toml");
        let text = std::fs::read_to_string(&config).unwrap();
        let fast = text
            .replace("heartbeat_interval_ms = 30000", "heartbeat_interval_ms = 200")
            .replace("leader_timeout_ms = 60000", "leader_timeout_ms = 1500")
            .replace("backoff_max_ms = 30000", "backoff_max_ms = 1000");
        assert_ne!(fast, text, "lsync init wrote the [sync] defaults");
        std::fs::write(&config, fast).unwrap();
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

    /// `lsync ARGS…` on this device: (exit code, stdout, stderr).
    fn run(&self, args: &[&str]) -> (Option<i32>, String, String) {
        let out = lsync(&self.dir, args);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn device_id(&self) -> String {
        self.status()["device"]["device_id"].as_str().unwrap().to_owned()
    }

    /// `lsync library members --json`.
    fn members(&self) -> Value {
        json(&self.ok(&["library", "members", "--json"]))
    }

    /// `kill -9 PID`: the daemon dies at once, leaving its files behind.
    fn kill9(mut self) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-9", &pid]).status().expect("run kill");
        assert!(sent.success());
        let status = self.child.wait().expect("wait");
        assert!(!status.success(), "{status}");
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

    /// The id of the only library, from `lsync library list --json`.
    fn library_list_one(&self) -> String {
        let list = json(&self.ok(&["library", "list", "--json"]));
        let [one] = list.as_array().unwrap().as_slice() else { panic!("one library: {list}") };
        one["library_id"].as_str().unwrap().to_owned()
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
            "DELETE" => {
                let mut r = agent.delete(&url);
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                r.call()
            }
            "PUT" => {
                let mut r = agent.put(&url);
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                r.send_json(body.unwrap_or(Value::Null))
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

/// The voters of `members --json`.
fn voters(members: &Value) -> Vec<String> {
    let all = members["members"].as_array().cloned().unwrap_or_default();
    let mut v: Vec<String> = all
        .iter()
        .filter(|m| m["role"] == "voter")
        .map(|m| m["device_id"].as_str().unwrap().to_owned())
        .collect();
    v.sort();
    v
}

/// The member ids of `members --json`.
fn member_ids(members: &Value) -> Vec<String> {
    let all = members["members"].as_array().cloned().unwrap_or_default();
    let mut v: Vec<String> =
        all.iter().map(|m| m["device_id"].as_str().unwrap().to_owned()).collect();
    v.sort();
    v
}

/// Waits until every daemon of `ds` sees the same committed configuration of `members`
/// members, `voters` of them voters.
fn wait_for_configuration(ds: &[&Daemon], members: usize, voters_n: usize) {
    wait_until(
        &format!("{members} members, {voters_n} voters, committed, on every device"),
        || {
            let views: Vec<Value> = ds.iter().map(|d| d.members()).collect();
            views.iter().all(|m| {
                m["pending"] == false
                    && member_ids(m).len() == members
                    && voters(m).len() == voters_n
                    && m["config_sequence"] == views[0]["config_sequence"]
            })
        },
    );
}

/// Waits until the running daemons `ds` all hold the same log (same last sequence, nothing
/// waiting in an outbox); returns that last sequence.
fn wait_for_convergence(ds: &[&Daemon], library: &str) -> u64 {
    let mut last = 0;
    wait_until("every device holds the same log", || {
        let ls: Vec<Value> = ds.iter().map(|d| d.library(library)).collect();
        last = ls[0]["last_sequence"].as_u64().unwrap_or(0);
        ls.iter().all(|l| l["last_sequence"] == last && l["outbox_size"] == 0)
    });
    last
}

/// Leader + two followers set up with the scripted commands (`library add-device` on the
/// leader, `library join --library … --leader-…` on the new device; both go through the log),
/// changes committed with `lsync put`, `lsync tag add` and `POST /libraries/{id}/changes`; the
/// followers converge; one is stopped with SIGTERM, misses changes, restarts and catches up.
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
        let out = leader.ok(&args);
        assert!(out.contains("committed") && out.contains("as a learner"), "{out}");
        let mut join = vec!["library", "join", "--library", &lib, "--leader-device-id", &lid];
        join.extend(["--leader-peer-id", &lpeer]);
        for a in &laddrs {
            join.extend(["--leader-addr", a]);
        }
        f.ok(&join);
    }
    // The joiners start as learners; the leader promotes both (three voters).
    wait_for_configuration(&[&leader, &followers[0], &followers[1]], 3, 3);
    let base = wait_for_convergence(&[&leader, &followers[0], &followers[1]], &lib);
    assert!(base >= 4, "a configuration entry per change at least: {base}");

    let out = leader.ok(&["put", "--library", &lib, "tag", r#"{"id":"t1","name":"holiday"}"#]);
    assert!(out.contains(&format!("committed sequence {}", base + 1)), "{out}");
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
    let total = base + 104;
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
    let since = base.to_string();
    let text = followers[1].ok(&["log", "--since", &since, "--limit", "3"]);
    assert!(text.contains("holidays") && text.contains("more"), "{text}");

    // metrics on both sides
    let (status, metrics) = leader.http("GET", "/metrics", Some(&token), None);
    assert_eq!(status, 200);
    assert!(metrics.contains("lsync_entries_committed_total 104"), "{metrics}");
    assert!(metrics.contains(&format!("lsync_library_last_sequence{{library=\"{lib}\"}} {total}")));
    for (name, value) in [
        ("lsync_commit_sequence", total),
        ("lsync_voters", 3),
        ("lsync_learners", 0),
        ("lsync_membership_pending", 0),
    ] {
        assert!(
            metrics.contains(&format!("{name}{{library=\"{lib}\"}} {value}")),
            "{name}: {metrics}"
        );
    }
    let f0 = &followers[0];
    let (_, m) = f0.http("GET", "/metrics", Some(&f0.token()), None);
    assert!(m.contains(&format!("lsync_entries_applied_total {total}")), "{m}");
    assert!(m.contains("# TYPE lsync_commit_to_apply_seconds histogram"), "{m}");
    assert!(m.contains("lsync_network_rejected_requests_total{reason=\"removed\"} 0"), "{m}");

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
    // the insert and the update that the second insert became (after configuration entries)
    let entries = json(&body)["entries"].as_array().cloned().unwrap();
    let tags: Vec<_> = entries.iter().filter(|e| e["model_type"] == "tag").collect();
    assert_eq!(tags.len(), 2, "{entries:?}");
    assert!(entries.iter().any(|e| e["change_type"] == "config"), "{entries:?}");

    // membership endpoints check their input too
    let (s, body) = d.http("GET", &format!("/libraries/{lib}/members"), Some(&token), None);
    assert_eq!(s, 200, "{body}");
    let members = json(&body);
    assert_eq!(voters(&members), vec![d.device_id()]);
    assert_eq!(members["member"], true);
    let invitations = format!("/libraries/{lib}/invitations");
    let (s, body) =
        d.http("POST", &invitations, Some(&token), Some(serde_json::json!({"expires_ms": 0})));
    assert_eq!(s, 400, "{body}");
    let (s, body) = d.http("POST", &invitations, Some(&token), Some(serde_json::json!({})));
    assert_eq!(s, 200, "{body}");
    assert!(json(&body)["token"].as_str().unwrap().starts_with("lsync-invite-1."), "{body}");
    let (s, body) =
        d.http("POST", "/join", Some(&token), Some(serde_json::json!({"token": "nope"})));
    assert_eq!(s, 400, "{body}");
    assert!(body.contains("not an invitation token"), "{body}");
    let stranger = Uuid::new_v4();
    let (s, body) =
        d.http("DELETE", &format!("/libraries/{lib}/devices/{stranger}"), Some(&token), None);
    assert_eq!(s, 409, "{body}");
    assert!(body.contains("not a member"), "{body}");
    let preference = format!("/libraries/{lib}/devices/{stranger}/preference");
    let (s, body) =
        d.http("PUT", &preference, Some(&token), Some(serde_json::json!({"preference": "boss"})));
    assert_eq!(s, 400, "{body}");
    assert!(body.contains("auto, learner or voter"), "{body}");
    let force = format!("/libraries/{lib}/force-reconfigure");
    let (s, body) =
        d.http("POST", &force, Some(&token), Some(serde_json::json!({"voters": [d.device_id()]})));
    assert_eq!(s, 400, "{body}");
    assert!(body.contains("unsafe"), "{body}");
    let (code, _, stderr) = d.run(&["library", "invite", "--expires", "30d"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("bad duration \"30d\": between 1ms and 7d"), "{stderr}");
    fails_with_one_line(&d.dir, &["library", "join", "lsync-invite-1.AAAA"], "damaged");
    fails_with_one_line(
        &d.dir,
        &["library", "remove-device", &stranger.to_string()],
        "is not a member of library",
    );

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
    // checked against the demo's own list of writes, not only device against device
    assert_eq!(summary["all_writes_once"], true, "{summary}");
    assert_eq!(summary["writes"], 500, "{summary}");
}

/// The plain demo tells its story on stdout and nothing else: the nodes' logs (the expected
/// warnings of a stopped leader among them) go to demo.log in its directory, whose path it
/// prints; devices are named device-1..N with their role beside them; a restarted follower's
/// catch-up is followed to its end; the last line but one says the check passed.
#[test]
fn demo_logs_to_its_directory_and_tells_its_story() {
    let root = tempfile::tempdir().unwrap();
    let keep = root.path().join("demo");
    let out = Command::new(LSYNC)
        .args(["demo", "--changes", "1500", "--followers", "2", "--keep"])
        .arg(&keep)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .output()
        .expect("run lsync demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed ({}): {stdout}\n{stderr}", out.status);
    assert_eq!(stderr.trim(), "", "the demo's logs went to the terminal");
    let log = keep.join("demo.log");
    let logged = std::fs::read_to_string(&log).expect("demo.log");
    assert!(logged.contains("INFO"), "demo.log holds the nodes' logs: {logged}");
    let log_path = log.display().to_string();
    assert!(stdout.lines().next().is_some_and(|l| l.contains(&log_path)), "{stdout}");
    assert!(stdout.lines().last().is_some_and(|l| l.contains(&log_path)), "{stdout}");
    for name in ["device-1", "device-2", "device-3"] {
        assert!(stdout.contains(name), "{name} missing: {stdout}");
    }
    assert!(stdout.contains("-- device-2 caught up"), "{stdout}");
    assert!(stdout.contains("was elected leader"), "{stdout}");
    assert!(!stdout.contains("WARN"), "{stdout}");
    let verdict = stdout.lines().rev().nth(1).unwrap_or_default();
    assert!(verdict.starts_with("OK: the 3 devices hold identical tables and logs"), "{verdict}");
    assert!(
        verdict
            .contains("every one of the 1500 changes the demo wrote is in every log exactly once"),
        "{verdict}"
    );
}

/// Runs a write command on `d` that must be committed (exit status 0) or queued (exit status 3,
/// with "queued" on stdout); returns its stdout.
fn written(d: &Daemon, args: &[&str]) -> String {
    let (code, out, err) = d.run(args);
    match code {
        Some(0) => assert!(out.contains("committed"), "{out}"),
        Some(3) => assert!(out.contains("queued"), "exit status 3 is queued: {out}"),
        other => panic!("lsync {args:?} failed ({other:?}): {err}"),
    }
    out
}

/// What a test wrote: every tag id, each written once (an oracle the devices are checked
/// against, not only each other).
#[derive(Default)]
struct Oracle {
    written: Vec<String>,
}

impl Oracle {
    /// `lsync tag add --id ID` on `d`.
    fn tag_add(&mut self, d: &Daemon, id: String) {
        let out = written(d, &["tag", "add", "--id", &id, "written through the cli"]);
        assert!(out.contains("committed") || out.contains("queued"), "{out}");
        self.written.push(id);
    }

    /// `lsync put tag JSON` on `d`.
    fn put(&mut self, d: &Daemon, id: String) {
        let record = format!(r#"{{"id":"{id}","name":"put through the cli"}}"#);
        let out = written(d, &["put", "tag", &record]);
        assert!(out.contains("committed") || out.contains("queued"), "{out}");
        self.written.push(id);
    }

    /// `POST /libraries/{lib}/changes` on `d`.
    fn api(&mut self, d: &Daemon, lib: &str, id: String) {
        let body = serde_json::json!({"model_type": "tag", "data": {"id": id, "name": "api"}});
        let (status, resp) =
            d.http("POST", &format!("/libraries/{lib}/changes"), Some(&d.token()), Some(body));
        assert_eq!(status, 200, "{resp}");
        let status = json(&resp)["status"].as_str().unwrap().to_owned();
        assert!(status == "committed" || status == "queued", "{resp}");
        self.written.push(id);
    }

    /// Every written id is in the log of `db` exactly once, and in its tag table; nothing
    /// else is.
    fn check(&self, db: &lsync::Database, device: &str) {
        let log = db.fetch_since(0, u64::MAX).unwrap();
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for e in log.iter().filter(|e| e.model_type == "tag") {
            *counts.entry(e.record_id.as_str()).or_default() += 1;
        }
        for id in &self.written {
            assert_eq!(counts.get(id.as_str()), Some(&1), "{device}: {id} in the log once");
        }
        assert_eq!(counts.len(), self.written.len(), "{device}: only the written tags");
        let tags = &db.dump().unwrap()["tag"];
        assert_eq!(tags.len(), self.written.len(), "{device}: one tag row per write");
        for id in &self.written {
            assert!(tags.iter().any(|row| row.starts_with(&format!("'{id}'"))), "{device}: {id}");
        }
    }
}

/// Daemon `i` of `ds` (running).
fn d(ds: &[Option<Daemon>], i: usize) -> &Daemon {
    ds[i].as_ref().expect("running")
}

/// Opens a stopped device's library database (read for the final comparison).
fn open_db(d: &Path, lib: &str) -> lsync::Database {
    let path = d.join("libraries").join(format!("{lib}.db"));
    lsync::Database::open(&path, &Default::default(), lsync::ModelRegistry::with_builtin())
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

/// README's "Running several devices", literally: `init` + `run` on each of three devices,
/// `library create` on the first, `library invite` there and `library join TOKEN` on the
/// second; the third is invited by the second (any member invites). Writes through the CLI and
/// the API on every device, then `kill -9` of the leader: exactly one new leader among the
/// other two, writes go on, the old leader comes back (on another port: port 0) as a follower;
/// every device ends with identical `devices`, `tag` and `sync_log` tables holding every write
/// exactly once.
#[test]
fn readme_steps_set_up_three_devices_that_survive_the_leader_killed() {
    let root = tempfile::tempdir().unwrap();
    let mut ds: Vec<Option<Daemon>> = ["laptop", "desktop", "nas"]
        .iter()
        .map(|n| Some(Daemon::init_and_start(root.path(), n)))
        .collect();

    let created = d(&ds, 0).ok(&["library", "create"]);
    assert!(created.contains("lsync library invite"), "{created}");
    let invitation = d(&ds, 0).ok(&["library", "invite"]);
    let token = invitation.lines().last().unwrap().to_owned();
    assert!(token.starts_with("lsync-invite-1."), "the token is the last line: {invitation}");
    assert!(invitation.lines().count() > 1, "a short explanation first: {invitation}");
    let joined = d(&ds, 1).ok(&["library", "join", &token]);
    assert!(joined.contains("committed") && joined.contains("lsync status --watch"), "{joined}");
    let invitation = d(&ds, 1).ok(&["library", "invite"]);
    let token = invitation.lines().last().unwrap().to_owned();
    let joined = d(&ds, 2).ok(&["library", "join", &token]);
    assert!(joined.contains("joined library"), "{joined}");
    let lib = d(&ds, 0).library_list_one();
    assert_eq!(d(&ds, 2).library_list_one(), lib);

    let all: Vec<&Daemon> = ds.iter().map(|x| x.as_ref().unwrap()).collect();
    wait_for_configuration(&all, 3, 3);
    let mut oracle = Oracle::default();
    for (i, name) in ["laptop", "desktop", "nas"].iter().enumerate() {
        for k in 0..3 {
            oracle.tag_add(d(&ds, i), format!("{name}-cli-{k}"));
            oracle.put(d(&ds, i), format!("{name}-put-{k}"));
            oracle.api(d(&ds, i), &lib, format!("{name}-api-{k}"));
        }
    }
    wait_for_convergence(&all, &lib);
    let page = |x: &Daemon| json(&x.ok(&["log", "--json", "--limit", "1000"]))["entries"].clone();
    assert_eq!(page(all[1]), page(all[0]));
    assert_eq!(page(all[2]), page(all[0]));
    // status shows the role in the configuration, the commit sequence and the members
    let text = all[2].ok(&["status"]);
    assert!(text.contains("this device: voter") && text.contains("commit sequence"), "{text}");
    assert!(text.contains("3 members (3 voters, 0 learners)"), "{text}");

    // kill -9 the leader
    let leader = (0..3).find(|&i| d(&ds, i).library(&lib)["role"] == "Leader").expect("a leader");
    let old_term = d(&ds, leader).library(&lib)["term"].as_u64().unwrap();
    let leader_dir = d(&ds, leader).dir.clone();
    ds[leader].take().unwrap().kill9();
    let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let mut new_leader = None;
    wait_until("exactly one new leader among the other two, followed by the other", || {
        let ls: Vec<Value> = others.iter().map(|&i| d(&ds, i).library(&lib)).collect();
        let leading: Vec<usize> = (0..2).filter(|&k| ls[k]["role"] == "Leader").collect();
        let [k] = leading[..] else { return false };
        let term = ls[k]["term"].as_u64().unwrap_or(0);
        let id = d(&ds, others[k]).device_id();
        let agreed = ls.iter().all(|l| l["term"] == term && l["leader"] == id.as_str());
        if term > old_term && agreed {
            new_leader = Some(others[k]);
        }
        new_leader.is_some()
    });
    let new_leader = new_leader.unwrap();
    for &i in &others {
        for k in 0..3 {
            oracle.tag_add(d(&ds, i), format!("after-{i}-cli-{k}"));
            oracle.api(d(&ds, i), &lib, format!("after-{i}-api-{k}"));
        }
    }
    let survivors: Vec<&Daemon> = others.iter().map(|&i| d(&ds, i)).collect();
    wait_for_convergence(&survivors, &lib);
    assert_eq!(page(survivors[0]), page(survivors[1]));

    // the old leader comes back on a new port and follows
    ds[leader] = Some(Daemon::start(&leader_dir));
    let leader_id = d(&ds, new_leader).device_id();
    wait_until("the old leader follows the new one", || {
        let l = d(&ds, leader).library(&lib);
        l["role"] == "Follower" && l["leader"] == leader_id.as_str()
    });
    let all: Vec<&Daemon> = ds.iter().map(|x| x.as_ref().unwrap()).collect();
    wait_for_convergence(&all, &lib);
    assert_eq!(page(all[leader]), page(all[new_leader]));

    // stop every daemon, then compare the databases themselves
    let dirs: Vec<PathBuf> = all.iter().map(|x| x.dir.clone()).collect();
    for x in ds.iter_mut() {
        x.take().unwrap().terminate();
    }
    let dbs: Vec<lsync::Database> = dirs.iter().map(|p| open_db(p, &lib)).collect();
    let devices = dbs[0].devices().unwrap();
    assert_eq!(devices.len(), 3);
    let dump = dbs[0].dump().unwrap();
    for (i, db) in dbs.iter().enumerate() {
        assert_eq!(db.devices().unwrap(), devices, "device {i}'s devices table");
        assert_eq!(db.dump().unwrap(), dump, "device {i}'s tags and log");
        oracle.check(db, &format!("device {i}"));
    }
}

/// Membership changes through the CLI: an expired invitation is refused with a clear message;
/// `remove-device` on a member that does not lead cuts a device off (its status says it is no
/// longer a member, its writes are refused, its copy is kept); `force-reconfigure` is refused
/// without its flag; in a two-voter library the removal of a device that is gone stays pending
/// (exit status 3).
#[test]
fn membership_changes_through_the_cli() {
    let root = tempfile::tempdir().unwrap();
    let a = Daemon::init_and_start(root.path(), "a");
    let b = Daemon::init_and_start(root.path(), "b");
    let c = Daemon::init_and_start(root.path(), "c");
    a.ok(&["library", "create"]);

    let short = json(&a.ok(&["library", "invite", "--expires", "1s", "--json"]));
    let expires = short["expires_at_ms"].as_i64().unwrap();
    wait_until("the invitation expired", || now_ms() > expires + 50);
    let token = short["token"].as_str().unwrap();
    fails_with_one_line(&b.dir, &["library", "join", token], "the invitation expired");
    assert_eq!(b.status()["libraries"], serde_json::json!([]), "nothing was joined");

    let token = a.ok(&["library", "invite"]).lines().last().unwrap().to_owned();
    b.ok(&["library", "join", &token]);
    let token = a.ok(&["library", "invite"]).lines().last().unwrap().to_owned();
    c.ok(&["library", "join", &token]);
    // The same token again: from the device that used it, the same answer (a lost answer is
    // retried that way); from any other device, refused.
    c.ok(&["library", "join", &token]);
    fails_with_one_line(&b.dir, &["library", "join", &token], "used");
    wait_for_configuration(&[&a, &b, &c], 3, 3);
    let lib = a.library_list_one();
    let mut oracle = Oracle::default();
    oracle.tag_add(&c, "from-c-before".into());
    let (ida, idb, idc) = (a.device_id(), b.device_id(), c.device_id());

    // removed through b (forwarded to the leader, a)
    assert_eq!(a.library(&lib)["role"], "Leader");
    let out = b.ok(&["library", "remove-device", &idc]);
    assert!(out.contains("removed") && out.contains("committed"), "{out}");
    wait_for_configuration(&[&a, &b], 2, 2);
    wait_until("the removed device knows it is no longer a member", || {
        c.library(&lib)["member"] == false
    });
    let text = c.ok(&["status"]);
    assert!(text.contains("no longer a member"), "{text}");
    fails_with_one_line(&c.dir, &["tag", "add", "refused"], "not a member");
    assert!(last_sequence(&c, &lib) > 0, "its copy is kept");
    let members = c.members();
    assert_eq!(members["member"], false, "{members}");
    oracle.tag_add(&a, "from-a-after".into());

    let cmd = ["library", "force-reconfigure", "--library", &lib, "--voters", &ida];
    fails_with_one_line(&a.dir, &cmd, "--i-understand-this-is-unsafe");
    assert_eq!(voters(&a.members()), {
        let mut v = vec![ida.clone(), idb.clone()];
        v.sort();
        v
    });

    // two voters, one of them gone: its removal needs it, so it stays pending
    b.kill9();
    let (code, out, err) = a.run(&["library", "remove-device", &idb]);
    assert_eq!(code, Some(3), "pending is exit status 3: {out} {err}");
    assert!(out.contains("pending") && out.contains("force-reconfigure"), "{out}");
    let members = a.members();
    assert_eq!(members["pending"], true, "{members}");
    assert!(a.ok(&["status"]).contains("PENDING"));
    let (_, m) = a.http("GET", "/metrics", Some(&a.token()), None);
    assert!(m.contains(&format!("lsync_membership_pending{{library=\"{lib}\"}} 1")), "{m}");

    wait_for_convergence(&[&a], &lib);
    drop(c);
    let dir = a.dir.clone();
    a.terminate();
    let db = open_db(&dir, &lib);
    oracle.check(&db, "a");
}

/// `lsync verify` while the daemon runs: a clean library exits 0; a tag row changed behind the
/// daemon's back (as with the sqlite3 CLI) exits 1 naming the entry that last wrote the row;
/// the same after the daemon stopped.
#[test]
fn verify_finds_a_tampered_row_whether_or_not_the_daemon_runs() {
    use lsync::crates::storage::diesel::{self, Connection, RunQueryDsl};

    let root = tempfile::tempdir().unwrap();
    let daemon = Daemon::init_and_start(root.path(), "solo");
    let created = json(&daemon.ok(&["library", "create", "--json"]));
    let lib = created["library_id"].as_str().unwrap().to_owned();
    for i in 0..5 {
        daemon.ok(&["tag", "add", "--id", &format!("t{i}"), "a tag"]);
    }
    let (code, out, err) = daemon.run(&["verify", "--library", &lib]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("OK"), "{out}");
    // The status names the head of the chain verify checked.
    let status = json(&daemon.ok(&["status", "--json"]));
    let head = status["libraries"][0]["head_hash"].as_str().expect("a head hash").to_owned();
    assert_eq!(head.len(), 64, "{head}");
    assert_ne!(head, "0".repeat(64), "a library's log is never empty");
    assert!(status["libraries"][0]["behind_mark"].is_null(), "{status}");
    assert!(out.contains("tag"), "{out}");
    let last = last_sequence(&daemon, &lib);
    let log = daemon.ok(&["log", "--library", &lib]);
    assert!(log.contains(&format!("hash chain at {last}: {head}")), "{log}");

    let path = root.path().join("solo").join("libraries").join(format!("{lib}.db"));
    let mut conn = lsync::crates::storage::SqliteConnection::establish(path.to_str().unwrap())
        .expect("open the database behind the daemon");
    diesel::sql_query("PRAGMA busy_timeout = 5000").execute(&mut conn).unwrap();
    let changed = diesel::sql_query("UPDATE tag SET name = 'tampered' WHERE id = 't4'")
        .execute(&mut conn)
        .unwrap();
    assert_eq!(changed, 1);
    drop(conn);
    let expect = format!("first bad sequence {last}");
    let (code, out, err) = daemon.run(&["verify", "--library", &lib]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(err.contains(&expect), "{err}");
    assert!(out.contains("tag row 't4'"), "{out}");
    drop(daemon);
    // Without a daemon (and without --library: the only library).
    let (code, _, err) = {
        let out = lsync(&root.path().join("solo"), &["verify"]);
        (out.status.code(), out.stdout, String::from_utf8_lossy(&out.stderr).into_owned())
    };
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(&expect), "{err}");
}

/// A control API stand-in on 127.0.0.1 for the client's exit statuses: `lsync` finds it
/// through `control.addr` and `control.token` in `dir`; each connection is handled by
/// `answer`, which gets the whole request and returns the bytes to send back before closing
/// (none: it closes without answering, as a daemon that died mid-request).
fn fake_daemon(
    dir: &Path,
    answer: impl Fn(&str) -> Option<String> + Send + 'static,
) -> std::thread::JoinHandle<()> {
    use std::io::{Read, Write};
    std::fs::create_dir_all(dir).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    std::fs::write(dir.join("control.addr"), format!("{}\n", listener.local_addr().unwrap()))
        .unwrap();
    std::fs::write(dir.join("control.token"), format!("{}\n", "ab".repeat(32))).unwrap();
    std::thread::spawn(move || {
        // one connection: the CLI makes one request (`--library` is given)
        let Ok((mut conn, _)) = listener.accept() else { return };
        conn.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut request = Vec::new();
        let mut buf = [0u8; 4096];
        // read the headers, then the body of the length they announce
        loop {
            let n = conn.read(&mut buf).unwrap_or(0);
            if n == 0 {
                return;
            }
            request.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&request).into_owned();
            if let Some(end) = text.find("\r\n\r\n") {
                let length = text[..end]
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                    })
                    .unwrap_or(0);
                if request.len() >= end + 4 + length {
                    break;
                }
            }
        }
        if let Some(response) = answer(&String::from_utf8_lossy(&request)) {
            let _ = conn.write_all(response.as_bytes());
        }
        // dropped: the connection closes
    })
}

/// How a [`fake_daemon`] answers a request.
type Answer = Box<dyn Fn(&str) -> Option<String> + Send>;

/// An HTTP response with a JSON body.
fn http_response(status: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    )
}

/// The client tells a script what became of a write, by its exit status: 0 committed, 3
/// queued, 2 refused (nothing done), 4 unknown (the connection broke after the request was
/// sent: it may be committed; the proposal id the CLI sent is printed, to follow it or retry
/// it with `--proposal-id`) — and a daemon that is not listening at all is 2 (never sent).
#[test]
fn write_exit_statuses_tell_refused_from_unknown() {
    let root = tempfile::tempdir().unwrap();
    let lib = Uuid::new_v4().to_string();
    let put = ["put", "--library", &lib, "tag", r#"{"id":"t1","name":"holiday"}"#];
    let run = |name: &str, answer: Answer| {
        let dir = root.path().join(name);
        let server = fake_daemon(&dir, answer);
        let out = lsync(&dir, &put);
        server.join().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    let (code, out, err) = run(
        "committed",
        Box::new(|req| {
            assert!(req.starts_with("POST /libraries/"), "{req}");
            assert!(req.contains(&format!("Bearer {}", "ab".repeat(32))), "{req}");
            Some(http_response(
                "200 OK",
                r#"{"status":"committed","first_sequence":7,"last_sequence":7,"proposal_id":null}"#,
            ))
        }),
    );
    assert_eq!(code, Some(0), "{out} {err}");
    assert!(out.contains("committed sequence 7"), "{out}");

    let queued = Uuid::new_v4();
    let (code, out, err) = run(
        "queued",
        Box::new(move |_| {
            Some(http_response(
                "200 OK",
                &format!(
                    r#"{{"status":"queued","first_sequence":null,"last_sequence":null,"proposal_id":"{queued}"}}"#
                ),
            ))
        }),
    );
    assert_eq!(code, Some(3), "queued is exit status 3: {out} {err}");
    assert!(out.contains(&format!("queued as proposal {queued}")), "{out}");

    let (code, out, err) = run(
        "refused",
        Box::new(|_| {
            Some(http_response(
                "409 Conflict",
                r#"{"error":"this device is not a member of library x any more"}"#,
            ))
        }),
    );
    assert_eq!(code, Some(2), "refused is exit status 2: {out} {err}");
    assert!(err.contains("not a member") && err.contains("HTTP 409"), "{err}");

    // The answer is lost: exit status 4, and one line on stdout naming the proposal id the
    // CLI chose and sent, with the command that follows it.
    let sent = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));
    let keep = |sent: &std::sync::Arc<std::sync::Mutex<Option<String>>>| {
        let sent = sent.clone();
        move |req: &str| {
            let body = json(&req[req.find("\r\n\r\n").expect("a body") + 4..]);
            let id = body["proposal_id"].as_str().expect("the request names its proposal");
            *sent.lock().unwrap() = Some(id.to_owned());
        }
    };
    let record = keep(&sent);
    let (code, out, err) = run(
        "cut",
        Box::new(move |req| {
            record(req);
            None
        }),
    );
    assert_eq!(code, Some(4), "a connection broken mid-request is exit status 4: {out} {err}");
    assert!(err.contains("may or may not be committed"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    let id = sent.lock().unwrap().take().expect("the fake daemon got the request");
    let id: Uuid = id.parse().expect("a uuid");
    assert!(!id.is_nil() && id.get_version_num() == 4, "{id}");
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.starts_with(&format!("proposal {id}: outcome unknown")), "{out}");
    assert!(out.contains(&format!("lsync status --library {lib} --proposal {id}")), "{out}");
    assert!(out.contains(&format!("--proposal-id {id}")), "{out}");

    // a daemon saying it cannot tell: the same; a retry with --proposal-id sends that id
    let unknown = || {
        Some(http_response(
            "503 Service Unavailable",
            r#"{"error":"the sync service stopped","outcome":"unknown"}"#,
        ))
    };
    let record = keep(&sent);
    let (code, out, err) = run(
        "service-stopped",
        Box::new(move |req| {
            record(req);
            unknown()
        }),
    );
    assert_eq!(code, Some(4), "the daemon saying it cannot tell is exit status 4: {err}");
    let first = sent.lock().unwrap().take().expect("the fake daemon got the request");
    assert!(out.starts_with(&format!("proposal {first}: outcome unknown")), "{out}");
    let dir = root.path().join("retried");
    let record = keep(&sent);
    let server = fake_daemon(&dir, move |req| {
        record(req);
        unknown()
    });
    let mut retry = put.to_vec();
    retry.splice(1..1, ["--proposal-id", first.as_str(), "--json"]);
    let again = lsync(&dir, &retry);
    server.join().unwrap();
    assert_eq!(again.status.code(), Some(4));
    assert_eq!(sent.lock().unwrap().as_deref(), Some(first.as_str()), "the id given is sent");
    let answer = json(&String::from_utf8_lossy(&again.stdout));
    assert_eq!(answer["status"], "unknown", "{answer}");
    assert_eq!(answer["proposal_id"], first.as_str(), "{answer}");

    // nothing listens at the address: the request was never sent
    let dir = root.path().join("gone");
    std::fs::create_dir_all(&dir).unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    std::fs::write(dir.join("control.addr"), format!("127.0.0.1:{port}\n")).unwrap();
    std::fs::write(dir.join("control.token"), "ab".repeat(32)).unwrap();
    fails_with_one_line(&dir, &put, "cannot reach the lsync daemon");
}

/// The control token is made once and kept: a client holding it is not refused after the
/// daemon restarts; `lsync token rotate` replaces it, and the old one is refused at once.
#[test]
fn control_token_survives_a_restart_until_rotated() {
    let root = tempfile::tempdir().unwrap();
    let d = Daemon::init_and_start(root.path(), "solo");
    let token = d.token();
    assert_eq!(d.http("GET", "/status", Some(&token), None).0, 200);
    let dir = d.dir.clone();
    d.terminate();
    assert_eq!(std::fs::read_to_string(dir.join("control.token")).unwrap().trim(), token);

    let d = Daemon::start(&dir);
    assert_eq!(d.token(), token, "the token file was rewritten at the restart");
    assert_eq!(d.http("GET", "/status", Some(&token), None).0, 200, "refused after a restart");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("control.token")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    let out = d.ok(&["token", "rotate"]);
    assert!(out.contains("new token"), "{out}");
    let fresh = d.token();
    assert_ne!(fresh, token);
    assert_eq!(d.http("GET", "/status", Some(&token), None).0, 401, "the old token still works");
    assert_eq!(d.http("GET", "/status", Some(&fresh), None).0, 200);
    d.ok(&["status"]);

    // with no daemon running, the file is rewritten and the next start uses it
    d.terminate();
    let out = ok(&dir, &["token", "rotate"]);
    assert!(out.contains("next start"), "{out}");
    let offline = std::fs::read_to_string(dir.join("control.token")).unwrap().trim().to_owned();
    assert_ne!(offline, fresh);
    let d = Daemon::start(&dir);
    assert_eq!(d.http("GET", "/status", Some(&offline), None).0, 200);
}

/// `lsync init` in `root/name` with a frame limit of 64 KiB (so a change may be 32 KiB) and
/// short timers, then `lsync run`.
fn start_with_small_frames(root: &Path, name: &str) -> Daemon {
    start_with_frames(root, name, 65_536)
}

/// `lsync init` in `root/name` with a frame limit of `max_frame_bytes` (a change may be half)
/// and short timers, then `lsync run`.
fn start_with_frames(root: &Path, name: &str, max_frame_bytes: usize) -> Daemon {
    let dir = root.join(name);
    ok(&dir, &["init", "--name", name, "--listen", "/ip4/127.0.0.1/tcp/0"]);
    let config = dir.join("lsync.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    // and the short timers of Daemon::init_and_start
    let limit = format!("max_frame_bytes = {max_frame_bytes}");
    let small = text
        .replace("max_frame_bytes = 16777216", &limit)
        .replace("heartbeat_interval_ms = 30000", "heartbeat_interval_ms = 200")
        .replace("leader_timeout_ms = 60000", "leader_timeout_ms = 1500")
        .replace("backoff_max_ms = 30000", "backoff_max_ms = 1000");
    assert!(small.contains(&limit), "lsync init wrote the [network] defaults");
    std::fs::write(&config, small).unwrap();
    Daemon::start(&dir)
}

/// A change over the daemon's size limit (half of `network.max_frame_bytes`) is refused before
/// anything is written, on the leader and on a follower: `413` from the API naming the limit,
/// one line and exit status 5 from the CLI. A change under it is committed and the follower
/// goes on replicating.
#[test]
fn a_change_over_the_size_limit_is_refused_in_one_line() {
    let root = tempfile::tempdir().unwrap();
    let d = start_with_small_frames(root.path(), "leader");
    let f = start_with_small_frames(root.path(), "follower");
    let lib =
        json(&d.ok(&["library", "create", "--json"]))["library_id"].as_str().unwrap().to_owned();
    let invitation = json(&d.ok(&["library", "invite", "--json"]));
    f.ok(&["library", "join", invitation["token"].as_str().unwrap()]);
    // the leader promotes the learner (two voters): no configuration entry comes later
    wait_for_configuration(&[&d, &f], 2, 2);
    let before = wait_for_convergence(&[&d, &f], &lib);

    let big = format!(r#"{{"id":"big","name":"{}"}}"#, "x".repeat(40_000));
    for device in [&d, &f] {
        let (code, out, err) = device.run(&["put", "tag", &big]);
        assert_eq!(code, Some(5), "too large is exit status 5: {out} {err}");
        let lines: Vec<_> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{err}");
        assert!(lines[0].contains("32768 bytes") && lines[0].contains("HTTP 413"), "{err}");
    }
    let body =
        serde_json::json!({"model_type": "tag", "data": {"id": "big", "name": "x".repeat(40_000)}});
    let (status, resp) =
        d.http("POST", &format!("/libraries/{lib}/changes"), Some(&d.token()), Some(body));
    assert_eq!(status, 413, "{resp}");
    assert!(json(&resp)["error"].as_str().unwrap().contains("32768 bytes"), "{resp}");
    assert_eq!(last_sequence(&d, &lib), before, "something was written");

    // under the limit: committed, from either device, and replicated
    let fits = format!(r#"{{"id":"fits","name":"{}"}}"#, "y".repeat(30_000));
    let out = d.ok(&["put", "tag", &fits]);
    assert!(out.contains("committed"), "{out}");
    let out = written(&f, &["put", "tag", r#"{"id":"after","name":"after the refused one"}"#]);
    assert!(out.contains("committed") || out.contains("queued"), "{out}");
    let converged = wait_for_convergence(&[&d, &f], &lib);
    assert_eq!(converged, before + 2);

    // Changes near the limit, written while the follower is down, reach it when it comes
    // back: eight of them are four frames' worth, so its catch-up responses must be capped at
    // half the frame (a response of the whole block could not be sent, and the follower
    // would retry that fetch forever).
    let dir = f.dir.clone();
    f.terminate();
    for i in 0..8 {
        let near = format!(r#"{{"id":"near{i}","name":"{}"}}"#, "z".repeat(30_000));
        assert!(d.ok(&["put", "tag", &near]).contains("committed"));
    }
    let f = Daemon::start(&dir);
    assert_eq!(wait_for_convergence(&[&d, &f], &lib), converged + 8);
}

/// The tag ids of `d`'s log after sequence `since`, in order.
fn tags_after(d: &Daemon, since: u64) -> Vec<String> {
    let log = json(&d.ok(&["log", "--json", "--since", &since.to_string()]));
    let entries = log["entries"].as_array().cloned().unwrap_or_default();
    entries
        .iter()
        .filter(|e| e["model_type"] == "tag")
        .map(|e| e["record_id"].as_str().unwrap().to_owned())
        .collect()
}

/// A follower holding an outbox entry its leader can never take — a change of 100 KB, within
/// the follower's limits (16 MiB frames: a change may be 8 MiB) but whose `Propose` is over the
/// leader's 64 KiB frame limit. The leader answers that `Propose` with `Error(BadRequest)`
/// ("frame of N bytes exceeds the limit"), so the entry is refused for good: `lsync put` says
/// so (exit status 2) and the entry is kept in the outbox as `failed` with the reason (`lsync
/// outbox list`, `lsync status --proposal`), never dropped. It holds nothing back: the
/// follower's later writes are committed, every entry the leader commits after it reaches the
/// follower, and retrying it (`lsync outbox retry`) gets it refused again the same way while
/// the writes after it still go through (issue 17).
#[test]
fn an_outbox_entry_the_leader_can_never_take_holds_nothing_back() {
    let root = tempfile::tempdir().unwrap();
    let d = start_with_frames(root.path(), "leader", 65_536);
    let f = start_with_frames(root.path(), "follower", 16 * 1024 * 1024);
    let lib =
        json(&d.ok(&["library", "create", "--json"]))["library_id"].as_str().unwrap().to_owned();
    let invitation = json(&d.ok(&["library", "invite", "--json"]));
    f.ok(&["library", "join", invitation["token"].as_str().unwrap()]);
    wait_for_configuration(&[&d, &f], 2, 2);
    let before = wait_for_convergence(&[&d, &f], &lib);

    let poison = Uuid::new_v4().to_string();
    let big = format!(r#"{{"id":"poison","name":"{}"}}"#, "p".repeat(100_000));
    let (code, out, err) = f.run(&["put", "--proposal-id", &poison, "tag", &big]);
    assert_eq!(code, Some(2), "refused by the leader: {out} {err}");
    let lines: Vec<_> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].contains("exceeds the limit of 65536 bytes"), "{err}");
    // kept, as failed, with the reason
    let failed = |f: &Daemon| {
        let (code, out, err) = f.run(&["outbox", "list", "--json"]);
        assert_eq!(code, Some(3), "an entry failed: {out} {err}");
        let entries = json(&out)["entries"].as_array().cloned().unwrap();
        assert_eq!(entries.len(), 1, "{out}");
        assert_eq!(entries[0]["proposal_id"], poison.as_str(), "{out}");
        let reason = entries[0]["failed_reason"].as_str().unwrap_or_default();
        assert!(reason.contains("exceeds the limit of 65536 bytes"), "{out}");
        entries[0]["failed_at_ms"].as_i64().unwrap()
    };
    let failed_at = failed(&f);
    let (code, out, _) = f.run(&["outbox", "list"]);
    assert_eq!(code, Some(3), "{out}");
    assert!(out.contains(&format!("{poison}  failed")), "{out}");
    let (code, out, _) = f.run(&["status", "--proposal", &poison]);
    assert_eq!(code, Some(2), "failed: {out}");
    assert!(out.contains("refused for good by the leader"), "{out}");

    // behind it: the follower's writes are committed, the leader's replicate
    let mut expected = Vec::new();
    let mut write_both = |round: &str| {
        let record = format!(r#"{{"id":"after{round}","name":"written behind it"}}"#);
        let (code, out, err) = f.run(&["put", "tag", &record]);
        assert_eq!(code, Some(0), "committed, not held behind the entry: {out} {err}");
        let lead = format!(r#"{{"id":"lead{round}","name":"written on the leader"}}"#);
        assert!(d.ok(&["put", "tag", &lead]).contains("committed"));
        expected.extend([format!("after{round}"), format!("lead{round}")]);
    };
    for i in 0..3 {
        write_both(&i.to_string());
    }
    // retried: refused again the same way (the leader's limit stands), and still nothing waits
    let out = f.ok(&["outbox", "retry", &poison]);
    assert!(out.contains("queued again"), "{out}");
    // queued again until the proposer's next attempt: only then failed again
    let failed_again = |f: &Daemon| {
        let (code, out, _) = f.run(&["outbox", "list", "--json"]);
        let at = json(&out)["entries"][0]["failed_at_ms"].as_i64();
        code == Some(3) && at.is_some_and(|at| at > failed_at)
    };
    wait_until("the retried entry is refused again", || failed_again(&f));
    assert!(failed(&f) > failed_at);
    write_both("-after-the-retry");

    let last = before + expected.len() as u64;
    wait_until("the follower holds every entry the leader committed", || {
        last_sequence(&d, &lib) == last && last_sequence(&f, &lib) == last
    });
    assert_eq!(tags_after(&d, before), expected, "the leader never took the entry");
    assert_eq!(tags_after(&f, before), expected, "the follower replicated all of them");
}

/// `lsync status --proposal ID` tells what became of a write: committed (exit status 0, with
/// its sequence), or not known on this device (exit status 4). A write's proposal id may be
/// chosen by the client (`lsync put --proposal-id`, the API's `proposal_id`): its entries carry
/// it, the same id again writes nothing more, a nil one is refused.
#[test]
fn status_tells_what_became_of_a_proposal() {
    let root = tempfile::tempdir().unwrap();
    let d = Daemon::init_and_start(root.path(), "solo");
    d.ok(&["library", "create"]);
    d.ok(&["put", "tag", r#"{"id":"t1","name":"holiday"}"#]);
    let log = json(&d.ok(&["log", "--json"]));
    let entry = log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["record_id"] == "t1")
        .cloned()
        .expect("the write is in the log");
    let proposal = entry["proposal_id"].as_str().expect("a write carries a proposal id").to_owned();
    let sequence = entry["sequence"].as_u64().unwrap();

    let (code, out, err) = d.run(&["status", "--proposal", &proposal]);
    assert_eq!(code, Some(0), "{out} {err}");
    assert!(out.contains(&format!("committed, sequence {sequence}")), "{out}");
    let (code, out, _) = d.run(&["status", "--proposal", &proposal, "--json"]);
    assert_eq!(code, Some(0));
    assert_eq!(json(&out)["sequences"], serde_json::json!([sequence]), "{out}");

    let stranger = Uuid::new_v4().to_string();
    let (code, out, err) = d.run(&["status", "--proposal", &stranger]);
    assert_eq!(code, Some(4), "not known here is exit status 4: {out} {err}");
    assert!(out.contains("not known on this device"), "{out}");

    // A proposal id chosen by the client: its entry carries it, and writing it again (a
    // retry after exit status 4) commits nothing more and answers the same sequence.
    let chosen = Uuid::new_v4().to_string();
    let put = ["put", "--proposal-id", &chosen, "--json", "tag", r#"{"id":"t2","name":"once"}"#];
    let first = json(&d.ok(&put));
    assert_eq!(first["status"], "committed", "{first}");
    assert_eq!(first["proposal_id"], chosen.as_str(), "{first}");
    let last = first["last_sequence"].as_u64().unwrap();
    let again = json(&d.ok(&put));
    assert_eq!(again, first, "the same answer, from the log");
    let (code, out, _) = d.run(&["status", "--proposal", &chosen, "--json"]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(json(&out)["sequences"], serde_json::json!([last]), "{out}");
    let lib = d.library_list_one();
    assert_eq!(last_sequence(&d, &lib), last, "nothing written by the second put");

    // the control API: the body's proposal_id names the write (the answer too); sent again,
    // even with other data, nothing more is written; a nil id is refused
    let changes = format!("/libraries/{lib}/changes");
    let proposal = Uuid::new_v4();
    let body = |name: &str, p: Uuid| serde_json::json!({"model_type": "tag", "data": {"id": "t3", "name": name}, "proposal_id": p});
    let (s, resp) = d.http("POST", &changes, Some(&d.token()), Some(body("api", proposal)));
    assert_eq!(s, 200, "{resp}");
    let answer = json(&resp);
    assert_eq!(answer["proposal_id"], proposal.to_string(), "{resp}");
    assert_eq!(answer["last_sequence"], last + 1, "{resp}");
    let log = json(&d.ok(&["log", "--json", "--since", &last.to_string()]));
    assert_eq!(log["entries"][0]["proposal_id"], proposal.to_string(), "{log}");
    let (s, resp) = d.http("POST", &changes, Some(&d.token()), Some(body("other", proposal)));
    assert_eq!((s, json(&resp)), (200, answer), "the same answer");
    assert_eq!(last_sequence(&d, &lib), last + 1, "nothing written by the second request");
    let (s, resp) = d.http("POST", &changes, Some(&d.token()), Some(body("nil", Uuid::nil())));
    assert_eq!(s, 400, "{resp}");
    assert!(json(&resp)["error"].as_str().unwrap().contains("proposal_id is the nil uuid"));
    let bad = serde_json::json!({"model_type": "tag", "data": {"id": "t4", "name": "n"}, "proposal_id": "x"});
    assert_eq!(d.http("POST", &changes, Some(&d.token()), Some(bad)).0, 400);
    // without one, the daemon picks one and names it
    let (s, resp) = d.http(
        "POST",
        &changes,
        Some(&d.token()),
        Some(serde_json::json!({"model_type": "tag", "data": {"id": "t5", "name": "n"}})),
    );
    assert_eq!(s, 200, "{resp}");
    let picked: Uuid = json(&resp)["proposal_id"].as_str().unwrap().parse().unwrap();
    assert!(!picked.is_nil());
    assert_eq!(last_sequence(&d, &lib), last + 2);
}

/// `lsync outbox list|retry|discard` through the binary: an empty outbox lists as such (exit
/// status 0); retrying or discarding an id that is no failed entry is refused (2), naming it.
#[test]
fn outbox_commands_list_and_refuse_unknown_entries() {
    let root = tempfile::tempdir().unwrap();
    let d = Daemon::init_and_start(root.path(), "solo");
    d.ok(&["library", "create"]);
    let (code, out, err) = d.run(&["outbox", "list"]);
    assert_eq!(code, Some(0), "{out} {err}");
    assert!(out.contains("the outbox is empty"), "{out}");
    let (code, out, _) = d.run(&["outbox", "list", "--json"]);
    assert_eq!(code, Some(0));
    assert_eq!(json(&out)["entries"], serde_json::json!([]), "{out}");
    let stranger = Uuid::new_v4().to_string();
    for verb in ["retry", "discard"] {
        let (code, out, err) = d.run(&["outbox", verb, &stranger]);
        assert_eq!(code, Some(2), "{verb}: {out} {err}");
        assert!(err.contains("no failed outbox entry"), "{verb}: {err}");
    }
}

/// `lsync conflicts list` through the binary, and `GET /libraries/{id}/conflicts`: a daemon
/// whose config sets a model's conflict policy starts; none recorded lists as such in text and
/// JSON, the status and the metrics count 0; a bad `limit` or parameter is refused.
#[test]
fn conflicts_list_through_the_cli_and_the_api() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("solo");
    ok(&dir, &["init", "--name", "solo", "--listen", "/ip4/127.0.0.1/tcp/0"]);
    let config = dir.join("lsync.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{text}\n[models.tag]\nconflict_policy = \"reject\"\n"))
        .unwrap();
    let d = Daemon::start(&dir);
    d.ok(&["library", "create"]);
    let lib = d.library_list_one();
    let (code, out, err) = d.run(&["conflicts", "list"]);
    assert_eq!(code, Some(0), "{out} {err}");
    assert!(out.contains("no conflict recorded"), "{out}");
    let listed = json(&d.ok(&["conflicts", "list", "--json", "--limit", "5"]));
    assert_eq!(listed["library_id"], lib.as_str(), "{listed}");
    assert_eq!(listed["count"], 0, "{listed}");
    assert_eq!(listed["conflicts"], serde_json::json!([]), "{listed}");
    assert_eq!(d.library(&lib)["conflicts"], 0);
    let token = d.token();
    let (status, metrics) = d.http("GET", "/metrics", Some(&token), None);
    assert_eq!(status, 200);
    let gauge = format!("lsync_library_conflicts{{library=\"{lib}\"}} 0");
    assert!(metrics.contains(&gauge), "{metrics}");
    for bad in ["limit=0", "limit=x", "since=3"] {
        let path = format!("/libraries/{lib}/conflicts?{bad}");
        let (status, body) = d.http("GET", &path, Some(&token), None);
        assert_eq!(status, 400, "{bad}: {body}");
    }
    let (code, _, err) = d.run(&["conflicts", "list", "--limit", "0"]);
    assert_eq!(code, Some(2), "{err}");
}
