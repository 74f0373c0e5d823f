//! The sandbox speaks Stripe well enough for the real client: async-stripe against it on port 0,
//! plus raw HTTP for what the client hides (headers, the test controls).

use std::str::FromStr;

use orderflow_stripe_sandbox::{Faults, RunningSandbox, SandboxConfig, ledger::LedgerView};
use stripe::{Client, ClientBuilder, IdempotencyKey, RequestStrategy, StripeError, StripeRequest};
use stripe_core::{
    PaymentIntentStatus,
    payment_intent::{CreatePaymentIntent, RetrievePaymentIntent},
    refund::CreateRefund,
};

fn client(sb: &RunningSandbox, key: &str) -> Client {
    ClientBuilder::new(key).url(sb.url()).build().unwrap()
}

fn eur() -> stripe_types::Currency {
    stripe_types::Currency::from_str("eur").unwrap()
}

fn create(amount: i64, pm: &str) -> CreatePaymentIntent {
    CreatePaymentIntent::new(amount, eur())
        .payment_method(pm)
        .confirm(true)
}

fn idem(key: &str) -> RequestStrategy {
    RequestStrategy::Idempotent(IdempotencyKey::new(key).unwrap())
}

fn stripe_error(e: StripeError) -> (u16, String, Option<String>) {
    match e {
        StripeError::Stripe(err, status) => (
            status,
            err.type_.as_str().to_owned(),
            err.code.as_ref().map(|c| c.as_str().to_owned()),
        ),
        other => panic!("not a Stripe error: {other}"),
    }
}

#[tokio::test]
async fn idempotency_keys_replay_the_first_answer_and_refuse_other_parameters() -> anyhow::Result<()>
{
    let sb = RunningSandbox::start(SandboxConfig::default()).await?;
    let c = client(&sb, orderflow_stripe_sandbox::DEFAULT_SECRET_KEY);
    let first = create(500, "pm_card_visa")
        .customize()
        .request_strategy(idem("k1"))
        .send(&c)
        .await?;
    let again = create(500, "pm_card_visa")
        .customize()
        .request_strategy(idem("k1"))
        .send(&c)
        .await?;
    assert_eq!(first.id, again.id);
    assert_eq!(first.status, PaymentIntentStatus::Succeeded);
    assert_eq!(sb.sandbox.ledger().charges.len(), 1);

    let other = create(501, "pm_card_visa")
        .customize()
        .request_strategy(idem("k1"))
        .send(&c)
        .await;
    let (status, kind, _) = stripe_error(other.unwrap_err());
    assert_eq!((status, kind.as_str()), (400, "idempotency_error"));

    // A decline is saved too: the same key gets the same decline.
    for _ in 0..2 {
        let declined = create(500, "pm_card_chargeDeclined")
            .customize()
            .request_strategy(idem("k2"))
            .send(&c)
            .await;
        let (status, kind, code) = stripe_error(declined.unwrap_err());
        assert_eq!(
            (status, kind.as_str(), code.as_deref()),
            (402, "card_error", Some("card_declined"))
        );
    }
    assert_eq!(sb.sandbox.ledger().payment_intents.len(), 2);

    let fetched = RetrievePaymentIntent::new(first.id.clone())
        .send(&c)
        .await?;
    assert_eq!(
        (fetched.id, fetched.amount_received),
        (first.id.clone(), 500)
    );

    let refund = CreateRefund::new()
        .payment_intent(first.id.as_str())
        .send(&c)
        .await?;
    assert_eq!(refund.amount, 500);
    let twice = CreateRefund::new()
        .payment_intent(first.id.as_str())
        .send(&c)
        .await;
    let (status, _, code) = stripe_error(twice.unwrap_err());
    assert_eq!(
        (status, code.as_deref()),
        (400, Some("charge_already_refunded"))
    );
    Ok(())
}

#[tokio::test]
async fn bad_requests_are_stripe_errors_naming_the_parameter() -> anyhow::Result<()> {
    let sb = RunningSandbox::start(SandboxConfig::default()).await?;
    let wrong_key = client(&sb, "sk_test_wrong");
    let (status, kind, _) = stripe_error(
        create(500, "pm_card_visa")
            .send(&wrong_key)
            .await
            .unwrap_err(),
    );
    assert_eq!((status, kind.as_str()), (401, "invalid_request_error"));

    let c = client(&sb, orderflow_stripe_sandbox::DEFAULT_SECRET_KEY);
    let unknown = create(500, "pm_card_nope").send(&c).await.unwrap_err();
    assert_eq!(stripe_error(unknown).2.as_deref(), Some("resource_missing"));
    let (status, _, code) = stripe_error(
        RetrievePaymentIntent::new("pi_missing")
            .send(&c)
            .await
            .unwrap_err(),
    );
    assert_eq!((status, code.as_deref()), (404, Some("resource_missing")));
    assert!(sb.sandbox.ledger().payment_intents.is_empty());
    Ok(())
}

#[tokio::test]
async fn the_test_controls_inject_faults_and_show_the_ledger_over_http() -> anyhow::Result<()> {
    let sb = RunningSandbox::start(SandboxConfig::default()).await?;
    let http = reqwest::Client::new();
    let set = http
        .post(format!("{}sandbox/faults", sb.url()))
        .json(&serde_json::json!({ "fail_requests": 1 }))
        .send()
        .await?;
    assert_eq!(set.status(), 200);
    let c = client(&sb, orderflow_stripe_sandbox::DEFAULT_SECRET_KEY);
    let (status, kind, _) = stripe_error(create(700, "pm_card_visa").send(&c).await.unwrap_err());
    assert_eq!((status, kind.as_str()), (500, "api_error"));
    let pi = create(700, "pm_card_visa").send(&c).await?;

    let ledger: LedgerView = http
        .get(format!("{}sandbox/ledger", sb.url()))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(ledger.payment_intents.len(), 1);
    assert_eq!(ledger.charges[0].payment_intent, pi.id.as_str());
    assert_eq!(sb.sandbox.requests(), 2);
    assert_eq!(sb.sandbox.ledger(), ledger);

    let bad = http
        .post(format!("{}sandbox/faults", sb.url()))
        .json(&serde_json::json!({ "fail": "yes" }))
        .send()
        .await?;
    assert_eq!(bad.status(), 400);
    assert_eq!(bad.headers()["content-type"], "application/problem+json");
    sb.sandbox.set_faults(Faults::default());

    // Replays say so, as Stripe does.
    let post = |key: &str| {
        http.post(format!("{}v1/payment_intents", sb.url()))
            .bearer_auth(orderflow_stripe_sandbox::DEFAULT_SECRET_KEY)
            .header("idempotency-key", key.to_owned())
            .header("content-type", "application/x-www-form-urlencoded")
            .body("amount=100&currency=usd&confirm=true&payment_method=pm_card_visa&metadata[a]=1")
    };
    let one = post("raw").send().await?;
    assert!(one.headers().get("idempotent-replayed").is_none());
    let one: serde_json::Value = one.json().await?;
    assert_eq!(one["metadata"]["a"], "1");
    let two = post("raw").send().await?;
    assert_eq!(two.headers()["idempotent-replayed"], "true");
    let two: serde_json::Value = two.json().await?;
    assert_eq!(one["id"], two["id"]);
    Ok(())
}

#[tokio::test]
async fn a_held_request_has_not_run_when_its_client_gives_up_and_every_request_is_logged()
-> anyhow::Result<()> {
    let sb = RunningSandbox::start(SandboxConfig::default()).await?;
    sb.sandbox.set_faults(Faults {
        delay_requests: 1,
        delay_ms: 60_000,
        ..Faults::default()
    });
    let c = client(&sb, orderflow_stripe_sandbox::DEFAULT_SECRET_KEY);
    // The client gives up long before the sandbox would run the request.
    let gave_up = tokio::time::timeout(
        std::time::Duration::from_millis(300),
        create(900, "pm_card_visa")
            .customize()
            .request_strategy(idem("held"))
            .send(&c),
    )
    .await;
    assert!(gave_up.is_err(), "the request was held");
    let received = sb.sandbox.received();
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(
        (
            received[0].method.as_str(),
            received[0].path.as_str(),
            received[0].idempotency_key.as_deref()
        ),
        ("POST", "/v1/payment_intents", Some("held"))
    );
    assert!(sb.sandbox.ledger().payment_intents.is_empty());

    // The retry under the same key is not held (the hold was for one request) and charges once.
    let pi = create(900, "pm_card_visa")
        .customize()
        .request_strategy(idem("held"))
        .send(&c)
        .await?;
    assert_eq!(pi.status, PaymentIntentStatus::Succeeded);
    assert_eq!(sb.sandbox.ledger().payment_intents.len(), 1);
    assert_eq!(sb.sandbox.received().len(), 2);
    Ok(())
}

/// Serves a sandbox that keeps its books in `file`; cancel the token to stop it.
async fn serve_persistent(
    file: &std::path::Path,
) -> anyhow::Result<(
    Client,
    orderflow_stripe_sandbox::Sandbox,
    tokio_util::sync::CancellationToken,
)> {
    let sandbox = orderflow_stripe_sandbox::Sandbox::persistent(SandboxConfig::default(), file)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/", listener.local_addr()?);
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(orderflow_stripe_sandbox::serve(
        listener,
        sandbox.clone(),
        stop.clone(),
    ));
    let client = ClientBuilder::new(orderflow_stripe_sandbox::DEFAULT_SECRET_KEY)
        .url(url)
        .build()?;
    Ok((client, sandbox, stop))
}

/// `orderflow dev` restarts with its data: a charge made before the restart is still there, its
/// idempotency key still answers with it (no second charge), and it can be refunded.
#[tokio::test]
async fn a_persistent_sandbox_keeps_its_books_and_keys_across_a_restart() -> anyhow::Result<()> {
    let file = std::env::temp_dir().join(format!(
        "orderflow-sandbox-{}-{}.json",
        std::process::id(),
        rand::random::<u64>()
    ));
    let (c, _, stop) = serve_persistent(&file).await?;
    let first = create(700, "pm_card_visa")
        .customize()
        .request_strategy(idem("p1"))
        .send(&c)
        .await?;
    stop.cancel();

    let (c, sandbox, stop) = serve_persistent(&file).await?;
    let before = sandbox.ledger();
    assert_eq!(before.payment_intents.len(), 1);
    assert_eq!(before.charges.len(), 1);
    let again = create(700, "pm_card_visa")
        .customize()
        .request_strategy(idem("p1"))
        .send(&c)
        .await?;
    assert_eq!(
        again.id, first.id,
        "the key answers with the intent made before"
    );
    assert_eq!(sandbox.ledger().charges.len(), 1, "no second charge");
    CreateRefund::new()
        .payment_intent(first.id.as_str())
        .customize()
        .request_strategy(idem("r1"))
        .send(&c)
        .await?;
    assert_eq!(sandbox.ledger().refunds_of(first.id.as_str()).len(), 1);
    stop.cancel();

    std::fs::write(&file, b"{not the books")?;
    let err = orderflow_stripe_sandbox::Sandbox::persistent(SandboxConfig::default(), &file)
        .expect_err("a corrupt file is refused");
    assert!(err.to_string().contains(&*file.to_string_lossy()), "{err}");
    std::fs::remove_file(&file).ok();
    Ok(())
}
