//! The kit on the real thing: tokens forged every way a client can forge them, the extractors'
//! 401/403 problems, field-naming JSON errors, database creation and readiness probes against the
//! local Postgres, Redis and RabbitMQ.

use std::time::Duration;

use axum::{
    Router,
    body::{Body, Bytes},
    extract::FromRef,
    http::{Request, StatusCode, header},
    routing::get,
};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use orderflow_service_kit::{
    ApiError,
    auth::{AdminUser, AuthUser, Claims, ISSUER, JwtKeys, Role, TokenError},
    db,
    http::{self, Readiness},
    kv,
    problem::parse_json,
};
use serde::Deserialize;
use tower::ServiceExt as _;
use uuid::Uuid;

const SECRET: &str = "kit-test-secret-kit-test-secret-0123456789";

fn b64(v: &serde_json::Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

fn claims(role: Role) -> Claims {
    let now = chrono::Utc::now().timestamp();
    Claims {
        iss: ISSUER.to_owned(),
        sub: Uuid::now_v7(),
        role,
        iat: now,
        exp: now + 600,
    }
}

#[test]
fn a_token_signed_with_the_key_verifies() {
    let keys = JwtKeys::new(SECRET);
    let user = Uuid::now_v7();
    let token = keys
        .issue(user, Role::Admin, Duration::from_secs(60))
        .unwrap();
    let got = keys.verify(&token).unwrap();
    assert_eq!(got.sub, user);
    assert_eq!(got.role, Role::Admin);
}

#[test]
fn alg_none_is_rejected() {
    let keys = JwtKeys::new(SECRET);
    let body = serde_json::to_value(claims(Role::Admin)).unwrap();
    for alg in ["none", "None", "NONE"] {
        let header = serde_json::json!({ "alg": alg, "typ": "JWT" });
        // Unsigned: header.payload. with an empty signature, and with the HS256 one reused.
        let unsigned = format!("{}.{}.", b64(&header), b64(&body));
        assert!(keys.verify(&unsigned).is_err(), "alg {alg} accepted");
    }
}

#[test]
fn another_algorithm_is_rejected_even_with_the_right_secret() {
    let keys = JwtKeys::new(SECRET);
    let c = claims(Role::Customer);
    for alg in [
        jsonwebtoken::Algorithm::HS384,
        jsonwebtoken::Algorithm::HS512,
    ] {
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(alg),
            &c,
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        assert!(
            matches!(keys.verify(&token), Err(TokenError::Invalid(_))),
            "{alg:?} accepted"
        );
    }
    // The HS256 signature pasted under a header that claims RS256 (the key-confusion attack).
    let good = keys.sign(&c).unwrap();
    let sig = good.rsplit('.').next().unwrap();
    let header = serde_json::json!({ "alg": "RS256", "typ": "JWT" });
    let confused = format!(
        "{}.{}.{sig}",
        b64(&header),
        b64(&serde_json::to_value(&c).unwrap())
    );
    assert!(keys.verify(&confused).is_err());
}

#[test]
fn an_expired_token_is_rejected() {
    let keys = JwtKeys::new(SECRET);
    let mut c = claims(Role::Customer);
    c.iat -= 3600;
    c.exp = chrono::Utc::now().timestamp() - 60;
    let token = keys.sign(&c).unwrap();
    assert!(matches!(keys.verify(&token), Err(TokenError::Expired)));
}

#[test]
fn a_token_signed_with_another_key_is_rejected() {
    let token = JwtKeys::new("another-secret-another-secret-0123456789")
        .issue(Uuid::now_v7(), Role::Admin, Duration::from_secs(60))
        .unwrap();
    assert!(matches!(
        JwtKeys::new(SECRET).verify(&token),
        Err(TokenError::Invalid(_))
    ));
}

#[test]
fn issued_tokens_name_the_user_service_as_issuer() {
    let keys = JwtKeys::new(SECRET);
    let token = keys
        .issue(Uuid::now_v7(), Role::Customer, Duration::from_secs(60))
        .unwrap();
    // Kong's jwt plugin looks the verifying key up by this claim (deploy/kong/kong.yaml).
    let payload = token.split('.').nth(1).unwrap();
    let c: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    assert_eq!(c["iss"], "orderflow-user");
    assert_eq!(keys.verify(&token).unwrap().iss, ISSUER);
}

#[test]
fn a_token_without_the_issuer_or_with_another_is_rejected() {
    let keys = JwtKeys::new(SECRET);
    let secret = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
    let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    let mut without = serde_json::to_value(claims(Role::Customer)).unwrap();
    without.as_object_mut().unwrap().remove("iss");
    let without = jsonwebtoken::encode(&header, &without, &secret).unwrap();
    assert!(matches!(keys.verify(&without), Err(TokenError::Invalid(_))));
    let other = Claims {
        iss: "someone-else".into(),
        ..claims(Role::Customer)
    };
    let other = keys.sign(&other).unwrap();
    assert!(matches!(keys.verify(&other), Err(TokenError::Invalid(_))));
}

#[test]
fn a_tampered_payload_is_rejected() {
    let keys = JwtKeys::new(SECRET);
    let token = keys.sign(&claims(Role::Customer)).unwrap();
    let parts: Vec<&str> = token.split('.').collect();
    let mut c: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    c["role"] = "admin".into();
    let forged = format!("{}.{}.{}", parts[0], b64(&c), parts[2]);
    assert!(keys.verify(&forged).is_err());
}

#[derive(Clone)]
struct State {
    keys: JwtKeys,
}

impl FromRef<State> for JwtKeys {
    fn from_ref(s: &State) -> Self {
        s.keys.clone()
    }
}

fn protected() -> Router {
    let api = Router::new()
        .route(
            "/me",
            get(|AuthUser(c): AuthUser| async move { c.sub.to_string() }),
        )
        .route("/admin", get(|_: AdminUser| async { "hello admin" }))
        .with_state(State {
            keys: JwtKeys::new(SECRET),
        });
    http::app("kit-test", api, Readiness::new())
}

async fn call(router: &Router, path: &str, token: Option<&str>) -> (StatusCode, String, String) {
    let mut req = Request::get(path);
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let res = router
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = res.status();
    let ctype = res
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = axum::body::to_bytes(res.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, ctype, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test]
async fn extractors_answer_401_and_403_as_problems() {
    let router = protected();
    let keys = JwtKeys::new(SECRET);
    let customer = keys.sign(&claims(Role::Customer)).unwrap();
    let admin = keys.sign(&claims(Role::Admin)).unwrap();

    let (s, ct, _) = call(&router, "/api/v1/me", None).await;
    assert_eq!(
        (s, ct.as_str()),
        (StatusCode::UNAUTHORIZED, "application/problem+json")
    );
    let (s, _, _) = call(&router, "/api/v1/me", Some("not.a.token")).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _, body) = call(&router, "/api/v1/me", Some(&customer)).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body, keys.verify(&customer).unwrap().sub.to_string());

    let (s, ct, _) = call(&router, "/api/v1/admin", Some(&customer)).await;
    assert_eq!(
        (s, ct.as_str()),
        (StatusCode::FORBIDDEN, "application/problem+json")
    );
    let (s, _, _) = call(&router, "/api/v1/admin", None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _, _) = call(&router, "/api/v1/admin", Some(&admin)).await;
    assert_eq!(s, StatusCode::OK);

    let (s, ct, _) = call(&router, "/api/v1/nowhere", None).await;
    assert_eq!(
        (s, ct.as_str()),
        (StatusCode::NOT_FOUND, "application/problem+json")
    );
    let (_, _, metrics) = call(&router, "/metrics", None).await;
    assert!(
        metrics.contains(r#"service="kit-test""#) && metrics.contains(r#"route="/api/v1/admin""#),
        "{metrics}"
    );
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // read only through Debug; the test is about what fails to parse
struct Order {
    items: Vec<Item>,
    note: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Item {
    product_id: String,
    quantity: u32,
}

#[tokio::test]
async fn request_durations_are_counted_by_matched_route_method_and_status() {
    let app = http::app(
        "kit-metrics",
        Router::new().route("/things/{id}", get(|| async { "a thing" })),
        Readiness::new(),
    );
    for id in ["1", "2", "3"] {
        let (status, _, _) = call(&app, &format!("/api/v1/things/{id}"), None).await;
        assert_eq!(status, StatusCode::OK);
    }
    let (status, _, _) = call(&app, "/api/v1/nothing-here", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, text) = call(&app, "/metrics", None).await;
    assert_eq!(status, StatusCode::OK);
    let value = |series: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
            .to_owned()
    };
    // The route the request matched, not its path: one series for every id.
    assert_eq!(
        value(
            r#"http_request_duration_seconds_count{method="GET",route="/api/v1/things/{id}",service="kit-metrics",status="200"}"#
        ),
        "3"
    );
    assert_eq!(
        value(
            r#"http_request_duration_seconds_count{method="GET",route="unmatched",service="kit-metrics",status="404"}"#
        ),
        "1"
    );
    assert!(!text.contains("/api/v1/things/1"));
}

fn field_of(json: &str) -> String {
    match parse_json::<Order>(&Bytes::from(json.to_owned())) {
        Err(ApiError::BadRequest { field, .. }) => field,
        other => panic!("{json}: expected a 400, got {other:?}"),
    }
}

#[test]
fn parse_json_names_the_field() {
    assert_eq!(field_of(""), "body");
    assert_eq!(field_of("{"), "body");
    assert_eq!(field_of("{}"), "items");
    assert_eq!(field_of(r#"{"items":[], "x":1}"#), "x");
    assert_eq!(
        field_of(r#"{"items":[{"product_id":"a","quantity":-1}]}"#),
        "items[0].quantity"
    );
    assert_eq!(
        field_of(r#"{"items":[{"quantity":1}]}"#),
        "items[0].product_id"
    );
    assert_eq!(field_of(r#"{"items":[]}{}"#), "body");
    assert!(parse_json::<Order>(&Bytes::from_static(br#"{"items":[]}"#)).is_ok());
}

#[tokio::test]
async fn connect_and_migrate_creates_the_database_and_ready_reports_each_dependency()
-> anyhow::Result<()> {
    let name = format!("orderflow_kit_test_{}", Uuid::new_v4().simple());
    let url = db::with_database(&orderflow_testkit::pg_server(), &name)?;
    let mut migrator = sqlx::migrate::Migrator::DEFAULT;
    migrator.set_ignore_missing(true);
    let pool = db::connect_and_migrate(&url, &migrator).await?;
    // A second service process starting at the same time finds the database there.
    let again = db::connect_and_migrate(&url, &migrator).await?;
    again.close().await;

    let redis = kv::connect("redis://127.0.0.1:6379").await?;
    let ready = Readiness::new()
        .postgres(pool.clone())
        .redis(redis)
        .queue(orderflow_queue::rabbit::RabbitQueue::new(
            orderflow_testkit::amqp_url(),
            orderflow_queue::Topology::default(),
            std::time::Duration::ZERO,
        ))
        .check("engine", || async { false });
    let router = http::app("kit-ready", Router::new(), ready);
    let (status, _, body) = call(&router, "/ready", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let body: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(
        body,
        serde_json::json!({"database": true, "redis": true, "broker": true, "engine": false})
    );

    let ok = http::app(
        "kit-ready",
        Router::new(),
        Readiness::new().postgres(pool.clone()),
    );
    assert_eq!(call(&ok, "/ready", None).await.0, StatusCode::OK);
    assert_eq!(call(&ok, "/health", None).await.0, StatusCode::OK);
    pool.close().await;
    Ok(())
}
