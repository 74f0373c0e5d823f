-- Units a return put back (the return saga's `inventory.restock`): one row per restock task's
-- idempotency key, and one per order reservation, so neither a redelivered task nor a second
-- return of the same order moves units from `sold` back to `on_hand` twice.
create table restocks (
    idempotency_key text primary key,
    reservation_id  uuid not null unique references reservations (id),
    workflow_id     uuid not null,
    created_at      timestamptz not null default now()
);
