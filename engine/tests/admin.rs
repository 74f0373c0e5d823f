//! The admin UI over HTTP on the real stack: login and sessions, CSRF, bad input, the list and
//! its filters, the stuck view's reasons, the detail page, single and bulk actions, the audit view.
//! The same flows in a real browser are in `admin_browser.rs`.

mod admin_common;

use std::{sync::Arc, time::Duration};

use admin_common::{Db, PASSWORD, Resp, Setup, USER, Ui, hidden, stubborn_order};

use async_trait::async_trait;
use orderflow_activities::{TaskContext, worker::Handler};
use orderflow_core::{ActivityError, Event, History, SagaDefinition, Step};
use orderflow_testkit::eventually;
use orderflow_testkit::recording::{self, Fault};
use orderflow_workflows::order::contracts::*;
use reqwest::StatusCode;
use uuid::Uuid;

const WITHIN: Duration = Duration::from_secs(20);

/// Each scenario runs on Postgres with RabbitMQ (`postgres::`) and on the embedded SQLite store
/// with the in-process queue of `orderflow dev` (`sqlite::`).
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod postgres {
            $(#[tokio::test]
            async fn $name() -> anyhow::Result<()> {
                super::$name(super::Db::Postgres).await
            })*
        }
        mod sqlite {
            $(#[tokio::test]
            async fn $name() -> anyhow::Result<()> {
                super::$name(super::Db::Sqlite).await
            })*
        }
    };
}

on_both_stores!(
    no_page_or_action_without_a_login,
    login_opens_a_strict_httponly_session_and_logout_ends_it,
    an_action_without_the_csrf_token_is_refused_and_records_nothing,
    bad_input_gets_problem_json_naming_the_field,
    the_list_filters_counts_and_pages,
    a_failing_activity_is_stuck_with_its_error_until_retried,
    retry_from_a_step_and_refusals_are_shown_on_the_detail_page,
    a_timer_that_does_not_fire_is_overdue,
    a_task_on_a_queue_without_a_worker_says_so,
    the_detail_page_shows_steps_attempts_history_and_downloads_it,
    a_bulk_cancel_by_filter_previews_the_count_then_compensates,
    the_rest_api_starts_lists_reads_and_cancels,
    a_failing_compensation_is_resolved_in_the_ui_and_the_audit_shows_who_and_why,
    a_failing_compensation_is_resolved_through_the_rest_api_and_audited,
    a_saga_is_found_by_its_payment_intent_in_the_ui_and_the_rest_list,
    the_ui_and_the_metrics_name_what_the_deployed_definitions_name,
);

fn problem(r: &Resp, status: StatusCode, field: &str) {
    assert_eq!(r.status, status, "{}", r.text);
    assert_eq!(r.content_type(), "application/problem+json", "{}", r.text);
    assert_eq!(r.json()["field"], field, "{}", r.text);
}

async fn wait_for_page(ui: &Ui, path: &str, needle: &str) -> anyhow::Result<String> {
    eventually(WITHIN, &format!("{path} to show `{needle}`"), || async {
        let page = ui.get(path).await?;
        Ok(page.text.contains(needle).then_some(page.text))
    })
    .await
}

async fn no_page_or_action_without_a_login(store: Db) -> anyhow::Result<()> {
    let ui = Ui::start(Setup {
        store,
        engine: false,
        workers: vec![],
        ..Setup::default()
    })
    .await?;
    let id = ui.start_order().await?;
    for path in [
        "/admin/workflows".to_owned(),
        "/admin/stuck?kind=retrying".to_owned(),
        "/admin/audit".to_owned(),
        format!("/admin/workflows/{id}"),
        format!("/admin/workflows/{id}/history.json"),
    ] {
        let r = ui.get(&path).await?;
        assert_eq!(r.status, StatusCode::SEE_OTHER, "{path}");
        let to = r.location().unwrap_or_default();
        assert!(to.starts_with("/admin/login?next="), "{path} -> {to}");
    }
    let r = ui
        .post_with(
            &format!("/admin/workflows/{id}/cancel"),
            &[("reason", "x")],
            &[],
        )
        .await?;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(
        r.location(),
        Some("/admin/login?next=/admin/workflows"),
        "an action without a session goes to login, not back to the action"
    );
    assert_eq!(ui.history_kinds(id).await?, ["workflow_started"]);
    // A session cookie that was never issued opens nothing.
    let mut forged = ui;
    forged.session = Some("00".repeat(32));
    assert_eq!(
        forged.get("/admin/workflows").await?.status,
        StatusCode::SEE_OTHER
    );
    Ok(())
}

async fn login_opens_a_strict_httponly_session_and_logout_ends_it(store: Db) -> anyhow::Result<()> {
    let mut ui = Ui::start(Setup {
        store,
        engine: false,
        workers: vec![],
        ..Setup::default()
    })
    .await?;
    let page = ui.get("/admin/login?next=/admin/stuck").await?;
    assert_eq!(page.status, StatusCode::OK);
    let login_csrf = page.cookie("orderflow_admin_login").expect("login cookie");
    assert_eq!(
        hidden(&page.text, "csrf").as_deref(),
        Some(login_csrf.as_str())
    );
    assert!(
        page.headers["content-security-policy"]
            .to_str()?
            .contains("frame-ancestors 'none'")
    );

    let wrong = ui
        .post_with(
            "/admin/login",
            &[
                ("csrf", &login_csrf),
                ("username", USER),
                ("password", "guess"),
            ],
            &[("orderflow_admin_login", &login_csrf)],
        )
        .await?;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(wrong.text.contains("Wrong user name or password"));
    assert!(wrong.cookie("orderflow_admin").is_none());

    let no_token = ui
        .post_with(
            "/admin/login",
            &[("username", USER), ("password", PASSWORD)],
            &[("orderflow_admin_login", &login_csrf)],
        )
        .await?;
    problem(&no_token, StatusCode::FORBIDDEN, "csrf");

    let missing = ui
        .post_with(
            "/admin/login",
            &[("csrf", &login_csrf), ("username", USER)],
            &[("orderflow_admin_login", &login_csrf)],
        )
        .await?;
    problem(&missing, StatusCode::BAD_REQUEST, "password");

    let ok = ui
        .post_with(
            "/admin/login",
            &[
                ("csrf", &login_csrf),
                ("username", USER),
                ("password", PASSWORD),
                ("next", "/admin/stuck"),
            ],
            &[("orderflow_admin_login", &login_csrf)],
        )
        .await?;
    assert_eq!(ok.status, StatusCode::SEE_OTHER);
    assert_eq!(ok.location(), Some("/admin/stuck"));
    let set = ok
        .set_cookies()
        .into_iter()
        .find(|c| c.starts_with("orderflow_admin="))
        .expect("a session cookie");
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/admin", "Max-Age="] {
        assert!(set.contains(attr), "{set} lacks {attr}");
    }
    let token = ok.cookie("orderflow_admin").expect("session token");
    let (stored, raw) = ui.sessions("admin:ops", &token).await?;
    assert_eq!(stored, 1);
    assert_eq!(raw, 0, "the table keeps a hash of the token, not the token");

    ui.session = Some(token);
    let list = ui.get("/admin/workflows").await?;
    assert_eq!(list.status, StatusCode::OK);
    assert!(list.text.contains("admin:ops"));
    ui.csrf = hidden(&list.text, "csrf");
    // Emails go out for real here: no outbox, so no Emails page nor link to one.
    assert!(!list.text.contains("/admin/emails"));
    assert_eq!(ui.get("/admin/emails").await?.status, StatusCode::NOT_FOUND);

    let out = ui.post("/admin/logout", &[]).await?;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    assert_eq!(
        ui.get("/admin/workflows").await?.status,
        StatusCode::SEE_OTHER,
        "the session is gone from the server, not just the browser"
    );
    Ok(())
}

async fn an_action_without_the_csrf_token_is_refused_and_records_nothing(
    store: Db,
) -> anyhow::Result<()> {
    let mut ui = Ui::start(Setup {
        store,
        engine: false,
        workers: vec![],
        ..Setup::default()
    })
    .await?;
    ui.login().await?;
    let id = ui.start_order().await?;
    let path = format!("/admin/workflows/{id}/terminate");
    let none = ui.post_with(&path, &[("reason", "test")], &[]).await?;
    problem(&none, StatusCode::FORBIDDEN, "csrf");
    let wrong = ui
        .post_with(&path, &[("reason", "test"), ("csrf", "forged")], &[])
        .await?;
    problem(&wrong, StatusCode::FORBIDDEN, "csrf");
    let bulk = ui
        .post_with(
            "/admin/bulk",
            &[
                ("action", "cancel"),
                ("reason", "x"),
                ("ids", &id.to_string()),
            ],
            &[],
        )
        .await?;
    problem(&bulk, StatusCode::FORBIDDEN, "csrf");
    assert_eq!(ui.history_kinds(id).await?, ["workflow_started"]);

    let done = ui.post(&path, &[("reason", "test")]).await?;
    assert_eq!(done.status, StatusCode::SEE_OTHER);
    assert_eq!(ui.status(id).await?, "terminated");
    Ok(())
}

async fn bad_input_gets_problem_json_naming_the_field(store: Db) -> anyhow::Result<()> {
    let mut ui = Ui::start(Setup {
        store,
        engine: false,
        workers: vec![],
        ..Setup::default()
    })
    .await?;
    ui.login().await?;
    let id = ui.start_order().await?;
    problem(
        &ui.get("/admin/workflows?status=stuckish").await?,
        StatusCode::BAD_REQUEST,
        "status",
    );
    problem(
        &ui.get("/admin/workflows?created_after=yesterday").await?,
        StatusCode::BAD_REQUEST,
        "created_after",
    );
    problem(
        &ui.get("/admin/workflows?id=42").await?,
        StatusCode::BAD_REQUEST,
        "id",
    );
    problem(
        &ui.get("/admin/workflows?colour=red").await?,
        StatusCode::BAD_REQUEST,
        "colour",
    );
    problem(
        &ui.get("/admin/stuck?kind=sleepy").await?,
        StatusCode::BAD_REQUEST,
        "kind",
    );
    problem(
        &ui.get("/admin/workflows/not-a-uuid").await?,
        StatusCode::BAD_REQUEST,
        "id",
    );
    problem(
        &ui.post(
            &format!("/admin/workflows/{id}/cancel"),
            &[("reason", "  ")],
        )
        .await?,
        StatusCode::BAD_REQUEST,
        "reason",
    );
    problem(
        &ui.post(
            &format!("/admin/workflows/{id}/retry-from"),
            &[("reason", "x")],
        )
        .await?,
        StatusCode::BAD_REQUEST,
        "step",
    );
    problem(
        &ui.post(
            &format!("/admin/workflows/{id}/signal"),
            &[("reason", "x"), ("name", "go"), ("payload", "{not json")],
        )
        .await?,
        StatusCode::BAD_REQUEST,
        "payload",
    );
    problem(
        &ui.post(
            "/admin/bulk/preview",
            &[
                ("action", "cancel"),
                ("reason", "x"),
                ("target", "selected"),
            ],
        )
        .await?,
        StatusCode::BAD_REQUEST,
        "ids",
    );
    problem(
        &ui.post(
            "/admin/bulk/preview",
            &[("action", "explode"), ("reason", "x")],
        )
        .await?,
        StatusCode::BAD_REQUEST,
        "action",
    );
    let missing = ui
        .get(&format!("/admin/workflows/{}", Uuid::now_v7()))
        .await?;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(ui.history_kinds(id).await?, ["workflow_started"]);
    Ok(())
}

async fn the_list_filters_counts_and_pages(store: Db) -> anyhow::Result<()> {
    let mut ui = Ui::start(Setup {
        store,
        engine: false,
        workers: vec![],
        ..Setup::default()
    })
    .await?;
    ui.login().await?;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(ui.start_order().await?);
    }
    let order_id = Uuid::new_v4();
    let keyed = ui
        .start_keyed(serde_json::json!({ "order_id": order_id }))
        .await?;
    let first = ids[0];
    ui.post(
        &format!("/admin/workflows/{first}/terminate"),
        &[("reason", "test")],
    )
    .await?;

    let all = ui.get("/admin/workflows").await?;
    assert!(
        all.text
            .contains(r#"data-status="running"><span class="n">3</span>"#),
        "{}",
        all.text
    );
    assert!(
        all.text
            .contains(r#"data-status="terminated"><span class="n">1</span>"#)
    );
    assert_eq!(all.text.matches("<tr data-id=").count(), 4);
    // The current step comes out of the snapshot (no engine runs, so each waits at the first).
    assert!(
        all.text.contains(r#"<span class="step">reserve</span>"#),
        "{}",
        all.text
    );

    let running = ui.get("/admin/workflows?status=running").await?;
    assert_eq!(running.text.matches("<tr data-id=").count(), 3);
    assert!(!running.text.contains(&format!("data-id=\"{first}\"")));

    let by_key = ui
        .get(&format!("/admin/workflows?business_key={order_id}"))
        .await?;
    assert_eq!(by_key.text.matches("<tr data-id=").count(), 1);
    assert!(by_key.text.contains(&format!("data-id=\"{keyed}\"")));

    let by_id = ui.get(&format!("/admin/workflows?id={}", ids[1])).await?;
    assert_eq!(by_id.text.matches("<tr data-id=").count(), 1);

    let future = ui
        .get("/admin/workflows?created_after=2999-01-01T00:00")
        .await?;
    assert_eq!(future.text.matches("<tr data-id=").count(), 0);
    let past = ui
        .get("/admin/workflows?created_after=2000-01-01T00:00:00Z&created_before=2999-01-01T00:00")
        .await?;
    assert_eq!(past.text.matches("<tr data-id=").count(), 4);

    // Pages of one row: newest first, each row once.
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = ui
            .get(&format!("/admin/workflows?type=order{cursor}"))
            .await?;
        let rows: Vec<&str> = page.text.split("<tr data-id=\"").skip(1).collect();
        seen.extend(rows.iter().map(|r| r[..36].to_owned()));
        match page.text.split("cursor=").nth(1) {
            Some(rest) => cursor = format!("&cursor={}", &rest[..36]),
            None => break,
        }
        if seen.len() > 10 {
            break;
        }
    }
    assert_eq!(seen.len(), 4, "PAGE_SIZE is 50, so one page: {seen:?}");
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.reverse();
    assert_eq!(seen, sorted, "newest first");
    Ok(())
}

async fn a_failing_activity_is_stuck_with_its_error_until_retried(store: Db) -> anyhow::Result<()> {
    let mut ui = Ui::start(Setup {
        store,
        ..Setup::default()
    })
    .await?;
    ui.login().await?;
    recording::inject(
        &ui.env.pool,
        &Fault::transient(PAYMENT_CHARGE, "stripe_unavailable"),
    )
    .await?;
    let id = ui.start_order().await?;
    // Until the workers consume, the saga may show as waiting on a queue without a worker.
    let page = wait_for_page(&ui, "/admin/stuck", "Retrying `payment.charge`").await?;
    let row = page
        .split(&format!("<tr data-id=\"{id}\""))
        .nth(1)
        .expect("the saga's row");
    let row = &row[..row.find("</tr>").unwrap_or(row.len())];
    assert!(row.contains(r#"data-kind="retrying""#), "{row}");
    assert!(
        row.contains("Retrying `payment.charge`: attempt 1 failed with stripe_unavailable: injected fail_transient fault"),
        "{row}"
    );
    let only = ui
        .get("/admin/stuck?kind=retrying&activity=payment.charge")
        .await?;
    assert!(only.text.contains(&id.to_string()), "{}", only.text);
    let other = ui.get("/admin/stuck?activity=inventory.reserve").await?;
    assert!(!other.text.contains(&id.to_string()));

    let detail = ui.get(&format!("/admin/workflows/{id}")).await?;
    assert!(
        detail
            .text
            .contains(r#"data-step="charge" data-status="retrying""#)
    );
    assert!(
        detail
            .text
            .contains(r#"data-step="reserve" data-status="completed""#)
    );
    assert!(detail.text.contains("stripe_unavailable"));

    recording::clear_faults(&ui.env.pool).await?;
    let r = ui
        .post(
            &format!("/admin/workflows/{id}/retry"),
            &[("reason", "stripe is back")],
        )
        .await?;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(
        r.location(),
        Some(format!("/admin/workflows/{id}").as_str())
    );
    assert_eq!(ui.settled(id, WITHIN).await?, "completed");
    let kinds = ui.history_kinds(id).await?;
    assert!(kinds.contains(&"retry_requested".to_owned()), "{kinds:?}");
    let recorded = ui
        .history(id)
        .await?
        .into_iter()
        .find_map(|e| match e.event {
            Event::RetryRequested { actor, reason } => Some((actor, reason)),
            _ => None,
        });
    assert_eq!(
        recorded,
        Some(("admin:ops".to_owned(), "stripe is back".to_owned()))
    );

    // The flash says what happened, once.
    let flash = r.cookie("orderflow_admin_flash").expect("a flash");
    let shown = ui
        .get_with_cookie(
            &format!("/admin/workflows/{id}"),
            "orderflow_admin_flash",
            &flash,
        )
        .await?;
    assert!(
        shown.text.contains("Retry now recorded as event"),
        "{}",
        shown.text
    );

    let audit = ui.get("/admin/audit").await?;
    assert!(audit.text.contains(&format!("data-id=\"{id}\"")));
    assert!(audit.text.contains("stripe is back"));
    Ok(())
}

async fn retry_from_a_step_and_refusals_are_shown_on_the_detail_page(
    store: Db,
) -> anyhow::Result<()> {
    let mut ui = Ui::start(Setup {
        store,
        ..Setup::default()
    })
    .await?;
    ui.login().await?;
    recording::inject(&ui.env.pool, &Fault::transient(PAYMENT_CHARGE, "flaky")).await?;
    let id = ui.start_order().await?;
    wait_for_page(&ui, "/admin/stuck", "Retrying `payment.charge`").await?;
    recording::clear_faults(&ui.env.pool).await?;
    let r = ui
        .post(
            &format!("/admin/workflows/{id}/retry-from"),
            &[("step", "reserve"), ("reason", "re-run the reservation")],
        )
        .await?;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(ui.settled(id, WITHIN).await?, "completed");
    let kinds = ui.history_kinds(id).await?;
    assert!(kinds.contains(&"retry_from_step".to_owned()), "{kinds:?}");
    let reserves: (i64,) = sqlx::query_as(
        "select count(*) from activity_effects where workflow_id = $1 and activity = $2",
    )
    .bind(id)
    .bind(INVENTORY_RESERVE)
    .fetch_one(&ui.env.pool)
    .await?;
    assert_eq!(
        reserves.0, 1,
        "the re-run reservation kept its key: one effect"
    );

    // A finished saga refuses; the refusal comes back as a message, and nothing is recorded.
    let before = ui.history_kinds(id).await?.len();
    let refused = ui
        .post(
            &format!("/admin/workflows/{id}/cancel"),
            &[("reason", "late")],
        )
        .await?;
    assert_eq!(refused.status, StatusCode::SEE_OTHER);
    let flash = refused.cookie("orderflow_admin_flash").expect("a flash");
    assert!(
        admin_decode(&flash)
            .starts_with("err:Cancel refused: cannot cancel: the saga is already completed"),
        "{flash}"
    );
    assert_eq!(ui.history_kinds(id).await?.len(), before);
    Ok(())
}

fn admin_decode(s: &str) -> String {
    orderflow_engine::admin::error::url_decode(s)
}

/// Both queues count their consumers: a task on a queue nobody consumes is named as such.
async fn a_task_on_a_queue_without_a_worker_says_so(store: Db) -> anyhow::Result<()> {
    let mut ui = Ui::start(Setup {
        store,
        workers: vec![],
        ..Setup::default()
    })
    .await?;
    ui.login().await?;
    let id = ui.start_order().await?;
    // The queue can first show empty: the engine's backlog gauges declare it before the relay's
    // task lands in it.
    let page = wait_for_page(
        &ui,
        "/admin/stuck?kind=no_worker",
        "No worker: `inventory.reserve` attempt 1 waits on a queue that no worker consumes (1 tasks waiting)",
    )
    .await?;
    assert!(page.contains(&id.to_string()), "{page}");
    assert!(!page.contains(r#"id="no-broker""#), "{page}");
    Ok(())
}

async fn a_timer_that_does_not_fire_is_overdue(store: Db) -> anyhow::Result<()> {
    let mut setup = Setup {
        store,
        engine: false,
        workers: vec![],
        def: stubborn_order(Duration::from_secs(30), Duration::from_millis(300)),
        ..Setup::default()
    };
    setup.config.timer_grace = Duration::ZERO;
    let mut ui = Ui::start(setup).await?;
    ui.login().await?;
    let id = ui.start_order().await?;
    let page = wait_for_page(&ui, "/admin/stuck?kind=overdue", &id.to_string()).await?;
    assert!(
        page.contains(
            "Timer overdue: the start-to-close timeout of `inventory.reserve` attempt 1 came due"
        ),
        "{page}"
    );
    assert!(page.contains("is an engine running?"));
    Ok(())
}

async fn the_detail_page_shows_steps_attempts_history_and_downloads_it(
    store: Db,
) -> anyhow::Result<()> {
    let mut ui = Ui::start(Setup {
        store,
        ..Setup::default()
    })
    .await?;
    ui.login().await?;
    recording::inject(
        &ui.env.pool,
        &Fault::transient(INVENTORY_RESERVE, "db_busy").times(1),
    )
    .await?;
    let id = ui.start_order().await?;
    // The reservation fails once and waits its 50 ms backoff; the charge runs after.
    assert_eq!(ui.settled(id, WITHIN).await?, "completed");
    let page = ui.get(&format!("/admin/workflows/{id}")).await?;
    assert_eq!(page.status, StatusCode::OK);
    let t = &page.text;
    for step in ["reserve", "charge", "create_order", "notify"] {
        assert!(
            t.contains(&format!(r#"data-step="{step}" data-status="completed""#)),
            "{step}"
        );
    }
    assert!(t.contains("<svg"), "a diagram");
    assert!(
        t.contains(r#"<tr data-outcome="failed">"#),
        "the failed attempt"
    );
    assert!(t.contains("db_busy: injected fail_transient fault"));
    assert_eq!(t.matches(r#"<tr data-outcome="completed">"#).count(), 4);
    assert!(t.contains(&format!(r#"id="trace-id">{}<"#, id.simple())));
    assert!(t.contains(r#"data-event="workflow_started""#));
    assert!(t.contains("&quot;order_id&quot;"), "the input JSON");
    assert!(
        t.contains("no action can move it again"),
        "a completed saga offers no action"
    );

    let dl = ui
        .get(&format!("/admin/workflows/{id}/history.json"))
        .await?;
    assert_eq!(dl.status, StatusCode::OK);
    assert!(
        dl.headers["content-disposition"]
            .to_str()?
            .starts_with("attachment")
    );
    let history: History = serde_json::from_str(&dl.text)?;
    assert_eq!(history.workflow_id.0, id);
    assert_eq!(history.events.len(), ui.history_kinds(id).await?.len());
    Ok(())
}

async fn a_bulk_cancel_by_filter_previews_the_count_then_compensates(
    store: Db,
) -> anyhow::Result<()> {
    let mut ui = Ui::start(Setup {
        store,
        ..Setup::default()
    })
    .await?;
    ui.login().await?;
    // The fault is in place before the sagas start: the in-process queue can run the reserve
    // and the charge before a fault injected after the start would land. Once the three wait
    // out their 30 s backoff it is lifted, so the fourth saga completes.
    recording::inject(
        &ui.env.pool,
        &Fault::transient(PAYMENT_CHARGE, "gateway_down"),
    )
    .await?;
    let mut stuck = Vec::new();
    for _ in 0..3 {
        stuck.push(ui.start_order().await?);
    }
    eventually(WITHIN, "three sagas retrying the charge", || async {
        let page = ui.get("/admin/stuck?activity=payment.charge").await?;
        // Rows, not the count links, which carry the kind too.
        let n = page.text.matches(r#"data-kind="retrying"><td>"#).count();
        Ok((n == 3).then_some(()))
    })
    .await?;
    recording::clear_faults(&ui.env.pool).await?;
    let fine = ui.start_order().await?;
    assert_eq!(ui.settled(fine, WITHIN).await?, "completed");

    let preview = ui
        .post(
            "/admin/bulk/preview",
            &[
                ("action", "cancel"),
                ("reason", "gateway outage: undo"),
                ("view", "stuck"),
                ("query", "activity=payment.charge"),
                ("target", "filter"),
            ],
        )
        .await?;
    assert_eq!(preview.status, StatusCode::OK, "{}", preview.text);
    assert!(
        preview
            .text
            .contains(r#"<strong class="n">3</strong> workflows"#),
        "{}",
        preview.text
    );
    let upto = hidden(&preview.text, "upto").expect("the preview pins its newest id");
    // Nothing happened yet.
    for id in &stuck {
        assert_eq!(ui.status(*id).await?, "running");
    }
    let done = ui
        .post(
            "/admin/bulk",
            &[
                ("action", "cancel"),
                ("reason", "gateway outage: undo"),
                ("view", "stuck"),
                ("query", "activity=payment.charge"),
                ("target", "filter"),
                ("upto", &upto),
            ],
        )
        .await?;
    assert_eq!(done.status, StatusCode::OK, "{}", done.text);
    assert!(
        done.text
            .contains(r#"<span class="applied">3</span> applied"#),
        "{}",
        done.text
    );
    for id in &stuck {
        assert_eq!(ui.settled(*id, WITHIN).await?, "cancelled");
        let (released,): (i64,) = sqlx::query_as(
            "select count(*) from activity_effects where workflow_id = $1 and activity = $2",
        )
        .bind(id)
        .bind(INVENTORY_RELEASE)
        .fetch_one(&ui.env.pool)
        .await?;
        assert_eq!(released, 1, "the reservation was compensated");
    }
    assert_eq!(ui.status(fine).await?, "completed");
    let audit = ui.get("/admin/audit").await?;
    assert_eq!(audit.text.matches("gateway outage: undo").count(), 3);
    Ok(())
}

impl Ui {
    async fn get_with_cookie(&self, path: &str, name: &str, value: &str) -> anyhow::Result<Resp> {
        // The flash cookie rides along with the session, as a browser would send both.
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let res = client
            .get(self.url(path))
            .header(
                "cookie",
                format!(
                    "orderflow_admin={}; {name}={value}",
                    self.session.clone().unwrap_or_default()
                ),
            )
            .send()
            .await?;
        let status = res.status();
        let headers = res.headers().clone();
        Ok(Resp {
            status,
            headers,
            text: res.text().await?,
        })
    }
}

/// The REST API served next to the UI: start (idempotent by key), read, list by business key,
/// counts, cancel with its actor in the history, and readiness.
async fn the_rest_api_starts_lists_reads_and_cancels(store: Db) -> anyhow::Result<()> {
    let ui = Ui::start(Setup {
        store,
        engine: false,
        workers: vec![],
        ..Setup::default()
    })
    .await?;
    let order_id = Uuid::new_v4().to_string();
    let body = serde_json::json!({
        "type": "order",
        "input": orderflow_testkit::order_input(),
        "business_keys": { "order_id": order_id },
    });
    let created = ui
        .post_json("/api/v1/workflows", Some("k-1"), &body)
        .await?;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let id = created.json()["id"].as_str().unwrap_or_default().to_owned();
    assert_eq!(created.json()["status"], "running", "{}", created.text);
    let again = ui
        .post_json("/api/v1/workflows", Some("k-1"), &body)
        .await?;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text);
    assert_eq!(again.json()["id"], id.as_str());
    let mut other = body.clone();
    other["business_keys"]["order_id"] = "another".into();
    let reused = ui
        .post_json("/api/v1/workflows", Some("k-1"), &other)
        .await?;
    assert_eq!(reused.status, StatusCode::CONFLICT, "{}", reused.text);
    let unknown = ui
        .post_json(
            "/api/v1/workflows",
            None,
            &serde_json::json!({ "type": "refund", "input": {} }),
        )
        .await?;
    problem(&unknown, StatusCode::UNPROCESSABLE_ENTITY, "type");

    let one = ui.get(&format!("/api/v1/workflows/{id}")).await?;
    assert_eq!(one.status, StatusCode::OK, "{}", one.text);
    assert_eq!(one.json()["id"], id.as_str());
    let keyed = ui
        .get(&format!("/api/v1/workflows?business_key={order_id}"))
        .await?;
    let items = keyed.json()["items"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(items.len(), 1, "{}", keyed.text);
    assert_eq!(items[0]["id"], id.as_str());
    let done = ui.get("/api/v1/workflows?status=completed").await?;
    assert_eq!(done.json()["items"].as_array().map(Vec::len), Some(0));
    let counts = ui.get("/api/v1/workflow-counts").await?;
    assert_eq!(counts.json(), serde_json::json!({ "running": 1 }));

    let cancel = ui
        .post_json(
            &format!("/api/v1/workflows/{id}/cancel"),
            None,
            &serde_json::json!({ "reason": "the customer called" }),
        )
        .await?;
    assert_eq!(cancel.status, StatusCode::ACCEPTED, "{}", cancel.text);
    let history = ui.get(&format!("/api/v1/workflows/{id}/history")).await?;
    assert_eq!(history.status, StatusCode::OK, "{}", history.text);
    let history: History = serde_json::from_str(&history.text)?;
    assert!(
        history.events.iter().any(|e| matches!(
            &e.event,
            Event::CancelRequested { actor, reason }
                if actor == "operator:ann" && reason == "the customer called"
        )),
        "{:?}",
        history.events
    );
    let missing = ui
        .post_json(
            &format!("/api/v1/workflows/{}/cancel", Uuid::now_v7()),
            None,
            &serde_json::json!({ "reason": "x" }),
        )
        .await?;
    assert_eq!(missing.status, StatusCode::NOT_FOUND, "{}", missing.text);

    let ready = ui.get("/ready").await?;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.text);
    assert_eq!(ready.json()["database"], true, "{}", ready.text);
    let broker = match store {
        Db::Postgres => serde_json::json!(true),
        Db::Sqlite => serde_json::Value::Null,
    };
    assert_eq!(ready.json()["broker"], broker, "{}", ready.text);
    Ok(())
}

/// The embedded store keeps sessions and operator actions in its file: a process started again
/// on the same `--data-dir` still knows the operator's session and shows the action they took.
#[tokio::test]
async fn embedded_sessions_and_actions_outlive_a_restart() -> anyhow::Result<()> {
    let mut ui = Ui::start(Setup {
        store: Db::Sqlite,
        engine: false,
        workers: vec![],
        ..Setup::default()
    })
    .await?;
    ui.login().await?;
    let id = ui.start_order().await?;
    let r = ui
        .post(
            &format!("/admin/workflows/{id}/terminate"),
            &[("reason", "duplicate order")],
        )
        .await?;
    assert_eq!(r.status, StatusCode::SEE_OTHER);

    let reopened = orderflow_engine::store::sqlite::SqliteStore::open(Some(&ui.files[0])).await?;
    let queue =
        orderflow_queue::embedded::EmbeddedQueue::open(Some(&ui.files[1]), ui.env.topology.clone())
            .await?;
    let state = orderflow_engine::api::AppState::standalone(reopened, ui.applier.clone(), queue);
    let app = orderflow_engine::api::router_with(
        state.clone(),
        orderflow_testkit::api_auth(),
        orderflow_engine::admin::router(state, Setup::default().config),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    let session = format!("orderflow_admin={}", ui.session.clone().unwrap_or_default());
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let get = |path: String| {
        http.get(format!("http://{addr}{path}"))
            .header("cookie", session.clone())
            .send()
    };
    let page = get(format!("/admin/workflows/{id}")).await?;
    assert_eq!(page.status(), StatusCode::OK, "the session is still live");
    assert!(page.text().await?.contains("terminated"));
    let audit = get("/admin/audit".to_owned()).await?.text().await?;
    assert!(audit.contains("duplicate order"), "{audit}");
    assert!(audit.contains("admin:ops"), "{audit}");
    Ok(())
}

/// A saga whose compensation keeps failing: the charge is declined, and releasing the stock the
/// reservation took fails on every attempt, so after its retries the saga needs attention.
async fn failing_compensation(ui: &Ui) -> anyhow::Result<Uuid> {
    recording::inject(
        &ui.env.pool,
        &Fault::permanent(PAYMENT_CHARGE, "card_declined"),
    )
    .await?;
    recording::inject(
        &ui.env.pool,
        &Fault::transient(INVENTORY_RELEASE, "warehouse_down"),
    )
    .await?;
    let id = ui.start_order().await?;
    assert_eq!(ui.settled(id, WITHIN).await?, "needs_attention");
    Ok(id)
}

async fn becomes(ui: &Ui, id: Uuid, status: &str) -> anyhow::Result<()> {
    eventually(WITHIN, &format!("the saga to be {status}"), || async {
        Ok((ui.status(id).await? == status).then_some(()))
    })
    .await
}

/// The `CompensationResolved` events of a saga, as (step, actor, reason).
async fn resolutions(ui: &Ui, id: Uuid) -> anyhow::Result<Vec<(String, String, String)>> {
    Ok(ui
        .history(id)
        .await?
        .into_iter()
        .filter_map(|e| match e.event {
            Event::CompensationResolved {
                step,
                actor,
                reason,
            } => Some((step, actor, reason)),
            _ => None,
        })
        .collect())
}

/// The audit view's row of `id`'s latest action.
async fn audit_row(ui: &Ui, id: Uuid) -> anyhow::Result<String> {
    let audit = ui.get("/admin/audit").await?;
    assert_eq!(audit.status, StatusCode::OK, "{}", audit.text);
    let row = audit
        .text
        .split(&format!("<tr data-id=\"{id}\""))
        .nth(1)
        .unwrap_or_else(|| panic!("no audit row for {id}: {}", audit.text));
    Ok(row[..row.find("</tr>").unwrap_or(row.len())].to_owned())
}

/// The operator finds the saga stuck on its failing compensation, repaired the stock by hand,
/// and marks the compensation resolved on the saga's page: the saga finishes compensating and the
/// audit view shows who did it and why. A wrong step is refused and records nothing.
async fn a_failing_compensation_is_resolved_in_the_ui_and_the_audit_shows_who_and_why(
    store: Db,
) -> anyhow::Result<()> {
    let mut ui = Ui::start(Setup {
        store,
        ..Setup::default()
    })
    .await?;
    ui.login().await?;
    let id = failing_compensation(&ui).await?;
    let resolve = format!("/admin/workflows/{id}/resolve");

    let page = ui.get(&format!("/admin/workflows/{id}")).await?;
    let form = page
        .text
        .split(&format!("action=\"{resolve}\""))
        .nth(1)
        .unwrap_or_else(|| panic!("a resolve form on the saga's page: {}", page.text));
    let form = &form[..form.find("</form>").unwrap_or(form.len())];
    assert_eq!(hidden(form, "step").as_deref(), Some("reserve"), "{form}");
    let stuck = ui.get("/admin/stuck?kind=attention").await?;
    assert!(stuck.text.contains(&id.to_string()), "{}", stuck.text);

    problem(
        &ui.post(&resolve, &[("step", "reserve")]).await?,
        StatusCode::BAD_REQUEST,
        "reason",
    );
    let wrong = ui
        .post(&resolve, &[("step", "charge"), ("reason", "wrong step")])
        .await?;
    assert_eq!(wrong.status, StatusCode::SEE_OTHER, "{}", wrong.text);
    let flash = admin_decode(&wrong.cookie("orderflow_admin_flash").expect("a flash"));
    assert!(
        flash.starts_with("err:") && flash.contains("step `charge` has no failing compensation"),
        "the refusal is shown: {flash}"
    );
    assert!(resolutions(&ui, id).await?.is_empty());
    assert_eq!(ui.status(id).await?, "needs_attention");

    let why = "released the 2 units by hand in the warehouse system";
    let done = ui
        .post(&resolve, &[("step", "reserve"), ("reason", why)])
        .await?;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.text);
    assert_eq!(
        done.location(),
        Some(format!("/admin/workflows/{id}").as_str())
    );
    let flash = admin_decode(&done.cookie("orderflow_admin_flash").expect("a flash"));
    assert!(flash.starts_with("ok:"), "{flash}");
    becomes(&ui, id, "compensated").await?;
    assert_eq!(
        resolutions(&ui, id).await?,
        [(
            "reserve".to_owned(),
            format!("admin:{USER}"),
            why.to_owned()
        )]
    );
    let row = audit_row(&ui, id).await?;
    assert!(row.contains("compensation_resolved"), "{row}");
    assert!(row.contains(&format!("admin:{USER}")), "{row}");
    assert!(row.contains(why), "{row}");
    Ok(())
}

/// The same repair through `POST /api/v1/workflows/{id}/resolve`: bad input is answered with
/// problem+json naming the field, a step without a failing compensation is a 409 that records
/// nothing, and the accepted one is in the history and the audit view with its actor and reason.
async fn a_failing_compensation_is_resolved_through_the_rest_api_and_audited(
    store: Db,
) -> anyhow::Result<()> {
    let mut ui = Ui::start(Setup {
        store,
        ..Setup::default()
    })
    .await?;
    ui.login().await?;
    let id = failing_compensation(&ui).await?;
    let path = format!("/api/v1/workflows/{id}/resolve");

    for (body, field) in [
        (serde_json::json!({ "reason": "x" }), "step"),
        (serde_json::json!({ "step": " ", "reason": "x" }), "step"),
        (serde_json::json!({ "step": "reserve" }), "reason"),
        (
            serde_json::json!({ "step": "reserve", "reason": " " }),
            "reason",
        ),
        (
            // The actor is the caller, never a field of the body.
            serde_json::json!({ "step": "reserve", "reason": "x", "actor": "mallory" }),
            "actor",
        ),
    ] {
        problem(
            &ui.post_json(&path, None, &body).await?,
            StatusCode::BAD_REQUEST,
            field,
        );
    }
    problem(
        &ui.post_json(
            "/api/v1/workflows/not-a-uuid/resolve",
            None,
            &serde_json::json!({ "step": "reserve", "reason": "x" }),
        )
        .await?,
        StatusCode::BAD_REQUEST,
        "id",
    );
    let missing = ui
        .post_json(
            &format!("/api/v1/workflows/{}/resolve", Uuid::now_v7()),
            None,
            &serde_json::json!({ "step": "reserve", "reason": "x" }),
        )
        .await?;
    assert_eq!(missing.status, StatusCode::NOT_FOUND, "{}", missing.text);
    let wrong = ui
        .post_json(
            &path,
            None,
            &serde_json::json!({ "step": "charge", "reason": "x" }),
        )
        .await?;
    assert_eq!(wrong.status, StatusCode::CONFLICT, "{}", wrong.text);
    assert_eq!(wrong.content_type(), "application/problem+json");
    assert!(resolutions(&ui, id).await?.is_empty());

    let why = "released the stock by hand (ticket OPS-17)";
    let ok = ui
        .post_json(
            &path,
            None,
            &serde_json::json!({ "step": "reserve", "reason": why }),
        )
        .await?;
    assert_eq!(ok.status, StatusCode::ACCEPTED, "{}", ok.text);
    assert_eq!(ok.json()["id"], id.to_string());
    becomes(&ui, id, "compensated").await?;
    let again = ui
        .post_json(
            &path,
            None,
            &serde_json::json!({ "step": "reserve", "reason": "twice" }),
        )
        .await?;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.text);

    let history = ui
        .api_get(&format!("/api/v1/workflows/{id}/history"))
        .await?;
    let history: History = serde_json::from_str(&history.text)?;
    let resolved: Vec<&Event> = history
        .events
        .iter()
        .map(|e| &e.event)
        .filter(|e| matches!(e, Event::CompensationResolved { .. }))
        .collect();
    assert_eq!(
        resolved,
        [&Event::CompensationResolved {
            step: "reserve".into(),
            actor: "operator:ann".into(),
            reason: why.into(),
        }]
    );
    let row = audit_row(&ui, id).await?;
    assert!(row.contains("compensation_resolved"), "{row}");
    assert!(row.contains("operator:ann"), "{row}");
    assert!(row.contains(why), "{row}");
    Ok(())
}

/// Stands in for the payment service's charge: answers what `payment.charge` answers
/// ([`Charge`]), with a PaymentIntent id of its own made from the workflow id.
struct StripeCharge;

fn intent_of(workflow: Uuid) -> String {
    format!("pi_{}", workflow.simple())
}

#[async_trait]
impl Handler for StripeCharge {
    fn activity(&self) -> &str {
        PAYMENT_CHARGE
    }

    async fn handle(
        &self,
        ctx: &TaskContext,
        _input: serde_json::Value,
    ) -> Result<serde_json::Value, ActivityError> {
        let charge = Charge {
            payment_id: Uuid::new_v4().to_string(),
            payment_intent_id: intent_of(ctx.workflow_id.0),
        };
        Ok(serde_json::to_value(charge).expect("a charge serializes"))
    }
}

/// Support has only the `pi_...` id from Stripe's dashboard: the admin list's filter and the REST
/// list's `business_key` both find the one saga whose charge step recorded it.
async fn a_saga_is_found_by_its_payment_intent_in_the_ui_and_the_rest_list(
    store: Db,
) -> anyhow::Result<()> {
    let mut ui = Ui::start(Setup {
        store,
        workers: ORDER_SAGA_ACTIVITIES
            .into_iter()
            .filter(|a| *a != PAYMENT_CHARGE)
            .collect(),
        handlers: vec![Arc::new(StripeCharge)],
        ..Setup::default()
    })
    .await?;
    ui.login().await?;
    let (ours, other) = (ui.start_order().await?, ui.start_order().await?);
    for id in [ours, other] {
        assert_eq!(ui.settled(id, WITHIN).await?, "completed");
    }
    let pi = intent_of(ours);

    let page = ui
        .get(&format!("/admin/workflows?business_key={pi}"))
        .await?;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text);
    assert_eq!(
        page.text.matches("<tr data-id=").count(),
        1,
        "{}",
        page.text
    );
    assert!(page.text.contains(&format!("data-id=\"{ours}\"")));
    let none = ui
        .get("/admin/workflows?business_key=pi_0000000000000000")
        .await?;
    assert_eq!(none.text.matches("<tr data-id=").count(), 0);

    let listed = ui
        .api_get(&format!("/api/v1/workflows?business_key={pi}"))
        .await?;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.text);
    let ids: Vec<String> = listed.json()["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|w| w["id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(ids, [ours.to_string()], "{}", listed.text);
    let nothing = ui
        .api_get("/api/v1/workflows?business_key=pi_0000000000000000")
        .await?;
    assert_eq!(nothing.json()["items"], serde_json::json!([]));
    Ok(())
}

/// A second workflow type deployed beside the order saga: the stuck view offers its type and
/// its activities in its filters, the list offers its type, and the engine's metrics have its
/// series and watch its queues, with nothing in the engine naming it.
async fn the_ui_and_the_metrics_name_what_the_deployed_definitions_name(
    store: Db,
) -> anyhow::Result<()> {
    let shipment = SagaDefinition::builder("shipment", 1)
        .step(Step::compensatable("book", "shipping.book").compensate_with("shipping.cancel"))
        .step(Step::pivot("dispatch", "shipping.dispatch"))
        .build()?;
    let mut ui = Ui::start(Setup {
        store,
        workers: vec![],
        more: vec![shipment],
        ..Setup::default()
    })
    .await?;
    ui.login().await?;
    let stuck = ui.get("/admin/stuck").await?;
    for offered in [
        "shipment",
        "order",
        "shipping.book",
        "shipping.cancel",
        "shipping.dispatch",
        PAYMENT_CHARGE,
    ] {
        assert!(
            stuck
                .text
                .contains(&format!("<option value=\"{offered}\">")),
            "the stuck view offers `{offered}`: {}",
            stuck.text
        );
    }
    // A filter the URL carries stays selected although no definition names it.
    let stray = ui.get("/admin/stuck?activity=legacy.thing").await?;
    assert!(
        stray
            .text
            .contains(r#"<option value="legacy.thing" selected>"#),
        "{}",
        stray.text
    );
    let list = ui.get("/admin/workflows").await?;
    assert!(
        list.text.contains(r#"<option value="shipment">"#),
        "{}",
        list.text
    );

    let queue = ui.env.topology.task_queue("shipping.book");
    eventually(WITHIN, "the shipment series in /metrics", || async {
        let m = ui.api_get("/metrics").await?.text;
        let has = |prefix: &str, label: &str| {
            m.lines()
                .any(|l| l.starts_with(prefix) && l.contains(label))
        };
        Ok(
            (has("orderflow_workflows_started_total{", r#"type="shipment""#)
                && has("orderflow_workflows_finished_total{", r#"type="shipment""#)
                && has("orderflow_queue_depth{", &format!("queue=\"{queue}\"")))
            .then_some(()),
        )
    })
    .await
}
