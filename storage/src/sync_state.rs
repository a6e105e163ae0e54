//! This device's view of the library: the single `sync_state` row.

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_last_synced_is_one_statement_diesel_keeps_prepared() {
        let sql = diesel::debug_query::<diesel::sqlite::Sqlite, _>(&SetLastSynced(7)).to_string();
        assert!(
            sql.starts_with("UPDATE sync_state SET last_synced_sequence = ? WHERE id = ?"),
            "{sql}"
        );
    }
}
