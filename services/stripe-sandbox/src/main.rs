//! `stripe-sandbox`: runs the local Stripe test server on its own.

use std::net::SocketAddr;

use anyhow::Context;
use orderflow_stripe_sandbox::{DEFAULT_SECRET_KEY, Sandbox, SandboxConfig, WebhookTarget};
use tokio_util::sync::CancellationToken;

/// Settings from the environment, so the binary needs no argument parser:
/// `STRIPE_SANDBOX_BIND` (default `127.0.0.1:12111`), `STRIPE_SANDBOX_SECRET_KEY`, and
/// `STRIPE_SANDBOX_WEBHOOK_URL` with `STRIPE_SANDBOX_WEBHOOK_SECRET` to post signed events.
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let bind: SocketAddr = env("STRIPE_SANDBOX_BIND")
        .unwrap_or_else(|| "127.0.0.1:12111".into())
        .parse()
        .context("STRIPE_SANDBOX_BIND")?;
    let webhook = match (
        env("STRIPE_SANDBOX_WEBHOOK_URL"),
        env("STRIPE_SANDBOX_WEBHOOK_SECRET"),
    ) {
        (Some(url), Some(secret)) => Some(WebhookTarget { url, secret }),
        (None, None) => None,
        _ => anyhow::bail!(
            "set both STRIPE_SANDBOX_WEBHOOK_URL and STRIPE_SANDBOX_WEBHOOK_SECRET, or neither"
        ),
    };
    let config = SandboxConfig {
        secret_key: env("STRIPE_SANDBOX_SECRET_KEY").unwrap_or_else(|| DEFAULT_SECRET_KEY.into()),
        webhook,
    };
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .with_context(|| format!("binding {bind}"))?;
    tracing::info!(%bind, "Stripe sandbox listening");
    let stop = CancellationToken::new();
    let on_signal = stop.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        on_signal.cancel();
    });
    orderflow_stripe_sandbox::serve(listener, Sandbox::new(config), stop).await?;
    Ok(())
}
