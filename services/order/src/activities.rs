//! The order saga's pivot and its compensation:
//!
//! - `order.create` confirms the order (creating it from the saga input when the saga was
//!   started directly on the engine, so every order saga has an order to show).
//! - `order.cancel` undoes that if the saga compensates through this step.
//!
//! Both are idempotent on their own: confirming a confirmed order or cancelling a cancelled one
//! changes nothing, so redelivered tasks need no separate dedupe record.

use std::sync::Arc;

use async_trait::async_trait;
use orderflow_activities::{Activity, ActivityError, TaskContext, worker::Handler};
use orderflow_service_kit::db::Db;
use orderflow_workflows::order::contracts::{
    ORDER_CANCEL, ORDER_CREATE, OrderConfirmation, OrderSagaInput,
};

use crate::{
    model::OrderStatus,
    store::{self, ConfirmRow, PricedLine},
};

fn db_error(e: sqlx::Error) -> ActivityError {
    // The database is back soon or an operator must look: either way, retry.
    ActivityError::retryable("database", e.to_string())
}

/// `order.create`.
#[derive(Clone, Debug)]
pub struct CreateOrder {
    pub db: Db,
}

#[async_trait]
impl Activity for CreateOrder {
    const NAME: &'static str = ORDER_CREATE;
    type Input = OrderSagaInput;
    type Output = OrderConfirmation;

    async fn run(
        &self,
        ctx: &TaskContext,
        input: OrderSagaInput,
    ) -> Result<OrderConfirmation, ActivityError> {
        let items: Vec<PricedLine> = input
            .items
            .iter()
            .map(|i| PricedLine {
                product_id: i.product_id.clone(),
                quantity: i.quantity,
                unit_price_minor: None,
            })
            .collect();
        let status = store::confirm(
            &self.db,
            &ConfirmRow {
                id: input.order_id,
                user_id: input.user_id,
                items: &items,
                total_minor: input.total.amount_minor,
                currency: &input.total.currency,
                email: &input.email,
                payment_method: &input.payment_method,
                workflow_id: ctx.workflow_id.0,
            },
        )
        .await
        .map_err(db_error)?;
        if status == OrderStatus::Cancelled {
            // Cancelled before its saga could confirm it: the pivot must fail so the saga
            // refunds and releases.
            return Err(ActivityError::permanent(
                "order_cancelled",
                format!("order {} was cancelled", input.order_id),
            ));
        }
        Ok(OrderConfirmation {
            order_id: input.order_id,
            status: "confirmed".to_owned(),
        })
    }
}

/// `order.cancel`.
#[derive(Clone, Debug)]
pub struct CancelOrder {
    pub db: Db,
}

#[async_trait]
impl Activity for CancelOrder {
    const NAME: &'static str = ORDER_CANCEL;
    type Input = OrderSagaInput;
    type Output = OrderConfirmation;

    async fn run(
        &self,
        _ctx: &TaskContext,
        input: OrderSagaInput,
    ) -> Result<OrderConfirmation, ActivityError> {
        // A missing order (create never ran) has nothing to undo.
        store::cancel_for_compensation(&self.db, input.order_id)
            .await
            .map_err(db_error)?;
        Ok(OrderConfirmation {
            order_id: input.order_id,
            status: "cancelled".to_owned(),
        })
    }
}

/// The order service's activities, for a worker, over the order database (a [`Db`] or a
/// Postgres pool).
pub fn handlers(db: impl Into<Db>) -> Vec<Arc<dyn Handler>> {
    let db = db.into();
    vec![
        Arc::new(CreateOrder { db: db.clone() }),
        Arc::new(CancelOrder { db }),
    ]
}
