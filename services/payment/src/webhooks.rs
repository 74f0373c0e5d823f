//! `POST /api/v1/webhooks/stripe`: Stripe's signed events.
//!
//! The `Stripe-Signature` header is verified with async-stripe's webhook code (HMAC-SHA256 of
//! `"{t}.{body}"` under the endpoint secret, at most 5 minutes old) before anything is read; a
//! bad one is a 400 problem naming the header. A verified event is recorded once by its id
//! (Stripe redelivers until it gets a 2xx), and `payment_intent.succeeded` completes a payment
//! still `pending`: the path by which a charge whose worker died after Stripe's answer but
//! before phase 3 is settled without waiting for the saga's retry.

use axum::{
    Json,
    body::Bytes,
    extract::{State, rejection::BytesRejection},
    http::{HeaderMap, StatusCode},
};
use orderflow_service_kit::{ApiError, openapi::OtherErrors, problem::Problem};
use serde_json::{Value, json};
use stripe_webhook::{Webhook, WebhookError};
use uuid::Uuid;

use crate::{api::AppState, metrics, store};

/// The header Stripe signs its deliveries with.
pub const SIGNATURE_HEADER: &str = "Stripe-Signature";

/// Records one of Stripe's events.
#[utoipa::path(
    post,
    path = "/api/v1/webhooks/stripe",
    tag = "webhooks",
    params(("Stripe-Signature" = String, Header, description = "Stripe's signature of the body")),
    request_body(content = Object, description = "A Stripe event"),
    responses(
        (status = 200, description = "Recorded (or already recorded)", body = Object, example = json!({"received": true})),
        (status = 400, description = "The signature is missing, stale or wrong, or the body is not a Stripe event", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is too large", body = Problem, content_type = "application/problem+json"),
        OtherErrors,
    )
)]
pub async fn receive(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let body = body?;
    let signature = headers
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| bad_signature("the Stripe-Signature header is missing"))?;
    let payload = std::str::from_utf8(&body).map_err(|_| ApiError::bad("body", "not UTF-8"))?;
    let event =
        Webhook::construct_event(payload, signature, &st.webhook_secret).map_err(|e| match e {
            WebhookError::BadParse(detail) => {
                ApiError::bad("body", format!("not a Stripe event: {detail}"))
            }
            WebhookError::BadTimestamp(_) => {
                bad_signature("the signature's timestamp is outside the 5 minute tolerance")
            }
            WebhookError::BadKey | WebhookError::BadHeader(_) | WebhookError::BadSignature => {
                bad_signature("the signature does not match the payload")
            }
        })?;
    // Verified: from here the body is Stripe's, so the fields async-stripe parsed are there.
    let raw: Value =
        serde_json::from_str(payload).map_err(|e| ApiError::bad("body", e.to_string()))?;
    let object = &raw["data"]["object"];
    let kind = event.type_.as_str().to_owned();
    let payment_intent_id = match object["object"].as_str() {
        Some("payment_intent") => object["id"].as_str(),
        _ => object["payment_intent"].as_str(),
    };

    if kind == "payment_intent.succeeded" {
        let ours = object["metadata"]["payment_id"]
            .as_str()
            .and_then(|s| Uuid::parse_str(s).ok());
        if let (Some(payment_id), Some(intent)) = (ours, payment_intent_id) {
            // Conditional on `pending`: a no-op when phase 3 got there first.
            store::mark_succeeded(&st.db, payment_id, intent)
                .await
                .map_err(|e| ApiError::Internal(e.into()))?;
        }
    }
    // Recorded after its effect, which is idempotent: if recording fails, Stripe's redelivery
    // applies it again harmlessly.
    let fresh = store::record_event(
        &st.db,
        &store::StripeEvent {
            id: event.id.as_str(),
            kind: &kind,
            payment_intent_id,
            payload: raw.clone(),
        },
    )
    .await
    .map_err(|e| ApiError::Internal(e.into()))?;
    let outcome = if fresh { "recorded" } else { "duplicate" };
    metrics::WEBHOOKS.with_label_values(&[outcome]).inc();
    tracing::info!(event = %event.id.as_str(), %kind, outcome, "Stripe webhook");
    Ok((StatusCode::OK, Json(json!({ "received": true }))))
}

fn bad_signature(detail: &str) -> ApiError {
    metrics::WEBHOOKS
        .with_label_values(&["bad_signature"])
        .inc();
    ApiError::bad(SIGNATURE_HEADER, detail)
}
