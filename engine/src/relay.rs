//! The outbox relay: publishes committed tasks to RabbitMQ (persistent, pipelined confirms) and
//! deletes their rows only after the broker confirmed them. A crash between the two publishes
//! again; workers are idempotent on the step's key, so that costs a duplicate, never a loss.

use std::time::Duration;

use lapin::Channel;
use orderflow_activities::broker::{self, Outgoing};
use sqlx::PgPool;

use crate::{metrics, store::outbox};

/// Why one relay round failed; the runtime reconnects and tries again.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Publish(#[from] broker::PublishError),
}

/// Publishes up to `limit` rows; returns how many went out.
pub async fn relay_once(pool: &PgPool, channel: &Channel, limit: i64) -> Result<usize, RelayError> {
    let mut tx = pool.begin().await?;
    let rows = outbox::claim(&mut tx, limit).await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let bodies: Vec<Vec<u8>> = rows
        .iter()
        .map(|r| r.body.to_string().into_bytes())
        .collect();
    let msgs: Vec<Outgoing<'_>> = rows
        .iter()
        .zip(&bodies)
        .map(|(r, body)| Outgoing {
            exchange: &r.exchange,
            queue: &r.queue,
            body,
            message_id: r.task_id.to_string(),
            traceparent: r.body.get("traceparent").and_then(|v| v.as_str()),
        })
        .collect();
    // Bounded: a broker that stops confirming must not hold the rows' locks forever.
    tokio::time::timeout(
        Duration::from_secs(30),
        broker::publish_confirmed(channel, &msgs),
    )
    .await
    .map_err(|_| broker::PublishError::Nacked("confirm timed out".into()))??;
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    outbox::delete(&mut tx, &ids).await?;
    tx.commit().await?;
    metrics::TASKS_PUBLISHED.inc_by(rows.len() as u64);
    metrics::BATCH_SIZE
        .with_label_values(&["relay"])
        .observe(rows.len() as f64);
    Ok(rows.len())
}
