//! Mount drivers: a filesystem on an attachment, a bind mount, an overlay.

use std::fs;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use rustix::fd::AsFd;
use rustix::fs::OFlags;
use tracing::{debug, warn};

use crate::error::{Error, Origin};
use crate::registry::graph::ObjectKind;
use crate::resource::{KernelResource, ResourceActor};
use crate::store::Facts;
use crate::sys::beneath::{fd_path, open_beneath};
use crate::sys::mounts::{self, parse_mount_options};
use crate::sys::{errno_of_io, sys_err, SysError};

const ATTACH: Origin = Origin::new(ObjectKind::Mount, "attach");
const BIND: Origin = Origin::new(ObjectKind::Mount, "bind");
const OVERLAY: Origin = Origin::new(ObjectKind::Mount, "overlay");

/// The actor of one mount.
pub type MountActor = ResourceActor<MountedFs>;

/// A filesystem mounted on a directory the service made, plus the directories made for it.
pub struct MountedFs {
    mountpoint: PathBuf,
    /// The filesystem type the service chose; `None` for a bind (it shows its source's type).
    fs_type: Option<String>,
    /// Overlay upper and work dirs: removed after the unmount.
    scratch: Option<PathBuf>,
}

impl MountedFs {
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// How to recognise the mount after a restart.
    pub fn facts(&self) -> Facts {
        Facts::Mount {
            mountpoint: self.mountpoint.clone(),
            fs_type: self.fs_type.clone(),
        }
    }

    /// Takes up again a mount this service made before it restarted (checked by the caller).
    /// An overlay's scratch dir sits next to its mountpoint, as [`mount_overlay`] made it.
    pub fn adopt(mountpoint: PathBuf, fs_type: Option<String>) -> MountedFs {
        let scratch = Some(mountpoint.with_extension("rw")).filter(|dir| dir.is_dir());
        MountedFs {
            mountpoint,
            fs_type,
            scratch,
        }
    }
}

impl KernelResource for MountedFs {
    fn release(self) -> Result<(), Error> {
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

/// A fresh, empty directory under the mount dir: the new mount's mountpoint.
fn make_mountpoint(mount_dir: &Path, origin: Origin) -> Result<PathBuf, Error> {
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
fn mount_on_fresh_dir(
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

/// Mounts the filesystem on `device` with mount(8)-style options.
pub fn mount_attach(
    mount_dir: &Path,
    device: &Path,
    fs_type: &str,
    options: &[String],
) -> Result<MountedFs, Error> {
    let options = parse_mount_options(options);
    mount_on_fresh_dir(mount_dir, ATTACH, Some(fs_type), |target| {
        mounts::mount_filesystem(device, target, fs_type, &options).map_err(|err| match err.errno {
            Errno::ENODEV => Error::rejected(
                ATTACH,
                format!("the kernel has no filesystem type {fs_type:?}"),
            ),
            // mount(2) says EINVAL for a device that does not hold a filesystem of that type
            // and for options the filesystem does not know: the request's fault.
            Errno::EINVAL => Error::rejected(
                ATTACH,
                format!("{err}: the device holds no {fs_type} filesystem, or an option is unknown to it"),
            ),
            _ => Error::kernel(ATTACH)(err),
        })
    })
}

/// Bind-mounts `path`: from the host's `/` when `base` is `None`, else from beneath that
/// mountpoint, where neither `..` nor a symlink can lead outside it.
pub fn mount_bind(
    mount_dir: &Path,
    base: Option<&Path>,
    path: &str,
    recursive: bool,
    read_only: bool,
) -> Result<MountedFs, Error> {
    let opened = match base {
        // The host's own `/` is trusted: its symlinks are followed wherever they lead.
        None => rustix::fs::open(
            Path::new("/").join(path),
            OFlags::PATH | OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(|err| format!("{path}: {err}")),
        Some(base) => open_beneath(base, path, OFlags::PATH).map_err(|err| err.to_string()),
    }
    .map_err(|reason| Error::rejected(BIND, reason))?;
    let source = fd_path(opened.as_fd());
    if !fs::metadata(&source).map(|m| m.is_dir()).unwrap_or(false) {
        // Only directories: the mountpoint the service makes is a directory.
        return Err(Error::rejected(BIND, format!("{path} is not a directory")));
    }
    mount_on_fresh_dir(mount_dir, BIND, None, |target| {
        mounts::bind(&source, target, recursive, read_only).map_err(Error::kernel(BIND))
    })
}

/// Mounts an overlay of `lowers` (first is topmost) with fresh upper and work dirs.
pub fn mount_overlay(mount_dir: &Path, lowers: &[PathBuf]) -> Result<MountedFs, Error> {
    let mountpoint = make_mountpoint(mount_dir, OVERLAY)?;
    let scratch = mountpoint.with_extension("rw");
    let upper = scratch.join("upper");
    let work = scratch.join("work");
    let made = fs::create_dir(&scratch)
        .and_then(|()| fs::create_dir(&upper))
        .and_then(|()| fs::create_dir(&work))
        .map_err(|err| SysError {
            op: format!("mkdir {}", scratch.display()),
            errno: errno_of_io(&err),
        });
    let mounted = made.and_then(|()| mounts::overlay(lowers, &upper, &work, &mountpoint));
    if let Err(err) = mounted {
        let _ = fs::remove_dir_all(&scratch);
        let _ = fs::remove_dir(&mountpoint);
        return Err(match err.errno {
            // overlayfs refuses a layer that is itself part of the overlay (ELOOP) and stacking
            // deeper than the kernel allows (EINVAL, two overlays): the request's fault.
            Errno::ELOOP | Errno::EINVAL => Error::rejected(
                OVERLAY,
                format!("{err}: overlayfs cannot stack these lower layers (a layer given twice, or overlays nested too deep)"),
            ),
            _ => Error::kernel(OVERLAY)(err),
        });
    }
    Ok(MountedFs {
        mountpoint,
        fs_type: Some("overlay".to_string()),
        scratch: Some(scratch),
    })
}

/// The upper and work dirs of an overlay made by [`mount_overlay`].
pub fn overlay_dirs(mounted: &MountedFs) -> Option<(PathBuf, PathBuf)> {
    mounted
        .scratch
        .as_ref()
        .map(|scratch| (scratch.join("upper"), scratch.join("work")))
}
