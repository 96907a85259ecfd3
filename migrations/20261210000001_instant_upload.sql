-- Instant upload (docs/API.md, section 8; docs/SECURITY.md, "Instant upload"). A finish records
-- what identifies the file it placed, so that a later create of the same file (fileMd5,
-- fileSize) by the same business server can be finished by a link to it once the client has
-- proved that it holds the file, and only while that file is unchanged.
ALTER TABLE upload_tasks ADD COLUMN placed_size INTEGER;      -- st_size of final_path at the finish
ALTER TABLE upload_tasks ADD COLUMN placed_mtime_ns INTEGER;  -- st_mtime, in nanoseconds since 1970
ALTER TABLE upload_tasks ADD COLUMN placed_inode INTEGER;     -- st_ino, its 64 bits as a signed integer
ALTER TABLE upload_tasks ADD COLUMN placed_device INTEGER;    -- st_dev, likewise
-- Set when the task was finished by an instant upload: the finished task whose file was linked.
ALTER TABLE upload_tasks ADD COLUMN instant_from INTEGER REFERENCES upload_tasks (task_id);

-- The lookup of an instant create: finished files by business server and content.
CREATE INDEX upload_tasks_placed ON upload_tasks (business_server, file_md5, file_size)
    WHERE status = 'finish' AND placed_inode IS NOT NULL;

-- The challenge an instant create was answered with; at most one per task.
CREATE TABLE instant_challenges (
    task_id        INTEGER PRIMARY KEY REFERENCES upload_tasks (task_id) ON DELETE CASCADE,
    source_task_id INTEGER NOT NULL REFERENCES upload_tasks (task_id),  -- the finished task whose file is asked about
    nonce          TEXT    NOT NULL,                                    -- 128 random bits, hex
    ranges         TEXT    NOT NULL,                                    -- JSON [[startByte, endByte], …], inclusive
    expires_at     TEXT    NOT NULL,
    answers        INTEGER NOT NULL DEFAULT 0                           -- answers received, right or wrong
);
