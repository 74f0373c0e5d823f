//! Redis: one multiplexed connection per service that reconnects by itself after Redis restarts.

use anyhow::Context as _;
pub use redis::aio::ConnectionManager;

/// Connects to `url`. Fails if Redis does not answer now: a service starting without it would
/// only fail later, request by request.
pub async fn connect(url: &str) -> anyhow::Result<ConnectionManager> {
    let client = redis::Client::open(url).with_context(|| format!("Redis URL {url}"))?;
    ConnectionManager::new(client)
        .await
        .with_context(|| format!("connecting to Redis at {url}"))
}
