//! The webhook log's retention on both backends: events received before the cutoff go, later
//! ones stay; payments are not touched.

use chrono::{Duration, Utc};
use orderflow_payment::{
    migrations, purge,
    store::{self, StripeEvent},
};
use orderflow_service_kit::db::{self, Db};
use serde_json::json;

async fn retention_purges_webhook_events(db: Db) -> anyhow::Result<()> {
    for id in ["evt_1", "evt_2", "evt_3"] {
        let event = StripeEvent {
            id,
            kind: "payment_intent.succeeded",
            payment_intent_id: Some("pi_1"),
            payload: json!({ "id": id }),
        };
        assert!(store::record_event(&db, &event).await?);
    }
    let none = purge::purge(&db, Utc::now() - Duration::hours(1)).await?;
    assert_eq!(none, vec![("stripe_events", 0)]);
    assert_eq!(store::events_of(&db, "pi_1").await?.len(), 3);

    let done = purge::purge(&db, Utc::now() + Duration::hours(1)).await?;
    assert_eq!(done, vec![("stripe_events", 3)]);
    assert!(store::events_of(&db, "pi_1").await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn retention_purges_webhook_events_postgres() -> anyhow::Result<()> {
    let name = format!("orderflow_payment_test_{}", uuid::Uuid::new_v4().simple());
    let url = db::with_database(&orderflow_testkit::pg_server(), &name)?;
    let pool = db::connect_and_migrate(&url, &migrations().postgres).await?;
    retention_purges_webhook_events(Db::Postgres(pool)).await
}

#[tokio::test]
async fn retention_purges_webhook_events_sqlite() -> anyhow::Result<()> {
    retention_purges_webhook_events(Db::sqlite(None, &migrations()).await?).await
}
