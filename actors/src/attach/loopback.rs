//! `loopback`: a regular file (on the host or inside a mount) bound to a fresh loop device.

use std::fs::{self, File, OpenOptions};
use std::os::fd::AsFd;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use rustix::fs::OFlags;
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use crate::driver::{Dep, DepViews, Driver, Host, Kinds, Parsed};
use crate::error::{Error, Origin};
use crate::model::spec::{base_child, check_path, field, Invalid};
use crate::model::wire::{Attach, AttachKind, AttachLoopback, Base, Id};
use crate::registry::graph::ObjectKind;
use crate::sys::beneath::{fd_path, open_beneath, BeneathError};
use crate::sys::errno_of_io;
use crate::sys::loopdev::{self, AttachTurn, LoopDevice};

const LOOPBACK: Origin = Origin::new(ObjectKind::Attach, "loopback");

pub struct Loopback;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoopbackSpec {
    /// Relative to the host's `/`, or to the base mount (the object's one dependency).
    pub path: String,
    pub base: Base,
    pub read_partitions: bool,
}

/// `/dev/loop<number>` bound to `backing_file` (as sysfs shows it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoopbackFacts {
    pub number: u32,
    pub device_file: PathBuf,
    pub backing_file: PathBuf,
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

impl Driver for Loopback {
    type Object = Attach;
    type Spec = LoopbackSpec;
    type Facts = LoopbackFacts;
    type Resource = LoopDevice;
    const KIND: AttachKind = AttachKind::Loopback;
    // Its loop devices carry the service's tag (see `sweep`).
    const FOUND_WITHOUT_RECORD: bool = true;

    fn parse(
        &self,
        kinds: &Kinds,
        at: &str,
        wire: &Attach,
    ) -> Option<Result<Parsed<LoopbackSpec>, Invalid>> {
        let lo = wire.loopback.as_ref()?;
        let sub = field(at, "loopback");
        Some((|| {
            check_path(&field(&sub, "path"), &lo.path)?;
            let base = base_child(kinds, &sub, lo.base, lo.mount.as_deref())?;
            let spec = LoopbackSpec {
                path: lo.path.clone(),
                base: lo.base,
                read_partitions: lo.read_partitions,
            };
            Ok(Parsed::new(spec, base.into_iter().collect()))
        })())
    }

    fn create(
        &self,
        host: &Host,
        id: Id,
        spec: &LoopbackSpec,
        deps: &[Dep],
    ) -> Result<(LoopDevice, LoopbackFacts), Error> {
        let base = deps.first().map(|base| base.path.as_path());
        let tag = loop_tag(&host.instance, id);
        let (device, backing_file) = attach(
            base,
            &spec.path,
            spec.read_partitions,
            &tag,
            &host.loop_turn,
        )?;
        info!(id, device = %device.path().display(), "loop device attached");
        let facts = LoopbackFacts {
            number: device.number(),
            device_file: device.path().to_path_buf(),
            backing_file,
        };
        Ok((device, facts))
    }

    fn adopt(
        &self,
        _: &Host,
        _: Id,
        _: &LoopbackSpec,
        facts: &LoopbackFacts,
    ) -> Option<LoopDevice> {
        LoopDevice::adopt(facts.number, &facts.backing_file)
    }

    fn release(&self, _: &Host, device: LoopDevice, _force: bool) -> Result<(), Error> {
        debug!(device = %device.path().display(), "detaching loop device");
        device.detach().map_err(Error::kernel(LOOPBACK))
    }

    fn provides<'f>(&self, facts: &'f LoopbackFacts) -> &'f Path {
        &facts.device_file
    }

    fn describe(
        &self,
        spec: &LoopbackSpec,
        _: Option<&LoopbackFacts>,
        deps: &dyn DepViews,
        wire: &mut Attach,
    ) {
        wire.loopback = Some(AttachLoopback {
            path: spec.path.clone(),
            base: spec.base,
            mount: (spec.base == Base::Mount && !deps.is_empty()).then(|| Box::new(deps.mount(0))),
            read_partitions: spec.read_partitions,
        });
    }

    /// Loop devices tagged as this service's that no adopted attachment holds: bound by a
    /// create whose kernel step the previous run did not record. Detached.
    fn sweep(&self, host: &Host, held: &[&LoopbackFacts]) {
        detach_unheld(&loop_tag_prefix(&host.instance), |number| {
            held.iter().any(|facts| facts.number == number)
        });
    }
}

/// Detaches the bound loop devices whose tag starts with `prefix` and that `held` does not
/// claim: a driver's restart sweep.
pub(crate) fn detach_unheld(prefix: &str, held: impl Fn(u32) -> bool) {
    for number in loopdev::bound_devices() {
        let tagged = loopdev::tag_of(number).is_some_and(|tag| tag.starts_with(prefix));
        if !tagged || held(number) {
            continue;
        }
        warn!(
            device = number,
            prefix, "loop device of this service held by no object: detaching it"
        );
        let backing = loopdev::backing_file(number).unwrap_or_default();
        if let Some(device) = LoopDevice::adopt(number, &backing) {
            if let Err(err) = device.detach() {
                warn!(device = number, error = %err, "cannot detach");
            }
        }
    }
}

/// Binds a regular file to a fresh loop device. `base` is the mountpoint the path is relative
/// to, or `None` for the host's `/`. The file is opened read-write where it can be, else the
/// device is read-only (an image on a read-only filesystem still attaches). `tag` marks the
/// device as the service's (see [`loop_tag`]). Answers the device and its backing file.
fn attach(
    base: Option<&Path>,
    path: &str,
    read_partitions: bool,
    tag: &str,
    turn: &AttachTurn,
) -> Result<(LoopDevice, PathBuf), Error> {
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
    Ok((device, backing_file))
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
