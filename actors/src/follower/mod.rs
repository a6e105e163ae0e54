//! Follower replication: a pure state machine, no I/O, no async; the clock and the randomness
//! are injected. The [`actor::FollowerActor`] (follower/actor.rs) is its shell: it feeds it
//! the leader's requests, the answers to its own requests and the results of storage calls,
//! performs the [`Command`]s it returns, in order, and calls [`Replicator::tick`] at
//! [`Replicator::next_deadline`].
//!
//! It is steps 5–9 of "The life of one commit" and the "Follower states" of
//! docs/architecture.md: fetch from the applied position, keep fetching while a batch is
//! applied, one fetch ahead on a checked guess, apply what arrived in one transaction,
//! acknowledge, repeat while the leader has more; back off when the leader cannot be reached;
//! rebuild the library when the logs diverged.
//!
//! ```text
//!          shell (I/O)                              Replicator (pure)
//!  started ─────────────────────────► start ────────────┐
//!  leader's NewEntries / Heartbeat ─► on_request        │
//!  db.last_position() ──────────────► on_position       │
//!  FetchEntries answered ───────────► on_fetched        │ ──► Vec<Command>, performed in order:
//!  batch applied (storage) ─────────► on_applied        │     ReadPosition, Fetch, DropFetch,
//!  Acknowledge answered ────────────► on_acknowledged   │     Apply, Acknowledge, Heartbeat,
//!  Heartbeat answered ──────────────► on_heartbeat      │     Reply, ResetForRepair, Settle,
//!  reset_for_repair done ───────────► on_reset          │     RecoverOrphans, WakeProposer,
//!  settle done ─────────────────────► on_settled        │     Event, AdoptTerm, Repoint,
//!  recover_orphans done ────────────► on_orphans_recovered    Membership, LeaderCommit,
//!  timer at next_deadline ──────────► tick ─────────────┘     CountMetric
//! ```
//!
//! # What it keeps
//! The applied position (read from the database once, then moved only by the batches it
//! applies and by a reset: nothing else writes a follower's log), the term, the leader's last
//! and commit sequences as last heard, the phase (idle, heartbeating, applying pushed entries, a
//! round with its pipeline, a reset, the steps after a round, waiting after an error), the
//! pushed entries waiting, the acknowledgement in flight, the backoff, the heartbeat deadline,
//! the rebuild's progress and the status ([`Replicator::status`]).
//!
//! # What it emits
//! Requests carry an id ([`RequestId`]); the shell feeds the answer back with that id, and
//! answers with an id the machine does not wait for (a dropped fetch, a duplicate) are
//! ignored. Storage calls without an id (`ReadPosition`, `ResetForRepair`, `Settle`,
//! `RecoverOrphans`) are at most one at a time, and their results are ignored outside the
//! phase that asked for them. A leader's request is answered by exactly one
//! [`Command::Reply`] with the id the shell gave it: at once, or (pushed entries) once they
//! are applied or found not to continue the log.
//!
//! # Rules
//! - **Start**: read the position, then a round.
//! - **Leader requests** (the term rule of [`crate::fencing`]): a NewEntries or Heartbeat
//!   of an older term is refused with `StaleTerm`; any request from another device than the
//!   leader with `NotLeader`; FetchEntries and Acknowledge with `NotLeader` (this device
//!   follows); responses with `BadRequest`. A NewEntries raises the leader's last sequence,
//!   notes its commit sequence and wakes the machine; its entries are **pushed** — applied
//!   without a fetch, the request answered once they are — when they are all of its range (at
//!   most `max_entries_per_response`), continue exactly the applied position
//!   `(from_sequence − 1, prev_term)` — and, when the request names `prev_hash`, the applied
//!   position's chain hash is known and is that one — and no round runs; a newer pushed request replaces an
//!   older one, which is answered with the position. Otherwise it is answered at once with
//!   `Acknowledge` of the position (in the newer of both terms). A Heartbeat is answered with
//!   the position and wakes the machine when the leader's sequence differs from it, or when at
//!   that sequence the leader's chain hash differs from the known local one.
//! - **Wake**: an idle machine runs at once; a busy one runs once more when it is idle again
//!   (several wakes make one run).
//! - **Run**: pushed entries that still continue the position are applied (adopting their
//!   term if newer) and their request answered with the new position; the machine is then
//!   caught up if it reached the leader's last sequence, otherwise a round runs. Without
//!   pushed entries, a round.
//! - **Round** (steps 6–9): passes of the pipeline from the applied position, at most
//!   [`MAX_RESTARTS`] + 1. In a pass, a batch is applied as soon as none is and a response is
//!   ready: the oldest ready response and the next ones while they total at most
//!   `max_response_bytes` (always one). Fetches go out while fewer than
//!   [`FETCHES_IN_FLIGHT`] are in flight and fewer than [`PIPELINE`] responses are received or
//!   in flight: from the last entry received while the leader has more, and one **guess**
//!   after a fetch in flight ([`next_guess`]), unless [`MAX_MISSED_GUESSES`] guesses missed in
//!   the pass. Answers are read in the order the fetches left (an answer that arrives early
//!   waits). An `EntriesResponse` of an older term is discarded (the pass restarts, nothing of
//!   it noted); otherwise it notes the commit sequence, adopts a newer term, raises the
//!   leader's last sequence; if its first entry is not the one after the fetch's position,
//!   the pass **restarts**; otherwise its entries are ready, and a fetch after it that does
//!   not start exactly at its last entry (sequence and term) is dropped unread (a missed
//!   guess). An applied batch moves the position, counts toward an acknowledgement every
//!   `ack_every` entries and toward the progress. The pass ends when nothing is in flight and
//!   the leader has no more: final progress, acknowledgement, then the membership is settled
//!   (the first time, and after every reset), the stashed entries' orphans recovered (waking
//!   the proposer if any were), `CaughtUp`.
//! - **Ending a pass early** (a restart, a failed request or apply, `SyncRequired`, a refusal):
//!   its fetches are dropped, the responses it held forgotten, and the batch applying (if
//!   any) awaited first; if that batch fails otherwise than by a gap, its failure is the one
//!   handled. A gap found while applying restarts the pass. After the last pass restarts, the
//!   leader counts as unreachable.
//! - **Failures**: unreachable (a network error, a refusal) → `Reconnecting`, a
//!   `LeaderUnreachable` event and a backoff delay ([`Backoff`]), then a run. A refusal of
//!   `StaleTerm` naming a newer term → adopt it and run at once; `NotLeader` naming another
//!   leader → [`Command::Repoint`]; `Unauthorized` "removed from library" →
//!   [`FollowerMembership::Removed`]. `SyncRequired` (from the leader, or a divergence found
//!   while applying: another term, or another chain hash ([`BatchOutcome::ChainMismatch`]) at a
//!   sequence — the logs differ at or before it, so the whole log is set aside) → **rebuild**: `Reconciling`, `ResyncStarted`, reset the library (its log
//!   stashed), a round from 0 reporting `ResyncProgress` every [`PROGRESS_EVERY`] entries and
//!   once at its end, `ResyncDone`; a `SyncRequired` during that round runs again at once.
//!   An entry that needs a newer version → `UpgradeNeeded`, `ApplyFailed`, wait the maximum
//!   backoff; any other apply or storage failure → `Stalled`, `ApplyFailed`, wait the
//!   maximum backoff (the backoff advances). A complete round resets the backoff.
//! - **Chain hashes** (docs/protocol.md, "The hash chain"): the machine keeps the chain hash
//!   of the applied position when it knows it (read with it, [`Replicator::on_head`]; returned
//!   by every batch applied; the genesis hash after a reset) and names it in fetches from the
//!   applied position, acknowledgements and heartbeats; a fetch from the last entry received
//!   names that entry's hash; a guess names none.
//! - **Acknowledgements** carry the position (its last entry's term included) and the term;
//!   one in flight at most: one asked for meanwhile is sent when it is answered, with the
//!   position then. The answer's commit sequence is noted; a `StaleTerm` answer's term is
//!   adopted.
//! - **Heartbeats**: an idle machine heartbeats the leader every `heartbeat_interval`; the
//!   answer adopts a newer term, notes the commit sequence and the leader's last sequence, and
//!   runs if the leader is ahead of the position it was sent with.
//! - **Commit sequence**: [`Command::LeaderCommit`] whenever the leader's commit sequence
//!   rises above what this machine heard.
//!
//! Nothing here panics on any input: sequences saturate, timers are clamped, answers the
//! machine does not wait for are ignored.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use lsync_protocol::{ChainHash, ErrorCode, SyncLogEntry, SyncMessage, SyncRole};
use lsync_storage::{ApplyOutcome, LogHead, LogPosition, RecoveredOrphans, StorageError};
use rand::Rng;
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::backoff::Backoff;
use crate::config::SyncConfig;
use crate::events::{ApplierStatus, FollowerState, Progress, SyncEvent};
use crate::fencing::{fence, stale_term, Verdict};
use crate::limits::MAX_BLOCK;
use crate::messages::{FollowerMembership, LeaderHint};

pub mod actor;
pub mod effects;
#[cfg(test)]
mod prop;
#[cfg(test)]
mod tests;

/// Responses a pass holds besides the batch it applies: received, or fetch in flight.
pub const PIPELINE: usize = 3;

/// Fetches a pass keeps in flight: the one from the last entry received, and one guess beyond
/// it ([`next_guess`]).
pub const FETCHES_IN_FLIGHT: usize = 2;

/// Guesses that may miss in one pass before it stops guessing: a term change costs one miss; a
/// leader whose blocks do not end where this follower's `max_entries_per_response` says would
/// cost one per fetch. A miss also costs the leader a response (and, with several followers,
/// one use of a cached block).
pub const MAX_MISSED_GUESSES: u32 = 2;

/// Fresh starts a round makes after responses that do not continue the log, before it gives
/// up until the next retry (so a round makes at most `MAX_RESTARTS + 1` passes).
pub const MAX_RESTARTS: usize = 8;

/// A rebuild reports its progress every this many entries (and once at its end).
pub const PROGRESS_EVERY: u64 = 1_000;

/// The longest timer the machine accepts; longer configured durations are clamped to it so
/// that deadlines never overflow an [`Instant`].
const MAX_TIMER: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// The id of a request or a batch the machine asked the shell for; the shell feeds the result
/// back with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

/// The id the shell gave a leader's request, to answer it by ([`Command::Reply`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReplyTo(pub u64);

/// A counter of [`crate::metrics::Metrics`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    /// `reconnects`: the leader was found unreachable and the machine backs off.
    Reconnects,
    /// `resyncs`: a full reconciliation started.
    Resyncs,
    /// `fetches_ahead`: a fetch left on a guess.
    FetchesAhead,
    /// `fetches_ahead_missed`: fetches dropped because a guess missed.
    FetchesAheadMissed,
    /// `entries_applied`: entries newly written to the log.
    EntriesApplied,
}

/// What the shell must do, in the order returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Read the log's last position ([`Replicator::on_position`]).
    ReadPosition,
    /// Send `FetchEntries { since_sequence, since_term, since_hash, limit:
    /// max_entries_per_response }` in `term` to the leader ([`Replicator::on_fetched`]).
    Fetch {
        /// The fetch's id.
        id: RequestId,
        /// The position the entries asked for follow.
        since: LogPosition,
        /// The chain hash at `since`, when known (`FetchEntries.since_hash`; a guess has none).
        since_hash: Option<ChainHash>,
        /// The follower's term.
        term: u64,
    },
    /// Forget the fetch `id`: its answer is not read (dropping the request is enough).
    DropFetch {
        /// The fetch's id.
        id: RequestId,
    },
    /// Apply `entries` in one transaction through the storage `Applier`
    /// ([`Replicator::on_applied`]). Perform [`committed`]'s commands in the same blocking
    /// task as the transaction, so a stopped shell cannot separate a batch from its events.
    Apply {
        /// The batch's id.
        id: RequestId,
        /// The entries, in order.
        entries: Vec<SyncLogEntry>,
    },
    /// Send [`position_ack`] of `position` (and `hash`) in `term` to the leader
    /// ([`Replicator::on_acknowledged`]).
    Acknowledge {
        /// The acknowledgement's id.
        id: RequestId,
        /// The applied position.
        position: LogPosition,
        /// The chain hash at `position`, when known (`Acknowledge.last_hash`).
        hash: Option<ChainHash>,
        /// The follower's term.
        term: u64,
    },
    /// Send [`follower_heartbeat`] of `position` (and `hash`) in `term` to the leader
    /// ([`Replicator::on_heartbeat`]).
    Heartbeat {
        /// The heartbeat's id.
        id: RequestId,
        /// The applied position.
        position: LogPosition,
        /// The chain hash at `position`, when known (`Heartbeat.last_hash`).
        hash: Option<ChainHash>,
        /// The follower's term.
        term: u64,
    },
    /// Answer the leader's request `to` with `message`.
    Reply {
        /// The request.
        to: ReplyTo,
        /// The answer.
        message: SyncMessage,
    },
    /// Stash the log and clear the library (`Applier::reset_for_repair`,
    /// [`Replicator::on_reset`]).
    ResetForRepair,
    /// Settle the membership after a complete round (`Applier::settle`,
    /// [`Replicator::on_settled`]).
    Settle,
    /// Move the stashed entries' orphans to the outbox if anything is stashed
    /// (`Applier::recover_orphans`, [`Replicator::on_orphans_recovered`]).
    RecoverOrphans,
    /// Wake the proposer: recovered changes wait in the outbox.
    WakeProposer,
    /// Send the event to the host.
    Event(SyncEvent),
    /// The leader was heard in this term (newer than the machine knew, or named by a
    /// `StaleTerm` answer): tell the election (`ElectionInput::LeaderHeard`), which persists
    /// it. The machine already uses it.
    AdoptTerm(u64),
    /// The device taken for the leader named another one: tell the SyncService.
    Repoint(LeaderHint),
    /// Tell the SyncService about the membership.
    Membership(FollowerMembership),
    /// The leader's commit sequence rose to this: record it where the SyncService reads it,
    /// and tell it once it reaches the sequence it watches.
    LeaderCommit(u64),
    /// Add to a counter.
    CountMetric(Counter, u64),
}

/// How applying a batch ended, as the machine needs to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchOutcome {
    /// Committed: the log now ends at `last`.
    Applied {
        /// The log's last position after the batch.
        last: LogPosition,
        /// The chain hash at `last` (`None`: not known).
        last_hash: Option<ChainHash>,
    },
    /// The batch does not continue the log.
    Gap,
    /// An entry of the batch carries another chain hash than the one this log has (or
    /// computes) at its sequence: the logs differ at that entry or before it, whatever the
    /// terms say (docs/protocol.md, "The hash chain").
    ChainMismatch {
        /// The entry's sequence.
        sequence: u64,
        /// The hash the entry carried (the leader's).
        carried: ChainHash,
        /// The hash of this log at that sequence (or computed after its previous entry).
        computed: ChainHash,
    },
    /// An entry of the batch has another term than the local entry at its sequence.
    Diverged {
        /// The sequence.
        sequence: u64,
        /// The local entry's term.
        local_term: u64,
        /// The batch's entry's term.
        remote_term: u64,
    },
    /// An entry needs a newer version of lsync (the storage error's text).
    UpgradeNeeded(String),
    /// Anything else (e.g. an unknown model type; the storage error's text).
    Failed(String),
}

impl BatchOutcome {
    /// The outcome of `Applier::apply`.
    pub fn from_storage(result: &Result<ApplyOutcome, StorageError>) -> Self {
        match result {
            Ok(outcome) => Self::Applied { last: outcome.last, last_hash: Some(outcome.last_hash) },
            Err(StorageError::Gap { .. }) => Self::Gap,
            Err(StorageError::ChainMismatch { sequence, carried, computed }) => {
                Self::ChainMismatch { sequence: *sequence, carried: *carried, computed: *computed }
            }
            Err(StorageError::Diverged { sequence, local_term, remote_term }) => Self::Diverged {
                sequence: *sequence,
                local_term: *local_term,
                remote_term: *remote_term,
            },
            Err(e @ StorageError::UpgradeNeeded { .. }) => Self::UpgradeNeeded(e.to_string()),
            Err(e) => Self::Failed(e.to_string()),
        }
    }
}

/// The commands that go with a committed batch of `entries`: the `entries_applied` counter
/// and `EntriesApplied` if it wrote entries, `ConflictRecorded` for each conflict record among
/// the entries it wrote, `BulkJobQueued` for each job it queued, and the configuration it put
/// in effect.
pub fn committed(
    library_id: Uuid,
    outcome: ApplyOutcome,
    entries: &[SyncLogEntry],
) -> Vec<Command> {
    let mut out = Vec::new();
    if outcome.applied > 0 {
        let first = outcome.last.sequence.saturating_add(1).saturating_sub(outcome.applied);
        out.push(Command::CountMetric(Counter::EntriesApplied, outcome.applied));
        out.push(Command::Event(SyncEvent::EntriesApplied {
            library_id,
            first,
            last: outcome.last.sequence,
            count: outcome.applied,
        }));
        // the entries written now: those already present (duplicates) were recorded before
        let written: Vec<SyncLogEntry> = entries
            .iter()
            .filter(|e| (first..=outcome.last.sequence).contains(&e.sequence))
            .filter(|e| e.model_type == lsync_storage::conflicts::CONFLICT_MODEL_TYPE)
            .cloned()
            .collect();
        out.extend(
            SyncEvent::conflicts_recorded(library_id, &written).into_iter().map(Command::Event),
        );
    }
    for job in outcome.bulk_jobs {
        out.push(Command::Event(SyncEvent::BulkJobQueued { library_id, job }));
    }
    if let Some(m) = outcome.membership {
        out.push(Command::Membership(FollowerMembership::Applied(m)));
    }
    if outcome.redelivered > 0 {
        // proposals put back to pending: the proposer delivers them again now
        out.push(Command::WakeProposer);
    }
    out
}

/// The follower's position as it reports it: `Acknowledge` of its last entry, with its term,
/// that entry's term and its chain hash when known (the leader counts it toward its commit
/// sequence only if both terms are its own and the hash, when present, is its own at that
/// sequence).
pub fn position_ack(
    library_id: Uuid,
    term: u64,
    position: LogPosition,
    hash: Option<ChainHash>,
) -> SyncMessage {
    SyncMessage::Acknowledge {
        library_id,
        up_to_sequence: position.sequence,
        term,
        last_term: position.term,
        last_hash: hash,
    }
}

/// The follower's `Heartbeat` (a request to the leader, or the answer to the leader's), with
/// the chain hash of its last entry when known.
pub fn follower_heartbeat(
    library_id: Uuid,
    term: u64,
    position: LogPosition,
    hash: Option<ChainHash>,
) -> SyncMessage {
    SyncMessage::Heartbeat {
        commit_sequence: 0,
        features: lsync_protocol::FEATURE_VERSION,
        library_id,
        term,
        current_sequence: position.sequence,
        last_term: position.term,
        role: SyncRole::Follower,
        last_hash: hash,
    }
}

/// Where the response to a fetch after `since` most likely ends, when the leader has entries
/// past it (`known` is the leader's last sequence as last heard): the leader answers up to the
/// end of `since + 1`'s block of `block` entries (its log cache's blocks, see
/// [`crate::log_cache`]; `block` is clamped to `1..=MAX_BLOCK`), and the entry there most
/// likely has the term of the entry at `since` (1, the first leader's term, after position 0).
/// A guess is only ever sent as a fetch; its response is used only if the response before it
/// ends exactly there, with that term.
pub fn next_guess(since: LogPosition, known: u64, block: u64) -> Option<LogPosition> {
    let block = block.clamp(1, MAX_BLOCK);
    let end = (since.sequence / block).checked_add(1)?.checked_mul(block)?;
    (end < known).then_some(LogPosition { sequence: end, term: since.term.max(1) })
}

/// The leader this machine follows, as its replies name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    /// Its device id (named in `NotLeader` replies), if known.
    pub device: Option<Uuid>,
    /// Its peer id, as text (named in `NotLeader` replies when the device is known).
    pub peer: String,
}

/// Why a round (or a heartbeat) failed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Failure {
    /// The leader could not be reached or refused for a reason that may pass.
    Unreachable(String),
    /// The leader says this follower must rebuild the library.
    SyncRequired { reason: String, target: u64 },
    /// Applying stopped on something a retry cannot fix by itself.
    Fatal(String),
    /// An entry needs a newer version of lsync.
    UpgradeNeeded(String),
    /// The leader refused a request of an older term and taught this follower its term.
    TermLearned(u64),
}

/// Why a pass ends before the leader has nothing more.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ending {
    /// The responses did not continue the applied log: start again from it.
    Restart,
    /// The round fails.
    Fail(Failure),
    /// The leader refused: decided (and its side effects emitted) once the pass is over.
    Refused(SyncMessage),
}

/// A fetch in flight, and its answer if it arrived before the fetches ahead of it.
#[derive(Debug)]
struct Fetching {
    id: RequestId,
    since: LogPosition,
    answer: Option<Result<SyncMessage, crate::transport::NetworkError>>,
}

/// One pass of the pipeline, from the applied position.
#[derive(Debug)]
struct Pass {
    start: LogPosition,
    /// Fetches in flight, oldest first; the first starts at the last entry received, the one
    /// after it (if any) is a guess.
    fetching: VecDeque<Fetching>,
    /// Received and checked, not applied yet.
    ready: VecDeque<Vec<SyncLogEntry>>,
    /// The last entry received (or the applied position).
    tip: LogPosition,
    /// The chain hash at `tip`, when known.
    tip_hash: Option<ChainHash>,
    /// Whether the leader said it has more after `tip`.
    more: bool,
    /// Guesses that missed in this pass.
    missed: u32,
    /// The batch applying, and its length.
    applying: Option<(RequestId, u64)>,
    since_ack: u64,
    applied_total: u64,
    /// The highest leader's last sequence heard in this pass.
    leader_last: u64,
    /// The pass is over, waiting for the batch applying before it ends so.
    ending: Option<Ending>,
}

impl Pass {
    fn new(start: LogPosition, start_hash: Option<ChainHash>) -> Self {
        Self {
            start,
            fetching: VecDeque::with_capacity(FETCHES_IN_FLIGHT),
            ready: VecDeque::with_capacity(PIPELINE),
            tip: start,
            tip_hash: start_hash,
            more: true,
            missed: 0,
            applying: None,
            since_ack: 0,
            applied_total: 0,
            leader_last: 0,
            ending: None,
        }
    }

    fn front_answered(&self) -> bool {
        self.fetching.front().is_some_and(|f| f.answer.is_some())
    }
}

/// A rebuild's progress reports.
#[derive(Debug, Clone, Copy)]
struct Rebuild {
    started: Instant,
    reported: u64,
}

/// A round: passes of the pipeline until the leader has nothing more.
#[derive(Debug)]
struct Round {
    /// Set when the round rebuilds the library.
    rebuild: Option<Rebuild>,
    /// Passes started.
    passes: usize,
    /// The pass running (`None`: waiting for the position).
    pass: Option<Pass>,
}

/// What the machine is doing.
#[derive(Debug)]
enum Phase {
    /// Not started.
    Stopped,
    /// Waiting for a wake or the heartbeat deadline.
    Idle,
    /// Heartbeating the leader: waiting for the position (`None`) or the answer.
    Heartbeat(Option<(RequestId, LogPosition)>),
    /// Applying pushed entries, to answer `reply` once applied.
    Pushing { id: RequestId, reply: ReplyTo },
    /// A round.
    Round(Box<Round>),
    /// Rebuilding: the library is being reset.
    Resetting,
    /// After a complete round: settling the membership.
    Settling,
    /// After a complete round: recovering orphans.
    Recovering,
    /// After a failure: runs at `until`.
    Waiting { until: Instant, in_round: bool },
}

/// Entries pushed inside a `NewEntries` that continue this follower's log.
#[derive(Debug)]
struct Pushed {
    /// The position the entries continue: `(from_sequence - 1, prev_term)`.
    after: LogPosition,
    /// The leader's chain hash at `after` (`NewEntries.prev_hash`), when it sent one.
    after_hash: Option<ChainHash>,
    /// The leader's term in the request.
    term: u64,
    entries: Vec<SyncLogEntry>,
    reply: ReplyTo,
}

/// How a step of a round ended.
enum Flow {
    /// The pass goes on.
    Continue,
    /// The pass is complete: `applied` entries of `target`.
    Done { applied: u64, target: u64 },
    /// The pass ends early.
    End(Ending),
}

/// The follower's replication of one library. See the module documentation.
#[derive(Debug)]
pub struct Replicator<R> {
    library_id: Uuid,
    leader: Leader,
    config: SyncConfig,
    rng: R,
    backoff: Backoff,
    term: u64,
    /// The log's last position (meaningful once `position_known`).
    applied: LogPosition,
    /// The chain hash at `applied`, when known (read with it, or returned by a batch).
    applied_hash: Option<ChainHash>,
    position_known: bool,
    leader_last: u64,
    leader_commit: u64,
    phase: Phase,
    /// A wake arrived while the machine was busy: run once more when idle.
    wake_pending: bool,
    pushed: Option<Pushed>,
    next_heartbeat: Option<Instant>,
    /// The membership must be settled after the next complete round (the first one, and after
    /// every reset).
    settle_pending: bool,
    ack_in_flight: Option<RequestId>,
    /// An acknowledgement was asked for while one was in flight.
    ack_wanted: bool,
    next_id: u64,
    status: ApplierStatus,
}

impl<R: Rng> Replicator<R> {
    /// The replication of library `library_id` from `leader`, in `term`, with `config`'s limits
    /// and timers (durations clamped to ten years), drawing jitter from `rng`. Call
    /// [`Replicator::start`].
    pub fn new(library_id: Uuid, leader: Leader, term: u64, config: SyncConfig, rng: R) -> Self {
        let mut config = config;
        config.heartbeat_interval = config.heartbeat_interval.min(MAX_TIMER);
        config.backoff_initial = config.backoff_initial.min(MAX_TIMER);
        config.backoff_max = config.backoff_max.min(MAX_TIMER);
        Self {
            library_id,
            leader,
            backoff: Backoff::new(config.backoff_initial, config.backoff_max),
            config,
            rng,
            term,
            applied: LogPosition::default(),
            applied_hash: None,
            position_known: false,
            leader_last: 0,
            leader_commit: 0,
            phase: Phase::Stopped,
            wake_pending: false,
            pushed: None,
            next_heartbeat: None,
            settle_pending: true,
            ack_in_flight: None,
            ack_wanted: false,
            next_id: 1,
            status: ApplierStatus {
                state: FollowerState::Fetching,
                leader_last_sequence: 0,
                progress: None,
                reconnect_attempts: 0,
                last_error: None,
            },
        }
    }

    /// The follower's status.
    pub fn status(&self) -> ApplierStatus {
        ApplierStatus { leader_last_sequence: self.leader_last, ..self.status.clone() }
    }

    /// The term the machine uses.
    pub fn term(&self) -> u64 {
        self.term
    }

    /// The log's last position, once read.
    pub fn applied(&self) -> Option<LogPosition> {
        self.position_known.then_some(self.applied)
    }

    /// Responses the pipeline holds now, received or in flight, besides the batch applying (at
    /// most [`PIPELINE`]).
    pub fn responses_held(&self) -> usize {
        match &self.phase {
            Phase::Round(round) => {
                round.pass.as_ref().map_or(0, |p| p.ready.len() + p.fetching.len())
            }
            _ => 0,
        }
    }

    /// When [`Replicator::tick`] must be called next (`None`: only inputs move it now).
    pub fn next_deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::Idle => self.next_heartbeat,
            Phase::Waiting { until, .. } => Some(until),
            _ => None,
        }
    }

    /// Starts: reads the position, then runs a round. Once only.
    pub fn start(&mut self, now: Instant) -> Vec<Command> {
        let mut out = Vec::new();
        if matches!(self.phase, Phase::Stopped) {
            self.next_heartbeat = Some(add(now, self.config.heartbeat_interval));
            self.run(now, &mut out);
        }
        out
    }

    /// Drives the timers: the heartbeat of an idle machine, the end of a wait.
    pub fn tick(&mut self, now: Instant) -> Vec<Command> {
        let mut out = Vec::new();
        match self.phase {
            Phase::Idle if self.next_heartbeat.is_some_and(|at| now >= at) => {
                self.heartbeat(now, &mut out)
            }
            Phase::Waiting { until, .. } if now >= until => self.run(now, &mut out),
            _ => {}
        }
        out
    }

    /// A request `message` that the shell will answer by `to`; `from_leader`: it comes from
    /// the peer this machine follows.
    pub fn on_request(
        &mut self,
        to: ReplyTo,
        from_leader: bool,
        message: SyncMessage,
        now: Instant,
    ) -> Vec<Command> {
        let mut out = Vec::new();
        let (library_id, term, applied) = (self.library_id, self.term, self.applied);
        let applied_hash = self.applied_hash;
        let mut wake = false;
        let reply = match message {
            SyncMessage::NewEntries { term: their, .. }
            | SyncMessage::Heartbeat { term: their, .. }
                if fence(SyncRole::Follower, their, term) == Verdict::Stale =>
            {
                stale_term(library_id, message.kind(), their, term, self.leader.device)
            }
            _ if !from_leader => self.not_leader("this device follows another leader"),
            SyncMessage::NewEntries {
                term: their,
                from_sequence,
                to_sequence,
                prev_term,
                entries,
                commit_sequence,
                prev_hash,
                ..
            } => {
                self.leader_last = self.leader_last.max(to_sequence);
                self.note_commit(commit_sequence, &mut out);
                let after =
                    LogPosition { term: prev_term, sequence: from_sequence.wrapping_sub(1) };
                let count = entries.len() as u64;
                let usable = count > 0
                    && count <= self.config.max_entries_per_response
                    && entries.first().map(|e| e.sequence) == Some(from_sequence)
                    && to_sequence.checked_sub(from_sequence).and_then(|d| d.checked_add(1))
                        == Some(count)
                    && after == applied
                    && continues_chain(prev_hash, applied_hash)
                    && self.position_known
                    && !self.in_round();
                if usable {
                    // Answered once applied (with the new position).
                    let pushed =
                        Pushed { after, after_hash: prev_hash, term: their, entries, reply: to };
                    if let Some(older) = self.pushed.replace(pushed) {
                        out.push(Command::Reply {
                            to: older.reply,
                            message: position_ack(library_id, term, applied, applied_hash),
                        });
                    }
                    self.wake(now, &mut out);
                    return out;
                }
                wake = true;
                position_ack(library_id, term.max(their), applied, applied_hash)
            }
            SyncMessage::Heartbeat { current_sequence, commit_sequence, last_hash, .. } => {
                self.leader_last = self.leader_last.max(current_sequence);
                self.note_commit(commit_sequence, &mut out);
                // At the same sequence, another hash means the logs differ: a round asks the
                // leader, which answers `SyncRequired`.
                let differs = last_hash.is_some_and(|h| applied_hash.is_some_and(|m| m != h));
                wake = current_sequence != applied.sequence || differs;
                follower_heartbeat(library_id, term, applied, applied_hash)
            }
            SyncMessage::FetchEntries { .. } | SyncMessage::Acknowledge { .. } => {
                self.not_leader("this device is a follower of the library")
            }
            other => SyncMessage::error(
                library_id,
                ErrorCode::BadRequest,
                format!("{} is a response, not a request", other.kind()),
            ),
        };
        out.push(Command::Reply { to, message: reply });
        if wake {
            self.wake(now, &mut out);
        }
        out
    }

    /// The log's last position was read (or could not be), without its chain hash: the
    /// machine goes on with the hash unknown (fetches, acknowledgements and heartbeats carry
    /// none until a batch is applied; pushed entries that name a previous hash wait for a
    /// round). The shells read the head ([`Replicator::on_head`]).
    pub fn on_position(
        &mut self,
        result: Result<LogPosition, String>,
        now: Instant,
    ) -> Vec<Command> {
        self.position_read(result.map(|position| (position, None)), now)
    }

    /// The log's last entry was read (or could not be): its position and chain hash.
    pub fn on_head(&mut self, result: Result<LogHead, String>, now: Instant) -> Vec<Command> {
        self.position_read(result.map(|head| (head.position, Some(head.hash))), now)
    }

    fn position_read(
        &mut self,
        result: Result<(LogPosition, Option<ChainHash>), String>,
        now: Instant,
    ) -> Vec<Command> {
        let mut out = Vec::new();
        match std::mem::replace(&mut self.phase, Phase::Stopped) {
            Phase::Round(round) if round.pass.is_none() => match result {
                Ok((position, hash)) => {
                    self.set_position(position, hash);
                    self.begin_pass(round, now, &mut out);
                }
                Err(e) => {
                    let failure = Failure::Fatal(format!("cannot read the sync log: {e}"));
                    self.fail(failure, round.rebuild.is_some(), true, now, &mut out);
                }
            },
            Phase::Heartbeat(None) => match result {
                Ok((position, hash)) => {
                    self.set_position(position, hash);
                    self.send_heartbeat(&mut out);
                }
                Err(e) => {
                    let failure = Failure::Fatal(format!("cannot read the sync log: {e}"));
                    self.fail(failure, false, false, now, &mut out);
                }
            },
            other => self.phase = other,
        }
        out
    }

    /// The fetch `id` was answered (or failed).
    pub fn on_fetched(
        &mut self,
        id: RequestId,
        result: Result<SyncMessage, crate::transport::NetworkError>,
        now: Instant,
    ) -> Vec<Command> {
        let mut out = Vec::new();
        let Some(mut round) = self.take_round() else { return out };
        let stored = match round.pass.as_mut() {
            Some(pass) if pass.ending.is_none() => {
                match pass.fetching.iter_mut().find(|f| f.id == id && f.answer.is_none()) {
                    Some(slot) => {
                        slot.answer = Some(result);
                        pass.front_answered()
                    }
                    None => false,
                }
            }
            _ => false,
        };
        if stored {
            self.advance(round, now, &mut out);
        } else {
            // Unknown, dropped, duplicated, or waiting behind an earlier fetch.
            self.phase = Phase::Round(round);
        }
        out
    }

    /// The batch `id` was applied (or not).
    pub fn on_applied(
        &mut self,
        id: RequestId,
        outcome: BatchOutcome,
        now: Instant,
    ) -> Vec<Command> {
        let mut out = Vec::new();
        match std::mem::replace(&mut self.phase, Phase::Stopped) {
            Phase::Pushing { id: pushing, reply } if pushing == id => {
                let applied = match outcome {
                    BatchOutcome::Applied { last, last_hash } => {
                        self.applied = last;
                        self.applied_hash = last_hash;
                        true
                    }
                    other => {
                        // The round handles it, from the applied position.
                        debug!(library_id = %self.library_id, outcome = ?other, "pushed entries not applied");
                        false
                    }
                };
                out.push(Command::Reply { to: reply, message: self.own_ack() });
                if applied && self.applied.sequence >= self.leader_last {
                    self.set_state(FollowerState::CaughtUp, None);
                    self.enter_idle(now, &mut out);
                } else {
                    self.start_round(None, now, &mut out);
                }
            }
            Phase::Round(round)
                if round
                    .pass
                    .as_ref()
                    .and_then(|p| p.applying)
                    .is_some_and(|(applying, _)| applying == id) =>
            {
                self.batch_applied(round, outcome, now, &mut out);
            }
            other => self.phase = other,
        }
        out
    }

    /// The acknowledgement `id` was answered (or not).
    pub fn on_acknowledged(
        &mut self,
        id: RequestId,
        result: Result<SyncMessage, crate::transport::NetworkError>,
    ) -> Vec<Command> {
        let mut out = Vec::new();
        if self.ack_in_flight != Some(id) {
            return out;
        }
        self.ack_in_flight = None;
        match result {
            Ok(SyncMessage::Heartbeat { commit_sequence, .. }) => {
                self.note_commit(commit_sequence, &mut out)
            }
            Ok(SyncMessage::Error { code: ErrorCode::StaleTerm, term, .. }) if term > 0 => {
                // The leader refused the acknowledgement's term as stale, so its own is newer:
                // learn it (the next round uses it). Passed on even if this machine learned it
                // meanwhile: the election ignores a term it holds.
                self.term = self.term.max(term);
                out.push(Command::AdoptTerm(term));
            }
            Ok(other) => debug!(reply = other.kind(), "acknowledgement answered"),
            Err(e) => debug!(error = %e, "acknowledgement not delivered"),
        }
        if std::mem::take(&mut self.ack_wanted) {
            self.acknowledge(&mut out);
        }
        out
    }

    /// The heartbeat `id` was answered (or not).
    pub fn on_heartbeat(
        &mut self,
        id: RequestId,
        result: Result<SyncMessage, crate::transport::NetworkError>,
        now: Instant,
    ) -> Vec<Command> {
        let mut out = Vec::new();
        let sent = match self.phase {
            Phase::Heartbeat(Some((sent, position))) if sent == id => position,
            _ => return out,
        };
        match result {
            Ok(SyncMessage::Heartbeat { current_sequence, term, commit_sequence, .. }) => {
                self.adopt_if_newer(term, &mut out);
                self.note_commit(commit_sequence, &mut out);
                self.leader_last = self.leader_last.max(current_sequence);
                if current_sequence > sent.sequence {
                    self.run(now, &mut out);
                } else {
                    self.enter_idle(now, &mut out);
                }
            }
            Ok(SyncMessage::SyncRequired { reason, leader_last_sequence, .. }) => {
                let failure = Failure::SyncRequired { reason, target: leader_last_sequence };
                self.fail(failure, false, false, now, &mut out);
            }
            Ok(other) => {
                let failure = self.refusal(other, &mut out);
                self.fail(failure, false, false, now, &mut out);
            }
            Err(e) => self.fail(Failure::Unreachable(e.to_string()), false, false, now, &mut out),
        }
        out
    }

    /// The library was reset for a rebuild (`Ok`: entries stashed).
    pub fn on_reset(&mut self, result: Result<u64, String>, now: Instant) -> Vec<Command> {
        let mut out = Vec::new();
        if !matches!(self.phase, Phase::Resetting) {
            return out;
        }
        match result {
            Ok(stashed) => {
                debug!(library_id = %self.library_id, stashed, "local log stashed for repair");
                self.applied = LogPosition::default();
                self.applied_hash = Some(ChainHash::GENESIS);
                // However the rebuild ends (this round, or a later one after a failure), the
                // next complete round settles the membership and the rebuild mark.
                self.settle_pending = true;
                let rebuild = Rebuild { started: now, reported: 0 };
                self.start_round(Some(rebuild), now, &mut out);
            }
            Err(e) => {
                let failure = Failure::Fatal(format!("cannot reset the library: {e}"));
                self.fail(failure, true, true, now, &mut out);
            }
        }
        out
    }

    /// The membership was settled: the configuration installed, if any (or the error).
    pub fn on_settled(
        &mut self,
        result: Result<Option<lsync_storage::Membership>, String>,
        _now: Instant,
    ) -> Vec<Command> {
        let mut out = Vec::new();
        if !matches!(self.phase, Phase::Settling) {
            return out;
        }
        match result {
            Ok(Some(m)) => {
                info!(library_id = %self.library_id, sequence = m.sequence,
                    "the rebuilt log's configuration is in effect");
                out.push(Command::Membership(FollowerMembership::Applied(m)));
            }
            Ok(None) => {}
            Err(e) => {
                self.settle_pending = true;
                warn!(library_id = %self.library_id, error = %e, "cannot settle the rebuilt log");
            }
        }
        out.push(Command::RecoverOrphans);
        self.phase = Phase::Recovering;
        out
    }

    /// Orphans were recovered (`Ok(None)`: nothing was stashed).
    pub fn on_orphans_recovered(
        &mut self,
        result: Result<Option<RecoveredOrphans>, String>,
        now: Instant,
    ) -> Vec<Command> {
        let mut out = Vec::new();
        if !matches!(self.phase, Phase::Recovering) {
            return out;
        }
        match result {
            Ok(Some(r)) => {
                info!(
                    library_id = %self.library_id,
                    proposals = r.proposals,
                    changes = r.changes,
                    dropped = r.dropped,
                    "changes the leader lacked are proposed again"
                );
                out.push(Command::WakeProposer);
            }
            Ok(None) => {}
            Err(e) => {
                warn!(library_id = %self.library_id, error = %e, "cannot recover orphaned changes")
            }
        }
        self.set_state(FollowerState::CaughtUp, None);
        self.enter_idle(now, &mut out);
        out
    }

    // --- runs, rounds and passes ---

    /// A wake: run now if idle, once more when idle otherwise.
    fn wake(&mut self, now: Instant, out: &mut Vec<Command>) {
        if matches!(self.phase, Phase::Idle) {
            self.run(now, out);
        } else {
            self.wake_pending = true;
        }
    }

    /// Idle: a pending wake runs at once, a heartbeat that is due leaves.
    fn enter_idle(&mut self, now: Instant, out: &mut Vec<Command>) {
        self.phase = Phase::Idle;
        if std::mem::take(&mut self.wake_pending) {
            self.run(now, out);
        } else if self.next_heartbeat.is_some_and(|at| now >= at) {
            self.heartbeat(now, out);
        }
    }

    /// Pushed entries if they still continue the log, otherwise a round.
    fn run(&mut self, now: Instant, out: &mut Vec<Command>) {
        let Some(pushed) = self.pushed.take() else {
            return self.start_round(None, now, out);
        };
        if !self.position_known
            || self.applied != pushed.after
            || !continues_chain(pushed.after_hash, self.applied_hash)
        {
            // A round got there first (or the log changed): nothing to do with them.
            out.push(Command::Reply { to: pushed.reply, message: self.own_ack() });
            if self.position_known && self.applied.sequence >= self.leader_last {
                self.set_state(FollowerState::CaughtUp, None);
                self.enter_idle(now, out);
            } else {
                self.start_round(None, now, out);
            }
            return;
        }
        self.adopt_if_newer(pushed.term, out);
        let id = self.next_id();
        out.push(Command::Apply { id, entries: pushed.entries });
        self.phase = Phase::Pushing { id, reply: pushed.reply };
    }

    fn heartbeat(&mut self, now: Instant, out: &mut Vec<Command>) {
        self.next_heartbeat = Some(add(now, self.config.heartbeat_interval));
        if self.position_known {
            self.send_heartbeat(out);
        } else {
            self.phase = Phase::Heartbeat(None);
            out.push(Command::ReadPosition);
        }
    }

    fn send_heartbeat(&mut self, out: &mut Vec<Command>) {
        let id = self.next_id();
        let (position, hash, term) = (self.applied, self.applied_hash, self.term);
        out.push(Command::Heartbeat { id, position, hash, term });
        self.phase = Phase::Heartbeat(Some((id, self.applied)));
    }

    fn start_round(&mut self, rebuild: Option<Rebuild>, now: Instant, out: &mut Vec<Command>) {
        let round = Box::new(Round { rebuild, passes: 0, pass: None });
        self.begin_pass(round, now, out);
    }

    /// A pass from the applied position (read first if it never was).
    fn begin_pass(&mut self, mut round: Box<Round>, now: Instant, out: &mut Vec<Command>) {
        if !self.position_known {
            round.pass = None;
            self.phase = Phase::Round(round);
            out.push(Command::ReadPosition);
            return;
        }
        round.passes += 1;
        round.pass = Some(Pass::new(self.applied, self.applied_hash));
        if round.rebuild.is_none() {
            self.set_state(FollowerState::Fetching, None);
        }
        self.advance(round, now, out);
    }

    /// Reads the answers that arrived in order, applies and fetches while the pipeline has
    /// room, and ends the pass when it is complete or over.
    fn advance(&mut self, mut round: Box<Round>, now: Instant, out: &mut Vec<Command>) {
        let flow = loop {
            let Some(pass) = round.pass.as_mut() else { break Flow::Continue };
            if pass.ending.is_some() {
                break Flow::Continue;
            }
            if pass.front_answered() {
                if let Some(fetch) = pass.fetching.pop_front() {
                    if let Some(answer) = fetch.answer {
                        if let Flow::End(ending) = self.read_answer(pass, fetch.since, answer, out)
                        {
                            break Flow::End(ending);
                        }
                    }
                }
            }
            let done = self.pump(pass, out);
            if done.is_some() || !pass.front_answered() {
                break done.unwrap_or(Flow::Continue);
            }
        };
        match flow {
            Flow::Continue => self.phase = Phase::Round(round),
            Flow::Done { applied, target } => self.round_done(round, applied, target, now, out),
            Flow::End(ending) => self.end_pass(round, ending, now, out),
        }
    }

    /// Starts a batch if none applies, sends fetches while the pipeline has room; `Done` when
    /// nothing is in flight and nothing more is to fetch.
    fn pump(&mut self, pass: &mut Pass, out: &mut Vec<Command>) -> Option<Flow> {
        if pass.applying.is_none() && !pass.ready.is_empty() {
            let batch = take_batch(&mut pass.ready, self.config.max_response_bytes);
            let id = self.next_id();
            pass.applying = Some((id, batch.len() as u64));
            out.push(Command::Apply { id, entries: batch });
        }
        while pass.fetching.len() < FETCHES_IN_FLIGHT
            && pass.ready.len() + pass.fetching.len() < PIPELINE
        {
            let (since, since_hash) = match pass.fetching.back() {
                None if pass.more => (pass.tip, pass.tip_hash),
                None => break,
                Some(_) if pass.missed >= MAX_MISSED_GUESSES => break,
                Some(last) => {
                    let block = self.config.max_entries_per_response;
                    match next_guess(last.since, self.leader_last, block) {
                        Some(guess) => {
                            out.push(Command::CountMetric(Counter::FetchesAhead, 1));
                            // The hash there is not known: the leader checks the term only.
                            (guess, None)
                        }
                        None => break,
                    }
                }
            };
            let id = self.next_id();
            pass.fetching.push_back(Fetching { id, since, answer: None });
            out.push(Command::Fetch { id, since, since_hash, term: self.term });
        }
        (pass.fetching.is_empty() && pass.applying.is_none()).then(|| Flow::Done {
            applied: pass.applied_total,
            target: pass.leader_last.saturating_sub(pass.start.sequence),
        })
    }

    /// Reads the answer to the oldest fetch in flight, which fetched after `since`.
    fn read_answer(
        &mut self,
        pass: &mut Pass,
        since: LogPosition,
        answer: Result<SyncMessage, crate::transport::NetworkError>,
        out: &mut Vec<Command>,
    ) -> Flow {
        let response = match answer {
            Ok(response) => response,
            Err(e) => return Flow::End(Ending::Fail(Failure::Unreachable(e.to_string()))),
        };
        let (term, entries, has_more, last) = match response {
            // A response of a term older than this follower's is discarded (docs/protocol.md
            // §6, the term rule): nothing of it is noted or applied; the pass starts again from
            // the applied position, in the current term.
            SyncMessage::EntriesResponse { term, .. }
                if fence(SyncRole::Follower, term, self.term) == Verdict::Stale =>
            {
                debug!(library_id = %self.library_id, term, "response of an older term discarded");
                return Flow::End(Ending::Restart);
            }
            SyncMessage::EntriesResponse {
                term,
                entries,
                has_more,
                leader_last_sequence,
                commit_sequence,
                ..
            } => {
                self.note_commit(commit_sequence, out);
                (term, entries, has_more, leader_last_sequence)
            }
            SyncMessage::SyncRequired { reason, leader_last_sequence, .. } => {
                let target = leader_last_sequence;
                return Flow::End(Ending::Fail(Failure::SyncRequired { reason, target }));
            }
            other => return Flow::End(Ending::Refused(other)),
        };
        self.adopt_if_newer(term, out);
        self.leader_last = self.leader_last.max(last);
        pass.leader_last = pass.leader_last.max(last);
        let expected = since.sequence.checked_add(1);
        if entries.first().is_some_and(|first| Some(first.sequence) != expected) {
            // Not a continuation of what was asked for: start again from the applied position.
            debug!(expected = ?expected, "gap in response, re-fetching");
            return Flow::End(Ending::Restart);
        }
        if let Some(last) = entries.last() {
            pass.tip = LogPosition::of(last);
            pass.tip_hash = last.hash;
            pass.ready.push_back(entries);
        }
        pass.more = has_more && pass.tip.sequence > since.sequence;
        // A guess that missed (the response ended elsewhere, or the entry it ends with has
        // another term) is dropped, unread: the fetch from `tip` replaces it.
        if pass.fetching.front().is_some_and(|next| next.since != pass.tip) {
            pass.missed += 1;
            out.push(Command::CountMetric(Counter::FetchesAheadMissed, pass.fetching.len() as u64));
            for dropped in pass.fetching.drain(..) {
                out.push(Command::DropFetch { id: dropped.id });
            }
        }
        Flow::Continue
    }

    /// The batch the pass applied is done.
    fn batch_applied(
        &mut self,
        mut round: Box<Round>,
        outcome: BatchOutcome,
        now: Instant,
        out: &mut Vec<Command>,
    ) {
        let failure = self.batch_failure(&outcome);
        let Some(pass) = round.pass.as_mut() else {
            self.phase = Phase::Round(round);
            return;
        };
        let count = pass.applying.take().map_or(0, |(_, count)| count);
        if let BatchOutcome::Applied { last, last_hash } = outcome {
            self.applied = last;
            self.applied_hash = last_hash;
        }
        if let Some(ending) = pass.ending.take() {
            // The pass was over and waited for this batch: its failure (not a gap) wins.
            let ending = failure.map_or(ending, Ending::Fail);
            return self.conclude(round, ending, now, out);
        }
        match outcome {
            BatchOutcome::Applied { .. } => {}
            BatchOutcome::Gap => {
                debug!(library_id = %self.library_id, "gap while applying, re-fetching");
                return self.end_pass(round, Ending::Restart, now, out);
            }
            _ => {
                let ending = failure.map_or(Ending::Restart, Ending::Fail);
                return self.end_pass(round, ending, now, out);
            }
        }
        pass.applied_total += count;
        pass.since_ack += count;
        if pass.since_ack >= self.config.ack_every {
            pass.since_ack = 0;
            self.acknowledge(out);
        }
        let target = pass.leader_last.saturating_sub(pass.start.sequence);
        let applied = pass.applied_total;
        self.report_progress(&mut round.rebuild, applied, target, false, now, out);
        self.advance(round, now, out);
    }

    /// What a failed batch means for the round (`None`: applied, or a gap).
    fn batch_failure(&self, outcome: &BatchOutcome) -> Option<Failure> {
        match outcome {
            BatchOutcome::Applied { .. } | BatchOutcome::Gap => None,
            BatchOutcome::Diverged { sequence, local_term, remote_term } => {
                Some(Failure::SyncRequired {
                    reason: format!(
                        "local entry {sequence} has term {local_term}, the leader's has term {remote_term}"
                    ),
                    target: self.leader_last,
                })
            }
            // The leader's entry at `sequence` stands for another log than this one up to there
            // (a reused (sequence, term), e.g. a leader that lost its last writes): the same
            // rebuild as a term divergence, which keeps this log aside and re-proposes what the
            // leader's lacks (its content compared, not its terms).
            BatchOutcome::ChainMismatch { sequence, carried, computed } => {
                Some(Failure::SyncRequired {
                    reason: format!(
                        "the leader's entry {sequence} carries chain hash {}, this log has {}: \
                         the logs differ at or before it",
                        carried.short(),
                        computed.short()
                    ),
                    target: self.leader_last,
                })
            }
            BatchOutcome::UpgradeNeeded(e) => Some(Failure::UpgradeNeeded(e.clone())),
            BatchOutcome::Failed(e) => Some(Failure::Fatal(format!("applying entries failed: {e}"))),
        }
    }

    /// Ends the pass early: its fetches are dropped, what it held forgotten; the batch applying,
    /// if any, is awaited first.
    fn end_pass(
        &mut self,
        mut round: Box<Round>,
        ending: Ending,
        now: Instant,
        out: &mut Vec<Command>,
    ) {
        if let Some(pass) = round.pass.as_mut() {
            for dropped in pass.fetching.drain(..) {
                out.push(Command::DropFetch { id: dropped.id });
            }
            pass.ready.clear();
            if pass.applying.is_some() {
                pass.ending = Some(ending);
                self.phase = Phase::Round(round);
                return;
            }
        }
        self.conclude(round, ending, now, out);
    }

    /// A pass that ended early: another pass, or the round's failure.
    fn conclude(
        &mut self,
        mut round: Box<Round>,
        ending: Ending,
        now: Instant,
        out: &mut Vec<Command>,
    ) {
        let rebuild = round.rebuild.is_some();
        let failure = match ending {
            Ending::Restart if round.passes <= MAX_RESTARTS => {
                round.pass = None;
                return self.begin_pass(round, now, out);
            }
            Ending::Restart => Failure::Unreachable(format!(
                "the leader's responses did not continue the log {} times in a row",
                MAX_RESTARTS + 1
            )),
            Ending::Fail(failure) => failure,
            Ending::Refused(message) => self.refusal(message, out),
        };
        self.fail(failure, rebuild, true, now, out);
    }

    /// The leader has nothing more: final progress, acknowledgement, then settle and recover.
    fn round_done(
        &mut self,
        mut round: Box<Round>,
        applied: u64,
        target: u64,
        now: Instant,
        out: &mut Vec<Command>,
    ) {
        self.report_progress(&mut round.rebuild, applied, target, true, now, out);
        self.acknowledge(out);
        if round.rebuild.is_some() {
            let last = self.applied.sequence;
            info!(library_id = %self.library_id, last_sequence = last, "full reconciliation done");
            out.push(Command::Event(SyncEvent::ResyncDone {
                library_id: self.library_id,
                last_sequence: last,
            }));
            self.settle_pending = true;
        }
        self.backoff.reset();
        if std::mem::take(&mut self.settle_pending) {
            out.push(Command::Settle);
            self.phase = Phase::Settling;
        } else {
            out.push(Command::RecoverOrphans);
            self.phase = Phase::Recovering;
        }
    }

    fn report_progress(
        &mut self,
        rebuild: &mut Option<Rebuild>,
        applied: u64,
        target: u64,
        done: bool,
        now: Instant,
        out: &mut Vec<Command>,
    ) {
        let Some(rebuild) = rebuild else {
            self.status.progress = Some(Progress { applied, target, elapsed_ms: 0 });
            return;
        };
        let elapsed_ms = now.saturating_duration_since(rebuild.started).as_millis() as u64;
        self.status.progress = Some(Progress { applied, target, elapsed_ms });
        if done || applied >= rebuild.reported.saturating_add(PROGRESS_EVERY) {
            rebuild.reported = applied;
            out.push(Command::Event(SyncEvent::ResyncProgress {
                library_id: self.library_id,
                applied,
                target,
            }));
        }
    }

    // --- failures ---

    /// Handles a failed round (`rebuild`: the round rebuilt the library) or heartbeat.
    fn fail(
        &mut self,
        failure: Failure,
        rebuild: bool,
        in_round: bool,
        now: Instant,
        out: &mut Vec<Command>,
    ) {
        let library_id = self.library_id;
        match failure {
            Failure::Unreachable(error) => {
                let delay = self.backoff.next_delay(&mut self.rng);
                let retry_in_ms = delay.as_millis() as u64;
                warn!(%library_id, %error, retry_in_ms, "leader unreachable");
                self.status.reconnect_attempts = self.status.reconnect_attempts.saturating_add(1);
                out.push(Command::CountMetric(Counter::Reconnects, 1));
                self.set_state(FollowerState::Reconnecting, Some(error.clone()));
                out.push(Command::Event(SyncEvent::LeaderUnreachable {
                    library_id,
                    error,
                    retry_in_ms,
                }));
                self.wait(delay, in_round, now);
            }
            // The rebuild's round was refused: run again at once (from where it got).
            Failure::SyncRequired { .. } if rebuild => self.run(now, out),
            Failure::SyncRequired { reason, target } => {
                warn!(%library_id, %reason, target, "full reconciliation");
                out.push(Command::CountMetric(Counter::Resyncs, 1));
                self.set_state(FollowerState::Reconciling, None);
                out.push(Command::Event(SyncEvent::ResyncStarted { library_id, reason, target }));
                // Keep this device's log aside: the entries the leader lacks are re-proposed
                // after the rebuild, so nothing committed here is lost.
                out.push(Command::ResetForRepair);
                self.phase = Phase::Resetting;
            }
            Failure::TermLearned(term) => {
                debug!(%library_id, term, "learned the leader's term");
                self.run(now, out);
            }
            Failure::UpgradeNeeded(error) => {
                warn!(%library_id, %error, "upgrade needed: this device cannot apply the \
                    library's entries any more");
                self.set_state(FollowerState::UpgradeNeeded, Some(error.clone()));
                out.push(Command::Event(SyncEvent::ApplyFailed { library_id, error }));
                // Nothing will change until the binary does; check rarely.
                self.wait(self.config.backoff_max, in_round, now);
            }
            Failure::Fatal(error) => {
                let delay = self.backoff.next_delay(&mut self.rng);
                warn!(%library_id, %error, "applier stalled");
                self.set_state(FollowerState::Stalled, Some(error.clone()));
                out.push(Command::Event(SyncEvent::ApplyFailed { library_id, error }));
                // Retry later (e.g. once the host registered the missing model type).
                self.wait(delay.max(self.config.backoff_max), in_round, now);
            }
        }
    }

    fn wait(&mut self, delay: Duration, in_round: bool, now: Instant) {
        self.phase = Phase::Waiting { until: add(now, delay.min(MAX_TIMER)), in_round };
    }

    /// A refusal from the device this follower took for its leader: a `StaleTerm` naming a
    /// newer term is learned (retry at once); `NotLeader` with a hint re-points the follower;
    /// a removal is reported; anything else is unreachable.
    fn refusal(&mut self, message: SyncMessage, out: &mut Vec<Command>) -> Failure {
        if let SyncMessage::Error { code: ErrorCode::StaleTerm, term, .. } = &message {
            let term = *term;
            if self.adopt_if_newer(term, out) {
                return Failure::TermLearned(term);
            }
        }
        if let SyncMessage::Error { code: ErrorCode::Unauthorized, message, .. } = &message {
            if message.contains("removed from library") {
                out.push(Command::Membership(FollowerMembership::Removed(message.clone())));
            }
        }
        if let Some(hint) = LeaderHint::named_in(&message) {
            if Some(hint.device) != self.leader.device {
                info!(library_id = %self.library_id, leader = %hint.device, "re-pointing to the leader the old one named");
                out.push(Command::Repoint(hint));
            }
        }
        Failure::Unreachable(match message {
            SyncMessage::Error { code, message, .. } => match code {
                ErrorCode::Unauthorized | ErrorCode::UnknownLibrary => {
                    format!("leader refused: {code}: {message}")
                }
                _ => format!("leader answered {code}: {message}"),
            },
            other => format!("unexpected reply {}", other.kind()),
        })
    }

    // --- small helpers ---

    /// Tells the leader what is applied; one acknowledgement in flight at most.
    fn acknowledge(&mut self, out: &mut Vec<Command>) {
        if self.ack_in_flight.is_some() {
            self.ack_wanted = true;
            return;
        }
        let id = self.next_id();
        self.ack_in_flight = Some(id);
        let (position, hash, term) = (self.applied, self.applied_hash, self.term);
        out.push(Command::Acknowledge { id, position, hash, term });
    }

    /// The leader is in a newer term than this follower knew: the election persists it (and
    /// re-points the follower if needed); this machine goes on in that term.
    /// The term rule ([`fence`]) for a term heard from the leader: a newer one is adopted
    /// (here, and by the election through [`Command::AdoptTerm`]). Whether it was newer.
    fn adopt_if_newer(&mut self, term: u64, out: &mut Vec<Command>) -> bool {
        if !fence(SyncRole::Follower, term, self.term).is_newer() {
            return false;
        }
        debug!(library_id = %self.library_id, term, "the leader is in a newer term");
        self.term = term;
        out.push(Command::AdoptTerm(term));
        true
    }

    fn note_commit(&mut self, commit: u64, out: &mut Vec<Command>) {
        if commit > self.leader_commit {
            self.leader_commit = commit;
            out.push(Command::LeaderCommit(commit));
        }
    }

    fn not_leader(&self, message: &str) -> SyncMessage {
        SyncMessage::Error {
            leader_peer: self.leader.device.map(|_| self.leader.peer.clone()),
            term: 0,
            library_id: self.library_id,
            code: ErrorCode::NotLeader,
            message: message.into(),
            leader_hint: self.leader.device,
        }
    }

    /// This follower's position as the answer to a leader's request.
    fn own_ack(&self) -> SyncMessage {
        position_ack(self.library_id, self.term, self.applied, self.applied_hash)
    }

    fn set_position(&mut self, position: LogPosition, hash: Option<ChainHash>) {
        self.applied = position;
        self.applied_hash = hash;
        self.position_known = true;
    }

    fn set_state(&mut self, state: FollowerState, error: Option<String>) {
        self.status.state = state;
        self.status.last_error = error;
        if state == FollowerState::CaughtUp {
            self.status.progress = None;
            self.status.reconnect_attempts = 0;
        }
    }

    /// A round, its failure handling, a rebuild or the steps after a round are in progress:
    /// pushed entries would wait for its end, so they are not taken.
    fn in_round(&self) -> bool {
        matches!(
            self.phase,
            Phase::Round(_)
                | Phase::Resetting
                | Phase::Settling
                | Phase::Recovering
                | Phase::Waiting { in_round: true, .. }
        )
    }

    fn take_round(&mut self) -> Option<Box<Round>> {
        match std::mem::replace(&mut self.phase, Phase::Stopped) {
            Phase::Round(round) => Some(round),
            other => {
                self.phase = other;
                None
            }
        }
    }

    fn next_id(&mut self) -> RequestId {
        let id = RequestId(self.next_id);
        self.next_id = self.next_id.wrapping_add(1);
        id
    }
}

/// The next batch: the oldest ready response, and the ones after it while the batch stays
/// within `max_bytes` (as [`lsync_protocol::entry_bytes`] counts them).
fn take_batch(ready: &mut VecDeque<Vec<SyncLogEntry>>, max_bytes: usize) -> Vec<SyncLogEntry> {
    let mut batch = ready.pop_front().unwrap_or_default();
    let mut bytes: usize = batch.iter().map(lsync_protocol::entry_bytes).sum();
    while let Some(next) = ready.front() {
        let more: usize = next.iter().map(lsync_protocol::entry_bytes).sum();
        if bytes.saturating_add(more) > max_bytes {
            break;
        }
        bytes += more;
        batch.extend(ready.pop_front().unwrap_or_default());
    }
    batch
}

/// Whether a log whose hash at a position is `local` continues one whose hash there is
/// `remote`, as far as the hashes tell: yes when the remote one is absent (an older peer: the
/// term rules decide), no when it is present and the local one differs or is not known.
fn continues_chain(remote: Option<ChainHash>, local: Option<ChainHash>) -> bool {
    remote.is_none_or(|remote| local == Some(remote))
}

fn add(now: Instant, d: Duration) -> Instant {
    now.checked_add(d).unwrap_or(now)
}
