//! Where an inbound request of a library goes: a pure function of the request, its sender and
//! what the service knows now ([`View`]). The `SyncService` actor and the whole-device
//! simulator (sim/) both route with it, so the simulator exercises the same rules.
//!
//! In order:
//! 1. `Join`, `ChangeMembership` and `AnnounceAddresses` are the service's own (a `Join` comes
//!    from a device that is not a member yet; `AnnounceAddresses` only from a member).
//! 2. A sender that is not a member, or a device that is no longer one and does not lead, is
//!    refused with `Unauthorized`.
//! 3. A leader's `Heartbeat` of an older term is refused with `StaleTerm` and this device's
//!    term (actors/src/fencing.rs), whatever this device's role.
//! 4. The election hears of it: a `RequestVote` or `TimeoutNow` goes to the election; a
//!    `NewEntries` or a leader's `Heartbeat` counts as the leader heard; a `FetchEntries` or a
//!    `Heartbeat` to a leader counts as its follower's contact.
//! 5. A `Propose` is served by a leader, in its term, if it comes from the device it names as
//!    its origin; otherwise refused (`Unauthorized`, or `NotLeader` with the leader known).
//! 6. Anything else goes to the role: a leader's link actor of the sender, a follower's
//!    replicator; a device with no role answers `NotLeader` with the leader it knows.

use lsync_protocol::{ErrorCode, SyncMessage, SyncRole};
use uuid::Uuid;

use crate::fencing::{fence, stale_term, Verdict};

/// The role this device's actors play now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serving {
    Leader,
    Follower,
    /// No role actors (campaigning, or no reachable leader known).
    Idle,
}

/// What the service knows when a request arrives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    pub library_id: Uuid,
    /// This device is a member of the configuration installed.
    pub member: bool,
    pub serving: Serving,
    /// The current term.
    pub term: u64,
    /// The leader known for it.
    pub leader: Option<Uuid>,
    /// The leader's peer id, as a hint for `NotLeader`.
    pub leader_peer: Option<String>,
    /// The election runs (it does once the library is started).
    pub election: bool,
}

/// What the election hears from a request (before it is routed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heard {
    /// A leader message of `term` from `from`.
    Leader { from: Uuid, term: u64 },
    /// A follower's request to this leader, in `term`.
    Follower { from: Uuid, term: u64 },
}

/// Where the request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Answer with this at once.
    Reply(SyncMessage),
    /// The service handles a `Join`.
    Join,
    /// The service handles a `ChangeMembership`.
    ChangeMembership,
    /// The service takes the hints and answers with its own.
    Announce,
    /// To the election (a vote request, `TimeoutNow`).
    Election,
    /// Commit the proposal through the transaction manager, answering in `term`.
    Propose { term: u64 },
    /// To the leader's link actor for the sender (refused `Unauthorized` if it has none).
    Link,
    /// To the follower's replicator.
    Follower,
}

/// Routes `msg` from member `from` (`None`: the sender is not a member).
pub fn route(msg: &SyncMessage, from: Option<Uuid>, view: &View) -> (Route, Option<Heard>) {
    let library_id = view.library_id;
    match msg {
        SyncMessage::Join { .. } => return (Route::Join, None),
        SyncMessage::ChangeMembership { .. } => return (Route::ChangeMembership, None),
        SyncMessage::AnnounceAddresses { .. } if from.is_some() => return (Route::Announce, None),
        _ => {}
    }
    let leading = view.serving == Serving::Leader;
    let Some(from) = from.filter(|_| view.member || leading) else {
        let why = if view.member {
            "not a member of this library"
        } else {
            "this device is no longer a member of the library"
        };
        return (Route::Reply(SyncMessage::error(library_id, ErrorCode::Unauthorized, why)), None);
    };
    if let SyncMessage::Heartbeat { term, role: SyncRole::Leader, .. } = msg {
        // A stale term is stale in any role (the role only matters for a newer term, which the
        // election adopts from `Heard`).
        let role =
            if view.serving == Serving::Leader { SyncRole::Leader } else { SyncRole::Follower };
        if fence(role, *term, view.term) == Verdict::Stale {
            return (
                Route::Reply(stale_term(library_id, "Heartbeat", *term, view.term, view.leader)),
                None,
            );
        }
    }
    let heard = match msg {
        SyncMessage::RequestVote { .. } | SyncMessage::TimeoutNow { .. } if view.election => {
            return (Route::Election, None)
        }
        SyncMessage::NewEntries { term, .. }
        | SyncMessage::Heartbeat { term, role: SyncRole::Leader, .. }
            if view.election =>
        {
            Some(Heard::Leader { from, term: *term })
        }
        SyncMessage::FetchEntries { term, .. } | SyncMessage::Heartbeat { term, .. }
            if view.election && leading =>
        {
            Some(Heard::Follower { from, term: *term })
        }
        _ => None,
    };
    let not_leader = |message: &str| SyncMessage::Error {
        leader_peer: view.leader_peer.clone(),
        term: view.term,
        library_id,
        code: ErrorCode::NotLeader,
        message: message.into(),
        leader_hint: view.leader,
    };
    let route = match (msg, view.serving) {
        (SyncMessage::Propose { origin_device, .. }, _) if *origin_device != from => {
            Route::Reply(SyncMessage::error(
                library_id,
                ErrorCode::Unauthorized,
                "a device proposes only its own changes",
            ))
        }
        (SyncMessage::Propose { .. }, Serving::Leader) => Route::Propose { term: view.term },
        (SyncMessage::Propose { .. }, _) => {
            Route::Reply(not_leader("this device does not lead the library"))
        }
        (_, Serving::Leader) => Route::Link,
        (_, Serving::Follower) => Route::Follower,
        (_, Serving::Idle) => {
            Route::Reply(not_leader("this device does not serve the library right now"))
        }
    };
    (route, heard)
}

#[cfg(test)]
mod tests {
    use lsync_protocol::ProposedChange;

    use super::*;

    const A: Uuid = Uuid::from_u128(1);
    const L: Uuid = Uuid::from_u128(9);

    fn view(serving: Serving) -> View {
        View {
            library_id: Uuid::nil(),
            member: true,
            serving,
            term: 5,
            leader: Some(L),
            leader_peer: Some("peer-of-l".into()),
            election: true,
        }
    }

    fn heartbeat(term: u64, role: SyncRole) -> SyncMessage {
        SyncMessage::Heartbeat {
            library_id: Uuid::nil(),
            term,
            current_sequence: 3,
            last_term: 1,
            role,
            commit_sequence: 0,
            features: 0,
            last_hash: None,
        }
    }

    fn propose(origin: Uuid) -> SyncMessage {
        SyncMessage::Propose {
            library_id: Uuid::nil(),
            term: 5,
            proposal_id: Uuid::from_u128(77),
            origin_device: origin,
            changes: Vec::<ProposedChange>::new(),
        }
    }

    fn code(r: &Route) -> Option<ErrorCode> {
        match r {
            Route::Reply(SyncMessage::Error { code, .. }) => Some(*code),
            _ => None,
        }
    }

    #[test]
    fn a_non_member_sender_is_refused_and_nothing_is_heard() {
        let (r, heard) = route(&heartbeat(5, SyncRole::Leader), None, &view(Serving::Follower));
        assert_eq!(code(&r), Some(ErrorCode::Unauthorized));
        assert_eq!(heard, None);
    }

    #[test]
    fn a_removed_device_refuses_unless_it_still_leads() {
        let removed = View { member: false, ..view(Serving::Follower) };
        let (r, _) = route(&heartbeat(5, SyncRole::Leader), Some(L), &removed);
        assert!(matches!(&r, Route::Reply(SyncMessage::Error { message, .. })
            if message.contains("no longer a member")));
        let leading = View { member: false, ..view(Serving::Leader) };
        assert_eq!(route(&heartbeat(5, SyncRole::Follower), Some(A), &leading).0, Route::Link);
    }

    #[test]
    fn a_stale_leader_heartbeat_is_refused_with_this_term_in_any_role() {
        for serving in [Serving::Leader, Serving::Follower, Serving::Idle] {
            let (r, heard) = route(&heartbeat(4, SyncRole::Leader), Some(L), &view(serving));
            assert!(matches!(
                r,
                Route::Reply(SyncMessage::Error { code: ErrorCode::StaleTerm, term: 5, .. })
            ));
            assert_eq!(heard, None);
        }
    }

    #[test]
    fn the_election_hears_leaders_and_followers() {
        let (r, heard) = route(&heartbeat(6, SyncRole::Leader), Some(L), &view(Serving::Follower));
        assert_eq!((r, heard), (Route::Follower, Some(Heard::Leader { from: L, term: 6 })));
        let (r, heard) = route(&heartbeat(5, SyncRole::Follower), Some(A), &view(Serving::Leader));
        assert_eq!((r, heard), (Route::Link, Some(Heard::Follower { from: A, term: 5 })));
        // a follower's heartbeat to a device that does not lead is not contact
        let (_, heard) =
            route(&heartbeat(5, SyncRole::Follower), Some(A), &view(Serving::Follower));
        assert_eq!(heard, None);
        let vote = SyncMessage::TimeoutNow { library_id: Uuid::nil(), term: 5 };
        assert_eq!(route(&vote, Some(L), &view(Serving::Follower)).0, Route::Election);
    }

    #[test]
    fn a_proposal_is_served_by_a_leader_from_its_own_origin_only() {
        assert_eq!(
            route(&propose(A), Some(A), &view(Serving::Leader)).0,
            Route::Propose { term: 5 }
        );
        assert_eq!(
            code(&route(&propose(L), Some(A), &view(Serving::Leader)).0),
            Some(ErrorCode::Unauthorized)
        );
        let (r, _) = route(&propose(A), Some(A), &view(Serving::Follower));
        assert!(matches!(
            r,
            Route::Reply(SyncMessage::Error {
                code: ErrorCode::NotLeader,
                leader_hint: Some(L),
                term: 5,
                ..
            })
        ));
    }

    #[test]
    fn a_device_without_a_role_names_the_leader_it_knows() {
        let (r, _) = route(&heartbeat(5, SyncRole::Follower), Some(A), &view(Serving::Idle));
        assert!(matches!(
            r,
            Route::Reply(SyncMessage::Error {
                code: ErrorCode::NotLeader,
                leader_hint: Some(L),
                leader_peer: Some(_),
                ..
            })
        ));
    }
}
