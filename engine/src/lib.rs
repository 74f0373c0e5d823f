//! The durable runtime of OrderFlow. The pure decider in `orderflow-core` says what to do; this
//! crate makes it durable and executes it:
//!
//! - [`store`]: one module per table, each taking the caller's transaction.
//! - [`apply`]: loads workflows under their row locks, folds a batch of events through the
//!   decider and writes everything (history, snapshots, outbox rows, timers) in one transaction.
//! - [`relay`]: publishes outbox rows to RabbitMQ with confirms, deleting them only afterwards.
//! - [`timers`]: fires due durable timers as events.
//! - [`intake`]: consumes worker results and applies them in batches, acking after commit.
//! - [`runtime`]: runs relay, timers and intake together, woken by `LISTEN/NOTIFY`.
//! - [`portable`]: the same loops over the [`store::backend::Store`] and task queue
//!   interfaces, which `orderflow dev` runs on SQLite and the in-process queue.
//! - [`api`]: the REST API (axum) to start, inspect and operate workflows, on Postgres or on the
//!   embedded store ([`api::router_embedded`]).
//! - [`admin`]: the operators' web UI at `/admin`, mounted by [`api::router_with_admin`], on
//!   either store too.
//! - [`metrics`]: Prometheus metrics.

pub mod admin;
pub mod api;
pub mod apply;
pub mod config;
pub mod intake;
pub mod metrics;
pub mod portable;
pub mod queue_metrics;
pub mod relay;
pub mod runtime;
pub mod store;
pub mod timers;

pub use config::EngineConfig;
pub use runtime::Engine;

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
