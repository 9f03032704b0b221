//! Restart and crash recovery against the real binary and kernel: objects survive a restart of
//! the service (containers keep running), what vanished meanwhile is dropped, and SIGKILL at
//! any moment leaves nothing the restarted service does not list.

mod common;

use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn keeping() -> Service {
    Service::start_with(ServiceOptions {
        keep_objects: true,
        ..ServiceOptions::default()
    })
}

fn listing(svc: &Service) -> (Vec<Value>, Vec<Value>, Vec<Value>) {
    (
        svc.list("/attach"),
        svc.list("/mount"),
        svc.list("/container"),
    )
}

fn init_pid_of(svc: &Service, name: &str) -> Option<i32> {
    // The init runs in its own pid namespace; on the host it is a process whose cgroup is the
    // container's. Its pid is found through the container's log line "started ... as pid N".
    let found = svc.get(&format!("/container?name={name}")).json();
    let pid = init_pid(Path::new(found[0]["logfile"].as_str()?));
    i32::try_from(pid).ok()
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| !stat.contains(") Z "))
        .unwrap_or(false)
}

/// A tmpfs of `size` on a temp dir of the test's own: unmounted, and the dir removed, on drop.
struct SmallTmpfs(tempfile::TempDir);

impl SmallTmpfs {
    fn mount(size: &str) -> SmallTmpfs {
        let dir = tempfile::Builder::new()
            .prefix("imageapi-small-")
            .tempdir()
            .expect("temp dir");
        run(Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "imageapi-small",
            ])
            .arg(dir.path()));
        SmallTmpfs(dir)
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for SmallTmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

/// Writes to `path` until its filesystem has no room left.
fn fill(path: &Path) {
    use std::io::Write;
    let mut file = std::fs::File::create(path).expect("filler file");
    let chunk = vec![0u8; 4096];
    while file.write_all(&chunk).is_ok() {}
}

#[test]
fn a_create_whose_commit_cannot_be_stored_is_undone() {
    // Declared first, so dropped after the service.
    let state = SmallTmpfs::mount("1m");
    let mut svc = Service::start_with(ServiceOptions {
        keep_objects: true,
        state_dir: Some(state.path().join("state")),
        ..ServiceOptions::default()
    });
    let image = squashfs_image(svc.dir(), "full");
    let mut answered = vec![svc.create("mount", &overlay(vec![squashfs_mount(&image)]))];

    let filler = state.path().join("filler");
    fill(&filler);
    // A line or two may still fit in the journal's last page: create until one is refused.
    let refused = (0..10)
        .find_map(|_| {
            let resp = svc.post("/mount", &overlay(vec![squashfs_mount(&image)]));
            if resp.status == 201 {
                answered.push(resp.json());
                None
            } else {
                Some(resp)
            }
        })
        .expect("a create is refused once the state dir is full");
    let body = assert_error(&refused, 500);
    assert!(
        body["message"].as_str().unwrap().contains("state store"),
        "{refused}"
    );

    // What the refused create made is undone: the service lists what it answered, and the
    // kernel holds only that.
    assert_lists_only(&svc, &answered);

    // Once there is room again, writes go on (the next one a whole snapshot) and the store
    // agrees with what was answered.
    std::fs::remove_file(&filler).unwrap();
    answered.push(svc.create("mount", &overlay(vec![squashfs_mount(&image)])));
    svc.crash_and_restart(false);
    assert_lists_only(&svc, &answered);
}

#[test]
fn creates_answered_at_the_same_time_are_all_stored() {
    // Concurrent commits: the first is written on a thread of its own, those that come while it
    // is join the store's batched writes. Every answered one must survive a SIGKILL.
    let mut svc = keeping();
    let image = squashfs_image(svc.dir(), "together");
    let body = overlay(vec![squashfs_mount(&image)]);
    let answered: Vec<Value> = thread::scope(|scope| {
        let creators: Vec<_> = (0..12)
            .map(|_| {
                let (svc, body) = (&svc, &body);
                scope.spawn(move || svc.post("/mount", body))
            })
            .collect();
        creators
            .into_iter()
            .map(|creator| {
                let resp = creator.join().expect("creator thread");
                assert_eq!(resp.status, 201, "{resp}");
                resp.json()
            })
            .collect()
    });
    assert_lists_only(&svc, &answered);
    svc.crash_and_restart(false);
    assert_lists_only(&svc, &answered);
}

/// The service lists the overlays `answered` (with their squashfs mounts and attachments) and
/// nothing else, and every mount under its mount dir is a listed one.
fn assert_lists_only(svc: &Service, answered: &[Value]) {
    let listed = svc.list("/mount");
    let overlays: Vec<Value> = listed
        .iter()
        .filter(|mount| mount["kind"] == "overlay")
        .cloned()
        .collect();
    assert_eq!(ids(&overlays), ids(answered), "{listed:?}");
    assert_eq!(
        listed.len(),
        2 * answered.len(),
        "an overlay and a squashfs each"
    );
    assert_eq!(
        svc.list("/attach").len(),
        answered.len(),
        "one loop device each"
    );
    let mut listed_points: Vec<String> = listed.iter().map(mountpoint_of).collect();
    listed_points.sort();
    let mut mounted = mounts_under(&svc.mount_dir());
    mounted.sort();
    assert_eq!(
        mounted, listed_points,
        "mounted under the mount dir, and listed"
    );
}

#[test]
fn restart_adopts_loops_mounts_overlays_and_running_containers() {
    let mut svc = keeping();
    let image = busybox_image(&svc, "keep");
    let lone = svc.create("attach", &loopback(&image));
    let container = svc.create(
        "container",
        &json!({
            "name": "survivor",
            "command": "/bin/busybox sleep 1000",
            "state": "running",
            "mount": overlay(vec![squashfs_mount(&image)]),
        }),
    );
    let pid = init_pid_of(&svc, "survivor").expect("init pid in the log");
    let before = listing(&svc);
    let overlay_mountpoint = mountpoint_of(&container["mount"]);

    svc.restart(false);

    assert!(
        alive(pid),
        "the container's init kept running across the restart"
    );
    assert_eq!(
        listing(&svc),
        before,
        "the same objects, ids, refs and states"
    );
    assert!(is_mounted(&overlay_mountpoint));
    assert_eq!(
        loop_backing_file(&device_of(&lone)).as_deref(),
        Some(image.to_str().unwrap())
    );
    // Ids go on from the stored counter.
    let next = svc.create("attach", &loopback(&image));
    assert!(id_of(&next) > id_of(&container), "{next}");
    svc.remove("attach", id_of(&next));

    // The adopted container is supervised again: stop, delete.
    let stopping = svc.request("PATCH", "/container?name=survivor&state=exited", None);
    assert_eq!(stopping.status, 200, "{stopping}");
    let exited = wait_for(Duration::from_secs(10), || {
        svc.get("/container?name=survivor").json()[0]["state"] == "exited"
    });
    assert!(exited, "{}", svc.get("/container"));
    assert!(!alive(pid));
    svc.remove("container", id_of(&container));
    svc.remove("attach", id_of(&lone));
    svc.assert_empty();
}

#[test]
fn a_systemd_containers_console_is_relayed_again_after_a_restart() {
    let mut svc = keeping();
    let image = busybox_image(&svc, "console");
    let ticking = "i=0; while true; do i=$((i+1)); echo tick-$i > /dev/console; \
                   /bin/busybox sleep 0.2; done";
    let container = svc.create(
        "container",
        &json!({
            "name": "ticking",
            "command": format!("/bin/busybox sh -c '{ticking}'"),
            "systemd": true,
            "state": "running",
            "mount": overlay(vec![squashfs_mount(&image)]),
        }),
    );
    let log_path = str_of(&container, "/logfile").to_string();
    let ticks = |from: usize| {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        log.get(from..).unwrap_or_default().matches("tick-").count()
    };
    assert!(
        wait_for(Duration::from_secs(10), || ticks(0) > 0),
        "the console reaches the log"
    );

    svc.restart(false);

    // The previous relay (and its terminal) ended with the service; the new one takes over.
    let after_restart = std::fs::read_to_string(&log_path).unwrap().len();
    assert!(
        wait_for(Duration::from_secs(10), || ticks(after_restart) > 0),
        "no console output after the restart:\n{}",
        std::fs::read_to_string(&log_path).unwrap_or_default()
    );
    let deleted = svc.delete("/container?name=ticking&force=true");
    assert_eq!(deleted.status, 200, "{deleted}");
    svc.assert_empty();
}

#[test]
fn objects_whose_resource_vanished_are_dropped_with_their_users() {
    let mut svc = keeping();
    let image = squashfs_image(svc.dir(), "vanish");
    let kept = svc.create("mount", &squashfs_mount(&image));
    let doomed = svc.create("mount", &squashfs_mount(&image));
    let on_doomed = svc.create("mount", &overlay(vec![by_id(id_of(&doomed))]));
    svc.stop_ok();
    // While the service is away, someone unmounts the overlay and the doomed mount by hand.
    for mount in [&on_doomed, &doomed] {
        let status = Command::new("umount")
            .arg(mountpoint_of(mount))
            .status()
            .unwrap();
        assert!(status.success());
    }
    let doomed_device = str_of(&doomed, "/attach/attach/device_file").to_string();
    svc.restart(false);
    let mounts = svc.list("/mount");
    assert_eq!(ids(&mounts), vec![id_of(&kept)], "{mounts:?}");
    // The doomed mount's loop device, owned by it, was released with it.
    assert_detached(&doomed_device, &image);
    assert_eq!(svc.list("/attach").len(), 1);
    svc.remove("mount", id_of(&kept));
    svc.assert_empty();
}

#[test]
fn a_corrupt_store_stops_the_start_with_a_clear_error_and_changes_nothing() {
    let mut svc = keeping();
    let image = squashfs_image(svc.dir(), "corrupt");
    let mount = svc.create("mount", &squashfs_mount(&image));
    svc.stop_ok();
    let store = svc.dir().join("state/state.json");
    let good = std::fs::read(&store).unwrap();
    std::fs::write(&store, b"{\"format\": 1, \"graph\": {").unwrap();
    let refused = Command::new(env!("CARGO_BIN_EXE_imageapi-server"))
        .args(svc.args())
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("corrupt") && stderr.contains("state.json"),
        "{stderr}"
    );
    // Nothing was released: the node's workload is untouched.
    assert!(is_mounted(&mountpoint_of(&mount)));
    // The documented way out here: put back a good copy (or move the file away and clean up).
    std::fs::write(&store, good).unwrap();
    svc.restart(false);
    svc.remove("mount", id_of(&mount));
    svc.assert_empty();
}

#[test]
fn a_store_of_a_newer_format_is_refused() {
    let mut svc = keeping();
    svc.stop_ok();
    let store = svc.dir().join("state/state.json");
    let mut value: Value = serde_json::from_slice(&std::fs::read(&store).unwrap()).unwrap();
    value["format"] = json!(99);
    let good = std::fs::read(&store).unwrap();
    std::fs::write(&store, serde_json::to_vec(&value).unwrap()).unwrap();
    let refused = Command::new(env!("CARGO_BIN_EXE_imageapi-server"))
        .args(svc.args())
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("format 99"));
    std::fs::write(&store, good).unwrap();
    svc.restart(false);
}

/// Every mount under the mount dir and every loop device of the test's files is listed by the
/// service, and everything it lists exists.
fn assert_consistent(svc: &Service) {
    let mounts = svc.list("/mount");
    let attaches = svc.list("/attach");
    let listed_mountpoints: Vec<String> = mounts.iter().map(mountpoint_of).collect();
    for mountpoint in &listed_mountpoints {
        assert!(
            is_mounted(mountpoint),
            "listed but not mounted: {mountpoint}"
        );
    }
    for mountpoint in mounts_under(&svc.mount_dir()) {
        assert!(
            listed_mountpoints.contains(&mountpoint),
            "mounted but not listed: {mountpoint}"
        );
    }
    let listed_devices: Vec<String> = attaches.iter().map(device_of).collect();
    for (device, backing) in loops_under(svc.dir()) {
        assert!(
            listed_devices.contains(&device),
            "loop {device} ({backing}) not listed"
        );
    }
    // Containers: a running one has processes in its cgroup; no cgroup of this service holds
    // processes of a container it does not list as running.
    let instance = stored_instance(svc);
    let running: Vec<i64> = svc
        .list("/container")
        .iter()
        .filter(|c| c["state"] == "running")
        .map(id_of)
        .collect();
    let cgroups = cgroup2_root().join("imageapi");
    for id in &running {
        let procs = std::fs::read_to_string(cgroups.join(format!("{instance}-{id}/cgroup.procs")))
            .unwrap_or_default();
        assert!(
            !procs.trim().is_empty(),
            "container {id} listed running but has no process"
        );
    }
    for entry in std::fs::read_dir(&cgroups).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(id) = name.strip_prefix(&format!("{instance}-")) else {
            continue;
        };
        let procs = std::fs::read_to_string(entry.path().join("cgroup.procs")).unwrap_or_default();
        let id: i64 = id.parse().unwrap();
        assert!(
            procs.trim().is_empty() || running.contains(&id),
            "processes of container {id}, which is not listed running: {procs}"
        );
    }
    for entry in std::fs::read_dir(svc.mount_dir()).unwrap().flatten() {
        let path = entry.path();
        let claimed = listed_mountpoints
            .iter()
            .any(|m| Path::new(m) == path || Path::new(m).with_extension("rw") == path);
        assert!(
            claimed,
            "unclaimed dir under the mount dir: {}",
            path.display()
        );
    }
}

/// The instance name the service keeps in its store (it names the service's cgroups).
fn stored_instance(svc: &Service) -> String {
    let store = std::fs::read(svc.dir().join("state/state.json")).unwrap();
    let value: Value = serde_json::from_slice(&store).unwrap();
    value["instance"].as_str().unwrap().to_string()
}

#[test]
fn sigkill_during_creates_and_deletes_leaves_nothing_unlisted() {
    let mut svc = keeping();
    let image = busybox_image(&svc, "crash");
    // Creates take a few hundred ms in a debug build: the kills land from before the request is
    // read to long after it answered, so some rounds keep containers and some cut creates short.
    let mut most_listed = 0;
    for round in 0..20u64 {
        let transport_dir = svc.dir().to_path_buf();
        let body = json!({
            "name": format!("crash{round}"),
            "command": "/bin/busybox sleep 1000",
            "state": "running",
            "mount": overlay(vec![squashfs_mount(&image)]),
        });
        // Requests race with the kill: some land, some are cut short.
        let socket = transport_dir.join("api.sock");
        let mut creator = Some(thread::spawn(move || {
            let body = body.to_string();
            let _ = http_request(
                &Transport::Unix(socket),
                "POST",
                "/imageapi/v1/container",
                Some("application/json"),
                Some(body.as_bytes()),
            );
        }));
        if round % 4 == 0 {
            // Some creates finish before the kill, however slow the machine: what they made
            // must survive it.
            creator.take().map(thread::JoinHandle::join);
        } else {
            // From "just sent" to "long done": the kill lands at every stage of a create.
            thread::sleep(Duration::from_millis(1 + (round * 37) % 300));
        }
        let mut deleter = None;
        if round % 3 == 2 {
            // Also kill during a delete now and then.
            if let Some(first) = svc.list("/container").first() {
                let socket = transport_dir.join("api.sock");
                let path = format!("/imageapi/v1/container?id={}&force=true", id_of(first));
                deleter = Some(thread::spawn(move || {
                    let _ = http_request(&Transport::Unix(socket), "DELETE", &path, None, None);
                }));
                thread::sleep(Duration::from_millis((round * 11) % 40));
            }
        }
        svc.crash_and_restart(true);
        // A request the kill did not cut may reach the restarted service: let it finish before
        // looking, so the check does not race with it.
        for request in [creator, deleter].into_iter().flatten() {
            let _ = request.join();
        }
        assert_consistent(&svc);
        most_listed = most_listed.max(svc.list("/container").len());
    }
    assert!(
        most_listed > 0,
        "no create ever finished: the rounds tested nothing"
    );
    // Every container left is really running or stopped, and all of it goes with the last stop.
    svc.restart(false);
    assert_consistent(&svc);
}
