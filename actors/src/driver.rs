//! What every attachment and mount kind implements, and the table of kinds an engine knows.
//!
//! A kind is one [`Driver`] in one module: it checks its part of a request, makes its kernel
//! resource, finds it again after a restart, says what the store keeps of it and how clients see
//! it, and gives it back. Everything else (the create transaction, ids, holders, the release
//! order, the store, the actors) is generic and knows no kind: adding one is its module, one line
//! in [`Kinds::standard`], and swagger.yaml.
//!
//! Drivers are statically typed ([`Driver`]); the engine keeps them behind [`Kind`], which erases
//! those types so that records, definitions and actors of every kind travel together.

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::Error;
use crate::model::spec::{Child, Invalid};
use crate::model::wire::{self, Id};
use crate::object::{self, ObjectAddr};
use crate::registry::graph::ObjectKind;

/// What the engine gives every driver: where its objects go on the host and what tags them.
#[derive(Debug)]
pub struct Host {
    /// Parent of every mountpoint (and overlay upper/work dirs) the service makes.
    pub mount_dir: PathBuf,
    /// The service's instance name, which tags its loop devices and names its cgroups.
    pub instance: Arc<str>,
    /// This engine's loop device attaches take turns on it (see `sys::loopdev`).
    pub loop_turn: crate::sys::loopdev::AttachTurn,
}

/// A path as the wire shows it: `Path::display`'s text, without its lossy conversion for the
/// paths (all but odd ones) that are UTF-8 already, which a list of many objects shows often.
pub(crate) fn path_text(path: &Path) -> String {
    match path.to_str() {
        Some(text) => text.to_owned(),
        None => path.display().to_string(),
    }
}

/// The wire type of one object kind (attachment or mount) and the fields every kind shares.
pub trait WireObject: Default + Send + 'static {
    /// The wire's name for a kind of this object (`AttachKind`, `MountKind`).
    type Kind: Copy + Eq + fmt::Debug + Send + Sync + 'static;
    const OBJECT: ObjectKind;

    fn kind_of(&self) -> Option<Self::Kind>;
    fn kind_name(kind: Self::Kind) -> &'static str;
    /// Fills in what generic code knows: id, refs, kind and the path the object provides.
    fn set_common(&mut self, id: Id, refs: i64, kind: Self::Kind, provides: Option<&Path>);
}

impl WireObject for wire::Attach {
    type Kind = wire::AttachKind;
    const OBJECT: ObjectKind = ObjectKind::Attach;

    fn kind_of(&self) -> Option<Self::Kind> {
        self.kind
    }
    fn kind_name(kind: Self::Kind) -> &'static str {
        kind.as_str()
    }
    fn set_common(&mut self, id: Id, refs: i64, kind: Self::Kind, provides: Option<&Path>) {
        self.id = Some(id);
        self.refs = refs;
        self.kind = Some(kind);
        self.device_file = provides.map(path_text);
    }
}

impl WireObject for wire::Mount {
    type Kind = wire::MountKind;
    const OBJECT: ObjectKind = ObjectKind::Mount;

    fn kind_of(&self) -> Option<Self::Kind> {
        self.kind
    }
    fn kind_name(kind: Self::Kind) -> &'static str {
        kind.as_str()
    }
    fn set_common(&mut self, id: Id, refs: i64, kind: Self::Kind, provides: Option<&Path>) {
        self.id = Some(id);
        self.refs = refs;
        self.kind = Some(kind);
        self.mountpoint = provides.map(path_text);
    }
}

/// A kind's checked definition, and the objects it depends on in the order its driver wants
/// them (a loopback's base mount, a mount's attachment, an overlay's lowers).
pub struct Parsed<S> {
    pub spec: S,
    pub children: Vec<Child>,
}

impl<S> Parsed<S> {
    pub fn new(spec: S, children: Vec<Child>) -> Self {
        Parsed { spec, children }
    }
}

/// A dependency, as a driver's kernel step sees it: the device file of an attachment, the
/// mountpoint of a mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dep {
    pub id: Id,
    pub path: PathBuf,
}

/// How clients see an object's dependencies, for [`Driver::describe`] (in the driver's order).
pub trait DepViews {
    fn attach(&self, index: usize) -> wire::Attach;
    fn mount(&self, index: usize) -> wire::Mount;
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One attachment or mount kind.
pub trait Driver: Send + Sync + 'static {
    /// The wire object this kind is one kind of.
    type Object: WireObject;
    /// The checked definition: what the registry and the store keep of the request.
    type Spec: Clone + fmt::Debug + PartialEq + Serialize + DeserializeOwned + Send + Sync + 'static;
    /// What the kernel gave: what the store keeps to find the resource again after a restart.
    type Facts: Clone
        + fmt::Debug
        + PartialEq
        + Serialize
        + DeserializeOwned
        + Send
        + Sync
        + 'static;
    /// The resource while an actor holds it.
    type Resource: Send + Unpin + 'static;

    const KIND: <Self::Object as WireObject>::Kind;

    /// Reads and checks this kind's sub-object of `wire` (`at` is its field path); `None` when the
    /// request has no such sub-object.
    fn parse(
        &self,
        kinds: &Kinds,
        at: &str,
        wire: &Self::Object,
    ) -> Option<Result<Parsed<Self::Spec>, Invalid>>;

    /// Makes the kernel resource of object `id`. Blocking: runs on the blocking pool.
    fn create(
        &self,
        host: &Host,
        id: Id,
        spec: &Self::Spec,
        deps: &[Dep],
    ) -> Result<(Self::Resource, Self::Facts), Error>;

    /// Takes up again what an earlier run made, if the kernel still has it as recorded. Blocking.
    fn adopt(
        &self,
        host: &Host,
        id: Id,
        spec: &Self::Spec,
        facts: &Self::Facts,
    ) -> Option<Self::Resource>;

    /// Gives the resource back; `force` when the object goes whatever uses it (forced delete).
    /// Blocking.
    fn release(&self, host: &Host, resource: Self::Resource, force: bool) -> Result<(), Error>;

    /// The path dependents use: the device file of an attachment, the mountpoint of a mount.
    fn provides<'f>(&self, facts: &'f Self::Facts) -> &'f Path;

    /// Fills this kind's sub-object of the client's view.
    fn describe(
        &self,
        spec: &Self::Spec,
        facts: Option<&Self::Facts>,
        deps: &dyn DepViews,
        wire: &mut Self::Object,
    );

    /// After a restart: gives back what the service made but no adopted object holds (a crash
    /// between the kernel step and its record). Blocking.
    fn sweep(&self, _host: &Host, _held: &[&Self::Facts]) {}

    /// Whether a restart finds what a create of this kind made even when the store never heard
    /// of it (a tag on the resource, [`Driver::sweep`], the clean-up of the mount dir). A create
    /// then writes the object down only with its commit; otherwise also before and after the
    /// kernel step, so that a crash mid-create leaves the record the next start releases it by.
    const FOUND_WITHOUT_RECORD: bool = false;
}

type AnyValue = Arc<dyn Any + Send + Sync>;

/// A driver's checked definition or facts, its type erased.
#[derive(Clone)]
pub struct Erased(AnyValue);

impl Erased {
    /// A driver's spec or facts, erased (where the driver's type is known, as in a format
    /// upgrade).
    pub(crate) fn of<T: Any + Send + Sync>(value: T) -> Erased {
        Erased(Arc::new(value))
    }
}

/// A kernel resource, its type erased until its actor owns it: made by a create, or taken up
/// again at a restart.
pub struct Resource(Box<dyn Any + Send>);

impl Resource {
    fn into_typed<D: Driver>(self) -> D::Resource {
        *self
            .0
            .downcast::<D::Resource>()
            .expect("a resource goes back to its own kind")
    }
}

/// One kind, its driver's types erased: what generic code holds.
pub trait Kind: Send + Sync + 'static {
    fn object(&self) -> ObjectKind;
    fn name(&self) -> &'static str;
    fn parse_attach(
        &self,
        kinds: &Kinds,
        at: &str,
        wire: &wire::Attach,
    ) -> Option<Result<(Erased, Vec<Child>), Invalid>>;
    fn parse_mount(
        &self,
        kinds: &Kinds,
        at: &str,
        wire: &wire::Mount,
    ) -> Option<Result<(Erased, Vec<Child>), Invalid>>;
    /// Makes the kernel resource of object `id` (the driver's [`Driver::create`]). Blocking.
    fn make(
        &self,
        host: &Host,
        id: Id,
        spec: &Erased,
        deps: &[Dep],
    ) -> Result<(Resource, Erased), Error>;
    fn adopt(&self, host: &Host, id: Id, spec: &Erased, facts: &Erased) -> Option<Resource>;
    /// Starts the actor that owns `resource` from now on, and holds `deps`, the actors of what
    /// it uses.
    fn start_actor(
        self: Arc<Self>,
        host: Arc<Host>,
        id: Id,
        resource: Resource,
        deps: Vec<ObjectAddr>,
    ) -> ObjectAddr;
    /// Gives back a resource no actor owns: adopted but kept by no object, or made by a create
    /// that failed before its actor started. Blocking.
    fn release_unowned(&self, host: &Host, resource: Resource, force: bool) -> Result<(), Error>;
    fn provides(&self, facts: &Erased) -> PathBuf;
    /// Fills the client's view of attachment `id`: its kind's sub-object and the fields every
    /// kind shares (id, refs, kind, device file).
    fn describe_attach(&self, view: Common<'_>, deps: &dyn DepViews, wire: &mut wire::Attach);
    /// Fills the client's view of mount `id`, as [`Kind::describe_attach`] does.
    fn describe_mount(&self, view: Common<'_>, deps: &dyn DepViews, wire: &mut wire::Mount);
    fn sweep(&self, host: &Host, held: &[&Erased]);
    /// [`Driver::FOUND_WITHOUT_RECORD`].
    fn found_without_record(&self) -> bool;
    fn encode_spec(&self, spec: &Erased) -> serde_json::Result<serde_json::Value>;
    fn encode_facts(&self, facts: &Erased) -> serde_json::Result<serde_json::Value>;
    fn decode_spec(&self, value: serde_json::Value) -> serde_json::Result<Erased>;
    fn decode_facts(&self, value: serde_json::Value) -> serde_json::Result<Erased>;
    fn spec_eq(&self, a: &Erased, b: &Erased) -> bool;
    fn facts_eq(&self, a: &Erased, b: &Erased) -> bool;
    fn debug(&self, value: &Erased, f: &mut fmt::Formatter<'_>) -> fmt::Result;
}

/// A kind as generic code holds it.
pub type KindRef = Arc<dyn Kind>;

/// What generic code knows of an object it asks its kind to describe.
#[derive(Clone, Copy)]
pub struct Common<'r> {
    pub id: Id,
    pub refs: i64,
    pub spec: &'r Erased,
    pub facts: Option<&'r Erased>,
}

/// The adapter that erases a [`Driver`]'s types.
pub(crate) struct Typed<D>(pub D);

impl<D: Driver> Typed<D> {
    fn spec<'v>(&self, value: &'v Erased) -> &'v D::Spec {
        value
            .0
            .downcast_ref()
            .expect("a record of a kind holds that kind's spec")
    }
    fn facts<'v>(&self, value: &'v Erased) -> &'v D::Facts {
        value
            .0
            .downcast_ref()
            .expect("a record of a kind holds that kind's facts")
    }
    fn erase(parsed: Parsed<D::Spec>) -> (Erased, Vec<Child>) {
        (Erased(Arc::new(parsed.spec)), parsed.children)
    }
}

/// The wire object `W` as `D`'s, when `D` is a kind of `W`.
fn as_own<W: WireObject, O: WireObject>(wire: &W) -> Option<&O> {
    (wire as &dyn Any).downcast_ref()
}

fn as_own_mut<W: WireObject, O: WireObject>(wire: &mut W) -> Option<&mut O> {
    (wire as &mut dyn Any).downcast_mut()
}

impl<D: Driver> Kind for Typed<D> {
    fn object(&self) -> ObjectKind {
        D::Object::OBJECT
    }
    fn name(&self) -> &'static str {
        D::Object::kind_name(D::KIND)
    }
    fn parse_attach(
        &self,
        kinds: &Kinds,
        at: &str,
        wire: &wire::Attach,
    ) -> Option<Result<(Erased, Vec<Child>), Invalid>> {
        let own = as_own::<_, D::Object>(wire)?;
        Some(self.0.parse(kinds, at, own)?.map(Self::erase))
    }
    fn parse_mount(
        &self,
        kinds: &Kinds,
        at: &str,
        wire: &wire::Mount,
    ) -> Option<Result<(Erased, Vec<Child>), Invalid>> {
        let own = as_own::<_, D::Object>(wire)?;
        Some(self.0.parse(kinds, at, own)?.map(Self::erase))
    }
    fn make(
        &self,
        host: &Host,
        id: Id,
        spec: &Erased,
        deps: &[Dep],
    ) -> Result<(Resource, Erased), Error> {
        let (resource, facts) = self.0.create(host, id, self.spec(spec), deps)?;
        Ok((Resource(Box::new(resource)), Erased(Arc::new(facts))))
    }
    fn adopt(&self, host: &Host, id: Id, spec: &Erased, facts: &Erased) -> Option<Resource> {
        let resource = self.0.adopt(host, id, self.spec(spec), self.facts(facts))?;
        Some(Resource(Box::new(resource)))
    }
    fn start_actor(
        self: Arc<Self>,
        host: Arc<Host>,
        id: Id,
        resource: Resource,
        deps: Vec<ObjectAddr>,
    ) -> ObjectAddr {
        let resource = resource.into_typed::<D>();
        object::start::<D>(self, host, id, resource, deps)
    }
    fn release_unowned(&self, host: &Host, resource: Resource, force: bool) -> Result<(), Error> {
        self.0.release(host, resource.into_typed::<D>(), force)
    }
    fn provides(&self, facts: &Erased) -> PathBuf {
        self.0.provides(self.facts(facts)).to_path_buf()
    }
    fn describe_attach(&self, view: Common<'_>, deps: &dyn DepViews, wire: &mut wire::Attach) {
        if let Some(own) = as_own_mut::<_, D::Object>(wire) {
            self.describe_own(view, deps, own);
        }
    }
    fn describe_mount(&self, view: Common<'_>, deps: &dyn DepViews, wire: &mut wire::Mount) {
        if let Some(own) = as_own_mut::<_, D::Object>(wire) {
            self.describe_own(view, deps, own);
        }
    }
    fn sweep(&self, host: &Host, held: &[&Erased]) {
        let held: Vec<&D::Facts> = held.iter().map(|facts| self.facts(facts)).collect();
        self.0.sweep(host, &held);
    }
    fn found_without_record(&self) -> bool {
        D::FOUND_WITHOUT_RECORD
    }
    fn encode_spec(&self, spec: &Erased) -> serde_json::Result<serde_json::Value> {
        serde_json::to_value(self.spec(spec))
    }
    fn encode_facts(&self, facts: &Erased) -> serde_json::Result<serde_json::Value> {
        serde_json::to_value(self.facts(facts))
    }
    fn decode_spec(&self, value: serde_json::Value) -> serde_json::Result<Erased> {
        Ok(Erased(Arc::new(serde_json::from_value::<D::Spec>(value)?)))
    }
    fn decode_facts(&self, value: serde_json::Value) -> serde_json::Result<Erased> {
        Ok(Erased(Arc::new(serde_json::from_value::<D::Facts>(value)?)))
    }
    fn spec_eq(&self, a: &Erased, b: &Erased) -> bool {
        self.spec(a) == self.spec(b)
    }
    fn facts_eq(&self, a: &Erased, b: &Erased) -> bool {
        self.facts(a) == self.facts(b)
    }
    fn debug(&self, value: &Erased, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(spec) = value.0.downcast_ref::<D::Spec>() {
            return fmt::Debug::fmt(spec, f);
        }
        if let Some(facts) = value.0.downcast_ref::<D::Facts>() {
            return fmt::Debug::fmt(facts, f);
        }
        f.write_str("?")
    }
}

impl<D: Driver> Typed<D> {
    fn describe_own(&self, view: Common<'_>, deps: &dyn DepViews, wire: &mut D::Object) {
        let facts = view.facts.map(|facts| self.facts(facts));
        self.0.describe(self.spec(view.spec), facts, deps, wire);
        let provides = facts.map(|facts| self.0.provides(facts));
        wire.set_common(view.id, view.refs, D::KIND, provides);
    }
}

/// The kinds an engine knows, by object and name.
#[derive(Clone, Default)]
pub struct Kinds {
    by_name: BTreeMap<(ObjectKind, &'static str), KindRef>,
}

impl Kinds {
    /// Every kind this service has a driver for: one line a kind. `uri` is the driver of
    /// `uri` mounts' flags (cache, limits, CA).
    pub fn standard(uri: &crate::mount::uri::UriConfig) -> Kinds {
        Kinds::default()
            .with(crate::attach::local::Local)
            .with(crate::attach::loopback::Loopback)
            .with(crate::attach::rbd::Rbd::default())
            .with(crate::attach::iscsi::Iscsi)
            .with(crate::mount::attach::AttachFs)
            .with(crate::mount::bind::Bind)
            .with(crate::mount::nfs::Nfs)
            .with(crate::mount::overlay::Overlay)
            .with(crate::mount::uri::Uri::new(uri.clone()))
    }

    /// Adds (or replaces) the kind `driver` implements.
    pub fn with<D: Driver>(mut self, driver: D) -> Kinds {
        let kind: KindRef = Arc::new(Typed(driver));
        self.by_name.insert((kind.object(), kind.name()), kind);
        self
    }

    pub fn get(&self, object: ObjectKind, name: &str) -> Option<&KindRef> {
        self.by_name
            .iter()
            .find(|((o, n), _)| *o == object && *n == name)
            .map(|(_, kind)| kind)
    }

    /// The kinds of one object, in name order.
    pub fn of(&self, object: ObjectKind) -> impl Iterator<Item = &KindRef> {
        self.by_name
            .iter()
            .filter(move |((o, _), _)| *o == object)
            .map(|(_, kind)| kind)
    }
}

impl fmt::Debug for Kinds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.by_name.keys().map(|(o, n)| format!("{o}/{n}")))
            .finish()
    }
}
