//! Leader election: a pure state machine, no I/O, no async; the clock and the randomness are
//! injected. The `ElectionWatcher` actor is its shell: it feeds it events, performs the
//! [`Action`]s it returns, in order, and calls [`Election::tick`] at
//! [`Election::next_deadline`].
//!
//! Raft's election (terms, one vote per term, randomized timeouts, "at least as up to date"),
//! adapted to a library of a fixed set of member devices (DESIGN.md, "Leadership").
//!
//! ```text
//!            actor (I/O)                          Election (pure)
//!  inbound RequestVote ──────────► on_vote_request ──┐
//!  inbound vote response ────────► on_vote_response  │
//!  Heartbeat / NewEntries ───────► on_leader_message │ ──► Vec<Action>, performed in order:
//!  TimeoutNow ───────────────────► on_timeout_now    │     Persist → Become* → Send*
//!  follower ack / any term seen ─► on_follower_response / observe_term
//!  timer ────────────────────────► tick              │
//!  log / members changed ────────► set_last_log / set_members
//!  transfer_leadership(to) ──────► transfer_leadership, on_target_caught_up
//! ```
//!
//! # What it keeps
//! - persistent: the current term, the vote cast in it (`voted_for`) and the leader known for
//!   it ([`PersistedElection`]). A device rebuilds its machine from exactly that after a restart.
//! - volatile: the role ([`SyncRole`]), the election deadline, the votes collected as a
//!   candidate, the last time a live leader was heard, the heartbeat deadline of a leader and a
//!   leadership transfer in progress.
//!
//! # What it emits
//! Every handler returns a `Vec<Action>` in this order:
//! 1. [`Action::Persist`] when the term, the vote or the known leader changed. It always comes
//!    first: the actor writes it durably before it performs anything after it (a vote grant,
//!    a vote request, heartbeats), so nothing is ever sent that a restart could forget.
//! 2. at most one role change: [`Action::BecomeFollower`] (also when a follower's term or
//!    leader changes: re-point to the new leader), [`Action::BecomeCandidate`] or
//!    [`Action::BecomeLeader`].
//! 3. messages to send: [`Action::SendRequestVote`], [`Action::SendVoteResponse`],
//!    [`Action::SendHeartbeats`], [`Action::SendTimeoutNow`]; and [`Action::TransferAborted`].
//!
//! # Rules
//! - **Majority**: `members / 2 + 1`, except that a one- or two-member library needs one vote
//!   (the candidate's own). In a two-member library that would let both devices win the same
//!   term, so there each device owns half of the terms: the lower uuid campaigns only in even
//!   terms, the higher in odd ones. At most one leader per term holds for every size.
//! - **Term 1 belongs to the creator** of the library ([`PersistedElection::founder`]); elections
//!   start at term 2, so a member that has not yet heard of the creator never competes for it.
//! - **Election timeout**: a follower that hears no leader message for a deadline drawn
//!   uniformly in `[election_timeout, 2 × election_timeout)` (redrawn at every reset) becomes a
//!   candidate: next term, votes for itself, asks every other member for its vote with its last
//!   log position. A candidate whose deadline passes starts a new election in a later term.
//! - **Vote**: a member grants its vote iff the request's term is not older than its own, it has
//!   not voted for another candidate in that term, the candidate's last log `(term, sequence)`
//!   is at least its own (term first, then sequence), and it hears no live leader (below).
//!   A newer term is adopted first (step down to follower, no vote, no leader). A grant resets
//!   the voter's election deadline. Responses carry the voter's term.
//! - **Yielding to a better candidate**: a device that cannot vote for a candidate whose log is
//!   strictly more up to date than its own (because it already voted, typically for itself, in
//!   that term) defers its next campaign to `[2 × election_timeout, 3 × election_timeout)`.
//!   Without this, a device with a stale log that times out at about the same moment as the
//!   only device it could lose to splits the vote round after round (found by the simulator).
//! - **Leader stickiness**: a follower that heard its leader less than `election_timeout` ago,
//!   and a leader itself, refuse a vote request *and leave their term unchanged*, unless the
//!   request is a leadership transfer (`transfer: true`). Unlike the plain rule "adopt any newer
//!   term", this keeps a device that returns from a partition with an inflated term from
//!   deposing a healthy leader (Raft thesis §4.2.3); that device learns the leader's term from
//!   its heartbeats or is deposed through the leader's responses, see
//!   [`Election::on_follower_response`].
//! - **Fencing**: any message carrying a newer term makes a candidate or a leader step down at
//!   once ([`Action::BecomeFollower`] with `leader: None`). A leader message (Heartbeat,
//!   NewEntries) of an older term is refused: [`LeaderVerdict::Stale`].
//! - **Leader**: on winning it emits [`Action::BecomeLeader`] and [`Action::SendHeartbeats`],
//!   then one [`Action::SendHeartbeats`] per `heartbeat_interval` from [`Election::tick`].
//!   A device restarting with a persisted leader equal to itself resumes leading that term.
//! - **Check quorum** (optional, [`ElectionConfig::check_quorum`], off by default): a leader
//!   that has not heard from a majority of the members (itself included, through
//!   [`Election::on_follower_response`]) during an `election_timeout` steps down.
//! - **Leadership transfer**: [`Election::transfer_leadership`] on the leader records the target;
//!   the actor brings the target up to date and then calls [`Election::on_target_caught_up`],
//!   which emits [`Action::SendTimeoutNow`]. The target ([`Election::on_timeout_now`]) starts an
//!   election at once with `transfer: true`, which voters grant despite hearing a live leader.
//!   While [`Election::is_transferring`], the actor should hold new writes. The transfer ends
//!   with a [`Action::BecomeFollower`] (the leadership moved, or the leader was deposed) or with
//!   [`Action::TransferAborted`] when `transfer_timeout` passes first.
//!
//! Membership changes through [`Election::set_members`] are taken as they come: no joint
//! consensus, so changing the member set while an election runs weakens the one-leader-per-term
//! guarantee for that term. A device that is not in its own member set never campaigns.
//!
//! Nothing here panics on any input: terms saturate (a device at `u64::MAX` stops
//! campaigning), timers are clamped, and messages from non-members or from this device itself
//! are refused.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use lsync_protocol::SyncRole;
use lsync_storage::LogPosition;
use rand::Rng;
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::config::SyncConfig;

#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;

/// The longest timer the machine accepts; longer configured durations are clamped to it so
/// that deadlines never overflow an [`Instant`].
const MAX_TIMER: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Timers of the election.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElectionConfig {
    /// How often a leader emits [`Action::SendHeartbeats`].
    pub heartbeat_interval: Duration,
    /// The minimum election timeout: a follower waits a random duration in
    /// `[election_timeout, 2 × election_timeout)` without a leader message before campaigning;
    /// it is also the leader-stickiness window of the vote rule.
    pub election_timeout: Duration,
    /// How long a leadership transfer may take (catch-up and election) before it is aborted.
    pub transfer_timeout: Duration,
    /// A leader steps down when it has not heard from a majority for an `election_timeout`.
    pub check_quorum: bool,
}

impl ElectionConfig {
    /// The given timers; the transfer timeout equals the election timeout; no check quorum.
    pub fn new(heartbeat_interval: Duration, election_timeout: Duration) -> Self {
        Self {
            heartbeat_interval,
            election_timeout,
            transfer_timeout: election_timeout,
            check_quorum: false,
        }
    }

    /// The election timers of a [`SyncConfig`]: its heartbeat interval and leader timeout.
    pub fn from_sync(config: &SyncConfig) -> Self {
        Self::new(config.heartbeat_interval, config.leader_timeout)
    }

    fn clamped(self) -> Self {
        Self {
            heartbeat_interval: self.heartbeat_interval.min(MAX_TIMER),
            election_timeout: self.election_timeout.min(MAX_TIMER),
            transfer_timeout: self.transfer_timeout.min(MAX_TIMER),
            check_quorum: self.check_quorum,
        }
    }
}

impl Default for ElectionConfig {
    /// DESIGN.md's defaults: heartbeat 30 s, leader timeout 60 s.
    fn default() -> Self {
        Self::new(Duration::from_secs(30), Duration::from_secs(60))
    }
}

/// The durable part of the election: what [`Action::Persist`] writes and what
/// [`Election::new`] rebuilds from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PersistedElection {
    /// The current term (0: never saw an election).
    pub term: u64,
    /// The candidate this device voted for in `term`.
    pub voted_for: Option<Uuid>,
    /// The leader this device knows for `term`.
    pub leader: Option<Uuid>,
}

impl PersistedElection {
    /// The state of the device that creates a library: leader of term 1, without election.
    pub fn founder(me: Uuid) -> Self {
        Self { term: 1, voted_for: Some(me), leader: Some(me) }
    }
}

/// A candidate's request for a vote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VoteRequest {
    /// The term the candidate campaigns in.
    pub term: u64,
    /// The candidate.
    pub candidate: Uuid,
    /// The term of the candidate's last log entry (0 for an empty log).
    pub last_log_term: u64,
    /// The sequence of the candidate's last log entry (0 for an empty log).
    pub last_log_sequence: u64,
    /// A leadership transfer: granted even by devices that hear a live leader.
    pub transfer: bool,
}

impl VoteRequest {
    /// The candidate's last log position.
    pub fn last_log(&self) -> LogPosition {
        LogPosition { term: self.last_log_term, sequence: self.last_log_sequence }
    }
}

/// A member's answer to a [`VoteRequest`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VoteResponse {
    /// The voter's current term (after handling the request).
    pub term: u64,
    /// The voter.
    pub voter: Uuid,
    /// Whether the vote is granted.
    pub granted: bool,
}

/// What the actor must do, in the order returned. See the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Write the election state durably before performing any later action.
    Persist {
        /// Current term.
        term: u64,
        /// Vote cast in `term`.
        voted_for: Option<Uuid>,
        /// Leader known for `term`.
        leader: Option<Uuid>,
    },
    /// This device is (now) a follower of `leader` in `term` (`None`: no leader known yet);
    /// emitted on a step down and whenever a follower's term or leader changes.
    BecomeFollower {
        /// Current term.
        term: u64,
        /// The leader to follow, if known.
        leader: Option<Uuid>,
    },
    /// This device campaigns in `term`.
    BecomeCandidate {
        /// The term of the election.
        term: u64,
    },
    /// This device leads `term`.
    BecomeLeader {
        /// The term it leads.
        term: u64,
    },
    /// Send a vote request to `to`.
    SendRequestVote {
        /// The member asked.
        to: Uuid,
        /// The request.
        request: VoteRequest,
    },
    /// Answer the vote request of `to` (every [`Election::on_vote_request`] returns exactly one,
    /// last).
    SendVoteResponse {
        /// The candidate.
        to: Uuid,
        /// The answer.
        response: VoteResponse,
    },
    /// Heartbeat every follower now, in `term`.
    SendHeartbeats {
        /// The leader's term.
        term: u64,
    },
    /// Tell the transfer target to campaign at once.
    SendTimeoutNow {
        /// The target.
        to: Uuid,
        /// The leader's term.
        term: u64,
    },
    /// The transfer to `to` did not complete in time (or `to` left the library); keep leading
    /// and accept writes again.
    TransferAborted {
        /// The target.
        to: Uuid,
    },
}

impl Action {
    /// The state a [`Action::Persist`] writes.
    pub fn persisted(&self) -> Option<PersistedElection> {
        match *self {
            Action::Persist { term, voted_for, leader } => {
                Some(PersistedElection { term, voted_for, leader })
            }
            _ => None,
        }
    }
}

/// The verdict on a leader message (Heartbeat, NewEntries, TimeoutNow).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaderVerdict {
    /// The sender leads this device's current term: follow it, handle the message.
    Accepted,
    /// The message is from an older term: refuse it, tell the sender this term and leader.
    Stale {
        /// This device's current term.
        current_term: u64,
        /// The leader this device knows for it.
        leader: Option<Uuid>,
    },
    /// Ignore the message: its sender is not a member, is this device, or claims a term whose
    /// leader is someone else.
    Refused,
}

/// Why [`Election::transfer_leadership`] cannot start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TransferError {
    /// This device does not lead.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The leader it knows of.
        leader: Option<Uuid>,
    },
    /// The target is this device.
    #[error("cannot transfer leadership to self")]
    ToSelf,
    /// The target is not a member of the library.
    #[error("{0} is not a member of the library")]
    NotAMember(Uuid),
}

#[derive(Debug, Clone, Copy)]
struct Transfer {
    to: Uuid,
    deadline: Instant,
}

/// The election state machine of one device for one library.
#[derive(Debug, Clone)]
pub struct Election<R> {
    me: Uuid,
    members: BTreeSet<Uuid>,
    config: ElectionConfig,
    rng: R,
    // persistent
    term: u64,
    voted_for: Option<Uuid>,
    leader: Option<Uuid>,
    dirty: bool,
    // volatile
    role: SyncRole,
    last_log: LogPosition,
    election_deadline: Instant,
    /// When the leader of the current term was last heard (followers only).
    leader_contact: Option<Instant>,
    votes: BTreeSet<Uuid>,
    heartbeat_deadline: Instant,
    quorum_deadline: Instant,
    /// Members heard by a leader since the last quorum check.
    active: BTreeSet<Uuid>,
    transfer: Option<Transfer>,
}

type View = (SyncRole, u64, Option<Uuid>);

impl<R: Rng> Election<R> {
    /// Rebuilds the machine of device `me` from its persisted state. A persisted leader equal to
    /// `me` resumes leading that term (the creator of a library starts from
    /// [`PersistedElection::founder`]); anything else starts as a follower with a fresh election
    /// deadline. A one-member library's device campaigns (and wins) at its first tick. Call
    /// [`Election::tick`] right away: a resumed leader heartbeats at once.
    pub fn new(
        me: Uuid,
        members: BTreeSet<Uuid>,
        persisted: PersistedElection,
        config: ElectionConfig,
        now: Instant,
        rng: R,
    ) -> Self {
        let config = config.clamped();
        let role = if persisted.leader == Some(me) { SyncRole::Leader } else { SyncRole::Follower };
        let mut election = Self {
            me,
            members,
            config,
            rng,
            term: persisted.term,
            voted_for: persisted.voted_for,
            leader: persisted.leader,
            dirty: false,
            role,
            last_log: LogPosition::default(),
            election_deadline: now,
            leader_contact: None,
            votes: BTreeSet::new(),
            heartbeat_deadline: now,
            quorum_deadline: add(now, config.election_timeout),
            active: BTreeSet::new(),
            transfer: None,
        };
        if !election.is_sole_member() {
            election.reset_election_deadline(now);
        }
        election
    }

    /// This device.
    pub fn me(&self) -> Uuid {
        self.me
    }

    /// The current role.
    pub fn role(&self) -> SyncRole {
        self.role
    }

    /// Whether this device leads the current term.
    pub fn is_leader(&self) -> bool {
        self.role == SyncRole::Leader
    }

    /// The current term.
    pub fn term(&self) -> u64 {
        self.term
    }

    /// The vote cast in the current term.
    pub fn voted_for(&self) -> Option<Uuid> {
        self.voted_for
    }

    /// The leader known for the current term (this device when it leads).
    pub fn leader(&self) -> Option<Uuid> {
        self.leader
    }

    /// The durable state as it is now (equal to the last [`Action::Persist`] emitted).
    pub fn persisted(&self) -> PersistedElection {
        PersistedElection { term: self.term, voted_for: self.voted_for, leader: self.leader }
    }

    /// The library's members.
    pub fn members(&self) -> &BTreeSet<Uuid> {
        &self.members
    }

    /// Votes needed to win: `members / 2 + 1`, and 1 for a one- or two-member library.
    pub fn majority(&self) -> usize {
        match self.members.len() {
            0..=2 => 1,
            n => n / 2 + 1,
        }
    }

    /// The last log position the actor reported.
    pub fn last_log(&self) -> LogPosition {
        self.last_log
    }

    /// The timers in use (clamped).
    pub fn config(&self) -> &ElectionConfig {
        &self.config
    }

    /// Whether a leadership transfer is in progress (the actor holds new writes meanwhile).
    pub fn is_transferring(&self) -> bool {
        self.transfer.is_some()
    }

    /// The target of the leadership transfer in progress.
    pub fn transfer_target(&self) -> Option<Uuid> {
        self.transfer.map(|t| t.to)
    }

    /// When [`Election::tick`] must be called next (`None`: no timer, this device is not a
    /// member of its library and follows).
    pub fn next_deadline(&self) -> Option<Instant> {
        match self.role {
            SyncRole::Leader => {
                let mut next = self.heartbeat_deadline;
                if self.config.check_quorum {
                    next = next.min(self.quorum_deadline);
                }
                if let Some(t) = self.transfer {
                    next = next.min(t.deadline);
                }
                Some(next)
            }
            SyncRole::Follower | SyncRole::Candidate => {
                self.members.contains(&self.me).then_some(self.election_deadline)
            }
        }
    }

    /// Drives the timers: starts an election when the election deadline has passed, emits
    /// heartbeats when the heartbeat interval has, checks the quorum and the transfer timeout.
    pub fn tick(&mut self, now: Instant) -> Vec<Action> {
        let before = self.view();
        let mut sends = Vec::new();
        match self.role {
            SyncRole::Leader => {
                if let Some(t) = self.transfer {
                    if now >= t.deadline {
                        info!(to = %t.to, "leadership transfer timed out");
                        self.transfer = None;
                        sends.push(Action::TransferAborted { to: t.to });
                    }
                }
                if self.config.check_quorum && now >= self.quorum_deadline {
                    let heard = self.active.iter().filter(|m| self.members.contains(m)).count()
                        + usize::from(self.members.contains(&self.me));
                    self.active.clear();
                    self.quorum_deadline = add(now, self.config.election_timeout);
                    if heard < self.majority() {
                        warn!(term = self.term, heard, "no majority heard, stepping down");
                        self.step_down(now);
                        self.set_leader(None);
                    }
                }
                if self.role == SyncRole::Leader && now >= self.heartbeat_deadline {
                    self.heartbeat_deadline = add(now, self.config.heartbeat_interval);
                    sends.push(Action::SendHeartbeats { term: self.term });
                }
            }
            SyncRole::Follower | SyncRole::Candidate => {
                if now >= self.election_deadline {
                    if self.role == SyncRole::Follower {
                        debug!(term = self.term, "no leader heard, calling an election");
                    }
                    self.start_election(now, false, &mut sends);
                }
            }
        }
        self.finish(before, sends)
    }

    /// The actor's log now ends at `last` (sent in vote requests, compared with candidates').
    pub fn set_last_log(&mut self, last: LogPosition) {
        self.last_log = last;
    }

    /// The library's member set changed. A candidate that now holds a majority wins; a leader
    /// that is no longer a member steps down; a transfer to a removed member is aborted; the
    /// device of a library that becomes one-member campaigns at its next tick.
    pub fn set_members(&mut self, members: BTreeSet<Uuid>, now: Instant) -> Vec<Action> {
        let before = self.view();
        let mut sends = Vec::new();
        self.members = members;
        if let Some(t) = self.transfer {
            if !self.members.contains(&t.to) {
                self.transfer = None;
                sends.push(Action::TransferAborted { to: t.to });
            }
        }
        if !self.members.contains(&self.me) {
            if self.role != SyncRole::Follower {
                warn!(term = self.term, "no longer a member of the library, stepping down");
                self.step_down(now);
                if self.leader == Some(self.me) {
                    self.set_leader(None);
                }
            }
        } else if self.role == SyncRole::Candidate && self.has_majority() {
            self.become_leader(now, &mut sends);
        } else if self.role == SyncRole::Follower && self.is_sole_member() {
            self.election_deadline = now;
        }
        self.finish(before, sends)
    }

    /// A leader message (Heartbeat, NewEntries) from `from` in `term`. A newer or equal term
    /// makes this device follow `from` (and resets its election deadline); an older one is
    /// [`LeaderVerdict::Stale`]. Perform the returned actions (Persist first) before handling
    /// the message's content.
    pub fn on_leader_message(
        &mut self,
        from: Uuid,
        term: u64,
        now: Instant,
    ) -> (LeaderVerdict, Vec<Action>) {
        let verdict = self.check_leader(from, term);
        if verdict != LeaderVerdict::Accepted {
            return (verdict, Vec::new());
        }
        let before = self.view();
        self.follow(from, term, now);
        (verdict, self.finish(before, Vec::new()))
    }

    /// A vote request. The returned actions always end with exactly one
    /// [`Action::SendVoteResponse`] to the candidate, preceded by the [`Action::Persist`] (and
    /// step down) it depends on.
    pub fn on_vote_request(&mut self, request: VoteRequest, now: Instant) -> Vec<Action> {
        let candidate = request.candidate;
        let refuse = |term| Action::SendVoteResponse {
            to: candidate,
            response: VoteResponse { term, voter: self.me, granted: false },
        };
        if candidate == self.me || request.term < self.term {
            return vec![refuse(self.term)];
        }
        if !request.transfer && self.hears_live_leader(now) {
            debug!(%candidate, term = request.term, "vote refused, a live leader is heard");
            return vec![refuse(self.term)];
        }
        let before = self.view();
        if request.term > self.term {
            self.adopt_term(request.term, now);
        }
        let free = self.voted_for.is_none() || self.voted_for == Some(candidate);
        let up_to_date = request.last_log() >= self.last_log;
        let granted = free && up_to_date && self.members.contains(&candidate);
        if granted {
            if self.voted_for != Some(candidate) {
                self.voted_for = Some(candidate);
                self.dirty = true;
            }
            self.reset_election_deadline(now);
            debug!(%candidate, term = self.term, "vote granted");
        } else {
            debug!(%candidate, term = self.term, free, up_to_date, "vote refused");
            if !free && request.last_log() > self.last_log && self.role != SyncRole::Leader {
                // A better candidate we cannot vote for this term: let it campaign first next
                // time, or we split the votes again and again.
                self.defer_election(now);
            }
        }
        let response = VoteResponse { term: self.term, voter: self.me, granted };
        self.finish(before, vec![Action::SendVoteResponse { to: candidate, response }])
    }

    /// A response to this device's vote request. A newer term makes it step down; a granted vote
    /// of the current term counts while campaigning, and a majority makes it leader.
    pub fn on_vote_response(&mut self, response: VoteResponse, now: Instant) -> Vec<Action> {
        let before = self.view();
        let mut sends = Vec::new();
        if response.term > self.term {
            self.adopt_term(response.term, now);
        } else if self.role == SyncRole::Candidate
            && response.term == self.term
            && response.granted
            && self.members.contains(&response.voter)
        {
            self.votes.insert(response.voter);
            if self.has_majority() {
                self.become_leader(now, &mut sends);
            }
        }
        self.finish(before, sends)
    }

    /// A follower's response to this leader (heartbeat reply, acknowledgement, refusal) carrying
    /// the follower's term: a newer term makes this device step down; otherwise it counts as
    /// contact for the check quorum.
    pub fn on_follower_response(&mut self, from: Uuid, term: u64, now: Instant) -> Vec<Action> {
        if term > self.term {
            return self.observe_term(term, now);
        }
        if self.role == SyncRole::Leader && term == self.term && self.members.contains(&from) {
            self.active.insert(from);
        }
        Vec::new()
    }

    /// Any other message carrying a term (e.g. a NotLeader answer): a newer term is adopted at
    /// once and a candidate or leader steps down.
    pub fn observe_term(&mut self, term: u64, now: Instant) -> Vec<Action> {
        if term <= self.term {
            return Vec::new();
        }
        let before = self.view();
        self.adopt_term(term, now);
        self.finish(before, Vec::new())
    }

    /// The leader `from` tells this device, the target of a transfer, to campaign now. Accepted
    /// like a leader message of `term`, then an election starts at once with `transfer: true`.
    /// Ignored when refused as a leader message.
    pub fn on_timeout_now(&mut self, from: Uuid, term: u64, now: Instant) -> Vec<Action> {
        if self.check_leader(from, term) != LeaderVerdict::Accepted {
            return Vec::new();
        }
        let before = self.view();
        let mut sends = Vec::new();
        self.follow(from, term, now);
        info!(%from, term, "leadership handed over, campaigning");
        self.start_election(now, true, &mut sends);
        self.finish(before, sends)
    }

    /// Starts handing leadership over to `to` (replacing a transfer in progress). The actor
    /// brings `to` up to date, then calls [`Election::on_target_caught_up`].
    pub fn transfer_leadership(&mut self, to: Uuid, now: Instant) -> Result<(), TransferError> {
        if self.role != SyncRole::Leader {
            return Err(TransferError::NotLeader { leader: self.leader });
        }
        if to == self.me {
            return Err(TransferError::ToSelf);
        }
        if !self.members.contains(&to) {
            return Err(TransferError::NotAMember(to));
        }
        info!(%to, term = self.term, "leadership transfer started");
        self.transfer = Some(Transfer { to, deadline: add(now, self.config.transfer_timeout) });
        Ok(())
    }

    /// The transfer target `to` has caught up: returns [`Action::SendTimeoutNow`] (again on
    /// every call, messages can be lost), or nothing when no transfer to `to` is in progress.
    pub fn on_target_caught_up(&mut self, to: Uuid, now: Instant) -> Vec<Action> {
        match self.transfer {
            Some(t) if t.to == to && self.role == SyncRole::Leader && now < t.deadline => {
                vec![Action::SendTimeoutNow { to, term: self.term }]
            }
            _ => Vec::new(),
        }
    }

    /// Gives up the transfer in progress, if any; returns its target.
    pub fn abort_transfer(&mut self) -> Option<Uuid> {
        self.transfer.take().map(|t| t.to)
    }

    // ---- internals ----

    fn view(&self) -> View {
        (self.role, self.term, self.leader)
    }

    fn is_sole_member(&self) -> bool {
        self.members.len() == 1 && self.members.contains(&self.me)
    }

    fn has_majority(&self) -> bool {
        self.votes.iter().filter(|v| self.members.contains(v)).count() >= self.majority()
    }

    fn hears_live_leader(&self, now: Instant) -> bool {
        match self.role {
            SyncRole::Leader => true,
            SyncRole::Candidate => false,
            SyncRole::Follower => {
                self.leader.is_some()
                    && self.leader_contact.is_some_and(|at| {
                        now.saturating_duration_since(at) < self.config.election_timeout
                    })
            }
        }
    }

    /// Whether a leader message from `from` in `term` is to be followed.
    fn check_leader(&self, from: Uuid, term: u64) -> LeaderVerdict {
        if from == self.me || !self.members.contains(&from) {
            return LeaderVerdict::Refused;
        }
        if term < self.term {
            return LeaderVerdict::Stale { current_term: self.term, leader: self.leader };
        }
        if term == self.term
            && (self.role == SyncRole::Leader || self.leader.is_some_and(|l| l != from))
        {
            warn!(%from, term, leader = ?self.leader, "second leader claims the term, ignored");
            return LeaderVerdict::Refused;
        }
        LeaderVerdict::Accepted
    }

    /// Follows `from` as leader of `term` (checked by `check_leader`).
    fn follow(&mut self, from: Uuid, term: u64, now: Instant) {
        if term > self.term {
            self.adopt_term(term, now);
        }
        if self.role != SyncRole::Follower {
            self.step_down(now);
        }
        self.set_leader(Some(from));
        self.leader_contact = Some(now);
        self.reset_election_deadline(now);
    }

    /// Moves to the newer `term`: no vote, no leader; a candidate or leader steps down.
    fn adopt_term(&mut self, term: u64, now: Instant) {
        if term <= self.term {
            return;
        }
        debug!(from = self.term, to = term, "newer term");
        self.term = term;
        self.voted_for = None;
        self.leader = None;
        self.dirty = true;
        self.leader_contact = None;
        self.votes.clear();
        if self.role != SyncRole::Follower {
            self.step_down(now);
        }
    }

    fn step_down(&mut self, now: Instant) {
        self.role = SyncRole::Follower;
        self.transfer = None;
        self.votes.clear();
        self.active.clear();
        self.leader_contact = None;
        self.reset_election_deadline(now);
    }

    fn set_leader(&mut self, leader: Option<Uuid>) {
        if self.leader != leader {
            self.leader = leader;
            self.dirty = true;
        }
    }

    /// The term this device campaigns in next: after the current one, never term 1 (the
    /// creator's), and in a two-member library one of this device's own terms.
    fn next_campaign_term(&self) -> Option<u64> {
        let mut term = self.term.checked_add(1)?.max(2);
        if self.members.len() == 2 {
            let parity = self.members.iter().position(|m| *m == self.me)? as u64;
            if term % 2 != parity {
                term = term.checked_add(1)?;
            }
        }
        Some(term)
    }

    fn start_election(&mut self, now: Instant, transfer: bool, sends: &mut Vec<Action>) {
        self.reset_election_deadline(now);
        if !self.members.contains(&self.me) {
            return;
        }
        let Some(term) = self.next_campaign_term() else {
            warn!(term = self.term, "term space exhausted, not campaigning");
            return;
        };
        self.adopt_term(term, now);
        self.role = SyncRole::Candidate;
        self.voted_for = Some(self.me);
        self.dirty = true;
        self.votes.insert(self.me);
        if self.has_majority() {
            self.become_leader(now, sends);
            return;
        }
        let request = VoteRequest {
            term,
            candidate: self.me,
            last_log_term: self.last_log.term,
            last_log_sequence: self.last_log.sequence,
            transfer,
        };
        for &to in self.members.iter().filter(|m| **m != self.me) {
            sends.push(Action::SendRequestVote { to, request });
        }
    }

    fn become_leader(&mut self, now: Instant, sends: &mut Vec<Action>) {
        self.role = SyncRole::Leader;
        self.set_leader(Some(self.me));
        self.votes.clear();
        self.active.clear();
        self.transfer = None;
        self.leader_contact = None;
        self.heartbeat_deadline = add(now, self.config.heartbeat_interval);
        self.quorum_deadline = add(now, self.config.election_timeout);
        sends.push(Action::SendHeartbeats { term: self.term });
    }

    fn reset_election_deadline(&mut self, now: Instant) {
        let timeout = self.config.election_timeout;
        let span = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
        let jitter = if span == 0 { 0 } else { self.rng.gen_range(0..span) };
        self.election_deadline = add(add(now, timeout), Duration::from_nanos(jitter));
    }

    /// Redraws the election deadline in `[2 × election_timeout, 3 × election_timeout)`.
    fn defer_election(&mut self, now: Instant) {
        self.reset_election_deadline(now);
        self.election_deadline = add(self.election_deadline, self.config.election_timeout);
    }

    /// Persist first, then the role change, then the sends.
    fn finish(&mut self, before: View, sends: Vec<Action>) -> Vec<Action> {
        let mut actions = Vec::with_capacity(sends.len() + 2);
        if self.dirty {
            self.dirty = false;
            actions.push(Action::Persist {
                term: self.term,
                voted_for: self.voted_for,
                leader: self.leader,
            });
        }
        let (role, term, leader) = before;
        if (role, term, leader) != self.view() {
            match self.role {
                SyncRole::Leader => {
                    if role != SyncRole::Leader || term != self.term {
                        info!(term = self.term, "became leader");
                        actions.push(Action::BecomeLeader { term: self.term });
                    }
                }
                SyncRole::Candidate => {
                    if role != SyncRole::Candidate || term != self.term {
                        debug!(term = self.term, "became candidate");
                        actions.push(Action::BecomeCandidate { term: self.term });
                    }
                }
                SyncRole::Follower => {
                    if role != SyncRole::Follower {
                        info!(term = self.term, leader = ?self.leader, "stepped down to follower");
                    } else {
                        debug!(term = self.term, leader = ?self.leader, "following");
                    }
                    actions.push(Action::BecomeFollower { term: self.term, leader: self.leader });
                }
            }
        }
        actions.extend(sends);
        actions
    }
}

/// `now + d`, never overflowing (durations are clamped well below the limit; on overflow the
/// deadline is `now`).
fn add(now: Instant, d: Duration) -> Instant {
    now.checked_add(d).unwrap_or(now)
}
