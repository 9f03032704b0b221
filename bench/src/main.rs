//! imageapi-bench: what it costs to go from an image file to a running container init, measured
//! twice on the same machine in one run, and how the service holds up with many containers.
//!
//! 1. The kernel floor: the engine's own sys layer and container runtime, in this process, with
//!    no service: loop attach of a squashfs image, squashfs mount, overlay, launch of an init
//!    running `/bin/true` in mnt+pid+uts+ipc namespaces until it is reaped, teardown.
//! 2. The service: `imageapi-server` (next to this executable) on a private unix socket; per
//!    iteration one nested `POST /container` (container -> overlay -> squashfs -> loopback,
//!    `state: running`, `/bin/true`), `GET ?id=` until it has exited, `DELETE`.
//! 3. Many containers: N `sleep` containers over one shared squashfs mount, each with its own
//!    overlay; the start time of one more container and the service's resident memory as the
//!    number running grows, the cost of `GET /container` at 1, 20, 100 and 1000 of them
//!    ([`list`]), then the stop of them all and their delete, with a check that everything is
//!    released.
//!
//! 4. A uri mount: the time from `POST /mount` (kind uri) to 201 mounted for an image of
//!    --uri-mib MiB served by a local HTTP server on 127.0.0.1, against `curl` and `mount` done
//!    by hand in the same run on the same server, and again once the image is in the cache.
//!
//! 5. A load run (--load-seconds, off by default): concurrent clients cycling nested containers,
//!    optionally with a SIGKILL of the service in the middle; see `load.rs`.
//!
//! It builds its own image (static busybox, `mksquashfs`), must run as root, and cleans up after
//! itself, also on error or Ctrl-C. Everything lives in a private directory under --work-dir with
//! a tmpfs mounted on it (as the service's mount dir lives on the /run tmpfs in production),
//! except the service's state dir, which sits next to it on the disk filesystem (as /var/lib
//! does). The HTTP client is a minimal HTTP/1.1 one over a kept-alive unix socket connection
//! (reopened after a second idle, well inside actix's 5 s keep-alive).

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

mod breakdown;

use actors::container::{launch, launch_timed, InitConfig, LaunchTimes};
use actors::model::wire::Namespace;
use actors::sys::loopdev::LoopDevice;
use actors::sys::mounts::{mount_filesystem, overlay, parse_mount_options, unmount};
use anyhow::{anyhow, bail, ensure, Context, Result};
use clap::Parser;
use serde_json::{json, Value};
use test_support::{
    container_cgroups, install_busybox, is_dynamic_elf, leaks_below, log_tail, loop_devices,
    mksquashfs_command, mountinfo, private_dirs_args, release_below, server_next_to_current_exe,
    wait_for_every, HttpServer, NotReady, Reply, ServerProcess, BASE, BUSYBOX,
};

/// The applets linked in the image's /bin.
const APPLETS: [&str; 3] = ["sh", "true", "sleep"];
/// How often the service is asked whether a container has exited.
const POLL_INTERVAL: Duration = Duration::from_micros(200);
/// A kept-alive connection idle longer than this is reopened before use.
const MAX_IDLE: Duration = Duration::from_secs(1);
/// Upper bound for anything that should take milliseconds (a container run, a release).
const PATIENCE: Duration = Duration::from_secs(20);
/// Container ids of the in-process floor (its cgroups are `imageapi/pid<bench pid>-<id>`): far
/// above any id a service hands out, and recognisable when checking that none is left.
const FLOOR_ID_BASE: i64 = 1 << 40;
/// Container counts at which the start time of one more container is printed, besides the
/// quarters of the run's count (see [`milestones`]).
const MILESTONES: [usize; 3] = [100, 500, 1000];

#[derive(Debug, Parser)]
#[command(
    name = "imageapi-bench",
    about = "Image-to-init cost: the kernel floor, the service, and many containers (run as root)"
)]
struct Args {
    /// Measured image-to-init cycles, for the floor and for the service each (after one
    /// uncounted warm-up cycle each).
    #[arg(long, default_value_t = 50)]
    iterations: usize,
    /// Containers kept running at once in part 3 (0 skips it).
    #[arg(long, default_value_t = 200)]
    containers: usize,
    /// Where the private working directory (image, mounts, service socket) is made.
    #[arg(long, default_value = "/tmp")]
    work_dir: PathBuf,
    /// Keep the working directory on the filesystem of --work-dir instead of mounting a private
    /// tmpfs on it. The service's mount dir (overlay upper and work dirs) lives there, as it
    /// lives on the /run tmpfs in production; on a disk filesystem every overlay unmount syncs
    /// that whole filesystem.
    #[arg(long)]
    no_tmpfs: bool,
    /// Put the service's state dir (its crash-safe store) in the working directory too, instead
    /// of on the disk filesystem of --work-dir, where production keeps it (/var/lib): shows what
    /// the store's syncs cost.
    #[arg(long)]
    state_in_work_dir: bool,
    /// The size of the image of part 4 (uri mounts), in MiB (0 skips it).
    #[arg(long, default_value_t = 100)]
    uri_mib: u64,
    /// Measured downloads in part 4, by hand and by the service each.
    #[arg(long, default_value_t = 3)]
    uri_iterations: usize,
    /// The service binary; by default `imageapi-server` next to this executable.
    #[arg(long)]
    server: Option<PathBuf>,
    /// Part 5, the load run: for this many seconds, --load-clients clients each repeat nested
    /// create -> running -> stop -> delete cycles (0 skips it). The other parts run first; to
    /// run the load alone, make them small: --iterations 1 --containers 0 --uri-mib 0.
    #[arg(long, default_value_t = 0)]
    load_seconds: u64,
    /// Concurrent clients of the load run, each on its own kept-alive connection.
    #[arg(long, default_value_t = 32)]
    load_clients: usize,
    /// Seconds of uncounted cycles before the load run's timed part, so that the memory read
    /// before it is the service's working set under this load (its blocking pools and heap grow
    /// to it in the first seconds), not that of a service that has seen one cycle per client.
    #[arg(long, default_value_t = 20)]
    load_warmup_seconds: u64,
    /// SIGKILL the service this many seconds into the load run, start it again on the same state
    /// dir, and check that it lost nothing and that the kernel holds nothing it does not list.
    #[arg(long)]
    load_kill_after: Option<u64>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(io::stderr)
            .init();
    }
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("imageapi-bench: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// println! that never panics: a closed stdout (`| head`) must not abort the bench before it has
/// cleaned up (the release profile aborts on panic, skipping every guard).
macro_rules! out {
    ($($arg:tt)*) => {{
        let _ = writeln!(io::stdout(), $($arg)*);
    }};
}

// After `out!`, which it uses.
mod list;
mod load;

// ---------------------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------------------

fn run(args: &Args) -> Result<()> {
    ensure!(args.iterations > 0, "--iterations must be at least 1");
    install_interrupt_flag()?;
    ensure!(
        is_root()?,
        "must run as root (loop devices, mounts, namespaces)"
    );
    let server = match &args.server {
        Some(path) => path.clone(),
        None => server_next_to_current_exe().context("finding this executable")?,
    };
    ensure!(
        server.is_file(),
        "service binary {} not found: build it first (cargo build --release --workspace)",
        server.display()
    );
    let init_program = floor_init_program()?;
    ensure!(
        init_program.is_file(),
        "the floor's init program {} not found: build it first (cargo build --release --workspace)",
        init_program.display()
    );

    // Dropped last: unmounts, detaches and removes whatever is left under it.
    let work = Workspace::create(&args.work_dir, !args.no_tmpfs, args.state_in_work_dir)?;
    let image = build_image(work.path())?;
    out!("{}", header(args, &server, &image, &work)?);
    let others = other_services();
    if !others.is_empty() {
        out!(
            "warning: other imageapi-server processes run on this host (pids {}): their load skews the figures",
            others.join(", ")
        );
    }

    // Part 3 holds a thousand inits (pidfds) in this process too.
    actors::sys::rlimit::raise_open_files().context("raising the open file limit")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a tokio runtime")?;
    let floor = floor_cycles(&runtime, work.path(), &image.path, args.iterations)?;
    print_floor(&floor);
    let scale_floor = if args.containers > 0 {
        Some(floor_many(
            &runtime,
            work.path(),
            &image.path,
            args.containers,
        )?)
    } else {
        None
    };

    // Dropped before the workspace: SIGTERM, wait.
    let mut service = Service::start(&server, &work.path().join("service"), &work.state)?;
    let mut client = Client::new(service.socket.clone());
    let figures = service_cycles(
        (&mut service, &mut client),
        (&runtime, work.path()),
        &image.path,
        args.iterations,
    )?;
    print_service(&figures);
    breakdown::print(
        &figures.floor,
        &figures,
        &breakdown::ServiceTimes::read(&service.stderr)?,
    );

    if args.containers > 0 {
        let scale = many_containers(&mut service, &mut client, &image.path, args.containers)?;
        print_scale(&scale, scale_floor.as_ref());
    }

    if args.uri_mib > 0 && args.uri_iterations > 0 {
        let figures = uri_mounts(&mut client, &work, args.uri_mib, args.uri_iterations)?;
        print_uri(&figures);
    }

    if args.load_seconds > 0 {
        let options = load::Options {
            seconds: args.load_seconds,
            clients: args.load_clients,
            warmup: Duration::from_secs(args.load_warmup_seconds),
            kill_after: args.load_kill_after,
        };
        let figures = load::run(&mut service, &image.path, &options)?;
        load::print(&figures, &options);
    }

    drop(client);
    let status = service.stop()?;
    ensure!(status.success(), "imageapi-server exited with {status}");
    let leaks = leaks_below(work.path());
    ensure!(
        leaks.is_empty(),
        "left behind after the service stopped: {leaks}"
    );
    drop(service);
    let (dir, state) = (work.path().to_owned(), work.state.clone());
    drop(work);
    let mut left = floor_cgroups_left();
    if mountinfo()
        .iter()
        .any(|m| Path::new(&m.mount_point).starts_with(&dir))
    {
        left.push(format!("mounts under {}", dir.display()));
    }
    left.extend(
        [&dir, &state]
            .into_iter()
            .filter(|d| d.exists())
            .map(|d| d.display().to_string()),
    );
    ensure!(left.is_empty(), "left behind: {}", left.join(", "));
    out!(
        "\nafter SIGTERM the service exited 0; nothing left behind: no mount, loop device, container cgroup or file of this run ({} removed)",
        dir.display()
    );
    out!(
        "reproduce (as root on an otherwise idle machine; needs busybox-static, squashfs-tools and curl): \
         cargo build --release --workspace && target/release/imageapi-bench --iterations {} --containers {} --uri-mib {}{}{}{}",
        args.iterations,
        args.containers,
        args.uri_mib,
        if args.no_tmpfs { " --no-tmpfs" } else { "" },
        if args.state_in_work_dir { " --state-in-work-dir" } else { "" },
        load::flags(args),
    );
    Ok(())
}

fn header(args: &Args, server: &Path, image: &Image, work: &Workspace) -> Result<String> {
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = thread::available_parallelism().map_or(0, |n| n.get());
    let load = fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    let built = fs::metadata(server)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .map_or_else(|| "?".into(), |age| format!("{} s ago", age.as_secs()));
    Ok(format!(
        "imageapi-bench: kernel {}, {cpus} CPUs, load average {}; image: static busybox, squashfs {} ({} kB, in page cache)\n\
         work dir {}; service {} (built {built}); {} cycles each after 1 warm-up; times in µs",
        kernel.trim(),
        load.trim(),
        image.compression,
        image.size / 1024,
        work.describe(),
        server.display(),
        args.iterations,
    ))
}

/// Pids of running `imageapi-server` processes (none of them ours yet).
fn other_services() -> Vec<String> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().into_string().ok()?;
            pid.parse::<u32>().ok()?;
            let comm = fs::read_to_string(entry.path().join("comm")).ok()?;
            (comm.trim_end() == "imageapi-server").then_some(pid)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Interrupts, privileges
// ---------------------------------------------------------------------------------------------

static INTERRUPTED: OnceLock<Arc<AtomicBool>> = OnceLock::new();

/// Ctrl-C and SIGTERM set a flag that every loop checks, so that the bench unwinds through its
/// guards and cleans up instead of dying with mounts in place.
fn install_interrupt_flag() -> Result<()> {
    let flag = INTERRUPTED.get_or_init(|| Arc::new(AtomicBool::new(false)));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, flag.clone()).context("installing signal handlers")?;
    }
    Ok(())
}

fn check_interrupted() -> Result<()> {
    if INTERRUPTED.get().is_some_and(|f| f.load(Ordering::Relaxed)) {
        bail!("interrupted");
    }
    Ok(())
}

fn is_root() -> Result<bool> {
    let status = fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .ok_or_else(|| anyhow!("no effective Uid in /proc/self/status"))?;
    Ok(uid == "0")
}

// ---------------------------------------------------------------------------------------------
// The working directory and what may be left in it
// ---------------------------------------------------------------------------------------------

/// The bench's private directory. Dropping it releases every mount and loop device found under
/// it (deepest first, lazily if busy), and removes it unless something could not be released.
struct Workspace {
    dir: PathBuf,
    /// Whether a private tmpfs is mounted on `dir`.
    tmpfs: bool,
    /// The service's state dir: next to `dir`, on the disk filesystem, as /var/lib is.
    state: PathBuf,
}

impl Workspace {
    fn create(parent: &Path, tmpfs: bool, state_inside: bool) -> Result<Workspace> {
        let parent = fs::canonicalize(parent)
            .with_context(|| format!("working directory {}", parent.display()))?;
        let pid = std::process::id();
        for attempt in 0..100 {
            let dir = parent.join(format!("imageapi-bench-{pid}-{attempt}"));
            match fs::create_dir(&dir) {
                Ok(()) => {
                    let state = if state_inside {
                        dir.join("state")
                    } else {
                        dir.with_extension("state")
                    };
                    let mut work = Workspace {
                        dir,
                        tmpfs: false,
                        state,
                    };
                    if tmpfs {
                        let options = parse_mount_options(&["mode=0700".to_owned()]);
                        mount_filesystem(Path::new("tmpfs"), &work.dir, "tmpfs", &options)
                            .context("mounting a private tmpfs on the working directory")?;
                        work.tmpfs = true;
                    }
                    fs::create_dir(&work.state)
                        .with_context(|| format!("creating {}", work.state.display()))?;
                    return Ok(work);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
            }
        }
        bail!("no free working directory name under {}", parent.display())
    }

    fn describe(&self) -> String {
        let fs_type = |dir: &Path| {
            mountinfo()
                .into_iter()
                .filter(|m| dir.starts_with(&m.mount_point))
                .max_by_key(|m| m.mount_point.len())
                .map_or_else(|| "?".into(), |m| m.fs_type)
        };
        let dir = if self.tmpfs {
            format!("{} (a private tmpfs)", self.dir.display())
        } else {
            format!("{} (on {})", self.dir.display(), fs_type(&self.dir))
        };
        format!(
            "{dir}, service state dir {} (on {})",
            self.state.display(),
            fs_type(&self.state)
        )
    }

    fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.state) {
            if e.kind() != io::ErrorKind::NotFound {
                eprintln!(
                    "imageapi-bench: cannot remove {}: {e}",
                    self.state.display()
                );
            }
        }
        let leaks = leaks_below(&self.dir);
        if !leaks.is_empty() {
            eprintln!("imageapi-bench: cleaning up: {leaks}");
            release_below(&self.dir);
        }
        let mut left = leaks_below(&self.dir);
        if !left.loops.is_empty() {
            // A detached loop device goes at its last close, which may come a moment later.
            wait_until(|| {
                left = leaks_below(&self.dir);
                left.is_empty()
            });
        }
        if self.tmpfs && left.is_empty() {
            match unmount(&self.dir) {
                Ok(()) => self.tmpfs = false,
                Err(e) => eprintln!("imageapi-bench: {e}"),
            }
        }
        if left.is_empty() && !self.tmpfs {
            if let Err(e) = fs::remove_dir_all(&self.dir) {
                eprintln!("imageapi-bench: cannot remove {}: {e}", self.dir.display());
            }
        } else {
            // Never recurse into a mounted filesystem.
            eprintln!(
                "imageapi-bench: could not release {left}; keeping {}",
                self.dir.display()
            );
        }
    }
}

/// Waits until `done` holds or [`PATIENCE`] ran out; whether it held.
fn wait_until(done: impl FnMut() -> bool) -> bool {
    wait_for_every(PATIENCE, Duration::from_millis(5), done)
}

// ---------------------------------------------------------------------------------------------
// The image
// ---------------------------------------------------------------------------------------------

struct Image {
    path: PathBuf,
    compression: &'static str,
    size: u64,
}

fn build_image(work: &Path) -> Result<Image> {
    let busybox = Path::new(BUSYBOX);
    ensure!(
        busybox.is_file(),
        "{BUSYBOX} not found: install busybox-static (apt-get install busybox-static)"
    );
    ensure!(
        !is_dynamic_elf(busybox).with_context(|| format!("reading {BUSYBOX}"))?,
        "{BUSYBOX} is dynamically linked and cannot run alone in the image: install busybox-static"
    );
    let root = work.join("image-root");
    let bin = root.join("bin");
    fs::create_dir_all(&bin).context("creating the image tree")?;
    for dir in ["proc", "sys", "dev", "tmp"] {
        fs::create_dir(root.join(dir)).context("creating the image tree")?;
    }
    install_busybox(&root, &APPLETS).context("copying busybox into the image")?;
    let path = work.join("image.squashfs");
    let mut last_error = String::new();
    for compression in ["zstd", "gzip"] {
        let output = mksquashfs_command(&root, &path)
            .args(["-comp", compression])
            .output();
        let output = match output {
            Ok(output) => output,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                bail!("mksquashfs not found: install squashfs-tools")
            }
            Err(e) => return Err(e).context("running mksquashfs"),
        };
        if output.status.success() {
            let size = fs::metadata(&path).context("the new image")?.len();
            return Ok(Image {
                path,
                compression,
                size,
            });
        }
        last_error = format!(
            "{}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    bail!("mksquashfs failed with zstd and with gzip: {last_error}")
}

// ---------------------------------------------------------------------------------------------
// Statistics and printing
// ---------------------------------------------------------------------------------------------

/// The `q` quantile (nearest rank) of some durations.
fn quantile(samples: &[Duration], q: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    let mut sorted = samples.to_vec();
    sorted.sort();
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn median(samples: &[Duration]) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    let mut sorted = samples.to_vec();
    sorted.sort();
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2
    }
}

fn us(d: Duration) -> u128 {
    d.as_micros()
}

fn row(name: &str, samples: &[Duration]) {
    out!(
        "  {name:<52} {:>9} {:>9} {:>9}",
        us(median(samples)),
        us(quantile(samples, 0.9)),
        us(quantile(samples, 1.0))
    );
}

fn table_head(title: &str) {
    out!("\n{title}");
    out!("  {:<52} {:>9} {:>9} {:>9}", "step", "median", "p90", "max");
}

fn ratio(a: Duration, b: Duration) -> String {
    if b.is_zero() {
        return "-".into();
    }
    format!("{:.2}x", a.as_secs_f64() / b.as_secs_f64())
}

// ---------------------------------------------------------------------------------------------
// 1. The kernel floor, in process
// ---------------------------------------------------------------------------------------------

/// How often an unmount met EBUSY and was tried again.
static UNMOUNT_RETRIES: AtomicUsize = AtomicUsize::new(0);

#[derive(Default)]
struct Floor {
    attach: Vec<Duration>,
    mount: Vec<Duration>,
    overlay: Vec<Duration>,
    launch: Vec<Duration>,
    reaped: Vec<Duration>,
    teardown: Vec<Duration>,
    /// Parts of the teardown: umount overlay, umount squashfs, LOOP_CLR_FD, rm dirs.
    teardown_parts: [Vec<Duration>; 4],
    to_exec: Vec<Duration>,
    total: Vec<Duration>,
    /// The steps of each launch.
    launch_steps: Vec<LaunchTimes>,
}

/// What one floor cycle holds; dropping it releases what is still held, users first.
struct FloorCycle {
    dir: PathBuf,
    device: Option<LoopDevice>,
    lower: Option<PathBuf>,
    root: Option<PathBuf>,
}

impl FloorCycle {
    /// Releases, users first; the times of umount overlay, umount squashfs, detach, rm dirs.
    fn teardown(&mut self) -> Result<[Duration; 4]> {
        let mut times = [Duration::ZERO; 4];
        let mut t = Instant::now();
        let mut lap = |i: usize| {
            times[i] = t.elapsed();
            t = Instant::now();
        };
        if let Some(root) = &self.root {
            unmount_retrying(root)?;
            self.root = None;
        }
        lap(0);
        if let Some(lower) = &self.lower {
            unmount_retrying(lower)?;
            self.lower = None;
        }
        lap(1);
        if let Some(device) = self.device.take() {
            device.detach().context("detaching the loop device")?;
        }
        lap(2);
        if self.dir.exists() {
            fs::remove_dir_all(&self.dir)
                .with_context(|| format!("removing {}", self.dir.display()))?;
        }
        lap(3);
        Ok(times)
    }
}

impl Drop for FloorCycle {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("imageapi-bench: floor teardown: {e:#}");
        }
    }
}

/// Unmounts, trying again for a moment while the kernel still calls the mount busy.
fn unmount_retrying(target: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match unmount(target) {
            Ok(()) => return Ok(()),
            Err(e)
                if io::Error::from_raw_os_error(e.errno as i32).kind()
                    == io::ErrorKind::ResourceBusy
                    && Instant::now() < deadline =>
            {
                UNMOUNT_RETRIES.fetch_add(1, Ordering::Relaxed);
                thread::sleep(Duration::from_micros(200));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The container id (and cgroup name) of the floor's container number `n`.
fn init_config_id(n: i64) -> i64 {
    FLOOR_ID_BASE + i64::from(std::process::id()) * 1_000_000 + n
}

/// What the service's container actor gives an init, for container number `n` of the floor.
fn init_config(n: i64, rootfs: PathBuf, command: &str, log: File) -> InitConfig {
    InitConfig {
        id: init_config_id(n),
        rootfs,
        argv: command.split_whitespace().map(str::to_owned).collect(),
        env: vec![
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            "container=imageapi".into(),
            "HOME=/".into(),
            "TERM=linux".into(),
        ],
        hostname: format!("bench-{n}"),
        namespaces: BTreeSet::from([
            Namespace::Mnt,
            Namespace::Pid,
            Namespace::Uts,
            Namespace::Ipc,
        ]),
        systemd: false,
        log,
    }
}

fn open_log(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .context("opening the console log")
}

fn floor_cycles(
    runtime: &tokio::runtime::Runtime,
    work: &Path,
    image: &Path,
    iterations: usize,
) -> Result<Floor> {
    let base = work.join("floor");
    fs::create_dir(&base).context("creating the floor directory")?;
    let log_path = base.join("console.log");
    let mut floor = Floor::default();
    // Cycle 0 is the warm-up: the first launch copies this binary into a sealed memfd once.
    for i in 0..=iterations {
        check_interrupted()?;
        let (cycle, steps) = floor_cycle(runtime, &base, image, &log_path, i)
            .with_context(|| format!("floor cycle {i}"))?;
        if i == 0 {
            continue;
        }
        floor.record(cycle, steps);
    }
    fs::remove_dir_all(&base).context("removing the floor directory")?;
    Ok(floor)
}

impl Floor {
    /// Adds the times of one cycle, as [`floor_cycle`] answers them.
    fn record(&mut self, cycle: [Duration; 9], steps: LaunchTimes) {
        self.launch_steps.push(steps);
        let [attach, mount, ovl, exec, reaped, parts @ ..] = cycle;
        self.attach.push(attach);
        self.mount.push(mount);
        self.overlay.push(ovl);
        self.launch.push(exec);
        self.reaped.push(reaped);
        self.teardown.push(parts.iter().sum());
        for (samples, part) in self.teardown_parts.iter_mut().zip(parts) {
            samples.push(part);
        }
        self.to_exec.push(attach + mount + ovl + exec);
        self.total.push(cycle.iter().sum());
    }
}

/// One cycle; the times of attach, mount, overlay, launch (to exec), exec to reaped, and the
/// four parts of the teardown; and the steps of the launch.
fn floor_cycle(
    runtime: &tokio::runtime::Runtime,
    base: &Path,
    image: &Path,
    log_path: &Path,
    i: usize,
) -> Result<([Duration; 9], LaunchTimes)> {
    let dir = base.join(i.to_string());
    fs::create_dir(&dir)?;
    let mut cycle = FloorCycle {
        dir: dir.clone(),
        device: None,
        lower: None,
        root: None,
    };

    let start = Instant::now();
    let file = File::open(image).context("opening the image")?;
    let device = LoopDevice::attach(&file, true, false, &ATTACH_TURN)?;
    drop(file);
    let device_path = device.path().to_owned();
    cycle.device = Some(device);
    let attached = Instant::now();

    let lower = dir.join("lower");
    fs::create_dir(&lower)?;
    let options = parse_mount_options(&["ro".to_owned()]);
    mount_filesystem(&device_path, &lower, "squashfs", &options)?;
    cycle.lower = Some(lower.clone());
    let mounted = Instant::now();

    let (root, upper, workdir) = (dir.join("root"), dir.join("rw/upper"), dir.join("rw/work"));
    for d in [&root, &upper, &workdir] {
        fs::create_dir_all(d)?;
    }
    overlay(&[lower], &upper, &workdir, &root)?;
    cycle.root = Some(root.clone());
    let overlaid = Instant::now();

    let log = open_log(log_path)?;
    let (init, steps) = launch_timed(
        container_runtime(),
        init_config(i as i64, root, "/bin/true", log),
    )
    .context("launching the init")?;
    let launched = Instant::now();

    // The timer must be made inside the runtime.
    let waited = runtime.block_on(async { tokio::time::timeout(PATIENCE, init.wait()).await });
    let status = match waited {
        Ok(status) => status.context("waiting for the init")?,
        Err(_) => {
            let _ = init.kill();
            let _ = runtime.block_on(async { tokio::time::timeout(PATIENCE, init.wait()).await });
            bail!("/bin/true did not exit within {PATIENCE:?}");
        }
    };
    ensure!(status.success(), "/bin/true in the container: {status}");
    let reaped = Instant::now();
    drop(init);

    let [umount_overlay, umount_lower, detach, remove] = cycle.teardown()?;
    let times = [
        attached - start,
        mounted - attached,
        overlaid - mounted,
        launched - overlaid,
        reaped - launched,
        umount_overlay,
        umount_lower,
        detach,
        remove,
    ];
    Ok((times, steps))
}

fn print_floor(floor: &Floor) {
    table_head(
        "1. Kernel floor: in-process actors::sys + actors::container::launch, no service (mnt+pid+uts+ipc)",
    );
    row("loop attach (open image, LOOP_CONFIGURE)", &floor.attach);
    row("mount squashfs ro (mkdir + mount)", &floor.mount);
    row("overlay (3 mkdirs + mount)", &floor.overlay);
    row("launch: clone -> /bin/true exec'd", &floor.launch);
    row("exec'd -> exited and reaped", &floor.reaped);
    row(
        "teardown (2 umounts, LOOP_CLR_FD, rm dirs)",
        &floor.teardown,
    );
    let names = [
        "umount overlay",
        "umount squashfs",
        "LOOP_CLR_FD",
        "rm dirs",
    ];
    for (name, samples) in names.iter().zip(&floor.teardown_parts) {
        row(&format!("  of which {name}"), samples);
    }
    row("image -> init exec'd (attach..launch)", &floor.to_exec);
    row("full cycle", &floor.total);
    let retries = UNMOUNT_RETRIES.load(Ordering::Relaxed);
    if retries > 0 {
        out!("  note: unmounts met EBUSY {retries} times and were retried (counted in teardown)");
    }
}

/// The in-process counterpart of part 3: containers started one after another over one shared
/// squashfs mount, each on its own overlay, all left running; then killed and reaped.
struct FloorMany {
    /// Overlay + launch (to exec) of the k-th container.
    creates: Vec<Duration>,
    /// SIGKILL to every init, then reaping them all.
    kill_all: Duration,
}

/// What the in-process scale run holds; dropping it kills the inits and releases the rest.
struct ManyGuard {
    dir: PathBuf,
    inits: Vec<actors::container::Init>,
    overlays: Vec<PathBuf>,
    lower: Option<PathBuf>,
    device: Option<LoopDevice>,
}

impl ManyGuard {
    fn release(&mut self) -> Result<()> {
        for init in self.inits.drain(..) {
            // Dropping an unreaped init kills it and leaves the reaping to the reaper.
            drop(init);
        }
        while let Some(root) = self.overlays.last() {
            unmount_retrying(root)?;
            self.overlays.pop();
        }
        if let Some(lower) = &self.lower {
            unmount_retrying(lower)?;
            self.lower = None;
        }
        if let Some(device) = self.device.take() {
            device.detach().context("detaching the loop device")?;
        }
        if self.dir.exists() {
            fs::remove_dir_all(&self.dir)
                .with_context(|| format!("removing {}", self.dir.display()))?;
        }
        Ok(())
    }
}

impl Drop for ManyGuard {
    fn drop(&mut self) {
        if let Err(e) = self.release() {
            eprintln!("imageapi-bench: floor release: {e:#}");
        }
    }
}

fn floor_many(
    runtime: &tokio::runtime::Runtime,
    work: &Path,
    image: &Path,
    count: usize,
) -> Result<FloorMany> {
    let dir = work.join("floor-many");
    fs::create_dir(&dir).context("creating the floor directory")?;
    let mut guard = ManyGuard {
        dir: dir.clone(),
        inits: Vec::with_capacity(count),
        overlays: Vec::with_capacity(count),
        lower: None,
        device: None,
    };
    let file = File::open(image).context("opening the image")?;
    let device = guard
        .device
        .insert(LoopDevice::attach(&file, true, false, &ATTACH_TURN)?);
    let device_path = device.path().to_owned();
    let lower = dir.join("lower");
    fs::create_dir(&lower)?;
    let options = parse_mount_options(&["ro".to_owned()]);
    mount_filesystem(&device_path, &lower, "squashfs", &options)?;
    guard.lower = Some(lower.clone());
    let log_path = dir.join("console.log");

    let mut creates = Vec::with_capacity(count);
    for k in 1..=count {
        check_interrupted()?;
        let start = Instant::now();
        let base = dir.join(k.to_string());
        let (root, upper, workdir) = (base.join("root"), base.join("upper"), base.join("work"));
        for d in [&root, &upper, &workdir] {
            fs::create_dir_all(d)?;
        }
        overlay(std::slice::from_ref(&lower), &upper, &workdir, &root)?;
        guard.overlays.push(root.clone());
        let command = "/bin/busybox sleep 1000";
        let init = launch(
            container_runtime(),
            init_config(500_000 + k as i64, root, command, open_log(&log_path)?),
        )
        .with_context(|| format!("launching container {k}"))?;
        creates.push(start.elapsed());
        guard.inits.push(init);
    }

    let start = Instant::now();
    for init in &guard.inits {
        init.kill().context("killing an init")?;
    }
    for init in &guard.inits {
        let waited = runtime.block_on(async { tokio::time::timeout(PATIENCE, init.wait()).await });
        let status = waited
            .map_err(|_| anyhow!("a killed init was not reaped within {PATIENCE:?}"))?
            .context("waiting for a killed init")?;
        ensure!(
            status == actors::container::ExitStatus::Signaled(9),
            "a killed init ended {status}"
        );
    }
    let kill_all = start.elapsed();
    guard.release()?;
    Ok(FloorMany { creates, kill_all })
}

// ---------------------------------------------------------------------------------------------
// The service process
// ---------------------------------------------------------------------------------------------

/// A running `imageapi-server` with private dirs; dropping it stops it (SIGTERM, then SIGKILL).
struct Service {
    process: ServerProcess,
    binary: PathBuf,
    dir: PathBuf,
    socket: PathBuf,
    /// Its plain HTTP listener on 127.0.0.1 (for the list timings over TCP).
    tcp: SocketAddr,
    mount_dir: PathBuf,
    state_dir: PathBuf,
    stderr: PathBuf,
}

impl Service {
    fn start(binary: &Path, dir: &Path, state_dir: &Path) -> Result<Service> {
        fs::create_dir(dir).context("creating the service directory")?;
        // A port free now; the service fails at start in the unlikely case it was taken since.
        let tcp = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .context("finding a free TCP port")?;
        let mut service = Service {
            process: Service::spawn(binary, dir, state_dir, tcp)?,
            binary: binary.to_owned(),
            dir: dir.to_owned(),
            socket: dir.join("api.sock"),
            tcp,
            mount_dir: dir.join("mounts"),
            state_dir: state_dir.to_owned(),
            stderr: dir.join("stderr.log"),
        };
        service.wait_ready()?;
        Ok(service)
    }

    fn spawn(
        binary: &Path,
        dir: &Path,
        state_dir: &Path,
        tcp: SocketAddr,
    ) -> Result<ServerProcess> {
        // Appended to: a restarted service's lines follow those of the one that crashed.
        let log = |name: &str| {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join(name))
        };
        ServerProcess::spawn(
            Command::new(binary)
                .args(private_dirs_args(
                    &dir.join("api.sock"),
                    &dir.join("mounts"),
                    &dir.join("logs"),
                    state_dir,
                ))
                .args(["--scheme", "http", "--host", "127.0.0.1", "--port"])
                .arg(tcp.port().to_string())
                // On error paths the bench relies on SIGTERM releasing everything.
                .arg("--cleanup-on-exit")
                // JSON lines with the timing events, which the breakdown reads.
                .args(["--log-format", "json"])
                .env("RUST_LOG", breakdown::SERVICE_LOG_FILTER)
                .stdin(Stdio::null())
                .stdout(log("stdout.log")?)
                .stderr(log("stderr.log")?)
                // Its own process group: a Ctrl-C reaches only the bench, which stops it in order.
                .process_group(0),
        )
        .with_context(|| format!("starting {}", binary.display()))
    }

    /// Starts the service again on the same dirs, state dir and port, once it has exited
    /// (after a SIGKILL, say).
    fn restart(&mut self) -> Result<()> {
        ensure!(
            self.process.try_exit()?.is_some(),
            "imageapi-server still runs"
        );
        self.process = Service::spawn(&self.binary, &self.dir, &self.state_dir, self.tcp)?;
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> Result<()> {
        let check = || check_interrupted().map_err(|e| e.to_string());
        let ready =
            self.process
                .wait_ready(&self.socket, PATIENCE, Duration::from_millis(20), check);
        match ready {
            Ok(()) => Ok(()),
            Err(NotReady::Exited(status)) => {
                bail!("imageapi-server exited with {status}{}", self.stderr_tail())
            }
            Err(NotReady::TimedOut(_)) => bail!(
                "imageapi-server not ready within {PATIENCE:?}{}",
                self.stderr_tail()
            ),
            Err(NotReady::Stopped(why)) => bail!(why),
        }
    }

    fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.process.try_exit()? {
            bail!("imageapi-server exited with {status}{}", self.stderr_tail());
        }
        Ok(())
    }

    fn stderr_tail(&self) -> String {
        format!(
            "\n--- last lines of {} ---\n{}",
            self.stderr.display(),
            log_tail(&self.stderr, 20)
        )
    }

    /// SIGTERM, then wait for a graceful exit (SIGKILL after [`PATIENCE`]).
    fn stop(&mut self) -> Result<ExitStatus> {
        self.process.terminate(PATIENCE).map_err(|e| anyhow!(e))
    }

    /// Bytes in the state dir (the store's files).
    fn state_bytes(&self) -> u64 {
        fs::read_dir(&self.state_dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.metadata().ok())
            .filter(|m| m.is_file())
            .map(|m| m.len())
            .sum()
    }

    /// VmRSS in kB.
    fn rss_kb(&self) -> Result<u64> {
        self.process
            .rss_kb()
            .ok_or_else(|| anyhow!("no VmRSS for the service"))
    }

    /// The service's direct children (container inits and anything not reaped yet).
    fn children(&self) -> usize {
        self.process.children()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if self.process.exit_status().is_some() {
            // Already stopped, and reported by whoever saw it stop.
            return;
        }
        match self.stop() {
            Ok(status) if status.success() => {}
            Ok(status) => eprintln!("imageapi-server exited with {status}{}", self.stderr_tail()),
            Err(e) => eprintln!("imageapi-bench: {e:#}{}", self.stderr_tail()),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The HTTP client: test_support's kept-alive unix socket connection, with JSON bodies
// ---------------------------------------------------------------------------------------------

struct Response {
    status: u16,
    body: Value,
}

/// One kept-alive connection, reopened when it has been idle a while or broke.
struct Client(test_support::Client);

impl Client {
    fn new(socket: PathBuf) -> Client {
        Client(test_support::Client::new(socket, MAX_IDLE))
    }

    /// `target` is below the API base path, with its query.
    fn call(&mut self, method: &str, target: &str, body: Option<&Value>) -> Result<Response> {
        let payload = body.map(serde_json::to_vec).transpose()?;
        let content_type = payload.as_ref().map(|_| "application/json");
        let resp = self
            .0
            .send(
                method,
                &format!("{BASE}{target}"),
                content_type,
                payload.as_deref(),
            )
            .map_err(anyhow::Error::from)
            .and_then(|resp| {
                let body = if resp.body.is_empty() {
                    Value::Null
                } else {
                    serde_json::from_str(&resp.body)
                        .with_context(|| format!("answer is not JSON: {}", resp.body))?
                };
                Ok(Response {
                    status: resp.status,
                    body,
                })
            });
        resp.with_context(|| format!("{method} {target}"))
    }

    /// Calls and insists on `expected`, else fails with the service's error message.
    fn expect(
        &mut self,
        method: &str,
        target: &str,
        body: Option<&Value>,
        expected: u16,
    ) -> Result<Value> {
        let resp = self.call(method, target, body)?;
        if resp.status != expected {
            bail!(
                "{method} {target}: HTTP {} (expected {expected}): {}",
                resp.status,
                resp.body
            );
        }
        Ok(resp.body)
    }
}

fn id_of(object: &Value) -> Result<i64> {
    object["id"]
        .as_i64()
        .ok_or_else(|| anyhow!("no id in {object}"))
}

fn one(list: Value, what: &str) -> Result<Value> {
    match list {
        Value::Array(mut items) if items.len() == 1 => Ok(items.remove(0)),
        other => bail!("expected one {what}, got {other}"),
    }
}

fn list_len(client: &mut Client, what: &str) -> Result<usize> {
    let list = client.expect("GET", &format!("/{what}"), None, 200)?;
    list.as_array()
        .map(Vec::len)
        .ok_or_else(|| anyhow!("GET /{what}: not an array: {list}"))
}

/// Waits until the service lists no containers, mounts or attachments, has no children, and
/// nothing is mounted or attached under its mount dir or from `image`.
fn check_released(service: &mut Service, client: &mut Client, image: &Path) -> Result<()> {
    for what in ["container", "mount", "attach"] {
        let n = list_len(client, what)?;
        ensure!(n == 0, "the service still lists {n} objects at /{what}");
    }
    let mount_dir = service.mount_dir.clone();
    let clean = || {
        service.children() == 0
            && leaks_below(&mount_dir).mounts.is_empty()
            && !loop_devices()
                .iter()
                .any(|(_, backing)| Path::new(backing) == image)
    };
    ensure!(
        wait_until(clean),
        "not released within {PATIENCE:?}: {} children of the service, {}, image still attached: {}",
        service.children(),
        leaks_below(&mount_dir),
        loop_devices().iter().any(|(_, b)| Path::new(b) == image)
    );
    service.check_alive()
}

// ---------------------------------------------------------------------------------------------
// 2. The service, one container at a time
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct ServiceFigures {
    post: Vec<Duration>,
    exited: Vec<Duration>,
    delete: Vec<Duration>,
    total: Vec<Duration>,
    get: Vec<Duration>,
    /// The measured cycles' container ids.
    ids: Vec<i64>,
    /// The floor again, one cycle after each of the service's, so that both meet the same
    /// load of the machine: the ratios compare these.
    floor: Floor,
}

fn nested_container(image: &Path, command: &str) -> Value {
    json!({
        "state": "running",
        "command": command,
        "mount": {"kind": "overlay", "overlay": {"lower": [{
            "kind": "attach",
            "attach": {
                "fs_type": "squashfs",
                "mount_options": ["ro"],
                "attach": {"kind": "loopback", "loopback": {"path": image, "base": "root"}}
            }
        }]}}
    })
}

fn service_cycles(
    (service, client): (&mut Service, &mut Client),
    (runtime, work): (&tokio::runtime::Runtime, &Path),
    image: &Path,
    iterations: usize,
) -> Result<ServiceFigures> {
    let body = nested_container(image, "/bin/true");
    let mut figures = ServiceFigures::default();
    let floor_base = work.join("floor-alongside");
    fs::create_dir(&floor_base).context("creating the floor directory")?;
    let floor_log = floor_base.join("console.log");
    // Cycle 0 is the warm-up: the service's first launch copies its binary into a memfd.
    for i in 0..=iterations {
        check_interrupted()?;
        let start = Instant::now();
        let created = client.expect("POST", "/container", Some(&body), 201)?;
        let posted = Instant::now();
        let id = id_of(&created)?;
        ensure!(
            created["state"] == "running",
            "POST /container answered state {} (expected running): {created}",
            created["state"]
        );
        let mut gets = Vec::new();
        let state = loop {
            check_interrupted()?;
            let asked = Instant::now();
            let list = client.expect("GET", &format!("/container?id={id}"), None, 200)?;
            gets.push(asked.elapsed());
            let container = one(list, "container")?;
            let state = container["state"].as_str().unwrap_or_default().to_owned();
            if state != "running" {
                break container;
            }
            ensure!(
                start.elapsed() < PATIENCE,
                "container {id} still running after {PATIENCE:?}"
            );
            thread::sleep(POLL_INTERVAL);
        };
        let exited = Instant::now();
        ensure!(
            state["state"] == "exited",
            "container {id} ended {}, not exited: {state}",
            state["state"]
        );
        client.expect("DELETE", &format!("/container?id={id}"), None, 200)?;
        let deleted = Instant::now();
        // Numbered after part 1's cycles: container ids (and cgroups) stay unique.
        let n = iterations + 1 + i;
        let (cycle, steps) = floor_cycle(runtime, &floor_base, image, &floor_log, n)
            .with_context(|| format!("floor cycle {n}"))?;
        if i == 0 {
            continue;
        }
        figures.floor.record(cycle, steps);
        figures.ids.push(id);
        figures.post.push(posted - start);
        figures.exited.push(exited - start);
        figures.delete.push(deleted - exited);
        figures.total.push(deleted - start);
        figures.get.extend(gets);
    }
    fs::remove_dir_all(&floor_base).context("removing the floor directory")?;
    check_released(service, client, image)?;
    Ok(figures)
}

fn print_service(figures: &ServiceFigures) {
    let floor = &figures.floor;
    table_head(
        "2. The service over its unix socket (HTTP/1.1 keep-alive): nested POST container -> overlay -> squashfs ro -> loopback, /bin/true",
    );
    row("POST, state running -> 201 running", &figures.post);
    row(
        &format!(
            "POST -> GET ?id= shows exited (polled every {} µs)",
            POLL_INTERVAL.as_micros()
        ),
        &figures.exited,
    );
    row(
        "DELETE ?id= -> 200 (everything nested released)",
        &figures.delete,
    );
    row("full cycle (POST -> DELETE answered)", &figures.total);
    row(
        "one GET /container?id= (kept-alive connection)",
        &figures.get,
    );
    row(
        "floor, one cycle after each: image -> init exec'd",
        &floor.to_exec,
    );
    row("floor, one cycle after each: teardown", &floor.teardown);
    row("floor, one cycle after each: full cycle", &floor.total);
    out!(
        "  ratio service/floor (medians, the floor cycles between the service's): full cycle {}, image -> running {} (POST -> 201 vs attach..launch), teardown {} (DELETE vs teardown)",
        ratio(median(&figures.total), median(&floor.total)),
        ratio(median(&figures.post), median(&floor.to_exec)),
        ratio(median(&figures.delete), median(&floor.teardown)),
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Many containers
// ---------------------------------------------------------------------------------------------

struct Scale {
    count: usize,
    create_total: Duration,
    creates: Vec<Duration>,
    /// The service's VmRSS (kB) with k running, at each milestone k.
    rss_at: Vec<(usize, u64)>,
    lists: Vec<list::Point>,
    list_all: Duration,
    rss_idle: u64,
    rss_running: u64,
    rss_after: u64,
    /// Size of the service's store with all containers running.
    state_bytes: u64,
    /// From the first `PATCH state=exited` until every container is listed exited.
    stop_total: Duration,
    stops: Vec<Duration>,
    delete_total: Duration,
    deletes: Vec<Duration>,
}

/// The container counts at which the start of one more container (and the service's memory)
/// is printed: 1, the quarters of `count`, and 100, 500 and 1000 where they fit.
fn milestones(count: usize) -> Vec<usize> {
    let marks: BTreeSet<usize> = [1, count / 4, count / 2, count * 3 / 4, count]
        .into_iter()
        .chain(MILESTONES.into_iter().filter(|&k| k <= count))
        .filter(|&k| k > 0)
        .collect();
    marks.into_iter().collect()
}

fn many_containers(
    service: &mut Service,
    client: &mut Client,
    image: &Path,
    count: usize,
) -> Result<Scale> {
    let rss_idle = service.rss_kb()?;
    let cgroups_before = container_cgroups();
    let shared = client.expect(
        "POST",
        "/mount",
        Some(&json!({
            "kind": "attach",
            "attach": {
                "fs_type": "squashfs",
                "mount_options": ["ro"],
                "attach": {"kind": "loopback", "loopback": {"path": image, "base": "root"}}
            }
        })),
        201,
    )?;
    let shared = id_of(&shared)?;
    let body = json!({
        "state": "running",
        "command": "/bin/busybox sleep 1000",
        "mount": {"kind": "overlay", "overlay": {"lower": [{"id": shared}]}}
    });

    let mut ids = Vec::with_capacity(count);
    let mut creates = Vec::with_capacity(count);
    let marks = milestones(count);
    let mut rss_at = Vec::with_capacity(marks.len());
    let mut lists = Vec::new();
    let mut listing = Duration::ZERO;
    let endpoints = list::Endpoints {
        socket: &service.socket,
        tcp: Some(service.tcp),
    };
    let started = Instant::now();
    let created = (|| -> Result<()> {
        for k in 1..=count {
            check_interrupted()?;
            let t = Instant::now();
            let container = client.expect("POST", "/container", Some(&body), 201)?;
            creates.push(t.elapsed());
            ids.push(id_of(&container)?);
            ensure!(
                container["state"] == "running",
                "container answered {}: {container}",
                container["state"]
            );
            let paused = Instant::now();
            if marks.contains(&k) {
                rss_at.push((k, service.process.rss_kb().unwrap_or(0)));
            }
            if list::is_point(k, count) {
                lists.extend(list::measure(&endpoints, k)?);
            }
            listing += paused.elapsed();
        }
        Ok(())
    })();
    // Without the list timings made between the creates.
    let create_total = started.elapsed() - listing;

    // The cgroups that came with this service's containers.
    let ours: Vec<PathBuf> = container_cgroups()
        .difference(&cgroups_before)
        .cloned()
        .collect();
    let measured = created.and_then(|()| {
        ensure!(
            ours.len() >= count,
            "{} new container cgroups for {count} containers",
            ours.len()
        );
        let t = Instant::now();
        let running = client.expect("GET", "/container?state=running", None, 200)?;
        let list_all = t.elapsed();
        let n = running.as_array().map_or(0, Vec::len);
        ensure!(n == count, "{n} containers running, expected {count}");
        let refs = one(
            client.expect("GET", &format!("/mount?id={shared}"), None, 200)?,
            "mount",
        )?;
        ensure!(
            refs["refs"] == count as i64 + 1,
            "the shared mount has refs {}, expected {}",
            refs["refs"],
            count + 1
        );
        Ok((list_all, service.rss_kb()?, service.state_bytes()))
    });

    // Stop them all, then delete them; after an error, a forced delete of whatever was made.
    let mut stops = Vec::with_capacity(ids.len());
    let started = Instant::now();
    let stopped = match &measured {
        Ok(_) => Some(stop_all(client, &ids, &mut stops).map(|()| started.elapsed())),
        Err(_) => None,
    };
    let force = !matches!(stopped, Some(Ok(_)));
    let mut deletes = Vec::with_capacity(ids.len());
    let started = Instant::now();
    let mut delete_error = None;
    for id in &ids {
        let t = Instant::now();
        match client.expect(
            "DELETE",
            &format!("/container?id={id}&force={force}"),
            None,
            200,
        ) {
            Ok(_) => deletes.push(t.elapsed()),
            Err(e) => {
                delete_error.get_or_insert(e);
            }
        }
    }
    let delete_total = started.elapsed();
    let (list_all, rss_running, state_bytes) = measured?;
    let stop_total = stopped.context("no stop was tried")??;
    if let Some(e) = delete_error {
        return Err(e);
    }
    let refs = one(
        client.expect("GET", &format!("/mount?id={shared}"), None, 200)?,
        "mount",
    )?;
    ensure!(
        refs["refs"] == 1,
        "the shared mount kept refs {} after its users went",
        refs["refs"]
    );
    client.expect("DELETE", &format!("/mount?id={shared}"), None, 200)?;
    check_released(service, client, image)?;
    ensure!(
        wait_until(|| ours.iter().all(|dir| !dir.exists())),
        "container cgroups left: {}",
        ours.iter()
            .filter(|dir| dir.exists())
            .map(|dir| dir.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(Scale {
        count,
        create_total,
        creates,
        rss_at,
        lists,
        list_all,
        rss_idle,
        rss_running,
        rss_after: service.rss_kb()?,
        state_bytes,
        stop_total,
        stops,
        delete_total,
        deletes,
    })
}

/// `PATCH state=exited` to every container (each answers at once, stopping), then waits until
/// the service lists them all exited; `stops` gets the time of each PATCH.
fn stop_all(client: &mut Client, ids: &[i64], stops: &mut Vec<Duration>) -> Result<()> {
    for id in ids {
        let t = Instant::now();
        client.expect(
            "PATCH",
            &format!("/container?id={id}&state=exited"),
            None,
            200,
        )?;
        stops.push(t.elapsed());
    }
    let deadline = Instant::now() + PATIENCE;
    loop {
        let exited = list_len(client, "container?state=exited")?;
        if exited == ids.len() {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "{exited} of {} containers exited within {PATIENCE:?} of their stop",
            ids.len()
        );
        thread::sleep(Duration::from_millis(1));
    }
}

/// The init program of the floor's launches: the service's, `imageapi-init` next to this
/// executable.
fn floor_init_program() -> io::Result<PathBuf> {
    Ok(std::env::current_exe()?.with_file_name("imageapi-init"))
}

/// The in-process containers' runtime, made at the first launch, as an engine makes its own.
fn container_runtime() -> &'static std::sync::Arc<actors::container::Runtime> {
    static RUNTIME: std::sync::OnceLock<std::sync::Arc<actors::container::Runtime>> =
        std::sync::OnceLock::new();
    RUNTIME.get_or_init(|| {
        let init_program = floor_init_program().expect("finding this executable");
        actors::container::Runtime::new(
            &format!("bench{}", std::process::id()),
            actors::container::InitProgram::new(init_program),
        )
        .expect("starting the container runtime")
    })
}

/// The in-process loop attaches take turns on this, as an engine's do on its own.
static ATTACH_TURN: actors::sys::loopdev::AttachTurn = actors::sys::loopdev::AttachTurn::new();

/// The cgroups of this run's in-process containers still present in any hierarchy.
fn floor_cgroups_left() -> Vec<String> {
    let first = init_config_id(0);
    container_cgroups()
        .into_iter()
        .filter(|dir| {
            let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            let id = name
                .rsplit('-')
                .next()
                .and_then(|id| id.parse::<i64>().ok());
            id.is_some_and(|id| {
                (first..first + 1_000_000).contains(&id)
                    && name == container_runtime().cgroup_name(id)
            })
        })
        .map(|dir| dir.display().to_string())
        .collect()
}

/// Least-squares slope of the create time over the number already running, in µs per container.
fn slope_us(samples: &[Duration]) -> f64 {
    let n = samples.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let xs = (0..samples.len()).map(|x| x as f64);
    let mean_x = xs.clone().sum::<f64>() / n;
    let ys: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e6).collect();
    let mean_y = ys.iter().sum::<f64>() / n;
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for (x, y) in xs.zip(&ys) {
        sxy += (x - mean_x) * (y - mean_y);
        sxx += (x - mean_x) * (x - mean_x);
    }
    sxy / sxx
}

/// Medians of the first and the last quarter of `samples` (without the first, which pays for
/// the first exec from a fresh mount): less swayed by a few slow starts than the slope.
fn quarters(samples: &[Duration]) -> Option<(Duration, Duration)> {
    let rest = samples.get(1..)?;
    let quarter = rest.len() / 4;
    if quarter == 0 {
        return None;
    }
    Some((
        median(&rest[..quarter]),
        median(&rest[rest.len() - quarter..]),
    ))
}

fn change_percent(from: Duration, to: Duration) -> f64 {
    (to.as_secs_f64() / from.as_secs_f64() - 1.0) * 100.0
}

fn print_scale(s: &Scale, floor: Option<&FloorMany>) {
    out!(
        "\n3. {} containers `/bin/busybox sleep 1000`, one shared squashfs mount (by id), a nested overlay each",
        s.count
    );
    out!(
        "  service: create all, one after another: {:.1} ms ({:.2} ms per container)",
        s.create_total.as_secs_f64() * 1e3,
        s.create_total.as_secs_f64() * 1e3 / s.count as f64
    );
    if let Some(f) = floor {
        let total: Duration = f.creates.iter().sum();
        out!(
            "  floor (in process, same layout, {} overlays left mounted in its namespace): {:.1} ms ({:.2} ms per container); SIGKILL + reap all: {:.1} ms",
            f.creates.len(),
            total.as_secs_f64() * 1e3,
            total.as_secs_f64() * 1e3 / f.creates.len() as f64,
            f.kill_all.as_secs_f64() * 1e3
        );
    }
    out!("  start of the k-th container with k-1 running, µs (service: POST -> 201 running; floor: overlay + launch to exec;");
    out!("  k=1 also pays the first exec of busybox from the freshly mounted squashfs, i.e. its decompression):");
    out!(
        "  {:>6} {:>12} {:>22} {:>12} {:>22} {:>14}",
        "k",
        "service k-th",
        "service med k-9..k",
        "floor k-th",
        "floor med k-9..k",
        "service MB"
    );
    let floor_creates = floor.map_or(&[][..], |f| &f.creates[..]);
    let cell = |samples: &[Duration], k: usize| {
        samples
            .get(k - 1)
            .map_or_else(|| "-".to_owned(), |d| us(*d).to_string())
    };
    let window = |samples: &[Duration], k: usize| {
        if k > samples.len() {
            return "-".to_owned();
        }
        us(median(&samples[k.saturating_sub(10)..k])).to_string()
    };
    for &(k, rss) in &s.rss_at {
        out!(
            "  {k:>6} {:>12} {:>22} {:>12} {:>22} {:>14.1}",
            cell(&s.creates, k),
            window(&s.creates, k),
            cell(floor_creates, k),
            window(floor_creates, k),
            rss as f64 / 1024.0
        );
    }
    out!(
        "  trend (least squares over all {}): service {:+.1} µs, floor {:+.1} µs per container already running",
        s.count,
        slope_us(&s.creates),
        slope_us(floor_creates)
    );
    if let (Some(service), floor) = (quarters(&s.creates), quarters(floor_creates)) {
        let floor = floor.map_or_else(String::new, |(first, last)| {
            format!(
                "; floor {} -> {} µs ({:+.0}%)",
                us(first),
                us(last),
                change_percent(first, last)
            )
        });
        out!(
            "  median start, first quarter -> last quarter of the {} (k=1 left out): service {} -> {} µs ({:+.0}%){floor}",
            s.count,
            us(service.0),
            us(service.1),
            change_percent(service.0, service.1)
        );
    }
    out!(
        "  GET /container?state=running listing all {}: {} µs",
        s.count,
        us(s.list_all)
    );
    list::print(&s.lists);
    out!(
        "  service VmRSS: {:.1} MB idle, {:.1} MB with {} running ({:+.1} kB per container), {:.1} MB after deleting them",
        s.rss_idle as f64 / 1024.0,
        s.rss_running as f64 / 1024.0,
        s.count,
        (s.rss_running as f64 - s.rss_idle as f64) / s.count as f64,
        s.rss_after as f64 / 1024.0
    );
    out!(
        "  service state store with {} running: {} kB (snapshot + journal; a change appends what it changed)",
        s.count,
        s.state_bytes / 1024
    );
    out!(
        "  stop all {}: PATCH state=exited to each, until all are listed exited: {:.1} ms (PATCH median {} µs, max {} µs)",
        s.count,
        s.stop_total.as_secs_f64() * 1e3,
        us(median(&s.stops)),
        us(quantile(&s.stops, 1.0))
    );
    out!(
        "  DELETE ?id= of all {} (exited; each releases its overlay): {:.1} ms (median {} µs, max {} µs each)",
        s.count,
        s.delete_total.as_secs_f64() * 1e3,
        us(median(&s.deletes)),
        us(quantile(&s.deletes, 1.0))
    );
    out!(
        "  released: no container, mount or attachment listed; the shared mount back to refs 1 and deleted; \
         no child process, mount, loop device or container cgroup left"
    );
}

// ---------------------------------------------------------------------------------------------
// 4. A uri mount
// ---------------------------------------------------------------------------------------------

struct UriFigures {
    mib: u64,
    image_bytes: u64,
    by_hand: Vec<Duration>,
    service: Vec<Duration>,
    cached: Vec<Duration>,
}

/// Bytes that do not compress (xorshift), so that the image is as large as asked.
fn incompressible(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut bytes = Vec::with_capacity(len);
    while bytes.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

fn run_tool(command: &mut Command) -> Result<()> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {command:?}"))?;
    ensure!(
        output.status.success(),
        "{command:?}: {}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(())
}

/// Each round: `curl` to a file next to the service's state dir and `mount -o ro,loop` by hand,
/// then `POST /mount` of the same image under another URL (a download the cache does not have),
/// then the same URL again (the server answers 304: the cached copy is mounted).
fn uri_mounts(
    client: &mut Client,
    work: &Workspace,
    mib: u64,
    iterations: usize,
) -> Result<UriFigures> {
    let root = work.path().join("uri-root");
    fs::create_dir(&root).context("creating the uri image tree")?;
    fs::write(root.join("data.bin"), incompressible((mib << 20) as usize))
        .context("writing the uri image's data")?;
    let image = work.path().join("uri.squashfs");
    run_tool(mksquashfs_command(&root, &image).arg("-no-xattrs"))?;
    fs::remove_dir_all(&root).context("removing the uri image tree")?;
    let image_bytes = fs::metadata(&image)?.len();
    let server = HttpServer::start();
    let by_hand_dir = work.state.join("by-hand");
    fs::create_dir(&by_hand_dir).context("creating the by-hand download dir")?;
    let target = work.path().join("by-hand-mount");
    fs::create_dir(&target).context("creating the by-hand mountpoint")?;
    let mut figures = UriFigures {
        mib,
        image_bytes,
        by_hand: Vec::new(),
        service: Vec::new(),
        cached: Vec::new(),
    };
    for round in 0..iterations {
        check_interrupted()?;
        let by_hand_path = format!("/by-hand-{round}.squashfs");
        server.serve(&by_hand_path, Reply::File(image.clone()));
        let file = by_hand_dir.join("image.squashfs");
        let started = Instant::now();
        run_tool(
            Command::new("curl")
                .args(["--silent", "--show-error", "--fail", "--output"])
                .arg(&file)
                .arg(server.url(&by_hand_path)),
        )?;
        run_tool(
            Command::new("mount")
                .args(["-t", "squashfs", "-o", "ro,loop"])
                .arg(&file)
                .arg(&target),
        )?;
        figures.by_hand.push(started.elapsed());
        unmount_retrying(&target)?;
        fs::remove_file(&file).context("removing the by-hand download")?;

        let service_path = format!("/service-{round}.squashfs");
        server.serve(&service_path, Reply::File(image.clone()));
        let body = json!({ "kind": "uri", "uri": { "url": server.url(&service_path) } });
        for samples in [&mut figures.service, &mut figures.cached] {
            let started = Instant::now();
            let mount = client.expect("POST", "/mount", Some(&body), 201)?;
            samples.push(started.elapsed());
            let id = id_of(&mount)?;
            client.expect("DELETE", &format!("/mount?id={id}"), None, 200)?;
        }
        ensure!(
            server.bodies(&service_path) == 1,
            "the service downloaded {service_path} {} times",
            server.bodies(&service_path)
        );
    }
    fs::remove_dir(&target).context("removing the by-hand mountpoint")?;
    fs::remove_file(&image).context("removing the uri image")?;
    Ok(figures)
}

fn print_uri(figures: &UriFigures) {
    table_head(&format!(
        "4. A uri mount of a {} MiB squashfs image ({} bytes) from a local HTTP server on 127.0.0.1",
        figures.mib, figures.image_bytes
    ));
    row(
        "by hand: curl to a file, mount -o ro,loop",
        &figures.by_hand,
    );
    row(
        "POST uri -> 201 mounted (download, hash, mount)",
        &figures.service,
    );
    row(
        "POST same URL again -> 201 (304, cached copy)",
        &figures.cached,
    );
    let mib_per_second = |samples: &[Duration]| {
        figures.image_bytes as f64 / (1 << 20) as f64 / median(samples).as_secs_f64().max(1e-9)
    };
    out!(
        "  ratio service/by hand (medians): {}; {:.0} MiB/s by hand, {:.0} MiB/s by the service",
        ratio(median(&figures.service), median(&figures.by_hand)),
        mib_per_second(&figures.by_hand),
        mib_per_second(&figures.service),
    );
}
