//! Commands that wait on the service: `wait`, `logs -f` and `events`, and the spinner they
//! show on a terminal.

use std::fs::File;
use std::io::{self, BufRead, Read, Seek, SeekFrom, Write};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::output::Format;
use crate::progress::Spinner;
use crate::{Api, Failure, Outcome};

/// How often `wait` lists the container and `logs -f` looks for more output.
const POLL: Duration = Duration::from_millis(200);

/// How long one `wait` request may be held by a service with the long poll; short, so that
/// the spinner moves and `--timeout` is kept.
const LONG_POLL: Duration = Duration::from_secs(1);

/// How often `logs -f` checks that the container still exists.
const LIVENESS_CHECK: Duration = Duration::from_secs(1);

/// Lists the container until it is in `state`; it may not exist yet. Each list asks the
/// service to hold the answer up to [`LONG_POLL`] until the state is reached (`wait=`, the
/// long-poll extension); a service without it answers at once, and the next list follows after
/// [`POLL`].
pub fn wait(api: &Api, container: &str, state: &str, timeout: Duration) -> Outcome<Value> {
    let deadline = Instant::now() + timeout;
    let mut spinner = Spinner::new(format!("waiting for {container} to be {state}"));
    let mut current = "absent".to_string();
    loop {
        let long_poll = deadline.saturating_duration_since(Instant::now()) >= LONG_POLL;
        let query = if long_poll {
            format!("wait={state}&timeout={}", LONG_POLL.as_secs())
        } else {
            String::new()
        };
        match api.find_container_where(container, &query) {
            Ok(found) => {
                current = found
                    .as_ref()
                    .and_then(|c| c.get("state"))
                    .and_then(Value::as_str)
                    .unwrap_or("absent")
                    .to_string();
                if let Some(found) = found.filter(|_| current == state) {
                    return Ok(found);
                }
                spinner.tick(&current);
                thread::sleep(POLL);
            }
            // The long poll's own timeout: the service waited; ask again.
            Err(Failure::Refused { status: 408, .. }) if long_poll => spinner.tick(&current),
            Err(other) => return Err(other),
        }
        if Instant::now() >= deadline {
            return Err(Failure::TimedOut(format!(
                "{container} is {current}, not {state}, after {timeout:?}"
            )));
        }
    }
}

/// Prints the container's log file; with `follow`, goes on printing what is appended until
/// the container is deleted.
pub fn logs(api: &Api, container: &str, follow: bool) -> Outcome {
    let found = api.container(container)?;
    let Some(path) = found.get("logfile").and_then(Value::as_str) else {
        return Err(Failure::Local(format!(
            "container {container} has no logfile"
        )));
    };
    let local = |e: io::Error| Failure::Local(format!("{path}: {e}"));
    let mut file = File::open(path).map_err(local)?;
    let mut out = io::stdout().lock();
    let mut last_check = Instant::now();
    let mut buf = vec![0; 64 * 1024];
    loop {
        let read = file.read(&mut buf).map_err(local)?;
        if read > 0 {
            out.write_all(&buf[..read]).map_err(local)?;
            continue;
        }
        out.flush().map_err(local)?;
        if !follow {
            return Ok(());
        }
        if last_check.elapsed() >= LIVENESS_CHECK {
            last_check = Instant::now();
            if api.find_container(container)?.is_none() {
                return Ok(());
            }
            // A log rewritten from the start (a restart that truncated it) is read again.
            let length = file.metadata().map_err(local)?.len();
            if length < file.stream_position().map_err(local)? {
                file.seek(SeekFrom::Start(0)).map_err(local)?;
            }
        }
        thread::sleep(POLL);
    }
}

/// One event of the stream (docs: /work/briefs/events-shape.md).
#[derive(Debug, Default, PartialEq)]
struct Event {
    id: Option<String>,
    event: String,
    data: String,
}

/// Splits a Server-Sent Events stream into events; comments and unknown fields are skipped.
fn next_event(reader: &mut impl BufRead) -> io::Result<Option<Event>> {
    let mut event = Event::default();
    let mut seen = false;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            if seen {
                return Ok(Some(event));
            }
            continue;
        }
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        seen = true;
        match field {
            "id" => event.id = Some(value.to_string()),
            "event" => event.event = value.to_string(),
            "data" => {
                if !event.data.is_empty() {
                    event.data.push('\n');
                }
                event.data.push_str(value);
            }
            _ => {}
        }
    }
}

/// `12 state container 3 web running->stopping` (absent parts left out).
fn event_line(event: &Event) -> String {
    let data: Value = serde_json::from_str(&event.data).unwrap_or(Value::Null);
    let field = |key: &str| match data.get(key) {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Null) | None => None,
        Some(other) => Some(other.to_string()),
    };
    let mut parts = vec![event.id.clone().unwrap_or_else(|| "-".into())];
    parts.push(if event.event.is_empty() {
        "message".into()
    } else {
        event.event.clone()
    });
    if event.event == "lost" {
        parts.push(format!(
            "events were dropped; the oldest still held is {}",
            field("oldest").unwrap_or_default()
        ));
        return parts.join(" ");
    }
    parts.extend(
        ["object", "id", "kind", "name"]
            .iter()
            .filter_map(|k| field(k)),
    );
    match (field("old_state"), field("state")) {
        (Some(old), Some(new)) => parts.push(format!("{old}->{new}")),
        (None, Some(new)) => parts.push(new),
        _ => {}
    }
    if let Some(code) = field("exit_code") {
        parts.push(format!("exit_code={code}"));
    }
    if data.is_null() && !event.data.is_empty() {
        parts.push(event.data.clone());
    }
    parts.join(" ")
}

/// Prints the service's event stream until it ends.
pub fn events(api: &Api, format: Format) -> Outcome {
    let response = api.open("GET", "/events", &[("Accept", "text/event-stream")])?;
    if response.status == 404 {
        return Err(Failure::Refused {
            status: 404,
            body: serde_json::json!({
                "message": "this service has no event stream (GET /imageapi/v1/events answered 404): it needs a version with events",
            }),
        });
    }
    if !(200..300).contains(&response.status) {
        let status = response.status;
        let bytes = response.read_body().unwrap_or_default();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        return Err(Failure::Refused { status, body });
    }
    let content_type = response.header("Content-Type").unwrap_or_default();
    if !content_type.starts_with("text/event-stream") {
        return Err(Failure::Unreachable(format!(
            "GET /imageapi/v1/events answered {content_type:?}, not an event stream"
        )));
    }
    let mut body = response.body;
    let mut out = io::stdout().lock();
    let broken = |e: io::Error| Failure::Unreachable(format!("the event stream broke: {e}"));
    while let Some(event) = next_event(&mut body).map_err(broken)? {
        let line = match format {
            Format::Table => event_line(&event),
            Format::Json | Format::Yaml => {
                let mut data: Value = serde_json::from_str(&event.data).unwrap_or(Value::Null);
                if let Value::Object(fields) = &mut data {
                    fields.insert("event".into(), event.event.clone().into());
                    if let Some(id) = event.id.as_deref().and_then(|i| i.parse::<u64>().ok()) {
                        fields.insert("event_id".into(), id.into());
                    }
                }
                if format == Format::Json {
                    data.to_string()
                } else {
                    format!(
                        "---\n{}",
                        serde_norway::to_string(&data).unwrap_or_default()
                    )
                }
            }
        };
        if writeln!(out, "{}", line.trim_end())
            .and_then(|()| out.flush())
            .is_err()
        {
            return Ok(()); // The reader went away (`imageapi events | head`).
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_split_and_printed_one_per_line() {
        let stream =
            b": keep-alive\n\nid: 7\nevent: state\ndata: {\"object\":\"container\",\"id\":3,\
\"name\":\"web\",\"state\":\"exited\",\"old_state\":\"running\",\"exit_code\":0}\n\n\
id: 8\r\nevent: deleted\r\ndata: {\"object\":\"mount\",\"id\":2,\"kind\":\"overlay\"}\r\n\r\n\
event: lost\ndata: {\"oldest\": 40}\n\n";
        let mut reader = io::Cursor::new(&stream[..]);
        let mut lines = Vec::new();
        while let Some(event) = next_event(&mut reader).unwrap() {
            lines.push(event_line(&event));
        }
        assert_eq!(
            lines,
            [
                "7 state container 3 web running->exited exit_code=0",
                "8 deleted mount 2 overlay",
                "- lost events were dropped; the oldest still held is 40",
            ]
        );
    }
}
