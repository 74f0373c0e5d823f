//! The notification service's settings: the shared [`ServiceConfig`] plus its providers.

use std::time::Duration;

use orderflow_service_kit::{ServiceConfig, config::ports};

/// Everything [`crate::run`] needs. A provider left unset is replaced by the outbox, which
/// records the message in the service's database instead of sending it.
#[derive(Clone)]
pub struct NotificationConfig {
    pub service: ServiceConfig,
    /// `smtp://host:port`, `smtp://user:pass@host:587?tls=required` or `smtps://...`.
    pub smtp_url: Option<String>,
    /// The sender of every email.
    pub email_from: String,
    /// The HTTP SMS provider's endpoint.
    pub sms_url: Option<String>,
    /// The HTTP push provider's endpoint.
    pub push_url: Option<String>,
    /// Bearer key for the HTTP providers.
    pub provider_api_key: String,
    /// How long one delivery (an SMTP conversation, an HTTP call) may take. Below the step's
    /// start-to-close timeout, so a hanging provider fails the attempt rather than the deadline.
    pub send_timeout: Duration,
    /// How long delivered and failed messages are kept (`None`: forever); see [`crate::purge`].
    pub log_retention: Option<Duration>,
}

// Hand-written so that credentials in the SMTP URL and the API key never reach a log line.
impl std::fmt::Debug for NotificationConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotificationConfig")
            .field("service", &self.service)
            .field("smtp", &self.smtp_url.as_ref().map(|_| "<set>"))
            .field("email_from", &self.email_from)
            .field("sms_url", &self.sms_url)
            .field("push_url", &self.push_url)
            .field("provider_api_key", &"<redacted>")
            .field("send_timeout", &self.send_timeout)
            .field("log_retention", &self.log_retention)
            .finish()
    }
}

impl NotificationConfig {
    pub const DEFAULT_FROM: &'static str = "OrderFlow <orders@orderflow.localhost>";
    pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(10);
    pub const DEFAULT_LOG_RETENTION: Duration = Duration::from_secs(90 * 86_400);

    /// Outbox for every channel, around `service`.
    pub fn new(service: ServiceConfig) -> Self {
        Self {
            service,
            smtp_url: None,
            email_from: Self::DEFAULT_FROM.to_owned(),
            sms_url: None,
            push_url: None,
            provider_api_key: String::new(),
            send_timeout: Self::DEFAULT_SEND_TIMEOUT,
            log_retention: Some(Self::DEFAULT_LOG_RETENTION),
        }
    }

    /// This machine's local services, port 8084, database `orderflow_notification`.
    pub fn local() -> Self {
        Self::new(ServiceConfig::local("notification", ports::NOTIFICATION))
    }
}
