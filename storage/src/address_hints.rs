//! Signed address hints (`address_hints` table, local): per device, the latest
//! [`AddressHint`] this device accepted — where to dial that member. The caller verifies the
//! signature against the member's peer id before storing; a hint never changes who is a member.

use diesel::prelude::*;
use diesel::sqlite::SqliteConnection;
use lsync_protocol::AddressHint;
use uuid::Uuid;

use crate::error::{parse_uuid, saturating_i64, to_u64, Result, StorageError};
use crate::schema::address_hints as table;

type Row = (String, String, i64, Vec<u8>);

fn row_to_hint(row: Row) -> Result<AddressHint> {
    let (device_id, addresses, counter, signature) = row;
    Ok(AddressHint {
        device_id: parse_uuid(&device_id, "address_hints device_id")?,
        addresses: serde_json::from_str(&addresses).map_err(|e| {
            StorageError::Corrupt(format!("address_hints {device_id}: bad addresses: {e}"))
        })?,
        counter: to_u64(counter, "address_hints counter")?,
        signature,
    })
}

/// Stores `hint` if no hint of its device with a counter at least as high is stored; returns
/// whether it was stored.
pub fn store_if_newer(conn: &mut SqliteConnection, hint: &AddressHint) -> Result<bool> {
    if get(conn, hint.device_id)?.is_some_and(|old| old.counter >= hint.counter) {
        return Ok(false);
    }
    let addresses = serde_json::to_string(&hint.addresses)
        .map_err(|e| StorageError::InvalidChange(format!("hint addresses: {e}")))?;
    diesel::replace_into(table::table)
        .values((
            table::device_id.eq(hint.device_id.to_string()),
            table::addresses.eq(addresses),
            table::counter.eq(saturating_i64(hint.counter)),
            table::signature.eq(&hint.signature),
        ))
        .execute(conn)?;
    Ok(true)
}

/// The hint stored for `device`.
pub fn get(conn: &mut SqliteConnection, device: Uuid) -> Result<Option<AddressHint>> {
    table::table
        .find(device.to_string())
        .select((table::device_id, table::addresses, table::counter, table::signature))
        .get_result::<Row>(conn)
        .optional()?
        .map(row_to_hint)
        .transpose()
}

/// Every stored hint, by device id.
pub fn list(conn: &mut SqliteConnection) -> Result<Vec<AddressHint>> {
    table::table
        .select((table::device_id, table::addresses, table::counter, table::signature))
        .order(table::device_id.asc())
        .load::<Row>(conn)?
        .into_iter()
        .map(row_to_hint)
        .collect()
}

/// Forgets the hint of `device` (it left the library).
pub fn forget(conn: &mut SqliteConnection, device: Uuid) -> Result<()> {
    diesel::delete(table::table.find(device.to_string())).execute(conn)?;
    Ok(())
}
