//! The ImageAPI engine: a registry actor and one actor per attachment, mount and container, each
//! owning its kernel resource. The HTTP layer lives in the service crate and only talks to [`Engine`].

#![deny(unsafe_code)]

pub mod attach;
mod blocking;
pub mod container;
pub mod driver;
mod engine;
pub mod error;
pub mod events;
pub mod metrics;
pub mod model;
pub mod mount;
pub mod object;
pub mod registry;
mod restore;
pub mod store;
// Every `unsafe` of the crate is in `sys`, behind safe wrappers.
#[allow(unsafe_code)]
pub mod sys;

pub use engine::{Engine, EngineConfig, Selector, StartError};
pub use error::{Error, Origin};
pub use metrics::Metrics;
