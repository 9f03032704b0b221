//! Wire objects and the checked definitions built from them.
pub mod spec;
pub mod wire;
