-- The payment service's database (orderflow_payment). Versions start at 4001 so that these
-- migrations never collide with another database's, should two ever share one.

-- One row per charge step. A charge is recorded in three phases so that a crash between any two
-- never charges twice: (1) insert the row `pending` under the step's idempotency key, with our
-- own id; (2) call Stripe with an idempotency key derived from the step's; (3) store Stripe's
-- PaymentIntent id and the outcome. A task that finds the row still `pending` repeats phase 2
-- with the same Stripe key, and Stripe answers with the intent it already made.
create table payments (
    -- Ours, UUIDv7 (time-ordered, so the admin list pages by it). Sent to Stripe as
    -- metadata[payment_id], which lets a webhook find the row even before phase 3 ran.
    id                 uuid primary key,
    -- The charge step's idempotency key (`<workflow>/charge`): one payment per step, whatever
    -- the number of attempts or redeliveries.
    idempotency_key    text not null unique,
    workflow_id        uuid not null,
    order_id           uuid not null,
    user_id            uuid not null,
    amount_minor       bigint not null check (amount_minor > 0),
    currency           text not null check (currency ~ '^[A-Z]{3}$'),
    payment_method     text not null,
    -- pending:   phase 1 done, Stripe's answer not stored yet (in flight, or the worker died).
    -- succeeded: charged.
    -- declined:  Stripe refused the card for good; nothing was charged.
    -- refunded:  charged, then refunded by the saga's compensation.
    -- voided:    the compensation came first (the charge attempt timed out before it reached
    --            this service); a charge arriving later for the same step is refused.
    status             text not null
                       check (status in ('pending', 'succeeded', 'declined', 'refunded', 'voided')),
    -- Which Stripe idempotency key phase 2 uses: 0 is the step's key, n > 0 is `<key>#n`. Raised
    -- only after Stripe gave a definite answer that it will replay for the old key but that a
    -- retry may change (a processing error); never after an unknown outcome (timeout, 5xx),
    -- where reusing the key is what prevents a second charge.
    stripe_attempt     integer not null default 0 check (stripe_attempt >= 0),
    payment_intent_id  text unique,
    -- Stripe's error code and message of the last failed attempt (`card_declined`, ...).
    failure_code       text,
    failure_message    text,
    refund_id          text unique,
    refunded_at        timestamptz,
    created_at         timestamptz not null default now(),
    updated_at         timestamptz not null default now(),
    -- A charged payment always knows its intent.
    check (status not in ('succeeded', 'refunded') or payment_intent_id is not null)
);

create index payments_order_id on payments (order_id);
-- The admin list filters by status, newest first.
create index payments_status_id on payments (status, id desc);

-- Every verified Stripe webhook event, once: Stripe redelivers until it gets a 2xx, so the
-- event id is the key and a redelivery is acknowledged without being applied again.
create table stripe_events (
    id                 text primary key,
    type               text not null,
    -- The PaymentIntent the event is about, when it is about one.
    payment_intent_id  text,
    payload            jsonb not null,
    received_at        timestamptz not null default now()
);

create index stripe_events_payment_intent on stripe_events (payment_intent_id);
