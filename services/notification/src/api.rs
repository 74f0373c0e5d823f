//! The notification service's REST API under `/api/v1`.
//!
//! | method and path | who | |
//! |---|---|---|
//! | `GET /notifications?status=&channel=&recipient=&workflow_id=&cursor=&limit=` | admin | the log, newest first |
//! | `GET /notifications/{id}` | admin | one message with every delivery attempt |
//! | `GET /outbox?cursor=&limit=` | admin | what the outbox provider recorded |
//! | `GET /contacts/me`, `PUT /contacts/me` `{phone, push_token}` | the user | where else order messages go |

use axum::{
    Json, Router,
    body::Bytes,
    extract::{FromRef, Path, Query, State, rejection::QueryRejection},
    routing::get,
};
use orderflow_service_kit::{
    ApiError,
    auth::{AdminUser, AuthUser, JwtKeys},
    db::Db,
    openapi::{AdminErrors, BearerErrors, BearerJwt},
    problem::{Problem, parse_json, text_param},
};
use serde::{Deserialize, Serialize};
use utoipa::OpenApi;
use uuid::Uuid;

use crate::{
    model::{Channel, NotificationStatus, parse_phone, parse_push_token},
    store::{self, Attempt, Contact, ListFilter, Notification, OutboxMessage},
};

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

/// The notification API's OpenAPI document, served at `/api/v1/openapi.json`.
#[derive(Debug, OpenApi)]
#[openapi(
    info(title = "OrderFlow notification service", description = "The message log and users' contact details."),
    paths(list, show, outbox, my_contact, set_my_contact),
    components(schemas(Problem)),
    modifiers(&BearerJwt)
)]
pub struct ApiDoc;

/// A page of the message log.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct NotificationPage {
    pub items: Vec<Notification>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<Uuid>,
}

/// One message with every delivery attempt.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct NotificationDetail {
    #[serde(flatten)]
    pub notification: Notification,
    pub attempt_log: Vec<Attempt>,
}

/// A page of what the outbox provider recorded.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OutboxPage {
    pub items: Vec<OutboxMessage>,
    pub next_cursor: Option<Uuid>,
}

/// The `/api/v1` routes.
pub fn routes(state: AppState) -> Router {
    Router::new()
        .route("/notifications", get(list))
        .route("/notifications/{id}", get(show))
        .route("/outbox", get(outbox))
        .route("/contacts/me", get(my_contact).put(set_my_contact))
        .route(
            "/openapi.json",
            orderflow_service_kit::openapi::serve(&ApiDoc::openapi()),
        )
        .with_state(state)
}

fn limit(raw: Option<&str>) -> Result<i64, ApiError> {
    match raw {
        None => Ok(50),
        Some(l) => match l.parse::<i64>() {
            Ok(n) if (1..=200).contains(&n) => Ok(n),
            _ => Err(ApiError::bad(
                "limit",
                format!("`{l}` is not a number from 1 to 200"),
            )),
        },
    }
}

fn uuid_param(field: &str, raw: Option<&str>) -> Result<Option<Uuid>, ApiError> {
    raw.map(|s| {
        Uuid::parse_str(s).map_err(|_| ApiError::bad(field, format!("`{s}` is not a UUID")))
    })
    .transpose()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    status: Option<String>,
    channel: Option<String>,
    recipient: Option<String>,
    workflow_id: Option<String>,
    cursor: Option<String>,
    limit: Option<String>,
}

/// `GET /notifications` (admin).
#[utoipa::path(
    get,
    path = "/api/v1/notifications",
    tag = "notifications",
    security(("bearer" = [])),
    params(
        ("status" = Option<String>, Query, description = "`pending`, `sent` or `failed`"),
        ("channel" = Option<String>, Query, description = "`email`, `sms` or `push`"),
        ("recipient" = Option<String>, Query, description = "Only messages to this address"),
        ("workflow_id" = Option<String>, Query, description = "Only the messages of this saga (a UUID)"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
        ("limit" = Option<String>, Query, description = "1 to 200 (default 50)"),
    ),
    responses(
        (status = 200, description = "A page of the log, newest first", body = NotificationPage),
        (status = 400, description = "A parameter is invalid; `field` names it", body = Problem, content_type = "application/problem+json"),
        AdminErrors,
    )
)]
async fn list(
    _admin: AdminUser,
    State(st): State<AppState>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<NotificationPage>, ApiError> {
    let Query(q) = q?;
    let limit = limit(q.limit.as_deref())?;
    let filter = ListFilter {
        status: q
            .status
            .as_deref()
            .map(|s| {
                NotificationStatus::parse(s).ok_or_else(|| {
                    ApiError::bad("status", format!("`{s}` is not pending, sent or failed"))
                })
            })
            .transpose()?,
        channel: q
            .channel
            .as_deref()
            .map(|s| {
                Channel::parse(s).ok_or_else(|| {
                    ApiError::bad("channel", format!("`{s}` is not email, sms or push"))
                })
            })
            .transpose()?,
        recipient: text_param("recipient", q.recipient.as_deref())?.map(str::to_owned),
        workflow_id: uuid_param("workflow_id", q.workflow_id.as_deref())?,
        before: uuid_param("cursor", q.cursor.as_deref())?,
        // One row more than asked tells whether another page exists.
        limit: limit + 1,
    };
    let mut rows = store::list(&st.db, &filter).await?;
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let next = more.then(|| rows.last().map(|n| n.id)).flatten();
    Ok(Json(NotificationPage {
        items: rows,
        next_cursor: next,
    }))
}

/// `GET /notifications/{id}` (admin).
#[utoipa::path(
    get,
    path = "/api/v1/notifications/{id}",
    tag = "notifications",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The notification id (a UUID)")),
    responses(
        (status = 200, description = "The message", body = NotificationDetail),
        (status = 404, description = "No such notification", body = Problem, content_type = "application/problem+json"),
        AdminErrors,
    )
)]
async fn show(
    _admin: AdminUser,
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<NotificationDetail>, ApiError> {
    let not_found = || ApiError::NotFound(format!("no notification `{id}`"));
    let uuid = Uuid::parse_str(&id).map_err(|_| not_found())?;
    let n = store::get(&st.db, uuid).await?.ok_or_else(not_found)?;
    let attempts = store::attempts(&st.db, uuid).await?;
    Ok(Json(NotificationDetail {
        notification: n,
        attempt_log: attempts,
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    cursor: Option<String>,
    limit: Option<String>,
}

/// `GET /outbox` (admin).
#[utoipa::path(
    get,
    path = "/api/v1/outbox",
    tag = "notifications",
    security(("bearer" = [])),
    params(
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
        ("limit" = Option<String>, Query, description = "1 to 200 (default 50)"),
    ),
    responses(
        (status = 200, description = "A page of recorded messages, newest first", body = OutboxPage),
        (status = 400, description = "A parameter is invalid; `field` names it", body = Problem, content_type = "application/problem+json"),
        AdminErrors,
    )
)]
async fn outbox(
    _admin: AdminUser,
    State(st): State<AppState>,
    q: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<OutboxPage>, ApiError> {
    let Query(q) = q?;
    let limit = limit(q.limit.as_deref())?;
    let before = uuid_param("cursor", q.cursor.as_deref())?;
    let mut rows = store::outbox(&st.db, before, limit + 1).await?;
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let next = more
        .then(|| rows.last().map(|m| m.notification_id))
        .flatten();
    Ok(Json(OutboxPage {
        items: rows,
        next_cursor: next,
    }))
}

/// `GET /contacts/me`: where else the caller's order messages go.
#[utoipa::path(
    get,
    path = "/api/v1/contacts/me",
    tag = "contacts",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller's contact details", body = Contact),
        BearerErrors,
    )
)]
async fn my_contact(user: AuthUser, State(st): State<AppState>) -> Result<Json<Contact>, ApiError> {
    Ok(Json(store::contact(&st.db, user.id()).await?))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ContactBody {
    phone: Option<String>,
    push_token: Option<String>,
}

/// `PUT /contacts/me`: replaces both details; `null` or absent removes one.
#[utoipa::path(
    put,
    path = "/api/v1/contacts/me",
    tag = "contacts",
    security(("bearer" = [])),
    request_body = ContactBody,
    responses(
        (status = 200, description = "The stored details", body = Contact),
        (status = 400, description = "The body is malformed", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is too large", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`phone` or `push_token` is invalid", body = Problem, content_type = "application/problem+json"),
        BearerErrors,
    )
)]
async fn set_my_contact(
    user: AuthUser,
    State(st): State<AppState>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<Contact>, ApiError> {
    let b: ContactBody = parse_json(&body?)?;
    let contact = Contact {
        phone: b
            .phone
            .as_deref()
            .map(parse_phone)
            .transpose()
            .map_err(|e| ApiError::unprocessable("phone", e.to_string()))?,
        push_token: b
            .push_token
            .as_deref()
            .map(parse_push_token)
            .transpose()
            .map_err(|e| ApiError::unprocessable("push_token", e.to_string()))?,
    };
    store::set_contact(&st.db, user.id(), &contact).await?;
    Ok(Json(contact))
}
