-- Batch jobs (docs/BATCH.md): uploaded files, batches and their lines; usage rows name their batch.
--
-- Portable like 0001: TEXT ids, BIGINT epoch milliseconds, BIGINT 0/1 flags. A line is leased
-- by one gateway at a time (lease_owner, lease_until); its result is written with its custom_id
-- in the same statement that marks it done, so a line counts once whoever finishes it.

ALTER TABLE usage ADD COLUMN batch_id TEXT;
CREATE INDEX usage_batch ON usage (batch_id);

CREATE TABLE files (
    id          TEXT PRIMARY KEY,             -- "file-" + UUIDv7 hex: time-ordered
    team        TEXT NOT NULL,                -- only this team sees the file
    purpose     TEXT NOT NULL,                -- "batch", "batch_output"
    filename    TEXT NOT NULL,
    bytes       BIGINT NOT NULL,
    created_at  BIGINT NOT NULL
);
CREATE INDEX files_team ON files (team, id);

CREATE TABLE batches (
    id                  TEXT PRIMARY KEY,     -- "batch_" + UUIDv7 hex: time-ordered
    team                TEXT NOT NULL,
    key_id              TEXT NOT NULL,        -- the key that created it (usage rows carry it)
    endpoint            TEXT NOT NULL,        -- "/v1/chat/completions", ...
    input_file_id       TEXT NOT NULL,
    completion_window   TEXT NOT NULL,
    status              TEXT NOT NULL,        -- OpenAI's status values
    metadata            TEXT,                 -- JSON object
    errors              TEXT,                 -- JSON array of validation errors
    output_file_id      TEXT,
    error_file_id       TEXT,
    total_count         BIGINT NOT NULL,
    completed_count     BIGINT NOT NULL,
    failed_count        BIGINT NOT NULL,
    lease_owner         TEXT,                 -- the gateway validating or finalizing it
    lease_until         BIGINT,
    created_at          BIGINT NOT NULL,
    in_progress_at      BIGINT,
    expires_at          BIGINT NOT NULL,
    finalizing_at       BIGINT,
    completed_at        BIGINT,
    failed_at           BIGINT,
    expired_at          BIGINT,
    cancelling_at       BIGINT,
    cancelled_at        BIGINT
);
CREATE INDEX batches_team ON batches (team, id);
CREATE INDEX batches_status ON batches (status);

CREATE TABLE batch_lines (
    batch_id     TEXT NOT NULL,
    line         BIGINT NOT NULL,             -- line number in the input file, from 1
    custom_id    TEXT NOT NULL,
    byte_offset  BIGINT NOT NULL,             -- where the line's JSON starts in the input file
    byte_len     BIGINT NOT NULL,
    done         BIGINT NOT NULL,             -- 0 to do, 1 result recorded
    attempts     BIGINT NOT NULL,             -- upstream failures so far
    lease_owner  TEXT,                        -- NULL: free (after lease_until, if set)
    lease_until  BIGINT,
    failed       BIGINT,                      -- 1: the result goes to the error file
    error_kind   TEXT,                        -- the error's code, for the admin view
    result       TEXT,                        -- the output or error file line (JSON)
    PRIMARY KEY (batch_id, line)
);
CREATE INDEX batch_lines_todo ON batch_lines (batch_id, done, line);
