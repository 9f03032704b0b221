//! `local`: a block device node that exists on the host; nothing to make or give back.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::driver::{DepViews, Driver, Host, Kinds, Parsed};
use crate::error::{Error, Origin};
use crate::model::spec::{check_absolute, field, Invalid};
use crate::model::wire::{Attach, AttachKind, AttachLocal, Id};
use crate::registry::graph::ObjectKind;
use crate::sys::blockdev::{check_block_device, BlockDeviceError};
use crate::sys::SysError;

const ORIGIN: Origin = Origin::new(ObjectKind::Attach, "local");

pub struct Local;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocalSpec {
    pub path: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocalFacts {
    pub device_file: PathBuf,
}

fn check(path: &Path) -> Result<(), Error> {
    check_block_device(path).map_err(|err| match err {
        BlockDeviceError::Stat { path, errno } => Error::Kernel {
            origin: ORIGIN,
            source: SysError {
                op: format!("stat {}", path.display()),
                errno,
            },
        },
        refused => Error::rejected(ORIGIN, refused.to_string()),
    })
}

impl Driver for Local {
    type Object = Attach;
    type Spec = LocalSpec;
    type Facts = LocalFacts;
    type Resource = ();
    const KIND: AttachKind = AttachKind::Local;
    // It makes nothing in the kernel.
    const FOUND_WITHOUT_RECORD: bool = true;

    fn parse(
        &self,
        _: &Kinds,
        at: &str,
        wire: &Attach,
    ) -> Option<Result<Parsed<LocalSpec>, Invalid>> {
        let local = wire.local.as_ref()?;
        Some((|| {
            check_absolute(&field(&field(at, "local"), "path"), &local.path)?;
            Ok(Parsed::new(
                LocalSpec {
                    path: PathBuf::from(&local.path),
                },
                vec![],
            ))
        })())
    }

    fn create(
        &self,
        _: &Host,
        _: Id,
        spec: &LocalSpec,
        _: &[crate::driver::Dep],
    ) -> Result<((), LocalFacts), Error> {
        check(&spec.path)?;
        Ok((
            (),
            LocalFacts {
                device_file: spec.path.clone(),
            },
        ))
    }

    fn adopt(&self, _: &Host, _: Id, spec: &LocalSpec, _: &LocalFacts) -> Option<()> {
        check(&spec.path).ok()
    }

    fn release(&self, _: &Host, (): (), _force: bool) -> Result<(), Error> {
        Ok(())
    }

    fn provides<'f>(&self, facts: &'f LocalFacts) -> &'f Path {
        &facts.device_file
    }

    fn describe(
        &self,
        spec: &LocalSpec,
        _: Option<&LocalFacts>,
        _: &dyn DepViews,
        wire: &mut Attach,
    ) {
        wire.local = Some(AttachLocal {
            path: spec.path.display().to_string(),
        });
    }
}
