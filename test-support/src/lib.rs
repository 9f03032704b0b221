//! What the end-to-end tests (`tests/common`) and the benchmark (`bench/`) share: the service
//! under test as a process with private dirs ([`server`], [`service`]), a minimal HTTP/1.1 client
//! ([`http`]), a small HTTP(S) server that serves images to uri mounts ([`http_server`]), image
//! builders ([`images`]), JSON request and response helpers ([`json`]) and kernel-state checks:
//! mounts, loop devices, container cgroups ([`kernel`]).
//!
//! The service binary is never found at compile time: callers pass its path (the tests
//! `env!("CARGO_BIN_EXE_imageapi-server")`, the bench the one next to its own executable).
//!
//! Everything is re-exported at the root, so `tests/common` can `pub use test_support::*;`.

pub mod ceph;
pub mod debian;
pub mod http;
pub mod http_server;
pub mod images;
pub mod iscsi_target;
pub mod json;
pub mod kernel;
pub mod nfs_server;
pub mod server;
pub mod service;
pub mod systemd_container;

pub use ceph::*;
pub use debian::*;
pub use http::*;
pub use http_server::*;
pub use images::*;
pub use iscsi_target::*;
pub use json::*;
pub use kernel::*;
pub use nfs_server::*;
pub use server::*;
pub use service::*;
pub use systemd_container::*;

/// Base path of every endpoint.
pub const BASE: &str = "/imageapi/v1";
