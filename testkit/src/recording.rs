//! Activities that only record their effect: one row in `activity_effects` per activity and
//! idempotency key. Tests of the engine and of one service use them for the steps they do not
//! exercise, and count their rows to check that each effect happened exactly once. No role of
//! the `orderflow` binary runs them: `up`, `service` and `worker` run the services' handlers.
//!
//! Faults are injected at runtime through rows of `activity_faults`, so tests can make an
//! activity fail, hang or panic without restarting any worker.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use chrono::Utc;
use orderflow_core::ActivityError;
use serde_json::{Value, json};
use sqlx::{PgPool, migrate::Migrator};
use uuid::Uuid;

use orderflow_activities::{TaskContext, worker::Handler};
use orderflow_workflows::order::contracts::ORDER_SAGA_ACTIVITIES;

/// The recording activities' migrations. They share a database with the engine's, so versions
/// start at 1001 and missing versions (the engine's) are ignored.
pub fn migrator() -> Migrator {
    let mut migrator = sqlx::migrate!("../migrations/recording");
    migrator.set_ignore_missing(true);
    migrator
}

/// Creates or updates the recording tables.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    migrator().run(pool).await
}

/// Records its effect once per idempotency key, for any activity name.
#[derive(Clone, Debug)]
pub struct RecordingActivity {
    pub name: String,
    pub pool: PgPool,
}

impl RecordingActivity {
    pub fn new(name: impl Into<String>, pool: PgPool) -> Self {
        Self {
            name: name.into(),
            pool,
        }
    }
}

#[async_trait]
impl Handler for RecordingActivity {
    fn activity(&self) -> &str {
        &self.name
    }

    async fn handle(&self, ctx: &TaskContext, _input: Value) -> Result<Value, ActivityError> {
        if let Some(fault) = take_fault(&self.pool, &self.name, ctx.workflow_id.0)
            .await
            .map_err(db_error)?
        {
            let code = fault.code.unwrap_or_else(|| "injected".to_owned());
            let message = format!("injected {} fault", fault.mode.as_str());
            match fault.mode {
                FaultMode::FailPermanent => return Err(ActivityError::permanent(code, message)),
                FaultMode::FailTransient => return Err(ActivityError::retryable(code, message)),
                FaultMode::Hang => {
                    // Past the deadline, so the runtime's timeout (and the engine's
                    // start-to-close timer) decide what happens, not this activity.
                    let past = (ctx.deadline - Utc::now()).to_std().unwrap_or_default();
                    tokio::time::sleep(past + Duration::from_secs(1)).await;
                    return Err(ActivityError::retryable(code, message));
                }
                FaultMode::Panic => panic!("{message} in `{}`", self.name),
            }
        }
        sqlx::query(
            "insert into activity_effects
                 (activity, idempotency_key, workflow_id, step, first_attempt)
             values ($1, $2, $3, $4, $5)
             on conflict do nothing",
        )
        .bind(&self.name)
        .bind(&ctx.idempotency_key)
        .bind(ctx.workflow_id.0)
        .bind(&ctx.step)
        .bind(i32::try_from(ctx.attempt).unwrap_or(i32::MAX))
        .execute(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(json!({ "activity": self.name, "idempotency_key": ctx.idempotency_key }))
    }
}

fn db_error(e: sqlx::Error) -> ActivityError {
    ActivityError::retryable("database", e.to_string())
}

/// A recording activity for every activity of the order saga.
pub fn order_saga_handlers(pool: PgPool) -> Vec<Arc<dyn Handler>> {
    ORDER_SAGA_ACTIVITIES
        .iter()
        .map(|name| Arc::new(RecordingActivity::new(*name, pool.clone())) as Arc<dyn Handler>)
        .collect()
}

/// What an injected fault makes the activity do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultMode {
    /// Fail with a non-retryable error.
    FailPermanent,
    /// Fail with a retryable error.
    FailTransient,
    /// Answer nothing before the task's deadline.
    Hang,
    /// Panic inside the activity.
    Panic,
}

impl FaultMode {
    /// The stored name (the `mode` column's check constraint lists them).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FailPermanent => "fail_permanent",
            Self::FailTransient => "fail_transient",
            Self::Hang => "hang",
            Self::Panic => "panic",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [
            Self::FailPermanent,
            Self::FailTransient,
            Self::Hang,
            Self::Panic,
        ]
        .into_iter()
        .find(|m| m.as_str() == s)
    }
}

/// One row of `activity_faults`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    pub activity: String,
    /// `None`: every workflow.
    pub workflow_id: Option<Uuid>,
    pub mode: FaultMode,
    /// How many tasks it hits; `None`: every one.
    pub remaining: Option<i32>,
    /// The error code reported; `None`: `injected`.
    pub code: Option<String>,
}

impl Fault {
    /// A fault of `activity` for every workflow, forever.
    pub fn new(activity: impl Into<String>, mode: FaultMode) -> Self {
        Self {
            activity: activity.into(),
            workflow_id: None,
            mode,
            remaining: None,
            code: None,
        }
    }

    /// Fails with the non-retryable `code` (e.g. `card_declined`).
    pub fn permanent(activity: impl Into<String>, code: impl Into<String>) -> Self {
        Self::new(activity, FaultMode::FailPermanent).with_code(code)
    }

    /// Fails with the retryable `code`.
    pub fn transient(activity: impl Into<String>, code: impl Into<String>) -> Self {
        Self::new(activity, FaultMode::FailTransient).with_code(code)
    }

    pub fn hang(activity: impl Into<String>) -> Self {
        Self::new(activity, FaultMode::Hang)
    }

    pub fn panic(activity: impl Into<String>) -> Self {
        Self::new(activity, FaultMode::Panic)
    }

    /// Only tasks of this workflow.
    pub fn for_workflow(mut self, workflow_id: Uuid) -> Self {
        self.workflow_id = Some(workflow_id);
        self
    }

    /// Only the next `n` matching tasks.
    pub fn times(mut self, n: i32) -> Self {
        self.remaining = Some(n);
        self
    }

    pub fn with_code(mut self, code: impl Into<String>) -> Self {
        self.code = Some(code.into());
        self
    }
}

/// Adds a fault; it applies from the next task on.
pub async fn inject(pool: &PgPool, fault: &Fault) -> Result<(), sqlx::Error> {
    sqlx::query(
        "insert into activity_faults (activity, workflow_id, mode, remaining, code)
         values ($1, $2, $3, $4, $5)",
    )
    .bind(&fault.activity)
    .bind(fault.workflow_id)
    .bind(fault.mode.as_str())
    .bind(fault.remaining)
    .bind(&fault.code)
    .execute(pool)
    .await?;
    Ok(())
}

/// Removes every fault.
pub async fn clear_faults(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query("delete from activity_faults")
        .execute(pool)
        .await?;
    Ok(())
}

/// How many effects `activity` recorded.
pub async fn effects_count(pool: &PgPool, activity: &str) -> Result<i64, sqlx::Error> {
    let (n,): (i64,) = sqlx::query_as("select count(*) from activity_effects where activity = $1")
        .bind(activity)
        .fetch_one(pool)
        .await?;
    Ok(n)
}

/// The fault that applies to this task, if any, spending one of its `remaining` hits.
///
/// The workflow's own fault wins over an all-workflows one. The `remaining` condition is repeated
/// in the outer `where` because Postgres re-checks it on the row a concurrent worker just
/// decremented: of two workers racing for the last hit, one gets no row instead of both getting it.
async fn take_fault(
    pool: &PgPool,
    activity: &str,
    workflow_id: Uuid,
) -> Result<Option<TakenFault>, sqlx::Error> {
    let row: Option<(String, Option<String>)> = sqlx::query_as(
        "update activity_faults f set remaining = f.remaining - 1
         where f.id = (
                 select id from activity_faults
                 where activity = $1
                   and (workflow_id = $2 or workflow_id is null)
                   and (remaining is null or remaining > 0)
                 order by workflow_id is null, id
                 limit 1)
           and (f.remaining is null or f.remaining > 0)
         returning f.mode, f.code",
    )
    .bind(activity)
    .bind(workflow_id)
    .fetch_optional(pool)
    .await?;
    Ok(row.and_then(|(mode, code)| {
        // The check constraint keeps unknown modes out of the table.
        FaultMode::parse(&mode).map(|mode| TakenFault { mode, code })
    }))
}

struct TakenFault {
    mode: FaultMode,
    code: Option<String>,
}
