//! The gate: which connections the node keeps, decided on each established connection by the
//! peer's id (Noise has authenticated it). It replaces an allow list of members with three kinds
//! of peers (docs/protocol.md §10):
//!
//! - **members** of any library on this node: admitted, inbound and outbound;
//! - **removed** devices ([`Standing::Removed`]): admitted inbound, so that the event loop can
//!   tell them, request by request, that they were removed; never dialed;
//! - **guests**, any other peer: admitted inbound only while at least one library welcomes
//!   guests (it has an open invitation), at most [`MAX_GUESTS`] connections at once (more are
//!   refused with [`Refused::GuestsFull`]), each closed after the guest timeout unless its peer
//!   has become a member meanwhile. Which requests a guest may send is the event loop's call.
//!   Turning the welcome off admits no new guest; guests already connected keep their
//!   connection until their timeout (closing them at once could cut a joiner off between its
//!   `Join` and the answer).
//!
//! A peer that loses its standing (a member that is a member of no library any more, a removed
//! device that is forgotten) has every connection closed.
//!
//! [`Gate`] is the pure decision logic (no I/O, the clock injected as `now`); [`GateBehaviour`]
//! is its libp2p shell: a `NetworkBehaviour` with no streams of its own that denies connections,
//! closes the ones [`Gate`] says, and runs the one timer of the earliest guest deadline.
//! Memory: one entry per peer with a standing, one per open guest connection (at most
//! [`MAX_GUESTS`]).

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use libp2p::core::transport::PortUse;
use libp2p::core::Endpoint;
use libp2p::swarm::{
    dummy, CloseConnection, ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler,
    THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId};

/// Guest connections open at once, at most.
pub(super) const MAX_GUESTS: usize = 16;

/// What a peer is to this node, over all its libraries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Standing {
    /// A member of at least one library.
    Member,
    /// A member of none, but remembered as removed from at least one.
    Removed,
}

/// Why a connection was admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Admitted {
    /// Its peer is a member of a library.
    Member,
    /// Its peer was removed from a library.
    Removed,
    /// Its peer is a guest, while a library welcomes guests.
    Guest,
}

/// Why a connection was refused (the cause of the swarm's `ConnectionDenied`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(super) enum Refused {
    /// The peer has no standing here and no library welcomes guests (or it was dialed).
    #[error("peer {0} is not a member of any library on this node")]
    NotAllowed(PeerId),
    /// The peer would be a guest, but [`MAX_GUESTS`] guest connections are open.
    #[error("peer {0} refused: {MAX_GUESTS} guest connections are open already")]
    GuestsFull(PeerId),
}

/// What the shell must do, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Action {
    /// Close every connection to the peer: it lost its standing.
    CloseAll(PeerId),
    /// Close this guest connection: its time is up.
    CloseGuest { peer: PeerId, connection: ConnectionId },
}

/// An open guest connection.
#[derive(Debug, Clone, Copy)]
struct Guest {
    peer: PeerId,
    /// When it is closed; `None` once its closing was asked for (it still counts until the
    /// swarm reports it closed).
    deadline: Option<Instant>,
}

/// The gate's decisions; see the module documentation.
#[derive(Debug)]
pub(super) struct Gate {
    standing: HashMap<PeerId, Standing>,
    welcome: bool,
    guests: HashMap<ConnectionId, Guest>,
    guest_timeout: Duration,
    max_guests: usize,
}

impl Gate {
    /// A gate admitting nobody yet; guest connections last `guest_timeout`, at most
    /// `max_guests` at once.
    pub(super) fn new(guest_timeout: Duration, max_guests: usize) -> Self {
        Self {
            standing: HashMap::new(),
            welcome: false,
            guests: HashMap::new(),
            guest_timeout,
            max_guests,
        }
    }

    /// What `peer` is here.
    pub(super) fn standing(&self, peer: &PeerId) -> Option<Standing> {
        self.standing.get(peer).copied()
    }

    /// Decides on an established inbound connection.
    pub(super) fn admit_inbound(
        &mut self,
        connection: ConnectionId,
        peer: PeerId,
        now: Instant,
    ) -> Result<Admitted, Refused> {
        match self.standing.get(&peer) {
            Some(Standing::Member) => Ok(Admitted::Member),
            Some(Standing::Removed) => Ok(Admitted::Removed),
            None if !self.welcome => Err(Refused::NotAllowed(peer)),
            None if self.guests.len() >= self.max_guests => Err(Refused::GuestsFull(peer)),
            None => {
                let deadline = now.checked_add(self.guest_timeout).unwrap_or(now);
                self.guests.insert(connection, Guest { peer, deadline: Some(deadline) });
                Ok(Admitted::Guest)
            }
        }
    }

    /// Decides on a dial or an established outbound connection: members only.
    pub(super) fn admit_outbound(&self, peer: PeerId) -> Result<(), Refused> {
        match self.standing.get(&peer) {
            Some(Standing::Member) => Ok(()),
            _ => Err(Refused::NotAllowed(peer)),
        }
    }

    /// Sets what `peer` is (`None`: nothing). Losing every standing closes its connections; a
    /// member that becomes a removed device keeps them (its requests are refused from now on,
    /// but the answers to requests in flight still arrive — e.g. the answer to the very change
    /// that removed the device that asked for it). Becoming a member ends its guest
    /// connections' timeouts (they become member connections and stop counting as guests).
    pub(super) fn set_standing(&mut self, peer: PeerId, standing: Option<Standing>) -> Vec<Action> {
        let previous = match standing {
            Some(standing) => self.standing.insert(peer, standing),
            None => self.standing.remove(&peer),
        };
        if standing == Some(Standing::Member) {
            self.guests.retain(|_, guest| guest.peer != peer);
        }
        let lost = match previous {
            Some(Standing::Member | Standing::Removed) => standing.is_none(),
            None => false,
        };
        if lost {
            vec![Action::CloseAll(peer)]
        } else {
            Vec::new()
        }
    }

    /// Whether new guests are admitted.
    pub(super) fn set_welcome(&mut self, welcome: bool) {
        self.welcome = welcome;
    }

    /// The swarm closed (or never finished opening) `connection`.
    pub(super) fn closed(&mut self, connection: ConnectionId) {
        self.guests.remove(&connection);
    }

    /// Closes the guest connections whose deadline is at or before `now`, each once.
    pub(super) fn expire(&mut self, now: Instant) -> Vec<Action> {
        let mut expired: Vec<(ConnectionId, PeerId)> = self
            .guests
            .iter()
            .filter(|(_, guest)| guest.deadline.is_some_and(|deadline| deadline <= now))
            .map(|(connection, guest)| (*connection, guest.peer))
            .collect();
        expired.sort_unstable_by_key(|(connection, _)| *connection);
        expired
            .into_iter()
            .map(|(connection, peer)| {
                if let Some(guest) = self.guests.get_mut(&connection) {
                    guest.deadline = None;
                }
                Action::CloseGuest { peer, connection }
            })
            .collect()
    }

    /// The earliest guest deadline still to come, if any.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.guests.values().filter_map(|guest| guest.deadline).min()
    }

    /// Guest connections open (closing ones included).
    #[cfg(test)]
    pub(super) fn guest_count(&self) -> usize {
        self.guests.len()
    }
}

/// The shell's clock: tokio's, so that its timer and its deadlines agree (also when a test
/// pauses time).
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// What the gate tells the event loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum GateEvent {
    /// An inbound connection of a guest was admitted.
    GuestAdmitted { peer: PeerId, connection: ConnectionId },
    /// A guest connection reached the guest timeout; it is being closed.
    GuestTimedOut { peer: PeerId, connection: ConnectionId },
}

/// The libp2p shell of [`Gate`].
pub(super) struct GateBehaviour {
    gate: Gate,
    queue: VecDeque<ToSwarm<GateEvent, Infallible>>,
    /// Fires at the gate's next deadline.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    waker: Option<Waker>,
}

impl GateBehaviour {
    /// A gate admitting nobody yet, with guest connections lasting `guest_timeout`.
    pub(super) fn new(guest_timeout: Duration) -> Self {
        Self {
            gate: Gate::new(guest_timeout, MAX_GUESTS),
            queue: VecDeque::new(),
            timer: None,
            waker: None,
        }
    }

    /// See [`Gate::standing`].
    pub(super) fn standing(&self, peer: &PeerId) -> Option<Standing> {
        self.gate.standing(peer)
    }

    /// See [`Gate::set_standing`]; the connections it closes are closed at the next poll.
    pub(super) fn set_standing(&mut self, peer: PeerId, standing: Option<Standing>) {
        let actions = self.gate.set_standing(peer, standing);
        self.perform(actions);
        self.wake();
    }

    /// See [`Gate::set_welcome`].
    pub(super) fn set_welcome(&mut self, welcome: bool) {
        self.gate.set_welcome(welcome);
    }

    fn perform(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::CloseAll(peer) => self.queue.push_back(ToSwarm::CloseConnection {
                    peer_id: peer,
                    connection: CloseConnection::All,
                }),
                Action::CloseGuest { peer, connection } => {
                    self.queue.push_back(ToSwarm::GenerateEvent(GateEvent::GuestTimedOut {
                        peer,
                        connection,
                    }));
                    self.queue.push_back(ToSwarm::CloseConnection {
                        peer_id: peer,
                        connection: CloseConnection::One(connection),
                    });
                }
            }
        }
    }

    fn wake(&mut self) {
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }
}

impl NetworkBehaviour for GateBehaviour {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = GateEvent;

    fn handle_established_inbound_connection(
        &mut self,
        connection: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        match self.gate.admit_inbound(connection, peer, now()) {
            Ok(Admitted::Guest) => {
                self.queue.push_back(ToSwarm::GenerateEvent(GateEvent::GuestAdmitted {
                    peer,
                    connection,
                }));
                // The timer must be armed for the new deadline.
                self.wake();
                Ok(dummy::ConnectionHandler)
            }
            Ok(Admitted::Member | Admitted::Removed) => Ok(dummy::ConnectionHandler),
            Err(refused) => Err(ConnectionDenied::new(refused)),
        }
    }

    fn handle_pending_outbound_connection(
        &mut self,
        _: ConnectionId,
        peer: Option<PeerId>,
        _: &[Multiaddr],
        _: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        if let Some(peer) = peer {
            self.gate.admit_outbound(peer).map_err(ConnectionDenied::new)?;
        }
        Ok(Vec::new())
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.gate.admit_outbound(peer).map_err(ConnectionDenied::new)?;
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm<'_>) {
        match event {
            FromSwarm::ConnectionClosed(closed) => self.gate.closed(closed.connection_id),
            // Admitted by the gate, then denied by a behaviour after it.
            FromSwarm::ListenFailure(failure) => self.gate.closed(failure.connection_id),
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<ToSwarm<GateEvent, THandlerInEvent<Self>>> {
        loop {
            if let Some(event) = self.queue.pop_front() {
                return Poll::Ready(event);
            }
            let Some(deadline) = self.gate.next_deadline() else {
                self.timer = None;
                break;
            };
            let at = tokio::time::Instant::from_std(deadline);
            let timer = match &mut self.timer {
                Some(timer) => {
                    if timer.deadline() != at {
                        timer.as_mut().reset(at);
                    }
                    timer
                }
                None => self.timer.insert(Box::pin(tokio::time::sleep_until(at))),
            };
            if timer.as_mut().poll(cx).is_pending() {
                break;
            }
            // At least `deadline`, so that the guest due then is expired and the loop moves on.
            let now = now().max(deadline);
            let actions = self.gate.expire(now);
            self.perform(actions);
        }
        self.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(30);

    fn connection(n: usize) -> ConnectionId {
        ConnectionId::new_unchecked(n)
    }

    fn gate() -> Gate {
        Gate::new(TIMEOUT, 2)
    }

    fn welcoming() -> Gate {
        let mut gate = gate();
        gate.set_welcome(true);
        gate
    }

    #[test]
    fn a_member_is_admitted_both_ways() {
        let mut gate = gate();
        let peer = PeerId::random();
        assert!(gate.set_standing(peer, Some(Standing::Member)).is_empty());
        assert_eq!(gate.admit_inbound(connection(1), peer, Instant::now()), Ok(Admitted::Member));
        assert_eq!(gate.admit_outbound(peer), Ok(()));
    }

    #[test]
    fn an_unknown_peer_is_refused_while_no_library_welcomes_guests() {
        let mut gate = gate();
        let peer = PeerId::random();
        assert_eq!(
            gate.admit_inbound(connection(1), peer, Instant::now()),
            Err(Refused::NotAllowed(peer))
        );
    }

    #[test]
    fn an_unknown_peer_is_a_guest_while_a_library_welcomes_guests() {
        let mut gate = welcoming();
        let now = Instant::now();
        assert_eq!(gate.admit_inbound(connection(1), PeerId::random(), now), Ok(Admitted::Guest));
        assert_eq!(gate.next_deadline(), Some(now + TIMEOUT));
    }

    #[test]
    fn guests_beyond_the_bound_are_refused() {
        let mut gate = welcoming();
        let now = Instant::now();
        assert!(gate.admit_inbound(connection(1), PeerId::random(), now).is_ok());
        assert!(gate.admit_inbound(connection(2), PeerId::random(), now).is_ok());
        let third = PeerId::random();
        assert_eq!(gate.admit_inbound(connection(3), third, now), Err(Refused::GuestsFull(third)));
    }

    #[test]
    fn a_closed_guest_connection_frees_its_place() {
        let mut gate = welcoming();
        let now = Instant::now();
        gate.admit_inbound(connection(1), PeerId::random(), now).unwrap();
        gate.admit_inbound(connection(2), PeerId::random(), now).unwrap();
        gate.closed(connection(1));
        assert_eq!(gate.admit_inbound(connection(3), PeerId::random(), now), Ok(Admitted::Guest));
    }

    #[test]
    fn a_guest_is_never_dialed() {
        let mut gate = welcoming();
        let peer = PeerId::random();
        gate.admit_inbound(connection(1), peer, Instant::now()).unwrap();
        assert_eq!(gate.admit_outbound(peer), Err(Refused::NotAllowed(peer)));
    }

    #[test]
    fn a_guest_connection_is_closed_at_its_deadline_once() {
        let mut gate = welcoming();
        let now = Instant::now();
        let peer = PeerId::random();
        gate.admit_inbound(connection(1), peer, now).unwrap();
        assert!(gate.expire(now + TIMEOUT - Duration::from_millis(1)).is_empty());
        assert_eq!(
            gate.expire(now + TIMEOUT),
            vec![Action::CloseGuest { peer, connection: connection(1) }]
        );
        assert!(gate.expire(now + TIMEOUT * 2).is_empty());
        assert_eq!(gate.next_deadline(), None);
        assert_eq!(gate.guest_count(), 1, "it counts until the swarm reports it closed");
    }

    #[test]
    fn a_guest_that_became_a_member_is_not_timed_out() {
        let mut gate = welcoming();
        let now = Instant::now();
        let peer = PeerId::random();
        gate.admit_inbound(connection(1), peer, now).unwrap();
        assert!(gate.set_standing(peer, Some(Standing::Member)).is_empty());
        assert!(gate.expire(now + TIMEOUT).is_empty());
        assert_eq!(gate.guest_count(), 0);
    }

    #[test]
    fn turning_the_welcome_off_keeps_connected_guests_until_their_timeout() {
        let mut gate = welcoming();
        let now = Instant::now();
        let peer = PeerId::random();
        gate.admit_inbound(connection(1), peer, now).unwrap();
        gate.set_welcome(false);
        let late = PeerId::random();
        assert_eq!(gate.admit_inbound(connection(2), late, now), Err(Refused::NotAllowed(late)));
        assert_eq!(gate.next_deadline(), Some(now + TIMEOUT));
    }

    #[test]
    fn a_removed_device_is_admitted_inbound_only_and_not_as_a_guest() {
        let mut gate = gate();
        let peer = PeerId::random();
        gate.set_standing(peer, Some(Standing::Removed));
        assert_eq!(gate.admit_inbound(connection(1), peer, Instant::now()), Ok(Admitted::Removed));
        assert_eq!(gate.admit_outbound(peer), Err(Refused::NotAllowed(peer)));
        assert_eq!(gate.guest_count(), 0);
    }

    #[test]
    fn a_member_that_loses_every_standing_is_disconnected() {
        let mut gate = gate();
        let peer = PeerId::random();
        gate.set_standing(peer, Some(Standing::Member));
        assert_eq!(gate.set_standing(peer, None), vec![Action::CloseAll(peer)]);
    }

    #[test]
    fn a_member_removed_keeps_its_connections_for_answers_in_flight() {
        let mut gate = gate();
        let peer = PeerId::random();
        gate.set_standing(peer, Some(Standing::Member));
        assert!(gate.set_standing(peer, Some(Standing::Removed)).is_empty());
        assert_eq!(gate.admit_outbound(peer), Err(Refused::NotAllowed(peer)), "never dialled");
    }

    #[test]
    fn a_forgotten_removed_device_is_disconnected() {
        let mut gate = gate();
        let peer = PeerId::random();
        gate.set_standing(peer, Some(Standing::Removed));
        assert_eq!(gate.set_standing(peer, None), vec![Action::CloseAll(peer)]);
    }

    #[test]
    fn gaining_a_standing_closes_nothing() {
        let mut gate = gate();
        let peer = PeerId::random();
        assert!(gate.set_standing(peer, Some(Standing::Removed)).is_empty());
        assert!(gate.set_standing(peer, Some(Standing::Member)).is_empty());
        assert!(gate.set_standing(PeerId::random(), None).is_empty());
    }
}
