//! RabbitMQ topology and connections, shared by the engine and the workers so both sides agree on
//! queue names and arguments.
//!
//! Each activity has one durable queue, `<prefix>orderflow.task.<activity>`; workers report to
//! `<prefix>orderflow.results`. Messages that cannot be handled (undecodable, or redelivered too
//! often) are dead-lettered to `<prefix>orderflow.dead` instead of blocking their queue.

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind,
    options::{
        BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
        QueueDeclareOptions,
    },
    publisher_confirm::Confirmation,
    types::{AMQPValue, FieldTable, LongString, ShortString},
};
use orderflow_core::protocol::{EVENTS_EXCHANGE, RESULTS_QUEUE, task_queue};

/// Queue names, with a prefix so tests (and tenants) can share one broker.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Topology {
    pub prefix: String,
}

impl Topology {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    pub fn task_queue(&self, activity: &str) -> String {
        format!("{}{}", self.prefix, task_queue(activity))
    }

    pub fn results_queue(&self) -> String {
        format!("{}{}", self.prefix, RESULTS_QUEUE)
    }

    pub fn dead_letter_queue(&self) -> String {
        format!("{}orderflow.dead", self.prefix)
    }

    /// The topic exchange of workflow lifecycle events.
    pub fn events_exchange(&self) -> String {
        format!("{}{}", self.prefix, EVENTS_EXCHANGE)
    }

    /// Declares the events exchange (durable topic).
    pub async fn declare_events(&self, channel: &Channel) -> Result<(), lapin::Error> {
        let opts = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .exchange_declare(
                &self.events_exchange(),
                ExchangeKind::Topic,
                opts,
                FieldTable::default(),
            )
            .await
    }

    /// Declares `queue` (durable, dead-lettered like every queue) and binds it to the events
    /// exchange for `routing_key` (e.g. `workflow.finished.order`). A service calls this for the
    /// events it follows; the queue name is the service's own (`<prefix>order.workflow-events`).
    pub async fn bind_events(
        &self,
        channel: &Channel,
        queue: &str,
        routing_key: &str,
    ) -> Result<(), lapin::Error> {
        self.declare_events(channel).await?;
        self.declare_queue(channel, queue).await?;
        channel
            .queue_bind(
                queue,
                &self.events_exchange(),
                routing_key,
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
    }

    /// Declares the dead-letter queue, the results queue and one task queue per activity.
    /// Declaring is idempotent, so every process does it on connect.
    pub async fn declare(
        &self,
        channel: &Channel,
        activities: &[&str],
    ) -> Result<(), lapin::Error> {
        self.declare_queue(channel, &self.results_queue()).await?;
        for activity in activities {
            self.declare_queue(channel, &self.task_queue(activity))
                .await?;
        }
        Ok(())
    }

    /// Declares one durable queue (and the dead-letter queue it routes rejects to); the broker's
    /// answer counts its ready messages and consumers.
    pub async fn declare_queue(
        &self,
        channel: &Channel,
        queue: &str,
    ) -> Result<lapin::Queue, lapin::Error> {
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .queue_declare(&self.dead_letter_queue(), durable, FieldTable::default())
            .await?;
        let mut args = FieldTable::default();
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(LongString::from("")),
        );
        args.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(LongString::from(self.dead_letter_queue())),
        );
        channel.queue_declare(queue, durable, args).await
    }
}

/// Connects on tokio, retrying with capped exponential backoff for up to `patience`.
pub async fn connect(url: &str, patience: Duration) -> Result<Connection, lapin::Error> {
    let attempt = || async {
        let props = ConnectionProperties::default()
            .with_executor(tokio_executor_trait::Tokio::current())
            .with_reactor(tokio_reactor_trait::Tokio);
        Connection::connect(url, props).await
    };
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

/// A channel in publisher-confirm mode.
pub async fn confirm_channel(conn: &Connection) -> Result<Channel, lapin::Error> {
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    Ok(ch)
}

/// Header with the instant a message was published, in milliseconds since the epoch: workers
/// measure a task's schedule-to-start latency from it. (AMQP's own `timestamp` property has
/// whole seconds only.)
pub const PUBLISHED_AT: &str = "x-published-at";

/// The `traceparent` header of a delivery: the context of the hop that published it.
pub fn traceparent(delivery: &lapin::message::Delivery) -> Option<String> {
    match header(delivery, orderflow_telemetry::TRACEPARENT)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        _ => None,
    }
}

/// When a delivery was published ([`PUBLISHED_AT`]).
pub fn published_at(delivery: &lapin::message::Delivery) -> Option<chrono::DateTime<chrono::Utc>> {
    match header(delivery, PUBLISHED_AT)? {
        AMQPValue::LongLongInt(ms) => chrono::DateTime::from_timestamp_millis(*ms),
        _ => None,
    }
}

fn header<'d>(delivery: &'d lapin::message::Delivery, name: &str) -> Option<&'d AMQPValue> {
    delivery.properties.headers().as_ref()?.inner().get(name)
}

/// One message to publish persistently.
#[derive(Debug)]
pub struct Outgoing<'a> {
    /// The exchange; `""` is the default exchange, which routes to the queue named `queue`.
    pub exchange: &'a str,
    /// The queue (default exchange) or routing key (any other exchange).
    pub queue: &'a str,
    pub body: &'a [u8],
    pub message_id: String,
    pub traceparent: Option<&'a str>,
}

/// Why a publish did not go through.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    #[error("the broker refused message {0}")]
    Nacked(String),
}

/// Publishes all messages persistently, pipelined, then waits for every confirm. Returns once the
/// broker has taken responsibility for all of them.
pub async fn publish_confirmed(
    channel: &Channel,
    msgs: &[Outgoing<'_>],
) -> Result<(), PublishError> {
    let mut pending = Vec::with_capacity(msgs.len());
    for m in msgs {
        let mut headers = FieldTable::default();
        if let Some(tp) = m.traceparent {
            headers.insert(
                ShortString::from(orderflow_telemetry::TRACEPARENT),
                AMQPValue::LongString(tp.into()),
            );
        }
        headers.insert(
            ShortString::from(PUBLISHED_AT),
            AMQPValue::LongLongInt(chrono::Utc::now().timestamp_millis()),
        );
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_message_id(m.message_id.as_str().into())
            .with_headers(headers);
        let confirm = channel
            .basic_publish(
                m.exchange,
                m.queue,
                BasicPublishOptions::default(),
                m.body,
                props,
            )
            .await?;
        pending.push((m.message_id.clone(), confirm));
    }
    for (id, confirm) in pending {
        match confirm.await? {
            Confirmation::Ack(_) => {}
            Confirmation::Nack(_) | Confirmation::NotRequested => {
                return Err(PublishError::Nacked(id));
            }
        }
    }
    Ok(())
}
