//! The engine API's OpenAPI document, served at `/api/v1/openapi.json`.
//!
//! Every path needs a bearer token (`bearer`): an operator's or a service's JWT, signed by the
//! deployment's key ring (see [`super::auth`]). Types that live in the pure core crate (which has no
//! OpenAPI dependency) are described here by mirrors named like them; `tests/schemathesis.rs`
//! checks the running engine against the document, so a mirror that drifts fails.

use chrono::{DateTime, Utc};
use utoipa::{OpenApi, ToSchema};
use uuid::Uuid;

use super::{problem::Problem, workflows};

#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "OrderFlow engine",
        description = "Start, read, list and operate workflows (sagas). Every path needs a bearer \
                       token with role `operator` (every path) or `service` (start, read, cancel): \
                       401 without one, 403 for another role; bodies are JSON only (415)."
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    paths(
        workflows::start,
        workflows::list,
        workflows::get,
        workflows::history,
        workflows::cancel,
        workflows::terminate,
        workflows::retry,
        workflows::resolve,
        workflows::signal,
        workflows::counts,
    ),
    components(schemas(Problem))
)]
pub struct ApiDoc;

/// Declares the `bearer` scheme every path requires.
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// Where a workflow stands (`orderflow_core::WorkflowStatus`).
#[derive(Debug, ToSchema)]
#[schema(as = WorkflowStatus, rename_all = "snake_case")]
#[allow(dead_code)]
pub enum WorkflowStatusDoc {
    Running,
    Compensating,
    Completed,
    Compensated,
    NeedsAttention,
    Cancelled,
    Terminated,
}

/// An activity's failure (`orderflow_core::protocol::ActivityError`).
#[derive(Debug, ToSchema)]
#[schema(as = ActivityError)]
#[allow(dead_code)]
pub struct ActivityErrorDoc {
    code: String,
    message: String,
    retryable: bool,
    /// Present (true) when the failed attempt may have taken effect.
    outcome_unknown: Option<bool>,
}

/// One step as the API shows it (`orderflow_core::StepView`).
#[derive(Debug, ToSchema)]
#[schema(as = Step)]
#[allow(dead_code)]
pub struct StepDoc {
    name: String,
    activity: String,
    kind: String,
    /// `pending`, `scheduled`, `completed`, `failed`, `compensating`, `compensated`, ...
    status: String,
    attempts: u32,
    compensation_attempts: u32,
    last_error: Option<ActivityErrorDoc>,
    output: Option<serde_json::Value>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
}

/// One recorded event with the commands the decider answered (`orderflow_core::RecordedEvent`).
#[derive(Debug, ToSchema)]
#[schema(as = RecordedEvent)]
#[allow(dead_code)]
pub struct RecordedEventDoc {
    /// 1-based position in the history.
    seq: u64,
    at: DateTime<Utc>,
    /// The event, tagged by `type`.
    #[schema(value_type = Object)]
    event: serde_json::Value,
    #[schema(value_type = Vec<Object>)]
    commands: Vec<serde_json::Value>,
    /// Set when the event changed nothing, with why.
    ignored: Option<String>,
}

/// A workflow's whole history in the replay format (`orderflow_core::History`).
#[derive(Debug, ToSchema)]
#[schema(as = History)]
#[allow(dead_code)]
pub struct HistoryDoc {
    workflow_id: Uuid,
    workflow_type: String,
    version: u32,
    events: Vec<RecordedEventDoc>,
}
