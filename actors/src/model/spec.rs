//! Checked definitions: what a request asks for, once every field has been validated.
//!
//! A request names each nested object either by reference (`{"id": N}`) or by a full definition.
//! [`Child`] keeps that distinction, so the engine knows what a parent owns and what it only uses.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use super::wire::{
    Attach, AttachIscsi, AttachKind, AttachRbd, Base, Container, ContainerState, Id, Mount,
    MountKind, MountNfs, MountUri, Namespace,
};

/// A request field that does not fit the contract.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct Invalid {
    /// Dotted path of the field, e.g. `mount.attach.attach.loopback.path`.
    pub field: String,
    pub reason: String,
}

fn invalid(field: &str, reason: impl Into<String>) -> Invalid {
    Invalid {
        field: field.to_string(),
        reason: reason.into(),
    }
}

/// A nested object: an existing one by id, or a new one the parent creates and owns.
#[derive(Debug, Clone, PartialEq)]
pub enum Child<T> {
    Existing(Id),
    New(Box<T>),
}

/// Where a relative path is resolved.
#[derive(Debug, Clone, PartialEq)]
pub enum BaseDef {
    Root,
    Mount(Child<MountDef>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum AttachDef {
    Local {
        path: String,
    },
    Loopback {
        path: String,
        base: BaseDef,
        read_partitions: bool,
    },
    Rbd(Box<AttachRbd>),
    Iscsi(Box<AttachIscsi>),
}

impl AttachDef {
    pub fn kind(&self) -> AttachKind {
        match self {
            AttachDef::Local { .. } => AttachKind::Local,
            AttachDef::Loopback { .. } => AttachKind::Loopback,
            AttachDef::Rbd(_) => AttachKind::Rbd,
            AttachDef::Iscsi(_) => AttachKind::Iscsi,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum MountDef {
    Attach {
        attach: Child<AttachDef>,
        fs_type: String,
        options: Vec<String>,
    },
    Bind {
        path: String,
        base: BaseDef,
        recursive: bool,
        read_only: bool,
    },
    Nfs(MountNfs),
    Overlay {
        lowers: Vec<Child<MountDef>>,
    },
    Uri(MountUri),
}

impl MountDef {
    pub fn kind(&self) -> MountKind {
        match self {
            MountDef::Attach { .. } => MountKind::Attach,
            MountDef::Bind { .. } => MountKind::Bind,
            MountDef::Nfs(_) => MountKind::Nfs,
            MountDef::Overlay { .. } => MountKind::Overlay,
            MountDef::Uri(_) => MountKind::Uri,
        }
    }
}

/// How a container's init is asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StopPolicy {
    /// Signal number sent first.
    pub signal: i32,
    /// Seconds until SIGKILL follows; 0 means the stop signal is SIGKILL itself.
    pub timeout_secs: u64,
}

/// Seconds a systemd init gets to shut down before SIGKILL, where the reference waited forever.
pub const SYSTEMD_STOP_TIMEOUT_SECS: u64 = 30;

#[derive(Debug, Clone, PartialEq)]
pub struct ContainerDef {
    pub name: Option<String>,
    pub mount: Child<MountDef>,
    pub command: String,
    pub argv: Vec<String>,
    pub systemd: bool,
    /// Start the init as part of the create (`state: running`).
    pub start: bool,
    pub namespaces: BTreeSet<Namespace>,
    pub stop: StopPolicy,
}

/// The most lower layers overlayfs stacks in one mount.
pub const MAX_OVERLAY_LOWERS: usize = 500;

/// How deep the kernel stacks overlays (an overlay may have overlays as lowers, no deeper).
pub const MAX_OVERLAY_DEPTH: usize = 2;

/// How many overlays stack in a mount definition (references by id count as none: the kernel
/// says for those).
fn overlay_depth(mount: &Mount) -> usize {
    match (&mount.id, &mount.overlay, mount.kind) {
        (None, Some(overlay), Some(MountKind::Overlay)) => {
            1 + overlay.lower.iter().map(overlay_depth).max().unwrap_or(0)
        }
        _ => 0,
    }
}

/// Namespaces a container gets when the request does not say (the reference's fixed set).
pub const DEFAULT_NAMESPACES: [Namespace; 4] = [
    Namespace::Mnt,
    Namespace::Pid,
    Namespace::Uts,
    Namespace::Ipc,
];

fn field(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}.{name}")
    }
}

fn check_path(at: &str, path: &str) -> Result<(), Invalid> {
    if path.is_empty() {
        return Err(invalid(at, "must not be empty"));
    }
    if path.contains('\0') {
        return Err(invalid(at, "must not contain NUL bytes"));
    }
    Ok(())
}

fn check_absolute(at: &str, path: &str) -> Result<(), Invalid> {
    check_path(at, path)?;
    if !path.starts_with('/') {
        return Err(invalid(at, "must be an absolute path"));
    }
    Ok(())
}

fn check_ipv4(at: &str, value: &str) -> Result<(), Invalid> {
    value
        .parse::<Ipv4Addr>()
        .map(|_| ())
        .map_err(|_| invalid(at, format!("{value:?} is not an IPv4 address")))
}

fn check_non_negative(at: &str, value: i64) -> Result<(), Invalid> {
    if value < 0 {
        return Err(invalid(at, "must not be negative"));
    }
    Ok(())
}

fn check_hostname(at: &str, host: &str) -> Result<(), Invalid> {
    let valid_label = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    if host.parse::<Ipv4Addr>().is_ok() || (host.len() <= 253 && host.split('.').all(valid_label)) {
        Ok(())
    } else {
        Err(invalid(
            at,
            format!("{host:?} is not an IPv4 address or host name"),
        ))
    }
}

/// The longest container name: the longest host name the kernel takes.
pub const NAME_MAX: usize = 64;

/// Checks a container name against the contract's pattern (letters, digits, `.`, `-`, `_`),
/// and against the kernel's limit for host names: the name is the container's host name.
pub fn check_name(at: &str, name: &str) -> Result<(), Invalid> {
    if name.len() > NAME_MAX {
        return Err(invalid(
            at,
            format!("must be at most {NAME_MAX} characters (it is the container's host name)"),
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
    {
        return Err(invalid(
            at,
            format!("{bad:?} is not allowed: use letters, digits, '.', '-' and '_'"),
        ));
    }
    Ok(())
}

fn check_iqn(at: &str, value: &str) -> Result<(), Invalid> {
    let known_prefix = ["iqn.", "eui.", "naa."]
        .iter()
        .any(|p| value.starts_with(p));
    if !known_prefix || value.len() > 223 || value.chars().any(|c| c.is_whitespace()) {
        return Err(invalid(
            at,
            format!("{value:?} is not an iSCSI qualified name"),
        ));
    }
    Ok(())
}

fn base_def(at: &str, base: Base, mount: Option<&Mount>) -> Result<BaseDef, Invalid> {
    match base {
        Base::Root => Ok(BaseDef::Root),
        Base::Mount => {
            let mount =
                mount.ok_or_else(|| invalid(&field(at, "mount"), "required when base is mount"))?;
            Ok(BaseDef::Mount(mount_child(&field(at, "mount"), mount)?))
        }
    }
}

/// Validates a nested or top-level attachment field.
pub fn attach_child(at: &str, attach: &Attach) -> Result<Child<AttachDef>, Invalid> {
    match attach.id {
        Some(id) => Ok(Child::Existing(id)),
        None => Ok(Child::New(Box::new(attach_def(at, attach)?))),
    }
}

/// Validates a mount field that may be a reference or a definition.
pub fn mount_child(at: &str, mount: &Mount) -> Result<Child<MountDef>, Invalid> {
    match mount.id {
        Some(id) => Ok(Child::Existing(id)),
        None => Ok(Child::New(Box::new(mount_def(at, mount)?))),
    }
}

fn missing_sub_object(at: &str, kind: &str) -> Invalid {
    invalid(&field(at, kind), format!("required when kind is {kind}"))
}

/// Validates an attachment definition (not a reference). Like the reference's schema
/// validation, every sub-object present must be valid, also one its `kind` leaves unused.
pub fn attach_def(at: &str, attach: &Attach) -> Result<AttachDef, Invalid> {
    let kind = attach.kind.ok_or_else(|| {
        invalid(
            &field(at, "kind"),
            "required (or give an id to reference an attach)",
        )
    })?;
    let present = [
        (AttachKind::Local, attach.local.is_some()),
        (AttachKind::Loopback, attach.loopback.is_some()),
        (AttachKind::Rbd, attach.rbd.is_some()),
        (AttachKind::Iscsi, attach.iscsi.is_some()),
    ];
    for (other, _) in present.iter().filter(|(other, is)| *is && *other != kind) {
        attach_of_kind(at, attach, *other)?;
    }
    attach_of_kind(at, attach, kind)
}

fn attach_of_kind(at: &str, attach: &Attach, kind: AttachKind) -> Result<AttachDef, Invalid> {
    let sub = field(at, kind.as_str());
    match kind {
        AttachKind::Local => {
            let local = attach
                .local
                .as_ref()
                .ok_or_else(|| missing_sub_object(at, "local"))?;
            check_absolute(&field(&sub, "path"), &local.path)?;
            Ok(AttachDef::Local {
                path: local.path.clone(),
            })
        }
        AttachKind::Loopback => {
            let lo = attach
                .loopback
                .as_ref()
                .ok_or_else(|| missing_sub_object(at, "loopback"))?;
            check_path(&field(&sub, "path"), &lo.path)?;
            Ok(AttachDef::Loopback {
                path: lo.path.clone(),
                base: base_def(&sub, lo.base, lo.mount.as_deref())?,
                read_partitions: lo.read_partitions,
            })
        }
        AttachKind::Rbd => {
            let rbd = attach
                .rbd
                .as_ref()
                .ok_or_else(|| missing_sub_object(at, "rbd"))?;
            if rbd.monitors.is_empty() {
                return Err(invalid(
                    &field(&sub, "monitors"),
                    "needs at least one monitor",
                ));
            }
            for (i, monitor) in rbd.monitors.iter().enumerate() {
                check_ipv4(&format!("{sub}.monitors[{i}]"), monitor)?;
            }
            if rbd.pool.is_empty() {
                return Err(invalid(&field(&sub, "pool"), "must not be empty"));
            }
            if rbd.image.is_empty() {
                return Err(invalid(&field(&sub, "image"), "must not be empty"));
            }
            let options_at = field(&sub, "options");
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
            Ok(AttachDef::Rbd(Box::new(rbd.clone())))
        }
        AttachKind::Iscsi => {
            let iscsi = attach
                .iscsi
                .as_ref()
                .ok_or_else(|| missing_sub_object(at, "iscsi"))?;
            check_iqn(&field(&sub, "initiator"), &iscsi.initiator)?;
            check_iqn(&field(&sub, "target"), &iscsi.target)?;
            check_hostname(&field(&sub, "host"), &iscsi.host)?;
            if !(1..=65535).contains(&iscsi.port) {
                return Err(invalid(
                    &field(&sub, "port"),
                    "must be a port number (1-65535)",
                ));
            }
            for (name, value) in [
                ("lun", iscsi.lun),
                ("max_comands", iscsi.max_comands),
                ("queue_depth", iscsi.queue_depth),
            ] {
                check_non_negative(&field(&sub, name), value)?;
            }
            Ok(AttachDef::Iscsi(Box::new(iscsi.clone())))
        }
    }
}

fn check_fs_type(at: &str, fs_type: &str) -> Result<(), Invalid> {
    if fs_type.is_empty()
        || !fs_type
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(invalid(at, format!("{fs_type:?} is not a filesystem type")));
    }
    Ok(())
}

/// Validates a mount definition (not a reference); every sub-object present must be valid,
/// as for [`attach_def`].
pub fn mount_def(at: &str, mount: &Mount) -> Result<MountDef, Invalid> {
    let kind = mount.kind.ok_or_else(|| {
        invalid(
            &field(at, "kind"),
            "required (or give an id to reference a mount)",
        )
    })?;
    let present = [
        (MountKind::Attach, mount.attach.is_some()),
        (MountKind::Bind, mount.bind.is_some()),
        (MountKind::Nfs, mount.nfs.is_some()),
        (MountKind::Overlay, mount.overlay.is_some()),
        (MountKind::Uri, mount.uri.is_some()),
    ];
    for (other, _) in present.iter().filter(|(other, is)| *is && *other != kind) {
        mount_of_kind(at, mount, *other)?;
    }
    mount_of_kind(at, mount, kind)
}

fn mount_of_kind(at: &str, mount: &Mount, kind: MountKind) -> Result<MountDef, Invalid> {
    let sub = field(at, kind.as_str());
    match kind {
        MountKind::Attach => {
            let spec = mount
                .attach
                .as_ref()
                .ok_or_else(|| missing_sub_object(at, "attach"))?;
            check_fs_type(&field(&sub, "fs_type"), &spec.fs_type)?;
            for (i, option) in spec.mount_options.iter().enumerate() {
                if option.is_empty() || option.contains('\0') {
                    return Err(invalid(
                        &format!("{sub}.mount_options[{i}]"),
                        "must be a non-empty option without NUL bytes",
                    ));
                }
            }
            Ok(MountDef::Attach {
                attach: attach_child(&field(&sub, "attach"), &spec.attach)?,
                fs_type: spec.fs_type.clone(),
                options: spec.mount_options.clone(),
            })
        }
        MountKind::Bind => {
            let bind = mount
                .bind
                .as_ref()
                .ok_or_else(|| missing_sub_object(at, "bind"))?;
            check_path(&field(&sub, "path"), &bind.path)?;
            Ok(MountDef::Bind {
                path: bind.path.clone(),
                base: base_def(&sub, bind.base, bind.mount.as_deref())?,
                recursive: bind.recursive,
                read_only: bind.ro,
            })
        }
        MountKind::Nfs => {
            let nfs = mount
                .nfs
                .as_ref()
                .ok_or_else(|| missing_sub_object(at, "nfs"))?;
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
            Ok(MountDef::Nfs(nfs.clone()))
        }
        MountKind::Overlay => {
            let overlay = mount
                .overlay
                .as_ref()
                .ok_or_else(|| missing_sub_object(at, "overlay"))?;
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
            if overlay_depth(mount) > MAX_OVERLAY_DEPTH {
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
                .map(|(i, lower)| mount_child(&format!("{sub}.lower[{i}]"), lower))
                .collect::<Result<_, _>>()?;
            Ok(MountDef::Overlay { lowers })
        }
        MountKind::Uri => {
            let uri = mount
                .uri
                .as_ref()
                .ok_or_else(|| missing_sub_object(at, "uri"))?;
            if !(uri.uri.starts_with("http://")
                || uri.uri.starts_with("https://")
                || uri.uri.starts_with("file://"))
            {
                return Err(invalid(
                    &field(&sub, "uri"),
                    "must be an http, https or file URI",
                ));
            }
            Ok(MountDef::Uri(uri.clone()))
        }
    }
}

/// Parses a stop signal given by name (`SIGTERM`, `TERM`, `SIGRTMIN+3`) or number.
pub fn parse_signal(value: &str) -> Option<i32> {
    if let Ok(number) = value.parse::<i32>() {
        return (1..=libc_sigrtmax()).contains(&number).then_some(number);
    }
    let name = value.strip_prefix("SIG").unwrap_or(value);
    if let Some(offset) = name.strip_prefix("RTMIN") {
        let offset: i32 = if offset.is_empty() {
            0
        } else {
            offset.strip_prefix('+')?.parse().ok()?
        };
        let number = libc_sigrtmin() + offset;
        return (number <= libc_sigrtmax()).then_some(number);
    }
    let signal: nix::sys::signal::Signal = format!("SIG{name}").parse().ok()?;
    Some(signal as i32)
}

/// The name of a signal number as [`parse_signal`] reads it back (`SIGKILL`, `SIGRTMIN+3`).
pub fn signal_name(number: i32) -> String {
    if number >= libc_sigrtmin() {
        return match number - libc_sigrtmin() {
            0 => "SIGRTMIN".to_string(),
            offset => format!("SIGRTMIN+{offset}"),
        };
    }
    nix::sys::signal::Signal::try_from(number)
        .map(|signal| signal.as_str().to_string())
        .unwrap_or_else(|_| number.to_string())
}

fn libc_sigrtmin() -> i32 {
    libc::SIGRTMIN()
}

fn libc_sigrtmax() -> i32 {
    libc::SIGRTMAX()
}

/// Validates a container definition from `POST /container`.
pub fn container_def(container: &Container) -> Result<ContainerDef, Invalid> {
    if let Some(name) = &container.name {
        check_name("name", name)?;
    }
    let mount = container
        .mount
        .as_ref()
        .ok_or_else(|| invalid("mount", "required"))?;
    let command = container
        .command
        .as_ref()
        .ok_or_else(|| invalid("command", "required"))?;
    if command.contains('\0') {
        return Err(invalid("command", "must not contain NUL bytes"));
    }
    let argv = shlex::split(command)
        .ok_or_else(|| invalid("command", "unbalanced quotes or a trailing backslash"))?;
    if argv.is_empty() {
        return Err(invalid("command", "must name the init program"));
    }
    let start = match container.state {
        None | Some(ContainerState::Created) => false,
        Some(ContainerState::Running) => true,
        Some(other) => {
            return Err(invalid(
                "state",
                format!(
                    "a container is created as created or running, not {}",
                    other.as_str()
                ),
            ))
        }
    };
    let mut namespaces: BTreeSet<Namespace> = match &container.namespaces {
        Some(list) => list.iter().copied().collect(),
        None => DEFAULT_NAMESPACES.into_iter().collect(),
    };
    if container.systemd && container.namespaces.is_none() {
        // systemd must see its own cgroup as the root of the tree, not the host's path to it.
        namespaces.insert(Namespace::Cgroup);
    }
    namespaces.insert(Namespace::Mnt);
    namespaces.insert(Namespace::Pid);
    let signal = match &container.stop_signal {
        Some(name) => parse_signal(name)
            .ok_or_else(|| invalid("stop_signal", format!("{name:?} is not a signal")))?,
        None if container.systemd => libc_sigrtmin() + 3,
        None => libc::SIGKILL,
    };
    let timeout_secs = match container.stop_timeout {
        Some(secs) => {
            check_non_negative("stop_timeout", secs)?;
            secs as u64
        }
        None if signal == libc::SIGKILL => 0,
        None => SYSTEMD_STOP_TIMEOUT_SECS,
    };
    Ok(ContainerDef {
        name: container.name.clone().filter(|n| !n.is_empty()),
        mount: mount_child("mount", mount)?,
        command: command.clone(),
        argv,
        systemd: container.systemd,
        start,
        namespaces,
        stop: StopPolicy {
            signal,
            timeout_secs,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> T {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn loopback_on_nested_mount_is_checked_recursively() {
        let attach: Attach = json(serde_json::json!({
            "kind": "loopback",
            "loopback": {"path": "img", "base": "mount", "mount": {"kind": "attach",
                "attach": {"fs_type": "squashfs", "attach": {"kind": "local"}}}}
        }));
        let err = attach_def("", &attach).unwrap_err();
        assert_eq!(err.field, "loopback.mount.attach.attach.local");
    }

    #[test]
    fn references_skip_the_rest_of_the_definition() {
        let mount: Mount = json(serde_json::json!({"id": 7, "kind": "overlay"}));
        assert_eq!(mount_child("mount", &mount).unwrap(), Child::Existing(7));
    }

    #[test]
    fn base_mount_needs_its_mount() {
        let attach: Attach = json(
            serde_json::json!({"kind": "loopback", "loopback": {"path": "x", "base": "mount"}}),
        );
        assert_eq!(attach_def("", &attach).unwrap_err().field, "loopback.mount");
    }

    #[test]
    fn names_allow_all_digits() {
        assert!(check_name("name", "node-0123456789_a.b").is_ok());
        assert!(check_name("name", "a b").is_err());
        assert!(check_name("name", "ä").is_err());
    }

    #[test]
    fn command_is_split_like_a_shell() {
        let c: Container =
            json(serde_json::json!({"mount": {"id": 1}, "command": "/bin/sh -c 'echo hi'"}));
        let def = container_def(&c).unwrap();
        assert_eq!(def.argv, ["/bin/sh", "-c", "echo hi"]);
        assert_eq!(def.stop.signal, libc::SIGKILL);
        assert!(def.namespaces.contains(&Namespace::Uts));
    }

    #[test]
    fn systemd_stops_with_rtmin_plus_3_and_a_timeout() {
        let c: Container =
            json(serde_json::json!({"mount": {"id": 1}, "command": "/sbin/init", "systemd": true}));
        let def = container_def(&c).unwrap();
        assert_eq!(def.stop.signal, libc::SIGRTMIN() + 3);
        assert_eq!(def.stop.timeout_secs, SYSTEMD_STOP_TIMEOUT_SECS);
        assert!(def.namespaces.contains(&Namespace::Cgroup));
    }

    #[test]
    fn signals_parse_by_name_and_number() {
        assert_eq!(parse_signal("SIGTERM"), Some(libc::SIGTERM));
        assert_eq!(parse_signal("TERM"), Some(libc::SIGTERM));
        assert_eq!(parse_signal("9"), Some(9));
        assert_eq!(parse_signal("SIGRTMIN+3"), Some(libc::SIGRTMIN() + 3));
        assert_eq!(parse_signal("SIGNOPE"), None);
        assert_eq!(parse_signal("0"), None);
        for number in [
            libc::SIGTERM,
            libc::SIGKILL,
            libc::SIGRTMIN(),
            libc::SIGRTMIN() + 3,
        ] {
            assert_eq!(parse_signal(&signal_name(number)), Some(number));
        }
    }

    #[test]
    fn rbd_needs_ipv4_monitors_and_credentials() {
        let attach: Attach = json(
            serde_json::json!({"kind": "rbd", "rbd": {"monitors": ["ceph-mon"], "pool": "p", "image": "i"}}),
        );
        assert_eq!(
            attach_def("", &attach).unwrap_err().field,
            "rbd.monitors[0]"
        );
        let attach: Attach = json(
            serde_json::json!({"kind": "rbd", "rbd": {"monitors": ["10.0.0.1"], "pool": "p", "image": "i", "options": {"name": "admin"}}}),
        );
        assert_eq!(
            attach_def("", &attach).unwrap_err().field,
            "rbd.options.secret"
        );
    }
}
