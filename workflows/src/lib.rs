//! Saga definitions. Each definition is versioned; every version that running sagas may still use
//! stays registered in [`registry`], and new sagas start on the latest one.
//!
//! - [`order`]: the order saga (reserve → charge → create order → notify).

pub mod order;
pub mod replay;

use orderflow_core::Registry;

/// Every workflow type and version this build can run.
pub fn registry() -> Registry {
    Registry::new().with(order::v1())
}
