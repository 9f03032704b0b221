//! What the engine counts for a scraper: one value of [`Metrics`] per engine, handed to the
//! registry and the front door, encoded in the Prometheus text format on demand.
//!
//! The names and labels are a stable interface (docs/observability.md lists them): add, never
//! rename.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use crate::driver::Kinds;
use crate::error::Error;
use crate::model::wire::ContainerState;
use crate::registry::graph::ObjectKind;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    object: &'static str,
    operation: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    object: &'static str,
    stage: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ObjectLabels {
    object: &'static str,
}

/// An operation the latency histogram times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Create,
    Start,
    Stop,
    Pause,
    Delete,
}

impl Operation {
    fn as_str(self) -> &'static str {
        match self {
            Operation::Create => "create",
            Operation::Start => "start",
            Operation::Stop => "stop",
            Operation::Pause => "pause",
            Operation::Delete => "delete",
        }
    }
}

type DurationFamily = Family<OperationLabels, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    // 1 ms to about 65 s: a bind mount is sub-millisecond, a download or a network attach can
    // take its whole timeout.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// The engine's metrics; cheap to clone (every clone records into the same values).
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// Every (object, kind name) the engine has a driver for, so that a kind with no object
    /// shows 0 rather than nothing.
    kind_names: Arc<[(ObjectKind, &'static str)]>,
    attachments: Family<KindLabels, Gauge>,
    mounts: Family<KindLabels, Gauge>,
    containers: Family<StateLabels, Gauge>,
    durations: DurationFamily,
    failures: Family<FailureLabels, Counter>,
    adopted: Family<ObjectLabels, Counter>,
}

impl Metrics {
    pub fn new(kinds: &Kinds) -> Metrics {
        let mut registry = Registry::default();
        let attachments = Family::<KindLabels, Gauge>::default();
        let mounts = Family::<KindLabels, Gauge>::default();
        let containers = Family::<StateLabels, Gauge>::default();
        let durations = DurationFamily::new_with_constructor(duration_histogram);
        let failures = Family::<FailureLabels, Counter>::default();
        let adopted = Family::<ObjectLabels, Counter>::default();
        registry.register(
            "imageapi_attachments",
            "Attachments, by kind",
            attachments.clone(),
        );
        registry.register("imageapi_mounts", "Mounts, by kind", mounts.clone());
        registry.register(
            "imageapi_containers",
            "Containers, by state",
            containers.clone(),
        );
        registry.register_with_unit(
            "imageapi_operation_duration",
            "Time of create, start, stop, pause and delete requests, by object and outcome",
            Unit::Seconds,
            durations.clone(),
        );
        registry.register(
            "imageapi_failures",
            "Failed operations, by the object and driver stage that failed",
            failures.clone(),
        );
        registry.register(
            "imageapi_adopted",
            "Objects of the previous run taken up again at start, by object",
            adopted.clone(),
        );
        let kind_names = [ObjectKind::Attach, ObjectKind::Mount]
            .into_iter()
            .flat_map(|object| kinds.of(object).map(move |kind| (object, kind.name())))
            .collect();
        Metrics {
            registry: Arc::new(registry),
            kind_names,
            attachments,
            mounts,
            containers,
            durations,
            failures,
            adopted,
        }
    }

    /// Replaces the object gauges with a count of the objects there are now.
    pub(crate) fn set_census(
        &self,
        objects: impl Iterator<Item = (ObjectKind, &'static str)>,
        containers: impl Iterator<Item = ContainerState>,
    ) {
        for (object, name) in self.kind_names.iter() {
            self.objects_of(*object)
                .get_or_create(&KindLabels { kind: name })
                .set(0);
        }
        for state in ContainerState::ALL {
            self.containers
                .get_or_create(&StateLabels {
                    state: state.as_str(),
                })
                .set(0);
        }
        for (object, name) in objects {
            self.objects_of(object)
                .get_or_create(&KindLabels { kind: name })
                .inc();
        }
        for state in containers {
            self.containers
                .get_or_create(&StateLabels {
                    state: state.as_str(),
                })
                .inc();
        }
    }

    /// The gauge family of attachments or mounts (`object` is never a container here).
    fn objects_of(&self, object: ObjectKind) -> &Family<KindLabels, Gauge> {
        if object == ObjectKind::Mount {
            &self.mounts
        } else {
            &self.attachments
        }
    }

    /// Records one operation on an `object`: its time, and the failing stage if it failed.
    pub(crate) fn record<T>(
        &self,
        object: ObjectKind,
        operation: Operation,
        took: Duration,
        outcome: &Result<T, Error>,
    ) {
        let labels = OperationLabels {
            object: object.as_str(),
            operation: operation.as_str(),
            outcome: if outcome.is_ok() { "ok" } else { "error" },
        };
        self.durations
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
        if let Some(origin) = outcome.as_ref().err().and_then(Error::origin) {
            self.failures
                .get_or_create(&FailureLabels {
                    object: origin.object.as_str(),
                    stage: origin.stage,
                })
                .inc();
        }
    }

    /// Counts an object adopted at start.
    pub(crate) fn adopted(&self, object: ObjectKind) {
        self.adopted
            .get_or_create(&ObjectLabels {
                object: object.as_str(),
            })
            .inc();
    }

    /// The metrics in the Prometheus text exposition format (OpenMetrics flavour).
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Origin;
    use crate::mount::uri::UriConfig;

    fn metrics() -> Metrics {
        Metrics::new(&Kinds::standard(&UriConfig::default()))
    }

    #[test]
    fn census_shows_every_known_kind_and_state() {
        let metrics = metrics();
        metrics.set_census(
            [
                (ObjectKind::Attach, "loopback"),
                (ObjectKind::Mount, "bind"),
            ]
            .into_iter(),
            [ContainerState::Running, ContainerState::Running].into_iter(),
        );
        let text = metrics.encode();
        for line in [
            "imageapi_attachments{kind=\"loopback\"} 1",
            "imageapi_attachments{kind=\"local\"} 0",
            "imageapi_mounts{kind=\"bind\"} 1",
            "imageapi_containers{state=\"running\"} 2",
            "imageapi_containers{state=\"exited\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
        // A census replaces the last one.
        metrics.set_census(std::iter::empty(), std::iter::empty());
        let text = metrics.encode();
        assert!(
            text.contains("imageapi_attachments{kind=\"loopback\"} 0"),
            "{text}"
        );
    }

    #[test]
    fn failures_count_by_origin_and_every_outcome_is_timed() {
        let metrics = metrics();
        let origin = Origin::new(ObjectKind::Attach, "loopback");
        let failed: Result<(), Error> = Err(Error::rejected(origin, "no such file"));
        metrics.record(
            ObjectKind::Mount,
            Operation::Create,
            Duration::from_millis(3),
            &failed,
        );
        metrics.record(
            ObjectKind::Mount,
            Operation::Delete,
            Duration::from_millis(1),
            &Ok(()),
        );
        metrics.adopted(ObjectKind::Container);
        let text = metrics.encode();
        for line in [
            "imageapi_failures_total{object=\"attach\",stage=\"loopback\"} 1",
            "imageapi_operation_duration_seconds_count{object=\"mount\",operation=\"create\",outcome=\"error\"} 1",
            "imageapi_operation_duration_seconds_count{object=\"mount\",operation=\"delete\",outcome=\"ok\"} 1",
            "imageapi_adopted_total{object=\"container\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
