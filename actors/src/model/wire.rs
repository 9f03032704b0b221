//! The JSON objects of the ImageAPI v0.2.0 wire contract, as clients send and read them.
//!
//! Requests and responses share these types, as in the reference's go-swagger models. Everything a
//! client may leave out is optional here; [`super::spec`] turns a request into a checked definition.
//! Unknown fields are ignored, as the reference does, so newer clients keep working.

use serde::{Deserialize, Serialize};

/// Object id: one counter for every kind, starting at 1, never reused.
pub type Id = i64;

fn is_false(value: &bool) -> bool {
    !*value
}

/// Where a relative `path` starts: the host's `/` or another mount's mountpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Base {
    Root,
    Mount,
}

/// A block device: local, loopback, rbd or iscsi.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Attach {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Id>,
    /// Read-only: how many holders keep the object alive.
    #[serde(default)]
    pub refs: i64,
    /// Read-only: the device node, e.g. `/dev/loop3`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<AttachKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<AttachLocal>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loopback: Option<AttachLoopback>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rbd: Option<AttachRbd>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iscsi: Option<AttachIscsi>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachKind {
    Iscsi,
    Local,
    Loopback,
    Rbd,
}

impl AttachKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AttachKind::Iscsi => "iscsi",
            AttachKind::Local => "local",
            AttachKind::Loopback => "loopback",
            AttachKind::Rbd => "rbd",
        }
    }
}

/// An existing block device file on the host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttachLocal {
    pub path: String,
}

/// A regular file bound to a fresh loop device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttachLoopback {
    pub path: String,
    pub base: Base,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount: Option<Box<Mount>>,
    #[serde(default, rename = "readPartitions")]
    pub read_partitions: bool,
}

/// A Ceph RBD image mapped through the kernel's rbd driver.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttachRbd {
    /// Read-only: the kernel's rbd device id (`/dev/rbd<device_id>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<i64>,
    pub monitors: Vec<String>,
    pub pool: String,
    pub image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<RbdOptions>,
}

/// Options of the kernel rbd driver's map string (`rbd(8)`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RbdOptions {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fsid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    #[serde(skip_serializing_if = "is_false")]
    pub share: bool,
    #[serde(skip_serializing_if = "is_false")]
    pub noshare: bool,
    #[serde(skip_serializing_if = "is_false")]
    pub crc: bool,
    #[serde(skip_serializing_if = "is_false")]
    pub nocrc: bool,
    #[serde(skip_serializing_if = "is_false")]
    pub ceph_requires_signatures: bool,
    #[serde(skip_serializing_if = "is_false")]
    pub noceph_requires_signatures: bool,
    #[serde(skip_serializing_if = "is_false")]
    pub tcp_nodelay: bool,
    #[serde(skip_serializing_if = "is_false")]
    pub notcp_nodelay: bool,
    #[serde(skip_serializing_if = "is_false")]
    pub cephx_sign_messages: bool,
    #[serde(skip_serializing_if = "is_false")]
    pub nocephx_sign_messages: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mount_timeout: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub osdkeepalive: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub osd_idle_ttl: Option<i64>,
    #[serde(skip_serializing_if = "is_false")]
    pub force: bool,
    #[serde(skip_serializing_if = "is_false")]
    pub rw: bool,
    #[serde(skip_serializing_if = "is_false")]
    pub ro: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_depth: Option<i64>,
    #[serde(skip_serializing_if = "is_false")]
    pub lock_on_read: bool,
    #[serde(skip_serializing_if = "is_false")]
    pub exclusive: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lock_timeout: Option<i64>,
    #[serde(skip_serializing_if = "is_false")]
    pub notrim: bool,
    #[serde(skip_serializing_if = "is_false")]
    pub abort_on_full: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alloc_size: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<Secret>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// A credential. It is read from requests but never written out: responses, errors and logs show
/// [`Secret::REDACTED`] in its place, so a client sees that a secret is set without seeing it.
#[derive(Clone, PartialEq)]
pub struct Secret(String);

impl<'de> Deserialize<'de> for Secret {
    /// Only a string is a secret; any other value is refused without being repeated in the
    /// error (which a client or a log would see).
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match serde_json::Value::deserialize(deserializer)? {
            serde_json::Value::String(secret) => Ok(Secret(secret)),
            _ => Err(serde::de::Error::custom(
                "must be a string (its value is not shown)",
            )),
        }
    }
}

impl Secret {
    pub const REDACTED: &'static str = "<redacted>";

    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The real value, for the one place that hands it to the kernel.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(Self::REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(Self::REDACTED)
    }
}

fn default_lun() -> i64 {
    0
}
fn default_iscsi_port() -> i64 {
    3260
}
fn default_max_commands() -> i64 {
    128
}
fn default_queue_depth() -> i64 {
    16
}
fn default_scheduler() -> String {
    "mq-deadline".to_string()
}

/// An iSCSI LUN logged in through open-iscsi.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttachIscsi {
    pub initiator: String,
    pub target: String,
    pub host: String,
    #[serde(default = "default_lun")]
    pub lun: i64,
    #[serde(default = "default_iscsi_port")]
    pub port: i64,
    /// The wire name keeps the reference's misspelling.
    #[serde(default = "default_max_commands")]
    pub max_comands: i64,
    #[serde(default = "default_queue_depth")]
    pub queue_depth: i64,
    #[serde(default = "default_scheduler")]
    pub scheduler: String,
}

/// A filesystem: attach, bind, nfs, overlay or uri.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Mount {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Id>,
    #[serde(default)]
    pub refs: i64,
    /// Read-only: a fresh directory under the service's mount dir.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mountpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<MountKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attach: Option<MountAttach>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind: Option<MountBind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nfs: Option<MountNfs>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlay: Option<MountOverlay>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<MountUri>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MountKind {
    Attach,
    Bind,
    Nfs,
    Overlay,
    Uri,
}

impl MountKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MountKind::Attach => "attach",
            MountKind::Bind => "bind",
            MountKind::Nfs => "nfs",
            MountKind::Overlay => "overlay",
            MountKind::Uri => "uri",
        }
    }
}

/// A filesystem on an attachment's block device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MountAttach {
    pub attach: Attach,
    pub fs_type: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mount_options: Vec<String>,
}

/// A bind mount of a host path or of a path inside another mount.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MountBind {
    pub path: String,
    pub base: Base,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount: Option<Box<Mount>>,
    #[serde(default)]
    pub recursive: bool,
    #[serde(default)]
    pub ro: bool,
}

fn default_nfs_version() -> String {
    "4.2".to_string()
}

/// An NFS export.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MountNfs {
    pub host: String,
    pub path: String,
    #[serde(default)]
    pub ro: bool,
    #[serde(default = "default_nfs_version")]
    pub version: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

/// An overlay of one or more lower mounts (first is topmost) with a service-made upper layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MountOverlay {
    pub lower: Vec<Mount>,
    /// Read-only: the overlay's work dir.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// Read-only: the overlay's upper (writable) dir.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upperdir: Option<String>,
}

/// An archive downloaded from a URI and unpacked into a ramdisk mount (no driver yet).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MountUri {
    pub uri: String,
}

/// The lifecycle state of a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerState {
    Created,
    Running,
    Stopping,
    Exited,
    Dead,
    Paused,
}

impl ContainerState {
    pub fn as_str(self) -> &'static str {
        match self {
            ContainerState::Created => "created",
            ContainerState::Running => "running",
            ContainerState::Stopping => "stopping",
            ContainerState::Exited => "exited",
            ContainerState::Dead => "dead",
            ContainerState::Paused => "paused",
        }
    }
}

/// A Linux namespace a container may get of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Namespace {
    Cgroup,
    Ipc,
    Net,
    Mnt,
    Pid,
    Time,
    User,
    Uts,
}

/// A system container: an init command run with a mount as `/`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Container {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Id>,
    #[serde(default)]
    pub refs: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount: Option<Mount>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    #[serde(default)]
    pub systemd: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<ContainerState>,
    /// Read-only: the console log of the init, with the service's lifecycle lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logfile: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<Vec<Namespace>>,
    /// Extension: the signal that asks the init to stop (name like `SIGTERM` or number).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    /// Extension: seconds between the stop signal and SIGKILL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_timeout: Option<i64>,
    /// Extension: the exit code of the last init, once it has exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
}
