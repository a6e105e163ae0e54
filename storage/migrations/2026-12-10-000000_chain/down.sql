DROP INDEX sync_log_unhashed;
ALTER TABLE stashed_entries DROP COLUMN hash;
ALTER TABLE sync_log DROP COLUMN hash;
