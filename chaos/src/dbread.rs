//! Reads a device's library database directly, read-only (SQLite `mode=ro`), into the
//! checker's [`DeviceData`]: the tables of storage/migrations (`sync_log`, `tag`, `location`,
//! `devices`, `outbox`, `stashed_entries`). Every replicated row is read as one JSON text
//! (`json_array` of its columns, blobs as hex) so rows compare whole.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::Context as _;
use diesel::connection::SimpleConnection;
use diesel::sql_types::{BigInt, Binary, Text};
use diesel::{Connection, QueryableByName, RunQueryDsl, SqliteConnection};

use crate::checker::{DeviceData, LogRow};
use crate::workload::ids_in;

#[derive(QueryableByName)]
struct LogQ {
    #[diesel(sql_type = BigInt)]
    sequence: i64,
    #[diesel(sql_type = Text)]
    model_type: String,
    #[diesel(sql_type = Text)]
    record_id: String,
    #[diesel(sql_type = Text)]
    row: String,
}

#[derive(QueryableByName)]
struct RowQ {
    #[diesel(sql_type = Text)]
    key: String,
    #[diesel(sql_type = Text)]
    row: String,
}

#[derive(QueryableByName)]
struct BlobQ {
    #[diesel(sql_type = Binary)]
    data: Vec<u8>,
}

/// Opens `path` read-only.
fn open(path: &Path) -> anyhow::Result<SqliteConnection> {
    let url = format!("file:{}?mode=ro", path.display());
    let mut c = SqliteConnection::establish(&url)
        .with_context(|| format!("cannot open {} read-only", path.display()))?;
    c.batch_execute("PRAGMA busy_timeout = 5000;")?;
    Ok(c)
}

/// Reads device `device`'s database at `path`.
pub fn read(path: &Path, device: usize) -> anyhow::Result<DeviceData> {
    let mut c = open(path)?;
    let log: Vec<LogQ> = diesel::sql_query(
        "SELECT sequence, model_type, record_id, json_array(sequence, term, origin_device, \
         timestamp_ms, model_type, record_id, change_type, version, hex(data), proposal_id) AS row \
         FROM sync_log ORDER BY sequence",
    )
    .load(&mut c)
    .context("reading sync_log")?;
    let rows = |c: &mut SqliteConnection, sql: &str| -> anyhow::Result<Vec<RowQ>> {
        diesel::sql_query(sql).load(c).with_context(|| sql.to_owned())
    };
    let tags = rows(
        &mut c,
        "SELECT id AS key, json_array(id, name, color, version) AS row FROM tag ORDER BY id",
    )?;
    let locations = rows(
        &mut c,
        "SELECT id AS key, json_array(id, name, path, version) AS row FROM location ORDER BY id",
    )?;
    let devices = rows(
        &mut c,
        "SELECT device_id AS key, json_array(device_id, peer_id, addresses, name, role, \
         preference) AS row FROM devices ORDER BY device_id",
    )?;
    let outbox: Vec<BlobQ> = diesel::sql_query("SELECT changes AS data FROM outbox ORDER BY seq")
        .load(&mut c)
        .context("reading outbox")?;
    Ok(DeviceData {
        device,
        log: log
            .into_iter()
            .map(|l| LogRow {
                sequence: l.sequence,
                model_type: l.model_type,
                record_id: l.record_id,
                row: l.row,
            })
            .collect(),
        tags: tags.into_iter().map(|r| (r.key, r.row)).collect(),
        locations: locations.into_iter().map(|r| r.row).collect(),
        devices: devices.into_iter().map(|r| r.row).collect(),
        // an id appears several times in one change (record id, data): once per write
        outbox: outbox
            .iter()
            .flat_map(|b| ids_in(&b.data))
            .collect::<BTreeSet<u64>>()
            .into_iter()
            .collect(),
    })
}

/// Every write number a database holds anywhere a later commit could come from: its log, its
/// outbox, the entries it stashed aside for a rebuild (to be proposed again).
pub fn held_ids(path: &Path) -> anyhow::Result<BTreeSet<u64>> {
    let mut c = open(path)?;
    let mut out = BTreeSet::new();
    for sql in [
        "SELECT CAST(record_id AS BLOB) AS data FROM sync_log",
        "SELECT changes AS data FROM outbox",
        "SELECT data FROM stashed_entries",
        "SELECT CAST(record_id AS BLOB) AS data FROM stashed_entries",
    ] {
        let blobs: Vec<BlobQ> =
            diesel::sql_query(sql).load(&mut c).with_context(|| sql.to_owned())?;
        out.extend(blobs.iter().flat_map(|b| ids_in(&b.data)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::{check, Expectations};
    use crate::workload::{write_id, Outcome, Via, WriteRecord};

    /// A database with the real schema (the storage crate's migrations, in order).
    fn database(dir: &Path, name: &str) -> (std::path::PathBuf, SqliteConnection) {
        let path = dir.join(name);
        let mut c = SqliteConnection::establish(path.to_str().unwrap()).unwrap();
        for sql in [
            include_str!("../../storage/migrations/2025-11-22-000000_create_storage/up.sql"),
            include_str!("../../storage/migrations/2025-12-01-000000_proposals_outbox/up.sql"),
            include_str!("../../storage/migrations/2026-12-02-000000_membership/up.sql"),
        ] {
            c.batch_execute(sql).unwrap();
        }
        (path, c)
    }

    fn insert_write(c: &mut SqliteConnection, sequence: i64, n: u64, with_row: bool) {
        let id = write_id(n);
        c.batch_execute(&format!(
            "INSERT INTO sync_log (sequence, term, origin_device, timestamp_ms, model_type, \
             record_id, change_type, version, data) VALUES ({sequence}, 1, 'd', 5, 'tag', '{id}', \
             'insert', 1, X'00');"
        ))
        .unwrap();
        if with_row {
            c.batch_execute(&format!(
                "INSERT OR REPLACE INTO tag (id, name, color, version) VALUES ('{id}', 'n', NULL, 1);"
            ))
            .unwrap();
        }
    }

    fn acked(n: u64) -> WriteRecord {
        WriteRecord {
            n,
            id: write_id(n),
            device: 0,
            via: Via::Cli,
            cycle: 0,
            outcome: Outcome::Acknowledged { queued: false },
            sent_ms: 0,
            answered_ms: 0,
        }
    }

    fn expect(ns: &[u64]) -> Expectations {
        Expectations { writes: ns.iter().map(|&n| acked(n)).collect(), ..Default::default() }
    }

    #[test]
    fn reads_a_clean_database_as_clean() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut c) = database(dir.path(), "a.db");
        insert_write(&mut c, 1, 1, true);
        insert_write(&mut c, 2, 2, true);
        drop(c);
        let d = read(&path, 0).unwrap();
        assert_eq!(d.log.len(), 2);
        assert_eq!(d.tags.len(), 2);
        assert!(check(&[d], &expect(&[1, 2])).clean());
    }

    #[test]
    fn a_duplicated_write_in_a_database_fails_the_check() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut c) = database(dir.path(), "a.db");
        insert_write(&mut c, 1, 1, true);
        insert_write(&mut c, 2, 1, true);
        drop(c);
        let f = check(&[read(&path, 0).unwrap()], &expect(&[1]));
        assert_eq!(f.duplicated, BTreeSet::from([1]));
    }

    #[test]
    fn a_missing_write_and_a_gap_in_a_database_fail_the_check() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut c) = database(dir.path(), "a.db");
        insert_write(&mut c, 1, 1, true);
        insert_write(&mut c, 3, 3, true);
        drop(c);
        let f = check(&[read(&path, 0).unwrap()], &expect(&[1, 2, 3]));
        assert_eq!(f.lost, BTreeSet::from([2]));
        assert!(f.problems.iter().any(|p| p.contains("not gapless")), "{f:?}");
    }

    #[test]
    fn databases_that_differ_fail_the_check() {
        let dir = tempfile::tempdir().unwrap();
        let (a, mut ca) = database(dir.path(), "a.db");
        let (b, mut cb) = database(dir.path(), "b.db");
        insert_write(&mut ca, 1, 1, true);
        insert_write(&mut cb, 1, 1, true);
        cb.batch_execute("UPDATE tag SET name = 'other';").unwrap();
        drop((ca, cb));
        let f = check(&[read(&a, 0).unwrap(), read(&b, 1).unwrap()], &expect(&[1]));
        assert!(f.problems.iter().any(|p| p.contains("table tag differs")), "{f:?}");
    }

    #[test]
    fn held_ids_include_the_outbox() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut c) = database(dir.path(), "a.db");
        insert_write(&mut c, 1, 1, true);
        let blob: Vec<u8> = format!("\u{92}{0}{0}", write_id(7)).into_bytes();
        let hex: String = blob.iter().map(|b| format!("{b:02X}")).collect();
        c.batch_execute(&format!(
            "INSERT INTO outbox (proposal_id, created_at_ms, changes, next_attempt_ms, seq) \
             VALUES ('p', 0, X'{hex}', 0, 1);"
        ))
        .unwrap();
        drop(c);
        assert_eq!(held_ids(&path).unwrap(), BTreeSet::from([1, 7]));
        assert_eq!(read(&path, 0).unwrap().outbox, vec![7]);
    }
}
