//! Creates (possibly nested) objects, bottom-up, inside one registry transaction.
//!
//! The walk knows no kind: each definition names its kind's driver and its children. It goes
//! depth-first: children referenced by id are held, and each new object is reserved in the
//! registry after its children (which gives it its id, so ids come out bottom-up). Then the
//! kernel steps of all new objects run in that order on one blocking thread (a container's
//! command check and the launch of its init too), since each thread hop costs a wake-up of
//! another CPU (tens of microseconds on a VM, see the README's Benchmark section), and each
//! resource goes to the actor that owns it from then on. Any failure aborts
//! the transaction, which releases everything the request made and shows none of it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use actix::Addr;
use futures::future::BoxFuture;
use futures::FutureExt;
use tracing::{debug, info, info_span, warn};

use super::actor::{Hold, Ready, Registry, Reserve};
use super::graph::{GraphError, ObjectKind, TxnId};
use super::record::{ContainerRecord, Record};
use crate::blocking::{blocking, mailbox_gone, off_event_loop};
use crate::container::actor::{
    launch_error, ContainerActor, ContainerPlan, Launched, TakeLaunched,
};
use crate::container::timing::TARGET as TIMING;
use crate::container::{launch, Runtime};
use crate::driver::{Dep, Erased, Host, KindRef, Resource};
use crate::error::Error;
use crate::model::spec::{Child, ContainerDef, Def};
use crate::model::wire::{ContainerState, Id};
use crate::object::ObjectAddr;

/// An object that exists for the transaction: made by it, or referenced by id.
pub(crate) struct Built {
    pub id: Id,
    /// The device file of an attachment, the mountpoint of a mount.
    pub provides: Option<PathBuf>,
    pub addr: ObjectAddr,
}

impl Built {
    /// What a user of this object is given. Every visible or ready object has it; the error
    /// covers a record that lost it, which would otherwise use a wrong path.
    fn dep(&self) -> Result<Dep, Error> {
        let path = self
            .provides
            .clone()
            .ok_or(GraphError::DependencyGone(self.id))?;
        Ok(Dep { id: self.id, path })
    }
}

/// One create request in progress.
pub(crate) struct Transaction {
    pub registry: Addr<Registry>,
    pub txn: TxnId,
    pub host: Arc<Host>,
    /// Where container console logs go.
    pub log_dir: PathBuf,
    /// The engine's container runtime.
    pub runtime: Arc<Runtime>,
}

impl Transaction {
    async fn hold(&self, id: Id, kind: ObjectKind) -> Result<Built, Error> {
        let (record, addr) = self
            .registry
            .send(Hold {
                txn: self.txn,
                id,
                kind,
            })
            .await
            .map_err(mailbox_gone)??;
        Ok(Built {
            id,
            provides: record.provides(),
            addr,
        })
    }

    async fn reserve(
        &self,
        name: Option<String>,
        record: Record,
        deps: &[Id],
    ) -> Result<Id, Error> {
        self.registry
            .send(Reserve {
                txn: self.txn,
                name,
                record,
                deps: deps.to_vec(),
            })
            .await
            .map_err(mailbox_gone)?
    }

    /// Registers a finished object with its actor; refused when the registry no longer wants it.
    async fn register(&self, id: Id, record: Record, addr: &ObjectAddr) -> Result<(), Error> {
        self.registry
            .send(Ready {
                id,
                record,
                addr: addr.clone(),
            })
            .await
            .map_err(mailbox_gone)
            .and_then(|answer| answer)
    }

    /// Registers the finished object; if the registry no longer wants it, gives its resource back.
    async fn ready(&self, id: Id, record: Record, addr: ObjectAddr) -> Result<Built, Error> {
        let provides = record.provides();
        if let Err(err) = self.register(id, record, &addr).await {
            let _ = addr.release(true).await;
            return Err(err);
        }
        Ok(Built { id, provides, addr })
    }

    /// A nested object: held when referenced by id, else made.
    pub fn child(&self, child: Child) -> BoxFuture<'_, Result<Built, Error>> {
        async move {
            let mut steps = Vec::new();
            let top = self.plan(child, &mut steps).await?;
            if let Planned::Held(held) = top {
                return Ok(held);
            }
            let built = self.build(top, steps, |_| ()).await;
            built.map(|(top, ())| top).map_err(|(err, _)| err)
        }
        .boxed()
    }

    /// Takes the planned kernel steps, then `then` on what the top object provides, all on one
    /// blocking thread, and readies what the steps made. What `then` gave comes back also when
    /// the objects could not be readied (with the error), for the caller to dispose of.
    async fn build<T: Send + 'static>(
        &self,
        top: Planned,
        steps: Vec<Step>,
        then: impl FnOnce(&Path) -> T + Send + 'static,
    ) -> Result<(Built, T), (Error, Option<T>)> {
        let started = Instant::now();
        let host = self.host.clone();
        let job = blocking(move || make_all(&host, steps, top, then)).await;
        let (steps, made, top, then) = match job {
            Ok(done) => done,
            Err(err) => return Err((err, None)),
        };
        let top = match top {
            Planned::Held(held) => held,
            Planned::Made(top) => {
                let (id, objects) = (steps[top].id, steps.len());
                debug!(target: TIMING, id, objects, job_us = started.elapsed().as_micros() as u64, "create job done");
                match self.ready_all(steps, made).await {
                    Ok(mut built) => built.swap_remove(top),
                    Err(err) => return Err((err, Some(then))),
                }
            }
        };
        Ok((top, then))
    }

    /// Walks a definition depth-first: holds what it references by id, and reserves each new
    /// object after its children (so ids come out bottom-up), adding its kernel step to `steps`.
    fn plan<'t>(
        &'t self,
        child: Child,
        steps: &'t mut Vec<Step>,
    ) -> BoxFuture<'t, Result<Planned, Error>> {
        async move {
            let def = match child {
                Child::Existing(id, object) => {
                    return Ok(Planned::Held(self.hold(id, object).await?))
                }
                Child::New(def) => *def,
            };
            let Def {
                kind,
                spec,
                children,
            } = def;
            let mut inputs = Vec::with_capacity(children.len());
            for child in children {
                inputs.push(self.plan(child, steps).await?);
            }
            let deps: Vec<Id> = inputs
                .iter()
                .map(|input| match input {
                    Planned::Held(held) => held.id,
                    Planned::Made(step) => steps[*step].id,
                })
                .collect();
            let id = self
                .reserve(None, Record::of_object(kind.clone(), spec.clone()), &deps)
                .await?;
            steps.push(Step {
                id,
                kind,
                spec,
                inputs,
            });
            Ok(Planned::Made(steps.len() - 1))
        }
        .boxed()
    }

    /// Gives each made resource to its actor and registers the objects in the order they were
    /// made; if the registry no longer wants one, gives it and those after it back.
    async fn ready_all(
        &self,
        steps: Vec<Step>,
        made: Vec<(Resource, Erased)>,
    ) -> Result<Vec<Built>, Error> {
        let mut objects: Vec<Built> = Vec::with_capacity(steps.len());
        let mut records = Vec::with_capacity(steps.len());
        for (step, (resource, facts)) in steps.into_iter().zip(made) {
            let deps = step
                .inputs
                .iter()
                .map(|input| match input {
                    Planned::Held(held) => held.addr.clone(),
                    Planned::Made(index) => objects[*index].addr.clone(),
                })
                .collect();
            let addr = step
                .kind
                .clone()
                .start_actor(self.host.clone(), step.id, resource, deps);
            let mut record = Record::of_object(step.kind, step.spec);
            if let Some(object) = record.object_mut() {
                object.facts = Some(facts);
            }
            objects.push(Built {
                id: step.id,
                provides: record.provides(),
                addr,
            });
            records.push(record);
        }
        for (index, record) in records.into_iter().enumerate() {
            let built = &objects[index];
            if let Err(err) = self.register(built.id, record, &built.addr).await {
                // Users first: the registry's abort releases those it has already taken.
                for built in objects[index..].iter().rev() {
                    let _ = built.addr.release(true).await;
                }
                return Err(err);
            }
        }
        Ok(objects)
    }

    /// A container on its mount; started too when the request asks for `state: running`. The
    /// command check and the launch of the init run on the blocking thread of the mount's
    /// kernel steps, right after them: no thread hop of their own.
    pub async fn container(&self, def: ContainerDef) -> Result<Built, Error> {
        let mut steps = Vec::new();
        let mount = self.plan(def.mount.clone(), &mut steps).await?;
        let mount_id = match &mount {
            Planned::Held(held) => held.id,
            Planned::Made(top) => steps[*top].id,
        };
        let mut record = ContainerRecord {
            command: def.command.clone(),
            systemd: def.systemd,
            namespaces: def.namespaces.clone(),
            stop: def.stop,
            logfile: PathBuf::new(),
            state: ContainerState::Created,
            exit_code: None,
            init: None,
        };
        let id = self
            .reserve(
                def.name.clone(),
                Record::Container(record.clone()),
                &[mount_id],
            )
            .await?;
        // Ids start again with a new service run; the random part keeps an earlier run's log.
        record.logfile = self.log_dir.join(format!(
            "{}-{}-{}.log",
            def.name.as_deref().unwrap_or("container"),
            id,
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ));
        let (name, planned, argv0) = (def.name.clone(), record.clone(), def.argv[0].clone());
        let runtime = def.start.then(|| self.runtime.clone());
        let built = self
            .build(mount, steps, move |rootfs: &Path| {
                launch::check_init(rootfs, &argv0).map_err(launch_error)?;
                let plan =
                    ContainerPlan::of_record(id, name.as_deref(), &planned, rootfs.to_owned());
                let launched =
                    runtime.map(|runtime| ContainerActor::launch_init(&runtime, id, &plan));
                Ok::<_, Error>(Prepared { plan, launched })
            })
            .await;
        let (mount, Prepared { plan, launched }) = match built {
            // Ready first: the failed check's abort then releases the objects like any other.
            Ok((mount, prepared)) => (mount, prepared?),
            Err((err, prepared)) => {
                if let Some(Ok(prepared)) = prepared {
                    prepared.discard().await;
                }
                return Err(err);
            }
        };
        let actor = ContainerActor::start(
            id,
            plan,
            mount.addr,
            self.registry.clone().recipient(),
            self.runtime.clone(),
        );
        let built = self
            .ready(
                id,
                Record::Container(record),
                ObjectAddr::Container(actor.clone()),
            )
            .await;
        let built = match built {
            Ok(built) => built,
            Err(err) => {
                Prepared::discard_launched(launched).await;
                return Err(err);
            }
        };
        if let Some(launched) = launched {
            let started = Instant::now();
            actor
                .send(TakeLaunched(launched))
                .await
                .map_err(mailbox_gone)??;
            debug!(target: TIMING, id, start_us = started.elapsed().as_micros() as u64, "container started");
        }
        Ok(built)
    }
}

/// What a container's create did on its blocking thread after the mount's kernel steps: the
/// plan of what the container runs, and the launch of its init when the request starts it.
struct Prepared {
    plan: ContainerPlan,
    launched: Option<Launched>,
}

impl Prepared {
    /// Kills an init whose container could not be made (off the event loop: killing it
    /// writes to its cgroups).
    async fn discard(self) {
        Prepared::discard_launched(self.launched).await;
    }

    async fn discard_launched(launched: Option<Launched>) {
        if let Some(Ok(Ok(init))) = launched {
            off_event_loop(move || drop(init)).await;
        }
    }
}

/// An object of the request (or one a kernel step uses): referenced by id and held, or made by
/// a step of the plan.
enum Planned {
    Held(Built),
    Made(usize),
}

/// The kernel step of one reserved object, planned before any of the request's is taken.
struct Step {
    id: Id,
    kind: KindRef,
    spec: Erased,
    inputs: Vec<Planned>,
}

/// What [`make_all`] gives back: the steps, what each made, the top object, and what `then`
/// gave.
type MadeAll<T> = (Vec<Step>, Vec<(Resource, Erased)>, Planned, T);

/// Takes the kernel steps of a request in order on this (blocking) thread, then runs `then` on
/// what the `top` object provides: one thread hop for the whole request, however deep it nests.
/// A failed step gives back what the steps before it made, users first, and fails the request.
fn make_all<T>(
    host: &Host,
    steps: Vec<Step>,
    top: Planned,
    then: impl FnOnce(&Path) -> T,
) -> Result<MadeAll<T>, Error> {
    let mut made: Vec<(Resource, Erased)> = Vec::with_capacity(steps.len());
    for step in &steps {
        let _object = info_span!("object", id = step.id, kind = step.kind.name()).entered();
        let started = Instant::now();
        let deps = step
            .inputs
            .iter()
            .map(|input| provided(&steps, &made, input))
            .collect::<Result<Vec<Dep>, Error>>();
        match deps.and_then(|deps| step.kind.make(host, step.id, &step.spec, &deps)) {
            Ok(resource) => {
                debug!(target: TIMING, id = step.id, kind = step.kind.name(), step_us = started.elapsed().as_micros() as u64, "object made");
                info!(id = step.id, kind = step.kind.name(), "made");
                made.push(resource);
            }
            Err(err) => {
                drop(_object);
                give_back(host, &steps, made);
                return Err(err);
            }
        }
    }
    let then = match provided(&steps, &made, &top) {
        Ok(provided) => then(&provided.path),
        Err(err) => {
            give_back(host, &steps, made);
            return Err(err);
        }
    };
    Ok((steps, made, top, then))
}

/// Releases what the first steps of a failed create made, users first.
fn give_back(host: &Host, steps: &[Step], made: Vec<(Resource, Erased)>) {
    for (step, (resource, _)) in steps.iter().zip(made).rev() {
        if let Err(err) = step.kind.release_unowned(host, resource, true) {
            warn!(id = step.id, error = %err, "cannot give back what a failed create made");
        }
    }
}

/// What the object `input` provides to its user: `made` holds what `steps` made until now.
fn provided(steps: &[Step], made: &[(Resource, Erased)], input: &Planned) -> Result<Dep, Error> {
    match input {
        Planned::Held(held) => held.dep(),
        Planned::Made(index) => Ok(Dep {
            id: steps[*index].id,
            path: steps[*index].kind.provides(&made[*index].1),
        }),
    }
}
