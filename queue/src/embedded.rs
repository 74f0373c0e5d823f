//! [`TaskQueue`] in this process, durable in SQLite (`<data-dir>/queue.db`): the queue of
//! `orderflow dev`.
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

use chrono::{DateTime, Utc};
use sqlx::{QueryBuilder, Row, SqlitePool, migrate::Migrator};
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore, watch},
    task::JoinHandle,
};
use uuid::Uuid;

use crate::{
    Consumer, Delivery, Outgoing, QueueError, QueueStats, TaskQueue, Topology, sqlite_pool,
};

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
    /// Live consumers by queue; each holds a clone of its queue's counter.
    consumers: Mutex<HashMap<String, Arc<()>>>,
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
                consumers: Mutex::default(),
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

    fn topology(&self) -> &Topology {
        &self.inner.topology
    }

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
        let now = Utc::now().timestamp_micros();
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
                    "insert into messages (queue, message_id, body, traceparent, published_at)
                     values (?, ?, ?, ?, ?)",
                )
                .bind(&queue)
                .bind(&m.message_id)
                .bind(m.body)
                .bind(m.traceparent)
                .bind(now)
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
        let live = self
            .inner
            .consumers
            .lock()
            .expect("not poisoned")
            .entry(queue.to_owned())
            .or_default()
            .clone();
        Ok(EmbeddedConsumer {
            queue: queue.to_owned(),
            inner: self.inner.clone(),
            permits: Arc::new(Semaphore::new(usize::from(prefetch.max(1)))),
            woken: self.inner.waker(queue).subscribe(),
            live: Some(live),
            pending: None,
        })
    }

    async fn inspect(&self, queue: &str) -> Result<QueueStats, QueueError> {
        // Ready: not leased, or leased by a process that is gone (it will be redelivered).
        let depth: i64 = sqlx::query_scalar(
            "select count(*) from messages where queue = ? and (lease is null or lease != ?)",
        )
        .bind(queue)
        .bind(self.inner.epoch)
        .fetch_one(&self.inner.pool)
        .await?;
        let consumers = self
            .inner
            .consumers
            .lock()
            .expect("not poisoned")
            .get(queue)
            .map_or(0, |live| Arc::strong_count(live) - 1);
        Ok(QueueStats {
            depth: depth.max(0) as u64,
            consumers: Some(u32::try_from(consumers).unwrap_or(u32::MAX)),
        })
    }

    async fn reachable(&self) -> Option<bool> {
        None
    }
}

/// Takes the oldest message of one queue that no live delivery holds.
#[derive(Debug)]
pub struct EmbeddedConsumer {
    queue: String,
    inner: Arc<Inner>,
    permits: Arc<Semaphore>,
    woken: watch::Receiver<u64>,
    /// Counts this consumer among the queue's live ones; `None` once cancelled.
    live: Option<Arc<()>>,
    /// A lease running or done whose rows were not handed out yet.
    pending: Option<JoinHandle<Lease>>,
}

impl Drop for EmbeddedConsumer {
    fn drop(&mut self) {
        // Rows leased for a caller that stopped waiting go back to the queue.
        if let (Some(pending), Ok(rt)) =
            (self.pending.take(), tokio::runtime::Handle::try_current())
        {
            let (inner, queue) = (self.inner.clone(), std::mem::take(&mut self.queue));
            rt.spawn(async move {
                if let Ok((Ok(rows), _permits)) = pending.await {
                    for r in rows {
                        if let Err(e) = inner.release(r.id, &queue, true).await {
                            tracing::warn!(error = %e, "returning a leased message");
                        }
                    }
                }
            });
        }
    }
}

/// What one lease statement took, and the prefetch permits held for it.
type Lease = (Result<Vec<Leased>, sqlx::Error>, Vec<OwnedSemaphorePermit>);

/// A message leased for a delivery.
#[derive(Debug)]
struct Leased {
    id: i64,
    body: Vec<u8>,
    traceparent: Option<String>,
    redelivered: bool,
    published_at: Option<DateTime<Utc>>,
}

/// Leases the oldest `n` messages of `queue` that no live delivery holds, oldest first. A row
/// leased by another epoch belongs to a process that is gone: it is a redelivery.
async fn lease(inner: &Inner, queue: &str, n: usize) -> Result<Vec<Leased>, sqlx::Error> {
    let rows = sqlx::query(
        "update messages set lease = ?1, redelivered = redelivered or lease is not null
         where id in (select id from messages
                      where queue = ?2 and (lease is null or lease != ?1)
                      order by id limit ?3)
         returning id, body, traceparent, redelivered, published_at",
    )
    .bind(inner.epoch)
    .bind(queue)
    .bind(n as i64)
    .fetch_all(&inner.pool)
    .await?;
    let mut leased = rows
        .iter()
        .map(|r| {
            Ok(Leased {
                id: r.try_get("id")?,
                body: r.try_get("body")?,
                traceparent: r.try_get("traceparent")?,
                redelivered: r.try_get("redelivered")?,
                published_at: r
                    .try_get::<Option<i64>, _>("published_at")?
                    .and_then(DateTime::from_timestamp_micros),
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    leased.sort_unstable_by_key(|r| r.id);
    Ok(leased)
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
    /// Leases up to `max` messages (and no more than the prefetch allows) in one statement.
    /// The statement runs in a task of its own that this consumer keeps until it has handed its
    /// rows out, so a caller that stops waiting (a `select!` taking another branch) loses none:
    /// the next call hands them out.
    async fn next_batch(&mut self, max: usize) -> Result<Vec<EmbeddedDelivery>, QueueError> {
        if self.live.is_none() {
            return Err(QueueError::Ended(self.queue.clone()));
        }
        loop {
            if self.pending.is_none() {
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
                // Seen before looking, so a publish between the look and the wait still wakes us.
                self.woken.borrow_and_update();
                let (inner, queue) = (self.inner.clone(), self.queue.clone());
                self.pending = Some(tokio::spawn(async move {
                    let rows = lease(&inner, &queue, permits.len()).await;
                    (rows, permits)
                }));
            }
            let pending = self.pending.as_mut().expect("set just above");
            let joined = pending.await;
            self.pending = None;
            let (rows, permits) = joined.map_err(|e| QueueError::Ended(e.to_string()))?;
            let rows = rows?;
            if !rows.is_empty() {
                return Ok(rows
                    .into_iter()
                    .zip(permits)
                    .map(|(r, permit)| EmbeddedDelivery {
                        id: r.id,
                        body: r.body,
                        traceparent: r.traceparent,
                        redelivered: r.redelivered,
                        published_at: r.published_at,
                        queue: self.queue.clone(),
                        inner: Some(self.inner.clone()),
                        _permit: permit,
                    })
                    .collect());
            }
            drop(permits);
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

    /// Takes nothing more: an embedded consumer leases only what it hands out, so nothing was
    /// pushed ahead to give back.
    async fn cancel(&mut self) -> Result<(), QueueError> {
        self.live = None;
        Ok(())
    }
}

/// A leased message; dropped unsettled, it goes back to its queue.
#[derive(Debug)]
pub struct EmbeddedDelivery {
    id: i64,
    body: Vec<u8>,
    traceparent: Option<String>,
    redelivered: bool,
    published_at: Option<DateTime<Utc>>,
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

    fn published_at(&self) -> Option<DateTime<Utc>> {
        self.published_at
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

    async fn ack_all(mut batch: Vec<Self>) -> Result<(), QueueError> {
        let Some(inner) = batch.first_mut().and_then(|d| d.inner.clone()) else {
            return Ok(());
        };
        let mut q = QueryBuilder::new("delete from messages where lease = ");
        q.push_bind(inner.epoch).push(" and id in (");
        let mut ids = q.separated(", ");
        for d in &mut batch {
            d.inner = None;
            ids.push_bind(d.id);
        }
        q.push(")");
        q.build().execute(&inner.pool).await?;
        Ok(())
    }

    async fn nack(mut self, requeue: bool) -> Result<(), QueueError> {
        let inner = self.inner.take().expect("settled once");
        inner.release(self.id, &self.queue, requeue).await
    }
}
