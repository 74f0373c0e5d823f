//! Releases reservations whose saga never settled within the hold time (a saga stuck for an
//! operator, a lost event), so held stock does not stay unsellable forever.

use std::time::Duration;

use chrono::Utc;
use orderflow_service_kit::db::Db;
use tokio_util::sync::CancellationToken;

use crate::{metrics, store::reservations};

/// How many expired reservations one transaction releases.
const BATCH: i64 = 500;

/// Sweeps until `stop`: releases everything expired, then waits for the next known expiry or
/// `interval`, whichever comes first. A reservation made while it waits is found by the next
/// wake-up, so it is released at most `interval` after it expired.
pub async fn run(db: Db, interval: Duration, stop: CancellationToken) {
    while !stop.is_cancelled() {
        let wait = match sweep_once(&db).await {
            Ok(_) => match reservations::next_expiry(&db).await {
                Ok(Some(at)) => (at - Utc::now())
                    .to_std()
                    .unwrap_or_default()
                    .clamp(Duration::from_millis(50), interval),
                Ok(None) => interval,
                Err(e) => {
                    tracing::warn!(error = %e, "reservation sweeper: reading the next expiry");
                    interval
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "reservation sweeper failed; trying again later");
                interval
            }
        };
        tracing::debug!(?wait, "reservation sweeper waiting");
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// Releases every reservation expired by now; returns how many.
pub async fn sweep_once(db: &Db) -> Result<usize, sqlx::Error> {
    let mut total = 0;
    loop {
        let n = reservations::sweep_expired(db, BATCH).await?;
        total += n;
        if n > 0 {
            metrics::settled("expired", n);
            tracing::info!(released = n, "released expired reservations");
        }
        if n < BATCH as usize {
            return Ok(total);
        }
    }
}
