//! Leader election: a pure state machine, no I/O, no async; the clock and the randomness are
//! injected. The [`actor::ElectionActor`] (election/actor.rs) is its shell: it feeds it events,
//! performs the [`Action`]s it returns, in order, and calls [`Election::tick`] at
//! [`Election::next_deadline`].
//!
//! Raft's election (terms, one vote per term, randomized timeouts, "at least as up to date",
//! pre-vote, check-quorum), adapted to a library whose devices are voters or learners
//! (docs/architecture.md; Ongaro's Raft dissertation, chapters 3, 4 and §9.6).
//!
//! ```text
//!            actor (I/O)                          Election (pure)
//!  inbound RequestVote ──────────► on_vote_request ──┐
//!  inbound (pre-)vote response ──► on_vote_response  │
//!  Heartbeat / NewEntries ───────► on_leader_message │ ──► Vec<Action>, performed in order:
//!  TimeoutNow ───────────────────► on_timeout_now    │     Persist → Become* → Send*
//!  follower ack / any term seen ─► on_follower_response / observe_term
//!  timer ────────────────────────► tick              │
//!  configuration changed ────────► set_membership    │
//!  removal / demotion committed ─► resign            │
//!  log changed ──────────────────► set_last_log / set_log_floor
//!  transfer_leadership(to) ──────► transfer_leadership, on_target_caught_up
//! ```
//!
//! # What it keeps
//! - persistent: the current term, the vote cast in it (`voted_for`) and the leader known for
//!   it ([`PersistedElection`]). A device rebuilds its machine from exactly that after a restart.
//! - volatile: the [`Membership`] (voters and learners), the role ([`SyncRole`]), the last log
//!   position and the log floor, the election deadline, the pre-votes and votes collected, the
//!   last time a live leader was heard, the heartbeat and quorum deadlines of a leader and a
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
//! 3. messages to send: [`Action::SendRequestVote`] (a vote or a pre-vote request),
//!    [`Action::SendVoteResponse`], [`Action::SendHeartbeats`], [`Action::SendTimeoutNow`]; and
//!    [`Action::TransferAborted`].
//!
//! A pre-vote round changes no durable state: its requests go out without a Persist, and
//! answering one persists nothing.
//!
//! # Rules
//! - **Voters and learners**: the [`Membership`] lists the voters and the learners of the
//!   library's latest configuration (a device listed in both is a voter). Only a voter of the
//!   latest configuration (or of the previous set while it is kept, below) campaigns,
//!   pre-votes and is elected; any other device (a learner, a non-member) has no election
//!   deadline ([`Election::next_deadline`] is `None` unless it leads) and never campaigns.
//!   Learners never count in a majority: a candidate counts only the votes of the voters of
//!   its own sets, and asks only them.
//! - **Who answers a vote request**: every member of the device's latest configuration,
//!   learners included, and every voter of its previous set (below) answers a vote or a
//!   pre-vote by the rules below, whoever the candidate is. A device that is neither (it
//!   knows it was removed, or never was a member) refuses with its own term, changing nothing
//!   and persisting nothing. Neither Raft nor etcd asks whether the candidate or the voter is
//!   a voter in the voter's own configuration: the candidate's rule decides whose votes count
//!   and each device votes at most once per term, which is what keeps one leader per term. A
//!   device behind does not know yet that the candidate, or itself, was promoted: a learner
//!   promoted while it was unreachable is asked by candidates that count it, and refusing
//!   them could leave no electable candidate with every voter of the committed configuration
//!   up (found by the simulator; etcd's raft lets learners vote for the same reason).
//! - **Election rule of a set of voters**: with three or more voters, a majority of them
//!   (`voters / 2 + 1`). With one or two voters, the two-device rule: either device may be
//!   elected alone, by its own vote — but with two voters that would let both win the same
//!   term, so each owns half of the terms: the lower uuid of the two *voters* wins only in even
//!   terms, the higher in odd ones (a sole voter owns every term). So with one or two voters a
//!   candidate that is one of them needs its own vote in a term it owns *within that set*,
//!   and a candidate that is not needs the votes of all of them. Only votes of the set's own
//!   voters count, the candidate's own included. Learners do not shift the parity, so adding
//!   or removing one never changes which terms a voter owns.
//! - **Elections during a voter change** ([`Membership::with_previous`]): configurations differ
//!   between devices while a change propagates. E.g. A and C hold {A,B,C} (appended by A, not
//!   yet on B) while B still uses {A,B}: under "the latest configuration of the log" alone,
//!   A and C could elect a leader of term t while B wins t alone under {A,B}. So next to its
//!   latest voters a device keeps the voters before the last voter change of its log, as long
//!   as it does not know that change is committed (the actor learns commits from the leader's
//!   messages), and while it keeps them a candidate and a pre-candidate win only if they
//!   satisfy the election rule of **both** sets (votes of each set's own voters counting for
//!   that set). A device campaigns if it is a voter of either set (it still counts in the
//!   previous one: a leader that removed or demoted itself and was deposed before that
//!   committed may hold the only log that can be elected, found by the simulator), asks every
//!   voter of either set, and campaigns in a term it owns in every two-voter set it belongs
//!   to. With single-voter changes two such sets cannot both have two voters, so the
//!   parities never conflict; if they did (the sets came from elsewhere), no term would be its
//!   own in both and the device does not campaign. A voter of the previous set only (a device
//!   that holds its own removal, not known committed) still answers vote requests: the
//!   candidates it counts for need it. Check quorum uses the latest set alone (it is about
//!   liveness, not safety). The price: a device that holds a voter change without knowing it
//!   committed needs a majority of the voters before it too, and some of those may be out of
//!   reach. E.g. {A,B,C,D} becomes {A,B,C}, committed by A with D, both of which learn the
//!   commit: with A down, B and C (which did not) also need three of {A,B,C,D}, and D, which
//!   knows it was removed, no longer votes: no leader until A returns. Plain Raft would elect
//!   B or C there; this rule trades that for the two-voter cases above.
//! - **Term 1 belongs to the creator** of the library ([`PersistedElection::founder`]); elections
//!   start at term 2, so a member that has not yet heard of the creator never competes for it.
//! - **Election timeout**: a voter that hears no leader message for a deadline drawn uniformly
//!   in `[election_timeout, 2 × election_timeout)` (redrawn at every reset) runs a pre-vote
//!   round (below); a candidate whose deadline passes does the same, for the term after its
//!   own. The sole voter of a library campaigns at its first tick and wins alone, learners or
//!   not.
//! - **Pre-vote** (dissertation §9.6): when its deadline passes, a voter redraws it and asks
//!   every other voter (of the latest and the previous set) whether it *would* be elected:
//!   [`Action::SendRequestVote`] with `pre_vote: true`, the term it would campaign in and its
//!   last log position, without changing its term, its vote or its role. A device grants a
//!   pre-vote iff the request's term is above its own, the candidate's log is at least as up
//!   to date as its own (with the log floor, below) and it hears no live leader (unless
//!   `transfer`); granting or refusing changes nothing on it (no Persist, no term, no deadline
//!   reset). A granted pre-vote answers with the term it was asked for, a refused one with the
//!   device's own term. Pre-votes granted for the round's term, its own included, that satisfy
//!   the election rule (of both sets while a previous one is kept) start the real election at
//!   once (so a device that wins alone goes straight to it): next term, Persist,
//!   [`Action::BecomeCandidate`], vote for itself, vote requests to every other voter of
//!   either set. A refused pre-vote carrying a term above the pre-candidate's makes it adopt
//!   that term, which abandons the round; a granted pre-vote for another term than the
//!   round's (an abandoned round, an older term) is ignored. If its next deadline passes
//!   first, the device starts a new round, its term unchanged: a device that cannot win
//!   (partitioned, asleep, just restarted, behind) never bumps a term.
//! - **Vote**: a device grants its vote iff the request's term is not older than its own, it
//!   has not voted for another candidate in that term, the candidate's last log `(term,
//!   sequence)` is at least its own (term first, then sequence; with the log floor, below),
//!   and it hears no live leader (below). A newer term is adopted first (step down to
//!   follower, no vote, no leader). A grant resets the device's election deadline. Responses
//!   carry the device's term. A candidate wins when the votes it holds satisfy the election
//!   rule (of both sets while a previous one is kept).
//! - **Log floor** ([`Election::set_log_floor`], default zero): a device whose log ends below
//!   its floor (a device rebuilding its library) never campaigns nor pre-votes, and it compares
//!   a candidate's log with `max(last_log, floor)`, so it never votes for a candidate behind
//!   what it once held.
//! - **Yielding to a better candidate**: a device that cannot vote for a candidate whose log is
//!   strictly more up to date than its own (because it already voted, typically for itself, in
//!   that term) defers its next campaign to `[2 × election_timeout, 3 × election_timeout)`.
//!   Without this, a device with a stale log that times out at about the same moment as the
//!   only device it could lose to splits the vote round after round (found by the simulator).
//! - **Leader stickiness**: a follower that heard its leader less than `election_timeout` ago,
//!   and a leader itself, refuse a vote request or a pre-vote *and leave their term unchanged*,
//!   unless the request is a leadership transfer (`transfer: true`). Unlike the plain rule
//!   "adopt any newer term", this keeps a device that returns from a partition with an inflated
//!   term from deposing a healthy leader (Raft thesis §4.2.3); that device learns the leader's
//!   term from its heartbeats or is deposed through the leader's responses, see
//!   [`Election::on_follower_response`].
//! - **Fencing**: any message carrying a newer term makes a candidate or a leader step down at
//!   once ([`Action::BecomeFollower`] with `leader: None`). A leader message (Heartbeat,
//!   NewEntries) of an older term is refused: [`LeaderVerdict::Stale`]. As in Raft, a leader
//!   message of the current or a newer term is accepted whoever sends it, member of this
//!   device's configuration or not: a device whose log is behind may not know its leader yet
//!   (one added while it was down, whose configuration entry it lacks), and refusing it would
//!   keep that device behind for good (found by the simulator); a demoted or removed leader
//!   leads until its change commits. A device that is not a voter cannot win an election (see
//!   the vote rules), so no leader message comes from a leader that was not elected;
//!   keeping removed devices out is the transport's allow-list's job.
//! - **Leader**: on winning it emits [`Action::BecomeLeader`] and [`Action::SendHeartbeats`],
//!   then one [`Action::SendHeartbeats`] per `heartbeat_interval` from [`Election::tick`].
//!   A machine rebuilt with a persisted leader equal to itself resumes leading that term —
//!   which a restarted device never is if it led that term before: it starts from
//!   [`PersistedElection::restarted`], a follower of its term with no leader, and campaigns
//!   for a new term (docs/architecture.md, "Terms and votes on disk").
//! - **Check quorum** ([`ElectionConfig::check_quorum`], on by default): with three or more
//!   voters, a leader that has not heard from a majority of the voters (itself included if it
//!   is one, through [`Election::on_follower_response`]; contact from learners does not count)
//!   during an `election_timeout` steps down. With one or two voters it does nothing: the
//!   two-device rule lets either device lead alone, so a leader cut off from the other voter
//!   keeps leading — unless the leader is not a voter of its latest configuration (it removed
//!   or demoted itself): then it checks the quorum whatever the number of voters.
//! - **Leadership transfer**: [`Election::transfer_leadership`] on the leader records the target,
//!   which must be a voter; the actor brings the target up to date and then calls
//!   [`Election::on_target_caught_up`], which emits [`Action::SendTimeoutNow`]. The target
//!   ([`Election::on_timeout_now`]) starts the real election at once, without a pre-vote, with
//!   `transfer: true`, which voters grant despite hearing a live leader. While
//!   [`Election::is_transferring`], the actor should hold new writes. The transfer ends with a
//!   [`Action::BecomeFollower`] (the leadership moved, or the leader was deposed) or with
//!   [`Action::TransferAborted`] when `transfer_timeout` passes first or the target stops
//!   being a voter.
//! - **Membership changes** ([`Election::set_membership`]) take effect at once (the actor passes
//!   the latest configuration of its log, applied or not, as Raft does, with the previous
//!   voters while the last voter change is not known to be committed, and passes it again
//!   without them once it learns that commit). A candidate whose votes satisfy the rule under
//!   the new membership wins; a candidate that is a voter of neither set steps down; a
//!   follower that stops being one loses its election deadline, one that becomes one draws a
//!   fresh one. A leader that the new membership does not list as a
//!   voter keeps leading (Raft keeps it managing the change until the change commits); the
//!   actor calls [`Election::resign`] once the configuration that removed or demoted it is
//!   committed. The leader changes voters one at a time, a change only once the previous one
//!   and its own first entry of its term are committed (actors/src/leader/membership.rs), so that
//!   the rules of consecutive configurations, taken together as above, never elect two
//!   leaders of one term (checked by the simulator, election/sim.rs, with every device
//!   deriving its configuration from its own log).
//!
//! Nothing here panics on any input: a term never goes above [`MAX_TERM`] (docs/protocol.md
//! §6): a message carrying a larger one is never adopted (the term rule finds it stale), and a
//! device whose next campaign term would exceed it stops campaigning and says why (term
//! arithmetic saturates, so it is never computed past it); timers are clamped, and messages from
//! non-members or from this device itself are refused.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use lsync_protocol::{SyncRole, MAX_TERM};
use lsync_storage::LogPosition;
use rand::Rng;
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::config::SyncConfig;
use crate::fencing::{fence, Verdict};

pub mod actor;
pub mod clock;
pub mod lease;
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
    /// it is also the leader-stickiness window of the vote rule and the check-quorum window.
    pub election_timeout: Duration,
    /// How long a leadership transfer may take (catch-up and election) before it is aborted.
    pub transfer_timeout: Duration,
    /// With three or more voters, a leader steps down when it has not heard from a majority of
    /// the voters for an `election_timeout`. Does nothing with one or two voters.
    pub check_quorum: bool,
}

impl ElectionConfig {
    /// The given timers; the transfer timeout equals the election timeout; check quorum on.
    pub fn new(heartbeat_interval: Duration, election_timeout: Duration) -> Self {
        Self {
            heartbeat_interval,
            election_timeout,
            transfer_timeout: election_timeout,
            check_quorum: true,
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
    /// The defaults of docs/operations.md: heartbeat 30 s, leader timeout 60 s; check quorum on.
    fn default() -> Self {
        Self::new(Duration::from_secs(30), Duration::from_secs(60))
    }
}

/// Who takes part in the library's elections: the voters, and the learners that receive the
/// log but never campaign, vote or count in a majority. A device in both sets is a voter.
///
/// It also keeps the *previous voters*: the voters before the last voter change of the
/// device's log, while the device does not know that change is committed (see the module
/// documentation, "Elections during a voter change"). Campaigning, granting votes, leader
/// messages and check quorum use the latest voters; winning needs the rule of both sets.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Membership {
    voters: BTreeSet<Uuid>,
    learners: BTreeSet<Uuid>,
    previous: Option<BTreeSet<Uuid>>,
}

impl Membership {
    /// The given voters and learners (a device listed in both is a voter only), no previous
    /// voters.
    pub fn new(voters: BTreeSet<Uuid>, learners: BTreeSet<Uuid>) -> Self {
        let learners = learners.difference(&voters).copied().collect();
        Self { voters, learners, previous: None }
    }

    /// Every device of `members` a voter, no learner, no previous voters.
    pub fn all_voters(members: impl IntoIterator<Item = Uuid>) -> Self {
        Self::new(members.into_iter().collect(), BTreeSet::new())
    }

    /// The same membership with `previous` as the voters before the last voter change, which
    /// this device does not know to be committed (`None`: it knows, or there was none). An
    /// empty set, or one equal to the latest voters, is no previous set.
    pub fn with_previous(mut self, previous: Option<BTreeSet<Uuid>>) -> Self {
        self.previous = previous.filter(|p| !p.is_empty() && *p != self.voters);
        self
    }

    /// The voters (of the latest configuration).
    pub fn voters(&self) -> &BTreeSet<Uuid> {
        &self.voters
    }

    /// The learners (never a voter).
    pub fn learners(&self) -> &BTreeSet<Uuid> {
        &self.learners
    }

    /// The voters before the last voter change, while it is not known to be committed.
    pub fn previous_voters(&self) -> Option<&BTreeSet<Uuid>> {
        self.previous.as_ref()
    }

    /// Whether `device` is a voter (of the latest configuration).
    pub fn is_voter(&self, device: &Uuid) -> bool {
        self.voters.contains(device)
    }

    /// Whether `device` is a voter or a learner (of the latest configuration).
    pub fn is_member(&self, device: &Uuid) -> bool {
        self.voters.contains(device) || self.learners.contains(device)
    }

    /// Whether `device` is a voter of the latest or of the previous voters: whose votes a
    /// candidate may need, and whose leader messages are followed.
    pub fn is_elector(&self, device: &Uuid) -> bool {
        self.voters.contains(device) || self.previous.as_ref().is_some_and(|p| p.contains(device))
    }

    /// Votes needed to win under the latest voters alone: `voters / 2 + 1`, and 1 for one or
    /// two voters (the two-device rule). For status; [`Membership::wins`] decides elections.
    pub fn majority(&self) -> usize {
        match self.voters.len() {
            0..=2 => 1,
            n => n / 2 + 1,
        }
    }

    /// Whether `candidate`, holding the (pre-)votes `votes` (its own included if it voted for
    /// itself) in `term`, satisfies the election rule of the latest voters and, if present, of
    /// the previous voters (see the module documentation).
    pub fn wins(&self, candidate: Uuid, term: u64, votes: &BTreeSet<Uuid>) -> bool {
        set_rule(&self.voters, candidate, term, votes)
            && self.previous.as_ref().is_none_or(|p| set_rule(p, candidate, term, votes))
    }

    /// The parity `device`'s terms must have, or `None` when any term will do; `Err(())` when
    /// the two-voter sets it belongs to give it different parities (no term satisfies both).
    fn parity_of(&self, device: &Uuid) -> Result<Option<u64>, ()> {
        let mut parity = None;
        for set in std::iter::once(&self.voters).chain(&self.previous) {
            if let Some(p) = own_parity(set, device) {
                match parity {
                    Some(q) if q != p => return Err(()),
                    _ => parity = Some(p),
                }
            }
        }
        Ok(parity)
    }
}

/// The parity of the terms `device` owns in the two-voter set `set` (its rank among the sorted
/// voters), `None` if `set` has not two voters or `device` is not one of them.
fn own_parity(set: &BTreeSet<Uuid>, device: &Uuid) -> Option<u64> {
    if set.len() != 2 {
        return None;
    }
    set.iter().position(|v| v == device).map(|rank| rank as u64)
}

/// The election rule of one set of voters: with one or two voters, the candidate's own vote in
/// a term it owns if it is one of them (any term with one voter, its parity with two), else
/// the votes of all of them; with three or more, a majority of them. Only votes of `set`'s
/// voters count; an empty set elects nobody.
fn set_rule(set: &BTreeSet<Uuid>, candidate: Uuid, term: u64, votes: &BTreeSet<Uuid>) -> bool {
    match set.len() {
        0 => false,
        1 | 2 if set.contains(&candidate) => {
            votes.contains(&candidate) && own_parity(set, &candidate).is_none_or(|p| term % 2 == p)
        }
        1 | 2 => set.iter().all(|v| votes.contains(v)),
        n => votes.iter().filter(|v| set.contains(v)).count() > n / 2,
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

    /// The state device `me` starts in after a restart. `led_before`: this device already ran
    /// as leader of this state's term (its election record names it leader of that term, see
    /// [`actor::start_state`]). Such a device never leads that term again: it comes back a
    /// follower of the term with no leader known (its vote kept), and campaigns for a new term
    /// if it must lead. Entries it wrote in that term may be gone from its disk (a power loss
    /// under `synchronous = NORMAL`, a restored backup) while other devices hold them; leading
    /// the term again would write other entries at the same (sequence, term), and a follower
    /// would take them for the ones it holds. Any other state comes back as it is — a
    /// leadership that began outside the election (the creator's term 1, a forced
    /// reconfiguration) is resumed at its first start.
    pub fn restarted(self, me: Uuid, led_before: bool) -> Self {
        if led_before && self.leader == Some(me) {
            Self { leader: None, ..self }
        } else {
            self
        }
    }
}

/// A candidate's request for a vote, or a pre-candidate's question whether it would get one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VoteRequest {
    /// The term the candidate campaigns in (for a pre-vote: the term it would campaign in).
    pub term: u64,
    /// The candidate.
    pub candidate: Uuid,
    /// The term of the candidate's last log entry (0 for an empty log).
    pub last_log_term: u64,
    /// The sequence of the candidate's last log entry (0 for an empty log).
    pub last_log_sequence: u64,
    /// A leadership transfer: granted even by devices that hear a live leader.
    pub transfer: bool,
    /// A pre-vote: would the vote be granted in `term`? Nobody changes its term or its vote
    /// for it.
    pub pre_vote: bool,
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
    /// The voter's current term (after handling the request); for a *granted pre-vote*, the
    /// term the pre-vote was asked for (above the voter's own), so that the pre-candidate can
    /// tell it from an answer to an older round.
    pub term: u64,
    /// The voter.
    pub voter: Uuid,
    /// Whether the vote (or pre-vote) is granted.
    pub granted: bool,
    /// An answer to a pre-vote (echoes the request's).
    pub pre_vote: bool,
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
    /// Send a vote request (or a pre-vote request: `request.pre_vote`) to `to`.
    SendRequestVote {
        /// The voter asked.
        to: Uuid,
        /// The request.
        request: VoteRequest,
    },
    /// Answer the vote or pre-vote request of `to` (every [`Election::on_vote_request`]
    /// returns exactly one, last).
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
    /// The transfer to `to` did not complete in time (or `to` is no longer a voter); keep
    /// leading and accept writes again.
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
    /// Ignore the message: its sender is this device, or claims a term whose leader is someone
    /// else.
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
    /// The target is a learner of the library: only a voter may lead.
    #[error("{0} is a learner, not a voter, of the library")]
    NotAVoter(Uuid),
}

/// Why a device has no term to campaign in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
enum NoTerm {
    /// The next term would be above [`MAX_TERM`], the highest a device may reach.
    #[error("the term space is exhausted (the next term would be above the highest term)")]
    Exhausted,
    /// Two two-voter sets this device belongs to give it different parities.
    #[error("no term is this device's own in both of its two-voter sets")]
    Parities,
}

#[derive(Debug, Clone, Copy)]
struct Transfer {
    to: Uuid,
    deadline: Instant,
}

/// A pre-vote round in progress: the term asked for and the voters that granted it.
#[derive(Debug, Clone)]
struct PreVote {
    term: u64,
    granted: BTreeSet<Uuid>,
}

/// The election state machine of one device for one library.
#[derive(Debug, Clone)]
pub struct Election<R> {
    me: Uuid,
    membership: Membership,
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
    log_floor: LogPosition,
    election_deadline: Instant,
    /// When the leader of the current term was last heard (followers only).
    leader_contact: Option<Instant>,
    /// The pre-vote round in progress, if any (followers and candidates only).
    pre_vote: Option<PreVote>,
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
    /// deadline (none for a learner or a non-member). The sole voter of a library campaigns (and
    /// wins) at its first tick. Call [`Election::tick`] right away: a resumed leader heartbeats
    /// at once.
    pub fn new(
        me: Uuid,
        membership: Membership,
        persisted: PersistedElection,
        config: ElectionConfig,
        now: Instant,
        rng: R,
    ) -> Self {
        let config = config.clamped();
        let role = if persisted.leader == Some(me) { SyncRole::Leader } else { SyncRole::Follower };
        let mut election = Self {
            me,
            membership,
            config,
            rng,
            term: persisted.term,
            voted_for: persisted.voted_for,
            leader: persisted.leader,
            dirty: false,
            role,
            last_log: LogPosition::default(),
            log_floor: LogPosition::default(),
            election_deadline: now,
            leader_contact: None,
            pre_vote: None,
            votes: BTreeSet::new(),
            heartbeat_deadline: now,
            quorum_deadline: add(now, config.election_timeout),
            active: BTreeSet::new(),
            transfer: None,
        };
        if !election.is_sole_voter() {
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

    /// The library's voters and learners, as this device knows them.
    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// Votes needed to win under the latest voters alone: `voters / 2 + 1`, and 1 for one or
    /// two voters (see [`Membership::majority`]; [`Membership::wins`] decides).
    pub fn majority(&self) -> usize {
        self.membership.majority()
    }

    /// The last log position the actor reported.
    pub fn last_log(&self) -> LogPosition {
        self.last_log
    }

    /// The log floor the actor set (zero by default).
    pub fn log_floor(&self) -> LogPosition {
        self.log_floor
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

    /// The term the pre-vote round in progress asks for, if one is.
    pub fn pre_vote_term(&self) -> Option<u64> {
        self.pre_vote.as_ref().map(|p| p.term)
    }

    /// When [`Election::tick`] must be called next (`None`: no timer, this device is a learner
    /// or not a member of its library and does not lead).
    pub fn next_deadline(&self) -> Option<Instant> {
        match self.role {
            SyncRole::Leader => {
                let mut next = self.heartbeat_deadline;
                if self.checks_quorum() {
                    next = next.min(self.quorum_deadline);
                }
                if let Some(t) = self.transfer {
                    next = next.min(t.deadline);
                }
                Some(next)
            }
            SyncRole::Follower | SyncRole::Candidate => {
                self.membership.is_elector(&self.me).then_some(self.election_deadline)
            }
        }
    }

    /// Drives the timers: starts a pre-vote round when the election deadline has passed, emits
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
                if self.checks_quorum() && now >= self.quorum_deadline {
                    let heard = self
                        .active
                        .iter()
                        .filter(|m| **m != self.me && self.membership.is_voter(m))
                        .count()
                        + usize::from(self.membership.is_voter(&self.me));
                    self.active.clear();
                    self.quorum_deadline = add(now, self.config.election_timeout);
                    if heard < self.majority() {
                        warn!(
                            term = self.term,
                            heard, "no majority of voters heard, stepping down"
                        );
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
                if self.membership.is_elector(&self.me) && now >= self.election_deadline {
                    if self.role == SyncRole::Follower {
                        debug!(term = self.term, "no leader heard, asking for pre-votes");
                    }
                    self.start_pre_vote(now, &mut sends);
                }
            }
        }
        self.finish(before, sends)
    }

    /// The actor's log now ends at `last` (sent in vote requests, compared with candidates').
    pub fn set_last_log(&mut self, last: LogPosition) {
        self.last_log = last;
    }

    /// The log position this device once held (zero by default): while its log ends below it,
    /// the device never campaigns nor pre-votes, and it compares candidates' logs with
    /// `max(last_log, floor)`.
    pub fn set_log_floor(&mut self, floor: LogPosition) {
        self.log_floor = floor;
    }

    /// The library's configuration changed (the latest one of the log, applied or not). A
    /// transfer to a device that is no longer a voter is aborted; a candidate that now holds a
    /// majority wins, one that is a voter of neither set steps down; a leader keeps leading
    /// whatever its new role (see [`Election::resign`]); a follower that stops being a voter of
    /// either set loses its election deadline, one that becomes one draws a fresh one, and the
    /// sole voter campaigns at its next tick. A pre-vote round in progress is abandoned.
    pub fn set_membership(&mut self, membership: Membership, now: Instant) -> Vec<Action> {
        let before = self.view();
        let mut sends = Vec::new();
        let was_voter = self.membership.is_elector(&self.me);
        let was_checking = self.checks_quorum();
        self.membership = membership;
        self.pre_vote = None;
        if let Some(t) = self.transfer {
            if !self.membership.is_voter(&t.to) {
                self.transfer = None;
                sends.push(Action::TransferAborted { to: t.to });
            }
        }
        let voter = self.membership.is_elector(&self.me);
        match self.role {
            SyncRole::Leader => {
                if self.membership.previous.is_none() && !self.membership.is_voter(&self.me) {
                    warn!(term = self.term, "no longer a voter; leading until the change commits");
                }
                if !was_checking && self.checks_quorum() {
                    // A fresh window: contact heard with fewer voters proves nothing now.
                    self.active.clear();
                    self.quorum_deadline = add(now, self.config.election_timeout);
                }
            }
            SyncRole::Candidate if !voter => {
                warn!(term = self.term, "no longer a voter, stepping down");
                self.step_down(now);
            }
            SyncRole::Candidate if self.has_majority() => self.become_leader(now, &mut sends),
            SyncRole::Candidate | SyncRole::Follower => {}
        }
        if self.role != SyncRole::Leader && voter {
            if self.is_sole_voter() {
                self.election_deadline = now;
            } else if !was_voter {
                self.reset_election_deadline(now);
            }
        }
        self.finish(before, sends)
    }

    /// This leader steps down (no leader known for its term any more): the actor calls it once
    /// the configuration that removed or demoted it is committed. Does nothing on a device that
    /// does not lead.
    pub fn resign(&mut self, now: Instant) -> Vec<Action> {
        if self.role != SyncRole::Leader {
            return Vec::new();
        }
        let before = self.view();
        info!(term = self.term, "resigning the leadership");
        self.step_down(now);
        self.set_leader(None);
        self.finish(before, Vec::new())
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

    /// A vote request or a pre-vote request. The returned actions always end with exactly one
    /// [`Action::SendVoteResponse`] to the candidate, preceded by the [`Action::Persist`] (and
    /// step down) it depends on; a pre-vote returns the response alone.
    pub fn on_vote_request(&mut self, request: VoteRequest, now: Instant) -> Vec<Action> {
        let candidate = request.candidate;
        let refuse = |term| Action::SendVoteResponse {
            to: candidate,
            response: VoteResponse {
                term,
                voter: self.me,
                granted: false,
                pre_vote: request.pre_vote,
            },
        };
        if candidate == self.me
            || !(self.membership.is_member(&self.me) || self.membership.is_elector(&self.me))
        {
            debug!(%candidate, term = request.term, "vote refused, not a member");
            return vec![refuse(self.term)];
        }
        if request.pre_vote {
            return vec![self.answer_pre_vote(request, now)];
        }
        if self.fence(request.term) == Verdict::Stale {
            return vec![refuse(self.term)];
        }
        if !request.transfer && self.hears_live_leader(now) {
            debug!(%candidate, term = request.term, "vote refused, a live leader is heard");
            return vec![refuse(self.term)];
        }
        let before = self.view();
        self.adopt_term(request.term, now);
        let own = self.log_reference();
        let free = self.voted_for.is_none() || self.voted_for == Some(candidate);
        let up_to_date = request.last_log() >= own;
        let granted = free && up_to_date;
        if granted {
            if self.voted_for != Some(candidate) {
                self.voted_for = Some(candidate);
                self.dirty = true;
            }
            self.reset_election_deadline(now);
            debug!(%candidate, term = self.term, "vote granted");
        } else {
            debug!(%candidate, term = self.term, free, up_to_date, "vote refused");
            if !free && request.last_log() > own && self.role != SyncRole::Leader {
                // A better candidate we cannot vote for this term: let it campaign first next
                // time, or we split the votes again and again.
                self.defer_election(now);
            }
        }
        let response = VoteResponse { term: self.term, voter: self.me, granted, pre_vote: false };
        self.finish(before, vec![Action::SendVoteResponse { to: candidate, response }])
    }

    /// A response to this device's vote or pre-vote request. A newer term in a vote or in a
    /// refused pre-vote makes it adopt that term (a candidate or leader steps down, a pre-vote
    /// round is abandoned); a granted vote of the current term counts while campaigning, a
    /// granted pre-vote for the round's term while pre-voting, each from a voter only. A
    /// majority of votes makes it leader; a majority of pre-votes starts the real election.
    pub fn on_vote_response(&mut self, response: VoteResponse, now: Instant) -> Vec<Action> {
        let before = self.view();
        let mut sends = Vec::new();
        let from_voter = response.voter != self.me && self.membership.is_elector(&response.voter);
        if response.pre_vote {
            if !response.granted {
                self.adopt_term(response.term, now);
            } else if let Some(round) = self.pre_vote.as_mut() {
                // A grant for another term answers an abandoned round: ignored.
                if response.term == round.term && from_voter {
                    round.granted.insert(response.voter);
                    if self.pre_vote_won() {
                        debug!(term = self.term, "pre-vote won, campaigning");
                        self.start_election(now, false, &mut sends);
                    }
                }
            }
        } else if self.fence(response.term).is_newer() {
            self.adopt_term(response.term, now);
        } else if self.role == SyncRole::Candidate
            && self.fence(response.term) == Verdict::Current
            && response.granted
            && from_voter
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
    /// contact for the check quorum (from a voter only).
    pub fn on_follower_response(&mut self, from: Uuid, term: u64, now: Instant) -> Vec<Action> {
        if self.fence(term).is_newer() {
            return self.observe_term(term, now);
        }
        if self.role == SyncRole::Leader
            && self.fence(term) == Verdict::Current
            && from != self.me
            && self.membership.is_member(&from)
        {
            // Kept for learners too: one promoted before the check counts then.
            self.active.insert(from);
        }
        Vec::new()
    }

    /// Any other message carrying a term (e.g. a NotLeader answer): a newer term is adopted at
    /// once and a candidate or leader steps down.
    pub fn observe_term(&mut self, term: u64, now: Instant) -> Vec<Action> {
        if !self.fence(term).is_newer() {
            return Vec::new();
        }
        let before = self.view();
        self.adopt_term(term, now);
        self.finish(before, Vec::new())
    }

    /// The leader `from` tells this device, the target of a transfer, to campaign now. Accepted
    /// like a leader message of `term`, then the real election starts at once (no pre-vote)
    /// with `transfer: true` — unless this device cannot campaign (not a voter, log below its
    /// floor). Ignored when refused as a leader message.
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

    /// Starts handing leadership over to `to`, a voter (replacing a transfer in progress). The
    /// actor brings `to` up to date, then calls [`Election::on_target_caught_up`].
    pub fn transfer_leadership(&mut self, to: Uuid, now: Instant) -> Result<(), TransferError> {
        if self.role != SyncRole::Leader {
            return Err(TransferError::NotLeader { leader: self.leader });
        }
        if to == self.me {
            return Err(TransferError::ToSelf);
        }
        if !self.membership.is_member(&to) {
            return Err(TransferError::NotAMember(to));
        }
        if !self.membership.is_voter(&to) {
            return Err(TransferError::NotAVoter(to));
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

    fn is_sole_voter(&self) -> bool {
        self.membership.voters.len() == 1 && self.membership.is_voter(&self.me)
    }

    /// Check quorum is meaningful with three or more voters (the two-device rule lets either of
    /// two voters lead alone) — and always for a leader that is not a voter of its latest
    /// configuration (removed or demoted): it leads only to commit that change, and the voters
    /// that applied it refuse it, so it may never hear that the change committed. Without this
    /// a removed leader of a two-voter configuration led its old term for good, unheard (seen
    /// in the integration test of a leader removing itself, about one run in six).
    fn checks_quorum(&self) -> bool {
        self.config.check_quorum
            && (self.membership.voters.len() >= 3 || !self.membership.is_voter(&self.me))
    }

    /// Whether this device may campaign or pre-vote: a voter (of the latest set, or of the
    /// previous one while it is kept) whose log is not below its floor.
    fn can_campaign(&self) -> bool {
        self.membership.is_elector(&self.me) && self.last_log >= self.log_floor
    }

    /// The log position candidates' logs are compared with.
    fn log_reference(&self) -> LogPosition {
        self.last_log.max(self.log_floor)
    }

    /// Whether the votes collected win the current term (the rule of both sets).
    fn has_majority(&self) -> bool {
        self.membership.wins(self.me, self.term, &self.votes)
    }

    /// Whether the pre-votes granted would win the round's term (the rule of both sets).
    fn pre_vote_won(&self) -> bool {
        self.pre_vote
            .as_ref()
            .is_some_and(|round| self.membership.wins(self.me, round.term, &round.granted))
    }

    /// The devices asked for (pre-)votes: every voter of the latest and of the previous
    /// voters, but this device.
    fn electors(&self) -> Vec<Uuid> {
        let previous = self.membership.previous.iter().flatten();
        let all: BTreeSet<Uuid> = self.membership.voters.iter().chain(previous).copied().collect();
        all.into_iter().filter(|m| *m != self.me).collect()
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

    /// The answer to a pre-vote of a voter (checked by the caller): changes nothing here.
    fn answer_pre_vote(&self, request: VoteRequest, now: Instant) -> Action {
        let newer = self.fence(request.term).is_newer();
        let up_to_date = request.last_log() >= self.log_reference();
        let live_leader = !request.transfer && self.hears_live_leader(now);
        let granted = newer && up_to_date && !live_leader;
        debug!(
            candidate = %request.candidate,
            term = request.term,
            granted,
            newer,
            up_to_date,
            live_leader,
            "pre-vote answered"
        );
        let term = if granted { request.term } else { self.term };
        Action::SendVoteResponse {
            to: request.candidate,
            response: VoteResponse { term, voter: self.me, granted, pre_vote: true },
        }
    }

    /// Whether a leader message from `from` in `term` is to be followed.
    fn check_leader(&self, from: Uuid, term: u64) -> LeaderVerdict {
        if from == self.me {
            return LeaderVerdict::Refused;
        }
        if self.fence(term) == Verdict::Stale {
            return LeaderVerdict::Stale { current_term: self.term, leader: self.leader };
        }
        if self.fence(term) == Verdict::Current
            && (self.role == SyncRole::Leader || self.leader.is_some_and(|l| l != from))
        {
            warn!(%from, term, leader = ?self.leader, "second leader claims the term, ignored");
            return LeaderVerdict::Refused;
        }
        LeaderVerdict::Accepted
    }

    /// Follows `from` as leader of `term` (checked by `check_leader`).
    fn follow(&mut self, from: Uuid, term: u64, now: Instant) {
        self.adopt_term(term, now);
        if self.role != SyncRole::Follower {
            self.step_down(now);
        }
        self.set_leader(Some(from));
        self.leader_contact = Some(now);
        self.pre_vote = None;
        self.reset_election_deadline(now);
    }

    /// Moves to the newer `term`: no vote, no leader, no pre-vote round; a candidate or leader
    /// steps down.
    fn adopt_term(&mut self, term: u64, now: Instant) {
        let Verdict::Newer { step_down } = self.fence(term) else { return };
        debug!(from = self.term, to = term, "newer term");
        self.term = term;
        self.voted_for = None;
        self.leader = None;
        self.dirty = true;
        self.leader_contact = None;
        self.votes.clear();
        self.pre_vote = None;
        if step_down {
            self.step_down(now);
        }
    }

    /// The term rule ([`fence`]) for a message of `term`, in this device's role and term.
    fn fence(&self, term: u64) -> Verdict {
        fence(self.role, term, self.term)
    }

    fn step_down(&mut self, now: Instant) {
        self.role = SyncRole::Follower;
        self.transfer = None;
        self.votes.clear();
        self.pre_vote = None;
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
    /// creator's), and one of this device's own terms in every two-voter set it belongs to,
    /// latest or previous (its rank among the sorted voters of the set gives the parity;
    /// learners do not count). An error when that term would be above [`MAX_TERM`] (never
    /// computed past it: the addition saturates) or two such sets give it different parities
    /// (no term is its own in both).
    fn next_campaign_term(&self) -> Result<u64, NoTerm> {
        let mut term = self.term.saturating_add(1).max(2);
        let parity = self.membership.parity_of(&self.me).map_err(|()| NoTerm::Parities)?;
        if parity.is_some_and(|p| term % 2 != p) {
            term = term.saturating_add(1);
        }
        if term > MAX_TERM {
            return Err(NoTerm::Exhausted);
        }
        Ok(term)
    }

    /// Redraws the election deadline and asks every other voter for a pre-vote for the next
    /// campaign term; with one or two voters (or any majority reached alone) the real election
    /// starts at once.
    fn start_pre_vote(&mut self, now: Instant, sends: &mut Vec<Action>) {
        self.reset_election_deadline(now);
        self.pre_vote = None;
        if !self.can_campaign() {
            debug!(last_log = %self.last_log, floor = %self.log_floor, "not campaigning");
            return;
        }
        let term = match self.next_campaign_term() {
            Ok(term) => term,
            Err(why) => {
                warn!(term = self.term, max_term = MAX_TERM, "not campaigning: {why}");
                return;
            }
        };
        self.pre_vote = Some(PreVote { term, granted: BTreeSet::from([self.me]) });
        if self.pre_vote_won() {
            self.start_election(now, false, sends);
            return;
        }
        let request = VoteRequest {
            term,
            candidate: self.me,
            last_log_term: self.last_log.term,
            last_log_sequence: self.last_log.sequence,
            transfer: false,
            pre_vote: true,
        };
        for to in self.electors() {
            sends.push(Action::SendRequestVote { to, request });
        }
    }

    /// The real election: next campaign term, vote for itself, vote requests to every other
    /// voter.
    fn start_election(&mut self, now: Instant, transfer: bool, sends: &mut Vec<Action>) {
        self.reset_election_deadline(now);
        self.pre_vote = None;
        if !self.can_campaign() {
            return;
        }
        let term = match self.next_campaign_term() {
            Ok(term) => term,
            Err(why) => {
                warn!(term = self.term, max_term = MAX_TERM, "not campaigning: {why}");
                return;
            }
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
            pre_vote: false,
        };
        for to in self.electors() {
            sends.push(Action::SendRequestVote { to, request });
        }
    }

    fn become_leader(&mut self, now: Instant, sends: &mut Vec<Action>) {
        self.role = SyncRole::Leader;
        self.set_leader(Some(self.me));
        self.votes.clear();
        self.pre_vote = None;
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
