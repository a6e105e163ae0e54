//! LeaderCore — the decisions of the leader's core, one per library and leadership, as a pure
//! state machine: no I/O, no async, the clock injected, nothing panics on any input. The
//! [`LeaderActor`](super::actor::LeaderActor) actor is its shell: it feeds it inputs,
//! performs the [`Command`]s each returns, in order, and calls [`LeaderCore::tick`] at
//! [`LeaderCore::next_deadline`].
//!
//! ```text
//!          LeaderActor (I/O)                       LeaderCore (pure)
//!  the log's last position, at start ───► start ─────────────┐
//!  its chain hashes, then the event ─────► note_hashes,       │
//!                                          on_commit          │
//!  (synchronous = NORMAL: the event ─────► on_appended,       │
//!   then the fsync of the leader's copy)   on_commit)         │
//!  a follower's position (its link) ────► on_progress        │ ──► Vec<Command>
//!  ChangeConfig (from the SyncService) ─► on_change(token)    │
//!  a WriteConfig done (or failed) ──────► on_config_written  │
//!  timer ───────────────────────────────► tick               │
//! ```
//!
//! It decides, in the order of a leadership's life (docs/architecture.md, "Membership"):
//! 1. **Term start.** At [`LeaderCore::start`] it writes a configuration entry restating the
//!    configuration in effect ([`Command::WriteConfig`]): the leader's first entry of its term
//!    (Raft's no-op). Nothing before it commits until it does, and no configuration change
//!    starts before. A library without configuration entries yet (feature version 1) writes
//!    nothing until every member supports them (4).
//! 2. **Commit sequence.** Every follower position goes through a
//!    [`CommitTracker`]; the commit sequence, the term start and the leader's last sequence are
//!    published ([`Command::Publish`], first in a list) whenever one changes, and a commit that
//!    covers a pending voter change is noted in storage ([`Command::NoteCommit`]) and the
//!    previous voters forgotten ([`LeaderReport::Membership`]).
//! 3. **Configuration changes**, one at a time: a change waits (at most
//!    [`MAX_QUEUED_CHANGES`], each until its own deadline) until the previous configuration
//!    entry and the term start are committed ([`check_change`]), is written as the
//!    configuration in effect, and is answered ([`Command::Answer`]) once committed — or
//!    `committed: false` at its deadline. A change already made is answered with the
//!    configuration in effect. After every position it considers promoting a caught-up learner
//!    or demoting a voter ([`next_voter_change`]).
//! 4. **Feature upgrade.** Once every member reported supporting [`FEATURE_VERSION`], it
//!    writes the configuration that raises the library's feature version (for a version-1
//!    library: its first configuration entry, every member a voter, which is then its term
//!    start).
//! 5. **Resignation.** Once a configuration that does not make this device a voter is
//!    committed, it reports [`LeaderReport::Resign`], once.
//!
//! Writes are serialized: after a [`Command::WriteConfig`] nothing else is written until
//! [`LeaderCore::on_config_written`] tells the result; the shell must tell it before it hands
//! over any later commit event (the tracker must learn a configuration before the append that
//! includes it). `WriteConfig` is always the last command of a list.
//!
//! Memory: the tracker holds one position per member, the feature version of each member that
//! reported one; at most [`MAX_QUEUED_CHANGES`] changes wait, and a change waits for its commit
//! at most until its deadline.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use lsync_protocol::{ChainHash, Configuration, MemberRole, MembershipChange, FEATURE_VERSION};
use lsync_storage::Membership;
use tracing::{debug, info, warn};
use uuid::Uuid;

use super::messages::{ConfigError, ConfigOutcome, FollowerProgress, LeaderStatus};
use crate::leader::membership::{
    check_change, next_voter_change, AckVerdict, ChangeRefused, CommitTracker,
};
use crate::messages::LeaderReport;

#[cfg(test)]
mod tests;

/// Changes that may wait for the previous one to commit; more are refused at once.
pub const MAX_QUEUED_CHANGES: usize = 16;

/// The shell's name for one configuration change asked, to answer it by.
pub type Token = u64;

/// What the core knows of its leadership; fixed for its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoreConfig {
    /// The library.
    pub library_id: Uuid,
    /// This device, the leader.
    pub me: Uuid,
    /// The term it leads.
    pub term: u64,
    /// A learner is caught up within this many entries of the leader's last (one response).
    pub catch_up: u64,
}

/// A configuration entry written: its sequence, and the configuration in effect after it (as
/// storage reads it back).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigWritten {
    /// The entry's sequence.
    pub sequence: u64,
    /// The configuration in effect with it.
    pub membership: Membership,
}

/// What the shell must do, in the order returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Publish the leadership for the link actors and status: the commit sequence, the term start
    /// once written, the leader's last sequence as last heard. First in a list when present.
    Publish {
        /// The commit sequence (never decreases).
        commit_sequence: u64,
        /// The leader's first entry of its term, once written.
        term_start: Option<u64>,
        /// The leader's last sequence as last heard (never decreases).
        last: u64,
    },
    /// Note in storage that `commit` is committed (it covers a voter change: the previous
    /// voters stop mattering for elections).
    NoteCommit(u64),
    /// Tell the SyncService.
    Report(LeaderReport),
    /// Answer configuration change `token`.
    Answer {
        /// The change asked.
        token: Token,
        /// Its outcome.
        result: Result<ConfigOutcome, ConfigError>,
    },
    /// Commit `configuration` as a configuration entry
    /// (`TransactionManager::commit_config`) and read the configuration in effect back; tell
    /// [`LeaderCore::on_config_written`] before anything else. Always last in a list.
    WriteConfig(Configuration),
}

/// What the configuration being written is for.
#[derive(Debug, Clone, Copy)]
enum Purpose {
    TermStart,
    /// `first`: the library had no configuration entry; this one is the term start too.
    Upgrade {
        first: bool,
    },
    Change {
        token: Token,
        deadline: Option<Instant>,
    },
    VoterChange,
}

#[derive(Debug, Clone)]
struct Queued {
    change: MembershipChange,
    /// `None`: beyond what an [`Instant`] holds (never).
    deadline: Option<Instant>,
    token: Token,
}

#[derive(Debug, Clone, Copy)]
struct Waiter {
    sequence: u64,
    deadline: Option<Instant>,
    token: Token,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Published {
    commit: u64,
    term_start: Option<u64>,
    last: u64,
}

/// The leader's core (see the module documentation).
#[derive(Debug)]
pub struct LeaderCore {
    cfg: CoreConfig,
    tracker: CommitTracker,
    membership: Membership,
    /// The leader's last sequence as last heard.
    last: u64,
    started: bool,
    /// A configuration entry is being written (changes are serialized).
    writing: Option<Purpose>,
    queue: VecDeque<Queued>,
    waiters: Vec<Waiter>,
    /// Feature version each member reported.
    features: BTreeMap<Uuid, u32>,
    resigned: bool,
    published: Published,
    /// A leadership transfer is in progress: no configuration entry is started (see
    /// [`LeaderCore::hold_changes`]).
    held: bool,
}

impl LeaderCore {
    /// The core of the leadership in `cfg`, with `membership` the configuration in effect when
    /// it starts (both majorities required while its voter change is not known committed).
    pub fn new(cfg: CoreConfig, membership: Membership) -> Self {
        let mut tracker = CommitTracker::new(cfg.me, cfg.term);
        if let Some(previous) = &membership.previous_voters {
            // The voter change at `voters_since` is not known to be committed: both majorities.
            tracker.set_configuration(membership.voters_since.saturating_sub(1), previous.clone());
        }
        tracker.set_configuration(membership.voters_since, membership.configuration.voters());
        Self {
            cfg,
            tracker,
            membership,
            last: 0,
            started: false,
            writing: None,
            queue: VecDeque::new(),
            waiters: Vec::new(),
            features: BTreeMap::new(),
            resigned: false,
            held: false,
            published: Published::default(),
        }
    }

    /// The commit sequence now.
    pub fn commit_sequence(&self) -> u64 {
        self.tracker.commit_sequence()
    }

    /// The configuration in effect.
    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// Whether a configuration entry is being written.
    pub fn is_writing(&self) -> bool {
        self.writing.is_some()
    }

    /// The leadership, for status.
    pub fn status(&self) -> LeaderStatus {
        LeaderStatus {
            commit_sequence: self.tracker.commit_sequence(),
            term_start: self.tracker.term_start(),
            membership: self.membership.clone(),
            positions: self.tracker.positions(),
            queued_changes: self.queue.len(),
        }
    }

    /// When [`Self::tick`] must be called next: the earliest deadline of a change waiting to
    /// start or to commit.
    pub fn next_deadline(&self) -> Option<Instant> {
        let queued = self.queue.iter().filter_map(|q| q.deadline);
        self.waiters.iter().filter_map(|w| w.deadline).chain(queued).min()
    }

    /// The leadership starts with the log ending at `last_sequence`: publish it, and write the
    /// term's first entry (a restatement of the configuration in effect) — for a library
    /// without configuration entries yet, nothing until every member can read them. Only the
    /// first call counts.
    pub fn start(&mut self, last_sequence: u64, _now: Instant) -> Vec<Command> {
        let mut out = Vec::new();
        if self.started {
            return out;
        }
        self.started = true;
        self.last = self.last.max(last_sequence);
        self.tracker.on_leader_appended(self.last);
        self.publish(&mut out);
        if !self.membership.is_replicated() {
            info!(library_id = %self.cfg.library_id, "library of feature version 1: the commit \
                sequence starts once every member supports configuration entries");
            return out;
        }
        if self.writing.is_none() {
            let restated = self.membership.configuration.clone();
            self.write(restated, Purpose::TermStart, &mut out);
        }
        out
    }

    /// The chain hashes of the leader's own entries, `(sequence, hash)`, as its commit events
    /// tell them ([`super::messages::commit_hashes`]): a follower's position that names a hash
    /// counts only if it is the leader's there. The shell hands them over before the commit
    /// event itself ([`Self::on_commit`]), so that no follower can report a position the core
    /// cannot check yet. No command.
    pub fn note_hashes(&mut self, hashes: impl IntoIterator<Item = (u64, ChainHash)>) {
        for (sequence, hash) in hashes {
            self.tracker.note_own_hash(sequence, hash);
        }
    }

    /// The library committed up to `last_sequence` in `term`, and the leader's copy is on its
    /// disk up to there (commits of another term are not this leadership's). With one voter the
    /// leader's own append commits: published here; waiting changes are reconsidered.
    pub fn on_commit(&mut self, term: u64, last_sequence: u64, now: Instant) -> Vec<Command> {
        let mut out = Vec::new();
        if term != self.cfg.term {
            return out;
        }
        self.last = self.last.max(last_sequence);
        self.tracker.on_leader_logged(self.last);
        self.tracker.on_leader_durable(last_sequence);
        self.publish(&mut out);
        if !self.queue.is_empty() && self.writing.is_none() {
            self.after_progress(now, &mut out);
        }
        out
    }

    /// The library committed up to `last_sequence` in `term`, not on the leader's disk yet
    /// (`synchronous = NORMAL`: the shell fsyncs it after, then tells [`Self::on_commit`]).
    /// The leader's last sequence is published at once, before any follower can hear of the
    /// entries: its link records a follower's position only up to the published last sequence,
    /// so a follower that fetched, synced and acknowledged them before the leader's own fsync
    /// was done would otherwise have its position dropped, and the commit would wait for its
    /// next report (a heartbeat). The leader's own copy counts toward the commit sequence only
    /// from [`Self::on_commit`].
    pub fn on_appended(&mut self, term: u64, last_sequence: u64, _now: Instant) -> Vec<Command> {
        let mut out = Vec::new();
        if term != self.cfg.term {
            return out;
        }
        self.last = self.last.max(last_sequence);
        self.tracker.on_leader_logged(self.last);
        self.publish(&mut out);
        out
    }

    /// A follower reported its position (its link checked its term): counted by the commit
    /// rule; then whatever it allows (publish, changes, promotions, upgrade, resignation).
    pub fn on_progress(&mut self, progress: FollowerProgress, now: Instant) -> Vec<Command> {
        let mut out = Vec::new();
        if let Some(v) = progress.features {
            self.features.insert(progress.device, v);
        }
        match self.tracker.on_ack_hashed(progress.device, progress.ack, progress.hash) {
            AckVerdict::Refused(reason) => {
                debug!(device = %progress.device, ?reason, ack = ?progress.ack, "position not recorded")
            }
            verdict => debug!(device = %progress.device, ?verdict, ack = ?progress.ack, "position"),
        }
        self.after_progress(now, &mut out);
        out
    }

    /// Make `change`, answered as `token`: queued (refused `Pending` at once when
    /// [`MAX_QUEUED_CHANGES`] wait), written once admissible, answered once committed or, after
    /// `wait`, as not committed (or `Pending` if it never started).
    pub fn on_change(
        &mut self,
        change: MembershipChange,
        wait: Duration,
        token: Token,
        now: Instant,
    ) -> Vec<Command> {
        let mut out = Vec::new();
        if self.queue.len() >= MAX_QUEUED_CHANGES {
            let refusal =
                ConfigError::Pending(format!("{MAX_QUEUED_CHANGES} changes wait already"));
            out.push(Command::Answer { token, result: Err(refusal) });
            return out;
        }
        self.queue.push_back(Queued { change, deadline: now.checked_add(wait), token });
        self.after_progress(now, &mut out);
        out
    }

    /// The configuration entry asked by the last [`Command::WriteConfig`] was written (or not:
    /// `Err`, why). The tracker learns its voters, the SyncService the new membership; then
    /// whatever the write was for, and whatever may follow. Ignored when nothing is written.
    pub fn on_config_written(
        &mut self,
        result: Result<ConfigWritten, String>,
        now: Instant,
    ) -> Vec<Command> {
        let mut out = Vec::new();
        let Some(purpose) = self.writing.take() else {
            return out;
        };
        if let Ok(written) = &result {
            self.install(written.membership.clone(), &mut out);
        }
        match (purpose, result) {
            (Purpose::TermStart, Ok(written)) => {
                self.tracker.set_term_start(written.sequence);
                info!(library_id = %self.cfg.library_id, term = self.cfg.term,
                    sequence = written.sequence, "term started");
            }
            (Purpose::TermStart, Err(e)) => warn!(library_id = %self.cfg.library_id, error = %e,
                "cannot write the first entry of the term"),
            (Purpose::Upgrade { first }, Ok(written)) => {
                if first {
                    self.tracker.set_term_start(written.sequence);
                }
            }
            (Purpose::Upgrade { .. }, Err(e)) => {
                warn!(error = %e, "cannot raise the feature version")
            }
            (Purpose::Change { token, deadline }, Ok(written)) => {
                self.waiters.push(Waiter { sequence: written.sequence, deadline, token });
                self.resolve_waiters(&mut out);
            }
            (Purpose::Change { token, .. }, Err(e)) => {
                out.push(Command::Answer { token, result: Err(ConfigError::Storage(e)) });
            }
            (Purpose::VoterChange, Ok(_)) => {}
            (Purpose::VoterChange, Err(e)) => warn!(error = %e, "cannot change the voters"),
        }
        self.after_progress(now, &mut out);
        out
    }

    /// Time passed: a change whose deadline passed is answered — `committed: false` when its
    /// entry is written, `Pending` when it never started.
    pub fn tick(&mut self, now: Instant) -> Vec<Command> {
        let mut out = Vec::new();
        let expired = |deadline: Option<Instant>| deadline.is_some_and(|d| now >= d);
        for w in std::mem::take(&mut self.waiters) {
            if expired(w.deadline) {
                let outcome = ConfigOutcome { config_sequence: w.sequence, committed: false };
                out.push(Command::Answer { token: w.token, result: Ok(outcome) });
            } else {
                self.waiters.push(w);
            }
        }
        for q in std::mem::take(&mut self.queue) {
            if expired(q.deadline) {
                out.push(Command::Answer { token: q.token, result: Err(not_in_time()) });
            } else {
                self.queue.push_back(q);
            }
        }
        out
    }

    /// After anything that may move the commit sequence or allow a change: publish, then —
    /// unless a configuration entry is being written — the feature upgrade, else (once a
    /// change is admissible) the waiting changes in order until one is written, else a
    /// promotion or demotion.
    fn after_progress(&mut self, now: Instant, out: &mut Vec<Command>) {
        self.publish(out);
        if self.writing.is_some() || self.held {
            return;
        }
        if let Some(configuration) = self.upgrade() {
            info!(library_id = %self.cfg.library_id, to = configuration.feature_version,
                "every member supports configuration entries: raising the feature version");
            let first = !self.membership.is_replicated();
            self.write(configuration, Purpose::Upgrade { first }, out);
            return;
        }
        if self.admissible().is_err() {
            return;
        }
        while let Some(queued) = self.queue.pop_front() {
            if self.make_change(queued, now, out) {
                return;
            }
        }
        if let Some(configuration) = self.voter_change() {
            let voters = configuration.voters().len();
            info!(library_id = %self.cfg.library_id, voters, "changing the voters");
            self.write(configuration, Purpose::VoterChange, out);
        }
    }

    /// Starts `queued` (admissible now): answered at once when its deadline passed, it is
    /// invalid or already made; else written. Returns whether a write started.
    fn make_change(&mut self, queued: Queued, now: Instant, out: &mut Vec<Command>) -> bool {
        let token = queued.token;
        if queued.deadline.is_some_and(|d| now >= d) {
            out.push(Command::Answer { token, result: Err(not_in_time()) });
            return false;
        }
        let next = match self.membership.configuration.with_change(&queued.change) {
            Ok(next) => next,
            Err(e) => {
                out.push(Command::Answer { token, result: Err(ConfigError::Invalid(e.0)) });
                return false;
            }
        };
        if next == self.membership.configuration {
            let sequence = self.membership.sequence;
            self.waiters.push(Waiter { sequence, deadline: queued.deadline, token });
            self.resolve_waiters(out);
            return false;
        }
        info!(library_id = %self.cfg.library_id, change = ?queued.change, "configuration change");
        self.write(next, Purpose::Change { token, deadline: queued.deadline }, out);
        true
    }

    fn write(&mut self, configuration: Configuration, purpose: Purpose, out: &mut Vec<Command>) {
        self.writing = Some(purpose);
        out.push(Command::WriteConfig(configuration));
    }

    /// The configuration in effect changed (this leader wrote an entry): the tracker learns
    /// its voters before any commit event of it, and the service is told.
    fn install(&mut self, membership: Membership, out: &mut Vec<Command>) {
        if membership.voters_since > self.membership.voters_since
            || !self.membership.is_replicated()
        {
            self.tracker
                .set_configuration(membership.voters_since, membership.configuration.voters());
        }
        self.membership = membership.clone();
        out.push(Command::Report(LeaderReport::Membership(membership)));
    }

    /// Whether a configuration change may be appended now.
    fn admissible(&self) -> Result<(), ChangeRefused> {
        check_change(
            self.membership.sequence,
            self.tracker.commit_sequence(),
            self.tracker.term_start(),
        )
    }

    /// Publishes what changed; when the commit sequence moved, forgets the previous voters
    /// once a voter change is committed, answers the waiters it satisfies, and resigns when
    /// due.
    fn publish(&mut self, out: &mut Vec<Command>) {
        let before = self.published;
        let now = Published {
            commit: self.tracker.commit_sequence(),
            term_start: self.tracker.term_start(),
            last: self.last,
        };
        if now == before {
            return;
        }
        self.published = now;
        out.push(Command::Publish {
            commit_sequence: now.commit,
            term_start: now.term_start,
            last: now.last,
        });
        let commit = now.commit;
        if commit == before.commit {
            return;
        }
        if self.membership.previous_voters.is_some() && commit >= self.membership.voters_since {
            out.push(Command::NoteCommit(commit));
            self.membership.previous_voters = None;
            out.push(Command::Report(LeaderReport::Membership(self.membership.clone())));
        }
        self.resolve_waiters(out);
        if !self.resigned
            && !self.membership.configuration.is_voter(self.cfg.me)
            && commit >= self.membership.voters_since
            && self.membership.is_replicated()
        {
            self.resigned = true;
            info!(library_id = %self.cfg.library_id, "no longer a voter of the committed \
                configuration: stepping down");
            out.push(Command::Report(LeaderReport::Resign));
        }
    }

    fn resolve_waiters(&mut self, out: &mut Vec<Command>) {
        let commit = self.tracker.commit_sequence();
        for w in std::mem::take(&mut self.waiters) {
            if w.sequence <= commit {
                let outcome = ConfigOutcome { config_sequence: w.sequence, committed: true };
                out.push(Command::Answer { token: w.token, result: Ok(outcome) });
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
            .filter(|m| m.device_id != self.cfg.me)
            .all(|m| self.features.get(&m.device_id).is_some_and(|v| *v >= FEATURE_VERSION));
        if !ready || !current.contains(self.cfg.me) {
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

    /// While `held`, no configuration entry is started — no voter change, no queued change
    /// (they wait), no upgrade: a leadership transfer holds every write, these included, so
    /// that the target found caught up is still caught up when it campaigns (else it loses to
    /// a voter with the newer entry, and the transfer ends elsewhere). Released, the waiting
    /// changes go on at the next progress or tick.
    pub fn hold_changes(&mut self, held: bool) {
        self.held = held;
    }

    /// The next promotion or demotion, if one is due.
    fn voter_change(&self) -> Option<Configuration> {
        if !self.membership.is_replicated() || !self.membership.configuration.is_voter(self.cfg.me)
        {
            return None;
        }
        next_voter_change(
            &self.membership.configuration,
            self.cfg.me,
            |d| self.tracker.matched(d),
            self.last,
            self.cfg.catch_up,
        )
    }
}

fn not_in_time() -> ConfigError {
    ConfigError::Pending("the previous change did not commit in time".into())
}
