-- The recording activities' tables: they stand in for the services until those exist, and tests
-- count their rows. These migrations share a database (and its `_sqlx_migrations` table) with the
-- engine's, so their versions start at 1001 to never collide with the engine's 1, 2, ...; each
-- migrator runs with `ignore_missing` so it tolerates the other's rows.

-- One row per effect done: an activity does its effect at most once per idempotency key, so the
-- key is the primary key and a repeat is `on conflict do nothing`.
create table activity_effects (
    activity        text        not null,
    idempotency_key text        not null,
    workflow_id     uuid        not null,
    step            text        not null,
    -- The attempt that did the effect; later attempts of the same step find it done.
    first_attempt   int         not null,
    created_at      timestamptz not null default now(),
    primary key (activity, idempotency_key)
);

-- Faults that tests and operators inject at runtime. An activity takes the most specific matching
-- row (its workflow's before the all-workflows one) and decrements `remaining` in the same
-- statement, so concurrent workers never spend one fault twice.
create table activity_faults (
    id          bigint      generated always as identity primary key,
    activity    text        not null,
    -- null: every workflow.
    workflow_id uuid,
    mode        text        not null
        check (mode in ('fail_permanent', 'fail_transient', 'hang', 'panic')),
    -- How many more tasks it hits; null: forever.
    remaining   int         check (remaining >= 0),
    -- The error code a failure reports; null: `injected`.
    code        text,
    created_at  timestamptz not null default now()
);
create index activity_faults_activity on activity_faults (activity, workflow_id);
