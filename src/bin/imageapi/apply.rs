//! `apply -f FILE`: one nested definition, sent to the endpoint of its object.
//!
//! The document is either wrapped in its object's name (`container:`, `mount:` or `attach:`,
//! the only top-level key) or is the bare body, whose object is told by its `kind`
//! (a driver kind: `loopback`... is an attach, `overlay`... a mount) or, for a container,
//! by having no `kind`. A container whose name already exists is not created again: it is
//! brought to the definition's `state` if that differs, so applying a file twice is harmless.

use serde_json::Value;

use crate::{container_query, Api, Failure, Outcome};

const ATTACH_KINDS: [&str; 4] = ["local", "loopback", "rbd", "iscsi"];
const MOUNT_KINDS: [&str; 5] = ["attach", "bind", "nfs", "overlay", "uri"];

/// The object a definition is for, and its body.
fn split(definition: &Value) -> Result<(&'static str, &Value), String> {
    let Value::Object(fields) = definition else {
        return Err("a definition is a mapping".into());
    };
    if fields.len() == 1 {
        for object in ["container", "mount", "attach"] {
            if let Some(body) = fields.get(object) {
                return Ok((object, body));
            }
        }
    }
    match fields.get("kind").and_then(Value::as_str) {
        Some(kind) if ATTACH_KINDS.contains(&kind) => Ok(("attach", definition)),
        Some(kind) if MOUNT_KINDS.contains(&kind) => Ok(("mount", definition)),
        Some(kind) => Err(format!(
            "unknown kind {kind:?}: expected an attach kind ({}) or a mount kind ({})",
            ATTACH_KINDS.join(", "),
            MOUNT_KINDS.join(", ")
        )),
        None if fields.contains_key("name") || fields.contains_key("mount") => {
            Ok(("container", definition))
        }
        None => Err(
            "cannot tell what this defines: wrap it in `container:`, `mount:` or `attach:`".into(),
        ),
    }
}

/// The object and the service's answer for it.
pub fn apply(api: &Api, definition: &Value) -> Outcome<(&'static str, Value)> {
    let (object, body) = split(definition).map_err(Failure::Usage)?;
    if object == "container" {
        if let Some(name) = body.get("name").and_then(Value::as_str) {
            if let Some(existing) = api.find_container(name)? {
                let wanted = body.get("state").and_then(Value::as_str);
                return match wanted {
                    Some(state) if existing.get("state").and_then(Value::as_str) != Some(state) => {
                        let path = format!("/container?{}&state={state}", container_query(name));
                        Ok((object, api.call("PATCH", &path, None)?))
                    }
                    _ => Ok((object, existing)),
                };
            }
        }
    }
    Ok((object, api.call("POST", &format!("/{object}"), Some(body))?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_object_comes_from_the_wrapper_or_the_kind() {
        let wrapped = json!({"mount": {"kind": "bind"}});
        assert_eq!(
            split(&wrapped).unwrap(),
            ("mount", &json!({"kind": "bind"}))
        );
        let attach = json!({"kind": "loopback", "loopback": {"path": "/i"}});
        assert_eq!(split(&attach).unwrap().0, "attach");
        // `kind: attach` is a mount of an attach, not an attach.
        assert_eq!(split(&json!({"kind": "attach"})).unwrap().0, "mount");
        assert_eq!(
            split(&json!({"name": "web", "mount": {}})).unwrap().0,
            "container"
        );
        assert!(split(&json!({"kind": "floppy"})).is_err());
        assert!(split(&json!({"command": "/bin/sh"})).is_err());
        assert!(split(&json!([1])).is_err());
    }
}
