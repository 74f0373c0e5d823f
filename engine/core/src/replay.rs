//! Deterministic replay: feed a recorded history to today's definitions and check that every
//! event produces the commands it produced when it was recorded.

use std::fmt;

use crate::{Command, DecideError, Event, History, Registry, WorkflowState};

/// Why a history does not replay.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("history of {workflow_id} is empty or does not start with workflow_started")]
    NoStart { workflow_id: String },
    #[error("no definition {workflow_type} v{version} is registered")]
    UnknownDefinition { workflow_type: String, version: u32 },
    #[error(
        "workflow {workflow_id} ({workflow_type} v{version}) is not deterministic at event {seq} ({event}): recorded {recorded}, now {new}"
    )]
    Nondeterminism {
        workflow_id: String,
        workflow_type: String,
        version: u32,
        seq: u64,
        event: &'static str,
        recorded: CommandText,
        new: CommandText,
    },
    #[error("workflow {workflow_id}: event {seq} ({event}) is refused by today's code: {error}")]
    Refused {
        workflow_id: String,
        seq: u64,
        event: &'static str,
        error: DecideError,
    },
}

/// A command (or its absence) shown as JSON in a mismatch message. Boxed so that the error, and
/// every `Result` carrying it, stays small.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandText(pub Option<Box<Command>>);

impl fmt::Display for CommandText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(c) => write!(
                f,
                "{}",
                serde_json::to_string(c).unwrap_or_else(|_| format!("{c:?}"))
            ),
            None => f.write_str("no command"),
        }
    }
}

/// Replays `history` and returns the state it folds to.
pub fn replay(
    registry: &Registry,
    history: &History,
) -> Result<Box<dyn WorkflowState>, ReplayError> {
    let wf = history.workflow_id.to_string();
    let Some((first, rest)) = history.events.split_first() else {
        return Err(ReplayError::NoStart { workflow_id: wf });
    };
    let Event::WorkflowStarted {
        workflow_type,
        version,
        input,
    } = &first.event
    else {
        return Err(ReplayError::NoStart { workflow_id: wf });
    };
    let def =
        registry
            .get(workflow_type, *version)
            .ok_or_else(|| ReplayError::UnknownDefinition {
                workflow_type: workflow_type.clone(),
                version: *version,
            })?;
    let refused = |seq, event: &Event, error| ReplayError::Refused {
        workflow_id: wf.clone(),
        seq,
        event: event.kind(),
        error,
    };
    let (mut state, decision) = def
        .start(history.workflow_id, input, first.at)
        .map_err(|e| refused(first.seq, &first.event, e))?;
    let compare = |seq: u64, event: &Event, recorded: &[Command], new: &[Command]| {
        let n = recorded.len().max(new.len());
        match (0..n).find(|&i| recorded.get(i) != new.get(i)) {
            None => Ok(()),
            Some(i) => Err(ReplayError::Nondeterminism {
                workflow_id: wf.clone(),
                workflow_type: workflow_type.clone(),
                version: *version,
                seq,
                event: event.kind(),
                recorded: CommandText(recorded.get(i).cloned().map(Box::new)),
                new: CommandText(new.get(i).cloned().map(Box::new)),
            }),
        }
    };
    compare(first.seq, &first.event, &first.commands, &decision.commands)?;
    for rec in rest {
        let decision = def
            .decide(state.as_mut(), &rec.event, rec.at)
            .map_err(|e| refused(rec.seq, &rec.event, e))?;
        compare(rec.seq, &rec.event, &rec.commands, &decision.commands)?;
    }
    Ok(state)
}
