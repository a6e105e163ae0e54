//! FollowerSession — on the leader, one per follower device of a library.
//!
//! Receives: [`NewCommit`] from the LeaderNotifier, the follower's inbound requests
//! (FetchEntries, Acknowledge, Heartbeat) routed by the SyncService, connection changes.
//! Emits: NewEntries and periodic Heartbeat requests to the follower; responses to its
//! requests; FollowerConnected / FollowerLost events.
//!
//! Memory per follower is bounded: an acked sequence, at most two notifications in flight, one
//! merged pending range and the entries of that range while they are few (at most
//! `max_entries_per_response`, sent inside `NewEntries`) — never more, however far behind the
//! follower is.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use libp2p::PeerId;
use lsync_protocol::{ErrorCode, SyncLogEntry, SyncMessage, SyncRole};
use lsync_storage::{Database, StorageError, SyncLog};
use tokio::sync::broadcast;
use tracing::{debug, warn};
use uuid::Uuid;

use crate::blocking::run_blocking;
use crate::events::{FollowerStatus, SyncEvent};
use crate::fencing::{fence, stale_term, Fence};
use crate::log_cache::{LogCache, DEFAULT_LOG_CACHE_BYTES};
use crate::membership::AckPosition;
use crate::metrics::Metrics;
use crate::network::InboundRequest;
use crate::notifier::{FollowerProgress, LeaderShared, NewCommit};
use crate::transport::Transport;
use crate::window::{Announce, NotifyWindow};

/// What a session needs to know about its library.
#[derive(Clone)]
pub struct SessionContext {
    pub library_id: Uuid,
    pub db: Database,
    pub transport: Arc<dyn Transport>,
    pub events: broadcast::Sender<SyncEvent>,
    pub term: u64,
    pub max_entries_per_response: u64,
    /// Payload bytes one response may carry (entry count aside).
    pub max_response_bytes: usize,
    /// The longest a commit waits for its announcement while the follower has not answered
    /// the previous one (see [`crate::window`]).
    pub notify_window: Duration,
    /// Where terms seen in followers' messages go (the library's election).
    pub election: Option<Recipient<crate::watcher::ElectionInput>>,
    /// The blocks of the log the sessions of this term serve fetches from (one per term,
    /// shared by every session of the library; see [`new_log_cache`]).
    pub cache: Arc<LogCache>,
    /// Where fetches served are counted.
    pub metrics: Arc<Metrics>,
    /// This device (the leader), named in refusals.
    pub leader_device: Option<Uuid>,
    /// The leadership's commit sequence, sent on every leader message.
    pub leader: Arc<LeaderShared>,
    /// Where the follower's reported positions go (the leader's core, which counts them).
    pub progress: Option<Recipient<FollowerProgress>>,
    /// Where a session whose member was removed reports that it is done (the SyncService then
    /// refuses the peer).
    pub left: Option<Recipient<SessionLeft>>,
}

/// The member of this session was removed by the configuration entry at `sequence`: deliver
/// the log up to that entry — nothing after it — until the member holds it or
/// [`LEAVING_GRACE`] passes, then report [`SessionLeft`] and stop.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct Leaving {
    pub sequence: u64,
}

/// A leaving session is done (see [`Leaving`]).
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct SessionLeft {
    pub device: Uuid,
    pub peer: PeerId,
}

/// How long a removed member is given to receive the entry that removes it.
pub const LEAVING_GRACE: Duration = Duration::from_secs(10);

/// A leader's log cache for responses of at most `max_entries_per_response` entries: blocks of
/// that many entries, at most [`DEFAULT_LOG_CACHE_BYTES`] of them, counted like a response.
pub fn new_log_cache(max_entries_per_response: u64) -> Arc<LogCache> {
    Arc::new(LogCache::new(max_entries_per_response, DEFAULT_LOG_CACHE_BYTES, entry_bytes))
}

/// The connection to the follower came up or went down.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Connection(pub bool);

/// Reads the session's view of its follower.
#[derive(Message)]
#[rtype(result = "FollowerStatus")]
pub struct GetFollowerStatus {
    /// The leader's last sequence, to compute the lag.
    pub leader_last_sequence: u64,
}

#[derive(Message)]
#[rtype(result = "()")]
struct NotifyDone(Option<AckPosition>);

#[derive(Message)]
#[rtype(result = "()")]
struct HeartbeatAnswered {
    position: AckPosition,
    features: u32,
}

/// The entries of the commits not announced to the follower yet, sent inside the next
/// `NewEntries` when they are exactly its range (so the follower applies them without a
/// fetch). Bounded like a fetch response: beyond `max_entries_per_response` entries or
/// `max_response_bytes` (counted by [`entry_bytes`]) it is dropped (`Broken`) until the next
/// announcement, and the follower fetches.
#[derive(Debug, Default)]
enum Inline {
    #[default]
    Empty,
    Run {
        prev_term: u64,
        entries: Vec<SyncLogEntry>,
        bytes: usize,
    },
    Broken,
}

impl Inline {
    fn add(&mut self, commit: &NewCommit, max_entries: usize, max_bytes: usize) {
        let Some(new) = commit.entries.as_deref() else {
            *self = Inline::Broken;
            return;
        };
        let new_bytes: usize = new.iter().map(entry_bytes).sum();
        match self {
            Inline::Empty => {
                *self = Inline::Run {
                    prev_term: commit.prev_term,
                    entries: new.to_vec(),
                    bytes: new_bytes,
                }
            }
            Inline::Run { entries, bytes, .. }
                if entries.last().map(|e| e.sequence + 1) == Some(commit.range.from_sequence) =>
            {
                entries.extend_from_slice(new);
                *bytes += new_bytes;
            }
            Inline::Run { .. } | Inline::Broken => *self = Inline::Broken,
        }
        if let Inline::Run { entries, bytes, .. } = self {
            if entries.len() > max_entries || *bytes > max_bytes {
                *self = Inline::Broken;
            }
        }
    }

    /// The entries to send with announcement `a`, if they are exactly its range; empties the
    /// buffer either way.
    fn take_for(&mut self, a: &Announce) -> Option<(u64, Vec<SyncLogEntry>)> {
        match std::mem::take(self) {
            Inline::Run { prev_term, entries, .. }
                if entries.first().map(|e| e.sequence) == Some(a.from_sequence)
                    && entries.last().map(|e| e.sequence) == Some(a.to_sequence) =>
            {
                Some((prev_term, entries))
            }
            _ => None,
        }
    }
}

/// One follower, seen from the leader.
pub struct FollowerSession {
    cx: SessionContext,
    device_id: Uuid,
    peer: PeerId,
    acked: u64,
    connected: bool,
    window: NotifyWindow,
    deadline_armed: bool,
    inline: Inline,
    /// The member was removed by the configuration entry at this sequence (see [`Leaving`]).
    leaving: Option<u64>,
}

impl FollowerSession {
    /// A session for `device_id` reachable as `peer`.
    pub fn new(cx: SessionContext, device_id: Uuid, peer: PeerId) -> Self {
        let window = NotifyWindow::new(cx.notify_window);
        Self {
            cx,
            device_id,
            peer,
            acked: 0,
            connected: false,
            window,
            deadline_armed: false,
            inline: Inline::Empty,
            leaving: None,
        }
    }

    /// A leaving session is done: reported once, then the session stops.
    fn leave(&mut self, ctx: &mut Context<Self>) {
        if let Some(l) = &self.cx.left {
            l.do_send(SessionLeft { device: self.device_id, peer: self.peer });
        }
        ctx.stop();
    }

    /// A position the follower reported in this leader's term (or, from a version-1
    /// follower, without a term): it is the follower's position now — also when lower than
    /// before (it rebuilt its log) — and goes to the leader's core, which decides whether it
    /// counts toward the commit sequence.
    fn record_position(
        &mut self,
        position: AckPosition,
        features: Option<u32>,
        ctx: &mut Context<Self>,
    ) {
        if position.term > self.cx.term || (position.term != 0 && position.term < self.cx.term) {
            return;
        }
        // Checked before anything is recorded: a follower cannot hold more than the leader
        // (an acknowledgement beyond the leader's last sequence is answered BadRequest).
        if self.cx.progress.is_some() && position.sequence > self.cx.leader.last_sequence() {
            debug!(device = %self.device_id, sequence = position.sequence,
                "position beyond the leader's last sequence not recorded");
            return;
        }
        if self.leaving.is_some_and(|at| position.sequence >= at) {
            debug!(device = %self.device_id, "the removed member holds its removal");
            if let Some(p) = &self.cx.progress {
                p.do_send(FollowerProgress { device: self.device_id, ack: position, features });
            }
            self.leave(ctx);
            return;
        }
        self.acked = position.sequence;
        if let Some(p) = &self.cx.progress {
            p.do_send(FollowerProgress { device: self.device_id, ack: position, features });
        }
    }

    fn now() -> std::time::Instant {
        tokio::time::Instant::now().into_std()
    }

    /// Arms the timer of the window's deadline (if a range waits and no timer is armed).
    fn arm_deadline(&mut self, ctx: &mut Context<Self>) {
        if self.deadline_armed {
            return;
        }
        if let Some(deadline) = self.window.deadline() {
            self.deadline_armed = true;
            ctx.run_later(deadline.saturating_duration_since(Self::now()), |this, ctx| {
                this.deadline_armed = false;
                if let Some(a) = this.window.on_deadline(Self::now()) {
                    this.send_notification(a, ctx);
                }
                this.arm_deadline(ctx);
            });
        }
    }

    fn send_notification(&mut self, a: Announce, ctx: &mut Context<Self>) {
        let (prev_term, entries) = self.inline.take_for(&a).unwrap_or_default();
        let msg = SyncMessage::NewEntries {
            commit_sequence: self.cx.leader.commit_sequence(),
            library_id: self.cx.library_id,
            term: self.cx.term,
            from_sequence: a.from_sequence,
            to_sequence: a.to_sequence,
            entry_count: a.entry_count(),
            prev_term,
            entries,
        };
        let fut = self.cx.transport.request(self.peer, msg);
        let me = ctx.address();
        let peer = self.peer;
        actix_rt::spawn(async move {
            let acked = match fut.await {
                Ok(SyncMessage::Acknowledge { up_to_sequence, term, last_term, .. }) => {
                    Some(AckPosition { term, sequence: up_to_sequence, last_term })
                }
                Ok(other) => {
                    debug!(%peer, reply = other.kind(), "unexpected reply to NewEntries");
                    None
                }
                Err(e) => {
                    debug!(%peer, error = %e, "notification not delivered");
                    None
                }
            };
            me.do_send(NotifyDone(acked));
        });
    }

    fn heartbeat(&mut self, ctx: &mut Context<Self>) {
        let db = self.cx.db.clone();
        let cx = self.cx.clone();
        let peer = self.peer;
        let me = ctx.address();
        actix_rt::spawn(async move {
            let Ok(pos) = run_blocking(move || db.last_position()).await else { return };
            let msg = SyncMessage::Heartbeat {
                commit_sequence: cx.leader.commit_sequence(),
                features: lsync_protocol::FEATURE_VERSION,
                library_id: cx.library_id,
                term: cx.term,
                current_sequence: pos.sequence,
                last_term: pos.term,
                role: SyncRole::Leader,
            };
            match cx.transport.request(peer, msg).await {
                Ok(SyncMessage::Heartbeat {
                    current_sequence, term, last_term, features, ..
                }) => {
                    let position = AckPosition { term, sequence: current_sequence, last_term };
                    me.do_send(HeartbeatAnswered { position, features });
                }
                Ok(other) => debug!(%peer, reply = other.kind(), "heartbeat answered"),
                Err(e) => debug!(%peer, error = %e, "heartbeat not delivered"),
            }
        });
    }
}

impl Actor for FollowerSession {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // No timer of its own: the leader's election heartbeats (HeartbeatNow, every
        // heartbeat interval) drive this session's heartbeats, so a follower hears exactly one
        // per interval.
        ctx.set_mailbox_capacity(crate::service::MAILBOX_CAPACITY);
    }
}

impl Handler<NewCommit> for FollowerSession {
    type Result = ();
    fn handle(&mut self, mut commit: NewCommit, ctx: &mut Context<Self>) {
        if let Some(cap) = self.leaving {
            // Nothing after the entry that removes this member.
            if commit.range.from_sequence > cap {
                return;
            }
            if commit.range.to_sequence > cap {
                commit.range.to_sequence = cap;
                commit.entries = None;
            }
        }
        self.cx.cache.note_last(commit.range.to_sequence);
        let max_entries = usize::try_from(self.cx.max_entries_per_response).unwrap_or(usize::MAX);
        self.inline.add(&commit, max_entries, self.cx.max_response_bytes);
        if let Some(a) = self.window.on_commit(Self::now(), commit.range) {
            self.send_notification(a, ctx);
        }
        self.arm_deadline(ctx);
    }
}

impl FollowerSession {
    fn tell_election(&self, input: crate::watcher::ElectionInput) {
        if let Some(e) = &self.cx.election {
            e.do_send(input);
        }
    }
}

impl Handler<HeartbeatAnswered> for FollowerSession {
    type Result = ();
    fn handle(&mut self, msg: HeartbeatAnswered, ctx: &mut Context<Self>) {
        self.tell_election(crate::watcher::ElectionInput::FollowerContact {
            from: self.device_id,
            term: msg.position.term,
        });
        self.record_position(msg.position, Some(msg.features), ctx);
    }
}

impl Handler<crate::watcher::HeartbeatNow> for FollowerSession {
    type Result = ();
    fn handle(&mut self, _: crate::watcher::HeartbeatNow, ctx: &mut Context<Self>) {
        self.heartbeat(ctx);
    }
}

impl Handler<NotifyDone> for FollowerSession {
    type Result = ();
    fn handle(&mut self, msg: NotifyDone, ctx: &mut Context<Self>) {
        if let Some(position) = msg.0 {
            self.tell_election(crate::watcher::ElectionInput::FollowerContact {
                from: self.device_id,
                term: if position.term == 0 { self.cx.term } else { position.term },
            });
            self.record_position(position, None, ctx);
        }
        if let Some(a) = self.window.on_answer(Self::now()) {
            self.send_notification(a, ctx);
        }
        self.arm_deadline(ctx);
    }
}

impl Handler<Connection> for FollowerSession {
    type Result = ();
    fn handle(&mut self, msg: Connection, _: &mut Context<Self>) {
        if msg.0 == self.connected {
            return;
        }
        self.connected = msg.0;
        let ev = if msg.0 {
            SyncEvent::FollowerConnected {
                library_id: self.cx.library_id,
                device_id: self.device_id,
            }
        } else {
            SyncEvent::FollowerLost { library_id: self.cx.library_id, device_id: self.device_id }
        };
        let _ = self.cx.events.send(ev);
    }
}

impl Handler<GetFollowerStatus> for FollowerSession {
    type Result = MessageResult<GetFollowerStatus>;
    fn handle(&mut self, msg: GetFollowerStatus, _: &mut Context<Self>) -> Self::Result {
        MessageResult(FollowerStatus {
            device_id: self.device_id,
            peer_id: self.peer.to_string(),
            acked_sequence: self.acked,
            lag: msg.leader_last_sequence.saturating_sub(self.acked),
            connected: self.connected,
            role: None,
            matched_sequence: None,
        })
    }
}

impl Handler<InboundRequest> for FollowerSession {
    type Result = ();
    fn handle(&mut self, req: InboundRequest, ctx: &mut Context<Self>) {
        // The term rule first: a request of an older term is refused with this term (its
        // sender learns it), whatever it asks (docs/protocol.md §6).
        let library_id = self.cx.library_id;
        let their = match &req.message {
            SyncMessage::FetchEntries { term, .. } | SyncMessage::Heartbeat { term, .. } => {
                Some(*term)
            }
            // Version-1 followers send no term on Acknowledge (0): not fenced, never counted.
            SyncMessage::Acknowledge { term, .. } if *term != 0 => Some(*term),
            _ => None,
        };
        if let Some(their) = their {
            if fence(their, self.cx.term) == Fence::Newer {
                // The follower knows a newer term: this device does not lead it (the election
                // adopts it and steps down).
                self.tell_election(crate::watcher::ElectionInput::TermSeen { term: their });
                let _ = req.reply.send(stale_leader(library_id, their, self.cx.term));
                return;
            }
            if fence(their, self.cx.term) == Fence::Stale {
                let reply = stale_term(
                    library_id,
                    req.message.kind(),
                    their,
                    self.cx.term,
                    self.cx.leader_device,
                );
                let _ = req.reply.send(reply);
                return;
            }
        }
        match req.message {
            SyncMessage::Acknowledge { up_to_sequence, term, last_term, .. } => self
                .record_position(
                    AckPosition { term, sequence: up_to_sequence, last_term },
                    None,
                    ctx,
                ),
            SyncMessage::Heartbeat { term, current_sequence, last_term, features, .. } => self
                .record_position(
                    AckPosition { term, sequence: current_sequence, last_term },
                    Some(features),
                    ctx,
                ),
            _ => {}
        }
        let cap = self.leaving;
        if let Some(response) = serve_cached(&self.cx, &req.message) {
            Metrics::add(&self.cx.metrics.fetches_served_cached, 1);
            let _ = req.reply.send(cap_at(response, cap));
            return;
        }
        let cx = self.cx.clone();
        let peer = req.peer;
        actix_rt::spawn(async move {
            let library_id = cx.library_id;
            let kind = req.message.kind();
            let db = cx.db.clone();
            let response =
                run_blocking(move || serve(&db, &cx, req.message)).await.unwrap_or_else(|e| {
                    warn!(%peer, %library_id, request = kind, error = %e, "serving request failed");
                    SyncMessage::error(
                        library_id,
                        ErrorCode::Internal,
                        format!("storage error: {e}"),
                    )
                });
            let _ = req.reply.send(cap_at(response, cap));
        });
    }
}

/// A removed member (see [`Leaving`]) is served nothing after the entry that removes it.
fn cap_at(response: SyncMessage, cap: Option<u64>) -> SyncMessage {
    let Some(cap) = cap else { return response };
    match response {
        SyncMessage::EntriesResponse { library_id, term, mut entries, commit_sequence, .. } => {
            entries.retain(|e| e.sequence <= cap);
            let served_to = entries.last().map(|e| e.sequence);
            SyncMessage::EntriesResponse {
                library_id,
                term,
                has_more: served_to.is_some_and(|s| s < cap),
                entries,
                leader_last_sequence: cap,
                commit_sequence,
            }
        }
        SyncMessage::Heartbeat { current_sequence, .. } if current_sequence > cap => {
            SyncMessage::error(
                response.library_id(),
                ErrorCode::Unauthorized,
                format!("this device was removed from library {}", response.library_id()),
            )
        }
        other => other,
    }
}

impl Handler<Leaving> for FollowerSession {
    type Result = ();
    fn handle(&mut self, msg: Leaving, ctx: &mut Context<Self>) {
        if self.leaving.is_some() {
            return;
        }
        self.leaving = Some(msg.sequence);
        if self.acked >= msg.sequence {
            return self.leave(ctx);
        }
        ctx.run_later(LEAVING_GRACE, |this, ctx| {
            debug!(device = %this.device_id, "the removed member did not take its removal in time");
            this.leave(ctx);
        });
    }
}

/// Answers one follower request from the leader's log. Pure storage reads; no actor state.
pub fn serve(
    db: &Database,
    cx: &SessionContext,
    msg: SyncMessage,
) -> Result<SyncMessage, StorageError> {
    let library_id = cx.library_id;
    let term = cx.term;
    let commit_sequence = cx.leader.commit_sequence();
    db.with_reader(|conn| {
        let last = SyncLog::last(conn)?;
        let sync_required = |reason| SyncMessage::SyncRequired {
            library_id,
            term,
            reason,
            leader_last_sequence: last.sequence,
        };
        Ok(match msg {
            SyncMessage::FetchEntries {
                term: their, since_sequence, since_term, limit, ..
            } => {
                if their > term {
                    stale_leader(library_id, their, term)
                } else if limit == 0 {
                    SyncMessage::error(
                        library_id,
                        ErrorCode::BadRequest,
                        "limit must be at least 1",
                    )
                } else if let Some(reason) = divergence(conn, last, since_sequence, since_term)? {
                    sync_required(reason)
                } else {
                    let (mut entries, cached) =
                        read_through(conn, cx, last, since_sequence, limit)?;
                    let counter = if cached {
                        &cx.metrics.fetches_served_cached
                    } else {
                        &cx.metrics.fetches_served_storage
                    };
                    Metrics::add(counter, 1);
                    cap_bytes(&mut entries, cx.max_response_bytes);
                    let served_to = entries.last().map_or(since_sequence, |e| e.sequence);
                    SyncMessage::EntriesResponse {
                        commit_sequence,
                        library_id,
                        term,
                        has_more: served_to < last.sequence,
                        entries,
                        leader_last_sequence: last.sequence,
                    }
                }
            }
            SyncMessage::Heartbeat { term: their, current_sequence, last_term, .. } => {
                if their > term {
                    stale_leader(library_id, their, term)
                } else if let Some(reason) = divergence(conn, last, current_sequence, last_term)? {
                    sync_required(reason)
                } else {
                    leader_heartbeat(library_id, term, last, commit_sequence)
                }
            }
            SyncMessage::Acknowledge { up_to_sequence, .. } => {
                if up_to_sequence > last.sequence {
                    SyncMessage::error(
                        library_id,
                        ErrorCode::BadRequest,
                        format!(
                            "acknowledged {up_to_sequence} beyond the last sequence {}",
                            last.sequence
                        ),
                    )
                } else {
                    leader_heartbeat(library_id, term, last, commit_sequence)
                }
            }
            SyncMessage::NewEntries { term: their, .. } if their < term => {
                stale_term(library_id, "NewEntries", their, term, cx.leader_device)
            }
            SyncMessage::NewEntries { .. } => SyncMessage::error(
                library_id,
                ErrorCode::BadRequest,
                "this device leads the library; only a leader sends NewEntries",
            ),
            other => SyncMessage::error(
                library_id,
                ErrorCode::BadRequest,
                format!("{} is a response, not a request", other.kind()),
            ),
        })
    })
}

/// Answers a `FetchEntries` from the log cache when the block holding its first entry is cached
/// and the follower's entry at `since_sequence` has the leader's term; `None` otherwise (the
/// request then goes to [`serve`], which answers whatever it is). Same answer as [`serve`]'s,
/// except that `leader_last_sequence` may be a few commits old (as if read a moment earlier).
pub fn serve_cached(cx: &SessionContext, msg: &SyncMessage) -> Option<SyncMessage> {
    let SyncMessage::FetchEntries { term: their, since_sequence, since_term, limit, .. } = *msg
    else {
        return None;
    };
    if their != cx.term || limit == 0 {
        return None;
    }
    let first = since_sequence.checked_add(1)?;
    let block = cx.cache.get_for(first, |b| b.term_at(since_sequence) == Some(since_term))?;
    let (_, end) = cx.cache.block_of(first);
    let upto = end.min(since_sequence.saturating_add(limit.min(cx.max_entries_per_response)));
    let mut entries = block.slice(first, upto).to_vec();
    cap_bytes(&mut entries, cx.max_response_bytes);
    let last = cx.cache.last().max(end);
    let served_to = entries.last().map_or(since_sequence, |e| e.sequence);
    Some(SyncMessage::EntriesResponse {
        commit_sequence: cx.leader.commit_sequence(),
        library_id: cx.library_id,
        term: cx.term,
        has_more: served_to < last,
        entries,
        leader_last_sequence: last,
    })
}

/// The entries after `since` for a response (before the byte cap): at most `limit` (capped at
/// `max_entries_per_response`) and never past the end of `since + 1`'s cache block, so that a
/// follower's next fetch starts a block. When several followers fetch, a complete block is read
/// whole (with the entry before it, for its term) and kept in the cache for the others; the
/// log's last, incomplete block, and every block when one follower fetches, is read as asked
/// and not kept. Also says whether the entries came from the cache.
fn read_through(
    conn: &mut diesel::SqliteConnection,
    cx: &SessionContext,
    last: lsync_storage::LogPosition,
    since: u64,
    limit: u64,
) -> Result<(Vec<SyncLogEntry>, bool), StorageError> {
    cx.cache.note_last(last.sequence);
    let first = since.saturating_add(1);
    let (start, end) = cx.cache.block_of(first);
    let upto = end.min(since.saturating_add(limit.min(cx.max_entries_per_response)));
    if end <= last.sequence && cx.cache.keeps_blocks() {
        // Requests are served one at a time on the reader connection: another follower's
        // request may have read this block while this one waited for the connection.
        if let Some(block) = cx.cache.get(first) {
            return Ok((block.slice(first, upto).to_vec(), true));
        }
        let rows = SyncLog::fetch_range(conn, start.saturating_sub(1).max(1), end)?;
        if let Some(block) = cx.cache.insert(start, rows) {
            return Ok((block.into_vec(first, upto), false));
        }
    }
    Ok((SyncLog::fetch_since(conn, since, upto.saturating_sub(since))?, false))
}

/// Keeps the longest prefix of `entries` whose payloads fit in `max_bytes` (at least one entry,
/// so a follower always progresses), keeping every response well inside the frame limit.
/// What one entry counts against `max_response_bytes` (in a response or inside `NewEntries`).
pub(crate) fn entry_bytes(e: &SyncLogEntry) -> usize {
    e.data.len() + e.model_type.len() + e.record_id.len() + 64
}

fn cap_bytes(entries: &mut Vec<SyncLogEntry>, max_bytes: usize) {
    let mut total = 0usize;
    let keep = entries
        .iter()
        .position(|e| {
            total += entry_bytes(e);
            total > max_bytes
        })
        .unwrap_or(entries.len())
        .max(1);
    entries.truncate(keep);
}

fn leader_heartbeat(
    library_id: Uuid,
    term: u64,
    last: lsync_storage::LogPosition,
    commit_sequence: u64,
) -> SyncMessage {
    SyncMessage::Heartbeat {
        commit_sequence,
        features: lsync_protocol::FEATURE_VERSION,
        library_id,
        term,
        current_sequence: last.sequence,
        last_term: last.term,
        role: SyncRole::Leader,
    }
}

/// The requester knows a newer term than this leader's: this device does not lead that term.
fn stale_leader(library_id: Uuid, their: u64, term: u64) -> SyncMessage {
    SyncMessage::error(
        library_id,
        ErrorCode::NotLeader,
        format!("this device led term {term}; it does not lead the requester's term {their}"),
    )
}

/// Whether a follower whose log ends at `(term, sequence)` can continue from the leader's log.
fn divergence(
    conn: &mut diesel::SqliteConnection,
    leader_last: lsync_storage::LogPosition,
    sequence: u64,
    term: u64,
) -> Result<Option<String>, StorageError> {
    if sequence > leader_last.sequence {
        return Ok(Some(format!(
            "follower log ends at {sequence}, beyond the leader's last sequence {}",
            leader_last.sequence
        )));
    }
    if sequence == 0 {
        return Ok(None);
    }
    match SyncLog::term_at(conn, sequence)? {
        Some(t) if t == term => Ok(None),
        Some(t) => Ok(Some(format!(
            "follower entry {sequence} has term {term}, the leader's has term {t}: logs diverged"
        ))),
        None => Ok(Some(format!("the leader no longer holds entry {sequence}"))),
    }
}

#[cfg(test)]
mod tests {
    use lsync_protocol::ErrorCode;
    use tokio::sync::oneshot;

    use std::sync::Arc;

    use super::*;
    use crate::testkit::{entry, leader_db, session_context, ScriptedTransport};

    async fn ask(session: &Addr<FollowerSession>, message: SyncMessage) -> SyncMessage {
        let (reply, rx) = oneshot::channel();
        session.send(InboundRequest { peer: PeerId::random(), message, reply }).await.unwrap();
        rx.await.unwrap()
    }

    /// Records every position a session hands to the leader's core.
    struct Positions(Arc<std::sync::Mutex<Vec<FollowerProgress>>>);
    impl Actor for Positions {
        type Context = Context<Self>;
    }
    impl Handler<FollowerProgress> for Positions {
        type Result = ();
        fn handle(&mut self, msg: FollowerProgress, _: &mut Context<Self>) {
            self.0.lock().unwrap().push(msg);
        }
    }

    /// A session in term 3 over a leader log of `n` entries of term 1, whose positions are
    /// recorded.
    fn recorded_session(
        n: u64,
    ) -> (
        tempfile::TempDir,
        Uuid,
        Addr<FollowerSession>,
        Arc<std::sync::Mutex<Vec<FollowerProgress>>>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let lib = Uuid::new_v4();
        let (db, _tm) = leader_db(&dir, lib, n);
        let recorded = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut cx = session_context(
            lib,
            db,
            ScriptedTransport::new(|_, _| Err(crate::NetworkError::Closed)),
        );
        cx.term = 3;
        cx.progress = Some(Positions(recorded.clone()).start().recipient());
        cx.leader.last_sequence.store(n, std::sync::atomic::Ordering::Release);
        let session = FollowerSession::new(cx, Uuid::new_v4(), PeerId::random()).start();
        (dir, lib, session, recorded)
    }

    #[actix_rt::test]
    async fn requests_of_an_older_term_are_refused_with_this_term() {
        let (_dir, lib, session, recorded) = recorded_session(10);
        let fetch = SyncMessage::FetchEntries {
            library_id: lib,
            term: 2,
            since_sequence: 0,
            since_term: 0,
            limit: 10,
        };
        let heartbeat = SyncMessage::Heartbeat {
            library_id: lib,
            term: 0,
            current_sequence: 0,
            last_term: 0,
            role: SyncRole::Follower,
            commit_sequence: 0,
            features: 2,
        };
        let ack =
            SyncMessage::Acknowledge { library_id: lib, up_to_sequence: 5, term: 1, last_term: 1 };
        for request in [fetch, heartbeat, ack] {
            let kind = request.kind();
            match ask(&session, request).await {
                SyncMessage::Error { code: ErrorCode::StaleTerm, term: 3, .. } => {}
                other => panic!("{kind}: expected StaleTerm carrying term 3, got {other:?}"),
            }
        }
        assert!(recorded.lock().unwrap().is_empty(), "no stale position was recorded");
    }

    #[actix_rt::test]
    async fn an_acknowledgement_beyond_the_last_sequence_is_refused_and_not_counted() {
        let (_dir, lib, session, recorded) = recorded_session(10);
        let ack = |up_to, term, last_term| SyncMessage::Acknowledge {
            library_id: lib,
            up_to_sequence: up_to,
            term,
            last_term,
        };
        let refused = ask(&session, ack(11, 3, 1)).await;
        assert!(
            matches!(refused, SyncMessage::Error { code: ErrorCode::BadRequest, .. }),
            "{refused:?}"
        );
        assert!(recorded.lock().unwrap().is_empty(), "checked before it is recorded");
        let st = session.send(GetFollowerStatus { leader_last_sequence: 10 }).await.unwrap();
        assert_eq!(st.acked_sequence, 0, "not recorded for the lag either");
        let answered = ask(&session, ack(7, 3, 1)).await;
        assert!(
            matches!(answered, SyncMessage::Heartbeat { current_sequence: 10, .. }),
            "{answered:?}"
        );
        let positions: Vec<u64> = recorded.lock().unwrap().iter().map(|p| p.ack.sequence).collect();
        assert!(positions.ends_with(&[7]), "{positions:?}");
        // A lower position is believed (the follower rebuilt its log).
        ask(&session, ack(2, 3, 1)).await;
        let st = session.send(GetFollowerStatus { leader_last_sequence: 10 }).await.unwrap();
        assert_eq!(st.acked_sequence, 2);
    }

    #[actix_rt::test]
    async fn a_removed_member_is_served_nothing_after_its_removal() {
        let (_dir, lib, session, _recorded) = recorded_session(250);
        session.send(Leaving { sequence: 150 }).await.unwrap();
        let fetch = |since| SyncMessage::FetchEntries {
            library_id: lib,
            term: 3,
            since_sequence: since,
            since_term: u64::from(since > 0),
            limit: 100,
        };
        match ask(&session, fetch(100)).await {
            SyncMessage::EntriesResponse { entries, has_more, leader_last_sequence, .. } => {
                assert_eq!(entries.last().map(|e| e.sequence), Some(150));
                assert!(!has_more);
                assert_eq!(leader_last_sequence, 150, "nothing of the log after the removal");
            }
            other => panic!("unexpected {other:?}"),
        }
        match ask(&session, fetch(150)).await {
            SyncMessage::EntriesResponse { entries, .. } => assert!(entries.is_empty()),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[actix_rt::test]
    async fn fetch_is_capped_at_one_hundred_entries_whatever_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let lib = Uuid::new_v4();
        let (db, _tm) = leader_db(&dir, lib, 250);
        let cx = session_context(
            lib,
            db,
            ScriptedTransport::new(|_, _| Err(crate::NetworkError::Closed)),
        );
        let session = FollowerSession::new(cx, Uuid::new_v4(), PeerId::random()).start();
        let fetch = |since, since_term, limit| SyncMessage::FetchEntries {
            library_id: lib,
            term: 1,
            since_sequence: since,
            since_term,
            limit,
        };
        for limit in [101, 1_000, 1_000_000_000, u64::MAX] {
            match ask(&session, fetch(0, 0, limit)).await {
                SyncMessage::EntriesResponse {
                    entries, has_more, leader_last_sequence, ..
                } => {
                    assert_eq!(entries.len(), 100, "limit {limit}");
                    assert_eq!(entries[0].sequence, 1);
                    assert!(has_more);
                    assert_eq!(leader_last_sequence, 250);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        match ask(&session, fetch(200, 1, 100)).await {
            SyncMessage::EntriesResponse { entries, has_more, .. } => {
                assert_eq!(
                    entries.iter().map(|e| e.sequence).collect::<Vec<_>>(),
                    (201..=250).collect::<Vec<_>>()
                );
                assert!(!has_more, "the last page says so");
            }
            other => panic!("unexpected {other:?}"),
        }
        let small = ask(&session, fetch(0, 0, 7)).await;
        assert!(
            matches!(small, SyncMessage::EntriesResponse { ref entries, .. } if entries.len() == 7)
        );
        let zero = ask(&session, fetch(0, 0, 0)).await;
        assert!(matches!(zero, SyncMessage::Error { code: ErrorCode::BadRequest, .. }), "{zero:?}");
        // the follower's acknowledgement is recorded and answered with the leader's heartbeat
        let ack = ask(
            &session,
            SyncMessage::Acknowledge {
                last_term: 0,
                term: 0,
                library_id: lib,
                up_to_sequence: 120,
            },
        )
        .await;
        assert!(matches!(
            ack,
            SyncMessage::Heartbeat { current_sequence: 250, role: SyncRole::Leader, .. }
        ));
        let st = session.send(GetFollowerStatus { leader_last_sequence: 250 }).await.unwrap();
        assert_eq!((st.acked_sequence, st.lag), (120, 130));
    }

    #[actix_rt::test]
    async fn followers_fetching_the_same_block_share_one_storage_read() {
        use lsync_storage::{models::Tag, Change};
        let dir = tempfile::tempdir().unwrap();
        let lib = Uuid::new_v4();
        let (db, tm) = leader_db(&dir, lib, 250);
        let cx = session_context(
            lib,
            db,
            ScriptedTransport::new(|_, _| Err(crate::NetworkError::Closed)),
        );
        let (metrics, cache) = (cx.metrics.clone(), cx.cache.clone());
        cache.set_readers(3); // two sessions here, and a third follower that never fetches
        let a = FollowerSession::new(cx.clone(), Uuid::new_v4(), PeerId::random()).start();
        let b = FollowerSession::new(cx, Uuid::new_v4(), PeerId::random()).start();
        let fetch = |since, since_term| SyncMessage::FetchEntries {
            library_id: lib,
            term: 1,
            since_sequence: since,
            since_term,
            limit: 100,
        };
        let served = || {
            (
                metrics.fetches_served_storage.load(std::sync::atomic::Ordering::Relaxed),
                metrics.fetches_served_cached.load(std::sync::atomic::Ordering::Relaxed),
            )
        };
        let seqs = |m: &SyncMessage| match m {
            SyncMessage::EntriesResponse { entries, has_more, leader_last_sequence, .. } => (
                entries.iter().map(|e| e.sequence).collect::<Vec<_>>(),
                *has_more,
                *leader_last_sequence,
            ),
            other => panic!("unexpected {other:?}"),
        };

        // The first follower's fetch reads block 1..=100 from storage; the second's is the
        // same answer, from the cache.
        let first = ask(&a, fetch(0, 0)).await;
        assert_eq!(served(), (1, 0));
        assert_eq!(ask(&b, fetch(0, 0)).await, first);
        assert_eq!(served(), (1, 1));
        assert_eq!(seqs(&first), ((1..=100).collect(), true, 250));

        // A response ends where its block ends, so the next fetch starts a block.
        assert_eq!(seqs(&ask(&a, fetch(50, 1)).await), ((51..=100).collect(), true, 250));
        assert_eq!(served(), (1, 2));
        assert_eq!(seqs(&ask(&b, fetch(100, 1)).await), ((101..=200).collect(), true, 250));
        assert_eq!(seqs(&ask(&a, fetch(100, 1)).await), ((101..=200).collect(), true, 250));
        assert_eq!(served(), (2, 3));

        // A follower whose entry differs from the cached one is not answered from the cache:
        // it gets what storage says (the logs diverged).
        let diverged = ask(&a, fetch(150, 7)).await;
        assert!(matches!(diverged, SyncMessage::SyncRequired { .. }), "{diverged:?}");
        // So does a request of a newer term than the leader's.
        let mut newer = fetch(100, 1);
        if let SyncMessage::FetchEntries { term, .. } = &mut newer {
            *term = 5;
        }
        let refused = ask(&a, newer).await;
        assert!(!matches!(refused, SyncMessage::EntriesResponse { .. }), "{refused:?}");

        // The log's last block is incomplete: read from storage each time, never kept.
        assert_eq!(seqs(&ask(&a, fetch(200, 1)).await), ((201..=250).collect(), false, 250));
        assert_eq!(seqs(&ask(&b, fetch(200, 1)).await), ((201..=250).collect(), false, 250));
        assert_eq!(cache.stats().blocks, 1, "block 1..=100 went: three fetches had it");
        let (storage, _) = served();

        // Once the leader committed past its end, the block is read once more and kept.
        let more = (250..310)
            .map(|i| Change::insert(&Tag { id: format!("t{i}"), name: "x".into(), color: None }))
            .collect();
        tm.commit_batch(more).unwrap();
        assert_eq!(seqs(&ask(&b, fetch(200, 1)).await), ((201..=300).collect(), true, 310));
        assert_eq!(seqs(&ask(&a, fetch(200, 1)).await), ((201..=300).collect(), true, 310));
        assert_eq!(served().0, storage + 1, "one storage read for both");
        assert_eq!(cache.stats().blocks, 2);
    }

    /// Records NewEntries with the (paused) time they were sent; answers after `delay`, or
    /// never.
    struct SlowFollower {
        delay: Option<Duration>,
        sent: std::sync::Mutex<Vec<(Duration, u64, u64)>>,
        /// The sequences of the entries each NewEntries carried.
        carried: std::sync::Mutex<Vec<Vec<u64>>>,
        t0: tokio::time::Instant,
    }

    impl crate::transport::Transport for SlowFollower {
        fn request(
            &self,
            _: PeerId,
            msg: SyncMessage,
        ) -> crate::transport::BoxFuture<Result<SyncMessage, crate::NetworkError>> {
            if let SyncMessage::NewEntries {
                from_sequence, to_sequence, library_id, entries, ..
            } = msg
            {
                self.sent.lock().unwrap().push((self.t0.elapsed(), from_sequence, to_sequence));
                self.carried.lock().unwrap().push(entries.iter().map(|e| e.sequence).collect());
                let delay = self.delay;
                return Box::pin(async move {
                    match delay {
                        Some(d) => {
                            tokio::time::sleep(d).await;
                            Ok(SyncMessage::Acknowledge {
                                last_term: 0,
                                term: 0,
                                library_id,
                                up_to_sequence: to_sequence,
                            })
                        }
                        None => std::future::pending().await,
                    }
                });
            }
            Box::pin(async { Err(crate::NetworkError::Closed) })
        }
    }

    async fn settle() {
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
    }

    fn session_with(
        follower: Arc<SlowFollower>,
        lib: Uuid,
    ) -> (tempfile::TempDir, Addr<FollowerSession>) {
        let dir = tempfile::tempdir().unwrap();
        let (db, _tm) = leader_db(&dir, lib, 0);
        let cx = session_context(lib, db, follower);
        (dir, FollowerSession::new(cx, Uuid::new_v4(), PeerId::random()).start())
    }

    fn announce(i: u64) -> NewCommit {
        NewCommit {
            range: Announce { from_sequence: i, to_sequence: i, term: 1 },
            prev_term: 0,
            entries: None,
        }
    }

    #[actix_rt::test]
    async fn the_first_commit_goes_at_once_and_a_burst_goes_as_one_more_when_the_follower_answers()
    {
        tokio::time::pause();
        let lib = Uuid::new_v4();
        let follower = Arc::new(SlowFollower {
            delay: Some(Duration::from_millis(30)),
            sent: Default::default(),
            carried: Default::default(),
            t0: tokio::time::Instant::now(),
        });
        let (_dir, session) = session_with(follower.clone(), lib);
        session.send(announce(1)).await.unwrap();
        settle().await;
        assert_eq!(*follower.sent.lock().unwrap(), vec![(Duration::ZERO, 1, 1)], "at once");
        for i in 2..=40 {
            session.send(announce(i)).await.unwrap();
        }
        settle().await;
        assert_eq!(follower.sent.lock().unwrap().len(), 1, "held while the first is unanswered");
        // the answer comes at 30 ms (the timer wheel may round it up by a millisecond)
        tokio::time::advance(Duration::from_millis(32)).await;
        settle().await;
        let sent = follower.sent.lock().unwrap().clone();
        assert_eq!(sent.len(), 2, "{sent:?}");
        assert_eq!((sent[1].1, sent[1].2), (2, 40), "the burst, as one notification");
        assert!(
            sent[1].0 >= Duration::from_millis(30) && sent[1].0 < Duration::from_millis(100),
            "sent when the follower answered, not at the window's end: {sent:?}"
        );
        tokio::time::advance(Duration::from_millis(500)).await;
        settle().await;
        assert_eq!(follower.sent.lock().unwrap().len(), 2, "quiet: nothing more");
        let st = session.send(GetFollowerStatus { leader_last_sequence: 40 }).await.unwrap();
        assert_eq!(st.acked_sequence, 40, "the answers are the follower's acknowledgements");
    }

    #[actix_rt::test]
    async fn a_follower_that_does_not_answer_still_hears_within_one_window() {
        tokio::time::pause();
        let lib = Uuid::new_v4();
        let follower = Arc::new(SlowFollower {
            delay: None,
            sent: Default::default(),
            carried: Default::default(),
            t0: tokio::time::Instant::now(),
        });
        let (_dir, session) = session_with(follower.clone(), lib);
        session.send(announce(1)).await.unwrap();
        tokio::time::advance(Duration::from_millis(10)).await;
        session.send(announce(2)).await.unwrap();
        settle().await;
        tokio::time::advance(Duration::from_millis(99)).await;
        settle().await;
        assert_eq!(follower.sent.lock().unwrap().len(), 1);
        tokio::time::advance(Duration::from_millis(2)).await;
        settle().await;
        let sent = follower.sent.lock().unwrap().clone();
        assert_eq!(sent.len(), 2, "{sent:?}");
        assert_eq!((sent[1].1, sent[1].2), (2, 2));
    }

    /// A commit of `from..=to` carrying its entries (`data` bytes each) or not.
    fn commit(from: u64, to: u64, data: Option<usize>) -> NewCommit {
        NewCommit {
            range: Announce { from_sequence: from, to_sequence: to, term: 1 },
            prev_term: u64::from(from > 1),
            entries: data.map(|d| (from..=to).map(|i| entry(i, d)).collect()),
        }
    }

    #[actix_rt::test]
    async fn small_commits_travel_inside_new_entries_and_large_or_partial_ones_do_not() {
        tokio::time::pause();
        let lib = Uuid::new_v4();
        let follower = Arc::new(SlowFollower {
            delay: Some(Duration::from_millis(30)),
            sent: Default::default(),
            carried: Default::default(),
            t0: tokio::time::Instant::now(),
        });
        let (_dir, session) = session_with(follower.clone(), lib);
        let answered = || async {
            tokio::time::advance(Duration::from_millis(32)).await;
            settle().await;
        };
        // A lone commit: at once, with its entry.
        session.send(commit(1, 1, Some(10))).await.unwrap();
        settle().await;
        // Commits while it is outstanding: merged, and their entries with them.
        session.send(commit(2, 3, Some(10))).await.unwrap();
        session.send(commit(4, 4, Some(10))).await.unwrap();
        answered().await;
        // A commit that came without entries (too large for the event) spoils the merged run.
        session.send(commit(5, 5, Some(10))).await.unwrap();
        session.send(commit(6, 6, None)).await.unwrap();
        answered().await;
        // More than max_entries_per_response (100) entries merged: none are carried.
        session.send(commit(7, 7, Some(10))).await.unwrap();
        session.send(commit(8, 60, Some(10))).await.unwrap();
        session.send(commit(61, 120, Some(10))).await.unwrap();
        answered().await;
        // More than max_response_bytes of data: none either.
        session.send(commit(121, 121, Some(10))).await.unwrap();
        session.send(commit(122, 122, Some(5 << 20))).await.unwrap();
        session.send(commit(123, 123, Some(5 << 20))).await.unwrap();
        answered().await;
        answered().await;
        let sent: Vec<(u64, u64)> =
            follower.sent.lock().unwrap().iter().map(|(_, f, t)| (*f, *t)).collect();
        assert_eq!(
            sent,
            vec![(1, 1), (2, 4), (5, 6), (7, 120), (121, 123)],
            "the windowing is unchanged"
        );
        let carried = follower.carried.lock().unwrap().clone();
        let none = Vec::<u64>::new();
        // (5, 6): 6 came without entries; (7, 120): 114 entries; (121, 123): 10 MiB of data.
        assert_eq!(carried, vec![vec![1], vec![2, 3, 4], none.clone(), none.clone(), none]);
    }

    #[test]
    fn byte_cap_keeps_at_least_one_entry() {
        let sized = |n: usize| entry(1, n);
        let mut v = vec![sized(600), sized(600), sized(600)];
        cap_bytes(&mut v, 1_000);
        assert_eq!(v.len(), 1);
        let mut v = vec![sized(5_000)];
        cap_bytes(&mut v, 1_000);
        assert_eq!(v.len(), 1, "a single large entry still goes");
        let mut v = vec![sized(10), sized(10)];
        cap_bytes(&mut v, 1_000);
        assert_eq!(v.len(), 2);
    }
}
