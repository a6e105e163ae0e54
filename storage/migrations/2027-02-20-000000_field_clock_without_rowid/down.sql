-- Back to a rowid table with the same columns and primary key.
CREATE TABLE field_clock_old (
    model_type TEXT NOT NULL,
    record_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    hlc BLOB,
    fields BLOB,
    deleted BOOLEAN NOT NULL DEFAULT 0,
    PRIMARY KEY (model_type, record_id)
);
INSERT INTO field_clock_old (model_type, record_id, version, hlc, fields, deleted)
    SELECT model_type, record_id, version, hlc, fields, deleted FROM field_clock;
DROP TABLE field_clock;
ALTER TABLE field_clock_old RENAME TO field_clock;
