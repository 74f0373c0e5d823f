//! The store's queries on Postgres (`migrations/notification`).

use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::{
    Attempt, Claim, Claimed, Contact, Hold, ListFilter, NewAttempt, NewNotification, Notification,
    OutboxMessage,
};
use crate::model::{Channel, NotificationStatus};

const COLUMNS: &str = "id, idempotency_key, workflow_id, channel, template, recipient, subject, \
     body, body_html, status, provider, provider_message_id, attempts, last_error, created_at, \
     updated_at, sent_at";

/// Commits the message's row if it is new, then locks it until the claim is settled or dropped:
/// a concurrent duplicate task waits here and then sees the outcome.
pub(super) async fn claim(
    pool: &PgPool,
    new: &NewNotification<'_>,
) -> Result<Claimed, sqlx::Error> {
    insert(pool, new).await?;
    let mut tx = pool.begin().await?;
    let row: Notification = sqlx::query_as(&format!(
        "select {COLUMNS} from notifications
         where idempotency_key = $1 and channel = $2 for update"
    ))
    .bind(new.idempotency_key)
    .bind(new.channel.as_str())
    .fetch_one(&mut *tx)
    .await?;
    if row.status() == NotificationStatus::Pending {
        return Ok(Claimed::Held(Claim {
            row,
            hold: Hold::Postgres(tx),
        }));
    }
    tx.commit().await?;
    Ok(Claimed::Settled(row))
}

async fn insert(pool: &PgPool, new: &NewNotification<'_>) -> Result<(), sqlx::Error> {
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
    .execute(pool)
    .await?;
    Ok(())
}

/// Logs one attempt and moves the message to where it now is, in the claim's transaction.
pub(super) async fn record_attempt(
    tx: &mut PgConnection,
    a: &NewAttempt<'_>,
) -> Result<(), sqlx::Error> {
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
    .bind(a.id)
    .bind(a.outcome.status().as_str())
    .bind(a.provider)
    .bind(a.provider_message_id)
    .bind(a.error)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query(
        "insert into notification_attempts (notification_id, attempt, outcome, provider, detail)
         values ($1, $2, $3, $4, $5)",
    )
    .bind(a.id)
    .bind(attempt)
    .bind(a.outcome.as_str())
    .bind(a.provider)
    .bind(a.detail)
    .execute(tx)
    .await?;
    Ok(())
}

pub(super) async fn list(pool: &PgPool, f: &ListFilter) -> Result<Vec<Notification>, sqlx::Error> {
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
    .fetch_all(pool)
    .await
}

pub(super) async fn get(pool: &PgPool, id: Uuid) -> Result<Option<Notification>, sqlx::Error> {
    sqlx::query_as(&format!(
        "select {COLUMNS} from notifications where id = $1"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await
}

pub(super) async fn attempts(pool: &PgPool, id: Uuid) -> Result<Vec<Attempt>, sqlx::Error> {
    sqlx::query_as(
        "select attempt, outcome, provider, detail, at from notification_attempts
         where notification_id = $1 order by attempt",
    )
    .bind(id)
    .fetch_all(pool)
    .await
}

pub(super) async fn record_outbox(
    pool: &PgPool,
    notification_id: Uuid,
    channel: Channel,
    recipient: &str,
    content: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "insert into outbox_messages (notification_id, channel, recipient, content)
         values ($1, $2, $3, $4)
         on conflict (notification_id) do nothing",
    )
    .bind(notification_id)
    .bind(channel.as_str())
    .bind(recipient)
    .bind(content)
    .execute(pool)
    .await?;
    Ok(())
}

pub(super) async fn outbox(
    pool: &PgPool,
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
    .fetch_all(pool)
    .await
}

pub(super) async fn contact(pool: &PgPool, user: Uuid) -> Result<Option<Contact>, sqlx::Error> {
    sqlx::query_as("select phone, push_token from contacts where user_id = $1")
        .bind(user)
        .fetch_optional(pool)
        .await
}

pub(super) async fn set_contact(pool: &PgPool, user: Uuid, c: &Contact) -> Result<(), sqlx::Error> {
    sqlx::query(
        "insert into contacts (user_id, phone, push_token) values ($1, $2, $3)
         on conflict (user_id) do update
         set phone = excluded.phone, push_token = excluded.push_token, updated_at = now()",
    )
    .bind(user)
    .bind(c.phone.as_deref())
    .bind(c.push_token.as_deref())
    .execute(pool)
    .await?;
    Ok(())
}
