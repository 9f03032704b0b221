//! End-to-end tests of `uri` mounts against the real binary and kernel, with the images served
//! by a test HTTP(S) server on 127.0.0.1 ([`HttpServer`]): every format, containers booted from
//! a uri image, the shared download, the cache across a restart, and each failure, which must
//! name its stage and leave nothing behind.

mod common;

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn uri_mount(url: &str) -> Value {
    json!({ "kind": "uri", "uri": { "url": url } })
}

fn uri_mount_with(url: &str, extra: Value) -> Value {
    let mut mount = uri_mount(url);
    for (key, value) in extra.as_object().unwrap() {
        mount["uri"][key] = value.clone();
    }
    mount
}

fn sha256_of(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    format!("sha256:{}", text.split_whitespace().next().unwrap())
}

fn service_with(args: &[&str]) -> Service {
    Service::start_with(ServiceOptions {
        extra_args: args.iter().map(OsString::from).collect(),
        ..ServiceOptions::default()
    })
}

/// `len` bytes that do not compress (xorshift), different for each `seed`.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn cache_dir(svc: &Service) -> PathBuf {
    svc.dir().join("state/uri-cache")
}

/// The files of the cache's entries (not their metadata).
fn cache_entries(svc: &Service) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(cache_dir(svc).join("entries"))
        .map(|dir| {
            dir.flatten()
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .filter(|name| !name.ends_with(".json"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn partials(svc: &Service) -> usize {
    fs::read_dir(cache_dir(svc).join("partial")).map_or(0, |dir| dir.count())
}

/// The tree every format is made of: the standard tree, plus what a system image needs kept:
/// a setuid root program, a file of another owner, a hard link, and the dirs an init mounts on.
fn system_tree(dir: &Path, name: &str) -> PathBuf {
    let src = dir.join(format!("{name}.src"));
    standard_tree(&src, name);
    write_tree(
        &src,
        &[
            ("proc/.keep", ""),
            ("sys/.keep", ""),
            ("dev/.keep", ""),
            ("tmp/.keep", ""),
            ("home/user/owned.txt", "mine\n"),
        ],
    );
    let su = src.join("bin/su");
    fs::copy(src.join("bin/busybox"), &su).unwrap();
    fs::set_permissions(&su, fs::Permissions::from_mode(0o4755)).unwrap();
    fs::hard_link(src.join("hello.txt"), src.join("hello-again.txt")).unwrap();
    std::os::unix::fs::chown(src.join("home/user/owned.txt"), Some(1000), Some(1001)).unwrap();
    std::os::unix::fs::chown(src.join("home/user"), Some(1000), Some(1001)).unwrap();
    run(Command::new("python3")
        .args([
            "-c",
            "import os, sys; os.setxattr(sys.argv[1], 'user.imageapi', b'kept')",
        ])
        .arg(src.join("hello.txt")));
    src
}

/// The `user.imageapi` extended attribute of `path`.
fn xattr_of(path: &Path) -> String {
    let out = Command::new("python3")
        .args([
            "-c",
            "import os, sys; print(os.getxattr(sys.argv[1], 'user.imageapi').decode())",
        ])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `dir/<name>.<format>`: the tree in one of the uri formats.
fn pack(src: &Path, dir: &Path, name: &str, format: &str) -> PathBuf {
    let out = dir.join(format!("{name}.{format}"));
    match format {
        "squashfs" => mksquashfs(src, &out),
        "ext4" => mkext4(src, &out, 16),
        "erofs" => run(Command::new("mkfs.erofs").arg("-d0").arg(&out).arg(src)),
        tar => {
            let compress: &[&str] = match tar {
                "tar" => &[],
                "tar.gz" => &["--gzip"],
                "tar.zst" => &["--zstd"],
                "tar.xz" => &["--xz"],
                other => panic!("no format {other}"),
            };
            run(Command::new("tar")
                .args(compress)
                .args(["--numeric-owner", "--xattrs", "--xattrs-include=*"])
                .arg("-C")
                .arg(src)
                .arg("-cf")
                .arg(&out)
                .arg("."));
        }
    }
    out
}

/// Checks what a system image must keep, at `root`.
fn assert_system_tree(root: &Path, name: &str) {
    assert_eq!(
        fs::read_to_string(root.join("hello.txt")).unwrap(),
        hello_text(name)
    );
    assert_eq!(
        fs::read_to_string(root.join("dir/nested.txt")).unwrap(),
        NESTED_TEXT
    );
    assert_eq!(
        fs::read_link(root.join("escape")).unwrap(),
        Path::new("/etc")
    );
    assert_eq!(
        fs::read_link(root.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    let su = fs::metadata(root.join("bin/su")).unwrap();
    assert_eq!(su.mode() & 0o7777, 0o4755, "setuid kept");
    assert_eq!((su.uid(), su.gid()), (0, 0));
    let owned = fs::metadata(root.join("home/user/owned.txt")).unwrap();
    assert_eq!((owned.uid(), owned.gid()), (1000, 1001), "owner kept");
    let hello = fs::metadata(root.join("hello.txt")).unwrap();
    let again = fs::metadata(root.join("hello-again.txt")).unwrap();
    assert_eq!(hello.ino(), again.ino(), "hard link kept");
}

#[test]
fn every_format_mounts_by_its_magic_bytes() {
    let mut svc = Service::start();
    let server = HttpServer::start();
    let src = system_tree(svc.dir(), "formats");
    for format in [
        "squashfs", "erofs", "ext4", "tar", "tar.gz", "tar.zst", "tar.xz",
    ] {
        let image = pack(&src, svc.dir(), "formats", format);
        let path = format!("/images/formats.{format}");
        server.serve(&path, Reply::File(image.clone()));
        let mount = svc.create(
            "mount",
            &uri_mount_with(&server.url(&path), json!({ "digest": sha256_of(&image) })),
        );
        assert_eq!(mount["uri"]["format"], format, "{mount}");
        let mountpoint = PathBuf::from(mountpoint_of(&mount));
        assert_system_tree(&mountpoint, "formats");
        let entry = mount_entry(&mountpoint.to_string_lossy()).expect("mounted");
        let expected_type = match format {
            "squashfs" | "erofs" | "ext4" => format,
            _ => "tmpfs",
        };
        assert_eq!(entry.fs_type, expected_type, "{format}");
        match format {
            "squashfs" | "ext4" => {
                assert!(entry.source.starts_with("/dev/loop"), "{format}: {entry:?}");
                assert!(entry.has_option("ro"), "{format} is mounted read-only");
                let backing = loop_backing_file(&entry.source).unwrap();
                assert!(
                    backing.starts_with(&cache_dir(&svc).to_string_lossy().into_owned()),
                    "{backing}"
                );
            }
            "erofs" => {
                assert!(
                    !entry.source.starts_with("/dev/loop"),
                    "file-backed: {entry:?}"
                );
                assert!(entry.has_option("ro"));
            }
            _ => {
                assert!(!entry.has_option("ro"), "a writable ramdisk by default");
                assert_eq!(xattr_of(&mountpoint.join("hello.txt")), "kept", "{format}");
                fs::write(mountpoint.join("tmp/written"), "x").unwrap();
            }
        }
        svc.remove("mount", id_of(&mount));
    }
    svc.assert_empty();
    assert_eq!(partials(&svc), 0);
    svc.stop_ok();
    assert_no_leaks(svc.dir());
}

#[test]
fn https_with_the_ca_flag_redirects_files_and_go_client_zero_values() {
    let other_dir = tempfile::tempdir().unwrap();
    let server = HttpServer::start_https();
    let ca = other_dir.path().join("ca.pem");
    write_ca(&server, &ca).unwrap();
    let mut svc = service_with(&["--uri-ca", ca.to_str().unwrap()]);
    let src = system_tree(svc.dir(), "tls");
    let image = pack(&src, svc.dir(), "tls", "squashfs");
    server.serve("/tls.squashfs", Reply::File(image.clone()));
    server.serve("/moved", Reply::Redirect("/tls.squashfs".into()));
    // What a go client sends for the fields it was not given.
    let zeros = uri_mount_with(
        &server.url("/moved"),
        json!({ "digest": "", "format": "", "size": 0, "ro": false, "devices": false }),
    );
    let mount = svc.create("mount", &zeros);
    assert_system_tree(Path::new(&mountpoint_of(&mount)), "tls");
    assert_eq!(server.requests("/moved"), 1);
    assert_eq!(server.bodies("/tls.squashfs"), 1);
    svc.remove("mount", id_of(&mount));

    // A server whose CA the service does not trust is refused.
    let stranger = HttpServer::start_https();
    stranger.serve("/tls.squashfs", Reply::File(image.clone()));
    let resp = svc.post("/mount", &uri_mount(&stranger.url("/tls.squashfs")));
    assert_error(&resp, 422);
    assert_nested_failure(&resp, "mount", Some("uri/download"));

    // file:// reads a local file.
    let mount = svc.create("mount", &uri_mount(&format!("file://{}", image.display())));
    assert_system_tree(Path::new(&mountpoint_of(&mount)), "tls");
    svc.remove("mount", id_of(&mount));
    svc.assert_empty();
    svc.stop_ok();
    assert_no_leaks(svc.dir());
}

#[test]
fn https_without_the_ca_flag_trusts_only_the_system_roots() {
    let mut svc = Service::start();
    let server = HttpServer::start_https();
    server.serve("/image", Reply::bytes(vec![0; 4096]));
    let resp = svc.post("/mount", &uri_mount(&server.url("/image")));
    assert_error(&resp, 422);
    let error = assert_nested_failure(&resp, "mount", Some("uri/download"));
    assert!(
        error["reason"].as_str().unwrap().contains("certificate"),
        "{error}"
    );
    assert!(cache_entries(&svc).is_empty() && partials(&svc) == 0);
    svc.assert_empty();
    svc.stop_ok();
    assert_no_leaks(svc.dir());
}

#[test]
fn a_container_boots_from_an_overlay_of_a_uri_archive() {
    let mut svc = Service::start();
    let server = HttpServer::start();
    let src = system_tree(svc.dir(), "boot");
    let archive = pack(&src, svc.dir(), "boot", "tar.gz");
    server.serve("/boot.tar.gz", Reply::File(archive.clone()));
    let image = pack(&src, svc.dir(), "boot", "squashfs");
    server.serve("/boot.squashfs", Reply::File(image));
    for path in ["/boot.tar.gz", "/boot.squashfs"] {
        let created = svc.create(
            "container",
            &json!({
                "name": "from-uri",
                "command": "/bin/sh -c '/bin/busybox cat /hello.txt; /bin/busybox ls -l /bin/su; exit 0'",
                "mount": overlay(vec![uri_mount_with(&server.url(path), json!({ "ro": true }))]),
                "state": "running",
            }),
        );
        let exited = wait_for(Duration::from_secs(10), || {
            svc.get("/container?name=from-uri").json()[0]["state"] == "exited"
        });
        assert!(exited, "the container never exited");
        let log = fs::read_to_string(str_of(&created, "/logfile")).unwrap_or_default();
        assert!(log.contains(&hello_text("boot")), "{path}: {log}");
        assert!(log.contains("-rwsr-xr-x"), "{path}: setuid kept: {log}");
        svc.remove("container", id_of(&created));
    }
    svc.assert_empty();
    svc.stop_ok();
    assert_no_leaks(svc.dir());
}

#[test]
fn two_mounts_at_once_download_once() {
    let mut svc = Service::start();
    let server = HttpServer::start();
    let src = system_tree(svc.dir(), "shared");
    fs::write(src.join("noise.bin"), noise(8 << 20, 1)).unwrap();
    let image = pack(&src, svc.dir(), "shared", "squashfs");
    // A download of about two seconds: the second request comes while the first downloads.
    server.serve(
        "/shared.squashfs",
        Reply::Throttled {
            file: image.clone(),
            bytes_per_second: 4 << 20,
        },
    );
    let body = uri_mount_with(
        &server.url("/shared.squashfs"),
        json!({ "digest": sha256_of(&image) }),
    );
    let mounts: Vec<Value> = std::thread::scope(|scope| {
        let posts: Vec<_> = (0..2)
            .map(|second| {
                let (svc, body) = (&svc, &body);
                scope.spawn(move || {
                    std::thread::sleep(Duration::from_millis(300 * second));
                    svc.post("/mount", body)
                })
            })
            .collect();
        posts
            .into_iter()
            .map(|post| {
                let resp = post.join().unwrap();
                assert_eq!(resp.status, 201, "{resp}");
                resp.json()
            })
            .collect()
    });
    assert_eq!(server.requests("/shared.squashfs"), 1, "one download");
    assert!(
        svc.stderr_log().contains("image in the cache"),
        "the second mount took the first one's download"
    );
    assert_eq!(cache_entries(&svc).len(), 1);
    for mount in &mounts {
        assert_system_tree(Path::new(&mountpoint_of(mount)), "shared");
        svc.remove("mount", id_of(mount));
    }
    svc.assert_empty();
    svc.stop_ok();
    assert_no_leaks(svc.dir());
}

/// A tar archive made by Python's tarfile, which writes what tar(1) would refuse to: `script`
/// adds members to the open archive `t` (with `TarInfo` and `io` imported).
fn crafted_tar(dir: &Path, name: &str, script: &str) -> PathBuf {
    let out = dir.join(format!("{name}.tar"));
    let program = format!(
        "import io, sys, tarfile\nfrom tarfile import TarInfo\n\
         def add(t, name, data=b'x', **kw):\n    info = TarInfo(name)\n    info.size = len(data)\n    \
         for k, v in kw.items(): setattr(info, k, v)\n    t.addfile(info, io.BytesIO(data))\n\
         with tarfile.open(sys.argv[1], 'w', format=tarfile.GNU_FORMAT) as t:\n{}\n",
        script
            .lines()
            .map(|line| format!("    {line}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    run(Command::new("python3").arg("-c").arg(program).arg(&out));
    out
}

#[test]
fn each_failure_names_its_stage_and_leaves_nothing() {
    let mut svc = service_with(&["--uri-stall-timeout", "1s", "--uri-max-size", "8MiB"]);
    let server = HttpServer::start();
    let src = system_tree(svc.dir(), "fail");
    let image = pack(&src, svc.dir(), "fail", "squashfs");
    let bytes = Arc::new(fs::read(&image).unwrap());
    server.serve("/image", Reply::File(image.clone()));
    server.serve(
        "/truncated",
        Reply::Truncated {
            bytes: bytes.clone(),
            after: bytes.len() / 2,
        },
    );
    server.serve(
        "/stalled",
        Reply::Stall {
            bytes: bytes.clone(),
            after: 4096,
        },
    );
    server.serve("/garbage", Reply::bytes(vec![0x5a; 64 << 10]));
    server.serve("/huge", Reply::bytes(vec![0; 9 << 20]));
    let mut corrupt = fs::read(pack(&src, svc.dir(), "fail", "tar.gz")).unwrap();
    corrupt.truncate(corrupt.len() / 2);
    server.serve("/corrupt.tar.gz", Reply::bytes(corrupt));
    let mut big = fs::File::create(svc.dir().join("big.src")).unwrap();
    std::io::Write::write_all(&mut big, &vec![7u8; 4 << 20]).unwrap();
    drop(big);
    let crafted = |name: &str, script: &str| {
        let path = format!("/{name}.tar");
        server.serve(&path, Reply::File(crafted_tar(svc.dir(), name, script)));
        server.url(&path)
    };
    let escape = crafted("escape", "add(t, 'ok.txt')\nadd(t, '../evil')");
    let absolute = crafted("absolute", "add(t, '/evil')");
    let link_out = crafted(
        "linkout",
        "add(t, 'passwd', type=tarfile.LNKTYPE, linkname='../../../etc/passwd', size=0)",
    );
    let through_symlink = crafted(
        "through",
        "add(t, 'etc', type=tarfile.SYMTYPE, linkname='/etc', size=0)\nadd(t, 'etc/evil')",
    );
    let device = crafted(
        "device",
        "add(t, 'null', type=tarfile.CHRTYPE, devmajor=1, devminor=3, size=0)",
    );
    let too_big = crafted("toobig", "add(t, 'big', data=b'y' * (4 << 20))");

    let refused_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let wrong_digest = format!("sha256:{}", "0".repeat(64));
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        (
            "404",
            uri_mount(&server.url("/missing")),
            422,
            "uri/download",
        ),
        (
            "refused",
            uri_mount(&format!("http://127.0.0.1:{refused_port}/image")),
            504,
            "uri/download",
        ),
        (
            "truncated",
            uri_mount(&server.url("/truncated")),
            504,
            "uri/download",
        ),
        (
            "stalled",
            uri_mount(&server.url("/stalled")),
            504,
            "uri/download",
        ),
        (
            "digest mismatch",
            uri_mount_with(&server.url("/image"), json!({ "digest": wrong_digest })),
            422,
            "uri/verify",
        ),
        (
            "unknown format",
            uri_mount(&server.url("/garbage")),
            422,
            "uri/verify",
        ),
        (
            "not the format given",
            uri_mount_with(&server.url("/garbage"), json!({ "format": "ext4" })),
            422,
            "uri/mount",
        ),
        (
            "corrupt archive",
            uri_mount(&server.url("/corrupt.tar.gz")),
            422,
            "uri/extract",
        ),
        ("..", uri_mount(&escape), 422, "uri/extract"),
        ("absolute", uri_mount(&absolute), 422, "uri/extract"),
        ("hard link out", uri_mount(&link_out), 422, "uri/extract"),
        (
            "through a symlink",
            uri_mount(&through_symlink),
            422,
            "uri/extract",
        ),
        ("device node", uri_mount(&device), 422, "uri/extract"),
        (
            "full ramdisk",
            uri_mount_with(&too_big, json!({ "size": 1 << 20 })),
            422,
            "uri/extract",
        ),
    ];
    for (what, body, status, stage) in cases {
        let resp = svc.post("/mount", &body);
        assert_eq!(resp.status, status, "{what}: {resp}");
        let error = assert_nested_failure(&resp, "mount", Some(stage));
        eprintln!("{what}: {}", error["message"]);
        assert!(svc.list("/mount").is_empty(), "{what}");
        assert_eq!(partials(&svc), 0, "{what}: a partial download is left");
        if what != "full ramdisk" {
            assert!(
                cache_entries(&svc).is_empty(),
                "{what}: a refused download is kept"
            );
        }
        let leaks = leaks_under(svc.dir());
        assert!(leaks.is_empty(), "{what}: {leaks}");
        assert!(
            fs::read_dir(svc.mount_dir()).unwrap().next().is_none(),
            "{what}: a mountpoint is left"
        );
    }
    assert!(
        !fs::read_dir(svc.dir())
            .unwrap()
            .flatten()
            .any(|entry| entry.file_name().to_string_lossy().starts_with("evil")),
        "nothing escaped"
    );
    // A device node is unpacked when asked for, and the archive fits a ramdisk of its size.
    let mount = svc.create(
        "mount",
        &uri_mount_with(&device, json!({ "devices": true })),
    );
    let null = fs::metadata(Path::new(&mountpoint_of(&mount)).join("null")).unwrap();
    assert_eq!(null.rdev(), libc::makedev(1, 3));
    svc.remove("mount", id_of(&mount));
    let mount = svc.create("mount", &uri_mount(&too_big));
    assert_eq!(
        fs::metadata(Path::new(&mountpoint_of(&mount)).join("big"))
            .unwrap()
            .len(),
        4 << 20
    );
    svc.remove("mount", id_of(&mount));
    svc.assert_empty();
    svc.stop_ok();
    assert_no_leaks(svc.dir());
}

#[test]
fn the_cache_evicts_unused_entries_and_survives_a_restart() {
    let mut svc = Service::start_with(ServiceOptions {
        keep_objects: true,
        extra_args: ["--uri-cache-limit", "6MiB"]
            .iter()
            .map(OsString::from)
            .collect(),
        ..ServiceOptions::default()
    });
    let server = HttpServer::start();
    let mut images = Vec::new();
    for name in ["first", "second"] {
        let src = system_tree(svc.dir(), name);
        fs::write(src.join("noise.bin"), noise(4 << 20, name.len() as u64)).unwrap();
        let image = pack(&src, svc.dir(), name, "squashfs");
        let path = format!("/{name}.squashfs");
        server.serve(&path, Reply::File(image.clone()));
        images.push((name, path, sha256_of(&image)));
    }
    let mount_of = |svc: &Service, (_, path, digest): &(&str, String, String)| {
        svc.create(
            "mount",
            &uri_mount_with(&server.url(path), json!({ "digest": digest })),
        )
    };
    // Both in use: over the limit, but nothing in use is evicted.
    let first = mount_of(&svc, &images[0]);
    let second = mount_of(&svc, &images[1]);
    assert_eq!(cache_entries(&svc).len(), 2);
    // Unused, the first goes.
    svc.remove("mount", id_of(&first));
    assert_eq!(
        cache_entries(&svc),
        [format!("sha256-{}", &images[1].2["sha256:".len()..])]
    );

    // The second mount is adopted after a restart and holds its entry again; the entry is
    // reused, checked, without another download.
    svc.restart(true);
    let adopted = svc.get_one("mount", id_of(&second));
    assert_eq!(adopted["mountpoint"], second["mountpoint"]);
    assert!(is_mounted(&mountpoint_of(&second)));
    let again = mount_of(&svc, &images[1]);
    assert_system_tree(Path::new(&mountpoint_of(&again)), "second");
    assert_eq!(server.requests(&images[1].1), 1, "reused from the cache");
    svc.remove("mount", id_of(&again));
    svc.remove("mount", id_of(&second));

    // After a crash too; a URL without a digest is asked again, and answered 304.
    let url_only = svc.create("mount", &uri_mount(&server.url(&images[0].1)));
    svc.crash_and_restart(true);
    assert!(is_mounted(&mountpoint_of(&url_only)));
    let again = svc.create("mount", &uri_mount(&server.url(&images[0].1)));
    assert_eq!(server.requests(&images[0].1), 3);
    assert_eq!(server.bodies(&images[0].1), 2, "the second was a 304");
    svc.remove("mount", id_of(&again));
    svc.remove("mount", id_of(&url_only));
    svc.assert_empty();
    svc.restart(false);
    svc.stop_ok();
    assert_no_leaks(svc.dir());
}

#[test]
fn a_read_only_archive_refuses_writes() {
    let mut svc = Service::start();
    let server = HttpServer::start();
    let src = system_tree(svc.dir(), "ro");
    let archive = pack(&src, svc.dir(), "ro", "tar.zst");
    server.serve("/ro.tar.zst", Reply::File(archive));
    let mount = svc.create(
        "mount",
        &uri_mount_with(
            &server.url("/ro.tar.zst"),
            json!({ "ro": true, "size": 64 << 20 }),
        ),
    );
    assert_eq!(mount["uri"]["size"], 64 << 20);
    let mountpoint = PathBuf::from(mountpoint_of(&mount));
    let err = fs::write(mountpoint.join("tmp/x"), "x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    svc.remove("mount", id_of(&mount));
    svc.assert_empty();
    svc.stop_ok();
    assert_no_leaks(svc.dir());
}

#[test]
fn a_crash_during_creates_leaves_no_unlisted_mount_or_loop_device() {
    let mut svc = Service::start_with(ServiceOptions {
        keep_objects: true,
        ..ServiceOptions::default()
    });
    let server = HttpServer::start();
    let src = system_tree(svc.dir(), "crash");
    let image = pack(&src, svc.dir(), "crash", "squashfs");
    server.serve("/crash.squashfs", Reply::File(image.clone()));
    let body = uri_mount_with(
        &server.url("/crash.squashfs"),
        json!({ "digest": sha256_of(&image) }),
    );
    // The image is cached: a create is a loop attach and a mount, which the kills cut anywhere.
    let warm = svc.create("mount", &body);
    svc.remove("mount", id_of(&warm));
    for round in 0..12u64 {
        let socket = svc.dir().join("api.sock");
        let payload = body.to_string();
        let creator = std::thread::spawn(move || {
            let _ = try_http_request(
                &Transport::Unix(socket),
                "POST",
                &format!("{BASE}/mount"),
                Some("application/json"),
                Some(payload.as_bytes()),
            );
        });
        std::thread::sleep(Duration::from_millis(1 + (round * 7) % 60));
        svc.crash_and_restart(true);
        let _ = creator.join();
        let listed: Vec<String> = svc.list("/mount").iter().map(mountpoint_of).collect();
        for mountpoint in mounts_under(&svc.mount_dir()) {
            assert!(
                listed.contains(&mountpoint),
                "round {round}: mounted but not listed: {mountpoint}"
            );
        }
        let sources: Vec<String> = listed
            .iter()
            .filter_map(|mountpoint| mount_entry(mountpoint))
            .map(|entry| entry.source)
            .collect();
        let only_listed = wait_for(RELEASE_GRACE, || {
            loops_under(svc.dir())
                .iter()
                .all(|(device, _)| sources.contains(device))
        });
        assert!(
            only_listed,
            "round {round}: loop devices of no listed mount: {:?}",
            loops_under(svc.dir())
        );
        assert_eq!(partials(&svc), 0);
    }
    for mount in svc.list("/mount") {
        svc.remove("mount", id_of(&mount));
    }
    assert_eq!(server.bodies("/crash.squashfs"), 1, "always from the cache");
    svc.restart(false);
    svc.stop_ok();
    assert_no_leaks(svc.dir());
}

#[test]
fn a_changed_image_is_downloaded_again_and_its_old_mount_is_still_adopted() {
    let mut svc = Service::start_with(ServiceOptions {
        keep_objects: true,
        ..ServiceOptions::default()
    });
    let server = HttpServer::start();
    let old = pack(&system_tree(svc.dir(), "old"), svc.dir(), "old", "squashfs");
    let new_src = system_tree(svc.dir(), "new");
    fs::write(new_src.join("more.bin"), noise(1 << 20, 7)).unwrap();
    let new = pack(&new_src, svc.dir(), "new", "squashfs");
    server.serve("/image", Reply::File(old));
    let first = svc.create("mount", &uri_mount(&server.url("/image")));
    // The server's copy changes (and so does its ETag): the next mount downloads it, and the
    // first keeps the file it has.
    server.serve("/image", Reply::File(new));
    let second = svc.create("mount", &uri_mount(&server.url("/image")));
    assert_eq!(server.bodies("/image"), 2);
    assert_eq!(cache_entries(&svc).len(), 1);
    svc.crash_and_restart(true);
    for (mount, name) in [(&first, "old"), (&second, "new")] {
        assert_eq!(
            svc.get_one("mount", id_of(mount))["mountpoint"],
            mount["mountpoint"]
        );
        assert_eq!(
            fs::read_to_string(Path::new(&mountpoint_of(mount)).join("hello.txt")).unwrap(),
            hello_text(name)
        );
    }
    svc.remove("mount", id_of(&first));
    svc.remove("mount", id_of(&second));
    svc.assert_empty();
    svc.restart(false);
    svc.stop_ok();
    assert_no_leaks(svc.dir());
}

#[test]
fn an_unpacked_archive_is_adopted_after_a_restart() {
    let mut svc = Service::start_with(ServiceOptions {
        keep_objects: true,
        ..ServiceOptions::default()
    });
    let server = HttpServer::start();
    let src = system_tree(svc.dir(), "kept");
    server.serve(
        "/kept.tar.xz",
        Reply::File(pack(&src, svc.dir(), "kept", "tar.xz")),
    );
    let mount = svc.create("mount", &uri_mount(&server.url("/kept.tar.xz")));
    let mountpoint = PathBuf::from(mountpoint_of(&mount));
    fs::write(mountpoint.join("tmp/written"), "by the first run").unwrap();
    svc.restart(true);
    let adopted = svc.get_one("mount", id_of(&mount));
    assert_eq!(adopted["uri"]["format"], "tar.xz");
    assert_eq!(adopted["uri"]["size"], mount["uri"]["size"]);
    assert_eq!(
        fs::read_to_string(mountpoint.join("tmp/written")).unwrap(),
        "by the first run"
    );
    assert_system_tree(&mountpoint, "kept");
    svc.remove("mount", id_of(&mount));
    svc.assert_empty();
    svc.restart(false);
    svc.stop_ok();
    assert_no_leaks(svc.dir());
}
