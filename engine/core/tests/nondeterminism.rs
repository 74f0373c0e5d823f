//! What a saga does when the engine finds that its history no longer replays on this deployment:
//! by default it stops for an operator with the mismatch as its reason (it is not retried
//! forever); a definition may choose to fail such sagas instead.

use orderflow_core::{
    Command, Event, NondeterminismPolicy, SagaDefinition, Step, WorkflowStatus, testing::Driver,
};
use serde_json::json;

fn saga(policy: NondeterminismPolicy) -> SagaDefinition {
    SagaDefinition::builder("order", 1)
        .on_nondeterminism(policy)
        .step(
            Step::compensatable("reserve", "inventory.reserve")
                .compensate_with("inventory.release"),
        )
        .step(Step::pivot("charge", "payment.charge"))
        .build()
        .expect("valid")
}

fn detected() -> Event {
    Event::NondeterminismDetected {
        detail: "at event 2 (activity_completed): recorded payment.charge, now risk.check".into(),
    }
}

#[test]
fn by_default_the_saga_waits_for_an_operator_with_the_mismatch() {
    let mut run = Driver::builder(saga(NondeterminismPolicy::default()))
        .start(json!({}))
        .unwrap();
    let rec = run.deliver(detected()).unwrap().clone();
    assert_eq!(run.status(), WorkflowStatus::NeedsAttention);
    assert!(
        matches!(&rec.commands[..], [Command::RequireAttention { reason }] if reason.contains("risk.check"))
    );
    // An operator who accepts today's code retries, and the saga goes on.
    run.retry("ops", "the v1 change is compatible for this saga")
        .unwrap();
    assert_eq!(run.status(), WorkflowStatus::Running);
}

#[test]
fn a_definition_may_fail_such_sagas_instead() {
    let mut run = Driver::builder(saga(NondeterminismPolicy::Fail))
        .start(json!({}))
        .unwrap();
    run.deliver(detected()).unwrap();
    assert_eq!(run.status(), WorkflowStatus::Terminated);
    assert!(
        run.pending_timers().is_empty(),
        "a failed saga keeps no timers"
    );
}

#[test]
fn the_fingerprint_changes_with_behaviour_and_only_then() {
    let a = saga(NondeterminismPolicy::default());
    let b = saga(NondeterminismPolicy::default());
    assert_eq!(a.fingerprint(), b.fingerprint());
    let changed = SagaDefinition::builder("order", 1)
        .step(
            Step::compensatable("reserve", "inventory.reserve")
                .compensate_with("inventory.release"),
        )
        .step(
            Step::pivot("charge", "payment.charge")
                .start_to_close(std::time::Duration::from_secs(5)),
        )
        .build()
        .unwrap();
    assert_ne!(a.fingerprint(), changed.fingerprint());
}
