-- The inventory service's database (orderflow_inventory). Versions start at 3001 so that these
-- migrations never collide with another database's, should two ever share one.

-- One row per product. Stock is kept as three counters that only ever move units between each
-- other, so `on_hand + reserved + sold` stays what was stocked (conservation); the checks make
-- overselling impossible even if the code had a bug.
create table products (
    -- The SKU: the saga's `product_id`. Readable and stable, so orders and logs can name it.
    id          text primary key check (id ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$'),
    name        text not null check (length(name) between 1 and 200),
    description text not null default '',
    price_minor bigint not null check (price_minor >= 0),
    currency    text not null check (currency ~ '^[A-Z]{3}$'),
    -- Free to reserve.
    on_hand     integer not null check (on_hand >= 0),
    -- Held by reservations whose saga has not settled yet.
    reserved    integer not null default 0 check (reserved >= 0),
    -- Reservations whose saga completed.
    sold        integer not null default 0 check (sold >= 0),
    created_at  timestamptz not null default now(),
    updated_at  timestamptz not null default now()
);

-- One reservation per saga step: `inventory.reserve` may run many times for one step (at-least-once
-- delivery, retries), and the unique key makes every repeat find the first reservation.
create table reservations (
    id              uuid primary key,
    workflow_id     uuid not null,
    step            text not null,
    -- The key of the task that created the row (the reserve's, or the release's for a tombstone).
    idempotency_key text not null,
    order_id        uuid,
    -- reserved: holding units; committed: sold (the saga completed); released: units returned.
    status          text not null check (status in ('reserved', 'committed', 'released')),
    expires_at      timestamptz not null,
    -- Why it left `reserved`: saga_completed, compensated, expired, saga_<status>, ...
    settle_reason   text,
    created_at      timestamptz not null default now(),
    settled_at      timestamptz,
    unique (workflow_id, step)
);

-- The sweeper's scan: only live reservations, oldest expiry first.
create index reservations_expiry on reservations (expires_at) where status = 'reserved';

create table reservation_items (
    reservation_id uuid not null references reservations (id),
    product_id     text not null references products (id),
    quantity       integer not null check (quantity > 0),
    primary key (reservation_id, product_id)
);
