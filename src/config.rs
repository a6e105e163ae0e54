//! The daemon's configuration: a TOML file, `<data dir>/lsync.toml` by default, written by
//! `lsync init` and read by `lsync run`. Every key is optional; a missing key takes the default
//! below (the same defaults as [`SyncConfig`], [`NetworkConfig`] and [`StorageOptions`]).
//! Unknown keys are refused, so a misspelt key is an error rather than a silently ignored line.
//!
//! ```toml
//! # data_dir = "/var/lib/lsync"           # default: the directory holding this file
//! name = "laptop"                         # default: the data directory's name
//! listen = ["/ip4/0.0.0.0/tcp/7700"]      # libp2p listen addresses (port 0: any free port)
//! # announce = ["/ip4/203.0.113.7/tcp/7700"]  # what other devices dial (default: the listen ones)
//!
//! [control]
//! port = 0                                # control API on 127.0.0.1 (0: any free port)
//!
//! [sync]
//! heartbeat_interval_ms = 30000
//! leader_timeout_ms = 60000
//! notify_window_ms = 100
//! max_entries_per_response = 100
//! backoff_initial_ms = 100
//! backoff_max_ms = 30000
//! ack_every = 1000
//!
//! [network]
//! request_timeout_ms = 10000
//! connection_timeout_ms = 10000
//! idle_connection_timeout_ms = 120000
//! max_frame_bytes = 16777216
//! max_concurrent_streams = 256
//! max_pending_requests = 4096
//!
//! [storage]
//! synchronous = "full"                    # or "normal" (no fsync per commit: see docs/operations.md)
//! busy_timeout_ms = 5000
//!
//! # [models.tag]                          # one table per model type (tag, location), optional
//! # conflict_policy = "reject"            # default "last_writer_wins" (docs/operations.md, "Conflicts")
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use libp2p::Multiaddr;
use serde::{Deserialize, Serialize};

use crate::crates::storage::ConflictPolicy;
use crate::{ModelRegistry, NetworkConfig, StorageOptions, SyncConfig, Synchronous};

/// Name of the configuration file in a data directory.
pub const CONFIG_FILE: &str = "lsync.toml";

/// The default libp2p listen address written by `lsync init`: every interface, TCP port 7700.
pub const DEFAULT_LISTEN: &str = "/ip4/0.0.0.0/tcp/7700";

/// A configuration problem, phrased for the operator (one line: what is wrong, what to do).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "config file {} not found: run `lsync init --data-dir {}` first, or pass --config FILE",
        path.display(),
        path.parent().map(|p| p.display().to_string()).unwrap_or_else(|| ".".into())
    )]
    Missing { path: PathBuf },
    #[error("cannot read config file {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {}{}: {message}: fix that line (see docs/operations.md for every key)", path.display(), line.map(|l| format!(", line {l}")).unwrap_or_default())]
    Parse { path: PathBuf, line: Option<usize>, message: String },
    #[error("config file {}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
}

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the identity, the libraries and the control files live; relative paths are
    /// relative to the config file's directory. Default: the config file's directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// This device's human-readable name. Default: the data directory's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// libp2p listen addresses (multiaddrs). Default: [`DEFAULT_LISTEN`].
    pub listen: Vec<String>,
    /// The addresses other devices are told to dial this one at, replacing the listen
    /// addresses in invitation tokens, in this device's membership entry and in its signed
    /// address hints (a port forwarded by a NAT, a proxy in front of the device). Default:
    /// empty, meaning the listen addresses.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub announce: Vec<String>,
    pub control: ControlSection,
    pub sync: SyncSection,
    pub network: NetworkSection,
    pub storage: StorageSection,
    /// `[models.<model type>]`: per model type (`tag`, `location`) settings. Every device of a
    /// library must use the same: whichever leads decides conflicts.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub models: BTreeMap<String, ModelSection>,
}

/// `[models.<model type>]`: how one model type's concurrent changes are decided.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSection {
    /// `"last_writer_wins"` (the default: field by field, the change made later wins) or
    /// `"reject"` (a change based on an older version that sets a field another device
    /// changed since is refused; docs/operations.md, "Conflicts").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conflict_policy: Option<ConflictPolicy>,
}

/// `[control]`: the local control API.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ControlSection {
    /// TCP port on 127.0.0.1 (the API never listens elsewhere); 0 picks a free port. The
    /// address actually bound is written to `<data dir>/control.addr`. Default 0.
    pub port: u16,
}

/// `[sync]`: timers and limits of the sync actors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SyncSection {
    pub heartbeat_interval_ms: u64,
    pub leader_timeout_ms: u64,
    pub notify_window_ms: u64,
    pub max_entries_per_response: u64,
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    pub ack_every: u64,
}

/// `[network]`: the libp2p transport.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkSection {
    pub request_timeout_ms: u64,
    pub connection_timeout_ms: u64,
    pub idle_connection_timeout_ms: u64,
    pub max_frame_bytes: usize,
    pub max_concurrent_streams: usize,
    pub max_pending_requests: usize,
}

/// `[storage]`: how library databases are opened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageSection {
    /// `"full"` (the default: every commit fsynced, durable against power loss) or `"normal"`
    /// (durable against crashes of the program; a leader's last commits may vanish on power
    /// loss — docs/operations.md, "Durability").
    pub synchronous: String,
    pub busy_timeout_ms: u64,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: None,
            name: None,
            listen: vec![DEFAULT_LISTEN.to_owned()],
            announce: Vec::new(),
            control: ControlSection::default(),
            sync: SyncSection::default(),
            network: NetworkSection::default(),
            storage: StorageSection::default(),
            models: BTreeMap::new(),
        }
    }
}

impl Default for SyncSection {
    fn default() -> Self {
        let d = SyncConfig::default();
        Self {
            heartbeat_interval_ms: ms(d.heartbeat_interval),
            leader_timeout_ms: ms(d.leader_timeout),
            notify_window_ms: ms(d.notify_window),
            max_entries_per_response: d.max_entries_per_response,
            backoff_initial_ms: ms(d.backoff_initial),
            backoff_max_ms: ms(d.backoff_max),
            ack_every: d.ack_every,
        }
    }
}

impl Default for NetworkSection {
    fn default() -> Self {
        let d = NetworkConfig::default();
        Self {
            request_timeout_ms: ms(d.request_timeout),
            connection_timeout_ms: ms(d.connection_timeout),
            idle_connection_timeout_ms: ms(d.idle_connection_timeout),
            max_frame_bytes: d.max_frame,
            max_concurrent_streams: d.max_concurrent_streams,
            max_pending_requests: d.max_pending_requests,
        }
    }
}

impl Default for StorageSection {
    fn default() -> Self {
        let d = StorageOptions::default();
        Self {
            synchronous: match d.synchronous {
                Synchronous::Normal => "normal".into(),
                Synchronous::Full => "full".into(),
            },
            busy_timeout_ms: ms(d.busy_timeout),
        }
    }
}

/// A configuration checked and turned into the node's types.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The file it was read from.
    pub path: PathBuf,
    pub data_dir: PathBuf,
    pub name: String,
    pub listen: Vec<Multiaddr>,
    /// What other devices are told to dial; empty: the listen addresses.
    pub announce: Vec<Multiaddr>,
    pub control_port: u16,
    pub sync: SyncConfig,
    pub network: NetworkConfig,
    pub storage: StorageOptions,
    /// The built-in models with the conflict policies of `[models.*]`.
    pub registry: ModelRegistry,
}

impl Config {
    /// Reads and checks the configuration file at `path`.
    pub fn load(path: &Path) -> Result<Resolved, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ConfigError::Missing { path: path.to_path_buf() })
            }
            Err(source) => return Err(ConfigError::Read { path: path.to_path_buf(), source }),
        };
        let config: Config = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            line: e.span().map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1),
            message: e.message().trim().replace('\n', " "),
        })?;
        config.resolve(path)
    }

    /// The TOML text of this configuration.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a configuration always serializes")
    }

    /// Checks the values and builds the node's configuration; `path` is where it was read
    /// from (relative `data_dir`s are relative to its directory).
    pub fn resolve(&self, path: &Path) -> Result<Resolved, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid { path: path.to_path_buf(), message };
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let base = if base.as_os_str().is_empty() { PathBuf::from(".") } else { base };
        let data_dir = match &self.data_dir {
            Some(d) if d.is_absolute() => d.clone(),
            Some(d) => base.join(d),
            None => base,
        };
        if self.listen.is_empty() {
            return Err(invalid(format!(
                "`listen` is empty: give at least one address, e.g. listen = [\"{DEFAULT_LISTEN}\"]"
            )));
        }
        let mut listen = Vec::new();
        for a in &self.listen {
            let addr: Multiaddr = a.parse().map_err(|e| {
                invalid(format!(
                    "bad listen address {a:?} ({e}): use a multiaddr such as \"{DEFAULT_LISTEN}\""
                ))
            })?;
            listen.push(addr);
        }
        let mut announce = Vec::new();
        for a in &self.announce {
            let addr: Multiaddr = a.parse().map_err(|e| {
                invalid(format!(
                    "bad announce address {a:?} ({e}): use a multiaddr such as                      \"/ip4/192.168.1.10/tcp/7700\", or remove `announce`"
                ))
            })?;
            announce.push(addr);
        }
        let s = &self.sync;
        for (key, v) in [
            ("sync.heartbeat_interval_ms", s.heartbeat_interval_ms),
            ("sync.leader_timeout_ms", s.leader_timeout_ms),
            ("sync.max_entries_per_response", s.max_entries_per_response),
            ("sync.backoff_initial_ms", s.backoff_initial_ms),
            ("sync.backoff_max_ms", s.backoff_max_ms),
            ("sync.ack_every", s.ack_every),
            ("network.request_timeout_ms", self.network.request_timeout_ms),
            ("network.connection_timeout_ms", self.network.connection_timeout_ms),
            ("network.max_frame_bytes", self.network.max_frame_bytes as u64),
            ("network.max_concurrent_streams", self.network.max_concurrent_streams as u64),
            ("network.max_pending_requests", self.network.max_pending_requests as u64),
        ] {
            if v == 0 {
                return Err(invalid(format!("`{key}` must be greater than 0")));
            }
        }
        let max_block = lsync_actors::limits::MAX_BLOCK;
        if s.max_entries_per_response > max_block {
            return Err(invalid(format!(
                "`sync.max_entries_per_response` is {}: at most {max_block} (the leader's log \
                 cache block)",
                s.max_entries_per_response
            )));
        }
        if s.backoff_max_ms < s.backoff_initial_ms {
            return Err(invalid(
                "`sync.backoff_max_ms` must be at least `sync.backoff_initial_ms`".into(),
            ));
        }
        if s.leader_timeout_ms <= s.heartbeat_interval_ms {
            return Err(invalid(
                "`sync.leader_timeout_ms` must be greater than `sync.heartbeat_interval_ms` \
                 (a follower would call elections while its leader is alive)"
                    .into(),
            ));
        }
        let synchronous = match self.storage.synchronous.to_ascii_lowercase().as_str() {
            "normal" => Synchronous::Normal,
            "full" => Synchronous::Full,
            other => {
                return Err(invalid(format!(
                    "`storage.synchronous` is {other:?}: use \"normal\" or \"full\""
                )))
            }
        };
        let sync = SyncConfig {
            heartbeat_interval: Duration::from_millis(s.heartbeat_interval_ms),
            leader_timeout: Duration::from_millis(s.leader_timeout_ms),
            notify_window: Duration::from_millis(s.notify_window_ms),
            max_entries_per_response: s.max_entries_per_response,
            backoff_initial: Duration::from_millis(s.backoff_initial_ms),
            backoff_max: Duration::from_millis(s.backoff_max_ms),
            ack_every: s.ack_every,
            ..SyncConfig::default()
        }
        // the proposer refuses a proposal whose frame would exceed the network's limit, and
        // responses are capped at half of it
        .for_frame(self.network.max_frame_bytes);
        if let Some(reason) = sync.check_frame_limits() {
            return Err(invalid(format!("`network.max_frame_bytes`: {reason}")));
        }
        let n = &self.network;
        let network = NetworkConfig {
            listen: listen.clone(),
            request_timeout: Duration::from_millis(n.request_timeout_ms),
            connection_timeout: Duration::from_millis(n.connection_timeout_ms),
            idle_connection_timeout: Duration::from_millis(n.idle_connection_timeout_ms),
            max_frame: n.max_frame_bytes,
            max_concurrent_streams: n.max_concurrent_streams,
            max_pending_requests: n.max_pending_requests,
            ..NetworkConfig::default()
        };
        let storage = StorageOptions {
            synchronous,
            busy_timeout: Duration::from_millis(self.storage.busy_timeout_ms),
        };
        let mut registry = ModelRegistry::with_builtin();
        for (model_type, section) in &self.models {
            let known = registry.handler(model_type).is_some()
                && !model_type.starts_with(lsync_protocol::RESERVED_MODEL_PREFIX);
            if !known {
                return Err(invalid(format!(
                    "`[models.{model_type}]`: no such model type (this build has tag and location)"
                )));
            }
            if let Some(policy) = section.conflict_policy {
                registry.set_policy(model_type.clone(), policy);
            }
        }
        let name = self.name.clone().unwrap_or_else(|| {
            std::fs::canonicalize(&data_dir)
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or_else(|| "lsync".into())
        });
        Ok(Resolved {
            path: path.to_path_buf(),
            data_dir,
            name,
            listen,
            announce,
            control_port: self.control.port,
            sync,
            network,
            storage,
            registry,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Resolved, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CONFIG_FILE);
        std::fs::write(&path, text).unwrap();
        Config::load(&path)
    }

    #[test]
    fn empty_file_takes_every_default() {
        let r = load("").unwrap();
        assert_eq!(r.listen, vec![DEFAULT_LISTEN.parse::<Multiaddr>().unwrap()]);
        assert_eq!(r.control_port, 0);
        let d = SyncConfig::default();
        assert_eq!(r.sync.heartbeat_interval, d.heartbeat_interval);
        assert_eq!(r.sync.leader_timeout, d.leader_timeout);
        assert_eq!(r.sync.backoff_max, d.backoff_max);
        assert_eq!(r.network.max_frame, NetworkConfig::default().max_frame);
        assert_eq!(r.storage.busy_timeout, StorageOptions::default().busy_timeout);
    }

    #[test]
    fn default_config_round_trips_through_toml() {
        let c = Config { name: Some("laptop".into()), ..Config::default() };
        let back: Config = toml::from_str(&c.to_toml()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn announce_defaults_to_nothing_and_is_parsed_when_given() {
        assert!(load("").unwrap().announce.is_empty());
        let r = load("announce = [\"/ip4/127.0.0.1/tcp/9100\"]\n").unwrap();
        assert_eq!(r.announce, vec!["/ip4/127.0.0.1/tcp/9100".parse::<Multiaddr>().unwrap()]);
        let c = Config { announce: vec!["/ip4/127.0.0.1/tcp/9100".into()], ..Config::default() };
        let back: Config = toml::from_str(&c.to_toml()).unwrap();
        assert_eq!(back, c);
        let bad = load("announce = [\"nope\"]\n").unwrap_err().to_string();
        assert!(bad.contains("bad announce address \"nope\""), "{bad}");
    }

    /// Responses follow the frame limit: half of it, so that the largest change (also half)
    /// goes alone with its envelope; a frame limit too small for that is refused.
    #[test]
    fn the_response_cap_follows_the_frame_limit() {
        let default = load("").unwrap();
        assert_eq!(default.sync.max_frame, lsync_protocol::DEFAULT_MAX_FRAME);
        assert_eq!(default.sync.max_response_bytes, lsync_protocol::DEFAULT_MAX_FRAME / 2);
        let small = load("[network]\nmax_frame_bytes = 1048576\n").unwrap();
        assert_eq!(small.network.max_frame, 1 << 20);
        assert_eq!(small.sync.max_frame, 1 << 20);
        assert_eq!(small.sync.max_response_bytes, 1 << 19);
        assert_eq!(small.sync.check_frame_limits(), None);
        let tiny = load("[network]\nmax_frame_bytes = 1024\n").unwrap_err().to_string();
        assert!(
            tiny.contains("network.max_frame_bytes") && tiny.contains("at least 4096"),
            "{tiny}"
        );
        assert!(load("[network]\nmax_frame_bytes = 4096\n").is_ok());
    }

    #[test]
    fn a_models_conflict_policy_is_set_and_a_bad_one_refused() {
        let r = load("").unwrap();
        assert_eq!(r.registry.policy("tag"), ConflictPolicy::LastWriterWins);
        let r = load("[models.tag]\nconflict_policy = \"reject\"\n").unwrap();
        assert_eq!(r.registry.policy("tag"), ConflictPolicy::Reject);
        assert_eq!(r.registry.policy("location"), ConflictPolicy::LastWriterWins);
        let bad = load("[models.tag]\nconflict_policy = \"first\"\n").unwrap_err().to_string();
        assert!(bad.contains("line 2") && bad.contains("reject"), "{bad}");
        let unknown = load("[models.album]\nconflict_policy = \"reject\"\n").unwrap_err();
        assert!(unknown.to_string().contains("`[models.album]`: no such model type"), "{unknown}");
        let own = load("[models.\"lsync.conflict\"]\n").unwrap_err().to_string();
        assert!(own.contains("no such model type"), "{own}");
        let mut c = Config::default();
        c.models
            .insert("tag".into(), ModelSection { conflict_policy: Some(ConflictPolicy::Reject) });
        let back: Config = toml::from_str(&c.to_toml()).unwrap();
        assert_eq!(back, c);
        assert!(!Config::default().to_toml().contains("models"));
    }

    #[test]
    fn errors_are_one_line_and_say_what_to_do() {
        let bad_addr = load("listen = [\"tcp://nope\"]").unwrap_err().to_string();
        assert!(bad_addr.contains("bad listen address \"tcp://nope\""), "{bad_addr}");
        let unknown = load("[sync]\nheartbeat_ms = 5\n").unwrap_err().to_string();
        assert!(unknown.contains("line 2") && unknown.contains("heartbeat_ms"), "{unknown}");
        let zero = load("[sync]\nack_every = 0\n").unwrap_err().to_string();
        assert!(zero.contains("sync.ack_every"), "{zero}");
        let big = load("[sync]\nmax_entries_per_response = 1025\n").unwrap_err().to_string();
        assert!(big.contains("at most 1024"), "{big}");
        assert!(load("[sync]\nmax_entries_per_response = 1024\n").is_ok());
        let missing = Config::load(Path::new("/nonexistent/lsync.toml")).unwrap_err().to_string();
        assert!(missing.contains("lsync init --data-dir /nonexistent"), "{missing}");
        for e in [bad_addr, unknown, zero, big, missing] {
            assert!(!e.contains('\n'), "{e}");
        }
    }
}
