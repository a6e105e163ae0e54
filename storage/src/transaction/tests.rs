//! [`missing_part`]: which changes of a retried proposal its log lacks; the group commit of
//! [`super::TransactionManager::commit_proposal`]. One rule per test.

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
        base_version: None,
        hlc: None,
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
        stamp: None,
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

// ---- group commit ------------------------------------------------------------------------

mod group {
    use std::time::{Duration, Instant};

    use lsync_protocol::SyncRole;
    use uuid::Uuid;

    use crate::change::Change;
    use crate::database::{Database, StorageOptions};
    use crate::model::ModelRegistry;
    use crate::models::Tag;
    use crate::sync_state::SyncState;
    use crate::transaction::{lock, TransactionManager};
    use crate::StorageError;

    /// A leader's database in `dir` and its transaction manager.
    fn leader(dir: &tempfile::TempDir) -> TransactionManager {
        let db = Database::open(
            &dir.path().join("leader.db"),
            &StorageOptions::default(),
            ModelRegistry::with_builtin(),
        )
        .unwrap();
        let me = Uuid::new_v4();
        db.init_sync_state(&SyncState {
            library_id: Uuid::new_v4(),
            device_id: me,
            role: SyncRole::Leader,
            current_term: 1,
            voted_for: Some(me),
            leader_device: Some(me),
            last_synced_sequence: 0,
        })
        .unwrap();
        TransactionManager::new(db, me)
    }

    fn tag(id: &str) -> Change {
        Change::insert(&Tag { id: id.into(), name: id.into(), color: None })
    }

    /// Starts `n` writers, one proposal each (`bad` ones carry a change of an unknown model),
    /// while a batch is marked running, waits until all are queued, then ends it: one of them
    /// commits every queued proposal in one transaction.
    fn concurrent(tm: &TransactionManager, n: usize, bad: &[usize]) -> Vec<Result<u64, String>> {
        lock(&tm.group.state).committing = true;
        let writers: Vec<_> = (0..n)
            .map(|i| {
                let tm = tm.clone();
                let change = if bad.contains(&i) {
                    Change { model_type: "album".into(), ..tag(&format!("w{i}")) }
                } else {
                    tag(&format!("w{i}"))
                };
                std::thread::spawn(move || {
                    tm.commit_proposal(Uuid::new_v4(), tm.device_id(), vec![change])
                        .map(|o| o.last_sequence)
                        .map_err(|e| e.to_string())
                })
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(60);
        while lock(&tm.group.state).queue.len() < n {
            assert!(Instant::now() < deadline, "the writers did not queue");
            std::thread::sleep(Duration::from_millis(1));
        }
        lock(&tm.group.state).committing = false;
        tm.group.done.notify_all();
        writers.into_iter().map(|w| w.join().unwrap()).collect()
    }

    /// A proposal made on version 1 of a record (by device A) that patches its color and then
    /// upserts it whole, committed after device B set its name with a later timestamp: the
    /// whole-record change, although it follows a change of the same record in its proposal,
    /// is decided against the stored clock — B's later name is kept (a conflict recorded), A's
    /// color is taken.
    #[test]
    fn a_change_after_another_of_its_record_in_a_proposal_is_still_decided_by_timestamp() {
        use lsync_protocol::Hlc;
        let dir = tempfile::tempdir().unwrap();
        let tm = leader(&dir);
        let me = tm.device_id();
        // a library at feature version 3: entries are stamped, conflicts decided
        tm.database()
            .with_writer(|conn| {
                use diesel::RunQueryDsl;
                diesel::sql_query("UPDATE sync_state SET feature_version = 3").execute(conn)?;
                Ok(())
            })
            .unwrap();
        tm.commit_proposal(Uuid::new_v4(), me, vec![tag("r")]).unwrap();
        let now = crate::hlc::now();
        let (a, b) = (Uuid::from_u128(0xa), Uuid::from_u128(0xb));
        let at = |ms: u64, device| Some(Hlc { physical_ms: now + ms, counter: 0, device });
        let name = serde_json::json!({ "name": "b's later name" });
        let by_b = Change {
            hlc: at(1_000, b),
            base_version: Some(1),
            ..Change::update_fields("tag", "r", &name)
        };
        tm.commit_proposal(Uuid::new_v4(), b, vec![by_b]).unwrap();
        let color = serde_json::json!({ "color": "a's color" });
        let stale =
            Tag { id: "r".into(), name: "a's stale name".into(), color: Some("a's".into()) };
        let by_a = vec![
            Change {
                hlc: at(100, a),
                base_version: Some(1),
                ..Change::update_fields("tag", "r", &color)
            },
            Change { hlc: at(200, a), base_version: Some(1), ..Change::insert(&stale) },
        ];
        tm.commit_proposal(Uuid::new_v4(), a, by_a).unwrap();
        let db = tm.database();
        let handler = db.registry().handler("tag").unwrap();
        let row = db.with_reader(|conn| handler.load(conn, "r")).unwrap().unwrap();
        let row: Tag = crate::model::decode(&row.data).unwrap();
        assert_eq!(row.name, "b's later name", "the older whole-record change lost the name");
        assert_eq!(row.color.as_deref(), Some("a's"), "and took the color");
        let conflicts = db.with_reader(|conn| crate::conflicts::list(conn, 10)).unwrap();
        assert_eq!(conflicts.len(), 1, "{conflicts:?}");
        assert_eq!(
            (conflicts[0].kept.clone(), conflicts[0].base_version),
            (vec!["name".into()], 1)
        );
    }

    #[test]
    fn concurrent_proposals_share_one_transaction_and_each_gets_its_own_sequence() {
        let dir = tempfile::tempdir().unwrap();
        let tm = leader(&dir);
        let before = tm.database().last_position().unwrap().sequence;
        let results = concurrent(&tm, 8, &[]);
        let mut sequences: Vec<u64> = results.into_iter().map(Result::unwrap).collect();
        sequences.sort_unstable();
        assert_eq!(sequences, (before + 1..=before + 8).collect::<Vec<_>>());
        assert_eq!(tm.group_commits(), 1, "eight proposals, one transaction");
        assert_eq!(tm.database().last_position().unwrap().sequence, before + 8);
    }

    #[test]
    fn a_refused_proposal_in_a_group_is_rolled_back_alone() {
        let dir = tempfile::tempdir().unwrap();
        let tm = leader(&dir);
        let before = tm.database().last_position().unwrap().sequence;
        let results = concurrent(&tm, 5, &[2]);
        assert_eq!(tm.group_commits(), 1);
        let refused: Vec<_> = results.iter().filter(|r| r.is_err()).collect();
        assert_eq!(refused.len(), 1, "{results:?}");
        assert!(refused[0].as_ref().unwrap_err().contains("album"), "{refused:?}");
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 4);
        let log = tm.database().fetch_since(before, 100).unwrap();
        assert_eq!(log.len(), 4, "the four others, gapless: {log:?}");
        assert!(log.iter().all(|e| e.record_id != "w2"));
    }

    #[test]
    fn a_writer_alone_commits_in_a_group_of_one() {
        let dir = tempfile::tempdir().unwrap();
        let tm = leader(&dir);
        let o = tm.commit_proposal(Uuid::new_v4(), tm.device_id(), vec![tag("solo")]).unwrap();
        assert_eq!(tm.group_commits(), 1);
        let again = tm.commit_proposal(Uuid::new_v4(), tm.device_id(), vec![tag("next")]).unwrap();
        assert_eq!(again.last_sequence, o.last_sequence + 1);
        assert_eq!(tm.group_commits(), 2);
        // a proposal refused before any transaction (empty) is not counted
        assert!(matches!(
            tm.commit_proposal(Uuid::new_v4(), tm.device_id(), Vec::new()),
            Err(StorageError::InvalidChange(_))
        ));
        assert_eq!(tm.group_commits(), 2);
    }
}
