//! What the order service needs beyond [`ServiceConfig`].

use std::time::Duration;

use orderflow_service_kit::{ServiceConfig, config::ports};

#[derive(Clone, Debug)]
pub struct OrderConfig {
    pub service: ServiceConfig,
    /// The inventory service, which prices an order's items (`GET /api/v1/products?ids=`).
    pub inventory_url: String,
    /// The user service, which knows the caller's email (`GET /api/v1/users/me`).
    pub user_url: String,
    /// How often the starter looks for orders whose saga has not been started yet. It is also
    /// woken right after each new order, so this only bounds the delay after an engine outage.
    pub start_interval: Duration,
    /// Longest pause between two attempts to start one order's saga.
    pub start_backoff_cap: Duration,
    /// Timeout of each call to another service.
    pub call_timeout: Duration,
}

impl OrderConfig {
    pub fn new(service: ServiceConfig) -> Self {
        Self {
            service,
            inventory_url: format!("http://127.0.0.1:{}", ports::INVENTORY),
            user_url: format!("http://127.0.0.1:{}", ports::USER),
            start_interval: Duration::from_secs(1),
            start_backoff_cap: Duration::from_secs(30),
            call_timeout: Duration::from_secs(5),
        }
    }

    /// Defaults for this machine: port 8081, database `orderflow_order`, the other services on
    /// their default ports.
    pub fn local() -> Self {
        Self::new(ServiceConfig::local("order", ports::ORDER))
    }
}
