//! An iSCSI target on loopback for the VM tests: Debian's `tgtd` (userspace, in the
//! foreground, on its own control port) serving files as LUNs, and open-iscsi's `iscsid` for the
//! initiator side when the node runs none (with a private config and initiator name file; the
//! node records and ifaces iscsiadm writes go to `/etc/iscsi`, a writable overlay in the guest).
//!
//! Drop stops both (what it started) and removes the files.

use std::fs;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::{free_port, ServerProcess};

/// Where iscsid listens for iscsiadm (an abstract unix socket, one per network namespace).
const ISCSID_SOCKET: &[u8] = b"ISCSIADM_ABSTRACT_NAMESPACE";
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The initiator name the tests log in as.
pub const TEST_INITIATOR: &str = "iqn.2026-01.org.imageapi.test:initiator";

/// A running `tgtd` on 127.0.0.1 (and `iscsid`, if the fixture had to start it).
pub struct IscsiTarget {
    dir: tempfile::TempDir,
    tgtd: Option<ServerProcess>,
    iscsid: Option<ServerProcess>,
    control_port: u16,
    port: u16,
    next_tid: u32,
}

fn iscsid_answers() -> bool {
    SocketAddr::from_abstract_name(ISCSID_SOCKET)
        .and_then(|address| UnixStream::connect_addr(&address))
        .is_ok()
}

fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + START_TIMEOUT;
    while !ready() {
        assert!(
            Instant::now() < deadline,
            "{what} not ready within {START_TIMEOUT:?}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

fn log_file(path: &Path) -> fs::File {
    fs::File::create(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

impl IscsiTarget {
    /// Starts tgtd on a free port of 127.0.0.1, and iscsid unless one answers already.
    pub fn start() -> IscsiTarget {
        let dir = tempfile::Builder::new()
            .prefix("imageapi-iscsi-")
            .tempdir()
            .expect("temp dir");
        let port = free_port();
        // tgtd's control socket is abstract and named by this number: one of its own.
        let control_port = 1000 + (std::process::id() % 30000) as u16;
        let mut tgtd = Command::new("tgtd");
        tgtd.args(["-f", "-C", &control_port.to_string(), "--iscsi"])
            .arg(format!("portal=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log_file(&dir.path().join("tgtd.log")))
            .stderr(log_file(&dir.path().join("tgtd.err")))
            // Daemons may signal their whole process group (iscsid's kill(0, SIGTERM)).
            .process_group(0);
        let tgtd = ServerProcess::spawn(&mut tgtd).expect("spawn tgtd (Debian package tgt)");
        let mut target = IscsiTarget {
            dir,
            tgtd: Some(tgtd),
            iscsid: None,
            control_port,
            port,
            next_tid: 1,
        };
        wait_until("tgtd", || {
            target
                .tgtadm_status(&["--op", "show", "--mode", "sys"])
                .is_ok()
        });
        if !iscsid_answers() {
            target.start_iscsid();
        }
        target
    }

    fn start_iscsid(&mut self) {
        let conf = self.dir.path().join("iscsid.conf");
        let name = self.dir.path().join("initiatorname.iscsi");
        fs::write(&conf, "node.startup = manual\n").unwrap();
        fs::write(&name, format!("InitiatorName={TEST_INITIATOR}\n")).unwrap();
        let mut iscsid = Command::new("iscsid");
        iscsid
            .arg("-f")
            .arg("-n")
            .arg("-c")
            .arg(&conf)
            .arg("-i")
            .arg(&name)
            .stdin(Stdio::null())
            .stdout(log_file(&self.dir.path().join("iscsid.log")))
            .stderr(log_file(&self.dir.path().join("iscsid.err")))
            .process_group(0);
        self.iscsid = Some(
            ServerProcess::spawn(&mut iscsid).expect("spawn iscsid (Debian package open-iscsi)"),
        );
        wait_until("iscsid", iscsid_answers);
    }

    /// The portal's TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The fixture's temp dir (LUN files may go there).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn tgtadm_status(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("tgtadm")
            .args(["-C", &self.control_port.to_string(), "--lld", "iscsi"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("tgtadm: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "tgtadm {args:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    fn tgtadm(&self, args: &[&str]) -> String {
        self.tgtadm_status(args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Adds target `iqn` whose LUN `lun` is each `(lun, file)` of `luns`, open to every
    /// initiator.
    pub fn add_target(&mut self, iqn: &str, luns: &[(u64, &Path)]) -> u32 {
        let tid = self.next_tid;
        self.next_tid += 1;
        let tid_arg = tid.to_string();
        self.tgtadm(&[
            "--op", "new", "--mode", "target", "--tid", &tid_arg, "-T", iqn,
        ]);
        for (lun, file) in luns {
            self.tgtadm(&[
                "--op",
                "new",
                "--mode",
                "logicalunit",
                "--tid",
                &tid_arg,
                "--lun",
                &lun.to_string(),
                "--backing-store",
                &file.display().to_string(),
            ]);
        }
        self.tgtadm(&[
            "--op", "bind", "--mode", "target", "--tid", &tid_arg, "-I", "ALL",
        ]);
        tid
    }

    /// Makes target `tid` require CHAP with `user` and `secret`.
    pub fn require_chap(&self, tid: u32, user: &str, secret: &str) {
        self.tgtadm(&[
            "--op",
            "new",
            "--mode",
            "account",
            "--user",
            user,
            "--password",
            secret,
        ]);
        self.tgtadm(&[
            "--op",
            "bind",
            "--mode",
            "account",
            "--tid",
            &tid.to_string(),
            "--user",
            user,
        ]);
    }

    /// Kills tgtd: the target dies with every session to it.
    pub fn kill_target(&mut self) {
        if let Some(mut tgtd) = self.tgtd.take() {
            let _ = tgtd.kill();
        }
    }

    /// The request body of an iscsi attachment of `lun` of target `iqn` here, with `extra`
    /// fields of the `iscsi` object.
    pub fn attach_body(&self, iqn: &str, lun: u64, extra: Value) -> Value {
        let mut iscsi = json!({
            "initiator": TEST_INITIATOR,
            "target": iqn,
            "host": "127.0.0.1",
            "port": self.port,
            "lun": lun,
        });
        if let Value::Object(extra) = extra {
            for (key, value) in extra {
                iscsi[key] = value;
            }
        }
        json!({ "kind": "iscsi", "iscsi": iscsi })
    }
}

impl Drop for IscsiTarget {
    /// What a failed test left (sessions to this target, their records, ifaces of services no
    /// session uses) goes first, so that it does not fail the next test; then the daemons.
    fn drop(&mut self) {
        for session in iscsi_sessions_to(self.port) {
            let number = session.trim_start_matches("session");
            let _ = iscsiadm(&["-m", "session", "-r", number, "-u"]);
        }
        let portal = format!("127.0.0.1:{}", self.port);
        let _ = iscsiadm(&["-m", "node", "-p", &portal, "-o", "delete"]);
        let used: Vec<String> = iscsi_sessions()
            .iter()
            .filter_map(|session| iscsi_session_attr(session, "ifacename"))
            .collect();
        let (_, ifaces) = iscsiadm(&["-m", "iface"]);
        for iface in ifaces
            .lines()
            .filter_map(|line| line.split_whitespace().next())
        {
            if iface.starts_with("imageapi-") && !used.iter().any(|u| u == iface) {
                let _ = iscsiadm(&["-m", "iface", "-I", iface, "-o", "delete"]);
            }
        }
        self.kill_target();
        if let Some(mut iscsid) = self.iscsid.take() {
            if let Err(e) = iscsid.terminate(Duration::from_secs(10)) {
                eprintln!("iscsi fixture: {e}");
            }
        }
    }
}

/// The iSCSI sessions the kernel has (`sessionN` of `/sys/class/iscsi_session`).
pub fn iscsi_sessions() -> Vec<String> {
    let mut sessions: Vec<String> = fs::read_dir("/sys/class/iscsi_session")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().into_string().ok())
        .collect();
    sessions.sort();
    sessions
}

/// One attribute of an iSCSI session.
pub fn iscsi_session_attr(session: &str, name: &str) -> Option<String> {
    fs::read_to_string(
        Path::new("/sys/class/iscsi_session")
            .join(session)
            .join(name),
    )
    .ok()
    .map(|value| value.trim().to_string())
}

/// The sessions connected to port `port` (of any address).
pub fn iscsi_sessions_to(port: u16) -> Vec<String> {
    iscsi_sessions()
        .into_iter()
        .filter(|session| {
            let number = session.trim_start_matches("session");
            let port_file = format!("/sys/class/iscsi_connection/connection{number}:0/port");
            fs::read_to_string(port_file).is_ok_and(|p| p.trim() == port.to_string())
        })
        .collect()
}

/// The sessions whose `ifacename` starts with `prefix`.
pub fn iscsi_sessions_of(prefix: &str) -> Vec<String> {
    iscsi_sessions()
        .into_iter()
        .filter(|s| iscsi_session_attr(s, "ifacename").is_some_and(|i| i.starts_with(prefix)))
        .collect()
}

/// `iscsiadm` with `args`: its status code and its stdout and stderr.
pub fn iscsiadm(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new("iscsiadm")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run iscsiadm");
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The node records (`iscsiadm -m node`) and ifaces (`iscsiadm -m iface`) the service made
/// (their iface names start with `imageapi-`).
pub fn iscsi_records_of_service() -> Vec<String> {
    let mut found = Vec::new();
    let (_, nodes) = iscsiadm(&["-m", "node", "-P", "1"]);
    found.extend(
        nodes
            .lines()
            .filter(|line| line.trim().starts_with("Iface Name: imageapi-"))
            .map(|line| format!("node record {}", line.trim())),
    );
    let (_, ifaces) = iscsiadm(&["-m", "iface"]);
    found.extend(
        ifaces
            .lines()
            .filter(|line| line.starts_with("imageapi-"))
            .map(|line| format!("iface {line}")),
    );
    found
}

/// The sysfs dir of the disk of device file `/dev/sdX`: `/sys/class/block/sdX`.
pub fn block_sysfs_dir(device_file: &str) -> PathBuf {
    PathBuf::from("/sys/class/block").join(Path::new(device_file).file_name().expect("a /dev path"))
}
