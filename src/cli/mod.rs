//! Command-line interface: `lsync demo`, the daemon (`init`, `run`) and the client commands
//! that talk to a running daemon through its control API.

mod client;
mod commands;
mod daemon;
mod demo;
mod progress;
mod status;
mod verify;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use lsync::control::api::{
    ChangeRequest, DeviceJson, DEFAULT_CONFLICT_LIMIT, DEFAULT_LOG_LIMIT, MAX_CONFLICT_LIMIT,
    MAX_INVITE_EXPIRY_MS, MAX_LOG_LIMIT,
};
use uuid::Uuid;

use self::client::Client;

/// Environment variable naming the data directory when --data-dir is not given.
const DATA_DIR_ENV: &str = "LSYNC_DATA_DIR";
/// Data directory when neither --data-dir nor LSYNC_DATA_DIR is given.
const DEFAULT_DATA_DIR: &str = "lsync-data";

/// lsync keeps a library (tags, locations, …) identical across a user's devices: the leader
/// commits every change with an entry in a gapless sync log and pushes a notification at once;
/// followers fetch, apply in order and acknowledge.
///
/// On a device: `lsync init`, then `lsync run` (the daemon); the other commands talk to the
/// running daemon through its local control API.
#[derive(Debug, Parser)]
#[command(name = "lsync", version, about, long_about)]
pub struct Cli {
    /// The device's data directory: identity, config (lsync.toml), libraries, control token.
    /// Default: $LSYNC_DATA_DIR, else ./lsync-data.
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

impl Cli {
    /// Whether the process logs to stderr: every command but `demo`, whose nodes log to a file
    /// in its directory so that the terminal tells its story.
    pub fn logs_to_stderr(&self) -> bool {
        !matches!(self.command, Command::Demo { .. })
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a leader and followers on 127.0.0.1 in temporary directories, write changes at a
    /// steady rate, show each device's role, sequence and lag live, stop a follower and bring
    /// it back (it catches up, with a progress bar), stop the leader (another is elected), and
    /// check that every device ends with identical tables and logs holding every change the
    /// demo wrote exactly once (exit status 0 only if so). The nodes' logs go to demo.log in
    /// the demo's directory.
    Demo {
        /// Number of followers.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=16))]
        followers: u16,
        /// Number of changes the leader commits.
        #[arg(long, default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
        changes: u64,
        /// Keep the data directories in DIR (each library at DIR/<device>/libraries/<uuid>.db).
        #[arg(long, value_name = "DIR")]
        keep: Option<PathBuf>,
        /// Print a machine-readable summary on stdout instead of the live view.
        #[arg(long)]
        json: bool,
    },
    /// Create this device's identity (device id + libp2p key) and its config file
    /// (DIR/lsync.toml) in the data directory; print its ids and listen addresses.
    /// Running it again keeps both (--force rewrites the config, never the identity).
    Init {
        /// The device's name, shown to the other devices (default: the directory's name).
        #[arg(long)]
        name: Option<String>,
        /// libp2p listen address, a multiaddr (repeatable). Default /ip4/0.0.0.0/tcp/7700;
        /// port 0 picks a free port at every start.
        #[arg(long, value_name = "MULTIADDR")]
        listen: Vec<String>,
        /// Port of the control API on 127.0.0.1 (0: a free port, written to DIR/control.addr).
        #[arg(long, default_value_t = 0, value_name = "PORT")]
        control_port: u16,
        /// Rewrite an existing config file.
        #[arg(long)]
        force: bool,
    },
    /// Run the daemon: the node (its libraries, replication over libp2p) and the control API
    /// on 127.0.0.1, guarded by the token in DIR/control.token (kept across restarts). Logs go
    /// to stderr (RUST_LOG=info for more); a follower catching up shows a progress bar. Stops
    /// cleanly on Ctrl-C or SIGTERM.
    Run {
        /// Config file (default: DIR/lsync.toml). Its `data_dir` key, if any, names the data
        /// directory; else the file's own directory is.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Create, join and list libraries; invite, remove and list member devices.
    #[command(subcommand)]
    Library(LibraryCommand),
    /// Write a change to a library on any device (a follower proposes it to the leader): MODEL
    /// (tag, location) and the record as JSON, e.g. `lsync put tag '{"id":"t1","name":"holiday"}'`.
    ///
    /// Exit status: 0 committed; 3 queued (no leader reachable: it commits once one is) or
    /// pending (`--durability majority` not held by a majority in time: it commits once); 2
    /// refused (nothing was done); 4 unknown (the answer was lost: it may or may not be
    /// committed; a line on stdout names the proposal id, which `lsync status --proposal ID`
    /// follows and `--proposal-id ID` retries safely); 5 too large.
    Put {
        /// The library (default: the daemon's only library).
        #[arg(long, value_name = "ID")]
        library: Option<Uuid>,
        /// What the change does.
        #[arg(long = "change", value_enum, default_value_t = ChangeKind::Insert)]
        change: ChangeKind,
        /// The record's id (default: the "id" field of the JSON; required for a delete
        /// without JSON).
        #[arg(long, value_name = "ID")]
        record_id: Option<String>,
        /// Print the daemon's answer as JSON ({status, first_sequence, last_sequence,
        /// proposal_id}).
        #[arg(long)]
        json: bool,
        /// The write's proposal id (default: a new random one). The committed entries carry
        /// it; running the command again with the same id never commits the change twice (it
        /// answers what became of the first), so a script whose `lsync put` exited 4 may retry
        /// it with the id that was printed.
        #[arg(long, value_name = "UUID")]
        proposal_id: Option<Uuid>,
        /// `local` (default): answered once committed on the leader's disk; `majority`:
        /// answered once a majority of the voters hold it — its sequence is final —, else
        /// `pending` after the request timeout (docs/operations.md, "Durability").
        #[arg(long, value_enum, default_value_t = DurabilityArg::Local)]
        durability: DurabilityArg,
        /// Model type: tag or location.
        model: String,
        /// The whole record as a JSON object (omit for a delete).
        record: Option<String>,
    },
    /// The control API's token (DIR/control.token, kept across restarts of the daemon).
    #[command(subcommand)]
    Token(TokenCommand),
    /// This device's outbox: writes waiting for a leader, and writes a leader refused for good.
    #[command(subcommand)]
    Outbox(OutboxCommand),
    /// Conflicts between concurrent edits, as the leader decided them by each model's policy
    /// (docs/operations.md, "Conflicts").
    #[command(subcommand)]
    Conflicts(ConflictsCommand),
    /// Tags (a convenience over `lsync put tag`; the same exit statuses).
    #[command(subcommand)]
    Tag(TagCommand),
    /// Show the library's sync log, oldest first.
    Log {
        /// The library (default: the daemon's only library).
        #[arg(long, value_name = "ID")]
        library: Option<Uuid>,
        /// Show entries after this sequence.
        #[arg(long, default_value_t = 0)]
        since: u64,
        /// At most this many entries (the daemon caps it at 1000).
        #[arg(long, default_value_t = DEFAULT_LOG_LIMIT, value_parser = clap::value_parser!(u64).range(1..=MAX_LOG_LIMIT))]
        limit: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check a library's database read-only, whether or not the daemon runs: sequences gapless
    /// from 1, the hash chain end to end, and the model tables equal to the replay of the log
    /// (tables that bulk jobs write locally are excluded and named). Exit status 1 if anything
    /// is wrong, naming the first bad sequence.
    Verify {
        /// The library (default: the data directory's only library).
        #[arg(long, value_name = "ID")]
        library: Option<Uuid>,
    },
    /// Show this device (ids, addresses) and each library: role, term, last and commit
    /// sequences, this device's place in the configuration (voter, learner, or no longer a
    /// member), the members and a pending change; on a leader every follower's role, acked
    /// sequence, lag and connection; on a follower its applier state, the leader's last
    /// sequence and catch-up progress.
    ///
    /// With --proposal ID: what became of a write that answered `queued as proposal ID` —
    /// committed (exit status 0), still queued (3), or not known on this device (4).
    Status {
        /// Refresh continuously (progress bars on a terminal; with --json, one JSON line per
        /// refresh).
        #[arg(long, conflicts_with = "proposal")]
        watch: bool,
        /// Tell what became of this proposal (the id `lsync put` printed).
        #[arg(long, value_name = "ID")]
        proposal: Option<Uuid>,
        /// With --proposal: the library (default: the daemon's only library).
        #[arg(long, value_name = "ID", requires = "proposal")]
        library: Option<Uuid>,
        /// Print the daemon's JSON.
        #[arg(long)]
        json: bool,
        /// Refresh interval of --watch, in milliseconds.
        #[arg(long, default_value_t = 500, value_name = "MS")]
        interval_ms: u64,
    },
}

#[derive(Debug, Subcommand)]
enum LibraryCommand {
    /// Create a library led by this device.
    ///
    /// Prints its id and how to add a device (`lsync library invite` here, `lsync library
    /// join TOKEN` there).
    Create {
        /// Print JSON ({library_id, leader}).
        #[arg(long)]
        json: bool,
    },
    /// On any member: invite a new device; prints a one-line token as the last line.
    ///
    /// Run `lsync library join TOKEN` on the new device. The token is single use and
    /// expires; this device keeps only a hash of its secret. While an invitation is open (and
    /// 10 minutes after it expired or was used) this device accepts connections from unknown
    /// devices, which may only present an invitation.
    Invite {
        /// The library (default: the daemon's only library).
        #[arg(long, value_name = "ID")]
        library: Option<Uuid>,
        /// The new device stays a learner for good: it receives the log and may write, but
        /// never votes nor leads (e.g. a phone that is mostly offline).
        #[arg(long)]
        learner: bool,
        /// How long the invitation is accepted: a number with a unit, ms, s, m, h or d
        /// (at most 7 days).
        #[arg(long, default_value = "10m", value_name = "DURATION", value_parser = parse_duration)]
        expires: Duration,
        /// Print one JSON object ({library_id, token, expires_at_ms, learner}) on one line.
        #[arg(long)]
        json: bool,
    },
    /// On a new device: `lsync library join TOKEN`, the token `lsync library invite` printed.
    ///
    /// The device joins as a learner and catches up (`lsync status --watch` shows it); it
    /// prints whether the change that added it is committed, or pending (exit status 3: in use,
    /// not yet held by a majority of the voters). For scripted setups, the old form
    /// `--library ID --leader-device-id D --leader-peer-id P --leader-addr A` still works
    /// once `lsync library add-device` ran on a member (it goes through the log too).
    Join {
        /// The invitation token (the last line `lsync library invite` printed).
        #[arg(value_name = "TOKEN", conflicts_with_all = ["library", "leader_device_id", "leader_peer_id", "leader_addrs", "leader_name", "members"])]
        token: Option<String>,
        /// Scripted form: the library.
        #[arg(long, value_name = "ID", required_unless_present = "token")]
        library: Option<Uuid>,
        /// Scripted form: the leader's device id.
        #[arg(long, required_unless_present = "token")]
        leader_device_id: Option<Uuid>,
        /// Scripted form: the leader's peer id.
        #[arg(long, required_unless_present = "token")]
        leader_peer_id: Option<String>,
        /// Scripted form: the leader's address, a multiaddr (repeatable).
        #[arg(long = "leader-addr", value_name = "MULTIADDR", required_unless_present = "token")]
        leader_addrs: Vec<String>,
        /// Scripted form: the leader's name.
        #[arg(long, default_value = "")]
        leader_name: String,
        /// Scripted form: another member device, as DEVICE_ID,PEER_ID,MULTIADDR (repeatable).
        #[arg(long = "member", value_name = "DEVICE_ID,PEER_ID,MULTIADDR")]
        members: Vec<String>,
        /// Print JSON ({library_id, config_sequence, committed, leader}).
        #[arg(long)]
        json: bool,
    },
    /// For scripted setups: on any member, add a device by its ids (through the log).
    ///
    /// `lsync library invite` needs no ids copied by hand. This adds a device as a learner,
    /// with the ids and address `lsync status` prints on it; the change goes through the
    /// library's log like every membership change (exit status 3 while pending). Then run the
    /// scripted `lsync library join` on that device.
    AddDevice {
        /// The library (default: the daemon's only library).
        #[arg(long, value_name = "ID")]
        library: Option<Uuid>,
        #[arg(long)]
        device_id: Uuid,
        #[arg(long)]
        peer_id: String,
        /// Its address, a multiaddr such as /ip4/192.168.1.20/tcp/7700 (repeatable).
        #[arg(long = "addr", value_name = "MULTIADDR", required = true)]
        addrs: Vec<String>,
        #[arg(long, default_value = "")]
        name: String,
    },
    /// On any member (forwarded to the leader): remove a device from the library.
    ///
    /// Every device refuses it as soon as it applies the change; the removed device keeps its
    /// copy, read-only. A lost or stolen device is cut off by this one command. Exit status 3:
    /// pending (in a library of two voters, removing an unreachable device stays pending).
    RemoveDevice {
        /// The library (default: the daemon's only library).
        #[arg(long, value_name = "ID")]
        library: Option<Uuid>,
        /// The device to remove (`lsync library members` lists them).
        #[arg(value_name = "DEVICE")]
        device: Uuid,
    },
    /// On any member: make a device a voter, a learner, or let the leader decide (auto).
    ///
    /// `auto`: the leader keeps the number of voters odd (1, 2, 3, then 5); `learner`: stays a
    /// learner for good (a voter is demoted); `voter`: promoted once caught up, whatever the
    /// count. Exit status 3: pending.
    SetRole {
        /// The library (default: the daemon's only library).
        #[arg(long, value_name = "ID")]
        library: Option<Uuid>,
        /// The device (`lsync library members` lists them).
        #[arg(value_name = "DEVICE")]
        device: Uuid,
        /// auto, learner or voter.
        #[arg(value_enum)]
        role: RoleArg,
    },
    /// UNSAFE: make a new configuration when a majority of the voters is gone for good.
    ///
    /// For a library whose majority of voters is gone for good (e.g. two of three laptops
    /// lost): on a surviving device, make a new configuration from what this device
    /// holds, with VOTERS (this device among them) as the only voters. Entries only the lost
    /// devices held are lost; never run it while the other devices may be alive (like etcd's
    /// --force-new-cluster). See docs/operations.md, "Quorum lost for good".
    ForceReconfigure {
        /// The library.
        #[arg(long, value_name = "ID")]
        library: Uuid,
        /// The voters of the new configuration, comma-separated device ids (this device
        /// among them).
        #[arg(long, value_name = "DEV,DEV…", value_delimiter = ',', required = true)]
        voters: Vec<Uuid>,
        /// Confirms that the majority of voters is gone for good and that what only they held
        /// may be lost.
        #[arg(long)]
        i_understand_this_is_unsafe: bool,
    },
    /// The configuration in effect: members, roles, and whether a change is pending.
    ///
    /// Each member's device id, name, role (voter or learner) and preference, the
    /// configuration entry, and whether it is pending (in use, not yet held by a majority of
    /// the voters).
    Members {
        /// The library (default: the daemon's only library).
        #[arg(long, value_name = "ID")]
        library: Option<Uuid>,
        #[arg(long)]
        json: bool,
    },
    /// List this device's libraries with its role in each.
    List {
        #[arg(long)]
        json: bool,
    },
}

/// A role preference on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum RoleArg {
    Auto,
    Learner,
    Voter,
}

impl RoleArg {
    fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Learner => "learner",
            Self::Voter => "voter",
        }
    }
}

/// Parses `10m`, `30s`, `500ms`, `2h`, `7d` (bounded by the API's 7 days).
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| {
        format!("bad duration {text:?}: use a number and a unit, e.g. 10m, 30s, 2h")
    })?;
    let ms = match unit.trim() {
        "ms" => Some(n),
        "s" => n.checked_mul(1_000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "d" => n.checked_mul(86_400_000),
        "" => return Err(format!("bad duration {text:?}: give a unit, e.g. {n}m or {n}s")),
        other => return Err(format!("bad duration unit {other:?}: use ms, s, m, h or d")),
    };
    match ms {
        Some(ms) if ms > 0 && ms <= MAX_INVITE_EXPIRY_MS => Ok(Duration::from_millis(ms)),
        _ => Err(format!("bad duration {text:?}: between 1ms and 7d")),
    }
}

#[derive(Debug, Subcommand)]
enum ConflictsCommand {
    /// List the conflicts recorded in this device's copy (every device holds the same), the
    /// most recently decided first: the record, the fields, both values and what won.
    List {
        /// The library (default: the daemon's only library).
        #[arg(long, value_name = "ID")]
        library: Option<Uuid>,
        /// At most this many (the daemon caps it at 1000).
        #[arg(long, default_value_t = DEFAULT_CONFLICT_LIMIT, value_parser = clap::value_parser!(u64).range(1..=MAX_CONFLICT_LIMIT))]
        limit: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum OutboxCommand {
    /// List the entries (queued and failed), oldest first; exit status 3 if any failed.
    List {
        #[arg(long, value_name = "ID")]
        library: Option<Uuid>,
        #[arg(long)]
        json: bool,
    },
    /// Deliver a failed entry again (same proposal id: committed at most once).
    Retry {
        #[arg(long, value_name = "ID")]
        library: Option<Uuid>,
        /// The proposal id (`lsync outbox list` shows it).
        proposal: Uuid,
    },
    /// Give a failed entry up for good (a queued one is never discarded).
    Discard {
        #[arg(long, value_name = "ID")]
        library: Option<Uuid>,
        /// The proposal id (`lsync outbox list` shows it).
        proposal: Uuid,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Replace the token: a running daemon uses the new one at once and refuses the old one;
    /// with no daemon running, the file is rewritten and the next start uses it.
    Rotate,
}

/// `--durability` of a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum DurabilityArg {
    Local,
    Majority,
}

impl DurabilityArg {
    fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Majority => "majority",
        }
    }
}

#[derive(Debug, Subcommand)]
enum TagCommand {
    /// Add a tag: `lsync tag add holiday --color '#ff8800'`.
    Add {
        #[arg(long, value_name = "ID")]
        library: Option<Uuid>,
        /// The tag's id (default: a new uuid).
        #[arg(long)]
        id: Option<String>,
        #[arg(long)]
        color: Option<String>,
        /// Print the daemon's answer as JSON ({status, first_sequence, last_sequence,
        /// proposal_id}).
        #[arg(long)]
        json: bool,
        /// The write's proposal id (default: a new random one); as `lsync put --proposal-id`:
        /// the same id again is never committed twice.
        #[arg(long, value_name = "UUID")]
        proposal_id: Option<Uuid>,
        /// As `lsync put --durability`.
        #[arg(long, value_enum, default_value_t = DurabilityArg::Local)]
        durability: DurabilityArg,
        name: String,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ChangeKind {
    Insert,
    Update,
    /// Sets only the fields the JSON names (docs/architecture.md, "Field-level changes").
    Patch,
    Delete,
}

/// The exit status of a command that failed with `e`: [`commands::EXIT_UNKNOWN`] when a change
/// may or may not have been carried out, [`commands::EXIT_TOO_LARGE`] when it was refused for
/// its size, else [`commands::EXIT_ERROR`] (nothing was done).
pub fn exit_status(e: &anyhow::Error) -> ExitCode {
    let code = match e.downcast_ref::<client::RequestError>().map(|r| r.failure) {
        Some(client::Failure::Unknown) => commands::EXIT_UNKNOWN,
        Some(client::Failure::TooLarge) => commands::EXIT_TOO_LARGE,
        Some(client::Failure::NotDone) | None => commands::EXIT_ERROR,
    };
    ExitCode::from(code)
}

fn data_dir(given: Option<PathBuf>) -> PathBuf {
    given
        .or_else(|| std::env::var_os(DATA_DIR_ENV).filter(|v| !v.is_empty()).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR))
}

fn parse_member(text: &str) -> anyhow::Result<DeviceJson> {
    let mut parts = text.splitn(3, ',');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(d), Some(p), Some(a)) => Ok(DeviceJson {
            device_id: d.trim().parse().map_err(|e| {
                anyhow::anyhow!("bad --member {text:?}: device id {d:?} is not a uuid ({e})")
            })?,
            peer_id: p.trim().to_owned(),
            addresses: vec![a.trim().to_owned()],
            name: String::new(),
        }),
        _ => anyhow::bail!("bad --member {text:?}: use DEVICE_ID,PEER_ID,MULTIADDR"),
    }
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let dir = data_dir(cli.data_dir);
    match cli.command {
        Command::Demo { followers, changes, keep, json } => {
            demo::run(demo::DemoArgs { followers: followers as usize, changes, keep, json })
        }
        Command::Init { name, listen, control_port, force } => {
            daemon::init(daemon::InitArgs { data_dir: dir, name, listen, control_port, force })
        }
        Command::Run { config } => daemon::run(dir, config),
        Command::Library(cmd) => {
            // refused before anything else, whether a daemon runs or not
            if let LibraryCommand::ForceReconfigure { i_understand_this_is_unsafe: false, .. } =
                &cmd
            {
                anyhow::bail!(lsync::control::api::FORCE_RECONFIGURE_REFUSED);
            }
            let client = Client::connect(&dir)?;
            match cmd {
                LibraryCommand::Create { json } => commands::library_create(&client, json),
                LibraryCommand::Invite { library, learner, expires, json } => {
                    let library = commands::resolve_library(&client, library)?;
                    commands::library_invite(&client, library, learner, expires, json)
                }
                LibraryCommand::Join { token: Some(token), json, .. } => {
                    commands::library_join_token(&client, &token, json)
                }
                LibraryCommand::Join {
                    token: None,
                    library,
                    leader_device_id,
                    leader_peer_id,
                    leader_addrs,
                    leader_name,
                    members,
                    json,
                } => {
                    let (Some(library), Some(leader_device_id), Some(leader_peer_id)) =
                        (library, leader_device_id, leader_peer_id)
                    else {
                        anyhow::bail!(
                            "give the invitation token (`lsync library join TOKEN`), or \
                             --library, --leader-device-id, --leader-peer-id and --leader-addr"
                        );
                    };
                    let members =
                        members.iter().map(|m| parse_member(m)).collect::<anyhow::Result<_>>()?;
                    let leader = DeviceJson {
                        device_id: leader_device_id,
                        peer_id: leader_peer_id,
                        addresses: leader_addrs,
                        name: leader_name,
                    };
                    commands::library_join(&client, library, leader, members, json)
                }
                LibraryCommand::AddDevice { library, device_id, peer_id, addrs, name } => {
                    let library = commands::resolve_library(&client, library)?;
                    commands::library_add_device(
                        &client,
                        library,
                        DeviceJson { device_id, peer_id, addresses: addrs, name },
                    )
                }
                LibraryCommand::RemoveDevice { library, device } => {
                    let library = commands::resolve_library(&client, library)?;
                    commands::library_remove_device(&client, library, device)
                }
                LibraryCommand::SetRole { library, device, role } => {
                    let library = commands::resolve_library(&client, library)?;
                    commands::library_set_role(&client, library, device, role.as_str())
                }
                LibraryCommand::ForceReconfigure { library, voters, .. } => {
                    commands::library_force_reconfigure(&client, library, voters)
                }
                LibraryCommand::Members { library, json } => {
                    let library = commands::resolve_library(&client, library)?;
                    commands::library_members(&client, library, json)
                }
                LibraryCommand::List { json } => commands::library_list(&client, json),
            }
        }
        Command::Put {
            library,
            change,
            record_id,
            json,
            proposal_id,
            durability,
            model,
            record,
        } => {
            let data = match &record {
                Some(text) => serde_json::from_str(text).map_err(|e| {
                    anyhow::anyhow!("the record is not valid JSON ({e}): quote it, e.g. '{{\"id\":\"t1\",\"name\":\"holiday\"}}'")
                })?,
                None if matches!(change, ChangeKind::Delete) => serde_json::Value::Null,
                None => anyhow::bail!("give the record as JSON, e.g. lsync put {model} '{{\"id\":\"x\",…}}'"),
            };
            let change_type = match change {
                ChangeKind::Insert => "insert",
                ChangeKind::Update => "update",
                ChangeKind::Patch => "patch",
                ChangeKind::Delete => "delete",
            };
            let request = ChangeRequest {
                model_type: model,
                record_id,
                change_type: Some(change_type.into()),
                data,
                proposal_id: None,
                durability: Some(durability.as_str().into()),
            };
            let client = Client::connect(&dir)?;
            let library = commands::resolve_library(&client, library)?;
            commands::put(&client, library, request, proposal_id, json)
        }
        Command::Tag(TagCommand::Add {
            library,
            id,
            color,
            json,
            proposal_id,
            durability,
            name,
        }) => {
            let id = id.unwrap_or_else(|| Uuid::new_v4().to_string());
            let request = ChangeRequest {
                model_type: "tag".into(),
                record_id: None,
                change_type: Some("insert".into()),
                data: serde_json::json!({ "id": id, "name": name, "color": color }),
                proposal_id: None,
                durability: Some(durability.as_str().into()),
            };
            let client = Client::connect(&dir)?;
            let library = commands::resolve_library(&client, library)?;
            commands::put(&client, library, request, proposal_id, json)
        }
        Command::Token(TokenCommand::Rotate) => commands::token_rotate(&dir),
        Command::Outbox(cmd) => {
            let client = Client::connect(&dir)?;
            match cmd {
                OutboxCommand::List { library, json } => {
                    let library = commands::resolve_library(&client, library)?;
                    commands::outbox_list(&client, library, json)
                }
                OutboxCommand::Retry { library, proposal } => {
                    let library = commands::resolve_library(&client, library)?;
                    commands::outbox_retry(&client, library, proposal)
                }
                OutboxCommand::Discard { library, proposal } => {
                    let library = commands::resolve_library(&client, library)?;
                    commands::outbox_discard(&client, library, proposal)
                }
            }
        }
        Command::Conflicts(ConflictsCommand::List { library, limit, json }) => {
            let client = Client::connect(&dir)?;
            let library = commands::resolve_library(&client, library)?;
            commands::conflicts_list(&client, library, limit, json)
        }
        Command::Log { library, since, limit, json } => {
            let client = Client::connect(&dir)?;
            let library = commands::resolve_library(&client, library)?;
            commands::log(&client, library, since, limit, json)
        }
        Command::Verify { library } => verify::verify(&dir, library),
        Command::Status { proposal: Some(proposal), library, json, .. } => {
            let client = Client::connect(&dir)?;
            let library = commands::resolve_library(&client, library)?;
            commands::proposal_status(&client, library, proposal, json)
        }
        Command::Status { watch, json, interval_ms, .. } => {
            let client = Client::connect(&dir)?;
            status::status(&client, watch, json, Duration::from_millis(interval_ms.max(50)))
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations_parse_with_a_unit_and_a_bound() {
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert!(parse_duration("8d").unwrap_err().contains("7d"));
        assert!(parse_duration("0s").unwrap_err().contains("between"));
        assert!(parse_duration("10").unwrap_err().contains("give a unit"));
        assert!(parse_duration("10y").unwrap_err().contains("unit \"y\""));
        assert!(parse_duration("m").unwrap_err().contains("bad duration"));
        assert!(parse_duration("99999999999999999999d").is_err());
    }

    #[test]
    fn join_takes_a_token_or_the_scripted_ids_not_both() {
        let parse =
            |args: &[&str]| Cli::try_parse_from(["lsync", "library", "join"].iter().chain(args));
        assert!(parse(&["lsync-invite-1.abc"]).is_ok());
        assert!(parse(&[]).is_err(), "nothing given");
        let id = Uuid::new_v4().to_string();
        assert!(parse(&["tok", "--library", &id]).is_err(), "both forms");
        let scripted = [
            "--library",
            &id,
            "--leader-device-id",
            &id,
            "--leader-peer-id",
            "p",
            "--leader-addr",
            "/ip4/127.0.0.1/tcp/1",
        ];
        assert!(parse(&scripted).is_ok());
        assert!(parse(&scripted[..6]).is_err(), "no leader address");
    }

    #[test]
    fn force_reconfigure_takes_a_comma_separated_voter_list() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let lib = Uuid::new_v4().to_string();
        let voters = format!("{a},{b}");
        let cli = Cli::try_parse_from([
            "lsync",
            "library",
            "force-reconfigure",
            "--library",
            &lib,
            "--voters",
            &voters,
        ])
        .unwrap();
        match cli.command {
            Command::Library(LibraryCommand::ForceReconfigure {
                voters,
                i_understand_this_is_unsafe,
                ..
            }) => {
                assert_eq!(voters, vec![a, b]);
                assert!(!i_understand_this_is_unsafe);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn members_parse() {
        let id = Uuid::new_v4();
        let m = parse_member(&format!("{id},12D3KooW,/ip4/10.0.0.2/tcp/7700")).unwrap();
        assert_eq!(m.device_id, id);
        assert_eq!(m.addresses, vec!["/ip4/10.0.0.2/tcp/7700".to_owned()]);
        assert!(parse_member("nope").is_err());
    }
}
