//! Who may call the API, and what a request must look like to be let in.
//!
//! Every route under `/api/v1` needs a bearer token signed by the deployment's key ring (the
//! user service's key, [`orderflow_auth`]); `/health`, `/ready` and `/metrics` stay open for
//! probes and scrapers. Two roles use the API: operators (every route) and services (the routes
//! in [`SERVICE_ROUTES`]: start, read and cancel a saga). No token, or a forged, expired or
//! malformed one, is answered 401; an authentic token of another role (a shop customer's or
//! shop admin's) 403. The handler takes the caller as [`Authenticated`], which is the audit
//! actor of whatever it does.
//!
//! The API takes no cookies, so a browser never sends a credential for it on its own: a page on
//! another site cannot act as the person viewing it. JSON routes also refuse any other content
//! type with 415, so a cross-site form post (`text/plain`, form-encoded) is not parsed as JSON.

use axum::{
    body::HttpBody as _,
    extract::{FromRequestParts, MatchedPath, Request, State},
    http::{Method, header, request::Parts},
    middleware::Next,
    response::{IntoResponse, Response},
};
use orderflow_auth::{
    KeyRing,
    engine::{Caller, EngineRole, Refusal, authenticate},
};

use super::ApiError;

/// The key ring tokens are verified with.
#[derive(Clone, Debug)]
pub struct ApiAuth {
    ring: KeyRing,
}

impl ApiAuth {
    pub fn new(ring: KeyRing) -> Self {
        Self { ring }
    }

    /// The ring (to sign tokens for tests and `orderflow dev`).
    pub fn ring(&self) -> &KeyRing {
        &self.ring
    }
}

/// What a service may call, as (method, route). Everything else is for operators.
pub const SERVICE_ROUTES: &[(&str, &str)] = &[
    ("POST", "/api/v1/workflows"),
    ("GET", "/api/v1/workflows/{id}"),
    ("POST", "/api/v1/workflows/{id}/cancel"),
    ("GET", "/api/v1/openapi.json"),
];

/// Whether `role` may call `method` on `route` (the matched route, with its `{params}`).
pub fn allowed(role: EngineRole, method: &Method, route: &str) -> bool {
    match role {
        EngineRole::Operator => true,
        EngineRole::Service => {
            let method = if method == Method::HEAD {
                "GET"
            } else {
                method.as_str()
            };
            SERVICE_ROUTES
                .iter()
                .any(|(m, r)| *m == method && *r == route)
        }
    }
}

/// The caller of a request that passed [`require`].
#[derive(Clone, Debug)]
pub struct Authenticated(pub Caller);

impl Authenticated {
    /// The audit actor of what this caller does.
    pub fn actor(&self) -> String {
        self.0.actor()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Authenticated {
    type Rejection = ApiError;

    /// Only [`require`] puts a caller in a request: a handler reached some other way refuses.
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Authenticated>()
            .cloned()
            .ok_or_else(|| ApiError::Unauthorized("a bearer token is required".into()))
    }
}

/// The bearer token in these headers, if there is one.
fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Lets in an authenticated caller whose role may use the matched route, with a JSON body (or
/// none) on a POST; answers 401, 403 or 415 otherwise.
pub async fn require(State(auth): State<ApiAuth>, mut req: Request, next: Next) -> Response {
    let Some(token) = bearer(req.headers()) else {
        return ApiError::Unauthorized("a bearer token is required".into()).into_response();
    };
    let caller = match authenticate(&auth.ring, token) {
        Ok(caller) => caller,
        Err(Refusal::Unauthenticated(why)) => {
            // The caller's problem, answered; not worth more than debug.
            tracing::debug!(%why, "refused bearer token");
            return ApiError::Unauthorized("the bearer token is invalid or expired".into())
                .into_response();
        }
        Err(e @ Refusal::WrongRole(_)) => {
            return ApiError::Forbidden(e.to_string()).into_response();
        }
    };
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str())
        .unwrap_or_default();
    // Inside the nested `/api/v1` router the route may be given without its prefix.
    let route = if route.starts_with("/api/v1") {
        route.to_owned()
    } else {
        format!("/api/v1{route}")
    };
    if !allowed(caller.role, req.method(), &route) {
        return ApiError::Forbidden(format!(
            "a `{}` token may not call {} {route}",
            caller.role.as_str(),
            req.method()
        ))
        .into_response();
    }
    if let Err(e) = json_only(&req) {
        return e.into_response();
    }
    req.extensions_mut().insert(Authenticated(caller));
    next.run(req).await
}

/// A request with a body must say it is JSON (`application/json` or `application/*+json`); an
/// empty body needs no type.
pub fn json_only(req: &Request) -> Result<(), ApiError> {
    let kind = req.headers().get(header::CONTENT_TYPE);
    let empty = req.body().size_hint().exact() == Some(0);
    match kind {
        None if empty => Ok(()),
        None => Err(ApiError::UnsupportedMediaType(
            "the body must be JSON: send `Content-Type: application/json`".into(),
        )),
        Some(v) if is_json(v.to_str().unwrap_or_default()) => Ok(()),
        Some(v) => Err(ApiError::UnsupportedMediaType(format!(
            "the body must be JSON (`application/json`), not `{}`",
            v.to_str().unwrap_or("?")
        ))),
    }
}

/// `application/json` or `application/<something>+json`, with any parameters.
pub fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || essence
            .strip_prefix("application/")
            .is_some_and(|sub| sub.ends_with("+json") && !sub.contains('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_types() {
        for ok in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/merge-patch+json",
        ] {
            assert!(is_json(ok), "{ok}");
        }
        for bad in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "text/json",
            "application/jsonx",
            "",
        ] {
            assert!(!is_json(bad), "{bad}");
        }
    }

    #[test]
    fn services_reach_only_their_routes() {
        let s = EngineRole::Service;
        assert!(allowed(s, &Method::POST, "/api/v1/workflows"));
        assert!(allowed(s, &Method::HEAD, "/api/v1/workflows/{id}"));
        assert!(!allowed(s, &Method::GET, "/api/v1/workflows"));
        assert!(!allowed(
            s,
            &Method::POST,
            "/api/v1/workflows/{id}/terminate"
        ));
        assert!(allowed(
            EngineRole::Operator,
            &Method::POST,
            "/api/v1/workflows/{id}/terminate"
        ));
    }
}
