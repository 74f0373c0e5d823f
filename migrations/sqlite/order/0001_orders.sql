-- The order service's tables on SQLite (`orderflow dev`), the same rows as migrations/order/ on
-- Postgres. Differences, and why:
-- * Ids are 16-byte blobs (sqlx's encoding of a UUID here), which sort like the UUIDs, so the
--   UUIDv7 id is still the creation-order cursor of GET /orders.
-- * Times are integer microseconds since the epoch, bound by the service (SQLite has no now()
--   of that precision): as numbers they compare correctly, which `next_attempt_at` relies on.
-- * JSON is text (SQLite has no jsonb).
-- * No row locks: SQLite has one writer at a time, so every write transaction is the lock.

create table orders (
    id               blob primary key,
    user_id          blob not null,
    status           text not null default 'pending'
                     check (status in ('pending', 'confirmed', 'cancelled')),
    -- Lines as priced at order time: [{product_id, quantity, unit_price_minor}].
    items            text not null,
    total_minor      integer not null check (total_minor >= 0),
    currency         text not null,
    -- Null for orders that arrived through a saga started directly on the engine.
    shipping_address text,
    email            text not null,
    payment_method   text not null,
    -- Null until the engine accepted the start (see saga_starts).
    workflow_id      blob unique,
    -- The saga's last known status (running, completed, compensated, needs_attention, ...).
    saga_status      text,
    -- Why the order was cancelled: a code for programs and a sentence for people.
    cancel_code      text check (cancel_code in ('out_of_stock', 'payment_declined',
                     'cancelled_by_user', 'cancelled_by_operator', 'failed')),
    cancel_reason    text,
    -- Set when the owner asked to cancel, so the saga's end can be attributed to them.
    cancel_requested_at integer,
    -- The client's Idempotency-Key and a hash of its request, per user.
    idempotency_key  text,
    request_hash     text,
    created_at       integer not null,
    updated_at       integer not null,
    unique (user_id, idempotency_key)
);

create index orders_by_user on orders (user_id, id desc);

-- The intent to start an order's saga, written in the same transaction as the order, so an
-- order is never stored without its saga being started eventually (the engine may be down).
-- A row is deleted in the transaction that records the saga's workflow id.
create table saga_starts (
    order_id        blob primary key references orders (id) on delete cascade,
    attempts        integer not null default 0,
    next_attempt_at integer not null,
    last_error      text
);

create index saga_starts_due on saga_starts (next_attempt_at);
