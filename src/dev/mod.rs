//! `orderflow dev`: the whole platform in one process with nothing else installed. The engine
//! ([`orderflow_engine::Engine`], the one `orderflow up` runs) is on the embedded SQLite store,
//! tasks, results and finished-saga events go through the in-process queue (durable in SQLite),
//! and the five services run from the parts `orderflow up` runs, each on its own SQLite
//! database ([`services`]), with payments through the built-in Stripe sandbox (a real HTTP client against
//! `orderflow-stripe-sandbox` on a local port, so Stripe's test cards succeed, decline or fail)
//! and emails in the notification service's outbox. One address serves it all ([`gateway`]): the
//! services' APIs, the engine's API and the admin UI (both on the embedded store).
//!
//! Files under `--data-dir`: `engine.db`, `queue.db`, one `<service>.db` per service (WAL), the
//! Stripe sandbox's books (`stripe.json`) and the token signing secret (`jwt-secret`).
//! `--memory` keeps nothing.

mod demo;
mod gateway;
mod services;

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use anyhow::Context;
use axum::Router;
use orderflow_engine::{
    Engine, EngineConfig,
    admin::AdminConfig,
    retention::{Retention, RetentionConfig},
    store::sqlite::SqliteStore,
};
use orderflow_queue::{Topology, embedded::EmbeddedQueue};
use tokio_util::sync::CancellationToken;

pub use demo::{DEMO_ADMIN_EMAIL, DEMO_EMAIL, DEMO_PASSWORD, place_order_curl};

/// `orderflow dev` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct DevArgs {
    /// Where the embedded databases live (one SQLite file each).
    #[arg(long, env = "ORDERFLOW_DATA_DIR", default_value = "./.orderflow")]
    pub data_dir: PathBuf,
    /// Keep everything in memory; nothing survives the process.
    #[arg(long, conflicts_with = "data_dir")]
    pub memory: bool,
    /// Address of the HTTP API.
    #[arg(long, env = "ORDERFLOW_BIND", default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,
    /// The admin UI's password (user `admin`). Unset: the printed development password, which
    /// is accepted on a loopback address only.
    #[arg(long, env = "ORDERFLOW_ADMIN_PASSWORD", hide_env_values = true)]
    pub admin_password: Option<String>,
    #[command(flatten)]
    pub retention: crate::cli::RetentionArgs,
}

/// Everything `orderflow dev` runs, started; dropped or stopped, it stops.
#[derive(Debug)]
pub struct Dev {
    pub addr: SocketAddr,
    pub stop: CancellationToken,
    /// A token of the demo customer, for the printed curl.
    pub demo_token: String,
    /// An operator's token for the engine API (`/api/v1/workflows`, `orderflow workflows`).
    pub operator_token: String,
    tasks: tokio::task::JoinSet<()>,
}

impl Dev {
    /// Stops every loop and waits for in-flight tasks.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Runs until Ctrl-C.
pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    let dev = start(&args).await?;
    let url = format!("http://{}", dev.addr);
    println!("OrderFlow dev is running: engine, five services, workers, admin UI, Stripe sandbox.");
    match args.memory {
        true => println!("  data:      in memory (gone on exit)"),
        false => println!("  data:      {}", args.data_dir.display()),
    }
    match args.admin_password.as_deref().filter(|p| !p.is_empty()) {
        Some(_) => {
            println!("  admin UI:  {url}/admin  (log in as admin / ORDERFLOW_ADMIN_PASSWORD)")
        }
        None => println!(
            "  admin UI:  {url}/admin  (log in as admin / {})",
            orderflow_engine::admin::DEV_PASSWORD
        ),
    }
    println!(
        "  API:       {url}/api/v1/products, /orders, /payments, /users, /auth/login, /workflows"
    );
    println!(
        "  demo user: {DEMO_EMAIL} / {DEMO_PASSWORD}  (admin API user: {DEMO_ADMIN_EMAIL}, same password)"
    );
    println!(
        "  emails:    {url}/admin/emails (the outbox: nothing is really sent; JSON at /dev/emails)"
    );
    println!(
        "  cards:     pm_card_visa succeeds, pm_card_chargeDeclined is declined, \
         pm_card_chargeDeclinedProcessingError fails"
    );
    println!(
        "  operator:  {}  (the engine API's /api/v1/workflows as an operator; \
         ORDERFLOW_ENGINE_TOKEN for `orderflow workflows`)",
        dev.operator_token
    );
    println!("Place an order as the demo user:");
    println!("  {}", place_order_curl(&url, &dev.demo_token));
    tokio::signal::ctrl_c().await?;
    dev.shutdown().await;
    Ok(())
}

/// Opens the data, serves everything on `args.bind` and runs the engine, the services and the
/// workers.
pub async fn start(args: &DevArgs) -> anyhow::Result<Dev> {
    let admin_password = match args.admin_password.as_deref().filter(|p| !p.is_empty()) {
        Some(p) => p.to_owned(),
        None if args.bind.ip().is_loopback() => orderflow_engine::admin::DEV_PASSWORD.to_owned(),
        None => anyhow::bail!(
            "refusing to serve the admin UI on {} with the development password: set \
             ORDERFLOW_ADMIN_PASSWORD, or bind to a loopback address",
            args.bind
        ),
    };
    let retention = crate::roles::retention_plan(&args.retention)?;
    let data_dir = (!args.memory).then_some(args.data_dir.as_path());
    let file = |name: &str| data_dir.map(|d| d.join(name));
    if let Some(dir) = data_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let topology = Topology::default();
    let store = SqliteStore::open(file("engine.db").as_deref()).await?;
    let queue = EmbeddedQueue::open(file("queue.db").as_deref(), topology.clone()).await?;
    let stop = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();

    // Bound first: the services reach each other and the engine through this address.
    let listener = tokio::net::TcpListener::bind(args.bind)
        .await
        .with_context(|| format!("binding {}", args.bind))?;
    let addr = listener.local_addr()?;
    let url = format!("http://{addr}");

    let stripe_url =
        demo::start_stripe_sandbox(file("stripe.json").as_deref(), &url, &mut tasks, &stop).await?;
    let wiring = services::Wiring {
        url: url.clone(),
        stripe_url,
        jwt_secret: demo::jwt_secret(file("jwt-secret").as_deref())?,
    };
    let services = services::start(data_dir, &wiring, &queue, &mut tasks, &stop).await?;
    let demo_token = demo::ensure_users(services.db("user"), &wiring).await?;

    let registry = Arc::new(orderflow_workflows::registry());
    let engine = Engine::new(
        store.clone(),
        queue.clone(),
        registry,
        EngineConfig::default(),
    );
    let state = orderflow_engine::api::AppState::new(&engine);
    tasks.spawn({
        let run = engine.run(stop.clone());
        async move {
            if let Err(e) = run.await {
                tracing::error!(error = %e, "orderflow dev is stopping");
            }
        }
    });
    // The same retention as `up`, on the embedded store.
    if let Some((archive, policy)) = retention {
        let r = Retention::new(store.clone(), archive, policy, RetentionConfig::default());
        tasks.spawn(r.run(stop.clone()));
    }

    // The engine's API and admin UI answer whatever no service owns.
    let admin = AdminConfig {
        outbox: Some(Arc::new(demo::NotificationOutbox(
            services.db("notification").clone(),
        ))),
        ..AdminConfig::with_password("admin", admin_password)
    };
    let ring = orderflow_auth::KeyRing::new(&wiring.jwt_secret);
    let operator_token = orderflow_auth::engine::issue(
        &ring,
        orderflow_auth::engine::EngineRole::Operator,
        "dev",
        demo::DEMO_TOKEN_TTL,
    )?;
    let engine = orderflow_engine::api::router_with(
        state.clone(),
        orderflow_engine::api::ApiAuth::new(ring),
        orderflow_engine::admin::router(state, admin),
    );
    let emails = demo::emails_router(services.db("notification").clone());
    let mut routes = services.routes;
    routes.push(("/dev/emails".to_owned(), emails));
    let app: Router = gateway::router(routes, engine);
    tasks.spawn({
        let stop = stop.clone();
        async move {
            if let Err(e) = orderflow_service_kit::http::serve_on(listener, app, stop).await {
                tracing::error!(error = %e, "the dev server stopped");
            }
        }
    });
    Ok(Dev {
        addr,
        stop,
        demo_token,
        operator_token,
        tasks,
    })
}
