//! `uri`: an image behind a URL. This build checks the definition and answers 501: there is no
//! download driver yet.

use std::path::Path;

use crate::driver::{Dep, DepViews, Driver, Host, Kinds, Parsed, Unmakeable};
use crate::error::{Error, Origin};
use crate::model::spec::{field, invalid, Invalid};
use crate::model::wire::{Id, Mount, MountKind, MountUri};
use crate::registry::graph::ObjectKind;

pub struct Uri;

impl Driver for Uri {
    type Object = Mount;
    type Spec = MountUri;
    type Facts = Unmakeable;
    type Resource = Unmakeable;
    const KIND: MountKind = MountKind::Uri;

    fn parse(
        &self,
        _: &Kinds,
        at: &str,
        wire: &Mount,
    ) -> Option<Result<Parsed<MountUri>, Invalid>> {
        let uri = wire.uri.as_ref()?;
        if !["http://", "https://", "file://"]
            .iter()
            .any(|scheme| uri.uri.starts_with(scheme))
        {
            let at = field(&field(at, "uri"), "uri");
            return Some(Err(invalid(&at, "must be an http, https or file URI")));
        }
        Some(Ok(Parsed::new(uri.clone(), vec![])))
    }

    fn create(
        &self,
        _: &Host,
        _: Id,
        _: &MountUri,
        _: &[Dep],
    ) -> Result<(Unmakeable, Unmakeable), Error> {
        Err(Error::Unsupported {
            origin: Origin::new(ObjectKind::Mount, "uri"),
            reason: "uri mounts have no driver yet".to_string(),
        })
    }

    fn adopt(&self, _: &Host, _: Id, _: &MountUri, facts: &Unmakeable) -> Option<Unmakeable> {
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
        spec: &MountUri,
        _: Option<&Unmakeable>,
        _: &dyn DepViews,
        wire: &mut Mount,
    ) {
        wire.uri = Some(spec.clone());
    }
}
