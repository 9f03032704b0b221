//! `nfs`: an NFS export, mounted by mount(2) with the data string the kernel's NFS client reads.
//!
//! The kernel does no name resolution and picks no local address: the service resolves the
//! host (`addr=`), finds the local address the kernel routes to it from (`clientaddr=`, which
//! an NFSv4 server calls back to) and names the version (`vers=`). NFSv3 mounts take `nolock`:
//! locking would need rpc.statd, which the service does not run.
//!
//! A mount waits for the server within a bounded time: `timeo=` and `retrans=` bound the RPCs
//! a mount sends (unless the client sets them itself). A release whose server no longer takes
//! connections, or a forced one, aborts what is in flight (`MNT_FORCE`) and detaches the mount
//! if it is still busy, so that it never waits for a dead server.

use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs, UdpSocket};
use std::path::Path;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::mount::{umount2, MntFlags, MsFlags};
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use super::{mount_on_fresh_dir, remove_dir, MountFacts, MountedFs};
use crate::driver::{Dep, DepViews, Driver, Host, Kinds, Parsed};
use crate::error::{Error, Origin};
use crate::model::spec::{check_absolute, check_hostname, field, invalid, Invalid};
use crate::model::wire::{Id, Mount, MountKind, MountNfs};
use crate::registry::graph::ObjectKind;
use crate::sys::mounts::{self, parse_mount_options, MountOptions};
use crate::sys::{errno_of_io, kmod, sys_err, SysError};

const NFS: Origin = Origin::new(ObjectKind::Mount, "nfs");

/// The port of an NFS server that no `port=` option names.
const NFS_PORT: u16 = 2049;

/// How long an RPC waits for an answer before it is sent again, in tenths of a second, and how
/// often it is sent again before a mount gives up: a server that takes the connection but never
/// answers fails a mount after about 11 s (measured on Linux 6.1). nfs(5)'s TCP defaults
/// (60 s, 2) would make that about 3 minutes.
const DEFAULT_TIMEO: u32 = 50;
const DEFAULT_RETRANS: u32 = 1;

/// How long a release waits for the server to take a TCP connection before it counts it dead.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a forced release waits for its unmount before it looks whether the mount has left
/// the tree, and how long it waits for that.
const TEARDOWN_WAIT: Duration = Duration::from_secs(1);
const OUT_OF_TREE_WAIT: Duration = Duration::from_secs(3);

/// mount(2) copies one page of data; the service's own options take less than 160 bytes of it.
const CLIENT_OPTIONS_MAX: usize = 3800;

pub struct Nfs;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NfsVersion {
    #[serde(rename = "3")]
    V3,
    /// 4, the highest minor version the server offers.
    #[serde(rename = "4")]
    V4,
    #[serde(rename = "4.0")]
    V4_0,
    #[serde(rename = "4.1")]
    V4_1,
    #[serde(rename = "4.2")]
    V4_2,
}

impl NfsVersion {
    const ALL: [NfsVersion; 5] = [
        NfsVersion::V3,
        NfsVersion::V4,
        NfsVersion::V4_0,
        NfsVersion::V4_1,
        NfsVersion::V4_2,
    ];

    fn parse(version: &str) -> Option<NfsVersion> {
        NfsVersion::ALL
            .into_iter()
            .find(|known| known.as_str() == version)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            NfsVersion::V3 => "3",
            NfsVersion::V4 => "4",
            NfsVersion::V4_0 => "4.0",
            NfsVersion::V4_1 => "4.1",
            NfsVersion::V4_2 => "4.2",
        }
    }

    /// The filesystem type the kernel registers for the version (and shows in mountinfo).
    pub fn fs_type(self) -> &'static str {
        match self {
            NfsVersion::V3 => "nfs",
            _ => "nfs4",
        }
    }

    /// What a mount tries, in order: `4` is the highest minor version the server offers (the
    /// kernel would take `vers=4` as 4.0).
    fn minor_versions_to_try(self) -> &'static [NfsVersion] {
        match self {
            NfsVersion::V3 => &[NfsVersion::V3],
            NfsVersion::V4 => &[NfsVersion::V4_2, NfsVersion::V4_1, NfsVersion::V4_0],
            NfsVersion::V4_0 => &[NfsVersion::V4_0],
            NfsVersion::V4_1 => &[NfsVersion::V4_1],
            NfsVersion::V4_2 => &[NfsVersion::V4_2],
        }
    }

    /// The kernel module of the version's client.
    fn module(self) -> &'static str {
        match self {
            NfsVersion::V3 => "nfsv3",
            _ => "nfsv4",
        }
    }
}

/// The checked definition. `options` are the client's, as sent: the service's own go first
/// in the data string (see [`mount_data`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NfsSpec {
    pub host: String,
    pub path: String,
    pub read_only: bool,
    pub version: NfsVersion,
    pub options: Vec<String>,
}

/// Where the mount is, and the server it was mounted from (the address the host resolved to
/// then, and the port), which a release checks before it unmounts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NfsFacts {
    #[serde(flatten)]
    pub mount: MountFacts,
    pub server: SocketAddr,
}

pub struct NfsMount {
    fs: MountedFs,
    server: SocketAddr,
}

impl Driver for Nfs {
    type Object = Mount;
    type Spec = NfsSpec;
    type Facts = NfsFacts;
    type Resource = NfsMount;
    const KIND: MountKind = MountKind::Nfs;
    // Its mountpoint is under the mount dir, which a restart clears of what no object claims.
    const FOUND_WITHOUT_RECORD: bool = true;

    fn parse(&self, _: &Kinds, at: &str, wire: &Mount) -> Option<Result<Parsed<NfsSpec>, Invalid>> {
        let nfs = wire.nfs.as_ref()?;
        let sub = field(at, "nfs");
        Some((|| {
            check_hostname(&field(&sub, "host"), &nfs.host)?;
            check_absolute(&field(&sub, "path"), &nfs.path)?;
            let version = NfsVersion::parse(&nfs.version).ok_or_else(|| {
                invalid(
                    &field(&sub, "version"),
                    format!(
                        "{:?} is not an NFS version (3, 4, 4.0, 4.1, 4.2)",
                        nfs.version
                    ),
                )
            })?;
            check_options(&field(&sub, "options"), version, &nfs.options)?;
            let spec = NfsSpec {
                host: nfs.host.clone(),
                path: nfs.path.clone(),
                read_only: nfs.ro,
                version,
                options: nfs.options.clone(),
            };
            Ok(Parsed::new(spec, vec![]))
        })())
    }

    fn create(
        &self,
        host: &Host,
        id: Id,
        spec: &NfsSpec,
        _: &[Dep],
    ) -> Result<(NfsMount, NfsFacts), Error> {
        let fs_type = spec.version.fs_type();
        ensure_client(spec.version)?;
        let server = SocketAddr::new(resolve(&spec.host)?, server_port(&spec.options));
        let client = local_address_towards(server)?;
        let client_options = parse_mount_options(&spec.options);
        let mut flags = client_options.flags;
        flags.set(MsFlags::MS_RDONLY, spec.read_only);
        let source = format!("{}:{}", spec.host, spec.path);
        let started = Instant::now();
        let fs = mount_on_fresh_dir(&host.mount_dir, NFS, Some(fs_type), |target| {
            let versions = spec.version.minor_versions_to_try();
            let mut tried = 0;
            loop {
                let version = versions[tried];
                tried += 1;
                let options = MountOptions {
                    flags,
                    data: mount_data(version, server.ip(), client, &client_options.data),
                };
                debug!(id, source, data = options.data, "mounting nfs");
                match mounts::mount_filesystem(Path::new(&source), target, fs_type, &options) {
                    Ok(()) => return Ok(()),
                    // The server does not offer this minor version: the next one down, as
                    // mount.nfs does.
                    Err(err) if err.errno == Errno::EPROTONOSUPPORT && tried < versions.len() => {
                        debug!(
                            id,
                            version = version.as_str(),
                            "the server does not offer it"
                        );
                    }
                    Err(err) => {
                        return Err(mount_error(err, spec, &options.data, started.elapsed()))
                    }
                }
            }
        })?;
        let facts = NfsFacts {
            mount: fs.facts(),
            server,
        };
        Ok((NfsMount { fs, server }, facts))
    }

    /// Looks into no mount (see [`mounts::mounted_fs_type`]): a dead server does not hold up
    /// the start.
    fn adopt(&self, _: &Host, _: Id, _: &NfsSpec, facts: &NfsFacts) -> Option<NfsMount> {
        Some(NfsMount {
            fs: MountedFs::adopt(&facts.mount)?,
            server: facts.server,
        })
    }

    fn release(&self, _: &Host, mounted: NfsMount, force: bool) -> Result<(), Error> {
        if force {
            return release_forced(mounted.fs);
        }
        if let Err(err) = TcpStream::connect_timeout(&mounted.server, PROBE_TIMEOUT) {
            // A plain unmount would wait for the server: the kernel ends the client's session
            // with it, RPCs that give up only after timeo and retrans.
            warn!(server = %mounted.server, %err, "the server takes no connection: forcing the unmount");
            return release_forced(mounted.fs);
        }
        mounted.fs.release()
    }

    fn provides<'f>(&self, facts: &'f NfsFacts) -> &'f Path {
        &facts.mount.mountpoint
    }

    fn describe(&self, spec: &NfsSpec, _: Option<&NfsFacts>, _: &dyn DepViews, wire: &mut Mount) {
        wire.nfs = Some(MountNfs {
            host: spec.host.clone(),
            path: spec.path.clone(),
            ro: spec.read_only,
            version: spec.version.as_str().to_string(),
            options: spec.options.clone(),
        });
    }
}

/// Checks the client's options: each element one or more comma-separated words, none of them
/// one the service fills in, one another field says, or one that makes no sense here.
fn check_options(at: &str, version: NfsVersion, options: &[String]) -> Result<(), Invalid> {
    let total: usize = options.iter().map(|option| option.len() + 1).sum();
    if total > CLIENT_OPTIONS_MAX {
        return Err(invalid(
            at,
            format!("take {total} bytes; mount(2) takes at most {CLIENT_OPTIONS_MAX} of them"),
        ));
    }
    for (i, option) in options.iter().enumerate() {
        let at = format!("{at}[{i}]");
        if option.is_empty() || option.contains('\0') {
            return Err(invalid(&at, "must be a non-empty option without NUL bytes"));
        }
        for word in option.split(',').filter(|word| !word.is_empty()) {
            if let Some(why) = refusal(version, word) {
                return Err(invalid(&at, format!("{word:?}: {why}")));
            }
        }
    }
    Ok(())
}

/// Why the service refuses option `word`, if it does.
fn refusal(version: NfsVersion, word: &str) -> Option<String> {
    let (key, value) = match word.split_once('=') {
        Some((key, value)) => (key.to_ascii_lowercase(), Some(value)),
        None => (word.to_ascii_lowercase(), None),
    };
    let why = match key.as_str() {
        "addr" | "clientaddr" => "the service fills it in from nfs.host".to_string(),
        "vers" | "nfsvers" | "minorversion" | "v2" | "v3" | "v4" | "v4.0" | "v4.1" | "v4.2" => {
            "the service fills it in from nfs.version".to_string()
        }
        "mountaddr" | "mounthost" => {
            "the service resolves nfs.host, and mountd runs on the server".to_string()
        }
        "ro" | "rw" => "set nfs.ro instead".to_string(),
        "bg" | "fg" | "retry" => {
            "mount.nfs retries in the background; the service mounts once, within a bounded time"
                .to_string()
        }
        "lock" if version == NfsVersion::V3 => {
            "NFSv3 locking needs rpc.statd, which this service does not run: it mounts with nolock"
                .to_string()
        }
        "udp" if version != NfsVersion::V3 => "NFSv4 runs over TCP only".to_string(),
        "proto" if version != NfsVersion::V3 && value.is_some_and(|v| v.starts_with("udp")) => {
            "NFSv4 runs over TCP only".to_string()
        }
        "port" if value.and_then(|v| v.parse::<u16>().ok()).is_none() => {
            "must be a port number".to_string()
        }
        "timeo" | "retrans" if value.and_then(|v| v.parse::<u32>().ok()).is_none() => {
            "must be a number".to_string()
        }
        _ => return None,
    };
    Some(why)
}

/// The value of the last `key=` among the data words, as the kernel takes the last one.
fn option_value<'d>(data: &'d str, key: &str) -> Option<&'d str> {
    data.split(',')
        .filter_map(|word| word.split_once('='))
        .filter(|(name, _)| name.eq_ignore_ascii_case(key))
        .map(|(_, value)| value)
        .next_back()
}

/// The server's port: the client's `port=`, where it is not 0 (0 asks rpcbind), else 2049.
fn server_port(options: &[String]) -> u16 {
    let data = options.join(",");
    option_value(&data, "port")
        .and_then(|port| port.parse::<u16>().ok())
        .filter(|&port| port != 0)
        .unwrap_or(NFS_PORT)
}

/// The data string: the service's options (version, server and client address, `nolock` for
/// NFSv3, the default `timeo=` and `retrans=` where the client sets none), then the client's.
fn mount_data(version: NfsVersion, server: IpAddr, client: IpAddr, client_data: &str) -> String {
    let mut words = vec![
        format!("vers={}", version.as_str()),
        format!("addr={server}"),
    ];
    if version == NfsVersion::V3 {
        words.push("nolock".to_string());
    } else {
        words.push(format!("clientaddr={client}"));
    }
    if option_value(client_data, "timeo").is_none() {
        words.push(format!("timeo={DEFAULT_TIMEO}"));
    }
    if option_value(client_data, "retrans").is_none() {
        words.push(format!("retrans={DEFAULT_RETRANS}"));
    }
    if !client_data.is_empty() {
        words.push(client_data.to_string());
    }
    words.join(",")
}

/// Makes sure the kernel has the version's client: its filesystem type registered, after
/// loading its module if need be.
fn ensure_client(version: NfsVersion) -> Result<(), Error> {
    let fs_type = version.fs_type();
    if has_filesystem(fs_type) {
        return Ok(());
    }
    let module = version.module();
    kmod::ensure(module, &Path::new("/sys/module").join(module))
        .map_err(|reason| Error::unsupported(NFS, reason))?;
    if has_filesystem(fs_type) {
        Ok(())
    } else {
        Err(Error::unsupported(
            NFS,
            format!("this node's kernel has no {fs_type} filesystem, though {module} is loaded"),
        ))
    }
}

fn has_filesystem(fs_type: &str) -> bool {
    std::fs::read_to_string("/proc/filesystems").is_ok_and(|list| {
        list.lines()
            .any(|line| line.split_whitespace().last() == Some(fs_type))
    })
}

/// The host's address: an IP as it is, a name through the system resolver (an IPv4 address
/// where it has one: the contract's hosts are IPv4). Blocking.
fn resolve(host: &str) -> Result<IpAddr, Error> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(ip);
    }
    let addresses: Vec<SocketAddr> = (host, NFS_PORT)
        .to_socket_addrs()
        .map_err(|err| Error::unreachable(NFS, format!("cannot resolve {host}: {err}")))?
        .collect();
    addresses
        .iter()
        .find(|address| address.is_ipv4())
        .or(addresses.first())
        .map(SocketAddr::ip)
        .ok_or_else(|| Error::unreachable(NFS, format!("{host} resolves to no address")))
}

/// The local address the kernel sends from to reach `server`: connecting a UDP socket picks
/// the route (and sends nothing).
fn local_address_towards(server: SocketAddr) -> Result<IpAddr, Error> {
    let unspecified: SocketAddr = if server.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let socket = UdpSocket::bind(unspecified)
        .and_then(|socket| socket.connect(server).map(|()| socket))
        .and_then(|socket| socket.local_addr())
        .map_err(|err| Error::unreachable(NFS, format!("no route to {server}: {err}")))?;
    Ok(socket.ip())
}

/// What a failed mount(2) means, in the words of the request.
fn mount_error(err: SysError, spec: &NfsSpec, data: &str, took: Duration) -> Error {
    let server = format!("{}:{}", spec.host, spec.path);
    match err.errno {
        Errno::ECONNREFUSED
        | Errno::ECONNRESET
        | Errno::EHOSTUNREACH
        | Errno::ENETUNREACH
        | Errno::EHOSTDOWN => Error::unreachable(NFS, format!("{server}: {}", err.errno.desc())),
        // The kernel answers EIO ("can't read superblock") when the server's RPCs time out.
        Errno::ETIMEDOUT | Errno::EIO => Error::unreachable(
            NFS,
            format!(
                "{server}: the server did not answer within {:.1} s ({})",
                took.as_secs_f64(),
                err.errno.desc()
            ),
        ),
        Errno::ENOENT => Error::rejected(NFS, format!("{server}: the server exports no such path")),
        Errno::EACCES | Errno::EPERM => Error::rejected(
            NFS,
            format!("{server}: the server refused access ({})", err.errno.desc()),
        ),
        Errno::EPROTONOSUPPORT => Error::rejected(
            NFS,
            format!(
                "{server}: the server does not offer NFS version {}",
                spec.version.as_str()
            ),
        ),
        Errno::ENOTDIR => Error::rejected(NFS, format!("{server}: not a directory")),
        Errno::EINVAL => Error::rejected(
            NFS,
            format!("the kernel refused the mount options {data:?}"),
        ),
        Errno::ENODEV => Error::unsupported(
            NFS,
            format!(
                "this node's kernel has no {} filesystem",
                spec.version.fs_type()
            ),
        ),
        _ => Error::kernel(NFS)(err),
    }
}

/// Unmounts without waiting for the server: `MNT_FORCE` aborts the RPCs in flight, and a mount
/// still busy after that is detached (the kernel frees it when its last user goes).
///
/// umount2 takes the mount out of the tree first and tears its superblock down on the way out
/// of the call: for NFSv4 that returns delegations and ends the session, RPCs to a dead server
/// that give up only after `timeo` and `retrans` (13 s measured with the defaults). So the
/// unmount runs on a thread of its own, which the release waits for only until the mount has
/// left the tree.
fn release_forced(fs: MountedFs) -> Result<(), Error> {
    let origin = Origin::new(ObjectKind::Mount, "unmount");
    let mountpoint = fs.mountpoint;
    let (answer, answered) = mpsc::channel();
    let target = mountpoint.clone();
    thread::Builder::new()
        .name("nfs-unmount".into())
        .spawn(move || {
            let _ = answer.send(umount2(&target, MntFlags::MNT_FORCE));
        })
        .map_err(|err| SysError {
            op: format!("start a thread to unmount {}", mountpoint.display()),
            errno: errno_of_io(&err),
        })
        .map_err(Error::kernel(origin))?;
    let unmounted = match answered.recv_timeout(TEARDOWN_WAIT) {
        Ok(unmounted) => unmounted,
        Err(_) if wait_until_out_of_tree(&mountpoint) => {
            debug!(mountpoint = %mountpoint.display(), "unmounted; the kernel still tears down");
            Ok(())
        }
        Err(_) => Err(Errno::ETIMEDOUT),
    };
    if let Err(errno) = unmounted {
        warn!(mountpoint = %mountpoint.display(), %errno, "forced unmount failed: detaching");
        let detached = umount2(&mountpoint, MntFlags::MNT_DETACH);
        // EINVAL: no longer a mount, the forced unmount got there first.
        if detached.is_err() && mounts::mounted_fs_type(&mountpoint).is_some() {
            detached
                .map_err(sys_err(format!(
                    "umount2 MNT_DETACH {}",
                    mountpoint.display()
                )))
                .map_err(Error::kernel(origin))?;
        }
    }
    remove_dir(&mountpoint).map_err(Error::kernel(origin))
}

/// Whether the mount on `mountpoint` leaves the tree within [`OUT_OF_TREE_WAIT`].
fn wait_until_out_of_tree(mountpoint: &Path) -> bool {
    let deadline = Instant::now() + OUT_OF_TREE_WAIT;
    loop {
        if mounts::mounted_fs_type(mountpoint).is_none() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 3));
    const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 9));

    fn strings(words: &[&str]) -> Vec<String> {
        words.iter().map(|word| word.to_string()).collect()
    }

    fn parse(nfs: serde_json::Value) -> Result<NfsSpec, Invalid> {
        let wire: Mount =
            serde_json::from_value(serde_json::json!({ "kind": "nfs", "nfs": nfs })).unwrap();
        Nfs.parse(&Kinds::default(), "mount", &wire)
            .unwrap()
            .map(|parsed| parsed.spec)
    }

    fn refused_field(nfs: serde_json::Value) -> String {
        parse(nfs.clone())
            .map(|spec| panic!("{nfs} was taken: {spec:?}"))
            .unwrap_err()
            .field
    }

    #[test]
    fn version_defaults_to_4_2() {
        let spec = parse(serde_json::json!({ "host": "10.0.0.3", "path": "/export" })).unwrap();
        assert_eq!(
            spec,
            NfsSpec {
                host: "10.0.0.3".into(),
                path: "/export".into(),
                read_only: false,
                version: NfsVersion::V4_2,
                options: vec![],
            }
        );
    }

    #[test]
    fn every_contract_version_parses_and_reads_back() {
        for version in ["3", "4", "4.0", "4.1", "4.2"] {
            let spec = parse(
                serde_json::json!({ "host": "nfs.example", "path": "/", "version": version }),
            )
            .unwrap();
            assert_eq!(spec.version.as_str(), version);
            assert_eq!(
                serde_json::to_value(spec.version).unwrap(),
                serde_json::json!(version)
            );
        }
        assert_eq!(
            refused_field(serde_json::json!({ "host": "h", "path": "/", "version": "4.3" })),
            "mount.nfs.version"
        );
    }

    #[test]
    fn data_string_of_every_version() {
        for (version, data) in [
            (
                NfsVersion::V4_2,
                "vers=4.2,addr=10.0.0.3,clientaddr=10.0.0.9,timeo=50,retrans=1",
            ),
            (
                NfsVersion::V4_1,
                "vers=4.1,addr=10.0.0.3,clientaddr=10.0.0.9,timeo=50,retrans=1",
            ),
            (
                NfsVersion::V4_0,
                "vers=4.0,addr=10.0.0.3,clientaddr=10.0.0.9,timeo=50,retrans=1",
            ),
            (
                NfsVersion::V3,
                "vers=3,addr=10.0.0.3,nolock,timeo=50,retrans=1",
            ),
        ] {
            assert_eq!(mount_data(version, SERVER, CLIENT, ""), data, "{version:?}");
        }
    }

    #[test]
    fn version_4_tries_the_highest_minor_version_first() {
        assert_eq!(
            NfsVersion::V4.minor_versions_to_try(),
            [NfsVersion::V4_2, NfsVersion::V4_1, NfsVersion::V4_0]
        );
        for version in NfsVersion::ALL.into_iter().filter(|&v| v != NfsVersion::V4) {
            assert_eq!(version.minor_versions_to_try(), [version]);
        }
    }

    #[test]
    fn client_options_follow_and_their_timeouts_win() {
        let client = parse_mount_options(&strings(&["noexec,port=20490", "timeo=600", "hard"]));
        assert_eq!(client.flags, MsFlags::MS_NOEXEC);
        assert_eq!(
            mount_data(NfsVersion::V4_2, SERVER, CLIENT, &client.data),
            "vers=4.2,addr=10.0.0.3,clientaddr=10.0.0.9,retrans=1,port=20490,timeo=600,hard"
        );
        let client = parse_mount_options(&strings(&["soft,retrans=4"]));
        assert_eq!(
            mount_data(NfsVersion::V4_2, SERVER, CLIENT, &client.data),
            "vers=4.2,addr=10.0.0.3,clientaddr=10.0.0.9,timeo=50,soft,retrans=4"
        );
    }

    #[test]
    fn ipv6_addresses_go_as_they_are() {
        let server: IpAddr = "fd00::3".parse().unwrap();
        let client: IpAddr = "fd00::9".parse().unwrap();
        assert_eq!(
            mount_data(NfsVersion::V4_2, server, client, ""),
            "vers=4.2,addr=fd00::3,clientaddr=fd00::9,timeo=50,retrans=1"
        );
    }

    #[test]
    fn port_comes_from_the_last_port_option() {
        assert_eq!(server_port(&[]), 2049);
        assert_eq!(server_port(&strings(&["port=1234"])), 1234);
        assert_eq!(server_port(&strings(&["port=1,soft", "port=7"])), 7);
        assert_eq!(server_port(&strings(&["port=0"])), 2049);
    }

    #[test]
    fn options_the_service_fills_in_are_refused_by_their_index() {
        for (options, at) in [
            (vec!["addr=10.0.0.4"], "mount.nfs.options[0]"),
            (vec!["soft", "clientaddr=10.0.0.5"], "mount.nfs.options[1]"),
            (vec!["soft,vers=3"], "mount.nfs.options[0]"),
            (vec!["nfsvers=4"], "mount.nfs.options[0]"),
            (vec!["minorversion=1"], "mount.nfs.options[0]"),
            (vec!["v4.1"], "mount.nfs.options[0]"),
            (vec!["ADDR=1.2.3.4"], "mount.nfs.options[0]"),
            (vec!["mountaddr=1.2.3.4"], "mount.nfs.options[0]"),
            (vec!["ro"], "mount.nfs.options[0]"),
            (vec!["hard", "rw"], "mount.nfs.options[1]"),
            (vec!["bg"], "mount.nfs.options[0]"),
            (vec!["retry=2"], "mount.nfs.options[0]"),
            (vec!["udp"], "mount.nfs.options[0]"),
            (vec!["proto=udp6"], "mount.nfs.options[0]"),
            (vec!["port=http"], "mount.nfs.options[0]"),
            (vec!["port=70000"], "mount.nfs.options[0]"),
            (vec!["timeo=-1"], "mount.nfs.options[0]"),
            (vec![""], "mount.nfs.options[0]"),
            (vec!["soft\0"], "mount.nfs.options[0]"),
        ] {
            let nfs = serde_json::json!({ "host": "10.0.0.3", "path": "/e", "options": options });
            assert_eq!(refused_field(nfs), at, "{options:?}");
        }
    }

    #[test]
    fn version_3_takes_udp_but_not_lock() {
        let v3 = |options: &[&str]| {
            parse(serde_json::json!({
                "host": "10.0.0.3", "path": "/e", "version": "3", "options": options
            }))
        };
        assert!(v3(&["udp", "proto=udp", "nolock"]).is_ok());
        assert_eq!(v3(&["lock"]).unwrap_err().field, "mount.nfs.options[0]");
        let v4 = parse(serde_json::json!({
            "host": "10.0.0.3", "path": "/e", "options": ["lock", "proto=tcp", "sec=sys"]
        }));
        assert!(v4.is_ok(), "{v4:?}");
    }

    #[test]
    fn options_longer_than_a_page_are_refused() {
        let long = vec!["x".repeat(1000); 4];
        let nfs = serde_json::json!({ "host": "10.0.0.3", "path": "/e", "options": long });
        assert_eq!(refused_field(nfs), "mount.nfs.options");
    }

    #[test]
    fn host_and_path_are_checked() {
        assert_eq!(
            refused_field(serde_json::json!({ "host": "not a host", "path": "/e" })),
            "mount.nfs.host"
        );
        assert_eq!(
            refused_field(serde_json::json!({ "host": "10.0.0.3", "path": "e" })),
            "mount.nfs.path"
        );
    }

    #[test]
    fn an_ip_resolves_to_itself_and_a_route_gives_a_local_address() {
        assert_eq!(resolve("10.0.0.3").unwrap(), SERVER);
        assert_eq!(
            local_address_towards(SocketAddr::from(([127, 0, 0, 1], 2049))).unwrap(),
            IpAddr::from([127, 0, 0, 1])
        );
    }

    #[test]
    fn errors_name_the_stage_and_the_reason() {
        let spec = parse(serde_json::json!({ "host": "10.0.0.3", "path": "/e" })).unwrap();
        let err = |errno| SysError {
            op: "mount".into(),
            errno,
        };
        let took = Duration::from_millis(11_400);
        assert!(matches!(
            mount_error(err(Errno::ECONNREFUSED), &spec, "", took),
            Error::Unreachable { origin: NFS, .. }
        ));
        let timed_out = mount_error(err(Errno::EIO), &spec, "", took);
        assert!(
            matches!(&timed_out, Error::Unreachable { reason, .. } if reason.contains("within 11.4 s")),
            "{timed_out:?}"
        );
        assert!(matches!(
            mount_error(err(Errno::ENOENT), &spec, "", took),
            Error::Rejected { origin: NFS, .. }
        ));
        assert!(matches!(
            mount_error(err(Errno::EACCES), &spec, "", took),
            Error::Rejected { .. }
        ));
        assert!(matches!(
            mount_error(err(Errno::ENODEV), &spec, "", took),
            Error::Unsupported { .. }
        ));
        assert!(matches!(
            mount_error(err(Errno::ENOMEM), &spec, "", took),
            Error::Kernel { .. }
        ));
    }
}
