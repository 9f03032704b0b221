//! Ids, names, reference counts and garbage collection.
pub mod graph;
