//! The five services of `orderflow dev`, each on its own embedded database
//! (`<service>.db` under the data directory), built from the same parts `orderflow up` runs
//! ([`crate::services::SERVICES`]) with settings for one process without Redis: the order and
//! login rate limits and the payment outcome cache are kept in the process, refresh sessions in
//! the user database. Their workers and followers run on the in-process queue.

use std::{path::Path, sync::Arc};

use anyhow::Context as _;
use axum::Router;
use orderflow_queue::embedded::EmbeddedQueue;
use orderflow_service_kit::{db::Db, parts::Supervisor};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::services::{SERVICES, Settings};

/// Where the services reach each other, the engine and Stripe.
#[derive(Debug, Clone)]
pub struct Wiring {
    /// The gateway's own URL: every service's API and the engine's are under it.
    pub url: String,
    pub stripe_url: String,
    pub jwt_secret: String,
}

/// The services, started.
#[derive(Debug)]
pub struct Services {
    /// `(path prefix, router)` for the gateway.
    pub routes: Vec<(String, Router)>,
    /// Each service's database, by service name.
    pub dbs: Vec<(&'static str, Db)>,
}

impl Services {
    pub fn db(&self, service: &str) -> &Db {
        &self
            .dbs
            .iter()
            .find(|(name, _)| *name == service)
            .expect("every service has a database")
            .1
    }
}

/// The settings of every service in `orderflow dev`.
fn settings(data_dir: Option<&Path>, wiring: &Wiring) -> Settings {
    let dir = data_dir.map(Path::to_path_buf);
    Settings {
        jwt_secret: wiring.jwt_secret.clone(),
        engine_url: wiring.url.clone(),
        inventory_url: wiring.url.clone(),
        user_url: wiring.url.clone(),
        redis_url: String::new(),
        queue_prefix: String::new(),
        worker_concurrency: 8,
        database_url: Arc::new(move |name| {
            Ok(match &dir {
                Some(d) => format!("sqlite://{}", d.join(format!("{name}.db")).display()),
                None => "sqlite::memory:".to_owned(),
            })
        }),
        // The gateway mounts every API.
        bind: Arc::new(|_, _| None),
        stripe: Some(orderflow_payment::StripeConfig::sandbox(
            wiring.stripe_url.clone(),
        )),
        smtp_url: None,
        email_from: None,
        seed_demo_products: true,
        service_retention: Some(orderflow_notification::NotificationConfig::DEFAULT_LOG_RETENTION),
        admin: None,
    }
}

/// Opens each service's database (migrating it), seeds the demo catalogue, and starts the
/// services' workers, followers and loops on the in-process queue on `tasks` until `stop`.
pub async fn start(
    data_dir: Option<&Path>,
    wiring: &Wiring,
    queue: &EmbeddedQueue,
    tasks: &mut JoinSet<()>,
    stop: &CancellationToken,
) -> anyhow::Result<Services> {
    let settings = settings(data_dir, wiring);
    let mut sup = Supervisor::new("dev services", stop);
    let mut routes = Vec::new();
    let mut dbs = Vec::new();
    for service in SERVICES {
        let mut parts = service.parts(&settings).await?;
        let app = parts.app(parts.ready.clone());
        for path in parts.paths {
            routes.push((format!("/api/v1/{path}"), app.clone()));
        }
        parts.spawn_background(queue, settings.worker_concurrency, &mut sup);
        let db = parts
            .db
            .clone()
            .with_context(|| format!("the {} service has no database", service.name))?;
        dbs.push((service.name, db));
    }
    tasks.spawn(async move {
        if let Err(e) = sup.join().await {
            tracing::error!(error = format!("{e:#}"), "a dev service stopped");
        }
    });
    Ok(Services { routes, dbs })
}
