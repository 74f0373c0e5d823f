//! Flags and environment variables. Every setting has a flag, an environment variable and a
//! default that points at this machine's local services.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand};

/// OrderFlow: durable sagas on PostgreSQL and RabbitMQ.
#[derive(Debug, Parser)]
#[command(name = "orderflow", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log format: `text` for people, `json` for log pipelines.
    #[arg(
        long,
        env = "ORDERFLOW_LOG_FORMAT",
        default_value = "text",
        global = true
    )]
    pub log_format: String,
}

/// Where the shared services are.
#[derive(Debug, Clone, Args)]
pub struct Connections {
    /// The engine's Postgres database (created if missing).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/orderflow"
    )]
    pub database_url: String,
    /// RabbitMQ.
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub amqp_url: String,
    /// Redis (idempotency cache and sessions of the services).
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// Prefix of every queue name, to share one broker between environments or tests.
    #[arg(long, env = "ORDERFLOW_QUEUE_PREFIX", default_value = "")]
    pub queue_prefix: String,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The whole platform in one process with nothing else installed: the engine, the five
    /// services, their workers, the REST APIs and the admin UI on SQLite and an in-process queue,
    /// with a Stripe sandbox and an email outbox, on one port.
    Dev(crate::dev::DevArgs),
    /// Every role in one process: engine with its REST API, and the workers of every activity.
    Up {
        #[command(flatten)]
        conn: Connections,
        #[command(flatten)]
        admin: AdminArgs,
        #[command(flatten)]
        retention: RetentionArgs,
        /// Address of the engine's REST API and admin UI. Loopback by default: on any other
        /// address `up` needs ORDERFLOW_ADMIN_PASSWORD (it refuses the development password).
        #[arg(long, env = "ORDERFLOW_BIND", default_value = "127.0.0.1:8080")]
        bind: SocketAddr,
        /// Concurrent tasks per activity queue.
        #[arg(long, env = "ORDERFLOW_WORKER_CONCURRENCY", default_value_t = 32)]
        concurrency: usize,
        #[command(flatten)]
        services: ServiceArgs,
    },
    /// One service (order, inventory, payment, notification, user): its REST API, its activity
    /// workers and its event consumers, with its own database `orderflow_<name>`.
    Service {
        /// Which service.
        #[arg(value_parser = clap::builder::PossibleValuesParser::new(crate::services::SERVICES.iter().map(|s| s.name)))]
        name: String,
        #[command(flatten)]
        conn: Connections,
        #[command(flatten)]
        services: ServiceArgs,
        /// Address of the service's REST API (default: 0.0.0.0 and the service's port, 8081
        /// order, 8082 inventory, 8083 payment, 8084 notification, 8085 user).
        #[arg(long, env = "ORDERFLOW_SERVICE_BIND")]
        bind: Option<SocketAddr>,
        /// The service's own database (default: `orderflow_<name>` on the server of
        /// `--database-url`).
        #[arg(long, env = "ORDERFLOW_SERVICE_DATABASE_URL")]
        service_database_url: Option<String>,
        /// Concurrent tasks per activity queue.
        #[arg(long, env = "ORDERFLOW_WORKER_CONCURRENCY", default_value_t = 32)]
        concurrency: usize,
        /// Run no activity workers: the service's tasks are left to `orderflow worker`
        /// processes (one Deployment per queue, scaled on its backlog).
        #[arg(long, env = "ORDERFLOW_SERVICE_NO_WORKERS")]
        no_workers: bool,
    },
    /// The engine alone: REST API, outbox relay, timers and result intake.
    Engine {
        #[command(flatten)]
        conn: Connections,
        #[command(flatten)]
        admin: AdminArgs,
        #[command(flatten)]
        retention: RetentionArgs,
        /// Address of the REST API.
        #[arg(long, env = "ORDERFLOW_BIND", default_value = "0.0.0.0:8080")]
        bind: SocketAddr,
        /// HS256 secret that signs the tokens of the API's callers (operators and services):
        /// the services' `ORDERFLOW_JWT_SECRET`. Required.
        #[arg(long, env = "ORDERFLOW_JWT_SECRET", hide_env_values = true)]
        jwt_secret: Option<String>,
    },
    /// Workers for the given activity queues (by default every activity a service of this build
    /// implements), each running the production handlers of the service that owns the queue,
    /// configured as `orderflow service NAME` would be; plus `/health`, `/ready` and `/metrics`
    /// on `--health-bind`. Activities of deployed workflows that no service here implements are
    /// served by workers outside this build (docs/protocol.md).
    Worker {
        #[command(flatten)]
        conn: Connections,
        #[command(flatten)]
        services: ServiceArgs,
        /// Comma-separated activity names, e.g. `payment.charge,payment.refund`.
        #[arg(long, env = "ORDERFLOW_QUEUES", value_delimiter = ',')]
        queues: Vec<String>,
        /// Concurrent tasks per activity queue.
        #[arg(long, env = "ORDERFLOW_WORKER_CONCURRENCY", default_value_t = 32)]
        concurrency: usize,
        /// The owning service's own database (default: `orderflow_<service>` on the server of
        /// `--database-url`); only when every queue belongs to one service.
        #[arg(long, env = "ORDERFLOW_SERVICE_DATABASE_URL")]
        service_database_url: Option<String>,
        /// Address of `/health`, `/ready` (the service databases, the broker, Redis for payments)
        /// and `/metrics`.
        #[arg(long, env = "ORDERFLOW_HEALTH_BIND", default_value = "0.0.0.0:9090")]
        health_bind: SocketAddr,
    },
    /// Workflows through the engine's REST API: list, show, retry, cancel, terminate.
    Workflows(crate::workflows_cli::WorkflowsArgs),
    /// Creates the database if needed and applies the migrations.
    Migrate {
        #[command(flatten)]
        conn: Connections,
    },
    /// Workflow histories.
    History {
        #[command(subcommand)]
        command: HistoryCommand,
    },
    /// Replays recorded history files against this build's definitions.
    Replay {
        /// History JSON files (as exported), or archive objects (`.jsonl.gz`, as retention
        /// writes them: every workflow in the object is replayed).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// The saga benchmark: N order sagas, C in flight, on a fresh database; prints sagas/s,
    /// latency, commits, messages and CPU per saga, and checks every effect happened once.
    Bench(crate::bench::BenchArgs),
}

/// What the services share beyond the connections: the token secret, where the other services
/// are, the first admin and Stripe.
#[derive(Debug, Clone, Args)]
pub struct ServiceArgs {
    /// HS256 secret of access tokens, the same for every service (at least 32 bytes). `up`
    /// generates one when it is unset; `service` requires it.
    #[arg(long, env = "ORDERFLOW_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// The engine's REST API, where the order service starts and cancels sagas.
    #[arg(
        long,
        env = "ORDERFLOW_ENGINE_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub engine_url: String,
    /// The inventory service, which prices orders.
    #[arg(
        long,
        env = "ORDERFLOW_INVENTORY_URL",
        default_value = "http://127.0.0.1:8082"
    )]
    pub inventory_url: String,
    /// The user service, which knows each customer's email.
    #[arg(
        long,
        env = "ORDERFLOW_USER_URL",
        default_value = "http://127.0.0.1:8085"
    )]
    pub user_url: String,
    /// Email of the admin account created (or promoted) when the user service starts.
    #[arg(long, env = "ORDERFLOW_ADMIN_EMAIL")]
    pub admin_email: Option<String>,
    /// Password of that admin account (used only when the account is created).
    #[arg(long, env = "ORDERFLOW_ADMIN_PASSWORD", hide_env_values = true)]
    pub admin_password: Option<String>,
    /// Stripe's API base. Unset: the payment service uses the built-in Stripe sandbox, which
    /// `up` and `service payment` start in-process.
    #[arg(long, env = "STRIPE_API_BASE")]
    pub stripe_api_base: Option<String>,
    /// Stripe secret key (`sk_...`); required with `--stripe-api-base`.
    #[arg(long, env = "STRIPE_SECRET_KEY", hide_env_values = true)]
    pub stripe_secret_key: Option<String>,
    /// Stripe webhook signing secret (`whsec_...`).
    #[arg(long, env = "STRIPE_WEBHOOK_SECRET", hide_env_values = true)]
    pub stripe_webhook_secret: Option<String>,
    /// SMTP server of the notification service (`smtp://host:port`); unset, emails are kept in
    /// the service's outbox table instead of being sent.
    #[arg(long, env = "ORDERFLOW_SMTP_URL", hide_env_values = true)]
    pub smtp_url: Option<String>,
    /// Sender of the notification emails.
    #[arg(long, env = "ORDERFLOW_EMAIL_FROM")]
    pub email_from: Option<String>,
    /// Adds the demo catalogue (sku-1 ... sku-5) to an empty inventory at start.
    #[arg(long, env = "ORDERFLOW_SEED_DEMO_PRODUCTS", default_value_t = true, action = clap::ArgAction::Set)]
    pub seed_demo_products: bool,
    /// How long the services keep their own logs: delivered notifications (with their attempts
    /// and outbox records) and received Stripe webhook events. `90d`, or `forever`. Orders and
    /// payments are business records and are never purged.
    #[arg(long, env = "ORDERFLOW_SERVICE_RETENTION", default_value = "90d")]
    pub service_retention: String,
}

#[derive(Debug, Subcommand)]
pub enum HistoryCommand {
    /// Prints a workflow's history as JSON (the replay format).
    Export {
        /// The workflow id.
        id: String,
        #[arg(
            long,
            env = "DATABASE_URL",
            default_value = "postgres://postgres@127.0.0.1:5432/orderflow"
        )]
        database_url: String,
        /// The archive retention writes to (`file:///dir` or `s3://bucket/prefix`): where a
        /// workflow the database no longer holds is read from.
        #[arg(long, env = "ORDERFLOW_ARCHIVE_URL")]
        archive_url: Option<String>,
    },
}

/// Retention of finished workflows (docs/operations.md, retention): archived to
/// `--archive-url`, then deleted from the database. Off without an archive.
#[derive(Debug, Clone, Args)]
pub struct RetentionArgs {
    /// Where finished workflows are archived before they are deleted: `file:///dir`, or
    /// `s3://bucket/prefix` (endpoint and credentials from `AWS_*`). Unset: nothing is deleted.
    #[arg(long, env = "ORDERFLOW_ARCHIVE_URL")]
    pub archive_url: Option<String>,
    /// How long finished workflows are kept: `30d`, `12h`, or `forever`.
    #[arg(long, env = "ORDERFLOW_RETENTION", default_value = "30d")]
    pub retention: String,
    /// Per workflow type, overriding `--retention`: `order=90d,import=forever` (repeatable).
    #[arg(long, env = "ORDERFLOW_RETENTION_TYPE", value_delimiter = ',')]
    pub retention_type: Vec<String>,
}

/// The admin UI's operator account (the UI is served at `/admin` by `up` and `engine`).
#[derive(Debug, Clone, Args)]
pub struct AdminArgs {
    /// User name of the admin UI's operator account.
    #[arg(long, env = "ORDERFLOW_ADMIN_USER", default_value = "admin")]
    pub admin_user: String,
    /// Its password. `up` on a loopback address falls back to a development password and prints
    /// it at start (on any other address it refuses to start without one); `engine` serves no
    /// password login without one.
    #[arg(long, env = "ORDERFLOW_ADMIN_PASSWORD", hide_env_values = true)]
    pub admin_ui_password: Option<String>,
    /// Marks the admin UI's cookies `Secure`: set it wherever the UI is reached over HTTPS.
    #[arg(long, env = "ORDERFLOW_ADMIN_SECURE_COOKIES")]
    pub admin_secure_cookies: bool,
}
