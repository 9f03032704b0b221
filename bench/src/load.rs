//! Part 5, the load run (`--load-seconds N`, off by default; the other parts still run before it,
//! so to run it alone make them small: `--iterations 1 --containers 0 --uri-mib 0`).
//!
//! `--load-clients` threads (32 by default), each with its own kept-alive connection, repeat a
//! cycle on a container of their own with a unique name: a nested `POST /container` (overlay ->
//! squashfs -> loopback, `state: running`, an init that sleeps until it is stopped), which answers
//! 201 running; `PATCH ?state=exited` (the stop, answered `stopping` or `exited`); `GET
//! ?wait=exited` until it has exited; `DELETE`. Every answer other than the expected one and
//! every transport error counts as an error (the first few are printed). First every client
//! cycles uncounted for `--load-warmup-seconds` (20); the service's memory is read when they
//! all have finished their last warm-up cycle (nothing is left then), during the run, once the
//! last cycle is deleted, and again once the service has been idle for a while. At the end
//! everything must be released: no object listed, no mount under the service's mount dir, no
//! loop device of the image, no container cgroup of the service, no process left.
//!
//! With `--load-kill-after S`, S seconds into the run the service gets a SIGKILL and is started
//! again on the same state dir. Requests the kill cut short are counted apart (not as errors),
//! and their clients wait until the restarted service has been checked: every container whose
//! create was answered, and not deleted since, must be listed (in state running if its client
//! had not asked it to stop); one whose create or delete was cut short may be listed or not (it
//! was rolled back); nothing else may be listed; each listed container has its two mounts and
//! its attachment; and the kernel holds nothing the service does not list: every mount under its
//! mount dir and every new dir there is a listed mount's, every loop device of the image a
//! listed attachment's, every container cgroup of the service with processes a running listed
//! container's, and every init left by the killed service (the bench is their subreaper) sits in
//! such a cgroup. Then the clients go on: one whose request was cut deletes its container with
//! `force=true` (200 or 404) and starts a new cycle. The memory before and after such a run is
//! that of two processes: measure it in a run without the kill.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use serde_json::Value;
use test_support::{container_cgroups, is_mounted, loop_devices, mounts_under};

use super::{
    check_interrupted, check_released, median, nested_container, quantile, us, wait_until, Args,
    Client, Service, PATIENCE,
};

/// The containers' init: sleeps until it is stopped (a plain init's stop signal is SIGKILL).
const INIT: &str = "/bin/busybox sleep 100000";
/// Errors printed in full; the others are only counted.
const ERRORS_SHOWN: usize = 5;
/// How many times the service's memory is read during the run.
const MEMORY_SAMPLES: u32 = 10;
/// How long the service is left idle before its memory is read once more after the run: longer
/// than the 10 s an idle thread of tokio's blocking pool lives.
const SETTLE: Duration = Duration::from_secs(12);
/// How long a cycle's `GET ?wait=exited` waits at most, in seconds.
const WAIT_TIMEOUT_S: u64 = 30;

/// The load run's flags.
pub(super) struct Options {
    pub seconds: u64,
    pub clients: usize,
    /// How long the clients cycle, uncounted, before the timed part.
    pub warmup: Duration,
    pub kill_after: Option<u64>,
}

/// The load flags for the "reproduce" line (empty when the load did not run).
pub(super) fn flags(args: &Args) -> String {
    if args.load_seconds == 0 {
        return String::new();
    }
    let kill = args
        .load_kill_after
        .map_or_else(String::new, |s| format!(" --load-kill-after {s}"));
    format!(
        " --load-seconds {} --load-clients {} --load-warmup-seconds {}{kill}",
        args.load_seconds, args.load_clients, args.load_warmup_seconds
    )
}

/// Where a client's current container is in its cycle: what the service may hold of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// The POST is sent or about to be: the container may exist or not.
    Creating,
    /// Answered 201 running; no stop asked.
    Running,
    /// The stop is asked or about to be.
    Stopping,
    /// Seen exited.
    Exited,
    /// The DELETE is sent or about to be: the container may exist or not.
    Deleting,
}

/// Why a request gave no usable answer.
enum Failure {
    /// The service was killed under it.
    Cut,
    /// A wrong answer or a transport error of a live service.
    Error(String),
    /// The run is being aborted.
    Aborted,
}

/// Whether clients may send requests: closed from just before a kill until the restarted
/// service has been checked.
struct Gate {
    open: bool,
    /// Clients waiting at the closed gate.
    parked: usize,
    /// Clients still in their loop.
    active: usize,
    /// Clients done with their warm-up.
    warm: usize,
    /// The timed part has begun.
    started: bool,
}

/// What the clients share with the thread that runs the load.
struct Shared {
    socket: PathBuf,
    body: Value,
    /// Time is up: clients finish their cycle and leave.
    time_up: AtomicBool,
    /// When the clients stop their warm-up cycles.
    warmup_until: Instant,
    /// Something failed or the user interrupted: clients leave at once.
    abort: AtomicBool,
    /// How many kills so far: a request that fails while it changed was cut by a kill.
    kills: AtomicU64,
    gate: Mutex<Gate>,
    gate_changed: Condvar,
    /// Each client's current container.
    slots: Mutex<Vec<Option<(String, Stage)>>>,
    errors: AtomicU64,
    first_errors: Mutex<Vec<String>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    /// Waits for a change of the gate, or a tenth of a second (to see an abort).
    fn wait_for_change<'a>(&self, gate: MutexGuard<'a, Gate>) -> MutexGuard<'a, Gate> {
        self.gate_changed
            .wait_timeout(gate, Duration::from_millis(100))
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .0
    }

    fn aborted(&self) -> bool {
        self.abort.load(Ordering::SeqCst) || check_interrupted().is_err()
    }

    /// Waits while the gate is closed; the kill count to compare with after the request.
    fn pass_gate(&self) -> Result<u64, Failure> {
        let mut gate = lock(&self.gate);
        if !gate.open {
            gate.parked += 1;
            self.gate_changed.notify_all();
            while !gate.open && !self.aborted() {
                gate = self.wait_for_change(gate);
            }
            gate.parked -= 1;
        }
        if self.aborted() {
            return Err(Failure::Aborted);
        }
        // Read under the gate's lock, which the kill takes to close it and count itself.
        Ok(self.kills.load(Ordering::SeqCst))
    }

    fn set_gate(&self, open: bool) {
        let mut gate = lock(&self.gate);
        gate.open = open;
        if !open {
            self.kills.fetch_add(1, Ordering::SeqCst);
        }
        self.gate_changed.notify_all();
    }

    /// Waits until every client still running waits at the closed gate.
    fn wait_parked(&self) -> Result<()> {
        let deadline = Instant::now() + PATIENCE;
        let mut gate = lock(&self.gate);
        while gate.parked < gate.active {
            ensure!(
                Instant::now() < deadline,
                "{} of {} clients did not stop within {PATIENCE:?} of the kill",
                gate.active - gate.parked,
                gate.active
            );
            gate = self.wait_for_change(gate);
        }
        Ok(())
    }

    /// A client's warm-up is done: waits until the timed part begins; whether it did.
    fn warmed_up(&self) -> bool {
        let mut gate = lock(&self.gate);
        gate.warm += 1;
        self.gate_changed.notify_all();
        while !gate.started && !self.aborted() {
            gate = self.wait_for_change(gate);
        }
        gate.started
    }

    /// Waits until every client still running has done its warm-up.
    fn wait_warm(&self) -> Result<()> {
        let mut gate = lock(&self.gate);
        while gate.warm < gate.active {
            check_interrupted()?;
            gate = self.wait_for_change(gate);
        }
        Ok(())
    }

    fn start(&self) {
        lock(&self.gate).started = true;
        self.gate_changed.notify_all();
    }

    fn leave(&self) {
        lock(&self.gate).active -= 1;
        self.gate_changed.notify_all();
    }

    fn error(&self, what: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut first = lock(&self.first_errors);
        if first.len() < ERRORS_SHOWN {
            first.push(what);
        }
    }
}

/// One client's timings and counts.
#[derive(Default)]
struct Timings {
    create: Vec<Duration>,
    stop: Vec<Duration>,
    stopped: Vec<Duration>,
    delete: Vec<Duration>,
    cycle: Vec<Duration>,
    /// Requests answered (whatever the status).
    requests: u64,
    /// Requests cut short by a kill.
    cut: u64,
}

impl Timings {
    fn merge(&mut self, other: Timings) {
        self.create.extend(other.create);
        self.stop.extend(other.stop);
        self.stopped.extend(other.stopped);
        self.delete.extend(other.delete);
        self.cycle.extend(other.cycle);
        self.requests += other.requests;
        self.cut += other.cut;
    }
}

/// One client thread's loop.
struct Worker<'a> {
    shared: &'a Shared,
    index: usize,
    client: Client,
    cycles: u64,
    /// The current cycle's container.
    name: String,
    /// The kills `client`'s connection has seen: one made before a kill is to the dead service.
    connected_after: u64,
    timings: Timings,
}

impl Worker<'_> {
    fn stage(&self, stage: Option<Stage>) {
        lock(&self.shared.slots)[self.index] = stage.map(|stage| (self.name.clone(), stage));
    }

    /// One request, after the gate; its body and how long it took. The container's stage is
    /// set to `stage` before the request goes out (and after the gate, so that a check after
    /// a kill sees what the clients may have asked).
    fn request(
        &mut self,
        method: &str,
        target: &str,
        body: Option<&Value>,
        expected: &[u16],
        stage: Option<Stage>,
    ) -> Result<(Value, Duration), Failure> {
        let kills = self.shared.pass_gate()?;
        if kills != self.connected_after {
            self.client = Client::new(self.shared.socket.clone());
            self.connected_after = kills;
        }
        if stage.is_some() {
            self.stage(stage);
        }
        let start = Instant::now();
        let result = self.client.call(method, target, body);
        let took = start.elapsed();
        match result {
            Ok(resp) => {
                self.timings.requests += 1;
                if expected.contains(&resp.status) {
                    Ok((resp.body, took))
                } else {
                    Err(Failure::Error(format!(
                        "{method} {target}: HTTP {}: {}",
                        resp.status, resp.body
                    )))
                }
            }
            Err(_) if self.shared.kills.load(Ordering::SeqCst) != kills => {
                self.timings.cut += 1;
                Err(Failure::Cut)
            }
            Err(e) => Err(Failure::Error(format!("{e:#}"))),
        }
    }

    /// One create -> running -> stop -> exited -> delete cycle of container `self.name`.
    fn cycle(&mut self, record: bool) -> Result<(), Failure> {
        let mut body = self.shared.body.clone();
        body["name"] = Value::from(self.name.as_str());
        let start = Instant::now();
        let (created, create) = self.request(
            "POST",
            "/container",
            Some(&body),
            &[201],
            Some(Stage::Creating),
        )?;
        self.stage(Some(Stage::Running));
        if created["state"] != "running" {
            return Err(Failure::Error(format!(
                "POST /container answered state {}: {created}",
                created["state"]
            )));
        }
        let id = created["id"]
            .as_i64()
            .ok_or_else(|| Failure::Error(format!("no id in {created}")))?;

        let asked = Instant::now();
        let (patched, stop) = self.request(
            "PATCH",
            &format!("/container?id={id}&state=exited"),
            None,
            &[200],
            Some(Stage::Stopping),
        )?;
        if patched["state"] != "stopping" && patched["state"] != "exited" {
            return Err(Failure::Error(format!(
                "PATCH state=exited answered state {}: {patched}",
                patched["state"]
            )));
        }
        let (list, _) = self.request(
            "GET",
            &format!("/container?id={id}&wait=exited&timeout={WAIT_TIMEOUT_S}"),
            None,
            &[200],
            None,
        )?;
        let stopped = asked.elapsed();
        if list[0]["state"] != "exited" {
            return Err(Failure::Error(format!("waited for exited, got {list}")));
        }
        self.stage(Some(Stage::Exited));

        let (_, delete) = self.request(
            "DELETE",
            &format!("/container?id={id}"),
            None,
            &[200],
            Some(Stage::Deleting),
        )?;
        self.stage(None);
        if record {
            self.timings.create.push(create);
            self.timings.stop.push(stop);
            self.timings.stopped.push(stopped);
            self.timings.delete.push(delete);
            self.timings.cycle.push(start.elapsed());
        }
        Ok(())
    }

    /// Runs a cycle; after a failure, removes what the cycle left (a forced delete, which a
    /// container already gone answers 404).
    fn cycle_and_recover(&mut self, record: bool) -> Result<(), Failure> {
        self.cycles += 1;
        self.name = format!("load-{}-{}", self.index, self.cycles);
        let failure = match self.cycle(record) {
            Ok(()) => return Ok(()),
            Err(failure) => failure,
        };
        match failure {
            Failure::Error(what) => self.shared.error(what),
            Failure::Cut => {}
            Failure::Aborted => return Err(Failure::Aborted),
        }
        let target = format!("/container?name={}&force=true", self.name);
        loop {
            match self.request("DELETE", &target, None, &[200, 404], Some(Stage::Deleting)) {
                Ok(_) => {
                    self.stage(None);
                    return Ok(());
                }
                // The kill came again: once the gate opens, try again.
                Err(Failure::Cut) => continue,
                Err(Failure::Error(what)) => {
                    self.shared.error(format!("removing {}: {what}", self.name));
                    return Err(Failure::Aborted);
                }
                Err(Failure::Aborted) => return Err(Failure::Aborted),
            }
        }
    }

    fn run(mut self) -> Timings {
        let warm_up = loop {
            let cycled = self.cycle_and_recover(false);
            if cycled.is_err() || Instant::now() >= self.shared.warmup_until {
                break cycled;
            }
        };
        if self.shared.warmed_up() && warm_up.is_ok() {
            while !self.shared.time_up.load(Ordering::SeqCst) {
                if self.cycle_and_recover(true).is_err() {
                    break;
                }
            }
        }
        // Aborted: the container of the cycle cut short goes with the service's cleanup.
        self.shared.leave();
        self.timings
    }
}

/// The service's memory at one moment, in kB.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Memory {
    rss: u64,
    anon: u64,
    threads: u64,
}

fn memory(service: &Service) -> Result<Memory> {
    let pid = service.process.pid();
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let field = |name: &str| -> Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow!("no {name} in /proc/{pid}/status"))
    };
    Ok(Memory {
        rss: field("VmRSS:")?,
        anon: field("RssAnon:")?,
        threads: field("Threads:")?,
    })
}

/// What the check after the restart found.
#[derive(Default)]
pub(super) struct RestartCheck {
    /// From the new start until the restarted service answered.
    restart: Duration,
    /// Containers listed after the restart, and how many of them were running.
    listed: usize,
    running: usize,
    /// Creates and deletes cut short: not listed (rolled back or done) or listed.
    rolled_back: usize,
    kept: usize,
    /// Inits of the killed service the bench reaped (they ended since: a rollback's or an
    /// unadopted one's).
    reaped: usize,
}

pub(super) struct LoadFigures {
    elapsed: Duration,
    clients: usize,
    timings: Timings,
    errors: u64,
    first_errors: Vec<String>,
    memory_start: Memory,
    memory_before: Memory,
    memory_during: Vec<(Duration, Memory)>,
    memory_after: Memory,
    memory_settled: Memory,
    restart: Option<RestartCheck>,
    reaped_at_end: usize,
}

/// Runs the load against `service` (which must list nothing) and checks that it released
/// everything afterwards.
pub(super) fn run(service: &mut Service, image: &Path, options: &Options) -> Result<LoadFigures> {
    ensure!(options.clients > 0, "--load-clients must be at least 1");
    if let Some(kill) = options.kill_after {
        ensure!(
            kill < options.seconds,
            "--load-kill-after must be less than --load-seconds"
        );
    }
    out!(
        "\n5. Load: {} clients, each its own kept-alive connection, cycling nested containers for {} s after {} s of warm-up{}",
        options.clients,
        options.seconds,
        options.warmup.as_secs(),
        options
            .kill_after
            .map_or_else(String::new, |s| format!(", SIGKILL of the service after {s} s"))
    );
    let _ = io::stdout().flush();
    let memory_start = memory(service)?;
    let dirs_before = entries(&service.mount_dir);
    let shared = Shared {
        socket: service.socket.clone(),
        body: nested_container(image, INIT),
        time_up: AtomicBool::new(false),
        warmup_until: Instant::now() + options.warmup,
        abort: AtomicBool::new(false),
        kills: AtomicU64::new(0),
        gate: Mutex::new(Gate {
            open: true,
            parked: 0,
            active: options.clients,
            warm: 0,
            started: false,
        }),
        gate_changed: Condvar::new(),
        slots: Mutex::new(vec![None; options.clients]),
        errors: AtomicU64::new(0),
        first_errors: Mutex::new(Vec::new()),
    };
    let mut timings = Timings::default();
    let mut memory_before = Memory::default();
    let mut memory_during = Vec::new();
    let mut restart = None;
    let mut elapsed = Duration::ZERO;
    let driven = thread::scope(|scope| -> Result<()> {
        let workers: Vec<_> = (0..options.clients)
            .map(|index| {
                let worker = Worker {
                    shared: &shared,
                    index,
                    client: Client::new(shared.socket.clone()),
                    cycles: 0,
                    name: String::new(),
                    connected_after: 0,
                    timings: Timings::default(),
                };
                thread::Builder::new()
                    .name(format!("load-{index}"))
                    .spawn_scoped(scope, move || worker.run())
            })
            .collect::<Vec<_>>();
        let driven = (|| {
            for spawned in &workers {
                if let Err(e) = spawned {
                    return Err(anyhow!("starting the load's client threads: {e}"));
                }
            }
            shared.wait_warm()?;
            memory_before = memory(service)?;
            shared.start();
            drive(
                service,
                image,
                options,
                &shared,
                &dirs_before,
                &mut memory_during,
                &mut restart,
                &mut elapsed,
            )
        })();
        if driven.is_err() {
            shared.abort.store(true, Ordering::SeqCst);
            shared.set_gate(true);
        }
        for worker in workers.into_iter().flatten() {
            match worker.join() {
                Ok(t) => timings.merge(t),
                Err(_) => {
                    shared.error("a client thread panicked".into());
                }
            }
        }
        driven
    });
    let mut reaped_at_end = 0;
    if driven.is_err() && service.check_alive().is_err() {
        // The restart failed: what the killed service left is the bench's to remove.
        kill_containers(service);
    }
    driven?;
    check_interrupted()?;

    // Everything the load made is deleted: the service and the kernel must hold nothing of it.
    let mut client = Client::new(service.socket.clone());
    let left = client.expect("GET", "/container", None, 200)?;
    ensure!(
        left.as_array().is_some_and(Vec::is_empty),
        "containers left after the load ({} errors: {}): {left}",
        shared.errors.load(Ordering::Relaxed),
        lock(&shared.first_errors).join("; ")
    );
    check_released(service, &mut client, image)?;
    let instance = instance(service)?;
    ensure!(
        wait_until(|| instance_cgroups(&instance).is_empty()),
        "container cgroups left: {}",
        instance_cgroups(&instance)
            .iter()
            .map(|(dir, _)| dir.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let no_orphans = wait_until(|| {
        reaped_at_end += reap_orphans(service);
        orphans(service).is_empty()
    });
    ensure!(
        no_orphans,
        "processes of the killed service left: {:?}",
        orphans(service)
    );
    let new_dirs: Vec<_> = entries(&service.mount_dir)
        .difference(&dirs_before)
        .cloned()
        .collect();
    ensure!(
        new_dirs.is_empty(),
        "left under the mount dir: {new_dirs:?}"
    );
    // The allocator may hand pages back a moment after the last delete.
    thread::sleep(Duration::from_millis(500));
    let memory_after = memory(service)?;
    thread::sleep(SETTLE);
    let memory_settled = memory(service)?;
    let first_errors = lock(&shared.first_errors).clone();
    Ok(LoadFigures {
        elapsed,
        clients: options.clients,
        timings,
        errors: shared.errors.load(Ordering::Relaxed),
        first_errors,
        memory_start,
        memory_before,
        memory_during,
        memory_after,
        memory_settled,
        restart,
        reaped_at_end,
    })
}

/// The timed part of the run, on this thread while the clients cycle.
#[allow(clippy::too_many_arguments)]
fn drive(
    service: &mut Service,
    image: &Path,
    options: &Options,
    shared: &Shared,
    dirs_before: &BTreeSet<PathBuf>,
    memory_during: &mut Vec<(Duration, Memory)>,
    restart: &mut Option<RestartCheck>,
    elapsed: &mut Duration,
) -> Result<()> {
    let start = Instant::now();
    let total = Duration::from_secs(options.seconds);
    let kill_at = options.kill_after.map(Duration::from_secs);
    let mut samples = 1..MEMORY_SAMPLES;
    let mut next_sample = samples.next().map(|i| total * i / MEMORY_SAMPLES);
    while start.elapsed() < total {
        check_interrupted()?;
        service.check_alive()?;
        let now = start.elapsed();
        if restart.is_none() && kill_at.is_some_and(|at| now >= at) {
            *restart = Some(kill_and_check(service, image, shared, dirs_before)?);
            out!(
                "  SIGKILL after {} s, restarted and checked; the load goes on",
                now.as_secs()
            );
            let _ = io::stdout().flush();
        }
        if next_sample.is_some_and(|at| now >= at) {
            memory_during.push((now, memory(service)?));
            next_sample = samples.next().map(|i| total * i / MEMORY_SAMPLES);
        }
        thread::sleep(Duration::from_millis(50));
    }
    *elapsed = start.elapsed();
    shared.time_up.store(true, Ordering::SeqCst);
    Ok(())
}

/// SIGKILL, restart on the same state dir, and the check that nothing was lost or leaked.
fn kill_and_check(
    service: &mut Service,
    image: &Path,
    shared: &Shared,
    dirs_before: &BTreeSet<PathBuf>,
) -> Result<RestartCheck> {
    shared.set_gate(false);
    service.process.kill().context("killing imageapi-server")?;
    // Nobody can reach the restarted service before it has been checked.
    shared.wait_parked()?;
    let restarting = Instant::now();
    service.restart()?;
    let restart = restarting.elapsed();
    let slots = lock(&shared.slots).clone();
    let mut check = check_restarted(service, image, &slots, dirs_before)?;
    check.restart = restart;
    shared.set_gate(true);
    Ok(check)
}

/// Compares what the restarted service lists with what its clients knew and with the kernel.
fn check_restarted(
    service: &mut Service,
    image: &Path,
    slots: &[Option<(String, Stage)>],
    dirs_before: &BTreeSet<PathBuf>,
) -> Result<RestartCheck> {
    let mut client = Client::new(service.socket.clone());
    let mut list = |what: &str| -> Result<Vec<Value>> {
        let list = client.expect("GET", &format!("/{what}"), None, 200)?;
        match list {
            Value::Array(items) => Ok(items),
            other => Err(anyhow!("GET /{what}: not an array: {other}")),
        }
    };
    let containers = list("container")?;
    let mounts = list("mount")?;
    let attaches = list("attach")?;
    let mut problems = Vec::new();
    let mut check = RestartCheck {
        listed: containers.len(),
        ..RestartCheck::default()
    };

    // The service against what the clients knew.
    let listed: BTreeMap<&str, &Value> = containers
        .iter()
        .map(|c| (c["name"].as_str().unwrap_or_default(), c))
        .collect();
    let known: BTreeSet<&str> = slots.iter().flatten().map(|(n, _)| n.as_str()).collect();
    for (name, stage) in slots.iter().flatten() {
        let found = listed.get(name.as_str());
        match (stage, found) {
            (Stage::Creating | Stage::Deleting, None) => check.rolled_back += 1,
            (Stage::Creating | Stage::Deleting, Some(_)) => check.kept += 1,
            (_, None) => problems.push(format!("{name} ({stage:?}) is lost")),
            (Stage::Running, Some(c)) if c["state"] != "running" => {
                problems.push(format!("{name} was running, is now {}", c["state"]));
            }
            (Stage::Exited, Some(c)) if c["state"] != "exited" => {
                problems.push(format!("{name} had exited, is now {}", c["state"]));
            }
            _ => {}
        }
    }
    for name in listed.keys().filter(|n| !known.contains(*n)) {
        problems.push(format!("{name} is listed, but the load had deleted it"));
    }
    if mounts.len() != 2 * containers.len() || attaches.len() != containers.len() {
        problems.push(format!(
            "{} containers, {} mounts, {} attachments listed (each container has 2 and 1)",
            containers.len(),
            mounts.len(),
            attaches.len()
        ));
    }

    // The kernel against what the service lists.
    let mountpoints: BTreeSet<String> = mounts
        .iter()
        .filter_map(|m| m["mountpoint"].as_str().map(str::to_owned))
        .collect();
    for mountpoint in &mountpoints {
        if !is_mounted(mountpoint) {
            problems.push(format!("{mountpoint} is listed but not mounted"));
        }
    }
    for mountpoint in mounts_under(&service.mount_dir) {
        if !mountpoints.contains(&mountpoint) {
            problems.push(format!("{mountpoint} is mounted but not listed"));
        }
    }
    for dir in entries(&service.mount_dir).difference(dirs_before) {
        let claimed = mountpoints
            .iter()
            .any(|m| Path::new(m) == dir || Path::new(m).with_extension("rw") == *dir);
        if !claimed {
            problems.push(format!("{} is not a listed mount's", dir.display()));
        }
    }
    let devices: BTreeSet<&str> = attaches
        .iter()
        .filter_map(|a| a["device_file"].as_str())
        .collect();
    let image_loops: BTreeSet<String> = loop_devices()
        .into_iter()
        .filter(|(_, backing)| Path::new(backing) == image)
        .map(|(device, _)| device)
        .collect();
    for device in &devices {
        if !image_loops.contains(*device) {
            problems.push(format!("{device} is listed but not bound to the image"));
        }
    }
    for device in &image_loops {
        if !devices.contains(device.as_str()) {
            problems.push(format!("{device} is bound to the image but not listed"));
        }
    }
    let running: BTreeSet<i64> = containers
        .iter()
        .filter(|c| c["state"] == "running")
        .filter_map(|c| c["id"].as_i64())
        .collect();
    check.running = running.len();
    let instance = instance(service)?;
    let with_procs: BTreeSet<i64> = instance_cgroups(&instance)
        .into_iter()
        .filter(|(dir, _)| {
            fs::read_to_string(dir.join("cgroup.procs")).is_ok_and(|p| !p.trim().is_empty())
        })
        .map(|(_, id)| id)
        .collect();
    for id in with_procs.difference(&running) {
        problems.push(format!(
            "the cgroup of container {id} holds processes, but it is not listed running"
        ));
    }
    for id in running.difference(&with_procs) {
        problems.push(format!(
            "container {id} is listed running but its cgroup holds no process"
        ));
    }
    check.reaped = reap_orphans(service);
    for (pid, cgroup) in orphans(service) {
        let id = cgroup
            .rsplit('/')
            .next()
            .and_then(|n| n.strip_prefix(&format!("{instance}-")))
            .and_then(|id| id.parse::<i64>().ok());
        if !id.is_some_and(|id| running.contains(&id)) {
            problems.push(format!(
                "process {pid} of the killed service (cgroup {cgroup}) is no listed container's init"
            ));
        }
    }
    ensure!(
        problems.is_empty(),
        "after the SIGKILL and restart: {}",
        problems.join("; ")
    );
    Ok(check)
}

/// Entries of a directory.
fn entries(dir: &Path) -> BTreeSet<PathBuf> {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect()
}

/// The service's instance name, which names its containers' cgroups (`<instance>-<id>`).
fn instance(service: &Service) -> Result<String> {
    let path = service.state_dir.join("state.json");
    let store: Value = serde_json::from_slice(
        &fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
    )
    .with_context(|| format!("parsing {}", path.display()))?;
    store["instance"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("no instance in {}", path.display()))
}

/// The service's container cgroups in every hierarchy, with their container ids.
fn instance_cgroups(instance: &str) -> Vec<(PathBuf, i64)> {
    let prefix = format!("{instance}-");
    container_cgroups()
        .into_iter()
        .filter_map(|dir| {
            let name = dir.file_name()?.to_str()?;
            let id = name.strip_prefix(&prefix)?.parse().ok()?;
            Some((dir, id))
        })
        .collect()
}

/// This process's children other than the service: the inits a killed service left (the bench
/// is a child subreaper since part 1 launched its own inits), with their cgroup2 path.
fn orphans(service: &Service) -> Vec<(i32, String)> {
    let service_pid = service.process.pid() as i32;
    children()
        .into_iter()
        .filter(|pid| *pid != service_pid)
        .map(|pid| {
            let cgroup = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
            let unified = cgroup
                .lines()
                .find_map(|l| l.strip_prefix("0::"))
                .unwrap_or_default()
                .to_owned();
            (pid, unified)
        })
        .collect()
}

fn children() -> Vec<i32> {
    fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|t| fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|c| {
            c.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect()
}

/// Reaps the orphaned inits that have ended, as the host's init would reap a crashed service's;
/// how many. Only zombies are waited for, and never the service, whose status the bench keeps.
fn reap_orphans(service: &Service) -> usize {
    let service_pid = service.process.pid() as i32;
    let mut reaped = 0;
    for pid in children().into_iter().filter(|pid| *pid != service_pid) {
        let zombie = fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .map(|(_, rest)| rest.trim_start().starts_with('Z'))
            })
            .unwrap_or(false);
        let Some(pid) = rustix::process::Pid::from_raw(pid).filter(|_| zombie) else {
            continue;
        };
        let options =
            rustix::process::WaitIdOptions::EXITED | rustix::process::WaitIdOptions::NOHANG;
        if let Ok(Some(_)) = rustix::process::waitid(rustix::process::WaitId::Pid(pid), options) {
            reaped += 1;
        }
    }
    reaped
}

/// Kills the processes in the service's container cgroups and removes those, when the service
/// that should have adopted them could not start again.
fn kill_containers(service: &Service) {
    let Ok(instance) = instance(service) else {
        return;
    };
    for (dir, _) in instance_cgroups(&instance) {
        let _ = fs::write(dir.join("freezer.state"), "THAWED");
        let _ = fs::write(dir.join("cgroup.kill"), "1");
    }
    wait_until(|| {
        reap_orphans(service);
        instance_cgroups(&instance)
            .iter()
            .all(|(dir, _)| fs::remove_dir(dir).is_ok())
    });
}

fn row(name: &str, samples: &[Duration]) {
    out!(
        "  {name:<44} {:>7} {:>9} {:>9} {:>9}",
        samples.len(),
        us(median(samples)),
        us(quantile(samples, 0.99)),
        us(quantile(samples, 1.0))
    );
}

fn mb(kb: u64) -> String {
    format!("{:.1} MB", kb as f64 / 1000.0)
}

fn mb_diff(from: u64, to: u64) -> String {
    format!("{:+.2} MB", (to as f64 - from as f64) / 1000.0)
}

pub(super) fn print(figures: &LoadFigures, options: &Options) {
    let t = &figures.timings;
    let secs = figures.elapsed.as_secs_f64().max(f64::EPSILON);
    out!(
        "  {} cycles in {:.1} s by {} clients: {:.1} requests/s, {:.1} cycles/s",
        t.cycle.len(),
        secs,
        figures.clients,
        t.requests as f64 / secs,
        t.cycle.len() as f64 / secs
    );
    out!(
        "  {:<44} {:>7} {:>9} {:>9} {:>9}",
        "operation (µs)",
        "count",
        "p50",
        "p99",
        "max"
    );
    row("create: POST, state running -> 201 running", &t.create);
    row("stop: PATCH state=exited -> 200", &t.stop);
    row("stop until GET ?wait=exited answers exited", &t.stopped);
    row("delete: DELETE -> 200 (all nested released)", &t.delete);
    row("whole cycle", &t.cycle);
    out!("  errors: {}", figures.errors);
    for error in &figures.first_errors {
        out!("    {error}");
    }
    if let Some(check) = &figures.restart {
        out!(
            "  SIGKILL + restart: ready {} ms after the start; {} requests cut short by the kill (not errors); \
             listed after the restart: {} containers ({} running), every answered create among them; \
             cut creates and deletes: {} not listed (rolled back or done), {} listed; {} ended inits of the killed service reaped; \
             kernel and listing agree (mounts, dirs, loop devices, cgroups, inits)",
            check.restart.as_millis(),
            t.cut,
            check.listed,
            check.running,
            check.rolled_back,
            check.kept,
            check.reaped + figures.reaped_at_end,
        );
    }
    let before = figures.memory_before;
    let after = figures.memory_after;
    let during: Vec<String> = figures
        .memory_during
        .iter()
        .map(|(at, m)| format!("{} s {}", at.as_secs(), mb(m.rss)))
        .collect();
    let settled = figures.memory_settled;
    out!(
        "  service memory (VmRSS / RssAnon, threads): at the start of part 5 {} / {} ({}), after the warm-up {} / {} ({}), \
         after the run {} / {} ({}): {} / {}; {} s later {} / {} ({}){}",
        mb(figures.memory_start.rss),
        mb(figures.memory_start.anon),
        figures.memory_start.threads,
        mb(before.rss),
        mb(before.anon),
        before.threads,
        mb(after.rss),
        mb(after.anon),
        after.threads,
        mb_diff(before.rss, after.rss),
        mb_diff(before.anon, after.anon),
        SETTLE.as_secs(),
        mb(settled.rss),
        mb(settled.anon),
        settled.threads,
        if options.kill_after.is_some() {
            " (not comparable: the service restarted in between)"
        } else {
            ""
        }
    );
    out!("  during the run: {}", during.join(", "));
    out!(
        "  afterwards nothing is listed and nothing is left: no mount, loop device, container cgroup or process"
    );
}
