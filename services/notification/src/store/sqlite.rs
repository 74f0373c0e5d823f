//! The store's queries on SQLite (`migrations/sqlite/notification`, `orderflow dev`).
//!
//! Every write that reads first runs in a `BEGIN IMMEDIATE` transaction: a deferred one would
//! take the write lock only at its first write and fail with `SQLITE_BUSY` if another writer got
//! there first. No transaction stays open across a provider call; a delivery holds its message
//! with a [`Lease`] instead.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{SqlitePool, types::Json};
use tokio::time::Instant;
use uuid::Uuid;

use super::{
    Attempt, CLAIM_WAIT, Claim, Claimed, Contact, Hold, ListFilter, NewAttempt, NewNotification,
    Notification, OutboxMessage,
};
use crate::model::{Channel, NotificationStatus};

/// How long a delivery may hold its message. Far longer than any provider's timeout, so a lease
/// only runs out when its process died; then the message waits this long for its retry.
const LEASE: chrono::Duration = chrono::Duration::minutes(5);

/// How often a duplicate delivery looks whether the message was let go.
const POLL: Duration = Duration::from_millis(20);

const COLUMNS: &str = "id, idempotency_key, workflow_id, channel, template, recipient, subject, \
     body, body_html, status, provider, provider_message_id, attempts, last_error, created_at, \
     updated_at, sent_at, leased_until";

/// Now, as stored: microseconds since the epoch.
fn now() -> i64 {
    Utc::now().timestamp_micros()
}

fn time(micros: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(micros).unwrap_or_default()
}

/// A `notifications` row as SQLite returns it.
#[derive(sqlx::FromRow)]
struct NotificationRow {
    id: Uuid,
    idempotency_key: String,
    workflow_id: Option<Uuid>,
    channel: String,
    template: String,
    recipient: String,
    subject: String,
    body: String,
    body_html: Option<String>,
    status: String,
    provider: String,
    provider_message_id: Option<String>,
    attempts: i32,
    last_error: Option<String>,
    created_at: i64,
    updated_at: i64,
    sent_at: Option<i64>,
    leased_until: Option<i64>,
}

impl From<NotificationRow> for Notification {
    fn from(r: NotificationRow) -> Self {
        Self {
            id: r.id,
            idempotency_key: r.idempotency_key,
            workflow_id: r.workflow_id,
            channel: r.channel,
            template: r.template,
            recipient: r.recipient,
            subject: r.subject,
            body: r.body,
            body_html: r.body_html,
            status: r.status,
            provider: r.provider,
            provider_message_id: r.provider_message_id,
            attempts: r.attempts,
            last_error: r.last_error,
            created_at: time(r.created_at),
            updated_at: time(r.updated_at),
            sent_at: r.sent_at.map(time),
        }
    }
}

/// A pending message held by one delivery until `leased_until`. Dropped unsettled (the delivery
/// failed to record its outcome), it lets go of the message so that a retry need not wait for
/// the lease to run out.
#[derive(Debug)]
pub(super) struct Lease {
    pool: SqlitePool,
    id: Uuid,
    token: Uuid,
    settled: bool,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (pool, id, token) = (self.pool.clone(), self.id, self.token);
        runtime.spawn(async move {
            let released = sqlx::query(
                "update notifications set lease = null, leased_until = null
                 where id = ?1 and lease = ?2",
            )
            .bind(id)
            .bind(token)
            .execute(&pool)
            .await;
            if let Err(e) = released {
                tracing::warn!(notification_id = %id, error = %e, "releasing a notification's lease; it runs out by itself");
            }
        });
    }
}

/// Creates the message if it is new and leases it if it is pending and not leased, each in one
/// short transaction; while another delivery holds it, looks again every [`POLL`] for up to
/// [`CLAIM_WAIT`].
pub(super) async fn claim(
    pool: &SqlitePool,
    new: &NewNotification<'_>,
) -> Result<Claimed, sqlx::Error> {
    let token = Uuid::new_v4();
    let give_up = Instant::now() + CLAIM_WAIT;
    loop {
        let now = now();
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query(
            "insert into notifications (id, idempotency_key, workflow_id, channel, template,
                                        recipient, subject, body, body_html, status, provider,
                                        created_at, updated_at)
             values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 'pending', ?10, ?11, ?11)
             on conflict (idempotency_key, channel) do nothing",
        )
        .bind(Uuid::now_v7())
        .bind(new.idempotency_key)
        .bind(new.workflow_id)
        .bind(new.channel.as_str())
        .bind(new.template)
        .bind(new.recipient)
        .bind(new.subject)
        .bind(new.body)
        .bind(new.body_html)
        .bind(new.provider)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let row: NotificationRow = sqlx::query_as(&format!(
            "select {COLUMNS} from notifications where idempotency_key = ?1 and channel = ?2"
        ))
        .bind(new.idempotency_key)
        .bind(new.channel.as_str())
        .fetch_one(&mut *tx)
        .await?;
        let free = row.leased_until.is_none_or(|until| until <= now);
        if row.status != NotificationStatus::Pending.as_str() {
            tx.commit().await?;
            return Ok(Claimed::Settled(row.into()));
        }
        if free {
            sqlx::query("update notifications set lease = ?2, leased_until = ?3 where id = ?1")
                .bind(row.id)
                .bind(token)
                .bind(now + LEASE.num_microseconds().unwrap_or(i64::MAX))
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            let lease = Lease {
                pool: pool.clone(),
                id: row.id,
                token,
                settled: false,
            };
            return Ok(Claimed::Held(Claim {
                row: row.into(),
                hold: Hold::Sqlite(lease),
            }));
        }
        // The insert did nothing: the row was there.
        tx.commit().await?;
        if Instant::now() >= give_up {
            return Ok(Claimed::Busy);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Logs one attempt, moves the message to where it now is and ends the lease.
pub(super) async fn record_attempt(
    mut lease: Lease,
    a: &NewAttempt<'_>,
) -> Result<(), sqlx::Error> {
    let now = now();
    let status = a.outcome.status().as_str();
    let mut tx = lease.pool.begin_with("BEGIN IMMEDIATE").await?;
    let (attempt,): (i32,) = sqlx::query_as(
        "update notifications set
             attempts = attempts + 1,
             status = ?2,
             provider = ?3,
             provider_message_id = coalesce(?4, provider_message_id),
             last_error = ?5,
             sent_at = case when ?2 = 'sent' then ?6 else sent_at end,
             updated_at = ?6,
             lease = null,
             leased_until = null
         where id = ?1
         returning attempts",
    )
    .bind(a.id)
    .bind(status)
    .bind(a.provider)
    .bind(a.provider_message_id)
    .bind(a.error)
    .bind(now)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query(
        "insert into notification_attempts (notification_id, attempt, outcome, provider, detail, at)
         values (?1, ?2, ?3, ?4, ?5, ?6)",
    )
    .bind(a.id)
    .bind(attempt)
    .bind(a.outcome.as_str())
    .bind(a.provider)
    .bind(Json(a.detail))
    .bind(now)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    lease.settled = true;
    Ok(())
}

pub(super) async fn list(
    pool: &SqlitePool,
    f: &ListFilter,
) -> Result<Vec<Notification>, sqlx::Error> {
    let rows: Vec<NotificationRow> = sqlx::query_as(&format!(
        "select {COLUMNS} from notifications
         where (?1 is null or status = ?1)
           and (?2 is null or channel = ?2)
           and (?3 is null or recipient = ?3)
           and (?4 is null or workflow_id = ?4)
           and (?5 is null or id < ?5)
         order by id desc
         limit ?6"
    ))
    .bind(f.status.map(NotificationStatus::as_str))
    .bind(f.channel.map(Channel::as_str))
    .bind(f.recipient.as_deref())
    .bind(f.workflow_id)
    .bind(f.before)
    .bind(f.limit)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(Notification::from).collect())
}

pub(super) async fn get(pool: &SqlitePool, id: Uuid) -> Result<Option<Notification>, sqlx::Error> {
    let row: Option<NotificationRow> = sqlx::query_as(&format!(
        "select {COLUMNS} from notifications where id = ?1"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(Notification::from))
}

pub(super) async fn attempts(pool: &SqlitePool, id: Uuid) -> Result<Vec<Attempt>, sqlx::Error> {
    let rows: Vec<(i32, String, String, Json<Value>, i64)> = sqlx::query_as(
        "select attempt, outcome, provider, detail, at from notification_attempts
         where notification_id = ?1 order by attempt",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(attempt, outcome, provider, Json(detail), at)| Attempt {
            attempt,
            outcome,
            provider,
            detail,
            at: time(at),
        })
        .collect())
}

pub(super) async fn record_outbox(
    pool: &SqlitePool,
    notification_id: Uuid,
    channel: Channel,
    recipient: &str,
    content: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "insert into outbox_messages (notification_id, channel, recipient, content, created_at)
         values (?1, ?2, ?3, ?4, ?5)
         on conflict (notification_id) do nothing",
    )
    .bind(notification_id)
    .bind(channel.as_str())
    .bind(recipient)
    .bind(content)
    .bind(now())
    .execute(pool)
    .await?;
    Ok(())
}

pub(super) async fn outbox(
    pool: &SqlitePool,
    before: Option<Uuid>,
    limit: i64,
) -> Result<Vec<OutboxMessage>, sqlx::Error> {
    let rows: Vec<(Uuid, String, String, String, i64)> = sqlx::query_as(
        "select notification_id, channel, recipient, content, created_at from outbox_messages
         where ?1 is null or notification_id < ?1
         order by notification_id desc limit ?2",
    )
    .bind(before)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(notification_id, channel, recipient, content, created_at)| OutboxMessage {
                notification_id,
                channel,
                recipient,
                content,
                created_at: time(created_at),
            },
        )
        .collect())
}

pub(super) async fn contact(pool: &SqlitePool, user: Uuid) -> Result<Option<Contact>, sqlx::Error> {
    sqlx::query_as("select phone, push_token from contacts where user_id = ?1")
        .bind(user)
        .fetch_optional(pool)
        .await
}

pub(super) async fn set_contact(
    pool: &SqlitePool,
    user: Uuid,
    c: &Contact,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "insert into contacts (user_id, phone, push_token, updated_at) values (?1, ?2, ?3, ?4)
         on conflict (user_id) do update
         set phone = excluded.phone, push_token = excluded.push_token,
             updated_at = excluded.updated_at",
    )
    .bind(user)
    .bind(c.phone.as_deref())
    .bind(c.push_token.as_deref())
    .bind(now())
    .execute(pool)
    .await?;
    Ok(())
}

/// Ends every lease (see [`super::release_holds`]); answers how many there were.
pub async fn release_leases(pool: &SqlitePool) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "update notifications set lease = null, leased_until = null where lease is not null",
    )
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}
