//! Newtype ids. Task and timer ids are derived from the workflow id and what they are for, so the
//! decider can name them without a random source and replay names them the same way.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
            schemars::JsonSchema,
        )]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }
    };
}

uuid_id!(
    /// A workflow instance. New ones are UUIDv7 so they sort by creation time.
    WorkflowId
);
uuid_id!(
    /// One task (one attempt of one activity for one step and phase).
    TaskId
);
uuid_id!(
    /// One durable timer.
    TimerId
);

impl WorkflowId {
    /// A fresh, time-ordered id. Only the edges (API, tests) call this; the decider never does.
    pub fn new_v7() -> Self {
        Self(Uuid::now_v7())
    }

    /// A deterministic child id for something this workflow owns, named by `what`.
    pub fn derive(&self, what: &str) -> Uuid {
        Uuid::new_v5(&self.0, what.as_bytes())
    }
}
