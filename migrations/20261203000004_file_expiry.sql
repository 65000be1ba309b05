-- Expiring files (CONTRACT §15). `files.expires_at`: an upload's `expires_after` (NULL: never);
-- past it the file reads as not found and the sweeper in `pdq api` deletes it with its bytes.
-- `batches.output_expires_after_s`: a batch's `output_expires_after`, counted from the batch's
-- end (when its output and error files exist); past it those files read as not found. They are
-- generated from the results rows, which stay: the rows are the user's to delete in SQL.
ALTER TABLE files ADD COLUMN expires_at timestamptz;
CREATE INDEX files_expiring ON files (expires_at) WHERE expires_at IS NOT NULL;
ALTER TABLE batches ADD COLUMN output_expires_after_s integer;
