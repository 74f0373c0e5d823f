//! Prometheus metrics of the engine, registered in the default registry and served at `/metrics`.
//! Labels name workflow types, statuses and queues as the registry's definitions name them
//! ([`declare`], the backlog gauges of `loops::backlog`), so a new workflow needs no change here.

use std::sync::LazyLock;

use orderflow_core::{Registry, WorkflowStatus};
use prometheus::{
    Encoder, Histogram, HistogramVec, IntCounter, IntCounterVec, TextEncoder, register_histogram,
    register_histogram_vec, register_int_counter, register_int_counter_vec,
};

pub static WORKFLOWS_STARTED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "orderflow_workflows_started_total",
        "Workflows started",
        &["type"]
    )
    .expect("metric registers once")
});

pub static WORKFLOWS_FINISHED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "orderflow_workflows_finished_total",
        "Workflows that reached a terminal status or needs_attention",
        &["type", "status"]
    )
    .expect("metric registers once")
});

pub static RESULTS_APPLIED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!("orderflow_results_applied_total", "Worker results applied")
        .expect("metric registers once")
});

pub static TASKS_PUBLISHED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "orderflow_tasks_published_total",
        "Tasks confirmed by the broker"
    )
    .expect("metric registers once")
});

pub static TASKS_REDISPATCHED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "orderflow_tasks_redispatched_total",
        "Transient task messages sent again because the broker connection they went over was lost"
    )
    .expect("metric registers once")
});

pub static TIMERS_FIRED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!("orderflow_timers_fired_total", "Durable timers fired")
        .expect("metric registers once")
});

pub static TIMER_LATENESS: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "orderflow_timer_lateness_seconds",
        "How late the oldest due durable timer was when a poller fired a round of timers",
        vec![
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0
        ]
    )
    .expect("metric registers once")
});

pub static BATCH_SIZE: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "orderflow_batch_size",
        "Items handled per transaction, by loop (intake, relay, timers)",
        &["loop"],
        vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0]
    )
    .expect("metric registers once")
});

pub static HTTP_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "http_request_duration_seconds",
        "HTTP request duration by method, route and status",
        &["method", "route", "status"]
    )
    .expect("metric registers once")
});

/// Creates the per-type series of every workflow type `registry` deploys, at zero: a dashboard
/// or an alert on `rate(...)` sees a new workflow type from the engine's start, not only after
/// its first saga.
pub fn declare(registry: &Registry) {
    let ends: Vec<WorkflowStatus> = WorkflowStatus::ALL
        .into_iter()
        .filter(|s| s.is_terminal() || *s == WorkflowStatus::NeedsAttention)
        .collect();
    for workflow_type in registry.types() {
        WORKFLOWS_STARTED.with_label_values(&[workflow_type]);
        for status in &ends {
            WORKFLOWS_FINISHED.with_label_values(&[workflow_type, status.as_str()]);
        }
    }
}

/// The text exposition of every registered metric.
pub fn render() -> String {
    let mut buf = Vec::new();
    TextEncoder::new()
        .encode(&prometheus::gather(), &mut buf)
        .expect("text encoding cannot fail");
    String::from_utf8(buf).unwrap_or_default()
}
