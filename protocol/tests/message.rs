//! The helpers of the message types: text forms, names, accessors, protocol ids.

use lsync_protocol::{
    ChangeType, ErrorCode, MemberRole, MembershipChange, RolePreference, SyncMessage, SyncRole,
    PROTOCOL, PROTOCOL_V1,
};
use uuid::Uuid;

/// The change types with a text form (`Patch` is never a log entry, but has one).
const CHANGE_TYPES: [ChangeType; 6] = [
    ChangeType::Insert,
    ChangeType::Update,
    ChangeType::Delete,
    ChangeType::Bulk,
    ChangeType::Patch,
    ChangeType::Config,
];

#[test]
fn change_type_text_round_trips() {
    for ct in CHANGE_TYPES {
        assert_eq!(ChangeType::parse(ct.as_str()), Some(ct));
    }
    let texts: Vec<&str> = CHANGE_TYPES.iter().map(|ct| ct.as_str()).collect();
    assert_eq!(texts, ["insert", "update", "delete", "bulk", "patch", "config"]);
}

#[test]
fn change_type_parse_refuses_anything_else() {
    for text in
        ["", "Insert", "INSERT", " insert", "insert ", "upsert", "remove", "bulk\0", "Config"]
    {
        assert_eq!(ChangeType::parse(text), None, "{text:?}");
    }
}

/// `Unknown` names an entry this build cannot apply; it is never stored, so its text form does
/// not parse back (a stored "unknown" would be a corrupt row, not an entry to skip).
#[test]
fn the_unknown_change_type_is_never_parsed() {
    assert_eq!(ChangeType::Unknown.as_str(), "unknown");
    assert_eq!(ChangeType::parse("unknown"), None);
}

#[test]
fn roles_and_codes_display_as_documented() {
    let roles: Vec<String> =
        [SyncRole::Leader, SyncRole::Follower, SyncRole::Candidate].map(|r| r.to_string()).into();
    assert_eq!(roles, ["leader", "follower", "candidate"]);
    assert_eq!(ErrorCode::NotLeader.to_string(), "NotLeader");
    let member_roles: Vec<String> =
        [MemberRole::Voter, MemberRole::Learner].map(|r| r.to_string()).into();
    assert_eq!(member_roles, ["voter", "learner"]);
    let preferences: Vec<String> =
        [RolePreference::Auto, RolePreference::Learner, RolePreference::Voter]
            .map(|p| p.to_string())
            .into();
    assert_eq!(preferences, ["auto", "learner", "voter"]);
    assert_eq!(RolePreference::default(), RolePreference::Auto);
}

#[test]
fn every_message_names_its_library_and_kind() {
    let lib = Uuid::from_u128(5);
    let msg = SyncMessage::error(lib, ErrorCode::BadRequest, "limit must be at least 1");
    assert_eq!(msg.library_id(), lib);
    assert_eq!(msg.kind(), "Error");
    assert_eq!(
        msg,
        SyncMessage::Error {
            leader_peer: None,
            term: 0,
            library_id: lib,
            code: ErrorCode::BadRequest,
            message: "limit must be at least 1".into(),
            leader_hint: None,
        }
    );
    let ack = SyncMessage::Acknowledge {
        last_term: 0,
        term: 0,
        library_id: lib,
        up_to_sequence: 1,
        last_hash: None,
    };
    assert_eq!((ack.library_id(), ack.kind()), (lib, "Acknowledge"));
}

/// One message of each variant new in version 2, all with term 7 where they carry one.
fn version_2_messages(lib: Uuid) -> Vec<SyncMessage> {
    vec![
        SyncMessage::Join {
            library_id: lib,
            secret: vec![1; 32],
            device_id: Uuid::from_u128(2),
            name: "phone".into(),
            addresses: vec![],
        },
        SyncMessage::Joined {
            library_id: lib,
            term: 7,
            leader: None,
            configuration: lsync_protocol::Configuration { feature_version: 2, members: vec![] },
            config_sequence: 3,
            committed: false,
        },
        SyncMessage::ChangeMembership {
            library_id: lib,
            term: 7,
            request_id: Uuid::from_u128(3),
            change: MembershipChange::Remove { device_id: Uuid::from_u128(2) },
        },
        SyncMessage::MembershipResult {
            library_id: lib,
            term: 7,
            request_id: Uuid::from_u128(3),
            config_sequence: 4,
            committed: true,
        },
        SyncMessage::AnnounceAddresses { library_id: lib, hints: vec![] },
    ]
}

#[test]
fn the_version_2_messages_name_their_library_kind_and_direction() {
    let lib = Uuid::from_u128(5);
    let described: Vec<(Uuid, &str, bool, Option<u64>)> = version_2_messages(lib)
        .iter()
        .map(|m| (m.library_id(), m.kind(), m.is_response_only(), m.term()))
        .collect();
    assert_eq!(
        described,
        [
            (lib, "Join", false, None),
            (lib, "Joined", true, Some(7)),
            (lib, "ChangeMembership", false, Some(7)),
            (lib, "MembershipResult", true, Some(7)),
            (lib, "AnnounceAddresses", false, None),
        ]
    );
}

/// An acknowledgement or an error carries a term only when it is not 0 (a version 1 peer's,
/// or one that knows no term, carries none).
#[test]
fn acknowledgements_and_errors_carry_a_term_only_when_set() {
    let lib = Uuid::from_u128(5);
    let ack = |term| SyncMessage::Acknowledge {
        library_id: lib,
        up_to_sequence: 1,
        term,
        last_term: 1,
        last_hash: None,
    };
    assert_eq!(ack(0).term(), None);
    assert_eq!(ack(4).term(), Some(4));
    let error = |term| SyncMessage::Error {
        leader_peer: None,
        library_id: lib,
        code: ErrorCode::StaleTerm,
        message: String::new(),
        leader_hint: None,
        term,
    };
    assert_eq!(error(0).term(), None);
    assert_eq!(error(9).term(), Some(9));
    assert_eq!(SyncMessage::error(lib, ErrorCode::Internal, "").term(), None);
    let heartbeat = SyncMessage::Heartbeat {
        library_id: lib,
        term: 0,
        current_sequence: 0,
        last_term: 0,
        role: SyncRole::Follower,
        commit_sequence: 0,
        features: 0,
        last_hash: None,
    };
    assert_eq!(heartbeat.term(), Some(0), "a term of 0 is a term where it is mandatory");
}

#[test]
fn the_protocol_ids_are_version_2_and_the_seed_cards_alpn() {
    assert_eq!(PROTOCOL.as_ref(), "/spacedrive/sync/2.0.0");
    assert_eq!(PROTOCOL_V1.as_ref(), "/spacedrive/sync/1.0.0");
}
