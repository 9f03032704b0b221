//! `uri`: an image behind a URL. This build checks the definition and answers 501: there is no
//! download driver yet.

use crate::driver::CheckOnly;
use crate::model::spec::{field, invalid, Invalid};
use crate::model::wire::{Mount, MountKind, MountUri};

pub struct Uri;

impl CheckOnly for Uri {
    type Object = Mount;
    type Spec = MountUri;
    const KIND: MountKind = MountKind::Uri;
    const REASON: &'static str = "uri mounts have no driver yet";

    fn parse(&self, at: &str, wire: &Mount) -> Option<Result<MountUri, Invalid>> {
        let uri = wire.uri.as_ref()?;
        if !["http://", "https://", "file://"]
            .iter()
            .any(|scheme| uri.uri.starts_with(scheme))
        {
            let at = field(&field(at, "uri"), "uri");
            return Some(Err(invalid(&at, "must be an http, https or file URI")));
        }
        Some(Ok(uri.clone()))
    }

    fn describe(&self, spec: &MountUri, wire: &mut Mount) {
        wire.uri = Some(spec.clone());
    }
}
