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
use orderflow_service_kit::db::Db;
use orderflow_service_kit::{
    ApiError,
    auth::{AdminUser, JwtKeys},
    openapi::{AdminErrors, BearerJwt, MoneyView, OtherErrors},
    problem::{Problem, parse_json},
};
use orderflow_workflows::order::contracts::Money;
use serde::{Deserialize, Serialize};
use utoipa::OpenApi;
use uuid::Uuid;

use crate::{
    model::{
        InvalidValue, Price, Product, ProductName, ReservationStatus, Sku, Stock, stock_count,
    },
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
    pub db: Db,
    pub keys: JwtKeys,
}

impl FromRef<AppState> for JwtKeys {
    fn from_ref(st: &AppState) -> Self {
        st.keys.clone()
    }
}

/// The inventory API's OpenAPI document, served at `/api/v1/openapi.json`.
#[derive(Debug, OpenApi)]
#[openapi(
    info(title = "OrderFlow inventory service", description = "Products, stock and reservations."),
    paths(list, show, create, update, stock, reservations_of),
    components(schemas(Problem)),
    modifiers(&BearerJwt)
)]
pub struct ApiDoc;

/// The `/api/v1` routes.
pub fn routes(state: AppState) -> Router {
    Router::new()
        .route("/products", get(list).post(create))
        .route("/products/{id}", get(show).patch(update))
        .route("/products/{id}/stock", get(stock))
        .route("/reservations", get(reservations_of))
        .route(
            "/openapi.json",
            orderflow_service_kit::openapi::serve(&ApiDoc::openapi()),
        )
        .with_state(state)
}

/// A product as the public sees it: what it costs and how many can be ordered now.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ProductView {
    pub id: String,
    pub name: String,
    pub description: String,
    #[schema(value_type = MoneyView)]
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
#[derive(Debug, Serialize, utoipa::ToSchema)]
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

/// A page of the catalogue.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ProductPage {
    pub items: Vec<ProductView>,
    /// Pass as `cursor` for the next page; absent on the last page and for `ids`.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    limit: Option<String>,
    cursor: Option<String>,
    ids: Option<String>,
}

/// `GET /products`: a page of the catalogue, or the products named by `ids`.
#[utoipa::path(
    get,
    path = "/api/v1/products",
    tag = "products",
    params(
        ("limit" = Option<String>, Query, description = "1 to 200 (default 50)"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
        ("ids" = Option<String>, Query, description = "Comma-separated product ids (at most 100); not with `limit` or `cursor`"),
    ),
    responses(
        (status = 200, description = "A page of products", body = ProductPage),
        (status = 400, description = "A parameter is invalid; `field` names it", body = Problem, content_type = "application/problem+json"),
        OtherErrors,
    )
)]
async fn list(
    State(st): State<AppState>,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<ProductPage>, ApiError> {
    let Query(q) = q?;
    if let Some(ids) = q.ids.as_deref() {
        if q.cursor.is_some() || q.limit.is_some() {
            return Err(ApiError::bad(
                "ids",
                "`ids` returns every named product at once; it takes no `cursor` or `limit`",
            ));
        }
        let ids = parse_ids(ids)?;
        let found = products::get_many(&st.db, &ids).await?;
        let items = found.into_iter().map(ProductView::from).collect();
        return Ok(Json(ProductPage {
            items,
            next_cursor: None,
        }));
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
    let mut rows = products::list(&st.db, after.as_ref().map(Sku::as_str), limit + 1).await?;
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let next = more.then(|| rows.last().map(|p| p.id.clone())).flatten();
    let items = rows.into_iter().map(ProductView::from).collect();
    Ok(Json(ProductPage {
        items,
        next_cursor: next,
    }))
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
#[utoipa::path(
    get,
    path = "/api/v1/products/{id}",
    tag = "products",
    params(("id" = String, Path, description = "The product id (SKU)")),
    responses(
        (status = 200, description = "The product", body = ProductView),
        (status = 404, description = "No such product", body = Problem, content_type = "application/problem+json"),
        OtherErrors,
    )
)]
async fn show(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ProductView>, ApiError> {
    let sku = path_sku(&id)?;
    products::get(&st.db, sku.as_str())
        .await?
        .map(|p| Json(p.into()))
        .ok_or_else(|| ApiError::NotFound(format!("no product `{id}`")))
}

/// `GET /products/{id}/stock` (admin).
#[utoipa::path(
    get,
    path = "/api/v1/products/{id}/stock",
    tag = "products",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The product id (SKU)")),
    responses(
        (status = 200, description = "The product with where every unit is", body = AdminProductView),
        (status = 404, description = "No such product", body = Problem, content_type = "application/problem+json"),
        AdminErrors,
    )
)]
async fn stock(
    _admin: AdminUser,
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<AdminProductView>, ApiError> {
    let sku = path_sku(&id)?;
    products::get(&st.db, sku.as_str())
        .await?
        .map(|p| Json(p.into()))
        .ok_or_else(|| ApiError::NotFound(format!("no product `{id}`")))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
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

#[derive(Debug, Deserialize, utoipa::ToSchema)]
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
#[utoipa::path(
    post,
    path = "/api/v1/products",
    tag = "products",
    security(("bearer" = [])),
    request_body = CreateBody,
    responses(
        (status = 201, description = "Added", body = AdminProductView),
        (status = 400, description = "The body is malformed; `field` names the culprit", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The id is taken", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is too large", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A value is out of range; `field` names it", body = Problem, content_type = "application/problem+json"),
        AdminErrors,
    )
)]
async fn create(
    _admin: AdminUser,
    State(st): State<AppState>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let b: CreateBody = parse_json(&body?)?;
    let product = NewProduct {
        id: Sku::parse(&b.id).map_err(invalid("id"))?,
        name: ProductName::parse(&b.name).map_err(invalid("name"))?,
        description: b.description,
        price: price("price", &b.price)?,
        on_hand: stock_count(b.on_hand).map_err(invalid("on_hand"))?,
    };
    let created = products::create(&st.db, &product)
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

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct UpdateBody {
    name: Option<String>,
    description: Option<String>,
    price: Option<MoneyBody>,
    /// Units free to reserve; reserved and sold units belong to sagas and cannot be set.
    on_hand: Option<i64>,
}

/// `PATCH /products/{id}` (admin).
#[utoipa::path(
    patch,
    path = "/api/v1/products/{id}",
    tag = "products",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The product id (SKU)")),
    request_body = UpdateBody,
    responses(
        (status = 200, description = "The changed product", body = AdminProductView),
        (status = 400, description = "The body is malformed or changes nothing", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such product", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is too large", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A value is out of range; `field` names it", body = Problem, content_type = "application/problem+json"),
        AdminErrors,
    )
)]
async fn update(
    _admin: AdminUser,
    State(st): State<AppState>,
    Path(id): Path<String>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<AdminProductView>, ApiError> {
    let sku = path_sku(&id)?;
    let b: UpdateBody = parse_json(&body?)?;
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
    products::update(&st.db, sku.as_str(), &changes)
        .await?
        .map(|p| Json(p.into()))
        .ok_or_else(|| ApiError::NotFound(format!("no product `{id}`")))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReservationsQuery {
    workflow_id: Option<String>,
}

/// A saga's reservation with its items.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ReservationView {
    pub id: Uuid,
    pub workflow_id: Uuid,
    pub step: String,
    pub order_id: Option<Uuid>,
    pub status: ReservationStatus,
    pub expires_at: DateTime<Utc>,
    pub settle_reason: Option<String>,
    pub items: Vec<ReservedItem>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ReservedItem {
    pub product_id: String,
    pub quantity: i32,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Reservations {
    pub items: Vec<ReservationView>,
}

/// `GET /reservations?workflow_id=` (admin): what a saga holds, for inspection and repair.
#[utoipa::path(
    get,
    path = "/api/v1/reservations",
    tag = "reservations",
    security(("bearer" = [])),
    params(("workflow_id" = String, Query, description = "The saga's workflow id (a UUID)")),
    responses(
        (status = 200, description = "The saga's reservations", body = Reservations),
        (status = 400, description = "`workflow_id` is missing or not a UUID", body = Problem, content_type = "application/problem+json"),
        AdminErrors,
    )
)]
async fn reservations_of(
    _admin: AdminUser,
    State(st): State<AppState>,
    q: Result<Query<ReservationsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Reservations>, ApiError> {
    let Query(q) = q?;
    let raw = q
        .workflow_id
        .ok_or_else(|| ApiError::bad("workflow_id", "the saga's workflow id is required"))?;
    let workflow_id = Uuid::parse_str(&raw)
        .map_err(|_| ApiError::bad("workflow_id", format!("`{raw}` is not a UUID")))?;
    let found = reservations::for_workflow(&st.db, workflow_id).await?;
    let items = found
        .into_iter()
        .map(|r| ReservationView {
            id: r.id,
            workflow_id: r.workflow_id,
            step: r.step,
            order_id: r.order_id,
            status: r.status,
            expires_at: r.expires_at,
            settle_reason: r.settle_reason,
            items: r
                .items
                .into_iter()
                .map(|(product_id, quantity)| ReservedItem {
                    product_id,
                    quantity,
                })
                .collect(),
        })
        .collect();
    Ok(Json(Reservations { items }))
}
