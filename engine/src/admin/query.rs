//! The reads behind the admin pages. Each is shaped so an index answers it with 100,000s of
//! workflows in the table (`engine/benches/admin.rs` measures them):
//!
//! - the list walks `workflows` newest first on the primary key or `workflows_status_id` /
//!   `workflows_type_id`, and turns a time range into a range of UUIDv7 ids, so a filter by time
//!   is a key range too;
//! - the stuck set is the union of small, indexed sets (`needs_attention` rows, retry timers,
//!   overdue timers, tasks out on queues nobody consumes) and the state of one page only is read;
//! - the audit trail and the payment-intent lookup use partial indexes on `history`
//!   (migration 0003).

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgConnection, Postgres, QueryBuilder};
use uuid::Uuid;

/// What the list can be filtered by. Every field is optional.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub status: Option<String>,
    pub workflow_type: Option<String>,
    /// A business key value (order id, user id) or a payment intent id.
    pub business_key: Option<String>,
    pub id: Option<Uuid>,
    pub created_after: Option<DateTime<Utc>>,
    pub created_before: Option<DateTime<Utc>>,
    /// Only ids below this one (the next page's cursor).
    pub before_id: Option<Uuid>,
    /// Only ids at or below this one (a bulk action never reaches workflows newer than its
    /// preview).
    pub upto_id: Option<Uuid>,
    pub limit: i64,
}

/// One row of the list.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ListRow {
    pub id: Uuid,
    pub workflow_type: String,
    pub version: i32,
    pub status: String,
    pub reason: Option<String>,
    pub business_keys: Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The step at the saga's cursor (name, status, attempts, last error), if it has one.
    pub current: Option<Value>,
}

/// The smallest UUIDv7 of millisecond `ms`: every v7 id minted at or after that millisecond
/// sorts at or above it.
pub fn v7_floor(at: DateTime<Utc>) -> Uuid {
    let ms = at.timestamp_millis().max(0) as u64;
    let mut b = [0u8; 16];
    b[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    Uuid::from_bytes(b)
}

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

/// Which kind of stuck a view is limited to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StuckKind {
    /// Status `needs_attention`.
    Attention,
    /// Waiting on a backoff timer after a failed attempt (forward or compensation).
    Retrying,
    /// A task is out on a queue that no worker consumes.
    NoWorker,
    /// A timer (start-to-close, backoff, deadline) is due and has not fired.
    Overdue,
}

impl StuckKind {
    pub const ALL: [StuckKind; 4] = [
        Self::Attention,
        Self::Retrying,
        Self::NoWorker,
        Self::Overdue,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Attention => "attention",
            Self::Retrying => "retrying",
            Self::NoWorker => "no_worker",
            Self::Overdue => "overdue",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::Attention => "need attention",
            Self::Retrying => "retrying",
            Self::NoWorker => "on a queue with no worker",
            Self::Overdue => "with an overdue timer",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// What the stuck view can be filtered by.
#[derive(Debug, Clone, Default)]
pub struct StuckFilter {
    /// Only this kind of stuck.
    pub kind: Option<StuckKind>,
    /// Only sagas whose latest task is of this activity (`payment.charge`).
    pub activity: Option<String>,
    pub workflow_type: Option<String>,
    pub created_after: Option<DateTime<Utc>>,
    pub created_before: Option<DateTime<Utc>>,
    pub before_id: Option<Uuid>,
    pub upto_id: Option<Uuid>,
    pub limit: i64,
    /// Timers due before this instant count as overdue.
    pub overdue_before: DateTime<Utc>,
    /// Workflows whose task is out on a queue that no worker consumes (from
    /// [`super::stuck::QueueProbe`]).
    pub no_worker: Vec<Uuid>,
}

/// A stuck workflow with what is needed to say why.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StuckRow {
    pub id: Uuid,
    pub workflow_type: String,
    pub version: i32,
    pub status: String,
    pub reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub state: Value,
    /// The latest `schedule_activity` command (its `TaskSpec`), and when it was decided.
    pub last_task: Option<Value>,
    pub last_task_at: Option<DateTime<Utc>>,
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

/// A durable timer as the pages show it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TimerRow {
    pub workflow_id: Uuid,
    pub id: Uuid,
    pub fire_at: DateTime<Utc>,
    pub purpose: Value,
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

/// One operator action from some workflow's history.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AuditRow {
    pub workflow_id: Uuid,
    pub seq: i64,
    pub at: DateTime<Utc>,
    pub event: Value,
    pub workflow_type: Option<String>,
    pub status: Option<String>,
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
