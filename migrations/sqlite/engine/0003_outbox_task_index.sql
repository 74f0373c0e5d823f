-- The committer deletes confirmed outbox rows by task id, as on Postgres
-- (migrations/engine/0006_outbox_task_index.sql).
create index outbox_task_id on outbox (task_id);
