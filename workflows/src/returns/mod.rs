//! The return saga: a customer sends a confirmed order back and gets their money back.
//!
//! | # | step | activity / signal | compensation | kind |
//! |---|---|---|---|---|
//! | 1 | instruct | `notification.return_instructions` | `notification.return_expired` | compensatable |
//! | 2 | await_parcel | signal `parcel_received`, 14 days | none | wait |
//! | 3 | refund | `payment.refund_return` | none | pivot |
//! | 4 | restock | `inventory.restock` | none | retriable |
//! | 5 | confirm | `notification.return_refunded` | none | retriable |
//!
//! If the parcel does not arrive within the wait, the wait fails before the pivot, so the saga
//! compensates its one completed step: the customer, who was sent the instructions, is told the
//! return expired, and the saga ends `compensated`. Once the refund succeeded the saga only moves
//! forward: the stock goes back and the customer hears about the refund, each retried until done.

use std::time::Duration;

pub mod contracts;

use contracts::{
    INVENTORY_RESTOCK, NOTIFICATION_RETURN_EXPIRED, NOTIFICATION_RETURN_INSTRUCTIONS,
    NOTIFICATION_RETURN_REFUNDED, PARCEL_RECEIVED, PAYMENT_REFUND_RETURN, ReturnSagaInput,
};
use orderflow_core::{RetryPolicy, SagaDefinition, Step};

/// The stored workflow type name.
pub const RETURN_SAGA: &str = "return";

/// Step names (stored in histories).
pub const INSTRUCT: &str = "instruct";
pub const AWAIT_PARCEL: &str = "await_parcel";
pub const REFUND: &str = "refund";
pub const RESTOCK: &str = "restock";
pub const CONFIRM: &str = "confirm";

/// How long a customer has to send the parcel back.
pub const PARCEL_WAIT: Duration = Duration::from_secs(14 * 24 * 3600);

/// Version 1 with the 14-day wait, as deployed.
pub fn v1() -> SagaDefinition {
    v1_waiting(PARCEL_WAIT)
}

/// Version 1 with another wait for the parcel: tests use seconds. A deployment keeps
/// [`PARCEL_WAIT`], since the wait is part of the definition's fingerprint.
pub fn v1_waiting(parcel_wait: Duration) -> SagaDefinition {
    let forever = RetryPolicy {
        max_interval: Duration::from_secs(60),
        ..RetryPolicy::default()
    };
    SagaDefinition::builder(RETURN_SAGA, 1)
        .input::<ReturnSagaInput>()
        .step(
            Step::compensatable(INSTRUCT, NOTIFICATION_RETURN_INSTRUCTIONS)
                .compensate_with(NOTIFICATION_RETURN_EXPIRED)
                // Telling a customer their return expired must not wait on an operator.
                .compensation_retry(RetryPolicy {
                    max_attempts: 30,
                    ..forever.clone()
                }),
        )
        .step(Step::wait(AWAIT_PARCEL, PARCEL_RECEIVED, parcel_wait))
        // The money goes back in one go; a Stripe outage is waited out, as the order saga's v3
        // waits out the breaker.
        .step(
            Step::pivot(REFUND, PAYMENT_REFUND_RETURN).retry(RetryPolicy {
                max_attempts: 9,
                ..RetryPolicy::default()
            }),
        )
        .step(Step::retriable(RESTOCK, INVENTORY_RESTOCK).retry(forever.clone()))
        .step(Step::retriable(CONFIRM, NOTIFICATION_RETURN_REFUNDED).retry(forever))
        .build()
        .expect("the return saga definition is valid")
}
