-- Muster's first schema (PostgreSQL): commits, enrollment tokens, hosts,
-- bundles and reports. Times are Unix seconds; JSON is stored as TEXT so
-- that one code path serves SQLite and PostgreSQL.

-- Every commit of the tracked branch that was tried, deployed or not.
CREATE TABLE commits (
    id           TEXT PRIMARY KEY,          -- commit hash
    author       TEXT NOT NULL,
    summary      TEXT NOT NULL,
    committed_at BIGINT NOT NULL,
    state        TEXT NOT NULL,             -- deployed | rejected
    diagnostics  TEXT NOT NULL,             -- JSON list of diagnostics
    n_changed    BIGINT NOT NULL DEFAULT 0, -- hosts whose bundle changed
    recorded_at  BIGINT NOT NULL,
    deployed_at  BIGINT
);
CREATE INDEX commits_recorded ON commits (recorded_at);

-- Tokens that let new hosts enroll; only a hash of each token is kept.
CREATE TABLE enrollment_tokens (
    id           TEXT PRIMARY KEY,          -- short public id
    token_hash   TEXT NOT NULL UNIQUE,
    max_uses     BIGINT NOT NULL,
    uses         BIGINT NOT NULL DEFAULT 0,
    labels       TEXT NOT NULL,             -- JSON object given to hosts
    auto_approve BIGINT NOT NULL,           -- 0 or 1
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    revoked_at   BIGINT
);

-- Enrolled hosts. `key` is derived from the host's secret (the secret
-- itself is never stored).
CREATE TABLE hosts (
    id                 TEXT PRIMARY KEY,
    name               TEXT NOT NULL UNIQUE,
    state              TEXT NOT NULL,       -- pending | approved | rejected
    key                TEXT NOT NULL,
    labels             TEXT NOT NULL,       -- JSON object, from the token
    facts              TEXT NOT NULL,       -- JSON object, as last reported
    token_id           TEXT,
    enrolled_at        BIGINT NOT NULL,
    last_seen_at       BIGINT,
    applied_generation BIGINT NOT NULL DEFAULT 0,
    run_status         TEXT                 -- as last reported
);

-- The bundle in force for each host: one row per host, replaced on publish.
CREATE TABLE bundles (
    host_id      TEXT PRIMARY KEY REFERENCES hosts (id) ON DELETE CASCADE,
    generation   BIGINT NOT NULL,
    commit_id    TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    bundle       TEXT NOT NULL,             -- canonical JSON, as signed
    signature    TEXT NOT NULL,             -- minisign signature
    issued_at    BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL
);

-- Reports from agents, newest last.
CREATE TABLE reports (
    id          BIGSERIAL PRIMARY KEY,
    host_id     TEXT NOT NULL REFERENCES hosts (id) ON DELETE CASCADE,
    generation  BIGINT NOT NULL,
    received_at BIGINT NOT NULL,
    body        TEXT NOT NULL
);
CREATE INDEX reports_host ON reports (host_id, received_at);

-- Settings the controller records for the CLI (its public URL).
CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
