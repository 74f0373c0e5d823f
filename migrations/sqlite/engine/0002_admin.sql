-- The admin UI on SQLite (`orderflow dev`): operator sessions, as migrations/engine/0003_admin.sql
-- keeps them on Postgres. Times are integer microseconds like every other time in this database;
-- the cookie's token is stored only as its SHA-256.
create table admin_sessions (
    token_hash  blob    primary key,
    actor       text    not null,
    csrf_token  text    not null,
    created_at  integer not null,
    expires_at  integer not null
);
create index admin_sessions_expires on admin_sessions (expires_at);

-- Audit view: operator actions across all workflows, newest first, without reading the worker
-- results and timers that make up almost all of the history.
create index history_operator_actions on history (at desc)
    where json_extract(event, '$.type') in ('cancel_requested', 'terminate_requested',
        'retry_requested', 'retry_from_step', 'signal_received', 'compensation_resolved');
