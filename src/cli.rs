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
    /// Every role in one process: engine with its REST API, and the workers of every activity.
    Up {
        #[command(flatten)]
        conn: Connections,
        #[command(flatten)]
        admin: AdminArgs,
        /// Address of the engine's REST API.
        #[arg(long, env = "ORDERFLOW_BIND", default_value = "0.0.0.0:8080")]
        bind: SocketAddr,
        /// Concurrent tasks per activity queue.
        #[arg(long, env = "ORDERFLOW_WORKER_CONCURRENCY", default_value_t = 32)]
        concurrency: usize,
    },
    /// The engine alone: REST API, outbox relay, timers and result intake.
    Engine {
        #[command(flatten)]
        conn: Connections,
        #[command(flatten)]
        admin: AdminArgs,
        /// Address of the REST API.
        #[arg(long, env = "ORDERFLOW_BIND", default_value = "0.0.0.0:8080")]
        bind: SocketAddr,
    },
    /// Workers for the given activity queues (all of the order saga's by default).
    Worker {
        #[command(flatten)]
        conn: Connections,
        /// Comma-separated activity names, e.g. `payment.charge,payment.refund`.
        #[arg(long, env = "ORDERFLOW_QUEUES", value_delimiter = ',')]
        queues: Vec<String>,
        /// Concurrent tasks per activity queue.
        #[arg(long, env = "ORDERFLOW_WORKER_CONCURRENCY", default_value_t = 32)]
        concurrency: usize,
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
        /// History JSON files (as exported).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
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
    },
}

/// The admin UI's operator account (the UI is served at `/admin` by `up` and `engine`).
#[derive(Debug, Clone, Args)]
pub struct AdminArgs {
    /// User name of the admin UI's operator account.
    #[arg(long, env = "ORDERFLOW_ADMIN_USER", default_value = "admin")]
    pub admin_user: String,
    /// Its password. `up` falls back to a development password and prints it at start;
    /// `engine` serves no password login without one.
    #[arg(long, env = "ORDERFLOW_ADMIN_PASSWORD", hide_env_values = true)]
    pub admin_ui_password: Option<String>,
    /// Marks the admin UI's cookies `Secure`: set it wherever the UI is reached over HTTPS.
    #[arg(long, env = "ORDERFLOW_ADMIN_SECURE_COOKIES")]
    pub admin_secure_cookies: bool,
}
