//! The client commands: `library …`, `put`, `tag add`, `log`. Each talks to the running daemon
//! through the control API.

use std::process::ExitCode;

use anyhow::bail;
use lsync::control::api::{
    ChangeRequest, CreatedLibrary, DeviceJson, JoinRequest, LogPage, StatusView,
};
use uuid::Uuid;

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
             with `lsync library join`"
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
    let leader = &created.leader;
    println!("library {id} created; this device ({}) leads it", leader.device_id);
    println!();
    println!("to add another device (after `lsync init` and `lsync run` there):");
    println!("  1. here, with the ids and address `lsync status` prints on that device:");
    println!(
        "     lsync library add-device --library {id} --device-id <DEVICE_ID> --peer-id <PEER_ID> \
         --addr <ADDRESS>"
    );
    println!("  2. there:");
    let addrs: String = leader.addresses.iter().map(|a| format!(" --leader-addr {a}")).collect();
    println!(
        "     lsync library join --library {id} --leader-device-id {} --leader-peer-id {}{addrs}",
        leader.device_id, leader.peer_id
    );
    Ok(ExitCode::SUCCESS)
}

pub fn library_add_device(
    client: &Client,
    library: Uuid,
    device: DeviceJson,
) -> anyhow::Result<ExitCode> {
    device.to_info().map_err(anyhow::Error::msg)?;
    let _: serde_json::Value =
        client.post(&format!("/libraries/{library}/devices"), Some(&device))?;
    println!("device {} is a member of library {library}", device.device_id);
    Ok(ExitCode::SUCCESS)
}

pub fn library_join(
    client: &Client,
    library: Uuid,
    leader: DeviceJson,
    members: Vec<DeviceJson>,
) -> anyhow::Result<ExitCode> {
    leader.to_info().map_err(anyhow::Error::msg)?;
    for m in &members {
        m.to_info().map_err(anyhow::Error::msg)?;
    }
    let leader_id = leader.device_id;
    let _: serde_json::Value = client
        .post(&format!("/libraries/{library}/join"), Some(&JoinRequest { leader, members }))?;
    println!(
        "joined library {library} as a follower of {leader_id}; `lsync status --watch` shows the \
         catch-up (the leader must have run `lsync library add-device` for this device)"
    );
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
                    "term": l.term,
                    "last_sequence": l.last_sequence,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(ExitCode::SUCCESS);
    }
    if status.libraries.is_empty() {
        println!("no library: `lsync library create` or `lsync library join`");
    }
    for l in &status.libraries {
        println!(
            "{}  {:<9} term {:<4} last sequence {}",
            l.library_id,
            l.role.to_lowercase(),
            l.term,
            l.last_sequence
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn put(
    client: &Client,
    library: Uuid,
    request: ChangeRequest,
    json: bool,
) -> anyhow::Result<ExitCode> {
    request.to_change().map_err(anyhow::Error::msg)?;
    let out: lsync::control::api::WriteJson =
        client.post(&format!("/libraries/{library}/changes"), Some(&request))?;
    if json {
        println!("{}", serde_json::to_string(&out)?);
    } else if let (Some(first), Some(last)) = (out.first_sequence, out.last_sequence) {
        if first == last {
            println!("committed sequence {last}");
        } else {
            println!("committed sequences {first}..={last}");
        }
    } else {
        println!(
            "queued as proposal {}: no leader is reachable now; it will be committed once one is",
            out.proposal_id.map(|p| p.to_string()).unwrap_or_default()
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
