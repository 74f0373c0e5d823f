//! The `users` queries in Postgres's dialect (`migrations/user/`).

use orderflow_service_kit::auth::Role;
use sqlx::PgPool;
use uuid::Uuid;

use super::{Changes, Credentials, EMAIL_KEY, StoreError, User};

fn map_unique(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(d) if d.constraint() == Some(EMAIL_KEY) => StoreError::EmailTaken,
        _ => StoreError::Db(e),
    }
}

const COLUMNS: &str = "id, email, name, role, created_at, updated_at";

pub(super) async fn insert(
    pool: &PgPool,
    id: Uuid,
    email: &str,
    password_hash: &str,
    name: &str,
    role: Role,
) -> Result<User, StoreError> {
    sqlx::query_as(&format!(
        "insert into users (id, email, password_hash, name, role) values ($1, $2, $3, $4, $5)
         returning {COLUMNS}"
    ))
    .bind(id)
    .bind(email)
    .bind(password_hash)
    .bind(name)
    .bind(role)
    .fetch_one(pool)
    .await
    .map_err(map_unique)
}

pub(super) async fn get(pool: &PgPool, id: Uuid) -> Result<Option<User>, sqlx::Error> {
    sqlx::query_as(&format!("select {COLUMNS} from users where id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await
}

pub(super) async fn credentials_by_email(
    pool: &PgPool,
    email: &str,
) -> Result<Option<Credentials>, sqlx::Error> {
    sqlx::query_as("select id, role, password_hash from users where lower(email) = lower($1)")
        .bind(email)
        .fetch_optional(pool)
        .await
}

pub(super) async fn credentials(
    pool: &PgPool,
    id: Uuid,
) -> Result<Option<Credentials>, sqlx::Error> {
    sqlx::query_as("select id, role, password_hash from users where id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
}

pub(super) async fn update(
    pool: &PgPool,
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
    .fetch_optional(pool)
    .await
    .map_err(map_unique)
}

pub(super) async fn set_role(
    pool: &PgPool,
    id: Uuid,
    role: Role,
) -> Result<Option<User>, sqlx::Error> {
    sqlx::query_as(&format!(
        "update users set role = $2, updated_at = now() where id = $1 returning {COLUMNS}"
    ))
    .bind(id)
    .bind(role)
    .fetch_optional(pool)
    .await
}
