//! How fast the admin UI answers with 100,000 workflows in the database: the list (with each
//! filter), the stuck view and a detail page, timed as server time through the engine's router
//! (session lookup, queries and rendering; no network). Every figure must stay under 100 ms at
//! the 95th percentile; the run fails otherwise.
//!
//! The database is a fresh one with the engine's migrations (so the indexes of
//! `migrations/engine/0003_admin.sql`), filled with order sagas whose states and histories come
//! from the real decider (`orderflow_core::testing::Driver`) in the proportions of a busy shop:
//! most completed, some compensated or cancelled, a few thousand in flight, a thousand retrying
//! a failing charge, a few hundred needing attention and some with overdue timers.
//!
//! `cargo bench -p orderflow-engine --bench admin` (about a minute to load; `ADMIN_BENCH_N` sets
//! the number of workflows, e.g. `ADMIN_BENCH_N=5000000`: loaded with `COPY` in batches of
//! 5,000; ~10 KiB a saga with its history, ~50 GB at 5,000,000: size the disk first).
//! `ADMIN_BENCH_KEEP=1` leaves the database behind; by default it is dropped.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use axum::{
    Router,
    body::Body,
    http::{Request, StatusCode},
};
use chrono::{DateTime, Utc};
use orderflow_core::{
    ActivityError, Registry, WorkflowDefinition, WorkflowState,
    testing::{DEFAULT_WORKFLOW_ID, Driver},
};
use orderflow_engine::{
    admin::AdminConfig,
    api::{self, AppState},
};
use orderflow_testkit::TestEnv;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tower::ServiceExt;
use uuid::Uuid;

const BUDGET: Duration = Duration::from_millis(100);
const RUNS: usize = 30;

/// One kind of saga: its state and history as the decider left them, and its pending timers.
struct Template {
    name: &'static str,
    share: f64,
    status: String,
    reason: Option<String>,
    state: String,
    events: Vec<(DateTime<Utc>, String, String)>,
    /// (purpose JSON, seconds from now it fires; negative: overdue)
    timers: Vec<(String, i64)>,
}

fn input() -> Value {
    json!({
        "order_id": "0195f0a4-0000-7000-8000-000000000042",
        "user_id": "0195f0a4-0000-7000-8000-0000000000aa",
        "items": [{ "product_id": "sku-1", "quantity": 2 }],
        "total": { "amount_minor": 2599, "currency": "EUR" },
        "payment_method": "pm_card_visa",
        "email": "buyer@example.com"
    })
}

fn charge() -> Value {
    json!({ "payment_id": "pay_TEMPLATE", "payment_intent_id": "pi_TEMPLATE" })
}

fn template(
    name: &'static str,
    share: f64,
    def: &Arc<dyn WorkflowDefinition>,
    script: impl Fn(&mut Driver) -> anyhow::Result<()>,
    timer_offset: i64,
) -> anyhow::Result<Template> {
    let mut d = Driver::for_definition(def.clone()).start(input())?;
    script(&mut d)?;
    let view = d.state().view();
    let timers = d
        .pending_timers()
        .iter()
        .map(|t| Ok((serde_json::to_string(&t.purpose)?, timer_offset)))
        .collect::<anyhow::Result<_>>()?;
    let events = d
        .history()
        .events
        .iter()
        .map(|e| {
            Ok((
                e.at,
                serde_json::to_string(&e.event)?,
                serde_json::to_string(&e.commands)?,
            ))
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(Template {
        name,
        share,
        status: view.status.as_str().to_owned(),
        reason: view.reason,
        state: serde_json::to_string(d.state() as &dyn WorkflowState)?,
        events,
        timers,
    })
}

fn templates() -> anyhow::Result<Vec<Template>> {
    let def: Arc<dyn WorkflowDefinition> = Arc::new(orderflow_workflows::order::v1());
    let declined = || ActivityError::permanent("card_declined", "the card was declined");
    let busy = || ActivityError::retryable("stripe_unavailable", "503 from the gateway");
    Ok(vec![
        template(
            "completed",
            0.873,
            &def,
            |d| {
                d.complete("reserve", json!({"reservation_id": "r1"}))?;
                d.complete("charge", charge())?;
                d.complete("create_order", json!({"status": "confirmed"}))?;
                d.complete("notify", json!({"notification_id": "n1"}))?;
                Ok(())
            },
            0,
        )?,
        template(
            "compensated",
            0.05,
            &def,
            |d| {
                d.complete("reserve", json!({"reservation_id": "r1"}))?;
                d.fail("charge", declined())?;
                d.complete("reserve", json!({"released": true}))?;
                Ok(())
            },
            0,
        )?,
        template(
            "cancelled",
            0.02,
            &def,
            |d| {
                d.complete("reserve", json!({"reservation_id": "r1"}))?;
                d.fail("charge", busy())?;
                d.cancel("user:ada", "changed my mind")?;
                d.complete("reserve", json!({"released": true}))?;
                Ok(())
            },
            0,
        )?,
        template(
            "terminated",
            0.005,
            &def,
            |d| {
                d.terminate("admin:ops", "test order")?;
                Ok(())
            },
            0,
        )?,
        template(
            "in_flight",
            0.03,
            &def,
            |d| {
                d.complete("reserve", json!({"reservation_id": "r1"}))?;
                Ok(())
            },
            20,
        )?,
        template(
            "retrying",
            0.01,
            &def,
            |d| {
                d.complete("reserve", json!({"reservation_id": "r1"}))?;
                d.fail("charge", busy())?;
                d.fire_next_timer()?;
                d.fail("charge", busy())?;
                Ok(())
            },
            15,
        )?,
        template(
            "needs_attention",
            0.003,
            &def,
            |d| {
                d.complete("reserve", json!({"reservation_id": "r1"}))?;
                d.fail("charge", declined())?;
                d.fail(
                    "reserve",
                    ActivityError::permanent("ledger_locked", "release refused"),
                )?;
                Ok(())
            },
            0,
        )?,
        template(
            "overdue",
            0.009,
            &def,
            |d| {
                d.complete("reserve", json!({"reservation_id": "r1"}))?;
                Ok(())
            },
            -120,
        )?,
    ])
}

/// A UUIDv7 for an instant, so creation times spread over the last 30 days like real ids.
fn v7_at(at: DateTime<Utc>) -> Uuid {
    let ts = uuid::Timestamp::from_unix(
        uuid::NoContext,
        at.timestamp() as u64,
        at.timestamp_subsec_nanos(),
    );
    let mut b = *Uuid::new_v7(ts).as_bytes();
    // new_v7 fills the rest randomly; keep that, it is what makes ids unique.
    b[6] = (b[6] & 0x0f) | 0x70;
    Uuid::from_bytes(b)
}

async fn load(env: &TestEnv, n: usize) -> anyhow::Result<(Vec<(Uuid, &'static str)>, String)> {
    let templates = templates()?;
    let template_id = DEFAULT_WORKFLOW_ID.to_string();
    let now = Utc::now();
    let mut kinds: Vec<usize> = Vec::with_capacity(n);
    for (i, t) in templates.iter().enumerate() {
        kinds.extend(std::iter::repeat_n(
            i,
            (t.share * n as f64).round() as usize,
        ));
    }
    kinds.resize(n, 0);
    // Deterministic shuffle so each kind is spread over time, as it would be.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in (1..kinds.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        kinds.swap(i, (x % (i as u64 + 1)) as usize);
    }
    let span = chrono::Duration::days(30).num_milliseconds();
    let mut ids = Vec::with_capacity(n);
    let mut some_key = String::new();
    let started = Instant::now();
    for (batch_no, batch) in kinds.chunks(5_000).enumerate() {
        let mut w_id = Vec::new();
        let mut w_status = Vec::new();
        let mut w_reason: Vec<Option<String>> = Vec::new();
        let mut w_state = Vec::new();
        let mut w_seq = Vec::new();
        let mut w_keys = Vec::new();
        let mut w_created = Vec::new();
        let (mut h_wf, mut h_seq, mut h_at, mut h_event, mut h_cmds) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut t_id, mut t_wf, mut t_at, mut t_purpose) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (j, &k) in batch.iter().enumerate() {
            let i = batch_no * 5_000 + j;
            let t = &templates[k];
            let created = now
                - chrono::Duration::milliseconds(span - (span * i as i64) / n as i64)
                - chrono::Duration::minutes(if t.name == "completed" { 0 } else { 1 });
            let id = v7_at(created);
            let order_id = Uuid::new_v4().to_string();
            if i == n / 2 {
                some_key = order_id.clone();
            }
            let fix = |s: &str| {
                s.replace(&template_id, &id.to_string())
                    .replace("pi_TEMPLATE", &format!("pi_{i}"))
                    .replace("pay_TEMPLATE", &format!("pay_{i}"))
            };
            w_id.push(id);
            w_status.push(t.status.clone());
            w_reason.push(t.reason.clone());
            w_state.push(fix(&t.state));
            w_seq.push(t.events.len() as i64);
            w_keys.push(json!({ "order_id": order_id, "user_id": Uuid::new_v4() }).to_string());
            w_created.push(created);
            let shift = created - t.events[0].0;
            for (seq, (at, event, cmds)) in t.events.iter().enumerate() {
                h_wf.push(id);
                h_seq.push(seq as i64 + 1);
                h_at.push(*at + shift);
                h_event.push(fix(event));
                h_cmds.push(fix(cmds));
            }
            for (purpose, offset) in &t.timers {
                t_id.push(Uuid::new_v4());
                t_wf.push(id);
                // The deadline stays in the future; only an overdue template's attempt timeout
                // is in the past.
                let off = if purpose.contains("deadline") {
                    600
                } else {
                    *offset
                };
                t_at.push(now + chrono::Duration::seconds(off));
                t_purpose.push(purpose.clone());
            }
            ids.push((id, t.name));
        }
        // COPY, not INSERT: millions of rows load in minutes, not hours.
        let mut tx = env.pool.begin().await?;
        let mut w = String::new();
        for i in 0..w_id.len() {
            let keys: Value = serde_json::from_str(&w_keys[i])?;
            let values: Vec<String> = keys
                .as_object()
                .into_iter()
                .flatten()
                .filter_map(|(_, v)| v.as_str().map(|s| format!("\"{s}\"")))
                .collect();
            let row = [
                w_id[i].to_string(),
                "order".into(),
                "1".into(),
                w_status[i].clone(),
                w_reason[i]
                    .clone()
                    .map_or_else(|| "\\N".into(), |r| csv(&r)),
                csv(&w_state[i]),
                w_seq[i].to_string(),
                csv(&w_keys[i]),
                csv(&format!("{{{}}}", values.join(","))),
                w_created[i].to_rfc3339(),
                w_created[i].to_rfc3339(),
            ];
            w.push_str(&row.join(","));
            w.push('\n');
        }
        copy(
            &mut tx,
            "copy workflows (id, workflow_type, version, status, reason, state, last_seq,
                             business_keys, business_key_values, created_at, updated_at)
             from stdin with (format csv, null '\\N')",
            w,
        )
        .await?;
        let mut h = String::new();
        for i in 0..h_wf.len() {
            h.push_str(&format!(
                "{},{},{},{},{}\n",
                h_wf[i],
                h_seq[i],
                h_at[i].to_rfc3339(),
                csv(&h_event[i]),
                csv(&h_cmds[i])
            ));
        }
        copy(
            &mut tx,
            "copy history (workflow_id, seq, at, event, commands) from stdin with (format csv)",
            h,
        )
        .await?;
        let mut t = String::new();
        for i in 0..t_id.len() {
            t.push_str(&format!(
                "{},{},{},{}\n",
                t_id[i],
                t_wf[i],
                t_at[i].to_rfc3339(),
                csv(&t_purpose[i])
            ));
        }
        copy(
            &mut tx,
            "copy timers (id, workflow_id, fire_at, purpose) from stdin with (format csv)",
            t,
        )
        .await?;
        if batch_no % 20 == 19 {
            println!("  {} workflows loaded", (batch_no + 1) * 5_000);
        }
        tx.commit().await?;
    }
    sqlx::query("vacuum analyze").execute(&env.pool).await?;
    println!(
        "loaded {n} workflows in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok((ids, some_key))
}

/// A CSV field: quoted, quotes doubled.
fn csv(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

async fn copy(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    statement: &str,
    data: String,
) -> anyhow::Result<()> {
    let mut c = tx.copy_in_raw(statement).await?;
    c.send(data.into_bytes()).await?;
    c.finish().await?;
    Ok(())
}

async fn session(env: &TestEnv) -> anyhow::Result<String> {
    let token = "bench-session-token";
    sqlx::query(
        "insert into admin_sessions (token_hash, actor, csrf_token, expires_at)
         values ($1, 'admin:bench', 'csrf', now() + interval '1 hour')",
    )
    .bind(Sha256::digest(token.as_bytes()).to_vec())
    .execute(&env.pool)
    .await?;
    Ok(format!("orderflow_admin={token}"))
}

/// Times `RUNS` requests of `path` (after a few to warm the caches); returns (p50, p95, max).
async fn time(
    app: &Router,
    cookie: &str,
    path: &str,
    name: &str,
) -> anyhow::Result<(f64, f64, f64, usize)> {
    let mut samples = Vec::with_capacity(RUNS);
    let mut bytes = 0;
    for i in 0..RUNS + 3 {
        let req = Request::get(path)
            .header("cookie", cookie)
            .body(Body::empty())?;
        let started = Instant::now();
        let res = app.clone().oneshot(req).await?;
        let status = res.status();
        let body = axum::body::to_bytes(res.into_body(), usize::MAX).await?;
        let took = started.elapsed();
        // The archived id's page answers 404 with the page that says where it went.
        let expected = if name.contains("archived") {
            StatusCode::NOT_FOUND
        } else {
            StatusCode::OK
        };
        anyhow::ensure!(
            status == expected,
            "{path} answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
        bytes = body.len();
        if i >= 3 {
            samples.push(took.as_secs_f64() * 1000.0);
        }
    }
    samples.sort_by(f64::total_cmp);
    let pct = |p: f64| samples[((samples.len() - 1) as f64 * p).round() as usize];
    Ok((pct(0.5), pct(0.95), pct(1.0), bytes))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let n: usize = std::env::var("ADMIN_BENCH_N")
        .ok()
        .map(|s| s.parse())
        .transpose()
        .context("ADMIN_BENCH_N")?
        .unwrap_or(100_000);
    let env = TestEnv::new().await?;
    let (ids, order_key) = load(&env, n).await?;
    let registry = Arc::new(Registry::new().with(orderflow_workflows::order::v1()));
    let mut config = AdminConfig::with_password("bench", "bench");
    // Every stuck page asks the broker and scans the tasks out, as the first view after the
    // cache expires does: the worst case, not the cached one.
    config.probe_ttl = Duration::ZERO;
    let state = AppState::standalone(env.pool.clone(), env.applier(registry), env.queue());
    let app = api::router_with(
        state.clone(),
        orderflow_testkit::api_auth(),
        orderflow_engine::admin::router(state, config),
    );
    let cookie = session(&env).await?;
    // An id retention archived: its detail page says so from two indexed lookups.
    let archived = Uuid::now_v7();
    sqlx::query(
        "with b as (insert into archive_batches (object_key, archived_at)
                    values ('workflows/2026/01/01/000000000001.jsonl.gz', now()) returning id)
         insert into archived_workflows (workflow_id, batch_id, workflow_type)
         select $1, id, 'order' from b",
    )
    .bind(archived)
    .execute(&env.pool)
    .await?;
    let pick = |kind: &str| {
        ids.iter()
            .find(|(_, k)| *k == kind)
            .map(|(id, _)| *id)
            .expect("every kind is loaded")
    };
    let middle = ids[ids.len() / 2].0;
    let day = |d: i64| (Utc::now() - chrono::Duration::days(d)).format("%Y-%m-%dT%H:%M");
    let paths = [
        ("list, first page", "/admin/workflows".to_owned()),
        (
            "list, status=completed",
            "/admin/workflows?status=completed".to_owned(),
        ),
        (
            "list, status=needs_attention",
            "/admin/workflows?status=needs_attention".to_owned(),
        ),
        (
            "list, one day 15 days ago",
            format!(
                "/admin/workflows?created_after={}&created_before={}",
                day(15),
                day(14)
            ),
        ),
        (
            "list, order id",
            format!("/admin/workflows?business_key={order_key}"),
        ),
        (
            "list, payment intent id",
            format!("/admin/workflows?business_key=pi_{}", n / 3),
        ),
        ("list, workflow id", format!("/admin/workflows?id={middle}")),
        (
            "list, page in the middle",
            format!("/admin/workflows?cursor={middle}"),
        ),
        ("stuck, all causes", "/admin/stuck".to_owned()),
        (
            "stuck, payment.charge",
            "/admin/stuck?activity=payment.charge".to_owned(),
        ),
        ("stuck, overdue", "/admin/stuck?kind=overdue".to_owned()),
        (
            "detail, completed saga",
            format!("/admin/workflows/{}", pick("completed")),
        ),
        (
            "detail, retrying saga",
            format!("/admin/workflows/{}", pick("retrying")),
        ),
        ("audit", "/admin/audit".to_owned()),
        (
            "detail, archived id",
            format!("/admin/workflows/{archived}"),
        ),
    ];
    println!(
        "\n{:<32} {:>9} {:>9} {:>9} {:>9}",
        "page", "p50 ms", "p95 ms", "max ms", "KiB"
    );
    let mut over = Vec::new();
    for (name, path) in &paths {
        let (p50, p95, max, bytes) = time(&app, &cookie, path, name).await?;
        println!(
            "{name:<32} {p50:>9.1} {p95:>9.1} {max:>9.1} {:>9.1}",
            bytes as f64 / 1024.0
        );
        if p95 > BUDGET.as_secs_f64() * 1000.0 {
            over.push(*name);
        }
    }
    if std::env::var_os("ADMIN_BENCH_KEEP").is_none() {
        let name = env
            .database_url
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        env.pool.close().await;
        let admin =
            sqlx::PgPool::connect(&format!("{}/postgres", orderflow_testkit::pg_server())).await?;
        sqlx::query(&format!("drop database if exists {name} with (force)"))
            .execute(&admin)
            .await?;
    }
    anyhow::ensure!(over.is_empty(), "over {BUDGET:?} at p95: {over:?}");
    println!(
        "\nevery page under {} ms at p95 with {n} workflows",
        BUDGET.as_millis()
    );
    Ok(())
}
