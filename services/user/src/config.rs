//! What the user service needs beyond [`ServiceConfig`].

use std::time::Duration;

use orderflow_service_kit::{ServiceConfig, auth::ACCESS_TOKEN_TTL, config::ports};

/// How long a refresh session lives since its last rotation unless configured: 30 days.
pub const REFRESH_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// The first admin, created (or promoted) at start.
#[derive(Clone)]
pub struct AdminSeed {
    pub email: String,
    pub password: String,
}

impl std::fmt::Debug for AdminSeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminSeed")
            .field("email", &self.email)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Where refresh sessions and failed-login counts are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionBackend {
    /// Redis at the service's `redis_url`, shared by every replica (`orderflow up`).
    Redis,
    /// The user database itself, which must then be SQLite (`orderflow dev`): no Redis needed,
    /// right for one process only, since the login rate limit is counted in the process.
    Database,
}

#[derive(Clone, Debug)]
pub struct UserConfig {
    pub service: ServiceConfig,
    /// From `ORDERFLOW_ADMIN_EMAIL` / `ORDERFLOW_ADMIN_PASSWORD`.
    pub admin: Option<AdminSeed>,
    /// Lifetime of access tokens (15 minutes).
    pub access_ttl: Duration,
    /// Lifetime of a refresh session since its last rotation (30 days).
    pub refresh_ttl: Duration,
    /// Redis unless set otherwise.
    pub sessions: SessionBackend,
}

impl UserConfig {
    /// Defaults for this machine: port 8085, database `orderflow_user`.
    pub fn local(jwt_secret: impl Into<String>) -> Self {
        let mut service = ServiceConfig::local("user", ports::USER);
        service.jwt_secret = jwt_secret.into();
        Self {
            service,
            admin: None,
            access_ttl: ACCESS_TOKEN_TTL,
            refresh_ttl: REFRESH_TTL,
            sessions: SessionBackend::Redis,
        }
    }
}
