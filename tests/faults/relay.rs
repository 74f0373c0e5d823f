//! Messages the broker would rarely produce, produced on purpose through RabbitMQ itself.
//!
//! The duplicating relay sits between the engine and the workers: the engines run with the queue
//! prefix [`UPSTREAM`], the services with none, so the engine's tasks land in
//! `up.orderflow.task.*` and the workers report to `orderflow.results`. The relay consumes each
//! task and publishes it twice to the workers' queue, and consumes results in small batches and
//! publishes every one twice, each copy of the batch in another random order, to the engine's
//! results queue. Lifecycle events are forwarded once from the engine's exchange to the
//! services'. Everything the real processes see therefore came through the real broker with the
//! real message properties; nothing in them knows the relay is there. (A RabbitMQ-level way, such
//! as two bindings of one exchange, would duplicate but not reorder, and the engine publishes to
//! the default exchange.)

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use futures::StreamExt;
use lapin::{
    Channel, Connection,
    message::Delivery,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions,
        QueueBindOptions, QueueDeclareOptions,
    },
    types::{AMQPValue, FieldTable, ShortString},
};
use orderflow_queue::{
    Outgoing, Topology,
    rabbit::{self as broker, declare_events, declare_queue},
};
use orderflow_workflows::order::contracts::ORDER_SAGA_ACTIVITIES;
use rand::seq::SliceRandom;
use tokio_util::sync::{CancellationToken, DropGuard};

/// The engines' queue prefix when the relay runs.
pub const UPSTREAM: &str = "up.";
const EVENTS_QUEUE: &str = "faults.relay.events";

/// What the relay did.
#[derive(Debug, Default)]
pub struct Counts {
    pub tasks: AtomicUsize,
    pub results: AtomicUsize,
    pub events: AtomicUsize,
}

impl Counts {
    pub fn summary(&self) -> String {
        format!(
            "relay: {} tasks delivered twice, {} results delivered twice and reordered, {} events forwarded",
            self.tasks.load(Ordering::Relaxed),
            self.results.load(Ordering::Relaxed),
            self.events.load(Ordering::Relaxed)
        )
    }
}

/// Starts the relay; it runs until the guard pushed onto `guards` is dropped.
pub async fn start(amqp_url: &str, guards: &mut Vec<DropGuard>) -> anyhow::Result<Arc<Counts>> {
    let conn = broker::connect(amqp_url, Duration::from_secs(30)).await?;
    let (up, down) = (Topology::new(UPSTREAM), Topology::new(""));
    let ch = conn.create_channel().await?;
    for t in [&up, &down] {
        declare_queue(&ch, t, &t.results_queue()).await?;
        for a in ORDER_SAGA_ACTIVITIES {
            declare_queue(&ch, t, &t.task_queue(a)).await?;
        }
        declare_events(&ch, t).await?;
    }
    declare_queue(&ch, &up, EVENTS_QUEUE).await?;
    ch.queue_bind(
        EVENTS_QUEUE.into(),
        up.events_exchange().into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    let counts = Arc::new(Counts::default());
    let stop = CancellationToken::new();
    let conn = Arc::new(conn);
    for a in ORDER_SAGA_ACTIVITIES {
        spawn(
            &conn,
            &stop,
            up.task_queue(a),
            Dest::Queue(down.task_queue(a)),
            2,
            Kind::Tasks,
            counts.clone(),
        );
    }
    spawn(
        &conn,
        &stop,
        down.results_queue(),
        Dest::Queue(up.results_queue()),
        2,
        Kind::Results,
        counts.clone(),
    );
    spawn(
        &conn,
        &stop,
        EVENTS_QUEUE.to_owned(),
        Dest::Exchange(down.events_exchange()),
        1,
        Kind::Events,
        counts.clone(),
    );
    guards.push(stop.drop_guard());
    Ok(counts)
}

#[derive(Clone, Copy)]
enum Kind {
    Tasks,
    Results,
    Events,
}

enum Dest {
    Queue(String),
    Exchange(String),
}

fn spawn(
    conn: &Arc<Connection>,
    stop: &CancellationToken,
    from: String,
    to: Dest,
    copies: usize,
    kind: Kind,
    counts: Arc<Counts>,
) {
    let (conn, stop) = (conn.clone(), stop.clone());
    tokio::spawn(async move {
        let run = forward(&conn, &from, &to, copies, kind, &counts);
        tokio::select! {
            () = stop.cancelled() => {}
            r = run => if let Err(e) = r {
                eprintln!("relay from {from} stopped: {e:#}");
            }
        }
    });
}

async fn forward(
    conn: &Connection,
    from: &str,
    to: &Dest,
    copies: usize,
    kind: Kind,
    counts: &Counts,
) -> anyhow::Result<()> {
    let ch = conn.create_channel().await?;
    ch.basic_qos(64, BasicQosOptions::default()).await?;
    let publisher = confirm_channel(conn).await?;
    let mut consumer = ch
        .basic_consume(
            from.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("consuming {from}"))?;
    while let Some(first) = consumer.next().await {
        let mut batch = vec![first?];
        // Results: whatever else arrives within a few milliseconds joins the batch, so the
        // shuffle has something to reorder.
        if matches!(kind, Kind::Results) {
            let window = tokio::time::sleep(Duration::from_millis(15));
            tokio::pin!(window);
            while batch.len() < 32 {
                tokio::select! {
                    () = &mut window => break,
                    next = consumer.next() => match next {
                        Some(d) => batch.push(d?),
                        None => break,
                    },
                }
            }
        }
        let mut order: Vec<usize> = Vec::new();
        for _ in 0..copies {
            let mut copy: Vec<usize> = (0..batch.len()).collect();
            if matches!(kind, Kind::Results) {
                copy.shuffle(&mut rand::rng());
            }
            order.extend(copy);
        }
        publish(&publisher, &batch, &order, to).await?;
        for d in &batch {
            d.acker.ack(BasicAckOptions::default()).await?;
        }
        let n = batch.len();
        match kind {
            Kind::Tasks => counts.tasks.fetch_add(n, Ordering::Relaxed),
            Kind::Results => counts.results.fetch_add(n, Ordering::Relaxed),
            Kind::Events => counts.events.fetch_add(n, Ordering::Relaxed),
        };
    }
    Ok(())
}

async fn publish(
    publisher: &Channel,
    batch: &[Delivery],
    order: &[usize],
    to: &Dest,
) -> anyhow::Result<()> {
    let ids: Vec<String> = batch
        .iter()
        .map(|d| {
            d.properties
                .message_id()
                .as_ref()
                .map(|m| m.as_str().to_owned())
                .unwrap_or_default()
        })
        .collect();
    let traceparents: Vec<Option<String>> = batch.iter().map(traceparent).collect();
    let keys: Vec<String> = batch
        .iter()
        .map(|d| d.routing_key.as_str().to_owned())
        .collect();
    let msgs: Vec<Outgoing<'_>> = order
        .iter()
        .map(|&i| {
            let (exchange, queue) = match to {
                Dest::Queue(q) => ("", q.as_str()),
                Dest::Exchange(x) => (x.as_str(), keys[i].as_str()),
            };
            Outgoing {
                exchange,
                queue,
                body: &batch[i].data,
                message_id: ids[i].clone(),
                traceparent: traceparents[i].as_deref(),
                transient: false,
            }
        })
        .collect();
    broker::publish_confirmed(publisher, &msgs).await?;
    Ok(())
}

async fn confirm_channel(conn: &Connection) -> anyhow::Result<Channel> {
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    Ok(ch)
}

fn traceparent(d: &Delivery) -> Option<String> {
    match d
        .properties
        .headers()
        .as_ref()?
        .inner()
        .get(&ShortString::from("traceparent"))?
    {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        _ => None,
    }
}

/// Publishes undecodable task messages (two per forward activity) straight to the workers'
/// queues, as a broken producer would; returns how many.
pub async fn poison(amqp_url: &str) -> anyhow::Result<usize> {
    let conn = broker::connect(amqp_url, Duration::from_secs(30)).await?;
    let ch = confirm_channel(&conn).await?;
    let topology = Topology::new("");
    let queues: Vec<String> = [
        "inventory.reserve",
        "payment.charge",
        "order.create",
        "notification.send",
    ]
    .iter()
    .map(|a| topology.task_queue(a))
    .collect();
    let bodies: [&[u8]; 2] = [b"{\"task_id\": \"not a task", &[0xff, 0xfe, 0x00, 0x13]];
    let msgs: Vec<Outgoing<'_>> = queues
        .iter()
        .flat_map(|q| {
            bodies.iter().map(move |b| Outgoing {
                exchange: "",
                queue: q,
                body: b,
                message_id: uuid::Uuid::new_v4().to_string(),
                traceparent: None,
                transient: false,
            })
        })
        .collect();
    broker::publish_confirmed(&ch, &msgs).await?;
    let _ = conn.close(200, "poisoned".into()).await;
    Ok(msgs.len())
}

/// Waits until the dead-letter queue holds `expected` messages; returns how many it holds.
pub async fn dead_letters(amqp_url: &str, expected: usize) -> anyhow::Result<usize> {
    let conn = broker::connect(amqp_url, Duration::from_secs(30)).await?;
    let ch = conn.create_channel().await?;
    let dlq = Topology::new("").dead_letter_queue();
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let mut held = 0;
    for _ in 0..300 {
        held = ch
            .queue_declare(dlq.as_str().into(), passive, FieldTable::default())
            .await?
            .message_count() as usize;
        if held >= expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = conn.close(200, "counted".into()).await;
    anyhow::ensure!(
        held == expected,
        "{held} messages in {dlq}, {expected} poisoned tasks published"
    );
    Ok(held)
}
