//! The JSON bodies of the control API, shared by the daemon and the `lsync` client commands.
//!
//! Responses the daemon builds from the node's own types ([`crate::LibraryStatus`]) are read
//! back by the client through the `*View` structs, which keep only the fields the client shows
//! and ignore the rest.

use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{Change, ChangeType, DeviceInfo, Location, SyncLogEntry, Syncable, Tag};

/// The most entries one `GET /libraries/{id}/log` returns; a larger `limit` is capped to it.
pub const MAX_LOG_LIMIT: u64 = 1_000;
/// `limit` of `GET /libraries/{id}/log` when none is given.
pub const DEFAULT_LOG_LIMIT: u64 = 100;

/// An error response: `{"error": "..."}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// A member device, as another device must know it (`POST /libraries/{id}/devices`, and the
/// leader and members of `POST /libraries/{id}/join`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceJson {
    pub device_id: Uuid,
    pub peer_id: String,
    pub addresses: Vec<String>,
    #[serde(default)]
    pub name: String,
}

impl DeviceJson {
    /// The JSON form of a device.
    pub fn from_info(info: &DeviceInfo) -> Self {
        Self {
            device_id: info.device_id,
            peer_id: info.peer_id.to_string(),
            addresses: info.addresses.iter().map(ToString::to_string).collect(),
            name: info.name.clone(),
        }
    }

    /// Checks the peer id and the addresses.
    pub fn to_info(&self) -> Result<DeviceInfo, String> {
        let peer_id: PeerId = self.peer_id.parse().map_err(|e| {
            format!(
                "bad peer id {:?} ({e}): copy it from `lsync status` on that device",
                self.peer_id
            )
        })?;
        if self.addresses.is_empty() {
            return Err(format!(
                "device {} has no address: give at least one, e.g. /ip4/192.168.1.20/tcp/7700",
                self.device_id
            ));
        }
        let mut addresses = Vec::new();
        for a in &self.addresses {
            let addr: Multiaddr = a.parse().map_err(|e| {
                format!(
                    "bad address {a:?} ({e}): use a multiaddr such as /ip4/192.168.1.20/tcp/7700"
                )
            })?;
            addresses.push(addr);
        }
        Ok(DeviceInfo { device_id: self.device_id, peer_id, addresses, name: self.name.clone() })
    }
}

/// Response of `POST /libraries`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreatedLibrary {
    pub library_id: Uuid,
    /// This device (the library's leader), to pass to `lsync library join` on the followers.
    pub leader: DeviceJson,
}

/// Body of `POST /libraries/{id}/join`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinRequest {
    pub leader: DeviceJson,
    /// Other member devices known so far (the leader and this device may be included).
    #[serde(default)]
    pub members: Vec<DeviceJson>,
}

/// Body of `POST /libraries/{id}/changes`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChangeRequest {
    /// A built-in model type: `tag` or `location`.
    pub model_type: String,
    /// The record's id; default: the `id` field of `data`.
    #[serde(default)]
    pub record_id: Option<String>,
    /// `insert` (default), `update` or `delete`.
    #[serde(default)]
    pub change_type: Option<String>,
    /// The whole record as a JSON object (Insert/Update); ignored for Delete.
    #[serde(default)]
    pub data: serde_json::Value,
}

/// Model types the control API can encode from JSON.
pub const JSON_MODELS: [&str; 2] = [Tag::MODEL_TYPE, Location::MODEL_TYPE];

impl ChangeRequest {
    /// Encodes the change with the built-in models; the error is a message for the caller.
    pub fn to_change(&self) -> Result<Change, String> {
        let change_type = match self.change_type.as_deref().map(str::to_ascii_lowercase) {
            None => ChangeType::Insert,
            Some(t) => match ChangeType::parse(&t) {
                Some(ChangeType::Bulk) | None => {
                    return Err(format!(
                        "bad change_type {t:?}: use \"insert\", \"update\" or \"delete\""
                    ))
                }
                Some(ct) => ct,
            },
        };
        if !JSON_MODELS.contains(&self.model_type.as_str()) {
            return Err(format!(
                "unknown model type {:?}: the control API encodes {} (a host registers other \
                 models through the embedding API)",
                self.model_type,
                JSON_MODELS.join(", ")
            ));
        }
        if change_type == ChangeType::Delete {
            let record_id = self
                .record_id
                .clone()
                .or_else(|| self.data.get("id").and_then(|v| v.as_str()).map(str::to_owned))
                .ok_or("a delete needs record_id (or data with an \"id\")")?;
            return Ok(match self.model_type.as_str() {
                Tag::MODEL_TYPE => Change::delete::<Tag>(record_id),
                _ => Change::delete::<Location>(record_id),
            });
        }
        if !self.data.is_object() {
            return Err(format!("data must be a JSON object with the {} fields", self.model_type));
        }
        let change = match self.model_type.as_str() {
            Tag::MODEL_TYPE => build::<Tag>(&self.data, change_type)?,
            _ => build::<Location>(&self.data, change_type)?,
        };
        if let Some(id) = &self.record_id {
            if *id != change.record_id {
                return Err(format!(
                    "record_id {id:?} differs from the id {:?} in data",
                    change.record_id
                ));
            }
        }
        Ok(change)
    }
}

fn build<M: Syncable + serde::de::DeserializeOwned>(
    data: &serde_json::Value,
    change_type: ChangeType,
) -> Result<Change, String> {
    let model: M = serde_json::from_value(data.clone())
        .map_err(|e| format!("data is not a valid {}: {e}", M::MODEL_TYPE))?;
    Ok(if change_type == ChangeType::Update {
        Change::update(&model)
    } else {
        Change::insert(&model)
    })
}

/// The answer to `POST /libraries/{id}/changes`: what became of the write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteJson {
    /// `committed` (sequenced by the leader, applied here) or `queued` (no leader reachable;
    /// waits in this device's outbox and will be committed once).
    pub status: String,
    pub first_sequence: Option<u64>,
    pub last_sequence: Option<u64>,
    pub proposal_id: Option<Uuid>,
}

impl WriteJson {
    /// The JSON form of a write's outcome.
    pub fn from_outcome(o: crate::WriteOutcome) -> Self {
        match o {
            crate::WriteOutcome::Committed { first_sequence, last_sequence } => Self {
                status: "committed".into(),
                first_sequence: Some(first_sequence),
                last_sequence: Some(last_sequence),
                proposal_id: None,
            },
            crate::WriteOutcome::Queued { proposal_id } => Self {
                status: "queued".into(),
                first_sequence: None,
                last_sequence: None,
                proposal_id: Some(proposal_id),
            },
        }
    }
}

/// One sync log entry as JSON; `data` is the record decoded from MessagePack (`null` for a
/// delete, `{"msgpack_hex": "..."}` if it is not plain MessagePack).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EntryJson {
    pub sequence: u64,
    pub term: u64,
    pub origin_device: Uuid,
    pub timestamp_ms: i64,
    pub model_type: String,
    pub record_id: String,
    pub change_type: String,
    pub version: i64,
    pub data: serde_json::Value,
}

impl EntryJson {
    /// The JSON form of an entry.
    pub fn from_entry(e: &SyncLogEntry) -> Self {
        Self {
            sequence: e.sequence,
            term: e.term,
            origin_device: e.origin_device,
            timestamp_ms: e.timestamp_ms,
            model_type: e.model_type.clone(),
            record_id: e.record_id.clone(),
            change_type: e.change_type.as_str().to_owned(),
            version: e.version,
            data: data_json(&e.data),
        }
    }
}

/// An entry's MessagePack `data` as JSON.
fn data_json(data: &[u8]) -> serde_json::Value {
    if data.is_empty() {
        return serde_json::Value::Null;
    }
    rmp_serde::from_slice::<serde_json::Value>(data).unwrap_or_else(|_| {
        let hex: String = data.iter().map(|b| format!("{b:02x}")).collect();
        serde_json::json!({ "msgpack_hex": hex })
    })
}

/// Response of `GET /libraries/{id}/log`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogPage {
    pub entries: Vec<EntryJson>,
    /// The last sequence of this device's log.
    pub last_sequence: u64,
}

/// Response of `GET /status`, as the client reads it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusView {
    pub device: DeviceJson,
    pub libraries: Vec<LibraryView>,
}

/// One library of `GET /status`, as the client reads it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LibraryView {
    pub library_id: Uuid,
    pub role: String,
    pub term: u64,
    #[serde(default)]
    pub leader: Option<Uuid>,
    pub last_sequence: u64,
    #[serde(default)]
    pub followers: Vec<FollowerView>,
    #[serde(default)]
    pub applier: Option<ApplierView>,
    #[serde(default)]
    pub outbox_size: u64,
}

/// A follower of `GET /status` (leader's view).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FollowerView {
    pub device_id: Uuid,
    pub acked_sequence: u64,
    pub lag: u64,
    pub connected: bool,
}

/// A follower's applier in `GET /status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApplierView {
    pub state: String,
    pub leader_last_sequence: u64,
    #[serde(default)]
    pub progress: Option<ProgressView>,
    #[serde(default)]
    pub reconnect_attempts: u64,
    #[serde(default)]
    pub last_error: Option<String>,
}

/// A catch-up's progress in `GET /status`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct ProgressView {
    pub applied: u64,
    pub target: u64,
    pub elapsed_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_json_becomes_the_tag_change() {
        let req = ChangeRequest {
            model_type: "tag".into(),
            record_id: None,
            change_type: None,
            data: serde_json::json!({"id": "t1", "name": "holiday"}),
        };
        let tag = Tag { id: "t1".into(), name: "holiday".into(), color: None };
        assert_eq!(req.to_change().unwrap(), Change::insert(&tag));
    }

    #[test]
    fn bad_changes_say_what_is_wrong() {
        let req = |model: &str, ct: Option<&str>, data| ChangeRequest {
            model_type: model.into(),
            record_id: None,
            change_type: ct.map(Into::into),
            data,
        };
        let e = req("album", None, serde_json::json!({"id": "a"})).to_change().unwrap_err();
        assert!(e.contains("unknown model type \"album\""), "{e}");
        let e = req("tag", Some("bulk"), serde_json::json!({})).to_change().unwrap_err();
        assert!(e.contains("bad change_type"), "{e}");
        let e = req("tag", None, serde_json::json!({"id": "t"})).to_change().unwrap_err();
        assert!(e.contains("not a valid tag"), "{e}");
        let d = req("location", Some("delete"), serde_json::json!({"id": "l"})).to_change();
        assert_eq!(d.unwrap(), Change::delete::<Location>("l"));
    }

    #[test]
    fn entry_data_is_decoded_to_json() {
        let tag = Tag { id: "t1".into(), name: "n".into(), color: Some("#fff".into()) };
        let change = Change::insert(&tag);
        let j = data_json(&change.data);
        assert_eq!(j, serde_json::json!({"id": "t1", "name": "n", "color": "#fff"}));
        assert_eq!(data_json(&[]), serde_json::Value::Null);
        assert_eq!(data_json(&[0xc1]), serde_json::json!({"msgpack_hex": "c1"}));
    }
}
