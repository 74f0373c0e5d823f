-- Retention on SQLite (`orderflow dev`): the same two tables as
-- migrations/engine/0030_retention.sql, whose comments explain the claim-then-delete protocol.
-- Times are integer microseconds and ids 16-byte blobs, as in the rest of this database.

create table archive_batches (
    id          integer primary key autoincrement,
    object_key  text    not null,
    claimed_at  integer not null,
    archived_at integer
);
create index archive_batches_pending on archive_batches (id) where archived_at is null;

create table archived_workflows (
    workflow_id   blob    primary key,
    batch_id      integer not null references archive_batches (id),
    workflow_type text    not null
);
create index archived_workflows_batch on archived_workflows (batch_id);

-- Candidates are found on the workflows' primary key (UUIDv7 ids, so creation order) below the
-- id of the cutoff instant; this index does the same for a type with its own policy.
create index workflows_type_id on workflows (workflow_type, id);
