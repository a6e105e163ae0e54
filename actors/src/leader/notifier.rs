//! LeaderNotifier — on the leader, one per library and leadership: the leader's replication
//! core around the pure [`crate::membership`] decisions.
//!
//! Receives: commit events of the library's TransactionManager (forwarded from its broadcast
//! channel with backpressure), the set of follower sessions ([`SetSessions`]), every
//! follower's reported position ([`FollowerProgress`], from the sessions), and membership
//! changes to make ([`ChangeConfig`], from the SyncService).
//! Emits: [`NewCommit`] (range, and the entries of a small commit) to every follower session,
//! at once — each session decides when its follower is told (see [`crate::window`]: the first
//! commit after a quiet period at once, commits made meanwhile coalesced into one more
//! announcement); [`LeaderReport`]s to the SyncService (a configuration it committed, the
//! request to resign); the commit sequence, published in [`LeaderShared`].
//!
//! What it decides, in this order of a leadership's life (docs/architecture.md, "Membership"):
//! 1. **Term start.** When it starts it commits a configuration entry restating the
//!    configuration in effect: the leader's first entry of its term (Raft's no-op). Nothing
//!    before it commits until it does, and no configuration change starts before.
//! 2. **Commit sequence.** Every follower position goes through a
//!    [`crate::membership::CommitTracker`]; the commit sequence it computes is published for the
//!    sessions (sent on every leader message) and for status, and noted in storage once it
//!    covers a voter change (so the previous voters stop mattering for elections).
//! 3. **Configuration changes**, one at a time: a change waits (bounded queue, bounded time)
//!    until the previous configuration entry is committed, is appended as the configuration in
//!    effect at once, and is answered once committed — or, when the wait runs out first, as
//!    `committed: false`. After every position it considers promoting a caught-up learner or
//!    demoting a voter ([`crate::membership::next_voter_change`]), and raising the library's
//!    feature version once every member supports it.
//! 4. **Resignation.** Once a configuration that does not make this device a voter is
//!    committed, it asks the SyncService to step down.
//!
//! Memory: the tracker holds one position per member; at most [`MAX_QUEUED_CHANGES`] changes
//! wait, each with its reply.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use lsync_protocol::{Configuration, MemberRole, MembershipChange, SyncLogEntry, FEATURE_VERSION};
use lsync_storage::{CommitEvent, Database, Membership, TransactionManager};
use tokio::sync::{broadcast, oneshot};
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::blocking::run_blocking;
use crate::membership::{check_change, next_voter_change, AckPosition, AckVerdict, CommitTracker};
use crate::window::Announce;

/// Changes that may wait for the previous one to commit; more are refused at once.
pub const MAX_QUEUED_CHANGES: usize = 16;

/// One commit, as the notifier hands it to every session.
#[derive(Message, Debug, Clone, PartialEq, Eq)]
#[rtype(result = "()")]
pub struct NewCommit {
    /// The committed range.
    pub range: Announce,
    /// The term of the entry before the range.
    pub prev_term: u64,
    /// The committed entries, when the commit was small (see
    /// [`lsync_storage::COMMIT_EVENT_MAX_ENTRIES`]): a session sends them inside `NewEntries`.
    pub entries: Option<Arc<[SyncLogEntry]>>,
}

/// Replaces the sessions the notifier announces to.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetSessions(pub Vec<Recipient<NewCommit>>);

/// A commit happened (sent by the forwarding task).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Committed(pub CommitEvent);

/// What the leader's sessions and the status read of the leadership, lock-free.
#[derive(Debug, Default)]
pub struct LeaderShared {
    /// The commit sequence (0 until the term's first entry commits).
    pub commit_sequence: AtomicU64,
    /// The sequence of the leader's first entry of its term (0 until written).
    pub term_start: AtomicU64,
    /// The leader's last sequence as the core last heard it (a follower cannot hold more).
    pub last_sequence: AtomicU64,
}

impl LeaderShared {
    /// The commit sequence now.
    pub fn commit_sequence(&self) -> u64 {
        self.commit_sequence.load(Ordering::Acquire)
    }

    /// The leader's last sequence as the core last heard it.
    pub fn last_sequence(&self) -> u64 {
        self.last_sequence.load(Ordering::Acquire)
    }
}

/// A follower reported its position (an acknowledgement, the answer to `NewEntries`, a
/// heartbeat); the session checked its term first.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct FollowerProgress {
    /// The follower.
    pub device: Uuid,
    /// What it reported.
    pub ack: AckPosition,
    /// The library feature version it supports, when it said (heartbeats).
    pub features: Option<u32>,
}

/// What the notifier tells the SyncService.
#[derive(Message, Debug, Clone, PartialEq, Eq)]
#[rtype(result = "()")]
pub enum LeaderReport {
    /// The configuration in effect changed (a configuration entry this leader committed, or
    /// the previous voters forgotten once a voter change committed).
    Membership(Membership),
    /// A configuration that does not make this device a voter is committed: step down.
    Resign,
}

/// The outcome of a configuration change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigOutcome {
    /// The configuration entry that carries the change (or the one in effect, when the
    /// change was already made).
    pub config_sequence: u64,
    /// Whether it is committed (held by the majorities the commit rule needs).
    pub committed: bool,
}

/// Why a configuration change was not made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The change cannot be made (e.g. removing the last voter, an unknown device).
    #[error("{0}")]
    Invalid(String),
    /// The previous change did not commit in time (or too many changes wait): nothing was
    /// written; ask again later.
    #[error("a configuration change is pending: {0}; retry later")]
    Pending(String),
    /// Writing the entry failed (e.g. this device just stopped leading).
    #[error("cannot write the configuration entry: {0}")]
    Storage(String),
}

/// Make a membership change (the leader's notifier only). Answered once the entry is
/// committed, or `committed: false` after `wait`.
#[derive(Message)]
#[rtype(result = "Result<ConfigOutcome, ConfigError>")]
pub struct ChangeConfig {
    /// The change.
    pub change: MembershipChange,
    /// How long to wait for the previous change and for this one to commit.
    pub wait: Duration,
}

/// The leadership as the notifier sees it, for status.
#[derive(Message)]
#[rtype(result = "LeaderStatus")]
pub struct GetLeaderStatus;

/// See [`GetLeaderStatus`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderStatus {
    /// The commit sequence.
    pub commit_sequence: u64,
    /// The leader's first entry of its term, once written.
    pub term_start: Option<u64>,
    /// The configuration in effect.
    pub membership: Membership,
    /// Each follower's reported and matched positions.
    pub positions: Vec<crate::membership::FollowerPosition>,
    /// Changes waiting for the previous one to commit.
    pub queued_changes: usize,
}

/// Everything the leader's core needs.
#[derive(Clone)]
pub struct LeaderContext {
    pub library_id: Uuid,
    /// This device, the leader.
    pub me: Uuid,
    /// The term it leads.
    pub term: u64,
    pub db: Database,
    pub tm: TransactionManager,
    /// The configuration in effect when the leadership starts.
    pub membership: Membership,
    /// A learner is caught up within this many entries of the leader's last (one response).
    pub catch_up: u64,
    pub shared: Arc<LeaderShared>,
    /// Where [`LeaderReport`]s go.
    pub reports: Option<Recipient<LeaderReport>>,
}

struct Queued {
    change: MembershipChange,
    deadline: tokio::time::Instant,
    reply: oneshot::Sender<Result<ConfigOutcome, ConfigError>>,
}

struct Waiter {
    sequence: u64,
    deadline: tokio::time::Instant,
    reply: oneshot::Sender<Result<ConfigOutcome, ConfigError>>,
}

/// The leader's core (see the module documentation).
pub struct LeaderNotifier {
    sessions: Vec<Recipient<NewCommit>>,
    commits: Option<broadcast::Receiver<CommitEvent>>,
    /// None: a notifier that only forwards commits (tests of the announcement path).
    lead: Option<Lead>,
}

struct Lead {
    cx: LeaderContext,
    tracker: CommitTracker,
    membership: Membership,
    /// The leader's last sequence as last heard.
    last: u64,
    /// A configuration entry is being written (changes are serialized).
    writing: bool,
    queue: VecDeque<Queued>,
    waiters: Vec<Waiter>,
    /// Feature version each member reported.
    features: BTreeMap<Uuid, u32>,
    resigned: bool,
}

impl LeaderNotifier {
    /// A notifier reading `commits` that only forwards them to sessions (no commit tracking).
    pub fn new(commits: broadcast::Receiver<CommitEvent>) -> Self {
        Self { sessions: Vec::new(), commits: Some(commits), lead: None }
    }

    /// The leader's core for the leadership in `cx`.
    pub fn leading(commits: broadcast::Receiver<CommitEvent>, cx: LeaderContext) -> Self {
        let mut tracker = CommitTracker::new(cx.me, cx.term);
        let m = &cx.membership;
        if let Some(previous) = &m.previous_voters {
            // The voter change at `voters_since` is not known to be committed: both majorities.
            tracker.set_configuration(m.voters_since.saturating_sub(1), previous.clone());
        }
        tracker.set_configuration(m.voters_since, m.configuration.voters());
        let lead = Lead {
            membership: cx.membership.clone(),
            cx,
            tracker,
            last: 0,
            writing: false,
            queue: VecDeque::new(),
            waiters: Vec::new(),
            features: BTreeMap::new(),
            resigned: false,
        };
        Self { sessions: Vec::new(), commits: Some(commits), lead: Some(lead) }
    }
}

impl Actor for LeaderNotifier {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(crate::service::MAILBOX_CAPACITY);
        let Some(mut rx) = self.commits.take() else { return };
        let me = ctx.address();
        let forward = async move {
            loop {
                match rx.recv().await {
                    Ok(ev) => {
                        if me.send(Committed(ev)).await.is_err() {
                            break;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        debug!(skipped = n, "notifier lagged behind commit events");
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        };
        ctx.spawn(forward.into_actor(self));
        if let Some(lead) = &self.lead {
            // The log as it is when the leadership starts (the mailbox waits for it).
            let db = lead.cx.db.clone();
            ctx.wait(run_blocking(move || db.last_position()).into_actor(self).map(
                |last, this, _| {
                    if let (Some(lead), Ok(last)) = (this.lead.as_mut(), last) {
                        lead.last = lead.last.max(last.sequence);
                        lead.tracker.on_leader_appended(lead.last);
                        lead.cx.shared.last_sequence.fetch_max(lead.last, Ordering::AcqRel);
                    }
                },
            ));
        }
        self.start_term(ctx);
        ctx.run_interval(Duration::from_millis(100), |this, _| this.expire_waits());
    }
}

impl LeaderNotifier {
    /// Writes the term's first entry: a restatement of the configuration in effect, or — for a
    /// library without configuration entries yet — nothing until every member can read them.
    fn start_term(&mut self, ctx: &mut Context<Self>) {
        let Some(lead) = self.lead.as_mut() else { return };
        if !lead.membership.is_replicated() {
            info!(library_id = %lead.cx.library_id, "library of feature version 1: the commit \
                sequence starts once every member supports configuration entries");
            return;
        }
        let configuration = lead.membership.configuration.clone();
        self.write_config(configuration, ctx, |this, result, _| {
            let Some(lead) = this.lead.as_mut() else { return };
            match result {
                Ok((entry, _)) => {
                    lead.tracker.set_term_start(entry.sequence);
                    lead.cx.shared.term_start.store(entry.sequence, Ordering::Release);
                    info!(library_id = %lead.cx.library_id, term = lead.cx.term,
                        sequence = entry.sequence, "term started");
                }
                Err(e) => warn!(library_id = %lead.cx.library_id, error = %e,
                    "cannot write the first entry of the term"),
            }
        });
    }

    /// Commits `configuration` (serialized with other configuration writes: the mailbox
    /// waits), tells the tracker before it hears of the entry's commit event, reports the new
    /// membership to the service, then runs `then`.
    fn write_config<F>(&mut self, configuration: Configuration, ctx: &mut Context<Self>, then: F)
    where
        F: FnOnce(&mut Self, Result<(SyncLogEntry, Membership), String>, &mut Context<Self>)
            + 'static,
    {
        let Some(lead) = self.lead.as_mut() else { return };
        lead.writing = true;
        let (tm, db) = (lead.cx.tm.clone(), lead.cx.db.clone());
        let write = run_blocking(move || {
            let entry = tm.commit_config(&configuration)?;
            let membership = db.membership()?;
            Ok((entry, membership))
        });
        ctx.wait(write.into_actor(self).map(move |result, this, ctx| {
            let result = result.map_err(|e| e.to_string());
            if let (Some(lead), Ok((_, membership))) = (this.lead.as_mut(), &result) {
                lead.install(membership.clone());
            }
            if let Some(lead) = this.lead.as_mut() {
                lead.writing = false;
            }
            then(this, result, ctx);
            this.after_progress(ctx);
        }));
    }

    /// After anything that may move the commit sequence or allow a change.
    fn after_progress(&mut self, ctx: &mut Context<Self>) {
        let Some(lead) = self.lead.as_mut() else { return };
        lead.publish();
        if lead.writing {
            return;
        }
        if let Some(configuration) = lead.upgrade() {
            info!(library_id = %lead.cx.library_id, to = configuration.feature_version,
                "every member supports configuration entries: raising the feature version");
            let first = !lead.membership.is_replicated();
            self.write_config(configuration, ctx, move |this, result, _| {
                let Some(lead) = this.lead.as_mut() else { return };
                match result {
                    Ok((entry, _)) if first => {
                        lead.tracker.set_term_start(entry.sequence);
                        lead.cx.shared.term_start.store(entry.sequence, Ordering::Release);
                    }
                    Ok(_) => {}
                    Err(e) => warn!(error = %e, "cannot raise the feature version"),
                }
            });
            return;
        }
        if lead.admissible().is_err() {
            return;
        }
        if let Some(queued) = lead.queue.pop_front() {
            self.make_change(queued, ctx);
            return;
        }
        if let Some(configuration) = lead.voter_change() {
            let voters = configuration.voters().len();
            info!(library_id = %lead.cx.library_id, voters, "changing the voters");
            self.write_config(configuration, ctx, |_, result, _| {
                if let Err(e) = result {
                    warn!(error = %e, "cannot change the voters");
                }
            });
        }
    }

    fn make_change(&mut self, queued: Queued, ctx: &mut Context<Self>) {
        let Some(lead) = self.lead.as_mut() else { return };
        if tokio::time::Instant::now() >= queued.deadline {
            let _ = queued.reply.send(Err(ConfigError::Pending(
                "the previous change did not commit in time".into(),
            )));
            return;
        }
        let next = match lead.membership.configuration.with_change(&queued.change) {
            Ok(next) => next,
            Err(e) => {
                let _ = queued.reply.send(Err(ConfigError::Invalid(e.0)));
                return;
            }
        };
        if next == lead.membership.configuration {
            let sequence = lead.membership.sequence;
            lead.waiters.push(Waiter { sequence, deadline: queued.deadline, reply: queued.reply });
            lead.resolve_waiters();
            return;
        }
        info!(library_id = %lead.cx.library_id, change = ?queued.change, "configuration change");
        self.write_config(next, ctx, move |this, result, _| {
            let Some(lead) = this.lead.as_mut() else { return };
            match result {
                Ok((entry, _)) => {
                    lead.waiters.push(Waiter {
                        sequence: entry.sequence,
                        deadline: queued.deadline,
                        reply: queued.reply,
                    });
                    lead.resolve_waiters();
                }
                Err(e) => {
                    let _ = queued.reply.send(Err(ConfigError::Storage(e)));
                }
            }
        });
    }

    fn expire_waits(&mut self) {
        let Some(lead) = self.lead.as_mut() else { return };
        let now = tokio::time::Instant::now();
        for w in std::mem::take(&mut lead.waiters) {
            if now >= w.deadline {
                let _ = w
                    .reply
                    .send(Ok(ConfigOutcome { config_sequence: w.sequence, committed: false }));
            } else {
                lead.waiters.push(w);
            }
        }
        while lead.queue.front().is_some_and(|q| now >= q.deadline) {
            let q = lead.queue.pop_front().expect("checked");
            let _ = q.reply.send(Err(ConfigError::Pending(
                "the previous change did not commit in time".into(),
            )));
        }
    }
}

impl Lead {
    /// The configuration in effect changed (this leader wrote an entry): the tracker learns
    /// its voters before any commit event of it, and the service is told.
    fn install(&mut self, membership: Membership) {
        if membership.voters_since > self.membership.voters_since
            || !self.membership.is_replicated()
        {
            self.tracker
                .set_configuration(membership.voters_since, membership.configuration.voters());
        }
        self.membership = membership.clone();
        if let Some(r) = &self.cx.reports {
            r.do_send(LeaderReport::Membership(membership));
        }
    }

    /// Whether a configuration change may be appended now.
    fn admissible(&self) -> Result<(), crate::membership::ChangeRefused> {
        check_change(
            self.membership.sequence,
            self.tracker.commit_sequence(),
            self.tracker.term_start(),
        )
    }

    /// Publishes the commit sequence, forgets the previous voters once a voter change is
    /// committed, answers the waiters it satisfies, and resigns when due.
    fn publish(&mut self) {
        let commit = self.tracker.commit_sequence();
        let before = self.cx.shared.commit_sequence.swap(commit, Ordering::AcqRel);
        if commit == before {
            return;
        }
        if self.membership.previous_voters.is_some() && commit >= self.membership.voters_since {
            let db = self.cx.db.clone();
            actix_rt::spawn(async move {
                if let Err(e) = run_blocking(move || db.note_commit(commit)).await {
                    warn!(error = %e, "cannot note the commit of a voter change");
                }
            });
            self.membership.previous_voters = None;
            if let Some(r) = &self.cx.reports {
                r.do_send(LeaderReport::Membership(self.membership.clone()));
            }
        }
        self.resolve_waiters();
        if !self.resigned
            && !self.membership.configuration.is_voter(self.cx.me)
            && commit >= self.membership.voters_since
            && self.membership.is_replicated()
        {
            self.resigned = true;
            info!(library_id = %self.cx.library_id, "no longer a voter of the committed \
                configuration: stepping down");
            if let Some(r) = &self.cx.reports {
                r.do_send(LeaderReport::Resign);
            }
        }
    }

    fn resolve_waiters(&mut self) {
        let commit = self.tracker.commit_sequence();
        for w in std::mem::take(&mut self.waiters) {
            if w.sequence <= commit {
                let _ = w
                    .reply
                    .send(Ok(ConfigOutcome { config_sequence: w.sequence, committed: true }));
            } else {
                self.waiters.push(w);
            }
        }
    }

    /// The configuration that raises the library's feature version, once every member
    /// reported supporting [`FEATURE_VERSION`] (for a library without configuration entries:
    /// the members it has, every one a voter, as given by hand).
    fn upgrade(&self) -> Option<Configuration> {
        let current = &self.membership.configuration;
        if current.feature_version >= FEATURE_VERSION {
            return None;
        }
        if self.membership.is_replicated() && self.admissible().is_err() {
            return None;
        }
        let ready = current
            .members
            .iter()
            .filter(|m| m.device_id != self.cx.me)
            .all(|m| self.features.get(&m.device_id).is_some_and(|v| *v >= FEATURE_VERSION));
        if !ready || !current.contains(self.cx.me) {
            return None;
        }
        let mut members = current.members.clone();
        if !self.membership.is_replicated() {
            for m in &mut members {
                m.role = MemberRole::Voter;
            }
        }
        let next = Configuration::new(FEATURE_VERSION, members);
        next.validate().ok()?;
        Some(next)
    }

    /// The next promotion or demotion, if one is due.
    fn voter_change(&self) -> Option<Configuration> {
        if !self.membership.is_replicated() || !self.membership.configuration.is_voter(self.cx.me) {
            return None;
        }
        next_voter_change(
            &self.membership.configuration,
            self.cx.me,
            |d| self.tracker.matched(d),
            self.last,
            self.cx.catch_up,
        )
    }
}

impl Handler<SetSessions> for LeaderNotifier {
    type Result = ();
    fn handle(&mut self, msg: SetSessions, _: &mut Context<Self>) {
        self.sessions = msg.0;
    }
}

impl Handler<Committed> for LeaderNotifier {
    type Result = ();
    fn handle(&mut self, msg: Committed, ctx: &mut Context<Self>) {
        let ev = msg.0;
        if let Some(lead) = self.lead.as_mut() {
            if ev.term == lead.cx.term {
                lead.last = lead.last.max(ev.last_sequence);
                lead.tracker.on_leader_appended(lead.last);
                lead.cx.shared.last_sequence.fetch_max(lead.last, Ordering::AcqRel);
                // With one voter the leader's own append commits: publish (cheap) here, decide
                // changes when positions arrive.
                lead.publish();
                if !lead.queue.is_empty() && !lead.writing {
                    self.after_progress(ctx);
                }
            }
        }
        let commit = NewCommit {
            range: Announce {
                from_sequence: ev.first_sequence,
                to_sequence: ev.last_sequence,
                term: ev.term,
            },
            prev_term: ev.prev_term,
            entries: ev.entries,
        };
        for s in &self.sessions {
            // Sessions merge announcements themselves; a full mailbox only drops a range the
            // session would have merged with the next one (followers fetch from their own
            // position, not from the announced range; the session sends no entries for a
            // range it did not see whole).
            let _ = s.try_send(commit.clone());
        }
    }
}

impl Handler<FollowerProgress> for LeaderNotifier {
    type Result = ();
    fn handle(&mut self, msg: FollowerProgress, ctx: &mut Context<Self>) {
        let Some(lead) = self.lead.as_mut() else { return };
        if let Some(v) = msg.features {
            lead.features.insert(msg.device, v);
        }
        match lead.tracker.on_ack(msg.device, msg.ack) {
            AckVerdict::Refused(reason) => {
                debug!(device = %msg.device, ?reason, ack = ?msg.ack, "position not recorded")
            }
            verdict => debug!(device = %msg.device, ?verdict, ack = ?msg.ack, "position"),
        }
        self.after_progress(ctx);
    }
}

impl Handler<ChangeConfig> for LeaderNotifier {
    type Result = ResponseFuture<Result<ConfigOutcome, ConfigError>>;
    fn handle(&mut self, msg: ChangeConfig, ctx: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        match self.lead.as_mut() {
            None => {
                let _ = tx.send(Err(ConfigError::Storage("this device does not lead".into())));
            }
            Some(lead) if lead.queue.len() >= MAX_QUEUED_CHANGES => {
                let _ = tx.send(Err(ConfigError::Pending(format!(
                    "{MAX_QUEUED_CHANGES} changes wait already"
                ))));
            }
            Some(lead) => {
                lead.queue.push_back(Queued {
                    change: msg.change,
                    deadline: tokio::time::Instant::now() + msg.wait,
                    reply: tx,
                });
                self.after_progress(ctx);
            }
        }
        Box::pin(async move {
            rx.await.unwrap_or_else(|_| Err(ConfigError::Storage("the leader stopped".into())))
        })
    }
}

impl Handler<GetLeaderStatus> for LeaderNotifier {
    type Result = MessageResult<GetLeaderStatus>;
    fn handle(&mut self, _: GetLeaderStatus, _: &mut Context<Self>) -> Self::Result {
        MessageResult(match &self.lead {
            Some(lead) => LeaderStatus {
                commit_sequence: lead.tracker.commit_sequence(),
                term_start: lead.tracker.term_start(),
                membership: lead.membership.clone(),
                positions: lead.tracker.positions(),
                queued_changes: lead.queue.len(),
            },
            None => LeaderStatus {
                commit_sequence: 0,
                term_start: None,
                membership: Membership {
                    configuration: Configuration::new(0, Vec::new()),
                    sequence: 0,
                    voters_since: 0,
                    previous_voters: None,
                },
                positions: Vec::new(),
                queued_changes: 0,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use uuid::Uuid;

    use super::*;
    use crate::testkit::entry;

    struct Recorder(Arc<Mutex<Vec<NewCommit>>>);
    impl Actor for Recorder {
        type Context = Context<Self>;
    }
    impl Handler<NewCommit> for Recorder {
        type Result = ();
        fn handle(&mut self, msg: NewCommit, _: &mut Context<Self>) {
            self.0.lock().unwrap().push(msg);
        }
    }

    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    #[actix_rt::test]
    async fn every_commit_reaches_every_session_at_once() {
        tokio::time::pause();
        let (a, b) = (Arc::new(Mutex::new(Vec::new())), Arc::new(Mutex::new(Vec::new())));
        let (tx, rx) = broadcast::channel(64);
        let notifier = LeaderNotifier::new(rx).start();
        notifier
            .send(SetSessions(vec![
                Recorder(a.clone()).start().recipient(),
                Recorder(b.clone()).start().recipient(),
            ]))
            .await
            .unwrap();
        for i in 1..=3 {
            tx.send(CommitEvent {
                library_id: Uuid::nil(),
                term: 1,
                first_sequence: i,
                last_sequence: i,
                prev_term: u64::from(i > 1),
                entries: (i == 2).then(|| Arc::from(vec![entry(2, 0)])),
            })
            .unwrap();
        }
        settle().await;
        let expect: Vec<_> = (1..=3)
            .map(|i| NewCommit {
                range: Announce { from_sequence: i, to_sequence: i, term: 1 },
                prev_term: u64::from(i > 1),
                entries: (i == 2).then(|| Arc::from(vec![entry(2, 0)])),
            })
            .collect();
        assert_eq!(*a.lock().unwrap(), expect, "no time passed: nothing is held back");
        assert_eq!(*b.lock().unwrap(), expect);
    }
}
