//! `iscsi`: a LUN of an iSCSI target, logged in through open-iscsi (`iscsiadm` and the node's
//! `iscsid`), its SCSI disk found in sysfs.
//!
//! Why open-iscsi and not a login in this process: the kernel's `iscsi_tcp` leaves connection
//! recovery (logging in again after a network blip, replacing a session) to a userspace daemon.
//! A session this process logged in itself would have to reimplement iscsid to survive one
//! dropped connection, and nodes that use iSCSI run iscsid already.
//!
//! Each attachment logs in through its own iface (`imageapi-<instance>-<id>`, whose
//! `iface.initiatorname` is the request's initiator), so that it has its own node record and
//! its own session: two attachments of LUNs of one target never share (or log out) a session,
//! and a restart finds each one's session by its iface.

mod iscsiadm;
mod sysfs;

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use crate::driver::{Dep, DepViews, Driver, Host, Kinds, Parsed};
use crate::error::{Error, Origin};
use crate::model::spec::{check_hostname, check_iqn, check_non_negative, field, invalid, Invalid};
use crate::model::wire::{Attach, AttachIscsi, AttachKind, Id, IscsiChap};
use crate::registry::graph::ObjectKind;
use crate::sys::errno_of_io;
use crate::sys::SysError;

use iscsiadm::{code, Call, Failure};
use sysfs::{ScsiAddress, Sysfs};

const ISCSI: Origin = Origin::new(ObjectKind::Attach, "iscsi");

/// How long iscsid waits for one login to a portal (`node.conn[0].timeo.login_timeout`); it
/// does not try again (`node.session.initial_login_retry_max = 0`), so an unreachable target
/// fails a login in about this time.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long iscsid waits for the target's answer to a logout
/// (`node.conn[0].timeo.logout_timeout`); a dead target's session goes at once.
const LOGOUT_TIMEOUT: Duration = Duration::from_secs(5);
/// Most a SendTargets discovery may take (iscsiadm retries a refused connection several times).
const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(15);
/// Most an iscsiadm command that only edits records may take.
const RECORD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the disk driver may take to give the scanned LUN its block device, and the kernel's
/// devtmpfs its /dev node.
const DEVICE_TIMEOUT: Duration = Duration::from_secs(10);
/// Where iscsid listens for iscsiadm (open-iscsi's `ISCSIADM_NAMESPACE`, an abstract socket).
const ISCSID_SOCKET: &[u8] = b"ISCSIADM_ABSTRACT_NAMESPACE";

pub struct Iscsi;

/// The checked definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IscsiSpec {
    pub initiator: String,
    pub target: String,
    pub host: String,
    pub port: u16,
    pub lun: u64,
    pub max_commands: u32,
    pub queue_depth: u32,
    pub scheduler: String,
    /// The store keeps its secret as [`crate::model::wire::Secret::REDACTED`]: a session adopted after a restart
    /// needs no new login.
    pub chap: Option<IscsiChap>,
}

/// A logged-in session and the LUN's disk, as sysfs shows them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IscsiFacts {
    /// The iface the session was logged in through (this attachment's own).
    pub iface: String,
    /// The portal logged in to: `address:port,tpgt`.
    pub portal: String,
    /// `N` of `/sys/class/iscsi_session/sessionN`.
    pub session: u32,
    /// The LUN's SCSI address, `host:channel:target:lun`.
    pub scsi_address: String,
    /// The LUN's disk, `sdX`.
    pub disk: String,
    pub device_file: PathBuf,
    /// Whether the service made `device_file` itself (no devtmpfs made it): removed at release.
    pub made_device_file: bool,
}

/// A session this service logged in, while its attachment holds it.
#[derive(Debug)]
pub struct Session {
    target: String,
    facts: IscsiFacts,
}

impl Driver for Iscsi {
    type Object = Attach;
    type Spec = IscsiSpec;
    type Facts = IscsiFacts;
    type Resource = Session;
    const KIND: AttachKind = AttachKind::Iscsi;
    // Its sessions go through ifaces named after the service's instance (see `sweep`).
    const FOUND_WITHOUT_RECORD: bool = true;

    fn parse(
        &self,
        _: &Kinds,
        at: &str,
        wire: &Attach,
    ) -> Option<Result<Parsed<IscsiSpec>, Invalid>> {
        let sub = wire.iscsi.as_ref()?;
        Some(check(&field(at, "iscsi"), sub).map(|spec| Parsed::new(spec, vec![])))
    }

    fn create(
        &self,
        host: &Host,
        id: Id,
        spec: &IscsiSpec,
        _: &[Dep],
    ) -> Result<(Session, IscsiFacts), Error> {
        ensure_support()?;
        let iface = iface_name(&host.instance, id);
        let mut login = Login::new(spec, iface)?;
        let facts = match login.log_in(spec) {
            Ok(facts) => facts,
            Err(err) => {
                login.roll_back();
                return Err(err);
            }
        };
        info!(
            id,
            target = %spec.target,
            portal = %facts.portal,
            session = facts.session,
            device = %facts.device_file.display(),
            "iscsi session logged in"
        );
        let session = Session {
            target: spec.target.clone(),
            facts: facts.clone(),
        };
        Ok((session, facts))
    }

    fn adopt(&self, _: &Host, id: Id, spec: &IscsiSpec, facts: &IscsiFacts) -> Option<Session> {
        let sysfs = Sysfs::new("/sys");
        let ours = sysfs.session_attr(facts.session, "ifacename").as_deref()
            == Some(facts.iface.as_str())
            && sysfs.session_attr(facts.session, "targetname").as_deref()
                == Some(spec.target.as_str());
        let address: Option<ScsiAddress> = facts.scsi_address.parse().ok();
        let disk = address.and_then(|address| sysfs.disk_of(facts.session, address));
        let device_there = std::fs::metadata(&facts.device_file)
            .is_ok_and(|metadata| metadata.file_type().is_block_device());
        if !ours || disk.as_deref() != Some(facts.disk.as_str()) || !device_there {
            warn!(id, session = facts.session, disk = %facts.disk, "iscsi session is gone");
            return None;
        }
        Some(Session {
            target: spec.target.clone(),
            facts: facts.clone(),
        })
    }

    fn release(&self, _: &Host, session: Session, force: bool) -> Result<(), Error> {
        debug!(
            session = session.facts.session,
            iface = %session.facts.iface,
            force,
            "logging out of iscsi session"
        );
        let node = Node {
            target: &session.target,
            portal: &session.facts.portal,
            iface: &session.facts.iface,
        };
        node.log_out()?;
        if session.facts.made_device_file {
            remove_device_file(&session.facts.device_file);
        }
        node.forget()
    }

    fn provides<'f>(&self, facts: &'f IscsiFacts) -> &'f Path {
        &facts.device_file
    }

    fn describe(
        &self,
        spec: &IscsiSpec,
        _: Option<&IscsiFacts>,
        _: &dyn DepViews,
        wire: &mut Attach,
    ) {
        wire.iscsi = Some(AttachIscsi {
            initiator: spec.initiator.clone(),
            target: spec.target.clone(),
            host: spec.host.clone(),
            lun: spec.lun as i64,
            port: i64::from(spec.port),
            max_comands: i64::from(spec.max_commands),
            queue_depth: i64::from(spec.queue_depth),
            scheduler: spec.scheduler.clone(),
            chap: spec.chap.clone(),
        });
    }

    /// Sessions and ifaces of this service that no adopted attachment holds: made by a create
    /// whose result the previous run did not record. Logged out and deleted.
    fn sweep(&self, host: &Host, held: &[&IscsiFacts]) {
        // Without the initiator loaded there is no session to log out; leftover ifaces wait
        // for a start that has it.
        if !Path::new("/sys/module/iscsi_tcp").exists() {
            return;
        }
        let prefix = iface_prefix(&host.instance);
        let held = |iface: &str| held.iter().any(|facts| facts.iface == iface);
        let sysfs = Sysfs::new("/sys");
        for session in sysfs.sessions() {
            let Some(iface) = sysfs.session_attr(session, "ifacename") else {
                continue;
            };
            if !iface.starts_with(&prefix) || held(&iface) {
                continue;
            }
            warn!(
                session,
                %iface,
                "iscsi session of this service held by no object: logging out"
            );
            let logout = Call::new(["-m", "session", "-r", &session.to_string(), "-u"]);
            if let Err(err) = logout.run(logout_bound()) {
                warn!(session, error = %err, "cannot log out");
            }
        }
        let Ok(listing) = Call::new(["-m", "iface"]).run(RECORD_TIMEOUT) else {
            return;
        };
        for iface in iface_names(&listing) {
            if iface.starts_with(&prefix) && !held(iface) {
                warn!(%iface, "iscsi iface of this service held by no object: deleting it");
                if let Err(err) = delete_iface(iface) {
                    warn!(%iface, error = %err, "cannot delete the iface");
                }
            }
        }
    }
}

/// Checks the request and turns it into the driver's definition.
fn check(sub: &str, iscsi: &AttachIscsi) -> Result<IscsiSpec, Invalid> {
    check_iqn(&field(sub, "initiator"), &iscsi.initiator)?;
    check_iqn(&field(sub, "target"), &iscsi.target)?;
    check_hostname(&field(sub, "host"), &iscsi.host)?;
    let port = u16::try_from(iscsi.port)
        .ok()
        .filter(|port| *port != 0)
        .ok_or_else(|| invalid(&field(sub, "port"), "must be a port number (1-65535)"))?;
    check_non_negative(&field(sub, "lun"), iscsi.lun)?;
    let count = |name: &str, value: i64| -> Result<u32, Invalid> {
        check_non_negative(&field(sub, name), value)?;
        u32::try_from(value)
            .ok()
            .filter(|value| i32::try_from(*value).is_ok())
            .ok_or_else(|| invalid(&field(sub, name), "must be at most 2147483647"))
    };
    let max_commands = count("max_comands", iscsi.max_comands)?;
    let queue_depth = count("queue_depth", iscsi.queue_depth)?;
    let printable = |value: &str| !value.chars().any(char::is_control);
    if iscsi.scheduler.len() > 64 || !printable(&iscsi.scheduler) || iscsi.scheduler.contains(' ') {
        return Err(invalid(
            &field(sub, "scheduler"),
            "is not an I/O scheduler name",
        ));
    }
    if let Some(chap) = &iscsi.chap {
        let at = field(sub, "chap");
        if chap.username.is_empty() || chap.username.len() > 255 || !printable(&chap.username) {
            return Err(invalid(
                &field(&at, "username"),
                "must be 1 to 255 printable characters",
            ));
        }
        let secret = chap.secret.expose();
        if secret.is_empty() || secret.len() > 255 || !printable(secret) {
            return Err(invalid(
                &field(&at, "secret"),
                "must be 1 to 255 printable characters (its value is not shown)",
            ));
        }
    }
    Ok(IscsiSpec {
        initiator: iscsi.initiator.clone(),
        target: iscsi.target.clone(),
        host: iscsi.host.clone(),
        port,
        lun: iscsi.lun as u64,
        max_commands,
        queue_depth,
        scheduler: iscsi.scheduler.clone(),
        chap: iscsi.chap.clone(),
    })
}

/// The kernel's iSCSI initiator, iscsiadm and a running iscsid, or an error naming what lacks.
fn ensure_support() -> Result<(), Error> {
    crate::sys::kmod::ensure("iscsi_tcp", Path::new("/sys/module/iscsi_tcp"))
        .map_err(|reason| Error::unsupported(ISCSI, reason))?;
    if let Err(Failure::NotInstalled(err)) = Call::new(["--version"]).run(RECORD_TIMEOUT) {
        return Err(Error::unsupported(
            ISCSI,
            format!("open-iscsi's iscsiadm cannot run on this node: {err}"),
        ));
    }
    let iscsid = std::os::unix::net::SocketAddr::from_abstract_name(ISCSID_SOCKET)
        .and_then(|address| UnixStream::connect_addr(&address));
    if let Err(err) = iscsid {
        return Err(Error::unsupported(
            ISCSI,
            format!("open-iscsi's iscsid is not running on this node ({err})"),
        ));
    }
    Ok(())
}

/// What every iface of service `instance` is named from.
fn iface_prefix(instance: &str) -> String {
    // An iface name is a file name of at most 64 bytes: keep the instance's letters and digits.
    let instance: String = instance
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(32)
        .collect();
    format!("imageapi-{instance}-")
}

/// The iface of attachment `id`.
fn iface_name(instance: &str, id: Id) -> String {
    format!("{}{id}", iface_prefix(instance))
}

/// The iface names of `iscsiadm -m iface`: `name transport,hwaddress,ip,netdev,initiator`.
fn iface_names(listing: &str) -> Vec<&str> {
    listing
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .collect()
}

/// The portal group tag of `target` in a SendTargets answer (`address:port,tpgt target`), at
/// `portal` if the target lists it there, else at its first portal.
fn portal_group_of(discovered: &str, target: &str, portal: &str) -> Option<u32> {
    let offers: Vec<(&str, u32)> = discovered
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let (address, tag) = words.next()?.rsplit_once(',')?;
            (words.next()? == target).then_some((address, tag.parse().ok()?))
        })
        .collect();
    offers
        .iter()
        .find(|(address, _)| *address == portal)
        .or_else(|| offers.first())
        .map(|(_, tag)| *tag)
}

/// The targets of a SendTargets answer, for an error.
fn discovered_targets(discovered: &str) -> Vec<&str> {
    let mut targets: Vec<&str> = discovered
        .lines()
        .filter_map(|line| line.split_whitespace().nth(1))
        .collect();
    targets.sort_unstable();
    targets.dedup();
    targets
}

/// `address:port` as iscsiadm writes a portal.
fn portal_address(address: SocketAddr) -> String {
    match address.ip() {
        IpAddr::V4(ip) => format!("{ip}:{}", address.port()),
        IpAddr::V6(ip) => format!("[{ip}]:{}", address.port()),
    }
}

/// The node's address for `host` (the kernel connects to an address): IPv4 first.
fn resolve(host: &str, port: u16) -> Result<SocketAddr, Error> {
    let addresses: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|err| Error::unreachable(ISCSI, format!("cannot resolve {host}: {err}")))?
        .collect();
    addresses
        .iter()
        .find(|address| address.is_ipv4())
        .or_else(|| addresses.first())
        .copied()
        .ok_or_else(|| Error::unreachable(ISCSI, format!("{host} has no address")))
}

/// The node record settings of a login: the request's queue sizes and bounded timeouts.
fn node_settings(spec: &IscsiSpec) -> Vec<(&'static str, String)> {
    vec![
        // Logged in by this service only, never by iscsid at boot.
        ("node.startup", "manual".into()),
        ("node.conn[0].startup", "manual".into()),
        // Only the requested LUN gets a device (see `Login::find_disk`).
        ("node.session.scan", "manual".into()),
        ("node.session.cmds_max", spec.max_commands.to_string()),
        ("node.session.queue_depth", spec.queue_depth.to_string()),
        (
            "node.conn[0].timeo.login_timeout",
            LOGIN_TIMEOUT.as_secs().to_string(),
        ),
        ("node.session.initial_login_retry_max", "0".into()),
        (
            "node.conn[0].timeo.logout_timeout",
            LOGOUT_TIMEOUT.as_secs().to_string(),
        ),
    ]
}

/// The CHAP settings; the secret is the last value and never shown.
fn chap_call(node: &Node, chap: &IscsiChap) -> Call {
    node.call(["-o", "update"])
        .settings([
            ("node.session.auth.authmethod", "CHAP".to_string()),
            ("node.session.auth.username", chap.username.clone()),
        ])
        .secret_setting("node.session.auth.password", &chap.secret)
}

/// How long iscsiadm may take for a login before it is killed: iscsid's own bound and room for
/// a slow node.
fn login_bound() -> Duration {
    LOGIN_TIMEOUT * 2 + Duration::from_secs(5)
}

fn logout_bound() -> Duration {
    LOGOUT_TIMEOUT * 2 + Duration::from_secs(5)
}

/// One node record: a target at a portal through an iface.
struct Node<'a> {
    target: &'a str,
    portal: &'a str,
    iface: &'a str,
}

impl Node<'_> {
    fn call<'s>(&self, op: impl IntoIterator<Item = &'s str>) -> Call {
        let node = [
            "-m",
            "node",
            "-T",
            self.target,
            "-p",
            self.portal,
            "-I",
            self.iface,
        ];
        Call::new(
            node.into_iter()
                .map(str::to_string)
                .chain(op.into_iter().map(str::to_string)),
        )
    }

    /// Logs out its session, if it has one.
    fn log_out(&self) -> Result<(), Error> {
        match self.call(["-u"]).run(logout_bound()) {
            Ok(_) => Ok(()),
            Err(failure) if failure.code() == Some(code::NO_OBJECTS) => Ok(()),
            Err(failure @ Failure::TimedOut { .. }) => Err(Error::unreachable(
                ISCSI,
                format!("logout of {} at {}: {failure}", self.target, self.portal),
            )),
            Err(failure) => Err(Error::rejected(
                ISCSI,
                format!("logout of {} at {}: {failure}", self.target, self.portal),
            )),
        }
    }

    /// Deletes the record and the iface.
    fn forget(&self) -> Result<(), Error> {
        match self.call(["-o", "delete"]).run(RECORD_TIMEOUT) {
            Ok(_) => {}
            Err(failure) if failure.code() == Some(code::NO_OBJECTS) => {}
            Err(failure) => {
                return Err(Error::rejected(
                    ISCSI,
                    format!("cannot delete the node record: {failure}"),
                ))
            }
        }
        delete_iface(self.iface)
            .map_err(|failure| Error::rejected(ISCSI, format!("cannot delete iface: {failure}")))
    }
}

fn delete_iface(iface: &str) -> Result<(), Failure> {
    match Call::new(["-m", "iface", "-I", iface, "-o", "delete"]).run(RECORD_TIMEOUT) {
        Ok(_) => Ok(()),
        Err(failure) if failure.code() == Some(code::NO_OBJECTS) => Ok(()),
        Err(failure) => Err(failure),
    }
}

/// A login being made: the iface and portal of one attachment.
struct Login {
    iface: String,
    /// `address:port`.
    address: String,
    /// `address:port,tpgt`, once discovery told the portal group.
    portal: Option<String>,
    target: String,
    made_device_file: Option<PathBuf>,
}

impl Login {
    fn new(spec: &IscsiSpec, iface: String) -> Result<Login, Error> {
        let address = portal_address(resolve(&spec.host, spec.port)?);
        Ok(Login {
            iface,
            address,
            portal: None,
            target: spec.target.clone(),
            made_device_file: None,
        })
    }

    fn node(&self) -> Option<Node<'_>> {
        Some(Node {
            target: &self.target,
            portal: self.portal.as_deref()?,
            iface: &self.iface,
        })
    }

    fn record(call: Call, what: &str) -> Result<String, Error> {
        call.run(RECORD_TIMEOUT)
            .map_err(|failure| Error::rejected(ISCSI, format!("{what}: {failure}")))
    }

    /// Makes the iface, discovers the portal group, makes and sets the node record, logs in and
    /// finds the LUN's disk. On failure, [`Login::roll_back`] undoes what it made.
    fn log_in(&mut self, spec: &IscsiSpec) -> Result<IscsiFacts, Error> {
        let iface = self.iface.clone();
        Self::record(
            Call::new(["-m", "iface", "-I", &iface, "-o", "new"]),
            "cannot make the iface",
        )?;
        Self::record(
            Call::new(["-m", "iface", "-I", &iface, "-o", "update"]).settings([
                ("iface.initiatorname", spec.initiator.clone()),
                ("iface.transport_name", "tcp".to_string()),
            ]),
            "cannot set the iface",
        )?;
        let tag = self.discover()?;
        self.portal = Some(format!("{},{tag}", self.address));
        let node = self.node().expect("the portal is known");
        Self::record(node.call(["-o", "new"]), "cannot make the node record")?;
        Self::record(
            node.call(["-o", "update"]).settings(node_settings(spec)),
            "cannot set the node record",
        )?;
        if let Some(chap) = &spec.chap {
            Self::record(chap_call(&node, chap), "cannot set the CHAP credentials")?;
        }
        node.call(["-l"])
            .run(login_bound())
            .map_err(|failure| login_error(&self.target, &self.address, failure))?;
        let portal = self.portal.clone().expect("the portal is known");
        let (session, address, disk) = self.find_disk(spec.lun)?;
        let device_file = self.device_file(&disk)?;
        set_scheduler(&disk, &spec.scheduler)?;
        Ok(IscsiFacts {
            iface,
            portal,
            session,
            scsi_address: address.to_string(),
            disk,
            made_device_file: self.made_device_file.is_some(),
            device_file,
        })
    }

    /// The portal group tag of the target at this portal, by a SendTargets discovery that
    /// writes no record (`-o nonpersistent`).
    fn discover(&self) -> Result<u32, Error> {
        let discovered = Call::new([
            "-m",
            "discovery",
            "-t",
            "sendtargets",
            "-p",
            &self.address,
            "-I",
            &self.iface,
            "-o",
            "nonpersistent",
        ])
        .run(DISCOVERY_TIMEOUT)
        .map_err(|failure| login_error(&self.target, &self.address, failure))?;
        portal_group_of(&discovered, &self.target, &self.address).ok_or_else(|| {
            Error::rejected(
                ISCSI,
                format!(
                    "the portal {} offers no target {} (it offers: {})",
                    self.address,
                    self.target,
                    discovered_targets(&discovered).join(", ")
                ),
            )
        })
    }

    /// The session of this login, the LUN's SCSI address and its disk. The session does not
    /// scan its target (`node.session.scan = manual`): the LUN is probed here, synchronously,
    /// so a missing LUN fails at once and the target's other LUNs get no device.
    fn find_disk(&self, lun: u64) -> Result<(u32, ScsiAddress, String), Error> {
        let sysfs = Sysfs::new("/sys");
        let session = *sysfs
            .sessions_of_iface(&self.iface)
            .first()
            .ok_or_else(|| {
                Error::rejected(ISCSI, "logged in, but sysfs shows no session of the iface")
            })?;
        let host = sysfs.host_of(session).ok_or_else(|| {
            Error::rejected(
                ISCSI,
                format!("sysfs shows no SCSI host of session {session}"),
            )
        })?;
        sysfs.scan_lun(host, lun).map_err(|err| Error::Kernel {
            origin: ISCSI,
            source: SysError {
                op: format!("scan LUN {lun} of SCSI host {host}"),
                errno: errno_of_io(&err),
            },
        })?;
        let devices = sysfs.devices_of(session);
        let Some(address) = devices.iter().find(|address| address.lun == lun).copied() else {
            let found: Vec<String> = devices.iter().map(|a| a.lun.to_string()).collect();
            return Err(Error::rejected(
                ISCSI,
                format!(
                    "target {} has no LUN {lun} (LUNs found: {})",
                    self.target,
                    if found.is_empty() {
                        "none".to_string()
                    } else {
                        found.join(", ")
                    }
                ),
            ));
        };
        let deadline = Instant::now() + DEVICE_TIMEOUT;
        loop {
            if let Some(disk) = sysfs.disk_of(session, address) {
                return Ok((session, address, disk));
            }
            if Instant::now() > deadline {
                return Err(Error::rejected(
                    ISCSI,
                    format!(
                        "LUN {lun} ({address}) got no block device within {} s (not a disk?)",
                        DEVICE_TIMEOUT.as_secs()
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `/dev/<disk>`: devtmpfs makes it; without devtmpfs (or if it is late), made here.
    fn device_file(&mut self, disk: &str) -> Result<PathBuf, Error> {
        let path = Path::new("/dev").join(disk);
        let sysfs = Sysfs::new("/sys");
        let (major, minor) = sysfs.dev_numbers(disk).ok_or_else(|| {
            Error::rejected(ISCSI, format!("sysfs shows no device numbers of {disk}"))
        })?;
        let wanted = nix::sys::stat::makedev(major, minor);
        let is_ours = |path: &Path| {
            nix::sys::stat::stat(path).is_ok_and(|stat| {
                stat.st_mode & libc::S_IFMT == libc::S_IFBLK && stat.st_rdev == wanted
            })
        };
        let deadline = Instant::now() + Duration::from_secs(1);
        while Instant::now() < deadline {
            if is_ours(&path) {
                return Ok(path);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let made = nix::sys::stat::mknod(
            &path,
            nix::sys::stat::SFlag::S_IFBLK,
            nix::sys::stat::Mode::from_bits_truncate(0o600),
            wanted,
        );
        match made {
            Ok(()) => {
                self.made_device_file = Some(path.clone());
                Ok(path)
            }
            Err(nix::errno::Errno::EEXIST) if is_ours(&path) => Ok(path),
            Err(errno) => Err(Error::Kernel {
                origin: ISCSI,
                source: SysError {
                    op: format!("mknod {} ({major}:{minor})", path.display()),
                    errno,
                },
            }),
        }
    }

    /// Undoes a failed [`Login::log_in`]: logs out (also a login iscsid may still be making),
    /// deletes the record and the iface, removes a device file it made.
    fn roll_back(&self) {
        if let Some(path) = &self.made_device_file {
            remove_device_file(path);
        }
        let undone = match self.node() {
            Some(node) => node.log_out().and_then(|()| node.forget()),
            None => delete_iface(&self.iface)
                .map_err(|failure| Error::rejected(ISCSI, failure.to_string())),
        };
        if let Err(err) = undone {
            warn!(iface = %self.iface, error = %err, "cannot undo a failed iscsi login");
        }
    }
}

/// The error of a failed login or discovery: unreachable, refused, or no iscsid.
fn login_error(target: &str, portal: &str, failure: Failure) -> Error {
    let reason = format!("login to {target} at {portal}: {failure}");
    match &failure {
        Failure::NotInstalled(_) => Error::unsupported(ISCSI, reason),
        Failure::TimedOut { .. } => Error::unreachable(ISCSI, reason),
        Failure::Exit {
            code: Some(code), ..
        } => match *code {
            code::TRANSPORT | code::TRANSPORT_TIMEOUT | code::PDU_TIMEOUT => {
                Error::unreachable(ISCSI, reason)
            }
            code::ISCSID_COMM | code::ISCSID_NOT_CONNECTED | code::TRANSPORT_NOT_FOUND => {
                Error::unsupported(ISCSI, reason)
            }
            code::AUTH_FAILED => Error::rejected(
                ISCSI,
                format!("the target refused the credentials: {reason}"),
            ),
            code::FATAL_LOGIN | code::LOGIN => {
                Error::rejected(ISCSI, format!("the target refused the login: {reason}"))
            }
            _ => Error::rejected(ISCSI, reason),
        },
        Failure::Exit { code: None, .. } => Error::rejected(ISCSI, reason),
    }
}

/// Sets the disk's scheduler and checks that the kernel took it: a scheduler it lacks is
/// refused with the ones it offers.
fn set_scheduler(disk: &str, scheduler: &str) -> Result<(), Error> {
    let sysfs = Sysfs::new("/sys");
    let written = sysfs.set_scheduler(disk, scheduler);
    let now = sysfs.schedulers(disk);
    if now.as_ref().and_then(|s| s.active.as_deref()) == Some(scheduler) {
        return Ok(());
    }
    let offered = now.map(|s| s.offered.join(", ")).unwrap_or_default();
    let why = match written {
        Err(err) => format!(": {}", errno_of_io(&err)),
        Ok(()) => String::new(),
    };
    Err(Error::rejected(
        ISCSI,
        format!(
            "the kernel has no I/O scheduler {scheduler:?} for {disk}{why} (it offers: {offered})"
        ),
    ))
}

fn remove_device_file(path: &Path) {
    if let Err(err) = std::fs::remove_file(path) {
        if err.kind() != std::io::ErrorKind::NotFound {
            warn!(path = %path.display(), error = %err, "cannot remove the device file");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::wire::Secret;

    fn spec() -> IscsiSpec {
        IscsiSpec {
            initiator: "iqn.2026-01.test:node1".into(),
            target: "iqn.2026-01.test:images".into(),
            host: "127.0.0.1".into(),
            port: 3260,
            lun: 1,
            max_commands: 64,
            queue_depth: 8,
            scheduler: "mq-deadline".into(),
            chap: None,
        }
    }

    fn wire() -> AttachIscsi {
        AttachIscsi {
            initiator: "iqn.2026-01.test:node1".into(),
            target: "iqn.2026-01.test:images".into(),
            host: "127.0.0.1".into(),
            lun: 1,
            port: 3260,
            max_comands: 64,
            queue_depth: 8,
            scheduler: "mq-deadline".into(),
            chap: None,
        }
    }

    #[test]
    fn the_request_maps_to_the_spec() {
        assert_eq!(check("iscsi", &wire()), Ok(spec()));
        let mut big = wire();
        big.max_comands = i64::from(u32::MAX);
        assert_eq!(check("iscsi", &big).unwrap_err().field, "iscsi.max_comands");
        let mut spaced = wire();
        spaced.scheduler = "mq deadline".into();
        assert_eq!(
            check("iscsi", &spaced).unwrap_err().field,
            "iscsi.scheduler"
        );
    }

    #[test]
    fn a_chap_secret_is_checked_without_being_shown() {
        let mut with_chap = wire();
        with_chap.chap = Some(IscsiChap {
            username: "alice".into(),
            secret: Secret::new("bad\nsecret"),
        });
        let err = check("iscsi", &with_chap).unwrap_err();
        assert_eq!(err.field, "iscsi.chap.secret");
        assert!(
            !format!("{err:?} {}", err.reason).contains("bad"),
            "{err:?}"
        );
    }

    #[test]
    fn the_node_record_gets_the_queue_sizes_and_bounded_timeouts() {
        let settings = node_settings(&spec());
        let get = |name: &str| {
            settings
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("node.session.cmds_max"), Some("64"));
        assert_eq!(get("node.session.queue_depth"), Some("8"));
        assert_eq!(get("node.session.scan"), Some("manual"));
        assert_eq!(get("node.startup"), Some("manual"));
        assert_eq!(get("node.conn[0].timeo.login_timeout"), Some("10"));
        assert_eq!(get("node.session.initial_login_retry_max"), Some("0"));
        assert_eq!(get("node.conn[0].timeo.logout_timeout"), Some("5"));
    }

    #[test]
    fn node_commands_name_target_portal_and_iface() {
        let node = Node {
            target: "iqn.2026-01.test:images",
            portal: "127.0.0.1:3260,1",
            iface: "imageapi-abc-7",
        };
        assert_eq!(
            node.call(["-l"]).args(),
            [
                "-m",
                "node",
                "-T",
                "iqn.2026-01.test:images",
                "-p",
                "127.0.0.1:3260,1",
                "-I",
                "imageapi-abc-7",
                "-l"
            ]
        );
        let chap = IscsiChap {
            username: "alice".into(),
            secret: Secret::new("s3cretpassw0rd"),
        };
        let call = chap_call(&node, &chap);
        assert_eq!(
            &call.args()[8..],
            [
                "-o",
                "update",
                "-n",
                "node.session.auth.authmethod",
                "-v",
                "CHAP",
                "-n",
                "node.session.auth.username",
                "-v",
                "alice",
                "-n",
                "node.session.auth.password",
                "-v",
                "s3cretpassw0rd"
            ]
        );
        assert!(!call.to_string().contains("s3cretpassw0rd"));
    }

    #[test]
    fn ifaces_are_named_from_the_instance_and_the_id() {
        let instance = "0123456789abcdef0123456789abcdef";
        let name = iface_name(instance, i64::MAX);
        assert_eq!(
            name,
            format!("imageapi-{instance}-{}", i64::MAX),
            "the longest name"
        );
        assert!(name.len() < 64);
        assert_eq!(iface_name("a/b c", 3), "imageapi-abc-3");
        assert!(iface_name(instance, 12).starts_with(&iface_prefix(instance)));
        assert_eq!(
            iface_names(
                "imageapi-x-1 tcp,<empty>,<empty>,<empty>,iqn.2026-01.test:init1\n\
                 default tcp,<empty>,<empty>,<empty>,<empty>\n"
            ),
            ["imageapi-x-1", "default"]
        );
    }

    #[test]
    fn discovery_answers_give_the_portal_group() {
        let discovered = "10.0.0.9:3260,2 iqn.2026-01.test:images\n\
                          127.0.0.1:3260,1 iqn.2026-01.test:images\n\
                          127.0.0.1:3260,1 iqn.2026-01.test:other\n\
                          [::1]:3260,5 iqn.2026-01.test:v6\n";
        let target = "iqn.2026-01.test:images";
        assert_eq!(
            portal_group_of(discovered, target, "127.0.0.1:3260"),
            Some(1)
        );
        assert_eq!(
            portal_group_of(discovered, target, "10.0.0.1:3260"),
            Some(2)
        );
        assert_eq!(
            portal_group_of(discovered, "iqn.2026-01.test:v6", "[::1]:3260"),
            Some(5)
        );
        assert_eq!(
            portal_group_of(discovered, "iqn.2026-01.test:nope", "x"),
            None
        );
        assert_eq!(
            discovered_targets(discovered),
            [
                "iqn.2026-01.test:images",
                "iqn.2026-01.test:other",
                "iqn.2026-01.test:v6"
            ]
        );
    }

    #[test]
    fn portals_are_written_as_iscsiadm_reads_them() {
        assert_eq!(
            portal_address("127.0.0.1:3260".parse().unwrap()),
            "127.0.0.1:3260"
        );
        assert_eq!(portal_address("[::1]:3261".parse().unwrap()), "[::1]:3261");
    }

    #[test]
    fn login_failures_map_to_statuses() {
        let exit = |code| Failure::Exit {
            code: Some(code),
            message: "m".into(),
        };
        let status = |failure| match login_error("t", "p", failure) {
            Error::Unreachable { .. } => "unreachable",
            Error::Rejected { .. } => "rejected",
            Error::Unsupported { .. } => "unsupported",
            _ => "other",
        };
        assert_eq!(status(exit(code::TRANSPORT_TIMEOUT)), "unreachable");
        assert_eq!(status(exit(code::PDU_TIMEOUT)), "unreachable");
        assert_eq!(status(exit(code::FATAL_LOGIN)), "rejected");
        assert_eq!(status(exit(code::AUTH_FAILED)), "rejected");
        assert_eq!(status(exit(code::LOGIN)), "rejected");
        assert_eq!(status(exit(code::ISCSID_NOT_CONNECTED)), "unsupported");
        assert_eq!(
            status(Failure::TimedOut {
                after: Duration::from_secs(25),
                message: String::new()
            }),
            "unreachable"
        );
    }
}
