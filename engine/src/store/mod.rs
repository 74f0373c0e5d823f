//! Storage, one module per table. Every function takes the caller's connection or transaction so
//! the caller decides what commits together; batches are written with multi-row `UNNEST` inserts.
//! [`change`] is the exception that spans tables: a state change's rows in one statement.
//! [`backend`] is the seam over the database ([`backend::Store`]): Postgres, or the embedded
//! SQLite store of `orderflow dev` ([`sqlite`]).

pub mod backend;
pub mod change;
pub mod history;
pub mod outbox;
pub mod sqlite;
pub mod timers;
pub mod workflows;
