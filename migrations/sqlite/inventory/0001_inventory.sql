-- The inventory service's tables on SQLite (`orderflow dev`), the same rows as
-- migrations/inventory/ on Postgres. Differences, and why:
-- * Ids are 16-byte blobs (sqlx's encoding of a UUID here), which sort like the UUIDs.
-- * Times are RFC 3339 text in UTC, always bound by the service (SQLite has no now() of that
--   precision), so every value has one format and text order is time order, which the expiry
--   sweep's `expires_at <= ?` relies on. No defaults: a write that forgets a time fails.
-- * SQLite has no regular expressions; the id and currency checks say the same with glob.
-- * No row locks: SQLite has one writer at a time, so every write transaction (begun
--   IMMEDIATE) is the lock that keeps reservations from overselling.

create table products (
    id          text primary key check (
                    length(id) between 1 and 64
                    and id glob '[A-Za-z0-9]*'
                    and id not glob '*[^A-Za-z0-9._-]*'),
    name        text not null check (length(name) between 1 and 200),
    description text not null default '',
    price_minor integer not null check (price_minor >= 0),
    currency    text not null check (length(currency) = 3 and currency not glob '*[^A-Z]*'),
    -- Free to reserve; held by unsettled reservations; taken by completed sagas.
    on_hand     integer not null check (on_hand >= 0),
    reserved    integer not null default 0 check (reserved >= 0),
    sold        integer not null default 0 check (sold >= 0),
    created_at  text not null,
    updated_at  text not null
);

-- One reservation per saga step; the unique key makes every repeat find the first.
create table reservations (
    id              blob primary key,
    workflow_id     blob not null,
    step            text not null,
    idempotency_key text not null,
    order_id        blob,
    status          text not null check (status in ('reserved', 'committed', 'released')),
    expires_at      text not null,
    settle_reason   text,
    created_at      text not null,
    settled_at      text,
    unique (workflow_id, step)
);

create index reservations_expiry on reservations (expires_at) where status = 'reserved';

create table reservation_items (
    reservation_id blob not null references reservations (id),
    product_id     text not null references products (id),
    quantity       integer not null check (quantity > 0),
    primary key (reservation_id, product_id)
);
