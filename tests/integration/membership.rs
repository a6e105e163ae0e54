//! Membership as replicated state, with real nodes (docs/architecture.md, "Membership"):
//! libraries set up only with invitations, failover with every device deriving its members
//! from its own log, learners that never lead, removal and re-invitation, invitations refused.
//! Writes are checked against the list of what the test wrote (an oracle), not only device
//! against device.

use std::collections::BTreeMap;
use std::time::Duration;

use lsync::{Change, MemberRole, SyncRole, Tag, WriteOutcome};
use uuid::Uuid;

use crate::fixture::{wait_until, Cluster};

fn tag(id: &str) -> Change {
    Change::insert(&Tag { id: id.to_owned(), name: format!("tag {id}"), color: None })
}

/// What the test wrote: every id acknowledged (committed or queued).
#[derive(Default)]
struct Oracle {
    written: Vec<String>,
}

impl Oracle {
    /// Writes `n` tags with fresh ids through node `via`; each must be acknowledged.
    async fn write(&mut self, cluster: &Cluster, lib: Uuid, via: usize, prefix: &str, n: usize) {
        for i in 0..n {
            let id = format!("{prefix}-{i}");
            let out = cluster.node(via).write(lib, vec![tag(&id)]).await.expect("write");
            assert!(
                matches!(out, WriteOutcome::Committed { .. } | WriteOutcome::Queued { .. }),
                "{out:?}"
            );
            self.written.push(id);
        }
    }

    /// Every written id is in node `i`'s log exactly once, and in its tag table.
    fn check(&self, cluster: &Cluster, lib: Uuid, i: usize) {
        let db = cluster.node(i).database(lib).unwrap();
        let log = db.fetch_since(0, u64::MAX).unwrap();
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for e in log.iter().filter(|e| e.model_type == "tag") {
            *counts.entry(e.record_id.as_str()).or_default() += 1;
        }
        let tags = db.dump().unwrap()["tag"].clone();
        for id in &self.written {
            assert_eq!(counts.get(id.as_str()), Some(&1), "node {i}: {id} in the log once");
            assert!(tags.iter().any(|row| row.starts_with(&format!("'{id}'"))), "node {i}: {id}");
        }
    }
}

/// Waits until a running node of `nodes` reports a commit sequence covering `sequence` (a
/// change answered `committed: false` — its wait ran out on a loaded machine — commits later).
async fn wait_committed(cluster: &Cluster, lib: Uuid, nodes: &[usize], sequence: u64) {
    wait_until(&format!("the configuration entry {sequence} commits"), || async move {
        for &i in nodes.iter().filter(|&&i| cluster.is_running(i)) {
            if cluster.node(i).status(lib).await.is_ok_and(|st| st.commit_sequence >= sequence) {
                return true;
            }
        }
        false
    })
    .await;
}

/// The members of `lib` as node `i` sees them: (device, role).
async fn members(cluster: &Cluster, lib: Uuid, i: usize) -> Vec<(Uuid, MemberRole)> {
    let m = cluster.node(i).membership(lib).await.unwrap();
    m.configuration.members.iter().map(|m| (m.device_id, m.role)).collect()
}

/// N devices set up only with invitations (each invited by the device before it, so that
/// members that do not lead invite too), the leader killed: exactly one new leader, every
/// device's member list identical, every write present once.
async fn devices_set_up_with_invitations_fail_over(n: usize) {
    let mut cluster = Cluster::start(n).await;
    let joiners: Vec<usize> = (1..n).collect();
    let lib = cluster.create_with_invitations(0, &joiners, |j| j - 1).await;
    let mut oracle = Oracle::default();
    oracle.write(&cluster, lib, 0, "before", 20).await;
    oracle.write(&cluster, lib, n - 1, "from-last", 5).await;
    let all: Vec<usize> = (0..n).collect();
    cluster.assert_converged(lib, 0, &joiners).await;
    let reference = members(&cluster, lib, 0).await;
    for &i in &joiners {
        assert_eq!(members(&cluster, lib, i).await, reference, "node {i}'s members");
    }

    cluster.stop(0).await;
    let (leader, term) = cluster.wait_for_leader(lib, &joiners, 1).await;
    let voters: Vec<Uuid> =
        reference.iter().filter(|(_, r)| *r == MemberRole::Voter).map(|(d, _)| *d).collect();
    assert!(voters.contains(&cluster.node(leader).device_id()), "the new leader is a voter");
    oracle.write(&cluster, lib, leader, "after", 20).await;
    let others: Vec<usize> = joiners.iter().copied().filter(|&i| i != leader).collect();
    cluster.assert_converged(lib, leader, &others).await;

    cluster.restart(0).await;
    let (again, term2) = cluster.wait_for_leader(lib, &all, term - 1).await;
    // The old leader comes back as a follower: it does not disturb the term. (A loaded machine
    // can still miss heartbeats and elect again: then one leader of a newer term.)
    assert!(term2 >= term, "terms never go back: {term2} after {term}");
    if term2 == term {
        assert_eq!(again, leader, "one leader per term");
    }
    let leader = again;
    let followers: Vec<usize> = all.iter().copied().filter(|&i| i != leader).collect();
    cluster.assert_converged(lib, leader, &followers).await;
    let reference = members(&cluster, lib, leader).await;
    for &i in &all {
        assert_eq!(members(&cluster, lib, i).await, reference, "node {i}'s members");
        oracle.check(&cluster, lib, i);
    }
    // The devices table is the configuration, row by row, on every device.
    let devices = cluster.node(leader).database(lib).unwrap().devices().unwrap();
    for &i in &all {
        assert_eq!(
            cluster.node(i).database(lib).unwrap().devices().unwrap(),
            devices,
            "node {i}'s devices table"
        );
    }
}

#[actix_rt::test]
async fn three_devices_set_up_with_invitations_fail_over_to_one_leader() {
    devices_set_up_with_invitations_fail_over(3).await;
}

#[actix_rt::test]
async fn five_devices_set_up_with_invitations_fail_over_to_one_leader() {
    devices_set_up_with_invitations_fail_over(5).await;
}

#[actix_rt::test]
async fn a_joiner_that_cannot_reach_the_leader_never_leads_and_nothing_is_rebuilt() {
    let mut cluster = Cluster::start(2).await;
    let lib = cluster.node(0).create_library().await.unwrap();
    let mut oracle = Oracle::default();
    oracle.write(&cluster, lib, 0, "early", 10).await;
    let joined = cluster.invite_and_join(lib, 0, 1).await;
    assert!(joined.config_sequence > 0);
    // The leader goes away at once: the joiner is a learner with a short log.
    cluster.stop(0).await;
    let timeout = cluster.config.leader_timeout;
    let until = tokio::time::Instant::now() + timeout * 10;
    while tokio::time::Instant::now() < until {
        let st = cluster.node(1).status(lib).await.unwrap();
        assert_ne!(st.role, SyncRole::Leader, "a learner never leads");
        assert_ne!(st.role, SyncRole::Candidate, "a learner never campaigns");
        assert_eq!(st.member_role, Some(MemberRole::Learner));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cluster.restart(0).await;
    let (leader, _) = cluster.wait_for_leader(lib, &[0, 1], 0).await;
    assert_eq!(leader, 0, "the creator leads again");
    cluster.wait_for_voters(lib, &[0, 1], 2).await;
    oracle.write(&cluster, lib, 1, "late", 5).await;
    cluster.assert_converged(lib, 0, &[1]).await;
    for i in [0, 1] {
        oracle.check(&cluster, lib, i);
        let resyncs = cluster.node(i).metrics().resyncs.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(resyncs, 0, "node {i} never rebuilt its library");
    }
}

#[actix_rt::test]
async fn a_removed_device_is_refused_at_once_and_the_others_go_on() {
    let cluster = Cluster::start(4).await;
    let lib = cluster.create_with_invitations(0, &[1, 2, 3], |_| 0).await;
    let mut oracle = Oracle::default();
    oracle.write(&cluster, lib, 0, "before", 10).await;
    cluster.assert_converged(lib, 0, &[1, 2, 3]).await;
    // Three voters and a learner; a voter is removed (through the learner).
    let (removed_node, via) =
        match members(&cluster, lib, 0).await.iter().position(|(_, r)| *r == MemberRole::Learner) {
            Some(3) | None => (2, 3),
            Some(learner) => (3, learner),
        };
    let removed = cluster.node(removed_node).device_id();
    let others: Vec<usize> = (0..4).filter(|&i| i != removed_node).collect();

    // Removed through a member that does not lead (forwarded to the leader), while writes go on.
    let writer = {
        let node = cluster.node(1).clone();
        actix_rt::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..30 {
                let id = format!("during-{i}");
                node.write(lib, vec![tag(&id)]).await.expect("write during the removal");
                ids.push(id);
            }
            ids
        })
    };
    let outcome = cluster.node(via).remove_device(lib, removed).await.expect("remove");
    wait_committed(&cluster, lib, &others, outcome.config_sequence).await;
    oracle.written.extend(writer.await.unwrap());
    cluster.wait_for_members(lib, &others).await;
    // The learner takes the removed voter's place.
    cluster.wait_for_voters(lib, &others, 3).await;

    // The removed device is refused and says so; it keeps its copy.
    wait_until("the removed device knows it is no longer a member", || async {
        let st = cluster.node(removed_node).status(lib).await.unwrap();
        !st.member || st.removed.is_some()
    })
    .await;
    let err =
        cluster.node(removed_node).write(lib, vec![tag("from-the-removed")]).await.unwrap_err();
    assert!(err.to_string().contains("not a member"), "{err}");
    assert!(cluster.last_sequence(removed_node, lib) > 0, "its copy is kept");

    oracle.write(&cluster, lib, others[2], "after", 10).await;
    cluster.assert_converged(lib, 0, &others[1..]).await;
    for &i in &others {
        oracle.check(&cluster, lib, i);
    }
    let dump = cluster.dump(removed_node, lib);
    assert!(!dump["tag"].iter().any(|r| r.contains("'after-")), "nothing after its removal");
}

#[actix_rt::test]
async fn a_removed_device_can_be_invited_again() {
    let cluster = Cluster::start(3).await;
    let lib = cluster.create_with_invitations(0, &[1, 2], |_| 0).await;
    let removed = cluster.node(2).device_id();
    cluster.node(0).remove_device(lib, removed).await.expect("remove");
    cluster.wait_for_members(lib, &[0, 1]).await;
    wait_until("the removed device knows it", || async {
        let st = cluster.node(2).status(lib).await.unwrap();
        !st.member || st.removed.is_some()
    })
    .await;
    let mut oracle = Oracle::default();
    oracle.write(&cluster, lib, 0, "meanwhile", 10).await;

    let again = cluster.invite_and_join(lib, 1, 2).await;
    assert!(again.config_sequence > 0);
    cluster.wait_for_members(lib, &[0, 1, 2]).await;
    cluster.wait_for_voters(lib, &[0, 1, 2], 3).await;
    oracle.write(&cluster, lib, 2, "back", 5).await;
    cluster.assert_converged(lib, 0, &[1, 2]).await;
    for i in [0, 1, 2] {
        oracle.check(&cluster, lib, i);
    }
}

#[actix_rt::test]
async fn an_expired_or_used_invitation_is_refused_with_a_clear_message() {
    let cluster = Cluster::start(3).await;
    let lib = cluster.node(0).create_library().await.unwrap();

    let short = cluster.node(0).invite(lib, false, Duration::from_millis(1)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let err = cluster.node(1).join_with_invite(&short.token).await.unwrap_err();
    assert!(err.to_string().contains("expired"), "{err}");
    assert!(cluster.node(1).libraries().is_empty(), "nothing was created");

    let token = cluster.node(0).invite(lib, false, Duration::from_secs(600)).await.unwrap().token;
    cluster.node(1).join_with_invite(&token).await.expect("first use");
    let err = cluster.node(2).join_with_invite(&token).await.unwrap_err();
    assert!(err.to_string().contains("used"), "{err}");
    assert!(cluster.node(2).libraries().is_empty(), "nothing was created");

    let err = cluster.node(2).join_with_invite("lsync-invite-1.garbage").await.unwrap_err();
    assert!(err.to_string().contains("damaged"), "{err}");
}

#[actix_rt::test]
async fn leadership_is_never_handed_to_a_learner() {
    let cluster = Cluster::start(2).await;
    let lib = cluster.node(0).create_library().await.unwrap();
    let invitation = cluster.node(0).invite(lib, true, Duration::from_secs(600)).await.unwrap();
    assert!(invitation.learner);
    cluster.node(1).join_with_invite(&invitation.token).await.unwrap();
    cluster.wait_for_members(lib, &[0, 1]).await;
    let mut oracle = Oracle::default();
    oracle.write(&cluster, lib, 0, "x", 3).await;
    cluster.assert_converged(lib, 0, &[1]).await;
    // Caught up, but invited with --learner: it stays a learner.
    assert_eq!(
        members(&cluster, lib, 0).await.iter().filter(|(_, r)| *r == MemberRole::Voter).count(),
        1
    );
    let learner = cluster.node(1).device_id();
    let err = cluster.node(0).transfer_leadership(lib, learner).await.unwrap_err();
    assert!(err.to_string().contains("learner"), "{err}");
    assert_eq!(cluster.node(0).status(lib).await.unwrap().role, SyncRole::Leader);
}

#[actix_rt::test]
async fn the_commit_sequence_is_shown_and_follows_the_majority() {
    let mut cluster = Cluster::start(3).await;
    let lib = cluster.create_with_invitations(0, &[1, 2], |_| 0).await;
    let mut oracle = Oracle::default();
    oracle.write(&cluster, lib, 0, "a", 10).await;
    cluster.assert_converged(lib, 0, &[1, 2]).await;
    let last = cluster.last_sequence(0, lib);
    wait_until("the commit sequence reaches the last entry", || async {
        cluster.node(0).status(lib).await.unwrap().commit_sequence == last
    })
    .await;
    wait_until("the followers hear it", || async {
        cluster.node(1).status(lib).await.unwrap().commit_sequence == last
    })
    .await;
    // With one of three voters gone the majority still commits; with two gone it does not.
    cluster.stop(2).await;
    oracle.write(&cluster, lib, 0, "b", 5).await;
    let last = cluster.last_sequence(0, lib);
    wait_until("two of three voters commit", || async {
        cluster.node(0).status(lib).await.unwrap().commit_sequence == last
    })
    .await;
    let st = cluster.node(0).status(lib).await.unwrap();
    assert!(!st.membership.pending);
}

#[actix_rt::test]
async fn devices_restarted_on_other_ports_find_each_other_through_signed_hints() {
    let mut cluster = Cluster::start(3).await;
    let lib = cluster.create_with_invitations(0, &[1, 2], |_| 0).await;
    let mut oracle = Oracle::default();
    oracle.write(&cluster, lib, 0, "a", 5).await;
    cluster.assert_converged(lib, 0, &[1, 2]).await;

    // The leader comes back on another port: it dials the others (their addresses did not
    // change) and announces its new ones, which they keep.
    cluster.restart_on_new_port(0).await;
    let new_addrs: Vec<String> =
        cluster.node(0).listen_addrs().iter().map(ToString::to_string).collect();
    let me = cluster.node(0).device_id();
    for i in [1, 2] {
        wait_until(&format!("node {i} keeps node 0's new addresses"), || {
            let new_addrs = new_addrs.clone();
            let cluster = &cluster;
            async move {
                let hints = cluster.node(i).database(lib).unwrap().hints().unwrap();
                hints.iter().any(|h| h.device_id == me && h.addresses == new_addrs)
            }
        })
        .await;
    }
    // A follower that also moves can only find the leader at its new address (the leader does
    // not know the follower's new one): it does, and catches up.
    cluster.restart_on_new_port(1).await;
    let (leader, _) = cluster.wait_for_leader(lib, &[0, 1, 2], 0).await;
    oracle.write(&cluster, lib, leader, "b", 5).await;
    let followers: Vec<usize> = [0, 1, 2].into_iter().filter(|&i| i != leader).collect();
    cluster.assert_converged(lib, leader, &followers).await;
    for i in 0..3 {
        oracle.check(&cluster, lib, i);
    }
    // No configuration change was needed for any of it.
    let before = members(&cluster, lib, 2).await;
    assert_eq!(before.len(), 3);
}

#[actix_rt::test]
async fn a_survivor_can_force_a_configuration_when_the_majority_is_gone_for_good() {
    let mut cluster = Cluster::start(3).await;
    let lib = cluster.create_with_invitations(0, &[1, 2], |_| 0).await;
    let mut oracle = Oracle::default();
    oracle.write(&cluster, lib, 0, "a", 5).await;
    cluster.assert_converged(lib, 0, &[1, 2]).await;
    // Two of three voters lost for good: the survivor cannot commit anything.
    cluster.stop(1).await;
    cluster.stop(2).await;
    let me = cluster.node(0).device_id();
    let forced = cluster.node(0).force_reconfigure(lib, vec![me]).await.expect("force");
    assert!(forced.committed, "a lone voter commits its configuration alone");
    let m = cluster.node(0).membership(lib).await.unwrap();
    assert_eq!(m.configuration.voters().into_iter().collect::<Vec<_>>(), vec![me]);
    assert_eq!(m.configuration.members.len(), 1, "the lost voters are removed");
    wait_until("the survivor leads again", || async {
        cluster.node(0).status(lib).await.unwrap().role == SyncRole::Leader
    })
    .await;
    oracle.write(&cluster, lib, 0, "b", 5).await;
    let last = cluster.last_sequence(0, lib);
    wait_until("its writes commit", || async {
        cluster.node(0).status(lib).await.unwrap().commit_sequence == last
    })
    .await;
    oracle.check(&cluster, lib, 0);
    // A lost device that comes back after all is not a member any more.
    cluster.restart(1).await;
    wait_until("the returning device is refused as removed", || async {
        let st = cluster.node(1).status(lib).await.unwrap();
        st.removed.is_some() || !st.member
    })
    .await;
}

#[actix_rt::test]
async fn a_library_without_configuration_entries_gets_one_once_every_member_supports_them() {
    let mut cluster = Cluster::start(3).await;
    let infos: Vec<lsync::DeviceInfo> = (0..3).map(|i| cluster.node(i).device_info()).collect();
    for i in 0..3 {
        cluster.stop(i).await;
    }
    // The library as a version-1 build made it: no configuration entry, members by hand.
    let lib = Uuid::new_v4();
    let leader = infos[0].device_id;
    for i in 0..3 {
        let path = cluster.data_dir(i).join(format!("libraries/{lib}.db"));
        let db =
            lsync::Database::open(&path, &Default::default(), lsync::ModelRegistry::with_builtin())
                .unwrap();
        let leading = i == 0;
        db.init_sync_state(&lsync::crates::storage::SyncState {
            library_id: lib,
            device_id: infos[i].device_id,
            role: if leading { SyncRole::Leader } else { SyncRole::Follower },
            current_term: 1,
            voted_for: leading.then_some(leader),
            leader_device: Some(leader),
            last_synced_sequence: 0,
        })
        .unwrap();
        for d in &infos {
            db.upsert_device(&lsync::crates::storage::Device {
                device_id: d.device_id,
                peer_id: d.peer_id.to_string(),
                addresses: d.addresses.iter().map(ToString::to_string).collect(),
                name: d.name.clone(),
            })
            .unwrap();
        }
        assert!(!db.membership().unwrap().is_replicated());
    }
    for i in 0..3 {
        cluster.restart(i).await;
    }
    // Every member reports this build's feature version in its heartbeats: the leader writes the
    // first configuration entry, at that version, with every member a voter, and every device
    // takes it.
    wait_until("every device has the first configuration entry", || async {
        for i in 0..3 {
            let m = cluster.node(i).membership(lib).await.unwrap();
            if !m.is_replicated()
                || m.configuration.feature_version != lsync::crates::protocol::FEATURE_VERSION
            {
                return false;
            }
        }
        true
    })
    .await;
    cluster.wait_for_voters(lib, &[0, 1, 2], 3).await;
    let mut oracle = Oracle::default();
    oracle.write(&cluster, lib, 1, "after", 5).await;
    cluster.assert_converged(lib, 0, &[1, 2]).await;
    let last = cluster.last_sequence(0, lib);
    wait_until("the commit sequence starts", || async {
        cluster.node(0).status(lib).await.unwrap().commit_sequence == last
    })
    .await;
    for i in 0..3 {
        oracle.check(&cluster, lib, i);
    }
}

#[actix_rt::test]
async fn a_leader_that_removes_itself_leads_until_the_removal_commits_then_steps_down() {
    let cluster = Cluster::start(3).await;
    let lib = cluster.create_with_invitations(0, &[1, 2], |_| 0).await;
    let mut oracle = Oracle::default();
    oracle.write(&cluster, lib, 0, "a", 5).await;
    let leader = cluster.node(0).device_id();
    // Asked through a follower: forwarded to the leader, which commits its own removal.
    let outcome = cluster.node(1).remove_device(lib, leader).await.expect("remove the leader");
    wait_committed(&cluster, lib, &[0, 1, 2], outcome.config_sequence).await;
    let (new_leader, _) = cluster.wait_for_leader(lib, &[1, 2], 1).await;
    cluster.wait_for_members(lib, &[1, 2]).await;
    wait_until("the old leader steps down and says it is not a member", || async {
        let st = cluster.node(0).status(lib).await.unwrap();
        st.role != SyncRole::Leader && !st.member
    })
    .await;
    oracle.write(&cluster, lib, new_leader, "b", 5).await;
    let other = if new_leader == 1 { 2 } else { 1 };
    cluster.assert_converged(lib, new_leader, &[other]).await;
    for i in [1, 2] {
        oracle.check(&cluster, lib, i);
    }
}

#[actix_rt::test]
async fn a_member_that_missed_changes_while_away_finds_a_leader_it_never_heard_of() {
    let mut cluster = Cluster::start(4).await;
    let lib = cluster.create_with_invitations(0, &[1, 2], |_| 0).await;
    let mut oracle = Oracle::default();
    oracle.write(&cluster, lib, 0, "a", 5).await;
    cluster.assert_converged(lib, 0, &[1, 2]).await;
    // Device 2 goes away; meanwhile device 3 joins, is made a voter and takes the lead.
    cluster.stop(2).await;
    cluster.invite_and_join(lib, 0, 3).await;
    let d = cluster.node(3).device_id();
    let out =
        cluster.node(0).set_device_preference(lib, d, lsync::RolePreference::Voter).await.unwrap();
    wait_committed(&cluster, lib, &[0], out.config_sequence).await;
    // Promoted once caught up (the leader then demotes the absent device 2 to keep the number
    // of voters odd).
    wait_until("device 3 is a voter", || async {
        members(&cluster, lib, 0).await.contains(&(d, MemberRole::Voter))
    })
    .await;
    cluster.node(0).transfer_leadership(lib, d).await.expect("transfer to the new device");
    let (leader, _) = cluster.wait_for_leader(lib, &[0, 1, 3], 1).await;
    assert_eq!(leader, 3);
    oracle.write(&cluster, lib, 3, "b", 5).await;
    // Device 2 comes back knowing neither device 3 nor its leadership: the member it follows
    // names the leader and its peer id, device 2 lets it in, follows it and catches up (its
    // configuration then comes from its log again).
    cluster.restart(2).await;
    cluster.wait_for_members(lib, &[0, 1, 2, 3]).await;
    oracle.write(&cluster, lib, 3, "c", 5).await;
    cluster.assert_converged(lib, 3, &[0, 1, 2]).await;
    for i in 0..4 {
        oracle.check(&cluster, lib, i);
    }
    // Joining again with an invitation while a member changes nothing and says so.
    let again = cluster.invite_and_join(lib, 1, 2).await;
    assert!(again.committed);
    cluster.wait_for_members(lib, &[0, 1, 2, 3]).await;
}
