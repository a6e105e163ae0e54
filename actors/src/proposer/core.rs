//! The proposer's decisions, as a pure machine: no I/O, no async; the clock and the jitter are
//! injected. [`super::Proposer`] is its shell: it performs the [`Command`]s in order and feeds
//! their results back.
//!
//! The outbox (table `outbox`, on disk) holds the changes made on this device that no leader
//! has committed yet. The machine delivers its pending entries in rounds, one proposal at a
//! time, in order, skipping the ones still waiting out their own backoff:
//!
//! ```text
//!  wake / leader or members changed / submitted / a retry due ─▶ ListOutbox
//!  listed(entries) ─▶ Deliver(first due) ─▶ delivered(Committed) ─▶ Remove     ─▶ Deliver(next due) …
//!                                         ─▶ delivered(Refused)   ─▶ MarkFailed ─▶ Deliver(next due) …
//!                                         ─▶ delivered(Failed)    ─▶ RecordFailure (its own backoff)
//!                                                                               ─▶ Deliver(next due) …
//!  no leader known (or not a member) ─▶ RecordFailure; the round ends, retried after a backoff
//! ```
//!
//! Nothing blocks on one entry and nothing is dropped silently (docs/architecture.md,
//! "Outbox"): an entry whose delivery fails waits out a backoff of its own (doubling, with
//! jitter) while the entries after it are delivered, so later changes may commit before an
//! earlier one that keeps failing; an entry refused for good (the leader's `BadRequest`, or a
//! `Propose` too large for a frame) moves to the outbox's `failed` state with its reason, kept
//! for an operator to retry or discard. A leader that does not know a model type yet (not yet
//! upgraded) is not a refusal: that entry is retried, at once when the leader changes. A new
//! leader (or term) makes every entry due at once.
//!
//! A proposal is delivered to the leader this device knows: committed locally when that is this
//! device, otherwise sent as `Propose` to the leader's peer. A submission (a change just written
//! to the outbox) is answered with the outcome of its own delivery: committed, refused, or
//! queued when its attempt fails or the round ends before reaching it (one that arrives during
//! a round is taken by the next round, which starts right after). One round at a time; a wake
//! during a round starts another one right after it.

use std::collections::{BTreeMap, HashMap, VecDeque};
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
    /// A permanent refusal (the change can never be committed): it moves to the outbox's
    /// `failed` state.
    Refused(String),
    /// Try this entry again later (after its own backoff, or at once under a new leader).
    Failed(String),
}

/// The start of the text of a refusal for a model type the refusing device does not know
/// ([`StorageError::UnknownModel`]'s message), which a leader sends as `BadRequest`.
const UNKNOWN_MODEL: &str = "unknown model type";

impl Delivery {
    /// How a delivery to this device, the leader, went: what its transaction manager's
    /// `commit_proposal` returned. An invalid change is refused; anything else (this device no
    /// longer leads, a model type it does not know yet, a storage failure) is tried again.
    pub fn of_local(result: Result<ProposalOutcome, StorageError>) -> Self {
        match result {
            Ok(o) => Delivery::Committed { first: o.first_sequence, last: o.last_sequence },
            Err(StorageError::NotLeader { .. }) => Delivery::Failed("no longer the leader".into()),
            Err(e @ StorageError::InvalidChange(_)) => Delivery::Refused(e.to_string()),
            Err(e) => Delivery::Failed(e.to_string()),
        }
    }

    /// How a `Propose` of `proposal_id` sent to the leader went, from its answer: committed
    /// when the leader's `ProposalResult` names it; refused for good on `BadRequest`, except a
    /// model type the leader does not know (it may not be upgraded yet: tried again); tried
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
            Ok(SyncMessage::Error { code: ErrorCode::BadRequest, message, .. })
                if message.starts_with(UNKNOWN_MODEL) =>
            {
                Delivery::Failed(format!(
                    "the leader does not know this model yet ({message}); retried, at once \
                     when the leader changes"
                ))
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

/// Why `msg` (a `Propose`) can never be sent in a frame of at most `max_frame` body bytes, or
/// `None` if it fits. Such a proposal is refused before it is queued, and one already queued
/// (e.g. under a larger limit) moves to `failed` at once.
pub fn too_large(msg: &SyncMessage, max_frame: usize) -> Option<String> {
    match lsync_protocol::codec::encode_frame(msg, max_frame) {
        Ok(_) => None,
        Err(e) => Some(format!("the change cannot be sent to the leader: {e}")),
    }
}

/// [`too_large`] for `changes` proposed in any term: measured with the largest encoding of a
/// term, so the answer holds whatever term it is later sent in.
pub fn proposal_too_large(
    library_id: Uuid,
    origin_device: Uuid,
    proposal_id: Uuid,
    changes: &[Change],
    max_frame: usize,
) -> Option<String> {
    let widest_term = u64::from(u32::MAX) + 1; // every larger u64 encodes in as many bytes
    let msg = propose(library_id, origin_device, proposal_id, widest_term, changes.to_vec());
    too_large(&msg, max_frame)
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
    /// Read the outbox's pending entries (in order) and call [`ProposerCore::listed`].
    ListOutbox,
    /// Deliver one proposal and call [`ProposerCore::delivered`] with the outcome.
    Deliver { proposal_id: Uuid, target: Target, changes: Vec<Change> },
    /// A leader committed the proposal, as far as `last_sequence` of its log: settle it in the
    /// outbox (it leaves the outbox and the pending overlay once this device's log reaches
    /// that sequence, `Database::outbox_settle`).
    Remove { proposal_id: Uuid, last_sequence: u64 },
    /// Move a proposal refused for good to the outbox's `failed` state, with the reason;
    /// count it and tell the host (it is no longer delivered).
    MarkFailed { proposal_id: Uuid, reason: String },
    /// A term began: the outbox's delivered proposals that this device's log does not hold go
    /// back to pending (`Database::outbox_redeliver_unheld`) — the leader that answered them
    /// committed may have lost them (its tail replaced after a failover, its disk gone back);
    /// proposed again, they commit once (the log knows the proposal id). Comes before the
    /// round's [`Command::ListOutbox`].
    Redeliver,
    /// Record a failed attempt on a proposal (it stays pending); it is tried again in
    /// `retry_in` (or sooner, under a new leader).
    RecordFailure { proposal_id: Uuid, reason: String, retry_in: Duration },
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
    /// Refused for good (nothing committed; the entry is in the outbox's `failed` state).
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
    /// When the next round starts on its own (a retry).
    pub retry_at: Option<Instant>,
    /// Submissions waiting for their proposal's outcome.
    pub waiting: usize,
    /// Entries waiting out a backoff of their own after a failed attempt.
    pub backing_off: usize,
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

/// The backoff of one entry whose delivery failed.
#[derive(Debug)]
struct Retry {
    backoff: Backoff,
    due: Instant,
}

/// The proposer of one library on this device.
#[derive(Debug)]
pub struct ProposerCore<R> {
    me: Uuid,
    leader: LeaderView,
    members: BTreeMap<Uuid, PeerId>,
    /// The backoff of rounds that found no leader to deliver to.
    backoff: Backoff,
    /// A new entry's backoff (a copy of the round's, unused).
    entry_backoff: Backoff,
    rng: R,
    round: Round,
    /// Another round is due as soon as this one ends.
    again: bool,
    /// When the next round starts on its own.
    retry_at: Option<Instant>,
    /// Submissions waiting for their proposal's outcome: (proposal, token).
    watches: Vec<(Uuid, u64)>,
    /// The entries waiting out their own backoff, by proposal. Bounded by the outbox: entries
    /// not in a listing are forgotten.
    retries: HashMap<Uuid, Retry>,
    /// The last outcomes (committed or refused), for a submission the machine hears of after a
    /// round already delivered it (the shell writes the outbox before it tells the machine).
    /// At most [`RECENT`].
    recent: VecDeque<(Uuid, SubmitOutcome)>,
}

/// How many outcomes [`ProposerCore`] remembers for late submissions.
const RECENT: usize = 256;

impl<R: Rng> ProposerCore<R> {
    /// A proposer of device `me` whose retries (of a round without a leader, of one entry)
    /// wait a backoff from `initial` doubling up to `max`.
    pub fn new(me: Uuid, initial: Duration, max: Duration, rng: R) -> Self {
        Self {
            me,
            leader: LeaderView::default(),
            members: BTreeMap::new(),
            backoff: Backoff::new(initial, max),
            entry_backoff: Backoff::new(initial, max),
            rng,
            round: Round::Idle,
            again: false,
            retry_at: None,
            watches: Vec::new(),
            retries: HashMap::new(),
            recent: VecDeque::new(),
        }
    }

    /// When [`ProposerCore::tick`] must be called next (a retry).
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
            backing_off: self.retries.len(),
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

    /// The leader changed: deliver what waits, to it. A new leader or term makes every entry
    /// due at once (one the old leader could not take may suit the new one).
    pub fn set_leader(&mut self, view: LeaderView) -> Vec<Command> {
        if view != self.leader {
            self.retries.clear();
        }
        let new_term = view.term != self.leader.term;
        self.leader = view;
        let mut out = if new_term { vec![Command::Redeliver] } else { Vec::new() };
        out.extend(self.start_round());
        out
    }

    /// The library's members (device → peer) changed.
    pub fn set_members(&mut self, members: BTreeMap<Uuid, PeerId>) -> Vec<Command> {
        self.members = members;
        self.start_round()
    }

    /// The shell wrote a submission to the outbox as `proposal_id`: deliver it, and answer
    /// `token` with its outcome. A proposal this machine saw committed or refused already (a
    /// round delivered it before the machine heard of the submission, or the same id was
    /// submitted again) is answered with that outcome and not delivered again: one committed
    /// is removed from the outbox (the shell may have queued it anew).
    pub fn submitted(&mut self, proposal_id: Uuid, token: u64) -> Vec<Command> {
        if let Some((_, outcome)) = self.recent.iter().find(|(p, _)| *p == proposal_id) {
            let answer = Command::Answer { token, outcome: outcome.clone() };
            return match outcome {
                SubmitOutcome::Committed { last, .. } => {
                    vec![Command::Remove { proposal_id, last_sequence: *last }, answer]
                }
                SubmitOutcome::Queued | SubmitOutcome::Refused(_) => vec![answer],
            };
        }
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

    /// The outbox's pending entries as they are, in order (the answer to
    /// [`Command::ListOutbox`]).
    pub fn listed(&mut self, entries: Vec<OutboxEntry>, now: Instant) -> Vec<Command> {
        if !matches!(self.round, Round::Listing) {
            return Vec::new();
        }
        self.retries.retain(|id, _| entries.iter().any(|e| e.proposal_id == *id));
        let mut out = Vec::new();
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
                self.retries.remove(&proposal_id);
                out.push(Command::Remove { proposal_id, last_sequence: last });
                self.answer(&mut out, proposal_id, SubmitOutcome::Committed { first, last });
            }
            Delivery::Refused(reason) => {
                self.retries.remove(&proposal_id);
                out.push(Command::MarkFailed { proposal_id, reason: reason.clone() });
                self.answer(&mut out, proposal_id, SubmitOutcome::Refused(reason));
            }
            Delivery::Failed(reason) => {
                let retry = self
                    .retries
                    .entry(proposal_id)
                    .or_insert_with(|| Retry { backoff: self.entry_backoff.clone(), due: now });
                let retry_in = retry.backoff.next_delay(&mut self.rng);
                retry.due = now.checked_add(retry_in).unwrap_or(now);
                out.push(Command::RecordFailure { proposal_id, reason, retry_in });
                self.answer(&mut out, proposal_id, SubmitOutcome::Queued);
            }
        }
        self.deliver_next(&mut out, now);
        out
    }

    /// The outbox could not be read: the round ends and is retried after a backoff.
    pub fn list_failed(&mut self, now: Instant) -> Vec<Command> {
        let mut out = Vec::new();
        if matches!(self.round, Round::Listing) {
            let delay = self.backoff.next_delay(&mut self.rng);
            self.end_round(&mut out, now, Some(delay));
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

    /// Delivers the first entry of the round that is due (the ones waiting out their own
    /// backoff are left for a later round), or ends the round.
    fn deliver_next(&mut self, out: &mut Vec<Command>, now: Instant) {
        let Round::Delivering(queue) = &mut self.round else { return };
        let retries = &self.retries;
        while queue
            .front()
            .is_some_and(|e| retries.get(&e.proposal_id).is_some_and(|r| r.due > now))
        {
            queue.pop_front();
        }
        let Some(next) = queue.front() else {
            self.end_round(out, now, None);
            return;
        };
        let (proposal_id, changes) = (next.proposal_id, next.changes.clone());
        let target = match self.leader.leader {
            Some(l) if l == self.me => Target::Local,
            Some(l) => match self.members.get(&l) {
                Some(peer) => Target::Remote { peer: *peer, term: self.leader.term },
                None => {
                    let reason = format!("leader {l} is not a known member");
                    self.no_leader(out, now, proposal_id, reason);
                    return;
                }
            },
            None => {
                self.no_leader(out, now, proposal_id, "no leader known".into());
                return;
            }
        };
        out.push(Command::Deliver { proposal_id, target, changes });
    }

    /// Nothing can be delivered: the round ends, retried after the rounds' backoff (or when
    /// the leader or the members change).
    fn no_leader(
        &mut self,
        out: &mut Vec<Command>,
        now: Instant,
        proposal_id: Uuid,
        reason: String,
    ) {
        let retry_in = self.backoff.next_delay(&mut self.rng);
        out.push(Command::RecordFailure { proposal_id, reason, retry_in });
        self.end_round(out, now, Some(retry_in));
    }

    /// Ends the round. A failed one (no leader, the outbox unreadable) is retried after
    /// `failed`, the rounds' next backoff delay (or at once if a wake came meanwhile); one that went through its
    /// listing starts the next round when the first entry waiting out its backoff is due.
    /// Submissions whose proposal was not reached are answered queued, except those that
    /// came in during the round (the next round, which they started, takes them).
    fn end_round(&mut self, out: &mut Vec<Command>, now: Instant, failed: Option<Duration>) {
        self.round = Round::Idle;
        if failed.is_some() || !self.again {
            for (_, token) in std::mem::take(&mut self.watches) {
                out.push(Command::Answer { token, outcome: SubmitOutcome::Queued });
            }
        }
        if self.again {
            out.extend(self.start_round());
        } else if let Some(delay) = failed {
            self.retry_at = Some(now.checked_add(delay).unwrap_or(now));
        } else {
            self.backoff.reset();
            self.retry_at = self.retries.values().map(|r| r.due).min();
        }
    }

    fn answer(&mut self, out: &mut Vec<Command>, proposal_id: Uuid, outcome: SubmitOutcome) {
        if outcome != SubmitOutcome::Queued {
            if self.recent.len() == RECENT {
                self.recent.pop_front();
            }
            self.recent.push_back((proposal_id, outcome.clone()));
        }
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
            state: lsync_storage::OutboxState::Pending,
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
            vec![
                Command::Remove { proposal_id: Uuid::from_u128(1), last_sequence: 5 },
                deliver(2, target)
            ]
        );
        let out = c.delivered(Uuid::from_u128(2), Delivery::Committed { first: 6, last: 6 }, now);
        // done; the leader change during the round starts one more
        assert_eq!(
            out,
            vec![
                Command::Remove { proposal_id: Uuid::from_u128(2), last_sequence: 6 },
                Command::ListOutbox
            ]
        );
    }

    #[test]
    fn this_device_leading_commits_its_own_outbox_locally() {
        let (mut c, me) = core();
        assert_eq!(
            c.set_leader(LeaderView { term: 2, leader: Some(me) }),
            vec![Command::Redeliver, Command::ListOutbox]
        );
        assert_eq!(c.listed(vec![entry(1)], Instant::now()), vec![deliver(1, Target::Local)]);
    }

    fn failure(n: u128, reason: &str, retry_in: Duration) -> Command {
        Command::RecordFailure { proposal_id: Uuid::from_u128(n), reason: reason.into(), retry_in }
    }

    #[test]
    fn a_failed_entry_waits_out_its_own_backoff_while_the_next_is_delivered() {
        let (mut c, _) = core();
        let target = settled_remote(&mut c);
        let now = Instant::now();
        assert_eq!(c.wake(), vec![Command::ListOutbox]);
        c.listed(vec![entry(1), entry(2)], now);
        let out = c.delivered(Uuid::from_u128(1), Delivery::Failed("timeout".into()), now);
        let [Command::RecordFailure { retry_in, .. }, next] = &out[..] else { panic!("{out:?}") };
        assert!(*retry_in > 50 * MS && *retry_in <= 100 * MS, "{retry_in:?}");
        assert_eq!(out, vec![failure(1, "timeout", *retry_in), deliver(2, target.clone())]);
        assert_eq!(*next, deliver(2, target.clone()));
        let first = now + *retry_in;
        let out = c.delivered(Uuid::from_u128(2), Delivery::Committed { first: 1, last: 1 }, now);
        assert_eq!(
            out,
            vec![Command::Remove { proposal_id: Uuid::from_u128(2), last_sequence: 1 }]
        );
        assert_eq!(c.next_deadline(), Some(first), "the next round when entry 1 is due");
        assert!(c.tick(first - MS).is_empty(), "not yet");
        assert_eq!(c.tick(first), vec![Command::ListOutbox]);
        assert_eq!(c.listed(vec![entry(1)], first), vec![deliver(1, target)]);
        let out = c.delivered(Uuid::from_u128(1), Delivery::Failed("timeout".into()), first);
        let [Command::RecordFailure { retry_in: second, .. }] = &out[..] else { panic!("{out:?}") };
        assert!(*second > 100 * MS && *second <= 200 * MS, "its own backoff grows: {second:?}");
        assert_eq!(c.status().backing_off, 1);
    }

    #[test]
    fn an_entry_in_its_backoff_is_skipped_by_a_round_and_later_ones_are_delivered() {
        let (mut c, _) = core();
        let target = settled_remote(&mut c);
        let now = Instant::now();
        c.wake();
        c.listed(vec![entry(1)], now);
        c.delivered(Uuid::from_u128(1), Delivery::Failed("internal".into()), now);
        // a new submission starts a round at once: entry 1 is not due, entry 2 goes first
        assert_eq!(c.submitted(Uuid::from_u128(2), 5), vec![Command::ListOutbox]);
        assert_eq!(c.listed(vec![entry(1), entry(2)], now + MS), vec![deliver(2, target)]);
    }

    #[test]
    fn a_new_leader_makes_every_entry_due_at_once() {
        let (mut c, _) = core();
        let target = settled_remote(&mut c);
        let now = Instant::now();
        c.wake();
        c.listed(vec![entry(1)], now);
        let refused = Delivery::of_reply(
            Uuid::from_u128(1),
            Ok(SyncMessage::error(
                Uuid::nil(),
                ErrorCode::BadRequest,
                "unknown model type \"album\"",
            )),
        );
        assert!(matches!(refused, Delivery::Failed(_)), "{refused:?}");
        c.delivered(Uuid::from_u128(1), refused, now);
        assert!(c.next_deadline().is_some_and(|at| at > now));
        // the same leader in a new term (e.g. restarted, upgraded): entry 1 goes at once
        let Target::Remote { peer, .. } = target else { unreachable!() };
        let leader = c.status().leader.leader;
        assert_eq!(
            c.set_leader(LeaderView { term: 4, leader }),
            vec![Command::Redeliver, Command::ListOutbox]
        );
        assert_eq!(
            c.listed(vec![entry(1)], now + MS),
            vec![deliver(1, Target::Remote { peer, term: 4 })]
        );
    }

    #[test]
    fn only_a_bad_request_other_than_an_unknown_model_is_a_refusal() {
        let id = Uuid::from_u128(1);
        let err = |code, m: &str| Ok(SyncMessage::error(Uuid::nil(), code, m));
        assert_eq!(
            Delivery::of_reply(id, err(ErrorCode::BadRequest, "invalid change: empty")),
            Delivery::Refused("invalid change: empty".into())
        );
        for answer in [
            err(ErrorCode::BadRequest, "unknown model type \"album\""),
            err(ErrorCode::Internal, "disk full"),
            err(ErrorCode::NotLeader, "no"),
            Err(NetworkError::Timeout),
        ] {
            let d = Delivery::of_reply(id, answer);
            assert!(matches!(d, Delivery::Failed(_)), "{d:?}");
        }
        let local = Delivery::of_local(Err(StorageError::UnknownModel("album".into())));
        assert!(matches!(local, Delivery::Failed(_)), "{local:?}");
        let local = Delivery::of_local(Err(StorageError::InvalidChange("x".into())));
        assert!(matches!(local, Delivery::Refused(_)), "{local:?}");
    }

    #[test]
    fn a_proposal_too_large_for_a_frame_is_found_whatever_its_term() {
        let (lib, me, id) = (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3));
        let change = |n: usize| vec![Change::delete::<lsync_storage::Tag>("x".repeat(n))];
        let exact = propose(lib, me, id, u64::MAX, change(1000));
        let len = lsync_protocol::codec::encode_frame(&exact, usize::MAX).unwrap().len() - 4;
        assert_eq!(proposal_too_large(lib, me, id, &change(1000), len), None);
        let over = proposal_too_large(lib, me, id, &change(1001), len).expect("one byte over");
        assert!(over.contains("exceeds the limit"), "{over}");
        // a term of 1 encodes shorter, but the check holds for any term
        assert!(too_large(&propose(lib, me, id, 1, change(1001)), len).is_none());
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
                waiting: 0,
                backing_off: 0
            }
        );
    }

    #[test]
    fn a_refused_proposal_moves_to_failed_and_the_round_goes_on() {
        let (mut c, _) = core();
        let target = remote(&mut c);
        let now = Instant::now();
        c.listed(vec![entry(1), entry(2)], now);
        let out = c.delivered(Uuid::from_u128(1), Delivery::Refused("invalid".into()), now);
        assert_eq!(
            out,
            vec![
                Command::MarkFailed { proposal_id: Uuid::from_u128(1), reason: "invalid".into() },
                deliver(2, target)
            ]
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
        // a submission is answered queued when its own attempt fails, not an earlier one's
        let q = Uuid::from_u128(3);
        c.submitted(q, 8);
        c.listed(vec![entry(1), entry(3)], now);
        let out = c.delivered(Uuid::from_u128(1), Delivery::Failed("closed".into()), now);
        assert_eq!(out[1..], [deliver(3, target)]);
        let out = c.delivered(q, Delivery::Failed("closed".into()), now);
        assert!(out.contains(&Command::Answer { token: 8, outcome: SubmitOutcome::Queued }));
        // and when the round ends without a leader
        c.set_leader(LeaderView::default());
        c.submitted(Uuid::from_u128(4), 9);
        let out = c.listed(vec![entry(4)], now);
        assert!(out.contains(&Command::Answer { token: 9, outcome: SubmitOutcome::Queued }));
    }

    #[test]
    fn a_submission_heard_of_after_its_delivery_is_answered_with_its_outcome() {
        let (mut c, _) = core();
        let target = settled_remote(&mut c);
        let now = Instant::now();
        c.wake();
        assert_eq!(c.listed(vec![entry(1), entry(2)], now), vec![deliver(1, target.clone())]);
        c.delivered(Uuid::from_u128(1), Delivery::Committed { first: 4, last: 4 }, now);
        c.delivered(Uuid::from_u128(2), Delivery::Refused("invalid".into()), now);
        assert_eq!(
            c.submitted(Uuid::from_u128(1), 3),
            vec![
                Command::Remove { proposal_id: Uuid::from_u128(1), last_sequence: 4 },
                Command::Answer {
                    token: 3,
                    outcome: SubmitOutcome::Committed { first: 4, last: 4 }
                }
            ]
        );
        assert_eq!(
            c.submitted(Uuid::from_u128(2), 4),
            vec![Command::Answer { token: 4, outcome: SubmitOutcome::Refused("invalid".into()) }]
        );
    }

    #[test]
    fn a_proposal_submitted_again_after_its_commit_is_answered_and_not_delivered_again() {
        let (mut c, _) = core();
        let target = settled_remote(&mut c);
        let now = Instant::now();
        let p = Uuid::from_u128(1);
        assert_eq!(c.submitted(p, 1), vec![Command::ListOutbox]);
        assert_eq!(c.listed(vec![entry(1)], now), vec![deliver(1, target)]);
        let out = c.delivered(p, Delivery::Committed { first: 6, last: 6 }, now);
        assert_eq!(out[0], Command::Remove { proposal_id: p, last_sequence: 6 });
        // the same id again (the shell queued it anew): no round, the row goes, same answer
        assert_eq!(
            c.submitted(p, 2),
            vec![
                Command::Remove { proposal_id: p, last_sequence: 6 },
                Command::Answer {
                    token: 2,
                    outcome: SubmitOutcome::Committed { first: 6, last: 6 }
                }
            ]
        );
        assert!(!c.is_busy());
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
            vec![
                Command::Remove { proposal_id: Uuid::from_u128(1), last_sequence: 1 },
                Command::ListOutbox
            ]
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
        let [Command::RecordFailure { retry_in, .. }] = &out[..] else { panic!("{out:?}") };
        assert_eq!(out, vec![failure(1, "no leader known", *retry_in)]);
        assert_eq!(c.next_deadline(), Some(now + *retry_in));
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
