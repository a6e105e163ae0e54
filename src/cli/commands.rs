//! The client commands: `library …`, `put`, `tag add`, `log`. Each talks to the running daemon
//! through the control API.
//!
//! Exit status (docs/operations.md, section 1): 0 on success (a change committed); 2
//! ([`EXIT_ERROR`]) on an error — one line on stderr, `error: …`, and nothing was done;
//! [`EXIT_PENDING`] (3) when a change was accepted but is not committed yet — a membership
//! change in use but not yet held by a majority of the voters (docs/operations.md,
//! "Membership"), or a write queued in the outbox while no leader is reachable; [`EXIT_UNKNOWN`]
//! (4) when the request was sent but its answer was lost (the connection broke, or the service
//! stopped meanwhile): the change may or may not be committed — a write then prints the
//! proposal id it sent, to look up with `lsync status --proposal ID` or retry safely with
//! `--proposal-id ID` (see [`put`]); [`EXIT_TOO_LARGE`] (5) when a
//! change is larger than a change may be (nothing was done).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use lsync::control::api::{
    ChangeRequest, ConflictJson, ConflictsJson, CreatedLibrary, DeviceJson,
    ForceReconfigureRequest, InvitationJson, InviteRequest, JoinRequest, JoinWithTokenRequest,
    JoinedJson, LogPage, MembersJson, MembershipChangeJson, PreferenceRequest, StatusView,
};
use uuid::Uuid;

/// Exit status of an error: the request was refused or never reached the daemon; nothing was
/// done.
pub const EXIT_ERROR: u8 = 2;
/// Exit status of a change that was accepted but is not committed yet: a membership change that
/// is pending, or a write queued in this device's outbox (it commits by itself, once).
pub const EXIT_PENDING: u8 = 3;
/// Exit status of a change whose fate is unknown: the request was sent but its answer was lost;
/// the change may or may not be committed (never twice).
pub const EXIT_UNKNOWN: u8 = 4;
/// Exit status of a change refused for its size (nothing was done).
pub const EXIT_TOO_LARGE: u8 = 5;

/// What a pending change means, in one sentence.
const PENDING: &str = "pending: the change is in use but not yet held by a majority of the \
    voters; it commits once enough of them are reachable (`lsync library members` shows when)";

fn exit(committed: bool) -> ExitCode {
    if committed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_PENDING)
    }
}

/// `10m`, `90s`, `1h30m`… for a human.
fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => format!("{}ms", d.as_millis()),
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3_600 == 0 => format!("{}h", s / 3_600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

use super::client::Client;

/// The library to act on: the one given, or the daemon's only library.
pub fn resolve_library(client: &Client, given: Option<Uuid>) -> anyhow::Result<Uuid> {
    if let Some(id) = given {
        return Ok(id);
    }
    let status: StatusView = client.get("/status")?;
    match status.libraries.as_slice() {
        [one] => Ok(one.library_id),
        [] => bail!(
            "this device has no library yet: create one with `lsync library create`, or join one \
             with `lsync library join TOKEN`"
        ),
        many => bail!(
            "this device has {} libraries: choose one with --library ID (`lsync library list` \
             shows them)",
            many.len()
        ),
    }
}

pub fn library_create(client: &Client, json: bool) -> anyhow::Result<ExitCode> {
    let created: CreatedLibrary = client.post::<(), _>("/libraries", None)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&created)?);
        return Ok(ExitCode::SUCCESS);
    }
    let id = created.library_id;
    println!("library {id} created; this device ({}) leads it", created.leader.device_id);
    println!();
    println!("to add another device (after `lsync init` and `lsync run` there):");
    println!("  here:   lsync library invite");
    println!("  there:  lsync library join <the token `lsync library invite` printed>");
    Ok(ExitCode::SUCCESS)
}

pub fn library_invite(
    client: &Client,
    library: Uuid,
    learner: bool,
    expires: Duration,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let request = InviteRequest {
        learner,
        expires_ms: Some(u64::try_from(expires.as_millis()).unwrap_or(u64::MAX)),
    };
    let invitation: InvitationJson =
        client.post(&format!("/libraries/{library}/invitations"), Some(&request))?;
    if json {
        println!("{}", serde_json::to_string(&invitation)?);
        return Ok(ExitCode::SUCCESS);
    }
    let role = if learner {
        "it joins as a learner and stays one (it never votes nor leads)"
    } else {
        "it joins as a learner and becomes a voter once caught up, if the library needs one"
    };
    println!(
        "invitation to library {library}: single use, valid for {}; {role}.",
        human_duration(expires)
    );
    println!(
        "on the new device, after `lsync init` and `lsync run` there: lsync library join <TOKEN>, \
         TOKEN being the line below"
    );
    println!("{}", invitation.token);
    Ok(ExitCode::SUCCESS)
}

pub fn library_join_token(client: &Client, token: &str, json: bool) -> anyhow::Result<ExitCode> {
    let joined: JoinedJson =
        client.post("/join", Some(&JoinWithTokenRequest { token: token.trim().to_owned() }))?;
    if json {
        println!("{}", serde_json::to_string(&joined)?);
        return Ok(exit(joined.committed));
    }
    let lib = joined.library_id;
    if joined.committed {
        println!(
            "joined library {lib} as a learner (configuration entry {}, committed); it becomes a \
             voter once caught up if the library needs one",
            joined.config_sequence
        );
    } else {
        println!(
            "joined library {lib} as a learner, {PENDING} (configuration entry {})",
            joined.config_sequence
        );
    }
    println!("`lsync status --watch` shows the catch-up");
    Ok(exit(joined.committed))
}

/// Prints the outcome of a membership change; exit 0 when committed, [`EXIT_PENDING`] if not.
fn change_done(change: &MembershipChangeJson, what: &str) -> ExitCode {
    if change.committed {
        println!("{what} (configuration entry {}, committed)", change.config_sequence);
    } else {
        println!("{what}, {PENDING} (configuration entry {})", change.config_sequence);
    }
    exit(change.committed)
}

pub fn library_add_device(
    client: &Client,
    library: Uuid,
    device: DeviceJson,
) -> anyhow::Result<ExitCode> {
    device.to_info().map_err(anyhow::Error::msg)?;
    let change: MembershipChangeJson =
        client.post(&format!("/libraries/{library}/devices"), Some(&device))?;
    Ok(change_done(
        &change,
        &format!(
            "device {} is a member of library {library}, as a learner; run the scripted \
             `lsync library join` on it",
            device.device_id
        ),
    ))
}

pub fn library_join(
    client: &Client,
    library: Uuid,
    leader: DeviceJson,
    members: Vec<DeviceJson>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    leader.to_info().map_err(anyhow::Error::msg)?;
    for m in &members {
        m.to_info().map_err(anyhow::Error::msg)?;
    }
    let leader_id = leader.device_id;
    let _: serde_json::Value = client
        .post(&format!("/libraries/{library}/join"), Some(&JoinRequest { leader, members }))?;
    if json {
        println!("{}", serde_json::json!({ "library_id": library, "leader": leader_id }));
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "joined library {library} as a follower of {leader_id}; `lsync status --watch` shows the \
         catch-up (a member must have run `lsync library add-device` for this device)"
    );
    Ok(ExitCode::SUCCESS)
}

pub fn library_remove_device(
    client: &Client,
    library: Uuid,
    device: Uuid,
) -> anyhow::Result<ExitCode> {
    let change: MembershipChangeJson =
        client.delete(&format!("/libraries/{library}/devices/{device}"))?;
    if !change.committed {
        println!(
            "the removal of device {device} from library {library} is {PENDING} (configuration \
             entry {}); in a library of two voters it needs both: if that device is gone for \
             good, see `lsync library force-reconfigure --help`",
            change.config_sequence
        );
        return Ok(exit(false));
    }
    Ok(change_done(
        &change,
        &format!(
            "device {device} was removed from library {library}: every member refuses it from \
             now on; it keeps its copy, read-only"
        ),
    ))
}

pub fn library_set_role(
    client: &Client,
    library: Uuid,
    device: Uuid,
    role: &str,
) -> anyhow::Result<ExitCode> {
    let change: MembershipChangeJson = client.put(
        &format!("/libraries/{library}/devices/{device}/preference"),
        &PreferenceRequest { preference: role.to_owned() },
    )?;
    let meaning = match role {
        "learner" => "it stays a learner (a voter is demoted)",
        "voter" => "it becomes a voter once caught up",
        _ => "the leader keeps the number of voters odd",
    };
    Ok(change_done(
        &change,
        &format!("device {device} of library {library}: role {role}; {meaning}"),
    ))
}

pub fn library_force_reconfigure(
    client: &Client,
    library: Uuid,
    voters: Vec<Uuid>,
) -> anyhow::Result<ExitCode> {
    let list = voters.iter().map(Uuid::to_string).collect::<Vec<_>>().join(", ");
    let change: MembershipChangeJson = client.post(
        &format!("/libraries/{library}/force-reconfigure"),
        Some(&ForceReconfigureRequest { voters, i_understand_this_is_unsafe: true }),
    )?;
    Ok(change_done(
        &change,
        &format!(
            "configuration of library {library} forced: voters {list}; the other former voters \
             are removed and refused if they come back"
        ),
    ))
}

pub fn library_members(client: &Client, library: Uuid, json: bool) -> anyhow::Result<ExitCode> {
    let m: MembersJson = client.get(&format!("/libraries/{library}/members"))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&m)?);
        return Ok(ExitCode::SUCCESS);
    }
    let state = if m.pending {
        "pending: in use, not yet held by a majority of the voters"
    } else {
        "committed"
    };
    println!(
        "library {}  configuration entry {} ({state})  commit sequence {}",
        m.library_id, m.config_sequence, m.commit_sequence
    );
    if !m.member {
        println!("this device is no longer a member (it was removed); its copy is read-only");
    }
    println!("  {:<36}  {:<16}  {:<7}  preference", "device", "name", "role");
    for d in &m.members {
        println!(
            "  {:<36}  {:<16}  {:<7}  {}{}",
            d.device_id,
            d.name,
            d.role,
            d.preference,
            if d.device_id == m.device_id { "  (this device)" } else { "" }
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn library_list(client: &Client, json: bool) -> anyhow::Result<ExitCode> {
    let status: StatusView = client.get("/status")?;
    if json {
        let list: Vec<_> = status
            .libraries
            .iter()
            .map(|l| {
                serde_json::json!({
                    "library_id": l.library_id,
                    "role": l.role,
                    "member_role": l.member_role,
                    "member": l.member,
                    "term": l.term,
                    "last_sequence": l.last_sequence,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(ExitCode::SUCCESS);
    }
    if status.libraries.is_empty() {
        println!("no library: `lsync library create`, or `lsync library join TOKEN`");
    }
    for l in &status.libraries {
        let member = match (&l.member_role, l.member) {
            (Some(r), true) => r.to_lowercase(),
            (_, false) => "removed".to_owned(),
            (None, true) => "-".to_owned(),
        };
        println!(
            "{}  {:<9} {:<7} term {:<4} last sequence {}",
            l.library_id,
            l.role.to_lowercase(),
            member,
            l.term,
            l.last_sequence
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `lsync put` and `lsync tag add`: writes `request` as proposal `proposal_id` (the one given
/// with `--proposal-id`, else a new one), so that when the answer is lost ([`EXIT_UNKNOWN`])
/// it can say which proposal to look up — one line on stdout naming it and
/// `lsync status --proposal ID` (with `--json`, a `WriteJson` whose status is `unknown`) — and
/// a retry with the same id is safe: the daemon never commits one proposal id twice.
pub fn put(
    client: &Client,
    library: Uuid,
    mut request: ChangeRequest,
    proposal_id: Option<Uuid>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    request.to_change().map_err(anyhow::Error::msg)?;
    let proposal_id = proposal_id.unwrap_or_else(Uuid::new_v4);
    request.proposal_id = Some(proposal_id);
    let answer = client.post(&format!("/libraries/{library}/changes"), Some(&request));
    let out: lsync::control::api::WriteJson = match answer {
        Ok(out) => out,
        Err(e) => {
            if unknown(&e) {
                print_unknown(library, proposal_id, json)?;
            }
            return Err(e);
        }
    };
    let pending = out.status == "pending";
    if json {
        println!("{}", serde_json::to_string(&out)?);
    } else if pending {
        println!(
            "pending as proposal {}: the leader sequenced it at {}, but a majority of the voters \
             did not hold it in time; it commits once (`lsync status --proposal` follows it)",
            out.proposal_id.map(|p| p.to_string()).unwrap_or_default(),
            out.last_sequence.map(|s| s.to_string()).unwrap_or_default()
        );
    } else if let (Some(first), Some(last)) = (out.first_sequence, out.last_sequence) {
        if first == last {
            println!("committed sequence {last}");
        } else {
            println!("committed sequences {first}..={last}");
        }
    } else {
        println!(
            "queued as proposal {}: no leader is reachable now; shown on this device already, \
             it will be committed once one is",
            out.proposal_id.map(|p| p.to_string()).unwrap_or_default()
        );
    }
    let committed = out.first_sequence.is_some() && !pending;
    Ok(exit(committed))
}

/// Whether a request failed with its outcome unknown (it may have been carried out).
fn unknown(e: &anyhow::Error) -> bool {
    e.downcast_ref::<super::client::RequestError>()
        .is_some_and(|r| r.failure == super::client::Failure::Unknown)
}

/// The line (on stdout) of a write whose answer was lost: the proposal to look up.
fn print_unknown(library: Uuid, proposal_id: Uuid, json: bool) -> anyhow::Result<()> {
    if json {
        let out = lsync::control::api::WriteJson {
            status: "unknown".into(),
            first_sequence: None,
            last_sequence: None,
            proposal_id: Some(proposal_id),
        };
        println!("{}", serde_json::to_string(&out)?);
    } else {
        println!(
            "proposal {proposal_id}: outcome unknown; `lsync status --library {library} \
             --proposal {proposal_id}` tells what became of it, and the same command with \
             --proposal-id {proposal_id} retries it safely (never committed twice)"
        );
    }
    Ok(())
}

/// `lsync outbox list`: exit 0, or [`EXIT_PENDING`] when an entry failed (a script sees that
/// something needs the user).
pub fn outbox_list(client: &Client, library: Uuid, json: bool) -> anyhow::Result<ExitCode> {
    #[derive(serde::Deserialize, serde::Serialize)]
    struct Entries {
        entries: Vec<lsync::control::api::OutboxEntryJson>,
    }
    let out: Entries = client.get(&format!("/libraries/{library}/outbox"))?;
    let failed = out.entries.iter().any(|e| e.state == "failed");
    if json {
        println!("{}", serde_json::to_string(&out)?);
    } else if out.entries.is_empty() {
        println!("the outbox is empty");
    } else {
        for e in &out.entries {
            match &e.failed_reason {
                Some(reason) => println!(
                    "{}  failed    {} change(s), {} attempt(s): {reason}",
                    e.proposal_id, e.changes, e.attempts
                ),
                None if e.state == "delivered" => println!(
                    "{}  delivered {} change(s): committed by a leader, not yet applied here",
                    e.proposal_id, e.changes
                ),
                None => println!(
                    "{}  queued    {} change(s), {} failed attempt(s){}",
                    e.proposal_id,
                    e.changes,
                    e.attempts,
                    e.last_error.as_ref().map(|l| format!(", last: {l}")).unwrap_or_default()
                ),
            }
        }
    }
    Ok(if failed { ExitCode::from(EXIT_PENDING) } else { ExitCode::SUCCESS })
}

/// `lsync conflicts list`: the conflicts, the most recently decided first, one block each.
pub fn conflicts_list(
    client: &Client,
    library: Uuid,
    limit: u64,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let out: ConflictsJson =
        client.get(&format!("/libraries/{library}/conflicts?limit={limit}"))?;
    if json {
        println!("{}", serde_json::to_string(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    for line in conflict_lines(&out) {
        println!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}

/// The text of `lsync conflicts list`.
fn conflict_lines(out: &ConflictsJson) -> Vec<String> {
    if out.conflicts.is_empty() {
        return vec!["no conflict recorded".to_owned()];
    }
    let mut lines = Vec::new();
    for c in &out.conflicts {
        lines.extend(conflict_block(c));
    }
    let shown = out.conflicts.len() as u64;
    if shown < out.count {
        lines.push(format!("… {} more: `--limit {}`", out.count - shown, out.count));
    }
    lines
}

/// One conflict: what was decided, then both values.
fn conflict_block(c: &ConflictJson) -> Vec<String> {
    let fields =
        if c.fields.is_empty() { "the whole record".to_owned() } else { c.fields.join(", ") };
    let won = match c.outcome.as_str() {
        "stored" => "the stored value kept",
        "change" => "the change's value taken",
        "mixed" => "some fields each way",
        "rejected" => "the change refused (its writer's view rolled back)",
        other => other,
    };
    vec![
        format!(
            "{}  {} {}  {}  fields: {fields}  {}: {won}",
            c.id, c.model_type, c.record_id, c.change_type, c.policy
        ),
        format!(
            "  stored   {}  (version {}, at {})",
            c.stored,
            c.current_version,
            c.stored_hlc.as_deref().unwrap_or("unknown")
        ),
        format!(
            "  proposed {}  (based on version {}, at {}, by device {})",
            c.proposed, c.base_version, c.proposed_hlc, c.origin_device
        ),
    ]
}

/// `lsync outbox retry ID`.
pub fn outbox_retry(client: &Client, library: Uuid, proposal: Uuid) -> anyhow::Result<ExitCode> {
    let _: serde_json::Value =
        client.post::<(), _>(&format!("/libraries/{library}/outbox/{proposal}/retry"), None)?;
    println!("proposal {proposal}: queued again; `lsync status --proposal {proposal}` follows it");
    Ok(ExitCode::SUCCESS)
}

/// `lsync outbox discard ID`.
pub fn outbox_discard(client: &Client, library: Uuid, proposal: Uuid) -> anyhow::Result<ExitCode> {
    let _: serde_json::Value = client.delete(&format!("/libraries/{library}/outbox/{proposal}"))?;
    println!("proposal {proposal}: discarded; its changes are given up");
    Ok(ExitCode::SUCCESS)
}

/// `lsync status --proposal ID`: exit 0 committed, [`EXIT_PENDING`] queued, [`EXIT_UNKNOWN`]
/// not known on this device.
pub fn proposal_status(
    client: &Client,
    library: Uuid,
    proposal: Uuid,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let p: lsync::control::api::ProposalJson =
        client.get(&format!("/libraries/{library}/proposals/{proposal}"))?;
    let code = match p.state.as_str() {
        "committed" => ExitCode::SUCCESS,
        "queued" => ExitCode::from(EXIT_PENDING),
        // committed by a leader, not applied here yet: committed
        "delivered" => ExitCode::SUCCESS,
        // refused for good by a leader: not committed (`lsync outbox retry|discard`)
        "failed" => ExitCode::from(EXIT_ERROR),
        _ => ExitCode::from(EXIT_UNKNOWN),
    };
    if json {
        println!("{}", serde_json::to_string(&p)?);
        return Ok(code);
    }
    match p.state.as_str() {
        "committed" => {
            let seqs = match (p.sequences.first(), p.sequences.last()) {
                (Some(a), Some(b)) if a == b => format!("sequence {a}"),
                (Some(a), Some(b)) if b - a + 1 == p.sequences.len() as u64 => {
                    format!("sequences {a}..={b}")
                }
                _ => format!(
                    "sequences {}",
                    p.sequences.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
                ),
            };
            println!("proposal {proposal}: committed, {seqs}");
        }
        "failed" => println!(
            "proposal {proposal}: refused for good by the leader ({}); it stays in this \
             device's outbox until `lsync outbox retry {proposal}` or `lsync outbox discard \
             {proposal}`",
            p.last_error.unwrap_or_default()
        ),
        "delivered" => println!(
            "proposal {proposal}: committed by the leader, not yet applied on this device \
             (shown here meanwhile)"
        ),
        "queued" => println!(
            "proposal {proposal}: queued in this device's outbox ({} failed attempts{}); it \
             is committed once a leader is reachable",
            p.attempts,
            p.last_error.map(|e| format!(", last: {e}")).unwrap_or_default()
        ),
        _ => println!(
            "proposal {proposal}: not known on this device (its log, up to sequence {}, and \
             its outbox hold nothing of it): it was not written here, was refused, or is \
             committed by the leader and not yet applied here — ask again in a moment",
            p.last_sequence
        ),
    }
    Ok(code)
}

/// `lsync token rotate`: through the running daemon if there is one, else in the file.
pub fn token_rotate(dir: &std::path::Path) -> anyhow::Result<ExitCode> {
    let file = dir.join(lsync::control::TOKEN_FILE);
    if dir.join(lsync::control::ADDR_FILE).exists() {
        let client = Client::connect(dir)?;
        let _: serde_json::Value = client.post::<(), _>("/token/rotate", None)?;
        println!(
            "the daemon uses a new token, in {}; the old one is refused from now on",
            file.display()
        );
    } else {
        if !dir.is_dir() {
            bail!("data directory {} does not exist: run `lsync init` first", dir.display());
        }
        lsync::control::rotate_token_file(dir)
            .map_err(|e| anyhow::anyhow!("cannot write {} ({e})", file.display()))?;
        println!(
            "no daemon runs for {}: a new token is in {}; the daemon uses it from its next start",
            dir.display(),
            file.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn log(
    client: &Client,
    library: Uuid,
    since: u64,
    limit: u64,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let page: LogPage =
        client.get(&format!("/libraries/{library}/log?since={since}&limit={limit}"))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&page)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:>8} {:>5} {:<7} {:<10} {:<24} {:>4} data",
        "seq", "term", "change", "model", "record", "ver"
    );
    for e in &page.entries {
        println!(
            "{:>8} {:>5} {:<7} {:<10} {:<24} {:>4} {}",
            e.sequence, e.term, e.change_type, e.model_type, e.record_id, e.version, e.data
        );
    }
    if let Some(hash) = page.entries.last().and_then(|e| e.hash.as_deref()) {
        println!("hash chain at {}: {hash}", page.entries.last().map_or(0, |e| e.sequence));
    }
    let shown_to = page.entries.last().map(|e| e.sequence).unwrap_or(since);
    if shown_to < page.last_sequence {
        println!(
            "… {} more (last sequence {}): `lsync log --since {shown_to}`",
            page.last_sequence - shown_to,
            page.last_sequence
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conflict(id: &str, outcome: &str) -> ConflictJson {
        ConflictJson {
            id: id.into(),
            model_type: "tag".into(),
            record_id: "t1".into(),
            policy: "last_writer_wins".into(),
            outcome: outcome.into(),
            fields: vec!["name".into()],
            kept: vec!["name".into()],
            taken: vec![],
            change_type: "patch".into(),
            base_version: 2,
            current_version: 3,
            stored: serde_json::json!({"id": "t1", "name": "newer"}),
            stored_hlc: Some("20.0@d".into()),
            proposed: serde_json::json!({"name": "older"}),
            proposed_hlc: "10.0@d".into(),
            origin_device: Uuid::from_u128(2),
            proposal_id: Uuid::from_u128(3),
            decided_at_ms: 30,
        }
    }

    #[test]
    fn a_conflict_lists_what_won_and_both_values() {
        let out = ConflictsJson {
            library_id: Uuid::from_u128(1),
            count: 3,
            conflicts: vec![conflict("p:0", "stored"), conflict("q:0", "rejected")],
        };
        let lines = conflict_lines(&out);
        assert_eq!(lines.len(), 7, "{lines:#?}");
        assert_eq!(
            lines[0],
            "p:0  tag t1  patch  fields: name  last_writer_wins: the stored value kept"
        );
        assert!(lines[1].contains(r#""name":"newer""#) && lines[1].contains("version 3"));
        assert!(lines[2].contains(r#""name":"older""#) && lines[2].contains("version 2"));
        assert!(lines[3].ends_with("the change refused (its writer's view rolled back)"));
        assert_eq!(lines[6], "… 1 more: `--limit 3`");
    }

    #[test]
    fn no_conflict_says_so() {
        let out = ConflictsJson { library_id: Uuid::nil(), count: 0, conflicts: vec![] };
        assert_eq!(conflict_lines(&out), vec!["no conflict recorded".to_owned()]);
    }
}
