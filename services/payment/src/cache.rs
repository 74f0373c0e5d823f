//! Charge outcomes in Redis, per step idempotency key, so a repeated `payment.charge` task (a
//! redelivery, a duplicate) is answered without touching the database or Stripe.
//!
//! Redis is only a shortcut: the `payments` table stays the record. Only final outcomes are
//! cached, and a Redis that fails or is slow is logged and skipped, never an error of the task.

use std::time::Duration;

use orderflow_activities::contracts::Charge;
use redis::{AsyncCommands, aio::ConnectionManager};
use serde::{Deserialize, Serialize};

/// How long one Redis command may take before the cache is skipped for this task.
const REDIS_TIMEOUT: Duration = Duration::from_millis(300);

/// A charge's final outcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    Charged(Charge),
    Declined { message: String },
}

/// The outcome cache of one service (a queue prefix keeps tenants and tests apart).
#[derive(Clone)]
pub struct OutcomeCache {
    conn: ConnectionManager,
    namespace: String,
    ttl: Duration,
}

impl std::fmt::Debug for OutcomeCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutcomeCache")
            .field("namespace", &self.namespace)
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl OutcomeCache {
    pub fn new(conn: ConnectionManager, queue_prefix: &str, ttl: Duration) -> Self {
        Self {
            conn,
            namespace: format!("orderflow:{queue_prefix}payment:charge:"),
            ttl,
        }
    }

    /// The Redis connection, for the readiness probe.
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    fn key(&self, idempotency_key: &str) -> String {
        format!("{}{idempotency_key}", self.namespace)
    }

    /// The cached outcome of the step, if any.
    pub async fn get(&self, idempotency_key: &str) -> Option<Outcome> {
        let mut conn = self.conn.clone();
        let key = self.key(idempotency_key);
        let got: Result<Option<String>, _> =
            match tokio::time::timeout(REDIS_TIMEOUT, conn.get(&key)).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::warn!(%key, "Redis too slow; reading the database instead");
                    return None;
                }
            };
        match got {
            Ok(Some(json)) => match serde_json::from_str(&json) {
                Ok(outcome) => Some(outcome),
                Err(e) => {
                    tracing::warn!(%key, error = %e, "unreadable cached outcome; ignoring it");
                    None
                }
            },
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(%key, error = %e, "Redis unavailable; reading the database instead");
                None
            }
        }
    }

    /// Remembers the step's final outcome for the TTL.
    pub async fn put(&self, idempotency_key: &str, outcome: &Outcome) {
        let mut conn = self.conn.clone();
        let key = self.key(idempotency_key);
        let json = serde_json::to_string(outcome).expect("an outcome always serializes");
        let set = conn.set_ex::<_, _, ()>(&key, json, self.ttl.as_secs().max(1));
        match tokio::time::timeout(REDIS_TIMEOUT, set).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(%key, error = %e, "could not cache the outcome"),
            Err(_) => tracing::warn!(%key, "Redis too slow; outcome not cached"),
        }
    }
}
