//! The follower conformance suite: finished-workflow events followed on RabbitMQ and on the
//! embedded queue with one contract: acked only after the handler succeeded, redelivered after
//! it failed, dead-lettered when undecodable.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use orderflow_activities::follower::{Subscription, WorkflowFinished, follow};
use orderflow_core::{WorkflowId, WorkflowStatus, protocol::finished_routing_key};
use orderflow_queue::{
    Consumer as _, Delivery as _, Outgoing, TaskQueue, Topology, embedded::EmbeddedQueue,
    rabbit::RabbitQueue,
};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(20);

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
async fn events_on_rabbitmq_are_acked_after_the_handler_and_retried_after_a_failure()
-> anyhow::Result<()> {
    let amqp = orderflow_testkit::amqp_url();
    let topology = Topology::new(format!("follow-{}.", Uuid::new_v4().simple()));
    let queue = RabbitQueue::connect(amqp, topology, WAIT).await?;
    acked_after_the_handler(queue).await
}

#[tokio::test]
async fn events_on_the_embedded_queue_are_acked_after_the_handler_and_retried_after_a_failure()
-> anyhow::Result<()> {
    acked_after_the_handler(EmbeddedQueue::open(None, Topology::default()).await?).await
}

async fn acked_after_the_handler<Q: TaskQueue>(queue: Q) -> anyhow::Result<()> {
    let sub = Subscription::new("inventory", finished_routing_key("order"));
    // Bound before anything is published, as a service binds at start.
    sub.declare(&queue).await?;

    let (first, second) = (Uuid::new_v4(), Uuid::new_v4());
    let exchange = queue.topology().events_exchange();
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
            transient: false,
        })
        .collect();
    queue.publish(&msgs).await?;

    // The handler fails the first event once, then takes everything.
    let seen: Arc<Mutex<Vec<Uuid>>> = Arc::default();
    let stop = CancellationToken::new();
    let follower = tokio::spawn(follow(
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
    let handled = || {
        let seen = seen.lock().unwrap();
        seen.contains(&second) && seen.iter().filter(|id| **id == first).count() == 2
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    while !handled() {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "events not handled: {:?}",
            seen.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    follower.await?;
    // Nothing else is left: the undecodable message was dead-lettered, the rest acked.
    let stats = queue.inspect(&sub.queue_name(&queue)).await?;
    assert_eq!(stats.depth, 0, "{stats:?}");
    let mut dead = queue
        .consume(&queue.topology().dead_letter_queue(), 10)
        .await?;
    let d = tokio::time::timeout(WAIT, dead.next()).await??;
    assert_eq!(d.body(), b"not an event");
    d.ack().await?;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen.len(),
        3,
        "first (failed), first (retried), second: {seen:?}"
    );
    assert_eq!(seen[0], first);
    Ok(())
}
