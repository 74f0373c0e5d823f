//! One state change in one statement: the new or updated workflow rows, their history events,
//! outbox rows and timers, and the wake-ups. The tables must change together (DESIGN.md §3.1),
//! and one statement with data-modifying CTEs is one round trip where a statement per table was
//! six: at the engine's batch sizes that round trip count, not the rows, was the cost.
//!
//! All CTEs of a statement see the same snapshot, so a sub-statement cannot see another's rows;
//! that is why [`Change`] never both creates and deletes one timer.
//!
//! JSON travels as text (`text[]` cast to `jsonb` in SQL): the engine serializes straight to
//! strings and Postgres parses them once, instead of the engine building `serde_json::Value`
//! trees only for the driver to print them again.

use std::sync::LazyLock;

use sqlx::PgConnection;

use crate::{
    channels,
    store::change::{Change, NewWorkflow},
};

/// Writes the change to workflows the caller has locked, in one statement. Notifications
/// are delivered by Postgres only if the transaction commits.
pub async fn write(conn: &mut PgConnection, change: &Change) -> sqlx::Result<()> {
    if change.is_empty() {
        return Ok(());
    }
    let q = sqlx::query(&WRITE_SQL);
    let q = bind_update(change, q);
    let q = bind_rest(change, q);
    q.execute(conn).await?;
    Ok(())
}

/// Creates `wf` with this change's rows (its first event) in one statement, unless its
/// idempotency key is taken: then nothing at all is written and this answers `false`.
pub async fn create(
    conn: &mut PgConnection,
    change: &Change,
    wf: &NewWorkflow,
) -> sqlx::Result<bool> {
    let q = sqlx::query(&CREATE_SQL)
        .bind(wf.id)
        .bind(&wf.workflow_type)
        .bind(wf.version)
        .bind(&wf.status)
        .bind(&wf.reason)
        .bind(&wf.state)
        .bind(wf.last_seq)
        .bind(&wf.business_keys)
        .bind(&wf.idempotency_key)
        .bind(&wf.request_hash)
        .bind(wf.at);
    let q = bind_history(change, q);
    let q = bind_outbox(change, q);
    let q = bind_timers(change, q);
    let q = q.bind(!change.outbox.is_empty()).bind(change.wake_timers);
    let q = q.bind(&wf.fingerprint);
    Ok(q.fetch_optional(conn).await?.is_some())
}

fn bind_update<'q>(change: &'q Change, q: Query<'q>) -> Query<'q> {
    let u = &change.updates;
    q.bind(u.iter().map(|r| r.id).collect::<Vec<_>>())
        .bind(u.iter().map(|r| r.status.as_str()).collect::<Vec<_>>())
        .bind(u.iter().map(|r| r.reason.as_deref()).collect::<Vec<_>>())
        .bind(u.iter().map(|r| r.state.as_str()).collect::<Vec<_>>())
        .bind(u.iter().map(|r| r.last_seq).collect::<Vec<_>>())
        .bind(u.iter().map(|r| r.at).collect::<Vec<_>>())
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

fn bind_rest<'q>(change: &'q Change, q: Query<'q>) -> Query<'q> {
    let q = bind_history(change, q);
    let q = bind_outbox(change, q);
    let q = bind_timers(change, q);
    q.bind(change.cancelled().collect::<Vec<_>>())
        .bind(!change.outbox.is_empty())
        .bind(change.wake_timers)
}

/// Statements are built once: sqlx prepares each distinct text once per connection.
static WRITE_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "with {}, {}, {}, {}, {} select {}",
        cte_update(1),
        cte_history(7, ""),
        cte_outbox(13, ""),
        cte_timers(18, ""),
        cte_cancel(22),
        notify(23, 24),
    )
});

static CREATE_SQL: LazyLock<String> = LazyLock::new(|| {
    // Every other CTE only writes if the workflow row went in.
    let guard = "where exists (select 1 from ins)";
    format!(
        "with ins as (
             insert into workflows (id, workflow_type, version, status, reason, state,
                                    last_seq, business_keys, business_key_values,
                                    idempotency_key, request_hash, created_at, updated_at,
                                    definition_fingerprint)
             values ($1, $2, $3, $4, $5, $6::jsonb, $7, $8::jsonb,
                     array(select value from jsonb_each_text($8::jsonb)), $9, $10, $11, $11, $29)
             on conflict (idempotency_key) do nothing
             returning id),
         {}, {}, {}
         select {} from ins",
        cte_history(12, guard),
        cte_outbox(18, guard),
        cte_timers(23, guard),
        notify(27, 28),
    )
});

type Query<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

fn cte_update(p: usize) -> String {
    format!(
        "upd as (
             update workflows w set status = u.s, reason = u.r, state = u.st::jsonb,
                                    last_seq = u.seq, updated_at = u.at
             from unnest(${p}::uuid[], ${}::text[], ${}::text[], ${}::text[], ${}::int8[],
                         ${}::timestamptz[]) as u(id, s, r, st, seq, at)
             where w.id = u.id)",
        p + 1,
        p + 2,
        p + 3,
        p + 4,
        p + 5
    )
}

fn cte_history(p: usize, guard: &str) -> String {
    format!(
        "hist as (
             insert into history (workflow_id, seq, at, event, commands, ignored)
             select h.id, h.seq, h.at, h.ev::jsonb, h.cmd::jsonb, h.ign
             from unnest(${p}::uuid[], ${}::int8[], ${}::timestamptz[], ${}::text[], ${}::text[],
                         ${}::text[]) as h(id, seq, at, ev, cmd, ign)
             {guard})",
        p + 1,
        p + 2,
        p + 3,
        p + 4,
        p + 5
    )
}

fn cte_outbox(p: usize, guard: &str) -> String {
    format!(
        "ob as (
             insert into outbox (workflow_id, task_id, exchange, queue, body)
             select o.wf, o.task, o.ex, o.q, o.body::jsonb
             from unnest(${p}::uuid[], ${}::uuid[], ${}::text[], ${}::text[], ${}::text[])
                  as o(wf, task, ex, q, body)
             {guard})",
        p + 1,
        p + 2,
        p + 3,
        p + 4
    )
}

fn cte_timers(p: usize, guard: &str) -> String {
    format!(
        "tins as (
             insert into timers (id, workflow_id, fire_at, purpose)
             select t.id, t.wf, t.at, t.purpose::jsonb
             from unnest(${p}::uuid[], ${}::uuid[], ${}::timestamptz[], ${}::text[])
                  as t(id, wf, at, purpose)
             {guard}
             on conflict (id) do nothing)",
        p + 1,
        p + 2,
        p + 3
    )
}

fn cte_cancel(p: usize) -> String {
    format!("tdel as (delete from timers where id = any(${p}::uuid[]))")
}

/// The wake-ups, delivered on commit: the relay if there is something to publish, the timer
/// poller if a timer is due soon (far ones are found by its fallback poll).
fn notify(outbox: usize, timers: usize) -> String {
    format!(
        "case when ${outbox} then pg_notify('{}', '') end,
         case when ${timers} then pg_notify('{}', '') end",
        channels::OUTBOX,
        channels::TIMERS
    )
}
