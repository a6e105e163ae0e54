//! [`missing_part`]: which changes of a retried proposal its log lacks. One rule per test.

use lsync_protocol::{ChangeType, SyncLogEntry};
use uuid::Uuid;

use super::missing_part;
use crate::change::Change;

fn change(record: &str, change_type: ChangeType, data: &str) -> Change {
    Change {
        model_type: "tag".to_owned(),
        record_id: record.to_owned(),
        change_type,
        data: data.as_bytes().to_vec(),
    }
}

fn set(record: &str, data: &str) -> Change {
    change(record, ChangeType::Insert, data)
}

fn delete(record: &str) -> Change {
    change(record, ChangeType::Delete, "")
}

/// The entry the leader wrote for `c` (at sequence `sequence`), as the proposal rule made it.
fn entry(sequence: u64, c: &Change, change_type: ChangeType) -> SyncLogEntry {
    SyncLogEntry {
        sequence,
        term: 1,
        origin_device: Uuid::nil(),
        timestamp_ms: 0,
        model_type: c.model_type.clone(),
        record_id: c.record_id.clone(),
        change_type,
        version: 1,
        data: c.data.clone(),
        proposal_id: Some(Uuid::nil()),
        hash: None,
    }
}

fn written(first: u64, changes: &[Change]) -> Vec<SyncLogEntry> {
    (first..).zip(changes).map(|(s, c)| entry(s, c, c.change_type)).collect()
}

#[test]
fn the_changes_after_the_last_one_the_log_holds_are_missing() {
    let changes = [set("a", "1"), set("b", "1"), set("c", "1")];
    assert_eq!(missing_part(&changes, &written(9, &changes[..2])), Some(2));
}

#[test]
fn a_proposal_the_log_holds_whole_misses_nothing() {
    let changes = [set("a", "1"), set("b", "1"), set("c", "1")];
    assert_eq!(missing_part(&changes, &written(9, &changes)), None);
}

#[test]
fn an_upsert_matches_the_insert_or_update_the_rule_wrote() {
    let changes = [set("a", "1"), change("b", ChangeType::Update, "1")];
    let present = [entry(9, &changes[0], ChangeType::Update)];
    assert_eq!(missing_part(&changes, &present), Some(1));
}

#[test]
fn deletes_dropped_between_held_changes_are_not_missing() {
    let changes = [set("a", "1"), delete("gone"), set("b", "1"), set("c", "1")];
    let present = written(9, &[changes[0].clone(), changes[2].clone()]);
    assert_eq!(missing_part(&changes, &present), Some(3));
}

#[test]
fn a_proposal_complete_but_for_a_dropped_last_delete_retries_that_delete() {
    // The delete is evaluated again: dropped again if the record is still missing.
    let changes = [set("a", "1"), set("b", "1"), delete("gone")];
    assert_eq!(missing_part(&changes, &written(9, &changes[..2])), Some(2));
}

#[test]
fn a_retry_knowing_a_first_part_only_misses_nothing() {
    let whole = [set("a", "1"), set("b", "1"), set("c", "1")];
    assert_eq!(missing_part(&whole[..2], &written(9, &whole)), None);
}

#[test]
fn an_entry_no_change_explains_makes_the_retry_a_duplicate() {
    let changes = [set("a", "1"), set("b", "1"), set("c", "1")];
    let present = written(9, &[set("a", "1"), set("z", "1")]);
    assert_eq!(missing_part(&changes, &present), None);
}

#[test]
fn other_data_for_the_same_record_is_another_change() {
    let changes = [set("a", "1"), set("b", "1")];
    let present = written(9, &[set("a", "2")]);
    assert_eq!(missing_part(&changes, &present), None);
}

#[test]
fn repeated_changes_to_one_record_are_matched_in_order() {
    let changes = [set("a", "1"), set("b", "1"), set("a", "1")];
    assert_eq!(missing_part(&changes, &written(9, &changes[..1])), Some(1));
    assert_eq!(missing_part(&changes, &written(9, &changes[..2])), Some(2));
}
