//! The sandbox's HTTP routes: Stripe's `/v1` API (auth, faults, idempotency, then the ledger's
//! rules) and the `/sandbox` controls for tests.

use std::{
    collections::HashMap,
    path::{Path as FsPath, PathBuf},
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{
    Faults, Received, Sandbox, SandboxConfig,
    ledger::{Answer, Ledger, Params, new_id},
    webhooks,
};

/// Stripe refuses longer idempotency keys.
const MAX_IDEMPOTENCY_KEY: usize = 255;

/// The books behind one lock, so that checking an idempotency key and running the request it
/// guards are one step: two concurrent requests with one key never both run. A persistent
/// sandbox keeps them in a JSON file, rewritten after every POST.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Books {
    pub ledger: Ledger,
    saved: HashMap<String, Saved>,
}

/// The first answer given under an idempotency key, and what it was for.
#[derive(Debug, Serialize, Deserialize)]
struct Saved {
    method: String,
    path: String,
    params: Params,
    status: u16,
    body: Value,
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub config: SandboxConfig,
    pub state: Mutex<Books>,
    pub faults: Mutex<Faults>,
    pub requests: AtomicU64,
    pub received: Mutex<Vec<Received>>,
    /// Where the books are kept between runs, if anywhere.
    file: Option<PathBuf>,
    http: reqwest::Client,
}

impl Shared {
    /// Counts and logs a `/v1` request as it arrives.
    fn receive(&self, method: &Method, path: &str, headers: &HeaderMap) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let idempotency_key = headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        self.received.lock().expect("received lock").push(Received {
            method: method.to_string(),
            path: path.to_owned(),
            idempotency_key,
        });
    }

    pub fn new(config: SandboxConfig) -> Self {
        Self::with_books(config, Books::default(), None)
    }

    /// A sandbox whose books live in `file`: read now if it exists, rewritten after every POST.
    pub fn persistent(config: SandboxConfig, file: &FsPath) -> anyhow::Result<Self> {
        let books = match std::fs::read(file) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                anyhow::anyhow!("{}: not a Stripe sandbox state file: {e}", file.display())
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Books::default(),
            Err(e) => return Err(anyhow::anyhow!("reading {}: {e}", file.display())),
        };
        Ok(Self::with_books(config, books, Some(file.to_owned())))
    }

    fn with_books(config: SandboxConfig, books: Books, file: Option<PathBuf>) -> Self {
        Self {
            config,
            state: Mutex::new(books),
            file,
            faults: Mutex::default(),
            requests: AtomicU64::new(0),
            received: Mutex::default(),
            http: reqwest::Client::builder()
                .timeout(crate::WEBHOOK_TIMEOUT)
                .build()
                .expect("a plain HTTP client always builds"),
        }
    }
}

/// The sandbox's routes: Stripe's API under `/v1`, test controls under `/sandbox`.
pub fn router(sandbox: Sandbox) -> Router {
    Router::new()
        .route("/v1/payment_intents", post(create_payment_intent))
        .route("/v1/payment_intents/{id}", get(retrieve_payment_intent))
        .route("/v1/refunds", post(create_refund))
        .route("/v1/{*rest}", axum::routing::any(unknown_url))
        .route("/sandbox/ledger", get(ledger))
        .route("/sandbox/faults", get(get_faults).post(set_faults))
        .route("/health", get(|| async { "ok" }))
        .with_state(sandbox)
}

async fn create_payment_intent(
    State(sb): State<Sandbox>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    api_call(
        &sb,
        &headers,
        Method::POST,
        "/v1/payment_intents",
        Some(&body),
        |ledger, params| ledger.create_payment_intent(params),
    )
    .await
}

async fn retrieve_payment_intent(
    State(sb): State<Sandbox>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let path = format!("/v1/payment_intents/{id}");
    api_call(&sb, &headers, Method::GET, &path, None, |ledger, _| {
        ledger.payment_intent(&id)
    })
    .await
}

async fn create_refund(State(sb): State<Sandbox>, headers: HeaderMap, body: Bytes) -> Response {
    api_call(
        &sb,
        &headers,
        Method::POST,
        "/v1/refunds",
        Some(&body),
        |ledger, params| ledger.create_refund(params),
    )
    .await
}

async fn unknown_url(
    State(sb): State<Sandbox>,
    method: Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Response {
    sb.inner.receive(&method, uri.path(), &headers);
    respond(
        &Answer::error(
            404,
            "invalid_request_error",
            format!("Unrecognized request URL ({method}: {}).", uri.path()),
        ),
        false,
    )
}

/// One `/v1` request: count it, check the key, apply faults, honour the idempotency key, run
/// `rule` on the ledger, answer (late if told to) and post the events it caused.
async fn api_call(
    sb: &Sandbox,
    headers: &HeaderMap,
    method: Method,
    path: &str,
    body: Option<&Bytes>,
    rule: impl FnOnce(&mut Ledger, &Params) -> Answer,
) -> Response {
    let shared = &sb.inner;
    shared.receive(&method, path, headers);
    if let Err(answer) = authenticate(&shared.config, headers) {
        return respond(&answer, false);
    }
    let delay = {
        let mut faults = shared.faults.lock().expect("faults lock");
        (faults.delay_requests > 0).then(|| {
            faults.delay_requests -= 1;
            Duration::from_millis(faults.delay_ms)
        })
    };
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    let hang = {
        let mut faults = shared.faults.lock().expect("faults lock");
        if faults.fail_requests > 0 {
            faults.fail_requests -= 1;
            let answer = Answer::error(
                500,
                "api_error",
                "Something went wrong on Stripe's end. (sandbox fault)",
            );
            return respond(&answer, false);
        }
        if faults.rate_limit_requests > 0 {
            faults.rate_limit_requests -= 1;
            let answer = Answer::error(
                429,
                "rate_limit_error",
                "Too many requests hit the API too quickly. (sandbox fault)",
            );
            return respond(&answer, false);
        }
        if faults.hang_requests > 0 {
            faults.hang_requests -= 1;
            Some(Duration::from_millis(faults.hang_ms))
        } else {
            None
        }
    };
    let params = match body.map(|b| serde_urlencoded::from_bytes::<Vec<(String, String)>>(b)) {
        None => Params::default(),
        Some(Ok(pairs)) => Params::new(pairs),
        Some(Err(e)) => {
            let answer = Answer::error(
                400,
                "invalid_request_error",
                format!("Invalid form body: {e}"),
            );
            return respond(&answer, false);
        }
    };
    // Stripe only honours the key on POST; a GET is safe to repeat anyway.
    let key = headers
        .get("idempotency-key")
        .filter(|_| method == Method::POST)
        .map(|v| v.to_str().map(str::to_owned));
    let key = match key {
        None => None,
        Some(Ok(k)) if !k.is_empty() && k.len() <= MAX_IDEMPOTENCY_KEY => Some(k),
        Some(_) => {
            let answer = Answer::error(
                400,
                "invalid_request_error",
                format!("Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} visible characters."),
            );
            return respond(&answer, false);
        }
    };

    let (answer, replayed) = {
        let mut state = shared.state.lock().expect("sandbox lock");
        match key.as_ref().and_then(|k| state.saved.get(k)) {
            Some(saved)
                if saved.method == method.as_str()
                    && saved.path == path
                    && saved.params == params =>
            {
                let replay = Answer {
                    status: saved.status,
                    body: saved.body.clone(),
                    saved: true,
                    events: Vec::new(),
                };
                (replay, true)
            }
            Some(_) => {
                let k = key.as_deref().unwrap_or_default();
                let answer = Answer::error(
                    400,
                    "idempotency_error",
                    format!(
                        "Keys for idempotent requests can only be used with the same parameters they were first used with. Try using a key other than '{k}' if you meant to execute a different request."
                    ),
                );
                (answer, false)
            }
            None => {
                let answer = rule(&mut state.ledger, &params);
                if let (Some(k), true) = (&key, answer.saved) {
                    state.saved.insert(
                        k.clone(),
                        Saved {
                            method: method.to_string(),
                            path: path.to_owned(),
                            params: params.clone(),
                            status: answer.status,
                            body: answer.body.clone(),
                        },
                    );
                }
                if let (Some(file), true) = (&shared.file, method == Method::POST) {
                    // Under the lock, so the file never goes back to an older state.
                    if let Err(e) = save(file, &state) {
                        tracing::error!(error = %e, file = %file.display(), "the Stripe sandbox could not save its books");
                    }
                }
                (answer, false)
            }
        }
    };

    if let Some(target) = &shared.config.webhook {
        for (kind, object) in &answer.events {
            let event = crate::ledger::event_json(kind, object.clone(), key.as_deref());
            tokio::spawn(webhooks::deliver(
                shared.http.clone(),
                target.clone(),
                event,
            ));
        }
    }
    if let Some(delay) = hang {
        tokio::time::sleep(delay).await;
    }
    respond(&answer, replayed)
}

/// Writes the books next to `file` and renames the copy over it, so a crash leaves the old or
/// the new books, never half of them.
fn save(file: &FsPath, books: &Books) -> std::io::Result<()> {
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(books)?)?;
    std::fs::rename(&tmp, file)
}

fn authenticate(config: &SandboxConfig, headers: &HeaderMap) -> Result<(), Answer> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(key) if key == config.secret_key => Ok(()),
        Some(key) => Err(Answer::error(
            401,
            "invalid_request_error",
            format!(
                "Invalid API Key provided: {}",
                key.chars().take(8).collect::<String>() + "****"
            ),
        )),
        None => Err(Answer::error(
            401,
            "invalid_request_error",
            "You did not provide an API key. Provide it in the Authorization header as a Bearer token.",
        )),
    }
}

fn respond(answer: &Answer, replayed: bool) -> Response {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, Json(answer.body.clone())).into_response();
    let headers = response.headers_mut();
    if let Ok(id) = HeaderValue::from_str(&new_id("req")) {
        headers.insert("request-id", id);
    }
    if replayed {
        headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
}

async fn ledger(State(sb): State<Sandbox>) -> Json<crate::ledger::LedgerView> {
    Json(sb.ledger())
}

async fn get_faults(State(sb): State<Sandbox>) -> Json<Faults> {
    Json(sb.inner.faults.lock().expect("faults lock").clone())
}

async fn set_faults(State(sb): State<Sandbox>, body: Bytes) -> Response {
    match serde_json::from_slice::<Faults>(&body) {
        Ok(faults) => {
            sb.set_faults(faults.clone());
            Json(faults).into_response()
        }
        Err(e) => (
            StatusCode::BAD_REQUEST,
            [(header::CONTENT_TYPE, "application/problem+json")],
            Json(serde_json::json!({
                "type": "about:blank",
                "title": "Bad faults",
                "status": 400,
                "detail": e.to_string(),
                "field": "faults",
            })),
        )
            .into_response(),
    }
}
