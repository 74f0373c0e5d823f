//! The invariants checked after every simulated run.

use std::collections::BTreeMap;

use orderflow_core::{Command, Event, Phase, WorkflowStatus, replay};
use orderflow_workflows::order::contracts::{
    INVENTORY_RELEASE, INVENTORY_RESERVE, NOTIFICATION_SEND, ORDER_CREATE, PAYMENT_CHARGE,
    PAYMENT_REFUND,
};

use crate::World;

impl World {
    /// Checks the books; the message names the saga and the broken rule.
    pub(crate) fn check(&self) -> Result<(), String> {
        for (id, wf) in &self.wfs {
            let status = wf.state.status();
            // Determinism: the recorded history replays against today's code to the same status.
            let replayed = replay(&self.registry, &wf.history).map_err(|e| format!("{id}: {e}"))?;
            if replayed.status() != status {
                return Err(format!(
                    "{id}: replay ends {} but the saga is {status}",
                    replayed.status()
                ));
            }
            // No result applied twice: each task's result changes the saga at most once.
            let mut applied: BTreeMap<_, u32> = BTreeMap::new();
            for e in wf.history.events.iter().filter(|e| e.ignored.is_none()) {
                if let Event::ActivityCompleted { task_id, .. }
                | Event::ActivityFailed { task_id, .. } = &e.event
                {
                    *applied.entry(*task_id).or_default() += 1;
                }
            }
            if let Some((task, n)) = applied.iter().find(|(_, n)| **n > 1) {
                return Err(format!(
                    "{id}: the result of task {task} was applied {n} times"
                ));
            }
            self.check_effects(*id, status)
                .and_then(|()| check_compensation_order(&wf.history))
                .map_err(|e| format!("{id}: {e}\n{}", trace(&wf.history)))?;
        }
        // Each effect at most once: a repeated task must not repeat its effect.
        if let Some((key, e)) = self.effects.iter().find(|(_, e)| e.applied > 1) {
            return Err(format!(
                "{} was applied {} times for key {key} (double effect)",
                e.activity, e.applied
            ));
        }
        Ok(())
    }

    fn check_effects(
        &self,
        id: orderflow_core::WorkflowId,
        status: WorkflowStatus,
    ) -> Result<(), String> {
        let done = |activity: &str| self.forward_effect(id, activity).is_some();
        match status {
            WorkflowStatus::Completed => {
                for a in [
                    INVENTORY_RESERVE,
                    PAYMENT_CHARGE,
                    ORDER_CREATE,
                    NOTIFICATION_SEND,
                ] {
                    if !done(a) {
                        return Err(format!("{id} completed without the effect of {a}"));
                    }
                }
                for a in [INVENTORY_RELEASE, PAYMENT_REFUND] {
                    if done(a) {
                        return Err(format!("{id} completed but {a} ran"));
                    }
                }
            }
            WorkflowStatus::Compensated | WorkflowStatus::Cancelled => {
                // Nothing reserved or charged is left behind.
                if done(INVENTORY_RESERVE) && !done(INVENTORY_RELEASE) {
                    return Err(format!(
                        "{id} is {status} but its reservation was never released"
                    ));
                }
                if done(PAYMENT_CHARGE) && !done(PAYMENT_REFUND) {
                    return Err(format!(
                        "{id} is {status} but its charge was never refunded"
                    ));
                }
                if done(NOTIFICATION_SEND) {
                    return Err(format!(
                        "{id} is {status} but the customer was told it was confirmed"
                    ));
                }
            }
            // Stuck by design (a compensation that keeps failing) or stopped by an operator.
            WorkflowStatus::NeedsAttention | WorkflowStatus::Terminated => {}
            WorkflowStatus::Running | WorkflowStatus::Compensating => {
                return Err(format!("{id} did not settle ({status})"));
            }
        }
        Ok(())
    }
}

/// Compensations run in the reverse order of the steps they undo, except for a step whose effect
/// was only learned late (a result for an attempt the saga no longer waited for): it is undone
/// when it is learned, wherever the chain is then.
fn check_compensation_order(history: &orderflow_core::History) -> Result<(), String> {
    let late: Vec<String> = history
        .events
        .iter()
        .filter_map(|e| e.ignored.as_deref())
        .filter(|why| why.contains("took effect"))
        .filter_map(|why| why.split('`').nth(1).map(str::to_owned))
        .collect();
    let mut order = Vec::new();
    for command in history.events.iter().flat_map(|e| &e.commands) {
        if let Command::ScheduleActivity(spec) = command
            && spec.phase == Phase::Compensate
            && spec.attempt == 1
            && !late.contains(&spec.step)
        {
            order.push(spec.step.clone());
        }
    }
    let steps = ["reserve", "charge", "create_order", "notify"];
    let position = |s: &str| steps.iter().position(|x| *x == s).unwrap_or(usize::MAX);
    if order.windows(2).any(|w| position(&w[0]) <= position(&w[1])) {
        return Err(format!("compensations ran out of order: {order:?}"));
    }
    Ok(())
}

/// One line per event: what happened and what it scheduled, to read a failing seed.
fn trace(history: &orderflow_core::History) -> String {
    history
        .events
        .iter()
        .map(|e| {
            let what = match &e.event {
                Event::ActivityCompleted { task_id, .. } => format!("completed {task_id}"),
                Event::ActivityFailed { task_id, error } => {
                    format!("failed {task_id} {}", error.code)
                }
                Event::TimerFired { timer_id } => format!("timer {timer_id}"),
                other => other.kind().to_owned(),
            };
            let did: Vec<String> = e
                .commands
                .iter()
                .map(|c| match c {
                    Command::ScheduleActivity(s) => {
                        format!("schedule {} #{} ({})", s.activity, s.attempt, s.task_id)
                    }
                    Command::StartTimer {
                        timer_id, purpose, ..
                    } => format!("timer+ {timer_id} {purpose:?}"),
                    Command::CancelTimer { timer_id } => format!("timer- {timer_id}"),
                    Command::Finish { status, .. } => format!("finish {status}"),
                    Command::RequireAttention { .. } => "attention".to_owned(),
                })
                .collect();
            format!(
                "  #{} {} {what}{} -> {}",
                e.seq,
                e.at.format("%H:%M:%S%.3f"),
                e.ignored
                    .as_ref()
                    .map(|i| format!(" (ignored: {i})"))
                    .unwrap_or_default(),
                did.join("; ")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}
