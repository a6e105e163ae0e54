//! This device's view of the library: the single `sync_state` row, and the *election record*
//! ([`ElectionRecord`]): the term, the vote and the leader the election persisted, in a small
//! file of its own beside the database, written with a full sync (docs/architecture.md,
//! "Terms and votes on disk").

use std::io::Write;
use std::path::{Path, PathBuf};

use diesel::prelude::*;
use diesel::sqlite::SqliteConnection;
use lsync_protocol::SyncRole;
use uuid::Uuid;

use crate::error::{parse_uuid, to_i64, to_u64, Result, StorageError};
use crate::schema::sync_state as table;

/// This device's view of one library, persisted in the single `sync_state` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncState {
    /// The library.
    pub library_id: Uuid,
    /// This device.
    pub device_id: Uuid,
    /// The role this device believes it has.
    pub role: SyncRole,
    /// The latest term this device has seen.
    pub current_term: u64,
    /// The candidate this device voted for in `current_term`, if any.
    pub voted_for: Option<Uuid>,
    /// The leader of `current_term` this device knows of, if any.
    pub leader_device: Option<Uuid>,
    /// The last log sequence applied (follower) or committed (leader); updated in the same
    /// transaction as the entries it covers.
    pub last_synced_sequence: u64,
}

const ROW_ID: i32 = 1;

type StateRow = (String, String, String, i64, Option<String>, Option<String>, i64);

fn role_to_str(role: SyncRole) -> &'static str {
    match role {
        SyncRole::Leader => "leader",
        SyncRole::Follower => "follower",
        SyncRole::Candidate => "candidate",
    }
}

fn role_from_str(text: &str) -> Result<SyncRole> {
    match text {
        "leader" => Ok(SyncRole::Leader),
        "follower" => Ok(SyncRole::Follower),
        "candidate" => Ok(SyncRole::Candidate),
        other => Err(StorageError::Corrupt(format!("sync_state: unknown role {other:?}"))),
    }
}

fn opt_uuid(text: Option<String>, what: &str) -> Result<Option<Uuid>> {
    text.map(|t| parse_uuid(&t, what)).transpose()
}

/// Loads the state, `None` if it was never initialized.
pub fn load(conn: &mut SqliteConnection) -> Result<Option<SyncState>> {
    let row = table::table
        .find(ROW_ID)
        .select((
            table::library_id,
            table::device_id,
            table::role,
            table::current_term,
            table::voted_for,
            table::leader_device,
            table::last_synced_sequence,
        ))
        .get_result::<StateRow>(conn)
        .optional()?;
    let Some((library_id, device_id, role, term, voted_for, leader, last)) = row else {
        return Ok(None);
    };
    Ok(Some(SyncState {
        library_id: parse_uuid(&library_id, "sync_state library_id")?,
        device_id: parse_uuid(&device_id, "sync_state device_id")?,
        role: role_from_str(&role)?,
        current_term: to_u64(term, "sync_state current_term")?,
        voted_for: opt_uuid(voted_for, "sync_state voted_for")?,
        leader_device: opt_uuid(leader, "sync_state leader_device")?,
        last_synced_sequence: to_u64(last, "sync_state last_synced_sequence")?,
    }))
}

/// Inserts `state` if no state exists; an existing row is left untouched.
pub fn init(conn: &mut SqliteConnection, state: &SyncState) -> Result<()> {
    diesel::insert_or_ignore_into(table::table)
        .values((
            table::id.eq(ROW_ID),
            table::library_id.eq(state.library_id.to_string()),
            table::device_id.eq(state.device_id.to_string()),
            table::role.eq(role_to_str(state.role)),
            table::current_term.eq(to_i64(state.current_term, "term")?),
            table::voted_for.eq(state.voted_for.map(|u| u.to_string())),
            table::leader_device.eq(state.leader_device.map(|u| u.to_string())),
            table::last_synced_sequence.eq(to_i64(state.last_synced_sequence, "sequence")?),
        ))
        .execute(conn)?;
    Ok(())
}

fn updated(rows: usize) -> Result<()> {
    if rows == 0 {
        Err(StorageError::NotInitialized)
    } else {
        Ok(())
    }
}

/// Sets the role, current term and known leader (the vote is kept).
///
/// # Errors
/// [`StorageError::NotInitialized`] if there is no state row.
pub fn set_leadership(
    conn: &mut SqliteConnection,
    role: SyncRole,
    term: u64,
    leader: Option<Uuid>,
) -> Result<()> {
    let rows = diesel::update(table::table.find(ROW_ID))
        .set((
            table::role.eq(role_to_str(role)),
            table::current_term.eq(to_i64(term, "term")?),
            table::leader_device.eq(leader.map(|u| u.to_string())),
        ))
        .execute(conn)?;
    updated(rows)
}

/// Sets the current term and the vote cast in it (role and leader are kept).
///
/// # Errors
/// [`StorageError::NotInitialized`] if there is no state row.
pub fn set_vote(conn: &mut SqliteConnection, term: u64, voted_for: Option<Uuid>) -> Result<()> {
    let rows = diesel::update(table::table.find(ROW_ID))
        .set((
            table::current_term.eq(to_i64(term, "term")?),
            table::voted_for.eq(voted_for.map(|u| u.to_string())),
        ))
        .execute(conn)?;
    updated(rows)
}

/// Sets `last_synced_sequence`.
///
/// # Errors
/// [`StorageError::NotInitialized`] if there is no state row.
pub fn set_last_synced(conn: &mut SqliteConnection, sequence: u64) -> Result<()> {
    let rows = SetLastSynced(to_i64(sequence, "sequence")?).execute(conn)?;
    updated(rows)
}

/// `UPDATE sync_state SET last_synced_sequence = ? WHERE id = 1` as a statement diesel
/// prepares once per connection: diesel never caches the statement of a `diesel::update`, so
/// SQLite would parse and plan it at every commit and every applied batch (about 20 µs each
/// on the leader's commit path, docs/performance.md "Fifth round"). Its static `QueryId` is
/// what lets diesel keep it.
#[derive(Debug, Clone, Copy, diesel::query_builder::QueryId)]
struct SetLastSynced(i64);

impl diesel::query_builder::QueryFragment<diesel::sqlite::Sqlite> for SetLastSynced {
    fn walk_ast<'b>(
        &'b self,
        mut out: diesel::query_builder::AstPass<'_, 'b, diesel::sqlite::Sqlite>,
    ) -> QueryResult<()> {
        out.push_sql("UPDATE sync_state SET last_synced_sequence = ");
        out.push_bind_param::<diesel::sql_types::BigInt, _>(&self.0)?;
        out.push_sql(" WHERE id = ");
        out.push_bind_param::<diesel::sql_types::Integer, _>(&ROW_ID)?;
        Ok(())
    }
}

impl RunQueryDsl<SqliteConnection> for SetLastSynced {}

// Diesel keeps a statement prepared only when its type has a static query id.
const _: () = assert!(<SetLastSynced as diesel::query_builder::QueryId>::HAS_STATIC_QUERY_ID);

/// The election's durable state: what a device must never forget once it acted on it (a vote
/// granted, a term adopted, a leadership won). Written by [`write_record`] before the
/// `sync_state` row (which `synchronous = NORMAL` may lose on power loss) and before anything
/// that depends on it is sent; [`crate::Database::sync_state`] reads it over the row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ElectionRecord {
    /// The current term.
    pub term: u64,
    /// The candidate voted for in `term`.
    pub voted_for: Option<Uuid>,
    /// The leader known for `term`.
    pub leader: Option<Uuid>,
}

/// The first line of a record file: its format and version.
const RECORD_HEADER: &str = "lsync election record 1";

/// The election record's file for the database at `db`: `<db>.election`, in the same
/// directory (so that the directory's fsync covers both).
pub fn record_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".election");
    PathBuf::from(name)
}

/// The record's text: the header, then `term`, `voted_for` and `leader` lines (`-` for none).
fn record_text(record: &ElectionRecord) -> String {
    let opt = |u: Option<Uuid>| u.map_or_else(|| "-".to_owned(), |u| u.to_string());
    format!(
        "{RECORD_HEADER}\nterm {}\nvoted_for {}\nleader {}\n",
        record.term,
        opt(record.voted_for),
        opt(record.leader)
    )
}

fn parse_record(text: &str) -> Result<ElectionRecord> {
    let corrupt = |what: &str| StorageError::Corrupt(format!("election record: {what}"));
    let mut lines = text.lines();
    if lines.next() != Some(RECORD_HEADER) {
        return Err(corrupt("unknown format"));
    }
    let mut field = |name: &str| {
        lines
            .next()
            .and_then(|l| l.strip_prefix(name))
            .and_then(|l| l.strip_prefix(' '))
            .ok_or_else(|| corrupt(&format!("no {name} line")))
    };
    let term = field("term")?;
    let term: u64 = term.parse().map_err(|_| corrupt("bad term"))?;
    if i64::try_from(term).is_err() {
        return Err(corrupt("term beyond SQLite's integer"));
    }
    let uuid = |text: &str, what: &str| match text {
        "-" => Ok(None),
        t => parse_uuid(t, what).map(Some),
    };
    let voted_for = uuid(field("voted_for")?, "election record voted_for")?;
    let leader = uuid(field("leader")?, "election record leader")?;
    if lines.next().is_some() {
        return Err(corrupt("trailing lines"));
    }
    Ok(ElectionRecord { term, voted_for, leader })
}

/// Reads the election record at `path` (see [`record_path`]); `None` if there is none yet.
///
/// # Errors
/// [`StorageError::Corrupt`] for a file that is not a record (it is never half-written: see
/// [`write_record`]); [`StorageError::Io`].
pub fn read_record(path: &Path) -> Result<Option<ElectionRecord>> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse_record(&text).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Writes the election record at `path` durably and atomically: a temporary file beside it,
/// written and fsynced, renamed over the record, then the directory fsynced (so that the
/// rename itself survives a power loss). A crash at any point leaves the old record or the new
/// one, never a mix.
///
/// # Errors
/// [`StorageError::Io`]; [`StorageError::InvalidChange`] for a term SQLite cannot hold.
pub fn write_record(path: &Path, record: &ElectionRecord) -> Result<()> {
    to_i64(record.term, "term")?;
    write_durably(path, &record_text(record))
}

/// Replaces the file at `path` with `text` durably and atomically (temporary file, fsync,
/// rename, directory fsync).
pub(crate) fn write_durably(path: &Path, text: &str) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    sync_dir(path)?;
    Ok(())
}

// The high-water mark's files and their format moved to `crate::mark` (with the chain hash);
// their paths and readers stay reachable here.
pub use crate::mark::{
    ack_mark_path, mark_path, read_ack_mark, read_mark, write_ack_mark, write_mark,
};

/// Fsyncs the directory holding `path`, making a rename in it durable. Only where a directory
/// can be opened and synced (Unix); elsewhere the rename is as durable as the platform makes it.
fn sync_dir(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        std::fs::File::open(dir)?.sync_all()?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// `state` as the election record updates it. The record is written before the row, so a
/// record of a newer term, or of the same term with another vote or leader, is the later
/// state (the row lost its last write, e.g. to a power loss): its term, vote and leader win,
/// and the role follows them (leader if it names this device, else follower; a candidate of
/// the same term with no leader stays one). A record of an older term than the row is older
/// than it (the row was written without the election: a forced reconfiguration, an older
/// version of lsync): the row wins.
pub fn with_record(mut state: SyncState, record: Option<ElectionRecord>) -> SyncState {
    let Some(r) = record else { return state };
    if r.term < state.current_term
        || (r.term == state.current_term
            && r.voted_for == state.voted_for
            && r.leader == state.leader_device)
    {
        return state;
    }
    let same_term = r.term == state.current_term;
    state.role = if r.leader == Some(state.device_id) {
        SyncRole::Leader
    } else if same_term && state.role == SyncRole::Candidate && r.leader.is_none() {
        SyncRole::Candidate
    } else {
        SyncRole::Follower
    };
    state.current_term = r.term;
    state.voted_for = r.voted_for;
    state.leader_device = r.leader;
    state
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn state(
        role: SyncRole,
        term: u64,
        voted_for: Option<u128>,
        leader: Option<u128>,
    ) -> SyncState {
        SyncState {
            library_id: id(100),
            device_id: id(1),
            role,
            current_term: term,
            voted_for: voted_for.map(id),
            leader_device: leader.map(id),
            last_synced_sequence: 9,
        }
    }

    fn record(term: u64, voted_for: Option<u128>, leader: Option<u128>) -> ElectionRecord {
        ElectionRecord { term, voted_for: voted_for.map(id), leader: leader.map(id) }
    }

    #[test]
    fn a_record_round_trips_through_its_file_and_replaces_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = record_path(&dir.path().join("library.db"));
        assert_eq!(path.file_name().unwrap(), "library.db.election");
        assert_eq!(read_record(&path).unwrap(), None);
        write_record(&path, &record(3, Some(2), None)).unwrap();
        write_record(&path, &record(4, Some(1), Some(1))).unwrap();
        assert_eq!(read_record(&path).unwrap(), Some(record(4, Some(1), Some(1))));
        let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(files.len(), 1, "no temporary file is left behind");
    }

    #[test]
    fn a_file_that_is_not_a_record_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.election");
        for text in [
            "",
            "lsync election record 2\nterm 1\nvoted_for -\nleader -\n",
            "lsync election record 1\nterm 1\nvoted_for -\n",
            "lsync election record 1\nterm 9223372036854775808\nvoted_for -\nleader -\n",
            "lsync election record 1\nterm 1\nvoted_for nobody\nleader -\n",
            "lsync election record 1\nterm 1\nvoted_for -\nleader -\nmore\n",
        ] {
            std::fs::write(&path, text).unwrap();
            assert!(matches!(read_record(&path), Err(StorageError::Corrupt(_))), "{text:?}");
        }
    }

    #[test]
    fn a_term_sqlite_cannot_hold_is_not_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.election");
        let refused = write_record(&path, &record(u64::MAX, None, None));
        assert!(matches!(refused, Err(StorageError::InvalidChange(_))), "{refused:?}");
        assert!(!path.exists());
    }

    #[test]
    fn a_newer_record_wins_over_a_row_that_lost_its_last_write() {
        let row = state(SyncRole::Follower, 4, None, Some(2));
        assert_eq!(
            with_record(row.clone(), Some(record(5, Some(3), None))),
            state(SyncRole::Follower, 5, Some(3), None)
        );
        assert_eq!(
            with_record(row.clone(), Some(record(5, Some(1), Some(1)))),
            state(SyncRole::Leader, 5, Some(1), Some(1))
        );
        // the same term, a vote the row lost
        assert_eq!(
            with_record(state(SyncRole::Candidate, 4, None, None), Some(record(4, Some(1), None))),
            state(SyncRole::Candidate, 4, Some(1), None)
        );
    }

    #[test]
    fn an_older_or_equal_record_leaves_the_row_alone() {
        let row = state(SyncRole::Leader, 6, Some(1), Some(1));
        assert_eq!(with_record(row.clone(), None), row);
        assert_eq!(with_record(row.clone(), Some(record(5, Some(2), Some(2)))), row);
        assert_eq!(with_record(row.clone(), Some(record(6, Some(1), Some(1)))), row);
    }

    #[test]
    fn set_last_synced_is_one_statement_diesel_keeps_prepared() {
        let sql = diesel::debug_query::<diesel::sqlite::Sqlite, _>(&SetLastSynced(7)).to_string();
        assert!(
            sql.starts_with("UPDATE sync_state SET last_synced_sequence = ? WHERE id = ?"),
            "{sql}"
        );
    }
}
