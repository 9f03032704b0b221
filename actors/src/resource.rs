//! The actor that owns one attachment's or one mount's kernel resource.
//!
//! The actor holds the addresses of the actors it depends on, so a dependency outlives every user
//! of it; the registry decides when the resource goes and sends [`Release`].

use actix::prelude::*;
use tracing::{info, warn};

use crate::blocking::blocking;
use crate::error::Error;
use crate::model::wire::Id;

/// A kernel resource (loop device, mounted filesystem) that must be given back explicitly.
pub trait KernelResource: Send + Unpin + 'static {
    /// Gives the resource back to the kernel. Runs on a blocking thread.
    fn release(self) -> Result<(), Error>;
}

/// One attachment or mount: owns its resource and holds its dependencies alive.
pub struct ResourceActor<R: KernelResource> {
    id: Id,
    resource: Option<R>,
    dependencies: Vec<ObjectAddr>,
}

impl<R: KernelResource> ResourceActor<R> {
    pub fn start(id: Id, resource: R, dependencies: Vec<ObjectAddr>) -> Addr<Self> {
        ResourceActor {
            id,
            resource: Some(resource),
            dependencies,
        }
        .start()
    }
}

impl<R: KernelResource> Actor for ResourceActor<R> {
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

/// Gives the kernel resource back and stops the actor.
pub struct Release;

impl Message for Release {
    type Result = Result<(), Error>;
}

impl<R: KernelResource> Handler<Release> for ResourceActor<R> {
    type Result = AtomicResponse<Self, Result<(), Error>>;

    fn handle(&mut self, _msg: Release, _ctx: &mut Self::Context) -> Self::Result {
        let resource = self.resource.take();
        let id = self.id;
        let release = async move {
            match resource {
                Some(resource) => blocking(move || resource.release()).await,
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

/// The address of any object's actor, as a dependent holds it.
#[derive(Clone)]
pub enum ObjectAddr {
    Attach(Addr<crate::attach::AttachActor>),
    Mount(Addr<crate::mount::MountActor>),
    Container(Addr<crate::container::actor::ContainerActor>),
}

impl ObjectAddr {
    /// Asks the actor to give back its kernel resource and stop; waits until it has.
    pub async fn release(&self) -> Result<(), Error> {
        let answer = match self {
            ObjectAddr::Attach(addr) => addr.send(Release).await,
            ObjectAddr::Mount(addr) => addr.send(Release).await,
            ObjectAddr::Container(addr) => addr.send(Release).await,
        };
        // A mailbox that is already closed means the actor is gone, and its resource with it.
        answer.unwrap_or(Ok(()))
    }
}
