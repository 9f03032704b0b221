//! The README's walkthrough, run as written: every `sh` block of its "Walkthrough" section, in
//! order, in one bash (`set -euo pipefail`), against a service of the test's own. Only the two
//! setting lines at its top change: the demo directory (a private one) and the service's
//! address (the port this service got). The test checks each HTTP status the walkthrough prints
//! and what its CLI part lists, and that nothing is left.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

/// The lines of the walkthrough that name where it works and which service it talks to.
const DEMO_LINE: &str = "demo=/tmp/demo";
const URL_LINE: &str = "export IMAGEAPI_URL=http://localhost:8080";

/// The statuses the walkthrough's `api` calls print, in order (see the README's comments).
const STATUSES: [u16; 17] = [
    201, 201, 201, 201, // attach, mount, overlay, nested overlay
    200, 200, 200, // lists
    409, 200, 200, // delete a used attachment, the nested overlay, the referencing overlay
    201, 200, 200, 200, // container: create running, get, stop, wait until exited
    200, 200, 200, // delete the container, mount 2, attachment 1
];

/// The shell blocks of the README's section `heading`, joined.
fn shell_blocks(readme: &str, heading: &str) -> String {
    let section = readme
        .split_once(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("no {heading:?} in the README"))
        .1;
    let section = section.split("\n## ").next().unwrap_or_default();
    let mut script = String::new();
    let mut in_block = false;
    for line in section.lines() {
        if in_block && line == "```" {
            in_block = false;
        } else if in_block {
            script.push_str(line);
            script.push('\n');
        } else if line == "```sh" {
            in_block = true;
        }
    }
    script
}

#[test]
fn the_walkthrough_works_as_written() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("read README.md");
    let script = shell_blocks(&readme, "## Walkthrough");
    assert!(
        script.lines().any(|l| l.starts_with(DEMO_LINE)),
        "the walkthrough no longer starts with {DEMO_LINE:?}:\n{script}"
    );
    assert!(
        script.lines().any(|l| l.starts_with(URL_LINE)),
        "the walkthrough no longer sets {URL_LINE:?}:\n{script}"
    );

    let svc = Service::start_with_http();
    let addr = svc.http_addr().expect("the service's http address");
    let demo = svc.dir().join("demo");
    let script = script
        .lines()
        .map(|line| {
            if line.starts_with(DEMO_LINE) {
                format!("demo={}", demo.display())
            } else if line.starts_with(URL_LINE) {
                format!("export IMAGEAPI_URL=http://{addr}")
            } else {
                line.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");

    // The CLI built with the tests comes first on PATH.
    let cli_dir = Path::new(env!("CARGO_BIN_EXE_imageapi"))
        .parent()
        .expect("the CLI's directory");
    let path = format!(
        "{}:{}",
        cli_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let output = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .env("PATH", path)
        .current_dir(svc.dir())
        .output()
        .expect("run bash");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the walkthrough failed ({}):\n{stdout}\n{stderr}\nservice:\n{}",
        output.status,
        svc.stderr_log()
    );

    let statuses: Vec<u16> = stdout
        .lines()
        .filter_map(|line| line.rsplit_once(" -> "))
        .filter_map(|(_, code)| code.trim().parse().ok())
        .collect();
    assert_eq!(statuses, STATUSES, "{stdout}");
    // The ids the comments promise: 1 for the first attachment, 6 for the nested overlay.
    let answers: Vec<&str> = stdout.lines().filter(|l| l.contains(" -> ")).collect();
    assert!(answers[0].starts_with(r#"{"id":1,"#), "{}", answers[0]);
    assert!(answers[3].starts_with(r#"{"id":6,"#), "{}", answers[3]);
    // The CLI's table listed its container.
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("web") && l.contains("running")),
        "{stdout}"
    );
    assert!(
        !demo.exists(),
        "the walkthrough's last line removes its dir"
    );
    svc.assert_empty();
}
