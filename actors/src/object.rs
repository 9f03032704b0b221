//! The actor of one attachment or mount: it makes its kernel resource, owns it, and gives it back.
//!
//! The actor makes the resource in its own start path (on the blocking pool) and holds the
//! addresses of the actors it depends on, so a dependency outlives every user of it; the registry
//! decides when the resource goes and sends [`Release`].

use std::path::Path;
use std::sync::Arc;

use actix::prelude::*;
use tracing::{info, info_span, warn};

use crate::blocking::{blocking, mailbox_gone};
use crate::container::actor::ContainerActor;
use crate::driver::{Dep, Driver, Host, Typed};
use crate::error::Error;
use crate::model::wire::Id;

/// One attachment or mount of kind `D`.
pub struct ObjectActor<D: Driver> {
    id: Id,
    kind: Arc<Typed<D>>,
    host: Arc<Host>,
    resource: Option<D::Resource>,
    /// Kept alive as long as this object is.
    dependencies: Vec<ObjectAddr>,
}

impl<D: Driver> Actor for ObjectActor<D> {
    type Context = Context<Self>;

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        if self.resource.is_some() {
            // Only a shutdown of the whole actor system gets here without Release: the resource
            // stays in the kernel (as a persistent service wants) and is reported.
            warn!(
                id = self.id,
                "actor stopped without releasing its kernel resource"
            );
        }
    }
}

/// A user's check of what a new object provides (a container's command in its new mount): run
/// on the blocking thread of the kernel step, right after it, it needs no thread hop of its own.
pub(crate) type Check = Box<dyn FnOnce(&Path) -> Result<(), Error> + Send>;

/// Makes the resource, then runs `check` on it; the actor stops again when the making fails.
struct Create<D: Driver> {
    spec: D::Spec,
    deps: Vec<Dep>,
    check: Option<Check>,
}

/// A made resource's facts, and what the check found (`Ok` without a check).
type Made<F> = (F, Result<(), Error>);

impl<D: Driver> Message for Create<D> {
    type Result = Result<Made<D::Facts>, Error>;
}

impl<D: Driver> Handler<Create<D>> for ObjectActor<D> {
    type Result = AtomicResponse<Self, Result<Made<D::Facts>, Error>>;

    fn handle(&mut self, msg: Create<D>, _ctx: &mut Self::Context) -> Self::Result {
        let (kind, host, id) = (self.kind.clone(), self.host.clone(), self.id);
        let made = blocking(move || {
            // The driver's own lines carry the object's id through this span.
            let _object = info_span!("object", id, kind = kind_name::<D>()).entered();
            let (resource, facts) = kind.0.create(&host, id, &msg.spec, &msg.deps)?;
            let checked = msg
                .check
                .map_or(Ok(()), |check| check(kind.0.provides(&facts)));
            Ok((resource, (facts, checked)))
        });
        AtomicResponse::new(Box::pin(made.into_actor(self).map(
            |made, actor, ctx| match made {
                Ok((resource, made)) => {
                    info!(id = actor.id, kind = kind_name::<D>(), "made");
                    actor.resource = Some(resource);
                    Ok(made)
                }
                Err(err) => {
                    actor.dependencies.clear();
                    ctx.stop();
                    Err(err)
                }
            },
        )))
    }
}

fn kind_name<D: Driver>() -> &'static str {
    <D::Object as crate::driver::WireObject>::kind_name(D::KIND)
}

/// Starts the actor of a new object, which makes its resource and runs `check` on it; answers
/// once it has.
pub(crate) async fn create<D: Driver>(
    kind: Arc<Typed<D>>,
    host: Arc<Host>,
    id: Id,
    spec: D::Spec,
    deps: Vec<(Dep, ObjectAddr)>,
    check: Option<Check>,
) -> Result<(ObjectAddr, Made<D::Facts>), Error> {
    let (deps, dependencies): (Vec<Dep>, Vec<ObjectAddr>) = deps.into_iter().unzip();
    let addr = ObjectActor::<D> {
        id,
        kind,
        host,
        resource: None,
        dependencies,
    }
    .start();
    let made = addr
        .send(Create { spec, deps, check })
        .await
        .map_err(mailbox_gone)??;
    Ok((ObjectAddr::Object(addr.recipient()), made))
}

/// Starts the actor of a resource taken up again after a restart.
pub(crate) fn adopted<D: Driver>(
    kind: Arc<Typed<D>>,
    host: Arc<Host>,
    id: Id,
    resource: D::Resource,
    dependencies: Vec<ObjectAddr>,
) -> ObjectAddr {
    let addr = ObjectActor::<D> {
        id,
        kind,
        host,
        resource: Some(resource),
        dependencies,
    }
    .start();
    ObjectAddr::Object(addr.recipient())
}

/// Gives the kernel resource back and stops the actor. `force`: the object goes whatever still
/// uses it (a forced delete).
#[derive(Debug, Clone, Copy)]
pub struct Release {
    pub force: bool,
}

impl Message for Release {
    type Result = Result<(), Error>;
}

impl<D: Driver> Handler<Release> for ObjectActor<D> {
    type Result = AtomicResponse<Self, Result<(), Error>>;

    fn handle(&mut self, msg: Release, _ctx: &mut Self::Context) -> Self::Result {
        let resource = self.resource.take();
        let (kind, host, id) = (self.kind.clone(), self.host.clone(), self.id);
        let release = async move {
            match resource {
                Some(resource) => {
                    blocking(move || {
                        let _object = info_span!("object", id, kind = kind_name::<D>()).entered();
                        kind.0.release(&host, resource, msg.force)
                    })
                    .await
                }
                None => Ok(()),
            }
        };
        AtomicResponse::new(Box::pin(release.into_actor(self).map(
            move |result, actor, ctx| {
                info!(id, ok = result.is_ok(), "released");
                actor.dependencies.clear();
                ctx.stop();
                result
            },
        )))
    }
}

/// The address of any object's actor, as the registry and a dependent hold it.
#[derive(Clone)]
pub enum ObjectAddr {
    /// An attachment or mount.
    Object(Recipient<Release>),
    Container(Addr<ContainerActor>),
}

impl ObjectAddr {
    /// Asks the actor to give back its kernel resource and stop; waits until it has.
    pub async fn release(&self, force: bool) -> Result<(), Error> {
        let answer = match self {
            ObjectAddr::Object(addr) => addr.send(Release { force }).await,
            ObjectAddr::Container(addr) => addr.send(Release { force }).await,
        };
        // A mailbox that is already closed means the actor is gone, and its resource with it.
        answer.unwrap_or(Ok(()))
    }
}
