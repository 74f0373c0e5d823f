//! Sessions in Redis. Each session key holds the user id and expires with the session; a
//! per-user set lists the user's session keys so a password change can end all of them.

use std::time::Duration;

use redis::{AsyncCommands as _, aio::ConnectionManager};
use uuid::Uuid;

use super::{FAILURE_WINDOW, MAX_FAILURES, SessionError, secs};

#[derive(Clone)]
pub(super) struct RedisSessions {
    redis: ConnectionManager,
    /// `<queue prefix>orderflow:user:`.
    prefix: String,
}

impl RedisSessions {
    pub(super) fn new(redis: ConnectionManager, prefix: &str) -> Self {
        Self {
            redis,
            prefix: format!("{prefix}orderflow:user:"),
        }
    }

    pub(super) fn connection(&self) -> ConnectionManager {
        self.redis.clone()
    }

    pub(super) fn prefix(&self) -> &str {
        &self.prefix
    }

    fn session_key(&self, hash: &str) -> String {
        format!("{}session:{hash}", self.prefix)
    }

    fn user_key(&self, user: Uuid) -> String {
        format!("{}sessions-of:{user}", self.prefix)
    }

    fn failures_key(&self, email: &str) -> String {
        format!("{}login-failures:{email}", self.prefix)
    }

    pub(super) async fn create(
        &self,
        hash: &str,
        user: Uuid,
        ttl: Duration,
    ) -> Result<(), SessionError> {
        let key = self.session_key(hash);
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
        Ok(())
    }

    /// `GETDEL` makes this atomic: of two refreshes racing with one token, one wins.
    pub(super) async fn take(&self, hash: &str) -> Result<Option<Uuid>, SessionError> {
        let key = self.session_key(hash);
        let mut conn = self.redis.clone();
        let user: Option<String> = conn.get_del(&key).await?;
        let user = user.and_then(|u| u.parse::<Uuid>().ok());
        if let Some(u) = user {
            let _: () = conn.srem(self.user_key(u), &key).await?;
        }
        Ok(user)
    }

    pub(super) async fn revoke_all(&self, user: Uuid) -> Result<(), SessionError> {
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

    pub(super) async fn locked_out(&self, email: &str) -> Result<Option<u64>, SessionError> {
        let key = self.failures_key(email);
        let mut conn = self.redis.clone();
        let failures: Option<i64> = conn.get(&key).await?;
        if failures.unwrap_or(0) < MAX_FAILURES {
            return Ok(None);
        }
        let ttl: i64 = conn.ttl(&key).await?;
        Ok(Some(u64::try_from(ttl).unwrap_or(1).max(1)))
    }

    pub(super) async fn record_failure(&self, email: &str) -> Result<(), SessionError> {
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

    pub(super) async fn clear_failures(&self, email: &str) -> Result<(), SessionError> {
        let mut conn = self.redis.clone();
        let _: () = conn.del(self.failures_key(email)).await?;
        Ok(())
    }
}
