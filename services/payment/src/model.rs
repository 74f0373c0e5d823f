//! The payment's domain types. A [`ChargeRequest`] can only be built from input that Stripe
//! would accept, so the activity rejects bad input before anything is recorded.

use chrono::{DateTime, Utc};
use orderflow_workflows::order::contracts::OrderSagaInput;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Where a payment is in its life; see the `payments` table for what each means.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, sqlx::Type, utoipa::ToSchema,
)]
#[sqlx(type_name = "text", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum PaymentStatus {
    /// Recorded; Stripe's answer not stored yet.
    Pending,
    /// Charged.
    Succeeded,
    /// Refused by the card issuer for good; nothing charged.
    Declined,
    /// Charged, then refunded.
    Refunded,
    /// Compensated before any charge reached us; a later charge for the step is refused.
    Voided,
}

impl PaymentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Succeeded => "succeeded",
            Self::Declined => "declined",
            Self::Refunded => "refunded",
            Self::Voided => "voided",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Self::Pending,
            "succeeded" => Self::Succeeded,
            "declined" => Self::Declined,
            "refunded" => Self::Refunded,
            "voided" => Self::Voided,
            _ => return None,
        })
    }
}

/// One row of `payments`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Payment {
    pub id: Uuid,
    pub idempotency_key: String,
    pub workflow_id: Uuid,
    pub order_id: Uuid,
    pub user_id: Uuid,
    pub amount_minor: i64,
    pub currency: String,
    pub payment_method: String,
    pub status: PaymentStatus,
    pub stripe_attempt: i32,
    pub payment_intent_id: Option<String>,
    pub failure_code: Option<String>,
    pub failure_message: Option<String>,
    pub refund_id: Option<String>,
    pub refunded_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Payment {
    /// The `Idempotency-Key` phase 2 sends to Stripe: the step's key, then `<key>#n` once a
    /// definite failure made the old key's answer stale (see the `stripe_attempt` column).
    pub fn stripe_key(&self) -> String {
        stripe_key(&self.idempotency_key, self.stripe_attempt)
    }
}

pub fn stripe_key(step_key: &str, attempt: i32) -> String {
    if attempt == 0 {
        step_key.to_owned()
    } else {
        format!("{step_key}#{attempt}")
    }
}

/// Why saga input cannot be charged.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InvalidCharge {
    #[error("total.amount_minor must be positive, got {0}")]
    Amount(i64),
    #[error("total.currency must be a three-letter ISO code, got `{0}`")]
    Currency(String),
    #[error("payment_method must be a Stripe payment method id (1 to 255 visible characters)")]
    PaymentMethod,
}

/// A charge Stripe can be asked for: the saga's total in minor units, an ISO currency (kept
/// upper case; Stripe wants it lower case on the wire) and a payment method id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChargeRequest {
    pub order_id: Uuid,
    pub user_id: Uuid,
    pub amount_minor: i64,
    pub currency: String,
    pub payment_method: String,
}

impl ChargeRequest {
    pub fn from_saga(input: &OrderSagaInput) -> Result<Self, InvalidCharge> {
        let amount = input.total.amount_minor;
        if amount <= 0 {
            return Err(InvalidCharge::Amount(amount));
        }
        let currency = input.total.currency.trim();
        if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_alphabetic()) {
            return Err(InvalidCharge::Currency(input.total.currency.clone()));
        }
        let pm = input.payment_method.trim();
        if pm.is_empty() || pm.len() > 255 || !pm.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(InvalidCharge::PaymentMethod);
        }
        Ok(Self {
            order_id: input.order_id,
            user_id: input.user_id,
            amount_minor: amount,
            currency: currency.to_ascii_uppercase(),
            payment_method: pm.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use orderflow_workflows::order::contracts::{Money, OrderItem};

    use super::*;

    fn input(amount: i64, currency: &str, pm: &str) -> OrderSagaInput {
        OrderSagaInput {
            order_id: Uuid::nil(),
            user_id: Uuid::nil(),
            items: vec![OrderItem {
                product_id: "sku-1".into(),
                quantity: 1,
            }],
            total: Money {
                amount_minor: amount,
                currency: currency.into(),
            },
            payment_method: pm.into(),
            email: "a@example.com".into(),
        }
    }

    #[test]
    fn only_chargeable_input_makes_a_request() {
        let ok = ChargeRequest::from_saga(&input(2599, "eur", "pm_card_visa")).unwrap();
        assert_eq!((ok.amount_minor, ok.currency.as_str()), (2599, "EUR"));
        assert_eq!(
            ChargeRequest::from_saga(&input(0, "EUR", "pm_card_visa")),
            Err(InvalidCharge::Amount(0))
        );
        assert!(matches!(
            ChargeRequest::from_saga(&input(1, "EURO", "pm_card_visa")),
            Err(InvalidCharge::Currency(_))
        ));
        assert_eq!(
            ChargeRequest::from_saga(&input(1, "EUR", "pm card")),
            Err(InvalidCharge::PaymentMethod)
        );
    }

    #[test]
    fn stripe_keys_rotate_only_by_attempt() {
        assert_eq!(stripe_key("wf/charge", 0), "wf/charge");
        assert_eq!(stripe_key("wf/charge", 2), "wf/charge#2");
    }
}
