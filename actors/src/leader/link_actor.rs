//! LinkActor — on the leader, one per follower device of a library: the actor shell of
//! the pure [`FollowerLink`] (what is decided for the follower lives there: notifications,
//! inline entries, the term rule, positions, leaving, heartbeats).
//!
//! Receives: [`NewCommit`] from the LeaderActor, the follower's inbound requests
//! (FetchEntries, Acknowledge, Heartbeat) routed by the SyncService, [`HeartbeatNow`],
//! [`Connection`] changes, [`Leaving`], [`ObserveLink`].
//! Emits: NewEntries and Heartbeat requests to the follower; responses to its requests (read
//! with [`serve_cached`] on this thread or [`serve`] on the blocking pool); the follower's
//! positions to the leader's core; terms seen to the election; FollowerConnected /
//! FollowerLost events; [`LinkLeft`].
//!
//! It owns the I/O only: the transport, storage reads (the leader's last position for a
//! heartbeat, served requests), the one timer armed at [`FollowerLink::next_deadline`], and
//! the reply channels of requests being served. Memory per follower is the link's (bounded,
//! see [`crate::leader::link`]) plus one reply channel per request in flight.

use std::collections::HashMap;
use std::time::Instant;

use actix::prelude::*;
use libp2p::PeerId;
use lsync_protocol::{ErrorCode, SyncMessage, SyncRole};
use tokio::sync::oneshot;
use tracing::{debug, warn};
use uuid::Uuid;

use super::context::LinkContext;
pub use super::link::LEAVING_GRACE;
use super::link::{Command, FollowerLink, LeaderView, LinkConfig, RequestId};
use super::messages::NewCommit;
use super::serve::{serve, serve_cached};
use crate::blocking::run_blocking;
use crate::events::FollowerStatus;
use crate::limits::MAILBOX_CAPACITY;
use crate::messages::{HeartbeatNow, LinkLeft};
use crate::metrics::Metrics;
use crate::network::InboundRequest;

#[cfg(test)]
mod tests;

/// The member of this link actor was removed by the configuration entry at `sequence`: deliver
/// the log up to that entry — nothing after it — until the member holds it or
/// [`LEAVING_GRACE`] passes, then report [`LinkLeft`] and stop.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct Leaving {
    pub sequence: u64,
}

/// The connection to the follower came up or went down.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Connection(pub bool);

/// Reads the link's view of its follower: the link actor's one observe call.
#[derive(Message)]
#[rtype(result = "FollowerStatus")]
pub struct ObserveLink {
    /// The leader's last sequence, to compute the lag.
    pub leader_last_sequence: u64,
}

/// A `NewEntries` was answered (`None`: not delivered).
#[derive(Message)]
#[rtype(result = "()")]
struct NotifyDone(Option<SyncMessage>);

/// The follower answered a heartbeat.
#[derive(Message)]
#[rtype(result = "()")]
struct HeartbeatAnswered(SyncMessage);

/// Storage answered a request being served; the reply the link makes of it comes back.
#[derive(Message)]
#[rtype(result = "Option<SyncMessage>")]
struct Served {
    id: RequestId,
    response: SyncMessage,
}

/// One follower, seen from the leader.
pub struct LinkActor {
    cx: LinkContext,
    device_id: Uuid,
    peer: PeerId,
    link: FollowerLink,
    /// Reply channels of requests the link has not answered yet.
    replies: HashMap<RequestId, oneshot::Sender<SyncMessage>>,
    next_request: RequestId,
    /// The timer armed for the link's next deadline, and that deadline.
    timer: Option<(SpawnHandle, Instant)>,
}

impl LinkActor {
    /// A link actor for `device_id` reachable as `peer`.
    pub fn new(cx: LinkContext, device_id: Uuid, peer: PeerId) -> Self {
        let link = FollowerLink::new(LinkConfig {
            library_id: cx.library_id,
            device: device_id,
            peer,
            term: cx.term,
            leader_device: cx.leader_device,
            max_entries_per_response: cx.max_entries_per_response,
            max_response_bytes: cx.max_response_bytes,
            notify_window: cx.notify_window,
        });
        Self { cx, device_id, peer, link, replies: HashMap::new(), next_request: 0, timer: None }
    }

    fn now() -> Instant {
        tokio::time::Instant::now().into_std()
    }

    /// Runs one input through the link with the leadership as it is now, performs what it
    /// returns and re-arms the timer.
    fn step(
        &mut self,
        ctx: &mut Context<Self>,
        input: impl FnOnce(&mut FollowerLink, Instant) -> Vec<Command>,
    ) {
        self.link.set_leader_view(LeaderView {
            commit_sequence: self.cx.leader.commit_sequence(),
            // Without a leader's core (tests of the announcement path) nothing keeps it.
            last_sequence: self.cx.progress.is_some().then(|| self.cx.leader.last_sequence()),
        });
        let commands = input(&mut self.link, Self::now());
        for command in commands {
            self.perform(command, ctx);
        }
        self.arm(ctx);
    }

    /// Keeps one timer armed at the link's next deadline.
    fn arm(&mut self, ctx: &mut Context<Self>) {
        let next = self.link.next_deadline();
        if self.timer.map(|(_, at)| at) == next {
            return;
        }
        if let Some((handle, _)) = self.timer.take() {
            ctx.cancel_future(handle);
        }
        if let Some(at) = next {
            let handle = ctx.run_later(at.saturating_duration_since(Self::now()), |this, ctx| {
                this.timer = None;
                this.step(ctx, |link, now| link.tick(now));
            });
            self.timer = Some((handle, at));
        }
    }

    fn perform(&mut self, command: Command, ctx: &mut Context<Self>) {
        match command {
            Command::Notify { from, to, prev_term, entries, commit_sequence } => {
                let msg = SyncMessage::NewEntries {
                    commit_sequence,
                    library_id: self.cx.library_id,
                    term: self.cx.term,
                    from_sequence: from,
                    to_sequence: to,
                    entry_count: to.saturating_sub(from).saturating_add(1),
                    prev_term,
                    entries,
                    prev_hash: None,
                };
                let fut = self.cx.transport.request(self.peer, msg);
                let (me, peer) = (ctx.address(), self.peer);
                actix_rt::spawn(async move {
                    let reply = match fut.await {
                        Ok(reply) => Some(reply),
                        Err(e) => {
                            debug!(%peer, error = %e, "notification not delivered");
                            None
                        }
                    };
                    me.do_send(NotifyDone(reply));
                });
            }
            Command::Heartbeat { commit_sequence } => {
                let (db, cx, peer, me) =
                    (self.cx.db.clone(), self.cx.clone(), self.peer, ctx.address());
                actix_rt::spawn(async move {
                    let Ok(pos) = run_blocking(move || db.last_position()).await else { return };
                    let msg = SyncMessage::Heartbeat {
                        commit_sequence,
                        features: lsync_protocol::FEATURE_VERSION,
                        library_id: cx.library_id,
                        term: cx.term,
                        current_sequence: pos.sequence,
                        last_term: pos.term,
                        role: SyncRole::Leader,
                        last_hash: None,
                    };
                    match cx.transport.request(peer, msg).await {
                        Ok(reply) => me.do_send(HeartbeatAnswered(reply)),
                        Err(e) => debug!(%peer, error = %e, "heartbeat not delivered"),
                    }
                });
            }
            Command::Reply { to, message } => {
                if let Some(reply) = self.replies.remove(&to) {
                    let _ = reply.send(message);
                }
            }
            Command::Serve { to, request } => self.serve(to, request, ctx),
            Command::Progress(p) => {
                if let Some(progress) = &self.cx.progress {
                    progress.do_send(p);
                }
            }
            Command::Election(input) => {
                if let Some(election) = &self.cx.election {
                    election.do_send(input);
                }
            }
            Command::Event(event) => {
                let _ = self.cx.events.send(event);
            }
            Command::Left => {
                if let Some(left) = &self.cx.left {
                    left.do_send(LinkLeft { device: self.device_id, peer: self.peer });
                }
                ctx.stop();
            }
        }
    }

    /// Answers request `id` from the log cache on this thread when it can, else from storage on
    /// the blocking pool; the answer goes through the link ([`FollowerLink::on_served`]).
    fn serve(&mut self, id: RequestId, request: SyncMessage, ctx: &mut Context<Self>) {
        if let Some(response) = serve_cached(&self.cx, &request) {
            Metrics::add(&self.cx.metrics.fetches_served_cached, 1);
            for command in self.link.on_served(id, response) {
                self.perform(command, ctx);
            }
            return;
        }
        let Some(reply) = self.replies.remove(&id) else { return };
        let (cx, peer, me) = (self.cx.clone(), self.peer, ctx.address());
        // If the link actor stopped meanwhile (its member left), the cap it had still applies.
        let cap = self.link.leaving_cap();
        actix_rt::spawn(async move {
            let library_id = cx.library_id;
            let kind = request.kind();
            let db = cx.db.clone();
            let response =
                run_blocking(move || serve(&db, &cx, request)).await.unwrap_or_else(|e| {
                    warn!(%peer, %library_id, request = kind, error = %e, "serving request failed");
                    SyncMessage::error(
                        library_id,
                        ErrorCode::Internal,
                        format!("storage error: {e}"),
                    )
                });
            let message = match me.send(Served { id, response: response.clone() }).await {
                Ok(Some(message)) => message,
                _ => super::link::cap_at(response, cap),
            };
            let _ = reply.send(message);
        });
    }
}

impl Actor for LinkActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // No heartbeat timer of its own: the leader's election heartbeats (HeartbeatNow, every
        // heartbeat interval) drive this link actor's heartbeats, so a follower hears exactly one
        // per interval.
        ctx.set_mailbox_capacity(MAILBOX_CAPACITY);
    }
}

impl Handler<NewCommit> for LinkActor {
    type Result = ();
    fn handle(&mut self, commit: NewCommit, ctx: &mut Context<Self>) {
        // The highest committed sequence this link actor knows of (for a leaving member: up to
        // its removal), for the log cache's `has_more`.
        let cap = self.link.leaving_cap().unwrap_or(u64::MAX);
        if commit.range.from_sequence <= cap {
            self.cx.cache.note_last(commit.range.to_sequence.min(cap));
        }
        self.step(ctx, |link, now| link.on_commit(commit, now));
    }
}

impl Handler<NotifyDone> for LinkActor {
    type Result = ();
    fn handle(&mut self, msg: NotifyDone, ctx: &mut Context<Self>) {
        self.step(ctx, |link, now| link.on_notify_answer(msg.0, now));
    }
}

impl Handler<HeartbeatNow> for LinkActor {
    type Result = ();
    fn handle(&mut self, _: HeartbeatNow, ctx: &mut Context<Self>) {
        self.step(ctx, |link, _| link.on_heartbeat_tick());
    }
}

impl Handler<HeartbeatAnswered> for LinkActor {
    type Result = ();
    fn handle(&mut self, msg: HeartbeatAnswered, ctx: &mut Context<Self>) {
        self.step(ctx, |link, _| link.on_heartbeat_answer(msg.0));
    }
}

impl Handler<InboundRequest> for LinkActor {
    type Result = ();
    fn handle(&mut self, req: InboundRequest, ctx: &mut Context<Self>) {
        let id = self.next_request;
        self.next_request = self.next_request.wrapping_add(1);
        self.replies.insert(id, req.reply);
        self.step(ctx, |link, _| link.on_request(id, req.message));
    }
}

impl Handler<Served> for LinkActor {
    type Result = MessageResult<Served>;
    fn handle(&mut self, msg: Served, ctx: &mut Context<Self>) -> Self::Result {
        let mut answer = None;
        let commands = self.link.on_served(msg.id, msg.response);
        for command in commands {
            match command {
                Command::Reply { to, message } if to == msg.id => answer = Some(message),
                other => self.perform(other, ctx),
            }
        }
        MessageResult(answer)
    }
}

impl Handler<Connection> for LinkActor {
    type Result = ();
    fn handle(&mut self, msg: Connection, ctx: &mut Context<Self>) {
        self.step(ctx, |link, _| link.on_connection(msg.0));
    }
}

impl Handler<Leaving> for LinkActor {
    type Result = ();
    fn handle(&mut self, msg: Leaving, ctx: &mut Context<Self>) {
        self.step(ctx, |link, now| link.on_leaving(msg.sequence, now));
    }
}

impl Handler<ObserveLink> for LinkActor {
    type Result = MessageResult<ObserveLink>;
    fn handle(&mut self, msg: ObserveLink, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.link.status(msg.leader_last_sequence))
    }
}
