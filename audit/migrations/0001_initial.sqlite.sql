-- The audit trail, SQLite. Times are epoch seconds (REAL); params, result and
-- target are JSON text.

CREATE TABLE commands (
    user_id     TEXT    NOT NULL,
    command_id  TEXT    NOT NULL,
    bot_id      TEXT    NOT NULL,
    command     TEXT    NOT NULL,
    params      TEXT    NOT NULL,            -- JSON, redacted before it was queued
    state       TEXT    NOT NULL,            -- sent, accepted, succeeded, failed, timed_out
    version     INTEGER NOT NULL,            -- rises by one per state change; only a higher one overwrites
    node        TEXT    NOT NULL,
    service     TEXT,
    created_at  REAL    NOT NULL,
    accepted_at REAL,
    finished_at REAL,
    result      TEXT,                        -- JSON, NULL until there is one
    session_id  TEXT,
    PRIMARY KEY (user_id, command_id)
);
-- The queries: newest first, all or one user's or one bot's, bounded by created_at.
CREATE INDEX commands_created ON commands (created_at DESC);
CREATE INDEX commands_user_created ON commands (user_id, created_at DESC);
CREATE INDEX commands_bot_created ON commands (bot_id, created_at DESC);

CREATE TABLE revocations (
    id         TEXT PRIMARY KEY,
    kind       TEXT NOT NULL CHECK (kind IN ('token', 'user')),
    jti        TEXT,
    user_id    TEXT,
    revoked_at REAL NOT NULL,
    until      REAL,                         -- NULL: for ever
    actor      TEXT NOT NULL,
    reason     TEXT
);
CREATE INDEX revocations_until ON revocations (until);

CREATE TABLE admin_actions (
    id     TEXT PRIMARY KEY,
    at     REAL NOT NULL,
    actor  TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,                    -- JSON
    node   TEXT NOT NULL
);
CREATE INDEX admin_actions_at ON admin_actions (at DESC);
