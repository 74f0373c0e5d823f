//! `outbox`: tasks committed with their state change, waiting to be confirmed by the broker.

use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

/// A task to publish.
#[derive(Debug, Clone)]
pub struct NewTask {
    pub workflow_id: Uuid,
    /// The task id, or for an event a message id derived from the workflow.
    pub task_id: Uuid,
    /// `""` for the default exchange (task queues), else the events exchange.
    pub exchange: String,
    /// The queue, or the routing key when `exchange` is set.
    pub queue: String,
    pub body: Value,
}

/// A claimed row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OutboxRow {
    pub id: i64,
    pub task_id: Uuid,
    pub exchange: String,
    pub queue: String,
    pub body: Value,
}

pub async fn insert_many(conn: &mut PgConnection, rows: &[NewTask]) -> sqlx::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let wf: Vec<Uuid> = rows.iter().map(|r| r.workflow_id).collect();
    let task: Vec<Uuid> = rows.iter().map(|r| r.task_id).collect();
    let exchange: Vec<&str> = rows.iter().map(|r| r.exchange.as_str()).collect();
    let queue: Vec<&str> = rows.iter().map(|r| r.queue.as_str()).collect();
    let body: Vec<&Value> = rows.iter().map(|r| &r.body).collect();
    sqlx::query(
        "insert into outbox (workflow_id, task_id, exchange, queue, body)
         select * from unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::jsonb[])",
    )
    .bind(wf)
    .bind(task)
    .bind(exchange)
    .bind(queue)
    .bind(body)
    .execute(conn)
    .await?;
    Ok(())
}

/// Locks up to `limit` rows no other relay holds, oldest first.
pub async fn claim(conn: &mut PgConnection, limit: i64) -> sqlx::Result<Vec<OutboxRow>> {
    sqlx::query_as(
        "select id, task_id, exchange, queue, body from outbox
         order by id limit $1 for update skip locked",
    )
    .bind(limit)
    .fetch_all(conn)
    .await
}

pub async fn delete(conn: &mut PgConnection, ids: &[i64]) -> sqlx::Result<()> {
    sqlx::query("delete from outbox where id = any($1)")
        .bind(ids)
        .execute(conn)
        .await?;
    Ok(())
}

/// Rows waiting and the age in seconds of the oldest (outbox lag).
pub async fn lag(conn: &mut PgConnection) -> sqlx::Result<(i64, f64)> {
    sqlx::query_as(
        "select count(*), coalesce(extract(epoch from now() - min(created_at))::float8, 0) from outbox",
    )
    .fetch_one(conn)
    .await
}
