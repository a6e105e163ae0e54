//! The one term rule of the protocol (docs/protocol.md §6), for requests and responses alike:
//! a message of an older term than this device's is refused (a request gets
//! `Error(StaleTerm)` carrying this device's term, so the sender learns it) or discarded (a
//! response); a newer term is adopted before anything else (the election machine persists
//! it and steps down a leader or candidate); the current term is handled.

use lsync_protocol::{ErrorCode, SyncMessage};
use uuid::Uuid;

/// How a message's term compares with this device's current term.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fence {
    /// The same term: handle the message.
    Current,
    /// An older term: refuse a request with [`stale_term`], discard a response.
    Stale,
    /// A newer term: adopt it first (then handle the message in the role that follows).
    Newer,
}

/// Compares `message_term` with `current_term`.
pub fn fence(message_term: u64, current_term: u64) -> Fence {
    match message_term.cmp(&current_term) {
        std::cmp::Ordering::Less => Fence::Stale,
        std::cmp::Ordering::Equal => Fence::Current,
        std::cmp::Ordering::Greater => Fence::Newer,
    }
}

/// The refusal of a request of an older term: `Error(StaleTerm)` with this device's term and
/// the leader it knows for it.
pub fn stale_term(
    library_id: Uuid,
    kind: &str,
    their: u64,
    current_term: u64,
    leader: Option<Uuid>,
) -> SyncMessage {
    SyncMessage::Error {
        leader_peer: None,
        library_id,
        code: ErrorCode::StaleTerm,
        message: format!("{kind} of term {their} is older than this device's term {current_term}"),
        leader_hint: leader,
        term: current_term,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn older_terms_are_stale_newer_ones_are_adopted() {
        assert_eq!(fence(3, 4), Fence::Stale);
        assert_eq!(fence(4, 4), Fence::Current);
        assert_eq!(fence(5, 4), Fence::Newer);
        assert_eq!(fence(0, 1), Fence::Stale, "a device that knows no term yet");
    }

    #[test]
    fn a_stale_term_refusal_teaches_the_term_and_the_leader() {
        let (lib, leader) = (Uuid::from_u128(1), Uuid::from_u128(2));
        match stale_term(lib, "FetchEntries", 0, 7, Some(leader)) {
            SyncMessage::Error {
                code: ErrorCode::StaleTerm,
                term: 7,
                leader_hint,
                message,
                ..
            } => {
                assert_eq!(leader_hint, Some(leader));
                assert!(message.contains("term 0") && message.contains("term 7"), "{message}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
