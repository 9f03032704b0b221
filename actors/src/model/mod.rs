//! Wire objects, the checked definitions built from them, and the container lifecycle.
pub mod lifecycle;
pub mod spec;
pub mod wire;
