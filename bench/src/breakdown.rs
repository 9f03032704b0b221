//! Where the time of an image-to-init cycle goes, step by step, for the floor and the service
//! side by side. The floor's steps are timed in this process (its launches with
//! `actors::container::launch_timed`); the service's come from its timing log: the debug events
//! of target `imageapi_timing`, one JSON line each on its standard error, matched to the
//! measured cycles by container id (the nested objects of container `c` are `c-3` loopback,
//! `c-2` squashfs mount, `c-1` overlay: ids come bottom-up).

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::path::Path;
use std::time::Duration;

use actors::container::LaunchTimes;
use anyhow::{Context, Result};
use serde_json::Value;

use crate::{median, us, Floor, ServiceFigures};

/// The log filter the service runs with in the bench: its usual lines and the timing events.
pub const SERVICE_LOG_FILTER: &str = "info,imageapi_timing=debug";

/// One step of a launch: its name here, its field in the service's event, and its time.
type LaunchStep = (&'static str, &'static str, fn(&LaunchTimes) -> Duration);

/// One timing event of the service.
struct Event {
    message: String,
    id: Option<i64>,
    kind: Option<String>,
    /// Its `*_us` fields, without the suffix.
    times: HashMap<String, Duration>,
}

/// The service's timing events, read from its log.
pub struct ServiceTimes(Vec<Event>);

impl ServiceTimes {
    /// Reads the timing events from the service's JSON log lines; other lines are skipped.
    pub fn read(log: &Path) -> Result<ServiceTimes> {
        let text = fs::read_to_string(log).with_context(|| format!("reading {}", log.display()))?;
        let events = text
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|line| line["target"] == "imageapi_timing")
            .filter_map(|line| {
                let fields = line.get("fields")?.as_object()?;
                let times = fields
                    .iter()
                    .filter_map(|(name, value)| {
                        let name = name.strip_suffix("_us")?;
                        Some((name.to_owned(), Duration::from_micros(value.as_u64()?)))
                    })
                    .collect();
                Some(Event {
                    message: fields.get("message")?.as_str()?.to_owned(),
                    id: fields.get("id").and_then(Value::as_i64),
                    kind: fields
                        .get("kind")
                        .and_then(Value::as_str)
                        .map(str::to_owned),
                    times,
                })
            })
            .collect();
        Ok(ServiceTimes(events))
    }

    /// Field `field` of the events `message` about the object `offset` below each container of
    /// `containers` (0: the container itself), of kind `kind` when given.
    fn samples(
        &self,
        containers: &[i64],
        (message, kind, offset): (&str, Option<&str>, i64),
        field: &str,
    ) -> Vec<Duration> {
        containers
            .iter()
            .filter_map(|container| {
                self.0.iter().find(|event| {
                    event.message == message
                        && event.id == Some(container - offset)
                        && kind.is_none_or(|kind| event.kind.as_deref() == Some(kind))
                })
            })
            .filter_map(|event| event.times.get(field).copied())
            .collect()
    }
}

/// A step's median, or `-` when there are no samples (the step does not exist on that side).
fn cell(samples: &[Duration]) -> String {
    if samples.is_empty() {
        "-".into()
    } else {
        us(median(samples)).to_string()
    }
}

fn line(name: &str, floor: &[Duration], service: &[Duration]) {
    let _ = writeln!(
        io::stdout(),
        "  {name:<66} {:>9} {:>9}",
        cell(floor),
        cell(service)
    );
}

/// Prints the floor's and the service's steps side by side (medians in µs over the measured
/// cycles).
pub fn print(floor: &Floor, service: &ServiceFigures, times: &ServiceTimes) {
    let _ = writeln!(
        io::stdout(),
        "\nWhere the time goes: medians per step over the measured cycles (µs); the service's from its timing log\n  {:<66} {:>9} {:>9}",
        "step",
        "floor",
        "service"
    );
    let ids = &service.ids;
    let made = |kind: &'static str, offset| {
        times.samples(ids, ("object made", Some(kind), offset), "step")
    };
    let objects: Vec<Duration> = (floor.attach.iter().zip(&floor.mount).zip(&floor.overlay))
        .map(|((attach, mount), overlay)| *attach + *mount + *overlay)
        .collect();
    let launch = |field: &str| times.samples(ids, ("launch timing", None, 0), field);
    let steps = |part: fn(&LaunchTimes) -> Duration| -> Vec<Duration> {
        floor.launch_steps.iter().map(part).collect()
    };
    let objects_and_launch: Vec<Duration> = objects
        .iter()
        .zip(&floor.launch_steps)
        .map(|(objects, launch)| *objects + launch.total())
        .collect();
    line(
        "the create's blocking thread (hop, 3 objects, launch())",
        &objects_and_launch,
        &times.samples(ids, ("create job done", None, 1), "job"),
    );
    line("  of which the 3 objects", &objects, &[]);
    line(
        "    of which loop attach",
        &floor.attach,
        &made("loopback", 3),
    );
    line(
        "    of which mount squashfs",
        &floor.mount,
        &made("attach", 2),
    );
    line(
        "    of which overlay (dirs + mount)",
        &floor.overlay,
        &made("overlay", 1),
    );
    line(
        "  of which launch() until the payload runs",
        &steps(|t| t.total()),
        &launch("total"),
    );
    let parts: [LaunchStep; 8] = [
        ("checks of the command in the image, spec", "prepare", |t| {
            t.prepare
        }),
        (
            "init program (sealed copy, first launch only)",
            "program",
            |t| t.program,
        ),
        ("image mount tree copy (open_tree)", "image", |t| t.image),
        ("cgroups made", "cgroup", |t| t.cgroup),
        ("clone3 (on the launcher thread)", "clone", |t| t.clone),
        ("hop to the launcher thread and back", "hop", |t| t.hop),
        ("start time, v1 cgroups", "place", |t| t.place),
        (
            "exec of the init, its root setup, exec of the payload",
            "setup",
            |t| t.setup,
        ),
    ];
    for (name, field, part) in parts {
        line(
            &format!("    of which {name}"),
            &steps(part),
            &launch(field),
        );
    }
    let container = |message: &str, field: &str| times.samples(ids, (message, None, 0), field);
    line(
        "the container actor takes the running init (message)",
        &[],
        &container("container started", "start"),
    );
    line(
        "create walk: begin .. container running",
        &[],
        &container("create done", "built"),
    );
    line(
        "commit: waiting for the store's write (the append)",
        &[],
        &container("create committed", "persist"),
    );
    line(
        "image -> init exec'd / POST -> 201 (client side)",
        &floor.to_exec,
        &service.post,
    );
    let released = |kind: &'static str, offset| {
        times.samples(ids, ("object released", Some(kind), offset), "release")
    };
    line(
        "release container (init already reaped; its log's last line)",
        &[],
        &released("container", 0),
    );
    let [overlay, squashfs, detach, dirs] = &floor.teardown_parts;
    line(
        "umount overlay (service: with its dirs)",
        overlay,
        &released("mount", 1),
    );
    line(
        "umount squashfs (service: with its dir)",
        squashfs,
        &released("mount", 2),
    );
    line(
        "LOOP_CLR_FD (service: detach, close)",
        detach,
        &released("attach", 3),
    );
    line("rm dirs", dirs, &[]);
    line(
        "store write of the removal (after the releases)",
        &[],
        &container("delete written", "persist"),
    );
    line(
        "teardown / DELETE -> 200 (client side)",
        &floor.teardown,
        &service.delete,
    );
}
