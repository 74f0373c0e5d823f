-- Orders and their status, which follows the order saga.
create table orders (
    -- UUIDv7, so id order is creation order: the cursor of GET /orders.
    id               uuid primary key,
    user_id          uuid not null,
    status           text not null default 'pending'
                     check (status in ('pending', 'confirmed', 'cancelled')),
    -- Lines as priced at order time: [{product_id, quantity, unit_price_minor}].
    items            jsonb not null,
    total_minor      bigint not null check (total_minor >= 0),
    currency         text not null,
    -- Null for orders that arrived through a saga started directly on the engine.
    shipping_address jsonb,
    email            text not null,
    payment_method   text not null,
    -- Null until the engine accepted the start (see saga_starts).
    workflow_id      uuid unique,
    -- The saga's last known status (running, completed, compensated, needs_attention, ...).
    saga_status      text,
    -- Why the order was cancelled: a code for programs and a sentence for people.
    cancel_code      text check (cancel_code in ('out_of_stock', 'payment_declined',
                     'cancelled_by_user', 'cancelled_by_operator', 'failed')),
    cancel_reason    text,
    -- Set when the owner asked to cancel, so the saga's end can be attributed to them.
    cancel_requested_at timestamptz,
    -- The client's Idempotency-Key and a hash of its request, per user.
    idempotency_key  text,
    request_hash     text,
    created_at       timestamptz not null default now(),
    updated_at       timestamptz not null default now(),
    unique (user_id, idempotency_key)
);

create index orders_by_user on orders (user_id, id desc);

-- The intent to start an order's saga, written in the same transaction as the order, so an
-- order is never stored without its saga being started eventually (the engine may be down).
-- A row is deleted in the transaction that records the saga's workflow id.
create table saga_starts (
    order_id        uuid primary key references orders (id) on delete cascade,
    attempts        integer not null default 0,
    next_attempt_at timestamptz not null default now(),
    last_error      text
);

create index saga_starts_due on saga_starts (next_attempt_at);
