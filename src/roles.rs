//! What each subcommand runs.

use std::{net::SocketAddr, path::Path, sync::Arc};

use anyhow::{Context, bail};
use orderflow_activities::{broker::Topology, recording, worker::Worker};
use orderflow_core::{History, Registry, WorkflowId, replay};
use orderflow_engine::admin::{AdminConfig, DEV_PASSWORD};
use orderflow_engine::{
    Engine, EngineConfig,
    api::{self, AppState},
    store,
};
use sqlx::{PgPool, migrate::MigrateDatabase, postgres::PgPoolOptions};
use tokio_util::sync::CancellationToken;

use crate::cli::{AdminArgs, Cli, Command, Connections, HistoryCommand};

pub fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,sqlx=warn,lapin=warn".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Up {
            conn,
            bind,
            concurrency,
            admin,
        } => {
            let pool = migrated_pool(&conn.database_url).await?;
            let stop = shutdown_token();
            let engine = tokio::spawn(serve_engine(
                pool.clone(),
                conn.clone(),
                bind,
                admin_ui(&admin, true),
                stop.clone(),
            ));
            let workers = tokio::spawn(run_workers(pool, conn, Vec::new(), concurrency, stop));
            engine.await??;
            workers.await??;
            Ok(())
        }
        Command::Engine { conn, bind, admin } => {
            let pool = migrated_pool(&conn.database_url).await?;
            serve_engine(pool, conn, bind, admin_ui(&admin, false), shutdown_token()).await
        }
        Command::Worker {
            conn,
            queues,
            concurrency,
        } => {
            let pool = migrated_pool(&conn.database_url).await?;
            run_workers(pool, conn, queues, concurrency, shutdown_token()).await
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
    recording::migrate(&pool)
        .await
        .context("applying the recording activities' migrations")?;
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

async fn run_workers(
    pool: PgPool,
    conn: Connections,
    queues: Vec<String>,
    concurrency: usize,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let handlers = recording::order_saga_handlers(pool);
    let wanted: Vec<_> = if queues.is_empty() {
        handlers
    } else {
        for q in &queues {
            if !handlers.iter().any(|h| h.activity() == q) {
                bail!("--queues: `{q}` is not an activity this build knows");
            }
        }
        handlers
            .into_iter()
            .filter(|h| queues.iter().any(|q| q == h.activity()))
            .collect()
    };
    let mut worker = Worker::builder(conn.amqp_url, Topology::new(conn.queue_prefix));
    for h in wanted {
        worker = worker.handler(h, concurrency);
    }
    worker.build().run(stop.cancelled_owned()).await?;
    Ok(())
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
