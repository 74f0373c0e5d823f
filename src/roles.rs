//! What each subcommand runs.

use std::{net::SocketAddr, path::Path, sync::Arc};

use anyhow::{Context, bail};
use orderflow_activities::{
    broker::Topology,
    worker::{Handler, Worker},
};
use orderflow_core::{History, Registry, WorkflowId, replay};
use orderflow_engine::admin::{AdminConfig, DEV_PASSWORD};
use orderflow_engine::{
    Engine, EngineConfig,
    api::{self, AppState},
    store,
};
use orderflow_service_kit::{ServiceConfig, config::ports, http::Readiness};
use sqlx::{PgPool, migrate::MigrateDatabase, postgres::PgPoolOptions};
use tokio_util::sync::CancellationToken;

use crate::cli::{AdminArgs, Cli, Command, Connections, HistoryCommand, ServiceArgs, ServiceName};

/// Log lines (`text`, or `json` lines that carry `trace_id` and `workflow_id`) filtered by
/// `RUST_LOG`, and the sagas' traces over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set. Keep
/// the returned guard until exit: dropping it sends the last spans.
pub fn init_logging(format: &str) -> anyhow::Result<orderflow_telemetry::Telemetry> {
    use orderflow_telemetry::{self as telemetry, TelemetryConfig};
    telemetry::init(&TelemetryConfig::from_env(format == "json"))
        .context("setting up logs and traces")
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Dev(args) => crate::dev::run(args).await,
        Command::Up {
            conn,
            bind,
            concurrency,
            admin,
            services,
        } => {
            let pool = migrated_pool(&conn.database_url).await?;
            let stop = shutdown_token();
            let secret = jwt_secret(services.jwt_secret.clone(), true)?;
            let mut tasks = tokio::task::JoinSet::new();
            tasks.spawn(serve_engine(
                pool.clone(),
                conn.clone(),
                bind,
                admin_ui(&admin, true),
                stop.clone(),
            ));
            for name in SERVICES {
                let config =
                    service_config(*name, &conn, &services, &secret, None, None, concurrency)?;
                let (services, stop) = (services.clone(), stop.clone());
                tasks.spawn(async move {
                    run_service(*name, config, &services, stop)
                        .await
                        .with_context(|| format!("the {} service", name.as_str()))
                });
            }
            // One part failing stops the whole process: `up` is all or nothing.
            all_or_nothing(tasks, &stop).await
        }
        Command::Service {
            name,
            conn,
            services,
            bind,
            service_database_url,
            concurrency,
        } => {
            let name = wired(name);
            let secret = jwt_secret(services.jwt_secret.clone(), false)?;
            let config = service_config(
                name,
                &conn,
                &services,
                &secret,
                bind,
                service_database_url,
                concurrency,
            )?;
            run_service(name, config, &services, shutdown_token()).await
        }
        Command::Engine { conn, bind, admin } => {
            let pool = migrated_pool(&conn.database_url).await?;
            serve_engine(pool, conn, bind, admin_ui(&admin, false), shutdown_token()).await
        }
        Command::Worker {
            conn,
            services,
            queues,
            concurrency,
            service_database_url,
            health_bind,
        } => {
            let plan = WorkerPlan {
                queues,
                concurrency,
                service_database_url,
                health_bind,
            };
            run_workers(&conn, &services, plan, shutdown_token()).await
        }
        Command::Migrate { conn } => {
            migrated_pool(&conn.database_url).await?;
            println!("migrations applied to {}", redact(&conn.database_url));
            Ok(())
        }
        Command::History {
            command: HistoryCommand::Export { id, database_url },
        } => {
            let id: WorkflowId = id
                .parse()
                .map_err(|_| anyhow::anyhow!("ID: `{id}` is not a workflow id (a UUID)"))?;
            let pool = PgPoolOptions::new()
                .max_connections(1)
                .connect(&database_url)
                .await?;
            let mut conn = pool.acquire().await?;
            let row = store::workflows::get(&mut conn, id.0)
                .await?
                .with_context(|| format!("ID: no workflow {id}"))?;
            let events = store::history::load(&mut conn, id.0).await?;
            let history = History {
                workflow_id: id,
                workflow_type: row.workflow_type,
                version: row.version as u32,
                events,
            };
            println!("{}", serde_json::to_string_pretty(&history)?);
            Ok(())
        }
        Command::Replay { files } => replay_files(&orderflow_workflows::registry(), &files),
        Command::Workflows(args) => crate::workflows_cli::run(args).await,
        Command::Bench(args) => crate::bench::run(args).await,
    }
}

fn replay_files(registry: &Registry, files: &[std::path::PathBuf]) -> anyhow::Result<()> {
    let mut failed = 0;
    for file in files {
        match replay_file(registry, file) {
            Ok(status) => println!("ok    {} ({status})", file.display()),
            Err(e) => {
                failed += 1;
                println!("FAIL  {}: {e:#}", file.display());
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {} histories do not replay", files.len());
    }
    Ok(())
}

fn replay_file(registry: &Registry, file: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(file).context("reading the file")?;
    let history: History =
        serde_json::from_str(&text).context("not a history in the replay format")?;
    let state = replay(registry, &history)?;
    Ok(state.status().to_string())
}

/// Cancelled on SIGINT or SIGTERM, so every role drains and stops.
fn shutdown_token() -> CancellationToken {
    let stop = CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
        s.cancel();
    });
    stop
}

/// Connects, creating the database and applying migrations first.
async fn migrated_pool(url: &str) -> anyhow::Result<PgPool> {
    if !sqlx::Postgres::database_exists(url)
        .await
        .with_context(|| format!("reaching Postgres at {}", redact(url)))?
    {
        sqlx::Postgres::create_database(url).await?;
    }
    let pool = PgPoolOptions::new()
        .max_connections(16)
        .connect(url)
        .await?;
    orderflow_engine::migrator()
        .run(&pool)
        .await
        .context("applying the engine's migrations")?;
    Ok(pool)
}

async fn serve_engine(
    pool: PgPool,
    conn: Connections,
    bind: SocketAddr,
    admin: Option<AdminConfig>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let registry = Arc::new(orderflow_workflows::registry());
    let config = EngineConfig::new(
        conn.amqp_url.clone(),
        Topology::new(conn.queue_prefix.clone()),
    );
    let engine = Engine::new(pool.clone(), registry, config);
    let app = api::router_with_admin(
        AppState {
            pool,
            applier: engine.applier.clone(),
            amqp_url: conn.amqp_url,
        },
        admin,
    );
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .with_context(|| format!("binding {bind}"))?;
    tracing::info!(%bind, "engine REST API listening");
    let loops = tokio::spawn(engine.run(stop.clone()));
    axum::serve(listener, app)
        .with_graceful_shutdown(stop.clone().cancelled_owned())
        .await?;
    loops.await?;
    Ok(())
}

/// What `orderflow worker` was asked to run.
#[derive(Debug)]
struct WorkerPlan {
    /// Activity names; empty: every activity of the order saga.
    queues: Vec<String>,
    concurrency: usize,
    service_database_url: Option<String>,
    health_bind: SocketAddr,
}

/// `orderflow worker`: the production handlers of the services owning `plan.queues`, each
/// service configured as `orderflow service NAME` would be, and a small HTTP server with
/// `/health`, `/ready` and `/metrics`, until `stop`.
async fn run_workers(
    conn: &Connections,
    args: &ServiceArgs,
    plan: WorkerPlan,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let owners = queue_owners(&plan.queues)?;
    if plan.service_database_url.is_some() && owners.len() > 1 {
        bail!(
            "--service-database-url: the queues belong to {} services; each uses its own \
             database `orderflow_<service>` on the server of --database-url",
            owners.len()
        );
    }
    let mut worker = Worker::builder(&conn.amqp_url, Topology::new(conn.queue_prefix.clone()));
    let mut ready = Readiness::new().amqp(conn.amqp_url.clone());
    // Kept alive until the workers stop (a built-in Stripe sandbox).
    let mut keep = Vec::new();
    for (service, activities) in owners {
        let config = service_config(
            service,
            conn,
            args,
            // Workers verify no tokens.
            "",
            None,
            plan.service_database_url.clone(),
            plan.concurrency,
        )?;
        let part = service_handlers(service, config, args, &mut ready)
            .await
            .with_context(|| format!("the {} service's handlers", service.as_str()))?;
        keep.extend(part.sandbox);
        for h in part.handlers {
            if activities.contains(&h.activity()) {
                worker = worker.handler(h, plan.concurrency);
            }
        }
    }
    let worker = worker.build();
    let health = axum::Router::new().merge(orderflow_service_kit::http::base_routes(ready));
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn({
        let stop = stop.clone();
        async move {
            worker
                .run(stop.cancelled_owned())
                .await
                .context("the workers")
        }
    });
    tasks.spawn(orderflow_service_kit::http::serve(
        plan.health_bind,
        health,
        stop.clone(),
    ));
    let result = all_or_nothing(tasks, &stop).await;
    drop(keep);
    result
}

/// Waits for every task; whatever ends first (`stop`, or a failure) stops the rest. The first
/// error is the result.
async fn all_or_nothing(
    mut tasks: tokio::task::JoinSet<anyhow::Result<()>>,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let mut result = Ok(());
    while let Some(done) = tasks.join_next().await {
        stop.cancel();
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) if result.is_ok() => result = Err(e),
            Err(e) if result.is_ok() => result = Err(e.into()),
            _ => {}
        }
    }
    result
}

/// The services owning `queues` (every activity of the order saga when empty), each with the
/// activities asked of it, in the order of [`SERVICES`].
fn queue_owners(queues: &[String]) -> anyhow::Result<Vec<(Service, Vec<&'static str>)>> {
    for q in queues {
        if !SERVICES
            .iter()
            .any(|s| s.activities().contains(&q.as_str()))
        {
            bail!("--queues: `{q}` is not an activity this build knows");
        }
    }
    Ok(SERVICES
        .iter()
        .map(|s| {
            let wanted: Vec<&'static str> = s
                .activities()
                .iter()
                .copied()
                .filter(|a| queues.is_empty() || queues.iter().any(|q| q == a))
                .collect();
            (*s, wanted)
        })
        .filter(|(_, wanted)| !wanted.is_empty())
        .collect())
}

/// One service's activity handlers, and the built-in Stripe sandbox they may call.
struct ServiceHandlers {
    handlers: Vec<Arc<dyn Handler>>,
    sandbox: Option<orderflow_stripe_sandbox::RunningSandbox>,
}

/// Connects (and migrates) what `service`'s handlers need, configured as its `run` would be,
/// and adds those dependencies to `ready`.
async fn service_handlers(
    service: Service,
    config: ServiceConfig,
    args: &ServiceArgs,
    ready: &mut Readiness,
) -> anyhow::Result<ServiceHandlers> {
    use orderflow_service_kit::db::connect_and_migrate;
    let url = config.database_url.clone();
    let mut probe = |pool: PgPool| {
        *ready = std::mem::take(ready).check(service.database_probe(), move || {
            let pool = pool.clone();
            async move { sqlx::query("select 1").execute(&pool).await.is_ok() }
        });
    };
    let plain = |handlers| ServiceHandlers {
        handlers,
        sandbox: None,
    };
    Ok(match service {
        Service::User => bail!("the user service has no activities"),
        Service::Inventory => {
            let pool = connect_and_migrate(&url, &orderflow_inventory::migrator()).await?;
            probe(pool.clone());
            plain(orderflow_inventory::handlers(
                pool.into(),
                &inventory_config(config, args),
            ))
        }
        Service::Order => {
            let pool = connect_and_migrate(&url, &orderflow_order::migrator()).await?;
            probe(pool.clone());
            plain(orderflow_order::handlers(pool))
        }
        Service::Notification => {
            let pool = connect_and_migrate(&url, &orderflow_notification::migrator()).await?;
            let config = notification_config(config, args);
            let providers = orderflow_notification::providers(pool.clone(), &config)?;
            probe(pool.clone());
            plain(orderflow_notification::handlers(pool, providers))
        }
        Service::Payment => {
            // No webhook endpoint here: the payment service's API receives Stripe's events.
            let (stripe, sandbox) = stripe_config(args, None).await?;
            let payments =
                orderflow_payment::connect(&orderflow_payment::PaymentConfig::new(config, stripe))
                    .await?;
            let db = payments.db.clone();
            *ready = std::mem::take(ready).check(service.database_probe(), move || {
                let db = db.clone();
                async move { db.ping().await }
            });
            if let Some(redis) = payments.cache.connection() {
                *ready = std::mem::take(ready).redis(redis);
            }
            ServiceHandlers {
                handlers: orderflow_payment::handlers(payments),
                sandbox,
            }
        }
    })
}

fn redact(url: &str) -> String {
    match url.split_once('@') {
        Some((creds, rest)) if creds.contains(':') && creds.matches(':').count() > 1 => {
            format!(
                "{}:***@{rest}",
                creds.rsplit_once(':').map_or(creds, |c| c.0)
            )
        }
        _ => url.to_owned(),
    }
}

/// The services `up` runs, and the owners of the activities `worker` runs.
const SERVICES: &[Service] = &[
    Service::User,
    Service::Inventory,
    Service::Order,
    Service::Payment,
    Service::Notification,
];

/// A service this build can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Service {
    User,
    Inventory,
    Order,
    Payment,
    Notification,
}

impl Service {
    fn as_str(self) -> &'static str {
        match self {
            Self::User => orderflow_user::SERVICE,
            Self::Inventory => orderflow_inventory::SERVICE,
            Self::Order => orderflow_order::SERVICE,
            Self::Payment => "payment",
            Self::Notification => "notification",
        }
    }

    fn port(self) -> u16 {
        match self {
            Self::User => ports::USER,
            Self::Inventory => ports::INVENTORY,
            Self::Order => ports::ORDER,
            Self::Payment => ports::PAYMENT,
            Self::Notification => ports::NOTIFICATION,
        }
    }

    /// The activities its workers do.
    fn activities(self) -> &'static [&'static str] {
        use orderflow_workflows::order::contracts::*;
        match self {
            Self::User => &[],
            Self::Inventory => &[INVENTORY_RESERVE, INVENTORY_RELEASE],
            Self::Order => &[ORDER_CREATE, ORDER_CANCEL],
            Self::Payment => &[PAYMENT_CHARGE, PAYMENT_REFUND],
            Self::Notification => &[NOTIFICATION_SEND],
        }
    }

    /// The name of its database's probe in a worker's `/ready`.
    fn database_probe(self) -> &'static str {
        match self {
            Self::User => "user_database",
            Self::Inventory => "inventory_database",
            Self::Order => "order_database",
            Self::Payment => "payment_database",
            Self::Notification => "notification_database",
        }
    }
}

fn wired(name: ServiceName) -> Service {
    match name {
        ServiceName::User => Service::User,
        ServiceName::Inventory => Service::Inventory,
        ServiceName::Order => Service::Order,
        ServiceName::Payment => Service::Payment,
        ServiceName::Notification => Service::Notification,
    }
}

/// The token secret. `up` is one process, so it may invent one; separate `service` processes
/// must share theirs, so there it is required.
fn jwt_secret(configured: Option<String>, may_generate: bool) -> anyhow::Result<String> {
    use rand::RngCore as _;
    match configured.filter(|s| !s.is_empty()) {
        Some(s) if s.len() >= orderflow_service_kit::auth::MIN_SECRET_LEN => Ok(s),
        Some(_) => bail!(
            "ORDERFLOW_JWT_SECRET must be at least {} bytes",
            orderflow_service_kit::auth::MIN_SECRET_LEN
        ),
        None if may_generate => {
            let mut bytes = [0u8; 32];
            rand::rng().fill_bytes(&mut bytes);
            tracing::warn!(
                "ORDERFLOW_JWT_SECRET is not set: generated a random one, so tokens stop working \
                 when this process restarts; set it for anything but a try-out"
            );
            Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
        }
        None => {
            bail!("ORDERFLOW_JWT_SECRET is required: every service must verify the same tokens")
        }
    }
}

/// The kit's settings of one service.
fn service_config(
    name: Service,
    conn: &Connections,
    args: &ServiceArgs,
    secret: &str,
    bind: Option<SocketAddr>,
    database_url: Option<String>,
    concurrency: usize,
) -> anyhow::Result<ServiceConfig> {
    let database_url = match database_url {
        Some(url) => url,
        None => orderflow_service_kit::db::with_database(
            &conn.database_url,
            &format!("orderflow_{}", name.as_str()),
        )?,
    };
    Ok(ServiceConfig {
        bind: bind.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], name.port()))),
        database_url,
        amqp_url: conn.amqp_url.clone(),
        redis_url: conn.redis_url.clone(),
        queue_prefix: conn.queue_prefix.clone(),
        jwt_secret: secret.to_owned(),
        engine_url: args.engine_url.clone(),
        worker_concurrency: concurrency,
    })
}

/// Runs one service until `stop`, through its crate's `run`.
async fn run_service(
    name: Service,
    service: ServiceConfig,
    args: &ServiceArgs,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    match name {
        Service::User => {
            let mut config = orderflow_user::UserConfig::local(service.jwt_secret.clone());
            config.service = service;
            config.admin = match (&args.admin_email, &args.admin_password) {
                (Some(email), Some(password)) => Some(orderflow_user::config::AdminSeed {
                    email: email.clone(),
                    password: password.clone(),
                }),
                (None, None) => None,
                // ORDERFLOW_ADMIN_PASSWORD alone also guards the engine's admin UI; seeding an
                // account needs the email too.
                (None, Some(_)) => None,
                (Some(_), None) => bail!("ORDERFLOW_ADMIN_EMAIL needs ORDERFLOW_ADMIN_PASSWORD"),
            };
            orderflow_user::run(config, stop).await
        }
        Service::Inventory => orderflow_inventory::run(inventory_config(service, args), stop).await,
        Service::Notification => {
            orderflow_notification::run(notification_config(service, args), stop).await
        }
        Service::Order => {
            let mut config = orderflow_order::OrderConfig::new(service);
            config.inventory_url = args.inventory_url.clone();
            config.user_url = args.user_url.clone();
            orderflow_order::run(config, stop).await
        }
        Service::Payment => {
            // Kept alive until the service stops.
            let (stripe, sandbox) = stripe_config(args, Some(service.bind.port())).await?;
            let config = orderflow_payment::PaymentConfig::new(service, stripe);
            let result = orderflow_payment::run(config, stop).await;
            drop(sandbox);
            result
        }
    }
}

fn inventory_config(
    service: ServiceConfig,
    args: &ServiceArgs,
) -> orderflow_inventory::InventoryConfig {
    let mut config = orderflow_inventory::InventoryConfig::new(service);
    config.seed_demo_products = args.seed_demo_products;
    config
}

fn notification_config(
    service: ServiceConfig,
    args: &ServiceArgs,
) -> orderflow_notification::NotificationConfig {
    let mut config = orderflow_notification::NotificationConfig::new(service);
    // Without SMTP the notification service keeps messages in its outbox table.
    config.smtp_url = args.smtp_url.clone();
    if let Some(from) = &args.email_from {
        config.email_from = from.clone();
    }
    config
}

/// Stripe from the flags; without `--stripe-api-base`, a built-in sandbox started here (kept
/// alive as long as the returned handle), posting its webhooks to the payment API on
/// `webhook_port` if there is one in this process.
async fn stripe_config(
    args: &ServiceArgs,
    webhook_port: Option<u16>,
) -> anyhow::Result<(
    orderflow_payment::StripeConfig,
    Option<orderflow_stripe_sandbox::RunningSandbox>,
)> {
    use orderflow_payment::StripeConfig;
    if let Some(base) = &args.stripe_api_base {
        let config = StripeConfig {
            api_base: base.clone(),
            secret_key: args
                .stripe_secret_key
                .clone()
                .context("STRIPE_SECRET_KEY is required with STRIPE_API_BASE")?,
            webhook_secret: args.stripe_webhook_secret.clone().unwrap_or_default(),
            ..StripeConfig::sandbox(base.clone())
        };
        return Ok((config, None));
    }
    let running =
        orderflow_stripe_sandbox::RunningSandbox::start(orderflow_stripe_sandbox::SandboxConfig {
            secret_key: StripeConfig::SANDBOX_SECRET_KEY.to_owned(),
            webhook: webhook_port.map(|port| orderflow_stripe_sandbox::WebhookTarget {
                url: format!("http://127.0.0.1:{port}/api/v1/webhooks/stripe"),
                secret: StripeConfig::SANDBOX_WEBHOOK_SECRET.to_owned(),
            }),
        })
        .await
        .context("starting the built-in Stripe sandbox")?;
    tracing::warn!(
        url = %running.url(),
        "STRIPE_API_BASE is not set: payments go to a built-in Stripe sandbox in this process, \
         which other processes do not see"
    );
    Ok((StripeConfig::sandbox(running.url()), Some(running)))
}

/// The admin UI's setup from the flags. `up` is for a developer's machine, so without a password
/// it uses the documented development one and says so at start; `engine` runs in production and
/// serves no password login without one.
fn admin_ui(args: &AdminArgs, dev_default: bool) -> Option<AdminConfig> {
    let password = match (&args.admin_ui_password, dev_default) {
        (Some(p), _) => p.clone(),
        (None, true) => {
            println!(
                "admin UI: /admin, user `{}`, password `{DEV_PASSWORD}` (the development default; \
                 set ORDERFLOW_ADMIN_PASSWORD)",
                args.admin_user
            );
            DEV_PASSWORD.to_owned()
        }
        (None, false) => {
            tracing::warn!("admin UI disabled: set ORDERFLOW_ADMIN_PASSWORD to enable /admin");
            return None;
        }
    };
    let mut config = AdminConfig::with_password(&args.admin_user, password);
    config.secure_cookies = args.admin_secure_cookies;
    Some(config)
}
