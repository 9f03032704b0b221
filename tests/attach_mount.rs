//! End-to-end tests of attachments and mounts against the kernel: loop devices, squashfs/ext4
//! mounts, binds, overlays, references, garbage collection, forced deletes and shutdown.
//!
//! Each test starts its own service in its own temp dir and only looks at kernel resources under
//! that dir, so the tests run in parallel.

mod common;

use std::collections::HashSet;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::thread;

use common::*;
use serde_json::{json, Value};

fn read(path: impl AsRef<Path>) -> String {
    let path = path.as_ref();
    fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn assert_erofs(path: impl AsRef<Path>) {
    let path = path.as_ref();
    match fs::write(path, "x") {
        Ok(()) => panic!("writing {} succeeded on a read-only mount", path.display()),
        Err(e) => assert_eq!(
            e.raw_os_error(),
            Some(EROFS),
            "writing {}: {e}",
            path.display()
        ),
    }
}

fn assert_mount_options(mount_point: &str, options: &[&str]) -> MountEntry {
    let entry = mount_entry(mount_point)
        .unwrap_or_else(|| panic!("{mount_point} is not in /proc/self/mountinfo"));
    for opt in options {
        assert!(
            entry.has_option(opt),
            "{mount_point} lacks option {opt}: {:?}",
            entry.options
        );
    }
    entry
}

fn assert_under(path: &str, dir: &Path) {
    assert!(
        Path::new(path).starts_with(dir),
        "{path} is not under {}",
        dir.display()
    );
}

// ---------------------------------------------------------------------------------------------
// Attachments
// ---------------------------------------------------------------------------------------------

#[test]
fn loopback_root_attach_list_and_delete() {
    let mut svc = Service::start();
    let img = squashfs_image(svc.dir(), "a");

    let a = svc.create("attach", &loopback(&img));
    assert_eq!(id_of(&a), 1, "{a}");
    assert_eq!(refs_of(&a), 1, "{a}");
    assert_eq!(a["kind"], "loopback", "{a}");
    assert_eq!(a["loopback"]["base"], "root", "{a}");
    let dev = device_of(&a);
    assert!(dev.starts_with("/dev/loop"), "device_file {dev}");
    assert!(Path::new(&dev).exists(), "{dev} does not exist");
    assert_eq!(
        loop_backing_file(&dev).as_deref(),
        Some(img.to_str().unwrap()),
        "backing file of {dev}"
    );
    assert_eq!(loop_partscan(&dev), Some(false), "partscan of {dev}");

    let all = svc.list("/attach");
    assert_eq!(ids(&all), vec![1]);
    assert_eq!(device_of(&all[0]), dev);
    assert_eq!(refs_of(&all[0]), 1);
    let one = svc.get_one("attach", 1);
    assert_eq!(device_of(&one), dev);
    assert!(svc.list("/mount").is_empty());

    let gone = svc.remove("attach", 1);
    assert_eq!(device_of(&gone), dev, "DELETE answers the detached attach");
    assert_eq!(gone["kind"], "loopback");
    assert_detached(&dev, &img);
    svc.assert_empty();
    assert_error(&svc.get("/attach?id=1"), 404);

    // Ids are never reused.
    let b = svc.create("attach", &loopback(&img));
    assert_eq!(id_of(&b), 2, "{b}");
    svc.remove("attach", 2);

    svc.stop_ok();
    assert_no_leaks(svc.dir());
}

#[test]
fn loopback_read_partitions_sets_partscan() {
    let mut svc = Service::start();
    let img = squashfs_image(svc.dir(), "parts");
    // A base-root path is relative to `/`: send it without the leading slash.
    let rel = img
        .strip_prefix("/")
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let a = svc.create(
        "attach",
        &json!({
            "kind": "loopback",
            "loopback": { "path": rel, "base": "root", "readPartitions": true }
        }),
    );
    let dev = device_of(&a);
    assert_eq!(a["loopback"]["readPartitions"], true, "{a}");
    assert_eq!(
        loop_backing_file(&dev).as_deref(),
        Some(img.to_str().unwrap())
    );
    assert_eq!(loop_partscan(&dev), Some(true), "partscan of {dev}");
    svc.remove("attach", id_of(&a));
    assert_detached(&dev, &img);
    svc.stop_ok();
    assert_no_leaks(svc.dir());
}

#[test]
fn local_attach_of_a_block_device() {
    let mut svc = Service::start();
    let img = squashfs_image(svc.dir(), "local");
    let lo = svc.create("attach", &loopback(&img));
    let dev = device_of(&lo);

    let local_attach = svc.create("attach", &local(&dev));
    assert_eq!(id_of(&local_attach), 2);
    assert_eq!(local_attach["kind"], "local");
    assert_eq!(device_of(&local_attach), dev);
    assert_eq!(refs_of(&local_attach), 1);
    assert_eq!(ids(&svc.list("/attach?kind=local")), vec![2]);

    // A mount of the local attach reads the loop device's filesystem.
    let m = svc.create("mount", &attach_mount(by_id(2), "squashfs", &["ro"]));
    assert_eq!(
        read(format!("{}/hello.txt", mountpoint_of(&m))),
        hello_text("local")
    );
    svc.remove("mount", id_of(&m));

    // Removing a local attach does not touch the device.
    svc.remove("attach", 2);
    assert_eq!(
        loop_backing_file(&dev).as_deref(),
        Some(img.to_str().unwrap())
    );
    svc.remove("attach", 1);
    assert_detached(&dev, &img);
    svc.stop_ok();
    assert_no_leaks(svc.dir());
}

#[test]
fn parallel_loopback_attaches() {
    let mut svc = Service::start();
    let img = squashfs_image(svc.dir(), "par");
    let images: Vec<_> = (0..6)
        .map(|i| {
            let copy = svc.dir().join(format!("par{i}.squashfs"));
            fs::copy(&img, &copy).unwrap();
            copy
        })
        .collect();

    let created: Vec<Value> = thread::scope(|s| {
        let handles: Vec<_> = images
            .iter()
            .map(|image| {
                let svc = &svc;
                s.spawn(move || svc.post("/attach", &loopback(image)))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                let resp = h.join().expect("thread");
                assert_eq!(resp.status, 201, "parallel POST /attach: {resp}");
                resp.json()
            })
            .collect()
    });

    let devices: HashSet<String> = created.iter().map(device_of).collect();
    assert_eq!(devices.len(), 6, "devices not distinct: {created:?}");
    let id_set: HashSet<i64> = created.iter().map(id_of).collect();
    assert_eq!(id_set, (1..=6).collect(), "ids of {created:?}");
    for a in &created {
        let path = str_of(a, "/loopback/path");
        assert_eq!(
            loop_backing_file(&device_of(a)).as_deref(),
            Some(path),
            "{a}"
        );
    }
    assert_eq!(svc.list("/attach").len(), 6);

    thread::scope(|s| {
        for a in &created {
            let svc = &svc;
            s.spawn(move || {
                let resp = svc.delete(&format!("/attach?id={}", id_of(a)));
                assert_eq!(resp.status, 200, "parallel DELETE: {resp}");
            });
        }
    });
    for a in &created {
        assert_detached(&device_of(a), Path::new(str_of(a, "/loopback/path")));
    }
    svc.assert_empty();
    svc.stop_ok();
    assert_no_leaks(svc.dir());
}

// ---------------------------------------------------------------------------------------------
// Attach mounts
// ---------------------------------------------------------------------------------------------

#[test]
fn squashfs_mount_with_options() {
    let mut svc = Service::start();
    let img = squashfs_image(svc.dir(), "sq");
    let m = svc.create(
        "mount",
        &attach_mount(loopback(&img), "squashfs", &["ro", "nodev", "noexec"]),
    );
    // Bottom-up registration: loopback 1, mount 2.
    assert_eq!(id_of(&m), 2, "{m}");
    assert_eq!(refs_of(&m), 1, "{m}");
    assert_eq!(m["kind"], "attach");
    assert_eq!(m["attach"]["fs_type"], "squashfs");
    let inner = &m["attach"]["attach"];
    assert_eq!(id_of(inner), 1, "{m}");
    assert_eq!(refs_of(inner), 1, "{m}");
    let dev = device_of(inner);
    assert!(dev.starts_with("/dev/loop"), "{m}");
    let mp = mountpoint_of(&m);
    assert_under(&mp, &svc.mount_dir());

    let entry = assert_mount_options(&mp, &["ro", "nodev", "noexec"]);
    assert_eq!(entry.fs_type, "squashfs");
    assert_eq!(entry.source, dev);
    assert_eq!(read(format!("{mp}/hello.txt")), hello_text("sq"));
    assert_eq!(read(format!("{mp}/dir/nested.txt")), NESTED_TEXT);
    assert_erofs(format!("{mp}/new.txt"));

    // The nested attach is listed, owned by the mount: refs 1, not deletable on its own.
    let attaches = svc.list("/attach");
    assert_eq!(ids(&attaches), vec![1]);
    assert_eq!(refs_of(&attaches[0]), 1);
    assert_error(&svc.delete("/attach?id=1"), 409);
    assert_eq!(svc.refs("attach", 1), 1);

    let gone = svc.remove("mount", 2);
    assert_eq!(mountpoint_of(&gone), mp);
    assert!(!is_mounted(&mp), "{mp} still mounted after DELETE answered");
    assert_detached(&dev, &img);
    svc.assert_empty();
    svc.stop_ok();
    assert_no_leaks(svc.dir());
}

#[test]
fn ext4_mount_read_only() {
    let mut svc = Service::start();
    let img = ext4_image(svc.dir(), "ext");
    let m = svc.create("mount", &attach_mount(loopback(&img), "ext4", &["ro"]));
    let mp = mountpoint_of(&m);
    let entry = assert_mount_options(&mp, &["ro"]);
    assert_eq!(entry.fs_type, "ext4");
    assert_eq!(read(format!("{mp}/hello.txt")), hello_text("ext"));
    assert!(Path::new(&format!("{mp}/bin/busybox")).is_file());
    assert_erofs(format!("{mp}/new.txt"));
    let dev = device_of(&m["attach"]["attach"]);
    svc.remove("mount", id_of(&m));
    assert!(!is_mounted(&mp));
    assert_detached(&dev, &img);
    svc.assert_empty();
    svc.stop_ok();
    assert_no_leaks(svc.dir());
}

#[test]
fn loopback_base_mount_nested() {
    let mut svc = Service::start();
    let outer = outer_squashfs_image(svc.dir(), "outer");
    let a = svc.create("attach", &loopback_in(squashfs_mount(&outer), INNER_IMAGE));
    // loopback of outer 1, its mount 2, loopback of inner 3.
    assert_eq!(id_of(&a), 3, "{a}");
    let base = &a["loopback"]["mount"];
    assert_eq!(id_of(base), 2, "{a}");
    assert_eq!(id_of(&base["attach"]["attach"]), 1, "{a}");
    let outer_dev = device_of(&base["attach"]["attach"]);
    let mp = mountpoint_of(base);
    let dev = device_of(&a);
    assert_ne!(dev, outer_dev);
    let inner_path = format!("{mp}/{INNER_IMAGE}");
    assert_eq!(
        loop_backing_file(&dev).as_deref(),
        Some(inner_path.as_str())
    );

    assert_eq!(ids(&svc.list("/attach")), vec![1, 3]);
    assert_eq!(ids(&svc.list("/mount")), vec![2]);
    assert_eq!(svc.refs("mount", 2), 1);
    assert_error(&svc.delete("/mount?id=2"), 409);

    svc.remove("attach", 3);
    svc.assert_empty();
    assert!(!is_mounted(&mp), "{mp} still mounted");
    assert_detached(&dev, Path::new(&inner_path));
    assert_detached(&outer_dev, &outer);
    svc.stop_ok();
    assert_no_leaks(svc.dir());
}

#[test]
fn loopback_base_mount_by_id_and_mount_of_it() {
    let mut svc = Service::start();
    let outer = outer_squashfs_image(svc.dir(), "outer");
    let m = svc.create("mount", &squashfs_mount(&outer));
    assert_eq!(id_of(&m), 2);
    let mp = mountpoint_of(&m);

    let a = svc.create("attach", &loopback_in(by_id(2), INNER_IMAGE));
    assert_eq!(id_of(&a), 3, "{a}");
    assert_eq!(
        str_of(&a, "/loopback/mount/mountpoint"),
        mp,
        "referenced base resolved"
    );
    let dev = device_of(&a);
    let inner_path = format!("{mp}/{INNER_IMAGE}");
    assert_eq!(
        loop_backing_file(&dev).as_deref(),
        Some(inner_path.as_str())
    );
    assert_eq!(svc.refs("mount", 2), 2);

    let inner_mount = svc.create("mount", &attach_mount(by_id(3), "squashfs", &["ro"]));
    assert_eq!(id_of(&inner_mount), 4);
    assert_eq!(device_of(&inner_mount["attach"]["attach"]), dev);
    let inner_mp = mountpoint_of(&inner_mount);
    assert_eq!(read(format!("{inner_mp}/hello.txt")), hello_text("inner"));
    assert_eq!(svc.refs("attach", 3), 2);

    assert_error(&svc.delete("/mount?id=2"), 409);
    assert_error(&svc.delete("/attach?id=3"), 409);
    assert_eq!(svc.refs("mount", 2), 2, "a refused DELETE keeps refs");
    assert_eq!(svc.refs("attach", 3), 2, "a refused DELETE keeps refs");

    svc.remove("mount", 4);
    assert!(!is_mounted(&inner_mp));
    assert_eq!(svc.refs("attach", 3), 1);
    assert_eq!(
        loop_backing_file(&dev).as_deref(),
        Some(inner_path.as_str())
    );
    svc.remove("attach", 3);
    assert_eq!(svc.refs("mount", 2), 1);
    assert!(is_mounted(&mp), "referenced mount must stay");
    svc.remove("mount", 2);
    assert!(!is_mounted(&mp));
    svc.assert_empty();
    svc.stop_ok();
    assert_no_leaks(svc.dir());
}

// ---------------------------------------------------------------------------------------------
// Bind mounts
// ---------------------------------------------------------------------------------------------

#[test]
fn bind_root_same_filesystem_is_unmounted() {
    let mut svc = Service::start();
    let src = svc.dir().join("bindsrc");
    write_tree(&src, &[("file.txt", "bound\n")]);

    let b = svc.create("mount", &bind_root(&src, false, false));
    assert_eq!(id_of(&b), 1);
    assert_eq!(refs_of(&b), 1);
    assert_eq!(b["kind"], "bind");
    let mp = mountpoint_of(&b);
    assert_under(&mp, &svc.mount_dir());
    assert!(is_mounted(&mp), "{mp} not mounted");
    assert_eq!(read(format!("{mp}/file.txt")), "bound\n");
    fs::write(format!("{mp}/written.txt"), "w\n").expect("write through a rw bind");
    assert_eq!(read(src.join("written.txt")), "w\n");

    svc.remove("mount", 1);
    // The reference never unmounted a bind of a dir on the same filesystem.
    assert!(!is_mounted(&mp), "{mp} still mounted after DELETE");
    svc.assert_empty();
    svc.stop_ok();
    assert_no_leaks(svc.dir());
}

#[test]
fn bind_root_read_only() {
    let mut svc = Service::start();
    let src = svc.dir().join("rosrc");
    write_tree(&src, &[("file.txt", "ro\n")]);
    let b = svc.create("mount", &bind_root(&src, false, true));
    let mp = mountpoint_of(&b);
    assert_mount_options(&mp, &["ro"]);
    assert_eq!(read(format!("{mp}/file.txt")), "ro\n");
    assert_erofs(format!("{mp}/new.txt"));
    assert_erofs(format!("{mp}/file.txt"));
    assert!(!src.join("new.txt").exists());
    // The source itself stays writable.
    fs::write(src.join("direct.txt"), "d\n").unwrap();
    svc.remove("mount", id_of(&b));
    assert!(!is_mounted(&mp));
    svc.stop_ok();
    assert_no_leaks(svc.dir());
}

#[test]
fn bind_recursive_includes_submounts() {
    let mut svc = Service::start();
    let src = svc.dir().join("rsrc");
    let sub = src.join("sub");
    fs::create_dir_all(&sub).unwrap();
    write_tree(&src, &[("top.txt", "top\n")]);
    run(Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "imageapi-e2e"])
        .arg(&sub));
    fs::write(sub.join("inside.txt"), "inside\n").unwrap();

    let flat = svc.create("mount", &bind_root(&src, false, false));
    let rec = svc.create("mount", &bind_root(&src, true, false));
    let flat_mp = mountpoint_of(&flat);
    let rec_mp = mountpoint_of(&rec);
    assert_eq!(read(format!("{flat_mp}/top.txt")), "top\n");
    assert_eq!(read(format!("{rec_mp}/top.txt")), "top\n");
    assert!(
        !Path::new(&format!("{flat_mp}/sub/inside.txt")).exists(),
        "a non-recursive bind shows the submount"
    );
    assert_eq!(read(format!("{rec_mp}/sub/inside.txt")), "inside\n");
    assert!(is_mounted(&format!("{rec_mp}/sub")));
    assert_eq!(rec["bind"]["recursive"], true);

    svc.remove("mount", id_of(&rec));
    svc.remove("mount", id_of(&flat));
    assert!(!is_mounted(&rec_mp));
    assert!(!is_mounted(&format!("{rec_mp}/sub")));
    assert!(!is_mounted(&flat_mp));

    let c = std::ffi::CString::new(sub.to_str().unwrap()).unwrap();
    // SAFETY: umount2 with a valid NUL-terminated path of the tmpfs this test mounted.
    let rc = unsafe { libc::umount2(c.as_ptr(), 0) };
    assert_eq!(
        rc,
        0,
        "umount {}: {}",
        sub.display(),
        std::io::Error::last_os_error()
    );
    svc.stop_ok();
    assert_no_leaks(svc.dir());
}

#[test]
fn bind_base_mount_nested_and_by_id() {
    let mut svc = Service::start();
    let img = squashfs_image(svc.dir(), "bb");

    // Nested: loopback 1, squashfs mount 2, bind 3.
    let b = svc.create("mount", &bind_in(squashfs_mount(&img), "dir", false, false));
    assert_eq!(id_of(&b), 3, "{b}");
    assert_eq!(id_of(&b["bind"]["mount"]), 2, "{b}");
    let base_mp = mountpoint_of(&b["bind"]["mount"]);
    let mp = mountpoint_of(&b);
    assert_eq!(read(format!("{mp}/nested.txt")), NESTED_TEXT);
    assert_error(&svc.delete("/mount?id=2"), 409);
    svc.remove("mount", 3);
    assert!(!is_mounted(&mp));
    assert!(!is_mounted(&base_mp), "owned base mount not collected");
    svc.assert_empty();

    // By id: loopback 4, mount 5, bind 6.
    let m = svc.create("mount", &squashfs_mount(&img));
    let mid = id_of(&m);
    assert_eq!(mid, 5);
    let b = svc.create("mount", &bind_in(by_id(mid), "dir", false, true));
    assert_eq!(id_of(&b), 6);
    let mp = mountpoint_of(&b);
    assert_eq!(read(format!("{mp}/nested.txt")), NESTED_TEXT);
    assert_mount_options(&mp, &["ro"]);
    assert_eq!(svc.refs("mount", mid), 2);
    svc.remove("mount", 6);
    assert!(!is_mounted(&mp));
    assert_eq!(svc.refs("mount", mid), 1);
    assert!(is_mounted(&mountpoint_of(&m)));
    svc.remove("mount", mid);
    svc.assert_empty();
    svc.stop_ok();
    assert_no_leaks(svc.dir());
}

// ---------------------------------------------------------------------------------------------
// Overlays
// ---------------------------------------------------------------------------------------------

#[test]
fn overlay_of_two_lowers() {
    let mut svc = Service::start();
    let a = squashfs_with(svc.dir(), "a", &[("a_only.txt", "a\n")]);
    let b = squashfs_with(svc.dir(), "b", &[("b_only.txt", "b\n")]);

    let o = svc.create(
        "mount",
        &overlay(vec![squashfs_mount(&a), squashfs_mount(&b)]),
    );
    assert_eq!(
        id_of(&o),
        5,
        "bottom-up: both lowers (1..4) before the overlay: {o}"
    );
    assert_eq!(o["kind"], "overlay");
    let lowers = o["overlay"]["lower"]
        .as_array()
        .expect("lower array")
        .clone();
    assert_eq!(lowers.len(), 2);
    assert_eq!(
        str_of(&lowers[0], "/attach/attach/loopback/path"),
        a.to_str().unwrap(),
        "lower order kept"
    );
    assert_eq!(
        str_of(&lowers[1], "/attach/attach/loopback/path"),
        b.to_str().unwrap(),
        "lower order kept"
    );
    let lower_mps: Vec<String> = lowers.iter().map(mountpoint_of).collect();
    let lower_devs: Vec<String> = lowers
        .iter()
        .map(|l| device_of(&l["attach"]["attach"]))
        .collect();
    assert_eq!(ids(&svc.list("/mount")), vec![2, 4, 5]);
    assert_eq!(ids(&svc.list("/attach")), vec![1, 3]);

    let mp = mountpoint_of(&o);
    let upper = str_of(&o, "/overlay/upperdir").to_string();
    let work = str_of(&o, "/overlay/workdir").to_string();
    assert!(Path::new(&upper).is_dir(), "upperdir {upper} missing");
    assert!(Path::new(&work).is_dir(), "workdir {work} missing");
    let entry = mount_entry(&mp).expect("overlay mounted");
    assert_eq!(entry.fs_type, "overlay");
    assert!(!entry.has_option("ro"), "overlay must be read-write");

    assert_eq!(
        read(format!("{mp}/hello.txt")),
        hello_text("a"),
        "first lower is on top"
    );
    assert_eq!(read(format!("{mp}/a_only.txt")), "a\n");
    assert_eq!(read(format!("{mp}/b_only.txt")), "b\n");
    fs::write(format!("{mp}/new.txt"), "new\n").expect("write to overlay");
    assert_eq!(
        read(format!("{upper}/new.txt")),
        "new\n",
        "write lands in upperdir"
    );

    svc.remove("mount", 5);
    assert!(!is_mounted(&mp));
    for lower in &lower_mps {
        assert!(!is_mounted(lower), "lower {lower} not collected");
    }
    assert!(!Path::new(&upper).exists(), "upperdir {upper} left");
    assert!(!Path::new(&work).exists(), "workdir {work} left");
    assert_detached(&lower_devs[0], &a);
    assert_detached(&lower_devs[1], &b);
    svc.assert_empty();
    svc.stop_ok();
    assert_no_leaks(svc.dir());
}

#[test]
fn overlay_of_one_lower_by_id() {
    let mut svc = Service::start();
    let img = squashfs_image(svc.dir(), "one");
    let m = svc.create("mount", &squashfs_mount(&img));
    let lower_mp = mountpoint_of(&m);
    let o = svc.create("mount", &overlay(vec![by_id(2)]));
    assert_eq!(id_of(&o), 3);
    assert_eq!(str_of(&o, "/overlay/lower/0/mountpoint"), lower_mp, "{o}");
    assert_eq!(svc.refs("mount", 2), 2);

    let mp = mountpoint_of(&o);
    let upper = str_of(&o, "/overlay/upperdir").to_string();
    let work = str_of(&o, "/overlay/workdir").to_string();
    assert_eq!(read(format!("{mp}/hello.txt")), hello_text("one"));
    fs::write(format!("{mp}/hello.txt"), "changed\n").expect("copy-up");
    assert_eq!(read(format!("{mp}/hello.txt")), "changed\n");
    assert_eq!(read(format!("{upper}/hello.txt")), "changed\n");
    assert_eq!(read(format!("{lower_mp}/hello.txt")), hello_text("one"));

    assert_error(&svc.delete("/mount?id=2"), 409);
    svc.remove("mount", 3);
    assert!(!is_mounted(&mp));
    assert!(!Path::new(&upper).exists(), "upperdir {upper} left");
    assert!(!Path::new(&work).exists(), "workdir {work} left");
    assert!(is_mounted(&lower_mp), "referenced lower must stay");
    assert_eq!(svc.refs("mount", 2), 1);
    svc.remove("mount", 2);
    svc.assert_empty();
    svc.stop_ok();
    assert_no_leaks(svc.dir());
}

// ---------------------------------------------------------------------------------------------
// Lists
// ---------------------------------------------------------------------------------------------

#[test]
fn list_filters_by_kind_and_id() {
    let mut svc = Service::start();
    let img = squashfs_image(svc.dir(), "lf");
    let src = svc.dir().join("lfsrc");
    fs::create_dir_all(&src).unwrap();
    svc.create("attach", &loopback(&img)); // 1
    svc.create("mount", &squashfs_mount(&img)); // 2, 3
    svc.create("mount", &bind_root(&src, false, false)); // 4

    assert_eq!(ids(&svc.list("/attach")), vec![1, 2]);
    assert_eq!(ids(&svc.list("/mount")), vec![3, 4]);
    assert_eq!(ids(&svc.list("/attach?kind=loopback")), vec![1, 2]);
    assert!(svc.list("/attach?kind=local").is_empty());
    assert!(svc.list("/attach?kind=rbd").is_empty());
    assert!(svc.list("/attach?kind=iscsi").is_empty());
    assert_eq!(ids(&svc.list("/mount?kind=attach")), vec![3]);
    assert_eq!(ids(&svc.list("/mount?kind=bind")), vec![4]);
    assert!(svc.list("/mount?kind=overlay").is_empty());
    assert!(svc.list("/mount?kind=nfs").is_empty());
    assert!(svc.list("/mount?kind=uri").is_empty());

    assert_eq!(id_of(&svc.get_one("attach", 2)), 2);
    assert_eq!(id_of(&svc.get_one("mount", 4)), 4);
    assert_error(&svc.get("/attach?id=999"), 404);
    assert_error(&svc.get("/mount?id=999"), 404);
    assert_error(&svc.get("/attach?id=3"), 404); // a mount's id
    assert_error(&svc.get("/mount?id=1"), 404); // an attach's id

    svc.remove("mount", 4);
    svc.remove("mount", 3);
    svc.remove("attach", 1);
    svc.assert_empty();
    svc.stop_ok();
    assert_no_leaks(svc.dir());
}

// ---------------------------------------------------------------------------------------------
// References and garbage collection
// ---------------------------------------------------------------------------------------------

#[test]
fn nested_overlay_is_collected_by_one_delete() {
    let mut svc = Service::start();
    let img = squashfs_image(svc.dir(), "gc");
    let o = svc.create("mount", &overlay(vec![squashfs_mount(&img)]));
    assert_eq!(id_of(&o), 3, "{o}");
    assert_eq!(refs_of(&o), 1);
    let lower = &o["overlay"]["lower"][0];
    assert_eq!(id_of(lower), 2, "{o}");
    assert_eq!(refs_of(lower), 1, "{o}");
    let lo = &lower["attach"]["attach"];
    assert_eq!(id_of(lo), 1, "{o}");
    assert_eq!(refs_of(lo), 1, "{o}");
    let dev = device_of(lo);
    let lower_mp = mountpoint_of(lower);
    let mp = mountpoint_of(&o);
    str_of(&o, "/overlay/upperdir");
    str_of(&o, "/overlay/workdir");
    assert!(is_mounted(&lower_mp) && is_mounted(&mp));

    let attaches = svc.list("/attach");
    assert_eq!(ids(&attaches), vec![1]);
    assert_eq!(refs_of(&attaches[0]), 1);
    let mounts = svc.list("/mount");
    assert_eq!(ids(&mounts), vec![2, 3]);
    assert!(mounts.iter().all(|m| refs_of(m) == 1), "{mounts:?}");

    assert_error(&svc.delete("/attach?id=1"), 409);
    assert_error(&svc.delete("/mount?id=2"), 409);
    assert_eq!(svc.refs("attach", 1), 1);
    assert_eq!(svc.refs("mount", 2), 1);

    let gone = svc.remove("mount", 3);
    assert_eq!(gone["kind"], "overlay");
    // Collected before DELETE answered.
    svc.assert_empty();
    assert!(!is_mounted(&mp));
    assert!(!is_mounted(&lower_mp));
    assert_detached(&dev, &img);
    svc.stop_ok();
    assert_no_leaks(svc.dir());
}

#[test]
fn reference_by_id_holds_a_ref() {
    let mut svc = Service::start();
    let img = squashfs_image(svc.dir(), "ref");
    let a = svc.create("attach", &loopback(&img));
    let dev = device_of(&a);
    let m = svc.create("mount", &attach_mount(by_id(1), "squashfs", &["ro"]));
    assert_eq!(id_of(&m), 2);
    assert_eq!(
        device_of(&m["attach"]["attach"]),
        dev,
        "referenced attach resolved"
    );
    let mp = mountpoint_of(&m);
    assert_eq!(svc.refs("attach", 1), 2);
    assert_eq!(refs_of(&m), 1);

    let busy = assert_error(&svc.delete("/attach?id=1"), 409);
    assert!(!busy["message"].as_str().unwrap().is_empty());
    assert_eq!(svc.refs("attach", 1), 2);

    svc.remove("mount", 2);
    assert!(!is_mounted(&mp));
    assert_eq!(svc.refs("attach", 1), 1);
    assert_eq!(
        loop_backing_file(&dev).as_deref(),
        Some(img.to_str().unwrap()),
        "a referenced attach stays"
    );
    svc.remove("attach", 1);
    assert_detached(&dev, &img);
    svc.assert_empty();
    svc.stop_ok();
    assert_no_leaks(svc.dir());
}

#[test]
fn multi_level_references() {
    let mut svc = Service::start();
    let img = squashfs_image(svc.dir(), "ml");
    let m = svc.create("mount", &squashfs_mount(&img)); // loopback 1, mount 2
    let dev = device_of(&m["attach"]["attach"]);
    let m_mp = mountpoint_of(&m);
    let o = svc.create("mount", &overlay(vec![by_id(2)]));
    assert_eq!(id_of(&o), 3);
    assert_eq!(
        device_of(&o["overlay"]["lower"][0]["attach"]["attach"]),
        dev,
        "referenced lower fully resolved: {o}"
    );
    assert_eq!(svc.refs("mount", 2), 2);
    assert_eq!(svc.refs("attach", 1), 1);
    assert_error(&svc.delete("/mount?id=2"), 409);
    assert_error(&svc.delete("/attach?id=1"), 409);

    svc.remove("mount", 3);
    assert!(!is_mounted(&mountpoint_of(&o)));
    assert!(is_mounted(&m_mp));
    assert_eq!(svc.refs("mount", 2), 1);
    assert_eq!(svc.refs("attach", 1), 1);

    svc.remove("mount", 2);
    svc.assert_empty();
    assert!(!is_mounted(&m_mp));
    assert_detached(&dev, &img);
    svc.stop_ok();
    assert_no_leaks(svc.dir());
}

#[test]
fn forced_delete_of_used_loopback_removes_its_mount() {
    let mut svc = Service::start();
    let img = squashfs_image(svc.dir(), "force");
    let a = svc.create("attach", &loopback(&img));
    let dev = device_of(&a);
    let m = svc.create("mount", &attach_mount(by_id(1), "squashfs", &["ro"]));
    let mp = mountpoint_of(&m);
    assert_error(&svc.delete("/attach?id=1"), 409);

    let resp = svc.delete("/attach?id=1&force=true");
    assert_eq!(resp.status, 200, "forced DELETE: {resp}");
    let gone = resp.json();
    assert_eq!(id_of(&gone), 1, "the response is the forced object: {gone}");
    svc.assert_empty();
    assert!(
        !is_mounted(&mp),
        "the mount using the attach is removed too"
    );
    assert_detached(&dev, &img);

    // Forced delete of an owned nested child removes its owner as well.
    let m = svc.create("mount", &squashfs_mount(&img)); // 3, 4
    assert_eq!(id_of(&m), 4);
    let mp = mountpoint_of(&m);
    let dev = device_of(&m["attach"]["attach"]);
    let resp = svc.delete("/attach?id=3&force=true");
    assert_eq!(resp.status, 200, "forced DELETE of an owned attach: {resp}");
    assert_eq!(id_of(&resp.json()), 3);
    svc.assert_empty();
    assert!(!is_mounted(&mp));
    assert_detached(&dev, &img);

    // force=true on an unused object is a plain delete.
    svc.create("attach", &loopback(&img)); // 5
    let resp = svc.delete("/attach?id=5&force=true");
    assert_eq!(resp.status, 200, "{resp}");
    svc.assert_empty();
    svc.stop_ok();
    assert_no_leaks(svc.dir());
}

#[test]
fn forced_delete_cascades_through_users() {
    let mut svc = Service::start();
    let img = squashfs_image(svc.dir(), "cascade");
    let bsrc = svc.dir().join("bsrc");
    let csrc = svc.dir().join("csrc");
    write_tree(&bsrc, &[("b.txt", "b\n")]);
    write_tree(&csrc, &[("c.txt", "c\n")]);

    let l = svc.create("attach", &loopback(&img)); // 1
    let dev = device_of(&l);
    let m = svc.create("mount", &attach_mount(by_id(1), "squashfs", &["ro"])); // 2
    let b = svc.create("mount", &bind_root(&bsrc, false, false)); // 3
    let o = svc.create(
        "mount",
        &overlay(vec![by_id(2), by_id(3), bind_root(&csrc, false, false)]),
    ); // nested bind 4, overlay 5
    assert_eq!(id_of(&o), 5, "{o}");
    assert_eq!(id_of(&o["overlay"]["lower"][2]), 4, "{o}");
    let m_mp = mountpoint_of(&m);
    let b_mp = mountpoint_of(&b);
    let c_mp = mountpoint_of(&o["overlay"]["lower"][2]);
    let o_mp = mountpoint_of(&o);
    let upper = str_of(&o, "/overlay/upperdir").to_string();
    assert_eq!(read(format!("{o_mp}/hello.txt")), hello_text("cascade"));
    assert_eq!(read(format!("{o_mp}/b.txt")), "b\n");
    assert_eq!(read(format!("{o_mp}/c.txt")), "c\n");
    assert_eq!(svc.refs("attach", 1), 2);
    assert_eq!(svc.refs("mount", 2), 2);
    assert_eq!(svc.refs("mount", 3), 2);
    assert_eq!(svc.refs("mount", 4), 1);

    let resp = svc.delete("/attach?id=1&force=true");
    assert_eq!(resp.status, 200, "forced DELETE: {resp}");
    assert_eq!(id_of(&resp.json()), 1);

    // L, M (user of L), O (user of M) and O's owned bind 4 are gone; B only lost O's ref.
    assert!(svc.list("/attach").is_empty());
    let mounts = svc.list("/mount");
    assert_eq!(ids(&mounts), vec![3], "{mounts:?}");
    assert_eq!(refs_of(&mounts[0]), 1);
    for mp in [&o_mp, &m_mp, &c_mp] {
        assert!(!is_mounted(mp), "{mp} still mounted");
    }
    assert!(!Path::new(&upper).exists(), "upperdir {upper} left");
    assert!(is_mounted(&b_mp), "the referenced bind must stay");
    assert_eq!(read(format!("{b_mp}/b.txt")), "b\n");
    assert_detached(&dev, &img);

    svc.remove("mount", 3);
    svc.assert_empty();
    svc.stop_ok();
    assert_no_leaks(svc.dir());
}

#[test]
fn get_never_changes_refs() {
    let mut svc = Service::start();
    let img = squashfs_image(svc.dir(), "get");
    svc.create("attach", &loopback(&img)); // 1
    svc.create("mount", &squashfs_mount(&img)); // 2, 3
    for _ in 0..10 {
        assert_eq!(svc.refs("attach", 1), 1);
        assert_eq!(svc.refs("attach", 2), 1);
        assert_eq!(svc.refs("mount", 3), 1);
        for a in svc.list("/attach") {
            assert_eq!(refs_of(&a), 1, "{a}");
        }
        for m in svc.list("/mount?kind=attach") {
            assert_eq!(refs_of(&m), 1, "{m}");
        }
        assert_error(&svc.get("/attach?id=77"), 404);
    }
    // Top-level objects are deletable without force after all those reads.
    svc.remove("attach", 1);
    svc.remove("mount", 3);
    svc.assert_empty();
    svc.stop_ok();
    assert_no_leaks(svc.dir());
}

#[test]
fn failed_nested_create_leaves_nothing() {
    let mut svc = Service::start();
    let good = squashfs_image(svc.dir(), "good");
    let missing = svc.dir().join("missing.squashfs");
    let resp = svc.post(
        "/mount",
        &overlay(vec![squashfs_mount(&good), squashfs_mount(&missing)]),
    );
    let body = assert_nested_failure(&resp, "attach", Some("loopback"));
    assert!(
        body["reason"].as_str().unwrap().contains("ENOENT"),
        "reason of {resp}"
    );
    svc.assert_empty();
    // The first lower was mounted and must have been rolled back (the service is still running).
    assert_no_leaks(svc.dir());

    // The service still works afterwards.
    let m = svc.create("mount", &squashfs_mount(&good));
    svc.remove("mount", id_of(&m));
    svc.assert_empty();
    svc.stop_ok();
    assert_no_leaks(svc.dir());
}

#[test]
fn sigterm_releases_everything() {
    let mut svc = Service::start();
    let img = squashfs_image(svc.dir(), "term");
    let ext = ext4_image(svc.dir(), "termext");
    let outer = outer_squashfs_image(svc.dir(), "termouter");
    let src = svc.dir().join("termsrc");
    fs::create_dir_all(&src).unwrap();

    let mut mountpoints = Vec::new();
    let mut devices = Vec::new();
    let a = svc.create("attach", &loopback(&img));
    devices.push(device_of(&a));
    let o = svc.create("mount", &overlay(vec![squashfs_mount(&img)]));
    mountpoints.push(mountpoint_of(&o));
    mountpoints.push(mountpoint_of(&o["overlay"]["lower"][0]));
    devices.push(device_of(&o["overlay"]["lower"][0]["attach"]["attach"]));
    let e = svc.create("mount", &attach_mount(loopback(&ext), "ext4", &["ro"]));
    mountpoints.push(mountpoint_of(&e));
    devices.push(device_of(&e["attach"]["attach"]));
    let b = svc.create("mount", &bind_root(&src, false, false));
    mountpoints.push(mountpoint_of(&b));
    let inner = svc.create(
        "mount",
        &attach_mount(
            loopback_in(squashfs_mount(&outer), INNER_IMAGE),
            "squashfs",
            &["ro"],
        ),
    );
    mountpoints.push(mountpoint_of(&inner));
    let base = &inner["attach"]["attach"]["loopback"]["mount"];
    mountpoints.push(mountpoint_of(base));
    devices.push(device_of(&inner["attach"]["attach"]));
    devices.push(device_of(&base["attach"]["attach"]));
    // Something else still using a referenced object.
    svc.create("mount", &overlay(vec![by_id(id_of(&e))]));

    for mp in &mountpoints {
        assert!(is_mounted(mp), "{mp} not mounted");
    }
    assert!(loops_under(svc.dir()).len() >= devices.len());

    svc.stop_ok();
    assert_no_leaks(svc.dir());
    for mp in &mountpoints {
        assert!(!is_mounted(mp), "{mp} left mounted");
    }
}
