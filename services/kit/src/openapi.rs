//! What the services' OpenAPI documents share: the bearer-JWT security scheme, the problem body
//! of every error answer, and the route that serves a document at `/api/v1/openapi.json`.
//!
//! Each service derives its document from its handlers' `#[utoipa::path]` annotations and its
//! request and response types (`#[derive(utoipa::ToSchema)]`), so the document changes with the
//! code; `tests/schemathesis.rs` checks the running services against them.

use crate::problem::Problem;
use axum::{
    http::header,
    response::IntoResponse,
    routing::{MethodRouter, get},
};
use utoipa::{
    Modify,
    openapi::{
        OpenApi,
        security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
    },
};

/// The name of the security scheme operations refer to: `security(("bearer" = []))`.
pub const BEARER: &str = "bearer";

/// Adds the [`BEARER`] scheme: an HS256 JWT from the user service's `POST /auth/login`.
#[derive(Debug)]
pub struct BearerJwt;

impl Modify for BearerJwt {
    fn modify(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "An access token from the user service's `POST /api/v1/auth/login`",
                    ))
                    .build(),
            ),
        );
    }
}

/// The error answers any operation can give besides its own: `responses(..., OtherErrors)`.
#[derive(Debug, utoipa::IntoResponses)]
pub enum OtherErrors {
    #[response(
        status = "default",
        description = "Any other error",
        content_type = "application/problem+json"
    )]
    Other(Problem),
}

/// The error answers of an operation that takes a bearer token, besides its own.
#[derive(Debug, utoipa::IntoResponses)]
pub enum BearerErrors {
    #[response(
        status = 401,
        description = "No valid bearer token",
        content_type = "application/problem+json"
    )]
    Unauthorized(Problem),
    #[response(
        status = "default",
        description = "Any other error",
        content_type = "application/problem+json"
    )]
    Other(Problem),
}

/// The error answers of an admin-only operation, besides its own.
#[derive(Debug, utoipa::IntoResponses)]
pub enum AdminErrors {
    #[response(
        status = 401,
        description = "No valid bearer token",
        content_type = "application/problem+json"
    )]
    Unauthorized(Problem),
    #[response(
        status = 403,
        description = "The caller is not an admin",
        content_type = "application/problem+json"
    )]
    Forbidden(Problem),
    #[response(
        status = "default",
        description = "Any other error",
        content_type = "application/problem+json"
    )]
    Other(Problem),
}

/// `GET` route answering `doc` as JSON; the document is rendered once.
pub fn serve<S: Clone + Send + Sync + 'static>(doc: &OpenApi) -> MethodRouter<S> {
    let body = doc
        .to_json()
        .expect("an OpenAPI document always serializes");
    get(move || {
        let body = body.clone();
        async move { ([(header::CONTENT_TYPE, "application/json")], body).into_response() }
    })
}

/// Money as every API shows it: integer minor units (cents) and an ISO 4217 code, never a float.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[schema(as = Money)]
pub struct MoneyView {
    pub amount_minor: i64,
    pub currency: String,
}
