//! The proposer's decisions, as a pure machine: no I/O, no async; the clock and the jitter are
//! injected. [`super::Proposer`] is its shell: it performs the [`Command`]s in order and feeds
//! their results back.
//!
//! The outbox (table `outbox`, on disk) holds the changes made on this device that no leader
//! has committed yet. The machine delivers it in rounds, one proposal at a time, in order:
//!
//! ```text
//!  wake / leader or members changed / submitted ─▶ ListOutbox
//!  listed(entries) ─▶ Deliver(first) ─▶ delivered(Committed) ─▶ Remove ─▶ Deliver(next) …
//!                                     ─▶ delivered(Refused)   ─▶ Remove ─▶ Deliver(next) …
//!                                     ─▶ delivered(Failed)    ─▶ RecordFailure; the round ends,
//!                                                                 retried after a backoff
//! ```
//!
//! A proposal is delivered to the leader this device knows: committed locally when that is this
//! device, otherwise sent as `Propose` to the leader's peer (a leader that is not a known member
//! fails the delivery). A submission (a change just written to the outbox) is answered with the
//! outcome of its own delivery when the round that reaches it delivers or refuses it, and as
//! queued when a round fails before reaching it (one that arrives during a round is taken by the
//! next round, which starts right after). One round at a time keeps proposals in order; a wake
//! during a round starts another one right after it. An empty outbox ends the rounds and resets
//! the backoff.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use libp2p::PeerId;
use lsync_protocol::{ErrorCode, ProposedChange, SyncMessage};
use lsync_storage::{Change, OutboxEntry, ProposalOutcome, StorageError};
use rand::Rng;
use uuid::Uuid;

use crate::backoff::Backoff;
use crate::transport::NetworkError;

/// Who leads the library now, as this device knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LeaderView {
    pub term: u64,
    pub leader: Option<Uuid>,
}

/// How a delivery went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// The leader committed it: its entries are `first..=last`.
    Committed { first: u64, last: u64 },
    /// A permanent refusal (the change can never be committed): it leaves the outbox.
    Refused(String),
    /// Try again later.
    Failed(String),
}

impl Delivery {
    /// How a delivery to this device, the leader, went: what its transaction manager's
    /// `commit_proposal` returned. A change that can never be committed (invalid, of an unknown
    /// model) is refused; anything else (this device no longer leads, a storage failure) is
    /// tried again.
    pub fn of_local(result: Result<ProposalOutcome, StorageError>) -> Self {
        match result {
            Ok(o) => Delivery::Committed { first: o.first_sequence, last: o.last_sequence },
            Err(StorageError::NotLeader { .. }) => Delivery::Failed("no longer the leader".into()),
            Err(e @ (StorageError::InvalidChange(_) | StorageError::UnknownModel(_))) => {
                Delivery::Refused(e.to_string())
            }
            Err(e) => Delivery::Failed(e.to_string()),
        }
    }

    /// How a `Propose` of `proposal_id` sent to the leader went, from its answer: committed
    /// when the leader's `ProposalResult` names it, refused for good on `BadRequest`, tried
    /// again on anything else (another error, an unexpected reply, no answer).
    pub fn of_reply(proposal_id: Uuid, answer: Result<SyncMessage, NetworkError>) -> Self {
        match answer {
            Ok(SyncMessage::ProposalResult {
                proposal_id: id,
                first_sequence,
                last_sequence,
                ..
            }) if id == proposal_id => {
                Delivery::Committed { first: first_sequence, last: last_sequence }
            }
            Ok(SyncMessage::Error { code: ErrorCode::BadRequest, message, .. }) => {
                Delivery::Refused(message)
            }
            Ok(SyncMessage::Error { code, message, .. }) => {
                Delivery::Failed(format!("{code}: {message}"))
            }
            Ok(other) => Delivery::Failed(format!("unexpected reply {}", other.kind())),
            Err(e) => Delivery::Failed(e.to_string()),
        }
    }
}

/// The `Propose` of a [`Command::Deliver`] to a remote leader in `term`: the proposal
/// `proposal_id` of `origin_device` with its `changes`.
pub fn propose(
    library_id: Uuid,
    origin_device: Uuid,
    proposal_id: Uuid,
    term: u64,
    changes: Vec<Change>,
) -> SyncMessage {
    SyncMessage::Propose {
        library_id,
        term,
        proposal_id,
        origin_device,
        changes: changes.into_iter().map(ProposedChange::from).collect(),
    }
}

/// Where a proposal goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// This device leads: commit it through its own transaction manager.
    Local,
    /// Send `Propose` to the leader's peer, in `term`.
    Remote { peer: PeerId, term: u64 },
}

/// What the shell must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Read the outbox (in order) and call [`ProposerCore::listed`].
    ListOutbox,
    /// Deliver one proposal and call [`ProposerCore::delivered`] with the outcome.
    Deliver { proposal_id: Uuid, target: Target, changes: Vec<Change> },
    /// Remove a delivered (or refused) proposal from the outbox.
    Remove { proposal_id: Uuid },
    /// Record a failed attempt on a proposal (it stays queued).
    RecordFailure { proposal_id: Uuid, reason: String },
    /// Answer the submission `token`.
    Answer { token: u64, outcome: SubmitOutcome },
}

/// What became of a submission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubmitOutcome {
    /// Committed as entries `first..=last`.
    Committed { first: u64, last: u64 },
    /// Not delivered in this round: it waits in the outbox.
    Queued,
    /// Refused for good (nothing committed).
    Refused(String),
}

/// The proposer's state, as its shell shows it ([`ProposerCore::status`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProposerStatus {
    /// Who it delivers to.
    pub leader: LeaderView,
    /// Whether a delivery round runs.
    pub delivering: bool,
    /// Proposals of the round's listing not delivered yet (the one being delivered included).
    pub queued_in_round: usize,
    /// When the next round starts on its own (after a failed one).
    pub retry_at: Option<Instant>,
    /// Submissions waiting for their proposal's outcome.
    pub waiting: usize,
}

#[derive(Debug)]
enum Round {
    /// No round runs.
    Idle,
    /// The outbox is being read.
    Listing,
    /// Delivering the first of `queue`.
    Delivering(VecDeque<OutboxEntry>),
}

/// The proposer of one library on this device.
#[derive(Debug)]
pub struct ProposerCore<R> {
    me: Uuid,
    leader: LeaderView,
    members: BTreeMap<Uuid, PeerId>,
    backoff: Backoff,
    rng: R,
    round: Round,
    /// Another round is due as soon as this one ends.
    again: bool,
    /// When the next round starts on its own (after a failure).
    retry_at: Option<Instant>,
    /// Submissions waiting for their proposal's outcome: (proposal, token).
    watches: Vec<(Uuid, u64)>,
}

impl<R: Rng> ProposerCore<R> {
    /// A proposer of device `me` that retries a failed round after a backoff from `initial`
    /// doubling up to `max`.
    pub fn new(me: Uuid, initial: Duration, max: Duration, rng: R) -> Self {
        Self {
            me,
            leader: LeaderView::default(),
            members: BTreeMap::new(),
            backoff: Backoff::new(initial, max),
            rng,
            round: Round::Idle,
            again: false,
            retry_at: None,
            watches: Vec::new(),
        }
    }

    /// When [`ProposerCore::tick`] must be called next (a retry after a failed round).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.retry_at
    }

    /// Its state now.
    pub fn status(&self) -> ProposerStatus {
        ProposerStatus {
            leader: self.leader,
            delivering: self.is_busy(),
            queued_in_round: match &self.round {
                Round::Delivering(queue) => queue.len(),
                Round::Idle | Round::Listing => 0,
            },
            retry_at: self.retry_at,
            waiting: self.watches.len(),
        }
    }

    /// Whether a round runs.
    pub fn is_busy(&self) -> bool {
        !matches!(self.round, Round::Idle)
    }

    /// Starts a round now (e.g. at start, or after orphans were queued).
    pub fn wake(&mut self) -> Vec<Command> {
        self.start_round()
    }

    /// The leader changed: deliver what waits, to it.
    pub fn set_leader(&mut self, view: LeaderView) -> Vec<Command> {
        self.leader = view;
        self.start_round()
    }

    /// The library's members (device → peer) changed.
    pub fn set_members(&mut self, members: BTreeMap<Uuid, PeerId>) -> Vec<Command> {
        self.members = members;
        self.start_round()
    }

    /// The shell wrote a submission to the outbox as `proposal_id`: deliver it, and answer
    /// `token` with its outcome.
    pub fn submitted(&mut self, proposal_id: Uuid, token: u64) -> Vec<Command> {
        self.watches.push((proposal_id, token));
        self.start_round()
    }

    /// The retry timer fired.
    pub fn tick(&mut self, now: Instant) -> Vec<Command> {
        match self.retry_at {
            Some(at) if now >= at => {
                self.retry_at = None;
                self.start_round()
            }
            _ => Vec::new(),
        }
    }

    /// The outbox as it is, in order (the answer to [`Command::ListOutbox`]).
    pub fn listed(&mut self, entries: Vec<OutboxEntry>, now: Instant) -> Vec<Command> {
        if !matches!(self.round, Round::Listing) {
            return Vec::new();
        }
        let mut out = Vec::new();
        if entries.is_empty() {
            self.backoff.reset();
            self.end_round(&mut out, now, false);
            return out;
        }
        self.round = Round::Delivering(entries.into());
        self.deliver_next(&mut out, now);
        out
    }

    /// The outcome of the delivery of `proposal_id` (the answer to [`Command::Deliver`]).
    pub fn delivered(
        &mut self,
        proposal_id: Uuid,
        delivery: Delivery,
        now: Instant,
    ) -> Vec<Command> {
        let mut out = Vec::new();
        let Round::Delivering(queue) = &mut self.round else { return out };
        if queue.front().map(|e| e.proposal_id) != Some(proposal_id) {
            return out;
        }
        queue.pop_front();
        match delivery {
            Delivery::Committed { first, last } => {
                out.push(Command::Remove { proposal_id });
                self.answer(&mut out, proposal_id, SubmitOutcome::Committed { first, last });
                self.deliver_next(&mut out, now);
            }
            Delivery::Refused(reason) => {
                out.push(Command::Remove { proposal_id });
                self.answer(&mut out, proposal_id, SubmitOutcome::Refused(reason));
                self.deliver_next(&mut out, now);
            }
            Delivery::Failed(reason) => {
                out.push(Command::RecordFailure { proposal_id, reason });
                self.end_round(&mut out, now, true);
            }
        }
        out
    }

    /// The outbox could not be read: the round ends and is retried after a backoff.
    pub fn list_failed(&mut self, now: Instant) -> Vec<Command> {
        let mut out = Vec::new();
        if matches!(self.round, Round::Listing) {
            self.end_round(&mut out, now, true);
        }
        out
    }

    fn start_round(&mut self) -> Vec<Command> {
        if self.is_busy() {
            self.again = true;
            return Vec::new();
        }
        self.again = false;
        self.retry_at = None;
        self.round = Round::Listing;
        vec![Command::ListOutbox]
    }

    fn deliver_next(&mut self, out: &mut Vec<Command>, now: Instant) {
        let Round::Delivering(queue) = &self.round else { return };
        let Some(next) = queue.front() else {
            self.backoff.reset();
            self.end_round(out, now, false);
            return;
        };
        let (proposal_id, changes) = (next.proposal_id, next.changes.clone());
        let target = match self.leader.leader {
            Some(l) if l == self.me => Target::Local,
            Some(l) => match self.members.get(&l) {
                Some(peer) => Target::Remote { peer: *peer, term: self.leader.term },
                None => {
                    out.push(Command::RecordFailure {
                        proposal_id,
                        reason: format!("leader {l} is not a known member"),
                    });
                    self.end_round(out, now, true);
                    return;
                }
            },
            None => {
                out.push(Command::RecordFailure { proposal_id, reason: "no leader known".into() });
                self.end_round(out, now, true);
                return;
            }
        };
        out.push(Command::Deliver { proposal_id, target, changes });
    }

    /// Ends the round; a failed one is retried after the next backoff delay (or at once if a
    /// wake came meanwhile). Submissions whose proposal was not reached are answered queued.
    fn end_round(&mut self, out: &mut Vec<Command>, now: Instant, failed: bool) {
        self.round = Round::Idle;
        // A failed round answers every waiting submission queued. A round that delivered all
        // it listed leaves the submissions that came in after its listing to the next round,
        // which they started (`again`).
        if failed {
            for (_, token) in std::mem::take(&mut self.watches) {
                out.push(Command::Answer { token, outcome: SubmitOutcome::Queued });
            }
        }
        if self.again {
            out.extend(self.start_round());
        } else if failed {
            let delay = self.backoff.next_delay(&mut self.rng);
            self.retry_at = Some(now.checked_add(delay).unwrap_or(now));
        }
    }

    fn answer(&mut self, out: &mut Vec<Command>, proposal_id: Uuid, outcome: SubmitOutcome) {
        let (done, keep): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.watches).into_iter().partition(|(p, _)| *p == proposal_id);
        self.watches = keep;
        for (_, token) in done {
            out.push(Command::Answer { token, outcome: outcome.clone() });
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn core() -> (ProposerCore<StdRng>, Uuid) {
        let me = Uuid::from_u128(1);
        (ProposerCore::new(me, 100 * MS, 1_000 * MS, StdRng::seed_from_u64(7)), me)
    }

    fn entry(n: u128) -> OutboxEntry {
        OutboxEntry {
            proposal_id: Uuid::from_u128(n),
            created_at_ms: 0,
            changes: vec![Change::delete::<lsync_storage::Tag>(format!("t{n}"))],
            attempts: 0,
            next_attempt_ms: 0,
            last_error: None,
        }
    }

    fn deliver(n: u128, target: Target) -> Command {
        let e = entry(n);
        Command::Deliver { proposal_id: e.proposal_id, target, changes: e.changes }
    }

    fn remote(c: &mut ProposerCore<StdRng>) -> Target {
        let (leader, peer) = (Uuid::from_u128(9), PeerId::random());
        c.set_members([(leader, peer)].into());
        c.set_leader(LeaderView { term: 3, leader: Some(leader) });
        Target::Remote { peer, term: 3 }
    }

    /// `remote`, then the two rounds its calls started end on an empty outbox.
    fn settled_remote(c: &mut ProposerCore<StdRng>) -> Target {
        let target = remote(c);
        let now = Instant::now();
        assert_eq!(c.listed(vec![], now), vec![Command::ListOutbox]);
        assert!(c.listed(vec![], now).is_empty());
        assert!(!c.is_busy());
        target
    }

    #[test]
    fn a_round_delivers_the_outbox_in_order_and_removes_what_was_committed() {
        let (mut c, _) = core();
        let target = remote(&mut c);
        let now = Instant::now();
        // set_members started a round; set_leader only asked for another after it.
        assert_eq!(c.listed(vec![entry(1), entry(2)], now), vec![deliver(1, target.clone())]);
        let out = c.delivered(Uuid::from_u128(1), Delivery::Committed { first: 5, last: 5 }, now);
        assert_eq!(
            out,
            vec![Command::Remove { proposal_id: Uuid::from_u128(1) }, deliver(2, target)]
        );
        let out = c.delivered(Uuid::from_u128(2), Delivery::Committed { first: 6, last: 6 }, now);
        // done; the leader change during the round starts one more
        assert_eq!(
            out,
            vec![Command::Remove { proposal_id: Uuid::from_u128(2) }, Command::ListOutbox]
        );
    }

    #[test]
    fn this_device_leading_commits_its_own_outbox_locally() {
        let (mut c, me) = core();
        assert_eq!(
            c.set_leader(LeaderView { term: 2, leader: Some(me) }),
            vec![Command::ListOutbox]
        );
        assert_eq!(c.listed(vec![entry(1)], Instant::now()), vec![deliver(1, Target::Local)]);
    }

    #[test]
    fn a_failed_delivery_ends_the_round_and_retries_after_a_growing_backoff() {
        let (mut c, _) = core();
        let target = settled_remote(&mut c);
        let now = Instant::now();
        assert_eq!(c.wake(), vec![Command::ListOutbox]);
        c.listed(vec![entry(1), entry(2)], now);
        let out = c.delivered(Uuid::from_u128(1), Delivery::Committed { first: 1, last: 1 }, now);
        assert_eq!(out[1], deliver(2, target.clone()));
        let out = c.delivered(Uuid::from_u128(2), Delivery::Failed("timeout".into()), now);
        assert_eq!(
            out,
            vec![Command::RecordFailure {
                proposal_id: Uuid::from_u128(2),
                reason: "timeout".into()
            }]
        );
        let first = c.next_deadline().expect("a retry is scheduled");
        assert!(first > now && first <= now + 100 * MS, "{:?}", first - now);
        assert!(c.tick(first - MS).is_empty(), "not yet");
        assert_eq!(c.tick(first), vec![Command::ListOutbox]);
        c.listed(vec![entry(2)], first);
        c.delivered(Uuid::from_u128(2), Delivery::Failed("timeout".into()), first);
        let second = c.next_deadline().unwrap() - first;
        assert!(second > 100 * MS / 2 && second <= 200 * MS, "{second:?}");
    }

    #[test]
    fn the_status_shows_the_round_being_delivered() {
        let (mut c, _) = core();
        let target = settled_remote(&mut c);
        let leader = c.status().leader;
        c.wake();
        c.listed(vec![entry(1), entry(2)], Instant::now());
        assert!(matches!(target, Target::Remote { .. }));
        assert_eq!(
            c.status(),
            ProposerStatus {
                leader,
                delivering: true,
                queued_in_round: 2,
                retry_at: None,
                waiting: 0
            }
        );
    }

    #[test]
    fn a_refused_proposal_leaves_the_outbox_and_the_round_goes_on() {
        let (mut c, _) = core();
        let target = remote(&mut c);
        let now = Instant::now();
        c.listed(vec![entry(1), entry(2)], now);
        let out = c.delivered(Uuid::from_u128(1), Delivery::Refused("unknown model".into()), now);
        assert_eq!(
            out,
            vec![Command::Remove { proposal_id: Uuid::from_u128(1) }, deliver(2, target)]
        );
    }

    #[test]
    fn a_submission_is_answered_with_its_own_outcome_or_queued() {
        let (mut c, _) = core();
        let target = remote(&mut c);
        let now = Instant::now();
        c.listed(vec![], now); // the rounds the setup started
        c.listed(vec![], now);
        let p = Uuid::from_u128(2);
        assert_eq!(c.submitted(p, 7), vec![Command::ListOutbox]);
        c.listed(vec![entry(1), entry(2)], now);
        // entry 1 is not the watched one: no answer yet
        let out = c.delivered(Uuid::from_u128(1), Delivery::Committed { first: 1, last: 1 }, now);
        assert!(!out.iter().any(|c| matches!(c, Command::Answer { .. })), "{out:?}");
        let out = c.delivered(p, Delivery::Committed { first: 2, last: 3 }, now);
        assert!(out.contains(&Command::Answer {
            token: 7,
            outcome: SubmitOutcome::Committed { first: 2, last: 3 }
        }));
        // a submission whose round fails before reaching it is answered queued
        let q = Uuid::from_u128(3);
        c.submitted(q, 8);
        c.listed(vec![entry(1), entry(3)], now);
        let out = c.delivered(Uuid::from_u128(1), Delivery::Failed("closed".into()), now);
        assert!(out.contains(&Command::Answer { token: 8, outcome: SubmitOutcome::Queued }));
        let _ = target;
    }

    #[test]
    fn a_submission_during_a_round_waits_for_the_next_one() {
        let (mut c, _) = core();
        let target = settled_remote(&mut c);
        let now = Instant::now();
        c.wake();
        c.listed(vec![entry(1)], now);
        // entry 2 is written while entry 1 is being delivered
        assert!(c.submitted(Uuid::from_u128(2), 4).is_empty());
        let out = c.delivered(Uuid::from_u128(1), Delivery::Committed { first: 1, last: 1 }, now);
        assert_eq!(
            out,
            vec![Command::Remove { proposal_id: Uuid::from_u128(1) }, Command::ListOutbox]
        );
        assert_eq!(c.listed(vec![entry(2)], now), vec![deliver(2, target)]);
        let out = c.delivered(Uuid::from_u128(2), Delivery::Committed { first: 2, last: 2 }, now);
        assert!(out.contains(&Command::Answer {
            token: 4,
            outcome: SubmitOutcome::Committed { first: 2, last: 2 }
        }));
    }

    #[test]
    fn without_a_known_leader_nothing_is_sent_and_the_round_is_retried() {
        let (mut c, _) = core();
        let now = Instant::now();
        assert_eq!(c.wake(), vec![Command::ListOutbox]);
        let out = c.listed(vec![entry(1)], now);
        assert_eq!(
            out,
            vec![Command::RecordFailure {
                proposal_id: Uuid::from_u128(1),
                reason: "no leader known".into()
            }]
        );
        assert!(c.next_deadline().is_some());
        // a leader unknown as a member fails the same way
        let leader = Uuid::from_u128(9);
        c.set_leader(LeaderView { term: 1, leader: Some(leader) });
        let out = c.listed(vec![entry(1)], now);
        assert!(
            matches!(&out[..], [Command::RecordFailure { reason, .. }] if reason.contains("not a known member"))
        );
    }

    #[test]
    fn answers_that_do_not_match_the_round_change_nothing() {
        let (mut c, _) = core();
        let _ = remote(&mut c);
        let now = Instant::now();
        assert!(c.delivered(Uuid::from_u128(1), Delivery::Failed("x".into()), now).is_empty());
        c.listed(vec![entry(1)], now);
        assert!(c.delivered(Uuid::from_u128(2), Delivery::Failed("x".into()), now).is_empty());
        assert!(c.listed(vec![entry(5)], now).is_empty(), "a listing nobody asked for");
    }

    #[test]
    fn an_unreadable_outbox_is_read_again_after_a_backoff() {
        let (mut c, _) = core();
        let now = Instant::now();
        c.wake();
        assert!(c.list_failed(now).is_empty());
        assert!(!c.is_busy());
        let at = c.next_deadline().expect("a retry is scheduled");
        assert_eq!(c.tick(at), vec![Command::ListOutbox]);
        assert!(c.list_failed(at).is_empty());
        assert!(c.list_failed(at).is_empty(), "no round: nothing to fail");
    }

    #[test]
    fn an_empty_outbox_ends_the_rounds_and_resets_the_backoff() {
        let (mut c, _) = core();
        let _ = settled_remote(&mut c);
        c.wake();
        let now = Instant::now();
        c.listed(vec![entry(1)], now);
        c.delivered(Uuid::from_u128(1), Delivery::Failed("x".into()), now);
        c.tick(c.next_deadline().unwrap());
        assert!(c.listed(vec![], now).is_empty());
        assert!(!c.is_busy());
        assert_eq!(c.next_deadline(), None);
    }
}
