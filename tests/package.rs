//! The Debian package on a real systemd. This host's init is not systemd, so the package goes
//! where systemd is: a container of the service under test running the Debian bookworm image
//! with systemd as its init. There `dpkg -i` installs the package built by
//! `src/package/deb.sh` (tests/run.sh builds it before the suite; `IMAGEAPI_DEB` names another
//! one), and its maintainer scripts enable and start `imageapi.service`. The test checks:
//! - the unit passes `systemd-analyze verify` and has the settings the service relies on;
//! - the service is `active` (with `Type=notify`, only after it said READY=1, which it says
//!   once its restore is done and its listeners are up) and answers the CLI on its socket;
//! - the package holds both binaries, the man pages and the completions;
//! - a restart of the unit leaves the service's own container running (`KillMode=process`),
//!   and the new process adopts it;
//! - a purge stops the service; the container it leaves is killed here.
//!
//! It fails, rather than skips, when the package is missing.

mod common;

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// How long systemd may take to finish booting.
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);

/// The package to install: `IMAGEAPI_DEB`, else the newest `target/debian/imageapi_*.deb`.
fn package() -> PathBuf {
    if let Some(path) = std::env::var_os("IMAGEAPI_DEB") {
        return PathBuf::from(path);
    }
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/debian");
    let newest = fs::read_dir(&dir).ok().and_then(|entries| {
        entries
            .flatten()
            .filter(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.starts_with("imageapi_") && name.ends_with(".deb")
            })
            .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
            .map(|e| e.path())
    });
    newest.unwrap_or_else(|| {
        panic!(
            "no imageapi_*.deb in {}: build it with src/package/deb.sh (tests/run.sh does)",
            dir.display()
        )
    })
}

/// Runs the `imageapi` CLI inside the container with `-o json` and parses what it printed.
fn cli_json(container: &SystemdContainer, args: &[&str]) -> Value {
    let mut command = vec!["imageapi", "-o", "json"];
    command.extend_from_slice(args);
    let out = container.run_ok(&command);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{command:?}: {e}:\n{out}"))
}

#[test]
fn the_package_installs_and_its_unit_runs_the_service_under_systemd() {
    let deb = package();
    let image = debian_systemd_image(&test_images_dir());
    let svc = Service::start();
    let (_, node) = SystemdContainer::create(&svc, "node", &image);
    let booted = node.wait_until_booted(BOOT_TIMEOUT);
    assert_eq!(booted, "running", "{}", node.console());

    // Installed as an operator would: dpkg in the node, whose postinst enables and starts it.
    let inside = format!("/proc/{}/root/root/imageapi.deb", node.pid);
    fs::copy(&deb, &inside).expect("copy the package into the container");
    let installed = node.run_status(&["dpkg", "-i", "/root/imageapi.deb"]);
    assert!(
        installed.0,
        "dpkg -i failed:\n{}\njournal:\n{}",
        installed.1,
        node.run(&["journalctl", "-u", "imageapi", "--no-pager"])
    );

    // The unit as systemd reads it. The image has no man-db to look its Documentation= pages
    // up with (`--man=no`); the pages themselves are checked below.
    let verified = node.run_status(&[
        "systemd-analyze",
        "verify",
        "--man=no",
        "/lib/systemd/system/imageapi.service",
    ]);
    assert!(verified.0, "systemd-analyze verify:\n{}", verified.1);
    assert_eq!(verified.1.trim(), "", "systemd-analyze verify warned");
    let settings = node.run_ok(&[
        "systemctl",
        "show",
        "imageapi",
        "--property=Type,KillMode,Delegate,NotifyAccess,ActiveState,UnitFileState",
    ]);
    for wanted in [
        "Type=notify",
        "KillMode=process",
        "Delegate=yes",
        "NotifyAccess=main",
        "ActiveState=active",
        "UnitFileState=enabled",
    ] {
        assert!(
            settings.lines().any(|line| line == wanted),
            "no {wanted}:\n{settings}"
        );
    }

    // What the package holds.
    for path in [
        "/usr/bin/imageapi-server",
        "/usr/bin/imageapi",
        "/usr/libexec/imageapi/imageapi-init",
        "/etc/default/imageapi",
        "/usr/share/man/man1/imageapi.1.gz",
        "/usr/share/man/man1/imageapi-container.1.gz",
        "/usr/share/man/man8/imageapi-server.8.gz",
        "/usr/share/bash-completion/completions/imageapi",
        "/usr/share/zsh/vendor-completions/_imageapi",
        "/usr/share/fish/vendor_completions.d/imageapi.fish",
    ] {
        node.run_ok(&["test", "-s", path]);
    }

    // The packaged service answers its CLI on the default socket.
    assert_eq!(cli_json(&node, &["container", "ls"]), json!([]));

    // A container of the packaged service, on a bind mount of the node's own root.
    let definition = "container:\n  name: inner\n  command: /bin/sleep 1000\n  state: running\n  \
                      mount:\n    kind: bind\n    bind: {path: /, base: root}\n";
    fs::write(
        format!("/proc/{}/root/root/inner.yaml", node.pid),
        definition,
    )
    .expect("write the definition");
    node.run_ok(&["imageapi", "apply", "-f", "/root/inner.yaml"]);
    node.run_ok(&["imageapi", "wait", "inner", "--state", "running"]);
    let before = cli_json(&node, &["container", "get", "inner"])[0].clone();
    let inner_log = format!("/proc/{}/root{}", node.pid, str_of(&before, "/logfile"));
    // As the node's pid namespace numbers it.
    let inner_pid = init_pid(inner_log.as_ref()).to_string();
    let old_service = node.run_ok(&["systemctl", "show", "imageapi", "--property=MainPID"]);

    // A restart signals only the service; the new process adopts the running container.
    node.run_ok(&["systemctl", "restart", "imageapi"]);
    let new_service = node.run_ok(&["systemctl", "show", "imageapi", "--property=MainPID"]);
    assert_ne!(old_service, new_service, "the service did not restart");
    let after = cli_json(&node, &["container", "get", "inner"])[0].clone();
    assert_eq!(after["state"], "running", "{after}");
    assert_eq!(after["id"], before["id"], "{after}");
    let command = node.run_ok(&["cat", &format!("/proc/{inner_pid}/cmdline")]);
    assert!(command.starts_with("/bin/sleep"), "{command:?}");
    node.run_ok(&["imageapi", "container", "rm", "--force", "inner"]);

    // Removed as an operator would: the service stops with it.
    node.run_ok(&["dpkg", "--purge", "imageapi"]);
    let (active, _) = node.run_status(&["systemctl", "is-active", "--quiet", "imageapi"]);
    assert!(!active, "imageapi.service still runs after the purge");

    let stopped = svc.request("PATCH", "/container?name=node&state=exited", None);
    assert_eq!(stopped.status, 200, "{stopped}");
    let exited = wait_for(Duration::from_secs(30), || {
        svc.get("/container?name=node").json()[0]["state"] == "exited"
    });
    assert!(exited, "the node did not shut down:\n{}", node.console());
    let deleted = svc.delete("/container?name=node");
    assert_eq!(deleted.status, 200, "{deleted}");
    svc.assert_empty();
}
