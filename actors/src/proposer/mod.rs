//! The proposer — one per open library, on every device: delivers the library's durable outbox
//! to whichever device leads it now.
//!
//! A change made on a device that does not lead goes into the `outbox` table first (so it
//! survives restarts), then is sent to the leader as a `Propose` with a fixed `proposal_id`; the
//! leader commits it at most once however often it is retried. Proposals are delivered in
//! order (FIFO), one at a time; a failure stops the round and schedules a retry with backoff
//! and jitter; a leader change or a new proposal starts a round at once. When this device leads,
//! its own outbox (e.g. changes recovered after it was deposed) is committed directly through
//! its `TransactionManager`.
//!
//! The decisions live in [`ProposerCore`] (pure, tested without I/O); [`Proposer`] is the shell
//! that reads and writes the outbox, sends the requests and runs the retry timer.

mod core;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use libp2p::PeerId;
use lsync_protocol::{ErrorCode, SyncMessage};
use lsync_storage::{Change, Database, StorageError, TransactionManager};
use rand::SeedableRng;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, info, warn};
use uuid::Uuid;

pub use self::core::{
    propose, Command, Delivery, LeaderView, ProposerCore, ProposerStatus, SubmitOutcome, Target,
};
use crate::blocking::run_blocking;
use crate::config::SyncConfig;
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
    /// The last leader and members set, for a `run` that starts (or restarts) later.
    leader: Mutex<LeaderView>,
    members: Mutex<BTreeMap<Uuid, PeerId>>,
    /// To the running machine. The queue holds at most one event per caller waiting in
    /// `submit` plus the service's own leader/member changes, so it stays small.
    events: Mutex<mpsc::UnboundedSender<Event>>,
}

impl Proposer {
    /// A proposer for one library.
    pub fn new(
        library_id: Uuid,
        device_id: Uuid,
        db: Database,
        tm: TransactionManager,
        transport: Arc<dyn Transport>,
        config: SyncConfig,
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
                leader: Mutex::new(LeaderView::default()),
                members: Mutex::new(BTreeMap::new()),
                events: Mutex::new(events),
            }),
        }
    }

    fn send(&self, event: Event) {
        let _ = self.inner.events.lock().expect("events lock").send(event);
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

    /// Queues `changes` durably and delivers the outbox; tells whether they were committed in
    /// the round that reached them. Without a running [`Proposer::run`] they stay queued.
    pub async fn submit(&self, changes: Vec<Change>) -> Result<Submitted, SubmitError> {
        let proposal_id = Uuid::new_v4();
        let db = self.inner.db.clone();
        run_blocking(move || db.outbox_push(proposal_id, &changes)).await?;
        let (tx, rx) = oneshot::channel();
        self.send(Event::Submitted(proposal_id, tx));
        match rx.await {
            Ok(SubmitOutcome::Committed { first, last }) => {
                Ok(Submitted::Committed { first, last })
            }
            Ok(SubmitOutcome::Refused(reason)) => Err(SubmitError::Refused(reason)),
            Ok(SubmitOutcome::Queued) | Err(_) => Ok(Submitted::Queued { proposal_id }),
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
        loop {
            self.perform(&mut core, todo, &mut waiting).await;
            let deadline = core.next_deadline().map(Instant::from_std);
            todo = tokio::select! {
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
                Command::Deliver { proposal_id, target, changes } => {
                    let delivery = self.deliver(proposal_id, target, changes).await;
                    match &delivery {
                        Delivery::Committed { first, last } => {
                            info!(%library_id, proposal = %proposal_id, first, last, "proposal committed")
                        }
                        Delivery::Refused(reason) => {
                            warn!(%library_id, proposal = %proposal_id, %reason, "proposal refused for good; dropped")
                        }
                        Delivery::Failed(reason) => {
                            debug!(%library_id, proposal = %proposal_id, %reason, "proposal not delivered; will retry")
                        }
                    }
                    core.delivered(proposal_id, delivery, std::time::Instant::now())
                }
                Command::Remove { proposal_id } => {
                    if let Err(e) = run_blocking(move || db.outbox_remove(proposal_id)).await {
                        warn!(%library_id, error = %e, "cannot remove a delivered proposal from the outbox");
                    }
                    Vec::new()
                }
                Command::RecordFailure { proposal_id, reason } => {
                    let now = now_ms();
                    if let Err(e) =
                        run_blocking(move || db.outbox_record_failure(proposal_id, &reason, now))
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
                let tm = self.inner.tm.clone();
                let commit = move || Ok(deliver_locally(&tm, me, proposal_id, changes));
                run_blocking(commit).await.unwrap_or_else(|e| Delivery::Failed(e.to_string()))
            }
            Target::Remote { peer, term } => {
                let msg = propose(library_id, me, proposal_id, term, changes);
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

/// The leader's side: commits a proposal from `origin` (a member) through its transaction
/// manager, at most once per proposal id.
pub fn serve_proposal(
    tm: &TransactionManager,
    library_id: Uuid,
    term: u64,
    msg: SyncMessage,
) -> SyncMessage {
    let SyncMessage::Propose { proposal_id, origin_device, changes, .. } = msg else {
        return SyncMessage::error(library_id, ErrorCode::BadRequest, "not a proposal");
    };
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
