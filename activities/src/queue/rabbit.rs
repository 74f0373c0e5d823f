//! [`TaskQueue`] on RabbitMQ: durable queues declared with [`Topology`] (dead-lettered),
//! persistent publishes with pipelined confirms ([`broker::publish_confirmed`]), one channel
//! per consumer with its prefetch as `basic.qos`.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::{FutureExt, StreamExt};
use lapin::{
    Channel, Connection,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
        QueueDeclareOptions,
    },
    types::{AMQPValue, FieldTable},
};

use super::{Consumer, Delivery, Outgoing, QueueError, TaskQueue};
use crate::broker::{self, Topology};

/// A connection to RabbitMQ and a confirm channel to publish on.
#[derive(Clone, Debug)]
pub struct RabbitQueue {
    conn: Arc<Connection>,
    publisher: Channel,
    topology: Topology,
    /// Queues and exchanges declared on this connection.
    declared: Arc<Mutex<HashSet<String>>>,
}

impl RabbitQueue {
    /// Connects, retrying for up to `patience`.
    pub async fn connect(
        url: &str,
        topology: Topology,
        patience: Duration,
    ) -> Result<Self, QueueError> {
        let conn = broker::connect(url, patience).await?;
        let publisher = broker::confirm_channel(&conn).await?;
        Ok(Self {
            conn: Arc::new(conn),
            publisher,
            topology,
            declared: Arc::default(),
        })
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

impl TaskQueue for RabbitQueue {
    type Consumer = RabbitConsumer;

    async fn declare(&self, queue: &str) -> Result<(), QueueError> {
        if self.is_declared(queue) {
            return Ok(());
        }
        if queue == self.topology.dead_letter_queue() {
            // Declared as `declare_queue` declares it: without dead-lettering of its own.
            let durable = QueueDeclareOptions {
                durable: true,
                ..Default::default()
            };
            self.publisher
                .queue_declare(queue, durable, FieldTable::default())
                .await?;
        } else {
            self.topology.declare_queue(&self.publisher, queue).await?;
        }
        self.mark_declared(queue);
        Ok(())
    }

    async fn bind_events(&self, queue: &str, routing_key: &str) -> Result<(), QueueError> {
        self.topology
            .bind_events(&self.publisher, queue, routing_key)
            .await?;
        self.mark_declared(queue);
        Ok(())
    }

    async fn publish(&self, msgs: &[Outgoing<'_>]) -> Result<(), QueueError> {
        // A publish to a queue that does not exist would be dropped, so each target is declared
        // before its first use on this connection.
        let events = self.topology.events_exchange();
        for m in msgs {
            if m.exchange.is_empty() {
                self.declare(m.queue).await?;
            } else if !self.is_declared(m.exchange) {
                if m.exchange == events {
                    self.topology.declare_events(&self.publisher).await?;
                }
                self.mark_declared(m.exchange);
            }
        }
        broker::publish_confirmed(&self.publisher, msgs).await?;
        Ok(())
    }

    async fn consume(&self, queue: &str, prefetch: u16) -> Result<RabbitConsumer, QueueError> {
        self.declare(queue).await?;
        let channel = self.conn.create_channel().await?;
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await?;
        let consumer = channel
            .basic_consume(
                queue,
                "",
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(RabbitConsumer {
            queue: queue.to_owned(),
            channel,
            consumer,
        })
    }
}

/// A consumer on its own channel; dropping it closes the channel, which returns its unacked
/// deliveries to the queue.
#[derive(Debug)]
pub struct RabbitConsumer {
    queue: String,
    channel: Channel,
    consumer: lapin::Consumer,
}

impl Drop for RabbitConsumer {
    fn drop(&mut self) {
        let channel = self.channel.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { channel.close(200, "consumer dropped").await });
        }
    }
}

impl Consumer for RabbitConsumer {
    type Delivery = RabbitDelivery;

    async fn next(&mut self) -> Result<RabbitDelivery, QueueError> {
        match self.consumer.next().await {
            Some(delivery) => Ok(RabbitDelivery(Some(delivery?))),
            None => Err(QueueError::Ended(self.queue.clone())),
        }
    }

    async fn next_batch(&mut self, max: usize) -> Result<Vec<RabbitDelivery>, QueueError> {
        let mut batch = vec![self.next().await?];
        // Polling a lapin stream without waiting loses nothing: a delivery not taken now stays
        // buffered for the next poll.
        while batch.len() < max {
            match self.consumer.next().now_or_never() {
                Some(Some(d)) => batch.push(RabbitDelivery(Some(d?))),
                Some(None) => return Err(QueueError::Ended(self.queue.clone())),
                None => break,
            }
        }
        Ok(batch)
    }
}

/// A RabbitMQ delivery; dropped unsettled, it is nacked back to its queue.
#[derive(Debug)]
pub struct RabbitDelivery(Option<lapin::message::Delivery>);

impl RabbitDelivery {
    fn take(mut self) -> lapin::message::Delivery {
        self.0.take().expect("settled once")
    }

    fn inner(&self) -> &lapin::message::Delivery {
        self.0.as_ref().expect("settled once")
    }
}

impl Drop for RabbitDelivery {
    fn drop(&mut self) {
        if let (Some(d), Ok(rt)) = (self.0.take(), tokio::runtime::Handle::try_current()) {
            let requeue = BasicNackOptions {
                requeue: true,
                multiple: false,
            };
            rt.spawn(async move { d.acker.nack(requeue).await });
        }
    }
}

impl Delivery for RabbitDelivery {
    fn body(&self) -> &[u8] {
        &self.inner().data
    }

    fn redelivered(&self) -> bool {
        self.inner().redelivered
    }

    fn traceparent(&self) -> Option<String> {
        let headers = self.inner().properties.headers().as_ref()?;
        match headers.inner().get("traceparent")? {
            AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
            _ => None,
        }
    }

    async fn ack(self) -> Result<(), QueueError> {
        self.take().acker.ack(BasicAckOptions::default()).await?;
        Ok(())
    }

    async fn nack(self, requeue: bool) -> Result<(), QueueError> {
        let opts = BasicNackOptions {
            requeue,
            multiple: false,
        };
        self.take().acker.nack(opts).await?;
        Ok(())
    }
}
