//! The in-process task queue of `orderflow dev`, durable in SQLite (`<data-dir>/queue.db`).
//!
//! A message is a row from publish until ack, so a publish is "confirmed" once its insert
//! commits. A delivery leases its row with this process's epoch (random per open); acking deletes
//! the row; a nack, or a delivery dropped unsettled, clears the lease. A process that dies leaves
//! its leases behind with an epoch nobody holds any more: the next process takes those rows again
//! as redeliveries. Consumers are woken in-process on publish and fall back to polling.

use std::{
    collections::HashMap,
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use sqlx::{Row, SqlitePool, migrate::Migrator};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use uuid::Uuid;

use super::{Consumer, Delivery, Outgoing, QueueError, TaskQueue, sqlite_pool};
use crate::broker::Topology;

/// How long an idle consumer waits before looking again without a wake-up.
const POLL_FALLBACK: Duration = Duration::from_secs(1);

/// The queue's migrations (`migrations/sqlite/queue/`).
pub fn migrator() -> Migrator {
    sqlx::migrate!("../migrations/sqlite/queue")
}

/// A queue store; clones share it.
#[derive(Clone, Debug)]
pub struct EmbeddedQueue {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    pool: SqlitePool,
    topology: Topology,
    /// Marks the leases of this process.
    epoch: i64,
    wakers: Mutex<HashMap<String, watch::Sender<u64>>>,
}

impl Inner {
    fn waker(&self, queue: &str) -> watch::Sender<u64> {
        self.wakers
            .lock()
            .expect("not poisoned")
            .entry(queue.to_owned())
            .or_insert_with(|| watch::Sender::new(0))
            .clone()
    }

    fn wake(&self, queue: &str) {
        self.waker(queue).send_modify(|n| *n += 1);
    }

    /// Returns a delivered message to its queue (`requeue`) or to the dead-letter queue.
    async fn release(&self, id: i64, queue: &str, requeue: bool) -> Result<(), QueueError> {
        let target = if requeue {
            queue.to_owned()
        } else {
            self.topology.dead_letter_queue()
        };
        sqlx::query(
            "update messages set queue = ?, lease = null, redelivered = 1
             where id = ? and lease = ?",
        )
        .bind(&target)
        .bind(id)
        .bind(self.epoch)
        .execute(&self.pool)
        .await?;
        self.wake(&target);
        Ok(())
    }
}

impl EmbeddedQueue {
    /// Opens (creating and migrating) the queue in `file`, or in memory when `None`. Messages
    /// leased by an earlier process are redelivered.
    pub async fn open(
        file: Option<&Path>,
        topology: Topology,
    ) -> Result<Self, sqlx::migrate::MigrateError> {
        let pool = sqlite_pool(file).await?;
        migrator().run(&pool).await?;
        Ok(Self::new(pool, topology))
    }

    /// A queue on an already migrated pool, with a new epoch.
    pub fn new(pool: SqlitePool, topology: Topology) -> Self {
        Self {
            inner: Arc::new(Inner {
                pool,
                topology,
                epoch: Uuid::new_v4().as_u64_pair().0 as i64,
                wakers: Mutex::default(),
            }),
        }
    }

    /// Messages waiting or delivered but not acked in `queue`.
    pub async fn depth(&self, queue: &str) -> Result<i64, QueueError> {
        Ok(
            sqlx::query_scalar("select count(*) from messages where queue = ?")
                .bind(queue)
                .fetch_one(&self.inner.pool)
                .await?,
        )
    }
}

impl TaskQueue for EmbeddedQueue {
    type Consumer = EmbeddedConsumer;

    async fn declare(&self, _queue: &str) -> Result<(), QueueError> {
        // A queue is the rows that name it; nothing to create.
        Ok(())
    }

    async fn bind_events(&self, queue: &str, routing_key: &str) -> Result<(), QueueError> {
        sqlx::query(
            "insert into bindings (exchange, routing_key, queue) values (?, ?, ?)
             on conflict do nothing",
        )
        .bind(self.inner.topology.events_exchange())
        .bind(routing_key)
        .bind(queue)
        .execute(&self.inner.pool)
        .await?;
        Ok(())
    }

    async fn publish(&self, msgs: &[Outgoing<'_>]) -> Result<(), QueueError> {
        let mut tx = self.inner.pool.begin_with("BEGIN IMMEDIATE").await?;
        let mut targets = Vec::new();
        for m in msgs {
            let queues: Vec<String> = if m.exchange.is_empty() {
                vec![m.queue.to_owned()]
            } else {
                // Like a RabbitMQ exchange: routed to every bound queue, dropped if none.
                sqlx::query_scalar(
                    "select queue from bindings where exchange = ? and routing_key = ?",
                )
                .bind(m.exchange)
                .bind(m.queue)
                .fetch_all(&mut *tx)
                .await?
            };
            for queue in queues {
                sqlx::query(
                    "insert into messages (queue, message_id, body, traceparent)
                     values (?, ?, ?, ?)",
                )
                .bind(&queue)
                .bind(&m.message_id)
                .bind(m.body)
                .bind(m.traceparent)
                .execute(&mut *tx)
                .await?;
                targets.push(queue);
            }
        }
        tx.commit().await?;
        targets.sort_unstable();
        targets.dedup();
        for queue in &targets {
            self.inner.wake(queue);
        }
        Ok(())
    }

    async fn consume(&self, queue: &str, prefetch: u16) -> Result<EmbeddedConsumer, QueueError> {
        Ok(EmbeddedConsumer {
            queue: queue.to_owned(),
            inner: self.inner.clone(),
            permits: Arc::new(Semaphore::new(usize::from(prefetch.max(1)))),
            woken: self.inner.waker(queue).subscribe(),
        })
    }
}

/// Takes the oldest message of one queue that no live delivery holds.
#[derive(Debug)]
pub struct EmbeddedConsumer {
    queue: String,
    inner: Arc<Inner>,
    permits: Arc<Semaphore>,
    woken: watch::Receiver<u64>,
}

impl Consumer for EmbeddedConsumer {
    type Delivery = EmbeddedDelivery;

    async fn next(&mut self) -> Result<EmbeddedDelivery, QueueError> {
        let mut batch = self.next_batch(1).await?;
        Ok(batch.pop().expect("a batch has at least one delivery"))
    }

    /// Leases up to `max` messages (and no more than the prefetch allows) in one statement.
    /// Dropped while the statement runs (only when its caller stops), the rows may stay leased
    /// by this process: they are redelivered after the next start.
    async fn next_batch(&mut self, max: usize) -> Result<Vec<EmbeddedDelivery>, QueueError> {
        let first = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let mut permits = vec![first];
        while permits.len() < max {
            match self.permits.clone().try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }
        loop {
            // Seen before looking, so a publish between the look and the wait still wakes us.
            self.woken.borrow_and_update();
            // A row leased by another epoch belongs to a process that is gone: a redelivery.
            let rows = sqlx::query(
                "update messages set lease = ?1, redelivered = redelivered or lease is not null
                 where id in (select id from messages
                              where queue = ?2 and (lease is null or lease != ?1)
                              order by id limit ?3)
                 returning id, body, traceparent, redelivered",
            )
            .bind(self.inner.epoch)
            .bind(&self.queue)
            .bind(permits.len() as i64)
            .fetch_all(&self.inner.pool)
            .await?;
            if !rows.is_empty() {
                let mut batch = rows
                    .iter()
                    .zip(permits)
                    .map(|(r, permit)| {
                        Ok(EmbeddedDelivery {
                            id: r.try_get("id")?,
                            body: r.try_get("body")?,
                            traceparent: r.try_get("traceparent")?,
                            redelivered: r.try_get("redelivered")?,
                            queue: self.queue.clone(),
                            inner: Some(self.inner.clone()),
                            _permit: permit,
                        })
                    })
                    .collect::<Result<Vec<_>, sqlx::Error>>()?;
                batch.sort_unstable_by_key(|d| d.id);
                return Ok(batch);
            }
            tokio::select! {
                changed = self.woken.changed() => {
                    if changed.is_err() {
                        return Err(QueueError::Ended(self.queue.clone()));
                    }
                }
                () = tokio::time::sleep(POLL_FALLBACK) => {}
            }
        }
    }
}

/// A leased message; dropped unsettled, it goes back to its queue.
#[derive(Debug)]
pub struct EmbeddedDelivery {
    id: i64,
    body: Vec<u8>,
    traceparent: Option<String>,
    redelivered: bool,
    queue: String,
    /// `None` once settled.
    inner: Option<Arc<Inner>>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for EmbeddedDelivery {
    fn drop(&mut self) {
        if let (Some(inner), Ok(rt)) = (self.inner.take(), tokio::runtime::Handle::try_current()) {
            let (id, queue) = (self.id, std::mem::take(&mut self.queue));
            rt.spawn(async move {
                if let Err(e) = inner.release(id, &queue, true).await {
                    // The lease stays; the next process redelivers it.
                    tracing::warn!(error = %e, "returning a dropped delivery");
                }
            });
        }
    }
}

impl Delivery for EmbeddedDelivery {
    fn body(&self) -> &[u8] {
        &self.body
    }

    fn redelivered(&self) -> bool {
        self.redelivered
    }

    fn traceparent(&self) -> Option<String> {
        self.traceparent.clone()
    }

    async fn ack(mut self) -> Result<(), QueueError> {
        let inner = self.inner.take().expect("settled once");
        sqlx::query("delete from messages where id = ? and lease = ?")
            .bind(self.id)
            .bind(inner.epoch)
            .execute(&inner.pool)
            .await?;
        Ok(())
    }

    async fn nack(mut self, requeue: bool) -> Result<(), QueueError> {
        let inner = self.inner.take().expect("settled once");
        inner.release(self.id, &self.queue, requeue).await
    }
}
