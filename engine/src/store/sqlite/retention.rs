//! [`RetentionStore`] on SQLite: the same protocol as Postgres, each step one `BEGIN IMMEDIATE`
//! transaction (SQLite's one writer is the lock; a batch holds it for one batch's statements).

use chrono::{DateTime, Utc};
use orderflow_core::RecordedEvent;
use sqlx::{QueryBuilder, Row, Sqlite};
use uuid::Uuid;

use super::{
    SqliteStore, WORKFLOW_COLUMNS, from_micros, load_history, micros, push_ids, workflow_row,
};
use crate::store::{
    WorkflowRow,
    reads::v7_floor,
    retention::{ArchivedAt, Batch, FINISHED, RetentionStore, Selection, Types, object_key},
};

/// `and <the selection>` over `workflows w` (see the Postgres adapter for the id bound).
fn push_selection(q: &mut QueryBuilder<'_, Sqlite>, sel: &Selection) {
    q.push(" and w.id < ").push_bind(v7_floor(
        sel.finished_before + chrono::Duration::milliseconds(1),
    ));
    q.push(" and w.status in (");
    let mut list = q.separated(", ");
    for s in FINISHED {
        list.push_bind(s);
    }
    q.push(") and w.updated_at < ")
        .push_bind(micros(sel.finished_before));
    match &sel.types {
        Types::Only(t) => {
            q.push(" and w.workflow_type = ").push_bind(t.clone());
        }
        Types::AllBut(ts) if ts.is_empty() => {}
        Types::AllBut(ts) => {
            q.push(" and w.workflow_type not in (");
            let mut list = q.separated(", ");
            for t in ts {
                list.push_bind(t.clone());
            }
            q.push(")");
        }
    }
}

impl RetentionStore for SqliteStore {
    async fn claim(&self, sel: &Selection, limit: i64) -> sqlx::Result<Option<Batch>> {
        let mut tx = self.pool().begin_with("BEGIN IMMEDIATE").await?;
        let now = Utc::now();
        let id: i64 = sqlx::query_scalar(
            "insert into archive_batches (object_key, claimed_at) values ('', ?) returning id",
        )
        .bind(micros(now))
        .fetch_one(&mut *tx)
        .await?;
        let mut q = QueryBuilder::new(
            "insert into archived_workflows (workflow_id, batch_id, workflow_type)
             select w.id, ",
        );
        q.push_bind(id)
            .push(", w.workflow_type from workflows w where true");
        push_selection(&mut q, sel);
        q.push(
            " and not exists (select 1 from archived_workflows a where a.workflow_id = w.id)
             order by w.id limit ",
        )
        .push_bind(limit)
        .push(" returning workflow_id");
        let mut ids: Vec<Uuid> = q.build_query_scalar().fetch_all(&mut *tx).await?;
        if ids.is_empty() {
            tx.rollback().await?;
            return Ok(None);
        }
        ids.sort_unstable();
        let key = object_key(id, from_micros(micros(now)));
        sqlx::query("update archive_batches set object_key = ? where id = ?")
            .bind(&key)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(Batch {
            id,
            object_key: key,
            ids,
        }))
    }

    async fn pending(&self) -> sqlx::Result<Vec<Batch>> {
        let batches: Vec<(i64, String)> = sqlx::query_as(
            "select id, object_key from archive_batches where archived_at is null order by id",
        )
        .fetch_all(self.pool())
        .await?;
        let mut out = Vec::with_capacity(batches.len());
        for (id, object_key) in batches {
            let ids: Vec<Uuid> = sqlx::query_scalar(
                "select workflow_id from archived_workflows where batch_id = ? order by workflow_id",
            )
            .bind(id)
            .fetch_all(self.pool())
            .await?;
            out.push(Batch {
                id,
                object_key,
                ids,
            });
        }
        Ok(out)
    }

    async fn read(&self, ids: &[Uuid]) -> sqlx::Result<Vec<(WorkflowRow, Vec<RecordedEvent>)>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.pool().acquire().await?;
        let mut q = QueryBuilder::new(format!(
            "select {WORKFLOW_COLUMNS} from workflows where id in "
        ));
        push_ids(&mut q, ids);
        q.push(" order by id");
        let rows = q.build().fetch_all(&mut *conn).await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let row = workflow_row(r)?;
            let events = load_history(&mut conn, row.id).await?;
            out.push((row, events));
        }
        Ok(out)
    }

    async fn finish(&self, batch: i64, written: &[(Uuid, i64)]) -> sqlx::Result<bool> {
        let ids: Vec<Uuid> = written.iter().map(|(id, _)| *id).collect();
        let mut tx = self.pool().begin_with("BEGIN IMMEDIATE").await?;
        if !ids.is_empty() {
            // History first: it references the workflow row.
            let mut q = QueryBuilder::new("delete from history where workflow_id in ");
            push_ids(&mut q, &ids);
            q.build().execute(&mut *tx).await?;
            let mut q = QueryBuilder::new("delete from timers where workflow_id in ");
            push_ids(&mut q, &ids);
            q.build().execute(&mut *tx).await?;
            for (id, seq) in written {
                let deleted = sqlx::query("delete from workflows where id = ? and last_seq = ?")
                    .bind(id)
                    .bind(seq)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if deleted != 1 {
                    // Moved since it was read: keep everything, the caller writes again.
                    tx.rollback().await?;
                    return Ok(false);
                }
            }
        }
        let mut q = QueryBuilder::new("delete from archived_workflows where batch_id = ");
        q.push_bind(batch);
        if !ids.is_empty() {
            q.push(" and workflow_id not in ");
            push_ids(&mut q, &ids);
        }
        q.build().execute(&mut *tx).await?;
        sqlx::query("update archive_batches set archived_at = ? where id = ?")
            .bind(micros(Utc::now()))
            .bind(batch)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn oldest_due(&self, sel: &Selection) -> sqlx::Result<Option<DateTime<Utc>>> {
        let mut q = QueryBuilder::new("select w.updated_at from workflows w where true");
        push_selection(&mut q, sel);
        q.push(" order by w.id limit 1");
        let at: Option<i64> = q.build_query_scalar().fetch_optional(self.pool()).await?;
        Ok(at.map(from_micros))
    }
}

/// Where an id the database no longer holds went (see [`crate::store::Reads::archived`]).
pub async fn archived(store: &SqliteStore, id: Uuid) -> sqlx::Result<Option<ArchivedAt>> {
    let row = sqlx::query(
        "select a.workflow_type, b.object_key, b.archived_at
         from archived_workflows a join archive_batches b on b.id = a.batch_id
         where a.workflow_id = ?",
    )
    .bind(id)
    .fetch_optional(store.pool())
    .await?;
    row.map(|r| {
        Ok(ArchivedAt {
            workflow_type: r.try_get("workflow_type")?,
            object_key: r.try_get("object_key")?,
            archived_at: r.try_get::<Option<i64>, _>("archived_at")?.map(from_micros),
        })
    })
    .transpose()
}
