//! `nfs` mounts on a real kernel against a real server: the kernel's nfsd exporting a tmpfs on
//! the guest's loopback ([`NfsServer`]). Mounts read-write and read-only with the options the
//! service fills in, the seed's "loopback file on NFS" container, failures (unreachable,
//! silent, missing export) within a bounded time, DELETE with the server dead, and adoption
//! after a restart and a SIGKILL.
//!
//! Every test needs root and a kernel with nfs, nfsv4 and nfsd: run inside the guest
//! (`tests/vm/run.sh`) as `<test binary> --ignored --test-threads=1` (one NFSv4 root at a time).

mod common;

use std::fs;
use std::io::ErrorKind;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// What a mount of a dead or silent server may take: the driver's timeo=5 s and retrans=1
/// fail it after about 11 s; the guest's emulated CPU is slow.
const MOUNT_BOUND: Duration = Duration::from_secs(40);
/// What a DELETE of a mount whose server is dead may take: a connection probe (refused at
/// once), one second for the forced unmount, then it goes on while the kernel tears down.
const DEAD_DELETE_BOUND: Duration = Duration::from_secs(8);

fn nfs_mount(
    server: &NfsServer,
    path: &str,
    ro: bool,
    version: Option<&str>,
    options: &[&str],
) -> Value {
    let mut nfs = json!({ "host": server.host(), "path": path, "ro": ro, "options": options });
    if let Some(version) = version {
        nfs["version"] = json!(version);
    }
    json!({ "kind": "nfs", "nfs": nfs })
}

fn entry_of(mount: &Value) -> MountEntry {
    let mountpoint = mountpoint_of(mount);
    mount_entry(&mountpoint).unwrap_or_else(|| panic!("{mountpoint} is not mounted"))
}

fn has_super_option(entry: &MountEntry, option: &str) -> bool {
    entry.super_options.iter().any(|o| o == option)
}

fn assert_super_options(entry: &MountEntry, options: &[&str]) {
    for option in options {
        assert!(
            has_super_option(entry, option),
            "{option} not among {:?}",
            entry.super_options
        );
    }
}

/// Nothing mounted, no loop device and no mountpoint directory left by the service.
fn assert_nothing_left(svc: &Service) {
    svc.assert_empty();
    assert_no_leaks(svc.dir());
    let left: Vec<PathBuf> = fs::read_dir(svc.mount_dir())
        .map(|dir| dir.map(|entry| entry.unwrap().path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "mountpoints left: {left:?}");
}

fn timed<T>(what: &str, f: impl FnOnce() -> T) -> (T, Duration) {
    let started = Instant::now();
    let answer = f();
    let took = started.elapsed();
    eprintln!("{what}: {took:.1?}");
    (answer, took)
}

#[test]
#[ignore = "needs the guest kernel: tests/vm/run.sh"]
fn export_mounts_read_write_and_read_only_with_the_options_filled_in() {
    let server = NfsServer::start();
    fs::write(server.export_dir().join("hello.txt"), "hello over nfs\n").unwrap();
    let svc = Service::start();

    let rw = svc.create("mount", &nfs_mount(&server, "/", false, None, &[]));
    assert_eq!(rw["kind"], "nfs");
    assert_eq!(rw["nfs"]["version"], "4.2", "{rw}");
    let rw_dir = PathBuf::from(mountpoint_of(&rw));
    assert_eq!(
        fs::read_to_string(rw_dir.join("hello.txt")).unwrap(),
        "hello over nfs\n"
    );
    fs::write(rw_dir.join("written.txt"), "from the client\n").unwrap();
    assert_eq!(
        fs::read_to_string(server.export_dir().join("written.txt")).unwrap(),
        "from the client\n"
    );
    let entry = entry_of(&rw);
    assert_eq!(entry.fs_type, "nfs4");
    assert_eq!(entry.source, "127.0.0.1:/");
    assert!(entry.has_option("rw"), "{entry:?}");
    assert_super_options(
        &entry,
        &[
            "vers=4.2",
            "addr=127.0.0.1",
            "clientaddr=127.0.0.1",
            "timeo=50",
            "retrans=1",
            "hard",
        ],
    );

    let ro = svc.create(
        "mount",
        &nfs_mount(
            &server,
            "/",
            true,
            Some("4.1"),
            &["soft,timeo=30", "noexec"],
        ),
    );
    assert_eq!(ro["nfs"]["ro"], true, "{ro}");
    assert_eq!(ro["nfs"]["options"], json!(["soft,timeo=30", "noexec"]));
    let ro_dir = PathBuf::from(mountpoint_of(&ro));
    assert_eq!(
        fs::read_to_string(ro_dir.join("written.txt")).unwrap(),
        "from the client\n"
    );
    let refused = fs::write(ro_dir.join("refused.txt"), "no").unwrap_err();
    assert_eq!(refused.raw_os_error(), Some(EROFS), "{refused}");
    let entry = entry_of(&ro);
    assert!(
        entry.has_option("ro") && entry.has_option("noexec"),
        "{entry:?}"
    );
    assert_super_options(&entry, &["vers=4.1", "soft", "timeo=30", "retrans=1"]);

    assert_eq!(svc.list("/mount?kind=nfs").len(), 2);
    assert_eq!(svc.get_one("mount", id_of(&ro)), ro);
    svc.remove("mount", id_of(&rw));
    svc.remove("mount", id_of(&ro));
    assert_unmounted(rw_dir.to_str().unwrap());
    assert_unmounted(ro_dir.to_str().unwrap());
    assert_nothing_left(&svc);
}

#[test]
#[ignore = "needs the guest kernel: tests/vm/run.sh"]
fn every_version_4_mounts_as_asked() {
    let server = NfsServer::start();
    let svc = Service::start();
    for version in ["4", "4.0", "4.1", "4.2"] {
        let mount = svc.create("mount", &nfs_mount(&server, "/", true, Some(version), &[]));
        let entry = entry_of(&mount);
        eprintln!("version {version}: {:?}", entry.super_options);
        let vers = entry
            .super_options
            .iter()
            .find(|o| o.starts_with("vers="))
            .cloned()
            .unwrap_or_default();
        // 4 is the highest minor version the server offers.
        let expected = if version == "4" { "4.2" } else { version };
        assert_eq!(vers, format!("vers={expected}"));
        assert_eq!(mount["nfs"]["version"], version);
        svc.remove("mount", id_of(&mount));
    }
    assert_nothing_left(&svc);
}

#[test]
#[ignore = "needs the guest kernel: tests/vm/run.sh"]
fn version_3_mounts_with_nolock() {
    let server = NfsServer::start_v3();
    fs::write(server.export_dir().join("hello.txt"), "hello over nfs3\n").unwrap();
    let svc = Service::start();
    let export = server.export_dir().to_str().unwrap();
    let mount = svc.create("mount", &nfs_mount(&server, export, false, Some("3"), &[]));
    assert_eq!(mount["nfs"]["version"], "3");
    let dir = PathBuf::from(mountpoint_of(&mount));
    assert_eq!(
        fs::read_to_string(dir.join("hello.txt")).unwrap(),
        "hello over nfs3\n"
    );
    fs::write(dir.join("written.txt"), "v3\n").unwrap();
    assert_eq!(
        fs::read_to_string(server.export_dir().join("written.txt")).unwrap(),
        "v3\n"
    );
    let entry = entry_of(&mount);
    eprintln!("version 3: {:?}", entry.super_options);
    assert_eq!(entry.fs_type, "nfs");
    assert_super_options(
        &entry,
        &[
            "vers=3",
            "nolock",
            "addr=127.0.0.1",
            "timeo=50",
            "retrans=1",
        ],
    );
    let locked = nfs_mount(&server, export, false, Some("3"), &["lock"]);
    assert_invalid(&svc.post("/mount", &locked), "options[0]");
    svc.remove("mount", id_of(&mount));
    assert_nothing_left(&svc);
}

/// The seed's structure: container → overlay → attach mount (squashfs) → loopback of a
/// squashfs file on the nfs mount (base: mount) → nfs mount (ro).
#[test]
#[ignore = "needs the guest kernel: tests/vm/run.sh"]
fn a_container_runs_from_a_squashfs_file_on_nfs() {
    let server = NfsServer::start();
    let svc = Service::start();
    // A fresh guest may lack loop device nodes until the module is asked for.
    if !Path::new("/dev/loop-control").exists() {
        run(Command::new("modprobe").arg("loop"));
    }
    let image = busybox_image(&svc, "onnfs");
    let images = server.export_dir().join("images");
    fs::create_dir(&images).unwrap();
    fs::copy(&image, images.join("onnfs.squashfs")).unwrap();
    fs::remove_file(&image).unwrap();

    let nfs = nfs_mount(&server, "/images", true, None, &[]);
    let root = overlay(vec![attach_mount(
        loopback_in(nfs, "onnfs.squashfs"),
        "squashfs",
        &["ro"],
    )]);
    let created = svc.create(
        "container",
        &json!({
            "name": "onnfs",
            "command": "/bin/sh -c '/bin/busybox cat /hello.txt; echo ready; exec /bin/busybox sleep 1000'",
            "mount": root,
            "state": "running",
        }),
    );
    assert_eq!(created["state"], "running", "{created}");
    let logfile = str_of(&created, "/logfile").to_string();
    // The service's "started" line quotes the command: the init's own line is "ready" alone.
    let ready = wait_for(Duration::from_secs(60), || {
        fs::read_to_string(&logfile).is_ok_and(|log| log.lines().any(|line| line == "ready"))
    });
    let log = fs::read_to_string(&logfile).unwrap_or_default();
    assert!(ready, "the init never got ready: {log}");
    assert!(log.contains(&hello_text("onnfs")), "{log}");

    let mounts = svc.list("/mount");
    assert_eq!(mounts.len(), 3, "overlay, squashfs and nfs: {mounts:?}");
    let nfs_mountpoint = mounts
        .iter()
        .find(|m| m["kind"] == "nfs")
        .map(mountpoint_of)
        .expect("the nfs mount is listed");
    let attaches = svc.list("/attach");
    assert_eq!(attaches.len(), 1, "{attaches:?}");
    assert_eq!(
        loop_backing_file(&device_of(&attaches[0])),
        Some(format!("{nfs_mountpoint}/onnfs.squashfs"))
    );

    let stopping = svc.request("PATCH", "/container?name=onnfs&state=exited", None);
    assert_eq!(stopping.status, 200, "{stopping}");
    let exited = wait_for(Duration::from_secs(20), || {
        svc.get("/container?name=onnfs").json()[0]["state"] == "exited"
    });
    assert!(exited, "{}", svc.get("/container"));
    let deleted = svc.delete("/container?name=onnfs");
    assert_eq!(deleted.status, 200, "{deleted}");
    assert!(svc.list("/container").is_empty());
    assert_unmounted(&nfs_mountpoint);
    assert_nothing_left(&svc);
}

/// A TCP listener that takes connections and never answers: an NFS server that hangs.
struct SilentServer {
    port: u16,
    stop: &'static AtomicBool,
    accepter: Option<thread::JoinHandle<()>>,
}

impl SilentServer {
    fn start() -> SilentServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop: &'static AtomicBool = Box::leak(Box::new(AtomicBool::new(false)));
        let accepter = thread::spawn(move || {
            let mut held = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => held.push(stream),
                    Err(err) if err.kind() == ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(50))
                    }
                    Err(err) => panic!("accept: {err}"),
                }
            }
        });
        SilentServer {
            port,
            stop,
            accepter: Some(accepter),
        }
    }
}

impl Drop for SilentServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(accepter) = self.accepter.take() {
            let _ = accepter.join();
        }
    }
}

#[test]
#[ignore = "needs the guest kernel: tests/vm/run.sh"]
fn failures_are_bounded_name_the_stage_and_leave_nothing() {
    let server = NfsServer::start();
    let svc = Service::start();

    let (missing, took) = timed("missing export", || {
        svc.post(
            "/mount",
            &nfs_mount(&server, "/no-such-dir", false, None, &[]),
        )
    });
    let body = assert_nested_failure(&missing, "mount", Some("nfs"));
    assert_eq!(missing.status, 422, "{missing}");
    assert!(took < MOUNT_BOUND, "{took:?}");
    eprintln!("missing export: {body}");

    let closed = format!("port={}", free_port());
    let (refused, took) = timed("closed port", || {
        svc.post("/mount", &nfs_mount(&server, "/", false, None, &[&closed]))
    });
    let body = assert_nested_failure(&refused, "mount", Some("nfs"));
    assert_eq!(refused.status, 504, "{refused}");
    assert!(took < MOUNT_BOUND, "{took:?}");
    eprintln!("closed port: {body}");

    // A name the resolver does not know: the guest has no name server.
    let (unknown, took) = timed("unknown host name", || {
        svc.post(
            "/mount",
            &json!({ "kind": "nfs", "nfs": { "host": "no-such-host.invalid", "path": "/" } }),
        )
    });
    let body = assert_nested_failure(&unknown, "mount", Some("nfs"));
    assert_eq!(unknown.status, 504, "{unknown}");
    assert!(took < MOUNT_BOUND, "{took:?}");
    eprintln!("unknown host name: {body}");

    // Nested: the whole chain rolls back.
    let (nested, _) = timed("nested, closed port", || {
        svc.post(
            "/mount",
            &overlay(vec![attach_mount(
                loopback_in(
                    nfs_mount(&server, "/", true, None, &[&closed]),
                    "x.squashfs",
                ),
                "squashfs",
                &["ro"],
            )]),
        )
    });
    assert_eq!(nested.status, 504, "{nested}");
    assert_nested_failure(&nested, "mount", Some("nfs"));
    assert_nothing_left(&svc);

    // A server that takes the connection and never answers: the mount hangs in the kernel
    // until its RPCs time out, and the service answers other requests meanwhile.
    let silent = SilentServer::start();
    let hanging = format!("port={}", silent.port);
    let (answer, took, gets) = thread::scope(|scope| {
        let started = Instant::now();
        let mount =
            scope.spawn(|| svc.post("/mount", &nfs_mount(&server, "/", false, None, &[&hanging])));
        let mut gets = 0;
        while !mount.is_finished() {
            let (list, took) = timed("GET /mount during the hanging mount", || svc.get("/mount"));
            assert_eq!(list.status, 200, "{list}");
            assert!(
                took < Duration::from_secs(3),
                "GET took {took:?} during a hanging mount"
            );
            gets += 1;
            thread::sleep(Duration::from_millis(500));
        }
        (mount.join().unwrap(), started.elapsed(), gets)
    });
    eprintln!("silent server: {took:.1?}, {gets} GETs answered meanwhile");
    let body = assert_nested_failure(&answer, "mount", Some("nfs"));
    assert_eq!(answer.status, 504, "{answer}");
    assert!(took < MOUNT_BOUND, "{took:?}");
    assert!(
        gets >= 3,
        "only {gets} GETs answered during the hanging mount"
    );
    eprintln!("silent server: {body}");
    drop(silent);
    assert_nothing_left(&svc);
}

#[test]
#[ignore = "needs the guest kernel: tests/vm/run.sh"]
fn delete_of_a_mount_whose_server_died_completes_within_seconds() {
    let mut server = NfsServer::start();
    fs::write(server.export_dir().join("hello.txt"), "hello\n").unwrap();
    let svc = Service::start();
    let plain = svc.create("mount", &nfs_mount(&server, "/", false, None, &[]));
    let forced = svc.create("mount", &nfs_mount(&server, "/", true, None, &[]));
    let busy = svc.create("mount", &nfs_mount(&server, "/", true, None, &["noexec"]));
    for mount in [&plain, &forced, &busy] {
        let file = Path::new(&mountpoint_of(mount)).join("hello.txt");
        assert_eq!(fs::read_to_string(file).unwrap(), "hello\n");
    }
    let held = fs::File::open(Path::new(&mountpoint_of(&busy)).join("hello.txt")).unwrap();
    server.stop_nfsd();

    let (deleted, took) = timed("DELETE with the server dead", || {
        svc.delete(&format!("/mount?id={}", id_of(&plain)))
    });
    assert_eq!(deleted.status, 200, "{deleted}");
    assert!(took < DEAD_DELETE_BOUND, "{took:?}");
    let (deleted, took) = timed("forced DELETE with the server dead", || {
        svc.delete(&format!("/mount?id={}&force=true", id_of(&forced)))
    });
    assert_eq!(deleted.status, 200, "{deleted}");
    assert!(took < DEAD_DELETE_BOUND, "{took:?}");
    // A file open on the mount keeps it busy: it is detached, and goes with the last close.
    let (deleted, took) = timed("DELETE of a busy mount with the server dead", || {
        svc.delete(&format!("/mount?id={}&force=true", id_of(&busy)))
    });
    assert_eq!(deleted.status, 200, "{deleted}");
    assert!(took < DEAD_DELETE_BOUND, "{took:?}");
    for mount in [&plain, &forced, &busy] {
        assert_unmounted(&mountpoint_of(mount));
    }
    assert_nothing_left(&svc);
    // The mount is hard: the last close waits for the server (the kernel closes the file on
    // it), and then the kernel frees the detached mount.
    server.start_nfsd();
    timed("closing the last file of the detached mount", || drop(held));
}

#[test]
#[ignore = "needs the guest kernel: tests/vm/run.sh"]
fn nfs_mounts_are_adopted_after_a_restart_and_a_sigkill() {
    let mut server = NfsServer::start();
    fs::write(server.export_dir().join("hello.txt"), "still here\n").unwrap();
    let mut svc = Service::start_with(ServiceOptions {
        keep_objects: true,
        ..ServiceOptions::default()
    });
    let mount = svc.create("mount", &nfs_mount(&server, "/", true, None, &["soft"]));
    let mountpoint = mountpoint_of(&mount);
    let before = svc.list("/mount");

    svc.restart(true);
    assert_eq!(svc.list("/mount"), before, "adopted after a restart");
    assert!(is_mounted(&mountpoint));

    svc.crash_and_restart(false);
    assert_eq!(svc.list("/mount"), before, "adopted after a SIGKILL");
    assert_eq!(
        fs::read_to_string(Path::new(&mountpoint).join("hello.txt")).unwrap(),
        "still here\n"
    );

    // Adoption looks into no mount: a dead server does not hold up the start.
    server.stop_nfsd();
    let (_, took) = timed("restart with the server dead", || {
        svc.crash_and_restart(false)
    });
    assert!(took < Duration::from_secs(20), "{took:?}");
    assert_eq!(svc.list("/mount"), before, "adopted with the server dead");
    let (_, took) = timed("DELETE of the adopted mount, server dead", || {
        svc.remove("mount", id_of(&mount))
    });
    assert!(took < DEAD_DELETE_BOUND, "{took:?}");
    assert_unmounted(&mountpoint);
    assert_nothing_left(&svc);
}
