//! `notification.send`: the order confirmation, by email always and by SMS and push when the
//! user left a phone number or device token. Each channel's message is deduplicated on the task's
//! idempotency key, so a retried or redelivered task sends only what has not gone out yet.

use std::sync::Arc;

use async_trait::async_trait;
use orderflow_activities::{Activity, ActivityError, TaskContext};
use orderflow_service_kit::db::Db;
use orderflow_workflows::order::contracts::{NOTIFICATION_SEND, Notification, OrderSagaInput};
use serde_json::json;
use uuid::Uuid;

use crate::{
    model::{Channel, NotificationStatus},
    providers::{
        Delivery, DeliveryError, Email, EmailProvider, Push, PushProvider, Sms, SmsProvider,
    },
    store::{self, AttemptOutcome, Claimed, NewNotification},
    templates::{self, Rendered},
};

/// Error codes of `notification.send`.
pub mod codes {
    /// A provider is down or slow; the saga retries.
    pub const DELIVERY_DELAYED: &str = "delivery_delayed";
    /// The email provider refused the confirmation for good (a bad address): an operator must
    /// look, since the saga is past its pivot.
    pub const UNDELIVERABLE: &str = "undeliverable";
    pub const TEMPLATE: &str = "template";
    pub const DATABASE: &str = "database";
}

/// The providers the activity delivers through.
#[derive(Debug, Clone)]
pub struct Providers {
    pub email: Arc<dyn EmailProvider>,
    pub sms: Arc<dyn SmsProvider>,
    pub push: Arc<dyn PushProvider>,
}

/// The `notification.send` activity.
#[derive(Debug, Clone)]
pub struct Send {
    pub db: Db,
    pub providers: Providers,
}

/// One channel's message, rendered and addressed.
pub(crate) struct Outgoing<'a> {
    pub(crate) channel: Channel,
    pub(crate) recipient: String,
    pub(crate) rendered: &'a Rendered,
}

/// How one channel's delivery ended.
pub(crate) enum Outcome {
    Sent(Uuid),
    Failed(Uuid, String),
    Delayed(String),
}

#[async_trait]
impl Activity for Send {
    const NAME: &'static str = NOTIFICATION_SEND;
    type Input = OrderSagaInput;
    type Output = Notification;

    async fn run(
        &self,
        ctx: &TaskContext,
        input: OrderSagaInput,
    ) -> Result<Notification, ActivityError> {
        let rendered = templates::order_confirmation(&input)
            .map_err(|e| ActivityError::permanent(codes::TEMPLATE, e.to_string()))?;
        let contact = store::contact(&self.db, input.user_id)
            .await
            .map_err(db_error)?;
        let mut outgoing = vec![Outgoing {
            channel: Channel::Email,
            recipient: input.email.clone(),
            rendered: &rendered,
        }];
        outgoing.extend(contact.phone.map(|p| Outgoing {
            channel: Channel::Sms,
            recipient: p,
            rendered: &rendered,
        }));
        outgoing.extend(contact.push_token.map(|t| Outgoing {
            channel: Channel::Push,
            recipient: t,
            rendered: &rendered,
        }));

        let mut email_id = None;
        let mut delayed = Vec::new();
        for out in &outgoing {
            match self.deliver(ctx, out).await.map_err(db_error)? {
                Outcome::Sent(id) if out.channel == Channel::Email => email_id = Some(id),
                Outcome::Sent(_) => {}
                Outcome::Failed(_, why) if out.channel == Channel::Email => {
                    return Err(ActivityError::permanent(codes::UNDELIVERABLE, why));
                }
                // A stale phone number or device token must not hold up a confirmed order; the
                // failure is in the log.
                Outcome::Failed(id, why) => {
                    tracing::warn!(notification_id = %id, channel = out.channel.as_str(), %why, "notification refused")
                }
                Outcome::Delayed(why) => delayed.push(format!("{}: {why}", out.channel.as_str())),
            }
        }
        if !delayed.is_empty() {
            return Err(ActivityError::retryable(
                codes::DELIVERY_DELAYED,
                delayed.join("; "),
            ));
        }
        let id = email_id.expect("the email was sent, or the activity returned above");
        Ok(Notification {
            notification_id: id.to_string(),
        })
    }
}

impl Send {
    /// Delivers one channel's message at most once per idempotency key.
    ///
    /// The message stays claimed while the provider is called, so duplicates of the task wait
    /// and then find it sent. A crash after the provider took the message but before the outcome
    /// was stored sends it once more on the retry: no SMTP server can dedupe for us, but the
    /// stable `Message-ID` (and the `Idempotency-Key` of the HTTP providers) lets the receiving
    /// side. That is why [`store::claim`] commits the message's row, and so its id, before the
    /// provider is called (the fault suite's Postgres crash found two confirmations with two
    /// Message-IDs when the row rolled back with the crash).
    pub(crate) async fn deliver(
        &self,
        ctx: &TaskContext,
        out: &Outgoing<'_>,
    ) -> Result<Outcome, sqlx::Error> {
        let provider = match out.channel {
            Channel::Email => self.providers.email.name(),
            Channel::Sms => self.providers.sms.name(),
            Channel::Push => self.providers.push.name(),
        };
        let body = match out.channel {
            Channel::Email => &out.rendered.text,
            Channel::Sms | Channel::Push => &out.rendered.short,
        };
        let new = NewNotification {
            idempotency_key: &ctx.idempotency_key,
            workflow_id: Some(ctx.workflow_id.0),
            channel: out.channel,
            template: out.rendered.template,
            recipient: &out.recipient,
            subject: &out.rendered.subject,
            body,
            body_html: (out.channel == Channel::Email).then_some(out.rendered.html.as_str()),
            provider,
        };
        let claim = match store::claim(&self.db, &new).await? {
            Claimed::Held(claim) => claim,
            Claimed::Settled(row) => {
                return Ok(match row.status() {
                    NotificationStatus::Sent => Outcome::Sent(row.id),
                    NotificationStatus::Failed => {
                        Outcome::Failed(row.id, row.last_error.unwrap_or_default())
                    }
                    // Not what `claim` settles on; the saga's retry looks again.
                    NotificationStatus::Pending => Outcome::Delayed("not settled yet".into()),
                });
            }
            Claimed::Busy => {
                return Ok(Outcome::Delayed(
                    "another delivery of this message is under way".into(),
                ));
            }
        };
        let row = claim.notification().clone();
        // The stored message, not today's rendering: a retry sends what the first attempt did.
        let sent = match out.channel {
            Channel::Email => {
                let email = Email {
                    id: row.id,
                    to: row.recipient.clone(),
                    subject: row.subject.clone(),
                    text: row.body.clone(),
                    html: row.body_html.clone(),
                };
                self.providers.email.send(&email).await
            }
            Channel::Sms => {
                let sms = Sms {
                    id: row.id,
                    to: row.recipient.clone(),
                    text: row.body.clone(),
                };
                self.providers.sms.send(&sms).await
            }
            Channel::Push => {
                let push = Push {
                    id: row.id,
                    device_token: row.recipient.clone(),
                    title: row.subject.clone(),
                    body: row.body.clone(),
                };
                self.providers.push.send(&push).await
            }
        };
        let outcome = match sent {
            Ok(Delivery {
                provider_message_id,
                detail,
            }) => {
                claim
                    .record_attempt(
                        provider,
                        AttemptOutcome::Sent,
                        provider_message_id.as_deref(),
                        None,
                        &detail,
                    )
                    .await?;
                Outcome::Sent(row.id)
            }
            Err(e) => {
                let (outcome, result) = match &e {
                    DeliveryError::Transient(why) => (
                        AttemptOutcome::TransientFailure,
                        Outcome::Delayed(why.clone()),
                    ),
                    DeliveryError::Permanent(why) => (
                        AttemptOutcome::PermanentFailure,
                        Outcome::Failed(row.id, why.clone()),
                    ),
                };
                let why = e.to_string();
                claim
                    .record_attempt(
                        provider,
                        outcome,
                        None,
                        Some(&why),
                        &json!({ "error": why }),
                    )
                    .await?;
                result
            }
        };
        crate::metrics::delivery(out.channel, provider, outcome_label(&outcome));
        Ok(outcome)
    }
}

fn outcome_label(o: &Outcome) -> &'static str {
    match o {
        Outcome::Sent(_) => "sent",
        Outcome::Failed(..) => "failed",
        Outcome::Delayed(_) => "delayed",
    }
}

pub(crate) fn db_error(e: sqlx::Error) -> ActivityError {
    tracing::warn!(error = %e, "notification database error; the task will be retried");
    ActivityError::retryable(codes::DATABASE, "the notification database is unavailable")
}
