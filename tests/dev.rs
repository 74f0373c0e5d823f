//! `orderflow dev` as a newcomer runs it: the real binary on a fresh data directory, with no
//! Postgres, RabbitMQ or Redis in its environment. The order its start banner tells the reader to
//! place goes through the order service, the saga and every service to an email in the outbox;
//! the demo login, the admin UI and problem+json answers work; a declined card compensates; and
//! data and sagas survive a SIGKILL.

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

const SETTLE: Duration = Duration::from_secs(90);
/// The demo catalogue's first product and its starting stock (`services/inventory/src/seed.rs`).
const SKU: &str = "sku-1";
const SKU_STOCK: i64 = 100;
const DEMO_EMAIL: &str = "demo@orderflow.dev";
const DEMO_PASSWORD: &str = "orderflow-demo";

/// A running `orderflow dev`: its process, base URL, the curl its banner printed and a token of
/// the demo customer got by logging in.
struct Dev {
    child: Child,
    url: String,
    curl: String,
    token: String,
    /// The operator token the banner prints, for the engine API.
    operator: String,
    http: reqwest::Client,
}

impl Dev {
    /// Starts the binary on `data_dir` (port 0), reads its banner and logs in as the demo user.
    async fn start(data_dir: &Path) -> anyhow::Result<Self> {
        let dir = data_dir.to_str().context("a UTF-8 path")?;
        Self::start_with(&["--data-dir", dir], &std::env::temp_dir()).await
    }

    /// Starts the binary with `args` in the working directory `cwd`.
    async fn start_with(args: &[&str], cwd: &Path) -> anyhow::Result<Self> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_orderflow"))
            .args(["dev", "--bind", "127.0.0.1:0"])
            .args(args)
            .current_dir(cwd)
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
        let (mut url, mut curl, mut operator) = (None, None, None);
        let banner = async {
            while let Some(line) = lines.next_line().await? {
                let line = line.trim().to_owned();
                if let Some(admin) = line.strip_prefix("admin UI:") {
                    url = admin
                        .split_whitespace()
                        .next()
                        .and_then(|u| u.strip_suffix("/admin"))
                        .map(str::to_owned);
                }
                if let Some(token) = line.strip_prefix("operator:") {
                    operator = token.split_whitespace().next().map(str::to_owned);
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
        let url = url.context("the banner names the admin UI's URL")?;
        let http = reqwest::Client::new();
        let token = login(&http, &url, DEMO_EMAIL, DEMO_PASSWORD).await?;
        Ok(Self {
            child,
            url,
            curl: curl.context("the banner prints a curl that places an order")?,
            token,
            operator: operator.context("the banner prints an operator token")?,
            http,
        })
    }

    async fn place(&self, payment_method: &str) -> anyhow::Result<Uuid> {
        place(&self.http, &self.url, &self.token, payment_method).await
    }

    /// The engine's routes take the operator's token; the services' the demo customer's.
    fn token_for(&self, url: &str) -> &str {
        if url.contains("/api/v1/workflows") {
            &self.operator
        } else {
            &self.token
        }
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        Ok(self
            .http
            .get(format!("{}{path}", self.url))
            .bearer_auth(self.token_for(path))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }

    /// Waits until the order's saga has finished; answers the order.
    async fn settled(&self, order: Uuid) -> anyhow::Result<Value> {
        eventually(SETTLE, "the order's saga to finish", || async {
            let o = self.get(&format!("/api/v1/orders/{order}")).await?;
            let done = matches!(
                o["saga_status"].as_str(),
                Some("completed" | "compensated" | "failed" | "terminated")
            );
            Ok(done.then_some(o))
        })
        .await
    }

    async fn stock(&self) -> anyhow::Result<i64> {
        let p = self.get(&format!("/api/v1/products/{SKU}")).await?;
        p["available"].as_i64().context("the product's stock")
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

async fn login(
    http: &reqwest::Client,
    url: &str,
    email: &str,
    password: &str,
) -> anyhow::Result<String> {
    let answer: Value = http
        .post(format!("{url}/api/v1/auth/login"))
        .json(&json!({ "email": email, "password": password }))
        .send()
        .await?
        .error_for_status()
        .context("the demo login")?
        .json()
        .await?;
    Ok(answer["access_token"]
        .as_str()
        .context("an access token")?
        .to_owned())
}

/// The demo user orders one espresso cup; answers the order id.
async fn place(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    payment_method: &str,
) -> anyhow::Result<Uuid> {
    let order = json!({
        "items": [{ "product_id": SKU, "quantity": 1 }],
        "shipping_address": {
            "name": "Demo", "line1": "1 Saga Street", "city": "Berlin",
            "postal_code": "10115", "country": "DE",
        },
        "payment_method": payment_method,
    });
    let answer = http
        .post(format!("{url}/api/v1/orders"))
        .bearer_auth(token)
        .header("idempotency-key", Uuid::new_v4().to_string())
        .json(&order)
        .send()
        .await?;
    anyhow::ensure!(answer.status() == 202, "place answered {}", answer.status());
    let body: Value = answer.json().await?;
    Ok(body["id"].as_str().context("the order id")?.parse()?)
}

/// An admin page with `cookies`; answers its HTML and the cookies it set.
async fn admin_get(dev: &Dev, path: &str, cookies: &str) -> anyhow::Result<(String, String)> {
    let res = dev
        .http
        .get(format!("{}{path}", dev.url))
        .header("cookie", cookies)
        .send()
        .await?;
    anyhow::ensure!(res.status() == 200, "{path}: {}", res.status());
    let set = set_cookies(&res);
    Ok((res.text().await?, set))
}

/// The `name=value` of every cookie a response sets, as a `Cookie` header.
fn set_cookies(res: &reqwest::Response) -> String {
    res.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok()?.split(';').next().map(str::to_owned))
        .collect::<Vec<_>>()
        .join("; ")
}

fn data_dir() -> PathBuf {
    std::env::temp_dir().join(format!("orderflow-dev-test-{}", Uuid::new_v4()))
}

async fn count(db: &Path, sql: &str) -> anyhow::Result<i64> {
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display())).await?;
    let n = sqlx::query_scalar(sql).fetch_one(&pool).await?;
    pool.close().await;
    Ok(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_curl_the_banner_prints_places_an_order_that_completes() -> anyhow::Result<()> {
    let dir = data_dir();
    let dev = Dev::start(&dir).await?;
    let out = Command::new("sh").arg("-c").arg(&dev.curl).output().await?;
    anyhow::ensure!(out.status.success(), "curl failed: {out:?}");
    let placed: Value = serde_json::from_slice(&out.stdout)
        .with_context(|| String::from_utf8_lossy(&out.stdout).into_owned())?;
    let id: Uuid = placed["id"].as_str().context("order id")?.parse()?;

    let order = dev.settled(id).await?;
    assert_eq!(order["saga_status"], "completed", "{order}");
    assert_eq!(order["status"], "confirmed", "{order}");
    let workflow = order["workflow_id"].as_str().context("the saga's id")?;
    let history = dev
        .get(&format!("/api/v1/workflows/{workflow}/history"))
        .await?;
    let completed = history["events"]
        .as_array()
        .context("history")?
        .iter()
        .filter(|e| e.to_string().contains("activity_completed"))
        .count();
    assert_eq!(completed, 4, "one result per step: {history}");
    assert_eq!(
        dev.stock().await?,
        SKU_STOCK - 2,
        "the curl orders two cups"
    );
    let emails = dev.emails().await?;
    assert_eq!(emails.len(), 1, "{emails:?}");
    assert_eq!(emails[0]["to"], DEMO_EMAIL);
    let payment = dev.get("/api/v1/payments").await;
    assert!(payment.is_err(), "a customer may not list payments");

    // The admin UI: the operator logs in and finds the saga.
    let (page, cookies) = admin_get(&dev, "/admin/login", "").await?;
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .context("the login form's CSRF token")?;
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let logged_in = no_redirects
        .post(format!("{}/admin/login", dev.url))
        .header("cookie", &cookies)
        .form(&[
            ("csrf", csrf),
            ("username", "admin"),
            ("password", "orderflow-dev"),
        ])
        .send()
        .await?;
    assert!(
        logged_in.status().is_redirection(),
        "{}",
        logged_in.status()
    );
    let session = set_cookies(&logged_in);
    let (list, _) = admin_get(&dev, "/admin/workflows", &session).await?;
    assert!(list.contains(workflow), "the saga is listed: {list}");
    let (emails, _) = admin_get(&dev, "/admin/emails", &session).await?;
    assert!(
        emails.contains(DEMO_EMAIL) && emails.contains("is confirmed"),
        "the confirmation is on the Emails page: {emails}"
    );
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_memory_it_works_and_writes_no_file() -> anyhow::Result<()> {
    let cwd = data_dir();
    std::fs::create_dir_all(&cwd)?;
    let dev = Dev::start_with(&["--memory"], &cwd).await?;
    let first = dev.place("pm_card_visa").await?;
    let second = dev.place("pm_card_chargeDeclined").await?;
    assert_eq!(dev.settled(first).await?["saga_status"], "completed");
    assert_eq!(dev.settled(second).await?["saga_status"], "compensated");
    assert_eq!(dev.stock().await?, SKU_STOCK - 1);
    let written: Vec<_> = std::fs::read_dir(&cwd)?.collect();
    assert!(written.is_empty(), "--memory wrote {written:?}");
    std::fs::remove_dir_all(&cwd).ok();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_card_compensates_and_bad_input_is_a_problem() -> anyhow::Result<()> {
    let dir = data_dir();
    let dev = Dev::start(&dir).await?;
    let id = dev.place("pm_card_chargeDeclined").await?;
    let order = dev.settled(id).await?;
    assert_eq!(order["saga_status"], "compensated", "{order}");
    assert_eq!(order["status"], "cancelled", "{order}");
    assert_eq!(order["cancellation"]["code"], "payment_declined", "{order}");
    assert_eq!(
        dev.stock().await?,
        SKU_STOCK,
        "the reservation was released"
    );
    assert!(dev.emails().await?.is_empty(), "no confirmation");

    let orders = format!("{}/api/v1/orders", dev.url);
    let workflows = format!("{}/api/v1/workflows", dev.url);
    for (url, body, field) in [
        (&orders, "{not json", "body"),
        (
            &orders,
            r#"{"items": [], "payment_method": "pm_card_visa"}"#,
            "shipping_address",
        ),
        (
            &orders,
            r#"{"items": [], "payment_method": "pm_card_visa", "shipping_address":
                {"name": "A", "line1": "B", "city": "C", "postal_code": "1", "country": "DE"}}"#,
            "items",
        ),
        (&workflows, "{not json", "body"),
        (&workflows, r#"{"input": {}}"#, "type"),
        (
            &workflows,
            r#"{"type": "order", "input": {"order_id": 1}}"#,
            "input",
        ),
        (
            &workflows,
            r#"{"type": "order", "input": {}, "colour": "red"}"#,
            "colour",
        ),
    ] {
        let answer = dev
            .http
            .post(url)
            .bearer_auth(dev.token_for(url))
            .header("idempotency-key", Uuid::new_v4().to_string())
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
        assert!((400..500).contains(&status), "{url} {body}: {status}");
        assert_eq!(kind, "application/problem+json", "{url} {body}");
        assert_eq!(problem["field"], field, "{url} {body}: {problem}");
    }
    let anonymous = dev.http.post(&orders).json(&json!({})).send().await?;
    assert_eq!(anonymous.status(), 401, "ordering needs a login");
    // The engine API takes the printed operator token, not a customer's, nor none.
    let as_customer = dev
        .http
        .get(&workflows)
        .bearer_auth(&dev.token)
        .send()
        .await?;
    assert_eq!(as_customer.status(), 403, "a customer may not list sagas");
    let anonymous = dev.http.get(&workflows).send().await?;
    assert_eq!(anonymous.status(), 401, "the engine API needs a token");
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}

/// SIGKILL while orders are placed and their sagas run; the same data directory, restarted,
/// finishes every saga with each effect once: stock taken once per order, one Stripe charge and
/// one email each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_and_interrupted_sagas_survive_a_sigkill() -> anyhow::Result<()> {
    let dir = data_dir();
    let mut dev = Dev::start(&dir).await?;
    // 16 customers order without pause; the kill lands while their sagas run.
    let placed = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut placing = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let (url, http, token, placed) = (
            dev.url.clone(),
            dev.http.clone(),
            dev.token.clone(),
            placed.clone(),
        );
        placing.spawn(async move {
            while let Ok(id) = place(&http, &url, &token, "pm_card_visa").await {
                placed.lock().expect("ids").push(id);
            }
        });
    }
    eventually(SETTLE, "30 orders placed", || async {
        Ok((placed.lock().expect("ids").len() >= 30).then_some(()))
    })
    .await?;
    dev.child.kill().await?;
    placing.shutdown().await;
    // What the kill interrupted, read from the engine's and the order service's own files.
    let running = count(
        &dir.join("engine.db"),
        "select count(*) from workflows where status = 'running'",
    )
    .await?;
    let pending = count(
        &dir.join("order.db"),
        "select count(*) from orders where status = 'pending'",
    )
    .await?;
    let ids = placed.lock().expect("ids").clone();
    println!(
        "{running} sagas running and {pending} orders pending at the kill; {} answered",
        ids.len()
    );
    assert!(running + pending > 0, "the kill interrupted nothing");

    let dev = Dev::start(&dir).await?;
    for id in &ids {
        let order = dev.settled(*id).await?;
        assert_eq!(order["status"], "confirmed", "order {id}: {order}");
    }
    // An order whose answer the kill cut off is an order too: count them all from its file.
    let total = count(&dir.join("order.db"), "select count(*) from orders").await?;
    eventually(SETTLE, "every order confirmed", || async {
        let confirmed = count(
            &dir.join("order.db"),
            "select count(*) from orders where status = 'confirmed'",
        )
        .await?;
        Ok((confirmed == total).then_some(()))
    })
    .await?;
    assert!(total >= ids.len() as i64);
    let sagas = count(&dir.join("engine.db"), "select count(*) from workflows").await?;
    assert_eq!(sagas, total, "one saga per order");
    assert_eq!(dev.stock().await?, SKU_STOCK - total);
    eventually(SETTLE, "one email per order", || async {
        Ok((dev.emails().await?.len() as i64 == total).then_some(()))
    })
    .await?;
    // The Stripe sandbox kept its books through the kill too: one charge per order, although
    // some charges were interrupted and ran again after the restart.
    let stripe: Value = serde_json::from_slice(&std::fs::read(dir.join("stripe.json"))?)?;
    let charges = stripe["ledger"]["charges"].as_array().map_or(0, Vec::len);
    assert_eq!(charges as i64, total, "one Stripe charge per order");
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}
