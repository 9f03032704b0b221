//! `attach`: the filesystem on an attachment's block device, with mount(8)-style options.

use std::path::Path;

use nix::errno::Errno;
use serde::{Deserialize, Serialize};

use super::{mount_on_fresh_dir, MountFacts, MountedFs};
use crate::driver::{Dep, DepViews, Driver, Host, Kinds, Parsed};
use crate::error::{Error, Origin};
use crate::model::spec::{attach_child, check_fs_type, field, invalid, Invalid};
use crate::model::wire::{Id, Mount, MountAttach, MountKind};
use crate::registry::graph::ObjectKind;
use crate::sys::mounts::{self, parse_mount_options};

const ATTACH: Origin = Origin::new(ObjectKind::Mount, "attach");

pub struct AttachFs;

/// The attachment is the object's one dependency.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttachFsSpec {
    pub fs_type: String,
    pub options: Vec<String>,
}

impl Driver for AttachFs {
    type Object = Mount;
    type Spec = AttachFsSpec;
    type Facts = MountFacts;
    type Resource = MountedFs;
    const KIND: MountKind = MountKind::Attach;
    // Its mountpoint is under the mount dir, which a restart clears of what no object claims.
    const FOUND_WITHOUT_RECORD: bool = true;

    fn parse(
        &self,
        kinds: &Kinds,
        at: &str,
        wire: &Mount,
    ) -> Option<Result<Parsed<AttachFsSpec>, Invalid>> {
        let spec = wire.attach.as_ref()?;
        let sub = field(at, "attach");
        Some((|| {
            check_fs_type(&field(&sub, "fs_type"), &spec.fs_type)?;
            for (i, option) in spec.mount_options.iter().enumerate() {
                if option.is_empty() || option.contains('\0') {
                    return Err(invalid(
                        &format!("{sub}.mount_options[{i}]"),
                        "must be a non-empty option without NUL bytes",
                    ));
                }
            }
            let attach = attach_child(kinds, &field(&sub, "attach"), &spec.attach)?;
            let parsed = AttachFsSpec {
                fs_type: spec.fs_type.clone(),
                options: spec.mount_options.clone(),
            };
            Ok(Parsed::new(parsed, vec![attach]))
        })())
    }

    fn create(
        &self,
        host: &Host,
        _: Id,
        spec: &AttachFsSpec,
        deps: &[Dep],
    ) -> Result<(MountedFs, MountFacts), Error> {
        let device = &deps
            .first()
            .ok_or_else(|| Error::rejected(ATTACH, "no attachment to mount"))?
            .path;
        let fs_type = spec.fs_type.as_str();
        let options = parse_mount_options(&spec.options);
        let mounted = mount_on_fresh_dir(&host.mount_dir, ATTACH, Some(fs_type), |target| {
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
        })?;
        let facts = mounted.facts();
        Ok((mounted, facts))
    }

    fn adopt(&self, _: &Host, _: Id, _: &AttachFsSpec, facts: &MountFacts) -> Option<MountedFs> {
        MountedFs::adopt(facts)
    }

    fn release(&self, _: &Host, mounted: MountedFs, _force: bool) -> Result<(), Error> {
        mounted.release()
    }

    fn provides<'f>(&self, facts: &'f MountFacts) -> &'f Path {
        &facts.mountpoint
    }

    fn describe(
        &self,
        spec: &AttachFsSpec,
        _: Option<&MountFacts>,
        deps: &dyn DepViews,
        wire: &mut Mount,
    ) {
        wire.attach = Some(MountAttach {
            attach: deps.attach(0),
            fs_type: spec.fs_type.clone(),
            mount_options: spec.options.clone(),
        });
    }
}
