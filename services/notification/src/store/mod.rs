//! The notification log (`notifications`, `notification_attempts`), what the outbox provider
//! recorded (`outbox_messages`) and `contacts`, on either backend of [`Db`]: each function matches
//! on it and runs the query in that backend's dialect ([`postgres`], [`sqlite`]).
//!
//! A delivery is claim, call the provider, record: [`claim`] holds the message so that a
//! duplicate of the task waits and then finds the outcome, and [`Claim::record_attempt`] stores
//! the outcome and lets go. Postgres holds the row lock of an open transaction; SQLite cannot keep
//! a write transaction open while the provider is called (one writer for the whole file: the
//! outbox provider's own write would wait on it), so it holds a lease on the row instead.

mod postgres;
mod sqlite;

use chrono::{DateTime, Utc};
use orderflow_service_kit::db::Db;
use serde::Serialize;
use serde_json::Value;
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

/// What [`claim`] found.
#[derive(Debug)]
pub enum Claimed {
    /// Sent or refused for good already: that outcome stands, and nothing is held.
    Settled(Notification),
    /// Pending, and held for this delivery until [`Claim::record_attempt`] (or until the claim
    /// is dropped).
    Held(Claim),
    /// Another delivery still held the message after waiting [`CLAIM_WAIT`]: try again later.
    /// Only on SQLite, whose wait is bounded; Postgres waits for the row lock.
    Busy,
}

/// How long a duplicate delivery waits on SQLite for the one holding the message before it
/// gives up with [`Claimed::Busy`].
pub const CLAIM_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// A pending message held by this delivery.
#[derive(Debug)]
pub struct Claim {
    row: Notification,
    hold: Hold,
}

#[derive(Debug)]
enum Hold {
    /// The row lock of this open transaction.
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
    Sqlite(sqlite::Lease),
}

impl Claim {
    /// The message as stored: a retry sends what the first attempt did.
    pub fn notification(&self) -> &Notification {
        &self.row
    }

    /// Logs one attempt, moves the message to where it now is and lets go of it.
    pub async fn record_attempt(
        self,
        provider: &str,
        outcome: AttemptOutcome,
        provider_message_id: Option<&str>,
        error: Option<&str>,
        detail: &Value,
    ) -> Result<(), sqlx::Error> {
        let attempt = NewAttempt {
            id: self.row.id,
            provider,
            outcome,
            provider_message_id,
            error,
            detail,
        };
        match self.hold {
            Hold::Postgres(mut tx) => {
                postgres::record_attempt(&mut tx, &attempt).await?;
                tx.commit().await
            }
            Hold::Sqlite(lease) => sqlite::record_attempt(lease, &attempt).await,
        }
    }
}

/// Lets go of every message a delivery holds. For an embedded database at start: only one
/// process opens it, so a hold found then is the previous process's, killed mid-delivery, and its
/// messages are free now rather than when the leases run out (which would outlast the send
/// activity's timeout and make the saga wait minutes). On Postgres a hold is a row lock that died
/// with its connection, so there is nothing to do.
pub async fn release_holds(db: &Db) -> Result<u64, sqlx::Error> {
    match db {
        Db::Postgres(_) => Ok(0),
        Db::Sqlite(pool) => sqlite::release_leases(pool).await,
    }
}

/// The message for `new`'s key and channel, created if it is the first time. Its row (and so its
/// id, the Message-ID) is committed before anything is held: a crash after the provider took the
/// message but before the outcome is stored must leave the retry the same id to send with.
pub async fn claim(db: &Db, new: &NewNotification<'_>) -> Result<Claimed, sqlx::Error> {
    match db {
        Db::Postgres(pool) => postgres::claim(pool, new).await,
        Db::Sqlite(pool) => sqlite::claim(pool, new).await,
    }
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

    /// Where the message is after an attempt that ended so.
    fn status(self) -> NotificationStatus {
        match self {
            Self::Sent => NotificationStatus::Sent,
            Self::TransientFailure => NotificationStatus::Pending,
            Self::PermanentFailure => NotificationStatus::Failed,
        }
    }
}

/// One attempt to log, with the message it was for.
#[derive(Debug)]
struct NewAttempt<'a> {
    id: Uuid,
    provider: &'a str,
    outcome: AttemptOutcome,
    provider_message_id: Option<&'a str>,
    error: Option<&'a str>,
    detail: &'a Value,
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
pub async fn list(db: &Db, f: &ListFilter) -> Result<Vec<Notification>, sqlx::Error> {
    match db {
        Db::Postgres(pool) => postgres::list(pool, f).await,
        Db::Sqlite(pool) => sqlite::list(pool, f).await,
    }
}

pub async fn get(db: &Db, id: Uuid) -> Result<Option<Notification>, sqlx::Error> {
    match db {
        Db::Postgres(pool) => postgres::get(pool, id).await,
        Db::Sqlite(pool) => sqlite::get(pool, id).await,
    }
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

/// The message's attempts, first first.
pub async fn attempts(db: &Db, id: Uuid) -> Result<Vec<Attempt>, sqlx::Error> {
    match db {
        Db::Postgres(pool) => postgres::attempts(pool, id).await,
        Db::Sqlite(pool) => sqlite::attempts(pool, id).await,
    }
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

/// Records what the outbox provider "delivered". Keyed by the notification: a repeat records
/// nothing new.
pub async fn record_outbox(
    db: &Db,
    notification_id: Uuid,
    channel: Channel,
    recipient: &str,
    content: &str,
) -> Result<(), sqlx::Error> {
    match db {
        Db::Postgres(pool) => {
            postgres::record_outbox(pool, notification_id, channel, recipient, content).await
        }
        Db::Sqlite(pool) => {
            sqlite::record_outbox(pool, notification_id, channel, recipient, content).await
        }
    }
}

/// What the outbox provider recorded, newest first, before the cursor.
pub async fn outbox(
    db: &Db,
    before: Option<Uuid>,
    limit: i64,
) -> Result<Vec<OutboxMessage>, sqlx::Error> {
    match db {
        Db::Postgres(pool) => postgres::outbox(pool, before, limit).await,
        Db::Sqlite(pool) => sqlite::outbox(pool, before, limit).await,
    }
}

/// Where a user wants messages besides email.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Contact {
    pub phone: Option<String>,
    pub push_token: Option<String>,
}

/// The user's contact details; none when the user never set any.
pub async fn contact(db: &Db, user: Uuid) -> Result<Contact, sqlx::Error> {
    let c = match db {
        Db::Postgres(pool) => postgres::contact(pool, user).await?,
        Db::Sqlite(pool) => sqlite::contact(pool, user).await?,
    };
    Ok(c.unwrap_or_default())
}

/// Replaces the user's contact details.
pub async fn set_contact(db: &Db, user: Uuid, c: &Contact) -> Result<(), sqlx::Error> {
    match db {
        Db::Postgres(pool) => postgres::set_contact(pool, user, c).await,
        Db::Sqlite(pool) => sqlite::set_contact(pool, user, c).await,
    }
}
