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

/// An error response: `{"error": "..."}`, with `"outcome": "unknown"` when the daemon cannot
/// tell whether the change was carried out (the library's sync service stopped while it was
/// submitted); without it, nothing was done.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    /// [`OUTCOME_UNKNOWN`], or absent: nothing was done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
}

/// [`ErrorBody::outcome`] of an error after which the change may or may not be committed.
pub const OUTCOME_UNKNOWN: &str = "unknown";

/// The `400` of a `POST /libraries/{id}/changes` whose `proposal_id` is the nil uuid.
pub const NIL_PROPOSAL_ID: &str = "proposal_id is the nil uuid \
    (00000000-0000-0000-0000-000000000000): give a random (v4) uuid, or leave it out and the \
    daemon picks one";

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

/// Body of `POST /libraries/{id}/invitations`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct InviteRequest {
    /// The new device stays a learner for good (never votes, never leads).
    #[serde(default)]
    pub learner: bool,
    /// How long the invitation is accepted, in milliseconds (default
    /// [`DEFAULT_INVITE_EXPIRY_MS`], at most [`MAX_INVITE_EXPIRY_MS`]).
    #[serde(default)]
    pub expires_ms: Option<u64>,
}

/// How long an invitation is accepted when no expiry is given: 10 minutes.
pub const DEFAULT_INVITE_EXPIRY_MS: u64 = 10 * 60 * 1000;
/// The longest expiry an invitation may have: 7 days.
pub const MAX_INVITE_EXPIRY_MS: u64 = 7 * 24 * 60 * 60 * 1000;

/// Response of `POST /libraries/{id}/invitations`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InvitationJson {
    pub library_id: Uuid,
    /// The one-line token to give to `lsync library join TOKEN` on the new device.
    pub token: String,
    /// When it stops being accepted (ms since the Unix epoch).
    pub expires_at_ms: i64,
    /// The new device stays a learner for good.
    pub learner: bool,
}

/// Body of `POST /join`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinWithTokenRequest {
    /// The token `lsync library invite` printed on a member.
    pub token: String,
}

/// Response of `POST /join`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinedJson {
    pub library_id: Uuid,
    /// The configuration entry that added this device (as a learner).
    pub config_sequence: u64,
    /// Whether that entry is committed; `false`: pending (in use, not yet held by a majority).
    pub committed: bool,
    /// The leader to follow, as the inviting member knew it.
    pub leader: Option<Uuid>,
}

/// Response of every membership change (`POST /libraries/{id}/devices`,
/// `DELETE /libraries/{id}/devices/{device}`, `PUT /libraries/{id}/devices/{device}/preference`,
/// `POST /libraries/{id}/force-reconfigure`): `200` when committed, `202` when pending.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MembershipChangeJson {
    pub library_id: Uuid,
    /// The configuration entry that carries the change.
    pub config_sequence: u64,
    /// Whether it is committed; `false`: pending (in use, not yet held by a majority).
    pub committed: bool,
}

impl MembershipChangeJson {
    /// The JSON form of a change's outcome.
    pub fn from_outcome(library_id: Uuid, o: crate::MembershipOutcome) -> Self {
        Self { library_id, config_sequence: o.config_sequence, committed: o.committed }
    }
}

/// Body of `PUT /libraries/{id}/devices/{device}/preference`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PreferenceRequest {
    /// `auto` (the leader keeps the number of voters odd), `learner` (stays a learner for
    /// good; a voter is demoted) or `voter` (promoted once caught up, whatever the count).
    pub preference: String,
}

/// Parses a role preference (`auto`, `learner`, `voter`, any case).
pub fn parse_preference(text: &str) -> Result<crate::RolePreference, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "auto" => Ok(crate::RolePreference::Auto),
        "learner" => Ok(crate::RolePreference::Learner),
        "voter" => Ok(crate::RolePreference::Voter),
        other => Err(format!("bad role {other:?}: use auto, learner or voter")),
    }
}

/// Body of `POST /libraries/{id}/force-reconfigure`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForceReconfigureRequest {
    /// The voters of the new configuration (this device among them).
    pub voters: Vec<Uuid>,
    /// Must be `true`: the call is unsafe (docs/operations.md, "Quorum lost for good").
    #[serde(default)]
    pub i_understand_this_is_unsafe: bool,
}

/// Why `force-reconfigure` is refused without its confirmation (one line, for the API and the
/// CLI).
pub const FORCE_RECONFIGURE_REFUSED: &str = "force-reconfigure is unsafe and was not run: it \
    makes a new configuration from this device's copy alone, so entries only the other voters \
    hold are lost, and run while they may be alive it splits the library in two; only if a \
    majority of the voters is gone for good, confirm with --i-understand-this-is-unsafe \
    (API: \"i_understand_this_is_unsafe\": true; see docs/operations.md, \"Quorum lost for good\")";

/// Response of `GET /libraries/{id}/members`: the configuration in effect on this device.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MembersJson {
    pub library_id: Uuid,
    /// This device.
    pub device_id: Uuid,
    /// The configuration entry it comes from.
    pub config_sequence: u64,
    /// The library's feature version.
    pub feature_version: u32,
    /// The commit sequence as this device knows it.
    pub commit_sequence: u64,
    /// The configuration is not committed yet: in use, not yet held by a majority.
    pub pending: bool,
    /// Whether this device is a member of it.
    pub member: bool,
    pub members: Vec<MemberJson>,
}

/// One member in `GET /libraries/{id}/members`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberJson {
    pub device_id: Uuid,
    pub peer_id: String,
    pub name: String,
    /// `voter` or `learner`.
    pub role: String,
    /// `auto`, `learner` or `voter`.
    pub preference: String,
    pub addresses: Vec<String>,
}

impl MembersJson {
    /// The members of a library's status.
    pub fn from_status(s: &crate::LibraryStatus) -> Self {
        let m = &s.membership;
        Self {
            library_id: s.library_id,
            device_id: s.device_id,
            config_sequence: m.config_sequence,
            feature_version: m.feature_version,
            commit_sequence: s.commit_sequence,
            pending: m.pending,
            member: s.member,
            members: m
                .members
                .iter()
                .map(|m| MemberJson {
                    device_id: m.device_id,
                    peer_id: m.peer_id.clone(),
                    name: m.name.clone(),
                    role: m.role.to_string(),
                    preference: m.preference.to_string(),
                    addresses: m.addresses.clone(),
                })
                .collect(),
        }
    }
}

/// Body of `POST /libraries/{id}/changes`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChangeRequest {
    /// A built-in model type: `tag` or `location`.
    pub model_type: String,
    /// The record's id; default: the `id` field of `data`.
    #[serde(default)]
    pub record_id: Option<String>,
    /// `insert` (default), `update`, `patch` or `delete`.
    #[serde(default)]
    pub change_type: Option<String>,
    /// The whole record as a JSON object (Insert/Update); the fields it sets (Patch: a JSON
    /// object of field name to value, the others left as the leader has them,
    /// docs/architecture.md "Field-level changes"); ignored for Delete.
    #[serde(default)]
    pub data: serde_json::Value,
    /// The write's proposal id, chosen by the client (`lsync put` always sends one); absent:
    /// the daemon picks one. The committed entries carry it; a write sent again with the same
    /// id is never committed twice: the answer is what became of the first
    /// ([`crate::Node::write_with_id`]). The nil uuid is refused (400).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proposal_id: Option<Uuid>,
    /// `local` (default: committed on the leader's disk) or `majority` (held by a majority of
    /// the voters; its sequences are final; `pending` if not within the request timeout). See
    /// [`crate::Durability`] and docs/operations.md, "Durability".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub durability: Option<String>,
}

impl ChangeRequest {
    /// The durability asked for (absent: `local`); the error is a message for the caller.
    pub fn durability(&self) -> Result<crate::Durability, String> {
        match self.durability.as_deref() {
            None => Ok(crate::Durability::Local),
            Some(s) => crate::Durability::parse(s)
                .ok_or_else(|| format!("bad durability {s:?}: use \"local\" or \"majority\"")),
        }
    }
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
                        "bad change_type {t:?}: use \"insert\", \"update\", \"patch\" or \
                         \"delete\""
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
        if change_type == ChangeType::Patch {
            let record_id = self
                .record_id
                .clone()
                .or_else(|| self.data.get("id").and_then(|v| v.as_str()).map(str::to_owned))
                .ok_or("a patch needs record_id (or data with an \"id\")")?;
            let fields = self
                .data
                .as_object()
                .filter(|fields| !fields.is_empty())
                .ok_or("a patch's data must be a JSON object of the fields it sets")?;
            return Ok(Change::update_fields(self.model_type.clone(), record_id, fields));
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
    /// `committed` (sequenced by the leader, applied here; with `"durability": "majority"`,
    /// held by a majority: final), `queued` (no leader reachable; waits in this device's
    /// outbox and will be committed once) or `pending` (a `majority` write sequenced by the
    /// leader but not held by a majority within the request timeout; it commits once).
    pub status: String,
    /// The first entry of the change (`committed`, and `pending` as the leader answered);
    /// null when `queued`.
    pub first_sequence: Option<u64>,
    /// Its last entry (`committed`, `pending`); null when `queued`.
    pub last_sequence: Option<u64>,
    /// The write's proposal id (the one the request gave, or the daemon's choice): the id
    /// its entries carry in the log, and of its outbox entry when `queued`. Optional when read
    /// (a daemon of an earlier version sent null when `committed`).
    pub proposal_id: Option<Uuid>,
}

impl WriteJson {
    /// The JSON form of the outcome of the write `proposal_id`.
    pub fn from_outcome(proposal_id: Uuid, o: crate::WriteOutcome) -> Self {
        match o {
            crate::WriteOutcome::Committed { first_sequence, last_sequence } => Self {
                status: "committed".into(),
                first_sequence: Some(first_sequence),
                last_sequence: Some(last_sequence),
                proposal_id: Some(proposal_id),
            },
            crate::WriteOutcome::Queued { proposal_id } => Self {
                status: "queued".into(),
                first_sequence: None,
                last_sequence: None,
                proposal_id: Some(proposal_id),
            },
            crate::WriteOutcome::Pending { proposal_id, first_sequence, last_sequence } => Self {
                status: "pending".into(),
                first_sequence: Some(first_sequence),
                last_sequence: Some(last_sequence),
                proposal_id: Some(proposal_id),
            },
        }
    }
}

/// One entry of `GET /libraries/{id}/outbox`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxEntryJson {
    pub proposal_id: Uuid,
    /// `queued` (the proposer delivers it) or `failed` (refused for good: `failed_reason`).
    pub state: String,
    pub created_at_ms: i64,
    /// How many changes it carries.
    pub changes: usize,
    pub attempts: u32,
    pub next_attempt_ms: i64,
    pub last_error: Option<String>,
    pub failed_reason: Option<String>,
    pub failed_at_ms: Option<i64>,
}

impl OutboxEntryJson {
    /// The JSON of one outbox entry.
    pub fn from_entry(e: crate::crates::storage::OutboxEntry) -> Self {
        let (state, failed_reason, failed_at_ms) = match e.state {
            crate::crates::storage::OutboxState::Pending => ("queued", None, None),
            crate::crates::storage::OutboxState::Delivered { .. } => ("delivered", None, None),
            crate::crates::storage::OutboxState::Failed { reason, at_ms } => {
                ("failed", Some(reason), Some(at_ms))
            }
        };
        Self {
            proposal_id: e.proposal_id,
            state: state.into(),
            created_at_ms: e.created_at_ms,
            changes: e.changes.len(),
            attempts: e.attempts,
            next_attempt_ms: e.next_attempt_ms,
            last_error: e.last_error,
            failed_reason,
            failed_at_ms,
        }
    }
}

/// Response of `GET /libraries/{id}/proposals/{proposal}`: what became of a write, as this
/// device knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProposalJson {
    pub library_id: Uuid,
    pub proposal_id: Uuid,
    /// `committed` (entries in this device's log carry its id), `queued` (it waits in this
    /// device's outbox) or `unknown` (neither: not written on this device, refused, or committed
    /// by the leader and not yet applied here).
    pub state: String,
    /// `committed`: the sequences of its entries, in order (usually consecutive).
    #[serde(default)]
    pub sequences: Vec<u64>,
    /// `queued`: failed delivery attempts so far.
    #[serde(default)]
    pub attempts: u32,
    /// `queued`: why the last attempt failed, if one did.
    #[serde(default)]
    pub last_error: Option<String>,
    /// This device's last sequence when it looked.
    pub last_sequence: u64,
}

/// One sync log entry as JSON; `data` is the record decoded from MessagePack (`null` for a
/// delete, the configuration for a configuration entry, `{"msgpack_hex": "..."}` if it is not
/// plain MessagePack).
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
    /// The proposal the entry commits (every write's entries carry one; docs/protocol.md §4),
    /// for `lsync status --proposal`.
    #[serde(default)]
    pub proposal_id: Option<Uuid>,
    /// The entry's link of the hash chain, hex (docs/protocol.md, "The hash chain").
    #[serde(default)]
    pub hash: Option<String>,
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
            data: if e.change_type == ChangeType::Config {
                config_json(&e.data)
            } else {
                data_json(&e.data)
            },
            proposal_id: e.proposal_id,
            hash: e.hash.map(|h| h.to_string()),
        }
    }
}

/// A configuration entry's `data` as JSON: `{feature_version, members: [{device_id, peer_id,
/// addresses, name, role, preference}]}` (the raw form if it does not decode).
fn config_json(data: &[u8]) -> serde_json::Value {
    match lsync_protocol::Configuration::decode(data) {
        Ok(c) => serde_json::to_value(&c).unwrap_or_else(|_| data_json(data)),
        Err(_) => data_json(data),
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

/// The most conflicts one `GET /libraries/{id}/conflicts` returns; a larger `limit` is capped
/// to it.
pub const MAX_CONFLICT_LIMIT: u64 = 1_000;
/// `limit` of `GET /libraries/{id}/conflicts` when none is given.
pub const DEFAULT_CONFLICT_LIMIT: u64 = 100;

/// Response of `GET /libraries/{id}/conflicts`: the conflicts recorded in this device's copy
/// of the library, the most recently decided first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConflictsJson {
    pub library_id: Uuid,
    /// How many conflicts the library holds in all (the list stops at `limit`).
    pub count: u64,
    pub conflicts: Vec<ConflictJson>,
}

/// One conflict (docs/architecture.md, "Conflicts"): the record, the fields in conflict, both
/// values and what won. Records' data are decoded from MessagePack as [`EntryJson`]'s are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConflictJson {
    /// `<proposal id>:<model type>/<record id>`.
    pub id: String,
    pub model_type: String,
    pub record_id: String,
    /// `last_writer_wins` or `reject`.
    pub policy: String,
    /// `change` (the change's values won), `stored` (the stored ones won), `mixed`, or
    /// `rejected` (the change was refused, its writer's view rolled back).
    pub outcome: String,
    /// The fields in conflict (empty for a Delete: the whole record).
    pub fields: Vec<String>,
    /// Of `fields`, those whose stored value was kept.
    pub kept: Vec<String>,
    /// Of `fields`, those the change's value took.
    pub taken: Vec<String>,
    /// The change's type as proposed: `insert`, `update`, `patch` or `delete`.
    pub change_type: String,
    /// The version the change was based on, and the record's when the leader decided.
    pub base_version: i64,
    pub current_version: i64,
    /// The record as stored when the leader decided (`null`: none).
    pub stored: serde_json::Value,
    /// The latest timestamp of the fields in conflict as stored (`physical_ms.counter@device`).
    pub stored_hlc: Option<String>,
    /// The change's data (the record, or the fields a patch set; `null` for a Delete).
    pub proposed: serde_json::Value,
    /// The change's timestamp (`physical_ms.counter@device`).
    pub proposed_hlc: String,
    /// The device that made the change.
    pub origin_device: Uuid,
    /// The proposal that carried it.
    pub proposal_id: Uuid,
    /// When the leader decided (ms since the Unix epoch, its clock).
    pub decided_at_ms: i64,
}

impl ConflictJson {
    /// The JSON form of a conflict.
    pub fn from_conflict(c: &crate::crates::storage::Conflict) -> Self {
        Self {
            id: c.id.clone(),
            model_type: c.model_type.clone(),
            record_id: c.record_id.clone(),
            policy: c.policy.as_str().to_owned(),
            outcome: c.outcome.as_str().to_owned(),
            fields: c.fields.clone(),
            kept: c.kept.clone(),
            taken: c.taken.clone(),
            change_type: c.change_type.clone(),
            base_version: c.base_version,
            current_version: c.current_version,
            stored: data_json(&c.stored),
            stored_hlc: c.stored_hlc.map(|h| h.to_string()),
            proposed: data_json(&c.proposed),
            proposed_hlc: c.proposed_hlc.to_string(),
            origin_device: c.origin_device,
            proposal_id: c.proposal_id,
            decided_at_ms: c.decided_at_ms,
        }
    }
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
    /// The commit sequence (the leader's; on a follower, as its leader last said).
    #[serde(default)]
    pub commit_sequence: u64,
    /// Whether this device is a member of the configuration in effect.
    #[serde(default = "yes")]
    pub member: bool,
    /// Its role there (`Voter` or `Learner`).
    #[serde(default)]
    pub member_role: Option<String>,
    /// Why a member refused this device as removed, if one did.
    #[serde(default)]
    pub removed: Option<String>,
    #[serde(default)]
    pub membership: Option<MembershipView>,
    /// The hash chain at the last entry, hex.
    #[serde(default)]
    pub head_hash: Option<String>,
    /// The high-water mark the log is behind (`sequence@term`), if it is.
    #[serde(default)]
    pub behind_mark: Option<String>,
    /// What differs when the log holds another history at the mark's sequence, if it does.
    #[serde(default)]
    pub mark_diverged: Option<String>,
    /// Conflicts recorded in this device's copy (`lsync conflicts list` shows them).
    #[serde(default)]
    pub conflicts: u64,
}

fn yes() -> bool {
    true
}

/// The configuration in effect, in `GET /status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MembershipView {
    pub config_sequence: u64,
    #[serde(default)]
    pub pending: bool,
    #[serde(default)]
    pub members: Vec<MemberView>,
}

/// One member in `GET /status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberView {
    pub device_id: Uuid,
    #[serde(default)]
    pub name: String,
    /// `Voter` or `Learner`.
    pub role: String,
    /// `Auto`, `Learner` or `Voter`.
    #[serde(default)]
    pub preference: String,
}

/// A follower of `GET /status` (leader's view).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FollowerView {
    pub device_id: Uuid,
    pub acked_sequence: u64,
    pub lag: u64,
    pub connected: bool,
    /// Its role (`Voter`, `Learner`; none: it is leaving).
    #[serde(default)]
    pub role: Option<String>,
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
            proposal_id: None,
            durability: None,
        };
        assert_eq!(req.durability(), Ok(crate::Durability::Local));
        let tag = Tag { id: "t1".into(), name: "holiday".into(), color: None };
        assert_eq!(req.to_change().unwrap(), Change::insert(&tag));
    }

    #[test]
    fn a_write_names_its_proposal_id_in_the_body_and_the_answer() {
        let id = Uuid::new_v4();
        let body = serde_json::json!({"model_type": "tag", "data": {"id": "t"}, "proposal_id": id});
        let req: ChangeRequest = serde_json::from_value(body).unwrap();
        assert_eq!(req.proposal_id, Some(id));
        let without: ChangeRequest =
            serde_json::from_value(serde_json::json!({"model_type": "tag", "data": {}})).unwrap();
        assert_eq!(without.proposal_id, None);
        assert!(!serde_json::to_string(&without).unwrap().contains("proposal_id"));
        let bad = serde_json::json!({"model_type": "tag", "proposal_id": "not-a-uuid"});
        assert!(serde_json::from_value::<ChangeRequest>(bad).is_err());
        let committed = crate::WriteOutcome::Committed { first_sequence: 4, last_sequence: 5 };
        let answer = WriteJson::from_outcome(id, committed);
        assert_eq!((answer.status.as_str(), answer.proposal_id), ("committed", Some(id)));
        let queued = WriteJson::from_outcome(id, crate::WriteOutcome::Queued { proposal_id: id });
        assert_eq!((queued.status.as_str(), queued.proposal_id), ("queued", Some(id)));
        let pending = WriteJson::from_outcome(
            id,
            crate::WriteOutcome::Pending { proposal_id: id, first_sequence: 4, last_sequence: 5 },
        );
        assert_eq!(
            (pending.status.as_str(), pending.first_sequence, pending.last_sequence),
            ("pending", Some(4), Some(5))
        );
    }

    #[test]
    fn bad_changes_say_what_is_wrong() {
        let req = |model: &str, ct: Option<&str>, data| ChangeRequest {
            model_type: model.into(),
            record_id: None,
            change_type: ct.map(Into::into),
            data,
            proposal_id: None,
            durability: None,
        };
        let e = req("album", None, serde_json::json!({"id": "a"})).to_change().unwrap_err();
        assert!(e.contains("unknown model type \"album\""), "{e}");
        let e = req("tag", Some("bulk"), serde_json::json!({})).to_change().unwrap_err();
        assert!(e.contains("bad change_type"), "{e}");
        let e = req("tag", None, serde_json::json!({"id": "t"})).to_change().unwrap_err();
        assert!(e.contains("not a valid tag"), "{e}");
        let d = req("location", Some("delete"), serde_json::json!({"id": "l"})).to_change();
        assert_eq!(d.unwrap(), Change::delete::<Location>("l"));
        let e = req("tag", Some("patch"), serde_json::json!({"name": "x"})).to_change();
        assert!(e.unwrap_err().contains("a patch needs record_id"));
    }

    #[test]
    fn a_patch_carries_only_the_fields_it_sets() {
        let req = ChangeRequest {
            model_type: "tag".into(),
            record_id: Some("t1".into()),
            change_type: Some("patch".into()),
            data: serde_json::json!({"color": "#ff0000"}),
            proposal_id: None,
            durability: None,
        };
        let change = req.to_change().unwrap();
        let expected = Change::update_fields("tag", "t1", &serde_json::json!({"color": "#ff0000"}));
        assert_eq!(change, expected);
        assert_eq!(lsync_storage::fields::patch_fields(&change.data), ["color"]);
    }

    #[test]
    fn configuration_entries_show_their_members() {
        let member = lsync_protocol::Member {
            device_id: Uuid::from_u128(7),
            peer_id: libp2p::identity::Keypair::generate_ed25519()
                .public()
                .to_peer_id()
                .to_string(),
            addresses: vec!["/ip4/127.0.0.1/tcp/7700".into()],
            name: "laptop".into(),
            role: crate::MemberRole::Voter,
            preference: crate::RolePreference::Auto,
        };
        let config = lsync_protocol::Configuration::new(2, vec![member]);
        let j = config_json(&config.encode());
        assert_eq!(j["feature_version"], 2);
        assert_eq!(j["members"][0]["device_id"], Uuid::from_u128(7).to_string());
        assert_eq!(j["members"][0]["role"], "Voter");
        assert_eq!(config_json(&[0xc1]), serde_json::json!({"msgpack_hex": "c1"}));
    }

    #[test]
    fn a_conflict_shows_both_values_decoded_and_what_won() {
        let device = Uuid::from_u128(2);
        let stored = Tag { id: "t1".into(), name: "newer".into(), color: None };
        let conflict = crate::crates::storage::Conflict {
            id: "p:0".into(),
            model_type: "tag".into(),
            record_id: "t1".into(),
            policy: crate::crates::storage::ConflictPolicy::LastWriterWins,
            outcome: crate::crates::storage::ConflictOutcome::Stored,
            fields: vec!["name".into()],
            kept: vec!["name".into()],
            taken: vec![],
            change_type: "patch".into(),
            base_version: 2,
            current_version: 3,
            stored: crate::crates::storage::encode(&stored),
            stored_hlc: Some(lsync_protocol::Hlc { physical_ms: 20, counter: 1, device }),
            proposed: crate::crates::storage::encode(&serde_json::json!({"name": "older"})),
            proposed_hlc: lsync_protocol::Hlc { physical_ms: 10, counter: 0, device },
            origin_device: device,
            proposal_id: Uuid::from_u128(3),
            decided_at_ms: 30,
        };
        let j = serde_json::to_value(ConflictJson::from_conflict(&conflict)).unwrap();
        assert_eq!(j["policy"], "last_writer_wins");
        assert_eq!(j["outcome"], "stored");
        assert_eq!(j["kept"], serde_json::json!(["name"]));
        assert_eq!(j["stored"], serde_json::json!({"id": "t1", "name": "newer", "color": null}));
        assert_eq!(j["proposed"], serde_json::json!({"name": "older"}));
        assert_eq!(j["stored_hlc"], format!("20.1@{device}"));
        assert_eq!(j["proposed_hlc"], format!("10.0@{device}"));
        let back: ConflictJson = serde_json::from_value(j).unwrap();
        assert_eq!(back, ConflictJson::from_conflict(&conflict));
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
