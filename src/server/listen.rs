//! Binding the listening sockets: the unix socket file (created private, a stale one from a
//! crashed run replaced, removed again at exit) and TCP addresses.

use std::fs;
use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use rustix::fs::Mode;
use tracing::{info, warn};

/// The socket file the service created; dropping it removes the file if it is still that one
/// (a newer service may have replaced it meanwhile).
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl SocketFile {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        match fs::symlink_metadata(&self.path) {
            Ok(meta) if meta.dev() == self.dev && meta.ino() == self.ino => {
                if let Err(err) = fs::remove_file(&self.path) {
                    warn!(path = %self.path.display(), %err, "cannot remove the unix socket");
                }
            }
            _ => {}
        }
    }
}

/// Resolves a group given by name or number.
fn group_id(group: &str) -> anyhow::Result<u32> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(group) {
        Ok(Some(found)) => Ok(found.gid.as_raw()),
        Ok(None) => bail!("--socket-group {group:?}: no such group"),
        Err(errno) => bail!("--socket-group {group:?}: {errno}"),
    }
}

/// Clears the way for a new socket at `path`: nothing there is fine; a socket nobody listens on
/// (a crashed run's) is removed; a live socket or anything that is not a socket is refused.
fn clear_stale(path: &Path) -> anyhow::Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(err) if err.kind() == ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(err).with_context(|| format!("{}", path.display())),
    };
    if !meta.file_type().is_socket() {
        bail!(
            "{} exists and is not a socket; refusing to replace it",
            path.display()
        );
    }
    match UnixStream::connect(path) {
        Ok(_) => bail!(
            "{}: another process is listening on this socket",
            path.display()
        ),
        Err(err) if err.kind() == ErrorKind::ConnectionRefused => {
            info!(path = %path.display(), "replacing a stale socket left by an earlier run");
            match fs::remove_file(path) {
                Err(err) if err.kind() != ErrorKind::NotFound => {
                    Err(err).with_context(|| format!("removing stale socket {}", path.display()))
                }
                _ => Ok(()),
            }
        }
        Err(err) => Err(err).with_context(|| format!("probing {}", path.display())),
    }
}

/// Creates the unix socket at `path` with `mode` (and `group`, if given): it is created with no
/// access for anyone but root (umask 0177, while the process has no other thread yet) and only
/// then opened to `mode`, so it is never more open than asked.
pub fn bind_unix(
    path: &Path,
    mode: u32,
    group: Option<&str>,
) -> anyhow::Result<(UnixListener, SocketFile)> {
    let gid = group.map(group_id).transpose()?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent)
            .with_context(|| format!("creating the socket's directory {}", parent.display()))?;
    }
    clear_stale(path)?;
    let old_umask = rustix::process::umask(Mode::from_raw_mode(0o177));
    let bound = UnixListener::bind(path);
    rustix::process::umask(old_umask);
    let listener = bound.with_context(|| format!("binding unix socket {}", path.display()))?;
    let meta =
        fs::symlink_metadata(path).with_context(|| format!("unix socket {}", path.display()))?;
    // From here on, dropping `file` removes the socket again should a step fail.
    let file = SocketFile {
        path: path.to_owned(),
        dev: meta.dev(),
        ino: meta.ino(),
    };
    if let Some(gid) = gid {
        std::os::unix::fs::chown(path, None, Some(gid))
            .with_context(|| format!("giving {} to group {gid}", path.display()))?;
    }
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:04o} {}", path.display()))?;
    if mode & 0o007 != 0 {
        warn!(
            path = %path.display(),
            mode = format!("{mode:04o}"),
            "the unix socket is open to every local user, and the API gives root's power"
        );
    }
    listener
        .set_nonblocking(true)
        .context("non-blocking unix listener")?;
    Ok((listener, file))
}

/// Binds every address `host` resolves to (like actix-web's `bind`): `localhost` gives both
/// 127.0.0.1 and ::1 where the host has them. One bound address is enough; the others are
/// warned about. An empty `host` means every interface, as in the reference.
pub fn bind_tcp(host: &str, port: u16, flag: &str) -> anyhow::Result<Vec<TcpListener>> {
    if host.is_empty() {
        // As Go's ":port": every interface, IPv6 and IPv4 (one dual-stack socket where the
        // host has IPv6).
        warn!(port, "{flag} is empty: listening on every interface");
        let any6 = SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port));
        let any4 = SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, port));
        let listener = TcpListener::bind(any6)
            .or_else(|_| TcpListener::bind(any4))
            .with_context(|| format!("binding every interface on port {port}"))?;
        listener
            .set_nonblocking(true)
            .context("non-blocking TCP listener")?;
        return Ok(vec![listener]);
    }
    let mut addresses: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .with_context(|| format!("{flag} {host:?}: cannot resolve"))?
        .collect();
    addresses.dedup();
    let mut listeners = Vec::new();
    let mut failure = None;
    for address in addresses {
        match TcpListener::bind(address) {
            Ok(listener) => {
                listener
                    .set_nonblocking(true)
                    .context("non-blocking TCP listener")?;
                listeners.push(listener);
            }
            Err(err) => {
                warn!(%address, %err, "cannot bind");
                failure = Some((address, err));
            }
        }
    }
    if listeners.is_empty() {
        return match failure {
            Some((address, err)) => Err(err).with_context(|| format!("binding {address}")),
            None => bail!("{flag} {host:?} resolves to no address"),
        };
    }
    Ok(listeners)
}
