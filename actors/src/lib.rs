//! The ImageAPI engine: a registry actor and one actor per attachment, mount and container, each
//! owning its kernel resource. The HTTP layer lives in the service crate and only talks to [`Engine`].

pub mod container;
pub mod model;
pub mod registry;
pub mod sys;
