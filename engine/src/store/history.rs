//! `history`: the append-only events of each workflow, with the commands each produced.

use chrono::{DateTime, Utc};
use orderflow_core::RecordedEvent;
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

/// One event to append.
#[derive(Debug, Clone)]
pub struct HistoryRow {
    pub workflow_id: Uuid,
    pub seq: i64,
    pub at: DateTime<Utc>,
    pub event: Value,
    pub commands: Value,
    pub ignored: Option<String>,
}

pub async fn insert_many(conn: &mut PgConnection, rows: &[HistoryRow]) -> sqlx::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut ids = Vec::with_capacity(rows.len());
    let mut seqs = Vec::with_capacity(rows.len());
    let mut ats = Vec::with_capacity(rows.len());
    let mut events = Vec::with_capacity(rows.len());
    let mut commands = Vec::with_capacity(rows.len());
    let mut ignored = Vec::with_capacity(rows.len());
    for r in rows {
        ids.push(r.workflow_id);
        seqs.push(r.seq);
        ats.push(r.at);
        events.push(r.event.clone());
        commands.push(r.commands.clone());
        ignored.push(r.ignored.clone());
    }
    sqlx::query(
        "insert into history (workflow_id, seq, at, event, commands, ignored)
         select * from unnest($1::uuid[], $2::int8[], $3::timestamptz[], $4::jsonb[], $5::jsonb[], $6::text[])",
    )
    .bind(ids)
    .bind(seqs)
    .bind(ats)
    .bind(events)
    .bind(commands)
    .bind(ignored)
    .execute(conn)
    .await?;
    Ok(())
}

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
