//! The broker's floor (`orderflow bench --broker-floor`): what RabbitMQ's CPU costs for one
//! message as the design requires it (durable queue, publisher-confirmed, consumed with a manual
//! ack), with no engine, worker or database around it. A saga needs nine such
//! messages, so this says how much of a saga's CPU budget the broker alone takes.
//!
//! Three publishing patterns, as the stack has them: `one-by-one` (many publishers on one confirm
//! channel, each waiting for its own confirm: the workers' results), `batched` (pipelined
//! batches, one wait per batch: the committer's publisher) and `transient` (batched, delivery
//! mode 1: task messages, DESIGN.md §3.2), each on classic queues v1 and v2
//! (`x-queue-version`).

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use futures::StreamExt;
use lapin::{
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions,
        QueueDeclareOptions,
    },
    types::{AMQPValue, FieldTable},
};
use orderflow_queue::{Outgoing, rabbit};
use serde_json::json;
use uuid::Uuid;

use super::{BenchArgs, measure};

/// One measured pattern.
#[derive(Debug, Clone)]
pub struct Row {
    pub pattern: &'static str,
    pub queue_version: i32,
    pub messages: usize,
    pub elapsed: Duration,
    pub broker_cpu: f64,
    pub client_cpu: f64,
}

impl Row {
    pub fn per_s(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64()
    }

    /// RabbitMQ's CPU per message, in microseconds.
    pub fn broker_us(&self) -> f64 {
        self.broker_cpu * 1e6 / self.messages as f64
    }

    pub fn json(&self) -> serde_json::Value {
        json!({
            "pattern": self.pattern,
            "queue_version": self.queue_version,
            "messages": self.messages,
            "msgs_per_s": self.per_s(),
            "broker_cpu_us_per_msg": self.broker_us(),
            "client_cpu_us_per_msg": self.client_cpu * 1e6 / self.messages as f64,
        })
    }
}

/// Runs every pattern on both queue versions with `args.sagas * 4` messages each.
pub async fn run(args: &BenchArgs) -> anyhow::Result<Vec<Row>> {
    let conn = rabbit::connect(&args.conn.amqp_url, Duration::from_secs(10)).await?;
    let ticks = measure::clock_ticks();
    let messages = args.sagas * 4;
    let tag = Uuid::new_v4().simple().to_string();
    // A task message's size, so the broker stores what it stores in a run.
    let body = json!({ "payload": "x".repeat(600) }).to_string();
    let mut rows = Vec::new();
    for queue_version in [1, 2] {
        for pattern in ["one-by-one", "batched", "transient"] {
            let queue = format!(
                "bench{}.broker-floor.v{queue_version}.{pattern}",
                &tag[..12]
            );
            let row = one(
                &conn,
                &queue,
                queue_version,
                pattern,
                messages,
                args.concurrency,
                &body,
                ticks,
            )
            .await;
            let channel = conn.create_channel().await?;
            channel
                .queue_delete(queue.as_str().into(), Default::default())
                .await?;
            rows.push(row?);
        }
    }
    let _ = conn.close(200, "broker floor done".into()).await;
    Ok(rows)
}

#[allow(clippy::too_many_arguments)]
async fn one(
    conn: &lapin::Connection,
    queue: &str,
    queue_version: i32,
    pattern: &'static str,
    messages: usize,
    concurrency: usize,
    body: &str,
    ticks: f64,
) -> anyhow::Result<Row> {
    let mut queue_args = FieldTable::default();
    queue_args.insert("x-queue-version".into(), AMQPValue::LongInt(queue_version));
    let consuming = conn.create_channel().await?;
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    consuming
        .queue_declare(queue.into(), durable, queue_args)
        .await?;
    consuming
        .basic_qos(concurrency.max(1) as u16, BasicQosOptions::default())
        .await?;
    let mut consumer = consuming
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let publisher = conn.create_channel().await?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let broker_before = measure::broker_cpu(ticks);
    let client_before = measure::cpu_seconds(std::process::id(), ticks).unwrap_or(0.0);
    let started = Instant::now();
    // Every message is acked on its own, as a worker acks its task.
    let consumed = tokio::spawn(async move {
        let mut n = 0;
        while n < messages {
            let Some(delivery) = consumer.next().await else {
                anyhow::bail!("the consumer ended after {n} messages");
            };
            delivery?.acker.ack(BasicAckOptions::default()).await?;
            n += 1;
        }
        anyhow::Ok(())
    });
    let msg = |i: usize| Outgoing {
        exchange: "",
        queue,
        body: body.as_bytes(),
        message_id: i.to_string(),
        traceparent: None,
        transient: pattern == "transient",
    };
    if pattern != "one-by-one" {
        let ids: Vec<usize> = (0..messages).collect();
        for chunk in ids.chunks(concurrency.max(1)) {
            let batch: Vec<Outgoing<'_>> = chunk.iter().map(|&i| msg(i)).collect();
            rabbit::publish_confirmed(&publisher, &batch).await?;
        }
    } else {
        let next = Arc::new(AtomicUsize::new(0));
        let publishers = (0..concurrency.max(1)).map(|_| {
            let (next, publisher) = (next.clone(), publisher.clone());
            async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= messages {
                        return anyhow::Ok(());
                    }
                    rabbit::publish_confirmed(&publisher, &[msg(i)]).await?;
                }
            }
        });
        futures::future::try_join_all(publishers).await?;
    }
    consumed.await??;
    let elapsed = started.elapsed();
    let broker_cpu = measure::broker_cpu(ticks) - broker_before;
    let client_cpu = measure::cpu_seconds(std::process::id(), ticks).unwrap_or(0.0) - client_before;
    let _ = publisher.close(200, "done".into()).await;
    let _ = consuming.close(200, "done".into()).await;
    Ok(Row {
        pattern,
        queue_version,
        messages,
        elapsed,
        broker_cpu,
        client_cpu,
    })
}

/// Prints the rows and their JSON line.
pub fn print(rows: &[Row]) {
    println!("RabbitMQ floor: durable queue, confirmed, consumed with a manual ack");
    println!(
        "{:<11} {:>6} {:>9} {:>10} {:>22} {:>22}",
        "pattern", "queue", "messages", "msgs/s", "broker CPU µs/msg", "client CPU µs/msg"
    );
    for r in rows {
        println!(
            "{:<11} {:>6} {:>9} {:>10.0} {:>22.0} {:>22.0}",
            r.pattern,
            format!("v{}", r.queue_version),
            r.messages,
            r.per_s(),
            r.broker_us(),
            r.client_cpu * 1e6 / r.messages as f64
        );
    }
    let json: Vec<_> = rows.iter().map(Row::json).collect();
    println!("{}", json!({ "broker_floor": json }));
}
