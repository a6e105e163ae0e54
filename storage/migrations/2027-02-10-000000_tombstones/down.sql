DELETE FROM field_clock WHERE deleted;
ALTER TABLE field_clock DROP COLUMN deleted;
