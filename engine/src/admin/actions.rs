//! Operator actions from the UI. Each is an event applied through the decider by the committer
//! (`Committer::apply`), with the logged-in operator as its actor and the reason they
//! typed, so it is checked like any other event, recorded in the history and listed in the audit
//! view; a refusal (say, cancel after the pivot) records nothing and is shown to the operator.
//!
//! Bulk actions go in two steps: a preview that counts and samples the workflows the action
//! would touch, then a confirmed run over the same set. A run by filter never reaches a workflow
//! newer than the preview's newest, so sagas started in between are left alone.

use axum::{
    extract::{Path, Query, State, rejection::FormRejection},
    http::{Uri, header},
    response::{IntoResponse, Redirect, Response},
};
use orderflow_core::{Event, WorkflowId};
use serde_json::Value;
use uuid::Uuid;

use super::{
    AdminError, AdminState,
    auth::{Fields, Operator},
    views::{self, BulkReport, ListParams, StuckParams},
};
use crate::apply::Outcome;

/// Most events applied in one transaction by a bulk action: big enough to amortize the commit,
/// small enough that row locks are held briefly.
const BULK_CHUNK: usize = 100;

fn reason(f: &Fields) -> Result<String, AdminError> {
    let r = f.required("reason")?;
    if r.chars().count() > 1000 {
        return Err(AdminError::bad("reason", "at most 1000 characters"));
    }
    Ok(r.to_owned())
}

/// The event for `action`, built from the form.
fn event_for(action: &str, f: &Fields, actor: &str) -> Result<Event, AdminError> {
    let actor = actor.to_owned();
    Ok(match action {
        "retry" => Event::RetryRequested {
            actor,
            reason: reason(f)?,
        },
        "retry-from" => Event::RetryFromStep {
            step: f.required("step")?.to_owned(),
            actor,
            reason: reason(f)?,
        },
        "cancel" => Event::CancelRequested {
            actor,
            reason: reason(f)?,
        },
        "terminate" => Event::TerminateRequested {
            actor,
            reason: reason(f)?,
        },
        "resolve" => Event::CompensationResolved {
            step: f.required("step")?.to_owned(),
            actor,
            reason: reason(f)?,
        },
        "signal" => {
            let name = f.required("name")?;
            let valid = name.len() <= 64
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
            if !valid {
                return Err(AdminError::bad(
                    "name",
                    "a signal name is 1 to 64 letters, digits, `_`, `.` or `-`",
                ));
            }
            let payload = match f.filled("payload") {
                None => Value::Null,
                Some(p) => serde_json::from_str(p)
                    .map_err(|e| AdminError::bad("payload", format!("not JSON: {e}")))?,
            };
            // The signal event records its sender but has no reason field; the reason the
            // form asks for goes to the log.
            let why = reason(f)?;
            tracing::info!(%actor, signal = name, reason = %why, "admin sends a signal");
            Event::SignalReceived {
                name: name.to_owned(),
                payload,
                actor,
            }
        }
        other => return Err(AdminError::NotFound(format!("no action `{other}`"))),
    })
}

/// `POST /admin/workflows/{id}/{action}`: one action on one saga, then back to its page with
/// what happened.
pub async fn single(
    State(st): State<AdminState>,
    op: Operator,
    Path((id, action)): Path<(String, String)>,
    form: Result<axum::Form<Vec<(String, String)>>, FormRejection>,
) -> Result<Response, AdminError> {
    let f = Fields::from(form)?;
    op.check_csrf(f.one("csrf"))?;
    let id: WorkflowId = id
        .parse()
        .map_err(|_| AdminError::bad("id", format!("`{id}` is not a workflow id (a UUID)")))?;
    let event = event_for(&action, &f, &op.actor)?;
    let kind = event.kind();
    // A refusal keeps nothing, not even a fingerprint the load rechecked.
    let applied = |o: &[Outcome]| matches!(o, [Outcome::Applied { .. }]);
    let outcome = st
        .committer
        .apply(vec![(id, event)], Some(Box::new(applied)))
        .await?
        .pop()
        .unwrap_or(Outcome::NotFound);
    let (ok, msg) = match outcome {
        Outcome::Applied { seq, status, .. } => {
            tracing::info!(workflow_id = %id, actor = %op.actor, event = kind, seq, "admin action applied");
            (
                true,
                format!(
                    "{} recorded as event #{seq}; the saga is {status}.",
                    views::action_label(&action)
                ),
            )
        }
        Outcome::Rejected(e) => (
            false,
            format!("{} refused: {e}", views::action_label(&action)),
        ),
        Outcome::NotFound => return Err(AdminError::NotFound(format!("no workflow {id}"))),
    };
    let mut res = Redirect::to(&format!("/admin/workflows/{id}")).into_response();
    res.headers_mut().append(
        header::SET_COOKIE,
        views::flash_cookie(ok, &msg, st.config.secure_cookies),
    );
    Ok(res)
}

/// A bulk action as the forms describe it.
struct Bulk {
    action: String,
    step: Option<String>,
    reason: String,
    view: String,
    query: String,
    by_filter: bool,
}

impl Bulk {
    fn parse(f: &Fields) -> Result<Self, AdminError> {
        let action = f.required("action")?.to_owned();
        if !["retry", "retry-from", "cancel", "terminate"].contains(&action.as_str()) {
            return Err(AdminError::bad(
                "action",
                format!("`{action}` is not a bulk action (retry, retry-from, cancel, terminate)"),
            ));
        }
        let step = f.filled("step").map(str::to_owned);
        if action == "retry-from" && step.is_none() {
            return Err(AdminError::bad("step", "retry from a step needs the step"));
        }
        let view = f.one("view").unwrap_or("list").to_owned();
        if view != "list" && view != "stuck" {
            return Err(AdminError::bad("view", "`view` is `list` or `stuck`"));
        }
        let by_filter = match f.one("target").unwrap_or("selected") {
            "selected" => false,
            "filter" => true,
            other => {
                return Err(AdminError::bad(
                    "target",
                    format!("`{other}` is neither `selected` nor `filter`"),
                ));
            }
        };
        Ok(Self {
            action,
            step: if f.one("action") == Some("retry-from") {
                step
            } else {
                None
            },
            reason: reason(f)?,
            view,
            query: f.one("query").unwrap_or_default().to_owned(),
            by_filter,
        })
    }

    /// The workflows to act on, newest first, at most `limit + 1` (one more tells it was
    /// capped).
    async fn targets(
        &self,
        st: &AdminState,
        f: &Fields,
        upto: Option<Uuid>,
    ) -> Result<Vec<Uuid>, AdminError> {
        let limit = st.config.bulk_limit;
        if !self.by_filter {
            let ids = f
                .all("ids")
                .into_iter()
                .map(|s| {
                    Uuid::parse_str(s)
                        .map_err(|_| AdminError::bad("ids", format!("`{s}` is not a workflow id")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            if ids.is_empty() {
                return Err(AdminError::bad(
                    "ids",
                    "no workflow is checked; check some rows or act on the whole filter",
                ));
            }
            if ids.len() as i64 > limit {
                return Err(AdminError::bad(
                    "ids",
                    format!("at most {limit} workflows at once"),
                ));
            }
            return Ok(ids);
        }
        let uri: Uri = format!("/?{}", self.query)
            .parse()
            .map_err(|_| AdminError::bad("query", "not a query string"))?;
        if self.view == "stuck" {
            let Query(p) = Query::<StuckParams>::try_from_uri(&uri)
                .map_err(|e| AdminError::bad("query", e.body_text()))?;
            let probe = st.probe.check(&*st.db).await?;
            let mut filter = p.filter(st, &probe, limit + 1)?;
            filter.before_id = None;
            filter.upto_id = upto;
            Ok(st.db.stuck_ids(&filter).await?)
        } else {
            let Query(p) = Query::<ListParams>::try_from_uri(&uri)
                .map_err(|e| AdminError::bad("query", e.body_text()))?;
            let mut filter = p.filter(limit + 1)?;
            filter.before_id = None;
            filter.upto_id = upto;
            Ok(st.db.list_ids(&filter).await?)
        }
    }
}

/// `POST /admin/bulk/preview`: counts what a bulk action would touch and asks to confirm.
pub async fn bulk_preview(
    State(st): State<AdminState>,
    op: Operator,
    form: Result<axum::Form<Vec<(String, String)>>, FormRejection>,
) -> Result<Response, AdminError> {
    let f = Fields::from(form)?;
    op.check_csrf(f.one("csrf"))?;
    let b = Bulk::parse(&f)?;
    let mut ids = b.targets(&st, &f, None).await?;
    let capped = ids.len() as i64 > st.config.bulk_limit;
    ids.truncate(st.config.bulk_limit as usize);
    let upto = ids.iter().max().copied();
    Ok(views::bulk_preview(
        &st,
        &op,
        &b.action,
        b.step.as_deref(),
        &b.reason,
        &b.view,
        &b.query,
        &ids,
        b.by_filter,
        upto,
        capped,
    ))
}

/// `POST /admin/bulk`: applies a confirmed bulk action, a chunk of workflows per transaction.
pub async fn bulk_run(
    State(st): State<AdminState>,
    op: Operator,
    form: Result<axum::Form<Vec<(String, String)>>, FormRejection>,
) -> Result<Response, AdminError> {
    let f = Fields::from(form)?;
    op.check_csrf(f.one("csrf"))?;
    let b = Bulk::parse(&f)?;
    let upto = f
        .filled("upto")
        .map(|s| Uuid::parse_str(s).map_err(|_| AdminError::bad("upto", "not a workflow id")))
        .transpose()?;
    if b.by_filter && upto.is_none() {
        return Err(AdminError::bad(
            "upto",
            "a bulk action by filter runs from its preview",
        ));
    }
    let mut ids = b.targets(&st, &f, upto).await?;
    ids.truncate(st.config.bulk_limit as usize);
    let mut action_fields = Fields::default();
    action_fields.0.push(("reason".into(), b.reason.clone()));
    if let Some(s) = &b.step {
        action_fields.0.push(("step".into(), s.clone()));
    }
    let event = event_for(&b.action, &action_fields, &op.actor)?;
    let mut report = BulkReport::default();
    for chunk in ids.chunks(BULK_CHUNK) {
        let events: Vec<(WorkflowId, Event)> = chunk
            .iter()
            .map(|id| (WorkflowId(*id), event.clone()))
            .collect();
        let outcomes = st.committer.apply(events, None).await?;
        for (id, outcome) in chunk.iter().zip(outcomes) {
            match outcome {
                Outcome::Applied { .. } => report.applied.push(*id),
                Outcome::Rejected(e) => report.refused.entry(e.to_string()).or_default().push(*id),
                Outcome::NotFound => report.missing.push(*id),
            }
        }
    }
    tracing::info!(
        actor = %op.actor,
        action = %b.action,
        applied = report.applied.len(),
        refused = report.refused.values().map(Vec::len).sum::<usize>(),
        "admin bulk action"
    );
    Ok(views::bulk_result(
        &st, &op, &b.action, &b.view, &b.query, &report,
    ))
}
