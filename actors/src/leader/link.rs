//! FollowerLink — the leader's replication to one follower, as a pure state machine: no I/O, no
//! async, the clock injected, nothing panics on any input. The
//! [`LinkActor`](super::link_actor::LinkActor) actor is its shell: it feeds it inputs,
//! performs the [`Command`]s each returns, in order, and calls [`FollowerLink::tick`] at
//! [`FollowerLink::next_deadline`].
//!
//! ```text
//!          LinkActor (I/O)                       FollowerLink (pure)
//!  NewCommit (from the leader's core) ─────► on_commit ─────────┐
//!  NewEntries answered (or not) ───────────► on_notify_answer   │
//!  HeartbeatNow (the election's beat) ─────► on_heartbeat_tick  │
//!  the follower answered a Heartbeat ──────► on_heartbeat_answer│ ──► Vec<Command>
//!  FetchEntries / Acknowledge / Heartbeat ─► on_request(id)     │
//!  storage answered a Serve ───────────────► on_served(id)      │
//!  connection up / down ───────────────────► on_connection      │
//!  the member was removed (Leaving) ───────► on_leaving         │
//!  timer ──────────────────────────────────► tick               │
//!  before every input ─────────────────────► set_leader_view (commit and last sequence)
//! ```
//!
//! # What it keeps
//! The follower's position as last reported (`acked`), whether it is connected, the
//! notification window ([`NotifyWindow`]: at most two notifications outstanding and one merged
//! pending range), the entries of that range while they are few (`Inline`: at most
//! `max_entries_per_response` entries and `max_response_bytes`, counted by
//! [`entry_bytes`]), and, for a removed member, the entry that
//! removes it and the grace it has to receive it. Nothing grows with the follower's lag.
//!
//! # Rules
//! - **Notifications** (docs/architecture.md, "The life of one commit", step 4): the first
//!   commit after a quiet period is announced at once ([`Command::Notify`]); commits made while
//!   one is outstanding merge into one pending range, announced when the follower answers — and
//!   at the latest one window after the first of them ([`FollowerLink::tick`]), even
//!   unanswered. While two are outstanding nothing more goes out and no deadline is set: the
//!   next answer sends the pending range if its window is over.
//! - **Inline entries**: a `Notify` carries the entries of its range when the link received
//!   every one of them (small commits carry theirs) and they are exactly the range, within the
//!   bounds of a fetch response; otherwise it carries none and the follower fetches.
//! - **The term rule** ([`crate::fencing`], docs/protocol.md §6) comes first for a request:
//!   one of an older term is answered `Error(StaleTerm)` with this leader's term and nothing
//!   of it is recorded; one of a newer term tells the election ([`ElectionInput::TermSeen`])
//!   and is answered `NotLeader`. Version-1 followers send `Acknowledge` without a term (0):
//!   not fenced.
//! - **Positions**: an Acknowledge, a follower's Heartbeat (request or answer) and the answer
//!   to a `NewEntries` report the follower's position. It is recorded — and handed to the
//!   leader's core ([`Command::Progress`]) — only when its term is this leader's (or 0) and it
//!   is not beyond the leader's last sequence; then it is believed, also when lower than before
//!   (the follower rebuilt its log). An answer to a leader message also tells the election
//!   that the follower answered ([`ElectionInput::FollowerContact`]).
//! - **Serving**: every request that passes the term rule is read from storage by the shell
//!   ([`Command::Serve`], with [`serve`](super::serve::serve)); the answer comes back through
//!   [`FollowerLink::on_served`]. Every request is answered exactly once: `on_request` returns
//!   one `Reply` or one `Serve` for its id, `on_served` one `Reply`.
//! - **Leaving** (docs/architecture.md, "Membership", Removal): once told the member was
//!   removed by the entry at `cap`, nothing after `cap` is announced, carried or served; the
//!   link leaves ([`Command::Left`], once) when the follower reports holding `cap`, or after
//!   [`LEAVING_GRACE`]. After that it only answers requests.
//! - **Heartbeats** go when the leader's election beats ([`FollowerLink::on_heartbeat_tick`]),
//!   carrying the commit sequence; the shell adds the leader's last position from storage.

use std::time::{Duration, Instant};

use libp2p::PeerId;
use lsync_protocol::{entry_bytes, ChainHash, ErrorCode, SyncLogEntry, SyncMessage, SyncRole};
use tracing::debug;
use uuid::Uuid;

use super::messages::{FollowerProgress, NewCommit};
use crate::events::{FollowerStatus, SyncEvent};
use crate::fencing::{fence, fence_acknowledgement, not_leader_of, stale_term, Verdict};
use crate::leader::membership::AckPosition;
use crate::messages::ElectionInput;
use crate::window::{Announce, NotifyWindow};

/// The `NewEntries` of a [`Command::Notify`] sent by the leader of `term`: the announced range
/// `from..=to`, the term and chain hash before it, its entries (or none) and the commit
/// sequence.
#[allow(clippy::too_many_arguments)]
pub fn new_entries(
    library_id: Uuid,
    term: u64,
    from: u64,
    to: u64,
    prev_term: u64,
    prev_hash: Option<ChainHash>,
    entries: Vec<SyncLogEntry>,
    commit_sequence: u64,
) -> SyncMessage {
    SyncMessage::NewEntries {
        commit_sequence,
        library_id,
        term,
        from_sequence: from,
        to_sequence: to,
        entry_count: to.saturating_sub(from).saturating_add(1),
        prev_term,
        entries,
        prev_hash,
    }
}

#[cfg(test)]
mod tests;

/// How long a removed member is given to receive the entry that removes it.
pub const LEAVING_GRACE: Duration = Duration::from_secs(10);

/// The longest notification window the link accepts (longer ones are clamped), so that no
/// deadline overflows an [`Instant`].
const MAX_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// The shell's name for one inbound request, to answer it by.
pub type RequestId = u64;

/// What a link knows of its library and follower; fixed for its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkConfig {
    /// The library.
    pub library_id: Uuid,
    /// The follower device.
    pub device: Uuid,
    /// Its peer, for status.
    pub peer: PeerId,
    /// The term this device leads.
    pub term: u64,
    /// This device (the leader), named in `StaleTerm` refusals.
    pub leader_device: Option<Uuid>,
    /// The most entries one response (and one `NewEntries`) carries.
    pub max_entries_per_response: u64,
    /// The most payload bytes one response (and one `NewEntries`) carries.
    pub max_response_bytes: usize,
    /// The longest a commit waits for its announcement while the follower has not answered
    /// the previous one (see [`crate::window`]); at most a day.
    pub notify_window: Duration,
}

/// The leadership as the link needs it, set by the shell before every input (it changes
/// under the link: the leader's core publishes it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LeaderView {
    /// The leader's commit sequence, sent on every leader message.
    pub commit_sequence: u64,
    /// The leader's last sequence: a position beyond it is not recorded. `None` when no
    /// leader's core counts positions (then nothing is checked).
    pub last_sequence: Option<u64>,
}

/// What the shell must do, in the order returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Send `NewEntries` announcing `from..=to` (with this term and the view's commit
    /// sequence), carrying `entries` (all of the range, or none) after the entry of
    /// `prev_term` (0 when it carries none). Its answer goes to
    /// [`FollowerLink::on_notify_answer`].
    Notify {
        /// First announced sequence.
        from: u64,
        /// Last announced sequence.
        to: u64,
        /// The term of the entry before `from`, when `entries` is not empty.
        prev_term: u64,
        /// The chain hash of the entry before `from`, when `entries` is not empty and it is
        /// known (`NewEntries.prev_hash`: the follower applies them only after that hash).
        prev_hash: Option<ChainHash>,
        /// The entries of `from..=to`, or none.
        entries: Vec<SyncLogEntry>,
        /// The leader's commit sequence.
        commit_sequence: u64,
    },
    /// Send the leader's `Heartbeat` with the leader's last position (read from storage) and
    /// `commit_sequence`. Its answer goes to [`FollowerLink::on_heartbeat_answer`].
    Heartbeat {
        /// The leader's commit sequence.
        commit_sequence: u64,
    },
    /// Answer request `to` with `message`.
    Reply {
        /// The request.
        to: RequestId,
        /// The answer.
        message: SyncMessage,
    },
    /// Answer request `to` from the leader's log (the log cache, else storage: see
    /// [`serve`](super::serve::serve)); hand the answer to [`FollowerLink::on_served`].
    Serve {
        /// The request.
        to: RequestId,
        /// What it asks.
        request: SyncMessage,
    },
    /// Hand the follower's position to the leader's core.
    Progress(FollowerProgress),
    /// Tell the library's election.
    Election(ElectionInput),
    /// Publish an event to the host.
    Event(SyncEvent),
    /// The removed member is done (see [`FollowerLink::on_leaving`]): tell the SyncService
    /// and stop. Returned once.
    Left,
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
        prev_hash: Option<ChainHash>,
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
        let new_bytes: usize = new.iter().map(entry_bytes).fold(0, usize::saturating_add);
        match self {
            Inline::Empty => {
                *self = Inline::Run {
                    prev_term: commit.prev_term,
                    prev_hash: commit.prev_hash,
                    entries: new.to_vec(),
                    bytes: new_bytes,
                }
            }
            Inline::Run { entries, bytes, .. }
                if entries.last().and_then(|e| e.sequence.checked_add(1))
                    == Some(commit.range.from_sequence) =>
            {
                entries.extend_from_slice(new);
                *bytes = bytes.saturating_add(new_bytes);
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
    fn take_for(&mut self, a: &Announce) -> Option<(u64, Option<ChainHash>, Vec<SyncLogEntry>)> {
        match std::mem::take(self) {
            Inline::Run { prev_term, prev_hash, entries, .. }
                if entries.first().map(|e| e.sequence) == Some(a.from_sequence)
                    && entries.last().map(|e| e.sequence) == Some(a.to_sequence) =>
            {
                Some((prev_term, prev_hash, entries))
            }
            _ => None,
        }
    }
}

/// A removed member: the entry that removes it, and until when it may take it.
#[derive(Debug, Clone, Copy)]
struct Leaving {
    cap: u64,
    /// `None`: the grace ends beyond what an [`Instant`] can hold.
    deadline: Option<Instant>,
}

/// One follower, seen from the leader (see the module documentation).
#[derive(Debug)]
pub struct FollowerLink {
    cfg: LinkConfig,
    view: LeaderView,
    acked: u64,
    connected: bool,
    window: NotifyWindow,
    inline: Inline,
    leaving: Option<Leaving>,
    left: bool,
}

impl FollowerLink {
    /// A link to a follower that reported nothing yet, not connected, nothing outstanding.
    pub fn new(mut cfg: LinkConfig) -> Self {
        cfg.notify_window = cfg.notify_window.min(MAX_WINDOW);
        Self {
            window: NotifyWindow::new(cfg.notify_window),
            cfg,
            view: LeaderView::default(),
            acked: 0,
            connected: false,
            inline: Inline::Empty,
            leaving: None,
            left: false,
        }
    }

    /// The leadership as it is now (commit and last sequence); the shell sets it before every
    /// input.
    pub fn set_leader_view(&mut self, view: LeaderView) {
        self.view = view;
    }

    /// The follower's position as last recorded.
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// The entry that removes the member, once told (see [`Self::on_leaving`]).
    pub fn leaving_cap(&self) -> Option<u64> {
        self.leaving.map(|l| l.cap)
    }

    /// Whether the link left (returned [`Command::Left`]).
    pub fn has_left(&self) -> bool {
        self.left
    }

    /// Notifications sent and not answered yet.
    pub fn outstanding(&self) -> u8 {
        self.window.outstanding()
    }

    /// The link's view of its follower; `lag` against `leader_last_sequence`.
    pub fn status(&self, leader_last_sequence: u64) -> FollowerStatus {
        FollowerStatus {
            device_id: self.cfg.device,
            peer_id: self.cfg.peer.to_string(),
            acked_sequence: self.acked,
            lag: leader_last_sequence.saturating_sub(self.acked),
            connected: self.connected,
            role: None,
            matched_sequence: None,
        }
    }

    /// When [`Self::tick`] must be called next, if at all: a pending range's window end (unless
    /// two notifications are outstanding: then the next answer decides), a leaving member's
    /// grace end.
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.left {
            return None;
        }
        let window = self.window.deadline().filter(|&at| {
            // Only when a tick then sends something (not with two outstanding).
            self.window.clone().on_deadline(at).is_some()
        });
        let grace = self.leaving.and_then(|l| l.deadline);
        window.into_iter().chain(grace).min()
    }

    /// Time passed: the pending range if its window is over; [`Command::Left`] if a leaving
    /// member's grace is.
    pub fn tick(&mut self, now: Instant) -> Vec<Command> {
        let mut out = Vec::new();
        if self.left {
            return out;
        }
        if let Some(a) = self.window.on_deadline(now) {
            out.push(self.notify(a));
        }
        if self.leaving.and_then(|l| l.deadline).is_some_and(|at| now >= at) {
            debug!(device = %self.cfg.device, "the removed member did not take its removal in time");
            self.leave(&mut out);
        }
        out
    }

    /// The leader committed `commit`: announced at once if nothing is outstanding, else merged
    /// into the pending range. A leaving member hears of nothing after its removal.
    pub fn on_commit(&mut self, mut commit: NewCommit, now: Instant) -> Vec<Command> {
        let mut out = Vec::new();
        if self.left {
            return out;
        }
        if let Some(cap) = self.leaving_cap() {
            // Nothing after the entry that removes this member.
            if commit.range.from_sequence > cap {
                return out;
            }
            if commit.range.to_sequence > cap {
                commit.range.to_sequence = cap;
                commit.entries = None;
            }
        }
        let max_entries = usize::try_from(self.cfg.max_entries_per_response).unwrap_or(usize::MAX);
        self.inline.add(&commit, max_entries, self.cfg.max_response_bytes);
        if let Some(a) = self.window.on_commit(now, commit.range) {
            out.push(self.notify(a));
        }
        out
    }

    /// A `NewEntries` was answered with `reply` (`None`: not delivered, or no answer). An
    /// `Acknowledge` is the follower's position; then the pending range goes if nothing else is
    /// outstanding or its window is over.
    pub fn on_notify_answer(&mut self, reply: Option<SyncMessage>, now: Instant) -> Vec<Command> {
        let mut out = Vec::new();
        if self.left {
            return out;
        }
        match reply {
            Some(SyncMessage::Acknowledge {
                up_to_sequence, term, last_term, last_hash, ..
            }) => {
                let contact = if term == 0 { self.cfg.term } else { term };
                out.push(Command::Election(ElectionInput::FollowerContact {
                    from: self.cfg.device,
                    term: contact,
                }));
                let position = AckPosition { term, sequence: up_to_sequence, last_term };
                self.record(position, last_hash, None, &mut out);
            }
            Some(other) => self.other_answer(other, "NewEntries", &mut out),
            None => {}
        }
        if self.left {
            return out;
        }
        // With two outstanding, a range whose window ended meanwhile goes with this answer.
        if let Some(a) = self.window.on_answer(now).or_else(|| self.window.on_deadline(now)) {
            out.push(self.notify(a));
        }
        out
    }

    /// The leader's election beats: heartbeat the follower, with the commit sequence.
    pub fn on_heartbeat_tick(&mut self) -> Vec<Command> {
        if self.left {
            return Vec::new();
        }
        vec![Command::Heartbeat { commit_sequence: self.view.commit_sequence }]
    }

    /// The follower answered a heartbeat with `reply`: its `Heartbeat` is its position and the
    /// feature version it supports; anything else is ignored.
    pub fn on_heartbeat_answer(&mut self, reply: SyncMessage) -> Vec<Command> {
        let mut out = Vec::new();
        if self.left {
            return out;
        }
        match reply {
            SyncMessage::Heartbeat {
                current_sequence,
                term,
                last_term,
                features,
                last_hash,
                ..
            } => {
                out.push(Command::Election(ElectionInput::FollowerContact {
                    from: self.cfg.device,
                    term,
                }));
                let position = AckPosition { term, sequence: current_sequence, last_term };
                self.record(position, last_hash, Some(features), &mut out);
            }
            other => self.other_answer(other, "Heartbeat", &mut out),
        }
        out
    }

    /// Whether `reply`, the follower's answer to a heartbeat of this leader, counts for the
    /// leader lease (docs/architecture.md, "The leader lease"): a `Heartbeat` of this term,
    /// while the link has not left. What the shell reports to the election with the round's
    /// stamp.
    pub fn answers_round(&self, reply: &SyncMessage) -> bool {
        !self.left && matches!(reply, SyncMessage::Heartbeat { term, .. } if *term == self.cfg.term)
    }

    /// An answer that is not the expected one: a `StaleTerm` naming a newer term deposes this
    /// leader (the election adopts the term and steps down; found by the simulator: without
    /// it a leader that came back from a crash led its old term for good, heard by the
    /// devices still in it, refused by those that had moved on, and nobody could win the
    /// next term while it kept them from timing out); anything else is logged.
    fn other_answer(&self, reply: SyncMessage, request: &str, out: &mut Vec<Command>) {
        match reply {
            SyncMessage::Error { code: ErrorCode::StaleTerm, term, .. }
                if fence(SyncRole::Leader, term, self.cfg.term).is_newer() =>
            {
                out.push(Command::Election(ElectionInput::TermSeen { term }));
            }
            other => debug!(
                device = %self.cfg.device,
                reply = other.kind(),
                request,
                "unexpected answer"
            ),
        }
    }

    /// The follower sent request `id`. The term rule first; then an Acknowledge or a
    /// Heartbeat is recorded; then the request is served. Returns exactly one `Reply` or one
    /// `Serve` for `id`.
    pub fn on_request(&mut self, id: RequestId, message: SyncMessage) -> Vec<Command> {
        let (library_id, term) = (self.cfg.library_id, self.cfg.term);
        let verdict = match &message {
            SyncMessage::FetchEntries { term: their, .. }
            | SyncMessage::Heartbeat { term: their, .. } => {
                Some((*their, fence(SyncRole::Leader, *their, term)))
            }
            SyncMessage::Acknowledge { term: their, .. } => {
                Some((*their, fence_acknowledgement(*their, term)))
            }
            _ => None,
        };
        match verdict {
            // The follower knows a newer term: this device does not lead it (the election
            // adopts it and steps down).
            Some((their, Verdict::Newer { .. })) => {
                return vec![
                    Command::Election(ElectionInput::TermSeen { term: their }),
                    Command::Reply { to: id, message: not_leader_of(library_id, their, term) },
                ];
            }
            Some((their, Verdict::Stale)) => {
                let message =
                    stale_term(library_id, message.kind(), their, term, self.cfg.leader_device);
                return vec![Command::Reply { to: id, message }];
            }
            Some((_, Verdict::Current)) | None => {}
        }
        let mut out = Vec::new();
        match &message {
            SyncMessage::Acknowledge { up_to_sequence, term, last_term, last_hash, .. } => {
                let position =
                    AckPosition { term: *term, sequence: *up_to_sequence, last_term: *last_term };
                self.record(position, *last_hash, None, &mut out);
            }
            SyncMessage::Heartbeat {
                term,
                current_sequence,
                last_term,
                features,
                last_hash,
                ..
            } => {
                let position =
                    AckPosition { term: *term, sequence: *current_sequence, last_term: *last_term };
                self.record(position, *last_hash, Some(*features), &mut out);
            }
            _ => {}
        }
        out.push(Command::Serve { to: id, request: message });
        out
    }

    /// The log answered request `id` with `response`: the reply, capped for a leaving member
    /// (nothing after its removal).
    pub fn on_served(&mut self, id: RequestId, response: SyncMessage) -> Vec<Command> {
        vec![Command::Reply { to: id, message: cap_at(response, self.leaving_cap()) }]
    }

    /// The connection to the follower came up (`true`) or went down: an event when it changed.
    pub fn on_connection(&mut self, up: bool) -> Vec<Command> {
        if up == self.connected || self.left {
            return Vec::new();
        }
        self.connected = up;
        let (library_id, device_id) = (self.cfg.library_id, self.cfg.device);
        vec![Command::Event(if up {
            SyncEvent::FollowerConnected { library_id, device_id }
        } else {
            SyncEvent::FollowerLost { library_id, device_id }
        })]
    }

    /// The member was removed by the configuration entry at `sequence`: from now on nothing
    /// after it is announced, carried or served; the link leaves once the follower holds it
    /// (at once if it does already) or after [`LEAVING_GRACE`]. Only the first call counts.
    pub fn on_leaving(&mut self, sequence: u64, now: Instant) -> Vec<Command> {
        let mut out = Vec::new();
        if self.left || self.leaving.is_some() {
            return out;
        }
        self.leaving = Some(Leaving { cap: sequence, deadline: now.checked_add(LEAVING_GRACE) });
        if self.acked >= sequence {
            self.leave(&mut out);
        }
        out
    }

    /// A position the follower reported in this leader's term (or, from a version-1 follower,
    /// without a term): it is the follower's position now — also when lower than before (it
    /// rebuilt its log) — and goes to the leader's core with the chain hash the follower named
    /// (`hash`), which decides whether it counts toward the commit sequence.
    fn record(
        &mut self,
        position: AckPosition,
        hash: Option<ChainHash>,
        features: Option<u32>,
        out: &mut Vec<Command>,
    ) {
        if self.left {
            return;
        }
        let term = self.cfg.term;
        if fence_acknowledgement(position.term, term) != Verdict::Current {
            return;
        }
        // Checked before anything is recorded: a follower cannot hold more than the leader
        // (storage answers such an acknowledgement BadRequest).
        if self.view.last_sequence.is_some_and(|last| position.sequence > last) {
            debug!(device = %self.cfg.device, sequence = position.sequence,
                "position beyond the leader's last sequence not recorded");
            return;
        }
        let progress = Command::Progress(FollowerProgress {
            device: self.cfg.device,
            ack: position,
            hash,
            features,
        });
        if self.leaving_cap().is_some_and(|cap| position.sequence >= cap) {
            debug!(device = %self.cfg.device, "the removed member holds its removal");
            out.push(progress);
            self.leave(out);
            return;
        }
        self.acked = position.sequence;
        out.push(progress);
    }

    /// The leaving member is done: [`Command::Left`], once.
    fn leave(&mut self, out: &mut Vec<Command>) {
        if !self.left {
            self.left = true;
            out.push(Command::Left);
        }
    }

    /// The announcement of `a`, with its entries when the link holds exactly them (and, for a
    /// leaving member, none after its removal).
    fn notify(&mut self, a: Announce) -> Command {
        let carried = self.inline.take_for(&a);
        let within_cap = self.leaving_cap().is_none_or(|cap| a.to_sequence <= cap);
        let (prev_term, prev_hash, entries) = carried.filter(|_| within_cap).unwrap_or_default();
        Command::Notify {
            from: a.from_sequence,
            to: a.to_sequence,
            prev_term,
            prev_hash,
            entries,
            commit_sequence: self.view.commit_sequence,
        }
    }
}

/// A removed member (see [`FollowerLink::on_leaving`]) is served nothing after the entry
/// that removes it, `cap`.
pub(crate) fn cap_at(response: SyncMessage, cap: Option<u64>) -> SyncMessage {
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
