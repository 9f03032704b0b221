//! `nfs`: an NFS export. This build checks the definition and answers 501: the node's kernel has
//! no NFS client yet.

use std::path::Path;

use crate::driver::{Dep, DepViews, Driver, Host, Kinds, Parsed, Unmakeable};
use crate::error::{Error, Origin};
use crate::model::spec::{check_absolute, check_hostname, field, invalid, Invalid};
use crate::model::wire::{Id, Mount, MountKind, MountNfs};
use crate::registry::graph::ObjectKind;

pub struct Nfs;

impl Driver for Nfs {
    type Object = Mount;
    type Spec = MountNfs;
    type Facts = Unmakeable;
    type Resource = Unmakeable;
    const KIND: MountKind = MountKind::Nfs;

    fn parse(
        &self,
        _: &Kinds,
        at: &str,
        wire: &Mount,
    ) -> Option<Result<Parsed<MountNfs>, Invalid>> {
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
            Ok(Parsed::new(nfs.clone(), vec![]))
        })())
    }

    fn create(
        &self,
        _: &Host,
        _: Id,
        _: &MountNfs,
        _: &[Dep],
    ) -> Result<(Unmakeable, Unmakeable), Error> {
        Err(Error::Unsupported {
            origin: Origin::new(ObjectKind::Mount, "nfs"),
            reason: "this node's kernel has no NFS client".to_string(),
        })
    }

    fn adopt(&self, _: &Host, _: Id, _: &MountNfs, facts: &Unmakeable) -> Option<Unmakeable> {
        match *facts {}
    }

    fn release(&self, _: &Host, resource: Unmakeable, _: bool) -> Result<(), Error> {
        match resource {}
    }

    fn provides<'f>(&self, facts: &'f Unmakeable) -> &'f Path {
        match *facts {}
    }

    fn describe(
        &self,
        spec: &MountNfs,
        _: Option<&Unmakeable>,
        _: &dyn DepViews,
        wire: &mut Mount,
    ) {
        wire.nfs = Some(spec.clone());
    }
}
