//! The codec against its spec (docs/protocol.md, "Framing" and "Encoding"): every message
//! round-trips, through the frame functions and through the libp2p `request_response::Codec`
//! methods; truncated, oversized, garbage and unknown input fails with an `io::Error`, never a
//! panic; the wire format is the documented one, byte for byte.
//!
//! Allocation bounds on hostile length prefixes are proven in `tests/alloc.rs` (it needs its own
//! global allocator, hence its own test binary).

use std::collections::BTreeSet;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::executor::block_on;
use futures::io::{AsyncRead, Cursor};
use libp2p::request_response::Codec;
use lsync_protocol::codec::{decode_body, encode_frame, read_frame, write_frame};
use lsync_protocol::entry_bytes;
use lsync_protocol::{
    AddressHint, ChainHash, ChangeType, Configuration, ErrorCode, Member, MemberRole,
    MembershipChange, ProposedChange, RolePreference, SyncCodec, SyncLogEntry, SyncMessage,
    SyncRole, CONFIG_MODEL_TYPE, CONFIG_RECORD_ID, DEFAULT_MAX_FRAME, ENTRY_OVERHEAD,
    ENVELOPE_BYTES, FEATURE_VERSION, MAX_TERM, PROTOCOL,
};
use proptest::collection::vec;
use proptest::prelude::*;
use uuid::Uuid;

// ---------------------------------------------------------------------------------------------
// Strategies: arbitrary values of every field of every variant, nested types included.
// ---------------------------------------------------------------------------------------------

/// A term a message may carry: at most [`MAX_TERM`] (larger ones are refused, tested below).
fn term() -> impl Strategy<Value = u64> {
    0..=MAX_TERM
}

fn uuid() -> impl Strategy<Value = Uuid> {
    any::<u128>().prop_map(Uuid::from_u128)
}

/// Every change type, `Unknown` included: it is what an unknown name decodes to, and it
/// encodes as its own name, which decodes to it again.
fn change_type() -> impl Strategy<Value = ChangeType> {
    prop_oneof![
        Just(ChangeType::Insert),
        Just(ChangeType::Update),
        Just(ChangeType::Delete),
        Just(ChangeType::Bulk),
        Just(ChangeType::Patch),
        Just(ChangeType::Config),
        Just(ChangeType::Unknown),
    ]
}

fn role() -> impl Strategy<Value = SyncRole> {
    prop_oneof![Just(SyncRole::Leader), Just(SyncRole::Follower), Just(SyncRole::Candidate)]
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    prop_oneof![
        Just(ErrorCode::Unauthorized),
        Just(ErrorCode::UnknownLibrary),
        Just(ErrorCode::NotLeader),
        Just(ErrorCode::BadRequest),
        Just(ErrorCode::StaleTerm),
        Just(ErrorCode::Internal),
    ]
}

fn member_role() -> impl Strategy<Value = MemberRole> {
    prop_oneof![Just(MemberRole::Voter), Just(MemberRole::Learner)]
}

fn role_preference() -> impl Strategy<Value = RolePreference> {
    prop_oneof![
        Just(RolePreference::Auto),
        Just(RolePreference::Learner),
        Just(RolePreference::Voter)
    ]
}

/// A few arbitrary texts (the codec checks no syntax: addresses and peer ids are validated by
/// the receiver's logic, not by the decoder).
fn texts() -> impl Strategy<Value = Vec<String>> {
    vec(any::<String>(), 0..3)
}

fn member() -> impl Strategy<Value = Member> {
    (uuid(), any::<String>(), texts(), any::<String>(), member_role(), role_preference()).prop_map(
        |(device_id, peer_id, addresses, name, role, preference)| Member {
            device_id,
            peer_id,
            addresses,
            name,
            role,
            preference,
        },
    )
}

/// Any configuration, valid or not, members in any order: the wire carries what it is given.
fn configuration() -> impl Strategy<Value = Configuration> {
    (any::<u32>(), vec(member(), 0..4))
        .prop_map(|(feature_version, members)| Configuration { feature_version, members })
}

fn membership_change() -> impl Strategy<Value = MembershipChange> {
    prop_oneof![
        member().prop_map(|member| MembershipChange::Add { member }),
        uuid().prop_map(|device_id| MembershipChange::Remove { device_id }),
        (uuid(), role_preference()).prop_map(|(device_id, preference)| {
            MembershipChange::SetPreference { device_id, preference }
        }),
    ]
}

fn address_hint() -> impl Strategy<Value = AddressHint> {
    (uuid(), texts(), any::<u64>(), vec(any::<u8>(), 0..80)).prop_map(
        |(device_id, addresses, counter, signature)| AddressHint {
            device_id,
            addresses,
            counter,
            signature,
        },
    )
}

/// A chain hash, or none (unknown: not written).
fn hash() -> impl Strategy<Value = Option<ChainHash>> {
    proptest::option::of(any::<[u8; 32]>().prop_map(ChainHash))
}

fn entry_with(max_data: usize) -> impl Strategy<Value = SyncLogEntry> {
    (
        (any::<u64>(), term(), uuid(), any::<i64>()),
        (any::<String>(), any::<String>(), change_type(), any::<i64>()),
        vec(any::<u8>(), 0..max_data),
        proptest::option::of(uuid()),
        hash(),
    )
        .prop_map(
            |(
                (sequence, term, origin_device, timestamp_ms),
                (model_type, record_id, change_type, version),
                data,
                proposal_id,
                hash,
            )| SyncLogEntry {
                sequence,
                term,
                origin_device,
                timestamp_ms,
                model_type,
                record_id,
                change_type,
                version,
                data,
                proposal_id,
                hash,
                stamp: None,
            },
        )
}

/// A configuration entry as docs/protocol.md §4 defines it, with an arbitrary configuration.
fn config_entry() -> impl Strategy<Value = SyncLogEntry> {
    (entry_with(1), configuration()).prop_map(|(entry, config)| SyncLogEntry {
        model_type: CONFIG_MODEL_TYPE.into(),
        record_id: CONFIG_RECORD_ID.into(),
        change_type: ChangeType::Config,
        version: 0,
        data: config.encode(),
        proposal_id: None,
        ..entry
    })
}

/// Entries of any kind: arbitrary ones (any change type, any data) and configuration entries.
fn any_entry(max_data: usize) -> impl Strategy<Value = SyncLogEntry> {
    prop_oneof![3 => entry_with(max_data), 1 => config_entry()]
}

fn proposed_with(max_data: usize) -> impl Strategy<Value = ProposedChange> {
    (any::<String>(), any::<String>(), change_type(), vec(any::<u8>(), 0..max_data)).prop_map(
        |(model_type, record_id, change_type, data)| ProposedChange {
            model_type,
            record_id,
            change_type,
            data,
            base_version: None,
            hlc: None,
        },
    )
}

/// Every variant, every field arbitrary; `max_entries`/`max_data` bound the entries and
/// changes a message carries.
fn message_with(max_entries: usize, max_data: usize) -> impl Strategy<Value = SyncMessage> {
    prop_oneof![
        (
            (uuid(), term(), any::<u64>(), any::<u64>(), any::<u64>(), term()),
            vec(any_entry(max_data), 0..=max_entries.min(4)),
            any::<u64>(),
            hash(),
        )
            .prop_map(
                |(
                    (library_id, term, from_sequence, to_sequence, entry_count, prev_term),
                    entries,
                    commit_sequence,
                    prev_hash,
                )| {
                    SyncMessage::NewEntries {
                        library_id,
                        term,
                        from_sequence,
                        to_sequence,
                        entry_count,
                        prev_term,
                        entries,
                        commit_sequence,
                        prev_hash,
                    }
                }
            ),
        (uuid(), term(), any::<u64>(), term(), any::<u64>(), hash()).prop_map(
            |(library_id, term, since_sequence, since_term, limit, since_hash)| {
                SyncMessage::FetchEntries {
                    library_id,
                    term,
                    since_sequence,
                    since_term,
                    limit,
                    since_hash,
                }
            }
        ),
        (
            uuid(),
            term(),
            vec(any_entry(max_data), 0..max_entries),
            any::<bool>(),
            any::<u64>(),
            any::<u64>(),
        )
            .prop_map(
                |(library_id, term, entries, has_more, leader_last_sequence, commit_sequence)| {
                    SyncMessage::EntriesResponse {
                        library_id,
                        term,
                        entries,
                        has_more,
                        leader_last_sequence,
                        commit_sequence,
                    }
                }
            ),
        (uuid(), any::<u64>(), term(), term(), hash()).prop_map(
            |(library_id, up_to_sequence, term, last_term, last_hash)| SyncMessage::Acknowledge {
                library_id,
                up_to_sequence,
                term,
                last_term,
                last_hash,
            }
        ),
        (uuid(), term(), any::<u64>(), term(), role(), any::<u64>(), any::<u32>(), hash(),)
            .prop_map(
                |(
                    library_id,
                    term,
                    current_sequence,
                    last_term,
                    role,
                    commit_sequence,
                    features,
                    last_hash,
                )| SyncMessage::Heartbeat {
                    library_id,
                    term,
                    current_sequence,
                    last_term,
                    role,
                    commit_sequence,
                    features,
                    last_hash,
                },
            ),
        (uuid(), term(), any::<String>(), any::<u64>()).prop_map(
            |(library_id, term, reason, leader_last_sequence)| SyncMessage::SyncRequired {
                library_id,
                term,
                reason,
                leader_last_sequence,
            }
        ),
        (uuid(), term(), uuid(), term(), any::<u64>(), any::<bool>(), any::<bool>()).prop_map(
            |(
                library_id,
                term,
                candidate,
                last_log_term,
                last_log_sequence,
                transfer,
                pre_vote,
            )| {
                SyncMessage::RequestVote {
                    library_id,
                    term,
                    candidate,
                    last_log_term,
                    last_log_sequence,
                    transfer,
                    pre_vote,
                }
            }
        ),
        (uuid(), term(), uuid(), any::<bool>(), any::<bool>()).prop_map(
            |(library_id, term, voter, granted, pre_vote)| SyncMessage::Vote {
                library_id,
                term,
                voter,
                granted,
                pre_vote,
            }
        ),
        (uuid(), term())
            .prop_map(|(library_id, term)| SyncMessage::TimeoutNow { library_id, term }),
        (uuid(), term(), uuid(), uuid(), vec(proposed_with(max_data), 0..max_entries)).prop_map(
            |(library_id, term, proposal_id, origin_device, changes)| {
                SyncMessage::Propose { library_id, term, proposal_id, origin_device, changes }
            }
        ),
        (uuid(), term(), uuid(), any::<u64>(), any::<u64>()).prop_map(
            |(library_id, term, proposal_id, first_sequence, last_sequence)| {
                SyncMessage::ProposalResult {
                    library_id,
                    term,
                    proposal_id,
                    first_sequence,
                    last_sequence,
                }
            }
        ),
        (
            uuid(),
            error_code(),
            any::<String>(),
            proptest::option::of(uuid()),
            term(),
            proptest::option::of(any::<String>())
        )
            .prop_map(|(library_id, code, message, leader_hint, term, leader_peer)| {
                SyncMessage::Error { leader_peer, library_id, code, message, leader_hint, term }
            }),
        (uuid(), vec(any::<u8>(), 0..48), uuid(), any::<String>(), texts()).prop_map(
            |(library_id, secret, device_id, name, addresses)| SyncMessage::Join {
                library_id,
                secret,
                device_id,
                name,
                addresses,
            }
        ),
        (
            uuid(),
            term(),
            proptest::option::of(uuid()),
            configuration(),
            any::<u64>(),
            any::<bool>()
        )
            .prop_map(
                |(library_id, term, leader, configuration, config_sequence, committed)| {
                    SyncMessage::Joined {
                        library_id,
                        term,
                        leader,
                        configuration,
                        config_sequence,
                        committed,
                    }
                }
            ),
        (uuid(), term(), uuid(), membership_change()).prop_map(
            |(library_id, term, request_id, change)| SyncMessage::ChangeMembership {
                library_id,
                term,
                request_id,
                change,
            }
        ),
        (uuid(), term(), uuid(), any::<u64>(), any::<bool>()).prop_map(
            |(library_id, term, request_id, config_sequence, committed)| {
                SyncMessage::MembershipResult {
                    library_id,
                    term,
                    request_id,
                    config_sequence,
                    committed,
                }
            }
        ),
        (uuid(), vec(address_hint(), 0..4))
            .prop_map(|(library_id, hints)| SyncMessage::AnnounceAddresses { library_id, hints }),
    ]
}

fn message() -> impl Strategy<Value = SyncMessage> {
    message_with(8, 256)
}

// ---------------------------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------------------------

/// The position of a variant; a match without a wildcard, so a new variant breaks this file
/// until it is sampled below (and documented in docs/protocol.md).
fn variant_index(msg: &SyncMessage) -> usize {
    match msg {
        SyncMessage::NewEntries { .. } => 0,
        SyncMessage::FetchEntries { .. } => 1,
        SyncMessage::EntriesResponse { .. } => 2,
        SyncMessage::Acknowledge { .. } => 3,
        SyncMessage::Heartbeat { .. } => 4,
        SyncMessage::SyncRequired { .. } => 5,
        SyncMessage::Error { .. } => 6,
        SyncMessage::RequestVote { .. } => 7,
        SyncMessage::Vote { .. } => 8,
        SyncMessage::TimeoutNow { .. } => 9,
        SyncMessage::Propose { .. } => 10,
        SyncMessage::ProposalResult { .. } => 11,
        SyncMessage::Join { .. } => 12,
        SyncMessage::Joined { .. } => 13,
        SyncMessage::ChangeMembership { .. } => 14,
        SyncMessage::MembershipResult { .. } => 15,
        SyncMessage::AnnounceAddresses { .. } => 16,
    }
}
const VARIANTS: usize = 17;

const LIB: Uuid = Uuid::from_u128(0x67e5_5044_10b1_426f_9247_bb68_0e5f_e0c8);

fn entry(sequence: u64, change_type: ChangeType, data: Vec<u8>) -> SyncLogEntry {
    SyncLogEntry {
        sequence,
        term: 1,
        origin_device: Uuid::from_u128(7),
        timestamp_ms: 1_700_000_000_000,
        model_type: "tag".into(),
        record_id: format!("tag-{sequence}"),
        change_type,
        version: 1,
        data,
        proposal_id: None,
        hash: None,
        stamp: None,
    }
}

/// One message of every variant, with edge values (zeros, maxima, empty and non-ASCII text).
fn samples() -> Vec<SyncMessage> {
    vec![
        SyncMessage::NewEntries {
            commit_sequence: 0,
            library_id: LIB,
            term: 1,
            from_sequence: 1,
            to_sequence: u64::MAX,
            entry_count: u64::MAX,
            prev_term: 0,
            entries: vec![],
            prev_hash: None,
        },
        SyncMessage::FetchEntries {
            library_id: Uuid::nil(),
            term: 0,
            since_sequence: 0,
            since_term: 0,
            limit: 100,
            since_hash: None,
        },
        SyncMessage::EntriesResponse {
            commit_sequence: 0,
            library_id: LIB,
            term: MAX_TERM,
            entries: vec![
                entry(1, ChangeType::Insert, vec![0x81, 0xa1, b'n', 0xa1, b'x']),
                entry(2, ChangeType::Update, vec![0; 300]),
                entry(3, ChangeType::Delete, vec![]),
                SyncLogEntry {
                    timestamp_ms: i64::MIN,
                    version: i64::MAX,
                    model_type: "location ✓".into(),
                    record_id: String::new(),
                    hash: Some(ChainHash([0xee; 32])),
                    ..entry(4, ChangeType::Bulk, vec![0xff; 70_000])
                },
            ],
            has_more: true,
            leader_last_sequence: 4,
        },
        SyncMessage::EntriesResponse {
            commit_sequence: 0,
            library_id: LIB,
            term: 2,
            entries: vec![],
            has_more: false,
            leader_last_sequence: 0,
        },
        SyncMessage::Acknowledge {
            last_term: 0,
            term: 0,
            library_id: LIB,
            up_to_sequence: 42,
            last_hash: Some(ChainHash([0x42; 32])),
        },
        SyncMessage::Heartbeat {
            commit_sequence: 0,
            features: 0,
            library_id: LIB,
            term: 3,
            current_sequence: 1000,
            last_term: 3,
            role: SyncRole::Leader,
            last_hash: None,
        },
        SyncMessage::Heartbeat {
            commit_sequence: 0,
            features: 0,
            library_id: LIB,
            term: 4,
            current_sequence: 0,
            last_term: 0,
            role: SyncRole::Follower,
            last_hash: None,
        },
        SyncMessage::Heartbeat {
            commit_sequence: 0,
            features: 0,
            library_id: LIB,
            term: 5,
            current_sequence: 9,
            last_term: 4,
            role: SyncRole::Candidate,
            last_hash: None,
        },
        SyncMessage::SyncRequired {
            library_id: LIB,
            term: 6,
            reason: "diverged at sequence 10".into(),
            leader_last_sequence: 12,
        },
        SyncMessage::RequestVote {
            pre_vote: false,
            library_id: LIB,
            term: 7,
            candidate: Uuid::from_u128(3),
            last_log_term: 6,
            last_log_sequence: 12,
            transfer: false,
        },
        SyncMessage::Vote {
            pre_vote: false,
            library_id: LIB,
            term: 7,
            voter: Uuid::from_u128(4),
            granted: true,
        },
        SyncMessage::TimeoutNow { library_id: LIB, term: 7 },
        SyncMessage::Propose {
            library_id: LIB,
            term: 7,
            proposal_id: Uuid::from_u128(11),
            origin_device: Uuid::from_u128(4),
            changes: vec![ProposedChange {
                model_type: "tag".into(),
                record_id: "t1".into(),
                change_type: ChangeType::Insert,
                data: vec![0x81, 0xa1, b'n', 0xa1, b'x'],
                base_version: None,
                hlc: None,
            }],
        },
        SyncMessage::ProposalResult {
            library_id: LIB,
            term: 7,
            proposal_id: Uuid::from_u128(11),
            first_sequence: 13,
            last_sequence: 13,
        },
        SyncMessage::error(LIB, ErrorCode::Unauthorized, "not a member"),
        SyncMessage::error(LIB, ErrorCode::UnknownLibrary, ""),
        SyncMessage::Error {
            leader_peer: Some("12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN".into()),
            term: 0,
            library_id: LIB,
            code: ErrorCode::NotLeader,
            message: "ask the leader".into(),
            leader_hint: Some(Uuid::from_u128(9)),
        },
        SyncMessage::error(LIB, ErrorCode::BadRequest, "limit must be at least 1"),
        SyncMessage::error(LIB, ErrorCode::StaleTerm, "term 2 < 3"),
        SyncMessage::error(LIB, ErrorCode::Internal, "database is locked"),
        SyncMessage::Join {
            library_id: LIB,
            secret: vec![7; 32],
            device_id: Uuid::from_u128(12),
            name: "phone ✓".into(),
            addresses: vec!["/ip4/10.0.0.3/tcp/7700".into()],
        },
        SyncMessage::Joined {
            library_id: LIB,
            term: 8,
            leader: Some(Uuid::from_u128(4)),
            configuration: sample_configuration(),
            config_sequence: 14,
            committed: false,
        },
        SyncMessage::ChangeMembership {
            library_id: LIB,
            term: 8,
            request_id: Uuid::from_u128(13),
            change: MembershipChange::Remove { device_id: Uuid::from_u128(12) },
        },
        SyncMessage::MembershipResult {
            library_id: LIB,
            term: 8,
            request_id: Uuid::from_u128(13),
            config_sequence: 15,
            committed: true,
        },
        SyncMessage::AnnounceAddresses {
            library_id: LIB,
            hints: vec![AddressHint {
                device_id: Uuid::from_u128(4),
                addresses: vec!["/ip4/10.0.0.4/tcp/7701".into()],
                counter: 1_700_000_000_000,
                signature: vec![1; 64],
            }],
        },
        SyncMessage::EntriesResponse {
            commit_sequence: 16,
            library_id: LIB,
            term: 8,
            entries: vec![SyncLogEntry {
                model_type: CONFIG_MODEL_TYPE.into(),
                record_id: CONFIG_RECORD_ID.into(),
                version: 0,
                ..entry(16, ChangeType::Config, sample_configuration().encode())
            }],
            has_more: false,
            leader_last_sequence: 16,
        },
        // Version 2 fields with values other than their defaults.
        SyncMessage::NewEntries {
            library_id: LIB,
            term: 8,
            from_sequence: 17,
            to_sequence: 17,
            entry_count: 1,
            prev_term: 8,
            entries: vec![SyncLogEntry {
                term: 8,
                proposal_id: Some(Uuid::from_u128(21)),
                ..entry(17, ChangeType::Insert, vec![0x80])
            }],
            commit_sequence: 16,
            prev_hash: None,
        },
        SyncMessage::Acknowledge {
            library_id: LIB,
            up_to_sequence: 17,
            term: 8,
            last_term: 8,
            last_hash: None,
        },
        SyncMessage::Heartbeat {
            library_id: LIB,
            term: 8,
            current_sequence: 17,
            last_term: 8,
            role: SyncRole::Leader,
            commit_sequence: u64::MAX,
            features: u32::MAX,
            last_hash: None,
        },
        SyncMessage::RequestVote {
            library_id: LIB,
            term: 9,
            candidate: Uuid::from_u128(12),
            last_log_term: 8,
            last_log_sequence: 17,
            transfer: true,
            pre_vote: true,
        },
        SyncMessage::Vote {
            library_id: LIB,
            term: 8,
            voter: Uuid::from_u128(4),
            granted: false,
            pre_vote: true,
        },
        SyncMessage::Error {
            leader_peer: None,
            library_id: LIB,
            code: ErrorCode::StaleTerm,
            message: "term 7 < 8".into(),
            leader_hint: Some(Uuid::from_u128(4)),
            term: 8,
        },
        SyncMessage::Joined {
            library_id: LIB,
            term: 0,
            leader: None,
            configuration: Configuration { feature_version: 0, members: vec![] },
            config_sequence: 0,
            committed: true,
        },
        SyncMessage::ChangeMembership {
            library_id: LIB,
            term: 8,
            request_id: Uuid::from_u128(14),
            change: MembershipChange::Add {
                member: Member {
                    device_id: Uuid::from_u128(15),
                    peer_id: "12D3KooWK99VoVxNE7XzyBwXEzW7xhK7Gpv85r9F3V3fyKSUKPH5".into(),
                    addresses: vec!["/ip6/::1/tcp/7700".into(), "/dns4/nas.local/tcp/7700".into()],
                    name: String::new(),
                    role: MemberRole::Voter,
                    preference: RolePreference::Voter,
                },
            },
        },
        SyncMessage::ChangeMembership {
            library_id: LIB,
            term: 8,
            request_id: Uuid::from_u128(16),
            change: MembershipChange::SetPreference {
                device_id: Uuid::from_u128(12),
                preference: RolePreference::Auto,
            },
        },
        SyncMessage::AnnounceAddresses { library_id: LIB, hints: vec![] },
        // What a newer peer's entry and change of an unknown change type decode to.
        SyncMessage::EntriesResponse {
            library_id: LIB,
            term: 9,
            entries: vec![entry(18, ChangeType::Unknown, vec![1])],
            has_more: false,
            leader_last_sequence: 18,
            commit_sequence: 18,
        },
        SyncMessage::Propose {
            library_id: LIB,
            term: 9,
            proposal_id: Uuid::from_u128(17),
            origin_device: Uuid::from_u128(12),
            changes: vec![ProposedChange {
                model_type: "tag".into(),
                record_id: "t2".into(),
                change_type: ChangeType::Unknown,
                data: vec![],
                base_version: None,
                hlc: None,
            }],
        },
    ]
}

/// A configuration of a voter and a learner.
fn sample_configuration() -> Configuration {
    Configuration::new(
        FEATURE_VERSION,
        vec![
            Member {
                device_id: Uuid::from_u128(4),
                peer_id: "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN".into(),
                addresses: vec!["/ip4/10.0.0.4/tcp/7700".into()],
                name: "laptop".into(),
                role: MemberRole::Voter,
                preference: RolePreference::Auto,
            },
            Member {
                device_id: Uuid::from_u128(12),
                peer_id: "12D3KooWRBhwfeP2Y4TCx1SM6s9rUoHhR5STiGwxBhgFRcw3UERE".into(),
                addresses: vec![],
                name: "phone".into(),
                role: MemberRole::Learner,
                preference: RolePreference::Learner,
            },
        ],
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ")
}

fn frame_of(body: &[u8]) -> Vec<u8> {
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(body);
    frame
}

fn read(bytes: &[u8], max_frame: usize) -> io::Result<SyncMessage> {
    block_on(read_frame(&mut Cursor::new(bytes), max_frame))
}

fn assert_kind<T: std::fmt::Debug>(result: io::Result<T>, kind: io::ErrorKind) -> io::Error {
    match result {
        Ok(v) => panic!("expected a {kind:?} error, got Ok({v:?})"),
        Err(e) => {
            assert_eq!(e.kind(), kind, "unexpected error: {e}");
            e
        }
    }
}

/// Delivers at most one byte per poll and returns `Pending` every other poll, like a slow
/// network stream.
struct Trickle<R> {
    inner: R,
    pending: bool,
}

impl<R: AsyncRead + Unpin> AsyncRead for Trickle<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        self.pending = !self.pending;
        if self.pending {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let n = buf.len().min(1);
        Pin::new(&mut self.inner).poll_read(cx, &mut buf[..n])
    }
}

// ---------------------------------------------------------------------------------------------
// Round trips.
// ---------------------------------------------------------------------------------------------

#[test]
fn samples_cover_every_variant_role_code_and_change_type() {
    let variants: BTreeSet<usize> = samples().iter().map(variant_index).collect();
    assert_eq!(variants.len(), VARIANTS);
    let mut roles = BTreeSet::new();
    let mut codes = BTreeSet::new();
    let mut changes = BTreeSet::new();
    let mut member_roles = BTreeSet::new();
    let mut preferences = BTreeSet::new();
    let mut membership_changes = BTreeSet::new();
    // The version 2 fields seen with a value other than their default.
    let mut set = BTreeSet::new();
    let mut note = |field: &'static str, non_default: bool| {
        if non_default {
            set.insert(field);
        }
    };
    for msg in samples() {
        match msg {
            SyncMessage::NewEntries { entries, commit_sequence, .. } => {
                changes.extend(entries.iter().map(|e| e.change_type.as_str()));
                note("NewEntries.commit_sequence", commit_sequence != 0);
            }
            SyncMessage::EntriesResponse { entries, commit_sequence, .. } => {
                changes.extend(entries.iter().map(|e| e.change_type.as_str()));
                note("EntriesResponse.commit_sequence", commit_sequence != 0);
            }
            SyncMessage::Propose { changes: proposed, .. } => {
                changes.extend(proposed.iter().map(|c| c.change_type.as_str()));
            }
            SyncMessage::Acknowledge { term, last_term, .. } => {
                note("Acknowledge.term", term != 0);
                note("Acknowledge.last_term", last_term != 0);
            }
            SyncMessage::Heartbeat { role, commit_sequence, features, .. } => {
                roles.insert(role.to_string());
                note("Heartbeat.commit_sequence", commit_sequence != 0);
                note("Heartbeat.features", features != 0);
            }
            SyncMessage::RequestVote { pre_vote, .. } => note("RequestVote.pre_vote", pre_vote),
            SyncMessage::Vote { pre_vote, .. } => note("Vote.pre_vote", pre_vote),
            SyncMessage::Error { code, term, .. } => {
                codes.insert(code.to_string());
                note("Error.term", term != 0);
            }
            SyncMessage::Joined { configuration, .. } => {
                for m in configuration.members {
                    member_roles.insert(m.role.to_string());
                    preferences.insert(m.preference.to_string());
                }
            }
            SyncMessage::ChangeMembership { change, .. } => match change {
                MembershipChange::Add { member } => {
                    membership_changes.insert("Add");
                    member_roles.insert(member.role.to_string());
                    preferences.insert(member.preference.to_string());
                }
                MembershipChange::Remove { .. } => {
                    membership_changes.insert("Remove");
                }
                MembershipChange::SetPreference { preference, .. } => {
                    membership_changes.insert("SetPreference");
                    preferences.insert(preference.to_string());
                }
            },
            _ => {}
        }
    }
    assert_eq!(roles.len(), 3);
    assert_eq!(codes.len(), 6);
    assert_eq!(changes.len(), 6, "{changes:?}");
    assert_eq!(member_roles.len(), 2);
    assert_eq!(preferences.len(), 3);
    assert_eq!(membership_changes.len(), 3);
    assert_eq!(set.len(), 9, "{set:?}");
}

#[test]
fn every_sample_round_trips() {
    for msg in samples() {
        let frame = encode_frame(&msg, DEFAULT_MAX_FRAME).unwrap();
        assert_eq!(u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize, frame.len() - 4);
        assert_eq!(decode_body(&frame[4..]).unwrap(), msg);
        assert_eq!(read(&frame, DEFAULT_MAX_FRAME).unwrap(), msg);
    }
}

proptest! {
    #[test]
    fn every_message_round_trips_through_a_frame(msg in message()) {
        let frame = encode_frame(&msg, DEFAULT_MAX_FRAME).unwrap();
        prop_assert_eq!(u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize, frame.len() - 4);
        prop_assert_eq!(&decode_body(&frame[4..]).unwrap(), &msg);

        let mut cursor = Cursor::new(&frame[..]);
        prop_assert_eq!(&block_on(read_frame(&mut cursor, DEFAULT_MAX_FRAME)).unwrap(), &msg);
        prop_assert_eq!(cursor.position() as usize, frame.len());

        let mut written = Cursor::new(Vec::new());
        block_on(write_frame(&mut written, &msg, DEFAULT_MAX_FRAME)).unwrap();
        prop_assert_eq!(written.into_inner(), frame);
    }

    #[test]
    fn every_message_round_trips_through_the_libp2p_codec(req in message(), res in message()) {
        let mut codec = SyncCodec::default();
        block_on(async {
            let mut stream = Cursor::new(Vec::new());
            codec.write_request(&PROTOCOL, &mut stream, req.clone()).await.unwrap();
            assert_eq!(stream.get_ref(), &encode_frame(&req, DEFAULT_MAX_FRAME).unwrap());
            stream.set_position(0);
            assert_eq!(codec.read_request(&PROTOCOL, &mut stream).await.unwrap(), req);

            let mut stream = Cursor::new(Vec::new());
            codec.write_response(&PROTOCOL, &mut stream, res.clone()).await.unwrap();
            assert_eq!(stream.get_ref(), &encode_frame(&res, DEFAULT_MAX_FRAME).unwrap());
            stream.set_position(0);
            assert_eq!(codec.read_response(&PROTOCOL, &mut stream).await.unwrap(), res);
        });
    }

    /// Frames back to back on one stream: reading one consumes exactly its bytes.
    #[test]
    fn consecutive_frames_are_read_one_at_a_time(msgs in vec(message_with(3, 64), 1..5)) {
        let mut stream = Cursor::new(Vec::new());
        let mut codec = SyncCodec::default();
        block_on(async {
            for msg in &msgs {
                codec.write_request(&PROTOCOL, &mut stream, msg.clone()).await.unwrap();
            }
            stream.set_position(0);
            for msg in &msgs {
                assert_eq!(&codec.read_request(&PROTOCOL, &mut stream).await.unwrap(), msg);
            }
            // Then the stream is exhausted: a clean EOF error, not a hang or a panic.
            let end = codec.read_request(&PROTOCOL, &mut stream).await;
            assert_eq!(end.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
        });
    }

    /// A configuration entry's `data` (named MessagePack of a configuration) decodes back to the
    /// same configuration, whatever its members; so do the nested types in messages.
    #[test]
    fn every_configuration_round_trips_as_entry_data(config in configuration()) {
        let data = config.encode();
        prop_assert_eq!(rmp_serde::from_slice::<Configuration>(&data).unwrap(), config);
    }

    /// A stream delivering one byte at a time, with `Pending` in between, reads the same.
    #[test]
    fn a_trickling_stream_reads_the_same(msg in message_with(3, 64)) {
        let frame = encode_frame(&msg, DEFAULT_MAX_FRAME).unwrap();
        let mut slow = Trickle { inner: Cursor::new(frame), pending: false };
        prop_assert_eq!(block_on(read_frame(&mut slow, DEFAULT_MAX_FRAME)).unwrap(), msg);
    }
}

// ---------------------------------------------------------------------------------------------
// Truncation.
// ---------------------------------------------------------------------------------------------

fn assert_every_prefix_fails(msg: &SyncMessage) {
    let frame = encode_frame(msg, DEFAULT_MAX_FRAME).unwrap();
    let mut codec = SyncCodec::default();
    for cut in 0..frame.len() {
        let prefix = &frame[..cut];
        assert_kind(read(prefix, DEFAULT_MAX_FRAME), io::ErrorKind::UnexpectedEof);
        let via_codec = block_on(codec.read_response(&PROTOCOL, &mut Cursor::new(prefix)));
        assert_kind(via_codec, io::ErrorKind::UnexpectedEof);
        // A frame whose prefix is consistent but whose body is cut short is malformed.
        if cut > 4 {
            assert_kind(
                read(&frame_of(&frame[4..cut]), DEFAULT_MAX_FRAME),
                io::ErrorKind::InvalidData,
            );
        }
    }
}

#[test]
fn every_prefix_of_every_sample_fails_cleanly() {
    for msg in samples() {
        if let SyncMessage::EntriesResponse { entries, .. } = &msg {
            if entries.iter().any(|e| e.data.len() > 1000) {
                continue; // covered below at a lower cost
            }
        }
        assert_every_prefix_fails(&msg);
    }
}

#[test]
fn a_large_frame_cut_anywhere_fails_cleanly() {
    let msg = SyncMessage::EntriesResponse {
        commit_sequence: 0,
        library_id: LIB,
        term: 1,
        entries: vec![entry(1, ChangeType::Bulk, vec![0xab; 70_000])],
        has_more: false,
        leader_last_sequence: 1,
    };
    let frame = encode_frame(&msg, DEFAULT_MAX_FRAME).unwrap();
    for cut in (0..frame.len()).step_by(997).chain(frame.len() - 8..frame.len()) {
        assert_kind(read(&frame[..cut], DEFAULT_MAX_FRAME), io::ErrorKind::UnexpectedEof);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn every_prefix_of_any_frame_fails_cleanly(msg in message_with(3, 48)) {
        assert_every_prefix_fails(&msg);
    }
}

// ---------------------------------------------------------------------------------------------
// Limits.
// ---------------------------------------------------------------------------------------------

#[test]
fn the_default_limit_is_16_mib_and_a_limit_never_exceeds_the_prefix_range() {
    assert_eq!(DEFAULT_MAX_FRAME, 16 * 1024 * 1024);
    assert_eq!(SyncCodec::default().max_frame(), DEFAULT_MAX_FRAME);
    assert_eq!(SyncCodec::new(1234).max_frame(), 1234);
    assert_eq!(SyncCodec::new(usize::MAX).max_frame(), u32::MAX as usize);
}

/// The body of `msg` (a response or push carrying `entries`) in bytes.
fn body_len(msg: &SyncMessage) -> usize {
    encode_frame(msg, usize::MAX).unwrap().len() - 4
}

/// An `EntriesResponse` and a `NewEntries` carrying `entries`, every other field at its
/// largest (a hash, `u64::MAX` sequences, [`MAX_TERM`] terms).
fn carriers(entries: Vec<SyncLogEntry>) -> [SyncMessage; 2] {
    let big = Uuid::from_u128(u128::MAX);
    [
        SyncMessage::EntriesResponse {
            library_id: big,
            term: MAX_TERM,
            entries: entries.clone(),
            has_more: true,
            leader_last_sequence: u64::MAX,
            commit_sequence: u64::MAX,
        },
        SyncMessage::NewEntries {
            library_id: big,
            term: MAX_TERM,
            from_sequence: u64::MAX,
            to_sequence: u64::MAX,
            entry_count: u64::MAX,
            prev_term: MAX_TERM,
            entries,
            commit_sequence: u64::MAX,
            prev_hash: Some(ChainHash([0xff; 32])),
        },
    ]
}

/// The largest entry with `len` bytes of model type, record id and data, and `stamp`.
fn largest_with(len: usize, stamp: Option<lsync_protocol::EntryStamp>) -> SyncLogEntry {
    SyncLogEntry {
        sequence: u64::MAX,
        term: MAX_TERM,
        origin_device: Uuid::from_u128(u128::MAX),
        timestamp_ms: i64::MIN,
        model_type: "m".repeat(len),
        record_id: "r".repeat(len),
        change_type: ChangeType::Config,
        version: i64::MIN,
        data: vec![0xff; len],
        proposal_id: Some(Uuid::from_u128(u128::MAX)),
        hash: Some(ChainHash([0xff; 32])),
        stamp,
    }
}

/// The bound the leader builds frames with (docs/protocol.md "Framing"): a response or push is
/// at most `ENVELOPE_BYTES` plus its entries' `entry_bytes`, here at the largest fields and
/// the longest MessagePack headers (strings and data over 65,535 bytes, more than 65,535
/// entries), where the margin is smallest.
#[test]
fn a_response_is_never_larger_than_its_envelope_and_counted_entries() {
    let largest = |len: usize| largest_with(len, None);
    let stamp = |fields: Vec<String>| {
        let hlc = lsync_protocol::Hlc {
            physical_ms: u64::MAX,
            counter: u32::MAX,
            device: Uuid::from_u128(u128::MAX),
        };
        Some(lsync_protocol::EntryStamp { hlc, fields })
    };
    for len in [0, 31, 32, 255, 256, 65_535, 65_536, 70_000] {
        // a stamp without fields counts in ENTRY_OVERHEAD; each field counts its bytes and 8
        for fields in [vec![], vec!["f".repeat(len)], vec!["a".into(); 40]] {
            let e = largest_with(len, stamp(fields.clone()));
            let [response, push] = carriers(vec![e.clone()]);
            let [empty_response, empty_push] = carriers(Vec::new());
            for (one, empty) in [(response, empty_response), (push, empty_push)] {
                if fields.is_empty() {
                    let overhead = body_len(&one) - body_len(&empty) - 3 * len;
                    assert!(overhead <= ENTRY_OVERHEAD, "{len}: {overhead} > {ENTRY_OVERHEAD}");
                }
                assert!(body_len(&one) <= ENVELOPE_BYTES + entry_bytes(&e), "{len} {fields:?}");
            }
        }
    }
    for len in [0, 31, 32, 255, 256, 65_535, 65_536, 70_000] {
        let e = largest(len);
        let [response, push] = carriers(vec![e.clone()]);
        let [empty_response, empty_push] = carriers(Vec::new());
        for (one, empty) in [(response, empty_response), (push, empty_push)] {
            let overhead = body_len(&one) - body_len(&empty) - 3 * len;
            assert!(overhead <= ENTRY_OVERHEAD, "{len}: {overhead} > {ENTRY_OVERHEAD}");
            assert!(body_len(&one) <= ENVELOPE_BYTES + entry_bytes(&e), "{len}");
        }
    }
    // more than 65,535 entries: the longest array header
    let many = vec![largest(0); 65_536];
    let counted: usize = many.iter().map(entry_bytes).sum();
    for msg in carriers(many) {
        assert!(body_len(&msg) <= ENVELOPE_BYTES + counted);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// The same bound for arbitrary entries (any strings, data, change types, configuration
    /// entries).
    #[test]
    fn any_response_fits_its_envelope_and_counted_entries(entries in vec(any_entry(512), 0..12)) {
        let counted: usize = entries.iter().map(entry_bytes).sum();
        for msg in carriers(entries) {
            prop_assert!(body_len(&msg) <= ENVELOPE_BYTES + counted);
        }
    }
}

#[test]
fn a_body_of_exactly_the_limit_passes_and_one_byte_more_does_not() {
    let msg = SyncMessage::error(LIB, ErrorCode::Internal, "x".repeat(500));
    let frame = encode_frame(&msg, DEFAULT_MAX_FRAME).unwrap();
    let body_len = frame.len() - 4;

    assert_eq!(encode_frame(&msg, body_len).unwrap(), frame);
    assert_eq!(read(&frame, body_len).unwrap(), msg);

    assert_kind(encode_frame(&msg, body_len - 1), io::ErrorKind::InvalidData);
    let e = assert_kind(read(&frame, body_len - 1), io::ErrorKind::InvalidData);
    assert!(e.to_string().contains("exceeds the limit"), "{e}");
}

#[test]
fn an_oversized_length_prefix_is_refused_before_reading_the_body() {
    let max = 64;
    let mut frame = ((max + 1) as u32).to_be_bytes().to_vec();
    frame.extend(std::iter::repeat_n(0xc0, max + 1));
    let mut cursor = Cursor::new(&frame[..]);
    let mut codec = SyncCodec::new(max);
    assert_kind(block_on(codec.read_request(&PROTOCOL, &mut cursor)), io::ErrorKind::InvalidData);
    assert_eq!(cursor.position(), 4, "nothing after the prefix may be read");

    let mut cursor = Cursor::new(&frame[..]);
    assert_kind(block_on(codec.read_response(&PROTOCOL, &mut cursor)), io::ErrorKind::InvalidData);
    assert_eq!(cursor.position(), 4);
}

#[test]
fn a_4_gib_length_prefix_is_refused_with_invalid_data() {
    // (That nothing large is allocated meanwhile is proven in tests/alloc.rs.)
    let frame = [0xff, 0xff, 0xff, 0xff, 0x81, 0xa5, b'E', b'r', b'r'];
    let e = assert_kind(read(&frame, DEFAULT_MAX_FRAME), io::ErrorKind::InvalidData);
    assert!(e.to_string().contains("4294967295"), "{e}");
    let mut codec = SyncCodec::default();
    let via_codec = block_on(codec.read_request(&PROTOCOL, &mut Cursor::new(&frame[..])));
    assert_kind(via_codec, io::ErrorKind::InvalidData);
}

#[test]
fn a_message_larger_than_the_limit_is_not_written_at_all() {
    let big = SyncMessage::EntriesResponse {
        commit_sequence: 0,
        library_id: LIB,
        term: 1,
        entries: vec![entry(1, ChangeType::Insert, vec![1; 4096])],
        has_more: false,
        leader_last_sequence: 1,
    };
    let mut codec = SyncCodec::new(1024);
    block_on(async {
        let mut stream = Cursor::new(Vec::new());
        let e = codec.write_request(&PROTOCOL, &mut stream, big.clone()).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(stream.get_ref().is_empty(), "a refused message must write nothing");

        let e = codec.write_response(&PROTOCOL, &mut stream, big.clone()).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(stream.get_ref().is_empty());

        let e = write_frame(&mut stream, &big, 1024).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(stream.get_ref().is_empty());
    });
}

#[test]
fn the_default_codec_refuses_a_message_over_16_mib_both_ways() {
    let huge = SyncMessage::EntriesResponse {
        commit_sequence: 0,
        library_id: LIB,
        term: 1,
        entries: vec![entry(1, ChangeType::Bulk, vec![0; DEFAULT_MAX_FRAME])],
        has_more: false,
        leader_last_sequence: 1,
    };
    let mut codec = SyncCodec::default();
    let mut stream = Cursor::new(Vec::new());
    let e = block_on(codec.write_response(&PROTOCOL, &mut stream, huge.clone())).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    assert!(stream.get_ref().is_empty());

    // The same frame produced by a peer with a larger limit is refused by the reader.
    let frame = encode_frame(&huge, usize::MAX).unwrap();
    assert!(frame.len() - 4 > DEFAULT_MAX_FRAME);
    let e = block_on(codec.read_response(&PROTOCOL, &mut Cursor::new(&frame[..]))).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidData);
}

// ---------------------------------------------------------------------------------------------
// Garbage and unknown input.
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// Arbitrary bytes after a valid length: decoded or refused as InvalidData, never a panic.
    #[test]
    fn garbage_bodies_fail_or_decode_but_never_panic(body in vec(any::<u8>(), 0..512)) {
        match read(&frame_of(&body), DEFAULT_MAX_FRAME) {
            Ok(msg) => {
                // Whatever was accepted is a real message that encodes again.
                encode_frame(&msg, DEFAULT_MAX_FRAME).unwrap();
            }
            Err(e) => prop_assert_eq!(e.kind(), io::ErrorKind::InvalidData),
        }
    }

    /// Arbitrary bytes as the whole stream, prefix included.
    #[test]
    fn garbage_streams_never_panic(stream in vec(any::<u8>(), 0..64)) {
        if let Err(e) = read(&stream, 1024) {
            prop_assert!(
                matches!(e.kind(), io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof),
                "{e}"
            );
        }
    }

    /// A valid frame with a few bytes of its body overwritten: nearly valid input reaches
    /// deep into the decoder.
    #[test]
    fn corrupted_frames_fail_or_decode_but_never_panic(
        msg in message_with(3, 32),
        edits in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let frame = encode_frame(&msg, DEFAULT_MAX_FRAME).unwrap();
        let mut body = frame[4..].to_vec();
        for (at, byte) in edits {
            let i = at.index(body.len());
            body[i] = byte;
        }
        if let Err(e) = read(&frame_of(&body), DEFAULT_MAX_FRAME) {
            prop_assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        }
    }
}

#[test]
fn an_unknown_variant_is_invalid_data() {
    // {"Vota": {"library_id": bin(16 zero bytes), "term": 7}}, built by hand.
    let mut body = vec![0x81, 0xa4];
    body.extend_from_slice(b"Vota");
    body.extend_from_slice(&[0x82, 0xaa]);
    body.extend_from_slice(b"library_id");
    body.extend_from_slice(&[0xc4, 0x10]);
    body.extend_from_slice(&[0; 16]);
    body.push(0xa4);
    body.extend_from_slice(b"term");
    body.push(0x07);
    let e = assert_kind(read(&frame_of(&body), DEFAULT_MAX_FRAME), io::ErrorKind::InvalidData);
    assert!(e.to_string().contains("unknown variant"), "{e}");

    let mut codec = SyncCodec::default();
    let via_codec = block_on(codec.read_request(&PROTOCOL, &mut Cursor::new(frame_of(&body))));
    assert_kind(via_codec, io::ErrorKind::InvalidData);
}

/// Replaces the first occurrence of `from` in `bytes` by `to` (same length: the MessagePack
/// str header stays valid).
fn patched(bytes: &[u8], from: &str, to: &str) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let at = bytes.windows(from.len()).position(|w| w == from.as_bytes()).expect("present");
    let mut out = bytes.to_vec();
    out[at..at + to.len()].copy_from_slice(to.as_bytes());
    out
}

fn body_of(msg: &SyncMessage) -> Vec<u8> {
    encode_frame(msg, DEFAULT_MAX_FRAME).unwrap()[4..].to_vec()
}

#[test]
fn names_are_case_sensitive_and_unknown_enum_values_are_invalid_data() {
    let heartbeat = body_of(&SyncMessage::Heartbeat {
        commit_sequence: 0,
        features: 0,
        library_id: LIB,
        term: 1,
        current_sequence: 1,
        last_term: 1,
        role: SyncRole::Leader,
        last_hash: None,
    });
    let error = body_of(&SyncMessage::error(LIB, ErrorCode::Internal, "e"));
    let joined = body_of(&SyncMessage::Joined {
        library_id: LIB,
        term: 8,
        leader: None,
        configuration: sample_configuration(),
        config_sequence: 14,
        committed: false,
    });
    let change = |change| {
        body_of(&SyncMessage::ChangeMembership {
            library_id: LIB,
            term: 8,
            request_id: Uuid::from_u128(13),
            change,
        })
    };
    let remove = change(MembershipChange::Remove { device_id: Uuid::from_u128(12) });
    let prefer = change(MembershipChange::SetPreference {
        device_id: Uuid::from_u128(12),
        preference: RolePreference::Auto,
    });
    let announce = body_of(&SyncMessage::AnnounceAddresses { library_id: LIB, hints: vec![] });
    let cases = [
        // Message variants (new ones included).
        patched(&heartbeat, "Heartbeat", "heartbeat"),
        patched(&joined, "Joined", "joined"),
        patched(&remove, "ChangeMembership", "changeMembership"),
        patched(&announce, "AnnounceAddresses", "AnnounceAddressez"),
        // SyncRole, ErrorCode.
        patched(&heartbeat, "Leader", "leader"),
        patched(&heartbeat, "Leader", "Master"),
        patched(&error, "Internal", "Teapot!!"),
        // MemberRole (the sample's first "Voter" and "Learner" are roles).
        patched(&joined, "Voter", "voter"),
        patched(&joined, "Voter", "Boss!"),
        patched(&joined, "Learner", "Student"),
        // RolePreference, inside a member and inside a change.
        patched(&joined, "Auto", "auto"),
        patched(&prefer, "Auto", "Both"),
        // MembershipChange variants.
        patched(&remove, "Remove", "remove"),
        patched(&remove, "Remove", "Delete"),
        patched(&prefer, "SetPreference", "SetPreferenze"),
    ];
    for (i, body) in cases.into_iter().enumerate() {
        let e = assert_kind(decode_body(&body), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("unknown variant"), "case {i}: {e}");
    }
}

/// A message whose second entry (or change) is of `change_type`; the first is an Update.
fn with_change_type(change_type: ChangeType) -> [SyncMessage; 2] {
    [
        SyncMessage::EntriesResponse {
            library_id: LIB,
            term: 3,
            entries: vec![
                entry(1, ChangeType::Update, vec![0x80]),
                entry(2, change_type, vec![1, 2]),
            ],
            has_more: true,
            leader_last_sequence: 9,
            commit_sequence: 2,
        },
        SyncMessage::Propose {
            library_id: LIB,
            term: 3,
            proposal_id: Uuid::from_u128(11),
            origin_device: Uuid::from_u128(4),
            changes: vec![
                ProposedChange {
                    model_type: "tag".into(),
                    record_id: "t1".into(),
                    change_type: ChangeType::Update,
                    data: vec![0x80],
                    base_version: None,
                    hlc: None,
                },
                ProposedChange {
                    model_type: "tag".into(),
                    record_id: "t2".into(),
                    change_type,
                    data: vec![1, 2],
                    base_version: None,
                    hlc: None,
                },
            ],
        },
    ]
}

/// A change type this build does not know (a newer peer's, or a misspelt one) is not a
/// malformed frame: the entry or change decodes as `ChangeType::Unknown` and the rest of the
/// message is intact (docs/protocol.md §3 and §11).
#[test]
fn an_unknown_change_type_decodes_as_unknown_in_entries_and_in_proposals() {
    let expected = with_change_type(ChangeType::Unknown);
    for (msg, expected) in with_change_type(ChangeType::Insert).iter().zip(&expected) {
        for name in ["Upsert", "insert", "INSERT"] {
            let body = patched(&body_of(msg), "Insert", name);
            assert_eq!(&decode_body(&body).unwrap(), expected, "{name}");
        }
    }
}

/// The same, from a sender that writes change type names of any length.
#[test]
fn a_newer_peers_change_types_decode_as_unknown() {
    #[derive(serde::Serialize)]
    struct NewerEntry {
        sequence: u64,
        term: u64,
        origin_device: Uuid,
        timestamp_ms: i64,
        model_type: &'static str,
        record_id: String,
        change_type: &'static str,
        version: i64,
        data: serde_bytes::ByteBuf,
        proposal_id: Option<Uuid>,
    }
    #[derive(serde::Serialize)]
    struct NewerChange {
        model_type: &'static str,
        record_id: &'static str,
        change_type: &'static str,
        data: serde_bytes::ByteBuf,
    }
    #[derive(serde::Serialize)]
    enum Newer {
        EntriesResponse {
            library_id: Uuid,
            term: u64,
            entries: Vec<NewerEntry>,
            has_more: bool,
            leader_last_sequence: u64,
            commit_sequence: u64,
        },
        Propose {
            library_id: Uuid,
            term: u64,
            proposal_id: Uuid,
            origin_device: Uuid,
            changes: Vec<NewerChange>,
        },
    }
    let newer_entry = |sequence: u64, change_type, data: Vec<u8>| {
        let e = entry(sequence, ChangeType::Insert, vec![]);
        NewerEntry {
            sequence,
            term: e.term,
            origin_device: e.origin_device,
            timestamp_ms: e.timestamp_ms,
            model_type: "tag",
            record_id: e.record_id,
            change_type,
            version: e.version,
            data: serde_bytes::ByteBuf::from(data),
            proposal_id: None,
        }
    };
    let newer_change = |record_id, change_type, data: Vec<u8>| NewerChange {
        model_type: "tag",
        record_id,
        change_type,
        data: serde_bytes::ByteBuf::from(data),
    };
    let expected = with_change_type(ChangeType::Unknown);
    for name in ["Compact", "", "Unknown", "a change type of a much later version ✓"] {
        let newer = [
            Newer::EntriesResponse {
                library_id: LIB,
                term: 3,
                entries: vec![
                    newer_entry(1, "Update", vec![0x80]),
                    newer_entry(2, name, vec![1, 2]),
                ],
                has_more: true,
                leader_last_sequence: 9,
                commit_sequence: 2,
            },
            Newer::Propose {
                library_id: LIB,
                term: 3,
                proposal_id: Uuid::from_u128(11),
                origin_device: Uuid::from_u128(4),
                changes: vec![
                    newer_change("t1", "Update", vec![0x80]),
                    newer_change("t2", name, vec![1, 2]),
                ],
            },
        ];
        for (newer, expected) in newer.iter().zip(&expected) {
            let body = rmp_serde::to_vec_named(newer).unwrap();
            assert_eq!(&decode_body(&body).unwrap(), expected, "{name:?}");
        }
    }
}

#[test]
fn a_missing_field_is_invalid_data_but_a_missing_leader_hint_is_none() {
    // {"Acknowledge": {"library_id": bin16}}: up_to_sequence missing.
    let mut body = vec![0x81, 0xab];
    body.extend_from_slice(b"Acknowledge");
    body.extend_from_slice(&[0x81, 0xaa]);
    body.extend_from_slice(b"library_id");
    body.extend_from_slice(&[0xc4, 0x10]);
    body.extend_from_slice(LIB.as_bytes());
    let e = assert_kind(decode_body(&body), io::ErrorKind::InvalidData);
    assert!(e.to_string().contains("up_to_sequence"), "{e}");

    // {"Error": {"library_id": bin16, "code": "NotLeader", "message": "m"}}: no leader_hint.
    let mut body = vec![0x81, 0xa5];
    body.extend_from_slice(b"Error");
    body.extend_from_slice(&[0x83, 0xaa]);
    body.extend_from_slice(b"library_id");
    body.extend_from_slice(&[0xc4, 0x10]);
    body.extend_from_slice(LIB.as_bytes());
    body.push(0xa4);
    body.extend_from_slice(b"code");
    body.push(0xa9);
    body.extend_from_slice(b"NotLeader");
    body.push(0xa7);
    body.extend_from_slice(b"message");
    body.extend_from_slice(&[0xa1, b'm']);
    assert_eq!(decode_body(&body).unwrap(), SyncMessage::error(LIB, ErrorCode::NotLeader, "m"));
}

#[test]
fn unknown_fields_are_ignored() {
    // {"Acknowledge": {"library_id": bin16, "up_to_sequence": 5, "zz_future": [1, "x"]}}
    let mut body = vec![0x81, 0xab];
    body.extend_from_slice(b"Acknowledge");
    body.extend_from_slice(&[0x83, 0xaa]);
    body.extend_from_slice(b"library_id");
    body.extend_from_slice(&[0xc4, 0x10]);
    body.extend_from_slice(LIB.as_bytes());
    body.push(0xae);
    body.extend_from_slice(b"up_to_sequence");
    body.push(0x05);
    body.push(0xa9);
    body.extend_from_slice(b"zz_future");
    body.extend_from_slice(&[0x92, 0x01, 0xa1, b'x']);
    assert_eq!(
        decode_body(&body).unwrap(),
        SyncMessage::Acknowledge {
            last_term: 0,
            term: 0,
            library_id: LIB,
            up_to_sequence: 5,
            last_hash: None
        }
    );
}

#[test]
fn bytes_after_the_message_inside_a_frame_are_invalid_data() {
    for msg in samples() {
        let body = body_of(&msg);
        for tail in [&[0xc0][..], &[0x00], &[0xc1], &[0xc4], &[0xdd, 0xff, 0xff, 0xff, 0xff]] {
            let mut with_tail = body.clone();
            with_tail.extend_from_slice(tail);
            let e = assert_kind(decode_body(&with_tail), io::ErrorKind::InvalidData);
            assert!(e.to_string().contains("trailing bytes"), "{e}");
            assert_kind(read(&frame_of(&with_tail), DEFAULT_MAX_FRAME), io::ErrorKind::InvalidData);
        }
    }
}

proptest! {
    /// Whatever follows a complete message inside its frame makes the frame malformed.
    #[test]
    fn any_bytes_after_a_message_are_invalid_data(
        msg in message_with(3, 32),
        tail in vec(any::<u8>(), 1..16),
    ) {
        let mut body = body_of(&msg);
        body.extend_from_slice(&tail);
        let e = decode_body(&body).unwrap_err();
        prop_assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }
}

#[test]
fn an_empty_body_is_invalid_data() {
    assert_kind(read(&[0, 0, 0, 0], DEFAULT_MAX_FRAME), io::ErrorKind::InvalidData);
}

// ---------------------------------------------------------------------------------------------
// The wire format itself.
// ---------------------------------------------------------------------------------------------

#[test]
fn fields_are_named_on_the_wire() {
    let body = body_of(&SyncMessage::FetchEntries {
        library_id: LIB,
        term: 2,
        since_sequence: 10,
        since_term: 1,
        limit: 100,
        since_hash: None,
    });
    for name in ["FetchEntries", "library_id", "term", "since_sequence", "since_term", "limit"] {
        let needle = name.as_bytes();
        assert!(body.windows(needle.len()).any(|w| w == needle), "{name} missing: {}", hex(&body));
    }
    // {variant: {5 fields}}: a fixmap of one entry whose value is a fixmap of five.
    assert_eq!(body[0], 0x81);
    assert_eq!(body[1 + 1 + "FetchEntries".len()], 0x85);
}

const PROTOCOL_MD: &str = include_str!("../../docs/protocol.md");

/// The `text` block that follows `marker` in docs/protocol.md, as items: each line with a `#`
/// comment, together with the uncommented lines after it (a long value continues on them), as
/// (bytes, comment).
fn documented_items(marker: &str) -> Vec<(Vec<u8>, String)> {
    let mut items: Vec<(Vec<u8>, String)> = Vec::new();
    let block = PROTOCOL_MD
        .split(marker)
        .nth(1)
        .unwrap_or_else(|| panic!("docs/protocol.md has no {marker}"))
        .lines()
        .skip_while(|l| !l.starts_with("```"))
        .skip(1)
        .take_while(|l| !l.starts_with("```"));
    for line in block {
        let (hex_bytes, comment) = line.split_once('#').unwrap_or((line, ""));
        let bytes: Vec<u8> = hex_bytes
            .split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).unwrap_or_else(|_| panic!("{marker}: {b:?}")))
            .collect();
        match items.last_mut() {
            Some((continued, _)) if comment.trim().is_empty() => continued.extend(bytes),
            _ => items.push((bytes, comment.trim().to_owned())),
        }
    }
    items
}

/// The bytes of the `text` block that follows `marker` in docs/protocol.md.
fn documented_frame(marker: &str) -> Vec<u8> {
    documented_items(marker).into_iter().flat_map(|(bytes, _)| bytes).collect()
}

/// The number right after `prefix` in `text`, if `text` starts with `prefix`.
fn number_after(text: &str, prefix: &str) -> Option<u64> {
    let rest = text.strip_prefix(prefix)?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Checks that the example after `marker` says what its bytes are, count by count: the text
/// before the block gives the total (`… N bytes`), and each item's comment names its exact
/// MessagePack form — `length prefix: body of N bytes`, `map of N`, `array of N`,
/// `str(N) "text"`, `bin(N)`, `uint 8/16/32/64: V`, `fixint V`, `true`, `false`, `nil` —
/// which must be its bytes.
fn check_documented_counts(marker: &str) {
    let items = documented_items(marker);
    let total: usize = items.iter().map(|(bytes, _)| bytes.len()).sum();
    let before = PROTOCOL_MD.split(marker).next().unwrap();
    let intro = before.rsplit("\n#").next().unwrap();
    assert!(
        intro.contains(&format!(" {total} bytes")),
        "{marker}: the text before the example must say {total} bytes:\n{intro}"
    );
    for (bytes, comment) in &items {
        let what = format!("{marker}: `{}  # {comment}`", hex(bytes));
        let text = comment.split_once('"').map(|(_, t)| t.rsplit_once('"').expect(&what).0);
        let expected: Vec<u8> = if let Some(n) = number_after(comment, "length prefix: body of ") {
            assert!(comment.ends_with(&format!("body of {n} bytes")), "{what}");
            assert_eq!(n as usize, total - 4, "{what}");
            (n as u32).to_be_bytes().to_vec()
        } else if let Some(n) = number_after(comment, "map of ") {
            assert!(n < 16, "{what}");
            vec![0x80 | n as u8]
        } else if let Some(n) = number_after(comment, "array of ") {
            assert!(n < 16, "{what}");
            vec![0x90 | n as u8]
        } else if let Some(n) = number_after(comment, "str(") {
            let text = text.unwrap_or_else(|| panic!("{what}: quote the text"));
            assert_eq!(text.len() as u64, n, "{what}");
            let header = if n < 32 { vec![0xa0 | n as u8] } else { vec![0xd9, n as u8] };
            [header, text.as_bytes().to_vec()].concat()
        } else if let Some(n) = number_after(comment, "bin(") {
            assert!(n < 256 && bytes.len() as u64 == n + 2, "{what}");
            [vec![0xc4, n as u8], bytes[2..].to_vec()].concat()
        } else if let Some(v) = number_after(comment, "uint 8: ") {
            vec![0xcc, u8::try_from(v).expect(&what)]
        } else if let Some(v) = number_after(comment, "uint 16: ") {
            [vec![0xcd], u16::try_from(v).expect(&what).to_be_bytes().to_vec()].concat()
        } else if let Some(v) = number_after(comment, "uint 32: ") {
            [vec![0xce], u32::try_from(v).expect(&what).to_be_bytes().to_vec()].concat()
        } else if let Some(v) = number_after(comment, "uint 64: ") {
            [vec![0xcf], v.to_be_bytes().to_vec()].concat()
        } else if let Some(v) = number_after(comment, "fixint ") {
            assert!(v < 128, "{what}");
            vec![v as u8]
        } else if comment.starts_with("true") {
            vec![0xc3]
        } else if comment.starts_with("false") {
            vec![0xc2]
        } else if comment.starts_with("nil") {
            vec![0xc0]
        } else {
            panic!("{what}: the comment must name the form of the bytes");
        };
        assert_eq!(hex(bytes), hex(&expected), "{what}");
    }
}

/// The frame examples in docs/protocol.md, byte for byte and count for count.
#[test]
fn the_documented_examples_are_what_the_encoder_produces() {
    let ack = SyncMessage::Acknowledge {
        library_id: LIB,
        up_to_sequence: 42,
        term: 3,
        last_term: 2,
        last_hash: None,
    };
    let frame = encode_frame(&ack, DEFAULT_MAX_FRAME).unwrap();
    let expected = "\
        00 00 00 4c \
        81 \
        ab 41 63 6b 6e 6f 77 6c 65 64 67 65 \
        84 \
        aa 6c 69 62 72 61 72 79 5f 69 64 \
        c4 10 67 e5 50 44 10 b1 42 6f 92 47 bb 68 0e 5f e0 c8 \
        ae 75 70 5f 74 6f 5f 73 65 71 75 65 6e 63 65 \
        2a \
        a4 74 65 72 6d \
        03 \
        a9 6c 61 73 74 5f 74 65 72 6d \
        02";
    assert_eq!(hex(&frame), expected);
    assert_eq!(frame.len(), 80);
    assert_eq!(hex(&documented_frame("<!-- example-frame -->")), expected);
    assert_eq!(read(&documented_frame("<!-- example-frame -->"), 1024).unwrap(), ack);
    check_documented_counts("<!-- example-frame -->");

    let heartbeat = SyncMessage::Heartbeat {
        library_id: LIB,
        term: 3,
        current_sequence: 1000,
        last_term: 3,
        role: SyncRole::Leader,
        commit_sequence: 998,
        features: FEATURE_VERSION,
        last_hash: None,
    };
    let frame = encode_frame(&heartbeat, DEFAULT_MAX_FRAME).unwrap();
    assert_eq!(hex(&documented_frame("<!-- example-frame-2 -->")), hex(&frame));
    assert_eq!(read(&documented_frame("<!-- example-frame-2 -->"), 1024).unwrap(), heartbeat);
    check_documented_counts("<!-- example-frame-2 -->");
}

/// The device of the documented configuration and address hint examples.
const EXAMPLE_DEVICE: Uuid = Uuid::from_u128(0x0192_f3a0_7c1e_7a4b_8d2e_5f60_7182_93a4);

/// The Ed25519 key of the examples: the secret key (seed) is 32 bytes of 0x01.
fn example_key() -> libp2p::identity::Keypair {
    libp2p::identity::Keypair::ed25519_from_bytes([1u8; 32]).unwrap()
}

const EXAMPLE_PEER: &str = "12D3KooWK99VoVxNE7XzyBwXEzW7xhK7Gpv85r9F3V3fyKSUKPH5";

/// The documented `data` of a configuration entry, byte for byte and count for count.
#[test]
fn the_documented_configuration_is_what_the_encoder_produces() {
    assert_eq!(example_key().public().to_peer_id().to_string(), EXAMPLE_PEER);
    assert!(PROTOCOL_MD.contains(EXAMPLE_PEER));
    let config = Configuration::new(
        FEATURE_VERSION,
        vec![Member {
            device_id: EXAMPLE_DEVICE,
            peer_id: EXAMPLE_PEER.into(),
            addresses: vec!["/ip4/192.168.1.20/tcp/7700".into()],
            name: "laptop".into(),
            role: MemberRole::Voter,
            preference: RolePreference::Auto,
        }],
    );
    let documented = documented_frame("<!-- example-configuration -->");
    assert_eq!(hex(&documented), hex(&config.encode()));
    assert_eq!(Configuration::decode(&documented).unwrap(), config);
    check_documented_counts("<!-- example-configuration -->");
}

/// `AddressHint::signed_bytes` for a fixed input is exactly the documented bytes, and the
/// documented signature is the example key's Ed25519 signature of them.
#[test]
fn the_documented_address_hint_bytes_and_signature_are_what_the_encoder_produces() {
    let addresses = vec!["/ip4/192.168.1.20/tcp/7700".to_string(), "/ip6/::1/tcp/7700".to_string()];
    let counter = 1_700_000_000_000;
    let signed = AddressHint::signed_bytes(EXAMPLE_DEVICE, counter, &addresses);
    let documented = documented_frame("<!-- example-hint-signed-bytes -->");
    assert_eq!(hex(&documented), hex(&signed));
    check_documented_counts("<!-- example-hint-signed-bytes -->");

    let hint = AddressHint::sign(&example_key(), EXAMPLE_DEVICE, counter, addresses);
    let signature = documented_frame("<!-- example-hint-signature -->");
    check_documented_counts("<!-- example-hint-signature -->");
    assert_eq!(signature[..2], [0xc4, 64], "a bin of 64 bytes");
    assert_eq!(hex(&signature[2..]), hex(&hint.signature), "Ed25519 signatures are deterministic");
    assert!(hint.verify(&EXAMPLE_PEER.parse().unwrap()));
    let key = example_key().public();
    assert!(key.verify(&documented, &signature[2..]));
}

/// The limits of §8 are the crate's constants.
#[test]
fn the_documented_limits_are_the_constants() {
    use lsync_protocol::membership::{MAX_ADDRESSES, MAX_MEMBERS, MAX_TEXT};
    for row in [
        format!("| members per configuration | {MAX_MEMBERS} |"),
        format!("| addresses per member or hint | {MAX_ADDRESSES} |"),
        format!("| name, peer id or address | {MAX_TEXT} bytes |"),
        format!("| library feature version of this build | {FEATURE_VERSION} |"),
    ] {
        assert!(PROTOCOL_MD.contains(&row), "docs/protocol.md lacks the row {row}");
    }
    assert!(PROTOCOL_MD.contains(&format!("`{CONFIG_MODEL_TYPE}`")));
    assert!(PROTOCOL_MD.contains(&format!("`{CONFIG_RECORD_ID}`")));
    assert!(PROTOCOL_MD.contains(&format!("`{}`", lsync_protocol::RESERVED_MODEL_PREFIX)));
    assert!(PROTOCOL_MD.contains(PROTOCOL.as_ref()));
    assert!(PROTOCOL_MD.contains(lsync_protocol::PROTOCOL_V1.as_ref()));
}

#[test]
fn unit_enums_are_their_variant_names_and_uuids_are_bin_16() {
    let body = body_of(&SyncMessage::Heartbeat {
        commit_sequence: 0,
        features: 0,
        library_id: LIB,
        term: 1,
        current_sequence: 1,
        last_term: 1,
        role: SyncRole::Candidate,
        last_hash: None,
    });
    let role = [&[0xa9][..], b"Candidate"].concat();
    assert!(body.windows(role.len()).any(|w| w == role));
    let uuid = [&[0xc4, 0x10][..], LIB.as_bytes()].concat();
    assert!(body.windows(uuid.len()).any(|w| w == uuid));

    // `leader_hint: None` is nil (then `term`, and `leader_peer`, the last field, nil too).
    let hint = body_of(&SyncMessage::error(LIB, ErrorCode::StaleTerm, ""));
    let none = [
        &[0xab][..],
        b"leader_hint",
        &[0xc0, 0xa4],
        b"term",
        &[0x00, 0xab],
        b"leader_peer",
        &[0xc0],
    ]
    .concat();
    assert!(hint.ends_with(&none), "leader_hint None is nil: {}", hex(&hint));
}

#[test]
fn entry_data_is_a_messagepack_bin() {
    let body = body_of(&SyncMessage::EntriesResponse {
        commit_sequence: 0,
        library_id: LIB,
        term: 1,
        entries: vec![entry(1, ChangeType::Insert, vec![1, 2, 3])],
        has_more: false,
        leader_last_sequence: 1,
    });
    let data = [&[0xa4][..], b"data", &[0xc4, 0x03, 1, 2, 3]].concat();
    assert!(body.windows(data.len()).any(|w| w == data), "{}", hex(&body));
}

/// A `NewEntries` from a peer that does not know `prev_term` and `entries` (they were added
/// later) decodes with both defaulted: a plain notification.
#[test]
fn new_entries_without_the_inline_fields_decodes_with_defaults() {
    #[derive(serde::Serialize)]
    enum Older {
        NewEntries {
            library_id: Uuid,
            term: u64,
            from_sequence: u64,
            to_sequence: u64,
            entry_count: u64,
        },
    }
    let body = rmp_serde::to_vec_named(&Older::NewEntries {
        library_id: LIB,
        term: 3,
        from_sequence: 5,
        to_sequence: 6,
        entry_count: 2,
    })
    .unwrap();
    let decoded = decode_body(&body).unwrap();
    assert_eq!(
        decoded,
        SyncMessage::NewEntries {
            commit_sequence: 0,
            library_id: LIB,
            term: 3,
            from_sequence: 5,
            to_sequence: 6,
            entry_count: 2,
            prev_term: 0,
            entries: vec![],
            prev_hash: None,
        }
    );
}

/// A version 1 peer's messages: the version 1 field sets, none of the fields added in version 2.
#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
enum V1 {
    NewEntries {
        library_id: Uuid,
        term: u64,
        from_sequence: u64,
        to_sequence: u64,
        entry_count: u64,
        prev_term: u64,
        entries: Vec<SyncLogEntry>,
    },
    EntriesResponse {
        library_id: Uuid,
        term: u64,
        entries: Vec<SyncLogEntry>,
        has_more: bool,
        leader_last_sequence: u64,
    },
    Acknowledge {
        library_id: Uuid,
        up_to_sequence: u64,
    },
    Heartbeat {
        library_id: Uuid,
        term: u64,
        current_sequence: u64,
        last_term: u64,
        role: SyncRole,
    },
    RequestVote {
        library_id: Uuid,
        term: u64,
        candidate: Uuid,
        last_log_term: u64,
        last_log_sequence: u64,
        transfer: bool,
    },
    Vote {
        library_id: Uuid,
        term: u64,
        voter: Uuid,
        granted: bool,
    },
    Error {
        library_id: Uuid,
        code: ErrorCode,
        message: String,
        leader_hint: Option<Uuid>,
    },
}

/// Pairs of a version 1 message and what it decodes to here: every version 2 field at its
/// documented default (docs/protocol.md §4).
fn v1_messages() -> Vec<(V1, SyncMessage)> {
    let entries =
        vec![entry(5, ChangeType::Insert, vec![0x80]), entry(6, ChangeType::Bulk, vec![])];
    vec![
        (
            V1::NewEntries {
                library_id: LIB,
                term: 3,
                from_sequence: 5,
                to_sequence: 6,
                entry_count: 2,
                prev_term: 1,
                entries: entries.clone(),
            },
            SyncMessage::NewEntries {
                library_id: LIB,
                term: 3,
                from_sequence: 5,
                to_sequence: 6,
                entry_count: 2,
                prev_term: 1,
                entries: entries.clone(),
                commit_sequence: 0,
                prev_hash: None,
            },
        ),
        (
            V1::EntriesResponse {
                library_id: LIB,
                term: 3,
                entries: entries.clone(),
                has_more: false,
                leader_last_sequence: 6,
            },
            SyncMessage::EntriesResponse {
                library_id: LIB,
                term: 3,
                entries,
                has_more: false,
                leader_last_sequence: 6,
                commit_sequence: 0,
            },
        ),
        (
            V1::Acknowledge { library_id: LIB, up_to_sequence: 6 },
            SyncMessage::Acknowledge {
                library_id: LIB,
                up_to_sequence: 6,
                term: 0,
                last_term: 0,
                last_hash: None,
            },
        ),
        (
            V1::Heartbeat {
                library_id: LIB,
                term: 3,
                current_sequence: 6,
                last_term: 1,
                role: SyncRole::Follower,
            },
            SyncMessage::Heartbeat {
                library_id: LIB,
                term: 3,
                current_sequence: 6,
                last_term: 1,
                role: SyncRole::Follower,
                commit_sequence: 0,
                features: 0,
                last_hash: None,
            },
        ),
        (
            V1::RequestVote {
                library_id: LIB,
                term: 4,
                candidate: Uuid::from_u128(3),
                last_log_term: 3,
                last_log_sequence: 6,
                transfer: true,
            },
            SyncMessage::RequestVote {
                library_id: LIB,
                term: 4,
                candidate: Uuid::from_u128(3),
                last_log_term: 3,
                last_log_sequence: 6,
                transfer: true,
                pre_vote: false,
            },
        ),
        (
            V1::Vote { library_id: LIB, term: 4, voter: Uuid::from_u128(4), granted: true },
            SyncMessage::Vote {
                library_id: LIB,
                term: 4,
                voter: Uuid::from_u128(4),
                granted: true,
                pre_vote: false,
            },
        ),
        (
            V1::Error {
                library_id: LIB,
                code: ErrorCode::StaleTerm,
                message: "term 2 < 3".into(),
                leader_hint: Some(Uuid::from_u128(9)),
            },
            SyncMessage::Error {
                leader_peer: None,
                library_id: LIB,
                code: ErrorCode::StaleTerm,
                message: "term 2 < 3".into(),
                leader_hint: Some(Uuid::from_u128(9)),
                term: 0,
            },
        ),
    ]
}

/// A frame written by a version 1 sender decodes with the documented defaults of the version 2
/// fields; an acknowledgement or error from it carries no term.
#[test]
fn a_version_1_senders_frames_decode_with_the_documented_defaults() {
    for (old, expected) in v1_messages() {
        let body = rmp_serde::to_vec_named(&old).unwrap();
        let decoded = decode_body(&body).unwrap();
        assert_eq!(decoded, expected, "{old:?}");
        if matches!(old, V1::Acknowledge { .. } | V1::Error { .. }) {
            assert_eq!(decoded.term(), None, "{old:?}");
        }
        let mut codec = SyncCodec::default();
        let via_codec = block_on(
            codec.read_request(&lsync_protocol::PROTOCOL_V1, &mut Cursor::new(frame_of(&body))),
        );
        assert_eq!(via_codec.unwrap(), expected);
    }
}

/// The other way round: a version 1 peer, which ignores fields it does not know, reads this
/// build's encoding of the messages it knows (so one encoder serves both protocol ids).
#[test]
fn a_version_1_peer_reads_this_builds_frames_of_the_messages_it_knows() {
    for (old, new) in v1_messages() {
        let body = body_of(&new);
        let read_by_v1: V1 = rmp_serde::from_slice(&body).unwrap();
        assert_eq!(read_by_v1, old);
    }
}

/// The version 2 fields that may be absent (docs/protocol.md §3) besides those a version 1
/// peer omits: `Joined.leader` is nil and `Member.preference` is `Auto`.
#[test]
fn an_absent_leader_is_nil_and_an_absent_preference_is_auto() {
    #[derive(serde::Serialize)]
    struct BareMember {
        device_id: Uuid,
        peer_id: &'static str,
        addresses: Vec<String>,
        name: &'static str,
        role: MemberRole,
    }
    #[derive(serde::Serialize)]
    struct BareConfiguration {
        feature_version: u32,
        members: Vec<BareMember>,
    }
    #[derive(serde::Serialize)]
    enum Bare {
        Joined {
            library_id: Uuid,
            term: u64,
            configuration: BareConfiguration,
            config_sequence: u64,
            committed: bool,
        },
    }
    let body = rmp_serde::to_vec_named(&Bare::Joined {
        library_id: LIB,
        term: 8,
        configuration: BareConfiguration {
            feature_version: 2,
            members: vec![BareMember {
                device_id: EXAMPLE_DEVICE,
                peer_id: EXAMPLE_PEER,
                addresses: vec![],
                name: "laptop",
                role: MemberRole::Voter,
            }],
        },
        config_sequence: 3,
        committed: true,
    })
    .unwrap();
    let expected = SyncMessage::Joined {
        library_id: LIB,
        term: 8,
        leader: None,
        configuration: Configuration {
            feature_version: 2,
            members: vec![Member {
                device_id: EXAMPLE_DEVICE,
                peer_id: EXAMPLE_PEER.into(),
                addresses: vec![],
                name: "laptop".into(),
                role: MemberRole::Voter,
                preference: RolePreference::Auto,
            }],
        },
        config_sequence: 3,
        committed: true,
    };
    assert_eq!(decode_body(&body).unwrap(), expected);
}

/// A hash field is written only when known: without one a message is byte for byte what a
/// version 2 peer sends; with one it is a `bin 32` under its name, and decodes back
/// (docs/protocol.md §3, "Hash").
#[test]
fn hash_fields_are_omitted_when_unknown_and_bin_32_when_known() {
    let ack = |last_hash| SyncMessage::Acknowledge {
        library_id: LIB,
        up_to_sequence: 7,
        term: 2,
        last_term: 2,
        last_hash,
    };
    let without = body_of(&ack(None));
    assert!(!without.windows(9).any(|w| w == b"last_hash"), "{}", hex(&without));
    #[derive(serde::Serialize)]
    struct Version2Ack {
        library_id: Uuid,
        up_to_sequence: u64,
        term: u64,
        last_term: u64,
    }
    #[derive(serde::Serialize)]
    enum Version2 {
        Acknowledge(Version2Ack),
    }
    let v2 = rmp_serde::to_vec_named(&Version2::Acknowledge(Version2Ack {
        library_id: LIB,
        up_to_sequence: 7,
        term: 2,
        last_term: 2,
    }))
    .unwrap();
    assert_eq!(hex(&without), hex(&v2));
    let hash = ChainHash([0x5a; 32]);
    let with = body_of(&ack(Some(hash)));
    let mut needle = b"\xa9last_hash\xc4\x20".to_vec();
    needle.extend([0x5a; 32]);
    assert!(with.windows(needle.len()).any(|w| w == needle), "{}", hex(&with));
    assert_eq!(decode_body(&with).unwrap(), ack(Some(hash)));
    assert_eq!(decode_body(&v2).unwrap(), ack(None));
}

// ---------------------------------------------------------------------------------------------
// Terms out of range (docs/protocol.md §6): refused when decoded, never handed on.
// ---------------------------------------------------------------------------------------------

/// The terms a hostile member could send: one past the highest, the largest SQLite integer and
/// the largest u64.
const OUT_OF_RANGE: [u64; 3] = [MAX_TERM + 1, i64::MAX as u64, u64::MAX];

#[test]
fn a_request_with_a_term_beyond_the_store_is_refused_as_malformed() {
    for term in OUT_OF_RANGE {
        let heartbeat = SyncMessage::Heartbeat {
            library_id: LIB,
            term,
            current_sequence: 1,
            last_term: 1,
            role: SyncRole::Leader,
            commit_sequence: 0,
            features: FEATURE_VERSION,
            last_hash: None,
        };
        let vote = SyncMessage::RequestVote {
            library_id: LIB,
            term,
            candidate: Uuid::from_u128(2),
            last_log_term: 1,
            last_log_sequence: 1,
            transfer: false,
            pre_vote: false,
        };
        for msg in [heartbeat, vote] {
            // The sender's side does not check (a peer may run anything): the frame goes out.
            let frame = encode_frame(&msg, DEFAULT_MAX_FRAME).unwrap();
            let e = assert_kind(read(&frame, DEFAULT_MAX_FRAME), io::ErrorKind::InvalidData);
            assert!(e.to_string().contains("above the highest term"), "{term}: {e}");
            let e = assert_kind(decode_body(&frame[4..]), io::ErrorKind::InvalidData);
            assert!(e.to_string().contains(&term.to_string()), "{e}");
        }
    }
}

#[test]
fn a_response_with_a_term_beyond_the_store_fails_the_request() {
    for term in OUT_OF_RANGE {
        let vote = SyncMessage::Vote {
            library_id: LIB,
            term,
            voter: Uuid::from_u128(3),
            granted: false,
            pre_vote: false,
        };
        let frame = encode_frame(&vote, DEFAULT_MAX_FRAME).unwrap();
        let mut codec = SyncCodec::default();
        let result = block_on(codec.read_response(&PROTOCOL, &mut Cursor::new(frame)));
        assert_kind(result, io::ErrorKind::InvalidData);
    }
}

#[test]
fn a_term_out_of_range_in_any_term_field_is_refused() {
    let entry = SyncLogEntry { term: u64::MAX, ..entry(1, ChangeType::Insert, vec![]) };
    let hostile = [
        SyncMessage::NewEntries {
            commit_sequence: 0,
            library_id: LIB,
            term: 2,
            from_sequence: 1,
            to_sequence: 1,
            entry_count: 1,
            prev_term: u64::MAX,
            entries: vec![],
            prev_hash: None,
        },
        SyncMessage::NewEntries {
            commit_sequence: 0,
            library_id: LIB,
            term: 2,
            from_sequence: 1,
            to_sequence: 1,
            entry_count: 1,
            prev_term: 0,
            entries: vec![entry],
            prev_hash: None,
        },
        SyncMessage::FetchEntries {
            library_id: LIB,
            term: 2,
            since_sequence: 1,
            since_term: i64::MAX as u64,
            limit: 1,
            since_hash: None,
        },
        SyncMessage::Acknowledge {
            library_id: LIB,
            up_to_sequence: 1,
            term: 2,
            last_term: MAX_TERM + 1,
            last_hash: None,
        },
        SyncMessage::RequestVote {
            library_id: LIB,
            term: 2,
            candidate: Uuid::from_u128(2),
            last_log_term: u64::MAX,
            last_log_sequence: 1,
            transfer: false,
            pre_vote: true,
        },
        SyncMessage::Error {
            library_id: LIB,
            code: ErrorCode::StaleTerm,
            message: String::new(),
            leader_hint: None,
            term: u64::MAX,
            leader_peer: None,
        },
    ];
    for msg in hostile {
        let frame = encode_frame(&msg, DEFAULT_MAX_FRAME).unwrap();
        assert_kind(read(&frame, DEFAULT_MAX_FRAME), io::ErrorKind::InvalidData);
    }
}
