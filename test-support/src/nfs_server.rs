//! An NFSv4 server on this machine's loopback, for tests that run as root on a kernel with
//! nfsd (the VM tests): the kernel's nfsd with `rpc.mountd` and `exportfs` (nfs-kernel-server),
//! exporting a fresh tmpfs to 127.0.0.1 as the NFSv4 root (`fsid=0`).
//!
//! The export is a tmpfs of its own because nfsd exports only filesystems it can make file
//! handles for (not the overlays and 9p of a virtme guest), and the root of the v4 pseudo
//! filesystem because its parent directories sit on those. Clients mount `127.0.0.1:/` (or a
//! directory below it). NFSv4 needs no rpcbind: nfsd runs with version 3 and UDP off
//! ([`NfsServer::start_v3`] serves NFSv3 too, with rpcbind).
//!
//! One server at a time (there is one NFSv4 root). Drop stops nfsd, unexports, stops mountd,
//! unmounts the tmpfs and `/proc/fs/nfsd` (where it mounted it) and removes its directory, also
//! when the test panics.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{run, wait_for};

/// nfsd's control filesystem.
const NFSD_FS: &str = "/proc/fs/nfsd";

/// The shortest grace period and lease nfsd takes, in seconds: a server started fresh refuses
/// to open files for its grace period.
const GRACE_SECONDS: &str = "10";

/// What rpcbind leaves in /run after it exits: its socket, lock and warm-start state, and the
/// state's directory (which a booted system has already), last.
const RPCBIND_FILES: [&str; 5] = [
    "/run/rpcbind.sock",
    "/run/rpcbind.lock",
    "/run/rpcbind/portmap.xdr",
    "/run/rpcbind/rpcbind.xdr",
    "/run/rpcbind",
];

pub struct NfsServer {
    root: PathBuf,
    /// Of [`RPCBIND_FILES`], those that were not there before rpcbind started: Drop removes them.
    rpcbind_files: Vec<PathBuf>,
    /// Serving NFSv3 too, with rpcbind.
    v3: bool,
    rpcbind: Option<Child>,
    mountd: Option<Child>,
    mounted_nfsd_fs: bool,
    running: bool,
}

impl NfsServer {
    /// Starts nfsd and mountd for NFSv4 only and exports a fresh, empty tmpfs to 127.0.0.1.
    pub fn start() -> NfsServer {
        NfsServer::start_with(false)
    }

    /// [`NfsServer::start`], also serving NFSv3: with rpcbind, which NFSv3 clients ask for the
    /// ports of mountd and nfsd. Clients mount the export by its path on the server
    /// ([`NfsServer::export_dir`]).
    pub fn start_v3() -> NfsServer {
        NfsServer::start_with(true)
    }

    fn start_with(v3: bool) -> NfsServer {
        run(Command::new("modprobe").arg("nfsd"));
        let mounted_nfsd_fs = !Path::new(NFSD_FS).join("threads").exists();
        if mounted_nfsd_fs {
            run(Command::new("mount").args(["-t", "nfsd", "nfsd", NFSD_FS]));
        }
        let root = tempfile::Builder::new()
            .prefix("imageapi-nfs-")
            .tempdir()
            .expect("temp dir for the export")
            .keep();
        let mut server = NfsServer {
            root,
            rpcbind_files: Vec::new(),
            v3,
            rpcbind: None,
            mountd: None,
            mounted_nfsd_fs,
            running: false,
        };
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", "mode=0755", "imageapi-nfs"])
            .arg(&server.root));
        run(Command::new("exportfs")
            .args([
                "-o",
                "rw,sync,no_root_squash,no_subtree_check,insecure,fsid=0",
            ])
            .arg(format!("127.0.0.1:{}", server.root.display())));
        if v3 {
            server.rpcbind_files = RPCBIND_FILES
                .iter()
                .map(PathBuf::from)
                .filter(|path| !path.exists())
                .collect();
            server.rpcbind = Some(
                Command::new("rpcbind")
                    .arg("-f")
                    .stdin(Stdio::null())
                    .spawn()
                    .expect("spawn rpcbind"),
            );
            let listening = wait_for(Duration::from_secs(10), || {
                std::net::TcpStream::connect(("127.0.0.1", 111)).is_ok()
            });
            assert!(listening, "rpcbind does not listen on 127.0.0.1:111");
        }
        let mut mountd = Command::new("rpc.mountd");
        mountd
            .args(["--foreground", "--no-udp"])
            .args(["--no-nfs-version", "2"]);
        if !v3 {
            mountd.args(["--no-nfs-version", "3"]);
        }
        server.mountd = Some(
            mountd
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .expect("spawn rpc.mountd"),
        );
        server.start_nfsd();
        server
    }

    /// Starts nfsd's threads again after [`NfsServer::stop_nfsd`] (a server reboot: clients
    /// reclaim their state within the grace period).
    pub fn start_nfsd(&mut self) {
        let mut nfsd = Command::new("rpc.nfsd");
        if !self.v3 {
            nfsd.args(["--no-nfs-version", "3"]);
        }
        run(nfsd.args([
            "--no-udp",
            // Its usage names --leasetime, which it does not take: the short forms.
            "-G",
            GRACE_SECONDS,
            "-L",
            GRACE_SECONDS,
            "4",
        ]));
        self.running = true;
        let listening = wait_for(Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", 2049)).is_ok()
        });
        assert!(listening, "nfsd does not listen on 127.0.0.1:2049");
    }

    /// Stops nfsd's threads: the server is dead to its clients (connections refused) until
    /// [`NfsServer::start_nfsd`]; the export and its files stay.
    pub fn stop_nfsd(&mut self) {
        run(Command::new("rpc.nfsd").arg("0"));
        self.running = false;
    }

    /// The exported directory as the server sees it: files put here are on the export.
    pub fn export_dir(&self) -> &Path {
        &self.root
    }

    /// The address clients mount from.
    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }
}

impl Drop for NfsServer {
    fn drop(&mut self) {
        let quietly = |cmd: &mut Command| {
            let answer = cmd.stdout(Stdio::null()).stderr(Stdio::null()).status();
            if !answer.is_ok_and(|status| status.success()) {
                eprintln!("nfs server fixture: {cmd:?} failed");
            }
        };
        if self.running {
            quietly(Command::new("rpc.nfsd").arg("0"));
        }
        quietly(
            Command::new("exportfs")
                .arg("-u")
                .arg(format!("127.0.0.1:{}", self.root.display())),
        );
        for mut daemon in [self.mountd.take(), self.rpcbind.take()]
            .into_iter()
            .flatten()
        {
            let _ = Command::new("kill")
                .arg(daemon.id().to_string())
                .stderr(Stdio::null())
                .status();
            let _ = daemon.wait();
        }
        for path in &self.rpcbind_files {
            let removed = if path.is_dir() {
                fs::remove_dir(path)
            } else {
                fs::remove_file(path)
            };
            if let Err(err) = removed.or_else(|err| match err.kind() {
                std::io::ErrorKind::NotFound => Ok(()),
                _ => Err(err),
            }) {
                eprintln!("nfs server fixture: remove {}: {err}", path.display());
            }
        }
        quietly(Command::new("umount").arg(&self.root));
        if let Err(err) = fs::remove_dir(&self.root) {
            eprintln!("nfs server fixture: rmdir {}: {err}", self.root.display());
        }
        if self.mounted_nfsd_fs {
            quietly(Command::new("umount").arg(NFSD_FS));
        }
    }
}
