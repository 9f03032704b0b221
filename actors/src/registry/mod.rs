//! Ids, names, reference counts and garbage collection.
pub mod actor;
pub(crate) mod build;
pub mod graph;
pub mod record;
#[cfg(test)]
mod walk_tests;
