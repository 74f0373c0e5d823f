-- The saga benchmark's activity tables (`orderflow bench`): each forward step of the order saga
-- is one single-row INSERT into its own table, the cheapest real write a service could do. They
-- share the bench database (and its `_sqlx_migrations` table) with the engine's migrations, so
-- versions start at 2001 and the migrator ignores the engine's rows.
--
-- Each table is keyed by the workflow id: one saga does each step once, and the table stands for
-- the step, so (table, workflow id) is the step's idempotency key. A uuid key keeps the index
-- small; a repeated attempt is `on conflict do nothing` and finds the first effect.

create table reservations (
    workflow_id uuid        primary key,
    order_id    uuid        not null,
    quantity    int         not null,
    -- Set by `inventory.release`. A release that arrives before its reserve (the reserve timed
    -- out and its task was still queued) inserts the row already released, so the late reserve
    -- finds it and does nothing.
    released    boolean     not null default false,
    created_at  timestamptz not null default now()
);

create table payments (
    workflow_id  uuid        primary key,
    order_id     uuid        not null,
    amount_minor bigint      not null,
    currency     text        not null,
    -- Set by `payment.refund`, same tombstone rule as `reservations.released`.
    refunded     boolean     not null default false,
    created_at   timestamptz not null default now()
);

create table orders (
    workflow_id uuid        primary key,
    order_id    uuid        not null,
    -- Set by `order.cancel`, same tombstone rule as `reservations.released`.
    cancelled   boolean     not null default false,
    created_at  timestamptz not null default now()
);

create table notifications (
    workflow_id uuid        primary key,
    order_id    uuid        not null,
    email       text        not null,
    created_at  timestamptz not null default now()
);
