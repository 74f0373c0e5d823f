//! The engine's loops, each an `impl` block of [`crate::Engine`] over any store and queue:
//!
//! - [`intake`]: hands workers' results to the committer in batches, acking each batch after its
//!   commit.
//! - [`timers`]: hands due durable timers to the committer as events.
//! - [`relay`]: publishes outbox rows the committer did not (an engine died after its commit, the
//!   broker was away), deleting them in the transaction that commits once the queue took them.
//! - [`backlog`]: samples the gauges that workers are scaled on and alerts watch.
//!
//! [`supervise`] runs a loop again after each failure with capped backoff.

pub mod backlog;
pub mod intake;
pub mod relay;
pub mod timers;

use std::{future::Future, time::Duration};

use orderflow_queue::QueueError;
use tokio_util::sync::CancellationToken;

use crate::apply::ApplyError;

/// Why one round of a loop failed; the loop backs off and starts again.
#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    #[error("store: {0}")]
    Store(#[from] sqlx::Error),
    #[error("applying: {0}")]
    Apply(#[from] ApplyError),
    #[error("queue: {0}")]
    Queue(#[from] QueueError),
    #[error("a batch of results could not be applied: {0}")]
    Panicked(String),
}

/// Runs `body` again after each failure, with capped backoff, until `stop`. The loops watch
/// `stop` themselves, so each ends its round cleanly (the intake acks what it committed).
pub(crate) async fn supervise<F, Fut>(name: &str, stop: &CancellationToken, body: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<(), LoopError>>,
{
    let mut delay = Duration::from_millis(100);
    while !stop.is_cancelled() {
        match body().await {
            Ok(()) => return,
            Err(e) => {
                tracing::error!(loop_name = name, error = %e, retry_in = ?delay, "engine loop failed");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}
