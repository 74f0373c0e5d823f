//! The payment service's metrics, on the services' registry that `/metrics` serves.

use std::sync::LazyLock;

use orderflow_service_kit::http::REGISTRY;
use prometheus::{IntCounterVec, IntGauge, Opts};

fn register<M: prometheus::core::Collector + Clone + 'static>(m: M) -> M {
    REGISTRY
        .register(Box::new(m.clone()))
        .expect("metric registers once");
    m
}

/// 0 closed, 1 half-open, 2 open.
pub static STRIPE_CIRCUIT_STATE: LazyLock<IntGauge> = LazyLock::new(|| {
    register(
        IntGauge::new(
            "payment_stripe_circuit_state",
            "State of the Stripe circuit breaker: 0 closed, 1 half-open, 2 open",
        )
        .expect("valid metric"),
    )
});

/// Charges by outcome: `succeeded`, `declined`, `failed` (retryable), `cached` (answered from
/// Redis without touching Stripe or the database).
pub static CHARGES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new("payment_charges_total", "payment.charge tasks by outcome"),
            &["outcome"],
        )
        .expect("valid metric"),
    )
});

/// Refunds by outcome: `refunded`, `noop` (nothing was charged), `failed` (retryable).
pub static REFUNDS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new("payment_refunds_total", "payment.refund tasks by outcome"),
            &["outcome"],
        )
        .expect("valid metric"),
    )
});

/// Stripe webhook deliveries by outcome: `recorded`, `duplicate`, `bad_signature`.
pub static WEBHOOKS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "payment_stripe_webhooks_total",
                "Stripe webhook deliveries by outcome",
            ),
            &["outcome"],
        )
        .expect("valid metric"),
    )
});
