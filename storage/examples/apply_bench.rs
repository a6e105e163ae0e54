//! Rough throughput of the storage write paths: the leader commits N changes in batches of 100,
//! then a follower applies the whole log in batches of 100.
//!
//! `cargo run --release -p lsync-storage --example apply_bench [N]`

use std::time::Instant;

use lsync_protocol::SyncRole;
use lsync_storage::{
    Applier, Change, Database, ModelRegistry, StorageOptions, SyncState, Tag, TransactionManager,
};
use uuid::Uuid;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: u64 = std::env::args().nth(1).map(|s| s.parse()).transpose()?.unwrap_or(100_000);
    let dir = tempfile::TempDir::new()?;
    let options = StorageOptions::default();
    let library_id = Uuid::new_v4();
    let leader_id = Uuid::new_v4();
    let state = |device_id, role| SyncState {
        library_id,
        device_id,
        role,
        current_term: 1,
        voted_for: None,
        leader_device: Some(leader_id),
        last_synced_sequence: 0,
    };

    let leader =
        Database::open(&dir.path().join("leader.db"), &options, ModelRegistry::with_builtin())?;
    leader.init_sync_state(&state(leader_id, SyncRole::Leader))?;
    let tm = TransactionManager::new(leader.clone(), leader_id);
    let start = Instant::now();
    let mut i = 0u64;
    while i < n {
        let batch: Vec<Change> = (i..(i + 100).min(n))
            .map(|k| {
                let tag = Tag {
                    id: format!("tag-{}", k % 50_000),
                    name: format!("name {k}"),
                    color: None,
                };
                if k < 50_000 {
                    Change::insert(&tag)
                } else {
                    Change::update(&tag)
                }
            })
            .collect();
        i += tm.commit_batch(batch)?.len() as u64;
    }
    let commit = start.elapsed();

    let follower =
        Database::open(&dir.path().join("follower.db"), &options, ModelRegistry::with_builtin())?;
    follower.init_sync_state(&state(Uuid::new_v4(), SyncRole::Follower))?;
    let applier = Applier::new(follower.clone());
    let mut fetch = std::time::Duration::ZERO;
    let start = Instant::now();
    let mut since = 0;
    loop {
        let t = Instant::now();
        let entries = leader.fetch_since(since, 100)?;
        fetch += t.elapsed();
        if entries.is_empty() {
            break;
        }
        since = applier.apply(&entries)?.last.sequence;
    }
    let apply = start.elapsed() - fetch;
    assert_eq!(follower.dump()?, leader.dump()?);
    let rate = |d: std::time::Duration| n as f64 / d.as_secs_f64();
    println!("commit: {n} entries in {commit:?} ({:.0}/s)", rate(commit));
    println!("fetch:  {n} entries in {fetch:?} ({:.0}/s)", rate(fetch));
    println!("apply:  {n} entries in {apply:?} ({:.0}/s)", rate(apply));
    Ok(())
}
