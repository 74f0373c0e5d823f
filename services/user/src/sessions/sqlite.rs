//! Sessions in the user database's `sessions` and `login_failures` tables. SQLite has no TTL, so
//! every read compares the stored expiry with this process's clock; times are integer
//! microseconds since the epoch, as in the rest of the SQLite schema. Each function is one
//! statement, so each is atomic without an explicit transaction.

use std::time::Duration;

use chrono::Utc;
use sqlx::SqlitePool;
use uuid::Uuid;

use super::{FAILURE_WINDOW, MAX_FAILURES};

fn now() -> i64 {
    Utc::now().timestamp_micros()
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

pub(super) async fn create(
    pool: &SqlitePool,
    hash: &str,
    user: Uuid,
    ttl: Duration,
) -> Result<(), sqlx::Error> {
    let now = now();
    // The user's expired sessions go here, as Redis would have dropped them by now.
    sqlx::query("delete from sessions where user_id = ? and expires_at <= ?")
        .bind(user)
        .bind(now)
        .execute(pool)
        .await?;
    sqlx::query("insert into sessions (token_hash, user_id, expires_at) values (?, ?, ?)")
        .bind(hash)
        .bind(user)
        .bind(now.saturating_add(micros(ttl)))
        .execute(pool)
        .await?;
    Ok(())
}

/// `delete … returning` takes the row in one statement: SQLite runs one writer at a time, so of
/// two takes of one token the second finds nothing.
pub(super) async fn take(pool: &SqlitePool, hash: &str) -> Result<Option<Uuid>, sqlx::Error> {
    let taken: Option<(Uuid, i64)> =
        sqlx::query_as("delete from sessions where token_hash = ? returning user_id, expires_at")
            .bind(hash)
            .fetch_optional(pool)
            .await?;
    Ok(taken.and_then(|(user, expires_at)| (expires_at > now()).then_some(user)))
}

pub(super) async fn revoke_all(pool: &SqlitePool, user: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("delete from sessions where user_id = ?")
        .bind(user)
        .execute(pool)
        .await?;
    Ok(())
}

pub(super) async fn locked_out(pool: &SqlitePool, email: &str) -> Result<Option<u64>, sqlx::Error> {
    let now = now();
    let window: Option<(i64, i64)> = sqlx::query_as(
        "select failures, window_ends_at from login_failures
         where email = ? and window_ends_at > ?",
    )
    .bind(email)
    .bind(now)
    .fetch_optional(pool)
    .await?;
    Ok(window
        .filter(|(failures, _)| *failures >= MAX_FAILURES)
        .map(|(_, ends)| {
            let left = u64::try_from(ends - now).unwrap_or(0);
            left.div_ceil(1_000_000).max(1)
        }))
}

/// One upsert: a window that has ended starts over at this failure.
pub(super) async fn record_failure(pool: &SqlitePool, email: &str) -> Result<(), sqlx::Error> {
    let now = now();
    let ends = now.saturating_add(micros(FAILURE_WINDOW));
    sqlx::query(
        "insert into login_failures (email, failures, window_ends_at) values (?1, 1, ?3)
         on conflict (email) do update set
             failures = case when window_ends_at <= ?2 then 1 else failures + 1 end,
             window_ends_at = case when window_ends_at <= ?2 then ?3 else window_ends_at end",
    )
    .bind(email)
    .bind(now)
    .bind(ends)
    .execute(pool)
    .await?;
    Ok(())
}

pub(super) async fn clear_failures(pool: &SqlitePool, email: &str) -> Result<(), sqlx::Error> {
    sqlx::query("delete from login_failures where email = ?")
        .bind(email)
        .execute(pool)
        .await?;
    Ok(())
}
