//! The notification log's retention on both backends: sent and failed messages past the cutoff
//! go with their attempts and outbox records; pending ones and recent ones stay.

use chrono::{Duration, Utc};
use orderflow_notification::{
    migrations,
    model::Channel,
    purge,
    store::{self, AttemptOutcome, Claimed, NewNotification},
};
use orderflow_service_kit::db::Db;
use serde_json::json;

async fn logged(db: &Db, key: &str, outcome: Option<AttemptOutcome>) -> anyhow::Result<uuid::Uuid> {
    let new = NewNotification {
        idempotency_key: key,
        workflow_id: None,
        channel: Channel::Email,
        template: "order_confirmation",
        recipient: "ada@example.com",
        subject: "Your order",
        body: "Thanks",
        body_html: None,
        provider: "outbox",
    };
    let Claimed::Held(claim) = store::claim(db, &new).await? else {
        anyhow::bail!("a new message is held for its delivery");
    };
    let id = claim.notification().id;
    if let Some(outcome) = outcome {
        store::record_outbox(db, id, Channel::Email, "ada@example.com", "raw message").await?;
        claim
            .record_attempt("outbox", outcome, None, None, &json!({}))
            .await?;
    }
    Ok(id)
}

async fn retention_purges_the_log(db: Db) -> anyhow::Result<()> {
    let sent = logged(&db, "k-sent", Some(AttemptOutcome::Sent)).await?;
    let failed = logged(&db, "k-failed", Some(AttemptOutcome::PermanentFailure)).await?;
    let pending = logged(&db, "k-pending", None).await?;

    // Nothing is older than a cutoff an hour ago.
    let none = purge::purge(&db, Utc::now() - Duration::hours(1)).await?;
    assert!(none.iter().all(|(_, n)| *n == 0), "{none:?}");

    let done = purge::purge(&db, Utc::now() + Duration::hours(1)).await?;
    assert_eq!(
        done,
        vec![
            ("notifications", 2),
            ("notification_attempts", 2),
            ("outbox_messages", 2)
        ]
    );
    assert!(store::get(&db, sent).await?.is_none());
    assert!(store::get(&db, failed).await?.is_none());
    assert!(store::attempts(&db, sent).await?.is_empty());
    assert!(store::get(&db, pending).await?.is_some(), "pending stays");
    Ok(())
}

#[tokio::test]
async fn retention_purges_the_log_postgres() -> anyhow::Result<()> {
    let pool = orderflow_service_testkit::fresh_db("notification", &migrations().postgres).await?;
    retention_purges_the_log(Db::Postgres(pool)).await
}

#[tokio::test]
async fn retention_purges_the_log_sqlite() -> anyhow::Result<()> {
    retention_purges_the_log(Db::sqlite(None, &migrations()).await?).await
}
