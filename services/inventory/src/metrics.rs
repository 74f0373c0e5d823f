//! The inventory's Prometheus metrics, in the services' registry that `/metrics` serves.

use std::sync::LazyLock;

use orderflow_service_kit::http::REGISTRY;
use prometheus::{IntCounterVec, Opts};

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    REGISTRY
        .register(Box::new(c.clone()))
        .expect("the metric is registered once");
    c
}

static RESERVATIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "inventory_reserve_total",
        "inventory.reserve tasks by outcome (reserved, out_of_stock, unknown_product, ...)",
        &["outcome"],
    )
});

static SETTLED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "inventory_reservations_settled_total",
        "Reservations leaving `reserved`, by how (committed, released, expired, ...)",
        &["how"],
    )
});

pub(crate) fn reserve_outcome(outcome: &str) {
    RESERVATIONS.with_label_values(&[outcome]).inc();
}

pub(crate) fn released(outcome: &str) {
    SETTLED.with_label_values(&[outcome]).inc();
}

pub(crate) fn settled(how: &str, n: usize) {
    SETTLED.with_label_values(&[how]).inc_by(n as u64);
}
