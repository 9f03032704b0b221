//! Property tests over the request models and their validation: arbitrary JSON built from the
//! contract's own vocabulary never panics deserialization or validation, a refusal always names
//! a field, valid definitions survive a round trip, one broken field is named as such, and a
//! secret never shows in a serialization, a `Debug` rendering or an error.

use actors::driver::Kinds;
use actors::model::spec::{attach_child, check_name, container_def, mount_child, Child};
use actors::model::wire::{Attach, Container, Mount, Secret};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

/// Keys of the contract's objects, so that generated JSON often looks like a real request.
const KEYS: &[&str] = &[
    "id",
    "kind",
    "local",
    "loopback",
    "rbd",
    "iscsi",
    "path",
    "base",
    "mount",
    "attach",
    "readPartitions",
    "fs_type",
    "mount_options",
    "bind",
    "recursive",
    "ro",
    "nfs",
    "host",
    "version",
    "options",
    "overlay",
    "lower",
    "uri",
    "name",
    "command",
    "state",
    "systemd",
    "namespaces",
    "stop_signal",
    "stop_timeout",
    "monitors",
    "pool",
    "image",
    "snapshot",
    "secret",
    "ip",
    "initiator",
    "target",
    "lun",
    "port",
    "max_comands",
    "queue_depth",
    "mount_timeout",
    "refs",
    "device_file",
    "mountpoint",
    "logfile",
    "exit_code",
];

/// Words the contract gives a meaning to, and strings that test its edges.
const WORDS: &[&str] = &[
    "local",
    "loopback",
    "rbd",
    "iscsi",
    "attach",
    "bind",
    "nfs",
    "overlay",
    "uri",
    "root",
    "mount",
    "created",
    "running",
    "exited",
    "paused",
    "stopping",
    "dead",
    "mnt",
    "pid",
    "uts",
    "ipc",
    "net",
    "user",
    "cgroup",
    "time",
    "squashfs",
    "ext4",
    "ro",
    "SIGTERM",
    "SIGRTMIN+3",
    "10.0.0.1",
    "256.1.1.1",
    "iqn.2024-01.org.example:x",
    "/",
    "..",
    "../..",
    "/dev/null",
    "a/../../b",
    "",
    " ",
    "\u{0}",
    "é",
    "/bin/sh -c 'x",
    "http://example.org/x.tar",
    "4.2",
];

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        (-3i64..70000).prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        proptest::sample::select(WORDS).prop_map(|w| json!(w)),
        ".{0,40}".prop_map(Value::String),
    ]
}

fn contract_json() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(6, 96, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            proptest::collection::vec(
                (
                    prop_oneof![
                        4 => proptest::sample::select(KEYS).prop_map(str::to_string),
                        1 => "[a-z_]{1,12}",
                    ],
                    inner,
                ),
                0..6,
            )
            .prop_map(|fields| Value::Object(fields.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// A refusal must say which field and why, with a dotted path of plain names and indices.
fn assert_well_named(field: &str, reason: &str) -> Result<(), TestCaseError> {
    prop_assert!(!field.is_empty(), "an error names no field ({reason})");
    prop_assert!(!reason.is_empty(), "an error about {field} gives no reason");
    prop_assert!(
        field
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._[]".contains(c)),
        "odd field path {field:?}"
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_json_never_panics_and_refusals_name_a_field(value in contract_json()) {
        if let Ok(attach) = serde_json::from_value::<Attach>(value.clone()) {
            if let Err(invalid) = attach_child(&Kinds::standard(&Default::default()), "", &attach) {
                assert_well_named(&invalid.field, &invalid.reason)?;
            }
            // What deserializes serializes and deserializes to the same thing.
            let again: Attach = serde_json::from_value(serde_json::to_value(&attach).unwrap()).unwrap();
            let secretless = |a: &Attach| {
                let mut a = a.clone();
                if let Some(options) = a.rbd.as_mut().and_then(|r| r.options.as_mut()) {
                    options.secret = None;
                }
                a
            };
            prop_assert_eq!(secretless(&again), secretless(&attach));
        }
        if let Ok(mount) = serde_json::from_value::<Mount>(value.clone()) {
            if let Err(invalid) = mount_child(&Kinds::standard(&Default::default()), "", &mount) {
                assert_well_named(&invalid.field, &invalid.reason)?;
            }
        }
        if let Ok(container) = serde_json::from_value::<Container>(value) {
            if let Err(invalid) = container_def(&Kinds::standard(&Default::default()), &container) {
                assert_well_named(&invalid.field, &invalid.reason)?;
            }
        }
    }

    #[test]
    fn contract_shaped_requests_never_panic(
        kind in proptest::sample::select(&["local", "loopback", "rbd", "iscsi"][..]),
        sub in contract_json(),
        mount_kind in proptest::sample::select(&["attach", "bind", "nfs", "overlay", "uri"][..]),
        mount_sub in contract_json(),
        command in proptest::option::of(".{0,30}"),
        name in proptest::option::of(".{0,20}"),
    ) {
        let attach = json!({ "kind": kind, kind: sub });
        let mount = json!({ "kind": mount_kind, mount_kind: mount_sub });
        let container = json!({ "name": name, "command": command, "mount": mount });
        if let Ok(attach) = serde_json::from_value::<Attach>(attach) {
            if let Err(invalid) = attach_child(&Kinds::standard(&Default::default()), "", &attach) {
                assert_well_named(&invalid.field, &invalid.reason)?;
            }
        }
        if let Ok(mount) = serde_json::from_value::<Mount>(mount) {
            if let Err(invalid) = mount_child(&Kinds::standard(&Default::default()), "", &mount) {
                assert_well_named(&invalid.field, &invalid.reason)?;
            }
        }
        if let Ok(container) = serde_json::from_value::<Container>(container) {
            if let Err(invalid) = container_def(&Kinds::standard(&Default::default()), &container) {
                assert_well_named(&invalid.field, &invalid.reason)?;
            }
        }
    }

    #[test]
    fn valid_nested_definitions_pass_and_round_trip(
        depth in 0usize..6,
        read_only in any::<bool>(),
        name in "[A-Za-z0-9._-]{0,40}",
        argv in proptest::collection::vec("[a-z0-9/_.-]{1,12}", 1..5),
        running in any::<bool>(),
        // Distinct: the same lower twice is refused, as overlayfs would.
        lower_ids in proptest::collection::btree_set(1i64..1000, 1..5),
    ) {
        let mut mount = json!({ "kind": "attach", "attach": { "fs_type": "squashfs",
            "mount_options": ["ro"],
            "attach": { "kind": "loopback", "loopback": { "path": "/images/a.squashfs", "base": "root" } } } });
        for level in 0..depth {
            mount = if level % 2 == 0 {
                json!({ "kind": "bind", "bind": { "path": "dir", "base": "mount", "mount": mount, "ro": read_only } })
            } else {
                let mut lower: Vec<Value> = lower_ids.iter().map(|id| json!({ "id": id })).collect();
                lower.insert(0, mount);
                json!({ "kind": "overlay", "overlay": { "lower": lower } })
            };
        }
        let command = argv.join(" ");
        let container = json!({ "name": name, "command": command, "mount": mount,
                                "state": if running { "running" } else { "created" } });
        let parsed: Container = serde_json::from_value(container).unwrap();
        let def = container_def(&Kinds::standard(&Default::default()), &parsed).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&def.argv, &argv);
        prop_assert_eq!(def.start, running);
        prop_assert!(matches!(def.mount, Child::New(_)));
        let again: Container = serde_json::from_value(serde_json::to_value(&parsed).unwrap()).unwrap();
        prop_assert_eq!(&again, &parsed);
        prop_assert_eq!(container_def(&Kinds::standard(&Default::default()), &again).unwrap(), def);
    }

    #[test]
    fn one_broken_field_is_the_one_named(case in 0usize..12, noise in "[a-z]{1,8}") {
        let mut container = json!({ "name": "node-1", "command": "/sbin/init", "systemd": true,
            "mount": { "kind": "overlay", "overlay": { "lower": [
                { "kind": "attach", "attach": { "fs_type": "squashfs", "attach": { "kind": "rbd",
                  "rbd": { "monitors": ["10.0.0.1", "10.0.0.2"], "pool": "rbd", "image": "img",
                           "options": { "name": "admin", "secret": "c2VjcmV0" } } } } } ] } } });
        let rbd = |rest: &str| format!("/mount/overlay/lower/0/attach/attach/rbd/{rest}");
        let named = "mount.overlay.lower[0].attach.attach.rbd";
        let (pointer, bad, field): (String, Value, String) = match case {
            0 => ("/name".into(), json!(format!("{noise} {noise}")), "name".into()),
            1 => ("/command".into(), json!(""), "command".into()),
            2 => ("/state".into(), json!("stopping"), "state".into()),
            3 => ("/stop_timeout".into(), json!(-1), "stop_timeout".into()),
            4 => ("/stop_signal".into(), json!(format!("SIG{noise}X")), "stop_signal".into()),
            5 => ("/mount/overlay/lower".into(), json!([]), "mount.overlay.lower".into()),
            6 => (
                "/mount/overlay/lower/0/attach/fs_type".into(),
                json!(format!("{noise}/{noise}")),
                "mount.overlay.lower[0].attach.fs_type".into(),
            ),
            7 => (rbd("monitors/1"), json!(format!("10.0.{noise}.1")), format!("{named}.monitors[1]")),
            8 => (rbd("pool"), json!(""), format!("{named}.pool")),
            9 => (rbd("options/ip"), json!(noise), format!("{named}.options.ip")),
            10 => (rbd("options/queue_depth"), json!(-5), format!("{named}.options.queue_depth")),
            _ => (rbd("options/name"), Value::Null, format!("{named}.options.name")),
        };
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        match container.pointer_mut(parent).unwrap() {
            Value::Object(fields) => {
                fields.insert(key.to_string(), bad);
            }
            Value::Array(items) => items[key.parse::<usize>().unwrap()] = bad,
            other => panic!("{pointer} is under {other}"),
        }
        let parsed: Container = serde_json::from_value(container).unwrap();
        let invalid = container_def(&Kinds::standard(&Default::default()), &parsed).unwrap_err();
        prop_assert_eq!(invalid.field, field);
    }

    #[test]
    fn a_secret_never_shows(secret in "[A-Za-z+/]{12,40}={0,2}", monitor in "[0-9.]{1,15}") {
        let attach: Attach = serde_json::from_value(json!({ "kind": "rbd", "rbd": {
            "monitors": [monitor], "pool": "rbd", "image": "img",
            "options": { "name": "admin", "secret": secret } } })).unwrap();
        let shown = [
            serde_json::to_string(&attach).unwrap(),
            format!("{attach:?}"),
            format!("{:?}", attach_child(&Kinds::standard(&Default::default()), "mount.attach", &attach)),
        ];
        for text in shown {
            prop_assert!(!text.contains(&secret), "{}", text);
        }
        let options = attach.rbd.unwrap().options.unwrap();
        prop_assert_eq!(options.secret.as_ref().map(Secret::expose), Some(secret.as_str()));
        let serialized = serde_json::to_value(&options).unwrap();
        prop_assert_eq!(serialized["secret"].as_str(), Some(Secret::REDACTED));
    }

    #[test]
    fn names_follow_the_contract_pattern(name in "\\PC{0,300}") {
        let allowed = name.len() <= 253
            && name.chars().all(|c| c.is_ascii_alphanumeric() || ".-_".contains(c));
        prop_assert_eq!(check_name("name", &name).is_ok(), allowed);
    }

    #[test]
    fn monitors_are_dotted_quad_ipv4(octets in proptest::collection::vec((0u32..400, 0usize..3), 4)) {
        let text: Vec<String> = octets
            .iter()
            .map(|(n, zeros)| format!("{}{n}", "0".repeat(*zeros)))
            .collect();
        let monitor = text.join(".");
        let valid = octets.iter().all(|(n, zeros)| *n <= 255 && *zeros == 0);
        let attach: Attach = serde_json::from_value(json!({ "kind": "rbd", "rbd": {
            "monitors": [monitor], "pool": "p", "image": "i",
            "options": { "name": "admin", "secret": "s" } } })).unwrap();
        let result = attach_child(&Kinds::standard(&Default::default()), "", &attach);
        prop_assert_eq!(result.is_ok(), valid, "{} gave {:?}", monitor, result);
    }
}
