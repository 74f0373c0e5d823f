//! The notification service's Prometheus metrics, in the services' registry that `/metrics`
//! serves.

use std::sync::LazyLock;

use orderflow_service_kit::http::REGISTRY;
use prometheus::{IntCounterVec, Opts};

use crate::model::Channel;

static DELIVERIES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    let c = IntCounterVec::new(
        Opts::new(
            "notification_deliveries_total",
            "Delivery attempts by channel, provider and outcome (sent, delayed, failed)",
        ),
        &["channel", "provider", "outcome"],
    )
    .expect("valid metric");
    REGISTRY
        .register(Box::new(c.clone()))
        .expect("the metric is registered once");
    c
});

pub(crate) fn delivery(channel: Channel, provider: &str, outcome: &str) {
    DELIVERIES
        .with_label_values(&[channel.as_str(), provider, outcome])
        .inc();
}
