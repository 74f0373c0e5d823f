//! Postgres access, one module per table family. Functions take a connection or a transaction
//! from the caller, who decides what commits together.

pub mod products;
pub mod reservations;

/// A database failure. Callers decide whether it is retryable (an activity) or a 500 (the API).
pub type DbError = sqlx::Error;
