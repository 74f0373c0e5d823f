//! The wire format as documents a worker in any language can read: the JSON Schema (2020-12) of
//! each message, derived from the Rust types in `orderflow_core::protocol`, with the AMQP
//! envelope it travels in under the extension keyword [`ENVELOPE`] (a JSON Schema validator
//! ignores it; it is for the reader). The files under `protocol/schemas/` are these documents:
//! `queue/tests/wire.rs` fails when they differ from what this build generates, and
//!
//! ```sh
//! cargo run -p orderflow-queue --example protocol_schemas
//! ```
//!
//! writes them again. `docs/protocol.md` explains the rules around them (at-least-once delivery,
//! idempotency keys, acks, errors); `engine/tests/protocol.rs` checks that real messages of the
//! running stack fit both the schemas and the envelope described here.

use orderflow_core::protocol::json_schemas;
use serde_json::{Map, Value, json};

use crate::{TRACEPARENT, Topology, rabbit::PUBLISHED_AT};

/// The keyword under which each document describes its AMQP envelope.
pub const ENVELOPE: &str = "x-amqp";

/// Where the documents are kept, relative to the workspace root.
pub const SCHEMA_DIR: &str = "protocol/schemas";

/// The command that writes the documents again.
pub const REGENERATE: &str = "cargo run -p orderflow-queue --example protocol_schemas";

/// Stands for `ORDERFLOW_QUEUE_PREFIX` (empty in production) in the names below.
const PREFIX: &str = "<prefix>";

/// Every document, by its file name under [`SCHEMA_DIR`]: `task.json`, `result.json`,
/// `finished.json`.
pub fn documents() -> Vec<(&'static str, Value)> {
    json_schemas()
        .into_iter()
        .map(|(file, mut schema)| {
            let envelope = match file {
                "task.json" => task_envelope(),
                "result.json" => result_envelope(),
                "finished.json" => finished_envelope(),
                other => unreachable!("an envelope for every document, not for `{other}`"),
            };
            schema
                .as_object_mut()
                .expect("a root schema is an object")
                .insert(ENVELOPE.to_owned(), envelope);
            (file, schema)
        })
        .collect()
}

/// A document as it is written to its file: keys sorted at every level, two-space indents, a
/// final newline. Sorting makes the text the same whichever way serde_json keeps maps.
pub fn render(doc: &Value) -> String {
    fn sorted(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                let mut out = Map::new();
                for k in keys {
                    out.insert(k.clone(), sorted(&m[k]));
                }
                Value::Object(out)
            }
            Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    let mut text = serde_json::to_string_pretty(&sorted(doc)).expect("JSON always serializes");
    text.push('\n');
    text
}

fn names() -> Topology {
    Topology::new(PREFIX)
}

/// The arguments every queue of the topology is declared with (`rabbit::declare_queue`): a
/// consumer that declares a queue itself must pass the same, or the broker refuses the declare.
fn queue_arguments() -> Value {
    json!({
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": names().dead_letter_queue(),
    })
}

/// What a message carries, whoever publishes it (`rabbit::publish_confirmed`). `delivery_mode`
/// is one value, or the values a receiver may see.
fn properties(delivery_mode: Value, message_id: &str) -> Value {
    json!({
        "delivery_mode": delivery_mode,
        "content_type": "application/json",
        "message_id": message_id,
    })
}

/// The headers OrderFlow's publishers set. Neither is needed for correctness: a publisher in
/// another language may leave both out.
fn headers() -> Value {
    json!({
        TRACEPARENT: {
            "amqp_type": "long string",
            "description": "W3C trace context (`00-<trace id>-<span id>-<flags>`) of the hop \
                that published the message; the receiver continues the saga's trace from it. \
                Optional.",
        },
        PUBLISHED_AT: {
            "amqp_type": "long long int",
            "description": "When the message was published, in milliseconds since the Unix \
                epoch (AMQP's own `timestamp` property has whole seconds only); workers measure \
                a task's schedule-to-start latency from it. Every OrderFlow publisher sets it; \
                optional for others.",
        },
    })
}

fn task_envelope() -> Value {
    let queue = names().task_queue("<activity>");
    json!({
        "description": "Published by the engine right after the commit that decided the \
            attempt, transient (delivery_mode 1), to the activity's durable queue through the \
            default exchange; the outbox row is the durable copy. A task the broker may have \
            dropped (its connection went away before the result came) is published again at \
            once, and the outbox relay re-publishes rows left behind persistently \
            (delivery_mode 2). A worker acks it only after its result is published \
            (confirmed); it nacks an undecodable task without requeue, which dead-letters it.",
        "exchange": "",
        "routing_key": queue,
        "queue": {
            "name": queue,
            "durable": true,
            "arguments": queue_arguments(),
        },
        "properties": properties(json!([1, 2]), "the task's `task_id`"),
        "headers": headers(),
    })
}

fn result_envelope() -> Value {
    let queue = names().results_queue();
    json!({
        "description": "Published by a worker for each task it ran, to the results queue \
            through the default exchange, before it acks the task. The engine applies results \
            in batches and acks them after the commit; a duplicate or late result is recorded \
            as ignored.",
        "exchange": "",
        "routing_key": queue,
        "queue": {
            "name": queue,
            "durable": true,
            "arguments": queue_arguments(),
        },
        "properties": properties(json!(2), "the task's `task_id`"),
        "headers": headers(),
    })
}

fn finished_envelope() -> Value {
    let topology = names();
    json!({
        "description": "Published by the engine after the commit that ended a workflow (the outbox relay \
            re-publishes one left behind), persistent, on the \
            events topic exchange. A follower binds its own durable queue with the routing key \
            of the workflow types it follows and acks each event after handling it.",
        "exchange": topology.events_exchange(),
        "exchange_type": "topic",
        "exchange_durable": true,
        "routing_key": orderflow_core::protocol::finished_routing_key("<workflow_type>"),
        "queue": {
            "name": topology.events_queue("<service>"),
            "durable": true,
            "arguments": queue_arguments(),
        },
        "properties": properties(
            json!(2),
            "a UUID derived from the workflow id: the same for every publish of one workflow's \
             finished event"
        ),
        "headers": headers(),
    })
}
