//! The order service end to end on the real services: an in-process engine (testkit) with its
//! REST API, the real user and inventory services, the order service's own workers, event
//! follower and saga starter (`common::Stack`), and recording activities for the payment and
//! notification steps. Every test has its own databases and queue prefix.

mod common;

use std::time::Duration;

use axum::http::{Method, StatusCode};
use common::{Engine, OrderBackend, SETTLE, Stack, order_body};

use orderflow_core::{Registry, SagaDefinition};
use orderflow_service_kit::{
    auth::{JwtKeys, Role},
    http,
};
use orderflow_service_testkit::{call, metrics, raw, sample};
use orderflow_testkit::recording::{self, Fault};
use orderflow_testkit::{eventually, sagas};
use orderflow_workflows::order::contracts::{NOTIFICATION_SEND, PAYMENT_CHARGE, PAYMENT_REFUND};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use uuid::Uuid;

/// The stack with recording activities for the steps whose services this test does not run.
async fn stack(def: SagaDefinition) -> anyhow::Result<Stack> {
    stack_on(def, OrderBackend::Postgres).await
}

/// The stack with the order service on `backend`.
async fn stack_on(def: SagaDefinition, backend: OrderBackend) -> anyhow::Result<Stack> {
    stack_with(def, Engine::Up, backend).await
}

async fn stack_with(
    def: SagaDefinition,
    engine: Engine,
    backend: OrderBackend,
) -> anyhow::Result<Stack> {
    let registry = Registry::new().with(def);
    Ok(with_recording(
        Stack::with_backend(registry, engine, backend).await?,
    ))
}

fn with_recording(stack: Stack) -> Stack {
    stack.spawn_worker(
        recording::order_saga_handlers(stack.env.pool.clone())
            .into_iter()
            .filter(|h| [PAYMENT_CHARGE, PAYMENT_REFUND, NOTIFICATION_SEND].contains(&h.activity()))
            .collect(),
    );
    stack
}

#[tokio::test]
async fn an_order_is_priced_started_and_confirmed_by_its_saga() -> anyhow::Result<()> {
    an_order_is_priced_started_and_confirmed_by_its_saga_on(OrderBackend::Postgres).await
}

/// The same with the order service on SQLite, as under `orderflow dev`.
#[tokio::test]
async fn an_order_is_priced_started_and_confirmed_by_its_saga_on_sqlite() -> anyhow::Result<()> {
    an_order_is_priced_started_and_confirmed_by_its_saga_on(OrderBackend::Sqlite).await
}

async fn an_order_is_priced_started_and_confirmed_by_its_saga_on(
    backend: OrderBackend,
) -> anyhow::Result<()> {
    let stack = stack_on(sagas::fast_order(), backend).await?;
    let ann = stack.customer("ann@example.com").await;
    let placed = stack
        .place(
            &ann,
            "k-1",
            order_body(json!([{"product_id": "sku-1", "quantity": 2}])),
        )
        .await;
    assert_eq!(placed.status, StatusCode::ACCEPTED, "{}", placed.body);
    assert_eq!(placed.body["status"], "pending");
    assert_eq!(
        placed.body["total"],
        json!({"amount_minor": 2500, "currency": "EUR"})
    );
    let workflow = stack.workflow_of(&ann, &placed).await?;

    // Confirmed at the pivot; the saga then still notifies, and its end is recorded too.
    stack.order_becomes(&ann, &placed.id(), "confirmed").await?;
    assert_eq!(
        orderflow_testkit::settled(&stack.env, workflow, SETTLE).await?,
        "completed"
    );
    let done = eventually(
        SETTLE,
        "the order to hear that its saga completed",
        || async {
            let a = stack.get(&ann, &placed.id()).await;
            Ok((a.body["saga_status"] == "completed").then_some(a.body))
        },
    )
    .await?;
    assert_eq!(done["status"], "confirmed");
    assert_eq!(done["cancellation"], Value::Null);
    // The saga carried the caller's email from the user service and the priced total.
    let (input, keys): (Value, Value) = sqlx::query_as(
        "select h.event->'input', w.business_keys from history h join workflows w on w.id = h.workflow_id
         where h.workflow_id = $1 and h.event->>'type' = 'workflow_started'",
    )
    .bind(workflow)
    .fetch_one(&stack.env.pool)
    .await?;
    assert_eq!(keys["order_id"], placed.body["id"]);
    assert_eq!(keys["user_id"], placed.body["user_id"]);
    assert_eq!(input["email"], "ann@example.com");
    assert_eq!(input["total"]["amount_minor"], 2500);
    assert_eq!(
        recording::effects_count(&stack.env.pool, PAYMENT_CHARGE).await?,
        1
    );

    let page = call(
        &stack.order,
        Method::GET,
        "/api/v1/orders",
        Some(&ann),
        &[],
        None,
    )
    .await;
    assert_eq!(page.body["items"].as_array().map(Vec::len), Some(1));
    Ok(())
}

#[tokio::test]
async fn a_repeated_post_is_the_same_order_and_a_reused_key_is_a_conflict() -> anyhow::Result<()> {
    a_repeated_post_is_the_same_order_and_a_reused_key_is_a_conflict_on(OrderBackend::Postgres)
        .await
}

/// The same with the order service on SQLite, as under `orderflow dev`.
#[tokio::test]
async fn a_repeated_post_is_the_same_order_and_a_reused_key_is_a_conflict_on_sqlite()
-> anyhow::Result<()> {
    a_repeated_post_is_the_same_order_and_a_reused_key_is_a_conflict_on(OrderBackend::Sqlite).await
}

async fn a_repeated_post_is_the_same_order_and_a_reused_key_is_a_conflict_on(
    backend: OrderBackend,
) -> anyhow::Result<()> {
    let stack = stack_on(sagas::fast_order(), backend).await?;
    let bea = stack.customer("bea@example.com").await;
    let created = || async {
        sample(
            &metrics(&stack.order).await.unwrap(),
            "orders_created_total",
        )
        .expect("orders_created_total is on /metrics from the start")
    };
    let created_before = created().await;
    let body = order_body(json!([{"product_id": "sku-1", "quantity": 1}]));
    let (a, b) = tokio::join!(
        stack.place(&bea, "same", body.clone()),
        stack.place(&bea, "same", body.clone())
    );
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.body);
    assert_eq!(b.status, StatusCode::ACCEPTED, "{}", b.body);
    assert_eq!(a.id(), b.id());
    let again = stack.place(&bea, "same", body).await;
    assert_eq!(again.id(), a.id());
    stack
        .place(
            &bea,
            "same",
            order_body(json!([{"product_id": "sku-1", "quantity": 3}])),
        )
        .await
        .problem(StatusCode::CONFLICT, None);
    // Another customer's identical key is their own.
    let cy = stack.customer("cy@example.com").await;
    let theirs = stack
        .place(
            &cy,
            "same",
            order_body(json!([{"product_id": "sku-1", "quantity": 1}])),
        )
        .await;
    assert_ne!(theirs.id(), a.id());

    stack.order_becomes(&bea, &a.id(), "confirmed").await?;
    assert_eq!(stack.count("select count(*) from orders").await, 2);
    let (sagas,): (i64,) = sqlx::query_as("select count(*) from workflows")
        .fetch_one(&stack.env.pool)
        .await?;
    assert_eq!(sagas, 2, "one saga per order");
    // Five requests, two orders: a repeat with the same key is not counted again.
    assert_eq!(
        created().await - created_before,
        2.0,
        "orders_created_total"
    );
    Ok(())
}

#[tokio::test]
async fn orders_are_visible_to_their_owner_and_admins_only() -> anyhow::Result<()> {
    let stack = stack(sagas::fast_order()).await?;
    let owner = stack.customer("owner@example.com").await;
    let other = stack.customer("other@example.com").await;
    let placed = stack
        .place(
            &owner,
            "k",
            order_body(json!([{"product_id": "sku-1", "quantity": 1}])),
        )
        .await;
    let id = placed.id();

    assert_eq!(stack.get(&owner, &id).await.status, StatusCode::OK);
    stack
        .get(&other, &id)
        .await
        .problem(StatusCode::NOT_FOUND, None);
    // Exactly what a missing order looks like.
    stack
        .get(&other, &Uuid::now_v7().to_string())
        .await
        .problem(StatusCode::NOT_FOUND, None);
    call(
        &stack.order,
        Method::POST,
        &format!("/api/v1/orders/{id}/cancel"),
        Some(&other),
        &[],
        None,
    )
    .await
    .problem(StatusCode::NOT_FOUND, None);
    let listed = call(
        &stack.order,
        Method::GET,
        "/api/v1/orders",
        Some(&other),
        &[],
        None,
    )
    .await;
    assert_eq!(listed.body["items"], json!([]));
    assert_eq!(
        stack.get(&stack.admin_token(), &id).await.status,
        StatusCode::OK
    );
    stack
        .get(&owner, "not-a-uuid")
        .await
        .problem(StatusCode::BAD_REQUEST, Some("id"));
    Ok(())
}

#[tokio::test]
async fn bad_orders_get_problems_naming_the_field_and_persist_nothing() -> anyhow::Result<()> {
    let stack = stack(sagas::fast_order()).await?;
    let dan = stack.customer("dan@example.com").await;
    let one = |q: Value| order_body(json!([{"product_id": "sku-1", "quantity": q}]));

    stack
        .place(
            &dan,
            "a",
            order_body(json!([{"product_id": "no-such-sku", "quantity": 1}])),
        )
        .await
        .problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("items[0].product_id"),
        );
    stack
        .place(&dan, "b", one(json!(0)))
        .await
        .problem(StatusCode::BAD_REQUEST, Some("items[0].quantity"));
    stack
        .place(&dan, "c", one(json!(-3)))
        .await
        .problem(StatusCode::BAD_REQUEST, Some("items[0].quantity"));
    stack
        .place(&dan, "d", order_body(json!([])))
        .await
        .problem(StatusCode::BAD_REQUEST, Some("items"));
    let mut no_city = one(json!(1));
    no_city["shipping_address"]
        .as_object_mut()
        .unwrap()
        .remove("city");
    stack
        .place(&dan, "e", no_city)
        .await
        .problem(StatusCode::BAD_REQUEST, Some("shipping_address.city"));
    raw(
        &stack.order,
        Method::POST,
        "/api/v1/orders",
        Some(&dan),
        &[("idempotency-key", "f")],
        Some("{\"items\": [".into()),
    )
    .await
    .problem(StatusCode::BAD_REQUEST, Some("body"));
    call(
        &stack.order,
        Method::POST,
        "/api/v1/orders",
        Some(&dan),
        &[],
        Some(one(json!(1))),
    )
    .await
    .problem(StatusCode::BAD_REQUEST, Some("Idempotency-Key"));
    call(
        &stack.order,
        Method::POST,
        "/api/v1/orders",
        None,
        &[("idempotency-key", "g")],
        Some(one(json!(1))),
    )
    .await
    .problem(StatusCode::UNAUTHORIZED, None);
    let forged = JwtKeys::new("not-the-secret-not-the-secret-not-the-secret").issue(
        Uuid::now_v7(),
        Role::Admin,
        Duration::from_secs(60),
    )?;
    stack
        .place(&forged, "h", one(json!(1)))
        .await
        .problem(StatusCode::UNAUTHORIZED, None);

    assert_eq!(stack.count("select count(*) from orders").await, 0);
    assert_eq!(stack.count("select count(*) from saga_starts").await, 0);
    Ok(())
}

#[tokio::test]
async fn out_of_stock_and_a_declined_card_cancel_the_order_with_the_reason() -> anyhow::Result<()> {
    let stack = stack(sagas::fast_order()).await?;
    let eve = stack.customer("eve@example.com").await;
    // sku-2 has one unit.
    let short = stack
        .place(
            &eve,
            "short",
            order_body(json!([{"product_id": "sku-2", "quantity": 2}])),
        )
        .await;
    let cancelled = stack.order_becomes(&eve, &short.id(), "cancelled").await?;
    assert_eq!(
        cancelled["cancellation"]["code"], "out_of_stock",
        "{cancelled}"
    );
    assert_eq!(cancelled["cancellation"]["reason"], "out of stock");
    assert_eq!(
        recording::effects_count(&stack.env.pool, PAYMENT_CHARGE).await?,
        0,
        "nothing charged"
    );

    recording::inject(
        &stack.env.pool,
        &Fault::permanent(PAYMENT_CHARGE, "card_declined"),
    )
    .await?;
    let declined = stack
        .place(
            &eve,
            "declined",
            order_body(json!([{"product_id": "sku-1", "quantity": 1}])),
        )
        .await;
    let cancelled = stack
        .order_becomes(&eve, &declined.id(), "cancelled")
        .await?;
    assert_eq!(
        cancelled["cancellation"]["code"], "payment_declined",
        "{cancelled}"
    );
    assert_eq!(cancelled["saga_status"], "compensated");
    Ok(())
}

#[tokio::test]
async fn the_owner_cancels_before_confirmation_and_the_saga_compensates() -> anyhow::Result<()> {
    the_owner_cancels_before_confirmation_and_the_saga_compensates_on(OrderBackend::Postgres).await
}

/// The same with the order service on SQLite, as under `orderflow dev`.
#[tokio::test]
async fn the_owner_cancels_before_confirmation_and_the_saga_compensates_on_sqlite()
-> anyhow::Result<()> {
    the_owner_cancels_before_confirmation_and_the_saga_compensates_on(OrderBackend::Sqlite).await
}

async fn the_owner_cancels_before_confirmation_and_the_saga_compensates_on(
    backend: OrderBackend,
) -> anyhow::Result<()> {
    // The charge retries only after 30 s, so the saga sits between reserve and charge.
    let stack = stack_on(
        sagas::order(Duration::from_secs(5), Duration::from_secs(30)),
        backend,
    )
    .await?;
    recording::inject(
        &stack.env.pool,
        &Fault::transient(PAYMENT_CHARGE, "stripe_down").times(1),
    )
    .await?;
    let fay = stack.customer("fay@example.com").await;
    let placed = stack
        .place(
            &fay,
            "k",
            order_body(json!([{"product_id": "sku-1", "quantity": 1}])),
        )
        .await;
    let id = placed.id();
    let workflow = stack.workflow_of(&fay, &placed).await?;
    eventually(SETTLE, "the charge to fail once", || async {
        let (n,): (i64,) = sqlx::query_as(
            "select count(*) from history where workflow_id = $1 and event->>'type' = 'activity_failed'",
        )
        .bind(workflow)
        .fetch_one(&stack.env.pool)
        .await?;
        Ok((n > 0).then_some(()))
    })
    .await?;

    let asked = call(
        &stack.order,
        Method::POST,
        &format!("/api/v1/orders/{id}/cancel"),
        Some(&fay),
        &[],
        None,
    )
    .await;
    assert_eq!(asked.status, StatusCode::ACCEPTED, "{}", asked.body);
    let cancelled = stack.order_becomes(&fay, &id, "cancelled").await?;
    assert_eq!(
        cancelled["cancellation"]["code"], "cancelled_by_user",
        "{cancelled}"
    );
    assert_eq!(
        orderflow_testkit::settled(&stack.env, workflow, SETTLE).await?,
        "cancelled"
    );
    let steps = orderflow_testkit::scheduled(&stack.env.pool, workflow).await?;
    assert!(steps.contains(&"inventory.release".to_owned()), "{steps:?}");
    assert_eq!(
        recording::effects_count(&stack.env.pool, PAYMENT_CHARGE).await?,
        0
    );
    Ok(())
}

#[tokio::test]
async fn an_order_placed_while_the_engine_is_down_gets_its_saga_later() -> anyhow::Result<()> {
    an_order_placed_while_the_engine_is_down_gets_its_saga_later_on(OrderBackend::Postgres).await
}

/// The same with the order service on SQLite, as under `orderflow dev`.
#[tokio::test]
async fn an_order_placed_while_the_engine_is_down_gets_its_saga_later_on_sqlite()
-> anyhow::Result<()> {
    an_order_placed_while_the_engine_is_down_gets_its_saga_later_on(OrderBackend::Sqlite).await
}

async fn an_order_placed_while_the_engine_is_down_gets_its_saga_later_on(
    backend: OrderBackend,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let stack = stack_with(sagas::fast_order(), Engine::Later(url), backend).await?;
    let gus = stack.customer("gus@example.com").await;
    let placed = stack
        .place(
            &gus,
            "k",
            order_body(json!([{"product_id": "sku-1", "quantity": 1}])),
        )
        .await;
    assert_eq!(placed.status, StatusCode::ACCEPTED, "{}", placed.body);
    assert_eq!(
        placed.body["workflow_id"],
        Value::Null,
        "the engine is not answering"
    );
    assert_eq!(stack.count("select count(*) from saga_starts").await, 1);
    assert_eq!(
        stack.get(&gus, &placed.id()).await.body["status"],
        "pending"
    );

    // The engine comes back; the background starter starts the saga and the order follows it.
    let engine = Stack::engine_router(&stack.env, &stack.registry);
    tokio::spawn(http::serve_on(listener, engine, stack.stop.clone()));
    let confirmed = stack.order_becomes(&gus, &placed.id(), "confirmed").await?;
    assert!(confirmed["workflow_id"].is_string(), "{confirmed}");
    // A request the starter gave up on (timed out) may be the one the engine served, so the
    // saga can confirm the order before the starter's next attempt hears its id and drops the
    // intent; that attempt comes within the backoff cap.
    eventually(SETTLE, "the intent to be dropped", || async {
        Ok((stack.count("select count(*) from saga_starts").await == 0).then_some(()))
    })
    .await?;
    let (sagas,): (i64,) = sqlx::query_as("select count(*) from workflows")
        .fetch_one(&stack.env.pool)
        .await?;
    assert_eq!(sagas, 1);
    Ok(())
}

/// `POST /orders/{id}/return`: a pending order is a 409 problem, another user's a 404; a
/// confirmed one starts the return saga (once, however often asked) with the order saga's id.
#[tokio::test]
async fn only_a_confirmed_order_is_returned_and_once() -> anyhow::Result<()> {
    let registry = Registry::new()
        .with(sagas::fast_order())
        .with(orderflow_workflows::returns::v1());
    let stack =
        with_recording(Stack::with_backend(registry, Engine::Up, OrderBackend::Postgres).await?);
    let ann = stack.customer("ann@example.com").await;
    let bob = stack.customer("bob@example.com").await;
    let placed = stack
        .place(
            &ann,
            "k-ret",
            order_body(json!([{"product_id": "sku-1", "quantity": 1}])),
        )
        .await;
    assert_eq!(placed.status, StatusCode::ACCEPTED, "{}", placed.body);
    let path = format!("/api/v1/orders/{}/return", placed.id());
    let order_wf = stack.workflow_of(&ann, &placed).await?;
    stack.order_becomes(&ann, &placed.id(), "confirmed").await?;

    let other = call(&stack.order, Method::POST, &path, Some(&bob), &[], None).await;
    assert_eq!(other.status, StatusCode::NOT_FOUND, "{}", other.body);
    let first = call(&stack.order, Method::POST, &path, Some(&ann), &[], None).await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.body);
    let again = call(&stack.order, Method::POST, &path, Some(&ann), &[], None).await;
    assert_eq!(
        again.body["return_workflow_id"], first.body["return_workflow_id"],
        "one return per order"
    );
    let ret: Uuid = serde_json::from_value(first.body["return_workflow_id"].clone())?;
    let (kind, input): (String, Value) = sqlx::query_as(
        "select w.workflow_type, h.event->'input' from workflows w
         join history h on h.workflow_id = w.id and h.seq = 1 where w.id = $1",
    )
    .bind(ret)
    .fetch_one(&stack.env.pool)
    .await?;
    assert_eq!(kind, "return");
    assert_eq!(input["order_workflow_id"], json!(order_wf.to_string()));
    assert_eq!(input["email"], "ann@example.com");
    Ok(())
}

/// A bad id is a 400 naming the field; a pending order is a 409 problem.
#[tokio::test]
async fn a_return_of_a_pending_order_is_a_conflict() -> anyhow::Result<()> {
    // An engine that never answers: the order stays pending.
    let unanswered = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", unanswered.local_addr()?);
    let stack = stack_with(
        sagas::fast_order(),
        Engine::Later(url),
        OrderBackend::Postgres,
    )
    .await?;
    let ann = stack.customer("ann@example.com").await;
    let bad = call(
        &stack.order,
        Method::POST,
        "/api/v1/orders/not-a-uuid/return",
        Some(&ann),
        &[],
        None,
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{}", bad.body);
    assert_eq!(bad.body["field"], "id", "{}", bad.body);
    let placed = stack
        .place(
            &ann,
            "k-pending",
            order_body(json!([{"product_id": "sku-1", "quantity": 1}])),
        )
        .await;
    let path = format!("/api/v1/orders/{}/return", placed.id());
    let res = call(&stack.order, Method::POST, &path, Some(&ann), &[], None).await;
    assert_eq!(res.status, StatusCode::CONFLICT, "{}", res.body);
    assert!(
        res.body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("order") && d.contains("is pending")),
        "{}",
        res.body
    );
    Ok(())
}
