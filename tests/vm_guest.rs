//! The guest suite's own check (see `tests/vm/run.sh`): the guest runs Debian's kernel with the
//! network storage modules the other guest suites need, and the service works there as on the
//! host. Runs only in the guest (`--ignored`).

mod common;

use std::process::Command;

use common::*;

#[test]
#[ignore = "needs the guest kernel: tests/vm/run.sh"]
fn the_guest_kernel_has_the_network_storage_modules() {
    for (module, present) in [
        ("rbd", "/sys/bus/rbd"),
        ("iscsi_tcp", "/sys/module/iscsi_tcp"),
        ("nfsv4", "/sys/module/nfsv4"),
        ("nfsd", "/sys/module/nfsd"),
    ] {
        let status = Command::new("modprobe")
            .arg(module)
            .status()
            .expect("run modprobe");
        assert!(status.success(), "modprobe {module}: {status}");
        assert!(
            std::path::Path::new(present).exists(),
            "{present} is missing after modprobe {module}"
        );
    }
}

#[test]
#[ignore = "needs the guest kernel: tests/vm/run.sh"]
fn the_service_mounts_a_loopback_image_in_the_guest() {
    let svc = Service::start();
    let image = squashfs_image(svc.dir(), "guest");
    let mount = svc.create("mount", &squashfs_mount(&image));
    let mountpoint = mountpoint_of(&mount);
    assert!(is_mounted(&mountpoint), "{mount}");
    svc.remove("mount", id_of(&mount));
    svc.assert_empty();
    assert_no_leaks(svc.dir());
}
