//! The simulated network: request–response exchanges between devices, as libp2p's
//! request–response behaviour gives them to the actors (every request gets exactly one answer:
//! the response, or a failure), with seeded faults.
//!
//! - **Delay and reordering**: each message travels for a delay drawn from `delay`; two
//!   messages on one link may arrive in either order.
//! - **Loss**: a message is dropped with probability `loss`; a lost request or response ends
//!   in a timeout failure at the sender, `request_timeout` after it was sent.
//! - **Duplication**: a request is delivered twice with probability `duplicate` (the second
//!   answer is discarded, as a retried request's would be): handlers must be idempotent.
//! - **Partitions**: a link `(from, to)` can be cut one way; a message on a cut link is lost
//!   when it would arrive.
//! - **Crashes**: the requests a crashed device sent are forgotten (their answers go nowhere);
//!   the requests it received and had not answered fail at their senders with "connection
//!   closed" after a delay.
//!
//! Deterministic: every choice comes from the caller's seeded generator, and messages that
//! arrive at the same instant are ordered by the order they were sent.

use std::collections::{BTreeMap, BTreeSet};

use lsync_protocol::SyncMessage;
use rand::Rng;

/// A device's index in the simulation.
pub type Ix = usize;

/// Microseconds of simulated time.
pub type Micros = u64;

/// The fault rates of the network.
#[derive(Debug, Clone)]
pub struct NetFaults {
    /// Probability that a message is lost.
    pub loss: f64,
    /// Probability that a request is delivered twice.
    pub duplicate: f64,
    /// Delivery delay range (inclusive), in microseconds.
    pub delay: (Micros, Micros),
    /// How long a sender waits for an answer.
    pub request_timeout: Micros,
}

impl Default for NetFaults {
    fn default() -> Self {
        Self { loss: 0.0, duplicate: 0.0, delay: (100, 2_000), request_timeout: 2_000_000 }
    }
}

/// One request's id, unique in the simulation.
pub type RequestId = u64;

/// What arrives at a device.
#[derive(Debug, Clone)]
pub enum Delivery {
    /// A request from `from`; answer it with [`Net::respond`] and this id.
    Request { id: RequestId, from: Ix, msg: SyncMessage },
    /// The answer to this device's request `id` to `peer`.
    Response { id: RequestId, peer: Ix, msg: SyncMessage },
    /// This device's request `id` to `peer` failed.
    Failure { id: RequestId, peer: Ix, reason: String },
}

/// A request waiting for its answer.
#[derive(Debug, Clone)]
struct Outstanding {
    from: Ix,
    to: Ix,
    /// Delivered to its target (then a crash of the target fails it).
    delivered: bool,
}

/// The network. Messages in flight are events of the simulation's queue; this keeps what
/// decides their fate.
#[derive(Debug, Default)]
pub struct Net {
    pub faults: NetFaults,
    cut: BTreeSet<(Ix, Ix)>,
    outstanding: BTreeMap<RequestId, Outstanding>,
    next_id: RequestId,
    /// Counters for the report.
    pub sent: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub timed_out: u64,
}

/// A message the caller schedules at `at` to `to`.
#[derive(Debug, Clone)]
pub struct InFlight {
    pub at: Micros,
    pub to: Ix,
    pub delivery: Delivery,
    /// A lost message still travels: it is dropped when it would arrive (so that a partition
    /// healed meanwhile does not resurrect it, and the schedule does not depend on loss).
    pub lost: bool,
}

impl Net {
    /// A network with these faults.
    pub fn new(faults: NetFaults) -> Self {
        Self { faults, ..Self::default() }
    }

    /// Cuts the link from `from` to `to` (one way).
    pub fn cut(&mut self, from: Ix, to: Ix) {
        self.cut.insert((from, to));
    }

    /// Cuts both ways between every device of `side` and every other device.
    pub fn partition(&mut self, side: &BTreeSet<Ix>, n: usize) {
        for a in side {
            for b in (0..n).filter(|b| !side.contains(b)) {
                self.cut(*a, b);
                self.cut(b, *a);
            }
        }
    }

    /// Heals every link.
    pub fn heal(&mut self) {
        self.cut.clear();
    }

    /// Whether any link is cut.
    pub fn is_partitioned(&self) -> bool {
        !self.cut.is_empty()
    }

    /// Whether the link from `from` to `to` carries messages now.
    pub fn is_up(&self, from: Ix, to: Ix) -> bool {
        !self.cut.contains(&(from, to))
    }

    fn delay(&self, rng: &mut impl Rng) -> Micros {
        let (lo, hi) = self.faults.delay;
        rng.gen_range(lo..=hi.max(lo))
    }

    /// `from` sends `msg` to `to` at `now`: returns the request's id and what to schedule
    /// (its arrival, maybe twice, and the timeout at the sender).
    pub fn request(
        &mut self,
        now: Micros,
        from: Ix,
        to: Ix,
        msg: SyncMessage,
        rng: &mut impl Rng,
    ) -> (RequestId, Vec<InFlight>) {
        self.next_id += 1;
        let id = self.next_id;
        self.sent += 1;
        self.outstanding.insert(id, Outstanding { from, to, delivered: false });
        let mut out = Vec::with_capacity(3);
        let lost = rng.gen_bool(self.faults.loss);
        self.lost += u64::from(lost);
        out.push(InFlight {
            at: now + self.delay(rng),
            to,
            delivery: Delivery::Request { id, from, msg: msg.clone() },
            lost,
        });
        if rng.gen_bool(self.faults.duplicate) {
            self.duplicated += 1;
            out.push(InFlight {
                at: now + self.delay(rng),
                to,
                delivery: Delivery::Request { id, from, msg },
                lost: false,
            });
        }
        out.push(InFlight {
            at: now + self.faults.request_timeout,
            to: from,
            delivery: Delivery::Failure { id, peer: to, reason: "request timed out".into() },
            lost: false,
        });
        (id, out)
    }

    /// `to` answers request `id` at `now`: what to schedule (nothing if the request is no
    /// longer waiting: answered, timed out, or its sender crashed).
    pub fn respond(
        &mut self,
        now: Micros,
        id: RequestId,
        msg: SyncMessage,
        rng: &mut impl Rng,
    ) -> Option<InFlight> {
        let o = self.outstanding.get(&id)?;
        let (from, to) = (o.from, o.to);
        let lost = rng.gen_bool(self.faults.loss);
        self.lost += u64::from(lost);
        Some(InFlight {
            at: now + self.delay(rng),
            to: from,
            delivery: Delivery::Response { id, peer: to, msg },
            lost,
        })
    }

    /// Decides, when `m` arrives, whether it is delivered; a delivered answer or failure ends
    /// its request (later ones are dropped). Returns the delivery to hand to the device.
    pub fn arrive(&mut self, m: InFlight) -> Option<Delivery> {
        let (from, to) = match &m.delivery {
            Delivery::Request { from, .. } => (*from, m.to),
            Delivery::Response { peer, .. } => (*peer, m.to),
            Delivery::Failure { .. } => (m.to, m.to),
        };
        match &m.delivery {
            Delivery::Request { id, .. } => {
                let up = self.is_up(from, to);
                let o = self.outstanding.get_mut(id)?;
                if m.lost || !up {
                    return None;
                }
                o.delivered = true;
                Some(m.delivery)
            }
            Delivery::Response { id, .. } => {
                if m.lost || !self.is_up(from, to) || !self.outstanding.contains_key(id) {
                    return None;
                }
                self.outstanding.remove(id);
                Some(m.delivery)
            }
            Delivery::Failure { id, .. } => {
                self.outstanding.remove(id)?;
                self.timed_out += 1;
                Some(m.delivery)
            }
        }
    }

    /// Device `ix` crashed at `now`: forget what it sent; fail what it received and had not
    /// answered, at its senders, after a delay. Returns the failures to schedule.
    pub fn crash(&mut self, now: Micros, ix: Ix, rng: &mut impl Rng) -> Vec<InFlight> {
        let mut out = Vec::new();
        let ids: Vec<RequestId> = self.outstanding.keys().copied().collect();
        for id in ids {
            let o = &self.outstanding[&id];
            if o.from == ix {
                self.outstanding.remove(&id);
            } else if o.to == ix {
                let from = o.from;
                out.push(InFlight {
                    at: now + self.delay(rng),
                    to: from,
                    delivery: Delivery::Failure {
                        id,
                        peer: ix,
                        reason: "connection closed".into(),
                    },
                    lost: false,
                });
            }
        }
        out
    }

    /// Requests waiting for an answer (bounded by what the devices send).
    /// Whether request `id` still waits for its answer.
    pub fn is_outstanding(&self, id: RequestId) -> bool {
        self.outstanding.contains_key(&id)
    }

    pub fn outstanding(&self) -> usize {
        self.outstanding.len()
    }
}

#[cfg(test)]
mod tests {
    use lsync_protocol::SyncMessage;
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use uuid::Uuid;

    use super::*;

    fn msg() -> SyncMessage {
        SyncMessage::Heartbeat {
            library_id: Uuid::nil(),
            term: 1,
            current_sequence: 0,
            last_term: 0,
            role: lsync_protocol::SyncRole::Leader,
            commit_sequence: 0,
            features: 0,
            last_hash: None,
        }
    }

    fn request(net: &mut Net, rng: &mut StdRng) -> (RequestId, Vec<InFlight>) {
        net.request(0, 0, 1, msg(), rng)
    }

    #[test]
    fn a_request_is_answered_once_and_its_timeout_is_then_ignored() {
        let (mut net, mut rng) = (Net::new(NetFaults::default()), StdRng::seed_from_u64(1));
        let (id, mut flights) = request(&mut net, &mut rng);
        let timeout = flights.pop().unwrap();
        let arrived = net.arrive(flights.remove(0)).expect("delivered");
        assert!(matches!(arrived, Delivery::Request { id: i, from: 0, .. } if i == id));
        let answer = net.respond(10, id, msg(), &mut rng).unwrap();
        assert!(matches!(net.arrive(answer.clone()), Some(Delivery::Response { .. })));
        assert!(net.arrive(timeout).is_none(), "answered: the timeout is void");
        assert!(net.arrive(answer).is_none(), "a second answer is dropped");
        assert!(net.respond(20, id, msg(), &mut rng).is_none());
        assert_eq!(net.outstanding(), 0);
    }

    #[test]
    fn a_cut_link_loses_the_request_and_the_sender_times_out() {
        let (mut net, mut rng) = (Net::new(NetFaults::default()), StdRng::seed_from_u64(2));
        net.cut(0, 1);
        let (_, mut flights) = request(&mut net, &mut rng);
        let timeout = flights.pop().unwrap();
        assert!(net.arrive(flights.remove(0)).is_none());
        assert!(matches!(net.arrive(timeout), Some(Delivery::Failure { .. })));
        // one way only: 1 → 0 works
        let (_, mut flights) = net.request(0, 1, 0, msg(), &mut rng);
        assert!(net.arrive(flights.remove(0)).is_some());
    }

    #[test]
    fn a_crashed_target_fails_what_it_received_and_its_own_requests_vanish() {
        let (mut net, mut rng) = (Net::new(NetFaults::default()), StdRng::seed_from_u64(3));
        let (id, mut flights) = request(&mut net, &mut rng);
        net.arrive(flights.remove(0)).unwrap();
        let (own, _) = net.request(0, 1, 2, msg(), &mut rng);
        let failures = net.crash(5, 1, &mut rng);
        assert_eq!(failures.len(), 1);
        assert!(matches!(
            net.arrive(failures[0].clone()),
            Some(Delivery::Failure { id: i, peer: 1, .. }) if i == id
        ));
        assert!(net.respond(9, own, msg(), &mut rng).is_none(), "its sender is gone");
    }

    #[test]
    fn the_same_seed_gives_the_same_schedule() {
        let faults = NetFaults { loss: 0.3, duplicate: 0.3, ..NetFaults::default() };
        let run = |seed| {
            let (mut net, mut rng) = (Net::new(faults.clone()), StdRng::seed_from_u64(seed));
            (0..50)
                .flat_map(|i| net.request(i, 0, 1, msg(), &mut rng).1)
                .map(|f| (f.at, f.lost))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }
}
