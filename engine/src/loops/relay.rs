//! The outbox relay: publishes what the committer committed but did not get out (the engine died
//! between its commit and the publish, the broker was away), and deletes the rows in the
//! transaction that commits only once the queue took every message. A crash between the two
//! publishes again; workers are idempotent on the step's key, so that costs a duplicate, never a
//! loss (DESIGN.md §3.2).
//!
//! The committer publishes its batch's messages itself within milliseconds and deletes their rows
//! in its next batch, so the relay leaves rows younger than [`LEFT_BEHIND`] to it; its first round
//! takes every row committed before this process's committer started, which is how a restarted engine
//! resumes what an earlier process had not sent.

use std::time::Duration;

use chrono::{DateTime, Utc};
use orderflow_queue::{Outgoing, TaskQueue};
use orderflow_telemetry as telemetry;
use tokio_util::sync::CancellationToken;
use tracing::Span;

use super::LoopError;
use crate::{
    Engine,
    apply::now,
    metrics,
    store::{OutboxRow, Store, StoreTx},
};

/// An outbox row this old was left behind: its committer would have published and deleted it.
pub const LEFT_BEHIND: Duration = Duration::from_secs(10);

impl<S: Store, Q: TaskQueue> Engine<S, Q> {
    /// Publishes up to `relay_batch` outbox rows committed before `before`; returns how many
    /// went out. The rows are deleted in the transaction that took them (skipping rows another
    /// relay holds), which commits only after the queue confirmed every message of the batch.
    pub async fn relay_once(&self, before: DateTime<Utc>) -> Result<usize, LoopError> {
        let mut tx = self.store.begin().await?;
        let rows = tx.take_outbox(self.config.relay_batch, before).await?;
        if rows.is_empty() {
            return Ok(0);
        }
        // One span per task, from taking its row to the queue's confirm; the message carries
        // its context, so the worker's span is its child.
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
                transient: false,
            })
            .collect();
        // The adapter bounds the wait for confirms, so a queue that stops confirming cannot
        // hold the rows' locks for ever.
        self.queue.publish(&msgs).await?;
        self.store.commit(tx).await?;
        drop(spans);
        metrics::TASKS_PUBLISHED.inc_by(rows.len() as u64);
        metrics::BATCH_SIZE
            .with_label_values(&["relay"])
            .observe(rows.len() as f64);
        Ok(rows.len())
    }

    /// Relays until `stop`: what earlier processes left at first, then rows left behind, every
    /// poll interval.
    pub(crate) async fn relay_loop(&self, stop: &CancellationToken) -> Result<(), LoopError> {
        while self.relay_once(self.started).await? as i64 >= self.config.relay_batch {}
        let left_behind = chrono::Duration::from_std(LEFT_BEHIND).unwrap_or_default();
        loop {
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                () = tokio::time::sleep(self.config.poll_fallback) => {}
            }
            let before = now() - left_behind;
            while self.relay_once(before).await? as i64 >= self.config.relay_batch {}
        }
    }
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
