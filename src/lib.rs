//! The ImageAPI service: the HTTP layer and command line over the engine in `actors`.

pub mod api;
pub mod cli;
pub mod server;
