//! The messages of the sync protocol and the types they carry.
//!
//! Every message is a request or a response of the `/spacedrive/sync/1.0.0` request–response
//! protocol; `docs/protocol.md` lists which request is answered by which response.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::chain::ChainHash;
use crate::membership::{AddressHint, Configuration, MembershipChange};
use crate::stamp::{EntryStamp, Hlc};

/// The role a device plays for one library.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SyncRole {
    /// Sequences every change and pushes notifications to the followers.
    Leader,
    /// Fetches and applies the leader's log in order.
    Follower,
    /// Asking for votes to become leader of a new term.
    Candidate,
}

impl std::fmt::Display for SyncRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Leader => "leader",
            Self::Follower => "follower",
            Self::Candidate => "candidate",
        })
    }
}

/// What a log entry does to its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ChangeType {
    /// A new record; `data` is the whole record.
    Insert,
    /// A changed record; `data` is the whole new record.
    Update,
    /// The record is removed; `data` is empty.
    Delete,
    /// Metadata of a large operation (e.g. indexing a location): followers run a local job
    /// instead of receiving rows.
    Bulk,
    /// A field-level update, in a proposal only (never a log entry): `data` is a MessagePack
    /// map of the fields it sets, by name, each value encoded as in the whole record. The
    /// leader merges the fields into the record's current row and commits the result as an
    /// `Update` of the whole record (docs/protocol.md, `Propose`). An older build decodes it
    /// as `Unknown` and refuses the proposal (§11).
    Patch,
    /// A configuration entry: `data` is the library's whole membership
    /// ([`crate::Configuration`]). Every leader's first entry of its term is one (restating
    /// the configuration when it does not change it).
    Config,
    /// A change type this build does not know, written by a newer version. It is never
    /// written by this build; a follower meeting one stops applying and reports that it needs
    /// an upgrade.
    #[serde(other)]
    Unknown,
}

impl ChangeType {
    /// The stable text form stored in the `sync_log.change_type` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Insert => "insert",
            Self::Update => "update",
            Self::Delete => "delete",
            Self::Bulk => "bulk",
            Self::Patch => "patch",
            Self::Config => "config",
            Self::Unknown => "unknown",
        }
    }

    /// Parses the text form written by [`ChangeType::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "insert" => Self::Insert,
            "update" => Self::Update,
            "delete" => Self::Delete,
            "bulk" => Self::Bulk,
            "patch" => Self::Patch,
            "config" => Self::Config,
            _ => return None,
        })
    }
}

/// The highest term a message may carry (docs/protocol.md §6): 2^62. A term is stored as a
/// signed 64-bit integer (SQLite's INTEGER), so a term above `i64::MAX` cannot be persisted,
/// and a device at `i64::MAX` could never campaign again (its next term would overflow). The
/// bound leaves room for `term + 1` and any arithmetic on a term, and is out of reach of any
/// real library (one election per millisecond takes 146 million years to get there). A
/// message carrying a larger term, anywhere (its `term`, a `last_term`, `prev_term`,
/// `since_term`, `last_log_term`, or an entry's `term`), is malformed: it is refused when
/// decoded ([`crate::codec::decode_body`], answered `Error(BadRequest)`) and never adopted.
pub const MAX_TERM: u64 = 1 << 62;

/// One entry of a library's sync log. Identified by `(term, sequence)` and, since the hash
/// chain, by `(sequence, hash)` (docs/protocol.md, "The hash chain").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncLogEntry {
    /// 1-based, gapless position in the log.
    pub sequence: u64,
    /// Leadership term of the leader that sequenced the entry.
    pub term: u64,
    /// Device on which the change was made.
    pub origin_device: Uuid,
    /// Milliseconds since the Unix epoch, on the leader, when the entry was sequenced.
    pub timestamp_ms: i64,
    /// Registered model type (e.g. `tag`, `location`).
    pub model_type: String,
    /// Primary key of the record within its model.
    pub record_id: String,
    /// What the entry does.
    pub change_type: ChangeType,
    /// The record's version after this change (1 for an insert, +1 for each later change).
    pub version: i64,
    /// The record (Insert/Update) or the bulk metadata, as MessagePack; empty for Delete.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
    /// The proposal this entry commits, if it came from a proposal; lets any later leader
    /// recognise a retried proposal (every entry of one proposal carries its id). Absent (nil)
    /// for a change the leader made itself.
    #[serde(default)]
    pub proposal_id: Option<Uuid>,
    /// The log's chain hash at this entry ([`crate::chain_hash`] of the previous entry's hash
    /// and this entry), as the sender's log holds it. `None` when the sender does not know it
    /// (a version 2 peer, or an entry not yet in a log): not written on the wire then, and
    /// absent decodes as `None`. A receiver that computes another hash for the entry after its
    /// own previous one refuses it (the logs differ at or before this entry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<ChainHash>,
    /// Where and when the change was made and which fields it set (docs/protocol.md,
    /// "Stamps"): written by leaders of libraries at feature version 3 on every Insert, Update
    /// and Delete entry, part of the entry's chain hash. Absent (not written): none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stamp: Option<EntryStamp>,
}

/// The most bytes the encoding of one [`SyncLogEntry`] takes beyond its data, model type and
/// record id: every other field at its largest (a `u64::MAX` sequence, a [`MAX_TERM`] term,
/// both uuids, a hash), the field names of the named encoding, and the longest MessagePack
/// headers of the three variable fields, and a stamp without fields (measured: 233 bytes
/// without a stamp, 312 with one; the tests check the bound).
pub const ENTRY_OVERHEAD: usize = 320;

/// The most bytes an `EntriesResponse` or a `NewEntries` takes beyond the encodings of the
/// entries it carries: every other field at its largest and the longest array header
/// (measured: 226 bytes; the tests check the bound). A response or push whose entries count
/// `n` bytes by [`entry_bytes`] is a frame body of at most `n + ENVELOPE_BYTES` bytes.
pub const ENVELOPE_BYTES: usize = 512;

/// The smallest frame limit a device accepts (`network.max_frame_bytes`): room for the
/// envelope and a change of half the frame (docs/protocol.md "Framing").
pub const MIN_FRAME_BYTES: usize = 4096;

/// What one entry counts against a response's byte budget (`max_response_bytes`, in an
/// `EntriesResponse` or inside `NewEntries`, docs/protocol.md): its payload, model type and
/// record id, plus [`ENTRY_OVERHEAD`] for the fixed fields and their encoding — never less
/// than the entry's encoded size. The leader caps responses with it, its log cache counts
/// blocks with it, and a follower sizes the batches it applies with it, so all three agree.
pub fn entry_bytes(e: &SyncLogEntry) -> usize {
    e.data.len()
        + e.model_type.len()
        + e.record_id.len()
        + e.stamp.as_ref().map_or(0, EntryStamp::field_bytes)
        + ENTRY_OVERHEAD
}

/// One change of a proposal: what the proposer asks the leader to commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProposedChange {
    /// Registered model type.
    pub model_type: String,
    /// Primary key of the record.
    pub record_id: String,
    /// Insert, Update, Patch, Delete or Bulk.
    pub change_type: ChangeType,
    /// The record (Insert/Update), the fields it sets (Patch: a map of field name to value),
    /// or bulk metadata, as MessagePack; empty for Delete.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
    /// The hybrid logical clock timestamp the change got on the device that made it
    /// (docs/protocol.md, "Stamps"): last-writer-wins compares it. Absent (not written): none,
    /// the leader stamps the change when it commits it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hlc: Option<Hlc>,
    /// The version of the record the change was based on, as the device that made it saw it
    /// (0: the record did not exist there). A change whose base is older than the record's
    /// version at the leader is checked for conflicts. Absent (not written): unknown, no check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_version: Option<i64>,
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The asking device is not a member of this library.
    Unauthorized,
    /// This node does not hold the library.
    UnknownLibrary,
    /// This device does not lead the library; `leader_hint` names the leader it knows of.
    NotLeader,
    /// The request is malformed or out of range.
    BadRequest,
    /// The request carries an older term than this device knows.
    StaleTerm,
    /// This device failed to serve the request; the requester may retry.
    Internal,
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// Every message of the sync protocol, requests and responses alike.
///
/// The six variants of the seed card keep their names; `term` fields, `last_term`,
/// `leader_last_sequence` and the [`SyncMessage::Error`] reply are additions listed with their
/// reasons in `docs/protocol.md`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncMessage {
    /// Leader → follower request: entries `from_sequence..=to_sequence` exist.
    /// Answered by [`SyncMessage::Acknowledge`] (the follower's applied position) or `Error`.
    ///
    /// A small range may carry its `entries` (all of `from_sequence..=to_sequence`, in order;
    /// empty otherwise), with `prev_term`, the term of the leader's entry at
    /// `from_sequence - 1`: a follower whose log ends exactly there, in that term, applies them
    /// without fetching and answers with its new position. Both fields default when absent.
    NewEntries {
        library_id: Uuid,
        term: u64,
        from_sequence: u64,
        to_sequence: u64,
        entry_count: u64,
        #[serde(default)]
        prev_term: u64,
        #[serde(default)]
        entries: Vec<SyncLogEntry>,
        /// The leader's commit sequence (docs/protocol.md §6); absent: 0.
        #[serde(default)]
        commit_sequence: u64,
        /// The leader's chain hash at `from_sequence - 1` (the position `entries` extend);
        /// absent (not written): unknown, the `prev_term` rule alone applies.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        prev_hash: Option<ChainHash>,
    },
    /// Follower → leader request: entries after `since_sequence`, at most `limit`
    /// (the leader caps it at its own maximum, 100 by default). `since_term` is the term of the
    /// follower's entry at `since_sequence` (0 when `since_sequence` is 0), so the leader can
    /// tell whether their logs agree there. Answered by `EntriesResponse`, `SyncRequired` or
    /// `Error`.
    ///
    /// `since_hash` is the follower's chain hash at `since_sequence` (the genesis hash when it
    /// is 0); absent (not written): unknown, the `since_term` rule alone applies.
    FetchEntries {
        library_id: Uuid,
        term: u64,
        since_sequence: u64,
        since_term: u64,
        limit: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since_hash: Option<ChainHash>,
    },
    /// Leader → follower response: contiguous entries starting at `since_sequence + 1`.
    EntriesResponse {
        library_id: Uuid,
        term: u64,
        entries: Vec<SyncLogEntry>,
        has_more: bool,
        leader_last_sequence: u64,
        /// The leader's commit sequence; absent: 0.
        #[serde(default)]
        commit_sequence: u64,
    },
    /// Follower → leader request: everything up to `up_to_sequence` is applied.
    /// Also the follower's response to `NewEntries`. Answered by the leader's `Heartbeat`.
    /// `last_term` is the term of the follower's entry at `up_to_sequence` and `term` the
    /// follower's current term: the leader counts the acknowledgement toward its commit
    /// sequence only when both match its own (absent: 0, never counted). `last_hash` is the
    /// follower's chain hash at `up_to_sequence` (absent, not written: unknown).
    Acknowledge {
        library_id: Uuid,
        up_to_sequence: u64,
        #[serde(default)]
        term: u64,
        #[serde(default)]
        last_term: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        last_hash: Option<ChainHash>,
    },
    /// Either direction, request: the sender's view. `current_sequence` is its last log
    /// sequence and `last_term` the term of that entry. Answered by the receiver's `Heartbeat`,
    /// or `SyncRequired` / `Error`.
    ///
    /// `commit_sequence` is the leader's commit sequence (0 from a follower) and `features` the
    /// highest library feature version the sender supports (absent: 0, a version-1 peer).
    /// `last_hash` is the sender's chain hash at `current_sequence` (absent, not written:
    /// unknown).
    Heartbeat {
        library_id: Uuid,
        term: u64,
        current_sequence: u64,
        last_term: u64,
        role: SyncRole,
        #[serde(default)]
        commit_sequence: u64,
        #[serde(default)]
        features: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        last_hash: Option<ChainHash>,
    },
    /// Leader → follower response: the follower's log cannot be continued (diverged, or
    /// ahead of the leader); it must rebuild the library from the leader's log.
    SyncRequired { library_id: Uuid, term: u64, reason: String, leader_last_sequence: u64 },
    /// Candidate → member request: vote for `candidate` in `term`. Its log ends at
    /// `(last_log_term, last_log_sequence)`; `transfer` marks an election the leader asked for
    /// (leadership transfer), which members grant even while they hear a live leader.
    /// `pre_vote` asks whether the vote *would* be granted in `term`: nobody changes its term
    /// or its vote for it (absent: false). Answered by `Vote` or `Error`.
    RequestVote {
        library_id: Uuid,
        term: u64,
        candidate: Uuid,
        last_log_term: u64,
        last_log_sequence: u64,
        transfer: bool,
        #[serde(default)]
        pre_vote: bool,
    },
    /// Member → candidate response: `voter`'s decision, and its current term; `pre_vote`
    /// echoes the request's.
    Vote {
        library_id: Uuid,
        term: u64,
        voter: Uuid,
        granted: bool,
        #[serde(default)]
        pre_vote: bool,
    },
    /// Leader → chosen follower request (leadership transfer): the follower is caught up and
    /// should start an election at once. Answered by the receiver's `Heartbeat` or `Error`.
    TimeoutNow { library_id: Uuid, term: u64 },
    /// Any member → leader request: commit `changes`, made on `origin_device`, as new log
    /// entries. `proposal_id` makes retries safe: the leader commits a proposal at most once and
    /// answers a repeated one with the sequences it already got. Answered by `ProposalResult`
    /// or `Error` (NotLeader with a hint, BadRequest for a change that cannot be committed).
    Propose {
        library_id: Uuid,
        term: u64,
        proposal_id: Uuid,
        origin_device: Uuid,
        changes: Vec<ProposedChange>,
    },
    /// Leader → proposer response: the proposal's entries are `first_sequence..=last_sequence`.
    ProposalResult {
        library_id: Uuid,
        term: u64,
        proposal_id: Uuid,
        first_sequence: u64,
        last_sequence: u64,
    },
    /// Response to any request that is refused.
    Error {
        library_id: Uuid,
        code: ErrorCode,
        message: String,
        /// With `NotLeader`: the leader this device knows of, if any.
        #[serde(default)]
        leader_hint: Option<Uuid>,
        /// The responder's current term (so a `StaleTerm` teaches the requester the term);
        /// absent: 0.
        #[serde(default)]
        term: u64,
        /// With `NotLeader` and a `leader_hint`: that leader's peer id (text form), so that a
        /// requester that does not know the leader yet (it missed the membership change that
        /// brought it while it was away) lets it connect; absent: none.
        #[serde(default)]
        leader_peer: Option<String>,
    },
    /// New device → a member request, with an invitation's one-time `secret`: make this device
    /// (the stream's peer, `device_id`) a member of the library. Answered by `Joined` or
    /// `Error` (`Unauthorized` for an unknown, used or expired invitation).
    Join {
        library_id: Uuid,
        #[serde(with = "serde_bytes")]
        secret: Vec<u8>,
        device_id: Uuid,
        name: String,
        addresses: Vec<String>,
    },
    /// Response to `Join`: the configuration holding the new device (as a learner) at
    /// `config_sequence` of the leader's log, whether that entry is committed yet, the term and
    /// the leader to follow.
    Joined {
        library_id: Uuid,
        term: u64,
        leader: Option<Uuid>,
        configuration: Configuration,
        config_sequence: u64,
        committed: bool,
    },
    /// Any member → the leader request: change the membership. `request_id` makes retries
    /// safe. Answered by `MembershipResult` or `Error`.
    ChangeMembership { library_id: Uuid, term: u64, request_id: Uuid, change: MembershipChange },
    /// Response to `ChangeMembership`: the configuration entry at `config_sequence` carries the
    /// change; `committed` once a majority holds it.
    MembershipResult {
        library_id: Uuid,
        term: u64,
        request_id: Uuid,
        config_sequence: u64,
        committed: bool,
    },
    /// Any member → any member request: the signed address hints the sender knows (its own
    /// first). Answered by `AnnounceAddresses` with the receiver's hints.
    AnnounceAddresses { library_id: Uuid, hints: Vec<AddressHint> },
}

impl SyncMessage {
    /// The library every message is about.
    pub fn library_id(&self) -> Uuid {
        match self {
            Self::NewEntries { library_id, .. }
            | Self::FetchEntries { library_id, .. }
            | Self::EntriesResponse { library_id, .. }
            | Self::Acknowledge { library_id, .. }
            | Self::Heartbeat { library_id, .. }
            | Self::SyncRequired { library_id, .. }
            | Self::RequestVote { library_id, .. }
            | Self::Vote { library_id, .. }
            | Self::TimeoutNow { library_id, .. }
            | Self::Propose { library_id, .. }
            | Self::ProposalResult { library_id, .. }
            | Self::Error { library_id, .. }
            | Self::Join { library_id, .. }
            | Self::Joined { library_id, .. }
            | Self::ChangeMembership { library_id, .. }
            | Self::MembershipResult { library_id, .. }
            | Self::AnnounceAddresses { library_id, .. } => *library_id,
        }
    }

    /// The variant's name, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NewEntries { .. } => "NewEntries",
            Self::FetchEntries { .. } => "FetchEntries",
            Self::EntriesResponse { .. } => "EntriesResponse",
            Self::Acknowledge { .. } => "Acknowledge",
            Self::Heartbeat { .. } => "Heartbeat",
            Self::SyncRequired { .. } => "SyncRequired",
            Self::RequestVote { .. } => "RequestVote",
            Self::Vote { .. } => "Vote",
            Self::TimeoutNow { .. } => "TimeoutNow",
            Self::Propose { .. } => "Propose",
            Self::ProposalResult { .. } => "ProposalResult",
            Self::Error { .. } => "Error",
            Self::Join { .. } => "Join",
            Self::Joined { .. } => "Joined",
            Self::ChangeMembership { .. } => "ChangeMembership",
            Self::MembershipResult { .. } => "MembershipResult",
            Self::AnnounceAddresses { .. } => "AnnounceAddresses",
        }
    }

    /// Whether this variant is only ever a response (never valid as a request).
    pub fn is_response_only(&self) -> bool {
        matches!(
            self,
            Self::EntriesResponse { .. }
                | Self::SyncRequired { .. }
                | Self::Vote { .. }
                | Self::ProposalResult { .. }
                | Self::Error { .. }
                | Self::Joined { .. }
                | Self::MembershipResult { .. }
        )
    }

    /// The sender's current term, for the messages that carry one (docs/protocol.md §6). An
    /// `Error` carries one only from a version-2 peer (0 otherwise: none).
    pub fn term(&self) -> Option<u64> {
        match self {
            Self::NewEntries { term, .. }
            | Self::FetchEntries { term, .. }
            | Self::EntriesResponse { term, .. }
            | Self::Heartbeat { term, .. }
            | Self::SyncRequired { term, .. }
            | Self::RequestVote { term, .. }
            | Self::Vote { term, .. }
            | Self::TimeoutNow { term, .. }
            | Self::Propose { term, .. }
            | Self::ProposalResult { term, .. }
            | Self::Joined { term, .. }
            | Self::ChangeMembership { term, .. }
            | Self::MembershipResult { term, .. } => Some(*term),
            Self::Acknowledge { term, .. } | Self::Error { term, .. } => {
                (*term > 0).then_some(*term)
            }
            Self::Join { .. } | Self::AnnounceAddresses { .. } => None,
        }
    }

    /// Checks that every term the message carries is at most [`MAX_TERM`]: its `term` and
    /// the terms of positions and entries it names. The error says which field is out of
    /// range.
    pub fn check_terms(&self) -> Result<(), String> {
        let check = |field: &str, term: u64| {
            if term > MAX_TERM {
                Err(format!("{} {field} {term} is above the highest term {MAX_TERM}", self.kind()))
            } else {
                Ok(())
            }
        };
        let entries =
            |entries: &[SyncLogEntry]| entries.iter().try_for_each(|e| check("entry term", e.term));
        match self {
            Self::NewEntries { term, prev_term, entries: list, .. } => {
                check("term", *term)?;
                check("prev_term", *prev_term)?;
                entries(list)
            }
            Self::FetchEntries { term, since_term, .. } => {
                check("term", *term)?;
                check("since_term", *since_term)
            }
            Self::EntriesResponse { term, entries: list, .. } => {
                check("term", *term)?;
                entries(list)
            }
            Self::Acknowledge { term, last_term, .. } | Self::Heartbeat { term, last_term, .. } => {
                check("term", *term)?;
                check("last_term", *last_term)
            }
            Self::RequestVote { term, last_log_term, .. } => {
                check("term", *term)?;
                check("last_log_term", *last_log_term)
            }
            Self::SyncRequired { term, .. }
            | Self::Vote { term, .. }
            | Self::TimeoutNow { term, .. }
            | Self::Propose { term, .. }
            | Self::ProposalResult { term, .. }
            | Self::Error { term, .. }
            | Self::Joined { term, .. }
            | Self::ChangeMembership { term, .. }
            | Self::MembershipResult { term, .. } => check("term", *term),
            Self::Join { .. } | Self::AnnounceAddresses { .. } => Ok(()),
        }
    }

    /// An `Error` reply.
    pub fn error(library_id: Uuid, code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Error {
            library_id,
            code,
            message: message.into(),
            leader_hint: None,
            term: 0,
            leader_peer: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_counts_its_payload_its_names_and_a_fixed_overhead() {
        let entry = SyncLogEntry {
            sequence: 1,
            term: 1,
            origin_device: Uuid::nil(),
            timestamp_ms: 0,
            model_type: "tag".into(),
            record_id: "t-1".into(),
            change_type: ChangeType::Insert,
            version: 1,
            data: vec![0; 10],
            proposal_id: None,
            hash: None,
            stamp: None,
        };
        assert_eq!(entry_bytes(&entry), 10 + 3 + 3 + ENTRY_OVERHEAD);
    }

    fn heartbeat(term: u64, last_term: u64) -> SyncMessage {
        SyncMessage::Heartbeat {
            library_id: Uuid::nil(),
            term,
            current_sequence: 1,
            last_term,
            role: SyncRole::Leader,
            commit_sequence: 0,
            features: 0,
            last_hash: None,
        }
    }

    #[test]
    fn the_highest_term_passes_and_one_more_does_not() {
        assert_eq!(heartbeat(MAX_TERM, MAX_TERM).check_terms(), Ok(()));
        let refused = heartbeat(MAX_TERM + 1, 1).check_terms().unwrap_err();
        assert!(refused.contains("Heartbeat term"), "{refused}");
        let refused = heartbeat(1, MAX_TERM + 1).check_terms().unwrap_err();
        assert!(refused.contains("last_term"), "{refused}");
    }

    #[test]
    fn a_term_beyond_the_store_is_refused_in_an_entry_too() {
        let entry = SyncLogEntry {
            sequence: 1,
            term: u64::MAX,
            origin_device: Uuid::nil(),
            timestamp_ms: 0,
            model_type: "tag".into(),
            record_id: "t".into(),
            change_type: ChangeType::Insert,
            version: 1,
            data: vec![],
            proposal_id: None,
            hash: None,
            stamp: None,
        };
        let response = SyncMessage::EntriesResponse {
            library_id: Uuid::nil(),
            term: 2,
            entries: vec![entry],
            has_more: false,
            leader_last_sequence: 1,
            commit_sequence: 0,
        };
        assert!(response.check_terms().unwrap_err().contains("entry term"));
    }
}
