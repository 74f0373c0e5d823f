//! What a bench run stands on: its own database (created and dropped per run), its own queue
//! prefix, and the engine and workers, as child processes of this binary or inside this one.

use std::{
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::Stdio,
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, bail};
use orderflow_activities::worker::Worker;
use orderflow_queue::{Topology, rabbit::RabbitQueue};
use orderflow_service_kit::config::BROKER_PATIENCE;

use super::activities as bench;
use orderflow_core::protocol::finished_routing_key;
use orderflow_engine::{
    Engine, EngineConfig,
    api::{self, AppState},
};
use orderflow_workflows::order::ORDER_SAGA;
use sqlx::{
    ConnectOptions, PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use tokio::{
    process::{Child, Command},
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{BenchArgs, measure};

/// The database and queue prefix of one run.
#[derive(Debug)]
pub struct BenchDb {
    pub name: String,
    pub url: String,
    server: String,
    pub prefix: String,
    /// Signs the tokens of this run: the driver's to the engine, the services' own.
    pub jwt_secret: String,
}

impl BenchDb {
    /// Creates `orderflow_bench_<random>` on the server of `database_url` and migrates it with
    /// the engine's and the bench activities' migrations.
    pub async fn create(database_url: &str) -> anyhow::Result<Self> {
        let server = database_url
            .rsplit_once('/')
            .map(|(s, _)| s.to_owned())
            .context("DATABASE_URL: expected postgres://.../<database>")?;
        let tag = Uuid::new_v4().simple().to_string();
        let name = format!("orderflow_bench_{}", &tag[..16]);
        let admin = admin_pool(&server).await?;
        sqlx::query(&format!("create database {name}"))
            .execute(&admin)
            .await?;
        admin.close().await;
        let url = format!("{server}/{name}");
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .connect(&url)
            .await?;
        orderflow_engine::migrator().run(&pool).await?;
        bench::migrator().run(&pool).await?;
        // Closing flushes this backend's statistics, so the commit count starts clean.
        pool.close().await;
        Ok(Self {
            name,
            url,
            server,
            prefix: format!("bench{}.", &tag[..12]),
            jwt_secret: format!("bench-{}", Uuid::new_v4().simple()),
        })
    }

    /// The Postgres server's URL, without a database.
    pub fn server(&self) -> &str {
        &self.server
    }

    pub fn topology(&self) -> Topology {
        Topology::new(self.prefix.clone())
    }

    /// A small pool for the driver's own queries.
    pub async fn pool(&self, size: u32) -> anyhow::Result<PgPool> {
        Ok(PgPoolOptions::new()
            .max_connections(size)
            .connect(&self.url)
            .await?)
    }

    /// Drops the database and deletes the run's queues and exchange.
    pub async fn drop_all(&self, amqp_url: &str) -> anyhow::Result<()> {
        let admin = admin_pool(&self.server).await?;
        sqlx::query(&format!(
            "drop database if exists {} with (force)",
            self.name
        ))
        .execute(&admin)
        .await?;
        admin.close().await;
        let conn = orderflow_queue::rabbit::connect(amqp_url, Duration::from_secs(5)).await?;
        let channel = conn.create_channel().await?;
        let t = self.topology();
        let mut queues: Vec<String> = orderflow_workflows::order::contracts::ORDER_SAGA_ACTIVITIES
            .iter()
            .map(|a| t.task_queue(a))
            .collect();
        queues.extend([
            t.results_queue(),
            t.dead_letter_queue(),
            self.finished_queue(),
        ]);
        for q in queues {
            channel
                .queue_delete(q.as_str().into(), Default::default())
                .await
                .with_context(|| format!("deleting queue {q}"))?;
        }
        channel
            .exchange_delete(t.events_exchange().into(), Default::default())
            .await?;
        let _ = conn.close(200, "bench done".into()).await;
        Ok(())
    }

    /// The driver's queue of `workflow.finished.order` events.
    pub fn finished_queue(&self) -> String {
        format!("{}bench.finished", self.prefix)
    }

    pub fn finished_routing_key(&self) -> String {
        finished_routing_key(ORDER_SAGA)
    }
}

async fn admin_pool(server: &str) -> anyhow::Result<PgPool> {
    let options: PgConnectOptions = format!("{server}/postgres").parse()?;
    // `drop database` waits for a checkpoint, which takes seconds; that is not worth a warning.
    PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options.disable_statement_logging())
        .await
        .with_context(|| format!("connecting to Postgres at {server}"))
}

/// The engine and the workers of a run. One exists per run, so the size difference between the
/// variants costs nothing.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Stack {
    Processes {
        engine: Child,
        /// The bench workers; `None` with `--services`, whose own workers do the steps.
        workers: Option<Child>,
        /// With `--services`: the five services, in this process.
        services: Option<super::services::Running>,
        bind: SocketAddr,
        engine_bin: PathBuf,
        db_url: String,
        amqp_url: String,
        prefix: String,
        jwt_secret: String,
    },
    InProcess {
        stop: CancellationToken,
        tasks: Vec<JoinHandle<()>>,
        pools: Vec<PgPool>,
        bind: SocketAddr,
    },
}

impl Stack {
    pub async fn start(db: &BenchDb, args: &BenchArgs) -> anyhow::Result<Self> {
        let bind = free_port()?;
        let stack = if args.in_process {
            start_in_process(db, args, bind).await?
        } else {
            let engine_bin = match &args.engine_bin {
                Some(bin) => bin.clone(),
                None => std::env::current_exe()?,
            };
            let engine = spawn_engine(
                &engine_bin,
                &db.url,
                &args.conn.amqp_url,
                &db.prefix,
                &db.jwt_secret,
                bind,
            )?;
            if args.services {
                wait_ready(bind).await?;
                let services =
                    super::services::Running::start(db, args, &format!("http://{bind}")).await?;
                return Ok(Self::Processes {
                    engine,
                    workers: None,
                    services: Some(services),
                    bind,
                    engine_bin,
                    db_url: db.url.clone(),
                    amqp_url: args.conn.amqp_url.clone(),
                    prefix: db.prefix.clone(),
                    jwt_secret: db.jwt_secret.clone(),
                });
            }
            let exe = std::env::current_exe()?;
            let workers = Command::new(exe)
                .args(["bench", "--worker"])
                .arg(format!("--worker-concurrency={}", args.worker_concurrency))
                .arg(format!("--worker-pool={}", args.worker_pool))
                .env("DATABASE_URL", &db.url)
                .env("AMQP_URL", &args.conn.amqp_url)
                .env("ORDERFLOW_QUEUE_PREFIX", &db.prefix)
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .context("starting the bench workers")?;
            Self::Processes {
                engine,
                workers: Some(workers),
                services: None,
                bind,
                engine_bin,
                db_url: db.url.clone(),
                amqp_url: args.conn.amqp_url.clone(),
                prefix: db.prefix.clone(),
                jwt_secret: db.jwt_secret.clone(),
            }
        };
        wait_ready(bind).await?;
        Ok(stack)
    }

    pub fn api_base(&self) -> String {
        let (Self::Processes { bind, .. } | Self::InProcess { bind, .. }) = self;
        format!("http://{bind}")
    }

    /// Process ids to measure: (engine, workers); in-process both are this process, and with
    /// `--services` the services' workers run in this process, the driver's.
    pub fn pids(&self) -> (Option<u32>, Option<u32>) {
        match self {
            Self::Processes {
                engine, workers, ..
            } => (engine.id(), workers.as_ref().and_then(Child::id)),
            Self::InProcess { .. } => (Some(std::process::id()), Some(std::process::id())),
        }
    }

    /// The engine's peak resident set (VmHWM), in bytes.
    pub fn engine_peak_rss(&self) -> Option<u64> {
        measure::peak_rss(self.pids().0?)
    }

    /// SIGKILLs the engine and starts a new one on the same port; returns once it answers.
    pub async fn crash_engine(&mut self) -> anyhow::Result<()> {
        let Self::Processes {
            engine,
            bind,
            engine_bin,
            db_url,
            amqp_url,
            prefix,
            jwt_secret,
            ..
        } = self
        else {
            bail!("only an engine process can be killed");
        };
        // `Child::kill` is SIGKILL: nothing gets to flush, drain or ack.
        engine.kill().await?;
        *engine = spawn_engine(engine_bin, db_url, amqp_url, prefix, jwt_secret, *bind)?;
        Ok(())
    }

    /// The services of a `--services` run.
    pub fn services(&self) -> Option<&super::services::Running> {
        match self {
            Self::Processes { services, .. } => services.as_ref(),
            Self::InProcess { .. } => None,
        }
    }

    /// Stops the workers (or services) and the engine gracefully (SIGTERM, then waits). With
    /// `--services`, answers what their check needs.
    pub async fn stop(self) -> anyhow::Result<Option<super::services::Checked>> {
        match self {
            Self::Processes {
                mut engine,
                workers,
                services,
                ..
            } => {
                let mut checked = None;
                if let Some(mut workers) = workers {
                    terminate(&mut workers).await?;
                }
                if let Some(services) = services {
                    checked = Some(services.stop().await?);
                }
                terminate(&mut engine).await?;
                return Ok(checked);
            }
            Self::InProcess {
                stop, tasks, pools, ..
            } => {
                stop.cancel();
                for t in tasks {
                    t.await?;
                }
                // Closing flushes the backends' statistics before the commits are counted.
                for p in pools {
                    p.close().await;
                }
            }
        }
        Ok(None)
    }
}

fn spawn_engine(
    bin: &Path,
    db_url: &str,
    amqp_url: &str,
    prefix: &str,
    jwt_secret: &str,
    bind: SocketAddr,
) -> anyhow::Result<Child> {
    Command::new(bin)
        .args(["engine", "--bind", &bind.to_string()])
        .env("ORDERFLOW_JWT_SECRET", jwt_secret)
        .env("DATABASE_URL", db_url)
        .env("AMQP_URL", amqp_url)
        .env("ORDERFLOW_QUEUE_PREFIX", prefix)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting the engine process")
}

/// SIGTERM, then wait: the process drains and closes its connections, which also flushes its
/// Postgres backends' statistics.
async fn terminate(child: &mut Child) -> anyhow::Result<()> {
    if let Some(pid) = child.id() {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()?;
        if !status.success() {
            bail!("could not signal process {pid}");
        }
    }
    match tokio::time::timeout(Duration::from_secs(30), child.wait()).await {
        Ok(r) => {
            r?;
        }
        Err(_) => child.kill().await?,
    }
    Ok(())
}

/// A port nobody listens on right now, for the engine to bind.
fn free_port() -> anyhow::Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?)
}

/// Polls `/ready` until the engine answers (or fails after 30 s).
async fn wait_ready(bind: SocketAddr) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let url = format!("http://{bind}/ready");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = http.get(&url).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("the engine at {bind} was not ready within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn start_in_process(
    db: &BenchDb,
    args: &BenchArgs,
    bind: SocketAddr,
) -> anyhow::Result<Stack> {
    let stop = CancellationToken::new();
    // The same pool size `orderflow engine` uses, so both modes compare.
    let engine_pool = PgPoolOptions::new()
        .max_connections(16)
        .connect(&db.url)
        .await?;
    let worker_pool = PgPoolOptions::new()
        .max_connections(args.worker_pool)
        .connect(&db.url)
        .await?;
    let registry = Arc::new(orderflow_workflows::registry());
    let queue = RabbitQueue::new(args.conn.amqp_url.clone(), db.topology(), BROKER_PATIENCE);
    let engine = Engine::new(
        engine_pool.clone(),
        queue.clone(),
        registry,
        EngineConfig::default(),
    );
    let app = api::router(
        AppState::new(&engine),
        api::ApiAuth::new(orderflow_auth::KeyRing::new(&db.jwt_secret)),
    );
    let listener = tokio::net::TcpListener::bind(bind).await?;
    let mut tasks = Vec::new();
    let s = stop.clone();
    tasks.push(tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(s.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "bench engine API failed");
        }
    }));
    let run = engine.run(stop.clone());
    tasks.push(tokio::spawn(async move {
        if let Err(e) = run.await {
            tracing::error!(error = %e, "bench engine stopped");
        }
    }));
    let worker = bench_worker(
        &args.conn.amqp_url,
        db.topology(),
        worker_pool.clone(),
        args,
    );
    let s = stop.clone();
    tasks.push(tokio::spawn(async move {
        if let Err(e) = worker.run(s.cancelled_owned()).await {
            tracing::error!(error = %e, "bench workers failed");
        }
    }));
    Ok(Stack::InProcess {
        stop,
        tasks,
        pools: vec![engine_pool, worker_pool],
        bind,
    })
}

fn bench_worker(
    amqp_url: &str,
    topology: Topology,
    pool: PgPool,
    args: &BenchArgs,
) -> Worker<RabbitQueue> {
    let mut worker = Worker::builder(RabbitQueue::new(amqp_url, topology, BROKER_PATIENCE));
    for h in bench::order_saga_handlers(pool) {
        worker = worker.handler(h, args.worker_concurrency);
    }
    worker.build()
}

/// `orderflow bench --worker`: the bench activities' workers, until SIGTERM.
pub async fn run_worker_process(args: &BenchArgs) -> anyhow::Result<()> {
    let pool = PgPoolOptions::new()
        .max_connections(args.worker_pool)
        .connect(&args.conn.database_url)
        .await?;
    let worker = bench_worker(
        &args.conn.amqp_url,
        Topology::new(args.conn.queue_prefix.clone()),
        pool.clone(),
        args,
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    worker
        .run(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        })
        .await?;
    pool.close().await;
    Ok(())
}
