//! `rbd`: a Ceph RBD image mapped by the kernel's rbd driver. This build checks the definition
//! and answers 501: the node's kernel has no rbd support yet.

use crate::driver::CheckOnly;
use crate::model::spec::{check_ipv4, check_non_negative, field, invalid, Invalid};
use crate::model::wire::{Attach, AttachKind, AttachRbd};

pub struct Rbd;

impl CheckOnly for Rbd {
    type Object = Attach;
    type Spec = AttachRbd;
    const KIND: AttachKind = AttachKind::Rbd;
    const REASON: &'static str = "rbd attachments need kernel support this node does not have";

    fn parse(&self, at: &str, wire: &Attach) -> Option<Result<AttachRbd, Invalid>> {
        let sub = wire.rbd.as_ref()?;
        Some(check(&field(at, "rbd"), sub).map(|()| sub.clone()))
    }

    fn describe(&self, spec: &AttachRbd, wire: &mut Attach) {
        wire.rbd = Some(spec.clone());
    }
}

fn check(sub: &str, rbd: &AttachRbd) -> Result<(), Invalid> {
    if rbd.monitors.is_empty() {
        return Err(invalid(
            &field(sub, "monitors"),
            "needs at least one monitor",
        ));
    }
    for (i, monitor) in rbd.monitors.iter().enumerate() {
        check_ipv4(&format!("{sub}.monitors[{i}]"), monitor)?;
    }
    if rbd.pool.is_empty() {
        return Err(invalid(&field(sub, "pool"), "must not be empty"));
    }
    if rbd.image.is_empty() {
        return Err(invalid(&field(sub, "image"), "must not be empty"));
    }
    let options_at = field(sub, "options");
    let options = rbd.options.as_ref();
    if let Some(ip) = options.and_then(|o| o.ip.as_deref()) {
        check_ipv4(&field(&options_at, "ip"), ip)?;
    }
    if options.and_then(|o| o.name.as_ref()).is_none() {
        return Err(invalid(
            &field(&options_at, "name"),
            "required to map an rbd image",
        ));
    }
    if options.and_then(|o| o.secret.as_ref()).is_none() {
        return Err(invalid(
            &field(&options_at, "secret"),
            "required to map an rbd image",
        ));
    }
    if let Some(o) = options {
        for (name, value) in [
            ("mount_timeout", o.mount_timeout),
            ("osdkeepalive", o.osdkeepalive),
            ("osd_idle_ttl", o.osd_idle_ttl),
            ("queue_depth", o.queue_depth),
            ("lock_timeout", o.lock_timeout),
            ("alloc_size", o.alloc_size),
        ] {
            if let Some(value) = value {
                check_non_negative(&field(&options_at, name), value)?;
            }
        }
    }
    Ok(())
}
