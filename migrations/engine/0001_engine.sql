-- The engine's durable state. Every change to a workflow happens in one transaction that appends
-- its events, rewrites its snapshot and inserts its outbox rows and timers (DESIGN.md §3.1).

-- One row per workflow: the snapshot of its folded state plus the columns the API filters on.
-- Ids are UUIDv7, so ordering by id is ordering by creation: lists page on id, no created_at index.
create table workflows (
    id              uuid primary key,
    workflow_type   text        not null,
    version         int         not null,
    status          text        not null,
    reason          text,
    -- typetag-tagged JSON of the workflow's state (`{"kind":"saga",...}`).
    state           jsonb       not null,
    -- seq of the last history event; the next event gets last_seq + 1.
    last_seq        bigint      not null,
    business_keys   jsonb       not null default '{}',
    -- The values of business_keys, so `business_key=<order id>` is one GIN lookup.
    business_key_values text[]  not null default '{}',
    -- Start requests with an Idempotency-Key return the same workflow; the hash of the request
    -- body tells a retry (same body) from a conflicting reuse of the key (409).
    idempotency_key text unique,
    request_hash    text,
    created_at      timestamptz not null,
    updated_at      timestamptz not null
);
create index workflows_status_id on workflows (status, id desc);
create index workflows_type_id on workflows (workflow_type, id desc);
create index workflows_business_keys on workflows using gin (business_key_values);

-- The append-only history: each event with the commands the decider answered (the replay format).
create table history (
    workflow_id uuid        not null,
    seq         bigint      not null,
    at          timestamptz not null,
    event       jsonb       not null,
    commands    jsonb       not null,
    ignored     text,
    primary key (workflow_id, seq)
);

-- Tasks committed with their state change and not yet confirmed by the broker. The relay deletes a
-- row only after RabbitMQ confirmed the publish, so a crash in between republishes (at-least-once).
create table outbox (
    id          bigserial   primary key,
    workflow_id uuid        not null,
    task_id     uuid        not null,
    queue       text        not null,
    body        jsonb       not null,
    created_at  timestamptz not null default now()
);

-- Durable timers: backoff, start-to-close timeouts and deadlines. A timer row is only written or
-- deleted while its workflow's row is locked, which is what lets the poller lock workflows first.
create table timers (
    id          uuid        primary key,
    workflow_id uuid        not null,
    fire_at     timestamptz not null,
    purpose     jsonb       not null
);
create index timers_fire_at on timers (fire_at);
create index timers_workflow on timers (workflow_id);
