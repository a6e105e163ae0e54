//! The configuration in effect on this device (docs/architecture.md, "Membership"): the
//! `devices` rows (members, their roles and preferences) together with
//! `sync_state.config_sequence` and `feature_version`, kept equal to a configuration entry of
//! the local log by the same transaction that writes that entry.
//!
//! Which entry: the latest configuration entry of the log, with one exception. While a device
//! rebuilds its log from the leader (after [`crate::Applier::reset_for_repair`]) or fills an
//! empty log after joining, the configuration it had (or was given in `Joined`) stays in
//! effect until the log reaches a configuration entry at least as recent
//! ([`on_entry`]); once the rebuild is complete, the latest entry of the log is installed
//! whatever its sequence ([`settle`]). So a device never goes back to an older membership while
//! it replays old entries — a founder replaying entry 1 must not believe it is alone again.
//!
//! Besides the configuration, a device keeps when its current set of voters came in
//! (`voters_since`: the configuration entry that changed the voters; entries that restate the
//! same voters, such as a leader's first entry of its term, keep it) and, until it knows that
//! entry is committed, the voters before it (`previous_voters`). Elections need a majority of
//! both sets while the change is not known to be committed (docs/architecture.md,
//! "Membership": with the two-device rule, a majority of two voters is one device, and two
//! configurations in use side by side could otherwise each elect a leader of one term).
//!
//! A library of feature version 1 has no configuration entry yet: its `devices` rows were given
//! by hand and every member is a voter; `config_sequence` is 0 until the leader commits the
//! first configuration entry.

use std::collections::BTreeSet;

use diesel::prelude::*;
use diesel::sqlite::SqliteConnection;
use lsync_protocol::{
    ChangeType, Configuration, Member, MemberRole, RolePreference, SyncLogEntry, CONFIG_MODEL_TYPE,
    CONFIG_RECORD_ID, FEATURE_VERSION,
};
use uuid::Uuid;

use crate::error::{now_ms, parse_uuid, to_i64, to_u64, Result, StorageError};
use crate::schema::{devices, sync_log, sync_state};
use crate::sync_log::{LogPosition, SyncLog};

/// The configuration in effect on this device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    /// The members (for a version-1 library: the `devices` rows, every one a voter, and
    /// `feature_version` 1 — such a configuration does not pass `Configuration::validate`).
    pub configuration: Configuration,
    /// The sequence of the configuration entry it comes from (0: none, a version-1 library).
    pub sequence: u64,
    /// The sequence of the configuration entry that brought the current set of voters.
    pub voters_since: u64,
    /// The voters before that entry, while it is not known to be committed.
    pub previous_voters: Option<BTreeSet<Uuid>>,
}

impl Membership {
    /// Whether the library has configuration entries (feature version 2 or later).
    pub fn is_replicated(&self) -> bool {
        self.sequence > 0
    }
}

fn role_str(role: MemberRole) -> &'static str {
    match role {
        MemberRole::Voter => "voter",
        MemberRole::Learner => "learner",
    }
}

fn parse_role(text: &str) -> Result<MemberRole> {
    match text {
        "voter" => Ok(MemberRole::Voter),
        "learner" => Ok(MemberRole::Learner),
        other => Err(StorageError::Corrupt(format!("devices: unknown role {other:?}"))),
    }
}

fn preference_str(preference: RolePreference) -> &'static str {
    match preference {
        RolePreference::Auto => "auto",
        RolePreference::Learner => "learner",
        RolePreference::Voter => "voter",
    }
}

fn parse_preference(text: &str) -> Result<RolePreference> {
    match text {
        "auto" => Ok(RolePreference::Auto),
        "learner" => Ok(RolePreference::Learner),
        "voter" => Ok(RolePreference::Voter),
        other => Err(StorageError::Corrupt(format!("devices: unknown preference {other:?}"))),
    }
}

type MemberRow = (String, String, String, String, String, String);

fn row_to_member(row: MemberRow) -> Result<Member> {
    let (device_id, peer_id, addresses, name, role, preference) = row;
    let addresses = serde_json::from_str(&addresses).map_err(|e| {
        StorageError::Corrupt(format!("devices {device_id}: bad addresses {addresses:?}: {e}"))
    })?;
    Ok(Member {
        device_id: parse_uuid(&device_id, "devices device_id")?,
        peer_id,
        addresses,
        name,
        role: parse_role(&role)?,
        preference: parse_preference(&preference)?,
    })
}

/// The library's feature version (docs/protocol.md §11), as the configuration in effect says.
///
/// # Errors
/// [`StorageError::NotInitialized`] without a sync state.
pub(crate) fn feature_version(conn: &mut SqliteConnection) -> Result<u32> {
    let version = sync_state::table
        .find(1)
        .select(sync_state::feature_version)
        .get_result::<i32>(conn)
        .optional()?
        .ok_or(StorageError::NotInitialized)?;
    Ok(u32::try_from(version).unwrap_or_default())
}

/// The configuration in effect.
///
/// # Errors
/// [`StorageError::NotInitialized`] without a sync state; [`StorageError::Corrupt`] for an
/// unreadable row.
pub fn load(conn: &mut SqliteConnection) -> Result<Membership> {
    let (sequence, feature_version, voters_since, previous) = sync_state::table
        .find(1)
        .select((
            sync_state::config_sequence,
            sync_state::feature_version,
            sync_state::voters_since,
            sync_state::previous_voters,
        ))
        .get_result::<(i64, i32, i64, Option<String>)>(conn)
        .optional()?
        .ok_or(StorageError::NotInitialized)?;
    let previous_voters = previous
        .map(|text| {
            serde_json::from_str::<BTreeSet<Uuid>>(&text).map_err(|e| {
                StorageError::Corrupt(format!("sync_state previous_voters {text:?}: {e}"))
            })
        })
        .transpose()?;
    let members = devices::table
        .select((
            devices::device_id,
            devices::peer_id,
            devices::addresses,
            devices::name,
            devices::role,
            devices::preference,
        ))
        .order(devices::device_id.asc())
        .load::<MemberRow>(conn)?
        .into_iter()
        .map(row_to_member)
        .collect::<Result<Vec<_>>>()?;
    Ok(Membership {
        configuration: Configuration::new(
            u32::try_from(feature_version).unwrap_or_default(),
            members,
        ),
        sequence: to_u64(sequence, "sync_state config_sequence")?,
        voters_since: to_u64(voters_since, "sync_state voters_since")?,
        previous_voters,
    })
}

/// Makes `configuration` (the entry at `sequence`) the one in effect: the `devices` rows become
/// exactly its members (a member kept keeps when it was added), and `config_sequence` /
/// `feature_version` are set. If its voters differ from those in effect, `voters_since`
/// becomes `sequence` and the voters in effect become `previous_voters` (none when there were
/// none: a new library, a device that joins). The caller holds the transaction.
pub fn install(
    conn: &mut SqliteConnection,
    configuration: &Configuration,
    sequence: u64,
) -> Result<()> {
    let before = load(conn)?;
    let (old, new) = (before.configuration.voters(), configuration.voters());
    let (voters_since, previous_voters) = if old == new {
        (before.voters_since, before.previous_voters)
    } else {
        (sequence, (!old.is_empty()).then_some(old))
    };
    let previous_text =
        previous_voters.map(|p| serde_json::to_string(&p).expect("a set of uuids always encodes"));
    let keep: Vec<String> = configuration.members.iter().map(|m| m.device_id.to_string()).collect();
    diesel::delete(devices::table.filter(devices::device_id.ne_all(&keep))).execute(conn)?;
    for m in &configuration.members {
        let addresses = serde_json::to_string(&m.addresses)
            .map_err(|e| StorageError::InvalidChange(format!("member addresses: {e}")))?;
        diesel::insert_into(devices::table)
            .values((
                devices::device_id.eq(m.device_id.to_string()),
                devices::peer_id.eq(&m.peer_id),
                devices::addresses.eq(&addresses),
                devices::name.eq(&m.name),
                devices::added_at_ms.eq(now_ms()),
                devices::role.eq(role_str(m.role)),
                devices::preference.eq(preference_str(m.preference)),
            ))
            .on_conflict(devices::device_id)
            .do_update()
            .set((
                devices::peer_id.eq(&m.peer_id),
                devices::addresses.eq(&addresses),
                devices::name.eq(&m.name),
                devices::role.eq(role_str(m.role)),
                devices::preference.eq(preference_str(m.preference)),
            ))
            .execute(conn)?;
    }
    let rows = diesel::update(sync_state::table.find(1))
        .set((
            sync_state::config_sequence.eq(to_i64(sequence, "config sequence")?),
            sync_state::feature_version.eq(i32::try_from(configuration.feature_version)
                .map_err(|_| StorageError::InvalidChange("feature version out of range".into()))?),
            sync_state::voters_since.eq(to_i64(voters_since, "voters since")?),
            sync_state::previous_voters.eq(previous_text),
        ))
        .execute(conn)?;
    if rows == 0 {
        return Err(StorageError::NotInitialized);
    }
    Ok(())
}

/// This device learned that the leader's log is committed up to `commit_sequence`: once that
/// covers `voters_since`, the previous voters are forgotten. Returns whether they were.
pub fn note_commit(conn: &mut SqliteConnection, commit_sequence: u64) -> Result<bool> {
    let rows = diesel::update(
        sync_state::table
            .find(1)
            .filter(sync_state::previous_voters.is_not_null())
            .filter(sync_state::voters_since.le(to_i64(commit_sequence, "commit sequence")?)),
    )
    .set(sync_state::previous_voters.eq(None::<String>))
    .execute(conn)?;
    Ok(rows > 0)
}

/// The latest configuration entry of the log, decoded: `(sequence, configuration)`.
///
/// # Errors
/// [`StorageError::Corrupt`] if that entry does not decode (the log holds only entries this
/// device checked when it wrote them).
pub fn latest_in_log(conn: &mut SqliteConnection) -> Result<Option<(u64, Configuration)>> {
    let row = sync_log::table
        .filter(sync_log::change_type.eq(ChangeType::Config.as_str()))
        .order(sync_log::sequence.desc())
        .select((sync_log::sequence, sync_log::data))
        .first::<(i64, Vec<u8>)>(conn)
        .optional()?;
    row.map(|(sequence, data)| {
        let configuration = Configuration::decode(&data)
            .map_err(|e| StorageError::Corrupt(format!("configuration entry {sequence}: {e}")))?;
        Ok((to_u64(sequence, "sync_log sequence")?, configuration))
    })
    .transpose()
}

/// The devices that were members in a configuration entry of the log but are not members of
/// the configuration in effect (removed devices, most recently removed first, each once): so
/// that a restarted device still tells them they were removed.
pub fn former_members(conn: &mut SqliteConnection) -> Result<Vec<Member>> {
    let current = load(conn)?;
    let rows = sync_log::table
        .filter(sync_log::change_type.eq(ChangeType::Config.as_str()))
        .order(sync_log::sequence.desc())
        .select(sync_log::data)
        .load::<Vec<u8>>(conn)?;
    let mut seen = std::collections::BTreeSet::new();
    let mut former = Vec::new();
    for data in rows {
        let Ok(configuration) = Configuration::decode(&data) else { continue };
        for m in configuration.members {
            if !current.configuration.contains(m.device_id) && seen.insert(m.device_id) {
                former.push(m);
            }
        }
    }
    Ok(former)
}

/// Checks a configuration entry this build is asked to apply: its model type and record id,
/// a payload that decodes and validates, and a feature version this build supports.
///
/// # Errors
/// [`StorageError::UpgradeNeeded`] for a payload this build cannot read or a newer feature
/// version; [`StorageError::Corrupt`] for a configuration entry under another model type.
pub fn check_entry(entry: &SyncLogEntry) -> Result<Configuration> {
    if entry.model_type != CONFIG_MODEL_TYPE || entry.record_id != CONFIG_RECORD_ID {
        return Err(StorageError::Corrupt(format!(
            "configuration entry {} has model type {:?} and record id {:?}",
            entry.sequence, entry.model_type, entry.record_id
        )));
    }
    let configuration = rmp_serde::from_slice::<Configuration>(&entry.data).map_err(|e| {
        StorageError::UpgradeNeeded {
            sequence: entry.sequence,
            reason: format!("its configuration does not decode here ({e})"),
        }
    })?;
    if configuration.feature_version > FEATURE_VERSION {
        return Err(StorageError::UpgradeNeeded {
            sequence: entry.sequence,
            reason: format!(
                "the library uses feature version {}, this build supports {FEATURE_VERSION}",
                configuration.feature_version
            ),
        });
    }
    configuration.validate().map_err(|e| StorageError::UpgradeNeeded {
        sequence: entry.sequence,
        reason: format!("its configuration is not valid here ({e})"),
    })?;
    Ok(configuration)
}

/// A configuration entry of `term` at `sequence` made by `origin`.
pub fn entry(
    term: u64,
    sequence: u64,
    origin: Uuid,
    configuration: &Configuration,
) -> SyncLogEntry {
    SyncLogEntry {
        sequence,
        term,
        origin_device: origin,
        timestamp_ms: now_ms(),
        model_type: CONFIG_MODEL_TYPE.to_owned(),
        record_id: CONFIG_RECORD_ID.to_owned(),
        change_type: ChangeType::Config,
        version: 0,
        data: configuration.encode(),
        proposal_id: None,
        hash: None,
        stamp: None,
    }
}

/// A configuration entry at `sequence` was just written to the log: it becomes the one in
/// effect if it is at least as recent as the one in effect (see the module documentation).
/// Returns the membership installed, if any. The caller holds the transaction.
pub fn on_entry(
    conn: &mut SqliteConnection,
    configuration: &Configuration,
    sequence: u64,
) -> Result<Option<Membership>> {
    let current = load(conn)?;
    if sequence < current.sequence || skips_bootstrap(conn, &current, configuration)? {
        return Ok(None);
    }
    install(conn, configuration, sequence)?;
    load(conn).map(Some)
}

/// Whether `configuration` from the log must not replace `current` because `current` is the
/// configuration a device joining by hand started with (`Node::join_library`: sequence 0 with
/// configuration entries, not a version-1 library) and `configuration` does not hold the device
/// yet — an entry from before the leader added it, which the device replays first.
fn skips_bootstrap(
    conn: &mut SqliteConnection,
    current: &Membership,
    configuration: &Configuration,
) -> Result<bool> {
    if current.sequence != 0 || current.configuration.feature_version < 2 {
        return Ok(false);
    }
    let me = sync_state::table
        .find(1)
        .select(sync_state::device_id)
        .get_result::<String>(conn)
        .optional()?
        .ok_or(StorageError::NotInitialized)?;
    Ok(!configuration.contains(parse_uuid(&me, "sync_state device_id")?))
}

/// After a complete round (the log reached the leader's last sequence): installs the latest
/// configuration entry of the log if it is not the one in effect — after a rebuild, whatever
/// their sequences (the one in effect may come from entries the leader's log does not hold);
/// otherwise only once the log reached the one in effect (a configuration given to a joining
/// device is ahead of its log until then) — and clears the rebuild mark once the log is at
/// least as up to date as it. Returns the membership installed, if any. The caller holds the
/// transaction.
pub fn settle(conn: &mut SqliteConnection) -> Result<Option<Membership>> {
    let mark = rebuild_mark(conn)?;
    let last = SyncLog::last(conn)?;
    let rebuilt = mark != LogPosition::default();
    if rebuilt && last >= mark {
        set_rebuild_mark(conn, LogPosition::default())?;
        tracing::info!(%mark, "the rebuilt log reached the position held before the rebuild");
    }
    let Some((sequence, configuration)) = latest_in_log(conn)? else { return Ok(None) };
    let current = load(conn)?;
    // A configuration given ahead of the log (a device that joins, or joins again) stays until
    // the log reaches it; only one that came from a log since rebuilt is replaced at once.
    if (!rebuilt && last.sequence < current.sequence)
        || skips_bootstrap(conn, &current, &configuration)?
    {
        return Ok(None);
    }
    if current.sequence == sequence && current.configuration == configuration {
        return Ok(None);
    }
    install(conn, &configuration, sequence)?;
    load(conn).map(Some)
}

/// The position this device held before its log was last cleared for a rebuild, until the
/// rebuilt log reaches it (`(0, 0)`: none).
pub fn rebuild_mark(conn: &mut SqliteConnection) -> Result<LogPosition> {
    let (sequence, term) = sync_state::table
        .find(1)
        .select((sync_state::rebuild_mark_sequence, sync_state::rebuild_mark_term))
        .get_result::<(i64, i64)>(conn)
        .optional()?
        .ok_or(StorageError::NotInitialized)?;
    Ok(LogPosition {
        sequence: to_u64(sequence, "rebuild mark")?,
        term: to_u64(term, "rebuild mark")?,
    })
}

/// Sets the rebuild mark.
pub fn set_rebuild_mark(conn: &mut SqliteConnection, mark: LogPosition) -> Result<()> {
    diesel::update(sync_state::table.find(1))
        .set((
            sync_state::rebuild_mark_sequence.eq(to_i64(mark.sequence, "rebuild mark")?),
            sync_state::rebuild_mark_term.eq(to_i64(mark.term, "rebuild mark")?),
        ))
        .execute(conn)?;
    Ok(())
}
