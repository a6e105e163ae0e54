-- Membership as replicated state (docs/architecture.md, "Membership").

-- Each member's role in the configuration in effect, and what the leader may make of it.
ALTER TABLE devices ADD COLUMN role TEXT NOT NULL DEFAULT 'voter';
ALTER TABLE devices ADD COLUMN preference TEXT NOT NULL DEFAULT 'auto';

-- The configuration in effect: the `devices` rows are the members of the configuration entry
-- at `config_sequence` (0: none yet — a library of feature version 1, whose members were
-- given by hand). `feature_version` is that configuration's.
ALTER TABLE sync_state ADD COLUMN config_sequence BIGINT NOT NULL DEFAULT 0;
ALTER TABLE sync_state ADD COLUMN feature_version INTEGER NOT NULL DEFAULT 1;

-- The voters before the current voter set, while the configuration entry that changed them
-- (at `voters_since`) is not known to be committed (JSON array of device ids; NULL once it
-- is). Elections then need a majority of both sets (docs/architecture.md, "Membership").
ALTER TABLE sync_state ADD COLUMN voters_since BIGINT NOT NULL DEFAULT 0;
ALTER TABLE sync_state ADD COLUMN previous_voters TEXT;

-- The last log position this device held before its log was cleared to be rebuilt from the
-- leader (0, 0: none). Until the rebuilt log reaches it, the device does not campaign, and it
-- compares candidates' logs with it, so a rebuild never makes it vote for a log shorter than
-- one it acknowledged.
ALTER TABLE sync_state ADD COLUMN rebuild_mark_sequence BIGINT NOT NULL DEFAULT 0;
ALTER TABLE sync_state ADD COLUMN rebuild_mark_term BIGINT NOT NULL DEFAULT 0;

-- Finding the latest configuration entry of the log.
CREATE INDEX sync_log_config ON sync_log (sequence) WHERE change_type = 'config';

-- Invitations this device issued (local, not replicated): one-time secrets, stored hashed.
CREATE TABLE invitations (
    secret_hash BLOB PRIMARY KEY NOT NULL,
    created_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    learner BOOLEAN NOT NULL,
    used_by TEXT,
    used_at_ms BIGINT
);

-- The latest signed address hint of each device (local): where to dial it.
CREATE TABLE address_hints (
    device_id TEXT PRIMARY KEY NOT NULL,
    addresses TEXT NOT NULL,
    counter BIGINT NOT NULL,
    signature BLOB NOT NULL
);
