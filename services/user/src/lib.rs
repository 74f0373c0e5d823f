//! The user service: accounts, passwords and the tokens every other API trusts.
//!
//! A user registers with an email and a password (stored as an argon2id hash), logs in for a
//! short-lived HS256 access token (signed with the kit's [`JwtKeys`], which every service
//! verifies) and a long-lived refresh token. The refresh token is a random secret naming a
//! session kept in Redis, or in the user database itself when that is SQLite (`orderflow dev`):
//! refreshing rotates it, logging out deletes it, and changing the password deletes all of the
//! user's sessions. Roles are customer and admin; the first admin is seeded from the environment
//! at start.
//!
//! - [`config`]: [`UserConfig`] and its defaults.
//! - [`model`]: checked input types ([`model::Email`], [`model::Password`], [`model::Name`]).
//! - [`passwords`]: argon2id hashing and verification, off the async threads.
//! - [`store`]: the `users` table, on Postgres or SQLite ([`Db`]).
//! - [`sessions`]: refresh sessions and the failed-login counter, in Redis or in the database.
//! - [`api`]: the REST API (`/api/v1/users`, `/api/v1/auth/*`).
//! - [`seed`]: creates or promotes the configured admin.

pub mod api;
pub mod config;
pub mod model;
pub mod passwords;
pub mod purge;
pub mod seed;
pub mod sessions;
pub mod store;

use anyhow::Context as _;
use orderflow_service_kit::{
    auth::JwtKeys,
    db::{Db, Migrations},
    http::Readiness,
    kv,
    limit::Limits,
    parts::ServiceParts,
};
use sqlx::migrate::Migrator;

pub use api::{AppState, router};
pub use config::{SessionBackend, UserConfig};

use crate::sessions::Sessions;

/// The service's name in metrics and logs.
pub const SERVICE: &str = "user";

/// The user database's Postgres migrations (`migrations/user/`).
pub fn migrator() -> Migrator {
    let mut m = sqlx::migrate!("../../migrations/user");
    m.set_ignore_missing(true);
    m
}

/// The user database's migrations in both dialects: `migrations/user/` on Postgres,
/// `migrations/sqlite/user/` (which adds the session tables) on SQLite.
pub fn migrations() -> Migrations {
    Migrations {
        postgres: migrator(),
        sqlite: sqlx::migrate!("../../migrations/sqlite/user"),
    }
}

/// Everything [`run`] serves, for a caller that mounts the router itself: connects to and
/// migrates the database named by the config's URL (`postgres://`, `sqlite://<file>` or
/// `sqlite::memory:`), seeds the admin and opens the sessions where [`UserConfig::sessions`] says.
/// The readiness checks cover the database, and Redis when sessions are there.
pub async fn prepare(config: &UserConfig) -> anyhow::Result<(AppState, Readiness)> {
    let service = &config.service;
    let db = Db::connect(&service.database_url, &migrations()).await?;
    if let Some(admin) = &config.admin {
        seed::ensure_admin(&db, &admin.email, &admin.password)
            .await
            .context("seeding the admin user")?;
    }
    let limits = Limits::from_env()?;
    let ready = Readiness::new().database(db.clone());
    let (sessions, ready) = match (config.sessions, &db) {
        (SessionBackend::Redis, _) => {
            let redis = kv::connect(&service.redis_url).await?;
            (
                Sessions::new(redis.clone(), &service.queue_prefix),
                ready.redis(redis),
            )
        }
        (SessionBackend::Database, Db::Sqlite(pool)) => {
            (Sessions::in_database(pool.clone()), ready)
        }
        (SessionBackend::Database, Db::Postgres(_)) => anyhow::bail!(
            "sessions in the database need a sqlite:// database URL; on Postgres they are kept in Redis"
        ),
    };
    let state = AppState {
        db,
        keys: JwtKeys::new(&service.jwt_secret),
        sessions: sessions.with_login_limit(limits.login, limits.client_ip_header),
        access_ttl: config.access_ttl,
        refresh_ttl: config.refresh_ttl,
    };
    Ok((state, ready))
}

/// The parts: the API (accounts, logins, tokens). The service has no activities: nothing in the
/// order saga is done by it.
pub async fn parts(config: UserConfig) -> anyhow::Result<ServiceParts> {
    let (state, ready) = prepare(&config).await?;
    let db = state.db.clone();
    let mut parts = ServiceParts::new(SERVICE, &["users", "auth"], router(state));
    parts.ready = ready;
    if matches!(db, orderflow_service_kit::db::Db::Sqlite(_)) {
        let purge_db = db.clone();
        // The cutoff is now: a session is purged as soon as it has expired.
        parts.loops.push(orderflow_service_kit::purge::purge_loop(
            SERVICE,
            std::time::Duration::ZERO,
            std::time::Duration::from_secs(3600),
            Box::new(move |now| {
                let db = purge_db.clone();
                Box::pin(async move { purge::purge_expired_sessions(&db, now).await })
            }),
        ));
    }
    parts.db = Some(db);
    Ok(parts)
}
