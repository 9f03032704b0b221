//! `rbd`: a Ceph RBD image mapped by the kernel's rbd driver (krbd) through `/sys/bus/rbd`.
//!
//! The map request is one line, `"<mons> name=<user>,secret=<key>[,<options>] <pool> <image>
//! <snap or ->"` (Documentation/ABI/testing/sysfs-bus-rbd); it carries the secret, so it is
//! never logged or repeated in an error. The kernel gives no id back: the new device is the one
//! that appeared in `/sys/bus/rbd/devices` during the write and shows the requested image.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use crate::driver::{Dep, DepViews, Driver, Host, Kinds, Parsed};
use crate::error::{Error, Origin};
use crate::model::spec::{check_ipv4, check_non_negative, field, invalid, Invalid};
use crate::model::wire::{Attach, AttachKind, AttachRbd, Id, RbdOptions};
use crate::registry::graph::ObjectKind;
use crate::sys::rbd::{self as sysrbd, MappedImage};
use crate::sys::SysError;

const ORIGIN: Origin = Origin::new(ObjectKind::Attach, "rbd");

/// The `mount_timeout` sent when the request gives none: how long the kernel waits for the
/// monitors (to open a session, and for an unmap's unwatch). krbd's own default is 60 s, more
/// than a client such as Kraken gives a whole request; this bounds a map to monitors that do
/// not answer, and an unmap from a cluster that has gone.
pub const DEFAULT_MOUNT_TIMEOUT_SECS: i64 = 10;

/// The `osd_request_timeout` always sent: how long the kernel waits for an OSD request before
/// failing it. krbd's default is none, and then a mapping whose cluster has gone cannot be
/// unmapped, not even forced: the kernel's watch re-registration waits for the OSDs forever
/// holding the lock the unmap needs (and the writer of the unmap request, the service, cannot
/// even be killed). The cost: I/O on the device fails (EIO to its filesystem) when the cluster
/// does not answer for this long, long enough to ride out an OSD's failover.
pub const OSD_REQUEST_TIMEOUT_SECS: i64 = 30;

/// How long a mapped device's `/dev/rbd<id>` may take to appear (devtmpfs makes it during the
/// map, udev soon after) before the driver makes the node itself.
const NODE_WAIT: Duration = Duration::from_secs(2);

/// How long an unmap that is not forced waits for others (udev's probes) to close the device.
const BUSY_WAIT: Duration = Duration::from_secs(3);

/// How long a forced release waits for its unmap before it answers and leaves the unmap to
/// finish in the kernel.
const FORCED_UNMAP_WAIT: Duration = Duration::from_secs(5);
/// How long a release that is not forced waits for the kernel's unmap before it answers and
/// leaves the unmap to finish in its thread: longer than an unmap from a live cluster takes
/// under emulation, and than the busy retries (BUSY_WAIT).
const UNMAP_WAIT: Duration = Duration::from_secs(15);

/// The kernel reads one sysfs write of at most a page less its terminating NUL.
const MAX_REQUEST_LEN: usize = 4095;

/// The driver, with the turns its maps and unmaps of one image take (see [`ImageTurns`]).
#[derive(Default)]
pub struct Rbd {
    turns: Arc<ImageTurns>,
}

/// What the kernel mapped: device `/dev/rbd<id>`, and the image sysfs shows for it (checked
/// again at adoption).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RbdFacts {
    pub id: u32,
    pub device_file: PathBuf,
    pub pool: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// The service made `device_file` (no devtmpfs or udev did) and removes it at the unmap.
    #[serde(default)]
    pub made_node: bool,
}

/// A mapped device while its attachment holds it.
#[derive(Debug)]
pub struct RbdDevice {
    id: u32,
    device_file: PathBuf,
    made_node: bool,
    /// The request's `force` option: every unmap is forced.
    always_force: bool,
    /// What it maps: its unmap takes the image's turn (see [`ImageTurn`]).
    image: MappedImage,
}

impl Driver for Rbd {
    type Object = Attach;
    type Spec = AttachRbd;
    type Facts = RbdFacts;
    type Resource = RbdDevice;
    const KIND: AttachKind = AttachKind::Rbd;

    fn parse(
        &self,
        _: &Kinds,
        at: &str,
        wire: &Attach,
    ) -> Option<Result<Parsed<AttachRbd>, Invalid>> {
        let sub = wire.rbd.as_ref()?;
        Some(check(&field(at, "rbd"), sub).map(|()| {
            let spec = AttachRbd {
                device_id: None,
                ..sub.clone()
            };
            Parsed::new(spec, vec![])
        }))
    }

    fn create(
        &self,
        _: &Host,
        id: Id,
        spec: &AttachRbd,
        _: &[Dep],
    ) -> Result<(RbdDevice, RbdFacts), Error> {
        crate::sys::kmod::ensure("rbd", Path::new(sysrbd::BUS))
            .map_err(|reason| Error::unsupported(ORIGIN, reason))?;
        let request = MapRequest::new(spec);
        let wanted = wanted_image(spec);
        let started = Instant::now();
        let device_id = {
            let _turn = self.turns.take(&wanted);
            let before = devices_showing(&wanted);
            debug!(id, image = %describe_image(spec), "mapping rbd image");
            sysrbd::map(request.bytes()).map_err(|errno| map_error(spec, errno, started))?;
            find_new_device(&before, &wanted)
        };
        let Some(device_id) = device_id else {
            return Err(Error::Kernel {
                origin: ORIGIN,
                source: SysError {
                    op: format!(
                        "find the device of {} after mapping it",
                        describe_image(spec)
                    ),
                    errno: Errno::ENODEV,
                },
            });
        };
        let device_file = PathBuf::from(format!("/dev/rbd{device_id}"));
        let made_node = match ensure_node(device_id, &device_file) {
            Ok(made) => made,
            Err(err) => {
                let _ = sysrbd::unmap(&unmap_request(device_id, true));
                return Err(Error::Kernel {
                    origin: ORIGIN,
                    source: err,
                });
            }
        };
        info!(
            id,
            device = %device_file.display(),
            image = %describe_image(spec),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "rbd image mapped"
        );
        let facts = RbdFacts {
            id: device_id,
            device_file: device_file.clone(),
            pool: spec.pool.clone(),
            namespace: namespace(spec).map(str::to_string),
            image: spec.image.clone(),
            snapshot: spec.snapshot.clone(),
            made_node,
        };
        let device = RbdDevice {
            id: device_id,
            device_file,
            made_node,
            always_force: spec.options.as_ref().is_some_and(|o| o.force),
            image: wanted,
        };
        Ok((device, facts))
    }

    fn adopt(&self, _: &Host, id: Id, spec: &AttachRbd, facts: &RbdFacts) -> Option<RbdDevice> {
        let mapped = MappedImage::of_device(facts.id)?;
        let recorded = MappedImage {
            pool: facts.pool.clone(),
            pool_ns: facts.namespace.clone().unwrap_or_default(),
            image: facts.image.clone(),
            snapshot: facts.snapshot.clone(),
        };
        if mapped != recorded {
            warn!(
                id,
                device = facts.id,
                "rbd device now maps another image: not adopted"
            );
            return None;
        }
        let made_node = match ensure_node(facts.id, &facts.device_file) {
            Ok(made) => made || facts.made_node,
            Err(err) => {
                warn!(id, error = %err, "no device node for the adopted rbd device");
                return None;
            }
        };
        Some(RbdDevice {
            id: facts.id,
            device_file: facts.device_file.clone(),
            made_node,
            always_force: spec.options.as_ref().is_some_and(|o| o.force),
            image: recorded,
        })
    }

    fn release(&self, _: &Host, device: RbdDevice, force: bool) -> Result<(), Error> {
        // An unmap from a cluster that has gone waits in the kernel for its OSD requests to
        // time out, one after another (minutes): it goes on in its own thread, and the release
        // answers once it is done or after FORCED_UNMAP_WAIT (UNMAP_WAIT when not forced: a
        // busy device still answers EBUSY before that).
        let wait = if force { FORCED_UNMAP_WAIT } else { UNMAP_WAIT };
        let id = device.id;
        let turns = Arc::clone(&self.turns);
        let (done, finished) = mpsc::channel();
        let spawned = thread::Builder::new()
            .name(format!("rbd-unmap-{id}"))
            .spawn(move || {
                let result = unmap(&turns, device, force);
                if let Err(err) = &result {
                    warn!(device = id, force, error = %err, "unmap failed");
                }
                let _ = done.send(result);
            });
        if let Err(err) = spawned {
            return Err(Error::Kernel {
                origin: ORIGIN,
                source: SysError {
                    op: format!("start the unmap of rbd device {id}: {err}"),
                    errno: Errno::EAGAIN,
                },
            });
        }
        match finished.recv_timeout(wait) {
            Ok(result) => result,
            Err(_) => {
                warn!(
                    device = id,
                    force,
                    "unmap still waits for the cluster in the kernel: the device goes when the \
                     kernel's requests time out (osd_request_timeout)"
                );
                Ok(())
            }
        }
    }

    fn provides<'f>(&self, facts: &'f RbdFacts) -> &'f Path {
        &facts.device_file
    }

    fn describe(
        &self,
        spec: &AttachRbd,
        facts: Option<&RbdFacts>,
        _: &dyn DepViews,
        wire: &mut Attach,
    ) {
        wire.rbd = Some(AttachRbd {
            device_id: facts.map(|facts| i64::from(facts.id)),
            ..spec.clone()
        });
    }
}

fn namespace(spec: &AttachRbd) -> Option<&str> {
    spec.options.as_ref()?.namespace.as_deref()
}

/// `pool[/namespace]/image[@snapshot]`, as rbd(8) names an image: for logs and errors.
fn describe_image(spec: &AttachRbd) -> String {
    let mut name = spec.pool.clone();
    if let Some(ns) = namespace(spec) {
        let _ = write!(name, "/{ns}");
    }
    let _ = write!(name, "/{}", spec.image);
    if let Some(snap) = &spec.snapshot {
        let _ = write!(name, "@{snap}");
    }
    name
}

fn wanted_image(spec: &AttachRbd) -> MappedImage {
    MappedImage {
        pool: spec.pool.clone(),
        pool_ns: namespace(spec).unwrap_or_default().to_string(),
        image: spec.image.clone(),
        snapshot: spec.snapshot.clone(),
    }
}

/// The map request for the kernel. Holds the secret: it has no `Debug` or `Display`.
struct MapRequest(String);

impl MapRequest {
    fn new(spec: &AttachRbd) -> MapRequest {
        let default = RbdOptions::default();
        let options = spec.options.as_ref().unwrap_or(&default);
        let mut line = spec.monitors.join(",");
        line.push(' ');
        let mut list: Vec<String> = Vec::new();
        if let Some(name) = &options.name {
            list.push(format!("name={name}"));
        }
        if let Some(secret) = &options.secret {
            list.push(format!("secret={}", secret.expose()));
        }
        list.extend(kernel_options(options));
        line.push_str(&list.join(","));
        let _ = write!(
            line,
            " {} {} {}",
            spec.pool,
            spec.image,
            spec.snapshot.as_deref().unwrap_or("-")
        );
        MapRequest(line)
    }

    fn bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// Every option of `options` but the credentials, as krbd and libceph name them: flags only
/// when set, numbers only when given (`0` reads as not given), and the bounded default
/// `mount_timeout`. `force` is an unmap option (see [`unmap_request`]), not a map one.
fn kernel_options(options: &RbdOptions) -> Vec<String> {
    let mut list = Vec::new();
    let mut value = |name: &str, value: Option<String>| {
        if let Some(value) = value {
            list.push(format!("{name}={value}"));
        }
    };
    value("fsid", options.fsid.clone());
    value("ip", options.ip.clone());
    let number = |n: Option<i64>| n.filter(|&n| n != 0).map(|n| n.to_string());
    let timeout = number(options.mount_timeout).unwrap_or(DEFAULT_MOUNT_TIMEOUT_SECS.to_string());
    let flags = [
        (options.share, "share"),
        (options.noshare, "noshare"),
        (options.crc, "crc"),
        (options.nocrc, "nocrc"),
        (options.ceph_requires_signatures, "cephx_require_signatures"),
        (
            options.noceph_requires_signatures,
            "nocephx_require_signatures",
        ),
        (options.tcp_nodelay, "tcp_nodelay"),
        (options.notcp_nodelay, "notcp_nodelay"),
        (options.cephx_sign_messages, "cephx_sign_messages"),
        (options.nocephx_sign_messages, "nocephx_sign_messages"),
    ];
    list.extend(
        flags
            .iter()
            .filter(|(set, _)| *set)
            .map(|(_, name)| name.to_string()),
    );
    list.push(format!("mount_timeout={timeout}"));
    list.push(format!("osd_request_timeout={OSD_REQUEST_TIMEOUT_SECS}"));
    for (name, n) in [
        ("osdkeepalive", options.osdkeepalive),
        ("osd_idle_ttl", options.osd_idle_ttl),
    ] {
        if let Some(n) = number(n) {
            list.push(format!("{name}={n}"));
        }
    }
    let rbd_flags = [(options.rw, "rw"), (options.ro, "ro")];
    list.extend(
        rbd_flags
            .iter()
            .filter(|(set, _)| *set)
            .map(|(_, name)| name.to_string()),
    );
    if let Some(n) = number(options.queue_depth) {
        list.push(format!("queue_depth={n}"));
    }
    let lock_flags = [
        (options.lock_on_read, "lock_on_read"),
        (options.exclusive, "exclusive"),
    ];
    list.extend(
        lock_flags
            .iter()
            .filter(|(set, _)| *set)
            .map(|(_, name)| name.to_string()),
    );
    if let Some(n) = number(options.lock_timeout) {
        list.push(format!("lock_timeout={n}"));
    }
    let last_flags = [
        (options.notrim, "notrim"),
        (options.abort_on_full, "abort_on_full"),
    ];
    list.extend(
        last_flags
            .iter()
            .filter(|(set, _)| *set)
            .map(|(_, name)| name.to_string()),
    );
    if let Some(n) = number(options.alloc_size) {
        list.push(format!("alloc_size={n}"));
    }
    if let Some(ns) = &options.namespace {
        list.push(format!("_pool_ns={ns}"));
    }
    list
}

/// Unmaps `device` (`force`: even while open) and removes the node the driver made for it.
/// Maps of its image wait meanwhile.
fn unmap(turns: &Arc<ImageTurns>, device: RbdDevice, force: bool) -> Result<(), Error> {
    let request = unmap_request(device.id, force || device.always_force);
    debug!(device = device.id, %request, "unmapping rbd device");
    let unmapped = {
        let _turn = turns.take(&device.image);
        unmap_when_closed(&request)
    };
    match unmapped {
        Ok(()) => {}
        // Already gone (unmapped by hand, or by an earlier attempt that timed out late).
        Err(SysError {
            errno: Errno::ENOENT,
            ..
        }) => warn!(device = device.id, "rbd device was already unmapped"),
        Err(err) => return Err(Error::kernel(ORIGIN)(err)),
    }
    if device.made_node {
        if let Err(err) = std::fs::remove_file(&device.device_file) {
            warn!(node = %device.device_file.display(), error = %err, "cannot remove device node");
        }
    }
    info!(device = device.id, "rbd device unmapped");
    Ok(())
}

/// Unmaps, retrying for [`BUSY_WAIT`] while the device is open: udev and blkid open a new
/// device for a moment to probe it.
fn unmap_when_closed(request: &str) -> Result<(), SysError> {
    let deadline = Instant::now() + BUSY_WAIT;
    loop {
        match sysrbd::unmap(request) {
            Err(err) if err.errno == Errno::EBUSY && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(50));
            }
            done => return done,
        }
    }
}

/// What `remove_single_major` is sent to unmap device `id`.
fn unmap_request(id: u32, force: bool) -> String {
    if force {
        format!("{id} force")
    } else {
        id.to_string()
    }
}

/// The errno of a failed map, as the client should read it. Never repeats the request.
fn map_error(spec: &AttachRbd, errno: Errno, started: Instant) -> Error {
    let image = describe_image(spec);
    let monitors = spec.monitors.join(",");
    let timeout = spec
        .options
        .as_ref()
        .and_then(|o| o.mount_timeout)
        .unwrap_or(DEFAULT_MOUNT_TIMEOUT_SECS);
    let waited = started.elapsed().as_secs_f32();
    match errno {
        Errno::ETIMEDOUT => Error::unreachable(
            ORIGIN,
            format!(
                "map {image}: the cluster did not answer in time (monitors {monitors}: \
                 mount_timeout={timeout}s, OSDs: osd_request_timeout={OSD_REQUEST_TIMEOUT_SECS}s); \
                 gave up after {waited:.1}s: {errno}"
            ),
        ),
        Errno::ECONNREFUSED | Errno::ECONNRESET | Errno::EHOSTUNREACH | Errno::ENETUNREACH => {
            Error::unreachable(ORIGIN, format!("map {image}: monitors {monitors}: {errno}"))
        }
        Errno::EACCES | Errno::EPERM => {
            let user = spec
                .options
                .as_ref()
                .and_then(|o| o.name.as_deref())
                .unwrap_or("");
            Error::rejected(
                ORIGIN,
                format!(
                    "map {image}: the cluster refused the credentials of client.{user}: {errno}"
                ),
            )
        }
        Errno::ENOENT => Error::rejected(
            ORIGIN,
            format!("map {image}: no such pool, namespace, image or snapshot: {errno}"),
        ),
        errno => Error::Kernel {
            origin: ORIGIN,
            source: SysError {
                op: format!("map rbd image {image} (monitors {monitors})"),
                errno,
            },
        },
    }
}

/// The devices that show `image`.
fn devices_showing(image: &MappedImage) -> BTreeSet<u32> {
    sysrbd::device_ids()
        .into_iter()
        .filter(|&id| MappedImage::of_device(id).as_ref() == Some(image))
        .collect()
}

/// The device that shows the wanted image and did not before the map. Maps and unmaps of one
/// image take turns here ([`ImageTurn`]), so no device of it went (its id free for ours) or
/// came from this service meanwhile: the new one is ours.
fn find_new_device(before: &BTreeSet<u32>, wanted: &MappedImage) -> Option<u32> {
    devices_showing(wanted).difference(before).next().copied()
}

/// Makes sure `node` is device `id`'s block device node: waits for devtmpfs or udev to make
/// it, else makes it. Answers whether this call made it.
fn ensure_node(id: u32, node: &Path) -> Result<bool, SysError> {
    let numbers = sysrbd::device_numbers(id).ok_or_else(|| SysError {
        op: format!("read the device numbers of rbd device {id}"),
        errno: Errno::ENODEV,
    })?;
    let deadline = Instant::now() + NODE_WAIT;
    loop {
        match sysrbd::node_numbers(node) {
            Some(found) if found == numbers => return Ok(false),
            Some(_) => {
                return Err(SysError {
                    op: format!("{} is another device than rbd device {id}", node.display()),
                    errno: Errno::EEXIST,
                })
            }
            None if node.symlink_metadata().is_ok() => {
                return Err(SysError {
                    op: format!("{} is not a block device", node.display()),
                    errno: Errno::EEXIST,
                })
            }
            None if Instant::now() >= deadline => break,
            None => thread::sleep(Duration::from_millis(20)),
        }
    }
    sysrbd::make_device_node(node, numbers)?;
    info!(node = %node.display(), "no devtmpfs or udev made the rbd device node: made it");
    Ok(true)
}

/// Maps and unmaps of one image take turns, so that each map finds its own new device; those
/// of different images run side by side (a map that hangs on its monitors holds up only its
/// own image here).
#[derive(Default)]
struct ImageTurns {
    busy: Mutex<Vec<MappedImage>>,
    done: Condvar,
}

/// One image's turn, until dropped.
struct ImageTurn {
    turns: Arc<ImageTurns>,
    key: MappedImage,
}

impl ImageTurns {
    fn busy(&self) -> MutexGuard<'_, Vec<MappedImage>> {
        self.busy
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn take(self: &Arc<Self>, key: &MappedImage) -> ImageTurn {
        let mut busy = self.busy();
        while busy.contains(key) {
            busy = self
                .done
                .wait(busy)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        busy.push(key.clone());
        ImageTurn {
            turns: Arc::clone(self),
            key: key.clone(),
        }
    }
}

impl Drop for ImageTurn {
    fn drop(&mut self) {
        self.turns.busy().retain(|key| key != &self.key);
        self.turns.done.notify_all();
    }
}

/// Names the kernel takes as they are: no separator of the map request (space, comma, `=`)
/// and no control character.
fn check_word(at: &str, value: &str, what: &str) -> Result<(), Invalid> {
    if value.is_empty() {
        return Err(invalid(at, "must not be empty"));
    }
    if value
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == ',' || c == '=')
    {
        return Err(invalid(
            at,
            format!("{what} must not contain whitespace, ',' or '='"),
        ));
    }
    Ok(())
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
    check_word(&field(sub, "pool"), &rbd.pool, "a pool name")?;
    if rbd.image.is_empty() {
        return Err(invalid(&field(sub, "image"), "must not be empty"));
    }
    check_word(&field(sub, "image"), &rbd.image, "an image name")?;
    if let Some(snapshot) = &rbd.snapshot {
        check_word(&field(sub, "snapshot"), snapshot, "a snapshot name")?;
    }
    let options_at = field(sub, "options");
    let options = rbd.options.as_ref();
    if let Some(ip) = options.and_then(|o| o.ip.as_deref()) {
        check_ipv4(&field(&options_at, "ip"), ip)?;
    }
    let Some(name) = options.and_then(|o| o.name.as_ref()) else {
        return Err(invalid(
            &field(&options_at, "name"),
            "required to map an rbd image",
        ));
    };
    check_word(&field(&options_at, "name"), name, "a client name")?;
    let Some(secret) = options.and_then(|o| o.secret.as_ref()) else {
        return Err(invalid(
            &field(&options_at, "secret"),
            "required to map an rbd image",
        ));
    };
    let base64 = |c: char| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=');
    if !secret.expose().chars().all(base64) {
        return Err(invalid(
            &field(&options_at, "secret"),
            "must be a base64 cephx key (its value is not shown)",
        ));
    }
    if let Some(o) = options {
        if let Some(fsid) = &o.fsid {
            check_word(&field(&options_at, "fsid"), fsid, "an fsid")?;
        }
        if let Some(ns) = &o.namespace {
            check_word(&field(&options_at, "namespace"), ns, "a namespace")?;
        }
        for (name, value) in [
            ("mount_timeout", o.mount_timeout),
            ("osdkeepalive", o.osdkeepalive),
            ("osd_idle_ttl", o.osd_idle_ttl),
            ("queue_depth", o.queue_depth),
            ("lock_timeout", o.lock_timeout),
            ("alloc_size", o.alloc_size),
        ] {
            if let Some(value) = value {
                let at = field(&options_at, name);
                check_non_negative(&at, value)?;
                if value > i64::from(u32::MAX) {
                    return Err(invalid(&at, "must fit in 32 bits (the kernel's limit)"));
                }
            }
        }
    }
    if MapRequest::new(rbd).bytes().len() > MAX_REQUEST_LEN {
        return Err(invalid(
            sub,
            format!("the map request would exceed the kernel's {MAX_REQUEST_LEN} bytes"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::wire::Secret;

    const KEY: &str = "AQBe2ZxkAAAAABAAg1H8XqlZZQ==";

    fn credentials() -> RbdOptions {
        RbdOptions {
            name: Some("admin".into()),
            secret: Some(Secret::new(KEY)),
            ..RbdOptions::default()
        }
    }

    fn spec(options: RbdOptions) -> AttachRbd {
        AttachRbd {
            device_id: None,
            monitors: vec!["10.0.0.1".into()],
            pool: "rbd".into(),
            image: "node".into(),
            snapshot: None,
            options: Some(options),
        }
    }

    fn request(spec: &AttachRbd) -> String {
        String::from_utf8(MapRequest::new(spec).bytes().to_vec()).unwrap()
    }

    #[test]
    fn the_minimal_request_has_credentials_and_the_bounded_timeout() {
        assert_eq!(
            request(&spec(credentials())),
            format!("10.0.0.1 name=admin,secret={KEY},mount_timeout=10,osd_request_timeout=30 rbd node -")
        );
    }

    #[test]
    fn several_monitors_a_snapshot_and_a_namespace() {
        let mut spec = spec(RbdOptions {
            namespace: Some("kraken".into()),
            ..credentials()
        });
        spec.monitors = vec!["10.0.0.1".into(), "10.0.0.2".into(), "10.0.0.3".into()];
        spec.snapshot = Some("v1".into());
        assert_eq!(
            request(&spec),
            format!(
                "10.0.0.1,10.0.0.2,10.0.0.3 name=admin,secret={KEY},mount_timeout=10,osd_request_timeout=30,\
                 _pool_ns=kraken rbd node v1"
            )
        );
    }

    type SetOption = fn(&mut RbdOptions);

    #[test]
    fn every_option_has_its_kernel_name() {
        let options = |set: fn(&mut RbdOptions)| {
            let mut options = credentials();
            set(&mut options);
            let line = request(&spec(options));
            let prefix = format!("10.0.0.1 name=admin,secret={KEY},");
            line.strip_prefix(&prefix)
                .and_then(|rest| rest.strip_suffix(" rbd node -"))
                .unwrap_or_else(|| panic!("{line}"))
                .to_string()
        };
        let cases: Vec<(SetOption, &str)> =
            vec![
            (
                |o| o.fsid = Some("8d2e5a7e-1c2b-4c3d-9e8f-0a1b2c3d4e5f".into()),
                "fsid=8d2e5a7e-1c2b-4c3d-9e8f-0a1b2c3d4e5f,mount_timeout=10,osd_request_timeout=30",
            ),
            (
                |o| o.ip = Some("10.0.0.9".into()),
                "ip=10.0.0.9,mount_timeout=10,osd_request_timeout=30",
            ),
            (|o| o.share = true, "share,mount_timeout=10,osd_request_timeout=30"),
            (|o| o.noshare = true, "noshare,mount_timeout=10,osd_request_timeout=30"),
            (|o| o.crc = true, "crc,mount_timeout=10,osd_request_timeout=30"),
            (|o| o.nocrc = true, "nocrc,mount_timeout=10,osd_request_timeout=30"),
            (
                |o| o.ceph_requires_signatures = true,
                "cephx_require_signatures,mount_timeout=10,osd_request_timeout=30",
            ),
            (
                |o| o.noceph_requires_signatures = true,
                "nocephx_require_signatures,mount_timeout=10,osd_request_timeout=30",
            ),
            (|o| o.tcp_nodelay = true, "tcp_nodelay,mount_timeout=10,osd_request_timeout=30"),
            (|o| o.notcp_nodelay = true, "notcp_nodelay,mount_timeout=10,osd_request_timeout=30"),
            (
                |o| o.cephx_sign_messages = true,
                "cephx_sign_messages,mount_timeout=10,osd_request_timeout=30",
            ),
            (
                |o| o.nocephx_sign_messages = true,
                "nocephx_sign_messages,mount_timeout=10,osd_request_timeout=30",
            ),
            (|o| o.mount_timeout = Some(30), "mount_timeout=30,osd_request_timeout=30"),
            (
                |o| o.osdkeepalive = Some(7),
                "mount_timeout=10,osd_request_timeout=30,osdkeepalive=7",
            ),
            (
                |o| o.osd_idle_ttl = Some(90),
                "mount_timeout=10,osd_request_timeout=30,osd_idle_ttl=90",
            ),
            (|o| o.rw = true, "mount_timeout=10,osd_request_timeout=30,rw"),
            (|o| o.ro = true, "mount_timeout=10,osd_request_timeout=30,ro"),
            (
                |o| o.queue_depth = Some(64),
                "mount_timeout=10,osd_request_timeout=30,queue_depth=64",
            ),
            (|o| o.lock_on_read = true, "mount_timeout=10,osd_request_timeout=30,lock_on_read"),
            (|o| o.exclusive = true, "mount_timeout=10,osd_request_timeout=30,exclusive"),
            (
                |o| o.lock_timeout = Some(15),
                "mount_timeout=10,osd_request_timeout=30,lock_timeout=15",
            ),
            (|o| o.notrim = true, "mount_timeout=10,osd_request_timeout=30,notrim"),
            (|o| o.abort_on_full = true, "mount_timeout=10,osd_request_timeout=30,abort_on_full"),
            (
                |o| o.alloc_size = Some(65536),
                "mount_timeout=10,osd_request_timeout=30,alloc_size=65536",
            ),
            (
                |o| o.namespace = Some("ns1".into()),
                "mount_timeout=10,osd_request_timeout=30,_pool_ns=ns1",
            ),
            // An unmap option: the map request is unchanged.
            (|o| o.force = true, "mount_timeout=10,osd_request_timeout=30"),
        ];
        for (set, expected) in cases {
            assert_eq!(options(set), expected);
        }
    }

    #[test]
    fn all_options_at_once_keep_their_order() {
        let options = RbdOptions {
            fsid: Some("f".into()),
            ip: Some("10.0.0.9".into()),
            share: true,
            crc: true,
            tcp_nodelay: true,
            cephx_sign_messages: true,
            ceph_requires_signatures: true,
            mount_timeout: Some(5),
            osdkeepalive: Some(6),
            osd_idle_ttl: Some(7),
            ro: true,
            queue_depth: Some(8),
            lock_on_read: true,
            exclusive: true,
            lock_timeout: Some(9),
            notrim: true,
            abort_on_full: true,
            alloc_size: Some(4096),
            namespace: Some("ns".into()),
            force: true,
            ..credentials()
        };
        assert_eq!(
            request(&spec(options)),
            format!(
                "10.0.0.1 name=admin,secret={KEY},fsid=f,ip=10.0.0.9,share,crc,\
                 cephx_require_signatures,tcp_nodelay,cephx_sign_messages,mount_timeout=5,osd_request_timeout=30,\
                 osdkeepalive=6,osd_idle_ttl=7,ro,queue_depth=8,lock_on_read,exclusive,\
                 lock_timeout=9,notrim,abort_on_full,alloc_size=4096,_pool_ns=ns rbd node -"
            )
        );
    }

    #[test]
    fn zero_numbers_read_as_not_given() {
        let options = RbdOptions {
            mount_timeout: Some(0),
            queue_depth: Some(0),
            alloc_size: Some(0),
            ..credentials()
        };
        assert_eq!(
            request(&spec(options)),
            format!("10.0.0.1 name=admin,secret={KEY},mount_timeout=10,osd_request_timeout=30 rbd node -")
        );
    }

    #[test]
    fn unmap_requests() {
        assert_eq!(unmap_request(0, false), "0");
        assert_eq!(unmap_request(12, false), "12");
        assert_eq!(unmap_request(3, true), "3 force");
    }

    #[test]
    fn errors_never_repeat_the_secret() {
        let spec = spec(credentials());
        for errno in [
            Errno::ETIMEDOUT,
            Errno::ECONNREFUSED,
            Errno::EACCES,
            Errno::EPERM,
            Errno::ENOENT,
            Errno::EINVAL,
            Errno::EIO,
        ] {
            let err = map_error(&spec, errno, Instant::now());
            let text = format!("{err} {err:?} {}", err.reason().unwrap_or_default());
            assert!(!text.contains(KEY), "{text}");
        }
    }

    #[test]
    fn errnos_read_as_unreachable_rejected_or_kernel() {
        let spec = spec(credentials());
        let status = |errno| match map_error(&spec, errno, Instant::now()) {
            Error::Unreachable { .. } => "unreachable",
            Error::Rejected { .. } => "rejected",
            Error::Kernel { .. } => "kernel",
            _ => "other",
        };
        assert_eq!(status(Errno::ETIMEDOUT), "unreachable");
        assert_eq!(status(Errno::ECONNREFUSED), "unreachable");
        assert_eq!(status(Errno::EACCES), "rejected");
        assert_eq!(status(Errno::EPERM), "rejected");
        assert_eq!(status(Errno::ENOENT), "rejected");
        assert_eq!(status(Errno::EIO), "kernel");
        let text = map_error(&spec, Errno::ETIMEDOUT, Instant::now()).to_string();
        assert!(text.contains("mount_timeout=10s"), "{text}");
        assert!(text.contains("rbd/node"), "{text}");
    }

    #[test]
    fn separators_in_names_and_non_base64_secrets_are_refused() {
        let mut bad_pool = spec(credentials());
        bad_pool.pool = "rbd pool".into();
        assert!(check("attach.rbd", &bad_pool)
            .unwrap_err()
            .field
            .ends_with("pool"));
        let mut bad_ns = spec(credentials());
        bad_ns.options.as_mut().unwrap().namespace = Some("a,b".into());
        assert!(check("attach.rbd", &bad_ns).is_err());
        let bad_secret = spec(RbdOptions {
            secret: Some(Secret::new("abc,mount_timeout=1")),
            ..credentials()
        });
        let err = check("attach.rbd", &bad_secret).unwrap_err();
        assert!(err.field.ends_with("secret"));
        assert!(!err.reason.contains("abc"), "{err}");
        let mut huge = spec(credentials());
        huge.options.as_mut().unwrap().lock_timeout = Some(1 << 40);
        assert!(check("attach.rbd", &huge).is_err());
        assert_eq!(check("attach.rbd", &spec(credentials())), Ok(()));
    }

    #[test]
    fn maps_of_the_same_image_take_turns_others_do_not_wait() {
        let one = wanted_image(&spec(credentials()));
        let mut other_spec = spec(credentials());
        other_spec.image = "other".into();
        let other = wanted_image(&other_spec);
        let turns = Arc::new(ImageTurns::default());
        let held = turns.take(&one);
        // Another image: no wait.
        drop(turns.take(&other));
        let waiter = thread::spawn(move || {
            let started = Instant::now();
            drop(turns.take(&one));
            started.elapsed()
        });
        thread::sleep(Duration::from_millis(100));
        drop(held);
        assert!(waiter.join().unwrap() >= Duration::from_millis(90));
    }
}
