//! `payment.charge` and `payment.refund` for the worker runtime, and the return saga's
//! `payment.refund_return`, which refunds a confirmed order's charge the same way.
//!
//! Both run at least once per task and at most once in effect per step:
//!
//! - **charge** records the payment in three phases: (1) a `pending` row under the step's
//!   idempotency key with our own payment id, (2) the Stripe call with an `Idempotency-Key`
//!   derived from the step's key, (3) Stripe's PaymentIntent id and the outcome. A task that
//!   finds the row `pending` (the last worker died between phases, or Stripe did not answer)
//!   repeats phase 2 with the same key, and Stripe answers with the intent it already made, so
//!   the card is charged once. A final outcome is cached (in Redis, or in-process without
//!   it), so repeats short-circuit.
//! - **refund** refunds the step's payment once (Stripe `Idempotency-Key` = the compensation's
//!   key, and the row moves `succeeded` to `refunded`). If the charge never reached this
//!   service it leaves a `voided` row, so a charge task still on its way is refused; if the
//!   charge is in doubt (`pending`), it first settles it with the charge's own key.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use chrono::Utc;
use orderflow_activities::{Activity, ActivityError, TaskContext, worker::Handler};
use orderflow_service_kit::db::Db;
use orderflow_workflows::{
    order::contracts::{self, Charge, OrderSagaInput, PAYMENT_CHARGE, PAYMENT_REFUND, codes},
    returns::contracts::{PAYMENT_REFUND_RETURN, ReturnRefund, ReturnSagaInput},
};
use tokio::time::Instant;

use crate::{
    cache::{Outcome, OutcomeCache},
    gateway::{Gateway, GatewayError},
    metrics,
    model::{ChargeRequest, Payment, PaymentStatus},
    store,
};

/// What both activities work with.
#[derive(Clone, Debug)]
pub struct Payments {
    /// The payment database, Postgres or embedded SQLite.
    pub db: Db,
    pub gateway: Gateway,
    pub cache: OutcomeCache,
}

/// The worker handlers of the payment service.
pub fn handlers(payments: Arc<Payments>) -> Vec<Arc<dyn Handler>> {
    vec![
        Arc::new(ChargeActivity(payments.clone())),
        Arc::new(RefundActivity(payments.clone())),
        Arc::new(RefundReturnActivity(payments)),
    ]
}

/// `payment.refund_return` (the return saga's pivot): refunds the charge of the order being
/// returned, found by the order saga's charge key. Stripe's `Idempotency-Key` is the return
/// step's own key, and a payment already refunded (the order was cancelled, or an earlier attempt
/// got through) answers with its refund instead of refunding twice.
#[derive(Clone, Debug)]
pub struct RefundReturnActivity(pub Arc<Payments>);

#[async_trait]
impl Activity for RefundReturnActivity {
    const NAME: &'static str = PAYMENT_REFUND_RETURN;
    type Input = ReturnSagaInput;
    type Output = ReturnRefund;

    async fn run(
        &self,
        ctx: &TaskContext,
        input: ReturnSagaInput,
    ) -> Result<ReturnRefund, ActivityError> {
        let p = &self.0;
        let charge_key = format!("{}/charge", input.order_workflow_id);
        let Some(payment) = store::by_key(&p.db, &charge_key).await.map_err(db_error)? else {
            return Err(ActivityError::permanent(
                return_codes::CHARGE_NOT_FOUND,
                format!("no payment was charged under `{charge_key}`"),
            ));
        };
        let result = refund(p, ctx, &payment).await;
        let label = match &result {
            Ok(r) if r.refund_id.is_some() => "refunded",
            Ok(_) => "noop",
            Err(_) => "failed",
        };
        metrics::REFUNDS.with_label_values(&[label]).inc();
        let done = result?;
        Ok(ReturnRefund {
            payment_id: payment.id.to_string(),
            refund_id: done.refund_id,
        })
    }
}

/// Error codes of `payment.refund_return`.
pub mod return_codes {
    /// The order saga's charge never reached this service: nothing to refund; final.
    pub const CHARGE_NOT_FOUND: &str = "charge_not_found";
}

/// `payment.charge`: charges the saga's total with its payment method.
#[derive(Clone, Debug)]
pub struct ChargeActivity(pub Arc<Payments>);

/// `payment.refund`: gives back what the charge step took, if it took anything.
#[derive(Clone, Debug)]
pub struct RefundActivity(pub Arc<Payments>);

#[async_trait]
impl Activity for ChargeActivity {
    const NAME: &'static str = PAYMENT_CHARGE;
    type Input = OrderSagaInput;
    type Output = Charge;

    async fn run(&self, ctx: &TaskContext, input: OrderSagaInput) -> Result<Charge, ActivityError> {
        let p = &self.0;
        let key = ctx.idempotency_key.as_str();
        if let Some(outcome) = p.cache.get(key).await {
            metrics::CHARGES.with_label_values(&["cached"]).inc();
            return match outcome {
                Outcome::Charged(charge) => Ok(charge),
                Outcome::Declined { message } => Err(declined(message)),
            };
        }
        let req = ChargeRequest::from_saga(&input)
            .map_err(|e| ActivityError::permanent("bad_input", e.to_string()))?;
        let payment =
            store::insert_or_get(&p.db, key, ctx.workflow_id.0, &req, PaymentStatus::Pending)
                .await
                .map_err(db_error)?;
        let result = settle_charge(p, payment, deadline(ctx)).await;
        let label = match &result {
            Ok(_) => "succeeded",
            Err(e) if e.code == codes::CARD_DECLINED => "declined",
            Err(_) => "failed",
        };
        metrics::CHARGES.with_label_values(&[label]).inc();
        result
    }
}

/// Drives a step's payment to a final outcome: reads it off a settled row, or runs phases 2
/// and 3 for a pending one.
async fn settle_charge(
    p: &Payments,
    payment: Payment,
    deadline: Instant,
) -> Result<Charge, ActivityError> {
    if let Some(done) = final_outcome(&payment) {
        // A repeat after the outcome was recorded: cache it again in case Redis lost it.
        if let Some(outcome) = cacheable(&done) {
            p.cache.put(&payment.idempotency_key, &outcome).await;
        }
        return done;
    }
    let stripe_key = payment.stripe_key();
    let settled = match p
        .gateway
        .charge(&payment, &stripe_key, Some(deadline))
        .await
    {
        Ok(intent) => store::mark_succeeded(&p.db, payment.id, &intent).await,
        Err(GatewayError::Declined {
            code,
            decline_code,
            message,
            payment_intent_id,
        }) => {
            let detail = match decline_code {
                Some(dc) => format!("{message} ({code}: {dc})"),
                None => format!("{message} ({code})"),
            };
            store::mark_declined(
                &p.db,
                payment.id,
                payment_intent_id.as_deref(),
                codes::CARD_DECLINED,
                &detail,
            )
            .await
        }
        Err(GatewayError::Incomplete {
            payment_intent_id,
            status,
        }) => {
            let detail = format!("the PaymentIntent ended `{status}`");
            store::mark_declined(
                &p.db,
                payment.id,
                Some(&payment_intent_id),
                "payment_incomplete",
                &detail,
            )
            .await
        }
        Err(e) => {
            let mut error = gateway_error(&e);
            if matches!(e, GatewayError::Unavailable(_)) {
                // Stripe may have charged before the answer was lost (not so for a 429): a saga
                // that gives the charge up must still run the refund, which settles the charge
                // in doubt.
                error = error.with_outcome_unknown();
            }
            // A processing error is Stripe's definite "not charged", replayed for this key:
            // the next attempt needs a fresh key to be tried at all.
            let fresh_key = matches!(e, GatewayError::CardProcessing { .. });
            if let Err(db) =
                store::note_failure(&p.db, payment.id, &error.code, &error.message, fresh_key).await
            {
                // Without a fresh key recorded, the next attempt replays the same answer: that
                // costs a retry, never a second charge.
                tracing::warn!(error = %db, "could not note the failed attempt");
            }
            return Err(error);
        }
    };
    let row = settled
        .map_err(db_error)?
        .ok_or_else(|| ActivityError::retryable("database", "the payment row vanished"))?;
    let done = final_outcome(&row).unwrap_or_else(|| {
        Err(ActivityError::retryable(
            "database",
            "the payment is still pending after its outcome was stored",
        ))
    });
    if let Some(outcome) = cacheable(&done) {
        p.cache.put(&row.idempotency_key, &outcome).await;
    }
    done
}

/// The task result a settled payment stands for; `None` while it is pending.
fn final_outcome(payment: &Payment) -> Option<Result<Charge, ActivityError>> {
    let charge = || {
        Ok(Charge {
            payment_id: payment.id.to_string(),
            payment_intent_id: payment.payment_intent_id.clone().unwrap_or_default(),
        })
    };
    Some(match payment.status {
        PaymentStatus::Pending => return None,
        // Refunded means it was charged: a repeat of the charge task reports the charge, and
        // the refund already recorded stays the refund.
        PaymentStatus::Succeeded | PaymentStatus::Refunded => charge(),
        PaymentStatus::Declined
            if payment.failure_code.as_deref() == Some(codes::CARD_DECLINED) =>
        {
            Err(declined(
                payment
                    .failure_message
                    .clone()
                    .unwrap_or_else(|| "card declined".into()),
            ))
        }
        PaymentStatus::Declined => Err(ActivityError::permanent(
            payment
                .failure_code
                .clone()
                .unwrap_or_else(|| "payment_incomplete".into()),
            payment.failure_message.clone().unwrap_or_default(),
        )),
        PaymentStatus::Voided => Err(ActivityError::permanent(
            "payment_voided",
            "the charge step was already compensated; it will not charge",
        )),
    })
}

fn cacheable(done: &Result<Charge, ActivityError>) -> Option<Outcome> {
    match done {
        Ok(charge) => Some(Outcome::Charged(charge.clone())),
        Err(e) if e.code == codes::CARD_DECLINED => Some(Outcome::Declined {
            message: e.message.clone(),
        }),
        Err(_) => None,
    }
}

fn declined(message: String) -> ActivityError {
    // `card_declined` is the code the order saga treats as final (it compensates at once).
    ActivityError::permanent(codes::CARD_DECLINED, message)
}

#[async_trait]
impl Activity for RefundActivity {
    const NAME: &'static str = PAYMENT_REFUND;
    type Input = OrderSagaInput;
    type Output = contracts::Refund;

    async fn run(
        &self,
        ctx: &TaskContext,
        input: OrderSagaInput,
    ) -> Result<contracts::Refund, ActivityError> {
        let p = &self.0;
        let charge_key = charge_key_of(ctx);
        let payment = match ChargeRequest::from_saga(&input) {
            // Leave a tombstone if the charge never got here, so it never will.
            Ok(req) => Some(
                store::insert_or_get(
                    &p.db,
                    &charge_key,
                    ctx.workflow_id.0,
                    &req,
                    PaymentStatus::Voided,
                )
                .await
                .map_err(db_error)?,
            ),
            // Input no charge could accept was never charged; nothing to void either.
            Err(_) => store::by_key(&p.db, &charge_key).await.map_err(db_error)?,
        };
        let Some(mut payment) = payment else {
            metrics::REFUNDS.with_label_values(&["noop"]).inc();
            return Ok(contracts::Refund {
                payment_id: None,
                refund_id: None,
            });
        };
        if payment.status == PaymentStatus::Pending {
            // The charge is in doubt: settle it with its own Stripe key first. Stripe answers
            // with the intent if the lost call made one, or makes it now; either way there is
            // one charge, and it is refunded below.
            match settle_charge(p, payment.clone(), deadline(ctx)).await {
                Ok(_) => {}
                Err(e) if e.retryable => {
                    metrics::REFUNDS.with_label_values(&["failed"]).inc();
                    return Err(e);
                }
                Err(_) => {}
            }
            payment = store::get(&p.db, payment.id)
                .await
                .map_err(db_error)?
                .ok_or_else(|| ActivityError::retryable("database", "the payment vanished"))?;
        }
        let result = refund(p, ctx, &payment).await;
        let label = match &result {
            Ok(r) if r.refund_id.is_some() => "refunded",
            Ok(_) => "noop",
            Err(_) => "failed",
        };
        metrics::REFUNDS.with_label_values(&[label]).inc();
        result
    }
}

async fn refund(
    p: &Payments,
    ctx: &TaskContext,
    payment: &Payment,
) -> Result<contracts::Refund, ActivityError> {
    let payment_id = payment.id.to_string();
    let nothing = || contracts::Refund {
        payment_id: Some(payment_id.clone()),
        refund_id: None,
    };
    match payment.status {
        PaymentStatus::Declined | PaymentStatus::Voided | PaymentStatus::Pending => {
            return Ok(nothing());
        }
        PaymentStatus::Refunded => {
            return Ok(contracts::Refund {
                payment_id: Some(payment_id),
                refund_id: payment.refund_id.clone(),
            });
        }
        PaymentStatus::Succeeded => {}
    }
    let intent = payment
        .payment_intent_id
        .as_deref()
        .expect("a succeeded payment has its intent (a table check)");
    let refund_id = match p
        .gateway
        .refund(
            intent,
            &payment_id,
            &ctx.idempotency_key,
            Some(deadline(ctx)),
        )
        .await
    {
        Ok(id) => Some(id),
        // Refunded by other means (the dashboard, an earlier key): the money is back.
        Err(GatewayError::AlreadyRefunded) => None,
        Err(e) => return Err(gateway_error(&e)),
    };
    let row = store::mark_refunded(&p.db, payment.id, refund_id.as_deref())
        .await
        .map_err(db_error)?
        .ok_or_else(|| ActivityError::retryable("database", "the payment vanished"))?;
    Ok(contracts::Refund {
        payment_id: Some(payment_id),
        refund_id: row.refund_id,
    })
}

/// The charge step's key from its compensation's (`<workflow>/<step>/compensate`).
fn charge_key_of(ctx: &TaskContext) -> String {
    ctx.idempotency_key
        .strip_suffix("/compensate")
        .map(str::to_owned)
        .unwrap_or_else(|| format!("{}/{}", ctx.workflow_id, ctx.step))
}

/// The task's deadline on tokio's clock.
fn deadline(ctx: &TaskContext) -> Instant {
    let left = (ctx.deadline - Utc::now())
        .to_std()
        .unwrap_or(Duration::ZERO);
    Instant::now() + left
}

fn db_error(e: sqlx::Error) -> ActivityError {
    tracing::warn!(error = %e, "payment database error");
    ActivityError::retryable("database", e.to_string())
}

/// The task error for a Stripe failure that is not a decline.
fn gateway_error(e: &GatewayError) -> ActivityError {
    let message = e.to_string();
    match e {
        GatewayError::Declined { .. } => ActivityError::permanent(codes::CARD_DECLINED, message),
        GatewayError::CardProcessing { .. } => {
            ActivityError::retryable("card_processing_error", message)
        }
        GatewayError::Unavailable(_) => ActivityError::retryable("stripe_unavailable", message),
        GatewayError::RateLimited(_) => ActivityError::retryable("stripe_rate_limited", message),
        GatewayError::CircuitOpen(_) => ActivityError::retryable("stripe_circuit_open", message),
        // A bad or revoked API key is fixed by an operator, not by compensating every order.
        GatewayError::Rejected {
            status: 401 | 403, ..
        } => ActivityError::retryable("stripe_auth", message),
        GatewayError::Rejected { .. } => ActivityError::permanent("stripe_rejected", message),
        GatewayError::Incomplete { .. } => ActivityError::permanent("payment_incomplete", message),
        GatewayError::AlreadyRefunded => ActivityError::permanent("already_refunded", message),
        GatewayError::Config(_) => ActivityError::permanent("stripe_config", message),
    }
}
