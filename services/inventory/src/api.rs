//! The inventory's REST API under `/api/v1`. Reading the catalogue is public; changing it takes
//! an admin token.
//!
//! | method and path | who | |
//! |---|---|---|
//! | `GET /products?limit=&cursor=` | anyone | the catalogue in id order, cursor pages |
//! | `GET /products?ids=a,b` | anyone | the named products (up to 100) that exist, to price an order |
//! | `GET /products/{id}` | anyone | one product |
//! | `POST /products` | admin | adds a product: 201, 409 if the id is taken |
//! | `PATCH /products/{id}` | admin | changes name, description, price or units on hand |
//! | `GET /products/{id}/stock` | admin | on hand, reserved and sold units |
//! | `GET /reservations?workflow_id=` | admin | a saga's reservations with their items |

use axum::{
    Json, Router,
    body::Bytes,
    extract::{FromRef, Path, Query, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use chrono::{DateTime, Utc};
use orderflow_activities::contracts::Money;
use orderflow_service_kit::{
    ApiError,
    auth::{AdminUser, JwtKeys},
    problem::parse_json,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::{
    model::{InvalidValue, Price, Product, ProductName, Sku, Stock, stock_count},
    store::{
        products::{self, NewProduct, ProductChanges},
        reservations,
    },
};

/// How many ids one `?ids=` lookup may name.
pub const MAX_IDS: usize = 100;

/// What the handlers share.
#[derive(Clone, Debug)]
pub struct AppState {
    pub pool: PgPool,
    pub keys: JwtKeys,
}

impl FromRef<AppState> for JwtKeys {
    fn from_ref(st: &AppState) -> Self {
        st.keys.clone()
    }
}

/// The `/api/v1` routes.
pub fn routes(state: AppState) -> Router {
    Router::new()
        .route("/products", get(list).post(create))
        .route("/products/{id}", get(show).patch(update))
        .route("/products/{id}/stock", get(stock))
        .route("/reservations", get(reservations_of))
        .with_state(state)
}

/// A product as the public sees it: what it costs and how many can be ordered now.
#[derive(Debug, Serialize)]
pub struct ProductView {
    pub id: String,
    pub name: String,
    pub description: String,
    pub price: Money,
    /// Units that can be ordered now.
    pub available: i32,
    pub updated_at: DateTime<Utc>,
}

impl From<Product> for ProductView {
    fn from(p: Product) -> Self {
        Self {
            id: p.id,
            name: p.name,
            description: p.description,
            price: p.price,
            available: p.stock.on_hand,
            updated_at: p.updated_at,
        }
    }
}

/// A product as its admin sees it: with where every unit is.
#[derive(Debug, Serialize)]
pub struct AdminProductView {
    #[serde(flatten)]
    pub product: ProductView,
    pub stock: Stock,
    pub created_at: DateTime<Utc>,
}

impl From<Product> for AdminProductView {
    fn from(p: Product) -> Self {
        let (stock, created_at) = (p.stock, p.created_at);
        Self {
            product: p.into(),
            stock,
            created_at,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    limit: Option<String>,
    cursor: Option<String>,
    ids: Option<String>,
}

/// `GET /products`: a page of the catalogue, or the products named by `ids`.
async fn list(
    State(st): State<AppState>,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(q) = q?;
    let mut conn = st.pool.acquire().await?;
    if let Some(ids) = q.ids.as_deref() {
        if q.cursor.is_some() || q.limit.is_some() {
            return Err(ApiError::bad(
                "ids",
                "`ids` returns every named product at once; it takes no `cursor` or `limit`",
            ));
        }
        let ids = parse_ids(ids)?;
        let found = products::get_many(&mut conn, &ids).await?;
        let items: Vec<ProductView> = found.into_iter().map(ProductView::from).collect();
        return Ok(Json(json!({ "items": items, "next_cursor": null })));
    }
    let limit = match q.limit.as_deref() {
        None => 50,
        Some(l) => match l.parse::<i64>() {
            Ok(n) if (1..=200).contains(&n) => n,
            _ => {
                return Err(ApiError::bad(
                    "limit",
                    format!("`{l}` is not a number from 1 to 200"),
                ));
            }
        },
    };
    let after = q
        .cursor
        .as_deref()
        .map(|c| {
            Sku::parse(c).map_err(|_| ApiError::bad("cursor", format!("`{c}` is not a cursor")))
        })
        .transpose()?;
    // One row more than asked tells whether another page exists.
    let mut rows = products::list(&mut conn, after.as_ref().map(Sku::as_str), limit + 1).await?;
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let next = more.then(|| rows.last().map(|p| p.id.clone())).flatten();
    let items: Vec<ProductView> = rows.into_iter().map(ProductView::from).collect();
    Ok(Json(json!({ "items": items, "next_cursor": next })))
}

/// `a,b,c` into distinct product ids.
fn parse_ids(raw: &str) -> Result<Vec<String>, ApiError> {
    let mut ids = Vec::new();
    for id in raw.split(',') {
        let sku =
            Sku::parse(id.trim()).map_err(|e| ApiError::bad("ids", format!("`{id}`: {e}")))?;
        if !ids.contains(&sku.as_str().to_owned()) {
            ids.push(sku.as_str().to_owned());
        }
    }
    if ids.len() > MAX_IDS {
        return Err(ApiError::bad(
            "ids",
            format!("at most {MAX_IDS} ids at once, got {}", ids.len()),
        ));
    }
    Ok(ids)
}

/// A path id that cannot name a product is simply not found.
fn path_sku(id: &str) -> Result<Sku, ApiError> {
    Sku::parse(id).map_err(|_| ApiError::NotFound(format!("no product `{id}`")))
}

/// `GET /products/{id}`.
async fn show(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ProductView>, ApiError> {
    let sku = path_sku(&id)?;
    let mut conn = st.pool.acquire().await?;
    products::get(&mut conn, sku.as_str())
        .await?
        .map(|p| Json(p.into()))
        .ok_or_else(|| ApiError::NotFound(format!("no product `{id}`")))
}

/// `GET /products/{id}/stock` (admin).
async fn stock(
    _admin: AdminUser,
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<AdminProductView>, ApiError> {
    let sku = path_sku(&id)?;
    let mut conn = st.pool.acquire().await?;
    products::get(&mut conn, sku.as_str())
        .await?
        .map(|p| Json(p.into()))
        .ok_or_else(|| ApiError::NotFound(format!("no product `{id}`")))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MoneyBody {
    amount_minor: i64,
    currency: String,
}

fn price(field: &str, m: &MoneyBody) -> Result<Price, ApiError> {
    Price::new(m.amount_minor, &m.currency).map_err(|e| {
        let which = match e {
            InvalidValue::Currency => "currency",
            _ => "amount_minor",
        };
        ApiError::unprocessable(&format!("{field}.{which}"), e.to_string())
    })
}

fn invalid(field: &str) -> impl FnOnce(InvalidValue) -> ApiError + '_ {
    move |e| ApiError::unprocessable(field, e.to_string())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    id: String,
    name: String,
    #[serde(default)]
    description: String,
    price: MoneyBody,
    on_hand: i64,
}

/// `POST /products` (admin).
async fn create(
    _admin: AdminUser,
    State(st): State<AppState>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let b: CreateBody = parse_json(&body)?;
    let product = NewProduct {
        id: Sku::parse(&b.id).map_err(invalid("id"))?,
        name: ProductName::parse(&b.name).map_err(invalid("name"))?,
        description: b.description,
        price: price("price", &b.price)?,
        on_hand: stock_count(b.on_hand).map_err(invalid("on_hand"))?,
    };
    let mut conn = st.pool.acquire().await?;
    let created = products::create(&mut conn, &product)
        .await?
        .ok_or_else(|| ApiError::Conflict(format!("product `{}` exists", product.id)))?;
    let location = format!("/api/v1/products/{}", created.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(AdminProductView::from(created)),
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateBody {
    name: Option<String>,
    description: Option<String>,
    price: Option<MoneyBody>,
    /// Units free to reserve; reserved and sold units belong to sagas and cannot be set.
    on_hand: Option<i64>,
}

/// `PATCH /products/{id}` (admin).
async fn update(
    _admin: AdminUser,
    State(st): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<AdminProductView>, ApiError> {
    let sku = path_sku(&id)?;
    let b: UpdateBody = parse_json(&body)?;
    let changes = ProductChanges {
        name: b
            .name
            .as_deref()
            .map(ProductName::parse)
            .transpose()
            .map_err(invalid("name"))?,
        description: b.description,
        price: b.price.as_ref().map(|m| price("price", m)).transpose()?,
        on_hand: b
            .on_hand
            .map(stock_count)
            .transpose()
            .map_err(invalid("on_hand"))?,
    };
    if changes.name.is_none()
        && changes.description.is_none()
        && changes.price.is_none()
        && changes.on_hand.is_none()
    {
        return Err(ApiError::bad(
            "body",
            "nothing to change: give name, description, price or on_hand",
        ));
    }
    let mut conn = st.pool.acquire().await?;
    products::update(&mut conn, sku.as_str(), &changes)
        .await?
        .map(|p| Json(p.into()))
        .ok_or_else(|| ApiError::NotFound(format!("no product `{id}`")))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReservationsQuery {
    workflow_id: Option<String>,
}

/// `GET /reservations?workflow_id=` (admin): what a saga holds, for inspection and repair.
async fn reservations_of(
    _admin: AdminUser,
    State(st): State<AppState>,
    q: Result<Query<ReservationsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(q) = q?;
    let raw = q
        .workflow_id
        .ok_or_else(|| ApiError::bad("workflow_id", "the saga's workflow id is required"))?;
    let workflow_id = Uuid::parse_str(&raw)
        .map_err(|_| ApiError::bad("workflow_id", format!("`{raw}` is not a UUID")))?;
    let mut conn = st.pool.acquire().await?;
    let found = reservations::for_workflow(&mut conn, workflow_id).await?;
    let items: Vec<serde_json::Value> = found
        .into_iter()
        .map(|r| {
            json!({
                "id": r.id,
                "workflow_id": r.workflow_id,
                "step": r.step,
                "order_id": r.order_id,
                "status": r.status,
                "expires_at": r.expires_at,
                "settle_reason": r.settle_reason,
                "items": r.items.iter()
                    .map(|(p, q)| json!({ "product_id": p, "quantity": q }))
                    .collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(Json(json!({ "items": items })))
}
