//! The term rule of the protocol (docs/protocol.md §6), decided here and nowhere else: every
//! place that compares a message's term with this device's — the follower's replication, the
//! leader's link and its serving, the service's router, the leader's commit rule and the
//! election — asks [`fence`] (or [`fence_acknowledgement`]) and acts on its [`Verdict`].
//!
//! | the message's term | verdict | a request | a response | this device |
//! |---|---|---|---|---|
//! | older | [`Verdict::Stale`] | refused `Error(StaleTerm)` with this device's term ([`stale_term`]) | discarded | unchanged |
//! | newer | [`Verdict::Newer`] | a follower handles it in the new term; a leader or candidate does not lead that term: `Error(NotLeader)` ([`not_leader_of`]) | handled in the new term | adopts the term before anything else (the election persists it, with no vote and no leader); a leader or candidate steps down |
//! | the same | [`Verdict::Current`] | handled by the role's own rules | handled | unchanged |
//! | above [`MAX_TERM`] | [`Verdict::Stale`] | refused | discarded | unchanged: never adopted |
//!
//! A term above [`MAX_TERM`] cannot be stored (docs/protocol.md §6): the codec refuses a message
//! carrying one as malformed (`Error(BadRequest)`), so it never reaches this rule from the
//! network. Should one come some other way, it is treated as stale — refused or discarded, and
//! never adopted — so that no device can be pushed to a term it could neither persist nor leave.
//!
//! The exceptions of docs/protocol.md §6 are the callers' (a vote request of an older term is
//! answered with a refused `Vote`, not `StaleTerm`), except one kept here: an `Acknowledge` of
//! term 0 comes from a version-1 follower, which sends no term, and is not fenced
//! ([`fence_acknowledgement`]).

use lsync_protocol::{ErrorCode, SyncMessage, SyncRole, MAX_TERM};
use uuid::Uuid;

/// What the term rule decides for one message (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The message is of this device's term: handle it by the role's rules.
    Current,
    /// An older term: refuse a request ([`stale_term`]), discard a response.
    Stale,
    /// A newer term: adopt it first. `step_down`: this device leads or campaigns, so it steps
    /// down and does not handle the message in its old role (a request is answered
    /// [`not_leader_of`]); a follower handles the message in the new term.
    Newer {
        /// Whether this device must step down (it is a leader or a candidate).
        step_down: bool,
    },
}

impl Verdict {
    /// Whether the message's term is newer than this device's.
    pub fn is_newer(self) -> bool {
        matches!(self, Verdict::Newer { .. })
    }
}

/// The term rule for a message of `message_term` arriving at a device that has `role` in
/// `current_term`. A `message_term` above [`MAX_TERM`] is [`Verdict::Stale`] (never adopted).
pub fn fence(role: SyncRole, message_term: u64, current_term: u64) -> Verdict {
    if message_term > MAX_TERM {
        return Verdict::Stale;
    }
    match message_term.cmp(&current_term) {
        std::cmp::Ordering::Less => Verdict::Stale,
        std::cmp::Ordering::Equal => Verdict::Current,
        std::cmp::Ordering::Greater => Verdict::Newer { step_down: role != SyncRole::Follower },
    }
}

/// The term rule for an acknowledged position (an `Acknowledge`, or the position a heartbeat
/// reports) arriving at the leader of `current_term`: term 0 is a version-1 follower's, which
/// sends no term — not fenced ([`Verdict::Current`]; its position is never counted toward the
/// commit sequence); any other term is fenced like any message.
pub fn fence_acknowledgement(message_term: u64, current_term: u64) -> Verdict {
    if message_term == 0 {
        return Verdict::Current;
    }
    fence(SyncRole::Leader, message_term, current_term)
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

/// The refusal a leader of `current_term` gives a request of the newer term `their`: it does
/// not lead that term (`Error(NotLeader)`; it adopts the term and steps down meanwhile).
pub fn not_leader_of(library_id: Uuid, their: u64, current_term: u64) -> SyncMessage {
    SyncMessage::error(
        library_id,
        ErrorCode::NotLeader,
        format!(
            "this device led term {current_term}; it does not lead the requester's term {their}"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_older_term_is_stale_in_every_role() {
        for role in [SyncRole::Follower, SyncRole::Candidate, SyncRole::Leader] {
            assert_eq!(fence(role, 3, 4), Verdict::Stale, "{role:?}");
        }
    }

    #[test]
    fn a_device_that_knows_no_term_yet_finds_term_zero_current() {
        assert_eq!(fence(SyncRole::Follower, 0, 0), Verdict::Current);
    }

    #[test]
    fn term_zero_is_stale_for_a_device_with_a_term() {
        assert_eq!(fence(SyncRole::Leader, 0, 1), Verdict::Stale);
    }

    #[test]
    fn the_same_term_is_handled_in_every_role() {
        for role in [SyncRole::Follower, SyncRole::Candidate, SyncRole::Leader] {
            assert_eq!(fence(role, 4, 4), Verdict::Current, "{role:?}");
        }
    }

    #[test]
    fn a_follower_adopts_a_newer_term_and_handles_the_message() {
        assert_eq!(fence(SyncRole::Follower, 5, 4), Verdict::Newer { step_down: false });
    }

    #[test]
    fn a_leader_steps_down_for_a_newer_term() {
        assert_eq!(fence(SyncRole::Leader, 5, 4), Verdict::Newer { step_down: true });
    }

    #[test]
    fn a_candidate_steps_down_for_a_newer_term() {
        assert_eq!(fence(SyncRole::Candidate, 5, 4), Verdict::Newer { step_down: true });
    }

    #[test]
    fn a_term_beyond_the_store_is_never_adopted() {
        for role in [SyncRole::Follower, SyncRole::Candidate, SyncRole::Leader] {
            for term in [MAX_TERM + 1, i64::MAX as u64, u64::MAX] {
                assert_eq!(fence(role, term, 4), Verdict::Stale, "{role:?} {term}");
                assert_eq!(fence_acknowledgement(term, 4), Verdict::Stale, "{term}");
            }
            assert_eq!(
                fence(role, MAX_TERM, 4),
                Verdict::Newer { step_down: role != SyncRole::Follower }
            );
        }
    }

    #[test]
    fn an_acknowledgement_without_a_term_is_not_fenced() {
        assert_eq!(fence_acknowledgement(0, 7), Verdict::Current);
    }

    #[test]
    fn an_acknowledgement_with_a_term_is_fenced_like_any_message() {
        assert_eq!(fence_acknowledgement(6, 7), Verdict::Stale);
        assert_eq!(fence_acknowledgement(7, 7), Verdict::Current);
        assert_eq!(fence_acknowledgement(8, 7), Verdict::Newer { step_down: true });
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

    #[test]
    fn a_leader_asked_in_a_newer_term_says_it_does_not_lead_it() {
        match not_leader_of(Uuid::from_u128(1), 9, 7) {
            SyncMessage::Error { code: ErrorCode::NotLeader, message, .. } => {
                assert!(message.contains("term 7") && message.contains("term 9"), "{message}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
