//! Micro-benchmarks of the engine's CPU path around one state change, without any I/O:
//!
//! - `decide/*`: the pure decider on the order saga (one event; a whole saga of five events);
//! - `decide_at_length/*`: one event decided on a state that has already seen 10 or 1,000
//!   events: the cost of a step must not grow with the history, because the engine decides on the
//!   snapshot, never on the history;
//! - `snapshot/*`: what the apply loop pays per event around the decider: loading the typetag
//!   snapshot from JSON and writing it back;
//! - `replay/*`: replaying a recorded history of 5 and of 1,000 events (what `cargo test` does
//!   with `workflows/tests/histories/` and `orderflow replay` with an exported history).
//!
//! `cargo bench -p orderflow-engine --bench decider`; figures are in `docs/benchmarks.md`.

use std::{hint::black_box, sync::Arc};

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use orderflow_core::{
    ActivityError, Event, History, Registry, WorkflowDefinition, WorkflowState,
    testing::{Driver, epoch},
};
use serde_json::{Value, json};

fn input() -> Value {
    json!({
        "order_id": "0195f0a4-0000-7000-8000-000000000042",
        "user_id": "0195f0a4-0000-7000-8000-0000000000aa",
        "items": [{ "product_id": "sku-1", "quantity": 2 }],
        "total": { "amount_minor": 2599, "currency": "EUR" },
        "payment_method": "pm_card_visa",
        "email": "buyer@example.com"
    })
}

fn definition() -> Arc<dyn WorkflowDefinition> {
    Arc::new(orderflow_workflows::order::v1())
}

/// The order saga run to completion: started, then each of its four steps completed.
fn completed_run() -> Driver {
    let mut run = Driver::for_definition(definition())
        .start(input())
        .expect("the input is valid");
    for step in ["reserve", "charge", "create_order", "notify"] {
        run.complete(step, json!({ "ok": true }))
            .expect("the step has a task out");
    }
    run
}

/// A saga whose notification keeps failing (a retriable step retries forever), until its history
/// holds `events` events: started, three steps completed, then failure and backoff timer in turn.
fn long_run(events: usize) -> Driver {
    let mut run = Driver::for_definition(definition())
        .start(input())
        .expect("the input is valid");
    for step in ["reserve", "charge", "create_order"] {
        run.complete(step, json!({ "ok": true }))
            .expect("the step has a task out");
    }
    while run.history().events.len() < events {
        if run.task("notify").is_some() {
            run.fail(
                "notify",
                ActivityError::retryable("smtp", "the server is down"),
            )
            .expect("the notification has a task out");
        } else {
            run.fire_next_timer().expect("a backoff timer is pending");
        }
    }
    run
}

/// The next event of a [`long_run`], which is always a notification failure or a timer firing.
fn next_event(run: &Driver) -> Event {
    match run.task("notify") {
        Some(task) => Event::ActivityFailed {
            task_id: task.task_id,
            error: ActivityError::retryable("smtp", "the server is down"),
        },
        None => Event::TimerFired {
            timer_id: run.next_timer().expect("a timer is pending").timer_id,
        },
    }
}

fn registry() -> Registry {
    Registry::new().with(orderflow_workflows::order::v1())
}

fn decide(c: &mut Criterion) {
    let def = definition();
    let history = completed_run().into_history();
    let mut g = c.benchmark_group("decide");
    g.bench_function("start", |b| {
        b.iter(|| def.start(history.workflow_id, black_box(&input()), epoch()))
    });
    g.bench_function("whole_saga_5_events", |b| {
        let (_, rest) = history.events.split_first().expect("a started history");
        b.iter_batched(
            || {
                def.start(history.workflow_id, &input(), epoch())
                    .expect("starts")
                    .0
            },
            |mut state| {
                for e in rest {
                    let d = def
                        .decide(state.as_mut(), &e.event, e.at)
                        .expect("the recorded event is accepted");
                    black_box(d);
                }
                state
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn decide_at_length(c: &mut Criterion) {
    let def = definition();
    let mut g = c.benchmark_group("decide_at_length");
    for len in [10, 1000] {
        let run = long_run(len);
        let event = next_event(&run);
        let state = run.state().clone_box();
        g.bench_function(format!("{len}_events"), |b| {
            b.iter_batched(
                || state.clone_box(),
                |mut s| {
                    let d = def.decide(s.as_mut(), &event, run.now());
                    (s, d)
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

fn snapshot(c: &mut Criterion) {
    let run = completed_run();
    let json = serde_json::to_value(run.state()).expect("serializes");
    let mut g = c.benchmark_group("snapshot");
    g.bench_function("load", |b| {
        b.iter(|| {
            let s: Box<dyn WorkflowState> =
                serde_json::from_value(black_box(json.clone())).expect("loads");
            s
        })
    });
    g.bench_function("store", |b| {
        b.iter(|| serde_json::to_value(black_box(run.state())).expect("serializes"))
    });
    g.finish();
}

fn replay(c: &mut Criterion) {
    let registry = registry();
    let short = completed_run().into_history();
    let long: History = long_run(1000).into_history();
    assert_eq!(long.events.len(), 1000);
    let mut g = c.benchmark_group("replay");
    g.bench_function("5_events", |b| {
        b.iter(|| orderflow_core::replay(&registry, black_box(&short)).expect("replays"))
    });
    g.bench_function("1000_events", |b| {
        b.iter(|| orderflow_core::replay(&registry, black_box(&long)).expect("replays"))
    });
    g.finish();
}

criterion_group!(benches, decide, decide_at_length, snapshot, replay);
criterion_main!(benches);
