//! The actor of one container: launches its init, supervises it and reports every state change
//! to the registry without being asked.

use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tracing::{info, warn};

use super::launch::{self, InitConfig, LaunchError};
use super::log::ContainerLog;
use super::process::{ExitStatus, Init};
use super::runtime::Runtime;
use crate::blocking::off_event_loop;
use crate::error::{Error, Origin};
use crate::model::lifecycle::{self, Action, Step};
use crate::model::spec::{signal_name, StopPolicy};
use crate::model::wire::{ContainerState, Id, Namespace};
use crate::object::{ObjectAddr, Surrender, Surrendered};
use crate::registry::graph::GraphError;
use crate::registry::graph::ObjectKind;
use crate::registry::record::ContainerRecord;
use crate::sys::{errno_of_io, SysError};

const LAUNCH: Origin = Origin::new(ObjectKind::Container, "launch");
const SIGNAL: Origin = Origin::new(ObjectKind::Container, "signal");
const FREEZER: Origin = Origin::new(ObjectKind::Container, "freezer");

/// The environment every init gets: enough to find programs, and `container` so that systemd
/// knows it runs in a container.
const INIT_ENV: [&str; 4] = [
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "container=imageapi",
    "HOME=/",
    "TERM=linux",
];

/// A container's state changed; sent to the registry.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct StateChanged {
    pub id: Id,
    pub state: ContainerState,
    pub exit_code: Option<i64>,
    /// The running init's pid and start time, when this change started one.
    pub init: Option<(i32, u64)>,
}

/// What a launch gave: the running init, or why it did not start (the init's fault or the
/// kernel's); the outer error is the service's own (the console log cannot be opened).
pub(crate) type Launched = Result<Result<Init, LaunchError>, Error>;

/// What a container runs, fixed at create.
#[derive(Clone)]
pub struct ContainerPlan {
    pub rootfs: PathBuf,
    pub argv: Vec<String>,
    pub hostname: String,
    pub namespaces: BTreeSet<Namespace>,
    pub systemd: bool,
    pub stop: StopPolicy,
    pub logfile: PathBuf,
}

impl ContainerPlan {
    /// What container `id` (called `name`) runs, from its record (at create, and again after a
    /// restart).
    pub fn of_record(
        id: Id,
        name: Option<&str>,
        container: &ContainerRecord,
        rootfs: PathBuf,
    ) -> ContainerPlan {
        ContainerPlan {
            rootfs,
            argv: shlex::split(&container.command).unwrap_or_default(),
            hostname: name
                .map(str::to_string)
                .unwrap_or_else(|| format!("container-{id}")),
            namespaces: container
                .namespaces
                .iter()
                .copied()
                .chain([Namespace::Mnt, Namespace::Pid])
                .collect(),
            systemd: container.systemd,
            stop: container.stop,
            logfile: container.logfile.clone(),
        }
    }
}

pub struct ContainerActor {
    id: Id,
    plan: ContainerPlan,
    state: ContainerState,
    init: Option<Arc<Init>>,
    /// How many inits this container has started: tells a stop timer which init it belongs to.
    launches: u64,
    /// Set when the service asked the init to stop, so its exit counts as `exited`.
    stop_requested: bool,
    registry: Recipient<StateChanged>,
    /// The mount the container runs on: kept alive as long as the container is.
    mount: ObjectAddr,
    /// Wakes a Surrender waiting for the init to be gone.
    on_exit: Vec<tokio::sync::oneshot::Sender<()>>,
    /// Agreed to go (see [`Retire`]): takes no more state changes.
    retired: bool,
    /// The engine's container runtime, which the init is launched into.
    runtime: Arc<Runtime>,
    /// The lifecycle lines' writer.
    log: ContainerLog,
}

impl ContainerActor {
    pub fn start(
        id: Id,
        plan: ContainerPlan,
        mount: ObjectAddr,
        registry: Recipient<StateChanged>,
        runtime: Arc<Runtime>,
    ) -> Addr<Self> {
        let created = (ContainerState::Created, None);
        Self::run(id, plan, created, (mount, registry, runtime), "created")
    }

    /// The actor of a container found again after a restart of the service, in the state the
    /// store recorded; with its init when that is still running.
    pub fn adopt(
        id: Id,
        plan: ContainerPlan,
        state: ContainerState,
        init: Option<Init>,
        mount: ObjectAddr,
        registry: Recipient<StateChanged>,
        runtime: Arc<Runtime>,
    ) -> Addr<Self> {
        let line = "adopted by a new start of the service";
        Self::run(id, plan, (state, init), (mount, registry, runtime), line)
    }

    fn run(
        id: Id,
        plan: ContainerPlan,
        (state, init): (ContainerState, Option<Init>),
        (mount, registry, runtime): (ObjectAddr, Recipient<StateChanged>, Arc<Runtime>),
        line: &str,
    ) -> Addr<Self> {
        let log = ContainerLog::start(id, plan.logfile.clone());
        let actor = ContainerActor {
            id,
            plan,
            state,
            stop_requested: state == ContainerState::Stopping,
            launches: u64::from(init.is_some()),
            init: init.map(Arc::new),
            registry,
            mount,
            on_exit: Vec::new(),
            retired: false,
            runtime,
            log,
        };
        actor.log_line(line);
        actor.start()
    }

    /// Appends a lifecycle line to the container's log, next to the init's own output (off the
    /// event loop, in order).
    fn log_line(&self, line: &str) {
        self.log.line(line);
    }

    /// Appends the line that says how the init ended, and only then moves to `state`: once the
    /// state reads exited or dead, the line is in the log. The actor handles nothing else
    /// meanwhile.
    fn end_with(
        &mut self,
        line: String,
        (state, code): (ContainerState, Option<i64>),
        ctx: &mut Context<Self>,
    ) {
        let written = self.log.written(line);
        ctx.wait(written.into_actor(self).map(move |(), actor, _| {
            actor.set_state(state, code);
            for waiter in actor.on_exit.drain(..) {
                let _ = waiter.send(());
            }
        }));
    }

    fn set_state(&mut self, state: ContainerState, exit_code: Option<i64>) {
        self.state = state;
        self.registry.do_send(StateChanged {
            id: self.id,
            state,
            exit_code,
            init: self
                .init
                .as_ref()
                .map(|init| (init.pid(), init.start_time())),
        });
    }

    /// The init's configuration, with the console log opened (a file operation: call it off
    /// the event loop).
    fn init_config(id: Id, plan: &ContainerPlan) -> Result<InitConfig, Error> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&plan.logfile)
            .map_err(|err| Error::Kernel {
                origin: LAUNCH,
                source: SysError {
                    op: format!("open {}", plan.logfile.display()),
                    errno: errno_of_io(&err),
                },
            })?;
        Ok(InitConfig {
            id,
            rootfs: plan.rootfs.clone(),
            argv: plan.argv.clone(),
            env: INIT_ENV.iter().map(|v| v.to_string()).collect(),
            hostname: plan.hostname.clone(),
            namespaces: plan.namespaces.clone(),
            systemd: plan.systemd,
            log,
        })
    }

    /// Opens the console log and launches the init of container `id`: blocking, so on a
    /// blocking thread (the actor's own for a start, the create's for a create that starts it).
    pub(crate) fn launch_init(runtime: &Arc<Runtime>, id: Id, plan: &ContainerPlan) -> Launched {
        let config = Self::init_config(id, plan)?;
        Ok(launch::launch(runtime, config))
    }

    fn launch(&mut self) -> ResponseActFuture<Self, Result<ContainerState, Error>> {
        let runtime = self.runtime.clone();
        let (id, plan) = (self.id, self.plan.clone());
        let launched = off_event_loop(move || Self::launch_init(&runtime, id, &plan));
        Box::pin(
            launched.into_actor(self).then(|joined, actor, ctx| {
                actor.took(joined.unwrap_or(Err(Error::ShuttingDown)), ctx)
            }),
        )
    }

    /// Makes a launched init the container's, or records why it did not start.
    fn took(
        &mut self,
        launched: Launched,
        ctx: &mut Context<Self>,
    ) -> ResponseActFuture<Self, Result<ContainerState, Error>> {
        let launched = match launched {
            Ok(launched) => launched,
            Err(err) => return Box::pin(fut::ready(Err(err))),
        };
        match launched {
            Ok(init) => {
                let init = Arc::new(init);
                self.log_line(&format!(
                    "started {:?} as pid {}",
                    self.plan.argv,
                    init.pid()
                ));
                info!(id = self.id, pid = init.pid(), "container running");
                self.init = Some(init.clone());
                self.stop_requested = false;
                self.set_state(ContainerState::Running, None);
                self.launches += 1;
                self.watch(init, ctx);
                Box::pin(fut::ready(Ok(ContainerState::Running)))
            }
            Err(err) => {
                // As for an init that ended: dead only once the log says why.
                let written = self.log.written(format!("failed to start: {err}"));
                Box::pin(written.into_actor(self).map(move |(), actor, _| {
                    actor.set_state(ContainerState::Dead, None);
                    Err(launch_error(err))
                }))
            }
        }
    }

    /// Waits (on the pidfd, no polling) for the init to end, then records how it ended.
    fn watch(&mut self, init: Arc<Init>, ctx: &mut Context<Self>) {
        let rootfs = self.plan.rootfs.clone();
        let ended = async move {
            init.exited().await?;
            // Reaping takes the reaper's lock and removes the cgroups: not on the event loop.
            off_event_loop(move || {
                let status = init.try_wait()?.ok_or_else(|| {
                    std::io::Error::other("the init's pidfd is readable but it has not exited")
                })?;
                // The container counts as exited only once what it wrote is on disk.
                if let Ok(root) = std::fs::File::open(&rootfs) {
                    let _ = nix::unistd::syncfs(&root);
                }
                Ok(status)
            })
            .await
            .unwrap_or_else(|| Err(std::io::Error::other("the service is shutting down")))
        };
        ctx.spawn(
            ended
                .into_actor(self)
                .map(|status, actor, ctx| actor.exited(status, ctx)),
        );
    }

    fn exited(&mut self, status: std::io::Result<ExitStatus>, ctx: &mut Context<Self>) {
        let status = status.unwrap_or_else(|err| {
            // Only a broken pidfd gets here; the init is gone from the service's point of view.
            warn!(id = self.id, error = %err, "cannot wait for the init");
            ExitStatus::Signaled(libc::SIGKILL)
        });
        let stopped = self.stop_requested;
        let (state, code, text) = match status {
            ExitStatus::Exited(0) => (
                ContainerState::Exited,
                Some(0),
                "exited with status 0".to_string(),
            ),
            ExitStatus::Exited(code) if stopped => (
                ContainerState::Exited,
                Some(code as i64),
                format!("stopped, exit status {code}"),
            ),
            ExitStatus::Exited(code) => (
                ContainerState::Dead,
                Some(code as i64),
                format!("exited with status {code}"),
            ),
            ExitStatus::Signaled(signal) if stopped => (
                ContainerState::Exited,
                Some(128 + signal as i64),
                format!("stopped by signal {signal}"),
            ),
            ExitStatus::Signaled(signal) => (
                ContainerState::Dead,
                Some(128 + signal as i64),
                format!("killed by signal {signal}"),
            ),
            // An adopted init's status is not ours to read: a stop the service asked for
            // counts as exited, any other end as dead, and `exit_code` stays unset.
            ExitStatus::Unknown => (
                if stopped {
                    ContainerState::Exited
                } else {
                    ContainerState::Dead
                },
                None,
                "ended; its exit status is unknown (adopted after a service restart)".to_string(),
            ),
        };
        self.init = None;
        info!(
            id = self.id,
            state = state.as_str(),
            code,
            "container init ended"
        );
        self.end_with(text, (state, code), ctx);
    }

    fn signal(&self, signal: i32) -> Result<(), Error> {
        match &self.init {
            Some(init) => init
                .signal(signal)
                .map_err(|err| Error::rejected(SIGNAL, err.to_string())),
            None => Ok(()),
        }
    }

    /// Signals the init to stop (thawing a paused one, off the event loop, so that it gets the
    /// signal) and arms the stop timer; answers `stopping`.
    fn request_stop(
        &mut self,
        ctx: &mut Context<Self>,
    ) -> ResponseActFuture<Self, Result<ContainerState, Error>> {
        self.stop_requested = true;
        self.log_line(&format!(
            "stop requested ({})",
            signal_name(self.plan.stop.signal)
        ));
        if let Err(err) = self.signal(self.plan.stop.signal) {
            return Box::pin(fut::ready(Err(err)));
        }
        if self.plan.stop.signal != libc::SIGKILL {
            let launch = self.launches;
            ctx.run_later(
                Duration::from_secs(self.plan.stop.timeout_secs),
                move |actor, _| {
                    // Only the init this stop was meant for: not one started after it exited.
                    let same_init = actor.launches == launch && actor.init.is_some();
                    if same_init && actor.state == ContainerState::Stopping {
                        actor.log_line("stop timed out: killing");
                        let _ = actor.signal(libc::SIGKILL);
                    }
                },
            );
        }
        // A frozen init only gets the signal once thawed.
        let thawed = (self.state == ContainerState::Paused).then(|| self.thaw());
        Box::pin(
            async move {
                match thawed {
                    Some(thawed) => thawed.await,
                    None => Ok(()),
                }
            }
            .into_actor(self)
            .map(|thawed, actor, _| {
                thawed?;
                actor.set_state(ContainerState::Stopping, None);
                Ok(ContainerState::Stopping)
            }),
        )
    }

    /// Freezes the container, off the event loop: the freezer waits until every task stopped.
    fn pause(&mut self) -> ResponseActFuture<Self, Result<ContainerState, Error>> {
        let init = self.init.clone();
        let frozen = async move {
            match init {
                Some(init) => off_event_loop(move || init.freeze()).await,
                None => Some(Ok(())),
            }
        };
        Box::pin(frozen.into_actor(self).map(|frozen, actor, _| {
            frozen
                .ok_or(Error::ShuttingDown)?
                .map_err(|err| Error::rejected(FREEZER, err.to_string()))?;
            actor.log_line("paused");
            actor.set_state(ContainerState::Paused, None);
            Ok(ContainerState::Paused)
        }))
    }

    /// Thaws the container, off the event loop (a cgroup write).
    fn thaw(&self) -> impl std::future::Future<Output = Result<(), Error>> {
        let init = self.init.clone();
        async move {
            let Some(init) = init else {
                return Ok(());
            };
            off_event_loop(move || init.thaw())
                .await
                .ok_or(Error::ShuttingDown)?
                .map_err(|err| Error::rejected(FREEZER, err.to_string()))
        }
    }
}

/// A launch failure: the client's fault (422) or the kernel's (500, with the errno).
pub fn launch_error(err: LaunchError) -> Error {
    if err.is_rejection() {
        return Error::rejected(LAUNCH, err.to_string());
    }
    let errno = std::error::Error::source(&err)
        .and_then(|source| source.downcast_ref::<std::io::Error>())
        .map(errno_of_io)
        .unwrap_or(nix::errno::Errno::EIO);
    Error::Kernel {
        origin: LAUNCH,
        source: SysError {
            op: err.to_string(),
            errno,
        },
    }
}

impl Actor for ContainerActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // An init adopted after a restart is watched from the start.
        if let Some(init) = self.init.clone() {
            self.watch(init, ctx);
        }
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        // Dropping an init that was neither reaped nor left running kills it and thaws its
        // cgroups: file writes, so not here on the event loop.
        if let Some(init) = self.init.take() {
            actix_rt::task::spawn_blocking(move || drop(init));
        }
    }
}

/// Moves the container towards a state (`PATCH state=`); answers the state it is in afterwards.
#[derive(Message)]
#[rtype(result = "Result<ContainerState, Error>")]
pub struct ChangeState(pub ContainerState);

impl Handler<ChangeState> for ContainerActor {
    // Atomic: no other message (a second start, say) is handled until the change is done.
    type Result = AtomicResponse<Self, Result<ContainerState, Error>>;

    fn handle(
        &mut self,
        ChangeState(wanted): ChangeState,
        ctx: &mut Self::Context,
    ) -> Self::Result {
        let refuse = |actor: &Self, hint| -> Self::Result {
            AtomicResponse::new(Box::pin(fut::ready(Err(Error::ContainerBusy {
                id: actor.id,
                state: actor.state,
                hint,
            }))))
        };
        let done = |result: Result<ContainerState, Error>| -> Self::Result {
            AtomicResponse::new(Box::pin(fut::ready(result)))
        };
        if self.retired {
            return done(Err(Error::Graph(GraphError::NotFound(self.id))));
        }
        let Some(action) = Action::of_wanted_state(wanted) else {
            return refuse(
                self,
                "a container can only be asked to be running, exited or paused",
            );
        };
        match lifecycle::transition(self.state, action) {
            Err(lifecycle::Refused(hint)) => refuse(self, hint),
            Ok(Step::Stay) => done(Ok(self.state)),
            Ok(Step::Launch) => AtomicResponse::new(self.launch()),
            Ok(Step::Thaw) => {
                let thawed = self.thaw().into_actor(self).map(|thawed, actor, _| {
                    thawed?;
                    actor.log_line("resumed");
                    actor.set_state(ContainerState::Running, None);
                    Ok(ContainerState::Running)
                });
                AtomicResponse::new(Box::pin(thawed))
            }
            Ok(Step::RequestStop) => AtomicResponse::new(self.request_stop(ctx)),
            Ok(Step::Freeze) => AtomicResponse::new(self.pause()),
            Ok(Step::Remove | Step::KillAndRemove) => {
                unreachable!("a state change is never a removal")
            }
        }
    }
}

/// The create that made this container launched its init too, on the blocking thread of its
/// kernel steps (one thread hop fewer, see registry/build.rs): the actor takes it as the start
/// it would have made itself, and answers as [`ChangeState`] to `running` does.
#[derive(Message)]
#[rtype(result = "Result<ContainerState, Error>")]
pub(crate) struct TakeLaunched(pub Launched);

impl Handler<TakeLaunched> for ContainerActor {
    type Result = AtomicResponse<Self, Result<ContainerState, Error>>;

    fn handle(
        &mut self,
        TakeLaunched(launched): TakeLaunched,
        ctx: &mut Self::Context,
    ) -> Self::Result {
        let fresh = !self.retired && self.state == ContainerState::Created && self.launches == 0;
        if !fresh {
            // Only a container its create has not given out yet takes one; an init that
            // arrives otherwise is a bug, and is killed (off the event loop, a cgroup write).
            warn!(
                id = self.id,
                state = self.state.as_str(),
                "a launched init arrived after the create"
            );
            if let Ok(Ok(init)) = launched {
                actix_rt::task::spawn_blocking(move || drop(init));
            }
            return AtomicResponse::new(Box::pin(fut::ready(Err(Error::ContainerBusy {
                id: self.id,
                state: self.state,
                hint: "the container was started already",
            }))));
        }
        AtomicResponse::new(self.took(launched, ctx))
    }
}

/// Asks the container whether it may go now (a DELETE): refused while its init runs unless
/// forced. Once agreed, the container takes no more state changes. Queued behind a start in
/// progress, so a DELETE racing a start sees the started init and is refused.
#[derive(Message)]
#[rtype(result = "Result<(), Error>")]
pub struct Retire {
    pub force: bool,
}

impl Handler<Retire> for ContainerActor {
    type Result = Result<(), Error>;

    fn handle(&mut self, msg: Retire, _: &mut Self::Context) -> Self::Result {
        let action = if msg.force {
            Action::ForceDelete
        } else {
            Action::Delete
        };
        match lifecycle::transition(self.state, action) {
            Ok(_) => {
                self.retired = true;
                Ok(())
            }
            Err(lifecycle::Refused(hint)) => Err(Error::ContainerBusy {
                id: self.id,
                state: self.state,
                hint,
            }),
        }
    }
}

/// The service stops but keeps its objects: leave the init running, unsupervised, for the next
/// start to adopt.
#[derive(Message)]
#[rtype(result = "()")]
pub struct LeaveRunning;

impl Handler<LeaveRunning> for ContainerActor {
    type Result = ();

    fn handle(&mut self, _: LeaveRunning, _: &mut Self::Context) {
        if let Some(init) = &self.init {
            init.leave_running();
            self.log_line("service stopping: the container keeps running");
        }
    }
}

impl Handler<Surrender> for ContainerActor {
    type Result = ResponseActFuture<Self, Option<Surrendered>>;

    /// Kills the init if it still runs and, once it is gone, stops; what is left to do, the
    /// log's last line, is for the release walk's blocking thread.
    fn handle(&mut self, _: Surrender, _: &mut Self::Context) -> Self::Result {
        self.retired = true;
        let id = self.id;
        let gone = if let Some(init) = self.init.clone() {
            let (notify, exited) = tokio::sync::oneshot::channel();
            self.on_exit.push(notify);
            self.stop_requested = true;
            Some((init, exited))
        } else {
            None
        };
        Box::pin(
            async move {
                if let Some((init, exited)) = gone {
                    // The kill thaws the cgroup too: a file write, so off the event loop.
                    let killed = off_event_loop(move || init.kill()).await;
                    if let Some(Err(error)) = killed {
                        warn!(id, %error, "cannot kill the init");
                    }
                    let _ = exited.await;
                }
            }
            .into_actor(self)
            .map(|(), actor, ctx| {
                ctx.stop();
                let last_line = actor.log.last_line("deleted");
                let mount = actor.mount.clone();
                let id = actor.id;
                Some(Surrendered::new(id, "container", move || {
                    if let Some(append) = last_line {
                        append();
                    }
                    drop(mount);
                    Ok(())
                }))
            }),
        )
    }
}
