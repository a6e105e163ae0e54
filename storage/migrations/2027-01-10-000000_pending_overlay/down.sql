ALTER TABLE outbox DROP COLUMN committed_last;
DROP TABLE pending_undo;
