-- What `orderflow dev`'s own activities keep (`<data-dir>/shop.db`): stock and reservations,
-- payments, orders and the email outbox. Every effect is keyed by the task's idempotency key,
-- so a redelivered task finds its first effect instead of doing it twice.
create table products (
    id          text primary key,
    name        text not null,
    price_minor integer not null,
    currency    text not null,
    stock       integer not null check (stock >= 0)
);

create table reservations (
    key         text primary key,
    order_id    text not null,
    items       text not null,
    released    integer not null default 0
);

create table payments (
    key            text primary key,
    order_id       text not null,
    amount_minor   integer not null,
    currency       text not null,
    payment_method text not null,
    status         text not null
);

create table orders (
    order_id    text primary key,
    user_id     text not null,
    total_minor integer not null,
    currency    text not null,
    status      text not null
);

create table emails (
    key        text primary key,
    recipient  text not null,
    subject    text not null,
    body       text not null,
    sent_at    integer not null
);
