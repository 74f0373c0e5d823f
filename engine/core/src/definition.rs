//! Saga definitions and the checks that make a bad one fail to build.

use std::{collections::BTreeSet, fmt, time::Duration};

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::RetryPolicy;

/// The role of a step in the saga (Garcia-Molina's compensatable* pivot? retriable*).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepKind {
    /// Undone by its compensation if a later step fails before the pivot.
    Compensatable,
    /// Once it succeeds the saga only moves forward.
    Pivot,
    /// After the pivot: retried until it succeeds, never compensated.
    Retriable,
    /// Runs no activity: waits for a named signal until a timeout ([`Wait`]). Before the pivot
    /// a wait that times out fails the saga (it compensates); after it, it needs an operator.
    Wait,
}

impl StepKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Compensatable => "compensatable",
            Self::Pivot => "pivot",
            Self::Retriable => "retriable",
            Self::Wait => "wait",
        }
    }
}

/// The activity that undoes a step, with its own policy.
#[derive(Clone, Debug, PartialEq)]
pub struct Compensation {
    pub activity: String,
    /// Exhausting it puts the saga in `needs_attention`.
    pub retry: RetryPolicy,
    pub start_to_close: Duration,
}

/// What a [`StepKind::Wait`] step waits for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wait {
    /// The signal's name (`parcel_received`); its payload becomes the step's output.
    pub signal: String,
    /// How long to wait from the moment the step is reached; a durable timer holds the deadline.
    pub timeout: Duration,
}

/// One step of a saga definition.
#[derive(Clone, PartialEq)]
pub struct Step {
    pub name: String,
    pub activity: String,
    pub kind: StepKind,
    pub compensation: Option<Compensation>,
    pub retry: RetryPolicy,
    /// How long one attempt may take from scheduling to its result before it counts as lost.
    pub start_to_close: Duration,
    /// The step changes nothing (a check, a lookup), so it has nothing to compensate.
    pub read_only: bool,
    /// Set exactly for [`StepKind::Wait`] steps, whose `activity` is empty.
    pub wait: Option<Wait>,
}

// By hand so that a step without a wait prints as it did before waits existed: the definition's
// fingerprint is built from this text, and a changed fingerprint makes every running saga replay.
impl fmt::Debug for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Step");
        d.field("name", &self.name)
            .field("activity", &self.activity)
            .field("kind", &self.kind)
            .field("compensation", &self.compensation)
            .field("retry", &self.retry)
            .field("start_to_close", &self.start_to_close)
            .field("read_only", &self.read_only);
        if let Some(wait) = &self.wait {
            d.field("wait", wait);
        }
        d.finish()
    }
}

impl Step {
    fn new(name: &str, activity: &str, kind: StepKind) -> Self {
        Self {
            name: name.to_owned(),
            activity: activity.to_owned(),
            kind,
            compensation: None,
            retry: RetryPolicy::default(),
            start_to_close: Duration::from_secs(30),
            read_only: false,
            wait: None,
        }
    }

    /// Waits for the signal `signal` for at most `timeout` from the moment the step is reached.
    /// The signal's payload is the step's output. A signal that arrived earlier (while an earlier
    /// step ran) counts: the step completes as soon as it is reached.
    pub fn wait(name: &str, signal: &str, timeout: Duration) -> Self {
        Self {
            start_to_close: timeout,
            wait: Some(Wait {
                signal: signal.to_owned(),
                timeout,
            }),
            ..Self::new(name, "", StepKind::Wait)
        }
    }

    /// A step before the pivot that changes nothing (a fraud check): it needs no compensation,
    /// and says so explicitly rather than by forgetting one.
    pub fn read_only(name: &str, activity: &str) -> Self {
        Self {
            read_only: true,
            ..Self::new(name, activity, StepKind::Compensatable)
        }
    }

    pub fn compensatable(name: &str, activity: &str) -> Self {
        Self::new(name, activity, StepKind::Compensatable)
    }

    pub fn pivot(name: &str, activity: &str) -> Self {
        Self::new(name, activity, StepKind::Pivot)
    }

    /// Retried until it succeeds: the policy's attempt limit does not apply.
    pub fn retriable(name: &str, activity: &str) -> Self {
        Self::new(name, activity, StepKind::Retriable)
    }

    /// Sets the compensation, retried up to 10 attempts before the saga needs attention.
    pub fn compensate_with(mut self, activity: &str) -> Self {
        self.compensation = Some(Compensation {
            activity: activity.to_owned(),
            retry: RetryPolicy {
                max_attempts: 10,
                ..RetryPolicy::default()
            },
            start_to_close: self.start_to_close,
        });
        self
    }

    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    pub fn compensation_retry(mut self, policy: RetryPolicy) -> Self {
        if let Some(c) = &mut self.compensation {
            c.retry = policy;
        }
        self
    }

    pub fn start_to_close(mut self, timeout: Duration) -> Self {
        self.start_to_close = timeout;
        if let Some(c) = &mut self.compensation {
            c.start_to_close = timeout;
        }
        self
    }
}

/// Why a definition does not build.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DefinitionError {
    #[error("saga `{0}` has no steps")]
    NoSteps(String),
    #[error("step `{0}` is compensatable but has no compensation")]
    MissingCompensation(String),
    #[error("step `{0}` is retriable and cannot have a compensation")]
    RetriableWithCompensation(String),
    #[error("step name `{0}` is used twice")]
    DuplicateStep(String),
    #[error("saga has more than one pivot (`{0}`)")]
    SecondPivot(String),
    #[error(
        "step `{0}` is out of order: compensatable steps come before the pivot, retriable ones after"
    )]
    OutOfOrder(String),
    #[error("step `{0}` has a start-to-close timeout of zero")]
    ZeroTimeout(String),
    #[error("step `{0}` waits for a signal and cannot have an activity or a compensation")]
    WaitWithActivity(String),
}

type InputCheck = fn(&Value) -> Result<(), String>;

/// A checked, versioned saga: a list of steps and workflow-level policies.
#[derive(Clone)]
pub struct SagaDefinition {
    pub workflow_type: String,
    pub version: u32,
    pub steps: Vec<Step>,
    /// The whole saga must reach the pivot within this time or it compensates.
    pub deadline: Option<Duration>,
    /// What happens to a running saga whose history stops replaying.
    pub nondeterminism: crate::NondeterminismPolicy,
    pub(crate) input_check: Option<InputCheck>,
}

impl fmt::Debug for SagaDefinition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SagaDefinition")
            .field("workflow_type", &self.workflow_type)
            .field("version", &self.version)
            .field("steps", &self.steps)
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

impl SagaDefinition {
    pub fn builder(workflow_type: &str, version: u32) -> SagaBuilder {
        SagaBuilder {
            def: SagaDefinition {
                workflow_type: workflow_type.to_owned(),
                version,
                steps: Vec::new(),
                deadline: None,
                nondeterminism: crate::NondeterminismPolicy::default(),
                input_check: None,
            },
        }
    }

    /// A stable hash (FNV-1a) of everything that shapes decisions: steps, kinds, activities,
    /// policies, timeouts and the deadline.
    pub fn fingerprint(&self) -> String {
        let shape = format!("{:?}|{:?}", self.steps, self.deadline);
        let hash = shape.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        format!("{}@{}:{hash:016x}", self.workflow_type, self.version)
    }

    /// The wait of step `idx`, if it is a wait step.
    pub fn wait_of(&self, idx: usize) -> Option<&Wait> {
        self.steps.get(idx)?.wait.as_ref()
    }

    /// Index of the pivot step, if any.
    pub fn pivot(&self) -> Option<usize> {
        self.steps.iter().position(|s| s.kind == StepKind::Pivot)
    }
}

/// Builds a [`SagaDefinition`]; `build` checks it.
#[derive(Debug)]
pub struct SagaBuilder {
    def: SagaDefinition,
}

impl SagaBuilder {
    pub fn step(mut self, step: Step) -> Self {
        self.def.steps.push(step);
        self
    }

    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.def.deadline = Some(deadline);
        self
    }

    /// What happens to a running saga of this definition whose history stops replaying.
    pub fn on_nondeterminism(mut self, policy: crate::NondeterminismPolicy) -> Self {
        self.def.nondeterminism = policy;
        self
    }

    /// Start requests must deserialize into `T`; serde's message names the offending field.
    pub fn input<T: DeserializeOwned>(mut self) -> Self {
        self.def.input_check = Some(|v| T::deserialize(v).map(|_| ()).map_err(|e| e.to_string()));
        self
    }

    pub fn build(self) -> Result<SagaDefinition, DefinitionError> {
        let def = self.def;
        if def.steps.is_empty() {
            return Err(DefinitionError::NoSteps(def.workflow_type));
        }
        let mut names = BTreeSet::new();
        let mut seen_pivot = false;
        let mut seen_retriable = false;
        for step in &def.steps {
            if !names.insert(step.name.as_str()) {
                return Err(DefinitionError::DuplicateStep(step.name.clone()));
            }
            if step.start_to_close.is_zero() {
                return Err(DefinitionError::ZeroTimeout(step.name.clone()));
            }
            match step.kind {
                StepKind::Compensatable => {
                    if step.compensation.is_none() && !step.read_only {
                        return Err(DefinitionError::MissingCompensation(step.name.clone()));
                    }
                    if seen_pivot || seen_retriable {
                        return Err(DefinitionError::OutOfOrder(step.name.clone()));
                    }
                }
                StepKind::Pivot => {
                    if seen_pivot {
                        return Err(DefinitionError::SecondPivot(step.name.clone()));
                    }
                    if seen_retriable {
                        return Err(DefinitionError::OutOfOrder(step.name.clone()));
                    }
                    seen_pivot = true;
                }
                StepKind::Retriable => {
                    if step.compensation.is_some() {
                        return Err(DefinitionError::RetriableWithCompensation(
                            step.name.clone(),
                        ));
                    }
                    seen_retriable = true;
                }
                // A wait changes nothing, so it may stand anywhere: its kind of failure (compensate
                // or needs attention) follows from whether the pivot succeeded before it.
                StepKind::Wait => {
                    if step.compensation.is_some()
                        || !step.activity.is_empty()
                        || step.wait.as_ref().is_none_or(|w| w.timeout.is_zero())
                    {
                        return Err(DefinitionError::WaitWithActivity(step.name.clone()));
                    }
                }
            }
            if step.wait.is_some() && step.kind != StepKind::Wait {
                return Err(DefinitionError::WaitWithActivity(step.name.clone()));
            }
        }
        Ok(def)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compensatable_step_without_compensation_does_not_build() {
        let err = SagaDefinition::builder("t", 1)
            .step(Step::compensatable("reserve", "inventory.reserve"))
            .build()
            .unwrap_err();
        assert_eq!(err, DefinitionError::MissingCompensation("reserve".into()));
    }

    #[test]
    fn a_read_only_step_needs_no_compensation() {
        let def = SagaDefinition::builder("t", 1)
            .step(Step::read_only("check", "fraud.check"))
            .step(Step::pivot("p", "a"))
            .build()
            .expect("a read-only step builds without a compensation");
        assert!(def.steps[0].read_only && def.steps[0].compensation.is_none());
    }

    #[test]
    fn order_of_kinds_is_checked() {
        let err = SagaDefinition::builder("t", 1)
            .step(Step::pivot("p", "a"))
            .step(Step::compensatable("c", "b").compensate_with("u"))
            .build()
            .unwrap_err();
        assert_eq!(err, DefinitionError::OutOfOrder("c".into()));
        let err = SagaDefinition::builder("t", 1)
            .step(Step::pivot("p", "a"))
            .step(Step::pivot("q", "b"))
            .build()
            .unwrap_err();
        assert_eq!(err, DefinitionError::SecondPivot("q".into()));
        let err = SagaDefinition::builder("t", 1)
            .step(Step::retriable("r", "a").compensate_with("x"))
            .build()
            .unwrap_err();
        assert_eq!(err, DefinitionError::RetriableWithCompensation("r".into()));
        assert!(matches!(
            SagaDefinition::builder("t", 1).build(),
            Err(DefinitionError::NoSteps(_))
        ));
        let err = SagaDefinition::builder("t", 1)
            .step(Step::retriable("r", "a"))
            .step(Step::retriable("r", "b"))
            .build()
            .unwrap_err();
        assert_eq!(err, DefinitionError::DuplicateStep("r".into()));
    }
}
