//! Saga definitions. Each definition is versioned; every version that running sagas may still use
//! stays registered in [`registry`], and new sagas start on the latest one.
//!
//! - [`order`]: the order saga (reserve → charge → create order → notify).

pub mod order;
pub mod replay;

use orderflow_core::Registry;

/// Every workflow type and version this build can run. Order saga v2 is deployed beside v1 but
/// pinned: new orders start on v1 until the fraud screen's workers (`fraud.check`) run in
/// production; unpinning is the one-line rollout, and sagas already on v1 finish on v1.
pub fn registry() -> Registry {
    Registry::new()
        .with(order::v1())
        .with(order::v2())
        .pin(order::ORDER_SAGA, 1)
}
