//! The proposer — one per open library, on every device: delivers the library's durable outbox
//! to whichever device leads it now.
//!
//! A change made on a device that does not lead goes into the `outbox` table first (so it
//! survives restarts), then is sent to the leader as a `Propose` with a fixed `proposal_id`; the
//! leader commits it at most once however often it is retried. A change whose `Propose` would
//! not fit in a frame ([`SyncConfig::max_frame`]) is refused before it is queued. Proposals are
//! delivered in order, one at a time; one whose delivery fails waits out a backoff of its own
//! while the later ones are delivered; one refused for good moves to the outbox's `failed`
//! state (counted in [`crate::metrics::Metrics::proposals_failed`], told as
//! [`SyncEvent::ProposalFailed`]) instead of being deleted; a leader change or a new proposal
//! starts a round at once. When this device leads, its own outbox (e.g. changes recovered
//! after it was deposed) is committed directly through its `TransactionManager`.
//!
//! The decisions live in [`ProposerCore`] (pure, tested without I/O); [`Proposer`] is the shell
//! that reads and writes the outbox, sends the requests and runs the retry timer.

mod core;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use actix::Recipient;
use libp2p::PeerId;
use lsync_protocol::{ErrorCode, SyncMessage};
use lsync_storage::{Change, Database, OutboxEntry, OutboxState, StorageError, TransactionManager};
use rand::SeedableRng;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, info, warn};
use uuid::Uuid;

pub use self::core::{
    proposal_too_large, propose, too_large, Command, Delivery, LeaderView, ProposerCore,
    ProposerStatus, SubmitOutcome, Target,
};
use crate::blocking::run_blocking;
use crate::config::SyncConfig;
use crate::events::SyncEvent;
use crate::messages::ConfirmLease;
use crate::metrics::Metrics;
use crate::transport::Transport;

/// What became of a change submitted on this device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Submitted {
    /// The leader committed it: its entries are `first..=last`.
    Committed { first: u64, last: u64 },
    /// No leader could be reached: it waits in the outbox and will be delivered.
    Queued { proposal_id: Uuid },
}

/// Why a submission was refused (nothing was queued).
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("invalid change: {0}")]
    Invalid(#[from] StorageError),
    #[error("the leader refused the change: {0}")]
    Refused(String),
    /// Its `Propose` would exceed the frame limit: no leader could ever receive it.
    #[error("the change is too large: {0}")]
    TooLarge(String),
}

/// What the handle tells the running machine.
enum Event {
    Wake,
    Leader(LeaderView),
    Members(BTreeMap<Uuid, PeerId>),
    Submitted(Uuid, oneshot::Sender<SubmitOutcome>),
    Observe(oneshot::Sender<ProposerStatus>),
    /// Test only: the task panics (to test its supervision).
    #[cfg(test)]
    Panic,
}

/// Delivers a library's outbox. Cheap to clone; [`Proposer::run`] drives it.
#[derive(Clone)]
pub struct Proposer {
    inner: Arc<Inner>,
}

struct Inner {
    library_id: Uuid,
    device_id: Uuid,
    db: Database,
    tm: TransactionManager,
    transport: Arc<dyn Transport>,
    config: SyncConfig,
    /// The host's events (a proposal refused for good is told there).
    host_events: tokio::sync::broadcast::Sender<SyncEvent>,
    metrics: Arc<Metrics>,
    /// Set while a leadership transfer holds this device's writes: its own outbox is not
    /// committed locally meanwhile.
    writes_paused: Arc<std::sync::atomic::AtomicBool>,
    /// Asked before a proposal committed locally (this device leads) is answered as
    /// committed: the leader lease (docs/architecture.md, "The leader lease"). Unset (tests
    /// of the proposer alone): answered as committed.
    lease: Mutex<Option<Recipient<ConfirmLease>>>,
    /// The last leader and members set, for a `run` that starts (or restarts) later.
    leader: Mutex<LeaderView>,
    members: Mutex<BTreeMap<Uuid, PeerId>>,
    /// To the running machine. The queue holds at most one event per caller waiting in
    /// `submit` plus the service's own leader/member changes, so it stays small.
    events: Mutex<mpsc::UnboundedSender<Event>>,
}

impl Proposer {
    /// A proposer for one library; it tells `host_events` and counts in `metrics` the
    /// proposals refused for good, and commits nothing locally while `writes_paused` (a
    /// leadership transfer).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        library_id: Uuid,
        device_id: Uuid,
        db: Database,
        tm: TransactionManager,
        transport: Arc<dyn Transport>,
        config: SyncConfig,
        host_events: tokio::sync::broadcast::Sender<SyncEvent>,
        metrics: Arc<Metrics>,
        writes_paused: Arc<std::sync::atomic::AtomicBool>,
    ) -> Self {
        // Until `run` starts, events go nowhere: `run` begins from the stored leader and members
        // and reads the outbox, so nothing they said is lost.
        let (events, _) = mpsc::unbounded_channel();
        Self {
            inner: Arc::new(Inner {
                library_id,
                device_id,
                db,
                tm,
                transport,
                config,
                host_events,
                metrics,
                writes_paused,
                lease: Mutex::new(None),
                leader: Mutex::new(LeaderView::default()),
                members: Mutex::new(BTreeMap::new()),
                events: Mutex::new(events),
            }),
        }
    }

    fn send(&self, event: Event) {
        let _ = self.inner.events.lock().expect("events lock").send(event);
    }

    /// Where a proposal committed locally asks whether it may be answered as committed (the
    /// SyncService, which asks the election's lease).
    pub fn set_lease(&self, lease: Recipient<ConfirmLease>) {
        *self.inner.lease.lock().expect("lease lock") = Some(lease);
    }

    /// The library's members (device → peer).
    pub fn set_members(&self, members: BTreeMap<Uuid, PeerId>) {
        *self.inner.members.lock().expect("members lock") = members.clone();
        self.send(Event::Members(members));
    }

    /// The leader changed: deliver what waits, to it.
    pub fn set_leader(&self, view: LeaderView) {
        *self.inner.leader.lock().expect("leader lock") = view;
        self.send(Event::Leader(view));
    }

    /// Starts a delivery round soon (e.g. after orphans were queued).
    pub fn wake(&self) {
        self.send(Event::Wake);
    }

    /// The running task's state; `None` when no task runs (not started yet, or stopped by a
    /// panic and not restarted yet).
    pub async fn observe(&self) -> Option<ProposerStatus> {
        let (tx, rx) = oneshot::channel();
        self.send(Event::Observe(tx));
        rx.await.ok()
    }

    /// Test only: makes the running task panic.
    #[cfg(test)]
    pub fn inject_panic(&self) {
        self.send(Event::Panic);
    }

    /// Queues `changes` durably as proposal `proposal_id` and delivers the outbox; tells
    /// whether they were committed in the round that reached them. Without a running
    /// [`Proposer::run`] they stay queued. Changes whose `Propose` would exceed
    /// [`SyncConfig::max_frame`] are refused before they are queued ([`SubmitError::TooLarge`]).
    ///
    /// The entries the leader commits carry `proposal_id`. Submitting an id that is in the
    /// outbox already writes nothing: the entry there (with the changes it was queued with) is
    /// delivered and this call answers with its outcome — queued, committed, or refused when
    /// it is in the `failed` state. The leader commits one proposal id at most once.
    pub async fn submit(
        &self,
        proposal_id: Uuid,
        changes: Vec<Change>,
    ) -> Result<Submitted, SubmitError> {
        let (library_id, me) = (self.inner.library_id, self.inner.device_id);
        let max_frame = self.inner.config.max_frame;
        if let Some(reason) = proposal_too_large(library_id, me, proposal_id, &changes, max_frame) {
            return Err(SubmitError::TooLarge(reason));
        }
        let db = self.inner.db.clone();
        run_blocking(move || db.outbox_push(proposal_id, &changes)).await?;
        let (tx, rx) = oneshot::channel();
        self.send(Event::Submitted(proposal_id, tx));
        match rx.await {
            Ok(SubmitOutcome::Committed { first, last }) => {
                Ok(Submitted::Committed { first, last })
            }
            Ok(SubmitOutcome::Refused(reason)) => Err(SubmitError::Refused(reason)),
            Ok(SubmitOutcome::Queued) | Err(_) => {
                // A round that ran before the task saw this submission may have delivered it
                // already: a refusal is in the outbox (anything else is queued, or committed
                // and then looked up by its proposal id).
                let db = self.inner.db.clone();
                match run_blocking(move || db.outbox_get(proposal_id)).await {
                    Ok(Some(OutboxEntry { state: OutboxState::Failed { reason, .. }, .. })) => {
                        Err(SubmitError::Refused(reason))
                    }
                    _ => Ok(Submitted::Queued { proposal_id }),
                }
            }
        }
    }

    /// Drives the machine: performs its commands and feeds it events, results and the retry
    /// timer. Spawn it once per start; it ends when the task is aborted (a new `run` takes
    /// over from the stored state). The SyncService supervises it: a task that ended (a panic)
    /// is spawned again, and resumes from the stored leader and members and the outbox;
    /// submissions waiting on the old task are answered `Queued` (they stay in the outbox).
    pub async fn run(self) {
        let (tx, mut rx) = mpsc::unbounded_channel();
        *self.inner.events.lock().expect("events lock") = tx;
        let mut core = ProposerCore::new(
            self.inner.device_id,
            self.inner.config.backoff_initial,
            self.inner.config.backoff_max,
            rand::rngs::StdRng::from_entropy(),
        );
        let leader = *self.inner.leader.lock().expect("leader lock");
        let members = self.inner.members.lock().expect("members lock").clone();
        let mut waiting: HashMap<u64, oneshot::Sender<SubmitOutcome>> = HashMap::new();
        let mut next_token = 0u64;
        let mut todo = core.set_members(members);
        todo.extend(core.set_leader(leader));
        let mut sweep = tokio::time::interval_at(Instant::now() + SWEEP, SWEEP);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.perform(&mut core, todo, &mut waiting).await;
            let deadline = core.next_deadline().map(Instant::from_std);
            todo = tokio::select! {
                _ = sweep.tick() => core.wake(),
                event = rx.recv() => match event {
                    None => return,
                    Some(Event::Wake) => core.wake(),
                    Some(Event::Leader(view)) => core.set_leader(view),
                    Some(Event::Members(members)) => core.set_members(members),
                    Some(Event::Submitted(proposal_id, answer)) => {
                        next_token += 1;
                        waiting.insert(next_token, answer);
                        core.submitted(proposal_id, next_token)
                    }
                    Some(Event::Observe(answer)) => {
                        let _ = answer.send(core.status());
                        Vec::new()
                    }
                    #[cfg(test)]
                    Some(Event::Panic) => panic!("injected panic in the proposer's task"),
                },
                _ = sleep_until(deadline), if deadline.is_some() => core.tick(std::time::Instant::now()),
            };
        }
    }

    /// Performs `commands` and everything they lead to, in order.
    async fn perform(
        &self,
        core: &mut ProposerCore<rand::rngs::StdRng>,
        commands: Vec<Command>,
        waiting: &mut HashMap<u64, oneshot::Sender<SubmitOutcome>>,
    ) {
        let library_id = self.inner.library_id;
        let mut queue: std::collections::VecDeque<Command> = commands.into();
        while let Some(command) = queue.pop_front() {
            let db = self.inner.db.clone();
            let more = match command {
                Command::ListOutbox => match run_blocking(move || db.outbox_list()).await {
                    Ok(entries) => {
                        if !entries.is_empty() {
                            debug!(%library_id, queued = entries.len(), "delivering the outbox");
                        }
                        core.listed(entries, std::time::Instant::now())
                    }
                    Err(e) => {
                        warn!(%library_id, error = %e, "cannot read the outbox; retrying");
                        core.list_failed(std::time::Instant::now())
                    }
                },
                Command::Redeliver => {
                    match run_blocking(move || db.outbox_redeliver_unheld()).await {
                        Ok(0) => {}
                        Ok(n) => {
                            info!(%library_id, proposals = n, "a new term: delivered proposals this log does not hold are proposed again")
                        }
                        Err(e) => {
                            warn!(%library_id, error = %e, "cannot look over the delivered proposals")
                        }
                    }
                    Vec::new()
                }
                Command::Deliver { proposal_id, target, changes } => {
                    let delivery = self.deliver(proposal_id, target, changes).await;
                    match &delivery {
                        Delivery::Committed { first, last } => {
                            info!(%library_id, proposal = %proposal_id, first, last, "proposal committed")
                        }
                        Delivery::Refused(reason) => {
                            warn!(%library_id, proposal = %proposal_id, %reason, "proposal refused for good; kept in the outbox as failed")
                        }
                        Delivery::Failed(reason) => {
                            debug!(%library_id, proposal = %proposal_id, %reason, "proposal not delivered; will retry")
                        }
                    }
                    core.delivered(proposal_id, delivery, std::time::Instant::now())
                }
                Command::Remove { proposal_id, last_sequence } => {
                    // still shown (the pending overlay) until this device's log holds it
                    let settled = run_blocking(move || {
                        db.outbox_settle(proposal_id, last_sequence)?;
                        db.outbox_get(proposal_id)
                    })
                    .await;
                    match settled {
                        // the log is past the answer without it: proposed again
                        Ok(Some(e)) if e.state == lsync_storage::OutboxState::Pending => {
                            core.wake()
                        }
                        Ok(_) => Vec::new(),
                        Err(e) => {
                            warn!(%library_id, error = %e, "cannot settle a delivered proposal in the outbox");
                            Vec::new()
                        }
                    }
                }
                Command::MarkFailed { proposal_id, reason } => {
                    Metrics::add(&self.inner.metrics.proposals_failed, 1);
                    let at = now_ms();
                    let stored = reason.clone();
                    if let Err(e) =
                        run_blocking(move || db.outbox_mark_failed(proposal_id, &stored, at)).await
                    {
                        warn!(%library_id, error = %e, "cannot mark a refused proposal as failed");
                    }
                    let _ = self.inner.host_events.send(SyncEvent::ProposalFailed {
                        library_id,
                        proposal_id,
                        reason,
                    });
                    Vec::new()
                }
                Command::RecordFailure { proposal_id, reason, retry_in } => {
                    let at =
                        now_ms().saturating_add(retry_in.as_millis().min(i64::MAX as u128) as i64);
                    if let Err(e) =
                        run_blocking(move || db.outbox_record_failure(proposal_id, &reason, at))
                            .await
                    {
                        warn!(%library_id, error = %e, "cannot record a failed delivery");
                    }
                    Vec::new()
                }
                Command::Answer { token, outcome } => {
                    if let Some(answer) = waiting.remove(&token) {
                        let _ = answer.send(outcome);
                    }
                    Vec::new()
                }
            };
            queue.extend(more);
        }
    }

    async fn deliver(&self, proposal_id: Uuid, target: Target, changes: Vec<Change>) -> Delivery {
        let (library_id, me) = (self.inner.library_id, self.inner.device_id);
        match target {
            Target::Local => {
                if self.inner.writes_paused.load(std::sync::atomic::Ordering::Acquire) {
                    return Delivery::Failed(WRITES_HELD.into());
                }
                let tm = self.inner.tm.clone();
                let commit = move || Ok(deliver_locally(&tm, me, proposal_id, changes));
                let delivery =
                    run_blocking(commit).await.unwrap_or_else(|e| Delivery::Failed(e.to_string()));
                // Committed here: answered so only under the leader lease, checked after the
                // commit. Not confirmed: it stays in the outbox and its retry (the same
                // proposal id, so never committed twice) finds out.
                let lease = self.inner.lease.lock().expect("lease lock").clone();
                match (delivery, lease) {
                    (Delivery::Committed { .. }, Some(lease))
                        if !lease.send(ConfirmLease).await.unwrap_or(false) =>
                    {
                        Delivery::Failed(LEASE_UNCONFIRMED.into())
                    }
                    (delivery, _) => delivery,
                }
            }
            Target::Remote { peer, term } => {
                let msg = propose(library_id, me, proposal_id, term, changes);
                // queued under a larger limit, or recovered from a rebuilt log: never sendable
                if let Some(reason) = too_large(&msg, self.inner.config.max_frame) {
                    return Delivery::Refused(reason);
                }
                Delivery::of_reply(proposal_id, self.inner.transport.request(peer, msg).await)
            }
        }
    }
}

/// Delivers the proposal `proposal_id` of this device (`me`), which leads: commits it through
/// its transaction manager (a blocking call). The proposer's task (and the simulator's device)
/// deliver with it.
pub fn deliver_locally(
    tm: &TransactionManager,
    me: Uuid,
    proposal_id: Uuid,
    changes: Vec<Change>,
) -> Delivery {
    Delivery::of_local(tm.commit_proposal(proposal_id, me, changes))
}

/// How often the proposer looks over the outbox whatever happened (a round, answered by one
/// query of the outbox when nothing waits): an entry put back to pending where no wake follows
/// — a delivered proposal found missing while this device wrote its own entries, say — is
/// proposed again within this time, never left waiting for the next write.
pub const SWEEP: std::time::Duration = std::time::Duration::from_secs(5);

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// What a leader answers a `Propose` while a leadership transfer holds its writes: `Internal`
/// (retry with backoff, docs/protocol.md section 7); the proposer tries again, and at once
/// when the leader changes.
pub const WRITES_HELD: &str = "a leadership transfer holds writes until it ends; retry";

/// What a leader answers a write it committed but could not confirm in time that it still
/// leads (its lease expired and no majority answered a heartbeat round, or it was deposed):
/// the answer must not say committed (docs/architecture.md, "The leader lease").
pub const LEASE_UNCONFIRMED: &str = "committed on a leader that could not confirm in time that it \
    still leads (its lease expired and no majority of the voters answered); not known to be \
    committed; retry (the same proposal is never committed twice)";

/// The answer to a member's `Propose` that this leader, of `term`, committed but could not
/// confirm under its lease ([`LEASE_UNCONFIRMED`]): `Error(Internal)`, which the proposer
/// retries with the same proposal id (docs/protocol.md section 7).
pub fn lease_unconfirmed(library_id: Uuid, term: u64) -> SyncMessage {
    SyncMessage::Error {
        leader_peer: None,
        term,
        library_id,
        code: ErrorCode::Internal,
        message: LEASE_UNCONFIRMED.into(),
        leader_hint: None,
    }
}

/// The leader's side: commits a proposal from `origin` (a member) through its transaction
/// manager, at most once per proposal id. While `writes_held` (a leadership transfer is in
/// progress, docs/architecture.md) nothing is committed and the answer is a retryable
/// `Error(Internal)` saying so ([`WRITES_HELD`]).
pub fn serve_proposal(
    tm: &TransactionManager,
    library_id: Uuid,
    term: u64,
    msg: SyncMessage,
    writes_held: bool,
) -> SyncMessage {
    let SyncMessage::Propose { proposal_id, origin_device, changes, .. } = msg else {
        return SyncMessage::error(library_id, ErrorCode::BadRequest, "not a proposal");
    };
    if writes_held {
        return SyncMessage::Error {
            leader_peer: None,
            term,
            library_id,
            code: ErrorCode::Internal,
            message: WRITES_HELD.into(),
            leader_hint: None,
        };
    }
    let changes: Vec<Change> = changes.into_iter().map(Change::from).collect();
    match tm.commit_proposal(proposal_id, origin_device, changes) {
        Ok(o) => SyncMessage::ProposalResult {
            library_id,
            term,
            proposal_id,
            first_sequence: o.first_sequence,
            last_sequence: o.last_sequence,
        },
        Err(StorageError::NotLeader { leader, .. }) => SyncMessage::Error {
            leader_peer: None,
            term: 0,
            library_id,
            code: ErrorCode::NotLeader,
            message: "this device no longer leads the library".into(),
            leader_hint: leader,
        },
        Err(e @ (StorageError::InvalidChange(_) | StorageError::UnknownModel(_))) => {
            SyncMessage::error(library_id, ErrorCode::BadRequest, e.to_string())
        }
        Err(e) => SyncMessage::error(library_id, ErrorCode::Internal, e.to_string()),
    }
}

/// What a device knows when it decides whether a `majority` write is held by a majority
/// (docs/operations.md, "Durability"): its view of the library, read after the write was
/// answered committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MajorityView {
    /// Whether it knows a leader of `term`.
    pub leader_known: bool,
    /// Its current term.
    pub term: u64,
    /// Its log's last position.
    pub head: lsync_storage::LogPosition,
    /// The highest commit sequence it knows (its own as leader, its leader's as follower).
    pub commit_sequence: u64,
}

/// The entries a proposal of `changes` writes at least: one per change but a delete (a delete of
/// a record that does not exist is dropped, docs/architecture.md, "Concurrent changes").
pub fn entries_at_least(changes: &[Change]) -> usize {
    changes.iter().filter(|c| c.change_type != lsync_protocol::ChangeType::Delete).count()
}

/// Whether a `majority` write is held by a majority of the voters, and at which sequences:
/// `found` are the sequences of the proposal's entries in this device's log, `expected` how
/// many entries it writes at least ([`entries_at_least`]), `answered` the range the leader
/// answered with. Held when this device knows a leader of its term, its log ends in that term
/// (so it matches that leader's log up to its end), holds the whole proposal (a fetch may have
/// ended inside it: fewer entries than `expected` are only its first part), and the commit
/// sequence covers them: they are committed at those sequences for good. A proposal that wrote
/// no entry (deletes of records that do not exist) is held once the position the leader
/// answered with is. The one rule of `Node::write_with` and of the simulator's devices.
pub fn majority_holds(
    view: MajorityView,
    found: &[u64],
    expected: usize,
    answered: (u64, u64),
) -> Option<(u64, u64)> {
    let (first, last) = match (found.first(), found.last()) {
        _ if found.len() < expected => return None,
        (Some(f), Some(l)) => (*f, *l),
        _ if answered.0 == answered.1 => answered,
        _ => return None,
    };
    let held = view.leader_known
        && view.head.term == view.term
        && last <= view.head.sequence
        && last <= view.commit_sequence;
    held.then_some((first, last))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use lsync_storage::Tag;
    use tempfile::TempDir;

    use super::*;
    use crate::testkit::{follower_db, wait_for, ScriptedTransport};
    use crate::transport::NetworkError;

    fn change(id: &str) -> Vec<Change> {
        vec![Change::delete::<Tag>(id.to_owned())]
    }

    /// A leader that refuses "poison" for good, never answers for "slow" and commits the rest.
    fn leader() -> Arc<ScriptedTransport> {
        ScriptedTransport::new(|i, msg| {
            let SyncMessage::Propose { library_id, proposal_id, changes, term, .. } = msg else {
                return Err(NetworkError::Io("not a proposal".into()));
            };
            match changes[0].record_id.as_str() {
                "poison" => Ok(SyncMessage::error(
                    *library_id,
                    ErrorCode::BadRequest,
                    "invalid change: poison",
                )),
                "slow" => Err(NetworkError::Timeout),
                _ => Ok(SyncMessage::ProposalResult {
                    library_id: *library_id,
                    term: *term,
                    proposal_id: *proposal_id,
                    first_sequence: i as u64 + 1,
                    last_sequence: i as u64 + 1,
                }),
            }
        })
    }

    /// A proposer of `library_id` on device `me` (its outbox in `db`, committing through
    /// `tm` when it leads), sending through `transport`; its host events and metrics.
    fn proposer(
        (library_id, me, db, tm): (Uuid, Uuid, &Database, TransactionManager),
        transport: Arc<ScriptedTransport>,
        config: SyncConfig,
        paused: Arc<std::sync::atomic::AtomicBool>,
    ) -> (Proposer, tokio::sync::broadcast::Receiver<SyncEvent>, Arc<Metrics>) {
        let (host_events, seen) = tokio::sync::broadcast::channel(16);
        let metrics = Arc::new(Metrics::default());
        let p = Proposer::new(
            library_id,
            me,
            db.clone(),
            tm,
            transport,
            config,
            host_events,
            metrics.clone(),
            paused,
        );
        (p, seen, metrics)
    }

    #[tokio::test]
    async fn the_outbox_neither_blocks_on_one_entry_nor_drops_a_refused_one() {
        let dir = TempDir::new().unwrap();
        let (library_id, leader_id, peer) = (Uuid::new_v4(), Uuid::new_v4(), PeerId::random());
        let db = follower_db(&dir, library_id, leader_id);
        let me = db.sync_state().unwrap().device_id;
        let tm = TransactionManager::new(db.clone(), me);
        let config = SyncConfig { max_frame: 4096, ..SyncConfig::fast() };
        let (p, mut seen, metrics) =
            proposer((library_id, me, &db, tm), leader(), config, Default::default());
        p.set_members([(leader_id, peer)].into());
        p.set_leader(LeaderView { term: 1, leader: Some(leader_id) });
        let task = tokio::spawn(p.clone().run());

        // too large for a frame: refused before it is queued
        let err = p.submit(Uuid::new_v4(), change(&"x".repeat(5_000))).await.unwrap_err();
        assert!(matches!(err, SubmitError::TooLarge(_)), "{err}");
        assert!(db.outbox_list_all().unwrap().is_empty());

        // refused for good: kept as failed, counted, told
        let err = p.submit(Uuid::new_v4(), change("poison")).await.unwrap_err();
        assert!(matches!(err, SubmitError::Refused(_)), "{err}");
        let all = db.outbox_list_all().unwrap();
        assert_eq!(all.len(), 1, "{all:?}");
        let OutboxState::Failed { reason, .. } = &all[0].state else { panic!("{all:?}") };
        assert_eq!(reason, "invalid change: poison");
        assert_eq!(metrics.proposals_failed.load(Ordering::Relaxed), 1);
        assert!(matches!(
            seen.recv().await.unwrap(),
            SyncEvent::ProposalFailed { reason, .. } if reason == "invalid change: poison"
        ));

        // one that keeps failing does not hold the ones after it
        assert!(matches!(
            p.submit(Uuid::new_v4(), change("slow")).await.unwrap(),
            Submitted::Queued { .. }
        ));
        for n in 0..3 {
            let later = p.submit(Uuid::new_v4(), change(&format!("t{n}"))).await.unwrap();
            assert!(matches!(later, Submitted::Committed { .. }), "{later:?}");
        }
        let pending: Vec<_> = db.outbox_list().unwrap();
        assert_eq!(pending.len(), 1, "only the slow one waits: {pending:?}");
        assert!(pending[0].attempts >= 1 && pending[0].last_error.is_some(), "{pending:?}");
        task.abort();
    }

    /// The proposal ids of the `Propose`s `transport` sent.
    fn proposed(transport: &ScriptedTransport) -> Vec<Uuid> {
        let ids = transport.sent("Propose").into_iter();
        ids.filter_map(|m| match m {
            SyncMessage::Propose { proposal_id, .. } => Some(proposal_id),
            _ => None,
        })
        .collect()
    }

    #[tokio::test]
    async fn a_proposal_id_submitted_twice_is_queued_once_and_committed_once() {
        let dir = TempDir::new().unwrap();
        let (library_id, leader_id, peer) = (Uuid::new_v4(), Uuid::new_v4(), PeerId::random());
        let db = follower_db(&dir, library_id, leader_id);
        let me = db.sync_state().unwrap().device_id;
        let transport = leader();
        let tm = TransactionManager::new(db.clone(), me);
        let (p, _, _) = proposer(
            (library_id, me, &db, tm),
            transport.clone(),
            SyncConfig::fast(),
            Default::default(),
        );
        p.set_members([(leader_id, peer)].into());
        p.set_leader(LeaderView { term: 1, leader: Some(leader_id) });
        let task = tokio::spawn(p.clone().run());

        // committed, then submitted again (its answer was lost): the same answer, no Propose
        let id = Uuid::new_v4();
        let first = p.submit(id, change("t1")).await.unwrap();
        assert!(matches!(first, Submitted::Committed { .. }), "{first:?}");
        assert_eq!(p.submit(id, change("t1")).await.unwrap(), first);
        assert_eq!(proposed(&transport), vec![id], "proposed once");
        wait_for("the outbox to be empty", || db.outbox_count().unwrap() == 0).await;

        // queued (the leader never answers), then submitted again: still one outbox entry
        let slow = Uuid::new_v4();
        for _ in 0..2 {
            let queued = p.submit(slow, change("slow")).await.unwrap();
            assert_eq!(queued, Submitted::Queued { proposal_id: slow });
        }
        let all = db.outbox_list_all().unwrap();
        // the committed one stays shown (delivered) until this device's log holds it: the
        // scripted leader never sends its entries
        assert_eq!(all[0].proposal_id, id);
        assert!(matches!(all[0].state, OutboxState::Delivered { .. }), "{all:?}");
        assert_eq!(all[1..].iter().map(|e| e.proposal_id).collect::<Vec<_>>(), vec![slow]);
        // as submitted, with the timestamp and base version the outbox gave it
        let queued = &all[1].changes;
        assert!(queued.iter().all(|c| c.hlc.is_some() && c.base_version == Some(0)), "{queued:?}");
        let bare: Vec<Change> =
            queued.iter().map(|c| Change { hlc: None, base_version: None, ..c.clone() }).collect();
        assert_eq!(bare, change("slow"));
        task.abort();
    }

    #[tokio::test]
    async fn an_entry_queued_too_large_for_the_frame_moves_to_failed_at_once() {
        let dir = TempDir::new().unwrap();
        let (library_id, leader_id, peer) = (Uuid::new_v4(), Uuid::new_v4(), PeerId::random());
        let db = follower_db(&dir, library_id, leader_id);
        let me = db.sync_state().unwrap().device_id;
        // queued earlier (e.g. under a larger limit, or recovered from a rebuilt log)
        let big = Uuid::new_v4();
        db.outbox_push(big, &change(&"x".repeat(5_000))).unwrap();
        db.outbox_push(Uuid::new_v4(), &change("t1")).unwrap();
        let transport = leader();
        let tm = TransactionManager::new(db.clone(), me);
        let config = SyncConfig { max_frame: 4096, ..SyncConfig::fast() };
        let (p, _, _) =
            proposer((library_id, me, &db, tm), transport.clone(), config, Default::default());
        p.set_members([(leader_id, peer)].into());
        p.set_leader(LeaderView { term: 1, leader: Some(leader_id) });
        let task = tokio::spawn(p.clone().run());
        wait_for("the outbox to settle", || db.outbox_count().unwrap() == 0).await;
        let failed = db.outbox_get(big).unwrap().expect("kept");
        assert!(
            matches!(&failed.state, OutboxState::Failed { reason, .. } if reason.contains("exceeds the limit")),
            "{failed:?}"
        );
        assert_eq!(transport.sent("Propose").len(), 1, "the large one was never sent");
        task.abort();
    }

    #[tokio::test]
    async fn a_leader_commits_nothing_while_a_transfer_holds_writes() {
        let dir = TempDir::new().unwrap();
        let library_id = Uuid::new_v4();
        let (db, tm) = crate::testkit::leader_db(&dir, library_id, 0);
        let me = db.sync_state().unwrap().device_id;
        let last = || db.last_position().unwrap().sequence;
        let insert =
            |id: &str| vec![Change::insert(&Tag { id: id.into(), name: id.into(), color: None })];
        // a member's Propose
        let msg = propose(library_id, Uuid::new_v4(), Uuid::new_v4(), 1, insert("t1"));
        let held = serve_proposal(&tm, library_id, 1, msg.clone(), true);
        assert!(
            matches!(&held, SyncMessage::Error { code: ErrorCode::Internal, message, term: 1, .. } if message == WRITES_HELD),
            "{held:?}"
        );
        assert_eq!(last(), 0, "nothing committed");
        let proposal_id = Uuid::new_v4();
        assert!(matches!(Delivery::of_reply(proposal_id, Ok(held)), Delivery::Failed(_)));
        let served = serve_proposal(&tm, library_id, 1, msg, false);
        assert!(matches!(served, SyncMessage::ProposalResult { .. }), "{served:?}");
        assert_eq!(last(), 1, "committed once writes are no longer held");

        // its own outbox
        let paused = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (p, _, _) =
            proposer((library_id, me, &db, tm), leader(), SyncConfig::fast(), paused.clone());
        p.set_leader(LeaderView { term: 1, leader: Some(me) });
        let task = tokio::spawn(p.clone().run());
        let before = last();
        assert!(matches!(
            p.submit(Uuid::new_v4(), insert("t2")).await.unwrap(),
            Submitted::Queued { .. }
        ));
        let held = || db.outbox_list().unwrap()[0].last_error.as_deref() == Some(WRITES_HELD);
        wait_for("an attempt held by the transfer", held).await;
        assert_eq!(last(), before, "held while the transfer runs");
        paused.store(false, std::sync::atomic::Ordering::Release);
        wait_for("the held proposal to be committed", || db.outbox_count().unwrap() == 0).await;
        assert_eq!(last(), before + 1);
        task.abort();
    }

    fn view(term: u64, head: (u64, u64), commit: u64) -> MajorityView {
        MajorityView {
            leader_known: true,
            term,
            head: lsync_storage::LogPosition { term: head.0, sequence: head.1 },
            commit_sequence: commit,
        }
    }

    #[test]
    fn a_majority_write_is_held_once_committed_in_a_log_of_the_current_term() {
        assert_eq!(
            majority_holds(view(4, (4, 130), 125), &[120, 121, 122], 3, (120, 122)),
            Some((120, 122))
        );
    }

    #[test]
    fn not_held_above_the_commit_sequence() {
        assert_eq!(majority_holds(view(4, (4, 130), 121), &[120, 121, 122], 3, (120, 122)), None);
    }

    #[test]
    fn not_held_while_the_log_ends_in_an_older_term() {
        // a new leader's log may not hold the entries at these sequences
        assert_eq!(majority_holds(view(5, (4, 130), 125), &[120, 121, 122], 3, (120, 122)), None);
    }

    #[test]
    fn not_held_without_a_known_leader() {
        let v = MajorityView { leader_known: false, ..view(4, (4, 130), 125) };
        assert_eq!(majority_holds(v, &[120, 121, 122], 3, (120, 122)), None);
    }

    #[test]
    fn the_sequences_are_those_of_this_log_not_of_the_answer() {
        // proposed again after a failover: committed elsewhere
        assert_eq!(
            majority_holds(view(5, (5, 140), 140), &[131, 132, 133], 3, (120, 122)),
            Some((131, 133))
        );
    }

    #[test]
    fn a_proposal_that_wrote_no_entry_is_held_at_the_answered_position() {
        assert_eq!(majority_holds(view(4, (4, 130), 125), &[], 0, (120, 120)), Some((120, 120)));
        assert_eq!(majority_holds(view(4, (4, 130), 119), &[], 0, (120, 120)), None);
        assert_eq!(majority_holds(view(4, (4, 130), 125), &[], 0, (120, 122)), None);
    }

    #[test]
    fn not_held_while_this_log_holds_only_the_first_part_of_the_proposal() {
        // a fetch ended inside it: 121 and 122 are not here yet
        assert_eq!(majority_holds(view(4, (4, 120), 120), &[120], 3, (120, 122)), None);
        // completed later, elsewhere: the whole of it counts
        assert_eq!(
            majority_holds(view(5, (5, 140), 140), &[120, 131, 132], 3, (120, 122)),
            Some((120, 132))
        );
    }
}
