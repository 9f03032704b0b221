//! The engine's front door: what the HTTP layer (or any other front end) calls.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use tracing::{debug, info, warn};

use crate::error::Error;
use crate::events::{Change, Delivery, Events, Subscription};
use crate::model::spec;
use futures::FutureExt;

use crate::blocking::{mailbox_gone, off_event_loop};
use crate::container::timing::TARGET as TIMING;
use crate::container::{InitProgram, Runtime};
use crate::driver::{Host, Kinds};
use crate::metrics::{Metrics, Operation};
use crate::model::wire::{Attach, AttachKind, Container, ContainerState, Id, Mount, MountKind};
pub use crate::registry::actor::Selector;
use crate::registry::actor::{
    Abort, Begin, Census, Commit, Delete, Initial, List, Registry, SetState, Shutdown,
};
use crate::registry::build::{Built, Transaction};
use crate::registry::graph::Graph;
use crate::registry::graph::ObjectKind;
use crate::registry::record::View;
use crate::restore;
use crate::store::{Store, StoreError};

/// Where the engine keeps what it makes on the host.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Parent of every mountpoint (and overlay upper/work dirs) the service makes.
    pub mount_dir: PathBuf,
    /// Where container console logs go.
    pub log_dir: PathBuf,
    /// Where the state store lives; `None` keeps the graph in memory only.
    pub state_dir: Option<PathBuf>,
    /// Release every object at shutdown even with a state store (without one, always).
    pub cleanup_on_exit: bool,
    /// The flags of `uri` mounts: their download cache, limits and CA.
    pub uri: crate::mount::uri::UriConfig,
    /// How many of the latest events are kept for subscribers that resume.
    pub event_buffer: usize,
    /// The program container inits run (see [`crate::container::InitProgram`]).
    pub init_program: PathBuf,
}

/// Why the engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot prepare {path}: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot start the container runtime: {0}")]
    Runtime(#[from] crate::container::RuntimeError),
    #[error("the engine's start was interrupted")]
    Interrupted,
}

/// A handle on the running engine; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    registry: Addr<Registry>,
    /// The arbiter the registry and every object actor live on: creates run there too, so the
    /// actors they start outlive the HTTP workers.
    arbiter: ArbiterHandle,
    config: Arc<EngineConfig>,
    /// What every driver is given: the mount dir, the instance name (kept in the state store)
    /// that tags this service's loop devices and names its cgroups.
    host: Arc<Host>,
    /// The kinds of attachment and mount this engine has drivers for.
    kinds: Arc<Kinds>,
    /// What the engine's containers share: cgroups, reaper, launcher.
    runtime: Arc<Runtime>,
    metrics: Metrics,
    events: Events,
}

impl Engine {
    /// Makes the service's directories, becomes a child subreaper, reloads the state store
    /// (adopting what the previous run left, see [`crate::restore`]) and starts the registry on
    /// an arbiter of its own. Must be called inside an actix system, before serving.
    pub async fn start(config: EngineConfig) -> Result<Engine, StartError> {
        let kinds = Kinds::standard(&config.uri);
        Self::start_with(config, kinds).await
    }

    /// [`Engine::start`] with the drivers of `kinds` (tests give fakes).
    pub async fn start_with(mut config: EngineConfig, kinds: Kinds) -> Result<Engine, StartError> {
        let metrics = Metrics::new(&kinds);
        let kinds = Arc::new(kinds);
        let prepared = off_event_loop(move || -> Result<_, StartError> {
            for dir in [&mut config.mount_dir, &mut config.log_dir] {
                let prepare = |dir: &PathBuf| {
                    std::fs::create_dir_all(dir)?;
                    std::fs::canonicalize(dir)
                };
                // The kernel names mountpoints by their real path (the default /var/run is a
                // link to /run): recorded mountpoints must be the ones mountinfo shows.
                *dir = prepare(dir).map_err(|source| StartError::Dir {
                    path: dir.clone(),
                    source,
                })?;
            }
            Ok(config)
        });
        let mut config = prepared.await.ok_or(StartError::Interrupted)??;
        let (store, snapshot) = match config.state_dir.clone() {
            Some(dir) => {
                let loading = kinds.clone();
                off_event_loop(move || -> Result<_, StoreError> {
                    let store = Store::open(&dir)?;
                    let snapshot = store.load(&loading)?;
                    Ok((Some(Arc::new(store)), snapshot))
                })
                .await
                .ok_or(StartError::Interrupted)??
            }
            None => (None, None),
        };
        let instance: Arc<str> = match &snapshot {
            Some(snapshot) => snapshot.instance.as_str().into(),
            None => uuid::Uuid::new_v4().simple().to_string().into(),
        };
        // Orphans re-parented to the service are reaped from the start, not from the first
        // container.
        let runtime = Runtime::new(&instance, InitProgram::new(config.init_program.clone()))?;
        let host = Arc::new(Host {
            mount_dir: std::mem::take(&mut config.mount_dir),
            instance: instance.clone(),
            loop_turn: Default::default(),
        });
        config.mount_dir = host.mount_dir.clone();
        let mut checked = match snapshot {
            Some(snapshot) => {
                let (checking, on, restoring) = (kinds.clone(), host.clone(), runtime.clone());
                off_event_loop(move || restore::check(snapshot, &checking, &on, &restoring))
                    .await
                    .ok_or(StartError::Interrupted)?
            }
            None => restore::Checked {
                instance: instance.to_string(),
                graph: Graph::new(),
                adopted: Default::default(),
            },
        };
        for id in checked.adopted.keys() {
            if let Some(node) = checked.graph.get_any(*id) {
                metrics.adopted(node.kind);
            }
        }
        let events = Events::new(config.event_buffer);
        let publishing = events.clone();
        let arbiter = Arbiter::new().handle();
        let (actors_host, adopting, counting) = (host.clone(), runtime.clone(), metrics.clone());
        let registry = Registry::start_in_arbiter(&arbiter, move |ctx: &mut Context<Registry>| {
            let actors = restore::start_actors(
                &mut checked,
                &actors_host,
                ctx.address().recipient(),
                &adopting,
            );
            let initial = Initial {
                instance: checked.instance,
                graph: checked.graph,
                actors,
            };
            Registry::new(initial, store, counting, publishing)
        });
        info!(
            mount_dir = %config.mount_dir.display(),
            log_dir = %config.log_dir.display(),
            state_dir = ?config.state_dir,
            "engine started"
        );
        Ok(Engine {
            registry,
            arbiter,
            config: Arc::new(config),
            host,
            kinds,
            runtime,
            metrics,
            events,
        })
    }

    /// Follows the engine's events after number `after`, or from now on.
    pub fn subscribe(&self, after: Option<u64>) -> Subscription {
        self.events.subscribe(after)
    }

    /// Ends every event subscription and long poll: called when the service stops, so that
    /// open streams do not hold the stop up.
    pub fn close_events(&self) {
        self.events.close();
    }

    /// The container `selector` names, once it is in `state`: at once when it is already,
    /// else at the event that says so. `None` when `timeout` passes first;
    /// [`Error::ShuttingDown`] when the service stops meanwhile.
    pub async fn wait_container(
        &self,
        selector: Selector,
        state: ContainerState,
        timeout: std::time::Duration,
    ) -> Result<Option<Vec<Container>>, Error> {
        // Subscribed before the first look, so that no change between the two is missed.
        let mut events = self.subscribe(None);
        let deadline = tokio::time::Instant::now() + timeout;
        let mut found = self.list_container(Some(selector.clone()), None).await?;
        let id = found.first().and_then(|container| container.id);
        loop {
            if found
                .first()
                .is_some_and(|container| container.state == Some(state))
            {
                return Ok(Some(found));
            }
            let delivery = tokio::time::timeout_at(deadline, events.next()).await;
            let relevant = match delivery {
                Err(_elapsed) => return Ok(None),
                Ok(None) => return Err(Error::ShuttingDown),
                Ok(Some(Delivery::Lost { .. })) => true,
                Ok(Some(Delivery::Event(event))) => {
                    event.subject.object == ObjectKind::Container
                        && Some(event.subject.id) == id
                        && (event.state == Some(state) || event.change == Change::Deleted)
                }
            };
            if relevant {
                // Gone meanwhile: answered as a list of a missing container is.
                found = self.list_container(Some(selector.clone()), None).await?;
            }
        }
    }

    /// Runs `work`, recording its time and, when it fails in a driver, the failing stage.
    async fn timed<T>(
        &self,
        object: ObjectKind,
        operation: Operation,
        work: impl Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        let started = Instant::now();
        let outcome = work.await;
        self.metrics
            .record(object, operation, started.elapsed(), &outcome);
        outcome
    }

    /// The engine's metrics in the Prometheus text format, with the object counts of now.
    pub async fn metrics_text(&self) -> Result<String, Error> {
        self.registry.send(Census).await.map_err(mailbox_gone)?;
        Ok(self.metrics.encode())
    }

    /// Runs a create as a task on the engine's arbiter, so that a client that goes away
    /// mid-request cannot cut it short and leave half-made objects behind.
    async fn create<F>(&self, build: F) -> Result<View, Error>
    where
        F: for<'t> FnOnce(&'t Transaction) -> futures::future::BoxFuture<'t, Result<Built, Error>>
            + Send
            + 'static,
    {
        let registry = self.registry.clone();
        let host = self.host.clone();
        let log_dir = self.config.log_dir.clone();
        let runtime = self.runtime.clone();
        let (answer, answered) = tokio::sync::oneshot::channel();
        let task = async move {
            let started = Instant::now();
            let txn = match registry.send(Begin).await.map_err(mailbox_gone) {
                Ok(Ok(txn)) => txn,
                Ok(Err(err)) | Err(err) => {
                    let _ = answer.send(Err(err));
                    return;
                }
            };
            let transaction = Transaction {
                registry: registry.clone(),
                txn,
                host,
                log_dir,
                runtime,
            };
            match build(&transaction).await {
                Ok(top) => {
                    let built_us = started.elapsed().as_micros() as u64;
                    debug!(target: TIMING, id = top.id, built_us, "create done");
                    // Answered by the commit's write (the registry gone: dropped, which reads
                    // as a shutdown).
                    registry.do_send(Commit {
                        txn,
                        top: top.id,
                        answer,
                    });
                }
                Err(err) => {
                    warn!(error = %err, "create failed: rolling back");
                    let _ = registry.send(Abort(txn)).await;
                    let _ = answer.send(Err(err));
                }
            }
        };
        if !self.arbiter.spawn(task) {
            return Err(Error::ShuttingDown);
        }
        answered.await.unwrap_or(Err(Error::ShuttingDown))
    }

    pub async fn create_attach(&self, attach: Attach) -> Result<Attach, Error> {
        self.timed(ObjectKind::Attach, Operation::Create, async move {
            let def = spec::attach_def(&self.kinds, "", &attach)?;
            match self
                .create(move |t| t.child(spec::Child::New(Box::new(def))))
                .await?
            {
                View::Attach(attach) => Ok(attach),
                _ => unreachable!("an attach create answers an attach"),
            }
        })
        .await
    }

    pub async fn create_mount(&self, mount: Mount) -> Result<Mount, Error> {
        self.timed(ObjectKind::Mount, Operation::Create, async move {
            let def = spec::mount_def(&self.kinds, "", &mount)?;
            match self
                .create(move |t| t.child(spec::Child::New(Box::new(def))))
                .await?
            {
                View::Mount(mount) => Ok(mount),
                _ => unreachable!("a mount create answers a mount"),
            }
        })
        .await
    }

    pub async fn create_container(&self, container: Container) -> Result<Container, Error> {
        self.timed(ObjectKind::Container, Operation::Create, async move {
            let def = spec::container_def(&self.kinds, &container)?;
            match self.create(move |t| t.container(def).boxed()).await? {
                View::Container(container) => Ok(container),
                _ => unreachable!("a container create answers a container"),
            }
        })
        .await
    }

    async fn list(&self, kind: ObjectKind, selector: Option<Selector>) -> Result<Vec<View>, Error> {
        self.registry
            .send(List { kind, selector })
            .await
            .map_err(mailbox_gone)?
    }

    pub async fn list_attach(
        &self,
        id: Option<Id>,
        kind: Option<AttachKind>,
    ) -> Result<Vec<Attach>, Error> {
        let records = self.list(ObjectKind::Attach, id.map(Selector::Id)).await?;
        Ok(records
            .into_iter()
            .filter_map(|record| match record {
                View::Attach(attach) if kind.is_none() || attach.kind == kind => Some(attach),
                _ => None,
            })
            .collect())
    }

    pub async fn list_mount(
        &self,
        id: Option<Id>,
        kind: Option<MountKind>,
    ) -> Result<Vec<Mount>, Error> {
        let records = self.list(ObjectKind::Mount, id.map(Selector::Id)).await?;
        Ok(records
            .into_iter()
            .filter_map(|record| match record {
                View::Mount(mount) if kind.is_none() || mount.kind == kind => Some(mount),
                _ => None,
            })
            .collect())
    }

    /// Containers, all or the one named by id or name, optionally only those in `state`.
    pub async fn list_container(
        &self,
        selector: Option<Selector>,
        state: Option<ContainerState>,
    ) -> Result<Vec<Container>, Error> {
        let records = self.list(ObjectKind::Container, selector).await?;
        Ok(records
            .into_iter()
            .filter_map(|record| match record {
                View::Container(container) if state.is_none() || container.state == state => {
                    Some(container)
                }
                _ => None,
            })
            .collect())
    }

    pub async fn delete_container(
        &self,
        selector: Selector,
        force: bool,
    ) -> Result<Container, Error> {
        match self.delete(ObjectKind::Container, selector, force).await? {
            View::Container(container) => Ok(container),
            _ => unreachable!("the registry checks the kind"),
        }
    }

    /// `PATCH state=`: start, stop, pause or resume a container.
    pub async fn set_container_state(
        &self,
        selector: Selector,
        state: ContainerState,
    ) -> Result<Container, Error> {
        // A resume is a start of a paused container: it is timed as one.
        let operation = match state {
            ContainerState::Running => Operation::Start,
            ContainerState::Paused => Operation::Pause,
            _ => Operation::Stop,
        };
        self.timed(ObjectKind::Container, operation, async move {
            match self
                .registry
                .send(SetState { selector, state })
                .await
                .map_err(mailbox_gone)??
            {
                View::Container(container) => Ok(container),
                _ => unreachable!("the registry checks the kind"),
            }
        })
        .await
    }

    async fn delete(
        &self,
        kind: ObjectKind,
        selector: Selector,
        force: bool,
    ) -> Result<View, Error> {
        let (answer, answered) = tokio::sync::oneshot::channel();
        self.registry.do_send(Delete {
            kind,
            selector,
            force,
            answer,
        });
        self.timed(kind, Operation::Delete, async move {
            answered.await.map_err(|_| Error::ShuttingDown)?
        })
        .await
    }

    pub async fn delete_attach(&self, id: Id, force: bool) -> Result<Attach, Error> {
        match self
            .delete(ObjectKind::Attach, Selector::Id(id), force)
            .await?
        {
            View::Attach(attach) => Ok(attach),
            _ => unreachable!("the registry checks the kind"),
        }
    }

    pub async fn delete_mount(&self, id: Id, force: bool) -> Result<Mount, Error> {
        match self
            .delete(ObjectKind::Mount, Selector::Id(id), force)
            .await?
        {
            View::Mount(mount) => Ok(mount),
            _ => unreachable!("the registry checks the kind"),
        }
    }

    /// Refuses new creates; then releases every object, users first, or, with a state store
    /// and without `cleanup_on_exit`, leaves them all in place for the next start.
    pub async fn shutdown(&self) {
        let release = self.config.cleanup_on_exit || self.config.state_dir.is_none();
        let _ = self.registry.send(Shutdown { release }).await;
    }
}
