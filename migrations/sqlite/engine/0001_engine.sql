-- The engine's tables on SQLite (`orderflow dev`), the same rows as migrations/engine/ on Postgres.
-- Differences, and why:
-- * Times are integer microseconds since the epoch: sqlx writes `DateTime` as text whose number
--   of fractional digits varies, which would not compare correctly as text; Postgres keeps
--   microseconds too, so both stores read back the time the decider saw.
-- * JSON is text (SQLite has no jsonb); ids are 16-byte blobs, which sort like the UUIDs.
-- * No row locks: SQLite has one writer at a time, so every write transaction is the lock.

create table workflows (
    id                     blob primary key,
    workflow_type          text not null,
    version                integer not null,
    status                 text not null,
    reason                 text,
    state                  text not null,
    last_seq               integer not null,
    business_keys          text not null default '{}',
    idempotency_key        text unique,
    request_hash           text,
    created_at             integer not null,
    updated_at             integer not null,
    definition_fingerprint text
);
create index workflows_status on workflows (status);

create table history (
    workflow_id blob not null references workflows (id),
    seq         integer not null,
    at          integer not null,
    event       text not null,
    commands    text not null,
    ignored     text,
    primary key (workflow_id, seq)
);

create table outbox (
    id          integer primary key autoincrement,
    workflow_id blob not null,
    task_id     blob not null,
    exchange    text not null default '',
    queue       text not null,
    body        text not null,
    created_at  integer not null
);

create table timers (
    id          blob primary key,
    workflow_id blob not null,
    fire_at     integer not null,
    purpose     text not null
);
create index timers_fire_at on timers (fire_at);
create index timers_workflow on timers (workflow_id);
