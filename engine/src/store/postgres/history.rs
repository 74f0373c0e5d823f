//! `history`: the append-only events of each workflow, with the commands each produced. Events
//! are appended by [`super::change`].

use chrono::{DateTime, Utc};
use orderflow_core::RecordedEvent;
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

/// A workflow's events in order, in the replay format.
pub async fn load(conn: &mut PgConnection, workflow_id: Uuid) -> sqlx::Result<Vec<RecordedEvent>> {
    #[derive(sqlx::FromRow)]
    struct Row {
        seq: i64,
        at: DateTime<Utc>,
        event: Value,
        commands: Value,
        ignored: Option<String>,
    }
    let rows: Vec<Row> = sqlx::query_as(
        "select seq, at, event, commands, ignored from history where workflow_id = $1 order by seq",
    )
    .bind(workflow_id)
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|r| {
            Ok(RecordedEvent {
                seq: r.seq as u64,
                at: r.at,
                event: serde_json::from_value(r.event)
                    .map_err(|e| sqlx::Error::Decode(e.into()))?,
                commands: serde_json::from_value(r.commands)
                    .map_err(|e| sqlx::Error::Decode(e.into()))?,
                ignored: r.ignored,
            })
        })
        .collect()
}
