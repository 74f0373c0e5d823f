//! Saga definitions. Each definition is versioned; every version that running sagas may still use
//! stays registered in [`registry`], and new sagas start on the latest one.
//!
//! - [`order`]: the order saga (reserve → charge → create order → notify).
//! - [`returns`]: the return saga (instructions → wait for the parcel → refund → restock →
//!   confirm).

pub mod order;
pub mod replay;
pub mod returns;

use orderflow_core::Registry;

/// Every workflow type and version this build can run. New orders start on v3 (v1 with retry
/// budgets that outlast the Stripe circuit breaker); sagas already on v1 finish on v1. v2 (the
/// fraud screen) is deployed beside them but pinned out until its workers (`fraud.check`) run in
/// production. The return saga is on v1.
pub fn registry() -> Registry {
    Registry::new()
        .with(order::v1())
        .with(order::v2())
        .with(order::v3())
        .pin(order::ORDER_SAGA, 3)
        .with(returns::v1())
}

#[cfg(test)]
mod tests {
    use super::*;
    use order::contracts::{FRAUD_CHECK, ORDER_SAGA_ACTIVITIES};
    use returns::contracts::RETURN_SAGA_ACTIVITIES;

    #[test]
    fn the_registry_names_every_activity_of_every_version_once() {
        let mut expected: Vec<&str> = ORDER_SAGA_ACTIVITIES.to_vec();
        expected.push(FRAUD_CHECK);
        expected.extend(RETURN_SAGA_ACTIVITIES);
        expected.sort_unstable();
        assert_eq!(registry().activities(), expected);
    }
}
