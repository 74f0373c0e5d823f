//! The inventory's settings: the shared [`ServiceConfig`] plus how long reservations hold.

use std::time::Duration;

use orderflow_service_kit::{ServiceConfig, config::ports};

/// Everything [`crate::run`] needs.
#[derive(Clone, Debug)]
pub struct InventoryConfig {
    pub service: ServiceConfig,
    /// How long a reservation holds its units if its saga never settles; then the sweeper
    /// releases them. Longer than the order saga's deadline (15 min), so a saga that is only slow
    /// never loses its stock.
    pub reservation_ttl: Duration,
    /// How often the sweeper looks for expired reservations at the latest.
    pub sweep_interval: Duration,
    /// Insert the demo catalogue at start if there are no products (`orderflow up`).
    pub seed_demo_products: bool,
}

impl InventoryConfig {
    pub const DEFAULT_RESERVATION_TTL: Duration = Duration::from_secs(30 * 60);
    pub const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(30);

    /// The defaults around `service`.
    pub fn new(service: ServiceConfig) -> Self {
        Self {
            service,
            reservation_ttl: Self::DEFAULT_RESERVATION_TTL,
            sweep_interval: Self::DEFAULT_SWEEP_INTERVAL,
            seed_demo_products: false,
        }
    }

    /// This machine's local services, port 8082, database `orderflow_inventory`.
    pub fn local() -> Self {
        Self::new(ServiceConfig::local("inventory", ports::INVENTORY))
    }
}
