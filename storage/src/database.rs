//! [`Database`]: one library database file, with a writer and a reader connection.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{Integer, Text};
use diesel::sqlite::SqliteConnection;
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};
use lsync_protocol::{SyncLogEntry, SyncRole};
use uuid::Uuid;

use crate::address_hints;
use crate::change::Change;
use crate::devices::{self, Device};
use crate::error::{Result, StorageError};
use crate::invitations::{self, Invitation, InvitationRefused};
use crate::local_jobs::{self, LocalJob};
use crate::mark::{self, Mark, MarkState, MarkedConfiguration};
use crate::membership::{self, Membership};
use crate::model::ModelRegistry;
use crate::outbox::{self, OutboxEntry};
use crate::sync_log::{LogHead, LogPosition, SyncLog};
use crate::sync_state::{self, ElectionRecord, SyncState};

const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// SQLite's `PRAGMA synchronous` in WAL mode (docs/operations.md, "Durability").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Synchronous {
    /// Durable against application crashes; a power loss may lose the last commits of a
    /// leader (a follower still fsyncs what it applied before acknowledging it:
    /// [`Database::acknowledge`]). An opt-in.
    Normal,
    /// Durable against power loss too: an fsync per commit, shared by concurrent writers
    /// (group commit). The default.
    #[default]
    Full,
}

impl Synchronous {
    fn pragma(self) -> &'static str {
        match self {
            Self::Normal => "NORMAL",
            Self::Full => "FULL",
        }
    }
}

/// How a [`Database`] is opened.
#[derive(Debug, Clone)]
pub struct StorageOptions {
    /// `PRAGMA synchronous` (default [`Synchronous::Full`]).
    pub synchronous: Synchronous,
    /// How long a connection waits for a lock held by another connection (default 5 s).
    pub busy_timeout: Duration,
}

impl Default for StorageOptions {
    fn default() -> Self {
        Self { synchronous: Synchronous::Full, busy_timeout: Duration::from_secs(5) }
    }
}

struct Inner {
    path: PathBuf,
    url: String,
    options: StorageOptions,
    registry: ModelRegistry,
    writer: Mutex<SqliteConnection>,
    reader: Mutex<SqliteConnection>,
    checkpointer: Checkpointer,
    /// The acknowledgement mark this handle last wrote (`None` until the first): the lock
    /// also keeps two writers of the mark files apart.
    acked: Mutex<Option<LogPosition>>,
    /// Fsyncs of the database files made by [`Database::acknowledge`] and
    /// [`Database::raise_mark`].
    syncs: AtomicU64,
    /// Whether [`Database::election_floor`] last found the log diverged from its mark (it
    /// logs the change, not every read).
    diverged: std::sync::atomic::AtomicBool,
    /// The position of the configuration entry in the members file as this handle last read
    /// or wrote it (`None` until then): [`Database::mark_configuration`] writes only when a
    /// newer one is in effect. The lock keeps two writers of the file apart.
    configured: Mutex<Option<LogPosition>>,
}

/// Writer commits after which the background checkpointer is woken.
const CHECKPOINT_AFTER_COMMITS: u64 = 64;
/// The background checkpointer also runs this long after a commit when fewer commits came.
const CHECKPOINT_PERIOD: Duration = Duration::from_secs(1);
/// SQLite's own automatic checkpoint (run by the committing writer, inside its commit), kept as
/// a safety net should the background checkpointer fall behind: at this many WAL pages
/// (4 KiB each) instead of SQLite's default 1,000.
const WAL_AUTOCHECKPOINT_PAGES: u32 = 10_000;

#[derive(Default)]
struct CheckpointState {
    /// Writer commits since the last checkpoint.
    pending: u64,
    stop: bool,
}

#[derive(Default)]
struct CheckpointShared {
    state: Mutex<CheckpointState>,
    wake: Condvar,
    done: AtomicU64,
}

/// Copies the WAL back into the database file on its own thread and connection
/// (`PRAGMA wal_checkpoint(PASSIVE)`: it never blocks the writer or the reader), so that no
/// commit pays for a checkpoint: with SQLite's automatic checkpoint, every 1,000th page
/// written made one commit write ~4 MB and fsync, a latency spike for whatever waited on that
/// commit (docs/performance.md). Stopped and joined when the last [`Database`] handle drops.
struct Checkpointer {
    shared: Arc<CheckpointShared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    fn start(mut conn: SqliteConnection, path: &Path) -> Result<Self> {
        let shared = Arc::new(CheckpointShared::default());
        let thread_shared = shared.clone();
        let path = path.to_owned();
        let thread =
            std::thread::Builder::new().name("lsync-checkpoint".to_owned()).spawn(move || {
                let shared = thread_shared;
                loop {
                    let mut state = shared.state.lock().unwrap_or_else(|p| p.into_inner());
                    if state.pending < CHECKPOINT_AFTER_COMMITS && !state.stop {
                        state = shared
                            .wake
                            .wait_timeout(state, CHECKPOINT_PERIOD)
                            .unwrap_or_else(|p| p.into_inner())
                            .0;
                    }
                    if state.stop {
                        return;
                    }
                    let pending = std::mem::take(&mut state.pending);
                    drop(state);
                    if pending == 0 {
                        continue;
                    }
                    match conn.batch_execute("PRAGMA wal_checkpoint(PASSIVE);") {
                        Ok(()) => {
                            shared.done.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(error) => tracing::warn!(path = %path.display(), %error,
                            "background WAL checkpoint failed; SQLite's own checkpoint remains"),
                    }
                }
            })?;
        Ok(Self { shared, thread: Some(thread) })
    }

    /// Called after every writer commit.
    fn committed(&self) {
        let mut state = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        state.pending += 1;
        if state.pending == CHECKPOINT_AFTER_COMMITS {
            self.shared.wake.notify_one();
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner()).stop = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One library database file. Cheap to clone (an `Arc` inside).
///
/// Holds one writer connection and one reader connection, each behind a `std::sync::Mutex`
/// (WAL lets the reader read while the writer writes). A connection whose mutex was poisoned
/// by a panic is replaced by a fresh one, so a half-done transaction can never leak.
#[derive(Clone)]
pub struct Database {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("path", &self.inner.path)
            .field("registry", &self.inner.registry)
            .finish_non_exhaustive()
    }
}

#[derive(QueryableByName)]
struct ColumnInfo {
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Integer)]
    pk: i32,
}

#[derive(QueryableByName)]
struct DumpRow {
    #[diesel(sql_type = Text)]
    row: String,
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn connect(url: &str, options: &StorageOptions, reader: bool) -> Result<SqliteConnection> {
    crate::sqlite_setup::configure();
    let mut conn = SqliteConnection::establish(url)?;
    let busy_ms = options.busy_timeout.as_millis().min(i32::MAX as u128);
    // busy_timeout first, so that switching to WAL waits for other connections.
    let mut pragmas = format!(
        "PRAGMA busy_timeout = {busy_ms}; PRAGMA journal_mode = WAL; \
         PRAGMA synchronous = {}; PRAGMA foreign_keys = ON;",
        options.synchronous.pragma()
    );
    if reader {
        pragmas.push_str(" PRAGMA query_only = ON;");
    } else {
        pragmas.push_str(&format!(" PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES};"));
    }
    conn.batch_execute(&pragmas)?;
    Ok(conn)
}

/// Locks `mutex`, taking over a lock a panic poisoned (what it guards stays consistent: one
/// value written whole).
fn lock_plain<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn lock<'a>(
    mutex: &'a Mutex<SqliteConnection>,
    url: &str,
    options: &StorageOptions,
    reader: bool,
) -> Result<MutexGuard<'a, SqliteConnection>> {
    match mutex.lock() {
        Ok(guard) => Ok(guard),
        Err(poisoned) => {
            let mut guard = poisoned.into_inner();
            tracing::warn!(
                reader,
                "a panic poisoned a database connection; replacing it with a fresh one"
            );
            *guard = connect(url, options, reader)?;
            mutex.clear_poison();
            Ok(guard)
        }
    }
}

impl Database {
    /// Opens (creating the file and its parent directories if needed) a library database:
    /// `PRAGMA journal_mode=WAL`, `busy_timeout`, `synchronous`, `foreign_keys`; runs the
    /// embedded migrations, fills the log's hash chain over rows written before it existed
    /// (`fill_chain` in `sync_log.rs`), then [`crate::ModelHandler::migrate`] of every
    /// registered handler.
    pub fn open(
        path: &Path,
        options: &StorageOptions,
        registry: ModelRegistry,
    ) -> Result<Database> {
        if let Some(parent) = path.parent() {
            if !parent.as_os_str().is_empty() {
                std::fs::create_dir_all(parent)?;
            }
        }
        let url = path
            .to_str()
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("database path {} is not valid UTF-8", path.display()),
                )
            })?
            .to_owned();
        let mut writer = connect(&url, options, false)?;
        writer
            .run_pending_migrations(MIGRATIONS)
            .map_err(|e| StorageError::Migration(e.to_string()))?;
        crate::sync_log::fill_chain(&mut writer)?;
        for handler in registry.handlers() {
            handler.migrate(&mut writer).map_err(|e| {
                StorageError::Migration(format!("model {}: {e}", handler.model_type()))
            })?;
        }
        // pending changes queued by a version before local-first writes are shown now
        writer.immediate_transaction(|conn| crate::pending::show_after_upgrade(conn, &registry))?;
        let reader = connect(&url, options, true)?;
        let checkpointer = Checkpointer::start(connect(&url, options, false)?, path)?;
        tracing::debug!(path = %path.display(), models = ?registry.model_types(), "database open");
        Ok(Database {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                url,
                options: options.clone(),
                registry,
                writer: Mutex::new(writer),
                reader: Mutex::new(reader),
                checkpointer,
                acked: Mutex::new(None),
                syncs: AtomicU64::new(0),
                diverged: std::sync::atomic::AtomicBool::new(false),
                configured: Mutex::new(None),
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The model handlers of this database.
    pub fn registry(&self) -> &ModelRegistry {
        &self.inner.registry
    }

    /// Runs `f` on the writer connection (the caller opens its own transaction if needed;
    /// writes should use `immediate_transaction`).
    pub fn with_writer<R>(&self, f: impl FnOnce(&mut SqliteConnection) -> Result<R>) -> Result<R> {
        let inner = &*self.inner;
        let mut conn = lock(&inner.writer, &inner.url, &inner.options, false)?;
        f(&mut conn)
    }

    /// Runs `f` on the reader connection (`PRAGMA query_only`; it sees committed data only).
    pub fn with_reader<R>(&self, f: impl FnOnce(&mut SqliteConnection) -> Result<R>) -> Result<R> {
        let inner = &*self.inner;
        let mut conn = lock(&inner.reader, &inner.url, &inner.options, true)?;
        f(&mut conn)
    }

    /// Runs `f` in an immediate transaction on the writer connection.
    pub fn write<R>(&self, f: impl FnOnce(&mut SqliteConnection) -> Result<R>) -> Result<R> {
        let result = self.with_writer(|conn| conn.immediate_transaction(f))?;
        self.inner.checkpointer.committed();
        Ok(result)
    }

    /// How many background WAL checkpoints have run (see `Checkpointer` in the source; for
    /// tests and diagnostics).
    pub fn background_checkpoints(&self) -> u64 {
        self.inner.checkpointer.shared.done.load(Ordering::Relaxed)
    }

    /// The sync state: the `sync_state` row with the election record read over it
    /// ([`sync_state::with_record`]: the record holds the term, vote and leader the election
    /// wrote with a full sync, which the row may have lost).
    ///
    /// # Errors
    /// [`StorageError::NotInitialized`] if there is none; [`StorageError::Corrupt`] for an
    /// unreadable election record.
    pub fn sync_state(&self) -> Result<SyncState> {
        let row = self.with_reader(sync_state::load)?.ok_or(StorageError::NotInitialized)?;
        Ok(sync_state::with_record(row, self.election_record()?))
    }

    /// The election record's file ([`sync_state::record_path`]).
    pub fn election_record_path(&self) -> PathBuf {
        sync_state::record_path(&self.inner.path)
    }

    /// The election record, `None` if the election never wrote one.
    pub fn election_record(&self) -> Result<Option<ElectionRecord>> {
        sync_state::read_record(&self.election_record_path())
    }

    /// The high-water mark's position: the last log position this device is known to have
    /// held — the higher of the fsynced mark ([`mark::mark_path`], raised at heartbeats) and
    /// the acknowledgement mark ([`mark::ack_mark_path`], raised at every acknowledgement);
    /// `None` before the first is written. [`Database::high_water_mark`] has its hash too.
    pub fn mark(&self) -> Result<Option<LogPosition>> {
        Ok(self.high_water_mark()?.map(|m| m.position))
    }

    /// The high-water mark ([`Database::mark`]) with the chain hash of its entry, when the
    /// file has one (a mark written before the hash chain has none).
    pub fn high_water_mark(&self) -> Result<Option<Mark>> {
        let durable = mark::read_mark(&mark::mark_path(&self.inner.path))?;
        let acked = mark::read_ack_mark(&mark::ack_mark_path(&self.inner.path));
        Ok(Mark::higher(durable, acked))
    }

    /// How the log compares with the high-water mark ([`mark::check`]): clear, behind it (a
    /// restored backup, a copied data directory), or holding another entry at its sequence
    /// (another history: [`MarkState::Diverged`]).
    pub fn mark_state(&self) -> Result<MarkState> {
        let mark = self.high_water_mark()?;
        self.mark_state_of(mark)
    }

    fn mark_state_of(&self, mark: Option<Mark>) -> Result<MarkState> {
        let at = mark.filter(|m| m.hash.is_some()).map(|m| m.position.sequence);
        let (head, at_mark) = self.with_reader(|conn| {
            let head = SyncLog::head(conn)?;
            let at_mark = match at {
                Some(sequence) => {
                    match (SyncLog::term_at(conn, sequence)?, SyncLog::hash_at(conn, sequence)?) {
                        (Some(term), Some(hash)) => Some((term, hash)),
                        _ => None,
                    }
                }
                None => None,
            };
            Ok((head, at_mark))
        })?;
        Ok(mark::check(mark, head, at_mark))
    }

    /// The configuration this device last knew ([`mark::members_path`]), `None` if it never
    /// wrote one (a device of a version before the file).
    ///
    /// # Errors
    /// [`StorageError::Corrupt`] for a file that is not one; [`StorageError::Io`].
    pub fn marked_configuration(&self) -> Result<Option<MarkedConfiguration>> {
        mark::read_members(&mark::members_path(&self.inner.path))
    }

    /// The configuration in effect with the position of its entry (term 0 if the log does not
    /// hold it: a joining device's configuration, installed before its log reached it).
    fn configuration_in_effect(&self) -> Result<(Membership, LogPosition)> {
        let membership = self.membership()?;
        let sequence = membership.sequence;
        let term = self.with_reader(|conn| SyncLog::term_at(conn, sequence))?.unwrap_or(0);
        Ok((membership, LogPosition { term, sequence }))
    }

    /// Keeps the configuration in effect as the one this device last knew
    /// ([`mark::members_path`], written durably) if it is newer than the one kept
    /// ([`MarkedConfiguration::older`]); never an older one (a database put back to an older
    /// copy does not take the file back with it). Called whenever a configuration entry is
    /// committed or applied here; cheap when nothing changed (no file is read or written once
    /// this handle knows the position kept). A library without configuration entries (feature
    /// version 1) keeps none. Returns whether it wrote the file.
    ///
    /// # Errors
    /// [`StorageError::Io`]; [`StorageError::Corrupt`] for a members file that is not one.
    pub fn mark_configuration(&self) -> Result<bool> {
        let mut configured = lock_plain(&self.inner.configured);
        let (membership, position) = self.configuration_in_effect()?;
        if !membership.is_replicated() {
            return Ok(false);
        }
        if configured.is_none() {
            *configured = self.marked_configuration()?.map(|m| m.position);
        }
        if configured.is_some_and(|kept| !MarkedConfiguration::older(kept, position)) {
            return Ok(false);
        }
        let marked = MarkedConfiguration { position, configuration: membership.configuration };
        mark::write_members(&mark::members_path(&self.inner.path), &marked)?;
        *configured = Some(position);
        Ok(true)
    }

    /// The members admitted beyond the configuration in effect while this database is behind
    /// its high-water mark and its configuration older than the one this device last knew
    /// ([`mark::admitted_while_behind`]; docs/architecture.md, "Restores are detected"):
    /// empty unless restored to an older copy.
    ///
    /// # Errors
    /// As [`Database::mark_state`] and [`Database::marked_configuration`].
    pub fn admitted_while_behind(&self) -> Result<Vec<lsync_protocol::Member>> {
        let Some(marked) = self.marked_configuration()? else { return Ok(Vec::new()) };
        let (membership, position) = self.configuration_in_effect()?;
        if !MarkedConfiguration::older(position, marked.position) {
            return Ok(Vec::new());
        }
        let state = self.mark_state()?;
        Ok(mark::admitted_while_behind(
            &state,
            (position, &membership.configuration),
            Some(&marked),
        ))
    }

    /// The `synchronous` setting this database was opened with.
    pub fn synchronous(&self) -> Synchronous {
        self.inner.options.synchronous
    }

    /// Raises the fsynced high-water mark to the log's last position and its chain hash, if
    /// that is above the mark; returns the mark in effect ([`Database::mark`]). A log behind
    /// its mark, or one that holds another history at the mark's sequence
    /// ([`MarkState::Diverged`]), leaves the mark as it is.
    ///
    /// The mark never runs ahead of what the database itself has on disk: the database file
    /// and its WAL are fsynced first (everything committed before is then durable whatever
    /// `synchronous` says), then the mark is written, fsynced. So a power loss never leaves a
    /// database behind its mark — had it, a sole voter that lost its last unsynced writes
    /// would never campaign again — and a database found behind its mark was put back from
    /// elsewhere (a restored backup, a copied data directory).
    pub fn raise_mark(&self) -> Result<LogPosition> {
        let _writing = lock_plain(&self.inner.acked);
        let head = self.head()?;
        let path = mark::mark_path(&self.inner.path);
        let durable = mark::read_mark(&path)?;
        let acked = mark::read_ack_mark(&mark::ack_mark_path(&self.inner.path));
        let held = Mark::higher(durable, acked);
        let in_effect = held.unwrap_or_default().position;
        if head.position <= durable.unwrap_or_default().position {
            return Ok(in_effect);
        }
        // A log that holds another history at the mark's sequence is not raised past it: only
        // what this device applies from a leader (its acknowledgements) or a newer term does
        // (docs/architecture.md, "Restores are detected").
        if matches!(self.mark_state_of(held)?, MarkState::Diverged { .. }) {
            return Ok(in_effect);
        }
        self.sync_files()?;
        mark::write_mark(&path, head)?;
        Ok(head.position.max(acked.unwrap_or_default().position))
    }

    /// Makes `position` — the end of this device's log, written by a transaction that has
    /// committed — safe to acknowledge: what a follower does before it reports a position to
    /// its leader (docs/architecture.md, "What an acknowledgement promises"). Under
    /// `synchronous = NORMAL` the database files are fsynced first (under `FULL` the commit
    /// did it); then the acknowledgement mark ([`mark::ack_mark_path`]) is raised to
    /// `position`, with the chain hash of the log's entry there (none if the entry there is
    /// not of `position`'s term any more), so that a database later put back to before it is
    /// found behind its mark, and one holding another entry there is found diverged. Does
    /// nothing for a position at or below the mark this handle last wrote.
    ///
    /// # Errors
    /// [`StorageError::Io`]: the position must not be acknowledged.
    pub fn acknowledge(&self, position: LogPosition) -> Result<()> {
        let mut acked = lock_plain(&self.inner.acked);
        if acked.is_some_and(|a| position <= a) {
            return Ok(());
        }
        if self.inner.options.synchronous == Synchronous::Normal {
            self.sync_files()?;
        }
        // the chain hash of the entry there, if it is still the one at that position
        let hash = self.with_reader(|conn| {
            Ok(match SyncLog::term_at(conn, position.sequence)? {
                Some(term) if term == position.term => SyncLog::hash_at(conn, position.sequence)?,
                _ => None,
            })
        })?;
        let marked = Mark { position, hash };
        mark::write_ack_mark(&mark::ack_mark_path(&self.inner.path), marked)?;
        *acked = Some(position);
        Ok(())
    }

    /// Raises the acknowledgement mark to `position`, committed by this device as leader, if
    /// the commit made it durable (`synchronous = FULL`); under `NORMAL` the leader's own
    /// commits are not on disk yet, and its mark follows at heartbeats
    /// ([`Database::raise_mark`]).
    ///
    /// # Errors
    /// [`StorageError::Io`].
    pub fn acknowledge_commit(&self, position: LogPosition) -> Result<()> {
        if self.inner.options.synchronous == Synchronous::Full {
            self.acknowledge(position)?;
        }
        Ok(())
    }

    /// Fsyncs of the database files made to raise a mark (for the simulator, which models
    /// what a power loss keeps by them, and for tests).
    pub fn syncs(&self) -> u64 {
        self.inner.syncs.load(Ordering::Relaxed)
    }

    /// Fsyncs the database file and its WAL: every transaction committed before the call is
    /// durable when it returns (a commit has written its WAL frames; this flushes them).
    fn sync_files(&self) -> Result<()> {
        let mut wal = self.inner.path.as_os_str().to_owned();
        wal.push("-wal");
        for path in [self.inner.path.clone(), PathBuf::from(wal)] {
            match std::fs::OpenOptions::new().read(true).write(true).open(&path) {
                Ok(file) => file.sync_all()?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.inner.syncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// The log position below which this device neither campaigns nor votes for a candidate
    /// behind it (the election's log floor): the higher of the rebuild mark
    /// ([`Database::rebuild_mark`]) and the high-water mark ([`Database::mark`]). Above the
    /// log's end only when the log went back (a rebuild in progress, a restored backup, writes
    /// lost to a power loss).
    ///
    /// A log that holds another history at the mark's sequence ([`MarkState::Diverged`]) has
    /// the floor `(mark term, u64::MAX)` ([`MarkState::floor`]): the device does not campaign,
    /// and votes only for a candidate whose log ends in a newer term than the mark's. Logged
    /// at error level when first found, at info level when it is over.
    pub fn election_floor(&self) -> Result<LogPosition> {
        let held = self.high_water_mark()?;
        let state = self.mark_state_of(held)?;
        let diverged = matches!(state, MarkState::Diverged { .. });
        if self.inner.diverged.swap(diverged, Ordering::Relaxed) != diverged {
            if diverged {
                tracing::error!(path = %self.inner.path.display(),
                    mark = state.describe().unwrap_or_default(),
                    "this database holds another history than the one this device acknowledged \
                     (a copy of another device's data, or a restored backup written to since): \
                     it neither campaigns nor votes for a log of the mark's term until a leader's \
                     log replaces or extends it (docs/architecture.md, \"Restores are detected\")");
            } else {
                tracing::info!(path = %self.inner.path.display(),
                    "the log no longer diverges from its high-water mark");
            }
        }
        let held = held.unwrap_or_default().position;
        Ok(self.rebuild_mark()?.max(held).max(state.floor()))
    }

    /// Persists the election's state durably: the election record first, with a full sync
    /// ([`sync_state::write_record`]: what a power loss cannot take back), then the
    /// `sync_state` row (role, term, vote, leader) in one transaction. Nothing that depends on
    /// the state may be sent before this returns (docs/architecture.md, "Terms and votes on
    /// disk").
    pub fn persist_election(&self, role: SyncRole, record: &ElectionRecord) -> Result<()> {
        sync_state::write_record(&self.election_record_path(), record)?;
        self.write(|conn| {
            sync_state::set_leadership(conn, role, record.term, record.leader)?;
            sync_state::set_vote(conn, record.term, record.voted_for)
        })
    }

    /// Inserts `state` if there is no state yet; an existing row is left untouched.
    pub fn init_sync_state(&self, state: &SyncState) -> Result<()> {
        self.write(|conn| sync_state::init(conn, state))
    }

    /// Sets role, term and known leader; see [`sync_state::set_leadership`].
    pub fn set_leadership(&self, role: SyncRole, term: u64, leader: Option<Uuid>) -> Result<()> {
        self.write(|conn| sync_state::set_leadership(conn, role, term, leader))
    }

    /// Sets term and vote; see [`sync_state::set_vote`].
    pub fn set_vote(&self, term: u64, voted_for: Option<Uuid>) -> Result<()> {
        self.write(|conn| sync_state::set_vote(conn, term, voted_for))
    }

    /// The position of the last log entry, `(0, 0)` for an empty log.
    pub fn last_position(&self) -> Result<LogPosition> {
        self.with_reader(SyncLog::last)
    }

    /// The last log entry's position and chain hash; see [`SyncLog::head`].
    pub fn head(&self) -> Result<LogHead> {
        self.with_reader(SyncLog::head)
    }

    /// The chain hash at `sequence`; see [`SyncLog::hash_at`].
    pub fn hash_at(&self, sequence: u64) -> Result<Option<lsync_protocol::ChainHash>> {
        self.with_reader(|conn| SyncLog::hash_at(conn, sequence))
    }

    /// At most `limit` entries after `since`; see [`SyncLog::fetch_since`].
    pub fn fetch_since(&self, since: u64, limit: u64) -> Result<Vec<SyncLogEntry>> {
        self.with_reader(|conn| SyncLog::fetch_since(conn, since, limit))
    }

    /// The entries `from..=to`; see [`SyncLog::fetch_range`].
    pub fn fetch_range(&self, from: u64, to: u64) -> Result<Vec<SyncLogEntry>> {
        self.with_reader(|conn| SyncLog::fetch_range(conn, from, to))
    }

    /// The term of the entry at `sequence`; see [`SyncLog::term_at`].
    pub fn term_at(&self, sequence: u64) -> Result<Option<u64>> {
        self.with_reader(|conn| SyncLog::term_at(conn, sequence))
    }

    /// The member devices.
    pub fn devices(&self) -> Result<Vec<Device>> {
        self.with_reader(devices::list)
    }

    /// The member device `device_id`, if any.
    pub fn device(&self, device_id: Uuid) -> Result<Option<Device>> {
        self.with_reader(|conn| devices::get(conn, device_id))
    }

    /// Adds or updates a member device.
    pub fn upsert_device(&self, device: &Device) -> Result<()> {
        self.write(|conn| devices::upsert(conn, device))
    }

    /// Removes a member device; returns whether it was one.
    pub fn remove_device(&self, device_id: Uuid) -> Result<bool> {
        self.write(|conn| devices::remove(conn, device_id))
    }

    /// The configuration in effect; see [`crate::membership`].
    pub fn membership(&self) -> Result<Membership> {
        self.with_reader(membership::load)
    }

    /// Devices removed from the library; see [`crate::membership::former_members`].
    pub fn former_members(&self) -> Result<Vec<lsync_protocol::Member>> {
        self.with_reader(membership::former_members)
    }

    /// Makes `configuration` (an entry at `sequence` of the leader's log) the configuration in
    /// effect — for a device that joins with the configuration it was given, before its log
    /// holds that entry.
    pub fn install_membership(
        &self,
        configuration: &lsync_protocol::Configuration,
        sequence: u64,
    ) -> Result<()> {
        self.write(|conn| membership::install(conn, configuration, sequence))
    }

    /// The leader's log is committed up to `commit_sequence`; see
    /// [`crate::membership::note_commit`].
    pub fn note_commit(&self, commit_sequence: u64) -> Result<bool> {
        self.write(|conn| membership::note_commit(conn, commit_sequence))
    }

    /// The position held before the log was last cleared for a rebuild, until the rebuilt log
    /// reaches it; see [`crate::membership::rebuild_mark`].
    pub fn rebuild_mark(&self) -> Result<LogPosition> {
        self.with_reader(membership::rebuild_mark)
    }

    /// Stores a new invitation; see [`crate::invitations::create`].
    pub fn invitation_create(
        &self,
        secret: &[u8],
        created_at_ms: i64,
        expires_at_ms: i64,
        learner: bool,
    ) -> Result<()> {
        self.write(|conn| invitations::create(conn, secret, created_at_ms, expires_at_ms, learner))
    }

    /// Claims an invitation for `device`; see [`crate::invitations::claim`].
    pub fn invitation_claim(
        &self,
        secret: &[u8],
        device: Uuid,
        now_ms: i64,
    ) -> Result<std::result::Result<Invitation, InvitationRefused>> {
        self.write(|conn| invitations::claim(conn, secret, device, now_ms))
    }

    /// Releases `device`'s claim on an invitation; see [`crate::invitations::release`].
    pub fn invitation_release(&self, secret: &[u8], device: Uuid) -> Result<()> {
        self.write(|conn| invitations::release(conn, secret, device))
    }

    /// The invitations still usable at `now_ms`, and the earliest expiry among them.
    pub fn invitations_open(&self, now_ms: i64) -> Result<(u64, Option<i64>)> {
        self.with_reader(|conn| {
            Ok((invitations::open_count(conn, now_ms)?, invitations::next_expiry(conn, now_ms)?))
        })
    }

    /// Until when unknown devices may connect to present an invitation; see
    /// [`crate::invitations::welcome_until`].
    pub fn invitations_welcome_until(&self) -> Result<Option<i64>> {
        self.with_reader(invitations::welcome_until)
    }

    /// Every invitation this device issued, newest first.
    pub fn invitations(&self) -> Result<Vec<Invitation>> {
        self.with_reader(invitations::list)
    }

    /// Stores a (verified) address hint if it is newer than the stored one; see
    /// [`crate::address_hints::store_if_newer`].
    pub fn hint_store(&self, hint: &lsync_protocol::AddressHint) -> Result<bool> {
        self.write(|conn| address_hints::store_if_newer(conn, hint))
    }

    /// Every stored address hint.
    pub fn hints(&self) -> Result<Vec<lsync_protocol::AddressHint>> {
        self.with_reader(address_hints::list)
    }

    /// The local jobs queued by bulk entries, by id.
    pub fn local_jobs(&self) -> Result<Vec<LocalJob>> {
        self.with_reader(local_jobs::list)
    }

    /// Sets the status of local job `id`; returns whether it exists.
    pub fn set_local_job_status(&self, id: i64, status: &str) -> Result<bool> {
        self.write(|conn| local_jobs::set_status(conn, id, status))
    }

    /// Queues proposal `proposal_id` in the durable outbox, after validating its changes
    /// against the registry; see [`outbox::push`]. Returns `false` (and changes nothing) if the
    /// id is queued already.
    ///
    /// In the same transaction its changes are applied to this device's model tables, over
    /// the committed rows and the changes queued before it (the pending overlay,
    /// docs/architecture.md, "Local-first writes"): the device shows them at once, whatever
    /// the leader's state, until they are committed (then the committed entries show them) or
    /// refused (then they disappear again, [`Database::outbox_mark_failed`]).
    ///
    /// # Errors
    /// Nothing is queued on any error: [`StorageError::InvalidChange`],
    /// [`StorageError::UnknownModel`].
    pub fn outbox_push(&self, proposal_id: Uuid, changes: &[Change]) -> Result<bool> {
        let registry = self.registry();
        outbox::validate(registry, changes)?;
        self.write(|conn| crate::pending::push(conn, registry, proposal_id, changes))
    }

    /// Every outbox entry, pending and failed, oldest first; see [`outbox::list_all`].
    pub fn outbox_list_all(&self) -> Result<Vec<OutboxEntry>> {
        self.with_reader(outbox::list_all)
    }

    /// Moves a pending proposal to failed; see [`outbox::mark_failed`]. Its changes leave the
    /// pending overlay in the same transaction: the records it changed show their committed
    /// rows again, with this device's other pending changes on top.
    pub fn outbox_mark_failed(&self, proposal_id: Uuid, reason: &str, at_ms: i64) -> Result<bool> {
        let registry = self.registry();
        self.write(|conn| {
            crate::pending::around_entry(conn, registry, proposal_id, |conn| {
                outbox::mark_failed(conn, proposal_id, reason, at_ms)
            })
        })
    }

    /// Puts a failed proposal back to pending; see [`outbox::retry`]. Its changes are shown
    /// again (the pending overlay, at its place in the outbox's order).
    pub fn outbox_retry(&self, proposal_id: Uuid) -> Result<bool> {
        let registry = self.registry();
        self.write(|conn| {
            crate::pending::around_entry(conn, registry, proposal_id, |conn| {
                outbox::retry(conn, proposal_id)
            })
        })
    }

    /// Deletes a failed proposal; see [`outbox::discard`].
    pub fn outbox_discard(&self, proposal_id: Uuid) -> Result<bool> {
        self.write(|conn| outbox::discard(conn, proposal_id))
    }

    /// The number of failed proposals; see [`outbox::count_failed`].
    pub fn outbox_count_failed(&self) -> Result<u64> {
        self.with_reader(outbox::count_failed)
    }

    /// The pending proposals, oldest first; see [`outbox::list`].
    pub fn outbox_list(&self) -> Result<Vec<OutboxEntry>> {
        self.with_reader(outbox::list)
    }

    /// The outbox entry `proposal_id` (pending or failed), if any.
    pub fn outbox_get(&self, proposal_id: Uuid) -> Result<Option<OutboxEntry>> {
        self.with_reader(|conn| outbox::get(conn, proposal_id))
    }

    /// Removes a queued proposal; returns whether it was queued. Its changes leave the pending
    /// overlay at once (the records show their committed rows, with the other pending changes
    /// on top): for a proposal a leader committed, [`Database::outbox_settle`] keeps showing
    /// it until this device's log holds it.
    pub fn outbox_remove(&self, proposal_id: Uuid) -> Result<bool> {
        let registry = self.registry();
        self.write(|conn| {
            crate::pending::around_entry(conn, registry, proposal_id, |conn| {
                outbox::remove(conn, proposal_id)
            })
        })
    }

    /// Puts back to pending every delivered proposal this device's log does not hold whole:
    /// at a new term (the proposer's `Command::Redeliver`), since the leader that answered it
    /// committed may have lost it (a failover replaced its tail, its disk went back). Proposed
    /// again, it commits once: the leader's log knows the proposal id. Returns how many moved.
    pub fn outbox_redeliver_unheld(&self) -> Result<u64> {
        self.write(crate::pending::redeliver_unheld)
    }

    /// Proposal `proposal_id` was committed by a leader, as far as `last_sequence` of its log
    /// (the end of the proposal's entries, or the leader's last sequence if it wrote none): if
    /// this device's log reaches that sequence and holds the whole proposal, it leaves the
    /// outbox and the pending overlay now (a log that reached it without the proposal sends it
    /// again: that leader's commit did not last); otherwise it moves to [`crate::OutboxState::Delivered`] — no longer delivered,
    /// still shown — and leaves once the applier brings the log there
    /// ([`crate::Applier::apply`]). A failed entry is not touched. Returns whether a pending or
    /// delivered entry was found.
    pub fn outbox_settle(&self, proposal_id: Uuid, last_sequence: u64) -> Result<bool> {
        let registry = self.registry();
        self.write(|conn| crate::pending::settle(conn, registry, proposal_id, last_sequence))
    }

    /// The next hybrid logical clock timestamp of this device (docs/architecture.md, "Hybrid
    /// logical clock"): later than every one it issued before — across restarts, whatever its
    /// wall clock did — and than every one it observed ([`Database::hlc_observe`]). Kept in
    /// the local table `hlc_state` in the same transaction.
    ///
    /// # Errors
    /// [`StorageError::NotInitialized`] before the sync state exists (the timestamp names the
    /// device).
    pub fn hlc_tick(&self) -> Result<crate::hlc::Hlc> {
        self.write(|conn| {
            let mut clock = crate::hlc::clock(conn)?;
            let next = clock.tick(crate::hlc::now());
            crate::hlc::store(conn, next)?;
            Ok(next)
        })
    }

    /// Takes in a timestamp another device issued: every timestamp [`Database::hlc_tick`] issues
    /// afterwards is later, unless it lies more than [`crate::hlc::MAX_DRIFT_MS`] ahead of this
    /// device's clock (then it is ignored).
    ///
    /// # Errors
    /// [`StorageError::NotInitialized`] before the sync state exists.
    pub fn hlc_observe(&self, remote: crate::hlc::Hlc) -> Result<crate::hlc::Observed> {
        self.write(|conn| crate::hlc::observe(conn, remote))
    }

    /// The pending overlay's captured committed rows: (model type, record id, the committed
    /// row or `None` if the record does not exist committed), by model type and record id
    /// (docs/architecture.md, "Local-first writes"). For tests and diagnostics.
    pub fn pending_undo(&self) -> Result<Vec<(String, String, Option<crate::StoredRecord>)>> {
        self.with_reader(crate::pending::undo_rows)
    }

    /// Records a failed delivery; see [`outbox::record_failure`].
    pub fn outbox_record_failure(
        &self,
        proposal_id: Uuid,
        error: &str,
        next_attempt_ms: i64,
    ) -> Result<bool> {
        self.write(|conn| outbox::record_failure(conn, proposal_id, error, next_attempt_ms))
    }

    /// The number of pending proposals.
    pub fn outbox_count(&self) -> Result<u64> {
        self.with_reader(outbox::count)
    }

    /// The number of log entries set aside by [`crate::Applier::reset_for_repair`] and not yet
    /// handled by [`crate::Applier::recover_orphans`] (non-zero after a crash between the two).
    pub fn stashed_count(&self) -> Result<u64> {
        self.with_reader(crate::applier::stashed_count)
    }

    /// Every synced table — `sync_log` and each registered model table — each row rendered as
    /// SQLite's `quote()` of every column joined by `|`, ordered by primary key. Read in one
    /// read transaction (a consistent snapshot). For row-by-row convergence checks.
    pub fn dump(&self) -> Result<BTreeMap<String, Vec<String>>> {
        let mut tables = vec!["sync_log".to_owned()];
        for handler in self.registry().handlers() {
            tables.push(handler.table_name().to_owned());
        }
        self.with_reader(|conn| {
            conn.transaction(|conn| {
                let mut dump = BTreeMap::new();
                for table in tables {
                    let rows = dump_table(conn, &table)?;
                    dump.insert(table, rows);
                }
                Ok(dump)
            })
        })
    }
}

fn dump_table(conn: &mut SqliteConnection, table: &str) -> Result<Vec<String>> {
    let columns = diesel::sql_query("SELECT name, pk FROM pragma_table_info(?) ORDER BY cid")
        .bind::<Text, _>(table)
        .load::<ColumnInfo>(conn)?;
    if columns.is_empty() {
        return Err(StorageError::Corrupt(format!("table {table:?} does not exist")));
    }
    let row = columns
        .iter()
        .map(|c| format!("quote({})", quote_ident(&c.name)))
        .collect::<Vec<_>>()
        .join(" || '|' || ");
    let mut pk: Vec<&ColumnInfo> = columns.iter().filter(|c| c.pk > 0).collect();
    pk.sort_by_key(|c| c.pk);
    let order = if pk.is_empty() {
        "rowid".to_owned()
    } else {
        pk.iter().map(|c| quote_ident(&c.name)).collect::<Vec<_>>().join(", ")
    };
    let sql = format!("SELECT {row} AS row FROM {} ORDER BY {order}", quote_ident(table));
    Ok(diesel::sql_query(sql).load::<DumpRow>(conn)?.into_iter().map(|r| r.row).collect())
}
