-- Retention (engine/src/retention/): finished workflows older than their type's policy are written
-- to the archive (an object store) and then deleted with their history and timers.
--
-- A batch is claimed before its object is written: a claimed workflow's row in
-- `archived_workflows` names the batch, and the batch names its object key. A crash after the
-- claim and before the delete leaves the batch pending: the next round writes the same object
-- (same key, overwritten whole) from the rows still in the database, then deletes them. So a
-- crash loses nothing (the rows go only after their object is written) and archives nothing
-- twice (a workflow is claimed by one batch only: `archived_workflows.workflow_id` is the key).
--
-- After the delete the claim row stays: it is the record of where an id went, which the admin UI
-- ("archived on D"), `orderflow history export` and `orderflow replay` read. It is ~60 bytes a
-- workflow (see docs/operations.md, retention).

create table archive_batches (
    id          bigserial   primary key,
    -- The object's key in the archive, fixed when the batch is claimed.
    object_key  text        not null,
    claimed_at  timestamptz not null default now(),
    -- Set in the transaction that deletes the batch's workflows; null while pending.
    archived_at timestamptz
);
-- Pending batches are few (one per crash); this finds them without reading the done ones.
create index archive_batches_pending on archive_batches (id) where archived_at is null;

create table archived_workflows (
    workflow_id   uuid   primary key,
    batch_id      bigint not null references archive_batches (id),
    workflow_type text   not null
);
create index archived_workflows_batch on archived_workflows (batch_id);

-- No index is added to `workflows` for retention. Candidates are found by walking ids (UUIDv7,
-- so creation order) below the id of the cutoff instant, on the primary key or on
-- `workflows_type_id` for a type with its own policy; a workflow finishes after it is created, so
-- none older than the cutoff can be above it. An index on `updated_at` would be cheaper to scan
-- but every state change rewrites that column, and the index would turn the hot path's HOT
-- updates into index-maintaining ones (see 0003_admin.sql).
