//! The inventory's activities: `inventory.reserve` and its compensation `inventory.release`, and
//! the return saga's `inventory.restock`.
//! Both are idempotent per saga step, as at-least-once delivery requires.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use orderflow_activities::{Activity, ActivityError, TaskContext, worker::Handler};
use orderflow_service_kit::db::Db;
use orderflow_workflows::{
    order::{
        RESERVE,
        contracts::{INVENTORY_RELEASE, INVENTORY_RESERVE, OrderSagaInput, Reservation},
    },
    returns::contracts::{INVENTORY_RESTOCK, ReturnSagaInput},
};

use crate::{
    metrics,
    store::reservations::{self, ReserveError, ReserveRequest, StepRef},
};

/// The error codes of the inventory's activities: the contract's, which the saga definition
/// treats as final, and the inventory's own.
pub mod codes {
    pub use orderflow_workflows::order::contracts::codes::{OUT_OF_STOCK, UNKNOWN_PRODUCT};
    pub const INVALID_ITEMS: &str = "invalid_items";
    /// `inventory.restock`: the order's reservation was never sold; final.
    pub const NOT_SOLD: &str = "not_sold";
    pub const DATABASE: &str = "database";
}

/// `inventory.reserve`: holds every item of the order or none, for `ttl` at most if the saga
/// never settles.
#[derive(Debug, Clone)]
pub struct Reserve {
    pub db: Db,
    pub ttl: Duration,
}

#[async_trait]
impl Activity for Reserve {
    const NAME: &'static str = INVENTORY_RESERVE;
    type Input = OrderSagaInput;
    type Output = Reservation;

    async fn run(
        &self,
        ctx: &TaskContext,
        input: OrderSagaInput,
    ) -> Result<Reservation, ActivityError> {
        let items: Vec<(String, u32)> = input
            .items
            .into_iter()
            .map(|i| (i.product_id, i.quantity))
            .collect();
        let step = step_ref(ctx);
        let req = ReserveRequest {
            step: &step,
            idempotency_key: &ctx.idempotency_key,
            order_id: Some(input.order_id),
            items: &items,
            ttl: self.ttl,
        };
        let outcome = reservations::reserve(&self.db, &req).await;
        metrics::reserve_outcome(match &outcome {
            Ok(_) => "reserved",
            Err(ReserveError::OutOfStock(_)) => codes::OUT_OF_STOCK,
            Err(ReserveError::UnknownProducts(_)) => codes::UNKNOWN_PRODUCT,
            Err(ReserveError::Database(_)) => codes::DATABASE,
            Err(_) => codes::INVALID_ITEMS,
        });
        match outcome {
            Ok(r) => Ok(Reservation {
                reservation_id: r.id.to_string(),
            }),
            Err(e @ ReserveError::OutOfStock(_)) => {
                Err(ActivityError::permanent(codes::OUT_OF_STOCK, e.to_string()))
            }
            Err(e @ ReserveError::UnknownProducts(_)) => Err(ActivityError::permanent(
                codes::UNKNOWN_PRODUCT,
                e.to_string(),
            )),
            Err(
                e @ (ReserveError::NoItems
                | ReserveError::ZeroQuantity { .. }
                | ReserveError::TooMany(_)),
            ) => Err(ActivityError::permanent(
                codes::INVALID_ITEMS,
                e.to_string(),
            )),
            Err(ReserveError::Database(e)) => Err(db_error(e)),
        }
    }
}

/// `inventory.release`: gives the reserve step's units back. Releasing a reservation that is
/// already released, or that never happened, succeeds.
#[derive(Debug, Clone)]
pub struct Release {
    pub db: Db,
}

#[async_trait]
impl Activity for Release {
    const NAME: &'static str = INVENTORY_RELEASE;
    // The compensation only needs the step it undoes, which the task context names.
    type Input = serde_json::Value;
    type Output = serde_json::Value;

    async fn run(
        &self,
        ctx: &TaskContext,
        _input: serde_json::Value,
    ) -> Result<serde_json::Value, ActivityError> {
        let outcome = reservations::release(
            &self.db,
            &step_ref(ctx),
            &ctx.idempotency_key,
            "compensated",
        )
        .await
        .map_err(db_error)?;
        let released = match outcome {
            reservations::Released::Now => "released",
            reservations::Released::AlreadySettled(_) => "already_settled",
            reservations::Released::NeverReserved => "never_reserved",
        };
        metrics::released(released);
        Ok(serde_json::json!({ "outcome": released }))
    }
}

/// `inventory.restock`: puts the units the returned order bought back on hand, taken from the
/// order saga's committed reservation (what was actually sold, not what the return claims).
#[derive(Debug, Clone)]
pub struct Restock {
    pub db: Db,
}

#[async_trait]
impl Activity for Restock {
    const NAME: &'static str = INVENTORY_RESTOCK;
    type Input = ReturnSagaInput;
    type Output = serde_json::Value;

    async fn run(
        &self,
        ctx: &TaskContext,
        input: ReturnSagaInput,
    ) -> Result<serde_json::Value, ActivityError> {
        let order = StepRef {
            workflow_id: input.order_workflow_id,
            step: RESERVE.to_owned(),
        };
        let done = reservations::restock(&self.db, &order, &ctx.idempotency_key, ctx.workflow_id.0)
            .await
            .map_err(db_error)?;
        match done {
            reservations::Restocked::Now(units) => {
                Ok(serde_json::json!({ "outcome": "restocked", "units": units }))
            }
            reservations::Restocked::Already => {
                Ok(serde_json::json!({ "outcome": "already_restocked" }))
            }
            reservations::Restocked::NotSold => Err(ActivityError::permanent(
                codes::NOT_SOLD,
                format!(
                    "order workflow {} sold nothing to put back",
                    input.order_workflow_id
                ),
            )),
        }
    }
}

/// The forward and compensation tasks of one step carry the same workflow id and step name; that
/// pair, not the (phase-specific) idempotency key, names the reservation.
fn step_ref(ctx: &TaskContext) -> StepRef {
    StepRef {
        workflow_id: ctx.workflow_id.0,
        step: ctx.step.clone(),
    }
}

fn db_error(e: sqlx::Error) -> ActivityError {
    tracing::warn!(error = %e, "inventory database error; the task will be retried");
    ActivityError::retryable(codes::DATABASE, "the inventory database is unavailable")
}

/// The inventory's activity handlers, for a worker.
pub fn handlers(db: Db, ttl: Duration) -> Vec<Arc<dyn Handler>> {
    vec![
        Arc::new(Reserve {
            db: db.clone(),
            ttl,
        }),
        Arc::new(Release { db: db.clone() }),
        Arc::new(Restock { db }),
    ]
}
