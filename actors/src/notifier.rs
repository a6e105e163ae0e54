//! LeaderNotifier — on the leader, one per library.
//!
//! Receives: commit events of the library's TransactionManager (forwarded from its broadcast
//! channel with backpressure), and the set of follower sessions ([`SetSessions`]).
//! Emits: [`Announce`] to every follower session — at once for the first commit after a quiet
//! period, and once more at the end of the window for the commits made within it
//! (see [`NotifyWindow`]).

use std::time::Duration;

use actix::prelude::*;
use lsync_storage::CommitEvent;
use tokio::sync::broadcast;
use tracing::debug;

use crate::window::{Announce, NotifyWindow};

impl Message for Announce {
    type Result = ();
}

/// Replaces the sessions the notifier announces to.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetSessions(pub Vec<Recipient<Announce>>);

/// A commit happened (sent by the forwarding task).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Committed(pub CommitEvent);

/// Turns commit events into announcements.
pub struct LeaderNotifier {
    window: NotifyWindow,
    sessions: Vec<Recipient<Announce>>,
    commits: Option<broadcast::Receiver<CommitEvent>>,
    deadline_armed: bool,
}

impl LeaderNotifier {
    /// A notifier reading `commits`, coalescing within `window`.
    pub fn new(commits: broadcast::Receiver<CommitEvent>, window: Duration) -> Self {
        Self {
            window: NotifyWindow::new(window),
            sessions: Vec::new(),
            commits: Some(commits),
            deadline_armed: false,
        }
    }

    fn now() -> std::time::Instant {
        tokio::time::Instant::now().into_std()
    }

    fn announce(&self, a: Announce) {
        debug!(
            from = a.from_sequence,
            to = a.to_sequence,
            sessions = self.sessions.len(),
            "announcing new entries"
        );
        for s in &self.sessions {
            // Sessions coalesce announcements themselves; a full mailbox only drops a
            // notification the session would have merged anyway.
            let _ = s.try_send(a);
        }
    }

    fn arm_deadline(&mut self, ctx: &mut Context<Self>) {
        if self.deadline_armed {
            return;
        }
        if let Some(deadline) = self.window.deadline() {
            self.deadline_armed = true;
            let delay = deadline.saturating_duration_since(Self::now());
            ctx.run_later(delay, |this, ctx| {
                this.deadline_armed = false;
                if let Some(a) = this.window.on_deadline(Self::now()) {
                    this.announce(a);
                }
                this.arm_deadline(ctx);
            });
        }
    }
}

impl Actor for LeaderNotifier {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
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
        let range = Announce {
            from_sequence: ev.first_sequence,
            to_sequence: ev.last_sequence,
            term: ev.term,
        };
        if let Some(a) = self.window.on_commit(Self::now(), range) {
            self.announce(a);
        }
        self.arm_deadline(ctx);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use uuid::Uuid;

    use super::*;

    struct Recorder(Arc<Mutex<Vec<Announce>>>);
    impl Actor for Recorder {
        type Context = Context<Self>;
    }
    impl Handler<Announce> for Recorder {
        type Result = ();
        fn handle(&mut self, msg: Announce, _: &mut Context<Self>) {
            self.0.lock().unwrap().push(msg);
        }
    }

    fn ev(first: u64, last: u64) -> CommitEvent {
        CommitEvent { library_id: Uuid::nil(), term: 1, first_sequence: first, last_sequence: last }
    }

    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    #[actix_rt::test]
    async fn first_commit_at_once_then_burst_coalesced() {
        tokio::time::pause();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let rec = Recorder(seen.clone()).start();
        let (tx, rx) = broadcast::channel(64);
        let notifier = LeaderNotifier::new(rx, Duration::from_millis(100)).start();
        notifier.send(SetSessions(vec![rec.recipient()])).await.unwrap();

        tx.send(ev(1, 1)).unwrap();
        settle().await;
        assert_eq!(
            *seen.lock().unwrap(),
            vec![Announce { from_sequence: 1, to_sequence: 1, term: 1 }],
            "the first commit is announced without waiting for the window"
        );

        for i in 2..=40 {
            tx.send(ev(i, i)).unwrap();
        }
        settle().await;
        tokio::time::advance(Duration::from_millis(50)).await;
        settle().await;
        assert_eq!(seen.lock().unwrap().len(), 1, "commits inside the window wait for its end");

        tokio::time::advance(Duration::from_millis(60)).await;
        settle().await;
        assert_eq!(
            seen.lock().unwrap()[1..],
            [Announce { from_sequence: 2, to_sequence: 40, term: 1 }],
            "the burst becomes exactly one more announcement"
        );

        // quiet afterwards: nothing else is announced
        tokio::time::advance(Duration::from_millis(500)).await;
        settle().await;
        assert_eq!(seen.lock().unwrap().len(), 2);
    }
}
