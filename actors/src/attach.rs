//! Attachment drivers: give a block device for a local node or a loopback file.

use std::fs::{self, File, OpenOptions};
use std::os::fd::AsFd;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use rustix::fs::OFlags;
use tracing::debug;

use crate::error::{Error, Origin};
use crate::registry::graph::ObjectKind;
use crate::resource::{KernelResource, ResourceActor};
use crate::store::Facts;
use crate::sys::beneath::{fd_path, open_beneath, BeneathError};
use crate::sys::blockdev::{check_block_device, BlockDeviceError};
use crate::sys::loopdev::{self, AttachTurn, LoopDevice};
use crate::sys::{errno_of_io, SysError};

const LOCAL: Origin = Origin::new(ObjectKind::Attach, "local");
const LOOPBACK: Origin = Origin::new(ObjectKind::Attach, "loopback");

/// The actor of one attachment.
pub type AttachActor = ResourceActor<AttachedDevice>;

/// The block device an attachment gives.
pub enum AttachedDevice {
    /// A device node that existed before; nothing to give back.
    Local(PathBuf),
    Loop {
        device: LoopDevice,
        /// The image as the kernel names it (sysfs `backing_file`), to recognise it again.
        backing_file: PathBuf,
    },
}

impl AttachedDevice {
    pub fn device_file(&self) -> &Path {
        match self {
            AttachedDevice::Local(path) => path,
            AttachedDevice::Loop { device, .. } => device.path(),
        }
    }

    /// How to recognise the device after a restart.
    pub fn facts(&self) -> Option<Facts> {
        match self {
            AttachedDevice::Local(_) => None,
            AttachedDevice::Loop {
                device,
                backing_file,
            } => Some(Facts::Loop {
                number: device.number(),
                backing_file: backing_file.clone(),
            }),
        }
    }
}

impl KernelResource for AttachedDevice {
    fn release(self) -> Result<(), Error> {
        match self {
            AttachedDevice::Local(_) => Ok(()),
            AttachedDevice::Loop { device, .. } => {
                debug!(device = %device.path().display(), "detaching loop device");
                device.detach().map_err(Error::kernel(LOOPBACK))
            }
        }
    }
}

/// The tag of the loop device of attachment `id` of service `instance`: after a crash, it
/// tells which devices are the service's.
pub fn loop_tag(instance: &str, id: i64) -> String {
    format!("{}{id}", loop_tag_prefix(instance))
}

/// What every loop tag of service `instance` starts with.
pub fn loop_tag_prefix(instance: &str) -> String {
    format!("imageapi:{instance}:")
}

/// Checks that `path` is a block device node and gives it as the attachment.
pub fn attach_local(path: &str) -> Result<AttachedDevice, Error> {
    check_block_device(Path::new(path)).map_err(|err| match err {
        BlockDeviceError::Stat { path, errno } => Error::Kernel {
            origin: LOCAL,
            source: SysError {
                op: format!("stat {}", path.display()),
                errno,
            },
        },
        refused => Error::rejected(LOCAL, refused.to_string()),
    })?;
    Ok(AttachedDevice::Local(PathBuf::from(path)))
}

/// Binds a regular file to a fresh loop device. `base` is the mountpoint the path is relative
/// to, or `None` for the host's `/`. The file is opened read-write where it can be, else the
/// device is read-only (an image on a read-only filesystem still attaches). `tag` marks the
/// device as the service's (see [`loop_tag`]).
pub fn attach_loopback(
    base: Option<&Path>,
    path: &str,
    read_partitions: bool,
    tag: &str,
    turn: &AttachTurn,
) -> Result<AttachedDevice, Error> {
    let (file, read_only) = open_image(base, path)?;
    let metadata = file
        .metadata()
        .map_err(|err| Error::rejected(LOOPBACK, format!("{path}: {err}")))?;
    if !metadata.file_type().is_file() {
        let found = if metadata.is_dir() {
            "a directory"
        } else if metadata.file_type().is_block_device() {
            "a block device (use kind local)"
        } else {
            "not a regular file"
        };
        return Err(Error::rejected(LOOPBACK, format!("{path} is {found}")));
    }
    let device = LoopDevice::attach_tagged(&file, read_only, read_partitions, tag, turn)
        .map_err(Error::kernel(LOOPBACK))?;
    // As sysfs shows it; failing that, as the kernel names the open file (the same path).
    let backing_file = loopdev::backing_file(device.number())
        .or_else(|| fs::read_link(fd_path(file.as_fd())).ok())
        .unwrap_or_default();
    Ok(AttachedDevice::Loop {
        device,
        backing_file,
    })
}

fn open_image(base: Option<&Path>, path: &str) -> Result<(File, bool), Error> {
    let open = |write: bool| -> Result<File, (nix::errno::Errno, Error)> {
        match base {
            None => {
                let host_path = Path::new("/").join(path);
                OpenOptions::new()
                    .read(true)
                    .write(write)
                    .open(&host_path)
                    .map_err(|err| {
                        let errno = errno_of_io(&err);
                        let reason = format!("{}: {errno}", host_path.display());
                        (errno, Error::rejected(LOOPBACK, reason))
                    })
            }
            Some(base) => {
                let flags = if write { OFlags::RDWR } else { OFlags::RDONLY };
                open_beneath(base, path, flags)
                    .map(File::from)
                    .map_err(|err| {
                        let errno = match &err {
                            BeneathError::Open { errno, .. } => *errno,
                            BeneathError::Escapes { .. } => nix::errno::Errno::EXDEV,
                        };
                        (errno, Error::rejected(LOOPBACK, err.to_string()))
                    })
            }
        }
    };
    match open(true) {
        Ok(file) => Ok((file, false)),
        Err((
            nix::errno::Errno::EROFS | nix::errno::Errno::EACCES | nix::errno::Errno::EPERM,
            _,
        )) => open(false).map(|file| (file, true)).map_err(|(_, err)| err),
        Err((_, err)) => Err(err),
    }
}
