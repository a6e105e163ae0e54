//! FollowerActor — the follower role of one library: runs its replication (the pure
//! [`Replicator`]) while this device follows a leader. (Storage's `Applier` is one
//! transaction of it: the batch it applies.)
//!
//! Receives: the leader's NewEntries and Heartbeat requests (routed by the SyncService),
//! [`ObserveFollower`], [`WatchCommit`].
//! Emits: FetchEntries, Acknowledge and Heartbeat requests to the leader; EntriesApplied,
//! LeaderUnreachable, Resync*, BulkJobQueued and ApplyFailed events; configurations applied,
//! the leader's commit sequence, removals and re-pointing to the SyncService; newer terms to the
//! election; wakes the proposer.
//!
//! What it owns: the pure machine [`Replicator`] (follower/mod.rs), which keeps every
//! piece of the replication's state and takes every decision — positions, pipeline, gaps,
//! guesses, rebuilds, backoff, acknowledgements, status; the reply channels of the leader's
//! requests it has not answered yet; the fetches in flight (to drop one unread); one timer.
//! It feeds the machine its inputs (requests, answers, storage results, the timer), performs
//! the [`Command`]s it returns in order — requests through the [`Transport`], storage calls on
//! the blocking pool (`run_blocking`), events, metrics, messages to other actors — and arms
//! its timer at [`Replicator::next_deadline`]. A batch's events are sent in the same blocking
//! task as its transaction ([`crate::follower::committed`]), so an actor stopped while it
//! waits cannot separate a committed batch from its events.
//!
//! Memory: what the machine holds (docs/architecture.md, "Actors of one node": the batch
//! applying, at most three responses received or in flight, one pushed request), one reply
//! channel per request not answered yet (the pushed one and the ones in this mailbox turn),
//! one handle per fetch in flight (at most two).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use libp2p::PeerId;
use lsync_protocol::SyncMessage;
use lsync_storage::Database;
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::sync::{broadcast, oneshot};
use uuid::Uuid;

use super::effects::{fetch_entries, StorageCall};
use super::{
    follower_heartbeat, position_ack, Command, Counter, Leader, Replicator, ReplyTo, RequestId,
};
use crate::blocking::run_blocking;
use crate::config::SyncConfig;
use crate::events::{ApplierStatus, SyncEvent};
use crate::messages::FollowerMembership;
use crate::metrics::Metrics;
use crate::network::InboundRequest;
use crate::task::{supervised, Task};
use crate::transport::Transport;

/// Everything the follower's replication needs.
#[derive(Clone)]
pub struct FollowerContext {
    pub library_id: Uuid,
    pub db: Database,
    pub transport: Arc<dyn Transport>,
    pub events: broadcast::Sender<SyncEvent>,
    pub config: SyncConfig,
    pub metrics: Arc<Metrics>,
    /// The leader's peer id.
    pub leader: PeerId,
    /// The leader's device id (named in NotLeader replies).
    pub leader_device: Option<Uuid>,
    /// Where newer terms heard from the leader go (the library's election).
    pub election: Option<Recipient<crate::messages::ElectionInput>>,
    /// Re-proposes the changes a repair recovered.
    pub proposer: Option<crate::proposer::Proposer>,
    /// Where a `NotLeader` hint goes (the SyncService re-points the follower).
    pub repoint: Option<Recipient<crate::messages::LeaderHint>>,
    /// The term this follower knows.
    pub term: u64,
    /// Where configurations this follower applies (or learns it was removed) go: the
    /// SyncService.
    pub membership: Option<Recipient<FollowerMembership>>,
    /// The leader's commit sequence as this device last heard it (by an earlier follower
    /// actor): raised by every leader message that says more, shown by [`ObserveFollower`].
    pub leader_commit: u64,
    /// When the leader's commit sequence reaches this, the SyncService is told (it forgets
    /// the previous voters once a voter change is committed); `u64::MAX`: never. Changed with
    /// [`WatchCommit`].
    pub commit_watch: u64,
    /// Where the leader's commit sequence (whenever it rises) and every batch applied are
    /// published for the host's waits.
    pub progress: crate::messages::ProgressWatch,
}

/// Reads the follower's state: its one observe call (nothing else of it is shared).
#[derive(Message)]
#[rtype(result = "FollowerSnapshot")]
pub struct ObserveFollower;

/// The follower's state, as [`ObserveFollower`] shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowerSnapshot {
    /// The replication's status (its machine's).
    pub status: ApplierStatus,
    /// The leader's commit sequence as last heard.
    pub leader_commit: u64,
}

/// The SyncService watches another sequence (see [`FollowerContext::commit_watch`]).
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct WatchCommit(pub u64);

/// The follower side of one library.
pub struct FollowerActor {
    cx: FollowerContext,
    machine: Replicator<StdRng>,
    /// Reply channels of the leader's requests, until the machine answers them.
    replies: HashMap<ReplyTo, oneshot::Sender<SyncMessage>>,
    next_reply: u64,
    /// Fetches in flight: cancelling one drops the request, its answer unread.
    fetches: HashMap<RequestId, SpawnHandle>,
    /// The timer armed, and the deadline it is armed for.
    timer: Option<(Instant, SpawnHandle)>,
    /// The leader's commit sequence as last heard.
    leader_commit: u64,
    /// The sequence the SyncService watches, and whether it was told it was reached.
    commit_watch: (u64, bool),
}

impl FollowerActor {
    /// A follower of `cx.leader`.
    pub fn new(cx: FollowerContext) -> Self {
        let leader = Leader { device: cx.leader_device, peer: cx.leader.to_string() };
        let machine = Replicator::new(
            cx.library_id,
            leader,
            cx.term,
            cx.config.clone(),
            StdRng::from_entropy(),
        );
        let (leader_commit, commit_watch) = (cx.leader_commit, (cx.commit_watch, false));
        Self {
            cx,
            machine,
            replies: HashMap::new(),
            next_reply: 0,
            fetches: HashMap::new(),
            timer: None,
            leader_commit,
            commit_watch,
        }
    }

    /// Performs `commands` in order, then arms the timer at the machine's next deadline.
    fn perform(&mut self, commands: Vec<Command>, ctx: &mut Context<Self>) {
        for command in commands {
            self.perform_one(command, ctx);
        }
        self.arm_timer(ctx);
    }

    fn perform_one(&mut self, command: Command, ctx: &mut Context<Self>) {
        let command = match effect(&self.cx, command) {
            Some(command) => command,
            None => return,
        };
        let command = match StorageCall::of(command) {
            Ok(call) => return self.storage(call, ctx),
            Err(command) => *command,
        };
        let (library_id, leader) = (self.cx.library_id, self.cx.leader);
        match command {
            Command::Fetch { id, since, since_hash, term } => {
                let limit = self.cx.config.max_entries_per_response;
                let request = self
                    .cx
                    .transport
                    .request(leader, fetch_entries(library_id, term, since, since_hash, limit));
                let (metrics, started) = (self.cx.metrics.clone(), Instant::now());
                // A fetch whose task panicked is a failed fetch: the machine retries it.
                let fetch = async move {
                    let answer = supervised(Task::Fetch, &metrics, request).await;
                    metrics.fetch_rtt.observe(started.elapsed());
                    answer
                        .unwrap_or_else(|e| Err(crate::transport::NetworkError::Io(e.to_string())))
                };
                let handle = ctx.spawn(fetch.into_actor(self).map(move |answer, act, ctx| {
                    act.fetches.remove(&id);
                    let commands = act.machine.on_fetched(id, answer, Instant::now());
                    act.perform(commands, ctx);
                }));
                self.fetches.insert(id, handle);
            }
            Command::DropFetch { id } => {
                if let Some(handle) = self.fetches.remove(&id) {
                    ctx.cancel_future(handle);
                }
            }
            Command::Acknowledge { id, position, hash, term } => {
                let request = self
                    .cx
                    .transport
                    .request(leader, position_ack(library_id, term, position, hash));
                ctx.spawn(request.into_actor(self).map(move |answer, act, ctx| {
                    let commands = act.machine.on_acknowledged(id, answer);
                    act.perform(commands, ctx);
                }));
            }
            Command::Heartbeat { id, position, hash, term } => {
                let request = self
                    .cx
                    .transport
                    .request(leader, follower_heartbeat(library_id, term, position, hash));
                ctx.spawn(request.into_actor(self).map(move |answer, act, ctx| {
                    let commands = act.machine.on_heartbeat(id, answer, Instant::now());
                    act.perform(commands, ctx);
                }));
            }
            Command::Reply { to, message } => {
                if let Some(reply) = self.replies.remove(&to) {
                    let _ = reply.send(message);
                }
            }
            Command::LeaderCommit(commit) => {
                self.leader_commit = self.leader_commit.max(commit);
                self.cx.progress.note_commit(self.leader_commit);
                self.check_commit_watch();
            }
            // Performed by `effect` and `storage`.
            Command::WakeProposer
            | Command::Event(_)
            | Command::AdoptTerm(_)
            | Command::Repoint(_)
            | Command::Membership(_)
            | Command::CountMetric(..)
            | Command::ReadPosition
            | Command::Apply { .. }
            | Command::ResetForRepair
            | Command::Settle
            | Command::RecoverOrphans => {}
        }
    }

    /// Makes the storage call on the blocking pool and feeds its result to the machine; a
    /// batch's commands ([`crate::follower::committed`]) are performed in the same blocking
    /// task as its transaction. A call whose task failed is fed as a failed call.
    fn storage(&mut self, call: StorageCall, ctx: &mut Context<Self>) {
        let cx = self.cx.clone();
        let again = call.clone();
        let committed_ms = match &call {
            StorageCall::Apply { entries, .. } => entries.last().map_or(0, |e| e.timestamp_ms),
            _ => 0,
        };
        let run = async move {
            run_blocking(move || {
                Ok(call.run(&cx.db, cx.library_id, |command| {
                    if matches!(command, Command::CountMetric(Counter::EntriesApplied, _)) {
                        observe_commit_to_apply(&cx.metrics, committed_ms);
                    }
                    effect(&cx, command);
                }))
            })
            .await
        };
        let moves_log = matches!(again, StorageCall::Apply { .. } | StorageCall::ResetForRepair);
        ctx.spawn(run.into_actor(self).map(move |done, act, ctx| {
            if moves_log {
                // the log's end moved (or may have): a wait for an entry to be here looks again
                act.cx.progress.note_change();
            }
            let done = done.unwrap_or_else(|e| again.failed(e.to_string()));
            let commands = done.feed(&mut act.machine, Instant::now());
            act.perform(commands, ctx);
        }));
    }

    /// Tells the SyncService, once per watched sequence, that the leader's commit sequence
    /// reached it (also when it was reached before the sequence was watched).
    fn check_commit_watch(&mut self) {
        let (watch, told) = self.commit_watch;
        if !told && self.leader_commit >= watch {
            self.commit_watch.1 = true;
            if let Some(m) = &self.cx.membership {
                m.do_send(FollowerMembership::Committed(self.leader_commit));
            }
        }
    }

    /// One timer, at the machine's next deadline.
    fn arm_timer(&mut self, ctx: &mut Context<Self>) {
        let deadline = self.machine.next_deadline();
        if deadline == self.timer.as_ref().map(|(at, _)| *at) {
            return;
        }
        if let Some((_, handle)) = self.timer.take() {
            ctx.cancel_future(handle);
        }
        if let Some(at) = deadline {
            let handle = ctx.run_later(at.saturating_duration_since(Instant::now()), |act, ctx| {
                act.timer = None;
                let commands = act.machine.tick(Instant::now());
                act.perform(commands, ctx);
            });
            self.timer = Some((at, handle));
        }
    }
}

/// Performs a command that only tells someone something (events, metrics, other actors);
/// returns any other command.
fn effect(cx: &FollowerContext, command: Command) -> Option<Command> {
    match command {
        Command::Event(event) => {
            let _ = cx.events.send(event);
        }
        Command::CountMetric(counter, n) => {
            let m = &cx.metrics;
            let counter = match counter {
                Counter::Reconnects => &m.reconnects,
                Counter::Resyncs => &m.resyncs,
                Counter::FetchesAhead => &m.fetches_ahead,
                Counter::FetchesAheadMissed => &m.fetches_ahead_missed,
                Counter::EntriesApplied => &m.entries_applied,
            };
            Metrics::add(counter, n);
        }
        Command::AdoptTerm(term) => {
            if let (Some(e), Some(from)) = (&cx.election, cx.leader_device) {
                e.do_send(crate::messages::ElectionInput::LeaderHeard { from, term });
            }
        }
        Command::Repoint(hint) => {
            if let Some(r) = &cx.repoint {
                r.do_send(hint);
            }
        }
        Command::Membership(m) => {
            if let Some(r) = &cx.membership {
                r.do_send(m);
            }
        }
        Command::WakeProposer => {
            if let Some(p) = &cx.proposer {
                p.wake();
            }
        }
        other => return Some(other),
    }
    None
}

/// How long a batch took from its commit on the leader (`committed_ms`, the leader's clock) to
/// its application here.
fn observe_commit_to_apply(metrics: &Metrics, committed_ms: i64) {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let ms = now_ms.saturating_sub(committed_ms).max(0) as u64;
    metrics.commit_to_apply.observe(std::time::Duration::from_millis(ms));
}

impl Actor for FollowerActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(crate::limits::MAILBOX_CAPACITY);
        let commands = self.machine.start(Instant::now());
        self.perform(commands, ctx);
        self.check_commit_watch();
    }
}

/// Test only: makes the follower panic in its work — a future it runs (as a fetch or a
/// storage call's continuation), not a handler.
#[cfg(test)]
impl Handler<crate::messages::InjectPanic> for FollowerActor {
    type Result = ();
    fn handle(&mut self, _: crate::messages::InjectPanic, ctx: &mut Context<Self>) {
        let work = async {}.into_actor(self);
        ctx.spawn(work.map(|(), _, _| panic!("injected panic in the follower's work")));
    }
}

impl Handler<ObserveFollower> for FollowerActor {
    type Result = MessageResult<ObserveFollower>;
    fn handle(&mut self, _: ObserveFollower, _: &mut Context<Self>) -> Self::Result {
        MessageResult(FollowerSnapshot {
            status: self.machine.status(),
            leader_commit: self.leader_commit,
        })
    }
}

impl Handler<WatchCommit> for FollowerActor {
    type Result = ();
    fn handle(&mut self, msg: WatchCommit, _: &mut Context<Self>) {
        if msg.0 != self.commit_watch.0 {
            self.commit_watch = (msg.0, false);
            self.check_commit_watch();
        }
    }
}

impl Handler<InboundRequest> for FollowerActor {
    type Result = ();
    fn handle(&mut self, req: InboundRequest, ctx: &mut Context<Self>) {
        let to = ReplyTo(self.next_reply);
        self.next_reply = self.next_reply.wrapping_add(1);
        self.replies.insert(to, req.reply);
        let from_leader = req.peer == self.cx.leader;
        let commands = self.machine.on_request(to, from_leader, req.message, Instant::now());
        self.perform(commands, ctx);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use lsync_protocol::ErrorCode;

    use super::*;
    use crate::events::FollowerState;
    use crate::follower::{MAX_MISSED_GUESSES, MAX_RESTARTS, PIPELINE};
    use crate::leader::serve::serve;
    use crate::testkit::{follower_db, leader_db, link_context, wait_for, ScriptedTransport};
    use crate::transport::NetworkError;

    struct Setup {
        _dir: tempfile::TempDir,
        lib: Uuid,
        leader: Database,
        follower: Database,
        events: broadcast::Receiver<SyncEvent>,
        leader_peer: PeerId,
        metrics: Arc<crate::metrics::Metrics>,
        progress: crate::messages::ProgressWatch,
    }

    type Script = dyn Fn(usize, &SyncMessage, &Database) -> Option<Result<SyncMessage, NetworkError>>
        + Send
        + Sync
        + 'static;

    /// A follower actor whose transport is `script`, which may serve from the leader's log.
    fn start(
        n: u64,
        script: impl Fn(usize, &SyncMessage, &Database) -> Option<Result<SyncMessage, NetworkError>>
            + Send
            + Sync
            + 'static,
    ) -> (Setup, Arc<ScriptedTransport>, Addr<FollowerActor>) {
        let config =
            SyncConfig { heartbeat_interval: Duration::from_secs(3600), ..SyncConfig::fast() };
        start_prepared(n, |_, _| {}, config, Box::new(script))
    }

    /// [`start`], with `prepare` run on the leader's database after its first `n` entries,
    /// before the actor starts, and the follower's `config`.
    fn start_prepared(
        n: u64,
        prepare: impl FnOnce(&Database, &lsync_storage::TransactionManager),
        config: SyncConfig,
        script: Box<Script>,
    ) -> (Setup, Arc<ScriptedTransport>, Addr<FollowerActor>) {
        let dir = tempfile::tempdir().unwrap();
        let lib = Uuid::new_v4();
        let (leader, tm) = leader_db(&dir, lib, n);
        prepare(&leader, &tm);
        let follower = follower_db(&dir, lib, Uuid::new_v4());
        let (etx, events) = broadcast::channel(1024);
        let leader_db = leader.clone();
        let scx = link_context(
            lib,
            leader.clone(),
            ScriptedTransport::new(|_, _| Err(NetworkError::Closed)),
        );
        let transport = ScriptedTransport::new(move |i, msg| match script(i, msg, &leader_db) {
            Some(r) => r,
            None => Ok(serve(&leader_db, &scx, msg.clone()).expect("serve")),
        });
        let leader_peer = PeerId::random();
        let metrics = Arc::new(crate::metrics::Metrics::default());
        let progress = crate::messages::ProgressWatch::default();
        let actor = FollowerActor::new(FollowerContext {
            library_id: lib,
            db: follower.clone(),
            transport: transport.clone(),
            events: etx,
            config,
            metrics: metrics.clone(),
            leader: leader_peer,
            leader_device: None,
            election: None,
            proposer: None,
            repoint: None,
            term: 1,
            membership: None,
            leader_commit: 0,
            commit_watch: u64::MAX,
            progress: progress.clone(),
        })
        .start();
        let setup =
            Setup { _dir: dir, lib, leader, follower, events, leader_peer, metrics, progress };
        (setup, transport, actor)
    }

    /// `n` inserts of new tags `{prefix}0`, `{prefix}1`, ….
    fn tag_inserts(prefix: &str, n: usize) -> Vec<lsync_storage::Change> {
        (0..n)
            .map(|i| {
                lsync_storage::Change::insert(&lsync_storage::Tag {
                    id: format!("{prefix}{i}"),
                    name: "x".into(),
                    color: None,
                })
            })
            .collect()
    }

    fn last(db: &Database) -> u64 {
        db.last_position().unwrap().sequence
    }

    fn drain(rx: &mut broadcast::Receiver<SyncEvent>) -> Vec<SyncEvent> {
        std::iter::from_fn(|| rx.try_recv().ok()).collect()
    }

    #[actix_rt::test]
    async fn new_entries_turn_into_fetches_until_has_more_is_false() {
        let (s, transport, actor) = start(0, |_, _, _| None);
        // the actor syncs once at start: nothing there yet
        wait_for("the initial fetch", || !transport.sent("FetchEntries").is_empty()).await;
        let tm = lsync_storage::TransactionManager::new(
            s.leader.clone(),
            s.leader.sync_state().unwrap().device_id,
        );
        tm.commit_batch(tag_inserts("n", 250)).unwrap();
        let note = SyncMessage::NewEntries {
            commit_sequence: 0,
            library_id: s.lib,
            term: 1,
            from_sequence: 1,
            to_sequence: 250,
            entry_count: 250,
            prev_term: 0,
            entries: vec![],
            prev_hash: None,
        };
        // from another peer than its leader: refused, nothing fetched
        let fetches_before = transport.sent("FetchEntries").len();
        let (reply, rx) = tokio::sync::oneshot::channel();
        actor
            .send(InboundRequest { peer: PeerId::random(), message: note.clone(), reply })
            .await
            .unwrap();
        assert!(matches!(rx.await.unwrap(), SyncMessage::Error { code: ErrorCode::NotLeader, .. }));
        assert_eq!(transport.sent("FetchEntries").len(), fetches_before);
        // from its leader: answered at once with the follower's position, then fetched
        let (reply, rx) = tokio::sync::oneshot::channel();
        actor.send(InboundRequest { peer: s.leader_peer, message: note, reply }).await.unwrap();
        assert!(matches!(rx.await.unwrap(), SyncMessage::Acknowledge { up_to_sequence: 0, .. }));
        wait_for("all 250 entries applied", || last(&s.follower) == 250).await;
        assert_eq!(s.follower.dump().unwrap(), s.leader.dump().unwrap());
        let sinces = since_sequences(&transport);
        assert!(sinces.ends_with(&[0, 100, 200]), "pages fetched in order: {sinces:?}");
        wait_for("an acknowledgement of 250", || {
            transport
                .sent("Acknowledge")
                .iter()
                .any(|m| matches!(m, SyncMessage::Acknowledge { up_to_sequence: 250, .. }))
        })
        .await;
    }

    /// What `Node::write_with` waits on: every batch the follower applies, and the leader's
    /// commit sequence whenever it rises, are published on the library's progress watch.
    #[actix_rt::test]
    async fn each_batch_applied_and_the_leaders_commit_are_published() {
        let (s, transport, actor) = start(0, |_, _, _| None);
        wait_for("the initial fetch", || !transport.sent("FetchEntries").is_empty()).await;
        let mut published = s.progress.subscribe();
        let before = published.borrow_and_update().others;
        let tm = lsync_storage::TransactionManager::new(
            s.leader.clone(),
            s.leader.sync_state().unwrap().device_id,
        );
        tm.commit_batch(tag_inserts("p", 5)).unwrap();
        let note = |commit_sequence| SyncMessage::NewEntries {
            commit_sequence,
            library_id: s.lib,
            term: 1,
            from_sequence: 1,
            to_sequence: 5,
            entry_count: 5,
            prev_term: 0,
            entries: vec![],
            prev_hash: None,
        };
        // a commit sequence of 0 raises nothing: what is published is the batch applied
        let (reply, _rx) = tokio::sync::oneshot::channel();
        actor.send(InboundRequest { peer: s.leader_peer, message: note(0), reply }).await.unwrap();
        wait_for("all 5 entries applied", || last(&s.follower) == 5).await;
        let applied = tokio::time::timeout(
            Duration::from_secs(60),
            published.wait_for(|p| p.others != before),
        )
        .await;
        assert!(matches!(applied, Ok(Ok(_))), "the batch applied was not published");
        drop(applied);
        assert_eq!(s.progress.get().commit, 0);
        // the leader's commit sequence, once it says more
        let (reply, _rx) = tokio::sync::oneshot::channel();
        actor.send(InboundRequest { peer: s.leader_peer, message: note(5), reply }).await.unwrap();
        let committed =
            tokio::time::timeout(Duration::from_secs(60), published.wait_for(|p| p.commit == 5))
                .await;
        assert!(matches!(committed, Ok(Ok(_))), "not published");
    }

    /// The `(since_sequence, since_term)` of every FetchEntries sent, in order.
    fn fetched_since(transport: &ScriptedTransport) -> Vec<(u64, u64)> {
        transport
            .sent("FetchEntries")
            .iter()
            .map(|m| match m {
                SyncMessage::FetchEntries { since_sequence, since_term, .. } => {
                    (*since_sequence, *since_term)
                }
                _ => unreachable!(),
            })
            .collect()
    }

    /// The `since_sequence` of every FetchEntries sent, in order.
    fn since_sequences(transport: &ScriptedTransport) -> Vec<u64> {
        fetched_since(transport).into_iter().map(|(since, _)| since).collect()
    }

    #[actix_rt::test]
    async fn responses_that_arrive_during_an_apply_are_applied_together() {
        // The scripted leader answers at once, so the next responses are there long before a
        // 100-entry transaction is done: the round applies them together, up to PIPELINE.
        let (s, transport, _actor) = start(3_000, |_, _, _| None);
        let mut events = s.events.resubscribe();
        wait_for("all 3,000 entries applied", || last(&s.follower) == 3_000).await;
        assert_eq!(s.follower.dump().unwrap(), s.leader.dump().unwrap());
        let mut batches = Vec::new();
        wait_for("every EntriesApplied event", || {
            for ev in drain(&mut events) {
                if let SyncEvent::EntriesApplied { first, last, count, .. } = ev {
                    batches.push((first, last, count));
                }
            }
            batches.last().is_some_and(|b| b.1 == 3_000)
        })
        .await;
        let mut next = 1;
        for &(first, last, count) in &batches {
            assert_eq!((first, last - first + 1), (next, count), "in order, no gap: {batches:?}");
            assert!(
                count <= PIPELINE as u64 * 100,
                "at most {PIPELINE} responses per transaction: {batches:?}"
            );
            next = last + 1;
        }
        assert!(batches.iter().any(|b| b.2 > 100), "responses were applied together: {batches:?}");
        let sinces = since_sequences(&transport);
        assert_eq!(sinces, (0..30).map(|i| i * 100).collect::<Vec<_>>(), "each page fetched once");
        // Fetches left ahead of the response before them (the others waited for room in the
        // pipeline), and every guess held.
        assert!(s.metrics.fetches_ahead.load(Ordering::Relaxed) > 0);
        assert_eq!(s.metrics.fetches_ahead_missed.load(Ordering::Relaxed), 0);
    }

    #[actix_rt::test]
    async fn a_fetch_ahead_that_guessed_the_wrong_term_is_dropped_and_nothing_is_rebuilt() {
        // Entries 1..=199 of term 1, 200..=350 of term 2: the fetch sent ahead from 100 guesses
        // that entry 200 has term 1, and the leader answers that guess with SyncRequired. The
        // follower must drop that answer (the response from 100 ends with term 2), fetch from
        // (200, 2) and converge without a rebuild.
        let (s, transport, _actor) = start_prepared(
            199,
            |leader, tm| {
                leader.set_vote(2, leader.sync_state().unwrap().voted_for).unwrap();
                tm.commit_batch(tag_inserts("u", 151)).unwrap();
            },
            SyncConfig { heartbeat_interval: Duration::from_secs(3600), ..SyncConfig::fast() },
            Box::new(|_, _, _| None),
        );
        wait_for("all 350 entries applied", || last(&s.follower) == 350).await;
        assert_eq!(s.follower.dump().unwrap(), s.leader.dump().unwrap());
        assert_eq!(s.follower.term_at(200).unwrap(), Some(2));
        let sinces = fetched_since(&transport);
        assert!(sinces.contains(&(200, 1)), "the wrong guess was sent: {sinces:?}");
        assert!(sinces.contains(&(200, 2)), "then the right fetch: {sinces:?}");
        assert!(s.metrics.fetches_ahead_missed.load(Ordering::Relaxed) >= 1);
        assert_eq!(s.metrics.resyncs.load(Ordering::Relaxed), 0, "nothing was rebuilt");
    }

    #[actix_rt::test]
    async fn a_follower_whose_guesses_keep_missing_stops_guessing() {
        // The follower expects blocks of 500 entries, the leader answers blocks of 100: every
        // guess would miss. After MAX_MISSED_GUESSES the pass fetches one response at a time.
        let (s, transport, _actor) = start_prepared(
            1_000,
            |_, _| {},
            SyncConfig {
                heartbeat_interval: Duration::from_secs(3600),
                max_entries_per_response: 500,
                ..SyncConfig::fast()
            },
            Box::new(|_, _, _| None),
        );
        wait_for("all 1,000 entries applied", || last(&s.follower) == 1_000).await;
        assert_eq!(s.follower.dump().unwrap(), s.leader.dump().unwrap());
        let missed = s.metrics.fetches_ahead_missed.load(Ordering::Relaxed);
        assert_eq!(missed, MAX_MISSED_GUESSES as u64, "{:?}", fetched_since(&transport));
        assert_eq!(s.metrics.fetches_ahead.load(Ordering::Relaxed), missed);
        // Each fetch from a real end; the first knows nothing of the leader's log, so no guess
        // goes with it; the next two are followed by a guess of 500, then none.
        let sinces = since_sequences(&transport);
        assert_eq!(sinces, [0, 100, 500, 200, 500, 300, 400, 500, 600, 700, 800, 900]);
    }

    /// Sends `msg` to the actor as its leader; returns the reply.
    async fn from_leader(
        actor: &Addr<FollowerActor>,
        s: &Setup,
        message: SyncMessage,
    ) -> SyncMessage {
        let (reply, rx) = tokio::sync::oneshot::channel();
        actor.send(InboundRequest { peer: s.leader_peer, message, reply }).await.unwrap();
        rx.await.unwrap()
    }

    fn pushed(s: &Setup, from: u64, to: u64, prev_term: u64) -> SyncMessage {
        SyncMessage::NewEntries {
            commit_sequence: 0,
            library_id: s.lib,
            term: 1,
            from_sequence: from,
            to_sequence: to,
            entry_count: to - from + 1,
            prev_term,
            entries: s.leader.fetch_range(from, to).unwrap(),
            prev_hash: None,
        }
    }

    /// Waits (up to a minute) until the follower's machine is caught up: no pass running.
    async fn caught_up(actor: &Addr<FollowerActor>) {
        for _ in 0..12_000 {
            let st = actor.send(ObserveFollower).await.unwrap().status;
            if st.state == FollowerState::CaughtUp {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("the follower never caught up");
    }

    #[actix_rt::test]
    async fn pushed_entries_that_continue_the_log_are_applied_without_a_fetch() {
        let (s, transport, actor) = start(0, |_, _, _| None);
        let mut events = s.events.resubscribe();
        let tm = lsync_storage::TransactionManager::new(
            s.leader.clone(),
            s.leader.sync_state().unwrap().device_id,
        );
        let tag = |i: u64| {
            lsync_storage::Change::insert(&lsync_storage::Tag {
                id: format!("p{i}"),
                name: "x".into(),
                color: None,
            })
        };
        // Wait until the start-up round is over (position read, worker idle).
        caught_up(&actor).await;
        let fetches = transport.sent("FetchEntries").len();

        tm.commit_batch((1..=3).map(tag).collect()).unwrap();
        // Answered once applied, with the new position; no fetch.
        let reply = from_leader(&actor, &s, pushed(&s, 1, 3, 0)).await;
        assert!(matches!(reply, SyncMessage::Acknowledge { up_to_sequence: 3, .. }), "{reply:?}");
        assert_eq!(last(&s.follower), 3);
        assert_eq!(s.follower.dump().unwrap(), s.leader.dump().unwrap());
        assert!(drain(&mut events)
            .iter()
            .any(|e| matches!(e, SyncEvent::EntriesApplied { first: 1, last: 3, count: 3, .. })));
        assert_eq!(transport.sent("FetchEntries").len(), fetches, "nothing fetched");

        // Entries that do not continue the log (another term at sequence 3: the logs would
        // diverge there) are not applied; the follower answers with its position and fetches,
        // and the leader's check of `since_term` decides.
        tm.commit(tag(4)).unwrap();
        let reply = from_leader(&actor, &s, pushed(&s, 4, 4, 7)).await;
        assert!(matches!(reply, SyncMessage::Acknowledge { up_to_sequence: 3, .. }), "{reply:?}");
        wait_for("entry 4 fetched", || last(&s.follower) == 4).await;
        assert!(transport.sent("FetchEntries").len() > fetches, "fetched instead");
        // The entry is on disk before the machine hears the apply's outcome: wait for the pass
        // to end, so that the next answer reports the new position.
        caught_up(&actor).await;

        // Entries that do not match their announced range are not used either.
        tm.commit_batch((5..=6).map(tag).collect()).unwrap();
        let mut bad = pushed(&s, 5, 6, 1);
        if let SyncMessage::NewEntries { entries, .. } = &mut bad {
            entries.remove(0);
        }
        let reply = from_leader(&actor, &s, bad).await;
        assert!(matches!(reply, SyncMessage::Acknowledge { up_to_sequence: 4, .. }), "{reply:?}");
        wait_for("entries 5 and 6 fetched", || last(&s.follower) == 6).await;
        assert_eq!(s.follower.dump().unwrap(), s.leader.dump().unwrap());
    }

    /// A response to a fetch from 0 that starts at entry 2 (entries 2..=11 of the leader's
    /// log): it does not continue the follower's log.
    fn skipping_entry_one(library_id: Uuid, leader: &Database, last: u64) -> SyncMessage {
        SyncMessage::EntriesResponse {
            commit_sequence: 0,
            library_id,
            term: 1,
            entries: leader.fetch_since(1, 10).unwrap(),
            has_more: true,
            leader_last_sequence: last,
        }
    }

    #[actix_rt::test]
    async fn a_response_with_a_gap_is_refetched_from_the_persisted_position() {
        // the first response skips entry 1: the follower must not apply it and must ask again
        let (s, transport, _actor) = start(150, |i, msg, leader| match (i, msg) {
            (0, SyncMessage::FetchEntries { library_id, .. }) => {
                Some(Ok(skipping_entry_one(*library_id, leader, 150)))
            }
            _ => None,
        });
        wait_for("all 150 entries applied", || last(&s.follower) == 150).await;
        assert_eq!(s.follower.dump().unwrap(), s.leader.dump().unwrap());
        let fetches = transport.sent("FetchEntries");
        assert!(
            matches!(fetches[1], SyncMessage::FetchEntries { since_sequence: 0, .. }),
            "re-fetched from 0: {fetches:?}"
        );
    }

    #[actix_rt::test]
    async fn a_leader_that_keeps_answering_out_of_order_is_given_up_on_and_retried() {
        // The first 20 responses skip entry 1: a round restarts from the applied position a
        // bounded number of times, then backs off as from an unreachable leader.
        let (mut s, transport, _actor) = start(50, |i, msg, leader| match msg {
            SyncMessage::FetchEntries { library_id, .. } if i < 20 => {
                Some(Ok(skipping_entry_one(*library_id, leader, 50)))
            }
            _ => None,
        });
        wait_for("all 50 entries applied", || last(&s.follower) == 50).await;
        assert_eq!(s.follower.dump().unwrap(), s.leader.dump().unwrap());
        let gave_up = drain(&mut s.events)
            .into_iter()
            .filter(|e| {
                matches!(e, SyncEvent::LeaderUnreachable { error, .. }
                    if error.contains("did not continue the log"))
            })
            .count();
        assert!(gave_up >= 2, "each round gave up after {} passes: {gave_up}", MAX_RESTARTS + 1);
        assert!(transport.sent("FetchEntries").len() >= 21);
    }

    #[actix_rt::test]
    async fn a_rebuild_reports_its_final_progress_once_even_when_nothing_was_applied() {
        for n in [0u64, 120] {
            let (mut s, _transport, _actor) = start(n, move |i, msg, _| match (i, msg) {
                (0, SyncMessage::FetchEntries { library_id, .. }) => {
                    Some(Ok(SyncMessage::SyncRequired {
                        library_id: *library_id,
                        term: 1,
                        reason: "test".into(),
                        leader_last_sequence: n,
                    }))
                }
                _ => None,
            });
            let mut seen = Vec::new();
            wait_for("the done event", || {
                seen.extend(drain(&mut s.events));
                seen.iter().any(|e| matches!(e, SyncEvent::ResyncDone { .. }))
            })
            .await;
            let finals: Vec<_> = seen
                .iter()
                .filter_map(|e| match e {
                    SyncEvent::ResyncProgress { applied, target, .. } => Some((*applied, *target)),
                    _ => None,
                })
                .filter(|&(applied, _)| applied == n)
                .collect();
            assert_eq!(finals, [(n, n)], "one final report of {n} entries: {seen:?}");
            assert_eq!(last(&s.follower), n);
        }
    }

    #[actix_rt::test]
    async fn an_entry_of_a_newer_version_stops_the_follower_with_upgrade_needed() {
        // The leader (a newer lsync) sends an entry of a change type this build does not know.
        let (mut s, transport, actor) = start(5, |_, msg, leader| match msg {
            SyncMessage::FetchEntries { library_id, since_sequence: 0, .. } => {
                let mut entries = leader.fetch_since(0, 5).unwrap();
                entries[2].change_type = lsync_protocol::ChangeType::Unknown;
                Some(Ok(SyncMessage::EntriesResponse {
                    library_id: *library_id,
                    term: 1,
                    entries,
                    has_more: false,
                    leader_last_sequence: 5,
                    commit_sequence: 0,
                }))
            }
            _ => None,
        });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let st = actor.send(ObserveFollower).await.unwrap().status;
            if st.state == FollowerState::UpgradeNeeded {
                let error = st.last_error.unwrap_or_default();
                assert!(error.contains("newer version"), "{error}");
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "never reported: {st:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(last(&s.follower), 0, "nothing of the batch is applied");
        assert!(drain(&mut s.events)
            .iter()
            .any(|e| matches!(e, SyncEvent::ApplyFailed { error, .. } if error.contains("newer"))));
        // It waits (the maximum backoff) instead of refetching in a loop.
        let fetches = transport.sent("FetchEntries").len();
        assert!(fetches <= 2, "{fetches} fetches");
    }

    #[actix_rt::test]
    async fn sync_required_rebuilds_the_library_from_the_leaders_log() {
        let (mut s, transport, _actor) = start(120, |i, msg, _| match (i, msg) {
            (0, SyncMessage::FetchEntries { library_id, .. }) => {
                Some(Ok(SyncMessage::SyncRequired {
                    library_id: *library_id,
                    term: 1,
                    reason: "test".into(),
                    leader_last_sequence: 120,
                }))
            }
            _ => None,
        });
        wait_for("the library rebuilt", || last(&s.follower) == 120).await;
        assert_eq!(s.follower.dump().unwrap(), s.leader.dump().unwrap());
        wait_for("the done event", || {
            drain(&mut s.events)
                .iter()
                .any(|e| matches!(e, SyncEvent::ResyncDone { last_sequence: 120, .. }))
        })
        .await;
        assert!(transport.sent("FetchEntries").len() >= 3);
    }

    #[actix_rt::test]
    async fn an_unreachable_leader_is_retried_with_backoff_and_resumed_from_the_persisted_sequence()
    {
        let (s, transport, actor) = start(300, |i, _, _| {
            (2..6).contains(&i).then_some(Err(NetworkError::ConnectionClosed))
        });
        wait_for("all 300 entries applied", || last(&s.follower) == 300).await;
        assert_eq!(s.follower.dump().unwrap(), s.leader.dump().unwrap());
        // the worker reports CaughtUp once the round that applied the last entry returns
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while actor.send(ObserveFollower).await.unwrap().status.state != FollowerState::CaughtUp {
            assert!(tokio::time::Instant::now() < deadline, "never caught up");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // after the failures the actor resumed where its log ended, never from 0 again
        let sinces: Vec<u64> = transport
            .sent("FetchEntries")
            .iter()
            .filter_map(|m| match m {
                SyncMessage::FetchEntries { since_sequence, .. } => Some(*since_sequence),
                _ => None,
            })
            .collect();
        assert!(sinces.iter().skip(2).all(|&s| s >= 100), "{sinces:?}");
    }
}
