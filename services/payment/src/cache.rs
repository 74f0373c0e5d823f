//! Charge outcomes per step idempotency key, so a repeated `payment.charge` task (a
//! redelivery, a duplicate) is answered without touching the database or Stripe: in Redis when
//! the service has one, shared by every worker; otherwise in this process's memory (`orderflow
//! dev`, where one process runs every worker).
//!
//! The cache is only a shortcut: the `payments` table stays the record. Only final outcomes are
//! cached, and a Redis that fails or is slow is logged and skipped, never an error of the task.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use orderflow_workflows::order::contracts::Charge;
use redis::{AsyncCommands, aio::ConnectionManager};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// How long one Redis command may take before the cache is skipped for this task.
const REDIS_TIMEOUT: Duration = Duration::from_millis(300);

/// The most outcomes the in-process cache holds. It is a shortcut, so when full of live entries
/// it is emptied rather than grown: the database answers meanwhile.
const MEMORY_CAPACITY: usize = 10_000;

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
    store: Store,
    namespace: String,
    ttl: Duration,
}

/// Where the outcomes are kept.
#[derive(Clone)]
enum Store {
    /// Shared by every worker of the service.
    Redis(ConnectionManager),
    /// This process's own: each outcome with the instant it expires.
    Memory(Arc<Mutex<HashMap<String, (Instant, Outcome)>>>),
}

impl std::fmt::Debug for OutcomeCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutcomeCache")
            .field(
                "store",
                &match self.store {
                    Store::Redis(_) => "redis",
                    Store::Memory(_) => "memory",
                },
            )
            .field("namespace", &self.namespace)
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl OutcomeCache {
    /// Outcomes in Redis through `conn`.
    pub fn new(conn: ConnectionManager, queue_prefix: &str, ttl: Duration) -> Self {
        Self {
            store: Store::Redis(conn),
            namespace: format!("orderflow:{queue_prefix}payment:charge:"),
            ttl,
        }
    }

    /// Outcomes in this process's memory, for a service without Redis. Only right when every
    /// worker of the service runs in this process; otherwise each has its own cache, which is
    /// still correct (the database answers a miss) but saves less.
    pub fn in_process(ttl: Duration) -> Self {
        Self {
            store: Store::Memory(Arc::default()),
            namespace: String::new(),
            ttl,
        }
    }

    /// The Redis connection, for the readiness probe; `None` for the in-process cache, which
    /// has nothing to probe.
    pub fn connection(&self) -> Option<ConnectionManager> {
        match &self.store {
            Store::Redis(conn) => Some(conn.clone()),
            Store::Memory(_) => None,
        }
    }

    fn key(&self, idempotency_key: &str) -> String {
        format!("{}{idempotency_key}", self.namespace)
    }

    /// The cached outcome of the step, if any.
    pub async fn get(&self, idempotency_key: &str) -> Option<Outcome> {
        let mut conn = match &self.store {
            Store::Redis(conn) => conn.clone(),
            Store::Memory(map) => {
                let map = map
                    .lock()
                    .expect("the outcome cache's lock is never poisoned");
                return match map.get(idempotency_key) {
                    Some((expires, outcome)) if *expires > Instant::now() => Some(outcome.clone()),
                    _ => None,
                };
            }
        };
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
        let mut conn = match &self.store {
            Store::Redis(conn) => conn.clone(),
            Store::Memory(map) => {
                let now = Instant::now();
                let mut map = map
                    .lock()
                    .expect("the outcome cache's lock is never poisoned");
                if map.len() >= MEMORY_CAPACITY {
                    map.retain(|_, (expires, _)| *expires > now);
                    if map.len() >= MEMORY_CAPACITY {
                        map.clear();
                    }
                }
                map.insert(
                    idempotency_key.to_owned(),
                    (now + self.ttl, outcome.clone()),
                );
                return;
            }
        };
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

#[cfg(test)]
mod tests {
    use super::*;

    fn charged(n: u32) -> Outcome {
        Outcome::Charged(Charge {
            payment_id: format!("pay_{n}"),
            payment_intent_id: format!("pi_{n}"),
        })
    }

    #[tokio::test]
    async fn the_in_process_cache_remembers_final_outcomes_until_their_ttl() {
        let cache = OutcomeCache::in_process(Duration::from_millis(50));
        assert!(cache.connection().is_none(), "nothing to probe");
        assert_eq!(cache.get("wf/charge").await, None);
        cache.put("wf/charge", &charged(1)).await;
        let declined = Outcome::Declined {
            message: "no".into(),
        };
        cache.put("wf2/charge", &declined).await;
        assert_eq!(cache.get("wf/charge").await, Some(charged(1)));
        assert_eq!(cache.get("wf2/charge").await, Some(declined));
        // A clone is the same cache (every worker of the process shares it).
        assert_eq!(cache.clone().get("wf/charge").await, Some(charged(1)));

        let deadline = Instant::now() + Duration::from_secs(5);
        while cache.get("wf/charge").await.is_some() {
            assert!(Instant::now() < deadline, "the outcome outlived its TTL");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_full_in_process_cache_is_emptied_not_grown() {
        let cache = OutcomeCache::in_process(Duration::from_secs(600));
        for n in 0..MEMORY_CAPACITY as u32 {
            cache.put(&format!("wf{n}/charge"), &charged(n)).await;
        }
        assert_eq!(cache.get("wf0/charge").await, Some(charged(0)));
        cache.put("last/charge", &charged(0)).await;
        assert_eq!(cache.get("wf0/charge").await, None);
        assert_eq!(cache.get("last/charge").await, Some(charged(0)));
        let Store::Memory(map) = &cache.store else {
            unreachable!("an in-process cache")
        };
        assert_eq!(map.lock().unwrap().len(), 1);
    }
}
