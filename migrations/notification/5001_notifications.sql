-- The notification service's database (orderflow_notification). Versions start at 5001 so that
-- these migrations never collide with another database's, should two ever share one.

-- One row per message: per task idempotency key and channel, so a redelivered
-- `notification.send` finds the message it already sent instead of sending another.
create table notifications (
    -- UUIDv7: listing newest first is ordering by id.
    id                  uuid primary key,
    idempotency_key     text not null,
    workflow_id         uuid,
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
    created_at          timestamptz not null default now(),
    updated_at          timestamptz not null default now(),
    sent_at             timestamptz,
    unique (idempotency_key, channel)
);

create index notifications_by_recipient on notifications (recipient, id);
create index notifications_by_workflow on notifications (workflow_id);

-- Every delivery attempt with what the provider answered, for inspection and support.
create table notification_attempts (
    id              bigint generated always as identity primary key,
    notification_id uuid not null references notifications (id),
    attempt         integer not null,
    outcome         text not null check (outcome in ('sent', 'transient_failure', 'permanent_failure')),
    provider        text not null,
    detail          jsonb not null default '{}',
    at              timestamptz not null default now()
);

create index notification_attempts_by_notification on notification_attempts (notification_id, attempt);

-- What the outbox provider "delivered": the message exactly as it would have gone out (for email
-- the RFC 5322 text), for `orderflow up` without SMTP or SMS/push providers configured. Keyed by
-- the notification so a repeated delivery records it once. No foreign key: the provider writes
-- while the notification row's own transaction is still open.
create table outbox_messages (
    notification_id uuid primary key,
    channel         text not null check (channel in ('email', 'sms', 'push')),
    recipient       text not null,
    content         text not null,
    created_at      timestamptz not null default now()
);

-- Where a user also wants order messages besides email (the saga input carries only the email).
-- Set by the user over the API; the activity reads it when it sends.
create table contacts (
    user_id    uuid primary key,
    -- E.164, e.g. +4915112345678.
    phone      text check (phone ~ '^\+[1-9][0-9]{6,14}$'),
    push_token text check (length(push_token) between 1 and 4096),
    updated_at timestamptz not null default now()
);
