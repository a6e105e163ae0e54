use lsync_protocol::*;

use uuid::Uuid;
fn main() {
    let lib = Uuid::new_v4();
    let e = SyncLogEntry{sequence:1,term:1,origin_device:lib,timestamp_ms:-1,model_type:"tag".into(),record_id:"record-123456".into(),change_type:ChangeType::Update,version:2,data:vec![7;200]};
    let m = SyncMessage::EntriesResponse { library_id: lib, term: 1, has_more: false, leader_last_sequence: 1, entries: vec![e; 100]};
    let body = rmp_serde::to_vec_named(&m).unwrap();
    let n = 2000;
    let t = std::time::Instant::now();
    for _ in 0..n { let x: SyncMessage = rmp_serde::from_slice(&body).unwrap(); std::hint::black_box(x); }
    println!("from_slice {:?}/frame", t.elapsed()/n);
    let t = std::time::Instant::now();
    for _ in 0..n { let x = codec::decode_body(&body).unwrap(); std::hint::black_box(x); }
    println!("reader {:?}/frame", t.elapsed()/n);
}
