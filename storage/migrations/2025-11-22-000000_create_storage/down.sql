DROP TABLE location;
DROP TABLE tag;
DROP TABLE local_jobs;
DROP TABLE devices;
DROP TABLE sync_state;
DROP TABLE sync_log;
