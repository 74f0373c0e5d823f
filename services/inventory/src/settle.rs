//! Settles reservations when their saga finishes, following the engine's `WorkflowFinished`
//! events: a completed saga's units are sold; any other end releases what is still held (a
//! terminated saga compensates nothing, and a held unit no order will take is a lost sale).

use orderflow_core::{WorkflowFinished, WorkflowStatus};
use orderflow_service_kit::db::Db;

use crate::{metrics, model::ReservationStatus, store::reservations};

/// The inventory's events queue (before the prefix).
pub const EVENTS_QUEUE: &str = "inventory.workflow-events";

/// Applies one finished saga to its reservations. Idempotent: a redelivered event finds nothing
/// left in `reserved`.
pub async fn on_workflow_finished(db: &Db, event: &WorkflowFinished) -> Result<(), sqlx::Error> {
    let (to, reason) = match event.status {
        WorkflowStatus::Completed => (ReservationStatus::Committed, "saga_completed"),
        WorkflowStatus::Compensated => (ReservationStatus::Released, "saga_compensated"),
        WorkflowStatus::Cancelled => (ReservationStatus::Released, "saga_cancelled"),
        WorkflowStatus::Terminated => (ReservationStatus::Released, "saga_terminated"),
        // Not an end: an operator may still resume the saga, which then needs its units.
        WorkflowStatus::Running | WorkflowStatus::Compensating | WorkflowStatus::NeedsAttention => {
            return Ok(());
        }
    };
    let n = reservations::settle_workflow(db, event.workflow_id.0, to, reason).await?;
    if n > 0 {
        metrics::settled(reason, n);
        tracing::debug!(workflow_id = %event.workflow_id, settled = n, reason, "reservations settled");
    }
    Ok(())
}
