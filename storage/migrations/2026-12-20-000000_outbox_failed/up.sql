-- Outbox entries refused for good are kept, visible, instead of deleted (docs/architecture.md,
-- "Outbox"): `state` is 'pending' (delivered by the proposer) or 'failed' (refused by a leader,
-- or too large for a frame; kept until an operator retries or discards it), with the reason
-- and when it was refused.
ALTER TABLE outbox ADD COLUMN state TEXT NOT NULL DEFAULT 'pending';
ALTER TABLE outbox ADD COLUMN failed_reason TEXT;
ALTER TABLE outbox ADD COLUMN failed_at_ms BIGINT;
