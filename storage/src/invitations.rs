//! Invitations this device issued (`invitations` table, local, not replicated): one-time
//! secrets a new device presents in `Join`. Only a SHA-256 hash of each secret is stored, so a
//! copy of the database does not let anyone join.
//!
//! An invitation is *claimed* by the first device that presents it ([`claim`], in one
//! transaction, so two devices can never both use one); the claim is released if the leader
//! then refuses the change ([`release`]), and presenting it again from the same device gets
//! the same answer again (a lost `Joined` can be retried).

use diesel::prelude::*;
use diesel::sqlite::SqliteConnection;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::error::{parse_uuid, Result};
use crate::schema::invitations as table;

/// The length of an invitation secret, in bytes.
pub const SECRET_LEN: usize = 32;

/// The stored form of a secret.
pub fn hash_secret(secret: &[u8]) -> [u8; 32] {
    Sha256::digest(secret).into()
}

/// An invitation as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invitation {
    /// SHA-256 of the secret.
    pub secret_hash: [u8; 32],
    /// When it was issued (ms since the epoch).
    pub created_at_ms: i64,
    /// When it stops being accepted (ms since the epoch).
    pub expires_at_ms: i64,
    /// The invited device stays a learner for good.
    pub learner: bool,
    /// The device that used it, if any.
    pub used_by: Option<Uuid>,
}

/// Why an invitation was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvitationRefused {
    /// No invitation of this device has that secret.
    #[error("unknown invitation: it was not issued by this device (or was deleted)")]
    Unknown,
    /// It expired.
    #[error("the invitation expired; ask for a new one (`lsync library invite`)")]
    Expired,
    /// Another device used it already.
    #[error("the invitation was used already by another device; ask for a new one")]
    Used,
}

/// Stores a new invitation of `secret`, valid until `expires_at_ms`.
pub fn create(
    conn: &mut SqliteConnection,
    secret: &[u8],
    created_at_ms: i64,
    expires_at_ms: i64,
    learner: bool,
) -> Result<()> {
    diesel::insert_into(table::table)
        .values((
            table::secret_hash.eq(hash_secret(secret).to_vec()),
            table::created_at_ms.eq(created_at_ms),
            table::expires_at_ms.eq(expires_at_ms),
            table::learner.eq(learner),
        ))
        .execute(conn)?;
    Ok(())
}

type Row = (Vec<u8>, i64, i64, bool, Option<String>);

fn row_to_invitation(row: Row) -> Result<Invitation> {
    let (hash, created_at_ms, expires_at_ms, learner, used_by) = row;
    let secret_hash = hash
        .try_into()
        .map_err(|_| crate::StorageError::Corrupt("invitations: bad secret hash".into()))?;
    Ok(Invitation {
        secret_hash,
        created_at_ms,
        expires_at_ms,
        learner,
        used_by: used_by.map(|u| parse_uuid(&u, "invitations used_by")).transpose()?,
    })
}

fn get(conn: &mut SqliteConnection, hash: &[u8; 32]) -> Result<Option<Invitation>> {
    table::table
        .find(hash.to_vec())
        .select((
            table::secret_hash,
            table::created_at_ms,
            table::expires_at_ms,
            table::learner,
            table::used_by,
        ))
        .get_result::<Row>(conn)
        .optional()?
        .map(row_to_invitation)
        .transpose()
}

/// Claims the invitation of `secret` for `device` at `now_ms`: accepted if it exists and is
/// unused and unexpired, or was claimed by this very device before (a retry). The caller holds
/// the transaction. Returns the invitation (with `used_by` set), or why it is refused.
pub fn claim(
    conn: &mut SqliteConnection,
    secret: &[u8],
    device: Uuid,
    now_ms: i64,
) -> Result<std::result::Result<Invitation, InvitationRefused>> {
    let hash = hash_secret(secret);
    let Some(mut invitation) = get(conn, &hash)? else {
        return Ok(Err(InvitationRefused::Unknown));
    };
    match invitation.used_by {
        Some(by) if by == device => return Ok(Ok(invitation)),
        Some(_) => return Ok(Err(InvitationRefused::Used)),
        None if now_ms >= invitation.expires_at_ms => return Ok(Err(InvitationRefused::Expired)),
        None => {}
    }
    diesel::update(table::table.find(hash.to_vec()))
        .set((table::used_by.eq(device.to_string()), table::used_at_ms.eq(now_ms)))
        .execute(conn)?;
    invitation.used_by = Some(device);
    Ok(Ok(invitation))
}

/// Releases a claim of `device` on the invitation of `secret` (the leader refused the
/// change): the invitation can be used again until it expires.
pub fn release(conn: &mut SqliteConnection, secret: &[u8], device: Uuid) -> Result<()> {
    diesel::update(
        table::table
            .find(hash_secret(secret).to_vec())
            .filter(table::used_by.eq(device.to_string())),
    )
    .set((table::used_by.eq(None::<String>), table::used_at_ms.eq(None::<i64>)))
    .execute(conn)?;
    Ok(())
}

/// How long after an invitation expired or was used the issuing device still lets unknown
/// devices connect to present it, so that a late or second device is told why it is refused
/// instead of finding the connection closed.
pub const REFUSAL_GRACE_MS: i64 = 10 * 60 * 1000;

/// Until when (ms since the epoch) unknown devices may connect to present an invitation: the
/// latest expiry of an unused invitation, or use of a used one, plus [`REFUSAL_GRACE_MS`].
pub fn welcome_until(conn: &mut SqliteConnection) -> Result<Option<i64>> {
    let unused = table::table
        .filter(table::used_by.is_null())
        .select(diesel::dsl::max(table::expires_at_ms))
        .get_result::<Option<i64>>(conn)?;
    let used = table::table
        .filter(table::used_by.is_not_null())
        .select(diesel::dsl::max(table::used_at_ms))
        .get_result::<Option<i64>>(conn)?;
    Ok(unused.max(used).map(|t| t.saturating_add(REFUSAL_GRACE_MS)))
}

/// The number of invitations that can still be used at `now_ms`.
pub fn open_count(conn: &mut SqliteConnection, now_ms: i64) -> Result<u64> {
    let n = table::table
        .filter(table::used_by.is_null())
        .filter(table::expires_at_ms.gt(now_ms))
        .count()
        .get_result::<i64>(conn)?;
    Ok(n.max(0) as u64)
}

/// The earliest expiry of an invitation that can still be used at `now_ms`.
pub fn next_expiry(conn: &mut SqliteConnection, now_ms: i64) -> Result<Option<i64>> {
    Ok(table::table
        .filter(table::used_by.is_null())
        .filter(table::expires_at_ms.gt(now_ms))
        .select(diesel::dsl::min(table::expires_at_ms))
        .get_result::<Option<i64>>(conn)?)
}

/// Every invitation, newest first.
pub fn list(conn: &mut SqliteConnection) -> Result<Vec<Invitation>> {
    table::table
        .select((
            table::secret_hash,
            table::created_at_ms,
            table::expires_at_ms,
            table::learner,
            table::used_by,
        ))
        .order(table::created_at_ms.desc())
        .load::<Row>(conn)?
        .into_iter()
        .map(row_to_invitation)
        .collect()
}

/// Deletes the invitations that expired before `before_ms` and were never used.
pub fn prune(conn: &mut SqliteConnection, before_ms: i64) -> Result<u64> {
    Ok(diesel::delete(
        table::table.filter(table::used_by.is_null()).filter(table::expires_at_ms.lt(before_ms)),
    )
    .execute(conn)? as u64)
}
