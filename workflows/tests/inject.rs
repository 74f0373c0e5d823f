//! Failure-injection replay over the recorded corpus: whatever a recorded order saga did, had
//! `payment.charge` failed for good at that point, the saga compensates with exactly
//! `inventory.release` and ends `compensated`; had `order.create` (the pivot) failed, it refunds
//! then releases.

use orderflow_core::{
    ActivityError, WorkflowStatus,
    inject::{InjectError, replay_with_failure},
};
use orderflow_workflows::replay::read_history;

fn corpus() -> Vec<(String, orderflow_core::History)> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/histories");
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .expect("the corpus directory exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            (
                p.display().to_string(),
                read_history(&p).expect("a history"),
            )
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(out.len() >= 5, "the corpus holds the recorded histories");
    out
}

#[test]
fn a_declined_charge_compensates_with_exactly_the_release_in_every_history() {
    let registry = orderflow_workflows::registry();
    let mut injected = 0;
    for (file, history) in corpus() {
        let declined = ActivityError::permanent("card_declined", "injected");
        match replay_with_failure(&registry, &history, "payment.charge", declined) {
            Ok(out) => {
                assert_eq!(out.status, WorkflowStatus::Compensated, "{file}");
                assert_eq!(out.scheduled_after, ["inventory.release"], "{file}");
                injected += 1;
            }
            // A saga cancelled before its charge was ever scheduled has nothing to inject into.
            Err(InjectError::NotReached(_)) => {}
            Err(e) => panic!("{file}: {e}"),
        }
    }
    assert!(
        injected >= 4,
        "most recorded sagas reached the charge ({injected})"
    );
}

#[test]
fn a_failing_pivot_refunds_then_releases() {
    let registry = orderflow_workflows::registry();
    let (file, history) = corpus()
        .into_iter()
        .find(|(f, _)| f.ends_with("completed.json"))
        .unwrap();
    let out = replay_with_failure(
        &registry,
        &history,
        "order.create",
        ActivityError::permanent("invalid_order", "injected"),
    )
    .unwrap_or_else(|e| panic!("{file}: {e}"));
    assert_eq!(out.status, WorkflowStatus::Compensated);
    assert_eq!(out.scheduled_after, ["payment.refund", "inventory.release"]);
    // The injected run is itself a valid history of today's code.
    orderflow_core::replay(&registry, &out.history).expect("the injected run replays");
}

#[test]
fn a_failure_after_the_pivot_never_compensates() {
    let registry = orderflow_workflows::registry();
    let (_, history) = corpus()
        .into_iter()
        .find(|(f, _)| f.ends_with("completed.json"))
        .unwrap();
    let out = replay_with_failure(
        &registry,
        &history,
        "notification.send",
        ActivityError::retryable("smtp_down", "injected"),
    )
    .expect("injects");
    assert_eq!(out.status, WorkflowStatus::Completed);
    assert_eq!(
        out.scheduled_after,
        ["notification.send"],
        "retried forward only"
    );
}

#[test]
fn an_activity_the_saga_never_reached_is_reported() {
    let registry = orderflow_workflows::registry();
    let (_, history) = corpus()
        .into_iter()
        .find(|(f, _)| f.ends_with("completed.json"))
        .unwrap();
    let err = replay_with_failure(
        &registry,
        &history,
        "fraud.check",
        ActivityError::permanent("x", "y"),
    )
    .unwrap_err();
    assert!(matches!(err, InjectError::NotReached(a) if a == "fraud.check"));
}
