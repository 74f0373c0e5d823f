//! The long-running parts of a service process (its HTTP server, activity workers, event
//! followers, sweepers) run as one: until `stop`, or until one part fails, whereupon the rest are
//! stopped too and the first failure is the process's outcome.

use std::future::Future;

use anyhow::Context as _;
use orderflow_activities::worker::Worker;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// A service's parts, supervised together.
///
/// ```no_run
/// # async fn demo(stop: tokio_util::sync::CancellationToken) -> anyhow::Result<()> {
/// let mut parts = orderflow_service_kit::parts::Parts::new("inventory", &stop);
/// let stop = parts.stop();
/// parts.spawn(async move {
///     stop.cancelled().await;
///     Ok(())
/// });
/// parts.join().await
/// # }
/// ```
#[derive(Debug)]
pub struct Parts {
    service: &'static str,
    stop: CancellationToken,
    tasks: JoinSet<anyhow::Result<()>>,
}

impl Parts {
    /// Parts that stop when `stop` is cancelled (and, unlike `stop`'s other children, when one
    /// of them fails).
    pub fn new(service: &'static str, stop: &CancellationToken) -> Self {
        Self {
            service,
            stop: stop.child_token(),
            tasks: JoinSet::new(),
        }
    }

    /// The token every part must watch: cancelled at the outer stop or when a part ends.
    pub fn stop(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Runs one part.
    pub fn spawn(&mut self, part: impl Future<Output = anyhow::Result<()>> + Send + 'static) {
        self.tasks.spawn(part);
    }

    /// Runs a part that cannot fail (it logs its own errors and retries).
    pub fn spawn_infallible(&mut self, part: impl Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(async move {
            part.await;
            Ok(())
        });
    }

    /// Runs the service's activity workers until the parts stop.
    pub fn spawn_worker(&mut self, worker: Worker) {
        let (stop, service) = (self.stop(), self.service);
        self.tasks.spawn(async move {
            worker
                .run(stop.cancelled_owned())
                .await
                .with_context(|| format!("{service} worker"))
        });
    }

    /// Waits for every part. The first to end (normally all end together at `stop`) stops the
    /// rest; the first failure, or panic, is returned.
    pub async fn join(mut self) -> anyhow::Result<()> {
        let mut outcome = Ok(());
        while let Some(done) = self.tasks.join_next().await {
            self.stop.cancel();
            let result = done
                .with_context(|| format!("a {} part panicked", self.service))
                .and_then(|r| r);
            if let Err(e) = result {
                tracing::error!(
                    service = self.service,
                    error = format!("{e:#}"),
                    "a service part failed; stopping"
                );
                if outcome.is_ok() {
                    outcome = Err(e);
                }
            }
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failing_part_stops_the_others_and_is_the_outcome() {
        let outer = CancellationToken::new();
        let mut parts = Parts::new("test", &outer);
        let stop = parts.stop();
        parts.spawn(async move {
            stop.cancelled().await;
            Ok(())
        });
        parts.spawn(async { anyhow::bail!("broken") });
        let err = parts.join().await.unwrap_err();
        assert_eq!(err.to_string(), "broken");
        assert!(
            !outer.is_cancelled(),
            "the caller's token is not ours to cancel"
        );
    }

    #[tokio::test]
    async fn the_outer_stop_ends_every_part_cleanly() {
        let outer = CancellationToken::new();
        let mut parts = Parts::new("test", &outer);
        for _ in 0..3 {
            let stop = parts.stop();
            parts.spawn_infallible(async move { stop.cancelled().await });
        }
        outer.cancel();
        parts.join().await.unwrap();
    }
}
