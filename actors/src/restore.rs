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

use crate::attach::{self, AttachedDevice};
use crate::container::process::Init;
use crate::container::{Cgroup, Runtime};
use crate::model::wire::{Attach, ContainerState, Id};
use crate::mount::MountedFs;
use crate::registry::graph::{Graph, Removed};
use crate::registry::record::Record;
use crate::resource::KernelResource;
use crate::store::{Facts, Snapshot};
use crate::sys::loopdev::{self, LoopDevice};
use crate::sys::mounts;

/// A kernel resource found again, for its actor to own.
pub enum Adopted {
    Attach(AttachedDevice),
    Mount(MountedFs),
    /// A container; with its init when that is still running.
    Container(Option<Init>),
}

/// The checked graph and what was adopted, ready for the registry.
pub struct Checked {
    pub instance: String,
    pub graph: Graph<Record>,
    pub facts: BTreeMap<Id, Facts>,
    pub adopted: BTreeMap<Id, Adopted>,
}

/// Checks a stored snapshot against the kernel. Blocking: runs before the service serves.
pub fn check(snapshot: Snapshot, mount_dir: &Path, runtime: &Arc<Runtime>) -> Checked {
    let Snapshot {
        instance,
        mut graph,
        mut facts,
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
        if let Some(resource) = find(removed.id, &removed.record, facts.get(&removed.id), runtime) {
            release(removed.id, resource);
        }
    }

    // Ids grow bottom-up, so every object is checked after what it uses.
    let ids: Vec<Id> = graph.iter().map(|node| node.id).collect();
    let mut gone = Vec::new();
    for id in ids {
        let Some(node) = graph.get(id) else { continue };
        match find(id, &node.record, facts.get(&id), runtime) {
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
                release(id, resource);
            }
        }
    }
    facts.retain(|id, _| graph.get(*id).is_some());
    // A container whose init did not survive lost it while the service was away.
    for (id, resource) in &adopted {
        if let (Adopted::Container(None), Some(Record::Container(container))) =
            (resource, graph.get(*id).map(|n| &n.record))
        {
            if matches!(
                container.state,
                Some(ContainerState::Running | ContainerState::Stopping | ContainerState::Paused)
            ) {
                warn!(id, "its init ended while the service was away");
                facts.remove(id);
                if let Some(Record::Container(container)) = graph.record_mut(*id) {
                    container.state = Some(ContainerState::Dead);
                    container.exit_code = None;
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
        let log = Path::new(container.logfile.as_deref().unwrap_or_default());
        if let Err(err) = crate::container::reattach_console(*id, init, log) {
            warn!(id, error = %err, "cannot give the adopted container a new console");
        }
    }
    clean_unclaimed_loops(&instance, &adopted);
    clean_unclaimed_cgroups(&adopted, runtime);
    clean_unclaimed_mountpoints(mount_dir, &graph);
    info!(
        objects = adopted.len(),
        "adopted the objects of the previous run"
    );
    Checked {
        instance,
        graph,
        facts,
        adopted,
    }
}

/// The kernel resource of a stored object, if it is still there.
fn find(id: Id, record: &Record, facts: Option<&Facts>, runtime: &Arc<Runtime>) -> Option<Adopted> {
    match (record, facts) {
        (
            Record::Attach(_),
            Some(Facts::Loop {
                number,
                backing_file,
            }),
        ) => {
            let device = LoopDevice::adopt(*number, backing_file)?;
            Some(Adopted::Attach(AttachedDevice::Loop {
                device,
                backing_file: backing_file.clone(),
            }))
        }
        (
            Record::Attach(Attach {
                local: Some(local), ..
            }),
            _,
        ) => attach::attach_local(&local.path).ok().map(Adopted::Attach),
        (
            Record::Mount(_),
            Some(Facts::Mount {
                mountpoint,
                fs_type,
            }),
        ) => {
            let mounted = mounts::mounted_fs_type(mountpoint)?;
            if fs_type.as_ref().is_some_and(|wanted| *wanted != mounted) {
                return None;
            }
            Some(Adopted::Mount(MountedFs::adopt(
                mountpoint.clone(),
                fs_type.clone(),
            )))
        }
        (Record::Container(_), Some(Facts::Init { pid, start_time })) => {
            match Init::adopt(runtime, id, *pid, *start_time) {
                Ok(init) => Some(Adopted::Container(init)),
                Err(err) => {
                    warn!(id, error = %err, "cannot take up the container's init again");
                    Some(Adopted::Container(None))
                }
            }
        }
        (Record::Container(_), _) => Some(Adopted::Container(None)),
        _ => None,
    }
}

/// Gives back a resource that no object keeps any more.
fn release(id: Id, resource: Adopted) {
    let released = match resource {
        Adopted::Attach(device) => device.release(),
        Adopted::Mount(mounted) => mounted.release(),
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

/// Loop devices tagged as this service's that no adopted attachment holds: bound by a create
/// whose kernel step the previous run did not record. Detached.
fn clean_unclaimed_loops(instance: &str, adopted: &BTreeMap<Id, Adopted>) {
    let held: HashSet<u32> = adopted
        .values()
        .filter_map(|resource| match resource {
            Adopted::Attach(AttachedDevice::Loop { device, .. }) => Some(device.number()),
            _ => None,
        })
        .collect();
    let ours = attach::loop_tag_prefix(instance);
    for number in loopdev::bound_devices() {
        let tagged = loopdev::tag_of(number).is_some_and(|tag| tag.starts_with(&ours));
        if !tagged || held.contains(&number) {
            continue;
        }
        warn!(
            device = number,
            "loop device of this service held by no object: detaching it"
        );
        let backing = loopdev::backing_file(number).unwrap_or_default();
        if let Some(device) = LoopDevice::adopt(number, &backing) {
            if let Err(err) = device.detach() {
                warn!(device = number, error = %err, "cannot detach");
            }
        }
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
        .filter_map(|node| node.record.mountpoint().map(PathBuf::from))
        .flat_map(|mountpoint| [mountpoint.with_extension("rw"), mountpoint])
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
    registry: actix::Recipient<crate::container::actor::StateChanged>,
    runtime: &Arc<Runtime>,
) -> HashMap<Id, crate::resource::ObjectAddr> {
    use crate::attach::AttachActor;
    use crate::container::actor::{ContainerActor, ContainerPlan};
    use crate::mount::MountActor;
    use crate::resource::ObjectAddr;

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
            (Adopted::Attach(device), _) => {
                ObjectAddr::Attach(AttachActor::start(id, device, deps))
            }
            (Adopted::Mount(mounted), _) => ObjectAddr::Mount(MountActor::start(id, mounted, deps)),
            (Adopted::Container(init), Record::Container(container)) => {
                let Some(mount) = deps.into_iter().next() else {
                    continue;
                };
                let rootfs = node
                    .deps
                    .first()
                    .and_then(|dep| checked.graph.get(*dep))
                    .and_then(|dep| dep.record.mountpoint())
                    .map(PathBuf::from)
                    .unwrap_or_default();
                let state = container.state.unwrap_or(ContainerState::Created);
                let plan = ContainerPlan::of_record(id, container, rootfs);
                ObjectAddr::Container(ContainerActor::adopt(
                    id,
                    plan,
                    state,
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
