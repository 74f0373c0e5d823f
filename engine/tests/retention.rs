//! Retention on both stores (a fresh Postgres database, a fresh SQLite file), archiving into a
//! real local directory through `object_store`: what is due is archived then deleted with its
//! history and timers; running, `needs_attention`, recent and `forever` workflows stay; a crash
//! between claim and delete loses nothing and archives nothing twice; a workflow that moves
//! while its batch is written is not deleted until the object holds its newest history.

use std::{collections::HashMap, path::PathBuf, sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use orderflow_core::{
    ActivityError, Registry, WorkflowDefinition, WorkflowId, WorkflowState, replay, testing::Driver,
};
use orderflow_engine::{
    retention::{Archive, Policy, Retention, RetentionConfig, archive},
    store::{
        Store,
        change::{Change, HistoryRow, NewTimer, NewWorkflow, Update},
        retention::{RetentionStore, Selection, Types},
        sqlite::SqliteStore,
    },
};
use orderflow_testkit::TestEnv;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

fn scratch_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("orderflow-retention-{what}-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn registry() -> Registry {
    Registry::new().with(orderflow_workflows::order::v1())
}

/// How a seeded saga ends.
#[derive(Clone, Copy, Debug)]
enum End {
    Completed,
    Terminated,
    Running,
    NeedsAttention,
}

/// A UUIDv7 of instant `at`.
fn v7_at(at: DateTime<Utc>) -> Uuid {
    let ts = uuid::Timestamp::from_unix(
        uuid::NoContext,
        at.timestamp() as u64,
        at.timestamp_subsec_nanos(),
    );
    Uuid::new_v7(ts)
}

/// Writes an order saga of type `workflow_type` created at `finished - 1 min`, driven by the real
/// decider to `end`, whose last change is at `finished`; with one timer.
async fn seed<S: Store>(
    store: &S,
    workflow_type: &str,
    end: End,
    finished: DateTime<Utc>,
) -> anyhow::Result<Uuid> {
    // Microseconds, as the engine stamps events (the database keeps no more).
    let micros =
        |t: DateTime<Utc>| DateTime::from_timestamp_micros(t.timestamp_micros()).expect("in range");
    let finished = micros(finished);
    let created = micros(finished - chrono::Duration::minutes(1));
    let id = v7_at(created);
    let def: Arc<dyn WorkflowDefinition> = Arc::new(orderflow_workflows::order::v1());
    let mut d = Driver::for_definition(def)
        .workflow_id(WorkflowId(id))
        .start_at(created)
        .start(orderflow_testkit::order_input())?;
    match end {
        End::Completed => {
            d.complete("reserve", json!({"reservation_id": "r1"}))?;
            d.complete(
                "charge",
                json!({"payment_id": "p", "payment_intent_id": "pi"}),
            )?;
            d.complete("create_order", json!({"status": "confirmed"}))?;
            d.complete("notify", json!({"notification_id": "n1"}))?;
        }
        End::Terminated => {
            d.terminate("admin:ops", "test order")?;
        }
        End::Running => {}
        End::NeedsAttention => {
            d.complete("reserve", json!({"reservation_id": "r1"}))?;
            d.fail(
                "charge",
                ActivityError::permanent("card_declined", "declined"),
            )?;
            d.fail(
                "reserve",
                ActivityError::permanent("ledger_locked", "release refused"),
            )?;
        }
    }
    let view = d.state().view();
    let history = d.history();
    let mut change = Change::default();
    change.creates.push(NewWorkflow {
        id,
        workflow_type: workflow_type.to_owned(),
        version: 1,
        status: view.status.as_str().to_owned(),
        reason: view.reason.clone(),
        state: serde_json::to_string(d.state() as &dyn WorkflowState)?,
        last_seq: history.events.len() as i64,
        business_keys: json!({ "order_id": id.to_string() }).to_string(),
        idempotency_key: None,
        request_hash: None,
        fingerprint: "test".into(),
        at: finished,
    });
    for e in &history.events {
        change.history.push(HistoryRow {
            workflow_id: id,
            seq: e.seq as i64,
            at: e.at,
            event: serde_json::to_string(&e.event)?,
            commands: serde_json::to_string(&e.commands)?,
            ignored: e.ignored.clone(),
        });
    }
    change.start_timer(NewTimer {
        id: Uuid::new_v4(),
        workflow_id: id,
        fire_at: finished + chrono::Duration::days(400),
        purpose: json!({"purpose": "deadline"}).to_string(),
    });
    let written = store.write(&change).await?;
    anyhow::ensure!(written.contains(&id), "seeded {id}");
    Ok(id)
}

fn days(n: i64) -> chrono::Duration {
    chrono::Duration::days(n)
}

/// Every object in the archive directory, as (key, its workflow ids).
fn objects(dir: &std::path::Path) -> anyhow::Result<HashMap<String, Vec<Uuid>>> {
    let mut out = HashMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let key = p.strip_prefix(dir)?.to_string_lossy().into_owned();
                let records = archive::decode(&key, &std::fs::read(&p)?)?;
                out.insert(key, records.iter().map(|r| r.workflow.id).collect());
            }
        }
    }
    Ok(out)
}

/// The rows a workflow still has: (workflow, history, timers).
async fn remaining<S: Store>(store: &S, id: Uuid) -> anyhow::Result<(bool, usize, usize)> {
    Ok((
        store.get(id).await?.is_some(),
        store.history(id).await?.len(),
        store.timers_of(&[id]).await?.len(),
    ))
}

/// The contract: what is due goes to the archive and out of the database; nothing else moves.
async fn retention_contract<S: RetentionStore>(store: S) -> anyhow::Result<()> {
    let dir = scratch_dir("archive");
    let archive = Archive::open(&format!("file://{}", dir.display()))?;
    let now = Utc::now();
    let policy = Policy::parse(Some("30d"), &["keep=forever".into(), "short=1d".into()])
        .map_err(anyhow::Error::msg)?;
    let config = RetentionConfig {
        batch: 4,
        pause: Duration::ZERO,
        interval: Duration::from_secs(60),
    };

    let mut due = Vec::new();
    for i in 0..9 {
        due.push(
            seed(
                &store,
                "order",
                End::Completed,
                now - days(40) - chrono::Duration::seconds(i),
            )
            .await?,
        );
    }
    due.push(seed(&store, "order", End::Terminated, now - days(31)).await?);
    due.push(seed(&store, "short", End::Completed, now - days(2)).await?);
    let recent = seed(&store, "order", End::Completed, now - days(10)).await?;
    let short_recent = seed(
        &store,
        "short",
        End::Terminated,
        now - chrono::Duration::hours(2),
    )
    .await?;
    let forever = seed(&store, "keep", End::Completed, now - days(400)).await?;
    let running = seed(&store, "order", End::Running, now - days(100)).await?;
    let attention = seed(&store, "order", End::NeedsAttention, now - days(100)).await?;
    let kept = [recent, short_recent, forever, running, attention];

    let retention = Retention::new(
        store.clone(),
        archive.clone(),
        policy.clone(),
        config.clone(),
    );
    let round = retention.round(now, &CancellationToken::new()).await?;
    assert_eq!(round.archived, due.len() as u64, "{round:?}");
    assert_eq!(round.lag, Duration::ZERO, "nothing due is left");
    // Nine old orders and one terminated one in batches of four, the `short` one in its own.
    assert_eq!(round.batches, 4, "{round:?}");

    let objects = objects(&dir)?;
    let mut seen: Vec<Uuid> = objects.values().flatten().copied().collect();
    seen.sort();
    let mut expected = due.clone();
    expected.sort();
    assert_eq!(seen, expected, "every due workflow in exactly one object");

    let registry = registry();
    for id in &due {
        assert_eq!(
            remaining(&store, *id).await?,
            (false, 0, 0),
            "{id} deleted with its rows"
        );
        let at = store.archived(*id).await?.expect("recorded as archived");
        assert!(at.archived_at.is_some(), "{at:?}");
        let record = archive
            .find(&at.object_key, *id)
            .await?
            .expect("in its object");
        assert!(matches!(
            record.workflow.status.as_str(),
            "completed" | "terminated"
        ));
        assert_eq!(record.history.events.len() as i64, record.workflow.last_seq);
        // The archived history is a whole one: it replays to the archived status.
        let state = replay(&registry, &record.history)?;
        assert_eq!(state.status().as_str(), record.workflow.status);
    }
    for id in kept {
        let (row, history, timers) = remaining(&store, id).await?;
        assert!(row && history > 0 && timers == 1, "{id} untouched");
        assert_eq!(store.archived(id).await?, None);
    }

    // A second round finds nothing.
    let again = retention.round(now, &CancellationToken::new()).await?;
    assert_eq!(again.archived, 0, "{again:?}");

    // Later the recent one is due too; the lag is how far past its retention the oldest left is.
    let later = now + days(21);
    let sel = Selection {
        types: Types::AllBut(vec!["keep".into(), "short".into()]),
        finished_before: later - days(30),
    };
    let oldest = store
        .oldest_due(&sel)
        .await?
        .expect("the recent one is due then");
    assert_eq!(
        oldest.timestamp_millis(),
        (now - days(10)).timestamp_millis()
    );
    let round = retention.round(later, &CancellationToken::new()).await?;
    assert_eq!(
        round.archived, 2,
        "the recent order and the short one: {round:?}"
    );
    assert!(store.get(recent).await?.is_none());
    assert!(store.get(running).await?.is_some());
    assert!(store.get(attention).await?.is_some());
    assert!(store.get(forever).await?.is_some());
    Ok(())
}

/// A crash after the claim and after the object is written: the next round writes the same
/// key again and deletes; no workflow lands in two objects.
async fn retention_crash_contract<S: RetentionStore>(store: S) -> anyhow::Result<()> {
    let dir = scratch_dir("crash");
    let archive = Archive::open(dir.to_str().expect("utf-8 path"))?;
    let now = Utc::now();
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            seed(
                &store,
                "order",
                End::Completed,
                now - days(60) - chrono::Duration::seconds(i),
            )
            .await?,
        );
    }
    let sel = Selection {
        types: Types::AllBut(Vec::new()),
        finished_before: now - days(30),
    };
    // The first process claims three, writes their object, and dies before the delete.
    let batch = store.claim(&sel, 3).await?.expect("three are due");
    assert_eq!(batch.ids.len(), 3);
    let rows = store.read(&batch.ids).await?;
    let records: Vec<_> = rows
        .into_iter()
        .map(|(r, h)| archive::Record::new(r, h))
        .collect();
    archive
        .put(&batch.object_key, archive::encode(&records))
        .await?;
    // Claimed workflows are still there, and still shown (pending, not archived).
    for id in &batch.ids {
        assert!(store.get(*id).await?.is_some());
        assert_eq!(
            store.archived(*id).await?.expect("claimed").archived_at,
            None
        );
    }
    // Another claim does not take them again.
    let other = store.claim(&sel, 10).await?.expect("two more are due");
    assert_eq!(other.ids.len(), 2);
    assert!(other.ids.iter().all(|id| !batch.ids.contains(id)));

    // The next process: pending batches first, under their keys.
    let retention = Retention::new(
        store.clone(),
        archive.clone(),
        Policy::default(),
        RetentionConfig::default(),
    );
    let round = retention.round(now, &CancellationToken::new()).await?;
    assert_eq!(round.archived, 5, "{round:?}");
    assert_eq!(round.batches, 2, "only the two pending batches: {round:?}");
    let objects = objects(&dir)?;
    assert_eq!(objects.len(), 2, "{objects:?}");
    assert_eq!(objects[&batch.object_key], batch.ids);
    for id in &ids {
        assert!(store.get(*id).await?.is_none());
        assert!(store.archived(*id).await?.unwrap().archived_at.is_some());
    }
    Ok(())
}

/// A workflow that moves after its batch was read (a late result recorded as ignored) is not
/// deleted on the old object; the batch is written again with its newest history.
async fn retention_moved_contract<S: RetentionStore>(store: S) -> anyhow::Result<()> {
    let dir = scratch_dir("moved");
    let archive = Archive::open(&format!("file://{}", dir.display()))?;
    let now = Utc::now();
    let id = seed(&store, "order", End::Terminated, now - days(60)).await?;
    let sel = Selection {
        types: Types::Only("order".into()),
        finished_before: now - days(30),
    };
    let batch = store.claim(&sel, 10).await?.expect("due");
    let (row, history) = store.read(&batch.ids).await?.pop().expect("read");
    let seq = row.last_seq;
    // The committer records a late event meanwhile.
    let mut change = Change::default();
    change.updates.push(Update {
        id,
        status: row.status.clone(),
        reason: row.reason.clone(),
        state: row.state.to_string(),
        last_seq: seq + 1,
        prev_seq: seq,
        at: row.updated_at,
        fingerprint: None,
    });
    let mut late = history.last().expect("an event").clone();
    late.seq += 1;
    change.history.push(HistoryRow {
        workflow_id: id,
        seq: seq + 1,
        at: late.at,
        event: serde_json::to_string(&late.event)?,
        commands: "[]".into(),
        ignored: Some("late result".into()),
    });
    assert!(store.write(&change).await?.contains(&id));
    assert!(
        !store.finish(batch.id, &[(id, seq)]).await?,
        "refused: it moved"
    );
    assert_eq!(remaining(&store, id).await?, (true, seq as usize + 1, 1));

    let retention = Retention::new(
        store.clone(),
        archive.clone(),
        Policy::default(),
        RetentionConfig::default(),
    );
    assert_eq!(
        retention
            .round(now, &CancellationToken::new())
            .await?
            .archived,
        1
    );
    let record = archive
        .find(&batch.object_key, id)
        .await?
        .expect("archived");
    assert_eq!(
        record.history.events.len() as i64,
        seq + 1,
        "with the late event"
    );
    assert!(store.get(id).await?.is_none());
    Ok(())
}

async fn sqlite() -> anyhow::Result<SqliteStore> {
    let dir = scratch_dir("db");
    Ok(SqliteStore::open(Some(&dir.join("engine.db"))).await?)
}

#[tokio::test]
async fn retention_postgres() -> anyhow::Result<()> {
    retention_contract(TestEnv::new().await?.pool).await
}

#[tokio::test]
async fn retention_sqlite() -> anyhow::Result<()> {
    retention_contract(sqlite().await?).await
}

#[tokio::test]
async fn retention_crash_postgres() -> anyhow::Result<()> {
    retention_crash_contract(TestEnv::new().await?.pool).await
}

#[tokio::test]
async fn retention_crash_sqlite() -> anyhow::Result<()> {
    retention_crash_contract(sqlite().await?).await
}

#[tokio::test]
async fn retention_moved_postgres() -> anyhow::Result<()> {
    retention_moved_contract(TestEnv::new().await?.pool).await
}

#[tokio::test]
async fn retention_moved_sqlite() -> anyhow::Result<()> {
    retention_moved_contract(sqlite().await?).await
}
