-- Jobs (SQLite): actions and the jobs they run on hosts. Times are Unix
-- seconds; JSON is stored as TEXT, as in the first migration.

-- One action: an operator's ad-hoc run, a scheduled run or a remediation.
-- Its jobs are released to hosts under its rollout limits.
CREATE TABLE actions (
    id                TEXT PRIMARY KEY,
    kind              TEXT NOT NULL,          -- script | reboot | service
    requested_by      TEXT NOT NULL,          -- a user name, or `scheduler`
    request_id        TEXT,                   -- the API request that made it
    summary           TEXT NOT NULL,          -- one line for people
    targets           TEXT NOT NULL,          -- JSON: the targets as asked
    parameters        TEXT NOT NULL,          -- JSON object, secrets redacted
    source            TEXT NOT NULL,          -- schedule | ad_hoc | remediation
    max_parallel      BIGINT,                 -- jobs in flight at once; NULL: all
    failure_threshold BIGINT,                 -- failures that stop it; NULL: never
    state             TEXT NOT NULL,          -- running | completed | stopped | cancelled
    created_at        BIGINT NOT NULL,
    finished_at       BIGINT,
    audit_commit      TEXT                    -- the audit repo commit, once written
);
CREATE INDEX actions_created ON actions (created_at);

-- One job for one host. `payload` is the canonical job JSON exactly as
-- signed, `signature` the minisign signature over it: what agents get.
CREATE TABLE jobs (
    id           TEXT PRIMARY KEY,
    host_id      TEXT NOT NULL REFERENCES hosts (id) ON DELETE CASCADE,
    action_id    TEXT NOT NULL REFERENCES actions (id) ON DELETE CASCADE,
    position     BIGINT NOT NULL,             -- release order within the action
    kind         TEXT NOT NULL,               -- script | reboot | service
    payload      TEXT NOT NULL,               -- canonical job JSON, as signed
    signature    TEXT NOT NULL,               -- minisign signature of payload
    source       TEXT NOT NULL,               -- schedule | ad_hoc | remediation
    requested_by TEXT NOT NULL,
    -- pending | queued | delivered | running | succeeded | failed |
    -- timed_out | refused | cancelled | expired
    state        TEXT NOT NULL,
    attempts     BIGINT NOT NULL DEFAULT 0,   -- deliveries so far
    lease_until  BIGINT,                      -- re-delivered after this
    run_timeout  BIGINT NOT NULL,             -- seconds the job may run
    expires_at   BIGINT NOT NULL,             -- as signed
    created_at   BIGINT NOT NULL,
    delivered_at BIGINT,
    started_at   BIGINT,
    finished_at  BIGINT,
    exit_code    BIGINT,
    stdout       TEXT,                        -- bounded to 64 KiB
    stderr       TEXT,                        -- bounded to 64 KiB
    message      TEXT,                        -- why it was refused or failed
    schedule_key TEXT UNIQUE                  -- `script|slot|host` for scheduled jobs
);
CREATE INDEX jobs_host_state ON jobs (host_id, state);
CREATE INDEX jobs_action ON jobs (action_id);
-- The sweep that wakes agents and expires jobs looks jobs up by state.
CREATE INDEX jobs_state ON jobs (state, lease_until);
