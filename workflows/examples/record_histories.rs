//! Records the order saga histories that `tests/replay.rs` replays, by driving `order::v1` and
//! `order::v3` through the in-memory driver (no database, no broker). Run it when a history is added or when a change
//! to the saga is meant to change its decisions (then bump the definition's version instead if
//! sagas of the old shape may still be running):
//!
//! ```text
//! cargo run -p orderflow-workflows --example record_histories [-- OUT_DIR]
//! ```
//!
//! The return saga's histories go to `OUT_DIR/returns`, apart from the order saga's corpus.
//!
//! OUT_DIR defaults to `workflows/tests/histories`. Every id and instant is fixed, so running it
//! again writes the same files.

use std::{error::Error, path::PathBuf, time::Duration};

use orderflow_core::{ActivityError, History, WorkflowStatus, testing::Driver};
use orderflow_workflows::order::contracts::{
    Charge, Notification, OrderConfirmation, OrderSagaInput, Reservation,
};
use orderflow_workflows::order::{self, CHARGE, CREATE_ORDER, NOTIFY, RESERVE};
use orderflow_workflows::returns::{
    self, CONFIRM, INSTRUCT, REFUND, RESTOCK,
    contracts::{PARCEL_RECEIVED, ParcelReceived, ReturnRefund, ReturnSagaInput},
};
use serde_json::{Value, json};

type Result<T> = std::result::Result<T, Box<dyn Error>>;

/// Drives one saga to its end and returns its history.
type Scenario = fn() -> Result<History>;

fn main() -> Result<()> {
    let out = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("tests")
                .join("histories")
        });
    std::fs::create_dir_all(&out)?;
    let scenarios: [(&str, Scenario); 7] = [
        ("completed", completed),
        ("compensated_at_charge", compensated_at_charge),
        ("retried_then_completed", retried_then_completed),
        ("cancelled_while_running", cancelled_while_running),
        (
            "failed_after_pivot_retried_forward",
            failed_after_pivot_retried_forward,
        ),
        (
            "v3_outage_retried_then_completed",
            v3_outage_retried_then_completed,
        ),
        (
            "v3_charge_in_doubt_given_up_and_refunded",
            v3_charge_in_doubt_given_up_and_refunded,
        ),
    ];
    let return_scenarios: [(&str, Scenario); 3] = [
        ("return_completed", return_completed),
        ("return_expired", return_expired),
        (
            "return_refund_retried_then_completed",
            return_refund_retried_then_completed,
        ),
    ];
    let returns_dir = out.join("returns");
    std::fs::create_dir_all(&returns_dir)?;
    let all = scenarios
        .into_iter()
        .map(|s| (&out, s))
        .chain(return_scenarios.into_iter().map(|s| (&returns_dir, s)));
    for (dir, (name, record)) in all {
        let history = record()?;
        let path = dir.join(format!("{name}.json"));
        let mut text = serde_json::to_string_pretty(&history)?;
        text.push('\n');
        std::fs::write(&path, text)?;
        println!("{} ({} events)", path.display(), history.events.len());
    }
    Ok(())
}

/// One customer's order, as `POST /orders` would start it. `n` keeps the histories' ids apart.
fn order_input(n: u8) -> Result<Value> {
    let input: OrderSagaInput = serde_json::from_value(json!({
        "order_id": format!("01977c2e-5a40-7d1e-9c3b-6f2a1e4b80{n:02x}"),
        "user_id": "01977c2e-1f00-7a3c-8b5d-2c9e4f6a7b01",
        "items": [
            {"product_id": "sku-espresso-beans-1kg", "quantity": 2},
            {"product_id": "sku-milk-frother", "quantity": 1}
        ],
        "total": {"amount_minor": 8497, "currency": "EUR"},
        "payment_method": "pm_card_visa",
        "email": "ada.lovelace@example.com"
    }))?;
    Ok(serde_json::to_value(input)?)
}

/// Starts order saga number `n` at `at` (RFC 3339) on v1.
fn start(n: u8, at: &str) -> Result<Driver> {
    start_on(order::v1(), n, at)
}

fn start_on(def: orderflow_core::SagaDefinition, n: u8, at: &str) -> Result<Driver> {
    Ok(Driver::builder(def)
        .workflow_id(format!("01977c2e-5a40-7000-8000-0000000000{n:02x}").parse()?)
        .start_at(at.parse()?)
        .start(order_input(n)?)?)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn reservation(n: u8) -> Result<Value> {
    Ok(serde_json::to_value(Reservation {
        reservation_id: format!("rsv_01977c2e5a4{n}"),
    })?)
}

fn charge(n: u8) -> Result<Value> {
    Ok(serde_json::to_value(Charge {
        payment_id: format!("pay_01977c2e5a4{n}"),
        payment_intent_id: format!("pi_3PqK8eLkdIwHu7ix0{n}b2Xy9Z"),
    })?)
}

fn confirmation(n: u8) -> Result<Value> {
    let order_id = order_input(n)?["order_id"].clone();
    Ok(serde_json::to_value(OrderConfirmation {
        order_id: serde_json::from_value(order_id)?,
        status: "confirmed".into(),
    })?)
}

fn notification(n: u8) -> Result<Value> {
    Ok(serde_json::to_value(Notification {
        notification_id: format!("ntf_01977c2e5a4{n}"),
    })?)
}

fn finished(d: Driver, status: WorkflowStatus) -> Result<History> {
    if d.status() != status {
        return Err(format!("the scenario ended {}, not {status}", d.status()).into());
    }
    Ok(d.into_history())
}

/// Every step succeeds the first time.
fn completed() -> Result<History> {
    let n = 1;
    let mut d = start(n, "2025-06-02T09:15:00.120Z")?;
    d.advance(ms(140)).complete(RESERVE, reservation(n)?)?;
    d.advance(ms(850)).complete(CHARGE, charge(n)?)?;
    d.advance(ms(60)).complete(CREATE_ORDER, confirmation(n)?)?;
    d.advance(ms(310)).complete(NOTIFY, notification(n)?)?;
    finished(d, WorkflowStatus::Completed)
}

/// The card is declined (a non-retryable code): the reservation is released, nothing is refunded.
fn compensated_at_charge() -> Result<History> {
    let n = 2;
    let mut d = start(n, "2025-06-02T09:17:42.004Z")?;
    d.advance(ms(130)).complete(RESERVE, reservation(n)?)?;
    d.advance(ms(720)).fail(
        CHARGE,
        ActivityError::permanent("card_declined", "Your card was declined."),
    )?;
    d.advance(ms(95)).complete(
        RESERVE,
        json!({"reservation_id": format!("rsv_01977c2e5a4{n}"), "status": "released"}),
    )?;
    finished(d, WorkflowStatus::Compensated)
}

/// Inventory answers 503 once (retried after its backoff); the first charge is lost (its
/// start-to-close timeout fires, it is retried, and its late result is ignored).
fn retried_then_completed() -> Result<History> {
    let n = 3;
    let mut d = start(n, "2025-06-02T10:02:11.500Z")?;
    d.advance(ms(45)).fail(
        RESERVE,
        ActivityError::retryable("unavailable", "inventory answered 503 Service Unavailable"),
    )?;
    d.fire_next_timer()?; // reserve's backoff ends: attempt 2
    d.advance(ms(150)).complete(RESERVE, reservation(n)?)?;
    let lost = d.task(CHARGE).ok_or("charge was scheduled")?.task_id;
    d.fire_next_timer()?; // charge's start-to-close timeout
    d.fire_next_timer()?; // charge's backoff ends: attempt 2
    d.advance(ms(40)).complete_task(lost, charge(n)?)?; // attempt 1's result, late
    d.advance(ms(610)).complete(CHARGE, charge(n)?)?;
    d.advance(ms(70)).complete(CREATE_ORDER, confirmation(n)?)?;
    d.advance(ms(280)).complete(NOTIFY, notification(n)?)?;
    finished(d, WorkflowStatus::Completed)
}

/// The customer cancels while the charge is out: the saga waits for it, refunds it and releases
/// the reservation.
fn cancelled_while_running() -> Result<History> {
    let n = 4;
    let mut d = start(n, "2025-06-02T11:30:05.000Z")?;
    d.advance(ms(160)).complete(RESERVE, reservation(n)?)?;
    d.advance(ms(200)).cancel(
        "user:01977c2e-1f00-7a3c-8b5d-2c9e4f6a7b01",
        "ordered the wrong grind",
    )?;
    d.advance(ms(640)).complete(CHARGE, charge(n)?)?;
    d.advance(ms(900)).complete(
        CHARGE,
        json!({"refund_id": format!("re_3PqK8eLkdIwHu7ix0{n}c4Lm1Q"), "status": "succeeded"}),
    )?;
    d.advance(ms(85)).complete(
        RESERVE,
        json!({"reservation_id": format!("rsv_01977c2e5a4{n}"), "status": "released"}),
    )?;
    finished(d, WorkflowStatus::Cancelled)
}

/// The order exists, then the mail server refuses three times: notify is retried, nothing is
/// compensated.
fn failed_after_pivot_retried_forward() -> Result<History> {
    let n = 5;
    let mut d = start(n, "2025-06-02T12:45:30.250Z")?;
    d.advance(ms(120)).complete(RESERVE, reservation(n)?)?;
    d.advance(ms(780)).complete(CHARGE, charge(n)?)?;
    d.advance(ms(55)).complete(CREATE_ORDER, confirmation(n)?)?;
    for _ in 0..3 {
        d.advance(ms(5_000)).fail(
            NOTIFY,
            ActivityError::retryable("smtp_unavailable", "421 4.3.2 Service not available"),
        )?;
        d.fire_next_timer()?; // notify's backoff ends
    }
    d.advance(ms(290)).complete(NOTIFY, notification(n)?)?;
    finished(d, WorkflowStatus::Completed)
}

/// v3: Stripe is down for a while; the charge meets a 500 (whose outcome is unknown), then the
/// payment service's open breaker five times, and its seventh attempt goes through.
fn v3_outage_retried_then_completed() -> Result<History> {
    let n = 6;
    let mut d = start_on(order::v3(), n, "2025-06-02T14:05:10.000Z")?;
    d.advance(ms(140)).complete(RESERVE, reservation(n)?)?;
    d.advance(ms(300)).fail(
        CHARGE,
        ActivityError::retryable(
            "stripe_unavailable",
            "Stripe unavailable: Stripe answered 500",
        )
        .with_outcome_unknown(),
    )?;
    for _ in 0..5 {
        d.fire_next_timer()?; // the charge's backoff ends
        d.advance(ms(5)).fail(
            CHARGE,
            ActivityError::retryable("stripe_circuit_open", "the Stripe circuit breaker is open"),
        )?;
    }
    d.fire_next_timer()?;
    d.advance(ms(690)).complete(CHARGE, charge(n)?)?;
    d.advance(ms(60)).complete(CREATE_ORDER, confirmation(n)?)?;
    d.advance(ms(300)).complete(NOTIFY, notification(n)?)?;
    finished(d, WorkflowStatus::Completed)
}

/// v3: every charge attempt fails, the last one timing out after the request left, so the charge
/// may have happened: giving the step up refunds it (settling it first), then releases the stock.
fn v3_charge_in_doubt_given_up_and_refunded() -> Result<History> {
    let n = 7;
    let mut d = start_on(order::v3(), n, "2025-06-02T14:20:00.000Z")?;
    d.advance(ms(150)).complete(RESERVE, reservation(n)?)?;
    for attempt in 1..=9 {
        let error = ActivityError::retryable("stripe_unavailable", "Stripe unavailable: timed out");
        let error = if attempt == 9 {
            error.with_outcome_unknown()
        } else {
            error
        };
        if attempt > 1 {
            d.fire_next_timer()?; // the charge's backoff ends
        }
        d.advance(ms(10_000)).fail(CHARGE, error)?;
    }
    d.advance(ms(800)).complete(
        CHARGE,
        json!({"refund_id": format!("re_3PqK8eLkdIwHu7ix0{n}c4Lm1Q"), "status": "succeeded"}),
    )?;
    d.advance(ms(85)).complete(
        RESERVE,
        json!({"reservation_id": format!("rsv_01977c2e5a4{n}"), "status": "released"}),
    )?;
    finished(d, WorkflowStatus::Compensated)
}

/// Return saga number `n`, of order saga number `n`, started at `at` on the deployed v1.
fn start_return(n: u8, at: &str) -> Result<Driver> {
    let order = order_input(n)?;
    let input = ReturnSagaInput {
        order_id: serde_json::from_value(order["order_id"].clone())?,
        order_workflow_id: format!("01977c2e-5a40-7000-8000-0000000000{n:02x}").parse()?,
        user_id: serde_json::from_value(order["user_id"].clone())?,
        items: serde_json::from_value(order["items"].clone())?,
        total: serde_json::from_value(order["total"].clone())?,
        email: serde_json::from_value(order["email"].clone())?,
    };
    Ok(Driver::builder(returns::v1())
        .workflow_id(format!("01977c2e-5a40-7000-8000-0000000001{n:02x}").parse()?)
        .start_at(at.parse()?)
        .start(serde_json::to_value(input)?)?)
}

fn parcel() -> Result<Value> {
    Ok(serde_json::to_value(ParcelReceived {
        received_by: "warehouse:berlin-1".into(),
    })?)
}

fn refunded(n: u8) -> Result<Value> {
    Ok(serde_json::to_value(ReturnRefund {
        payment_id: format!("pay_01977c2e5a4{n}"),
        refund_id: Some(format!("re_3PqK8eLkdIwHu7ix0{n}r7Tn2W")),
    })?)
}

/// The parcel arrives after five days: refunded, restocked, the customer told.
fn return_completed() -> Result<History> {
    let n = 1;
    let mut d = start_return(n, "2025-06-10T08:00:00.000Z")?;
    d.advance(ms(300)).complete(INSTRUCT, notification(n)?)?;
    d.advance(Duration::from_secs(5 * 24 * 3600)).signal(
        PARCEL_RECEIVED,
        parcel()?,
        "service:warehouse",
    )?;
    d.advance(ms(900)).complete(REFUND, refunded(n)?)?;
    d.advance(ms(120))
        .complete(RESTOCK, json!({"restocked": 3}))?;
    d.advance(ms(280)).complete(CONFIRM, notification(n)?)?;
    finished(d, WorkflowStatus::Completed)
}

/// No parcel within 14 days: the wait times out, the customer is told the return expired.
fn return_expired() -> Result<History> {
    let n = 5;
    let mut d = start_return(n, "2025-06-11T10:30:00.000Z")?;
    d.advance(ms(250)).complete(INSTRUCT, notification(n)?)?;
    d.fire_next_timer()?; // the 14-day wait ends
    d.advance(ms(310)).complete(INSTRUCT, notification(n)?)?;
    finished(d, WorkflowStatus::Compensated)
}

/// Stripe is down when the parcel arrives: the refund is retried past the outage; a late parcel
/// signal sent twice by the warehouse is recorded and changes nothing.
fn return_refund_retried_then_completed() -> Result<History> {
    let n = 6;
    let mut d = start_return(n, "2025-06-12T12:00:00.000Z")?;
    d.advance(ms(300)).complete(INSTRUCT, notification(n)?)?;
    d.advance(Duration::from_secs(9 * 24 * 3600)).signal(
        PARCEL_RECEIVED,
        parcel()?,
        "operator:ada",
    )?;
    for _ in 0..2 {
        d.advance(ms(10_000)).fail(
            REFUND,
            ActivityError::retryable("stripe_unavailable", "Stripe unavailable: timed out"),
        )?;
        d.fire_next_timer()?; // the refund's backoff ends
    }
    d.advance(ms(40))
        .signal(PARCEL_RECEIVED, parcel()?, "service:warehouse")?;
    d.advance(ms(700)).complete(REFUND, refunded(n)?)?;
    d.advance(ms(150))
        .complete(RESTOCK, json!({"restocked": 3}))?;
    d.advance(ms(260)).complete(CONFIRM, notification(n)?)?;
    finished(d, WorkflowStatus::Completed)
}
