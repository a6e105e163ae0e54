//! A founder restored to a copy taken while it was its library's only member (issue 16,
//! docs/architecture.md, "Restores are detected"): its database's configuration lacks the
//! devices that joined since, so before the marked configuration it refused the leader they
//! elected as a non-member and never caught up. Checked against the list of what the test
//! wrote: every device ends identical, every acknowledged write in it exactly once.

use std::collections::BTreeMap;
use std::path::Path;

use lsync::{Change, Node, Tag, WriteOutcome};
use uuid::Uuid;

use crate::fixture::{wait_until, Cluster};

fn tag(id: &str) -> Change {
    Change::insert(&Tag { id: id.into(), name: format!("written as {id}"), color: None })
}

/// What the test wrote: record id → the answer (`Some(sequence)`: committed there; `None`:
/// queued).
#[derive(Default)]
struct Written(BTreeMap<String, Option<u64>>);

impl Written {
    async fn write(&mut self, node: &Node, lib: Uuid, id: &str) {
        let answer = match node.write(lib, vec![tag(id)]).await {
            Ok(WriteOutcome::Committed { last_sequence, .. }) => Some(last_sequence),
            Ok(WriteOutcome::Queued { .. }) => None,
            Ok(pending @ WriteOutcome::Pending { .. }) => panic!("a local write: {pending:?}"),
            Err(e) => panic!("write {id}: {e}"),
        };
        assert!(self.0.insert(id.to_owned(), answer).is_none(), "{id} written twice");
    }

    async fn write_many(
        &mut self,
        c: &Cluster,
        lib: Uuid,
        nodes: &[usize],
        prefix: &str,
        n: usize,
    ) {
        for k in 0..n {
            self.write(c.node(nodes[k % nodes.len()]), lib, &format!("{prefix}{k}")).await;
        }
    }

    /// Every write is in node `i`'s log exactly once and in its tag table; nothing else is.
    fn check(&self, c: &Cluster, i: usize, lib: Uuid) {
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        for e in c.data_entries(i, lib) {
            *seen.entry(e.record_id).or_default() += 1;
        }
        for (id, answer) in &self.0 {
            assert_eq!(seen.get(id), Some(&1), "node {i}: {id} (answered {answer:?})");
        }
        let unknown: Vec<_> = seen.keys().filter(|id| !self.0.contains_key(*id)).collect();
        assert!(unknown.is_empty(), "node {i}: entries nobody wrote: {unknown:?}");
        assert_eq!(c.dump(i, lib)["tag"].len(), self.0.len(), "node {i}: the tag table");
    }
}

/// Copies `lib`'s database and WAL of running node `i` into `to`, inside a write transaction
/// of its own database (as tests/integration/faults.rs does: no commit lands mid-copy).
fn back_up(c: &Cluster, i: usize, lib: Uuid, to: &Path) {
    let db = c.node(i).database(lib).expect("library open");
    let dir = c.data_dir(i).join("libraries");
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

/// Puts the copy in place of stopped node `i`'s database files; the files beside them (the
/// election record, the mark files) stay.
fn put_back(c: &Cluster, i: usize, lib: Uuid, from: &Path) {
    let dir = c.data_dir(i).join("libraries");
    for suffix in ["", "-wal", "-shm"] {
        let name = format!("{lib}.db{suffix}");
        let _ = std::fs::remove_file(dir.join(&name));
        if from.join(&name).exists() {
            std::fs::copy(from.join(&name), dir.join(&name)).unwrap();
        }
    }
}

/// The founder writes alone, is copied, two devices join and more is written; the founder's
/// database is put back to the copy (its marks kept). It comes back behind its mark with a
/// configuration of itself alone, admits the members of the configuration it last knew, and
/// catches up from the leader the other two elected.
#[actix_rt::test]
async fn a_founder_restored_to_before_the_others_joined_catches_up() {
    let mut c = Cluster::start(3).await;
    let lib = c.node(0).create_library().await.expect("create library");
    let mut written = Written::default();
    written.write_many(&c, lib, &[0], "alone", 10).await;
    let backup = c.dir.path().join("backup-founder");
    back_up(&c, 0, lib, &backup);

    c.invite_and_join(lib, 0, 1).await;
    c.wait_for_members(lib, &[0, 1]).await;
    c.invite_and_join(lib, 0, 2).await;
    c.wait_for_members(lib, &[0, 1, 2]).await;
    c.wait_for_voters(lib, &[0, 1, 2], 3).await;
    written.write_many(&c, lib, &[0, 1, 2], "joined", 20).await;
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
    written.write_many(&c, lib, &[1, 2], "restored", 10).await;
    let (leader, _) = c.wait_for_leader(lib, &[0, 1, 2], 0).await;
    assert_ne!(leader, 0, "the restored founder leads");
    written.write_many(&c, lib, &[0, 1, 2], "after", 6).await;

    for i in [0, 1, 2] {
        wait_until(&format!("node {i}'s outbox is empty"), || async {
            c.node(i).status(lib).await.is_ok_and(|st| st.outbox_pending == 0)
        })
        .await;
    }
    let (leader, _) = c.wait_for_leader(lib, &[0, 1, 2], 0).await;
    let others: Vec<usize> = [0, 1, 2].into_iter().filter(|&i| i != leader).collect();
    c.assert_converged(lib, leader, &others).await;
    for i in [0, 1, 2] {
        written.check(&c, i, lib);
    }
    let st = c.node(0).status(lib).await.unwrap();
    assert_eq!(st.behind_mark, None, "the founder is still behind its mark");
    let members = c.node(0).membership(lib).await.unwrap();
    assert_eq!(members.configuration.members.len(), 3, "the founder's own configuration");
}
