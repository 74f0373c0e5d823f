//! The settings every service has. Each service wraps [`ServiceConfig`] in its own config struct
//! for what only it needs; the binary fills both from flags and the environment.

use std::{net::SocketAddr, time::Duration};

/// Settings shared by every service.
#[derive(Clone)]
pub struct ServiceConfig {
    /// Where the REST API listens.
    pub bind: SocketAddr,
    /// The service's own database (`orderflow_<service>`); created if missing.
    pub database_url: String,
    pub redis_url: String,
    /// Prepended to every queue and exchange name, so tests and tenants can share one broker.
    pub queue_prefix: String,
    /// The HS256 secret that signs and verifies access tokens; the same in every service.
    pub jwt_secret: String,
    /// The engine's REST API, e.g. `http://127.0.0.1:8080`.
    pub engine_url: String,
    /// How many tasks each of the service's activity workers runs at once.
    pub worker_concurrency: usize,
}

// Hand-written so the JWT secret never reaches a log line.
impl std::fmt::Debug for ServiceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceConfig")
            .field("bind", &self.bind)
            .field("database_url", &self.database_url)
            .field("redis_url", &self.redis_url)
            .field("queue_prefix", &self.queue_prefix)
            .field("jwt_secret", &"<redacted>")
            .field("engine_url", &self.engine_url)
            .field("worker_concurrency", &self.worker_concurrency)
            .finish()
    }
}

/// Default ports of `orderflow up`.
pub mod ports {
    pub const ENGINE: u16 = 8080;
    pub const ORDER: u16 = 8081;
    pub const INVENTORY: u16 = 8082;
    pub const PAYMENT: u16 = 8083;
    pub const NOTIFICATION: u16 = 8084;
    pub const USER: u16 = 8085;
}

impl ServiceConfig {
    /// Defaults for this machine's local Postgres and Redis: service `name` on `port`
    /// with its database `orderflow_<name>`. The JWT secret must still be set by the caller.
    pub fn local(name: &str, port: u16) -> Self {
        Self {
            bind: SocketAddr::from(([0, 0, 0, 0], port)),
            database_url: format!("postgres://postgres@127.0.0.1:5432/orderflow_{name}"),
            redis_url: "redis://127.0.0.1:6379".to_owned(),
            queue_prefix: String::new(),
            jwt_secret: String::new(),
            engine_url: format!("http://127.0.0.1:{}", ports::ENGINE),
            worker_concurrency: 16,
        }
    }

    /// The queue names this service's workers and followers use.
    pub fn topology(&self) -> orderflow_queue::Topology {
        orderflow_queue::Topology::new(self.queue_prefix.clone())
    }
}

/// How long a service waits for the broker at start before giving up.
pub const BROKER_PATIENCE: Duration = Duration::from_secs(30);
