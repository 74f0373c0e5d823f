//! The real system on the private infrastructure: engines and the five services as child
//! processes of this build's `orderflow` binary (so each can be SIGKILLed alone), the Stripe
//! sandbox in the test process (its ledger and fault controls at hand), and aiosmtpd.

use std::{collections::HashMap, fmt, path::PathBuf, process::Stdio, time::Duration};

use anyhow::{Context, bail};
use orderflow_stripe_sandbox::{DEFAULT_SECRET_KEY, RunningSandbox, SandboxConfig, WebhookTarget};
use orderflow_testkit::eventually;
use sqlx::{PgPool, postgres::PgPoolOptions};
use tokio::process::{Child, Command};

use crate::infra::{Postgres, RabbitMq, Redis, Smtp, free_port, log_file};

/// The token secret every service of the system shares.
pub const JWT_SECRET: &str = "faults-suite-secret-faults-suite-secret-0123";
const WEBHOOK_SECRET: &str = "whsec_faults_suite";
/// libfaketime's multi-threaded preload library (Debian's `faketime` package).
pub const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

/// A service of the order saga, run as `orderflow service <name>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Service {
    User,
    Inventory,
    Order,
    Payment,
    Notification,
}

impl Service {
    pub const ALL: [Service; 5] = [
        Service::User,
        Service::Inventory,
        Service::Payment,
        Service::Notification,
        Service::Order,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Inventory => "inventory",
            Self::Order => "order",
            Self::Payment => "payment",
            Self::Notification => "notification",
        }
    }
}

/// One child process of the system.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Process {
    /// `orderflow engine`, the n-th replica (0 is the one the order service calls).
    Engine(usize),
    Service(Service),
}

impl fmt::Display for Process {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Engine(i) => write!(f, "engine-{i}"),
            Self::Service(s) => write!(f, "{}", s.name()),
        }
    }
}

/// How a scenario wants its system.
#[derive(Clone, Debug)]
pub struct Options {
    /// Engine replicas started at first.
    pub engines: usize,
    /// The engines' queue prefix; a relay between them and the workers uses another than the
    /// services' (`""`).
    pub engine_queue_prefix: String,
    /// One process whose wall clock runs ahead, and libfaketime's offset (`+20s`).
    pub clock_ahead: Option<(Process, String)>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            engines: 1,
            engine_queue_prefix: String::new(),
            clock_ahead: None,
        }
    }
}

#[derive(Debug)]
pub struct System {
    pub dir: PathBuf,
    pub pg: Postgres,
    pub mq: RabbitMq,
    pub redis: Redis,
    pub smtp: Smtp,
    pub sandbox: RunningSandbox,
    pub engine_db: PgPool,
    options: Options,
    ports: HashMap<Process, u16>,
    children: HashMap<Process, Child>,
}

impl System {
    /// Starts the infrastructure, then the engines and the services, and waits until every
    /// process is ready.
    pub async fn start(dir: PathBuf, options: Options) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir.join("logs"))?;
        let (pg, mq, redis, smtp) = tokio::try_join!(
            Postgres::start(&dir),
            RabbitMq::start(&dir),
            Redis::start(&dir),
            Smtp::start(&dir),
        )?;
        let mut ports: HashMap<Process, u16> = Service::ALL
            .iter()
            .map(|s| (Process::Service(*s), free_port()))
            .collect();
        for i in 0..options.engines.max(1) {
            ports.insert(Process::Engine(i), free_port());
        }
        let sandbox = RunningSandbox::start(SandboxConfig {
            secret_key: DEFAULT_SECRET_KEY.to_owned(),
            webhook: Some(WebhookTarget {
                url: format!(
                    "http://127.0.0.1:{}/api/v1/webhooks/stripe",
                    ports[&Process::Service(Service::Payment)]
                ),
                secret: WEBHOOK_SECRET.to_owned(),
            }),
        })
        .await?;
        let database_url = pg.url("orderflow");
        let mut sys = Self {
            dir,
            pg,
            mq,
            redis,
            smtp,
            sandbox,
            engine_db: PgPoolOptions::new().connect_lazy(&database_url)?,
            options,
            ports,
            children: HashMap::new(),
        };
        // Once, before any replica starts, so two engines never race to create the database.
        let migrate = sys
            .command(Process::Engine(0))?
            .arg("migrate")
            .status()
            .await?;
        anyhow::ensure!(migrate.success(), "orderflow migrate failed");
        for i in 0..sys.options.engines {
            sys.spawn(Process::Engine(i)).await?;
        }
        // The order service last: it calls the others.
        for s in Service::ALL {
            sys.launch(Process::Service(s))?;
        }
        for s in Service::ALL {
            sys.healthy(Process::Service(s)).await?;
        }
        Ok(sys)
    }

    pub fn url(&self, p: Process) -> String {
        format!("http://127.0.0.1:{}", self.ports[&p])
    }

    /// A service's own database.
    pub fn service_db(&self, s: Service) -> anyhow::Result<PgPool> {
        Ok(PgPoolOptions::new()
            .max_connections(2)
            .connect_lazy(&self.pg.url(&format!("orderflow_{}", s.name())))?)
    }

    fn command(&self, p: Process) -> anyhow::Result<Command> {
        let mut c = Command::new(env!("CARGO_BIN_EXE_orderflow"));
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "warn,orderflow_engine=info")
            .env("DATABASE_URL", self.pg.url("orderflow"))
            .env("AMQP_URL", self.mq.url())
            .env("REDIS_URL", self.redis.url())
            .env("ORDERFLOW_JWT_SECRET", JWT_SECRET)
            .env("ORDERFLOW_ENGINE_URL", self.url(Process::Engine(0)))
            .env(
                "ORDERFLOW_INVENTORY_URL",
                self.url(Process::Service(Service::Inventory)),
            )
            .env(
                "ORDERFLOW_USER_URL",
                self.url(Process::Service(Service::User)),
            )
            .env("STRIPE_API_BASE", self.sandbox.url())
            .env("STRIPE_SECRET_KEY", DEFAULT_SECRET_KEY)
            .env("STRIPE_WEBHOOK_SECRET", WEBHOOK_SECRET)
            .env(
                "ORDERFLOW_SMTP_URL",
                format!("smtp://127.0.0.1:{}", self.smtp.port),
            )
            .env("ORDERFLOW_SEED_DEMO_PRODUCTS", "false")
            .env("ORDERFLOW_WORKER_CONCURRENCY", "8");
        let bind = format!("127.0.0.1:{}", self.ports.get(&p).copied().unwrap_or(0));
        match p {
            Process::Engine(_) => {
                c.env("ORDERFLOW_BIND", bind)
                    .env("ORDERFLOW_QUEUE_PREFIX", &self.options.engine_queue_prefix);
            }
            Process::Service(s) => {
                c.args(["service", s.name()])
                    .env("ORDERFLOW_SERVICE_BIND", bind)
                    .env("ORDERFLOW_QUEUE_PREFIX", "");
            }
        }
        if let Some((ahead, offset)) = &self.options.clock_ahead
            && *ahead == p
        {
            anyhow::ensure!(
                std::path::Path::new(LIBFAKETIME).exists(),
                "{LIBFAKETIME} is missing: install Debian's `faketime` (scripts/test-servers.sh)"
            );
            // Only the wall clock: tokio's timers run on the monotonic clock.
            c.env("LD_PRELOAD", LIBFAKETIME)
                .env("FAKETIME", offset)
                .env("DONT_FAKE_MONOTONIC", "1");
        }
        let (out, err) = log_file(&self.dir.join("logs"), &p.to_string())?;
        c.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true);
        Ok(c)
    }

    /// Starts `p` and waits until it answers `/health`.
    pub async fn spawn(&mut self, p: Process) -> anyhow::Result<()> {
        self.launch(p)?;
        self.healthy(p).await
    }

    fn launch(&mut self, p: Process) -> anyhow::Result<()> {
        self.ports.entry(p).or_insert_with(free_port);
        let mut c = self.command(p)?;
        if let Process::Engine(_) = p {
            c.arg("engine");
        }
        self.children
            .insert(p, c.spawn().with_context(|| format!("starting {p}"))?);
        Ok(())
    }

    async fn healthy(&mut self, p: Process) -> anyhow::Result<()> {
        let url = format!("{}/health", self.url(p));
        let http = reqwest::Client::new();
        let log = self.dir.join("logs").join(format!("{p}.log"));
        eventually(Duration::from_secs(90), &format!("{p} to start"), || {
            let exited = self.children.get_mut(&p).map(|c| c.try_wait());
            let (http, url, log) = (http.clone(), url.clone(), log.clone());
            async move {
                if let Some(Ok(Some(status))) = exited {
                    let tail = std::fs::read_to_string(&log).unwrap_or_default();
                    let tail: String = tail.lines().rev().take(15).collect::<Vec<_>>().join("\n");
                    bail!("{p} exited with {status}; its log, newest first:\n{tail}");
                }
                Ok(match http.get(&url).send().await {
                    Ok(r) if r.status().is_success() => Some(()),
                    _ => None,
                })
            }
        })
        .await
    }

    /// SIGKILL: no drain, no goodbye.
    pub async fn kill(&mut self, p: Process) -> anyhow::Result<()> {
        let mut child = self
            .children
            .remove(&p)
            .with_context(|| format!("{p} is not running"))?;
        child.start_kill()?;
        child.wait().await?;
        Ok(())
    }

    pub fn is_running(&self, p: Process) -> bool {
        self.children.contains_key(&p)
    }

    /// Where each saga not yet ended stands: its history sequence.
    pub async fn positions(&self) -> anyhow::Result<HashMap<uuid::Uuid, i64>> {
        let rows: Vec<(uuid::Uuid, i64)> = sqlx::query_as(
            "select id, last_seq from workflows where status in ('running', 'compensating')",
        )
        .fetch_all(&self.engine_db)
        .await?;
        Ok(rows.into_iter().collect())
    }

    /// Waits up to `within` for every saga of `positions` to move on (a new event, or ended);
    /// answers how many did not.
    pub async fn unmoved_after(
        &self,
        positions: &HashMap<uuid::Uuid, i64>,
        within: Duration,
    ) -> anyhow::Result<usize> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let now = self.positions().await?;
            let unmoved = positions
                .iter()
                .filter(|(id, seq)| now.get(id) == Some(seq))
                .count();
            if unmoved == 0 || tokio::time::Instant::now() >= deadline {
                return Ok(unmoved);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sagas not yet ended, from the engine's database.
    pub async fn sagas_in_flight(&self) -> anyhow::Result<i64> {
        Ok(sqlx::query_scalar(
            "select count(*) from workflows where status in ('running', 'compensating')",
        )
        .fetch_one(&self.engine_db)
        .await?)
    }
}
