//! The shared fixture of the multi-device tests: a cluster of real nodes (libp2p on
//! 127.0.0.1, port 0, one temporary directory per test), and `wait_until` helpers that wait for
//! a condition with a generous deadline instead of sleeping.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use libp2p::Multiaddr;
use lsync::{DeviceInfo, Node, SyncConfig};
use tempfile::TempDir;
use uuid::Uuid;

/// Deadline of every wait: generous, for a loaded 2-core machine.
pub const DEADLINE: Duration = Duration::from_secs(120);

/// Waits until `cond` holds, polling; panics with `what` after [`DEADLINE`].
pub async fn wait_until<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = tokio::time::Instant::now();
    loop {
        if cond().await {
            return;
        }
        if start.elapsed() > DEADLINE {
            panic!("timed out after {DEADLINE:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Real nodes, each in `dir/dev<i>`.
pub struct Cluster {
    pub dir: TempDir,
    nodes: Vec<Option<Node>>,
    addrs: Vec<Vec<Multiaddr>>,
    pub config: SyncConfig,
    /// The model types (and conflict policies) of every node.
    pub registry: lsync::ModelRegistry,
}

impl Cluster {
    /// Starts `n` nodes with millisecond timers.
    pub async fn start(n: usize) -> Cluster {
        Self::start_with(n, SyncConfig::fast()).await
    }

    /// Starts `n` nodes with the given timers.
    pub async fn start_with(n: usize, config: SyncConfig) -> Cluster {
        Self::start_with_registry(n, config, lsync::ModelRegistry::with_builtin()).await
    }

    /// Starts `n` nodes with the given timers and model registry (conflict policies).
    pub async fn start_with_registry(
        n: usize,
        config: SyncConfig,
        registry: lsync::ModelRegistry,
    ) -> Cluster {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn".into()),
            )
            .with_test_writer()
            .try_init();
        let mut c = Cluster {
            dir: tempfile::tempdir().expect("temp dir"),
            nodes: Vec::new(),
            addrs: Vec::new(),
            config,
            registry,
        };
        for i in 0..n {
            let node = c.build(i, vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()]).await;
            c.addrs.push(node.listen_addrs());
            c.nodes.push(Some(node));
        }
        c
    }

    async fn build(&self, i: usize, listen: Vec<Multiaddr>) -> Node {
        Node::builder(self.dir.path().join(format!("dev{i}")))
            .registry(self.registry.clone())
            .listen(listen)
            .sync_config(self.config.clone())
            .start()
            .await
            .expect("node starts")
    }

    /// Node `i` (panics if stopped).
    pub fn node(&self, i: usize) -> &Node {
        self.nodes[i].as_ref().expect("node is running")
    }

    /// Adds one more node; returns its index.
    pub async fn add_node(&mut self) -> usize {
        let i = self.nodes.len();
        let node = self.build(i, vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()]).await;
        self.addrs.push(node.listen_addrs());
        self.nodes.push(Some(node));
        i
    }

    /// Stops node `i` (network closed, actors stopped); its data stays.
    pub async fn stop(&mut self, i: usize) {
        if let Some(node) = self.nodes[i].take() {
            node.shutdown().await;
        }
    }

    /// Starts node `i` again on its data directory and its former addresses.
    pub async fn restart(&mut self, i: usize) {
        self.stop(i).await;
        let mut last_err = None;
        // The old listener's port may take a moment to be released.
        for _ in 0..200 {
            match Node::builder(self.dir.path().join(format!("dev{i}")))
                .registry(self.registry.clone())
                .listen(self.addrs[i].clone())
                .sync_config(self.config.clone())
                .start()
                .await
            {
                Ok(node) => {
                    self.nodes[i] = Some(node);
                    return;
                }
                Err(e) => {
                    last_err = Some(e);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        panic!("node {i} did not restart: {last_err:?}");
    }

    /// Starts node `i` again on its data directory, on a new port (its old address is gone).
    pub async fn restart_on_new_port(&mut self, i: usize) {
        self.stop(i).await;
        let node = self.build(i, vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()]).await;
        self.addrs[i] = node.listen_addrs();
        self.nodes[i] = Some(node);
    }

    /// The data directory of node `i`.
    pub fn data_dir(&self, i: usize) -> std::path::PathBuf {
        self.dir.path().join(format!("dev{i}"))
    }

    /// Opens the database of stopped node `i` directly, to damage it on purpose.
    pub fn offline_db(&self, i: usize, lib: Uuid) -> lsync::Database {
        assert!(self.nodes[i].is_none(), "node {i} must be stopped");
        let path = self.dir.path().join(format!("dev{i}/libraries/{lib}.db"));
        lsync::Database::open(&path, &Default::default(), lsync::ModelRegistry::with_builtin())
            .expect("open")
    }

    /// Creates a library led by node `leader`, joined by `followers` with invitations made by
    /// the leader, as a user would set it up; returns once every node lists the same members
    /// and the leader keeps its voters (1, 2, 3, then 5 of them: with 4 devices one follower
    /// stays a learner). See [`Cluster::create_with_invitations`].
    pub async fn create_library(&self, leader: usize, followers: &[usize]) -> Uuid {
        self.create_with_invitations(leader, followers, |_| leader).await
    }

    /// Makes `followers` members of `lib` the scripted way (no invitation): `add_device` on the
    /// leader for each, then `join_library` on each, starting from a bootstrap configuration
    /// that the device replaces with the log's. Returns once each follower and the leader list
    /// the same members, followers included (promotions to voter may still be under way: wait
    /// for them with [`Cluster::wait_for_voters`] when a scenario depends on who votes).
    pub async fn join(&self, lib: Uuid, leader: usize, followers: &[usize]) {
        let leader_info = self.node(leader).device_info();
        let infos: Vec<DeviceInfo> =
            followers.iter().map(|&f| self.node(f).device_info()).collect();
        for info in &infos {
            let outcome =
                self.node(leader).add_device(lib, info.clone()).await.expect("add device");
            assert!(outcome.config_sequence > 0, "added through the log: {outcome:?}");
        }
        for &f in followers {
            self.node(f)
                .join_library(lib, leader_info.clone(), infos.clone())
                .await
                .expect("join library");
        }
        let wanted: Vec<Uuid> = infos.iter().map(|i| i.device_id).collect();
        wait_until(&format!("nodes {followers:?} are members as node {leader} lists them"), || {
            let wanted = &wanted;
            async move {
                let Ok(m) = self.node(leader).membership(lib).await else { return false };
                let reference: Vec<Uuid> =
                    m.configuration.members.iter().map(|m| m.device_id).collect();
                if !wanted.iter().all(|d| reference.contains(d)) {
                    return false;
                }
                for &f in followers {
                    let Ok(m) = self.node(f).membership(lib).await else { return false };
                    let got: Vec<Uuid> =
                        m.configuration.members.iter().map(|m| m.device_id).collect();
                    if got != reference {
                        return false;
                    }
                }
                true
            }
        })
        .await;
    }

    /// Creates a library led by node `leader` and has every node of `joiners` join it with an
    /// invitation made by `inviter(joiner)` (any member); waits until every voter the leader
    /// keeps (odd numbers: 1, 2, 3, 5) is one.
    pub async fn create_with_invitations(
        &self,
        leader: usize,
        joiners: &[usize],
        inviter: impl Fn(usize) -> usize,
    ) -> Uuid {
        let lib = self.node(leader).create_library().await.expect("create library");
        let mut members = vec![leader];
        for &j in joiners {
            self.invite_and_join(lib, inviter(j), j).await;
            members.push(j);
            // The next joiner is invited once this one is a member everywhere it matters.
            self.wait_for_members(lib, &members).await;
        }
        let voters = match members.len() {
            n @ 0..=2 => n,
            n => (if n % 2 == 1 { n } else { n - 1 }).min(5),
        };
        self.wait_for_voters(lib, &members, voters).await;
        lib
    }

    /// Node `inviter` invites node `joiner`, which joins with the token at once (the inviting
    /// device admits it as soon as `invite` returns).
    pub async fn invite_and_join(
        &self,
        lib: Uuid,
        inviter: usize,
        joiner: usize,
    ) -> lsync::JoinOutcome {
        let invitation =
            self.node(inviter).invite(lib, false, Duration::from_secs(600)).await.expect("invite");
        self.node(joiner).join_with_invite(&invitation.token).await.expect("join with the token")
    }

    /// Waits until every node of `nodes` (running) has exactly `nodes` as members of `lib`.
    pub async fn wait_for_members(&self, lib: Uuid, nodes: &[usize]) {
        let mut expected: Vec<Uuid> = nodes.iter().map(|&i| self.node(i).device_id()).collect();
        expected.sort();
        wait_until(&format!("nodes {nodes:?} all list exactly them as members"), || {
            let expected = expected.clone();
            async move {
                for &i in nodes.iter().filter(|&&i| self.is_running(i)) {
                    let Ok(m) = self.node(i).membership(lib).await else { return false };
                    let got: Vec<Uuid> =
                        m.configuration.members.iter().map(|m| m.device_id).collect();
                    if got != expected {
                        return false;
                    }
                }
                true
            }
        })
        .await;
    }

    /// Waits until every running node of `nodes` sees exactly `voters` voters in `lib`.
    pub async fn wait_for_voters(&self, lib: Uuid, nodes: &[usize], voters: usize) {
        wait_until(&format!("{voters} voters seen by nodes {nodes:?}"), || async move {
            for &i in nodes.iter().filter(|&&i| self.is_running(i)) {
                let Ok(m) = self.node(i).membership(lib).await else { return false };
                if m.configuration.voters().len() != voters {
                    return false;
                }
            }
            true
        })
        .await;
    }

    /// Whether node `i` is running.
    pub fn is_running(&self, i: usize) -> bool {
        self.nodes[i].is_some()
    }

    /// Waits until exactly one of the running nodes among `among` leads `lib` in a term above
    /// `after_term`, and every other running node among them follows it in that term; returns
    /// the leader's index and term.
    pub async fn wait_for_leader(
        &self,
        lib: Uuid,
        among: &[usize],
        after_term: u64,
    ) -> (usize, u64) {
        let found = std::cell::Cell::new(None);
        wait_until(&format!("one leader of a term above {after_term} among {among:?}"), || {
            let found = &found;
            async move {
                let mut leaders = Vec::new();
                let mut views = Vec::new();
                for &i in among.iter().filter(|&&i| self.is_running(i)) {
                    let Ok(st) = self.node(i).status(lib).await else { return false };
                    if st.role == lsync::SyncRole::Leader {
                        leaders.push((i, st.term));
                    }
                    views.push((st.term, st.leader));
                }
                let [(leader, term)] = leaders[..] else { return false };
                let leader_id = self.node(leader).device_id();
                if term > after_term && views.iter().all(|v| *v == (term, Some(leader_id))) {
                    found.set(Some((leader, term)));
                    return true;
                }
                false
            }
        })
        .await;
        found.get().expect("leader found")
    }

    /// Every synced table of node `i` for `lib`, row by row.
    pub fn dump(&self, i: usize, lib: Uuid) -> BTreeMap<String, Vec<String>> {
        self.node(i).database(lib).expect("library open").dump().expect("dump")
    }

    /// Last log sequence of node `i` for `lib`.
    pub fn last_sequence(&self, i: usize, lib: Uuid) -> u64 {
        self.node(i)
            .database(lib)
            .expect("library open")
            .last_position()
            .expect("position")
            .sequence
    }

    /// Node `i`'s log of `lib` without its configuration entries (the library's first entry,
    /// membership changes, and the entry each leader writes first in each term it leads): the
    /// entries of what the test wrote, in log order.
    pub fn data_entries(&self, i: usize, lib: Uuid) -> Vec<lsync::SyncLogEntry> {
        let db = self.node(i).database(lib).expect("library open");
        let log = db.fetch_since(0, u64::MAX).expect("log");
        log.into_iter().filter(|e| e.change_type != lsync::ChangeType::Config).collect()
    }

    /// Asserts that every term of node `i`'s log for `lib` opens with a configuration entry: the
    /// library's creation in term 1, and the entry each leader writes first in its term.
    pub fn assert_terms_open_with_configuration(&self, i: usize, lib: Uuid) {
        let db = self.node(i).database(lib).expect("library open");
        let log = db.fetch_since(0, u64::MAX).expect("log");
        assert!(!log.is_empty(), "node {i}: an empty log");
        let mut previous_term = 0;
        for e in &log {
            assert!(e.term >= previous_term, "node {i}: term {} after {previous_term}", e.term);
            if e.term != previous_term {
                assert_eq!(
                    e.change_type,
                    lsync::ChangeType::Config,
                    "node {i}: term {} opens with entry {} ({}/{}), not a configuration entry",
                    e.term,
                    e.sequence,
                    e.model_type,
                    e.record_id
                );
                previous_term = e.term;
            }
        }
    }

    /// The record ids of [`Cluster::data_entries`], in log order.
    pub fn data_record_ids(&self, i: usize, lib: Uuid) -> Vec<String> {
        self.data_entries(i, lib).into_iter().map(|e| e.record_id).collect()
    }

    /// Cuts node `a` off from each of `others` in library `lib`, both ways (each forgets the
    /// other's peer: no connection either way).
    pub async fn cut(&self, lib: Uuid, a: usize, others: &[usize]) {
        for &b in others {
            let (ia, ib) = (self.node(a).device_info(), self.node(b).device_info());
            self.node(a).network().remove_member(lib, ib.peer_id).await.unwrap();
            self.node(b).network().remove_member(lib, ia.peer_id).await.unwrap();
        }
    }

    /// Undoes [`Cluster::cut`]: node `a` and each of `others` know each other again.
    pub async fn heal(&self, lib: Uuid, a: usize, others: &[usize]) {
        for &b in others {
            let (ia, ib) = (self.node(a).device_info(), self.node(b).device_info());
            self.node(a).network().add_member(lib, ib.peer_id, ib.addresses).await.unwrap();
            self.node(b).network().add_member(lib, ia.peer_id, ia.addresses).await.unwrap();
        }
    }

    /// Waits until every node in `followers` has the leader's last sequence, then asserts that
    /// their model tables and logs equal the leader's row by row.
    ///
    /// The leader may still write entries of its own meanwhile (a learner's promotion, the
    /// first entry of its term), so the devices are compared at a moment when none is in
    /// flight: the check is retried until it holds (up to the deadline), then made once more
    /// with assertions that say what differs.
    pub async fn assert_converged(&self, lib: Uuid, leader: usize, followers: &[usize]) {
        for &f in followers {
            wait_until(&format!("node {f} reaches node {leader}'s last sequence"), || async {
                self.last_sequence(f, lib) == self.last_sequence(leader, lib)
            })
            .await;
        }
        let start = tokio::time::Instant::now();
        while start.elapsed() < DEADLINE {
            let last = self.last_sequence(leader, lib);
            let expected = self.dump(leader, lib);
            let settled = expected["sync_log"].len() as u64 == last
                && self.last_sequence(leader, lib) == last
                && followers.iter().all(|&f| self.dump(f, lib) == expected);
            if settled {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let expected = self.dump(leader, lib);
        assert!(expected["sync_log"].len() as u64 == self.last_sequence(leader, lib));
        for &f in followers {
            let got = self.dump(f, lib);
            assert_eq!(got.keys().collect::<Vec<_>>(), expected.keys().collect::<Vec<_>>());
            for (table, rows) in &expected {
                assert!(
                    got[table] == *rows,
                    "table {table} of node {f} differs from the leader's ({} vs {} rows)",
                    got[table].len(),
                    rows.len()
                );
            }
        }
    }
}
