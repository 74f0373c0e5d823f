//! The notification service: the order saga's last step, `notification.send`, which confirms the
//! order by email (and by SMS and push where the user asked for them), and the log of every
//! message and delivery attempt that admins can read.
//!
//! - [`send`]: the activity; one message per channel and idempotency key, never sent twice.
//! - [`returns`]: the return saga's emails (instructions, expired, refunded), delivered the same
//!   way.
//! - [`providers`]: the delivery traits and their implementations: SMTP email (lettre), HTTP SMS
//!   and push, and the outbox that only records messages (`orderflow up` without providers).
//! - [`templates`]: the message templates (minijinja), compiled in.
//! - [`store`]: the notification log, attempts, outbox and contacts tables, on Postgres or on
//!   embedded SQLite (`orderflow dev`), whichever [`Db`] the service was given.
//! - [`api`]: the REST API (admin log and outbox, the user's contact details).
//! - [`model`]: channels, statuses and checked contact details.
//! - [`config`]: [`NotificationConfig`] and its defaults.
//! - [`metrics`]: delivery counters on `/metrics`.

pub mod api;
pub mod config;
pub mod metrics;
pub mod model;
pub mod providers;
pub mod purge;
pub mod returns;
pub mod send;
pub mod store;
pub mod templates;

use std::sync::Arc;

use anyhow::Context as _;
use orderflow_activities::worker::Handler;
use orderflow_service_kit::{
    auth::JwtKeys,
    db::{Db, Migrations},
    http::{self, Readiness},
    parts::ServiceParts,
    purge::purge_loop,
};
use sqlx::migrate::Migrator;

pub use api::AppState;
pub use config::NotificationConfig;
pub use send::{Providers, Send};

use crate::providers::{http::HttpProvider, outbox::Outbox, smtp::SmtpEmail};

/// The service's name in metrics and logs.
pub const SERVICE: &str = "notification";

/// How often the service's own retention runs (see [`purge`]).
const PURGE_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

/// The notification database's migrations (`migrations/notification`).
pub fn migrator() -> Migrator {
    let mut m = sqlx::migrate!("../../migrations/notification");
    // Another service's versions in the same database (never in production) are not ours to judge.
    m.set_ignore_missing(true);
    m
}

/// The notification database's migrations on both backends (`migrations/notification`,
/// `migrations/sqlite/notification`).
pub fn migrations() -> Migrations {
    let mut sqlite = sqlx::migrate!("../../migrations/sqlite/notification");
    sqlite.set_ignore_missing(true);
    Migrations {
        postgres: migrator(),
        sqlite,
    }
}

/// The whole HTTP app: `/api/v1` plus `/health`, `/ready`, `/metrics`.
pub fn router(state: AppState, ready: Readiness) -> axum::Router {
    http::app(SERVICE, api::routes(state), ready)
}

/// The providers `config` asks for; the outbox stands in for each one left unset.
pub fn providers(db: impl Into<Db>, config: &NotificationConfig) -> anyhow::Result<Providers> {
    let outbox = Arc::new(Outbox::new(db, &config.email_from).context("email_from")?);
    let http = |url: &Option<String>| -> anyhow::Result<Option<Arc<HttpProvider>>> {
        url.as_ref()
            .map(|u| {
                HttpProvider::new(u, &config.provider_api_key, config.send_timeout)
                    .map(Arc::new)
                    .with_context(|| format!("HTTP provider {u}"))
            })
            .transpose()
    };
    let email: Arc<dyn providers::EmailProvider> = match &config.smtp_url {
        Some(url) => Arc::new(
            SmtpEmail::new(url, &config.email_from, config.send_timeout)
                .context("SMTP provider")?,
        ),
        None => outbox.clone(),
    };
    let sms: Arc<dyn providers::SmsProvider> = match http(&config.sms_url)? {
        Some(p) => p,
        None => outbox.clone(),
    };
    let push: Arc<dyn providers::PushProvider> = match http(&config.push_url)? {
        Some(p) => p,
        None => outbox,
    };
    Ok(Providers { email, sms, push })
}

/// The activity handlers for a worker.
pub fn handlers(db: impl Into<Db>, providers: Providers) -> Vec<Arc<dyn Handler>> {
    let send = Send {
        db: db.into(),
        providers,
    };
    vec![
        Arc::new(returns::Instructions(send.clone())),
        Arc::new(returns::Expired(send.clone())),
        Arc::new(returns::Refunded(send.clone())),
        Arc::new(send),
    ]
}

/// The activities its workers do.
pub const ACTIVITIES: &[&str] = &[
    orderflow_workflows::order::contracts::NOTIFICATION_SEND,
    orderflow_workflows::returns::contracts::NOTIFICATION_RETURN_INSTRUCTIONS,
    orderflow_workflows::returns::contracts::NOTIFICATION_RETURN_EXPIRED,
    orderflow_workflows::returns::contracts::NOTIFICATION_RETURN_REFUNDED,
];

/// Connects to and migrates the database (Postgres or SQLite by the URL's scheme) and picks the
/// providers. The parts: the API and the `notification.send` handler. On an embedded database
/// only this process sends, so a message a killed process held mid-delivery is freed first.
pub async fn parts(config: NotificationConfig) -> anyhow::Result<ServiceParts> {
    let db = Db::connect(&config.service.database_url, &migrations()).await?;
    if matches!(db, Db::Sqlite(_)) {
        store::release_holds(&db).await?;
    }
    let providers = providers(db.clone(), &config)?;
    tracing::info!(
        email = providers.email.name(),
        sms = providers.sms.name(),
        push = providers.push.name(),
        "notification providers"
    );
    let state = AppState {
        db: db.clone(),
        keys: JwtKeys::new(&config.service.jwt_secret),
    };
    let mut parts = ServiceParts::new(
        SERVICE,
        &["notifications", "contacts", "outbox"],
        api::routes(state),
    );
    parts.ready = Readiness::new().database(db.clone());
    parts.handlers = handlers(db.clone(), providers);
    if let Some(keep) = config.log_retention {
        let purge_db = db.clone();
        parts.loops.push(purge_loop(
            SERVICE,
            keep,
            PURGE_EVERY,
            Box::new(move |cutoff| {
                let db = purge_db.clone();
                Box::pin(async move { purge::purge(&db, cutoff).await })
            }),
        ));
    }
    parts.db = Some(db);
    Ok(parts)
}
