//! iscsi attachments against a real target: `tgtd` on loopback serving a squashfs file as a
//! LUN, logged in through open-iscsi. They need a kernel with `iscsi_tcp` and root, so they run
//! in the guest (`tests/vm/run.sh`), one at a time.
//!
//! Every test checks that nothing is left: no session of the service in
//! `/sys/class/iscsi_session`, no node record or iface of the service in iscsiadm.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const IMAGES: &str = "iqn.2026-01.org.imageapi.test:images";

/// A target with `name`.squashfs (the standard tree) as LUN `lun`.
fn squashfs_target(lun: u64) -> (IscsiTarget, PathBuf) {
    let mut target = IscsiTarget::start();
    let image = squashfs_image(target.dir(), "iscsi");
    target.add_target(IMAGES, &[(lun, &image)]);
    (target, image)
}

fn read(path: impl AsRef<Path>) -> String {
    let path = path.as_ref();
    fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Nothing of the service's iSCSI state is left: sessions, node records, ifaces.
fn assert_logged_out() {
    let sessions = iscsi_sessions_of("imageapi-");
    let records = iscsi_records_of_service();
    assert!(
        sessions.is_empty() && records.is_empty(),
        "left behind: sessions {sessions:?}, records {records:?}"
    );
}

/// The one session of the service, and its iface.
fn the_session() -> (String, String) {
    let sessions = iscsi_sessions_of("imageapi-");
    assert_eq!(sessions.len(), 1, "sessions of the service: {sessions:?}");
    let session = sessions[0].clone();
    let iface = iscsi_session_attr(&session, "ifacename").unwrap();
    (session, iface)
}

#[test]
#[ignore = "needs the guest kernel: tests/vm/run.sh"]
fn a_squashfs_lun_mounts_reads_and_logs_out() {
    let (target, _) = squashfs_target(1);
    let mut svc = Service::start();
    let body = attach_mount(
        target.attach_body(IMAGES, 1, json!({})),
        "squashfs",
        &["ro"],
    );
    let mount = svc.create("mount", &body);
    let mountpoint = mountpoint_of(&mount);
    assert_eq!(
        read(Path::new(&mountpoint).join("hello.txt")),
        hello_text("iscsi")
    );
    let attach = &mount["attach"]["attach"];
    assert_eq!(attach["kind"], json!("iscsi"));
    assert_eq!(attach["iscsi"]["target"], json!(IMAGES));
    let device = device_of(attach);
    assert!(device.starts_with("/dev/sd"), "{attach}");
    let (session, _) = the_session();
    assert_eq!(
        iscsi_session_attr(&session, "targetname").as_deref(),
        Some(IMAGES)
    );
    assert_eq!(
        iscsi_session_attr(&session, "initiatorname").as_deref(),
        Some(TEST_INITIATOR)
    );
    // Only the requested LUN has a device (tgtd's LUN 0, its controller, none).
    assert_eq!(luns_of(&session), ["1"]);
    let listed = svc.list("/attach?kind=iscsi");
    assert_eq!(listed.len(), 1, "{listed:?}");
    svc.remove("mount", id_of(&mount));
    assert_unmounted(&mountpoint);
    assert!(!Path::new(&device).exists(), "{device} is still there");
    assert_logged_out();
    svc.assert_empty();
    svc.stop_ok();
    assert_no_leaks(svc.dir());
}

#[test]
#[ignore = "needs the guest kernel: tests/vm/run.sh"]
fn lun_port_queue_sizes_and_scheduler_are_honoured() {
    let mut target = IscsiTarget::start();
    let first = squashfs_image(target.dir(), "first");
    let second = squashfs_image(target.dir(), "second");
    target.add_target(IMAGES, &[(1, &first), (3, &second)]);
    let mut svc = Service::start();
    let extra = json!({ "max_comands": 64, "queue_depth": 8, "scheduler": "none" });
    let attach = svc.create("attach", &target.attach_body(IMAGES, 3, extra));
    let device = device_of(&attach);
    let sys = block_sysfs_dir(&device);
    assert_eq!(read(sys.join("device/queue_depth")).trim(), "8");
    let scheduler = read(sys.join("queue/scheduler"));
    assert!(scheduler.contains("[none]"), "scheduler: {scheduler}");
    // LUN 3 is the second image.
    let lun = fs::canonicalize(sys.join("device")).unwrap();
    assert!(
        lun.display().to_string().ends_with(":3"),
        "{}",
        lun.display()
    );
    let size = read(sys.join("size")).trim().parse::<u64>().unwrap() * 512;
    assert_eq!(
        size,
        fs::metadata(&second).unwrap().len().div_ceil(512) * 512
    );
    // The node record has the queue sizes, the session the port.
    let (session, iface) = the_session();
    let portal = format!("127.0.0.1:{},1", target.port());
    let (status, record) = iscsiadm(&["-m", "node", "-T", IMAGES, "-p", &portal, "-I", &iface]);
    assert_eq!(status, Some(0), "{record}");
    assert!(record.contains("node.session.cmds_max = 64"), "{record}");
    assert!(record.contains("node.session.queue_depth = 8"), "{record}");
    let connection = fs::read_dir(format!("/sys/class/iscsi_session/{session}/device"))
        .unwrap()
        .flatten()
        .map(|entry| entry.file_name().into_string().unwrap())
        .find(|name| name.starts_with("connection"))
        .expect("a connection of the session");
    assert_eq!(
        read(format!("/sys/class/iscsi_connection/{connection}/port")).trim(),
        target.port().to_string()
    );
    svc.remove("attach", id_of(&attach));
    assert_logged_out();

    // A scheduler the kernel lacks: 422 naming the ones it has, and nothing left.
    let resp = svc.post(
        "/attach",
        &target.attach_body(IMAGES, 1, json!({ "scheduler": "no-such-scheduler" })),
    );
    let body = assert_nested_failure(&resp, "attach", Some("iscsi"));
    assert_eq!(resp.status, 422, "{resp}");
    let reason = body["reason"].as_str().unwrap();
    assert!(reason.contains("mq-deadline"), "{reason}");
    assert_logged_out();
    svc.assert_empty();
    svc.stop_ok();
    assert_no_leaks(svc.dir());
}

/// POSTs `body`, asserts `status` from stage iscsi within `bound`, and that nothing is left.
fn assert_fails(svc: &Service, body: &Value, status: u16, bound: Duration, says: &str) {
    let start = Instant::now();
    let resp = svc.post("/attach", body);
    let took = start.elapsed();
    eprintln!("POST answered {} in {took:?}: {}", resp.status, resp.json());
    let error = assert_nested_failure(&resp, "attach", Some("iscsi"));
    assert_eq!(resp.status, status, "{resp}");
    assert!(took < bound, "took {took:?}: {resp}");
    let reason = error["reason"].as_str().unwrap();
    assert!(reason.contains(says), "{reason:?} does not say {says:?}");
    assert_logged_out();
    svc.assert_empty();
}

#[test]
#[ignore = "needs the guest kernel: tests/vm/run.sh"]
fn unreachable_unknown_and_missing_fail_in_bounded_time_and_leave_nothing() {
    let (target, _) = squashfs_target(1);
    let svc = Service::start();
    // Nothing listens on this port of loopback.
    let closed = free_port();
    let mut unreachable = target.attach_body(IMAGES, 1, json!({}));
    unreachable["iscsi"]["port"] = json!(closed);
    assert_fails(
        &svc,
        &unreachable,
        504,
        Duration::from_secs(30),
        "127.0.0.1",
    );
    let unknown = target.attach_body("iqn.2026-01.org.imageapi.test:nope", 1, json!({}));
    assert_fails(
        &svc,
        &unknown,
        422,
        Duration::from_secs(15),
        "offers no target",
    );
    let missing = target.attach_body(IMAGES, 7, json!({}));
    assert_fails(&svc, &missing, 422, Duration::from_secs(15), "no LUN 7");
    drop(svc);
    assert_logged_out();
}

#[test]
#[ignore = "needs the guest kernel: tests/vm/run.sh"]
fn forced_delete_with_a_dead_target_completes_within_seconds() {
    let (mut target, _) = squashfs_target(1);
    let svc = Service::start();
    let body = attach_mount(
        target.attach_body(IMAGES, 1, json!({})),
        "squashfs",
        &["ro"],
    );
    let mount = svc.create("mount", &body);
    let mountpoint = mountpoint_of(&mount);
    assert_eq!(
        read(Path::new(&mountpoint).join("hello.txt")),
        hello_text("iscsi")
    );
    target.kill_target();
    let start = Instant::now();
    let resp = svc.delete(&format!("/mount?id={}&force=true", id_of(&mount)));
    let took = start.elapsed();
    eprintln!(
        "forced DELETE with a dead target answered {} in {took:?}",
        resp.status
    );
    assert_eq!(resp.status, 200, "{resp}");
    assert!(
        took < Duration::from_secs(20),
        "forced delete took {took:?}"
    );
    assert!(
        wait_for(Duration::from_secs(10), || iscsi_sessions_of("imageapi-")
            .is_empty()),
        "sessions left: {:?}",
        iscsi_sessions_of("imageapi-")
    );
    assert_logged_out();
    svc.assert_empty();
    drop(svc);
}

#[test]
#[ignore = "needs the guest kernel: tests/vm/run.sh"]
fn sessions_are_adopted_after_a_restart_and_a_sigkill() {
    let (target, _) = squashfs_target(1);
    let mut svc = Service::start_with(ServiceOptions {
        keep_objects: true,
        ..ServiceOptions::default()
    });
    let attach = svc.create("attach", &target.attach_body(IMAGES, 1, json!({})));
    let id = id_of(&attach);
    let device = device_of(&attach);
    let (session, _) = the_session();
    svc.restart(true);
    let listed = svc.get_one("attach", id);
    assert_eq!(device_of(&listed), device, "{listed}");
    assert_eq!(the_session().0, session);
    svc.crash_and_restart(true);
    let listed = svc.get_one("attach", id);
    assert_eq!(device_of(&listed), device, "{listed}");
    assert_eq!(the_session().0, session);
    // Still the LUN: it mounts.
    let mount = svc.create("mount", &attach_mount(by_id(id), "squashfs", &["ro"]));
    assert_eq!(
        read(Path::new(&mountpoint_of(&mount)).join("hello.txt")),
        hello_text("iscsi")
    );
    svc.remove("mount", id_of(&mount));
    svc.remove("attach", id);
    assert_logged_out();
    svc.assert_empty();
    svc.stop_ok();
    assert_no_leaks(svc.dir());
}

#[test]
#[ignore = "needs the guest kernel: tests/vm/run.sh"]
fn chap_logs_in_and_its_secret_appears_nowhere() {
    const SECRET: &str = "chap-secret-9f1c2a";
    let mut target = IscsiTarget::start();
    let image = squashfs_image(target.dir(), "iscsi");
    let tid = target.add_target(IMAGES, &[(1, &image)]);
    target.require_chap(tid, "node1", SECRET);
    let svc = Service::start_with(ServiceOptions {
        log_level: Some("TRACE"),
        ..ServiceOptions::default()
    });
    let mut seen = String::new();

    // Without credentials, and with a wrong secret: refused.
    let resp = svc.post("/attach", &target.attach_body(IMAGES, 1, json!({})));
    assert_nested_failure(&resp, "attach", Some("iscsi"));
    assert_eq!(resp.status, 422, "{resp}");
    let wrong = json!({ "chap": { "username": "node1", "secret": "not-the-secret-1" } });
    let resp = svc.post("/attach", &target.attach_body(IMAGES, 1, wrong));
    assert_eq!(resp.status, 422, "{resp}");
    seen.push_str(&resp.to_string());
    assert_logged_out();

    let chap = json!({ "chap": { "username": "node1", "secret": SECRET } });
    let attach = svc.create("attach", &target.attach_body(IMAGES, 1, chap.clone()));
    assert_eq!(
        attach["iscsi"]["chap"]["secret"],
        json!("<redacted>"),
        "{attach}"
    );
    assert_eq!(attach["iscsi"]["chap"]["username"], json!("node1"));
    seen.push_str(&attach.to_string());
    seen.push_str(&svc.get("/attach").to_string());
    let mount = svc.create(
        "mount",
        &attach_mount(by_id(id_of(&attach)), "squashfs", &["ro"]),
    );
    assert_eq!(
        read(Path::new(&mountpoint_of(&mount)).join("hello.txt")),
        hello_text("iscsi")
    );
    // A second attachment of the same LUN while one is logged in: its own session.
    let again = svc.post("/attach", &target.attach_body(IMAGES, 1, chap));
    seen.push_str(&again.to_string());
    assert_eq!(again.status, 201, "{again}");
    svc.remove("attach", id_of(&again.json()));
    svc.remove("mount", id_of(&mount));
    seen.push_str(&svc.remove("attach", id_of(&attach)).to_string());
    assert_logged_out();

    seen.push_str(&svc.stderr_log());
    for file in files_under(svc.dir()) {
        seen.push_str(&String::from_utf8_lossy(
            &fs::read(&file).unwrap_or_default(),
        ));
    }
    assert!(!seen.contains(SECRET), "the CHAP secret was shown");
    assert!(seen.contains("TRACE"), "the log is not at trace level");
    assert!(
        seen.contains("-v <redacted>"),
        "the log shows no CHAP command"
    );
    svc.assert_empty();
    drop(svc);
}

/// The LUNs with a SCSI device in a session (`device/target*/H:C:T:L`).
fn luns_of(session: &str) -> Vec<String> {
    let device = PathBuf::from(format!("/sys/class/iscsi_session/{session}/device"));
    let mut luns = Vec::new();
    for target in fs::read_dir(&device).unwrap().flatten() {
        if !target.file_name().to_string_lossy().starts_with("target") {
            continue;
        }
        for lun in fs::read_dir(target.path()).unwrap().flatten() {
            let name = lun.file_name().to_string_lossy().into_owned();
            if name.split(':').count() == 4 {
                luns.push(name.rsplit(':').next().unwrap().to_string());
            }
        }
    }
    luns.sort();
    luns
}

/// Every regular file under `dir` (the state store, logs, the service's output).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                dirs.push(entry.path());
            } else if kind.is_file() {
                files.push(entry.path());
            }
        }
    }
    files
}
