//! The messages that cross from one role to another, or up to the SyncService: one module
//! that the senders and the receivers both import, so that no role imports another role (or
//! the service) for a message type (docs/architecture.md, "Layering").
//!
//! What a role's supervisor asks of that role alone — its API, e.g. the election's
//! `SetMembership` or the leader actor's `ChangeConfig` — stays with the role's actor.
//! Plain data: nothing here imports anything of this crate.
//!
//! | message | from | to |
//! |---|---|---|
//! | [`ElectionInput`] | the service's router, a link actor, the follower actor (through the service) | the election actor |
//! | [`RoleChange`] | the election actor | the service |
//! | [`HeartbeatNow`] | the election actor | the service, then every link actor |
//! | [`LeaseAnswer`] | a link actor | the service, then the election actor |
//! | [`ConfirmLease`] | the host's write, the proposer, the service's `Propose` | the service, then the election actor |
//! | [`LeaderHint`] | the follower actor (a `NotLeader` naming another leader) | the service |
//! | [`FollowerMembership`] | the follower actor | the service |
//! | [`LeaderReport`] | the leader actor | the service |
//! | [`LinkLeft`] | a link actor of a removed member | the service |
//! | [`Shutdown`] | the service | every actor it started |
//! | [`ProgressWatch`] (a `tokio::sync::watch`, not a message) | the leader actor, the follower actor, the service | the host's waits (`Node::write_with`) |
//! | `InjectPanic` (tests only) | a test, through the service | the election or follower actor |

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use libp2p::PeerId;
use lsync_protocol::{ErrorCode, SyncMessage, SyncRole};
use lsync_storage::{LogPosition, Membership};
use uuid::Uuid;

/// Something the election must know about.
#[derive(Message, Debug, Clone, Copy, PartialEq, Eq)]
#[rtype(result = "()")]
pub enum ElectionInput {
    /// A leader message (Heartbeat, NewEntries, EntriesResponse) of `term` from device `from`.
    LeaderHeard { from: Uuid, term: u64 },
    /// A follower `from` answered this leader, in `term`.
    FollowerContact { from: Uuid, term: u64 },
    /// Some message carried `term`.
    TermSeen { term: u64 },
}

/// The role actors must change: this device now has `role` in `term` under `leader`.
#[derive(Message, Debug, Clone, Copy, PartialEq, Eq)]
#[rtype(result = "()")]
pub struct RoleChange {
    pub role: SyncRole,
    pub term: u64,
    pub leader: Option<Uuid>,
    pub voted_for: Option<Uuid>,
}

/// The leader must heartbeat every follower now: one heartbeat round, stamped with the lease
/// clock's reading taken before any of it was sent (docs/architecture.md, "The leader lease").
#[derive(Message, Debug, Clone, Copy, PartialEq, Eq)]
#[rtype(result = "()")]
pub struct HeartbeatNow {
    /// The round's stamp (a reading of the election's lease clock).
    pub sent_at: Duration,
}

/// Follower `from` answered, in `term`, the heartbeat of the round stamped `sent_at`: what
/// the leader lease counts.
#[derive(Message, Debug, Clone, Copy, PartialEq, Eq)]
#[rtype(result = "()")]
pub struct LeaseAnswer {
    pub from: Uuid,
    pub term: u64,
    pub sent_at: Duration,
}

/// A write was committed on this device as leader and is about to be answered: may it say
/// committed? `true` once the leader lease holds (at once, or after one heartbeat round), or
/// when the configuration has one or two voters; `false` when this device no longer leads or
/// the lease is not confirmed within the leader timeout — then the answer must not say
/// committed (docs/architecture.md, "The leader lease").
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "bool")]
pub struct ConfirmLease;

/// A device this follower asked named another device as the leader (`NotLeader` hint).
#[derive(Message, Debug, Clone, Copy, PartialEq, Eq)]
#[rtype(result = "()")]
pub struct LeaderHint {
    /// The device named as the leader.
    pub device: Uuid,
    /// Its peer id, when the reply gave it (lets in a leader this device does not know yet).
    pub peer: Option<PeerId>,
}

impl LeaderHint {
    /// The leader a `NotLeader` answer names, with its peer id when the answer gives one.
    pub fn named_in(answer: &SyncMessage) -> Option<LeaderHint> {
        match answer {
            SyncMessage::Error {
                code: ErrorCode::NotLeader,
                leader_hint: Some(device),
                leader_peer,
                ..
            } => Some(LeaderHint {
                device: *device,
                peer: leader_peer.as_deref().and_then(|p| p.parse().ok()),
            }),
            _ => None,
        }
    }
}

/// "Who leads?", asked of a member by a device that knows no leader it can reach: a
/// `FetchEntries` from its last position, which a follower answers `NotLeader` naming the
/// leader and its peer id ([`LeaderHint::named_in`]; docs/protocol.md, `Error.leader_peer`).
pub fn who_leads(library_id: Uuid, term: u64, last: LogPosition) -> SyncMessage {
    SyncMessage::FetchEntries {
        library_id,
        term,
        since_sequence: last.sequence,
        since_term: last.term,
        limit: 1,
        since_hash: None,
    }
}

/// What the follower learned about the library's membership (sent to the SyncService).
#[derive(Message, Debug, Clone, PartialEq, Eq)]
#[rtype(result = "()")]
pub enum FollowerMembership {
    /// A configuration entry it applied (or a rebuild that settled) is now in effect.
    Applied(Membership),
    /// The leader's commit sequence reached the watched sequence.
    Committed(u64),
    /// The leader refused this device as removed from the library.
    Removed(String),
}

/// What the leader's core tells the SyncService.
#[derive(Message, Debug, Clone, PartialEq, Eq)]
#[rtype(result = "()")]
pub enum LeaderReport {
    /// The configuration in effect changed (a configuration entry this leader committed, or
    /// the previous voters forgotten once a voter change committed).
    Membership(Membership),
    /// A configuration that does not make this device a voter is committed: step down.
    Resign,
}

/// The link actor of a removed member delivered the removal (or gave up): the service
/// refuses the peer from now on.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct LinkLeft {
    pub device: Uuid,
    pub peer: PeerId,
}

/// Stops an actor.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown;

/// What a library's role actors have published of its replication, for the host's waits
/// (`Node::write_with`'s wait for a majority, its wait for a committed write to be applied
/// here): a waiter re-reads what it waits for whenever this changes, instead of polling.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// The highest commit sequence published since the library was opened: the leader
    /// actor's, and the leader's as the follower actor heard it. Never below the commit
    /// sequence status shows (`GetStatus`), which is one of those values.
    pub commit: u64,
    /// Counts every publication: a commit sequence that changed (also one below `commit`, a
    /// new leadership's), a batch applied to the log, a role or term change.
    pub changes: u64,
    /// Counts the publications that are not a commit sequence: a batch applied to the log (or
    /// the log reset for a repair), a role or term change.
    pub others: u64,
}

/// Where a library's actors publish [`Progress`]: one per open library, shared by every role
/// actor it starts (so it outlives a role change or a restarted actor). Publishing never
/// blocks and needs no receiver.
#[derive(Debug, Clone)]
pub struct ProgressWatch(Arc<tokio::sync::watch::Sender<Progress>>);

impl Default for ProgressWatch {
    fn default() -> Self {
        Self(Arc::new(tokio::sync::watch::channel(Progress::default()).0))
    }
}

impl ProgressWatch {
    /// A commit sequence published (the leader's, or the leader's as a follower heard it).
    pub fn note_commit(&self, commit: u64) {
        self.0.send_modify(|p| {
            p.commit = p.commit.max(commit);
            p.changes = p.changes.wrapping_add(1);
        });
    }

    /// Something else a waiter may be waiting for changed: a batch applied, a role or term.
    pub fn note_change(&self) {
        self.0.send_modify(|p| {
            p.changes = p.changes.wrapping_add(1);
            p.others = p.others.wrapping_add(1);
        });
    }

    /// What was published last.
    pub fn get(&self) -> Progress {
        *self.0.borrow()
    }

    /// A receiver that sees every publication from now on (`changed()` wakes on the next).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<Progress> {
        self.0.subscribe()
    }
}

/// Test only: makes an actor panic (to test its supervision).
#[cfg(test)]
#[derive(Message)]
#[rtype(result = "()")]
pub struct InjectPanic;
