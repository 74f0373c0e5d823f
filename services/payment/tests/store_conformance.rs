//! The payment store keeps the same promises on both backends: every scenario below runs on a
//! fresh Postgres database (`postgres::<scenario>`), an in-memory SQLite database
//! (`sqlite_memory::<scenario>`) and a SQLite file with its pool of several connections
//! (`sqlite_file::<scenario>`, where concurrent writers really contend).
//!
//! The promises are the ones the activities build on: one payment per step key whatever the
//! number of concurrent attempts, transitions only out of the status they expect (so a late
//! writer changes nothing), a refund recorded at most once, a fresh Stripe key only after a
//! definite failure, Stripe's events recorded once, and an admin list that pages newest first.

use std::path::PathBuf;

use chrono::Utc;
use orderflow_payment::{
    migrations,
    model::{ChargeRequest, PaymentStatus},
    store::{self, ListFilter, StripeEvent},
};
use orderflow_service_kit::db::Db;
use serde_json::json;
use uuid::Uuid;

/// Where a scenario runs.
#[derive(Clone, Copy, Debug)]
enum Backend {
    Postgres,
    SqliteMemory,
    SqliteFile,
}

/// A fresh database on one backend, and how to open it again (a restart).
struct Fresh {
    backend: Backend,
    url: String,
    file: Option<PathBuf>,
    db: Db,
}

impl Fresh {
    async fn new(backend: Backend) -> anyhow::Result<Self> {
        orderflow_testkit::init_tracing();
        let tag = Uuid::new_v4().simple().to_string();
        let file = matches!(backend, Backend::SqliteFile)
            .then(|| std::env::temp_dir().join(format!("orderflow-payment-conformance-{tag}.db")));
        let url = match (backend, &file) {
            (Backend::Postgres, _) => format!(
                "{}/orderflow_test_payment_{tag}",
                orderflow_testkit::pg_server()
            ),
            (Backend::SqliteMemory, _) => "sqlite::memory:".to_owned(),
            (Backend::SqliteFile, f) => format!("sqlite://{}", f.as_ref().unwrap().display()),
        };
        let db = Db::connect(&url, &migrations()).await?;
        Ok(Self {
            backend,
            url,
            file,
            db,
        })
    }

    /// The same database opened anew, migrations run again, as a restarted service does. (An
    /// in-memory database dies with its pool: it has no restart.)
    async fn reopen(&self) -> anyhow::Result<Db> {
        anyhow::ensure!(
            !matches!(self.backend, Backend::SqliteMemory),
            "an in-memory database cannot be reopened"
        );
        Db::connect(&self.url, &migrations()).await
    }
}

impl Drop for Fresh {
    fn drop(&mut self) {
        if let Some(f) = &self.file {
            for suffix in ["", "-wal", "-shm"] {
                let mut name = f.as_os_str().to_owned();
                name.push(suffix);
                let _ = std::fs::remove_file(name);
            }
        }
    }
}

/// The scenarios as tests of one backend, in a module named after it.
macro_rules! conformance {
    ($module:ident, $backend:expr, [$($name:ident),* $(,)?]) => {
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() -> anyhow::Result<()> {
                    super::$name(&super::Fresh::new($backend).await?).await
                }
            )*
        }
    };
}

/// What every backend promises.
macro_rules! scenarios {
    ($module:ident, $backend:expr $(, $extra:ident)*) => {
        conformance!($module, $backend, [
            one_payment_per_step_key,
            concurrent_attempts_of_a_step_make_one_payment,
            transitions_leave_only_the_status_they_expect,
            a_refund_is_recorded_at_most_once,
            a_compensation_first_bars_the_charge,
            only_a_definite_failure_rotates_the_stripe_key,
            a_payment_intent_belongs_to_one_payment,
            stripe_events_are_recorded_once,
            the_admin_list_filters_and_pages_newest_first,
            $($extra,)*
        ]);
    };
}

scenarios!(
    postgres,
    super::Backend::Postgres,
    payments_survive_a_restart
);
scenarios!(sqlite_memory, super::Backend::SqliteMemory);
scenarios!(
    sqlite_file,
    super::Backend::SqliteFile,
    payments_survive_a_restart
);

fn request() -> ChargeRequest {
    ChargeRequest {
        order_id: Uuid::now_v7(),
        user_id: Uuid::now_v7(),
        amount_minor: 2599,
        currency: "EUR".into(),
        payment_method: "pm_card_visa".into(),
    }
}

/// A pending payment for a new step.
async fn pending(
    db: &Db,
    req: &ChargeRequest,
) -> anyhow::Result<orderflow_payment::model::Payment> {
    let wf = Uuid::now_v7();
    Ok(store::insert_or_get(db, &format!("{wf}/charge"), wf, req, PaymentStatus::Pending).await?)
}

async fn one_payment_per_step_key(f: &Fresh) -> anyhow::Result<()> {
    let (db, b) = (&f.db, f.backend);
    let req = request();
    let wf = Uuid::now_v7();
    let key = format!("{wf}/charge");
    let before = Utc::now();
    let first = store::insert_or_get(db, &key, wf, &req, PaymentStatus::Pending).await?;
    assert_eq!(first.status, PaymentStatus::Pending, "{b:?}");
    assert_eq!(
        (
            first.idempotency_key.as_str(),
            first.workflow_id,
            first.order_id,
            first.user_id
        ),
        (key.as_str(), wf, req.order_id, req.user_id),
        "{b:?}"
    );
    assert_eq!(
        (
            first.amount_minor,
            first.currency.as_str(),
            first.payment_method.as_str()
        ),
        (2599, "EUR", "pm_card_visa"),
        "{b:?}"
    );
    assert_eq!(
        (first.stripe_attempt, first.refunded_at),
        (0, None),
        "{b:?}"
    );
    assert!(
        first.created_at >= before - chrono::Duration::seconds(5)
            && first.created_at <= Utc::now() + chrono::Duration::seconds(5),
        "{b:?}: created_at {} is now",
        first.created_at
    );

    // A repeat, even one that would record another status, finds the step's payment.
    let again = store::insert_or_get(db, &key, wf, &request(), PaymentStatus::Voided).await?;
    assert_eq!(again, first, "{b:?}");
    assert_eq!(store::by_key(db, &key).await?, Some(first.clone()), "{b:?}");
    assert_eq!(
        store::get(db, first.id).await?,
        Some(first.clone()),
        "{b:?}"
    );
    assert_eq!(store::by_key(db, "nobody/charge").await?, None, "{b:?}");
    assert_eq!(store::get(db, Uuid::now_v7()).await?, None, "{b:?}");
    let all = store::list(
        db,
        &ListFilter {
            limit: 10,
            ..ListFilter::default()
        },
    )
    .await?;
    assert_eq!(all.len(), 1, "{b:?}: one row for the step");
    Ok(())
}

async fn concurrent_attempts_of_a_step_make_one_payment(f: &Fresh) -> anyhow::Result<()> {
    let (db, b) = (&f.db, f.backend);
    let req = request();
    let wf = Uuid::now_v7();
    let key = format!("{wf}/charge");
    // Charge deliveries and a compensation racing for one step: one row, and all see it.
    let attempts = (0..16).map(|i| {
        let (db, key, req) = (db.clone(), key.clone(), req.clone());
        let status = match i % 4 {
            3 => PaymentStatus::Voided,
            _ => PaymentStatus::Pending,
        };
        tokio::spawn(async move { store::insert_or_get(&db, &key, wf, &req, status).await })
    });
    let mut ids = Vec::new();
    for a in attempts.collect::<Vec<_>>() {
        ids.push(a.await??.id);
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "{b:?}: every attempt got the same payment");
    let all = store::list(
        db,
        &ListFilter {
            limit: 100,
            ..ListFilter::default()
        },
    )
    .await?;
    assert_eq!(all.len(), 1, "{b:?}: one row for the step");
    Ok(())
}

async fn transitions_leave_only_the_status_they_expect(f: &Fresh) -> anyhow::Result<()> {
    let (db, b) = (&f.db, f.backend);
    let req = request();

    // Phase 3 of a success, then a late decline (a webhook or a stale worker): no change.
    let p = pending(db, &req).await?;
    let ok = store::mark_succeeded(db, p.id, "pi_a").await?.unwrap();
    assert_eq!(ok.status, PaymentStatus::Succeeded, "{b:?}");
    assert_eq!(ok.payment_intent_id.as_deref(), Some("pi_a"), "{b:?}");
    assert!(ok.updated_at >= p.updated_at, "{b:?}");
    let late = store::mark_declined(db, p.id, Some("pi_other"), "card_declined", "late")
        .await?
        .unwrap();
    assert_eq!(
        late, ok,
        "{b:?}: a decline after the success changes nothing"
    );
    let twice = store::mark_succeeded(db, p.id, "pi_other").await?.unwrap();
    assert_eq!(twice, ok, "{b:?}: the first intent stays");

    // A decline keeps the intent it knew of unless told another, then is final.
    let p = pending(db, &req).await?;
    let no = store::mark_declined(db, p.id, None, "card_declined", "Your card was declined.")
        .await?
        .unwrap();
    assert_eq!(no.status, PaymentStatus::Declined, "{b:?}");
    assert_eq!(no.payment_intent_id, None, "{b:?}");
    assert_eq!(
        (no.failure_code.as_deref(), no.failure_message.as_deref()),
        (Some("card_declined"), Some("Your card was declined.")),
        "{b:?}"
    );
    let after = store::mark_succeeded(db, p.id, "pi_late").await?.unwrap();
    assert_eq!(
        after, no,
        "{b:?}: a declined payment is never charged after"
    );
    assert_eq!(
        store::mark_refunded(db, p.id, Some("re_x")).await?.unwrap(),
        no,
        "{b:?}: nothing to refund"
    );

    // A success clears the failure an earlier attempt noted.
    let p = pending(db, &req).await?;
    store::note_failure(db, p.id, "stripe_unavailable", "500", false).await?;
    let ok = store::mark_succeeded(db, p.id, "pi_b").await?.unwrap();
    assert_eq!((ok.failure_code, ok.failure_message), (None, None), "{b:?}");

    assert_eq!(
        store::mark_succeeded(db, Uuid::now_v7(), "pi_c").await?,
        None,
        "{b:?}: no such payment"
    );
    Ok(())
}

async fn a_refund_is_recorded_at_most_once(f: &Fresh) -> anyhow::Result<()> {
    let (db, b) = (&f.db, f.backend);
    let p = pending(db, &request()).await?;
    // Not charged yet: a refund records nothing.
    let early = store::mark_refunded(db, p.id, Some("re_early"))
        .await?
        .unwrap();
    assert_eq!(early.status, PaymentStatus::Pending, "{b:?}");
    assert_eq!(early.refund_id, None, "{b:?}");

    store::mark_succeeded(db, p.id, "pi_r").await?;
    // Two compensations at once: one refund recorded, and both read it.
    let (x, y) = tokio::join!(
        store::mark_refunded(db, p.id, Some("re_1")),
        store::mark_refunded(db, p.id, Some("re_2")),
    );
    let (x, y) = (x?.unwrap(), y?.unwrap());
    assert_eq!(x.status, PaymentStatus::Refunded, "{b:?}");
    assert_eq!(x.refund_id, y.refund_id, "{b:?}: one refund recorded");
    assert!(x.refunded_at.is_some(), "{b:?}");
    let again = store::mark_refunded(db, p.id, Some("re_3")).await?.unwrap();
    assert_eq!(
        again.refund_id, x.refund_id,
        "{b:?}: the first refund stays"
    );
    assert_eq!(again.refunded_at, x.refunded_at, "{b:?}");

    // Refunded by other means (no refund id): still refunded once.
    let q = pending(db, &request()).await?;
    store::mark_succeeded(db, q.id, "pi_s").await?;
    let r = store::mark_refunded(db, q.id, None).await?.unwrap();
    assert_eq!(
        (r.status, r.refund_id),
        (PaymentStatus::Refunded, None),
        "{b:?}"
    );
    Ok(())
}

async fn a_compensation_first_bars_the_charge(f: &Fresh) -> anyhow::Result<()> {
    let (db, b) = (&f.db, f.backend);
    let req = request();
    let wf = Uuid::now_v7();
    let key = format!("{wf}/charge");
    let voided = store::insert_or_get(db, &key, wf, &req, PaymentStatus::Voided).await?;
    assert_eq!(voided.status, PaymentStatus::Voided, "{b:?}");
    // The charge task arriving late finds the tombstone, and nothing moves it.
    let late = store::insert_or_get(db, &key, wf, &req, PaymentStatus::Pending).await?;
    assert_eq!(late, voided, "{b:?}");
    assert_eq!(
        store::mark_succeeded(db, voided.id, "pi_v").await?.unwrap(),
        voided,
        "{b:?}"
    );
    store::note_failure(db, voided.id, "x", "y", true).await?;
    assert_eq!(store::get(db, voided.id).await?.unwrap(), voided, "{b:?}");
    Ok(())
}

async fn only_a_definite_failure_rotates_the_stripe_key(f: &Fresh) -> anyhow::Result<()> {
    let (db, b) = (&f.db, f.backend);
    let p = pending(db, &request()).await?;
    store::note_failure(db, p.id, "stripe_unavailable", "lost answer", false).await?;
    let row = store::get(db, p.id).await?.unwrap();
    assert_eq!(
        row.stripe_attempt, 0,
        "{b:?}: an unknown outcome keeps the key"
    );
    assert_eq!(row.stripe_key(), p.idempotency_key, "{b:?}");
    assert_eq!(
        (row.failure_code.as_deref(), row.failure_message.as_deref()),
        (Some("stripe_unavailable"), Some("lost answer")),
        "{b:?}"
    );
    for n in 1..=2 {
        store::note_failure(db, p.id, "card_processing_error", "retry", true).await?;
        let row = store::get(db, p.id).await?.unwrap();
        assert_eq!(row.stripe_attempt, n, "{b:?}");
        assert_eq!(
            row.stripe_key(),
            format!("{}#{n}", p.idempotency_key),
            "{b:?}"
        );
    }
    // Settled: no attempt is counted any more.
    store::mark_succeeded(db, p.id, "pi_k").await?;
    store::note_failure(db, p.id, "card_processing_error", "late", true).await?;
    let row = store::get(db, p.id).await?.unwrap();
    assert_eq!((row.stripe_attempt, row.failure_code), (2, None), "{b:?}");
    Ok(())
}

async fn a_payment_intent_belongs_to_one_payment(f: &Fresh) -> anyhow::Result<()> {
    let (db, b) = (&f.db, f.backend);
    let p = pending(db, &request()).await?;
    let q = pending(db, &request()).await?;
    store::mark_succeeded(db, p.id, "pi_shared").await?;
    let err = store::mark_succeeded(db, q.id, "pi_shared").await;
    assert!(
        matches!(&err, Err(sqlx::Error::Database(e)) if e.is_unique_violation()),
        "{b:?}: {err:?}"
    );
    assert_eq!(
        store::get(db, q.id).await?.unwrap().status,
        PaymentStatus::Pending,
        "{b:?}"
    );
    Ok(())
}

async fn stripe_events_are_recorded_once(f: &Fresh) -> anyhow::Result<()> {
    let (db, b) = (&f.db, f.backend);
    let event = |id: &'static str, kind: &'static str| StripeEvent {
        id,
        kind,
        payment_intent_id: Some("pi_ev"),
        payload: json!({ "id": id, "type": kind, "data": { "object": { "id": "pi_ev" } } }),
    };
    assert!(
        store::record_event(db, &event("evt_1", "payment_intent.created")).await?,
        "{b:?}"
    );
    // Redelivered at once, twice: recorded once.
    let succeeded = event("evt_2", "payment_intent.succeeded");
    let (x, y) = tokio::join!(
        store::record_event(db, &succeeded),
        store::record_event(db, &succeeded),
    );
    assert_eq!(
        [x?, y?].iter().filter(|fresh| **fresh).count(),
        1,
        "{b:?}: one delivery recorded it"
    );
    assert!(
        !store::record_event(db, &event("evt_1", "payment_intent.created")).await?,
        "{b:?}: a redelivery is not recorded again"
    );
    store::record_event(
        db,
        &StripeEvent {
            id: "evt_other",
            kind: "charge.refunded",
            payment_intent_id: Some("pi_else"),
            payload: json!({}),
        },
    )
    .await?;
    let events = store::events_of(db, "pi_ev").await?;
    let seen: Vec<_> = events
        .iter()
        .map(|e| (e.id.as_str(), e.kind.as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            ("evt_1", "payment_intent.created"),
            ("evt_2", "payment_intent.succeeded")
        ],
        "{b:?}: oldest first, only this intent's"
    );
    assert!(events[0].received_at <= events[1].received_at, "{b:?}");
    assert!(store::events_of(db, "pi_none").await?.is_empty(), "{b:?}");
    Ok(())
}

async fn the_admin_list_filters_and_pages_newest_first(f: &Fresh) -> anyhow::Result<()> {
    let (db, b) = (&f.db, f.backend);
    let order = request();
    let mut made = Vec::new();
    for i in 0..5 {
        let req = if i % 2 == 0 { order.clone() } else { request() };
        let p = pending(db, &req).await?;
        if i < 2 {
            store::mark_succeeded(db, p.id, &format!("pi_list_{i}")).await?;
        }
        made.push(p.id);
    }
    let newest_first: Vec<Uuid> = made.iter().rev().copied().collect();
    let list = |f: ListFilter| async move {
        store::list(db, &f)
            .await
            .map(|rows| rows.into_iter().map(|p| p.id).collect::<Vec<_>>())
    };
    assert_eq!(
        list(ListFilter {
            limit: 10,
            ..ListFilter::default()
        })
        .await?,
        newest_first,
        "{b:?}"
    );
    let page1 = list(ListFilter {
        limit: 2,
        ..ListFilter::default()
    })
    .await?;
    assert_eq!(page1, newest_first[..2], "{b:?}");
    let page2 = list(ListFilter {
        before: page1.last().copied(),
        limit: 2,
        ..ListFilter::default()
    })
    .await?;
    assert_eq!(page2, newest_first[2..4], "{b:?}: the cursor continues");
    assert_eq!(
        list(ListFilter {
            status: Some(PaymentStatus::Succeeded),
            limit: 10,
            ..ListFilter::default()
        })
        .await?,
        [made[1], made[0]],
        "{b:?}"
    );
    assert_eq!(
        list(ListFilter {
            order_id: Some(order.order_id),
            limit: 10,
            ..ListFilter::default()
        })
        .await?,
        [made[4], made[2], made[0]],
        "{b:?}"
    );
    assert_eq!(
        list(ListFilter {
            status: Some(PaymentStatus::Pending),
            order_id: Some(order.order_id),
            before: Some(made[4]),
            limit: 10,
        })
        .await?,
        [made[2]],
        "{b:?}: the filters combine"
    );
    Ok(())
}

async fn payments_survive_a_restart(f: &Fresh) -> anyhow::Result<()> {
    let (db, b) = (&f.db, f.backend);
    let p = pending(db, &request()).await?;
    let ok = store::mark_succeeded(db, p.id, "pi_restart")
        .await?
        .unwrap();
    store::record_event(
        db,
        &StripeEvent {
            id: "evt_restart",
            kind: "payment_intent.succeeded",
            payment_intent_id: Some("pi_restart"),
            payload: json!({ "id": "evt_restart" }),
        },
    )
    .await?;
    db.close().await;
    let again = f.reopen().await?;
    assert_eq!(store::get(&again, p.id).await?, Some(ok), "{b:?}");
    assert_eq!(
        store::events_of(&again, "pi_restart").await?.len(),
        1,
        "{b:?}"
    );
    // And the step key still finds it.
    assert_eq!(
        store::by_key(&again, &p.idempotency_key)
            .await?
            .map(|r| r.id),
        Some(p.id),
        "{b:?}"
    );
    again.close().await;
    Ok(())
}
