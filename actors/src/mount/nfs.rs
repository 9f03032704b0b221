//! `nfs`: an NFS export. This build checks the definition and answers 501: the node's kernel has
//! no NFS client yet.

use crate::driver::CheckOnly;
use crate::model::spec::{check_absolute, check_hostname, field, invalid, Invalid};
use crate::model::wire::{Mount, MountKind, MountNfs};

pub struct Nfs;

impl CheckOnly for Nfs {
    type Object = Mount;
    type Spec = MountNfs;
    const KIND: MountKind = MountKind::Nfs;
    const REASON: &'static str = "this node's kernel has no NFS client";

    fn parse(&self, at: &str, wire: &Mount) -> Option<Result<MountNfs, Invalid>> {
        let nfs = wire.nfs.as_ref()?;
        let sub = field(at, "nfs");
        Some((|| {
            check_hostname(&field(&sub, "host"), &nfs.host)?;
            check_absolute(&field(&sub, "path"), &nfs.path)?;
            if !["3", "4", "4.0", "4.1", "4.2"].contains(&nfs.version.as_str()) {
                return Err(invalid(
                    &field(&sub, "version"),
                    format!(
                        "{:?} is not an NFS version (3, 4, 4.0, 4.1, 4.2)",
                        nfs.version
                    ),
                ));
            }
            Ok(nfs.clone())
        })())
    }

    fn describe(&self, spec: &MountNfs, wire: &mut Mount) {
        wire.nfs = Some(spec.clone());
    }
}
