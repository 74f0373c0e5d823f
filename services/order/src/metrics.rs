//! The order service's Prometheus metrics, in the services' registry that `/metrics` serves.

use std::sync::LazyLock;

use orderflow_service_kit::http::REGISTRY;
use prometheus::IntCounter;

static ORDERS_CREATED: LazyLock<IntCounter> = LazyLock::new(|| {
    let c = IntCounter::new(
        "orders_created_total",
        "Orders placed through POST /orders (a retried request with the same key counts once)",
    )
    .expect("valid metric");
    REGISTRY
        .register(Box::new(c.clone()))
        .expect("the metric is registered once");
    c
});

/// Counts one order stored by `POST /orders`.
pub(crate) fn order_created() {
    ORDERS_CREATED.inc();
}

/// Registers the series at start, so it reads 0 before the first order instead of missing.
pub(crate) fn register() {
    LazyLock::force(&ORDERS_CREATED);
}
