-- Deletion markers (docs/architecture.md, "Conflicts"): a stamped Delete leaves the row of its
-- record in field_clock, with the delete's version and timestamp and `deleted` set, so that a
-- change made before the delete and arriving after it is decided against it (a tombstone). The
-- rows are derived from the log: stamped Deletes applied before this migration left no marker
-- (stamps are new with feature version 3; such a database is rebuilt by a full reconciliation
-- if `lsync verify` reports field_clock rows missing).
ALTER TABLE field_clock ADD COLUMN deleted BOOLEAN NOT NULL DEFAULT 0;
