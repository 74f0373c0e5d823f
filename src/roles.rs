//! What each subcommand runs.

use std::{net::SocketAddr, path::Path, sync::Arc};

use anyhow::{Context, bail};
use orderflow_activities::worker::Worker;
use orderflow_core::{History, Registry, WorkflowId, replay};
use orderflow_engine::{
    Engine, EngineConfig,
    admin::{self, AdminConfig, DEV_PASSWORD},
    api::{self, AppState},
    retention::{Archive, Keep, Policy, Retention, RetentionConfig},
};
use orderflow_queue::{Topology, rabbit::RabbitQueue};
use orderflow_service_kit::{
    config::BROKER_PATIENCE,
    http::Readiness,
    parts::{Placement, Supervisor},
};
use sqlx::{PgPool, migrate::MigrateDatabase, postgres::PgPoolOptions};
use tokio_util::sync::CancellationToken;

use crate::{
    cli::{AdminArgs, Cli, Command, Connections, HistoryCommand, RetentionArgs, ServiceArgs},
    services::{SERVICES, Settings},
};

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
            retention,
            services,
        } => {
            // Checked before anything starts: a refusal is the first and only thing said.
            let admin = admin_ui(&admin, true, bind)?;
            let retention = retention_plan(&retention)?;
            let pool = migrated_pool(&conn.database_url).await?;
            let stop = shutdown_token();
            let secret = jwt_secret(services.jwt_secret.clone(), true)?;
            let auth = api_auth(&secret);
            let settings = settings(&conn, &services, secret, concurrency, None, None)?;
            let mut tasks = tokio::task::JoinSet::new();
            tasks.spawn(serve_engine(
                pool,
                task_queue(&conn),
                bind,
                auth,
                admin,
                retention,
                stop.clone(),
            ));
            // The services share one connection to the broker; the engine has its own.
            let queue = task_queue(&conn);
            for service in SERVICES {
                let (settings, queue, stop) = (settings.clone(), queue.clone(), stop.clone());
                tasks.spawn(async move {
                    let placement = Placement {
                        bind: service.bind(&settings),
                        concurrency,
                        workers: true,
                    };
                    service
                        .parts(&settings)
                        .await?
                        .run(queue, placement, stop)
                        .await
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
            no_workers,
        } => {
            let service = crate::services::named(&name)?;
            let secret = jwt_secret(services.jwt_secret.clone(), false)?;
            let settings = settings(
                &conn,
                &services,
                secret,
                concurrency,
                bind,
                service_database_url,
            )?;
            let placement = Placement {
                bind: service.bind(&settings),
                concurrency,
                workers: !no_workers,
            };
            let parts = service.parts(&settings).await?;
            parts
                .run(task_queue(&conn), placement, shutdown_token())
                .await
        }
        Command::Engine {
            conn,
            bind,
            admin,
            jwt_secret: secret,
            retention,
        } => {
            let admin = admin_ui(&admin, false, bind)?;
            let auth = api_auth(&jwt_secret(secret, false)?);
            let retention = retention_plan(&retention)?;
            let pool = migrated_pool(&conn.database_url).await?;
            let queue = task_queue(&conn);
            serve_engine(pool, queue, bind, auth, admin, retention, shutdown_token()).await
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
            command:
                HistoryCommand::Export {
                    id,
                    database_url,
                    archive_url,
                },
        } => {
            let id: WorkflowId = id
                .parse()
                .map_err(|_| anyhow::anyhow!("ID: `{id}` is not a workflow id (a UUID)"))?;
            let archive = archive_url
                .as_deref()
                .map(Archive::open)
                .transpose()
                .context("--archive-url")?;
            let pool = PgPoolOptions::new()
                .max_connections(1)
                .connect(&database_url)
                .await?;
            let history = export(&pool, archive.as_ref(), id).await?;
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
    let bytes = std::fs::read(file).context("reading the file")?;
    // An archive object (gzip's magic number): every workflow in it.
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let records =
            orderflow_engine::retention::archive::decode(&file.display().to_string(), &bytes)?;
        let mut statuses = Vec::with_capacity(records.len());
        for r in &records {
            let state = replay(registry, &r.history)
                .with_context(|| format!("archived workflow {}", r.workflow.id))?;
            anyhow::ensure!(
                state.status().as_str() == r.workflow.status,
                "archived workflow {}: replays to {}, archived as {}",
                r.workflow.id,
                state.status(),
                r.workflow.status
            );
            statuses.push(state.status().to_string());
        }
        return Ok(format!(
            "{} archived workflows: {}",
            records.len(),
            summary(&statuses)
        ));
    }
    let text = String::from_utf8(bytes).context("not UTF-8 text")?;
    let history: History =
        serde_json::from_str(&text).context("not a history in the replay format")?;
    let state = replay(registry, &history)?;
    Ok(state.status().to_string())
}

/// `3 completed, 1 cancelled`.
fn summary(statuses: &[String]) -> String {
    let mut counts: std::collections::BTreeMap<&str, usize> = Default::default();
    for s in statuses {
        *counts.entry(s).or_default() += 1;
    }
    counts
        .iter()
        .map(|(s, n)| format!("{n} {s}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A workflow's history from the database, or from the archive when retention moved it there.
async fn export(
    reads: &dyn orderflow_engine::store::Reads,
    archive: Option<&Archive>,
    id: WorkflowId,
) -> anyhow::Result<History> {
    if let Some((row, events)) = reads.workflow(id.0).await? {
        return Ok(History {
            workflow_id: id,
            workflow_type: row.workflow_type,
            version: row.version as u32,
            events,
        });
    }
    let Some(at) = reads.archived(id.0).await? else {
        bail!("ID: no workflow {id}");
    };
    let Some(day) = at.archived_at else {
        bail!("ID: workflow {id} is being archived right now; try again in a minute");
    };
    let Some(archive) = archive else {
        bail!(
            "ID: workflow {id} was archived on {} to {}; give --archive-url to read it",
            day.format("%Y-%m-%d"),
            at.object_key
        );
    };
    let record = archive
        .find(&at.object_key, id.0)
        .await
        .with_context(|| format!("reading {} from the archive", at.object_key))?
        .with_context(|| {
            format!(
                "ID: workflow {id} is not in its archive object {}",
                at.object_key
            )
        })?;
    Ok(record.history)
}

/// The retention `up` and `engine` run: the archive opened and the policy parsed before
/// anything starts, so a bad flag stops the process at once, naming it.
pub fn retention_plan(args: &RetentionArgs) -> anyhow::Result<Option<(Archive, Policy)>> {
    let policy =
        Policy::parse(Some(&args.retention), &args.retention_type).map_err(anyhow::Error::msg)?;
    let Some(url) = &args.archive_url else {
        tracing::info!("retention is off: no --archive-url, finished workflows are kept");
        return Ok(None);
    };
    let archive = Archive::open(url).map_err(|e| anyhow::anyhow!("--archive-url: {e}"))?;
    Ok(Some((archive, policy)))
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

/// The task queue on the broker of `conn`, connected on first use.
fn task_queue(conn: &Connections) -> RabbitQueue {
    RabbitQueue::new(
        conn.amqp_url.clone(),
        Topology::new(conn.queue_prefix.clone()),
        BROKER_PATIENCE,
    )
}

async fn serve_engine(
    pool: PgPool,
    queue: RabbitQueue,
    bind: SocketAddr,
    auth: api::ApiAuth,
    admin: Option<AdminConfig>,
    retention: Option<(Archive, Policy)>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let registry = Arc::new(orderflow_workflows::registry());
    // Retention shares only the database with the engine's loops.
    let retention = retention.map(|(archive, policy)| {
        let r = Retention::new(pool.clone(), archive, policy, RetentionConfig::default());
        tokio::spawn(r.run(stop.clone()))
    });
    let engine = Engine::new(
        pool.clone(),
        queue.clone(),
        registry,
        EngineConfig::default(),
    );
    let state = AppState::new(&engine);
    let app = match admin {
        Some(config) => api::router_with(state.clone(), auth, admin::router(state, config)),
        None => api::router(state, auth),
    };
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .with_context(|| format!("binding {bind}"))?;
    tracing::info!(%bind, "engine REST API listening");
    let loops = tokio::spawn(engine.run(stop.clone()));
    axum::serve(listener, app)
        .with_graceful_shutdown(stop.clone().cancelled_owned())
        .await?;
    loops.await??;
    if let Some(retention) = retention {
        retention.await?;
    }
    Ok(())
}

/// What `orderflow worker` was asked to run.
#[derive(Debug)]
struct WorkerPlan {
    /// Activity names; empty: every activity of every service.
    queues: Vec<String>,
    concurrency: usize,
    service_database_url: Option<String>,
    health_bind: SocketAddr,
}

/// `orderflow worker`: the activity handlers of the services owning `plan.queues`, each
/// service configured as `orderflow service NAME` would be, and a small HTTP server with
/// `/health`, `/ready` and `/metrics`, until `stop`.
async fn run_workers(
    conn: &Connections,
    args: &ServiceArgs,
    plan: WorkerPlan,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    crate::services::check_queues(&plan.queues, &orderflow_workflows::registry().activities())?;
    let wanted = |a: &str| plan.queues.is_empty() || plan.queues.iter().any(|q| q == a);
    let owners: Vec<_> = SERVICES
        .iter()
        .filter(|s| s.activities.iter().any(|a| wanted(a)))
        .collect();
    if plan.service_database_url.is_some() && owners.len() > 1 {
        bail!(
            "--service-database-url: the queues belong to {} services; each uses its own \
             database `orderflow_<service>` on the server of --database-url",
            owners.len()
        );
    }
    // Workers verify no tokens and serve no API.
    let mut settings = settings(
        conn,
        args,
        String::new(),
        plan.concurrency,
        None,
        plan.service_database_url.clone(),
    )?;
    settings.bind = Arc::new(|_, _| None);
    let queue = task_queue(conn);
    let mut worker = Worker::builder(queue.clone());
    let mut ready = Readiness::new().queue(queue);
    let mut keep = Vec::new();
    for service in owners {
        let mut parts = service.parts(&settings).await?;
        ready = ready.merge(service.name, parts.ready.clone());
        // What is served comes from the handlers the service built, not from its list.
        for h in parts.handlers.drain(..) {
            if wanted(h.activity()) {
                worker = worker.handler(h, plan.concurrency);
            }
        }
        keep.push(parts);
    }
    let worker = worker.build();
    let served = worker.activities();
    if let Some(q) = plan.queues.iter().find(|q| !served.contains(&q.as_str())) {
        bail!("--queues: `{q}` is listed by a service of this build that built no handler for it");
    }
    let health = axum::Router::new().merge(orderflow_service_kit::http::base_routes(ready));
    let mut sup = Supervisor::new("worker", &stop);
    sup.spawn_worker(worker);
    sup.spawn(orderflow_service_kit::http::serve(
        plan.health_bind,
        health,
        sup.stop(),
    ));
    let result = sup.join().await;
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

/// The services' settings from the flags: each service's database `orderflow_<service>` on the
/// server of `--database-url` (or `database_url` for a single service), its default port on
/// every interface (or `bind` for a single service).
fn settings(
    conn: &Connections,
    args: &ServiceArgs,
    jwt_secret: String,
    concurrency: usize,
    bind: Option<SocketAddr>,
    database_url: Option<String>,
) -> anyhow::Result<Settings> {
    let server = conn.database_url.clone();
    let stripe = match &args.stripe_api_base {
        Some(base) => Some(orderflow_payment::StripeConfig {
            api_base: base.clone(),
            secret_key: args
                .stripe_secret_key
                .clone()
                .context("STRIPE_SECRET_KEY is required with STRIPE_API_BASE")?,
            webhook_secret: args.stripe_webhook_secret.clone().unwrap_or_default(),
            ..orderflow_payment::StripeConfig::sandbox(base.clone())
        }),
        None => None,
    };
    let admin = match (&args.admin_email, &args.admin_password) {
        (Some(email), Some(password)) => Some(orderflow_user::config::AdminSeed {
            email: email.clone(),
            password: password.clone(),
        }),
        // ORDERFLOW_ADMIN_PASSWORD alone also guards the engine's admin UI; seeding an account
        // needs the email too.
        (None, _) => None,
        (Some(_), None) => bail!("ORDERFLOW_ADMIN_EMAIL needs ORDERFLOW_ADMIN_PASSWORD"),
    };
    Ok(Settings {
        jwt_secret,
        engine_url: args.engine_url.clone(),
        inventory_url: args.inventory_url.clone(),
        user_url: args.user_url.clone(),
        redis_url: conn.redis_url.clone(),
        queue_prefix: conn.queue_prefix.clone(),
        worker_concurrency: concurrency,
        database_url: Arc::new(move |name| match &database_url {
            Some(url) => Ok(url.clone()),
            None => orderflow_service_kit::db::with_database(&server, &format!("orderflow_{name}")),
        }),
        bind: Arc::new(move |_, port| {
            Some(bind.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], port))))
        }),
        stripe,
        smtp_url: args.smtp_url.clone(),
        email_from: args.email_from.clone(),
        seed_demo_products: args.seed_demo_products,
        service_retention: match args
            .service_retention
            .parse()
            .map_err(|e| anyhow::anyhow!("--service-retention: {e}"))?
        {
            Keep::For(d) => Some(d),
            Keep::Forever => None,
        },
        admin,
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

/// Who may call the engine API: operators and services with tokens signed by `secret`, the
/// deployment's signing secret (the user service's).
fn api_auth(secret: &str) -> api::ApiAuth {
    api::ApiAuth::new(orderflow_auth::KeyRing::new(secret))
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

/// The admin UI's setup from the flags. `up` is for a developer's machine, so without a password
/// it uses the documented development one and says so at start, but only on a loopback address:
/// a password everyone knows must not guard a UI the network reaches, so there it refuses to
/// start. `engine` runs in production and serves no password login without one.
pub fn admin_ui(
    args: &AdminArgs,
    dev_default: bool,
    bind: SocketAddr,
) -> anyhow::Result<Option<AdminConfig>> {
    let password = match (&args.admin_ui_password, dev_default) {
        (Some(p), _) if !p.is_empty() => p.clone(),
        (_, true) if !bind.ip().is_loopback() => bail!(
            "refusing to serve the admin UI on {bind} with the development password: set \
             ORDERFLOW_ADMIN_PASSWORD (--admin-ui-password), or bind to a loopback address \
             (--bind 127.0.0.1:8080)"
        ),
        (_, true) => {
            println!(
                "admin UI: /admin, user `{}`, password `{DEV_PASSWORD}` (the development default, \
                 on loopback only; set ORDERFLOW_ADMIN_PASSWORD)",
                args.admin_user
            );
            DEV_PASSWORD.to_owned()
        }
        (_, false) => {
            tracing::warn!("admin UI disabled: set ORDERFLOW_ADMIN_PASSWORD to enable /admin");
            return Ok(None);
        }
    };
    let mut config = AdminConfig::with_password(&args.admin_user, password);
    config.secure_cookies = args.admin_secure_cookies;
    Ok(Some(config))
}

#[cfg(test)]
mod admin_ui_tests {
    use super::*;

    fn args(password: Option<&str>) -> AdminArgs {
        AdminArgs {
            admin_user: "admin".into(),
            admin_ui_password: password.map(str::to_owned),
            admin_secure_cookies: false,
        }
    }

    #[test]
    fn the_development_password_is_for_loopback_only() {
        let open: SocketAddr = "0.0.0.0:8080".parse().expect("an address");
        let lan: SocketAddr = "10.1.2.3:8080".parse().expect("an address");
        let local: SocketAddr = "127.0.0.1:8080".parse().expect("an address");
        let v6: SocketAddr = "[::1]:8080".parse().expect("an address");
        for bind in [open, lan] {
            let refused = admin_ui(&args(None), true, bind).expect_err("no default off loopback");
            assert!(
                refused.to_string().contains("ORDERFLOW_ADMIN_PASSWORD"),
                "{refused}"
            );
            // An empty password is no password.
            assert!(admin_ui(&args(Some("")), true, bind).is_err());
            let set = admin_ui(&args(Some("s3cret-s3cret")), true, bind)
                .expect("a configured password")
                .expect("the UI");
            assert_eq!(
                set.credential.map(|c| c.password).as_deref(),
                Some("s3cret-s3cret")
            );
            // `engine` without a password serves no login at all.
            assert!(
                admin_ui(&args(None), false, bind)
                    .expect("starts")
                    .is_none()
            );
        }
        for bind in [local, v6] {
            let dev = admin_ui(&args(None), true, bind)
                .expect("loopback")
                .expect("the UI");
            assert_eq!(
                dev.credential.map(|c| c.password).as_deref(),
                Some(DEV_PASSWORD)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use orderflow_core::testing::Driver;
    use orderflow_engine::store::{
        Reads as _, Store as _,
        change::{Change, HistoryRow, NewWorkflow},
        sqlite::SqliteStore,
    };
    use tokio_util::sync::CancellationToken;

    use super::*;

    /// A workflow retention archived is still exported and replayed, from the archive; without
    /// the archive the error says when it was archived and which flag reads it.
    #[tokio::test]
    async fn history_export_and_replay_read_archived_workflows() -> anyhow::Result<()> {
        let dir = std::env::temp_dir().join(format!("orderflow-export-{}", uuid::Uuid::new_v4()));
        let store = SqliteStore::open(None).await?;
        let registry = orderflow_workflows::registry();
        let id = WorkflowId(uuid::Uuid::now_v7());
        let mut d = Driver::for_definition(registry.get("order", 1).expect("order v1").clone())
            .workflow_id(id)
            .start_at(orderflow_engine::apply::now())
            .start(orderflow_testkit::order_input())?;
        d.terminate("admin:ops", "test order")?;
        let history = d.history().clone();
        let mut change = Change::default();
        change.creates.push(NewWorkflow {
            id: id.0,
            workflow_type: "order".into(),
            version: 1,
            status: "terminated".into(),
            reason: None,
            state: serde_json::to_string(d.state())?,
            last_seq: history.events.len() as i64,
            business_keys: "{}".into(),
            idempotency_key: None,
            request_hash: None,
            fingerprint: "test".into(),
            at: history.events.last().expect("events").at,
        });
        for e in &history.events {
            change.history.push(HistoryRow {
                workflow_id: id.0,
                seq: e.seq as i64,
                at: e.at,
                event: serde_json::to_string(&e.event)?,
                commands: serde_json::to_string(&e.commands)?,
                ignored: None,
            });
        }
        store.write(&change).await?;
        let archive = Archive::open(dir.to_str().expect("utf-8"))?;
        let retention = Retention::new(
            store.clone(),
            archive.clone(),
            Policy::default(),
            RetentionConfig::default(),
        );
        let later = chrono::Utc::now() + chrono::Duration::days(31);
        assert_eq!(
            retention
                .round(later, &CancellationToken::new())
                .await?
                .archived,
            1
        );

        assert_eq!(export(&store, Some(&archive), id).await?, history);
        let e = export(&store, None, id).await.unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("ID: workflow {id} was archived on ")),
            "{e}"
        );
        assert!(e.contains("--archive-url"), "{e}");
        let e = export(&store, None, WorkflowId(uuid::Uuid::now_v7()))
            .await
            .unwrap_err();
        assert!(e.to_string().starts_with("ID: no workflow"), "{e}");

        // The archive's object replays as a file too.
        let key = store.archived(id.0).await?.expect("archived").object_key;
        let status = replay_file(&registry, &dir.join(key))?;
        assert_eq!(status, "1 archived workflows: 1 terminated");
        Ok(())
    }

    #[test]
    fn retention_flags_are_named_when_wrong() {
        let args = |retention: &str, types: &[&str], url: Option<&str>| RetentionArgs {
            archive_url: url.map(str::to_owned),
            retention: retention.to_owned(),
            retention_type: types.iter().map(|s| s.to_string()).collect(),
        };
        let e = retention_plan(&args("30", &[], None))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("--retention:"), "{e}");
        let e = retention_plan(&args("30d", &["order"], None))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("--retention-type:"), "{e}");
        let e = retention_plan(&args("30d", &[], Some("rel/dir")))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("--archive-url:"), "{e}");
        assert!(retention_plan(&args("30d", &[], None)).unwrap().is_none());
    }
}
