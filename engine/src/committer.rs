//! The committer: the one writer of an engine process. Starts from the API, results from the
//! intake, due timers and operator actions all arrive here; each cycle takes whatever is waiting,
//! decides it on the workflows' states and writes all of it in one batch (one statement and one
//! commit on Postgres), then answers, and hands the batch's messages to the publisher. While a
//! batch commits the next one gathers, so the busier the engine, the larger its batches: group
//! commit across workflows (DESIGN.md §3.1, §4).
//!
//! - **No row locks.** States are kept in memory between batches ([`Cache`]); a workflow not in
//!   it is loaded without a lock. Every write is guarded by the workflow's history sequence: one
//!   that another writer (another replica, a committer of a test) moved meanwhile is not
//!   written, its cached state is dropped, and its events are decided again on the stored state
//!   in the next cycle. The cache is therefore only ever a cache.
//! - **Apply, commit, then act.** Nothing is answered, acked or published before its batch
//!   committed. A batch that fails to commit drops the states it touched and is decided again
//!   from the store after a pause; nothing of it was answered.
//! - **Dispatch from memory.** After the commit the batch's task and finished-event messages go
//!   to the queue straight from memory ([`crate::publisher`]; task messages transient); their
//!   outbox rows are deleted by the next batch once the queue confirmed them. Rows an engine
//!   left behind (it died, the broker was away) are published by the relay
//!   ([`crate::loops::relay`]).

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use chrono::{DateTime, Utc};
use orderflow_core::{Event, History, Registry, WorkflowId, WorkflowState};
use orderflow_queue::TaskQueue;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    apply::{
        Applier, ApplyError, Entry, Meta, Outcome, StartError, StartRequest, Started, Writes, now,
    },
    metrics,
    publisher::{Publisher, Settle, ToPublisher},
    store::{
        Loaded, Store,
        change::{NewTask, Written},
        reads::Keep,
    },
};

/// Most inputs one batch takes; the rest wait for the next.
const MAX_BATCH: usize = 1024;
/// Most workflow states kept between batches. Finished ones are dropped at once; past this, the
/// oldest entries go.
const MAX_CACHED: usize = 100_000;
/// How long confirmed outbox rows may wait for a batch to delete them before an empty one does.
const FLUSH_AFTER: Duration = Duration::from_millis(50);

/// What the committer takes.
enum Input {
    Start {
        req: StartRequest,
        reply: oneshot::Sender<Result<Started, StartError>>,
    },
    Apply {
        events: Vec<(WorkflowId, Event)>,
        keep: Option<Keep>,
        reply: oneshot::Sender<Result<Vec<Outcome>, ApplyError>>,
    },
}

/// A handle on an engine's committer; clones share it. The committer runs while a handle does.
#[derive(Clone)]
pub struct Committer {
    tx: mpsc::UnboundedSender<Input>,
    applier: Applier,
    /// Cancelled when the committer or its publisher has ended.
    ended: CancellationToken,
}

impl std::fmt::Debug for Committer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Committer").finish_non_exhaustive()
    }
}

impl Committer {
    /// Starts a committer on `store`, publishing to `queue`; `timers` is notified when a batch
    /// starts a timer due soon.
    pub fn spawn<S: Store, Q: TaskQueue>(
        store: S,
        queue: Q,
        applier: Applier,
        timers: Arc<Notify>,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let (to_publish, published) = (mpsc::unbounded_channel(), Arc::default());
        let confirmed = Arc::new(Notify::new());
        let publisher = Publisher::new(queue, Arc::clone(&published), Arc::clone(&confirmed));
        let publisher = tokio::spawn(publisher.run(to_publish.1));
        let run = Run {
            store,
            applier: applier.clone(),
            cache: Cache::default(),
            carried: VecDeque::new(),
            publisher: to_publish.0,
            published,
            confirmed,
            timers,
        };
        let run = tokio::spawn(run.run(rx));
        let ended = CancellationToken::new();
        let on_end = ended.clone();
        tokio::spawn(async move {
            let (which, outcome) = tokio::select! {
                r = run => ("committer", r),
                r = publisher => ("publisher", r),
            };
            if let Err(e) = outcome {
                tracing::error!(task = which, error = %e, "the engine's {which} died");
            }
            on_end.cancel();
        });
        Self { tx, applier, ended }
    }

    /// Resolves once the committer or its publisher has ended: when every handle is gone, or
    /// when one of them panicked, after which this engine can write nothing.
    pub async fn ended(&self) {
        self.ended.cancelled().await
    }

    /// The definitions and queue names the committer decides with.
    pub fn applier(&self) -> &Applier {
        &self.applier
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.applier.registry
    }

    /// Starts a workflow; answers once it is committed. A repeated idempotency key with the
    /// same request hash answers the first workflow; with another hash it is refused.
    pub async fn start(&self, req: StartRequest) -> Result<Started, StartError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Input::Start { req, reply })
            .map_err(|_| ApplyError::Stopped)?;
        answer.await.map_err(|_| ApplyError::Stopped)?
    }

    /// Applies `events` (in order) and answers each one's outcome once they are committed. With
    /// `keep`, the outcomes are first decided on copies, and nothing is written unless `keep`
    /// approves them (a single operator action keeps nothing that was refused).
    pub async fn apply(
        &self,
        events: Vec<(WorkflowId, Event)>,
        keep: Option<Keep>,
    ) -> Result<Vec<Outcome>, ApplyError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Input::Apply {
                events,
                keep,
                reply,
            })
            .map_err(|_| ApplyError::Stopped)?;
        answer.await.map_err(|_| ApplyError::Stopped)?
    }
}

/// Workflow states between batches.
#[derive(Default)]
struct Cache {
    entries: HashMap<Uuid, Entry>,
    /// Insertion order, for evicting the oldest.
    order: VecDeque<Uuid>,
}

impl Cache {
    fn insert(&mut self, entry: Entry) {
        let id = entry.meta.id;
        if self.entries.insert(id, entry).is_none() {
            self.order.push_back(id);
        }
        while self.entries.len() > MAX_CACHED {
            match self.order.pop_front() {
                Some(old) => {
                    self.entries.remove(&old);
                }
                None => break,
            }
        }
        if self.order.len() > 2 * MAX_CACHED {
            let entries = &self.entries;
            self.order.retain(|id| entries.contains_key(id));
        }
    }

    fn remove(&mut self, id: &Uuid) {
        self.entries.remove(id);
    }
}

/// An input still being worked on.
enum Pending {
    /// Answered; its slot stays so indices into the batch hold.
    Answered,
    Start {
        req: StartRequest,
        reply: oneshot::Sender<Result<Started, StartError>>,
    },
    Apply {
        events: Vec<(WorkflowId, Event)>,
        /// Each event's outcome once it is settled (committed, refused, or for no workflow).
        done: Vec<Option<Outcome>>,
        keep: Option<Keep>,
        reply: oneshot::Sender<Result<Vec<Outcome>, ApplyError>>,
    },
}

struct Run<S> {
    store: S,
    applier: Applier,
    cache: Cache,
    /// Inputs a batch could not finish (a workflow another writer moved): first in the next.
    carried: VecDeque<Pending>,
    publisher: mpsc::UnboundedSender<ToPublisher>,
    /// Task ids of outbox rows the queue confirmed, for the next batch to delete.
    published: Arc<Mutex<Vec<Uuid>>>,
    /// Notified when the publisher adds to `published`.
    confirmed: Arc<Notify>,
    timers: Arc<Notify>,
}

impl<S: Store> Run<S> {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Input>) {
        loop {
            let mut batch: Vec<Pending> = self.carried.drain(..).collect();
            if batch.is_empty() {
                let flush = !self.published.lock().expect("not poisoned").is_empty();
                let first = if flush {
                    match tokio::time::timeout(FLUSH_AFTER, rx.recv()).await {
                        Ok(first) => first,
                        // Idle with confirmed rows to delete: a batch of only those.
                        Err(_) => {
                            self.cycle(Vec::new()).await;
                            continue;
                        }
                    }
                } else {
                    tokio::select! {
                        first = rx.recv() => first,
                        // Confirmations came in while idle: look again.
                        () = self.confirmed.notified() => continue,
                    }
                };
                match first {
                    Some(input) => batch.push(input.into()),
                    None => return,
                }
            }
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(input) => batch.push(input.into()),
                    Err(_) => break,
                }
            }
            self.cycle(batch).await;
        }
    }

    /// Decides and writes `batch` until it is written; settles what it can and carries the rest.
    async fn cycle(&mut self, mut batch: Vec<Pending>) {
        let mut delay = Duration::from_millis(50);
        loop {
            match self.attempt(&mut batch).await {
                Ok(()) => break,
                Err(e) => {
                    // A failed attempt may have advanced cached states it never wrote.
                    self.cache = Cache::default();
                    tracing::error!(error = %e, retry_in = ?delay, "committing a batch failed");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
        for p in batch {
            match p {
                Pending::Apply {
                    events,
                    done,
                    keep,
                    reply,
                } if done.iter().any(Option::is_none) => {
                    self.carried.push_back(Pending::Apply {
                        events,
                        done,
                        keep,
                        reply,
                    });
                }
                Pending::Apply { done, reply, .. } => {
                    let _ = reply.send(Ok(done.into_iter().flatten().collect()));
                }
                // Starts are answered (or carried) by `attempt`.
                Pending::Start { .. } | Pending::Answered => {}
            }
        }
    }

    /// One decide-and-write of `batch`. On `Err` nothing of it was written or answered.
    async fn attempt(&mut self, batch: &mut [Pending]) -> Result<(), ApplyError> {
        let at = now();
        let wanted: Vec<Uuid> = batch
            .iter()
            .flat_map(|p| match p {
                Pending::Apply { events, done, .. } => events
                    .iter()
                    .zip(done)
                    .filter(|(_, d)| d.is_none())
                    .map(|((id, _), _)| id.0)
                    .collect(),
                Pending::Start { .. } | Pending::Answered => Vec::new(),
            })
            .filter(|id| !self.cache.entries.contains_key(id))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let (fingerprints, detected) = self.load(&wanted).await?;

        let mut w = Writes::default();
        // The stored sequence each touched workflow was decided on.
        let mut touched: HashMap<Uuid, i64> = HashMap::new();
        // Outcomes decided in this attempt, settled only if the workflow's write holds.
        let mut tentative: Vec<(usize, usize, Uuid, Outcome)> = Vec::new();
        let mut starts: Vec<(usize, Result<Entry, StartError>)> = Vec::new();
        // Workflows loaded in this attempt: a refusal decided on one of them is final; one
        // decided on an older cached state is decided again after a reload.
        let fresh: HashSet<Uuid> = wanted.iter().copied().collect();
        let mut keys: HashSet<String> = HashSet::new();
        let mut stale_refusals: Vec<Uuid> = Vec::new();
        // Cached states an operator action wants decided on what is stored: dropped once this
        // attempt is written (other inputs of the batch may have been decided on them already).
        let mut reload: HashSet<Uuid> = HashSet::new();
        // Task messages this attempt settles, for the publisher to stop answering for.
        let mut settled = Settle::default();

        for (id, event) in &detected {
            if let Some(entry) = self.cache.entries.get_mut(&id.0) {
                touched.entry(id.0).or_insert(entry.last_seq);
                self.applier.decide(entry, event, at, &mut w)?;
            }
        }
        for (i, p) in batch.iter_mut().enumerate() {
            match p {
                Pending::Start { req, .. } => {
                    // One start per idempotency key per batch; a second waits for the next.
                    if let Some(key) = &req.idempotency_key
                        && !keys.insert(key.clone())
                    {
                        continue;
                    }
                    match self.applier.start(req, at, &mut w) {
                        Ok((entry, row)) => {
                            starts.push((i, Ok(entry)));
                            w.change.creates.push(row);
                        }
                        Err(e) => starts.push((i, Err(e))),
                    }
                }
                Pending::Answered => {}
                Pending::Apply {
                    events, done, keep, ..
                } => {
                    if keep.is_some() {
                        let stale: Vec<Uuid> = events
                            .iter()
                            .map(|(id, _)| id.0)
                            .filter(|id| !fresh.contains(id) && self.cache.entries.contains_key(id))
                            .collect();
                        if !stale.is_empty() {
                            // Decide operator actions on what is stored: reload after this
                            // attempt and come back in the next batch.
                            reload.extend(stale);
                            continue;
                        }
                        let outcomes = self.dry_run(events, at)?;
                        if !keep.take().is_some_and(|keep| keep(&outcomes)) {
                            *done = outcomes.into_iter().map(Some).collect();
                            continue;
                        }
                    }
                    for (j, ((id, event), d)) in events.iter().zip(done.iter_mut()).enumerate() {
                        // Settled already, or its workflow is to be reloaded: it waits for the
                        // next batch.
                        if d.is_some() || reload.contains(&id.0) {
                            continue;
                        }
                        let Some(entry) = self.cache.entries.get_mut(&id.0) else {
                            if let Event::TimerFired { timer_id } = event {
                                w.change.orphan_timers.push(timer_id.0);
                            }
                            *d = Some(Outcome::NotFound);
                            continue;
                        };
                        touched.entry(id.0).or_insert(entry.last_seq);
                        match self.applier.decide(entry, event, at, &mut w)? {
                            Outcome::Rejected(e) if fresh.contains(&id.0) => {
                                settled.tasks.extend(task_of(event));
                                *d = Some(Outcome::Rejected(e))
                            }
                            // Refused on a cached state: decided again on the stored one.
                            Outcome::Rejected(_) => stale_refusals.push(id.0),
                            applied => tentative.push((i, j, id.0, applied)),
                        }
                    }
                }
            }
        }
        for (id, prev) in &touched {
            let entry = &self.cache.entries[id];
            if entry.last_seq > *prev {
                let fp = fingerprints.get(id).cloned();
                w.change
                    .updates
                    .push(self.applier.update(entry, *prev, at, fp)?);
            }
        }
        w.change.published = std::mem::take(&mut *self.published.lock().expect("not poisoned"));

        let written = match self.store.write(&w.change).await {
            Ok(written) => written,
            Err(e) => {
                // Put the confirmations back for the next try.
                self.published
                    .lock()
                    .expect("not poisoned")
                    .extend(w.change.published.drain(..));
                return Err(e.into());
            }
        };

        // Settle what went in; drop the states of workflows another writer moved, so their
        // events are decided again on what is stored.
        for id in touched.keys() {
            if !written.updated.contains(id) {
                let moved = self
                    .cache
                    .entries
                    .get(id)
                    .is_some_and(|e| e.last_seq > touched[id]);
                if moved {
                    self.cache.remove(id);
                }
            }
        }
        for id in stale_refusals.iter().chain(&reload) {
            self.cache.remove(id);
        }
        for (i, j, id, outcome) in tentative {
            if written.updated.contains(&id)
                && let Pending::Apply { events, done, .. } = &mut batch[i]
            {
                settled.tasks.extend(task_of(&events[j].1));
                done[j] = Some(outcome);
            }
        }
        self.answer_starts(batch, starts, &written).await;
        for id in touched.keys().chain(written.created.iter()) {
            let finished = self
                .cache
                .entries
                .get(id)
                .is_some_and(|e| e.state.status().is_terminal());
            if finished {
                self.cache.remove(id);
                settled.workflows.push(*id);
            }
        }
        w.count_finished(|id| written.contains(id));
        metrics::BATCH_SIZE
            .with_label_values(&["committer"])
            .observe(w.change.history.len() as f64);
        if w.soonest_timer
            .is_some_and(|t| t < now() + chrono::Duration::seconds(1))
        {
            self.timers.notify_one();
        }
        let messages: Vec<NewTask> = w
            .change
            .outbox
            .into_iter()
            .filter(|m| written.contains(&m.workflow_id))
            .collect();
        if !messages.is_empty() {
            let _ = self.publisher.send(ToPublisher::Publish(messages));
        }
        if !settled.is_empty() {
            let _ = self.publisher.send(ToPublisher::Settle(settled));
        }
        Ok(())
    }

    /// Loads `ids` into the cache. A workflow whose definition changed since it last ran has its
    /// history replayed on the deployed one; answers the fingerprints to record for those that
    /// replay, and a `NondeterminismDetected` event for those that do not.
    async fn load(
        &mut self,
        ids: &[Uuid],
    ) -> Result<(HashMap<Uuid, String>, Vec<(WorkflowId, Event)>), ApplyError> {
        let mut fingerprints = HashMap::new();
        let mut detected = Vec::new();
        if ids.is_empty() {
            return Ok((fingerprints, detected));
        }
        for row in self.store.load(ids).await? {
            let Loaded {
                id,
                workflow_type,
                version,
                state,
                last_seq,
                business_keys,
                definition_fingerprint,
            } = row;
            let mut state: Box<dyn WorkflowState> =
                serde_json::from_str(&state).map_err(|e| ApplyError::CorruptState(id, e))?;
            if let Some(def) = self.applier.registry.get(&workflow_type, version as u32) {
                let current = def.fingerprint();
                if definition_fingerprint.as_deref() != Some(current.as_str()) {
                    let history = History {
                        workflow_id: WorkflowId(id),
                        workflow_type: workflow_type.clone(),
                        version: version as u32,
                        events: self.store.history(id).await?,
                    };
                    match self.applier.recheck(&history) {
                        Ok(replayed) => state = replayed,
                        Err(detail) => detected
                            .push((WorkflowId(id), Event::NondeterminismDetected { detail })),
                    }
                    fingerprints.insert(id, current);
                }
            }
            self.cache.insert(Entry {
                meta: Meta {
                    id,
                    workflow_type,
                    business_keys,
                },
                version: version as u32,
                state,
                last_seq,
            });
        }
        Ok((fingerprints, detected))
    }

    /// The outcomes `events` would have, decided on copies of their states.
    fn dry_run(
        &self,
        events: &[(WorkflowId, Event)],
        at: DateTime<Utc>,
    ) -> Result<Vec<Outcome>, ApplyError> {
        let mut copies: HashMap<Uuid, Entry> = HashMap::new();
        let mut scratch = Writes::default();
        let mut outcomes = Vec::with_capacity(events.len());
        for (id, event) in events {
            let entry = match copies.get_mut(&id.0) {
                Some(e) => e,
                None => match self.cache.entries.get(&id.0) {
                    Some(e) => copies.entry(id.0).or_insert_with(|| e.clone()),
                    None => {
                        outcomes.push(Outcome::NotFound);
                        continue;
                    }
                },
            };
            outcomes.push(self.applier.decide(entry, event, at, &mut scratch)?);
        }
        Ok(outcomes)
    }

    /// Answers the batch's starts: created ones are cached; a start whose key was taken answers
    /// the first workflow (or is refused for another request); one that waited for its key's
    /// turn is carried.
    async fn answer_starts(
        &mut self,
        batch: &mut [Pending],
        starts: Vec<(usize, Result<Entry, StartError>)>,
        written: &Written,
    ) {
        let mut answered: HashSet<usize> = HashSet::new();
        for (i, decided) in starts {
            answered.insert(i);
            let Pending::Start { req, reply } = std::mem::replace(&mut batch[i], Pending::Answered)
            else {
                continue;
            };
            let result = match decided {
                Err(e) => Err(e),
                Ok(entry) if written.created.contains(&entry.meta.id) => {
                    metrics::WORKFLOWS_STARTED
                        .with_label_values(&[&entry.meta.workflow_type])
                        .inc();
                    let id = WorkflowId(entry.meta.id);
                    self.cache.insert(entry);
                    Ok(Started { id, created: true })
                }
                // Its idempotency key was taken: the first workflow, if the request is the same.
                Ok(_) => {
                    let key = req.idempotency_key.as_deref().unwrap_or_default();
                    self.existing(key, &req.request_hash).await
                }
            };
            let _ = reply.send(result);
        }
        // Starts not decided in this batch (their key's turn comes next) are carried.
        for (i, p) in batch.iter_mut().enumerate() {
            if matches!(p, Pending::Start { .. }) && !answered.contains(&i) {
                self.carried
                    .push_back(std::mem::replace(p, Pending::Answered));
            }
        }
    }

    async fn existing(&self, key: &str, hash: &Option<String>) -> Result<Started, StartError> {
        match self
            .store
            .by_idempotency_key(key)
            .await
            .map_err(ApplyError::from)?
        {
            Some((id, stored)) if stored == *hash => Ok(Started {
                id: WorkflowId(id),
                created: false,
            }),
            _ => Err(StartError::KeyReused),
        }
    }
}

impl From<Input> for Pending {
    fn from(input: Input) -> Self {
        match input {
            Input::Start { req, reply } => Pending::Start { req, reply },
            Input::Apply {
                events,
                keep,
                reply,
            } => {
                let done = vec![None; events.len()];
                Pending::Apply {
                    events,
                    done,
                    keep,
                    reply,
                }
            }
        }
    }
}

/// The task a result event settles.
fn task_of(event: &Event) -> Option<Uuid> {
    match event {
        Event::ActivityCompleted { task_id, .. } | Event::ActivityFailed { task_id, .. } => {
            Some(task_id.0)
        }
        _ => None,
    }
}
