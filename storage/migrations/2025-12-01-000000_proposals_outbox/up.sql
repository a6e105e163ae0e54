-- Proposals (writes from any device), the durable outbox and divergence repair.

-- The proposal a log entry commits, if it came from one (replicated with the entry): any later
-- leader recognises a retried proposal by it. Leader-made entries have NULL, so the partial
-- index costs nothing on the hot paths that write them.
ALTER TABLE sync_log ADD COLUMN proposal_id TEXT;
CREATE INDEX sync_log_proposal_id ON sync_log (proposal_id) WHERE proposal_id IS NOT NULL;

-- Proposals this device committed as leader that wrote no entry (every change was dropped, e.g.
-- a delete of a record already gone), so that a retry on this device is still recognised.
-- Local, not replicated: the log's proposal_id column is the source of truth for proposals that
-- wrote entries.
CREATE TABLE proposals (
    proposal_id TEXT PRIMARY KEY NOT NULL,
    first_sequence BIGINT NOT NULL,
    last_sequence BIGINT NOT NULL,
    committed_at_ms BIGINT NOT NULL
);

-- The durable outbox (local to each device, not replicated): proposals waiting to be
-- committed by the leader. `changes` is rmp-serde (named) of Vec<ProposedChange>; `seq` is the
-- insertion order (FIFO).
CREATE TABLE outbox (
    proposal_id TEXT PRIMARY KEY NOT NULL,
    created_at_ms BIGINT NOT NULL,
    changes BLOB NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms BIGINT NOT NULL,
    last_error TEXT,
    seq INTEGER NOT NULL UNIQUE
);

-- Divergence repair: the local log copied aside before a rebuild from the leader (local, not
-- replicated). Same columns as sync_log, keyed by the entry's identity (sequence, term).
CREATE TABLE stashed_entries (
    sequence BIGINT NOT NULL,
    term BIGINT NOT NULL,
    origin_device TEXT NOT NULL,
    timestamp_ms BIGINT NOT NULL,
    model_type TEXT NOT NULL,
    record_id TEXT NOT NULL,
    change_type TEXT NOT NULL,
    version BIGINT NOT NULL,
    data BLOB NOT NULL,
    proposal_id TEXT,
    PRIMARY KEY (sequence, term)
);
