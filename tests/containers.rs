//! End-to-end tests of `/container` against the real binary and kernel: a busybox image packed
//! as squashfs, overlaid, and booted as an init in its own namespaces.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn busybox_overlay(svc: &Service, name: &str) -> Value {
    overlay(vec![squashfs_mount(&busybox_image(svc, name))])
}

fn container(name: &str, command: &str, mount: Value, running: bool) -> Value {
    json!({
        "name": name,
        "command": command,
        "mount": mount,
        "state": if running { "running" } else { "created" },
    })
}

fn state_of(svc: &Service, name: &str) -> String {
    let found = svc.get(&format!("/container?name={name}"));
    assert_eq!(found.status, 200, "{found}");
    found.json()[0]["state"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn wait_for_state(svc: &Service, name: &str, state: &str) {
    let reached = wait_for(Duration::from_secs(10), || state_of(svc, name) == state);
    assert!(
        reached,
        "container {name} never reached {state}: it is {}",
        state_of(svc, name)
    );
}

fn log_of(created: &Value) -> String {
    std::fs::read_to_string(str_of(created, "/logfile")).unwrap_or_default()
}

#[test]
fn init_is_pid_1_with_its_own_hostname_and_only_the_image_at_root() {
    let svc = Service::start();
    let mount = busybox_overlay(&svc, "pid1");
    let created = svc.create(
        "container",
        &container(
            "web-01",
            "/bin/sh -c 'echo pid=$$; /bin/busybox hostname; /bin/busybox ls /; exit 0'",
            mount,
            true,
        ),
    );
    assert_eq!(created["state"], "running");
    wait_for_state(&svc, "web-01", "exited");
    let log = log_of(&created);
    assert!(log.contains("pid=1"), "{log}");
    assert!(log.contains("web-01"), "{log}");
    assert!(log.contains("hello.txt"), "only the image is at /: {log}");
    assert!(
        !log.contains("vmlinuz") && !log.contains("home"),
        "host root leaked: {log}"
    );
    assert!(
        log.contains("created") && log.contains("started") && log.contains("exited"),
        "{log}"
    );
    assert_eq!(svc.get("/container?name=web-01").json()[0]["exit_code"], 0);
    svc.remove("container", id_of(&created));
    svc.assert_empty();
}

#[test]
fn exit_codes_map_to_states() {
    let svc = Service::start();
    let image = busybox_image(&svc, "codes");
    let mount = svc.create("mount", &squashfs_mount(&image));
    let failing = svc.create(
        "container",
        &container("fails", "/bin/sh -c 'exit 3'", by_id(id_of(&mount)), true),
    );
    wait_for_state(&svc, "fails", "dead");
    assert_eq!(svc.get("/container?name=fails").json()[0]["exit_code"], 3);
    // A container that exited starts again: a fresh init on the same mount.
    let again = svc.request("PATCH", "/container?name=fails&state=running", None);
    assert_eq!(again.status, 200, "{again}");
    wait_for_state(&svc, "fails", "dead");
    svc.remove("container", id_of(&failing));
    // The mount was only referenced: it stays, with its own ref.
    assert_eq!(svc.refs("mount", id_of(&mount)), 1);
    svc.remove("mount", id_of(&mount));
    svc.assert_empty();
}

#[test]
fn stop_pause_resume_and_delete_rules() {
    let svc = Service::start();
    let mount = busybox_overlay(&svc, "life");
    let created = svc.create(
        "container",
        &container("sleeper", "/bin/busybox sleep 1000", mount, false),
    );
    assert_eq!(created["state"], "created");
    let started = svc.request("PATCH", "/container?name=sleeper&state=running", None);
    assert_eq!(started.json()["state"], "running", "{started}");
    let paused = svc.request("PATCH", "/container?name=sleeper&state=paused", None);
    assert_eq!(paused.json()["state"], "paused", "{paused}");
    assert_eq!(state_of(&svc, "sleeper"), "paused");
    assert_error(&svc.delete("/container?name=sleeper"), 409);
    let resumed = svc.request("PATCH", "/container?name=sleeper&state=running", None);
    assert_eq!(resumed.json()["state"], "running", "{resumed}");
    assert_error(&svc.delete("/container?name=sleeper"), 409);
    let stopping = svc.request("PATCH", "/container?name=sleeper&state=exited", None);
    assert_eq!(stopping.status, 200, "{stopping}");
    wait_for_state(&svc, "sleeper", "exited");
    let deleted = svc.delete("/container?name=sleeper");
    assert_eq!(deleted.status, 200, "{deleted}");
    svc.assert_empty();
}

#[test]
fn forced_delete_kills_a_running_container_and_collects_its_mounts() {
    let svc = Service::start();
    let mount = busybox_overlay(&svc, "force");
    svc.create(
        "container",
        &container("victim", "/bin/busybox sleep 1000", mount, true),
    );
    let forced = svc.delete("/container?name=victim&force=true");
    assert_eq!(forced.status, 200, "{forced}");
    svc.assert_empty();
}

#[test]
fn names_are_unique_and_bad_requests_roll_back() {
    let svc = Service::start();
    let image = busybox_image(&svc, "names");
    let first = svc.create(
        "container",
        &container(
            "twin",
            "/bin/busybox sleep 1000",
            squashfs_mount(&image),
            false,
        ),
    );
    let second = svc.post(
        "/container",
        &container(
            "twin",
            "/bin/busybox sleep 1000",
            squashfs_mount(&image),
            false,
        ),
    );
    assert_error(&second, 409);
    // An init that is not in the image: 422 with the reason, and nothing of it is left.
    let missing = svc.post(
        "/container",
        &container("ghost", "/bin/nope", squashfs_mount(&image), true),
    );
    let body = assert_nested_failure(&missing, "container", Some("launch"));
    assert!(str_of(&body, "/message").contains("/bin/nope"), "{body}");
    assert_eq!(
        svc.list("/mount").len(),
        1,
        "only the first container's mount is left"
    );
    assert_invalid(
        &svc.post(
            "/container",
            &json!({"name": "bad name", "command": "x", "mount": by_id(1)}),
        ),
        "name",
    );
    assert_invalid(
        &svc.post(
            "/container",
            &json!({"command": "/bin/sh -c 'unbalanced", "mount": by_id(1)}),
        ),
        "command",
    );
    assert_error(&svc.get("/container?name=nobody"), 404);
    svc.remove("container", id_of(&first));
    svc.assert_empty();
}

/// Children of `pid` (any of its threads) that are zombies.
fn zombie_children(pid: u32) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| std::fs::read_to_string(entry.path().join("stat")).ok())
        .filter(|stat| {
            // Fields after the command name: state, then ppid.
            let after_name = stat.rsplit_once(") ").map(|(_, rest)| rest).unwrap_or("");
            let mut fields = after_name.split_whitespace();
            let state = fields.next();
            let ppid = fields.next().and_then(|p| p.parse::<u32>().ok());
            state == Some("Z") && ppid == Some(pid)
        })
        .collect()
}

#[test]
fn fifty_containers_exiting_at_once_leave_no_zombie() {
    let svc = Service::start();
    let image = busybox_image(&svc, "many");
    // One writable overlay shared by reference: a file made in it on the host releases every
    // container at the same moment.
    let shared = svc.create("mount", &overlay(vec![squashfs_mount(&image)]));
    let go = std::path::Path::new(&mountpoint_of(&shared)).join("tmp/go");
    let wait_for_go = "/bin/sh -c 'while [ ! -e /tmp/go ]; do /bin/busybox usleep 20000; done'";
    let ids: Vec<i64> = (0..50)
        .map(|i| {
            let created = svc.create(
                "container",
                &container(&format!("c{i}"), wait_for_go, by_id(id_of(&shared)), true),
            );
            id_of(&created)
        })
        .collect();
    assert_eq!(
        svc.get("/container?state=running")
            .json()
            .as_array()
            .map(Vec::len),
        Some(50)
    );
    std::fs::write(&go, "").unwrap();
    let all_exited = wait_for(Duration::from_secs(30), || {
        svc.get("/container?state=exited")
            .json()
            .as_array()
            .map(Vec::len)
            == Some(50)
    });
    assert!(all_exited, "{}", svc.get("/container"));
    let zombies = zombie_children(svc.pid());
    assert!(zombies.is_empty(), "zombies under the service: {zombies:?}");
    for id in ids {
        svc.remove("container", id);
    }
    svc.remove("mount", id_of(&shared));
    svc.assert_empty();
}

#[test]
fn namespaces_field_is_honoured() {
    let svc = Service::start();
    let image = busybox_image(&svc, "ns");
    let mount = svc.create("mount", &squashfs_mount(&image));
    let mut isolated = container(
        "netless",
        "/bin/sh -c '/bin/busybox cat /proc/net/dev; /bin/busybox hostname'",
        by_id(id_of(&mount)),
        true,
    );
    isolated["namespaces"] = json!(["net"]);
    let created = svc.create("container", &isolated);
    let mut used: Vec<&str> = created["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    used.sort();
    assert_eq!(used, ["mnt", "net", "pid"], "mnt and pid are always added");
    wait_for_state(&svc, "netless", "exited");
    let log = log_of(&created);
    let interfaces: Vec<&str> = log
        .lines()
        .filter_map(|line| line.split_once(':').map(|(name, _)| name.trim()))
        .filter(|name| !name.is_empty() && !name.contains(' ') && !name.starts_with('['))
        .filter(|name| !name.starts_with("Inter") && !name.starts_with("face"))
        .collect();
    assert_eq!(interfaces, ["lo"], "only lo in a new net namespace: {log}");
    // Without uts of its own the container keeps the host's name.
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert!(log.contains(host.trim()), "host name expected in {log}");

    let mut unknown = container("odd", "/bin/true", by_id(id_of(&mount)), false);
    unknown["namespaces"] = json!(["net", "bogus"]);
    assert_invalid(&svc.post("/container", &unknown), "namespaces");
    svc.remove("container", id_of(&created));
    svc.remove("mount", id_of(&mount));
    svc.assert_empty();
}

#[test]
fn sigterm_stops_containers_before_releasing_mounts() {
    let mut svc = Service::start();
    let mount = busybox_overlay(&svc, "term");
    svc.create(
        "container",
        &container("longrun", "/bin/busybox sleep 1000", mount, true),
    );
    svc.stop_ok();
    assert_no_leaks(svc.dir());
}

#[test]
fn ext4_root_is_writable_and_synced_when_exited() {
    let svc = Service::start();
    let image = ext4_image(svc.dir(), "rw");
    let mount = attach_mount(loopback(&image), "ext4", &[]);
    let created = svc.create(
        "container",
        &container(
            "writer",
            "/bin/sh -c 'echo written > /proof.txt; echo pid=$$'",
            mount,
            true,
        ),
    );
    wait_for_state(&svc, "writer", "exited");
    assert!(log_of(&created).contains("pid=1"), "{}", log_of(&created));
    let root = str_of(&created, "/mount/mountpoint");
    let proof = std::fs::read_to_string(std::path::Path::new(root).join("proof.txt")).unwrap();
    assert_eq!(proof, "written\n");
    svc.remove("container", id_of(&created));
    svc.assert_empty();
}

#[test]
fn concurrent_starts_launch_one_init() {
    let svc = Service::start();
    let created = svc.create(
        "container",
        &container(
            "racer",
            "/bin/busybox sleep 1000",
            busybox_overlay(&svc, "race"),
            false,
        ),
    );
    let answers: Vec<Response> = std::thread::scope(|scope| {
        let starts: Vec<_> = (0..4)
            .map(|_| {
                scope.spawn(|| svc.request("PATCH", "/container?name=racer&state=running", None))
            })
            .collect();
        starts.into_iter().map(|s| s.join().unwrap()).collect()
    });
    for answer in &answers {
        assert_eq!(answer.status, 200, "{answer}");
        assert_eq!(answer.json()["state"], "running", "{answer}");
    }
    // The service's lifecycle lines reach the log file through its writer, soon after the
    // answers: wait for the first, then give a second one time to show.
    let logfile = str_of(&created, "/logfile").to_string();
    let starts = || {
        std::fs::read_to_string(&logfile)
            .unwrap_or_default()
            .matches(": started ")
            .count()
    };
    assert!(
        wait_for(Duration::from_secs(5), || starts() > 0),
        "no start in the log"
    );
    std::thread::sleep(Duration::from_millis(200));
    let log = std::fs::read_to_string(&logfile).unwrap();
    assert_eq!(log.matches(": started ").count(), 1, "one init: {log}");
    let deleted = svc.delete("/container?name=racer&force=true");
    assert_eq!(deleted.status, 200, "{deleted}");
    svc.assert_empty();
}

/// A plain DELETE racing a start: either the DELETE comes first (and the start finds no
/// container), or it waits for the start and answers 409; it never kills the new init.
#[test]
fn a_delete_racing_a_start_never_kills_the_new_init() {
    let svc = Service::start();
    let mount = svc.create("mount", &busybox_overlay(&svc, "delrace"));
    let mount_id = mount["id"].as_i64().unwrap();
    for round in 0..10 {
        let name = format!("delrace{round}");
        let created = svc.create(
            "container",
            &container(
                &name,
                "/bin/busybox sleep 1000",
                json!({"id": mount_id}),
                false,
            ),
        );
        let (start, delete) = std::thread::scope(|scope| {
            let start = scope.spawn(|| {
                svc.request(
                    "PATCH",
                    &format!("/container?name={name}&state=running"),
                    None,
                )
            });
            let delete = scope.spawn(|| svc.delete(&format!("/container?name={name}")));
            (start.join().unwrap(), delete.join().unwrap())
        });
        let log = log_of(&created);
        match (start.status, delete.status) {
            (200, 409) => {
                assert_eq!(start.json()["state"], "running", "{start}");
                assert_eq!(state_of(&svc, &name), "running");
                assert!(!log.contains("killed"), "{log}");
                let deleted = svc.delete(&format!("/container?name={name}&force=true"));
                assert_eq!(deleted.status, 200, "{deleted}");
            }
            (404, 200) => assert!(!log.contains(": started "), "{log}"),
            other => panic!("start {start} and delete {delete} answered {other:?}"),
        }
    }
    let deleted = svc.delete(&format!("/mount?id={mount_id}"));
    assert_eq!(deleted.status, 200, "{deleted}");
    svc.assert_empty();
}

#[test]
fn the_service_refuses_to_start_without_its_init_program() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-init");
    let refused = std::process::Command::new(SERVER)
        .args(test_support::server::private_dirs_args(
            &dir.path().join("api.sock"),
            &dir.path().join("mounts"),
            &dir.path().join("logs"),
            &dir.path().join("state"),
        ))
        .arg("--init-program")
        .arg(&missing)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("init program") && stderr.contains("no-such-init"),
        "{stderr}"
    );
    // It stopped before it listened or made anything.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}
