//! The oracle: what the workload wrote and what it was told, checked against the final logs.
//!
//! Every write is one proposal of one to three tag changes. A change is either a whole-record
//! upsert (`name` and `color` both set to the change's token) or a Patch of one field of a
//! record (`name` or `color` set to the token). Each change carries a token no other change
//! carries (`op-<n>.<k>`), so an entry of the log says which change it came from: the tokens of
//! an entry are the values of the fields its stamp says it set (every field for a whole-record
//! entry). The record ids come from a small pool, so writes from different devices touch the
//! same records and fields; the leader decides concurrent ones by last-writer-wins
//! (docs/architecture.md, "Conflicts").
//!
//! What a write was told ([`Outcome`]) decides what the final log must hold:
//! - `Committed { first, last }` (acknowledged): every change exactly once, or **decided
//!   away**: missing because every field it sets was set by a change with a later timestamp
//!   (its timestamp is read back where it was stamped: its outbox entry, or its committed
//!   entry; else the conflict record that names it). For a write made at the `majority` level,
//!   at exactly those sequences (that is its promise: a majority held it there). For one at
//!   `local`, the answers whose entries ended elsewhere are counted as `moved` (a `local`
//!   answer's sequence may change after a failover, docs/operations.md; a failure only with
//!   `--strict-sequences`).
//! - `Unresolved` (a `majority` write no majority held within the request timeout: answered
//!   pending): every change exactly once or decided away, eventually, at any sequence.
//! - `Queued` (durable in the writer's outbox): the same, eventually.
//! - `Refused` or `Unknown` (the writer crashed before answering): at most once each.
//!
//! The only loss allowed is the one the documentation admits: a write whose every copy was on
//! a disk that lost it — the changes that, when a device lost power or had an older copy put
//! back, were on that device only ([`Oracle::note_loss`] is told which, from the disks as they
//! were). Such writes may be missing (never duplicated). Nothing else is ever excused.
//!
//! Two more rules are checked on the final log ([`last_writer_wins`], [`conflicts_are_real`]):
//! every field of every record holds the value of the write with the largest timestamp among
//! those that set it in the log or were decided against it in a conflict record — a stamped
//! delete is a write of every field (the record is absent iff a delete is the latest write) —
//! and every conflict record names fields really set concurrently (by another device, after
//! the change's base version), or a delete its change did not see.

use std::collections::{BTreeMap, BTreeSet};

use lsync_protocol::{ChangeType, Hlc, SyncLogEntry};
use lsync_storage::Conflict;
use serde::{Deserialize, Serialize};

use crate::net::Ix;

/// What the writer of a write was told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// No answer yet.
    Pending,
    /// Committed as entries `first..=last`.
    Committed { first: u64, last: u64 },
    /// Durable in the writer's outbox, to be delivered.
    Queued,
    /// A `majority` write the leader committed that no majority held within the request
    /// timeout (`WriteOutcome::Pending`): committed once, eventually.
    Unresolved,
    /// Refused (nothing may be committed).
    Refused(String),
    /// The writer crashed before it answered.
    Unknown,
}

/// One write of the workload.
#[derive(Debug, Clone)]
pub struct Write {
    pub device: Ix,
    pub proposal_id: uuid::Uuid,
    /// The changes' names (`op-<n>.<k>`, their tokens), in order.
    pub names: Vec<String>,
    /// What each change sets, in order.
    pub parts: Vec<Part>,
    /// Each change's timestamp, once read back from where it was stamped.
    pub hlcs: Vec<Option<Hlc>>,
    pub outcome: Outcome,
    /// Made at the `majority` level.
    pub majority: bool,
    /// Every copy of it was lost with a disk: it may be missing.
    pub may_be_lost: bool,
    /// Every copy but its writer's outbox's was lost with a disk ([`Oracle::note_outboxed_loss`]).
    pub lost_unless_queued: bool,
}

/// What one change of a write sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// The record (a tag id).
    pub record: String,
    /// The one field a Patch sets (`name` or `color`); `None`: the whole record (an upsert
    /// setting `name` and `color` to the token).
    pub field: Option<&'static str>,
}

impl Part {
    /// The fields it sets among those that carry tokens.
    pub fn fields(&self) -> Vec<&'static str> {
        match self.field {
            Some(f) => vec![f],
            None => TOKEN_FIELDS.to_vec(),
        }
    }
}

/// The fields of a tag that carry the workload's tokens.
pub const TOKEN_FIELDS: [&str; 2] = ["name", "color"];

/// What the final check found.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Verdict {
    pub writes: u64,
    pub acknowledged: u64,
    /// Of the acknowledged, those made at the `majority` level.
    pub majority: u64,
    pub unresolved: u64,
    pub queued: u64,
    pub refused: u64,
    pub unknown: u64,
    /// Writes excused as lost with a disk (and missing).
    pub lost_with_disk: u64,
    /// Acknowledged writes whose entries are not at the answered sequences.
    pub moved: u64,
    /// Field-level changes (Patches) among the writes' changes.
    pub patches: u64,
    /// Changes that must be committed, missing because later writes set every field they set
    /// (last-writer-wins).
    pub decided_away: u64,
    /// Conflict records in the final log.
    pub conflicts: u64,
    /// Failures: each a sentence.
    pub failures: Vec<String>,
}

/// The record of every write.
#[derive(Debug, Default)]
pub struct Oracle {
    writes: Vec<Write>,
    /// name → write index.
    by_name: BTreeMap<String, usize>,
    /// proposal id → write index.
    by_proposal: BTreeMap<uuid::Uuid, usize>,
}

/// A tag's fields as a whole record or a patch carries them (each may be absent).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct TagFields {
    name: Option<String>,
    color: Option<String>,
}

impl TagFields {
    fn decode(data: &[u8]) -> Option<Self> {
        lsync_storage::decode::<TagFields>(data).ok()
    }

    fn get(&self, field: &str) -> Option<&str> {
        match field {
            "name" => self.name.as_deref(),
            "color" => self.color.as_deref(),
            _ => None,
        }
    }
}

/// Whether `entry` sets `field` (its stamp names it, or it writes the whole record).
fn sets(entry: &SyncLogEntry, field: &str) -> bool {
    matches!(entry.change_type, ChangeType::Insert | ChangeType::Update)
        && entry
            .stamp
            .as_ref()
            .is_none_or(|s| s.fields.is_empty() || s.fields.iter().any(|f| f == field))
}

/// Whether `entry` writes `field`: sets it ([`sets`]), or is a stamped Delete of its record (a
/// delete is a write of every field at its timestamp: the record's absence).
fn writes(entry: &SyncLogEntry, field: &str) -> bool {
    sets(entry, field) || (entry.change_type == ChangeType::Delete && entry.stamp.is_some())
}

/// Whether conflict `c` was decided against a deleted record (its stored side is the deletion:
/// version 0, nothing stored).
fn against_deleted(c: &Conflict) -> bool {
    c.current_version == 0 && c.stored.is_empty()
}

/// The workload's tokens a tag entry carries: the values of the token fields it set (by its
/// stamp; every field of a whole-record entry, or of an unstamped one).
pub fn tokens_of(entry: &SyncLogEntry) -> Vec<String> {
    if entry.model_type != "tag" || entry.change_type == ChangeType::Delete {
        return Vec::new();
    }
    let Some(fields) = TagFields::decode(&entry.data) else { return Vec::new() };
    let mut out: Vec<String> = TOKEN_FIELDS
        .iter()
        .filter(|f| sets(entry, f))
        .filter_map(|f| fields.get(f))
        .filter(|v| v.starts_with("op-"))
        .map(str::to_owned)
        .collect();
    out.dedup();
    out
}

/// The token a workload change (as queued) carries: its name, or the value of the one field
/// a Patch sets.
pub fn token_of_change(change: &lsync_storage::Change) -> Option<String> {
    if change.model_type != "tag" {
        return None;
    }
    let fields = TagFields::decode(&change.data)?;
    fields.name.or(fields.color).filter(|v| v.starts_with("op-"))
}

/// The token a conflict record's proposed change carries.
fn token_of_conflict(c: &Conflict) -> Option<String> {
    let fields = TagFields::decode(&c.proposed)?;
    fields.name.or(fields.color).filter(|v| v.starts_with("op-"))
}

/// The conflict a log entry records, if it is one (model `lsync.conflict`).
pub fn conflict_of(entry: &SyncLogEntry) -> Option<Conflict> {
    if entry.model_type != lsync_storage::conflicts::CONFLICT_MODEL_TYPE
        || entry.change_type == ChangeType::Delete
    {
        return None;
    }
    lsync_storage::decode::<Conflict>(&entry.data).ok()
}

/// The first token of a tag entry (the name of the write it came from), if any: used where one
/// entry stands for one change (the names a disk holds).
pub fn name_of(entry: &SyncLogEntry) -> Option<String> {
    tokens_of(entry).into_iter().next()
}

impl Oracle {
    /// Records a new write (its changes' names and what each sets); returns its index.
    pub fn record(
        &mut self,
        device: Ix,
        proposal_id: uuid::Uuid,
        names: Vec<String>,
        parts: Vec<Part>,
        majority: bool,
    ) -> usize {
        let ix = self.writes.len();
        for n in &names {
            self.by_name.insert(n.clone(), ix);
        }
        self.by_proposal.insert(proposal_id, ix);
        let hlcs = vec![None; names.len()];
        self.writes.push(Write {
            device,
            proposal_id,
            names,
            parts,
            hlcs,
            outcome: Outcome::Pending,
            majority,
            may_be_lost: false,
            lost_unless_queued: false,
        });
        ix
    }

    /// The timestamp change `name` got where it was stamped (read back from the outbox or the
    /// committed entry). The first one read is kept (a change keeps its timestamp).
    pub fn stamped(&mut self, name: &str, hlc: Hlc) {
        let Some(&w) = self.by_name.get(name) else { return };
        let w = &mut self.writes[w];
        if let Some(k) = w.names.iter().position(|n| n == name) {
            w.hlcs[k].get_or_insert(hlc);
        }
    }

    /// The writer was told `outcome`.
    pub fn answer(&mut self, write: usize, outcome: Outcome) {
        self.writes[write].outcome = outcome;
    }

    /// Writes not answered yet on device `ix`, which crashed: their outcome is unknown.
    pub fn crashed(&mut self, ix: Ix) {
        for w in &mut self.writes {
            if w.device == ix && w.outcome == Outcome::Pending {
                w.outcome = Outcome::Unknown;
            }
        }
    }

    /// The writes.
    pub fn writes(&self) -> &[Write] {
        &self.writes
    }

    /// Which write a change name belongs to.
    pub fn write_of(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    /// A disk lost data: `names` were on it before and are on no device now (neither in a log
    /// nor in an outbox): their writes may be missing.
    pub fn note_loss(&mut self, names: &BTreeSet<String>) {
        for n in names {
            if let Some(&w) = self.by_name.get(n) {
                self.writes[w].may_be_lost = true;
            }
        }
    }

    /// Changes a disk lost that were held elsewhere only in their writer's outbox: the writer
    /// drops that copy if the answer the lost device sent before reaches it. Such a write may
    /// be missing only if it ends answered committed at the `local` level (what that level
    /// allows: its leader's disk lost before any follower fetched it); any other answer means
    /// the writer kept its copy.
    pub fn note_outboxed_loss(&mut self, names: &BTreeSet<String>) {
        for n in names {
            if let Some(&w) = self.by_name.get(n) {
                self.writes[w].lost_unless_queued = true;
            }
        }
    }

    /// Whether change `k` of write `w`, missing from `log`, was decided away: a conflict record
    /// names it, and every field it sets was written on its record, in the log, by a change
    /// with a later timestamp — a
    /// delete writes every field — (its own timestamp as read back, else the one of the
    /// conflict record that names it); or it is a Patch whose conflict record says its record
    /// was deleted (a patch never re-creates a record: the delete wins it, whatever the
    /// timestamps; [`conflicts_are_real`] checks the delete).
    fn decided_away(
        &self,
        w: &Write,
        k: usize,
        log: &[SyncLogEntry],
        conflicts: &BTreeMap<String, Conflict>,
    ) -> bool {
        let part = &w.parts[k];
        // a change is always either in the log or in a conflict record (docs/architecture.md,
        // "Conflicts"): one decided away without a record was lost, whatever came after it
        let Some(conflict) = conflicts.get(&w.names[k]) else { return false };
        if part.field.is_some() && against_deleted(conflict) {
            return true;
        }
        let hlc = w.hlcs[k].unwrap_or(conflict.proposed_hlc);
        part.fields().iter().all(|f| {
            log.iter().any(|e| {
                e.model_type == "tag"
                    && e.record_id == part.record
                    && writes(e, f)
                    && e.stamp.as_ref().is_some_and(|s| s.hlc > hlc)
            })
        })
    }

    /// Checks a final log (every device holds the same one, checked apart) against the writes.
    pub fn check(&self, log: &[SyncLogEntry]) -> Verdict {
        let mut v = Verdict { writes: self.writes.len() as u64, ..Verdict::default() };
        let mut seen: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
        // conflict records by the token of the change they decided
        let mut conflicts: BTreeMap<String, Conflict> = BTreeMap::new();
        for e in log {
            if let Some(c) = conflict_of(e) {
                v.conflicts += 1;
                if let Some(t) = token_of_conflict(&c) {
                    conflicts.insert(t, c);
                }
                continue;
            }
            if e.model_type != "tag" {
                continue;
            }
            let mut tokens = tokens_of(e);
            if tokens.is_empty() {
                // a whole-record change that kept none of its token fields (its `id` only):
                // found by its proposal and record
                let part = e.proposal_id.and_then(|p| self.by_proposal.get(&p)).and_then(|&w| {
                    let w = &self.writes[w];
                    (0..w.parts.len())
                        .find(|&k| {
                            w.parts[k].record == e.record_id
                                && w.parts[k].field.is_none()
                                && !seen.contains_key(w.names[k].as_str())
                        })
                        .map(|k| w.names[k].clone())
                });
                match part {
                    Some(name) => tokens.push(name),
                    None => {
                        v.failures.push(format!(
                            "entry {} is a tag change the workload never makes",
                            e.sequence
                        ));
                        continue;
                    }
                }
            }
            for name in tokens {
                match self.by_name.get_key_value(name.as_str()) {
                    Some((k, _)) => seen.entry(k.as_str()).or_default().push(e.sequence),
                    None => v
                        .failures
                        .push(format!("entry {} holds {name:?}, which no write made", e.sequence)),
                }
            }
        }
        for (ix, w) in self.writes.iter().enumerate() {
            v.patches += w.parts.iter().filter(|p| p.field.is_some()).count() as u64;
            let copies: Vec<&[u64]> = w
                .names
                .iter()
                .map(|n| seen.get(n.as_str()).map_or(&[][..], Vec::as_slice))
                .collect();
            let present = copies.iter().filter(|c| !c.is_empty()).count();
            let away: Vec<usize> = (0..w.names.len())
                .filter(|&k| copies[k].is_empty() && self.decided_away(w, k, log, &conflicts))
                .collect();
            if let Some(c) = copies.iter().find(|c| c.len() > 1) {
                v.failures.push(format!(
                    "write {ix} ({:?} on device {}) is in the log {} times, at {c:?}",
                    w.outcome,
                    w.device,
                    c.len()
                ));
            }
            let must = match &w.outcome {
                Outcome::Committed { .. } => {
                    v.acknowledged += 1;
                    v.majority += u64::from(w.majority);
                    true
                }
                Outcome::Unresolved => {
                    v.unresolved += 1;
                    true
                }
                Outcome::Queued => {
                    v.queued += 1;
                    true
                }
                Outcome::Refused(_) => {
                    v.refused += 1;
                    if present > 0 {
                        v.failures.push(format!("write {ix} was refused but is in the log"));
                    }
                    false
                }
                Outcome::Unknown | Outcome::Pending => {
                    v.unknown += 1;
                    false
                }
            };
            // a proposal is atomic: all of it is accounted for (committed or decided away),
            // or none of it is in the log
            let accounted = present + away.len();
            if present > 0 && accounted < w.names.len() {
                v.failures.push(format!(
                    "write {ix} (device {}) is in the log in part: {present} of {} changes \
                     ({} decided away by later writes)",
                    w.device,
                    w.names.len(),
                    away.len()
                ));
            }
            if must {
                v.decided_away += away.len() as u64;
            }
            let answered_local = !w.majority && matches!(w.outcome, Outcome::Committed { .. });
            if must && accounted < w.names.len() && present == 0 {
                if w.may_be_lost || (w.lost_unless_queued && answered_local) {
                    v.lost_with_disk += 1;
                } else {
                    v.failures.push(format!(
                        "write {ix} ({:?} on device {}, proposal {}) is missing",
                        w.outcome, w.device, w.proposal_id
                    ));
                }
            }
            if let Outcome::Committed { first, last } = w.outcome {
                let at: Vec<u64> = copies.iter().filter_map(|c| c.first().copied()).collect();
                let expected: Vec<u64> = (first..=last).collect();
                // A majority answer names the first and last of its entries (a proposal
                // completed after a failover is not contiguous: the ends are what it promises).
                let ends = (at.first().copied(), at.last().copied()) == (Some(first), Some(last));
                let kept = if w.majority { ends } else { at == expected };
                // (a change decided away wrote no entry: its answer covers the others only)
                if present == w.names.len() && !kept {
                    if w.majority {
                        v.failures.push(format!(
                            "write {ix} (majority, device {}) was acknowledged at \
                             {first}..={last} but is at {at:?}",
                            w.device
                        ));
                    } else {
                        v.moved += 1;
                    }
                }
            }
        }
        v.failures.extend(last_writer_wins(log));
        v.failures.extend(conflicts_are_real(log));
        v
    }
}

/// Last-writer-wins, on a final log: for every tag record and every token field, what the log
/// leaves (its last entry: the field's value, or the record's absence after a Delete) is what
/// the write with the largest timestamp left, among the entries that write the field — a
/// stamped Delete writes every field: the record is absent iff a delete is the latest write —
/// and the conflict records decided against a change that wrote it (a change of the field, or
/// of the whole record: an update decided against a delete; a patch decided against a deleted
/// record is left out — a patch never re-creates a record, the delete wins it whatever the
/// timestamps — and so is a delete decided against an edit, which loses to a later write of
/// any field). Records with an unstamped entry are skipped (written before
/// stamps). Returns one failure per field that breaks it.
pub fn last_writer_wins(log: &[SyncLogEntry]) -> Vec<String> {
    let mut failures = Vec::new();
    let mut records: BTreeMap<&str, Vec<&SyncLogEntry>> = BTreeMap::new();
    let mut against: BTreeMap<&str, Vec<Conflict>> = BTreeMap::new();
    for e in log {
        if e.model_type == "tag" {
            records.entry(e.record_id.as_str()).or_default().push(e);
        } else if let Some(c) = conflict_of(e) {
            let patch_of_deleted = c.change_type == "patch" && against_deleted(&c);
            if c.model_type == "tag"
                && c.outcome != lsync_storage::ConflictOutcome::Rejected
                && !patch_of_deleted
            {
                if let Some((k, _)) = records.get_key_value(c.record_id.as_str()) {
                    against.entry(k).or_default().push(c);
                }
            }
        }
    }
    // a value of a field: `None`, the record is absent (deleted)
    let value_in = |data: &[u8], field: &str| {
        TagFields::decode(data).and_then(|f| f.get(field).map(str::to_owned))
    };
    for (record, entries) in &records {
        if entries.iter().any(|e| e.stamp.is_none()) {
            continue;
        }
        let Some(last) = entries.last() else { continue };
        let now: Option<TagFields> = match last.change_type {
            ChangeType::Delete => None,
            _ => match TagFields::decode(&last.data) {
                Some(f) => Some(f),
                None => continue,
            },
        };
        for field in TOKEN_FIELDS {
            let mut best: Option<(Hlc, Option<Option<String>>, String)> = None;
            let mut offer = |hlc: Hlc, value: Option<Option<String>>, from: String| {
                if best.as_ref().is_none_or(|b| hlc > b.0) {
                    best = Some((hlc, value, from));
                }
            };
            for e in entries {
                let Some(stamp) = &e.stamp else { continue };
                if !writes(e, field) {
                    continue;
                }
                let value = match e.change_type {
                    ChangeType::Delete => None,
                    _ => Some(value_in(&e.data, field)),
                };
                offer(stamp.hlc, value, format!("entry {}", e.sequence));
            }
            for c in against.get(record).into_iter().flatten() {
                let value = match c.change_type.as_str() {
                    // a delete decided against an edit concerns the whole record: it loses to
                    // a later write of any field, which a field's history alone does not say
                    "delete" => continue,
                    // the whole record (against a delete) or the fields it names
                    _ if c.fields.is_empty() || c.fields.iter().any(|f| f == field) => {
                        Some(value_in(&c.proposed, field))
                    }
                    _ => continue,
                };
                offer(c.proposed_hlc, value, format!("conflict {}", c.id));
            }
            let Some((hlc, value, from)) = best else { continue };
            let holds = now.as_ref().map(|f| f.get(field).map(str::to_owned));
            if holds != value {
                // the field's history, for the report: entry, version, timestamp, fields, value
                let history: Vec<String> = entries
                    .iter()
                    .filter(|e| writes(e, field))
                    .map(|e| {
                        let stamp = e.stamp.as_ref();
                        let value = match e.change_type {
                            ChangeType::Delete => "deleted".to_owned(),
                            _ => format!("{:?}", value_in(&e.data, field)),
                        };
                        format!(
                            "#{} v{} {} {:?} {value}",
                            e.sequence,
                            e.version,
                            stamp.map_or("-".into(), |s| s.hlc.to_string()),
                            stamp.map(|s| s.fields.clone()).unwrap_or_default(),
                        )
                    })
                    .collect();
                let show = |v: &Option<Option<String>>| match v {
                    None => "nothing (deleted)".to_owned(),
                    Some(v) => format!("{v:?}"),
                };
                failures.push(format!(
                    "last writer wins: tag {record:?} field {field} holds {}, but the latest \
                     write of it is {} ({from}, at {hlc}); its writes: {}",
                    show(&holds),
                    show(&value),
                    history.join("; ")
                ));
            }
        }
    }
    failures
}

/// Every conflict record of a final log names a record and fields really written
/// concurrently: each field it names was set on that record, by an entry of another device
/// than the change's (by timestamp) at a version after the base and up to the version at the
/// decision, or, if the stored value was kept, by an entry up to that version with a later
/// timestamp than the change's (a write its device never saw); a conflict at version 0 follows
/// a Delete of its record ([`deleted_since`]); a field it says the change took has an older
/// timestamp there than the change's, one it says was kept a later one. Returns one failure
/// per broken rule.
pub fn conflicts_are_real(log: &[SyncLogEntry]) -> Vec<String> {
    let mut failures = Vec::new();
    for (i, e) in log.iter().enumerate() {
        let Some(c) = conflict_of(e) else { continue };
        let id = &c.id;
        if c.current_version == 0 {
            failures.extend(deleted_since(log, i, &c));
            continue;
        }
        // (its base may name a version of another history — a log that lost its tail — so
        // it is not compared with the version at the decision: each field is checked below)
        let before: Vec<&SyncLogEntry> = log[..i]
            .iter()
            .filter(|x| x.model_type == c.model_type && x.record_id == c.record_id)
            .filter(|x| x.version <= c.current_version)
            .collect();
        for field in &c.fields {
            let concurrent = before.iter().any(|x| {
                x.version > c.base_version
                    && sets(x, field)
                    && x.stamp.as_ref().is_none_or(|s| s.hlc.device != c.proposed_hlc.device)
            });
            // or a write of it with a later timestamp (its device never saw it, whatever the
            // change's base names): the change's older value lost, recorded
            let own_later = c.kept.contains(field)
                && before.iter().any(|x| {
                    sets(x, field) && x.stamp.as_ref().is_some_and(|s| s.hlc > c.proposed_hlc)
                });
            if !concurrent && !own_later {
                failures.push(format!(
                    "conflict {id} (entry {}) names field {field} of {} {:?}, which no other \
                     device set between versions {} and {}",
                    e.sequence, c.model_type, c.record_id, c.base_version, c.current_version
                ));
            }
            let stored =
                before.iter().rev().find(|x| sets(x, field)).and_then(|x| x.stamp.as_ref());
            let Some(stored) = stored else { continue };
            let taken = c.taken.contains(field);
            let kept = c.kept.contains(field);
            if (taken && c.proposed_hlc <= stored.hlc) || (kept && c.proposed_hlc > stored.hlc) {
                failures.push(format!(
                    "conflict {id} (entry {}) says field {field} was {} but the change's \
                     timestamp {} is {} the stored one {}",
                    e.sequence,
                    if taken { "taken" } else { "kept" },
                    c.proposed_hlc,
                    if taken { "not later than" } else { "later than" },
                    stored.hlc
                ));
            }
        }
        for f in c.kept.iter().chain(&c.taken) {
            if !c.fields.contains(f) {
                failures.push(format!("conflict {id} lists {f} as kept or taken, not in conflict"));
            }
        }
    }
    failures
}

/// The rules of conflict `c`, entry `i` of `log`, decided against a deleted record (version 0,
/// nothing stored): the log deleted the record before the decision (its last entry before,
/// the change's own re-creation aside, is a Delete), the very delete the record names (its
/// timestamp, if it names one); and for an Insert or Update (decided against the delete's
/// marker), the delete is one the change did not see — after its base, or later than it — and
/// the later of the two won: kept deleted (`stored`, `rejected`) if the delete is the later,
/// re-created by the change (`change`) if not. (A patch never re-creates: the delete wins it.)
fn deleted_since(log: &[SyncLogEntry], i: usize, c: &Conflict) -> Vec<String> {
    let mut failures = Vec::new();
    let (id, sequence) = (&c.id, log[i].sequence);
    let what = format!("{} {:?}", c.model_type, c.record_id);
    let own = |x: &SyncLogEntry| {
        x.proposal_id == Some(c.proposal_id) && x.change_type == ChangeType::Insert
    };
    let of_record: Vec<&SyncLogEntry> = log[..i]
        .iter()
        .filter(|x| x.model_type == c.model_type && x.record_id == c.record_id)
        .collect();
    let last = of_record.iter().rev().find(|x| !own(x));
    let Some(delete) = last.filter(|x| x.change_type == ChangeType::Delete) else {
        failures.push(format!(
            "conflict {id} (entry {sequence}) says {what} was deleted, but it was not"
        ));
        return failures;
    };
    let deleted_at = delete.stamp.as_ref().map(|s| s.hlc);
    if c.stored_hlc.is_some() && c.stored_hlc != deleted_at {
        failures.push(format!(
            "conflict {id} (entry {sequence}) names a delete of {what} at {:?}, but its delete \
             (entry {}) is at {deleted_at:?}",
            c.stored_hlc, delete.sequence
        ));
    }
    if c.change_type == "patch" {
        return failures;
    }
    let Some(deleted_at) = deleted_at else {
        failures.push(format!(
            "conflict {id} (entry {sequence}) decides an {} against the unstamped delete of \
             {what} (entry {}): it left no marker",
            c.change_type, delete.sequence
        ));
        return failures;
    };
    let unseen =
        (c.base_version > 0 && c.base_version < delete.version) || deleted_at > c.proposed_hlc;
    if !unseen {
        failures.push(format!(
            "conflict {id} (entry {sequence}): its change (based on version {}, at {}) saw the \
             delete of {what} (entry {}, version {}, at {deleted_at}): no conflict",
            c.base_version, c.proposed_hlc, delete.sequence, delete.version
        ));
    }
    let re_created = of_record.iter().any(|x| own(x) && x.sequence > delete.sequence);
    let later = c.proposed_hlc > deleted_at;
    let right = match c.outcome {
        lsync_storage::ConflictOutcome::Change => later && re_created,
        lsync_storage::ConflictOutcome::Stored => !later && !re_created,
        lsync_storage::ConflictOutcome::Rejected => !re_created,
        lsync_storage::ConflictOutcome::Mixed => false,
    };
    if !right {
        failures.push(format!(
            "conflict {id} (entry {sequence}) says {:?} against the delete of {what} at \
             {deleted_at}, but the change is at {} and {} the record",
            c.outcome,
            c.proposed_hlc,
            if re_created { "re-created" } else { "did not re-create" }
        ));
    }
    failures
}

#[cfg(test)]
mod tests {
    use lsync_protocol::EntryStamp;
    use lsync_storage::{Change, ConflictOutcome, ConflictPolicy, Tag};
    use uuid::Uuid;

    use super::*;

    /// Records a write of whole-record changes of `r1`.
    fn rec(o: &mut Oracle, device: Ix, id: Uuid, names: Vec<String>, majority: bool) -> usize {
        let parts = names.iter().map(|_| Part { record: "r1".into(), field: None }).collect();
        o.record(device, id, names, parts, majority)
    }

    const A: Uuid = Uuid::from_u128(0xa);
    const B: Uuid = Uuid::from_u128(0xb);

    fn hlc(ms: u64, device: Uuid) -> Hlc {
        Hlc { physical_ms: ms, counter: 0, device }
    }

    /// A stamped entry of tag `r2` at `version`, the record as it is after it (`name`,
    /// `color`), setting `fields` (empty: all) at `ms` on `device`.
    fn stamped(
        sequence: u64,
        version: i64,
        (name, color): (&str, &str),
        fields: &[&str],
        (ms, device): (u64, Uuid),
    ) -> SyncLogEntry {
        let tag = Tag { id: "r2".into(), name: name.into(), color: Some(color.into()) };
        let mut e = entry(sequence, name);
        e.record_id = "r2".into();
        e.data = lsync_storage::encode(&tag);
        e.version = version;
        e.change_type = if version == 1 { ChangeType::Insert } else { ChangeType::Update };
        e.stamp = Some(EntryStamp {
            hlc: hlc(ms, device),
            fields: fields.iter().map(|f| (*f).to_owned()).collect(),
        });
        e
    }

    /// The entry at `sequence` recording conflict `c` (as the leader commits it).
    fn recorded(sequence: u64, c: &Conflict) -> SyncLogEntry {
        let change = Change::insert(c);
        let mut e = entry(sequence, "");
        e.model_type = change.model_type;
        e.record_id = change.record_id;
        e.data = change.data;
        e
    }

    /// The entry recording a conflict on `r2`'s `field`: a patch to `value` at `ms` by `device`,
    /// based on `base`, decided at `current` (`kept`: the stored value won).
    fn conflict(
        sequence: u64,
        field: &str,
        value: &str,
        (base, current): (i64, i64),
        (ms, device): (u64, Uuid),
        kept: bool,
    ) -> SyncLogEntry {
        let patch: BTreeMap<&str, &str> = [(field, value)].into();
        let c = Conflict {
            id: format!("p:{sequence}"),
            model_type: "tag".into(),
            record_id: "r2".into(),
            policy: ConflictPolicy::LastWriterWins,
            outcome: if kept { ConflictOutcome::Stored } else { ConflictOutcome::Change },
            fields: vec![field.to_owned()],
            kept: if kept { vec![field.to_owned()] } else { vec![] },
            taken: if kept { vec![] } else { vec![field.to_owned()] },
            change_type: "patch".into(),
            base_version: base,
            current_version: current,
            stored: Vec::new(),
            stored_hlc: None,
            proposed: lsync_storage::encode(&patch),
            proposed_hlc: hlc(ms, device),
            origin_device: device,
            proposal_id: Uuid::nil(),
            decided_at_ms: 0,
        };
        recorded(sequence, &c)
    }

    /// Device A creates r2 (op-1.0), B patches its color to op-2.0 at t=20 (version 2), A's
    /// patch of the color to op-3.0 made at t=10 on version 1 arrives later and loses.
    fn concurrent_patches(o: &mut Oracle) -> Vec<SyncLogEntry> {
        let r2 = |field| Part { record: "r2".into(), field };
        let a = o.record(0, Uuid::from_u128(1), vec!["op-1.0".into()], vec![r2(None)], false);
        o.answer(a, Outcome::Committed { first: 1, last: 1 });
        let b =
            o.record(1, Uuid::from_u128(2), vec!["op-2.0".into()], vec![r2(Some("color"))], false);
        o.answer(b, Outcome::Queued);
        let c =
            o.record(0, Uuid::from_u128(3), vec!["op-3.0".into()], vec![r2(Some("color"))], false);
        o.answer(c, Outcome::Queued);
        o.stamped("op-3.0", hlc(10, A));
        vec![
            stamped(1, 1, ("op-1.0", "op-1.0"), &[], (5, A)),
            stamped(2, 2, ("op-1.0", "op-2.0"), &["color"], (20, B)),
            conflict(3, "color", "op-3.0", (1, 2), (10, A), true),
        ]
    }

    #[test]
    fn a_patch_that_lost_to_a_later_write_is_decided_away_and_the_later_value_holds() {
        let mut o = Oracle::default();
        let log = concurrent_patches(&mut o);
        let v = o.check(&log);
        assert!(v.failures.is_empty(), "{:?}", v.failures);
        assert_eq!((v.patches, v.decided_away, v.conflicts), (2, 1, 1));
    }

    #[test]
    fn a_patch_missing_without_its_conflict_record_is_lost_though_a_later_write_came() {
        let mut o = Oracle::default();
        let mut log = concurrent_patches(&mut o);
        log.pop(); // the conflict record that decided write 3 away
        let all = o.check(&log).failures.join("\n");
        assert!(all.contains("write 2") && all.contains("missing"), "{all}");
    }

    #[test]
    fn a_missing_patch_no_later_write_explains_fails() {
        let mut o = Oracle::default();
        let mut log = concurrent_patches(&mut o);
        log.truncate(1);
        let all = o.check(&log).failures.join(
            "
",
        );
        assert!(all.contains("write 1") && all.contains("missing"), "{all}");
        assert!(all.contains("write 2") && all.contains("missing"), "{all}");
    }

    #[test]
    fn a_field_left_with_an_older_value_than_a_write_of_it_breaks_last_writer_wins() {
        // B's later color (t=20) was sequenced first; A's earlier one (t=10) overwrote it
        let log = [
            stamped(1, 1, ("op-1.0", "op-1.0"), &[], (5, A)),
            stamped(2, 2, ("op-1.0", "op-2.0"), &["color"], (20, B)),
            stamped(3, 3, ("op-1.0", "op-3.0"), &["color"], (10, A)),
        ];
        let failures = last_writer_wins(&log);
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert!(failures[0].contains("field color holds Some(\"op-3.0\")"), "{failures:?}");
        // the same writes in timestamp order: no failure
        let ordered = [log[0].clone(), log[2].clone(), log[1].clone()];
        assert!(last_writer_wins(&ordered).is_empty());
    }

    #[test]
    fn a_conflict_decided_against_a_later_change_breaks_last_writer_wins() {
        let mut log = vec![
            stamped(1, 1, ("op-1.0", "op-1.0"), &[], (5, A)),
            stamped(2, 2, ("op-1.0", "op-2.0"), &["color"], (20, B)),
        ];
        log.push(conflict(3, "color", "op-3.0", (1, 2), (30, A), true));
        let failures = last_writer_wins(&log);
        assert!(failures.iter().any(|f| f.contains("conflict p:3")), "{failures:?}");
        let wrong = conflicts_are_real(&log);
        assert!(wrong.iter().any(|f| f.contains("was kept")), "{wrong:?}");
    }

    #[test]
    fn a_conflict_on_a_field_no_other_device_set_since_its_base_is_not_real() {
        let log = [
            stamped(1, 1, ("op-1.0", "op-1.0"), &[], (5, A)),
            stamped(2, 2, ("op-2.0", "op-1.0"), &["name"], (20, B)),
            conflict(3, "color", "op-3.0", (1, 2), (10, A), true),
            conflict(4, "name", "op-4.0", (2, 2), (10, A), true),
        ];
        let failures = conflicts_are_real(&log);
        // conflict 4 is real although its base names the version at the decision: name was
        // set by B at t=20, later than the change (t=10), a write A never saw
        assert_eq!(failures.len(), 2, "{failures:?}");
        assert!(failures[0].contains("names field color"), "{failures:?}");
        // (and the color it says was kept is older than the change's: A's whole write at t=5)
        assert!(failures[1].contains("was kept"), "{failures:?}");
        assert!(conflicts_are_real(&log[..2]).is_empty());
    }

    /// A stamped Delete of tag `r2` at `version`, made at `ms` on `device`.
    fn deleted(sequence: u64, version: i64, (ms, device): (u64, Uuid)) -> SyncLogEntry {
        let mut e = stamped(sequence, version, ("", ""), &[], (ms, device));
        e.change_type = ChangeType::Delete;
        e.data = Vec::new();
        e
    }

    /// The proposal of the whole-record updates of `r2` decided against its delete.
    const UPDATE: Uuid = Uuid::from_u128(7);

    /// The entry recording A's update of the whole `r2` (both fields `value`, made at `ms`,
    /// based on version `base`, proposal [`UPDATE`]) decided against the delete made at
    /// `deleted`: `outcome`.
    fn against_delete(
        sequence: u64,
        value: &str,
        (base, ms): (i64, u64),
        deleted: Hlc,
        outcome: ConflictOutcome,
    ) -> SyncLogEntry {
        let tag = Tag { id: "r2".into(), name: value.into(), color: Some(value.into()) };
        let c = Conflict {
            id: format!("p:{sequence}"),
            model_type: "tag".into(),
            record_id: "r2".into(),
            policy: ConflictPolicy::LastWriterWins,
            outcome,
            fields: vec![],
            kept: vec![],
            taken: vec![],
            change_type: "update".into(),
            base_version: base,
            current_version: 0,
            stored: Vec::new(),
            stored_hlc: Some(deleted),
            proposed: lsync_storage::encode(&tag),
            proposed_hlc: hlc(ms, A),
            origin_device: A,
            proposal_id: UPDATE,
            decided_at_ms: 0,
        };
        recorded(sequence, &c)
    }

    /// A creates r2 (op-1.0, t=5); B deletes it (t=20, version 2).
    fn created_and_deleted() -> Vec<SyncLogEntry> {
        vec![stamped(1, 1, ("op-1.0", "op-1.0"), &[], (5, A)), deleted(2, 2, (20, B))]
    }

    #[test]
    fn an_update_older_than_a_delete_is_decided_away_and_the_record_stays_deleted() {
        let mut log = created_and_deleted();
        log.push(against_delete(3, "op-3.0", (1, 10), hlc(20, B), ConflictOutcome::Stored));
        assert_eq!(last_writer_wins(&log), Vec::<String>::new());
        assert_eq!(conflicts_are_real(&log), Vec::<String>::new());
        let mut o = Oracle::default();
        let part = Part { record: "r2".into(), field: None };
        let w = o.record(0, UPDATE, vec!["op-3.0".into()], vec![part], false);
        o.stamped("op-3.0", hlc(10, A));
        let conflicts: BTreeMap<String, Conflict> = log
            .iter()
            .filter_map(conflict_of)
            .filter_map(|c| Some((token_of_conflict(&c)?, c)))
            .collect();
        assert!(o.decided_away(&o.writes()[w], 0, &log, &conflicts), "the delete wrote it later");
        let recorded_nowhere = BTreeMap::new();
        assert!(!o.decided_away(&o.writes()[w], 0, &log, &recorded_nowhere), "lost, not decided");
    }

    #[test]
    fn an_older_update_that_re_created_a_deleted_record_breaks_last_writer_wins() {
        let mut log = created_and_deleted();
        log.push(stamped(3, 1, ("op-3.0", "op-3.0"), &[], (10, A)));
        let failures = last_writer_wins(&log);
        assert_eq!(failures.len(), 2, "{failures:?}");
        assert!(failures[0].contains("latest write of it is nothing (deleted)"), "{failures:?}");
    }

    #[test]
    fn a_later_update_re_creates_a_deleted_record_and_says_so() {
        let mut log = created_and_deleted();
        let mut recreated = stamped(3, 1, ("op-3.0", "op-3.0"), &[], (30, A));
        recreated.proposal_id = Some(UPDATE);
        log.push(recreated);
        log.push(against_delete(4, "op-3.0", (1, 30), hlc(20, B), ConflictOutcome::Change));
        assert_eq!(last_writer_wins(&log), Vec::<String>::new());
        assert_eq!(conflicts_are_real(&log), Vec::<String>::new());
        // the same conflict claiming the delete was kept: the record was re-created
        log[3] = against_delete(4, "op-3.0", (1, 30), hlc(20, B), ConflictOutcome::Stored);
        let wrong = conflicts_are_real(&log);
        assert!(wrong.iter().any(|f| f.contains("re-created")), "{wrong:?}");
    }

    #[test]
    fn a_record_left_deleted_against_a_later_update_breaks_last_writer_wins() {
        let mut log = created_and_deleted();
        log.push(against_delete(3, "op-3.0", (1, 30), hlc(20, B), ConflictOutcome::Stored));
        let failures = last_writer_wins(&log);
        assert_eq!(failures.len(), 2, "{failures:?}");
        assert!(failures[0].contains("holds nothing (deleted)"), "{failures:?}");
        let wrong = conflicts_are_real(&log);
        assert!(wrong.iter().any(|f| f.contains("did not re-create")), "{wrong:?}");
    }

    #[test]
    fn a_re_creation_that_saw_the_delete_is_no_conflict() {
        let mut log = created_and_deleted();
        let mut recreated = stamped(3, 1, ("op-3.0", "op-3.0"), &[], (30, A));
        recreated.proposal_id = Some(UPDATE);
        log.push(recreated);
        // based on no record (it applied the delete) and later than it: not a conflict
        log.push(against_delete(4, "op-3.0", (0, 30), hlc(20, B), ConflictOutcome::Change));
        let wrong = conflicts_are_real(&log);
        assert!(wrong.iter().any(|f| f.contains("saw the delete")), "{wrong:?}");
    }

    fn entry(sequence: u64, name: &str) -> SyncLogEntry {
        let tag = Tag { id: "r1".into(), name: name.into(), color: None };
        let c = Change::insert(&tag);
        SyncLogEntry {
            sequence,
            term: 1,
            origin_device: Uuid::nil(),
            timestamp_ms: 0,
            model_type: c.model_type,
            record_id: c.record_id,
            change_type: c.change_type,
            version: 1,
            data: c.data,
            proposal_id: None,
            hash: None,
            stamp: None,
        }
    }

    fn oracle() -> Oracle {
        let mut o = Oracle::default();
        let a = rec(&mut o, 0, Uuid::from_u128(1), vec!["op-1.0".into(), "op-1.1".into()], false);
        o.answer(a, Outcome::Committed { first: 5, last: 6 });
        let b = rec(&mut o, 1, Uuid::from_u128(2), vec!["op-2.0".into()], false);
        o.answer(b, Outcome::Queued);
        rec(&mut o, 2, Uuid::from_u128(3), vec!["op-3.0".into()], false);
        o.crashed(2);
        o
    }

    #[test]
    fn a_log_with_every_write_once_passes() {
        let log = [entry(5, "op-1.0"), entry(6, "op-1.1"), entry(7, "op-2.0")];
        let v = oracle().check(&log);
        assert!(v.failures.is_empty(), "{:?}", v.failures);
        assert_eq!((v.acknowledged, v.queued, v.unknown, v.moved), (1, 1, 1, 0));
    }

    #[test]
    fn a_missing_a_duplicated_a_partial_and_an_invented_write_all_fail() {
        let log = [entry(5, "op-1.0"), entry(7, "op-3.0"), entry(8, "op-3.0"), entry(9, "op-9.0")];
        let v = oracle().check(&log);
        let all = v.failures.join("\n");
        assert!(all.contains("write 1") && all.contains("missing"), "{all}");
        assert!(all.contains("2 times"), "{all}");
        assert!(all.contains("in part"), "{all}");
        assert!(all.contains("no write made"), "{all}");
    }

    #[test]
    fn only_a_write_lost_with_a_disk_may_be_missing_and_moves_are_counted() {
        let mut o = oracle();
        o.note_loss(&["op-2.0".to_string()].into());
        let log = [entry(6, "op-1.0"), entry(7, "op-1.1")];
        let v = o.check(&log);
        assert!(v.failures.is_empty(), "{:?}", v.failures);
        assert_eq!((v.lost_with_disk, v.moved), (1, 1));
    }

    #[test]
    fn a_majority_write_must_be_at_its_answered_sequences_and_an_unresolved_one_present() {
        let mut o = Oracle::default();
        let a = rec(&mut o, 0, Uuid::from_u128(1), vec!["op-1.0".into()], true);
        o.answer(a, Outcome::Committed { first: 5, last: 5 });
        let b = rec(&mut o, 1, Uuid::from_u128(2), vec!["op-2.0".into()], true);
        o.answer(b, Outcome::Unresolved);
        let at_its_place = o.check(&[entry(5, "op-1.0"), entry(6, "op-2.0")]);
        assert!(at_its_place.failures.is_empty(), "{:?}", at_its_place.failures);
        assert_eq!((at_its_place.majority, at_its_place.unresolved), (1, 1));
        let moved = o.check(&[entry(5, "op-2.0"), entry(6, "op-1.0")]);
        assert_eq!(moved.moved, 0, "a majority write's move is a failure, not a count");
        assert!(moved.failures.join("\n").contains("write 0 (majority"), "{:?}", moved.failures);
        let missing = o.check(&[entry(5, "op-1.0")]);
        assert!(missing.failures.join("\n").contains("write 1"), "{:?}", missing.failures);
    }

    #[test]
    fn a_loss_held_elsewhere_only_in_an_outbox_is_excused_only_for_a_local_commit() {
        let mut o = Oracle::default();
        let local = rec(&mut o, 0, Uuid::from_u128(1), vec!["op-1.0".into()], false);
        o.answer(local, Outcome::Committed { first: 5, last: 5 });
        let queued = rec(&mut o, 0, Uuid::from_u128(2), vec!["op-2.0".into()], false);
        o.answer(queued, Outcome::Queued);
        let majority = rec(&mut o, 0, Uuid::from_u128(3), vec!["op-3.0".into()], true);
        o.answer(majority, Outcome::Committed { first: 6, last: 6 });
        o.note_outboxed_loss(&["op-1.0", "op-2.0", "op-3.0"].map(String::from).into());
        let v = o.check(&[]);
        assert_eq!(v.lost_with_disk, 1);
        let all = v.failures.join("\n");
        assert!(all.contains("write 1") && all.contains("write 2"), "{all}");
        assert!(!all.contains("write 0"), "{all}");
    }
}
