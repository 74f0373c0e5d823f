//! What the notification service's test files share.

use orderflow_activities::TaskContext;

use orderflow_core::Phase;
use orderflow_workflows::order::contracts::{Money, OrderItem, OrderSagaInput};
use uuid::Uuid;

/// The first attempt of the saga's notify step.
pub fn ctx(workflow: Uuid) -> TaskContext {
    TaskContext::first_attempt(workflow, "notify", Phase::Forward)
}

/// An order of two `sku-1` for 25.99 EUR by `email`.
pub fn order(email: &str) -> OrderSagaInput {
    OrderSagaInput {
        order_id: Uuid::new_v4(),
        user_id: Uuid::new_v4(),
        items: vec![OrderItem {
            product_id: "sku-1".into(),
            quantity: 2,
        }],
        total: Money {
            amount_minor: 2599,
            currency: "EUR".into(),
        },
        payment_method: "pm_card_visa".into(),
        email: email.into(),
    }
}
