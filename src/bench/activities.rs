//! The saga benchmark's activities (`orderflow bench`): every step of the order saga is one
//! idempotent single-row write into its own table of the bench database (`migrations/bench/`),
//! so a benchmark measures the engine's cost around the cheapest real effect a service can have.
//!
//! - forward steps insert one row (`on conflict do nothing`: a repeated attempt finds the first);
//! - compensations upsert the same row with its undone flag set, so a compensation that overtakes
//!   its forward attempt leaves a tombstone the late attempt cannot overwrite;
//! - `payment.charge` declines (non-retryable `card_declined`) when the saga's payment method is
//!   [`DECLINED_CARD`], which is how `--fail-every` makes a saga compensate.

use std::sync::Arc;

use async_trait::async_trait;
use orderflow_core::ActivityError;
use serde_json::{Value, json};
use sqlx::{PgPool, migrate::Migrator};
use uuid::Uuid;

use orderflow_activities::{TaskContext, worker::Handler};
use orderflow_workflows::order::contracts::{
    INVENTORY_RELEASE, INVENTORY_RESERVE, NOTIFICATION_SEND, ORDER_CANCEL, ORDER_CREATE,
    OrderSagaInput, PAYMENT_CHARGE, PAYMENT_REFUND,
};

/// The payment method `payment.charge` declines, named like Stripe's test card for it.
pub const DECLINED_CARD: &str = "pm_card_chargeDeclined";

/// The bench tables' migrations. They share the bench database with the engine's, so versions
/// start at 2001 and missing versions (the engine's) are ignored.
pub fn migrator() -> Migrator {
    let mut migrator = sqlx::migrate!("migrations/bench");
    migrator.set_ignore_missing(true);
    migrator
}

/// What one bench activity writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Effect {
    Reserve,
    Release,
    Charge,
    Refund,
    CreateOrder,
    CancelOrder,
    Notify,
}

impl Effect {
    fn of(activity: &str) -> Option<Self> {
        Some(match activity {
            INVENTORY_RESERVE => Self::Reserve,
            INVENTORY_RELEASE => Self::Release,
            PAYMENT_CHARGE => Self::Charge,
            PAYMENT_REFUND => Self::Refund,
            ORDER_CREATE => Self::CreateOrder,
            ORDER_CANCEL => Self::CancelOrder,
            NOTIFICATION_SEND => Self::Notify,
            _ => return None,
        })
    }

    /// The one statement of the effect. Every one is a single-row write keyed by the workflow,
    /// so running it twice changes nothing the first run did not (DESIGN.md §3.5).
    fn sql(self) -> &'static str {
        match self {
            Self::Reserve => {
                "insert into reservations (workflow_id, order_id, quantity) values ($1, $2, $3)
                 on conflict do nothing"
            }
            Self::Release => {
                "insert into reservations (workflow_id, order_id, quantity, released)
                 values ($1, $2, $3, true)
                 on conflict (workflow_id) do update set released = true"
            }
            Self::Charge => {
                "insert into payments (workflow_id, order_id, amount_minor, currency)
                 values ($1, $2, $3, $4) on conflict do nothing"
            }
            Self::Refund => {
                "insert into payments (workflow_id, order_id, amount_minor, currency, refunded)
                 values ($1, $2, $3, $4, true)
                 on conflict (workflow_id) do update set refunded = true"
            }
            Self::CreateOrder => {
                "insert into orders (workflow_id, order_id) values ($1, $2) on conflict do nothing"
            }
            Self::CancelOrder => {
                "insert into orders (workflow_id, order_id, cancelled) values ($1, $2, true)
                 on conflict (workflow_id) do update set cancelled = true"
            }
            Self::Notify => {
                "insert into notifications (workflow_id, order_id, email) values ($1, $2, $3)
                 on conflict do nothing"
            }
        }
    }
}

/// One of the order saga's activities, done as a single-row write in the bench database.
#[derive(Clone, Debug)]
pub struct BenchActivity {
    name: &'static str,
    effect: Effect,
    pool: PgPool,
}

impl BenchActivity {
    /// The bench activity for `activity`, or `None` if the order saga has no such activity.
    pub fn new(activity: &'static str, pool: PgPool) -> Option<Self> {
        Some(Self {
            name: activity,
            effect: Effect::of(activity)?,
            pool,
        })
    }

    /// Does the effect for `workflow_id`: one single-row statement in its own transaction. The
    /// raw floor of the benchmark calls this directly, so it measures the very same writes.
    pub async fn write(&self, workflow_id: Uuid, input: &OrderSagaInput) -> sqlx::Result<()> {
        let quantity: u32 = input.items.iter().map(|i| i.quantity).sum();
        let query = sqlx::query(self.effect.sql())
            .bind(workflow_id)
            .bind(input.order_id);
        let query = match self.effect {
            Effect::Reserve | Effect::Release => {
                query.bind(i32::try_from(quantity).unwrap_or(i32::MAX))
            }
            Effect::Charge | Effect::Refund => query
                .bind(input.total.amount_minor)
                .bind(&input.total.currency),
            Effect::Notify => query.bind(&input.email),
            Effect::CreateOrder | Effect::CancelOrder => query,
        };
        query.execute(&self.pool).await?;
        Ok(())
    }
}

#[async_trait]
impl Handler for BenchActivity {
    fn activity(&self) -> &str {
        self.name
    }

    async fn handle(&self, ctx: &TaskContext, input: Value) -> Result<Value, ActivityError> {
        // No retry can fix input that does not fit the contract.
        let input: OrderSagaInput = serde_json::from_value(input).map_err(|e| {
            ActivityError::permanent("bad_input", format!("input of `{}`: {e}", self.name))
        })?;
        if self.effect == Effect::Charge && input.payment_method == DECLINED_CARD {
            return Err(ActivityError::permanent(
                "card_declined",
                "the card was declined",
            ));
        }
        self.write(ctx.workflow_id.0, &input).await.map_err(|e| {
            // A database outage passes; the step's retry policy brings the task back.
            ActivityError::retryable("database", e.to_string())
        })?;
        Ok(json!({ "order_id": input.order_id }))
    }
}

/// The forward steps' activities in saga order: what one successful saga writes.
pub const FORWARD: [&str; 4] = [
    INVENTORY_RESERVE,
    PAYMENT_CHARGE,
    ORDER_CREATE,
    NOTIFICATION_SEND,
];

/// A bench activity for every activity of the order saga.
pub fn order_saga_handlers(pool: PgPool) -> Vec<Arc<dyn Handler>> {
    orderflow_workflows::order::contracts::ORDER_SAGA_ACTIVITIES
        .iter()
        .filter_map(|&name| BenchActivity::new(name, pool.clone()))
        .map(|a| Arc::new(a) as Arc<dyn Handler>)
        .collect()
}
