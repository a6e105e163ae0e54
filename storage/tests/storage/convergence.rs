//! A follower that applies the leader's whole log has the leader's tables, row by row.

use std::collections::BTreeMap;

use lsync_protocol::SyncRole;
use lsync_storage::{Change, Location, Tag, TransactionManager};
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, RngSeed};
use tempfile::TempDir;
use uuid::Uuid;

use crate::common::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Model {
    Tag,
    Location,
}

/// Tracks which records exist so that every generated change is valid.
#[derive(Default)]
struct World {
    existing: BTreeMap<(Model, u8), ()>,
}

impl World {
    /// The valid change for a random `(model, key, action, text)`: an insert if the record is
    /// absent; otherwise an update (action 0..=1) or a delete (action 2).
    fn change(&mut self, model: Model, key: u8, action: u8, text: &str) -> Change {
        let id = format!("{model:?}-{key}").to_lowercase();
        let exists = self.existing.contains_key(&(model, key));
        let change = match (model, exists, action) {
            (Model::Tag, true, 2) => Change::delete::<Tag>(id),
            (Model::Location, true, 2) => Change::delete::<Location>(id),
            (Model::Tag, true, _) => Change::update(&Tag {
                id,
                name: text.to_owned(),
                color: (action == 1).then(|| format!("#{key:02x}")),
            }),
            (Model::Location, true, _) => Change::update(&location(&id, text)),
            (Model::Tag, false, _) => Change::insert(&tag(&id, text)),
            (Model::Location, false, _) => Change::insert(&location(&id, text)),
        };
        if exists && action == 2 {
            self.existing.remove(&(model, key));
        } else {
            self.existing.insert((model, key), ());
        }
        change
    }
}

/// xorshift64*, for a deterministic workload without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % bound
    }
}

#[test]
fn follower_in_batches_of_100_matches_the_leader() {
    let dir = TempDir::new().unwrap();
    let l = leader(&dir, registry(false));
    let mut world = World::default();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut committed = 0;
    while committed < 2000 {
        let size = 1 + rng.next(16) as usize;
        let batch: Vec<Change> = (0..size)
            .map(|i| {
                let model = if rng.next(2) == 0 { Model::Tag } else { Model::Location };
                let key = rng.next(40) as u8;
                let action = rng.next(3) as u8;
                world.change(model, key, action, &format!("v{committed}-{i}"))
            })
            .collect();
        committed += l.tm.commit_batch(batch).unwrap().len();
    }
    let f = follower(&dir, "f", &l, registry(false));
    catch_up(&l.db, &f, 100);

    let leader_dump = l.db.dump().unwrap();
    assert_eq!(leader_dump["sync_log"].len(), committed);
    assert!(!leader_dump["tag"].is_empty() && !leader_dump["location"].is_empty());
    assert_eq!(f.database().dump().unwrap(), leader_dump);
    assert_eq!(f.database().sync_state().unwrap().last_synced_sequence, committed as u64);

    // A second follower, catching up with other batch sizes, converges too.
    let g = follower(&dir, "g", &l, registry(false));
    catch_up(&l.db, &g, 7);
    assert_eq!(g.database().dump().unwrap(), leader_dump);
}

fn config() -> Config {
    Config {
        cases: 24,
        rng_seed: RngSeed::Fixed(0x5eed),
        failure_persistence: Some(Box::new(FileFailurePersistence::Off)),
        ..Config::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn random_workloads_converge(
        ops in proptest::collection::vec(
            (any::<bool>(), 0u8..12, 0u8..3, "[a-z ']{0,12}"),
            1..150,
        ),
        commit_sizes in proptest::collection::vec(1usize..10, 1..40),
        apply_sizes in proptest::collection::vec(1usize..30, 1..40),
    ) {
        let dir = TempDir::new().unwrap();
        let l = leader(&dir, registry(false));
        let mut world = World::default();
        let all: Vec<Change> = ops.iter().map(|(is_tag, key, action, text)| {
            let model = if *is_tag { Model::Tag } else { Model::Location };
            world.change(model, *key, *action, text)
        }).collect();
        // The oracle: the same changes committed one per transaction, so no statement ever
        // writes two of them (batches write runs of upserts as one multi-row statement and
        // see earlier versions of the batch from memory).
        let oracle = open(&dir, "oracle", registry(false));
        let oracle_id = Uuid::new_v4();
        oracle
            .init_sync_state(&state(l.library_id, oracle_id, SyncRole::Leader, Some(oracle_id)))
            .unwrap();
        let oracle_tm = TransactionManager::new(oracle.clone(), oracle_id);
        for change in &all {
            oracle_tm.commit(change.clone()).unwrap();
        }
        let mut changes = all.into_iter();
        let mut sizes = commit_sizes.iter().cycle();
        loop {
            let batch: Vec<Change> = changes.by_ref().take(*sizes.next().unwrap()).collect();
            if batch.is_empty() {
                break;
            }
            l.tm.commit_batch(batch).unwrap();
        }
        prop_assert_eq!(l.db.last_position().unwrap().sequence, ops.len() as u64);
        let (leader_dump, oracle_dump) = (l.db.dump().unwrap(), oracle.dump().unwrap());
        prop_assert_eq!(&leader_dump["tag"], &oracle_dump["tag"]);
        prop_assert_eq!(&leader_dump["location"], &oracle_dump["location"]);
        let versions = |db: &lsync_storage::Database| -> Vec<(String, i64, String)> {
            db.fetch_since(0, u64::MAX)
                .unwrap()
                .into_iter()
                .map(|e| (e.record_id, e.version, e.change_type.as_str().to_owned()))
                .collect()
        };
        prop_assert_eq!(versions(&l.db), versions(&oracle));

        let f = follower(&dir, "f", &l, registry(false));
        let log = l.db.fetch_since(0, u64::MAX).unwrap();
        let mut sizes = apply_sizes.iter().cycle();
        let mut rest = &log[..];
        while !rest.is_empty() {
            let n = (*sizes.next().unwrap()).min(rest.len());
            let outcome = f.apply(&rest[..n]).unwrap();
            prop_assert_eq!(outcome.applied, n as u64);
            rest = &rest[n..];
        }
        prop_assert_eq!(f.database().dump().unwrap(), l.db.dump().unwrap());
    }
}
