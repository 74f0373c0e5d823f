//! `/api/v1/workflows`: start, read, list and operate workflows. Operator actions are events
//! applied through the decider like any other, so they land in the history with actor and reason.

use std::collections::BTreeMap;

use axum::{
    Json,
    body::Bytes,
    extract::{
        Path, Query, State,
        rejection::{BytesRejection, QueryRejection},
    },
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use orderflow_core::{
    Event, History, WorkflowId, WorkflowState, WorkflowStatus,
    json_body::{data_field, nul_in},
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{
    ApiError, AppState, Authenticated,
    openapi::{HistoryDoc, StepDoc, WorkflowStatusDoc},
    problem::Problem,
};
use crate::{
    apply::{Outcome, StartError, StartRequest},
    store::{WorkflowRow, reads::ListFilter},
};

/// Parses a JSON body; serde's message names the offending field.
fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(ApiError::bad(
            "body",
            "the request body is empty; a JSON object is required",
        ));
    }
    let value = serde_json::from_slice(body).map_err(|e| {
        let field = match e.classify() {
            serde_json::error::Category::Data => data_field(&e.to_string(), "body"),
            _ => "body".to_owned(),
        };
        ApiError::bad(&field, format!("invalid JSON body: {e}"))
    })?;
    match nul_in(body) {
        Some(field) => Err(no_nul(&field)),
        None => Ok(value),
    }
}

/// 400 for text with a NUL character, which PostgreSQL's text and jsonb cannot store.
fn no_nul(field: &str) -> ApiError {
    ApiError::bad(field, "text may not contain the NUL character (\\u0000)")
}

fn workflow_id(raw: &str) -> Result<WorkflowId, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::bad("id", format!("`{raw}` is not a workflow id (a UUID)")))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartBody {
    /// A registered workflow type (`order`).
    #[serde(rename = "type")]
    workflow_type: String,
    /// The workflow's input, checked by its definition.
    input: Value,
    #[serde(default)]
    business_keys: BTreeMap<String, String>,
}

/// `POST /workflows`: 201 with the new workflow; with a repeated `Idempotency-Key` and the same
/// body, 200 with the first one; with another body, 409.
#[utoipa::path(
    post,
    path = "/api/v1/workflows",
    tag = "workflows",
    params(("Idempotency-Key" = Option<String>, Header, description = "1 to 255 characters; the same key and body start one workflow")),
    request_body = StartBody,
    responses(
        (status = 201, description = "Started", body = WorkflowDetail),
        (status = 200, description = "Started earlier with this Idempotency-Key", body = WorkflowDetail),
        (status = 400, description = "The body or the Idempotency-Key is invalid; `field` names it", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The Idempotency-Key was used with another body", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is too large", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Unknown `type`, or `input` its definition refuses", body = Problem, content_type = "application/problem+json"),
        (status = "default", description = "Any other error", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn start(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let received = std::time::SystemTime::now();
    let body = body?;
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => {
            let k = v
                .to_str()
                .map_err(|_| ApiError::bad("Idempotency-Key", "must be visible ASCII"))?;
            if k.is_empty() || k.len() > 255 {
                return Err(ApiError::bad(
                    "Idempotency-Key",
                    "must be 1 to 255 characters",
                ));
            }
            Some(k.to_owned())
        }
    };
    let parsed: StartBody = parse(&body)?;
    let canonical: Value =
        serde_json::from_slice(&body).map_err(|e| ApiError::bad("body", e.to_string()))?;
    let hash = hex(&Sha256::digest(canonical.to_string().as_bytes()));
    let req = StartRequest {
        workflow_type: parsed.workflow_type.clone(),
        input: parsed.input,
        business_keys: json!(parsed.business_keys),
        idempotency_key: key,
        request_hash: Some(hash),
    };
    let started = st.committer.start(req).await.map_err(|e| match e {
        StartError::UnknownType(t) => {
            ApiError::unprocessable("type", format!("unknown workflow type `{t}`"))
        }
        StartError::Invalid(e) => ApiError::unprocessable("input", e.to_string()),
        StartError::KeyReused => ApiError::Conflict(
            "this Idempotency-Key was already used with a different request body".into(),
        ),
        StartError::Apply(e) => ApiError::Internal(e.into()),
    })?;
    if started.created {
        trace_root(started.id, &parsed.workflow_type, received, &headers);
    }
    let row = load(&st, started.id).await?;
    let status = if started.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let location = format!("/api/v1/workflows/{}", started.id);
    Ok((
        status,
        [(header::LOCATION, location)],
        Json(detail(&st, &row)?),
    )
        .into_response())
}

/// Records the saga's root span: this request, from its arrival until the saga was committed.
/// The trace is the saga's own (its id is the workflow id); a caller's `traceparent` becomes a
/// link to it.
fn trace_root(
    id: WorkflowId,
    workflow_type: &str,
    received: std::time::SystemTime,
    headers: &HeaderMap,
) {
    use orderflow_telemetry::KeyValue;
    let caller = headers
        .get(orderflow_telemetry::TRACEPARENT)
        .and_then(|v| v.to_str().ok());
    orderflow_telemetry::record_root(
        id.0,
        "POST /api/v1/workflows",
        received,
        vec![
            KeyValue::new("http.request.method", "POST"),
            KeyValue::new("http.route", "/api/v1/workflows"),
            KeyValue::new("http.response.status_code", 201),
            KeyValue::new("workflow.id", id.to_string()),
            KeyValue::new("workflow.type", workflow_type.to_owned()),
        ],
        caller,
    );
}

async fn load(st: &AppState, id: WorkflowId) -> Result<WorkflowRow, ApiError> {
    if let Some(row) = st.db.get(id.0).await? {
        return Ok(row);
    }
    // Retention may have archived it: say so rather than that it never existed.
    Err(ApiError::NotFound(match st.db.archived(id.0).await? {
        Some(at) => match at.archived_at {
            Some(day) => format!(
                "workflow {id} was archived on {} (archive object {}) and is no longer in the \
                 database",
                day.format("%Y-%m-%d"),
                at.object_key
            ),
            None => format!("workflow {id} is being archived"),
        },
        None => format!("no workflow {id}"),
    }))
}

/// A workflow as the list shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Summary {
    id: Uuid,
    #[serde(rename = "type")]
    workflow_type: String,
    version: i32,
    #[schema(value_type = WorkflowStatusDoc)]
    status: String,
    /// Why it is compensating, needs attention or ended early.
    reason: Option<String>,
    /// Names and values the workflow can be found by (`order_id`, `user_id`).
    #[schema(value_type = std::collections::HashMap<String, String>)]
    business_keys: Value,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

fn summary(row: &WorkflowRow) -> Summary {
    Summary {
        id: row.id,
        workflow_type: row.workflow_type.clone(),
        version: row.version,
        status: row.status.clone(),
        reason: row.reason.clone(),
        business_keys: row.business_keys.clone(),
        created_at: row.created_at,
        updated_at: row.updated_at,
    }
}

/// A workflow with each step's state.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WorkflowDetail {
    #[serde(flatten)]
    summary: Summary,
    #[schema(value_type = Vec<StepDoc>)]
    steps: Vec<orderflow_core::StepView>,
    /// The position of its last event.
    last_seq: i64,
}

/// A page of workflows.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WorkflowPage {
    items: Vec<Summary>,
    /// Pass as `cursor` for the next page; absent on the last page.
    next_cursor: Option<String>,
}

/// What an operator action or a signal did.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ActionResult {
    id: Uuid,
    #[schema(value_type = WorkflowStatusDoc)]
    status: WorkflowStatus,
    /// The position of the event recorded.
    seq: i64,
}

fn detail(st: &AppState, row: &WorkflowRow) -> Result<WorkflowDetail, ApiError> {
    let state: Box<dyn WorkflowState> = serde_json::from_value(row.state.clone())
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("workflow {} snapshot: {e}", row.id)))?;
    let mut view = state.view();
    if let Some(def) = st
        .committer
        .registry()
        .get(&row.workflow_type, row.version as u32)
    {
        def.describe(&mut view);
    }
    Ok(WorkflowDetail {
        summary: summary(row),
        steps: view.steps,
        last_seq: row.last_seq,
    })
}

/// `GET /workflows/{id}`: status, version, each step's state, attempts, last error, times.
#[utoipa::path(
    get,
    path = "/api/v1/workflows/{id}",
    tag = "workflows",
    params(("id" = String, Path, description = "The workflow id (a UUID)")),
    responses(
        (status = 200, description = "The workflow", body = WorkflowDetail),
        (status = 400, description = "`id` is not a UUID", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such workflow", body = Problem, content_type = "application/problem+json"),
        (status = "default", description = "Any other error", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<WorkflowDetail>, ApiError> {
    let row = load(&st, workflow_id(&id)?).await?;
    Ok(Json(detail(&st, &row)?))
}

/// `GET /workflows/{id}/history`: the events in the replay format.
#[utoipa::path(
    get,
    path = "/api/v1/workflows/{id}/history",
    tag = "workflows",
    params(("id" = String, Path, description = "The workflow id (a UUID)")),
    responses(
        (status = 200, description = "The history", body = HistoryDoc),
        (status = 400, description = "`id` is not a UUID", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such workflow", body = Problem, content_type = "application/problem+json"),
        (status = "default", description = "Any other error", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn history(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<History>, ApiError> {
    let id = workflow_id(&id)?;
    let row = load(&st, id).await?;
    let events = st.db.history(id.0).await?;
    Ok(Json(History {
        workflow_id: id,
        workflow_type: row.workflow_type,
        version: row.version as u32,
        events,
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    status: Option<String>,
    #[serde(rename = "type")]
    workflow_type: Option<String>,
    business_key: Option<String>,
    created_after: Option<String>,
    created_before: Option<String>,
    cursor: Option<String>,
    limit: Option<String>,
}

fn time_param(field: &str, raw: &Option<String>) -> Result<Option<DateTime<Utc>>, ApiError> {
    raw.as_deref()
        .map(|s| {
            DateTime::parse_from_rfc3339(s)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| ApiError::bad(field, format!("`{s}` is not an RFC 3339 time")))
        })
        .transpose()
}

/// `GET /workflows`: newest first, filtered, paged by an opaque cursor.
#[utoipa::path(
    get,
    path = "/api/v1/workflows",
    tag = "workflows",
    params(
        ("status" = Option<String>, Query, description = "Only workflows in this status"),
        ("type" = Option<String>, Query, description = "Only workflows of this type"),
        ("business_key" = Option<String>, Query, description = "Only workflows with a business key of this value"),
        ("created_after" = Option<String>, Query, description = "RFC 3339 time"),
        ("created_before" = Option<String>, Query, description = "RFC 3339 time"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
        ("limit" = Option<String>, Query, description = "1 to 500 (default 50)"),
    ),
    responses(
        (status = 200, description = "A page of workflows", body = WorkflowPage),
        (status = 400, description = "A parameter is invalid; `field` names it", body = Problem, content_type = "application/problem+json"),
        (status = "default", description = "Any other error", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list(
    State(st): State<AppState>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<WorkflowPage>, ApiError> {
    let Query(q) = q.map_err(|e| {
        let msg = e.body_text();
        ApiError::bad(&data_field(&msg, "query"), msg)
    })?;
    let status = q
        .status
        .as_deref()
        .map(|s| {
            s.parse::<WorkflowStatus>()
                .map_err(|e| ApiError::bad("status", e))
        })
        .transpose()?;
    let limit = match q.limit.as_deref() {
        None => 50,
        Some(l) => match l.parse::<i64>() {
            Ok(n) if (1..=500).contains(&n) => n,
            _ => {
                return Err(ApiError::bad(
                    "limit",
                    format!("`{l}` is not a number from 1 to 500"),
                ));
            }
        },
    };
    let before_id = q
        .cursor
        .as_deref()
        .map(|c| {
            Uuid::parse_str(c)
                .map_err(|_| ApiError::bad("cursor", format!("`{c}` is not a cursor")))
        })
        .transpose()?;
    for (field, text) in [
        ("type", &q.workflow_type),
        ("business_key", &q.business_key),
    ] {
        if text.as_deref().is_some_and(|t| t.contains('\0')) {
            return Err(no_nul(field));
        }
    }
    let filter = ListFilter {
        status: status.map(|s| s.as_str().to_owned()),
        workflow_type: q.workflow_type,
        business_key: q.business_key,
        created_after: time_param("created_after", &q.created_after)?,
        created_before: time_param("created_before", &q.created_before)?,
        before_id,
        // One row more than asked tells whether another page exists.
        limit: limit + 1,
        ..ListFilter::default()
    };
    let mut rows = st.db.list_workflows(&filter).await?;
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let next = more
        .then(|| rows.last().map(|r| r.id.to_string()))
        .flatten();
    let items = rows.iter().map(summary).collect();
    Ok(Json(WorkflowPage {
        items,
        next_cursor: next,
    }))
}

/// `GET /workflow-counts`: how many workflows are in each status.
#[utoipa::path(
    get,
    path = "/api/v1/workflow-counts",
    tag = "workflows",
    responses(
        (status = 200, description = "Workflows per status", body = std::collections::HashMap<String, i64>),
        (status = "default", description = "Any other error", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn counts(State(st): State<AppState>) -> Result<Json<Value>, ApiError> {
    let rows = st.db.counts().await?;
    let map: BTreeMap<String, i64> = rows.into_iter().collect();
    Ok(Json(json!(map)))
}

/// The body of an operator action. There is no `actor`: the actor is the authenticated caller.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActionBody {
    reason: String,
}

impl ActionBody {
    fn checked(body: &Bytes) -> Result<String, ApiError> {
        let b: ActionBody = parse(body)?;
        checked_reason(b.reason)
    }
}

/// Why, as every operator action requires it.
fn checked_reason(reason: String) -> Result<String, ApiError> {
    if reason.trim().is_empty() {
        return Err(ApiError::bad("reason", "a reason is required"));
    }
    Ok(reason)
}

/// Applies one operator event and answers with the new status, or why it was refused.
async fn act(st: &AppState, id: WorkflowId, event: Event) -> Result<Response, ApiError> {
    // A refusal keeps nothing, not even a fingerprint the load rechecked.
    let applied = |o: &[Outcome]| matches!(o, [Outcome::Applied { .. }]);
    let outcome = st
        .committer
        .apply(vec![(id, event)], Some(Box::new(applied)))
        .await
        .map_err(|e| ApiError::Internal(e.into()))?
        .pop()
        .unwrap_or(Outcome::NotFound);
    match outcome {
        Outcome::Applied { seq, status, .. } => Ok((
            StatusCode::ACCEPTED,
            Json(ActionResult {
                id: id.0,
                status,
                seq,
            }),
        )
            .into_response()),
        Outcome::Rejected(e) => Err(ApiError::Conflict(e.to_string())),
        Outcome::NotFound => Err(ApiError::NotFound(format!("no workflow {id}"))),
    }
}

/// `POST /workflows/{id}/cancel`: compensate what was done.
#[utoipa::path(
    post,
    path = "/api/v1/workflows/{id}/cancel",
    tag = "operator actions",
    params(("id" = String, Path, description = "The workflow id (a UUID)")),
    request_body = ActionBody,
    responses(ActionAnswers)
)]
pub async fn cancel(
    State(st): State<AppState>,
    caller: Authenticated,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    operator_action(&st, &caller, &id, body, |actor, reason| {
        Event::CancelRequested { actor, reason }
    })
    .await
}

/// `POST /workflows/{id}/terminate`: stop without compensating.
#[utoipa::path(
    post,
    path = "/api/v1/workflows/{id}/terminate",
    tag = "operator actions",
    params(("id" = String, Path, description = "The workflow id (a UUID)")),
    request_body = ActionBody,
    responses(ActionAnswers)
)]
pub async fn terminate(
    State(st): State<AppState>,
    caller: Authenticated,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    operator_action(&st, &caller, &id, body, |actor, reason| {
        Event::TerminateRequested { actor, reason }
    })
    .await
}

/// `POST /workflows/{id}/retry`: run the waiting or stuck step now.
#[utoipa::path(
    post,
    path = "/api/v1/workflows/{id}/retry",
    tag = "operator actions",
    params(("id" = String, Path, description = "The workflow id (a UUID)")),
    request_body = ActionBody,
    responses(ActionAnswers)
)]
pub async fn retry(
    State(st): State<AppState>,
    caller: Authenticated,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    operator_action(&st, &caller, &id, body, |actor, reason| {
        Event::RetryRequested { actor, reason }
    })
    .await
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResolveBody {
    /// The step whose compensation kept failing and was repaired by hand (the step the
    /// workflow's `reason` names).
    step: String,
    /// Why, recorded with the event (what was done by hand).
    reason: String,
}

/// `POST /workflows/{id}/resolve`: an operator repaired a failing compensation by hand (refunded
/// in Stripe's dashboard, say); the workflow leaves `needs_attention` and goes on compensating the
/// steps before it. Refused (409) unless the workflow needs attention because the compensation of
/// `step` failed for good.
#[utoipa::path(
    post,
    path = "/api/v1/workflows/{id}/resolve",
    tag = "operator actions",
    params(("id" = String, Path, description = "The workflow id (a UUID)")),
    request_body = ResolveBody,
    responses(ActionAnswers)
)]
pub async fn resolve(
    State(st): State<AppState>,
    caller: Authenticated,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body?;
    let id = workflow_id(&id)?;
    let b: ResolveBody = parse(&body)?;
    let step = b.step.trim().to_owned();
    if step.is_empty() {
        return Err(ApiError::bad(
            "step",
            "the step whose compensation failed is required",
        ));
    }
    let reason = checked_reason(b.reason)?;
    act(
        &st,
        id,
        Event::CompensationResolved {
            step,
            actor: caller.actor(),
            reason,
        },
    )
    .await
}

/// What an operator action (cancel, terminate, retry, resolve) answers.
#[derive(Debug, utoipa::IntoResponses)]
#[allow(dead_code)] // a description for the document; handlers answer through `ApiError`
pub enum ActionAnswers {
    #[response(status = 202, description = "Recorded")]
    Recorded(ActionResult),
    #[response(
        status = 400,
        description = "`id` is not a UUID or the body is invalid; `field` names it",
        content_type = "application/problem+json"
    )]
    BadRequest(Problem),
    #[response(
        status = 404,
        description = "No such workflow",
        content_type = "application/problem+json"
    )]
    NotFound(Problem),
    #[response(
        status = 409,
        description = "The workflow's state refuses the action",
        content_type = "application/problem+json"
    )]
    Conflict(Problem),
    #[response(
        status = 413,
        description = "The body is too large",
        content_type = "application/problem+json"
    )]
    TooLarge(Problem),
    #[response(
        status = "default",
        description = "Any other error",
        content_type = "application/problem+json"
    )]
    Other(Problem),
}

/// An operator action with `{reason}`: checks the id and the body, then applies the event with
/// the caller as its actor.
async fn operator_action(
    st: &AppState,
    caller: &Authenticated,
    id: &str,
    body: Result<Bytes, BytesRejection>,
    event: fn(String, String) -> Event,
) -> Result<Response, ApiError> {
    let body = body?;
    let id = workflow_id(id)?;
    let reason = ActionBody::checked(&body)?;
    act(st, id, event(caller.actor(), reason)).await
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignalBody {
    #[serde(default)]
    payload: Value,
}

/// `POST /workflows/{id}/signals/{name}`: deliver a named signal with a payload.
#[utoipa::path(
    post,
    path = "/api/v1/workflows/{id}/signals/{name}",
    tag = "operator actions",
    params(
        ("id" = String, Path, description = "The workflow id (a UUID)"),
        ("name" = String, Path, description = "1 to 64 letters, digits, `_`, `.` or `-`"),
    ),
    request_body(content = SignalBody, description = "Optional: an empty body is a signal without payload"),
    responses(
        (status = 202, description = "Recorded", body = ActionResult),
        (status = 400, description = "`id`, `name` or the body is invalid; `field` names it", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such workflow", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The workflow's state refuses the signal", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is too large", body = Problem, content_type = "application/problem+json"),
        (status = "default", description = "Any other error", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn signal(
    State(st): State<AppState>,
    caller: Authenticated,
    Path((id, name)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body?;
    let id = workflow_id(&id)?;
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if !valid {
        return Err(ApiError::bad(
            "name",
            "a signal name is 1 to 64 letters, digits, `_`, `.` or `-`",
        ));
    }
    let b: SignalBody = if body.is_empty() {
        SignalBody {
            payload: Value::Null,
        }
    } else {
        parse(&body)?
    };
    let actor = caller.actor();
    act(
        &st,
        id,
        Event::SignalReceived {
            name,
            payload: b.payload,
            actor,
        },
    )
    .await
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
