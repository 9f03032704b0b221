//! Creates (possibly nested) objects, bottom-up, inside one registry transaction.
//!
//! Each object is reserved in the registry (which gives it its id) right before its kernel step,
//! after its children exist, so ids come out bottom-up. Any failure aborts the transaction, which
//! releases everything the request made and shows none of it.

use std::path::PathBuf;
use std::sync::Arc;

use actix::Addr;
use futures::future::BoxFuture;
use futures::FutureExt;
use tracing::{debug, info};

use super::actor::{Hold, Ready, Registry, Reserve};
use super::graph::{GraphError, ObjectKind, TxnId};
use super::record::{attach_stub, mount_stub, Record};
use crate::attach::{self, AttachActor, AttachedDevice};
use crate::blocking::{blocking, mailbox_gone};
use crate::container::actor::{launch_error, ChangeState, ContainerActor, ContainerPlan};
use crate::container::launch;
use crate::error::{Error, Origin};
use crate::model::spec::{self, AttachDef, BaseDef, Child, ContainerDef, MountDef};
use crate::model::wire::{
    Attach, AttachKind, AttachLocal, AttachLoopback, Base, Container, ContainerState, Id, Mount,
    MountAttach, MountBind, MountKind, MountOverlay,
};
use crate::mount::{self, MountActor, MountedFs};
use crate::resource::ObjectAddr;
use crate::store::Facts;
use crate::EngineConfig;

/// An object that exists for the transaction: made by it, or referenced by id.
pub(crate) struct Built {
    pub id: Id,
    pub record: Record,
    pub addr: ObjectAddr,
}

impl Built {
    /// The mountpoint of a built mount. Every visible or ready mount has one; the error covers a
    /// record that lost it, which would otherwise mount on a wrong path.
    fn mountpoint(&self) -> Result<PathBuf, Error> {
        self.record
            .mountpoint()
            .map(PathBuf::from)
            .ok_or_else(|| GraphError::DependencyGone(self.id).into())
    }

    /// The device file of a built attachment (see [`Built::mountpoint`]).
    fn device_file(&self) -> Result<PathBuf, Error> {
        self.record
            .device_file()
            .map(PathBuf::from)
            .ok_or_else(|| GraphError::DependencyGone(self.id).into())
    }
}

/// The base a loopback or bind path is relative to, once resolved: the host's `/`, or a mount.
struct ResolvedBase(Option<Built>);

impl ResolvedBase {
    /// The `base` and `mount` fields as the object's record holds them.
    fn wire(&self) -> (Base, Option<Box<Mount>>) {
        match &self.0 {
            None => (Base::Root, None),
            Some(mount) => (Base::Mount, Some(Box::new(mount_stub(mount.id)))),
        }
    }

    fn deps(&self) -> Vec<&Built> {
        self.0.iter().collect()
    }

    /// The directory the path starts from; `None` for the host's `/`.
    fn dir(&self) -> Result<Option<PathBuf>, Error> {
        self.0.as_ref().map(Built::mountpoint).transpose()
    }

    fn into_addrs(self) -> Vec<ObjectAddr> {
        self.0.into_iter().map(|mount| mount.addr).collect()
    }
}

/// One create request in progress.
pub(crate) struct Transaction {
    pub registry: Addr<Registry>,
    pub txn: TxnId,
    pub config: Arc<EngineConfig>,
    /// The service's instance name, which tags its loop devices.
    pub instance: Arc<str>,
    /// The engine's container runtime.
    pub runtime: Arc<crate::container::Runtime>,
    /// The engine's loop device attaches take turns on it.
    pub attach_turn: Arc<crate::sys::loopdev::AttachTurn>,
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
        Ok(Built { id, record, addr })
    }

    async fn reserve(
        &self,
        name: Option<String>,
        record: Record,
        deps: &[&Built],
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
    async fn ready(
        &self,
        id: Id,
        record: Record,
        facts: Option<Facts>,
        addr: ObjectAddr,
    ) -> Result<Built, Error> {
        let accepted = self
            .registry
            .send(Ready {
                id,
                record: record.clone(),
                facts,
                addr: addr.clone(),
            })
            .await
            .map_err(mailbox_gone)
            .and_then(|answer| answer);
        if let Err(err) = accepted {
            let _ = addr.release().await;
            return Err(err);
        }
        Ok(Built { id, record, addr })
    }

    pub fn attach(&self, child: Child<AttachDef>) -> BoxFuture<'_, Result<Built, Error>> {
        async move {
            match child {
                Child::Existing(id) => self.hold(id, ObjectKind::Attach).await,
                Child::New(def) => self.new_attach(*def).await,
            }
        }
        .boxed()
    }

    pub fn mount(&self, child: Child<MountDef>) -> BoxFuture<'_, Result<Built, Error>> {
        async move {
            match child {
                Child::Existing(id) => self.hold(id, ObjectKind::Mount).await,
                Child::New(def) => self.new_mount(*def).await,
            }
        }
        .boxed()
    }

    async fn base(&self, base: BaseDef) -> Result<ResolvedBase, Error> {
        match base {
            BaseDef::Root => Ok(ResolvedBase(None)),
            BaseDef::Mount(child) => self
                .mount(child)
                .await
                .map(|mount| ResolvedBase(Some(mount))),
        }
    }

    async fn new_attach(&self, def: AttachDef) -> Result<Built, Error> {
        let kind = def.kind();
        match def {
            AttachDef::Local { path } => {
                let mut record = Attach {
                    kind: Some(AttachKind::Local),
                    local: Some(AttachLocal { path: path.clone() }),
                    ..Attach::default()
                };
                let id = self
                    .reserve(None, Record::Attach(record.clone()), &[])
                    .await?;
                let device = blocking(move || attach::attach_local(&path)).await?;
                record.device_file = Some(device.device_file().display().to_string());
                self.start_attach(id, record, device, vec![]).await
            }
            AttachDef::Loopback {
                path,
                base,
                read_partitions,
            } => {
                let base = self.base(base).await?;
                let (base_kind, base_mount) = base.wire();
                let mut record = Attach {
                    kind: Some(AttachKind::Loopback),
                    loopback: Some(AttachLoopback {
                        path: path.clone(),
                        base: base_kind,
                        mount: base_mount,
                        read_partitions,
                    }),
                    ..Attach::default()
                };
                let id = self
                    .reserve(None, Record::Attach(record.clone()), &base.deps())
                    .await?;
                let base_dir = base.dir()?;
                let tag = attach::loop_tag(&self.instance, id);
                let turn = self.attach_turn.clone();
                let device = blocking(move || {
                    attach::attach_loopback(
                        base_dir.as_deref(),
                        &path,
                        read_partitions,
                        &tag,
                        &turn,
                    )
                })
                .await?;
                record.device_file = Some(device.device_file().display().to_string());
                info!(id, device = ?record.device_file, "loop device attached");
                self.start_attach(id, record, device, base.into_addrs())
                    .await
            }
            AttachDef::Rbd(_) | AttachDef::Iscsi(_) => Err(Error::Unsupported {
                origin: Origin::new(ObjectKind::Attach, kind.as_str()),
                reason: format!(
                    "{} attachments need kernel support this node does not have",
                    kind.as_str()
                ),
            }),
        }
    }

    async fn start_attach(
        &self,
        id: Id,
        record: Attach,
        device: AttachedDevice,
        deps: Vec<ObjectAddr>,
    ) -> Result<Built, Error> {
        let facts = device.facts();
        let addr = ObjectAddr::Attach(AttachActor::start(id, device, deps));
        self.ready(id, Record::Attach(record), facts, addr).await
    }

    async fn new_mount(&self, def: MountDef) -> Result<Built, Error> {
        let kind = def.kind();
        let mount_dir = self.config.mount_dir.clone();
        match def {
            MountDef::Attach {
                attach,
                fs_type,
                options,
            } => {
                let device = self.attach(attach).await?;
                let mut record = Mount {
                    kind: Some(MountKind::Attach),
                    attach: Some(MountAttach {
                        attach: attach_stub(device.id),
                        fs_type: fs_type.clone(),
                        mount_options: options.clone(),
                    }),
                    ..Mount::default()
                };
                let id = self
                    .reserve(None, Record::Mount(record.clone()), &[&device])
                    .await?;
                let device_file = device.device_file()?;
                let mounted = blocking(move || {
                    mount::mount_attach(&mount_dir, &device_file, &fs_type, &options)
                })
                .await?;
                self.start_mount(id, &mut record, mounted, vec![device.addr])
                    .await
            }
            MountDef::Bind {
                path,
                base,
                recursive,
                read_only,
            } => {
                let base = self.base(base).await?;
                let (base_kind, base_mount) = base.wire();
                let mut record = Mount {
                    kind: Some(MountKind::Bind),
                    bind: Some(MountBind {
                        path: path.clone(),
                        base: base_kind,
                        mount: base_mount,
                        recursive,
                        ro: read_only,
                    }),
                    ..Mount::default()
                };
                let id = self
                    .reserve(None, Record::Mount(record.clone()), &base.deps())
                    .await?;
                let base_dir = base.dir()?;
                let mounted = blocking(move || {
                    mount::mount_bind(&mount_dir, base_dir.as_deref(), &path, recursive, read_only)
                })
                .await?;
                self.start_mount(id, &mut record, mounted, base.into_addrs())
                    .await
            }
            MountDef::Overlay { lowers } => {
                let mut built = Vec::with_capacity(lowers.len());
                for lower in lowers {
                    built.push(self.mount(lower).await?);
                }
                let mut record = Mount {
                    kind: Some(MountKind::Overlay),
                    overlay: Some(MountOverlay {
                        lower: built.iter().map(|b| mount_stub(b.id)).collect(),
                        workdir: None,
                        upperdir: None,
                    }),
                    ..Mount::default()
                };
                let deps: Vec<&Built> = built.iter().collect();
                let id = self
                    .reserve(None, Record::Mount(record.clone()), &deps)
                    .await?;
                let lower_dirs = built
                    .iter()
                    .map(Built::mountpoint)
                    .collect::<Result<Vec<_>, _>>()?;
                let mounted =
                    blocking(move || mount::mount_overlay(&mount_dir, &lower_dirs)).await?;
                if let (Some(overlay), Some((upper, work))) =
                    (record.overlay.as_mut(), mount::overlay_dirs(&mounted))
                {
                    overlay.upperdir = Some(upper.display().to_string());
                    overlay.workdir = Some(work.display().to_string());
                }
                self.start_mount(
                    id,
                    &mut record,
                    mounted,
                    built.into_iter().map(|b| b.addr).collect(),
                )
                .await
            }
            MountDef::Nfs(_) | MountDef::Uri(_) => Err(Error::Unsupported {
                origin: Origin::new(ObjectKind::Mount, kind.as_str()),
                reason: match kind {
                    MountKind::Nfs => "this node's kernel has no NFS client".to_string(),
                    _ => "uri mounts have no driver yet".to_string(),
                },
            }),
        }
    }

    /// A container on its mount; started too when the request asks for `state: running`.
    pub async fn container(&self, def: ContainerDef) -> Result<Built, Error> {
        let mount = self.mount(def.mount.clone()).await?;
        let mut record = Container {
            name: def.name.clone(),
            mount: Some(mount_stub(mount.id)),
            command: Some(def.command.clone()),
            systemd: def.systemd,
            state: Some(ContainerState::Created),
            namespaces: Some(def.namespaces.iter().copied().collect()),
            stop_signal: Some(spec::signal_name(def.stop.signal)),
            stop_timeout: Some(def.stop.timeout_secs as i64),
            ..Container::default()
        };
        let id = self
            .reserve(
                def.name.clone(),
                Record::Container(record.clone()),
                &[&mount],
            )
            .await?;
        // Ids start again with a new service run; the random part keeps an earlier run's log.
        let logfile = self.config.log_dir.join(format!(
            "{}-{}-{}.log",
            def.name.as_deref().unwrap_or("container"),
            id,
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ));
        record.logfile = Some(logfile.display().to_string());
        let rootfs = mount.mountpoint()?;
        let argv0 = def.argv[0].clone();
        let checked_root = rootfs.clone();
        blocking(move || launch::check_init(&checked_root, &argv0).map_err(launch_error)).await?;
        let plan = ContainerPlan::of_record(id, &record, rootfs);
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
                None,
                ObjectAddr::Container(actor.clone()),
            )
            .await?;
        if def.start {
            actor
                .send(ChangeState(ContainerState::Running))
                .await
                .map_err(mailbox_gone)??;
        }
        Ok(built)
    }

    async fn start_mount(
        &self,
        id: Id,
        record: &mut Mount,
        mounted: MountedFs,
        deps: Vec<ObjectAddr>,
    ) -> Result<Built, Error> {
        record.mountpoint = Some(mounted.mountpoint().display().to_string());
        debug!(id, mountpoint = ?record.mountpoint, "mounted");
        let facts = Some(mounted.facts());
        let addr = ObjectAddr::Mount(MountActor::start(id, mounted, deps));
        self.ready(id, Record::Mount(record.clone()), facts, addr)
            .await
    }
}
