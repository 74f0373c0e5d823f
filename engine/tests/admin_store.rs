//! The admin UI's reads and sessions answer the same on both stores: each scenario runs on the
//! engine's Postgres (`postgres::`) and on the embedded SQLite store of `orderflow dev`
//! (`sqlite::`), through the read seam (`Reads`) and the committer, with no HTTP in between. The HTTP flows are in `admin.rs`;
//! these cover what pages rarely reach: expired sessions, every filter and cursor bound, each
//! kind of stuck, the audit's order and page bound, and a refused action leaving nothing behind.

mod admin_common;

use std::{sync::Arc, time::Duration};

use chrono::Utc;
use orderflow_core::{Event, Registry, WorkflowId};
use orderflow_engine::{
    apply::{Applier, Outcome, StartRequest, Started},
    committer::Committer,
    store::{
        Reads, Store,
        reads::{Keep, ListFilter, ListRow, Session, StuckFilter, StuckKind},
        sqlite::SqliteStore,
    },
};
use orderflow_queue::{TaskQueue, Topology, embedded::EmbeddedQueue};
use orderflow_testkit::order_input;
use orderflow_workflows::order::contracts::*;
use serde_json::json;
use uuid::Uuid;

macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod postgres {
            $(#[tokio::test]
            async fn $name() -> anyhow::Result<()> {
                let env = orderflow_testkit::TestEnv::new().await?;
                let db = super::Db::new(env.pool.clone(), env.queue());
                super::$name(&db, &super::applier()).await
            })*
        }
        mod sqlite {
            $(#[tokio::test]
            async fn $name() -> anyhow::Result<()> {
                let store = super::SqliteStore::open(None).await?;
                let queue = super::EmbeddedQueue::open(None, super::Topology::default()).await?;
                let db = super::Db::new(store, queue);
                super::$name(&db, &super::applier()).await
            })*
        }
    };
}

on_both_stores!(
    sessions_live_until_they_expire_or_are_closed,
    the_list_honours_every_filter_and_bound,
    each_kind_of_stuck_is_found_with_its_latest_task,
    the_audit_lists_operator_actions_newest_first,
    a_refused_or_unkept_action_leaves_no_trace,
    an_action_batched_behind_another_event_of_its_workflow,
);

/// A store's reads, and a committer on it to start and act with.
struct Db {
    reads: Arc<dyn Reads>,
    committer: Committer,
}

impl Db {
    fn new<S: Store, Q: TaskQueue>(store: S, queue: Q) -> Self {
        let committer = Committer::spawn(
            store.clone(),
            queue,
            applier(),
            Arc::new(tokio::sync::Notify::new()),
        );
        Self {
            reads: Arc::new(store),
            committer,
        }
    }

    async fn start(&self, _: &Applier, req: StartRequest) -> anyhow::Result<Started> {
        Ok(self.committer.start(req).await?)
    }

    async fn apply(
        &self,
        _: &Applier,
        events: &[(WorkflowId, Event)],
        keep: Keep,
    ) -> anyhow::Result<Vec<Outcome>> {
        Ok(self.committer.apply(events.to_vec(), Some(keep)).await?)
    }
}

impl std::ops::Deref for Db {
    type Target = dyn Reads;

    fn deref(&self) -> &Self::Target {
        self.reads.as_ref()
    }
}

/// The order saga with a 20 s start-to-close timeout: a started saga has a task out with its
/// timer pending, and nothing runs it.
fn applier() -> Applier {
    let def = admin_common::stubborn_order(Duration::from_secs(30), Duration::from_secs(20));
    Applier::new(Arc::new(Registry::new().with(def)), Topology::default())
}

async fn start(db: &Db, applier: &Applier, keys: serde_json::Value) -> anyhow::Result<Uuid> {
    let req = StartRequest {
        workflow_type: "order".into(),
        input: order_input(),
        business_keys: keys,
        idempotency_key: None,
        request_hash: None,
    };
    Ok(db.start(applier, req).await?.id.0)
}

fn list(limit: i64) -> ListFilter {
    ListFilter {
        limit,
        ..ListFilter::default()
    }
}

fn ids(rows: &[ListRow]) -> Vec<Uuid> {
    rows.iter().map(|r| r.id).collect()
}

async fn sessions_live_until_they_expire_or_are_closed(db: &Db, _: &Applier) -> anyhow::Result<()> {
    db.open_session(b"live", "admin:ada", "csrf-1", Duration::from_secs(3600))
        .await?;
    db.open_session(b"gone", "admin:bob", "csrf-2", Duration::ZERO)
        .await?;
    assert_eq!(
        db.session(b"live").await?,
        Some(Session {
            actor: "admin:ada".to_owned(),
            csrf_token: "csrf-1".to_owned(),
        })
    );
    assert_eq!(db.session(b"gone").await?, None, "an expired session");
    assert_eq!(db.session(b"never").await?, None);
    // The next login sweeps the expired session; the live one stays.
    db.open_session(b"next", "admin:cy", "csrf-3", Duration::from_secs(60))
        .await?;
    assert!(db.session(b"live").await?.is_some());
    db.close_session(b"live").await?;
    assert_eq!(db.session(b"live").await?, None, "logout ends it");
    assert!(db.session(b"next").await?.is_some());
    Ok(())
}

async fn the_list_honours_every_filter_and_bound(db: &Db, applier: &Applier) -> anyhow::Result<()> {
    let before_all = Utc::now() - chrono::Duration::milliseconds(5);
    let a = start(db, applier, json!({})).await?;
    let order_id = Uuid::new_v4().to_string();
    let b = start(db, applier, json!({ "order_id": order_id })).await?;
    let c = start(db, applier, json!({ "user_id": "u-7" })).await?;
    let after_all = Utc::now() + chrono::Duration::milliseconds(5);
    let kept = db
        .apply(
            applier,
            &[(
                WorkflowId(a),
                Event::TerminateRequested {
                    actor: "admin:ops".into(),
                    reason: "test".into(),
                },
            )],
            Box::new(|_| true),
        )
        .await?;
    assert!(matches!(kept[..], [Outcome::Applied { .. }]), "{kept:?}");

    let all = db.list(&list(10)).await?;
    assert_eq!(ids(&all), [c, b, a], "newest first");
    assert_eq!(db.list_ids(&list(10)).await?, [c, b, a]);
    assert_eq!(
        all[1].current.as_ref().and_then(|s| s["name"].as_str()),
        Some("reserve"),
        "the current step from the snapshot"
    );
    assert_eq!(all[1].business_keys, json!({ "order_id": order_id }));
    assert!(all[1].created_at >= before_all && all[1].created_at <= after_all);
    assert_eq!(
        db.counts().await?,
        [("running".to_owned(), 2), ("terminated".to_owned(), 1)]
    );

    let by = |f: ListFilter| async move { db.list(&f).await.map(|r| ids(&r)) };
    let status = ListFilter {
        status: Some("running".into()),
        ..list(10)
    };
    assert_eq!(by(status).await?, [c, b]);
    let key = ListFilter {
        business_key: Some(order_id.clone()),
        ..list(10)
    };
    assert_eq!(by(key).await?, [b]);
    let user = ListFilter {
        business_key: Some("u-7".into()),
        ..list(10)
    };
    assert_eq!(by(user).await?, [c]);
    let one = ListFilter {
        id: Some(a),
        ..list(10)
    };
    assert_eq!(by(one).await?, [a]);
    let typed = ListFilter {
        workflow_type: Some("refund".into()),
        ..list(10)
    };
    assert!(by(typed).await?.is_empty());
    let window = ListFilter {
        created_after: Some(before_all),
        created_before: Some(after_all),
        ..list(10)
    };
    assert_eq!(by(window).await?, [c, b, a]);
    let later = ListFilter {
        created_after: Some(after_all + chrono::Duration::seconds(1)),
        ..list(10)
    };
    assert!(by(later).await?.is_empty());
    let earlier = ListFilter {
        created_before: Some(before_all),
        ..list(10)
    };
    assert!(by(earlier).await?.is_empty());
    let page2 = ListFilter {
        before_id: Some(c),
        ..list(1)
    };
    assert_eq!(by(page2).await?, [b], "the cursor is exclusive");
    let upto = ListFilter {
        upto_id: Some(b),
        ..list(10)
    };
    assert_eq!(by(upto).await?, [b, a], "the bulk bound is inclusive");
    Ok(())
}

async fn each_kind_of_stuck_is_found_with_its_latest_task(
    db: &Db,
    applier: &Applier,
) -> anyhow::Result<()> {
    let a = start(db, applier, json!({})).await?;
    let b = start(db, applier, json!({})).await?;
    let now = Utc::now();
    let stuck = |f: StuckFilter| async move {
        let rows = db.stuck(&f).await?;
        let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
        assert_eq!(db.stuck_ids(&f).await?, ids, "stuck_ids agrees with stuck");
        anyhow::Ok(rows)
    };
    let base = StuckFilter {
        limit: 10,
        overdue_before: now,
        ..StuckFilter::default()
    };

    // Both have a task out whose timer is not due yet: nothing is stuck.
    assert!(stuck(base.clone()).await?.is_empty());
    assert_eq!(db.stuck_counts(now).await?, (0, 0, 0));
    let mut out = db.tasks_out().await?;
    out.sort();
    let mut expected = vec![
        (a, Some(INVENTORY_RESERVE.to_owned())),
        (b, Some(INVENTORY_RESERVE.to_owned())),
    ];
    expected.sort();
    assert_eq!(out, expected, "tasks out, with the queue each waits on");

    // An hour later both timers are overdue.
    let later = now + chrono::Duration::hours(1);
    let overdue = StuckFilter {
        kind: Some(StuckKind::Overdue),
        overdue_before: later,
        ..base.clone()
    };
    let rows = stuck(overdue.clone()).await?;
    assert_eq!(rows.iter().map(|r| r.id).collect::<Vec<_>>(), [b, a]);
    let task = rows[0].last_task.as_ref().expect("the latest task");
    assert_eq!(task["activity"], INVENTORY_RESERVE, "{task}");
    assert!(rows[0].last_task_at.is_some());
    assert_eq!(rows[0].state["cursor"], 0, "the snapshot comes along");
    assert_eq!(db.stuck_counts(later).await?, (0, 0, 2));
    let reserve = StuckFilter {
        activity: Some(INVENTORY_RESERVE.into()),
        ..overdue.clone()
    };
    assert_eq!(stuck(reserve).await?.len(), 2);
    let charge = StuckFilter {
        activity: Some(PAYMENT_CHARGE.into()),
        ..overdue.clone()
    };
    assert!(stuck(charge).await?.is_empty(), "filtered by latest task");
    let page = StuckFilter {
        before_id: Some(b),
        ..overdue.clone()
    };
    assert_eq!(
        stuck(page).await?.iter().map(|r| r.id).collect::<Vec<_>>(),
        [a]
    );
    let not_retrying = StuckFilter {
        kind: Some(StuckKind::Retrying),
        overdue_before: later,
        ..base.clone()
    };
    assert!(stuck(not_retrying).await?.is_empty(), "one kind only");

    // What the probe says has no worker is stuck too.
    let no_worker = StuckFilter {
        kind: Some(StuckKind::NoWorker),
        no_worker: vec![a],
        ..base.clone()
    };
    assert_eq!(
        stuck(no_worker)
            .await?
            .iter()
            .map(|r| r.id)
            .collect::<Vec<_>>(),
        [a]
    );

    let timers = db.timers_of(&[a, b]).await?;
    assert_eq!(timers.len(), 2, "{timers:?}");
    assert!(
        timers
            .iter()
            .all(|t| t.purpose["purpose"] == "attempt_timeout"),
        "{timers:?}"
    );
    assert!(db.timers_of(&[]).await?.is_empty());

    // A finished saga is never stuck, whatever its timers.
    db.apply(
        applier,
        &[(
            WorkflowId(a),
            Event::TerminateRequested {
                actor: "admin:ops".into(),
                reason: "test".into(),
            },
        )],
        Box::new(|_| true),
    )
    .await?;
    assert_eq!(
        stuck(overdue)
            .await?
            .iter()
            .map(|r| r.id)
            .collect::<Vec<_>>(),
        [b]
    );
    Ok(())
}

async fn the_audit_lists_operator_actions_newest_first(
    db: &Db,
    applier: &Applier,
) -> anyhow::Result<()> {
    let a = start(db, applier, json!({})).await?;
    let b = start(db, applier, json!({})).await?;
    assert!(
        db.audit(None, 10).await?.is_empty(),
        "starting is no operator action"
    );
    for (id, reason) in [(a, "first"), (b, "second")] {
        let event = Event::CancelRequested {
            actor: "admin:ops".into(),
            reason: reason.into(),
        };
        db.apply(applier, &[(WorkflowId(id), event)], Box::new(|_| true))
            .await?;
        // Distinct instants, so the order is the order of the actions.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let rows = db.audit(None, 10).await?;
    let seen: Vec<(Uuid, &str)> = rows
        .iter()
        .map(|r| (r.workflow_id, r.event["reason"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(seen, [(b, "second"), (a, "first")]);
    assert_eq!(rows[0].event["actor"], "admin:ops");
    assert_eq!(rows[0].workflow_type.as_deref(), Some("order"));
    assert_eq!(rows[0].seq, 2);
    let older = db.audit(Some(rows[0].at), 10).await?;
    assert_eq!(older.iter().map(|r| r.workflow_id).collect::<Vec<_>>(), [a]);
    assert_eq!(db.audit(None, 1).await?.len(), 1);
    Ok(())
}

async fn a_refused_or_unkept_action_leaves_no_trace(
    db: &Db,
    applier: &Applier,
) -> anyhow::Result<()> {
    let id = start(db, applier, json!({})).await?;
    let cancel = || Event::CancelRequested {
        actor: "admin:ops".into(),
        reason: "x".into(),
    };
    let unkept = db
        .apply(applier, &[(WorkflowId(id), cancel())], Box::new(|_| false))
        .await?;
    assert!(matches!(unkept[..], [Outcome::Applied { .. }]));
    assert_eq!(db.history(id).await?.len(), 1, "rolled back");
    assert_eq!(
        db.get(id).await?.map(|w| w.status).as_deref(),
        Some("running")
    );

    let terminate = Event::TerminateRequested {
        actor: "admin:ops".into(),
        reason: "x".into(),
    };
    db.apply(applier, &[(WorkflowId(id), terminate)], Box::new(|_| true))
        .await?;
    let refused = db
        .apply(
            applier,
            &[(WorkflowId(id), cancel())],
            Box::new(|o| matches!(o, [Outcome::Applied { .. }])),
        )
        .await?;
    assert!(matches!(refused[..], [Outcome::Rejected(_)]), "{refused:?}");
    assert_eq!(db.history(id).await?.len(), 2);
    let (row, history) = db.workflow(id).await?.expect("the workflow");
    assert_eq!(row.status, "terminated");
    assert_eq!(history.len(), 2);
    let missing = db
        .apply(
            applier,
            &[(WorkflowId(Uuid::now_v7()), cancel())],
            Box::new(|_| true),
        )
        .await?;
    assert!(matches!(missing[..], [Outcome::NotFound]));
    assert!(db.workflow(Uuid::now_v7()).await?.is_none());
    Ok(())
}

/// An operator action is decided on the stored state, so it reloads a cached workflow first;
/// when another input of the same batch was already decided on that workflow, both still
/// commit and the committer keeps answering.
async fn an_action_batched_behind_another_event_of_its_workflow(
    db: &Db,
    applier: &Applier,
) -> anyhow::Result<()> {
    for _ in 0..20 {
        let id = WorkflowId(start(db, applier, json!({})).await?);
        // A result no attempt waits for: decided (recorded as ignored) without an action's check.
        let stray = Event::ActivityCompleted {
            task_id: orderflow_core::TaskId(Uuid::now_v7()),
            output: json!({}),
        };
        let cancel = Event::CancelRequested {
            actor: "admin:ops".into(),
            reason: "batched".into(),
        };
        // Both are sent before either is awaited, so they usually share a batch.
        let action = [(id, cancel)];
        let (result, action) = tokio::join!(
            db.committer.apply(vec![(id, stray)], None),
            db.apply(applier, &action, Box::new(|_| true)),
        );
        assert!(matches!(result?[..], [Outcome::Applied { .. }]));
        assert!(matches!(action?[..], [Outcome::Applied { .. }]));
        let kinds: Vec<String> = db
            .history(id.0)
            .await?
            .iter()
            .map(|e| e.event.kind().to_owned())
            .collect();
        assert_eq!(kinds.len(), 3, "{kinds:?}");
        assert!(kinds.contains(&"cancel_requested".to_owned()), "{kinds:?}");
    }
    Ok(())
}
