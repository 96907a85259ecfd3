-- fupload schema on PostgreSQL: the tables of the SQLite schema (migrations/*.sql) as they stand
-- after its last migration, in PostgreSQL's types, and what many nodes share beyond them.
-- Timestamps a node writes are ISO-8601 UTC text with milliseconds, as on SQLite, so that they
-- sort and compare as text. The leases are the database's own clock (timestamptz, now()): the
-- nodes' clocks may differ, the database has one.

CREATE TABLE upload_tasks (
    task_id            BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- never reused
    upload_key         TEXT    NOT NULL,
    business_server    TEXT    NOT NULL,
    token_sha256       TEXT    NOT NULL,
    user_id            TEXT    NOT NULL,
    file_name          TEXT    NOT NULL,
    file_size          BIGINT  NOT NULL CHECK (file_size >= 0),
    file_md5           TEXT,
    store_path         TEXT    NOT NULL,
    store_dir          TEXT    NOT NULL,
    feedback_parameter TEXT    NOT NULL,
    tmp_dir            TEXT    NOT NULL,
    received_bytes     BIGINT  NOT NULL DEFAULT 0,
    status             TEXT    NOT NULL CHECK (status IN ('upload', 'pause', 'verify', 'finish', 'fail', 'cancel', 'expire')),
    final_path         TEXT,
    error              TEXT,
    created_at         TEXT    NOT NULL,
    updated_at         TEXT    NOT NULL,
    ended_at           TEXT,
    temp_generation    BIGINT  NOT NULL DEFAULT 0,
    finish_attempts    BIGINT  NOT NULL DEFAULT 0,
    placed_size        BIGINT,
    placed_mtime_ns    BIGINT,
    placed_inode       BIGINT,
    placed_device      BIGINT,
    instant_from       BIGINT  REFERENCES upload_tasks (task_id),
    protocol           TEXT    NOT NULL DEFAULT 'fupload' CHECK (protocol IN ('fupload', 'tus', 'ietf')),
    length_deferred    BOOLEAN NOT NULL DEFAULT FALSE,
    concat_role        TEXT    CHECK (concat_role IN ('partial', 'final')),
    joined_into        BIGINT  REFERENCES upload_tasks (task_id),
    grant_id           TEXT,
    -- The node finishing a task in verify (finish_holder, a random id per process) holds it until
    -- finish_lease_until; another node takes it over after.
    finish_holder      TEXT,
    finish_lease_until TIMESTAMPTZ
);
CREATE UNIQUE INDEX upload_tasks_unfinished ON upload_tasks (token_sha256, user_id, file_md5, file_size, file_name, store_dir)
    WHERE status IN ('upload', 'pause', 'verify');
CREATE INDEX upload_tasks_active ON upload_tasks (updated_at) WHERE status IN ('upload', 'pause');
CREATE INDEX upload_tasks_verifying ON upload_tasks (task_id) WHERE status = 'verify';
CREATE INDEX upload_tasks_placed ON upload_tasks (business_server, file_md5, file_size)
    WHERE status = 'finish' AND placed_inode IS NOT NULL;
CREATE INDEX upload_tasks_grant ON upload_tasks (grant_id) WHERE grant_id IS NOT NULL;

CREATE TABLE received_ranges (
    task_id    BIGINT NOT NULL REFERENCES upload_tasks (task_id) ON DELETE CASCADE,
    start_byte BIGINT NOT NULL,
    end_byte   BIGINT NOT NULL,
    PRIMARY KEY (task_id, start_byte),
    CHECK (0 <= start_byte AND start_byte <= end_byte)
);

CREATE TABLE callback_outbox (
    callback_id     BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_id         BIGINT NOT NULL UNIQUE REFERENCES upload_tasks (task_id),
    ret_code        TEXT   NOT NULL,
    notify_url      TEXT   NOT NULL,
    body            TEXT   NOT NULL,
    signature       TEXT   NOT NULL,
    status          TEXT   NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at TEXT   NOT NULL,
    last_error      TEXT,
    created_at      TEXT   NOT NULL,
    delivered_at    TEXT,
    -- The node sending a due callback holds it until then; after, another node may send it again.
    leased_until    TIMESTAMPTZ
);
CREATE INDEX callback_outbox_due ON callback_outbox (next_attempt_at) WHERE status = 'pending';

CREATE TABLE write_probe (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    probed_at TEXT    NOT NULL
);
INSERT INTO write_probe (id, probed_at) VALUES (1, '');

CREATE TABLE instant_challenges (
    task_id        BIGINT PRIMARY KEY REFERENCES upload_tasks (task_id) ON DELETE CASCADE,
    source_task_id BIGINT NOT NULL REFERENCES upload_tasks (task_id),
    nonce          TEXT   NOT NULL,
    ranges         TEXT   NOT NULL,
    expires_at     TEXT   NOT NULL,
    answers        BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE redeemed_grants (
    grant_id    TEXT   PRIMARY KEY,
    task_id     BIGINT NOT NULL REFERENCES upload_tasks (task_id),
    redeemed_at TEXT   NOT NULL
);

-- The byte ranges blocks in flight are writing, on whichever node (src/service/claims.rs): one
-- claim may hold several ranges. A node that dies leaves its claims until their lease runs out.
CREATE SEQUENCE block_claim_ids;
CREATE TABLE block_claims (
    task_id     BIGINT      NOT NULL REFERENCES upload_tasks (task_id) ON DELETE CASCADE,
    start_byte  BIGINT      NOT NULL,
    end_byte    BIGINT      NOT NULL,
    claim_id    BIGINT      NOT NULL,
    lease_until TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (task_id, start_byte)
);
CREATE INDEX block_claims_claim ON block_claims (claim_id);
