//! Expired sessions on the embedded database are purged; live ones stay. (On Postgres sessions
//! live in Redis, which expires them itself: the purge does nothing there.)

use chrono::{Duration, Utc};
use orderflow_service_kit::db::Db;
use orderflow_user::{migrations, purge};
use uuid::Uuid;

#[tokio::test]
async fn retention_purges_expired_sessions_sqlite() -> anyhow::Result<()> {
    let db = Db::sqlite(None, &migrations()).await?;
    let Db::Sqlite(pool) = &db else {
        unreachable!()
    };
    let now = Utc::now();
    for (hash, expires) in [
        ("expired-1", now - Duration::days(2)),
        ("expired-2", now - Duration::seconds(1)),
        ("live", now + Duration::days(1)),
    ] {
        sqlx::query("insert into sessions (token_hash, user_id, expires_at) values (?, ?, ?)")
            .bind(hash)
            .bind(Uuid::now_v7())
            .bind(expires.timestamp_micros())
            .execute(pool)
            .await?;
    }
    assert_eq!(
        purge::purge_expired_sessions(&db, now).await?,
        vec![("sessions", 2)]
    );
    let left: Vec<String> = sqlx::query_scalar("select token_hash from sessions")
        .fetch_all(pool)
        .await?;
    assert_eq!(left, vec!["live".to_owned()]);
    Ok(())
}
