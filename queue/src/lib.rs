//! The task queue: the port through which the engine hands tasks to workers, workers hand
//! results back, and services follow finished workflows. Everything above it (the engine's
//! loops, the worker, the event follower) is written once against [`TaskQueue`]; a backend is an
//! adapter behind it (DESIGN.md §5).
//!
//! - [`topology`]: the names of the queues and the events exchange, with a prefix so tests and
//!   tenants can share one broker.
//! - [`rabbit`]: [`rabbit::RabbitQueue`], the production adapter on RabbitMQ: durable queues
//!   dead-lettered to `orderflow.dead`, persistent publishes with pipelined confirms, a channel
//!   per consumer, one multiple-ack for a batch, and a connection made again whenever the broker
//!   went away.
//! - [`embedded`]: [`embedded::EmbeddedQueue`], the in-process queue of `orderflow dev`, durable
//!   in SQLite, with the same guarantees.
//! - [`wire`]: the wire format as JSON Schema documents with their AMQP envelope, the files of
//!   `protocol/schemas/` that workers in other languages build on.
//!
//! Both give the guarantees the runtime builds on: a publish returns once the queue is
//! responsible for every message (a publisher confirm, a committed insert); a delivery stays
//! the consumer's until it is acked, nacked (requeued or dead-lettered) or dropped (requeued);
//! whatever a dead consumer held is delivered again. `engine/tests/conformance.rs` holds both to
//! one suite.

pub mod embedded;
pub mod rabbit;
pub mod topology;
pub mod wire;

use std::{future::Future, path::Path, str::FromStr, time::Duration};

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use sqlx::{
    Connection as _, SqliteConnection, SqlitePool,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};

pub use topology::Topology;

/// The message header that carries the W3C trace context of the hop that published it.
pub const TRACEPARENT: &str = "traceparent";

/// Why a queue operation failed. Callers treat every variant alike (back off, try again; the
/// adapter reconnects by itself), so the cause is for the log.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    #[error("the broker refused message {0}")]
    Nacked(String),
    #[error("no confirm from the broker within {0:?}")]
    ConfirmTimeout(Duration),
    #[error("queue store: {0}")]
    Store(#[from] sqlx::Error),
    #[error("the consumer of `{0}` ended")]
    Ended(String),
}

/// One message to publish.
#[derive(Debug)]
pub struct Outgoing<'a> {
    /// The exchange; `""` is the default exchange, which routes to the queue named `queue`.
    pub exchange: &'a str,
    /// The queue (default exchange) or routing key (any other exchange).
    pub queue: &'a str,
    pub body: &'a [u8],
    pub message_id: String,
    pub traceparent: Option<&'a str>,
    /// Kept in memory only by a broker that distinguishes (RabbitMQ: delivery mode 1), so a
    /// broker restart drops it; for messages whose sender sends them again when that may have
    /// happened (task messages, DESIGN.md §3.2). Otherwise persistent.
    pub transient: bool,
}

/// What a queue holds, as the metrics and the admin UI's stuck view read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueStats {
    /// Messages ready, not yet handed to a consumer.
    pub depth: u64,
    /// Consumers taking from it; `None` where the queue cannot tell.
    pub consumers: Option<u32>,
}

/// A durable queue of task, result and event messages.
pub trait TaskQueue: Clone + Send + Sync + std::fmt::Debug + 'static {
    type Consumer: Consumer;

    /// The names this queue's messages go by.
    fn topology(&self) -> &Topology;

    /// Makes `queue` exist (durable, dead-lettering what is rejected) before anything is sent to
    /// it. Publishing declares its targets itself; this is for consumers that start first.
    fn declare(&self, queue: &str) -> impl Future<Output = Result<(), QueueError>> + Send;

    /// Routes messages published to the events exchange with `routing_key` to `queue`.
    fn bind_events(
        &self,
        queue: &str,
        routing_key: &str,
    ) -> impl Future<Output = Result<(), QueueError>> + Send;

    /// Publishes every message (persistently unless it is [`Outgoing::transient`]); returns
    /// once the queue is responsible for all of them.
    fn publish(&self, msgs: &[Outgoing<'_>])
    -> impl Future<Output = Result<(), QueueError>> + Send;

    /// The generation of the connection to the broker, connecting if there is none: it moves
    /// on whenever a lost connection is made again. Transient messages published over an
    /// earlier generation may be gone (the broker may have restarted), so their sender sends
    /// them again (DESIGN.md §3.2). Fails at once if the broker cannot be reached now. A queue
    /// that keeps every message durably stays at generation 0.
    fn connection(&self) -> impl Future<Output = Result<u64, QueueError>> + Send {
        std::future::ready(Ok(0))
    }

    /// Consumes `queue` with at most `prefetch` deliveries unsettled at once.
    fn consume(
        &self,
        queue: &str,
        prefetch: u16,
    ) -> impl Future<Output = Result<Self::Consumer, QueueError>> + Send;

    /// How many messages wait in `queue` and how many consumers take from it.
    fn inspect(&self, queue: &str) -> impl Future<Output = Result<QueueStats, QueueError>> + Send;

    /// Whether the broker answers; `None` for a queue in this process, which has none.
    fn reachable(&self) -> impl Future<Output = Option<bool>> + Send;
}

/// What the operators' side (the admin UI, `/ready`) asks of a task queue: a [`TaskQueue`]
/// seen through an object, so those parts need not be generic over the queue.
pub trait QueueView: Send + Sync + std::fmt::Debug {
    fn topology(&self) -> &Topology;
    fn inspect<'a>(&'a self, queue: &'a str) -> BoxFuture<'a, Result<QueueStats, QueueError>>;
    fn reachable(&self) -> BoxFuture<'_, Option<bool>>;
}

impl<Q: TaskQueue> QueueView for Q {
    fn topology(&self) -> &Topology {
        TaskQueue::topology(self)
    }

    fn inspect<'a>(&'a self, queue: &'a str) -> BoxFuture<'a, Result<QueueStats, QueueError>> {
        Box::pin(TaskQueue::inspect(self, queue))
    }

    fn reachable(&self) -> BoxFuture<'_, Option<bool>> {
        Box::pin(TaskQueue::reachable(self))
    }
}

/// The deliveries of one queue, in order. `next` and `next_batch` may be dropped while they
/// wait (in a `select!`) without losing a message.
pub trait Consumer: Send + 'static {
    type Delivery: Delivery;

    /// Waits for the next delivery.
    fn next(&mut self) -> impl Future<Output = Result<Self::Delivery, QueueError>> + Send;

    /// Waits for one delivery, then takes whatever else is ready, up to `max` in all.
    fn next_batch(
        &mut self,
        max: usize,
    ) -> impl Future<Output = Result<Vec<Self::Delivery>, QueueError>> + Send;

    /// Stops taking messages: what the queue had pushed ahead to this consumer goes back for
    /// others. Deliveries already handed out stay valid and must still be settled; `next` ends.
    fn cancel(&mut self) -> impl Future<Output = Result<(), QueueError>> + Send;
}

/// One message handed to a consumer. Dropping it unsettled returns it to the queue.
pub trait Delivery: Send + Sized + 'static {
    fn body(&self) -> &[u8];

    /// Whether it was delivered before and not acked (a consumer died or gave it back).
    fn redelivered(&self) -> bool;

    /// The `traceparent` header it was published with.
    fn traceparent(&self) -> Option<String>;

    /// When it was published.
    fn published_at(&self) -> Option<DateTime<Utc>>;

    /// Settles it: the queue forgets the message.
    fn ack(self) -> impl Future<Output = Result<(), QueueError>> + Send;

    /// Settles many at once, as one acknowledgement where the queue allows (RabbitMQ's multiple
    /// ack, when they are everything their channel has unsettled up to the newest).
    fn ack_all(batch: Vec<Self>) -> impl Future<Output = Result<(), QueueError>> + Send;

    /// Gives it back (`requeue`) or dead-letters it.
    fn nack(self, requeue: bool) -> impl Future<Output = Result<(), QueueError>> + Send;
}

/// A SQLite pool for one embedded database (the engine's store, this queue, a service's own):
/// `file` (created if missing, WAL) or, with `None`, memory. Durability: WAL with
/// `synchronous = NORMAL` survives the process being killed at any instant (a commit is in the
/// WAL before it returns); only an OS crash may lose the last commits, which is the trade-off a
/// dev machine wants.
pub async fn sqlite_pool(file: Option<&Path>) -> sqlx::Result<SqlitePool> {
    let (options, max) = match file {
        Some(path) => (
            SqliteConnectOptions::new()
                .filename(path)
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal),
            4,
        ),
        // Every connection to `:memory:` is its own database, so there is exactly one, kept
        // for the pool's whole life.
        None => (SqliteConnectOptions::from_str("sqlite::memory:")?, 1),
    };
    let options = options
        .busy_timeout(Duration::from_secs(30))
        .foreign_keys(true);
    if file.is_some() {
        // One connection alone creates the file and turns WAL on (which then stays on in the
        // file). Two connections of a new pool switching a new file to WAL at once both need
        // the exclusive lock, and SQLite answers one of them "database is locked" at once
        // instead of letting it wait.
        SqliteConnection::connect_with(&options)
            .await?
            .close()
            .await?;
    }
    SqlitePoolOptions::new()
        .max_connections(max)
        .min_connections(1)
        .idle_timeout(None)
        .max_lifetime(None)
        .acquire_timeout(Duration::from_secs(60))
        .connect_with(options)
        .await
}
