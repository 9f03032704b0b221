//! How objects are printed: an aligned table by default, or the service's JSON or YAML.

use std::io::{self, Write};

use clap::ValueEnum;
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns: id, name, kind, state, refs, device or mountpoint.
    Table,
    /// The service's JSON, pretty-printed.
    Json,
    /// The same as YAML.
    Yaml,
}

const HEADER: [&str; 6] = ["ID", "NAME", "KIND", "STATE", "REFS", "DEVICE/MOUNTPOINT"];

/// Prints `items` (objects of `object`: attach, mount or container) in `format`. A reader that
/// went away (`imageapi container ls | head -1`) is not an error.
pub fn print_objects(object: &str, items: &[Value], format: Format) {
    let text = match format {
        Format::Json => serde_json::to_string_pretty(items).expect("JSON values serialize") + "\n",
        Format::Yaml => serde_norway::to_string(items).expect("JSON values serialize as YAML"),
        Format::Table => table(object, items),
    };
    let mut out = io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

fn text(value: &Value, pointer: &str) -> String {
    match value.pointer(pointer) {
        None | Some(Value::Null) => "-".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

fn row(object: &str, item: &Value) -> [String; 6] {
    let (kind, place) = match object {
        "attach" => (text(item, "/kind"), text(item, "/device_file")),
        "mount" => (text(item, "/kind"), text(item, "/mountpoint")),
        _ => ("container".to_string(), text(item, "/mount/mountpoint")),
    };
    [
        text(item, "/id"),
        text(item, "/name"),
        kind,
        text(item, "/state"),
        text(item, "/refs"),
        place,
    ]
}

pub fn table(object: &str, items: &[Value]) -> String {
    let mut rows = vec![HEADER.map(str::to_string)];
    rows.extend(items.iter().map(|item| row(object, item)));
    let widths: Vec<usize> = (0..HEADER.len())
        .map(|column| {
            rows.iter()
                .map(|r| r[column].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:width$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_align_columns_and_mark_what_is_absent() {
        let mounts = [
            json!({"id": 3, "kind": "attach", "refs": 1, "mountpoint": "/run/m/3"}),
            json!({"id": 12, "kind": "overlay", "refs": 0, "mountpoint": "/run/m/12"}),
        ];
        assert_eq!(
            table("mount", &mounts),
            "ID  NAME  KIND     STATE  REFS  DEVICE/MOUNTPOINT\n\
             3   -     attach   -      1     /run/m/3\n\
             12  -     overlay  -      0     /run/m/12\n"
        );
        let containers = [json!({"id": 1, "name": "web", "state": "running",
                                  "mount": {"id": 2, "mountpoint": "/m/2"}})];
        assert_eq!(
            table("container", &containers),
            "ID  NAME  KIND       STATE    REFS  DEVICE/MOUNTPOINT\n\
             1   web   container  running  -     /m/2\n"
        );
    }
}
