//! The outbox provider: "delivers" by recording the message in the service's own database, as it
//! would have gone out. `orderflow up` uses it when no SMTP server or SMS/push API is configured,
//! so the whole saga runs on one machine and every message can still be read; under
//! `orderflow dev` every message goes here, in the embedded database, and the admin API's
//! `GET /outbox` lists them.

use async_trait::async_trait;
use lettre::message::Mailbox;
use orderflow_service_kit::db::Db;
use serde_json::json;
use uuid::Uuid;

use super::{
    Delivery, DeliveryError, Email, EmailProvider, Push, PushProvider, Sms, SmsProvider,
    smtp::{SmtpConfigError, build_message, parse_from},
};
use crate::{model::Channel, store};

/// Records messages in `outbox_messages`.
#[derive(Debug, Clone)]
pub struct Outbox {
    db: Db,
    from: Mailbox,
}

impl Outbox {
    pub fn new(db: impl Into<Db>, from: &str) -> Result<Self, SmtpConfigError> {
        Ok(Self {
            db: db.into(),
            from: parse_from(from)?,
        })
    }

    async fn record(
        &self,
        id: Uuid,
        channel: Channel,
        recipient: &str,
        content: &str,
    ) -> Result<Delivery, DeliveryError> {
        // Keyed by the notification: a repeat records nothing new.
        store::record_outbox(&self.db, id, channel, recipient, content)
            .await
            .map_err(|e| DeliveryError::Transient(format!("recording in the outbox: {e}")))?;
        Ok(Delivery {
            provider_message_id: Some(id.to_string()),
            detail: json!({ "recorded_in": "outbox_messages" }),
        })
    }
}

#[async_trait]
impl EmailProvider for Outbox {
    fn name(&self) -> &'static str {
        "outbox"
    }

    async fn send(&self, email: &Email) -> Result<Delivery, DeliveryError> {
        let message = build_message(&self.from, email)?;
        let raw = String::from_utf8_lossy(&message.formatted()).into_owned();
        self.record(email.id, Channel::Email, &email.to, &raw).await
    }
}

#[async_trait]
impl SmsProvider for Outbox {
    fn name(&self) -> &'static str {
        "outbox"
    }

    async fn send(&self, sms: &Sms) -> Result<Delivery, DeliveryError> {
        self.record(sms.id, Channel::Sms, &sms.to, &sms.text).await
    }
}

#[async_trait]
impl PushProvider for Outbox {
    fn name(&self) -> &'static str {
        "outbox"
    }

    async fn send(&self, push: &Push) -> Result<Delivery, DeliveryError> {
        let content = json!({ "title": push.title, "body": push.body }).to_string();
        self.record(push.id, Channel::Push, &push.device_token, &content)
            .await
    }
}
