//! Decider scenarios: each drives one saga through the in-memory [`Driver`] and checks the exact
//! commands answered to each event, the activities scheduled and the final status. Every scenario
//! ends by replaying its recorded history, so the histories the driver writes are known to replay.

use std::time::Duration;

use orderflow_core::{
    ActivityError, Command, DecideError, Phase, Registry, RetryPolicy, SagaDefinition, SagaState,
    StepStatus, TimerPurpose, WorkflowState, WorkflowStatus, replay,
    testing::{DriveError, Driver},
};
use serde_json::{Value, json};

const RESERVE: &str = "reserve";
const CHARGE: &str = "charge";
const CREATE_ORDER: &str = "create_order";
const NOTIFY: &str = "notify";

/// The order saga as `workflows::order::v1` defines it (the core crate cannot depend on it).
fn order_saga() -> SagaDefinition {
    order_saga_with(|b| b)
}

/// The order saga with a change made to its builder before the steps are added.
fn order_saga_with(
    tweak: impl FnOnce(
        orderflow_core::definition::SagaBuilder,
    ) -> orderflow_core::definition::SagaBuilder,
) -> SagaDefinition {
    let business = |codes: &[&str]| RetryPolicy {
        non_retryable_codes: codes.iter().map(|c| (*c).to_owned()).collect(),
        ..RetryPolicy::default()
    };
    tweak(SagaDefinition::builder("order", 1).deadline(Duration::from_secs(15 * 60)))
        .step(
            orderflow_core::Step::compensatable(RESERVE, "inventory.reserve")
                .compensate_with("inventory.release")
                .retry(business(&["out_of_stock", "unknown_product"])),
        )
        .step(
            orderflow_core::Step::compensatable(CHARGE, "payment.charge")
                .compensate_with("payment.refund")
                .retry(business(&["card_declined"])),
        )
        .step(
            orderflow_core::Step::pivot(CREATE_ORDER, "order.create")
                .compensate_with("order.cancel"),
        )
        .step(
            orderflow_core::Step::retriable(NOTIFY, "notification.send").retry(RetryPolicy {
                max_interval: Duration::from_secs(60),
                ..RetryPolicy::default()
            }),
        )
        .build()
        .expect("the test order saga is valid")
}

fn input() -> Value {
    json!({
        "order_id": "0194a3b2-0000-7000-8000-00000000a001",
        "user_id": "0194a3b2-0000-7000-8000-00000000b001",
        "items": [{"product_id": "sku-espresso-1kg", "quantity": 2}],
        "total": {"amount_minor": 4598, "currency": "EUR"},
        "payment_method": "pm_card_visa",
        "email": "ada@example.com"
    })
}

fn start() -> Driver {
    start_with(order_saga())
}

fn start_with(def: SagaDefinition) -> Driver {
    Driver::builder(def)
        .start(input())
        .expect("the saga starts")
}

fn reservation() -> Value {
    json!({"reservation_id": "res_1"})
}

fn charge() -> Value {
    json!({"payment_id": "pay_1", "payment_intent_id": "pi_1"})
}

/// One command in a few words, so a test can list a decision's commands in order.
fn describe(c: &Command) -> String {
    match c {
        Command::ScheduleActivity(t) => format!("schedule {}#{}", t.activity, t.attempt),
        Command::StartTimer { purpose, .. } => match purpose {
            TimerPurpose::Retry { step, phase } => format!("start_timer retry {step} {phase:?}"),
            TimerPurpose::AttemptTimeout { .. } => "start_timer attempt_timeout".into(),
            TimerPurpose::Deadline => "start_timer deadline".into(),
            TimerPurpose::SignalTimeout { signal, .. } => format!("start_timer wait {signal}"),
        },
        Command::CancelTimer { .. } => "cancel_timer".into(),
        Command::Finish { status, .. } => format!("finish {status}"),
        Command::RequireAttention { .. } => "require_attention".into(),
    }
}

fn commands(d: &Driver) -> Vec<String> {
    d.last().commands.iter().map(describe).collect()
}

fn saga(d: &Driver) -> &SagaState {
    d.saga_state()
        .expect("the order saga's state is a saga state")
}

fn step_status(d: &Driver, step: &str) -> StepStatus {
    saga(d)
        .steps
        .iter()
        .find(|s| s.name == step)
        .expect("the step exists")
        .status
}

/// The recorded history replays against the definition and folds to the driver's state.
fn assert_replays(d: &Driver, def: SagaDefinition) {
    let registry = Registry::new().with(def);
    let state = replay(&registry, d.history()).expect("the recorded history replays");
    assert_eq!(
        serde_json::to_value(&state).unwrap(),
        serde_json::to_value(d.state()).unwrap(),
        "replay folds to the state the driver holds"
    );
}

/// Reserve, charge and create the order, leaving notify out.
fn through_pivot(d: &mut Driver) {
    d.complete(RESERVE, reservation()).unwrap();
    d.complete(CHARGE, charge()).unwrap();
    d.complete(CREATE_ORDER, json!({"status": "confirmed"}))
        .unwrap();
}

fn rejected(r: Result<&orderflow_core::RecordedEvent, DriveError>) -> String {
    match r {
        Err(DriveError::Decide(DecideError::Rejected(why))) => why,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[test]
fn completes_in_order() {
    let mut d = start();
    let t0 = d.now();
    assert_eq!(
        commands(&d),
        [
            "start_timer deadline",
            "schedule inventory.reserve#1",
            "start_timer attempt_timeout"
        ]
    );
    let reserve = d.task(RESERVE).unwrap().clone();
    assert_eq!(reserve.phase, Phase::Forward);
    assert_eq!(reserve.deadline, t0 + chrono::Duration::seconds(30));
    assert_eq!(
        reserve.idempotency_key,
        format!("{}/reserve", d.history().workflow_id)
    );
    assert_eq!(reserve.payload["input"], input());

    d.advance(Duration::from_millis(120));
    d.complete(RESERVE, reservation()).unwrap();
    assert_eq!(
        commands(&d),
        [
            "cancel_timer",
            "schedule payment.charge#1",
            "start_timer attempt_timeout"
        ]
    );
    let Command::CancelTimer { timer_id } = d.last().commands[0] else {
        unreachable!()
    };
    assert_eq!(
        timer_id,
        d.history().events[0]
            .commands
            .iter()
            .find_map(|c| match c {
                Command::StartTimer {
                    timer_id,
                    purpose: TimerPurpose::AttemptTimeout { task_id },
                    ..
                } if *task_id == reserve.task_id => Some(*timer_id),
                _ => None,
            })
            .unwrap(),
        "the settled task's start-to-close timer is cancelled"
    );
    assert_eq!(
        d.task(CHARGE).unwrap().payload["results"][RESERVE],
        reservation(),
        "later tasks see earlier outputs"
    );

    d.complete(CHARGE, charge()).unwrap();
    assert_eq!(
        commands(&d),
        [
            "cancel_timer",
            "schedule order.create#1",
            "start_timer attempt_timeout"
        ]
    );
    d.complete(CREATE_ORDER, json!({"status": "confirmed"}))
        .unwrap();
    assert_eq!(
        commands(&d),
        [
            "cancel_timer",
            "schedule notification.send#1",
            "start_timer attempt_timeout"
        ]
    );
    d.complete(NOTIFY, json!({"notification_id": "n_1"}))
        .unwrap();
    assert_eq!(
        commands(&d),
        ["cancel_timer", "cancel_timer", "finish completed"],
        "the attempt timer, then the deadline"
    );
    assert_eq!(d.status(), WorkflowStatus::Completed);
    assert_eq!(
        d.scheduled_activities(),
        [
            "inventory.reserve",
            "payment.charge",
            "order.create",
            "notification.send"
        ]
    );
    assert!(d.pending_timers().is_empty() && d.pending_tasks().is_empty());
    assert!(
        d.history()
            .events
            .iter()
            .enumerate()
            .all(|(i, e)| e.seq == i as u64 + 1 && e.ignored.is_none())
    );
    assert_replays(&d, order_saga());
}

#[test]
fn compensates_only_completed_steps_when_charge_fails_permanently() {
    let mut d = start();
    d.complete(RESERVE, reservation()).unwrap();
    d.fail(
        CHARGE,
        ActivityError::permanent("insufficient_funds", "the card has insufficient funds"),
    )
    .unwrap();
    assert_eq!(
        commands(&d),
        [
            "cancel_timer",
            "cancel_timer",
            "schedule inventory.release#1",
            "start_timer attempt_timeout"
        ],
        "attempt timer, deadline, then the release of the reservation"
    );
    assert_eq!(d.status(), WorkflowStatus::Compensating);
    let release = d.task(RESERVE).unwrap();
    assert_eq!(release.phase, Phase::Compensate);
    assert_eq!(release.payload["results"][RESERVE], reservation());
    assert_eq!(
        release.idempotency_key,
        format!("{}/reserve/compensate", d.history().workflow_id)
    );

    d.complete(RESERVE, json!({"released": true})).unwrap();
    assert_eq!(commands(&d), ["cancel_timer", "finish compensated"]);
    assert_eq!(d.status(), WorkflowStatus::Compensated);
    assert_eq!(
        d.scheduled_activities(),
        ["inventory.reserve", "payment.charge", "inventory.release"],
        "the failed charge is not refunded"
    );
    assert_eq!(step_status(&d, RESERVE), StepStatus::Compensated);
    assert_eq!(step_status(&d, CHARGE), StepStatus::Failed);
    assert!(
        saga(&d)
            .reason
            .as_deref()
            .unwrap()
            .contains("insufficient_funds")
    );
    assert!(d.pending_timers().is_empty());
    assert_replays(&d, order_saga());
}

#[test]
fn compensates_in_reverse_order_when_the_pivot_fails() {
    let mut d = start();
    d.complete(RESERVE, reservation()).unwrap();
    d.complete(CHARGE, charge()).unwrap();
    d.fail(
        CREATE_ORDER,
        ActivityError::permanent("invalid_order", "the order was refused"),
    )
    .unwrap();
    d.complete(CHARGE, json!({"refund_id": "re_1"})).unwrap();
    d.complete(RESERVE, json!({"released": true})).unwrap();
    assert_eq!(d.status(), WorkflowStatus::Compensated);
    assert_eq!(
        d.scheduled_activities(),
        [
            "inventory.reserve",
            "payment.charge",
            "order.create",
            "payment.refund",
            "inventory.release"
        ]
    );
    assert_replays(&d, order_saga());
}

#[test]
fn retries_a_transient_failure_after_its_backoff() {
    let def = order_saga();
    let policy = def.steps[0].retry.clone();
    let mut d = start_with(def);
    let first = d.task(RESERVE).unwrap().clone();
    d.advance(Duration::from_millis(80));
    d.fail(
        RESERVE,
        ActivityError::retryable("unavailable", "inventory is restarting"),
    )
    .unwrap();
    assert_eq!(
        commands(&d),
        ["cancel_timer", "start_timer retry reserve Forward"]
    );
    assert_eq!(step_status(&d, RESERVE), StepStatus::Retrying);
    let failed_at = d.now();
    let Command::StartTimer { fire_at, .. } = d.last().commands[1] else {
        unreachable!()
    };
    let backoff = policy.backoff(1, first.task_id);
    assert!(backoff > Duration::ZERO && backoff <= Duration::from_millis(200));
    assert_eq!(
        fire_at,
        failed_at + chrono::Duration::from_std(backoff).unwrap()
    );
    assert!(d.pending_tasks().is_empty());

    d.fire_next_timer().unwrap();
    assert_eq!(d.now(), fire_at, "the clock moved to the backoff's end");
    assert_eq!(
        commands(&d),
        [
            "schedule inventory.reserve#2",
            "start_timer attempt_timeout"
        ]
    );
    let second = d.task(RESERVE).unwrap().clone();
    assert_ne!(second.task_id, first.task_id);
    assert_eq!(
        second.idempotency_key, first.idempotency_key,
        "attempts share the key"
    );

    d.fail(
        RESERVE,
        ActivityError::retryable("unavailable", "still restarting"),
    )
    .unwrap();
    let Command::StartTimer { fire_at, .. } = d.last().commands[1] else {
        unreachable!()
    };
    assert_eq!(
        fire_at,
        d.now() + chrono::Duration::from_std(policy.backoff(2, second.task_id)).unwrap()
    );
    d.fire_next_timer().unwrap();
    d.complete(RESERVE, reservation()).unwrap();
    assert_eq!(
        commands(&d),
        [
            "cancel_timer",
            "schedule payment.charge#1",
            "start_timer attempt_timeout"
        ]
    );
    assert_eq!(saga(&d).steps[0].attempts, 3);
    assert_eq!(d.status(), WorkflowStatus::Running);
    assert_replays(&d, order_saga());
}

#[test]
fn a_timed_out_attempt_is_retried_and_compensated_if_the_step_then_fails() {
    let mut d = start();
    d.complete(RESERVE, reservation()).unwrap();
    let lost = d.task(CHARGE).unwrap().clone();
    let sent_at = d.now();

    let fired = d.fire_next_timer().unwrap();
    assert_eq!(fired.at, sent_at + chrono::Duration::seconds(30));
    assert_eq!(commands(&d), ["start_timer retry charge Forward"]);
    let charge_state = &saga(&d).steps[1];
    assert!(charge_state.outcome_unknown);
    assert_eq!(charge_state.last_error.as_ref().unwrap().code, "timeout");

    d.fire_next_timer().unwrap();
    assert_eq!(
        commands(&d),
        ["schedule payment.charge#2", "start_timer attempt_timeout"]
    );
    // The lost attempt's result turns up late, after attempt 2 went out: it changes nothing.
    d.complete_task(lost.task_id, charge()).unwrap();
    assert!(d.last().ignored.is_some() && d.last().commands.is_empty());

    d.fail(
        CHARGE,
        ActivityError::retryable("card_declined", "the card was declined"),
    )
    .unwrap();
    assert_eq!(
        commands(&d),
        [
            "cancel_timer",
            "cancel_timer",
            "schedule payment.refund#1",
            "start_timer attempt_timeout"
        ],
        "attempt 1 may have charged the card, so the charge is refunded"
    );
    d.complete(CHARGE, json!({"refund_id": "re_1"})).unwrap();
    assert_eq!(
        commands(&d),
        [
            "cancel_timer",
            "schedule inventory.release#1",
            "start_timer attempt_timeout"
        ]
    );
    d.complete(RESERVE, json!({"released": true})).unwrap();
    assert_eq!(d.status(), WorkflowStatus::Compensated);
    assert_eq!(
        d.scheduled_activities(),
        [
            "inventory.reserve",
            "payment.charge",
            "payment.charge",
            "payment.refund",
            "inventory.release"
        ]
    );
    assert_replays(&d, order_saga());
}

/// A worker that reports its attempt may have taken effect (Stripe timed out after the request
/// left) gets the step compensated when the saga gives it up; a plain retryable failure does not.
#[test]
fn a_step_given_up_after_an_attempt_of_unknown_outcome_is_compensated_too() {
    let exhaust = |d: &mut Driver, unknown_at: Option<u32>| {
        for attempt in 1..=5 {
            let error = ActivityError::retryable("stripe_unavailable", "Stripe unavailable");
            let error = if unknown_at == Some(attempt) {
                error.with_outcome_unknown()
            } else {
                error
            };
            d.fail(CHARGE, error).unwrap();
            if attempt < 5 {
                d.fire_next_timer().unwrap();
            }
        }
    };
    let mut d = start();
    d.complete(RESERVE, reservation()).unwrap();
    exhaust(&mut d, Some(2));
    assert!(saga(&d).steps[1].outcome_unknown);
    assert_eq!(
        d.scheduled_activities().last().copied(),
        Some("payment.refund"),
        "attempt 2 may have charged the card, so the charge is refunded"
    );
    d.complete(CHARGE, json!({"refund_id": "re_1"})).unwrap();
    d.complete(RESERVE, json!({"released": true})).unwrap();
    assert_eq!(d.status(), WorkflowStatus::Compensated);
    assert_replays(&d, order_saga());

    let mut d = start();
    d.complete(RESERVE, reservation()).unwrap();
    exhaust(&mut d, None);
    assert!(!saga(&d).steps[1].outcome_unknown);
    assert_eq!(
        d.scheduled_activities().last().copied(),
        Some("inventory.release"),
        "no attempt may have charged: only the reservation is released"
    );
}

#[test]
fn a_duplicate_result_is_recorded_as_ignored() {
    let mut d = start();
    let reserve = d.task(RESERVE).unwrap().task_id;
    d.complete(RESERVE, reservation()).unwrap();
    let before = serde_json::to_value(d.state()).unwrap();
    let seq = d.history().events.len();

    let dup = d.complete_task(reserve, reservation()).unwrap();
    assert!(dup.commands.is_empty());
    assert!(
        dup.ignored
            .as_deref()
            .unwrap()
            .contains(&reserve.to_string())
    );
    assert_eq!(dup.seq as usize, seq + 1, "the duplicate is recorded");
    assert_eq!(serde_json::to_value(d.state()).unwrap(), before);

    // A late failure for the same task is ignored the same way.
    let late = d
        .fail_task(reserve, ActivityError::retryable("timeout", "late"))
        .unwrap();
    assert!(late.ignored.is_some() && late.commands.is_empty());
    assert_eq!(serde_json::to_value(d.state()).unwrap(), before);
    assert_replays(&d, order_saga());
}

#[test]
fn cancel_while_a_step_runs_waits_for_it_then_compensates() {
    let mut d = start();
    d.complete(RESERVE, reservation()).unwrap();
    let rec = d.cancel("user:ada", "changed my mind").unwrap();
    assert!(rec.commands.is_empty() && rec.ignored.is_none());
    assert_eq!(d.status(), WorkflowStatus::Running);
    assert!(saga(&d).reason.as_deref().unwrap().contains("waiting"));

    // The charge that was out succeeds: it must be refunded, and order.create never runs.
    d.complete(CHARGE, charge()).unwrap();
    assert_eq!(
        commands(&d),
        [
            "cancel_timer",
            "cancel_timer",
            "schedule payment.refund#1",
            "start_timer attempt_timeout"
        ]
    );
    assert_eq!(d.status(), WorkflowStatus::Compensating);
    let again = d.cancel("user:ada", "twice");
    assert!(rejected(again).contains("compensating"));

    d.complete(CHARGE, json!({"refund_id": "re_1"})).unwrap();
    d.complete(RESERVE, json!({"released": true})).unwrap();
    assert_eq!(commands(&d), ["cancel_timer", "finish cancelled"]);
    assert_eq!(d.status(), WorkflowStatus::Cancelled);
    assert!(
        saga(&d)
            .reason
            .as_deref()
            .unwrap()
            .starts_with("cancelled by user:ada")
    );
    assert_eq!(
        d.scheduled_activities(),
        [
            "inventory.reserve",
            "payment.charge",
            "payment.refund",
            "inventory.release"
        ]
    );
    assert_replays(&d, order_saga());
}

#[test]
fn cancel_while_a_step_runs_compensates_it_too_if_it_times_out() {
    let mut d = start();
    d.complete(RESERVE, reservation()).unwrap();
    d.cancel("ops:bob", "fraud suspected").unwrap();
    d.fire_next_timer().unwrap(); // the charge's start-to-close timeout
    assert_eq!(
        commands(&d),
        [
            "cancel_timer",
            "schedule payment.refund#1",
            "start_timer attempt_timeout"
        ],
        "no retry after a cancel; the unknown charge is refunded"
    );
    d.complete(CHARGE, json!({"refund_id": "re_1"})).unwrap();
    d.complete(RESERVE, json!({"released": true})).unwrap();
    assert_eq!(d.status(), WorkflowStatus::Cancelled);
    assert_replays(&d, order_saga());
}

#[test]
fn cancel_while_waiting_to_retry_compensates_at_once() {
    let mut d = start();
    d.complete(RESERVE, reservation()).unwrap();
    d.fail(
        CHARGE,
        ActivityError::retryable("unavailable", "stripe 503"),
    )
    .unwrap();
    d.cancel("user:ada", "too slow").unwrap();
    assert_eq!(
        commands(&d),
        [
            "cancel_timer",
            "cancel_timer",
            "schedule inventory.release#1",
            "start_timer attempt_timeout"
        ],
        "the retry timer, the deadline, then the release"
    );
    assert_eq!(d.pending_timers().len(), 1);
    d.complete(RESERVE, json!({"released": true})).unwrap();
    assert_eq!(d.status(), WorkflowStatus::Cancelled);
    assert_replays(&d, order_saga());
}

#[test]
fn cancel_after_the_pivot_is_rejected_and_changes_nothing() {
    let mut d = start();
    through_pivot(&mut d);
    let before = serde_json::to_value(d.state()).unwrap();
    let len = d.history().events.len();
    let why = rejected(d.cancel("user:ada", "too late"));
    assert!(why.contains("pivot"), "{why}");
    assert_eq!(d.history().events.len(), len, "nothing is recorded");
    assert_eq!(serde_json::to_value(d.state()).unwrap(), before);
    d.complete(NOTIFY, json!({"notification_id": "n_1"}))
        .unwrap();
    assert_eq!(d.status(), WorkflowStatus::Completed);
    assert_replays(&d, order_saga());
}

#[test]
fn a_failure_after_the_pivot_retries_forward_forever() {
    let mut d = start();
    through_pivot(&mut d);
    let mut failures = 0;
    let mut deadline_seen = false;
    // Fail every notification until well past max_attempts (5) and past the saga's deadline.
    while !deadline_seen || failures < 12 {
        d.fail(
            NOTIFY,
            ActivityError::retryable("smtp_unavailable", "421 try later"),
        )
        .unwrap();
        failures += 1;
        assert_eq!(
            commands(&d),
            ["cancel_timer", "start_timer retry notify Forward"]
        );
        assert_eq!(d.status(), WorkflowStatus::Running);
        loop {
            let purpose = d.next_timer().unwrap().purpose.clone();
            d.fire_next_timer().unwrap();
            if purpose == TimerPurpose::Deadline {
                deadline_seen = true;
                assert!(d.last().ignored.is_some() && d.last().commands.is_empty());
                continue;
            }
            break;
        }
        assert_eq!(
            commands(&d),
            [
                format!("schedule notification.send#{}", failures + 1),
                "start_timer attempt_timeout".to_owned()
            ]
        );
    }
    let delays: Vec<_> = d
        .history()
        .events
        .iter()
        .flat_map(|e| e.commands.iter().map(move |c| (e.at, c)))
        .filter_map(|(at, c)| match c {
            Command::StartTimer {
                fire_at,
                purpose: TimerPurpose::Retry { .. },
                ..
            } => Some(*fire_at - at),
            _ => None,
        })
        .collect();
    assert!(delays.iter().all(|d| *d <= chrono::Duration::seconds(60)));
    assert!(
        delays.last().unwrap() > &chrono::Duration::seconds(40),
        "backoff grew"
    );

    d.complete(NOTIFY, json!({"notification_id": "n_1"}))
        .unwrap();
    assert_eq!(d.status(), WorkflowStatus::Completed);
    let activities = d.scheduled_activities();
    assert!(
        !activities
            .iter()
            .any(|a| ["inventory.release", "payment.refund", "order.cancel"].contains(a)),
        "nothing is compensated after the pivot"
    );
    assert_eq!(
        activities
            .iter()
            .filter(|a| **a == "notification.send")
            .count(),
        failures + 1
    );
    assert_replays(&d, order_saga());
}

#[test]
fn a_permanent_failure_after_the_pivot_needs_attention_then_retries_forward() {
    let mut d = start();
    through_pivot(&mut d);
    d.fail(
        NOTIFY,
        ActivityError::permanent("bad_address", "no such mailbox"),
    )
    .unwrap();
    assert_eq!(commands(&d), ["cancel_timer", "require_attention"]);
    assert_eq!(d.status(), WorkflowStatus::NeedsAttention);
    rejected(d.cancel("user:ada", "never mind"));

    d.retry("ops:bob", "address fixed").unwrap();
    assert_eq!(
        commands(&d),
        [
            "schedule notification.send#2",
            "start_timer attempt_timeout"
        ]
    );
    assert_eq!(d.status(), WorkflowStatus::Running);
    assert_eq!(
        saga(&d).reason,
        None,
        "the fixed failure is no longer the reason"
    );
    d.complete(NOTIFY, json!({"notification_id": "n_1"}))
        .unwrap();
    assert_eq!(d.status(), WorkflowStatus::Completed);
    assert_eq!(saga(&d).reason, None);
    assert_replays(&d, order_saga());
}

#[test]
fn a_non_retryable_code_compensates_at_once() {
    let mut d = start();
    d.complete(RESERVE, reservation()).unwrap();
    // The worker thinks it may help to retry, but the step's policy names the code.
    d.fail(
        CHARGE,
        ActivityError::retryable("card_declined", "your card was declined"),
    )
    .unwrap();
    assert_eq!(
        commands(&d),
        [
            "cancel_timer",
            "cancel_timer",
            "schedule inventory.release#1",
            "start_timer attempt_timeout"
        ]
    );
    assert_eq!(saga(&d).steps[1].attempts, 1);
    d.complete(RESERVE, json!({"released": true})).unwrap();
    assert_eq!(d.status(), WorkflowStatus::Compensated);
    assert_eq!(
        d.scheduled_activities(),
        ["inventory.reserve", "payment.charge", "inventory.release"]
    );
    assert_replays(&d, order_saga());
}

#[test]
fn terminate_stops_compensates_nothing_and_cancels_timers() {
    let mut d = start();
    d.complete(RESERVE, reservation()).unwrap();
    let charge_task = d.task(CHARGE).unwrap().task_id;
    let pending: Vec<_> = d.pending_timers().iter().map(|t| t.timer_id).collect();
    assert_eq!(
        pending.len(),
        2,
        "the deadline and the charge's attempt timer"
    );

    d.terminate("ops:bob", "duplicate order").unwrap();
    let mut cancelled: Vec<_> = d
        .last()
        .commands
        .iter()
        .filter_map(|c| match c {
            Command::CancelTimer { timer_id } => Some(*timer_id),
            _ => None,
        })
        .collect();
    cancelled.sort();
    let mut expected = pending.clone();
    expected.sort();
    assert_eq!(cancelled, expected);
    assert_eq!(
        d.last().commands.last().map(describe).as_deref(),
        Some("finish terminated")
    );
    assert_eq!(d.status(), WorkflowStatus::Terminated);
    assert!(d.pending_timers().is_empty());

    let late = d.complete_task(charge_task, charge()).unwrap();
    assert!(late.ignored.is_some() && late.commands.is_empty());
    rejected(d.retry("ops:bob", "oops"));
    rejected(d.terminate("ops:bob", "again"));
    rejected(d.signal("note", json!("hi"), "user:ada"));
    assert_eq!(
        d.scheduled_activities(),
        ["inventory.reserve", "payment.charge"],
        "nothing is compensated"
    );
    assert_replays(&d, order_saga());
}

#[test]
fn a_failing_compensation_needs_attention_until_retried_or_resolved() {
    let def = order_saga();
    let max = def.steps[1]
        .compensation
        .as_ref()
        .unwrap()
        .retry
        .max_attempts;
    assert_eq!(max, 10);
    let mut d = start_with(def);
    d.complete(RESERVE, reservation()).unwrap();
    d.complete(CHARGE, charge()).unwrap();
    d.fail(
        CREATE_ORDER,
        ActivityError::permanent("invalid_order", "refused"),
    )
    .unwrap();
    assert_eq!(d.task(CHARGE).unwrap().activity, "payment.refund");

    let refund_fails = |d: &mut Driver| {
        d.fail(
            CHARGE,
            ActivityError::retryable("stripe_unavailable", "503"),
        )
        .unwrap();
    };
    for attempt in 1..max {
        refund_fails(&mut d);
        assert_eq!(
            commands(&d),
            ["cancel_timer", "start_timer retry charge Compensate"]
        );
        d.fire_next_timer().unwrap();
        assert_eq!(
            commands(&d),
            [
                format!("schedule payment.refund#{}", attempt + 1),
                "start_timer attempt_timeout".to_owned()
            ]
        );
    }
    refund_fails(&mut d);
    assert_eq!(commands(&d), ["cancel_timer", "require_attention"]);
    assert_eq!(d.status(), WorkflowStatus::NeedsAttention);
    assert!(
        saga(&d)
            .reason
            .as_deref()
            .unwrap()
            .contains("payment.refund")
    );
    assert!(
        d.pending_timers().is_empty(),
        "nothing will wake it by itself"
    );
    rejected(d.cancel("user:ada", "please"));
    rejected(d.resolve_compensation(RESERVE, "ops:bob", "wrong step"));

    // An operator retries: the budget starts over.
    d.retry("ops:bob", "stripe is back").unwrap();
    assert_eq!(
        commands(&d),
        ["schedule payment.refund#11", "start_timer attempt_timeout"]
    );
    assert_eq!(d.status(), WorkflowStatus::Compensating);
    refund_fails(&mut d);
    assert_eq!(
        commands(&d),
        ["cancel_timer", "start_timer retry charge Compensate"]
    );
    d.fire_next_timer().unwrap();
    d.fail(
        CHARGE,
        ActivityError::permanent("charge_disputed", "refund impossible"),
    )
    .unwrap();
    assert_eq!(commands(&d), ["cancel_timer", "require_attention"]);

    // The refund is done by hand; the saga goes on with the release.
    d.resolve_compensation(CHARGE, "ops:bob", "refunded in the Stripe dashboard")
        .unwrap();
    assert_eq!(
        commands(&d),
        [
            "schedule inventory.release#1",
            "start_timer attempt_timeout"
        ]
    );
    assert_eq!(step_status(&d, CHARGE), StepStatus::Compensated);
    d.complete(RESERVE, json!({"released": true})).unwrap();
    assert_eq!(commands(&d), ["cancel_timer", "finish compensated"]);
    assert_eq!(d.status(), WorkflowStatus::Compensated);
    assert_eq!(
        saga(&d).reason.as_deref(),
        Some(
            "step `create_order` failed: invalid_order: refused; compensation of `charge` \
             resolved by ops:bob: refunded in the Stripe dashboard"
        )
    );
    assert_replays(&d, order_saga());
}

#[test]
fn the_deadline_compensates_before_the_pivot() {
    // A 10 s deadline and a 60 s backoff on charge, so the deadline fires while charge waits.
    let def = || {
        let mut def = order_saga_with(|b| b.deadline(Duration::from_secs(10)));
        def.steps[1].retry.initial_interval = Duration::from_secs(60);
        def
    };
    let mut d = start_with(def());
    d.advance(Duration::from_secs(1));
    d.complete(RESERVE, reservation()).unwrap();
    d.fail(
        CHARGE,
        ActivityError::retryable("unavailable", "stripe 503"),
    )
    .unwrap();
    assert_eq!(
        d.next_timer().unwrap().purpose,
        TimerPurpose::Deadline,
        "the deadline comes before the 60 s backoff"
    );
    d.fire_next_timer().unwrap();
    assert_eq!(
        d.now(),
        orderflow_core::testing::epoch() + chrono::Duration::seconds(10)
    );
    assert_eq!(
        commands(&d),
        [
            "cancel_timer",
            "schedule inventory.release#1",
            "start_timer attempt_timeout"
        ],
        "the retry timer is cancelled and the reservation released"
    );
    d.complete(RESERVE, json!({"released": true})).unwrap();
    assert_eq!(d.status(), WorkflowStatus::Compensated, "not cancelled");
    assert!(saga(&d).reason.as_deref().unwrap().contains("deadline"));
    assert_replays(&d, def());
}

#[test]
fn the_deadline_waits_for_a_running_step() {
    let def = || order_saga_with(|b| b.deadline(Duration::from_secs(5)));
    let mut d = start_with(def());
    assert_eq!(d.next_timer().unwrap().purpose, TimerPurpose::Deadline);
    d.fire_next_timer().unwrap();
    assert!(d.last().commands.is_empty() && d.last().ignored.is_none());
    d.complete(RESERVE, reservation()).unwrap();
    assert_eq!(
        commands(&d),
        [
            "cancel_timer",
            "schedule inventory.release#1",
            "start_timer attempt_timeout"
        ]
    );
    d.complete(RESERVE, json!({"released": true})).unwrap();
    assert_eq!(d.status(), WorkflowStatus::Compensated);
    assert_replays(&d, def());
}

#[test]
fn the_deadline_after_the_pivot_is_ignored() {
    let def = || order_saga_with(|b| b.deadline(Duration::from_secs(5)));
    let mut d = start_with(def());
    through_pivot(&mut d);
    d.fire_next_timer().unwrap();
    assert!(d.last().ignored.is_some() && d.last().commands.is_empty());
    d.complete(NOTIFY, json!({"notification_id": "n_1"}))
        .unwrap();
    assert_eq!(d.status(), WorkflowStatus::Completed);
    assert_replays(&d, def());
}

#[test]
fn signals_are_recorded_and_reach_later_tasks() {
    let mut d = start();
    let rec = d
        .signal("gift_note", json!({"text": "Happy birthday!"}), "user:ada")
        .unwrap();
    assert!(rec.commands.is_empty() && rec.ignored.is_none());
    assert_eq!(
        saga(&d).signals["gift_note"],
        json!({"text": "Happy birthday!"})
    );
    d.complete(RESERVE, reservation()).unwrap();
    assert_eq!(
        d.task(CHARGE).unwrap().payload["signals"]["gift_note"],
        json!({"text": "Happy birthday!"})
    );
    // The latest payload of a signal wins.
    d.signal("gift_note", json!({"text": "Happy 30th!"}), "user:ada")
        .unwrap();
    d.complete(CHARGE, charge()).unwrap();
    assert_eq!(
        d.task(CREATE_ORDER).unwrap().payload["signals"]["gift_note"],
        json!({"text": "Happy 30th!"})
    );
    assert_replays(&d, order_saga());
}

#[test]
fn exhausted_retries_compensate() {
    let def = order_saga();
    let max = def.steps[1].retry.max_attempts;
    let mut d = start_with(def);
    d.complete(RESERVE, reservation()).unwrap();
    for _ in 1..max {
        d.fail(
            CHARGE,
            ActivityError::retryable("unavailable", "stripe 503"),
        )
        .unwrap();
        assert_eq!(
            commands(&d),
            ["cancel_timer", "start_timer retry charge Forward"]
        );
        d.fire_next_timer().unwrap();
    }
    d.fail(
        CHARGE,
        ActivityError::retryable("unavailable", "stripe 503"),
    )
    .unwrap();
    assert_eq!(
        commands(&d),
        [
            "cancel_timer",
            "cancel_timer",
            "schedule inventory.release#1",
            "start_timer attempt_timeout"
        ]
    );
    assert_eq!(saga(&d).steps[1].attempts, max);
    d.complete(RESERVE, json!({"released": true})).unwrap();
    assert_eq!(d.status(), WorkflowStatus::Compensated);
    let activities = d.scheduled_activities();
    assert_eq!(
        activities
            .iter()
            .filter(|a| **a == "payment.charge")
            .count(),
        max as usize
    );
    assert_eq!(activities.last(), Some(&"inventory.release"));
    assert_replays(&d, order_saga());
}

#[test]
fn exhausted_retries_of_the_first_step_compensate_nothing() {
    let mut d = start();
    for _ in 1..5 {
        d.fail(RESERVE, ActivityError::retryable("unavailable", "db down"))
            .unwrap();
        d.fire_next_timer().unwrap();
    }
    d.fail(RESERVE, ActivityError::retryable("unavailable", "db down"))
        .unwrap();
    assert_eq!(
        commands(&d),
        ["cancel_timer", "cancel_timer", "finish compensated"]
    );
    assert_eq!(d.scheduled_activities(), ["inventory.reserve"; 5]);
    assert_replays(&d, order_saga());
}

#[test]
fn retry_now_skips_the_backoff_and_is_refused_when_nothing_waits() {
    let mut d = start();
    rejected(d.retry("ops:bob", "nothing to retry"));
    d.fail(RESERVE, ActivityError::retryable("unavailable", "db down"))
        .unwrap();
    d.retry("ops:bob", "db is back").unwrap();
    assert_eq!(
        commands(&d),
        [
            "cancel_timer",
            "schedule inventory.reserve#2",
            "start_timer attempt_timeout"
        ]
    );
    assert!(
        !d.pending_timers()
            .iter()
            .any(|t| matches!(t.purpose, TimerPurpose::Retry { .. }))
    );
    assert_replays(&d, order_saga());
}

/// A scenario touching every kind of event, run with or without a snapshot round trip between
/// events.
fn eventful(reload: bool) -> Driver {
    let script: [fn(&mut Driver); 11] = [
        |d| {
            d.signal("gift_note", json!("hi"), "user:ada").unwrap();
        },
        |d| {
            d.fail(RESERVE, ActivityError::retryable("unavailable", "x"))
                .unwrap();
        },
        |d| {
            d.fire_next_timer().unwrap(); // reserve's backoff ends
        },
        |d| {
            d.complete(RESERVE, reservation()).unwrap();
        },
        |d| {
            d.fire_next_timer().unwrap(); // charge times out
        },
        |d| {
            d.retry("ops:bob", "now").unwrap();
        },
        |d| {
            d.complete(CHARGE, charge()).unwrap();
        },
        |d| {
            d.fail(CREATE_ORDER, ActivityError::permanent("invalid_order", "x"))
                .unwrap();
        },
        |d| {
            d.fail(CHARGE, ActivityError::permanent("disputed", "x"))
                .unwrap();
        },
        |d| {
            d.resolve_compensation(CHARGE, "ops:bob", "by hand")
                .unwrap();
        },
        |d| {
            d.complete(RESERVE, json!({"released": true})).unwrap();
        },
    ];
    let mut d = start();
    for action in script {
        action(&mut d);
        if reload {
            d.reload_state().expect("the snapshot round-trips");
        }
    }
    d
}

#[test]
fn a_snapshot_round_trips_and_deciding_continues_identically() {
    let plain = eventful(false);
    let reloaded = eventful(true);
    assert_eq!(plain.history(), reloaded.history());
    assert_eq!(plain.status(), WorkflowStatus::Compensated);
    assert_eq!(plain.saga_state(), reloaded.saga_state());

    // The snapshot is tagged with its kind and loads back as a `Box<dyn WorkflowState>`.
    let mut d = start();
    d.complete(RESERVE, reservation()).unwrap();
    let json = serde_json::to_value(d.state()).unwrap();
    assert_eq!(json["kind"], "saga");
    let back: Box<dyn WorkflowState> = serde_json::from_value(json).unwrap();
    assert_eq!(back.as_any().downcast_ref::<SagaState>(), d.saga_state());
    assert_eq!(back.view(), d.state().view());
    assert_replays(&plain, order_saga());
}

#[test]
fn a_compensation_retried_by_an_operator_finishes_with_the_original_reason() {
    let mut d = start();
    d.complete(RESERVE, reservation()).unwrap();
    d.fail(
        CHARGE,
        ActivityError::permanent("insufficient_funds", "no money"),
    )
    .unwrap();
    d.fail(
        RESERVE,
        ActivityError::permanent("db_gone", "table missing"),
    )
    .unwrap();
    assert_eq!(d.status(), WorkflowStatus::NeedsAttention);
    assert!(
        saga(&d)
            .reason
            .as_deref()
            .unwrap()
            .contains("keeps failing")
    );

    d.retry("ops:bob", "table restored").unwrap();
    d.complete(RESERVE, json!({"released": true})).unwrap();
    let Some(Command::Finish { status, reason }) = d.last().commands.last() else {
        panic!("the saga finishes")
    };
    assert_eq!(*status, WorkflowStatus::Compensated);
    assert_eq!(
        reason.as_deref(),
        Some("step `charge` failed: insufficient_funds: no money"),
        "the reason is why it compensated, not the failure an operator fixed"
    );
    assert_replays(&d, order_saga());
}

#[test]
fn cancel_after_the_deadline_started_undoing_is_refused_with_why() {
    let def = || order_saga_with(|b| b.deadline(Duration::from_secs(5)));
    let mut d = start_with(def());
    d.fire_next_timer().unwrap();
    let why = rejected(d.cancel("user:ada", "too slow"));
    assert_eq!(
        why,
        "the saga is already being undone: the saga's deadline passed before its pivot"
    );
    assert_replays(&d, def());
}

fn retry_from(d: &mut Driver, step: &str) -> Result<(), DriveError> {
    d.deliver(orderflow_core::Event::RetryFromStep {
        step: step.to_owned(),
        actor: "ops:bob".to_owned(),
        reason: "reservation data repaired".to_owned(),
    })
    .map(|_| ())
}

#[test]
fn retry_from_an_earlier_step_reruns_it_and_later_ones_with_the_same_keys() {
    let mut d = start();
    d.complete(RESERVE, reservation()).unwrap();
    let first_charge = d.task(CHARGE).unwrap().clone();
    d.fail(
        CHARGE,
        ActivityError::retryable("unavailable", "stripe 503"),
    )
    .unwrap();
    assert_eq!(step_status(&d, CHARGE), StepStatus::Retrying);

    retry_from(&mut d, RESERVE).unwrap();
    assert_eq!(
        commands(&d),
        [
            "cancel_timer",
            "schedule inventory.reserve#2",
            "start_timer attempt_timeout"
        ],
        "the backoff timer goes and the chosen step runs now"
    );
    assert_eq!(step_status(&d, RESERVE), StepStatus::Running);
    assert_eq!(step_status(&d, CHARGE), StepStatus::Pending);
    assert_eq!(saga(&d).steps[0].output, None, "its old output is dropped");
    let rerun = d.task(RESERVE).unwrap().clone();
    assert_eq!(
        rerun.idempotency_key,
        format!("{}/reserve", d.history().workflow_id),
        "a re-run keeps the step's key, so a done effect is not done twice"
    );
    assert_eq!(
        rerun.payload["results"],
        json!({}),
        "later steps' outputs are no longer handed on"
    );

    d.complete(RESERVE, json!({"reservation_id": "res_2"}))
        .unwrap();
    let second_charge = d.task(CHARGE).unwrap().clone();
    assert_eq!(second_charge.attempt, 2);
    assert_eq!(second_charge.idempotency_key, first_charge.idempotency_key);
    assert_eq!(
        second_charge.payload["results"][RESERVE]["reservation_id"],
        "res_2"
    );
    d.complete(CHARGE, charge()).unwrap();
    d.complete(CREATE_ORDER, json!({"status": "confirmed"}))
        .unwrap();
    d.complete(NOTIFY, json!({"notification_id": "n_1"}))
        .unwrap();
    assert_eq!(d.status(), WorkflowStatus::Completed);
    assert_replays(&d, order_saga());
}

#[test]
fn retry_from_a_step_gives_it_a_fresh_retry_budget() {
    let def = || {
        let mut def = order_saga();
        def.steps[1].retry = RetryPolicy {
            max_attempts: 2,
            ..RetryPolicy::default()
        };
        def
    };
    let mut d = start_with(def());
    d.complete(RESERVE, reservation()).unwrap();
    d.fail(CHARGE, ActivityError::retryable("unavailable", "503"))
        .unwrap();
    retry_from(&mut d, CHARGE).unwrap();
    assert_eq!(
        commands(&d),
        [
            "cancel_timer",
            "schedule payment.charge#2",
            "start_timer attempt_timeout"
        ]
    );
    d.fail(CHARGE, ActivityError::retryable("unavailable", "503"))
        .unwrap();
    assert_eq!(
        step_status(&d, CHARGE),
        StepStatus::Retrying,
        "attempt 2 of 3 in all is within the fresh budget of 2"
    );
    d.fire_next_timer().unwrap();
    d.fail(CHARGE, ActivityError::retryable("unavailable", "503"))
        .unwrap();
    assert_eq!(d.status(), WorkflowStatus::Compensating);
    assert_replays(&d, def());
}

#[test]
fn retry_from_a_step_after_the_pivot_repairs_a_saga_that_needs_attention() {
    let mut d = start();
    through_pivot(&mut d);
    d.fail(
        NOTIFY,
        ActivityError::permanent("bad_address", "no such mailbox"),
    )
    .unwrap();
    assert_eq!(d.status(), WorkflowStatus::NeedsAttention);

    retry_from(&mut d, NOTIFY).unwrap();
    assert_eq!(
        commands(&d),
        [
            "schedule notification.send#2",
            "start_timer attempt_timeout"
        ]
    );
    assert_eq!(d.status(), WorkflowStatus::Running);
    assert_eq!(saga(&d).reason, None);
    d.complete(NOTIFY, json!({"notification_id": "n_1"}))
        .unwrap();
    assert_eq!(d.status(), WorkflowStatus::Completed);
    assert_replays(&d, order_saga());
}

#[test]
fn retry_from_a_step_is_refused_when_it_could_break_the_saga() {
    let mut d = start();
    let why = rejected(d.deliver(orderflow_core::Event::RetryFromStep {
        step: RESERVE.into(),
        actor: "ops:bob".into(),
        reason: "x".into(),
    }));
    assert!(why.contains("is out with a worker"), "{why}");
    let events = d.history().events.len();

    d.fail(RESERVE, ActivityError::retryable("unavailable", "db down"))
        .unwrap();
    let why = rejected(d.deliver(orderflow_core::Event::RetryFromStep {
        step: CHARGE.into(),
        actor: "ops:bob".into(),
        reason: "x".into(),
    }));
    assert!(why.contains("not been reached"), "{why}");
    let why = rejected(d.deliver(orderflow_core::Event::RetryFromStep {
        step: "ship".into(),
        actor: "ops:bob".into(),
        reason: "x".into(),
    }));
    assert!(why.contains("no step `ship`"), "{why}");
    assert_eq!(
        d.history().events.len(),
        events + 1,
        "refusals record nothing"
    );

    // Past the pivot, nothing at or before it runs again.
    let mut d = start();
    through_pivot(&mut d);
    d.fail(
        NOTIFY,
        ActivityError::permanent("bad_address", "no mailbox"),
    )
    .unwrap();
    for step in [RESERVE, CREATE_ORDER] {
        let why = rejected(d.deliver(orderflow_core::Event::RetryFromStep {
            step: step.into(),
            actor: "ops:bob".into(),
            reason: "x".into(),
        }));
        assert!(
            why.contains("pivot `create_order` already succeeded"),
            "{why}"
        );
    }

    // A compensating saga has decided to undo.
    let mut d = start();
    d.complete(RESERVE, reservation()).unwrap();
    d.fail(CHARGE, ActivityError::permanent("card_declined", "no"))
        .unwrap();
    assert_eq!(d.status(), WorkflowStatus::Compensating);
    let why = rejected(d.deliver(orderflow_core::Event::RetryFromStep {
        step: RESERVE.into(),
        actor: "ops:bob".into(),
        reason: "x".into(),
    }));
    assert!(why.contains("being undone"), "{why}");

    // A finished saga stays finished.
    let mut d = start();
    d.terminate("ops:bob", "test").unwrap();
    let why = rejected(d.deliver(orderflow_core::Event::RetryFromStep {
        step: RESERVE.into(),
        actor: "ops:bob".into(),
        reason: "x".into(),
    }));
    assert!(why.contains("already terminated"), "{why}");
}
