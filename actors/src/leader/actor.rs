//! LeaderActor — on the leader, one per library and leadership: the actor shell of the pure
//! [`LeaderCore`] (what is decided lives there: term start, commit sequence, configuration
//! changes and their answers, promotions and demotions, feature upgrade, resignation).
//!
//! Receives: commit events of the library's TransactionManager (forwarded from its broadcast
//! channel with backpressure), the set of link actors ([`SetLinks`]), every
//! follower's reported position ([`FollowerProgress`], from the link actors), membership changes
//! to make ([`ChangeConfig`], from the SyncService), [`ObserveLeader`].
//! Emits: [`NewCommit`] (range, and the entries of a small commit) to every link actor,
//! at once — each link actor decides when its follower is told (see [`crate::window`]);
//! [`LeaderReport`]s to the SyncService (a configuration it committed, the request to resign);
//! the leadership ([`LeaderShared`]: commit sequence, term start, last sequence) for the
//! link actors and status; answers to [`ChangeConfig`].
//!
//! It owns the I/O only: reading the log's last position when the leadership starts, writing
//! configuration entries (`TransactionManager::commit_config`, serialized: the mailbox waits
//! for each write, so the core learns the entry before any later commit event), noting commits
//! in storage, the reply channels of changes asked, and the one timer armed at
//! [`LeaderCore::next_deadline`].
//!
//! Memory: the core's (one position per member, at most [`MAX_QUEUED_CHANGES`] changes
//! waiting) plus one reply channel per change not answered yet.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use lsync_protocol::{Configuration, MembershipChange};
use lsync_storage::{CommitEvent, Database, Membership, TransactionManager};
use tokio::sync::{broadcast, oneshot};
use tracing::{debug, warn};
use uuid::Uuid;

use super::core::{Command, CoreConfig, LeaderCore, Token};
use crate::blocking::run_blocking;

use super::context::{write_config, LeaderShared};
pub use super::core::MAX_QUEUED_CHANGES;
use super::messages::{
    carries_last_hash, commit_hashes, ConfigError, ConfigOutcome, FollowerProgress, LeaderStatus,
    NewCommit,
};
use crate::limits::MAILBOX_CAPACITY;
use crate::messages::LeaderReport;
use crate::task::{spawn_supervised, Task};

/// Replaces the link actors the leader actor announces to.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetLinks(pub Vec<Recipient<NewCommit>>);

/// A commit happened (sent by the forwarding task).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Committed(pub CommitEvent);

/// Make a membership change (the leader actor only). Answered once the entry is
/// committed, or `committed: false` after `wait`.
#[derive(Message)]
#[rtype(result = "Result<ConfigOutcome, ConfigError>")]
pub struct ChangeConfig {
    /// The change.
    pub change: MembershipChange,
    /// How long to wait for the previous change and for this one to commit.
    pub wait: Duration,
}

/// Reads the leadership as its core sees it: the leader actor's one observe call.
#[derive(Message)]
#[rtype(result = "LeaderStatus")]
pub struct ObserveLeader;

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
    /// Where the panics of its tasks are counted.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Set while a leadership transfer holds writes: the core starts no configuration entry
    /// meanwhile ([`LeaderCore::hold_changes`]).
    pub writes_paused: Arc<std::sync::atomic::AtomicBool>,
    /// Where every change of the commit sequence is published for the host's waits.
    pub progress: crate::messages::ProgressWatch,
}

/// The leader's core (see the module documentation).
pub struct LeaderActor {
    links: Vec<Recipient<NewCommit>>,
    commits: Option<broadcast::Receiver<CommitEvent>>,
    /// None: a leader actor that only forwards commits (tests of the announcement path).
    lead: Option<Lead>,
}

/// The shell's state around the core.
struct Lead {
    cx: LeaderContext,
    core: LeaderCore,
    /// Reply channels of the changes asked and not answered yet.
    replies: HashMap<Token, oneshot::Sender<Result<ConfigOutcome, ConfigError>>>,
    next_token: Token,
    /// The timer armed for the core's next deadline, and that deadline.
    timer: Option<(SpawnHandle, Instant)>,
    /// Under `synchronous = NORMAL`: an fsync of this device's own copy is running, and the
    /// highest commit it has not covered yet (see [`LeaderActor::count_own`]).
    syncing: bool,
    unsynced: Option<(u64, u64)>,
}

impl LeaderActor {
    /// A leader actor reading `commits` that only forwards them to link actors (no commit
    /// tracking).
    pub fn new(commits: broadcast::Receiver<CommitEvent>) -> Self {
        Self { links: Vec::new(), commits: Some(commits), lead: None }
    }

    /// The leader's core for the leadership in `cx`.
    pub fn leading(commits: broadcast::Receiver<CommitEvent>, cx: LeaderContext) -> Self {
        let core = LeaderCore::new(
            CoreConfig {
                library_id: cx.library_id,
                me: cx.me,
                term: cx.term,
                catch_up: cx.catch_up,
            },
            cx.membership.clone(),
        );
        let lead = Lead {
            cx,
            core,
            replies: HashMap::new(),
            next_token: 0,
            timer: None,
            syncing: false,
            unsynced: None,
        };
        Self { links: Vec::new(), commits: Some(commits), lead: Some(lead) }
    }

    fn now() -> Instant {
        tokio::time::Instant::now().into_std()
    }

    /// Runs one input through the core, performs what it returns and re-arms the timer.
    fn step(
        &mut self,
        ctx: &mut Context<Self>,
        input: impl FnOnce(&mut LeaderCore, Instant) -> Vec<Command>,
    ) {
        let Some(lead) = self.lead.as_mut() else { return };
        lead.core.hold_changes(lead.cx.writes_paused.load(std::sync::atomic::Ordering::Acquire));
        let commands = input(&mut lead.core, Self::now());
        for command in commands {
            self.perform(command, ctx);
        }
        self.arm(ctx);
    }

    /// Keeps one timer armed at the core's next deadline.
    fn arm(&mut self, ctx: &mut Context<Self>) {
        let Some(lead) = self.lead.as_mut() else { return };
        let next = lead.core.next_deadline();
        if lead.timer.map(|(_, at)| at) == next {
            return;
        }
        if let Some((handle, _)) = lead.timer.take() {
            ctx.cancel_future(handle);
        }
        if let Some(at) = next {
            let handle = ctx.run_later(at.saturating_duration_since(Self::now()), |this, ctx| {
                if let Some(lead) = this.lead.as_mut() {
                    lead.timer = None;
                }
                this.step(ctx, |core, now| core.tick(now));
            });
            lead.timer = Some((handle, at));
        }
    }

    fn perform(&mut self, command: Command, ctx: &mut Context<Self>) {
        let Some(lead) = self.lead.as_mut() else { return };
        match command {
            Command::Publish { commit_sequence, term_start, last } => {
                let before = lead.cx.shared.commit_sequence();
                lead.cx.shared.publish(commit_sequence, term_start, last);
                if commit_sequence != before {
                    lead.cx.progress.note_commit(commit_sequence);
                }
            }
            Command::NoteCommit(commit) => {
                let db = lead.cx.db.clone();
                let note = run_blocking(move || db.note_commit(commit));
                spawn_supervised(Task::NoteCommit, lead.cx.metrics.clone(), note, |r| {
                    if let Ok(Err(e)) = r {
                        warn!(error = %e, "cannot note the commit of a voter change");
                    }
                });
            }
            Command::Report(report) => {
                if let Some(r) = &lead.cx.reports {
                    r.do_send(report);
                }
            }
            Command::Answer { token, result } => {
                if let Some(reply) = lead.replies.remove(&token) {
                    let _ = reply.send(result);
                }
            }
            Command::WriteConfig(configuration) => self.write_config(configuration, ctx),
        }
    }

    /// Commits `configuration` and reads the configuration in effect back, the mailbox
    /// waiting (so that the core hears of the entry before its commit event), then tells the
    /// core.
    fn write_config(&mut self, configuration: Configuration, ctx: &mut Context<Self>) {
        let Some(lead) = self.lead.as_ref() else { return };
        let (tm, db) = (lead.cx.tm.clone(), lead.cx.db.clone());
        let write = run_blocking(move || Ok(write_config(&tm, &db, &configuration)));
        ctx.wait(write.into_actor(self).map(|result, this, ctx| {
            let result = result.map_err(|e| e.to_string()).and_then(|written| written);
            this.step(ctx, |core, now| core.on_config_written(result, now));
        }));
    }
}

impl Actor for LeaderActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(MAILBOX_CAPACITY);
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
                        debug!(skipped = n, "core lagged behind commit events");
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        };
        ctx.spawn(forward.into_actor(self));
        if let Some(lead) = &self.lead {
            // The log as it is when the leadership starts (the mailbox waits for it), then the
            // term's first entry.
            let db = lead.cx.db.clone();
            ctx.wait(run_blocking(move || db.last_position()).into_actor(self).map(
                |last, this, ctx| {
                    let last = match last {
                        Ok(last) => last.sequence,
                        Err(e) => {
                            warn!(error = %e, "cannot read the log's last position");
                            0
                        }
                    };
                    this.step(ctx, |core, now| core.start(last, now));
                },
            ));
        }
    }
}

impl Handler<SetLinks> for LeaderActor {
    type Result = ();
    fn handle(&mut self, msg: SetLinks, _: &mut Context<Self>) {
        self.links = msg.0;
    }
}

impl Handler<Committed> for LeaderActor {
    type Result = ();
    fn handle(&mut self, msg: Committed, ctx: &mut Context<Self>) {
        let ev = msg.0;
        let Some(lead) = self.lead.as_ref() else { return self.committed(ev, None, ctx) };
        if carries_last_hash(&ev) {
            return self.committed(ev, None, ctx);
        }
        // A commit too large to carry its entries: its last entry's chain hash is read (the
        // mailbox waiting, so that the core knows it before any follower can report it).
        let (db, last) = (lead.cx.db.clone(), ev.last_sequence);
        ctx.wait(run_blocking(move || db.hash_at(last)).into_actor(self).map(
            move |hash, this, ctx| {
                let hash = hash.unwrap_or_else(|e| {
                    warn!(error = %e, "cannot read the chain hash of the last entry");
                    None
                });
                this.committed(ev, hash.map(|h| (last, h)), ctx);
            },
        ));
    }
}

impl LeaderActor {
    /// The commit event `ev` (and the chain hash of its last entry when it does not carry it):
    /// the core learns its hashes, then the commit; every link hears of it.
    fn committed(
        &mut self,
        ev: CommitEvent,
        last_hash: Option<(u64, lsync_protocol::ChainHash)>,
        ctx: &mut Context<Self>,
    ) {
        if let Some(lead) = self.lead.as_mut() {
            lead.core.note_hashes(commit_hashes(&ev).into_iter().chain(last_hash));
        }
        self.count_own(ev.term, ev.last_sequence, ctx);
        let commit = NewCommit::of(&ev);
        for s in &self.links {
            // Sessions merge announcements themselves; a full mailbox only drops a range the
            // link actor would have merged with the next one (followers fetch from their own
            // position, not from the announced range; the link actor sends no entries for a
            // range it did not see whole).
            let _ = s.try_send(commit.clone());
        }
    }
}

impl LeaderActor {
    /// The core counts this device's copy of the entries up to `last` toward the commit
    /// sequence once it is on disk (docs/architecture.md, "What an acknowledgement promises"):
    /// at once under `synchronous = FULL` (the commit was fsynced); under `NORMAL` after one
    /// fsync (`Database::acknowledge`) in the blocking pool — one at a time, the next covering
    /// every commit made meanwhile. The links hear of the commit at once either way, so under
    /// `NORMAL` the core publishes the leader's last sequence first ([`LeaderCore::on_appended`]):
    /// a follower's position up to it is recorded even when it comes before the fsync is done.
    fn count_own(&mut self, term: u64, last: u64, ctx: &mut Context<Self>) {
        let Some(lead) = self.lead.as_mut() else { return };
        if lead.cx.db.synchronous() != lsync_storage::Synchronous::Normal {
            return self.step(ctx, |core, now| core.on_commit(term, last, now));
        }
        self.step(ctx, |core, now| core.on_appended(term, last, now));
        let Some(lead) = self.lead.as_mut() else { return };
        if lead.syncing {
            lead.unsynced = lead.unsynced.max(Some((term, last)));
            return;
        }
        lead.syncing = true;
        let db = lead.cx.db.clone();
        let position = lsync_storage::LogPosition { term, sequence: last };
        ctx.spawn(run_blocking(move || db.acknowledge(position)).into_actor(self).map(
            move |synced, this, ctx| {
                let Some(lead) = this.lead.as_mut() else { return };
                lead.syncing = false;
                match synced {
                    Ok(()) => this.step(ctx, |core, now| core.on_commit(term, last, now)),
                    Err(e) => {
                        // not counted yet: tried again in a moment (or by the next commit)
                        warn!(error = %e, "cannot sync the leader's own copy");
                        ctx.run_later(Duration::from_millis(100), move |this, ctx| {
                            this.count_own(term, last, ctx)
                        });
                    }
                }
                if let Some((term, last)) = this.lead.as_mut().and_then(|l| l.unsynced.take()) {
                    this.count_own(term, last, ctx);
                }
            },
        ));
    }
}

impl Handler<FollowerProgress> for LeaderActor {
    type Result = ();
    fn handle(&mut self, msg: FollowerProgress, ctx: &mut Context<Self>) {
        self.step(ctx, |core, now| core.on_progress(msg, now));
    }
}

impl Handler<ChangeConfig> for LeaderActor {
    type Result = ResponseFuture<Result<ConfigOutcome, ConfigError>>;
    fn handle(&mut self, msg: ChangeConfig, ctx: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        match self.lead.as_mut() {
            None => {
                let _ = tx.send(Err(ConfigError::Storage("this device does not lead".into())));
            }
            Some(lead) => {
                let token = lead.next_token;
                lead.next_token = lead.next_token.wrapping_add(1);
                lead.replies.insert(token, tx);
                self.step(ctx, |core, now| core.on_change(msg.change, msg.wait, token, now));
            }
        }
        Box::pin(async move {
            rx.await.unwrap_or_else(|_| Err(ConfigError::Storage("the leader stopped".into())))
        })
    }
}

impl Handler<ObserveLeader> for LeaderActor {
    type Result = MessageResult<ObserveLeader>;
    fn handle(&mut self, _: ObserveLeader, _: &mut Context<Self>) -> Self::Result {
        MessageResult(match &self.lead {
            Some(lead) => lead.core.status(),
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
    use crate::window::Announce;

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
        let core = LeaderActor::new(rx).start();
        core.send(SetLinks(vec![
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
                prev_hash: lsync_protocol::ChainHash::GENESIS,
            })
            .unwrap();
        }
        settle().await;
        let expect: Vec<_> = (1..=3)
            .map(|i| NewCommit {
                range: Announce { from_sequence: i, to_sequence: i, term: 1 },
                prev_term: u64::from(i > 1),
                prev_hash: Some(lsync_protocol::ChainHash::GENESIS),
                entries: (i == 2).then(|| Arc::from(vec![entry(2, 0)])),
            })
            .collect();
        assert_eq!(*a.lock().unwrap(), expect, "no time passed: nothing is held back");
        assert_eq!(*b.lock().unwrap(), expect);
    }

    /// What [`alone`] starts: the database, its transaction manager, the leadership published,
    /// the commit sequence published for the host's waits, and the leader actor.
    struct Alone {
        db: Database,
        tm: TransactionManager,
        shared: Arc<LeaderShared>,
        published: tokio::sync::watch::Receiver<crate::messages::Progress>,
        leader: Addr<LeaderActor>,
    }

    /// One voter leading alone in `dir`, its database opened with `synchronous`.
    async fn alone(dir: &tempfile::TempDir, synchronous: lsync_storage::Synchronous) -> Alone {
        use libp2p::identity::Keypair;
        use lsync_protocol::{Member, MemberRole, RolePreference};
        use lsync_storage::StorageOptions;

        let options = StorageOptions { synchronous, ..StorageOptions::default() };
        let library_id = Uuid::new_v4();
        let (db, tm) = crate::testkit::leader_db_with(dir, library_id, 0, &options);
        let me = tm.device_id();
        let key = Keypair::generate_ed25519();
        let configuration = Configuration::new(
            lsync_protocol::FEATURE_VERSION,
            vec![Member {
                device_id: me,
                peer_id: key.public().to_peer_id().to_string(),
                addresses: vec![],
                name: "alone".into(),
                role: MemberRole::Voter,
                preference: RolePreference::Auto,
            }],
        );
        // the library's configuration, as its creation writes it
        let first = tm.commit_config(&configuration).unwrap().sequence;
        let membership = Membership {
            configuration,
            sequence: first,
            voters_since: first,
            previous_voters: None,
        };
        let shared = Arc::new(LeaderShared::default());
        let progress = crate::messages::ProgressWatch::default();
        let published = progress.subscribe();
        let leader = LeaderActor::leading(
            tm.subscribe(),
            LeaderContext {
                library_id,
                me,
                term: 1,
                db: db.clone(),
                tm: tm.clone(),
                membership,
                catch_up: 100,
                shared: shared.clone(),
                reports: None,
                metrics: Arc::new(crate::metrics::Metrics::default()),
                writes_paused: Arc::new(std::sync::atomic::AtomicBool::new(false)),
                progress,
            },
        )
        .start();
        settle().await;
        Alone { db, tm, shared, published, leader }
    }

    fn change(id: &str) -> lsync_storage::Change {
        lsync_storage::Change::insert(&lsync_storage::Tag {
            id: id.into(),
            name: "x".into(),
            color: None,
        })
    }

    /// One voter leading alone, its database opened with `synchronous`: commits one change
    /// and waits until the commit sequence covers it; returns how many fsyncs the database
    /// made for marks by then, and its mark.
    async fn commit_alone(
        synchronous: lsync_storage::Synchronous,
    ) -> (u64, Option<lsync_storage::LogPosition>, u64) {
        let dir = tempfile::TempDir::new().unwrap();
        let Alone { db, tm, shared, mut published, leader: _leader } =
            alone(&dir, synchronous).await;
        let entry = tm.commit(change("t")).unwrap();
        // the commit sequence is published for the host's waits (Node::write_with) as it is
        // for the links: wait on the publication, no polling
        let reached = tokio::time::timeout(
            Duration::from_secs(30),
            published.wait_for(|p| p.commit >= entry.sequence),
        )
        .await;
        assert!(
            matches!(reached, Ok(Ok(_))),
            "never published: {} {:?} {:?}",
            shared.commit_sequence(),
            db.last_position(),
            synchronous
        );
        (db.syncs(), db.mark().unwrap(), entry.sequence)
    }

    /// A link that records, for each commit it hears of, its last sequence and the leader's
    /// last sequence published when it heard of it.
    struct LastSeen(Arc<LeaderShared>, Arc<Mutex<Vec<(u64, u64)>>>);
    impl Actor for LastSeen {
        type Context = Context<Self>;
    }
    impl Handler<NewCommit> for LastSeen {
        type Result = ();
        fn handle(&mut self, msg: NewCommit, _: &mut Context<Self>) {
            self.1.lock().unwrap().push((msg.range.to_sequence, self.0.last_sequence()));
        }
    }

    /// Whatever `synchronous`, a link hears of a commit only once the leader's published last
    /// sequence covers it: the link records a follower's position only up to that sequence, so
    /// a follower that acknowledged the entries before the leader's own fsync under
    /// `synchronous = NORMAL` had its position dropped and the commit waited for its next
    /// heartbeat (issue 16; `lsync-bench majority --normal` answered such writes `Pending`).
    async fn links_hear_of_commits_the_published_last_sequence_covers(
        synchronous: lsync_storage::Synchronous,
    ) {
        let dir = tempfile::TempDir::new().unwrap();
        let a = alone(&dir, synchronous).await;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let link = LastSeen(a.shared.clone(), seen.clone()).start();
        a.leader.send(SetLinks(vec![link.recipient()])).await.unwrap();
        let mut published = a.published.clone();
        let mut last = 0;
        for i in 0..5 {
            last = a.tm.commit(change(&format!("t{i}"))).unwrap().sequence;
        }
        let reached =
            tokio::time::timeout(Duration::from_secs(30), published.wait_for(|p| p.commit >= last))
                .await;
        assert!(matches!(reached, Ok(Ok(_))), "never committed: {synchronous:?}");
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.last().map(|s| s.0), Some(last), "{synchronous:?}: {seen:?}");
        for (to, published_last) in &seen {
            assert!(
                published_last >= to,
                "{synchronous:?}: a link heard of {to} while the leader's published last \
                 sequence was {published_last}: {seen:?}"
            );
        }
    }

    #[actix_rt::test]
    async fn under_normal_links_hear_of_commits_the_published_last_sequence_covers() {
        links_hear_of_commits_the_published_last_sequence_covers(
            lsync_storage::Synchronous::Normal,
        )
        .await;
    }

    #[actix_rt::test]
    async fn under_full_links_hear_of_commits_the_published_last_sequence_covers() {
        links_hear_of_commits_the_published_last_sequence_covers(lsync_storage::Synchronous::Full)
            .await;
    }

    /// Under `synchronous = NORMAL` the leader's commits are not on disk when committed: its
    /// own copy counts toward the commit sequence only once an fsync covered it (and the mark
    /// is raised to it); under `FULL` the commit was fsynced and counts at once, no extra sync.
    #[actix_rt::test]
    async fn the_leader_counts_its_own_copy_once_it_is_on_disk() {
        let (syncs, mark, committed) = commit_alone(lsync_storage::Synchronous::Normal).await;
        assert!(syncs >= 1, "fsynced before the commit sequence covered it");
        assert!(mark.is_some_and(|m| m.sequence >= committed), "{mark:?} {committed}");
        let (syncs, mark, committed) = commit_alone(lsync_storage::Synchronous::Full).await;
        assert_eq!(syncs, 0, "no fsync beyond the commit's own");
        assert!(mark.is_some_and(|m| m.sequence >= committed), "marked at the commit: {mark:?}");
    }
}
