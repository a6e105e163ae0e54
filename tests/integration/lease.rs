//! The leader lease on the write path (docs/architecture.md, "The leader lease"): a leader of
//! three voters whose followers stopped answering does not answer a write as committed once
//! its lease expired; a leader of two voters has no lease and answers as before.

use std::time::Duration;

use lsync::{Change, NodeError, SyncConfig, SyncRole, Tag, WriteOutcome};

use crate::fixture::{wait_until, Cluster};

fn tag(id: &str) -> Change {
    Change::insert(&Tag { id: id.to_string(), name: id.to_string(), color: None })
}

/// Fast heartbeats, a leader timeout long enough (lease 2.4 s) that the leader is still
/// leading, its lease expired, for a while before check quorum deposes it.
fn config() -> SyncConfig {
    SyncConfig {
        heartbeat_interval: Duration::from_millis(100),
        leader_timeout: Duration::from_secs(3),
        ..SyncConfig::fast()
    }
}

#[actix_rt::test]
async fn a_three_voter_leader_whose_followers_stopped_answering_does_not_answer_committed() {
    let mut cluster = Cluster::start_with(3, config()).await;
    let lib = cluster.create_library(0, &[1, 2]).await;
    cluster.wait_for_voters(lib, &[0, 1, 2], 3).await;
    let node = cluster.node(0);
    wait_until("the leader holds its lease", || async {
        node.status(lib).await.is_ok_and(|s| s.lease_held == Some(true))
    })
    .await;
    let out = node.write(lib, vec![tag("under-lease")]).await.unwrap();
    assert!(matches!(out, WriteOutcome::Committed { .. }), "{out:?}");

    cluster.stop(1).await;
    cluster.stop(2).await;
    let node = cluster.node(0);
    wait_until("the lease expired, the device still leading", || async {
        node.status(lib)
            .await
            .is_ok_and(|s| s.role == SyncRole::Leader && s.lease_held == Some(false))
    })
    .await;
    let out = node.write(lib, vec![tag("after-lease")]).await;
    assert!(
        matches!(out, Err(NodeError::OutcomeUnknown(_)) | Ok(WriteOutcome::Queued { .. })),
        "a write after the lease expired must not be answered committed: {out:?}"
    );
    if out.is_err() {
        let waits = node.metrics().lease_waits.load(std::sync::atomic::Ordering::Relaxed);
        assert!(waits >= 1, "the write waited for a heartbeat round");
    }
}

#[actix_rt::test]
async fn a_two_voter_leader_has_no_lease_and_answers_alone() {
    let mut cluster = Cluster::start_with(2, config()).await;
    let lib = cluster.create_library(0, &[1]).await;
    cluster.wait_for_voters(lib, &[0, 1], 2).await;
    cluster.stop(1).await;
    let node = cluster.node(0);
    wait_until("the leader sees its follower gone", || async {
        node.status(lib).await.is_ok_and(|s| s.followers.iter().all(|f| !f.connected))
    })
    .await;
    let status = node.status(lib).await.unwrap();
    assert_eq!((status.role, status.lease_held), (SyncRole::Leader, None));
    let out = node.write(lib, vec![tag("alone")]).await.unwrap();
    assert!(matches!(out, WriteOutcome::Committed { .. }), "{out:?}");
}
