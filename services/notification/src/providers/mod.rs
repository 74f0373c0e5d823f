//! Delivery channels behind traits, so the activity does not care who delivers: email over SMTP
//! ([`smtp`]), SMS and push over an HTTP provider API ([`http`]), or the [`outbox`] that only
//! records what would have gone out (`orderflow up` without providers configured).

pub mod http;
pub mod outbox;
pub mod smtp;

use async_trait::async_trait;
use serde_json::Value;
use uuid::Uuid;

/// What a provider reports for a message it took.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// The provider's id for the message, if it gives one (SMTP queue id, SMS API id).
    pub provider_message_id: Option<String>,
    /// What the provider answered, kept in the attempt log.
    pub detail: Value,
}

/// Why a provider did not take a message; the variant says whether trying again may help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// Down, overloaded, timed out, a 4xx SMTP reply or an HTTP 5xx/429.
    #[error("temporary delivery failure: {0}")]
    Transient(String),
    /// Refused for good: a rejected recipient, a 5xx SMTP reply, an HTTP 4xx.
    #[error("permanent delivery failure: {0}")]
    Permanent(String),
}

/// An email to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email {
    /// Our notification id; it becomes the `Message-ID`, so a message sent twice (a crash after
    /// the SMTP server took it, before we recorded that) is recognisable as one.
    pub id: Uuid,
    pub to: String,
    pub subject: String,
    pub text: String,
    pub html: Option<String>,
}

/// A text message to a phone number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sms {
    pub id: Uuid,
    /// E.164, e.g. `+4915112345678`.
    pub to: String,
    pub text: String,
}

/// A push notification to one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    pub id: Uuid,
    pub device_token: String,
    pub title: String,
    pub body: String,
}

#[async_trait]
pub trait EmailProvider: Send + Sync + std::fmt::Debug {
    /// The provider's name in the notification log.
    fn name(&self) -> &'static str;
    async fn send(&self, email: &Email) -> Result<Delivery, DeliveryError>;
}

#[async_trait]
pub trait SmsProvider: Send + Sync + std::fmt::Debug {
    fn name(&self) -> &'static str;
    async fn send(&self, sms: &Sms) -> Result<Delivery, DeliveryError>;
}

#[async_trait]
pub trait PushProvider: Send + Sync + std::fmt::Debug {
    fn name(&self) -> &'static str;
    async fn send(&self, push: &Push) -> Result<Delivery, DeliveryError>;
}
