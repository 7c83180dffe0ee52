-- Scheduled scripts (PostgreSQL). Times are Unix seconds.

-- A scheduled job is not handed to its agent before `not_before`: the
-- slot plus the host's splay offset, or the end of a maintenance window
-- that holds rollouts on the host. NULL (ad-hoc jobs): at once.
ALTER TABLE jobs ADD COLUMN not_before BIGINT;

-- One row per script that has had a `schedule` in a deployed commit, as
-- the scheduler last saw it. The watermark is the last slot the scheduler
-- dealt with (ran, found run already, or skipped as too old), or the time
-- it first saw the script: slots at or before it are never looked at
-- again. The unique `jobs.schedule_key` is what makes a slot run once;
-- the watermark only spares the scheduler from asking.
CREATE TABLE schedules (
    script        TEXT PRIMARY KEY,       -- the Script document's name
    schedule      TEXT NOT NULL,          -- crontab, as written in the repo
    timezone      TEXT NOT NULL,          -- IANA name
    splay         BIGINT NOT NULL,        -- seconds
    commit_id     TEXT NOT NULL,          -- the deployed commit it was last seen in
    active        BIGINT NOT NULL,        -- 1 while the deployed commit schedules it
    watermark     BIGINT NOT NULL,        -- slots at or before this are done
    last_slot     BIGINT,                 -- the last slot that got jobs
    last_action   TEXT,                   -- its action
    updated_at    BIGINT NOT NULL
);
