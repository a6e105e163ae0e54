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

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use libp2p::PeerId;
use lsync_protocol::{ErrorCode, ProposedChange, SyncMessage};
use lsync_storage::{Change, Database, StorageError, TransactionManager};
use rand::SeedableRng;
use tokio::sync::Notify;
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::backoff::Backoff;
use crate::blocking::run_blocking;
use crate::config::SyncConfig;
use crate::transport::Transport;

/// Who leads the library now, as this device knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LeaderView {
    pub term: u64,
    pub leader: Option<Uuid>,
}

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

enum Delivery {
    Committed {
        first: u64,
        last: u64,
    },
    /// A permanent refusal (the change can never be committed): dropped from the outbox.
    Refused(String),
    /// Try again later.
    Failed(String),
}

/// Delivers a library's outbox. Cheap to clone.
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
    members: Mutex<BTreeMap<Uuid, PeerId>>,
    leader: Mutex<LeaderView>,
    /// One delivery round at a time keeps proposals in order.
    round: tokio::sync::Mutex<()>,
    wake: Notify,
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
        Self {
            inner: Arc::new(Inner {
                library_id,
                device_id,
                db,
                tm,
                transport,
                config,
                members: Mutex::new(BTreeMap::new()),
                leader: Mutex::new(LeaderView::default()),
                round: tokio::sync::Mutex::new(()),
                wake: Notify::new(),
            }),
        }
    }

    /// The library's members (device → peer).
    pub fn set_members(&self, members: BTreeMap<Uuid, PeerId>) {
        *self.inner.members.lock().expect("members lock") = members;
        self.inner.wake.notify_one();
    }

    /// The leader changed: deliver what waits, to it.
    pub fn set_leader(&self, view: LeaderView) {
        *self.inner.leader.lock().expect("leader lock") = view;
        self.inner.wake.notify_one();
    }

    /// Starts a delivery round soon (e.g. after orphans were queued).
    pub fn wake(&self) {
        self.inner.wake.notify_one();
    }

    /// Queues `changes` durably and delivers the outbox; tells whether they were committed now.
    pub async fn submit(&self, changes: Vec<Change>) -> Result<Submitted, SubmitError> {
        let proposal_id = Uuid::new_v4();
        let db = self.inner.db.clone();
        let queued = changes.clone();
        run_blocking(move || db.outbox_push(proposal_id, &queued)).await?;
        match self.round(Some(proposal_id)).await {
            Some(Ok((first, last))) => Ok(Submitted::Committed { first, last }),
            Some(Err(refusal)) => Err(SubmitError::Refused(refusal)),
            None => Ok(Submitted::Queued { proposal_id }),
        }
    }

    /// The retry loop: runs a round whenever woken, and after a failure with backoff. Spawn it
    /// once; it ends when the task is aborted.
    pub async fn run(self) {
        let mut backoff =
            Backoff::new(self.inner.config.backoff_initial, self.inner.config.backoff_max);
        let mut rng = rand::rngs::StdRng::from_entropy();
        loop {
            self.round(None).await;
            let left = {
                let db = self.inner.db.clone();
                run_blocking(move || db.outbox_count()).await.unwrap_or(0)
            };
            if left == 0 {
                backoff.reset();
                self.inner.wake.notified().await;
            } else {
                let delay = backoff.next_delay(&mut rng);
                debug!(library_id = %self.inner.library_id, left, retry_in_ms = delay.as_millis() as u64, "outbox not delivered");
                tokio::select! {
                    _ = self.inner.wake.notified() => {}
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }

    /// Delivers the outbox in order until it is empty or a delivery fails. Returns the outcome
    /// of `watch` if it was delivered or refused in this round.
    async fn round(&self, watch: Option<Uuid>) -> Option<Result<(u64, u64), String>> {
        let _turn = self.inner.round.lock().await;
        let db = self.inner.db.clone();
        let entries = match run_blocking(move || db.outbox_list()).await {
            Ok(e) => e,
            Err(e) => {
                warn!(library_id = %self.inner.library_id, error = %e, "cannot read the outbox");
                return None;
            }
        };
        let mut outcome = None;
        for entry in entries {
            let id = entry.proposal_id;
            match self.deliver(id, entry.changes).await {
                Delivery::Committed { first, last } => {
                    let db = self.inner.db.clone();
                    if let Err(e) = run_blocking(move || db.outbox_remove(id)).await {
                        warn!(error = %e, "cannot remove a delivered proposal from the outbox");
                    }
                    info!(library_id = %self.inner.library_id, proposal = %id, first, last, "proposal committed");
                    if watch == Some(id) {
                        outcome = Some(Ok((first, last)));
                    }
                }
                Delivery::Refused(reason) => {
                    warn!(library_id = %self.inner.library_id, proposal = %id, %reason, "proposal refused for good; dropped");
                    let db = self.inner.db.clone();
                    let _ = run_blocking(move || db.outbox_remove(id)).await;
                    if watch == Some(id) {
                        outcome = Some(Err(reason));
                    }
                }
                Delivery::Failed(reason) => {
                    let db = self.inner.db.clone();
                    let now = now_ms();
                    let _ = run_blocking(move || db.outbox_record_failure(id, &reason, now)).await;
                    break;
                }
            }
        }
        outcome
    }

    async fn deliver(&self, proposal_id: Uuid, changes: Vec<Change>) -> Delivery {
        let view = *self.inner.leader.lock().expect("leader lock");
        let Some(leader) = view.leader else { return Delivery::Failed("no leader known".into()) };
        if leader == self.inner.device_id {
            let tm = self.inner.tm.clone();
            let me = self.inner.device_id;
            return match run_blocking(move || tm.commit_proposal(proposal_id, me, changes)).await {
                Ok(o) => Delivery::Committed { first: o.first_sequence, last: o.last_sequence },
                Err(StorageError::NotLeader { .. }) => {
                    Delivery::Failed("no longer the leader".into())
                }
                Err(e @ (StorageError::InvalidChange(_) | StorageError::UnknownModel(_))) => {
                    Delivery::Refused(e.to_string())
                }
                Err(e) => Delivery::Failed(e.to_string()),
            };
        }
        let Some(peer) = self.inner.members.lock().expect("members lock").get(&leader).copied()
        else {
            return Delivery::Failed(format!("leader {leader} is not a known member"));
        };
        let msg = SyncMessage::Propose {
            library_id: self.inner.library_id,
            term: view.term,
            proposal_id,
            origin_device: self.inner.device_id,
            changes: changes.into_iter().map(ProposedChange::from).collect(),
        };
        match self.inner.transport.request(peer, msg).await {
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
