//! Field-level changes (docs/architecture.md, "Field-level changes"): a Patch names the fields
//! it sets; the leader merges it into the record's current row, so concurrent edits of
//! different fields of one record both survive; whole-record updates still replace the row.

use lsync_protocol::ChangeType;
use lsync_storage::verify;
use lsync_storage::{
    decode, Applier, Change, Database, ModelHandler, StorageError, Tag, TagHandler,
};
use serde_json::json;
use tempfile::TempDir;
use uuid::Uuid;

use crate::common::*;

/// The tag `id` as `db`'s table shows it, with its version; `None` if absent.
fn shown(db: &Database, id: &str) -> Option<(Tag, i64)> {
    let stored = db.with_reader(|conn| TagHandler.load(conn, id)).unwrap()?;
    Some((decode::<Tag>(&stored.data).unwrap(), stored.version))
}

fn tag_with(name: &str, color: Option<&str>) -> Tag {
    Tag { id: "t1".to_owned(), name: name.to_owned(), color: color.map(str::to_owned) }
}

fn device(f: &Applier) -> Uuid {
    f.database().sync_state().unwrap().device_id
}

fn verifies(db: &Database) {
    let report = verify(db.path(), db.registry()).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
}

#[test]
fn two_devices_editing_different_fields_of_one_record_both_keep_their_edit() {
    let dir = TempDir::new().unwrap();
    let l = leader(&dir, registry(false));
    l.tm.commit(Change::insert(&tag("t1", "one"))).unwrap();
    let a = follower(&dir, "a", &l, registry(false));
    let b = follower(&dir, "b", &l, registry(false));
    catch_up(&l.db, &a, 100);
    catch_up(&l.db, &b, 100);

    // Partitioned from the leader, each device edits one field; each sees its own edit.
    let (pa, pb) = (Uuid::new_v4(), Uuid::new_v4());
    let rename = vec![Change::update_fields("tag", "t1", &json!({ "name": "renamed" }))];
    let paint = vec![Change::update_fields("tag", "t1", &json!({ "color": "#ff0000" }))];
    a.database().outbox_push(pa, &rename).unwrap();
    b.database().outbox_push(pb, &paint).unwrap();
    assert_eq!(shown(a.database(), "t1"), Some((tag_with("renamed", None), 2)));
    assert_eq!(shown(b.database(), "t1"), Some((tag_with("one", Some("#ff0000")), 2)));

    // Healed: b's proposal is sequenced first; a, still pending, shows its name over it.
    let out = l.tm.commit_proposal(pb, device(&b), paint).unwrap();
    assert_eq!(out.entries[0].change_type, ChangeType::Update, "committed as a whole record");
    catch_up(&l.db, &a, 100);
    assert_eq!(shown(a.database(), "t1"), Some((tag_with("renamed", Some("#ff0000")), 3)));
    verifies(a.database());

    l.tm.commit_proposal(pa, device(&a), rename).unwrap();
    catch_up(&l.db, &a, 100);
    catch_up(&l.db, &b, 100);
    let both = Some((tag_with("renamed", Some("#ff0000")), 3));
    assert_eq!(shown(&l.db, "t1"), both);
    for f in [&a, &b] {
        assert_eq!(f.database().outbox_list_all().unwrap(), vec![], "settled");
        assert_eq!(f.database().dump().unwrap(), l.db.dump().unwrap(), "identical");
        verifies(f.database());
    }
}

#[test]
fn whole_record_updates_still_replace_the_row() {
    let dir = TempDir::new().unwrap();
    let l = leader(&dir, registry(false));
    l.tm.commit(Change::insert(&tag("t1", "one"))).unwrap();
    l.tm.commit(Change::update_fields("tag", "t1", &json!({ "color": "#ff0000" }))).unwrap();
    l.tm.commit_proposal(Uuid::new_v4(), Uuid::new_v4(), vec![Change::update(&tag("t1", "two"))])
        .unwrap();
    assert_eq!(shown(&l.db, "t1"), Some((tag_with("two", None), 3)), "the color is gone");
}

#[test]
fn a_proposed_patch_of_a_missing_record_is_dropped() {
    let dir = TempDir::new().unwrap();
    let l = leader(&dir, registry(false));
    let patch = Change::update_fields("tag", "gone", &json!({ "name": "x" }));
    let out = l.tm.commit_proposal(Uuid::new_v4(), Uuid::new_v4(), vec![patch.clone()]).unwrap();
    assert!(out.entries.is_empty());
    assert_eq!(l.db.last_position().unwrap().sequence, 0);
    // The leader's own direct commit of it is an error, as an update of a missing record is.
    assert!(matches!(l.tm.commit(patch), Err(StorageError::InvalidChange(_))));
}

#[test]
fn a_patch_sees_the_changes_before_it_in_its_batch() {
    let dir = TempDir::new().unwrap();
    let l = leader(&dir, registry(false));
    let entries =
        l.tm.commit_batch(vec![
            Change::insert(&tag("t1", "one")),
            Change::update_fields("tag", "t1", &json!({ "color": "#00ff00" })),
        ])
        .unwrap();
    assert_eq!(entries[1].change_type, ChangeType::Update);
    assert_eq!(entries[1].version, 2);
    assert_eq!(decode::<Tag>(&entries[1].data).unwrap(), tag_with("one", Some("#00ff00")));
    assert_eq!(shown(&l.db, "t1"), Some((tag_with("one", Some("#00ff00")), 2)));
}

#[test]
fn a_retried_patch_is_a_duplicate_although_its_record_changed_since() {
    let dir = TempDir::new().unwrap();
    let l = leader(&dir, registry(false));
    l.tm.commit(Change::insert(&tag("t1", "one"))).unwrap();
    let (id, proposer) = (Uuid::new_v4(), Uuid::new_v4());
    let patch = vec![Change::update_fields("tag", "t1", &json!({ "name": "renamed" }))];
    l.tm.commit_proposal(id, proposer, patch.clone()).unwrap();
    l.tm.commit(Change::update_fields("tag", "t1", &json!({ "color": "#ff0000" }))).unwrap();
    let again = l.tm.commit_proposal(id, proposer, patch).unwrap();
    assert!(again.duplicate, "matched by its fields, not the whole row");
    assert_eq!(l.db.last_position().unwrap().sequence, 3);
}

#[test]
fn a_patch_that_is_not_a_map_of_the_records_fields_is_refused() {
    let dir = TempDir::new().unwrap();
    let l = leader(&dir, registry(false));
    l.tm.commit(Change::insert(&tag("t1", "one"))).unwrap();
    for bad in [
        Change::update_fields("tag", "t1", &json!({ "colour": "#ff0000" })),
        Change::update_fields("tag", "t1", &json!({})),
        Change::update_fields("tag", "t1", &"name"),
        Change::update_fields("tag", "t1", &json!({ "id": "t2" })),
        Change::update_fields("tag", "t1", &json!({ "name": 7 })),
    ] {
        let result = l.tm.commit_proposal(Uuid::new_v4(), Uuid::new_v4(), vec![bad.clone()]);
        assert!(matches!(result, Err(StorageError::InvalidChange(_))), "{bad:?}: {result:?}");
    }
    assert_eq!(l.db.last_position().unwrap().sequence, 1, "nothing written");
    // A follower refuses to queue one that is not a map of fields at all.
    let f = follower(&dir, "f", &l, registry(false));
    let not_a_map = Change::update_fields("tag", "t1", &"name");
    assert!(f.database().outbox_push(Uuid::new_v4(), &[not_a_map]).is_err());
}
