//! The payment service's REST API under `/api/v1`.
//!
//! | method and path | who | |
//! |---|---|---|
//! | `GET /payments/{id}` | the payer or an admin | one payment with the Stripe events about it |
//! | `GET /payments?status=&order_id=&cursor=&limit=` | admin | newest first, cursor pages |
//! | `POST /webhooks/stripe` | Stripe (signed) | records Stripe's events |

use axum::{
    Json, Router,
    extract::{FromRef, Path, Query, State, rejection::QueryRejection},
    routing::{get, post},
};
use orderflow_service_kit::{
    ApiError,
    auth::{AdminUser, AuthUser, JwtKeys},
};
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{
    model::PaymentStatus,
    store::{self, ListFilter},
    webhooks,
};

/// The page size of the list unless `limit` says otherwise, and the most it may say.
pub const DEFAULT_LIMIT: i64 = 50;
pub const MAX_LIMIT: i64 = 200;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub keys: JwtKeys,
    /// Verifies `Stripe-Signature`.
    pub webhook_secret: String,
}

// Hand-written so the webhook secret never reaches a log line.
impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").finish_non_exhaustive()
    }
}

impl FromRef<AppState> for JwtKeys {
    fn from_ref(st: &AppState) -> Self {
        st.keys.clone()
    }
}

/// The `/api/v1` routes.
pub fn routes(state: AppState) -> Router {
    Router::new()
        .route("/payments", get(list))
        .route("/payments/{id}", get(show))
        .route("/webhooks/stripe", post(webhooks::receive))
        .with_state(state)
}

async fn show(
    State(st): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = Uuid::parse_str(&id)
        .map_err(|_| ApiError::bad("id", format!("`{id}` is not a payment id")))?;
    let payment = store::get(&st.pool, id)
        .await?
        // Someone else's payment is as absent as a missing one, so ids cannot be probed.
        .filter(|p| user.is_admin() || p.user_id == user.id())
        .ok_or_else(|| ApiError::NotFound(format!("no payment {id}")))?;
    let events = match &payment.payment_intent_id {
        Some(pi) => store::events_of(&st.pool, pi).await?,
        None => Vec::new(),
    };
    Ok(Json(json!({ "payment": payment, "stripe_events": events })))
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    status: Option<String>,
    order_id: Option<String>,
    cursor: Option<String>,
    limit: Option<String>,
}

async fn list(
    State(st): State<AppState>,
    _admin: AdminUser,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = q?;
    let status = q
        .status
        .as_deref()
        .map(|s| {
            PaymentStatus::parse(s).ok_or_else(|| {
                ApiError::bad(
                    "status",
                    format!("`{s}` is not one of pending, succeeded, declined, refunded, voided"),
                )
            })
        })
        .transpose()?;
    let uuid = |field: &str, v: &Option<String>| {
        v.as_deref()
            .map(|s| {
                Uuid::parse_str(s).map_err(|_| ApiError::bad(field, format!("`{s}` is not a UUID")))
            })
            .transpose()
    };
    let order_id = uuid("order_id", &q.order_id)?;
    let before = uuid("cursor", &q.cursor)?;
    let limit = match q.limit.as_deref() {
        None => DEFAULT_LIMIT,
        Some(l) => match l.parse::<i64>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => {
                return Err(ApiError::bad(
                    "limit",
                    format!("limit must be an integer from 1 to {MAX_LIMIT}"),
                ));
            }
        },
    };
    let filter = ListFilter {
        status,
        order_id,
        before,
        limit: limit + 1,
    };
    let mut rows = store::list(&st.pool, &filter).await?;
    // One row more than asked tells whether there is a next page, so the last page says so.
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let next = more
        .then(|| rows.last().map(|p| p.id.to_string()))
        .flatten();
    Ok(Json(json!({ "items": rows, "next_cursor": next })))
}
