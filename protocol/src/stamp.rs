//! Where and when a change was made, as changes and log entries carry it (docs/protocol.md,
//! "Stamps"; docs/architecture.md, "Conflicts"): the hybrid logical clock timestamp [`Hlc`]
//! and an entry's [`EntryStamp`]. Pure data; the clock that issues timestamps lives in the
//! storage crate.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A hybrid logical clock timestamp: the physical time in milliseconds since the Unix epoch
/// where the change was made, a counter ordering the timestamps of one millisecond (and
/// carrying causality past a clock behind), and the device that made it, which breaks ties.
/// Timestamps order by (`physical_ms`, `counter`, `device`): the derived order, field by field.
/// On the wire a map of these three fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Hlc {
    /// Milliseconds since the Unix epoch (the largest physical time the clock had seen).
    pub physical_ms: u64,
    /// Orders timestamps of the same `physical_ms`.
    pub counter: u32,
    /// The device whose clock issued it: the tiebreak.
    pub device: Uuid,
}

impl Hlc {
    /// The 28 bytes of the canonical form: `physical_ms` (u64) and `counter` (u32) big-endian,
    /// then the device's 16 bytes — byte order is timestamp order.
    pub fn to_bytes(&self) -> [u8; 28] {
        let mut out = [0u8; 28];
        out[..8].copy_from_slice(&self.physical_ms.to_be_bytes());
        out[8..12].copy_from_slice(&self.counter.to_be_bytes());
        out[12..].copy_from_slice(self.device.as_bytes());
        out
    }

    /// The timestamp of [`Hlc::to_bytes`], if `bytes` are 28.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let bytes: &[u8; 28] = bytes.try_into().ok()?;
        let physical_ms = u64::from_be_bytes(bytes[..8].try_into().ok()?);
        let counter = u32::from_be_bytes(bytes[8..12].try_into().ok()?);
        let device = Uuid::from_bytes(bytes[12..].try_into().ok()?);
        Some(Self { physical_ms, counter, device })
    }
}

impl std::fmt::Display for Hlc {
    /// `physical_ms.counter@device`, e.g. `1764633600000.3@0000…0007`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}@{}", self.physical_ms, self.counter, self.device)
    }
}

/// The stamp of a log entry (libraries at feature version 3, docs/protocol.md §11): the
/// timestamp the change got where it was made, and the fields it set — empty for a change of
/// the whole record (an Insert or Update of every field, or a Delete). Every device keeps, per
/// record, the timestamp at which each field was last set from these stamps, so whichever
/// device leads decides a later conflict the same way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryStamp {
    /// Where and when the change was made.
    pub hlc: Hlc,
    /// The fields the entry set, in the order of the change (empty: all of them).
    #[serde(default)]
    pub fields: Vec<String>,
}

impl EntryStamp {
    /// Bytes the stamp adds to an entry's size ([`crate::entry_bytes`]) beyond
    /// [`crate::ENTRY_OVERHEAD`], which counts a stamp without fields: its field names.
    pub fn field_bytes(&self) -> usize {
        self.fields.iter().map(|f| f.len() + 8).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_canonical_bytes_round_trip_and_order_like_the_timestamps() {
        let a = Hlc { physical_ms: 5, counter: 9, device: Uuid::from_u128(3) };
        let b = Hlc { physical_ms: 6, counter: 0, device: Uuid::from_u128(1) };
        assert_eq!(Hlc::from_bytes(&a.to_bytes()), Some(a));
        assert!(a < b && a.to_bytes() < b.to_bytes());
        assert_eq!(Hlc::from_bytes(&[0; 27]), None);
    }
}
