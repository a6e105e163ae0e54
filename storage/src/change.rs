//! What callers ask the leader to commit.

use lsync_protocol::{ChangeType, Hlc, ProposedChange, SyncLogEntry};

use crate::model::{encode, Syncable};

/// A change a caller asks the leader to commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// A registered model type.
    pub model_type: String,
    /// The record's primary key.
    pub record_id: String,
    /// Insert, Update, Patch or Delete (a Bulk change is committed like [`BulkOperation`]).
    pub change_type: ChangeType,
    /// The whole record (`encode`d) for Insert/Update, the fields it sets for Patch (a
    /// MessagePack map of field name to value, [`crate::fields`]), empty for Delete.
    pub data: Vec<u8>,
    /// The hybrid logical clock timestamp the change got where it was made (docs/architecture.md,
    /// "Conflicts"). `None` until the storage stamps it: when it is queued in the outbox, or
    /// when the leader commits it.
    pub hlc: Option<Hlc>,
    /// The version of the record the change was based on (0: absent). `None` until queued (the
    /// version the device shows committed then), or for a change the leader commits directly
    /// (based on the current version: never in conflict).
    pub base_version: Option<i64>,
}

impl Change {
    /// Inserts `model` (which must not exist yet).
    pub fn insert<M: Syncable>(model: &M) -> Change {
        Change {
            model_type: M::MODEL_TYPE.to_owned(),
            record_id: model.record_id(),
            change_type: ChangeType::Insert,
            data: encode(model),
            hlc: None,
            base_version: None,
        }
    }

    /// Replaces the stored record with `model` (which must exist).
    pub fn update<M: Syncable>(model: &M) -> Change {
        Change {
            model_type: M::MODEL_TYPE.to_owned(),
            record_id: model.record_id(),
            change_type: ChangeType::Update,
            data: encode(model),
            hlc: None,
            base_version: None,
        }
    }

    /// Sets some fields of record `record_id` of model type `model_type`, leaving the others as
    /// they are when the leader commits it (docs/architecture.md, "Field-level changes"):
    /// `fields` serializes as a map of field name to value, each value as the record's own
    /// encoding has it — e.g. `serde_json::json!({"name": "Work"})` or a struct of those
    /// fields. A [`ChangeType::Patch`]: the leader merges it into the record's current row and
    /// commits a whole-record Update, so two devices that set different fields of one record
    /// both keep their edit. The record must exist (a patch of a missing record is dropped, as
    /// a delete of one is) and have every field named.
    ///
    /// Checked when it is written (`InvalidChange` unless `fields` is a non-empty map, and
    /// unless the merged record is valid).
    pub fn update_fields<F: serde::Serialize + ?Sized>(
        model_type: impl Into<String>,
        record_id: impl Into<String>,
        fields: &F,
    ) -> Change {
        Change {
            model_type: model_type.into(),
            record_id: record_id.into(),
            change_type: ChangeType::Patch,
            data: encode(fields),
            hlc: None,
            base_version: None,
        }
    }

    /// Deletes record `record_id` of model `M` (which must exist).
    pub fn delete<M: Syncable>(record_id: impl Into<String>) -> Change {
        Change {
            model_type: M::MODEL_TYPE.to_owned(),
            record_id: record_id.into(),
            change_type: ChangeType::Delete,
            data: Vec::new(),
            hlc: None,
            base_version: None,
        }
    }
}

impl Change {
    /// Whether `self` is, under the proposal rule (docs/architecture.md, "Concurrent
    /// changes"), the change to record `record_id` of `model_type` of type `change_type` with
    /// `data`: the same record and data, and the same kind of change — an Insert and an Update
    /// are one kind, since the rule turns either into the other. A Patch is committed as an
    /// Update whose data holds the patch's fields with the patch's values (the other fields are
    /// the row's at the leader then): compared by those fields.
    pub(crate) fn same_as(
        &self,
        model_type: &str,
        record_id: &str,
        change_type: ChangeType,
        data: &[u8],
    ) -> bool {
        let kind = |t: ChangeType| match t {
            ChangeType::Insert | ChangeType::Update => ChangeType::Update,
            other => other,
        };
        if self.model_type != model_type || self.record_id != record_id {
            return false;
        }
        if self.change_type == ChangeType::Patch {
            return change_type == ChangeType::Update
                && crate::fields::fields_match(data, &self.data);
        }
        kind(self.change_type) == kind(change_type) && self.data == data
    }
}

/// Metadata of a large operation (e.g. indexing a location of 1M files) replicated as ONE
/// entry ([`ChangeType::Bulk`]); followers queue a [`crate::LocalJob`] instead of receiving rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BulkOperation {
    /// A registered model type the operation is about (e.g. `location`).
    pub model_type: String,
    /// The record the operation is about (e.g. the location's id).
    pub record_id: String,
    /// Opaque metadata for the job (MessagePack by convention).
    pub data: Vec<u8>,
}

impl From<BulkOperation> for Change {
    fn from(op: BulkOperation) -> Change {
        Change {
            model_type: op.model_type,
            record_id: op.record_id,
            change_type: ChangeType::Bulk,
            data: op.data,
            hlc: None,
            base_version: None,
        }
    }
}

impl From<ProposedChange> for Change {
    fn from(change: ProposedChange) -> Change {
        Change {
            model_type: change.model_type,
            record_id: change.record_id,
            change_type: change.change_type,
            data: change.data,
            hlc: change.hlc,
            base_version: change.base_version,
        }
    }
}

impl From<Change> for ProposedChange {
    fn from(change: Change) -> ProposedChange {
        ProposedChange {
            model_type: change.model_type,
            record_id: change.record_id,
            change_type: change.change_type,
            data: change.data,
            hlc: change.hlc,
            base_version: change.base_version,
        }
    }
}

impl Change {
    /// The change a log entry committed, to be proposed again (a deposed leader's orphaned
    /// entry, docs/architecture.md, "Divergence repair"), with what the entry knew of it: its
    /// timestamp, the version it was based on (the one before the entry's; the repair puts the
    /// record's version where the logs parted instead, `Applier::recover_orphans`), and — for an entry
    /// that set some fields only — just those fields, as a Patch, so that proposing it again
    /// does not write the record's other fields back over newer edits.
    pub fn from_entry(entry: SyncLogEntry) -> Change {
        let base_version = matches!(
            entry.change_type,
            ChangeType::Insert | ChangeType::Update | ChangeType::Delete
        )
        .then(|| entry.version.saturating_sub(1));
        let (change_type, data) = match &entry.stamp {
            Some(stamp) if !stamp.fields.is_empty() && entry.change_type == ChangeType::Update => {
                match crate::fields::extract(&entry.data, &stamp.fields) {
                    Ok(patch) => (ChangeType::Patch, patch),
                    Err(_) => (entry.change_type, entry.data),
                }
            }
            _ => (entry.change_type, entry.data),
        };
        Change {
            model_type: entry.model_type,
            record_id: entry.record_id,
            change_type,
            data,
            hlc: entry.stamp.map(|s| s.hlc),
            base_version,
        }
    }
}
