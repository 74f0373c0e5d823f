//! SMS and push through an HTTP provider API: one JSON `POST` per message with a bearer key and
//! our notification id as `Idempotency-Key`, so a provider that honours it never sends twice.
//!
//! Request bodies: SMS `{"to", "text"}`; push `{"device_token", "title", "body"}`. A 2xx answer
//! may carry `{"id": "..."}`, the provider's message id.

use std::time::Duration;

use async_trait::async_trait;
use reqwest::StatusCode;
use serde::Serialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::{Delivery, DeliveryError, Push, PushProvider, Sms, SmsProvider};

/// One provider endpoint.
#[derive(Clone)]
pub struct HttpProvider {
    client: reqwest::Client,
    url: String,
    api_key: String,
}

impl std::fmt::Debug for HttpProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpProvider")
            .field("url", &self.url)
            .field("api_key", &"<redacted>")
            .finish()
    }
}

impl HttpProvider {
    /// Posts to `url` with `api_key`; one request may take at most `timeout`.
    pub fn new(
        url: impl Into<String>,
        api_key: impl Into<String>,
        timeout: Duration,
    ) -> Result<Self, reqwest::Error> {
        Ok(Self {
            client: reqwest::Client::builder().timeout(timeout).build()?,
            url: url.into(),
            api_key: api_key.into(),
        })
    }

    async fn post(&self, id: Uuid, body: &impl Serialize) -> Result<Delivery, DeliveryError> {
        let res = self
            .client
            .post(&self.url)
            .bearer_auth(&self.api_key)
            .header("Idempotency-Key", id.to_string())
            .json(body)
            .send()
            .await
            // No answer (refused, reset, timed out): the provider may be back soon.
            .map_err(|e| DeliveryError::Transient(format!("provider unreachable: {e}")))?;
        let status = res.status();
        let answer: Value = res.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(Delivery {
                provider_message_id: answer.get("id").and_then(Value::as_str).map(str::to_owned),
                detail: json!({ "status": status.as_u16(), "answer": answer }),
            });
        }
        let why = format!("provider answered {status}: {answer}");
        if status.is_server_error()
            || status == StatusCode::TOO_MANY_REQUESTS
            || status == StatusCode::REQUEST_TIMEOUT
        {
            Err(DeliveryError::Transient(why))
        } else {
            Err(DeliveryError::Permanent(why))
        }
    }
}

#[async_trait]
impl SmsProvider for HttpProvider {
    fn name(&self) -> &'static str {
        "http_sms"
    }

    async fn send(&self, sms: &Sms) -> Result<Delivery, DeliveryError> {
        self.post(sms.id, &json!({ "to": sms.to, "text": sms.text }))
            .await
    }
}

#[async_trait]
impl PushProvider for HttpProvider {
    fn name(&self) -> &'static str {
        "http_push"
    }

    async fn send(&self, push: &Push) -> Result<Delivery, DeliveryError> {
        let body =
            json!({ "device_token": push.device_token, "title": push.title, "body": push.body });
        self.post(push.id, &body).await
    }
}
