//! The REST API under `/api/v1`:
//!
//! | method and path | |
//! |---|---|
//! | `POST /users` `{email, password, name?}` | register a customer: 201 |
//! | `POST /auth/login` `{email, password}` | access + refresh token |
//! | `POST /auth/refresh` `{refresh_token}` | rotates the refresh token, new access token |
//! | `POST /auth/logout` `{refresh_token}` | ends the session: 204 |
//! | `GET /users/me`, `PATCH /users/me` `{name?, email?, password?, current_password?}` | the caller |
//! | `GET /users/{id}`, `PUT /users/{id}/role` `{role}` | admin only |

use std::time::Duration;

use axum::{
    Json, Router,
    body::Bytes,
    extract::{FromRef, Path, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post, put},
};
use orderflow_service_kit::{
    ApiError,
    auth::{ACCESS_TOKEN_TTL, AdminUser, AuthUser, JwtKeys, Role},
    db::Db,
    limit::{Peer, Rule, client_key},
    openapi::{AdminErrors, BearerErrors, BearerJwt, OtherErrors},
    problem::{Problem, parse_json},
};
use serde::{Deserialize, Serialize};
use sqlx::SqlitePool;
use utoipa::OpenApi;
use uuid::Uuid;

/// A request body, read in full; a read failure (too large, cut short) becomes a problem.
type Body = Result<Bytes, axum::extract::rejection::BytesRejection>;

use crate::{
    config::REFRESH_TTL,
    model::{Email, Name, Password},
    passwords,
    sessions::{SessionError, Sessions},
    store::{self, StoreError, User},
};

/// What every handler shares.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The user database: Postgres, or SQLite under `orderflow dev`.
    pub db: Db,
    pub keys: JwtKeys,
    pub sessions: Sessions,
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
}

impl AppState {
    /// The service on one embedded database and no Redis (`orderflow dev`): users and sessions
    /// in `pool` (migrated with [`crate::migrations`]), logins limited to `login_limit` per
    /// client in this process, tokens living as long as [`crate::UserConfig::local`]'s.
    pub fn embedded(pool: SqlitePool, keys: JwtKeys, login_limit: Option<Rule>) -> Self {
        Self {
            db: Db::Sqlite(pool.clone()),
            keys,
            sessions: Sessions::in_database(pool).with_login_limit(login_limit, None),
            access_ttl: ACCESS_TOKEN_TTL,
            refresh_ttl: REFRESH_TTL,
        }
    }
}

/// The user API's OpenAPI document, served at `/api/v1/openapi.json`.
#[derive(Debug, OpenApi)]
#[openapi(
    info(title = "OrderFlow user service", description = "Accounts, login and access tokens."),
    paths(register, login, refresh, logout, me, update_me, get_user, set_role),
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
        .route("/users", post(register))
        .route("/users/me", get(me).patch(update_me))
        .route("/users/{id}", get(get_user))
        .route("/users/{id}/role", put(set_role))
        .route("/auth/login", post(login))
        .route("/auth/refresh", post(refresh))
        .route("/auth/logout", post(logout))
        .route(
            "/openapi.json",
            orderflow_service_kit::openapi::serve(&ApiDoc::openapi()),
        )
        .with_state(state)
}

fn internal(e: impl Into<anyhow::Error>) -> ApiError {
    ApiError::Internal(e.into())
}

impl From<SessionError> for ApiError {
    fn from(e: SessionError) -> Self {
        match e {
            // Redis down means no session can be made or checked: a dependency outage, not a bug.
            SessionError::Redis(_) => ApiError::Unavailable(e.into()),
            // In the service's own database, like any other query of it.
            SessionError::Db(e) => e.into(),
        }
    }
}

fn field<T>(name: &str, r: Result<T, crate::model::Invalid>) -> Result<T, ApiError> {
    r.map_err(|e| ApiError::bad(name, e.0))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Register {
    email: String,
    password: String,
    #[serde(default)]
    name: String,
}

/// Registers a customer.
#[utoipa::path(
    post,
    path = "/api/v1/users",
    tag = "users",
    request_body = Register,
    responses(
        (status = 201, description = "Registered", body = User),
        (status = 400, description = "A field is missing or invalid; `field` names it", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The email is taken", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is too large", body = Problem, content_type = "application/problem+json"),
        OtherErrors,
    )
)]
async fn register(State(s): State<AppState>, body: Body) -> Result<Response, ApiError> {
    let req: Register = parse_json(&body?)?;
    let email = field("email", Email::parse(&req.email))?;
    let password = field("password", Password::parse(&req.password))?;
    let name = field("name", Name::parse(&req.name))?;
    let hash = passwords::hash(password.expose().to_owned())
        .await
        .map_err(internal)?;
    let user = store::insert(&s.db, email.as_str(), &hash, name.as_str(), Role::Customer)
        .await
        .map_err(|e| match e {
            StoreError::EmailTaken => {
                ApiError::Conflict("an account with this email already exists".into())
            }
            StoreError::Db(e) => e.into(),
        })?;
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, format!("/api/v1/users/{}", user.id))],
        Json(user),
    )
        .into_response())
}

/// Tokens handed out by login and refresh.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Tokens {
    access_token: String,
    token_type: &'static str,
    /// Seconds the access token is valid.
    expires_in: u64,
    refresh_token: String,
    refresh_expires_in: u64,
}

async fn issue(s: &AppState, user: Uuid, role: Role) -> Result<Tokens, ApiError> {
    let access_token = s.keys.issue(user, role, s.access_ttl).map_err(internal)?;
    let session = s.sessions.create(user, s.refresh_ttl).await?;
    Ok(Tokens {
        access_token,
        token_type: "Bearer",
        expires_in: s.access_ttl.as_secs(),
        refresh_token: session.refresh_token,
        refresh_expires_in: s.refresh_ttl.as_secs(),
    })
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Login {
    email: String,
    password: String,
}

/// Exchanges email and password for an access token and a refresh token.
#[utoipa::path(
    post,
    path = "/api/v1/auth/login",
    tag = "auth",
    request_body = Login,
    responses(
        (status = 200, description = "Logged in", body = Tokens),
        (status = 400, description = "A field is missing or invalid", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Wrong email or password", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is too large", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many logins from this client or failures for this email; see `Retry-After`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Redis is unavailable", body = Problem, content_type = "application/problem+json"),
        OtherErrors,
    )
)]
async fn login(
    State(s): State<AppState>,
    peer: Peer,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Tokens>, ApiError> {
    s.sessions
        .login_limit()
        .check(&client_key(&headers, peer, s.sessions.client_ip_header()))
        .await?;
    let req: Login = parse_json(&body?)?;
    if req.email.trim().is_empty() {
        return Err(ApiError::bad("email", "is required"));
    }
    if req.password.len() > Password::MAX_BYTES {
        return Err(ApiError::bad("password", "must be at most 1024 bytes"));
    }
    let email = req.email.trim();
    if let Some(retry_after_secs) = s.sessions.locked_out(email).await? {
        return Err(ApiError::TooManyRequests { retry_after_secs });
    }
    let found = store::credentials_by_email(&s.db, email).await?;
    // Verify even when the account is missing, so both failures take as long.
    let stored = found.as_ref().map_or_else(
        || passwords::DUMMY_HASH.clone(),
        |c| c.password_hash.clone(),
    );
    let matches = passwords::verify(req.password, stored)
        .await
        .map_err(internal)?;
    match found {
        Some(c) if matches => {
            s.sessions.clear_failures(email).await?;
            Ok(Json(issue(&s, c.id, c.role).await?))
        }
        _ => {
            s.sessions.record_failure(email).await?;
            Err(ApiError::Unauthorized)
        }
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct RefreshToken {
    refresh_token: String,
}

fn refresh_token(body: &Bytes) -> Result<String, ApiError> {
    let req: RefreshToken = parse_json(body)?;
    // Our tokens are 64 hex digits; anything else cannot name a session.
    if req.refresh_token.len() != 64 || !req.refresh_token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::bad("refresh_token", "is not a refresh token"));
    }
    Ok(req.refresh_token)
}

/// Rotates: the old refresh token is spent whether or not the rest succeeds, so a stolen token
/// used after its owner refreshed finds nothing.
#[utoipa::path(
    post,
    path = "/api/v1/auth/refresh",
    tag = "auth",
    request_body = RefreshToken,
    responses(
        (status = 200, description = "New tokens; the old refresh token is spent", body = Tokens),
        (status = 400, description = "Not a refresh token", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No such session", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Redis is unavailable", body = Problem, content_type = "application/problem+json"),
        OtherErrors,
    )
)]
async fn refresh(State(s): State<AppState>, body: Body) -> Result<Json<Tokens>, ApiError> {
    let token = refresh_token(&body?)?;
    let user = s
        .sessions
        .take(&token)
        .await?
        .ok_or(ApiError::Unauthorized)?;
    // The role is read again: a demotion takes effect at the next refresh.
    let creds = store::credentials(&s.db, user)
        .await?
        .ok_or(ApiError::Unauthorized)?;
    Ok(Json(issue(&s, creds.id, creds.role).await?))
}

/// Ends the session of a refresh token.
#[utoipa::path(
    post,
    path = "/api/v1/auth/logout",
    tag = "auth",
    request_body = RefreshToken,
    responses(
        (status = 204, description = "The session is gone"),
        (status = 400, description = "Not a refresh token", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Redis is unavailable", body = Problem, content_type = "application/problem+json"),
        OtherErrors,
    )
)]
async fn logout(State(s): State<AppState>, body: Body) -> Result<StatusCode, ApiError> {
    let token = refresh_token(&body?)?;
    // Logging out twice is not an error: the session is gone either way.
    s.sessions.take(&token).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The caller's account.
#[utoipa::path(
    get,
    path = "/api/v1/users/me",
    tag = "users",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller", body = User),
        (status = 404, description = "The account is gone", body = Problem, content_type = "application/problem+json"),
        BearerErrors,
    )
)]
async fn me(State(s): State<AppState>, caller: AuthUser) -> Result<Json<User>, ApiError> {
    store::get(&s.db, caller.id())
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound("no such user".into()))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct UpdateMe {
    name: Option<String>,
    email: Option<String>,
    password: Option<String>,
    /// Required to change email or password, so a stolen access token cannot take the account.
    current_password: Option<String>,
}

/// Changes the caller's name, email or password (the last two need `current_password`).
#[utoipa::path(
    patch,
    path = "/api/v1/users/me",
    tag = "users",
    security(("bearer" = [])),
    request_body = UpdateMe,
    responses(
        (status = 200, description = "The changed account", body = User),
        (status = 400, description = "A field is invalid", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "The account is gone", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The email is taken", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`current_password` does not match", body = Problem, content_type = "application/problem+json"),
        BearerErrors,
    )
)]
async fn update_me(
    State(s): State<AppState>,
    caller: AuthUser,
    body: Body,
) -> Result<Json<User>, ApiError> {
    let req: UpdateMe = parse_json(&body?)?;
    let name = req
        .name
        .as_deref()
        .map(|n| field("name", Name::parse(n)))
        .transpose()?;
    let email = req
        .email
        .as_deref()
        .map(|e| field("email", Email::parse(e)))
        .transpose()?;
    let password = req
        .password
        .as_deref()
        .map(|p| field("password", Password::parse(p)))
        .transpose()?;
    if email.is_some() || password.is_some() {
        let current = req.current_password.ok_or_else(|| {
            ApiError::bad(
                "current_password",
                "is required to change the email or the password",
            )
        })?;
        let creds = store::credentials(&s.db, caller.id())
            .await?
            .ok_or_else(|| ApiError::NotFound("no such user".into()))?;
        if !passwords::verify(current, creds.password_hash)
            .await
            .map_err(internal)?
        {
            return Err(ApiError::unprocessable(
                "current_password",
                "does not match",
            ));
        }
    }
    let hash = match &password {
        Some(p) => Some(
            passwords::hash(p.expose().to_owned())
                .await
                .map_err(internal)?,
        ),
        None => None,
    };
    let changes = store::Changes {
        email: email.as_ref().map(Email::as_str),
        name: name.as_ref().map(Name::as_str),
        password_hash: hash.as_deref(),
    };
    let user = store::update(&s.db, caller.id(), &changes)
        .await
        .map_err(|e| match e {
            StoreError::EmailTaken => {
                ApiError::Conflict("an account with this email already exists".into())
            }
            StoreError::Db(e) => e.into(),
        })?
        .ok_or_else(|| ApiError::NotFound("no such user".into()))?;
    if hash.is_some() {
        // Whoever holds an old refresh token must log in again with the new password.
        s.sessions.revoke_all(user.id).await?;
    }
    Ok(Json(user))
}

fn user_id(raw: &str) -> Result<Uuid, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::bad("id", format!("`{raw}` is not a user id (a UUID)")))
}

/// Any account (admin).
#[utoipa::path(
    get,
    path = "/api/v1/users/{id}",
    tag = "users",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The user id (a UUID)")),
    responses(
        (status = 200, description = "The account", body = User),
        (status = 400, description = "`id` is not a UUID", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such user", body = Problem, content_type = "application/problem+json"),
        AdminErrors,
    )
)]
async fn get_user(
    State(s): State<AppState>,
    _admin: AdminUser,
    Path(id): Path<String>,
) -> Result<Json<User>, ApiError> {
    store::get(&s.db, user_id(&id)?)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no user {id}")))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct SetRole {
    role: Role,
}

/// Makes an account a customer or an admin (admin).
#[utoipa::path(
    put,
    path = "/api/v1/users/{id}/role",
    tag = "users",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The user id (a UUID)")),
    request_body = SetRole,
    responses(
        (status = 200, description = "The changed account", body = User),
        (status = 400, description = "`id` or `role` is invalid", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such user", body = Problem, content_type = "application/problem+json"),
        AdminErrors,
    )
)]
async fn set_role(
    State(s): State<AppState>,
    _admin: AdminUser,
    Path(id): Path<String>,
    body: Body,
) -> Result<Json<User>, ApiError> {
    let id = user_id(&id)?;
    let req: SetRole = parse_json(&body?)?;
    store::set_role(&s.db, id, req.role)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no user {id}")))
}
