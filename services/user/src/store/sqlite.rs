//! The `users` queries in SQLite's dialect (`migrations/sqlite/user/`). Times are integer
//! microseconds, written from this process's clock where Postgres would call `now()`.

use chrono::{DateTime, Utc};
use orderflow_service_kit::auth::Role;
use sqlx::{SqlitePool, prelude::FromRow};
use uuid::Uuid;

use super::{Changes, Credentials, EMAIL_KEY, StoreError, User};

/// A `users` row as SQLite holds it.
#[derive(FromRow)]
struct Row {
    id: Uuid,
    email: String,
    name: String,
    role: Role,
    created_at: i64,
    updated_at: i64,
}

impl From<Row> for User {
    fn from(r: Row) -> Self {
        Self {
            id: r.id,
            email: r.email,
            name: r.name,
            role: r.role,
            created_at: time(r.created_at),
            updated_at: time(r.updated_at),
        }
    }
}

fn time(micros: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(micros).unwrap_or_default()
}

fn now() -> i64 {
    Utc::now().timestamp_micros()
}

/// SQLite names no constraint in its errors; the index's name is in the message instead
/// ("UNIQUE constraint failed: index 'users_email_key'").
fn map_unique(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(d) if d.is_unique_violation() && d.message().contains(EMAIL_KEY) => {
            StoreError::EmailTaken
        }
        _ => StoreError::Db(e),
    }
}

const COLUMNS: &str = "id, email, name, role, created_at, updated_at";

pub(super) async fn insert(
    pool: &SqlitePool,
    id: Uuid,
    email: &str,
    password_hash: &str,
    name: &str,
    role: Role,
) -> Result<User, StoreError> {
    let at = now();
    sqlx::query_as::<_, Row>(&format!(
        "insert into users (id, email, password_hash, name, role, created_at, updated_at)
         values (?, ?, ?, ?, ?, ?, ?) returning {COLUMNS}"
    ))
    .bind(id)
    .bind(email)
    .bind(password_hash)
    .bind(name)
    .bind(role)
    .bind(at)
    .bind(at)
    .fetch_one(pool)
    .await
    .map(User::from)
    .map_err(map_unique)
}

pub(super) async fn get(pool: &SqlitePool, id: Uuid) -> Result<Option<User>, sqlx::Error> {
    let row: Option<Row> = sqlx::query_as(&format!("select {COLUMNS} from users where id = ?"))
        .bind(id)
        .fetch_optional(pool)
        .await?;
    Ok(row.map(User::from))
}

pub(super) async fn credentials_by_email(
    pool: &SqlitePool,
    email: &str,
) -> Result<Option<Credentials>, sqlx::Error> {
    // `lower(email)` is the unique index's expression, so this is an index lookup.
    sqlx::query_as("select id, role, password_hash from users where lower(email) = lower(?)")
        .bind(email)
        .fetch_optional(pool)
        .await
}

pub(super) async fn credentials(
    pool: &SqlitePool,
    id: Uuid,
) -> Result<Option<Credentials>, sqlx::Error> {
    sqlx::query_as("select id, role, password_hash from users where id = ?")
        .bind(id)
        .fetch_optional(pool)
        .await
}

pub(super) async fn update(
    pool: &SqlitePool,
    id: Uuid,
    changes: &Changes<'_>,
) -> Result<Option<User>, StoreError> {
    let row: Option<Row> = sqlx::query_as(&format!(
        "update users set email = coalesce(?, email), name = coalesce(?, name),
                password_hash = coalesce(?, password_hash), updated_at = ?
         where id = ? returning {COLUMNS}"
    ))
    .bind(changes.email)
    .bind(changes.name)
    .bind(changes.password_hash)
    .bind(now())
    .bind(id)
    .fetch_optional(pool)
    .await
    .map_err(map_unique)?;
    Ok(row.map(User::from))
}

pub(super) async fn set_role(
    pool: &SqlitePool,
    id: Uuid,
    role: Role,
) -> Result<Option<User>, sqlx::Error> {
    let row: Option<Row> = sqlx::query_as(&format!(
        "update users set role = ?, updated_at = ? where id = ? returning {COLUMNS}"
    ))
    .bind(role)
    .bind(now())
    .bind(id)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(User::from))
}
