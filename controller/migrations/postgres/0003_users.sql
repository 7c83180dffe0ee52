-- Users of the API and the dashboard, their sessions, API tokens, and the
-- counters that rate-limit logins (PostgreSQL). Secrets are never stored:
-- passwords as argon2id PHC strings, session and API tokens as SHA-256
-- hashes of the token. Times are Unix seconds.

-- People who log in. A removed user keeps its row, disabled, so that
-- records naming it keep their meaning; adding the name again enables it.
CREATE TABLE users (
    name          TEXT PRIMARY KEY,          -- login name, as RBAC names it
    password_hash TEXT NOT NULL,             -- argon2id PHC string
    break_glass   BIGINT NOT NULL DEFAULT 0, -- 1: an admin whose every use is audited
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL,
    disabled_at   BIGINT                     -- set by `muster user remove`
);

-- Sessions of logged-in users (the CLI's `muster login`, the dashboard).
CREATE TABLE sessions (
    token_hash   TEXT PRIMARY KEY,           -- SHA-256 of the token, hex
    user_name    TEXT NOT NULL REFERENCES users (name),
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    last_used_at BIGINT,
    revoked_at   BIGINT                      -- logout, password change, removal
);
CREATE INDEX sessions_user ON sessions (user_name);

-- API tokens act for a user; RBAC bindings name them (`token: ci`), so a
-- name belongs to one token at a time across all users: it is unique among
-- tokens not revoked, and may be reused once its token is revoked.
CREATE TABLE api_tokens (
    id           TEXT PRIMARY KEY,           -- short public id
    name         TEXT NOT NULL,
    user_name    TEXT NOT NULL REFERENCES users (name),
    token_hash   TEXT NOT NULL UNIQUE,       -- SHA-256 of the token, hex
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT,                     -- NULL: never expires
    revoked_at   BIGINT,
    last_used_at BIGINT
);
CREATE UNIQUE INDEX api_tokens_live_name ON api_tokens (name) WHERE revoked_at IS NULL;
CREATE INDEX api_tokens_user ON api_tokens (user_name);

-- Login attempts per user name (`user:NAME`, whether or not such a user
-- exists) and per source address (`addr:IP`), counted in a window; a
-- subject that reaches its limit is locked until `locked_until`.
CREATE TABLE login_failures (
    subject      TEXT PRIMARY KEY,
    failures     BIGINT NOT NULL,
    window_start BIGINT NOT NULL,
    locked_until BIGINT
);
CREATE INDEX login_failures_window ON login_failures (window_start);
