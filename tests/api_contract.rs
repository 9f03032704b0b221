//! Keeps the hand-written `swagger.yaml` honest against the Rust wire model.
//!
//! No service is started: the spec is parsed and compared with what `actors::model::wire`
//! serializes and accepts. Every definition is paired with its Rust type; a fully populated
//! instance must serialize exactly the definition's property names and validate against the
//! definitions, `required` and `default` must match what deserialization demands and fills in,
//! and every enum must list exactly the Rust enum's serde names. The paths and methods are
//! diffed against a table, so the HTTP layer's route test can compare itself with the spec.

use std::collections::BTreeSet;

use actors::model::wire::{
    Attach, AttachIscsi, AttachKind, AttachLocal, AttachLoopback, AttachRbd, Base, Container,
    ContainerState, IscsiChap, Mount, MountAttach, MountBind, MountKind, MountNfs, MountOverlay,
    MountUri, Namespace, RbdOptions, Secret, UriFormat,
};
use imageapi::api::error::ApiError;
use imageapi::api::{ROOT_ROUTES, ROUTES};
use serde::{de::DeserializeOwned, Serialize};
use serde_json::{json, Map, Value};

const SPEC_YAML: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/swagger.yaml"));

const NAME_PATTERN: &str = r"^[A-Za-z0-9.\-_]*$";

fn spec() -> Value {
    serde_norway::from_str(SPEC_YAML).expect("swagger.yaml is valid YAML")
}

fn definitions(spec: &Value) -> &Map<String, Value> {
    spec["definitions"]
        .as_object()
        .expect("swagger.yaml has a definitions object")
}

fn definition<'a>(spec: &'a Value, name: &str) -> &'a Value {
    definitions(spec)
        .get(name)
        .unwrap_or_else(|| panic!("definition `{name}` is missing from swagger.yaml"))
}

fn property_names(def: &Value) -> BTreeSet<String> {
    def["properties"]
        .as_object()
        .map(|props| props.keys().cloned().collect())
        .unwrap_or_default()
}

fn string_set(value: &Value) -> BTreeSet<String> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("expected an array of strings, got {value}"))
        .iter()
        .map(|v| {
            v.as_str()
                .unwrap_or_else(|| panic!("expected a string, got {v}"))
                .to_string()
        })
        .collect()
}

fn keys(value: &Value) -> BTreeSet<String> {
    value
        .as_object()
        .unwrap_or_else(|| panic!("expected a JSON object, got {value}"))
        .keys()
        .cloned()
        .collect()
}

/// Panics with both differences when two name sets are not equal.
fn assert_same_names(
    what: &str,
    left_name: &str,
    left: &BTreeSet<String>,
    right_name: &str,
    right: &BTreeSet<String>,
) {
    let only_left: Vec<_> = left.difference(right).collect();
    let only_right: Vec<_> = right.difference(left).collect();
    assert!(
        only_left.is_empty() && only_right.is_empty(),
        "{what}: only in {left_name}: {only_left:?}; only in {right_name}: {only_right:?}"
    );
}

fn to_json<T: Serialize>(value: &T) -> Value {
    serde_json::to_value(value).expect("wire types serialize")
}

/// Deserializes `value` as `T` and serializes it again.
fn roundtrip<T: Serialize + DeserializeOwned>(value: Value) -> Result<Value, String> {
    let parsed: T = serde_json::from_value(value).map_err(|e| e.to_string())?;
    Ok(to_json(&parsed))
}

fn serde_names<T: Serialize>(variants: &[T]) -> BTreeSet<String> {
    variants
        .iter()
        .map(|v| {
            to_json(v)
                .as_str()
                .expect("unit variants serialize as strings")
                .to_string()
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Every variant of the wire enums. The `match`es make the compiler flag a new variant here.

fn all_attach_kinds() -> Vec<AttachKind> {
    let all = vec![
        AttachKind::Iscsi,
        AttachKind::Local,
        AttachKind::Loopback,
        AttachKind::Rbd,
    ];
    for kind in &all {
        match kind {
            AttachKind::Iscsi | AttachKind::Local | AttachKind::Loopback | AttachKind::Rbd => {}
        }
        assert_eq!(to_json(kind), json!(kind.as_str()));
    }
    all
}

fn all_mount_kinds() -> Vec<MountKind> {
    let all = vec![
        MountKind::Attach,
        MountKind::Bind,
        MountKind::Nfs,
        MountKind::Overlay,
        MountKind::Uri,
    ];
    for kind in &all {
        match kind {
            MountKind::Attach
            | MountKind::Bind
            | MountKind::Nfs
            | MountKind::Overlay
            | MountKind::Uri => {}
        }
        assert_eq!(to_json(kind), json!(kind.as_str()));
    }
    all
}

fn all_container_states() -> Vec<ContainerState> {
    let all = ContainerState::ALL.to_vec();
    // A new state fails to compile here: it must be added to ContainerState::ALL too.
    for state in &all {
        match state {
            ContainerState::Created
            | ContainerState::Running
            | ContainerState::Stopping
            | ContainerState::Exited
            | ContainerState::Dead
            | ContainerState::Paused => {}
        }
        assert_eq!(to_json(state), json!(state.as_str()));
    }
    all
}

fn all_namespaces() -> Vec<Namespace> {
    let all = vec![
        Namespace::Cgroup,
        Namespace::Ipc,
        Namespace::Net,
        Namespace::Mnt,
        Namespace::Pid,
        Namespace::Time,
        Namespace::User,
        Namespace::Uts,
    ];
    for ns in &all {
        match ns {
            Namespace::Cgroup
            | Namespace::Ipc
            | Namespace::Net
            | Namespace::Mnt
            | Namespace::Pid
            | Namespace::Time
            | Namespace::User
            | Namespace::Uts => {}
        }
    }
    all
}

fn all_bases() -> Vec<Base> {
    let all = vec![Base::Root, Base::Mount];
    for base in &all {
        match base {
            Base::Root | Base::Mount => {}
        }
    }
    all
}

fn all_uri_formats() -> Vec<UriFormat> {
    let all = vec![
        UriFormat::Auto,
        UriFormat::Squashfs,
        UriFormat::Erofs,
        UriFormat::Ext4,
        UriFormat::Tar,
        UriFormat::TarGz,
        UriFormat::TarZst,
        UriFormat::TarXz,
    ];
    for format in &all {
        match format {
            UriFormat::Auto
            | UriFormat::Squashfs
            | UriFormat::Erofs
            | UriFormat::Ext4
            | UriFormat::Tar
            | UriFormat::TarGz
            | UriFormat::TarZst
            | UriFormat::TarXz => {}
        }
    }
    all
}

// ---------------------------------------------------------------------------------------------
// Fully populated instances: every Option is Some, every Vec non-empty, every bool true.
// A nested object that has its own constructor is given as a reference `{"id": N}` where a full
// one would recurse forever; its own pair checks it in full.

fn mount_reference(id: i64) -> Mount {
    Mount {
        id: Some(id),
        ..Mount::default()
    }
}

fn full_attach_local() -> AttachLocal {
    AttachLocal {
        path: "/dev/sdb".into(),
    }
}

fn full_attach_loopback() -> AttachLoopback {
    AttachLoopback {
        path: "images/base.squashfs".into(),
        base: Base::Mount,
        mount: Some(Box::new(mount_reference(2))),
        read_partitions: true,
    }
}

fn full_rbd_options() -> RbdOptions {
    RbdOptions {
        fsid: Some("0f4bd6a0-2c54-4b1e-9d25-3a1f1b6a0c11".into()),
        ip: Some("10.0.0.9".into()),
        share: true,
        noshare: true,
        crc: true,
        nocrc: true,
        ceph_requires_signatures: true,
        noceph_requires_signatures: true,
        tcp_nodelay: true,
        notcp_nodelay: true,
        cephx_sign_messages: true,
        nocephx_sign_messages: true,
        mount_timeout: Some(60),
        osdkeepalive: Some(5),
        osd_idle_ttl: Some(60),
        force: true,
        rw: true,
        ro: true,
        queue_depth: Some(128),
        lock_on_read: true,
        exclusive: true,
        lock_timeout: Some(30),
        notrim: true,
        abort_on_full: true,
        alloc_size: Some(65536),
        name: Some("admin".into()),
        secret: Some(Secret::new("AQBvbW5pc2NpZW50LXNlY3JldC1rZXk=")),
        namespace: Some("images".into()),
    }
}

fn full_attach_rbd() -> AttachRbd {
    AttachRbd {
        device_id: Some(0),
        monitors: vec!["10.0.0.1".into(), "10.0.0.2".into()],
        pool: "rbd".into(),
        image: "compute-node".into(),
        snapshot: Some("v1".into()),
        options: Some(full_rbd_options()),
    }
}

fn full_attach_iscsi() -> AttachIscsi {
    AttachIscsi {
        initiator: "iqn.2004-10.com.example:node1".into(),
        target: "iqn.2004-10.com.example:images".into(),
        host: "10.0.0.3".into(),
        lun: 1,
        port: 3260,
        max_comands: 128,
        queue_depth: 16,
        scheduler: "none".into(),
        chap: Some(full_iscsi_chap()),
    }
}

fn full_iscsi_chap() -> IscsiChap {
    IscsiChap {
        username: "node1".into(),
        secret: Secret::new("chap-secret-of-node1"),
    }
}

fn full_attach() -> Attach {
    Attach {
        id: Some(1),
        refs: 1,
        device_file: Some("/dev/loop3".into()),
        kind: Some(AttachKind::Loopback),
        local: Some(full_attach_local()),
        loopback: Some(full_attach_loopback()),
        rbd: Some(full_attach_rbd()),
        iscsi: Some(full_attach_iscsi()),
    }
}

fn full_mount_attach() -> MountAttach {
    MountAttach {
        attach: full_attach(),
        fs_type: "squashfs".into(),
        mount_options: vec!["ro".into()],
    }
}

fn full_mount_bind() -> MountBind {
    MountBind {
        path: "srv".into(),
        base: Base::Mount,
        mount: Some(Box::new(mount_reference(3))),
        recursive: true,
        ro: true,
    }
}

fn full_mount_nfs() -> MountNfs {
    MountNfs {
        host: "10.0.0.4".into(),
        path: "/export/images".into(),
        ro: true,
        version: "4.1".into(),
        options: vec!["hard".into(), "timeo=600".into()],
    }
}

fn full_mount_overlay() -> MountOverlay {
    MountOverlay {
        lower: vec![mount_reference(4), mount_reference(5)],
        workdir: Some("/var/run/imageapi/overlay/6/work".into()),
        upperdir: Some("/var/run/imageapi/overlay/6/upper".into()),
    }
}

fn full_mount_uri() -> MountUri {
    MountUri {
        url: "https://images.example/node.tar.gz".into(),
        digest: Some(format!("sha256:{}", "0f".repeat(32))),
        format: Some(UriFormat::TarGz),
        size: Some(256 << 20),
        ro: true,
        devices: true,
    }
}

fn full_mount() -> Mount {
    Mount {
        id: Some(6),
        refs: 2,
        mountpoint: Some("/var/run/imageapi/mounts/6".into()),
        kind: Some(MountKind::Overlay),
        attach: Some(full_mount_attach()),
        bind: Some(full_mount_bind()),
        nfs: Some(full_mount_nfs()),
        overlay: Some(full_mount_overlay()),
        uri: Some(full_mount_uri()),
    }
}

fn full_container() -> Container {
    Container {
        id: Some(7),
        refs: 1,
        name: Some("compute-1.0_a".into()),
        mount: Some(full_mount()),
        command: Some("/usr/lib/systemd/systemd --system".into()),
        systemd: true,
        state: Some(ContainerState::Running),
        logfile: Some("/var/run/imageapi/logs/7.log".into()),
        namespaces: Some(all_namespaces()),
        stop_signal: Some("SIGRTMIN+3".into()),
        stop_timeout: Some(30),
        exit_code: Some(0),
    }
}

/// The error body with every field, including the extensions. The service's error type is
/// not written yet; once it is, serialize a fully populated one here instead.
fn full_error() -> Value {
    let mut error = ApiError::invalid_field("attach.loopback.path", "must not be empty")
        .body()
        .clone();
    error.object = Some("attach");
    error.stage = Some("loopback");
    error.reason = Some("ENOENT: No such file or directory".to_string());
    serde_json::to_value(error).unwrap()
}

// ---------------------------------------------------------------------------------------------

/// One definition and its Rust type.
struct Pair {
    definition: &'static str,
    /// A fully populated instance, serialized.
    full: Value,
    /// The smallest request body the type accepts: the required fields only.
    minimal: Value,
    /// Deserializes as the Rust type and serializes again.
    roundtrip: fn(Value) -> Result<Value, String>,
    /// Whether the Rust type itself refuses a body without a `required` field. `container`
    /// keeps `mount` and `command` optional in the type and checks them in the service.
    rust_enforces_required: bool,
}

fn pairs() -> Vec<Pair> {
    let reference = json!({"id": 1});
    vec![
        Pair {
            definition: "attach",
            full: to_json(&full_attach()),
            minimal: json!({}),
            roundtrip: roundtrip::<Attach>,
            rust_enforces_required: true,
        },
        Pair {
            definition: "attach_local",
            full: to_json(&full_attach_local()),
            minimal: json!({"path": "/dev/sdb"}),
            roundtrip: roundtrip::<AttachLocal>,
            rust_enforces_required: true,
        },
        Pair {
            definition: "attach_loopback",
            full: to_json(&full_attach_loopback()),
            minimal: json!({"path": "/srv/image.squashfs", "base": "root"}),
            roundtrip: roundtrip::<AttachLoopback>,
            rust_enforces_required: true,
        },
        Pair {
            definition: "attach_rbd",
            full: to_json(&full_attach_rbd()),
            minimal: json!({"monitors": ["10.0.0.1"], "pool": "rbd", "image": "node"}),
            roundtrip: roundtrip::<AttachRbd>,
            rust_enforces_required: true,
        },
        Pair {
            definition: "rbd_options",
            full: to_json(&full_rbd_options()),
            minimal: json!({}),
            roundtrip: roundtrip::<RbdOptions>,
            rust_enforces_required: true,
        },
        Pair {
            definition: "attach_iscsi",
            full: to_json(&full_attach_iscsi()),
            minimal: json!({
                "initiator": "iqn.2004-10.com.example:node1",
                "target": "iqn.2004-10.com.example:images",
                "host": "10.0.0.3",
            }),
            roundtrip: roundtrip::<AttachIscsi>,
            rust_enforces_required: true,
        },
        Pair {
            definition: "iscsi_chap",
            full: to_json(&full_iscsi_chap()),
            minimal: json!({"username": "node1", "secret": "chap-secret-of-node1"}),
            roundtrip: roundtrip::<IscsiChap>,
            rust_enforces_required: true,
        },
        Pair {
            definition: "mount",
            full: to_json(&full_mount()),
            minimal: json!({}),
            roundtrip: roundtrip::<Mount>,
            rust_enforces_required: true,
        },
        Pair {
            definition: "mount_attach",
            full: to_json(&full_mount_attach()),
            minimal: json!({"attach": reference, "fs_type": "ext4"}),
            roundtrip: roundtrip::<MountAttach>,
            rust_enforces_required: true,
        },
        Pair {
            definition: "mount_bind",
            full: to_json(&full_mount_bind()),
            minimal: json!({"path": "/srv", "base": "root"}),
            roundtrip: roundtrip::<MountBind>,
            rust_enforces_required: true,
        },
        Pair {
            definition: "mount_nfs",
            full: to_json(&full_mount_nfs()),
            minimal: json!({"host": "10.0.0.4", "path": "/export"}),
            roundtrip: roundtrip::<MountNfs>,
            rust_enforces_required: true,
        },
        Pair {
            definition: "mount_overlay",
            full: to_json(&full_mount_overlay()),
            minimal: json!({"lower": [reference]}),
            roundtrip: roundtrip::<MountOverlay>,
            rust_enforces_required: true,
        },
        Pair {
            definition: "mount_uri",
            full: to_json(&full_mount_uri()),
            minimal: json!({"url": "https://images.example/node.tar.gz"}),
            roundtrip: roundtrip::<MountUri>,
            rust_enforces_required: true,
        },
        Pair {
            definition: "container",
            full: to_json(&full_container()),
            minimal: json!({"mount": reference, "command": "/sbin/init"}),
            roundtrip: roundtrip::<Container>,
            rust_enforces_required: false,
        },
    ]
}

// ---------------------------------------------------------------------------------------------
// A small validator for the Swagger 2.0 schema subset the spec uses. Unknown properties are
// errors here, stricter than JSON Schema, so a field the model emits but the spec lacks shows.

fn resolve<'a>(spec: &'a Value, schema: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(reference) => {
            let name = reference
                .strip_prefix("#/definitions/")
                .unwrap_or_else(|| panic!("unexpected schema $ref {reference}"));
            definition(spec, name)
        }
        None => schema,
    }
}

fn validate(spec: &Value, schema: &Value, value: &Value, path: &str, errors: &mut Vec<String>) {
    let schema = resolve(spec, schema);
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
        if !allowed.contains(value) {
            errors.push(format!("{path}: {value} is not one of {allowed:?}"));
        }
    }
    let ty = schema.get("type").and_then(Value::as_str).unwrap_or("");
    match ty {
        "object" => {
            let Some(object) = value.as_object() else {
                errors.push(format!("{path}: expected an object, got {value}"));
                return;
            };
            let properties = schema["properties"]
                .as_object()
                .cloned()
                .unwrap_or_default();
            for (key, item) in object {
                match properties.get(key) {
                    Some(property) => {
                        validate(spec, property, item, &format!("{path}.{key}"), errors)
                    }
                    None => errors.push(format!("{path}: property `{key}` is not in the schema")),
                }
            }
            if let Some(required) = schema.get("required") {
                for name in string_set(required) {
                    if !object.contains_key(&name) {
                        errors.push(format!("{path}: required property `{name}` is missing"));
                    }
                }
            }
        }
        "array" => {
            let Some(items) = value.as_array() else {
                errors.push(format!("{path}: expected an array, got {value}"));
                return;
            };
            if let Some(min) = schema.get("minItems").and_then(Value::as_u64) {
                if (items.len() as u64) < min {
                    errors.push(format!("{path}: fewer than {min} items"));
                }
            }
            for (i, item) in items.iter().enumerate() {
                validate(
                    spec,
                    &schema["items"],
                    item,
                    &format!("{path}[{i}]"),
                    errors,
                );
            }
        }
        "string" => match value.as_str() {
            Some(s) => {
                if let Some(min) = schema.get("minLength").and_then(Value::as_u64) {
                    if (s.chars().count() as u64) < min {
                        errors.push(format!("{path}: shorter than {min}"));
                    }
                }
                if schema.get("format").and_then(Value::as_str) == Some("ipv4")
                    && s.parse::<std::net::Ipv4Addr>().is_err()
                {
                    errors.push(format!("{path}: {s:?} is not an IPv4 address"));
                }
            }
            None => errors.push(format!("{path}: expected a string, got {value}")),
        },
        "integer" => {
            if !value.is_i64() {
                errors.push(format!("{path}: expected an integer, got {value}"));
            }
        }
        "boolean" => {
            if !value.is_boolean() {
                errors.push(format!("{path}: expected a boolean, got {value}"));
            }
        }
        other => errors.push(format!("{path}: schema without a known type ({other:?})")),
    }
}

fn assert_valid(spec: &Value, definition_name: &str, value: &Value) {
    let mut errors = Vec::new();
    let schema = json!({"$ref": format!("#/definitions/{definition_name}")});
    validate(spec, &schema, value, definition_name, &mut errors);
    assert!(
        errors.is_empty(),
        "{definition_name} does not validate:\n  {}\nvalue: {value:#}",
        errors.join("\n  ")
    );
}

/// Every `$ref` anywhere in the document, with where it is.
fn collect_refs(value: &Value, at: &str, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            for (key, item) in map {
                if key == "$ref" {
                    if let Some(target) = item.as_str() {
                        out.push((at.to_string(), target.to_string()));
                    }
                } else {
                    collect_refs(item, &format!("{at}/{key}"), out);
                }
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                collect_refs(item, &format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

fn pointer_of_ref(target: &str) -> &str {
    target
        .strip_prefix('#')
        .unwrap_or_else(|| panic!("only local $refs are used, found {target}"))
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn spec_is_swagger_2_with_the_contract_header() {
    let spec = spec();
    assert_eq!(spec["swagger"], json!("2.0"));
    assert_eq!(spec["info"]["title"], json!("ImageAPI"));
    assert_eq!(spec["info"]["version"], json!("0.2.0"));
    assert_eq!(spec["basePath"], json!("/imageapi/v1"));
    assert_eq!(
        string_set(&spec["consumes"]),
        BTreeSet::from(["application/json".to_string()])
    );
    assert_eq!(
        string_set(&spec["produces"]),
        BTreeSet::from(["application/json".to_string()])
    );
    assert_eq!(
        string_set(&spec["schemes"]),
        BTreeSet::from(["http".to_string(), "https".to_string()])
    );
}

#[test]
fn every_ref_resolves() {
    let spec = spec();
    let mut refs = Vec::new();
    collect_refs(&spec, "", &mut refs);
    assert!(!refs.is_empty());
    for (at, target) in refs {
        assert!(
            spec.pointer(pointer_of_ref(&target)).is_some(),
            "{at}: $ref {target} does not resolve"
        );
    }
}

#[test]
fn definitions_are_exactly_the_contract_names() {
    let spec = spec();
    let expected: BTreeSet<String> = pairs()
        .iter()
        .map(|pair| pair.definition.to_string())
        .chain(["error".to_string()])
        .collect();
    let actual: BTreeSet<String> = definitions(&spec).keys().cloned().collect();
    assert_same_names(
        "definitions",
        "swagger.yaml",
        &actual,
        "the test's pairs",
        &expected,
    );
    for (name, def) in definitions(&spec) {
        assert_eq!(
            def["type"],
            json!("object"),
            "definition {name} is not an object"
        );
        for required in def.get("required").map(string_set).unwrap_or_default() {
            assert!(
                property_names(def).contains(&required),
                "definition {name}: required `{required}` is not a property"
            );
        }
    }
}

#[test]
fn properties_equal_the_serialized_fields_of_the_rust_types() {
    let spec = spec();
    for pair in pairs() {
        let def = definition(&spec, pair.definition);
        assert_same_names(
            &format!("definition `{}`", pair.definition),
            "swagger.yaml",
            &property_names(def),
            "the serialized Rust type",
            &keys(&pair.full),
        );
        assert_valid(&spec, pair.definition, &pair.full);
    }
}

#[test]
fn error_definition_has_the_extension_fields() {
    let spec = spec();
    let def = definition(&spec, "error");
    let expected: BTreeSet<String> = ["code", "message", "object", "stage", "reason", "field"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_same_names(
        "definition `error`",
        "swagger.yaml",
        &property_names(def),
        "expected",
        &expected,
    );
    assert_eq!(keys(&full_error()), expected);
    assert_eq!(
        string_set(&def["required"]),
        BTreeSet::from(["code".to_string(), "message".to_string()])
    );
    assert_eq!(def["properties"]["code"]["type"], json!("integer"));
    assert_eq!(def["properties"]["code"]["format"], json!("int64"));
    assert_eq!(
        string_set(&def["properties"]["object"]["enum"]),
        BTreeSet::from(["attach", "mount", "container"].map(String::from))
    );
    assert_valid(&spec, "error", &full_error());
    // The body the reference (and every client) knows: code and message only.
    assert_valid(
        &spec,
        "error",
        &json!({"code": 404, "message": "not found"}),
    );
}

#[test]
fn required_lists_match_what_deserialization_demands() {
    let spec = spec();
    for pair in pairs() {
        let def = definition(&spec, pair.definition);
        let required = def.get("required").map(string_set).unwrap_or_default();
        assert_same_names(
            &format!("required of `{}`", pair.definition),
            "swagger.yaml",
            &required,
            "the minimal body of the test",
            &keys(&pair.minimal),
        );
        assert_valid(&spec, pair.definition, &pair.minimal);
        // The required fields alone are enough: everything else is optional in Rust too.
        let parsed = (pair.roundtrip)(pair.minimal.clone()).unwrap_or_else(|e| {
            panic!(
                "{}: the required fields alone do not deserialize: {e}",
                pair.definition
            )
        });
        assert_valid(&spec, pair.definition, &parsed);
        if pair.rust_enforces_required {
            for name in &required {
                let mut body = pair.minimal.clone();
                body.as_object_mut().unwrap().remove(name);
                assert!(
                    (pair.roundtrip)(body).is_err(),
                    "{}: the Rust type accepts a body without required `{name}`",
                    pair.definition
                );
            }
        }
        // A fully populated instance survives deserialization unchanged (a secret reads
        // back as the redaction marker, which serializes the same).
        assert_eq!(
            (pair.roundtrip)(pair.full.clone()).unwrap(),
            pair.full,
            "{}: a full instance does not round-trip",
            pair.definition
        );
    }
}

#[test]
fn defaults_match_what_deserialization_fills_in() {
    let spec = spec();
    // Defaults the service applies itself rather than the wire type.
    let applied_by_service = [("container", "state")];
    let mut checked = 0;
    for pair in pairs() {
        let def = definition(&spec, pair.definition);
        let parsed = (pair.roundtrip)(pair.minimal.clone()).unwrap();
        for (name, property) in def["properties"].as_object().unwrap() {
            let Some(default) = property.get("default") else {
                continue;
            };
            checked += 1;
            match parsed.get(name) {
                Some(actual) => assert_eq!(
                    actual, default,
                    "{}.{name}: swagger.yaml says default {default}, the Rust type fills in {actual}",
                    pair.definition
                ),
                None if applied_by_service.contains(&(pair.definition, name.as_str())) => {}
                None => assert_eq!(
                    default,
                    &json!(false),
                    "{}.{name}: default {default} in swagger.yaml, but the Rust type leaves it out",
                    pair.definition
                ),
            }
        }
    }
    assert!(checked >= 20, "only {checked} defaults were checked");
    let iscsi = &definition(&spec, "attach_iscsi")["properties"];
    assert_eq!(iscsi["lun"]["default"], json!(0));
    assert_eq!(iscsi["port"]["default"], json!(3260));
    assert_eq!(iscsi["max_comands"]["default"], json!(128));
    assert_eq!(iscsi["queue_depth"]["default"], json!(16));
    assert_eq!(iscsi["scheduler"]["default"], json!("mq-deadline"));
    assert_eq!(
        definition(&spec, "mount_nfs")["properties"]["version"]["default"],
        json!("4.2")
    );
}

#[test]
fn read_only_properties_are_the_service_assigned_ones() {
    let spec = spec();
    let mut actual = BTreeSet::new();
    for (name, def) in definitions(&spec) {
        for (property, schema) in def["properties"].as_object().unwrap() {
            if schema.get("readOnly") == Some(&json!(true)) {
                actual.insert(format!("{name}.{property}"));
            }
        }
    }
    let expected: BTreeSet<String> = [
        "attach.id",
        "attach.refs",
        "attach.device_file",
        "attach_rbd.device_id",
        "mount.id",
        "mount.refs",
        "mount.mountpoint",
        "mount_overlay.workdir",
        "mount_overlay.upperdir",
        "container.id",
        "container.refs",
        "container.logfile",
        "container.exit_code",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_same_names(
        "readOnly properties",
        "swagger.yaml",
        &actual,
        "expected",
        &expected,
    );
}

#[test]
fn enums_equal_the_rust_enums() {
    let spec = spec();
    let defs = definitions(&spec);
    let prop = |def: &str, name: &str| defs[def]["properties"][name].clone();
    let query = |path: &str, method: &str, name: &str| -> Value {
        spec["paths"][path][method]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == json!(name))
            .unwrap_or_else(|| panic!("{method} {path} has no parameter {name}"))
            .clone()
    };
    let attach_kinds = serde_names(&all_attach_kinds());
    let mount_kinds = serde_names(&all_mount_kinds());
    let states = serde_names(&all_container_states());
    let cases: Vec<(&str, Value, BTreeSet<String>)> = vec![
        (
            "mount_uri.format",
            prop("mount_uri", "format")["enum"].clone(),
            serde_names(&all_uri_formats()),
        ),
        (
            "attach.kind",
            prop("attach", "kind")["enum"].clone(),
            attach_kinds.clone(),
        ),
        (
            "GET /attach kind",
            query("/attach", "get", "kind")["enum"].clone(),
            attach_kinds.clone(),
        ),
        (
            "mount.kind",
            prop("mount", "kind")["enum"].clone(),
            mount_kinds.clone(),
        ),
        (
            "GET /mount kind",
            query("/mount", "get", "kind")["enum"].clone(),
            mount_kinds.clone(),
        ),
        (
            "container.state",
            prop("container", "state")["enum"].clone(),
            states.clone(),
        ),
        (
            "GET /container state",
            query("/container", "get", "state")["enum"].clone(),
            states.clone(),
        ),
        (
            "container.namespaces",
            prop("container", "namespaces")["items"]["enum"].clone(),
            serde_names(&all_namespaces()),
        ),
        (
            "attach_loopback.base",
            prop("attach_loopback", "base")["enum"].clone(),
            serde_names(&all_bases()),
        ),
        (
            "mount_bind.base",
            prop("mount_bind", "base")["enum"].clone(),
            serde_names(&all_bases()),
        ),
        (
            "PATCH /container state",
            query("/container", "patch", "state")["enum"].clone(),
            serde_names(&[
                ContainerState::Running,
                ContainerState::Exited,
                ContainerState::Paused,
            ]),
        ),
    ];
    for (what, spec_enum, rust) in cases {
        assert_same_names(
            what,
            "swagger.yaml",
            &string_set(&spec_enum),
            "the Rust enum",
            &rust,
        );
    }
    // Each kind selects the sub-object of the same name.
    for kind in &attach_kinds {
        assert_eq!(
            prop("attach", kind)["$ref"],
            json!(format!("#/definitions/attach_{kind}")),
            "attach.{kind}"
        );
    }
    for kind in &mount_kinds {
        assert_eq!(
            prop("mount", kind)["$ref"],
            json!(format!("#/definitions/mount_{kind}")),
            "mount.{kind}"
        );
    }
}

#[test]
fn kind_is_optional_because_references_carry_none() {
    let spec = spec();
    for name in ["attach", "mount"] {
        let def = definition(&spec, name);
        assert!(
            def.get("required").is_none(),
            "{name} must not require anything"
        );
        assert_valid(&spec, name, &json!({"id": 3}));
    }
    let attach: Attach = serde_json::from_value(json!({"id": 3})).unwrap();
    assert_eq!(attach.id, Some(3));
    assert_eq!(attach.kind, None);
}

#[test]
fn rbd_secret_is_redacted_when_serialized() {
    let spec = spec();
    let real = "AQBvbW5pc2NpZW50LXNlY3JldC1rZXk=";
    let options: RbdOptions =
        serde_json::from_value(json!({"name": "admin", "secret": real})).unwrap();
    assert_eq!(options.secret.as_ref().map(Secret::expose), Some(real));
    let shown = to_json(&options);
    assert_eq!(shown["secret"], json!(Secret::REDACTED));
    assert_eq!(shown["secret"], json!("<redacted>"));
    assert!(!shown.to_string().contains(real));
    assert!(!format!("{options:?}").contains(real));
    let description = definition(&spec, "rbd_options")["properties"]["secret"]["description"]
        .as_str()
        .unwrap_or_default();
    assert!(
        description.contains("<redacted>"),
        "rbd_options.secret should say that answers show <redacted>"
    );
}

#[test]
fn name_pattern_allows_digits() {
    let spec = spec();
    assert_eq!(
        definition(&spec, "container")["properties"]["name"]["pattern"],
        json!(NAME_PATTERN)
    );
    for (path, method) in [
        ("/container", "get"),
        ("/container", "delete"),
        ("/container", "patch"),
    ] {
        let name = spec["paths"][path][method]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == json!("name"))
            .unwrap_or_else(|| panic!("{method} {path} has no name parameter"));
        assert_eq!(name["pattern"], json!(NAME_PATTERN), "{method} {path} name");
    }
}

#[test]
fn formats_of_ids_and_addresses() {
    let spec = spec();
    for (name, def) in definitions(&spec) {
        for (property, schema) in def["properties"].as_object().unwrap() {
            if property == "id" || property == "refs" {
                assert_eq!(schema["type"], json!("integer"), "{name}.{property}");
                assert_eq!(schema["format"], json!("int64"), "{name}.{property}");
            }
        }
    }
    let rbd = &definition(&spec, "attach_rbd")["properties"];
    assert_eq!(rbd["monitors"]["items"]["format"], json!("ipv4"));
    assert_eq!(
        definition(&spec, "rbd_options")["properties"]["ip"]["format"],
        json!("ipv4")
    );
}

/// One operation of the interface: path under the basePath, method, operationId, tag,
/// query or body parameters as (name, in, required), and its success status.
struct Operation {
    path: &'static str,
    method: &'static str,
    operation_id: &'static str,
    tag: &'static str,
    parameters: &'static [(&'static str, &'static str, bool)],
    success: &'static str,
    success_schema: Option<&'static str>,
}

const OPERATIONS: &[Operation] = &[
    Operation {
        path: "/attach",
        method: "get",
        operation_id: "GetAttach",
        tag: "attach",
        parameters: &[("id", "query", false), ("kind", "query", false)],
        success: "200",
        success_schema: Some("[attach]"),
    },
    Operation {
        path: "/attach",
        method: "post",
        operation_id: "Attach",
        tag: "attach",
        parameters: &[("attach", "body", true)],
        success: "201",
        success_schema: Some("attach"),
    },
    Operation {
        path: "/attach",
        method: "delete",
        operation_id: "Detach",
        tag: "attach",
        parameters: &[("id", "query", true), ("force", "query", false)],
        success: "200",
        success_schema: Some("attach"),
    },
    Operation {
        path: "/mount",
        method: "get",
        operation_id: "GetMount",
        tag: "mount",
        parameters: &[("id", "query", false), ("kind", "query", false)],
        success: "200",
        success_schema: Some("[mount]"),
    },
    Operation {
        path: "/mount",
        method: "post",
        operation_id: "Mount",
        tag: "mount",
        parameters: &[("mount", "body", true)],
        success: "201",
        success_schema: Some("mount"),
    },
    Operation {
        path: "/mount",
        method: "delete",
        operation_id: "Unmount",
        tag: "mount",
        parameters: &[("id", "query", true), ("force", "query", false)],
        success: "200",
        success_schema: Some("mount"),
    },
    Operation {
        path: "/container",
        method: "get",
        operation_id: "GetContainer",
        tag: "containers",
        parameters: &[
            ("id", "query", false),
            ("name", "query", false),
            ("state", "query", false),
            ("wait", "query", false),
            ("timeout", "query", false),
        ],
        success: "200",
        success_schema: Some("[container]"),
    },
    Operation {
        path: "/container",
        method: "post",
        operation_id: "CreateContainer",
        tag: "containers",
        parameters: &[("container", "body", true)],
        success: "201",
        success_schema: Some("container"),
    },
    Operation {
        path: "/container",
        method: "delete",
        operation_id: "DeleteContainer",
        tag: "containers",
        parameters: &[
            ("id", "query", false),
            ("name", "query", false),
            ("force", "query", false),
        ],
        success: "200",
        success_schema: Some("container"),
    },
    Operation {
        path: "/container",
        method: "patch",
        operation_id: "SetContainerState",
        tag: "containers",
        parameters: &[
            ("state", "query", true),
            ("id", "query", false),
            ("name", "query", false),
        ],
        success: "200",
        success_schema: Some("container"),
    },
    Operation {
        path: "/swagger.json",
        method: "get",
        operation_id: "GetSwaggerJSON",
        tag: "spec",
        parameters: &[],
        success: "200",
        success_schema: None,
    },
    Operation {
        path: "/events",
        method: "get",
        operation_id: "GetEvents",
        tag: "events",
        parameters: &[
            ("Last-Event-ID", "header", false),
            ("since", "query", false),
            ("object", "query", false),
        ],
        success: "200",
        success_schema: None,
    },
    Operation {
        path: "/swagger.yaml",
        method: "get",
        operation_id: "GetSwaggerYAML",
        tag: "spec",
        parameters: &[],
        success: "200",
        success_schema: None,
    },
];

const HTTP_METHODS: &[&str] = &["get", "put", "post", "delete", "options", "head", "patch"];

#[test]
fn paths_and_methods_equal_the_route_table() {
    let spec = spec();
    let paths = spec["paths"].as_object().expect("paths");
    let mut actual = BTreeSet::new();
    for (path, item) in paths {
        for key in item.as_object().unwrap().keys() {
            assert!(
                HTTP_METHODS.contains(&key.as_str()) || key.starts_with("x-"),
                "{path}: unexpected key {key}"
            );
            if HTTP_METHODS.contains(&key.as_str()) {
                actual.insert(format!("{} {path}", key.to_uppercase()));
            }
        }
    }
    let expected: BTreeSet<String> = OPERATIONS
        .iter()
        .map(|op| format!("{} {}", op.method.to_uppercase(), op.path))
        .collect();
    assert_same_names(
        "operations",
        "swagger.yaml",
        &actual,
        "the route table",
        &expected,
    );
    let served: BTreeSet<String> = ROUTES
        .iter()
        .map(|(method, path)| format!("{method} {path}"))
        .collect();
    assert_same_names(
        "operations",
        "swagger.yaml",
        &actual,
        "the service's routes (imageapi::api::ROUTES)",
        &served,
    );
}

/// The probes and metrics live outside basePath: swagger.yaml lists them under
/// `x-imageapi-root-paths`, each an extension operation with an error default.
#[test]
fn root_paths_equal_the_root_route_table() {
    let spec = spec();
    let paths = spec["x-imageapi-root-paths"]
        .as_object()
        .expect("x-imageapi-root-paths");
    let mut documented = BTreeSet::new();
    for (path, item) in paths {
        for (method, operation) in item.as_object().unwrap() {
            assert!(
                HTTP_METHODS.contains(&method.as_str()),
                "{path}: unexpected key {method}"
            );
            let what = format!("{} {path}", method.to_uppercase());
            assert_eq!(
                operation["x-imageapi-extension"],
                json!(true),
                "{what}: extension mark"
            );
            assert_eq!(operation["tags"], json!(["operations"]), "{what}: tags");
            assert!(
                operation["responses"]["200"]["description"].is_string(),
                "{what}: no 200"
            );
            assert_eq!(
                operation["responses"]["default"]["$ref"],
                json!("#/responses/Error"),
                "{what}: default response"
            );
            documented.insert(what);
        }
    }
    let served: BTreeSet<String> = ROOT_ROUTES
        .iter()
        .map(|(method, path)| format!("{method} {path}"))
        .collect();
    assert_same_names(
        "root operations",
        "swagger.yaml",
        &documented,
        "imageapi::api::ROOT_ROUTES",
        &served,
    );
}

#[test]
fn operations_match_the_generated_client() {
    let spec = spec();
    let mut ids = BTreeSet::new();
    for op in OPERATIONS {
        let what = format!("{} {}", op.method.to_uppercase(), op.path);
        let operation = &spec["paths"][op.path][op.method];
        assert_eq!(operation["operationId"], json!(op.operation_id), "{what}");
        assert!(ids.insert(op.operation_id), "{what}: duplicate operationId");
        assert_eq!(operation["tags"], json!([op.tag]), "{what}: tags");

        let parameters: Vec<(String, String, bool)> = operation
            .get("parameters")
            .and_then(Value::as_array)
            .map(|params| {
                params
                    .iter()
                    .map(|p| {
                        (
                            p["name"].as_str().unwrap().to_string(),
                            p["in"].as_str().unwrap().to_string(),
                            p.get("required") == Some(&json!(true)),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let expected: Vec<(String, String, bool)> = op
            .parameters
            .iter()
            .map(|(name, at, required)| (name.to_string(), at.to_string(), *required))
            .collect();
        assert_eq!(
            parameters.iter().cloned().collect::<BTreeSet<_>>(),
            expected.into_iter().collect::<BTreeSet<_>>(),
            "{what}: parameters (name, in, required)"
        );
        for p in operation["parameters"].as_array().into_iter().flatten() {
            match p["in"].as_str() {
                Some("body") => {
                    let target = p["schema"]["$ref"].as_str().unwrap_or_default();
                    assert_eq!(
                        target,
                        format!("#/definitions/{}", p["name"].as_str().unwrap()),
                        "{what}: body"
                    );
                }
                Some("query") => {
                    let ty = p["type"].as_str().unwrap_or_default();
                    match p["name"].as_str().unwrap() {
                        "id" => {
                            assert_eq!(ty, "integer", "{what}: id");
                            assert_eq!(p["format"], json!("int64"), "{what}: id");
                        }
                        "force" => {
                            assert_eq!(ty, "boolean", "{what}: force");
                            assert_eq!(p["default"], json!(false), "{what}: force");
                        }
                        // Extensions: the long poll's seconds, an event id, a list of objects.
                        "timeout" | "since" => assert_eq!(ty, "integer", "{what}: {}", p["name"]),
                        "object" => {
                            assert_eq!(ty, "array", "{what}: object");
                            assert_eq!(p["collectionFormat"], json!("csv"), "{what}: object");
                        }
                        _ => assert_eq!(ty, "string", "{what}: {}", p["name"]),
                    }
                    if ["wait", "timeout", "since", "object"].contains(&p["name"].as_str().unwrap())
                        && op.path == "/container"
                    {
                        assert_eq!(p["x-imageapi-extension"], json!(true), "{what}: extension");
                    }
                }
                Some("header") => {
                    assert_eq!(p["name"], json!("Last-Event-ID"), "{what}: header");
                    assert_eq!(p["type"], json!("integer"), "{what}: header");
                }
                other => panic!("{what}: parameter in {other:?}"),
            }
        }

        let responses = operation["responses"].as_object().expect("responses");
        let success: Vec<&String> = responses
            .keys()
            .filter(|code| code.starts_with('2'))
            .collect();
        assert_eq!(success, vec![op.success], "{what}: success status");
        let schema = &responses[op.success]["schema"];
        match op.success_schema {
            Some(array) if array.starts_with('[') => {
                let item = array.trim_matches(|c| c == '[' || c == ']');
                assert_eq!(schema["type"], json!("array"), "{what}");
                assert_eq!(
                    schema["items"]["$ref"],
                    json!(format!("#/definitions/{item}")),
                    "{what}"
                );
            }
            Some(single) => {
                assert_eq!(
                    schema["$ref"],
                    json!(format!("#/definitions/{single}")),
                    "{what}"
                )
            }
            None => {}
        }
        // Every other answer, listed or default, carries the error object.
        for (code, response) in responses {
            if code.starts_with('2') {
                continue;
            }
            let response = match response.get("$ref").and_then(Value::as_str) {
                Some(target) => spec
                    .pointer(pointer_of_ref(target))
                    .unwrap_or_else(|| panic!("{what} {code}: {target} does not resolve")),
                None => response,
            };
            assert!(
                response["description"].is_string(),
                "{what} {code}: no description"
            );
            assert_eq!(
                response["schema"]["$ref"],
                json!("#/definitions/error"),
                "{what} {code}: not the error definition"
            );
        }
        assert!(
            responses.contains_key("default"),
            "{what}: no default response"
        );
        if op.tag == "spec" {
            assert_eq!(
                operation["x-imageapi-extension"],
                json!(true),
                "{what}: extension mark"
            );
        } else {
            for code in ["404", "422", "500"] {
                assert!(
                    responses.contains_key(code),
                    "{what}: {code} not documented"
                );
            }
        }
        if op.method == "post" {
            for code in ["400", "404", "409", "415", "422", "500", "501"] {
                assert!(
                    responses.contains_key(code),
                    "{what}: {code} not documented"
                );
            }
        }
        if op.method == "delete" {
            assert!(responses.contains_key("409"), "{what}: 409 not documented");
        }
    }
}

#[test]
fn container_extensions_are_marked() {
    let spec = spec();
    for (def, property) in [
        ("container", "stop_signal"),
        ("container", "stop_timeout"),
        ("container", "exit_code"),
        ("error", "object"),
        ("error", "stage"),
        ("error", "reason"),
        ("error", "field"),
    ] {
        let schema = &definition(&spec, def)["properties"][property];
        assert_eq!(
            schema["x-imageapi-extension"],
            json!(true),
            "{def}.{property}"
        );
        assert!(
            schema["description"]
                .as_str()
                .unwrap_or_default()
                .contains("xtension"),
            "{def}.{property}: the description should say it is an extension"
        );
    }
}
