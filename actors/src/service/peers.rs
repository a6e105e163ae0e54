//! Who the service lets talk to it, and the two decisions it takes about its role actors: a
//! pure book of peers ([`PeerBook`]: the members of the configuration in effect and the
//! leaders let in by a hint), [`keeps_role_actors`] (a role change that keeps the actors
//! running) and [`follows_hint`] (a leader named by a member is followed). The `SyncService`
//! actor and the whole-device simulator (sim/src/device.rs) both decide with them, so a change
//! of one of these rules reaches both (docs/testing.md, "Simulation").

use std::collections::BTreeMap;

use libp2p::PeerId;
use lsync_protocol::SyncRole;
use uuid::Uuid;

use super::route::Serving;

/// How many leaders a hint may let in at once (the book forgets them all when full): a leader
/// named by a member is let in until a configuration lists it, and a few are enough.
pub const MAX_PROVISIONAL: usize = 4;

/// The peers this device talks to for one library: the other members of the configuration in
/// effect, and the leaders let in although no configuration here lists them (`provisional`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerBook {
    /// The other members of the configuration in effect (peer → device).
    pub members: BTreeMap<PeerId, Uuid>,
    /// Leaders a member named that this device's configuration does not list yet (see
    /// [`PeerBook::let_in`]); dropped once a configuration lists them.
    pub provisional: BTreeMap<PeerId, Uuid>,
}

impl PeerBook {
    /// The device of `peer`: a member's, or a leader's let in.
    pub fn device_of(&self, peer: &PeerId) -> Option<Uuid> {
        self.members.get(peer).or_else(|| self.provisional.get(peer)).copied()
    }

    /// The peer of `device`: a member's, or a leader's let in.
    pub fn peer_of(&self, device: Uuid) -> Option<PeerId> {
        self.members
            .iter()
            .chain(self.provisional.iter())
            .find(|(_, d)| **d == device)
            .map(|(p, _)| *p)
    }

    /// Makes `members` the members in effect; a leader let in that they list is no longer
    /// provisional.
    pub fn set_members(&mut self, members: BTreeMap<PeerId, Uuid>) {
        self.provisional.retain(|p, _| !members.contains_key(p));
        self.members = members;
    }

    /// Lets `device`, reachable as `peer`, in although no configuration here lists it (a leader
    /// a member named, or a leader that removed itself and leads until that commits). At most
    /// [`MAX_PROVISIONAL`]: a full book forgets the others first.
    pub fn let_in(&mut self, peer: PeerId, device: Uuid) {
        if self.provisional.len() >= MAX_PROVISIONAL && !self.provisional.contains_key(&peer) {
            self.provisional.clear();
        }
        self.provisional.insert(peer, device);
    }
}

/// Whether the role actors keep running through a role change from `(role, term, leader)` to
/// the new ones, while `serving`: only a follower that learns a newer term of the leader it
/// follows keeps its actors (the follower actor adopts the term from the leader's messages);
/// anything else restarts them, and a device with no role actors starts them.
pub fn keeps_role_actors(
    serving: Serving,
    now: (SyncRole, u64, Option<Uuid>),
    new: (SyncRole, u64, Option<Uuid>),
) -> bool {
    let ((role, term, leader), (new_role, new_term, new_leader)) = (now, new);
    role == new_role
        && leader == new_leader
        && (term == new_term || new_role == SyncRole::Follower)
        && serving != Serving::Idle
}

/// Whether this device (`me`, with `role` and the leader `leader` as it knows them, `serving`)
/// follows `hint`, a leader a member named: a follower, or a follower with no role actors yet,
/// follows a leader it can reach (`known`) that is not itself and not the leader it follows
/// already (an idle follower asks again even then).
pub fn follows_hint(
    serving: Serving,
    role: SyncRole,
    leader: Option<Uuid>,
    me: Uuid,
    hint: Uuid,
    known: bool,
) -> bool {
    let idle = serving == Serving::Idle && role == SyncRole::Follower;
    (serving == Serving::Follower || idle) && known && hint != me && (leader != Some(hint) || idle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> PeerId {
        PeerId::random()
    }

    #[test]
    fn a_member_and_a_leader_let_in_are_both_known_both_ways() {
        let (a, b) = (peer(), peer());
        let (da, db) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let mut book = PeerBook::default();
        book.set_members([(a, da)].into());
        book.let_in(b, db);
        assert_eq!((book.device_of(&a), book.device_of(&b)), (Some(da), Some(db)));
        assert_eq!((book.peer_of(da), book.peer_of(db)), (Some(a), Some(b)));
        assert_eq!(book.device_of(&peer()), None);
    }

    #[test]
    fn a_configuration_that_lists_a_leader_let_in_makes_it_a_member() {
        let (a, b) = (peer(), peer());
        let mut book = PeerBook::default();
        book.let_in(b, Uuid::from_u128(2));
        book.set_members([(a, Uuid::from_u128(1)), (b, Uuid::from_u128(2))].into());
        assert!(book.provisional.is_empty());
        assert_eq!(book.members.len(), 2);
    }

    #[test]
    fn a_full_book_forgets_the_leaders_let_in_before_letting_another_in() {
        let mut book = PeerBook::default();
        for i in 0..MAX_PROVISIONAL as u128 {
            book.let_in(peer(), Uuid::from_u128(i));
        }
        let last = peer();
        book.let_in(last, Uuid::from_u128(99));
        assert_eq!(book.provisional, [(last, Uuid::from_u128(99))].into());
    }

    #[test]
    fn only_a_follower_learning_a_newer_term_of_its_leader_keeps_its_actors() {
        let l = Some(Uuid::from_u128(1));
        let f = SyncRole::Follower;
        assert!(keeps_role_actors(Serving::Follower, (f, 3, l), (f, 4, l)));
        assert!(!keeps_role_actors(Serving::Follower, (f, 3, l), (f, 4, Some(Uuid::from_u128(2)))));
        assert!(!keeps_role_actors(Serving::Idle, (f, 3, l), (f, 3, l)));
        let leader = SyncRole::Leader;
        assert!(!keeps_role_actors(Serving::Leader, (leader, 3, l), (leader, 4, l)));
        assert!(keeps_role_actors(Serving::Leader, (leader, 3, l), (leader, 3, l)));
    }

    #[test]
    fn a_hint_is_followed_by_a_follower_only_when_it_names_another_reachable_leader() {
        let (me, old, new) = (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3));
        let f = SyncRole::Follower;
        assert!(follows_hint(Serving::Follower, f, Some(old), me, new, true));
        assert!(!follows_hint(Serving::Follower, f, Some(old), me, new, false));
        assert!(!follows_hint(Serving::Follower, f, Some(old), me, old, true));
        assert!(!follows_hint(Serving::Follower, f, Some(old), me, me, true));
        assert!(!follows_hint(Serving::Leader, SyncRole::Leader, Some(me), me, new, true));
        // an idle follower asks again even for the leader it knows
        assert!(follows_hint(Serving::Idle, f, Some(old), me, old, true));
        assert!(!follows_hint(Serving::Idle, SyncRole::Candidate, None, me, old, true));
    }
}
