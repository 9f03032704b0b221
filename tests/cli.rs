//! End-to-end tests of the `imageapi` command-line client against the real service: a nested
//! YAML definition applied, waited on, its log followed, listed, stopped and removed, and the
//! exit codes scripts rely on.

mod common;
#[path = "contract/harness.rs"]
mod harness;

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const CLI: &str = env!("CARGO_BIN_EXE_imageapi");

fn cli_command(svc: &Service, args: &[&str]) -> Command {
    let mut command = Command::new(CLI);
    command
        .arg("--socket")
        .arg(svc.dir().join("api.sock"))
        .args(args)
        .env_remove("IMAGEAPI_URL")
        .env_remove("IMAGEAPI_SOCKET");
    command
}

fn cli(svc: &Service, args: &[&str]) -> Output {
    cli_command(svc, args).output().expect("run imageapi")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Runs `args` and asserts exit 0; returns stdout.
fn cli_ok(svc: &Service, args: &[&str]) -> String {
    let output = cli(svc, args);
    assert!(
        output.status.success(),
        "imageapi {args:?}: {:?}\n{}{}",
        output.status,
        stdout(&output),
        stderr(&output)
    );
    stdout(&output)
}

/// A container on an overlay of a squashfs mount of a loopback of a busybox image, nested in
/// one YAML document.
fn nested_definition(image: &Path, name: &str) -> String {
    format!(
        r#"# imageapi apply -f: container -> overlay -> attach mount -> loopback
container:
  name: {name}
  command: "/bin/sh -c 'echo hello from init; exec /bin/busybox sleep 1000'"
  state: running
  mount:
    kind: overlay
    overlay:
      lower:
        - kind: attach
          attach:
            fs_type: squashfs
            mount_options: [ro]
            attach:
              kind: loopback
              loopback:
                path: {image}
                base: root
"#,
        image = image.display()
    )
}

/// Reads `child`'s stdout until it contains `wanted` (or 20 s pass), then kills it.
fn read_until(mut child: Child, wanted: &str) -> String {
    let mut out = child.stdout.take().expect("piped stdout");
    let (sender, receiver) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let mut buf = [0; 4096];
        while let Ok(read) = out.read(&mut buf) {
            if read == 0 || sender.send(buf[..read].to_vec()).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    while Instant::now() < deadline && !String::from_utf8_lossy(&seen).contains(wanted) {
        if let Ok(bytes) = receiver.recv_timeout(Duration::from_millis(100)) {
            seen.extend(bytes);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    String::from_utf8_lossy(&seen).into_owned()
}

#[test]
fn a_nested_yaml_container_is_applied_waited_on_followed_listed_stopped_and_removed() {
    let svc = Service::start();
    let image = busybox_image(&svc, "cli");
    let definition = svc.dir().join("web.yaml");
    std::fs::write(&definition, nested_definition(&image, "cli-web")).unwrap();
    let definition = definition.to_str().unwrap();

    // The event stream, when this service has one, sees the whole life.
    let events = cli_command(&svc, &["events"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let applied = cli_ok(&svc, &["apply", "-f", definition, "-o", "json"]);
    let applied: Value = serde_json::from_str(&applied).unwrap();
    assert_eq!(applied[0]["name"], "cli-web", "{applied}");
    // Applying it again changes nothing.
    let again: Value =
        serde_json::from_str(&cli_ok(&svc, &["apply", "-f", definition, "-o", "json"])).unwrap();
    assert_eq!(again[0]["id"], applied[0]["id"]);

    let waited = cli_ok(
        &svc,
        &["wait", "cli-web", "--state", "running", "--timeout", "20s"],
    );
    assert!(waited.contains("running"), "{waited}");

    let follower = cli_command(&svc, &["logs", "-f", "cli-web"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let log = read_until(follower, "hello from init");
    assert!(log.contains("hello from init"), "logs -f: {log}");

    let table = cli_ok(&svc, &["container", "ls"]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("ID  NAME"), "{table}");
    assert!(
        lines[0].contains("STATE") && lines[0].contains("DEVICE/MOUNTPOINT"),
        "{table}"
    );
    let row = lines.iter().find(|l| l.contains("cli-web")).expect(&table);
    assert!(row.contains("running"), "{table}");
    // Columns are aligned: the state starts where its header does.
    assert_eq!(row.find("running"), lines[0].find("STATE"), "{table}");

    let mounts: Value =
        serde_json::from_str(&cli_ok(&svc, &["mount", "ls", "-o", "json"])).unwrap();
    let kinds: Vec<&str> = mounts
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["kind"].as_str())
        .collect();
    assert!(
        kinds.contains(&"overlay") && kinds.contains(&"attach"),
        "{mounts}"
    );
    let attaches = cli_ok(&svc, &["attach", "ls"]);
    assert!(
        attaches.contains("loopback") && attaches.contains("/dev/loop"),
        "{attaches}"
    );
    let yaml = cli_ok(&svc, &["container", "get", "cli-web", "-o", "yaml"]);
    assert!(yaml.contains("name: cli-web"), "{yaml}");

    cli_ok(&svc, &["container", "stop", "cli-web"]);
    cli_ok(
        &svc,
        &["wait", "cli-web", "--state", "exited", "--timeout", "20s"],
    );
    let removed = cli_ok(&svc, &["container", "rm", "cli-web"]);
    assert!(removed.contains("cli-web"), "{removed}");
    assert_eq!(
        cli_ok(&svc, &["container", "ls", "-o", "json"]).trim(),
        "[]"
    );
    svc.assert_empty();

    // Without a stream (404) `events` says so and exits 1; with one it saw the deletion.
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut events = events;
    while Instant::now() < deadline && events.try_wait().unwrap().is_none() {
        thread::sleep(Duration::from_millis(50));
    }
    match events.try_wait().unwrap() {
        Some(status) => {
            let mut message = String::new();
            events
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut message)
                .unwrap();
            assert_eq!(status.code(), Some(1), "{message}");
            assert!(message.contains("no event stream"), "{message}");
        }
        None => {
            let seen = read_until(events, "deleted container");
            assert!(seen.contains("created container"), "{seen}");
            assert!(seen.contains("deleted container"), "{seen}");
        }
    }
}

#[test]
fn refusals_print_the_service_message_and_exit_1() {
    let svc = Service::start();
    let missing = svc.dir().join("no-such-image");
    let body = svc.dir().join("attach.json");
    std::fs::write(
        &body,
        format!(
            r#"{{"kind": "loopback", "loopback": {{"path": "{}", "base": "root"}}}}"#,
            missing.display()
        ),
    )
    .unwrap();
    let refused = cli(&svc, &["attach", "create", "-f", body.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(1), "{}", stderr(&refused));
    let message = stderr(&refused);
    assert!(message.starts_with("error: "), "{message}");
    assert!(message.contains("status 4"), "{message}");
    assert!(message.contains("no-such-image"), "{message}");

    let absent = cli(&svc, &["container", "rm", "nobody"]);
    assert_eq!(absent.status.code(), Some(1), "{}", stderr(&absent));
    assert!(stderr(&absent).contains("nobody"), "{}", stderr(&absent));

    // The same definition from standard input, as a YAML mapping of the wrong object.
    let mut wrong = cli_command(&svc, &["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    wrong
        .stdin
        .take()
        .unwrap()
        .write_all(b"kind: floppy\n")
        .unwrap();
    let wrong = wrong.wait_with_output().unwrap();
    assert_eq!(wrong.status.code(), Some(2), "{}", stderr(&wrong));
    assert!(stderr(&wrong).contains("floppy"), "{}", stderr(&wrong));
    svc.assert_empty();
}

#[test]
fn usage_unreachable_and_timeouts_have_their_own_exit_codes() {
    let svc = Service::start_with_http();
    assert_eq!(cli(&svc, &["container", "frob"]).status.code(), Some(2));
    let gone = Command::new(CLI)
        .args(["--socket", "/nonexistent/imageapi.sock", "attach", "ls"])
        .output()
        .unwrap();
    assert_eq!(gone.status.code(), Some(3), "{}", stderr(&gone));
    assert!(
        stderr(&gone).contains("/nonexistent/imageapi.sock"),
        "{}",
        stderr(&gone)
    );

    let waited = cli(
        &svc,
        &["wait", "nobody", "--state", "running", "--timeout", "500ms"],
    );
    assert_eq!(waited.status.code(), Some(4), "{}", stderr(&waited));
    assert!(stderr(&waited).contains("absent"), "{}", stderr(&waited));

    // Over http, the same API.
    let url = format!("http://{}", svc.http_addr().unwrap());
    let listed = Command::new(CLI)
        .args(["--url", &url, "mount", "ls", "-o", "json"])
        .output()
        .unwrap();
    assert!(listed.status.success(), "{}", stderr(&listed));
    assert_eq!(stdout(&listed).trim(), "[]");
}

#[test]
fn completions_and_man_pages_are_generated() {
    let svc = Service::start();
    let bash = cli_ok(&svc, &["completions", "bash"]);
    assert!(
        bash.contains("_imageapi") && bash.contains("container"),
        "{bash}"
    );
    let zsh = cli_ok(&svc, &["completions", "zsh"]);
    assert!(zsh.contains("#compdef imageapi"), "{zsh}");
    let man = svc.dir().join("man");
    cli_ok(&svc, &["man", man.to_str().unwrap()]);
    let page = std::fs::read_to_string(man.join("imageapi.1")).unwrap();
    assert!(
        page.contains(".TH imageapi") && page.contains("Exit codes"),
        "{page}"
    );
    assert!(man.join("imageapi-container.1").exists());
    let server = std::fs::read_to_string(man.join("imageapi-server.8")).unwrap();
    assert!(
        server.contains(".TH imageapi-server 8") && server.contains("state\\-dir"),
        "{server}"
    );
}

#[test]
fn https_with_client_certificates_uses_the_servers_tls_flags() {
    let ca = harness::Authority::new("imageapi cli test CA");
    let other_ca = harness::Authority::new("someone else's CA");
    let port = harness::free_port();
    let server = harness::Server::start_prepared(|dir| ca.mutual_tls_server_args(dir, port), &[]);
    let dir = server.dir();
    let (client_cert, client_key) = ca.client("cli").write(dir, "cli");
    let other_ca_file = dir.join("other-ca.crt");
    std::fs::write(&other_ca_file, &other_ca.pem.certificate).unwrap();
    let url = format!("https://127.0.0.1:{port}");
    let run = |ca_file: &Path, client: bool| {
        let mut command = Command::new(CLI);
        command.args(["--url", &url, "--ca"]).arg(ca_file);
        if client {
            command
                .arg("--cert")
                .arg(&client_cert)
                .arg("--key")
                .arg(&client_key);
        }
        command
            .args(["attach", "ls", "-o", "json"])
            .output()
            .unwrap()
    };
    let served = run(&dir.join("ca.crt"), true);
    assert!(served.status.success(), "{}", stderr(&served));
    assert_eq!(stdout(&served).trim(), "[]");
    let anonymous = run(&dir.join("ca.crt"), false);
    assert_eq!(anonymous.status.code(), Some(3), "{}", stderr(&anonymous));
    let distrusted = run(&other_ca_file, true);
    assert_eq!(distrusted.status.code(), Some(3), "{}", stderr(&distrusted));
    assert!(
        stderr(&distrusted).contains(&url[8..]),
        "{}",
        stderr(&distrusted)
    );
    // A key without its certificate is a usage error.
    let half = Command::new(CLI)
        .args(["--url", &url, "--key"])
        .arg(&client_key)
        .args(["attach", "ls"])
        .output()
        .unwrap();
    assert_eq!(half.status.code(), Some(2), "{}", stderr(&half));
    drop(server);
}
