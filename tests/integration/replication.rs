use lsync::{BulkOperation, Change, Location, Tag};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::fixture::{wait_until, Cluster};

fn tag(i: u64, name: &str) -> Tag {
    Tag {
        id: format!("tag-{i}"),
        name: name.to_string(),
        color: Some(format!("#{:06x}", i % 0xffffff)),
    }
}

fn location(i: u64, path: &str) -> Location {
    Location { id: format!("loc-{i}"), name: format!("location {i}"), path: path.to_string() }
}

/// A random but valid mix of inserts, updates and deletes of tags and locations.
fn mixed_changes(
    rng: &mut StdRng,
    live_tags: &mut Vec<u64>,
    live_locs: &mut Vec<u64>,
    next: &mut u64,
) -> Change {
    let roll = rng.gen_range(0..100);
    if roll < 35 || (live_tags.is_empty() && live_locs.is_empty()) {
        *next += 1;
        if rng.gen_bool(0.7) {
            live_tags.push(*next);
            Change::insert(&tag(*next, "new"))
        } else {
            live_locs.push(*next);
            Change::insert(&location(*next, "/new"))
        }
    } else if roll < 85 {
        if !live_tags.is_empty() && (live_locs.is_empty() || rng.gen_bool(0.7)) {
            let id = live_tags[rng.gen_range(0..live_tags.len())];
            Change::update(&tag(id, &format!("renamed {}", rng.gen::<u32>())))
        } else {
            let id = live_locs[rng.gen_range(0..live_locs.len())];
            Change::update(&location(id, &format!("/moved/{}", rng.gen::<u32>())))
        }
    } else if !live_tags.is_empty() && (live_locs.is_empty() || rng.gen_bool(0.7)) {
        let id = live_tags.swap_remove(rng.gen_range(0..live_tags.len()));
        Change::delete::<Tag>(format!("tag-{id}"))
    } else {
        let id = live_locs.swap_remove(rng.gen_range(0..live_locs.len()));
        Change::delete::<Location>(format!("loc-{id}"))
    }
}

#[actix_rt::test]
async fn one_commit_reaches_a_follower() {
    let cluster = Cluster::start(2).await;
    let lib = cluster.create_library(0, &[1]).await;
    // the log opens with configuration entries (the creation, the join, the promotion)
    let base = cluster.last_sequence(0, lib);
    let entry = cluster.node(0).commit(lib, Change::insert(&tag(1, "holiday"))).await.unwrap();
    assert_eq!(entry.sequence, base + 1);
    cluster.assert_converged(lib, 0, &[1]).await;
    assert_eq!(cluster.data_record_ids(1, lib), vec!["tag-1".to_string()]);
    let st = cluster.node(0).status(lib).await.unwrap();
    assert_eq!(st.followers.len(), 1);
    wait_until("the leader records the follower's acknowledgement", || async {
        let st = cluster.node(0).status(lib).await.unwrap();
        st.followers[0].acked_sequence == entry.sequence && st.followers[0].lag == 0
    })
    .await;
}

#[actix_rt::test]
async fn leader_and_three_followers_converge_on_ten_thousand_mixed_changes() {
    let cluster = Cluster::start(4).await;
    let lib = cluster.create_library(0, &[1, 2, 3]).await;
    let mut rng = StdRng::seed_from_u64(10_000);
    let (mut tags, mut locs, mut next) = (Vec::new(), Vec::new(), 0u64);
    let mut committed = 0u64;
    while committed < 10_000 {
        // a mix of single commits and small batches, as a host would make them
        if rng.gen_bool(0.2) {
            let changes: Vec<_> = (0..rng.gen_range(2..50))
                .map(|_| mixed_changes(&mut rng, &mut tags, &mut locs, &mut next))
                .collect();
            committed += cluster.node(0).commit_batch(lib, changes).await.unwrap().len() as u64;
        } else {
            cluster
                .node(0)
                .commit(lib, mixed_changes(&mut rng, &mut tags, &mut locs, &mut next))
                .await
                .unwrap();
            committed += 1;
        }
    }
    let bulk = cluster
        .node(0)
        .commit_bulk(
            lib,
            BulkOperation {
                model_type: "location".into(),
                record_id: "loc-bulk".into(),
                data: b"index /photos (1,000,000 files)".to_vec(),
            },
        )
        .await
        .unwrap();
    cluster.assert_converged(lib, 0, &[1, 2, 3]).await;
    // the bulk entry queued a local job on every follower instead of rows
    for f in 1..=3 {
        let jobs = cluster.node(f).database(lib).unwrap().local_jobs().unwrap();
        assert_eq!(jobs.len(), 1, "follower {f}");
        assert_eq!(jobs[0].sequence, bulk.sequence);
        assert_eq!(jobs[0].data, b"index /photos (1,000,000 files)".to_vec());
    }
    assert!(cluster.node(0).database(lib).unwrap().local_jobs().unwrap().is_empty());
}

/// Commits `n` single-change tag inserts numbered from `start`.
async fn commit_tags(node: &lsync::Node, lib: uuid::Uuid, start: u64, n: u64) {
    for i in start..start + n {
        node.commit(lib, Change::insert(&tag(i, "t"))).await.unwrap();
    }
}

#[actix_rt::test]
async fn follower_stopped_mid_stream_resumes_without_duplicates_or_holes() {
    let mut cluster = Cluster::start(3).await;
    let lib = cluster.create_library(0, &[1, 2]).await;
    let applied_events = |rx: &mut tokio::sync::broadcast::Receiver<lsync::SyncEvent>| {
        let mut applied = Vec::new();
        while let Ok(ev) = rx.try_recv() {
            if let lsync::SyncEvent::EntriesApplied { first, last, .. } = ev {
                applied.extend(first..=last);
            }
        }
        applied
    };
    // the follower holds the leader's whole log (its configuration entries) before the stream:
    // what it applies from now on starts right after `base`
    let base = cluster.last_sequence(0, lib);
    wait_until("follower 1 holds the configuration entries", || async {
        cluster.last_sequence(1, lib) == base
    })
    .await;
    let mut events = cluster.node(1).subscribe();

    commit_tags(cluster.node(0), lib, 0, 300).await;
    wait_until("follower 1 applied part of the stream", || async {
        cluster.last_sequence(1, lib) >= base + 100
    })
    .await;
    cluster.stop(1).await;
    // what the follower had persisted when it stopped (a stop may cut the event of the last
    // batch, never the batch itself: the two are not atomic, the batch and its position are)
    let persisted = cluster.offline_db(1, lib).last_position().unwrap().sequence;
    let first_life = applied_events(&mut events);
    assert!(
        first_life.iter().copied().eq(base + 1..=base + first_life.len() as u64),
        "contiguous from {}: {first_life:?}",
        base + 1
    );
    assert!(base + first_life.len() as u64 <= persisted);
    // the stream goes on while the follower is down
    commit_tags(cluster.node(0), lib, 300, 700).await;
    cluster.restart(1).await;
    let mut events = cluster.node(1).subscribe(); // before any await: nothing is missed
    commit_tags(cluster.node(0), lib, 1_000, 200).await;
    cluster.assert_converged(lib, 0, &[1, 2]).await;
    let end = cluster.last_sequence(0, lib);
    assert_eq!(
        cluster.data_record_ids(1, lib),
        (0..1_200).map(|i| format!("tag-{i}")).collect::<Vec<_>>()
    );
    // the second life applies exactly what follows the persisted position: nothing applied
    // twice, nothing skipped
    let mut second_life = Vec::new();
    wait_until("the second life's events", || {
        second_life.extend(applied_events(&mut events));
        let done = second_life.last() == Some(&end);
        async move { done }
    })
    .await;
    assert_eq!(second_life, (persisted + 1..=end).collect::<Vec<u64>>());
}

#[actix_rt::test]
async fn late_follower_catches_up_on_one_hundred_thousand_entries() {
    let mut cluster = Cluster::start(2).await;
    let lib = cluster.create_library(0, &[1]).await;
    let base = cluster.last_sequence(0, lib);
    for batch in 0..100u64 {
        let changes =
            (0..1_000).map(|i| Change::insert(&tag(batch * 1_000 + i, "bulk import"))).collect();
        cluster.node(0).commit_batch(lib, changes).await.unwrap();
    }
    assert_eq!(cluster.last_sequence(0, lib), base + 100_000);
    // the late device joins with an invitation: a learner that must fetch the whole log,
    // promoted to the third voter once it caught up. (The scripted way, add-device + join,
    // loses it after the first response: see
    // `a_device_joining_the_scripted_way_after_a_long_log_stays_a_member_and_catches_up`.)
    let late = cluster.add_node().await;
    cluster.invite_and_join(lib, 0, late).await;
    cluster.wait_for_members(lib, &[0, 1, late]).await;
    cluster.wait_for_voters(lib, &[0, 1, late], 3).await;
    cluster.assert_converged(lib, 0, &[1, late]).await;
    let leader_last = cluster.last_sequence(0, lib);
    assert!(leader_last > base + 100_000, "the join and the promotion are entries too");
    assert_eq!(cluster.data_entries(late, lib).len(), 100_000);
    let st = cluster.node(late).status(lib).await.unwrap();
    assert_eq!(st.last_sequence, leader_last);
    assert_eq!(st.applier.unwrap().leader_last_sequence, leader_last);
}

/// The scripted join (`add_device` on the leader, `join_library` on the device) into a library
/// whose log holds more than one fetch response (100 entries) before the entry that adds the
/// device. The device starts from a bootstrap configuration that any configuration entry of
/// the log replaces; the library's first entries (configurations without it) must not make it
/// believe it was removed: it stays a member, catches up and becomes the second voter.
#[actix_rt::test]
async fn a_device_joining_the_scripted_way_after_a_long_log_stays_a_member_and_catches_up() {
    let cluster = Cluster::start(2).await;
    let lib = cluster.node(0).create_library().await.unwrap();
    commit_tags(cluster.node(0), lib, 0, 250).await;
    let leader = cluster.node(0).device_info();
    let joiner = cluster.node(1).device_info();
    let added = cluster.node(0).add_device(lib, joiner.clone()).await.unwrap();
    assert!(added.config_sequence > 250, "{added:?}");
    cluster.node(1).join_library(lib, leader, vec![joiner]).await.unwrap();
    wait_until("the joiner catches up, or stops as removed", || async {
        let st = cluster.node(1).status(lib).await.unwrap();
        !st.member || cluster.last_sequence(1, lib) >= added.config_sequence
    })
    .await;
    let st = cluster.node(1).status(lib).await.unwrap();
    assert!(
        st.member,
        "the joiner believes it is no member at sequence {} (configuration of sequence {}), \
         though the leader added it at sequence {}: {st:?}",
        cluster.last_sequence(1, lib),
        st.membership.config_sequence,
        added.config_sequence
    );
    cluster.wait_for_voters(lib, &[0, 1], 2).await;
    cluster.assert_converged(lib, 0, &[1]).await;
    assert_eq!(cluster.data_entries(1, lib).len(), 250);
}

#[actix_rt::test]
async fn followers_reconnect_by_themselves_after_the_leader_restarts() {
    let mut cluster = Cluster::start(3).await;
    let lib = cluster.create_library(0, &[1, 2]).await;
    let base = cluster.last_sequence(0, lib);
    commit_tags(cluster.node(0), lib, 0, 50).await;
    cluster.assert_converged(lib, 0, &[1, 2]).await;
    cluster.restart(0).await;
    // A restarted leader never leads its old term again (docs/architecture.md, "Terms and
    // votes on disk"): it comes back a follower, and the library elects a leader of a later
    // term — possibly device 0 again — whom everyone follows by themselves.
    let (l, term) = cluster.wait_for_leader(lib, &[0, 1, 2], 1).await;
    assert!(term > 1, "a new term after the leader's restart, got {term}");
    commit_tags(cluster.node(l), lib, 50, 50).await;
    let others: Vec<usize> = (0..3).filter(|&i| i != l).collect();
    cluster.assert_converged(lib, l, &others).await;
    // the sequences continued from the persisted log, not from zero: gapless from 1, the
    // writes before the restart right after the configuration entries, those after it after
    // them (the new leader commits an entry of its term first: it may add an entry)
    let entries = cluster.node(l).database(lib).unwrap().fetch_since(0, 1_000).unwrap();
    assert!(entries.iter().zip(1..).all(|(e, s)| e.sequence == s));
    let written: Vec<(u64, String)> =
        cluster.data_entries(1, lib).into_iter().map(|e| (e.sequence, e.record_id)).collect();
    let before_restart: Vec<(u64, String)> =
        (0..50).map(|i| (base + 1 + i, format!("tag-{i}"))).collect();
    assert_eq!(written[..50], before_restart[..]);
    let ids: Vec<&str> = written[50..].iter().map(|(_, id)| id.as_str()).collect();
    let expected: Vec<String> = (50..100).map(|i| format!("tag-{i}")).collect();
    assert_eq!(ids, expected);
    assert!(written.windows(2).all(|w| w[0].0 < w[1].0), "in log order: {written:?}");
}

#[actix_rt::test]
async fn two_libraries_with_different_leaders_sync_on_the_same_nodes() {
    let cluster = Cluster::start(3).await;
    // `a` set up with invitations, `b` the scripted way (add-device, then join: short logs)
    let a = cluster.create_library(0, &[1, 2]).await;
    let b = cluster.node(1).create_library().await.unwrap();
    cluster.join(b, 1, &[0, 2]).await;
    for i in 0..200 {
        cluster.node(0).commit(a, Change::insert(&tag(i, "a"))).await.unwrap();
        cluster.node(1).commit(b, Change::insert(&location(i, "/b"))).await.unwrap();
    }
    // both ways end with three voters
    cluster.wait_for_voters(b, &[0, 1, 2], 3).await;
    cluster.assert_converged(a, 0, &[1, 2]).await;
    cluster.assert_converged(b, 1, &[0, 2]).await;
    assert_eq!(cluster.dump(2, a)["tag"].len(), 200);
    assert_eq!(cluster.dump(2, b)["location"].len(), 200);
    assert!(cluster.dump(2, a)["location"].is_empty());
}

/// Replaces the tail of node `i`'s log from `from` on with entries of another term, as a
/// deposed leader's unreplicated tail would look.
fn diverge(cluster: &Cluster, i: usize, lib: uuid::Uuid, from: u64, count: u64, term: u64) {
    use lsync::crates::storage::{Applier, SyncLog};
    let db = cluster.offline_db(i, lib);
    db.with_writer(|conn| SyncLog::truncate_after(conn, from - 1).map(|_| ())).unwrap();
    let entries: Vec<_> = (from..from + count)
        .map(|s| lsync::SyncLogEntry {
            sequence: s,
            term,
            origin_device: uuid::Uuid::new_v4(),
            timestamp_ms: 0,
            model_type: "tag".into(),
            record_id: format!("tag-{}", 1_000_000 + s),
            change_type: lsync::ChangeType::Insert,
            version: 1,
            data: lsync::crates::storage::encode(&tag(1_000_000 + s, "rogue")),
            proposal_id: None,
            hash: None,
            stamp: None,
        })
        .collect();
    Applier::new(db).apply(&entries).unwrap();
}

#[actix_rt::test]
async fn diverged_or_ahead_followers_reconcile_and_propose_their_own_changes_again() {
    let mut cluster = Cluster::start(3).await;
    let lib = cluster.create_library(0, &[1, 2]).await;
    commit_tags(cluster.node(0), lib, 0, 100).await;
    cluster.assert_converged(lib, 0, &[1, 2]).await;
    // the log opens with configuration entries; the 100 tags follow them
    let last = cluster.last_sequence(0, lib);
    let base = last - 100;
    assert_eq!(cluster.data_entries(0, lib).first().map(|e| e.sequence), Some(base + 1));

    cluster.stop(1).await;
    cluster.stop(2).await;
    // follower 1: same length, but its last 10 entries (tags) come from another term
    diverge(&cluster, 1, lib, last - 9, 10, 7);
    // follower 2: 20 entries beyond anything the leader has (of a term that never led)
    diverge(&cluster, 2, lib, last + 1, 20, 9);
    // subscribe before anything else awaits: the node's actors run only once this task yields
    cluster.restart(1).await;
    let mut ev1 = cluster.node(1).subscribe();
    cluster.restart(2).await;
    let mut ev2 = cluster.node(2).subscribe();

    commit_tags(cluster.node(0), lib, 100, 10).await;
    // their entries the leader lacks are not lost: each is proposed again and committed once
    let rogue: std::collections::BTreeSet<String> = (last - 9..=last)
        .chain(last + 1..=last + 20)
        .map(|s| format!("tag-{}", 1_000_000 + s))
        .collect();
    let on_leader = || {
        let log = cluster.node(0).database(lib).unwrap().fetch_since(0, 1_000_000).unwrap();
        log.iter()
            .filter(|e| rogue.contains(&e.record_id))
            .map(|e| e.record_id.clone())
            .collect::<Vec<_>>()
    };
    wait_until("every orphaned change is committed by the leader", || async {
        on_leader().len() >= rogue.len()
    })
    .await;
    let mut committed = on_leader();
    committed.sort();
    assert_eq!(committed, rogue.iter().cloned().collect::<Vec<_>>(), "each exactly once");
    cluster.assert_converged(lib, 0, &[1, 2]).await;
    for (f, ev) in [(1, &mut ev1), (2, &mut ev2)] {
        // the events of the reconciliation: started, then done (emitted just after the last
        // apply, so wait for them rather than reading once)
        let seen = std::cell::RefCell::new(Vec::new());
        wait_until(&format!("follower {f} reports a finished reconciliation"), || {
            seen.borrow_mut().extend(std::iter::from_fn(|| ev.try_recv().ok()));
            let seen = seen.borrow();
            let started = seen.iter().any(|e| matches!(e, lsync::SyncEvent::ResyncStarted { .. }));
            let done = seen
                .iter()
                .any(|e| matches!(e, lsync::SyncEvent::ResyncDone { last_sequence, .. } if *last_sequence >= last));
            async move { started && done }
        })
        .await;
    }
}
