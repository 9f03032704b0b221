//! Attachment kinds: each gives a block device. One module a kind; [`crate::driver::Kinds`]
//! registers them.

pub mod iscsi;
pub mod local;
pub mod loopback;
pub mod rbd;
