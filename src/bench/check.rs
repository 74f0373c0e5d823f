//! What must hold after a run, read from the database: every saga terminal with the status its
//! input asked for, and each effect there exactly once (a completed saga has all four rows and
//! none undone; a compensated one has its reservation released and nothing else).

use sqlx::Connection;

use super::stack::BenchDb;

/// The verdict of a run's check.
#[derive(Debug, Clone, Default)]
pub struct Check {
    /// Sagas the run started (warm-up included).
    pub sagas: i64,
    pub completed: i64,
    pub compensated: i64,
    /// Sagas in any other status.
    pub other: i64,
    /// Sagas whose rows are not exactly what their status requires.
    pub wrong_effects: i64,
    /// Rows belonging to no saga of the run, or more rows than sagas.
    pub stray_rows: i64,
    /// Outbox rows left: every finished event was received, so none may remain.
    pub outbox_left: i64,
    /// Sagas expected to compensate.
    pub expected_compensated: i64,
    /// Finished events whose status differed from what the saga's input asked for.
    pub wrong_status: usize,
}

impl Check {
    /// What is off, or `None` if nothing is.
    pub fn failure(&self) -> Option<String> {
        let mut off = Vec::new();
        if self.completed + self.compensated + self.other != self.sagas {
            off.push(format!(
                "{} sagas in the database, {} started",
                self.completed + self.compensated + self.other,
                self.sagas
            ));
        }
        if self.other > 0 {
            off.push(format!("{} sagas not terminal", self.other));
        }
        if self.compensated != self.expected_compensated {
            off.push(format!(
                "{} compensated, {} expected",
                self.compensated, self.expected_compensated
            ));
        }
        if self.wrong_effects > 0 {
            off.push(format!("{} sagas with wrong effects", self.wrong_effects));
        }
        if self.stray_rows > 0 {
            off.push(format!("{} stray effect rows", self.stray_rows));
        }
        if self.outbox_left > 0 {
            off.push(format!("{} outbox rows left", self.outbox_left));
        }
        if self.wrong_status > 0 {
            off.push(format!(
                "{} finished events with an unexpected status",
                self.wrong_status
            ));
        }
        (!off.is_empty()).then(|| off.join("; "))
    }
}

/// Waits (up to `within`) for the engine to delete the outbox rows of messages the queue
/// confirmed: the committer deletes them in the batch after the confirm, so the last sagas' rows
/// outlive their finished events by a moment. What is still there after `within` is reported by
/// the check.
pub async fn drained(db: &BenchDb, within: std::time::Duration) -> anyhow::Result<()> {
    let mut conn = sqlx::PgConnection::connect(&db.url).await?;
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let (left,): (i64,) = sqlx::query_as("select count(*) from outbox")
            .fetch_one(&mut conn)
            .await?;
        if left == 0 || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    conn.close().await?;
    Ok(())
}

/// Checks an engine run of `sagas` sagas (warm-up included) of which every `fail_every`-th was
/// declined.
pub async fn engine(db: &BenchDb, sagas: usize, fail_every: usize) -> anyhow::Result<Check> {
    let mut conn = sqlx::PgConnection::connect(&db.url).await?;
    let (completed, compensated, other): (i64, i64, i64) = sqlx::query_as(
        "select count(*) filter (where status = 'completed'),
                count(*) filter (where status = 'compensated'),
                count(*) filter (where status not in ('completed', 'compensated'))
         from workflows",
    )
    .fetch_one(&mut conn)
    .await?;
    // Each table is keyed by workflow id, so a row per saga at most; what has to be checked is
    // that the right rows exist, with the right undone flags, for each saga's outcome.
    let (wrong_effects,): (i64,) = sqlx::query_as(
        "select count(*) from workflows w
         left join reservations r on r.workflow_id = w.id
         left join payments p on p.workflow_id = w.id
         left join orders o on o.workflow_id = w.id
         left join notifications n on n.workflow_id = w.id
         where not case w.status
             when 'completed' then
                 r.workflow_id is not null and not r.released
                 and p.workflow_id is not null and not p.refunded
                 and o.workflow_id is not null and not o.cancelled
                 and n.workflow_id is not null
             when 'compensated' then
                 r.workflow_id is not null and r.released
                 and p.workflow_id is null and o.workflow_id is null and n.workflow_id is null
             else false
         end",
    )
    .fetch_one(&mut conn)
    .await?;
    let stray_rows = stray(&mut conn).await?;
    let (outbox_left,): (i64,) = sqlx::query_as("select count(*) from outbox")
        .fetch_one(&mut conn)
        .await?;
    conn.close().await?;
    Ok(Check {
        sagas: sagas as i64,
        completed,
        compensated,
        other,
        wrong_effects,
        stray_rows,
        outbox_left,
        expected_compensated: sagas.checked_div(fail_every).unwrap_or(0) as i64,
        wrong_status: 0,
    })
}

/// Effect rows of no saga in `workflows`.
async fn stray(conn: &mut sqlx::PgConnection) -> anyhow::Result<i64> {
    let (n,): (i64,) = sqlx::query_as(
        "select (select count(*) from reservations t
                 where not exists (select 1 from workflows w where w.id = t.workflow_id))
              + (select count(*) from payments t
                 where not exists (select 1 from workflows w where w.id = t.workflow_id))
              + (select count(*) from orders t
                 where not exists (select 1 from workflows w where w.id = t.workflow_id))
              + (select count(*) from notifications t
                 where not exists (select 1 from workflows w where w.id = t.workflow_id))",
    )
    .fetch_one(conn)
    .await?;
    Ok(n)
}

/// Checks a raw run: `sagas` rows in each of the four tables.
pub async fn raw(db: &BenchDb, sagas: usize) -> anyhow::Result<Check> {
    let mut conn = sqlx::PgConnection::connect(&db.url).await?;
    let counts: Vec<(i64,)> = sqlx::query_as(
        "select count(*) from reservations union all select count(*) from payments
         union all select count(*) from orders union all select count(*) from notifications",
    )
    .fetch_all(&mut conn)
    .await?;
    conn.close().await?;
    let short: i64 = counts.iter().map(|(n,)| (sagas as i64 - n).abs()).sum();
    Ok(Check {
        sagas: sagas as i64,
        completed: sagas as i64,
        wrong_effects: short,
        ..Check::default()
    })
}
