//! Starting order sagas. An order and the intent to start its saga are stored together; this
//! module turns intents into sagas: right after `POST /orders` for that order, and in a
//! background loop for any intent still due (the engine was down, the process died between
//! commit and call). Repeats are harmless: the engine dedupes on the Idempotency-Key.

use std::{sync::Arc, time::Duration};

use orderflow_service_kit::db::Db;
use orderflow_workflows::order::contracts::{Money, OrderItem, OrderSagaInput};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    clients::{CallError, Clients},
    model::CancelCode,
    store::{self, Order, Tx},
};

/// The saga input of a stored order.
pub fn saga_input(o: &Order) -> OrderSagaInput {
    OrderSagaInput {
        order_id: o.id,
        user_id: o.user_id,
        items: o
            .items
            .iter()
            .map(|l| OrderItem {
                product_id: l.product_id.clone(),
                quantity: l.quantity,
            })
            .collect(),
        total: Money {
            amount_minor: o.total_minor,
            currency: o.currency.clone(),
        },
        payment_method: o.payment_method.clone(),
        email: o.email.clone(),
    }
}

/// What became of one start attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// Nothing due (already started, cancelled, or another process holds it).
    NothingDue,
    Started {
        order: Uuid,
        workflow: Uuid,
    },
    /// The engine is unreachable; the intent stays for the loop.
    Deferred {
        order: Uuid,
    },
    /// The engine refused the saga; the order is cancelled.
    Refused {
        order: Uuid,
    },
}

/// Backoff after `attempts` failed starts: 1 s doubling, capped.
fn backoff(attempts: i32, cap: Duration) -> Duration {
    let exp = u32::try_from(attempts.clamp(0, 16)).unwrap_or(16);
    Duration::from_secs(1u64 << exp).min(cap)
}

/// Claims one due intent (that of `only`, if given), calls the engine and records the outcome,
/// all while holding the intent's row lock so a concurrent cancel waits for the answer. On
/// SQLite that lock is the database's write lock, so the order database's other writers wait
/// for the engine's answer too (at most the call timeout): acceptable for `orderflow dev`, one
/// process whose engine answers in-process, and what keeps the cancel's answer exact.
pub async fn start_one(
    db: &Db,
    clients: &Clients,
    only: Option<Uuid>,
    backoff_cap: Duration,
) -> Result<Attempt, sqlx::Error> {
    let mut tx = Tx::begin(db).await?;
    let Some((order, attempts)) = store::claim_start(&mut tx, only).await? else {
        return Ok(Attempt::NothingDue);
    };
    let outcome = match clients.start_saga(&saga_input(&order)).await {
        Ok(workflow) => {
            store::record_started(&mut tx, order.id, workflow).await?;
            Attempt::Started {
                order: order.id,
                workflow,
            }
        }
        Err(e @ CallError::Unavailable { .. }) => {
            let wait = backoff(attempts, backoff_cap);
            tracing::warn!(order = %order.id, error = %e, retry_in = ?wait, "cannot start the order saga yet");
            store::record_start_failure(&mut tx, order.id, &e.to_string(), wait).await?;
            Attempt::Deferred { order: order.id }
        }
        Err(e @ CallError::Refused { .. }) => {
            // The input was checked before it was stored, so this is a bug or a deployment
            // mismatch: cancel the order visibly rather than retry forever.
            tracing::error!(order = %order.id, error = %e, "the engine refused the order saga");
            store::cancel_unstarted(
                &mut tx,
                order.id,
                CancelCode::Failed,
                "the order could not be processed",
            )
            .await?;
            Attempt::Refused { order: order.id }
        }
    };
    tx.commit().await?;
    Ok(outcome)
}

/// Starts every due saga, then waits for `wake` or `interval`, until `stop`.
pub async fn run(
    db: Db,
    clients: Clients,
    wake: Arc<Notify>,
    interval: Duration,
    backoff_cap: Duration,
    stop: CancellationToken,
) {
    while !stop.is_cancelled() {
        loop {
            match start_one(&db, &clients, None, backoff_cap).await {
                Ok(Attempt::NothingDue) => break,
                // Keep going: the next due intent may be for a healthy path.
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "the saga starter cannot reach its database");
                    break;
                }
            }
            if stop.is_cancelled() {
                return;
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = wake.notified() => {}
            () = tokio::time::sleep(interval) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let cap = Duration::from_secs(30);
        assert_eq!(backoff(0, cap), Duration::from_secs(1));
        assert_eq!(backoff(3, cap), Duration::from_secs(8));
        assert_eq!(backoff(10, cap), cap);
        assert_eq!(backoff(1000, cap), cap);
    }
}
