//! The oracle: what the workload wrote and what it was told, checked against the final logs.
//!
//! Every write is one proposal of one to three tag upserts. Each change carries a name no other
//! change carries (`op-<n>.<k>`), so an entry of the log says which write it came from. The
//! record ids come from a small pool, so writes from different devices touch the same records
//! and the leader's order decides (last write wins).
//!
//! What a write was told ([`Outcome`]) decides what the final log must hold:
//! - `Committed { first, last }` (acknowledged): every change exactly once. For a write made at
//!   the `majority` level, at exactly those sequences (that is its promise: a majority held it
//!   there). For one at `local`, the answers whose entries ended elsewhere are counted as
//!   `moved` (a `local` answer's sequence may change after a failover, docs/operations.md; a
//!   failure only with `--strict-sequences`).
//! - `Unresolved` (a `majority` write no majority held within the request timeout: answered
//!   pending): every change exactly once, eventually, at any sequence.
//! - `Queued` (durable in the writer's outbox): every change exactly once, eventually.
//! - `Refused` or `Unknown` (the writer crashed before answering): at most once each.
//!
//! The only loss allowed is the one the documentation admits: a write whose every copy was on
//! a disk that lost it — the changes that, when a device lost power or had an older copy put
//! back, were on that device only ([`Oracle::note_loss`] is told which, from the disks as they
//! were). Such writes may be missing (never duplicated). Nothing else is ever excused.

use std::collections::{BTreeMap, BTreeSet};

use lsync_protocol::{ChangeType, SyncLogEntry};
use lsync_storage::Tag;
use serde::Serialize;

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
    /// The changes' names (`op-<n>.<k>`), in order.
    pub names: Vec<String>,
    pub outcome: Outcome,
    /// Made at the `majority` level.
    pub majority: bool,
    /// Every copy of it was lost with a disk: it may be missing.
    pub may_be_lost: bool,
    /// Every copy but its writer's outbox's was lost with a disk ([`Oracle::note_outboxed_loss`]).
    pub lost_unless_queued: bool,
}

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
    /// Failures: each a sentence.
    pub failures: Vec<String>,
}

/// The record of every write.
#[derive(Debug, Default)]
pub struct Oracle {
    writes: Vec<Write>,
    /// name → write index.
    by_name: BTreeMap<String, usize>,
}

/// The name in a tag change's data, if it decodes.
pub fn name_of(entry: &SyncLogEntry) -> Option<String> {
    if entry.model_type != "tag" || entry.change_type == ChangeType::Delete {
        return None;
    }
    lsync_storage::decode::<Tag>(&entry.data).ok().map(|t| t.name)
}

impl Oracle {
    /// Records a new write; returns its index.
    pub fn record(
        &mut self,
        device: Ix,
        proposal_id: uuid::Uuid,
        names: Vec<String>,
        majority: bool,
    ) -> usize {
        let ix = self.writes.len();
        for n in &names {
            self.by_name.insert(n.clone(), ix);
        }
        self.writes.push(Write {
            device,
            proposal_id,
            names,
            outcome: Outcome::Pending,
            majority,
            may_be_lost: false,
            lost_unless_queued: false,
        });
        ix
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

    /// Checks a final log (every device holds the same one, checked apart) against the writes.
    pub fn check(&self, log: &[SyncLogEntry]) -> Verdict {
        let mut v = Verdict { writes: self.writes.len() as u64, ..Verdict::default() };
        let mut seen: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
        for e in log {
            match name_of(e) {
                Some(name) => match self.by_name.get_key_value(name.as_str()) {
                    Some((k, _)) => seen.entry(k.as_str()).or_default().push(e.sequence),
                    None => v
                        .failures
                        .push(format!("entry {} holds {name:?}, which no write made", e.sequence)),
                },
                None if e.model_type == "tag" => v
                    .failures
                    .push(format!("entry {} is a tag change the workload never makes", e.sequence)),
                None => {}
            }
        }
        for (ix, w) in self.writes.iter().enumerate() {
            let copies: Vec<&[u64]> = w
                .names
                .iter()
                .map(|n| seen.get(n.as_str()).map_or(&[][..], Vec::as_slice))
                .collect();
            let present = copies.iter().filter(|c| !c.is_empty()).count();
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
            if present > 0 && present < w.names.len() {
                v.failures.push(format!(
                    "write {ix} (device {}) is in the log in part: {present} of {} changes",
                    w.device,
                    w.names.len()
                ));
            }
            let answered_local = !w.majority && matches!(w.outcome, Outcome::Committed { .. });
            if must && present == 0 {
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
        v
    }
}

#[cfg(test)]
mod tests {
    use lsync_storage::Change;
    use uuid::Uuid;

    use super::*;

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
        let a = o.record(0, Uuid::from_u128(1), vec!["op-1.0".into(), "op-1.1".into()], false);
        o.answer(a, Outcome::Committed { first: 5, last: 6 });
        let b = o.record(1, Uuid::from_u128(2), vec!["op-2.0".into()], false);
        o.answer(b, Outcome::Queued);
        o.record(2, Uuid::from_u128(3), vec!["op-3.0".into()], false);
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
        let a = o.record(0, Uuid::from_u128(1), vec!["op-1.0".into()], true);
        o.answer(a, Outcome::Committed { first: 5, last: 5 });
        let b = o.record(1, Uuid::from_u128(2), vec!["op-2.0".into()], true);
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
        let local = o.record(0, Uuid::from_u128(1), vec!["op-1.0".into()], false);
        o.answer(local, Outcome::Committed { first: 5, last: 5 });
        let queued = o.record(0, Uuid::from_u128(2), vec!["op-2.0".into()], false);
        o.answer(queued, Outcome::Queued);
        let majority = o.record(0, Uuid::from_u128(3), vec!["op-3.0".into()], true);
        o.answer(majority, Outcome::Committed { first: 6, last: 6 });
        o.note_outboxed_loss(&["op-1.0", "op-2.0", "op-3.0"].map(String::from).into());
        let v = o.check(&[]);
        assert_eq!(v.lost_with_disk, 1);
        let all = v.failures.join("\n");
        assert!(all.contains("write 1") && all.contains("write 2"), "{all}");
        assert!(!all.contains("write 0"), "{all}");
    }
}
