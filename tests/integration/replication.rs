use lsync::{BulkOperation, Change, Location, Tag};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::fixture::{wait_until, Cluster};

fn tag(i: u64, name: &str) -> Tag {
    Tag { id: format!("tag-{i}"), name: name.to_string(), color: Some(format!("#{:06x}", i % 0xffffff)) }
}

fn location(i: u64, path: &str) -> Location {
    Location { id: format!("loc-{i}"), name: format!("location {i}"), path: path.to_string() }
}

/// A random but valid mix of inserts, updates and deletes of tags and locations.
fn mixed_changes(rng: &mut StdRng, live_tags: &mut Vec<u64>, live_locs: &mut Vec<u64>, next: &mut u64) -> Change {
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
    let entry = cluster.node(0).commit(lib, Change::insert(&tag(1, "holiday"))).await.unwrap();
    assert_eq!(entry.sequence, 1);
    cluster.assert_converged(lib, 0, &[1]).await;
    let st = cluster.node(0).status(lib).await.unwrap();
    assert_eq!(st.followers.len(), 1);
    wait_until("the leader records the follower's acknowledgement", || async {
        let st = cluster.node(0).status(lib).await.unwrap();
        st.followers[0].acked_sequence == 1 && st.followers[0].lag == 0
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
            let changes: Vec<_> =
                (0..rng.gen_range(2..50)).map(|_| mixed_changes(&mut rng, &mut tags, &mut locs, &mut next)).collect();
            committed += cluster.node(0).commit_batch(lib, changes).await.unwrap().len() as u64;
        } else {
            cluster.node(0).commit(lib, mixed_changes(&mut rng, &mut tags, &mut locs, &mut next)).await.unwrap();
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
