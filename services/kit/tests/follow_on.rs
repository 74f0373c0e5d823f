//! `events::follow_on`: finished-saga events followed on the embedded queue of `orderflow dev`,
//! with the same contract as on RabbitMQ: acked only after the handler succeeded, redelivered
//! after it failed, dead-lettered when undecodable.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use orderflow_activities::{
    broker::{Outgoing, Topology},
    queue::{TaskQueue as _, embedded::EmbeddedQueue},
};
use orderflow_core::{WorkflowId, WorkflowStatus, protocol::finished_routing_key};
use orderflow_service_kit::events::{Subscription, WorkflowFinished, follow_on};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

fn finished(id: Uuid) -> WorkflowFinished {
    WorkflowFinished {
        workflow_id: WorkflowId(id),
        workflow_type: "order".into(),
        status: WorkflowStatus::Completed,
        reason: None,
        cause: None,
        business_keys: json!({ "order_id": id }),
        at: chrono::Utc::now(),
    }
}

#[tokio::test]
async fn events_on_the_embedded_queue_are_acked_after_the_handler_and_retried_after_a_failure()
-> anyhow::Result<()> {
    let topology = Topology::default();
    let queue = EmbeddedQueue::open(None, topology.clone()).await?;
    let sub = Subscription {
        amqp_url: String::new(),
        topology: topology.clone(),
        service: "inventory".into(),
        routing_key: finished_routing_key("order"),
    };
    // Bound before anything is published, as a service binds at start.
    queue.declare(&sub.queue()).await?;
    queue.bind_events(&sub.queue(), &sub.routing_key).await?;

    let (first, second) = (Uuid::new_v4(), Uuid::new_v4());
    let exchange = topology.events_exchange();
    let bodies = [
        serde_json::to_vec(&finished(first))?,
        b"not an event".to_vec(),
        serde_json::to_vec(&finished(second))?,
    ];
    let msgs: Vec<Outgoing<'_>> = bodies
        .iter()
        .map(|body| Outgoing {
            exchange: &exchange,
            queue: &sub.routing_key,
            body,
            message_id: Uuid::new_v4().to_string(),
            traceparent: None,
        })
        .collect();
    queue.publish(&msgs).await?;

    // The handler fails the first event once, then takes everything.
    let seen: Arc<Mutex<Vec<Uuid>>> = Arc::default();
    let stop = CancellationToken::new();
    let follower = tokio::spawn(follow_on(
        queue.clone(),
        sub.clone(),
        {
            let seen = seen.clone();
            move |event: WorkflowFinished| {
                let seen = seen.clone();
                async move {
                    let mut seen = seen.lock().unwrap();
                    seen.push(event.workflow_id.0);
                    match seen.len() {
                        1 => Err("the service's database is down"),
                        _ => Ok(()),
                    }
                }
            }
        },
        stop.clone(),
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let done = {
            let seen = seen.lock().unwrap();
            seen.contains(&second) && seen.iter().filter(|id| **id == first).count() == 2
        };
        if done {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "events not handled: {:?}",
            seen.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Nothing else comes: the undecodable message was dead-lettered, the rest acked.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.cancel();
    follower.await?;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen.len(),
        3,
        "first (failed), first (retried), second: {seen:?}"
    );
    assert_eq!(seen[0], first);
    Ok(())
}
