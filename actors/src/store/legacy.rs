//! Formats 1 and 2: each object kept in its wire form, with a separate map of kernel facts.
//! Read once at the start after an upgrade of the service and turned into typed records; the
//! first write of the run then stores the current format.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use crate::attach::local::LocalFacts;
use crate::attach::loopback::LoopbackFacts;
use crate::driver::{Erased, Kinds};
use crate::model::spec::{self, parse_signal, StopPolicy};
use crate::model::wire::{self, ContainerState, Id};
use crate::mount::MountFacts;
use crate::registry::graph::{Counters, Graph, Node};
use crate::registry::record::{ContainerRecord, InitFacts, ObjectRecord, Record};

/// An object as formats 1 and 2 kept it: its wire form, nested objects as `{"id": N}` stubs.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "object", content = "spec", rename_all = "lowercase")]
enum WireRecord {
    Attach(wire::Attach),
    Mount(wire::Mount),
    Container(wire::Container),
}

/// What the kernel said about an object when it was made.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum Facts {
    Loop {
        number: u32,
        backing_file: PathBuf,
    },
    Mount {
        mountpoint: PathBuf,
        fs_type: Option<String>,
    },
    Init {
        pid: i32,
        start_time: u64,
    },
}

#[derive(Debug, Deserialize)]
pub(super) struct Snapshot {
    instance: String,
    /// Format 1 had no journal: 0, which no journal has.
    #[serde(default)]
    pub(super) generation: u64,
    graph: Graph<WireRecord>,
    facts: BTreeMap<Id, Facts>,
}

#[derive(Debug, Deserialize)]
struct Changes {
    counters: Counters,
    put: Vec<Put>,
    gone: Vec<Id>,
}

#[derive(Debug, Deserialize)]
struct Put {
    node: Node<WireRecord>,
    facts: Option<Facts>,
}

impl Snapshot {
    /// Replays one journal line.
    pub(super) fn apply(&mut self, line: &[u8]) -> serde_json::Result<()> {
        let changes: Changes = serde_json::from_slice(line)?;
        let mut put = Vec::with_capacity(changes.put.len());
        for object in changes.put {
            match object.facts {
                Some(facts) => self.facts.insert(object.node.id, facts),
                None => self.facts.remove(&object.node.id),
            };
            put.push(object.node);
        }
        for id in &changes.gone {
            self.facts.remove(id);
        }
        self.graph.replay(changes.counters, put, changes.gone);
        Ok(())
    }

    /// The same objects as typed records, read by today's drivers.
    pub(super) fn upgrade(self, kinds: &Kinds) -> Result<super::Snapshot, String> {
        let facts = self.facts;
        let graph = self.graph.try_map(|id, record| {
            upgrade_record(kinds, record, facts.get(&id))
                .map_err(|err| format!("object {id}: {err}"))
        })?;
        Ok(super::Snapshot {
            instance: self.instance,
            generation: self.generation,
            graph,
        })
    }
}

fn upgrade_record(
    kinds: &Kinds,
    record: WireRecord,
    facts: Option<&Facts>,
) -> Result<Record, String> {
    Ok(match record {
        WireRecord::Attach(attach) => {
            let def = spec::attach_def(kinds, "", &attach).map_err(|err| err.to_string())?;
            let facts = match (facts, &attach.local) {
                (
                    Some(Facts::Loop {
                        number,
                        backing_file,
                    }),
                    _,
                ) => Some(Erased::of(LoopbackFacts {
                    number: *number,
                    device_file: attach
                        .device_file
                        .as_ref()
                        .map(PathBuf::from)
                        .unwrap_or_else(|| PathBuf::from(format!("/dev/loop{number}"))),
                    backing_file: backing_file.clone(),
                })),
                (_, Some(local)) if attach.device_file.is_some() => Some(Erased::of(LocalFacts {
                    device_file: PathBuf::from(&local.path),
                })),
                _ => None,
            };
            Record::Attach(ObjectRecord {
                kind: def.kind,
                spec: def.spec,
                facts,
            })
        }
        WireRecord::Mount(mount) => {
            let def = spec::mount_def(kinds, "", &mount).map_err(|err| err.to_string())?;
            let facts = match facts {
                Some(Facts::Mount {
                    mountpoint,
                    fs_type,
                }) => Some(Erased::of(MountFacts {
                    mountpoint: mountpoint.clone(),
                    fs_type: fs_type.clone(),
                })),
                _ => None,
            };
            Record::Mount(ObjectRecord {
                kind: def.kind,
                spec: def.spec,
                facts,
            })
        }
        WireRecord::Container(container) => {
            let signal = container
                .stop_signal
                .as_deref()
                .and_then(parse_signal)
                .unwrap_or(libc::SIGKILL);
            let init = match facts {
                Some(Facts::Init { pid, start_time }) => Some(InitFacts {
                    pid: *pid,
                    start_time: *start_time,
                }),
                _ => None,
            };
            Record::Container(ContainerRecord {
                command: container.command.unwrap_or_default(),
                systemd: container.systemd,
                namespaces: container
                    .namespaces
                    .unwrap_or_default()
                    .into_iter()
                    .collect(),
                stop: StopPolicy {
                    signal,
                    timeout_secs: container.stop_timeout.unwrap_or(0).max(0) as u64,
                },
                logfile: container.logfile.map(PathBuf::from).unwrap_or_default(),
                state: container.state.unwrap_or(ContainerState::Created),
                exit_code: container.exit_code,
                init,
            })
        }
    })
}
