//! One batch in one statement: the workflows it creates, the snapshots it updates (each guarded
//! by its history sequence), their history events, outbox rows and timers, and the deletes of
//! confirmed outbox rows. The tables must change together (DESIGN.md §3.1), and one statement of
//! data-modifying CTEs is one round trip and one commit for the whole batch, whatever its size.
//!
//! The creates and the guarded updates return the ids they wrote; every other part keeps only
//! the rows of those workflows, so a workflow whose key was taken or whose sequence moved writes
//! nothing at all. All parts see the same snapshot, so none sees another's rows: that is why a
//! [`Change`] never both creates and deletes one timer.
//!
//! JSON travels as text (`text[]` cast to `jsonb` in SQL): the engine serializes straight to
//! strings and Postgres parses them once.

use std::sync::LazyLock;

use sqlx::{PgConnection, Row};
use uuid::Uuid;

use crate::store::change::{Change, Written};

/// Writes `change` in one statement (the caller's implicit transaction) and answers what went
/// in.
pub async fn write(conn: &mut PgConnection, change: &Change) -> sqlx::Result<Written> {
    if change.is_empty() {
        return Ok(Written::default());
    }
    let q = sqlx::query(&WRITE_SQL);
    let q = bind_creates(change, q);
    let q = bind_updates(change, q);
    let q = bind_history(change, q);
    let q = bind_outbox(change, q);
    let q = bind_timers(change, q);
    let (cancelled, of): (Vec<Uuid>, Vec<Uuid>) = change.cancelled().unzip();
    let q = q
        .bind(cancelled)
        .bind(of)
        .bind(&change.published)
        .bind(&change.orphan_timers);
    let row = q.fetch_one(conn).await?;
    let created: Vec<Uuid> = row.try_get(0)?;
    let updated: Vec<Uuid> = row.try_get(1)?;
    Ok(Written {
        created: created.into_iter().collect(),
        updated: updated.into_iter().collect(),
    })
}

type Query<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

fn bind_creates<'q>(change: &'q Change, q: Query<'q>) -> Query<'q> {
    let c = &change.creates;
    q.bind(c.iter().map(|r| r.id).collect::<Vec<_>>())
        .bind(
            c.iter()
                .map(|r| r.workflow_type.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(c.iter().map(|r| r.version).collect::<Vec<_>>())
        .bind(c.iter().map(|r| r.status.as_str()).collect::<Vec<_>>())
        .bind(c.iter().map(|r| r.reason.as_deref()).collect::<Vec<_>>())
        .bind(c.iter().map(|r| r.state.as_str()).collect::<Vec<_>>())
        .bind(c.iter().map(|r| r.last_seq).collect::<Vec<_>>())
        .bind(
            c.iter()
                .map(|r| r.business_keys.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            c.iter()
                .map(|r| r.idempotency_key.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(
            c.iter()
                .map(|r| r.request_hash.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(c.iter().map(|r| r.at).collect::<Vec<_>>())
        .bind(c.iter().map(|r| r.fingerprint.as_str()).collect::<Vec<_>>())
}

fn bind_updates<'q>(change: &'q Change, q: Query<'q>) -> Query<'q> {
    let u = &change.updates;
    q.bind(u.iter().map(|r| r.id).collect::<Vec<_>>())
        .bind(u.iter().map(|r| r.status.as_str()).collect::<Vec<_>>())
        .bind(u.iter().map(|r| r.reason.as_deref()).collect::<Vec<_>>())
        .bind(u.iter().map(|r| r.state.as_str()).collect::<Vec<_>>())
        .bind(u.iter().map(|r| r.last_seq).collect::<Vec<_>>())
        .bind(u.iter().map(|r| r.prev_seq).collect::<Vec<_>>())
        .bind(u.iter().map(|r| r.at).collect::<Vec<_>>())
        .bind(
            u.iter()
                .map(|r| r.fingerprint.as_deref())
                .collect::<Vec<_>>(),
        )
}

fn bind_history<'q>(change: &'q Change, q: Query<'q>) -> Query<'q> {
    let h = &change.history;
    q.bind(h.iter().map(|r| r.workflow_id).collect::<Vec<_>>())
        .bind(h.iter().map(|r| r.seq).collect::<Vec<_>>())
        .bind(h.iter().map(|r| r.at).collect::<Vec<_>>())
        .bind(h.iter().map(|r| r.event.as_str()).collect::<Vec<_>>())
        .bind(h.iter().map(|r| r.commands.as_str()).collect::<Vec<_>>())
        .bind(h.iter().map(|r| r.ignored.as_deref()).collect::<Vec<_>>())
}

fn bind_outbox<'q>(change: &'q Change, q: Query<'q>) -> Query<'q> {
    let o = &change.outbox;
    q.bind(o.iter().map(|r| r.workflow_id).collect::<Vec<_>>())
        .bind(o.iter().map(|r| r.task_id).collect::<Vec<_>>())
        .bind(o.iter().map(|r| r.exchange.as_str()).collect::<Vec<_>>())
        .bind(o.iter().map(|r| r.queue.as_str()).collect::<Vec<_>>())
        .bind(o.iter().map(|r| r.body.as_str()).collect::<Vec<_>>())
}

fn bind_timers<'q>(change: &'q Change, q: Query<'q>) -> Query<'q> {
    let t = change.timers();
    q.bind(t.iter().map(|r| r.id).collect::<Vec<_>>())
        .bind(t.iter().map(|r| r.workflow_id).collect::<Vec<_>>())
        .bind(t.iter().map(|r| r.fire_at).collect::<Vec<_>>())
        .bind(t.iter().map(|r| r.purpose.as_str()).collect::<Vec<_>>())
}

/// Built once: sqlx prepares each distinct text once per connection.
static WRITE_SQL: LazyLock<String> = LazyLock::new(|| {
    "with ins as (
         insert into workflows (id, workflow_type, version, status, reason, state, last_seq,
                                business_keys, business_key_values, idempotency_key,
                                request_hash, created_at, updated_at, definition_fingerprint)
         select c.id, c.t, c.v, c.s, c.r, c.st::jsonb, c.seq, c.bk::jsonb,
                array(select value from jsonb_each_text(c.bk::jsonb)), c.key, c.hash, c.at, c.at,
                c.fp
         from unnest($1::uuid[], $2::text[], $3::int4[], $4::text[], $5::text[], $6::text[],
                     $7::int8[], $8::text[], $9::text[], $10::text[], $11::timestamptz[],
                     $12::text[]) as c(id, t, v, s, r, st, seq, bk, key, hash, at, fp)
         on conflict (idempotency_key) do nothing
         returning id),
     upd as (
         update workflows w set status = u.s, reason = u.r, state = u.st::jsonb,
                                last_seq = u.seq, updated_at = u.at,
                                definition_fingerprint = coalesce(u.fp, w.definition_fingerprint)
         from unnest($13::uuid[], $14::text[], $15::text[], $16::text[], $17::int8[],
                     $18::int8[], $19::timestamptz[], $20::text[])
              as u(id, s, r, st, seq, prev, at, fp)
         where w.id = u.id and w.last_seq = u.prev
         returning w.id),
     done as (select id from ins union all select id from upd),
     hist as (
         insert into history (workflow_id, seq, at, event, commands, ignored)
         select h.id, h.seq, h.at, h.ev::jsonb, h.cmd::jsonb, h.ign
         from unnest($21::uuid[], $22::int8[], $23::timestamptz[], $24::text[], $25::text[],
                     $26::text[]) as h(id, seq, at, ev, cmd, ign)
         where h.id in (select id from done)),
     ob as (
         insert into outbox (workflow_id, task_id, exchange, queue, body)
         select o.wf, o.task, o.ex, o.q, o.body::jsonb
         from unnest($27::uuid[], $28::uuid[], $29::text[], $30::text[], $31::text[])
              as o(wf, task, ex, q, body)
         where o.wf in (select id from done)),
     tins as (
         insert into timers (id, workflow_id, fire_at, purpose)
         select t.id, t.wf, t.at, t.purpose::jsonb
         from unnest($32::uuid[], $33::uuid[], $34::timestamptz[], $35::text[])
              as t(id, wf, at, purpose)
         where t.wf in (select id from done)
         on conflict (id) do nothing),
     tdel as (
         delete from timers t using unnest($36::uuid[], $37::uuid[]) as c(id, wf)
         where t.id = c.id and c.wf in (select id from done)),
     odel as (delete from outbox where task_id = any($38::uuid[])),
     orph as (delete from timers where id = any($39::uuid[]))
     select coalesce((select array_agg(id) from ins), '{}'::uuid[]),
            coalesce((select array_agg(id) from upd), '{}'::uuid[])"
        .to_owned()
});
