//! The services this build runs. [`SERVICES`] is the one list a new service is added to; every
//! host (`up`, `service`, `worker`, `dev`, the bench) walks it and assembles each service's
//! [`ServiceParts`] from the same [`Settings`].

use std::{net::SocketAddr, sync::Arc};

use anyhow::Context as _;
use futures::future::BoxFuture;
use orderflow_service_kit::{ServiceConfig, config::ports, parts::ServiceParts};

/// The database URL of a service, by name.
pub type DatabaseUrl = Arc<dyn Fn(&str) -> anyhow::Result<String> + Send + Sync>;

/// Where a service's API listens, by name and default port; `None` when a gateway mounts it.
pub type Bind = Arc<dyn Fn(&str, u16) -> Option<SocketAddr> + Send + Sync>;

/// What a host decides for every service it runs.
#[derive(Clone)]
pub struct Settings {
    /// The HS256 secret every service verifies tokens with.
    pub jwt_secret: String,
    /// The engine's REST API (the order service starts sagas there).
    pub engine_url: String,
    /// The inventory's and the user service's APIs (the order service prices and checks orders).
    pub inventory_url: String,
    pub user_url: String,
    /// Redis for what replicas share (rate limits, sessions, the payment outcome cache); empty:
    /// none, and it is kept in the process or the service's database instead.
    pub redis_url: String,
    pub queue_prefix: String,
    /// Tasks each activity handler runs at once.
    pub worker_concurrency: usize,
    /// The database URL of each service, by name.
    pub database_url: DatabaseUrl,
    /// Where each service's API listens, by name and default port; `None` when a gateway
    /// mounts it.
    pub bind: Bind,
    /// Stripe; `None` starts a built-in sandbox in this process (the payment service's webhook
    /// goes to its own port).
    pub stripe: Option<orderflow_payment::StripeConfig>,
    /// SMTP for emails; `None` keeps them in the notification service's outbox.
    pub smtp_url: Option<String>,
    pub email_from: Option<String>,
    /// Insert the demo catalogue at start if there are no products.
    pub seed_demo_products: bool,
    /// How long the services keep their own logs (notifications, webhook events); `None`:
    /// forever.
    pub service_retention: Option<std::time::Duration>,
    /// An admin account to create at start.
    pub admin: Option<orderflow_user::config::AdminSeed>,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("engine_url", &self.engine_url)
            .field("queue_prefix", &self.queue_prefix)
            .finish_non_exhaustive()
    }
}

impl Settings {
    /// The kit's settings of service `name`.
    pub fn service(&self, name: &str, port: u16) -> anyhow::Result<ServiceConfig> {
        let mut c = ServiceConfig::local(name, port);
        if let Some(bind) = (self.bind)(name, port) {
            c.bind = bind;
        }
        c.database_url = (self.database_url)(name)?;
        c.redis_url.clone_from(&self.redis_url);
        c.queue_prefix.clone_from(&self.queue_prefix);
        c.jwt_secret.clone_from(&self.jwt_secret);
        c.engine_url.clone_from(&self.engine_url);
        c.worker_concurrency = self.worker_concurrency;
        Ok(c)
    }
}

/// One service of this build.
#[derive(Debug, Clone, Copy)]
pub struct Service {
    pub name: &'static str,
    /// Where `up` serves its API.
    pub port: u16,
    /// The activities its workers do (`orderflow worker --queues` picks services by them).
    pub activities: &'static [&'static str],
    build: for<'a> fn(&'a Settings, ServiceConfig) -> BoxFuture<'a, anyhow::Result<ServiceParts>>,
}

impl Service {
    /// Builds the service's parts (connecting and migrating its database).
    pub async fn parts(&self, settings: &Settings) -> anyhow::Result<ServiceParts> {
        let config = settings.service(self.name, self.port)?;
        (self.build)(settings, config)
            .await
            .with_context(|| format!("the {} service", self.name))
    }

    /// Where its API listens under `settings`.
    pub fn bind(&self, settings: &Settings) -> Option<SocketAddr> {
        (settings.bind)(self.name, self.port)
    }
}

/// Every service, in the order a host starts them.
pub const SERVICES: &[Service] = &[
    Service {
        name: orderflow_user::SERVICE,
        port: ports::USER,
        activities: &[],
        build: |s, c| Box::pin(user(s, c)),
    },
    Service {
        name: orderflow_inventory::SERVICE,
        port: ports::INVENTORY,
        activities: orderflow_inventory::ACTIVITIES,
        build: |s, c| Box::pin(inventory(s, c)),
    },
    Service {
        name: orderflow_order::SERVICE,
        port: ports::ORDER,
        activities: orderflow_order::ACTIVITIES,
        build: |s, c| Box::pin(order(s, c)),
    },
    Service {
        name: orderflow_payment::SERVICE,
        port: ports::PAYMENT,
        activities: orderflow_payment::ACTIVITIES,
        build: |s, c| Box::pin(payment(s, c)),
    },
    Service {
        name: orderflow_notification::SERVICE,
        port: ports::NOTIFICATION,
        activities: orderflow_notification::ACTIVITIES,
        build: |s, c| Box::pin(notification(s, c)),
    },
];

/// Every activity a service of this build has a handler for, sorted: what `orderflow worker`
/// can serve. (Each service's list is checked against its handlers by this module's tests, and
/// again by `orderflow worker` when it builds them.)
pub fn implemented() -> Vec<&'static str> {
    let mut all: Vec<&'static str> = SERVICES
        .iter()
        .flat_map(|s| s.activities.iter().copied())
        .collect();
    all.sort_unstable();
    all.dedup();
    all
}

/// Checks the activities `orderflow worker --queues` asks for: each must be one a service of this
/// build implements. `registered`, the activities of the deployed workflow definitions, tells one
/// that exists but is served by workers outside this build (in another language, say) from a
/// typo.
pub fn check_queues(queues: &[String], registered: &[String]) -> anyhow::Result<()> {
    let here = implemented();
    for q in queues {
        if here.contains(&q.as_str()) {
            continue;
        }
        if registered.contains(q) {
            anyhow::bail!(
                "--queues: `{q}` is an activity of a deployed workflow, but no service of this \
                 build implements it; run a worker that does (any language: docs/protocol.md)"
            );
        }
        anyhow::bail!(
            "--queues: `{q}` is not an activity this build knows; its services implement {}",
            here.join(", ")
        );
    }
    Ok(())
}

/// The service called `name`.
pub fn named(name: &str) -> anyhow::Result<&'static Service> {
    SERVICES.iter().find(|s| s.name == name).with_context(|| {
        let names: Vec<&str> = SERVICES.iter().map(|s| s.name).collect();
        format!(
            "NAME: no service `{name}`; this build has {}",
            names.join(", ")
        )
    })
}

async fn user(s: &Settings, service: ServiceConfig) -> anyhow::Result<ServiceParts> {
    use orderflow_user::config::{SessionBackend, UserConfig};
    let mut config = UserConfig::local(service.jwt_secret.clone());
    // Without Redis, refresh sessions are kept in the user database.
    if service.redis_url.is_empty() {
        config.sessions = SessionBackend::Database;
    }
    config.service = service;
    config.admin.clone_from(&s.admin);
    orderflow_user::parts(config).await
}

async fn inventory(s: &Settings, service: ServiceConfig) -> anyhow::Result<ServiceParts> {
    let mut config = orderflow_inventory::InventoryConfig::new(service);
    config.seed_demo_products = s.seed_demo_products;
    orderflow_inventory::parts(config).await
}

async fn order(s: &Settings, service: ServiceConfig) -> anyhow::Result<ServiceParts> {
    let mut config = orderflow_order::OrderConfig::new(service);
    config.inventory_url.clone_from(&s.inventory_url);
    config.user_url.clone_from(&s.user_url);
    orderflow_order::parts(config).await
}

async fn payment(s: &Settings, service: ServiceConfig) -> anyhow::Result<ServiceParts> {
    use orderflow_payment::StripeConfig;
    use orderflow_stripe_sandbox::{RunningSandbox, SandboxConfig, WebhookTarget};
    let (stripe, sandbox) = match &s.stripe {
        Some(stripe) => (stripe.clone(), None),
        None => {
            let webhook =
                (s.bind)(orderflow_payment::SERVICE, service.bind.port()).map(|at| WebhookTarget {
                    url: format!("http://127.0.0.1:{}/api/v1/webhooks/stripe", at.port()),
                    secret: StripeConfig::SANDBOX_WEBHOOK_SECRET.to_owned(),
                });
            let running = RunningSandbox::start(SandboxConfig {
                secret_key: StripeConfig::SANDBOX_SECRET_KEY.to_owned(),
                webhook,
            })
            .await
            .context("starting the built-in Stripe sandbox")?;
            tracing::warn!(
                url = %running.url(),
                "STRIPE_API_BASE is not set: payments go to a built-in Stripe sandbox in this \
                 process, which other processes do not see"
            );
            (StripeConfig::sandbox(running.url()), Some(running))
        }
    };
    let mut config = orderflow_payment::PaymentConfig::new(service, stripe);
    config.webhook_retention = s.service_retention;
    let mut parts = orderflow_payment::parts(config).await?;
    if let Some(sandbox) = sandbox {
        parts.keep_alive.push(Box::new(sandbox));
    }
    Ok(parts)
}

async fn notification(s: &Settings, service: ServiceConfig) -> anyhow::Result<ServiceParts> {
    let mut config = orderflow_notification::NotificationConfig::new(service);
    // Without SMTP the notification service keeps messages in its outbox table.
    config.smtp_url.clone_from(&s.smtp_url);
    config.log_retention = s.service_retention;
    if let Some(from) = &s.email_from {
        config.email_from.clone_from(from);
    }
    orderflow_notification::parts(config).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every service on an in-memory SQLite database, with nothing to reach: enough to build
    /// its parts.
    fn offline() -> Settings {
        Settings {
            jwt_secret: "x".repeat(32),
            engine_url: "http://127.0.0.1:9".into(),
            inventory_url: "http://127.0.0.1:9".into(),
            user_url: "http://127.0.0.1:9".into(),
            redis_url: String::new(),
            queue_prefix: String::new(),
            worker_concurrency: 1,
            database_url: Arc::new(|_| Ok("sqlite::memory:".to_owned())),
            bind: Arc::new(|_, _| None),
            stripe: Some(orderflow_payment::StripeConfig::sandbox(
                "http://127.0.0.1:9",
            )),
            smtp_url: None,
            email_from: None,
            seed_demo_products: false,
            service_retention: None,
            admin: None,
        }
    }

    /// `orderflow worker` picks the services to build by their lists, before it connects to
    /// anything; a list that drifted from the handlers would start a worker for the wrong queues.
    #[tokio::test]
    async fn each_service_lists_exactly_the_activities_its_handlers_serve() -> anyhow::Result<()> {
        let settings = offline();
        for service in SERVICES {
            let parts = service.parts(&settings).await?;
            let mut handled: Vec<&str> = parts.handlers.iter().map(|h| h.activity()).collect();
            handled.sort_unstable();
            let mut listed = service.activities.to_vec();
            listed.sort_unstable();
            assert_eq!(handled, listed, "the {} service", service.name);
        }
        Ok(())
    }

    #[test]
    fn queues_are_checked_against_the_services_and_the_registry() {
        let registered = orderflow_workflows::registry().activities();
        let ask = |q: &[&str]| {
            let q: Vec<String> = q.iter().map(|s| (*s).to_owned()).collect();
            check_queues(&q, &registered).map_err(|e| e.to_string())
        };
        assert!(ask(&["payment.charge", "payment.refund"]).is_ok());
        assert!(ask(&[]).is_ok());
        let typo = ask(&["payment.charge", "payment.chrage"]).unwrap_err();
        assert!(
            typo.starts_with("--queues: `payment.chrage` is not an activity this build knows"),
            "{typo}"
        );
        assert!(typo.contains("payment.charge, payment.refund"), "{typo}");
        // Order saga v2's fraud screen is deployed, but no service here implements it.
        let elsewhere = ask(&["fraud.check"]).unwrap_err();
        assert!(
            elsewhere.contains("no service of this build implements it"),
            "{elsewhere}"
        );
        // Every activity any deployed definition names is either served here or named so.
        for a in &registered {
            let served = implemented().contains(&a.as_str());
            assert_eq!(ask(&[a]).is_ok(), served, "{a}");
        }
    }
}
