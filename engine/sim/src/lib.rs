//! Deterministic simulation of OrderFlow's dispatch protocol around the real decider.
//!
//! A [`World`] holds, in memory, what Postgres and RabbitMQ hold in production: workflow
//! snapshots and histories, the outbox, durable timers, a task queue and a results queue. The
//! engine's loops (outbox relay, result intake, timer poller), the workers and an operator are
//! actions that a seeded RNG interleaves, one at a time, while it injects faults at every
//! boundary: a process dies between publishing and deleting outbox rows, between committing and
//! acking results, after an activity's effect but before its result is published, before the ack;
//! results are duplicated, reordered and lost; the clock jumps; tasks hang past their timeout.
//! Transactions are atomic, as they are in Postgres. After the faults stop, the world must settle,
//! and then the books are checked ([`World::check`]): every saga settled, every history replays,
//! no result applied twice, each effect done at most once per saga, compensations in reverse
//! order, nothing reserved or charged left behind.
//!
//! Everything iterates in a fixed order (`BTreeMap`, `Vec`) and the only randomness is the
//! ChaCha RNG seeded by the caller, so a seed reproduces its run exactly.
//!
//! What this covers and what it does not: the decider is the production code, and the protocol
//! (outbox, ack-after-commit, attempt timeouts, idempotency keys) is modelled step for step; the
//! Postgres and RabbitMQ adapters themselves are covered by the real-stack crash tests
//! (`tests/crash.rs`), not here.

mod books;

use std::{collections::BTreeMap, fmt, sync::Arc};

use chrono::{DateTime, Duration, TimeZone, Utc};
use orderflow_core::{
    ActivityError, Command, DecideError, Event, History, RecordedEvent, Registry, TaskId,
    TaskOutcome, TaskSpec, TimerId, WorkflowDefinition, WorkflowId, WorkflowState, WorkflowStatus,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;

/// How a run is shaped. Probabilities are per action.
#[derive(Clone, Debug)]
pub struct Config {
    pub sagas: usize,
    /// Steps with faults on; afterwards the world runs fault-free until it settles.
    pub chaos_steps: usize,
    /// Most fault-free steps allowed to settle before the run counts as stuck.
    pub calm_steps: usize,
    /// A process dies at a boundary (relay, intake, timers, worker).
    pub p_crash: f64,
    /// A worker publishes its result twice.
    pub p_duplicate: f64,
    /// A task is swallowed: no result ever comes (the attempt's timeout must retry it).
    pub p_lost: f64,
    /// An attempt fails transiently (before doing its effect).
    pub p_transient: f64,
    /// Every n-th saga's card is declined (0: none).
    pub decline_every: usize,
    /// An operator cancels a random saga.
    pub p_cancel: f64,
    /// Activities return their first outcome for a repeated idempotency key. Turning this off
    /// models a broken activity; the checker must then catch double effects.
    pub idempotent_activities: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            sagas: 4,
            chaos_steps: 400,
            calm_steps: 20_000,
            p_crash: 0.08,
            p_duplicate: 0.08,
            p_lost: 0.04,
            p_transient: 0.15,
            decline_every: 3,
            p_cancel: 0.01,
            idempotent_activities: true,
        }
    }
}

/// Faults injected during a run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Faults {
    pub crashes: u32,
    pub duplicates: u32,
    pub lost: u32,
    pub transient: u32,
    pub cancels: u32,
    pub redeliveries: u32,
}

/// What a successful run did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub seed: u64,
    pub steps: usize,
    pub events: usize,
    pub faults: Faults,
    pub statuses: BTreeMap<String, usize>,
}

/// A broken invariant, with the seed that reproduces it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub seed: u64,
    pub message: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "simulation seed {} failed: {}\nreproduce with: SIM_SEED={} cargo test -p orderflow-sim",
            self.seed, self.message, self.seed
        )
    }
}

impl std::error::Error for Failure {}

/// Runs one seeded simulation and checks the books.
pub fn run(seed: u64, config: &Config) -> Result<Report, Failure> {
    let fail = |message: String| Failure { seed, message };
    let mut world = World::new(seed, config.clone());
    world.start_sagas().map_err(fail)?;
    let mut steps = 0;
    for _ in 0..config.chaos_steps {
        world.step(true).map_err(fail)?;
        steps += 1;
    }
    let mut settled = false;
    for _ in 0..config.calm_steps {
        if world.settled() {
            settled = true;
            break;
        }
        world.step(false).map_err(fail)?;
        steps += 1;
    }
    if !settled {
        return Err(fail(format!(
            "stuck after {steps} steps: {}",
            world.unsettled()
        )));
    }
    world.check().map_err(fail)?;
    Ok(world.report(seed, steps))
}

#[derive(Debug)]
struct Wf {
    def: Arc<dyn WorkflowDefinition>,
    state: Box<dyn WorkflowState>,
    history: History,
}

#[derive(Clone, Debug)]
struct Task {
    workflow: WorkflowId,
    spec: TaskSpec,
}

#[derive(Clone, Debug)]
struct Reply {
    workflow: WorkflowId,
    task: TaskId,
    outcome: TaskOutcome,
}

/// What one activity execution did, by idempotency key.
#[derive(Clone, Debug)]
struct Effect {
    workflow: WorkflowId,
    activity: String,
    outcome: TaskOutcome,
    /// Times the effect itself was applied (1 for an idempotent activity).
    applied: u32,
}

/// The simulated world: stores, queues, workers' effects, clock and RNG.
#[derive(Debug)]
pub struct World {
    rng: ChaCha8Rng,
    config: Config,
    now: DateTime<Utc>,
    registry: Registry,
    wfs: BTreeMap<WorkflowId, Wf>,
    outbox: Vec<Task>,
    timers: BTreeMap<TimerId, (WorkflowId, DateTime<Utc>)>,
    tasks: Vec<Task>,
    results: Vec<Reply>,
    effects: BTreeMap<String, Effect>,
    declined: Vec<WorkflowId>,
    faults: Faults,
}

impl World {
    fn new(seed: u64, config: Config) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
            config,
            now: Utc
                .with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
                .single()
                .expect("a valid instant"),
            registry: orderflow_workflows::registry(),
            wfs: BTreeMap::new(),
            outbox: Vec::new(),
            timers: BTreeMap::new(),
            tasks: Vec::new(),
            results: Vec::new(),
            effects: BTreeMap::new(),
            declined: Vec::new(),
            faults: Faults::default(),
        }
    }

    fn chance(&mut self, p: f64) -> bool {
        self.rng.random_bool(p.clamp(0.0, 1.0))
    }

    fn start_sagas(&mut self) -> Result<(), String> {
        let def = self
            .registry
            .latest("order")
            .ok_or("no order saga registered")?
            .clone();
        for n in 0..self.config.sagas {
            let id = WorkflowId(uuid_from(self.rng.random()));
            let input = json!({
                "order_id": uuid_from(self.rng.random()),
                "user_id": uuid_from(self.rng.random()),
                "items": [{ "product_id": "sku-1", "quantity": 1 + n % 3 }],
                "total": { "amount_minor": 1000 + n as i64, "currency": "EUR" },
                "payment_method": "pm_card_visa",
                "email": "sim@example.com"
            });
            let (state, decision) = def.start(id, &input, self.now).map_err(|e| e.to_string())?;
            let event = Event::WorkflowStarted {
                workflow_type: def.workflow_type().to_owned(),
                version: def.version(),
                input,
            };
            let history = History {
                workflow_id: id,
                workflow_type: def.workflow_type().to_owned(),
                version: def.version(),
                events: Vec::new(),
            };
            self.wfs.insert(
                id,
                Wf {
                    def: def.clone(),
                    state,
                    history,
                },
            );
            self.record(id, event, decision.commands, decision.ignored);
            if self.config.decline_every > 0
                && n % self.config.decline_every == self.config.decline_every - 1
            {
                self.declined.push(id);
            }
        }
        Ok(())
    }

    /// Appends an accepted event and executes its commands, as the engine's one transaction does.
    fn record(
        &mut self,
        id: WorkflowId,
        event: Event,
        commands: Vec<Command>,
        ignored: Option<String>,
    ) {
        for command in &commands {
            match command {
                Command::ScheduleActivity(spec) => {
                    self.outbox.push(Task {
                        workflow: id,
                        spec: spec.clone(),
                    });
                }
                Command::StartTimer {
                    timer_id, fire_at, ..
                } => {
                    self.timers.insert(*timer_id, (id, *fire_at));
                }
                Command::CancelTimer { timer_id } => {
                    self.timers.remove(timer_id);
                }
                Command::Finish { .. } | Command::RequireAttention { .. } => {}
            }
        }
        let wf = self.wfs.get_mut(&id).expect("recorded workflows exist");
        let seq = wf.history.events.len() as u64 + 1;
        wf.history.events.push(RecordedEvent {
            seq,
            at: self.now,
            event,
            commands,
            ignored,
        });
    }

    /// Folds one event; a refusal records nothing (as the API answers 409).
    fn apply(&mut self, id: WorkflowId, event: Event) -> Result<(), String> {
        let now = self.now;
        let wf = self
            .wfs
            .get_mut(&id)
            .ok_or_else(|| format!("no workflow {id}"))?;
        match wf.def.decide(wf.state.as_mut(), &event, now) {
            Ok(decision) => {
                self.record(id, event, decision.commands, decision.ignored);
                Ok(())
            }
            Err(DecideError::Rejected(_)) => Ok(()),
            Err(e) => Err(format!(
                "the decider refused {} for {id}: {e}",
                event.kind()
            )),
        }
    }

    fn settled(&self) -> bool {
        self.wfs.values().all(|wf| settled(wf.state.status()))
    }

    fn unsettled(&self) -> String {
        self.wfs
            .iter()
            .filter(|(_, wf)| !settled(wf.state.status()))
            .map(|(id, wf)| format!("{id} is {}", wf.state.status()))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// One action, chosen by the RNG among those that can run.
    fn step(&mut self, chaos: bool) -> Result<(), String> {
        let roll = self.rng.random_range(0..100);
        match roll {
            0..=19 if !self.outbox.is_empty() => self.relay(chaos),
            20..=54 if !self.tasks.is_empty() => self.work(chaos),
            55..=79 if !self.results.is_empty() => self.intake(chaos),
            80..=87 => self.fire_timers(chaos),
            88..=89 if chaos => self.operator(),
            _ => {
                // Time passes: up to two seconds, sometimes a long pause (timeouts, backoff).
                let ms = if self.chance(0.05) {
                    self.rng.random_range(5_000..40_000)
                } else {
                    self.rng.random_range(0..2_000)
                };
                self.now += Duration::milliseconds(ms);
                Ok(())
            }
        }
    }

    /// Outbox relay: publish the oldest rows; a crash before deleting them republishes later.
    fn relay(&mut self, chaos: bool) -> Result<(), String> {
        let n = self.rng.random_range(1..=self.outbox.len().min(4));
        let batch: Vec<Task> = self.outbox[..n].to_vec();
        self.tasks.extend(batch);
        if chaos && self.chance(self.config.p_crash) {
            self.faults.crashes += 1;
            self.faults.duplicates += n as u32;
            return Ok(());
        }
        self.outbox.drain(..n);
        Ok(())
    }

    /// A worker takes any ready task (the broker does not promise order across redeliveries).
    fn work(&mut self, chaos: bool) -> Result<(), String> {
        let i = self.rng.random_range(0..self.tasks.len());
        let task = self.tasks[i].clone();
        if chaos && self.chance(self.config.p_lost) {
            // The attempt vanishes: no result will come; its start-to-close timer must retry.
            self.tasks.remove(i);
            self.faults.lost += 1;
            return Ok(());
        }
        let outcome = self.execute(&task, chaos);
        if chaos && self.chance(self.config.p_crash) {
            // Died after the effect, before publishing: the broker redelivers the task.
            self.faults.crashes += 1;
            self.faults.redeliveries += 1;
            return Ok(());
        }
        let reply = Reply {
            workflow: task.workflow,
            task: task.spec.task_id,
            outcome,
        };
        if chaos && self.chance(self.config.p_duplicate) {
            self.results.push(reply.clone());
            self.faults.duplicates += 1;
        }
        self.results.push(reply);
        if chaos && self.chance(self.config.p_crash) {
            // Died after publishing, before the ack: the task comes again.
            self.faults.crashes += 1;
            self.faults.redeliveries += 1;
            return Ok(());
        }
        self.tasks.remove(i);
        Ok(())
    }

    /// One activity execution, idempotent on the task's key like the real activities.
    fn execute(&mut self, task: &Task, chaos: bool) -> TaskOutcome {
        let key = task.spec.idempotency_key.clone();
        if let Some(effect) = self.effects.get_mut(&key) {
            if self.config.idempotent_activities {
                return effect.outcome.clone();
            }
            effect.applied += 1;
            return effect.outcome.clone();
        }
        if chaos && self.chance(self.config.p_transient) {
            self.faults.transient += 1;
            return TaskOutcome::Failed {
                error: ActivityError::retryable("unavailable", "simulated"),
            };
        }
        let declined = task.spec.activity == orderflow_workflows::order::contracts::PAYMENT_CHARGE
            && self.declined.contains(&task.workflow);
        let outcome = if declined {
            TaskOutcome::Failed {
                error: ActivityError::permanent("card_declined", "simulated"),
            }
        } else {
            TaskOutcome::Completed {
                output: json!({ "effect": key }),
            }
        };
        let applied = u32::from(!declined);
        self.effects.insert(
            key,
            Effect {
                workflow: task.workflow,
                activity: task.spec.activity.clone(),
                outcome: outcome.clone(),
                applied,
            },
        );
        outcome
    }

    /// Result intake: a batch of any ready results in one transaction; crashes before the commit
    /// (nothing applied, results come again) or after it (applied, and they come again anyway).
    fn intake(&mut self, chaos: bool) -> Result<(), String> {
        let n = self.rng.random_range(1..=self.results.len().min(8));
        let mut picked = Vec::with_capacity(n);
        for _ in 0..n {
            let i = self.rng.random_range(0..self.results.len());
            picked.push(self.results.remove(i));
        }
        if chaos && self.chance(self.config.p_crash) {
            self.faults.crashes += 1;
            self.results.extend(picked);
            return Ok(());
        }
        for reply in &picked {
            let event = match &reply.outcome {
                TaskOutcome::Completed { output } => Event::ActivityCompleted {
                    task_id: reply.task,
                    output: output.clone(),
                },
                TaskOutcome::Failed { error } => Event::ActivityFailed {
                    task_id: reply.task,
                    error: error.clone(),
                },
            };
            self.apply(reply.workflow, event)?;
        }
        if chaos && self.chance(self.config.p_crash) {
            self.faults.crashes += 1;
            self.faults.redeliveries += picked.len() as u32;
            self.results.extend(picked);
        }
        Ok(())
    }

    /// Timer poller: fires every due timer, soonest first.
    fn fire_timers(&mut self, chaos: bool) -> Result<(), String> {
        let mut due: Vec<(DateTime<Utc>, TimerId, WorkflowId)> = self
            .timers
            .iter()
            .filter(|(_, (_, at))| *at <= self.now)
            .map(|(t, (wf, at))| (*at, *t, *wf))
            .collect();
        if due.is_empty() {
            return Ok(());
        }
        if chaos && self.chance(self.config.p_crash) {
            self.faults.crashes += 1;
            return Ok(());
        }
        due.sort();
        for (_, timer, wf) in due {
            self.timers.remove(&timer);
            self.apply(wf, Event::TimerFired { timer_id: timer })?;
        }
        Ok(())
    }

    /// An operator cancels a random saga (refused after the pivot; that is fine).
    fn operator(&mut self) -> Result<(), String> {
        if !self.chance(self.config.p_cancel * 10.0) {
            return Ok(());
        }
        let ids: Vec<WorkflowId> = self.wfs.keys().copied().collect();
        let id = ids[self.rng.random_range(0..ids.len())];
        self.faults.cancels += 1;
        self.apply(
            id,
            Event::CancelRequested {
                actor: "sim".into(),
                reason: "simulated operator".into(),
            },
        )
    }

    fn report(&self, seed: u64, steps: usize) -> Report {
        let mut statuses = BTreeMap::new();
        for wf in self.wfs.values() {
            *statuses.entry(wf.state.status().to_string()).or_insert(0) += 1;
        }
        Report {
            seed,
            steps,
            events: self.wfs.values().map(|wf| wf.history.events.len()).sum(),
            faults: self.faults.clone(),
            statuses,
        }
    }

    fn forward_effect(&self, wf: WorkflowId, activity: &str) -> Option<&Effect> {
        self.effects.values().find(|e| {
            e.workflow == wf
                && e.activity == activity
                && matches!(e.outcome, TaskOutcome::Completed { .. })
        })
    }
}

fn settled(status: WorkflowStatus) -> bool {
    status.is_terminal() || status == WorkflowStatus::NeedsAttention
}

fn uuid_from(bits: u128) -> uuid::Uuid {
    uuid::Uuid::from_u128(bits)
}
