//! The durable runtime of OrderFlow. The pure decider in `orderflow-core` says what to do; this
//! crate makes it durable and executes it. There is one engine, written once over two ports: the
//! [`store::Store`] (Postgres in production, SQLite in `orderflow dev`) and the task
//! queue ([`orderflow_queue::TaskQueue`]: RabbitMQ, or the embedded queue).
//!
//! - [`Engine`] ([`engine`]): one engine process; runs the loops below and supervises them.
//! - [`committer`]: the one writer of the process: starts, results, due timers and operator
//!   actions are decided and written in batches, one commit per batch, guarded by each
//!   workflow's history sequence; what a batch sends is published right after its commit.
//! - [`loops`]: the result intake, the timer poller, the outbox relay (what an engine left
//!   unpublished) and the backlog gauges.
//! - [`apply`]: deciding and recording without I/O: a start or an event through the
//!   workflow's definition, and what the decider answered as rows.
//! - [`store`]: the store port and its two adapters: Postgres (one module per table, each taking
//!   the caller's connection) and SQLite ([`store::sqlite`]).
//! - [`api`]: the REST API (axum) to start, inspect and operate workflows.
//! - [`admin`]: the operators' web UI at `/admin`, mounted by [`api::router_with_admin`].
//! - [`metrics`]: Prometheus metrics.
//! - [`retention`]: finished workflows archived to an object store and deleted after their
//!   type's retention; started beside the engine's loops by the hosts.

pub mod admin;
pub mod api;
pub mod apply;
pub mod committer;
pub mod config;
pub mod engine;
pub mod loops;
pub mod metrics;
mod publisher;
pub mod retention;
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
