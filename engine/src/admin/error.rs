//! The admin UI's one error type. A missing login is a redirect to the login page; bad input is
//! answered with `application/problem+json` naming the field; a server failure gets a generic
//! body and its cause chain goes to the log.

use axum::{
    http::{StatusCode, header},
    response::{IntoResponse, Redirect, Response},
};
use serde_json::json;

/// Everything an admin handler can answer instead of a page.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// No valid session: go to the login page, then back to `next`.
    #[error("login required")]
    LoginRequired { next: String },
    /// 400: a form or query field is wrong.
    #[error("{detail}")]
    BadRequest { field: String, detail: String },
    /// 403: a POST without the session's CSRF token (or a login form without its own).
    #[error("{detail}")]
    Forbidden { field: String, detail: String },
    /// 429: too many failed logins for this user; `field` is the one to blame.
    #[error("{0}")]
    TooManyAttempts(String),
    #[error("{0}")]
    NotFound(String),
    /// 500: logged with its cause chain, answered generically.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl AdminError {
    pub fn bad(field: &str, detail: impl Into<String>) -> Self {
        Self::BadRequest {
            field: field.to_owned(),
            detail: detail.into(),
        }
    }

    pub fn forbidden(field: &str, detail: impl Into<String>) -> Self {
        Self::Forbidden {
            field: field.to_owned(),
            detail: detail.into(),
        }
    }
}

impl From<sqlx::Error> for AdminError {
    fn from(e: sqlx::Error) -> Self {
        Self::Internal(e.into())
    }
}

impl From<crate::apply::ApplyError> for AdminError {
    fn from(e: crate::apply::ApplyError) -> Self {
        Self::Internal(e.into())
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let (status, title, field) = match &self {
            Self::LoginRequired { next } => {
                let to = format!("/admin/login?next={}", url_encode(next));
                return Redirect::to(&to).into_response();
            }
            Self::BadRequest { field, .. } => {
                (StatusCode::BAD_REQUEST, "Bad request", Some(field.as_str()))
            }
            Self::Forbidden { field, .. } => {
                (StatusCode::FORBIDDEN, "Forbidden", Some(field.as_str()))
            }
            Self::TooManyAttempts(_) => (
                StatusCode::TOO_MANY_REQUESTS,
                "Too many attempts",
                Some("username"),
            ),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "Not found", None),
            Self::Internal(e) => {
                tracing::error!(error = format!("{e:#}"), "admin request failed");
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
        let mut body = json!({
            "type": "about:blank", "title": title, "status": status.as_u16(), "detail": detail
        });
        if let Some(f) = field {
            body["field"] = json!(f);
        }
        (
            status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body.to_string(),
        )
            .into_response()
    }
}

/// Percent-encodes everything but unreserved characters and `/` (query values, cookie values).
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes what [`url_encode`] (or a browser) encoded; invalid escapes are kept as they are.
pub fn url_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 3;
                        continue;
                    }
                    _ => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_round_trips() {
        let s = "/admin/stuck?activity=payment.charge&x=a b%";
        assert_eq!(url_decode(&url_encode(s)), s);
        assert_eq!(url_decode("a%2"), "a%2");
    }
}
