//! Retention: finished workflows older than their type's policy are archived, then deleted with
//! their history and timers, in small batches. Running, compensating and `needs_attention`
//! workflows are never touched.
//!
//! - [`policy`]: how long each workflow type is kept (days, or `forever`).
//! - [`archive`]: the object store the batches are written to, and the object format
//!   (gzip-compressed JSON lines of final row + history, the replay format).
//! - [`metrics`]: what retention did and how far behind its policy it is.
//! - The database side is [`crate::store::retention::RetentionStore`].
//!
//! One batch: claim (one short transaction), read, write the object, delete (one short
//! transaction, guarded by each workflow's history sequence). A crash between the steps leaves
//! a pending batch that the next round writes again under the same key and then deletes, so
//! nothing is lost and nothing lands in two objects. A workflow that moved between the read and
//! the delete (a late result recorded as ignored) makes the delete refuse; the batch is written
//! again with its newest history.
//!
//! [`Retention::run`] is started next to the engine's loops by whoever assembles the engine
//! (`orderflow up`, `orderflow engine`, `orderflow dev`); it shares nothing with them but the
//! database, and pauses between batches so the hot path keeps the database.

pub mod archive;
pub mod metrics;
pub mod policy;

use std::{collections::HashMap, time::Duration};

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

pub use archive::{Archive, ArchiveError, Record};
pub use policy::{Keep, Policy};

use crate::store::retention::{Batch, RetentionStore};

/// Why a retention round stopped; the next round starts over (pending batches first).
#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    #[error("store: {0}")]
    Store(#[from] sqlx::Error),
    #[error("archive: {0}")]
    Archive(#[from] ArchiveError),
    /// The batch's workflows kept moving while it was written; it stays pending.
    #[error("batch {0}: its workflows kept changing while they were archived")]
    Unsettled(i64),
}

/// How retention paces itself.
#[derive(Debug, Clone)]
pub struct RetentionConfig {
    /// Most workflows per batch (one object, one delete transaction).
    pub batch: i64,
    /// Pause between batches: what keeps a large purge from crowding out the hot path.
    pub pause: Duration,
    /// Pause between rounds once nothing is due.
    pub interval: Duration,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            batch: 500,
            pause: Duration::from_millis(50),
            interval: Duration::from_secs(60),
        }
    }
}

/// What one round did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Round {
    /// Workflows archived and deleted.
    pub archived: u64,
    /// Batches written (pending ones included).
    pub batches: u64,
    /// How far past its policy the oldest finished workflow left is.
    pub lag: Duration,
}

/// Archives and deletes what the policy says is due, on store `S`.
#[derive(Debug, Clone)]
pub struct Retention<S> {
    store: S,
    archive: Archive,
    policy: Policy,
    config: RetentionConfig,
}

impl<S: RetentionStore> Retention<S> {
    pub fn new(store: S, archive: Archive, policy: Policy, config: RetentionConfig) -> Self {
        metrics::declare();
        Self {
            store,
            archive,
            policy,
            config,
        }
    }

    /// Rounds until `stop`; a failed round is logged and counted, and the next one retries.
    pub async fn run(self, stop: CancellationToken) {
        tracing::info!(archive = self.archive.url(), policy = ?self.policy, "retention started");
        while !stop.is_cancelled() {
            match self.round(Utc::now(), &stop).await {
                Ok(r) if r.archived > 0 => {
                    tracing::info!(archived = r.archived, batches = r.batches, lag = ?r.lag, "retention round")
                }
                Ok(_) => {}
                Err(e) => {
                    metrics::ERRORS.inc();
                    tracing::error!(error = %e, "retention round failed");
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(self.config.interval) => {}
            }
        }
    }

    /// One round at `now`: pending batches first, then every selection of the policy until
    /// nothing of it is due (or `stop`), then the lag.
    pub async fn round(
        &self,
        now: DateTime<Utc>,
        stop: &CancellationToken,
    ) -> Result<Round, RetentionError> {
        let mut round = Round::default();
        for batch in self.store.pending().await? {
            round.archived += self.archive_batch(&batch).await?;
            round.batches += 1;
        }
        let selections = self.policy.selections(now);
        for (_, sel) in &selections {
            while !stop.is_cancelled() {
                let Some(batch) = self.store.claim(sel, self.config.batch).await? else {
                    break;
                };
                let full = batch.ids.len() as i64 >= self.config.batch;
                round.archived += self.archive_batch(&batch).await?;
                round.batches += 1;
                if !full {
                    break;
                }
                tokio::time::sleep(self.config.pause).await;
            }
        }
        let mut lag = Duration::ZERO;
        for (_, sel) in &selections {
            if let Some(at) = self.store.oldest_due(sel).await? {
                lag = lag.max((sel.finished_before - at).to_std().unwrap_or_default());
            }
        }
        metrics::LAG.set(lag.as_secs_f64());
        round.lag = lag;
        Ok(round)
    }

    /// Writes a claimed batch's object and deletes its workflows; answers how many.
    async fn archive_batch(&self, batch: &Batch) -> Result<u64, RetentionError> {
        for _ in 0..3 {
            let rows = self.store.read(&batch.ids).await?;
            let written: Vec<(uuid::Uuid, i64)> =
                rows.iter().map(|(r, _)| (r.id, r.last_seq)).collect();
            let records: Vec<Record> = rows.into_iter().map(|(r, h)| Record::new(r, h)).collect();
            let mut by_type: HashMap<String, u64> = HashMap::new();
            for r in &records {
                *by_type.entry(r.workflow.workflow_type.clone()).or_default() += 1;
            }
            // The object first: the rows go only once it is stored.
            self.archive
                .put(&batch.object_key, archive::encode(&records))
                .await?;
            for (t, n) in &by_type {
                metrics::ARCHIVED.with_label_values(&[t]).inc_by(*n);
            }
            if self.store.finish(batch.id, &written).await? {
                for (t, n) in &by_type {
                    metrics::DELETED.with_label_values(&[t]).inc_by(*n);
                }
                return Ok(written.len() as u64);
            }
        }
        Err(RetentionError::Unsettled(batch.id))
    }
}
