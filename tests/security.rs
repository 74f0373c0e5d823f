//! Security of the REST APIs on the real services (each test has its own databases, queue
//! prefix and Redis keys): another user's objects, tokens that must not verify, admin endpoints
//! as a customer, the admin UI without a session, SQL injection in every list filter, oversized
//! and deeply nested bodies, and the rate limits on login and order creation.
//!
//! Every refusal must be a 4xx `application/problem+json`; nothing here may answer 5xx.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::Router;
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use orderflow_auth::engine::EngineRole;
use orderflow_engine::{admin::AdminConfig, api::AppState as EngineState};
use orderflow_order::OrderConfig;
use orderflow_service_kit::{
    ServiceConfig,
    auth::{JwtKeys, Role},
    db,
    http::{self, Readiness},
    kv,
    limit::{RateLimiter, Rule},
};
use orderflow_testkit::{TestEnv, pg_server};
use reqwest::{Method, StatusCode, header};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::{CancellationToken, DropGuard};
use uuid::Uuid;

const SECRET: &str = "security-test-secret-security-test-secret-01";

/// A token for the engine API in `role`, signed with the stack's secret.
fn engine_token(role: EngineRole, name: &str) -> String {
    orderflow_auth::engine::issue(
        &orderflow_auth::KeyRing::new(SECRET),
        role,
        name,
        Duration::from_secs(600),
    )
    .expect("signs")
}
const ADMIN_UI_PASSWORD: &str = "security-test-admin-ui-password";

/// Logins per client, and orders per user, that the stack allows per [`WINDOW`]. The window is
/// long so that a slow machine (argon2 in a debug build) cannot see it end mid-test.
const LOGIN_LIMIT: u32 = 6;
const ORDER_LIMIT: u32 = 3;
const WINDOW: Duration = Duration::from_secs(3600);

fn rule(limit: u32) -> Rule {
    Rule {
        limit,
        window: WINDOW,
    }
}

async fn serve(router: Router, stop: &CancellationToken) -> anyhow::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(http::serve_on(listener, router, stop.clone()));
    Ok(url)
}

async fn fresh_db(service: &str, migrator: &sqlx::migrate::Migrator) -> anyhow::Result<PgPool> {
    let name = format!("orderflow_{service}_test_{}", Uuid::new_v4().simple());
    db::connect_and_migrate(&db::with_database(&pg_server(), &name)?, migrator).await
}

/// One answer, read in full.
#[derive(Debug)]
struct Resp {
    status: StatusCode,
    content_type: String,
    headers: header::HeaderMap,
    body: Value,
    text: String,
}

impl Resp {
    /// Asserts a problem+json answer with `status`.
    fn problem(&self, status: StatusCode, what: &str) {
        assert_eq!(self.status, status, "{what}: {}", self.text);
        assert_eq!(
            self.content_type, "application/problem+json",
            "{what}: {}",
            self.text
        );
        assert_eq!(
            self.body["status"],
            status.as_u16(),
            "{what}: {}",
            self.text
        );
    }

    /// Asserts a client error (never a server error) answered with problem+json.
    fn refused(&self, what: &str) {
        assert!(
            self.status.is_client_error(),
            "{what}: {} {}",
            self.status,
            self.text
        );
        assert_eq!(
            self.content_type, "application/problem+json",
            "{what}: {}",
            self.text
        );
    }
}

struct Stack {
    http: reqwest::Client,
    user: String,
    order: String,
    inventory: String,
    payment: String,
    notification: String,
    engine: String,
    env: TestEnv,
    /// Every database of the stack, by service.
    pools: Vec<(&'static str, PgPool)>,
    _stop: DropGuard,
}

impl Stack {
    async fn new() -> anyhow::Result<Self> {
        let env = TestEnv::new().await?;
        let stop = CancellationToken::new();
        let prefix = env.topology.prefix.clone();
        let keys = JwtKeys::new(SECRET);
        let registry = Arc::new(orderflow_workflows::registry());
        let state = EngineState::standalone(env.pool.clone(), env.applier(registry), env.queue());
        let admin = orderflow_engine::admin::router(
            state.clone(),
            AdminConfig::with_password("operator", ADMIN_UI_PASSWORD),
        );
        let engine = serve(
            orderflow_engine::api::router_with(
                state,
                orderflow_engine::api::ApiAuth::new(orderflow_auth::KeyRing::new(SECRET)),
                admin,
            ),
            &stop,
        )
        .await?;

        let mut service = ServiceConfig::local("order", 0);
        service.bind = SocketAddr::from(([127, 0, 0, 1], 0));
        service.jwt_secret = SECRET.to_owned();
        service.queue_prefix = prefix.clone();
        service.engine_url = engine.clone();

        let user_pool = fresh_db("user", &orderflow_user::migrator()).await?;
        let redis = kv::connect(&service.redis_url).await?;
        let user = serve(
            http::app(
                "user",
                orderflow_user::router(orderflow_user::AppState {
                    db: user_pool.clone().into(),
                    keys: keys.clone(),
                    sessions: orderflow_user::sessions::Sessions::new(redis, &prefix)
                        .with_login_limit(Some(rule(LOGIN_LIMIT)), None),
                    access_ttl: Duration::from_secs(900),
                    refresh_ttl: Duration::from_secs(3600),
                }),
                Readiness::new(),
            ),
            &stop,
        )
        .await?;

        let inventory_pool = fresh_db("inventory", &orderflow_inventory::migrator()).await?;
        let inventory = serve(
            orderflow_inventory::router(
                orderflow_inventory::AppState {
                    db: inventory_pool.clone().into(),
                    keys: keys.clone(),
                },
                Readiness::new(),
            ),
            &stop,
        )
        .await?;

        let payment_pool = fresh_db("payment", &orderflow_payment::migrator()).await?;
        let payment = serve(
            orderflow_payment::router(
                orderflow_payment::AppState {
                    db: payment_pool.clone().into(),
                    keys: keys.clone(),
                    webhook_secret: "whsec_security_test".to_owned(),
                },
                Readiness::new(),
            ),
            &stop,
        )
        .await?;

        let notification_pool =
            fresh_db("notification", &orderflow_notification::migrator()).await?;
        let notification = serve(
            orderflow_notification::router(
                orderflow_notification::AppState {
                    db: notification_pool.clone().into(),
                    keys: keys.clone(),
                },
                Readiness::new(),
            ),
            &stop,
        )
        .await?;

        let order_pool = fresh_db("order", &orderflow_order::migrator()).await?;
        let mut config = OrderConfig::new(service.clone());
        config.inventory_url = inventory.clone();
        config.user_url = user.clone();
        config.call_timeout = Duration::from_secs(2);
        let mut state = orderflow_order::state(&config, order_pool.clone().into())?;
        state.order_limit = RateLimiter::new(
            &service.redis_url,
            &prefix,
            "orders",
            Some(rule(ORDER_LIMIT)),
        )?;
        let order = serve(
            http::app("order", orderflow_order::router(state), Readiness::new()),
            &stop,
        )
        .await?;

        let stack = Self {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()?,
            user,
            order,
            inventory,
            payment,
            notification,
            engine,
            pools: vec![
                ("engine", env.pool.clone()),
                ("user", user_pool),
                ("order", order_pool),
                ("inventory", inventory_pool),
                ("notification", notification_pool),
                ("payment", payment_pool),
            ],
            env,
            _stop: stop.drop_guard(),
        };
        let admin = stack.admin_token();
        for (id, price) in [("sku-1", 1250), ("sku-2", 399)] {
            let r = stack
                .call(
                    Method::POST,
                    &format!("{}/api/v1/products", stack.inventory),
                    Some(&admin),
                    Some(json!({"id": id, "name": id, "price": {"amount_minor": price, "currency": "EUR"}, "on_hand": 100})),
                )
                .await?;
            anyhow::ensure!(r.status == StatusCode::CREATED, "product {id}: {}", r.text);
        }
        Ok(stack)
    }

    fn admin_token(&self) -> String {
        JwtKeys::new(SECRET)
            .issue(Uuid::now_v7(), Role::Admin, Duration::from_secs(600))
            .expect("signs")
    }

    /// A token of an operator of the engine API (role `operator`).
    fn operator_token(&self) -> String {
        engine_token(EngineRole::Operator, "sec")
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<Resp> {
        let r = req.send().await?;
        let status = r.status();
        let headers = r.headers().clone();
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let text = r.text().await?;
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Ok(Resp {
            status,
            content_type,
            headers,
            body,
            text,
        })
    }

    async fn call(
        &self,
        method: Method,
        url: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> anyhow::Result<Resp> {
        let mut req = self.http.request(method, url);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        self.send(req).await
    }

    /// Registers and logs in a customer; their id and access token.
    async fn customer(&self, email: &str) -> anyhow::Result<(Uuid, String)> {
        let creds = json!({"email": email, "password": "correct horse battery"});
        let reg = self
            .call(
                Method::POST,
                &format!("{}/api/v1/users", self.user),
                None,
                Some(creds.clone()),
            )
            .await?;
        anyhow::ensure!(reg.status == StatusCode::CREATED, "register: {}", reg.text);
        let login = self
            .call(
                Method::POST,
                &format!("{}/api/v1/auth/login", self.user),
                None,
                Some(creds),
            )
            .await?;
        anyhow::ensure!(login.status == StatusCode::OK, "login: {}", login.text);
        let id = reg.body["id"].as_str().unwrap_or_default().parse()?;
        Ok((
            id,
            login.body["access_token"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        ))
    }

    fn pool(&self, service: &str) -> &PgPool {
        &self
            .pools
            .iter()
            .find(|(n, _)| *n == service)
            .expect("a database of the stack")
            .1
    }

    async fn place_order(&self, token: &str, key: &str) -> anyhow::Result<Resp> {
        self.send(
            self.http
                .post(format!("{}/api/v1/orders", self.order))
                .bearer_auth(token)
                .header("Idempotency-Key", key)
                .json(&json!({
                    "items": [{"product_id": "sku-1", "quantity": 1}],
                    "shipping_address": {"name": "A", "line1": "1 Main St", "city": "Paris",
                                         "postal_code": "75001", "country": "FR"},
                    "payment_method": "pm_card_visa",
                })),
        )
        .await
    }

    /// Tables and row counts of every database, to see that nothing was dropped or emptied.
    async fn inventory_of_tables(&self) -> anyhow::Result<Vec<(String, i64)>> {
        let mut out = Vec::new();
        for (name, pool) in &self.pools {
            let tables: Vec<(String,)> = sqlx::query_as(
                "select table_name::text from information_schema.tables
                 where table_schema = 'public' order by 1",
            )
            .fetch_all(pool)
            .await?;
            for (t,) in tables {
                let (n,): (i64,) = sqlx::query_as(&format!("select count(*) from \"{t}\""))
                    .fetch_one(pool)
                    .await?;
                out.push((format!("{name}.{t}"), n));
            }
        }
        Ok(out)
    }
}

/// `header.claims.signature` with the given header and claims, signed with `sig`.
fn token(header: Value, claims: Value, sig: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode(sig)
    )
}

/// Claims as the user service writes them, expiring `exp_in_secs` from now.
fn claims(role: &str, exp_in_secs: i64) -> Value {
    let now = chrono::Utc::now().timestamp();
    json!({"iss": "orderflow-user", "sub": Uuid::now_v7(), "role": role, "iat": now - 3600,
           "exp": now + exp_in_secs})
}

/// `claims` signed with `alg` and the deployment's own secret.
fn signed(alg: jsonwebtoken::Algorithm, claims: &Value) -> anyhow::Result<String> {
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::new(alg),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )?)
}

#[tokio::test]
async fn another_users_order_and_payment_are_not_found() -> anyhow::Result<()> {
    let s = Stack::new().await?;
    let (alice, alice_token) = s.customer("alice@security.test").await?;
    let (_, mallory) = s.customer("mallory@security.test").await?;
    let placed = s.place_order(&alice_token, "alice-1").await?;
    assert_eq!(placed.status, StatusCode::ACCEPTED, "{}", placed.text);
    let order = placed.body["id"].as_str().expect("an order id").to_owned();

    let url = format!("{}/api/v1/orders/{order}", s.order);
    let mine = s.call(Method::GET, &url, Some(&alice_token), None).await?;
    assert_eq!(mine.status, StatusCode::OK, "{}", mine.text);
    let theirs = s.call(Method::GET, &url, Some(&mallory), None).await?;
    theirs.problem(StatusCode::NOT_FOUND, "another user's order");
    // Exactly what a missing order answers, so ids cannot be probed.
    let missing = s
        .call(
            Method::GET,
            &format!("{}/api/v1/orders/{}", s.order, Uuid::now_v7()),
            Some(&mallory),
            None,
        )
        .await?;
    assert_eq!(missing.body["title"], theirs.body["title"]);
    let cancel = s
        .call(Method::POST, &format!("{url}/cancel"), Some(&mallory), None)
        .await?;
    cancel.problem(StatusCode::NOT_FOUND, "cancelling another user's order");
    let list = s
        .call(
            Method::GET,
            &format!("{}/api/v1/orders", s.order),
            Some(&mallory),
            None,
        )
        .await?;
    assert_eq!(list.body["items"], json!([]), "{}", list.text);
    // A replayed Idempotency-Key of another user is that user's own new order, not Alice's.
    let same_key = s.place_order(&mallory, "alice-1").await?;
    assert_eq!(same_key.status, StatusCode::ACCEPTED, "{}", same_key.text);
    assert_ne!(same_key.body["id"].as_str(), Some(order.as_str()));

    // A payment of Alice's.
    let payment = Uuid::now_v7();
    sqlx::query(
        "insert into payments (id, idempotency_key, workflow_id, order_id, user_id, amount_minor,
                               currency, payment_method, status)
         values ($1, 'k', $2, $3, $4, 1250, 'EUR', 'pm_card_visa', 'pending')",
    )
    .bind(payment)
    .bind(Uuid::now_v7())
    .bind(order.parse::<Uuid>()?)
    .bind(alice)
    .execute(s.pool("payment"))
    .await?;
    let url = format!("{}/api/v1/payments/{payment}", s.payment);
    let own = s.call(Method::GET, &url, Some(&alice_token), None).await?;
    assert_eq!(own.status, StatusCode::OK, "{}", own.text);
    s.call(Method::GET, &url, Some(&mallory), None)
        .await?
        .problem(StatusCode::NOT_FOUND, "another user's payment");
    Ok(())
}

#[tokio::test]
async fn forged_expired_none_and_other_algorithm_tokens_are_refused_everywhere()
-> anyhow::Result<()> {
    let s = Stack::new().await?;
    let keys = JwtKeys::new(SECRET);
    // Past the 5 s of leeway.
    let expired = signed(jsonwebtoken::Algorithm::HS256, &claims("admin", -60))?;
    let forged = JwtKeys::new("another-secret-another-secret-another-secret").issue(
        Uuid::now_v7(),
        Role::Admin,
        Duration::from_secs(600),
    )?;
    let none = token(
        json!({"alg": "none", "typ": "JWT"}),
        claims("admin", 600),
        b"",
    );
    let none_upper = token(
        json!({"alg": "NONE", "typ": "JWT"}),
        claims("admin", 600),
        b"",
    );
    let hs512 = signed(jsonwebtoken::Algorithm::HS512, &claims("admin", 600))?;
    // RS256 in the header with an HMAC made with the shared secret: the key-confusion attack.
    let valid = keys.issue(Uuid::now_v7(), Role::Admin, Duration::from_secs(600))?;
    let (_, rest) = valid.split_once('.').expect("a JWT");
    let rs256 = format!(
        "{}.{rest}",
        URL_SAFE_NO_PAD.encode(json!({"alg": "RS256", "typ": "JWT"}).to_string())
    );
    // The claims of a valid token swapped for an admin's, the signature kept.
    let (customer_id, customer) = s.customer("eve@security.test").await?;
    let mut parts: Vec<&str> = customer.split('.').collect();
    let mut admin_claims = claims("admin", 600);
    admin_claims["sub"] = json!(customer_id);
    let tampered_claims = URL_SAFE_NO_PAD.encode(admin_claims.to_string());
    parts[1] = &tampered_claims;
    let tampered = parts.join(".");

    let protected = [
        format!("{}/api/v1/users/me", s.user),
        format!("{}/api/v1/orders", s.order),
        format!("{}/api/v1/products/sku-1/stock", s.inventory),
        format!("{}/api/v1/payments", s.payment),
        format!("{}/api/v1/notifications", s.notification),
        format!("{}/api/v1/contacts/me", s.notification),
    ];
    let bad = [
        ("expired", expired.as_str()),
        ("signed with another secret", forged.as_str()),
        ("alg none", none.as_str()),
        ("alg NONE", none_upper.as_str()),
        ("HS512", hs512.as_str()),
        ("RS256 header", rs256.as_str()),
        ("claims tampered", tampered.as_str()),
        ("not a JWT", "not-a-token"),
    ];
    for url in &protected {
        for (what, t) in bad {
            let r = s.call(Method::GET, url, Some(t), None).await?;
            r.problem(StatusCode::UNAUTHORIZED, &format!("{what} at {url}"));
            assert_eq!(
                r.headers
                    .get(header::WWW_AUTHENTICATE)
                    .map(|v| v.as_bytes()),
                Some(&b"Bearer"[..]),
                "{what} at {url}"
            );
        }
        s.call(Method::GET, url, None, None)
            .await?
            .problem(StatusCode::UNAUTHORIZED, &format!("no token at {url}"));
        // A valid token gets past authentication (`/users/me` of an admin who has no account
        // is a 404).
        let ok = s.call(Method::GET, url, Some(&valid), None).await?;
        assert!(
            ok.status.is_success() || ok.status == StatusCode::NOT_FOUND,
            "a valid token at {url}: {}",
            ok.text
        );
    }
    Ok(())
}

#[tokio::test]
async fn admin_endpoints_answer_403_to_a_customer() -> anyhow::Result<()> {
    let s = Stack::new().await?;
    let (me, customer) = s.customer("carol@security.test").await?;
    let admin_only = [
        (
            Method::POST,
            format!("{}/api/v1/products", s.inventory),
            Some(
                json!({"id": "sku-9", "name": "x", "price": {"amount_minor": 1, "currency": "EUR"}, "on_hand": 1}),
            ),
        ),
        (
            Method::PATCH,
            format!("{}/api/v1/products/sku-1", s.inventory),
            Some(json!({"on_hand": 0})),
        ),
        (
            Method::GET,
            format!("{}/api/v1/products/sku-1/stock", s.inventory),
            None,
        ),
        (
            Method::GET,
            format!(
                "{}/api/v1/reservations?workflow_id={}",
                s.inventory,
                Uuid::now_v7()
            ),
            None,
        ),
        (Method::GET, format!("{}/api/v1/payments", s.payment), None),
        (
            Method::GET,
            format!("{}/api/v1/notifications", s.notification),
            None,
        ),
        (
            Method::GET,
            format!("{}/api/v1/notifications/{}", s.notification, Uuid::now_v7()),
            None,
        ),
        (
            Method::GET,
            format!("{}/api/v1/outbox", s.notification),
            None,
        ),
        (Method::GET, format!("{}/api/v1/users/{me}", s.user), None),
        (
            Method::PUT,
            format!("{}/api/v1/users/{me}/role", s.user),
            Some(json!({"role": "admin"})),
        ),
    ];
    for (method, url, body) in admin_only {
        s.call(method.clone(), &url, Some(&customer), body)
            .await?
            .problem(
                StatusCode::FORBIDDEN,
                &format!("{method} {url} as a customer"),
            );
    }
    // The customer is still a customer, and sku-1 still has its stock.
    let who = s
        .call(
            Method::GET,
            &format!("{}/api/v1/users/me", s.user),
            Some(&customer),
            None,
        )
        .await?;
    assert_eq!(who.body["role"], "customer");
    let product = s
        .call(
            Method::GET,
            &format!("{}/api/v1/products/sku-1", s.inventory),
            None,
            None,
        )
        .await?;
    assert_eq!(product.body["available"], 100);
    Ok(())
}

#[tokio::test]
async fn the_admin_ui_needs_a_session_and_its_csrf_token() -> anyhow::Result<()> {
    let s = Stack::new().await?;
    let id = Uuid::now_v7();
    for path in [
        "/admin/workflows",
        "/admin/stuck",
        "/admin/audit",
        &format!("/admin/workflows/{id}"),
    ] {
        let r = s
            .call(Method::GET, &format!("{}{path}", s.engine), None, None)
            .await?;
        assert!(
            r.status.is_redirection(),
            "{path} without a session: {}",
            r.status
        );
        let to = r.headers[header::LOCATION].to_str()?;
        assert!(to.starts_with("/admin/login"), "{path} goes to {to}");
    }
    // An action without a session goes to the login page and does nothing.
    let action = s
        .send(
            s.http
                .post(format!("{}/admin/workflows/{id}/cancel", s.engine))
                .form(&[("reason", "no session")]),
        )
        .await?;
    assert!(action.status.is_redirection(), "{}", action.status);
    // A login form without its CSRF cookie (a cross-site post) is refused.
    let login = s
        .send(s.http.post(format!("{}/admin/login", s.engine)).form(&[
            ("csrf", "guessed"),
            ("username", "operator"),
            ("password", ADMIN_UI_PASSWORD),
        ]))
        .await?;
    login.problem(StatusCode::FORBIDDEN, "admin login without its CSRF cookie");
    assert!(login.headers.get(header::SET_COOKIE).is_none());
    // A matching CSRF pair does not let a page of another site post: the browser's Origin and
    // Sec-Fetch-Site say where the form comes from. Without them the same post reaches the
    // password check (401: wrong password).
    let post = |extra: Option<(&'static str, &'static str)>| {
        let mut req = s
            .http
            .post(format!("{}/admin/login", s.engine))
            .header(header::COOKIE, "orderflow_admin_login=pair")
            .form(&[
                ("csrf", "pair"),
                ("username", "operator"),
                ("password", "wrong"),
            ]);
        if let Some((k, v)) = extra {
            req = req.header(k, v);
        }
        s.send(req)
    };
    for (name, value, field) in [
        ("origin", "https://evil.example", "Origin"),
        ("origin", "null", "Origin"),
        ("sec-fetch-site", "cross-site", "Sec-Fetch-Site"),
        ("sec-fetch-site", "same-site", "Sec-Fetch-Site"),
    ] {
        let r = post(Some((name, value))).await?;
        r.problem(StatusCode::FORBIDDEN, &format!("{name}: {value}"));
        assert_eq!(r.body["field"], field, "{}", r.text);
    }
    let same = post(Some(("sec-fetch-site", "same-origin"))).await?;
    assert_eq!(same.status, StatusCode::UNAUTHORIZED, "{}", same.text);
    let plain = post(None).await?;
    assert_eq!(plain.status, StatusCode::UNAUTHORIZED, "{}", plain.text);
    let (n,): (i64,) = sqlx::query_as("select count(*) from admin_sessions")
        .fetch_one(&s.env.pool)
        .await?;
    assert_eq!(n, 0, "no session was opened");
    Ok(())
}

/// Strings that break out of a quoted SQL literal, an identifier or a LIKE pattern.
const INJECTIONS: [&str; 8] = [
    "' or '1'='1",
    "'; drop table workflows; --",
    "\" or 1=1 --",
    "1; select pg_sleep(0)",
    "') union select null, null --",
    "%' or 1=1 or '%'='",
    "\\'; delete from products; --",
    "x\u{0}y",
];

#[tokio::test]
async fn sql_injection_in_every_filter_is_refused_or_matches_nothing() -> anyhow::Result<()> {
    let s = Stack::new().await?;
    let (_, customer) = s.customer("dave@security.test").await?;
    let placed = s.place_order(&customer, "dave-1").await?;
    assert_eq!(placed.status, StatusCode::ACCEPTED, "{}", placed.text);
    let admin = s.admin_token();
    let operator = s.operator_token();
    let ui = AdminUi::login(&s).await?;
    // The order's saga was started (as the order service, with its token): once its first task
    // is published, the committer deletes the outbox row. Wait for that, so the tables hold
    // still for everything but an injection.
    orderflow_testkit::eventually(
        Duration::from_secs(30),
        "the first task published",
        || async {
            let (n,): (i64,) = sqlx::query_as("select count(*) from outbox")
                .fetch_one(&s.env.pool)
                .await?;
            Ok((n == 0).then_some(()))
        },
    )
    .await?;
    let before = s.inventory_of_tables().await?;

    // (service, path, parameter, token, whether a free-text match: 200 with nothing found)
    let filters: Vec<(String, &str, Option<&str>, bool)> = vec![
        (
            format!("{}/api/v1/workflows", s.engine),
            "status",
            Some(&operator),
            false,
        ),
        (
            format!("{}/api/v1/workflows", s.engine),
            "type",
            Some(&operator),
            true,
        ),
        (
            format!("{}/api/v1/workflows", s.engine),
            "business_key",
            Some(&operator),
            true,
        ),
        (
            format!("{}/api/v1/workflows", s.engine),
            "created_after",
            Some(&operator),
            false,
        ),
        (
            format!("{}/api/v1/workflows", s.engine),
            "created_before",
            Some(&operator),
            false,
        ),
        (
            format!("{}/api/v1/workflows", s.engine),
            "cursor",
            Some(&operator),
            false,
        ),
        (
            format!("{}/api/v1/workflows", s.engine),
            "limit",
            Some(&operator),
            false,
        ),
        (
            format!("{}/api/v1/orders", s.order),
            "cursor",
            Some(&customer),
            false,
        ),
        (
            format!("{}/api/v1/orders", s.order),
            "limit",
            Some(&customer),
            false,
        ),
        (
            format!("{}/api/v1/products", s.inventory),
            "ids",
            None,
            false,
        ),
        (
            format!("{}/api/v1/products", s.inventory),
            "cursor",
            None,
            false,
        ),
        (
            format!("{}/api/v1/products", s.inventory),
            "limit",
            None,
            false,
        ),
        (
            format!("{}/api/v1/reservations", s.inventory),
            "workflow_id",
            Some(&admin),
            false,
        ),
        (
            format!("{}/api/v1/payments", s.payment),
            "status",
            Some(&admin),
            false,
        ),
        (
            format!("{}/api/v1/payments", s.payment),
            "order_id",
            Some(&admin),
            false,
        ),
        (
            format!("{}/api/v1/payments", s.payment),
            "cursor",
            Some(&admin),
            false,
        ),
        (
            format!("{}/api/v1/notifications", s.notification),
            "status",
            Some(&admin),
            false,
        ),
        (
            format!("{}/api/v1/notifications", s.notification),
            "channel",
            Some(&admin),
            false,
        ),
        (
            format!("{}/api/v1/notifications", s.notification),
            "recipient",
            Some(&admin),
            true,
        ),
        (
            format!("{}/api/v1/notifications", s.notification),
            "workflow_id",
            Some(&admin),
            false,
        ),
        (
            format!("{}/api/v1/outbox", s.notification),
            "cursor",
            Some(&admin),
            false,
        ),
    ];
    let mut checked = 0;
    for (url, param, token, free_text) in &filters {
        for attack in INJECTIONS {
            let mut req = s.http.get(url).query(&[(*param, attack)]);
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            let r = s.send(req).await?;
            let what = format!("{url}?{param}={attack:?}");
            if *free_text && !attack.contains('\u{0}') {
                assert_eq!(r.status, StatusCode::OK, "{what}: {}", r.text);
                assert_eq!(r.body["items"], json!([]), "{what} matched something");
            } else {
                r.refused(&what);
            }
            checked += 1;
        }
    }
    // Path parameters too.
    for attack in INJECTIONS {
        let enc = urlencode(attack);
        for url in [
            format!("{}/api/v1/workflows/{enc}", s.engine),
            format!("{}/api/v1/products/{enc}", s.inventory),
            format!("{}/api/v1/orders/{enc}", s.order),
        ] {
            let token = if url.starts_with(&s.order) {
                Some(customer.as_str())
            } else if url.starts_with(&s.engine) {
                Some(operator.as_str())
            } else {
                None
            };
            s.call(Method::GET, &url, token, None).await?.refused(&url);
            checked += 1;
        }
    }
    // The admin UI's list and stuck-page filters, with a logged-in operator.
    let pages: [(&str, &[&str]); 2] = [
        (
            "/admin/workflows",
            &[
                "status",
                "type",
                "business_key",
                "id",
                "created_after",
                "created_before",
                "cursor",
            ],
        ),
        (
            "/admin/stuck",
            &[
                "kind",
                "activity",
                "type",
                "created_after",
                "created_before",
                "cursor",
            ],
        ),
    ];
    for (page, params) in pages {
        for param in params {
            for attack in INJECTIONS {
                let r = s
                    .send(
                        s.http
                            .get(format!("{}{page}", s.engine))
                            .header(header::COOKIE, &ui.cookie)
                            .query(&[(param, attack)]),
                    )
                    .await?;
                assert!(
                    r.status == StatusCode::OK || r.status.is_client_error(),
                    "{page}?{param}={attack:?}: {} {}",
                    r.status,
                    r.text
                );
                checked += 1;
            }
        }
    }
    let after = s.inventory_of_tables().await?;
    assert_eq!(before, after, "a table was dropped, emptied or filled");
    println!(
        "{checked} injection attempts refused or matched nothing; {} tables intact",
        after.len()
    );
    Ok(())
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A logged-in operator of the admin UI.
struct AdminUi {
    cookie: String,
}

impl AdminUi {
    async fn login(s: &Stack) -> anyhow::Result<Self> {
        let page = s
            .http
            .get(format!("{}/admin/login", s.engine))
            .send()
            .await?;
        let login_cookie = page
            .headers()
            .get_all(header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with("orderflow_admin_login="))
            .and_then(|v| v.split(';').next())
            .map(str::to_owned)
            .ok_or_else(|| anyhow::anyhow!("no login cookie"))?;
        let csrf = login_cookie
            .split_once('=')
            .map(|(_, v)| v.to_owned())
            .unwrap_or_default();
        let r = s
            .http
            .post(format!("{}/admin/login", s.engine))
            .header(header::COOKIE, &login_cookie)
            .form(&[
                ("csrf", csrf.as_str()),
                ("username", "operator"),
                ("password", ADMIN_UI_PASSWORD),
            ])
            .send()
            .await?;
        let cookie = r
            .headers()
            .get_all(header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with("orderflow_admin="))
            .and_then(|v| v.split(';').next())
            .map(str::to_owned)
            .ok_or_else(|| anyhow::anyhow!("login failed: {}", r.status()))?;
        Ok(Self { cookie })
    }
}

#[tokio::test]
async fn oversized_and_deeply_nested_bodies_get_problem_json() -> anyhow::Result<()> {
    let s = Stack::new().await?;
    let (_, customer) = s.customer("frank@security.test").await?;
    let admin = s.admin_token();
    let operator = s.operator_token();
    // (url, token, the API's body limit)
    let posts: Vec<(String, Method, Option<&str>, usize)> = vec![
        (
            format!("{}/api/v1/users", s.user),
            Method::POST,
            None,
            64 << 10,
        ),
        (
            format!("{}/api/v1/auth/login", s.user),
            Method::POST,
            None,
            64 << 10,
        ),
        (
            format!("{}/api/v1/users/me", s.user),
            Method::PATCH,
            Some(&customer),
            64 << 10,
        ),
        (
            format!("{}/api/v1/orders", s.order),
            Method::POST,
            Some(&customer),
            64 << 10,
        ),
        (
            format!("{}/api/v1/products", s.inventory),
            Method::POST,
            Some(&admin),
            64 << 10,
        ),
        (
            format!("{}/api/v1/products/sku-1", s.inventory),
            Method::PATCH,
            Some(&admin),
            64 << 10,
        ),
        (
            format!("{}/api/v1/contacts/me", s.notification),
            Method::PUT,
            Some(&customer),
            64 << 10,
        ),
        (
            format!("{}/api/v1/webhooks/stripe", s.payment),
            Method::POST,
            None,
            64 << 10,
        ),
        (
            format!("{}/api/v1/workflows", s.engine),
            Method::POST,
            Some(&operator),
            2 << 20,
        ),
    ];
    for (url, method, token, limit) in &posts {
        // Over the limit: a long string in an otherwise valid object.
        let big = format!("{{\"name\": \"{}\"}}", "x".repeat(limit + 1024));
        let mut req = s
            .http
            .request(method.clone(), url)
            .header(header::CONTENT_TYPE, "application/json")
            .header("Idempotency-Key", "big")
            .body(big);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        s.send(req).await?.problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("oversized {method} {url}"),
        );

        // Deep nesting within the limit: serde_json's recursion limit refuses it.
        for deep in [
            format!("{}{}", "[".repeat(limit / 4), "]".repeat(limit / 4)),
            format!(
                "{{\"input\": {}1{}}}",
                "{\"a\":".repeat(limit / 16),
                "}".repeat(limit / 16)
            ),
        ] {
            let mut req = s
                .http
                .request(method.clone(), url)
                .header(header::CONTENT_TYPE, "application/json")
                .header("Idempotency-Key", "deep")
                .body(deep);
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            s.send(req)
                .await?
                .refused(&format!("deep JSON {method} {url}"));
        }
    }
    // Every service still answers.
    for base in [
        &s.user,
        &s.order,
        &s.inventory,
        &s.payment,
        &s.notification,
        &s.engine,
    ] {
        let r = s
            .call(Method::GET, &format!("{base}/health"), None, None)
            .await?;
        assert_eq!(r.status, StatusCode::OK, "{base} after the bodies");
    }
    Ok(())
}

#[tokio::test]
async fn login_and_order_creation_are_rate_limited_with_retry_after() -> anyhow::Result<()> {
    let s = Stack::new().await?;
    let (_, other) = s.customer("heidi@security.test").await?;
    let (_, token) = s.customer("grace@security.test").await?;
    // Two logins so far; the rest of the window's logins, then one too many.
    let login_url = format!("{}/api/v1/auth/login", s.user);
    let login = |password: &'static str| {
        s.call(
            Method::POST,
            &login_url,
            None,
            Some(json!({"email": "grace@security.test", "password": password})),
        )
    };
    for i in 2..LOGIN_LIMIT {
        let r = login(if i % 2 == 0 {
            "wrong password"
        } else {
            "correct horse battery"
        })
        .await?;
        assert!(
            r.status == StatusCode::OK || r.status == StatusCode::UNAUTHORIZED,
            "login {i}: {}",
            r.text
        );
    }
    let limited = login("correct horse battery").await?;
    limited.problem(StatusCode::TOO_MANY_REQUESTS, "a login over the limit");
    let retry: u64 = limited.headers[header::RETRY_AFTER].to_str()?.parse()?;
    assert!(
        (1..=WINDOW.as_secs()).contains(&retry),
        "Retry-After {retry}"
    );

    for i in 0..ORDER_LIMIT {
        let r = s.place_order(&token, &format!("grace-{i}")).await?;
        assert_eq!(r.status, StatusCode::ACCEPTED, "order {i}: {}", r.text);
    }
    let limited = s.place_order(&token, "grace-over").await?;
    limited.problem(StatusCode::TOO_MANY_REQUESTS, "an order over the limit");
    let retry: u64 = limited.headers[header::RETRY_AFTER].to_str()?.parse()?;
    assert!(
        (1..=WINDOW.as_secs()).contains(&retry),
        "Retry-After {retry}"
    );
    // The limit is per user: another customer still orders.
    let r = s.place_order(&other, "heidi-1").await?;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    // Nothing was stored for the refused order.
    let (n,): (i64,) =
        sqlx::query_as("select count(*) from orders where idempotency_key = 'grace-over'")
            .fetch_one(s.pool("order"))
            .await?;
    assert_eq!(n, 0);
    Ok(())
}

/// `orderflow up` on an address the network reaches, without ORDERFLOW_ADMIN_PASSWORD, refuses
/// to start (it would guard the admin UI with the published development password), naming the
/// variable; `engine` there without one starts with no admin login at all (checked in
/// `src/roles.rs`).
#[tokio::test]
async fn up_refuses_the_development_password_off_loopback() -> anyhow::Result<()> {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_orderflow"))
        .args(["up", "--bind", "0.0.0.0:0"])
        .env_remove("ORDERFLOW_ADMIN_PASSWORD")
        .env_remove("ORDERFLOW_BIND")
        // Nothing may be reached before the refusal: these point nowhere.
        .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
        .env("AMQP_URL", "amqp://nobody:x@127.0.0.1:1/%2f")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out).await??;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "up started: {stderr}");
    assert!(
        stderr.contains("ORDERFLOW_ADMIN_PASSWORD") && stderr.contains("refusing"),
        "{stderr}"
    );
    Ok(())
}

/// `scripts/advisories.sh` (part of the test command) on a copy of the RustSec snapshot with one
/// advisory planted against a crate in `Cargo.lock`: the check must fail and name it. The real
/// snapshot passes (its one relevant advisory is ignored in deny.toml with a reason) and the
/// snapshot's date is printed.
#[tokio::test]
async fn a_known_advisory_fails_the_dependency_check() -> anyhow::Result<()> {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let snapshot = repo.join("../shared/rustsec-advisory-db");
    let run = |db: &std::path::Path| {
        let mut cmd = tokio::process::Command::new(repo.join("scripts/advisories.sh"));
        cmd.env("ORDERFLOW_ADVISORY_DB", db).kill_on_drop(true);
        cmd.output()
    };
    let clean = run(&snapshot).await?;
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&clean.stdout),
        String::from_utf8_lossy(&clean.stderr)
    );
    assert!(clean.status.success(), "the real snapshot: {out}");
    assert!(out.contains("snapshot of 20"), "the date is printed: {out}");

    let planted = std::env::temp_dir().join(format!("orderflow-advisory-{}", Uuid::new_v4()));
    let copied = tokio::process::Command::new("cp")
        .arg("-R")
        .arg(&snapshot)
        .arg(&planted)
        .status()
        .await?;
    assert!(copied.success());
    // `hex` 0.4.3 is in Cargo.lock (the services sign and compare with it).
    std::fs::create_dir_all(planted.join("crates/hex"))?;
    std::fs::write(
        planted.join("crates/hex/RUSTSEC-2099-0001.md"),
        "```toml\n[advisory]\nid = \"RUSTSEC-2099-0001\"\npackage = \"hex\"\n\
         date = \"2026-01-01\"\n\n[versions]\npatched = []\n```\n\n\
         # Planted by tests/security.rs\n\nThe check must fail on this.\n",
    )?;
    let failed = run(&planted).await?;
    std::fs::remove_dir_all(&planted).ok();
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&failed.stdout),
        String::from_utf8_lossy(&failed.stderr)
    );
    assert!(!failed.status.success(), "a planted advisory passed: {out}");
    assert!(out.contains("RUSTSEC-2099-0001"), "{out}");
    Ok(())
}
