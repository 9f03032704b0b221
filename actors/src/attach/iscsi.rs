//! `iscsi`: a LUN of an iSCSI target. This build checks the definition and answers 501: the
//! node's kernel has no iSCSI initiator support yet.

use crate::driver::CheckOnly;
use crate::model::spec::{check_hostname, check_iqn, check_non_negative, field, invalid, Invalid};
use crate::model::wire::{Attach, AttachIscsi, AttachKind};

pub struct Iscsi;

impl CheckOnly for Iscsi {
    type Object = Attach;
    type Spec = AttachIscsi;
    const KIND: AttachKind = AttachKind::Iscsi;
    const REASON: &'static str = "iscsi attachments need kernel support this node does not have";

    fn parse(&self, at: &str, wire: &Attach) -> Option<Result<AttachIscsi, Invalid>> {
        let sub = wire.iscsi.as_ref()?;
        Some(check(&field(at, "iscsi"), sub).map(|()| sub.clone()))
    }

    fn describe(&self, spec: &AttachIscsi, wire: &mut Attach) {
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
