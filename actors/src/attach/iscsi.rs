//! `iscsi`: a LUN of an iSCSI target. This build checks the definition and answers 501: the
//! node's kernel has no iSCSI initiator support yet.

use std::path::Path;

use crate::driver::{Dep, DepViews, Driver, Host, Kinds, Parsed, Unmakeable};
use crate::error::{Error, Origin};
use crate::model::spec::{check_hostname, check_iqn, check_non_negative, field, invalid, Invalid};
use crate::model::wire::{Attach, AttachIscsi, AttachKind, Id};
use crate::registry::graph::ObjectKind;

pub struct Iscsi;

impl Driver for Iscsi {
    type Object = Attach;
    type Spec = AttachIscsi;
    type Facts = Unmakeable;
    type Resource = Unmakeable;
    const KIND: AttachKind = AttachKind::Iscsi;

    fn parse(
        &self,
        _: &Kinds,
        at: &str,
        wire: &Attach,
    ) -> Option<Result<Parsed<AttachIscsi>, Invalid>> {
        let iscsi = wire.iscsi.as_ref()?;
        Some(check(&field(at, "iscsi"), iscsi).map(|()| Parsed::new(iscsi.clone(), vec![])))
    }

    fn create(
        &self,
        _: &Host,
        _: Id,
        _: &AttachIscsi,
        _: &[Dep],
    ) -> Result<(Unmakeable, Unmakeable), Error> {
        Err(Error::Unsupported {
            origin: Origin::new(ObjectKind::Attach, "iscsi"),
            reason: "iscsi attachments need kernel support this node does not have".to_string(),
        })
    }

    fn adopt(&self, _: &Host, _: Id, _: &AttachIscsi, facts: &Unmakeable) -> Option<Unmakeable> {
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
        spec: &AttachIscsi,
        _: Option<&Unmakeable>,
        _: &dyn DepViews,
        wire: &mut Attach,
    ) {
        wire.iscsi = Some(spec.clone());
    }
}

fn check(sub: &str, iscsi: &AttachIscsi) -> Result<(), Invalid> {
    check_iqn(&field(sub, "initiator"), &iscsi.initiator)?;
    check_iqn(&field(sub, "target"), &iscsi.target)?;
    check_hostname(&field(sub, "host"), &iscsi.host)?;
    if !(1..=65535).contains(&iscsi.port) {
        return Err(invalid(
            &field(sub, "port"),
            "must be a port number (1-65535)",
        ));
    }
    for (name, value) in [
        ("lun", iscsi.lun),
        ("max_comands", iscsi.max_comands),
        ("queue_depth", iscsi.queue_depth),
    ] {
        check_non_negative(&field(sub, name), value)?;
    }
    Ok(())
}
