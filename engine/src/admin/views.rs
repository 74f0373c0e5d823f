//! The pages: list, stuck, detail, audit and login, rendered with maud. Every page but login
//! takes an [`Operator`], so it cannot be reached without a session, and embeds the session's
//! CSRF token in each form it shows.

use std::collections::BTreeMap;

use axum::{
    extract::{Path, Query, State, rejection::QueryRejection},
    http::{HeaderMap, header},
    response::{IntoResponse, Response},
};
use chrono::{DateTime, NaiveDateTime, Utc};
use maud::{DOCTYPE, Markup, html};
use orderflow_core::{
    Command, Event, History, Phase, RecordedEvent, SagaState, TimerPurpose, WorkflowId,
    WorkflowState, WorkflowStatus,
};
use serde::Deserialize;
use serde_json::Value;
use uuid::Uuid;

use super::{
    AdminError, AdminState,
    auth::{self, FLASH_COOKIE, Operator},
    error::{url_decode, url_encode},
    stuck::{self, human},
    timeline,
};
use crate::store::reads::{ListFilter, ListRow, StuckFilter, StuckKind, TimerRow};

const PAGE_SIZE: i64 = 50;

// ---- query parameters ----

/// The list page's filters, as typed into its form (all text, checked here).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    pub status: Option<String>,
    #[serde(rename = "type")]
    pub workflow_type: Option<String>,
    pub business_key: Option<String>,
    pub id: Option<String>,
    pub created_after: Option<String>,
    pub created_before: Option<String>,
    pub cursor: Option<String>,
}

fn blank(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// A free-text filter; PostgreSQL text cannot hold NUL, so one is refused instead of failing
/// the query with a 500.
fn text_param(field: &str, v: &Option<String>) -> Result<Option<String>, AdminError> {
    match blank(v) {
        Some(s) if s.contains('\0') => Err(AdminError::bad(
            field,
            "text may not contain the NUL character",
        )),
        s => Ok(s.map(str::to_owned)),
    }
}

/// An instant typed as RFC 3339 or as a `datetime-local` field sends it (taken as UTC).
pub fn time_param(field: &str, raw: &Option<String>) -> Result<Option<DateTime<Utc>>, AdminError> {
    let Some(s) = blank(raw) else {
        return Ok(None);
    };
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(Some(t.with_timezone(&Utc)));
    }
    for fmt in ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, fmt) {
            return Ok(Some(t.and_utc()));
        }
    }
    Err(AdminError::bad(
        field,
        format!("`{s}` is not a time (RFC 3339, or YYYY-MM-DDTHH:MM in UTC)"),
    ))
}

fn uuid_param(field: &str, raw: &Option<String>) -> Result<Option<Uuid>, AdminError> {
    blank(raw)
        .map(|s| {
            Uuid::parse_str(s).map_err(|_| AdminError::bad(field, format!("`{s}` is not a UUID")))
        })
        .transpose()
}

impl ListParams {
    pub fn filter(&self, limit: i64) -> Result<ListFilter, AdminError> {
        let status = blank(&self.status)
            .map(|s| {
                s.parse::<WorkflowStatus>()
                    .map(|st| st.as_str().to_owned())
                    .map_err(|e| AdminError::bad("status", e))
            })
            .transpose()?;
        Ok(ListFilter {
            status,
            workflow_type: text_param("type", &self.workflow_type)?,
            business_key: text_param("business_key", &self.business_key)?,
            id: uuid_param("id", &self.id)?,
            created_after: time_param("created_after", &self.created_after)?,
            created_before: time_param("created_before", &self.created_before)?,
            before_id: uuid_param("cursor", &self.cursor)?,
            upto_id: None,
            limit,
        })
    }
}

/// The stuck page's filters.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StuckParams {
    pub kind: Option<String>,
    pub activity: Option<String>,
    #[serde(rename = "type")]
    pub workflow_type: Option<String>,
    pub created_after: Option<String>,
    pub created_before: Option<String>,
    pub cursor: Option<String>,
}

impl StuckParams {
    pub fn filter(
        &self,
        st: &AdminState,
        probe: &stuck::ProbeResult,
        limit: i64,
    ) -> Result<StuckFilter, AdminError> {
        let kind = blank(&self.kind)
            .map(|k| {
                StuckKind::parse(k).ok_or_else(|| {
                    AdminError::bad(
                        "kind",
                        format!("`{k}` is not one of attention, retrying, no_worker, overdue"),
                    )
                })
            })
            .transpose()?;
        let grace = chrono::Duration::from_std(st.config.timer_grace).unwrap_or_default();
        Ok(StuckFilter {
            kind,
            activity: text_param("activity", &self.activity)?,
            workflow_type: text_param("type", &self.workflow_type)?,
            created_after: time_param("created_after", &self.created_after)?,
            created_before: time_param("created_before", &self.created_before)?,
            before_id: uuid_param("cursor", &self.cursor)?,
            upto_id: None,
            limit,
            overdue_before: crate::apply::now() - grace,
            no_worker: probe.no_worker_ids(),
        })
    }
}

/// A query string rejected by serde, answered naming the field.
fn query_error(e: QueryRejection) -> AdminError {
    let msg = e.body_text();
    let field = ["unknown field `", "missing field `", "duplicate field `"]
        .iter()
        .find_map(|p| msg.split_once(p))
        .and_then(|(_, rest)| rest.split_once('`'))
        .map_or("query", |(f, _)| f);
    AdminError::bad(field, msg.clone())
}

/// The query string of the current page without its cursor, to page on or to act on.
fn query_without_cursor(raw: Option<&str>) -> String {
    raw.unwrap_or_default()
        .split('&')
        .filter(|kv| !kv.is_empty() && !kv.starts_with("cursor="))
        .collect::<Vec<_>>()
        .join("&")
}

// ---- the page frame ----

/// What every page shows around its content.
struct Frame<'a> {
    title: String,
    op: &'a Operator,
    flash: Option<(bool, String)>,
    nav: &'static str,
}

/// Takes (and clears) the one-shot message an action left for this page. `ok:` or `err:`
/// tells how it went.
fn take_flash(headers: &HeaderMap) -> Option<(bool, String)> {
    let raw = url_decode(&auth::cookie(headers, FLASH_COOKIE)?);
    match raw.split_once(':') {
        Some(("ok", m)) => Some((true, m.to_owned())),
        Some(("err", m)) => Some((false, m.to_owned())),
        _ => None,
    }
}

/// Sets the message the next page shows.
pub fn flash_cookie(ok: bool, msg: &str, secure: bool) -> axum::http::HeaderValue {
    let tag = if ok { "ok" } else { "err" };
    let msg: String = msg.chars().take(600).collect();
    auth::set_cookie(
        FLASH_COOKIE,
        &url_encode(&format!("{tag}:{msg}")),
        Some(60),
        secure,
    )
}

fn page(st: &AdminState, frame: Frame<'_>, body: Markup) -> Response {
    let had_flash = frame.flash.is_some();
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (frame.title) " · OrderFlow admin" }
                link rel="stylesheet" href="/admin/assets/admin.css";
                script src="/admin/assets/admin.js" defer {}
            }
            body {
                header.top {
                    a.brand href="/admin/workflows" { "OrderFlow" }
                    nav {
                        a class=(nav_class(frame.nav, "workflows")) href="/admin/workflows" { "Workflows" }
                        a class=(nav_class(frame.nav, "stuck")) href="/admin/stuck" { "Stuck" }
                        a class=(nav_class(frame.nav, "audit")) href="/admin/audit" { "Audit" }
                        @if st.config.outbox.is_some() {
                            a class=(nav_class(frame.nav, "emails")) href="/admin/emails" { "Emails" }
                        }
                    }
                    form.logout method="post" action="/admin/logout" {
                        span.who { (frame.op.actor) }
                        input type="hidden" name="csrf" value=(frame.op.csrf);
                        button type="submit" { "Log out" }
                    }
                }
                @if let Some((ok, msg)) = &frame.flash {
                    div class=(if *ok { "flash ok" } else { "flash err" }) role="status" { (msg) }
                }
                main { (body) }
            }
        }
    };
    let mut res = maud_response(markup);
    if had_flash {
        res.headers_mut().append(
            header::SET_COOKIE,
            auth::set_cookie(FLASH_COOKIE, "", Some(0), st.config.secure_cookies),
        );
    }
    res
}

fn nav_class(active: &str, me: &str) -> &'static str {
    if active == me { "active" } else { "" }
}

fn maud_response(m: Markup) -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        m.into_string(),
    )
        .into_response()
}

fn time(t: DateTime<Utc>) -> Markup {
    html! { time datetime=(t.to_rfc3339()) { (t.format("%Y-%m-%d %H:%M:%S%.3f")) } }
}

fn badge(status: &str) -> Markup {
    html! { span class=(format!("badge s-{status}")) { (status) } }
}

fn short(id: Uuid) -> String {
    id.to_string()
}

fn json_pre(v: &Value) -> Markup {
    html! { pre.json { (serde_json::to_string_pretty(v).unwrap_or_default()) } }
}

// ---- login ----

/// The login page.
pub fn login(next: &str, csrf: &str, error: Option<&str>, enabled: bool) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "Log in · OrderFlow admin" }
                link rel="stylesheet" href="/admin/assets/admin.css";
            }
            body.login {
                form.login method="post" action="/admin/login" {
                    h1 { "OrderFlow admin" }
                    @if let Some(e) = error { p.flash.err role="alert" { (e) } }
                    @if !enabled {
                        p.flash.err { "Password login is not configured for this engine (set ORDERFLOW_ADMIN_PASSWORD)." }
                    }
                    input type="hidden" name="csrf" value=(csrf);
                    input type="hidden" name="next" value=(next);
                    label { "User name" input name="username" autocomplete="username" required autofocus; }
                    label { "Password" input name="password" type="password" autocomplete="current-password" required; }
                    button type="submit" { "Log in" }
                }
            }
        }
    }
}

// ---- list ----

/// `GET /admin/workflows`: every workflow, filtered, newest first, with counts per status.
pub async fn list_page(
    State(st): State<AdminState>,
    op: Operator,
    headers: HeaderMap,
    q: Result<Query<ListParams>, QueryRejection>,
    axum::extract::RawQuery(raw): axum::extract::RawQuery,
) -> Result<Response, AdminError> {
    let Query(params) = q.map_err(query_error)?;
    let filter = params.filter(PAGE_SIZE + 1)?;
    let counts = st.db.counts().await?;
    let mut rows = st.db.list(&filter).await?;
    let more = rows.len() as i64 > PAGE_SIZE;
    rows.truncate(PAGE_SIZE as usize);
    let base = query_without_cursor(raw.as_deref());
    let next = more.then(|| rows.last().map(|r| r.id)).flatten();
    let total: i64 = counts.iter().map(|(_, n)| n).sum();
    let types: Vec<String> = st.committer.registry().types().map(str::to_owned).collect();
    let body = html! {
        h1 { "Workflows" }
        div #live data-refresh="5" {
            nav.counts aria-label="workflows per status" {
                a class=(if filter.status.is_none() { "count active" } else { "count" }) href="/admin/workflows" {
                    span.n { (total) } " all"
                }
                @for status in WorkflowStatus::ALL {
                    @let n = counts.iter().find(|(s, _)| s == status.as_str()).map_or(0, |(_, n)| *n);
                    a class=(if filter.status.as_deref() == Some(status.as_str()) { "count active" } else { "count" })
                        href=(format!("/admin/workflows?status={status}")) data-status=(status.as_str()) {
                        span.n { (n) } " " (status.as_str())
                    }
                }
            }
            (list_table(&rows, "list"))
        }
        @if let Some(cursor) = next {
            p.pager { a #next-page href=(format!("/admin/workflows?{base}{}cursor={cursor}", if base.is_empty() { "" } else { "&" })) { "Older →" } }
        }
        (list_filter_form(&params, &types))
        (bulk_form(&op, "list", &base, None))
    };
    let frame = Frame {
        title: "Workflows".into(),
        op: &op,
        flash: take_flash(&headers),
        nav: "workflows",
    };
    Ok(page(&st, frame, body))
}

fn list_table(rows: &[ListRow], view: &str) -> Markup {
    html! {
        table.rows data-view=(view) {
            thead { tr {
                th { input type="checkbox" .select-all form="bulk" aria-label="select all"; }
                th { "id" } th { "type" } th { "status" } th { "current step" } th { "reason" }
                th { "business keys" } th { "created" } th { "updated" }
            } }
            tbody {
                @if rows.is_empty() { tr { td colspan="9" .empty { "No workflows match." } } }
                @for r in rows {
                    tr data-id=(r.id) data-status=(r.status) {
                        td { input type="checkbox" name="ids" value=(r.id) form="bulk" aria-label="select"; }
                        td.id { a href=(format!("/admin/workflows/{}", r.id)) { (short(r.id)) } }
                        td { (r.workflow_type) " v" (r.version) }
                        td { (badge(&r.status)) }
                        td { (current_step(r.current.as_ref())) }
                        td.reason { (r.reason.as_deref().unwrap_or("")) }
                        td.keys { (keys(&r.business_keys)) }
                        td { (time(r.created_at)) }
                        td { (time(r.updated_at)) }
                    }
                }
            }
        }
    }
}

fn current_step(v: Option<&Value>) -> Markup {
    let Some(v) = v else { return html! {} };
    let name = v.get("name").and_then(Value::as_str).unwrap_or("?");
    let status = v.get("status").and_then(Value::as_str).unwrap_or("?");
    let attempts = v.get("attempts").and_then(Value::as_u64).unwrap_or(0);
    let err = v
        .get("last_error")
        .and_then(|e| e.get("code"))
        .and_then(Value::as_str);
    html! {
        span.step { (name) } " · " span class=(format!("st st-{status}")) { (status) }
        @if attempts > 1 { " · attempt " (attempts) }
        @if let (Some(code), "retrying") = (err, status) { " · " code { (code) } }
    }
}

fn keys(v: &Value) -> Markup {
    html! {
        @if let Some(m) = v.as_object() {
            @for (k, val) in m {
                span.key { (k) "=" (val.as_str().map_or_else(|| val.to_string(), str::to_owned)) } " "
            }
        }
    }
}

fn list_filter_form(p: &ListParams, types: &[String]) -> Markup {
    let v = |o: &Option<String>| o.clone().unwrap_or_default();
    html! {
        details.filters open {
            summary { "Filter" }
            form method="get" action="/admin/workflows" .filters {
                label { "Status"
                    select name="status" {
                        option value="" { "any" }
                        @for s in WorkflowStatus::ALL {
                            option value=(s.as_str()) selected[p.status.as_deref() == Some(s.as_str())] { (s.as_str()) }
                        }
                    }
                }
                label { "Type"
                    select name="type" {
                        option value="" { "any" }
                        @for t in types {
                            option value=(t) selected[p.workflow_type.as_deref() == Some(t.as_str())] { (t) }
                        }
                    }
                }
                label { "Business key" input name="business_key" value=(v(&p.business_key)) placeholder="order id, user id, payment intent id"; }
                label { "Workflow id" input name="id" value=(v(&p.id)) placeholder="uuid"; }
                label { "Created after (UTC)" input name="created_after" type="datetime-local" step="1" value=(v(&p.created_after)); }
                label { "Created before (UTC)" input name="created_before" type="datetime-local" step="1" value=(v(&p.created_before)); }
                button type="submit" { "Apply" }
                a href="/admin/workflows" { "Clear" }
            }
        }
    }
}

/// The bulk action form: acts on the checked rows, or on everything the page's filter matches.
/// It only previews; the preview page asks for the final confirmation.
fn bulk_form(op: &Operator, view: &str, query: &str, steps: Option<&[String]>) -> Markup {
    html! {
        form #bulk .bulk method="post" action="/admin/bulk/preview" {
            h2 { "Bulk action" }
            input type="hidden" name="csrf" value=(op.csrf);
            input type="hidden" name="view" value=(view);
            input type="hidden" name="query" value=(query);
            label { "Action"
                select name="action" {
                    option value="retry" { "Retry now" }
                    option value="retry-from" { "Retry from step" }
                    option value="cancel" { "Cancel (compensate)" }
                    option value="terminate" { "Terminate" }
                }
            }
            label { "Step (retry from)"
                @if let Some(steps) = steps {
                    select name="step" { option value="" { "—" } @for s in steps { option value=(s) { (s) } } }
                } @else {
                    input name="step" placeholder="step name";
                }
            }
            fieldset.target {
                legend { "Act on" }
                label { input type="radio" name="target" value="selected" checked; " the checked rows" }
                label { input type="radio" name="target" value="filter"; " every workflow this filter matches" }
            }
            label { "Reason" input name="reason" required placeholder="why (recorded with each saga)"; }
            button type="submit" { "Preview" }
        }
    }
}

// ---- stuck ----

/// `GET /admin/stuck`: every saga that needs attention, retries, waits on a queue without a
/// worker or has a timer that did not fire, each with why in one line.
pub async fn stuck_page(
    State(st): State<AdminState>,
    op: Operator,
    headers: HeaderMap,
    q: Result<Query<StuckParams>, QueryRejection>,
    axum::extract::RawQuery(raw): axum::extract::RawQuery,
) -> Result<Response, AdminError> {
    let Query(params) = q.map_err(query_error)?;
    let probe = st.probe.check(&*st.db).await?;
    let filter = params.filter(&st, &probe, PAGE_SIZE + 1)?;
    let (attention, retrying, overdue) = st.db.stuck_counts(filter.overdue_before).await?;
    let mut rows = st.db.stuck(&filter).await?;
    let more = rows.len() as i64 > PAGE_SIZE;
    rows.truncate(PAGE_SIZE as usize);
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let timers = st.db.timers_of(&ids).await?;
    let now = crate::apply::now();
    let counts = [
        (StuckKind::Attention, attention),
        (StuckKind::Retrying, retrying),
        (StuckKind::NoWorker, probe.no_worker.len() as i64),
        (StuckKind::Overdue, overdue),
    ];
    let base = query_without_cursor(raw.as_deref());
    let next = more.then(|| rows.last().map(|r| r.id)).flatten();
    let body = html! {
        h1 { "Stuck sagas" }
        @if let Some(e) = &probe.error {
            p.flash.err { "RabbitMQ cannot be asked about consumers, so sagas waiting on a queue without a worker are not shown: " (e) }
        }
        @if probe.no_broker {
            p.flash #no-broker { "The task queue does not report its consumers, so no saga is shown as waiting on a queue without a worker." }
        }
        div #live data-refresh="5" {
            nav.counts aria-label="stuck sagas by cause" {
                a class=(if filter.kind.is_none() { "count active" } else { "count" }) href="/admin/stuck" { "all causes" }
                @for (kind, n) in counts {
                    a class=(if filter.kind == Some(kind) { "count active" } else { "count" })
                        href=(format!("/admin/stuck?kind={}", kind.as_str())) data-kind=(kind.as_str()) {
                        span.n { (n) } " " (kind.label())
                    }
                }
            }
            table.rows data-view="stuck" {
                thead { tr {
                    th { input type="checkbox" .select-all form="bulk" aria-label="select all"; }
                    th { "id" } th { "type" } th { "status" } th { "why it is stuck" } th { "activity" }
                    th { "last change" } th { "created" }
                } }
                tbody {
                    @if rows.is_empty() { tr { td colspan="8" .empty { "Nothing is stuck." } } }
                    @for r in &rows {
                        @let mine: Vec<&TimerRow> = timers.iter().filter(|t| t.workflow_id == r.id).collect();
                        @let why = stuck::why(r, &mine, &probe, now, st.config.timer_grace);
                        tr data-id=(r.id) data-kind=(why.kind.map_or("none", StuckKind::as_str)) {
                            td { input type="checkbox" name="ids" value=(r.id) form="bulk" aria-label="select"; }
                            td.id { a href=(format!("/admin/workflows/{}", r.id)) { (short(r.id)) } }
                            td { (r.workflow_type) " v" (r.version) }
                            td { (badge(&r.status)) }
                            td.why { (why.line) }
                            td { @if let Some(a) = &why.activity { code { (a) } } }
                            td { (human(now - r.updated_at)) " ago" }
                            td { (time(r.created_at)) }
                        }
                    }
                }
            }
        }
        @if let Some(cursor) = next {
            p.pager { a #next-page href=(format!("/admin/stuck?{base}{}cursor={cursor}", if base.is_empty() { "" } else { "&" })) { "Older →" } }
        }
        (stuck_filter_form(&params, st.committer.registry()))
        (bulk_form(&op, "stuck", &base, None))
    };
    let frame = Frame {
        title: "Stuck".into(),
        op: &op,
        flash: take_flash(&headers),
        nav: "stuck",
    };
    Ok(page(&st, frame, body))
}

/// A filter's `select` of `options` (from the registry's definitions), keeping a value the URL
/// carries although no deployed definition names it any more.
fn choices(name: &str, current: &Option<String>, options: &[String]) -> Markup {
    let current = blank(current);
    let stray = current.filter(|c| !options.iter().any(|o| o == c));
    html! {
        select name=(name) {
            option value="" { "any" }
            @for o in options {
                option value=(o) selected[current == Some(o.as_str())] { (o) }
            }
            @if let Some(c) = stray { option value=(c) selected { (c) } }
        }
    }
}

/// The stuck view's filters; the activities and types offered are those of the deployed
/// definitions, so a new workflow's show up without a change here.
fn stuck_filter_form(p: &StuckParams, registry: &orderflow_core::Registry) -> Markup {
    let v = |o: &Option<String>| o.clone().unwrap_or_default();
    let types: Vec<String> = registry.types().map(str::to_owned).collect();
    html! {
        details.filters open {
            summary { "Filter" }
            form method="get" action="/admin/stuck" .filters {
                label { "Cause"
                    select name="kind" {
                        option value="" { "any" }
                        @for k in StuckKind::ALL {
                            option value=(k.as_str()) selected[p.kind.as_deref() == Some(k.as_str())] { (k.label()) }
                        }
                    }
                }
                label { "Activity" (choices("activity", &p.activity, &registry.activities())) }
                label { "Type" (choices("type", &p.workflow_type, &types)) }
                label { "Created after (UTC)" input name="created_after" type="datetime-local" step="1" value=(v(&p.created_after)); }
                label { "Created before (UTC)" input name="created_before" type="datetime-local" step="1" value=(v(&p.created_before)); }
                button type="submit" { "Apply" }
                a href="/admin/stuck" { "Clear" }
            }
        }
    }
}

// ---- detail ----

/// One attempt of one step, put together from the history.
struct Attempt {
    step: String,
    activity: String,
    phase: Phase,
    attempt: u32,
    scheduled: DateTime<Utc>,
    ended: Option<DateTime<Utc>>,
    outcome: &'static str,
    error: Option<String>,
}

fn attempts(history: &[RecordedEvent]) -> Vec<Attempt> {
    let mut out: Vec<Attempt> = Vec::new();
    let mut by_task: BTreeMap<orderflow_core::TaskId, usize> = BTreeMap::new();
    let mut by_timeout: BTreeMap<orderflow_core::TimerId, orderflow_core::TaskId> = BTreeMap::new();
    for e in history {
        // A result settles its attempt; an ignored one (late, duplicate) changes nothing.
        if e.ignored.is_none() {
            let settle = |out: &mut Vec<Attempt>, i: usize, outcome, error| {
                let a: &mut Attempt = &mut out[i];
                if a.ended.is_none() {
                    a.ended = Some(e.at);
                    a.outcome = outcome;
                    a.error = error;
                }
            };
            match &e.event {
                Event::ActivityCompleted { task_id, .. } => {
                    if let Some(&i) = by_task.get(task_id) {
                        settle(&mut out, i, "completed", None);
                    }
                }
                Event::ActivityFailed { task_id, error } => {
                    if let Some(&i) = by_task.get(task_id) {
                        settle(
                            &mut out,
                            i,
                            "failed",
                            Some(format!("{}: {}", error.code, error.message)),
                        );
                    }
                }
                Event::TimerFired { timer_id } => {
                    if let Some(i) = by_timeout.get(timer_id).and_then(|t| by_task.get(t)) {
                        settle(
                            &mut out,
                            *i,
                            "timed out",
                            Some("no result within the start-to-close timeout".into()),
                        );
                    }
                }
                Event::TerminateRequested { .. } => {
                    for a in out.iter_mut().filter(|a| a.ended.is_none()) {
                        a.ended = Some(e.at);
                        a.outcome = "abandoned";
                    }
                }
                _ => {}
            }
        }
        for c in &e.commands {
            match c {
                Command::ScheduleActivity(t) => {
                    by_task.insert(t.task_id, out.len());
                    out.push(Attempt {
                        step: t.step.clone(),
                        activity: t.activity.clone(),
                        phase: t.phase,
                        attempt: t.attempt,
                        scheduled: e.at,
                        ended: None,
                        outcome: "out",
                        error: None,
                    });
                }
                Command::StartTimer {
                    timer_id,
                    purpose: TimerPurpose::AttemptTimeout { task_id },
                    ..
                } => {
                    by_timeout.insert(*timer_id, *task_id);
                }
                _ => {}
            }
        }
    }
    out
}

/// The W3C trace id of a saga: its workflow id's 16 bytes, so a trace is found from the id
/// alone.
pub fn trace_id(id: Uuid) -> String {
    id.simple().to_string()
}

/// `GET /admin/workflows/{id}`: everything about one saga, and the actions on it.
pub async fn detail_page(
    State(st): State<AdminState>,
    op: Operator,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, AdminError> {
    let id: WorkflowId = id
        .parse()
        .map_err(|_| AdminError::bad("id", format!("`{id}` is not a workflow id (a UUID)")))?;
    let Some((row, history)) = st.db.workflow(id.0).await? else {
        return archived_page(&st, &op, &headers, id).await;
    };
    let timers = st.db.timers_of(&[id.0]).await?;
    let state: Box<dyn WorkflowState> = serde_json::from_value(row.state.clone())
        .map_err(|e| AdminError::Internal(anyhow::anyhow!("workflow {id} snapshot: {e}")))?;
    let saga: Option<&SagaState> = state.as_any().downcast_ref();
    let mut view = state.view();
    if let Some(def) = st
        .committer
        .registry()
        .get(&row.workflow_type, row.version as u32)
    {
        def.describe(&mut view);
    }
    let tries = attempts(&history);
    let compensations: BTreeMap<String, String> = tries
        .iter()
        .filter(|a| a.phase == Phase::Compensate)
        .map(|a| (a.step.clone(), a.activity.clone()))
        .collect();
    let cursor = saga.map(|s| s.cursor);
    let status: WorkflowStatus = view.status;
    let now = crate::apply::now();
    let step_names: Vec<String> = view.steps.iter().map(|s| s.name.clone()).collect();
    let reachable: Vec<&String> = step_names
        .iter()
        .take(cursor.map_or(0, |c| c + 1))
        .collect();
    let failing_comp = saga
        .filter(|s| {
            s.status == WorkflowStatus::NeedsAttention && s.attention == Some(Phase::Compensate)
        })
        .map(|s| s.steps[s.cursor].name.clone());
    let terminal = status.is_terminal();
    let body = html! {
        div.detail-head {
            h1 { (row.workflow_type) " " code { (id) } }
            p {
                (badge(status.as_str())) " version " (row.version)
                " · created " (time(row.created_at)) " · updated " (time(row.updated_at))
            }
            @if let Some(r) = &view.reason { p.reason { (r) } }
            p.meta {
                "business keys: " (keys(&row.business_keys))
                " · trace id " code #trace-id { (trace_id(id.0)) }
                " · " a #download-history href=(format!("/admin/workflows/{id}/history.json")) download { "Download history (JSON)" }
            }
        }
        section #timeline-section {
            h2 { "Steps" }
            div.timeline-wrap { (timeline::svg(&view.steps, &compensations, cursor)) }
        }
        section #actions {
            h2 { "Actions" }
            @if terminal {
                p.muted { "The saga is " (status.as_str()) "; no action can move it again." }
            } @else {
                div.actions {
                    (action_form(&op, id.0, "retry", "Retry now", "Run the waiting or failed step now, without waiting for its backoff.", html! {}))
                    (action_form(&op, id.0, "retry-from", "Retry from step", "Run the forward path again from a step; re-run steps keep their idempotency keys.", html! {
                        label { "Step" select name="step" required {
                            @for s in &reachable { option value=(s) { (s) } }
                        } }
                    }))
                    (action_form(&op, id.0, "cancel", "Cancel (compensate)", "Undo every completed step in reverse order.", html! {}))
                    (action_form(&op, id.0, "terminate", "Terminate", "Stop now and compensate nothing.", html! {}))
                    (action_form(&op, id.0, "signal", "Send signal", "Deliver a named signal with a JSON payload.", html! {
                        label { "Signal name" input name="name" required pattern="[A-Za-z0-9_.\\-]{1,64}"; }
                        label { "Payload (JSON)" textarea name="payload" rows="3" { "{}" } }
                    }))
                    @if let Some(step) = &failing_comp {
                        (action_form(&op, id.0, "resolve", "Mark compensation resolved", "The failed compensation was repaired by hand; go on compensating.", html! {
                            input type="hidden" name="step" value=(step);
                            p { "Step " code { (step) } }
                        }))
                    }
                }
            }
        }
        section {
            h2 { "Step states" }
            table.rows #steps {
                thead { tr { th { "step" } th { "activity" } th { "kind" } th { "state" } th { "attempts" }
                    th { "compensation attempts" } th { "last error" } th { "started" } th { "finished" } th { "took" } } }
                tbody {
                    @for s in &view.steps {
                        tr data-step=(s.name) {
                            td { (s.name) } td { code { (s.activity) } } td { (s.kind) }
                            td { span class=(format!("st st-{}", timeline::status_word(s.status))) { (timeline::status_word(s.status)) } }
                            td { (s.attempts) } td { (s.compensation_attempts) }
                            td.error { @if let Some(e) = &s.last_error { code { (e.code) } ": " (e.message) } }
                            td { @if let Some(t) = s.started_at { (time(t)) } }
                            td { @if let Some(t) = s.finished_at { (time(t)) } }
                            td { @if let (Some(a), Some(b)) = (s.started_at, s.finished_at) { (ms(b - a)) } }
                        }
                    }
                }
            }
        }
        section {
            h2 { "Attempts" }
            table.rows #attempts {
                thead { tr { th { "step" } th { "phase" } th { "attempt" } th { "activity" } th { "scheduled" }
                    th { "outcome" } th { "took" } th { "error" } } }
                tbody {
                    @for a in &tries {
                        tr data-outcome=(a.outcome) {
                            td { (a.step) } td { (if a.phase == Phase::Forward { "forward" } else { "compensate" }) }
                            td { (a.attempt) } td { code { (a.activity) } } td { (time(a.scheduled)) }
                            td { (a.outcome) }
                            td { @match a.ended { Some(e) => (ms(e - a.scheduled)), None => { (ms(now - a.scheduled)) " so far" } } }
                            td.error { (a.error.as_deref().unwrap_or("")) }
                        }
                    }
                }
            }
        }
        @if !timers.is_empty() {
            section {
                h2 { "Pending timers" }
                table.rows #timers {
                    thead { tr { th { "purpose" } th { "due" } th { "" } } }
                    tbody { @for t in &timers {
                        tr {
                            td { (t.purpose.get("purpose").and_then(Value::as_str).unwrap_or("?"))
                                 @if let Some(s) = t.purpose.get("step").and_then(Value::as_str) { " " code { (s) } } }
                            td { (time(t.fire_at)) }
                            td { @if t.fire_at > now { "in " (human(t.fire_at - now)) } @else { span.overdue { "overdue by " (human(now - t.fire_at)) } } }
                        }
                    } }
                }
            }
        }
        section.io {
            h2 { "Input" }
            (json_pre(saga.map_or(&Value::Null, |s| &s.input)))
            h2 { "Outputs" }
            @for s in &view.steps {
                @if let Some(o) = &s.output {
                    details { summary { (s.name) } (json_pre(o)) }
                }
            }
        }
        section {
            h2 { "History" }
            table.rows #history {
                thead { tr { th { "#" } th { "at" } th { "event" } th { "details" } th { "commands" } } }
                tbody {
                    @for e in &history {
                        tr data-event=(e.event.kind()) class=(if is_operator(&e.event) { "operator" } else { "" }) {
                            td { (e.seq) }
                            td { (time(e.at)) }
                            td { code { (e.event.kind()) } }
                            td {
                                (event_summary(&e.event))
                                @if let Some(why) = &e.ignored { " " span.ignored { "ignored: " (why) } }
                                details { summary { "JSON" } (json_pre(&serde_json::to_value(&e.event).unwrap_or_default())) }
                            }
                            td.commands { @for c in &e.commands { div { (command_summary(c)) } } }
                        }
                    }
                }
            }
        }
    };
    let frame = Frame {
        title: format!("{} {}", row.workflow_type, id),
        op: &op,
        flash: take_flash(&headers),
        nav: "workflows",
    };
    Ok(page(&st, frame, body))
}

/// The detail page of an id the database no longer holds: where retention archived it, or
/// 404 when it never had it.
async fn archived_page(
    st: &AdminState,
    op: &Operator,
    headers: &HeaderMap,
    id: WorkflowId,
) -> Result<Response, AdminError> {
    let Some(at) = st.db.archived(id.0).await? else {
        return Err(AdminError::NotFound(format!("no workflow {id}")));
    };
    let Some(day) = at.archived_at else {
        // Claimed, and deleted in the next moments: the row was there a moment ago.
        return Err(AdminError::NotFound(format!(
            "workflow {id} is being archived; it was finished and past its retention"
        )));
    };
    let body = html! {
        h1 { (at.workflow_type) " " code { (id) } }
        p.archived #archived {
            "Archived on " time datetime=(day.to_rfc3339()) { (day.format("%Y-%m-%d")) }
            ": it finished and was kept for its retention, then written to the archive and \
             deleted from the database."
        }
        p { "Archive object: " code { (at.object_key) } }
        p { "Read its history with " code { "orderflow history export " (id) " --archive-url URL" } "." }
    };
    let frame = Frame {
        title: format!("{} {} (archived)", at.workflow_type, id),
        op,
        flash: take_flash(headers),
        nav: "workflows",
    };
    let mut res = page(st, frame, body);
    *res.status_mut() = axum::http::StatusCode::NOT_FOUND;
    Ok(res)
}

fn action_form(
    op: &Operator,
    id: Uuid,
    action: &str,
    label: &str,
    help: &str,
    extra: Markup,
) -> Markup {
    html! {
        form.action method="post" action=(format!("/admin/workflows/{id}/{action}"))
            data-confirm=(format!("{label}: are you sure?")) data-action=(action) {
            h3 { (label) }
            p.help { (help) }
            input type="hidden" name="csrf" value=(op.csrf);
            (extra)
            label { "Reason" input name="reason" required placeholder="why (recorded in the history)"; }
            button type="submit" { (label) }
        }
    }
}

fn ms(d: chrono::Duration) -> String {
    let ms = d.num_milliseconds();
    if ms < 10_000 {
        format!("{ms} ms")
    } else {
        human(d)
    }
}

fn is_operator(e: &Event) -> bool {
    matches!(
        e,
        Event::CancelRequested { .. }
            | Event::TerminateRequested { .. }
            | Event::RetryRequested { .. }
            | Event::RetryFromStep { .. }
            | Event::SignalReceived { .. }
            | Event::CompensationResolved { .. }
    )
}

/// The operator, the reason and what was asked, for the operator events; the gist for others.
pub fn event_summary(e: &Event) -> Markup {
    match e {
        Event::WorkflowStarted { version, .. } => html! { "version " (version) },
        Event::ActivityCompleted { task_id, .. } => html! { "task " code { (task_id) } },
        Event::ActivityFailed { error, .. } => {
            html! { code { (error.code) } ": " (error.message) @if !error.retryable { " (not retryable)" } }
        }
        Event::TimerFired { timer_id } => html! { "timer " code { (timer_id) } },
        Event::CancelRequested { actor, reason }
        | Event::TerminateRequested { actor, reason }
        | Event::RetryRequested { actor, reason } => {
            html! { "by " strong.actor { (actor) } ": " span.why { (reason) } }
        }
        Event::RetryFromStep {
            step,
            actor,
            reason,
        } => {
            html! { "from " code { (step) } " by " strong.actor { (actor) } ": " span.why { (reason) } }
        }
        Event::SignalReceived { name, actor, .. } => {
            html! { code { (name) } " by " strong.actor { (actor) } }
        }
        Event::CompensationResolved {
            step,
            actor,
            reason,
        } => {
            html! { code { (step) } " by " strong.actor { (actor) } ": " span.why { (reason) } }
        }
        // Events added after this page was written still show, as their JSON below.
        #[allow(unreachable_patterns)]
        _ => html! {},
    }
}

fn command_summary(c: &Command) -> Markup {
    match c {
        Command::ScheduleActivity(t) => html! {
            "schedule " code { (t.activity) } " #" (t.attempt)
            @if t.phase == Phase::Compensate { " (compensation)" }
        },
        Command::StartTimer {
            fire_at, purpose, ..
        } => {
            let what = match purpose {
                TimerPurpose::Retry { step, .. } => format!("retry {step}"),
                TimerPurpose::AttemptTimeout { .. } => "start-to-close".to_owned(),
                TimerPurpose::Deadline => "deadline".to_owned(),
                TimerPurpose::SignalTimeout { signal, .. } => {
                    format!("end of the wait for {signal}")
                }
            };
            html! { "timer " (what) " at " (time(*fire_at)) }
        }
        Command::CancelTimer { .. } => html! { "cancel timer" },
        Command::Finish { status, .. } => html! { "finish " (badge(status.as_str())) },
        Command::RequireAttention { reason } => html! { "needs attention: " (reason) },
    }
}

/// `GET /admin/workflows/{id}/history.json`: the history in the replay format, as a download.
pub async fn history_download(
    State(st): State<AdminState>,
    _op: Operator,
    Path(id): Path<String>,
) -> Result<Response, AdminError> {
    let id: WorkflowId = id
        .parse()
        .map_err(|_| AdminError::bad("id", format!("`{id}` is not a workflow id (a UUID)")))?;
    let (row, events) = st
        .db
        .workflow(id.0)
        .await?
        .ok_or_else(|| AdminError::NotFound(format!("no workflow {id}")))?;
    let history = History {
        workflow_id: id,
        workflow_type: row.workflow_type,
        version: row.version as u32,
        events,
    };
    let body =
        serde_json::to_string_pretty(&history).map_err(|e| AdminError::Internal(e.into()))?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/json".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"workflow-{id}.json\""),
            ),
        ],
        body,
    )
        .into_response())
}

// ---- audit ----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditParams {
    before: Option<String>,
}

/// `GET /admin/audit`: every operator action, newest first.
pub async fn audit_page(
    State(st): State<AdminState>,
    op: Operator,
    headers: HeaderMap,
    q: Result<Query<AuditParams>, QueryRejection>,
) -> Result<Response, AdminError> {
    let Query(params) = q.map_err(query_error)?;
    let before = time_param("before", &params.before)?;
    let rows = st.db.audit(before, 100).await?;
    let older = (rows.len() == 100)
        .then(|| rows.last().map(|r| r.at))
        .flatten();
    let body = html! {
        h1 { "Audit" }
        p.muted { "Every operator action, as recorded in the workflows' histories." }
        table.rows #audit {
            thead { tr { th { "at" } th { "workflow" } th { "action" } th { "actor and reason" } } }
            tbody {
                @if rows.is_empty() { tr { td colspan="4" .empty { "No operator action yet." } } }
                @for r in &rows {
                    @let event: Option<Event> = serde_json::from_value(r.event.clone()).ok();
                    tr data-id=(r.workflow_id) {
                        td { (time(r.at)) }
                        td.id {
                            a href=(format!("/admin/workflows/{}", r.workflow_id)) { (short(r.workflow_id)) }
                            " " (r.workflow_type.as_deref().unwrap_or("")) " "
                            @if let Some(s) = &r.status { (badge(s)) }
                        }
                        td { code { (event.as_ref().map_or("?", Event::kind)) } }
                        td { @if let Some(e) = &event { (event_summary(e)) } }
                    }
                }
            }
        }
        @if let Some(t) = older {
            p.pager { a href=(format!("/admin/audit?before={}", url_encode(&t.to_rfc3339()))) { "Older →" } }
        }
    };
    let frame = Frame {
        title: "Audit".into(),
        op: &op,
        flash: take_flash(&headers),
        nav: "audit",
    };
    Ok(page(&st, frame, body))
}

/// `GET /admin/emails`: the outbox, newest first, when the process has one.
pub async fn emails_page(
    State(st): State<AdminState>,
    op: Operator,
    headers: HeaderMap,
) -> Result<Response, AdminError> {
    let Some(outbox) = &st.config.outbox else {
        return Err(AdminError::NotFound(
            "this process sends emails for real; there is no outbox to show".into(),
        ));
    };
    let emails = outbox.recent(100).await.map_err(AdminError::Internal)?;
    let body = html! {
        h1 { "Emails" }
        p.muted { "What the notification service would have sent: it has no mail server here, so each message is kept in its outbox. The newest 100." }
        table.rows #emails {
            thead { tr { th { "at" } th { "to" } th { "subject and message" } } }
            tbody {
                @if emails.is_empty() { tr { td colspan="3" .empty { "No email yet." } } }
                @for e in &emails {
                    tr {
                        td { (time(e.at)) }
                        td { (e.to) }
                        td { details { summary { (e.subject) } pre { (e.raw) } } }
                    }
                }
            }
        }
    };
    let frame = Frame {
        title: "Emails".into(),
        op: &op,
        flash: take_flash(&headers),
        nav: "emails",
    };
    Ok(page(&st, frame, body))
}

// ---- bulk pages ----

/// The bulk preview: how many workflows the action will touch, a sample, and the final confirm.
#[allow(clippy::too_many_arguments)]
pub fn bulk_preview(
    st: &AdminState,
    op: &Operator,
    action: &str,
    step: Option<&str>,
    reason: &str,
    view: &str,
    query_str: &str,
    ids: &[Uuid],
    by_filter: bool,
    upto: Option<Uuid>,
    capped: bool,
) -> Response {
    let body = html! {
        h1 { "Confirm bulk action" }
        p #bulk-count {
            strong { (action_label(action)) }
            @if let Some(s) = step { " from step " code { (s) } }
            " will be applied to " strong.n { (ids.len()) } " workflow" @if ids.len() != 1 { "s" }
            @if by_filter { " (every one the " (view) " filter matches now" @if capped { ", capped at " (st.config.bulk_limit) } ")" }
            "."
        }
        p { "Reason: " span.why { (reason) } }
        @if !ids.is_empty() {
            form method="post" action="/admin/bulk" #bulk-confirm data-confirm=(format!("{} {} workflows?", action_label(action), ids.len())) {
                input type="hidden" name="csrf" value=(op.csrf);
                input type="hidden" name="action" value=(action);
                @if let Some(s) = step { input type="hidden" name="step" value=(s); }
                input type="hidden" name="reason" value=(reason);
                input type="hidden" name="view" value=(view);
                input type="hidden" name="query" value=(query_str);
                @if by_filter {
                    input type="hidden" name="target" value="filter";
                    @if let Some(u) = upto { input type="hidden" name="upto" value=(u); }
                } @else {
                    input type="hidden" name="target" value="selected";
                    @for id in ids { input type="hidden" name="ids" value=(id); }
                }
                button type="submit" { "Confirm: " (action_label(action)) " " (ids.len()) }
                " "
                a href=(back_href(view, query_str)) { "Back" }
            }
        } @else {
            p { a href=(back_href(view, query_str)) { "Back" } }
        }
        h2 { "Sample" }
        ul.sample { @for id in ids.iter().take(20) { li { a href=(format!("/admin/workflows/{id}")) { (id) } } } }
    };
    let frame = Frame {
        title: "Confirm bulk action".into(),
        op,
        flash: None,
        nav: if view == "stuck" {
            "stuck"
        } else {
            "workflows"
        },
    };
    page(st, frame, body)
}

/// Where a bulk action's pages lead back to.
pub fn back_href(view: &str, query_str: &str) -> String {
    let path = if view == "stuck" {
        "/admin/stuck"
    } else {
        "/admin/workflows"
    };
    if query_str.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{query_str}")
    }
}

pub fn action_label(action: &str) -> &'static str {
    match action {
        "retry" => "Retry now",
        "retry-from" => "Retry from step",
        "cancel" => "Cancel",
        "terminate" => "Terminate",
        "signal" => "Send signal",
        "resolve" => "Mark compensation resolved",
        _ => "Act",
    }
}

/// What a bulk action did.
#[derive(Debug, Default)]
pub struct BulkReport {
    pub applied: Vec<Uuid>,
    /// Refused by the decider, with why, grouped by reason.
    pub refused: BTreeMap<String, Vec<Uuid>>,
    pub missing: Vec<Uuid>,
}

pub fn bulk_result(
    st: &AdminState,
    op: &Operator,
    action: &str,
    view: &str,
    query_str: &str,
    report: &BulkReport,
) -> Response {
    let refused: usize = report.refused.values().map(Vec::len).sum();
    let body = html! {
        h1 { "Bulk action done" }
        p #bulk-result {
            strong { (action_label(action)) } ": "
            span.applied { (report.applied.len()) } " applied, "
            span.refused { (refused) } " refused, "
            span.missing { (report.missing.len()) } " not found."
        }
        @for (why, ids) in &report.refused {
            details { summary { (ids.len()) " refused: " (why) }
                ul { @for id in ids.iter().take(50) { li { a href=(format!("/admin/workflows/{id}")) { (id) } } } } }
        }
        p { a href=(back_href(view, query_str)) { "Back" } " · " a href="/admin/audit" { "Audit" } }
    };
    let frame = Frame {
        title: "Bulk action done".into(),
        op,
        flash: None,
        nav: if view == "stuck" {
            "stuck"
        } else {
            "workflows"
        },
    };
    page(st, frame, body)
}
