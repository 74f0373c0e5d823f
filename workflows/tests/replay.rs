//! The recorded order saga histories replay against today's definitions, and a definition that
//! would decide differently is caught, naming the file and the event.

use std::path::{Path, PathBuf};

use orderflow_core::{
    Command, Registry, ReplayError, SagaDefinition, SagaState, Step, WorkflowStatus,
};
use orderflow_workflows::{
    order::{self, CHARGE, RESERVE},
    registry,
    replay::{ReplayDirError, read_history, replay_dir, replay_file},
};

fn histories() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/histories")
}

fn history(name: &str) -> PathBuf {
    histories().join(format!("{name}.json"))
}

/// The seq of the first event whose recorded commands schedule `activity`.
fn seq_scheduling(name: &str, activity: &str) -> u64 {
    read_history(history(name))
        .unwrap()
        .events
        .iter()
        .find(|e| {
            e.commands
                .iter()
                .any(|c| matches!(c, Command::ScheduleActivity(t) if t.activity == activity))
        })
        .expect("the history schedules the activity")
        .seq
}

fn nondeterminism(err: ReplayDirError) -> (PathBuf, u64, String, String) {
    match err {
        ReplayDirError::Replay {
            path,
            source:
                ReplayError::Nondeterminism {
                    seq, recorded, new, ..
                },
        } => (path, seq, recorded.to_string(), new.to_string()),
        other => panic!("expected a nondeterminism error, got {other}"),
    }
}

/// The order saga v1 with `change` applied, registered alone.
fn altered(change: impl FnOnce(&mut SagaDefinition)) -> Registry {
    let mut def = order::v1();
    change(&mut def);
    Registry::new().with(def)
}

#[test]
fn recorded_histories_replay() {
    assert_eq!(replay_dir(&registry(), histories()).unwrap(), 7);
}

#[test]
fn each_history_ends_as_its_name_says() {
    let cases = [
        ("completed", WorkflowStatus::Completed),
        ("compensated_at_charge", WorkflowStatus::Compensated),
        ("retried_then_completed", WorkflowStatus::Completed),
        ("cancelled_while_running", WorkflowStatus::Cancelled),
        (
            "failed_after_pivot_retried_forward",
            WorkflowStatus::Completed,
        ),
        (
            "v3_outage_retried_then_completed",
            WorkflowStatus::Completed,
        ),
        (
            "v3_charge_in_doubt_given_up_and_refunded",
            WorkflowStatus::Compensated,
        ),
    ];
    let registry = registry();
    for (name, status) in cases {
        let state = replay_file(&registry, history(name)).unwrap();
        assert_eq!(state.status(), status, "{name}");
        let saga = state.as_any().downcast_ref::<SagaState>().unwrap();
        let attempts: Vec<u32> = saga.steps.iter().map(|s| s.attempts).collect();
        let compensations: Vec<u32> = saga.steps.iter().map(|s| s.compensation_attempts).collect();
        match name {
            "compensated_at_charge" => assert_eq!(compensations, [1, 0, 0, 0], "{name}"),
            "cancelled_while_running" => assert_eq!(compensations, [1, 1, 0, 0], "{name}"),
            "retried_then_completed" => assert_eq!(attempts, [2, 2, 1, 1], "{name}"),
            "failed_after_pivot_retried_forward" => {
                assert_eq!(attempts, [1, 1, 1, 4], "{name}");
                assert_eq!(
                    compensations, [0; 4],
                    "nothing is compensated after the pivot"
                );
            }
            // v3 retries the charge past the breaker: the seventh attempt goes through.
            "v3_outage_retried_then_completed" => assert_eq!(attempts, [1, 7, 1, 1], "{name}"),
            // Nine attempts, the last without an answer: the charge is refunded, then released.
            "v3_charge_in_doubt_given_up_and_refunded" => {
                assert_eq!(attempts, [1, 9, 0, 0], "{name}");
                assert_eq!(compensations, [1, 1, 0, 0], "{name}");
            }
            _ => assert_eq!(attempts, [1; 4], "{name}"),
        }
    }
}

#[test]
fn a_step_added_before_charge_is_caught_at_the_event_that_scheduled_charge() {
    let registry = altered(|def| {
        def.steps.insert(
            1,
            Step::compensatable("fraud_check", "risk.check").compensate_with("risk.release"),
        );
    });
    let err = replay_file(&registry, history("completed"))
        .map(|_| ())
        .unwrap_err();
    let message = err.to_string();
    let (path, seq, recorded, new) = nondeterminism(err);
    assert_eq!(path, history("completed"));
    assert_eq!(seq, seq_scheduling("completed", "payment.charge"));
    assert_eq!(seq, 2, "reserve's completion scheduled charge");
    assert!(
        recorded.contains("\"activity\":\"payment.charge\""),
        "{recorded}"
    );
    assert!(new.contains("\"activity\":\"risk.check\""), "{new}");
    assert!(
        message.contains("completed.json")
            && message.contains("01977c2e-5a40-7000-8000-000000000001")
            && message.contains("at event 2 (activity_completed)"),
        "{message}"
    );
}

#[test]
fn a_renamed_activity_is_caught_by_replay_dir_naming_the_file() {
    let registry = altered(|def| def.steps[1].activity = "payments.charge".into());
    let err = replay_dir(&registry, histories()).unwrap_err();
    let (path, seq, recorded, new) = nondeterminism(err);
    // Files replay in name order; cancelled_while_running.json comes first.
    assert_eq!(path, history("cancelled_while_running"));
    assert_eq!(
        seq,
        seq_scheduling("cancelled_while_running", "payment.charge")
    );
    assert!(recorded.contains("\"payment.charge\"") && new.contains("\"payments.charge\""));
}

#[test]
fn a_changed_backoff_is_caught_only_where_a_retry_was_recorded() {
    let registry = altered(|def| {
        let reserve = def.steps.iter_mut().find(|s| s.name == RESERVE).unwrap();
        reserve.retry.initial_interval *= 2;
    });
    for name in [
        "completed",
        "compensated_at_charge",
        "cancelled_while_running",
        "failed_after_pivot_retried_forward",
    ] {
        replay_file(&registry, history(name)).unwrap();
    }
    let err = replay_dir(&registry, histories()).unwrap_err();
    let (path, seq, recorded, new) = nondeterminism(err);
    assert_eq!(path, history("retried_then_completed"));
    assert_eq!(seq, 2, "reserve's first failure started the backoff timer");
    assert!(recorded.contains("\"purpose\":\"retry\"") && new.contains("\"purpose\":\"retry\""));
    assert_ne!(recorded, new, "the timer fires at another time");
}

#[test]
fn a_smaller_retry_budget_is_caught() {
    // With one attempt in all, the charge whose start-to-close timeout fired is compensated
    // instead of retried.
    let registry = altered(|def| {
        let charge = def.steps.iter_mut().find(|s| s.name == CHARGE).unwrap();
        charge.retry.max_attempts = 1;
    });
    let err = replay_file(&registry, history("retried_then_completed"))
        .map(|_| ())
        .unwrap_err();
    let (_, seq, recorded, new) = nondeterminism(err);
    assert_eq!(
        seq, 5,
        "the charge's timeout was retried; now it compensates"
    );
    assert!(recorded.contains("\"purpose\":\"retry\""), "{recorded}");
    assert!(new.contains("cancel_timer"), "{new}");
}

#[test]
fn an_unregistered_version_and_an_empty_directory_are_errors() {
    let err = replay_file(&Registry::new(), history("completed"))
        .map(|_| ())
        .unwrap_err();
    assert!(matches!(
        err,
        ReplayDirError::Replay {
            source: ReplayError::UnknownDefinition { version: 1, .. },
            ..
        }
    ));

    let empty = std::env::temp_dir().join(format!("orderflow-no-histories-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    let err = replay_dir(&registry(), &empty).unwrap_err();
    std::fs::remove_dir(&empty).unwrap();
    assert!(
        matches!(err, ReplayDirError::Empty(ref dir) if *dir == empty),
        "{err}"
    );
}
