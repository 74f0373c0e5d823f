//! [`Reads`] on Postgres. Each read is shaped so an index answers it with 100,000s of workflows
//! in the table (`engine/benches/admin.rs` measures them):
//!
//! - the list walks `workflows` newest first on the primary key or `workflows_status_id` /
//!   `workflows_type_id`, and turns a time range into a range of UUIDv7 ids, so a filter by time
//!   is a key range too;
//! - the stuck set is the union of small, indexed sets (`needs_attention` rows, retry timers,
//!   overdue timers, tasks out on queues nobody consumes) and the state of one page only is read;
//! - the audit trail and the payment-intent lookup use partial indexes on `history`
//!   (migration 0003).

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use orderflow_core::RecordedEvent;
use sqlx::{PgConnection, PgPool, Postgres, QueryBuilder};
use uuid::Uuid;

use super::{history, outbox, workflows};
use crate::store::{
    WorkflowRow,
    reads::{
        AuditRow, ListFilter, ListRow, Reads, Session, StuckFilter, StuckKind, StuckRow, TimerRow,
        v7_floor,
    },
};

fn push_list_where(q: &mut QueryBuilder<'_, Postgres>, f: &ListFilter) {
    if let Some(s) = &f.status {
        q.push(" and w.status = ").push_bind(s.clone());
    }
    if let Some(t) = &f.workflow_type {
        q.push(" and w.workflow_type = ").push_bind(t.clone());
    }
    if let Some(k) = &f.business_key {
        // Two indexed lookups united: the business keys given at start (GIN), and the payment
        // intent recorded by the charge step (the predicate repeats `history_payment_intent`'s).
        // A union rather than an OR, which would leave the planner a scan of every workflow.
        q.push(" and w.id in (select id from workflows where business_key_values @> array[")
            .push_bind(k.clone())
            .push(
                "]::text[] union select workflow_id from history
                  where event->>'type' = 'activity_completed'
                    and event->'output' ? 'payment_intent_id'
                    and event->'output'->>'payment_intent_id' = ",
            )
            .push_bind(k.clone())
            .push(")");
    }
    if let Some(id) = f.id {
        q.push(" and w.id = ").push_bind(id);
    }
    // Ids are UUIDv7 minted just before `created_at` is stamped, so a time bound is also an id
    // bound (with a millisecond of slack either side); the id bound is what the index walks.
    if let Some(a) = f.created_after {
        q.push(" and w.created_at >= ").push_bind(a);
        q.push(" and w.id >= ")
            .push_bind(v7_floor(a - chrono::Duration::milliseconds(1)));
    }
    if let Some(b) = f.created_before {
        q.push(" and w.created_at < ").push_bind(b);
        q.push(" and w.id < ")
            .push_bind(v7_floor(b + chrono::Duration::milliseconds(2)));
    }
    if let Some(c) = f.before_id {
        q.push(" and w.id < ").push_bind(c);
    }
    if let Some(c) = f.upto_id {
        q.push(" and w.id <= ").push_bind(c);
    }
}

/// Newest first. Reads the state only to pick out the current step of the rows returned.
pub async fn list(conn: &mut PgConnection, f: &ListFilter) -> sqlx::Result<Vec<ListRow>> {
    let mut q = QueryBuilder::new(
        "select w.id, w.workflow_type, w.version, w.status, w.reason, w.business_keys,
                w.created_at, w.updated_at,
                w.state->'steps'->((w.state->>'cursor')::int) as current
         from workflows w where true",
    );
    push_list_where(&mut q, f);
    q.push(" order by w.id desc limit ").push_bind(f.limit);
    q.build_query_as().fetch_all(conn).await
}

/// The API's list: whole rows, newest first.
pub async fn list_workflows(
    conn: &mut PgConnection,
    f: &ListFilter,
) -> sqlx::Result<Vec<WorkflowRow>> {
    let columns = workflows::COLUMNS
        .split(", ")
        .map(|c| format!("w.{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut q = QueryBuilder::new(format!("select {columns} from workflows w where true"));
    push_list_where(&mut q, f);
    q.push(" order by w.id desc limit ").push_bind(f.limit);
    q.build_query_as().fetch_all(conn).await
}

/// The ids a list filter matches, newest first, at most `f.limit`.
pub async fn list_ids(conn: &mut PgConnection, f: &ListFilter) -> sqlx::Result<Vec<Uuid>> {
    let mut q = QueryBuilder::new("select w.id from workflows w where true");
    push_list_where(&mut q, f);
    q.push(" order by w.id desc limit ").push_bind(f.limit);
    let rows: Vec<(Uuid,)> = q.build_query_as().fetch_all(conn).await?;
    Ok(rows.into_iter().map(|r| r.0).collect())
}

/// How many workflows are in each status.
pub async fn counts(conn: &mut PgConnection) -> sqlx::Result<Vec<(String, i64)>> {
    sqlx::query_as("select status, count(*) from workflows group by status order by status")
        .fetch_all(conn)
        .await
}

/// The latest task a workflow scheduled: a backward walk of its history on the primary key that
/// stops at the first event with a `schedule_activity` command (usually the last one or two).
const LAST_TASK: &str = "(select c from history h, jsonb_array_elements(h.commands) c
      where h.workflow_id = w.id and c->>'type' = 'schedule_activity'
      order by h.seq desc limit 1)";

fn push_stuck_set(q: &mut QueryBuilder<'_, Postgres>, f: &StuckFilter) {
    let wanted = |k: StuckKind| f.kind.is_none_or(|only| only == k);
    let mut parts = 0;
    let mut union = |q: &mut QueryBuilder<'_, Postgres>| {
        if parts > 0 {
            q.push(" union ");
        }
        parts += 1;
    };
    q.push("(");
    if wanted(StuckKind::Attention) {
        union(q);
        q.push("select id from workflows where status = 'needs_attention'");
    }
    if wanted(StuckKind::Retrying) {
        union(q);
        q.push("select workflow_id from timers where purpose->>'purpose' = 'retry'");
    }
    if wanted(StuckKind::Overdue) {
        union(q);
        q.push("select workflow_id from timers where fire_at < ")
            .push_bind(f.overdue_before);
    }
    if wanted(StuckKind::NoWorker) && !f.no_worker.is_empty() {
        union(q);
        q.push("select unnest(")
            .push_bind(f.no_worker.clone())
            .push("::uuid[])");
    }
    if parts == 0 {
        q.push("select null::uuid where false");
    }
    q.push(")");
}

fn push_stuck_where(q: &mut QueryBuilder<'_, Postgres>, f: &StuckFilter) {
    q.push(" where w.status in ('running', 'compensating', 'needs_attention')");
    if let Some(a) = &f.activity {
        q.push(format!(" and {LAST_TASK}->>'activity' = "))
            .push_bind(a.clone());
    }
    if let Some(t) = &f.workflow_type {
        q.push(" and w.workflow_type = ").push_bind(t.clone());
    }
    if let Some(a) = f.created_after {
        q.push(" and w.created_at >= ").push_bind(a);
    }
    if let Some(b) = f.created_before {
        q.push(" and w.created_at < ").push_bind(b);
    }
    if let Some(c) = f.before_id {
        q.push(" and w.id < ").push_bind(c);
    }
    if let Some(c) = f.upto_id {
        q.push(" and w.id <= ").push_bind(c);
    }
}

/// One page of stuck workflows, newest first. The page is chosen first and only its rows'
/// states and latest tasks are read.
pub async fn stuck(conn: &mut PgConnection, f: &StuckFilter) -> sqlx::Result<Vec<StuckRow>> {
    let mut q = QueryBuilder::new(
        "select w.id, w.workflow_type, w.version, w.status, w.reason, w.created_at, w.updated_at,
                w.state, last.spec as last_task, last.at as last_task_at
         from (select w.id from ",
    );
    push_stuck_set(&mut q, f);
    q.push(" s(id) join workflows w on w.id = s.id");
    push_stuck_where(&mut q, f);
    q.push(" order by w.id desc limit ").push_bind(f.limit);
    q.push(
        ") page join workflows w on w.id = page.id
         left join lateral (
             select c as spec, h.at from history h, jsonb_array_elements(h.commands) c
             where h.workflow_id = w.id and c->>'type' = 'schedule_activity'
             order by h.seq desc limit 1) last on true
         order by w.id desc",
    );
    q.build_query_as().fetch_all(conn).await
}

/// The ids a stuck filter matches, newest first, at most `f.limit`.
pub async fn stuck_ids(conn: &mut PgConnection, f: &StuckFilter) -> sqlx::Result<Vec<Uuid>> {
    let mut q = QueryBuilder::new("select w.id from ");
    push_stuck_set(&mut q, f);
    q.push(" s(id) join workflows w on w.id = s.id");
    push_stuck_where(&mut q, f);
    q.push(" order by w.id desc limit ").push_bind(f.limit);
    let rows: Vec<(Uuid,)> = q.build_query_as().fetch_all(conn).await?;
    Ok(rows.into_iter().map(|r| r.0).collect())
}

/// How many workflows are stuck in each way, with no other filter. `no_worker` is counted by
/// the caller, who has the list.
pub async fn stuck_counts(
    conn: &mut PgConnection,
    overdue_before: DateTime<Utc>,
) -> sqlx::Result<(i64, i64, i64)> {
    sqlx::query_as(
        "select (select count(*) from workflows where status = 'needs_attention'),
                (select count(distinct workflow_id) from timers
                 where purpose->>'purpose' = 'retry'),
                (select count(distinct workflow_id) from timers where fire_at < $1)",
    )
    .bind(overdue_before)
    .fetch_one(conn)
    .await
}

/// Every task out with a worker, as (workflow, activity). Tasks out are exactly the workflows
/// with a start-to-close timer; their latest scheduled task says which queue they wait on.
pub async fn tasks_out(conn: &mut PgConnection) -> sqlx::Result<Vec<(Uuid, Option<String>)>> {
    sqlx::query_as(
        "select t.workflow_id,
                (select c->>'activity' from history h, jsonb_array_elements(h.commands) c
                 where h.workflow_id = t.workflow_id and c->>'type' = 'schedule_activity'
                 order by h.seq desc limit 1)
         from timers t where t.purpose->>'purpose' = 'attempt_timeout'",
    )
    .fetch_all(conn)
    .await
}

/// Per activity, the tasks out and when the oldest was scheduled. Like [`tasks_out`], a task out
/// is a workflow with a start-to-close timer; its latest scheduled task names the activity, and
/// the history row that scheduled it carries the instant (the task's deadline counts from it).
/// One row per task in flight, so the cost follows what is in flight, not the history's size.
pub async fn tasks_out_by_activity(
    conn: &mut PgConnection,
) -> sqlx::Result<Vec<(String, i64, DateTime<Utc>)>> {
    sqlx::query_as(
        "select l.activity, count(*)::int8, min(l.at)
         from timers t cross join lateral (
             select c->>'activity' as activity, h.at
             from history h, jsonb_array_elements(h.commands) c
             where h.workflow_id = t.workflow_id and c->>'type' = 'schedule_activity'
             order by h.seq desc limit 1) l
         where t.purpose->>'purpose' = 'attempt_timeout' and l.activity is not null
         group by l.activity",
    )
    .fetch_all(conn)
    .await
}

/// The pending timers of some workflows, soonest first.
pub async fn timers_of(conn: &mut PgConnection, ids: &[Uuid]) -> sqlx::Result<Vec<TimerRow>> {
    sqlx::query_as(
        "select workflow_id, id, fire_at, purpose from timers
         where workflow_id = any($1) order by fire_at",
    )
    .bind(ids)
    .fetch_all(conn)
    .await
}

/// Operator actions across all workflows, newest first, older than `before` if given. The event
/// types are written out (not bound) so the planner can match `history_operator_actions`.
pub async fn audit(
    conn: &mut PgConnection,
    before: Option<DateTime<Utc>>,
    limit: i64,
) -> sqlx::Result<Vec<AuditRow>> {
    let mut q = QueryBuilder::new(
        "select h.workflow_id, h.seq, h.at, h.event, w.workflow_type, w.status
         from history h left join workflows w on w.id = h.workflow_id
         where h.event->>'type' in ('cancel_requested', 'terminate_requested',
               'retry_requested', 'retry_from_step', 'signal_received', 'compensation_resolved')",
    );
    if let Some(b) = before {
        q.push(" and h.at < ").push_bind(b);
    }
    q.push(" order by h.at desc limit ").push_bind(limit);
    q.build_query_as().fetch_all(conn).await
}

#[async_trait]
impl Reads for PgPool {
    async fn get(&self, id: Uuid) -> sqlx::Result<Option<WorkflowRow>> {
        workflows::get(&mut *self.acquire().await?, id).await
    }

    async fn history(&self, id: Uuid) -> sqlx::Result<Vec<RecordedEvent>> {
        history::load(&mut *self.acquire().await?, id).await
    }

    async fn counts(&self) -> sqlx::Result<Vec<(String, i64)>> {
        counts(&mut *self.acquire().await?).await
    }

    async fn list(&self, f: &ListFilter) -> sqlx::Result<Vec<ListRow>> {
        list(&mut *self.acquire().await?, f).await
    }

    async fn list_ids(&self, f: &ListFilter) -> sqlx::Result<Vec<Uuid>> {
        list_ids(&mut *self.acquire().await?, f).await
    }

    async fn list_workflows(&self, f: &ListFilter) -> sqlx::Result<Vec<WorkflowRow>> {
        list_workflows(&mut *self.acquire().await?, f).await
    }

    async fn stuck(&self, f: &StuckFilter) -> sqlx::Result<Vec<StuckRow>> {
        stuck(&mut *self.acquire().await?, f).await
    }

    async fn stuck_ids(&self, f: &StuckFilter) -> sqlx::Result<Vec<Uuid>> {
        stuck_ids(&mut *self.acquire().await?, f).await
    }

    async fn stuck_counts(&self, overdue_before: DateTime<Utc>) -> sqlx::Result<(i64, i64, i64)> {
        stuck_counts(&mut *self.acquire().await?, overdue_before).await
    }

    async fn tasks_out(&self) -> sqlx::Result<Vec<(Uuid, Option<String>)>> {
        tasks_out(&mut *self.acquire().await?).await
    }

    async fn tasks_out_by_activity(&self) -> sqlx::Result<Vec<(String, i64, DateTime<Utc>)>> {
        tasks_out_by_activity(&mut *self.acquire().await?).await
    }

    async fn timers_of(&self, ids: &[Uuid]) -> sqlx::Result<Vec<TimerRow>> {
        timers_of(&mut *self.acquire().await?, ids).await
    }

    async fn audit(
        &self,
        before: Option<DateTime<Utc>>,
        limit: i64,
    ) -> sqlx::Result<Vec<AuditRow>> {
        audit(&mut *self.acquire().await?, before, limit).await
    }

    async fn outbox_lag(&self) -> sqlx::Result<(i64, f64)> {
        outbox::lag(&mut *self.acquire().await?).await
    }

    async fn session(&self, token_hash: &[u8]) -> sqlx::Result<Option<Session>> {
        sqlx::query_as(
            "select actor, csrf_token from admin_sessions
             where token_hash = $1 and expires_at > now()",
        )
        .bind(token_hash)
        .fetch_optional(self)
        .await
    }

    async fn open_session(
        &self,
        token_hash: &[u8],
        actor: &str,
        csrf: &str,
        ttl: Duration,
    ) -> sqlx::Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query("delete from admin_sessions where expires_at < now()")
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "insert into admin_sessions (token_hash, actor, csrf_token, expires_at)
             values ($1, $2, $3, now() + $4 * interval '1 second')",
        )
        .bind(token_hash)
        .bind(actor)
        .bind(csrf)
        .bind(ttl.as_secs_f64())
        .execute(&mut *tx)
        .await?;
        tx.commit().await
    }

    async fn close_session(&self, token_hash: &[u8]) -> sqlx::Result<()> {
        sqlx::query("delete from admin_sessions where token_hash = $1")
            .bind(token_hash)
            .execute(self)
            .await?;
        Ok(())
    }

    async fn archived(
        &self,
        id: Uuid,
    ) -> sqlx::Result<Option<crate::store::retention::ArchivedAt>> {
        super::retention::archived(self, id).await
    }

    async fn ping(&self) -> bool {
        sqlx::query("select 1").execute(self).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v7_floor_bounds_ids_of_that_millisecond() {
        let id = Uuid::now_v7();
        let (secs, nanos) = id.get_timestamp().expect("v7 has a timestamp").to_unix();
        let at = DateTime::from_timestamp(secs as i64, nanos).expect("a valid instant");
        assert!(v7_floor(at) <= id);
        assert!(v7_floor(at + chrono::Duration::milliseconds(1)) > id);
    }
}
