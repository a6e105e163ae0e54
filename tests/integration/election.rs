//! Leader election, fencing with terms, and role transitions with real nodes.

use lsync::{Change, Tag};

use crate::fixture::{wait_until, Cluster};

fn tag(i: u64) -> Change {
    Change::insert(&Tag { id: format!("tag-{i}"), name: format!("tag {i}"), color: None })
}

/// The record ids of `tag(i)` for `i` in `range`, in order: what the test wrote.
fn ids(range: std::ops::Range<u64>) -> Vec<String> {
    range.map(|i| format!("tag-{i}")).collect()
}

async fn commit_range(
    cluster: &Cluster,
    node: usize,
    lib: uuid::Uuid,
    range: std::ops::Range<u64>,
) {
    for i in range {
        cluster.node(node).commit(lib, tag(i)).await.unwrap();
    }
}

#[actix_rt::test]
async fn a_new_leader_takes_over_when_the_leader_of_three_dies_and_the_old_one_comes_back_as_follower(
) {
    let mut cluster = Cluster::start(3).await;
    // three voters (the fixture waits for them): two of them elect a leader without the third
    let lib = cluster.create_library(0, &[1, 2]).await;
    commit_range(&cluster, 0, lib, 0..100).await;
    cluster.assert_converged(lib, 0, &[1, 2]).await;

    cluster.stop(0).await;
    let (leader, term) = cluster.wait_for_leader(lib, &[1, 2], 1).await;
    assert!(term >= 2);
    let follower = if leader == 1 { 2 } else { 1 };
    // writes continue on the new leader, and its follower follows it; the log holds every write
    // once, in order (besides configuration entries, e.g. the one the new leader writes first
    // in its term)
    commit_range(&cluster, leader, lib, 100..200).await;
    cluster.assert_converged(lib, leader, &[follower]).await;
    assert_eq!(cluster.data_record_ids(leader, lib), ids(0..200));

    // the old leader comes back: it learns the new term, follows, and converges
    cluster.restart(0).await;
    let (again, term2) = cluster.wait_for_leader(lib, &[0, 1, 2], term - 1).await;
    assert_eq!((again, term2), (leader, term), "the returning device does not disturb the leader");
    commit_range(&cluster, leader, lib, 200..250).await;
    cluster.assert_converged(lib, leader, &[0, follower]).await;
    assert_eq!(cluster.data_record_ids(0, lib), ids(0..250));
    cluster.assert_terms_open_with_configuration(0, lib);
    let st = cluster.node(0).status(lib).await.unwrap();
    assert_eq!(st.role, lsync::SyncRole::Follower);
    // the old leader's transaction manager is fenced
    let err = cluster.node(0).commit(lib, tag(9_999)).await.unwrap_err();
    assert!(err.to_string().contains("not the leader"), "{err}");
}

#[actix_rt::test]
async fn a_two_device_library_fails_over_when_the_leader_dies() {
    let mut cluster = Cluster::start(2).await;
    // two voters (the fixture waits for the second): either may be elected alone
    let lib = cluster.create_library(0, &[1]).await;
    commit_range(&cluster, 0, lib, 0..20).await;
    cluster.assert_converged(lib, 0, &[1]).await;
    cluster.stop(0).await;
    let (leader, _) = cluster.wait_for_leader(lib, &[1], 1).await;
    assert_eq!(leader, 1);
    let before = cluster.last_sequence(1, lib);
    let mut last = before;
    for i in 20..40 {
        let entry = cluster.node(1).commit(lib, tag(i)).await.unwrap();
        assert!(
            entry.sequence > last,
            "sequences go on from the log: {} after {last}",
            entry.sequence
        );
        last = entry.sequence;
    }
    assert_eq!(cluster.last_sequence(1, lib), last);
    assert_eq!(cluster.data_record_ids(1, lib), ids(0..40), "every write once, in order");
    cluster.restart(0).await;
    cluster.assert_converged(lib, 1, &[0]).await;
    assert_eq!(cluster.data_record_ids(0, lib), ids(0..40));
    cluster.assert_terms_open_with_configuration(0, lib);
}

#[actix_rt::test]
async fn leadership_is_transferred_while_changes_stream() {
    let cluster = Cluster::start(3).await;
    let lib = cluster.create_library(0, &[1, 2]).await;
    commit_range(&cluster, 0, lib, 0..50).await;
    let target = cluster.node(1).device_id();

    // a writer that keeps committing on whichever device leads, as a host would
    let mut next = 50u64;
    let mut transferred = false;
    let deadline = tokio::time::Instant::now() + crate::fixture::DEADLINE;
    while next < 400 {
        assert!(tokio::time::Instant::now() < deadline, "writes stalled at {next}");
        if next == 100 && !transferred {
            cluster.node(0).transfer_leadership(lib, target).await.unwrap();
            transferred = true;
        }
        let mut done = false;
        for i in 0..3 {
            if cluster.node(i).commit(lib, tag(next)).await.is_ok() {
                done = true;
                break;
            }
        }
        if done {
            next += 1;
        } else {
            // held during the handover, or no leader yet: try again shortly
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
    let (leader, term) = cluster.wait_for_leader(lib, &[0, 1, 2], 1).await;
    assert_eq!(leader, 1, "the leadership moved to the target");
    assert!(term >= 2);
    cluster.assert_converged(lib, 1, &[0, 2]).await;
    // every change committed exactly once (the log also holds configuration entries: the
    // first entry of each leader's term among them)
    let rows = cluster.dump(1, lib);
    assert_eq!(rows["tag"].len(), 400);
    let mut written = cluster.data_record_ids(1, lib);
    written.sort_by_key(|id| id["tag-".len()..].parse::<u64>().unwrap());
    assert_eq!(written, ids(0..400));
}

#[actix_rt::test]
async fn a_stale_leaders_messages_are_refused() {
    use lsync::crates::actors::network::{NetworkConfig, NetworkHandle};
    use lsync::crates::protocol::{ErrorCode, SyncMessage, SyncRole};

    let mut cluster = Cluster::start(3).await;
    let lib = cluster.create_library(0, &[1, 2]).await;
    commit_range(&cluster, 0, lib, 0..10).await;
    cluster.assert_converged(lib, 0, &[1, 2]).await;
    let old = cluster.node(0).device_info();
    // where the deposed leader's log ends: its next push would start after it
    let old_last = cluster.last_sequence(0, lib);
    cluster.stop(0).await;
    let (leader, term) = cluster.wait_for_leader(lib, &[1, 2], 1).await;
    let follower = if leader == 1 { 2 } else { 1 };

    // the deposed leader (its own key) still believes in term 1 and pushes to a follower
    let id = lsync::Identity::load_or_create(&cluster.dir.path().join("dev0")).unwrap();
    assert_eq!(id.peer_id(), old.peer_id);
    let (stale, _) =
        NetworkHandle::start(id.keypair.clone(), NetworkConfig::default()).await.unwrap();
    struct Silent;
    impl actix::Actor for Silent {
        type Context = actix::Context<Self>;
    }
    impl actix::Handler<lsync::crates::actors::network::InboundRequest> for Silent {
        type Result = ();
        fn handle(
            &mut self,
            _: lsync::crates::actors::network::InboundRequest,
            _: &mut Self::Context,
        ) {
        }
    }
    let f = cluster.node(follower).device_info();
    stale
        .register_library(
            lib,
            vec![(f.peer_id, f.addresses.clone())],
            actix::Actor::start(Silent).recipient(),
        )
        .await
        .unwrap();
    // A stale leader's push, with an entry inside it: refused, nothing applied.
    let push = SyncMessage::NewEntries {
        commit_sequence: 0,
        library_id: lib,
        term: 1,
        from_sequence: old_last + 1,
        to_sequence: old_last + 1,
        entry_count: 1,
        prev_term: 1,
        entries: vec![lsync::SyncLogEntry {
            sequence: old_last + 1,
            term: 1,
            origin_device: uuid::Uuid::new_v4(),
            timestamp_ms: 0,
            model_type: "tag".into(),
            record_id: "stale".into(),
            change_type: lsync::ChangeType::Delete,
            version: 1,
            data: vec![],
            proposal_id: None,
            hash: None,
            stamp: None,
        }],
        prev_hash: None,
    };
    // the follower holds the new leader's log, its entry that opens the new term included
    wait_until("the follower holds the new leader's log", || async {
        let at = cluster.node(follower).database(lib).unwrap().last_position().unwrap();
        at.term == term && at.sequence == cluster.last_sequence(leader, lib)
    })
    .await;
    let follower_last = cluster.last_sequence(follower, lib);
    let resp = stale.request(f.peer_id, push).await.unwrap();
    assert!(
        matches!(
            resp,
            SyncMessage::Error { code: ErrorCode::StaleTerm | ErrorCode::NotLeader, .. }
        ),
        "{resp:?}"
    );
    assert_eq!(cluster.last_sequence(follower, lib), follower_last, "nothing applied");
    assert!(!cluster.data_record_ids(follower, lib).contains(&"stale".to_string()));
    let beat = SyncMessage::Heartbeat {
        commit_sequence: 0,
        features: 0,
        library_id: lib,
        term: 1,
        current_sequence: old_last,
        last_term: 1,
        role: SyncRole::Leader,
        last_hash: None,
    };
    // a stale leader's heartbeat is refused with the follower's newer term (docs/protocol.md
    // section 6, rule 2): learning it makes the stale leader step down
    let resp = stale.request(f.peer_id, beat).await.unwrap();
    let leader_id = cluster.node(leader).device_id();
    assert!(
        matches!(
            resp,
            SyncMessage::Error { code: ErrorCode::StaleTerm, term: t, leader_hint: Some(l), .. }
                if t == term && l == leader_id
        ),
        "{resp:?}"
    );
    // the follower still follows the new leader in the new term
    let st = cluster.node(follower).status(lib).await.unwrap();
    assert_eq!((st.term, st.leader), (term, Some(cluster.node(leader).device_id())));
    stale.shutdown().await;
    // and writes go on
    commit_range(&cluster, leader, lib, 10..20).await;
    cluster.assert_converged(lib, leader, &[follower]).await;
    // nothing else changed: the follower holds what the leaders wrote, nothing of the stale push
    assert_eq!(cluster.data_record_ids(follower, lib), ids(0..20));
}

#[actix_rt::test]
async fn a_follower_that_asks_a_non_leader_is_told_the_leader_and_re_points() {
    use std::time::Duration;
    // no heartbeat or election for the length of the test: only the NotLeader hint can re-point
    let config = lsync::SyncConfig {
        heartbeat_interval: Duration::from_secs(3_600),
        leader_timeout: Duration::from_secs(7_200),
        ..lsync::SyncConfig::fast()
    };
    let cluster = Cluster::start_with(3, config).await;
    let lib = cluster.create_library(0, &[1]).await;
    commit_range(&cluster, 0, lib, 0..30).await;
    cluster.assert_converged(lib, 0, &[1]).await;
    // device 2 joins the scripted way (add-device, then join) believing device 1 leads
    let infos: Vec<_> = (0..3).map(|i| cluster.node(i).device_info()).collect();
    let added = cluster.node(0).add_device(lib, infos[2].clone()).await.unwrap();
    assert!(added.config_sequence > 0, "{added:?}");
    // device 1 learns of device 2 from the log (no add-device of its own any more): once it
    // has, it lets device 2 in to answer it
    wait_until("device 1 lists device 2 as a member", || async {
        cluster.node(1).membership(lib).await.unwrap().configuration.contains(infos[2].device_id)
    })
    .await;
    cluster.node(2).join_library(lib, infos[1].clone(), infos.clone()).await.unwrap();
    // device 1 answers NotLeader naming device 0; device 2 follows device 0 and catches up
    cluster.assert_converged(lib, 0, &[2]).await;
    let st = cluster.node(2).status(lib).await.unwrap();
    assert_eq!(st.leader, Some(infos[0].device_id));
    assert_eq!(cluster.data_record_ids(2, lib), ids(0..30));
}
