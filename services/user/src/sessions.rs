//! Refresh sessions in Redis. A refresh token is 32 random bytes (hex) handed to the client once;
//! Redis keeps only its SHA-256, so a dump of Redis cannot be replayed as tokens. Each session
//! key holds the user id and expires with the session; a per-user set lists the user's sessions
//! so a password change can end all of them.

use std::time::Duration;

use axum::http::HeaderName;
use orderflow_service_kit::limit::{RateLimiter, Rule};
use rand::RngCore as _;
use redis::{AsyncCommands as _, aio::ConnectionManager};
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

/// A freshly created session: the secret goes to the client, never to storage.
#[derive(Debug)]
pub struct NewSession {
    pub refresh_token: String,
}

/// Sessions of one deployment (keys carry the queue prefix, so tests can share one Redis).
#[derive(Clone)]
pub struct Sessions {
    redis: ConnectionManager,
    prefix: String,
    /// Logins per client address, across replicas; off unless [`Sessions::with_login_limit`].
    login_limit: RateLimiter,
    client_ip_header: Option<HeaderName>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// Failed logins allowed per email within [`FAILURE_WINDOW`] before login answers 429.
pub const MAX_FAILURES: i64 = 10;
pub const FAILURE_WINDOW: Duration = Duration::from_secs(15 * 60);

fn digest(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn secs(d: Duration) -> u64 {
    d.as_secs().max(1)
}

impl Sessions {
    pub fn new(redis: ConnectionManager, prefix: &str) -> Self {
        Self {
            login_limit: RateLimiter::off("login"),
            redis,
            prefix: format!("{prefix}orderflow:user:"),
            client_ip_header: None,
        }
    }

    /// Limits logins per client address to `rule`, counted in this Redis; the client is the
    /// last entry of `client_ip_header` when set (behind a proxy), else the peer address.
    pub fn with_login_limit(
        mut self,
        rule: Option<Rule>,
        client_ip_header: Option<HeaderName>,
    ) -> Self {
        self.login_limit =
            RateLimiter::with_connection(self.redis.clone(), &self.prefix, "login", rule);
        self.client_ip_header = client_ip_header;
        self
    }

    pub fn login_limit(&self) -> &RateLimiter {
        &self.login_limit
    }

    pub fn client_ip_header(&self) -> Option<&HeaderName> {
        self.client_ip_header.as_ref()
    }

    fn session_key(&self, token: &str) -> String {
        format!("{}session:{}", self.prefix, digest(token))
    }

    fn user_key(&self, user: Uuid) -> String {
        format!("{}sessions-of:{user}", self.prefix)
    }

    fn failures_key(&self, email: &str) -> String {
        format!("{}login-failures:{}", self.prefix, email.to_lowercase())
    }

    /// Opens a session for `user` that lives `ttl`.
    pub async fn create(&self, user: Uuid, ttl: Duration) -> Result<NewSession, SessionError> {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let key = self.session_key(&token);
        let index = self.user_key(user);
        let mut conn = self.redis.clone();
        redis::pipe()
            .atomic()
            .set_ex(&key, user.to_string(), secs(ttl))
            .ignore()
            .sadd(&index, &key)
            .ignore()
            .expire(&index, secs(ttl).try_into().unwrap_or(i64::MAX))
            .ignore()
            .query_async::<()>(&mut conn)
            .await?;
        Ok(NewSession {
            refresh_token: token,
        })
    }

    /// Ends the session of `token` and returns its user, or `None` if there is no such session.
    /// `GETDEL` makes this atomic: of two refreshes racing with one token, one wins.
    pub async fn take(&self, token: &str) -> Result<Option<Uuid>, SessionError> {
        let key = self.session_key(token);
        let mut conn = self.redis.clone();
        let user: Option<String> = conn.get_del(&key).await?;
        let user = user.and_then(|u| u.parse::<Uuid>().ok());
        if let Some(u) = user {
            let _: () = conn.srem(self.user_key(u), &key).await?;
        }
        Ok(user)
    }

    /// Ends every session of `user` (after a password change).
    pub async fn revoke_all(&self, user: Uuid) -> Result<(), SessionError> {
        let index = self.user_key(user);
        let mut conn = self.redis.clone();
        let keys: Vec<String> = conn.smembers(&index).await?;
        let mut pipe = redis::pipe();
        pipe.atomic();
        for k in &keys {
            pipe.del(k).ignore();
        }
        pipe.del(&index).ignore();
        pipe.query_async::<()>(&mut conn).await?;
        Ok(())
    }

    /// Seconds until `email` may try again, if it has failed too often lately.
    pub async fn locked_out(&self, email: &str) -> Result<Option<u64>, SessionError> {
        let key = self.failures_key(email);
        let mut conn = self.redis.clone();
        let failures: Option<i64> = conn.get(&key).await?;
        if failures.unwrap_or(0) < MAX_FAILURES {
            return Ok(None);
        }
        let ttl: i64 = conn.ttl(&key).await?;
        Ok(Some(u64::try_from(ttl).unwrap_or(1).max(1)))
    }

    /// Counts a failed login; the window starts at the first failure.
    pub async fn record_failure(&self, email: &str) -> Result<(), SessionError> {
        let key = self.failures_key(email);
        let mut conn = self.redis.clone();
        let (n,): (i64,) = redis::pipe().incr(&key, 1).query_async(&mut conn).await?;
        if n == 1 {
            let _: () = conn
                .expire(&key, secs(FAILURE_WINDOW).try_into().unwrap_or(900))
                .await?;
        }
        Ok(())
    }

    pub async fn clear_failures(&self, email: &str) -> Result<(), SessionError> {
        let mut conn = self.redis.clone();
        let _: () = conn.del(self.failures_key(email)).await?;
        Ok(())
    }
}
