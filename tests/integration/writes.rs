//! Writes from any device, and nothing lost across failover.

use std::collections::BTreeSet;

use lsync::{Change, Tag, WriteOutcome};
use uuid::Uuid;

use crate::fixture::{wait_until, Cluster};

fn tag(id: &str, name: &str) -> Change {
    Change::insert(&Tag { id: id.to_string(), name: name.to_string(), color: None })
}

/// The tag ids of node `i`, and how many log entries each id has (to catch double commits).
fn tags_and_counts(
    cluster: &Cluster,
    i: usize,
    lib: Uuid,
) -> (BTreeSet<String>, Vec<(String, usize)>) {
    let db = cluster.node(i).database(lib).unwrap();
    let log = db.fetch_since(0, 1_000_000).unwrap();
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    // the test writes tags only; configuration entries (one opens each leader's term) repeat
    // the same record id by design
    for e in log.iter().filter(|e| e.model_type == "tag") {
        *counts.entry(e.record_id.clone()).or_default() += 1;
    }
    let ids = db.dump().unwrap()["tag"]
        .iter()
        .map(|row| row.split('|').next().unwrap().trim_matches('\'').to_string())
        .collect();
    (ids, counts.into_iter().filter(|(_, n)| *n > 1).collect())
}

#[actix_rt::test]
async fn a_follower_write_is_committed_by_the_leader_and_visible_everywhere() {
    let cluster = Cluster::start(3).await;
    let lib = cluster.create_library(0, &[1, 2]).await;
    // the log starts with configuration entries: the writes follow them
    let base = cluster.last_sequence(0, lib);
    let out = cluster.node(0).write(lib, vec![tag("a", "from the leader")]).await.unwrap();
    assert_eq!(out, WriteOutcome::Committed { first_sequence: base + 1, last_sequence: base + 1 });
    let out = cluster.node(1).write(lib, vec![tag("b", "from a follower")]).await.unwrap();
    let WriteOutcome::Committed { first_sequence, last_sequence } = out else { panic!("{out:?}") };
    assert_eq!((first_sequence, last_sequence), (base + 2, base + 2));
    // read-your-writes: applied on the writing follower when the call returns
    assert!(cluster.dump(1, lib)["tag"].iter().any(|r| r.contains("from a follower")));
    cluster.assert_converged(lib, 0, &[1, 2]).await;
    let e = cluster.node(0).database(lib).unwrap().fetch_since(base + 1, 1).unwrap().remove(0);
    assert_eq!((e.sequence, e.record_id.as_str()), (base + 2, "b"));
    assert_eq!(e.origin_device, cluster.node(1).device_id(), "the proposer is the entry's origin");
    assert!(e.proposal_id.is_some());
    // the same API with upsert semantics on every device: a second insert of "b" updates it
    cluster.node(2).write(lib, vec![tag("b", "renamed on another follower")]).await.unwrap();
    cluster.assert_converged(lib, 0, &[1, 2]).await;
    assert!(cluster.dump(0, lib)["tag"].iter().any(|r| r.contains("renamed on another follower")));
}

#[actix_rt::test]
async fn a_write_without_a_reachable_leader_is_queued_survives_a_restart_and_is_delivered_once() {
    let mut cluster = Cluster::start(3).await;
    let lib = cluster.create_library(0, &[1, 2]).await;
    cluster.node(0).write(lib, vec![tag("first", "x")]).await.unwrap();
    cluster.assert_converged(lib, 0, &[1, 2]).await;
    // no majority for node 1 alone: no leader anywhere it can reach
    cluster.stop(0).await;
    cluster.stop(2).await;
    let out = cluster.node(1).write(lib, vec![tag("queued", "while alone")]).await.unwrap();
    assert!(matches!(out, WriteOutcome::Queued { .. }), "{out:?}");
    cluster.restart(1).await;
    assert_eq!(
        cluster.node(1).status(lib).await.unwrap().outbox_pending,
        1,
        "the outbox survived the restart"
    );
    // a leader is back: the old one, with node 1 a majority of two
    cluster.restart(0).await;
    let (leader, _) = cluster.wait_for_leader(lib, &[0, 1], 0).await;
    wait_until("the queued change is committed", || async {
        cluster.dump(leader, lib)["tag"].iter().any(|r| r.contains("while alone"))
    })
    .await;
    let other = 1 - leader;
    cluster.assert_converged(lib, leader, &[other]).await;
    wait_until("the outbox is empty", || async {
        cluster.node(1).status(lib).await.unwrap().outbox_pending == 0
    })
    .await;
    let (_, doubles) = tags_and_counts(&cluster, leader, lib);
    assert!(doubles.is_empty(), "committed more than once: {doubles:?}");
}

#[actix_rt::test]
async fn a_deposed_leaders_unreplicated_changes_are_proposed_again() {
    let mut cluster = Cluster::start(3).await;
    let lib = cluster.create_library(0, &[1, 2]).await;
    let mut oracle = BTreeSet::new();
    for i in 0..20 {
        cluster.node(0).write(lib, vec![tag(&format!("t{i}"), "replicated")]).await.unwrap();
        oracle.insert(format!("t{i}"));
    }
    cluster.assert_converged(lib, 0, &[1, 2]).await;
    // cut the leader off, let it commit changes nobody fetches, then kill it
    for f in [1, 2] {
        let peer = cluster.node(f).peer_id();
        cluster.node(0).network().remove_member(lib, peer).await.unwrap();
    }
    for i in 0..5 {
        cluster
            .node(0)
            .write(lib, vec![tag(&format!("orphan{i}"), "only on the old leader")])
            .await
            .unwrap();
        oracle.insert(format!("orphan{i}"));
    }
    cluster.stop(0).await;
    let (leader, term) = cluster.wait_for_leader(lib, &[1, 2], 1).await;
    for i in 0..10 {
        cluster
            .node(leader)
            .write(lib, vec![tag(&format!("new{i}"), "on the new leader")])
            .await
            .unwrap();
        oracle.insert(format!("new{i}"));
    }
    // the old leader comes back, steps down, rebuilds and proposes its orphans again
    cluster.restart(0).await;
    let (again, _) = cluster.wait_for_leader(lib, &[0, 1, 2], term - 1).await;
    wait_until("every change is on the leader", || async {
        tags_and_counts(&cluster, again, lib).0 == oracle
    })
    .await;
    let others: Vec<usize> = (0..3).filter(|&i| i != again).collect();
    cluster.assert_converged(lib, again, &others).await;
    for i in 0..3 {
        let (ids, doubles) = tags_and_counts(&cluster, i, lib);
        assert_eq!(ids, oracle, "node {i} holds every change");
        assert!(doubles.is_empty(), "node {i}: applied twice: {doubles:?}");
    }
}

#[actix_rt::test]
async fn both_sides_of_a_two_device_partition_write_and_converge_after_healing() {
    let cluster = Cluster::start(2).await;
    let lib = cluster.create_library(0, &[1]).await;
    let mut oracle = BTreeSet::new();
    for i in 0..10 {
        cluster.node(0).write(lib, vec![tag(&format!("before{i}"), "x")]).await.unwrap();
        oracle.insert(format!("before{i}"));
    }
    cluster.assert_converged(lib, 0, &[1]).await;
    cluster.cut(lib, 0, &[1]).await;
    // node 1 elects itself (one vote suffices in a two-device library); node 0 still leads
    wait_until("node 1 leads its side", || async {
        cluster.node(1).status(lib).await.unwrap().role == lsync::SyncRole::Leader
    })
    .await;
    for i in 0..10 {
        cluster.node(0).write(lib, vec![tag(&format!("left{i}"), "side 0")]).await.unwrap();
        cluster.node(1).write(lib, vec![tag(&format!("right{i}"), "side 1")]).await.unwrap();
        oracle.insert(format!("left{i}"));
        oracle.insert(format!("right{i}"));
    }
    // heal
    cluster.heal(lib, 0, &[1]).await;
    let (leader, _) = cluster.wait_for_leader(lib, &[0, 1], 1).await;
    wait_until("every change of both sides is on the leader", || async {
        tags_and_counts(&cluster, leader, lib).0 == oracle
    })
    .await;
    cluster.assert_converged(lib, leader, &[1 - leader]).await;
    for i in 0..2 {
        let (ids, doubles) = tags_and_counts(&cluster, i, lib);
        assert_eq!(ids, oracle, "node {i}");
        assert!(doubles.is_empty(), "node {i}: {doubles:?}");
    }
}

#[actix_rt::test]
async fn a_proposal_retried_after_a_lost_reply_is_committed_once() {
    use lsync::crates::protocol::{ChangeType, ProposedChange, SyncMessage};
    let cluster = Cluster::start(2).await;
    let lib = cluster.create_library(0, &[1]).await;
    let client =
        crate::security::raw_client(cluster.node(0), lsync::crates::protocol::DEFAULT_MAX_FRAME)
            .await;
    let device = crate::security::make_member(&cluster, 0, lib, &client).await;
    // the log holds configuration entries (the creation, the joins, the raw client's): the
    // proposal comes after them
    let base = cluster.last_sequence(0, lib);
    let proposal = SyncMessage::Propose {
        library_id: lib,
        term: 1,
        proposal_id: Uuid::new_v4(),
        origin_device: device,
        changes: vec![ProposedChange {
            model_type: "tag".into(),
            record_id: "once".into(),
            change_type: ChangeType::Insert,
            data: lsync::crates::storage::encode(&Tag {
                id: "once".into(),
                name: "x".into(),
                color: None,
            }),
            base_version: None,
            hlc: None,
        }],
    };
    let first = client.request(cluster.node(0).peer_id(), proposal.clone()).await.unwrap();
    // the reply was "lost": the proposer sends the same proposal again
    let second = client.request(cluster.node(0).peer_id(), proposal.clone()).await.unwrap();
    assert!(
        matches!(first, SyncMessage::ProposalResult { first_sequence: f, last_sequence: l, .. }
            if (f, l) == (base + 1, base + 1)),
        "{first:?}"
    );
    assert_eq!(first, second);
    assert_eq!(cluster.last_sequence(0, lib), base + 1);
    assert_eq!(cluster.data_record_ids(0, lib), vec!["once".to_string()]);
    // a device proposes only its own changes
    let forged = match proposal {
        SyncMessage::Propose { library_id, term, changes, .. } => SyncMessage::Propose {
            library_id,
            term,
            proposal_id: Uuid::new_v4(),
            origin_device: cluster.node(1).device_id(),
            changes,
        },
        _ => unreachable!(),
    };
    let resp = client.request(cluster.node(0).peer_id(), forged).await.unwrap();
    assert!(matches!(resp, SyncMessage::Error { .. }), "{resp:?}");
    assert_eq!(cluster.last_sequence(0, lib), base + 1);
    client.shutdown().await;
}

/// An outbox entry a leader refused for good stays in the outbox as failed, visible
/// (`Node::outbox`, status), until it is retried — delivered again under its proposal id and
/// committed once — or discarded; a queued entry is never discarded (issue 17).
#[actix_rt::test]
async fn a_failed_outbox_entry_is_kept_until_retried_or_discarded() {
    use lsync::crates::storage::{outbox, OutboxState};
    let cluster = Cluster::start(1).await;
    let lib = cluster.node(0).create_library().await.unwrap();
    let db = cluster.node(0).database(lib).unwrap();
    // Two entries refused for good (queued and marked failed in one transaction, so the
    // proposer never sees them pending).
    let (retried, discarded) = (Uuid::new_v4(), Uuid::new_v4());
    for (p, id) in [(retried, "r1"), (discarded, "d1")] {
        let registry = db.registry().clone();
        db.write(|conn| {
            outbox::push(conn, &registry, p, &[tag(id, "refused once")])?;
            outbox::mark_failed(conn, p, "refused: a test", 1)
        })
        .unwrap();
    }
    let listed = cluster.node(0).outbox(lib).await.unwrap();
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(listed.iter().all(|e| matches!(e.state, OutboxState::Failed { .. })), "{listed:?}");
    // Nothing delivers a failed entry by itself.
    assert!(entries_of(&db, retried).is_empty());

    // Retried: delivered again (this device leads: committed locally) under its id, once.
    assert!(cluster.node(0).outbox_retry(lib, retried).await.unwrap());
    wait_until("the retried proposal is committed", || async {
        !entries_of(&db, retried).is_empty()
    })
    .await;
    wait_until("the retried entry leaves the outbox", || async {
        cluster.node(0).outbox(lib).await.unwrap().iter().all(|e| e.proposal_id != retried)
    })
    .await;
    assert_eq!(entries_of(&db, retried).len(), 1);
    // Retrying or discarding what is not a failed entry changes nothing.
    assert!(!cluster.node(0).outbox_retry(lib, retried).await.unwrap());
    assert!(!cluster.node(0).outbox_discard(lib, Uuid::new_v4()).await.unwrap());

    // Discarded: gone, never committed.
    assert!(cluster.node(0).outbox_discard(lib, discarded).await.unwrap());
    assert!(cluster.node(0).outbox(lib).await.unwrap().is_empty());
    assert!(entries_of(&db, discarded).is_empty());
}

/// The log entries that carry `proposal`.
fn entries_of(db: &lsync::Database, proposal: Uuid) -> Vec<lsync::SyncLogEntry> {
    db.with_reader(|conn| lsync::crates::storage::SyncLog::proposal_entries(conn, proposal))
        .unwrap()
}

/// A write with a caller-chosen proposal id (`Node::write_with_id`, what the control API's
/// `proposal_id` and `lsync put` use): its entries carry exactly that id on every device, and
/// writing the same id again never commits twice — answered with the first write's range when
/// committed, still one outbox entry while queued, one commit once a leader takes it. A nil id
/// is refused.
#[actix_rt::test]
async fn a_write_carries_its_chosen_proposal_id_and_is_never_committed_twice() {
    let mut cluster = Cluster::start(3).await;
    let lib = cluster.create_library(0, &[1, 2]).await;
    let base = cluster.last_sequence(0, lib);

    // from a follower, and from the leader
    for (via, id) in [(1, "from-a-follower"), (0, "from-the-leader")] {
        let proposal = Uuid::new_v4();
        let first = cluster.node(via).write_with_id(lib, proposal, vec![tag(id, "once")]).await;
        let first = first.unwrap();
        assert!(matches!(first, WriteOutcome::Committed { .. }), "{first:?}");
        // sent again (say its answer was lost), even with other changes: the same answer
        let again = cluster.node(via).write_with_id(lib, proposal, vec![tag(id, "twice")]).await;
        assert_eq!(again.unwrap(), first);
        cluster.assert_converged(lib, 0, &[1, 2]).await;
        for node in 0..3 {
            let entries = entries_of(&cluster.node(node).database(lib).unwrap(), proposal);
            let ids: Vec<_> = entries.iter().map(|e| e.record_id.as_str()).collect();
            assert_eq!(ids, vec![id], "node {node}: the entries of {proposal}");
        }
    }
    assert_eq!(cluster.last_sequence(0, lib), base + 2, "two writes, two entries");
    let (_, doubles) = tags_and_counts(&cluster, 0, lib);
    assert!(doubles.is_empty(), "committed more than once: {doubles:?}");

    let nil = cluster.node(1).write_with_id(lib, Uuid::nil(), vec![tag("nil", "x")]).await;
    assert!(matches!(&nil, Err(lsync::NodeError::InvalidInput(m)) if m.contains("nil")), "{nil:?}");

    // no leader for node 1 alone: queued, and queued again under the same id — one entry
    cluster.stop(0).await;
    cluster.stop(2).await;
    let queued = Uuid::new_v4();
    for _ in 0..2 {
        let out = cluster.node(1).write_with_id(lib, queued, vec![tag("queued", "alone")]).await;
        assert_eq!(out.unwrap(), WriteOutcome::Queued { proposal_id: queued });
    }
    let outbox = cluster.node(1).outbox(lib).await.unwrap();
    assert_eq!(outbox.iter().map(|e| e.proposal_id).collect::<Vec<_>>(), vec![queued]);

    // a leader again: committed once, under its id; the same id after that is answered
    // from the log
    cluster.restart(0).await;
    let (leader, _) = cluster.wait_for_leader(lib, &[0, 1], 0).await;
    let db = cluster.node(1).database(lib).unwrap();
    wait_until("the queued write is committed and applied on node 1", || async {
        !entries_of(&db, queued).is_empty()
    })
    .await;
    let entries = entries_of(&db, queued);
    let out = cluster.node(1).write_with_id(lib, queued, vec![tag("queued", "alone")]).await;
    assert_eq!(
        out.unwrap(),
        WriteOutcome::Committed {
            first_sequence: entries[0].sequence,
            last_sequence: entries[0].sequence
        }
    );
    assert_eq!(entries.len(), 1, "{entries:?}");
    cluster.assert_converged(lib, leader, &[1 - leader]).await;
    let (_, doubles) = tags_and_counts(&cluster, leader, lib);
    assert!(doubles.is_empty(), "committed more than once: {doubles:?}");
}

/// `Durability::Majority`: a write is answered `Committed` only once a majority of the voters
/// hold it — on the leader and on a follower — at sequences the commit sequence covers and
/// that hold its entries; a leader alone of a two-voter library answers `Pending` with the
/// range it sequenced, and that write commits once the other voter is back.
#[actix_rt::test]
async fn a_majority_write_is_answered_once_a_majority_holds_it_else_pending() {
    use lsync::Durability;
    let mut cluster = Cluster::start(3).await;
    let lib = cluster.create_library(0, &[1, 2]).await;
    for (node, id) in [(0, "m-leader"), (1, "m-follower")] {
        let pid = Uuid::new_v4();
        let outcome = cluster
            .node(node)
            .write_with(lib, pid, Durability::Majority, vec![tag(id, "held")])
            .await
            .unwrap();
        let WriteOutcome::Committed { first_sequence, last_sequence } = outcome else {
            panic!("{id}: {outcome:?}")
        };
        let st = cluster.node(node).status(lib).await.unwrap();
        assert!(st.commit_sequence >= last_sequence, "{id}: {st:?}");
        // the entries are where the answer says, on the leader (the log every device follows)
        let db = cluster.node(0).database(lib).unwrap();
        let held = db.fetch_range(first_sequence, last_sequence).unwrap();
        assert!(held.iter().all(|e| e.proposal_id == Some(pid) && e.record_id == id), "{held:?}");
    }
    // A bad durability is refused by the API before anything is written.
    let request = lsync::control::api::ChangeRequest {
        model_type: "tag".into(),
        record_id: None,
        change_type: None,
        data: serde_json::json!({"id": "x", "name": "x"}),
        proposal_id: None,
        durability: Some("quorum".into()),
    };
    assert!(request.durability().unwrap_err().contains("\"quorum\""));

    // Two voters, one stopped: the leader alone cannot have a majority.
    cluster.stop(2).await;
    let mut two = Cluster::start(2).await;
    let lib2 = two.create_library(0, &[1]).await;
    two.stop(1).await;
    let pid = Uuid::new_v4();
    let outcome = two
        .node(0)
        .write_with(lib2, pid, Durability::Majority, vec![tag("alone", "pending")])
        .await
        .unwrap();
    let WriteOutcome::Pending { proposal_id, last_sequence, .. } = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(proposal_id, pid);
    // Local writes are still answered at once.
    let local = two.node(0).write(lib2, vec![tag("local", "alone")]).await.unwrap();
    assert!(matches!(local, WriteOutcome::Committed { .. }), "{local:?}");
    // Back: the pending write commits, once, where it was sequenced.
    two.restart(1).await;
    wait_until("the pending write is committed", || async {
        two.node(0).status(lib2).await.unwrap().commit_sequence >= last_sequence
    })
    .await;
    let again = two
        .node(0)
        .write_with(lib2, pid, Durability::Majority, vec![tag("alone", "pending")])
        .await
        .unwrap();
    assert_eq!(
        again,
        WriteOutcome::Committed { first_sequence: last_sequence, last_sequence },
        "asked again, the same id is answered from the log"
    );
}

/// A `majority` write waits, without polling, for the commit sequence to reach it: sequenced by
/// a leader cut off from the other voter of a two-voter library, it is not answered while the
/// cut lasts, and once the cut heals and the commit sequence covers it, it is answered
/// `Committed` at the sequences where its entries are (Node::write_with wakes on what the
/// library's actors publish, issue 16).
#[actix_rt::test]
async fn a_waiting_majority_write_completes_once_the_commit_reaches_it() {
    use lsync::Durability;
    let two = Cluster::start(2).await;
    let lib = two.create_library(0, &[1]).await;
    two.assert_converged(lib, 0, &[1]).await;
    two.cut(lib, 0, &[1]).await;
    let (leader, pid) = (two.node(0).clone(), Uuid::new_v4());
    let write = actix_rt::spawn(async move {
        leader
            .write_with(lib, pid, Durability::Majority, vec![tag("waits", "for the commit")])
            .await
    });
    let db = two.node(0).database(lib).unwrap();
    let entries = |db: &lsync::Database| {
        db.fetch_since(0, 1_000_000)
            .unwrap()
            .into_iter()
            .filter(|e| e.proposal_id == Some(pid))
            .collect::<Vec<_>>()
    };
    wait_until("the leader sequenced the write", || async { !entries(&db).is_empty() }).await;
    // the other voter cannot have it: no majority holds it, the write waits
    assert!(!write.is_finished(), "answered while no majority could hold it");
    two.heal(lib, 0, &[1]).await;
    let outcome = write.await.unwrap().unwrap();
    let WriteOutcome::Committed { first_sequence, last_sequence } = outcome else {
        panic!("{outcome:?}")
    };
    // answered where its entry is, on both devices, and covered by the commit sequence
    let st = two.node(0).status(lib).await.unwrap();
    assert!(st.commit_sequence >= last_sequence, "{st:?}");
    let held = entries(&db);
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!((held[0].sequence, held[0].sequence), (first_sequence, last_sequence));
    let follower = two.node(1).database(lib).unwrap();
    wait_until("the other voter holds it", || async { !entries(&follower).is_empty() }).await;
    assert_eq!(entries(&follower)[0].sequence, last_sequence);
}

/// Local-first writes (docs/architecture.md, "Local-first writes"): a follower cut off from the
/// leader shows each of its own writes in its tables as soon as the write returns; after
/// healing each is committed once and every device ends identical (issue 18).
#[actix_rt::test]
async fn a_follower_cut_off_from_the_leader_sees_its_own_writes_at_once_and_they_commit_once() {
    use lsync::crates::storage::{decode, ModelHandler, TagHandler};
    let cluster = Cluster::start(3).await;
    let lib = cluster.create_library(0, &[1, 2]).await;
    cluster.node(0).write(lib, vec![tag("shared", "before")]).await.unwrap();
    cluster.assert_converged(lib, 0, &[1, 2]).await;
    // node 2 alone: no leader it can reach, and no majority to elect one
    cluster.cut(lib, 2, &[0, 1]).await;
    let db = cluster.node(2).database(lib).unwrap();
    let shown = |id: &str| {
        db.with_reader(|conn| TagHandler.load(conn, id))
            .unwrap()
            .map(|s| decode::<Tag>(&s.data).unwrap().name)
    };
    let committed_before = cluster.last_sequence(2, lib);
    for i in 0..100 {
        let out =
            cluster.node(2).write(lib, vec![tag(&format!("offline{i}"), "alone")]).await.unwrap();
        assert!(matches!(out, WriteOutcome::Queued { .. }), "write {i}: {out:?}");
        assert_eq!(shown(&format!("offline{i}")).as_deref(), Some("alone"), "write {i}");
    }
    let out = cluster.node(2).write(lib, vec![tag("shared", "edited offline")]).await.unwrap();
    assert!(matches!(out, WriteOutcome::Queued { .. }), "{out:?}");
    assert_eq!(shown("shared").as_deref(), Some("edited offline"));
    assert_eq!(cluster.last_sequence(2, lib), committed_before, "the log stays committed-only");
    assert_eq!(cluster.node(2).status(lib).await.unwrap().outbox_pending, 101);
    let report = lsync::crates::storage::verify(db.path(), db.registry()).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(report.pending_proposals, 101);
    // the other side goes on meanwhile
    cluster.node(0).write(lib, vec![tag("leader-side", "x")]).await.unwrap();

    // heal
    cluster.heal(lib, 2, &[0, 1]).await;
    wait_until("node 2's outbox is empty", || async { db.outbox_list_all().unwrap().is_empty() })
        .await;
    let (leader, _) = cluster.wait_for_leader(lib, &[0, 1, 2], 0).await;
    let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    cluster.assert_converged(lib, leader, &others).await;
    for i in 0..3 {
        let (ids, doubles) = tags_and_counts(&cluster, i, lib);
        assert_eq!(ids.len(), 102, "node {i}: {ids:?}");
        assert!(doubles.iter().all(|(id, _)| id == "shared"), "node {i}: {doubles:?}");
    }
    assert!(cluster.dump(0, lib)["tag"].iter().any(|r| r.contains("edited offline")));
    assert!(db.pending_undo().unwrap().is_empty());
    let report = lsync::crates::storage::verify(db.path(), db.registry()).unwrap();
    assert!(report.is_ok() && report.pending_proposals == 0, "{report:?}");
}

#[actix_rt::test]
async fn two_devices_editing_different_fields_of_one_tag_while_partitioned_both_keep_their_edit() {
    use lsync::crates::storage::{decode, ModelHandler, TagHandler};
    let cluster = Cluster::start(3).await;
    let lib = cluster.create_library(0, &[1, 2]).await;
    cluster.node(0).write(lib, vec![tag("t", "one")]).await.unwrap();
    cluster.assert_converged(lib, 0, &[1, 2]).await;
    cluster.cut(lib, 2, &[0, 1]).await;
    let shown = |i: usize| {
        let db = cluster.node(i).database(lib).unwrap();
        db.with_reader(|conn| TagHandler.load(conn, "t"))
            .unwrap()
            .map(|s| decode::<Tag>(&s.data).unwrap())
            .map(|t| (t.name, t.color))
    };
    // node 2, cut off, paints the tag; the majority side renames it meanwhile
    let paint = Change::update_fields("tag", "t", &serde_json::json!({ "color": "#ff0000" }));
    let out = cluster.node(2).write(lib, vec![paint]).await.unwrap();
    assert!(matches!(out, WriteOutcome::Queued { .. }), "{out:?}");
    assert_eq!(shown(2), Some(("one".to_owned(), Some("#ff0000".to_owned()))));
    let rename = Change::update_fields("tag", "t", &serde_json::json!({ "name": "renamed" }));
    let out = cluster.node(1).write(lib, vec![rename]).await.unwrap();
    assert!(matches!(out, WriteOutcome::Committed { .. }), "{out:?}");
    assert_eq!(shown(1), Some(("renamed".to_owned(), None)));

    cluster.heal(lib, 2, &[0, 1]).await;
    let db = cluster.node(2).database(lib).unwrap();
    wait_until("node 2's outbox is empty", || async { db.outbox_list_all().unwrap().is_empty() })
        .await;
    let (leader, _) = cluster.wait_for_leader(lib, &[0, 1, 2], 0).await;
    let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    cluster.assert_converged(lib, leader, &others).await;
    for i in 0..3 {
        assert_eq!(
            shown(i),
            Some(("renamed".to_owned(), Some("#ff0000".to_owned()))),
            "node {i}: both edits survive"
        );
    }
}
