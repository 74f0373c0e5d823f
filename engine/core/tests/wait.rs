//! Wait steps: a saga step that waits for a named signal until a timeout. Each scenario drives a
//! return-like saga through the in-memory [`Driver`], checks the commands answered, round-trips
//! the snapshot where the engine would, and replays the recorded history.

use std::time::Duration;

use orderflow_core::{
    Command, DecideError, DefinitionError, Registry, SagaDefinition, Step, StepKind, StepStatus,
    TimerPurpose, WorkflowDefinition, WorkflowStatus, replay,
    testing::{Driver, epoch},
};
use serde_json::json;

const PARCEL: &str = "parcel_received";
const DAYS_14: Duration = Duration::from_secs(14 * 24 * 3600);

/// open (compensatable) → await parcel (wait) → refund (pivot) → notify (retriable).
fn returns() -> SagaDefinition {
    SagaDefinition::builder("return", 1)
        .step(
            Step::compensatable("open", "order.open_return").compensate_with("order.expire_return"),
        )
        .step(Step::wait("await_parcel", PARCEL, DAYS_14))
        .step(Step::pivot("refund", "payment.refund_return"))
        .step(Step::retriable("notify", "notification.send"))
        .build()
        .expect("a valid saga with a wait")
}

fn replays(run: &Driver, def: SagaDefinition) {
    let registry = Registry::new().with(def);
    let state = replay(&registry, run.history()).expect("the recorded history replays");
    assert_eq!(state.status(), run.status());
}

/// A wait's timer is pending.
fn waits(run: &Driver) -> bool {
    run.pending_timers()
        .iter()
        .any(|t| matches!(t.purpose, TimerPurpose::SignalTimeout { .. }))
}

fn timer_purposes(commands: &[Command]) -> Vec<TimerPurpose> {
    commands
        .iter()
        .filter_map(|c| match c {
            Command::StartTimer { purpose, .. } => Some(purpose.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_wait_starts_a_timer_and_the_signal_completes_it_with_its_payload() {
    let mut run = Driver::builder(returns())
        .start(json!({"order_id": 7}))
        .unwrap();
    run.advance(Duration::from_secs(1));
    let ev = run.complete("open", json!({"return_id": "r1"})).unwrap();
    // Reaching the wait schedules no task: only the timer of its timeout.
    assert!(
        !ev.commands
            .iter()
            .any(|c| matches!(c, Command::ScheduleActivity(_)))
    );
    assert_eq!(
        timer_purposes(&ev.commands),
        [TimerPurpose::SignalTimeout {
            step: "await_parcel".into(),
            signal: PARCEL.into(),
        }]
    );
    let until = epoch() + chrono::Duration::seconds(1) + chrono::Duration::days(14);
    assert_eq!(run.next_timer().unwrap().fire_at, until);
    let mut view = run.state().view();
    returns().describe(&mut view);
    assert_eq!(view.steps[1].status, StepStatus::Waiting);
    assert_eq!(view.steps[1].kind, "wait");
    let waiting = view.steps[1]
        .waiting_for
        .as_ref()
        .expect("says what it waits for");
    assert_eq!((waiting.signal.as_str(), waiting.until), (PARCEL, until));

    // The engine snapshots the state between events: the wait survives it (a crash).
    run.reload_state().unwrap();
    run.advance(Duration::from_secs(3 * 24 * 3600));
    // Another signal is recorded but does not end the wait.
    run.signal("note", json!({"text": "hi"}), "ops").unwrap();
    assert_eq!(
        run.saga_state().unwrap().steps[1].status,
        StepStatus::Waiting
    );
    let ev = run
        .signal(PARCEL, json!({"condition": "intact"}), "warehouse")
        .unwrap();
    assert!(
        matches!(ev.commands[0], Command::CancelTimer { .. }),
        "{:?}",
        ev.commands
    );
    assert!(!waits(&run));
    let refund = run.task("refund").expect("the refund is scheduled");
    assert_eq!(
        refund.payload["results"]["await_parcel"],
        json!({"condition": "intact"})
    );
    run.complete("refund", json!({})).unwrap();
    run.complete("notify", json!({})).unwrap();
    assert_eq!(run.status(), WorkflowStatus::Completed);
    let saga = run.saga_state().unwrap();
    assert_eq!(saga.steps[1].output, Some(json!({"condition": "intact"})));
    assert_eq!(saga.steps[1].wait_until, None);
    replays(&run, returns());
}

#[test]
fn a_wait_that_times_out_before_the_pivot_compensates_what_was_done() {
    let mut run = Driver::builder(returns()).start(json!({})).unwrap();
    run.complete("open", json!({})).unwrap();
    run.reload_state().unwrap();
    let ev = run.fire_next_timer().unwrap();
    assert_eq!(ev.at, epoch() + chrono::Duration::days(14));
    assert_eq!(run.status(), WorkflowStatus::Compensating);
    assert_eq!(run.task("open").unwrap().activity, "order.expire_return");
    let saga = run.saga_state().unwrap();
    assert_eq!(saga.steps[1].status, StepStatus::Failed);
    assert_eq!(
        saga.steps[1].last_error.as_ref().unwrap().code,
        "signal_timeout"
    );
    run.complete("open", json!({})).unwrap();
    assert_eq!(run.status(), WorkflowStatus::Compensated);
    let reason = run.saga_state().unwrap().reason.clone().unwrap();
    assert!(
        reason.contains("await_parcel") && reason.contains(PARCEL),
        "{reason}"
    );
    assert_eq!(
        run.scheduled_activities(),
        ["order.open_return", "order.expire_return"]
    );
    // The parcel turning up afterwards changes nothing.
    let err = run.signal(PARCEL, json!({}), "warehouse").unwrap_err();
    assert!(err.to_string().contains("already compensated"), "{err}");
    replays(&run, returns());
}

#[test]
fn a_signal_that_arrived_before_the_wait_completes_it_at_once() {
    let mut run = Driver::builder(returns()).start(json!({})).unwrap();
    run.signal(PARCEL, json!({"early": true}), "warehouse")
        .unwrap();
    let ev = run.complete("open", json!({})).unwrap();
    assert!(
        timer_purposes(&ev.commands)
            .iter()
            .all(|p| !matches!(p, TimerPurpose::SignalTimeout { .. }))
    );
    assert_eq!(
        run.task("refund").unwrap().activity,
        "payment.refund_return"
    );
    replays(&run, returns());
}

#[test]
fn a_late_timeout_after_the_signal_is_ignored_and_cancel_while_waiting_compensates() {
    let mut run = Driver::builder(returns()).start(json!({})).unwrap();
    run.complete("open", json!({})).unwrap();
    let timer = run.next_timer().unwrap().timer_id;
    run.signal(PARCEL, json!({}), "warehouse").unwrap();
    // A timer row the engine had claimed before the cancel committed may still fire.
    let ev = run
        .deliver(orderflow_core::Event::TimerFired { timer_id: timer })
        .unwrap();
    assert!(ev.ignored.is_some() && ev.commands.is_empty());

    let mut run = Driver::builder(returns()).start(json!({})).unwrap();
    run.complete("open", json!({})).unwrap();
    let ev = run.cancel("customer", "changed my mind").unwrap();
    assert!(
        ev.commands
            .iter()
            .any(|c| matches!(c, Command::CancelTimer { .. })),
        "the wait's timer goes: {:?}",
        ev.commands
    );
    assert!(!waits(&run));
    run.complete("open", json!({})).unwrap();
    assert_eq!(run.status(), WorkflowStatus::Cancelled);
    replays(&run, returns());
}

#[test]
fn a_wait_after_the_pivot_that_times_out_needs_an_operator_whose_retry_waits_again() {
    let def = || {
        SagaDefinition::builder("pickup", 1)
            .step(Step::pivot("book", "courier.book"))
            .step(Step::wait(
                "await_pickup",
                "picked_up",
                Duration::from_secs(3600),
            ))
            .step(Step::retriable("notify", "notification.send"))
            .build()
            .unwrap()
    };
    let mut run = Driver::builder(def()).start(json!({})).unwrap();
    run.complete("book", json!({})).unwrap();
    run.fire_next_timer().unwrap();
    assert_eq!(run.status(), WorkflowStatus::NeedsAttention);
    // The courier shows up late: recorded, and the operator's retry finds it.
    run.signal("picked_up", json!({"by": "dhl"}), "courier")
        .unwrap();
    assert_eq!(run.status(), WorkflowStatus::NeedsAttention);
    run.retry("ops", "courier came").unwrap();
    assert_eq!(run.status(), WorkflowStatus::Running);
    assert_eq!(run.task("notify").unwrap().activity, "notification.send");
    run.complete("notify", json!({})).unwrap();
    assert_eq!(run.status(), WorkflowStatus::Completed);
    replays(&run, def());
}

#[test]
fn a_wait_step_is_checked_when_built_and_runs_no_activity() {
    let def = returns();
    assert_eq!(def.steps[1].kind, StepKind::Wait);
    assert_eq!(
        WorkflowDefinition::activities(&def),
        [
            "order.open_return",
            "order.expire_return",
            "payment.refund_return",
            "notification.send"
        ]
    );
    let err = SagaDefinition::builder("t", 1)
        .step(Step::wait("w", "s", Duration::ZERO))
        .build()
        .unwrap_err();
    assert_eq!(err, DefinitionError::ZeroTimeout("w".into()));
    let mut bad = Step::wait("w", "s", Duration::from_secs(1));
    bad.activity = "x.y".into();
    let err = SagaDefinition::builder("t", 1)
        .step(bad)
        .build()
        .unwrap_err();
    assert_eq!(err, DefinitionError::WaitWithActivity("w".into()));
    // A definition without waits keeps the fingerprint it had before waits existed.
    let plain = SagaDefinition::builder("t", 1)
        .step(Step::pivot("p", "a.b"))
        .build()
        .unwrap();
    assert!(!format!("{:?}", plain.steps[0]).contains("wait"));
}

#[test]
fn a_signal_to_a_finished_saga_is_refused() {
    let mut run = Driver::builder(returns()).start(json!({})).unwrap();
    run.terminate("ops", "test").unwrap();
    assert!(matches!(
        run.signal(PARCEL, json!({}), "w"),
        Err(orderflow_core::testing::DriveError::Decide(
            DecideError::Rejected(_)
        ))
    ));
}
