//! `overlay`: lower mounts in order (the first is topmost) under a writable upper layer the
//! service makes next to the mountpoint.

use std::fs;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use serde::{Deserialize, Serialize};

use super::{make_mountpoint, scratch_of, MountFacts, MountedFs};
use crate::driver::{path_text, Dep, DepViews, Driver, Host, Kinds, Parsed};
use crate::error::{Error, Origin};
use crate::model::spec::{
    field, invalid, mount_child, overlay_depth, Invalid, MAX_OVERLAY_DEPTH, MAX_OVERLAY_LOWERS,
};
use crate::model::wire::{Id, Mount, MountKind, MountOverlay};
use crate::registry::graph::ObjectKind;
use crate::sys::{errno_of_io, mounts, SysError};

const OVERLAY: Origin = Origin::new(ObjectKind::Mount, "overlay");

pub struct Overlay;

/// The lowers are the object's dependencies, in order; nothing else to keep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OverlaySpec {}

fn upper_and_work(mountpoint: &Path) -> (PathBuf, PathBuf) {
    let scratch = scratch_of(mountpoint);
    (scratch.join("upper"), scratch.join("work"))
}

impl Driver for Overlay {
    type Object = Mount;
    type Spec = OverlaySpec;
    type Facts = MountFacts;
    type Resource = MountedFs;
    const KIND: MountKind = MountKind::Overlay;
    // Its mountpoint is under the mount dir, which a restart clears of what no object claims.
    const FOUND_WITHOUT_RECORD: bool = true;

    fn parse(
        &self,
        kinds: &Kinds,
        at: &str,
        wire: &Mount,
    ) -> Option<Result<Parsed<OverlaySpec>, Invalid>> {
        let overlay = wire.overlay.as_ref()?;
        let sub = field(at, "overlay");
        Some((|| {
            if overlay.lower.is_empty() {
                return Err(invalid(
                    &field(&sub, "lower"),
                    "needs at least one lower mount",
                ));
            }
            if overlay.lower.len() > MAX_OVERLAY_LOWERS {
                return Err(invalid(
                    &field(&sub, "lower"),
                    format!("overlayfs takes at most {MAX_OVERLAY_LOWERS} lower layers"),
                ));
            }
            if overlay_depth(wire) > MAX_OVERLAY_DEPTH {
                return Err(invalid(
                    &field(&sub, "lower"),
                    format!("the kernel stacks overlays at most {MAX_OVERLAY_DEPTH} deep"),
                ));
            }
            let mut referenced: Vec<Id> =
                overlay.lower.iter().filter_map(|lower| lower.id).collect();
            referenced.sort_unstable();
            if let Some(twice) = referenced.windows(2).find(|pair| pair[0] == pair[1]) {
                return Err(invalid(
                    &field(&sub, "lower"),
                    format!(
                        "mount {} is a lower layer twice; overlayfs refuses that",
                        twice[0]
                    ),
                ));
            }
            let lowers = overlay
                .lower
                .iter()
                .enumerate()
                .map(|(i, lower)| mount_child(kinds, &format!("{sub}.lower[{i}]"), lower))
                .collect::<Result<_, _>>()?;
            Ok(Parsed::new(OverlaySpec {}, lowers))
        })())
    }

    fn create(
        &self,
        host: &Host,
        _: Id,
        _: &OverlaySpec,
        deps: &[Dep],
    ) -> Result<(MountedFs, MountFacts), Error> {
        let lowers: Vec<PathBuf> = deps.iter().map(|lower| lower.path.clone()).collect();
        let mountpoint = make_mountpoint(&host.mount_dir, OVERLAY)?;
        let scratch = scratch_of(&mountpoint);
        let (upper, work) = upper_and_work(&mountpoint);
        let made = fs::create_dir(&scratch)
            .and_then(|()| fs::create_dir(&upper))
            .and_then(|()| fs::create_dir(&work))
            .map_err(|err| SysError {
                op: format!("mkdir {}", scratch.display()),
                errno: errno_of_io(&err),
            });
        let mounted = made.and_then(|()| mounts::overlay(&lowers, &upper, &work, &mountpoint));
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
        let mounted = MountedFs::new(mountpoint, Some("overlay".to_string()), Some(scratch));
        let facts = mounted.facts();
        Ok((mounted, facts))
    }

    fn adopt(&self, _: &Host, _: Id, _: &OverlaySpec, facts: &MountFacts) -> Option<MountedFs> {
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
        _: &OverlaySpec,
        facts: Option<&MountFacts>,
        deps: &dyn DepViews,
        wire: &mut Mount,
    ) {
        let dirs = facts.map(|facts| upper_and_work(&facts.mountpoint));
        wire.overlay = Some(MountOverlay {
            lower: (0..deps.len()).map(|i| deps.mount(i)).collect(),
            upperdir: dirs.as_ref().map(|(upper, _)| path_text(upper)),
            workdir: dirs.as_ref().map(|(_, work)| path_text(work)),
        });
    }
}
