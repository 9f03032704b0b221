//! `bind`: a directory of the host, or of another mount, bound onto a fresh mountpoint.

use std::fs;
use std::path::Path;

use rustix::fd::AsFd;
use rustix::fs::OFlags;
use serde::{Deserialize, Serialize};

use super::{mount_on_fresh_dir, MountFacts, MountedFs};
use crate::driver::{Dep, DepViews, Driver, Host, Kinds, Parsed};
use crate::error::{Error, Origin};
use crate::model::spec::{base_child, check_path, field, Invalid};
use crate::model::wire::{Base, Id, Mount, MountBind, MountKind};
use crate::registry::graph::ObjectKind;
use crate::sys::beneath::{fd_path, open_beneath};
use crate::sys::mounts;

const BIND: Origin = Origin::new(ObjectKind::Mount, "bind");

pub struct Bind;

/// With base `mount`, the base is the object's one dependency.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BindSpec {
    pub path: String,
    pub base: Base,
    pub recursive: bool,
    pub read_only: bool,
}

impl Driver for Bind {
    type Object = Mount;
    type Spec = BindSpec;
    type Facts = MountFacts;
    type Resource = MountedFs;
    const KIND: MountKind = MountKind::Bind;
    // Its mountpoint is under the mount dir, which a restart clears of what no object claims.
    const FOUND_WITHOUT_RECORD: bool = true;

    fn parse(
        &self,
        kinds: &Kinds,
        at: &str,
        wire: &Mount,
    ) -> Option<Result<Parsed<BindSpec>, Invalid>> {
        let bind = wire.bind.as_ref()?;
        let sub = field(at, "bind");
        Some((|| {
            check_path(&field(&sub, "path"), &bind.path)?;
            let base = base_child(kinds, &sub, bind.base, bind.mount.as_deref())?;
            let spec = BindSpec {
                path: bind.path.clone(),
                base: bind.base,
                recursive: bind.recursive,
                read_only: bind.ro,
            };
            Ok(Parsed::new(spec, base.into_iter().collect()))
        })())
    }

    /// Binds the path: from the host's `/` without a base, else from beneath the base's
    /// mountpoint, where neither `..` nor a symlink can lead outside it.
    fn create(
        &self,
        host: &Host,
        _: Id,
        spec: &BindSpec,
        deps: &[Dep],
    ) -> Result<(MountedFs, MountFacts), Error> {
        let path = spec.path.as_str();
        let opened = match deps.first() {
            // The host's own `/` is trusted: its symlinks are followed wherever they lead.
            None => rustix::fs::open(
                Path::new("/").join(path),
                OFlags::PATH | OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )
            .map_err(|err| format!("{path}: {err}")),
            Some(base) => {
                open_beneath(&base.path, path, OFlags::PATH).map_err(|err| err.to_string())
            }
        }
        .map_err(|reason| Error::rejected(BIND, reason))?;
        let source = fd_path(opened.as_fd());
        if !fs::metadata(&source).map(|m| m.is_dir()).unwrap_or(false) {
            // Only directories: the mountpoint the service makes is a directory.
            return Err(Error::rejected(BIND, format!("{path} is not a directory")));
        }
        let mounted = mount_on_fresh_dir(&host.mount_dir, BIND, None, |target| {
            mounts::bind(&source, target, spec.recursive, spec.read_only)
                .map_err(Error::kernel(BIND))
        })?;
        let facts = mounted.facts();
        Ok((mounted, facts))
    }

    fn adopt(&self, _: &Host, _: Id, _: &BindSpec, facts: &MountFacts) -> Option<MountedFs> {
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
        spec: &BindSpec,
        _: Option<&MountFacts>,
        deps: &dyn DepViews,
        wire: &mut Mount,
    ) {
        wire.bind = Some(MountBind {
            path: spec.path.clone(),
            base: spec.base,
            mount: (spec.base == Base::Mount && !deps.is_empty()).then(|| Box::new(deps.mount(0))),
            recursive: spec.recursive,
            ro: spec.read_only,
        });
    }
}
