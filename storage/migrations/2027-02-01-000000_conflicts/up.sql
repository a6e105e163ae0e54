-- Stamps and conflicts (docs/architecture.md, "Conflicts"; docs/protocol.md, "Stamps").
-- The stamp of a log entry (MessagePack of an EntryStamp: where and when the change was made,
-- the fields it set); NULL for an entry without one (libraries below feature version 3, and
-- every entry written before this migration).
ALTER TABLE sync_log ADD COLUMN stamp BLOB;
ALTER TABLE stashed_entries ADD COLUMN stamp BLOB;

-- When each field of a record was last set, derived from the stamps of the log on every
-- device (never replicated itself): the version and timestamp of the last write of the whole
-- record, and a MessagePack list of (field, version, timestamp) for fields set since by
-- field-level changes. No row: every field was last set at the record's version, without a
-- timestamp.
CREATE TABLE field_clock (
    model_type TEXT NOT NULL,
    record_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    hlc BLOB,
    fields BLOB,
    PRIMARY KEY (model_type, record_id)
);

-- The table of conflict records (model lsync.conflict) is created by its handler, as every
-- model's table is (storage/src/conflicts.rs).
