//! LeaderNotifier — on the leader, one per library.
//!
//! Receives: commit events of the library's TransactionManager (forwarded from its broadcast
//! channel with backpressure), and the set of follower sessions ([`SetSessions`]).
//! Emits: [`NewCommit`] (range, and the entries of a small commit) to every follower session,
//! at once. Each session decides
//! when its follower is told (see [`crate::window`]: the first commit after a quiet period at
//! once, commits made meanwhile coalesced into one more announcement).

use std::sync::Arc;

use actix::prelude::*;
use lsync_protocol::SyncLogEntry;
use lsync_storage::CommitEvent;
use tokio::sync::broadcast;
use tracing::debug;

use crate::window::Announce;

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

/// Turns commit events into announcements.
pub struct LeaderNotifier {
    sessions: Vec<Recipient<NewCommit>>,
    commits: Option<broadcast::Receiver<CommitEvent>>,
}

impl LeaderNotifier {
    /// A notifier reading `commits`.
    pub fn new(commits: broadcast::Receiver<CommitEvent>) -> Self {
        Self { sessions: Vec::new(), commits: Some(commits) }
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
    fn handle(&mut self, msg: Committed, _: &mut Context<Self>) {
        let ev = msg.0;
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
