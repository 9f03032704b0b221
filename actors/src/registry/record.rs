//! What the registry keeps of each object, and the fully resolved views clients read.
//!
//! A record is the object's wire form with its nested objects replaced by `{"id": N}` stubs and
//! the kernel facts (device file, mountpoint, ...) filled in: plain, serializable data.

use serde::{Deserialize, Serialize};

use super::graph::{Graph, ObjectKind};
use crate::model::wire::{Attach, Container, Id, Mount};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "object", content = "spec", rename_all = "lowercase")]
pub enum Record {
    Attach(Attach),
    Mount(Mount),
    Container(Container),
}

impl Record {
    pub fn kind(&self) -> ObjectKind {
        match self {
            Record::Attach(_) => ObjectKind::Attach,
            Record::Mount(_) => ObjectKind::Mount,
            Record::Container(_) => ObjectKind::Container,
        }
    }

    /// The mountpoint of a mount record.
    pub fn mountpoint(&self) -> Option<&str> {
        match self {
            Record::Mount(mount) => mount.mountpoint.as_deref(),
            _ => None,
        }
    }

    /// The device file of an attach record.
    pub fn device_file(&self) -> Option<&str> {
        match self {
            Record::Attach(attach) => attach.device_file.as_deref(),
            _ => None,
        }
    }
}

/// A reference to a registered mount, as records hold their children.
pub fn mount_stub(id: Id) -> Mount {
    Mount {
        id: Some(id),
        ..Mount::default()
    }
}

/// A reference to a registered attachment.
pub fn attach_stub(id: Id) -> Attach {
    Attach {
        id: Some(id),
        ..Attach::default()
    }
}

/// The client's view of an object: its record with refs and every nested object resolved.
pub fn view(graph: &Graph<Record>, id: Id) -> Option<Record> {
    let node = graph.get_any(id)?;
    Some(match &node.record {
        Record::Attach(_) => Record::Attach(attach_view(graph, id)?),
        Record::Mount(_) => Record::Mount(mount_view(graph, id)?),
        Record::Container(_) => Record::Container(container_view(graph, id)?),
    })
}

fn refs(graph: &Graph<Record>, id: Id) -> i64 {
    graph.refs(id).unwrap_or(0)
}

pub fn attach_view(graph: &Graph<Record>, id: Id) -> Option<Attach> {
    let Record::Attach(record) = &graph.get_any(id)?.record else {
        return None;
    };
    let mut attach = record.clone();
    attach.id = Some(id);
    attach.refs = refs(graph, id);
    if let Some(loopback) = attach.loopback.as_mut() {
        if let Some(mount) = loopback.mount.as_mut() {
            expand_mount(graph, mount);
        }
    }
    Some(attach)
}

pub fn mount_view(graph: &Graph<Record>, id: Id) -> Option<Mount> {
    let Record::Mount(record) = &graph.get_any(id)?.record else {
        return None;
    };
    let mut mount = record.clone();
    mount.id = Some(id);
    mount.refs = refs(graph, id);
    if let Some(attach) = mount.attach.as_mut() {
        if let Some(child) = attach.attach.id.and_then(|child| attach_view(graph, child)) {
            attach.attach = child;
        }
    }
    if let Some(bind) = mount.bind.as_mut() {
        if let Some(base) = bind.mount.as_mut() {
            expand_mount(graph, base);
        }
    }
    if let Some(overlay) = mount.overlay.as_mut() {
        overlay
            .lower
            .iter_mut()
            .for_each(|lower| expand_mount(graph, lower));
    }
    Some(mount)
}

pub fn container_view(graph: &Graph<Record>, id: Id) -> Option<Container> {
    let Record::Container(record) = &graph.get_any(id)?.record else {
        return None;
    };
    let mut container = record.clone();
    container.id = Some(id);
    container.refs = refs(graph, id);
    if let Some(mount) = container.mount.as_mut() {
        expand_mount(graph, mount);
    }
    Some(container)
}

fn expand_mount(graph: &Graph<Record>, stub: &mut Mount) {
    if let Some(full) = stub.id.and_then(|id| mount_view(graph, id)) {
        *stub = full;
    }
}
