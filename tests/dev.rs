//! `orderflow dev` as a newcomer runs it: the real binary on a fresh data directory, with no
//! Postgres, RabbitMQ or Redis in its environment. It must take the order its start banner tells
//! the reader to place, refuse bad input with problem+json, compensate a declined card, and keep
//! its data and its sagas through a SIGKILL.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::Context;
use orderflow_testkit::eventually;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};
use uuid::Uuid;

const SETTLE: Duration = Duration::from_secs(60);
/// The demo catalogue's first product and its starting stock (`src/dev.rs`).
const SKU: &str = "sku-1";
const SKU_STOCK: i64 = 100;

/// A running `orderflow dev`: its process, base URL and the curl its banner printed.
struct Dev {
    child: Child,
    url: String,
    curl: String,
    http: reqwest::Client,
}

impl Dev {
    /// Starts the binary on `data_dir` (port 0) and reads its banner.
    async fn start(data_dir: &Path) -> anyhow::Result<Self> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_orderflow"))
            .args(["dev", "--bind", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            // Nothing of the production stack may be needed.
            .env_remove("DATABASE_URL")
            .env_remove("AMQP_URL")
            .env_remove("REDIS_URL")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("the orderflow binary starts")?;
        let stdout = child.stdout.take().context("piped stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let (mut url, mut curl) = (None, None);
        let banner = async {
            while let Some(line) = lines.next_line().await? {
                let line = line.trim().to_owned();
                if let Some(api) = line.strip_prefix("API:") {
                    url = api
                        .trim()
                        .strip_suffix("/api/v1/workflows")
                        .map(str::to_owned);
                }
                if line.starts_with("curl ") {
                    curl = Some(line);
                    break;
                }
            }
            anyhow::Ok(())
        };
        tokio::time::timeout(Duration::from_secs(60), banner)
            .await
            .context("the start banner within 60 s")??;
        // Keep draining stdout so the process never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Self {
            child,
            url: url.context("the banner names the API URL")?,
            curl: curl.context("the banner prints a curl that places an order")?,
            http: reqwest::Client::new(),
        })
    }

    async fn place(&self, payment_method: &str) -> anyhow::Result<Uuid> {
        place(&self.http, &self.url, payment_method).await
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        Ok(self
            .http
            .get(format!("{}{path}", self.url))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }

    async fn status(&self, id: Uuid) -> anyhow::Result<String> {
        let w = self.get(&format!("/api/v1/workflows/{id}")).await?;
        Ok(w["status"].as_str().unwrap_or_default().to_owned())
    }

    /// Waits until the saga is no longer running or compensating, and returns its status.
    async fn settled(&self, id: Uuid) -> anyhow::Result<String> {
        eventually(SETTLE, "the saga to settle", || async {
            let s = self.status(id).await?;
            Ok((!matches!(s.as_str(), "running" | "compensating")).then_some(s))
        })
        .await
    }

    async fn stock(&self) -> anyhow::Result<i64> {
        let products = self.get("/dev/products").await?;
        products
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["id"] == SKU))
            .and_then(|p| p["stock"].as_i64())
            .context("the demo product's stock")
    }

    async fn emails(&self) -> anyhow::Result<Vec<Value>> {
        Ok(self
            .get("/dev/emails")
            .await?
            .as_array()
            .cloned()
            .unwrap_or_default())
    }
}

/// Starts an order saga of the demo user for two mugs.
async fn place(http: &reqwest::Client, url: &str, payment_method: &str) -> anyhow::Result<Uuid> {
    let order = json!({
        "order_id": Uuid::new_v4(),
        "user_id": Uuid::new_v5(&Uuid::NAMESPACE_URL, b"demo@orderflow.dev"),
        "items": [{ "product_id": SKU, "quantity": 2 }],
        "total": { "amount_minor": 2598, "currency": "EUR" },
        "payment_method": payment_method,
        "email": "demo@orderflow.dev",
    });
    let answer = http
        .post(format!("{url}/api/v1/workflows"))
        .json(&json!({ "type": "order", "input": order }))
        .send()
        .await?;
    anyhow::ensure!(answer.status() == 201, "start answered {}", answer.status());
    let body: Value = answer.json().await?;
    Ok(body["id"].as_str().context("the workflow id")?.parse()?)
}

fn data_dir() -> PathBuf {
    std::env::temp_dir().join(format!("orderflow-dev-test-{}", Uuid::new_v4()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_curl_the_banner_prints_places_an_order_that_completes() -> anyhow::Result<()> {
    let dir = data_dir();
    let dev = Dev::start(&dir).await?;
    let out = Command::new("sh").arg("-c").arg(&dev.curl).output().await?;
    anyhow::ensure!(out.status.success(), "curl failed: {out:?}");
    let started: Value = serde_json::from_slice(&out.stdout)
        .with_context(|| String::from_utf8_lossy(&out.stdout).into_owned())?;
    let id: Uuid = started["id"].as_str().context("id")?.parse()?;

    assert_eq!(dev.settled(id).await?, "completed");
    let history = dev.get(&format!("/api/v1/workflows/{id}/history")).await?;
    let completed = history
        .as_array()
        .context("history")?
        .iter()
        .filter(|e| e.to_string().contains("activity_completed"))
        .count();
    assert_eq!(completed, 4, "one result per step: {history}");
    assert_eq!(dev.stock().await?, SKU_STOCK - 2, "two mugs sold");
    let emails = dev.emails().await?;
    assert_eq!(emails.len(), 1, "{emails:?}");
    assert_eq!(emails[0]["to"], "demo@orderflow.dev");
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_card_compensates_and_bad_input_is_a_problem() -> anyhow::Result<()> {
    let dir = data_dir();
    let dev = Dev::start(&dir).await?;
    let id = dev.place("pm_card_chargeDeclined").await?;
    assert_eq!(dev.settled(id).await?, "compensated");
    assert_eq!(
        dev.stock().await?,
        SKU_STOCK,
        "the reservation was released"
    );
    assert!(dev.emails().await?.is_empty(), "no confirmation");

    let url = format!("{}/api/v1/workflows", dev.url);
    for (body, field) in [
        ("{not json", "body"),
        (r#"{"input": {}}"#, "type"),
        (r#"{"type": "order", "input": {"order_id": 1}}"#, "input"),
        (
            r#"{"type": "order", "input": {}, "colour": "red"}"#,
            "colour",
        ),
    ] {
        let answer = dev
            .http
            .post(&url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await?;
        let status = answer.status().as_u16();
        let kind = answer
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let problem: Value = answer.json().await?;
        assert!((400..500).contains(&status), "{body}: {status}");
        assert_eq!(kind, "application/problem+json", "{body}");
        let detail = problem["detail"].as_str().unwrap_or_default();
        assert!(detail.starts_with(field), "{body}: {detail}");
    }
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}

/// SIGKILL while sagas run; the same data directory, restarted, finishes every saga with each
/// effect once: stock taken once per completed order, one Stripe charge and one email each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_and_interrupted_sagas_survive_a_sigkill() -> anyhow::Result<()> {
    let dir = data_dir();
    let mut dev = Dev::start(&dir).await?;
    // 16 customers order without pause; the kill lands while their sagas run.
    let placed = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut placing = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let (url, http, placed) = (dev.url.clone(), dev.http.clone(), placed.clone());
        placing.spawn(async move {
            while let Ok(id) = place(&http, &url, "pm_card_visa").await {
                placed.lock().expect("ids").push(id);
            }
        });
    }
    eventually(SETTLE, "30 orders placed", || async {
        Ok((placed.lock().expect("ids").len() >= 30).then_some(()))
    })
    .await?;
    dev.child.kill().await?;
    // What the kill interrupted, read from the engine's own file.
    let engine_db =
        sqlx::SqlitePool::connect(&format!("sqlite://{}", dir.join("engine.db").display())).await?;
    let running: i64 =
        sqlx::query_scalar("select count(*) from workflows where status = 'running'")
            .fetch_one(&engine_db)
            .await?;
    placing.shutdown().await;
    let ids = placed.lock().expect("ids").clone();
    println!(
        "{running} sagas running at the kill; {} starts answered",
        ids.len()
    );
    assert!(running > 0, "the kill interrupted no saga");

    let dev = Dev::start(&dir).await?;
    for id in &ids {
        assert_eq!(dev.settled(*id).await?, "completed", "saga {id}");
    }
    // A start whose answer the kill cut off is a saga too: count them all from the engine.
    let all: i64 = sqlx::query_scalar("select count(*) from workflows where status = 'completed'")
        .fetch_one(&engine_db)
        .await?;
    let total: i64 = sqlx::query_scalar("select count(*) from workflows")
        .fetch_one(&engine_db)
        .await?;
    engine_db.close().await;
    assert_eq!(all, total, "every saga completed");
    assert!(total >= ids.len() as i64);
    assert_eq!(dev.stock().await?, SKU_STOCK - 2 * total);
    assert_eq!(
        dev.emails().await?.len() as i64,
        total,
        "one email per order"
    );
    // The Stripe sandbox kept its books through the kill too: one charge per order, although
    // some charges were interrupted and ran again after the restart.
    let stripe: Value = serde_json::from_slice(&std::fs::read(dir.join("stripe.json"))?)?;
    let charges = stripe["ledger"]["charges"].as_array().map_or(0, Vec::len);
    assert_eq!(charges as i64, total, "one Stripe charge per order");
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}
