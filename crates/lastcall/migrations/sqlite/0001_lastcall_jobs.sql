-- lastcall job queue for SQLite. Idempotent: safe to run at every start.
-- Times are unix milliseconds, so several processes on one file agree on them.

CREATE TABLE IF NOT EXISTS lastcall_jobs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    queue       TEXT    NOT NULL,
    payload     BLOB    NOT NULL,
    dedup_key   TEXT,
    attempts    INTEGER NOT NULL DEFAULT 0,  -- claims so far, this one included
    run_at      INTEGER NOT NULL,            -- runnable from
    lease_until INTEGER,                     -- claimed until; NULL when not claimed
    lease_token INTEGER,                     -- which claim holds the lease
    last_error  TEXT,
    created_at  INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS lastcall_jobs_due ON lastcall_jobs (queue, run_at);

CREATE TABLE IF NOT EXISTS lastcall_dead_jobs (
    id         INTEGER PRIMARY KEY,
    queue      TEXT    NOT NULL,
    payload    BLOB    NOT NULL,
    dedup_key  TEXT,
    attempts   INTEGER NOT NULL,
    last_error TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    died_at    INTEGER NOT NULL
);

-- One row per job effect applied, written in the same transaction as the effect.
CREATE TABLE IF NOT EXISTS lastcall_processed_jobs (
    dedup_key    TEXT    PRIMARY KEY,
    processed_at INTEGER NOT NULL
);
