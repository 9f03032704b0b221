//! System containers: launching an init into namespaces, and supervising it.
//!
//! - [`launch()`] starts an init from a root directory, in new namespaces and its own cgroups, and
//!   returns an [`Init`] to signal, freeze, thaw and [`wait`](Init::wait) for.
//! - [`run_if_init`] must be the first call of the init program's `main` (`imageapi-init`, see
//!   [`InitProgram`]): the init is (a sealed in-memory copy of) it, executed with a private
//!   marker, and does its setup there.
//! - [`Runtime`] is what one engine's containers share (cgroup instance, reaper, launcher);
//!   the engine makes one and passes it down.
//!
//! Internals (the kernel calls that need `unsafe`, such as the async-signal-safe clone child,
//! are in [`crate::sys`]): `launcher` (the thread and mount namespace
//! inits are cloned from), `spec` (the service/init protocol),
//! `rootfs` (the container's mounts), `console` (a systemd container's `/dev/console`), `cgroup`,
//! `reaper`, `runtime` (what one engine's containers share),
//! `log` (the lifecycle lines, written off the event loop), `timing` (how long each step of a
//! launch took).

pub mod actor;
pub mod cgroup;
mod console;
pub mod init;
pub mod launch;
mod launcher;
mod log;
pub mod process;
mod reaper;
mod rootfs;
mod runtime;
pub(crate) mod spec;
pub(crate) mod timing;

pub use cgroup::{Cgroup, CgroupError};
pub use console::reattach_console;
pub use init::run_if_init;
pub use launch::{check_init, launch, launch_timed, InitConfig, InitProgram, LaunchError};
pub use process::{ExitStatus, Init};
pub use reaper::ReaperError;
pub use runtime::{Runtime, RuntimeError};
pub use timing::LaunchTimes;
