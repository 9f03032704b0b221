//! Hostile input: every request field and query parameter checked with a 4xx that names it,
//! nesting and array limits that keep one request from crashing or stalling the service, paths
//! that try to leave a mount base, attachments of things that are not what they claim, and
//! credentials that never come back in an answer or a log line (at TRACE level).
//!
//! Nothing here may answer 5xx: each of these inputs is the client's fault.

mod common;
#[path = "contract/harness.rs"]
mod harness;

use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::symlink;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const JSON: Option<&str> = Some("application/json");

/// Asserts a 4xx error answer with a well-formed body; removes anything it created by mistake.
fn refused(svc: &Service, method: &str, path: &str, body: Option<&Value>) -> Response {
    let resp = svc.request(method, path, body);
    if (200..300).contains(&resp.status) && method == "POST" {
        if let Some(id) = resp.json()["id"].as_i64() {
            let what = path.trim_start_matches('/').split('?').next().unwrap();
            svc.delete(&format!("/{what}?id={id}&force=true"));
        }
    }
    assert!(
        (400..500).contains(&resp.status),
        "{method} {path} {}: expected a 4xx, got {resp}",
        body.map(Value::to_string).unwrap_or_default()
    );
    assert_error(&resp, resp.status);
    resp
}

/// Asserts a 422 naming `field`.
fn invalid(svc: &Service, what: &str, body: Value, field: &str) {
    let resp = refused(svc, "POST", &format!("/{what}"), Some(&body));
    assert_eq!(resp.status, 422, "POST /{what} {body}: {resp}");
    assert_invalid(&resp, field);
}

fn rbd(monitors: Value, options: Value) -> Value {
    json!({ "kind": "rbd", "rbd": { "monitors": monitors, "pool": "rbd", "image": "img",
                                    "options": options } })
}

fn iscsi(fields: Value) -> Value {
    let mut iscsi = json!({
        "initiator": "iqn.2024-01.org.example:node1",
        "target": "iqn.2024-01.org.example:disk1",
        "host": "10.0.0.2"
    });
    for (key, value) in fields.as_object().unwrap() {
        iscsi[key] = value.clone();
    }
    json!({ "kind": "iscsi", "iscsi": iscsi })
}

fn container(fields: Value) -> Value {
    let mut container = json!({ "mount": { "id": 999_999 }, "command": "/bin/sh" });
    for (key, value) in fields.as_object().unwrap() {
        container[key] = value.clone();
    }
    container
}

#[test]
fn query_parameters_are_checked_and_named() {
    let mut svc = Service::start();
    for (method, path, status, field) in [
        ("GET", "/attach?id=99999999999999999999", 422, "id"),
        ("GET", "/attach?id=%ZZ", 422, "id"),
        ("GET", "/attach?id=1&id=abc", 422, "id"),
        ("GET", "/attach?id=0x10", 422, "id"),
        ("GET", "/attach?kind=LOCAL", 422, "kind"),
        ("GET", "/mount?kind=local%00", 422, "kind"),
        ("GET", "/container?state=zombie", 422, "state"),
        ("GET", "/container?id=-5", 404, ""),
        ("GET", "/container?name=%00", 404, ""),
        ("GET", "/container?name=..%2F..%2Fetc", 404, ""),
        ("GET", "/attach?id=-1", 404, ""),
        ("DELETE", "/attach?id=1&force=yesplease", 422, "force"),
        ("DELETE", "/container", 422, "id"),
        // An empty value is absent (goswagger_compat.rs has `GET /attach?id=` and friends).
        ("DELETE", "/container?name=", 422, "id"),
        ("PATCH", "/container?name=x", 422, "state"),
        ("PATCH", "/container?name=x&state=stopping", 422, "state"),
        ("PATCH", "/container?name=x&state=created", 422, "state"),
        ("PATCH", "/container?state=running", 422, "id"),
        ("PATCH", "/container?id=abc&state=running", 422, "id"),
        ("PATCH", "/container?id=424242&state=running", 404, ""),
    ] {
        let resp = refused(&svc, method, path, None);
        assert_eq!(resp.status, status, "{method} {path}: {resp}");
        if !field.is_empty() {
            let body = resp.json();
            assert!(
                body["field"].as_str().unwrap_or("").contains(field)
                    && body["message"].as_str().unwrap().contains(field),
                "{method} {path} should name {field:?}: {resp}"
            );
        }
    }
    svc.assert_empty();
    svc.stop_ok();
    assert_no_leaks(svc.dir());
}

#[test]
fn body_fields_are_checked_and_named() {
    let mut svc = Service::start();
    let dir = svc.dir().to_string_lossy().into_owned();
    let lo =
        |path: &str| json!({ "kind": "loopback", "loopback": { "path": path, "base": "root" } });
    let with_options = |options: Value| rbd(json!(["10.0.0.1"]), options);
    let creds = json!({ "name": "admin", "secret": "c2VjcmV0" });
    let rbd_options = |key: &str, value: Value| {
        let mut options = creds.clone();
        options[key] = value;
        with_options(options)
    };
    // (what, body, field)
    let cases: Vec<(&str, Value, &str)> = vec![
        // Paths: no NUL bytes, absolute where the contract means a host device or export.
        ("attach", lo("/tmp/a\u{0}b"), "loopback.path"),
        ("attach", local("/dev/loop0\u{0}"), "local.path"),
        ("attach", local("loop0"), "local.path"),
        ("attach", local(""), "local.path"),
        (
            "mount",
            json!({ "kind": "bind", "bind": { "path": "\u{0}", "base": "root" } }),
            "bind.path",
        ),
        (
            "mount",
            json!({ "kind": "nfs", "nfs": { "host": "10.0.0.3", "path": "export" } }),
            "nfs.path",
        ),
        (
            "mount",
            json!({ "kind": "nfs", "nfs": { "host": "not a host!", "path": "/export" } }),
            "nfs.host",
        ),
        (
            "mount",
            json!({ "kind": "nfs", "nfs": { "host": "10.0.0.3", "path": "/export", "version": "5" } }),
            "nfs.version",
        ),
        (
            "mount",
            json!({ "kind": "uri", "uri": { "url": "ftp://example.org/image.tar" } }),
            "uri.url",
        ),
        (
            "mount",
            json!({ "kind": "uri", "uri": { "url": "file://relative/image.tar" } }),
            "uri.url",
        ),
        (
            "mount",
            json!({ "kind": "uri", "uri": { "url": "http://127.0.0.1/a b" } }),
            "uri.url",
        ),
        (
            "mount",
            json!({ "kind": "uri", "uri": { "url": "http://127.0.0.1/i", "digest": "sha256:00" } }),
            "uri.digest",
        ),
        (
            "mount",
            json!({ "kind": "uri", "uri": { "url": "http://127.0.0.1/i", "size": -1 } }),
            "uri.size",
        ),
        (
            "mount",
            json!({ "kind": "uri", "uri": { "url": "http://127.0.0.1/i", "format": "zip" } }),
            "uri.format",
        ),
        // IPv4 formats.
        (
            "attach",
            rbd(json!([" 10.0.0.1"]), creds.clone()),
            "rbd.monitors[0]",
        ),
        (
            "attach",
            rbd(json!(["10.0.0.256"]), creds.clone()),
            "rbd.monitors[0]",
        ),
        (
            "attach",
            rbd(json!(["10.0.0"]), creds.clone()),
            "rbd.monitors[0]",
        ),
        (
            "attach",
            rbd(json!(["010.0.0.1"]), creds.clone()),
            "rbd.monitors[0]",
        ),
        (
            "attach",
            rbd(json!(["::1"]), creds.clone()),
            "rbd.monitors[0]",
        ),
        (
            "attach",
            rbd(json!(["10.0.0.1", "x"]), creds.clone()),
            "rbd.monitors[1]",
        ),
        ("attach", rbd(json!([]), creds.clone()), "rbd.monitors"),
        ("attach", rbd(json!([5]), creds.clone()), "rbd.monitors[0]"),
        (
            "attach",
            rbd_options("ip", json!("1.2.3.4.5")),
            "rbd.options.ip",
        ),
        // Non-negative numbers.
        (
            "attach",
            rbd_options("osdkeepalive", json!(-1)),
            "rbd.options.osdkeepalive",
        ),
        (
            "attach",
            rbd_options("queue_depth", json!(-16)),
            "rbd.options.queue_depth",
        ),
        (
            "attach",
            rbd_options("lock_timeout", json!(1.5)),
            "rbd.options.lock_timeout",
        ),
        (
            "attach",
            rbd_options("alloc_size", json!(1e30)),
            "rbd.options.alloc_size",
        ),
        ("attach", iscsi(json!({ "lun": -1 })), "iscsi.lun"),
        // (`port: 0` is a go client's unset port: the default, see goswagger_compat.rs.)
        ("attach", iscsi(json!({ "port": -1 })), "iscsi.port"),
        ("attach", iscsi(json!({ "port": 70000 })), "iscsi.port"),
        (
            "attach",
            iscsi(json!({ "max_comands": -128 })),
            "iscsi.max_comands",
        ),
        (
            "attach",
            iscsi(json!({ "queue_depth": "16" })),
            "iscsi.queue_depth",
        ),
        (
            "attach",
            iscsi(json!({ "target": "disk1" })),
            "iscsi.target",
        ),
        ("attach", iscsi(json!({ "host": "" })), "iscsi.host"),
        // Enums and types.
        ("attach", json!({ "kind": null }), "kind"),
        ("attach", json!({ "kind": "Loopback" }), "kind"),
        ("attach", json!({ "kind": ["local"] }), "kind"),
        (
            "attach",
            json!({ "kind": "loopback", "loopback": { "path": "x", "base": "ROOT" } }),
            "loopback.base",
        ),
        (
            "mount",
            json!({ "kind": "attach", "attach": { "attach": { "id": "1" }, "fs_type": "ext4" } }),
            "attach.attach.id",
        ),
        // Filesystem types and options go to mount(2) as they are: no separators, no NULs.
        (
            "mount",
            attach_mount(lo(&format!("{dir}/x.img")), "ext4,ro", &[]),
            "attach.fs_type",
        ),
        (
            "mount",
            attach_mount(lo(&format!("{dir}/x.img")), "../squashfs", &[]),
            "attach.fs_type",
        ),
        (
            "mount",
            attach_mount(lo(&format!("{dir}/x.img")), "", &[]),
            "attach.fs_type",
        ),
        (
            "mount",
            attach_mount(lo(&format!("{dir}/x.img")), "squashfs", &["ro", ""]),
            "attach.mount_options[1]",
        ),
        (
            "mount",
            attach_mount(lo(&format!("{dir}/x.img")), "squashfs", &["ro\u{0}"]),
            "attach.mount_options[0]",
        ),
        // Containers: the name pattern, the command, the state, the extensions.
        ("container", container(json!({ "name": "a b" })), "name"),
        ("container", container(json!({ "name": "a/b" })), "name"),
        ("container", container(json!({ "name": "é" })), "name"),
        (
            "container",
            container(json!({ "name": "x".repeat(254) })),
            "name",
        ),
        // Longer than a host name may be (the name is the container's host name).
        (
            "container",
            container(json!({ "name": "x".repeat(65) })),
            "name",
        ),
        ("container", container(json!({ "name": 7 })), "name"),
        ("container", container(json!({ "command": "" })), "command"),
        (
            "container",
            container(json!({ "command": "   " })),
            "command",
        ),
        (
            "container",
            container(json!({ "command": "/bin/sh -c 'x" })),
            "command",
        ),
        (
            "container",
            container(json!({ "command": "/bin/sh\u{0}" })),
            "command",
        ),
        (
            "container",
            container(json!({ "command": ["/bin/sh"] })),
            "command",
        ),
        ("container", json!({ "mount": { "id": 1 } }), "command"),
        ("container", json!({ "command": "/bin/sh" }), "mount"),
        (
            "container",
            container(json!({ "state": "stopping" })),
            "state",
        ),
        ("container", container(json!({ "state": "dead" })), "state"),
        (
            "container",
            container(json!({ "systemd": "yes" })),
            "systemd",
        ),
        (
            "container",
            container(json!({ "namespaces": ["mnt", "bogus"] })),
            "namespaces",
        ),
        (
            "container",
            container(json!({ "namespaces": "mnt" })),
            "namespaces",
        ),
        (
            "container",
            container(json!({ "stop_signal": "SIGFOO" })),
            "stop_signal",
        ),
        (
            "container",
            container(json!({ "stop_signal": "0" })),
            "stop_signal",
        ),
        (
            "container",
            container(json!({ "stop_timeout": -1 })),
            "stop_timeout",
        ),
        (
            "container",
            container(json!({ "stop_timeout": "30s" })),
            "stop_timeout",
        ),
        (
            "container",
            container(json!({ "mount": { "kind": "bind" } })),
            "mount.bind",
        ),
    ];
    for (what, body, field) in cases {
        invalid(&svc, what, body, field);
    }
    // Bytes that are not UTF-8 JSON at all.
    for bytes in [&b"\xff\xfe{}"[..], b"{\"kind\": \"\xc3\x28\"}", b"\x00"] {
        let resp = svc.raw("POST", "/imageapi/v1/attach", JSON, Some(bytes));
        assert_error(&resp, 400);
    }
    svc.assert_empty();
    svc.stop_ok();
    assert_no_leaks(svc.dir());
}

fn json_depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(json_depth).max().unwrap_or(0),
        Value::Object(fields) => 1 + fields.values().map(json_depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// The deepest request `wrap(step(step(...seed)))` within `limit` levels of JSON.
fn deepest_within(
    limit: usize,
    seed: Value,
    step: impl Fn(Value) -> Value,
    wrap: impl Fn(Value) -> Value,
) -> Value {
    let mut current = seed;
    loop {
        let next = step(current.clone());
        if json_depth(&wrap(next.clone())) > limit {
            return wrap(current);
        }
        current = next;
    }
}

#[test]
fn nesting_and_array_limits_keep_one_request_from_taking_the_service_down() {
    let mut svc = Service::start();
    // As deep as allowed, for each way of nesting, ending on a reference to a missing mount:
    // answered 404 once the engine walked down to it, and the service still serves.
    let missing = by_id(999_999);
    let bind = |mount: Value| bind_in(mount, ".", false, false);
    let image_in = |mount: Value| attach_mount(loopback_in(mount, "image"), "squashfs", &["ro"]);
    let lowers = |mount: Value| overlay(vec![mount]);
    let in_container = |mount: Value| json!({ "command": "/sbin/init", "mount": mount });
    let same = |value: Value| value;
    // (Overlays nested that deep are refused by validation: the kernel stacks two at most.)
    let deepest = [
        (
            "mount",
            deepest_within(24, missing.clone(), bind, same),
            404,
        ),
        (
            "mount",
            deepest_within(24, missing.clone(), image_in, same),
            404,
        ),
        (
            "mount",
            deepest_within(24, missing.clone(), lowers, same),
            422,
        ),
        (
            "container",
            deepest_within(24, missing.clone(), bind, in_container),
            404,
        ),
        (
            "container",
            deepest_within(24, missing.clone(), image_in, in_container),
            404,
        ),
    ];
    for (what, body, status) in &deepest {
        assert!((21..=24).contains(&json_depth(body)), "{body}");
        let resp = refused(&svc, "POST", &format!("/{what}"), Some(body));
        assert_eq!(resp.status, *status, "{resp}");
        assert_eq!(svc.get("/attach").status, 200, "the service went down");
    }
    // One level deeper is refused before the engine sees it; far deeper, by the JSON parser.
    let too_deep = bind(deepest_within(24, missing.clone(), bind, same));
    assert_eq!(json_depth(&too_deep), 25);
    let resp = refused(&svc, "POST", "/mount", Some(&too_deep));
    assert_invalid(&resp, "body");
    let mut far = missing.clone();
    for _ in 0..400 {
        far = bind(far);
    }
    assert_eq!(refused(&svc, "POST", "/mount", Some(&far)).status, 400);

    // Arrays: the most lowers overlayfs takes (500) are checked (404: none exists), a longer
    // array is refused at once.
    let start = Instant::now();
    let many = overlay((0..500).map(|i| by_id(1_000_000 + i)).collect());
    assert_eq!(refused(&svc, "POST", "/mount", Some(&many)).status, 404);
    let resp = refused(
        &svc,
        "POST",
        "/mount",
        Some(&overlay(vec![by_id(1); 20_000])),
    );
    assert_invalid(&resp, "body");
    let namespaces = container(json!({ "namespaces": vec!["mnt"; 5000] }));
    let resp = refused(&svc, "POST", "/container", Some(&namespaces));
    assert_invalid(&resp, "body");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "large arrays took {:?}",
        start.elapsed()
    );

    // Real nesting within the limit works, and one delete collects it.
    let tree = svc.dir().join("tree");
    fs::create_dir_all(&tree).unwrap();
    let mut mount = bind_root(&tree, false, false);
    for _ in 0..8 {
        mount = bind_in(mount, ".", false, true);
    }
    let created = svc.create("mount", &mount);
    assert_eq!(svc.list("/mount").len(), 9);
    svc.remove("mount", id_of(&created));
    svc.assert_empty();
    svc.stop_ok();
    assert_no_leaks(svc.dir());
}

#[test]
fn paths_cannot_leave_a_mount_base() {
    let mut svc = Service::start();
    // A host directory, bound, becomes the base: its symlinks point outside in every way.
    let host = svc.dir().join("base");
    fs::create_dir_all(host.join("sub")).unwrap();
    let image = fs::File::create(host.join("sub/image")).unwrap();
    image.set_len(4 << 20).unwrap();
    symlink("/etc", host.join("abs")).unwrap();
    symlink("../../../../../../../..", host.join("rel")).unwrap();
    symlink("sub/../..", host.join("dotdot")).unwrap();
    symlink("self", host.join("self")).unwrap();
    symlink("sub", host.join("inside")).unwrap();
    symlink("../sub", host.join("sub/back")).unwrap();
    symlink(svc.dir().join("outside.img"), host.join("sub/far")).unwrap();
    fs::File::create(svc.dir().join("outside.img"))
        .unwrap()
        .set_len(4 << 20)
        .unwrap();
    let base = svc.create("mount", &bind_root(&host, false, false));
    let base_id = id_of(&base);

    for path in [
        "abs",
        "abs/",
        "rel",
        "rel/etc",
        "dotdot",
        "self",
        "..",
        "../base",
        "sub/../..",
        "inside/../../..",
        "/../..",
    ] {
        let resp = refused(
            &svc,
            "POST",
            "/mount",
            Some(&bind_in(by_id(base_id), path, false, false)),
        );
        assert_eq!(resp.status, 422, "bind {path:?}: {resp}");
    }
    for path in [
        "abs/hostname",
        "rel/etc/hostname",
        "dotdot/base/sub/image",
        "sub/far",
        "../outside.img",
        "inside/../../outside.img",
        "sub/back/../../../outside.img",
    ] {
        let resp = refused(
            &svc,
            "POST",
            "/attach",
            Some(&loopback_in(by_id(base_id), path)),
        );
        assert_eq!(resp.status, 422, "loopback {path:?}: {resp}");
    }
    assert_eq!(
        svc.refs("mount", base_id),
        1,
        "refused requests hold nothing"
    );
    assert_eq!(svc.list("/attach"), Vec::<Value>::new());

    // Inside the base, symlinks and `..` that stay inside are followed.
    for path in [
        "inside",
        "sub/back",
        "/sub",
        "sub/../sub",
        "inside/back/back",
    ] {
        let made = svc.create("mount", &bind_in(by_id(base_id), path, false, true));
        svc.remove("mount", id_of(&made));
    }
    let attached = svc.create("attach", &loopback_in(by_id(base_id), "inside/back/image"));
    svc.remove("attach", id_of(&attached));

    // A magic link (/proc/self/root) inside a base is refused too.
    let proc_base = svc.create("mount", &bind_root(Path::new("/proc"), false, true));
    let resp = refused(
        &svc,
        "POST",
        "/mount",
        Some(&bind_in(by_id(id_of(&proc_base)), "self/root", false, true)),
    );
    assert_eq!(resp.status, 422, "{resp}");
    let resp = refused(
        &svc,
        "POST",
        "/attach",
        Some(&loopback_in(
            by_id(id_of(&proc_base)),
            "self/root/etc/hostname",
        )),
    );
    assert_eq!(resp.status, 422, "{resp}");
    svc.remove("mount", id_of(&proc_base));
    svc.remove("mount", base_id);
    svc.assert_empty();
    svc.stop_ok();
    assert_no_leaks(svc.dir());
}

#[test]
fn only_block_devices_attach_as_local_and_only_regular_files_as_loopback() {
    let mut svc = Service::start();
    let dir = svc.dir().to_owned();
    let fifo = dir.join("fifo");
    run(Command::new("mkfifo").arg(&fifo));
    let socket = dir.join("socket");
    let _listener = UnixListener::bind(&socket).unwrap();
    let file = dir.join("file.img");
    fs::File::create(&file).unwrap().set_len(4 << 20).unwrap();
    symlink("/dev/null", dir.join("null-link")).unwrap();
    symlink(&file, dir.join("file-link")).unwrap();
    symlink(dir.join("missing"), dir.join("dangling")).unwrap();
    for path in [
        fifo.clone(),
        socket.clone(),
        file.clone(),
        dir.join("null-link"),
        dir.join("file-link"),
        dir.join("dangling"),
        dir.clone(),
        "/dev/loop-control".into(),
        "/dev/zero".into(),
        "/proc/self/fd/0".into(),
    ] {
        let resp = refused(
            &svc,
            "POST",
            "/attach",
            Some(&local(path.to_str().unwrap())),
        );
        assert_eq!(resp.status, 422, "local {}: {resp}", path.display());
    }
    for path in [
        fifo.clone(),
        socket.clone(),
        dir.clone(),
        "/dev/zero".into(),
    ] {
        let resp = refused(&svc, "POST", "/attach", Some(&loopback(&path)));
        assert_eq!(resp.status, 422, "loopback {}: {resp}", path.display());
    }
    // A loop device is a block device: it attaches as local, but not as a loopback image.
    let lo = svc.create("attach", &loopback(&file));
    let device = device_of(&lo);
    let resp = refused(&svc, "POST", "/attach", Some(&loopback(Path::new(&device))));
    assert_eq!(resp.status, 422, "loopback of {device}: {resp}");
    let as_local = svc.create("attach", &local(&device));
    assert_eq!(device_of(&as_local), device);
    svc.remove("attach", id_of(&as_local));
    svc.remove("attach", id_of(&lo));
    svc.assert_empty();
    svc.stop_ok();
    assert_no_leaks(svc.dir());
}

// ---------------------------------------------------------------------------------------------
// Credentials
// ---------------------------------------------------------------------------------------------

/// Requests that carry an rbd secret, in every place a definition can hold one, valid or not.
fn requests_with_secret(secret: &str) -> Vec<(&'static str, String)> {
    let options = json!({ "name": "admin", "secret": secret });
    let good = rbd(json!(["10.0.0.1"]), options.clone());
    let rbd_mount = attach_mount(good.clone(), "squashfs", &["ro"]);
    let mut requests = vec![
        ("attach", good.to_string()),
        ("attach", rbd(json!(["10.0.0.x"]), options.clone()).to_string()),
        (
            "attach",
            rbd(json!(["10.0.0.1"]), json!({ "secret": secret })).to_string(),
        ),
        (
            "attach",
            rbd(
                json!(["10.0.0.1"]),
                json!({ "name": "admin", "secret": secret, "mount_timeout": "soon" }),
            )
            .to_string(),
        ),
        (
            "attach",
            rbd(json!(["10.0.0.1"]), json!({ "name": 5, "secret": secret })).to_string(),
        ),
        ("mount", rbd_mount.to_string()),
        ("mount", overlay(vec![rbd_mount.clone(), by_id(424242)]).to_string()),
        (
            "attach",
            loopback_in(rbd_mount.clone(), "image.squashfs").to_string(),
        ),
        (
            "container",
            json!({ "name": "n", "state": "running", "command": "/sbin/init", "mount": overlay(vec![rbd_mount.clone()]) })
                .to_string(),
        ),
        (
            "container",
            json!({ "name": "bad name", "command": "/sbin/init", "mount": rbd_mount }).to_string(),
        ),
        // A reference ignores the rest of the definition.
        (
            "mount",
            json!({ "kind": "attach", "attach": { "fs_type": "squashfs",
                    "attach": { "id": 424242, "kind": "rbd", "rbd": good["rbd"] } } })
            .to_string(),
        ),
    ];
    // Malformed JSON after the secret, and a body past the size limit.
    let text = good.to_string();
    requests.push(("attach", text[..text.len() - 3].to_string()));
    let mut big = good.clone();
    big["padding"] = json!("x".repeat(1 << 20));
    requests.push(("attach", big.to_string()));
    requests
}

#[test]
fn secrets_never_appear_in_answers_or_logs_even_at_trace_level() {
    let ca = harness::Authority::new("imageapi test CA");
    let port = harness::free_port();
    let server = harness::Server::start_prepared(
        |dir| {
            let (certificate, key) = ca.server().write(dir, "server");
            let mut args = harness::os_args(&["--scheme", "unix", "--scheme", "https"]);
            args.extend([
                "--socket-path".into(),
                dir.join("api.sock").into(),
                "--tls-host".into(),
                "127.0.0.1".into(),
                "--tls-port".into(),
                port.to_string().into(),
                "--tls-certificate".into(),
                certificate.into(),
                "--tls-key".into(),
                key.into(),
            ]);
            args
        },
        &[("IMAGEAPI_LOGLEVEL", "TRACE")],
    );
    let unix = Transport::Unix(server.dir().join("api.sock"));
    let https = SocketAddr::from(([127, 0, 0, 1], port));
    let client = harness::tls_client(&ca.pem.certificate, None);
    let mut secrets = Vec::new();
    let mut answers = Vec::new();
    for round in 0..2 {
        let secret = format!("AQBsEcReT{round}Zm9vYmFyYmF6cXV4==");
        secrets.push(secret.clone());
        for (what, body) in requests_with_secret(&secret) {
            let path = format!("{BASE}/{what}");
            let resp = if round == 0 {
                http_request(&unix, "POST", &path, JSON, Some(body.as_bytes()))
            } else {
                harness::tls_request(&client, https, "POST", &path, Some(body.as_bytes()))
                    .expect("https request")
            };
            assert!(
                resp.status < 500 || resp.status == 501,
                "POST /{what}: {resp}"
            );
            answers.push(resp.body.clone());
        }
        for what in ["attach", "mount", "container"] {
            answers.push(http_request(&unix, "GET", &format!("{BASE}/{what}"), None, None).body);
        }
    }
    let log = server.stderr();
    assert!(
        log.contains(" TRACE "),
        "the service did not log at TRACE level"
    );
    for secret in &secrets {
        for answer in &answers {
            assert!(
                !answer.contains(secret.as_str()),
                "a secret came back: {answer}"
            );
        }
        assert!(!log.contains(secret.as_str()), "a secret is in the log");
        // Nor a recognisable piece of it.
        assert!(!log.contains("sEcReT"), "part of a secret is in the log");
    }
    drop(server);
}

/// Finding for the engine: a secret of the wrong JSON type is echoed by serde's message
/// (`invalid type: integer `12345678``).
#[test]
fn a_secret_of_the_wrong_type_is_not_echoed() {
    let mut svc = Service::start();
    for secret in [
        json!(987654321),
        json!(98765.4321),
        json!({ "key": "S3cr3tV4lue" }),
    ] {
        let body = rbd(
            json!(["10.0.0.1"]),
            json!({ "name": "admin", "secret": secret }),
        );
        let resp = refused(&svc, "POST", "/attach", Some(&body));
        assert_invalid(&resp, "secret");
        for piece in ["987654321", "98765.4321", "S3cr3tV4lue"] {
            assert!(!resp.body.contains(piece), "{resp}");
        }
    }
    svc.stop_ok();
}

/// Findings for the engine: the kernel refuses these overlays (EINVAL or ELOOP) and the service
/// answered 500, though each is the client's fault.
#[test]
fn overlays_the_kernel_cannot_stack_are_4xx() {
    let mut svc = Service::start();
    let dir = svc.dir().join("lower");
    fs::create_dir_all(&dir).unwrap();
    let lower = id_of(&svc.create("mount", &bind_root(&dir, false, true)));
    // The same lower twice; more lowers than overlayfs stacks (500); an overlay of an overlay
    // of an overlay (the kernel stacks filesystems two deep).
    let stacked = overlay(vec![overlay(vec![overlay(vec![by_id(lower)])])]);
    for body in [
        overlay(vec![by_id(lower), by_id(lower)]),
        overlay(vec![by_id(lower); 600]),
        stacked,
    ] {
        let resp = refused(&svc, "POST", "/mount", Some(&body));
        assert_invalid(&resp, "lower");
    }
    svc.remove("mount", lower);
    svc.stop_ok();
    assert_no_leaks(svc.dir());
}
