//! End-to-end tests of what operators scrape and watch: `/metrics` (parsed strictly), the
//! `/healthz` and `/readyz` probes, and `--log-format json`.
//!
//! The metrics are parsed by [`parse_exposition`], a strict parser of the OpenMetrics text
//! format written here: the Rust parsers on crates.io are unmaintained or lenient, and a
//! lenient parser would hide the format errors this test is for.

mod common;

use std::collections::BTreeMap;

use common::*;
use serde_json::Value;

/// Label names and values, sorted.
type Labels = Vec<(String, String)>;

/// One sample: metric name and labels to value.
type Samples = BTreeMap<(String, Labels), f64>;

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Parses `{a="x",b="y"}` (at the start of `text`); answers the labels and the rest.
fn parse_labels(text: &str, line: &str) -> (Vec<(String, String)>, String) {
    let mut labels = Vec::new();
    let mut rest = text.strip_prefix('{').unwrap();
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            labels.sort();
            return (labels, after.to_string());
        }
        let (name, after) = rest
            .split_once("=\"")
            .unwrap_or_else(|| panic!("label without =\" in {line:?}"));
        assert!(is_label_name(name), "label name {name:?} in {line:?}");
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c @ ('\\' | '"'))) => value.push(c),
                    other => panic!("bad escape {other:?} in {line:?}"),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => panic!("unterminated label value in {line:?}"),
            }
        };
        labels.push((name.to_string(), value));
        rest = &after[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}

/// Parses the OpenMetrics text format strictly: every family has one TYPE (and HELP) before its
/// samples, every sample belongs to a declared family with a suffix its type allows, no sample
/// repeats, histogram buckets are cumulative and end in `+Inf` equal to `_count`, and `# EOF`
/// ends the text.
fn parse_exposition(text: &str) -> Samples {
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = Samples::new();
    let mut ended = false;
    for line in text.lines() {
        assert!(!ended, "text after # EOF: {line:?}");
        if line == "# EOF" {
            ended = true;
            continue;
        }
        if let Some(comment) = line.strip_prefix("# ") {
            let mut parts = comment.splitn(3, ' ');
            let (keyword, name) = (parts.next().unwrap(), parts.next().unwrap_or(""));
            assert!(is_metric_name(name), "metric name {name:?} in {line:?}");
            match keyword {
                "TYPE" => {
                    let kind = parts.next().unwrap_or("");
                    assert!(
                        [
                            "counter",
                            "gauge",
                            "histogram",
                            "summary",
                            "info",
                            "unknown"
                        ]
                        .contains(&kind),
                        "type {kind:?} in {line:?}"
                    );
                    assert!(
                        types.insert(name.to_string(), kind.to_string()).is_none(),
                        "second TYPE of {name}"
                    );
                }
                "HELP" | "UNIT" => {}
                _ => panic!("unknown comment {line:?}"),
            }
            continue;
        }
        let name_end = line
            .find(['{', ' '])
            .unwrap_or_else(|| panic!("sample without value: {line:?}"));
        let name = &line[..name_end];
        assert!(is_metric_name(name), "metric name {name:?} in {line:?}");
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end..], line)
        } else {
            (Vec::new(), line[name_end..].to_string())
        };
        let value = rest
            .strip_prefix(' ')
            .unwrap_or_else(|| panic!("no space before the value in {line:?}"));
        // A timestamp may follow the value; this service writes none.
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            number => number
                .parse()
                .unwrap_or_else(|_| panic!("value {number:?} in {line:?}")),
        };
        let family = types
            .iter()
            .filter(|(family, _)| name.starts_with(family.as_str()))
            .max_by_key(|(family, _)| family.len())
            .unwrap_or_else(|| panic!("sample of no declared family: {line:?}"));
        let suffix = &name[family.0.len()..];
        let allowed: &[&str] = match family.1.as_str() {
            "counter" => &["_total", "_created"],
            "histogram" => &["_bucket", "_count", "_sum", "_created"],
            "info" => &["_info"],
            _ => &[""],
        };
        assert!(allowed.contains(&suffix), "{name} in a {} family", family.1);
        assert!(
            samples.insert((name.to_string(), labels), value).is_none(),
            "repeated sample {line:?}"
        );
    }
    assert!(ended, "no # EOF at the end");
    check_histograms(&types, &samples);
    samples
}

fn check_histograms(types: &BTreeMap<String, String>, samples: &Samples) {
    for (family, _) in types.iter().filter(|(_, kind)| *kind == "histogram") {
        let bucket_name = format!("{family}_bucket");
        // The buckets of each series: upper bound and cumulative count.
        let mut series: BTreeMap<Labels, Vec<(f64, f64)>> = BTreeMap::new();
        for ((name, labels), value) in samples {
            if *name != bucket_name {
                continue;
            }
            let le = labels
                .iter()
                .find(|(label, _)| label == "le")
                .map(|(_, le)| match le.as_str() {
                    "+Inf" => f64::INFINITY,
                    bound => bound.parse().unwrap(),
                })
                .expect("bucket without le");
            let others = labels.iter().filter(|(l, _)| l != "le").cloned().collect();
            series.entry(others).or_default().push((le, *value));
        }
        for (labels, mut buckets) in series {
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            assert!(
                buckets.windows(2).all(|pair| pair[0].1 <= pair[1].1),
                "{family}{labels:?}: buckets not cumulative"
            );
            let last = buckets.last().unwrap();
            assert_eq!(last.0, f64::INFINITY, "{family}{labels:?}: no +Inf bucket");
            let count = samples[&(format!("{family}_count"), labels.clone())];
            assert_eq!(
                last.1, count,
                "{family}{labels:?}: +Inf bucket is not _count"
            );
        }
    }
}

fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut labels: Vec<_> = pairs
        .iter()
        .map(|(l, v)| (l.to_string(), v.to_string()))
        .collect();
    labels.sort();
    labels
}

fn scrape(svc: &Service) -> Samples {
    let resp = svc.raw("GET", "/metrics", None, None);
    assert_eq!(resp.status, 200, "{resp}");
    let content_type = resp.header("content-type").unwrap_or("");
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type:?}"
    );
    parse_exposition(&resp.body)
}

fn value(samples: &Samples, name: &str, pairs: &[(&str, &str)]) -> f64 {
    samples
        .get(&(name.to_string(), labels(pairs)))
        .copied()
        .unwrap_or(0.0)
}

fn operations(samples: &Samples, object: &str, operation: &str, outcome: &str) -> f64 {
    value(
        samples,
        "imageapi_operation_duration_seconds_count",
        &[
            ("object", object),
            ("operation", operation),
            ("outcome", outcome),
        ],
    )
}

#[test]
fn metrics_parse_and_move_with_creates_failures_deletes_and_adoptions() {
    let mut svc = Service::start_with(ServiceOptions {
        keep_objects: true,
        ..ServiceOptions::default()
    });
    let first = scrape(&svc);
    assert_eq!(
        first.get(&(
            "imageapi_attachments".to_string(),
            labels(&[("kind", "loopback")])
        )),
        Some(&0.0),
        "a kind with no object shows 0"
    );
    assert_eq!(
        value(&first, "imageapi_containers", &[("state", "running")]),
        0.0
    );

    let img = squashfs_image(svc.dir(), "metrics");
    let attach = svc.create("attach", &loopback(&img));
    let id = id_of(&attach);
    let created = scrape(&svc);
    assert_eq!(
        value(&created, "imageapi_attachments", &[("kind", "loopback")]),
        1.0
    );
    assert_eq!(operations(&created, "attach", "create", "ok"), 1.0);

    let missing = svc.dir().join("missing.squashfs");
    let resp = svc.post("/mount", &squashfs_mount(&missing));
    assert_nested_failure(&resp, "attach", Some("loopback"));
    let failed = scrape(&svc);
    assert_eq!(
        value(
            &failed,
            "imageapi_failures_total",
            &[("object", "attach"), ("stage", "loopback")]
        ),
        1.0
    );
    assert_eq!(operations(&failed, "mount", "create", "error"), 1.0);
    assert_eq!(
        value(&failed, "imageapi_mounts", &[("kind", "attach")]),
        0.0,
        "the failed create left no mount"
    );

    // Left in place by a stop, taken up again by the next start.
    svc.restart(true);
    let adopted = scrape(&svc);
    assert_eq!(
        value(&adopted, "imageapi_adopted_total", &[("object", "attach")]),
        1.0
    );
    assert_eq!(
        value(&adopted, "imageapi_attachments", &[("kind", "loopback")]),
        1.0
    );

    svc.remove("attach", id);
    let deleted = scrape(&svc);
    assert_eq!(operations(&deleted, "attach", "delete", "ok"), 1.0);
    assert_eq!(
        value(&deleted, "imageapi_attachments", &[("kind", "loopback")]),
        0.0
    );
    svc.assert_empty();
    svc.stop_ok();
    assert_no_leaks(svc.dir());
}

#[test]
fn health_and_readiness_answer_outside_the_base_path() {
    let mut svc = Service::start();
    let alive = svc.raw("GET", "/healthz", None, None);
    assert_eq!(alive.status, 200, "{alive}");
    let ready = svc.raw("GET", "/readyz", None, None);
    assert_eq!(ready.status, 200, "{ready}");
    assert_eq!(ready.json()["status"], "ready");
    assert_error(&svc.raw("POST", "/readyz", None, None), 405);
    assert_error(&svc.raw("GET", "/imageapi/v1/healthz", None, None), 404);
    svc.stop_ok();
}

#[test]
fn json_logs_are_one_object_a_line_with_the_object_id() {
    let mut svc = Service::start_with(ServiceOptions {
        extra_args: vec!["--log-format".into(), "json".into()],
        ..ServiceOptions::default()
    });
    let img = squashfs_image(svc.dir(), "logs");
    let id = id_of(&svc.create("attach", &loopback(&img)));
    svc.remove("attach", id);
    svc.stop_ok();

    let log = svc.stderr_log();
    let mut object_lines = 0;
    for line in log.lines().filter(|line| !line.is_empty()) {
        let entry: Value = serde_json::from_str(line)
            .unwrap_or_else(|err| panic!("log line is not JSON ({err}): {line:?}"));
        assert!(entry.is_object(), "{line:?}");
        assert!(entry["level"].is_string(), "no level in {line:?}");
        assert!(
            entry["fields"]["message"].is_string(),
            "no message in {line:?}"
        );
        if entry["fields"]["id"].as_i64() == Some(id) {
            object_lines += 1;
        }
    }
    assert!(
        object_lines > 0,
        "no log line carries id {id} as a field:\n{log}"
    );
    assert_no_leaks(svc.dir());
}

#[test]
fn container_states_and_start_stop_times_show_in_the_metrics() {
    let mut svc = Service::start();
    let mount = overlay(vec![squashfs_mount(&busybox_image(&svc, "metrics"))]);
    svc.create(
        "container",
        &serde_json::json!({
            "name": "sleeper",
            "command": "/bin/busybox sleep 1000",
            "mount": mount,
            "state": "created",
        }),
    );
    assert_eq!(
        value(
            &scrape(&svc),
            "imageapi_containers",
            &[("state", "created")]
        ),
        1.0
    );
    let started = svc.request("PATCH", "/container?name=sleeper&state=running", None);
    assert_eq!(started.status, 200, "{started}");
    let running = scrape(&svc);
    assert_eq!(
        value(&running, "imageapi_containers", &[("state", "running")]),
        1.0
    );
    assert_eq!(operations(&running, "container", "start", "ok"), 1.0);
    let stopped = svc.request("PATCH", "/container?name=sleeper&state=exited", None);
    assert_eq!(stopped.status, 200, "{stopped}");
    let exited = wait_for(std::time::Duration::from_secs(10), || {
        value(&scrape(&svc), "imageapi_containers", &[("state", "exited")]) == 1.0
    });
    assert!(exited, "the container never counted as exited");
    assert_eq!(operations(&scrape(&svc), "container", "stop", "ok"), 1.0);
    let deleted = svc.delete("/container?name=sleeper");
    assert_eq!(deleted.status, 200, "{deleted}");
    let after = scrape(&svc);
    assert_eq!(operations(&after, "container", "delete", "ok"), 1.0);
    assert_eq!(
        value(&after, "imageapi_mounts", &[("kind", "overlay")]),
        0.0
    );
    svc.assert_empty();
    svc.stop_ok();
    assert_no_leaks(svc.dir());
}

/// The service executes itself again at start with its allocator's tunables (see
/// `actors::sys::malloc::TUNABLES`), under the pid it was started with; an operator's own
/// `GLIBC_TUNABLES` stands.
#[test]
fn the_service_runs_with_its_allocator_tunables_unless_told_otherwise() {
    let environ = |svc: &Service| {
        std::fs::read(format!("/proc/{}/environ", svc.pid()))
            .expect("read the service's environment")
            .split(|b| *b == 0)
            .map(|var| String::from_utf8_lossy(var).into_owned())
            .filter(|var| var.starts_with("GLIBC_TUNABLES="))
            .collect::<Vec<_>>()
    };
    let svc = Service::start();
    // glibc (2.36) parses the variable in place: the environment shows its first tunable.
    let found = environ(&svc);
    let ours = format!("GLIBC_TUNABLES={}", actors::sys::malloc::TUNABLES);
    assert!(
        found.len() == 1 && found[0].contains("glibc.malloc") && ours.starts_with(&found[0]),
        "{found:?}"
    );
    let args = std::fs::read(format!("/proc/{}/cmdline", svc.pid())).unwrap();
    assert!(
        String::from_utf8_lossy(&args).contains("--socket-path"),
        "the arguments are kept"
    );
    drop(svc);

    // Started by hand, as an operator who set tunables of their own would.
    let own = "glibc.malloc.arena_max=2";
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("api.sock");
    let mut process = ServerProcess::spawn(
        std::process::Command::new(SERVER)
            .args(private_dirs_args(
                &socket,
                &dir.path().join("mounts"),
                &dir.path().join("logs"),
                &dir.path().join("state"),
            ))
            .env("GLIBC_TUNABLES", own)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
    )
    .expect("start imageapi-server");
    let ready = process.wait_ready(
        &socket,
        std::time::Duration::from_secs(30),
        std::time::Duration::from_millis(50),
        || Ok(()),
    );
    let found = std::fs::read(format!("/proc/{}/environ", process.pid())).unwrap_or_default();
    let stopped = process.terminate(std::time::Duration::from_secs(15));
    assert!(ready.is_ok(), "the service did not start");
    assert!(
        stopped.as_ref().is_ok_and(|status| status.success()),
        "{stopped:?}"
    );
    let found: Vec<String> = found
        .split(|b| *b == 0)
        .map(|var| String::from_utf8_lossy(var).into_owned())
        .filter(|var| var.starts_with("GLIBC_TUNABLES="))
        .collect();
    assert_eq!(found, [format!("GLIBC_TUNABLES={own}")]);
}
