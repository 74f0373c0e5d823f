//! A local Stripe test server: a real HTTP server that speaks the subset of Stripe's API the
//! payment service uses, so the production client (async-stripe) can be tested end to end
//! without the internet and without a mock in the code under test.
//!
//! What it speaks, as Stripe does: form-encoded `POST /v1/payment_intents` (create, and confirm
//! with `confirm=true`), `GET /v1/payment_intents/{id}`, `POST /v1/refunds`; Bearer auth with the
//! configured secret key; `Idempotency-Key` (same key and parameters: the saved response again,
//! marked `Idempotent-Replayed: true`; other parameters: a 400 `idempotency_error`; a request
//! rejected before it ran saves nothing); Stripe-shaped JSON errors; and, when a webhook target is
//! configured, signed webhook events (`payment_intent.succeeded`, `payment_intent.payment_failed`,
//! `refund.created`).
//!
//! Test payment methods: `pm_card_visa` succeeds; `pm_card_chargeDeclined` and
//! `pm_card_chargeDeclinedInsufficientFunds` are declined (402 `card_error` `card_declined`);
//! `pm_card_chargeDeclinedProcessingError` fails with a 402 `processing_error`, which Stripe
//! advises to retry.
//!
//! For tests it adds what Stripe cannot: a ledger of everything it charged and refunded
//! (`GET /sandbox/ledger`, or [`Sandbox::ledger`]) and fault controls (`POST /sandbox/faults`, or
//! [`Sandbox::set_faults`]): answer the next requests with a 500 before they run, hold them
//! a while before they run (a slow network on the way to Stripe), or
//! answer them late after they ran (a lost or slow response); and the log of every request it
//! received with its idempotency key ([`Sandbox::received`]), so a test can tell whether a
//! request reached Stripe before its client died.
//!
//! Modules:
//! - [`ledger`]: the objects (payment intents, charges, refunds), their JSON as Stripe renders
//!   it, and the rules that create them.
//! - [`api`]: the HTTP routes: Stripe's `/v1` API with auth, idempotency and faults, and the
//!   `/sandbox` test controls.
//! - [`webhooks`]: Stripe's webhook signature and the delivery of events.

pub mod api;
pub mod ledger;
pub mod webhooks;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use api::router;
pub use ledger::Ledger;

/// The secret key the sandbox accepts unless told otherwise.
pub const DEFAULT_SECRET_KEY: &str = "sk_test_orderflow_sandbox";

/// How the sandbox is set up.
#[derive(Clone, Debug)]
pub struct SandboxConfig {
    /// The only API key accepted as `Authorization: Bearer <key>`.
    pub secret_key: String,
    /// Where signed events are posted, if anywhere.
    pub webhook: Option<WebhookTarget>,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            secret_key: DEFAULT_SECRET_KEY.to_owned(),
            webhook: None,
        }
    }
}

/// A webhook endpoint and the secret its events are signed with (`whsec_...`).
#[derive(Clone, Debug)]
pub struct WebhookTarget {
    pub url: String,
    pub secret: String,
}

/// Faults to inject into the `/v1` API; the `/sandbox` routes are never affected.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Faults {
    /// Answer this many of the next requests with a 500 `api_error`, before they run (nothing is
    /// charged and no idempotent result is saved, like a failing load balancer).
    #[serde(default)]
    pub fail_requests: u32,
    /// Answer this many of the next requests with a 429 `rate_limit_error`, before they run.
    #[serde(default)]
    pub rate_limit_requests: u32,
    /// Answer this many of the next requests only after `hang_ms`; the request itself runs at
    /// once, so the client that gave up may find the result on its retry.
    #[serde(default)]
    pub hang_requests: u32,
    #[serde(default)]
    pub hang_ms: u64,
    /// Hold this many of the next requests for `delay_ms` before they run: until then nothing
    /// is charged or saved, so a client that gives up meanwhile finds nothing under its key.
    #[serde(default)]
    pub delay_requests: u32,
    #[serde(default)]
    pub delay_ms: u64,
}

/// One `/v1` request as it arrived, before anything was done with it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub idempotency_key: Option<String>,
}

/// A handle on one sandbox's state, shared by its routes and the test that runs it.
#[derive(Clone, Debug)]
pub struct Sandbox {
    pub(crate) inner: Arc<api::Shared>,
}

impl Sandbox {
    pub fn new(config: SandboxConfig) -> Self {
        Self {
            inner: Arc::new(api::Shared::new(config)),
        }
    }

    /// A sandbox that keeps its books (payments, refunds, idempotent answers) in `file`, so they
    /// survive a restart as Stripe's do: read now if the file exists, rewritten after every POST.
    pub fn persistent(config: SandboxConfig, file: &std::path::Path) -> anyhow::Result<Self> {
        Ok(Self {
            inner: Arc::new(api::Shared::persistent(config, file)?),
        })
    }

    /// A snapshot of everything charged and refunded so far.
    pub fn ledger(&self) -> ledger::LedgerView {
        self.inner.state.lock().expect("sandbox lock").ledger.view()
    }

    /// Replaces the injected faults.
    pub fn set_faults(&self, faults: Faults) {
        *self.inner.faults.lock().expect("faults lock") = faults;
    }

    /// API requests received so far (`/v1` only, faulted ones included).
    pub fn requests(&self) -> u64 {
        self.inner
            .requests
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Every Stripe API request received so far, oldest first (faulted and rejected ones too).
    pub fn received(&self) -> Vec<Received> {
        self.inner.received.lock().expect("received lock").clone()
    }
}

/// Serves the sandbox on `listener` until `stop` is cancelled.
pub async fn serve(
    listener: TcpListener,
    sandbox: Sandbox,
    stop: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(sandbox))
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
}

/// A sandbox serving on a port of its own in this process (for tests and `orderflow up`).
#[derive(Debug)]
pub struct RunningSandbox {
    pub addr: SocketAddr,
    pub sandbox: Sandbox,
    stop: CancellationToken,
}

impl RunningSandbox {
    /// Binds `127.0.0.1:0` and serves in a background task until dropped.
    pub async fn start(config: SandboxConfig) -> std::io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let sandbox = Sandbox::new(config);
        let stop = CancellationToken::new();
        tokio::spawn(serve(listener, sandbox.clone(), stop.clone()));
        Ok(Self {
            addr,
            sandbox,
            stop,
        })
    }

    /// The API base to give a Stripe client (`http://127.0.0.1:PORT/`).
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }
}

impl Drop for RunningSandbox {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// How long webhook delivery waits for the endpoint's answer.
pub(crate) const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(5);
