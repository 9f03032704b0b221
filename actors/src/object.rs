//! The actor of one attachment or mount: it owns its kernel resource and gives it back.
//!
//! A create makes the resources of one request on one blocking thread (see
//! `registry::build`) and starts each one's actor as soon as they are made; the actor holds the
//! addresses of the actors it depends on, so a dependency outlives every user of it. The
//! registry decides when the resource goes and sends [`Surrender`]: the actor gives its resource
//! up as a [`Surrendered`] release and stops, and the registry releases all of one removal on one
//! blocking thread, users first (see `Registry::release_objects`), as the create made them.

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

/// Tells an object's actor to give up its kernel resource and stop. `force`: the object goes
/// whatever still uses it (a forced delete). A container's actor kills its init first if it
/// still runs, and gives up its last log line.
#[derive(Debug, Clone, Copy)]
pub struct Surrender {
    pub force: bool,
}

impl Message for Surrender {
    type Result = Option<Surrendered>;
}

/// The release of a kernel resource its actor gave up: blocking, so for a blocking thread. It
/// keeps the actors of what the resource uses alive until it has run.
pub struct Surrendered {
    id: Id,
    kind: &'static str,
    release: Box<dyn FnOnce() -> Result<(), Error> + Send>,
}

impl Surrendered {
    pub(crate) fn new(
        id: Id,
        kind: &'static str,
        release: impl FnOnce() -> Result<(), Error> + Send + 'static,
    ) -> Self {
        Surrendered {
            id,
            kind,
            release: Box::new(release),
        }
    }

    /// Gives the resource back. Its "released" log line is the caller's to write, once it has
    /// answered whoever waits for the release (a line costs the answer a `write`).
    pub fn release(self) -> ReleaseOutcome {
        ReleaseOutcome {
            id: self.id,
            kind: self.kind,
            result: (self.release)(),
        }
    }
}

/// How a [`Surrendered`] release went.
pub struct ReleaseOutcome {
    id: Id,
    kind: &'static str,
    pub result: Result<(), Error>,
}

impl ReleaseOutcome {
    pub fn log(&self) {
        let (id, kind) = (self.id, self.kind);
        info!(id, kind, ok = self.result.is_ok(), "released");
    }
}

impl<D: Driver> Handler<Surrender> for ObjectActor<D> {
    type Result = Option<Surrendered>;

    fn handle(&mut self, msg: Surrender, ctx: &mut Self::Context) -> Self::Result {
        ctx.stop();
        let resource = self.resource.take()?;
        let (kind, host, id) = (self.kind.clone(), self.host.clone(), self.id);
        let dependencies = std::mem::take(&mut self.dependencies);
        Some(Surrendered::new(id, kind_name::<D>(), move || {
            let _object = info_span!("object", id, kind = kind_name::<D>()).entered();
            let released = kind.0.release(&host, resource, msg.force);
            drop(dependencies);
            released
        }))
    }
}

/// The address of any object's actor, as the registry and a dependent hold it.
#[derive(Clone)]
pub enum ObjectAddr {
    /// An attachment or mount.
    Object(Recipient<Surrender>),
    Container(Addr<ContainerActor>),
}

impl ObjectAddr {
    /// Asks the actor to give back its kernel resource and stop; waits until it has.
    pub async fn release(&self, force: bool) -> Result<(), Error> {
        // A mailbox that is already closed means the actor is gone, and its resource with it.
        match self.surrender().send(Surrender { force }).await {
            Ok(Some(surrendered)) => {
                blocking(move || {
                    let outcome = surrendered.release();
                    outcome.log();
                    outcome.result
                })
                .await
            }
            Ok(None) | Err(_) => Ok(()),
        }
    }

    /// Where to send [`Surrender`], whatever the kind of object.
    pub fn surrender(&self) -> Recipient<Surrender> {
        match self {
            ObjectAddr::Object(addr) => addr.clone(),
            ObjectAddr::Container(addr) => addr.clone().recipient(),
        }
    }
}
