DROP TABLE IF EXISTS lsync_conflict;
DROP TABLE field_clock;
ALTER TABLE stashed_entries DROP COLUMN stamp;
ALTER TABLE sync_log DROP COLUMN stamp;
