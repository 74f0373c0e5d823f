//! The notification service on the real services: a fresh database per test, a real SMTP server
//! (aiosmtpd, started by each test on its own port; `scripts/test-servers.sh` installs it), a
//! local HTTP server standing in for the SMS/push provider's API, and the engine in-process for
//! the saga test.

mod common;

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Json, Router,
    extract::State,
    http::{HeaderMap, StatusCode},
    routing::post,
};
use orderflow_activities::{
    Activity, TaskContext,
    worker::{Handler, Worker},
};
use orderflow_core::Registry;
use orderflow_notification::{
    AppState, NotificationConfig, Providers, Send,
    providers::{http::HttpProvider, outbox::Outbox, smtp::SmtpEmail},
    store::{self, Contact},
};
use orderflow_service_kit::{
    ServiceConfig,
    auth::{JwtKeys, Role},
    db::Db,
    http::Readiness,
};
use orderflow_service_testkit::{Api, SmtpServer, free_port, fresh_db};
use orderflow_testkit::recording::RecordingActivity;
use orderflow_testkit::{TestEnv, eventually, sagas, settled, start_order};
use orderflow_workflows::order::contracts::*;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::common::{ctx, order};

const SECRET: &str = "notification-tests-secret-of-32-bytes-or-more";
const FROM: &str = "Shop <orders@shop.test>";

async fn notification_db() -> anyhow::Result<PgPool> {
    fresh_db("notification", &orderflow_notification::migrator()).await
}

fn smtp(port: u16) -> Arc<SmtpEmail> {
    Arc::new(
        SmtpEmail::new(
            &format!("smtp://127.0.0.1:{port}"),
            FROM,
            Duration::from_secs(5),
        )
        .unwrap(),
    )
}

fn providers(pool: &PgPool, email: Arc<SmtpEmail>) -> Providers {
    let outbox = Arc::new(Outbox::new(pool.clone(), FROM).unwrap());
    Providers {
        email,
        sms: outbox.clone(),
        push: outbox,
    }
}

async fn rows(pool: &PgPool) -> anyhow::Result<Vec<store::Notification>> {
    Ok(store::list(
        &Db::from(pool.clone()),
        &store::ListFilter {
            limit: 100,
            ..Default::default()
        },
    )
    .await?)
}

#[tokio::test]
async fn the_confirmation_reaches_the_smtp_server_once() -> anyhow::Result<()> {
    let pool = notification_db().await?;
    let port = free_port().await?;
    let server = SmtpServer::start(port).await?;
    let send = Send {
        db: Db::from(pool.clone()),
        providers: providers(&pool, smtp(port)),
    };
    let wf = Uuid::now_v7();
    let input = order("buyer@example.com");
    // Four deliveries of the same task at once, then a late fifth.
    let ctxs: Vec<TaskContext> = (0..4).map(|_| ctx(wf)).collect();
    let runs = futures::future::join_all(ctxs.iter().map(|c| send.run(c, input.clone()))).await;
    let ids: Vec<String> = runs
        .into_iter()
        .map(|r| r.map(|n| n.notification_id))
        .collect::<Result<_, _>>()?;
    let again = send.run(&ctx(wf), input.clone()).await?;
    assert!(ids.iter().all(|id| *id == again.notification_id), "{ids:?}");

    let mail = server.messages()?;
    assert_eq!(mail.len(), 1, "one email for one key: {mail:?}");
    let m = &mail[0];
    assert!(m.contains("X-RcptTo: buyer@example.com"), "{m}");
    assert!(m.contains("Subject: Your order"), "{m}");
    assert!(
        m.contains(&format!(
            "Message-ID: <{}@shop.test>",
            again.notification_id
        )),
        "{m}"
    );
    assert!(m.contains(&input.order_id.to_string()), "{m}");
    assert!(m.contains("25.99 EUR"), "{m}");
    assert!(m.contains("text/html"), "an HTML alternative: {m}");

    let logged = rows(&pool).await?;
    assert_eq!(logged.len(), 1);
    assert_eq!((logged[0].status.as_str(), logged[0].attempts), ("sent", 1));
    assert_eq!(logged[0].provider, "smtp");
    assert!(logged[0].provider_message_id.is_some());
    server.stop().await
}

#[tokio::test]
async fn smtp_down_is_retryable_and_the_message_goes_out_once_it_is_back() -> anyhow::Result<()> {
    let pool = notification_db().await?;
    let port = free_port().await?;
    let send = Send {
        db: Db::from(pool.clone()),
        providers: providers(&pool, smtp(port)),
    };
    let wf = Uuid::now_v7();
    let input = order("buyer@example.com");
    let down = send
        .run(&ctx(wf), input.clone())
        .await
        .expect_err("nobody listens");
    assert_eq!(down.code, "delivery_delayed");
    assert!(down.retryable);
    let logged = rows(&pool).await?;
    assert_eq!(
        (logged[0].status.as_str(), logged[0].attempts),
        ("pending", 1)
    );
    assert!(logged[0].last_error.is_some());

    let server = SmtpServer::start(port).await?;
    send.run(&ctx(wf), input.clone()).await?;
    send.run(&ctx(wf), input).await?;
    assert_eq!(server.messages()?.len(), 1);
    let logged = rows(&pool).await?;
    assert_eq!((logged[0].status.as_str(), logged[0].attempts), ("sent", 2));
    let log: Vec<String> = store::attempts(&Db::from(pool.clone()), logged[0].id)
        .await?
        .into_iter()
        .map(|a| a.outcome)
        .collect();
    assert_eq!(log, ["transient_failure", "sent"]);
    server.stop().await
}

#[tokio::test]
async fn a_bad_address_is_a_permanent_failure_logged_once() -> anyhow::Result<()> {
    let pool = notification_db().await?;
    let port = free_port().await?;
    let server = SmtpServer::start(port).await?;
    let send = Send {
        db: Db::from(pool.clone()),
        providers: providers(&pool, smtp(port)),
    };
    let wf = Uuid::now_v7();
    for _ in 0..2 {
        let e = send
            .run(&ctx(wf), order("not an address"))
            .await
            .expect_err("undeliverable");
        assert_eq!(e.code, "undeliverable");
        assert!(!e.retryable);
    }
    let logged = rows(&pool).await?;
    assert_eq!(
        (logged[0].status.as_str(), logged[0].attempts),
        ("failed", 1)
    );
    assert!(server.messages()?.is_empty());
    server.stop().await
}

/// What the fake SMS/push provider API saw, and what it answers.
#[derive(Clone, Default)]
struct ProviderApi {
    seen: Arc<Mutex<Vec<(HeaderMap, Value)>>>,
    status: Arc<Mutex<StatusCode>>,
}

async fn provider_api() -> anyhow::Result<(ProviderApi, SocketAddr)> {
    let api = ProviderApi {
        status: Arc::new(Mutex::new(StatusCode::OK)),
        ..Default::default()
    };
    let app =
        Router::new()
            .route(
                "/messages",
                post(
                    |State(api): State<ProviderApi>,
                     headers: HeaderMap,
                     Json(body): Json<Value>| async move {
                        let n = {
                            let mut seen = api.seen.lock().unwrap();
                            seen.push((headers, body));
                            seen.len()
                        };
                        let status = *api.status.lock().unwrap();
                        (status, Json(json!({ "id": format!("msg-{n}") })))
                    },
                ),
            )
            .with_state(api.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((api, addr))
}

#[tokio::test]
async fn sms_and_push_go_to_the_http_provider_where_the_user_asked() -> anyhow::Result<()> {
    let pool = notification_db().await?;
    let (api, addr) = provider_api().await?;
    let http = Arc::new(HttpProvider::new(
        format!("http://{addr}/messages"),
        "provider-key",
        Duration::from_secs(5),
    )?);
    let send = Send {
        db: Db::from(pool.clone()),
        providers: Providers {
            email: Arc::new(Outbox::new(pool.clone(), FROM)?),
            sms: http.clone(),
            push: http,
        },
    };
    let input = order("buyer@example.com");
    store::set_contact(
        &Db::from(pool.clone()),
        input.user_id,
        &Contact {
            phone: Some("+4915112345678".into()),
            push_token: Some("device-token-1".into()),
        },
    )
    .await?;

    // The provider is overloaded: the step is retried, and the email that went out is not resent.
    *api.status.lock().unwrap() = StatusCode::SERVICE_UNAVAILABLE;
    let wf = Uuid::now_v7();
    let e = send.run(&ctx(wf), input.clone()).await.expect_err("503");
    assert_eq!((e.code.as_str(), e.retryable), ("delivery_delayed", true));
    *api.status.lock().unwrap() = StatusCode::OK;
    send.run(&ctx(wf), input.clone()).await?;
    send.run(&ctx(wf), input.clone()).await?;
    let (n,): (i64,) = sqlx::query_as("select count(*) from outbox_messages")
        .fetch_one(&pool)
        .await?;
    assert_eq!(n, 1, "the email was recorded once");

    let seen = api.seen.lock().unwrap().clone();
    // Two failed calls, then one each for SMS and push.
    assert_eq!(seen.len(), 4, "{seen:?}");
    let sms = seen
        .iter()
        .rev()
        .find(|(_, b)| b.get("to").is_some())
        .unwrap();
    assert_eq!(sms.1["to"], "+4915112345678");
    assert!(sms.1["text"].as_str().unwrap().contains("25.99 EUR"));
    assert_eq!(sms.0["authorization"], "Bearer provider-key");
    assert!(sms.0.contains_key("idempotency-key"));
    let push = seen
        .iter()
        .rev()
        .find(|(_, b)| b.get("device_token").is_some())
        .unwrap();
    assert_eq!(push.1["device_token"], "device-token-1");
    assert!(push.1["title"].as_str().unwrap().starts_with("Your order"));

    // A refused SMS (a stale number) is logged as failed but does not fail a confirmed order.
    *api.status.lock().unwrap() = StatusCode::BAD_REQUEST;
    let other = Uuid::now_v7();
    send.run(&ctx(other), input).await?;
    let statuses: Vec<(String, String)> = sqlx::query_as(
        "select channel, status from notifications where workflow_id = $1 order by channel",
    )
    .bind(other)
    .fetch_all(&pool)
    .await?;
    assert_eq!(
        statuses,
        [
            ("email".to_owned(), "sent".to_owned()),
            ("push".to_owned(), "failed".to_owned()),
            ("sms".to_owned(), "failed".to_owned())
        ]
    );
    Ok(())
}

// ---- the REST API -------------------------------------------------------------------------

/// The service's whole router on a fresh database.
async fn api() -> anyhow::Result<Api> {
    let pool = notification_db().await?;
    let app = orderflow_notification::router(
        AppState {
            db: Db::from(pool.clone()),
            keys: JwtKeys::new(SECRET),
        },
        Readiness::new().postgres(pool.clone()),
    );
    Ok(Api::new(app, pool, SECRET))
}

#[tokio::test]
async fn admins_read_the_log_and_the_outbox() -> anyhow::Result<()> {
    let api = api().await?;
    let send = Send {
        db: Db::from(api.pool.clone()),
        providers: {
            let outbox = Arc::new(Outbox::new(api.pool.clone(), FROM)?);
            Providers {
                email: outbox.clone(),
                sms: outbox.clone(),
                push: outbox,
            }
        },
    };
    let mut workflows = Vec::new();
    for i in 0..3 {
        let wf = Uuid::now_v7();
        send.run(&ctx(wf), order(&format!("buyer{i}@example.com")))
            .await?;
        workflows.push(wf);
    }
    let admin = api.token(Role::Admin);

    let (status, _, page) = api
        .call("GET", "/api/v1/notifications?limit=2", Some(&admin), None)
        .await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    assert_eq!(
        page["items"][0]["recipient"], "buyer2@example.com",
        "newest first"
    );
    let cursor = page["next_cursor"].as_str().unwrap().to_owned();
    let (_, _, rest) = api
        .call(
            "GET",
            &format!("/api/v1/notifications?limit=2&cursor={cursor}"),
            Some(&admin),
            None,
        )
        .await?;
    assert_eq!(rest["items"][0]["recipient"], "buyer0@example.com");
    assert_eq!(rest["next_cursor"], Value::Null);

    let (_, _, filtered) = api
        .call(
            "GET",
            &format!(
                "/api/v1/notifications?status=sent&channel=email&workflow_id={}",
                workflows[1]
            ),
            Some(&admin),
            None,
        )
        .await?;
    let items = filtered["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    let id = items[0]["id"].as_str().unwrap().to_owned();
    let (status, _, one) = api
        .call(
            "GET",
            &format!("/api/v1/notifications/{id}"),
            Some(&admin),
            None,
        )
        .await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one["attempt_log"][0]["outcome"], "sent");
    assert_eq!(one["provider"], "outbox");

    let (status, _, outbox) = api
        .call("GET", "/api/v1/outbox", Some(&admin), None)
        .await?;
    assert_eq!(status, StatusCode::OK);
    let raw = outbox["items"][0]["content"].as_str().unwrap();
    assert!(
        raw.contains("Subject: Your order"),
        "the email as it would have gone out: {raw}"
    );

    let customer = api.token(Role::Customer);
    for uri in [
        "/api/v1/notifications",
        &format!("/api/v1/notifications/{id}"),
        "/api/v1/outbox",
    ] {
        let (status, ctype, _) = api.call("GET", uri, Some(&customer), None).await?;
        assert_eq!(
            (status, ctype.as_str()),
            (StatusCode::FORBIDDEN, "application/problem+json")
        );
        let (status, _, _) = api.call("GET", uri, None, None).await?;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    for (uri, field) in [
        ("/api/v1/notifications?status=lost", "status"),
        ("/api/v1/notifications?channel=fax", "channel"),
        ("/api/v1/notifications?limit=0", "limit"),
        ("/api/v1/notifications?cursor=x", "cursor"),
        ("/api/v1/notifications?workflow_id=1", "workflow_id"),
        ("/api/v1/notifications?colour=red", "colour"),
    ] {
        let (status, ctype, problem) = api.call("GET", uri, Some(&admin), None).await?;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}");
        assert_eq!(ctype, "application/problem+json");
        assert_eq!(problem["field"], field, "{uri}: {problem}");
    }
    let (status, _, _) = api
        .call(
            "GET",
            &format!("/api/v1/notifications/{}", Uuid::now_v7()),
            Some(&admin),
            None,
        )
        .await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    Ok(())
}

#[tokio::test]
async fn users_set_where_else_their_order_messages_go() -> anyhow::Result<()> {
    let api = api().await?;
    let user = Uuid::new_v4();
    let token = api
        .keys
        .issue(user, Role::Customer, Duration::from_secs(300))?;
    let (status, _, saved) = api
        .call(
            "PUT",
            "/api/v1/contacts/me",
            Some(&token),
            Some(r#"{"phone":"+4915112345678","push_token":"tok-1"}"#),
        )
        .await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(saved["phone"], "+4915112345678");
    let (_, _, got) = api
        .call("GET", "/api/v1/contacts/me", Some(&token), None)
        .await?;
    assert_eq!(got, saved);
    let db = Db::from(api.pool.clone());
    assert_eq!(
        store::contact(&db, user).await?.push_token.as_deref(),
        Some("tok-1")
    );

    for (body, field) in [
        (r#"{"phone":"0151 123"}"#, "phone"),
        (r#"{"push_token":"has space"}"#, "push_token"),
        (r#"{"email":"x@y.z"}"#, "email"),
        ("{", "body"),
    ] {
        let (status, ctype, problem) = api
            .call("PUT", "/api/v1/contacts/me", Some(&token), Some(body))
            .await?;
        assert!(status.is_client_error(), "{body}: {status}");
        assert_eq!(ctype, "application/problem+json");
        assert_eq!(problem["field"], field, "{body}: {problem}");
    }
    assert_eq!(
        store::contact(&db, user).await?.phone.as_deref(),
        Some("+4915112345678")
    );
    let (status, _, _) = api
        .call(
            "PUT",
            "/api/v1/contacts/me",
            None,
            Some(r#"{"phone":null}"#),
        )
        .await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    Ok(())
}

/// The saga's last step while SMTP is down: the order is confirmed already, the step keeps
/// retrying, and the email goes out once when the server is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_saga_confirms_by_email_once_smtp_is_back() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let pool = notification_db().await?;
    let registry = Arc::new(Registry::new().with(sagas::fast_order()));
    let applier = env.applier(registry.clone());
    let engine = env.spawn_engine(registry);
    let stop = CancellationToken::new();

    let port = free_port().await?;
    let mut config = NotificationConfig::new(ServiceConfig::local("notification", 0));
    config.smtp_url = Some(format!("smtp://127.0.0.1:{port}"));
    config.email_from = FROM.into();
    config.send_timeout = Duration::from_secs(1);
    let mut worker = Worker::builder(env.queue()).handlers(
        orderflow_notification::handlers(
            pool.clone(),
            orderflow_notification::providers(pool.clone(), &config)?,
        ),
        4,
    );
    for name in [
        INVENTORY_RESERVE,
        INVENTORY_RELEASE,
        PAYMENT_CHARGE,
        PAYMENT_REFUND,
        ORDER_CREATE,
        ORDER_CANCEL,
    ] {
        let h: Arc<dyn Handler> = Arc::new(RecordingActivity::new(name, env.pool.clone()));
        worker = worker.handler(h, 4);
    }
    tokio::spawn(worker.build().run(stop.clone().cancelled_owned()));

    let id = start_order(&env, &applier).await?;
    let failed_attempts = eventually(Duration::from_secs(30), "a failed delivery", || async {
        let r = rows(&pool).await?;
        Ok(r.first().filter(|n| n.attempts >= 2).map(|n| n.attempts))
    })
    .await?;
    assert_eq!(
        env.status(id).await?,
        "running",
        "the notify step is retrying"
    );
    let server = SmtpServer::start(port).await?;
    let status = settled(&env, id, Duration::from_secs(30)).await;
    stop.cancel();
    engine.cancel();
    assert_eq!(status?, "completed");
    let mail = server.messages()?;
    assert_eq!(mail.len(), 1, "{mail:?}");
    assert!(mail[0].contains("X-RcptTo: buyer@example.com"));
    let logged = rows(&pool).await?;
    assert_eq!(logged.len(), 1);
    assert_eq!(logged[0].status, "sent");
    assert!(logged[0].attempts > failed_attempts);
    server.stop().await
}

/// The return saga's emails reach the SMTP server once per task, each with its own wording, and
/// the log names their templates.
#[tokio::test]
async fn the_return_emails_reach_the_smtp_server_once_each() -> anyhow::Result<()> {
    use orderflow_notification::returns::{Expired, Instructions, Refunded};
    use orderflow_workflows::returns::contracts::ReturnSagaInput;
    let pool = notification_db().await?;
    let port = free_port().await?;
    let server = SmtpServer::start(port).await?;
    let send = Send {
        db: Db::from(pool.clone()),
        providers: providers(&pool, smtp(port)),
    };
    let o = order("returner@example.com");
    let input = ReturnSagaInput {
        order_id: o.order_id,
        order_workflow_id: Uuid::now_v7(),
        user_id: o.user_id,
        items: o.items,
        total: o.total,
        email: o.email,
    };
    let wf = Uuid::now_v7();
    let step = |name: &str, phase| TaskContext::first_attempt(wf, name, phase);
    let forward = orderflow_core::Phase::Forward;
    let a = Instructions(send.clone())
        .run(&step("instruct", forward), input.clone())
        .await?;
    let again = Instructions(send.clone())
        .run(&step("instruct", forward), input.clone())
        .await?;
    assert_eq!(a, again, "a repeated task sends nothing more");
    Expired(send.clone())
        .run(
            &step("instruct", orderflow_core::Phase::Compensate),
            input.clone(),
        )
        .await?;
    Refunded(send.clone())
        .run(&step("confirm", forward), input.clone())
        .await?;

    let mail = server.messages()?;
    assert_eq!(mail.len(), 3, "{mail:?}");
    // By subject, since bodies may be wrapped by the transfer encoding.
    let r = input.order_id.to_string()[28..].to_uppercase();
    let subjects: Vec<&str> = mail
        .iter()
        .filter_map(|m| m.lines().find_map(|l| l.strip_prefix("Subject: ")))
        .map(str::trim)
        .collect();
    for want in [
        format!("Your return of order {r}"),
        format!("Your return of order {r} has ended"),
        format!("We refunded order {r}"),
    ] {
        assert!(subjects.contains(&want.as_str()), "{want} in {subjects:?}");
    }
    assert!(
        mail.iter()
            .all(|m| m.contains("X-RcptTo: returner@example.com"))
    );
    let mut templates: Vec<String> = rows(&pool).await?.into_iter().map(|r| r.template).collect();
    templates.sort();
    assert_eq!(
        templates,
        ["return_expired", "return_instructions", "return_refunded"]
    );
    server.stop().await
}
