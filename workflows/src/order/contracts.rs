//! The order saga's contracts with the services that do its steps: the activity names (durable:
//! renaming one strands the tasks already queued under the old name), their typed inputs and
//! outputs, and the error codes that cross a service boundary (the saga's retry policies and the
//! order service's follower read them, the activities produce them).

use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub const INVENTORY_RESERVE: &str = "inventory.reserve";
pub const INVENTORY_RELEASE: &str = "inventory.release";
pub const PAYMENT_CHARGE: &str = "payment.charge";
pub const PAYMENT_REFUND: &str = "payment.refund";
pub const ORDER_CREATE: &str = "order.create";
pub const ORDER_CANCEL: &str = "order.cancel";
pub const NOTIFICATION_SEND: &str = "notification.send";
/// Order saga v2 only: a read-only fraud screen before the charge.
pub const FRAUD_CHECK: &str = "fraud.check";

/// Every activity of the order saga, forward and compensating.
pub const ORDER_SAGA_ACTIVITIES: [&str; 7] = [
    INVENTORY_RESERVE,
    INVENTORY_RELEASE,
    PAYMENT_CHARGE,
    PAYMENT_REFUND,
    ORDER_CREATE,
    ORDER_CANCEL,
    NOTIFICATION_SEND,
];

/// Error codes of the order saga's activities that another party reads. They are stored in
/// histories and compared by name, so they are as durable as the activity names.
pub mod codes {
    /// `inventory.reserve`: not enough stock for an item; final.
    pub const OUT_OF_STOCK: &str = "out_of_stock";
    /// `inventory.reserve`: an item names no product of the catalogue; final.
    pub const UNKNOWN_PRODUCT: &str = "unknown_product";
    /// `payment.charge`: the card was declined; final.
    pub const CARD_DECLINED: &str = "card_declined";
    /// `payment.charge`: the card's funds do not cover the total; final.
    pub const INSUFFICIENT_FUNDS: &str = "insufficient_funds";
    /// `fraud.check` (order saga v2): the order looks fraudulent; final.
    pub const FRAUD_SUSPECTED: &str = "fraud_suspected";
}

/// Money in integer minor units (cents) with an ISO currency code; never a float.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Money {
    pub amount_minor: i64,
    pub currency: String,
}

/// One line of an order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderItem {
    pub product_id: String,
    pub quantity: u32,
}

/// The order saga's input: what `POST /workflows {"type":"order"}` carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderSagaInput {
    pub order_id: Uuid,
    pub user_id: Uuid,
    pub items: Vec<OrderItem>,
    pub total: Money,
    /// A Stripe payment method id (`pm_card_visa` in test mode).
    pub payment_method: String,
    pub email: String,
}

/// `inventory.reserve` output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    pub reservation_id: String,
}

/// `payment.charge` output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Charge {
    pub payment_id: String,
    /// Stripe's PaymentIntent id.
    pub payment_intent_id: String,
}

/// `payment.refund` output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refund {
    /// The payment refunded or closed; `None` if the charge step never reached the payment service.
    pub payment_id: Option<String>,
    /// Stripe's refund id; `None` when there was nothing to refund (declined, never charged).
    pub refund_id: Option<String>,
}

/// `order.create` output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderConfirmation {
    pub order_id: Uuid,
    pub status: String,
}

/// `notification.send` output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    pub notification_id: String,
}
