-- fupload schema. Timestamps are ISO-8601 UTC text with milliseconds
-- ('2026-11-25T18:15:58.123Z'), so they sort and compare as text and read well in sqlite3.

-- One row per upload task; its columns are the task's history.
CREATE TABLE upload_tasks (
    task_id            INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused
    upload_key         TEXT    NOT NULL,                   -- 128 random bits, hex; part of the task URLs
    business_server    TEXT    NOT NULL,                   -- bServer name from the config
    token_sha256       TEXT    NOT NULL,                   -- hex SHA-256 of the token (the token itself is not stored)
    user_id            TEXT    NOT NULL,
    file_name          TEXT    NOT NULL,
    file_size          INTEGER NOT NULL CHECK (file_size >= 0),
    file_md5           TEXT    NOT NULL,                   -- lower-case hex
    store_path         TEXT    NOT NULL,                   -- as the business server sent it
    store_dir          TEXT    NOT NULL,                   -- resolved absolute directory the file goes to
    feedback_parameter TEXT    NOT NULL,                   -- raw JSON, verbatim
    tmp_dir            TEXT    NOT NULL,                   -- the temp file is tmp_dir/task-<task_id>.part
    received_bytes     INTEGER NOT NULL DEFAULT 0,         -- sum of received_ranges, kept with each block's commit
    status             TEXT    NOT NULL CHECK (status IN ('upload', 'pause', 'verify', 'finish', 'fail', 'cancel', 'expire')),
    final_path         TEXT,                               -- set on finish
    error              TEXT,                               -- why it failed, when it did
    created_at         TEXT    NOT NULL,
    updated_at         TEXT    NOT NULL,                   -- last accepted block or state change; expiry counts from here
    ended_at           TEXT                                -- when it reached finish/fail/cancel/expire
);

-- At most one unfinished task per file and destination: a create that repeats one resumes it.
CREATE UNIQUE INDEX upload_tasks_unfinished ON upload_tasks (token_sha256, user_id, file_md5, file_size, file_name, store_dir)
    WHERE status IN ('upload', 'pause', 'verify');
-- The expiry sweep.
CREATE INDEX upload_tasks_active ON upload_tasks (updated_at) WHERE status IN ('upload', 'pause');

-- Received byte ranges of a task, inclusive, coalesced: no two rows of a task overlap or touch.
CREATE TABLE received_ranges (
    task_id    INTEGER NOT NULL REFERENCES upload_tasks (task_id) ON DELETE CASCADE,
    start_byte INTEGER NOT NULL,
    end_byte   INTEGER NOT NULL,
    PRIMARY KEY (task_id, start_byte),
    CHECK (0 <= start_byte AND start_byte <= end_byte)
) WITHOUT ROWID;

-- Durable outbox of callbacks to business servers: one per ended task.
CREATE TABLE callback_outbox (
    callback_id     INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id         INTEGER NOT NULL UNIQUE REFERENCES upload_tasks (task_id),
    ret_code        TEXT    NOT NULL,                   -- '0', '-1', '-2', '-3', '-4'
    notify_url      TEXT    NOT NULL,
    body            TEXT    NOT NULL,                   -- the exact JSON that is POSTed
    signature       TEXT    NOT NULL,                   -- X-Fupload-Signature header value
    status          TEXT    NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT    NOT NULL,
    last_error      TEXT,
    created_at      TEXT    NOT NULL,
    delivered_at    TEXT
);
CREATE INDEX callback_outbox_due ON callback_outbox (next_attempt_at) WHERE status = 'pending';
