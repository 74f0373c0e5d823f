//! The closed loop: keeps C sagas in flight, starting each through the engine's REST API (with an
//! Idempotency-Key, so a start retried across an engine crash starts one saga) and seeing it
//! finish through the `workflow.finished.order` event the engine publishes after the commit that
//! ended it. Latency is from sending the start request to receiving that event.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use lapin::{options::BasicConsumeOptions, types::FieldTable};
use orderflow_queue::{
    TaskQueue as _,
    rabbit::{self, RabbitQueue},
};

use super::activities::DECLINED_CARD;
use orderflow_core::{WorkflowFinished, WorkflowStatus};
use serde_json::json;
use sqlx::{
    PgPool,
    types::chrono::{DateTime, Utc},
};
use tokio::{
    sync::{Semaphore, mpsc},
    task::JoinHandle,
};
use uuid::Uuid;

use super::{
    BenchArgs,
    stack::{BenchDb, Stack},
};

/// What one phase (warm-up or measured) saw.
#[derive(Debug, Default)]
pub struct Phase {
    /// Start-to-finish latency of every saga, in finishing order.
    pub latencies: Vec<Duration>,
    /// Sagas that ended in another status than expected (id, expected, got).
    pub wrong_status: Vec<(Uuid, WorkflowStatus, WorkflowStatus)>,
    /// With `--crash-at`: sagas in flight when the engine was killed, and how long after the new
    /// engine started every one of them had moved again.
    pub crash: Option<Crash>,
}

#[derive(Debug, Clone, Copy)]
pub struct Crash {
    pub in_flight: usize,
    pub moving_again_after: Duration,
}

/// A saga whose start request was answered.
struct Started {
    id: Uuid,
    sent: Instant,
    expect: WorkflowStatus,
}

/// Where sagas are started.
#[derive(Debug, Clone)]
pub enum Target {
    /// The engine's REST API (`POST /api/v1/workflows`); sagas are known by workflow id.
    Engine { base: String, token: String },
    /// The order service (`POST /api/v1/orders` as a customer), which starts the saga itself;
    /// sagas are known by order id, the `order_id` business key of their finished event.
    Orders { base: String, token: String },
}

pub struct Driver {
    http: reqwest::Client,
    target: Target,
    run_tag: String,
    fail_every: usize,
    concurrency: usize,
    http_permits: Arc<Semaphore>,
    finished: mpsc::UnboundedReceiver<(Uuid, WorkflowStatus, Instant)>,
    consumer: JoinHandle<()>,
    amqp: lapin::Connection,
    pool: PgPool,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("target", &self.target)
            .finish()
    }
}

impl Driver {
    /// Binds the driver's queue to the finished events and starts consuming them.
    pub async fn connect(db: &BenchDb, args: &BenchArgs, target: Target) -> anyhow::Result<Self> {
        let queue = db.finished_queue();
        let patience = Duration::from_secs(10);
        RabbitQueue::connect(&args.conn.amqp_url, db.topology(), patience)
            .await?
            .bind_events(&queue, &db.finished_routing_key())
            .await?;
        let amqp = rabbit::connect(&args.conn.amqp_url, patience).await?;
        let channel = amqp.create_channel().await?;
        // No acks: these events only time the run, and the check reads the database anyway.
        let mut consumer = channel
            .basic_consume(
                queue.as_str().into(),
                "bench-driver".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        let (tx, finished) = mpsc::unbounded_channel();
        let by_order = matches!(target, Target::Orders { .. });
        let consumer = tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                let at = Instant::now();
                match serde_json::from_slice::<WorkflowFinished>(&delivery.data) {
                    Ok(ev) => {
                        let id = if by_order {
                            match ev.business_keys["order_id"].as_str().map(str::parse) {
                                Some(Ok(id)) => id,
                                _ => {
                                    tracing::error!("a finished order saga without its order id");
                                    continue;
                                }
                            }
                        } else {
                            ev.workflow_id.0
                        };
                        if tx.send((id, ev.status, at)).is_err() {
                            return;
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "undecodable finished event"),
                }
            }
        });
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(args.http_connections)
            .build()?;
        Ok(Self {
            http,
            target,
            run_tag: db.prefix.clone(),
            fail_every: args.fail_every,
            concurrency: args.concurrency,
            http_permits: Arc::new(Semaphore::new(args.http_connections.max(1))),
            finished,
            consumer,
            amqp,
            pool: db.pool(2).await?,
        })
    }

    /// Sagas kept in flight by the next [`Driver::run`].
    pub fn set_concurrency(&mut self, concurrency: usize) {
        self.concurrency = concurrency.max(1);
    }

    /// Runs `n` sagas numbered from `offset` (every `fail_every`-th by number is declined) with
    /// `concurrency` in flight, until all finished or `deadline`.
    pub async fn run(
        &mut self,
        n: usize,
        offset: usize,
        crash_at: Option<usize>,
        deadline: Instant,
        stack: &mut Stack,
    ) -> anyhow::Result<Phase> {
        let bar = progress(n, if offset == 0 { "warm-up" } else { "sagas" });
        let (started_tx, mut started_rx) = mpsc::unbounded_channel::<anyhow::Result<Started>>();
        let mut waiting: HashMap<Uuid, (Instant, WorkflowStatus)> = HashMap::new();
        // A finished event can only beat its start's answer by a hair, but it can.
        let mut early: HashMap<Uuid, (WorkflowStatus, Instant)> = HashMap::new();
        let mut phase = Phase {
            latencies: Vec::with_capacity(n),
            ..Phase::default()
        };
        let mut monitor: Option<(usize, JoinHandle<anyhow::Result<Duration>>)> = None;
        let (mut launched, mut in_flight, mut done) = (0, 0, 0);
        let deadline = tokio::time::Instant::from_std(deadline);
        while done < n {
            while in_flight < self.concurrency && launched < n {
                let number = offset + launched;
                let fail = self.fail_every > 0 && (number + 1).is_multiple_of(self.fail_every);
                tokio::spawn(self.start(number, fail, deadline, started_tx.clone()));
                launched += 1;
                in_flight += 1;
            }
            // Started sagas not finished yet: what the engine holds in flight.
            if monitor.is_none() && crash_at.is_some_and(|at| waiting.len() >= at) {
                monitor = Some(self.crash(stack).await?);
            }
            tokio::select! {
                Some(started) = started_rx.recv() => {
                    let s = started?;
                    match early.remove(&s.id) {
                        Some((status, at)) => {
                            finish(&mut phase, s.id, s.expect, status, at - s.sent);
                            done += 1;
                            in_flight -= 1;
                            bar.inc(1);
                        }
                        None => {
                            waiting.insert(s.id, (s.sent, s.expect));
                        }
                    }
                }
                Some((id, status, at)) = self.finished.recv() => {
                    match waiting.remove(&id) {
                        Some((sent, expect)) => {
                            finish(&mut phase, id, expect, status, at - sent);
                            done += 1;
                            in_flight -= 1;
                            bar.inc(1);
                        }
                        // Also a repeat published after a crash, which nothing waits for.
                        None => {
                            early.insert(id, (status, at));
                        }
                    }
                }
                () = tokio::time::sleep_until(deadline) => {
                    bar.abandon();
                    bail!("{} of {n} sagas had not finished when the run timed out", n - done);
                }
            }
        }
        bar.finish_and_clear();
        if let Some((in_flight, monitor)) = monitor {
            phase.crash = Some(Crash {
                in_flight,
                moving_again_after: monitor.await??,
            });
        }
        Ok(phase)
    }

    /// Starts saga `number`: retries until the engine answers (it may be restarting), with the
    /// same Idempotency-Key each time.
    fn start(
        &self,
        number: usize,
        fail: bool,
        deadline: tokio::time::Instant,
        done: mpsc::UnboundedSender<anyhow::Result<Started>>,
    ) -> impl Future<Output = ()> + Send + 'static {
        let http = self.http.clone();
        let key = format!("{}{number}", self.run_tag);
        let permits = self.http_permits.clone();
        let payment_method = if fail { DECLINED_CARD } else { "pm_card_visa" };
        let (url, token, body) = match &self.target {
            Target::Engine { base, token } => (
                format!("{base}/api/v1/workflows"),
                Some(token.clone()),
                json!({
                    "type": "order",
                    "business_keys": { "bench": key },
                    "input": {
                        "order_id": Uuid::new_v4(),
                        "user_id": Uuid::new_v4(),
                        "items": [{ "product_id": "sku-1", "quantity": 1 }],
                        "total": { "amount_minor": 2599, "currency": "EUR" },
                        "payment_method": payment_method,
                        "email": "buyer@example.com"
                    }
                }),
            ),
            Target::Orders { base, token } => (
                format!("{base}/api/v1/orders"),
                Some(token.clone()),
                json!({
                    "items": [{ "product_id": super::services::SKU, "quantity": 1 }],
                    "shipping_address": { "name": "Bench Buyer", "line1": "1 Main St",
                                          "city": "Berlin", "postal_code": "10115",
                                          "country": "DE" },
                    "payment_method": payment_method,
                }),
            ),
        };
        async move {
            let expect = if fail {
                WorkflowStatus::Compensated
            } else {
                WorkflowStatus::Completed
            };
            let sent = Instant::now();
            let result = async {
                let _permit = permits.acquire().await?;
                loop {
                    let mut req = http.post(&url).header("idempotency-key", &key).json(&body);
                    if let Some(token) = &token {
                        req = req.bearer_auth(token);
                    }
                    let res = req.send().await;
                    match res {
                        Ok(r) if r.status().is_success() => {
                            let v: serde_json::Value = r.json().await?;
                            let id = v["id"]
                                .as_str()
                                .and_then(|s| s.parse().ok())
                                .context("the start answer has no workflow id")?;
                            return Ok(Started { id, sent, expect });
                        }
                        Ok(r) if r.status().is_client_error() => {
                            let status = r.status();
                            bail!("the engine refused a start: {status}: {}", r.text().await?);
                        }
                        // Refused connection or 5xx: the engine is (re)starting; try again.
                        _ if tokio::time::Instant::now() < deadline => {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        Ok(r) => bail!("starting a saga: {}", r.status()),
                        Err(e) => bail!("starting a saga: {e}"),
                    }
                }
            }
            .await;
            let _ = done.send(result);
        }
    }

    /// Kills the engine and watches, in the background, for every saga that was in flight to
    /// move again (a new event recorded after the restart, or finished).
    async fn crash(
        &self,
        stack: &mut Stack,
    ) -> anyhow::Result<(usize, JoinHandle<anyhow::Result<Duration>>)> {
        stack.crash_engine().await?;
        let restarted = Instant::now();
        // Nothing moves a saga while no engine runs, so what is unfinished now was in flight
        // at the kill.
        let (since, in_flight): (DateTime<Utc>, i64) = sqlx::query_as(
            "select now(), count(*) from workflows where status in ('running', 'compensating')",
        )
        .fetch_one(&self.pool)
        .await?;
        let pool = self.pool.clone();
        let watch = tokio::spawn(async move {
            loop {
                let (stalled,): (i64,) = sqlx::query_as(
                    "select count(*) from workflows
                     where status in ('running', 'compensating') and updated_at < $1",
                )
                .bind(since)
                .fetch_one(&pool)
                .await?;
                if stalled == 0 {
                    return Ok(restarted.elapsed());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        Ok((in_flight as usize, watch))
    }

    pub async fn close(self) {
        self.consumer.abort();
        let _ = self.amqp.close(200, "bench done".into()).await;
        self.pool.close().await;
    }
}

fn finish(
    phase: &mut Phase,
    id: Uuid,
    expect: WorkflowStatus,
    got: WorkflowStatus,
    latency: Duration,
) {
    phase.latencies.push(latency);
    if got != expect {
        phase.wrong_status.push((id, expect, got));
    }
}

pub fn progress(n: usize, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(n as u64);
    bar.set_style(
        ProgressStyle::with_template("{msg:>8} [{bar:40}] {pos}/{len} {per_sec} eta {eta}")
            .expect("the template is valid")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_owned());
    bar
}
