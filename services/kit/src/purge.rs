//! The services' own retention: each service exports what it purges (its notification log, its
//! webhook events, its expired sessions) as a function of a cutoff, and [`purge_loop`] runs it
//! as one of the service's background loops, counting what went in
//! `orderflow_service_purged_total{service,table}`. Business records (orders, payments) are
//! never purged.

use std::{sync::LazyLock, time::Duration};

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use prometheus::{IntCounterVec, register_int_counter_vec};

use crate::parts::Loop;

/// Most rows one purge transaction deletes: short transactions, no long locks.
pub const BATCH: i64 = 500;

static PURGED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "orderflow_service_purged_total",
        "Rows a service's retention deleted, by service and table",
        &["service", "table"]
    )
    .expect("metric registers once")
});

static PURGE_ERRORS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "orderflow_service_purge_errors_total",
        "Purge rounds of a service that failed; the next round retries",
        &["service"]
    )
    .expect("metric registers once")
});

/// What one purge deleted, by table.
pub type Purged = Vec<(&'static str, u64)>;

/// A purge: deletes what is older than the cutoff it is given, in batches of [`BATCH`].
pub type Purge =
    Box<dyn Fn(DateTime<Utc>) -> BoxFuture<'static, Result<Purged, sqlx::Error>> + Send + Sync>;

/// A background loop running `purge` every `every` with the cutoff `now - keep`.
pub fn purge_loop(service: &'static str, keep: Duration, every: Duration, purge: Purge) -> Loop {
    LazyLock::force(&PURGED);
    LazyLock::force(&PURGE_ERRORS);
    Box::new(move |stop| {
        Box::pin(async move {
            while !stop.is_cancelled() {
                let cutoff =
                    Utc::now() - chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::MAX);
                match purge(cutoff).await {
                    Ok(done) => {
                        for (table, n) in done.into_iter().filter(|(_, n)| *n > 0) {
                            PURGED.with_label_values(&[service, table]).inc_by(n);
                            tracing::info!(service, table, rows = n, "purged rows past retention");
                        }
                    }
                    Err(e) => {
                        PURGE_ERRORS.with_label_values(&[service]).inc();
                        tracing::warn!(service, error = %e, "purge failed; trying again later");
                    }
                }
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(every) => {}
                }
            }
        })
    })
}

/// Runs `batch` until it deletes fewer than [`BATCH`] rows; the total.
pub async fn in_batches<F, Fut>(mut batch: F) -> Result<u64, sqlx::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<u64, sqlx::Error>>,
{
    let mut total = 0;
    loop {
        let n = batch().await?;
        total += n;
        if n < BATCH as u64 {
            return Ok(total);
        }
    }
}
