//! The admin UI and the REST API on an id that retention archived: they say when it was
//! archived and where, instead of that it never existed. On both stores.

mod admin_common;

use std::time::Duration;

use admin_common::{Db, Setup, Ui};
use chrono::Utc;
use orderflow_engine::retention::{Archive, Policy, Retention, RetentionConfig};
use reqwest::StatusCode;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

async fn an_archived_workflow_says_archived_on_its_day(store: Db) -> anyhow::Result<()> {
    let mut ui = Ui::start(Setup {
        store,
        ..Setup::default()
    })
    .await?;
    ui.login().await?;
    let id = ui.start_order().await?;
    assert_eq!(ui.settled(id, Duration::from_secs(20)).await?, "completed");

    let dir = std::env::temp_dir().join(format!("orderflow-admin-archive-{}", Uuid::new_v4()));
    let archive = Archive::open(dir.to_str().expect("utf-8"))?;
    let later = Utc::now() + chrono::Duration::days(31);
    let (policy, config) = (Policy::default(), RetentionConfig::default());
    let archived = match &ui.sqlite {
        Some(store) => {
            Retention::new(store.clone(), archive, policy, config)
                .round(later, &CancellationToken::new())
                .await?
        }
        None => {
            Retention::new(ui.env.pool.clone(), archive, policy, config)
                .round(later, &CancellationToken::new())
                .await?
        }
    };
    assert_eq!(archived.archived, 1, "{archived:?}");

    let today = Utc::now().format("%Y-%m-%d").to_string();
    let page = ui.get(&format!("/admin/workflows/{id}")).await?;
    assert_eq!(page.status, StatusCode::NOT_FOUND);
    assert!(page.text.contains("Archived on"), "{}", page.text);
    assert!(page.text.contains(&today), "{}", page.text);
    assert!(
        page.text.contains(".jsonl.gz"),
        "the object key: {}",
        page.text
    );

    let api = ui.api_get(&format!("/api/v1/workflows/{id}")).await?;
    assert_eq!(api.status, StatusCode::NOT_FOUND);
    let detail = api.json()["detail"].as_str().unwrap_or_default().to_owned();
    assert!(detail.contains(&format!("archived on {today}")), "{detail}");

    // An id that never existed is still plain not found.
    let page = ui
        .get(&format!("/admin/workflows/{}", Uuid::now_v7()))
        .await?;
    assert_eq!(page.status, StatusCode::NOT_FOUND);
    assert!(!page.text.contains("Archived on"), "{}", page.text);
    Ok(())
}

#[tokio::test]
async fn retention_admin_postgres() -> anyhow::Result<()> {
    an_archived_workflow_says_archived_on_its_day(Db::Postgres).await
}

#[tokio::test]
async fn retention_admin_sqlite() -> anyhow::Result<()> {
    an_archived_workflow_says_archived_on_its_day(Db::Sqlite).await
}
