-- The in-process task queue of `orderflow dev`: one row per message not yet acked.
-- A delivery leases its row with the epoch of the process that took it. A process that dies
-- leaves rows leased by an epoch that no longer exists: the next process takes them again as
-- redeliveries, which is what RabbitMQ does with the unacked messages of a closed channel.
create table messages (
    id          integer primary key autoincrement,
    queue       text not null,
    message_id  text not null,
    body        blob not null,
    traceparent text,
    lease       integer,
    redelivered integer not null default 0
);
create index messages_queue on messages (queue, id);

-- Routes messages published to an exchange (the workflow events) to the queues bound to it.
create table bindings (
    exchange    text not null,
    routing_key text not null,
    queue       text not null,
    primary key (exchange, routing_key, queue)
);
