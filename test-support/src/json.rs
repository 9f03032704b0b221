//! JSON request builders and response helpers of the API.

use std::path::Path;

use serde_json::{json, Value};

use crate::Response;

/// `{"id": N}`: a reference to an existing object.
pub fn by_id(id: i64) -> Value {
    json!({ "id": id })
}

/// A loopback attach of a host file (base root).
pub fn loopback(path: &Path) -> Value {
    json!({
        "kind": "loopback",
        "loopback": { "path": path.to_string_lossy(), "base": "root" }
    })
}

/// A loopback attach of `path` relative to `mount` (a definition or a reference).
pub fn loopback_in(mount: Value, path: &str) -> Value {
    json!({
        "kind": "loopback",
        "loopback": { "path": path, "base": "mount", "mount": mount }
    })
}

/// A local attach of a host block device.
pub fn local(path: &str) -> Value {
    json!({ "kind": "local", "local": { "path": path } })
}

/// A mount of an attach (a definition or a reference).
pub fn attach_mount(attach: Value, fs_type: &str, options: &[&str]) -> Value {
    json!({
        "kind": "attach",
        "attach": { "attach": attach, "fs_type": fs_type, "mount_options": options }
    })
}

/// A read-only squashfs mount of a loopback of `image`.
pub fn squashfs_mount(image: &Path) -> Value {
    attach_mount(loopback(image), "squashfs", &["ro"])
}

/// A bind mount of a host path.
pub fn bind_root(path: &Path, recursive: bool, ro: bool) -> Value {
    json!({
        "kind": "bind",
        "bind": { "path": path.to_string_lossy(), "base": "root", "recursive": recursive, "ro": ro }
    })
}

/// A bind mount of `path` relative to `mount` (a definition or a reference).
pub fn bind_in(mount: Value, path: &str, recursive: bool, ro: bool) -> Value {
    json!({
        "kind": "bind",
        "bind": { "path": path, "base": "mount", "mount": mount, "recursive": recursive, "ro": ro }
    })
}

/// An overlay of `lower` (first is topmost).
pub fn overlay(lower: Vec<Value>) -> Value {
    json!({ "kind": "overlay", "overlay": { "lower": lower } })
}

pub fn id_of(v: &Value) -> i64 {
    v["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("no integer id in {v}"))
}

pub fn refs_of(v: &Value) -> i64 {
    v["refs"]
        .as_i64()
        .unwrap_or_else(|| panic!("no integer refs in {v}"))
}

pub fn str_of<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string at {pointer} in {v}"))
}

/// `device_file` of an attach.
pub fn device_of(v: &Value) -> String {
    str_of(v, "/device_file").to_string()
}

/// `mountpoint` of a mount.
pub fn mountpoint_of(v: &Value) -> String {
    str_of(v, "/mountpoint").to_string()
}

/// Ids of a list, sorted.
pub fn ids(items: &[Value]) -> Vec<i64> {
    let mut ids: Vec<i64> = items.iter().map(id_of).collect();
    ids.sort();
    ids
}

/// Asserts an error answer: `status`, JSON body with `code == status` and a string `message`.
/// Returns the body.
pub fn assert_error(resp: &Response, status: u16) -> Value {
    assert_eq!(resp.status, status, "expected HTTP {status}, got {resp}");
    let body = resp.json();
    assert_eq!(
        body["code"].as_i64(),
        Some(i64::from(status)),
        "code of {resp}"
    );
    assert!(body["message"].is_string(), "message of {resp}");
    body
}

/// Asserts a non-2xx answer with a well-formed error body; returns the body.
pub fn assert_any_error(resp: &Response) -> Value {
    assert!(
        (400..600).contains(&resp.status),
        "expected an error, got {resp}"
    );
    assert_error(resp, resp.status)
}

/// Asserts a 422 naming `field` (its own name, e.g. `path`) in `field` and in `message`.
pub fn assert_invalid(resp: &Response, field: &str) -> Value {
    let body = assert_error(resp, 422);
    let named = body["field"]
        .as_str()
        .unwrap_or_else(|| panic!("no field in {resp}"));
    assert!(
        named.contains(field),
        "field {named:?} does not name {field:?}: {resp}"
    );
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains(field),
        "message does not name {field:?}: {resp}"
    );
    body
}

/// Asserts an error answer carrying `object`, `stage` (when given) and a non-empty `reason`.
pub fn assert_nested_failure(resp: &Response, object: &str, stage: Option<&str>) -> Value {
    let body = assert_any_error(resp);
    assert_eq!(body["object"].as_str(), Some(object), "object of {resp}");
    let got_stage = body["stage"]
        .as_str()
        .unwrap_or_else(|| panic!("no stage in {resp}"));
    if let Some(stage) = stage {
        assert_eq!(got_stage, stage, "stage of {resp}");
    }
    let reason = body["reason"]
        .as_str()
        .unwrap_or_else(|| panic!("no reason in {resp}"));
    assert!(!reason.is_empty(), "empty reason in {resp}");
    body
}
