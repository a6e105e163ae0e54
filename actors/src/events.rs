//! Events a host can subscribe to, and the status snapshot of a library.

use lsync_protocol::{ChangeType, MemberRole, RolePreference, SyncLogEntry, SyncRole};
use lsync_storage::conflicts::CONFLICT_MODEL_TYPE;
use lsync_storage::{Conflict, ConflictOutcome, LocalJob};
use serde::Serialize;
use uuid::Uuid;

/// Something that happened to a library on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncEvent {
    /// A follower applied entries `first..=last` of the leader's log.
    EntriesApplied { library_id: Uuid, first: u64, last: u64, count: u64 },
    /// The leader can reach a follower (first connection).
    FollowerConnected { library_id: Uuid, device_id: Uuid },
    /// The leader lost its last connection to a follower.
    FollowerLost { library_id: Uuid, device_id: Uuid },
    /// A follower cannot reach its leader; it retries after `retry_in_ms`.
    LeaderUnreachable { library_id: Uuid, error: String, retry_in_ms: u64 },
    /// A follower started rebuilding the library from the leader's log.
    ResyncStarted { library_id: Uuid, reason: String, target: u64 },
    /// Progress of a full reconciliation.
    ResyncProgress { library_id: Uuid, applied: u64, target: u64 },
    /// The library was rebuilt up to `last_sequence`.
    ResyncDone { library_id: Uuid, last_sequence: u64 },
    /// A bulk entry queued a local job; the host runs it.
    BulkJobQueued { library_id: Uuid, job: LocalJob },
    /// This device's role for the library changed.
    RoleChanged { library_id: Uuid, role: SyncRole, term: u64 },
    /// The follower actor stopped on an error it cannot get past by itself
    /// (e.g. an entry of a model type this node does not know).
    ApplyFailed { library_id: Uuid, error: String },
    /// A proposal of this device's outbox was refused for good: it moved to the outbox's
    /// `failed` state with `reason`, kept until an operator retries or discards it.
    ProposalFailed { library_id: Uuid, proposal_id: Uuid, reason: String },
    /// This device committed (as leader) or applied (as follower) the record of a conflict
    /// (model `lsync.conflict`, docs/architecture.md "Conflicts"): `id` names it in
    /// `Node::conflicts`, `model_type`/`record_id` the record both changes were to, `outcome`
    /// what won (`Rejected`: the change was refused, its writer's view rolled back). A device
    /// that rebuilds its copy of the log reports the records it applies again.
    ConflictRecorded {
        library_id: Uuid,
        id: String,
        model_type: String,
        record_id: String,
        outcome: ConflictOutcome,
    },
}

impl SyncEvent {
    /// The library the event is about.
    pub fn library_id(&self) -> Uuid {
        match self {
            Self::EntriesApplied { library_id, .. }
            | Self::FollowerConnected { library_id, .. }
            | Self::FollowerLost { library_id, .. }
            | Self::LeaderUnreachable { library_id, .. }
            | Self::ResyncStarted { library_id, .. }
            | Self::ResyncProgress { library_id, .. }
            | Self::ResyncDone { library_id, .. }
            | Self::BulkJobQueued { library_id, .. }
            | Self::RoleChanged { library_id, .. }
            | Self::ApplyFailed { library_id, .. }
            | Self::ProposalFailed { library_id, .. }
            | Self::ConflictRecorded { library_id, .. } => *library_id,
        }
    }

    /// A [`SyncEvent::ConflictRecorded`] for each conflict record among `entries` (an Insert or
    /// Update of model `lsync.conflict` whose data decodes as a [`Conflict`]), in log order.
    /// Pure.
    pub fn conflicts_recorded(library_id: Uuid, entries: &[SyncLogEntry]) -> Vec<SyncEvent> {
        entries
            .iter()
            .filter(|e| e.model_type == CONFLICT_MODEL_TYPE)
            .filter(|e| matches!(e.change_type, ChangeType::Insert | ChangeType::Update))
            .filter_map(|e| lsync_storage::decode::<Conflict>(&e.data).ok())
            .map(|c| SyncEvent::ConflictRecorded {
                library_id,
                id: c.id,
                model_type: c.model_type,
                record_id: c.record_id,
                outcome: c.outcome,
            })
            .collect()
    }
}

/// What a follower is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FollowerState {
    /// Applied everything the leader announced.
    CaughtUp,
    /// Fetching and applying entries.
    Fetching,
    /// The leader is unreachable; retrying with backoff.
    Reconnecting,
    /// Rebuilding the library from the leader's log.
    Reconciling,
    /// Stopped on an error that needs the host (see `last_error`).
    Stalled,
    /// Stopped on an entry that needs a newer version of lsync (see `last_error`): nothing is
    /// applied until this device is upgraded.
    UpgradeNeeded,
}

/// Progress of a catch-up or a full reconciliation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Progress {
    /// Entries applied so far in this run.
    pub applied: u64,
    /// Entries this run has to apply in all.
    pub target: u64,
    /// Milliseconds since the run started.
    pub elapsed_ms: u64,
}

/// The leader's view of one follower.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FollowerStatus {
    pub device_id: Uuid,
    pub peer_id: String,
    /// Highest sequence the follower acknowledged.
    pub acked_sequence: u64,
    /// Leader's last sequence minus `acked_sequence`.
    pub lag: u64,
    /// Whether the leader has a connection to it now.
    pub connected: bool,
    /// Its role in the configuration in effect (none: it is leaving).
    pub role: Option<MemberRole>,
    /// The highest sequence at which its log is known to match the leader's in this term
    /// (what counts toward the commit sequence); none until it acknowledged an entry of this
    /// term.
    pub matched_sequence: Option<u64>,
}

/// A follower's view of its own replication.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApplierStatus {
    pub state: FollowerState,
    /// The leader's last sequence as last heard.
    pub leader_last_sequence: u64,
    /// Current catch-up or reconciliation, if one runs.
    pub progress: Option<Progress>,
    /// Reconnect attempts since the leader was last reached.
    pub reconnect_attempts: u64,
    /// The last error, if the follower is reconnecting or stalled.
    pub last_error: Option<String>,
}

/// One member of the configuration in effect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemberStatus {
    pub device_id: Uuid,
    pub peer_id: String,
    pub name: String,
    pub role: MemberRole,
    pub preference: RolePreference,
    pub addresses: Vec<String>,
}

/// The configuration in effect on this device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MembershipStatus {
    /// The configuration entry it comes from (0: none yet, a library of feature version 1).
    pub config_sequence: u64,
    /// The library's feature version.
    pub feature_version: u32,
    /// The configuration entry that brought the current voters.
    pub voters_since: u64,
    /// The latest configuration change is not committed yet (the commit sequence is below
    /// it): it is in use, but not final.
    pub pending: bool,
    /// The voters before the current ones, while their change is not known to be committed
    /// (elections need both majorities meanwhile).
    pub previous_voters: Option<Vec<Uuid>>,
    /// Every member.
    pub members: Vec<MemberStatus>,
}

/// A snapshot of one library on this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LibraryStatus {
    pub library_id: Uuid,
    pub device_id: Uuid,
    pub role: SyncRole,
    pub term: u64,
    pub leader: Option<Uuid>,
    /// Last sequence of this device's log.
    pub last_sequence: u64,
    /// The leader's commit sequence: the highest sequence a majority of the voters holds
    /// (docs/architecture.md, "Membership"); on a follower, as its leader last said.
    pub commit_sequence: u64,
    /// Whether this device is a member of the configuration in effect.
    pub member: bool,
    /// Its role there, if it is.
    pub member_role: Option<MemberRole>,
    /// Why a member refused this device as removed, if one did (its copy is kept, read-only).
    pub removed: Option<String>,
    /// The configuration in effect.
    pub membership: MembershipStatus,
    /// The sequence this device held before its log was rebuilt, until it is back there (it
    /// does not campaign meanwhile).
    pub rebuild_mark: Option<u64>,
    /// Leader only: every follower.
    pub followers: Vec<FollowerStatus>,
    /// Follower only: its follower actor's status (named `applier` in the status API).
    pub applier: Option<ApplierStatus>,
    /// Changes made on this device that wait in its outbox for a leader.
    pub outbox_pending: u64,
    /// Changes of its outbox refused for good (its `failed` state), kept for an operator.
    pub outbox_failed: u64,
    /// Conflicts recorded in this device's copy of the library (rows of `lsync_conflict`,
    /// docs/architecture.md "Conflicts"; `Node::conflicts` lists them).
    pub conflicts: u64,
    /// The hash chain at this device's last entry, hex (docs/protocol.md, "The hash chain");
    /// two devices at the same sequence with the same head hash hold the same log.
    pub head_hash: String,
    /// The high-water mark this device's log is behind (a restored backup or a copied data
    /// directory, docs/architecture.md "Terms and votes on disk"), as `sequence@term`, until
    /// the log has caught up past it: meanwhile the device neither campaigns nor votes for a
    /// log behind it. `None`: not behind.
    pub behind_mark: Option<String>,
    /// Set when this device's log holds another history at its high-water mark's sequence
    /// (another entry than the one it acknowledged there: a copy of another device's data, a
    /// restored backup written to since): what differs (the entry's term and hash, the hash the
    /// mark names). `behind_mark` names the mark meanwhile; it waits for a leader's log of a
    /// newer term (docs/architecture.md, "Restores are detected"). `None` otherwise.
    pub mark_diverged: Option<String>,
    /// Leader of three or more voters only: whether it holds its leader lease now (a majority
    /// of the voters answered a heartbeat round sent less than the lease ago); while it does
    /// not, a write it commits waits for a heartbeat round before it is answered
    /// (docs/architecture.md, "The leader lease"). `None` on a follower and with one or two
    /// voters (no lease).
    pub lease_held: Option<bool>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use lsync_storage::Tag;

    const LIBRARY: Uuid = Uuid::from_u128(9);

    use crate::testkit::conflict;

    fn entry(
        sequence: u64,
        model_type: &str,
        change_type: ChangeType,
        data: Vec<u8>,
    ) -> SyncLogEntry {
        SyncLogEntry {
            sequence,
            term: 1,
            origin_device: Uuid::from_u128(1),
            timestamp_ms: 0,
            model_type: model_type.into(),
            record_id: "r".into(),
            change_type,
            version: 1,
            data,
            proposal_id: None,
            hash: None,
            stamp: None,
        }
    }

    #[test]
    fn a_conflict_record_among_entries_is_one_event_naming_it() {
        let tag = Tag { id: "t1".into(), name: "x".into(), color: None };
        let entries = [
            entry(4, "tag", ChangeType::Update, lsync_storage::encode(&tag)),
            entry(
                5,
                CONFLICT_MODEL_TYPE,
                ChangeType::Insert,
                lsync_storage::encode(&conflict("p:0", ConflictOutcome::Stored)),
            ),
            entry(
                6,
                CONFLICT_MODEL_TYPE,
                ChangeType::Insert,
                lsync_storage::encode(&conflict("q:1", ConflictOutcome::Rejected)),
            ),
        ];
        assert_eq!(
            SyncEvent::conflicts_recorded(LIBRARY, &entries),
            vec![
                SyncEvent::ConflictRecorded {
                    library_id: LIBRARY,
                    id: "p:0".into(),
                    model_type: "tag".into(),
                    record_id: "t1".into(),
                    outcome: ConflictOutcome::Stored,
                },
                SyncEvent::ConflictRecorded {
                    library_id: LIBRARY,
                    id: "q:1".into(),
                    model_type: "tag".into(),
                    record_id: "t1".into(),
                    outcome: ConflictOutcome::Rejected,
                },
            ]
        );
    }

    #[test]
    fn a_deleted_or_undecodable_conflict_record_is_no_event() {
        let entries = [
            entry(5, CONFLICT_MODEL_TYPE, ChangeType::Delete, Vec::new()),
            entry(6, CONFLICT_MODEL_TYPE, ChangeType::Insert, vec![0xc1]),
        ];
        assert_eq!(SyncEvent::conflicts_recorded(LIBRARY, &entries), vec![]);
    }
}
