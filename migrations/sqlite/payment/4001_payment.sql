-- The payment service's tables on SQLite (`orderflow dev`), the same rows as
-- migrations/payment/ on Postgres; see there for what each column means. Differences, and why:
-- * Ids are 16-byte blobs (sqlx's encoding of a UUID), which sort like the UUIDs, so the admin
--   list still pages by `id`.
-- * Times are RFC 3339 text with exactly six fractional digits and `Z`, written by the store
--   (SQLite has no `now()` with microseconds): one width, so text order is time order.
-- * JSON is text; the currency check is a glob, SQLite having no regular expressions.
-- * No row locks: every statement of the store is a single conditional write, and SQLite runs
--   one writer at a time.

create table payments (
    id                 blob primary key,
    idempotency_key    text not null unique,
    workflow_id        blob not null,
    order_id           blob not null,
    user_id            blob not null,
    amount_minor       integer not null check (amount_minor > 0),
    currency           text not null
                       check (length(currency) = 3 and currency not glob '*[^A-Z]*'),
    payment_method     text not null,
    status             text not null
                       check (status in ('pending', 'succeeded', 'declined', 'refunded', 'voided')),
    stripe_attempt     integer not null default 0 check (stripe_attempt >= 0),
    payment_intent_id  text unique,
    failure_code       text,
    failure_message    text,
    refund_id          text unique,
    refunded_at        text,
    created_at         text not null,
    updated_at         text not null,
    check (status not in ('succeeded', 'refunded') or payment_intent_id is not null)
);

create index payments_order_id on payments (order_id);
create index payments_status_id on payments (status, id desc);

create table stripe_events (
    id                 text primary key,
    type               text not null,
    payment_intent_id  text,
    payload            text not null,
    received_at        text not null
);

create index stripe_events_payment_intent on stripe_events (payment_intent_id);
