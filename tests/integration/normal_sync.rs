//! `majority` writes under `synchronous = normal` (issue 16, docs/architecture.md "What an
//! acknowledgement promises"): the leader's own copy of an entry counts toward the commit
//! sequence only once an fsync covered it, while its followers fetch, sync and acknowledge the
//! entry meanwhile. A follower's acknowledgement that arrives before the leader's fsync is done
//! must still count once the fsync is: the commit must not wait for the follower's next report
//! (its heartbeat, 30 s by default; here longer than the request timeout, so a write that
//! waited for one would be answered `Pending`).

use std::path::Path;
use std::time::Duration;

use lsync::{
    Change, Durability, NetworkConfig, Node, NodeConfig, StorageOptions, SyncConfig, Synchronous,
    Tag, WriteOutcome,
};
use uuid::Uuid;

use crate::fixture::wait_until;

/// Concurrent writers of `majority` writes, and writes each: enough that a follower's
/// acknowledgement races the leader's own fsync many times.
const WRITERS: usize = 8;
const WRITES_PER_WRITER: usize = 25;

/// A node in `dir/dev<i>` under `synchronous = normal`, whose heartbeats (leader's and
/// follower's) come far apart: later than a `majority` write waits (the request timeout).
async fn start_node(dir: &Path, i: usize) -> Node {
    let sync = SyncConfig {
        heartbeat_interval: Duration::from_secs(3_600),
        leader_timeout: Duration::from_secs(7_200),
        ..SyncConfig::fast()
    };
    let network =
        NetworkConfig { request_timeout: Duration::from_secs(60), ..NetworkConfig::default() };
    let config = NodeConfig {
        sync,
        network,
        storage: StorageOptions { synchronous: Synchronous::Normal, ..StorageOptions::default() },
        ..NodeConfig::default()
    };
    Node::builder(dir.join(format!("dev{i}")))
        .config(config)
        .listen(vec!["/ip4/127.0.0.1/tcp/0".parse().expect("address")])
        .start()
        .await
        .expect("node starts")
}

fn tag(id: &str) -> Change {
    Change::insert(&Tag { id: id.to_string(), name: id.to_string(), color: None })
}

/// Two voters (a majority is both) under `synchronous = normal`: every `majority` write is
/// answered `Committed` — none waits for a heartbeat, which would come only after the request
/// timeout. Before the fix, an acknowledgement that reached the leader before its own fsync
/// was dropped as "beyond the leader's last sequence" and the write was answered `Pending`.
/// With both devices in one process the follower rarely beats the leader's fsync (this test
/// passed on the code before the fix in the runs made): it guards the path end to end, and
/// `leader::actor`'s `under_normal_links_hear_of_commits_the_published_last_sequence_covers`
/// is the test that fails without the fix.
#[actix_rt::test]
async fn majority_writes_under_synchronous_normal_commit_without_waiting_for_a_heartbeat() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
    let dir = tempfile::tempdir().expect("temp dir");
    let leader = start_node(dir.path(), 0).await;
    let follower = start_node(dir.path(), 1).await;
    let lib = leader.create_library().await.expect("create library");
    let invitation = leader.invite(lib, false, Duration::from_secs(600)).await.expect("invite");
    follower.join_with_invite(&invitation.token).await.expect("join with the token");
    wait_until("both devices are voters", || async {
        let mut voters = 0;
        for node in [&leader, &follower] {
            if let Ok(m) = node.membership(lib).await {
                voters += usize::from(m.configuration.voters().len() == 2);
            }
        }
        voters == 2
    })
    .await;

    // Concurrent writers: a commit made while the leader's fsync of the one before runs waits
    // for the next fsync, and its followers acknowledge it long before that.
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let leader = leader.clone();
            actix_rt::spawn(async move {
                let mut pending = Vec::new();
                for i in 0..WRITES_PER_WRITER {
                    let id = format!("normal-{w}-{i}");
                    let outcome = leader
                        .write_with(lib, Uuid::new_v4(), Durability::Majority, vec![tag(&id)])
                        .await
                        .expect("write");
                    match outcome {
                        WriteOutcome::Committed { last_sequence, .. } => {
                            let st = leader.status(lib).await.expect("status");
                            assert!(st.commit_sequence >= last_sequence, "{id}: {st:?}");
                        }
                        other => pending.push((id, other)),
                    }
                }
                pending
            })
        })
        .collect();
    let mut pending = Vec::new();
    for writer in writers {
        pending.extend(writer.await.expect("writer"));
    }
    assert!(pending.is_empty(), "majority writes not committed in time: {pending:?}");
    follower.shutdown().await;
    leader.shutdown().await;
}
