//! The inventory service on the real services: a fresh database per test, the engine in-process
//! for the saga tests, real RabbitMQ queues under a unique prefix.

mod common;

use common::stock_of;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::http::{Method, StatusCode};
use chrono::Utc;
use futures::StreamExt as _;
use orderflow_activities::{
    Activity, TaskContext,
    follower::{self, Subscription},
    worker::{Handler, Worker},
};
use orderflow_core::{Phase, Registry, WorkflowFinished, WorkflowId, WorkflowStatus};
use orderflow_engine::apply::StartRequest;
use orderflow_inventory::{
    AppState, InventoryConfig,
    activities::{Release, Reserve},
    model::Stock,
    seed_demo_products, settle,
    store::products,
    sweeper,
};
use orderflow_service_kit::{
    ServiceConfig,
    auth::{JwtKeys, Role},
    db::Db,
    http::Readiness,
};
use orderflow_service_testkit::{Api, fresh_db, raw};
use orderflow_testkit::recording::{self, RecordingActivity};
use orderflow_testkit::{TestEnv, eventually, sagas};
use orderflow_workflows::order::contracts::*;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const SECRET: &str = "inventory-tests-secret-of-at-least-32-bytes";
const HOLD: Duration = Duration::from_secs(600);

async fn add_product(pool: &PgPool, id: &str, on_hand: i32) -> anyhow::Result<()> {
    common::add_product(&Db::from(pool.clone()), id, on_hand).await
}

async fn stock(pool: &PgPool, id: &str) -> anyhow::Result<Stock> {
    common::stock(&Db::from(pool.clone()), id).await
}

/// A fresh inventory database, migrated the way the service does it.
async fn inventory_db() -> anyhow::Result<PgPool> {
    fresh_db("inventory", &orderflow_inventory::migrator()).await
}

/// The context a worker would hand the activity for `step` of `workflow`.
fn ctx(workflow: Uuid, phase: Phase) -> TaskContext {
    TaskContext::first_attempt(workflow, "reserve", phase)
}

fn order(items: &[(&str, u32)]) -> OrderSagaInput {
    OrderSagaInput {
        order_id: Uuid::new_v4(),
        user_id: Uuid::new_v4(),
        items: items
            .iter()
            .map(|(p, q)| OrderItem {
                product_id: (*p).to_owned(),
                quantity: *q,
            })
            .collect(),
        total: Money {
            amount_minor: 1000,
            currency: "EUR".into(),
        },
        payment_method: "pm_card_visa".into(),
        email: "buyer@example.com".into(),
    }
}

#[tokio::test]
async fn a_reservation_takes_every_item_or_none() -> anyhow::Result<()> {
    let pool = inventory_db().await?;
    add_product(&pool, "mug", 5).await?;
    add_product(&pool, "pot", 1).await?;
    let reserve = Reserve {
        db: Db::from(pool.clone()),
        ttl: HOLD,
    };

    let short = reserve
        .run(
            &ctx(Uuid::now_v7(), Phase::Forward),
            order(&[("mug", 2), ("pot", 2)]),
        )
        .await
        .expect_err("two pots are more than one");
    assert_eq!(short.code, "out_of_stock");
    assert!(!short.retryable);
    assert!(short.message.contains("pot"), "{}", short.message);

    let unknown = reserve
        .run(
            &ctx(Uuid::now_v7(), Phase::Forward),
            order(&[("mug", 1), ("nope", 1)]),
        )
        .await
        .expect_err("there is no such product");
    assert_eq!(unknown.code, "unknown_product");
    assert!(!unknown.retryable);

    let zero = reserve
        .run(&ctx(Uuid::now_v7(), Phase::Forward), order(&[("mug", 0)]))
        .await
        .expect_err("zero units is not an order line");
    assert_eq!(zero.code, "invalid_items");

    // Nothing moved, and no failed attempt left a reservation behind.
    assert_eq!(stock(&pool, "mug").await?, stock_of(5, 0, 0));
    assert_eq!(stock(&pool, "pot").await?, stock_of(1, 0, 0));
    let (n,): (i64,) = sqlx::query_as("select count(*) from reservations")
        .fetch_one(&pool)
        .await?;
    assert_eq!(n, 0);

    // Two lines of one product add up.
    reserve
        .run(
            &ctx(Uuid::now_v7(), Phase::Forward),
            order(&[("mug", 2), ("pot", 1), ("mug", 1)]),
        )
        .await?;
    assert_eq!(stock(&pool, "mug").await?, stock_of(2, 3, 0));
    assert_eq!(stock(&pool, "pot").await?, stock_of(0, 1, 0));
    Ok(())
}

#[tokio::test]
async fn a_repeated_reserve_returns_the_first_reservation() -> anyhow::Result<()> {
    let pool = inventory_db().await?;
    add_product(&pool, "mug", 10).await?;
    let reserve = Reserve {
        db: Db::from(pool.clone()),
        ttl: HOLD,
    };
    let wf = Uuid::now_v7();
    // Eight deliveries of the same task at once (redelivery, a retry racing a slow attempt).
    let ctxs: Vec<TaskContext> = (0..8).map(|_| ctx(wf, Phase::Forward)).collect();
    let runs =
        futures::future::join_all(ctxs.iter().map(|c| reserve.run(c, order(&[("mug", 3)])))).await;
    let ids: Vec<String> = runs
        .into_iter()
        .map(|r| r.map(|r| r.reservation_id))
        .collect::<Result<_, _>>()?;
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    assert_eq!(stock(&pool, "mug").await?, stock_of(7, 3, 0));

    // A later repeat, even one asking for something else, still gets the first.
    let again = reserve
        .run(&ctx(wf, Phase::Forward), order(&[("mug", 9)]))
        .await?;
    assert_eq!(again.reservation_id, ids[0]);
    assert_eq!(stock(&pool, "mug").await?, stock_of(7, 3, 0));
    Ok(())
}

#[tokio::test]
async fn release_is_idempotent_and_beats_a_late_reserve() -> anyhow::Result<()> {
    let pool = inventory_db().await?;
    add_product(&pool, "mug", 10).await?;
    let reserve = Reserve {
        db: Db::from(pool.clone()),
        ttl: HOLD,
    };
    let release = Release {
        db: Db::from(pool.clone()),
    };

    let wf = Uuid::now_v7();
    reserve
        .run(&ctx(wf, Phase::Forward), order(&[("mug", 4)]))
        .await?;
    assert_eq!(stock(&pool, "mug").await?, stock_of(6, 4, 0));
    let first = release.run(&ctx(wf, Phase::Compensate), json!({})).await?;
    assert_eq!(first["outcome"], "released");
    let second = release.run(&ctx(wf, Phase::Compensate), json!({})).await?;
    assert_eq!(second["outcome"], "already_settled");
    assert_eq!(stock(&pool, "mug").await?, stock_of(10, 0, 0));

    // The engine compensates a step whose attempt timed out; its reserve may arrive afterwards
    // and must then hold nothing.
    let late = Uuid::now_v7();
    let out = release
        .run(&ctx(late, Phase::Compensate), json!({}))
        .await?;
    assert_eq!(out["outcome"], "never_reserved");
    reserve
        .run(&ctx(late, Phase::Forward), order(&[("mug", 4)]))
        .await?;
    assert_eq!(stock(&pool, "mug").await?, stock_of(10, 0, 0));
    Ok(())
}

fn finished(workflow: Uuid, status: WorkflowStatus) -> WorkflowFinished {
    WorkflowFinished {
        workflow_id: WorkflowId(workflow),
        workflow_type: "order".into(),
        status,
        reason: None,
        cause: None,
        business_keys: json!({}),
        at: Utc::now(),
    }
}

#[tokio::test]
async fn a_finished_saga_commits_or_releases_its_units_once() -> anyhow::Result<()> {
    let pool = inventory_db().await?;
    add_product(&pool, "mug", 10).await?;
    let reserve = Reserve {
        db: Db::from(pool.clone()),
        ttl: HOLD,
    };
    let (done, failed, stuck) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    for wf in [done, failed, stuck] {
        reserve
            .run(&ctx(wf, Phase::Forward), order(&[("mug", 2)]))
            .await?;
    }
    assert_eq!(stock(&pool, "mug").await?, stock_of(4, 6, 0));

    // Events are delivered at least once: each is applied twice here.
    for _ in 0..2 {
        settle::on_workflow_finished(
            &Db::from(pool.clone()),
            &finished(done, WorkflowStatus::Completed),
        )
        .await?;
        settle::on_workflow_finished(
            &Db::from(pool.clone()),
            &finished(failed, WorkflowStatus::Terminated),
        )
        .await?;
        // Needs attention is not an end: an operator may still resume the saga.
        settle::on_workflow_finished(
            &Db::from(pool.clone()),
            &finished(stuck, WorkflowStatus::NeedsAttention),
        )
        .await?;
    }
    assert_eq!(stock(&pool, "mug").await?, stock_of(6, 2, 2));

    // A release after the commit (a confused operator's retry) changes nothing.
    let out = Release {
        db: Db::from(pool.clone()),
    }
    .run(&ctx(done, Phase::Compensate), json!({}))
    .await?;
    assert_eq!(out["outcome"], "already_settled");
    assert_eq!(stock(&pool, "mug").await?, stock_of(6, 2, 2));
    Ok(())
}

#[tokio::test]
async fn the_sweeper_releases_expired_reservations_only() -> anyhow::Result<()> {
    let pool = inventory_db().await?;
    add_product(&pool, "mug", 10).await?;
    let expiring = Reserve {
        db: Db::from(pool.clone()),
        ttl: Duration::ZERO,
    };
    let holding = Reserve {
        db: Db::from(pool.clone()),
        ttl: HOLD,
    };
    expiring
        .run(&ctx(Uuid::now_v7(), Phase::Forward), order(&[("mug", 3)]))
        .await?;
    expiring
        .run(&ctx(Uuid::now_v7(), Phase::Forward), order(&[("mug", 1)]))
        .await?;
    let kept = Uuid::now_v7();
    holding
        .run(&ctx(kept, Phase::Forward), order(&[("mug", 2)]))
        .await?;
    assert_eq!(stock(&pool, "mug").await?, stock_of(4, 6, 0));

    assert_eq!(sweeper::sweep_once(&Db::from(pool.clone())).await?, 2);
    assert_eq!(sweeper::sweep_once(&Db::from(pool.clone())).await?, 0);
    assert_eq!(stock(&pool, "mug").await?, stock_of(8, 2, 0));

    // The running sweeper does the same on its own. The short interval stands in for the
    // production ratio, a TTL far longer than the interval.
    let stop = CancellationToken::new();
    tokio::spawn(sweeper::run(
        Db::from(pool.clone()),
        Duration::from_millis(100),
        stop.clone(),
    ));
    expiring
        .run(&ctx(Uuid::now_v7(), Phase::Forward), order(&[("mug", 5)]))
        .await?;
    let swept = eventually(
        Duration::from_secs(10),
        "the sweeper to release",
        || async {
            let s = stock(&pool, "mug").await?;
            Ok((s.reserved == 2).then_some(s))
        },
    )
    .await;
    stop.cancel();
    assert_eq!(swept?, stock_of(8, 2, 0));
    Ok(())
}

/// 1,000 order sagas race for 100 units: exactly 100 complete and 900 compensate because the
/// product is out of stock; every unit ends up sold, none twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_sagas_never_oversell() -> anyhow::Result<()> {
    const SAGAS: usize = 1000;
    const UNITS: i32 = 100;
    let env = TestEnv::new().await?;
    let pool = inventory_db().await?;
    add_product(&pool, "limited", UNITS).await?;
    // Timeouts far above the time a task may wait in its queue behind 999 others: a timeout
    // would count the attempt as lost, which is not what this test is about.
    let def = sagas::order(Duration::from_secs(60), Duration::from_millis(50));
    let registry = Arc::new(Registry::new().with(def));
    let committer = env.committer(&env.applier(registry.clone()));
    let stop = CancellationToken::new();
    let engine = env.spawn_engine(registry);

    let mut config = InventoryConfig::new(ServiceConfig::local("inventory", 0));
    config.service.queue_prefix = env.topology.prefix.clone();
    let sub = orderflow_inventory::subscription();
    sub.declare(&env.queue()).await?;
    tokio::spawn(follower::follow(
        env.queue(),
        sub,
        {
            let pool = pool.clone();
            move |e: WorkflowFinished| {
                let pool = pool.clone();
                async move { settle::on_workflow_finished(&Db::from(pool.clone()), &e).await }
            }
        },
        stop.clone(),
    ));
    // The test's own view of how each saga ended, through the same public events.
    let ends: Arc<Mutex<HashMap<Uuid, WorkflowFinished>>> = Arc::default();
    let audit = Subscription {
        service: "audit".into(),
        ..orderflow_inventory::subscription()
    };
    audit.declare(&env.queue()).await?;
    tokio::spawn(follower::follow(
        env.queue(),
        audit,
        {
            let ends = ends.clone();
            move |e: WorkflowFinished| {
                ends.lock().unwrap().insert(e.workflow_id.0, e);
                async { Ok::<_, std::convert::Infallible>(()) }
            }
        },
        stop.clone(),
    ));

    let mut worker = Worker::builder(env.queue()).handlers(
        orderflow_inventory::handlers(Db::from(pool.clone()), &config),
        16,
    );
    for name in [
        PAYMENT_CHARGE,
        PAYMENT_REFUND,
        ORDER_CREATE,
        ORDER_CANCEL,
        NOTIFICATION_SEND,
    ] {
        let h: Arc<dyn Handler> = Arc::new(RecordingActivity::new(name, env.pool.clone()));
        worker = worker.handler(h, 8);
    }
    tokio::spawn(worker.build().run(stop.clone().cancelled_owned()));

    let started = std::time::Instant::now();
    let starts = futures::stream::iter(0..SAGAS)
        .map(|_| {
            let committer = &committer;
            async move {
                let mut input = orderflow_testkit::order_input();
                input["items"] = json!([{ "product_id": "limited", "quantity": 1 }]);
                committer
                    .start(StartRequest {
                        workflow_type: "order".into(),
                        input,
                        business_keys: json!({}),
                        idempotency_key: None,
                        request_hash: None,
                    })
                    .await
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    for s in starts {
        s?;
    }

    let heard = eventually(Duration::from_secs(120), "every saga to finish", || async {
        let n = ends.lock().unwrap().len();
        Ok((n == SAGAS).then_some(n))
    })
    .await;
    let elapsed = started.elapsed();
    if heard.is_err() {
        stop.cancel();
        engine.cancel();
    }
    heard?;

    let ends = ends.lock().unwrap().clone();
    let mut by_status: HashMap<WorkflowStatus, usize> = HashMap::new();
    for e in ends.values() {
        *by_status.entry(e.status).or_default() += 1;
        if e.status == WorkflowStatus::Compensated {
            let cause = e.cause.as_ref().map(|c| c.code.as_str());
            assert_eq!(cause, Some("out_of_stock"), "{e:?}");
        }
    }
    assert_eq!(
        by_status.get(&WorkflowStatus::Completed),
        Some(&100),
        "{by_status:?}"
    );
    assert_eq!(
        by_status.get(&WorkflowStatus::Compensated),
        Some(&900),
        "{by_status:?}"
    );
    assert_eq!(
        recording::effects_count(&env.pool, PAYMENT_CHARGE).await?,
        100
    );
    assert_eq!(
        recording::effects_count(&env.pool, PAYMENT_REFUND).await?,
        0
    );

    // Every unit sold once the completions are committed; none reserved, none left, none extra.
    let settled = eventually(Duration::from_secs(30), "the commits", || async {
        let s = stock(&pool, "limited").await?;
        Ok((s.sold == UNITS).then_some(s))
    })
    .await;
    stop.cancel();
    engine.cancel();
    assert_eq!(settled?, stock_of(0, 0, UNITS));
    eprintln!("{SAGAS} sagas for {UNITS} units settled in {elapsed:?}");
    Ok(())
}

// ---- the REST API -------------------------------------------------------------------------

/// The service's whole router on a fresh database.
async fn api() -> anyhow::Result<Api> {
    let pool = inventory_db().await?;
    let db = Db::from(pool.clone());
    let state = AppState {
        db: db.clone(),
        keys: JwtKeys::new(SECRET),
    };
    let app = orderflow_inventory::router(state, Readiness::new().database(db));
    Ok(Api::new(app, pool, SECRET))
}

#[tokio::test]
async fn the_catalogue_is_public_and_paged() -> anyhow::Result<()> {
    let api = api().await?;
    assert_eq!(seed_demo_products(&Db::from(api.pool.clone())).await?, 5);
    // Seeding only fills an empty catalogue.
    assert_eq!(seed_demo_products(&Db::from(api.pool.clone())).await?, 0);

    let (status, _, page) = api
        .call("GET", "/api/v1/products?limit=2", None, None)
        .await?;
    assert_eq!(status, StatusCode::OK);
    let ids = |v: &Value| -> Vec<String> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(ids(&page), ["sku-1", "sku-2"]);
    assert_eq!(
        page["items"][0]["price"],
        json!({"amount_minor": 1299, "currency": "EUR"})
    );
    assert_eq!(page["items"][0]["available"], 100);
    assert!(
        page["items"][0].get("stock").is_none(),
        "sales figures are not public"
    );
    let mut seen = ids(&page);
    let mut cursor = page["next_cursor"].as_str().map(str::to_owned);
    while let Some(c) = cursor {
        let (_, _, p) = api
            .call(
                "GET",
                &format!("/api/v1/products?limit=2&cursor={c}"),
                None,
                None,
            )
            .await?;
        seen.extend(ids(&p));
        cursor = p["next_cursor"].as_str().map(str::to_owned);
    }
    assert_eq!(seen, ["sku-1", "sku-2", "sku-3", "sku-4", "sku-5"]);

    // Pricing an order: several by id, the missing ones simply absent.
    let (status, _, found) = api
        .call(
            "GET",
            "/api/v1/products?ids=sku-3,nope,sku-1,sku-3",
            None,
            None,
        )
        .await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ids(&found), ["sku-1", "sku-3"]);

    let (status, _, one) = api
        .call("GET", "/api/v1/products/sku-4", None, None)
        .await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one["name"], "Milk jug");
    let (status, ctype, _) = api.call("GET", "/api/v1/products/nope", None, None).await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(ctype, "application/problem+json");

    for (uri, field) in [
        ("/api/v1/products?limit=0", "limit"),
        ("/api/v1/products?limit=x", "limit"),
        ("/api/v1/products?cursor=%20", "cursor"),
        ("/api/v1/products?ids=a,b%20c", "ids"),
        ("/api/v1/products?ids=a&limit=3", "ids"),
        ("/api/v1/products?colour=red", "colour"),
    ] {
        let (status, ctype, problem) = api.call("GET", uri, None, None).await?;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}");
        assert_eq!(ctype, "application/problem+json", "{uri}");
        assert_eq!(problem["field"], field, "{uri}: {problem}");
    }
    let many = (0..101)
        .map(|i| format!("p{i}"))
        .collect::<Vec<_>>()
        .join(",");
    let (status, _, problem) = api
        .call("GET", &format!("/api/v1/products?ids={many}"), None, None)
        .await?;
    assert_eq!(
        (status, problem["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("ids"))
    );
    Ok(())
}

#[tokio::test]
async fn only_admins_change_the_catalogue() -> anyhow::Result<()> {
    let api = api().await?;
    let admin = api.token(Role::Admin);
    let customer = api.token(Role::Customer);
    let body = r#"{"id":"kettle","name":"Kettle","price":{"amount_minor":4500,"currency":"EUR"},"on_hand":7}"#;

    let (status, ctype, _) = api
        .call("POST", "/api/v1/products", None, Some(body))
        .await?;
    assert_eq!(
        (status, ctype.as_str()),
        (StatusCode::UNAUTHORIZED, "application/problem+json")
    );
    let forged = JwtKeys::new("another-secret-that-is-also-32-bytes-long").issue(
        Uuid::new_v4(),
        Role::Admin,
        Duration::from_secs(60),
    )?;
    let (status, _, _) = api
        .call("POST", "/api/v1/products", Some(&forged), Some(body))
        .await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = api
        .call("POST", "/api/v1/products", Some(&customer), Some(body))
        .await?;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        products::count(&Db::from(api.pool.clone())).await?,
        0,
        "refused writes persist nothing"
    );

    let (status, _, created) = api
        .call("POST", "/api/v1/products", Some(&admin), Some(body))
        .await?;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(
        created["stock"],
        json!({"on_hand": 7, "reserved": 0, "sold": 0})
    );
    let (status, _, _) = api
        .call("POST", "/api/v1/products", Some(&admin), Some(body))
        .await?;
    assert_eq!(status, StatusCode::CONFLICT);

    let patch = r#"{"price":{"amount_minor":3999,"currency":"EUR"},"on_hand":20}"#;
    let (status, _, _) = api
        .call(
            "PATCH",
            "/api/v1/products/kettle",
            Some(&customer),
            Some(patch),
        )
        .await?;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, updated) = api
        .call(
            "PATCH",
            "/api/v1/products/kettle",
            Some(&admin),
            Some(patch),
        )
        .await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(updated["price"]["amount_minor"], 3999);
    assert_eq!(updated["available"], 20);
    assert_eq!(updated["name"], "Kettle", "fields not given are kept");
    let (status, _, _) = api
        .call("PATCH", "/api/v1/products/none", Some(&admin), Some(patch))
        .await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, st) = api
        .call("GET", "/api/v1/products/kettle/stock", Some(&admin), None)
        .await?;
    assert_eq!(
        (status, &st["stock"]["on_hand"]),
        (StatusCode::OK, &json!(20))
    );
    let (status, _, _) = api
        .call(
            "GET",
            "/api/v1/products/kettle/stock",
            Some(&customer),
            None,
        )
        .await?;
    assert_eq!(status, StatusCode::FORBIDDEN);
    Ok(())
}

#[tokio::test]
async fn bad_product_input_names_the_field_and_persists_nothing() -> anyhow::Result<()> {
    let api = api().await?;
    let admin = api.token(Role::Admin);
    add_product(&api.pool, "mug", 5).await?;
    let cases = [
        (
            "POST",
            "/api/v1/products",
            "{",
            StatusCode::BAD_REQUEST,
            "body",
        ),
        (
            "POST",
            "/api/v1/products",
            "",
            StatusCode::BAD_REQUEST,
            "body",
        ),
        (
            "POST",
            "/api/v1/products",
            r#"{"name":"x","price":{"amount_minor":1,"currency":"EUR"},"on_hand":1}"#,
            StatusCode::BAD_REQUEST,
            "id",
        ),
        (
            "POST",
            "/api/v1/products",
            r#"{"id":"a b","name":"x","price":{"amount_minor":1,"currency":"EUR"},"on_hand":1}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "id",
        ),
        (
            "POST",
            "/api/v1/products",
            r#"{"id":"ab","name":"x","price":{"amount_minor":-1,"currency":"EUR"},"on_hand":1}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "price.amount_minor",
        ),
        (
            "POST",
            "/api/v1/products",
            r#"{"id":"ab","name":"x","price":{"amount_minor":1,"currency":"eur"},"on_hand":1}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "price.currency",
        ),
        (
            "POST",
            "/api/v1/products",
            r#"{"id":"ab","name":"x","price":{"amount_minor":1,"currency":"EUR"},"on_hand":-3}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "on_hand",
        ),
        (
            "POST",
            "/api/v1/products",
            r#"{"id":"ab","name":"","price":{"amount_minor":1,"currency":"EUR"},"on_hand":1}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
            "name",
        ),
        (
            "POST",
            "/api/v1/products",
            r#"{"id":"ab","name":"x","price":{"amount_minor":1,"currency":"EUR"},"on_hand":1,"sold":9}"#,
            StatusCode::BAD_REQUEST,
            "sold",
        ),
        (
            "PATCH",
            "/api/v1/products/mug",
            "{}",
            StatusCode::BAD_REQUEST,
            "body",
        ),
        (
            "PATCH",
            "/api/v1/products/mug",
            r#"{"on_hand":"many"}"#,
            StatusCode::BAD_REQUEST,
            "on_hand",
        ),
        (
            "PATCH",
            "/api/v1/products/mug",
            r#"{"reserved":0}"#,
            StatusCode::BAD_REQUEST,
            "reserved",
        ),
    ];
    for (method, uri, body, want, field) in cases {
        let (status, ctype, problem) = api.call(method, uri, Some(&admin), Some(body)).await?;
        assert_eq!(status, want, "{method} {body}: {problem}");
        assert_eq!(ctype, "application/problem+json", "{method} {body}");
        assert_eq!(problem["field"], field, "{method} {body}: {problem}");
    }
    assert_eq!(products::count(&Db::from(api.pool.clone())).await?, 1);
    assert_eq!(stock(&api.pool, "mug").await?, stock_of(5, 0, 0));
    Ok(())
}

#[tokio::test]
async fn admins_can_see_what_a_saga_holds() -> anyhow::Result<()> {
    let api = api().await?;
    add_product(&api.pool, "mug", 5).await?;
    let wf = Uuid::now_v7();
    Reserve {
        db: Db::from(api.pool.clone()),
        ttl: HOLD,
    }
    .run(&ctx(wf, Phase::Forward), order(&[("mug", 2)]))
    .await?;
    let admin = api.token(Role::Admin);
    let (status, _, found) = api
        .call(
            "GET",
            &format!("/api/v1/reservations?workflow_id={wf}"),
            Some(&admin),
            None,
        )
        .await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(found["items"][0]["status"], "reserved");
    assert_eq!(
        found["items"][0]["items"],
        json!([{"product_id": "mug", "quantity": 2}])
    );
    let (status, _, problem) = api
        .call(
            "GET",
            "/api/v1/reservations?workflow_id=42",
            Some(&admin),
            None,
        )
        .await?;
    assert_eq!(
        (status, problem["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("workflow_id"))
    );
    let (status, _, _) = api
        .call(
            "GET",
            &format!("/api/v1/reservations?workflow_id={wf}"),
            Some(&api.token(Role::Customer)),
            None,
        )
        .await?;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, _) = api.call("GET", "/health", None, None).await?;
    assert_eq!(status, StatusCode::OK);
    let (status, _, ready) = api.call("GET", "/ready", None, None).await?;
    assert_eq!((status, &ready["database"]), (StatusCode::OK, &json!(true)));
    Ok(())
}

/// The same API on the embedded database `orderflow dev` gives the service: the catalogue, an
/// admin's new product, a saga's reservation and readiness.
#[tokio::test]
async fn the_api_answers_on_sqlite() -> anyhow::Result<()> {
    let db = Db::sqlite(None, &orderflow_inventory::migrations()).await?;
    let app = orderflow_inventory::router(
        AppState {
            db: db.clone(),
            keys: JwtKeys::new(SECRET),
        },
        Readiness::new().database(db.clone()),
    );
    let admin = JwtKeys::new(SECRET).issue(Uuid::new_v4(), Role::Admin, HOLD)?;
    assert_eq!(seed_demo_products(&db).await?, 5);
    assert_eq!(seed_demo_products(&db).await?, 0);

    let page = raw(
        &app,
        Method::GET,
        "/api/v1/products?limit=2",
        None,
        &[],
        None,
    )
    .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert_eq!(page.body["items"][0]["id"], "sku-1");
    assert_eq!(page.body["items"][0]["available"], 100);
    assert_eq!(page.body["next_cursor"], "sku-2");
    let found = raw(
        &app,
        Method::GET,
        "/api/v1/products?ids=sku-3,nope,sku-1",
        None,
        &[],
        None,
    )
    .await;
    assert_eq!(found.body["items"].as_array().map(Vec::len), Some(2));

    let body = r#"{"id":"kettle","name":"Kettle","price":{"amount_minor":4500,"currency":"EUR"},"on_hand":7}"#;
    let created = raw(
        &app,
        Method::POST,
        "/api/v1/products",
        Some(&admin),
        &[],
        Some(body.into()),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    assert_eq!(
        created.body["stock"],
        json!({"on_hand": 7, "reserved": 0, "sold": 0})
    );
    let again = raw(
        &app,
        Method::POST,
        "/api/v1/products",
        Some(&admin),
        &[],
        Some(body.into()),
    )
    .await;
    again.problem(StatusCode::CONFLICT, None);
    let patched = raw(
        &app,
        Method::PATCH,
        "/api/v1/products/kettle",
        Some(&admin),
        &[],
        Some(r#"{"on_hand":20}"#.into()),
    )
    .await;
    assert_eq!(
        (patched.status, &patched.body["available"]),
        (StatusCode::OK, &json!(20))
    );

    let wf = Uuid::now_v7();
    Reserve {
        db: db.clone(),
        ttl: HOLD,
    }
    .run(&ctx(wf, Phase::Forward), order(&[("kettle", 2)]))
    .await?;
    let held = raw(
        &app,
        Method::GET,
        &format!("/api/v1/reservations?workflow_id={wf}"),
        Some(&admin),
        &[],
        None,
    )
    .await;
    assert_eq!(held.status, StatusCode::OK, "{}", held.body);
    assert_eq!(held.body["items"][0]["workflow_id"], wf.to_string());
    assert_eq!(held.body["items"][0]["status"], "reserved");
    assert_eq!(
        held.body["items"][0]["items"],
        json!([{"product_id": "kettle", "quantity": 2}])
    );
    let stock = raw(
        &app,
        Method::GET,
        "/api/v1/products/kettle/stock",
        Some(&admin),
        &[],
        None,
    )
    .await;
    assert_eq!(
        stock.body["stock"],
        json!({"on_hand": 18, "reserved": 2, "sold": 0})
    );
    let ready = raw(&app, Method::GET, "/ready", None, &[], None).await;
    assert_eq!(
        (ready.status, &ready.body["database"]),
        (StatusCode::OK, &json!(true))
    );
    Ok(())
}

/// The return saga's restock puts back what the order's committed reservation sold, once: a
/// redelivered task and a second return of the same order change nothing more, and an order that
/// sold nothing is a final `not_sold`.
#[tokio::test]
async fn a_returned_order_is_restocked_once() -> anyhow::Result<()> {
    restocked_once(Db::from(inventory_db().await?)).await
}

#[tokio::test]
async fn a_returned_order_is_restocked_once_on_sqlite() -> anyhow::Result<()> {
    let file = std::env::temp_dir().join(format!("orderflow-test-restock-{}.db", Uuid::new_v4()));
    let db = Db::connect(
        &format!("sqlite://{}", file.display()),
        &orderflow_inventory::migrations(),
    )
    .await?;
    let out = restocked_once(db).await;
    let _ = std::fs::remove_file(&file);
    out
}

async fn restocked_once(db: Db) -> anyhow::Result<()> {
    use orderflow_inventory::activities::Restock;
    use orderflow_workflows::returns::contracts::ReturnSagaInput;
    common::add_product(&db, "mug", 10).await?;
    let reserve = Reserve {
        db: db.clone(),
        ttl: HOLD,
    };
    let (sold, unsold) = (Uuid::now_v7(), Uuid::now_v7());
    for wf in [sold, unsold] {
        reserve
            .run(&ctx(wf, Phase::Forward), order(&[("mug", 2)]))
            .await?;
    }
    settle::on_workflow_finished(&db, &finished(sold, WorkflowStatus::Completed)).await?;
    settle::on_workflow_finished(&db, &finished(unsold, WorkflowStatus::Compensated)).await?;
    assert_eq!(common::stock(&db, "mug").await?, stock_of(8, 0, 2));

    let o = order(&[("mug", 2)]);
    let input = |order_workflow_id| ReturnSagaInput {
        order_id: o.order_id,
        order_workflow_id,
        user_id: o.user_id,
        items: o.items.clone(),
        total: o.total.clone(),
        email: o.email.clone(),
    };
    let restock = Restock { db: db.clone() };
    let task = |wf| TaskContext::first_attempt(wf, "restock", Phase::Forward);
    let (first, second) = (Uuid::now_v7(), Uuid::now_v7());
    let out = restock.run(&task(first), input(sold)).await?;
    assert_eq!(out, json!({"outcome": "restocked", "units": 2}));
    let again = restock.run(&task(first), input(sold)).await?;
    assert_eq!(again["outcome"], "already_restocked");
    let other = restock.run(&task(second), input(sold)).await?;
    assert_eq!(other["outcome"], "already_restocked", "a second return");
    assert_eq!(common::stock(&db, "mug").await?, stock_of(10, 0, 0));

    let err = restock.run(&task(second), input(unsold)).await.unwrap_err();
    assert_eq!((err.code.as_str(), err.retryable), ("not_sold", false));
    assert_eq!(common::stock(&db, "mug").await?, stock_of(10, 0, 0));
    Ok(())
}
