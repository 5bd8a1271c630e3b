-- lastcall job queue for PostgreSQL. Idempotent: safe to run at every start.
-- Claims use FOR UPDATE SKIP LOCKED; enqueues NOTIFY lastcall_jobs with the queue's name.

CREATE TABLE IF NOT EXISTS lastcall_jobs (
    id          BIGSERIAL   PRIMARY KEY,
    queue       TEXT        NOT NULL,
    payload     BYTEA       NOT NULL,
    dedup_key   TEXT,
    attempts    INTEGER     NOT NULL DEFAULT 0,  -- claims so far, this one included
    run_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    lease_until TIMESTAMPTZ,                     -- claimed until; NULL when not claimed
    lease_token BIGINT,                          -- which claim holds the lease
    last_error  TEXT,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS lastcall_jobs_due ON lastcall_jobs (queue, run_at);

CREATE TABLE IF NOT EXISTS lastcall_dead_jobs (
    id         BIGINT      PRIMARY KEY,
    queue      TEXT        NOT NULL,
    payload    BYTEA       NOT NULL,
    dedup_key  TEXT,
    attempts   INTEGER     NOT NULL,
    last_error TEXT        NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    died_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- One row per job effect applied, written in the same transaction as the effect.
CREATE TABLE IF NOT EXISTS lastcall_processed_jobs (
    dedup_key    TEXT        PRIMARY KEY,
    processed_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
