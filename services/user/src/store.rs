//! The `users` table on either backend of [`Db`]: each function matches on the database and runs
//! the query in its dialect ([`postgres`], [`sqlite`]), so callers see one store.

mod postgres;
mod sqlite;

use chrono::{DateTime, Utc};
use orderflow_service_kit::{auth::Role, db::Db};
use serde::Serialize;
use sqlx::prelude::FromRow;
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

/// The unique index on `lower(email)`, named alike in both dialects' migrations.
const EMAIL_KEY: &str = "users_email_key";

/// Creates an account; [`StoreError::EmailTaken`] if the email, in any case, has one.
pub async fn insert(
    db: &Db,
    email: &str,
    password_hash: &str,
    name: &str,
    role: Role,
) -> Result<User, StoreError> {
    let id = Uuid::now_v7();
    match db {
        Db::Postgres(pool) => postgres::insert(pool, id, email, password_hash, name, role).await,
        Db::Sqlite(pool) => sqlite::insert(pool, id, email, password_hash, name, role).await,
    }
}

pub async fn get(db: &Db, id: Uuid) -> Result<Option<User>, sqlx::Error> {
    match db {
        Db::Postgres(pool) => postgres::get(pool, id).await,
        Db::Sqlite(pool) => sqlite::get(pool, id).await,
    }
}

/// The account of `email`, compared case-insensitively.
pub async fn credentials_by_email(
    db: &Db,
    email: &str,
) -> Result<Option<Credentials>, sqlx::Error> {
    match db {
        Db::Postgres(pool) => postgres::credentials_by_email(pool, email).await,
        Db::Sqlite(pool) => sqlite::credentials_by_email(pool, email).await,
    }
}

pub async fn credentials(db: &Db, id: Uuid) -> Result<Option<Credentials>, sqlx::Error> {
    match db {
        Db::Postgres(pool) => postgres::credentials(pool, id).await,
        Db::Sqlite(pool) => sqlite::credentials(pool, id).await,
    }
}

/// The changes of one `PATCH /users/me`; `None` leaves a column as it is.
#[derive(Debug, Default)]
pub struct Changes<'a> {
    pub email: Option<&'a str>,
    pub name: Option<&'a str>,
    pub password_hash: Option<&'a str>,
}

pub async fn update(db: &Db, id: Uuid, changes: &Changes<'_>) -> Result<Option<User>, StoreError> {
    match db {
        Db::Postgres(pool) => postgres::update(pool, id, changes).await,
        Db::Sqlite(pool) => sqlite::update(pool, id, changes).await,
    }
}

pub async fn set_role(db: &Db, id: Uuid, role: Role) -> Result<Option<User>, sqlx::Error> {
    match db {
        Db::Postgres(pool) => postgres::set_role(pool, id, role).await,
        Db::Sqlite(pool) => sqlite::set_role(pool, id, role).await,
    }
}
