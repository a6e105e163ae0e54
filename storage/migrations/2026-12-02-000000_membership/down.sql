DROP TABLE address_hints;
DROP TABLE invitations;
DROP INDEX sync_log_config;
ALTER TABLE sync_state DROP COLUMN rebuild_mark_term;
ALTER TABLE sync_state DROP COLUMN rebuild_mark_sequence;
ALTER TABLE sync_state DROP COLUMN feature_version;
ALTER TABLE sync_state DROP COLUMN config_sequence;
ALTER TABLE devices DROP COLUMN preference;
ALTER TABLE devices DROP COLUMN role;
