-- The log's hash chain (docs/protocol.md, "The hash chain"): each entry's SHA-256 link,
-- 32 bytes. SQL cannot compute SHA-256, so the rows that exist when this runs get NULL and the
-- storage fills the chain over them right after the migrations, at open, in batches (resumable:
-- it continues from the first NULL). Every entry written afterwards carries its hash.
ALTER TABLE sync_log ADD COLUMN hash BLOB;
ALTER TABLE stashed_entries ADD COLUMN hash BLOB;

-- The rows whose hash is still to be computed: empty once the chain is filled, so it costs
-- nothing on the write path, and it makes "where does the chain stop?" one index lookup.
CREATE INDEX sync_log_unhashed ON sync_log (sequence) WHERE hash IS NULL;
