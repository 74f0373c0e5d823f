//! Finds a definition by type and version. New workflows start on the latest version; a running
//! one keeps the version it started with, so old versions stay registered while sagas use them.

use std::{collections::BTreeMap, fmt, sync::Arc};

use crate::WorkflowDefinition;

/// Every deployed definition, by type and version.
#[derive(Clone, Default)]
pub struct Registry {
    defs: BTreeMap<String, BTreeMap<u32, Arc<dyn WorkflowDefinition>>>,
    /// Types whose new workflows start on a version other than the newest.
    pinned: BTreeMap<String, u32>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self
            .defs
            .iter()
            .flat_map(|(t, vs)| vs.keys().map(move |v| format!("{t}@v{v}")))
            .collect();
        f.debug_tuple("Registry").field(&names).finish()
    }
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a definition; a second one with the same type and version replaces the first.
    pub fn with(mut self, def: impl WorkflowDefinition + 'static) -> Self {
        self.register(Arc::new(def));
        self
    }

    pub fn register(&mut self, def: Arc<dyn WorkflowDefinition>) {
        self.defs
            .entry(def.workflow_type().to_owned())
            .or_default()
            .insert(def.version(), def);
    }

    pub fn get(&self, workflow_type: &str, version: u32) -> Option<&Arc<dyn WorkflowDefinition>> {
        self.defs.get(workflow_type)?.get(&version)
    }

    /// Makes new workflows of this type start on `version` although a newer one is deployed:
    /// the newer version runs nothing until it is unpinned (a staged rollout).
    pub fn pin(mut self, workflow_type: &str, version: u32) -> Self {
        self.pinned.insert(workflow_type.to_owned(), version);
        self
    }

    /// The version new workflows of this type start on: the pinned one, else the newest.
    pub fn latest(&self, workflow_type: &str) -> Option<&Arc<dyn WorkflowDefinition>> {
        let versions = self.defs.get(workflow_type)?;
        match self.pinned.get(workflow_type) {
            Some(v) => versions.get(v),
            None => versions.values().next_back(),
        }
    }

    /// Every activity of every deployed definition, each once, sorted: the task queues a
    /// deployment has.
    pub fn activities(&self) -> Vec<String> {
        let all: std::collections::BTreeSet<&str> = self
            .defs
            .values()
            .flat_map(|versions| versions.values())
            .flat_map(|def| def.activities())
            .collect();
        all.into_iter().map(str::to_owned).collect()
    }

    pub fn types(&self) -> impl Iterator<Item = &str> {
        self.defs.keys().map(String::as_str)
    }
}
