//! The canonical encoding and the chain against the test vector of docs/protocol.md ("The hash
//! chain"), and the hash's wire form.

use uuid::Uuid;

use super::*;

const PROTOCOL_MD: &str = include_str!("../../../docs/protocol.md");

/// The two entries of the documented test vector.
fn vector() -> [SyncLogEntry; 2] {
    let origin = Uuid::from_u128(0x0011_2233_4455_6677_8899_aabb_ccdd_eeff);
    [
        SyncLogEntry {
            sequence: 1,
            term: 1,
            origin_device: origin,
            timestamp_ms: 1_700_000_000_000,
            model_type: "tag".into(),
            record_id: "t1".into(),
            change_type: ChangeType::Insert,
            version: 1,
            data: vec![0x81, 0xa1, 0x61, 0x01],
            proposal_id: None,
            hash: None,
            stamp: None,
        },
        SyncLogEntry {
            sequence: 2,
            term: 3,
            origin_device: origin,
            timestamp_ms: -5,
            model_type: "tag".into(),
            record_id: "t1".into(),
            change_type: ChangeType::Delete,
            version: 2,
            data: Vec::new(),
            proposal_id: Some(Uuid::from_u128(0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10)),
            hash: None,
            stamp: None,
        },
    ]
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The documented block of one entry: each field of its canonical encoding on a line, then its
/// hash.
fn documented_block(n: u64, e: &SyncLogEntry, hash: &ChainHash) -> String {
    let var = |b: &[u8]| {
        let len = hex(&(b.len() as u64).to_be_bytes());
        if b.is_empty() {
            len
        } else {
            format!("{len} {}", hex(b))
        }
    };
    let proposal = match e.proposal_id {
        None => "00".to_owned(),
        Some(id) => format!("01 {}", hex(id.as_bytes())),
    };
    let lines = [
        format!("sequence      {}", hex(&e.sequence.to_be_bytes())),
        format!("term          {}", hex(&e.term.to_be_bytes())),
        format!("origin_device {}", hex(e.origin_device.as_bytes())),
        format!("timestamp_ms  {}", hex(&e.timestamp_ms.to_be_bytes())),
        format!("model_type    {}", var(e.model_type.as_bytes())),
        format!("record_id     {}", var(e.record_id.as_bytes())),
        format!("change_type   {}", var(change_type_name(e.change_type).as_bytes())),
        format!("version       {}", hex(&e.version.to_be_bytes())),
        format!("data          {}", var(&e.data)),
        format!("proposal_id   {proposal}"),
        format!("hash_{n}        {hash}"),
    ];
    lines.join("\n")
}

#[test]
fn the_documented_test_vector_is_what_the_code_computes() {
    let mut prev = ChainHash::GENESIS;
    for (n, e) in (1..).zip(vector().iter()) {
        let hash = chain_hash(&prev, e);
        let block = documented_block(n, e, &hash);
        assert!(PROTOCOL_MD.contains(&block), "docs/protocol.md lacks:\n{block}");
        prev = hash;
    }
}

#[test]
fn the_canonical_encoding_is_the_fields_in_order() {
    let [first, second] = vector();
    let documented = documented_block(1, &first, &ChainHash::GENESIS);
    let from_doc: String = documented
        .lines()
        .filter(|l| !l.starts_with("hash_"))
        .flat_map(|l| l.split_whitespace().skip(1))
        .collect();
    assert_eq!(from_doc, hex(&canonical_encoding(&first)));
    // 8 + 8 + 16 + 8 + (8 + 3) + (8 + 2) + (8 + 6) + 8 + (8 + 4) + 1
    assert_eq!(canonical_encoding(&first).len(), 96);
    // With a proposal id: its marker and 16 bytes.
    assert_eq!(canonical_encoding(&second).last_chunk::<17>().unwrap()[0], 1);
}

#[test]
fn the_hash_is_sha256_of_the_previous_link_and_the_encoding() {
    let [first, _] = vector();
    let prev = ChainHash([7; 32]);
    let mut input = prev.0.to_vec();
    input.extend(canonical_encoding(&first));
    assert_eq!(chain_hash(&prev, &first).0, <[u8; 32]>::from(Sha256::digest(&input)));
}

#[test]
fn every_field_and_the_previous_link_change_the_hash() {
    let [base, _] = vector();
    let h = |e: &SyncLogEntry| chain_hash(&ChainHash::GENESIS, e);
    let variants: Vec<SyncLogEntry> = vec![
        SyncLogEntry { sequence: 9, ..base.clone() },
        SyncLogEntry { term: 9, ..base.clone() },
        SyncLogEntry { origin_device: Uuid::nil(), ..base.clone() },
        SyncLogEntry { timestamp_ms: 9, ..base.clone() },
        SyncLogEntry { model_type: "location".into(), ..base.clone() },
        SyncLogEntry { record_id: "t2".into(), ..base.clone() },
        SyncLogEntry { change_type: ChangeType::Update, ..base.clone() },
        SyncLogEntry { version: 9, ..base.clone() },
        SyncLogEntry { data: vec![0x80], ..base.clone() },
        SyncLogEntry { proposal_id: Some(Uuid::nil()), ..base.clone() },
        // The length prefixes keep field boundaries: moving a byte from one string to the next
        // is another entry.
        SyncLogEntry { model_type: "ta".into(), record_id: "gt1".into(), ..base.clone() },
    ];
    for variant in &variants {
        assert_ne!(h(variant), h(&base), "{variant:?}");
    }
    assert_ne!(chain_hash(&ChainHash([1; 32]), &base), h(&base));
    // The entry's own hash field is not part of it.
    let carried = SyncLogEntry { hash: Some(ChainHash([5; 32])), ..base.clone() };
    assert_eq!(h(&carried), h(&base));
}

#[test]
fn a_hash_is_a_bin_of_32_bytes_on_the_wire() {
    let hash = ChainHash([0xab; 32]);
    let bytes = rmp_serde::to_vec(&hash).unwrap();
    assert_eq!(&bytes[..2], &[0xc4, 32]);
    assert_eq!(&bytes[2..], &[0xab; 32]);
    assert_eq!(rmp_serde::from_slice::<ChainHash>(&bytes).unwrap(), hash);
    let short = rmp_serde::to_vec(&serde_bytes::Bytes::new(&[1; 31])).unwrap();
    assert!(rmp_serde::from_slice::<ChainHash>(&short).is_err());
    assert!(rmp_serde::from_slice::<ChainHash>(&rmp_serde::to_vec("x").unwrap()).is_err());
}

#[test]
fn hex_text_round_trips() {
    let hash = chain_hash(&ChainHash::GENESIS, &vector()[0]);
    let text = hash.to_string();
    assert_eq!(text.len(), 64);
    assert_eq!(ChainHash::from_hex(&text), Some(hash));
    assert_eq!(ChainHash::from_hex(&text.to_uppercase()), Some(hash));
    assert_eq!(ChainHash::from_hex(&text[1..]), None);
    assert_eq!(ChainHash::from_hex(&format!("g{}", &text[1..])), None);
    assert_eq!(hash.short(), text[..16]);
    assert_eq!(ChainHash::GENESIS.to_string(), "0".repeat(64));
}

/// Prints the documented blocks (run with `--ignored --nocapture` after changing the vector).
#[test]
#[ignore]
fn print_the_vector() {
    let mut prev = ChainHash::GENESIS;
    for (n, e) in (1..).zip(vector().iter()) {
        prev = chain_hash(&prev, e);
        println!("{}\n", documented_block(n, e, &prev));
    }
}

/// A stamp extends the canonical encoding after the proposal id exactly as docs/protocol.md
/// says ("The hash chain", the `stamp` row), so it changes the hash; an entry without one hashes
/// as before stamps existed.
#[test]
fn a_stamp_is_appended_to_the_canonical_encoding_and_changes_the_hash() {
    let [plain, _] = vector();
    let hlc = crate::Hlc { physical_ms: 5, counter: 7, device: Uuid::from_u128(9) };
    let stamped = SyncLogEntry {
        stamp: Some(crate::EntryStamp { hlc, fields: vec!["name".into()] }),
        ..plain.clone()
    };
    let mut expected = canonical_encoding(&plain);
    expected.push(1);
    expected.extend_from_slice(&5u64.to_be_bytes());
    expected.extend_from_slice(&7u32.to_be_bytes());
    expected.extend_from_slice(Uuid::from_u128(9).as_bytes());
    expected.extend_from_slice(&1u64.to_be_bytes());
    expected.extend_from_slice(&4u64.to_be_bytes());
    expected.extend_from_slice(b"name");
    assert_eq!(canonical_encoding(&stamped), expected);
    assert_ne!(chain_hash(&ChainHash::GENESIS, &stamped), chain_hash(&ChainHash::GENESIS, &plain));
    let no_fields = SyncLogEntry {
        stamp: Some(crate::EntryStamp { hlc, fields: Vec::new() }),
        ..plain.clone()
    };
    assert_ne!(
        chain_hash(&ChainHash::GENESIS, &no_fields),
        chain_hash(&ChainHash::GENESIS, &stamped)
    );
}
