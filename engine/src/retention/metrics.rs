//! What retention did, in the default Prometheus registry (served at `/metrics` with the
//! engine's own). `deploy/prometheus/alerts.yml` alerts on the lag.

use std::sync::LazyLock;

use prometheus::{
    Gauge, IntCounter, IntCounterVec, register_gauge, register_int_counter,
    register_int_counter_vec,
};

pub static ARCHIVED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "orderflow_retention_archived_total",
        "Finished workflows written to the archive, by workflow type (a batch written again after a crash or a late event counts again)",
        &["type"]
    )
    .expect("metric registers once")
});

pub static DELETED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "orderflow_retention_deleted_total",
        "Archived workflows deleted from the database with their history and timers, by type",
        &["type"]
    )
    .expect("metric registers once")
});

pub static ERRORS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "orderflow_retention_errors_total",
        "Retention rounds that failed (database or archive unreachable); the next round retries"
    )
    .expect("metric registers once")
});

pub static LAG: LazyLock<Gauge> = LazyLock::new(|| {
    register_gauge!(
        "orderflow_retention_lag_seconds",
        "Seconds past its retention of the oldest finished workflow still in the database"
    )
    .expect("metric registers once")
});

/// Registers every series, so they exist (at 0) before the first round.
pub fn declare() {
    LazyLock::force(&ARCHIVED);
    LazyLock::force(&DELETED);
    LazyLock::force(&ERRORS);
    LazyLock::force(&LAG);
}
