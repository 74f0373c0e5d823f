-- The admin UI: operator sessions, and the indexes that keep its views fast with many workflows.
--
-- No index here reads `workflows.state`: every state change rewrites that column, and an index
-- over it would make each of those updates maintain one more index (and rule out HOT updates),
-- a cost the saga hot path would pay for a page people open now and then. The stuck view starts
-- from small sets instead (timers, `needs_attention` rows) and reads the state of one page only.

-- Logged-in operators. The cookie carries a random token; only its SHA-256 is stored, so a copy
-- of this table opens no session. The CSRF token is per session and checked on every POST.
create table admin_sessions (
    token_hash  bytea       primary key,
    actor       text        not null,
    csrf_token  text        not null,
    created_at  timestamptz not null default now(),
    expires_at  timestamptz not null
);
create index admin_sessions_expires on admin_sessions (expires_at);

-- Stuck view, "retrying": the workflows waiting on a backoff timer. Timers are only inserted and
-- deleted, never updated, and a partial index holds the retry timers alone.
create index timers_retrying on timers (workflow_id) where purpose->>'purpose' = 'retry';

-- Audit view: operator actions across all workflows, newest first. History is append-only and
-- the predicate leaves out the worker results and timers that make up almost all of it.
create index history_operator_actions on history (at desc, workflow_id, seq)
    where event->>'type' in ('cancel_requested', 'terminate_requested', 'retry_requested',
                             'retry_from_step', 'signal_received', 'compensation_resolved');

-- List filter by payment intent id: it is not a business key given at start but the output of
-- the charge step, recorded in its `activity_completed` event.
create index history_payment_intent on history ((event->'output'->>'payment_intent_id'))
    where event->>'type' = 'activity_completed' and event->'output' ? 'payment_intent_id';
