//! A simulated device's disk: the real library database (SQLite, WAL mode, in a temporary
//! directory of its own), and the copies that model what survives each kind of failure.
//!
//! - **Process crash** (kill -9): every connection is dropped and the database reopened; a
//!   committed transaction survives (SQLite's guarantee in WAL mode at any `synchronous`).
//! - **Power loss**: what was written since the last *sync point* is lost. With
//!   `synchronous = FULL` (the product's default, and the simulation's) every commit is a sync
//!   point and a power loss loses nothing: it is a crash (the world does not call
//!   [`Disk::lose_unsynced`] then). With `synchronous = NORMAL` (`--synchronous normal`)
//!   SQLite syncs the WAL only at checkpoints, so the simulation takes a sync point at random
//!   moments ([`Disk::sync`]), and at every fsync the product makes itself (a follower's
//!   applied batch before it is acknowledged, a mark raised: the world watches
//!   [`Database::syncs`] after each step); a power loss goes back to the last one.
//! - **Restore of an older copy** (a backup put back, a data directory copied from elsewhere):
//!   the database goes back to one of the older sync points ([`Disk::backup`] keeps them).
//!
//! The election record (`library.db.election`, docs/architecture.md "Terms and votes on
//! disk") and the high-water mark (`library.db.mark`, raised by the world at each sync point,
//! never beyond it) are written with a full sync: they survive every one of these faults as
//! they are — a power loss or a restore puts back the database files only, so a restored
//! database is found behind its mark, and a power loss never leaves one there.
//!
//! Copies are made with `VACUUM INTO` on the writer connection, between transactions: a
//! consistent snapshot of the committed state, whatever the background checkpointer does.

use std::path::{Path, PathBuf};

use lsync_storage::{Database, ModelRegistry, StorageOptions, Synchronous};

/// One device's files.
#[derive(Debug)]
pub struct Disk {
    dir: PathBuf,
    /// Snapshots taken at sync points: the last one is what a power loss returns to.
    synced: Option<PathBuf>,
    /// Older copies, oldest first (at most [`Disk::BACKUPS`]).
    backups: Vec<PathBuf>,
    next_copy: u64,
    /// Counters for the report.
    pub syncs: u64,
    /// The setting the database is opened with.
    synchronous: Synchronous,
}

impl Disk {
    /// Older copies kept for restores.
    pub const BACKUPS: usize = 3;

    /// A disk in `dir` (created), its database opened with `synchronous`.
    pub fn new(dir: PathBuf, synchronous: Synchronous) -> std::io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        Ok(Self { dir, synced: None, backups: Vec::new(), next_copy: 0, syncs: 0, synchronous })
    }

    /// The setting the database is opened with.
    pub fn synchronous(&self) -> Synchronous {
        self.synchronous
    }

    /// The library database's path.
    pub fn db_path(&self) -> PathBuf {
        self.dir.join("library.db")
    }

    /// Opens the database.
    pub fn open(&self) -> Result<Database, lsync_storage::StorageError> {
        Database::open(
            &self.db_path(),
            &StorageOptions { synchronous: self.synchronous, ..StorageOptions::default() },
            ModelRegistry::with_builtin(),
        )
    }

    fn copy_of(&mut self, db: &Database) -> Result<PathBuf, lsync_storage::StorageError> {
        self.next_copy += 1;
        let to = self.dir.join(format!("copy-{}.db", self.next_copy));
        vacuum_into(db, &to)?;
        Ok(to)
    }

    /// A sync point: what is committed now survives a power loss.
    pub fn sync(&mut self, db: &Database) -> Result<(), lsync_storage::StorageError> {
        let copy = self.copy_of(db)?;
        if let Some(old) = self.synced.replace(copy) {
            let _ = std::fs::remove_file(old);
        }
        self.syncs += 1;
        Ok(())
    }

    /// Keeps a copy of the database as it is now, for a later restore.
    pub fn backup(&mut self, db: &Database) -> Result<(), lsync_storage::StorageError> {
        let copy = self.copy_of(db)?;
        self.backups.push(copy);
        if self.backups.len() > Self::BACKUPS {
            let _ = std::fs::remove_file(self.backups.remove(0));
        }
        Ok(())
    }

    /// Whether an older copy exists.
    pub fn has_backup(&self) -> bool {
        !self.backups.is_empty()
    }

    /// Power loss: the database goes back to the last sync point (or to nothing, if there was
    /// none). Call with every handle of the database dropped.
    pub fn lose_unsynced(&mut self) -> std::io::Result<()> {
        let from = self.synced.clone();
        self.put_back(from.as_deref())
    }

    /// A restored backup: the database goes back to the `pick`-th older copy (modulo their
    /// number). Call with every handle of the database dropped.
    pub fn restore_backup(&mut self, pick: usize) -> std::io::Result<bool> {
        if self.backups.is_empty() {
            return Ok(false);
        }
        let from = self.backups[pick % self.backups.len()].clone();
        self.put_back(Some(&from))?;
        // the sync point is now this copy
        let kept = self.dir.join(format!("copy-{}.db", self.next_copy + 1));
        self.next_copy += 1;
        std::fs::copy(&from, &kept)?;
        if let Some(old) = self.synced.replace(kept) {
            let _ = std::fs::remove_file(old);
        }
        Ok(true)
    }

    fn put_back(&self, from: Option<&Path>) -> std::io::Result<()> {
        let db = self.db_path();
        for suffix in ["", "-wal", "-shm"] {
            let mut p = db.clone().into_os_string();
            p.push(suffix);
            match std::fs::remove_file(PathBuf::from(p)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        if let Some(from) = from {
            std::fs::copy(from, &db)?;
        }
        Ok(())
    }
}

fn vacuum_into(db: &Database, to: &Path) -> Result<(), lsync_storage::StorageError> {
    use lsync_storage::diesel::{self, RunQueryDsl};
    let path = to.to_str().expect("temporary paths are UTF-8").replace('\'', "''");
    db.with_writer(|conn| {
        diesel::sql_query(format!("VACUUM INTO '{path}'"))
            .execute(conn)
            .map(|_| ())
            .map_err(lsync_storage::StorageError::from)
    })
}

#[cfg(test)]
mod tests {
    use lsync_storage::{Change, Tag};

    use super::*;

    fn tags(db: &Database) -> usize {
        db.dump().unwrap().get("tag").map_or(0, Vec::len)
    }

    /// One committed transaction (an outbox row: it needs no library set up).
    fn write(db: &Database, id: &str) {
        db.outbox_push(uuid::Uuid::new_v4(), &[Change::delete::<Tag>(id.to_owned())]).unwrap();
    }

    #[test]
    fn a_power_loss_goes_back_to_the_last_sync_point_and_a_crash_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let mut disk = Disk::new(dir.path().join("d"), Synchronous::Normal).unwrap();
        let db = disk.open().unwrap();
        write(&db, "a");
        disk.sync(&db).unwrap();
        write(&db, "b");
        drop(db);
        // a crash: reopen, both survive
        let db = disk.open().unwrap();
        assert_eq!(db.outbox_count().unwrap(), 2);
        drop(db);
        disk.lose_unsynced().unwrap();
        let db = disk.open().unwrap();
        assert_eq!(db.outbox_count().unwrap(), 1, "only what was synced");
        assert_eq!(tags(&db), 0);
    }

    #[test]
    fn the_election_record_survives_a_power_loss_and_a_restore() {
        let dir = tempfile::tempdir().unwrap();
        let mut disk = Disk::new(dir.path().join("d"), Synchronous::Normal).unwrap();
        let db = disk.open().unwrap();
        disk.backup(&db).unwrap();
        disk.sync(&db).unwrap();
        let record = lsync_storage::ElectionRecord {
            term: 4,
            voted_for: Some(uuid::Uuid::from_u128(2)),
            leader: None,
        };
        lsync_storage::sync_state::write_record(&db.election_record_path(), &record).unwrap();
        drop(db);
        disk.lose_unsynced().unwrap();
        assert_eq!(disk.open().unwrap().election_record().unwrap(), Some(record));
        assert!(disk.restore_backup(0).unwrap());
        assert_eq!(disk.open().unwrap().election_record().unwrap(), Some(record));
    }

    #[test]
    fn a_restore_puts_an_older_copy_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut disk = Disk::new(dir.path().join("d"), Synchronous::Normal).unwrap();
        let db = disk.open().unwrap();
        assert!(!disk.has_backup());
        write(&db, "a");
        disk.backup(&db).unwrap();
        write(&db, "b");
        write(&db, "c");
        drop(db);
        assert!(disk.restore_backup(7).unwrap());
        let db = disk.open().unwrap();
        assert_eq!(db.outbox_count().unwrap(), 1);
        drop(db);
        // and a power loss after it keeps the restored state
        disk.lose_unsynced().unwrap();
        assert_eq!(disk.open().unwrap().outbox_count().unwrap(), 1);
    }
}
