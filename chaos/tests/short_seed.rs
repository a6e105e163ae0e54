//! CI's chaos run: one short seed over the real binaries of this build — `lsync-chaos` (this
//! package's binary) driving the debug `lsync` next to it in the target directory — with 3
//! devices and a few cycles; the summary must be clean. Bounded in time: the tool is killed by
//! pid if it overruns, and it kills its own daemons on every path.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// CI's budget for the short run (docs/testing.md).
const BUDGET: Duration = Duration::from_secs(180);

/// The `lsync` binary of this build: target/<profile>/lsync, beside lsync-chaos.
fn lsync_binary() -> PathBuf {
    let chaos = PathBuf::from(env!("CARGO_BIN_EXE_lsync-chaos"));
    chaos.with_file_name("lsync")
}

/// Kills, by pid, every daemon a killed lsync-chaos left (its run directory lists them), if
/// the pid is still an `lsync run`.
fn kill_daemons(base: &std::path::Path) {
    let Ok(runs) = std::fs::read_dir(base) else { return };
    for run in runs.flatten() {
        let Ok(pids) = std::fs::read_to_string(run.path().join("pids")) else { continue };
        for pid in pids.lines().filter_map(|l| l.split_whitespace().next()) {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let is_daemon = String::from_utf8_lossy(&cmdline).contains("lsync\0run\0");
            if is_daemon {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        }
    }
}

#[test]
fn a_short_seed_runs_clean() {
    let lsync = lsync_binary();
    assert!(
        lsync.exists(),
        "{} is missing: `cargo test --workspace` builds it; alone, run `cargo build -p lsync` first",
        lsync.display()
    );
    // kept when the test fails (the run directory is the evidence), removed when it passes
    let base = tempfile::Builder::new()
        .prefix("lsync-chaos-ci-")
        .tempdir()
        .expect("a temporary directory")
        .keep();
    let mut child = Command::new(env!("CARGO_BIN_EXE_lsync-chaos"))
        .args(["--seed", "7", "--devices", "3", "--cycles", "4", "--writes-per-cycle", "8"])
        .args(["--settle-s", "60"])
        .arg("--dir")
        .arg(&base)
        .arg("--lsync")
        .arg(&lsync)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("lsync-chaos starts");
    let deadline = Instant::now() + BUDGET;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait on lsync-chaos") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            kill_daemons(&base);
            panic!("lsync-chaos did not finish within {BUDGET:?} (run in {})", base.display());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    child.stdout.take().expect("stdout").read_to_string(&mut stdout).expect("stdout");
    child.stderr.take().expect("stderr").read_to_string(&mut stderr).expect("stderr");
    let line = stdout.lines().last().unwrap_or_default();
    let summary: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| {
        panic!(
            "no JSON summary ({e}): stdout {stdout:?} stderr {stderr:?} (run in {})",
            base.display()
        )
    });
    assert_eq!(summary["seed"], 7);
    assert_eq!(summary["devices"], 3);
    assert!(summary["writes"]["acknowledged"].as_u64().unwrap_or(0) > 0, "{summary}");
    assert_eq!(summary["lost"], 0, "{summary}");
    assert_eq!(summary["duplicated"], 0, "{summary}");
    assert_eq!(summary["extra"], 0, "{summary}");
    assert_eq!(summary["problems"], serde_json::json!([]), "{summary}");
    assert_eq!(summary["clean"], true, "{summary}");
    assert!(status.success(), "exit {status}: {summary}");
    let _ = std::fs::remove_dir_all(&base);
}
