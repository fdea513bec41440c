-- The audit trail, PostgreSQL. Times are timestamptz (readable in psql; the
-- store converts to and from epoch seconds); params, result and target are jsonb.

CREATE TABLE commands (
    user_id     text        NOT NULL,
    command_id  text        NOT NULL,
    bot_id      text        NOT NULL,
    command     text        NOT NULL,
    params      jsonb       NOT NULL,        -- redacted before it was queued
    state       text        NOT NULL,        -- sent, accepted, succeeded, failed, timed_out
    version     integer     NOT NULL,        -- rises by one per state change; only a higher one overwrites
    node        text        NOT NULL,
    service     text,
    created_at  timestamptz NOT NULL,
    accepted_at timestamptz,
    finished_at timestamptz,
    result      jsonb,                       -- NULL until there is one
    session_id  text,
    PRIMARY KEY (user_id, command_id)
);
-- The queries: newest first, all or one user's or one bot's, bounded by created_at.
CREATE INDEX commands_created ON commands (created_at DESC);
CREATE INDEX commands_user_created ON commands (user_id, created_at DESC);
CREATE INDEX commands_bot_created ON commands (bot_id, created_at DESC);

CREATE TABLE revocations (
    id         text PRIMARY KEY,
    kind       text        NOT NULL CHECK (kind IN ('token', 'user')),
    jti        text,
    user_id    text,
    revoked_at timestamptz NOT NULL,
    until      timestamptz,                  -- NULL: for ever
    actor      text        NOT NULL,
    reason     text
);
CREATE INDEX revocations_until ON revocations (until);

CREATE TABLE admin_actions (
    id     text PRIMARY KEY,
    at     timestamptz NOT NULL,
    actor  text        NOT NULL,
    action text        NOT NULL,
    target jsonb       NOT NULL,
    node   text        NOT NULL
);
CREATE INDEX admin_actions_at ON admin_actions (at DESC);
