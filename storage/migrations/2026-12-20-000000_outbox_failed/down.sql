ALTER TABLE outbox DROP COLUMN failed_at_ms;
ALTER TABLE outbox DROP COLUMN failed_reason;
ALTER TABLE outbox DROP COLUMN state;
