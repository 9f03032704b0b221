//! The actor of one attachment or mount: it owns its kernel resource and gives it back.
//!
//! A create makes the resources of one request on one blocking thread (see
//! `registry::build`) and starts each one's actor as soon as they are made; the actor holds the
//! addresses of the actors it depends on, so a dependency outlives every user of it. The
//! registry decides when the resource goes and sends [`Release`].

use std::sync::Arc;

use actix::prelude::*;
use tracing::{info, info_span, warn};

use crate::blocking::blocking;
use crate::container::actor::ContainerActor;
use crate::driver::{Driver, Host, Typed};
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

fn kind_name<D: Driver>() -> &'static str {
    <D::Object as crate::driver::WireObject>::kind_name(D::KIND)
}

/// Starts the actor that owns `resource` from now on: made by a create, or taken up again after
/// a restart.
pub(crate) fn start<D: Driver>(
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
