//! Activities: the trait a service implements for each kind of work a saga asks for, and the
//! worker runtime that runs them.
//!
//! - [`activity`]: the [`Activity`] trait a service implements and the [`TaskContext`] it gets.
//! - [`broker`]: RabbitMQ naming, connection with backoff and queue declaration, shared with the
//!   engine so both sides agree on the topology.
//! - [`worker`]: consumes task queues, runs activities, publishes results with confirms and acks
//!   only after the result is confirmed.
//! - [`queue`]: the task queue as an interface ([`queue::TaskQueue`]) with its RabbitMQ adapter
//!   and the in-process, SQLite-backed queue of `orderflow dev`, and a worker over either.

pub mod activity;
pub mod broker;
pub mod queue;
pub mod worker;

pub use activity::{Activity, TaskContext};
pub use orderflow_core::ActivityError;
