-- The replicated sync log. `sequence` is the rowid: 1-based and gapless, assigned inside the
-- write transaction from the log itself.
CREATE TABLE sync_log (
    sequence INTEGER PRIMARY KEY NOT NULL,
    term BIGINT NOT NULL,
    origin_device TEXT NOT NULL,
    timestamp_ms BIGINT NOT NULL,
    model_type TEXT NOT NULL,
    record_id TEXT NOT NULL,
    change_type TEXT NOT NULL,
    version BIGINT NOT NULL,
    data BLOB NOT NULL
);

-- This device's view of the library: a single row (id = 1).
CREATE TABLE sync_state (
    id INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
    library_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    role TEXT NOT NULL,
    current_term BIGINT NOT NULL,
    voted_for TEXT,
    leader_device TEXT,
    last_synced_sequence BIGINT NOT NULL
);

-- The library's member devices. `addresses` is a JSON array of multiaddr strings.
CREATE TABLE devices (
    device_id TEXT PRIMARY KEY NOT NULL,
    peer_id TEXT NOT NULL,
    addresses TEXT NOT NULL,
    name TEXT NOT NULL,
    added_at_ms BIGINT NOT NULL
);

-- Local jobs queued by bulk entries applied on this device (not replicated).
CREATE TABLE local_jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    sequence BIGINT NOT NULL,
    model_type TEXT NOT NULL,
    record_id TEXT NOT NULL,
    data BLOB NOT NULL,
    status TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL
);

-- Built-in model tables (their handlers also run CREATE TABLE IF NOT EXISTS with the same DDL).
CREATE TABLE tag (
    id TEXT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL,
    color TEXT,
    version BIGINT NOT NULL
);

CREATE TABLE location (
    id TEXT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL,
    path TEXT NOT NULL,
    version BIGINT NOT NULL
);
