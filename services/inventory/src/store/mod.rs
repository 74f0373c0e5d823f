//! The service's tables, one module each, on either backend of [`Db`]: each module's public
//! functions take the database and run their statements in its dialect, the Postgres SQL in
//! `<table>/postgres.rs` and the SQLite SQL in `<table>/sqlite.rs`. A function that must see
//! and change rows together runs one transaction of its own.
//!
//! [`Db`]: orderflow_service_kit::db::Db

pub mod products;
pub mod reservations;

/// A database failure. Callers decide whether it is retryable (an activity) or a 500 (the API).
pub type DbError = sqlx::Error;

/// `?, ?, …` for `n` values of a SQLite `in (…)` list (SQLite has no arrays to bind).
fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}
