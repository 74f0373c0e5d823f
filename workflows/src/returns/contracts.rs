//! The return saga's contracts with the services that do its steps: activity names (durable, as
//! the order saga's are), the signal the warehouse sends, and the typed input and outputs.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::order::contracts::{Money, OrderItem};

/// notification: emails the customer how and by when to send the parcel back.
pub const NOTIFICATION_RETURN_INSTRUCTIONS: &str = "notification.return_instructions";
/// notification: the compensation of the instructions: tells the customer the return expired.
pub const NOTIFICATION_RETURN_EXPIRED: &str = "notification.return_expired";
/// payment: refunds the order's charge (found by the order saga's charge step).
pub const PAYMENT_REFUND_RETURN: &str = "payment.refund_return";
/// inventory: puts the returned items back in stock.
pub const INVENTORY_RESTOCK: &str = "inventory.restock";
/// notification: tells the customer the money is on its way back.
pub const NOTIFICATION_RETURN_REFUNDED: &str = "notification.return_refunded";

/// Every activity of the return saga, forward and compensating.
pub const RETURN_SAGA_ACTIVITIES: [&str; 5] = [
    NOTIFICATION_RETURN_INSTRUCTIONS,
    NOTIFICATION_RETURN_EXPIRED,
    PAYMENT_REFUND_RETURN,
    INVENTORY_RESTOCK,
    NOTIFICATION_RETURN_REFUNDED,
];

/// The signal the warehouse sends when the parcel is in (through `POST
/// /api/v1/workflows/{id}/signals/parcel_received` or the admin UI); its payload is a
/// [`ParcelReceived`] and becomes the wait step's output.
pub const PARCEL_RECEIVED: &str = "parcel_received";

/// The return saga's input: what the order service sends when a customer asks to return a
/// confirmed order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReturnSagaInput {
    pub order_id: Uuid,
    /// The order saga that charged the order: its charge step's idempotency key
    /// (`<order_workflow_id>/charge`) finds the payment to refund.
    pub order_workflow_id: Uuid,
    pub user_id: Uuid,
    /// What goes back on the shelf.
    pub items: Vec<OrderItem>,
    /// What is refunded.
    pub total: Money,
    pub email: String,
}

/// The `parcel_received` signal's payload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParcelReceived {
    /// Who took the parcel in (a warehouse, a desk).
    pub received_by: String,
}

/// `payment.refund_return` output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReturnRefund {
    pub payment_id: String,
    /// Stripe's refund id.
    pub refund_id: Option<String>,
}
