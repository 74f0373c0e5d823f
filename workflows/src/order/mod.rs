//! The order saga, exactly as DESIGN.md §1:
//!
//! | # | step | activity | compensation | kind |
//! |---|---|---|---|---|
//! | 1 | reserve | `inventory.reserve` | `inventory.release` | compensatable |
//! | 2 | charge | `payment.charge` | `payment.refund` | compensatable |
//! | 3 | create_order | `order.create` | `order.cancel` | pivot |
//! | 4 | notify | `notification.send` | none | retriable |

use std::time::Duration;

pub mod contracts;

use contracts::{
    FRAUD_CHECK, INVENTORY_RELEASE, INVENTORY_RESERVE, NOTIFICATION_SEND, ORDER_CANCEL,
    ORDER_CREATE, OrderSagaInput, PAYMENT_CHARGE, PAYMENT_REFUND, codes,
};
use orderflow_core::{RetryPolicy, SagaDefinition, Step};

/// The stored workflow type name.
pub const ORDER_SAGA: &str = "order";

/// Step names (stored in histories).
pub const RESERVE: &str = "reserve";
pub const CHARGE: &str = "charge";
pub const CREATE_ORDER: &str = "create_order";
pub const NOTIFY: &str = "notify";

/// v2 only: the fraud screen before the charge.
pub const FRAUD_SCREEN: &str = "fraud_check";

fn business(codes: &[&str]) -> RetryPolicy {
    RetryPolicy {
        non_retryable_codes: codes.iter().map(|c| (*c).to_owned()).collect(),
        ..RetryPolicy::default()
    }
}

fn reserve() -> Step {
    Step::compensatable(RESERVE, INVENTORY_RESERVE)
        .compensate_with(INVENTORY_RELEASE)
        .retry(business(&[codes::OUT_OF_STOCK, codes::UNKNOWN_PRODUCT]))
}

fn charge() -> Step {
    Step::compensatable(CHARGE, PAYMENT_CHARGE)
        .compensate_with(PAYMENT_REFUND)
        .retry(business(&[codes::CARD_DECLINED]))
}

fn create_order() -> Step {
    Step::pivot(CREATE_ORDER, ORDER_CREATE).compensate_with(ORDER_CANCEL)
}

/// v3's charge: retried for about 40–50 s, longer than the payment service's circuit breaker stays
/// open (30 s), so a short Stripe outage delays orders instead of cancelling them; and its refund
/// keeps being retried for about 20 minutes, because a refund owed must not wait on an operator
/// for an outage the size of a coffee break.
fn charge_outlasting_the_breaker() -> Step {
    Step::compensatable(CHARGE, PAYMENT_CHARGE)
        .compensate_with(PAYMENT_REFUND)
        .retry(RetryPolicy {
            max_attempts: 9,
            ..business(&[codes::CARD_DECLINED])
        })
        .compensation_retry(RetryPolicy {
            max_attempts: 30,
            max_interval: Duration::from_secs(60),
            ..RetryPolicy::default()
        })
}

fn notify() -> Step {
    Step::retriable(NOTIFY, NOTIFICATION_SEND).retry(RetryPolicy {
        max_interval: Duration::from_secs(60),
        ..RetryPolicy::default()
    })
}

/// Version 1 of the order saga. Frozen: sagas started on it must finish on it, and the recorded
/// histories in `tests/histories/` fail replay if it changes in a way that matters to them.
pub fn v1() -> SagaDefinition {
    SagaDefinition::builder(ORDER_SAGA, 1)
        .input::<OrderSagaInput>()
        .deadline(Duration::from_secs(15 * 60))
        .step(reserve())
        .step(charge())
        .step(create_order())
        .step(notify())
        .build()
        .expect("the order saga definition is valid")
}

/// Version 2: a read-only fraud screen (`fraud.check`) between the reservation and the charge.
/// A suspected fraud (`fraud_suspected`) releases the reservation and charges nothing.
pub fn v2() -> SagaDefinition {
    SagaDefinition::builder(ORDER_SAGA, 2)
        .input::<OrderSagaInput>()
        .deadline(Duration::from_secs(15 * 60))
        .step(reserve())
        .step(Step::read_only(FRAUD_SCREEN, FRAUD_CHECK).retry(business(&[codes::FRAUD_SUSPECTED])))
        .step(charge())
        .step(create_order())
        .step(notify())
        .build()
        .expect("the order saga definition is valid")
}

/// Version 3: v1's steps with [`charge_outlasting_the_breaker`]. v1 gave the charge up after
/// about 3 s, so the fault suite saw a short Stripe outage cancel most orders in flight, and its
/// refund after about 70 s, so an outage longer than that left a cancelled order's money with
/// an operator (`needs_attention`). New orders start here; sagas already on v1 finish on v1.
pub fn v3() -> SagaDefinition {
    SagaDefinition::builder(ORDER_SAGA, 3)
        .input::<OrderSagaInput>()
        .deadline(Duration::from_secs(15 * 60))
        .step(reserve())
        .step(charge_outlasting_the_breaker())
        .step(create_order())
        .step(notify())
        .build()
        .expect("the order saga definition is valid")
}
