//! Wire objects and the checked definitions built from them.
pub mod wire;
