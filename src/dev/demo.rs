//! What makes `orderflow dev` usable at once: the demo accounts, a token for the printed curl,
//! the Stripe sandbox on a local port, the token signing secret kept with the data, and the
//! outbox of emails that were "sent".

use std::{path::Path, time::Duration};

use anyhow::Context as _;
use axum::{Json, Router, extract::State, response::IntoResponse, routing::get};
use orderflow_payment::StripeConfig;
use orderflow_service_kit::{
    auth::{JwtKeys, Role},
    db::Db,
};
use serde_json::json;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::services::Wiring;

/// The demo customer, who places the printed order.
pub const DEMO_EMAIL: &str = "demo@orderflow.dev";
/// The demo shop admin (writes products, sees every order through the services' APIs).
pub const DEMO_ADMIN_EMAIL: &str = "admin@orderflow.dev";
/// Both demo accounts' password.
pub const DEMO_PASSWORD: &str = "orderflow-demo";
/// How long the printed token stays valid.
pub const DEMO_TOKEN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// The curl printed on start: the demo customer orders two espresso cups. The Idempotency-Key
/// (required) is the time, so each run places a new order and a retried one does not.
pub fn place_order_curl(url: &str, token: &str) -> String {
    format!(
        "curl -s -X POST {url}/api/v1/orders -H 'authorization: Bearer {token}' \
         -H \"Idempotency-Key: demo-$(date +%s)\" -H 'content-type: application/json' -d '{}'",
        demo_order("pm_card_visa")
    )
}

/// A valid order of the demo customer.
pub fn demo_order(payment_method: &str) -> serde_json::Value {
    json!({
        "items": [{ "product_id": "sku-1", "quantity": 2 }],
        "shipping_address": {
            "name": "Demo Customer", "line1": "1 Saga Street", "city": "Berlin",
            "postal_code": "10115", "country": "DE",
        },
        "payment_method": payment_method,
    })
}

/// The secret that signs access tokens: kept in `file` so tokens outlive a restart, new and
/// random in memory.
pub fn jwt_secret(file: Option<&Path>) -> anyhow::Result<String> {
    let fresh = || {
        let bytes: [u8; 32] = rand::random();
        hex::encode(bytes)
    };
    let Some(file) = file else {
        return Ok(fresh());
    };
    match std::fs::read_to_string(file) {
        Ok(s) if !s.trim().is_empty() => Ok(s.trim().to_owned()),
        Ok(_) => anyhow::bail!("{} is empty; delete it to get a new secret", file.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let secret = fresh();
            // Write-and-rename: a crash leaves the old file or the whole new one.
            let tmp = file.with_extension("tmp");
            std::fs::write(&tmp, &secret)?;
            std::fs::rename(&tmp, file)?;
            Ok(secret)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", file.display())),
    }
}

/// Creates the demo customer and admin if missing; answers a token of the customer.
pub async fn ensure_users(db: &Db, wiring: &Wiring) -> anyhow::Result<String> {
    orderflow_user::seed::ensure_admin(db, DEMO_ADMIN_EMAIL, DEMO_PASSWORD).await?;
    let customer = match orderflow_user::store::credentials_by_email(db, DEMO_EMAIL).await? {
        Some(c) => c.id,
        None => {
            let hash = orderflow_user::passwords::hash(DEMO_PASSWORD.to_owned()).await?;
            let inserted = orderflow_user::store::insert(
                db,
                DEMO_EMAIL,
                &hash,
                "Demo Customer",
                Role::Customer,
            )
            .await;
            match inserted {
                Ok(user) => user.id,
                Err(e) => return Err(e).context("creating the demo customer"),
            }
        }
    };
    Ok(JwtKeys::new(&wiring.jwt_secret).issue(customer, Role::Customer, DEMO_TOKEN_TTL)?)
}

/// The Stripe sandbox on a port of its own, its books kept in `books` (Stripe keeps payments
/// across our restarts, so the sandbox does too), posting signed webhooks to the payment API
/// under `url`. Answers the sandbox's URL.
pub async fn start_stripe_sandbox(
    books: Option<&Path>,
    url: &str,
    tasks: &mut JoinSet<()>,
    stop: &CancellationToken,
) -> anyhow::Result<String> {
    use orderflow_stripe_sandbox::{Sandbox, SandboxConfig, WebhookTarget};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let stripe_url = format!("http://{}", listener.local_addr()?);
    let config = SandboxConfig {
        secret_key: StripeConfig::SANDBOX_SECRET_KEY.to_owned(),
        webhook: Some(WebhookTarget {
            url: format!("{url}/api/v1/webhooks/stripe"),
            secret: StripeConfig::SANDBOX_WEBHOOK_SECRET.to_owned(),
        }),
    };
    let sandbox = match books {
        Some(path) => Sandbox::persistent(config, path)?,
        None => Sandbox::new(config),
    };
    let stop = stop.clone();
    tasks.spawn(async move {
        if let Err(e) = orderflow_stripe_sandbox::serve(listener, sandbox, stop).await {
            tracing::error!(error = %e, "the Stripe sandbox stopped");
        }
    });
    Ok(stripe_url)
}

/// The notification service's outbox, as the admin UI's Emails page reads it.
#[derive(Debug)]
pub struct NotificationOutbox(pub Db);

impl orderflow_engine::admin::outbox::Outbox for NotificationOutbox {
    fn recent(
        &self,
        limit: i64,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<
                    Output = anyhow::Result<Vec<orderflow_engine::admin::outbox::OutboxEmail>>,
                > + Send
                + '_,
        >,
    > {
        use orderflow_engine::admin::outbox::{OutboxEmail, subject_of};
        Box::pin(async move {
            let rows = orderflow_notification::store::outbox(&self.0, None, limit).await?;
            Ok(rows
                .into_iter()
                .filter(|m| m.channel == "email")
                .map(|m| OutboxEmail {
                    subject: subject_of(&m.content),
                    to: m.recipient,
                    at: m.created_at,
                    raw: m.content,
                })
                .collect())
        })
    }
}

/// `GET /dev/emails`: the notification outbox, newest first; what would have been sent.
pub fn emails_router(notification: Db) -> Router {
    Router::new()
        .route("/dev/emails", get(emails))
        .with_state(notification)
}

async fn emails(State(db): State<Db>) -> axum::response::Response {
    match orderflow_notification::store::outbox(&db, None, 100).await {
        Ok(rows) => Json(
            rows.into_iter()
                .map(|m| {
                    json!({
                        "notification_id": m.notification_id, "channel": m.channel,
                        "to": m.recipient, "content": m.content, "created_at": m.created_at,
                    })
                })
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Err(e) => orderflow_service_kit::ApiError::Internal(e.into()).into_response(),
    }
}
