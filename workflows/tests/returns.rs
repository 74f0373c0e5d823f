//! The return saga: its recorded histories replay against today's definition, a changed wait is
//! caught by replay, and failures injected into the recorded runs take the paths the saga's table
//! promises (before the pivot the customer is told the return expired; after it, only forward).

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use orderflow_core::{
    ActivityError, Registry, ReplayError, SagaState, StepStatus, WorkflowStatus,
    inject::replay_with_failure, testing::Driver,
};
use orderflow_workflows::{
    registry,
    replay::{ReplayDirError, read_history, replay_dir, replay_file},
    returns::{
        self, AWAIT_PARCEL, PARCEL_WAIT,
        contracts::{
            INVENTORY_RESTOCK, NOTIFICATION_RETURN_EXPIRED, NOTIFICATION_RETURN_INSTRUCTIONS,
            NOTIFICATION_RETURN_REFUNDED, PARCEL_RECEIVED, PAYMENT_REFUND_RETURN,
        },
    },
};
use serde_json::json;

fn histories() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/histories/returns")
}

fn history(name: &str) -> PathBuf {
    histories().join(format!("{name}.json"))
}

fn saga(state: &dyn orderflow_core::WorkflowState) -> &SagaState {
    state.as_any().downcast_ref().unwrap()
}

#[test]
fn recorded_return_histories_replay_and_end_as_named() {
    assert_eq!(replay_dir(&registry(), histories()).unwrap(), 3);
    let registry = registry();
    let done = replay_file(&registry, history("return_completed")).unwrap();
    assert_eq!(done.status(), WorkflowStatus::Completed);
    assert_eq!(
        saga(done.as_ref()).steps[1].output,
        Some(json!({"received_by": "warehouse:berlin-1"}))
    );
    let expired = replay_file(&registry, history("return_expired")).unwrap();
    assert_eq!(expired.status(), WorkflowStatus::Compensated);
    let s = saga(expired.as_ref());
    assert_eq!(
        s.steps[0].status,
        StepStatus::Compensated,
        "the customer was told"
    );
    assert_eq!(
        s.steps[1].last_error.as_ref().unwrap().code,
        "signal_timeout"
    );
    let retried = replay_file(&registry, history("return_refund_retried_then_completed")).unwrap();
    assert_eq!(retried.status(), WorkflowStatus::Completed);
    assert_eq!(saga(retried.as_ref()).steps[2].attempts, 3);
}

#[test]
fn the_expired_return_waited_exactly_fourteen_days() {
    let h = read_history(history("return_expired")).unwrap();
    let reached = h.events[1].at; // the instructions' completion started the wait
    let fired = h.events[2].at;
    assert_eq!((fired - reached).to_std().unwrap(), PARCEL_WAIT);
}

#[test]
fn a_shorter_wait_in_the_deployed_version_is_caught_by_replay() {
    let registry = Registry::new().with(returns::v1_waiting(Duration::from_secs(7 * 24 * 3600)));
    let err = replay_dir(&registry, histories()).unwrap_err();
    match err {
        ReplayDirError::Replay {
            path,
            source:
                ReplayError::Nondeterminism {
                    seq, recorded, new, ..
                },
        } => {
            assert_eq!(path, history("return_completed"));
            assert_eq!(seq, 2, "the instructions' completion started the wait");
            assert!(
                recorded.to_string().contains("signal_timeout"),
                "{recorded}"
            );
            assert_ne!(recorded, new);
        }
        other => panic!("expected a nondeterminism error, got {other}"),
    }
}

#[test]
fn a_refund_that_fails_for_good_tells_the_customer_the_return_failed() {
    let registry = registry();
    for name in ["return_completed", "return_refund_retried_then_completed"] {
        let h = read_history(history(name)).unwrap();
        let out = replay_with_failure(
            &registry,
            &h,
            PAYMENT_REFUND_RETURN,
            ActivityError::permanent("charge_not_found", "injected"),
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(out.status, WorkflowStatus::Compensated, "{name}");
        assert_eq!(out.scheduled_after, [NOTIFICATION_RETURN_EXPIRED], "{name}");
        orderflow_core::replay(&registry, &out.history).expect("the injected run replays");
    }
}

#[test]
fn after_the_refund_a_failing_restock_is_retried_and_never_compensates() {
    let registry = registry();
    let h = read_history(history("return_completed")).unwrap();
    let out = replay_with_failure(
        &registry,
        &h,
        INVENTORY_RESTOCK,
        ActivityError::retryable("unavailable", "injected"),
    )
    .unwrap();
    assert_eq!(out.status, WorkflowStatus::Completed);
    assert_eq!(
        out.scheduled_after,
        [INVENTORY_RESTOCK, NOTIFICATION_RETURN_REFUNDED]
    );
    let out = replay_with_failure(
        &registry,
        &h,
        INVENTORY_RESTOCK,
        ActivityError::permanent("unknown_product", "injected"),
    )
    .unwrap();
    assert_eq!(
        out.status,
        WorkflowStatus::NeedsAttention,
        "money went back: no undo"
    );
    assert!(out.scheduled_after.is_empty(), "{:?}", out.scheduled_after);
}

#[test]
fn failing_instructions_end_the_return_before_it_waits() {
    let registry = registry();
    let h = read_history(history("return_completed")).unwrap();
    let out = replay_with_failure(
        &registry,
        &h,
        NOTIFICATION_RETURN_INSTRUCTIONS,
        ActivityError::permanent("invalid_recipient", "injected"),
    )
    .unwrap();
    assert_eq!(out.status, WorkflowStatus::Compensated);
    assert!(
        out.scheduled_after.is_empty(),
        "nothing was sent, nothing to take back"
    );
}

/// Simulation: every interleaving of the parcel's arrival with the refund's failures and the
/// wait's timeout, over many seeded runs, ends in one of the two outcomes the table allows, and
/// every run's history replays.
#[test]
fn simulated_returns_end_refunded_or_expired_and_replay() {
    let mut rng = 0x5eed_u64;
    let mut next = |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let (mut refunded, mut expired) = (0, 0);
    for _ in 0..300 {
        let mut run = Driver::builder(returns::v1_waiting(Duration::from_secs(3600)))
            .start(json!({
                "order_id": "01977c2e-5a40-7d1e-9c3b-6f2a1e4b8001",
                "order_workflow_id": "01977c2e-5a40-7000-8000-000000000001",
                "user_id": "01977c2e-1f00-7a3c-8b5d-2c9e4f6a7b01",
                "items": [{"product_id": "sku-milk-frother", "quantity": 1}],
                "total": {"amount_minor": 2999, "currency": "EUR"},
                "email": "ada.lovelace@example.com"
            }))
            .unwrap();
        let parcel_after = next(4); // 0..=2: after that many events; 3: never
        let mut events = 0;
        while !run.status().is_terminal() && run.status() != WorkflowStatus::NeedsAttention {
            if events == parcel_after {
                run.signal(PARCEL_RECEIVED, json!({"received_by": "sim"}), "sim")
                    .unwrap();
            }
            events += 1;
            if let Some(task) = run.pending_tasks().last().cloned() {
                run.advance(Duration::from_millis(next(2000)));
                if next(4) == 0 {
                    run.fail_task(task.task_id, ActivityError::retryable("flaky", "sim"))
                        .unwrap();
                } else {
                    run.complete_task(task.task_id, json!({})).unwrap();
                }
            } else {
                run.fire_next_timer().unwrap();
            }
            assert!(events < 500, "runaway");
        }
        let s = run.saga_state().unwrap();
        match run.status() {
            WorkflowStatus::Completed => {
                refunded += 1;
                assert_eq!(s.steps[1].status, StepStatus::Completed);
            }
            // The instructions could not be sent (their retries ran out): nothing to take back.
            WorkflowStatus::Compensated if s.steps[0].status == StepStatus::Failed => {
                assert_eq!(s.steps[1].status, StepStatus::Pending);
                assert!(
                    !run.scheduled_activities()
                        .contains(&NOTIFICATION_RETURN_EXPIRED)
                );
            }
            WorkflowStatus::Compensated => {
                let failed: Vec<&str> = s
                    .steps
                    .iter()
                    .filter(|st| st.status == StepStatus::Failed)
                    .map(|st| st.name.as_str())
                    .collect();
                // The wait expired, or (rarely) the refund failed for good after the parcel came.
                assert!(
                    failed == [AWAIT_PARCEL] || failed == ["refund"],
                    "{failed:?}"
                );
                if failed == [AWAIT_PARCEL] {
                    expired += 1;
                    assert!(!run.scheduled_activities().contains(&PAYMENT_REFUND_RETURN));
                }
                assert_eq!(
                    s.steps[0].status,
                    StepStatus::Compensated,
                    "the customer is told"
                );
                assert!(
                    run.scheduled_activities()
                        .contains(&NOTIFICATION_RETURN_EXPIRED)
                );
            }
            other => panic!("a return ended {other}"),
        }
        let def = Registry::new().with(returns::v1_waiting(Duration::from_secs(3600)));
        orderflow_core::replay(&def, run.history()).expect("a simulated run replays");
    }
    assert!(
        refunded > 50 && expired > 20,
        "{refunded} refunded, {expired} expired"
    );
}
