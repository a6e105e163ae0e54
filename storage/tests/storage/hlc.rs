//! The hybrid logical clock kept in the database (docs/architecture.md, "Hybrid logical
//! clock"): a device's timestamps never go back, across a reopen included.

use lsync_storage::hlc::{Hlc, Observed, MAX_DRIFT_MS};
use lsync_storage::StorageError;
use tempfile::TempDir;
use uuid::Uuid;

use crate::common::*;

#[test]
fn timestamps_increase_and_keep_increasing_after_a_reopen() {
    let dir = TempDir::new().unwrap();
    let l = leader(&dir, registry(false));
    let (a, b) = (l.db.hlc_tick().unwrap(), l.db.hlc_tick().unwrap());
    assert!(a < b, "{a:?} {b:?}");
    assert_eq!(a.device, l.device_id);
    drop(l);
    let db = open(&dir, "leader", registry(false));
    let c = db.hlc_tick().unwrap();
    assert!(b < c, "{b:?} {c:?}");
}

#[test]
fn a_timestamp_observed_from_another_device_is_passed_by_the_next_one() {
    let dir = TempDir::new().unwrap();
    let l = leader(&dir, registry(false));
    let mine = l.db.hlc_tick().unwrap();
    // another device's clock, 30 s ahead (within the drift bound)
    let theirs = Hlc { physical_ms: mine.physical_ms + 30_000, counter: 4, device: Uuid::nil() };
    assert_eq!(l.db.hlc_observe(theirs).unwrap(), Observed::Merged);
    let next = l.db.hlc_tick().unwrap();
    assert!((next.physical_ms, next.counter) > (theirs.physical_ms, theirs.counter), "{next:?}");
    // one too far ahead is ignored
    let far = Hlc { physical_ms: next.physical_ms + 2 * MAX_DRIFT_MS, ..theirs };
    assert_eq!(l.db.hlc_observe(far).unwrap(), Observed::TooFarAhead);
    assert!(l.db.hlc_tick().unwrap().physical_ms < far.physical_ms);
}

#[test]
fn a_database_without_a_sync_state_issues_no_timestamp() {
    let dir = TempDir::new().unwrap();
    let db = open(&dir, "fresh", registry(false));
    assert!(matches!(db.hlc_tick(), Err(StorageError::NotInitialized)));
}

#[test]
fn a_thread_clock_replaces_the_wall_clock_on_its_thread_only() {
    let dir = TempDir::new().unwrap();
    let l = leader(&dir, registry(false));
    lsync_storage::hlc::set_thread_clock(Some(Box::new(|| 42)));
    let (a, b) = (l.db.hlc_tick().unwrap(), l.db.hlc_tick().unwrap());
    assert_eq!((a.physical_ms, a.counter, b.physical_ms, b.counter), (42, 0, 42, 1));
    let other = std::thread::scope(|s| s.spawn(|| l.db.hlc_tick().unwrap()).join().unwrap());
    assert!(other.physical_ms > 1_000_000_000_000, "the wall clock: {other:?}");
    lsync_storage::hlc::set_thread_clock(None);
}
