//! Request rate limits that hold across replicas: a fixed-window counter per (limit, caller) in
//! Redis, so three replicas behind a load balancer allow what one would. Over the limit the
//! request is answered 429 with `Retry-After` (the seconds until the window ends).
//!
//! Limits are set from the environment ([`Limits::from_env`]); `docs/operations.md` lists them.
//! If Redis does not answer within [`REDIS_TIMEOUT`] the request is let through and a warning
//! logged: an outage of the limiter must not become an outage of logins and orders.

use std::{
    collections::HashMap,
    convert::Infallible,
    net::SocketAddr,
    str::FromStr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use axum::{
    extract::{ConnectInfo, FromRequestParts},
    http::{HeaderMap, HeaderName, request::Parts},
};
use redis::{Script, aio::ConnectionManager};
use tokio::sync::OnceCell;

use crate::problem::ApiError;

/// Logins per client address per window (`<count>/<seconds>s`, or `off`).
pub const LOGIN_ENV: &str = "ORDERFLOW_RATE_LIMIT_LOGIN";
/// Orders placed per user per window.
pub const ORDERS_ENV: &str = "ORDERFLOW_RATE_LIMIT_ORDERS";
/// The header that carries the client's address when a proxy (Kong) is in front; its last entry
/// is used: the address the proxy saw. Default `x-forwarded-for` (Kong appends to it); `peer`
/// counts by the connection's peer address only.
pub const CLIENT_IP_HEADER_ENV: &str = "ORDERFLOW_CLIENT_IP_HEADER";

/// How long a limit check may wait for Redis before letting the request through.
pub const REDIS_TIMEOUT: Duration = Duration::from_millis(500);

/// At most `limit` requests per `window`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    pub limit: u32,
    pub window: Duration,
}

impl Rule {
    pub const fn per_minute(limit: u32) -> Self {
        Self {
            limit,
            window: Duration::from_secs(60),
        }
    }
}

/// `20/60s` (or `20/60`): twenty per sixty seconds.
impl FromStr for Rule {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("`{s}` is not `<count>/<seconds>s` (e.g. `20/60s`) or `off`");
        let (count, secs) = s.trim().split_once('/').ok_or_else(bad)?;
        let limit: u32 = count.trim().parse().map_err(|_| bad())?;
        let secs: u64 = secs
            .trim()
            .trim_end_matches('s')
            .parse()
            .map_err(|_| bad())?;
        if limit == 0 || secs == 0 {
            return Err(bad());
        }
        Ok(Self {
            limit,
            window: Duration::from_secs(secs),
        })
    }
}

/// The limits of one deployment; `None` is no limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    pub login: Option<Rule>,
    pub orders: Option<Rule>,
    pub client_ip_header: Option<HeaderName>,
}

impl Default for Limits {
    /// Logins: far above what a person does, low enough to slow password guessing. Orders: off
    /// unless [`ORDERS_ENV`] sets one, because the benchmark and the fault suite place hundreds of
    /// orders a minute as one customer; production sets it (`docs/operations.md`).
    fn default() -> Self {
        Self {
            login: Some(Rule::per_minute(20)),
            orders: None,
            client_ip_header: Some(HeaderName::from_static("x-forwarded-for")),
        }
    }
}

impl Limits {
    /// The defaults, overridden by [`LOGIN_ENV`], [`ORDERS_ENV`] and [`CLIENT_IP_HEADER_ENV`].
    pub fn from_env() -> anyhow::Result<Self> {
        let mut limits = Self::default();
        let rule = |var: &str, default| -> anyhow::Result<Option<Rule>> {
            match std::env::var(var) {
                Err(_) => Ok(default),
                Ok(v) if v.trim().eq_ignore_ascii_case("off") => Ok(None),
                Ok(v) => v
                    .parse()
                    .map(Some)
                    .map_err(|e: String| anyhow::anyhow!("{var}: {e}")),
            }
        };
        limits.login = rule(LOGIN_ENV, limits.login)?;
        limits.orders = rule(ORDERS_ENV, limits.orders)?;
        match std::env::var(CLIENT_IP_HEADER_ENV) {
            Ok(h) if h.trim().eq_ignore_ascii_case("peer") => limits.client_ip_header = None,
            Ok(h) => {
                limits.client_ip_header =
                    Some(HeaderName::from_str(h.trim()).with_context(|| {
                        format!("{CLIENT_IP_HEADER_ENV}: `{h}` is not a header")
                    })?);
            }
            Err(_) => {}
        }
        Ok(limits)
    }
}

/// The connection's peer address, when the server was started with connect info
/// ([`crate::http::serve`] is).
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub Option<SocketAddr>);

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0),
        ))
    }
}

/// Who a per-client limit counts: the last entry of `header` when configured and present, else
/// the peer's IP address.
pub fn client_key(headers: &HeaderMap, peer: Peer, header: Option<&HeaderName>) -> String {
    header
        .and_then(|h| headers.get_all(h).iter().next_back())
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .or_else(|| peer.0.map(|a| a.ip().to_string()))
        .unwrap_or_else(|| "unknown".to_owned())
}

/// INCR the window's counter, start the window on the first hit, answer (count, ms left).
const COUNT: &str = r"
local n = redis.call('INCR', KEYS[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1])
end
return {n, ttl}
";

/// One named limit (`login`, `orders`), counted in Redis (shared by every replica) or, for a
/// single process such as `orderflow dev`, in the process ([`RateLimiter::in_process`]).
#[derive(Clone)]
pub struct RateLimiter {
    rule: Option<Rule>,
    name: &'static str,
    prefix: String,
    counter: Counter,
}

/// Where a limit's windows are counted.
#[derive(Clone)]
enum Counter {
    Redis {
        client: Option<redis::Client>,
        conn: Arc<OnceCell<ConnectionManager>>,
        script: Arc<Script>,
    },
    /// Key to (count, window end).
    Local(Arc<Mutex<HashMap<String, (u64, Instant)>>>),
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("name", &self.name)
            .field("rule", &self.rule)
            .finish_non_exhaustive()
    }
}

impl RateLimiter {
    /// A limit that connects to `redis_url` on first use (so building it needs no await).
    /// Keys carry `prefix` (the queue prefix), so tests can share one Redis.
    pub fn new(
        redis_url: &str,
        prefix: &str,
        name: &'static str,
        rule: Option<Rule>,
    ) -> anyhow::Result<Self> {
        let client = redis::Client::open(redis_url).context("parsing the Redis URL")?;
        Ok(Self::redis(
            Some(client),
            OnceCell::new(),
            prefix,
            name,
            rule,
        ))
    }

    /// A limit over a connection the service already has.
    pub fn with_connection(
        conn: ConnectionManager,
        prefix: &str,
        name: &'static str,
        rule: Option<Rule>,
    ) -> Self {
        Self::redis(None, OnceCell::new_with(Some(conn)), prefix, name, rule)
    }

    /// A limit counted in this process only: right for one process (`orderflow dev`), wrong
    /// behind a load balancer, where each replica would allow the whole limit.
    pub fn in_process(name: &'static str, rule: Option<Rule>) -> Self {
        Self {
            rule,
            name,
            prefix: String::new(),
            counter: Counter::Local(Arc::default()),
        }
    }

    /// No limit at all.
    pub fn off(name: &'static str) -> Self {
        Self::in_process(name, None)
    }

    fn redis(
        client: Option<redis::Client>,
        conn: OnceCell<ConnectionManager>,
        prefix: &str,
        name: &'static str,
        rule: Option<Rule>,
    ) -> Self {
        Self {
            rule,
            name,
            prefix: prefix.to_owned(),
            counter: Counter::Redis {
                client,
                conn: Arc::new(conn),
                script: Arc::new(Script::new(COUNT)),
            },
        }
    }

    pub fn rule(&self) -> Option<Rule> {
        self.rule
    }

    /// Counts one request by `caller`; 429 with `Retry-After` when over the limit.
    pub async fn check(&self, caller: &str) -> Result<(), ApiError> {
        let Some(rule) = self.rule else {
            return Ok(());
        };
        let key = format!("{}orderflow:rate:{}:{caller}", self.prefix, self.name);
        match tokio::time::timeout(REDIS_TIMEOUT, self.count(&key, rule.window)).await {
            Ok(Ok((n, ms_left))) if n > u64::from(rule.limit) => Err(ApiError::TooManyRequests {
                retry_after_secs: ms_left.div_ceil(1000).max(1),
            }),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => {
                tracing::warn!(
                    limit = self.name,
                    error = format!("{e:#}"),
                    "rate limit not checked"
                );
                Ok(())
            }
            Err(_) => {
                tracing::warn!(limit = self.name, "rate limit not checked: Redis timed out");
                Ok(())
            }
        }
    }

    async fn count(&self, key: &str, window: Duration) -> anyhow::Result<(u64, u64)> {
        let (client, conn, script) = match &self.counter {
            Counter::Local(windows) => return Ok(count_locally(windows, key, window)),
            Counter::Redis {
                client,
                conn,
                script,
            } => (client, conn, script),
        };
        let conn = conn
            .get_or_try_init(|| async {
                let client = client.clone().context("no Redis for this limit")?;
                ConnectionManager::new(client)
                    .await
                    .context("connecting to Redis")
            })
            .await?;
        let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
        let (n, ms_left): (u64, i64) = script
            .key(key)
            .arg(window_ms)
            .invoke_async(&mut conn.clone())
            .await?;
        Ok((n, u64::try_from(ms_left).unwrap_or(0)))
    }
}

/// The Redis script's fixed window, in a map: (count, ms left). Windows that ended are dropped
/// as they are met, and all of them when the map grows large, so it stays bounded.
fn count_locally(
    windows: &Mutex<HashMap<String, (u64, Instant)>>,
    key: &str,
    window: Duration,
) -> (u64, u64) {
    let now = Instant::now();
    let mut windows = windows.lock().unwrap_or_else(|e| e.into_inner());
    if windows.len() > 10_000 {
        windows.retain(|_, (_, end)| *end > now);
    }
    let slot = windows.entry(key.to_owned()).or_insert((0, now + window));
    if slot.1 <= now {
        *slot = (0, now + window);
    }
    slot.0 += 1;
    let (n, end) = *slot;
    let left = end.saturating_duration_since(now).as_millis();
    (n, u64::try_from(left).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_in_process_limit_counts_each_caller_per_window() {
        let rule = Rule {
            limit: 2,
            window: Duration::from_millis(300),
        };
        let limiter = RateLimiter::in_process("login", Some(rule));
        limiter.check("a").await.unwrap();
        limiter.check("a").await.unwrap();
        match limiter.check("a").await {
            Err(ApiError::TooManyRequests { retry_after_secs }) => assert_eq!(retry_after_secs, 1),
            other => panic!("third call in the window: {other:?}"),
        }
        limiter
            .check("b")
            .await
            .expect("another caller has its own window");
        tokio::time::sleep(Duration::from_millis(350)).await;
        limiter.check("a").await.expect("a new window starts empty");
        limiter.check("a").await.unwrap();
        assert!(
            limiter.check("a").await.is_err(),
            "the new window is limited too"
        );
        assert!(RateLimiter::off("x").check("a").await.is_ok());
    }
}
