//! Activities: the typed contracts of the work a saga asks for, and the worker runtime that runs
//! them for the services.
//!
//! - [`contracts`]: activity names (durable constants) and their input and output types.
//! - [`activity`]: the [`Activity`] trait a service implements and the [`TaskContext`] it gets.
//! - [`broker`]: RabbitMQ naming, connection with backoff and queue declaration, shared with the
//!   engine so both sides agree on the topology.
//! - [`worker`]: consumes task queues, runs activities, publishes results with confirms and acks
//!   only after the result is confirmed.
//! - [`queue`]: the task queue as an interface ([`queue::TaskQueue`]) with its RabbitMQ adapter
//!   and the in-process, SQLite-backed queue of `orderflow dev`, and a worker over either.
//! - [`recording`]: activities that record their effect per idempotency key in a Postgres table;
//!   they stand in for the services until those exist and are what the tests count.
//! - [`bench`]: the saga benchmark's activities, one single-row write per step (`orderflow bench`).

pub mod activity;
pub mod bench;
pub mod broker;
pub mod contracts;
pub mod queue;
pub mod recording;
pub mod worker;

pub use activity::{Activity, TaskContext};
pub use orderflow_core::ActivityError;
