//! The leader's side of replicated membership, as pure decisions: no I/O, no async. It owns
//! three things (docs/architecture.md, "Membership"):
//!
//! - [`CommitTracker`], one per leadership: which acknowledgements count, and the leader's
//!   `commit_sequence` under Raft's commit rule (a majority of voters, the current term only,
//!   Figure 8), with both majorities required while a configuration change is pending.
//! - [`check_change`]: whether the leader may append a configuration entry now.
//! - [`next_voter_change`]: the next promotion of a caught-up learner or demotion of a voter
//!   that keeps the number of voters odd (1, 2, 3, then 5).
//!
//! ```text
//!            leader actor (I/O)                        membership (pure)
//!  elected, first entry of the term ──► set_term_start ──┐
//!  own log appended (and on disk) ────► on_leader_appended│ CommitTracker ──► commit_sequence()
//!  own log appended, not synced yet ──► on_leader_logged  │
//!  own copy synced ───────────────────► on_leader_durable │
//!  configuration entry in own log ────► set_configuration │                   positions()
//!  Acknowledge / Heartbeat position ──► on_ack ───────────┘ ──► AckVerdict
//!  before appending a config entry ───► check_change ─────────► Ok / ChangeRefused
//!  periodically, after acks ──────────► next_voter_change ────► Option<Configuration>
//! ```
//!
//! # Majorities
//! A commit majority of `n` voters is `n / 2 + 1` ([`commit_majority`]): one voter commits
//! alone, **two voters need both**, three need two. (Elections differ: there one vote suffices
//! with two voters, docs/architecture.md "Leadership and role changes"; commits never take that
//! shortcut.) Learners never count.
//!
//! # One pending change, both majorities
//! Membership changes add or remove one voter at a time. While the latest configuration entry
//! of the leader's log is not committed, a sequence commits only if it is held by a majority of
//! the latest voters **and** a majority of the voters before them. Growing two voters to three,
//! or shrinking three to two, therefore needs both devices of the two-voter configuration, so two
//! partitioned sides can never commit two different configurations. A configuration entry that
//! restates the latest voters (a new leader's first entry of its term) leaves a pending change
//! pending: both majorities stay required until the restatement commits.

use std::collections::{BTreeMap, BTreeSet};

use lsync_protocol::{ChainHash, Configuration, MemberRole, RolePreference};
use uuid::Uuid;

use crate::fencing::{fence_acknowledgement, Verdict};

#[cfg(test)]
mod tests;

/// The most voters the leader keeps by itself among members whose preference is
/// [`RolePreference::Auto`]; further devices stay learners until a voter leaves.
pub const MAX_AUTO_VOTERS: usize = 5;

/// The most of the leader's own chain hashes a [`CommitTracker`] keeps: those of its latest
/// entries, enough for every acknowledgement that can still move the commit sequence (a
/// follower further behind acknowledges again when it catches up). 16,384 × (8 + 32) bytes.
pub const MAX_OWN_HASHES: usize = 16_384;

/// How many of `voters` voters must hold a sequence for it to commit: `voters / 2 + 1`.
pub fn commit_majority(voters: usize) -> usize {
    voters / 2 + 1
}

/// A follower's position as its acknowledgement (or heartbeat) reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckPosition {
    /// The follower's current term (0: an old peer that sends none).
    pub term: u64,
    /// The sequence of the follower's last entry.
    pub sequence: u64,
    /// The term of the follower's entry at `sequence`.
    pub last_term: u64,
}

/// What [`CommitTracker::on_ack`] made of an acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckVerdict {
    /// Recorded, and it counts toward the commit sequence.
    Counted,
    /// Recorded (for lag and status), but it does not count toward the commit sequence now.
    NotCounted(NotCounted),
    /// Not recorded at all.
    Refused(AckRefusal),
}

/// Why a recorded position does not count toward the commit sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotCounted {
    /// Term 0: an old peer that sends no term; its position is kept for lag only.
    NoTerm,
    /// The follower's last entry is not of the leader's term, so nothing says its log matches
    /// the leader's up to there (Raft's Figure 8).
    LastTermDiffers,
    /// The term start is not known yet, or the position is below it.
    BeforeTermStart,
    /// The device is a voter of neither the latest configuration nor the pending previous one.
    NotVoter,
    /// The chain hash the follower named at its sequence is not the leader's there: its log
    /// differs from the leader's at or before that entry, whatever the terms say (a (sequence,
    /// term) reused by a leader that lost its last writes; docs/protocol.md, "The hash chain").
    HashDiffers,
    /// The follower named a chain hash at a sequence whose hash the tracker no longer keeps
    /// (older than the leader's last [`MAX_OWN_HASHES`] entries), or never learned (a commit
    /// event the leader missed): it cannot be checked, so it does not count.
    HashUnknown,
}

/// Why an acknowledgement is refused and not recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AckRefusal {
    /// The position is beyond the leader's last sequence.
    #[error("acknowledged a sequence beyond the leader's last")]
    BeyondLast,
    /// The follower is in a newer term: the leader must step down.
    #[error("the follower is in a newer term")]
    NewerTerm,
    /// The acknowledgement is of an older term.
    #[error("acknowledgement of an older term")]
    StaleTerm,
    /// The acknowledgement claims to come from the leader itself, whose position is given by
    /// [`CommitTracker::on_leader_appended`].
    #[error("acknowledgement from the leader itself")]
    FromLeader,
}

/// A follower's position as [`CommitTracker::positions`] reports it, for status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FollowerPosition {
    /// The device.
    pub device: Uuid,
    /// The last sequence it reported (it may go down: a follower that rebuilt its log).
    pub sequence: u64,
    /// `Some(sequence)` when its last report shows its log matches the leader's up to
    /// `sequence` (current term, last entry of the current term, at or after the term start).
    pub matched: Option<u64>,
    /// Whether `matched` counts toward the commit sequence now (the device is also a voter of
    /// the latest configuration or of the pending previous one).
    pub counts: bool,
}

/// The leader's commit sequence under Raft's commit rule, one per leadership (leader `me` of
/// `term`). See the module documentation for the majorities.
///
/// Feed it [`Self::set_term_start`] once, [`Self::on_leader_appended`] after every append,
/// [`Self::set_configuration`] for every configuration entry of the leader's log (the latest one
/// when it is elected; before the append that includes it is reported), [`Self::on_ack`] for
/// every follower position and [`Self::forget`] for a device that left. Every call recomputes
/// [`Self::commit_sequence`], which never decreases.
#[derive(Debug, Clone)]
pub struct CommitTracker {
    me: Uuid,
    term: u64,
    term_start: Option<u64>,
    /// The leader's last sequence: its log holds every entry up to it (a follower cannot hold
    /// more).
    leader_last: u64,
    /// The leader's own match: the last sequence of its log known to be on its disk (at most
    /// `leader_last`).
    leader_durable: u64,
    /// The latest configuration in the leader's log: its sequence and voters.
    latest: Option<(u64, BTreeSet<Uuid>)>,
    /// The voters before `latest`, kept while `latest` is not committed.
    previous: Option<BTreeSet<Uuid>>,
    /// The last recorded position of each follower.
    acks: BTreeMap<Uuid, AckPosition>,
    /// Followers whose last recorded position named a chain hash that is not the leader's
    /// there, or that could not be checked: their position matches nothing.
    unchained: BTreeSet<Uuid>,
    /// The leader's own chain hashes of its latest entries (at most [`MAX_OWN_HASHES`]).
    own_hashes: BTreeMap<u64, ChainHash>,
    commit: u64,
}

impl CommitTracker {
    /// A tracker for leader `me` of `term`: nothing committed, no configuration, no positions.
    pub fn new(me: Uuid, term: u64) -> Self {
        Self {
            me,
            term,
            term_start: None,
            leader_last: 0,
            leader_durable: 0,
            latest: None,
            previous: None,
            acks: BTreeMap::new(),
            unchained: BTreeSet::new(),
            own_hashes: BTreeMap::new(),
            commit: 0,
        }
    }

    /// The leader's own entry at `sequence` has chain hash `hash` (from its commit events:
    /// every entry's when the event carries them, the one before the range, the last one).
    /// Only the latest [`MAX_OWN_HASHES`] are kept; an acknowledgement that names a hash is
    /// checked against them ([`Self::on_ack_hashed`]).
    pub fn note_own_hash(&mut self, sequence: u64, hash: ChainHash) {
        self.own_hashes.insert(sequence, hash);
        while self.own_hashes.len() > MAX_OWN_HASHES {
            self.own_hashes.pop_first();
        }
    }

    /// The sequence of this leader's first entry of its term (the entry it writes when it is
    /// elected). Until it is set, nothing commits. Set once: later calls are ignored.
    pub fn set_term_start(&mut self, sequence: u64) {
        if self.term_start.is_none() {
            self.term_start = Some(sequence);
            self.recompute();
        }
    }

    /// The leader's own last sequence, on its disk (its own match; the leader holds its whole
    /// log): [`Self::on_leader_logged`] and [`Self::on_leader_durable`] of `last` at once, as
    /// under `synchronous = FULL`, where a commit is fsynced before it is reported. Taken as
    /// given.
    pub fn on_leader_appended(&mut self, last: u64) {
        self.leader_last = last;
        self.leader_durable = last;
        self.recompute();
    }

    /// The leader's log holds every entry up to `last`, not all of them on its disk yet (under
    /// `synchronous = NORMAL` the leader's commit is fsynced after it is announced;
    /// docs/architecture.md, "What an acknowledgement promises"). A follower's position up to
    /// `last` is recorded and counts for the follower; the leader's own copy counts only up to
    /// [`Self::on_leader_durable`]. Taken as given (its own match is lowered to `last` if it
    /// was above).
    pub fn on_leader_logged(&mut self, last: u64) {
        self.leader_last = last;
        self.leader_durable = self.leader_durable.min(last);
        self.recompute();
    }

    /// The leader's own copy is on its disk up to `durable` (an fsync covered it): its own
    /// match, which never goes down here; its last sequence is raised to `durable` if it was
    /// below.
    pub fn on_leader_durable(&mut self, durable: u64) {
        self.leader_last = self.leader_last.max(durable);
        self.leader_durable = self.leader_durable.max(durable);
        self.recompute();
    }

    /// The latest configuration in the leader's log is at `sequence` with `voters`.
    ///
    /// Call it when the entry is appended and before [`Self::on_leader_appended`] reports a
    /// last sequence at or beyond `sequence`: otherwise the entry may commit under the
    /// configuration before it alone, and is then taken as committed.
    ///
    /// The configuration it replaces becomes the previous one, required too while
    /// `commit_sequence() < sequence`, and forgotten once it is not (at once if `sequence` is
    /// committed already). The first call has no previous configuration; a leader elected with
    /// an uncommitted configuration entry in its log may call it twice (the configuration
    /// before, then the latest) to require both. Calling it again with the same `sequence`
    /// replaces the voters and keeps the previous configuration. A configuration with the
    /// latest's voters (a restatement, such as the leader's first entry of its term) moves the
    /// latest to `sequence` and keeps the previous configuration: a pending change stays
    /// pending, both majorities required, until `sequence` commits. Call it only when
    /// [`check_change`] allowed the change: a second change of voters while one is pending
    /// makes the pending one the previous configuration and forgets the one before it.
    pub fn set_configuration(&mut self, sequence: u64, voters: BTreeSet<Uuid>) {
        match self.latest.take() {
            Some((at, _)) if at == sequence => {}
            // A restatement: whatever is pending stays pending (found by the election
            // simulator: forgetting it let a new leader commit a voter change on the new
            // voters alone).
            Some((_, before)) if before == voters => {}
            Some((_, before)) => self.previous = Some(before),
            None => self.previous = None,
        }
        self.latest = Some((sequence, voters));
        self.recompute();
    }

    /// Records a follower's position, unless it is refused (checked first, nothing recorded):
    /// beyond the leader's last sequence ([`AckRefusal::BeyondLast`]), of a newer term
    /// ([`AckRefusal::NewerTerm`]: the leader must step down), of an older non-zero term
    /// ([`AckRefusal::StaleTerm`]), or from the leader itself ([`AckRefusal::FromLeader`]).
    ///
    /// A recorded position replaces the previous one, also when it is lower (a follower that
    /// rebuilt its log). It counts toward the commit sequence only if `term` and `last_term`
    /// are this leader's term and `sequence` is at or after the term start (an entry of the
    /// current term can only be this leader's, so the logs match up to there), and the device is
    /// a voter of the latest configuration or of the pending previous one.
    pub fn on_ack(&mut self, from: Uuid, ack: AckPosition) -> AckVerdict {
        self.on_ack_hashed(from, ack, None)
    }

    /// [`Self::on_ack`] of a position that names the chain hash of the follower's entry at
    /// `ack.sequence` (`hash`; `None`: an older peer that sends none, and the term rules alone
    /// decide). A position that passes the term rules counts only if `hash` is the leader's
    /// own there ([`Self::note_own_hash`]): [`NotCounted::HashDiffers`] otherwise, or
    /// [`NotCounted::HashUnknown`] when the tracker does not know its hash there. Such a
    /// position is recorded (for lag and status) and matches nothing until the follower
    /// reports again.
    pub fn on_ack_hashed(
        &mut self,
        from: Uuid,
        ack: AckPosition,
        hash: Option<ChainHash>,
    ) -> AckVerdict {
        if ack.sequence > self.leader_last {
            return AckVerdict::Refused(AckRefusal::BeyondLast);
        }
        match fence_acknowledgement(ack.term, self.term) {
            Verdict::Newer { .. } => return AckVerdict::Refused(AckRefusal::NewerTerm),
            Verdict::Stale => return AckVerdict::Refused(AckRefusal::StaleTerm),
            Verdict::Current => {}
        }
        if from == self.me {
            return AckVerdict::Refused(AckRefusal::FromLeader);
        }
        // The verdict is decided before recomputing: an ack that commits the latest
        // configuration counted in the previous one even though that is forgotten next.
        let reason = if ack.term == 0 {
            Some(NotCounted::NoTerm)
        } else if ack.last_term != self.term {
            Some(NotCounted::LastTermDiffers)
        } else if self.term_start.is_none_or(|start| ack.sequence < start) {
            Some(NotCounted::BeforeTermStart)
        } else if let Some(chain) = self.chain_verdict(ack.sequence, hash) {
            Some(chain)
        } else if !self.is_required_voter(from) {
            Some(NotCounted::NotVoter)
        } else {
            None
        };
        if self.chain_verdict(ack.sequence, hash).is_some() {
            self.unchained.insert(from);
        } else {
            self.unchained.remove(&from);
        }
        self.acks.insert(from, ack);
        self.recompute();
        reason.map_or(AckVerdict::Counted, AckVerdict::NotCounted)
    }

    /// Drops a device's position. Call it once the configuration that removed the device is
    /// committed: while a required configuration still lists it as a voter, it then holds
    /// nothing there until it reports again.
    pub fn forget(&mut self, device: Uuid) {
        self.acks.remove(&device);
        self.unchained.remove(&device);
        self.recompute();
    }

    /// The highest sequence `s`, `term_start <= s <= leader_last`, held by the required
    /// majorities (see the module documentation); 0 before anything commits. Never decreases.
    pub fn commit_sequence(&self) -> u64 {
        self.commit
    }

    /// The sequence of this leader's first entry of its term, once set.
    pub fn term_start(&self) -> Option<u64> {
        self.term_start
    }

    /// The leader's own last sequence (0 until [`Self::on_leader_appended`] or
    /// [`Self::on_leader_logged`]).
    pub fn leader_last(&self) -> u64 {
        self.leader_last
    }

    /// The last sequence of the leader's own copy known to be on its disk (its own match).
    pub fn leader_durable(&self) -> u64 {
        self.leader_durable
    }

    /// The sequence up to which `device`'s log is known to match the leader's: for the leader
    /// itself its copy on disk ([`Self::leader_durable`]), [`FollowerPosition::matched`] for a
    /// follower, `None`
    /// for a device with no matching position. Suits [`next_voter_change`]'s `matched`.
    pub fn matched(&self, device: Uuid) -> Option<u64> {
        if device == self.me {
            return Some(self.leader_durable);
        }
        self.acks.get(&device).and_then(|ack| self.matched_of(device, ack))
    }

    /// Every follower's recorded position, by device id (the leader's own is
    /// [`Self::leader_durable`], its log's end [`Self::leader_last`]).
    pub fn positions(&self) -> Vec<FollowerPosition> {
        self.acks
            .iter()
            .map(|(&device, ack)| {
                let matched = self.matched_of(device, ack);
                FollowerPosition {
                    device,
                    sequence: ack.sequence,
                    matched,
                    counts: matched.is_some() && self.is_required_voter(device),
                }
            })
            .collect()
    }

    /// The sequence up to which `device`'s recorded position matches the leader's log, if it
    /// does.
    fn matched_of(&self, device: Uuid, ack: &AckPosition) -> Option<u64> {
        let start = self.term_start?;
        let matches = ack.term == self.term
            && ack.term != 0
            && ack.last_term == self.term
            && ack.sequence >= start
            && !self.unchained.contains(&device);
        matches.then_some(ack.sequence)
    }

    /// Why a position at `sequence` naming `hash` does not match the leader's chain (`None`:
    /// it names none, or the leader's own).
    fn chain_verdict(&self, sequence: u64, hash: Option<ChainHash>) -> Option<NotCounted> {
        let theirs = hash?;
        match self.own_hashes.get(&sequence) {
            Some(ours) if *ours == theirs => None,
            Some(_) => Some(NotCounted::HashDiffers),
            None => Some(NotCounted::HashUnknown),
        }
    }

    /// Whether the previous configuration is still required (the latest is not committed).
    fn previous_required(&self) -> Option<&BTreeSet<Uuid>> {
        let (at, _) = self.latest.as_ref()?;
        self.previous.as_ref().filter(|_| self.commit < *at)
    }

    fn is_required_voter(&self, device: Uuid) -> bool {
        self.latest.as_ref().is_some_and(|(_, voters)| voters.contains(&device))
            || self.previous_required().is_some_and(|voters| voters.contains(&device))
    }

    /// The highest sequence a majority of `voters` holds (0 if none, or no voters).
    fn majority_held(&self, voters: &BTreeSet<Uuid>) -> u64 {
        let mut held: Vec<u64> =
            voters.iter().map(|&v| self.matched(v).unwrap_or(0).min(self.leader_last)).collect();
        held.sort_unstable_by(|a, b| b.cmp(a));
        held.get(commit_majority(voters.len()) - 1).copied().unwrap_or(0)
    }

    fn recompute(&mut self) {
        if let (Some(start), Some((at, latest))) = (self.term_start, &self.latest) {
            let mut candidate = self.majority_held(latest);
            if let Some(previous) = self.previous_required() {
                candidate = candidate.min(self.majority_held(previous));
            }
            if candidate >= start && candidate > self.commit {
                self.commit = candidate;
            }
            if self.commit >= *at && self.previous.take().is_some() {
                // The previous voters stop counting: what the latest ones hold alone may commit
                // more at once (e.g. a leader left as the only voter), not at the next append.
                let candidate = self.majority_held(latest);
                if candidate >= start && candidate > self.commit {
                    self.commit = candidate;
                }
            }
        }
    }
}

/// Why the leader may not append a configuration entry now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChangeRefused {
    /// The latest configuration entry, at `sequence`, is not committed yet.
    #[error("the previous configuration change (sequence {sequence}) is not committed yet")]
    PreviousPending {
        /// The sequence of the pending configuration entry.
        sequence: u64,
    },
    /// The leader's first entry of its term is not committed yet.
    #[error("the leader has not committed an entry of its term yet")]
    TermNotStarted,
}

/// Whether the leader may append a configuration entry now: not while the latest configuration
/// entry of its log (at `latest_config_sequence`, 0 if none) is above `commit_sequence`, nor
/// while its first entry of its term (`term_start`, `None` if not written yet) is. Both are
/// checked in that order.
pub fn check_change(
    latest_config_sequence: u64,
    commit_sequence: u64,
    term_start: Option<u64>,
) -> Result<(), ChangeRefused> {
    if latest_config_sequence > commit_sequence {
        return Err(ChangeRefused::PreviousPending { sequence: latest_config_sequence });
    }
    if term_start.is_none_or(|start| start > commit_sequence) {
        return Err(ChangeRefused::TermNotStarted);
    }
    Ok(())
}

/// The next single-voter change the leader should commit, or `None`.
///
/// `matched(device)` is how far a device's log is known to match the leader's (e.g.
/// [`CommitTracker::matched`]); the leader's own is taken as `leader_last` whatever `matched`
/// says. A learner is *caught up* when its matched sequence is at least
/// `leader_last - catch_up` (saturating; `catch_up` is one response, `max_entries_per_response`).
/// Candidates are ranked by matched sequence, highest first for a promotion and lowest first
/// (`None` lowest) for a demotion, ties by the lower device id. Rules, in order:
///
/// 1. a caught-up learner whose preference is [`RolePreference::Voter`] is promoted;
/// 2. with `n` = voters + caught-up learners whose preference is [`RolePreference::Auto`], the
///    target number of voters is `n` if `n <= 2`, else the largest odd number `<= n`, at most
///    [`MAX_AUTO_VOTERS`]; below it, one caught-up `Auto` learner is promoted;
/// 3. with an even number of voters, at least 4, one voter whose preference is `Auto`, not the
///    leader, is demoted to learner.
///
/// A learner with preference [`RolePreference::Learner`] is never promoted, a voter with
/// preference [`RolePreference::Voter`] and the leader are never demoted. The returned
/// configuration differs from `config` in one member's role only (same feature version, same
/// members in the same order), so it is a single-voter change from `config`.
pub fn next_voter_change(
    config: &Configuration,
    leader: Uuid,
    matched: impl Fn(Uuid) -> Option<u64>,
    leader_last: u64,
    catch_up: u64,
) -> Option<Configuration> {
    let held = |device: Uuid| if device == leader { Some(leader_last) } else { matched(device) };
    let floor = leader_last.saturating_sub(catch_up);
    let caught_up = |preference: RolePreference| -> Vec<(Option<u64>, Uuid)> {
        config
            .members
            .iter()
            .filter(|m| m.role == MemberRole::Learner && m.preference == preference)
            .map(|m| (held(m.device_id), m.device_id))
            .filter(|(at, _)| at.is_some_and(|at| at >= floor))
            .collect()
    };
    // Highest matched first, then the lower device id.
    let best = |mut candidates: Vec<(Option<u64>, Uuid)>| {
        candidates.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        candidates.first().map(|&(_, device)| device)
    };
    let voters = config.members.iter().filter(|m| m.role == MemberRole::Voter).count();

    if let Some(device) = best(caught_up(RolePreference::Voter)) {
        return Some(with_role(config, device, MemberRole::Voter));
    }
    let auto = caught_up(RolePreference::Auto);
    let n = voters + auto.len();
    let target = if n <= 2 { n } else { (n - 1 + n % 2).min(MAX_AUTO_VOTERS) };
    if voters < target {
        if let Some(device) = best(auto) {
            return Some(with_role(config, device, MemberRole::Voter));
        }
    }
    if voters >= 4 && voters % 2 == 0 {
        // Lowest matched first (`None` before any sequence), then the lower device id.
        let demoted = config
            .members
            .iter()
            .filter(|m| {
                m.role == MemberRole::Voter
                    && m.preference == RolePreference::Auto
                    && m.device_id != leader
            })
            .map(|m| (held(m.device_id), m.device_id))
            .min();
        if let Some((_, device)) = demoted {
            return Some(with_role(config, device, MemberRole::Learner));
        }
    }
    None
}

/// `config` with `device`'s role set to `role`, nothing else changed.
fn with_role(config: &Configuration, device: Uuid, role: MemberRole) -> Configuration {
    let mut next = config.clone();
    if let Some(member) = next.members.iter_mut().find(|m| m.device_id == device) {
        member.role = role;
    }
    next
}
