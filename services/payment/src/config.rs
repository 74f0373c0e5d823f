//! The payment service's settings: the shared [`ServiceConfig`] plus Stripe's.

use std::time::Duration;

use orderflow_service_kit::{ServiceConfig, config::ports};

use crate::breaker::BreakerConfig;

/// How to reach Stripe (or the local sandbox standing in for it).
#[derive(Clone)]
pub struct StripeConfig {
    /// Stripe's API base; `https://api.stripe.com/` in production, the sandbox's URL locally.
    pub api_base: String,
    /// The secret API key (`sk_...`).
    pub secret_key: String,
    /// The webhook endpoint's signing secret (`whsec_...`).
    pub webhook_secret: String,
    /// The longest one Stripe call may take; a task's deadline shortens it further.
    pub request_timeout: Duration,
    pub breaker: BreakerConfig,
}

// Hand-written so the secrets never reach a log line.
impl std::fmt::Debug for StripeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StripeConfig")
            .field("api_base", &self.api_base)
            .field("secret_key", &"<redacted>")
            .field("webhook_secret", &"<redacted>")
            .field("request_timeout", &self.request_timeout)
            .field("breaker", &self.breaker)
            .finish()
    }
}

impl StripeConfig {
    /// The local Stripe sandbox (`stripe-sandbox` binary) with its default keys.
    pub const SANDBOX_URL: &str = "http://127.0.0.1:12111/";
    pub const SANDBOX_SECRET_KEY: &str = "sk_test_orderflow_sandbox";
    pub const SANDBOX_WEBHOOK_SECRET: &str = "whsec_orderflow_sandbox";

    /// The sandbox at `api_base` with the sandbox's keys and the default timeout and breaker.
    pub fn sandbox(api_base: impl Into<String>) -> Self {
        Self {
            api_base: api_base.into(),
            secret_key: Self::SANDBOX_SECRET_KEY.to_owned(),
            webhook_secret: Self::SANDBOX_WEBHOOK_SECRET.to_owned(),
            request_timeout: Duration::from_secs(10),
            breaker: BreakerConfig::default(),
        }
    }
}

/// Everything [`crate::run`] needs.
#[derive(Clone, Debug)]
pub struct PaymentConfig {
    pub service: ServiceConfig,
    pub stripe: StripeConfig,
    /// How long the outcome cache (Redis, or in-process when `service.redis_url` is empty)
    /// remembers a charge's outcome. Stripe keeps idempotency keys for 24 hours; after that the
    /// database still answers.
    pub outcome_ttl: Duration,
    /// How long received webhook events are kept (`None`: forever); see [`crate::purge`].
    pub webhook_retention: Option<Duration>,
}

impl PaymentConfig {
    pub const DEFAULT_OUTCOME_TTL: Duration = Duration::from_secs(24 * 60 * 60);
    /// Stripe redelivers an event for up to three days; a month covers it with room.
    pub const DEFAULT_WEBHOOK_RETENTION: Duration = Duration::from_secs(90 * 86_400);

    /// The defaults around `service` and `stripe`.
    pub fn new(service: ServiceConfig, stripe: StripeConfig) -> Self {
        Self {
            service,
            stripe,
            outcome_ttl: Self::DEFAULT_OUTCOME_TTL,
            webhook_retention: Some(Self::DEFAULT_WEBHOOK_RETENTION),
        }
    }

    /// This machine's local services, port 8083, database `orderflow_payment`, and the Stripe
    /// sandbox on its default port.
    pub fn local() -> Self {
        Self::new(
            ServiceConfig::local("payment", ports::PAYMENT),
            StripeConfig::sandbox(StripeConfig::SANDBOX_URL),
        )
    }
}
