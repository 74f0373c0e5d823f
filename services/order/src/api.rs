//! The REST API under `/api/v1`; every route needs a bearer token.
//!
//! | method and path | |
//! |---|---|
//! | `POST /orders` `{items: [{product_id, quantity}], shipping_address, payment_method}` | places an order; `Idempotency-Key` required: 202 with the order and its workflow id |
//! | `GET /orders?cursor=&limit=` | the caller's orders, newest first, cursor pages |
//! | `GET /orders/{id}` | one order: its owner or an admin, otherwise 404 |
//! | `POST /orders/{id}/cancel` | the owner cancels before confirmation; the saga compensates |
//! | `POST /orders/{id}/return` | the owner returns a confirmed order: starts its return saga |

use std::{sync::Arc, time::Duration};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{
        FromRef, Path, Query, State,
        rejection::{BytesRejection, QueryRejection},
    },
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use chrono::{DateTime, Utc};
use orderflow_service_kit::{
    ApiError,
    auth::{AuthUser, JwtKeys},
    db::Db,
    limit::RateLimiter,
    openapi::{BearerErrors, BearerJwt, MoneyView},
    problem::{Problem, parse_json},
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use tokio::sync::Notify;
use utoipa::OpenApi;
use uuid::Uuid;

use orderflow_workflows::returns::contracts::ReturnSagaInput;

use crate::{
    clients::{CallError, Clients},
    model::{CancelCode, NewOrder, OrderRequest, OrderStatus, ShippingAddress},
    starter,
    store::{self, NewOrderRow, Order, PricedLine, Tx},
};

/// What every handler shares.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The order database, on either backend.
    pub db: Db,
    pub keys: JwtKeys,
    pub clients: Clients,
    /// Wakes the background starter (after a start that had to be deferred).
    pub wake: Arc<Notify>,
    pub start_backoff_cap: Duration,
    /// Orders placed per user, across replicas.
    pub order_limit: RateLimiter,
}

/// The order API's OpenAPI document, served at `/api/v1/openapi.json`.
#[derive(Debug, OpenApi)]
#[openapi(
    info(title = "OrderFlow order service", description = "Places orders and follows their sagas."),
    paths(place, list, show, cancel, return_order),
    components(schemas(Problem)),
    modifiers(&BearerJwt)
)]
pub struct ApiDoc;

impl FromRef<AppState> for JwtKeys {
    fn from_ref(s: &AppState) -> Self {
        s.keys.clone()
    }
}

/// The `/api/v1` routes; [`orderflow_service_kit::http::app`] adds the rest.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/orders", post(place).get(list))
        .route("/orders/{id}", get(show))
        .route("/orders/{id}/cancel", post(cancel))
        .route("/orders/{id}/return", post(return_order))
        .route(
            "/openapi.json",
            orderflow_service_kit::openapi::serve(&ApiDoc::openapi()),
        )
        .with_state(state)
}

/// An order as its owner sees it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OrderView {
    pub id: Uuid,
    pub user_id: Uuid,
    pub status: OrderStatus,
    pub items: Vec<PricedLine>,
    pub total: MoneyView,
    pub shipping_address: Option<ShippingAddress>,
    /// The order saga, once started.
    pub workflow_id: Option<Uuid>,
    /// The saga's status as last seen (`running`, `completed`, `compensated`, ...).
    pub saga_status: Option<String>,
    pub cancellation: Option<Cancellation>,
    pub cancel_requested_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Why an order was cancelled.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Cancellation {
    pub code: CancelCode,
    pub reason: Option<String>,
}

/// A page of the caller's orders.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OrderPage {
    pub items: Vec<OrderView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<Uuid>,
}

pub fn view(o: &Order) -> OrderView {
    OrderView {
        id: o.id,
        user_id: o.user_id,
        status: o.status,
        items: o.items.0.clone(),
        total: MoneyView {
            amount_minor: o.total_minor,
            currency: o.currency.clone(),
        },
        shipping_address: o.shipping_address.as_ref().map(|a| a.0.clone()),
        workflow_id: o.workflow_id,
        saga_status: o.saga_status.clone(),
        cancellation: o.cancel_code.map(|code| Cancellation {
            code,
            reason: o.cancel_reason.clone(),
        }),
        cancel_requested_at: o.cancel_requested_at,
        created_at: o.created_at,
        updated_at: o.updated_at,
    }
}

fn unavailable(e: CallError) -> ApiError {
    match e {
        CallError::Unavailable { .. } => ApiError::Unavailable(e.into()),
        // Another service refusing our well-formed call is our bug, not the caller's.
        CallError::Refused { .. } => ApiError::Internal(e.into()),
    }
}

fn idempotency_key(headers: &HeaderMap) -> Result<String, ApiError> {
    const FIELD: &str = "Idempotency-Key";
    let v = headers.get("idempotency-key").ok_or_else(|| {
        ApiError::bad(
            FIELD,
            "is required, so that a retried request cannot place the order twice",
        )
    })?;
    let k = v
        .to_str()
        .map_err(|_| ApiError::bad(FIELD, "must be visible ASCII"))?
        .trim();
    if k.is_empty() || k.len() > 255 {
        return Err(ApiError::bad(FIELD, "must be 1 to 255 characters"));
    }
    Ok(k.to_owned())
}

/// The same key with the same request is the same order; with another request it is a mistake.
fn replay(existing: &Order, hash: &str) -> Result<Response, ApiError> {
    if existing.request_hash.as_deref() != Some(hash) {
        return Err(ApiError::Conflict(
            "this Idempotency-Key was already used with a different request".into(),
        ));
    }
    Ok(accepted(existing))
}

fn accepted(o: &Order) -> Response {
    (
        StatusCode::ACCEPTED,
        [(header::LOCATION, format!("/api/v1/orders/{}", o.id))],
        Json(view(o)),
    )
        .into_response()
}

/// `POST /orders`: places an order and starts its saga.
#[utoipa::path(
    post,
    path = "/api/v1/orders",
    tag = "orders",
    security(("bearer" = [])),
    params(("Idempotency-Key" = String, Header, description = "1 to 255 characters; the same key and body is the same order")),
    request_body = OrderRequest,
    responses(
        (status = 202, description = "Placed (or the order placed earlier with this key)", body = OrderView),
        (status = 400, description = "A field or the Idempotency-Key is missing or invalid; `field` names it", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The Idempotency-Key was used with another body", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is too large", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "An unknown product, mixed currencies or a total too large", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many orders by this user; see `Retry-After`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The inventory or user service is unavailable", body = Problem, content_type = "application/problem+json"),
        BearerErrors,
    )
)]
async fn place(
    State(s): State<AppState>,
    caller: AuthUser,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    s.order_limit.check(&caller.id().to_string()).await?;
    let key = idempotency_key(&headers)?;
    let body = body?;
    let req: OrderRequest = parse_json(&body)?;
    let order = NewOrder::parse(req).map_err(|e| ApiError::bad(&e.field, e.detail))?;
    // serde_json's map is ordered by key, so this hash ignores key order and whitespace.
    let canonical: Value =
        serde_json::from_slice(&body).map_err(|e| ApiError::bad("body", e.to_string()))?;
    let hash: String = Sha256::digest(canonical.to_string().as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let user = caller.id();
    if let Some(existing) = store::by_key(&s.db, user, &key).await? {
        return replay(&existing, &hash);
    }

    let ids: Vec<&str> = order.lines.iter().map(|l| l.product_id.as_str()).collect();
    let prices = s.clients.prices(&ids).await.map_err(unavailable)?;
    let mut lines = Vec::with_capacity(order.lines.len());
    let mut currency: Option<String> = None;
    let mut total: i64 = 0;
    for (i, line) in order.lines.iter().enumerate() {
        let field = format!("items[{i}].product_id");
        let price = prices.get(&line.product_id).ok_or_else(|| {
            ApiError::unprocessable(&field, format!("no product `{}`", line.product_id))
        })?;
        match &currency {
            None => currency = Some(price.currency.clone()),
            Some(c) if *c != price.currency => {
                return Err(ApiError::unprocessable(
                    &field,
                    format!(
                        "is priced in {}, the rest of the order in {c}; one order, one currency",
                        price.currency
                    ),
                ));
            }
            Some(_) => {}
        }
        total = price
            .amount_minor
            .checked_mul(i64::from(line.quantity))
            .and_then(|t| t.checked_add(total))
            .ok_or_else(|| ApiError::unprocessable("items", "the total is too large"))?;
        lines.push(PricedLine {
            product_id: line.product_id.clone(),
            quantity: line.quantity,
            unit_price_minor: Some(price.amount_minor),
        });
    }
    let currency = currency.unwrap_or_default();
    let token = orderflow_service_kit::auth::bearer_of(&headers).unwrap_or_default();
    let email = s.clients.email(token).await.map_err(|e| match e {
        CallError::Refused {
            status: 401 | 404, ..
        } => ApiError::Unauthorized,
        e => unavailable(e),
    })?;

    let id = Uuid::now_v7();
    let mut tx = Tx::begin(&s.db).await?;
    let inserted = store::insert_with_intent(
        &mut tx,
        &NewOrderRow {
            id,
            user_id: user,
            items: &lines,
            total_minor: total,
            currency: &currency,
            shipping_address: &order.shipping_address,
            email: &email,
            payment_method: &order.payment_method,
            idempotency_key: &key,
            request_hash: &hash,
        },
    )
    .await?;
    tx.commit().await?;
    if inserted.is_some() {
        crate::metrics::order_created();
    }
    if inserted.is_none() {
        // A concurrent request with the same key won the insert.
        let existing = store::by_key(&s.db, user, &key)
            .await?
            .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("order for key vanished")))?;
        return replay(&existing, &hash);
    }
    // The order is safe now; starting its saga here is only the fast path.
    match starter::start_one(&s.db, &s.clients, Some(id), s.start_backoff_cap).await {
        Ok(starter::Attempt::Deferred { .. }) => s.wake.notify_one(),
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(order = %id, error = %e, "saga start left to the background starter")
        }
    }
    let stored = store::get(&s.db, id)
        .await?
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("order {id} vanished")))?;
    Ok(accepted(&stored))
}

fn order_id(raw: &str) -> Result<Uuid, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::bad("id", format!("`{raw}` is not an order id (a UUID)")))
}

/// Order `id` if `caller` placed it (what only the owner may act on), else 404.
async fn owned(s: &AppState, caller: &AuthUser, id: Uuid) -> Result<Order, ApiError> {
    store::get(&s.db, id)
        .await?
        .filter(|o| o.user_id == caller.id())
        .ok_or_else(|| ApiError::NotFound(format!("no order {id}")))
}

/// The order if the caller may see it. Someone else's order is "not found", exactly like a
/// missing one, so order ids cannot be probed.
async fn visible(s: &AppState, caller: &AuthUser, id: Uuid) -> Result<Order, ApiError> {
    store::get(&s.db, id)
        .await?
        .filter(|o| o.user_id == caller.id() || caller.is_admin())
        .ok_or_else(|| ApiError::NotFound(format!("no order {id}")))
}

/// `GET /orders/{id}`: the caller's order (any order for an admin).
#[utoipa::path(
    get,
    path = "/api/v1/orders/{id}",
    tag = "orders",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The order id (a UUID)")),
    responses(
        (status = 200, description = "The order", body = OrderView),
        (status = 400, description = "`id` is not a UUID", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such order, or another user's", body = Problem, content_type = "application/problem+json"),
        BearerErrors,
    )
)]
async fn show(
    State(s): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
) -> Result<Json<OrderView>, ApiError> {
    let order = visible(&s, &caller, order_id(&id)?).await?;
    Ok(Json(view(&order)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    cursor: Option<String>,
    limit: Option<String>,
}

/// `GET /orders`: the caller's orders, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/orders",
    tag = "orders",
    security(("bearer" = [])),
    params(
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
        ("limit" = Option<String>, Query, description = "1 to 100 (default 20)"),
    ),
    responses(
        (status = 200, description = "A page of orders", body = OrderPage),
        (status = 400, description = "A parameter is invalid; `field` names it", body = Problem, content_type = "application/problem+json"),
        BearerErrors,
    )
)]
async fn list(
    State(s): State<AppState>,
    caller: AuthUser,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<OrderPage>, ApiError> {
    let Query(q) = q?;
    let limit = match q.limit.as_deref() {
        None => 20,
        Some(l) => l
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=100).contains(n))
            .ok_or_else(|| {
                ApiError::bad("limit", format!("`{l}` is not a number from 1 to 100"))
            })?,
    };
    let before = q
        .cursor
        .as_deref()
        .map(|c| {
            c.parse::<Uuid>()
                .map_err(|_| ApiError::bad("cursor", format!("`{c}` is not a cursor")))
        })
        .transpose()?;
    // One more than asked says whether there is a next page, so the last page has no cursor.
    let mut rows = store::list_for_user(&s.db, caller.id(), before, limit + 1).await?;
    let more = i64::try_from(rows.len()).unwrap_or(i64::MAX) > limit;
    rows.truncate(usize::try_from(limit).unwrap_or(20));
    let next = more.then(|| rows.last().map(|o| o.id)).flatten();
    let items = rows.iter().map(view).collect();
    Ok(Json(OrderPage {
        items,
        next_cursor: next,
    }))
}

/// `POST /orders/{id}/cancel`: the owner cancels before confirmation; the saga compensates.
#[utoipa::path(
    post,
    path = "/api/v1/orders/{id}/cancel",
    tag = "orders",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The order id (a UUID)")),
    responses(
        (status = 200, description = "Cancelled (it had not started, or was already)", body = OrderView),
        (status = 202, description = "The saga was asked to compensate", body = OrderView),
        (status = 400, description = "`id` is not a UUID", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such order, or another user's", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The order is confirmed or its saga finished", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The engine is unavailable", body = Problem, content_type = "application/problem+json"),
        BearerErrors,
    )
)]
async fn cancel(
    State(s): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = order_id(&id)?;
    let order = owned(&s, &caller, id).await?;
    match order.status {
        OrderStatus::Cancelled => return Ok(Json(view(&order)).into_response()),
        OrderStatus::Confirmed => {
            return Err(ApiError::Conflict(
                "the order is confirmed and can no longer be cancelled".into(),
            ));
        }
        OrderStatus::Pending => {}
    }
    let mut tx = Tx::begin(&s.db).await?;
    // Waits for a saga start in progress (it holds the intent's lock), so the answer below is
    // either "never started" or "started, with this workflow id".
    if store::cancel_unstarted(
        &mut tx,
        id,
        CancelCode::CancelledByUser,
        "cancelled by the customer",
    )
    .await?
    {
        tx.commit().await?;
        let o = store::get(&s.db, id).await?.unwrap_or(order);
        return Ok(Json(view(&o)).into_response());
    }
    store::mark_cancel_requested(&mut tx, id).await?;
    let current = store::get_for_update(&mut tx, id).await?.unwrap_or(order);
    tx.commit().await?;
    let Some(workflow) = current.workflow_id else {
        return Err(ApiError::Internal(anyhow::anyhow!(
            "order {id} has neither a saga nor an intent to start one"
        )));
    };
    match s.clients.cancel_saga(workflow, caller.id()).await {
        Ok(()) => Ok((StatusCode::ACCEPTED, Json(view(&current))).into_response()),
        Err(CallError::Refused { status: 409, .. }) => Err(ApiError::Conflict(
            "the order's saga has already finished".into(),
        )),
        Err(e) => Err(unavailable(e)),
    }
}

/// The answer to a return request.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ReturnStarted {
    pub order_id: Uuid,
    /// The return saga: it waits for the parcel (`parcel_received`), then refunds.
    pub return_workflow_id: Uuid,
}

/// `POST /orders/{id}/return`: the owner returns a confirmed order. One return per order: a
/// repeated request answers with the same return saga.
#[utoipa::path(
    post,
    path = "/api/v1/orders/{id}/return",
    tag = "orders",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The order id (a UUID)")),
    responses(
        (status = 202, description = "The return saga started (or had started already)", body = ReturnStarted),
        (status = 400, description = "`id` is not a UUID", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such order, or another user's", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The order is not confirmed", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The engine is unavailable", body = Problem, content_type = "application/problem+json"),
        BearerErrors,
    )
)]
async fn return_order(
    State(s): State<AppState>,
    caller: AuthUser,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = order_id(&id)?;
    let order = owned(&s, &caller, id).await?;
    let (OrderStatus::Confirmed, Some(order_workflow_id)) = (order.status, order.workflow_id)
    else {
        return Err(ApiError::Conflict(format!(
            "only a confirmed order can be returned; order {id} is {}",
            match order.status {
                OrderStatus::Pending => "pending",
                OrderStatus::Confirmed => "confirmed",
                OrderStatus::Cancelled => "cancelled",
            }
        )));
    };
    let o = starter::saga_input(&order);
    let input = ReturnSagaInput {
        order_id: o.order_id,
        order_workflow_id,
        user_id: o.user_id,
        items: o.items,
        total: o.total,
        email: o.email,
    };
    let started = s.clients.start_return(&input).await.map_err(unavailable)?;
    let body = ReturnStarted {
        order_id: id,
        return_workflow_id: started,
    };
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}
