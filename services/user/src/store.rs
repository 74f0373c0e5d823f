//! The `users` table. Functions take any executor so callers choose pool or transaction.

use chrono::{DateTime, Utc};
use orderflow_service_kit::auth::Role;
use serde::Serialize;
use sqlx::{PgExecutor, prelude::FromRow};
use uuid::Uuid;

/// A user as the API shows it (never the hash).
#[derive(Clone, Debug, Serialize, FromRow, utoipa::ToSchema)]
pub struct User {
    pub id: Uuid,
    pub email: String,
    pub name: String,
    pub role: Role,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A user with the stored password hash, for login.
#[derive(Clone, Debug, FromRow)]
pub struct Credentials {
    pub id: Uuid,
    pub role: Role,
    pub password_hash: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The email belongs to another account.
    #[error("the email is taken")]
    EmailTaken,
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

fn map_unique(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(d) if d.constraint() == Some("users_email_key") => {
            StoreError::EmailTaken
        }
        _ => StoreError::Db(e),
    }
}

const COLUMNS: &str = "id, email, name, role, created_at, updated_at";

pub async fn insert(
    db: impl PgExecutor<'_>,
    email: &str,
    password_hash: &str,
    name: &str,
    role: Role,
) -> Result<User, StoreError> {
    sqlx::query_as(&format!(
        "insert into users (id, email, password_hash, name, role) values ($1, $2, $3, $4, $5)
         returning {COLUMNS}"
    ))
    .bind(Uuid::now_v7())
    .bind(email)
    .bind(password_hash)
    .bind(name)
    .bind(role)
    .fetch_one(db)
    .await
    .map_err(map_unique)
}

pub async fn get(db: impl PgExecutor<'_>, id: Uuid) -> Result<Option<User>, sqlx::Error> {
    sqlx::query_as(&format!("select {COLUMNS} from users where id = $1"))
        .bind(id)
        .fetch_optional(db)
        .await
}

pub async fn credentials_by_email(
    db: impl PgExecutor<'_>,
    email: &str,
) -> Result<Option<Credentials>, sqlx::Error> {
    sqlx::query_as("select id, role, password_hash from users where lower(email) = lower($1)")
        .bind(email)
        .fetch_optional(db)
        .await
}

pub async fn credentials(
    db: impl PgExecutor<'_>,
    id: Uuid,
) -> Result<Option<Credentials>, sqlx::Error> {
    sqlx::query_as("select id, role, password_hash from users where id = $1")
        .bind(id)
        .fetch_optional(db)
        .await
}

/// The changes of one `PATCH /users/me`; `None` leaves a column as it is.
#[derive(Debug, Default)]
pub struct Changes<'a> {
    pub email: Option<&'a str>,
    pub name: Option<&'a str>,
    pub password_hash: Option<&'a str>,
}

pub async fn update(
    db: impl PgExecutor<'_>,
    id: Uuid,
    changes: &Changes<'_>,
) -> Result<Option<User>, StoreError> {
    sqlx::query_as(&format!(
        "update users set email = coalesce($2, email), name = coalesce($3, name),
                password_hash = coalesce($4, password_hash), updated_at = now()
         where id = $1 returning {COLUMNS}"
    ))
    .bind(id)
    .bind(changes.email)
    .bind(changes.name)
    .bind(changes.password_hash)
    .fetch_optional(db)
    .await
    .map_err(map_unique)
}

pub async fn set_role(
    db: impl PgExecutor<'_>,
    id: Uuid,
    role: Role,
) -> Result<Option<User>, sqlx::Error> {
    sqlx::query_as(&format!(
        "update users set role = $2, updated_at = now() where id = $1 returning {COLUMNS}"
    ))
    .bind(id)
    .bind(role)
    .fetch_optional(db)
    .await
}
