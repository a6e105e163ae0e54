DROP TABLE stashed_entries;
DROP TABLE outbox;
DROP TABLE proposals;
DROP INDEX sync_log_proposal_id;
ALTER TABLE sync_log DROP COLUMN proposal_id;
