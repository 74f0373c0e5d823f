//! Stripe through async-stripe: create-and-confirm a PaymentIntent, refund one. Every call goes
//! through the circuit breaker, carries an `Idempotency-Key`, is bounded by a timeout, and ends
//! in a [`GatewayError`] that says what the caller must do.
//!
//! The client is used with `RequestStrategy::Idempotent` and no retries of its own: the saga's
//! retry policy decides when to try again, with the same key.

use std::{collections::HashMap, str::FromStr, time::Duration};

use stripe::{
    ApiErrorsType, Client, ClientBuilder, IdempotencyKey, RequestStrategy, StripeError,
    StripeRequest,
};
use stripe_core::{PaymentIntentStatus, payment_intent::CreatePaymentIntent, refund::CreateRefund};
use tokio::time::Instant;

use crate::{
    breaker::{CircuitBreaker, Open},
    config::StripeConfig,
    model::Payment,
};

/// What went wrong with a Stripe call, by what the caller must do about it.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The card was refused for good (`card_declined`, `expired_card`, ...): do not retry.
    #[error("card declined ({code}): {message}")]
    Declined {
        code: String,
        decline_code: Option<String>,
        message: String,
        payment_intent_id: Option<String>,
    },
    /// Stripe answered that the card could not be processed this time; a retry with a fresh
    /// idempotency key may succeed, and nothing was charged.
    #[error("card processing error: {message}")]
    CardProcessing { message: String },
    /// No usable answer (5xx, 409 for a key still in use, timeout, a lost connection, an
    /// unreadable body): Stripe may have acted, so the outcome is unknown and a retry must reuse
    /// the same idempotency key.
    #[error("Stripe unavailable: {0}")]
    Unavailable(String),
    /// Stripe answered 429: it did nothing with the request; retry later.
    #[error("Stripe rate-limited the request: {0}")]
    RateLimited(String),
    /// The breaker is open after too many failures: retry later.
    #[error(transparent)]
    CircuitOpen(#[from] Open),
    /// The charge was already fully refunded (a refund under another key got there first).
    #[error("already refunded")]
    AlreadyRefunded,
    /// Stripe rejected the request itself (bad parameters, bad key): a retry will not help
    /// until someone fixes the input or the configuration.
    #[error("Stripe rejected the request ({status}, {code:?}): {message}")]
    Rejected {
        status: u16,
        code: Option<String>,
        message: String,
    },
    /// The PaymentIntent did not end `succeeded` (it needs customer action, say).
    #[error("the PaymentIntent {payment_intent_id} ended `{status}`, not `succeeded`")]
    Incomplete {
        payment_intent_id: String,
        status: String,
    },
    #[error("Stripe client configuration: {0}")]
    Config(String),
}

impl GatewayError {
    /// Whether the failure says Stripe itself is unwell (what the breaker counts).
    fn is_outage(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::RateLimited(_))
    }
}

/// A Stripe account, reached through async-stripe, behind a circuit breaker.
#[derive(Clone, Debug)]
pub struct Gateway {
    client: Client,
    breaker: CircuitBreaker,
    request_timeout: Duration,
}

impl Gateway {
    pub fn new(config: &StripeConfig) -> Result<Self, GatewayError> {
        // async-stripe appends `v1/...` to the base as is.
        let mut base = config.api_base.clone();
        if !base.ends_with('/') {
            base.push('/');
        }
        let client = ClientBuilder::new(&config.secret_key)
            .url(base)
            .request_strategy(RequestStrategy::Once)
            .build()
            .map_err(|e| GatewayError::Config(e.to_string()))?;
        Ok(Self {
            client,
            breaker: CircuitBreaker::new(config.breaker.clone()),
            request_timeout: config.request_timeout,
        })
    }

    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }

    /// The timeout of one call: the configured one, shortened so the call ends before
    /// `deadline` (the task's), leaving a little time to record the outcome.
    fn timeout(&self, deadline: Option<Instant>) -> Duration {
        const MARGIN: Duration = Duration::from_millis(250);
        const FLOOR: Duration = Duration::from_millis(100);
        match deadline {
            Some(d) => self
                .request_timeout
                .min(
                    d.saturating_duration_since(Instant::now())
                        .saturating_sub(MARGIN),
                )
                .max(FLOOR),
            None => self.request_timeout,
        }
    }

    /// Phase 2 of a charge: creates and confirms a PaymentIntent for `payment` under `key`.
    /// Returns the intent's id once it succeeded.
    pub async fn charge(
        &self,
        payment: &Payment,
        key: &str,
        deadline: Option<Instant>,
    ) -> Result<String, GatewayError> {
        let currency = stripe_types::Currency::from_str(&payment.currency.to_ascii_lowercase())
            .map_err(|_| GatewayError::Config(format!("currency {}", payment.currency)))?;
        let metadata = HashMap::from([
            ("payment_id".to_owned(), payment.id.to_string()),
            ("order_id".to_owned(), payment.order_id.to_string()),
            ("workflow_id".to_owned(), payment.workflow_id.to_string()),
        ]);
        let request = CreatePaymentIntent::new(payment.amount_minor, currency)
            .payment_method(payment.payment_method.clone())
            .confirm(true)
            .metadata(metadata)
            .customize()
            .request_strategy(idempotent(key)?)
            .timeout(self.timeout(deadline));
        let intent = self.call(request.send(&self.client)).await?;
        if intent.status == PaymentIntentStatus::Succeeded {
            Ok(intent.id.to_string())
        } else {
            Err(GatewayError::Incomplete {
                payment_intent_id: intent.id.to_string(),
                status: intent.status.as_str().to_owned(),
            })
        }
    }

    /// Refunds the whole charge of `payment_intent_id` under `key`; returns the refund's id.
    pub async fn refund(
        &self,
        payment_intent_id: &str,
        payment_id: &str,
        key: &str,
        deadline: Option<Instant>,
    ) -> Result<String, GatewayError> {
        let request = CreateRefund::new()
            .payment_intent(payment_intent_id)
            .metadata(HashMap::from([(
                "payment_id".to_owned(),
                payment_id.to_owned(),
            )]))
            .customize()
            .request_strategy(idempotent(key)?)
            .timeout(self.timeout(deadline));
        let refund = self.call(request.send(&self.client)).await?;
        Ok(refund.id.to_string())
    }

    /// Runs one call behind the breaker and classifies its error.
    async fn call<T>(
        &self,
        send: impl Future<Output = Result<T, StripeError>>,
    ) -> Result<T, GatewayError> {
        let permit = self.breaker.permit(std::time::Instant::now())?;
        let result = send.await.map_err(classify);
        let healthy = result.as_ref().err().is_none_or(|e| !e.is_outage());
        permit.record(std::time::Instant::now(), healthy);
        result
    }
}

fn idempotent(key: &str) -> Result<RequestStrategy, GatewayError> {
    IdempotencyKey::new(key)
        .map(RequestStrategy::Idempotent)
        .map_err(|e| GatewayError::Config(format!("idempotency key `{key}`: {e:?}")))
}

/// Stripe's answer, by what to do about it (see Stripe's error-handling guide).
fn classify(err: StripeError) -> GatewayError {
    match err {
        StripeError::Stripe(e, status) => {
            let code = e.code.as_ref().map(|c| c.as_str().to_owned());
            let message = e.message.clone().unwrap_or_default();
            match (status, &e.type_) {
                (429, _) => GatewayError::RateLimited(message),
                (500..=599, _) => {
                    GatewayError::Unavailable(format!("Stripe answered {status}: {message}"))
                }
                // Another request with the same key is still running at Stripe.
                (409, _) => GatewayError::Unavailable(format!("Stripe answered 409: {message}")),
                (_, ApiErrorsType::CardError) if code.as_deref() == Some("processing_error") => {
                    GatewayError::CardProcessing { message }
                }
                (_, ApiErrorsType::CardError) => GatewayError::Declined {
                    code: code.unwrap_or_else(|| "card_declined".to_owned()),
                    decline_code: e.decline_code.clone(),
                    message,
                    payment_intent_id: e.payment_intent.as_ref().map(|pi| pi.id.to_string()),
                },
                _ if code.as_deref() == Some("charge_already_refunded") => {
                    GatewayError::AlreadyRefunded
                }
                _ => GatewayError::Rejected {
                    status,
                    code,
                    message,
                },
            }
        }
        StripeError::Timeout => GatewayError::Unavailable("timed out".to_owned()),
        StripeError::ClientError(m) => GatewayError::Unavailable(m),
        // Stripe may have acted on a request whose answer we could not read.
        StripeError::JSONDeserialize(m) => {
            GatewayError::Unavailable(format!("unreadable answer: {m}"))
        }
        StripeError::ConfigError(m) => GatewayError::Config(m),
    }
}
