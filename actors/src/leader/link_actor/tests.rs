//! Actor-level tests of the link actor: the link's rules through real storage, a log cache, a
//! scripted transport and paused time (the machine's own tests are in `link/tests.rs`).

use lsync_protocol::{ErrorCode, SyncRole};
use tokio::sync::oneshot;

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::leader::messages::FollowerProgress;
use crate::testkit::{entry, leader_db, link_context, ScriptedTransport};
use crate::window::Announce;

async fn ask(link: &Addr<LinkActor>, message: SyncMessage) -> SyncMessage {
    let (reply, rx) = oneshot::channel();
    link.send(InboundRequest { peer: PeerId::random(), message, reply }).await.unwrap();
    rx.await.unwrap()
}

/// Records every position a link actor hands to the leader's core.
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

/// A link actor in term 3 over a leader log of `n` entries of term 1, whose positions are
/// recorded.
fn recorded_link(
    n: u64,
) -> (tempfile::TempDir, Uuid, Addr<LinkActor>, Arc<std::sync::Mutex<Vec<FollowerProgress>>>) {
    let dir = tempfile::tempdir().unwrap();
    let lib = Uuid::new_v4();
    let (db, _tm) = leader_db(&dir, lib, n);
    let recorded = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut cx =
        link_context(lib, db, ScriptedTransport::new(|_, _| Err(crate::NetworkError::Closed)));
    cx.term = 3;
    cx.progress = Some(Positions(recorded.clone()).start().recipient());
    cx.leader.last_sequence.store(n, std::sync::atomic::Ordering::Release);
    let link = LinkActor::new(cx, Uuid::new_v4(), PeerId::random()).start();
    (dir, lib, link, recorded)
}

#[actix_rt::test]
async fn requests_of_an_older_term_are_refused_with_this_term() {
    let (_dir, lib, link, recorded) = recorded_link(10);
    let fetch = SyncMessage::FetchEntries {
        library_id: lib,
        term: 2,
        since_sequence: 0,
        since_term: 0,
        limit: 10,
        since_hash: None,
    };
    let heartbeat = SyncMessage::Heartbeat {
        library_id: lib,
        term: 0,
        current_sequence: 0,
        last_term: 0,
        role: SyncRole::Follower,
        commit_sequence: 0,
        features: 2,
        last_hash: None,
    };
    let ack = SyncMessage::Acknowledge {
        library_id: lib,
        up_to_sequence: 5,
        term: 1,
        last_term: 1,
        last_hash: None,
    };
    for request in [fetch, heartbeat, ack] {
        let kind = request.kind();
        match ask(&link, request).await {
            SyncMessage::Error { code: ErrorCode::StaleTerm, term: 3, .. } => {}
            other => panic!("{kind}: expected StaleTerm carrying term 3, got {other:?}"),
        }
    }
    assert!(recorded.lock().unwrap().is_empty(), "no stale position was recorded");
}

#[actix_rt::test]
async fn an_acknowledgement_beyond_the_last_sequence_is_refused_and_not_counted() {
    let (_dir, lib, link, recorded) = recorded_link(10);
    let ack = |up_to, term, last_term| SyncMessage::Acknowledge {
        library_id: lib,
        up_to_sequence: up_to,
        term,
        last_term,
        last_hash: None,
    };
    let refused = ask(&link, ack(11, 3, 1)).await;
    assert!(
        matches!(refused, SyncMessage::Error { code: ErrorCode::BadRequest, .. }),
        "{refused:?}"
    );
    assert!(recorded.lock().unwrap().is_empty(), "checked before it is recorded");
    let st = link.send(ObserveLink { leader_last_sequence: 10 }).await.unwrap();
    assert_eq!(st.acked_sequence, 0, "not recorded for the lag either");
    let answered = ask(&link, ack(7, 3, 1)).await;
    assert!(
        matches!(answered, SyncMessage::Heartbeat { current_sequence: 10, .. }),
        "{answered:?}"
    );
    let positions: Vec<u64> = recorded.lock().unwrap().iter().map(|p| p.ack.sequence).collect();
    assert!(positions.ends_with(&[7]), "{positions:?}");
    // A lower position is believed (the follower rebuilt its log).
    ask(&link, ack(2, 3, 1)).await;
    let st = link.send(ObserveLink { leader_last_sequence: 10 }).await.unwrap();
    assert_eq!(st.acked_sequence, 2);
}

#[actix_rt::test]
async fn a_removed_member_is_served_nothing_after_its_removal() {
    let (_dir, lib, link, _recorded) = recorded_link(250);
    link.send(Leaving { sequence: 150 }).await.unwrap();
    let fetch = |since| SyncMessage::FetchEntries {
        library_id: lib,
        term: 3,
        since_sequence: since,
        since_term: u64::from(since > 0),
        limit: 100,
        since_hash: None,
    };
    match ask(&link, fetch(100)).await {
        SyncMessage::EntriesResponse { entries, has_more, leader_last_sequence, .. } => {
            assert_eq!(entries.last().map(|e| e.sequence), Some(150));
            assert!(!has_more);
            assert_eq!(leader_last_sequence, 150, "nothing of the log after the removal");
        }
        other => panic!("unexpected {other:?}"),
    }
    match ask(&link, fetch(150)).await {
        SyncMessage::EntriesResponse { entries, .. } => assert!(entries.is_empty()),
        other => panic!("unexpected {other:?}"),
    }
}

#[actix_rt::test]
async fn fetch_is_capped_at_one_hundred_entries_whatever_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let lib = Uuid::new_v4();
    let (db, _tm) = leader_db(&dir, lib, 250);
    let cx = link_context(lib, db, ScriptedTransport::new(|_, _| Err(crate::NetworkError::Closed)));
    let link = LinkActor::new(cx, Uuid::new_v4(), PeerId::random()).start();
    let fetch = |since, since_term, limit| SyncMessage::FetchEntries {
        library_id: lib,
        term: 1,
        since_sequence: since,
        since_term,
        limit,
        since_hash: None,
    };
    for limit in [101, 1_000, 1_000_000_000, u64::MAX] {
        match ask(&link, fetch(0, 0, limit)).await {
            SyncMessage::EntriesResponse { entries, has_more, leader_last_sequence, .. } => {
                assert_eq!(entries.len(), 100, "limit {limit}");
                assert_eq!(entries[0].sequence, 1);
                assert!(has_more);
                assert_eq!(leader_last_sequence, 250);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    match ask(&link, fetch(200, 1, 100)).await {
        SyncMessage::EntriesResponse { entries, has_more, .. } => {
            assert_eq!(
                entries.iter().map(|e| e.sequence).collect::<Vec<_>>(),
                (201..=250).collect::<Vec<_>>()
            );
            assert!(!has_more, "the last page says so");
        }
        other => panic!("unexpected {other:?}"),
    }
    let small = ask(&link, fetch(0, 0, 7)).await;
    assert!(
        matches!(small, SyncMessage::EntriesResponse { ref entries, .. } if entries.len() == 7)
    );
    let zero = ask(&link, fetch(0, 0, 0)).await;
    assert!(matches!(zero, SyncMessage::Error { code: ErrorCode::BadRequest, .. }), "{zero:?}");
    // the follower's acknowledgement is recorded and answered with the leader's heartbeat
    let ack = ask(
        &link,
        SyncMessage::Acknowledge {
            last_term: 0,
            term: 0,
            library_id: lib,
            up_to_sequence: 120,
            last_hash: None,
        },
    )
    .await;
    assert!(matches!(
        ack,
        SyncMessage::Heartbeat { current_sequence: 250, role: SyncRole::Leader, .. }
    ));
    let st = link.send(ObserveLink { leader_last_sequence: 250 }).await.unwrap();
    assert_eq!((st.acked_sequence, st.lag), (120, 130));
}

#[actix_rt::test]
async fn followers_fetching_the_same_block_share_one_storage_read() {
    use lsync_storage::{models::Tag, Change};
    let dir = tempfile::tempdir().unwrap();
    let lib = Uuid::new_v4();
    let (db, tm) = leader_db(&dir, lib, 250);
    let cx = link_context(lib, db, ScriptedTransport::new(|_, _| Err(crate::NetworkError::Closed)));
    let (metrics, cache) = (cx.metrics.clone(), cx.cache.clone());
    cache.set_readers(3); // two link actors here, and a third follower that never fetches
    let a = LinkActor::new(cx.clone(), Uuid::new_v4(), PeerId::random()).start();
    let b = LinkActor::new(cx, Uuid::new_v4(), PeerId::random()).start();
    let fetch = |since, since_term| SyncMessage::FetchEntries {
        library_id: lib,
        term: 1,
        since_sequence: since,
        since_term,
        limit: 100,
        since_hash: None,
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
        if let SyncMessage::NewEntries { from_sequence, to_sequence, library_id, entries, .. } = msg
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
                            last_hash: None,
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

fn link_with(follower: Arc<SlowFollower>, lib: Uuid) -> (tempfile::TempDir, Addr<LinkActor>) {
    let dir = tempfile::tempdir().unwrap();
    let (db, _tm) = leader_db(&dir, lib, 0);
    let cx = link_context(lib, db, follower);
    (dir, LinkActor::new(cx, Uuid::new_v4(), PeerId::random()).start())
}

fn announce(i: u64) -> NewCommit {
    NewCommit {
        range: Announce { from_sequence: i, to_sequence: i, term: 1 },
        prev_term: 0,
        prev_hash: None,
        entries: None,
    }
}

#[actix_rt::test]
async fn the_first_commit_goes_at_once_and_a_burst_goes_as_one_more_when_the_follower_answers() {
    tokio::time::pause();
    let lib = Uuid::new_v4();
    let follower = Arc::new(SlowFollower {
        delay: Some(Duration::from_millis(30)),
        sent: Default::default(),
        carried: Default::default(),
        t0: tokio::time::Instant::now(),
    });
    let (_dir, link) = link_with(follower.clone(), lib);
    link.send(announce(1)).await.unwrap();
    settle().await;
    assert_eq!(*follower.sent.lock().unwrap(), vec![(Duration::ZERO, 1, 1)], "at once");
    for i in 2..=40 {
        link.send(announce(i)).await.unwrap();
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
    let st = link.send(ObserveLink { leader_last_sequence: 40 }).await.unwrap();
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
    let (_dir, link) = link_with(follower.clone(), lib);
    link.send(announce(1)).await.unwrap();
    tokio::time::advance(Duration::from_millis(10)).await;
    link.send(announce(2)).await.unwrap();
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
        prev_hash: None,
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
    let (_dir, link) = link_with(follower.clone(), lib);
    let answered = || async {
        tokio::time::advance(Duration::from_millis(32)).await;
        settle().await;
    };
    // A lone commit: at once, with its entry.
    link.send(commit(1, 1, Some(10))).await.unwrap();
    settle().await;
    // Commits while it is outstanding: merged, and their entries with them.
    link.send(commit(2, 3, Some(10))).await.unwrap();
    link.send(commit(4, 4, Some(10))).await.unwrap();
    answered().await;
    // A commit that came without entries (too large for the event) spoils the merged run.
    link.send(commit(5, 5, Some(10))).await.unwrap();
    link.send(commit(6, 6, None)).await.unwrap();
    answered().await;
    // More than max_entries_per_response (100) entries merged: none are carried.
    link.send(commit(7, 7, Some(10))).await.unwrap();
    link.send(commit(8, 60, Some(10))).await.unwrap();
    link.send(commit(61, 120, Some(10))).await.unwrap();
    answered().await;
    // More than max_response_bytes of data: none either.
    link.send(commit(121, 121, Some(10))).await.unwrap();
    link.send(commit(122, 122, Some(5 << 20))).await.unwrap();
    link.send(commit(123, 123, Some(5 << 20))).await.unwrap();
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
