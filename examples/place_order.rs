//! Places an order saga through the REST API of a running `orderflow up` and follows it until it
//! settles, printing each step's state as it changes.
//!
//! ```sh
//! cargo run --release -- up &
//! cargo run --example place_order -- http://localhost:8080
//! ```

use std::time::Duration;

use serde_json::{Value, json};
use uuid::Uuid;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let base = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "http://localhost:8080".into());
    let http = reqwest::Client::new();
    let order_id = Uuid::now_v7();
    let body = json!({
        "type": "order",
        "business_keys": { "order_id": order_id.to_string() },
        "input": {
            "order_id": order_id,
            "user_id": Uuid::now_v7(),
            "items": [{ "product_id": "sku-1", "quantity": 2 }],
            "total": { "amount_minor": 2599, "currency": "EUR" },
            "payment_method": "pm_card_visa",
            "email": "buyer@example.com"
        }
    });
    let res = http
        .post(format!("{base}/api/v1/workflows"))
        .header("Idempotency-Key", format!("order-{order_id}"))
        .json(&body)
        .send()
        .await?;
    let status = res.status();
    let started: Value = res.json().await?;
    anyhow::ensure!(status.is_success(), "start refused ({status}): {started}");
    let id = started["id"].as_str().unwrap_or_default().to_owned();
    println!("started workflow {id}");
    let mut last = String::new();
    for _ in 0..600 {
        let wf: Value = http
            .get(format!("{base}/api/v1/workflows/{id}"))
            .send()
            .await?
            .json()
            .await?;
        let line = wf["steps"]
            .as_array()
            .map(|steps| {
                steps
                    .iter()
                    .map(|s| {
                        format!(
                            "{}={}",
                            s["name"].as_str().unwrap_or("?"),
                            s["status"].as_str().unwrap_or("?")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        let line = format!("{}: {line}", wf["status"].as_str().unwrap_or("?"));
        if line != last {
            println!("{line}");
            last = line;
        }
        if !matches!(wf["status"].as_str(), Some("running" | "compensating")) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("workflow {id} did not settle within a minute")
}
