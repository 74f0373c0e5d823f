//! A result that arrives for an attempt the saga stopped waiting for still tells the truth: the
//! step took effect. Found by the deterministic simulation (seed 57): a charge attempt failed
//! transiently, was redelivered to a worker and succeeded; the saga was cancelled during the
//! backoff and, believing the charge never happened, did not refund it.

use orderflow_core::{
    ActivityError, Command, SagaDefinition, Step, WorkflowStatus, testing::Driver,
};
use serde_json::json;

fn saga() -> SagaDefinition {
    SagaDefinition::builder("order", 1)
        .step(
            Step::compensatable("reserve", "inventory.reserve")
                .compensate_with("inventory.release"),
        )
        .step(Step::compensatable("charge", "payment.charge").compensate_with("payment.refund"))
        .step(Step::pivot("create_order", "order.create"))
        .build()
        .expect("valid")
}

fn scheduled_since(run: &Driver, from: usize) -> Vec<String> {
    run.history().events[from..]
        .iter()
        .flat_map(|e| &e.commands)
        .filter_map(|c| match c {
            Command::ScheduleActivity(s) => Some(s.activity.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_late_success_during_backoff_is_compensated_when_the_saga_is_cancelled() {
    let mut run = Driver::builder(saga()).start(json!({})).expect("starts");
    run.complete("reserve", json!({})).expect("reserve");
    let attempt1 = run.task("charge").expect("charge is out").task_id;
    run.fail("charge", ActivityError::retryable("unavailable", "503"))
        .expect("fails");
    // The same task, redelivered, succeeded after all.
    let late = run
        .complete_task(attempt1, json!({"payment_intent_id": "pi_1"}))
        .expect("delivered");
    assert!(late.commands.is_empty());
    assert!(
        late.ignored
            .as_deref()
            .unwrap_or_default()
            .contains("took effect"),
        "{late:?}"
    );
    let mark = run.history().events.len();
    run.cancel("operator", "customer asked")
        .expect("cancel accepted");
    for _ in 0..2 {
        let task = run
            .pending_tasks()
            .last()
            .expect("a compensation is out")
            .task_id;
        run.complete_task(task, json!({}))
            .expect("compensation completes");
    }
    assert_eq!(
        scheduled_since(&run, mark),
        ["payment.refund", "inventory.release"]
    );
    assert_eq!(run.status(), WorkflowStatus::Cancelled);
}

#[test]
fn a_late_success_after_the_saga_compensated_reopens_it_to_undo_that_step() {
    let mut run = Driver::builder(saga()).start(json!({})).expect("starts");
    run.complete("reserve", json!({})).expect("reserve");
    let attempt1 = run.task("charge").expect("charge is out").task_id;
    run.fail("charge", ActivityError::permanent("card_declined", "no"))
        .expect("declined");
    run.complete("reserve", json!({}))
        .expect("release completes");
    assert_eq!(run.status(), WorkflowStatus::Compensated);
    let mark = run.history().events.len();
    run.complete_task(attempt1, json!({}))
        .expect("the late success is recorded");
    assert_eq!(run.status(), WorkflowStatus::Compensating);
    run.complete("charge", json!({})).expect("refund completes");
    assert_eq!(scheduled_since(&run, mark), ["payment.refund"]);
    assert_eq!(run.status(), WorkflowStatus::Compensated);
    orderflow_core::replay(&orderflow_core::Registry::new().with(saga()), run.history())
        .expect("the reopened run replays");
}

#[test]
fn a_late_result_for_a_settled_step_changes_nothing() {
    let mut run = Driver::builder(saga()).start(json!({})).expect("starts");
    let attempt1 = run.task("reserve").expect("out").task_id;
    run.complete("reserve", json!({})).expect("reserve");
    let dup = run.complete_task(attempt1, json!({})).expect("recorded");
    assert!(dup.commands.is_empty());
    assert!(
        dup.ignored
            .as_deref()
            .unwrap_or_default()
            .contains("settled")
    );
    assert_eq!(run.status(), WorkflowStatus::Running);
}
