//! [`RetentionStore`] on Postgres. Each transaction is short and touches only finished workflows:
//! the claim locks its candidates with `FOR UPDATE SKIP LOCKED` (a row the committer is writing
//! is skipped, never waited on) for the length of one insert; the delete locks the workflow rows
//! first, in the same order as the committer's statement (workflow, then history and timers),
//! so neither waits on the other for more than one batch's delete.

use chrono::{DateTime, Utc};
use orderflow_core::RecordedEvent;
use sqlx::{PgPool, Postgres, QueryBuilder, Row};
use uuid::Uuid;

use super::{history, workflows::COLUMNS};
use crate::store::{
    WorkflowRow,
    reads::v7_floor,
    retention::{ArchivedAt, Batch, FINISHED, RetentionStore, Selection, Types, object_key},
};

/// `and <the selection>` over `workflows w`. The id bound is what the index walks: a workflow
/// finished before the cutoff was created (and its UUIDv7 minted) before it too.
fn push_selection(q: &mut QueryBuilder<'_, Postgres>, sel: &Selection) {
    q.push(" and w.id < ").push_bind(v7_floor(
        sel.finished_before + chrono::Duration::milliseconds(1),
    ));
    q.push(" and w.status = any(")
        .push_bind(FINISHED.map(str::to_owned).to_vec())
        .push(")");
    q.push(" and w.updated_at < ")
        .push_bind(sel.finished_before);
    match &sel.types {
        Types::Only(t) => {
            q.push(" and w.workflow_type = ").push_bind(t.clone());
        }
        Types::AllBut(ts) if ts.is_empty() => {}
        Types::AllBut(ts) => {
            q.push(" and w.workflow_type <> all(")
                .push_bind(ts.clone())
                .push(")");
        }
    }
}

impl RetentionStore for PgPool {
    async fn claim(&self, sel: &Selection, limit: i64) -> sqlx::Result<Option<Batch>> {
        let mut tx = self.begin().await?;
        let (id, at): (i64, DateTime<Utc>) = sqlx::query_as(
            "insert into archive_batches (object_key) values ('') returning id, claimed_at",
        )
        .fetch_one(&mut *tx)
        .await?;
        let mut q = QueryBuilder::new(
            "with c as (select w.id, w.workflow_type from workflows w where true",
        );
        push_selection(&mut q, sel);
        q.push(" order by w.id limit ")
            .push_bind(limit)
            .push(" for update of w skip locked) ")
            .push(
                "insert into archived_workflows (workflow_id, batch_id, workflow_type)
                 select c.id, ",
            )
            .push_bind(id)
            .push(
                ", c.workflow_type from c on conflict (workflow_id) do nothing
                 returning workflow_id",
            );
        let mut ids: Vec<Uuid> = q.build_query_scalar().fetch_all(&mut *tx).await?;
        if ids.is_empty() {
            tx.rollback().await?;
            return Ok(None);
        }
        ids.sort_unstable();
        let key = object_key(id, at);
        sqlx::query("update archive_batches set object_key = $1 where id = $2")
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
        let rows = sqlx::query(
            "select b.id, b.object_key,
                    coalesce(array_agg(a.workflow_id order by a.workflow_id)
                             filter (where a.workflow_id is not null), '{}') as ids
             from archive_batches b left join archived_workflows a on a.batch_id = b.id
             where b.archived_at is null group by b.id order by b.id",
        )
        .fetch_all(self)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Batch {
                    id: r.try_get("id")?,
                    object_key: r.try_get("object_key")?,
                    ids: r.try_get("ids")?,
                })
            })
            .collect()
    }

    async fn read(&self, ids: &[Uuid]) -> sqlx::Result<Vec<(WorkflowRow, Vec<RecordedEvent>)>> {
        let mut conn = self.acquire().await?;
        let rows: Vec<WorkflowRow> = sqlx::query_as(&format!(
            "select {COLUMNS} from workflows where id = any($1) order by id"
        ))
        .bind(ids)
        .fetch_all(&mut *conn)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let events = history::load(&mut conn, row.id).await?;
            out.push((row, events));
        }
        Ok(out)
    }

    async fn finish(&self, batch: i64, written: &[(Uuid, i64)]) -> sqlx::Result<bool> {
        let (ids, seqs): (Vec<Uuid>, Vec<i64>) = written.iter().copied().unzip();
        let mut tx = self.begin().await?;
        let deleted = sqlx::query(
            "delete from workflows w using unnest($1::uuid[], $2::int8[]) as a(id, seq)
             where w.id = a.id and w.last_seq = a.seq",
        )
        .bind(&ids)
        .bind(&seqs)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if deleted != written.len() as u64 {
            // One moved since it was read (a late result recorded as ignored): the object lacks
            // its newest event. Keep everything; the caller writes the object again.
            tx.rollback().await?;
            return Ok(false);
        }
        sqlx::query("delete from history where workflow_id = any($1)")
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
        sqlx::query("delete from timers where workflow_id = any($1)")
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "delete from archived_workflows where batch_id = $1 and workflow_id <> all($2)",
        )
        .bind(batch)
        .bind(&ids)
        .execute(&mut *tx)
        .await?;
        sqlx::query("update archive_batches set archived_at = now() where id = $1")
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
        q.build_query_scalar().fetch_optional(self).await
    }
}

/// Where an id the database no longer holds went (see [`crate::store::Reads::archived`]).
pub async fn archived(pool: &PgPool, id: Uuid) -> sqlx::Result<Option<ArchivedAt>> {
    sqlx::query_as(
        "select a.workflow_type, b.object_key, b.archived_at
         from archived_workflows a join archive_batches b on b.id = a.batch_id
         where a.workflow_id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await
}
