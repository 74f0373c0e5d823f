//! The sandbox's objects and the rules that create them, rendered as Stripe renders them.
//!
//! Every rule returns an [`Answer`]: the HTTP status and JSON body Stripe would send, whether the
//! answer may be saved under an idempotency key (Stripe saves the result of any request that
//! started to run, errors included, but not of one rejected by parameter validation), and the
//! webhook events it caused.

use std::collections::BTreeMap;

use chrono::Utc;
use rand::{Rng, distr::Alphanumeric};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The API version the sandbox stamps on events: the one async-stripe 1.0.0-rc.10 speaks.
pub const API_VERSION: &str = "2026-09-30.endive";

/// What a test card does when it is confirmed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Card {
    Succeeds,
    Declined { decline_code: &'static str },
    ProcessingError,
}

/// Stripe's test payment method ids the sandbox knows.
fn test_card(payment_method: &str) -> Option<Card> {
    Some(match payment_method {
        "pm_card_visa" | "pm_card_mastercard" | "pm_card_amex" => Card::Succeeds,
        "pm_card_chargeDeclined" => Card::Declined {
            decline_code: "generic_decline",
        },
        "pm_card_chargeDeclinedInsufficientFunds" => Card::Declined {
            decline_code: "insufficient_funds",
        },
        "pm_card_chargeDeclinedProcessingError" => Card::ProcessingError,
        _ => return None,
    })
}

/// A PaymentIntent as the sandbox keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentIntent {
    pub id: String,
    pub amount: i64,
    pub currency: String,
    /// `requires_payment_method`, `requires_confirmation` or `succeeded`.
    pub status: String,
    pub payment_method: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub description: Option<String>,
    pub latest_charge: Option<String>,
    /// The error of the last failed confirmation, as Stripe's `last_payment_error`.
    pub last_payment_error: Option<Value>,
    pub created: i64,
    client_secret: String,
}

impl PaymentIntent {
    /// A succeeded EUR 25.99 intent with id `id`, for tests that craft webhook events by hand.
    pub fn example(id: &str) -> Self {
        Self {
            id: id.to_owned(),
            amount: 2599,
            currency: "eur".into(),
            status: "succeeded".into(),
            payment_method: Some("pm_card_visa".into()),
            metadata: BTreeMap::new(),
            description: None,
            latest_charge: Some(new_id("ch")),
            last_payment_error: None,
            created: Utc::now().timestamp(),
            client_secret: format!("{id}_secret_example"),
        }
    }
}

/// A successful charge of a PaymentIntent: the money actually taken.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Charge {
    pub id: String,
    pub payment_intent: String,
    pub amount: i64,
    pub amount_refunded: i64,
    pub currency: String,
}

/// A refund of (part of) a charge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refund {
    pub id: String,
    pub payment_intent: String,
    pub charge: String,
    pub amount: i64,
    pub currency: String,
    pub metadata: BTreeMap<String, String>,
    pub created: i64,
}

/// Everything the sandbox holds, in creation order.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Ledger {
    intents: Vec<PaymentIntent>,
    charges: Vec<Charge>,
    refunds: Vec<Refund>,
}

/// A copy of the ledger for tests (`GET /sandbox/ledger`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerView {
    pub payment_intents: Vec<PaymentIntent>,
    pub charges: Vec<Charge>,
    pub refunds: Vec<Refund>,
}

impl LedgerView {
    /// The charges of PaymentIntents whose metadata has `key = value`.
    pub fn charges_with(&self, key: &str, value: &str) -> Vec<&Charge> {
        self.charges
            .iter()
            .filter(|c| {
                self.payment_intents.iter().any(|pi| {
                    pi.id == c.payment_intent
                        && pi.metadata.get(key).map(String::as_str) == Some(value)
                })
            })
            .collect()
    }

    /// The refunds of one PaymentIntent.
    pub fn refunds_of(&self, payment_intent: &str) -> Vec<&Refund> {
        self.refunds
            .iter()
            .filter(|r| r.payment_intent == payment_intent)
            .collect()
    }
}

/// Form parameters as Stripe receives them: flat pairs, nested keys spelled `metadata[k]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Params(Vec<(String, String)>);

impl Params {
    pub fn new(mut pairs: Vec<(String, String)>) -> Self {
        // Stripe compares the parameters of an idempotent retry, not their order on the wire.
        pairs.sort();
        Self(pairs)
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The `metadata[k]=v` pairs.
    pub fn metadata(&self) -> BTreeMap<String, String> {
        self.0
            .iter()
            .filter_map(|(k, v)| {
                let key = k.strip_prefix("metadata[")?.strip_suffix(']')?;
                Some((key.to_owned(), v.clone()))
            })
            .collect()
    }
}

/// What the sandbox answers to one API request.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
    /// False for requests rejected before they ran: Stripe saves no idempotent result for them.
    pub saved: bool,
    /// Webhook events the request caused: `(type, object)`.
    pub events: Vec<(&'static str, Value)>,
}

impl Answer {
    fn ok(body: Value) -> Self {
        Self {
            status: 200,
            body,
            saved: true,
            events: Vec::new(),
        }
    }

    /// A parameter error: `invalid_request_error` naming the parameter, not saved.
    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        Self::invalid_code(400, None, param, message)
    }

    fn invalid_code(
        status: u16,
        code: Option<&str>,
        param: &str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            status,
            body: error_body(json!({
                "type": "invalid_request_error",
                "code": code,
                "param": param,
                "message": message.into(),
            })),
            saved: false,
            events: Vec::new(),
        }
    }

    /// An error that is not about the request's parameters (`api_error`, auth, idempotency).
    pub fn error(status: u16, kind: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            body: error_body(json!({ "type": kind, "message": message.into() })),
            saved: false,
            events: Vec::new(),
        }
    }
}

fn error_body(mut error: Value) -> Value {
    // Stripe leaves out the fields it has no value for.
    if let Some(map) = error.as_object_mut() {
        map.retain(|_, v| !v.is_null());
    }
    json!({ "error": error })
}

/// A Stripe-style id: the object's prefix and 24 random characters.
pub fn new_id(prefix: &str) -> String {
    let tail: String = rand::rng()
        .sample_iter(Alphanumeric)
        .take(24)
        .map(char::from)
        .collect();
    format!("{prefix}_{tail}")
}

impl Ledger {
    pub fn view(&self) -> LedgerView {
        LedgerView {
            payment_intents: self.intents.clone(),
            charges: self.charges.clone(),
            refunds: self.refunds.clone(),
        }
    }

    /// `POST /v1/payment_intents`: creates a PaymentIntent and, with `confirm=true`, confirms it.
    pub fn create_payment_intent(&mut self, params: &Params) -> Answer {
        let amount = match params.get("amount").map(str::parse::<i64>) {
            None => return Answer::invalid("amount", "Missing required param: amount."),
            Some(Ok(a)) if a >= 1 => a,
            Some(_) => {
                return Answer::invalid(
                    "amount",
                    "Invalid integer: amount must be a positive integer in the smallest currency unit.",
                );
            }
        };
        let currency = match params.get("currency") {
            None => return Answer::invalid("currency", "Missing required param: currency."),
            Some(c) if c.len() == 3 && c.bytes().all(|b| b.is_ascii_lowercase()) => c.to_owned(),
            Some(c) => return Answer::invalid("currency", format!("Invalid currency: {c}.")),
        };
        let confirm = match params.get("confirm") {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => {
                return Answer::invalid("confirm", format!("Invalid boolean: {other}."));
            }
        };
        let payment_method = params.get("payment_method").map(str::to_owned);
        let card = match payment_method.as_deref() {
            Some(pm) => match test_card(pm) {
                Some(card) => Some(card),
                None => {
                    return Answer::invalid_code(
                        400,
                        Some("resource_missing"),
                        "payment_method",
                        format!("No such PaymentMethod: '{pm}'"),
                    );
                }
            },
            None if confirm => {
                return Answer::invalid(
                    "payment_method",
                    "You cannot confirm this PaymentIntent because it's missing a payment method.",
                );
            }
            None => None,
        };
        let id = new_id("pi");
        let mut intent = PaymentIntent {
            client_secret: format!("{id}_secret_{}", &new_id("s")[2..]),
            id,
            amount,
            currency,
            status: if payment_method.is_some() {
                "requires_confirmation".into()
            } else {
                "requires_payment_method".into()
            },
            payment_method,
            metadata: params.metadata(),
            description: params.get("description").map(str::to_owned),
            latest_charge: None,
            last_payment_error: None,
            created: Utc::now().timestamp(),
        };
        let answer = match (confirm, card) {
            (false, _) | (true, None) => {
                let body = intent_json(&intent);
                self.intents.push(intent);
                return Answer::ok(body);
            }
            (true, Some(card)) => self.confirm(&mut intent, card),
        };
        self.intents.push(intent);
        answer
    }

    fn confirm(&mut self, intent: &mut PaymentIntent, card: Card) -> Answer {
        let (code, decline_code, message) = match card {
            Card::Succeeds => {
                let charge = Charge {
                    id: new_id("ch"),
                    payment_intent: intent.id.clone(),
                    amount: intent.amount,
                    amount_refunded: 0,
                    currency: intent.currency.clone(),
                };
                intent.status = "succeeded".into();
                intent.latest_charge = Some(charge.id.clone());
                self.charges.push(charge);
                let body = intent_json(intent);
                let mut answer = Answer::ok(body.clone());
                answer.events.push(("payment_intent.succeeded", body));
                return answer;
            }
            Card::Declined { decline_code } => (
                "card_declined",
                Some(decline_code),
                "Your card was declined.",
            ),
            Card::ProcessingError => (
                "processing_error",
                None,
                "An error occurred while processing your card. Try again in a little bit.",
            ),
        };
        let error = json!({
            "type": "card_error",
            "code": code,
            "decline_code": decline_code,
            "message": message,
            "payment_method": null,
        });
        intent.status = "requires_payment_method".into();
        intent.last_payment_error = Some(error.clone());
        let pi = intent_json(intent);
        let mut error = error;
        error["payment_intent"] = pi.clone();
        Answer {
            status: 402,
            body: error_body(error),
            // A declined confirmation ran: Stripe saves it, and a retry with the same key gets
            // the same decline.
            saved: true,
            events: vec![("payment_intent.payment_failed", pi)],
        }
    }

    /// `GET /v1/payment_intents/{id}`.
    pub fn payment_intent(&self, id: &str) -> Answer {
        match self.intents.iter().find(|pi| pi.id == id) {
            Some(pi) => Answer::ok(intent_json(pi)),
            None => Answer::invalid_code(
                404,
                Some("resource_missing"),
                "intent",
                format!("No such payment_intent: '{id}'"),
            ),
        }
    }

    /// `POST /v1/refunds`: refunds (part of) the charge of a succeeded PaymentIntent.
    pub fn create_refund(&mut self, params: &Params) -> Answer {
        let Some(pi_id) = params.get("payment_intent").or(params.get("charge")) else {
            return Answer::invalid(
                "payment_intent",
                "One of the following params should be provided for this request: payment_intent or charge.",
            );
        };
        let charge = if let Some(charge_id) = params.get("charge") {
            self.charges.iter_mut().find(|c| c.id == charge_id)
        } else {
            let latest = self
                .intents
                .iter()
                .find(|pi| pi.id == pi_id)
                .and_then(|pi| pi.latest_charge.clone());
            match latest {
                Some(ch) => self.charges.iter_mut().find(|c| c.id == ch),
                None if self.intents.iter().any(|pi| pi.id == pi_id) => {
                    return Answer::invalid(
                        "payment_intent",
                        format!(
                            "This PaymentIntent ({pi_id}) does not have a successful charge to refund."
                        ),
                    );
                }
                None => None,
            }
        };
        let Some(charge) = charge else {
            let param = if params.get("charge").is_some() {
                "charge"
            } else {
                "payment_intent"
            };
            return Answer::invalid_code(
                400,
                Some("resource_missing"),
                param,
                format!("No such {param}: '{pi_id}'"),
            );
        };
        let remaining = charge.amount - charge.amount_refunded;
        if remaining == 0 {
            return Answer {
                saved: true,
                ..Answer::invalid_code(
                    400,
                    Some("charge_already_refunded"),
                    "charge",
                    format!("Charge {} has already been refunded.", charge.id),
                )
            };
        }
        let amount = match params.get("amount").map(str::parse::<i64>) {
            None => remaining,
            Some(Ok(a)) if (1..=remaining).contains(&a) => a,
            Some(_) => {
                return Answer::invalid(
                    "amount",
                    format!("Refund amount must be a positive integer of at most {remaining}."),
                );
            }
        };
        charge.amount_refunded += amount;
        let refund = Refund {
            id: new_id("re"),
            payment_intent: charge.payment_intent.clone(),
            charge: charge.id.clone(),
            amount,
            currency: charge.currency.clone(),
            metadata: params.metadata(),
            created: Utc::now().timestamp(),
        };
        let body = refund_json(&refund);
        self.refunds.push(refund);
        let mut answer = Answer::ok(body.clone());
        answer.events.push(("refund.created", body));
        answer
    }
}

/// A PaymentIntent as Stripe's API renders it.
pub fn intent_json(pi: &PaymentIntent) -> Value {
    let received = if pi.status == "succeeded" {
        pi.amount
    } else {
        0
    };
    json!({
        "id": pi.id,
        "object": "payment_intent",
        "amount": pi.amount,
        "amount_capturable": 0,
        "amount_received": received,
        "application": null,
        "application_fee_amount": null,
        "automatic_payment_methods": null,
        "canceled_at": null,
        "cancellation_reason": null,
        "capture_method": "automatic_async",
        "client_secret": pi.client_secret,
        "confirmation_method": "automatic",
        "created": pi.created,
        "currency": pi.currency,
        "customer": null,
        "description": pi.description,
        "last_payment_error": pi.last_payment_error,
        "latest_charge": pi.latest_charge,
        "livemode": false,
        "metadata": pi.metadata,
        "next_action": null,
        "on_behalf_of": null,
        "payment_method": pi.payment_method,
        "payment_method_types": ["card"],
        "processing": null,
        "receipt_email": null,
        "review": null,
        "setup_future_usage": null,
        "shipping": null,
        "source": null,
        "statement_descriptor": null,
        "statement_descriptor_suffix": null,
        "status": pi.status,
        "transfer_data": null,
        "transfer_group": null,
    })
}

/// A refund as Stripe's API renders it.
pub fn refund_json(r: &Refund) -> Value {
    json!({
        "id": r.id,
        "object": "refund",
        "amount": r.amount,
        "balance_transaction": null,
        "charge": r.charge,
        "created": r.created,
        "currency": r.currency,
        "metadata": r.metadata,
        "payment_intent": r.payment_intent,
        "reason": null,
        "receipt_number": null,
        "source_transfer_reversal": null,
        "status": "succeeded",
        "transfer_reversal": null,
    })
}

/// A webhook event wrapping `object`, as Stripe posts it.
pub fn event_json(kind: &str, object: Value, idempotency_key: Option<&str>) -> Value {
    json!({
        "id": new_id("evt"),
        "object": "event",
        "api_version": API_VERSION,
        "created": Utc::now().timestamp(),
        "data": { "object": object },
        "livemode": false,
        "pending_webhooks": 1,
        "request": { "id": new_id("req"), "idempotency_key": idempotency_key },
        "type": kind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Params {
        Params::new(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    #[test]
    fn a_visa_charge_succeeds_and_can_be_refunded_once() {
        let mut ledger = Ledger::default();
        let a = ledger.create_payment_intent(&params(&[
            ("amount", "2599"),
            ("currency", "eur"),
            ("confirm", "true"),
            ("payment_method", "pm_card_visa"),
            ("metadata[order]", "42"),
        ]));
        assert_eq!(a.status, 200);
        assert_eq!(a.body["status"], "succeeded");
        assert_eq!(a.body["metadata"]["order"], "42");
        let pi = a.body["id"].as_str().unwrap().to_owned();
        let r = ledger.create_refund(&params(&[("payment_intent", &pi)]));
        assert_eq!((r.status, r.body["amount"].as_i64()), (200, Some(2599)));
        let again = ledger.create_refund(&params(&[("payment_intent", &pi)]));
        assert_eq!(again.status, 400);
        assert_eq!(again.body["error"]["code"], "charge_already_refunded");
        assert_eq!(ledger.view().refunds_of(&pi).len(), 1);
    }

    #[test]
    fn declines_are_402_card_errors_that_carry_the_intent() {
        let mut ledger = Ledger::default();
        let a = ledger.create_payment_intent(&params(&[
            ("amount", "100"),
            ("currency", "usd"),
            ("confirm", "true"),
            ("payment_method", "pm_card_chargeDeclined"),
        ]));
        assert_eq!(a.status, 402);
        assert!(a.saved);
        assert_eq!(a.body["error"]["type"], "card_error");
        assert_eq!(a.body["error"]["code"], "card_declined");
        assert_eq!(
            a.body["error"]["payment_intent"]["status"],
            "requires_payment_method"
        );
        assert!(ledger.view().charges.is_empty());
    }

    #[test]
    fn bad_parameters_name_the_parameter_and_are_not_saved() {
        let mut ledger = Ledger::default();
        let a = ledger.create_payment_intent(&params(&[("amount", "0"), ("currency", "eur")]));
        assert_eq!((a.status, a.saved), (400, false));
        assert_eq!(a.body["error"]["param"], "amount");
        let b = ledger.create_payment_intent(&params(&[("amount", "5"), ("currency", "EURO")]));
        assert_eq!(b.body["error"]["param"], "currency");
        let c = ledger.create_refund(&params(&[("payment_intent", "pi_nope")]));
        assert_eq!(c.body["error"]["code"], "resource_missing");
    }
}
