//! The outbox relay: publishes committed tasks and events to the queue and deletes their rows
//! in the transaction that commits only once the queue took every message. A crash between the
//! two publishes again; workers are idempotent on the step's key, so that costs a duplicate,
//! never a loss (DESIGN.md §3.2).

use orderflow_queue::{Outgoing, TaskQueue};
use orderflow_telemetry as telemetry;
use tracing::Span;

use super::LoopError;
use crate::{
    Engine, metrics,
    store::{Listener, OutboxRow, Store, StoreTx, Wakeup},
};

impl<S: Store, Q: TaskQueue> Engine<S, Q> {
    /// Publishes up to `relay_batch` outbox rows; returns how many went out.
    ///
    /// The rows are deleted in the transaction that took them (skipping rows another relay
    /// holds), and it commits only after the queue confirmed every message of the batch: if
    /// anything fails before, the rollback leaves them for the next round.
    pub async fn relay_once(&self) -> Result<usize, LoopError> {
        let mut tx = self.store.begin().await?;
        let rows = tx.take_outbox(self.config.relay_batch).await?;
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

    /// Relays until `stop`: a full batch goes straight on, otherwise it waits for a commit that
    /// wrote outbox rows to wake it, or for the fallback poll.
    pub(crate) async fn relay_loop(
        &self,
        stop: &tokio_util::sync::CancellationToken,
    ) -> Result<(), LoopError> {
        let mut listener = self.store.listen(Wakeup::Outbox).await?;
        loop {
            let n = self.relay_once().await?;
            if n as i64 >= self.config.relay_batch {
                continue;
            }
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                r = listener.recv() => r?,
                () = tokio::time::sleep(self.config.poll_fallback) => {}
            }
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
