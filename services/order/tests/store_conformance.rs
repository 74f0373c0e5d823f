//! The order store keeps the same rules on both backends. Each scenario is an
//! `async fn(&Db)`, run by `on_both!` against a fresh Postgres database and against embedded
//! SQLite: in memory, or a temporary file where concurrent writers or a restart are the point
//! (an in-memory database has a single connection, so nothing in it runs concurrently).
//!
//! The saga starter is driven against a local HTTP server standing in for the engine, which
//! counts the starts it receives per order.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Json, Router,
    extract::State,
    http::{HeaderMap, StatusCode},
    routing::post,
};
use chrono::Utc;
use orderflow_order::{
    OrderConfig,
    clients::Clients,
    migrations, migrator,
    model::{CancelCode, OrderStatus, ShippingAddress},
    starter::{self, Attempt},
    store::{self, ConfirmRow, NewOrderRow, Order, Outcome, PricedLine, Tx},
};
use orderflow_service_kit::{ServiceConfig, db::Db};
use orderflow_service_testkit::{fresh_db, serve};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Runs a scenario on Postgres and on SQLite (`memory` or `file`), as two tests named after
/// the backend, so a failure says which one broke the rule.
macro_rules! on_both {
    ($scenario:ident, $sqlite:ident) => {
        mod $scenario {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() -> anyhow::Result<()> {
                let db = super::postgres().await?;
                super::$scenario(&db).await?;
                db.close().await;
                Ok(())
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() -> anyhow::Result<()> {
                let (db, _file) = super::$sqlite().await?;
                super::$scenario(&db).await?;
                db.close().await;
                Ok(())
            }
        }
    };
}

async fn postgres() -> anyhow::Result<Db> {
    Ok(Db::from(fresh_db("order", &migrator()).await?))
}

async fn memory() -> anyhow::Result<(Db, Option<TempDb>)> {
    Ok((Db::sqlite(None, &migrations()).await?, None))
}

async fn file() -> anyhow::Result<(Db, Option<TempDb>)> {
    let f = TempDb::new();
    Ok((Db::sqlite(Some(&f.0), &migrations()).await?, Some(f)))
}

/// A database file under the temporary directory, removed (with its WAL) when dropped.
#[derive(Debug)]
struct TempDb(PathBuf);

impl TempDb {
    fn new() -> Self {
        Self(std::env::temp_dir().join(format!("orderflow-order-{}.db", Uuid::now_v7())))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let mut p = self.0.clone().into_os_string();
            p.push(suffix);
            std::fs::remove_file(p).ok();
        }
    }
}

fn lines() -> Vec<PricedLine> {
    vec![PricedLine {
        product_id: "sku-1".to_owned(),
        quantity: 2,
        unit_price_minor: Some(1250),
    }]
}

fn address() -> ShippingAddress {
    ShippingAddress {
        name: "Ann Buyer".to_owned(),
        line1: "1 Main St".to_owned(),
        line2: None,
        city: "Berlin".to_owned(),
        postal_code: "10115".to_owned(),
        country: "DE".to_owned(),
    }
}

/// Places an order as `POST /orders` does, with its intent; `None` if `key` was used.
async fn place_as(db: &Db, id: Uuid, user: Uuid, key: &str) -> anyhow::Result<Option<Uuid>> {
    let (items, address) = (lines(), address());
    let mut tx = Tx::begin(db).await?;
    let placed = store::insert_with_intent(
        &mut tx,
        &NewOrderRow {
            id,
            user_id: user,
            items: &items,
            total_minor: 2500,
            currency: "EUR",
            shipping_address: &address,
            email: "ann@example.com",
            payment_method: "pm_card_visa",
            idempotency_key: key,
            request_hash: "hash-1",
        },
    )
    .await?;
    tx.commit().await?;
    Ok(placed)
}

/// A new order of a new user, placed.
async fn place(db: &Db) -> anyhow::Result<Uuid> {
    let id = Uuid::now_v7();
    place_as(db, id, Uuid::now_v7(), "k")
        .await?
        .ok_or_else(|| anyhow::anyhow!("a fresh key was refused"))
}

async fn order(db: &Db, id: Uuid) -> anyhow::Result<Order> {
    store::get(db, id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("order {id} is missing"))
}

/// Whether the order's saga start is due now (claimed and let go again).
async fn start_due(db: &Db, id: Uuid) -> anyhow::Result<Option<i32>> {
    let mut tx = Tx::begin(db).await?;
    let claimed = store::claim_start(&mut tx, Some(id)).await?;
    tx.rollback().await?;
    Ok(claimed.map(|(o, attempts)| {
        assert_eq!(o.id, id);
        attempts
    }))
}

/// Records that the engine started the order's saga as `workflow`.
async fn started(db: &Db, id: Uuid, workflow: Uuid) -> anyhow::Result<()> {
    let mut tx = Tx::begin(db).await?;
    anyhow::ensure!(store::claim_start(&mut tx, Some(id)).await?.is_some());
    store::record_started(&mut tx, id, workflow).await?;
    tx.commit().await?;
    Ok(())
}

fn confirm_row(id: Uuid, workflow: Uuid, items: &[PricedLine]) -> ConfirmRow<'_> {
    ConfirmRow {
        id,
        user_id: Uuid::now_v7(),
        items,
        total_minor: 2500,
        currency: "EUR",
        email: "ann@example.com",
        payment_method: "pm_card_visa",
        workflow_id: workflow,
    }
}

/// What `follow::on_workflow_finished` does once it has the outcome.
async fn finish(db: &Db, id: Uuid, saga: &str, outcome: &Outcome) -> anyhow::Result<u64> {
    let mut tx = Tx::begin(db).await?;
    let n = match store::get_for_update(&mut tx, id).await? {
        Some(o) => {
            let workflow = o.workflow_id.unwrap_or_else(Uuid::now_v7);
            store::apply_finished(&mut tx, id, workflow, saga, outcome).await?
        }
        None => 0,
    };
    tx.commit().await?;
    Ok(n)
}

on_both!(a_placed_order_reads_back_as_placed, memory);
async fn a_placed_order_reads_back_as_placed(db: &Db) -> anyhow::Result<()> {
    let before = Utc::now() - chrono::Duration::seconds(5);
    let (id, user) = (Uuid::now_v7(), Uuid::now_v7());
    assert_eq!(place_as(db, id, user, "k").await?, Some(id));
    let o = order(db, id).await?;
    assert_eq!(
        (o.id, o.user_id, o.status),
        (id, user, OrderStatus::Pending)
    );
    assert_eq!(o.items.0, lines());
    assert_eq!((o.total_minor, o.currency.as_str()), (2500, "EUR"));
    assert_eq!(o.shipping_address.map(|a| a.0), Some(address()));
    assert_eq!(o.email, "ann@example.com");
    assert_eq!(o.payment_method, "pm_card_visa");
    assert_eq!(o.request_hash.as_deref(), Some("hash-1"));
    assert_eq!((o.workflow_id, o.saga_status), (None, None));
    assert_eq!((o.cancel_code, o.cancel_reason), (None, None));
    assert_eq!(o.cancel_requested_at, None);
    assert!(
        o.created_at > before && o.created_at <= Utc::now(),
        "{}",
        o.created_at
    );
    assert_eq!(o.created_at, o.updated_at);
    // Its saga start is due at once, with no failed attempts.
    assert_eq!(start_due(db, id).await?, Some(0));
    assert!(store::get(db, Uuid::now_v7()).await?.is_none());
    Ok(())
}

on_both!(an_idempotency_key_places_one_order_per_user, memory);
async fn an_idempotency_key_places_one_order_per_user(db: &Db) -> anyhow::Result<()> {
    let (ann, bea) = (Uuid::now_v7(), Uuid::now_v7());
    let first = Uuid::now_v7();
    assert_eq!(place_as(db, first, ann, "k").await?, Some(first));
    let repeat = Uuid::now_v7();
    assert_eq!(
        place_as(db, repeat, ann, "k").await?,
        None,
        "the key was used"
    );
    assert!(
        store::get(db, repeat).await?.is_none(),
        "nothing of the repeat is stored"
    );
    assert_eq!(
        start_due(db, repeat).await?,
        None,
        "the repeat has no intent"
    );
    let by_key = store::by_key(db, ann, "k").await?.map(|o| o.id);
    assert_eq!(by_key, Some(first));
    // Keys are per user.
    let theirs = Uuid::now_v7();
    assert_eq!(place_as(db, theirs, bea, "k").await?, Some(theirs));
    assert_eq!(
        store::by_key(db, bea, "k").await?.map(|o| o.id),
        Some(theirs)
    );
    assert!(store::by_key(db, ann, "other").await?.is_none());
    Ok(())
}

on_both!(concurrent_duplicates_place_one_order, file);
async fn concurrent_duplicates_place_one_order(db: &Db) -> anyhow::Result<()> {
    let user = Uuid::now_v7();
    // Collected, so that all are spawned before the first is awaited.
    let tries: Vec<_> = (0..8)
        .map(|_| {
            let db = db.clone();
            tokio::spawn(async move { place_as(&db, Uuid::now_v7(), user, "same").await })
        })
        .collect();
    let mut placed = Vec::new();
    for t in tries {
        placed.extend(t.await??);
    }
    assert_eq!(placed.len(), 1, "exactly one insert wins: {placed:?}");
    let stored = store::list_for_user(db, user, None, 100).await?;
    assert_eq!(stored.iter().map(|o| o.id).collect::<Vec<_>>(), placed);
    Ok(())
}

on_both!(a_users_orders_page_newest_first, memory);
async fn a_users_orders_page_newest_first(db: &Db) -> anyhow::Result<()> {
    let (ann, bea) = (Uuid::now_v7(), Uuid::now_v7());
    let mut ids = Vec::new();
    for i in 0..5 {
        let id = Uuid::now_v7();
        place_as(db, id, ann, &format!("k{i}")).await?;
        ids.push(id);
    }
    place_as(db, Uuid::now_v7(), bea, "k0").await?;
    let page = |before, limit| async move {
        let rows = store::list_for_user(db, ann, before, limit).await?;
        anyhow::Ok(rows.into_iter().map(|o| o.id).collect::<Vec<_>>())
    };
    assert_eq!(page(None, 3).await?, vec![ids[4], ids[3], ids[2]]);
    assert_eq!(page(Some(ids[2]), 3).await?, vec![ids[1], ids[0]]);
    assert_eq!(page(Some(ids[0]), 3).await?, Vec::<Uuid>::new());
    assert_eq!(store::list_for_user(db, bea, None, 10).await?.len(), 1);
    Ok(())
}

on_both!(a_failed_start_waits_for_its_backoff, memory);
async fn a_failed_start_waits_for_its_backoff(db: &Db) -> anyhow::Result<()> {
    let (later, now) = (place(db).await?, place(db).await?);
    for (id, backoff) in [(later, Duration::from_secs(3600)), (now, Duration::ZERO)] {
        let mut tx = Tx::begin(db).await?;
        let (o, attempts) = store::claim_start(&mut tx, Some(id)).await?.expect("due");
        assert_eq!((o.id, attempts), (id, 0));
        store::record_start_failure(&mut tx, id, "engine down", backoff).await?;
        tx.commit().await?;
    }
    assert_eq!(start_due(db, later).await?, None, "not due for an hour");
    assert_eq!(
        start_due(db, now).await?,
        Some(1),
        "due again, one failure counted"
    );
    // The loop's claim (any order) finds only the due one.
    let mut tx = Tx::begin(db).await?;
    let any = store::claim_start(&mut tx, None).await?.map(|(o, _)| o.id);
    assert_eq!(any, Some(now));
    Ok(())
}

on_both!(cancelling_an_unstarted_order_drops_its_intent, memory);
async fn cancelling_an_unstarted_order_drops_its_intent(db: &Db) -> anyhow::Result<()> {
    let id = place(db).await?;
    let mut tx = Tx::begin(db).await?;
    let reason = "cancelled by the customer";
    assert!(store::cancel_unstarted(&mut tx, id, CancelCode::CancelledByUser, reason).await?);
    tx.commit().await?;
    let o = order(db, id).await?;
    assert_eq!(o.status, OrderStatus::Cancelled);
    assert_eq!(o.cancel_code, Some(CancelCode::CancelledByUser));
    assert_eq!(o.cancel_reason.as_deref(), Some(reason));
    assert!(o.updated_at >= o.created_at);
    assert_eq!(start_due(db, id).await?, None, "its saga is never started");
    // A second cancel finds no intent: the caller then asks the saga, which has none.
    let mut tx = Tx::begin(db).await?;
    assert!(!store::cancel_unstarted(&mut tx, id, CancelCode::Failed, "again").await?);
    tx.commit().await?;
    assert_eq!(
        order(db, id).await?.cancel_code,
        Some(CancelCode::CancelledByUser)
    );
    Ok(())
}

on_both!(a_started_order_is_cancelled_only_through_its_saga, memory);
async fn a_started_order_is_cancelled_only_through_its_saga(db: &Db) -> anyhow::Result<()> {
    let (id, workflow) = (place(db).await?, Uuid::now_v7());
    started(db, id, workflow).await?;
    let o = order(db, id).await?;
    assert_eq!(o.workflow_id, Some(workflow));
    assert_eq!(o.saga_status.as_deref(), Some("running"));
    assert_eq!(
        start_due(db, id).await?,
        None,
        "started once, the intent is gone"
    );

    let mut tx = Tx::begin(db).await?;
    let dropped = store::cancel_unstarted(&mut tx, id, CancelCode::CancelledByUser, "x").await?;
    assert!(!dropped, "the saga is running: only it can cancel");
    store::mark_cancel_requested(&mut tx, id).await?;
    let asked = store::get_for_update(&mut tx, id)
        .await?
        .expect("the order");
    tx.commit().await?;
    assert_eq!(asked.status, OrderStatus::Pending);
    let first = asked.cancel_requested_at.expect("the request is noted");
    // Asking again keeps the first time.
    let mut tx = Tx::begin(db).await?;
    store::mark_cancel_requested(&mut tx, id).await?;
    tx.commit().await?;
    assert_eq!(order(db, id).await?.cancel_requested_at, Some(first));
    Ok(())
}

on_both!(a_cancel_waits_for_a_start_in_progress, file);
async fn a_cancel_waits_for_a_start_in_progress(db: &Db) -> anyhow::Result<()> {
    let (id, workflow) = (place(db).await?, Uuid::now_v7());
    // A starter holds the intent while it calls the engine.
    let mut starting = Tx::begin(db).await?;
    assert!(store::claim_start(&mut starting, Some(id)).await?.is_some());
    let cancel = tokio::spawn({
        let db = db.clone();
        async move {
            let mut tx = Tx::begin(&db).await?;
            let dropped =
                store::cancel_unstarted(&mut tx, id, CancelCode::CancelledByUser, "x").await?;
            tx.commit().await?;
            anyhow::Ok(dropped)
        }
    });
    // Bounded: the cancel must still be waiting while the start is undecided.
    let mut cancel = cancel;
    let early = tokio::time::timeout(Duration::from_millis(300), &mut cancel).await;
    assert!(
        early.is_err(),
        "the cancel did not wait for the start: {early:?}"
    );
    store::record_started(&mut starting, id, workflow).await?;
    starting.commit().await?;
    assert!(!cancel.await??, "after the start only the saga can cancel");
    let o = order(db, id).await?;
    assert_eq!(
        (o.status, o.workflow_id),
        (OrderStatus::Pending, Some(workflow))
    );
    Ok(())
}

on_both!(
    confirming_is_idempotent_and_never_revives_a_cancelled_order,
    memory
);
async fn confirming_is_idempotent_and_never_revives_a_cancelled_order(
    db: &Db,
) -> anyhow::Result<()> {
    let items = lines();
    // Placed here and started: confirmed, twice over.
    let (id, workflow) = (place(db).await?, Uuid::now_v7());
    started(db, id, workflow).await?;
    for _ in 0..2 {
        let status = store::confirm(db, &confirm_row(id, Uuid::now_v7(), &items)).await?;
        assert_eq!(status, OrderStatus::Confirmed);
    }
    let o = order(db, id).await?;
    assert_eq!(o.status, OrderStatus::Confirmed);
    assert_eq!(o.workflow_id, Some(workflow), "the started saga's id stays");
    assert_eq!(
        o.shipping_address.map(|a| a.0),
        Some(address()),
        "the order is kept"
    );

    // A saga started directly on the engine: the order is created from its input.
    let (direct, its_saga) = (Uuid::now_v7(), Uuid::now_v7());
    for _ in 0..2 {
        let status = store::confirm(db, &confirm_row(direct, its_saga, &items)).await?;
        assert_eq!(status, OrderStatus::Confirmed);
    }
    let o = order(db, direct).await?;
    assert_eq!(
        (o.status, o.workflow_id),
        (OrderStatus::Confirmed, Some(its_saga))
    );
    assert_eq!(o.saga_status.as_deref(), Some("running"));
    assert_eq!((o.items.0, o.shipping_address), (items.clone(), None));

    // Cancelled before its pivot: it stays cancelled, and says so.
    let cancelled = place(db).await?;
    let mut tx = Tx::begin(db).await?;
    store::cancel_unstarted(&mut tx, cancelled, CancelCode::CancelledByUser, "x").await?;
    tx.commit().await?;
    let status = store::confirm(db, &confirm_row(cancelled, Uuid::now_v7(), &items)).await?;
    assert_eq!(status, OrderStatus::Cancelled);
    assert_eq!(order(db, cancelled).await?.status, OrderStatus::Cancelled);
    Ok(())
}

on_both!(a_compensation_cancels_a_confirmed_order_once, memory);
async fn a_compensation_cancels_a_confirmed_order_once(db: &Db) -> anyhow::Result<()> {
    let items = lines();
    let id = place(db).await?;
    store::confirm(db, &confirm_row(id, Uuid::now_v7(), &items)).await?;
    assert!(store::cancel_for_compensation(db, id).await?);
    assert!(
        !store::cancel_for_compensation(db, id).await?,
        "a repeat changes nothing"
    );
    let o = order(db, id).await?;
    assert_eq!(o.status, OrderStatus::Cancelled);
    assert_eq!(o.cancel_code, Some(CancelCode::Failed));
    assert_eq!(
        o.cancel_reason.as_deref(),
        Some("the order saga compensated")
    );
    // The precise reason arrives with the saga's end.
    let out_of_stock = Outcome::Cancelled {
        code: CancelCode::OutOfStock,
        reason: "out of stock".to_owned(),
    };
    assert_eq!(finish(db, id, "compensated", &out_of_stock).await?, 1);
    let o = order(db, id).await?;
    assert_eq!(o.cancel_code, Some(CancelCode::OutOfStock));
    assert_eq!(o.cancel_reason.as_deref(), Some("out of stock"));
    // Create never ran: nothing to undo.
    assert!(!store::cancel_for_compensation(db, Uuid::now_v7()).await?);
    Ok(())
}

/// Where an order is before its saga's end is applied.
#[derive(Clone, Copy, Debug)]
enum Before {
    Pending,
    Confirmed,
    CancelledByUser,
}

on_both!(
    a_saga_end_moves_the_order_only_along_allowed_transitions,
    memory
);
async fn a_saga_end_moves_the_order_only_along_allowed_transitions(db: &Db) -> anyhow::Result<()> {
    let cancelled = |code| Outcome::Cancelled {
        code,
        reason: format!("{code:?}"),
    };
    use CancelCode::*;
    use OrderStatus as S;
    let cases = [
        (
            Before::Pending,
            "completed",
            Outcome::Confirmed,
            S::Confirmed,
            None,
        ),
        (
            Before::Pending,
            "compensated",
            cancelled(OutOfStock),
            S::Cancelled,
            Some(OutOfStock),
        ),
        (
            Before::Pending,
            "cancelled",
            cancelled(CancelledByUser),
            S::Cancelled,
            Some(CancelledByUser),
        ),
        (
            Before::Pending,
            "needs_attention",
            Outcome::Noted,
            S::Pending,
            None,
        ),
        // Past the pivot an operator's cancel or terminate cannot undo the order...
        (
            Before::Confirmed,
            "cancelled",
            cancelled(CancelledByOperator),
            S::Confirmed,
            None,
        ),
        (
            Before::Confirmed,
            "terminated",
            cancelled(CancelledByOperator),
            S::Confirmed,
            None,
        ),
        // ...a compensation can, since it means the pivot itself failed.
        (
            Before::Confirmed,
            "compensated",
            cancelled(Failed),
            S::Cancelled,
            Some(Failed),
        ),
        (
            Before::Confirmed,
            "needs_attention",
            Outcome::Noted,
            S::Confirmed,
            None,
        ),
        // A cancelled order is never confirmed again.
        (
            Before::CancelledByUser,
            "completed",
            Outcome::Confirmed,
            S::Cancelled,
            Some(CancelledByUser),
        ),
    ];
    let items = lines();
    for (before, saga, outcome, status, code) in cases {
        let case = format!("{before:?} + {saga} {outcome:?}");
        let id = place(db).await?;
        let workflow = Uuid::now_v7();
        match before {
            Before::Pending => started(db, id, workflow).await?,
            Before::Confirmed => {
                started(db, id, workflow).await?;
                store::confirm(db, &confirm_row(id, workflow, &items)).await?;
            }
            Before::CancelledByUser => {
                let mut tx = Tx::begin(db).await?;
                store::cancel_unstarted(&mut tx, id, CancelledByUser, "x").await?;
                tx.commit().await?;
            }
        }
        // Events arrive at least once: the second delivery changes nothing.
        for delivery in 1..=2 {
            assert_eq!(finish(db, id, saga, &outcome).await?, 1, "{case}");
            let o = order(db, id).await?;
            assert_eq!(o.status, status, "{case}, delivery {delivery}");
            assert_eq!(o.cancel_code, code, "{case}, delivery {delivery}");
            assert_eq!(o.saga_status.as_deref(), Some(saga), "{case}");
            assert!(o.workflow_id.is_some(), "{case}: the saga is remembered");
        }
    }
    assert_eq!(
        finish(db, Uuid::now_v7(), "completed", &Outcome::Confirmed).await?,
        0
    );
    Ok(())
}

/// A stand-in for the engine's `POST /api/v1/workflows`: answers `answer`, and with 201 one
/// workflow id per Idempotency-Key, as the engine dedupes; counts the calls per key.
#[derive(Clone, Debug)]
struct FakeEngine {
    answer: StatusCode,
    calls: Arc<Mutex<HashMap<String, (u32, Uuid)>>>,
}

impl FakeEngine {
    async fn serve(
        answer: StatusCode,
        stop: &CancellationToken,
    ) -> anyhow::Result<(Self, Clients)> {
        let engine = Self {
            answer,
            calls: Arc::default(),
        };
        let router = Router::new()
            .route("/api/v1/workflows", post(Self::start))
            .with_state(engine.clone());
        let url = serve(router, stop).await?;
        let clients = Clients::new(
            "http://127.0.0.1:9",
            "http://127.0.0.1:9",
            &url,
            orderflow_service_kit::auth::JwtKeys::new("conformance-secret-conformance-secret-01"),
            Duration::from_secs(5),
        )?;
        Ok((engine, clients))
    }

    async fn start(
        State(e): State<Self>,
        headers: HeaderMap,
        Json(_): Json<Value>,
    ) -> (StatusCode, Json<Value>) {
        let key = headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let id = {
            let mut calls = e.calls.lock().expect("not poisoned");
            let entry = calls.entry(key).or_insert((0, Uuid::now_v7()));
            entry.0 += 1;
            entry.1
        };
        // An engine takes a moment to answer: a starter that did not hold its claim for that
        // long would let another one start the same saga.
        tokio::time::sleep(Duration::from_millis(20)).await;
        if e.answer.is_success() {
            (e.answer, Json(json!({ "id": id })))
        } else {
            (e.answer, Json(json!({ "title": "no" })))
        }
    }

    fn calls(&self, order: Uuid) -> (u32, Option<Uuid>) {
        let calls = self.calls.lock().expect("not poisoned");
        calls
            .get(&format!("order:{order}"))
            .map_or((0, None), |(n, id)| (*n, Some(*id)))
    }
}

on_both!(concurrent_starters_start_each_saga_exactly_once, file);
async fn concurrent_starters_start_each_saga_exactly_once(db: &Db) -> anyhow::Result<()> {
    let stop = CancellationToken::new();
    let _stop = stop.clone().drop_guard();
    let (engine, clients) = FakeEngine::serve(StatusCode::CREATED, &stop).await?;
    let mut orders = Vec::new();
    for _ in 0..12 {
        orders.push(place(db).await?);
    }
    // Collected, so that all are spawned before the first is awaited.
    let starters: Vec<_> = (0..4)
        .map(|_| {
            let (db, clients) = (db.clone(), clients.clone());
            tokio::spawn(async move {
                let mut mine = Vec::new();
                loop {
                    match starter::start_one(&db, &clients, None, Duration::from_secs(60)).await? {
                        Attempt::NothingDue => return anyhow::Ok(mine),
                        Attempt::Started { order, .. } => mine.push(order),
                        other => anyhow::bail!("the engine accepts every start: {other:?}"),
                    }
                }
            })
        })
        .collect();
    let mut claimed = Vec::new();
    for s in starters {
        claimed.extend(s.await??);
    }
    claimed.sort();
    let mut expected = orders.clone();
    expected.sort();
    assert_eq!(
        claimed, expected,
        "each order started by exactly one starter"
    );
    for id in orders {
        let (calls, workflow) = engine.calls(id);
        assert_eq!(calls, 1, "order {id}: one call to the engine");
        assert_eq!(order(db, id).await?.workflow_id, workflow, "order {id}");
        assert_eq!(start_due(db, id).await?, None);
    }
    Ok(())
}

on_both!(an_unreachable_engine_defers_and_a_refusal_cancels, memory);
async fn an_unreachable_engine_defers_and_a_refusal_cancels(db: &Db) -> anyhow::Result<()> {
    let stop = CancellationToken::new();
    let _stop = stop.clone().drop_guard();
    let cap = Duration::from_secs(60);

    let (down, clients) = FakeEngine::serve(StatusCode::SERVICE_UNAVAILABLE, &stop).await?;
    let id = place(db).await?;
    let attempt = starter::start_one(db, &clients, Some(id), cap).await?;
    assert_eq!(attempt, Attempt::Deferred { order: id });
    assert_eq!(down.calls(id).0, 1);
    let o = order(db, id).await?;
    assert_eq!((o.status, o.workflow_id), (OrderStatus::Pending, None));
    // Backed off: not due again right away, so the loop moves on.
    assert_eq!(
        starter::start_one(db, &clients, None, cap).await?,
        Attempt::NothingDue
    );
    assert_eq!(down.calls(id).0, 1);

    let (_refusing, clients) = FakeEngine::serve(StatusCode::UNPROCESSABLE_ENTITY, &stop).await?;
    let refused = place(db).await?;
    let attempt = starter::start_one(db, &clients, Some(refused), cap).await?;
    assert_eq!(attempt, Attempt::Refused { order: refused });
    let o = order(db, refused).await?;
    assert_eq!(o.status, OrderStatus::Cancelled);
    assert_eq!(o.cancel_code, Some(CancelCode::Failed));
    assert_eq!(start_due(db, refused).await?, None, "never retried");
    Ok(())
}

/// SQLite only: `orderflow dev --data-dir` keeps orders and pending starts in a file, through
/// `Db::connect`'s `sqlite://` URL, and migrating again on restart changes nothing.
#[tokio::test]
async fn an_embedded_file_keeps_orders_and_intents_across_a_restart() -> anyhow::Result<()> {
    let file = TempDb::new();
    let url = format!("sqlite://{}", file.path().display());
    let db = Db::connect(&url, &migrations()).await?;
    assert!(matches!(db, Db::Sqlite(_)));
    let (id, user) = (Uuid::now_v7(), Uuid::now_v7());
    place_as(&db, id, user, "k").await?;
    db.close().await;

    let db = Db::connect(&url, &migrations()).await?;
    assert_eq!(order(&db, id).await?.user_id, user);
    assert_eq!(
        start_due(&db, id).await?,
        Some(0),
        "the pending start survived"
    );
    assert_eq!(
        place_as(&db, Uuid::now_v7(), user, "k").await?,
        None,
        "and so did the key"
    );
    db.close().await;
    Ok(())
}

/// Both migrations hold the same tables and columns, so the two stores map the same rows.
#[tokio::test]
async fn both_backends_have_the_same_columns() -> anyhow::Result<()> {
    let pg = fresh_db("order", &migrator()).await?;
    let (Db::Sqlite(lite), _) = memory().await? else {
        anyhow::bail!("memory() is SQLite");
    };
    for table in ["orders", "saga_starts"] {
        let mut on_pg: Vec<String> = sqlx::query_scalar(
            "select column_name::text from information_schema.columns where table_name = $1",
        )
        .bind(table)
        .fetch_all(&pg)
        .await?;
        let mut on_lite: Vec<String> = sqlx::query_scalar("select name from pragma_table_info($1)")
            .bind(table)
            .fetch_all(&lite)
            .await?;
        on_pg.sort();
        on_lite.sort();
        assert!(!on_pg.is_empty(), "{table} exists");
        assert_eq!(on_pg, on_lite, "{table}");
    }
    Ok(())
}

/// `prepare` (and so `run`) opens the backend its URL names, and its readiness probe asks that
/// database; Redis is not needed to build the state on either.
#[tokio::test]
async fn prepare_opens_the_database_its_url_names() -> anyhow::Result<()> {
    let file = TempDb::new();
    let urls = [
        format!("sqlite://{}", file.path().display()),
        format!(
            "postgres://postgres@127.0.0.1:5432/orderflow_order_test_{}",
            Uuid::new_v4().simple()
        ),
    ];
    for url in urls {
        let mut config = OrderConfig::new(ServiceConfig::local("order", 0));
        config.service.database_url = url.clone();
        // Nothing listens there.
        config.service.redis_url = "redis://127.0.0.1:1".to_owned();
        let parts = orderflow_order::parts(config).await?;
        let db = parts.db.clone().expect("the order service has a database");
        let sqlite = url.starts_with("sqlite:");
        assert_eq!(matches!(db, Db::Sqlite(_)), sqlite, "{url}");
        let ready = parts.ready.clone();
        assert_eq!(ready.run().await, vec![("database".into(), true)], "{url}");
        let id = place(&db).await?;
        assert_eq!(order(&db, id).await?.status, OrderStatus::Pending, "{url}");
        db.close().await;
        assert_eq!(
            ready.run().await,
            vec![("database".into(), false)],
            "{url}: closed"
        );
    }
    Ok(())
}
