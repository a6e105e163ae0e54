//! The library's member devices (`devices` table).

use diesel::prelude::*;
use diesel::sqlite::SqliteConnection;
use diesel::upsert::excluded;
use uuid::Uuid;

use crate::error::{now_ms, parse_uuid, Result, StorageError};
use crate::schema::devices as table;

/// A member device of the library.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// The device's stable id.
    pub device_id: Uuid,
    /// Its libp2p peer id, in text form.
    pub peer_id: String,
    /// Multiaddrs it may be reached at (stored as a JSON array).
    pub addresses: Vec<String>,
    /// A human-readable name.
    pub name: String,
}

type DeviceRow = (String, String, String, String);

fn row_to_device(row: DeviceRow) -> Result<Device> {
    let (device_id, peer_id, addresses, name) = row;
    let addresses = serde_json::from_str(&addresses).map_err(|e| {
        StorageError::Corrupt(format!("devices {device_id}: bad addresses {addresses:?}: {e}"))
    })?;
    Ok(Device { device_id: parse_uuid(&device_id, "devices device_id")?, peer_id, addresses, name })
}

fn columns() -> (table::device_id, table::peer_id, table::addresses, table::name) {
    (table::device_id, table::peer_id, table::addresses, table::name)
}

/// Inserts `device`, or updates its peer id, addresses and name (keeping when it was added).
pub fn upsert(conn: &mut SqliteConnection, device: &Device) -> Result<()> {
    let addresses = serde_json::to_string(&device.addresses)
        .map_err(|e| StorageError::InvalidChange(format!("device addresses: {e}")))?;
    diesel::insert_into(table::table)
        .values((
            table::device_id.eq(device.device_id.to_string()),
            table::peer_id.eq(&device.peer_id),
            table::addresses.eq(&addresses),
            table::name.eq(&device.name),
            table::added_at_ms.eq(now_ms()),
        ))
        .on_conflict(table::device_id)
        .do_update()
        .set((
            table::peer_id.eq(excluded(table::peer_id)),
            table::addresses.eq(excluded(table::addresses)),
            table::name.eq(excluded(table::name)),
        ))
        .execute(conn)?;
    Ok(())
}

/// Every member device, ordered by device id.
pub fn list(conn: &mut SqliteConnection) -> Result<Vec<Device>> {
    table::table
        .select(columns())
        .order(table::device_id.asc())
        .load::<DeviceRow>(conn)?
        .into_iter()
        .map(row_to_device)
        .collect()
}

/// The device `device_id`, if it is a member.
pub fn get(conn: &mut SqliteConnection, device_id: Uuid) -> Result<Option<Device>> {
    table::table
        .find(device_id.to_string())
        .select(columns())
        .get_result::<DeviceRow>(conn)
        .optional()?
        .map(row_to_device)
        .transpose()
}

/// Removes the device; returns whether it was a member.
pub fn remove(conn: &mut SqliteConnection, device_id: Uuid) -> Result<bool> {
    let rows = diesel::delete(table::table.find(device_id.to_string())).execute(conn)?;
    Ok(rows > 0)
}
