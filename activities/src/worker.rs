//! Filled in by the worker runtime.
