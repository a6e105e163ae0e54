//! The checks: the safety rules on every step, convergence and the oracle at the end.
//!
//! On every step (each checked where it can be decided cheaply, from what changed):
//! - **one leader per term**: no two devices lead the same term;
//! - **terms never go back** on a device (except when its disk went back: a power loss or a
//!   restore, which issue 16 is about) — checked by the world;
//! - **a committed entry never changes**: when a leader publishes a commit sequence, its entries
//!   up to it are recorded; the same sequence must never hold another entry anywhere later;
//! - **committed prefixes agree**: a device whose log reaches a committed sequence `s` and
//!   whose last entry is of the term `s` was committed in or later holds the recorded entry at
//!   `s` (Raft's log matching plus leader completeness: such a log was written by a leader that
//!   held the committed entry). A device whose log ends in an older term may still hold a stale,
//!   uncommitted tail there — a deposed leader before it reconciles — and is checked once it has
//!   caught up. Each log is checked incrementally, as it grows; one that shrank is checked again
//!   from where it shrank to;
//! - **leader completeness**: a leader of term `t` holds every entry committed in a term
//!   before `t` (it may still be writing the entry that commits its own term);
//! - **no committed answer from a deposed term** (the leader lease): a leader of a
//!   configuration with three or more voters never answers a write as committed in term `t`
//!   (its host's write, its own outbox's delivery, a member's `Propose`) once another device
//!   has won a term after `t` — checked at every such answer, against every leader the run
//!   has seen so far ([`Checker::on_committed_answer`]).
//!
//! At the end, after the drain: every member identical (log, tables and the configuration in
//! effect), every outbox empty, every member's tables and field clock its log replayed (`lsync
//! verify`'s code), and the oracle's verdict on the log ([`crate::oracle`]: every write once or
//! decided away by later writes, last-writer-wins per field, conflict records real).

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};

use lsync_protocol::SyncLogEntry;
use lsync_storage::{Database, LogPosition};

use crate::device::Device;
use crate::net::Ix;
use crate::oracle::{token_of_change, tokens_of, Oracle, Verdict};

/// An entry's identity: everything but its timestamp.
fn fingerprint(e: &SyncLogEntry) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (e.sequence, e.term, e.origin_device, &e.model_type, &e.record_id).hash(&mut h);
    (e.change_type as u8, e.version, &e.data, e.proposal_id).hash(&mut h);
    h.finish()
}

/// Every entry of a log, in order.
pub fn whole_log(db: &Database) -> Result<Vec<SyncLogEntry>, String> {
    let mut out = Vec::new();
    loop {
        let since = out.last().map_or(0, |e: &SyncLogEntry| e.sequence);
        let batch = db.fetch_since(since, 1_000).map_err(|e| e.to_string())?;
        if batch.is_empty() {
            return Ok(out);
        }
        out.extend(batch);
    }
}

/// The names of the workload's changes a device holds: in its log or its outbox.
pub fn names_on(db: &Database) -> anyhow::Result<BTreeSet<String>> {
    let (mut names, queued) = names_held(db)?;
    names.extend(queued);
    Ok(names)
}

/// The outbox entries that are not failed: pending, or delivered and not yet in the log.
pub fn live_outbox(db: &Database) -> anyhow::Result<Vec<lsync_storage::OutboxEntry>> {
    let mut all = db.outbox_list_all()?;
    all.retain(|e| !matches!(e.state, lsync_storage::OutboxState::Failed { .. }));
    Ok(all)
}

/// What the device's tables must be — its committed log replayed with its pending changes on
/// top (docs/architecture.md, "Local-first writes"), and its field clock the one the log's
/// stamps derive (docs/architecture.md, "Conflicts") — checked by `lsync verify`'s code on its
/// files (read-only); `Err` names the first problem.
pub fn tables_match_log_and_pending(db: &Database) -> Result<(), String> {
    let report = lsync_storage::verify(db.path(), db.registry()).map_err(|e| e.to_string())?;
    match report.problems.first() {
        None => Ok(()),
        Some(p) => Err(format!("{p:?}")),
    }
}

/// The names of the workload's changes a device holds in its log, and in its outbox.
pub fn names_held(db: &Database) -> anyhow::Result<(BTreeSet<String>, BTreeSet<String>)> {
    let logged: BTreeSet<String> =
        whole_log(db).map_err(anyhow::Error::msg)?.iter().flat_map(tokens_of).collect();
    let mut queued = BTreeSet::new();
    // pending and delivered entries (shown here, to be committed or settled); not the failed
    for entry in live_outbox(db)? {
        queued.extend(entry.changes.iter().filter_map(token_of_change));
    }
    Ok((logged, queued))
}

#[derive(Debug, Default, Clone, Copy)]
struct Seen {
    /// Entries up to here were checked against the committed ones.
    verified: u64,
    last: Option<LogPosition>,
    /// The commit sequence at the last check.
    committed: u64,
}

/// The checker of one run.
#[derive(Debug, Default)]
pub struct Checker {
    strict_sequences: bool,
    leaders: BTreeMap<u64, Ix>,
    last_leader: Option<(u64, Ix)>,
    leader_changes: u64,
    /// sequence → (fingerprint, the term of the leader that first published it as committed)
    committed: BTreeMap<u64, (u64, u64)>,
    /// term → the highest sequence first published as committed by that term's leader
    committed_by_term: BTreeMap<u64, u64>,
    max_committed: u64,
    seen: BTreeMap<Ix, Seen>,
    /// The tag records some committed entry wrote (the workload patches only those).
    committed_records: BTreeSet<String>,
}

impl Checker {
    /// A checker; `strict_sequences` makes a moved acknowledgement a failure.
    pub fn new(strict_sequences: bool) -> Self {
        Self { strict_sequences, ..Self::default() }
    }

    /// Leader changes seen (a new (term, device) leading).
    pub fn leader_changes(&self) -> u64 {
        self.leader_changes
    }

    /// The tag records some committed entry wrote.
    pub fn committed_records(&self) -> &BTreeSet<String> {
        &self.committed_records
    }

    /// `ix` leads `term` (its election says so).
    pub fn on_leader(&mut self, ix: Ix, term: u64, db: &Database) -> Result<(), String> {
        // Leader completeness: every entry committed in an earlier term is in its log.
        let needed = self.committed_by_term.range(..term).map(|(_, s)| *s).max();
        if let Some(needed) = needed {
            let last = db.last_position().map_err(|e| e.to_string())?;
            if last.sequence < needed {
                return Err(format!(
                    "device {ix} leads term {term} but its log ends at {} below committed \
                     sequence {needed}",
                    last.sequence
                ));
            }
        }
        if self.last_leader != Some((term, ix)) {
            self.last_leader = Some((term, ix));
            if self.leaders.get(&term) != Some(&ix) {
                self.leader_changes += 1;
            }
        }
        match self.leaders.insert(term, ix) {
            Some(other) if other != ix => {
                Err(format!("two leaders in term {term}: devices {other} and {ix}"))
            }
            _ => Ok(()),
        }
    }

    /// `ix`, leading a configuration of `voters` voters, answers a write it committed in
    /// `term` as committed (after its lease check): with three or more voters no other device
    /// may have won a later term before this answer (docs/architecture.md, "The leader lease").
    /// With one or two voters there is no lease, and a device leading alone may answer while
    /// another leads a later term.
    pub fn on_committed_answer(&self, ix: Ix, term: u64, voters: usize) -> Result<(), String> {
        if voters < 3 {
            return Ok(());
        }
        match self.leaders.range(term.saturating_add(1)..).find(|(_, l)| **l != ix) {
            Some((later, other)) => Err(format!(
                "device {ix} answered a write committed in term {term} ({voters} voters) after \
                 device {other} had won term {later}"
            )),
            None => Ok(()),
        }
    }

    /// The disk of `ix` went back: what it held is checked again from the start.
    pub fn disk_lost(&mut self, ix: Ix) {
        self.seen.remove(&ix);
    }

    /// The first committed sequence whose entry no log of `logs` holds any more (every copy
    /// put back or lost): more devices lost acknowledged data than the library tolerates, and
    /// by design it waits for an operator rather than elect a log without that entry
    /// (docs/architecture.md, "Restores are detected").
    pub fn committed_lost(&self, logs: &[Vec<SyncLogEntry>]) -> Option<u64> {
        self.committed.iter().find_map(|(&sequence, &(print, _))| {
            let held = logs.iter().any(|log| {
                log.get((sequence - 1) as usize)
                    .is_some_and(|e| e.sequence == sequence && fingerprint(e) == print)
            });
            (!held).then_some(sequence)
        })
    }

    /// Leader `ix` of `term` published `commit`: its entries up to there are committed.
    pub fn on_commit(
        &mut self,
        ix: Ix,
        term: u64,
        commit: u64,
        db: &Database,
    ) -> Result<(), String> {
        if commit <= self.max_committed {
            // Spot check: the leader holds the committed entry at its commit sequence.
            if commit > 0 {
                let e = db.fetch_range(commit, commit).map_err(|e| e.to_string())?;
                self.compare(ix, &e, term)?;
            }
            return Ok(());
        }
        let from = self.max_committed + 1;
        let entries = db.fetch_range(from, commit).map_err(|e| e.to_string())?;
        if entries.len() as u64 != commit - from + 1 {
            return Err(format!(
                "leader {ix} of term {term} published commit {commit} but holds only {} of \
                 entries {from}..={commit}",
                entries.len()
            ));
        }
        for e in &entries {
            self.committed.insert(e.sequence, (fingerprint(e), term));
            if e.model_type == "tag" && !self.committed_records.contains(&e.record_id) {
                self.committed_records.insert(e.record_id.clone());
            }
        }
        let highest = self.committed_by_term.entry(term).or_default();
        *highest = (*highest).max(commit);
        self.max_committed = commit;
        Ok(())
    }

    /// Compares `entries` with the committed ones, for a log whose last entry is of `last_term`;
    /// returns the sequence up to which the log was checked (an entry committed in a term after
    /// `last_term` stops the check: that log may not have caught up yet).
    fn compare(&self, ix: Ix, entries: &[SyncLogEntry], last_term: u64) -> Result<u64, String> {
        let mut checked = entries.first().map_or(0, |e| e.sequence.saturating_sub(1));
        for e in entries {
            if let Some((fp, term)) = self.committed.get(&e.sequence) {
                if *term > last_term {
                    break;
                }
                if *fp != fingerprint(e) {
                    return Err(format!(
                        "device {ix} holds another entry at committed sequence {} (term {}, \
                         record {}, proposal {:?})",
                        e.sequence, e.term, e.record_id, e.proposal_id
                    ));
                }
            }
            checked = e.sequence;
        }
        Ok(checked)
    }

    /// Checks what changed in `ix`'s log since the last check.
    pub fn check_log(&mut self, ix: Ix, db: &Database) -> Result<(), String> {
        let pos = db.last_position().map_err(|e| e.to_string())?;
        let mut seen = self.seen.get(&ix).copied().unwrap_or_default();
        if seen.last == Some(pos) && seen.committed == self.max_committed {
            return Ok(());
        }
        // A log that shrank or was rewritten is checked again from where it still agrees.
        if pos.sequence < seen.verified {
            seen.verified = pos.sequence;
        }
        let from = seen.verified.saturating_sub(1).max(1);
        let upto = pos.sequence.min(self.max_committed);
        if upto >= from {
            let entries = db.fetch_range(from, upto).map_err(|e| e.to_string())?;
            seen.verified = self.compare(ix, &entries, pos.term)?.max(seen.verified);
        }
        seen.last = Some(pos);
        seen.committed = self.max_committed;
        self.seen.insert(ix, seen);
        Ok(())
    }

    /// Whether the drain is over: every member up, one leader whose log every member holds,
    /// all of it committed, every outbox empty. Otherwise why not.
    pub fn converged(&self, devices: &[Option<&Device>]) -> Result<(), String> {
        let up: Vec<(Ix, &Device)> =
            devices.iter().enumerate().filter_map(|(i, d)| d.map(|d| (i, d))).collect();
        let leaders: Vec<(Ix, u64)> =
            up.iter().filter_map(|(i, d)| d.leads().map(|t| (*i, t))).collect();
        let [(leader, _)] = leaders[..] else {
            return Err(format!("leaders: {leaders:?}"));
        };
        let ld = devices[leader].expect("up");
        let last = ld.db().last_position().map_err(|e| e.to_string())?;
        if self.max_committed < last.sequence {
            return Err(format!(
                "leader {leader}'s log ends at {} but {} is committed",
                last.sequence, self.max_committed
            ));
        }
        for (i, d) in &up {
            if !d.is_member() {
                continue;
            }
            let p = d.db().last_position().map_err(|e| e.to_string())?;
            if p != last {
                return Err(format!("device {i} is at {p:?}, the leader at {last:?}"));
            }
            let live = live_outbox(d.db()).map_err(|e| e.to_string())?;
            if let Some(first) = live.first() {
                let changes: Vec<String> = first
                    .changes
                    .iter()
                    .map(|c| {
                        format!(
                            "{:?} of {} {:?} based on {:?}",
                            c.change_type,
                            c.record_id,
                            crate::oracle::token_of_change(c),
                            c.base_version
                        )
                    })
                    .collect();
                return Err(format!(
                    "device {i} has {} proposals queued or delivered (the first {}: {:?}, {} \
                     attempts, last error {:?}: {})",
                    live.len(),
                    first.proposal_id,
                    first.state,
                    first.attempts,
                    first.last_error,
                    changes.join(", ")
                ));
            }
        }
        Ok(())
    }

    /// The end: every member identical, and the oracle's verdict on the log.
    pub fn final_check(
        &self,
        devices: &[Option<&Device>],
        oracle: &Oracle,
    ) -> Result<Verdict, String> {
        let up: Vec<(Ix, &Device)> = devices
            .iter()
            .enumerate()
            .filter_map(|(i, d)| d.map(|d| (i, d)))
            .filter(|(_, d)| d.is_member())
            .collect();
        let Some((first, reference)) = up.first() else {
            return Err("no member is up at the end".into());
        };
        let log = whole_log(reference.db())?;
        let prints: Vec<u64> = log.iter().map(fingerprint).collect();
        let tags = reference.db().dump().map_err(|e| e.to_string())?;
        let config = reference.db().membership().map_err(|e| e.to_string())?;
        let mut failures = Vec::new();
        // every member's tables and field clock are its log replayed (the first's too)
        for (i, d) in &up {
            if let Err(p) = tables_match_log_and_pending(d.db()) {
                failures.push(format!("device {i}'s tables are not its log and pending: {p}"));
            }
        }
        for (i, d) in &up[1..] {
            let other: Vec<u64> = whole_log(d.db())?.iter().map(fingerprint).collect();
            if other != prints {
                let at = prints.iter().zip(&other).position(|(a, b)| a != b);
                failures.push(format!(
                    "device {i}'s log differs from device {first}'s (lengths {} and {}, first \
                     difference at index {at:?})",
                    other.len(),
                    prints.len()
                ));
            }
            let theirs = d.db().dump().map_err(|e| e.to_string())?;
            if theirs.get("tag") != tags.get("tag") {
                failures.push(format!("device {i}'s tags differ from device {first}'s"));
            }
            // The configuration in effect (devices table, voters, learners) is replicated
            // state too: every member ends with the same one.
            let mine = d.db().membership().map_err(|e| e.to_string())?;
            if (mine.sequence, &mine.configuration) != (config.sequence, &config.configuration) {
                failures.push(format!(
                    "device {i}'s configuration in effect (entry {}) differs from device \
                     {first}'s (entry {})",
                    mine.sequence, config.sequence
                ));
            }
        }
        for (s, e) in log.iter().enumerate() {
            if e.sequence != s as u64 + 1 {
                failures.push(format!("the log has a gap before sequence {}", e.sequence));
                break;
            }
        }
        let mut verdict = oracle.check(&log);
        if self.strict_sequences && verdict.moved > 0 {
            failures.push(format!(
                "{} acknowledged writes are not at the sequences their answers gave",
                verdict.moved
            ));
        }
        verdict.failures.extend(failures);
        Ok(verdict)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A checker that saw device 0 lead term 1 and device 2 win term 2.
    fn deposed() -> Checker {
        let mut c = Checker::new(false);
        c.leaders.insert(1, 0);
        c.leaders.insert(2, 2);
        c
    }

    #[test]
    fn a_committed_answer_in_a_term_after_another_device_won_a_later_one_fails() {
        let e = deposed().on_committed_answer(0, 1, 3).unwrap_err();
        assert_eq!(
            e,
            "device 0 answered a write committed in term 1 (3 voters) after device 2 had won term 2"
        );
    }

    #[test]
    fn a_committed_answer_in_the_latest_term_won_passes() {
        assert_eq!(deposed().on_committed_answer(2, 2, 3), Ok(()));
        assert!(deposed().on_committed_answer(0, 1, 3).is_err(), "the older term does not");
    }

    fn entry(sequence: u64, term: u64) -> SyncLogEntry {
        SyncLogEntry {
            sequence,
            term,
            origin_device: uuid::Uuid::nil(),
            timestamp_ms: 0,
            model_type: "tag".into(),
            record_id: format!("r{sequence}"),
            change_type: lsync_protocol::ChangeType::Insert,
            version: 1,
            data: Vec::new(),
            proposal_id: None,
            hash: None,
            stamp: None,
        }
    }

    #[test]
    fn a_committed_entry_on_no_log_is_found_and_one_on_any_log_is_not() {
        let mut c = Checker::new(false);
        for s in 1..=3 {
            c.committed.insert(s, (fingerprint(&entry(s, 1)), 1));
        }
        let whole: Vec<SyncLogEntry> = (1..=3).map(|s| entry(s, 1)).collect();
        let short: Vec<SyncLogEntry> = (1..=1).map(|s| entry(s, 1)).collect();
        assert_eq!(c.committed_lost(&[short.clone(), whole]), None, "one copy is enough");
        assert_eq!(c.committed_lost(std::slice::from_ref(&short)), Some(2));
        // another entry at a committed sequence is not a copy of it
        let other = vec![entry(1, 1), entry(2, 2), entry(3, 2)];
        assert_eq!(c.committed_lost(&[short, other]), Some(2));
    }

    #[test]
    fn with_two_voters_there_is_no_lease_to_check() {
        assert_eq!(deposed().on_committed_answer(0, 1, 2), Ok(()));
    }

    #[test]
    fn a_later_term_won_by_the_answering_device_itself_is_no_violation() {
        let mut c = deposed();
        c.leaders.insert(3, 0);
        assert!(c.on_committed_answer(2, 2, 3).is_err(), "device 0 won term 3");
        c.leaders.remove(&3);
        c.leaders.insert(3, 2);
        assert_eq!(c.on_committed_answer(2, 2, 3), Ok(()), "device 2 won both");
    }
}
