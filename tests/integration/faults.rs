//! Faults of a whole node's files, checked against an oracle of what the test wrote (issue 16):
//! an older copy of a device's database put back (a restored backup, taken while the node ran,
//! with its WAL), and a leader that loses its last transactions. After each, every device holds
//! the same tables and log, and every write the test was answered for is in every device's log
//! exactly once — where it was answered `Committed`, at the sequence of that answer unless a
//! deposed leader's change had to be proposed again (the `local` level's promise,
//! docs/operations.md) — and nothing the test did not write is there. Also a founder restored
//! to a copy from before the others joined, which must catch up (docs/architecture.md,
//! "Restores are detected").

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use lsync::{Change, Node, Tag, WriteOutcome};
use uuid::Uuid;

use crate::fixture::{wait_until, Cluster};

fn tag(id: &str) -> Change {
    Change::insert(&Tag { id: id.into(), name: format!("written as {id}"), color: None })
}

/// What the test wrote and how each write was answered.
#[derive(Default)]
struct Oracle {
    /// Record id → the answer: `Some(sequence)` committed there, `None` queued.
    answers: BTreeMap<String, Option<u64>>,
}

impl Oracle {
    /// Writes tag `id` through `node` and records the answer (an error fails the test: no
    /// fault is on while the tests write).
    async fn write(&mut self, node: &Node, lib: Uuid, id: &str) {
        let answer = match node.write(lib, vec![tag(id)]).await {
            Ok(WriteOutcome::Committed { first_sequence, last_sequence }) => {
                assert_eq!(first_sequence, last_sequence);
                Some(last_sequence)
            }
            Ok(WriteOutcome::Queued { .. }) => None,
            Ok(pending @ WriteOutcome::Pending { .. }) => panic!("a local write: {pending:?}"),
            Err(e) => panic!("write {id}: {e}"),
        };
        assert!(self.answers.insert(id.to_owned(), answer).is_none(), "{id} written twice");
    }

    /// Writes `prefix0..prefix{n-1}`, spread over `nodes` in turn.
    async fn write_many(
        &mut self,
        cluster: &Cluster,
        lib: Uuid,
        nodes: &[usize],
        prefix: &str,
        n: usize,
    ) {
        for k in 0..n {
            let node = nodes[k % nodes.len()];
            self.write(cluster.node(node), lib, &format!("{prefix}{k}")).await;
        }
    }

    /// Asserts the oracle on node `i`: every write answered is in its log exactly once and in
    /// its tag table, nothing else is; returns the writes found at another sequence than their
    /// `Committed` answer said (the `local` level allows it when a deposed leader's change is
    /// proposed again; the caller says whether it may happen).
    fn check(&self, cluster: &Cluster, i: usize, lib: Uuid) -> BTreeSet<String> {
        let mut seen: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for e in cluster.data_entries(i, lib) {
            seen.entry(e.record_id).or_default().push(e.sequence);
        }
        let unknown: Vec<_> = seen.keys().filter(|id| !self.answers.contains_key(*id)).collect();
        assert!(unknown.is_empty(), "node {i}: entries nobody wrote: {unknown:?}");
        let mut moved = BTreeSet::new();
        for (id, answer) in &self.answers {
            match seen.get(id).map(Vec::as_slice) {
                Some([at]) => {
                    if answer.is_some_and(|s| s != *at) {
                        moved.insert(id.clone());
                    }
                }
                Some(many) => panic!("node {i}: {id} is in the log {} times: {many:?}", many.len()),
                None => panic!("node {i}: {id} (answered {answer:?}) is lost"),
            }
        }
        let tags = &cluster.dump(i, lib)["tag"];
        assert_eq!(tags.len(), self.answers.len(), "node {i}: the tag table");
        moved
    }
}

/// Copies `lib`'s database files of node `i` (the database and its WAL) into `to` while the
/// node runs, as a backup tool would: inside a write transaction of the node's own database,
/// so no commit lands mid-copy and the WAL is not restarted under it (a checkpoint may copy
/// WAL frames into the database file meanwhile; the copied WAL holds them too).
fn back_up(cluster: &Cluster, i: usize, lib: Uuid, to: &Path) {
    let db = cluster.node(i).database(lib).expect("library open");
    let dir = cluster.data_dir(i).join("libraries");
    std::fs::create_dir_all(to).unwrap();
    let mut copied = None;
    db.write(|_| {
        copied = Some((|| -> std::io::Result<()> {
            for suffix in ["", "-wal"] {
                let name = format!("{lib}.db{suffix}");
                if dir.join(&name).exists() {
                    std::fs::copy(dir.join(&name), to.join(&name))?;
                }
            }
            Ok(())
        })());
        Ok(())
    })
    .expect("write transaction");
    copied.expect("copied").expect("copy");
}

/// Puts a copy made by [`back_up`] in place of node `i`'s database (the node is stopped). The
/// election state and the high-water mark, files beside the database, stay as they are: a
/// restored backup of the database alone (docs/architecture.md, "Terms and votes on disk").
fn put_back(cluster: &Cluster, i: usize, lib: Uuid, from: &Path) {
    let dir = cluster.data_dir(i).join("libraries");
    for suffix in ["", "-wal", "-shm"] {
        let name = format!("{lib}.db{suffix}");
        let _ = std::fs::remove_file(dir.join(&name));
        if from.join(&name).exists() {
            std::fs::copy(from.join(&name), dir.join(&name)).unwrap();
        }
    }
}

/// Waits until node `i`'s high-water mark is at least its last sequence now (it is raised at
/// most once per heartbeat, after the log is on disk).
async fn wait_for_mark(cluster: &Cluster, i: usize, lib: Uuid) {
    let target = cluster.last_sequence(i, lib);
    wait_until(&format!("node {i}'s mark reaches {target}"), || async {
        let db = cluster.node(i).database(lib).expect("library open");
        db.mark().expect("mark").is_some_and(|m| m.sequence >= target)
    })
    .await;
}

/// Checks the oracle on every node in `nodes` after they converged, and that no answered
/// `Committed` sequence moved.
async fn converge_and_check(cluster: &Cluster, lib: Uuid, nodes: &[usize], oracle: &Oracle) {
    // queued writes are delivered (or the wait fails: a queued write is never dropped)
    for &i in nodes {
        wait_until(&format!("node {i}'s outbox is empty"), || async {
            cluster.node(i).status(lib).await.is_ok_and(|st| st.outbox_pending == 0)
        })
        .await;
    }
    let (leader, _) = cluster.wait_for_leader(lib, nodes, 0).await;
    let others: Vec<usize> = nodes.iter().copied().filter(|&i| i != leader).collect();
    cluster.assert_converged(lib, leader, &others).await;
    for &i in nodes {
        let moved = oracle.check(cluster, i, lib);
        assert!(moved.is_empty(), "node {i}: committed writes found elsewhere: {moved:?}");
        let st = cluster.node(i).status(lib).await.unwrap();
        assert_eq!(st.behind_mark, None, "node {i} is still behind its mark");
    }
}

/// The leader's database is put back to a copy taken mid-run, before 30 more writes that every
/// follower holds: the restored device comes back behind its mark, a follower leads, and the
/// restored device catches up — no write is lost, duplicated or moved.
#[actix_rt::test]
async fn a_leader_restored_from_an_older_copy_loses_and_duplicates_nothing() {
    let mut cluster = Cluster::start(3).await;
    let lib = cluster.create_library(0, &[1, 2]).await;
    let mut oracle = Oracle::default();
    oracle.write_many(&cluster, lib, &[0, 1, 2], "a", 20).await;
    let backup = cluster.dir.path().join("backup-leader");
    back_up(&cluster, 0, lib, &backup);
    oracle.write_many(&cluster, lib, &[0, 1, 2], "b", 30).await;
    cluster.assert_converged(lib, 0, &[1, 2]).await;
    wait_for_mark(&cluster, 0, lib).await;

    cluster.stop(0).await;
    put_back(&cluster, 0, lib, &backup);
    cluster.restart(0).await;
    oracle.write_many(&cluster, lib, &[1, 2, 0], "c", 30).await;
    converge_and_check(&cluster, lib, &[0, 1, 2], &oracle).await;
}

/// The same for a follower.
#[actix_rt::test]
async fn a_follower_restored_from_an_older_copy_loses_and_duplicates_nothing() {
    let mut cluster = Cluster::start(3).await;
    let lib = cluster.create_library(0, &[1, 2]).await;
    let mut oracle = Oracle::default();
    oracle.write_many(&cluster, lib, &[0, 1, 2], "a", 20).await;
    cluster.assert_converged(lib, 0, &[1, 2]).await;
    let backup = cluster.dir.path().join("backup-follower");
    back_up(&cluster, 1, lib, &backup);
    oracle.write_many(&cluster, lib, &[0, 1, 2], "b", 30).await;
    cluster.assert_converged(lib, 0, &[1, 2]).await;
    wait_for_mark(&cluster, 1, lib).await;

    cluster.stop(1).await;
    put_back(&cluster, 1, lib, &backup);
    cluster.restart(1).await;
    oracle.write_many(&cluster, lib, &[1, 2, 0], "c", 30).await;
    converge_and_check(&cluster, lib, &[0, 1, 2], &oracle).await;
}

/// A leader loses its last transactions (its database put back to before them, as a power
/// loss under `synchronous = NORMAL` may do) after one follower fetched them while the other
/// was away: that follower's copy is the only other one. The leader restarts behind its mark,
/// the follower that holds them leads, and every write ends in every log once, at the
/// sequence it was answered — none is taken over by a reused (sequence, term).
#[actix_rt::test]
async fn a_leader_that_loses_its_last_transactions_loses_nothing_a_follower_fetched() {
    let mut cluster = Cluster::start(3).await;
    let lib = cluster.create_library(0, &[1, 2]).await;
    let mut oracle = Oracle::default();
    oracle.write_many(&cluster, lib, &[0, 1, 2], "a", 10).await;
    cluster.assert_converged(lib, 0, &[1, 2]).await;
    let before = cluster.dir.path().join("before-the-last");
    back_up(&cluster, 0, lib, &before);
    cluster.stop(2).await;
    // committed by the leader and node 1 (a majority of three)
    oracle.write_many(&cluster, lib, &[0], "lost", 15).await;
    cluster.assert_converged(lib, 0, &[1]).await;
    wait_for_mark(&cluster, 0, lib).await;

    cluster.stop(0).await;
    put_back(&cluster, 0, lib, &before);
    cluster.restart(0).await;
    cluster.restart(2).await;
    oracle.write_many(&cluster, lib, &[1, 2, 0], "after", 15).await;
    converge_and_check(&cluster, lib, &[0, 1, 2], &oracle).await;
}

/// A follower restored from an older copy does not vote until it has caught up past its mark:
/// here its vote would elect a stale leader. Node 1 (restored to before the writes `x…`) and
/// node 2 (away while they were committed by nodes 0 and 1) both end at the same older entry;
/// with node 0 down, a vote from node 1 would make node 2 leader without the committed writes.
/// Node 2 campaigns and is never elected; once node 0 is back, the writes survive at their
/// sequences.
#[actix_rt::test]
async fn a_restored_follower_does_not_vote_until_caught_up_past_its_mark() {
    let mut cluster = Cluster::start(3).await;
    let lib = cluster.create_library(0, &[1, 2]).await;
    let mut oracle = Oracle::default();
    oracle.write_many(&cluster, lib, &[0, 1, 2], "a", 10).await;
    cluster.assert_converged(lib, 0, &[1, 2]).await;
    let backup = cluster.dir.path().join("backup-voter");
    back_up(&cluster, 1, lib, &backup);
    cluster.stop(2).await;
    oracle.write_many(&cluster, lib, &[0], "x", 15).await;
    cluster.assert_converged(lib, 0, &[1]).await;
    wait_for_mark(&cluster, 1, lib).await;

    cluster.stop(0).await;
    cluster.stop(1).await;
    put_back(&cluster, 1, lib, &backup);
    cluster.restart(1).await;
    let asked = |c: &Cluster| {
        c.node(2).metrics().pre_vote_requests.load(std::sync::atomic::Ordering::Relaxed)
    };
    cluster.restart(2).await;
    let started = asked(&cluster);
    // Node 2 asks for pre-votes again and again (its log is as long as node 1's, so only node
    // 1's mark can refuse it: two requests per round, to nodes 0 and 1); neither ever leads.
    wait_until("node 2 asks for pre-votes in three rounds", || async {
        let st1 = cluster.node(1).status(lib).await.unwrap();
        let st2 = cluster.node(2).status(lib).await.unwrap();
        assert_ne!(st1.role, lsync::SyncRole::Leader, "the restored device leads");
        assert_ne!(st2.role, lsync::SyncRole::Leader, "a stale leader was elected");
        assert!(st1.behind_mark.is_some(), "node 1 does not say it is behind its mark");
        asked(&cluster) >= started + 6
    })
    .await;

    cluster.restart(0).await;
    converge_and_check(&cluster, lib, &[0, 1, 2], &oracle).await;
}

/// A founder restored to a copy taken while it was its library's only member: its database's
/// configuration lacks the devices that joined since, so before the configuration kept beside
/// its marks it refused the leader they elected as a non-member and never caught up.
/// The founder writes alone, is copied, two devices join and more is written; the founder's
/// database is put back to the copy (its marks kept). It comes back behind its mark with a
/// configuration of itself alone, admits the members of the configuration it last knew, and
/// catches up from the leader the other two elected.
#[actix_rt::test]
async fn a_founder_restored_to_before_the_others_joined_catches_up() {
    let mut c = Cluster::start(3).await;
    let lib = c.node(0).create_library().await.expect("create library");
    let mut oracle = Oracle::default();
    oracle.write_many(&c, lib, &[0], "alone", 10).await;
    let backup = c.dir.path().join("backup-founder");
    back_up(&c, 0, lib, &backup);

    c.invite_and_join(lib, 0, 1).await;
    c.wait_for_members(lib, &[0, 1]).await;
    c.invite_and_join(lib, 0, 2).await;
    c.wait_for_members(lib, &[0, 1, 2]).await;
    c.wait_for_voters(lib, &[0, 1, 2], 3).await;
    oracle.write_many(&c, lib, &[0, 1, 2], "joined", 20).await;
    c.assert_converged(lib, 0, &[1, 2]).await;
    let last = c.last_sequence(0, lib);
    wait_until(&format!("node 0's mark reaches {last}"), || async {
        let db = c.node(0).database(lib).expect("library open");
        db.mark().expect("mark").is_some_and(|m| m.sequence >= last)
    })
    .await;

    c.stop(0).await;
    put_back(&c, 0, lib, &backup);
    c.restart(0).await;
    let st = c.node(0).status(lib).await.unwrap();
    assert!(st.behind_mark.is_some(), "the restored founder is not behind its mark: {st:?}");
    oracle.write_many(&c, lib, &[1, 2], "restored", 10).await;
    let (leader, _) = c.wait_for_leader(lib, &[0, 1, 2], 0).await;
    assert_ne!(leader, 0, "the restored founder leads");
    oracle.write_many(&c, lib, &[0, 1, 2], "after", 6).await;

    for i in [0, 1, 2] {
        wait_until(&format!("node {i}'s outbox is empty"), || async {
            c.node(i).status(lib).await.is_ok_and(|st| st.outbox_pending == 0)
        })
        .await;
    }
    let (leader, _) = c.wait_for_leader(lib, &[0, 1, 2], 0).await;
    let others: Vec<usize> = [0, 1, 2].into_iter().filter(|&i| i != leader).collect();
    c.assert_converged(lib, leader, &others).await;
    // (a `local` answer's sequence may move: the joined writes' leader may be deposed)
    for i in [0, 1, 2] {
        oracle.check(&c, i, lib);
    }
    let st = c.node(0).status(lib).await.unwrap();
    assert_eq!(st.behind_mark, None, "the founder is still behind its mark");
    let members = c.node(0).membership(lib).await.unwrap();
    assert_eq!(members.configuration.members.len(), 3, "the founder's own configuration");
}
