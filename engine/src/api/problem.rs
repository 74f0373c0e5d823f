//! The API's one error type, rendered as RFC 9457 `application/problem+json`. Client errors say
//! what is wrong and with which field; server errors get a generic body and the cause is logged.

use axum::{
    extract::rejection::BytesRejection,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};

/// The body of every error answer (RFC 9457), as the OpenAPI document describes it.
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
    /// The field, parameter or header to blame, when one is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// Everything a handler can answer instead of success.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request is malformed; `field` names the culprit.
    #[error("{detail}")]
    BadRequest { field: String, detail: String },
    /// 422: well-formed but not acceptable (unknown workflow type, input that does not fit).
    #[error("{detail}")]
    Unprocessable { field: String, detail: String },
    /// 401: no bearer token, or one that is forged, expired or malformed.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: the caller's role may not do this.
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    /// 415: a body that does not say it is JSON.
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 413: the body is over the size limit.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// 409: the request conflicts with the workflow's state or an earlier request.
    #[error("{0}")]
    Conflict(String),
    /// 500: logged with its cause chain, answered generically.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    pub fn bad(field: &str, detail: impl Into<String>) -> Self {
        Self::BadRequest {
            field: field.to_owned(),
            detail: detail.into(),
        }
    }

    pub fn unprocessable(field: &str, detail: impl Into<String>) -> Self {
        Self::Unprocessable {
            field: field.to_owned(),
            detail: detail.into(),
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

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        Self::Internal(e.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let auth = "Authorization".to_owned();
        let content_type = "Content-Type".to_owned();
        let (status, title, field) = match &self {
            Self::BadRequest { field, .. } => (StatusCode::BAD_REQUEST, "Bad request", Some(field)),
            Self::Unprocessable { field, .. } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "Unprocessable request",
                Some(field),
            ),
            Self::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "Unauthorized", Some(&auth)),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "Forbidden", None),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "Not found", None),
            Self::UnsupportedMediaType(_) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Unsupported media type",
                Some(&content_type),
            ),
            Self::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "Method not allowed", None),
            Self::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "Payload too large", None),
            Self::Conflict(_) => (StatusCode::CONFLICT, "Conflict", None),
            Self::Internal(e) => {
                tracing::error!(error = format!("{e:#}"), "request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Internal server error",
                    None,
                )
            }
        };
        let detail = match &self {
            Self::Internal(_) => {
                "the server failed to handle the request; the cause is logged".to_owned()
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
        let mut res = (
            status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body,
        )
            .into_response();
        if status == StatusCode::UNAUTHORIZED {
            res.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        res
    }
}
