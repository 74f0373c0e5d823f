//! The one error type of every OrderFlow API, rendered as RFC 9457 `application/problem+json`.
//! Client errors say what is wrong and, where one is to blame, which field; server errors get a
//! generic body and their cause chain is logged, never sent.

use axum::{
    body::Bytes,
    extract::rejection::{BytesRejection, QueryRejection},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use orderflow_core::json_body::{data_field, nul_in};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// The media type of every error answer.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// The body of every error answer (RFC 9457), as the OpenAPI documents describe it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Problem {
    /// Always `about:blank`: the status says what kind of problem it is.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    /// The HTTP status, repeated.
    pub status: u16,
    /// What is wrong, for a person; generic for 5xx.
    pub detail: String,
    /// The field, parameter or header to blame, when one is (`items[0].quantity`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// Everything a handler can answer instead of success.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request is malformed; `field` names the culprit.
    #[error("{detail}")]
    BadRequest { field: String, detail: String },
    /// 422: well-formed but not acceptable (an unknown product, input that does not fit).
    #[error("{detail}")]
    Unprocessable { field: String, detail: String },
    /// 401: no credentials, or credentials that do not verify. Deliberately says no more.
    #[error("a valid bearer token is required")]
    Unauthorized,
    /// 403: authenticated, but the role does not allow this.
    #[error("this requires a role the caller does not have")]
    Forbidden,
    /// 404: also the answer for things that exist but belong to someone else, so ids cannot be
    /// probed.
    #[error("{0}")]
    NotFound(String),
    /// 405.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 409: the request conflicts with the resource's state or an earlier request.
    #[error("{0}")]
    Conflict(String),
    /// 413: the body is over the size limit.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// 429: slow down; `Retry-After` says for how long.
    #[error("too many requests; retry in {retry_after_secs} s")]
    TooManyRequests { retry_after_secs: u64 },
    /// 503: a dependency (another service, the broker) does not answer; the cause is logged.
    #[error(transparent)]
    Unavailable(anyhow::Error),
    /// 500: logged with its cause chain, answered generically.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    /// 400 naming `field`.
    pub fn bad(field: &str, detail: impl Into<String>) -> Self {
        Self::BadRequest {
            field: field.to_owned(),
            detail: detail.into(),
        }
    }

    /// 422 naming `field`.
    pub fn unprocessable(field: &str, detail: impl Into<String>) -> Self {
        Self::Unprocessable {
            field: field.to_owned(),
            detail: detail.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// A body that cannot be read (over the limit, cut short) is answered like any other bad body,
/// not with axum's plain-text rejection.
impl From<BytesRejection> for ApiError {
    fn from(e: BytesRejection) -> Self {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Self::PayloadTooLarge(e.body_text())
        } else {
            Self::bad("body", e.body_text())
        }
    }
}

/// A query string that does not fit names the parameter when serde says which.
impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> Self {
        let msg = e.body_text();
        Self::bad(&data_field(&msg, "query"), msg)
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        Self::Internal(e.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let (title, field) = match &self {
            Self::BadRequest { field, .. } => ("Bad request", Some(field)),
            Self::Unprocessable { field, .. } => ("Unprocessable request", Some(field)),
            Self::Unauthorized => ("Unauthorized", None),
            Self::Forbidden => ("Forbidden", None),
            Self::NotFound(_) => ("Not found", None),
            Self::MethodNotAllowed => ("Method not allowed", None),
            Self::Conflict(_) => ("Conflict", None),
            Self::PayloadTooLarge(_) => ("Payload too large", None),
            Self::TooManyRequests { .. } => ("Too many requests", None),
            Self::Unavailable(_) => ("Service unavailable", None),
            Self::Internal(_) => ("Internal server error", None),
        };
        let detail = match &self {
            Self::Internal(e) => {
                tracing::error!(error = format!("{e:#}"), "request failed");
                "the server failed to handle the request; the cause is logged".to_owned()
            }
            Self::Unavailable(e) => {
                tracing::warn!(error = format!("{e:#}"), "a dependency is unavailable");
                "a service this request needs is unavailable; try again shortly".to_owned()
            }
            other => other.to_string(),
        };
        let body = Problem {
            kind: "about:blank".to_owned(),
            title: title.to_owned(),
            status: status.as_u16(),
            detail,
            field: field.cloned(),
        };
        let body = serde_json::to_string(&body).expect("a problem always serializes");
        let mut res = (status, [(header::CONTENT_TYPE, PROBLEM_JSON)], body).into_response();
        match &self {
            Self::Unauthorized => {
                res.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Self::TooManyRequests { retry_after_secs } => {
                res.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            _ => {}
        }
        res
    }
}

/// Parses a JSON body; a problem names the offending field when serde says which.
pub fn parse_json<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(ApiError::bad(
            "body",
            "the request body is empty; a JSON object is required",
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let field = match inner.classify() {
            serde_json::error::Category::Data => field_at(&path, &inner.to_string()),
            _ => "body".to_owned(),
        };
        ApiError::bad(&field, format!("invalid JSON body: {inner}"))
    })?;
    // Trailing bytes after the object (`{}{}`) are as malformed as a missing brace.
    de.end()
        .map_err(|e| ApiError::bad("body", format!("invalid JSON body: {e}")))?;
    if let Some(field) = nul_in(body) {
        return Err(no_nul(&field));
    }
    Ok(value)
}

/// 400 for text with a NUL character, which PostgreSQL cannot store.
pub fn no_nul(field: &str) -> ApiError {
    ApiError::bad(field, "text may not contain the NUL character (\\u0000)")
}

/// A free-text query parameter, refused when it holds a NUL character.
pub fn text_param<'a>(field: &str, value: Option<&'a str>) -> Result<Option<&'a str>, ApiError> {
    match value {
        Some(v) if v.contains('\0') => Err(no_nul(field)),
        v => Ok(v),
    }
}

/// The dotted path of the culprit (`items[0].quantity`): where serde stopped, plus the field it
/// named when the problem is a missing or unknown one.
fn field_at(path: &str, msg: &str) -> String {
    let named = data_field(msg, "");
    match (path, named.as_str()) {
        (".", "") => "body".to_owned(),
        (".", f) => f.to_owned(),
        (p, "") => p.to_owned(),
        // serde_path_to_error already ends the path with an unknown field's name.
        (p, f) if p == f || p.ends_with(&format!(".{f}")) => p.to_owned(),
        (p, f) => format!("{p}.{f}"),
    }
}
