//! `GET /metrics`: the node's counters, histograms and per-library gauges in the Prometheus
//! text exposition format (version 0.0.4), written directly — the format is a few line shapes.
//!
//! | name | type | labels |
//! |---|---|---|
//! | `lsync_entries_committed_total` | counter | |
//! | `lsync_entries_applied_total` | counter | |
//! | `lsync_reconnects_total` | counter | |
//! | `lsync_elections_total` | counter | |
//! | `lsync_pre_vote_requests_total` | counter | |
//! | `lsync_resyncs_total` | counter | |
//! | `lsync_actor_restarts_total` | counter | `kind` (`election`, `leader`, `link`, `follower`, `proposer`) |
//! | `lsync_task_panics_total` | counter | `kind` (see docs/operations.md) |
//! | `lsync_proposals_failed_total` | counter | |
//! | `lsync_lease_waits_total` | counter | |
//! | `lsync_lease_unconfirmed_total` | counter | |
//! | `lsync_network_error_answers_total` | counter | `code` |
//! | `lsync_fetches_served_cached_total` | counter | |
//! | `lsync_fetches_served_storage_total` | counter | |
//! | `lsync_fetches_ahead_total` | counter | |
//! | `lsync_fetches_ahead_missed_total` | counter | |
//! | `lsync_fetch_rtt_seconds` | histogram | |
//! | `lsync_commit_to_apply_seconds` | histogram | |
//! | `lsync_network_inbound_requests_total` | counter | |
//! | `lsync_network_outbound_requests_total` | counter | |
//! | `lsync_network_outbound_failures_total` | counter | |
//! | `lsync_network_rejected_requests_total` | counter | `reason` |
//! | `lsync_network_connections_established_total` | counter | |
//! | `lsync_network_connections_closed_total` | counter | |
//! | `lsync_network_connections_open` | gauge | |
//! | `lsync_network_guest_connections_total` | counter | |
//! | `lsync_network_guest_connections_refused_total` | counter | |
//! | `lsync_network_guest_timeouts_total` | counter | |
//! | `lsync_network_protocol_fallbacks_total` | counter | |
//! | `lsync_library_is_leader` | gauge | `library` |
//! | `lsync_library_term` | gauge | `library` |
//! | `lsync_library_last_sequence` | gauge | `library` |
//! | `lsync_library_lag` | gauge | `library` (followers) |
//! | `lsync_library_applier_stalled` | gauge | `library` (followers) |
//! | `lsync_library_outbox_size` | gauge | `library` |
//! | `lsync_commit_sequence` | gauge | `library` |
//! | `lsync_config_sequence` | gauge | `library` |
//! | `lsync_voters` | gauge | `library` |
//! | `lsync_learners` | gauge | `library` |
//! | `lsync_membership_pending` | gauge | `library` |
//! | `lsync_library_member` | gauge | `library` |
//! | `lsync_library_conflicts` | gauge | `library` |
//! | `lsync_follower_acked_sequence` | gauge | `library`, `device` (leaders) |
//! | `lsync_follower_lag` | gauge | `library`, `device` (leaders) |
//! | `lsync_follower_connected` | gauge | `library`, `device` (leaders) |

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use lsync_actors::metrics::HistogramSnapshot;
use lsync_actors::network::NetworkStats;
use uuid::Uuid;

use crate::{FollowerState, LibraryStatus, MemberRole, Metrics, SyncRole};

/// The content type of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The per-library numbers `/metrics` shows, taken from a [`LibraryStatus`].
#[derive(Debug, Clone, PartialEq)]
pub struct LibraryGauges {
    pub library_id: Uuid,
    pub leader: bool,
    pub term: u64,
    pub last_sequence: u64,
    /// Followers only: the leader's last sequence (as last heard) minus this device's.
    pub lag: Option<u64>,
    /// Followers only: the applier stopped on an error it cannot get past by itself.
    pub stalled: Option<bool>,
    pub outbox_size: u64,
    /// The commit sequence (a follower: as its leader last said).
    pub commit_sequence: u64,
    /// The configuration entry in effect.
    pub config_sequence: u64,
    /// Voters of the configuration in effect.
    pub voters: u64,
    /// Learners of the configuration in effect.
    pub learners: u64,
    /// The configuration in effect is not committed yet.
    pub membership_pending: bool,
    /// This device is a member of the configuration in effect.
    pub member: bool,
    /// Conflicts recorded in this device's copy (the status's `conflicts`).
    pub conflicts: u64,
    /// Leaders only: every follower.
    pub followers: Vec<FollowerGauges>,
}

/// The leader's numbers about one follower.
#[derive(Debug, Clone, PartialEq)]
pub struct FollowerGauges {
    pub device_id: Uuid,
    pub acked_sequence: u64,
    pub lag: u64,
    pub connected: bool,
}

impl LibraryGauges {
    /// The gauges of one library's status.
    pub fn from_status(s: &LibraryStatus, outbox_size: u64) -> Self {
        Self {
            library_id: s.library_id,
            leader: s.role == SyncRole::Leader,
            term: s.term,
            last_sequence: s.last_sequence,
            lag: s.applier.as_ref().map(|a| a.leader_last_sequence.saturating_sub(s.last_sequence)),
            stalled: s.applier.as_ref().map(|a| a.state == FollowerState::Stalled),
            outbox_size,
            commit_sequence: s.commit_sequence,
            config_sequence: s.membership.config_sequence,
            voters: count_role(s, MemberRole::Voter),
            learners: count_role(s, MemberRole::Learner),
            membership_pending: s.membership.pending,
            member: s.member,
            conflicts: s.conflicts,
            followers: s
                .followers
                .iter()
                .map(|f| FollowerGauges {
                    device_id: f.device_id,
                    acked_sequence: f.acked_sequence,
                    lag: f.lag,
                    connected: f.connected,
                })
                .collect(),
        }
    }
}

fn count_role(s: &LibraryStatus, role: MemberRole) -> u64 {
    s.membership.members.iter().filter(|m| m.role == role).count() as u64
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    fn counter(&mut self, name: &str, help: &str, value: &AtomicU64) {
        self.family(name, "counter", help);
        self.sample(name, &[], value.load(Ordering::Relaxed));
    }

    fn histogram(&mut self, name: &str, help: &str, h: &HistogramSnapshot) {
        self.family(name, "histogram", help);
        let bucket = format!("{name}_bucket");
        for (le, count) in &h.buckets {
            let le = if le.is_infinite() { "+Inf".to_owned() } else { le.to_string() };
            self.sample(&bucket, &[("le", &le)], count);
        }
        self.sample(&format!("{name}_sum"), &[], h.sum_seconds);
        self.sample(&format!("{name}_count"), &[], h.count);
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Renders every metric of a node.
pub fn render(m: &Metrics, net: &NetworkStats, libraries: &[LibraryGauges]) -> String {
    let mut o = Out(String::with_capacity(8 * 1024));
    o.counter(
        "lsync_entries_committed_total",
        "Entries committed by this device as leader.",
        &m.entries_committed,
    );
    o.counter(
        "lsync_entries_applied_total",
        "Entries applied by this device as follower.",
        &m.entries_applied,
    );
    o.counter(
        "lsync_reconnects_total",
        "Times a follower found its leader unreachable and backed off.",
        &m.reconnects,
    );
    o.counter("lsync_elections_total", "Elections this device started.", &m.elections);
    o.counter(
        "lsync_pre_vote_requests_total",
        "Pre-vote requests this device sent (one per other voter and round).",
        &m.pre_vote_requests,
    );
    o.counter("lsync_resyncs_total", "Full reconciliations this device ran.", &m.resyncs);
    let restarts = "lsync_actor_restarts_total";
    o.family(
        restarts,
        "counter",
        "Actors and tasks restarted after they stopped unexpectedly (a panic), by kind.",
    );
    for child in lsync_actors::metrics::Child::ALL {
        o.sample(restarts, &[("kind", child.name())], m.restarts.of(child));
    }
    o.counter(
        "lsync_proposals_failed_total",
        "Outbox entries a leader refused for good (kept as failed: lsync outbox list).",
        &m.proposals_failed,
    );
    o.counter(
        "lsync_lease_waits_total",
        "Writes committed as leader that found the leader lease expired and waited for a heartbeat round.",
        &m.lease_waits,
    );
    o.counter(
        "lsync_lease_unconfirmed_total",
        "Of those, writes not answered as committed: the lease was not confirmed in time.",
        &m.lease_unconfirmed,
    );
    let panics = "lsync_task_panics_total";
    o.family(
        panics,
        "counter",
        "One-shot tasks of the actors that panicked, by kind (their waiter got a failure answer).",
    );
    for kind in lsync_actors::metrics::Task::ALL {
        o.sample(panics, &[("kind", kind.name())], m.task_panics.of(kind));
    }
    o.counter(
        "lsync_fetches_served_cached_total",
        "FetchEntries answered as leader from the log cache (another follower read the block).",
        &m.fetches_served_cached,
    );
    o.counter(
        "lsync_fetches_served_storage_total",
        "FetchEntries answered as leader from SQLite.",
        &m.fetches_served_storage,
    );
    o.counter(
        "lsync_fetches_ahead_total",
        "FetchEntries sent as follower ahead of the response before them, on a guess of its end.",
        &m.fetches_ahead,
    );
    o.counter(
        "lsync_fetches_ahead_missed_total",
        "Fetches sent ahead that were dropped: the response before them ended elsewhere.",
        &m.fetches_ahead_missed,
    );
    o.histogram(
        "lsync_fetch_rtt_seconds",
        "Round trip of a FetchEntries request, seen by the follower.",
        &m.fetch_rtt.snapshot(),
    );
    o.histogram(
        "lsync_commit_to_apply_seconds",
        "From the leader's commit to the follower's apply (includes the devices' clock difference).",
        &m.commit_to_apply.snapshot(),
    );

    o.counter(
        "lsync_network_inbound_requests_total",
        "Requests received, rejected ones included.",
        &net.inbound_requests,
    );
    o.counter("lsync_network_outbound_requests_total", "Requests sent.", &net.outbound_requests);
    o.counter(
        "lsync_network_outbound_failures_total",
        "Outbound requests that got no response (dial failure, timeout, closed connection).",
        &net.outbound_failures,
    );
    let rejected = "lsync_network_rejected_requests_total";
    o.family(rejected, "counter", "Inbound requests refused, by reason.");
    for (reason, counter) in [
        ("unauthorized", &net.rejected_unauthorized),
        ("unknown_library", &net.rejected_unknown_library),
        ("bad_request", &net.rejected_bad_request),
        ("malformed", &net.rejected_malformed),
        ("busy", &net.rejected_busy),
        ("guest", &net.rejected_guest),
        ("removed", &net.rejected_removed),
    ] {
        o.sample(rejected, &[("reason", reason)], counter.load(Ordering::Relaxed));
    }
    let answers = "lsync_network_error_answers_total";
    o.family(
        answers,
        "counter",
        "Error answers the library's actors gave to requests that reached them, by code.",
    );
    for (code, label) in lsync_actors::network::ERROR_CODES {
        o.sample(answers, &[("code", label)], net.error_answers_of(code));
    }
    o.counter(
        "lsync_network_connections_established_total",
        "Connections established.",
        &net.connections_established,
    );
    o.counter(
        "lsync_network_connections_closed_total",
        "Connections closed.",
        &net.connections_closed,
    );
    let open = net
        .connections_established
        .load(Ordering::Relaxed)
        .saturating_sub(net.connections_closed.load(Ordering::Relaxed));
    o.family("lsync_network_connections_open", "gauge", "Connections open now.");
    o.sample("lsync_network_connections_open", &[], open);
    o.counter(
        "lsync_network_guest_connections_total",
        "Connections admitted from unknown devices while an invitation was open (they may only present it).",
        &net.guest_connections,
    );
    o.counter(
        "lsync_network_guest_connections_refused_total",
        "Connections from unknown devices refused because 16 were open already.",
        &net.refused_guest_connections,
    );
    o.counter(
        "lsync_network_guest_timeouts_total",
        "Connections from unknown devices closed because they presented no invitation in time.",
        &net.guest_timeouts,
    );
    o.counter(
        "lsync_network_protocol_fallbacks_total",
        "Requests resent with protocol 1.0.0 after the peer refused 2.0.0 (a device to upgrade).",
        &net.protocol_fallbacks,
    );

    let ids: Vec<String> = libraries.iter().map(|l| l.library_id.to_string()).collect();
    let per_library =
        |o: &mut Out, name: &str, help: &str, value: &dyn Fn(&LibraryGauges) -> Option<u64>| {
            o.family(name, "gauge", help);
            for (l, id) in libraries.iter().zip(&ids) {
                if let Some(v) = value(l) {
                    o.sample(name, &[("library", id)], v);
                }
            }
        };
    per_library(&mut o, "lsync_library_is_leader", "1 if this device leads the library.", &|l| {
        Some(u64::from(l.leader))
    });
    per_library(&mut o, "lsync_library_term", "Current leadership term.", &|l| Some(l.term));
    per_library(
        &mut o,
        "lsync_library_last_sequence",
        "Last sequence of this device's sync log.",
        &|l| Some(l.last_sequence),
    );
    per_library(
        &mut o,
        "lsync_library_lag",
        "Follower: entries the leader has (as last heard) that this device has not applied.",
        &|l| l.lag,
    );
    per_library(
        &mut o,
        "lsync_library_applier_stalled",
        "Follower: 1 if the applier stopped on an error that needs the operator.",
        &|l| l.stalled.map(u64::from),
    );
    per_library(
        &mut o,
        "lsync_library_outbox_size",
        "Changes made on this device not yet sequenced by the leader.",
        &|l| Some(l.outbox_size),
    );
    per_library(
        &mut o,
        "lsync_commit_sequence",
        "The highest sequence held by a majority of the voters (a follower: as its leader last said).",
        &|l| Some(l.commit_sequence),
    );
    per_library(
        &mut o,
        "lsync_config_sequence",
        "Sequence of the configuration entry in effect on this device.",
        &|l| Some(l.config_sequence),
    );
    per_library(&mut o, "lsync_voters", "Voters of the configuration in effect.", &|l| {
        Some(l.voters)
    });
    per_library(&mut o, "lsync_learners", "Learners of the configuration in effect.", &|l| {
        Some(l.learners)
    });
    per_library(
        &mut o,
        "lsync_membership_pending",
        "1 while the configuration in effect is not committed (held by a majority) yet.",
        &|l| Some(u64::from(l.membership_pending)),
    );
    per_library(
        &mut o,
        "lsync_library_member",
        "1 if this device is a member of the library (0: it was removed; its copy is read-only).",
        &|l| Some(u64::from(l.member)),
    );
    per_library(
        &mut o,
        "lsync_library_conflicts",
        "Conflicts recorded in this device's copy (every device holds the same; lsync conflicts list).",
        &|l| Some(l.conflicts),
    );
    let per_follower =
        |o: &mut Out, name: &str, help: &str, value: &dyn Fn(&FollowerGauges) -> u64| {
            o.family(name, "gauge", help);
            for (l, id) in libraries.iter().zip(&ids) {
                for f in &l.followers {
                    let device = f.device_id.to_string();
                    o.sample(name, &[("library", id), ("device", &device)], value(f));
                }
            }
        };
    per_follower(
        &mut o,
        "lsync_follower_acked_sequence",
        "Leader: highest sequence the follower acknowledged.",
        &|f| f.acked_sequence,
    );
    per_follower(
        &mut o,
        "lsync_follower_lag",
        "Leader: its last sequence minus the follower's acknowledged one.",
        &|f| f.lag,
    );
    per_follower(
        &mut o,
        "lsync_follower_connected",
        "Leader: 1 if connected to the follower now.",
        &|f| u64::from(f.connected),
    );
    o.0
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};
    use std::time::Duration;

    use super::*;

    fn is_name(s: &str) -> bool {
        let mut chars = s.chars();
        matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }

    /// Parses `name{k="v",...} value`; panics on anything the text format does not allow.
    fn parse_sample(line: &str) -> (String, Vec<(String, String)>, f64) {
        let (series, value) = line.rsplit_once(' ').expect("sample has a value");
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse::<f64>().unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series, Vec::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').unwrap_or_else(|| panic!("unclosed {line:?}"));
                let mut labels = Vec::new();
                let mut rest = body;
                while !rest.is_empty() {
                    let (k, after) = rest.split_once("=\"").expect("label=\"value\"");
                    assert!(is_name(k), "bad label name in {line:?}");
                    let mut value = String::new();
                    let mut chars = after.char_indices();
                    let end = loop {
                        match chars.next().expect("closing quote") {
                            (_, '\\') => match chars.next().expect("escape").1 {
                                'n' => value.push('\n'),
                                c @ ('\\' | '"') => value.push(c),
                                c => panic!("bad escape \\{c} in {line:?}"),
                            },
                            (i, '"') => break i,
                            (_, c) => value.push(c),
                        }
                    };
                    labels.push((k.to_owned(), value));
                    rest = &after[end + 1..];
                    rest = rest.strip_prefix(',').unwrap_or(rest);
                }
                (name, labels)
            }
        };
        assert!(is_name(name), "bad metric name in {line:?}");
        (name.to_owned(), labels, value)
    }

    /// Checks the whole exposition: every sample belongs to a family declared before it by
    /// exactly one HELP and one TYPE, counters end in `_total`, no series repeats, histograms
    /// have increasing `le`, cumulative counts, a `+Inf` bucket equal to `_count`, and `_sum`.
    fn validate(text: &str) -> HashMap<String, f64> {
        assert!(text.ends_with('\n'));
        let mut types: HashMap<String, String> = HashMap::new();
        let mut helps = HashSet::new();
        let mut series = HashMap::new();
        let mut buckets: HashMap<String, Vec<(f64, f64)>> = HashMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap();
                assert!(is_name(name) && helps.insert(name.to_owned()), "{line}");
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
                assert!(kind != "counter" || name.ends_with("_total"), "{line}");
                assert!(types.insert(name.to_owned(), kind.to_owned()).is_none(), "{line}");
                continue;
            }
            assert!(!line.starts_with('#') && !line.is_empty(), "{line:?}");
            let (name, labels, value) = parse_sample(line);
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    name.strip_suffix(s)
                        .filter(|f| types.get(*f).map(String::as_str) == Some("histogram"))
                })
                .unwrap_or(&name)
                .to_owned();
            assert!(types.contains_key(&family) && helps.contains(&family), "undeclared {line}");
            let key = format!("{name}{labels:?}");
            assert!(series.insert(key.clone(), value).is_none(), "repeated series {line}");
            if name.ends_with("_bucket") {
                let le = &labels.iter().find(|(k, _)| k == "le").expect("le label").1;
                let le = if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap() };
                buckets.entry(family).or_default().push((le, value));
            }
        }
        for (family, b) in &buckets {
            assert!(b.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1), "{family}");
            let (le, inf) = *b.last().unwrap();
            assert!(le.is_infinite());
            assert_eq!(Some(&inf), series.get(&format!("{family}_count[]")), "{family}");
            assert!(series.contains_key(&format!("{family}_sum[]")), "{family}");
        }
        series
    }

    #[test]
    fn exposition_is_valid_prometheus_text() {
        let m = Metrics::default();
        Metrics::add(&m.entries_committed, 42);
        Metrics::add(&m.fetches_served_cached, 7);
        Metrics::add(&m.fetches_ahead, 5);
        Metrics::add(&m.fetches_ahead_missed, 1);
        m.task_panics.count(lsync_actors::metrics::Task::Fetch);
        Metrics::add(&m.proposals_failed, 2);
        Metrics::add(&m.lease_waits, 3);
        m.fetch_rtt.observe(Duration::from_micros(300));
        m.fetch_rtt.observe(Duration::from_secs(9));
        m.commit_to_apply.observe(Duration::from_millis(2));
        let net = NetworkStats::default();
        net.rejected_unauthorized.fetch_add(3, Ordering::Relaxed);
        net.connections_established.fetch_add(2, Ordering::Relaxed);
        net.connections_closed.fetch_add(1, Ordering::Relaxed);
        net.rejected_removed.fetch_add(4, Ordering::Relaxed);
        net.guest_connections.fetch_add(6, Ordering::Relaxed);
        net.protocol_fallbacks.fetch_add(2, Ordering::Relaxed);
        net.count_error_answer(lsync_protocol::ErrorCode::StaleTerm);
        let lead = Uuid::from_u128(1);
        let follow = Uuid::from_u128(2);
        let libs = [
            LibraryGauges {
                library_id: lead,
                leader: true,
                term: 3,
                last_sequence: 500,
                lag: None,
                stalled: None,
                outbox_size: 0,
                commit_sequence: 480,
                config_sequence: 7,
                voters: 3,
                learners: 1,
                membership_pending: true,
                member: true,
                conflicts: 4,
                followers: vec![
                    FollowerGauges {
                        device_id: Uuid::from_u128(9),
                        acked_sequence: 450,
                        lag: 50,
                        connected: true,
                    },
                    FollowerGauges {
                        device_id: Uuid::from_u128(8),
                        acked_sequence: 0,
                        lag: 500,
                        connected: false,
                    },
                ],
            },
            LibraryGauges {
                library_id: follow,
                leader: false,
                term: 1,
                last_sequence: 10,
                lag: Some(5),
                stalled: Some(true),
                outbox_size: 0,
                commit_sequence: 10,
                config_sequence: 3,
                voters: 1,
                learners: 2,
                membership_pending: false,
                member: false,
                conflicts: 0,
                followers: vec![],
            },
        ];
        let text = render(&m, &net, &libs);
        let s = validate(&text);
        assert_eq!(s["lsync_entries_committed_total[]"], 42.0);
        assert_eq!(s["lsync_fetches_served_cached_total[]"], 7.0);
        assert_eq!(s["lsync_fetches_served_storage_total[]"], 0.0);
        assert_eq!(s["lsync_fetches_ahead_total[]"], 5.0);
        assert_eq!(s["lsync_fetches_ahead_missed_total[]"], 1.0);
        assert_eq!(s[r#"lsync_task_panics_total[("kind", "fetch")]"#], 1.0);
        assert_eq!(s["lsync_proposals_failed_total[]"], 2.0);
        assert_eq!(s["lsync_lease_waits_total[]"], 3.0);
        assert_eq!(s["lsync_lease_unconfirmed_total[]"], 0.0);
        assert_eq!(s[r#"lsync_task_panics_total[("kind", "serve")]"#], 0.0);
        assert_eq!(s["lsync_fetch_rtt_seconds_count[]"], 2.0);
        assert_eq!(s[r#"lsync_fetch_rtt_seconds_bucket[("le", "0.0005")]"#], 1.0);
        assert_eq!(s[r#"lsync_network_rejected_requests_total[("reason", "unauthorized")]"#], 3.0);
        assert_eq!(s["lsync_network_connections_open[]"], 1.0);
        let lib = |name: &str, id: Uuid| s[&format!("{name}[(\"library\", \"{id}\")]")];
        assert_eq!(lib("lsync_library_last_sequence", lead), 500.0);
        assert_eq!(lib("lsync_library_lag", follow), 5.0);
        assert_eq!(lib("lsync_library_applier_stalled", follow), 1.0);
        let f = format!(
            "lsync_follower_lag[(\"library\", \"{lead}\"), (\"device\", \"{}\")]",
            Uuid::from_u128(8)
        );
        assert_eq!(s[&f], 500.0);
        assert_eq!(s[r#"lsync_network_rejected_requests_total[("reason", "removed")]"#], 4.0);
        assert_eq!(s[r#"lsync_network_rejected_requests_total[("reason", "guest")]"#], 0.0);
        assert_eq!(s["lsync_network_guest_connections_total[]"], 6.0);
        assert_eq!(s["lsync_network_protocol_fallbacks_total[]"], 2.0);
        assert_eq!(s[r#"lsync_network_error_answers_total[("code", "stale_term")]"#], 1.0);
        assert_eq!(s[r#"lsync_network_error_answers_total[("code", "not_leader")]"#], 0.0);
        assert_eq!(lib("lsync_commit_sequence", lead), 480.0);
        assert_eq!(lib("lsync_config_sequence", follow), 3.0);
        assert_eq!(lib("lsync_voters", lead), 3.0);
        assert_eq!(lib("lsync_learners", follow), 2.0);
        assert_eq!(lib("lsync_membership_pending", lead), 1.0);
        assert_eq!(lib("lsync_membership_pending", follow), 0.0);
        assert_eq!(lib("lsync_library_member", follow), 0.0);
        assert_eq!(lib("lsync_library_conflicts", lead), 4.0);
        assert_eq!(lib("lsync_library_conflicts", follow), 0.0);
    }

    #[test]
    fn label_values_are_escaped() {
        let mut o = Out(String::new());
        o.family("x_total", "counter", "x");
        o.sample("x_total", &[("a", "q\"b\\n\nl")], 1);
        let (_, labels, _) = parse_sample(o.0.lines().nth(2).unwrap());
        assert_eq!(labels[0].1, "q\"b\\n\nl");
    }
}
