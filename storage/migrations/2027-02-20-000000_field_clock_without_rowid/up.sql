-- field_clock as a WITHOUT ROWID table (docs/performance.md, "Conflicts (issue 18): what
-- stamps cost"): the same columns and primary key, so the same rows and the same meaning, but
-- stored in one B-tree keyed by (model_type, record_id) instead of a rowid table plus the index
-- of its primary key — each row written touches one B-tree, not two. SQLite cannot change a
-- table's kind in place: create the new table, copy the rows, drop the old one, rename the new
-- one (all in this migration's transaction; no index, trigger, view or foreign key refers to
-- the table).
CREATE TABLE field_clock_new (
    model_type TEXT NOT NULL,
    record_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    hlc BLOB,
    fields BLOB,
    deleted BOOLEAN NOT NULL DEFAULT 0,
    PRIMARY KEY (model_type, record_id)
) WITHOUT ROWID;
INSERT INTO field_clock_new (model_type, record_id, version, hlc, fields, deleted)
    SELECT model_type, record_id, version, hlc, fields, deleted FROM field_clock;
DROP TABLE field_clock;
ALTER TABLE field_clock_new RENAME TO field_clock;
