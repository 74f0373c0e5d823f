//! The outbox relay: publishes committed tasks to RabbitMQ (persistent, pipelined confirms) and
//! deletes their rows only after the broker confirmed them. A crash between the two publishes
//! again; workers are idempotent on the step's key, so that costs a duplicate, never a loss.

use std::{collections::HashSet, time::Duration};

use lapin::Channel;
use orderflow_activities::broker::{self, Outgoing, Topology};
use orderflow_telemetry as telemetry;
use sqlx::PgPool;
use tracing::Span;

use crate::{
    metrics,
    store::outbox::{self, OutboxRow},
};

/// Why one relay round failed; the runtime reconnects and tries again.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    #[error(transparent)]
    Publish(#[from] broker::PublishError),
}

/// Publishes up to `limit` rows; returns how many went out. `declared` remembers the queues and
/// exchanges this channel's connection has declared.
///
/// The rows are deleted in the same transaction that took them, and that transaction commits
/// only once every publish of the batch is confirmed: if anything fails before, the rollback
/// leaves them in the outbox for the next round (DESIGN.md §3.2).
pub async fn relay_once(
    pool: &PgPool,
    channel: &Channel,
    topology: &Topology,
    declared: &mut HashSet<String>,
    limit: i64,
) -> Result<usize, RelayError> {
    let mut tx = pool.begin().await?;
    let rows = outbox::take(&mut tx, limit).await?;
    if rows.is_empty() {
        return Ok(0);
    }
    // Publishing to a queue that does not exist would drop the message, so every target is
    // declared before its first use on this connection.
    for r in &rows {
        let target = if r.exchange.is_empty() {
            &r.queue
        } else {
            &r.exchange
        };
        if declared.contains(target) {
            continue;
        }
        if *target == topology.events_exchange() {
            topology.declare_events(channel).await?;
        } else {
            topology.declare_queue(channel, target).await?;
        }
        declared.insert(target.clone());
    }
    // One span per task, from taking its row to the broker's confirm; the message carries its
    // context, so the worker's span is its child.
    let spans: Vec<Option<Span>> = rows.iter().map(publish_span).collect();
    let traceparents: Vec<Option<String>> = rows
        .iter()
        .zip(&spans)
        .map(|(r, span)| match span {
            Some(span) => telemetry::traceparent_of(span, r.traceparent.as_deref()),
            None => r.traceparent.clone(),
        })
        .collect();
    let msgs: Vec<Outgoing<'_>> = rows
        .iter()
        .zip(&traceparents)
        .map(|(r, traceparent)| Outgoing {
            exchange: &r.exchange,
            queue: &r.queue,
            body: r.body.as_bytes(),
            message_id: r.task_id.to_string(),
            traceparent: traceparent.as_deref(),
        })
        .collect();
    // Bounded: a broker that stops confirming must not hold the rows' locks forever.
    tokio::time::timeout(
        Duration::from_secs(30),
        broker::publish_confirmed(channel, &msgs),
    )
    .await
    .map_err(|_| broker::PublishError::Nacked("confirm timed out".into()))??;
    tx.commit().await?;
    drop(spans);
    metrics::TASKS_PUBLISHED.inc_by(rows.len() as u64);
    metrics::BATCH_SIZE
        .with_label_values(&["relay"])
        .observe(rows.len() as f64);
    Ok(rows.len())
}

/// The publish span of a task row, a child of its saga's root; `None` for rows outside any saga
/// (workflow lifecycle events).
fn publish_span(row: &OutboxRow) -> Option<Span> {
    let root = telemetry::parse_traceparent(row.traceparent.as_deref()?)?;
    let workflow_id = telemetry::workflow_of(&root);
    let span = tracing::info_span!(
        "task.publish",
        otel.kind = "producer",
        workflow_id = %workflow_id,
        task_id = %row.task_id,
        queue = %row.queue,
    );
    telemetry::set_parent(&span, row.traceparent.as_deref(), workflow_id);
    Some(span)
}
