//! `verify`: a clean library verifies, read-only and while open; tampering with one row of the
//! log or of a model table, or a missing entry, is found and named (docs/operations.md,
//! "Verifying a library").

use diesel::prelude::*;
use lsync_storage::verify::Problem;
use lsync_storage::{encode, verify, BulkOperation, Change, SqliteConnection, Tag};
use tempfile::TempDir;

use crate::common::*;

/// A leader whose log holds 20 tag inserts, one update of `t3` (sequence 21), a note and a
/// bulk entry of model `location`; a follower caught up.
fn library(dir: &TempDir) -> (Leader, lsync_storage::Applier) {
    let l = leader(dir, registry(false));
    for i in 0..20 {
        l.tm.commit(Change::insert(&tag(&format!("t{i}"), "x"))).unwrap();
    }
    l.tm.commit(Change::update(&tag("t3", "renamed"))).unwrap();
    l.tm.commit(Change::insert(&note("n1", "body"))).unwrap();
    l.tm.commit_bulk(BulkOperation {
        model_type: "location".into(),
        record_id: "l1".into(),
        data: vec![0x90],
    })
    .unwrap();
    let f = follower(dir, "f", &l, registry(false));
    catch_up(&l.db, &f, 7);
    (l, f)
}

/// Tampers with the database at `path` through its own connection, as the sqlite3 CLI would.
fn tamper(path: &std::path::Path, sql: &str) {
    let mut conn = SqliteConnection::establish(path.to_str().unwrap()).unwrap();
    assert_eq!(diesel::sql_query(sql).execute(&mut conn).unwrap(), 1, "{sql}");
}

#[test]
fn a_clean_library_verifies_on_every_device_and_names_the_tables_it_skipped() {
    let dir = TempDir::new().unwrap();
    let (l, f) = library(&dir);
    for db in [&l.db, f.database()] {
        let report = verify(db.path(), db.registry()).unwrap();
        assert!(report.is_ok(), "{:?}", report.problems);
        assert_eq!(report.first_bad_sequence(), None);
        assert_eq!(report.entries, 23);
        assert_eq!(report.head, db.head().unwrap());
        assert_eq!(report.tables_checked, ["lsync_conflict", "note", "tag"]);
        assert_eq!(report.tables_excluded.len(), 1);
        assert_eq!(report.tables_excluded[0].table, "location");
        assert!(report.tables_excluded[0].reason.contains("bulk"), "{:?}", report.tables_excluded);
        assert!(report.tables_excluded[0].reason.contains("23"), "{:?}", report.tables_excluded);
    }
}

/// While a daemon has the database open and a reader pins the WAL (so the last commits are
/// only in it, not checkpointed), verify reads them, and writes nothing.
#[test]
fn verify_reads_committed_wal_content_and_writes_nothing() {
    let dir = TempDir::new().unwrap();
    let (l, _f) = library(&dir);
    let path = l.db.path().to_owned();
    let mut pin = SqliteConnection::establish(path.to_str().unwrap()).unwrap();
    pin.transaction(|pin| {
        diesel::sql_query("SELECT 1 FROM sync_log LIMIT 1").execute(pin)?;
        for i in 0..5 {
            l.tm.commit(Change::insert(&tag(&format!("late{i}"), "x"))).unwrap();
        }
        let wal = std::fs::metadata(path.with_extension("db-wal")).unwrap().len();
        assert!(wal > 0);
        let before = l.db.dump().unwrap();
        let report = verify(&path, l.db.registry()).unwrap();
        assert!(report.is_ok(), "{:?}", report.problems);
        assert_eq!(report.entries, 28);
        assert_eq!(report.head, l.db.head().unwrap());
        assert_eq!(l.db.dump().unwrap(), before);
        Ok::<_, diesel::result::Error>(())
    })
    .unwrap();
    // A missing database is an error, and is not created.
    let missing = dir.path().join("missing.db");
    assert!(verify(&missing, l.db.registry()).is_err());
    assert!(!missing.exists());
}

#[test]
fn a_changed_log_entry_is_found_at_its_sequence() {
    let dir = TempDir::new().unwrap();
    let (l, _f) = library(&dir);
    // Entry 6 inserts t5; rewrite its data to another name, as `sqlite3 lib.db "UPDATE ..."`.
    let forged = encode(&Tag { id: "t5".into(), name: "forged".into(), color: None });
    let hex: String = forged.iter().map(|b| format!("{b:02x}")).collect();
    tamper(l.db.path(), &format!("UPDATE sync_log SET data = X'{hex}' WHERE sequence = 6"));
    let report = verify(l.db.path(), l.db.registry()).unwrap();
    assert!(!report.is_ok());
    assert_eq!(report.first_bad_sequence(), Some(6));
    assert!(
        matches!(report.problems[0], Problem::ChainBroken { sequence: 6, .. }),
        "{:?}",
        report.problems
    );
    // Only that row breaks the chain (each link is checked against the stored one before it),
    // and the replay of the forged entry disagrees with the table.
    let broken: Vec<_> = report
        .problems
        .iter()
        .filter(|p| matches!(p, Problem::ChainBroken { .. }))
        .map(|p| p.sequence())
        .collect();
    assert_eq!(broken, vec![Some(6)]);
    assert!(
        report.problems.iter().any(|p| matches!(p,
        Problem::RowDiffers { table, sequence: Some(6), stored: Some(_), replayed: Some(r), .. }
            if table == "tag" && r.contains("forged"))),
        "{:?}",
        report.problems
    );
    assert!(report.problems[0].to_string().starts_with("sequence 6: hash chain broken"));
}

#[test]
fn a_changed_model_row_is_found_with_the_entry_that_last_wrote_it() {
    let dir = TempDir::new().unwrap();
    let (_l, f) = library(&dir);
    let db = f.database();
    tamper(db.path(), "UPDATE tag SET name = 'tampered' WHERE id = 't3'");
    let report = verify(db.path(), db.registry()).unwrap();
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    match &report.problems[0] {
        Problem::RowDiffers { table, key, sequence, stored, replayed } => {
            assert_eq!((table.as_str(), key.as_str(), *sequence), ("tag", "'t3'", Some(21)));
            assert!(stored.as_deref().unwrap().contains("'tampered'"));
            assert!(replayed.as_deref().unwrap().contains("'renamed'"));
        }
        other => panic!("expected RowDiffers, got {other:?}"),
    }
    assert_eq!(report.first_bad_sequence(), Some(21));
    // A row the log never wrote, and a row missing.
    tamper(db.path(), "INSERT INTO note (id, body, version) VALUES ('ghost', 'b', 1)");
    tamper(db.path(), "DELETE FROM tag WHERE id = 't0'");
    let report = verify(db.path(), db.registry()).unwrap();
    let described: Vec<String> = report.problems.iter().map(|p| p.to_string()).collect();
    assert_eq!(report.problems.len(), 3, "{described:?}");
    assert!(described.iter().any(|d| d.contains("note row 'ghost' is not in the replay")));
    assert!(described.iter().any(|d| d.starts_with("sequence 1: tag row 't0' is missing")));
    assert_eq!(report.first_bad_sequence(), Some(1));
}

#[test]
fn a_missing_entry_is_a_gap_at_its_sequence() {
    let dir = TempDir::new().unwrap();
    let (l, _f) = library(&dir);
    tamper(l.db.path(), "DELETE FROM sync_log WHERE sequence = 10");
    let report = verify(l.db.path(), l.db.registry()).unwrap();
    assert_eq!(report.problems[0], Problem::Gap { expected: 10, found: 11 });
    assert_eq!(report.first_bad_sequence(), Some(10));
    assert_eq!(report.entries, 22);
}
