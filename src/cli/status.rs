//! `lsync status [--watch] [--json]`.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use lsync::control::api::{LibraryView, StatusView};

use super::client::Client;
use super::progress::{CatchUp, ProgressDisplay, RateTracker};

pub fn status(
    client: &Client,
    watch: bool,
    json: bool,
    interval: Duration,
) -> anyhow::Result<ExitCode> {
    if !watch {
        let value: serde_json::Value = client.get("/status")?;
        if json {
            println!("{}", serde_json::to_string_pretty(&value)?);
        } else {
            let view: StatusView = serde_json::from_value(value)?;
            for line in render(&view, &mut RateTracker::default()) {
                println!("{line}");
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    if json {
        // one JSON document per line, for scripts
        loop {
            let value: serde_json::Value = client.get("/status")?;
            println!("{}", serde_json::to_string(&value)?);
            std::thread::sleep(interval);
        }
    }
    let mut rates = RateTracker::default();
    if !std::io::stdout().is_terminal() {
        loop {
            let view: StatusView = client.get("/status")?;
            for line in render(&view, &mut rates) {
                println!("{line}");
            }
            println!();
            std::thread::sleep(interval);
        }
    }
    // a terminal: the status lines and the catch-up bars redrawn in place
    let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stdout());
    let text = multi.add(ProgressBar::new(0));
    text.set_style(ProgressStyle::with_template("{msg}").expect("valid template"));
    let mut bars = ProgressDisplay::with(multi.clone(), false);
    loop {
        let view: StatusView = match client.get("/status") {
            Ok(v) => v,
            Err(e) => {
                bars.clear();
                text.finish_and_clear();
                return Err(e);
            }
        };
        text.set_message(render_lines(&view, &mut rates, false).join("\n"));
        for l in &view.libraries {
            bars.update(l.library_id, catch_up(l));
        }
        std::thread::sleep(interval);
    }
}

fn catch_up(l: &LibraryView) -> Option<CatchUp> {
    let a = l.applier.as_ref()?;
    CatchUp::from_status(&a.state, a.progress.map(|p| (p.applied, p.target, p.elapsed_ms)))
}

/// The status as text lines.
pub fn render(view: &StatusView, rates: &mut RateTracker) -> Vec<String> {
    render_lines(view, rates, true)
}

/// The status as text lines; `progress`: with a line per catch-up (no bar drawn beside).
fn render_lines(view: &StatusView, rates: &mut RateTracker, progress: bool) -> Vec<String> {
    let d = &view.device;
    let mut out =
        vec![format!("device   {}  ({})", d.device_id, d.name), format!("peer id  {}", d.peer_id)];
    for a in &d.addresses {
        out.push(format!("address  {a}"));
    }
    if view.libraries.is_empty() {
        out.push("no library: `lsync library create`, or `lsync library join TOKEN`".into());
    }
    for l in &view.libraries {
        let role = l.role.to_lowercase();
        out.push(format!(
            "library  {}  {role}  term {}  last sequence {}  commit sequence {}  outbox {}",
            l.library_id, l.term, l.last_sequence, l.commit_sequence, l.outbox_size
        ));
        if let Some(hash) = &l.head_hash {
            out.push(format!("  head hash {}", &hash[..hash.len().min(16)]));
        }
        match (&l.behind_mark, &l.mark_diverged) {
            (Some(mark), Some(what)) => out.push(format!(
                "  its log holds another history than the one it acknowledged at its high-water \
                 mark {mark} ({what}; a copy of another device's data, or a restored backup \
                 written to since?): it neither campaigns nor votes until a leader of a newer \
                 term rebuilds it"
            )),
            (Some(mark), None) => out.push(format!(
                "  its log is behind its high-water mark {mark} (a restored backup or a copied \
                 data directory?): it neither campaigns nor votes for a log behind it until it \
                 has caught up"
            )),
            (None, _) => {}
        }
        if l.conflicts > 0 {
            out.push(format!(
                "  conflicts {}: concurrent edits decided by their model's policy \
                 (`lsync conflicts list --library {}` shows both values)",
                l.conflicts, l.library_id
            ));
        }
        out.extend(membership_lines(l, d.device_id));
        for f in &l.followers {
            out.push(format!(
                "  follower {}  {}  acked {}  lag {}  {}",
                f.device_id,
                f.role.as_deref().map_or("leaving".to_owned(), str::to_lowercase),
                f.acked_sequence,
                f.lag,
                if f.connected { "connected" } else { "disconnected" }
            ));
        }
        if let Some(a) = &l.applier {
            let lag = a.leader_last_sequence.saturating_sub(l.last_sequence);
            out.push(format!(
                "  applier {}  leader last sequence {}  lag {lag}{}",
                a.state,
                a.leader_last_sequence,
                if a.reconnect_attempts > 0 {
                    format!("  reconnect attempts {}", a.reconnect_attempts)
                } else {
                    String::new()
                }
            ));
            if let Some(c) = rates.observe(l.library_id, catch_up(l)).filter(|_| progress) {
                out.push(format!("  catching up {}", c.summary()));
            }
            if let Some(e) = &a.last_error {
                out.push(format!("  last error: {e}"));
            }
        }
    }
    out
}

/// This device's place in the library and the configuration in effect.
fn membership_lines(l: &LibraryView, me: uuid::Uuid) -> Vec<String> {
    let mut out = Vec::new();
    if !l.member || l.removed.is_some() {
        out.push(
            "  this device is no longer a member of this library (it was removed): its copy is \
             kept, read-only; another member can invite it again (`lsync library invite`)"
                .to_owned(),
        );
        if let Some(why) = &l.removed {
            out.push(format!("  refused: {why}"));
        }
    } else if let Some(role) = &l.member_role {
        let role = role.to_lowercase();
        let meaning = if role == "learner" {
            " (receives the log and may write; never votes nor leads)"
        } else {
            ""
        };
        out.push(format!("  this device: {role}{meaning}"));
    }
    let Some(m) = &l.membership else { return out };
    let voters = m.members.iter().filter(|x| x.role.eq_ignore_ascii_case("voter")).count();
    let learners = m.members.len() - voters;
    out.push(format!(
        "  configuration entry {}: {} members ({voters} voters, {learners} learners){}",
        m.config_sequence,
        m.members.len(),
        if m.pending { "  PENDING: in use, not yet held by a majority of the voters" } else { "" }
    ));
    for x in &m.members {
        out.push(format!(
            "    member {}  {:<7}  {}{}",
            x.device_id,
            x.role.to_lowercase(),
            x.name,
            if x.device_id == me { "  (this device)" } else { "" }
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(library: serde_json::Value) -> StatusView {
        serde_json::from_value(serde_json::json!({
            "device": {"device_id": uuid::Uuid::from_u128(1), "peer_id": "p", "addresses": [], "name": "laptop"},
            "libraries": [library],
        }))
        .unwrap()
    }

    fn library(member: bool, pending: bool) -> serde_json::Value {
        serde_json::json!({
            "library_id": uuid::Uuid::from_u128(9), "role": "Follower", "term": 2,
            "last_sequence": 40, "commit_sequence": 38, "outbox_size": 0,
            "member": member, "member_role": if member { Some("Learner") } else { None },
            "removed": null,
            "membership": {"config_sequence": 37, "pending": pending, "members": [
                {"device_id": uuid::Uuid::from_u128(2), "name": "desktop", "role": "Voter", "preference": "Auto"},
                {"device_id": uuid::Uuid::from_u128(1), "name": "laptop", "role": "Learner", "preference": "Learner"},
            ]},
        })
    }

    #[test]
    fn a_learner_sees_its_role_the_commit_sequence_and_a_pending_change() {
        let text = render(&view(library(true, true)), &mut RateTracker::default()).join("\n");
        assert!(text.contains("commit sequence 38"), "{text}");
        assert!(text.contains("this device: learner (receives the log"), "{text}");
        assert!(text.contains("configuration entry 37: 2 members (1 voters, 1 learners)  PENDING"));
        assert!(text.contains("laptop  (this device)"), "{text}");
        assert!(!text.contains("no longer a member"), "{text}");
    }

    #[test]
    fn a_removed_device_says_it_is_no_longer_a_member() {
        let text = render(&view(library(false, false)), &mut RateTracker::default()).join("\n");
        assert!(text.contains("no longer a member of this library (it was removed)"), "{text}");
        assert!(!text.contains("PENDING"), "{text}");
    }

    #[test]
    fn the_head_hash_and_a_log_behind_its_mark_are_shown() {
        let mut l = library(true, false);
        l["head_hash"] = serde_json::json!("ab".repeat(32));
        let text = render(&view(l.clone()), &mut RateTracker::default()).join("\n");
        assert!(text.contains(&format!("head hash {}", "ab".repeat(8))), "{text}");
        assert!(!text.contains("high-water mark"), "{text}");
        l["behind_mark"] = serde_json::json!("120@4");
        let text = render(&view(l.clone()), &mut RateTracker::default()).join("\n");
        assert!(text.contains("behind its high-water mark 120@4"), "{text}");
        assert!(!text.contains("another history"), "{text}");
        l["mark_diverged"] =
            serde_json::json!("an entry of term 3, hash 0a1b, where the mark says 2c3d");
        let text = render(&view(l), &mut RateTracker::default()).join("\n");
        assert!(text.contains("another history than the one it acknowledged at its high-water mark 120@4 (an entry of term 3"), "{text}");
        assert!(!text.contains("behind its high-water mark"), "{text}");
    }

    #[test]
    fn recorded_conflicts_are_counted_and_none_says_nothing() {
        let text = render(&view(library(true, false)), &mut RateTracker::default()).join("\n");
        assert!(!text.contains("conflicts"), "{text}");
        let mut l = library(true, false);
        l["conflicts"] = serde_json::json!(2);
        let text = render(&view(l), &mut RateTracker::default()).join("\n");
        assert!(text.contains("  conflicts 2: concurrent edits"), "{text}");
        assert!(text.contains("lsync conflicts list --library"), "{text}");
    }

    #[test]
    fn a_status_without_membership_fields_still_reads() {
        // a daemon of the previous version: no membership fields at all
        let old = serde_json::json!({
            "library_id": uuid::Uuid::from_u128(9), "role": "Leader", "term": 1,
            "last_sequence": 3,
        });
        let text = render(&view(old), &mut RateTracker::default()).join("\n");
        assert!(text.contains("leader  term 1  last sequence 3"), "{text}");
        assert!(!text.contains("no longer a member"), "{text}");
    }
}
