//! The order saga, exactly as DESIGN.md §1:
//!
//! | # | step | activity | compensation | kind |
//! |---|---|---|---|---|
//! | 1 | reserve | `inventory.reserve` | `inventory.release` | compensatable |
//! | 2 | charge | `payment.charge` | `payment.refund` | compensatable |
//! | 3 | create_order | `order.create` | `order.cancel` | pivot |
//! | 4 | notify | `notification.send` | none | retriable |

use std::time::Duration;

use orderflow_activities::contracts::{
    INVENTORY_RELEASE, INVENTORY_RESERVE, NOTIFICATION_SEND, ORDER_CANCEL, ORDER_CREATE,
    OrderSagaInput, PAYMENT_CHARGE, PAYMENT_REFUND,
};
use orderflow_core::{RetryPolicy, SagaDefinition, Step};

/// The stored workflow type name.
pub const ORDER_SAGA: &str = "order";

/// Step names (stored in histories).
pub const RESERVE: &str = "reserve";
pub const CHARGE: &str = "charge";
pub const CREATE_ORDER: &str = "create_order";
pub const NOTIFY: &str = "notify";

/// Version 1 of the order saga.
pub fn v1() -> SagaDefinition {
    let business = |codes: &[&str]| RetryPolicy {
        non_retryable_codes: codes.iter().map(|c| (*c).to_owned()).collect(),
        ..RetryPolicy::default()
    };
    SagaDefinition::builder(ORDER_SAGA, 1)
        .input::<OrderSagaInput>()
        .deadline(Duration::from_secs(15 * 60))
        .step(
            Step::compensatable(RESERVE, INVENTORY_RESERVE)
                .compensate_with(INVENTORY_RELEASE)
                .retry(business(&["out_of_stock", "unknown_product"])),
        )
        .step(
            Step::compensatable(CHARGE, PAYMENT_CHARGE)
                .compensate_with(PAYMENT_REFUND)
                .retry(business(&["card_declined"])),
        )
        .step(Step::pivot(CREATE_ORDER, ORDER_CREATE).compensate_with(ORDER_CANCEL))
        .step(
            Step::retriable(NOTIFY, NOTIFICATION_SEND).retry(RetryPolicy {
                max_interval: Duration::from_secs(60),
                ..RetryPolicy::default()
            }),
        )
        .build()
        .expect("the order saga definition is valid")
}
