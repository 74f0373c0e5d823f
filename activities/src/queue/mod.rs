//! The task queue as an interface: [`TaskQueue`] publishes durably (returning once the queue
//! has taken responsibility, like a publisher confirm), consumes with a prefetch limit, and
//! hands out [`Delivery`]s that are acked, nacked (requeued or dead-lettered), or returned to
//! the queue when dropped unsettled (like the unacked messages of a closed channel).
//!
//! Two real implementations with the same guarantees (at-least-once, ack after the result,
//! redelivery after a crash): [`rabbit::RabbitQueue`] on RabbitMQ (the same publish and declare
//! functions as [`crate::broker`]) and [`embedded::EmbeddedQueue`], the in-process queue of
//! `orderflow dev`, durable in a SQLite table. `engine/tests/conformance.rs` runs one suite
//! against both.

pub mod embedded;
pub mod rabbit;
pub mod worker;

use std::{future::Future, path::Path, str::FromStr, time::Duration};

use sqlx::{
    Connection as _, SqliteConnection, SqlitePool,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};

pub use crate::broker::Outgoing;

/// Why a queue operation failed. The callers treat every variant alike (reconnect, retry), so
/// the cause is only for the log.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    #[error(transparent)]
    Publish(#[from] crate::broker::PublishError),
    #[error("queue store: {0}")]
    Store(#[from] sqlx::Error),
    #[error("the consumer of `{0}` ended")]
    Ended(String),
}

/// A durable queue of task and result messages.
pub trait TaskQueue: Clone + Send + Sync + 'static {
    type Consumer: Consumer;

    /// Makes `queue` exist (durable, rejects dead-lettered) before anything is sent to it.
    fn declare(&self, queue: &str) -> impl Future<Output = Result<(), QueueError>> + Send;

    /// Routes messages published to the events exchange with `routing_key` to `queue`.
    fn bind_events(
        &self,
        queue: &str,
        routing_key: &str,
    ) -> impl Future<Output = Result<(), QueueError>> + Send;

    /// Publishes every message persistently; returns once all of them are durable.
    fn publish(&self, msgs: &[Outgoing<'_>])
    -> impl Future<Output = Result<(), QueueError>> + Send;

    /// Consumes `queue` with at most `prefetch` deliveries unsettled at once.
    fn consume(
        &self,
        queue: &str,
        prefetch: u16,
    ) -> impl Future<Output = Result<Self::Consumer, QueueError>> + Send;
}

/// The deliveries of one queue, in order.
pub trait Consumer: Send + 'static {
    type Delivery: Delivery;

    /// Waits for the next delivery.
    fn next(&mut self) -> impl Future<Output = Result<Self::Delivery, QueueError>> + Send;

    /// Waits for one delivery, then takes whatever else is ready, up to `max` in all.
    fn next_batch(
        &mut self,
        max: usize,
    ) -> impl Future<Output = Result<Vec<Self::Delivery>, QueueError>> + Send;
}

/// One message handed to a consumer. Dropping it unsettled returns it to the queue.
pub trait Delivery: Send + 'static {
    fn body(&self) -> &[u8];

    /// Whether it was delivered before and not acked (a consumer died or gave it back).
    fn redelivered(&self) -> bool;

    /// The `traceparent` header it was published with.
    fn traceparent(&self) -> Option<String>;

    /// Settles it: the queue forgets the message.
    fn ack(self) -> impl Future<Output = Result<(), QueueError>> + Send;

    /// Gives it back (`requeue`) or dead-letters it.
    fn nack(self, requeue: bool) -> impl Future<Output = Result<(), QueueError>> + Send;
}

/// A SQLite pool for one embedded database: `file` (created if missing, WAL) or, with `None`,
/// memory. Durability: WAL with `synchronous = NORMAL` survives the process being killed at any
/// instant (a commit is in the WAL before it returns); only an OS crash may lose the last
/// commits, which is the trade-off a dev machine wants.
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
        // the exclusive lock; SQLite answers one "database is locked" at once instead of
        // letting it wait, which broke a test's fresh database in CI.
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
