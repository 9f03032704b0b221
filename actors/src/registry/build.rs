//! Creates (possibly nested) objects, bottom-up, inside one registry transaction.
//!
//! The walk knows no kind: each definition names its kind's driver and its children. Children
//! are built (or, when referenced by id, held) first; then the object is reserved in the registry
//! (which gives it its id, so ids come out bottom-up) and its kind starts its actor, which makes
//! the kernel resource. Any failure aborts the transaction, which releases everything the request
//! made and shows none of it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use actix::Addr;
use futures::future::BoxFuture;
use futures::FutureExt;
use tracing::debug;

use super::actor::{Hold, Ready, Registry, Reserve};
use super::graph::{GraphError, ObjectKind, TxnId};
use super::record::{ContainerRecord, Record};
use crate::blocking::{blocking, mailbox_gone};
use crate::container::actor::{launch_error, ChangeState, ContainerActor, ContainerPlan};
use crate::container::timing::TARGET as TIMING;
use crate::container::{launch, Runtime};
use crate::driver::{Dep, Host, Started};
use crate::error::Error;
use crate::model::spec::{Child, ContainerDef, Def};
use crate::model::wire::{ContainerState, Id};
use crate::object::{Check, ObjectAddr};

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
        deps: &[Built],
    ) -> Result<Id, Error> {
        self.registry
            .send(Reserve {
                txn: self.txn,
                name,
                record,
                deps: deps.iter().map(|dep| dep.id).collect(),
            })
            .await
            .map_err(mailbox_gone)?
    }

    /// Registers the finished object; if the registry no longer wants it, gives its resource back.
    async fn ready(&self, id: Id, record: Record, addr: ObjectAddr) -> Result<Built, Error> {
        let provides = record.provides();
        let accepted = self
            .registry
            .send(Ready {
                id,
                record,
                addr: addr.clone(),
            })
            .await
            .map_err(mailbox_gone)
            .and_then(|answer| answer);
        if let Err(err) = accepted {
            let _ = addr.release(true).await;
            return Err(err);
        }
        Ok(Built { id, provides, addr })
    }

    /// A nested object: held when referenced by id, else made.
    pub fn child(&self, child: Child) -> BoxFuture<'_, Result<Built, Error>> {
        self.checked_child(child, None)
    }

    /// A nested object, as [`Transaction::child`], and `check` of what it provides: on the
    /// blocking thread that makes it, or of its own for an object referenced by id.
    fn checked_child(
        &self,
        child: Child,
        check: Option<Check>,
    ) -> BoxFuture<'_, Result<Built, Error>> {
        async move {
            match child {
                Child::Existing(id, object) => {
                    let held = self.hold(id, object).await?;
                    if let Some(check) = check {
                        let provides = held.dep()?.path;
                        blocking(move || check(&provides)).await?;
                    }
                    Ok(held)
                }
                Child::New(def) => self.object(*def, check).await,
            }
        }
        .boxed()
    }

    /// An attachment or mount of any kind: its children, then its own kernel step and `check`.
    async fn object(&self, def: Def, check: Option<Check>) -> Result<Built, Error> {
        let Def {
            kind,
            spec,
            children,
        } = def;
        let mut deps = Vec::with_capacity(children.len());
        for child in children {
            deps.push(self.child(child).await?);
        }
        let id = self
            .reserve(None, Record::of_object(kind.clone(), spec.clone()), &deps)
            .await?;
        let inputs = deps
            .into_iter()
            .map(|dep| Ok((dep.dep()?, dep.addr)))
            .collect::<Result<Vec<_>, Error>>()?;
        let started = Instant::now();
        let Started {
            addr,
            facts,
            checked,
        } = kind
            .clone()
            .start(self.host.clone(), id, spec.clone(), inputs, check)
            .await?;
        debug!(target: TIMING, id, kind = kind.name(), step_us = started.elapsed().as_micros() as u64, "object made");
        let mut record = Record::of_object(kind, spec);
        if let Some(object) = record.object_mut() {
            object.facts = Some(facts);
        }
        debug!(id, provides = ?record.provides(), "made");
        let built = self.ready(id, record, addr).await?;
        // Ready first: the failed check's abort then releases the object like any other.
        checked?;
        Ok(built)
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
        let deps = [mount];
        let id = self
            .reserve(def.name.clone(), Record::Container(record.clone()), &deps)
            .await?;
        let [mount] = deps;
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
