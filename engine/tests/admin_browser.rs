//! The admin UI in a real headless Chromium: Debian's `chromium` driven by playwright-core
//! (`engine/tests/browser/admin.mjs`), against the engine with its admin UI on port 0 and
//! recording workers. Covers login, a failing saga under Stuck with its error, its timeline, retry
//! after the fault is removed, a bulk cancel of selected sagas, redirect without login and an
//! action without the CSRF token; screenshots go to `target/admin-screenshots/`.
//!
//! Needs `scripts/browser-setup.sh` to have installed Chromium and playwright-core; without them
//! the test fails and says so.

mod admin_common;

use std::{path::PathBuf, process::Stdio, time::Duration};

use admin_common::{PASSWORD, Setup, USER, Ui};
use anyhow::{Context, bail};

use orderflow_testkit::recording::{self, Fault};
use orderflow_testkit::{eventually, settled, start_order};
use orderflow_workflows::order::contracts::*;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    process::Command,
};
use uuid::Uuid;

const WITHIN: Duration = Duration::from_secs(20);

fn browser_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("admin-screenshots")
}

fn chromium() -> PathBuf {
    std::env::var_os("CHROMIUM").map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from)
}

/// Waits until every saga has failed its charge at least once and waits to retry it.
async fn all_retrying(ui: &Ui, ids: &[Uuid]) -> anyhow::Result<()> {
    eventually(WITHIN, "the sagas to retry the charge", || async {
        let (n,): (i64,) = sqlx::query_as(
            "select count(distinct workflow_id) from timers
             where purpose->>'purpose' = 'retry' and workflow_id = any($1)",
        )
        .bind(ids)
        .fetch_one(&ui.env.pool)
        .await?;
        Ok((n == ids.len() as i64).then_some(()))
    })
    .await
}

/// Answers one `ASK` of the browser script.
async fn answer(ui: &Ui, req: &Value) -> anyhow::Result<Value> {
    let id: Uuid = req["id"]
        .as_str()
        .context("an id")?
        .parse()
        .context("a UUID")?;
    match req["ask"].as_str() {
        Some("clear_faults") => {
            sqlx::query("delete from activity_faults where workflow_id = $1")
                .bind(id)
                .execute(&ui.env.pool)
                .await?;
            Ok(json!({ "ok": true }))
        }
        Some("settled") => Ok(json!({ "status": settled(&ui.env, id, WITHIN).await? })),
        Some("status") => Ok(json!({ "status": ui.env.status(id).await? })),
        other => bail!("unknown ask {other:?}"),
    }
}

#[tokio::test]
async fn the_admin_ui_in_a_real_browser() -> anyhow::Result<()> {
    let node_modules = browser_dir().join("node_modules/playwright-core");
    if !chromium().exists() || !node_modules.exists() {
        bail!(
            "the browser test needs {} and {}: run scripts/browser-setup.sh",
            chromium().display(),
            node_modules.display()
        );
    }
    let ui = Ui::start(Setup::default()).await?;
    let mut sagas = Vec::new();
    for _ in 0..4 {
        let id = start_order(&ui.env, &ui.applier).await?;
        recording::inject(
            &ui.env.pool,
            &Fault::transient(PAYMENT_CHARGE, "stripe_down").for_workflow(id),
        )
        .await?;
        sagas.push(id);
    }
    all_retrying(&ui, &sagas).await?;
    let (retry, bulk, keep) = (sagas[0], &sagas[1..3], sagas[3]);

    let mut child = Command::new("node")
        .arg(browser_dir().join("admin.mjs"))
        .env("ADMIN_URL", ui.url(""))
        .env("ADMIN_USER", USER)
        .env("ADMIN_PASSWORD", PASSWORD)
        .env("SCREENSHOT_DIR", screenshot_dir())
        .env("CHROMIUM", chromium())
        .env("SAGA_RETRY", retry.to_string())
        .env(
            "SAGA_BULK",
            bulk.iter()
                .map(Uuid::to_string)
                .collect::<Vec<_>>()
                .join(","),
        )
        .env("SAGA_KEEP", keep.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("starting node")?;
    let mut stdin = child.stdin.take().context("stdin")?;
    let mut out = BufReader::new(child.stdout.take().context("stdout")?).lines();
    let mut steps = Vec::new();
    let run = async {
        while let Some(line) = out.next_line().await? {
            if let Some(req) = line.strip_prefix("ASK ") {
                let req: Value = serde_json::from_str(req)?;
                let reply = answer(&ui, &req)
                    .await
                    .unwrap_or_else(|e| json!({ "error": format!("{e:#}") }));
                stdin.write_all(format!("{reply}\n").as_bytes()).await?;
                stdin.flush().await?;
            } else {
                println!("{line}");
                steps.push(line);
            }
        }
        anyhow::Ok(child.wait().await?)
    };
    let status = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .context("the browser script took over two minutes")??;
    assert!(status.success(), "the browser script failed: {status}");
    assert_eq!(
        steps.last().map(String::as_str),
        Some("browser: all steps passed")
    );

    // What the browser did is what the database holds.
    assert_eq!(ui.env.status(retry).await?, "completed");
    for id in bulk {
        assert_eq!(ui.env.status(*id).await?, "cancelled");
        let (released,): (i64,) = sqlx::query_as(
            "select count(*) from activity_effects where workflow_id = $1 and activity = $2",
        )
        .bind(id)
        .bind(INVENTORY_RELEASE)
        .fetch_one(&ui.env.pool)
        .await?;
        assert_eq!(released, 1);
    }
    assert_eq!(ui.env.status(keep).await?, "running");
    let (actor,): (String,) = sqlx::query_as(
        "select event->>'actor' from history
         where workflow_id = $1 and event->>'type' = 'retry_requested'",
    )
    .bind(retry)
    .fetch_one(&ui.env.pool)
    .await?;
    assert_eq!(actor, "admin:ops");
    for shot in ["list.png", "stuck.png", "detail.png"] {
        let path = screenshot_dir().join(shot);
        let size = std::fs::metadata(&path)
            .with_context(|| format!("{}", path.display()))?
            .len();
        assert!(size > 10_000, "{} is {size} bytes", path.display());
    }
    Ok(())
}
