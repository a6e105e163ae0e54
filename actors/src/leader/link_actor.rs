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
use std::time::{Duration, Instant};

use actix::prelude::*;
use libp2p::PeerId;
use lsync_protocol::SyncMessage;
use tokio::sync::oneshot;
use tracing::{debug, warn};
use uuid::Uuid;

use super::context::LinkContext;
pub use super::link::LEAVING_GRACE;
use super::link::{new_entries, Command, FollowerLink, LeaderView, RequestId};
use super::messages::NewCommit;
use super::serve::{leader_heartbeat, serve, serve_cached, storage_failure};
use crate::blocking::run_blocking;
use crate::events::FollowerStatus;
use crate::limits::MAILBOX_CAPACITY;
use crate::messages::{HeartbeatNow, LeaseAnswer, LinkLeft};
use crate::metrics::Metrics;
use crate::network::InboundRequest;
use crate::task::{spawn_supervised, Task};

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

/// The follower answered the heartbeat of the round stamped `.1`.
#[derive(Message)]
#[rtype(result = "()")]
struct HeartbeatAnswered(SyncMessage, Duration);

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
    /// The stamp of the last heartbeat round (the election's lease clock), sent back with
    /// the follower's answer.
    round: Duration,
}

impl LinkActor {
    /// A link actor for `device_id` reachable as `peer`.
    pub fn new(cx: LinkContext, device_id: Uuid, peer: PeerId) -> Self {
        let link = FollowerLink::new(cx.link_config(device_id, peer));
        Self {
            cx,
            device_id,
            peer,
            link,
            replies: HashMap::new(),
            next_request: 0,
            timer: None,
            round: Duration::ZERO,
        }
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
            Command::Notify { from, to, prev_term, prev_hash, entries, commit_sequence } => {
                let (library_id, term) = (self.cx.library_id, self.cx.term);
                let msg = new_entries(
                    library_id,
                    term,
                    from,
                    to,
                    prev_term,
                    prev_hash,
                    entries,
                    commit_sequence,
                );
                let fut = self.cx.transport.request(self.peer, msg);
                let (me, peer) = (ctx.address(), self.peer);
                // The link waits for this answer: a task that panicked is a notification not
                // delivered.
                spawn_supervised(Task::Notify, self.cx.metrics.clone(), fut, move |r| {
                    let reply = match r {
                        Ok(Ok(reply)) => Some(reply),
                        Ok(Err(e)) => {
                            debug!(%peer, error = %e, "notification not delivered");
                            None
                        }
                        Err(_) => None,
                    };
                    me.do_send(NotifyDone(reply));
                });
            }
            Command::Heartbeat { commit_sequence } => {
                let (db, cx, peer, me) =
                    (self.cx.db.clone(), self.cx.clone(), self.peer, ctx.address());
                let round = self.round;
                let metrics = cx.metrics.clone();
                let heartbeat = async move {
                    let Ok(head) = run_blocking(move || db.head()).await else { return };
                    let msg = leader_heartbeat(
                        cx.library_id,
                        cx.term,
                        head.position,
                        Some(head.hash),
                        commit_sequence,
                    );
                    match cx.transport.request(peer, msg).await {
                        Ok(reply) => me.do_send(HeartbeatAnswered(reply, round)),
                        Err(e) => debug!(%peer, error = %e, "heartbeat not delivered"),
                    }
                };
                // Nothing waits for a heartbeat's task: the next goes at the next interval.
                spawn_supervised(Task::Heartbeat, metrics, heartbeat, |_| {});
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
        let (library_id, metrics) = (cx.library_id, cx.metrics.clone());
        let serving = async move {
            let kind = request.kind();
            let db = cx.db.clone();
            let response =
                run_blocking(move || serve(&db, &cx, request)).await.unwrap_or_else(|e| {
                    warn!(%peer, %library_id, request = kind, error = %e, "serving request failed");
                    storage_failure(library_id, &e)
                });
            match me.send(Served { id, response: response.clone() }).await {
                Ok(Some(message)) => message,
                _ => super::link::cap_at(response, cap),
            }
        };
        // The follower waits for the answer: a task that panicked answers `Error(Internal)`.
        spawn_supervised(Task::Serve, metrics, serving, move |r| {
            let message = r.unwrap_or_else(|e| {
                SyncMessage::error(library_id, lsync_protocol::ErrorCode::Internal, e.to_string())
            });
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
        self.cx.note_commit(&commit, self.link.leaving_cap());
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
    fn handle(&mut self, msg: HeartbeatNow, ctx: &mut Context<Self>) {
        self.round = msg.sent_at;
        self.step(ctx, |link, _| link.on_heartbeat_tick());
    }
}

impl Handler<HeartbeatAnswered> for LinkActor {
    type Result = ();
    fn handle(&mut self, msg: HeartbeatAnswered, ctx: &mut Context<Self>) {
        if self.link.answers_round(&msg.0) {
            if let Some(lease) = &self.cx.lease {
                let term = self.cx.term;
                lease.do_send(LeaseAnswer { from: self.device_id, term, sent_at: msg.1 });
            }
        }
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
