//! What every OrderFlow service (order, inventory, payment, notification, user) shares, so the
//! five speak HTTP, authenticate and fail the same way:
//!
//! - [`config`]: [`ServiceConfig`], the settings every service has (bind address, its own
//!   database, broker, Redis, queue prefix, JWT secret, engine URL, worker concurrency).
//! - [`db`]: connects to a service's own database, creating it if missing, and migrates it.
//! - [`auth`]: HS256 JWT access tokens ([`auth::JwtKeys`]) and the axum extractors
//!   [`auth::AuthUser`] / [`auth::AdminUser`] that every API uses to verify them.
//! - [`problem`]: [`ApiError`], the one error type of every API, rendered as
//!   `application/problem+json`, and [`problem::parse_json`] which names the offending field.
//! - [`http`]: `/health`, `/ready` (dependency probes), `/metrics`, the request-duration
//!   middleware, [`http::app`] which assembles a service's router, and [`http::serve`].
//! - [`kv`]: a Redis connection that reconnects by itself.
//! - [`limit`]: rate limits shared by every replica (a window counter in Redis), answered 429.
//! - [`openapi`]: the bearer scheme and the route serving each API's OpenAPI document.
//! - [`parts`]: what a service contributes to a process ([`parts::ServiceParts`]: its API, activity
//!   handlers, followers of finished workflows and background loops), and running them as one.
//! - [`purge`]: the loop that runs a service's own retention (what it purges is the service's).

pub mod auth;
pub mod config;
pub mod db;
pub mod http;
pub mod kv;
pub mod limit;
pub mod openapi;
pub mod parts;
pub mod problem;
pub mod purge;

pub use config::ServiceConfig;
pub use problem::ApiError;
