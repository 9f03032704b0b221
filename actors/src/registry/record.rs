//! What the registry keeps of each object (typed records, not the wire types), and the views
//! clients read, built from them at the edge.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::graph::{Graph, ObjectKind};
use crate::driver::{DepViews, Erased, KindRef, Kinds};
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
    let node = graph.get_any(id)?;
    Some(match &node.record {
        Record::Attach(_) => View::Attach(attach_view(graph, id)?),
        Record::Mount(_) => View::Mount(mount_view(graph, id)?),
        Record::Container(_) => View::Container(container_view(graph, id)?),
    })
}

fn refs(graph: &Graph<Record>, id: Id) -> i64 {
    graph.refs(id).unwrap_or(0)
}

/// The views of an object's dependencies, in its driver's order.
struct GraphDeps<'g> {
    graph: &'g Graph<Record>,
    deps: &'g [Id],
}

impl DepViews for GraphDeps<'_> {
    fn attach(&self, index: usize) -> wire::Attach {
        let id = self.deps.get(index).copied();
        id.and_then(|id| attach_view(self.graph, id))
            .unwrap_or_else(|| wire::Attach {
                id,
                ..wire::Attach::default()
            })
    }
    fn mount(&self, index: usize) -> wire::Mount {
        let id = self.deps.get(index).copied();
        id.and_then(|id| mount_view(self.graph, id))
            .unwrap_or_else(|| wire::Mount {
                id,
                ..wire::Mount::default()
            })
    }
    fn len(&self) -> usize {
        self.deps.len()
    }
}

pub fn attach_view(graph: &Graph<Record>, id: Id) -> Option<wire::Attach> {
    let node = graph.get_any(id)?;
    let Record::Attach(object) = &node.record else {
        return None;
    };
    let mut attach = wire::Attach::default();
    let deps = GraphDeps {
        graph,
        deps: &node.deps,
    };
    object
        .kind
        .describe_attach(&object.spec, object.facts.as_ref(), &deps, &mut attach);
    attach.id = Some(id);
    attach.refs = refs(graph, id);
    attach.kind = kind_by_name(object.kind.name());
    attach.device_file = object.provides().map(|path| shown(&path));
    Some(attach)
}

pub fn mount_view(graph: &Graph<Record>, id: Id) -> Option<wire::Mount> {
    let node = graph.get_any(id)?;
    let Record::Mount(object) = &node.record else {
        return None;
    };
    let mut mount = wire::Mount::default();
    let deps = GraphDeps {
        graph,
        deps: &node.deps,
    };
    object
        .kind
        .describe_mount(&object.spec, object.facts.as_ref(), &deps, &mut mount);
    mount.id = Some(id);
    mount.refs = refs(graph, id);
    mount.kind = kind_by_name(object.kind.name());
    mount.mountpoint = object.provides().map(|path| shown(&path));
    Some(mount)
}

/// The wire's kind enum of a kind name (`AttachKind` or `MountKind`).
fn kind_by_name<K: serde::de::DeserializeOwned>(name: &str) -> Option<K> {
    serde_json::from_value(serde_json::Value::String(name.to_string())).ok()
}

fn shown(path: &Path) -> String {
    path.display().to_string()
}

pub fn container_view(graph: &Graph<Record>, id: Id) -> Option<wire::Container> {
    let node = graph.get_any(id)?;
    let Record::Container(record) = &node.record else {
        return None;
    };
    Some(wire::Container {
        id: Some(id),
        refs: refs(graph, id),
        name: node.name.clone(),
        mount: node.deps.first().map(|&mount| {
            mount_view(graph, mount).unwrap_or_else(|| wire::Mount {
                id: Some(mount),
                ..wire::Mount::default()
            })
        }),
        command: Some(record.command.clone()),
        systemd: record.systemd,
        state: Some(record.state),
        logfile: Some(shown(&record.logfile)),
        namespaces: Some(record.namespaces.iter().copied().collect()),
        stop_signal: Some(signal_name(record.stop.signal)),
        stop_timeout: Some(record.stop.timeout_secs as i64),
        exit_code: record.exit_code,
    })
}
