//! What the registry keeps of each object (typed records, not the wire types), and the views
//! clients read, built from them at the edge.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::graph::{Graph, ObjectKind};
use crate::driver::{path_text, Common, DepViews, Erased, KindRef, Kinds};
use crate::model::spec::{signal_name, StopPolicy};
use crate::model::wire::{self, ContainerState, Id, Namespace};

/// One object as the registry keeps it.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Attach(ObjectRecord),
    Mount(ObjectRecord),
    Container(ContainerRecord),
}

/// An attachment or mount: its kind's checked spec and, once made, the kernel's facts.
#[derive(Clone)]
pub struct ObjectRecord {
    pub kind: KindRef,
    pub spec: Erased,
    pub facts: Option<Erased>,
}

impl ObjectRecord {
    /// The path dependents use (device file, mountpoint), once the object is made.
    pub fn provides(&self) -> Option<PathBuf> {
        self.facts.as_ref().map(|facts| self.kind.provides(facts))
    }
}

impl PartialEq for ObjectRecord {
    fn eq(&self, other: &Self) -> bool {
        self.kind.object() == other.kind.object()
            && self.kind.name() == other.kind.name()
            && self.kind.spec_eq(&self.spec, &other.spec)
            && match (&self.facts, &other.facts) {
                (Some(a), Some(b)) => self.kind.facts_eq(a, b),
                (None, None) => true,
                _ => false,
            }
    }
}

impl fmt::Debug for ObjectRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Value<'a>(&'a KindRef, &'a Erased);
        impl fmt::Debug for Value<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.debug(self.1, f)
            }
        }
        f.debug_struct("ObjectRecord")
            .field("kind", &self.kind.name())
            .field("spec", &Value(&self.kind, &self.spec))
            .field(
                "facts",
                &self.facts.as_ref().map(|facts| Value(&self.kind, facts)),
            )
            .finish()
    }
}

/// A running init: its pid and its start time (clock ticks after boot, from `/proc/<pid>/stat`),
/// which together tell it from a later process with the same pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitFacts {
    pub pid: i32,
    pub start_time: u64,
}

/// A container: what it runs, fixed at create, and what the container actor last reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub command: String,
    pub systemd: bool,
    /// Every namespace the init gets (mnt and pid always among them).
    pub namespaces: BTreeSet<Namespace>,
    pub stop: StopPolicy,
    pub logfile: PathBuf,
    pub state: ContainerState,
    pub exit_code: Option<i64>,
    /// The running init, while there is one.
    pub init: Option<InitFacts>,
}

impl Record {
    pub fn kind(&self) -> ObjectKind {
        match self {
            Record::Attach(_) => ObjectKind::Attach,
            Record::Mount(_) => ObjectKind::Mount,
            Record::Container(_) => ObjectKind::Container,
        }
    }

    pub fn object(&self) -> Option<&ObjectRecord> {
        match self {
            Record::Attach(object) | Record::Mount(object) => Some(object),
            Record::Container(_) => None,
        }
    }

    /// Whether a create writes this object down at each step rather than only at its commit
    /// (see [`crate::driver::Driver::FOUND_WITHOUT_RECORD`]). A container's cgroups are found
    /// without a record.
    pub fn written_at_each_step(&self) -> bool {
        match self {
            Record::Attach(object) | Record::Mount(object) => !object.kind.found_without_record(),
            Record::Container(_) => false,
        }
    }

    pub fn object_mut(&mut self) -> Option<&mut ObjectRecord> {
        match self {
            Record::Attach(object) | Record::Mount(object) => Some(object),
            Record::Container(_) => None,
        }
    }

    /// The device file of a made attachment, the mountpoint of a made mount.
    pub fn provides(&self) -> Option<PathBuf> {
        self.object().and_then(ObjectRecord::provides)
    }

    pub fn of_object(kind: KindRef, spec: Erased) -> Record {
        let object = ObjectRecord {
            kind,
            spec,
            facts: None,
        };
        match object.kind.object() {
            ObjectKind::Attach => Record::Attach(object),
            _ => Record::Mount(object),
        }
    }
}

/// A record as the store writes it: the kind by name, its spec and facts in the kind's own
/// schema.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "object", rename_all = "lowercase")]
pub enum StoredRecord {
    Attach(StoredObject),
    Mount(StoredObject),
    Container(ContainerRecord),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredObject {
    pub kind: String,
    pub spec: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub facts: Option<serde_json::Value>,
}

/// Why a stored record cannot be read back.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("{object} of kind {kind:?}: this service has no such driver")]
    UnknownKind { object: ObjectKind, kind: String },
    #[error("{object} of kind {kind}: {source}")]
    Schema {
        object: ObjectKind,
        kind: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

impl Record {
    pub fn to_stored(&self) -> serde_json::Result<StoredRecord> {
        let stored = |object: &ObjectRecord| -> serde_json::Result<StoredObject> {
            Ok(StoredObject {
                kind: object.kind.name().to_string(),
                spec: object.kind.encode_spec(&object.spec)?,
                facts: object
                    .facts
                    .as_ref()
                    .map(|facts| object.kind.encode_facts(facts))
                    .transpose()?,
            })
        };
        Ok(match self {
            Record::Attach(object) => StoredRecord::Attach(stored(object)?),
            Record::Mount(object) => StoredRecord::Mount(stored(object)?),
            Record::Container(container) => StoredRecord::Container(container.clone()),
        })
    }

    pub fn from_stored(kinds: &Kinds, stored: StoredRecord) -> Result<Record, DecodeError> {
        let decode = |object: ObjectKind, stored: StoredObject| {
            let kind = kinds
                .get(object, &stored.kind)
                .ok_or_else(|| DecodeError::UnknownKind {
                    object,
                    kind: stored.kind.clone(),
                })?
                .clone();
            let schema = |source| DecodeError::Schema {
                object,
                kind: kind.name(),
                source,
            };
            let spec = kind.decode_spec(stored.spec).map_err(schema)?;
            let facts = stored
                .facts
                .map(|facts| kind.decode_facts(facts))
                .transpose()
                .map_err(schema)?;
            Ok(ObjectRecord { kind, spec, facts })
        };
        Ok(match stored {
            StoredRecord::Attach(object) => Record::Attach(decode(ObjectKind::Attach, object)?),
            StoredRecord::Mount(object) => Record::Mount(decode(ObjectKind::Mount, object)?),
            StoredRecord::Container(container) => Record::Container(container),
        })
    }
}

impl Serialize for Record {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_stored()
            .map_err(serde::ser::Error::custom)?
            .serialize(serializer)
    }
}

/// How a client sees an object.
#[derive(Debug, Clone, PartialEq)]
pub enum View {
    Attach(wire::Attach),
    Mount(wire::Mount),
    Container(wire::Container),
}

impl View {
    pub fn set_refs(&mut self, refs: i64) {
        match self {
            View::Attach(attach) => attach.refs = refs,
            View::Mount(mount) => mount.refs = refs,
            View::Container(container) => container.refs = refs,
        }
    }
}

/// The client's view of an object: its record with refs and every nested object resolved.
pub fn view(graph: &Graph<Record>, id: Id) -> Option<View> {
    view_sharing(graph, id, &Shared::default())
}

/// [`view`] for one object of several viewed together, which may share dependencies.
pub fn view_sharing(graph: &Graph<Record>, id: Id, shared: &Shared) -> Option<View> {
    let node = graph.get_any(id)?;
    Some(match &node.record {
        Record::Attach(_) => View::Attach(attach_view(graph, id, shared)?),
        Record::Mount(_) => View::Mount(mount_view(graph, id, shared)?),
        Record::Container(_) => View::Container(container_view(graph, id, shared)?),
    })
}

/// The views of the dependencies held more than once, made once for a batch of views: a list
/// of many containers over one image describes the image once and copies it into the others.
#[derive(Default)]
pub struct Shared {
    attaches: RefCell<HashMap<Id, wire::Attach>>,
    mounts: RefCell<HashMap<Id, wire::Mount>>,
}

impl Shared {
    fn view<W: Clone>(
        graph: &Graph<Record>,
        id: Id,
        cache: &RefCell<HashMap<Id, W>>,
        make: impl FnOnce() -> Option<W>,
    ) -> Option<W> {
        if refs(graph, id) <= 1 {
            return make();
        }
        if let Some(view) = cache.borrow().get(&id) {
            return Some(view.clone());
        }
        // Made without the cache borrowed: the view's own dependencies go through it too.
        let view = make()?;
        cache.borrow_mut().insert(id, view.clone());
        Some(view)
    }
}

fn refs(graph: &Graph<Record>, id: Id) -> i64 {
    graph.refs(id).unwrap_or(0)
}

/// The views of an object's dependencies, in its driver's order.
struct GraphDeps<'g> {
    graph: &'g Graph<Record>,
    deps: &'g [Id],
    shared: &'g Shared,
}

impl DepViews for GraphDeps<'_> {
    fn attach(&self, index: usize) -> wire::Attach {
        let id = self.deps.get(index).copied();
        id.and_then(|id| {
            Shared::view(self.graph, id, &self.shared.attaches, || {
                attach_view(self.graph, id, self.shared)
            })
        })
        .unwrap_or_else(|| wire::Attach {
            id,
            ..wire::Attach::default()
        })
    }
    fn mount(&self, index: usize) -> wire::Mount {
        let id = self.deps.get(index).copied();
        id.and_then(|id| {
            Shared::view(self.graph, id, &self.shared.mounts, || {
                mount_view(self.graph, id, self.shared)
            })
        })
        .unwrap_or_else(|| wire::Mount {
            id,
            ..wire::Mount::default()
        })
    }
    fn len(&self) -> usize {
        self.deps.len()
    }
}

fn attach_view(graph: &Graph<Record>, id: Id, shared: &Shared) -> Option<wire::Attach> {
    let node = graph.get_any(id)?;
    let Record::Attach(object) = &node.record else {
        return None;
    };
    let mut attach = wire::Attach::default();
    let deps = GraphDeps {
        graph,
        deps: &node.deps,
        shared,
    };
    object
        .kind
        .describe_attach(common(graph, id, object), &deps, &mut attach);
    Some(attach)
}

fn mount_view(graph: &Graph<Record>, id: Id, shared: &Shared) -> Option<wire::Mount> {
    let node = graph.get_any(id)?;
    let Record::Mount(object) = &node.record else {
        return None;
    };
    let mut mount = wire::Mount::default();
    let deps = GraphDeps {
        graph,
        deps: &node.deps,
        shared,
    };
    object
        .kind
        .describe_mount(common(graph, id, object), &deps, &mut mount);
    Some(mount)
}

fn common<'r>(graph: &Graph<Record>, id: Id, object: &'r ObjectRecord) -> Common<'r> {
    Common {
        id,
        refs: refs(graph, id),
        spec: &object.spec,
        facts: object.facts.as_ref(),
    }
}

fn container_view(graph: &Graph<Record>, id: Id, shared: &Shared) -> Option<wire::Container> {
    let node = graph.get_any(id)?;
    let Record::Container(record) = &node.record else {
        return None;
    };
    Some(wire::Container {
        id: Some(id),
        refs: refs(graph, id),
        name: node.name.clone(),
        mount: node.deps.first().map(|_| {
            GraphDeps {
                graph,
                deps: &node.deps,
                shared,
            }
            .mount(0)
        }),
        command: Some(record.command.clone()),
        systemd: record.systemd,
        state: Some(record.state),
        logfile: Some(path_text(&record.logfile)),
        namespaces: Some(record.namespaces.iter().copied().collect()),
        stop_signal: Some(signal_name(record.stop.signal)),
        stop_timeout: Some(record.stop.timeout_secs as i64),
        exit_code: record.exit_code,
    })
}
