-- Local-first writes (docs/architecture.md, "Local-first writes"): a device's own changes that
-- no leader has committed yet are shown in its model tables at once, over the committed rows.
--
-- `pending_undo` holds, for every record such a pending change touches, the committed row it
-- overlays (the model's encoded data and version; both NULL when the record does not exist in
-- the committed state), captured the first time a pending change touches the record. Local,
-- never replicated.
CREATE TABLE pending_undo (
    model_type TEXT NOT NULL,
    record_id TEXT NOT NULL,
    data BLOB,
    version BIGINT,
    PRIMARY KEY (model_type, record_id)
);

-- An outbox entry a leader answered as committed while this device's log had not reached it
-- yet: state 'delivered', with the last sequence the leader gave. It stays in the overlay
-- until this device's log reaches that sequence.
ALTER TABLE outbox ADD COLUMN committed_last BIGINT;
