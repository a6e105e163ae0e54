use lsync_protocol::{codec::encode_frame, *};
use uuid::Uuid;
fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(" ")
}
fn main() {
    let lib = Uuid::parse_str("67e55044-10b1-426f-9247-bb680e5fe0c8").unwrap();
    let msgs = vec![
        SyncMessage::Acknowledge { library_id: lib, up_to_sequence: 42 },
        SyncMessage::Heartbeat {
            library_id: lib,
            term: 3,
            current_sequence: 1000,
            last_term: 3,
            role: SyncRole::Leader,
        },
        SyncMessage::error(lib, ErrorCode::NotLeader, "x"),
        SyncMessage::Error {
            library_id: lib,
            code: ErrorCode::NotLeader,
            message: "x".into(),
            leader_hint: Some(lib),
        },
        SyncMessage::EntriesResponse {
            library_id: lib,
            term: 1,
            has_more: false,
            leader_last_sequence: 1,
            entries: vec![SyncLogEntry {
                sequence: 1,
                term: 1,
                origin_device: lib,
                timestamp_ms: -1,
                model_type: "tag".into(),
                record_id: "r".into(),
                change_type: ChangeType::Delete,
                version: 2,
                data: vec![1, 2],
            }],
        },
    ];
    for m in msgs {
        println!("{}\n{}\n", m.kind(), hex(&encode_frame(&m, 1 << 20).unwrap()));
    }
    // lenient decoding checks
    let ack =
        encode_frame(&SyncMessage::Acknowledge { library_id: lib, up_to_sequence: 42 }, 1 << 20)
            .unwrap();
    let mut body = ack[4..].to_vec();
    body.push(0xc0);
    println!("trailing: {:?}", codec::decode_body(&body));
    for tail in [&[0xc0][..], &[0x00], &[0xc1], &[0xc4], &[0xdd, 0xff, 0xff, 0xff, 0xff]] {
        let mut b = ack[4..].to_vec();
        b.extend_from_slice(tail);
        let mut de = rmp_serde::Deserializer::from_read_ref(&b);
        let _m = <SyncMessage as serde::Deserialize>::deserialize(&mut de).unwrap();
        println!(
            "{tail:?}: {:?}",
            <serde::de::IgnoredAny as serde::Deserialize>::deserialize(&mut de)
        );
    }
    // positional form
    let pos = rmp_serde::to_vec(&SyncMessage::Acknowledge { library_id: lib, up_to_sequence: 42 })
        .unwrap();
    println!("positional {} -> {:?}", hex(&pos), codec::decode_body(&pos));
}
#[allow(dead_code)]
fn tails() {}
