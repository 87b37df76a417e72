-- Tollgate's store, one schema for SQLite and PostgreSQL.
--
-- Portable on purpose: TEXT ids (no autoincrement, whose syntax differs), times as BIGINT
-- milliseconds since the Unix epoch (no timestamp types, whose drivers differ), flags as BIGINT
-- 0/1, lists as JSON text. Usage rows carry a writer-made id so a retried or replayed batch is
-- idempotent (INSERT ... ON CONFLICT DO NOTHING).

CREATE TABLE teams (
    name            TEXT PRIMARY KEY,
    models          TEXT NOT NULL,            -- JSON array of model names, "*" for all
    rpm             BIGINT,                   -- requests per minute (limits module)
    tpm             BIGINT,                   -- tokens per minute (limits module)
    max_concurrent  BIGINT,                   -- requests in flight (limits module)
    budget_usd      DOUBLE PRECISION,         -- spend cap per budget_period (limits module)
    budget_period   TEXT,                     -- "day" | "month" | "total"
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);

CREATE TABLE keys (
    id              TEXT PRIMARY KEY,         -- "key_" + 16 hex; the key id in logs and usage
    hash            TEXT NOT NULL UNIQUE,     -- SHA-256 of the plaintext, hex
    prefix          TEXT NOT NULL,            -- first characters of the plaintext, for display
    name            TEXT NOT NULL,
    team            TEXT NOT NULL,
    models          TEXT,                     -- JSON array narrowing the team's models; NULL = the team's
    rpm             BIGINT,
    tpm             BIGINT,
    max_concurrent  BIGINT,
    budget_usd      DOUBLE PRECISION,
    budget_period   TEXT,
    expires_at      BIGINT,                   -- NULL = never
    revoked_at      BIGINT,                   -- NULL = not revoked
    rotated_to      TEXT,                     -- id of the key that replaced this one
    created_at      BIGINT NOT NULL,
    last_used_at    BIGINT                    -- updated by the usage writer, off the request path
);
CREATE INDEX keys_team ON keys (team);

CREATE TABLE usage (
    id                  TEXT PRIMARY KEY,     -- made by the writer; makes retries idempotent
    ts                  BIGINT NOT NULL,      -- request start, ms since epoch
    request_id          TEXT NOT NULL,
    team                TEXT NOT NULL,
    key_id              TEXT NOT NULL,
    model               TEXT,
    upstream            TEXT,
    endpoint            TEXT NOT NULL,
    stream              BIGINT NOT NULL,      -- 0/1
    status              BIGINT NOT NULL,
    error_kind          TEXT,
    prompt_tokens       BIGINT NOT NULL,
    completion_tokens   BIGINT NOT NULL,
    cost_usd            DOUBLE PRECISION NOT NULL,
    latency_ms          BIGINT NOT NULL,
    ttfb_ms             BIGINT,
    cache_hit           BIGINT NOT NULL       -- 0/1
);
CREATE INDEX usage_ts ON usage (ts);
CREATE INDEX usage_team_ts ON usage (team, ts);
CREATE INDEX usage_key_ts ON usage (key_id, ts);

CREATE TABLE audit (
    id          TEXT PRIMARY KEY,
    ts          BIGINT NOT NULL,
    actor       TEXT NOT NULL,                -- "admin-api" or "cli:<user>"
    action      TEXT NOT NULL,                -- e.g. "key.create", "team.update"
    target      TEXT NOT NULL,                -- key id or team name
    detail      TEXT NOT NULL                 -- JSON: what changed (never a key or hash)
);
CREATE INDEX audit_ts ON audit (ts);
