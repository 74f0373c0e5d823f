-- migrations/inventory/3002_restocks.sql on SQLite: ids are blobs, times RFC 3339 text.
create table restocks (
    idempotency_key text primary key,
    reservation_id  blob not null unique references reservations (id),
    workflow_id     blob not null,
    created_at      text not null
);
