//! The notification log (`notifications`, `notification_attempts`) and `contacts`. Functions take
//! a connection or transaction from the caller.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::model::{Channel, NotificationStatus};

/// A message about to be delivered.
#[derive(Debug, Clone)]
pub struct NewNotification<'a> {
    pub idempotency_key: &'a str,
    pub workflow_id: Option<Uuid>,
    pub channel: Channel,
    pub template: &'a str,
    pub recipient: &'a str,
    pub subject: &'a str,
    pub body: &'a str,
    pub body_html: Option<&'a str>,
    pub provider: &'a str,
}

/// One logged message.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Notification {
    pub id: Uuid,
    pub idempotency_key: String,
    pub workflow_id: Option<Uuid>,
    pub channel: String,
    pub template: String,
    pub recipient: String,
    pub subject: String,
    pub body: String,
    pub body_html: Option<String>,
    pub status: String,
    pub provider: String,
    pub provider_message_id: Option<String>,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
}

impl Notification {
    pub fn status(&self) -> NotificationStatus {
        // The column's check constraint admits only the three statuses.
        NotificationStatus::parse(&self.status).unwrap_or(NotificationStatus::Pending)
    }
}

const COLUMNS: &str = "id, idempotency_key, workflow_id, channel, template, recipient, subject, \
     body, body_html, status, provider, provider_message_id, attempts, last_error, created_at, \
     updated_at, sent_at";

/// The message for `new`'s key and channel, created if it is the first time, and locked until
/// the transaction ends: a concurrent duplicate task waits here and then sees the outcome.
pub async fn claim(
    tx: &mut PgConnection,
    new: &NewNotification<'_>,
) -> Result<Notification, sqlx::Error> {
    sqlx::query(
        "insert into notifications (id, idempotency_key, workflow_id, channel, template,
                                    recipient, subject, body, body_html, status, provider)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'pending', $10)
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
    .execute(&mut *tx)
    .await?;
    sqlx::query_as(&format!(
        "select {COLUMNS} from notifications
         where idempotency_key = $1 and channel = $2 for update"
    ))
    .bind(new.idempotency_key)
    .bind(new.channel.as_str())
    .fetch_one(tx)
    .await
}

/// How one delivery attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    Sent,
    TransientFailure,
    PermanentFailure,
}

impl AttemptOutcome {
    fn as_str(self) -> &'static str {
        match self {
            Self::Sent => "sent",
            Self::TransientFailure => "transient_failure",
            Self::PermanentFailure => "permanent_failure",
        }
    }
}

/// Logs one attempt and moves the message to where it now is.
pub async fn record_attempt(
    tx: &mut PgConnection,
    id: Uuid,
    provider: &str,
    outcome: AttemptOutcome,
    provider_message_id: Option<&str>,
    error: Option<&str>,
    detail: &Value,
) -> Result<(), sqlx::Error> {
    let status = match outcome {
        AttemptOutcome::Sent => NotificationStatus::Sent,
        AttemptOutcome::TransientFailure => NotificationStatus::Pending,
        AttemptOutcome::PermanentFailure => NotificationStatus::Failed,
    };
    let (attempt,): (i32,) = sqlx::query_as(
        "update notifications set
             attempts = attempts + 1,
             status = $2,
             provider = $3,
             provider_message_id = coalesce($4, provider_message_id),
             last_error = $5,
             sent_at = case when $2 = 'sent' then now() else sent_at end,
             updated_at = now()
         where id = $1
         returning attempts",
    )
    .bind(id)
    .bind(status.as_str())
    .bind(provider)
    .bind(provider_message_id)
    .bind(error)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query(
        "insert into notification_attempts (notification_id, attempt, outcome, provider, detail)
         values ($1, $2, $3, $4, $5)",
    )
    .bind(id)
    .bind(attempt)
    .bind(outcome.as_str())
    .bind(provider)
    .bind(detail)
    .execute(tx)
    .await?;
    Ok(())
}

/// Which messages to list.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub status: Option<NotificationStatus>,
    pub channel: Option<Channel>,
    pub recipient: Option<String>,
    pub workflow_id: Option<Uuid>,
    /// Only messages older than this one (the cursor).
    pub before: Option<Uuid>,
    pub limit: i64,
}

/// Newest first.
pub async fn list(
    conn: &mut PgConnection,
    f: &ListFilter,
) -> Result<Vec<Notification>, sqlx::Error> {
    sqlx::query_as(&format!(
        "select {COLUMNS} from notifications
         where ($1::text is null or status = $1)
           and ($2::text is null or channel = $2)
           and ($3::text is null or recipient = $3)
           and ($4::uuid is null or workflow_id = $4)
           and ($5::uuid is null or id < $5)
         order by id desc
         limit $6"
    ))
    .bind(f.status.map(NotificationStatus::as_str))
    .bind(f.channel.map(Channel::as_str))
    .bind(f.recipient.as_deref())
    .bind(f.workflow_id)
    .bind(f.before)
    .bind(f.limit)
    .fetch_all(conn)
    .await
}

pub async fn get(conn: &mut PgConnection, id: Uuid) -> Result<Option<Notification>, sqlx::Error> {
    sqlx::query_as(&format!(
        "select {COLUMNS} from notifications where id = $1"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// One logged attempt.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Attempt {
    pub attempt: i32,
    pub outcome: String,
    pub provider: String,
    pub detail: Value,
    pub at: DateTime<Utc>,
}

pub async fn attempts(conn: &mut PgConnection, id: Uuid) -> Result<Vec<Attempt>, sqlx::Error> {
    sqlx::query_as(
        "select attempt, outcome, provider, detail, at from notification_attempts
         where notification_id = $1 order by attempt",
    )
    .bind(id)
    .fetch_all(conn)
    .await
}

/// A message the outbox provider recorded.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct OutboxMessage {
    pub notification_id: Uuid,
    pub channel: String,
    pub recipient: String,
    pub content: String,
    pub created_at: DateTime<Utc>,
}

/// Newest first, before the cursor.
pub async fn outbox(
    conn: &mut PgConnection,
    before: Option<Uuid>,
    limit: i64,
) -> Result<Vec<OutboxMessage>, sqlx::Error> {
    sqlx::query_as(
        "select notification_id, channel, recipient, content, created_at from outbox_messages
         where $1::uuid is null or notification_id < $1
         order by notification_id desc limit $2",
    )
    .bind(before)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Where a user wants messages besides email.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Contact {
    pub phone: Option<String>,
    pub push_token: Option<String>,
}

pub async fn contact(conn: &mut PgConnection, user: Uuid) -> Result<Contact, sqlx::Error> {
    let c: Option<Contact> =
        sqlx::query_as("select phone, push_token from contacts where user_id = $1")
            .bind(user)
            .fetch_optional(conn)
            .await?;
    Ok(c.unwrap_or_default())
}

/// Replaces the user's contact details.
pub async fn set_contact(
    conn: &mut PgConnection,
    user: Uuid,
    c: &Contact,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "insert into contacts (user_id, phone, push_token) values ($1, $2, $3)
         on conflict (user_id) do update
         set phone = excluded.phone, push_token = excluded.push_token, updated_at = now()",
    )
    .bind(user)
    .bind(c.phone.as_deref())
    .bind(c.push_token.as_deref())
    .execute(conn)
    .await?;
    Ok(())
}
