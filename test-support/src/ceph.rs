//! A single-node Ceph cluster for tests that map rbd images: one monitor, one manager and one
//! OSD on memstore, listening on one loopback address only (msgr v1, which krbd speaks by
//! default), with cephx and its own config, keyrings and data in a temp dir.
//!
//! [`CephCluster::start`] brings it up and panics with the daemons' logs when it does not
//! come up in time; Drop kills the daemons and removes the dir (also when the test panics).
//! Needs the Debian packages ceph-mon, ceph-mgr, ceph-osd and ceph-common.

use std::fs;
use std::io::Read;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// The port krbd connects to when a monitor address has none (msgr v1).
pub const CEPH_MON_PORT: u16 = 6789;

/// How long one `ceph` or `rbd` command may take. Generous: under software emulation the first
/// write to a new pool waits for its placement groups to peer.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(240);

/// The memstore OSD's capacity: room for the test images (it lives in memory).
const OSD_BYTES: u64 = 768 << 20;

/// A running single-node cluster. See the module docs.
pub struct CephCluster {
    dir: Option<tempfile::TempDir>,
    root: PathBuf,
    conf: PathBuf,
    address: Ipv4Addr,
    admin_key: String,
    daemons: Vec<(String, Child)>,
}

impl CephCluster {
    /// Starts a cluster whose monitor listens on 127.0.0.1:6789.
    pub fn start() -> CephCluster {
        CephCluster::start_on(Ipv4Addr::LOCALHOST, CEPH_MON_PORT)
    }

    /// Starts a cluster whose monitor listens on `address:port` (the OSD on the same address).
    pub fn start_on(address: Ipv4Addr, port: u16) -> CephCluster {
        assert!(address.is_loopback(), "test clusters stay on loopback");
        let started = Instant::now();
        let dir = tempfile::Builder::new()
            .prefix("imageapi-ceph-")
            .tempdir()
            .expect("temp dir for the ceph cluster");
        let root = fs::canonicalize(dir.path()).expect("canonical temp dir");
        let fsid = uuid();
        let conf = root.join("ceph.conf");
        fs::write(&conf, config(&root, &fsid, address, port)).expect("write ceph.conf");
        for sub in ["run", "log", "crash", "mon-a", "mgr-x", "osd-0"] {
            fs::create_dir_all(root.join(sub)).expect("cluster dir");
        }
        let mut cluster = CephCluster {
            dir: Some(dir),
            root,
            conf,
            address,
            admin_key: String::new(),
            daemons: Vec::new(),
        };
        cluster.make_monitor(&fsid, address, port);
        cluster.spawn("mon.a", Command::new("ceph-mon").args(["-i", "a", "-f"]));
        cluster.spawn("mgr.x", Command::new("ceph-mgr").args(["-i", "x", "-f"]));
        let osd_uuid = uuid();
        // The first command waits for the monitor (`--connect-timeout`).
        let id = cluster.ceph(&["osd", "new", &osd_uuid]);
        assert_eq!(id.trim(), "0", "ceph osd new answered {id:?}");
        let mon_up = started.elapsed();
        cluster.tool("ceph-osd", &["-i", "0", "--mkfs", "--osd-uuid", &osd_uuid]);
        cluster.spawn("osd.0", Command::new("ceph-osd").args(["-i", "0", "-f"]));
        println!(
            "ceph cluster on {address}:{port}: monitor answered after {mon_up:.1?}, OSD started after {:.1?}",
            started.elapsed()
        );
        cluster
    }

    /// The monitor's address, as an rbd attachment's `monitors` names it.
    pub fn monitor(&self) -> String {
        self.address.to_string()
    }

    /// The cephx user the tests map with (`client.admin`), as rbd_options `name` gives it.
    pub fn user(&self) -> &'static str {
        "admin"
    }

    /// The base64 cephx key of [`Self::user`], as rbd_options `secret` gives it.
    pub fn key(&self) -> &str {
        &self.admin_key
    }

    /// A well-formed cephx key the cluster does not know.
    pub fn unknown_key(&self) -> String {
        self.tool("ceph-authtool", &["--gen-print-key"])
            .trim()
            .to_string()
    }

    /// The cluster's dir (config, keyrings, daemon data and logs).
    pub fn dir(&self) -> &Path {
        &self.root
    }

    /// Creates a replicated pool of size 1 and tags it for rbd.
    pub fn create_pool(&self, pool: &str) {
        let started = Instant::now();
        self.ceph(&["osd", "pool", "create", pool, "8", "8"]);
        self.rbd(&["pool", "init", pool]);
        println!("pool {pool} created in {:.1?}", started.elapsed());
    }

    /// Creates a namespace in `pool`.
    pub fn create_namespace(&self, pool: &str, namespace: &str) {
        self.rbd(&["namespace", "create", &format!("{pool}/{namespace}")]);
    }

    /// Copies `file` into a new image `pool/image` (`rbd import`).
    pub fn import_image(&self, pool: &str, image: &str, file: &Path) {
        let started = Instant::now();
        let file = file.to_str().expect("utf-8 image path");
        self.rbd(&["import", "--no-progress", file, &format!("{pool}/{image}")]);
        println!(
            "{file} imported as {pool}/{image} in {:.1?}",
            started.elapsed()
        );
    }

    /// Takes snapshot `snap` of `pool/image`.
    pub fn snapshot(&self, pool: &str, image: &str, snap: &str) {
        self.rbd(&["snap", "create", &format!("{pool}/{image}@{snap}")]);
    }

    /// Runs `rbd` against the cluster; answers its stdout.
    pub fn rbd(&self, args: &[&str]) -> String {
        self.tool("rbd", args)
    }

    /// Runs `ceph` against the cluster; answers its stdout.
    pub fn ceph(&self, args: &[&str]) -> String {
        let mut all = vec!["--connect-timeout", "60"];
        all.extend_from_slice(args);
        self.tool("ceph", &all)
    }

    /// Kills every daemon: the cluster is gone (as when its nodes die), its dir stays until
    /// drop.
    pub fn kill(&mut self) {
        for (_, child) in &mut self.daemons {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.daemons.clear();
    }

    fn path(&self, name: &str) -> String {
        self.root.join(name).display().to_string()
    }

    fn make_monitor(&mut self, fsid: &str, address: Ipv4Addr, port: u16) {
        let mon_keyring = self.path("mon.a.keyring");
        let admin_keyring = self.path("client.admin.keyring");
        self.tool(
            "ceph-authtool",
            &[
                "--create-keyring",
                &mon_keyring,
                "--gen-key",
                "-n",
                "mon.",
                "--cap",
                "mon",
                "allow *",
            ],
        );
        self.tool(
            "ceph-authtool",
            &[
                "--create-keyring",
                &admin_keyring,
                "--gen-key",
                "-n",
                "client.admin",
                "--cap",
                "mon",
                "allow *",
                "--cap",
                "osd",
                "allow *",
                "--cap",
                "mgr",
                "allow *",
            ],
        );
        // The daemons' keys go into the monitor's first keyring, so that no command has to
        // add them (each `ceph` command costs seconds under emulation).
        for (name, caps) in [
            ("mgr.x", &["mon", "allow profile mgr", "osd", "allow *"][..]),
            (
                "osd.0",
                &[
                    "mon",
                    "allow profile osd",
                    "mgr",
                    "allow profile osd",
                    "osd",
                    "allow *",
                ][..],
            ),
        ] {
            let keyring = self.path(&format!("{name}.keyring"));
            let mut args = vec!["--create-keyring", &keyring, "--gen-key", "-n", name];
            for pair in caps.chunks(2) {
                args.extend(["--cap", pair[0], pair[1]]);
            }
            self.tool("ceph-authtool", &args);
            self.tool(
                "ceph-authtool",
                &[&mon_keyring, "--import-keyring", &keyring],
            );
        }
        self.tool(
            "ceph-authtool",
            &[&mon_keyring, "--import-keyring", &admin_keyring],
        );
        self.admin_key = self
            .tool(
                "ceph-authtool",
                &[&admin_keyring, "-p", "-n", "client.admin"],
            )
            .trim()
            .to_string();
        let monmap = self.path("monmap");
        self.tool(
            "monmaptool",
            &[
                "--create",
                "--fsid",
                fsid,
                "--addv",
                "a",
                &format!("[v1:{address}:{port}]"),
                &monmap,
            ],
        );
        self.tool(
            "ceph-mon",
            &[
                "--mkfs",
                "-i",
                "a",
                "--monmap",
                &monmap,
                "--keyring",
                &mon_keyring,
            ],
        );
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("CEPH_CONF", &self.conf)
            .current_dir(&self.root)
            .stdin(Stdio::null());
        cmd
    }

    fn spawn(&mut self, name: &str, cmd: &mut Command) {
        let log = fs::File::create(self.root.join("log").join(format!("{name}.out"))).unwrap();
        let child = cmd
            .env("CEPH_CONF", &self.conf)
            .current_dir(&self.root)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name} ({cmd:?}): {e}; is ceph installed?"));
        self.daemons.push((name.to_string(), child));
    }

    /// Runs a ceph tool with the cluster's config, within [`COMMAND_TIMEOUT`]; answers stdout,
    /// panics with its output and the daemons' logs when it fails.
    fn tool(&self, program: &str, args: &[&str]) -> String {
        let mut cmd = self.command(program);
        cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("run {program}: {e}; is ceph installed?"));
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for a ceph tool") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                self.fail(&format!(
                    "{program} {args:?} did not finish within {COMMAND_TIMEOUT:?}"
                ));
            }
            thread::sleep(Duration::from_millis(20));
        };
        let mut stdout = String::new();
        let mut stderr = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut stdout)
            .ok();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .ok();
        if !status.success() {
            self.fail(&format!(
                "{program} {args:?} failed with {status}: {stdout}{stderr}"
            ));
        }
        stdout
    }

    /// Panics with `what` and the tail of every daemon's log.
    fn fail(&self, what: &str) -> ! {
        let mut logs = String::new();
        if let Ok(entries) = fs::read_dir(self.root.join("log")) {
            for entry in entries.flatten() {
                let text = fs::read_to_string(entry.path()).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                logs.push_str(&format!("\n--- {} ---\n", entry.path().display()));
                for line in tail.iter().rev() {
                    logs.push_str(line);
                    logs.push('\n');
                }
            }
        }
        panic!("ceph test cluster: {what}{logs}");
    }
}

impl Drop for CephCluster {
    fn drop(&mut self) {
        self.kill();
        if let Some(dir) = self.dir.take() {
            if let Err(err) = dir.close() {
                eprintln!("remove the ceph cluster's dir: {err}");
            }
        }
    }
}

fn config(root: &Path, fsid: &str, address: Ipv4Addr, port: u16) -> String {
    let d = root.display();
    format!(
        "[global]
fsid = {fsid}
mon host = v1:{address}:{port}
mon initial members = a
public addr = {address}
ms bind msgr2 = false
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon data avail crit = 0
mon data avail warn = 0
osd crush chooseleaf type = 0
osd objectstore = memstore
memstore device bytes = {OSD_BYTES}
osd max object name len = 256
osd max object namespace len = 64
run dir = {d}/run
admin socket = {d}/run/$name.asok
log file = {d}/log/$name.log
pid file = {d}/run/$name.pid
crash dir = {d}/crash
keyring = {d}/$name.keyring
mon data = {d}/mon-$id
mgr data = {d}/mgr-$id
osd data = {d}/osd-$id
mgr initial modules =
mgr disabled modules = {MGR_DISABLED}
"
    )
}

/// Every module of Ceph 16's manager but `rbd_support`: loading them (Python) takes most of
/// a manager's start, and the tests need none.
const MGR_DISABLED: &str = "alerts balancer crash devicehealth diskprediction_local influx \
    insights iostat localpool mirroring nfs orchestrator osd_perf_query osd_support \
    pg_autoscaler progress prometheus restful selftest snap_schedule stats status telegraf \
    telemetry test_orchestrator volumes zabbix";

fn uuid() -> String {
    fs::read_to_string("/proc/sys/kernel/random/uuid")
        .expect("read a random uuid")
        .trim()
        .to_string()
}
