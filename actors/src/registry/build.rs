//! Creates (possibly nested) objects, bottom-up, inside one registry transaction.
//!
//! The walk knows no kind: each definition names its kind's driver and its children. It goes
//! depth-first: children referenced by id are held, and each new object is reserved in the
//! registry after its children (which gives it its id, so ids come out bottom-up). Then the
//! kernel steps of all new objects run in that order on one blocking thread, since each thread
//! hop costs a wake-up of another CPU (tens of microseconds on a VM, see the README's Benchmark
//! section), and each resource goes to the actor that owns it from then on. Any failure aborts
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
use crate::blocking::{blocking, mailbox_gone};
use crate::container::actor::{launch_error, ChangeState, ContainerActor, ContainerPlan};
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
        self.checked_child(child, None).boxed()
    }

    /// A nested object, as [`Transaction::child`], and `check` of what it provides: on the
    /// blocking thread that makes it, or on one of its own for an object referenced by id.
    async fn checked_child(&self, child: Child, check: Option<Check>) -> Result<Built, Error> {
        let mut steps = Vec::new();
        let top = self.plan(child, &mut steps).await?;
        let top = match top {
            Planned::Held(held) => {
                if let Some(check) = check {
                    let provides = held.dep()?.path;
                    blocking(move || check(&provides)).await?;
                }
                return Ok(held);
            }
            Planned::Made(top) => top,
        };
        let started = Instant::now();
        let host = self.host.clone();
        let (steps, made, checked) = blocking(move || make_all(&host, steps, check)).await?;
        let (id, objects) = (steps[top].id, steps.len());
        debug!(target: TIMING, id, objects, objects_us = started.elapsed().as_micros() as u64, "objects made");
        let mut built = self.ready_all(steps, made).await?;
        // Ready first: the failed check's abort then releases the objects like any other.
        checked?;
        Ok(built.swap_remove(top))
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

    /// A container on its mount; started too when the request asks for `state: running`.
    pub async fn container(&self, def: ContainerDef) -> Result<Built, Error> {
        let argv0 = def.argv[0].clone();
        let check_command: Check =
            Box::new(move |root| launch::check_init(root, &argv0).map_err(launch_error));
        let mount = self
            .checked_child(def.mount.clone(), Some(check_command))
            .await?;
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
                &[mount.id],
            )
            .await?;
        // Ids start again with a new service run; the random part keeps an earlier run's log.
        record.logfile = self.log_dir.join(format!(
            "{}-{}-{}.log",
            def.name.as_deref().unwrap_or("container"),
            id,
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ));
        let rootfs = mount.dep()?.path;
        let plan = ContainerPlan::of_record(id, def.name.as_deref(), &record, rootfs);
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
            .await?;
        if def.start {
            let started = Instant::now();
            actor
                .send(ChangeState(ContainerState::Running))
                .await
                .map_err(mailbox_gone)??;
            debug!(target: TIMING, id, start_us = started.elapsed().as_micros() as u64, "container started");
        }
        Ok(built)
    }
}

/// A user's check of what a new object provides (a container's command in its new mount): run
/// on the blocking thread of the kernel steps, right after them, it needs no thread hop of its
/// own.
pub(crate) type Check = Box<dyn FnOnce(&Path) -> Result<(), Error> + Send>;

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

/// What [`make_all`] gives back: the steps, what each made, and what the check found.
type MadeAll = (Vec<Step>, Vec<(Resource, Erased)>, Result<(), Error>);

/// Takes the kernel steps of a request in order on this (blocking) thread, then runs `check` on
/// what the last one provides: one thread hop for the whole request, however deep it nests. A
/// failed step gives back what the steps before it made, users first, and fails the request.
fn make_all(host: &Host, steps: Vec<Step>, check: Option<Check>) -> Result<MadeAll, Error> {
    let mut made: Vec<(Resource, Erased)> = Vec::with_capacity(steps.len());
    for step in &steps {
        let _object = info_span!("object", id = step.id, kind = step.kind.name()).entered();
        let started = Instant::now();
        let deps = step
            .inputs
            .iter()
            .map(|input| match input {
                Planned::Held(held) => held.dep(),
                Planned::Made(index) => Ok(Dep {
                    id: steps[*index].id,
                    path: steps[*index].kind.provides(&made[*index].1),
                }),
            })
            .collect::<Result<Vec<Dep>, Error>>();
        match deps.and_then(|deps| step.kind.make(host, step.id, &step.spec, &deps)) {
            Ok(resource) => {
                debug!(target: TIMING, id = step.id, kind = step.kind.name(), step_us = started.elapsed().as_micros() as u64, "object made");
                info!(id = step.id, kind = step.kind.name(), "made");
                made.push(resource);
            }
            Err(err) => {
                drop(_object);
                for (step, (resource, _)) in steps.iter().zip(made).rev() {
                    if let Err(err) = step.kind.release_unowned(host, resource, true) {
                        warn!(id = step.id, error = %err, "cannot give back what a failed create made");
                    }
                }
                return Err(err);
            }
        }
    }
    let checked = match (check, steps.last(), made.last()) {
        (Some(check), Some(top), Some((_, facts))) => check(&top.kind.provides(facts)),
        _ => Ok(()),
    };
    Ok((steps, made, checked))
}
