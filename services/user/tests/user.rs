//! The user service through its router, on a fresh Postgres database and the local Redis, and
//! again on an in-memory SQLite database with no Redis: registration, login, every kind of
//! forged token, refresh rotation, logout, profile changes and roles.

use std::time::Duration;

use axum::{
    Router,
    body::Body,
    http::{Method, Request, StatusCode, header},
};
use orderflow_service_kit::{
    auth::{Claims, JwtKeys, Role},
    db::{self, Db},
    http::{self, Readiness},
    kv,
};
use orderflow_user::{AppState, seed, sessions::Sessions};
use serde_json::{Value, json};
use tower::ServiceExt as _;
use uuid::Uuid;

const SECRET: &str = "user-test-secret-user-test-secret-0123";

/// Where a test's App keeps its users and sessions.
#[derive(Clone, Copy, Debug)]
enum Backend {
    /// A fresh Postgres database and the local Redis, as under `orderflow up`.
    Postgres,
    /// An in-memory SQLite database holding the sessions too, as under `orderflow dev`.
    Sqlite,
}

struct App {
    router: Router,
    db: Db,
}

async fn app(backend: Backend) -> anyhow::Result<App> {
    orderflow_testkit::init_tracing();
    let keys = JwtKeys::new(SECRET);
    let (state, ready) = match backend {
        Backend::Postgres => {
            let tag = Uuid::new_v4().simple().to_string();
            let url = db::with_database(
                &orderflow_testkit::pg_server(),
                &format!("orderflow_user_test_{tag}"),
            )?;
            let db = Db::connect(&url, &orderflow_user::migrations()).await?;
            let redis = kv::connect("redis://127.0.0.1:6379").await?;
            let state = AppState {
                db: db.clone(),
                keys,
                sessions: Sessions::new(redis.clone(), &format!("t{}.", &tag[..12])),
                access_ttl: Duration::from_secs(900),
                refresh_ttl: Duration::from_secs(3600),
            };
            (state, Readiness::new().database(db).redis(redis))
        }
        Backend::Sqlite => {
            let Db::Sqlite(pool) = Db::sqlite(None, &orderflow_user::migrations()).await? else {
                unreachable!("Db::sqlite opens SQLite")
            };
            let state = AppState::embedded(pool, keys, None);
            let ready = Readiness::new().database(state.db.clone());
            (state, ready)
        }
    };
    Ok(App {
        db: state.db.clone(),
        router: http::app("user", orderflow_user::router(state), ready),
    })
}

/// Runs each scenario once per backend: `<scenario>::postgres` and `<scenario>::sqlite`.
macro_rules! on_both_backends {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[tokio::test]
            async fn postgres() -> anyhow::Result<()> {
                super::$scenario(super::app(super::Backend::Postgres).await?).await
            }

            #[tokio::test]
            async fn sqlite() -> anyhow::Result<()> {
                super::$scenario(super::app(super::Backend::Sqlite).await?).await
            }
        }
    )*};
}

on_both_backends!(
    register_login_and_read_me,
    bad_registrations_name_the_field_and_store_nothing,
    forged_expired_and_foreign_tokens_are_rejected,
    refresh_rotates_and_logout_revokes,
    patch_me_changes_the_profile_and_a_new_password_ends_every_session,
    the_seeded_admin_manages_roles_and_customers_cannot,
    repeated_failed_logins_are_throttled,
);

struct Answer {
    status: StatusCode,
    content_type: String,
    body: Value,
}

impl Answer {
    fn problem(&self, status: StatusCode, field: Option<&str>) {
        assert_eq!(self.status, status, "{}", self.body);
        assert_eq!(self.content_type, "application/problem+json");
        assert_eq!(self.body["field"].as_str(), field, "{}", self.body);
    }
}

impl App {
    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        self.raw(method, path, token, body.map(|b| b.to_string()))
            .await
    }

    async fn raw(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<String>,
    ) -> Answer {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = match body {
            Some(b) => req
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(b)),
            None => req.body(Body::empty()),
        }
        .unwrap();
        let res = self.router.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let content_type = res
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let bytes = axum::body::to_bytes(res.into_body(), 1 << 20)
            .await
            .unwrap();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Answer {
            status,
            content_type,
            body,
        }
    }

    async fn register(&self, email: &str, password: &str) -> Answer {
        self.call(
            Method::POST,
            "/api/v1/users",
            None,
            Some(json!({"email": email, "password": password, "name": "Ann"})),
        )
        .await
    }

    async fn count_users(&self) -> anyhow::Result<i64> {
        const COUNT: &str = "select count(*) from users";
        Ok(match &self.db {
            Db::Postgres(p) => sqlx::query_scalar(COUNT).fetch_one(p).await?,
            Db::Sqlite(p) => sqlx::query_scalar(COUNT).fetch_one(p).await?,
        })
    }

    async fn login(&self, email: &str, password: &str) -> Answer {
        self.call(
            Method::POST,
            "/api/v1/auth/login",
            None,
            Some(json!({"email": email, "password": password})),
        )
        .await
    }
}

fn token_of(a: &Answer, field: &str) -> String {
    a.body[field]
        .as_str()
        .unwrap_or_else(|| panic!("{}", a.body))
        .to_owned()
}

async fn register_login_and_read_me(app: App) -> anyhow::Result<()> {
    let created = app.register("Ann@Example.com", "correct horse").await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    assert_eq!(created.body["role"], "customer");
    assert!(created.body.get("password_hash").is_none());

    // The same address in another case is the same account.
    app.register("ann@example.com", "another one")
        .await
        .problem(StatusCode::CONFLICT, None);

    app.login("ann@example.com", "wrong horse")
        .await
        .problem(StatusCode::UNAUTHORIZED, None);
    app.login("nobody@example.com", "correct horse")
        .await
        .problem(StatusCode::UNAUTHORIZED, None);
    let tokens = app.login("ANN@example.com", "correct horse").await;
    assert_eq!(tokens.status, StatusCode::OK, "{}", tokens.body);
    assert_eq!(tokens.body["token_type"], "Bearer");
    let access = token_of(&tokens, "access_token");

    let me = app
        .call(Method::GET, "/api/v1/users/me", Some(&access), None)
        .await;
    assert_eq!(me.status, StatusCode::OK);
    assert_eq!(me.body["id"], created.body["id"]);
    assert_eq!(me.body["email"], "Ann@Example.com");
    let claims = JwtKeys::new(SECRET).verify(&access)?;
    assert_eq!(claims.role, Role::Customer);
    assert!(claims.exp - claims.iat <= 900);
    Ok(())
}

async fn bad_registrations_name_the_field_and_store_nothing(app: App) -> anyhow::Result<()> {
    let post = |body: String| app.raw(Method::POST, "/api/v1/users", None, Some(body));
    post(json!({"email": "not-an-email", "password": "long enough"}).to_string())
        .await
        .problem(StatusCode::BAD_REQUEST, Some("email"));
    post(json!({"email": "a@example.com", "password": "short"}).to_string())
        .await
        .problem(StatusCode::BAD_REQUEST, Some("password"));
    post(json!({"email": "a@example.com"}).to_string())
        .await
        .problem(StatusCode::BAD_REQUEST, Some("password"));
    post(json!({"email": "a@example.com", "password": "long enough", "role": "admin"}).to_string())
        .await
        .problem(StatusCode::BAD_REQUEST, Some("role"));
    post("{\"email\": ".to_owned())
        .await
        .problem(StatusCode::BAD_REQUEST, Some("body"));
    assert_eq!(app.count_users().await?, 0);
    Ok(())
}

async fn forged_expired_and_foreign_tokens_are_rejected(app: App) -> anyhow::Result<()> {
    use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
    let created = app.register("bob@example.com", "correct horse").await;
    let id: Uuid = created.body["id"].as_str().unwrap().parse()?;
    let now = chrono::Utc::now().timestamp();
    let claims = Claims {
        iss: orderflow_service_kit::auth::ISSUER.to_owned(),
        sub: id,
        role: Role::Admin,
        iat: now,
        exp: now + 600,
    };
    let b64 = |v: Value| URL_SAFE_NO_PAD.encode(v.to_string());

    let none = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "typ": "JWT"})),
        b64(serde_json::to_value(&claims)?)
    );
    let hs512 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS512),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )?;
    let expired = JwtKeys::new(SECRET).sign(&Claims {
        iat: now - 7200,
        exp: now - 3600,
        ..claims.clone()
    })?;
    let foreign = JwtKeys::new("some-other-secret-some-other-secret-99").issue(
        id,
        Role::Admin,
        Duration::from_secs(600),
    )?;
    // Kong finds the key by `iss`; the services require it too.
    let other_issuer = JwtKeys::new(SECRET).sign(&Claims {
        iss: "someone-else".into(),
        ..claims.clone()
    })?;
    let mut no_iss = serde_json::to_value(&claims)?;
    no_iss.as_object_mut().unwrap().remove("iss");
    let no_issuer = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &no_iss,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )?;
    for (what, token) in [
        ("alg none", none),
        ("HS512", hs512),
        ("expired", expired),
        ("another issuer", other_issuer),
        ("no issuer", no_issuer),
        ("wrong key", foreign),
        ("garbage", "abc.def.ghi".to_owned()),
    ] {
        let a = app
            .call(Method::GET, "/api/v1/users/me", Some(&token), None)
            .await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{what} token accepted");
        a.problem(StatusCode::UNAUTHORIZED, None);
    }
    app.call(Method::GET, "/api/v1/users/me", None, None)
        .await
        .problem(StatusCode::UNAUTHORIZED, None);
    Ok(())
}

async fn refresh_rotates_and_logout_revokes(app: App) -> anyhow::Result<()> {
    app.register("cy@example.com", "correct horse").await;
    let first = app.login("cy@example.com", "correct horse").await;
    let r1 = token_of(&first, "refresh_token");

    let refresh = |t: &str| {
        app.call(
            Method::POST,
            "/api/v1/auth/refresh",
            None,
            Some(json!({"refresh_token": t})),
        )
    };
    let second = refresh(&r1).await;
    assert_eq!(second.status, StatusCode::OK, "{}", second.body);
    let r2 = token_of(&second, "refresh_token");
    assert_ne!(r1, r2);
    // A spent refresh token is worthless, so a stolen copy cannot outlive the owner's refresh.
    refresh(&r1).await.problem(StatusCode::UNAUTHORIZED, None);
    refresh("not hex")
        .await
        .problem(StatusCode::BAD_REQUEST, Some("refresh_token"));

    let out = app
        .call(
            Method::POST,
            "/api/v1/auth/logout",
            None,
            Some(json!({"refresh_token": r2})),
        )
        .await;
    assert_eq!(out.status, StatusCode::NO_CONTENT);
    refresh(&r2).await.problem(StatusCode::UNAUTHORIZED, None);
    Ok(())
}

async fn patch_me_changes_the_profile_and_a_new_password_ends_every_session(
    app: App,
) -> anyhow::Result<()> {
    app.register("dee@example.com", "correct horse").await;
    let tokens = app.login("dee@example.com", "correct horse").await;
    let access = token_of(&tokens, "access_token");
    let refresh = token_of(&tokens, "refresh_token");

    let renamed = app
        .call(
            Method::PATCH,
            "/api/v1/users/me",
            Some(&access),
            Some(json!({"name": " Dee "})),
        )
        .await;
    assert_eq!(renamed.status, StatusCode::OK);
    assert_eq!(renamed.body["name"], "Dee");

    app.call(
        Method::PATCH,
        "/api/v1/users/me",
        Some(&access),
        Some(json!({"password": "battery staple"})),
    )
    .await
    .problem(StatusCode::BAD_REQUEST, Some("current_password"));
    app.call(
        Method::PATCH,
        "/api/v1/users/me",
        Some(&access),
        Some(json!({"password": "battery staple", "current_password": "wrong"})),
    )
    .await
    .problem(StatusCode::UNPROCESSABLE_ENTITY, Some("current_password"));
    let changed = app
        .call(
            Method::PATCH,
            "/api/v1/users/me",
            Some(&access),
            Some(json!({"password": "battery staple", "current_password": "correct horse"})),
        )
        .await;
    assert_eq!(changed.status, StatusCode::OK, "{}", changed.body);

    app.call(
        Method::POST,
        "/api/v1/auth/refresh",
        None,
        Some(json!({"refresh_token": refresh})),
    )
    .await
    .problem(StatusCode::UNAUTHORIZED, None);
    app.login("dee@example.com", "correct horse")
        .await
        .problem(StatusCode::UNAUTHORIZED, None);
    assert_eq!(
        app.login("dee@example.com", "battery staple").await.status,
        StatusCode::OK
    );
    Ok(())
}

async fn the_seeded_admin_manages_roles_and_customers_cannot(app: App) -> anyhow::Result<()> {
    seed::ensure_admin(&app.db, "root@example.com", "admin password").await?;
    // Seeding again (a restart) changes nothing.
    seed::ensure_admin(&app.db, "root@example.com", "admin password").await?;
    let admin = token_of(
        &app.login("root@example.com", "admin password").await,
        "access_token",
    );
    assert_eq!(JwtKeys::new(SECRET).verify(&admin)?.role, Role::Admin);

    let eve = app.register("eve@example.com", "correct horse").await;
    let eve_id = eve.body["id"].as_str().unwrap().to_owned();
    let eve_token = token_of(
        &app.login("eve@example.com", "correct horse").await,
        "access_token",
    );

    let path = format!("/api/v1/users/{eve_id}/role");
    app.call(
        Method::PUT,
        &path,
        Some(&eve_token),
        Some(json!({"role": "admin"})),
    )
    .await
    .problem(StatusCode::FORBIDDEN, None);
    app.call(
        Method::PUT,
        &path,
        Some(&admin),
        Some(json!({"role": "root"})),
    )
    .await
    .problem(StatusCode::BAD_REQUEST, Some("role"));
    let promoted = app
        .call(
            Method::PUT,
            &path,
            Some(&admin),
            Some(json!({"role": "admin"})),
        )
        .await;
    assert_eq!(promoted.body["role"], "admin");
    app.call(Method::GET, "/api/v1/users/not-a-uuid", Some(&admin), None)
        .await
        .problem(StatusCode::BAD_REQUEST, Some("id"));
    let ready = app.call(Method::GET, "/ready", None, None).await;
    assert_eq!(ready.status, StatusCode::OK);
    Ok(())
}

async fn repeated_failed_logins_are_throttled(app: App) -> anyhow::Result<()> {
    app.register("fay@example.com", "correct horse").await;
    for _ in 0..orderflow_user::sessions::MAX_FAILURES {
        app.login("fay@example.com", "guess")
            .await
            .problem(StatusCode::UNAUTHORIZED, None);
    }
    // Even the right password waits now: the attacker cannot tell when they guessed it.
    let locked = app.login("FAY@example.com", "correct horse").await;
    locked.problem(StatusCode::TOO_MANY_REQUESTS, None);
    Ok(())
}

/// The service as `orderflow dev` starts it: a `sqlite://` URL and sessions in the database, with
/// a Redis URL where nothing listens, so any use of Redis would fail. A restart keeps accounts
/// and sessions.
#[tokio::test]
async fn a_sqlite_file_needs_no_redis_and_survives_a_restart() -> anyhow::Result<()> {
    orderflow_testkit::init_tracing();
    let file = std::env::temp_dir().join(format!("orderflow-user-{}.db", Uuid::new_v4().simple()));
    let mut config = orderflow_user::UserConfig::local(SECRET);
    config.service.database_url = format!("sqlite://{}", file.display());
    config.service.redis_url = "redis://127.0.0.1:1".to_owned();
    config.sessions = orderflow_user::SessionBackend::Database;
    let start = || async {
        let (state, ready) = orderflow_user::prepare(&config).await?;
        anyhow::Ok(App {
            db: state.db.clone(),
            router: http::app("user", orderflow_user::router(state), ready),
        })
    };

    let app = start().await?;
    assert!(matches!(app.db, Db::Sqlite(_)));
    let ready = app.call(Method::GET, "/ready", None, None).await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.body);
    let created = app.register("ida@example.com", "correct horse").await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let tokens = app.login("ida@example.com", "correct horse").await;
    assert_eq!(tokens.status, StatusCode::OK, "{}", tokens.body);
    app.db.close().await;

    let app = start().await?;
    let me = app
        .call(
            Method::GET,
            "/api/v1/users/me",
            Some(&token_of(&tokens, "access_token")),
            None,
        )
        .await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.body);
    assert_eq!(me.body["id"], created.body["id"]);
    let refreshed = app
        .call(
            Method::POST,
            "/api/v1/auth/refresh",
            None,
            Some(json!({"refresh_token": token_of(&tokens, "refresh_token")})),
        )
        .await;
    assert_eq!(refreshed.status, StatusCode::OK, "{}", refreshed.body);
    app.db.close().await;
    for suffix in ["", "-wal", "-shm"] {
        let mut p = file.clone().into_os_string();
        p.push(suffix);
        std::fs::remove_file(p).ok();
    }
    Ok(())
}
