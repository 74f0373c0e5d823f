//! The committer's publisher: sends what a batch committed, straight from memory, and answers for
//! the transient task messages it sent until they are settled (DESIGN.md §3.2).
//!
//! - Everything waiting goes out in one pipelined publish. Confirmed messages are reported to
//!   the committer, whose next batch deletes their outbox rows; a publish that fails is tried
//!   again on the next tick, and its rows stay for the relay meanwhile.
//! - Task messages are transient: a broker restart drops them. Each one sent is kept here with
//!   the connection generation it went over, until its result is applied or its workflow
//!   finishes ([`Settle`]), or its attempt's deadline passes (the start-to-close timer then
//!   dispatches the step again). When the connection is lost and made again, every task kept
//!   from an earlier generation is sent again at once, the same attempt with the same task id:
//!   the worker's idempotency key makes a second run harmless, and a second result is ignored.
//! - A result applied by another replica does not reach this one, so its task stays kept until
//!   its deadline; a reconnect sends it again for nothing, which costs a duplicate, not a loss.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use orderflow_queue::{Outgoing, TaskQueue};
use orderflow_telemetry as telemetry;
use tokio::sync::{Notify, mpsc};
use tracing::Span;
use uuid::Uuid;

use crate::{apply::now, metrics, store::change::NewTask};

/// How often the publisher looks at the connection and at messages it could not send.
const TICK: Duration = Duration::from_millis(500);
/// Most messages kept for another try while the queue is away; past this the oldest are left
/// to the relay, which publishes every outbox row left behind.
const MAX_UNSENT: usize = 100_000;

/// What the committer hands the publisher, in commit order.
pub(crate) enum ToPublisher {
    /// Messages a batch committed.
    Publish(Vec<NewTask>),
    /// What a batch settled.
    Settle(Settle),
}

/// Task messages nobody needs any more: their results were applied, or their workflows ended.
#[derive(Default)]
pub(crate) struct Settle {
    pub tasks: Vec<Uuid>,
    pub workflows: Vec<Uuid>,
}

impl Settle {
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty() && self.workflows.is_empty()
    }
}

/// A task message sent transient and not yet settled.
struct Sent {
    task: NewTask,
    /// The connection generation it went over.
    generation: u64,
}

/// Sends, and keeps, until told otherwise.
pub(crate) struct Publisher<Q> {
    queue: Q,
    /// Task ids of confirmed messages, for the committer's next batch to delete their rows.
    published: Arc<Mutex<Vec<Uuid>>>,
    /// Notified when `published` grows.
    confirmed: Arc<Notify>,
    in_flight: HashMap<Uuid, Sent>,
    /// Messages whose publish failed, for the next tick.
    unsent: Vec<NewTask>,
    /// The newest connection generation seen.
    generation: u64,
}

impl<Q: TaskQueue> Publisher<Q> {
    pub fn new(queue: Q, published: Arc<Mutex<Vec<Uuid>>>, confirmed: Arc<Notify>) -> Self {
        Self {
            queue,
            published,
            confirmed,
            in_flight: HashMap::new(),
            unsent: Vec::new(),
            generation: 0,
        }
    }

    pub async fn run(mut self, mut rx: mpsc::UnboundedReceiver<ToPublisher>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                input = rx.recv() => {
                    let Some(input) = input else { return };
                    let mut messages = Vec::new();
                    self.take(input, &mut messages);
                    while let Ok(more) = rx.try_recv() {
                        self.take(more, &mut messages);
                    }
                    if !messages.is_empty() {
                        self.send(messages).await;
                    }
                }
                _ = tick.tick() => self.look_around().await,
            }
        }
    }

    fn take(&mut self, input: ToPublisher, messages: &mut Vec<NewTask>) {
        match input {
            ToPublisher::Publish(batch) => messages.extend(batch),
            ToPublisher::Settle(settled) => {
                for task in &settled.tasks {
                    self.in_flight.remove(task);
                }
                if !settled.workflows.is_empty() {
                    let ended: std::collections::HashSet<&Uuid> =
                        settled.workflows.iter().collect();
                    self.in_flight
                        .retain(|_, sent| !ended.contains(&sent.task.workflow_id));
                }
            }
        }
    }

    /// Drops what outlived its deadline, sends again what a lost connection may have dropped,
    /// and tries again what could not be sent.
    async fn look_around(&mut self) {
        let at = now();
        self.in_flight
            .retain(|_, sent| sent.task.deadline.is_some_and(|d| d > at));
        let Ok(generation) = self.queue.connection().await else {
            return;
        };
        let mut again: Vec<NewTask> = std::mem::take(&mut self.unsent);
        if generation != self.generation {
            self.generation = generation;
            let lost: Vec<Uuid> = self
                .in_flight
                .iter()
                .filter(|(_, sent)| sent.generation != generation)
                .map(|(id, _)| *id)
                .collect();
            if !lost.is_empty() {
                tracing::warn!(
                    tasks = lost.len(),
                    "the broker connection was lost; sending its unsettled tasks again"
                );
                metrics::TASKS_REDISPATCHED.inc_by(lost.len() as u64);
            }
            again.extend(
                lost.iter()
                    .filter_map(|id| self.in_flight.remove(id))
                    .map(|sent| sent.task),
            );
        }
        if !again.is_empty() {
            self.send(again).await;
        }
    }

    async fn send(&mut self, messages: Vec<NewTask>) {
        let generation = match self.queue.connection().await {
            Ok(g) => g,
            Err(e) => {
                tracing::warn!(error = %e, messages = messages.len(), "cannot publish now; trying again shortly");
                self.keep_unsent(messages);
                return;
            }
        };
        let spans: Vec<Option<Span>> = messages.iter().map(publish_span).collect();
        let traceparents: Vec<Option<String>> = messages
            .iter()
            .zip(&spans)
            .map(|(m, span)| {
                let root = root_of(m);
                match span {
                    Some(span) => telemetry::traceparent_of(span, root.as_deref()),
                    None => root,
                }
            })
            .collect();
        let msgs: Vec<Outgoing<'_>> = messages
            .iter()
            .zip(&traceparents)
            .map(|(m, tp)| Outgoing {
                exchange: &m.exchange,
                queue: &m.queue,
                body: m.body.as_bytes(),
                message_id: m.task_id.to_string(),
                traceparent: tp.as_deref(),
                transient: m.deadline.is_some(),
            })
            .collect();
        let result = self.queue.publish(&msgs).await;
        drop(msgs);
        drop(spans);
        match result {
            Ok(()) => {
                metrics::TASKS_PUBLISHED.inc_by(messages.len() as u64);
                self.published
                    .lock()
                    .expect("not poisoned")
                    .extend(messages.iter().map(|m| m.task_id));
                self.confirmed.notify_one();
                for task in messages {
                    if task.deadline.is_some() {
                        self.in_flight
                            .insert(task.task_id, Sent { task, generation });
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, messages = messages.len(), "publishing after commit failed; trying again shortly");
                self.keep_unsent(messages);
            }
        }
    }
}

impl<Q> Publisher<Q> {
    fn keep_unsent(&mut self, messages: Vec<NewTask>) {
        self.unsent.extend(messages);
        if self.unsent.len() > MAX_UNSENT {
            let over = self.unsent.len() - MAX_UNSENT;
            self.unsent.drain(..over);
        }
    }
}

/// The saga root's `traceparent` a task message carries, if it is a task.
fn root_of(m: &NewTask) -> Option<String> {
    m.exchange
        .is_empty()
        .then(|| telemetry::root_traceparent(m.workflow_id))
}

/// The publish span of a task, a child of its saga's root; `None` for workflow events.
fn publish_span(m: &NewTask) -> Option<Span> {
    if !m.exchange.is_empty() {
        return None;
    }
    let span = tracing::info_span!(
        "task.publish",
        otel.kind = "producer",
        workflow_id = %m.workflow_id,
        task_id = %m.task_id,
        queue = %m.queue,
    );
    telemetry::set_parent(&span, root_of(m).as_deref(), m.workflow_id);
    Some(span)
}
