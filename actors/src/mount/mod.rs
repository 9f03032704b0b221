//! Mount kinds: each gives a filesystem on a fresh directory under the mount dir. One module a
//! kind; [`crate::driver::Kinds`] registers them. What they share is here: making the
//! mountpoint, finding a mount again after a restart, and the unmount.

pub mod attach;
pub mod bind;
pub mod nfs;
pub mod overlay;
pub mod uri;

use std::fs;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use tracing::{debug, warn};

use crate::error::{Error, Origin};
use crate::registry::graph::ObjectKind;
use serde::{Deserialize, Serialize};

use crate::sys::mounts;
use crate::sys::{errno_of_io, sys_err, SysError};

/// What the store keeps of a mount: where it is, and of which type where the service chose it
/// (a bind shows its source's type).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MountFacts {
    pub mountpoint: PathBuf,
    pub fs_type: Option<String>,
}

/// A filesystem mounted on a directory the service made, plus the directories made for it.
pub struct MountedFs {
    mountpoint: PathBuf,
    /// The filesystem type the service chose; `None` for a bind (it shows its source's type).
    fs_type: Option<String>,
    /// Overlay upper and work dirs: removed after the unmount.
    scratch: Option<PathBuf>,
}

impl MountedFs {
    fn new(mountpoint: PathBuf, fs_type: Option<String>, scratch: Option<PathBuf>) -> MountedFs {
        MountedFs {
            mountpoint,
            fs_type,
            scratch,
        }
    }

    pub fn facts(&self) -> MountFacts {
        MountFacts {
            mountpoint: self.mountpoint.clone(),
            fs_type: self.fs_type.clone(),
        }
    }

    /// Takes up again a mount this service made before it restarted, if the kernel still has
    /// it as recorded. An overlay's scratch dir sits next to its mountpoint (see [`scratch_of`]).
    pub fn adopt(facts: &MountFacts) -> Option<MountedFs> {
        let mounted = mounts::mounted_fs_type(&facts.mountpoint)?;
        if facts
            .fs_type
            .as_ref()
            .is_some_and(|wanted| *wanted != mounted)
        {
            return None;
        }
        let scratch = Some(scratch_of(&facts.mountpoint)).filter(|dir| dir.is_dir());
        Some(MountedFs {
            mountpoint: facts.mountpoint.clone(),
            fs_type: facts.fs_type.clone(),
            scratch,
        })
    }

    /// Unmounts the filesystem and removes the directories made for it.
    pub fn release(self) -> Result<(), Error> {
        let origin = Origin::new(ObjectKind::Mount, "unmount");
        let detached_lazily = match mounts::unmount(&self.mountpoint) {
            Ok(()) => false,
            Err(SysError {
                errno: Errno::EBUSY,
                ..
            }) => {
                // Someone outside the service still uses the filesystem (a shell inside it, an
                // open file). Detach it lazily: it disappears from the tree now and the kernel
                // frees it, and the loop device under it, when the last user goes.
                warn!(mountpoint = %self.mountpoint.display(), "busy: detaching lazily");
                nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::MNT_DETACH)
                    .map_err(sys_err(format!(
                        "umount2 MNT_DETACH {}",
                        self.mountpoint.display()
                    )))
                    .map_err(Error::kernel(origin))?;
                true
            }
            Err(other) => return Err(Error::kernel(origin)(other)),
        };
        remove_dir(&self.mountpoint).map_err(Error::kernel(origin))?;
        if detached_lazily {
            // A detached overlay still in use keeps writing to its upper and work dirs: they
            // are left for the clean-up of unclaimed dirs at the next start.
            return Ok(());
        }
        if let Some(scratch) = &self.scratch {
            fs::remove_dir_all(scratch)
                .map_err(|err| SysError {
                    op: format!("remove {}", scratch.display()),
                    errno: errno_of_io(&err),
                })
                .map_err(Error::kernel(origin))?;
        }
        Ok(())
    }
}

fn remove_dir(path: &Path) -> Result<(), SysError> {
    fs::remove_dir(path).map_err(|err| SysError {
        op: format!("rmdir {}", path.display()),
        errno: errno_of_io(&err),
    })
}

/// Where a mount's own directories other than its mountpoint go (an overlay's upper and work
/// dirs): next to the mountpoint, so that a restart tells what is claimed.
pub fn scratch_of(mountpoint: &Path) -> PathBuf {
    mountpoint.with_extension("rw")
}

/// A fresh, empty directory under the mount dir: the new mount's mountpoint.
pub(crate) fn make_mountpoint(mount_dir: &Path, origin: Origin) -> Result<PathBuf, Error> {
    let path = mount_dir.join(uuid::Uuid::new_v4().simple().to_string());
    fs::create_dir(&path)
        .map_err(|err| SysError {
            op: format!("mkdir {}", path.display()),
            errno: errno_of_io(&err),
        })
        .map_err(Error::kernel(origin))?;
    Ok(path)
}

/// Runs `mount` on a fresh mountpoint; the mountpoint goes again when the mount fails.
pub(crate) fn mount_on_fresh_dir(
    mount_dir: &Path,
    origin: Origin,
    fs_type: Option<&str>,
    mount: impl FnOnce(&Path) -> Result<(), Error>,
) -> Result<MountedFs, Error> {
    let mountpoint = make_mountpoint(mount_dir, origin)?;
    if let Err(err) = mount(&mountpoint) {
        let _ = fs::remove_dir(&mountpoint);
        return Err(err);
    }
    debug!(mountpoint = %mountpoint.display(), stage = origin.stage, "mounted");
    Ok(MountedFs {
        mountpoint,
        fs_type: fs_type.map(str::to_string),
        scratch: None,
    })
}
