//! Conflicts between concurrent changes (docs/architecture.md, "Conflicts"): the policies
//! ([`ConflictPolicy`]), the leader's decision ([`decide`], pure), and the record of each
//! conflict decided ([`Conflict`]), a model of lsync's own (`lsync.conflict`, table
//! `lsync_conflict`) that the leader commits in the log next to the change, so that every
//! device — the writer's included — holds the same conflicts, and `lsync verify` replays them.
//!
//! A change carries the version of the record it was based on and the timestamp it got where
//! it was made. When its base is older than the record's version at the leader, the fields it
//! sets that were set since (by the field clock, [`crate::field_clock`]) are in conflict, unless
//! the device that set them is the one that made the change (its own later edit, ordered by its
//! own clock). The model's policy decides: `last_writer_wins` keeps, field by field, the value
//! with the later timestamp (ties broken by device id), whatever the order in which the leader
//! sequences them; `reject` refuses the change (the writer's view rolls back). Either way a
//! [`Conflict`] is committed with both values.
//!
//! A delete is a write too: a stamped Delete leaves a deletion marker in the field clock, and
//! an Insert or Update that would re-create the record, made without seeing the delete, is
//! decided against it ([`decide_deleted`]): the later of the two wins the whole record.

use diesel::prelude::*;
use diesel::sqlite::SqliteConnection;
use lsync_protocol::{ChangeType, Hlc, SyncLogEntry};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::change::Change;
use crate::error::{Result, StorageError};
use crate::field_clock::RecordClock;
use crate::model::{decode, encode, ModelHandler, StoredRecord};
use crate::schema::lsync_conflict;

/// The model type of conflict records (reserved: hosts cannot register or propose it).
pub const CONFLICT_MODEL_TYPE: &str = "lsync.conflict";

/// How a model's concurrent changes to one field are decided (per model type,
/// [`crate::ModelRegistry::set_policy`]; every device of a library must use the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConflictPolicy {
    /// The value with the later timestamp wins, field by field (the default).
    #[default]
    LastWriterWins,
    /// A change based on an older version that sets a field changed since by another device
    /// is refused as a whole, with the record's current version; the writer decides again.
    Reject,
}

impl ConflictPolicy {
    /// `last_writer_wins` or `reject`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::LastWriterWins => "last_writer_wins",
            Self::Reject => "reject",
        }
    }
}

/// What became of a conflicting change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConflictOutcome {
    /// The change's values won every field in conflict.
    Change,
    /// The stored values won every field in conflict: the change was not applied to them.
    Stored,
    /// Some fields each way (`taken` and `kept`).
    Mixed,
    /// Refused (policy `reject`): nothing of the change was committed.
    Rejected,
}

impl ConflictOutcome {
    /// `change`, `stored`, `mixed` or `rejected`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Change => "change",
            Self::Stored => "stored",
            Self::Mixed => "mixed",
            Self::Rejected => "rejected",
        }
    }
}

/// A conflict a leader decided: the record, the fields in conflict, both values and what won.
/// Committed in the log (model [`CONFLICT_MODEL_TYPE`]), so every device holds it; a host
/// shows it to the user and may delete it once dealt with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conflict {
    /// `<proposal id>:<model type>/<record id>@<physical_ms>.<counter>` (the change's
    /// timestamp): one per change, the same when a refused proposal is retried or a repair
    /// proposes part of it again.
    pub id: String,
    /// The record's model type.
    pub model_type: String,
    /// The record's id.
    pub record_id: String,
    /// The policy that decided it.
    pub policy: ConflictPolicy,
    /// What won.
    pub outcome: ConflictOutcome,
    /// The fields in conflict (set by the change and by another device since its base; empty
    /// when the whole record is: a Delete against an edit, or an Insert or Update against a
    /// delete).
    pub fields: Vec<String>,
    /// Of `fields`, those whose stored value was kept.
    pub kept: Vec<String>,
    /// Of `fields`, those the change's value took.
    pub taken: Vec<String>,
    /// The change's type as proposed (`insert`, `update`, `patch`, `delete`).
    pub change_type: String,
    /// The version the change was based on.
    pub base_version: i64,
    /// The record's version when the leader decided; 0 if it was deleted (with `stored`
    /// empty: the stored side is a deletion).
    pub current_version: i64,
    /// The record as stored then (its data, MessagePack); empty if it was deleted.
    #[serde(with = "serde_bytes")]
    pub stored: Vec<u8>,
    /// The latest timestamp of the fields in conflict, as stored then; for a deleted record,
    /// the delete's (its deletion marker's), `None` if it had none.
    pub stored_hlc: Option<Hlc>,
    /// The change's data (the record, or for a patch the fields it set; empty for a Delete).
    #[serde(with = "serde_bytes")]
    pub proposed: Vec<u8>,
    /// The change's timestamp.
    pub proposed_hlc: Hlc,
    /// The device that made the change.
    pub origin_device: Uuid,
    /// The proposal that carried it.
    pub proposal_id: Uuid,
    /// Milliseconds since the Unix epoch, on the leader, when decided.
    pub decided_at_ms: i64,
}

impl Conflict {
    /// The conflict of `change`, made with timestamp `hlc` on device `origin`, in proposal
    /// `proposal`, decided at `decided_at_ms` by `policy` — as decided against a record that
    /// is gone (outcome `stored`, no field, versions 0, nothing stored): the caller sets what
    /// its decision found.
    pub(crate) fn about(
        change: &Change,
        (proposal, origin, hlc, decided_at_ms): (Uuid, Uuid, Hlc, i64),
        policy: ConflictPolicy,
    ) -> Conflict {
        Conflict {
            id: conflict_id(proposal, &change.model_type, &change.record_id, hlc),
            model_type: change.model_type.clone(),
            record_id: change.record_id.clone(),
            policy,
            outcome: ConflictOutcome::Stored,
            fields: Vec::new(),
            kept: Vec::new(),
            taken: Vec::new(),
            change_type: change.change_type.as_str().to_owned(),
            base_version: 0,
            current_version: 0,
            stored: Vec::new(),
            stored_hlc: None,
            proposed: change.data.clone(),
            proposed_hlc: hlc,
            origin_device: origin,
            proposal_id: proposal,
            decided_at_ms,
        }
    }
}

impl crate::model::Syncable for Conflict {
    const MODEL_TYPE: &'static str = CONFLICT_MODEL_TYPE;
    fn record_id(&self) -> String {
        self.id.clone()
    }
}

/// What a decision records ([`decide`]): the fields in conflict, the ones whose stored value
/// was kept, the ones the change took.
pub(crate) type Report = (Vec<String>, Vec<String>, Vec<String>);

/// What the leader does with one change ([`decide`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Commit it as proposed.
    Apply,
    /// Commit only the fields `taken`; the others keep their stored values.
    Partial { taken: Vec<String> },
    /// Commit nothing of it: the stored values won.
    Drop,
    /// Refuse the proposal (policy `reject`).
    Reject,
}

/// The leader's decision on a change with timestamp `hlc`, based on version `base` of a record
/// whose clock is `clock`, that sets `touched` (every field it sets; empty: the whole record,
/// a Delete): the decision, and what to record, if anything: the fields in conflict — set since
/// `base` by another device, or holding a later value (of any device) that this change does
/// not replace — with those whose stored value was kept and those the change took. Only fields
/// another device set make the `reject` policy refuse; a device's own later value wins over its
/// older change (re-proposed after a failover) under either policy, recorded too, so that a
/// change is always either in the log or in a conflict record. Pure.
pub(crate) fn decide(
    policy: ConflictPolicy,
    touched: &[String],
    clock: &RecordClock,
    base: i64,
    hlc: Hlc,
) -> (Decision, Option<Report>) {
    let other = |stamp: crate::field_clock::FieldStamp| {
        (stamp.version > base || stamp.hlc > Some(hlc))
            && stamp.hlc.is_none_or(|h| h.device != hlc.device)
    };
    let wins = |stamp: crate::field_clock::FieldStamp| Some(hlc) > stamp.hlc;
    // A field is in play if it was set since the base, or with a later timestamp than the
    // change's: a device's timestamps pass every one it has seen, so a later one is a write the
    // change's device did not see, whatever version its base names (a base read from a log
    // that later lost its tail names a version of another history).
    let unseen =
        |stamp: crate::field_clock::FieldStamp| stamp.version > base || stamp.hlc > Some(hlc);
    if touched.is_empty() {
        let latest = clock.latest();
        if !unseen(latest) {
            return (Decision::Apply, None);
        }
        let decision = match (policy, other(latest), wins(latest)) {
            (ConflictPolicy::Reject, true, _) => Decision::Reject,
            (_, _, true) => Decision::Apply,
            (_, _, false) => Decision::Drop,
        };
        let report = (other(latest) || decision == Decision::Drop)
            .then(|| (Vec::new(), Vec::new(), Vec::new()));
        return (decision, report);
    }
    // fields set since the base by another device, or that keep a later value of this one
    let (mut fields, mut kept, mut taken) = (Vec::new(), Vec::new(), Vec::new());
    let mut by_others = false;
    for field in touched {
        let stamp = clock.field(field);
        if !unseen(stamp) {
            continue;
        }
        let by_other = other(stamp);
        by_others |= by_other;
        if !wins(stamp) {
            fields.push(field.clone());
            kept.push(field.clone());
        } else if by_other {
            fields.push(field.clone());
            taken.push(field.clone());
        }
    }
    if policy == ConflictPolicy::Reject && by_others {
        return (Decision::Reject, Some((fields, kept, taken)));
    }
    let decision = if kept.is_empty() {
        Decision::Apply
    } else if kept.len() == touched.len() {
        Decision::Drop
    } else {
        Decision::Partial { taken: touched.iter().filter(|f| !kept.contains(f)).cloned().collect() }
    };
    let report = (!fields.is_empty()).then_some((fields, kept, taken));
    (decision, report)
}

/// The leader's decision on an Insert or Update with timestamp `hlc` of a record that does not
/// exist and whose deletion marker is `marker` (the version and timestamp of the stamped Delete
/// that removed it): the decision of [`decide`] on the record as a whole, as if the delete had
/// written every field. The change saw the delete — no conflict — if its device held no such
/// record (`base` 0: it applied the delete, a deliberate re-creation), or a version at or after
/// the delete's, or had no base, and the delete's timestamp is not later than its own;
/// otherwise it is in conflict: `last_writer_wins` re-creates the record if the change is the
/// later (`Apply`) and keeps it deleted if not (`Drop`), `reject` refuses it; a device's own
/// later delete wins without asking the policy. What to record is as for [`decide`] (no field:
/// the whole record). Pure.
pub(crate) fn decide_deleted(
    policy: ConflictPolicy,
    marker: crate::field_clock::FieldStamp,
    base: Option<i64>,
    hlc: Hlc,
) -> (Decision, Option<Report>) {
    let clock = RecordClock { whole: marker, fields: Vec::new(), deleted: true };
    let base = match base {
        Some(b) if b > 0 && b < marker.version => b,
        _ => marker.version,
    };
    decide(policy, &[], &clock, base, hlc)
}

/// The outcome a conflict reports for `decision` with `kept` and `taken` fields.
pub(crate) fn outcome_of(
    decision: &Decision,
    kept: &[String],
    taken: &[String],
) -> ConflictOutcome {
    match decision {
        Decision::Reject => ConflictOutcome::Rejected,
        Decision::Drop => ConflictOutcome::Stored,
        Decision::Partial { .. } | Decision::Apply => match (kept.is_empty(), taken.is_empty()) {
            (true, _) => ConflictOutcome::Change,
            (false, true) => ConflictOutcome::Stored,
            (false, false) => ConflictOutcome::Mixed,
        },
    }
}

/// The id of the conflict of the change with timestamp `hlc` of proposal `proposal_id` about
/// record `record_id` of `model_type`: one per change, whichever part of the proposal (and at
/// whichever index) a retry or a repair proposes again — a change keeps its timestamp, and the
/// changes of one proposal have distinct ones. (By proposal and record alone, the second of two
/// changes of one record in a proposal, decided in another evaluation than the first, found
/// the first one's record and was decided away with none: simulator seed 21.)
pub(crate) fn conflict_id(
    proposal_id: Uuid,
    model_type: &str,
    record_id: &str,
    hlc: Hlc,
) -> String {
    format!("{proposal_id}:{model_type}/{record_id}@{}.{}", hlc.physical_ms, hlc.counter)
}

/// The change that commits `conflict` (an Insert of the conflict record, made by the leader).
pub(crate) fn record_change(conflict: &Conflict) -> Change {
    Change::insert(conflict)
}

/// Whether the conflict `id` is recorded already (a refused proposal retried).
pub(crate) fn exists(conn: &mut SqliteConnection, id: &str) -> Result<bool> {
    Ok(lsync_conflict::table.find(id).count().get_result::<i64>(conn)? > 0)
}

/// Every recorded conflict, most recent decision first, at most `limit`.
pub fn list(conn: &mut SqliteConnection, limit: u64) -> Result<Vec<Conflict>> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    lsync_conflict::table
        .select(lsync_conflict::data)
        .order((lsync_conflict::decided_at_ms.desc(), lsync_conflict::id.desc()))
        .limit(limit)
        .load::<Vec<u8>>(conn)?
        .iter()
        .map(|data| {
            decode::<Conflict>(data)
                .map_err(|e| StorageError::Corrupt(format!("lsync_conflict row: {e}")))
        })
        .collect()
}

/// The number of recorded conflicts.
pub fn count(conn: &mut SqliteConnection) -> Result<u64> {
    let n = lsync_conflict::table.count().get_result::<i64>(conn)?;
    crate::error::to_u64(n, "lsync_conflict count")
}

/// The table of [`Conflict`]s: key columns for listing, the whole record in `data`.
const DDL: &str = "CREATE TABLE IF NOT EXISTS lsync_conflict (
    id TEXT PRIMARY KEY NOT NULL,
    model_type TEXT NOT NULL,
    record_id TEXT NOT NULL,
    outcome TEXT NOT NULL,
    decided_at_ms BIGINT NOT NULL,
    data BLOB NOT NULL,
    version BIGINT NOT NULL
)";

/// The [`ModelHandler`] of [`Conflict`] (model `lsync.conflict`, table `lsync_conflict`).
/// Every registry has it.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConflictHandler;

impl ModelHandler for ConflictHandler {
    fn model_type(&self) -> &str {
        CONFLICT_MODEL_TYPE
    }

    fn table_name(&self) -> &str {
        "lsync_conflict"
    }

    fn migrate(&self, conn: &mut SqliteConnection) -> Result<()> {
        use diesel::connection::SimpleConnection;
        conn.batch_execute(DDL)?;
        Ok(())
    }

    fn validate(&self, change: &Change) -> Result<()> {
        crate::model::validate_syncable::<Conflict>(change)
    }

    fn current_version(&self, conn: &mut SqliteConnection, record_id: &str) -> Result<Option<i64>> {
        Ok(lsync_conflict::table
            .find(record_id)
            .select(lsync_conflict::version)
            .get_result(conn)
            .optional()?)
    }

    fn load(&self, conn: &mut SqliteConnection, record_id: &str) -> Result<Option<StoredRecord>> {
        Ok(lsync_conflict::table
            .find(record_id)
            .select((lsync_conflict::data, lsync_conflict::version))
            .get_result::<(Vec<u8>, i64)>(conn)
            .optional()?
            .map(|(data, version)| StoredRecord { data, version }))
    }

    fn apply(&self, conn: &mut SqliteConnection, entry: &SyncLogEntry) -> Result<()> {
        match entry.change_type {
            ChangeType::Insert | ChangeType::Update => {
                let conflict: Conflict = decode(&entry.data)?;
                if conflict.id != entry.record_id {
                    return Err(StorageError::InvalidChange(format!(
                        "conflict entry {} has record id {:?} but its data has {:?}",
                        entry.sequence, entry.record_id, conflict.id
                    )));
                }
                diesel::replace_into(lsync_conflict::table)
                    .values((
                        lsync_conflict::id.eq(&conflict.id),
                        lsync_conflict::model_type.eq(&conflict.model_type),
                        lsync_conflict::record_id.eq(&conflict.record_id),
                        lsync_conflict::outcome.eq(conflict.outcome.as_str()),
                        lsync_conflict::decided_at_ms.eq(conflict.decided_at_ms),
                        lsync_conflict::data.eq(encode(&conflict)),
                        lsync_conflict::version.eq(entry.version),
                    ))
                    .execute(conn)?;
            }
            ChangeType::Delete => {
                diesel::delete(lsync_conflict::table.find(&entry.record_id)).execute(conn)?;
            }
            _ => {}
        }
        Ok(())
    }

    fn clear(&self, conn: &mut SqliteConnection) -> Result<()> {
        diesel::delete(lsync_conflict::table).execute(conn)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::field_clock::FieldStamp;

    const A: Uuid = Uuid::from_u128(1);
    const B: Uuid = Uuid::from_u128(2);

    fn hlc(ms: u64, device: Uuid) -> Hlc {
        Hlc { physical_ms: ms, counter: 0, device }
    }

    fn fields(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    /// A record last written whole at version 3 (t=10 by A), its `color` set by B at version 4
    /// (t=20).
    fn clock() -> RecordClock {
        RecordClock {
            whole: FieldStamp { version: 3, hlc: Some(hlc(10, A)) },
            fields: vec![("color".into(), FieldStamp { version: 4, hlc: Some(hlc(20, B)) })],
            deleted: false,
        }
    }

    #[test]
    fn a_change_based_on_the_current_version_applies_without_conflict() {
        // its device saw version 4, so its clock passed every timestamp there
        let d = decide(ConflictPolicy::Reject, &fields(&["color"]), &clock(), 4, hlc(30, A));
        assert_eq!(d, (Decision::Apply, None));
    }

    #[test]
    fn a_field_not_set_since_the_base_is_no_conflict() {
        let d = decide(ConflictPolicy::Reject, &fields(&["name"]), &clock(), 3, hlc(12, A));
        assert_eq!(d, (Decision::Apply, None));
    }

    #[test]
    fn the_later_timestamp_wins_a_field_set_by_another_device() {
        let later =
            decide(ConflictPolicy::LastWriterWins, &fields(&["color"]), &clock(), 3, hlc(30, A));
        assert_eq!(
            later,
            (Decision::Apply, Some((fields(&["color"]), vec![], fields(&["color"]))))
        );
        let earlier =
            decide(ConflictPolicy::LastWriterWins, &fields(&["color"]), &clock(), 3, hlc(15, A));
        assert_eq!(
            earlier,
            (Decision::Drop, Some((fields(&["color"]), fields(&["color"]), vec![])))
        );
    }

    #[test]
    fn an_older_change_keeps_the_fields_it_loses_and_takes_the_others() {
        let d = decide(
            ConflictPolicy::LastWriterWins,
            &fields(&["name", "color"]),
            &clock(),
            3,
            hlc(15, A),
        );
        assert_eq!(
            d,
            (
                Decision::Partial { taken: fields(&["name"]) },
                Some((fields(&["color"]), fields(&["color"]), vec![]))
            )
        );
    }

    #[test]
    fn reject_refuses_a_change_to_a_field_another_device_set_since() {
        let d = decide(ConflictPolicy::Reject, &fields(&["color"]), &clock(), 3, hlc(30, A));
        assert_eq!(d.0, Decision::Reject);
    }

    #[test]
    fn a_devices_own_later_edit_wins_over_its_older_change_without_reject() {
        let mut own = clock();
        own.fields[0].1.hlc = Some(hlc(20, A));
        let d = decide(ConflictPolicy::Reject, &fields(&["color"]), &own, 3, hlc(15, A));
        let lost = (fields(&["color"]), fields(&["color"]), vec![]);
        assert_eq!(d, (Decision::Drop, Some(lost)), "recorded, so the change is accounted for");
        let newer = decide(ConflictPolicy::Reject, &fields(&["color"]), &own, 3, hlc(25, A));
        assert_eq!(newer, (Decision::Apply, None), "its own newer change: no conflict at all");
    }

    #[test]
    fn a_delete_against_a_newer_edit_loses_and_a_later_one_wins() {
        let stale = decide(ConflictPolicy::LastWriterWins, &[], &clock(), 3, hlc(15, A));
        assert_eq!(stale.0, Decision::Drop);
        assert!(stale.1.is_some());
        let later = decide(ConflictPolicy::LastWriterWins, &[], &clock(), 3, hlc(25, A));
        assert_eq!(later.0, Decision::Apply);
    }

    #[test]
    fn a_later_timestamp_wins_even_over_a_change_whose_base_names_the_current_version() {
        // the base names version 4, but of another history: color's stamp is later than the
        // change, a write its device never saw
        let d =
            decide(ConflictPolicy::LastWriterWins, &fields(&["color"]), &clock(), 4, hlc(15, A));
        assert_eq!(d, (Decision::Drop, Some((fields(&["color"]), fields(&["color"]), vec![]))));
    }

    #[test]
    fn a_field_without_a_timestamp_loses_to_a_stamped_change() {
        let unstamped = RecordClock {
            whole: FieldStamp { version: 5, hlc: None },
            fields: vec![],
            deleted: false,
        };
        let d =
            decide(ConflictPolicy::LastWriterWins, &fields(&["name"]), &unstamped, 3, hlc(1, A));
        assert_eq!(d.0, Decision::Apply);
        assert!(d.1.is_some(), "still a conflict: set since the base by an unknown device");
    }

    /// Deleted by B at version 4, t=20.
    const DELETE: FieldStamp =
        FieldStamp { version: 4, hlc: Some(Hlc { physical_ms: 20, counter: 0, device: B }) };

    fn whole() -> Option<Report> {
        Some((vec![], vec![], vec![]))
    }

    #[test]
    fn an_update_older_than_a_delete_it_never_saw_is_dropped() {
        let d = decide_deleted(ConflictPolicy::LastWriterWins, DELETE, Some(3), hlc(15, A));
        assert_eq!(d, (Decision::Drop, whole()));
    }

    #[test]
    fn an_update_later_than_a_delete_it_never_saw_re_creates_the_record() {
        let d = decide_deleted(ConflictPolicy::LastWriterWins, DELETE, Some(3), hlc(25, A));
        assert_eq!(d, (Decision::Apply, whole()));
    }

    #[test]
    fn reject_refuses_an_update_of_a_record_another_device_deleted_since() {
        let d = decide_deleted(ConflictPolicy::Reject, DELETE, Some(3), hlc(25, A));
        assert_eq!(d, (Decision::Reject, whole()));
    }

    #[test]
    fn a_re_creation_by_a_device_that_saw_the_delete_is_no_conflict() {
        // it held no such record (base 0) and its clock passed the delete's timestamp
        let d = decide_deleted(ConflictPolicy::Reject, DELETE, Some(0), hlc(25, A));
        assert_eq!(d, (Decision::Apply, None));
        let at_the_delete = decide_deleted(ConflictPolicy::Reject, DELETE, Some(4), hlc(25, A));
        assert_eq!(at_the_delete, (Decision::Apply, None));
    }

    #[test]
    fn a_delete_later_than_the_change_is_in_play_whatever_its_base() {
        // base 0, but the delete's timestamp is later: a write its device never saw
        let d = decide_deleted(ConflictPolicy::LastWriterWins, DELETE, Some(0), hlc(15, A));
        assert_eq!(d, (Decision::Drop, whole()));
    }

    #[test]
    fn a_devices_own_later_delete_wins_over_its_older_update_without_reject() {
        let own = FieldStamp { hlc: Some(hlc(20, A)), ..DELETE };
        let d = decide_deleted(ConflictPolicy::Reject, own, Some(3), hlc(15, A));
        assert_eq!(d, (Decision::Drop, whole()));
    }

    #[test]
    fn outcomes_name_what_won() {
        assert_eq!(outcome_of(&Decision::Apply, &[], &fields(&["a"])), ConflictOutcome::Change);
        assert_eq!(outcome_of(&Decision::Drop, &fields(&["a"]), &[]), ConflictOutcome::Stored);
        assert_eq!(
            outcome_of(
                &Decision::Partial { taken: fields(&["b"]) },
                &fields(&["a"]),
                &fields(&["b"])
            ),
            ConflictOutcome::Mixed
        );
        assert_eq!(outcome_of(&Decision::Reject, &[], &[]), ConflictOutcome::Rejected);
    }
}
