//! The helpers of the message types: text forms, names, accessors.

use lsync_protocol::{ChangeType, ErrorCode, SyncMessage, SyncRole, PROTOCOL};
use uuid::Uuid;

const CHANGE_TYPES: [ChangeType; 4] =
    [ChangeType::Insert, ChangeType::Update, ChangeType::Delete, ChangeType::Bulk];

#[test]
fn change_type_text_round_trips() {
    for ct in CHANGE_TYPES {
        assert_eq!(ChangeType::parse(ct.as_str()), Some(ct));
    }
    let texts: Vec<&str> = CHANGE_TYPES.iter().map(|ct| ct.as_str()).collect();
    assert_eq!(texts, ["insert", "update", "delete", "bulk"]);
}

#[test]
fn change_type_parse_refuses_anything_else() {
    for text in ["", "Insert", "INSERT", " insert", "insert ", "upsert", "remove", "bulk\0"] {
        assert_eq!(ChangeType::parse(text), None, "{text:?}");
    }
}

#[test]
fn roles_and_codes_display_as_documented() {
    let roles: Vec<String> =
        [SyncRole::Leader, SyncRole::Follower, SyncRole::Candidate].map(|r| r.to_string()).into();
    assert_eq!(roles, ["leader", "follower", "candidate"]);
    assert_eq!(ErrorCode::NotLeader.to_string(), "NotLeader");
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
            term: 0,
            library_id: lib,
            code: ErrorCode::BadRequest,
            message: "limit must be at least 1".into(),
            leader_hint: None,
        }
    );
    let ack =
        SyncMessage::Acknowledge { last_term: 0, term: 0, library_id: lib, up_to_sequence: 1 };
    assert_eq!((ack.library_id(), ack.kind()), (lib, "Acknowledge"));
}

#[test]
fn the_protocol_id_is_the_seed_cards_alpn() {
    assert_eq!(PROTOCOL.as_ref(), "/spacedrive/sync/1.0.0");
}
