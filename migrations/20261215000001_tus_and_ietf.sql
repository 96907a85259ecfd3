-- tus and the IETF resumable-upload draft (docs/API.md, section 9). Such an upload is a task like
-- any other; what is new:
--   file_md5 may be NULL: the client named no md5 (a tus creation without one); the finish then
--     records the md5 it computed;
--   protocol: the front end the task was created or is used through;
--   length_deferred: the client sends the length later (tus creation-defer-length); until then
--     file_size holds the server's maxFileSize, the most the upload may grow to;
--   concat_role and joined_into: tus concatenation; a partial upload is a task of its own whose
--     bytes the final upload's task takes over when it is created;
--   grant_id: the upload grant the task was created with.
-- SQLite cannot drop a NOT NULL: the table is made anew (https://www.sqlite.org/lang_altertable.html,
-- "Making Other Kinds Of Table Schema Changes"). Migrations run with foreign keys off
-- (src/store/migrations.rs), so dropping the old table cascades nowhere.
CREATE TABLE upload_tasks_new (
    task_id            INTEGER PRIMARY KEY AUTOINCREMENT,
    upload_key         TEXT    NOT NULL,
    business_server    TEXT    NOT NULL,
    token_sha256       TEXT    NOT NULL,
    user_id            TEXT    NOT NULL,
    file_name          TEXT    NOT NULL,
    file_size          INTEGER NOT NULL CHECK (file_size >= 0),
    file_md5           TEXT,                                -- lower-case hex; NULL until the finish when none was named
    store_path         TEXT    NOT NULL,
    store_dir          TEXT    NOT NULL,
    feedback_parameter TEXT    NOT NULL,
    tmp_dir            TEXT    NOT NULL,
    received_bytes     INTEGER NOT NULL DEFAULT 0,
    status             TEXT    NOT NULL CHECK (status IN ('upload', 'pause', 'verify', 'finish', 'fail', 'cancel', 'expire')),
    final_path         TEXT,
    error              TEXT,
    created_at         TEXT    NOT NULL,
    updated_at         TEXT    NOT NULL,
    ended_at           TEXT,
    temp_generation    INTEGER NOT NULL DEFAULT 0,
    finish_attempts    INTEGER NOT NULL DEFAULT 0,
    placed_size        INTEGER,
    placed_mtime_ns    INTEGER,
    placed_inode       INTEGER,
    placed_device      INTEGER,
    instant_from       INTEGER REFERENCES upload_tasks (task_id),
    protocol           TEXT    NOT NULL DEFAULT 'fupload' CHECK (protocol IN ('fupload', 'tus', 'ietf')),
    length_deferred    INTEGER NOT NULL DEFAULT 0 CHECK (length_deferred IN (0, 1)),
    concat_role        TEXT    CHECK (concat_role IN ('partial', 'final')),
    joined_into        INTEGER REFERENCES upload_tasks (task_id),
    grant_id           TEXT
);
INSERT INTO upload_tasks_new (task_id, upload_key, business_server, token_sha256, user_id, file_name, file_size,
    file_md5, store_path, store_dir, feedback_parameter, tmp_dir, received_bytes, status, final_path, error,
    created_at, updated_at, ended_at, temp_generation, finish_attempts, placed_size, placed_mtime_ns, placed_inode,
    placed_device, instant_from)
SELECT task_id, upload_key, business_server, token_sha256, user_id, file_name, file_size,
    file_md5, store_path, store_dir, feedback_parameter, tmp_dir, received_bytes, status, final_path, error,
    created_at, updated_at, ended_at, temp_generation, finish_attempts, placed_size, placed_mtime_ns, placed_inode,
    placed_device, instant_from
FROM upload_tasks;
-- Task ids are never reused: the new table goes on counting where the old one stood.
DELETE FROM sqlite_sequence WHERE name = 'upload_tasks_new';
INSERT INTO sqlite_sequence (name, seq) SELECT 'upload_tasks_new', seq FROM sqlite_sequence WHERE name = 'upload_tasks';
DROP TABLE upload_tasks;
ALTER TABLE upload_tasks_new RENAME TO upload_tasks;
CREATE UNIQUE INDEX upload_tasks_unfinished ON upload_tasks (token_sha256, user_id, file_md5, file_size, file_name, store_dir)
    WHERE status IN ('upload', 'pause', 'verify');
CREATE INDEX upload_tasks_active ON upload_tasks (updated_at) WHERE status IN ('upload', 'pause');
CREATE INDEX upload_tasks_placed ON upload_tasks (business_server, file_md5, file_size)
    WHERE status = 'finish' AND placed_inode IS NOT NULL;
CREATE INDEX upload_tasks_grant ON upload_tasks (grant_id) WHERE grant_id IS NOT NULL;

-- Grants redeemed by a creation (a single upload, or the final one of a concatenation): each at most once.
CREATE TABLE redeemed_grants (
    grant_id    TEXT    PRIMARY KEY,
    task_id     INTEGER NOT NULL REFERENCES upload_tasks (task_id),
    redeemed_at TEXT    NOT NULL
) WITHOUT ROWID;
