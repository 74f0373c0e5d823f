//! Refresh sessions and the failed-login counter, in Redis ([`Sessions::new`], shared by every
//! replica) or in the user's own SQLite database ([`Sessions::in_database`], for `orderflow dev`
//! with no Redis). A refresh token is 32 random bytes (hex) handed to the client once; storage
//! keeps only its SHA-256, so a dump of Redis or of the database cannot be replayed as tokens.
//!
//! Both stores keep the same promises: a session ends at its expiry, taking a token is atomic
//! (of two refreshes racing with one token, one wins), a user's sessions can all be ended at
//! once (after a password change), and an email is locked out after [`MAX_FAILURES`] failed
//! logins within [`FAILURE_WINDOW`].

mod redis;
mod sqlite;

use std::time::Duration;

use axum::http::HeaderName;
use orderflow_service_kit::limit::{RateLimiter, Rule};
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};
use sqlx::SqlitePool;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    #[error("session database: {0}")]
    Db(#[from] sqlx::Error),
}

/// A freshly created session: the secret goes to the client, never to storage.
#[derive(Debug)]
pub struct NewSession {
    pub refresh_token: String,
}

/// Failed logins allowed per email within [`FAILURE_WINDOW`] before login answers 429.
pub const MAX_FAILURES: i64 = 10;
pub const FAILURE_WINDOW: Duration = Duration::from_secs(15 * 60);

/// Where sessions are kept.
#[derive(Clone)]
enum SessionStore {
    /// Keys under a prefix, expiring by Redis's TTL.
    Redis(redis::RedisSessions),
    /// The `sessions` and `login_failures` tables of the user database. SQLite only: on Postgres
    /// the service runs replicated, and Redis is what they share.
    Sqlite(SqlitePool),
}

/// The sessions of one deployment, and the login limit counted alongside them.
#[derive(Clone)]
pub struct Sessions {
    store: SessionStore,
    /// Logins per client address; off unless [`Sessions::with_login_limit`].
    login_limit: RateLimiter,
    client_ip_header: Option<HeaderName>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let store = match &self.store {
            SessionStore::Redis(r) => format!("redis {}", r.prefix()),
            SessionStore::Sqlite(_) => "sqlite".to_owned(),
        };
        f.debug_struct("Sessions").field("store", &store).finish()
    }
}

/// The SHA-256 of a token, in hex: what storage keeps.
fn digest(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A new refresh token: 32 random bytes in hex.
fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Sessions {
    /// Sessions in Redis, under keys that carry `prefix` (the queue prefix, so tests can share
    /// one Redis).
    pub fn new(redis: ::redis::aio::ConnectionManager, prefix: &str) -> Self {
        Self {
            store: SessionStore::Redis(redis::RedisSessions::new(redis, prefix)),
            login_limit: RateLimiter::off("login"),
            client_ip_header: None,
        }
    }

    /// Sessions in the user database itself (`migrations/sqlite/user/`), for one process with
    /// no Redis; they survive a restart when the database is a file.
    pub fn in_database(pool: SqlitePool) -> Self {
        Self {
            store: SessionStore::Sqlite(pool),
            login_limit: RateLimiter::off("login"),
            client_ip_header: None,
        }
    }

    /// Limits logins per client address to `rule`: counted in Redis across replicas, or in this
    /// process for sessions in the database. The client is the last entry of
    /// `client_ip_header` when set (behind a proxy), else the peer address.
    pub fn with_login_limit(
        mut self,
        rule: Option<Rule>,
        client_ip_header: Option<HeaderName>,
    ) -> Self {
        self.login_limit = match &self.store {
            SessionStore::Redis(r) => {
                RateLimiter::with_connection(r.connection(), r.prefix(), "login", rule)
            }
            SessionStore::Sqlite(_) => RateLimiter::in_process("login", rule),
        };
        self.client_ip_header = client_ip_header;
        self
    }

    pub fn login_limit(&self) -> &RateLimiter {
        &self.login_limit
    }

    pub fn client_ip_header(&self) -> Option<&HeaderName> {
        self.client_ip_header.as_ref()
    }

    /// Opens a session for `user` that lives `ttl`.
    pub async fn create(&self, user: Uuid, ttl: Duration) -> Result<NewSession, SessionError> {
        let token = new_token();
        let hash = digest(&token);
        match &self.store {
            SessionStore::Redis(r) => r.create(&hash, user, ttl).await?,
            SessionStore::Sqlite(pool) => sqlite::create(pool, &hash, user, ttl).await?,
        }
        Ok(NewSession {
            refresh_token: token,
        })
    }

    /// Ends the session of `token` and returns its user, or `None` if there is no such session
    /// (never was, already taken, revoked or expired). Atomic: of two takes racing with one
    /// token, one gets the user.
    pub async fn take(&self, token: &str) -> Result<Option<Uuid>, SessionError> {
        let hash = digest(token);
        match &self.store {
            SessionStore::Redis(r) => r.take(&hash).await,
            SessionStore::Sqlite(pool) => Ok(sqlite::take(pool, &hash).await?),
        }
    }

    /// Ends every session of `user` (after a password change).
    pub async fn revoke_all(&self, user: Uuid) -> Result<(), SessionError> {
        match &self.store {
            SessionStore::Redis(r) => r.revoke_all(user).await,
            SessionStore::Sqlite(pool) => Ok(sqlite::revoke_all(pool, user).await?),
        }
    }

    /// Seconds until `email` may try again, if it has failed too often lately.
    pub async fn locked_out(&self, email: &str) -> Result<Option<u64>, SessionError> {
        let email = email.to_lowercase();
        match &self.store {
            SessionStore::Redis(r) => r.locked_out(&email).await,
            SessionStore::Sqlite(pool) => Ok(sqlite::locked_out(pool, &email).await?),
        }
    }

    /// Counts a failed login; the window starts at the first failure.
    pub async fn record_failure(&self, email: &str) -> Result<(), SessionError> {
        let email = email.to_lowercase();
        match &self.store {
            SessionStore::Redis(r) => r.record_failure(&email).await,
            SessionStore::Sqlite(pool) => Ok(sqlite::record_failure(pool, &email).await?),
        }
    }

    pub async fn clear_failures(&self, email: &str) -> Result<(), SessionError> {
        let email = email.to_lowercase();
        match &self.store {
            SessionStore::Redis(r) => r.clear_failures(&email).await,
            SessionStore::Sqlite(pool) => Ok(sqlite::clear_failures(pool, &email).await?),
        }
    }
}

/// Whole seconds of `d`, at least one (a TTL of zero would mean "no expiry" or be refused).
fn secs(d: Duration) -> u64 {
    d.as_secs().max(1)
}
