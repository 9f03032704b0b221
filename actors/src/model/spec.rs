//! Checked definitions: what a request asks for, once every field has been validated.
//!
//! A request names each nested object either by reference (`{"id": N}`) or by a full definition.
//! [`Child`] keeps that distinction, so the engine knows what a parent owns and what it only uses.

use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;

use super::wire::{Attach, Base, Container, ContainerState, Id, Mount, MountKind, Namespace};
use crate::driver::{Erased, Kind, KindRef, Kinds, WireObject};
use crate::registry::graph::ObjectKind;

/// A request field that does not fit the contract.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct Invalid {
    /// Dotted path of the field, e.g. `mount.attach.attach.loopback.path`.
    pub field: String,
    pub reason: String,
}

pub(crate) fn invalid(field: &str, reason: impl Into<String>) -> Invalid {
    Invalid {
        field: field.to_string(),
        reason: reason.into(),
    }
}

/// A nested object: an existing one by id (of the object kind its place asks for), or a new
/// one the parent creates and owns.
#[derive(Debug, Clone, PartialEq)]
pub enum Child {
    Existing(Id, ObjectKind),
    New(Box<Def>),
}

/// A checked attachment or mount definition: its kind, the kind's own spec, and the objects it
/// depends on, in the order its driver wants them.
#[derive(Clone)]
pub struct Def {
    pub kind: KindRef,
    pub spec: Erased,
    pub children: Vec<Child>,
}

impl Def {
    pub fn object(&self) -> ObjectKind {
        self.kind.object()
    }
}

impl PartialEq for Def {
    fn eq(&self, other: &Def) -> bool {
        self.kind.object() == other.kind.object()
            && self.kind.name() == other.kind.name()
            && self.kind.spec_eq(&self.spec, &other.spec)
            && self.children == other.children
    }
}

impl fmt::Debug for Def {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Spec<'a>(&'a Def);
        impl fmt::Debug for Spec<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.kind.debug(&self.0.spec, f)
            }
        }
        f.debug_struct("Def")
            .field(
                "kind",
                &format_args!("{}/{}", self.kind.object(), self.kind.name()),
            )
            .field("spec", &Spec(self))
            .field("children", &self.children)
            .finish()
    }
}

/// How a container's init is asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
    pub mount: Child,
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
pub(crate) fn overlay_depth(mount: &Mount) -> usize {
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

pub(crate) fn field(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}.{name}")
    }
}

pub(crate) fn check_path(at: &str, path: &str) -> Result<(), Invalid> {
    if path.is_empty() {
        return Err(invalid(at, "must not be empty"));
    }
    if path.contains('\0') {
        return Err(invalid(at, "must not contain NUL bytes"));
    }
    Ok(())
}

pub(crate) fn check_absolute(at: &str, path: &str) -> Result<(), Invalid> {
    check_path(at, path)?;
    if !path.starts_with('/') {
        return Err(invalid(at, "must be an absolute path"));
    }
    Ok(())
}

pub(crate) fn check_ipv4(at: &str, value: &str) -> Result<(), Invalid> {
    value
        .parse::<Ipv4Addr>()
        .map(|_| ())
        .map_err(|_| invalid(at, format!("{value:?} is not an IPv4 address")))
}

pub(crate) fn check_non_negative(at: &str, value: i64) -> Result<(), Invalid> {
    if value < 0 {
        return Err(invalid(at, "must not be negative"));
    }
    Ok(())
}

pub(crate) fn check_hostname(at: &str, host: &str) -> Result<(), Invalid> {
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

pub(crate) fn check_iqn(at: &str, value: &str) -> Result<(), Invalid> {
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

/// A loopback's or bind's base: nothing for the host's `/`, else the mount the path is in.
pub(crate) fn base_child(
    kinds: &Kinds,
    at: &str,
    base: Base,
    mount: Option<&Mount>,
) -> Result<Option<Child>, Invalid> {
    match base {
        Base::Root => Ok(None),
        Base::Mount => {
            let mount =
                mount.ok_or_else(|| invalid(&field(at, "mount"), "required when base is mount"))?;
            Ok(Some(mount_child(kinds, &field(at, "mount"), mount)?))
        }
    }
}

/// Validates a nested or top-level attachment field.
pub fn attach_child(kinds: &Kinds, at: &str, attach: &Attach) -> Result<Child, Invalid> {
    match attach.id {
        Some(id) => Ok(Child::Existing(id, ObjectKind::Attach)),
        None => Ok(Child::New(Box::new(attach_def(kinds, at, attach)?))),
    }
}

/// Validates a mount field that may be a reference or a definition.
pub fn mount_child(kinds: &Kinds, at: &str, mount: &Mount) -> Result<Child, Invalid> {
    match mount.id {
        Some(id) => Ok(Child::Existing(id, ObjectKind::Mount)),
        None => Ok(Child::New(Box::new(mount_def(kinds, at, mount)?))),
    }
}

pub(crate) fn missing_sub_object(at: &str, kind: &str) -> Invalid {
    invalid(&field(at, kind), format!("required when kind is {kind}"))
}

type ParseKind<W> =
    fn(&dyn Kind, &Kinds, &str, &W) -> Option<Result<(Erased, Vec<Child>), Invalid>>;

/// Validates an attachment or mount definition (not a reference) through the drivers. Like the
/// reference's schema validation, every sub-object present must be valid, also one its `kind`
/// leaves unused.
fn object_def<W: WireObject>(
    kinds: &Kinds,
    at: &str,
    wire: &W,
    parse: ParseKind<W>,
) -> Result<Def, Invalid> {
    let object = W::OBJECT;
    let kind = wire.kind_of().ok_or_else(|| {
        invalid(
            &field(at, "kind"),
            format!(
                "required (or give an id to reference {} {object})",
                article(object)
            ),
        )
    })?;
    let name = W::kind_name(kind);
    for other in kinds.of(object).filter(|other| other.name() != name) {
        if let Some(Err(invalid)) = parse(other.as_ref(), kinds, at, wire) {
            return Err(invalid);
        }
    }
    let driver = kinds.get(object, name).ok_or_else(|| {
        invalid(
            &field(at, "kind"),
            format!("this service has no {name} driver"),
        )
    })?;
    let (spec, children) =
        parse(driver.as_ref(), kinds, at, wire).ok_or_else(|| missing_sub_object(at, name))??;
    Ok(Def {
        kind: driver.clone(),
        spec,
        children,
    })
}

fn article(object: ObjectKind) -> &'static str {
    match object {
        ObjectKind::Attach => "an",
        _ => "a",
    }
}

/// Validates an attachment definition (not a reference).
pub fn attach_def(kinds: &Kinds, at: &str, attach: &Attach) -> Result<Def, Invalid> {
    object_def(kinds, at, attach, |kind, kinds, at, wire| {
        kind.parse_attach(kinds, at, wire)
    })
}

pub(crate) fn check_fs_type(at: &str, fs_type: &str) -> Result<(), Invalid> {
    if fs_type.is_empty()
        || !fs_type
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(invalid(at, format!("{fs_type:?} is not a filesystem type")));
    }
    Ok(())
}

/// Validates a mount definition (not a reference); as for [`attach_def`].
pub fn mount_def(kinds: &Kinds, at: &str, mount: &Mount) -> Result<Def, Invalid> {
    object_def(kinds, at, mount, |kind, kinds, at, wire| {
        kind.parse_mount(kinds, at, wire)
    })
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
pub fn container_def(kinds: &Kinds, container: &Container) -> Result<ContainerDef, Invalid> {
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
        mount: mount_child(kinds, "mount", mount)?,
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

    fn kinds() -> Kinds {
        Kinds::standard(&Default::default())
    }

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
        let err = attach_def(&kinds(), "", &attach).unwrap_err();
        assert_eq!(err.field, "loopback.mount.attach.attach.local");
    }

    #[test]
    fn references_skip_the_rest_of_the_definition() {
        let mount: Mount = json(serde_json::json!({"id": 7, "kind": "overlay"}));
        assert_eq!(
            mount_child(&kinds(), "mount", &mount).unwrap(),
            Child::Existing(7, ObjectKind::Mount)
        );
    }

    #[test]
    fn base_mount_needs_its_mount() {
        let attach: Attach = json(
            serde_json::json!({"kind": "loopback", "loopback": {"path": "x", "base": "mount"}}),
        );
        assert_eq!(
            attach_def(&kinds(), "", &attach).unwrap_err().field,
            "loopback.mount"
        );
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
        let def = container_def(&kinds(), &c).unwrap();
        assert_eq!(def.argv, ["/bin/sh", "-c", "echo hi"]);
        assert_eq!(def.stop.signal, libc::SIGKILL);
        assert!(def.namespaces.contains(&Namespace::Uts));
    }

    #[test]
    fn systemd_stops_with_rtmin_plus_3_and_a_timeout() {
        let c: Container =
            json(serde_json::json!({"mount": {"id": 1}, "command": "/sbin/init", "systemd": true}));
        let def = container_def(&kinds(), &c).unwrap();
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
            attach_def(&kinds(), "", &attach).unwrap_err().field,
            "rbd.monitors[0]"
        );
        let attach: Attach = json(
            serde_json::json!({"kind": "rbd", "rbd": {"monitors": ["10.0.0.1"], "pool": "p", "image": "i", "options": {"name": "admin"}}}),
        );
        assert_eq!(
            attach_def(&kinds(), "", &attach).unwrap_err().field,
            "rbd.options.secret"
        );
    }
}
