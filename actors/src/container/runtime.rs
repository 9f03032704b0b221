//! What one engine's containers share: the instance name and the cgroup hierarchies their
//! cgroups are made in, the reaper that keeps the engine's inits apart from orphans, and the
//! launcher thread inits are cloned from.
//!
//! These are values the engine owns and passes down, not process-wide state, so that two
//! engines (say, two tests in one process) never see each other's containers. What the kernel
//! keeps per process (children, the subreaper flag, SIGCHLD) is shared out as the `reaper`
//! module describes. The init program is the engine's too (see [`InitProgram`]).

use std::sync::Arc;

use super::cgroup::{CgroupError, ServiceCgroups};
use super::launch::InitProgram;
use super::launcher::Launcher;
use super::reaper::{Reaper, ReaperError};

/// Why a [`Runtime`] could not be made.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The reaper could not be started.
    #[error(transparent)]
    Reaper(#[from] ReaperError),
    /// The cgroup hierarchies could not be found.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
}

/// One engine's container runtime (see the module documentation). Share it in an `Arc`: every
/// [`super::Init`] holds one, so it lives as long as any of its containers is supervised.
#[derive(Debug)]
pub struct Runtime {
    cgroups: ServiceCgroups,
    reaper: Reaper,
    launcher: Launcher,
    init_program: InitProgram,
}

impl Runtime {
    /// Makes the process a child subreaper, starts this runtime's reaper and finds the cgroup
    /// hierarchies. `instance` names the runtime's cgroups (`imageapi/<instance>-<id>`): the
    /// state store's instance name, so that a restarted service finds them again. Inits run
    /// `init_program`.
    pub fn new(instance: &str, init_program: InitProgram) -> Result<Arc<Runtime>, RuntimeError> {
        let cgroups = ServiceCgroups::read(instance)?;
        let reaper = Reaper::start()?;
        Ok(Arc::new(Runtime {
            cgroups,
            reaper,
            launcher: Launcher::default(),
            init_program,
        }))
    }

    pub(crate) fn init_program(&self) -> &InitProgram {
        &self.init_program
    }

    /// The name of container `id`'s cgroup directory below `<hierarchy>/imageapi/`.
    pub fn cgroup_name(&self, id: i64) -> String {
        self.cgroups.dir_name(id)
    }

    pub(crate) fn cgroups(&self) -> &ServiceCgroups {
        &self.cgroups
    }

    pub(crate) fn reaper(&self) -> &Reaper {
        &self.reaper
    }

    pub(crate) fn launcher(&self) -> &Launcher {
        &self.launcher
    }
}
