//! Conflicts between concurrent edits of one field, end to end (docs/architecture.md,
//! "Conflicts"): real nodes, partitions made with `Cluster::cut`/`heal`. The edit made later
//! (by its hybrid logical clock timestamp) wins under `last_writer_wins` even when the leader
//! sequences it first; `reject` refuses the stale edit and rolls its writer's view back; a
//! deposed leader's re-proposed change does not undo a newer value. Every device records the
//! same conflict, lists it (`Node::conflicts`), counts it in its status, and reports it with a
//! `ConflictRecorded` event.

use lsync::crates::storage::{
    decode, Conflict, ConflictOutcome, ConflictPolicy, ModelHandler, OutboxState, TagHandler,
};
use lsync::{Change, ModelRegistry, NodeError, SyncConfig, SyncEvent, Tag, WriteOutcome};
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::fixture::{wait_until, Cluster};

fn tag(id: &str, name: &str) -> Change {
    Change::insert(&Tag { id: id.to_string(), name: name.to_string(), color: None })
}

/// A change of tag `id`'s name only (a Patch).
fn rename(id: &str, name: &str) -> Change {
    Change::update_fields("tag", id, &serde_json::json!({ "name": name }))
}

/// The name of tag `id` as node `i`'s tables show it (its pending changes included).
fn name_on(cluster: &Cluster, i: usize, lib: Uuid, id: &str) -> Option<String> {
    let db = cluster.node(i).database(lib).expect("library open");
    let stored = db.with_reader(|conn| TagHandler.load(conn, id)).expect("read the tag")?;
    Some(decode::<Tag>(&stored.data).expect("a tag").name)
}

/// Every conflict node `i` lists.
async fn conflicts_on(cluster: &Cluster, i: usize, lib: Uuid) -> Vec<Conflict> {
    cluster.node(i).conflicts(lib, 100).await.expect("conflicts")
}

/// Milliseconds since the Unix epoch.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Waits until this machine's clock is past `ms`, so that a change stamped from now on is
/// later than one stamped at `ms` on any device of the cluster (they share the clock).
async fn wait_past(ms: u64) {
    wait_until(&format!("the clock passes {ms}"), || async move { now_ms() > ms }).await;
}

/// The timestamp (physical part) of the change queued in node `i`'s outbox.
async fn queued_stamp_ms(cluster: &Cluster, i: usize, lib: Uuid) -> u64 {
    let outbox = cluster.node(i).outbox(lib).await.expect("outbox");
    let [entry] = &outbox[..] else { panic!("node {i}: one queued write expected: {outbox:?}") };
    let [change] = &entry.changes[..] else { panic!("one change expected: {entry:?}") };
    change.hlc.expect("a change queued in the outbox carries its timestamp").physical_ms
}

/// The `ConflictRecorded` events among those `rx` received so far (added to `seen`).
fn drain_conflict_events(rx: &mut broadcast::Receiver<SyncEvent>, seen: &mut Vec<SyncEvent>) {
    while let Ok(event) = rx.try_recv() {
        if matches!(event, SyncEvent::ConflictRecorded { .. }) {
            seen.push(event);
        }
    }
}

/// Waits until every node of `nodes` lists exactly one conflict and reported it with an event
/// (`rxs`, subscribed before the conflict could be decided), then returns the conflict, the
/// same on every node.
async fn one_conflict_everywhere(
    cluster: &Cluster,
    lib: Uuid,
    nodes: &[usize],
    rxs: &mut [broadcast::Receiver<SyncEvent>],
) -> Conflict {
    wait_until("every device lists the conflict", || async {
        for &i in nodes {
            if conflicts_on(cluster, i, lib).await.len() != 1 {
                return false;
            }
        }
        true
    })
    .await;
    let reference = conflicts_on(cluster, nodes[0], lib).await.remove(0);
    for &i in nodes {
        assert_eq!(conflicts_on(cluster, i, lib).await, vec![reference.clone()], "node {i}");
        assert_eq!(cluster.node(i).status(lib).await.unwrap().conflicts, 1, "node {i}'s status");
    }
    let mut seen: Vec<Vec<SyncEvent>> = vec![Vec::new(); rxs.len()];
    let expected = SyncEvent::ConflictRecorded {
        library_id: lib,
        id: reference.id.clone(),
        model_type: reference.model_type.clone(),
        record_id: reference.record_id.clone(),
        outcome: reference.outcome,
    };
    wait_until("every device reports the conflict with an event", || {
        for (rx, seen) in rxs.iter_mut().zip(seen.iter_mut()) {
            drain_conflict_events(rx, seen);
        }
        let all = seen.iter().all(|s| !s.is_empty());
        async move { all }
    })
    .await;
    for (i, events) in nodes.iter().zip(&seen) {
        assert_eq!(events, &vec![expected.clone()], "node {i}: once, naming the conflict");
    }
    reference
}

/// Node `x` is cut off from the others and edits the name of `id` (queued: no leader in
/// reach); once the clock has moved on, node `y` edits the same field and the leader commits
/// it; then `x` is healed, and its older edit reaches the leader after `y`'s. Returns the
/// events subscribed on every node before the heal.
async fn stale_edit_after_a_newer_one(
    cluster: &Cluster,
    lib: Uuid,
    (x, y): (usize, usize),
    id: &str,
) -> Vec<broadcast::Receiver<SyncEvent>> {
    let others: Vec<usize> = (0..3).filter(|&i| i != x).collect();
    cluster.cut(lib, x, &others).await;
    let out = cluster.node(x).write(lib, vec![rename(id, "from x, earlier")]).await.unwrap();
    assert!(matches!(out, WriteOutcome::Queued { .. }), "no leader in reach of x: {out:?}");
    assert_eq!(name_on(cluster, x, lib, id).as_deref(), Some("from x, earlier"), "shown at once");
    wait_past(queued_stamp_ms(cluster, x, lib).await).await;
    let out = cluster.node(y).write(lib, vec![rename(id, "from y, later")]).await.unwrap();
    assert!(matches!(out, WriteOutcome::Committed { .. }), "{out:?}");
    let rxs = (0..3).map(|i| cluster.node(i).subscribe()).collect();
    cluster.heal(lib, x, &others).await;
    rxs
}

/// Same field, `last_writer_wins`: the edit made later wins although the leader sequenced it
/// first; the older one is recorded as a conflict with both values, outcome `stored`.
#[actix_rt::test]
async fn the_later_edit_of_one_field_wins_though_sequenced_first_and_the_conflict_is_listed() {
    let cluster = Cluster::start(3).await;
    let lib = cluster.create_library(0, &[1, 2]).await;
    cluster.node(0).write(lib, vec![tag("t1", "original")]).await.unwrap();
    cluster.assert_converged(lib, 0, &[1, 2]).await;
    let (x, y) = (1, 2);
    let mut rxs = stale_edit_after_a_newer_one(&cluster, lib, (x, y), "t1").await;
    let conflict = one_conflict_everywhere(&cluster, lib, &[0, 1, 2], &mut rxs).await;
    assert_eq!(conflict.outcome, ConflictOutcome::Stored);
    assert_eq!(conflict.policy, ConflictPolicy::LastWriterWins);
    assert_eq!((conflict.model_type.as_str(), conflict.record_id.as_str()), ("tag", "t1"));
    assert_eq!(conflict.fields, ["name"]);
    assert_eq!(conflict.kept, ["name"]);
    assert_eq!(conflict.origin_device, cluster.node(x).device_id());
    assert_eq!(decode::<Tag>(&conflict.stored).unwrap().name, "from y, later");
    let proposed: serde_json::Value = decode(&conflict.proposed).unwrap();
    assert_eq!(proposed, serde_json::json!({ "name": "from x, earlier" }));
    assert!(conflict.proposed_hlc < conflict.stored_hlc.expect("the stored value's timestamp"));
    wait_until("x's write left its outbox", || async {
        cluster.node(x).outbox(lib).await.unwrap().is_empty()
    })
    .await;
    let (leader, _) = cluster.wait_for_leader(lib, &[0, 1, 2], 0).await;
    let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    cluster.assert_converged(lib, leader, &others).await;
    for i in 0..3 {
        assert_eq!(name_on(&cluster, i, lib, "t1").as_deref(), Some("from y, later"), "node {i}");
    }
}

/// Same field, `reject`: the stale edit is refused, its writer's outbox entry fails naming the
/// conflict (with a `ProposalFailed` event), its view rolls back to the committed value, and
/// the conflict is listed everywhere with outcome `rejected`.
#[actix_rt::test]
async fn reject_refuses_the_stale_edit_rolls_the_writer_back_and_lists_the_conflict() {
    let mut registry = ModelRegistry::with_builtin();
    registry.set_policy("tag", ConflictPolicy::Reject);
    let cluster = Cluster::start_with_registry(3, SyncConfig::fast(), registry).await;
    let lib = cluster.create_library(0, &[1, 2]).await;
    cluster.node(0).write(lib, vec![tag("t1", "original")]).await.unwrap();
    cluster.assert_converged(lib, 0, &[1, 2]).await;
    let (x, y) = (1, 2);
    let mut x_events = cluster.node(x).subscribe();
    let mut rxs = stale_edit_after_a_newer_one(&cluster, lib, (x, y), "t1").await;
    let conflict = one_conflict_everywhere(&cluster, lib, &[0, 1, 2], &mut rxs).await;
    assert_eq!(conflict.outcome, ConflictOutcome::Rejected);
    assert_eq!(conflict.policy, ConflictPolicy::Reject);
    assert_eq!(conflict.fields, ["name"]);
    assert_eq!(conflict.origin_device, cluster.node(x).device_id());
    assert_eq!(decode::<Tag>(&conflict.stored).unwrap().name, "from y, later");
    // the writer sees the refusal: its outbox entry failed, status and an event say why
    wait_until("x's outbox entry failed", || async {
        cluster.node(x).status(lib).await.unwrap().outbox_failed == 1
    })
    .await;
    let outbox = cluster.node(x).outbox(lib).await.unwrap();
    let [entry] = &outbox[..] else { panic!("{outbox:?}") };
    let OutboxState::Failed { reason, .. } = &entry.state else { panic!("{entry:?}") };
    assert!(reason.contains("conflict"), "{reason}");
    let mut failed = None;
    wait_until("x reports the refusal with an event", || {
        while let Ok(event) = x_events.try_recv() {
            if let SyncEvent::ProposalFailed { proposal_id, reason, .. } = event {
                failed = Some((proposal_id, reason));
            }
        }
        let done = failed.is_some();
        async move { done }
    })
    .await;
    let (proposal_id, reason) = failed.unwrap();
    assert_eq!(proposal_id, entry.proposal_id);
    assert_eq!(proposal_id, conflict.proposal_id);
    assert!(reason.contains("conflict"), "{reason}");
    // its view rolled back to the committed value; every device holds the same
    let (leader, _) = cluster.wait_for_leader(lib, &[0, 1, 2], 0).await;
    let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    cluster.assert_converged(lib, leader, &others).await;
    for i in 0..3 {
        assert_eq!(name_on(&cluster, i, lib, "t1").as_deref(), Some("from y, later"), "node {i}");
    }
}

/// A deposed leader's change that no follower fetched, re-proposed by its repair after a newer
/// edit of the same field was committed under the next leader, does not undo that edit: the
/// newer value stays everywhere, and the conflict is listed.
#[actix_rt::test]
async fn a_deposed_leaders_reproposed_change_does_not_undo_a_newer_value() {
    let cluster = Cluster::start(3).await;
    let lib = cluster.create_library(0, &[1, 2]).await;
    cluster.node(0).write(lib, vec![tag("t1", "original")]).await.unwrap();
    cluster.assert_converged(lib, 0, &[1, 2]).await;
    let first_term = cluster.node(0).status(lib).await.unwrap().term;
    // the leader, cut off, commits an edit nobody fetches
    cluster.cut(lib, 0, &[1, 2]).await;
    let orphan = Uuid::new_v4();
    let change = vec![rename("t1", "old leader's, earlier")];
    match cluster.node(0).write_with_id(lib, orphan, change).await {
        // committed on its disk; whether it still led when it answered does not matter here
        Ok(WriteOutcome::Committed { .. }) | Err(NodeError::OutcomeUnknown(_)) => {}
        other => panic!("the cut-off leader did not commit the change itself: {other:?}"),
    }
    let old_log = cluster.node(0).database(lib).unwrap().fetch_since(0, u64::MAX).unwrap();
    let entry = old_log.iter().find(|e| e.proposal_id == Some(orphan)).expect("in its log");
    let stamp = entry.stamp.as_ref().expect("a library at feature version 3 stamps entries");
    // a new leader on the other side; a device there edits the same field, later
    let (leader, _) = cluster.wait_for_leader(lib, &[1, 2], first_term).await;
    let writer = if leader == 1 { 2 } else { 1 };
    wait_past(stamp.hlc.physical_ms).await;
    let out = cluster.node(writer).write(lib, vec![rename("t1", "newer")]).await.unwrap();
    assert!(matches!(out, WriteOutcome::Committed { .. }), "{out:?}");
    let mut rxs: Vec<_> = (0..3).map(|i| cluster.node(i).subscribe()).collect();
    // heal: the old leader follows, repairs its log and proposes its orphan again
    cluster.heal(lib, 0, &[1, 2]).await;
    let conflict = one_conflict_everywhere(&cluster, lib, &[0, 1, 2], &mut rxs).await;
    assert_eq!(conflict.outcome, ConflictOutcome::Stored);
    assert_eq!(conflict.proposal_id, orphan);
    assert_eq!(conflict.origin_device, cluster.node(0).device_id());
    assert_eq!(conflict.proposed_hlc, stamp.hlc);
    assert_eq!(decode::<Tag>(&conflict.stored).unwrap().name, "newer");
    let proposed: serde_json::Value = decode(&conflict.proposed).unwrap();
    assert_eq!(proposed, serde_json::json!({ "name": "old leader's, earlier" }));
    let (leader, _) = cluster.wait_for_leader(lib, &[0, 1, 2], first_term).await;
    let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    cluster.assert_converged(lib, leader, &others).await;
    for i in 0..3 {
        assert_eq!(name_on(&cluster, i, lib, "t1").as_deref(), Some("newer"), "node {i}");
        assert!(
            cluster.data_entries(i, lib).iter().all(|e| e.proposal_id != Some(orphan)),
            "node {i}: the orphan's change is in the log"
        );
    }
}
