//! SyncLog functions over a connection.

use lsync_storage::{Change, LogPosition, StorageError, SyncLog};
use tempfile::TempDir;

use crate::common::*;

/// A database whose log holds 1000 entries; the term increases every 250 entries.
fn thousand(dir: &TempDir) -> lsync_storage::Database {
    let db = open(dir, "log", registry(false));
    db.write(|conn| {
        for seq in 1..=1000u64 {
            let e =
                entry(seq, 1 + (seq - 1) / 250, Change::insert(&tag(&format!("t{seq}"), "x")), 1);
            SyncLog::append(conn, &e)?;
        }
        Ok(())
    })
    .unwrap();
    db
}

#[test]
fn fetch_since_is_a_range() {
    let dir = TempDir::new().unwrap();
    let db = thousand(&dir);
    let got = db.fetch_since(900, 1000).unwrap();
    assert_eq!(got.len(), 100);
    assert_eq!(
        got.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        (901..=1000).collect::<Vec<_>>()
    );
    assert_eq!(got[0].record_id, "t901");
    assert!(got.iter().all(|e| e.term == 4));

    let got = db.fetch_since(0, 10).unwrap();
    assert_eq!(got.iter().map(|e| e.sequence).collect::<Vec<_>>(), (1..=10).collect::<Vec<_>>());
    assert!(db.fetch_since(1000, 10).unwrap().is_empty());
    assert!(db.fetch_since(5, 0).unwrap().is_empty());
    assert_eq!(db.fetch_since(995, u64::MAX).unwrap().len(), 5);
    assert!(db.fetch_since(u64::MAX, 10).unwrap().is_empty());
}

#[test]
fn range_last_term_count_truncate() {
    let dir = TempDir::new().unwrap();
    let db = thousand(&dir);
    db.with_reader(|conn| {
        assert_eq!(SyncLog::last(conn)?, LogPosition { term: 4, sequence: 1000 });
        assert_eq!(SyncLog::count(conn)?, 1000);
        assert_eq!(SyncLog::term_at(conn, 1)?, Some(1));
        assert_eq!(SyncLog::term_at(conn, 250)?, Some(1));
        assert_eq!(SyncLog::term_at(conn, 251)?, Some(2));
        assert_eq!(SyncLog::term_at(conn, 0)?, None);
        assert_eq!(SyncLog::term_at(conn, 1001)?, None);
        assert_eq!(SyncLog::term_at(conn, u64::MAX)?, None);
        let range = SyncLog::fetch_range(conn, 10, 20)?;
        assert_eq!(
            range.iter().map(|e| e.sequence).collect::<Vec<_>>(),
            (10..=20).collect::<Vec<_>>()
        );
        assert_eq!(SyncLog::fetch_range(conn, 7, 7)?.len(), 1);
        assert!(SyncLog::fetch_range(conn, 8, 7)?.is_empty());
        assert_eq!(SyncLog::fetch_range(conn, 990, u64::MAX)?.len(), 11);
        assert_eq!(SyncLog::get(conn, 42)?.map(|e| e.record_id), Some("t42".to_owned()));
        Ok(())
    })
    .unwrap();

    db.write(|conn| {
        assert_eq!(SyncLog::truncate_after(conn, 600)?, 400);
        assert_eq!(SyncLog::truncate_after(conn, 600)?, 0);
        assert_eq!(SyncLog::last(conn)?, LogPosition { term: 3, sequence: 600 });
        assert_eq!(SyncLog::count(conn)?, 600);
        // The log continues at 601.
        SyncLog::append(conn, &entry(601, 5, Change::insert(&tag("x", "x")), 1))?;
        assert_eq!(SyncLog::term_at(conn, 601)?, Some(5));
        assert_eq!(SyncLog::truncate_after(conn, 0)?, 601);
        assert_eq!(SyncLog::last(conn)?, LogPosition::default());
        Ok(())
    })
    .unwrap();
}

#[test]
fn append_refuses_gaps_and_overflow() {
    let dir = TempDir::new().unwrap();
    let db = open(&dir, "log", registry(false));
    db.write(|conn| {
        let e = |seq| entry(seq, 1, Change::insert(&tag("t", "t")), 1);
        assert!(matches!(
            SyncLog::append(conn, &e(2)),
            Err(StorageError::Gap { expected: 1, got: 2 })
        ));
        SyncLog::append(conn, &e(1))?;
        assert!(matches!(
            SyncLog::append(conn, &e(1)),
            Err(StorageError::Gap { expected: 2, got: 1 })
        ));
        let huge_term = entry(2, u64::MAX, Change::insert(&tag("t", "t")), 1);
        assert!(matches!(SyncLog::append(conn, &huge_term), Err(StorageError::InvalidChange(_))));
        assert_eq!(SyncLog::count(conn)?, 1);
        Ok(())
    })
    .unwrap();
}

#[test]
fn log_position_orders_by_term_then_sequence() {
    let p = |term, sequence| LogPosition { term, sequence };
    assert!(p(2, 1) > p(1, 100));
    assert!(p(2, 5) > p(2, 4));
    assert_eq!(p(0, 0), LogPosition::default());
    let mut v = vec![p(3, 1), p(1, 9), p(2, 2), p(2, 1)];
    v.sort();
    assert_eq!(v, vec![p(1, 9), p(2, 1), p(2, 2), p(3, 1)]);
}
