//! The container runtime against the real kernel (run as root): busybox images in temporary
//! directories, launched into namespaces, observed through their logs and from the host.
//!
//! `launch` executes (a sealed copy of) `/proc/self/exe` as the container init, as it does in
//! the service; here that is this test binary, so it has its own `main` (`harness = false`)
//! that calls `run_if_init()` first, exactly like the service's, and then runs the tests one
//! after another. Arguments without a leading `-` filter tests by name; `--list` lists them,
//! `--ignored` runs none (there are no ignored tests); other options are accepted and ignored.

use std::collections::BTreeSet;
use std::fs::{self, OpenOptions};
use std::os::unix::fs::{symlink, OpenOptionsExt, PermissionsExt};
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use actors::container::{
    check_init, launch, run_if_init, ExitStatus, Init, InitConfig, InitProgram, LaunchError,
    Runtime,
};
use actors::model::wire::Namespace;
use tempfile::TempDir;

/// How long any container may take to do what a test waits for.
const PATIENCE: Duration = Duration::from_secs(10);

/// The busybox applets linked into the test images.
const APPLETS: &[&str] = &[
    "sh", "echo", "cat", "hostname", "sleep", "ls", "mount", "true", "false", "ps", "id", "test",
    "readlink", "awk", "grep", "touch", "wc", "stat", "kill",
];

type Test = (&'static str, fn());

const TESTS: &[Test] = &[
    (
        "pid_one_hostname_and_only_the_image",
        pid_one_hostname_and_only_the_image,
    ),
    ("dev_nodes_and_read_only_sys", dev_nodes_and_read_only_sys),
    (
        "stdout_and_stderr_go_to_the_log",
        stdout_and_stderr_go_to_the_log,
    ),
    ("exit_codes_and_sigkill", exit_codes_and_sigkill),
    ("sigterm_reaches_a_trap_only", sigterm_reaches_a_trap_only),
    (
        "check_init_accepts_and_rejects",
        check_init_accepts_and_rejects,
    ),
    (
        "launch_rejects_a_missing_init",
        launch_rejects_a_missing_init,
    ),
    ("init_failure_is_reported", init_failure_is_reported),
    (
        "freeze_stops_progress_and_thaw_resumes",
        freeze_stops_progress_and_thaw_resumes,
    ),
    (
        "cgroups_hold_the_init_and_go_away",
        cgroups_hold_the_init_and_go_away,
    ),
    ("net_namespace_has_only_lo", net_namespace_has_only_lo),
    ("user_namespace_identity_map", user_namespace_identity_map),
    ("time_namespace", time_namespace),
    (
        "systemd_mounts_with_cgroup_namespace",
        systemd_mounts_with_cgroup_namespace,
    ),
    (
        "systemd_mounts_without_cgroup_namespace",
        systemd_mounts_without_cgroup_namespace,
    ),
    ("twenty_inits_at_once", twenty_inits_at_once),
    (
        "dropping_an_init_kills_and_cleans_up",
        dropping_an_init_kills_and_cleans_up,
    ),
    (
        "orphans_are_reaped_and_own_children_are_not",
        orphans_are_reaped_and_own_children_are_not,
    ),
    (
        "inits_are_cloned_from_a_namespace_without_the_hosts_mounts",
        inits_are_cloned_from_a_namespace_without_the_hosts_mounts,
    ),
    (
        "two_runtimes_in_one_process_keep_apart",
        two_runtimes_in_one_process_keep_apart,
    ),
];

fn main() -> ExitCode {
    run_if_init();
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with('-'))
        .collect();
    let option = |wanted: &str| std::env::args().any(|arg| arg == wanted);
    let selected: Vec<&Test> = TESTS
        .iter()
        .filter(|(name, _)| filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str())))
        .filter(|_| !option("--ignored"))
        .collect();
    if option("--list") {
        for (name, _) in &selected {
            println!("{name}: test");
        }
        return ExitCode::SUCCESS;
    }
    println!("running {} tests", selected.len());
    let mut failed = Vec::new();
    for (name, test) in selected {
        let outcome = panic::catch_unwind(AssertUnwindSafe(test));
        println!(
            "test {name} ... {}",
            if outcome.is_ok() { "ok" } else { "FAILED" }
        );
        if outcome.is_err() {
            failed.push(*name);
        }
    }
    // Whatever the tests did, nothing they started may be left as a zombie.
    let zombies = eventually(zombie_children);
    if !zombies.is_empty() {
        println!("zombie children left: {zombies:?}");
        failed.push("no zombies at the end");
    }
    if failed.is_empty() {
        println!("test result: ok");
        ExitCode::SUCCESS
    } else {
        println!("test result: FAILED: {failed:?}");
        ExitCode::FAILURE
    }
}

// ---------------------------------------------------------------------------------------------
// Fixtures

/// A busybox image in a temporary directory, with a log file beside it. Nothing is mounted on
/// the host (the init binds the image in its own mount namespace), so dropping the directory
/// is the whole cleanup.
struct Image {
    dir: TempDir,
}

impl Image {
    fn new() -> Image {
        let dir = tempfile::Builder::new()
            .prefix("imageapi-runtime-")
            .tempdir()
            .unwrap();
        let root = dir.path().join("root");
        for sub in [
            "bin", "sbin", "etc", "proc", "sys", "dev", "tmp", "run", "root", "opt/site",
        ] {
            fs::create_dir_all(root.join(sub)).unwrap();
        }
        fs::copy("/usr/bin/busybox", root.join("bin/busybox")).unwrap();
        for applet in APPLETS {
            symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
        // Absolute links, which must resolve inside the image: /sbin/init -> /opt/site/init ->
        // /bin/busybox (the host has no /opt/site/init).
        symlink("/opt/site/init", root.join("sbin/init")).unwrap();
        symlink("/bin/busybox", root.join("opt/site/init")).unwrap();
        // /etc/escape -> /usr/bin/busybox exists on the host, not in the image.
        symlink("/../../usr/bin/busybox", root.join("etc/escape")).unwrap();
        fs::write(root.join("etc/motd"), "not a program\n").unwrap();
        fs::set_permissions(root.join("etc/motd"), fs::Permissions::from_mode(0o644)).unwrap();
        Image { dir }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("console.log")
    }

    fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// A config running `script` with busybox sh, in the namespaces the contract's reference
    /// uses, plus `extra`.
    fn config(&self, script: &str, extra: &[Namespace]) -> InitConfig {
        self.config_argv(&["/bin/sh", "-c", script], extra)
    }

    fn config_argv(&self, argv: &[&str], extra: &[Namespace]) -> InitConfig {
        let mut namespaces: BTreeSet<Namespace> = [Namespace::Uts, Namespace::Ipc].into();
        namespaces.extend(extra);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .open(self.log_path())
            .unwrap();
        InitConfig {
            id: next_id(),
            rootfs: self.root(),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: vec![
                "PATH=/usr/sbin:/usr/bin:/sbin:/bin".into(),
                "container=imageapi".into(),
                "HOME=/".into(),
                "TERM=xterm".into(),
            ],
            hostname: "box".into(),
            namespaces,
            systemd: false,
            log,
        }
    }
}

/// The runtime most tests launch into, as a service's engine would make it.
fn runtime() -> &'static Arc<Runtime> {
    static RUNTIME: OnceLock<Arc<Runtime>> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        Runtime::new(&format!("test{}", std::process::id()), this_program()).unwrap()
    })
}

/// This test binary as the init program: its `main` calls `run_if_init()` first.
fn this_program() -> InitProgram {
    InitProgram::new(std::env::current_exe().unwrap())
}

/// Container ids that cannot clash with a running service's (which start at 1).
fn next_id() -> i64 {
    static NEXT: AtomicI64 = AtomicI64::new(0);
    i64::from(std::process::id()) * 1000 + 900_000_000_000 + NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Runs `future` to completion on a fresh current-thread runtime with I/O.
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

/// Waits (at most [`PATIENCE`]) for the init to exit.
fn wait(init: &Init) -> ExitStatus {
    block_on(async { tokio::time::timeout(PATIENCE, init.wait()).await })
        .expect("the init did not exit in time")
        .unwrap()
}

/// Runs `script` to completion and returns its status and the log.
fn run(image: &Image, script: &str, extra: &[Namespace]) -> (ExitStatus, String) {
    let init = launch(runtime(), image.config(script, extra)).unwrap();
    let status = wait(&init);
    (status, image.log())
}

/// Polls `check` until it returns true, for at most [`PATIENCE`].
fn until(mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    check()
}

/// Polls until `probe` returns an empty list (for at most two seconds), then returns its last
/// answer.
fn eventually<T>(probe: impl Fn() -> Vec<T>) -> Vec<T> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let found = probe();
        if found.is_empty() || Instant::now() >= deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// This process's children that are zombies.
fn zombie_children() -> Vec<i32> {
    let mut zombies = Vec::new();
    for task in fs::read_dir("/proc/self/task").unwrap().flatten() {
        let children = fs::read_to_string(task.path().join("children")).unwrap_or_default();
        for pid in children.split_whitespace() {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next());
            if state == Some("Z") {
                zombies.push(pid.parse().unwrap());
            }
        }
    }
    zombies
}

fn lines(text: &str) -> Vec<&str> {
    text.lines().collect()
}

// ---------------------------------------------------------------------------------------------
// Tests

fn pid_one_hostname_and_only_the_image() {
    let image = Image::new();
    let script = "echo pid=$$; hostname; ls /; echo env=$container; \
                  awk '{print $5}' /proc/self/mountinfo > /tmp/mounts";
    let (status, log) = run(&image, script, &[]);
    assert_eq!(status, ExitStatus::Exited(0), "{log}");
    assert!(log.contains("pid=1\n"), "{log}");
    assert!(log.contains("box\n"), "{log}");
    assert!(log.contains("env=imageapi\n"), "{log}");
    let listing = "bin\ndev\netc\nopt\nproc\nroot\nrun\nsbin\nsys\ntmp\n";
    assert!(log.contains(listing), "{log}");
    // Every mount point is one of the init's: none of the host's is left.
    let mounts = fs::read_to_string(image.root().join("tmp/mounts")).unwrap();
    let mounts: BTreeSet<&str> = mounts.lines().collect();
    let expected: BTreeSet<&str> = [
        "/",
        "/proc",
        "/sys",
        "/dev",
        "/dev/pts",
        "/dev/shm",
        "/dev/mqueue",
    ]
    .into();
    assert_eq!(mounts, expected);
}

fn dev_nodes_and_read_only_sys() {
    let image = Image::new();
    let script = "for n in null zero full tty random urandom; do test -c /dev/$n || echo missing $n; done; \
                  test -c /dev/pts/ptmx || echo missing ptmx; \
                  echo ptmx=$(readlink /dev/ptmx) fd=$(readlink /dev/fd) stdout=$(readlink /dev/stdout); \
                  stat -c 'null=%a %t,%T' /dev/null; \
                  echo x > /dev/null && echo wrote-null; \
                  touch /sys/imageapi 2>/dev/null && echo sys-writable || echo sys-read-only; \
                  grep -c ' /sys sysfs ro' /proc/mounts; \
                  touch /dev/shm/a && echo shm-ok";
    let (status, log) = run(&image, script, &[]);
    assert_eq!(status, ExitStatus::Exited(0), "{log}");
    assert!(!log.contains("missing"), "{log}");
    assert!(
        log.contains("ptmx=pts/ptmx fd=/proc/self/fd stdout=/proc/self/fd/1\n"),
        "{log}"
    );
    assert!(log.contains("null=666 1,3\n"), "{log}");
    assert!(log.contains("wrote-null\n"), "{log}");
    assert!(log.contains("sys-read-only\n1\n"), "{log}");
    assert!(log.contains("shm-ok\n"), "{log}");
}

fn stdout_and_stderr_go_to_the_log() {
    let image = Image::new();
    fs::write(image.log_path(), "service: starting\n").unwrap();
    let (status, log) = run(
        &image,
        "echo to-stdout; echo to-stderr >&2; cat; echo stdin-empty",
        &[],
    );
    assert_eq!(status, ExitStatus::Exited(0));
    assert_eq!(
        log, "service: starting\nto-stdout\nto-stderr\nstdin-empty\n",
        "appended after the service's line, stdin is /dev/null"
    );
}

fn exit_codes_and_sigkill() {
    let image = Image::new();
    let init = launch(runtime(), image.config_argv(&["true"], &[])).unwrap();
    let status = wait(&init);
    assert_eq!(status, ExitStatus::Exited(0));
    assert!(status.success());
    assert_eq!(wait(&init), status, "a second wait returns the same status");

    assert_eq!(run(&image, "exit 3", &[]).0, ExitStatus::Exited(3));

    let init = launch(runtime(), image.config_argv(&["sleep", "100"], &[])).unwrap();
    assert!(init.start_time() > 0);
    assert_eq!(init.try_wait().unwrap(), None);
    init.kill().unwrap();
    assert_eq!(wait(&init), ExitStatus::Signaled(9));
    assert!(
        init.signal(libc::SIGTERM).is_err(),
        "a reaped init cannot be signaled"
    );
}

fn sigterm_reaches_a_trap_only() {
    let image = Image::new();
    // PID 1 of a namespace gets only the signals it handles: SIGTERM does nothing to sleep.
    let init = launch(runtime(), image.config_argv(&["sleep", "100"], &[])).unwrap();
    init.signal(libc::SIGTERM).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        init.try_wait().unwrap(),
        None,
        "an init without a handler ignores SIGTERM"
    );
    init.kill().unwrap();
    assert_eq!(wait(&init), ExitStatus::Signaled(9));

    let script = "trap 'echo got-term; exit 7' TERM; echo ready; while :; do sleep 0.05; done";
    let init = launch(runtime(), image.config(script, &[])).unwrap();
    assert!(until(|| image.log().contains("ready")));
    init.signal(libc::SIGTERM).unwrap();
    assert_eq!(wait(&init), ExitStatus::Exited(7));
    assert!(image.log().contains("got-term\n"));

    // A real-time signal (systemd's SIGRTMIN+3) is accepted, and delivered to a handler.
    let script = "trap 'exit 5' RTMIN+3 2>/dev/null || trap 'exit 5' 37; echo rt-ready; \
                  while :; do sleep 0.05; done";
    let init = launch(runtime(), image.config(script, &[])).unwrap();
    assert!(until(|| image.log().contains("rt-ready")));
    init.signal(libc::SIGRTMIN() + 3).unwrap();
    assert_eq!(wait(&init), ExitStatus::Exited(5));
    assert!(
        init.signal(33).is_err(),
        "signals reserved by the C library are refused"
    );
}

fn check_init_accepts_and_rejects() {
    let image = Image::new();
    let root = image.root();
    for good in ["/bin/sh", "bin/sh", "sh", "busybox", "/sbin/init", "init"] {
        check_init(&root, good).unwrap_or_else(|e| panic!("{good}: {e}"));
    }
    type Expected = fn(&LaunchError) -> bool;
    let cases: [(&str, Expected); 5] = [
        ("/nope", |e| matches!(e, LaunchError::InitNotFound { .. })),
        ("nope", |e| matches!(e, LaunchError::InitNotFound { .. })),
        ("/etc/escape", |e| {
            matches!(e, LaunchError::InitNotFound { .. })
        }),
        ("/etc/motd", |e| {
            matches!(e, LaunchError::InitNotExecutable { .. })
        }),
        ("/etc", |e| matches!(e, LaunchError::InitNotRegular { .. })),
    ];
    for (path, expected) in cases {
        let error = check_init(&root, path).unwrap_err();
        assert!(expected(&error), "{path}: {error}");
        assert!(error.is_rejection(), "{path}: {error}");
    }
    let error = check_init(&root, "").unwrap_err();
    assert!(error.is_rejection());
}

fn launch_rejects_a_missing_init() {
    let image = Image::new();
    let config = image.config_argv(&["/sbin/nothing"], &[]);
    let id = config.id;
    let error = launch(runtime(), config).unwrap_err();
    assert!(matches!(error, LaunchError::InitNotFound { .. }), "{error}");
    assert!(error.is_rejection());
    assert!(!Path::new(&format!(
        "/sys/fs/cgroup/unified/imageapi/{}",
        runtime().cgroup_name(id)
    ))
    .exists());

    let mut config = image.config_argv(&["/bin/sh"], &[]);
    config.argv.push("nul\0byte".into());
    assert!(matches!(
        launch(runtime(), config),
        Err(LaunchError::Invalid(_))
    ));

    let mut config = image.config_argv(&["/bin/sh"], &[Namespace::User]);
    config.systemd = true;
    let error = launch(runtime(), config).unwrap_err();
    assert!(matches!(error, LaunchError::Invalid(_)), "{error}");
    assert!(error.is_rejection());
}

fn init_failure_is_reported() {
    let image = Image::new();
    // /dev cannot be mounted on in this image: the init fails and tells why.
    fs::remove_dir(image.root().join("dev")).unwrap();
    fs::write(image.root().join("dev"), "").unwrap();
    let config = image.config("true", &[]);
    let id = config.id;
    let error = launch(runtime(), config).unwrap_err();
    match &error {
        LaunchError::Init {
            step,
            rejection,
            source,
        } => {
            assert_eq!(step, "open /dev");
            assert!(!rejection);
            assert_eq!(source.raw_os_error(), Some(libc::ENOTDIR));
        }
        other => panic!("unexpected error {other}"),
    }
    assert!(!error.is_rejection());
    assert!(!Path::new(&format!(
        "/sys/fs/cgroup/unified/imageapi/{}",
        runtime().cgroup_name(id)
    ))
    .exists());
    assert!(eventually(zombie_children).is_empty());
}

fn freeze_stops_progress_and_thaw_resumes() {
    let image = Image::new();
    let script = "i=0; while :; do i=$((i+1)); echo $i > /tmp/count; sleep 0.02; done";
    let init = launch(runtime(), image.config(script, &[])).unwrap();
    let count = || -> u64 {
        fs::read_to_string(image.root().join("tmp/count"))
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(0)
    };
    assert!(until(|| count() > 3));
    init.freeze().unwrap();
    let frozen = count();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(count(), frozen, "a frozen container makes no progress");
    init.thaw().unwrap();
    assert!(
        until(|| count() > frozen + 3),
        "a thawed container runs again"
    );
    // A frozen container can still be killed.
    init.freeze().unwrap();
    init.kill().unwrap();
    assert_eq!(wait(&init), ExitStatus::Signaled(9));
}

fn cgroups_hold_the_init_and_go_away() {
    let image = Image::new();
    let init = launch(runtime(), image.config_argv(&["sleep", "100"], &[])).unwrap();
    let dirs: Vec<PathBuf> = init.cgroup().dirs().map(Path::to_path_buf).collect();
    assert!(!dirs.is_empty());
    let cgroup2 = if unified_only_host() {
        "/sys/fs/cgroup/imageapi"
    } else {
        "/sys/fs/cgroup/unified"
    };
    assert!(dirs.iter().any(|d| d.starts_with(cgroup2)), "{dirs:?}");
    for dir in &dirs {
        assert!(
            dir.ends_with(format!("imageapi/{}", runtime().cgroup_name(init.id()))),
            "{dir:?}"
        );
        let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap();
        assert_eq!(lines(&procs), [init.pid().to_string()], "{dir:?}");
    }
    init.kill().unwrap();
    wait(&init);
    for dir in &dirs {
        assert!(!dir.exists(), "{dir:?} left behind");
    }
}

fn net_namespace_has_only_lo() {
    let image = Image::new();
    let (status, log) = run(&image, "ls /sys/class/net", &[Namespace::Net]);
    assert_eq!(status, ExitStatus::Exited(0), "{log}");
    assert_eq!(log, "lo\n");
}

fn user_namespace_identity_map() {
    let image = Image::new();
    let script = "cat /proc/self/uid_map; id -u; echo x > /dev/null && echo null-ok; \
                  test -d /sys/class && echo sys-ok; echo pid=$$";
    let (status, log) = run(&image, script, &[Namespace::User]);
    assert_eq!(status, ExitStatus::Exited(0), "{log}");
    let words: Vec<&str> = log.split_whitespace().collect();
    assert_eq!(words[..3], ["0", "0", "4294967295"], "{log}");
    assert!(log.contains("\n0\nnull-ok\nsys-ok\npid=1\n"), "{log}");
}

fn time_namespace() {
    let image = Image::new();
    let host = fs::read_link("/proc/self/ns/time").unwrap();
    let (status, log) = run(&image, "readlink /proc/self/ns/time", &[Namespace::Time]);
    assert_eq!(status, ExitStatus::Exited(0), "{log}");
    assert!(log.starts_with("time:["), "{log}");
    assert_ne!(log.trim(), host.to_str().unwrap());
}

/// The systemd mounts, seen from inside; `extra` adds the cgroup namespace or not.
/// Whether this host has cgroup2 alone (on `/sys/fs/cgroup`), as current distributions do;
/// tests/run.sh runs this suite once that way too.
fn unified_only_host() -> bool {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let fs_of = |line: &str| {
        let (left, right) = line.split_once(" - ")?;
        Some((left.split(' ').nth(4)?.to_string(), right.to_string()))
    };
    let mounts: Vec<(String, String)> = mountinfo.lines().filter_map(fs_of).collect();
    let unified_root = mounts
        .iter()
        .any(|(point, fs)| point == "/sys/fs/cgroup" && fs.starts_with("cgroup2 "));
    let named_systemd = mounts
        .iter()
        .any(|(_, fs)| fs.starts_with("cgroup ") && fs.contains("name=systemd"));
    unified_root && !named_systemd
}

fn systemd_mounts(extra: &[Namespace]) {
    let image = Image::new();
    let unified = unified_only_host();
    let script = if unified {
        "grep -E ' /(run|tmp|var/lib/journal|sys/fs/cgroup) tmpfs ' /proc/mounts | wc -l; \
         grep -c ' /sys/fs/cgroup cgroup2 rw' /proc/mounts; \
         grep -c ' /proc/sys proc ro' /proc/mounts; \
         grep -qx 1 /sys/fs/cgroup/cgroup.procs && echo unified-has-init; \
         mkdir /sys/fs/cgroup/probe && rmdir /sys/fs/cgroup/probe && echo writable; \
         grep -c imageapi /proc/self/cgroup; true"
    } else {
        "grep -E ' /(run|tmp|var/lib/journal|sys/fs/cgroup) tmpfs ' /proc/mounts | wc -l; \
         grep -c ' /sys/fs/cgroup/unified cgroup2 ' /proc/mounts; \
         grep -c ' /sys/fs/cgroup/systemd cgroup ' /proc/mounts; \
         grep -c ' /proc/sys proc ro' /proc/mounts; \
         grep -qx 1 /sys/fs/cgroup/unified/cgroup.procs && echo unified-has-init; \
         grep -qx 1 /sys/fs/cgroup/systemd/cgroup.procs && echo named-has-init; \
         grep -c imageapi /proc/self/cgroup; ls -a /sys/fs/cgroup | wc -l; true"
    };
    let mut config = image.config(script, extra);
    config.systemd = true;
    let init = launch(runtime(), config).unwrap();
    let dirs: Vec<PathBuf> = init.cgroup().dirs().map(Path::to_path_buf).collect();
    assert_eq!(
        dirs.iter().any(|d| d.starts_with("/sys/fs/cgroup/systemd")),
        !unified,
        "{dirs:?}"
    );
    let status = wait(&init);
    let log = image.log();
    assert_eq!(status, ExitStatus::Exited(0), "{log}");
    let cgroup_namespace = extra.contains(&Namespace::Cgroup);
    let expected = if unified {
        // The container's cgroup, writable, straight on /sys/fs/cgroup (systemd's unified mode).
        let namespaced = if cgroup_namespace { "0" } else { "1" };
        format!("3\n1\n1\nunified-has-init\nwritable\n{namespaced}\n")
    } else {
        // One mount each (without a namespace, the whole hierarchy is mounted aside, then
        // dropped), and /sys/fs/cgroup holds ., .., systemd and unified.
        let namespaced = if cgroup_namespace { "0" } else { "2" };
        format!("4\n1\n1\n1\nunified-has-init\nnamed-has-init\n{namespaced}\n4\n")
    };
    assert_eq!(log, expected);
    for dir in &dirs {
        assert!(!dir.exists(), "{dir:?} left behind");
    }
}

fn systemd_mounts_with_cgroup_namespace() {
    systemd_mounts(&[Namespace::Cgroup]);
}

fn systemd_mounts_without_cgroup_namespace() {
    systemd_mounts(&[]);
}

fn twenty_inits_at_once() {
    let image = Image::new();
    let inits: Vec<Init> = std::thread::scope(|scope| {
        let launches: Vec<_> = (0..20)
            .map(|_| {
                let config = image.config_argv(&["sleep", "100"], &[]);
                scope.spawn(move || launch(runtime(), config))
            })
            .collect();
        launches
            .into_iter()
            .map(|handle| handle.join().unwrap().unwrap())
            .collect()
    });
    let pids: BTreeSet<i32> = inits.iter().map(Init::pid).collect();
    assert_eq!(pids.len(), 20);
    for init in &inits {
        assert_eq!(init.try_wait().unwrap(), None);
        init.kill().unwrap();
    }
    for init in &inits {
        assert_eq!(wait(init), ExitStatus::Signaled(9));
    }
}

fn dropping_an_init_kills_and_cleans_up() {
    let image = Image::new();
    let init = launch(runtime(), image.config_argv(&["sleep", "100"], &[])).unwrap();
    let pid = init.pid();
    let dirs: Vec<PathBuf> = init.cgroup().dirs().map(Path::to_path_buf).collect();
    drop(init);
    assert!(
        until(|| !Path::new(&format!("/proc/{pid}")).exists()),
        "killed and reaped"
    );
    assert!(
        until(|| dirs.iter().all(|d| !d.exists())),
        "cgroups removed"
    );
}

fn orphans_are_reaped_and_own_children_are_not() {
    runtime();
    // A daemon that detaches (setsid) from a helper that exits is re-parented to the service.
    let helper = Command::new("/usr/bin/busybox")
        .args([
            "sh",
            "-c",
            "/usr/bin/busybox setsid /usr/bin/busybox sleep 0.5 >/dev/null 2>&1 & echo $!",
        ])
        .output()
        .unwrap();
    assert!(helper.status.success());
    let orphan: i32 = String::from_utf8(helper.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let stat = fs::read_to_string(format!("/proc/{orphan}/stat")).unwrap();
    let ppid = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .nth(1)
        .unwrap();
    assert_eq!(
        ppid,
        std::process::id().to_string(),
        "the orphan is our child now"
    );
    assert!(
        until(|| !Path::new(&format!("/proc/{orphan}")).exists()),
        "orphan reaped"
    );
    // A child of the service's own session keeps its status for whoever waits for it.
    let mut own = Command::new("/usr/bin/busybox")
        .args(["sh", "-c", "exit 4"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(own.wait().unwrap().code(), Some(4));
}

/// Mounts made on the host by a test, unmounted when dropped (also when the test fails).
struct HostMounts(Vec<PathBuf>);

impl Drop for HostMounts {
    fn drop(&mut self) {
        for path in self.0.iter().rev() {
            let _ = nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// The mount points of the launcher thread's namespace, the one inits are cloned from.
fn launcher_mounts() -> Vec<String> {
    let task = fs::read_dir("/proc/self/task")
        .unwrap()
        .flatten()
        .find(|task| {
            fs::read_to_string(task.path().join("comm"))
                .is_ok_and(|c| c.trim() == "imageapi-launch")
        })
        .expect("a launcher thread runs after a launch");
    let mountinfo = fs::read_to_string(task.path().join("mountinfo")).unwrap();
    mountinfo
        .lines()
        .filter_map(|line| line.split_whitespace().nth(4).map(str::to_string))
        .collect()
}

fn inits_are_cloned_from_a_namespace_without_the_hosts_mounts() {
    let image = Image::new();
    let (status, log) = run(&image, "true", &[]);
    assert_eq!(status, ExitStatus::Exited(0), "{log}");
    let before = launcher_mounts();

    // Mounts the host makes later (a container's overlay, say) never reach the launcher.
    let mut mounts = HostMounts(Vec::new());
    for i in 0..20 {
        let path = image.dir.path().join(format!("host-{i}"));
        fs::create_dir(&path).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            &path,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some("size=16k"),
        )
        .unwrap();
        mounts.0.push(path);
    }
    let script = "awk '{print $5}' /proc/self/mountinfo";
    let (status, log) = run(&image, script, &[]);
    assert_eq!(status, ExitStatus::Exited(0), "{log}");
    assert_eq!(
        launcher_mounts(),
        before,
        "the launcher's mounts stay as they were"
    );
    let host_dir = image.dir.path().to_string_lossy().to_string();
    assert!(
        !before
            .iter()
            .any(|m| m.starts_with(&host_dir) || m.starts_with("/tmp")),
        "the launcher holds none of the host's other mounts: {before:?}"
    );
    assert!(
        before.len() < 64,
        "a few dozen mounts: /, /proc, /dev, /sys and the loader's: {before:?}"
    );
    drop(mounts);

    // The init's copy of the image is a slave: its mounts never show on the host, also where
    // the host's mounts are shared (tests/run.sh runs this suite that way too).
    let init = launch(runtime(), image.config_argv(&["sleep", "100"], &[])).unwrap();
    let root = image.root().to_string_lossy().to_string();
    let host_mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let leaked: Vec<&str> = host_mounts
        .lines()
        .filter(|line| {
            line.split_whitespace()
                .nth(4)
                .is_some_and(|m| m.starts_with(&root))
        })
        .collect();
    init.kill().unwrap();
    wait(&init);
    assert!(
        leaked.is_empty(),
        "the container's mounts reached the host: {leaked:?}"
    );
}

/// The `imageapi` directories of every hierarchy (`/sys/fs/cgroup` itself on a host with
/// cgroup2 alone, its sub-directories on a hybrid one), whether they exist or not.
fn imageapi_dirs() -> Vec<PathBuf> {
    let mut parents: Vec<PathBuf> = fs::read_dir("/sys/fs/cgroup")
        .unwrap()
        .flatten()
        .map(|hierarchy| hierarchy.path().join("imageapi"))
        .collect();
    parents.push(PathBuf::from("/sys/fs/cgroup/imageapi"));
    parents
}

/// The cgroup directories of runtime instance `instance`, in any hierarchy.
fn cgroups_of(instance: &str) -> Vec<PathBuf> {
    let prefix = format!("{instance}-");
    imageapi_dirs()
        .iter()
        .flat_map(|parent| fs::read_dir(parent).into_iter().flatten().flatten())
        .filter(|entry| entry.file_name().to_string_lossy().starts_with(&prefix))
        .map(|entry| entry.path())
        .collect()
}

/// The `imageapi` directories that hold no cgroup: made by a service and not removed with its
/// last container. (Another process may be about to fill one it just made, so a caller asks
/// again a moment later before taking it for a leftover.)
fn empty_parents() -> Vec<PathBuf> {
    imageapi_dirs()
        .into_iter()
        .filter(|parent| {
            fs::read_dir(parent).is_ok_and(|entries| {
                !entries
                    .flatten()
                    .any(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            })
        })
        .collect()
}

fn two_runtimes_in_one_process_keep_apart() {
    let image = Image::new();
    let instances = [
        format!("twoa{}", std::process::id()),
        format!("twob{}", std::process::id()),
    ];
    let runtimes = instances
        .each_ref()
        .map(|instance| Runtime::new(instance, this_program()).unwrap());
    // Each exits on its own with a code of its own, while the other runtime's reaper, woken by
    // the same SIGCHLD, scans the same children.
    let inits = [(&runtimes[0], 3), (&runtimes[1], 4)].map(|(runtime, code)| {
        let script = format!("sleep 0.{code}; exit {code}");
        launch(runtime, image.config(&script, &[])).unwrap()
    });
    for ((init, runtime), instance) in inits.iter().zip(&runtimes).zip(&instances) {
        let name = runtime.cgroup_name(init.id());
        assert!(name.starts_with(&format!("{instance}-")), "{name}");
        let dirs: Vec<PathBuf> = init.cgroup().dirs().map(Path::to_path_buf).collect();
        assert!(!dirs.is_empty());
        for dir in &dirs {
            assert!(dir.ends_with(format!("imageapi/{name}")), "{dir:?}");
            let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap();
            assert!(
                lines(&procs).contains(&init.pid().to_string().as_str()),
                "{dir:?}"
            );
        }
        let others: Vec<PathBuf> = instances
            .iter()
            .filter(|other| *other != instance)
            .flat_map(|other| cgroups_of(other))
            .collect();
        assert!(
            others.iter().all(|other| !dirs.contains(other)),
            "{dirs:?} {others:?}"
        );
    }
    assert_eq!(wait(&inits[0]), ExitStatus::Exited(3));
    assert_eq!(wait(&inits[1]), ExitStatus::Exited(4));
    drop(inits);

    // One runtime gone, the other goes on; an init dropped unreaped goes to its own runtime's
    // reaper, which outlives the runtime until it has reaped it.
    let [first, second] = runtimes;
    let dropped = launch(&first, image.config_argv(&["sleep", "100"], &[])).unwrap();
    let dropped_pid = dropped.pid();
    drop(dropped);
    drop(first);
    let init = launch(&second, image.config("exit 5", &[])).unwrap();
    assert_eq!(wait(&init), ExitStatus::Exited(5));
    drop(init);
    drop(second);
    assert!(
        until(|| !Path::new(&format!("/proc/{dropped_pid}")).exists()),
        "the init dropped with its runtime is reaped"
    );
    for instance in &instances {
        assert!(
            until(|| cgroups_of(instance).is_empty()),
            "cgroups of {instance} left: {:?}",
            cgroups_of(instance)
        );
    }
    assert!(
        until(|| empty_parents().is_empty()),
        "empty imageapi directories left: {:?}",
        empty_parents()
    );
}
