//! [`TaskQueue`] on RabbitMQ.
//!
//! - **Topology**: durable queues, each dead-lettering what is rejected to `orderflow.dead`
//!   through the default exchange; a durable topic exchange for workflow events. Queues are
//!   declared lazily, before the first publish to them on a connection (publishing to a queue
//!   that does not exist would drop the message).
//! - **Publishing**: persistent messages on one confirm channel, pipelined: every message of a
//!   batch is sent, then every confirm awaited, bounded by [`CONFIRM_TIMEOUT`].
//! - **Consuming**: a channel per consumer with its prefetch as `basic.qos`. A delivery keeps its
//!   channel open until it is settled, so a consumer that is dropped or cancelled never strands
//!   the acks of work still in flight. A batch is acked with one multiple-ack when it is
//!   everything its channel has unsettled up to its newest delivery.
//! - **Connection**: one per [`RabbitQueue`] and its clones, made on first use and made again
//!   whenever the broker went away (a restart, a network cut). Consumers on a lost connection end
//!   with an error and their owners consume again; their unsettled deliveries are redelivered by
//!   the broker.

use std::{
    collections::{BTreeSet, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use backon::{ExponentialBuilder, Retryable};
use chrono::{DateTime, Utc};
use futures::{FutureExt, StreamExt};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
    options::{
        BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
        BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
        QueueBindOptions, QueueDeclareOptions,
    },
    types::{AMQPValue, FieldTable, LongString, ShortString},
};

use crate::{
    Consumer, Delivery, Outgoing, QueueError, QueueStats, TRACEPARENT, TaskQueue, Topology,
};

/// How long a batch of publishes may wait for its confirms before the connection counts as
/// broken.
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

/// Header with the instant a message was published, in milliseconds since the epoch: workers
/// measure a task's schedule-to-start latency from it. (AMQP's own `timestamp` property has
/// whole seconds only.)
pub const PUBLISHED_AT: &str = "x-published-at";

/// Connects on tokio, retrying with capped exponential backoff for up to `patience`.
pub async fn connect(url: &str, patience: Duration) -> Result<Connection, lapin::Error> {
    let attempt = || async { Connection::connect(url, ConnectionProperties::default()).await };
    let policy = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(2))
        .with_total_delay(Some(patience))
        .without_max_times();
    attempt
        .retry(policy)
        .notify(|e, d| tracing::warn!(error = %e, retry_in = ?d, "cannot reach RabbitMQ"))
        .await
}

/// Declares `queue` durable, dead-lettering to the topology's dead-letter queue (declared too);
/// the dead-letter queue itself is declared without. The answer counts its ready messages and
/// consumers.
pub async fn declare_queue(
    channel: &Channel,
    topology: &Topology,
    queue: &str,
) -> Result<lapin::Queue, lapin::Error> {
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let dead = topology.dead_letter_queue();
    let dead_letter = channel
        .queue_declare(dead.as_str().into(), durable, FieldTable::default())
        .await?;
    if queue == dead {
        return Ok(dead_letter);
    }
    let mut args = FieldTable::default();
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(LongString::from("")),
    );
    args.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(LongString::from(dead)),
    );
    channel.queue_declare(queue.into(), durable, args).await
}

/// Declares the events exchange (durable topic).
pub async fn declare_events(channel: &Channel, topology: &Topology) -> Result<(), lapin::Error> {
    let opts = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .exchange_declare(
            topology.events_exchange().into(),
            ExchangeKind::Topic,
            opts,
            FieldTable::default(),
        )
        .await
}

/// Publishes every message persistently on `channel` (in confirm mode), pipelined, then waits
/// for every confirm.
pub async fn publish_confirmed(channel: &Channel, msgs: &[Outgoing<'_>]) -> Result<(), QueueError> {
    let now = Utc::now().timestamp_millis();
    let mut pending = Vec::with_capacity(msgs.len());
    for m in msgs {
        let mut headers = FieldTable::default();
        if let Some(tp) = m.traceparent {
            headers.insert(TRACEPARENT.into(), AMQPValue::LongString(tp.into()));
        }
        headers.insert(PUBLISHED_AT.into(), AMQPValue::LongLongInt(now));
        let props = BasicProperties::default()
            .with_delivery_mode(if m.transient { 1 } else { 2 })
            .with_content_type("application/json".into())
            .with_message_id(m.message_id.as_str().into())
            .with_headers(headers);
        let confirm = channel
            .basic_publish(
                m.exchange.into(),
                m.queue.into(),
                BasicPublishOptions::default(),
                m.body,
                props,
            )
            .await?;
        pending.push((m.message_id.as_str(), confirm));
    }
    let confirmed = async {
        for (id, confirm) in pending {
            match confirm.await? {
                Confirmation::Ack(_) => {}
                Confirmation::Nack(_) | Confirmation::NotRequested => {
                    return Err(QueueError::Nacked(id.to_owned()));
                }
            }
        }
        Ok(())
    };
    tokio::time::timeout(CONFIRM_TIMEOUT, confirmed)
        .await
        .map_err(|_| QueueError::ConfirmTimeout(CONFIRM_TIMEOUT))?
}

/// RabbitMQ as a [`TaskQueue`]. Clones share one connection.
#[derive(Clone, Debug)]
pub struct RabbitQueue {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    url: String,
    topology: Topology,
    /// How long making a connection keeps retrying before the operation fails.
    patience: Duration,
    session: tokio::sync::Mutex<Option<Arc<Session>>>,
    /// Sessions made so far.
    sessions: std::sync::atomic::AtomicU64,
}

/// One connection and what was set up on it.
#[derive(Debug)]
struct Session {
    /// Its place in the sequence of sessions (see [`TaskQueue::connection`]).
    generation: u64,
    conn: Connection,
    /// The confirm channel every publish and declare goes through.
    publisher: Channel,
    /// Queues and exchanges declared on this connection.
    declared: Mutex<HashSet<String>>,
}

impl Session {
    fn usable(&self) -> bool {
        self.conn.status().connected() && self.publisher.status().connected()
    }

    fn is_declared(&self, name: &str) -> bool {
        self.declared.lock().expect("not poisoned").contains(name)
    }

    fn mark_declared(&self, name: &str) {
        self.declared
            .lock()
            .expect("not poisoned")
            .insert(name.to_owned());
    }
}

impl Inner {
    /// The current session, or a new one if there is none or the broker dropped it.
    async fn session(&self, patience: Duration) -> Result<Arc<Session>, QueueError> {
        let mut current = self.session.lock().await;
        if let Some(s) = current.as_ref().filter(|s| s.usable()) {
            return Ok(s.clone());
        }
        if let Some(old) = current.take() {
            // A half-broken connection (its publisher channel closed by an error) is closed so
            // the broker hands its unacked deliveries to others at once.
            tokio::spawn(async move { old.conn.close(200, "reconnecting".into()).await });
        }
        let conn = connect(&self.url, patience).await?;
        let publisher = conn.create_channel().await?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let session = Arc::new(Session {
            generation: self
                .sessions
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                + 1,
            conn,
            publisher,
            declared: Mutex::default(),
        });
        *current = Some(session.clone());
        Ok(session)
    }

    async fn declare_on(&self, session: &Session, queue: &str) -> Result<(), QueueError> {
        if !session.is_declared(queue) {
            declare_queue(&session.publisher, &self.topology, queue).await?;
            session.mark_declared(queue);
        }
        Ok(())
    }
}

impl RabbitQueue {
    /// A queue on the broker at `url`; nothing is connected until first use. Each connection
    /// attempt retries for up to `patience` before the operation that needed it fails.
    pub fn new(url: impl Into<String>, topology: Topology, patience: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                url: url.into(),
                topology,
                patience,
                session: tokio::sync::Mutex::default(),
                sessions: Default::default(),
            }),
        }
    }

    /// [`Self::new`], connected now: fails if the broker cannot be reached within `patience`.
    pub async fn connect(
        url: impl Into<String>,
        topology: Topology,
        patience: Duration,
    ) -> Result<Self, QueueError> {
        let queue = Self::new(url, topology, patience);
        queue.inner.session(patience).await?;
        Ok(queue)
    }

    async fn session(&self) -> Result<Arc<Session>, QueueError> {
        self.inner.session(self.inner.patience).await
    }

    /// Closes the connection: the broker returns every unsettled delivery to its queue at once.
    /// The next operation connects again.
    pub async fn close(&self) {
        if let Some(session) = self.inner.session.lock().await.take() {
            let _ = session.conn.close(200, "closing".into()).await;
        }
    }
}

impl TaskQueue for RabbitQueue {
    type Consumer = RabbitConsumer;

    fn topology(&self) -> &Topology {
        &self.inner.topology
    }

    async fn declare(&self, queue: &str) -> Result<(), QueueError> {
        let session = self.session().await?;
        self.inner.declare_on(&session, queue).await
    }

    async fn bind_events(&self, queue: &str, routing_key: &str) -> Result<(), QueueError> {
        let session = self.session().await?;
        let topology = &self.inner.topology;
        declare_events(&session.publisher, topology).await?;
        session.mark_declared(&topology.events_exchange());
        self.inner.declare_on(&session, queue).await?;
        session
            .publisher
            .queue_bind(
                queue.into(),
                topology.events_exchange().into(),
                routing_key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(())
    }

    async fn publish(&self, msgs: &[Outgoing<'_>]) -> Result<(), QueueError> {
        let session = self.session().await?;
        let events = self.inner.topology.events_exchange();
        for m in msgs {
            if m.exchange.is_empty() {
                self.inner.declare_on(&session, m.queue).await?;
            } else if !session.is_declared(m.exchange) {
                if m.exchange == events {
                    declare_events(&session.publisher, &self.inner.topology).await?;
                }
                session.mark_declared(m.exchange);
            }
        }
        let published = publish_confirmed(&session.publisher, msgs).await;
        if matches!(published, Err(QueueError::ConfirmTimeout(_))) {
            // A broker that stops confirming is not trusted with the next batch either.
            let _ = session.publisher.close(200, "no confirms".into()).await;
        }
        published
    }

    async fn consume(&self, queue: &str, prefetch: u16) -> Result<RabbitConsumer, QueueError> {
        let session = self.session().await?;
        self.inner.declare_on(&session, queue).await?;
        let channel = session.conn.create_channel().await?;
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await?;
        let consumer = channel
            .basic_consume(
                queue.into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(RabbitConsumer {
            queue: queue.to_owned(),
            channel: Arc::new(channel),
            consumer,
            unsettled: Arc::default(),
            cancelled: false,
        })
    }

    async fn inspect(&self, queue: &str) -> Result<QueueStats, QueueError> {
        let session = self.session().await?;
        // Declaring (idempotent, with the same arguments) answers with the counts; a passive
        // declare would be refused for a queue nobody declared yet.
        let q = declare_queue(&session.publisher, &self.inner.topology, queue).await?;
        session.mark_declared(queue);
        Ok(QueueStats {
            depth: q.message_count().into(),
            consumers: Some(q.consumer_count()),
        })
    }

    async fn connection(&self) -> Result<u64, QueueError> {
        Ok(self.inner.session(Duration::ZERO).await?.generation)
    }

    async fn reachable(&self) -> Option<bool> {
        let probe = self.inner.session(Duration::ZERO);
        Some(matches!(
            tokio::time::timeout(Duration::from_secs(2), probe).await,
            Ok(Ok(_))
        ))
    }
}

/// The delivery tags a channel has handed out and nobody settled yet.
type Unsettled = Arc<Mutex<BTreeSet<u64>>>;

/// A consumer on its own channel.
#[derive(Debug)]
pub struct RabbitConsumer {
    queue: String,
    channel: Arc<Channel>,
    consumer: lapin::Consumer,
    unsettled: Unsettled,
    cancelled: bool,
}

impl RabbitConsumer {
    fn wrap(&self, delivery: lapin::message::Delivery) -> RabbitDelivery {
        self.unsettled
            .lock()
            .expect("not poisoned")
            .insert(delivery.delivery_tag);
        RabbitDelivery {
            inner: Some(delivery),
            channel: self.channel.clone(),
            unsettled: self.unsettled.clone(),
        }
    }

    fn ended(&self) -> QueueError {
        QueueError::Ended(self.queue.clone())
    }
}

impl Consumer for RabbitConsumer {
    type Delivery = RabbitDelivery;

    async fn next(&mut self) -> Result<RabbitDelivery, QueueError> {
        if self.cancelled {
            return Err(self.ended());
        }
        match self.consumer.next().await {
            Some(delivery) => Ok(self.wrap(delivery?)),
            None => Err(self.ended()),
        }
    }

    async fn next_batch(&mut self, max: usize) -> Result<Vec<RabbitDelivery>, QueueError> {
        let mut batch = vec![self.next().await?];
        // Polling the stream without waiting loses nothing: a delivery not taken now stays
        // buffered for the next poll.
        while batch.len() < max {
            match self.consumer.next().now_or_never() {
                Some(Some(d)) => batch.push(self.wrap(d?)),
                Some(None) => return Err(self.ended()),
                None => break,
            }
        }
        Ok(batch)
    }

    async fn cancel(&mut self) -> Result<(), QueueError> {
        if self.cancelled {
            return Ok(());
        }
        self.cancelled = true;
        self.channel
            .basic_cancel(self.consumer.tag(), BasicCancelOptions::default())
            .await?;
        // After the cancel-ok the stream yields what the broker had pushed ahead, then ends;
        // those go back to the queue for other consumers.
        while let Some(Ok(delivery)) = self.consumer.next().await {
            self.wrap(delivery).nack(true).await?;
        }
        Ok(())
    }
}

/// A RabbitMQ delivery; dropped unsettled, it is nacked back to its queue.
#[derive(Debug)]
pub struct RabbitDelivery {
    /// `None` once settled.
    inner: Option<lapin::message::Delivery>,
    /// Kept open until this delivery is settled.
    channel: Arc<Channel>,
    unsettled: Unsettled,
}

impl RabbitDelivery {
    fn delivery(&self) -> &lapin::message::Delivery {
        self.inner.as_ref().expect("unsettled until consumed")
    }

    /// Takes the delivery out for settling; it is no longer unsettled for the batch rule.
    fn settle(mut self) -> lapin::message::Delivery {
        let d = self.inner.take().expect("settled once");
        self.unsettled
            .lock()
            .expect("not poisoned")
            .remove(&d.delivery_tag);
        d
    }

    fn header(&self, name: &str) -> Option<&AMQPValue> {
        self.delivery()
            .properties
            .headers()
            .as_ref()?
            .inner()
            .get(&ShortString::from(name))
    }
}

impl Drop for RabbitDelivery {
    fn drop(&mut self) {
        let Some(d) = self.inner.take() else { return };
        self.unsettled
            .lock()
            .expect("not poisoned")
            .remove(&d.delivery_tag);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let channel = self.channel.clone();
            rt.spawn(async move {
                let requeue = BasicNackOptions {
                    requeue: true,
                    multiple: false,
                };
                let _ = d.acker.nack(requeue).await;
                drop(channel);
            });
        }
    }
}

impl Delivery for RabbitDelivery {
    fn body(&self) -> &[u8] {
        &self.delivery().data
    }

    fn redelivered(&self) -> bool {
        self.delivery().redelivered
    }

    fn traceparent(&self) -> Option<String> {
        match self.header(TRACEPARENT)? {
            AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
            _ => None,
        }
    }

    fn published_at(&self) -> Option<DateTime<Utc>> {
        match self.header(PUBLISHED_AT)? {
            AMQPValue::LongLongInt(ms) => DateTime::from_timestamp_millis(*ms),
            _ => None,
        }
    }

    async fn ack(self) -> Result<(), QueueError> {
        self.settle().acker.ack(BasicAckOptions::default()).await?;
        Ok(())
    }

    async fn ack_all(mut batch: Vec<Self>) -> Result<(), QueueError> {
        batch.sort_unstable_by_key(|d| d.delivery().delivery_tag);
        let Some(last) = batch.last() else {
            return Ok(());
        };
        let one_channel = batch
            .iter()
            .all(|d| Arc::ptr_eq(&d.unsettled, &last.unsettled));
        let covers_all = one_channel && {
            let newest = last.delivery().delivery_tag;
            let unsettled = last.unsettled.lock().expect("not poisoned");
            // Every unsettled tag up to the newest is in the batch (both are sorted).
            unsettled
                .range(..=newest)
                .eq(batch.iter().map(|d| &d.delivery().delivery_tag))
        };
        if !covers_all {
            for d in batch {
                d.ack().await?;
            }
            return Ok(());
        }
        let last = batch.pop().expect("not empty").settle();
        for d in batch {
            // Covered by the multiple-ack below.
            d.settle();
        }
        last.acker.ack(BasicAckOptions { multiple: true }).await?;
        Ok(())
    }

    async fn nack(self, requeue: bool) -> Result<(), QueueError> {
        let opts = BasicNackOptions {
            requeue,
            multiple: false,
        };
        self.settle().acker.nack(opts).await?;
        Ok(())
    }
}
