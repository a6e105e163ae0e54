//! The hash chain of the sync log (docs/protocol.md, "The hash chain").
//!
//! Every entry of a library's log has a [`ChainHash`]: `hash_n = SHA-256(hash_{n-1} ||
//! canonical(entry_n))`, with `hash_0` = [`ChainHash::GENESIS`] (32 zero bytes). The hash of an
//! entry therefore stands for the entry *and the whole log before it*: two logs with the same
//! hash at a sequence hold the same entries up to there, whatever their terms say.
//!
//! This module owns the canonical encoding ([`canonical_encoding`], [`chain_hash`]) and the
//! hash type's wire form (MessagePack `bin` of exactly 32 bytes). Nothing here does I/O.

use serde::de::{self, Deserialize, Deserializer, Visitor};
use serde::{Serialize, Serializer};
use sha2::{Digest, Sha256};

use crate::message::{ChangeType, SyncLogEntry};

/// A link of the log's hash chain: the SHA-256 of the previous link and an entry's canonical
/// encoding. On the wire a MessagePack `bin` of exactly 32 bytes; shown as 64 lower-case hex
/// digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ChainHash(pub [u8; 32]);

impl ChainHash {
    /// The hash "before the first entry" (`hash_0`): 32 zero bytes. It is the same for every
    /// library: a log's hashes depend on its entries alone, so any device (or a second
    /// implementation, or `lsync verify`) computes them from the entries, and the log of each
    /// library starts with a configuration entry naming its own members anyway.
    pub const GENESIS: ChainHash = ChainHash([0; 32]);

    /// The 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The hash in `bytes`, if they are exactly 32.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; 32]>::try_from(bytes).ok().map(Self)
    }

    /// Parses 64 hex digits (either case).
    pub fn from_hex(text: &str) -> Option<Self> {
        let text = text.as_bytes();
        if text.len() != 64 {
            return None;
        }
        let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
        let mut out = [0u8; 32];
        for (byte, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
            *byte = digit(pair[0])? << 4 | digit(pair[1])?;
        }
        Some(Self(out))
    }

    /// The first 8 bytes as 16 hex digits: enough to tell hashes apart in logs and status.
    pub fn short(&self) -> String {
        self.to_string()[..16].to_owned()
    }
}

impl std::fmt::Display for ChainHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for ChainHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ChainHash({self})")
    }
}

impl Serialize for ChainHash {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for ChainHash {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct HashVisitor;
        impl Visitor<'_> for HashVisitor {
            type Value = ChainHash;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a bin of 32 bytes")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<ChainHash, E> {
                ChainHash::from_slice(v).ok_or_else(|| E::invalid_length(v.len(), &self))
            }
        }
        deserializer.deserialize_bytes(HashVisitor)
    }
}

/// The name a change type has in the canonical encoding: its wire name (docs/protocol.md §4,
/// "Enumerations"), e.g. `Insert`. `Unknown` — an entry of a change type this build does not
/// know — cannot be hashed faithfully (its name was lost when it was decoded); it is hashed as
/// `Unknown`, and such an entry is never applied (§11).
pub fn change_type_name(change_type: ChangeType) -> &'static str {
    match change_type {
        ChangeType::Insert => "Insert",
        ChangeType::Update => "Update",
        ChangeType::Delete => "Delete",
        ChangeType::Bulk => "Bulk",
        ChangeType::Patch => "Patch",
        ChangeType::Config => "Config",
        ChangeType::Unknown => "Unknown",
    }
}

/// The canonical encoding of `e` (without the previous hash): what [`chain_hash`] hashes after
/// the previous link.
pub fn canonical_encoding(e: &SyncLogEntry) -> Vec<u8> {
    let mut buf = Vec::with_capacity(e.data.len() + e.model_type.len() + e.record_id.len() + 96);
    write_canonical(e, &mut |b| buf.extend_from_slice(b));
    buf
}

/// The link after `prev` for entry `e`: `SHA-256(prev || canonical_encoding(e))`.
pub fn chain_hash(prev: &ChainHash, e: &SyncLogEntry) -> ChainHash {
    let mut hasher = Sha256::new();
    hasher.update(prev.0);
    write_canonical(e, &mut |b| hasher.update(b));
    ChainHash(hasher.finalize().into())
}

/// The canonical encoding of `e` (docs/protocol.md, "The hash chain"), written to `out` piece
/// by piece, so that [`chain_hash`] allocates nothing and [`canonical_encoding`] is the same
/// bytes by construction: fixed-width big-endian integers, UUIDs as their 16 bytes, strings
/// and bytes as a u64 big-endian length and the bytes, the proposal id as `0x00` (none) or
/// `0x01` and its 16 bytes; then, only if the entry has a stamp, `0x01`, the stamp's timestamp
/// ([`crate::Hlc::to_bytes`]), the number of its fields (u64) and each field as a string. The
/// entry's own `hash` is not part of it.
fn write_canonical(e: &SyncLogEntry, out: &mut dyn FnMut(&[u8])) {
    fn var(out: &mut dyn FnMut(&[u8]), b: &[u8]) {
        out(&(b.len() as u64).to_be_bytes());
        out(b);
    }
    out(&e.sequence.to_be_bytes());
    out(&e.term.to_be_bytes());
    out(e.origin_device.as_bytes());
    out(&e.timestamp_ms.to_be_bytes());
    var(out, e.model_type.as_bytes());
    var(out, e.record_id.as_bytes());
    var(out, change_type_name(e.change_type).as_bytes());
    out(&e.version.to_be_bytes());
    var(out, &e.data);
    match e.proposal_id {
        None => out(&[0]),
        Some(id) => {
            out(&[1]);
            out(id.as_bytes());
        }
    }
    // An entry without a stamp ends here, so its hash is the one it had before stamps.
    if let Some(stamp) = &e.stamp {
        out(&[1]);
        out(&stamp.hlc.to_bytes());
        out(&(stamp.fields.len() as u64).to_be_bytes());
        for field in &stamp.fields {
            var(out, field.as_bytes());
        }
    }
}

#[cfg(test)]
mod tests;
