//! The user service: accounts, passwords and the tokens every other API trusts.
//!
//! A user registers with an email and a password (stored as an argon2id hash), logs in for a
//! short-lived HS256 access token (signed with the kit's [`JwtKeys`], which every service
//! verifies) and a long-lived refresh token. The refresh token is a random secret naming a
//! session kept in Redis: refreshing rotates it, logging out deletes it, and changing the password
//! deletes all of the user's sessions. Roles are customer and admin; the first admin is seeded
//! from the environment at start.
//!
//! - [`config`]: [`UserConfig`] and its defaults.
//! - [`model`]: checked input types ([`model::Email`], [`model::Password`], [`model::Name`]).
//! - [`passwords`]: argon2id hashing and verification, off the async threads.
//! - [`store`]: the `users` table.
//! - [`sessions`]: refresh sessions and the failed-login counter in Redis.
//! - [`api`]: the REST API (`/api/v1/users`, `/api/v1/auth/*`).
//! - [`seed`]: creates or promotes the configured admin.

pub mod api;
pub mod config;
pub mod model;
pub mod passwords;
pub mod seed;
pub mod sessions;
pub mod store;

use anyhow::Context as _;
use orderflow_service_kit::{
    auth::JwtKeys,
    db,
    http::{self, Readiness},
    kv,
};
use sqlx::migrate::Migrator;
use tokio_util::sync::CancellationToken;

pub use api::{AppState, router};
pub use config::UserConfig;

/// The service's name in metrics and logs.
pub const SERVICE: &str = "user";

/// The user database's migrations (`migrations/user/`).
pub fn migrator() -> Migrator {
    let mut m = sqlx::migrate!("../../migrations/user");
    m.set_ignore_missing(true);
    m
}

/// Runs the user service until `stop`: migrates its database, seeds the admin, serves the API.
/// The service has no activities: nothing in the order saga is done by it.
pub async fn run(config: UserConfig, stop: CancellationToken) -> anyhow::Result<()> {
    let service = &config.service;
    let pool = db::connect_and_migrate(&service.database_url, &migrator()).await?;
    let redis = kv::connect(&service.redis_url).await?;
    if let Some(admin) = &config.admin {
        seed::ensure_admin(&pool, &admin.email, &admin.password)
            .await
            .context("seeding the admin user")?;
    }
    let limits = orderflow_service_kit::limit::Limits::from_env()?;
    let state = AppState {
        pool: pool.clone(),
        keys: JwtKeys::new(&service.jwt_secret),
        sessions: sessions::Sessions::new(redis.clone(), &service.queue_prefix)
            .with_login_limit(limits.login, limits.client_ip_header),
        access_ttl: config.access_ttl,
        refresh_ttl: config.refresh_ttl,
    };
    let ready = Readiness::new().postgres(pool).redis(redis);
    let app = http::app(SERVICE, router(state), ready);
    http::serve(service.bind, app, stop).await
}
