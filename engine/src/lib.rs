//! The durable runtime of OrderFlow. The pure decider in `orderflow-core` says what to do; this
//! crate makes it durable and executes it. There is one engine, written once over two ports: the
//! [`store::backend::Store`] (Postgres in production, SQLite in `orderflow dev`) and the task
//! queue ([`orderflow_queue::TaskQueue`]: RabbitMQ, or the embedded queue).
//!
//! - [`Engine`] ([`engine`]): one engine process; runs the loops below and supervises them.
//! - [`loops`]: the outbox relay, the timer poller, the result intake and the backlog gauges.
//! - [`apply`]: folds a batch of events through the decider under the workflows' row locks and
//!   writes everything (history, snapshots, outbox rows, timers) in the caller's transaction.
//! - [`store`]: the store port and its two adapters: Postgres (one module per table, each taking
//!   the caller's transaction, wake-ups by `LISTEN/NOTIFY`) and SQLite ([`store::sqlite`]).
//! - [`api`]: the REST API (axum) to start, inspect and operate workflows.
//! - [`admin`]: the operators' web UI at `/admin`, mounted by [`api::router_with_admin`].
//! - [`metrics`]: Prometheus metrics.

pub mod admin;
pub mod api;
pub mod apply;
pub mod config;
pub mod engine;
pub mod loops;
pub mod metrics;
pub mod store;

pub use config::EngineConfig;
pub use engine::Engine;

/// The engine's migrations (`migrations/engine/`). Other migration sets (the recording
/// activities in tests and `orderflow up`) may share the database's `_sqlx_migrations` table, so
/// versions applied by them are not an error here.
pub fn migrator() -> sqlx::migrate::Migrator {
    let mut m = sqlx::migrate!("../migrations/engine");
    m.set_ignore_missing(true);
    m
}

/// Postgres channels the engine listens on.
pub mod channels {
    /// New outbox rows were committed.
    pub const OUTBOX: &str = "orderflow_outbox";
    /// A timer due soon was committed.
    pub const TIMERS: &str = "orderflow_timers";
}
