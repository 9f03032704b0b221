//! The guest suite of the `rbd` kind (see `tests/vm/run.sh`): images mapped by the guest
//! kernel's krbd from a single-node Ceph cluster the tests start on the guest's loopback
//! ([`CephCluster`]). Kraken's exact request boots the Debian systemd image from an rbd image;
//! an ext4 image is written and read back; failures are bounded and roll back; mappings are
//! adopted after a restart and a SIGKILL; a forced delete from a dead cluster is quick; and the
//! secret shows nowhere. Every test leaves `/sys/bus/rbd/devices` as it found it.

mod common;

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const POOL: &str = "rbd";
/// How long systemd may take to boot under software emulation.
const BOOT_TIMEOUT: Duration = Duration::from_secs(600);
/// How long the container may take to stop after PATCH exited.
const STOP_TIMEOUT: Duration = Duration::from_secs(120);
/// The driver's default `mount_timeout` (docs/drivers/rbd.md).
const DEFAULT_MOUNT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a forced release waits for the kernel's unmap before it answers.
const FORCED_UNMAP_WAIT: Duration = Duration::from_secs(5);
/// How long the kernel's unmap of a device whose cluster has gone may take: a few of its
/// requests to the cluster time out one after another (`osd_request_timeout`, 30 s each).
const DEAD_CLUSTER_UNMAP: Duration = Duration::from_secs(300);
/// What a failing map may take beyond its `mount_timeout` (the kernel's retries, the service).
const SLACK: Duration = Duration::from_secs(8);
/// An address on the loopback where no monitor listens: connections to it are refused.
const NO_MONITOR: &str = "127.0.0.2";

fn rbd_devices() -> Vec<String> {
    let mut ids: Vec<String> = fs::read_dir("/sys/bus/rbd/devices")
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

fn assert_nothing_mapped() {
    assert_eq!(
        rbd_devices(),
        Vec::<String>::new(),
        "rbd devices left mapped"
    );
}

/// An rbd attachment of `pool/image` in `cluster` with its admin credentials and `extra`
/// options.
fn rbd_attach(cluster: &CephCluster, image: &str, extra: Value) -> Value {
    rbd_attach_with(
        &[cluster.monitor()],
        cluster.user(),
        cluster.key(),
        image,
        extra,
    )
}

fn rbd_attach_with(monitors: &[String], user: &str, key: &str, image: &str, extra: Value) -> Value {
    let mut options = json!({ "name": user, "secret": key });
    if let Value::Object(extra) = extra {
        options.as_object_mut().unwrap().extend(extra);
    }
    json!({ "kind": "rbd", "rbd": {
        "monitors": monitors, "pool": POOL, "image": image, "options": options,
    }})
}

fn device_id_of(attach: &Value) -> i64 {
    attach["rbd"]["device_id"]
        .as_i64()
        .unwrap_or_else(|| panic!("no rbd.device_id in {attach}"))
}

fn read_head(device: &str, len: usize) -> Vec<u8> {
    let mut head = vec![0; len];
    fs::File::open(device)
        .and_then(|mut f| f.read_exact(&mut head))
        .unwrap_or_else(|e| panic!("read {device}: {e}"));
    head
}

/// The Debian systemd image the host suite builds (`tests/vm/run.sh` builds it before the
/// guest boots: the guest's view of `target/` is read-only and has no network).
fn debian_image() -> PathBuf {
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("target dir")
        .join("test-images");
    let cached = cache.join(format!("{IMAGE_NAME}.squashfs"));
    if cached.exists() {
        return cached;
    }
    debian_systemd_image(&cache)
}

fn container_state(svc: &Service, name: &str) -> String {
    let list = svc.list(&format!("/container?name={name}"));
    list[0]["state"].as_str().unwrap_or_default().to_string()
}

#[test]
#[ignore = "needs the guest kernel: tests/vm/run.sh"]
fn maps_a_real_image_and_kraken_boots_a_node_from_one() {
    let started = Instant::now();
    let cluster = CephCluster::start();
    cluster.create_pool(POOL);
    let svc = Service::start_with_http();
    let small = squashfs_image(svc.dir(), "small");
    cluster.import_image(POOL, "small", &small);
    let debian = debian_image();
    cluster.import_image(POOL, "debian", &debian);
    let ready = started.elapsed();

    // A plain map: the device and its id, and the image's bytes through it.
    let mapping = Instant::now();
    let attach = svc.create("attach", &rbd_attach(&cluster, "small", json!({})));
    println!("mapped in {:.1?}", mapping.elapsed());
    let device = device_of(&attach);
    let id = device_id_of(&attach);
    assert_eq!(device, format!("/dev/rbd{id}"), "{attach}");
    assert_eq!(rbd_devices(), vec![id.to_string()]);
    assert_eq!(
        read_head(&device, 4),
        b"hsqs",
        "squashfs magic through {device}"
    );
    assert_eq!(
        fs::read_to_string(format!("/sys/bus/rbd/devices/{id}/name"))
            .unwrap()
            .trim(),
        "small"
    );
    let listed = svc.list("/attach?kind=rbd");
    assert_eq!(listed.len(), 1);
    assert_eq!(device_id_of(&listed[0]), id);
    assert_eq!(listed[0]["rbd"]["options"]["secret"], "<redacted>");
    svc.remove("attach", id_of(&attach));
    assert_nothing_mapped();
    assert!(
        !Path::new(&device).exists(),
        "{device} outlived its mapping"
    );

    // Kraken's request: container -> overlay -> attach mount (squashfs, ro) -> rbd attach.
    let rbd = rbd_attach(&cluster, "debian", json!({}));
    let request = json!({
        "name": "kraken-node",
        "command": "/lib/systemd/systemd",
        "systemd": true,
        "namespaces": ["cgroup", "ipc", "mnt", "pid", "uts"],
        "state": "running",
        "mount": overlay(vec![attach_mount(rbd, "squashfs", &["ro"])]),
    });
    let creating = Instant::now();
    let addr = svc.http_addr().expect("http");
    let resp = http_request(
        &Transport::Tcp(addr),
        "POST",
        &format!("{BASE}/container"),
        Some("application/json"),
        Some(request.to_string().as_bytes()),
    );
    assert_eq!(resp.status, 201, "{resp}");
    let created = resp.json();
    let create_time = creating.elapsed();
    assert_eq!(created["state"], "running", "{created}");
    let log = PathBuf::from(str_of(&created, "/logfile"));
    let pid = init_pid(&log);
    let state = SystemdContainer {
        pid,
        log: log.clone(),
    }
    .wait_until_booted(BOOT_TIMEOUT);
    let boot_time = creating.elapsed();
    assert_eq!(
        state,
        "running",
        "systemd state\n{}",
        fs::read_to_string(&log).unwrap_or_default()
    );
    assert_eq!(rbd_devices().len(), 1);

    let stopping = Instant::now();
    let patched = svc.request("PATCH", "/container?name=kraken-node&state=exited", None);
    assert_eq!(patched.status, 200, "{patched}");
    assert!(
        wait_for(STOP_TIMEOUT, || container_state(&svc, "kraken-node")
            == "exited"),
        "kraken-node did not exit within {STOP_TIMEOUT:?}"
    );
    let stop_time = stopping.elapsed();
    let deleted = svc.delete("/container?name=kraken-node");
    assert_eq!(deleted.status, 200, "{deleted}");
    assert_nothing_mapped();
    assert!(
        mounts_under(svc.dir()).is_empty(),
        "{:?}",
        mounts_under(svc.dir())
    );
    svc.assert_empty();
    assert_no_leaks(svc.dir());
    println!(
        "cluster and images ready after {ready:.1?}; container created in {create_time:.1?}, \
         systemd running after {boot_time:.1?}, exited {stop_time:.1?} after the PATCH; \
         total {:.1?}",
        started.elapsed()
    );
}

#[test]
#[ignore = "needs the guest kernel: tests/vm/run.sh"]
fn an_ext4_image_keeps_what_was_written_and_snapshots_and_namespaces_map() {
    let cluster = CephCluster::start();
    cluster.create_pool(POOL);
    let svc = Service::start();
    let ext4 = ext4_image(svc.dir(), "data");
    cluster.import_image(POOL, "data", &ext4);

    let mount = |extra: Value| {
        svc.create(
            "mount",
            &attach_mount(rbd_attach(&cluster, "data", extra), "ext4", &[]),
        )
    };
    let first = mount(json!({}));
    let mountpoint = mountpoint_of(&first);
    fs::write(Path::new(&mountpoint).join("written.txt"), "kept on ceph\n").unwrap();
    svc.remove("mount", id_of(&first));
    assert_nothing_mapped();

    let again = mount(json!({}));
    let text = fs::read_to_string(Path::new(&mountpoint_of(&again)).join("written.txt"))
        .expect("the file written before the remap");
    assert_eq!(text, "kept on ceph\n");
    svc.remove("mount", id_of(&again));
    assert_nothing_mapped();

    // A snapshot maps read-only, at what the image held when it was taken.
    cluster.snapshot(POOL, "data", "v1");
    let mut snap = rbd_attach(&cluster, "data", json!({}));
    snap["rbd"]["snapshot"] = json!("v1");
    let snap = svc.create("attach", &snap);
    let id = device_id_of(&snap);
    assert_eq!(snap["rbd"]["snapshot"], "v1");
    assert_eq!(
        fs::read_to_string(format!("/sys/bus/rbd/devices/{id}/current_snap"))
            .unwrap()
            .trim(),
        "v1"
    );
    assert_eq!(
        fs::read_to_string(format!("/sys/block/rbd{id}/ro"))
            .unwrap()
            .trim(),
        "1",
        "a snapshot maps read-only"
    );
    svc.remove("attach", id_of(&snap));

    // An image in a namespace, with options of every type on the way.
    cluster.create_namespace(POOL, "kraken");
    let small = squashfs_image(svc.dir(), "ns");
    cluster.rbd(&[
        "import",
        "--no-progress",
        small.to_str().unwrap(),
        &format!("{POOL}/kraken/ns"),
    ]);
    let in_ns = svc.create(
        "attach",
        &rbd_attach(
            &cluster,
            "ns",
            json!({ "namespace": "kraken", "ro": true, "queue_depth": 32, "noshare": true,
                    "osd_idle_ttl": 30, "mount_timeout": 20 }),
        ),
    );
    let id = device_id_of(&in_ns);
    assert_eq!(
        fs::read_to_string(format!("/sys/bus/rbd/devices/{id}/pool_ns"))
            .unwrap()
            .trim(),
        "kraken"
    );
    assert_eq!(read_head(&device_of(&in_ns), 4), b"hsqs");
    svc.remove("attach", id_of(&in_ns));
    assert_nothing_mapped();
    svc.assert_empty();
    assert_no_leaks(svc.dir());
}

#[test]
#[ignore = "needs the guest kernel: tests/vm/run.sh"]
fn failures_are_bounded_say_why_and_roll_back() {
    let cluster = CephCluster::start();
    cluster.create_pool(POOL);
    let svc = Service::start();
    let small = squashfs_image(svc.dir(), "small");
    cluster.import_image(POOL, "small", &small);

    let check_failure = |body: &Value, status: u16, words: &[&str]| -> Duration {
        let started = Instant::now();
        let resp = svc.post("/attach", body);
        let took = started.elapsed();
        let err = assert_nested_failure(&resp, "attach", Some("rbd"));
        assert_eq!(resp.status, status, "{resp}");
        let reason = err["reason"].as_str().unwrap();
        for word in words {
            assert!(reason.contains(word), "{word:?} not in {resp}");
        }
        assert_nothing_mapped();
        svc.assert_empty();
        took
    };

    // A key the cluster does not know.
    let wrong = rbd_attach_with(
        &[cluster.monitor()],
        cluster.user(),
        &cluster.unknown_key(),
        "small",
        json!({}),
    );
    let took = check_failure(&wrong, 422, &["credentials"]);
    println!("wrong secret refused in {took:.1?}");
    // An image or a pool that does not exist.
    let took = check_failure(&rbd_attach(&cluster, "nope", json!({})), 422, &["no such"]);
    println!("missing image refused in {took:.1?}");
    let mut no_pool = rbd_attach(&cluster, "small", json!({}));
    no_pool["rbd"]["pool"] = json!("nopool");
    check_failure(&no_pool, 422, &["no such"]);
    // A monitor nobody answers at: bounded by the default mount_timeout.
    let unreachable = rbd_attach_with(
        &[NO_MONITOR.to_string()],
        cluster.user(),
        cluster.key(),
        "small",
        json!({}),
    );
    let took = check_failure(&unreachable, 504, &["mount_timeout=10s", NO_MONITOR]);
    println!("unreachable monitor answered in {took:.1?}");
    assert!(
        took < DEFAULT_MOUNT_TIMEOUT + SLACK,
        "the unreachable monitor took {took:.1?}"
    );
    // Nested: the mount and its mountpoint go with the failed map.
    let nested = svc.post(
        "/mount",
        &attach_mount(unreachable.clone(), "squashfs", &["ro"]),
    );
    assert_nested_failure(&nested, "attach", Some("rbd"));
    assert_eq!(nested.status, 504, "{nested}");
    assert_nothing_mapped();
    svc.assert_empty();
    assert!(mounts_under(svc.dir()).is_empty());

    // A map that hangs (on monitors that do not answer) holds up no other request.
    let hanging = {
        let body = unreachable.clone();
        let socket = svc.dir().join("api.sock");
        thread::spawn(move || {
            let transport = Transport::Unix(socket);
            http_request(
                &transport,
                "POST",
                &format!("{BASE}/attach"),
                Some("application/json"),
                Some(body.to_string().as_bytes()),
            )
        })
    };
    thread::sleep(Duration::from_secs(2));
    let listing = Instant::now();
    let list = svc.get("/attach");
    let list_time = listing.elapsed();
    assert_eq!(list.status, 200, "{list}");
    assert!(
        list_time < Duration::from_secs(2),
        "GET /attach took {list_time:.1?} while a map hung"
    );
    // A map of a reachable image meanwhile: the kernel itself makes it wait for the hanging
    // one's client (krbd creates clients under one mutex); measured, not required.
    let concurrent = Instant::now();
    let other = svc.create("attach", &rbd_attach(&cluster, "small", json!({})));
    println!(
        "GET /attach answered in {list_time:.2?} and a reachable map took {:.1?} while another map hung",
        concurrent.elapsed()
    );
    let hung = hanging.join().unwrap();
    assert_eq!(hung.status, 504, "{hung}");
    svc.remove("attach", id_of(&other));
    assert_nothing_mapped();
    svc.assert_empty();
    assert_no_leaks(svc.dir());
}

#[test]
#[ignore = "needs the guest kernel: tests/vm/run.sh"]
fn mappings_survive_restarts_secrets_show_nowhere_and_a_dead_cluster_lets_go_quickly() {
    let mut cluster = CephCluster::start();
    cluster.create_pool(POOL);
    let mut svc = Service::start_with(ServiceOptions {
        keep_objects: true,
        log_level: Some("TRACE"),
        ..ServiceOptions::default()
    });
    let small = squashfs_image(svc.dir(), "small");
    cluster.import_image(POOL, "small", &small);
    let mut answers = Vec::new();

    let mount = svc.create(
        "mount",
        &attach_mount(
            rbd_attach(&cluster, "small", json!({})),
            "squashfs",
            &["ro"],
        ),
    );
    answers.push(mount.to_string());
    let attach = svc.list("/attach").remove(0);
    let device = device_of(&attach);
    let id = device_id_of(&attach);
    let mountpoint = mountpoint_of(&mount);

    // A restart and a SIGKILL: the same mapping, listed with the same device.
    for crash in [false, true] {
        if crash {
            svc.crash_and_restart(true);
        } else {
            svc.restart(true);
        }
        let listed = svc.list("/attach");
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert_eq!(device_of(&listed[0]), device);
        assert_eq!(device_id_of(&listed[0]), id);
        assert_eq!(rbd_devices(), vec![id.to_string()]);
        assert!(is_mounted(&mountpoint));
        answers.push(Value::Array(listed).to_string());
        answers.push(Value::Array(svc.list("/mount")).to_string());
    }
    // Failures carry no secret either.
    for body in [
        rbd_attach(&cluster, "nope", json!({})),
        rbd_attach_with(
            &[NO_MONITOR.into()],
            "admin",
            cluster.key(),
            "small",
            json!({ "mount_timeout": 3 }),
        ),
    ] {
        answers.push(svc.post("/attach", &body).body);
    }

    // The cluster dies; a forced delete still answers within seconds, and the device goes
    // once the kernel's requests to the cluster have timed out.
    cluster.kill();
    let deleting = Instant::now();
    let deleted = svc.delete(&format!("/mount?id={}&force=true", id_of(&mount)));
    let delete_time = deleting.elapsed();
    assert_eq!(deleted.status, 200, "{deleted}");
    assert!(
        delete_time < FORCED_UNMAP_WAIT + SLACK,
        "the forced delete took {delete_time:.1?}"
    );
    assert!(!is_mounted(&mountpoint));
    svc.assert_empty();
    // The kernel drops the device from sysfs first, and returns from the unmap request (which
    // the service logs) once its requests to the cluster have timed out.
    let gone = wait_for(DEAD_CLUSTER_UNMAP, || rbd_devices().is_empty());
    let gone_after = deleting.elapsed();
    assert!(
        gone,
        "still mapped {DEAD_CLUSTER_UNMAP:?} after the forced delete"
    );
    let returned = wait_for(DEAD_CLUSTER_UNMAP, || {
        svc.stderr_log().contains("rbd device unmapped")
    });
    println!(
        "forced delete from a dead cluster answered in {delete_time:.1?}; the device left \
         sysfs {gone_after:.1?} and the kernel's unmap returned {:.1?} after the delete",
        deleting.elapsed()
    );
    assert!(
        returned,
        "the kernel's unmap did not return within {DEAD_CLUSTER_UNMAP:?}"
    );

    let key = cluster.key().to_string();
    let log = svc.stderr_log();
    assert!(
        log.contains(" TRACE "),
        "the service did not log at TRACE level"
    );
    assert!(!log.contains(&key), "the secret is in the service log");
    for answer in &answers {
        assert!(!answer.contains(&key), "the secret came back: {answer}");
    }
    for entry in walk(&svc.dir().join("state")) {
        let bytes = fs::read(&entry).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&bytes).contains(&key),
            "the secret is in the state store: {}",
            entry.display()
        );
    }
    svc.stop_ok();
    assert_no_leaks(svc.dir());
}

/// Every file below `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return files;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}
