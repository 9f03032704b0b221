//! Compatibility with go-swagger clients, the reference's own among them.
//!
//! Such a client marshals the reference's generated models (`models/*.go`): a field tagged
//! `omitempty` is left out when it holds its zero value, one without it is always sent, and a nil
//! Go slice marshals to `null`. The arrays `mount_options`, `lower`, `namespaces`, nfs `options`
//! and rbd `monitors` have no `omitempty`, so a client that was not given one sends `null`. Each
//! POST here is sent twice: as that client sends it ([`go_body`]: omitempty zero values left out,
//! arrays `null`), and with every optional field present as its zero value (`null` for objects
//! and arrays, `false`, `0`, `""`), which must mean the same. Empty query values are absent.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use serde_json::{json, Map, Value};

/// Every optional field of each model the go client sends (wire name and zero value), and which
/// of them it sends even when zero (no `omitempty`): those are always the nil arrays.
struct Model {
    /// Optional fields with the Go zero value they marshal to.
    optional: &'static [(&'static str, Zero)],
}

#[derive(Clone, Copy)]
enum Zero {
    /// A nil pointer or slice: `null`. `always` when the field has no `omitempty`.
    Null {
        always: bool,
    },
    Bool,
    Int,
    Str,
}

impl Zero {
    fn value(self) -> Value {
        match self {
            Zero::Null { .. } => Value::Null,
            Zero::Bool => json!(false),
            Zero::Int => json!(0),
            Zero::Str => json!(""),
        }
    }
}

const NIL: Zero = Zero::Null { always: false };
const NIL_ARRAY: Zero = Zero::Null { always: true };

/// The optional fields of the reference's models, read from its `models/*.go` struct tags.
fn model(name: &str) -> Model {
    let optional: &'static [(&'static str, Zero)] = match name {
        "attach" => &[
            ("device_file", Zero::Str),
            ("id", Zero::Int),
            ("iscsi", NIL),
            ("kind", Zero::Str),
            ("local", NIL),
            ("loopback", NIL),
            ("rbd", NIL),
            ("refs", Zero::Int),
        ],
        "local" => &[],
        "loopback" => &[("mount", NIL), ("readPartitions", NIL)],
        "rbd" => &[
            ("device_id", Zero::Int),
            ("options", NIL),
            ("snapshot", Zero::Str),
        ],
        "rbd_options" => &[
            ("abort_on_full", Zero::Bool),
            ("alloc_size", Zero::Int),
            ("ceph_requires_signatures", Zero::Bool),
            ("cephx_sign_messages", Zero::Bool),
            ("crc", Zero::Bool),
            ("exclusive", Zero::Bool),
            ("force", Zero::Bool),
            ("fsid", Zero::Str),
            ("ip", Zero::Str),
            ("lock_on_read", Zero::Bool),
            ("lock_timeout", Zero::Int),
            ("mount_timeout", Zero::Int),
            ("namespace", Zero::Str),
            ("noceph_requires_signatures", Zero::Bool),
            ("nocephx_sign_messages", Zero::Bool),
            ("nocrc", Zero::Bool),
            ("noshare", Zero::Bool),
            ("notcp_nodelay", Zero::Bool),
            ("notrim", Zero::Bool),
            ("osd_idle_ttl", Zero::Int),
            ("osdkeepalive", Zero::Int),
            ("queue_depth", Zero::Int),
            ("ro", Zero::Bool),
            ("rw", Zero::Bool),
            ("share", Zero::Bool),
            ("tcp_nodelay", Zero::Bool),
        ],
        "iscsi" => &[
            ("lun", Zero::Int),
            ("max_comands", NIL),
            ("port", NIL),
            ("queue_depth", NIL),
            ("scheduler", NIL),
        ],
        "mount" => &[
            ("attach", NIL),
            ("bind", NIL),
            ("id", Zero::Int),
            ("kind", Zero::Str),
            ("mountpoint", Zero::Str),
            ("nfs", NIL),
            ("overlay", NIL),
            ("refs", Zero::Int),
        ],
        "mount_attach" => &[("mount_options", NIL_ARRAY)],
        "bind" => &[("mount", NIL), ("recursive", NIL), ("ro", NIL)],
        "nfs" => &[("options", NIL_ARRAY), ("ro", NIL), ("version", NIL)],
        "overlay" => &[("upperdir", Zero::Str), ("workdir", Zero::Str)],
        "container" => &[
            ("id", Zero::Int),
            ("logfile", Zero::Str),
            ("name", Zero::Str),
            ("namespaces", NIL_ARRAY),
            ("refs", Zero::Int),
            ("state", Zero::Str),
            ("systemd", Zero::Bool),
        ],
        other => panic!("no model {other}"),
    };
    Model { optional }
}

/// The model of a nested object, by its parent's model and its field.
fn child_model(parent: &str, field: &str) -> Option<&'static str> {
    Some(match (parent, field) {
        ("attach", "local") => "local",
        ("attach", "loopback") => "loopback",
        ("attach", "rbd") => "rbd",
        ("attach", "iscsi") => "iscsi",
        ("loopback" | "bind" | "container", "mount") => "mount",
        ("rbd", "options") => "rbd_options",
        ("mount", "attach") => "mount_attach",
        ("mount_attach", "attach") => "attach",
        ("mount", "bind") => "bind",
        ("mount", "nfs") => "nfs",
        ("mount", "overlay") => "overlay",
        ("overlay", "lower") => "mount",
        _ => return None,
    })
}

/// `body` (an object of model `name`) as a go-swagger client marshals it: the optional fields
/// it was not given are left out, but for the `omitempty`-less arrays, sent as `null`.
fn go_body(name: &str, body: &Value) -> Value {
    with_zeros(name, body, false)
}

/// `body` with every optional field it was not given present as its zero value.
fn zero_body(name: &str, body: &Value) -> Value {
    with_zeros(name, body, true)
}

fn with_zeros(name: &str, body: &Value, every: bool) -> Value {
    let Value::Object(fields) = body else {
        return body.clone();
    };
    let mut out = Map::new();
    for (key, value) in fields {
        let value = match (child_model(name, key), value) {
            (Some(child), Value::Array(items)) => Value::Array(
                items
                    .iter()
                    .map(|item| with_zeros(child, item, every))
                    .collect(),
            ),
            (Some(child), value) => with_zeros(child, value, every),
            (None, value) => value.clone(),
        };
        out.insert(key.clone(), value);
    }
    for (key, zero) in model(name).optional {
        let sent = every || matches!(zero, Zero::Null { always: true });
        if sent && !out.contains_key(*key) {
            out.insert(key.to_string(), zero.value());
        }
    }
    Value::Object(out)
}

/// POSTs `body` and expects `status`; removes what a 201 created, so a failing assertion leaves
/// nothing behind. Returns the response.
fn post_as(svc: &Service, what: &str, body: &Value, status: u16) -> Response {
    let resp = svc.post(&format!("/{what}"), body);
    if resp.status == 201 {
        let id = id_of(&resp.json());
        let removed = svc.delete(&format!("/{what}?id={id}&force=true"));
        assert_eq!(removed.status, 200, "DELETE /{what}?id={id}: {removed}");
    }
    assert_eq!(resp.status, status, "POST /{what} {body}: {resp}");
    resp
}

/// Both bodies of `body` (model `what`) answer `status`.
fn both_answer(svc: &Service, what: &str, body: &Value, status: u16) {
    let go = go_body(what, body);
    let zeros = zero_body(what, body);
    assert!(
        zeros.to_string().contains("null"),
        "the zero body sends nulls: {zeros}"
    );
    post_as(svc, what, &go, status);
    post_as(svc, what, &zeros, status);
}

/// An ext4 image (16 MiB) with busybox and the dirs an init mounts on.
fn busybox_ext4(svc: &Service, name: &str) -> PathBuf {
    let src = svc.dir().join(format!("{name}.src"));
    standard_tree(&src, name);
    write_tree(
        &src,
        &[
            ("proc/.keep", ""),
            ("sys/.keep", ""),
            ("dev/.keep", ""),
            ("tmp/.keep", ""),
        ],
    );
    let out = svc.dir().join(format!("{name}.ext4"));
    mkext4(&src, &out, 16);
    out
}

fn loopback_of(path: &Path) -> Value {
    json!({ "kind": "loopback", "loopback": { "path": path.to_string_lossy(), "base": "root" } })
}

#[test]
fn the_go_client_body_of_every_local_post_is_created() {
    let mut svc = Service::start();
    let squash = squashfs_image(svc.dir(), "go");
    let ext4 = ext4_image(svc.dir(), "go-ext4");
    let tree = svc.dir().join("tree");
    write_tree(&tree, &[("hello.txt", "hi\n")]);

    // Attach: loopback, and local of the device a loopback made.
    both_answer(&svc, "attach", &loopback_of(&squash), 201);
    let lo = svc.create("attach", &go_body("attach", &loopback_of(&squash)));
    let device = device_of(&lo);
    both_answer(&svc, "attach", &local(&device), 201);
    svc.remove("attach", id_of(&lo));

    // Mount: attach (squashfs and ext4, mount_options null), bind of a host dir, bind in a
    // mount, overlay; each as a definition and over references.
    let attach_mount = |attach: Value, fs_type: &str| json!({ "kind": "attach", "attach": { "attach": attach, "fs_type": fs_type } });
    let bind = |path: &str, base: &str, mount: Option<Value>| {
        let mut bind = json!({ "kind": "bind", "bind": { "path": path, "base": base } });
        if let Some(mount) = mount {
            bind["bind"]["mount"] = mount;
        }
        bind
    };
    let overlay = |lower: Vec<Value>| json!({ "kind": "overlay", "overlay": { "lower": lower } });
    let squash_mount = attach_mount(loopback_of(&squash), "squashfs");
    for body in [
        squash_mount.clone(),
        attach_mount(loopback_of(&ext4), "ext4"),
        bind(&tree.to_string_lossy(), "root", None),
        bind("dir", "mount", Some(squash_mount.clone())),
        overlay(vec![squash_mount.clone()]),
        overlay(vec![
            bind("dir", "mount", Some(squash_mount.clone())),
            attach_mount(loopback_of(&ext4), "ext4"),
        ]),
    ] {
        both_answer(&svc, "mount", &body, 201);
    }
    // Loopback of a file inside a mount, and mounts over references (`{"id": N}` with the go
    // client's other fields).
    let outer = svc.create("mount", &go_body("mount", &squash_mount));
    let outer_id = id_of(&outer);
    let inner = json!({ "kind": "loopback",
                        "loopback": { "path": "hello.txt", "base": "mount",
                                      "mount": { "id": outer_id } } });
    both_answer(&svc, "attach", &inner, 201);
    both_answer(
        &svc,
        "mount",
        &overlay(vec![json!({ "id": outer_id })]),
        201,
    );
    both_answer(
        &svc,
        "mount",
        &bind("dir", "mount", Some(json!({ "id": outer_id }))),
        201,
    );
    let lo = svc.create("attach", &go_body("attach", &loopback_of(&squash)));
    both_answer(
        &svc,
        "mount",
        &attach_mount(json!({ "id": id_of(&lo) }), "squashfs"),
        201,
    );
    svc.remove("attach", id_of(&lo));
    svc.remove("mount", outer_id);

    svc.assert_empty();
    svc.stop_ok();
    assert_no_leaks(svc.dir());
}

#[test]
fn the_go_client_body_of_drivers_without_implementation_reaches_501() {
    let mut svc = Service::start();
    let rbd = json!({ "kind": "rbd", "rbd": {
        "monitors": ["10.0.0.1"], "pool": "rbd", "image": "image",
        "options": { "name": "admin", "secret": "AQBe2ZxkAAAAABAAg1H8XqlZZQ==" }
    }});
    let iscsi = json!({ "kind": "iscsi", "iscsi": {
        "initiator": "iqn.2024-01.org.example:node1",
        "target": "iqn.2024-01.org.example:storage.disk1",
        "host": "10.0.0.2"
    }});
    let nfs = json!({ "kind": "nfs", "nfs": { "host": "10.0.0.3", "path": "/export" } });
    let rbd_mount = json!({ "kind": "attach",
                            "attach": { "attach": rbd.clone(), "fs_type": "ext4" } });
    both_answer(&svc, "attach", &rbd, 501);
    both_answer(&svc, "attach", &iscsi, 501);
    both_answer(&svc, "mount", &nfs, 501);
    both_answer(&svc, "mount", &rbd_mount, 501);
    // A go client that sets iscsi's optional pointers to 0 (or the scheduler to ""): defaults.
    let mut zeros = iscsi.clone();
    for (key, value) in [
        ("port", json!(0)),
        ("max_comands", json!(0)),
        ("queue_depth", json!(0)),
        ("scheduler", json!("")),
        ("lun", json!(0)),
    ] {
        zeros["iscsi"][key] = value;
    }
    post_as(&svc, "attach", &zeros, 501);
    // So does an nfs version "" (the default 4.2) and `ro: false`.
    let mut nfs_zeros = zero_body("mount", &nfs);
    nfs_zeros["nfs"]["version"] = json!("");
    nfs_zeros["nfs"]["ro"] = json!(false);
    post_as(&svc, "mount", &nfs_zeros, 501);
    svc.assert_empty();
    svc.stop_ok();
    assert_no_leaks(svc.dir());
}

#[test]
fn null_for_a_required_field_is_a_422_naming_it() {
    let mut svc = Service::start();
    for (what, body, field) in [
        (
            "attach",
            json!({ "kind": "local", "local": { "path": null } }),
            "local.path",
        ),
        (
            "attach",
            json!({ "kind": "loopback", "loopback": { "path": "x", "base": null } }),
            "loopback.base",
        ),
        ("attach", json!({ "kind": "local", "local": null }), "local"),
        ("attach", json!({ "kind": null, "id": null }), "kind"),
        ("attach", json!({ "kind": "", "id": 0 }), "kind"),
        (
            "attach",
            json!({ "kind": "rbd", "rbd": { "monitors": null, "pool": "p", "image": "i" } }),
            "rbd.monitors",
        ),
        // An empty secret is none, and mapping needs one.
        (
            "attach",
            json!({ "kind": "rbd", "rbd": { "monitors": ["10.0.0.1"], "pool": "p", "image": "i",
                                            "options": { "name": "admin", "secret": "" } } }),
            "rbd.options.secret",
        ),
        (
            "mount",
            json!({ "kind": "attach", "attach": { "attach": null, "fs_type": "ext4" } }),
            "attach.attach",
        ),
        (
            "mount",
            json!({ "kind": "attach",
                    "attach": { "attach": { "id": 1 }, "fs_type": null, "mount_options": null } }),
            "attach.fs_type",
        ),
        (
            "mount",
            json!({ "kind": "overlay", "overlay": { "lower": null } }),
            "overlay.lower",
        ),
        (
            "mount",
            json!({ "kind": "bind", "bind": { "path": null, "base": "root" } }),
            "bind.path",
        ),
        (
            "mount",
            json!({ "kind": "nfs", "nfs": { "host": null, "path": "/x", "options": null } }),
            "nfs.host",
        ),
        (
            "container",
            json!({ "command": null, "mount": { "id": 1 }, "namespaces": null }),
            "command",
        ),
        (
            "container",
            json!({ "command": "/bin/sh", "mount": null, "namespaces": null }),
            "mount",
        ),
    ] {
        let resp = svc.post(&format!("/{what}"), &body);
        assert_invalid(&resp, field);
    }
    svc.assert_empty();
    svc.stop_ok();
    assert_no_leaks(svc.dir());
}

fn state_of(svc: &Service, id: i64) -> String {
    let found = svc.get(&format!("/container?id={id}"));
    assert_eq!(found.status, 200, "{found}");
    found.json()[0]["state"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Deletes container `id` (stopping it first) when dropped, so that a failed assertion does not
/// leave its init running with the image mounted.
struct ContainerGuard<'a> {
    svc: &'a Service,
    id: Option<i64>,
}

impl Drop for ContainerGuard<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            let svc = self.svc;
            let _ = svc.request("PATCH", &format!("/container?id={id}&state=exited"), None);
            // No assertion here: this may run while a test is already panicking.
            wait_for(Duration::from_secs(10), || {
                let found = svc.get(&format!("/container?id={id}"));
                found.status != 200
                    || !matches!(
                        found.json()[0]["state"].as_str(),
                        Some("running" | "stopping")
                    )
            });
            let _ = svc.delete(&format!("/container?id={id}&force=true"));
        }
    }
}

#[test]
fn a_nested_container_over_an_overlay_of_an_ext4_attach_starts() {
    let mut svc = Service::start();
    let image = busybox_ext4(&svc, "go-ct");
    let body = json!({
        "name": "go-client",
        "command": "/bin/busybox sleep 1000",
        "state": "running",
        "mount": { "kind": "overlay", "overlay": { "lower": [
            { "kind": "attach", "attach": { "fs_type": "ext4", "attach": loopback_of(&image) } }
        ] } }
    });
    for body in [go_body("container", &body), zero_body("container", &body)] {
        assert_eq!(
            body["mount"]["overlay"]["lower"][0]["attach"]["mount_options"],
            Value::Null,
            "{body}"
        );
        assert_eq!(body["namespaces"], Value::Null, "{body}");
        let resp = svc.post("/container", &body);
        let mut guard = ContainerGuard {
            svc: &svc,
            id: None,
        };
        if resp.status == 201 {
            guard.id = Some(id_of(&resp.json()));
        }
        assert_eq!(resp.status, 201, "POST /container {body}: {resp}");
        let created = resp.json();
        let id = id_of(&created);
        assert_eq!(created["state"], "running", "{created}");
        assert_eq!(state_of(&svc, id), "running");
        // The default namespaces, as for a client that sent none.
        let mounts = svc.list("/mount");
        assert_eq!(mounts.len(), 2, "overlay and its ext4 lower: {mounts:?}");
        assert_eq!(svc.list("/attach").len(), 1);
        let stopped = svc.request("PATCH", &format!("/container?id={id}&state=exited"), None);
        assert_eq!(stopped.status, 200, "{stopped}");
        assert!(
            wait_for(Duration::from_secs(10), || state_of(&svc, id) == "exited"),
            "container {id} did not exit: {}",
            state_of(&svc, id)
        );
        guard.id = None;
        svc.remove("container", id);
        svc.assert_empty();
    }
    // A go client's container with every zero value, created (`state: ""`) over a reference.
    let mount = svc.create(
        "mount",
        &go_body(
            "mount",
            &json!({ "kind": "attach",
                     "attach": { "fs_type": "ext4", "attach": loopback_of(&image) } }),
        ),
    );
    let body = zero_body(
        "container",
        &json!({ "command": "/bin/busybox true", "mount": { "id": id_of(&mount) } }),
    );
    let resp = svc.post("/container", &body);
    let mut guard = ContainerGuard {
        svc: &svc,
        id: None,
    };
    if resp.status == 201 {
        guard.id = Some(id_of(&resp.json()));
    }
    assert_eq!(resp.status, 201, "POST /container {body}: {resp}");
    let created = resp.json();
    assert_eq!(created["state"], "created", "{created}");
    assert_ne!(created["name"], json!(""), "\"\" is no name: {created}");
    guard.id = None;
    svc.remove("container", id_of(&created));
    drop(guard);
    svc.remove("mount", id_of(&mount));
    svc.assert_empty();
    svc.stop_ok();
    assert_no_leaks(svc.dir());
}

#[test]
fn empty_query_values_are_absent() {
    let mut svc = Service::start();
    let image = squashfs_image(svc.dir(), "q");
    let lo = svc.create("attach", &loopback_of(&image));
    let mount = svc.create(
        "mount",
        &json!({ "kind": "attach", "attach": { "attach": { "id": id_of(&lo) },
                                               "fs_type": "squashfs", "mount_options": null } }),
    );
    // Lists: an empty filter is no filter.
    for path in [
        "/attach?id=",
        "/attach?kind=",
        "/attach?id=&kind=",
        "/attach?kind=local&kind=",
    ] {
        assert_eq!(ids(&svc.list(path)), vec![id_of(&lo)], "GET {path}");
    }
    for path in ["/mount?id=", "/mount?kind=", "/mount?id=&kind="] {
        assert_eq!(ids(&svc.list(path)), vec![id_of(&mount)], "GET {path}");
    }
    for path in [
        "/container?id=",
        "/container?name=",
        "/container?state=",
        "/container?id=&name=&state=",
    ] {
        assert!(svc.list(path).is_empty(), "GET {path}");
    }
    // A required id given empty is missing.
    for (method, path, field) in [
        ("DELETE", "/attach?id=", "id"),
        ("DELETE", "/attach?id=&force=", "id"),
        ("DELETE", "/mount?id=", "id"),
        ("DELETE", "/container?id=", "id"),
        ("DELETE", "/container?name=", "id"),
        ("PATCH", "/container?name=&state=running", "id"),
        ("PATCH", "/container?name=x&state=", "state"),
    ] {
        let resp = svc.request(method, path, None);
        assert_invalid(&resp, field);
    }
    // `force=` is not forcing: the attach is still in use by the mount.
    let busy = svc.delete(&format!("/attach?id={}&force=", id_of(&lo)));
    assert_error(&busy, 409);
    svc.remove("mount", id_of(&mount));
    svc.remove("attach", id_of(&lo));
    svc.assert_empty();
    svc.stop_ok();
    assert_no_leaks(svc.dir());
}
