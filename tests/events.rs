//! End-to-end tests of `GET /events` (Server-Sent Events) and of the long poll
//! `GET /container?wait=`, against the real binary: the exact events of a container's life,
//! resuming with `Last-Event-ID`, the `lost` event, and the end of streams at shutdown.

mod common;

use std::ffi::OsString;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// A container that runs until asked to stop.
fn looping_container(svc: &Service, name: &str, running: bool) -> Value {
    let image = busybox_image(svc, name);
    json!({
        "name": name,
        "command": "/bin/sh -c 'trap \"exit 3\" TERM; while true; do sleep 0.1; done'",
        "mount": overlay(vec![squashfs_mount(&image)]),
        "state": if running { "running" } else { "created" },
    })
}

/// What an event says, without its time: (event, object, id, kind, state, old_state, exit_code).
fn summary(event: &SseEvent) -> (String, String, i64, Value, Value, Value, Value) {
    let data = &event.data;
    (
        event.event.clone(),
        data["object"].as_str().unwrap_or_default().to_string(),
        data["id"].as_i64().unwrap_or(-1),
        data["kind"].clone(),
        data["state"].clone(),
        data["old_state"].clone(),
        data["exit_code"].clone(),
    )
}

fn next(stream: &mut EventStream) -> SseEvent {
    stream
        .next_event()
        .expect("reading the event stream")
        .expect("the stream ended early")
}

fn bind_mount(svc: &Service) -> Value {
    svc.create("mount", &bind_root(svc.dir(), false, true))
}

#[test]
fn a_nested_container_life_is_told_event_by_event() {
    let svc = Service::start();
    let mut stream = svc.events("/events", None);
    assert_eq!(stream.status, 200);
    let created = svc.create("container", &looping_container(&svc, "life", true));
    let container = id_of(&created);
    let patched = svc.request("PATCH", "/container?name=life&state=exited", None);
    assert_eq!(patched.status, 200, "{patched}");
    let stopped = wait_for(Duration::from_secs(10), || {
        svc.get("/container?name=life").json()[0]["state"] == "exited"
    });
    assert!(stopped, "the container never exited");
    let exit_code = svc.get("/container?name=life").json()[0]["exit_code"].clone();
    assert!(exit_code.is_i64(), "{exit_code}");
    svc.remove("container", container);

    let mut events = Vec::new();
    while events.len() < 11 {
        events.push(next(&mut stream));
    }
    let first = events[0].id.expect("every event has an id");
    for (offset, event) in events.iter().enumerate() {
        assert_eq!(event.id, Some(first + offset as u64), "{events:?}");
        assert_eq!(
            event.data["name"].as_str(),
            (event.data["object"] == "container").then_some("life")
        );
        assert!(
            event.data["time"]
                .as_str()
                .is_some_and(|t| t.ends_with('Z')),
            "{event:?}"
        );
    }
    // Ids come out bottom-up: the loop device, its squashfs (an `attach` mount), the overlay,
    // the container.
    let (attach, squashfs, overlay) = (container - 3, container - 2, container - 1);
    let null = Value::Null;
    let s = |text: &str| json!(text);
    let expected = vec![
        (
            "created",
            "attach",
            attach,
            s("loopback"),
            null.clone(),
            null.clone(),
            null.clone(),
        ),
        (
            "created",
            "mount",
            squashfs,
            s("attach"),
            null.clone(),
            null.clone(),
            null.clone(),
        ),
        (
            "created",
            "mount",
            overlay,
            s("overlay"),
            null.clone(),
            null.clone(),
            null.clone(),
        ),
        (
            "created",
            "container",
            container,
            null.clone(),
            s("created"),
            null.clone(),
            null.clone(),
        ),
        (
            "state",
            "container",
            container,
            null.clone(),
            s("running"),
            s("created"),
            null.clone(),
        ),
        (
            "state",
            "container",
            container,
            null.clone(),
            s("stopping"),
            s("running"),
            null.clone(),
        ),
        (
            "state",
            "container",
            container,
            null.clone(),
            s("exited"),
            s("stopping"),
            exit_code.clone(),
        ),
        (
            "deleted",
            "container",
            container,
            null.clone(),
            null.clone(),
            null.clone(),
            null.clone(),
        ),
        (
            "deleted",
            "mount",
            overlay,
            s("overlay"),
            null.clone(),
            null.clone(),
            null.clone(),
        ),
        (
            "deleted",
            "mount",
            squashfs,
            s("attach"),
            null.clone(),
            null.clone(),
            null.clone(),
        ),
        (
            "deleted",
            "attach",
            attach,
            s("loopback"),
            null.clone(),
            null.clone(),
            null.clone(),
        ),
    ];
    let expected: Vec<_> = expected
        .into_iter()
        .map(|(e, o, id, k, st, old, code)| (e.to_string(), o.to_string(), id, k, st, old, code))
        .collect();
    let seen: Vec<_> = events.iter().map(summary).collect();
    assert_eq!(seen, expected, "{events:#?}");
    svc.assert_empty();
}

#[test]
fn a_reconnect_with_last_event_id_loses_and_repeats_nothing() {
    let svc = Service::start();
    let mut stream = svc.events("/events", None);
    let first = bind_mount(&svc);
    let seen = next(&mut stream);
    assert_eq!(seen.event, "created");
    assert_eq!(seen.data["id"], first["id"]);
    drop(stream);
    // While nobody listens.
    let second = bind_mount(&svc);
    svc.remove("mount", id_of(&first));
    let mut resumed = svc.events("/events", seen.id);
    let replayed: Vec<_> = (0..2).map(|_| next(&mut resumed)).collect();
    let third = bind_mount(&svc);
    let live = next(&mut resumed);
    let ids: Vec<_> = replayed
        .iter()
        .chain([&live])
        .map(|event| event.id.unwrap())
        .collect();
    let after = seen.id.unwrap();
    assert_eq!(ids, [after + 1, after + 2, after + 3]);
    let what: Vec<_> = replayed
        .iter()
        .chain([&live])
        .map(|event| (event.event.as_str(), event.data["id"].clone()))
        .collect();
    assert_eq!(
        what,
        [
            ("created", second["id"].clone()),
            ("deleted", first["id"].clone()),
            ("created", third["id"].clone()),
        ]
    );
    // The same through `?since=`.
    let mut since = svc.events(&format!("/events?since={after}"), None);
    assert_eq!(next(&mut since).id, Some(after + 1));
    svc.remove("mount", id_of(&second));
    svc.remove("mount", id_of(&third));
    svc.assert_empty();
}

#[test]
fn a_resume_from_too_far_back_starts_with_lost() {
    let svc = Service::start_with(ServiceOptions {
        extra_args: vec![OsString::from("--event-buffer"), OsString::from("3")],
        ..ServiceOptions::default()
    });
    let mut stream = svc.events("/events", None);
    for _ in 0..3 {
        let mount = bind_mount(&svc);
        svc.remove("mount", id_of(&mount));
    }
    let last = (0..6)
        .map(|_| next(&mut stream))
        .last()
        .unwrap()
        .id
        .unwrap();
    let mut resumed = svc.events("/events", Some(1));
    let lost = next(&mut resumed);
    assert_eq!(lost.event, "lost");
    assert_eq!(lost.id, None);
    assert_eq!(lost.data, json!({ "oldest": last - 2 }));
    let after: Vec<_> = (0..3).map(|_| next(&mut resumed).id.unwrap()).collect();
    assert_eq!(after, [last - 2, last - 1, last]);
    // `?object=` keeps the kinds it names.
    let mut mounts = svc.events("/events?object=mount,container", Some(last - 1));
    assert_eq!(next(&mut mounts).data["object"], "mount");
    let bad = svc.get("/events?object=volume");
    assert_eq!(bad.status, 422, "{bad}");
    svc.assert_empty();
}

#[test]
fn the_long_poll_answers_on_the_change_and_on_timeout() {
    let svc = Service::start();
    let created = svc.create("container", &looping_container(&svc, "polled", false));
    let started = Instant::now();
    let timed_out = svc.get("/container?name=polled&wait=running&timeout=1");
    assert_eq!(timed_out.status, 408, "{timed_out}");
    assert!(timed_out.json()["message"].as_str().is_some());
    assert!(started.elapsed() >= Duration::from_secs(1));
    // Already in the state: at once.
    let now = svc.get(&format!(
        "/container?id={}&wait=created&timeout=5",
        id_of(&created)
    ));
    assert_eq!(now.status, 200, "{now}");
    assert_eq!(now.json()[0]["state"], "created");
    std::thread::scope(|scope| {
        let waiting = scope.spawn(|| svc.get("/container?name=polled&wait=running&timeout=20"));
        std::thread::sleep(Duration::from_millis(300));
        let patched = svc.request("PATCH", "/container?name=polled&state=running", None);
        assert_eq!(patched.status, 200, "{patched}");
        let answered = waiting.join().unwrap();
        assert_eq!(answered.status, 200, "{answered}");
        assert_eq!(answered.json()[0]["state"], "running");
        assert_eq!(answered.json()[0]["name"], "polled");
    });
    let bad = svc.get("/container?name=polled&wait=running&timeout=301");
    assert_eq!(bad.status, 422, "{bad}");
    let unnamed = svc.get("/container?wait=running");
    assert_eq!(unnamed.status, 422, "{unnamed}");
    let missing = svc.get("/container?name=nobody&wait=running&timeout=1");
    assert_eq!(missing.status, 404, "{missing}");
    let stopped = svc.request("PATCH", "/container?name=polled&state=exited", None);
    assert_eq!(stopped.status, 200, "{stopped}");
    let exited = svc.get("/container?name=polled&wait=exited&timeout=20");
    assert_eq!(exited.status, 200, "{exited}");
    svc.remove("container", id_of(&created));
    svc.assert_empty();
}

#[test]
fn open_streams_end_at_shutdown_without_holding_it_up() {
    let mut svc = Service::start();
    let mut stream = svc.events("/events", None);
    let started = Instant::now();
    svc.stop_ok();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the stop waited {:?} for the stream",
        started.elapsed()
    );
    assert!(matches!(stream.next_event(), Ok(None)));
}

#[test]
fn a_stream_outlives_the_connection_timeouts() {
    let short = [
        "--read-timeout",
        "1s",
        "--write-timeout",
        "1s",
        "--cleanup-timeout",
        "1s",
    ];
    let svc = Service::start_with(ServiceOptions {
        extra_args: short.iter().map(OsString::from).collect(),
        ..ServiceOptions::default()
    });
    let mut stream = svc.events("/events", None);
    // Past idle + read time (and the grace), when an ordinary connection is cut.
    std::thread::sleep(Duration::from_secs(4));
    let mount = bind_mount(&svc);
    let event = next(&mut stream);
    assert_eq!(
        (event.event.as_str(), &event.data["id"]),
        ("created", &mount["id"])
    );
    svc.remove("mount", id_of(&mount));
    svc.assert_empty();
}
