//! The order's status follows its saga: when the engine says an order saga finished, the order
//! becomes confirmed or cancelled with the reason (out of stock, payment declined, cancelled by
//! the customer or an operator).

use orderflow_core::{WorkflowFinished, WorkflowStatus};
use orderflow_service_kit::db::Db;
use orderflow_workflows::order::contracts::codes;
use uuid::Uuid;

use crate::{
    model::CancelCode,
    store::{self, Outcome, Tx},
};

/// Error codes of the saga's activities that mean the payment was refused.
const DECLINED: [&str; 2] = [codes::CARD_DECLINED, codes::INSUFFICIENT_FUNDS];

/// What the saga's end means for its order. `cancel_requested` is whether the owner asked.
pub fn outcome(event: &WorkflowFinished, cancel_requested: bool) -> Outcome {
    let reason = || event.reason.clone().unwrap_or_default();
    match event.status {
        WorkflowStatus::Completed => Outcome::Confirmed,
        WorkflowStatus::Compensated => {
            let code = event.cause.as_ref().map(|c| c.code.as_str());
            let (code, reason) = match code {
                Some(codes::OUT_OF_STOCK) => (CancelCode::OutOfStock, "out of stock".to_owned()),
                Some(c) if DECLINED.contains(&c) => {
                    (CancelCode::PaymentDeclined, "payment declined".to_owned())
                }
                _ if cancel_requested => (
                    CancelCode::CancelledByUser,
                    "cancelled by the customer".to_owned(),
                ),
                Some(c) => (CancelCode::Failed, format!("the order failed ({c})")),
                None => (
                    CancelCode::Failed,
                    format!("the order failed: {}", reason()),
                ),
            };
            Outcome::Cancelled { code, reason }
        }
        WorkflowStatus::Cancelled | WorkflowStatus::Terminated => {
            if cancel_requested {
                Outcome::Cancelled {
                    code: CancelCode::CancelledByUser,
                    reason: "cancelled by the customer".to_owned(),
                }
            } else {
                Outcome::Cancelled {
                    code: CancelCode::CancelledByOperator,
                    reason: format!("cancelled by an operator: {}", reason()),
                }
            }
        }
        WorkflowStatus::NeedsAttention | WorkflowStatus::Running | WorkflowStatus::Compensating => {
            Outcome::Noted
        }
    }
}

fn status_name(s: WorkflowStatus) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("{s:?}").to_lowercase())
}

/// Applies one `WorkflowFinished` to its order. Events of other workflow types or without an
/// order id are ignored; an order this service never stored is ignored too (its saga was started
/// directly on the engine and failed before `order.create`).
pub async fn on_workflow_finished(db: &Db, event: &WorkflowFinished) -> Result<(), sqlx::Error> {
    if event.workflow_type != "order" {
        return Ok(());
    }
    let Some(order) = event
        .business_keys
        .get("order_id")
        .and_then(|v| v.as_str())
        .and_then(|s| s.parse::<Uuid>().ok())
    else {
        tracing::warn!(workflow = %event.workflow_id, "an order saga without an order_id business key");
        return Ok(());
    };
    let mut tx = Tx::begin(db).await?;
    let Some(current) = store::get_for_update(&mut tx, order).await? else {
        tx.rollback().await?;
        return Ok(());
    };
    let outcome = outcome(event, current.cancel_requested_at.is_some());
    store::apply_finished(
        &mut tx,
        order,
        event.workflow_id.0,
        &status_name(event.status),
        &outcome,
    )
    .await?;
    tx.commit().await?;
    tracing::info!(%order, saga = ?event.status, ?outcome, "order follows its saga");
    Ok(())
}
