-- The committer publishes a task from memory as soon as its change commits and deletes the
-- outbox row by task id once the broker confirmed it (engine/src/committer.rs); the relay only
-- sweeps rows left behind by a crash. Those deletes look rows up by task_id.
create index outbox_task_id on outbox (task_id);
