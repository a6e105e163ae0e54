//! The oracle: what the devices' databases must hold at the end of a run, given every write's
//! outcome. Pure: it takes what [`crate::dbread`] read and the write records, and returns the
//! findings (docs/testing.md, "What is checked").
//!
//! For every device that is a member: its `sync_log` holds sequences `1..=last` without a gap;
//! its log and its model tables (`tag`, `location`) and `devices` are identical to the first
//! device's, row for row (`devices.added_at_ms`, a local clock, left out). For every write:
//! acknowledged → exactly one log entry for its id and its `tag` row, on every device;
//! unknown → at most one entry; refused → none, and no row. An entry for an id nobody wrote
//! is *extra*. The only loss allowed is that of writes a restored older copy took with it
//! ([`Expectations::lost_to_restore`], decided when the copy was put back: writes held then by
//! the restored device alone); such a write is counted apart, never as clean by default.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::workload::{write_id, Outcome, WriteRecord};

/// A sync log entry as read from a database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRow {
    pub sequence: i64,
    pub model_type: String,
    pub record_id: String,
    /// Every replicated column, as one comparable text.
    pub row: String,
}

/// What one device's database holds.
#[derive(Debug, Clone, Default)]
pub struct DeviceData {
    /// The device's index in the run.
    pub device: usize,
    pub log: Vec<LogRow>,
    /// `tag` rows: (id, the whole row as text), by id.
    pub tags: Vec<(String, String)>,
    /// `location` rows as text, by id.
    pub locations: Vec<String>,
    /// `devices` rows as text (without `added_at_ms`), by device id.
    pub devices: Vec<String>,
    /// Write numbers still in the device's outbox.
    pub outbox: Vec<u64>,
}

/// What the checker is told besides the databases.
#[derive(Debug, Clone, Default)]
pub struct Expectations {
    pub writes: Vec<WriteRecord>,
    /// Writes a restore of an older copy may have lost (held by the restored device alone).
    pub lost_to_restore: BTreeSet<u64>,
}

/// The findings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Findings {
    /// Acknowledged writes missing on some device.
    pub lost: BTreeSet<u64>,
    /// Writes with more than one log entry on some device.
    pub duplicated: BTreeSet<u64>,
    /// Entries of refused writes, or of ids nobody wrote.
    pub extra: BTreeSet<String>,
    /// Acknowledged writes missing that a restore was allowed to lose.
    pub lost_to_restore: BTreeSet<u64>,
    /// Everything else that is wrong, one line each.
    pub problems: Vec<String>,
}

impl Findings {
    /// Nothing wrong.
    pub fn clean(&self) -> bool {
        self.lost.is_empty()
            && self.duplicated.is_empty()
            && self.extra.is_empty()
            && self.problems.is_empty()
    }
}

/// Lines of detail kept per kind of problem.
const DETAIL: usize = 10;

/// Checks the devices' data against the writes' outcomes.
pub fn check(devices: &[DeviceData], expected: &Expectations) -> Findings {
    let mut f = Findings::default();
    if devices.is_empty() {
        f.problems.push("no device database to check".into());
        return f;
    }
    for d in devices {
        check_gapless(d, &mut f.problems);
    }
    let reference = &devices[0];
    for d in &devices[1..] {
        compare_logs(reference, d, &mut f.problems);
        compare_table(
            "tag",
            &row_texts(&reference.tags),
            &row_texts(&d.tags),
            reference,
            d,
            &mut f.problems,
        );
        compare_table(
            "location",
            &reference.locations,
            &d.locations,
            reference,
            d,
            &mut f.problems,
        );
        compare_table("devices", &reference.devices, &d.devices, reference, d, &mut f.problems);
    }
    let outcomes: BTreeMap<String, &WriteRecord> =
        expected.writes.iter().map(|w| (w.id.clone(), w)).collect();
    let mut dup_lines = 0;
    for d in devices {
        let mut entries: BTreeMap<&str, usize> = BTreeMap::new();
        for e in d.log.iter().filter(|e| e.model_type == "tag") {
            *entries.entry(e.record_id.as_str()).or_insert(0) += 1;
        }
        let rows: BTreeSet<&str> = d.tags.iter().map(|(id, _)| id.as_str()).collect();
        for (id, &count) in &entries {
            match outcomes.get(*id) {
                None => {
                    f.extra.insert((*id).to_owned());
                }
                Some(w) if matches!(w.outcome, Outcome::Refused { .. }) => {
                    f.extra.insert((*id).to_owned());
                }
                Some(w) if count > 1 => {
                    f.duplicated.insert(w.n);
                    if dup_lines < DETAIL {
                        dup_lines += 1;
                        f.problems.push(format!(
                            "d{}: write {id} ({}) has {count} log entries",
                            d.device,
                            outcome_name(&w.outcome)
                        ));
                    }
                }
                Some(_) => {}
            }
        }
        for id in rows.iter().filter(|id| !entries.contains_key(*id)) {
            match outcomes.get(*id) {
                Some(w) if matches!(w.outcome, Outcome::Refused { .. }) => {
                    f.extra.insert((*id).to_string());
                }
                _ => f.problems.push(format!("d{}: tag row {id} has no log entry", d.device)),
            }
        }
        let mut lost_lines = 0;
        for w in expected.writes.iter().filter(|w| w.acknowledged()) {
            let held = entries.contains_key(w.id.as_str()) && rows.contains(w.id.as_str());
            if held {
                continue;
            }
            if expected.lost_to_restore.contains(&w.n) {
                f.lost_to_restore.insert(w.n);
                continue;
            }
            f.lost.insert(w.n);
            if lost_lines < DETAIL {
                lost_lines += 1;
                f.problems.push(format!(
                    "d{}: acknowledged write {} ({} through d{} via {:?}, cycle {}, answered at \
                     {} ms) is {}",
                    d.device,
                    w.id,
                    outcome_name(&w.outcome),
                    w.device,
                    w.via,
                    w.cycle,
                    w.answered_ms,
                    if entries.contains_key(w.id.as_str()) {
                        "in the log but has no tag row"
                    } else {
                        "missing"
                    }
                ));
            }
        }
        if !d.outbox.is_empty() {
            let ids: Vec<String> = d.outbox.iter().take(DETAIL).map(|&n| write_id(n)).collect();
            f.problems.push(format!(
                "d{}: {} writes still wait in its outbox at the end: {}",
                d.device,
                d.outbox.len(),
                ids.join(", ")
            ));
        }
    }
    if !f.extra.is_empty() {
        let ids: Vec<&String> = f.extra.iter().take(DETAIL).collect();
        f.problems.push(format!("entries of refused or unknown-to-the-workload ids: {ids:?}"));
    }
    f
}

fn outcome_name(o: &Outcome) -> &'static str {
    match o {
        Outcome::Acknowledged { queued: false } => "acknowledged committed",
        Outcome::Acknowledged { queued: true } => "acknowledged queued",
        Outcome::Refused { .. } => "refused",
        Outcome::Unknown { .. } => "unknown",
    }
}

fn row_texts(rows: &[(String, String)]) -> Vec<String> {
    rows.iter().map(|(_, r)| r.clone()).collect()
}

fn check_gapless(d: &DeviceData, problems: &mut Vec<String>) {
    for (i, e) in d.log.iter().enumerate() {
        let want = i as i64 + 1;
        if e.sequence != want {
            problems.push(format!(
                "d{}: sync_log is not gapless: sequence {want} expected, found {} (last {})",
                d.device,
                e.sequence,
                d.log.last().map_or(0, |l| l.sequence)
            ));
            return;
        }
    }
}

fn compare_logs(a: &DeviceData, b: &DeviceData, problems: &mut Vec<String>) {
    if let Some((x, y)) = a.log.iter().zip(&b.log).find(|(x, y)| x.row != y.row) {
        problems.push(format!(
            "d{}: sync_log differs from d{}'s at sequence {}: {} vs {}",
            b.device,
            a.device,
            x.sequence,
            short(&y.row),
            short(&x.row)
        ));
    } else if a.log.len() != b.log.len() {
        problems.push(format!(
            "d{}: sync_log has {} entries, d{} has {}",
            b.device,
            b.log.len(),
            a.device,
            a.log.len()
        ));
    }
}

fn compare_table(
    table: &str,
    a: &[String],
    b: &[String],
    da: &DeviceData,
    db: &DeviceData,
    problems: &mut Vec<String>,
) {
    if a == b {
        return;
    }
    let sa: BTreeSet<&String> = a.iter().collect();
    let sb: BTreeSet<&String> = b.iter().collect();
    let only_a: Vec<&&String> = sa.difference(&sb).collect();
    let only_b: Vec<&&String> = sb.difference(&sa).collect();
    let first = only_b.first().or(only_a.first()).map_or_else(String::new, |r| short(r));
    problems.push(format!(
        "d{}: table {table} differs from d{}'s: {} rows only on d{}, {} only on d{} (first: {first})",
        db.device,
        da.device,
        only_b.len(),
        db.device,
        only_a.len(),
        da.device
    ));
}

fn short(s: &str) -> String {
    if s.len() <= 200 {
        s.to_owned()
    } else {
        let mut end = 200;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &s[..end])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::Via;

    fn write(n: u64, outcome: Outcome) -> WriteRecord {
        WriteRecord {
            n,
            id: write_id(n),
            device: 0,
            via: Via::Api,
            cycle: 0,
            outcome,
            sent_ms: 0,
            answered_ms: 0,
        }
    }

    fn acked(n: u64) -> WriteRecord {
        write(n, Outcome::Acknowledged { queued: false })
    }

    /// A device holding the given writes, one entry each, in order.
    fn device(index: usize, ids: &[u64]) -> DeviceData {
        let mut d = DeviceData { device: index, ..DeviceData::default() };
        d.log.push(LogRow {
            sequence: 1,
            model_type: "lsync.config".into(),
            record_id: "config".into(),
            row: "[1,\"config\"]".into(),
        });
        for &n in ids {
            push(&mut d, n);
        }
        d
    }

    fn push(d: &mut DeviceData, n: u64) {
        let id = write_id(n);
        let sequence = d.log.len() as i64 + 1;
        d.log.push(LogRow {
            sequence,
            model_type: "tag".into(),
            record_id: id.clone(),
            row: format!("[{sequence},\"{id}\"]"),
        });
        if !d.tags.iter().any(|(t, _)| *t == id) {
            d.tags.push((id.clone(), format!("[\"{id}\"]")));
            d.tags.sort();
        }
    }

    fn expect(writes: Vec<WriteRecord>) -> Expectations {
        Expectations { writes, lost_to_restore: BTreeSet::new() }
    }

    #[test]
    fn identical_devices_with_every_acknowledged_write_once_are_clean() {
        let devices = [device(0, &[1, 2]), device(1, &[1, 2])];
        let f = check(&devices, &expect(vec![acked(1), acked(2)]));
        assert!(f.clean(), "{f:?}");
    }

    #[test]
    fn a_missing_acknowledged_write_is_lost() {
        let devices = [device(0, &[1]), device(1, &[1])];
        let f = check(&devices, &expect(vec![acked(1), acked(2)]));
        assert_eq!(f.lost, BTreeSet::from([2]));
        assert!(!f.clean());
    }

    #[test]
    fn a_duplicated_acknowledged_write_is_found() {
        let mut d0 = device(0, &[1]);
        push(&mut d0, 1);
        let mut d1 = device(1, &[1]);
        push(&mut d1, 1);
        let f = check(&[d0, d1], &expect(vec![acked(1)]));
        assert_eq!(f.duplicated, BTreeSet::from([1]));
        assert!(!f.clean());
    }

    #[test]
    fn an_unknown_write_may_be_absent_or_once_but_not_twice() {
        let unknown = |n| write(n, Outcome::Unknown { reason: "reset".into() });
        let f = check(&[device(0, &[1])], &expect(vec![unknown(1), unknown(2)]));
        assert!(f.clean(), "{f:?}");
        let mut d = device(0, &[1]);
        push(&mut d, 1);
        assert_eq!(check(&[d], &expect(vec![unknown(1)])).duplicated, BTreeSet::from([1]));
    }

    #[test]
    fn a_refused_write_present_is_extra() {
        let refused = write(1, Outcome::Refused { reason: "HTTP 503".into() });
        let f = check(&[device(0, &[1])], &expect(vec![refused]));
        assert_eq!(f.extra, BTreeSet::from([write_id(1)]));
        assert!(!f.clean());
    }

    #[test]
    fn an_entry_nobody_wrote_is_extra() {
        let f = check(&[device(0, &[1, 9])], &expect(vec![acked(1)]));
        assert_eq!(f.extra, BTreeSet::from([write_id(9)]));
    }

    #[test]
    fn a_gap_in_the_log_is_a_problem() {
        let mut d = device(0, &[1, 2]);
        d.log.remove(1);
        let f = check(&[d], &expect(vec![]));
        assert!(f.problems.iter().any(|p| p.contains("not gapless")), "{f:?}");
    }

    #[test]
    fn differing_logs_are_a_problem() {
        let mut d1 = device(1, &[1]);
        d1.log[1].row = "[2,\"cw00000001\",\"another term\"]".into();
        let f = check(&[device(0, &[1]), d1], &expect(vec![acked(1)]));
        assert!(f.problems.iter().any(|p| p.contains("sync_log differs")), "{f:?}");
    }

    #[test]
    fn a_shorter_log_is_a_problem() {
        let f = check(&[device(0, &[1, 2]), device(1, &[1])], &expect(vec![acked(1)]));
        assert!(f.problems.iter().any(|p| p.contains("sync_log has 2 entries")), "{f:?}");
        // the write is also unknown to the workload: extra
        assert_eq!(f.extra, BTreeSet::from([write_id(2)]));
    }

    #[test]
    fn differing_model_tables_are_a_problem() {
        let mut d1 = device(1, &[1]);
        d1.tags[0].1 = "[\"cw00000001\",\"renamed\"]".into();
        d1.locations.push("[\"l1\"]".into());
        let f = check(&[device(0, &[1]), d1], &expect(vec![acked(1)]));
        assert!(f.problems.iter().any(|p| p.contains("table tag differs")), "{f:?}");
        assert!(f.problems.iter().any(|p| p.contains("table location differs")), "{f:?}");
    }

    #[test]
    fn a_loss_a_restore_allowed_is_counted_apart() {
        let mut e = expect(vec![acked(1), acked(2)]);
        e.lost_to_restore.insert(2);
        let f = check(&[device(0, &[1])], &e);
        assert!(f.lost.is_empty());
        assert_eq!(f.lost_to_restore, BTreeSet::from([2]));
        assert!(f.clean());
    }

    #[test]
    fn writes_left_in_an_outbox_are_a_problem() {
        let mut d = device(0, &[1]);
        d.outbox.push(2);
        let f = check(&[d], &expect(vec![acked(1)]));
        assert!(f.problems.iter().any(|p| p.contains("outbox")), "{f:?}");
    }
}
