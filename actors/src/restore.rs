//! Start-up with a state store: reload the graph and check every object against the kernel.
//!
//! Objects whose kernel resource is still there are adopted (their actors take them up again);
//! objects whose resource is gone are logged and removed together with everything that used
//! them, as a forced delete would. Creates the previous run did not finish are undone, and
//! mountpoints under the mount dir that no object claims (a crash mid-create) are cleaned up.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::{info, warn};

use crate::container::process::Init;
use crate::container::{Cgroup, Runtime};
use crate::driver::{Erased, Host, KindRef, Kinds, Resource};
use crate::model::wire::{ContainerState, Id};
use crate::mount::scratch_of;
use crate::object::ObjectAddr;
use crate::registry::graph::{Graph, Removed};
use crate::registry::record::Record;
use crate::store::Snapshot;
use crate::sys::mounts;

/// A kernel resource found again, for its actor to own.
pub enum Adopted {
    /// An attachment or mount, with the facts it was found by.
    Object(KindRef, Erased, Resource),
    /// A container; with its init when that is still running.
    Container(Option<Init>),
}

/// The checked graph and what was adopted, ready for the registry.
pub struct Checked {
    pub instance: String,
    pub graph: Graph<Record>,
    pub adopted: BTreeMap<Id, Adopted>,
}

/// Checks a stored snapshot against the kernel. Blocking: runs before the service serves.
pub fn check(snapshot: Snapshot, kinds: &Kinds, host: &Host, runtime: &Arc<Runtime>) -> Checked {
    let Snapshot {
        instance,
        mut graph,
        ..
    } = snapshot;
    let mut adopted = BTreeMap::new();

    // Creates cut short by the end of the previous run: undo what they made.
    let unfinished = graph.abort_pending();
    if !unfinished.is_empty() {
        info!(
            objects = unfinished.len(),
            "undoing creates the previous run did not finish"
        );
    }
    for removed in &unfinished {
        if let Some(resource) = find(host, runtime, removed.id, &removed.record) {
            release(host, removed.id, resource);
        }
    }

    // Ids grow bottom-up, so every object is checked after what it uses.
    let ids: Vec<Id> = graph.iter().map(|node| node.id).collect();
    let mut gone = Vec::new();
    for id in ids {
        let Some(node) = graph.get(id) else { continue };
        match find(host, runtime, id, &node.record) {
            Some(resource) => {
                adopted.insert(id, resource);
            }
            None => gone.push(id),
        }
    }
    for id in gone {
        if graph.get(id).is_none() {
            continue; // already removed as a user of something gone
        }
        warn!(
            id,
            "its kernel resource is gone: removing it and every object that used it"
        );
        let removed = graph.delete(id, true).unwrap_or_default();
        for Removed { id, .. } in removed {
            if let Some(resource) = adopted.remove(&id) {
                release(host, id, resource);
            }
        }
    }
    // A container whose init did not survive lost it while the service was away.
    for (id, resource) in &adopted {
        if let (Adopted::Container(None), Some(Record::Container(container))) =
            (resource, graph.get(*id).map(|n| &n.record))
        {
            if matches!(
                container.state,
                ContainerState::Running | ContainerState::Stopping | ContainerState::Paused
            ) {
                warn!(id, "its init ended while the service was away");
                if let Some(Record::Container(container)) = graph.record_mut(*id) {
                    container.state = ContainerState::Dead;
                    container.exit_code = None;
                    container.init = None;
                }
            }
        }
    }
    // A systemd container's console was relayed by the previous service: give it a new one.
    for (id, resource) in &adopted {
        let (Adopted::Container(Some(init)), Some(Record::Container(container))) =
            (resource, graph.get(*id).map(|n| &n.record))
        else {
            continue;
        };
        if !container.systemd {
            continue;
        }
        if let Err(err) = crate::container::reattach_console(*id, init, &container.logfile) {
            warn!(id, error = %err, "cannot give the adopted container a new console");
        }
    }
    for kind in kinds
        .of(crate::registry::graph::ObjectKind::Attach)
        .chain(kinds.of(crate::registry::graph::ObjectKind::Mount))
    {
        let held: Vec<&Erased> = adopted
            .values()
            .filter_map(|resource| match resource {
                Adopted::Object(of, facts, _) if Arc::ptr_eq(of, kind) => Some(facts),
                _ => None,
            })
            .collect();
        kind.sweep(host, &held);
    }
    clean_unclaimed_cgroups(&adopted, runtime);
    clean_unclaimed_mountpoints(&host.mount_dir, &graph);
    info!(
        objects = adopted.len(),
        "adopted the objects of the previous run"
    );
    Checked {
        instance,
        graph,
        adopted,
    }
}

/// The kernel resource of a stored object, if it is still there.
fn find(host: &Host, runtime: &Arc<Runtime>, id: Id, record: &Record) -> Option<Adopted> {
    match record {
        Record::Attach(object) | Record::Mount(object) => {
            let facts = object.facts.as_ref()?;
            let resource = object.kind.adopt(host, id, &object.spec, facts)?;
            Some(Adopted::Object(
                object.kind.clone(),
                facts.clone(),
                resource,
            ))
        }
        Record::Container(container) => match container.init {
            Some(init) => match Init::adopt(runtime, id, init.pid, init.start_time) {
                Ok(init) => Some(Adopted::Container(init)),
                Err(err) => {
                    warn!(id, error = %err, "cannot take up the container's init again");
                    Some(Adopted::Container(None))
                }
            },
            None => Some(Adopted::Container(None)),
        },
    }
}

/// Gives back a resource that no object keeps any more.
fn release(host: &Host, id: Id, resource: Adopted) {
    let released = match resource {
        Adopted::Object(kind, _, resource) => kind.release_unowned(host, resource, true),
        Adopted::Container(Some(init)) => {
            // Dropping an adopted init kills it.
            drop(init);
            Ok(())
        }
        Adopted::Container(None) => Ok(()),
    };
    match released {
        Ok(()) => info!(id, "released what the previous run left"),
        Err(err) => warn!(id, error = %err, "cannot release what the previous run left"),
    }
}

/// The cgroups of this service whose container has no adopted init (it died, the container was
/// deleted, or a crash came before its start was recorded): whatever still runs in them is
/// killed, and they are removed.
fn clean_unclaimed_cgroups(adopted: &BTreeMap<Id, Adopted>, runtime: &Runtime) {
    for id in Cgroup::ids_on_host(runtime) {
        if matches!(adopted.get(&id), Some(Adopted::Container(Some(_)))) {
            continue;
        }
        warn!(
            id,
            "cgroup of a container with no adopted init: killing what runs in it"
        );
        if let Err(err) = Cgroup::left_by(runtime, id).kill_and_remove() {
            warn!(id, error = %err, "cannot remove the cgroup");
        }
    }
}

/// Mountpoints (and overlay scratch dirs) under the mount dir that no object claims: made by a
/// create whose kernel step the previous run did not record. Unmounted and removed.
fn clean_unclaimed_mountpoints(mount_dir: &Path, graph: &Graph<Record>) {
    let claimed: HashSet<PathBuf> = graph
        .iter()
        .filter(|node| node.kind == crate::registry::graph::ObjectKind::Mount)
        .filter_map(|node| node.record.provides())
        .flat_map(|mountpoint| [scratch_of(&mountpoint), mountpoint])
        .collect();
    let Ok(entries) = std::fs::read_dir(mount_dir) else {
        return;
    };
    for path in entries.flatten().map(|entry| entry.path()) {
        if claimed.contains(&path) {
            continue;
        }
        warn!(path = %path.display(), "not claimed by any object: cleaning it up");
        if mounts::mounted_fs_type(&path).is_some() {
            if let Err(err) = mounts::unmount(&path) {
                warn!(path = %path.display(), error = %err, "cannot unmount");
                continue;
            }
        }
        let removed = if path.extension().is_some_and(|ext| ext == "rw") {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_dir(&path)
        };
        if let Err(err) = removed {
            warn!(path = %path.display(), error = %err, "cannot remove");
        }
    }
}

/// The actors of the adopted objects, started in id order so that each holds what it uses.
pub fn start_actors(
    checked: &mut Checked,
    host: &Arc<Host>,
    registry: actix::Recipient<crate::container::actor::StateChanged>,
    runtime: &Arc<Runtime>,
) -> HashMap<Id, ObjectAddr> {
    use crate::container::actor::{ContainerActor, ContainerPlan};

    let mut actors: HashMap<Id, ObjectAddr> = HashMap::new();
    let adopted = std::mem::take(&mut checked.adopted);
    for (id, resource) in adopted {
        let Some(node) = checked.graph.get(id) else {
            continue;
        };
        let deps: Vec<ObjectAddr> = node
            .deps
            .iter()
            .filter_map(|dep| actors.get(dep).cloned())
            .collect();
        let addr = match (resource, &node.record) {
            (Adopted::Object(kind, _, resource), _) => {
                kind.start_actor(host.clone(), id, resource, deps)
            }
            (Adopted::Container(init), Record::Container(container)) => {
                let Some(mount) = deps.into_iter().next() else {
                    continue;
                };
                let rootfs = node
                    .deps
                    .first()
                    .and_then(|dep| checked.graph.get(*dep))
                    .and_then(|dep| dep.record.provides())
                    .unwrap_or_default();
                let plan = ContainerPlan::of_record(id, node.name.as_deref(), container, rootfs);
                ObjectAddr::Container(ContainerActor::adopt(
                    id,
                    plan,
                    container.state,
                    init,
                    mount,
                    registry.clone(),
                    runtime.clone(),
                ))
            }
            (Adopted::Container(_), _) => continue,
        };
        actors.insert(id, addr);
    }
    actors
}
