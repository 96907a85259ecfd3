-- A task's temp file can be lost while the server runs (tmpDir cleaned by an admin or by
-- systemd-tmpfiles). Its received ranges are then set back to what is on disk and the file is made
-- anew, and the generation moves on: a block planned against the old file is not recorded.
ALTER TABLE upload_tasks ADD COLUMN temp_generation INTEGER NOT NULL DEFAULT 0;

-- Finish attempts that failed for a passing reason (the database busy or full, an I/O error); the
-- running server tries again with backoff, and `error` holds the last reason while in verify.
ALTER TABLE upload_tasks ADD COLUMN finish_attempts INTEGER NOT NULL DEFAULT 0;
