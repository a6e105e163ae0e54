//! [`merge_run`]: a proposal's stashed runs merged into the proposal as known. One rule per
//! test.

use lsync_protocol::ChangeType;

use super::merge_run;
use crate::change::Change;

fn set(record: &str, data: &str) -> Change {
    Change {
        model_type: "tag".to_owned(),
        record_id: record.to_owned(),
        change_type: ChangeType::Insert,
        data: data.as_bytes().to_vec(),
        base_version: None,
        hlc: None,
    }
}

fn merged(runs: &[&[Change]]) -> Vec<Change> {
    let mut known = Vec::new();
    for run in runs {
        merge_run(&mut known, run);
    }
    known
}

#[test]
fn the_first_run_is_the_proposal_as_known() {
    let (a, b) = (set("a", "1"), set("b", "1"));
    assert_eq!(merged(&[&[a.clone(), b.clone()]]), [a, b]);
}

#[test]
fn a_run_that_continues_the_known_part_is_added() {
    // A first part in one term, the rest committed by the next leader.
    let abc = [set("a", "1"), set("b", "1"), set("c", "1")];
    assert_eq!(merged(&[&abc[..2], &abc[2..]]), abc);
}

#[test]
fn a_copy_from_another_log_adds_nothing() {
    // The proposal committed whole by two leaders of two branches, both stashed.
    let abc = [set("a", "1"), set("b", "1"), set("c", "1")];
    assert_eq!(merged(&[&abc, &abc]), abc);
}

#[test]
fn a_shorter_copy_adds_nothing() {
    let abc = [set("a", "1"), set("b", "1"), set("c", "1")];
    assert_eq!(merged(&[&abc, &abc[..2]]), abc);
}

#[test]
fn a_longer_copy_extends_the_known_part() {
    let abc = [set("a", "1"), set("b", "1"), set("c", "1")];
    assert_eq!(merged(&[&abc[..1], &abc]), abc);
}

#[test]
fn a_completion_of_a_shorter_first_part_adds_what_it_has_past_the_known_part() {
    // One log held a, b, c; another held a only and its leader committed b, c, d.
    let abcd = [set("a", "1"), set("b", "1"), set("c", "1"), set("d", "1")];
    assert_eq!(merged(&[&abcd[..3], &abcd[1..]]), abcd);
}

#[test]
fn the_same_record_with_other_data_is_another_change() {
    let a12 = [set("a", "1"), set("a", "2")];
    assert_eq!(merged(&[&a12[..1], &a12[1..]]), a12);
}

#[test]
fn an_upsert_agrees_with_the_insert_or_update_another_log_made_of_it() {
    let a = [set("a", "1")];
    let a_update = [Change { change_type: ChangeType::Update, ..a[0].clone() }];
    assert_eq!(merged(&[&a, &a_update]), a);
}
