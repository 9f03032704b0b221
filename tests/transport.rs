//! Transports and connection limits: the unix socket (mode, group, stale file, removal), several
//! schemes over one registry, HTTPS with and without client certificates, and the limits that
//! keep a slow, silent or greedy client from holding the service.

mod common;
#[path = "contract/harness.rs"]
mod harness;

use std::ffi::OsString;
use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;

use common::{http_request, id_of, ids, loopback, Transport, BASE};
use harness::{
    free_port, os_args, request_bytes, tcp_request, tls_client, tls_request, Authority, Server,
};

fn get_unix(socket: &Path, path: &str) -> common::Response {
    http_request(
        &Transport::Unix(socket.to_owned()),
        "GET",
        &format!("{BASE}{path}"),
        None,
        None,
    )
}

/// A 4 MiB file to attach as a loop device (no filesystem needed).
fn blank_image(dir: &Path) -> PathBuf {
    let path = dir.join("blank.img");
    let file = fs::File::create(&path).unwrap();
    file.set_len(4 << 20).unwrap();
    path
}

/// Whether a process with `uid` and `gid` can connect to the unix socket at `path`.
fn can_connect_as(path: &Path, uid: u32, gid: u32) -> bool {
    use std::os::unix::process::CommandExt;
    let status = Command::new("python3")
        .arg("-c")
        .arg("import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])")
        .arg(path)
        .uid(uid)
        .gid(gid)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run python3");
    status.success()
}

const NOBODY: u32 = 65534;

#[test]
fn unix_socket_is_private_replaces_a_stale_one_and_goes_at_exit() {
    let mut server = Server::start_prepared(
        |dir| {
            // A crashed run's socket: bound once, its listener gone, the file left behind.
            let socket = dir.join("api.sock");
            drop(UnixListener::bind(&socket).unwrap());
            assert!(UnixStream::connect(&socket).is_err());
            // Let other users reach the socket file, so that only its own mode guards it.
            fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
            let mut args = os_args(&["--scheme", "unix", "--socket-path"]);
            args.push(socket.into());
            args
        },
        &[],
    );
    let socket = server.dir().join("api.sock");
    let meta = fs::symlink_metadata(&socket).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o600, "socket mode");
    assert_eq!((meta.uid(), meta.gid()), (0, 0), "socket owner");
    assert!(
        server.stderr().contains("stale socket"),
        "{}",
        server.stderr()
    );
    assert_eq!(get_unix(&socket, "/attach").status, 200);
    assert!(can_connect_as(&socket, 0, 0), "root connects");
    assert!(
        !can_connect_as(&socket, NOBODY, NOBODY),
        "another user must not reach a 0600 socket"
    );
    server.stop_ok();
    assert!(
        fs::symlink_metadata(&socket).is_err(),
        "the socket file is removed at exit"
    );
}

#[test]
fn unix_socket_mode_and_group_are_configurable() {
    // A group nobody is in by default; its members get the socket with mode 0660.
    let gid: u32 = 4242;
    let mut server = Server::start_prepared(
        |dir| {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
            let mut args = os_args(&["--scheme", "unix", "--socket-mode", "0660"]);
            args.push("--socket-group".into());
            args.push(gid.to_string().into());
            args.push("--socket-path".into());
            args.push(dir.join("api.sock").into());
            args
        },
        &[],
    );
    let socket = server.dir().join("api.sock");
    let meta = fs::symlink_metadata(&socket).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o660);
    assert_eq!(meta.gid(), gid);
    assert!(
        can_connect_as(&socket, NOBODY, gid),
        "a member of the group"
    );
    assert!(!can_connect_as(&socket, NOBODY, NOBODY), "anyone else");
    server.stop_ok();
    assert!(fs::symlink_metadata(&socket).is_err());

    let (status, stderr) = Server::refused(|dir| {
        os_args(&[
            "--scheme",
            "unix",
            "--socket-group",
            "no-such-group-imageapi",
        ])
        .into_iter()
        .chain([OsString::from("--socket-path"), dir.join("api.sock").into()])
        .collect()
    });
    assert!(!status.success());
    assert!(stderr.contains("no-such-group-imageapi"), "{stderr}");
    let (status, stderr) =
        Server::refused(|_| os_args(&["--scheme", "unix", "--socket-mode", "0999"]));
    assert!(!status.success());
    assert!(stderr.contains("socket-mode"), "{stderr}");
}

#[test]
fn unix_socket_never_replaces_a_live_socket_or_another_file() {
    let server = Server::start_prepared(
        |dir| {
            let mut args = os_args(&["--scheme", "unix", "--socket-path"]);
            args.push(dir.join("api.sock").into());
            args
        },
        &[],
    );
    let socket = server.dir().join("api.sock");
    let before = fs::symlink_metadata(&socket).unwrap().ino();
    // A second service on the same socket path must refuse, and leave the first one serving.
    let (status, stderr) = Server::refused(|_| {
        let mut args = os_args(&["--scheme", "unix", "--socket-path"]);
        args.push(socket.clone().into());
        args
    });
    assert!(!status.success());
    assert!(stderr.contains("another process is listening"), "{stderr}");
    assert_eq!(fs::symlink_metadata(&socket).unwrap().ino(), before);
    assert_eq!(get_unix(&socket, "/attach").status, 200);

    // A regular file (or a symlink) where the socket should go is not the service's to delete.
    for make in ["file", "symlink"] {
        let (status, stderr) = Server::refused(|dir| {
            let path = dir.join("api.sock");
            if make == "file" {
                fs::write(&path, "precious").unwrap();
            } else {
                std::os::unix::fs::symlink("/etc/hostname", &path).unwrap();
            }
            let mut args = os_args(&["--scheme", "unix", "--socket-path"]);
            args.push(path.into());
            args
        });
        assert!(!status.success(), "{make}");
        assert!(stderr.contains("is not a socket"), "{make}: {stderr}");
    }
    drop(server);
}

#[test]
fn several_schemes_serve_one_registry() {
    let ca = Authority::new("imageapi test CA");
    let http_port = free_port();
    let tls_port = free_port();
    let server = Server::start_prepared(
        |dir| {
            let (certificate, key) = ca.server().write(dir, "server");
            let mut args = os_args(&[
                "--scheme",
                "unix",
                "--scheme",
                "http",
                "--scheme",
                "https",
                "--host",
                "127.0.0.1",
            ]);
            args.extend([
                "--port".into(),
                http_port.to_string().into(),
                "--tls-port".into(),
                tls_port.to_string().into(),
                "--tls-certificate".into(),
                certificate.into(),
                "--tls-key".into(),
                key.into(),
                "--socket-path".into(),
                dir.join("api.sock").into(),
            ]);
            args
        },
        &[],
    );
    let unix = Transport::Unix(server.dir().join("api.sock"));
    let http = SocketAddr::from(([127, 0, 0, 1], http_port));
    let https = SocketAddr::from(([127, 0, 0, 1], tls_port));
    let client = tls_client(&ca.pem.certificate, None);

    let image = blank_image(server.dir());
    let body = serde_json::to_vec(&loopback(&image)).unwrap();
    let created = tls_request(
        &client,
        https,
        "POST",
        &format!("{BASE}/attach"),
        Some(&body),
    )
    .expect("https POST");
    assert_eq!(created.status, 201, "{created}");
    let id = id_of(&created.json());

    let over_http = tcp_request(http, "GET", &format!("{BASE}/attach"), None).unwrap();
    assert_eq!(ids(over_http.json().as_array().unwrap()), vec![id]);
    let over_unix = http_request(&unix, "GET", &format!("{BASE}/attach"), None, None);
    assert_eq!(ids(over_unix.json().as_array().unwrap()), vec![id]);
    let deleted = http_request(
        &unix,
        "DELETE",
        &format!("{BASE}/attach?id={id}"),
        None,
        None,
    );
    assert_eq!(deleted.status, 200, "{deleted}");
    let over_https = tls_request(&client, https, "GET", &format!("{BASE}/attach"), None).unwrap();
    assert_eq!(over_https.json(), json!([]));

    // Plain HTTP on the TLS port gets no HTTP answer.
    let plain = tcp_request(https, "GET", &format!("{BASE}/attach"), None);
    assert!(
        plain.is_err() || plain.as_ref().is_ok_and(|r| r.status >= 400),
        "{plain:?}"
    );
    drop(server);
}

#[test]
fn mutual_tls_requires_a_client_certificate_signed_by_the_ca() {
    let ca = Authority::new("imageapi test CA");
    let other_ca = Authority::new("someone else's CA");
    let port = free_port();
    let server = Server::start_prepared(|dir| ca.mutual_tls_server_args(dir, port), &[]);
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let good = tls_client(&ca.pem.certificate, Some(&ca.client("good client")));
    let anonymous = tls_client(&ca.pem.certificate, None);
    let stranger = tls_client(&ca.pem.certificate, Some(&other_ca.client("stranger")));
    // A client whose "CA" is its own self-signed certificate.
    let self_signed = tls_client(&ca.pem.certificate, Some(&other_ca.pem));

    let resp = tls_request(&good, address, "GET", &format!("{BASE}/attach"), None).unwrap();
    assert_eq!(resp.status, 200, "{resp}");
    for (who, client) in [
        ("no certificate", &anonymous),
        ("a certificate of another CA", &stranger),
        ("a self-signed certificate", &self_signed),
    ] {
        let refused = tls_request(client, address, "GET", &format!("{BASE}/attach"), None);
        assert!(
            refused.is_err(),
            "a client with {who} was served: {refused:?}"
        );
    }
    // Still serving the good client afterwards, and on a fresh handshake each time.
    for _ in 0..3 {
        let resp = tls_request(&good, address, "GET", &format!("{BASE}/mount"), None).unwrap();
        assert_eq!(resp.status, 200, "{resp}");
    }
    drop(server);
}

#[test]
fn https_flags_come_from_the_environment_too() {
    let ca = Authority::new("imageapi test CA");
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let (certificate, key) = ca.server().write(dir.path(), "server");
    let ca_file = dir.path().join("ca.crt");
    fs::write(&ca_file, &ca.pem.certificate).unwrap();
    let port_text = port.to_string();
    let server = Server::start_env(
        &os_args(&["--scheme", "https"]),
        &[
            ("TLS_HOST", "127.0.0.1"),
            ("TLS_PORT", &port_text),
            ("TLS_CERTIFICATE", certificate.to_str().unwrap()),
            ("TLS_PRIVATE_KEY", key.to_str().unwrap()),
            ("TLS_CA_CERTIFICATE", ca_file.to_str().unwrap()),
        ],
    );
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let good = tls_client(&ca.pem.certificate, Some(&ca.client("good client")));
    let resp = tls_request(&good, address, "GET", &format!("{BASE}/attach"), None).unwrap();
    assert_eq!(resp.status, 200, "{resp}");
    let anonymous = tls_client(&ca.pem.certificate, None);
    assert!(tls_request(&anonymous, address, "GET", &format!("{BASE}/attach"), None).is_err());
    drop(server);

    // Without --tls-ca, any client is served over TLS.
    let port = free_port();
    let server = Server::start_prepared(
        |dir| {
            let (certificate, key) = ca.server().write(dir, "server");
            let mut args = os_args(&["--scheme=https", "--host=127.0.0.1"]);
            args.extend([
                format!("--tls-port={port}").into(),
                "--tls-certificate".into(),
                certificate.into(),
                "--tls-key".into(),
                key.into(),
            ]);
            args
        },
        &[],
    );
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let resp = tls_request(&anonymous, address, "GET", &format!("{BASE}/attach"), None).unwrap();
    assert_eq!(resp.status, 200, "{resp}");
    drop(server);
}

#[test]
fn a_bad_tls_setup_refuses_to_start() {
    let ca = Authority::new("imageapi test CA");
    let other = ca.server();
    type Prepare<'a> = Box<dyn Fn(&Path) -> Vec<OsString> + 'a>;
    let cases: Vec<(&str, Prepare)> = vec![
        (
            "--tls-certificate and --tls-key",
            Box::new(|_| os_args(&["--scheme", "https"])),
        ),
        (
            "--tls-key",
            Box::new(|dir| {
                let (certificate, _) = ca.server().write(dir, "server");
                let mut args = os_args(&["--scheme", "https", "--tls-certificate"]);
                args.push(certificate.into());
                args.extend(os_args(&["--tls-key", "/nonexistent/imageapi.key"]));
                args
            }),
        ),
        (
            "do not make a usable pair",
            Box::new(|dir| {
                let (certificate, _) = ca.server().write(dir, "server");
                let (_, wrong_key) = other.write(dir, "other");
                let mut args = os_args(&["--scheme", "https", "--tls-certificate"]);
                args.push(certificate.into());
                args.push("--tls-key".into());
                args.push(wrong_key.into());
                args
            }),
        ),
        (
            "--tls-ca",
            Box::new(|dir| {
                let (certificate, key) = ca.server().write(dir, "server");
                let not_pem = dir.join("ca.crt");
                fs::write(&not_pem, "not a certificate").unwrap();
                let mut args = os_args(&["--scheme", "https", "--tls-certificate"]);
                args.extend([
                    certificate.into(),
                    "--tls-key".into(),
                    key.into(),
                    "--tls-ca".into(),
                    not_pem.into(),
                ]);
                args
            }),
        ),
    ];
    for (expected, prepare) in cases {
        let port = free_port();
        let (status, stderr) = Server::refused(|dir| {
            let mut args = prepare(dir);
            args.push(format!("--tls-port={port}").into());
            args.push("--tls-host=127.0.0.1".into());
            args
        });
        assert!(!status.success(), "{expected}: started anyway");
        assert!(
            stderr.contains(expected),
            "expected {expected:?} in: {stderr}"
        );
        assert!(
            TcpStream::connect(("127.0.0.1", port)).is_err(),
            "{expected}: the port stayed bound"
        );
        assert!(!stderr.contains("PRIVATE KEY"), "key material in: {stderr}");
    }
}

// ---------------------------------------------------------------------------------------------
// Limits
// ---------------------------------------------------------------------------------------------

/// A plain HTTP service on 127.0.0.1 with extra flags; returns it and its address.
fn http_server(extra: &[&str]) -> (Server, SocketAddr) {
    let port = free_port();
    let mut args = os_args(&["--scheme", "http", "--host", "127.0.0.1"]);
    args.push("--port".into());
    args.push(port.to_string().into());
    args.extend(os_args(extra));
    (
        Server::start(&args),
        SocketAddr::from(([127, 0, 0, 1], port)),
    )
}

/// Reads until the peer closes the connection (EOF or reset) or `timeout` passes; returns what
/// was read and when it closed (`None`: still open).
fn read_until_closed(stream: &mut TcpStream, timeout: Duration) -> (Vec<u8>, Option<Duration>) {
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    loop {
        let left = timeout.saturating_sub(start.elapsed());
        if left.is_zero() {
            return (got, None);
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return (got, Some(start.elapsed())),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return (got, Some(start.elapsed())),
        }
    }
}

fn status_of(raw: &[u8]) -> Option<u16> {
    std::str::from_utf8(raw.get(..12)?)
        .ok()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[test]
fn an_oversized_request_head_is_431() {
    let (server, address) = http_server(&["--max-header-size", "4KiB"]);
    let path = format!("{BASE}/attach");
    let with_header = |size: usize| {
        let mut stream = TcpStream::connect(address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nX-Padding: {}\r\n\r\n",
            "a".repeat(size)
        );
        harness::exchange(&mut stream, request.as_bytes()).unwrap()
    };
    assert_eq!(with_header(1000).status, 200);
    let resp = with_header(8 * 1024);
    common::assert_error(&resp, 431);
    // Past what the HTTP library buffers at all (128 KiB): still refused, and the service lives.
    let resp = with_header(300 * 1024);
    assert_eq!(resp.status, 431, "{resp}");
    // A long query string counts too.
    let resp = tcp_request(
        address,
        "GET",
        &format!("{path}?kind=local&pad={}", "x".repeat(5000)),
        None,
    )
    .unwrap();
    common::assert_error(&resp, 431);
    assert_eq!(with_header(10).status, 200);
    drop(server);
}

#[test]
fn silent_and_slow_clients_are_cut_while_others_are_served() {
    let (server, address) = http_server(&[
        "--read-timeout",
        "1s",
        "--cleanup-timeout",
        "1s",
        "--write-timeout",
        "2s",
    ]);
    let path = format!("{BASE}/attach");
    let bound = Duration::from_secs(8);

    // Connects and sends nothing: answered 408 (or cut) after the read timeout.
    let mut silent = TcpStream::connect(address).unwrap();

    // Sends its first request head a byte every 200 ms.
    let mut trickle_first = TcpStream::connect(address).unwrap();
    let mut writer = trickle_first.try_clone().unwrap();
    let head = request_bytes("GET", &path, None);
    let trickler = thread::spawn(move || {
        for byte in head.iter().chain(b"X-Slow: ".iter().cycle().take(10_000)) {
            if writer.write_all(&[*byte]).is_err() {
                return;
            }
            thread::sleep(Duration::from_millis(200));
        }
    });

    // A keep-alive client whose second request head never ends.
    let mut second = TcpStream::connect(address).unwrap();
    second
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
        .unwrap();
    let mut writer2 = second.try_clone().unwrap();
    let second_trickler = thread::spawn(move || {
        thread::sleep(Duration::from_millis(300));
        for byte in b"GET /imageapi/v1/attach HTTP/1.1\r\nX-Slow: "
            .iter()
            .chain(b"a".iter().cycle().take(10_000))
        {
            if writer2.write_all(&[*byte]).is_err() {
                return;
            }
            thread::sleep(Duration::from_millis(200));
        }
    });

    // A body that never comes in full.
    let mut body = TcpStream::connect(address).unwrap();
    body.write_all(
        format!(
            "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"kind\""
        )
        .as_bytes(),
    )
    .unwrap();

    // Meanwhile the service answers everyone else at once.
    for _ in 0..5 {
        let start = Instant::now();
        let resp = tcp_request(address, "GET", &path, None).unwrap();
        assert_eq!(resp.status, 200);
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "{:?}",
            start.elapsed()
        );
        thread::sleep(Duration::from_millis(100));
    }

    let (got, closed) = read_until_closed(&mut silent, bound);
    assert!(closed.is_some(), "a silent client kept its connection");
    assert!(matches!(status_of(&got), None | Some(408)), "{got:?}");

    let (got, closed) = read_until_closed(&mut trickle_first, bound);
    assert!(
        closed.is_some(),
        "a trickled request head kept its connection"
    );
    assert!(matches!(status_of(&got), None | Some(408)), "{got:?}");

    let (got, closed) = read_until_closed(&mut second, bound);
    assert!(
        closed.is_some(),
        "a trickled second request head kept its connection"
    );
    assert_eq!(status_of(&got), Some(200), "the first request was answered");

    let (got, closed) = read_until_closed(&mut body, bound);
    assert!(closed.is_some(), "an unfinished body kept its connection");
    let resp = harness::parse_response(&got).expect("an answer to the unfinished body");
    common::assert_error(&resp, 408);

    trickler.join().unwrap();
    second_trickler.join().unwrap();
    assert!(
        server.stderr().contains("too slow sending its request"),
        "{}",
        server.stderr()
    );
    drop(server);
}

#[test]
fn a_client_that_never_reads_its_responses_is_cut() {
    let (server, address) = http_server(&["--write-timeout", "1s", "--read-timeout", "5s"]);
    let mut stream = TcpStream::connect(address).unwrap();
    let mut writer = stream.try_clone().unwrap();
    const REQUESTS: usize = 3000;
    // Pipelined requests for a 30 KB document, never read: the socket buffers fill up.
    let pipeliner = thread::spawn(move || {
        let one = format!("GET {BASE}/swagger.json HTTP/1.1\r\nHost: localhost\r\n\r\n");
        for _ in 0..REQUESTS {
            if writer.write_all(one.as_bytes()).is_err() {
                return;
            }
        }
    });
    thread::sleep(Duration::from_secs(4));
    // Others are served meanwhile.
    let resp = tcp_request(address, "GET", &format!("{BASE}/attach"), None).unwrap();
    assert_eq!(resp.status, 200);
    let (got, closed) = read_until_closed(&mut stream, Duration::from_secs(30));
    assert!(
        closed.is_some(),
        "a client that does not read kept its connection"
    );
    let answers = got.windows(12).filter(|w| w == b"HTTP/1.1 200").count();
    assert!(
        answers < REQUESTS,
        "all {answers} answers went out: the connection was never cut"
    );
    pipeliner.join().unwrap();
    assert!(
        server.stderr().contains("too slow taking its response"),
        "{}",
        server.stderr()
    );
    drop(server);
}

#[test]
fn listen_limit_bounds_the_connections_held() {
    let (server, address) = http_server(&["--listen-limit", "2", "--read-timeout", "2s"]);
    let path = format!("{BASE}/attach");
    let idle: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(address).unwrap())
        .collect();
    thread::sleep(Duration::from_millis(200));
    // A third client waits for a slot: the two idle ones hold both until the read timeout.
    let start = Instant::now();
    let mut third = TcpStream::connect(address).unwrap();
    third
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let resp = harness::exchange(&mut third, &request_bytes("GET", &path, None)).unwrap();
    let waited = start.elapsed();
    assert_eq!(resp.status, 200);
    assert!(
        waited >= Duration::from_millis(1000),
        "answered after {waited:?}, while two connections held the limit"
    );
    assert!(waited < Duration::from_secs(10), "{waited:?}");
    drop(idle);
    // Without anyone holding the slots, requests are answered at once.
    for _ in 0..5 {
        let start = Instant::now();
        assert_eq!(
            tcp_request(address, "GET", &path, None).unwrap().status,
            200
        );
        assert!(start.elapsed() < Duration::from_secs(1));
    }
    drop(server);
}

#[test]
fn keep_alive_zero_answers_one_request_per_connection() {
    let (server, address) = http_server(&["--keep-alive", "0"]);
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .write_all(format!("GET {BASE}/attach HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
        .unwrap();
    let (got, closed) = read_until_closed(&mut stream, Duration::from_secs(5));
    assert!(closed.is_some(), "the connection stayed open");
    let resp = harness::parse_response(&got).unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("connection"), Some("close"));
    drop(server);
}

#[test]
fn graceful_timeout_bounds_the_stop() {
    // No read timeout: only the graceful timeout can end a request whose body never comes.
    let (mut server, address) = http_server(&["--graceful-timeout", "1s", "--read-timeout", "0"]);
    let mut stuck = TcpStream::connect(address).unwrap();
    stuck
        .write_all(
            format!(
                "POST {BASE}/attach HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n{{"
            )
            .as_bytes(),
        )
        .unwrap();
    thread::sleep(Duration::from_millis(300));
    let start = Instant::now();
    let status = server
        .stop_within(Duration::from_secs(10))
        .expect("the service did not stop within 10 s");
    assert!(status.success(), "exit {status}");
    assert!(
        start.elapsed() < Duration::from_secs(6),
        "stopping took {:?}",
        start.elapsed()
    );
    drop(stuck);
    drop(server);
}

#[test]
fn bad_limit_values_are_refused() {
    for (flag, value) in [
        ("--read-timeout", "30"),
        ("--write-timeout", "-1s"),
        ("--keep-alive", "forever"),
        ("--max-header-size", "big"),
        ("--listen-limit", "-2"),
        ("--graceful-timeout", "1y"),
    ] {
        let (status, stderr) = Server::refused(|_| vec![format!("{flag}={value}").into()]);
        assert!(!status.success(), "{flag} {value} accepted");
        assert!(stderr.contains(flag), "{flag} {value}: {stderr}");
    }
}
