//! The worker SDK: what a service links to do a saga's work and follow its end. Everything runs
//! over the [`orderflow_queue::TaskQueue`] port, so the same code serves RabbitMQ in production
//! and the embedded queue of `orderflow dev`.
//!
//! - [`activity`]: the [`Activity`] trait a service implements and the [`TaskContext`] it gets.
//! - [`worker`]: consumes task queues, runs activities, publishes results and acks each task
//!   only after its result is published.
//! - [`follower`]: follows finished workflows on a service's own queue, acking each event after
//!   the service's handler returned.

pub mod activity;
pub mod follower;
pub mod worker;

pub use activity::{Activity, TaskContext};
pub use orderflow_core::ActivityError;
