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
    db::Db,
    openapi::{AdminErrors, BearerErrors, BearerJwt},
    problem::Problem,
};
use serde::{Deserialize, Serialize};
use utoipa::OpenApi;
use uuid::Uuid;

use crate::{
    model::{Payment, PaymentStatus},
    store::{self, ListFilter, RecordedEvent},
    webhooks,
};

/// The page size of the list unless `limit` says otherwise, and the most it may say.
pub const DEFAULT_LIMIT: i64 = 50;
pub const MAX_LIMIT: i64 = 200;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The payment database, Postgres or embedded SQLite.
    pub db: Db,
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

/// The payment API's OpenAPI document, served at `/api/v1/openapi.json`.
#[derive(Debug, OpenApi)]
#[openapi(
    info(title = "OrderFlow payment service", description = "Payments and Stripe's webhooks."),
    paths(show, list, webhooks::receive),
    components(schemas(Problem)),
    modifiers(&BearerJwt)
)]
pub struct ApiDoc;

/// A payment with what Stripe told us about it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PaymentDetail {
    pub payment: Payment,
    pub stripe_events: Vec<RecordedEvent>,
}

/// A page of payments.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PaymentPage {
    pub items: Vec<Payment>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// The `/api/v1` routes.
pub fn routes(state: AppState) -> Router {
    Router::new()
        .route("/payments", get(list))
        .route("/payments/{id}", get(show))
        .route("/webhooks/stripe", post(webhooks::receive))
        .route(
            "/openapi.json",
            orderflow_service_kit::openapi::serve(&ApiDoc::openapi()),
        )
        .with_state(state)
}

/// One payment: its payer's or, for an admin, any.
#[utoipa::path(
    get,
    path = "/api/v1/payments/{id}",
    tag = "payments",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The payment id (a UUID)")),
    responses(
        (status = 200, description = "The payment", body = PaymentDetail),
        (status = 400, description = "`id` is not a UUID", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such payment, or another user's", body = Problem, content_type = "application/problem+json"),
        BearerErrors,
    )
)]
async fn show(
    State(st): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
) -> Result<Json<PaymentDetail>, ApiError> {
    let id = Uuid::parse_str(&id)
        .map_err(|_| ApiError::bad("id", format!("`{id}` is not a payment id")))?;
    let payment = store::get(&st.db, id)
        .await?
        // Someone else's payment is as absent as a missing one, so ids cannot be probed.
        .filter(|p| user.is_admin() || p.user_id == user.id())
        .ok_or_else(|| ApiError::NotFound(format!("no payment {id}")))?;
    let events = match &payment.payment_intent_id {
        Some(pi) => store::events_of(&st.db, pi).await?,
        None => Vec::new(),
    };
    Ok(Json(PaymentDetail {
        payment,
        stripe_events: events,
    }))
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    status: Option<String>,
    order_id: Option<String>,
    cursor: Option<String>,
    limit: Option<String>,
}

/// Payments, newest first (admin).
#[utoipa::path(
    get,
    path = "/api/v1/payments",
    tag = "payments",
    security(("bearer" = [])),
    params(
        ("status" = Option<PaymentStatus>, Query, description = "Only payments in this status"),
        ("order_id" = Option<String>, Query, description = "Only the payments of this order (a UUID)"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
        ("limit" = Option<String>, Query, description = "1 to 200 (default 50)"),
    ),
    responses(
        (status = 200, description = "A page of payments", body = PaymentPage),
        (status = 400, description = "A parameter is invalid; `field` names it", body = Problem, content_type = "application/problem+json"),
        AdminErrors,
    )
)]
async fn list(
    State(st): State<AppState>,
    _admin: AdminUser,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<PaymentPage>, ApiError> {
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
    let mut rows = store::list(&st.db, &filter).await?;
    // One row more than asked tells whether there is a next page, so the last page says so.
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let next = more
        .then(|| rows.last().map(|p| p.id.to_string()))
        .flatten();
    Ok(Json(PaymentPage {
        items: rows,
        next_cursor: next,
    }))
}
