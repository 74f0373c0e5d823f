-- The notification service's tables on SQLite (`orderflow dev`), the same rows as
-- migrations/notification/ on Postgres. Differences, and why:
-- * Ids are 16-byte blobs (sqlx's encoding of a UUID here), which sort like the UUIDs, so the
--   UUIDv7 id is still the newest-first cursor of the log and the outbox.
-- * Times are integer microseconds since the epoch, bound by the service (SQLite has no now() of
--   that precision), as in the engine's and the other services' SQLite tables.
-- * JSON is text (SQLite has no jsonb); the phone check is a GLOB (SQLite has no regex).
-- * No row locks: SQLite has one writer for the whole file, so a delivery cannot hold its message
--   in an open transaction while the provider is called (the outbox provider's own write would
--   wait on it). A delivery holds a lease on the row instead (`lease`, `leased_until`).

create table notifications (
    -- UUIDv7: listing newest first is ordering by id.
    id                  blob primary key,
    idempotency_key     text not null,
    workflow_id         blob,
    channel             text not null check (channel in ('email', 'sms', 'push')),
    template            text not null,
    recipient           text not null,
    subject             text not null,
    body                text not null,
    body_html           text,
    -- pending: not delivered yet (a transient failure is retried by the saga);
    -- sent: the provider took it; failed: the provider refused it for good.
    status              text not null check (status in ('pending', 'sent', 'failed')),
    provider            text not null,
    provider_message_id text,
    attempts            integer not null default 0,
    last_error          text,
    created_at          integer not null,
    updated_at          integer not null,
    sent_at             integer,
    -- The delivery that holds the message (a random id) and until when. A duplicate of the task
    -- waits while it is held; a lease outliving a crashed process expires.
    lease               blob,
    leased_until        integer,
    unique (idempotency_key, channel)
);

create index notifications_by_recipient on notifications (recipient, id);
create index notifications_by_workflow on notifications (workflow_id);

-- Every delivery attempt with what the provider answered, for inspection and support.
create table notification_attempts (
    id              integer primary key autoincrement,
    notification_id blob not null references notifications (id),
    attempt         integer not null,
    outcome         text not null check (outcome in ('sent', 'transient_failure', 'permanent_failure')),
    provider        text not null,
    detail          text not null default '{}',
    at              integer not null
);

create index notification_attempts_by_notification on notification_attempts (notification_id, attempt);

-- What the outbox provider "delivered": the message exactly as it would have gone out (for email
-- the RFC 5322 text). Under `orderflow dev` every message goes here. Keyed by the notification so
-- a repeated delivery records it once.
create table outbox_messages (
    notification_id blob primary key,
    channel         text not null check (channel in ('email', 'sms', 'push')),
    recipient       text not null,
    content         text not null,
    created_at      integer not null
);

-- Where a user also wants order messages besides email.
create table contacts (
    user_id    blob primary key,
    -- E.164, e.g. +4915112345678: a plus, a digit from 1 to 9, then 6 to 14 digits.
    phone      text check (phone glob '+[1-9]*'
                           and length(phone) between 8 and 16
                           and substr(phone, 2) not glob '*[^0-9]*'),
    push_token text check (length(push_token) between 1 and 4096),
    updated_at integer not null
);
