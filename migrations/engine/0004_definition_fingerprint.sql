-- The fingerprint of the definition a workflow last ran with. When the deployed definition of
-- the same type and version has another fingerprint, the engine replays the workflow's history
-- before applying anything: a change that does not alter what happened so far is adopted (the
-- snapshot is re-derived from the history); one that does is nondeterminism, and the
-- definition's policy applies (needs_attention or fail). Null for rows from before this column:
-- they adopt the current fingerprint on their next event.
alter table workflows add column definition_fingerprint text;
