//! Shared fixture of the end-to-end tests: the service under test, a minimal HTTP/1.1 client,
//! image builders, JSON request builders and kernel-state checks (mounts, loop devices).
//!
//! Every test starts its own [`Service`] with its own temp dir; kernel checks only look at
//! resources under that dir, so tests can run in parallel.

#![allow(dead_code)]

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::symlink;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Base path of every endpoint.
pub const BASE: &str = "/imageapi/v1";
/// Static busybox put inside the test images.
pub const BUSYBOX: &str = "/usr/bin/busybox";
/// `errno` of a write to a read-only filesystem.
pub const EROFS: i32 = 30;

const READY_TIMEOUT: Duration = Duration::from_secs(10);
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
const IO_TIMEOUT: Duration = Duration::from_secs(120);
/// How long kernel resources may take to disappear after the service released them.
pub const RELEASE_GRACE: Duration = Duration::from_secs(3);

// ---------------------------------------------------------------------------------------------
// HTTP client
// ---------------------------------------------------------------------------------------------

/// Where the service listens.
#[derive(Debug, Clone)]
pub enum Transport {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

/// One HTTP answer.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// Header names in lower case, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    /// First header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON; panics with the whole answer if it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| {
            panic!(
                "body of HTTP {} is not JSON ({e}): {:?}",
                self.status, self.body
            )
        })
    }
}

impl std::fmt::Display for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP {} {}", self.status, self.body)
    }
}

/// Sends one request over a fresh connection (`Connection: close`) and reads the whole answer.
/// `path` is the full request target, with its query. A `content_type` of `None` sends no
/// `Content-Type` header; a `body` of `None` sends no body and no `Content-Length`.
pub fn http_request(
    transport: &Transport,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: Option<&[u8]>,
) -> Response {
    match transport {
        Transport::Unix(socket) => {
            let stream = UnixStream::connect(socket)
                .unwrap_or_else(|e| panic!("connect to {}: {e}", socket.display()));
            stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
            stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
            exchange(stream, method, path, content_type, body)
        }
        Transport::Tcp(addr) => {
            let stream =
                TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
            stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
            stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
            exchange(stream, method, path, content_type, body)
        }
    }
}

fn exchange<S: Read + Write>(
    mut stream: S,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: Option<&[u8]>,
) -> Response {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nAccept: application/json\r\n"
    );
    if let Some(ct) = content_type {
        head.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    if let Some(body) = body {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut request = head.into_bytes();
    if let Some(body) = body {
        request.extend_from_slice(body);
    }
    // The server may answer early (413) and close before reading everything: keep what it said.
    if let Err(e) = stream.write_all(&request) {
        if !matches!(
            e.kind(),
            ErrorKind::BrokenPipe | ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
        ) {
            panic!("{method} {path}: write: {e}");
        }
    }
    let _ = stream.flush();
    let mut raw = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
                ) && !raw.is_empty() =>
            {
                break
            }
            Err(e) => panic!("{method} {path}: read: {e} (got {} bytes)", raw.len()),
        }
    }
    parse_response(&raw).unwrap_or_else(|e| {
        panic!(
            "{method} {path}: bad HTTP answer ({e}): {:?}",
            String::from_utf8_lossy(&raw)
        )
    })
}

fn parse_response(raw: &[u8]) -> Result<Response, String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of header")?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|e| e.to_string())?;
    let rest = &raw[end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or("no status line")?;
    let mut parts = status_line.split_whitespace();
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        return Err(format!("bad status line {status_line:?}"));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut headers = Vec::new();
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("bad header line {line:?}"))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    let find = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let body: Vec<u8> = if find("transfer-encoding")
        .map(|v| v.to_ascii_lowercase().contains("chunked"))
        .unwrap_or(false)
    {
        decode_chunked(rest)?
    } else if let Some(len) = find("content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| format!("bad content-length {len:?}"))?;
        if rest.len() < len {
            return Err(format!(
                "body shorter ({}) than content-length {len}",
                rest.len()
            ));
        }
        rest[..len].to_vec()
    } else {
        rest.to_vec()
    };
    let body = String::from_utf8(body).map_err(|e| format!("body is not UTF-8: {e}"))?;
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn decode_chunked(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("unterminated chunk size")?;
        let size_line = std::str::from_utf8(&data[..line_end]).map_err(|e| e.to_string())?;
        let size_hex = size_line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_hex, 16)
            .map_err(|_| format!("bad chunk size {size_line:?}"))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size + 2 {
            return Err("truncated chunk".into());
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

// ---------------------------------------------------------------------------------------------
// The service under test
// ---------------------------------------------------------------------------------------------

/// Options of [`Service::start_with`].
#[derive(Debug, Clone, Default)]
pub struct ServiceOptions {
    /// Also listen on plain HTTP at 127.0.0.1 on a free port.
    pub http: bool,
    /// Start without `--cleanup-on-exit`: a SIGTERM then leaves every object in place for the
    /// next start (see [`Service::restart`]).
    pub keep_objects: bool,
}

/// A running `imageapi-server` with its own temp dir (socket, mount dir, log dir, images).
///
/// Drop stops it with SIGTERM, fails the test if it does not exit 0 within 15 s or if it left a
/// mount or a loop device under the temp dir, and releases any such leftovers as a last resort.
/// When the test fails, the service's stderr is printed.
pub struct Service {
    tmp: Option<tempfile::TempDir>,
    dir: PathBuf,
    /// The command line of every start, but for `--cleanup-on-exit`.
    args: Vec<std::ffi::OsString>,
    child: Child,
    exit: Option<ExitStatus>,
    transport: Transport,
    http: Option<SocketAddr>,
}

impl Service {
    /// Starts the service on a unix socket and waits until it answers.
    pub fn start() -> Service {
        Service::start_with(ServiceOptions::default())
    }

    /// Starts the service on a unix socket and on plain HTTP (127.0.0.1, a free port).
    pub fn start_with_http() -> Service {
        Service::start_with(ServiceOptions {
            http: true,
            ..ServiceOptions::default()
        })
    }

    pub fn start_with(options: ServiceOptions) -> Service {
        let tmp = tempfile::Builder::new()
            .prefix("imageapi-e2e-")
            .tempdir()
            .expect("temp dir");
        let dir = fs::canonicalize(tmp.path()).expect("canonical temp dir");
        let socket = dir.join("api.sock");
        let mut args: Vec<std::ffi::OsString> = vec![
            "--scheme".into(),
            "unix".into(),
            "--socket-path".into(),
            socket.clone().into(),
            "--mount-dir".into(),
            dir.join("mounts").into(),
            "--log-dir".into(),
            dir.join("logs").into(),
            "--state-dir".into(),
            dir.join("state").into(),
        ];
        let http = if options.http {
            let port = free_port();
            args.extend(
                ["--scheme", "http", "--host", "127.0.0.1", "--port"].map(std::ffi::OsString::from),
            );
            args.push(port.to_string().into());
            Some(SocketAddr::from(([127, 0, 0, 1], port)))
        } else {
            None
        };
        let child = spawn_service(&dir, &args, !options.keep_objects);
        let mut service = Service {
            tmp: Some(tmp),
            dir,
            args,
            child,
            exit: None,
            transport: Transport::Unix(socket),
            http,
        };
        service.wait_ready();
        service
    }

    /// Stops the service with SIGTERM (it must exit 0) and starts it again on the same dirs,
    /// with `--cleanup-on-exit` unless `keep_objects`.
    pub fn restart(&mut self, keep_objects: bool) {
        self.stop_ok();
        self.start_again(keep_objects);
    }

    /// Kills the service with SIGKILL (a crash) and starts it again on the same dirs.
    pub fn crash_and_restart(&mut self, keep_objects: bool) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.exit = None;
        self.start_again(keep_objects);
    }

    /// The command line the service is started with (without `--cleanup-on-exit`).
    pub fn args(&self) -> &[std::ffi::OsString] {
        &self.args
    }

    fn start_again(&mut self, keep_objects: bool) {
        self.exit = None;
        self.child = spawn_service(&self.dir, &self.args, !keep_objects);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        let Transport::Unix(socket) = self.transport.clone() else {
            unreachable!()
        };
        let mut last = String::from("socket not there yet");
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                self.exit = Some(status);
                panic!("imageapi-server exited during startup with {status}");
            }
            if UnixStream::connect(&socket).is_ok() {
                let resp = self.get("/attach");
                if resp.status == 200 {
                    break;
                }
                last = resp.to_string();
            }
            if Instant::now() > deadline {
                panic!("imageapi-server not ready within {READY_TIMEOUT:?}: {last}");
            }
            thread::sleep(Duration::from_millis(50));
        }
        if let Some(addr) = self.http {
            loop {
                if TcpStream::connect(addr).is_ok() {
                    break;
                }
                if Instant::now() > deadline {
                    panic!(
                        "imageapi-server not listening on http://{addr} within {READY_TIMEOUT:?}"
                    );
                }
                thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// The test's temp dir (canonical): images, socket, `mounts/`, `logs/`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn mount_dir(&self) -> PathBuf {
        self.dir.join("mounts")
    }

    pub fn log_dir(&self) -> PathBuf {
        self.dir.join("logs")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http
    }

    /// What the service wrote on stderr so far.
    pub fn stderr_log(&self) -> String {
        fs::read_to_string(self.dir.join("service.stderr")).unwrap_or_default()
    }

    /// A request to `BASE + path` with an optional JSON body (`Content-Type: application/json`).
    pub fn request(&self, method: &str, path: &str, body: Option<&Value>) -> Response {
        let bytes = body.map(|b| serde_json::to_vec(b).unwrap());
        let content_type = body.map(|_| "application/json");
        http_request(
            &self.transport,
            method,
            &format!("{BASE}{path}"),
            content_type,
            bytes.as_deref(),
        )
    }

    pub fn get(&self, path: &str) -> Response {
        self.request("GET", path, None)
    }

    pub fn post(&self, path: &str, body: &Value) -> Response {
        self.request("POST", path, Some(body))
    }

    pub fn delete(&self, path: &str) -> Response {
        self.request("DELETE", path, None)
    }

    /// A request to a full path (no `BASE` added), any content type, raw bytes, on the socket.
    pub fn raw(
        &self,
        method: &str,
        full_path: &str,
        content_type: Option<&str>,
        body: Option<&[u8]>,
    ) -> Response {
        http_request(&self.transport, method, full_path, content_type, body)
    }

    /// Like [`Service::raw`] over plain HTTP; needs [`Service::start_with_http`].
    pub fn raw_tcp(
        &self,
        method: &str,
        full_path: &str,
        content_type: Option<&str>,
        body: Option<&[u8]>,
    ) -> Response {
        let addr = self.http.expect("service started without http");
        http_request(&Transport::Tcp(addr), method, full_path, content_type, body)
    }

    /// POST `/{what}` (attach|mount), asserts 201 and returns the created object.
    pub fn create(&self, what: &str, body: &Value) -> Value {
        let resp = self.post(&format!("/{what}"), body);
        assert_eq!(resp.status, 201, "POST /{what} {body}: {resp}");
        resp.json()
    }

    /// GET `path` (e.g. `/mount?kind=bind`), asserts 200 and a JSON array.
    pub fn list(&self, path: &str) -> Vec<Value> {
        let resp = self.get(path);
        assert_eq!(resp.status, 200, "GET {path}: {resp}");
        match resp.json() {
            Value::Array(items) => items,
            other => panic!("GET {path}: not an array: {other}"),
        }
    }

    /// GET `/{what}?id=N`, asserts a one-element array and returns that element.
    pub fn get_one(&self, what: &str, id: i64) -> Value {
        let items = self.list(&format!("/{what}?id={id}"));
        assert_eq!(items.len(), 1, "GET /{what}?id={id}: {items:?}");
        let item = items.into_iter().next().unwrap();
        assert_eq!(id_of(&item), id, "GET /{what}?id={id} answered {item}");
        item
    }

    /// The `refs` of one object, as GET reports it.
    pub fn refs(&self, what: &str, id: i64) -> i64 {
        refs_of(&self.get_one(what, id))
    }

    /// DELETE `/{what}?id=N`, asserts 200 and returns the deleted object.
    pub fn remove(&self, what: &str, id: i64) -> Value {
        let resp = self.delete(&format!("/{what}?id={id}"));
        assert_eq!(resp.status, 200, "DELETE /{what}?id={id}: {resp}");
        let v = resp.json();
        assert_eq!(id_of(&v), id, "DELETE /{what}?id={id} answered {v}");
        v
    }

    /// Asserts that GET /attach and GET /mount are both empty.
    pub fn assert_empty(&self) {
        let attaches = self.list("/attach");
        let mounts = self.list("/mount");
        assert!(
            attaches.is_empty() && mounts.is_empty(),
            "objects left: attach {attaches:?}, mount {mounts:?}"
        );
    }

    /// Sends SIGTERM and waits for the exit (SIGKILL and panic after 15 s).
    pub fn stop(&mut self) -> ExitStatus {
        if let Some(status) = self.exit {
            return status;
        }
        match self.terminate() {
            Ok(status) => status,
            Err(e) => panic!("{e}"),
        }
    }

    /// [`Service::stop`] and assert exit code 0.
    pub fn stop_ok(&mut self) {
        let status = self.stop();
        assert!(status.success(), "imageapi-server exited with {status}");
    }

    fn terminate(&mut self) -> Result<ExitStatus, String> {
        if let Some(status) = self.exit {
            return Ok(status);
        }
        if let Some(status) = self.child.try_wait().map_err(|e| e.to_string())? {
            self.exit = Some(status);
            return Ok(status);
        }
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) on our own child's pid; the child is not reaped yet (try_wait above),
        // so the pid cannot have been reused.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().map_err(|e| e.to_string())? {
                self.exit = Some(status);
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let status = self.child.wait().map_err(|e| e.to_string())?;
                self.exit = Some(status);
                return Err(format!(
                    "imageapi-server did not exit within {STOP_TIMEOUT:?} of SIGTERM (killed: {status})"
                ));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let panicking = thread::panicking();
        let mut problems = Vec::new();
        match self.terminate() {
            Ok(status) if !status.success() => {
                problems.push(format!("imageapi-server exited with {status}"))
            }
            Ok(_) => {}
            Err(e) => problems.push(e),
        }
        let mut leaks = leaks_under(&self.dir);
        if !leaks.is_empty() {
            wait_for(RELEASE_GRACE, || {
                leaks = leaks_under(&self.dir);
                leaks.is_empty()
            });
        }
        if !leaks.is_empty() {
            problems.push(format!("left behind after the service stopped: {leaks}"));
            force_cleanup(&self.dir);
        }
        let remaining = leaks_under(&self.dir);
        if !remaining.is_empty() {
            // Never recurse into a mounted filesystem when deleting the temp dir.
            if let Some(tmp) = self.tmp.take() {
                let kept = tmp.keep();
                eprintln!(
                    "could not release {remaining}; keeping {} untouched",
                    kept.display()
                );
            }
        }
        if panicking || !problems.is_empty() {
            eprintln!(
                "---- imageapi-server stderr ({}) ----\n{}\n---- end of stderr ----",
                self.dir.display(),
                self.stderr_log()
            );
        }
        if !problems.is_empty() {
            if panicking {
                eprintln!("service fixture: {}", problems.join("; "));
            } else {
                panic!("service fixture: {}", problems.join("; "));
            }
        }
    }
}

/// Starts `imageapi-server` with `args`; its stdout and stderr are appended to files in `dir`.
fn spawn_service(dir: &Path, args: &[std::ffi::OsString], cleanup_on_exit: bool) -> Child {
    let log = |name: &str| {
        fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(name))
            .expect("service log file")
    };
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_imageapi-server"));
    cmd.args(args);
    if cleanup_on_exit {
        cmd.arg("--cleanup-on-exit");
    }
    cmd.env("IMAGEAPI_LOGLEVEL", "DEBUG")
        .stdin(Stdio::null())
        .stdout(log("service.stdout"))
        .stderr(log("service.stderr"));
    cmd.spawn().expect("spawn imageapi-server")
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().unwrap().port()
}

// ---------------------------------------------------------------------------------------------
// Kernel state: mounts and loop devices
// ---------------------------------------------------------------------------------------------

/// One line of /proc/self/mountinfo.
#[derive(Debug, Clone)]
pub struct MountEntry {
    pub id: u64,
    pub parent: u64,
    pub root: String,
    pub mount_point: String,
    /// Per-mount options, e.g. `ro`, `nodev`, `noexec`, `relatime`.
    pub options: Vec<String>,
    pub fs_type: String,
    pub source: String,
    pub super_options: Vec<String>,
}

impl MountEntry {
    pub fn has_option(&self, opt: &str) -> bool {
        self.options.iter().any(|o| o == opt)
    }
}

fn unescape_mountinfo(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 4 <= bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let value = bytes[i + 1..i + 4]
                .iter()
                .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
            out.push(value as u8);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mount table of the tests' (and the service's) mount namespace.
pub fn mountinfo() -> Vec<MountEntry> {
    let text = fs::read_to_string("/proc/self/mountinfo").expect("read /proc/self/mountinfo");
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let l: Vec<&str> = left.split(' ').collect();
            let r: Vec<&str> = right.split(' ').collect();
            if l.len() < 6 || r.len() < 3 {
                return None;
            }
            Some(MountEntry {
                id: l[0].parse().ok()?,
                parent: l[1].parse().ok()?,
                root: unescape_mountinfo(l[3]),
                mount_point: unescape_mountinfo(l[4]),
                options: l[5].split(',').map(str::to_string).collect(),
                fs_type: r[0].to_string(),
                source: unescape_mountinfo(r[1]),
                super_options: r[2].split(',').map(str::to_string).collect(),
            })
        })
        .collect()
}

fn normalize(path: &str) -> &str {
    if path.len() > 1 {
        path.trim_end_matches('/')
    } else {
        path
    }
}

/// The topmost mount at exactly `mount_point`, if any.
pub fn mount_entry(mount_point: &str) -> Option<MountEntry> {
    let mp = normalize(mount_point);
    mountinfo().into_iter().rev().find(|m| m.mount_point == mp)
}

pub fn is_mounted(mount_point: &str) -> bool {
    mount_entry(mount_point).is_some()
}

/// Where cgroup2 is mounted: /sys/fs/cgroup/unified on a hybrid host, /sys/fs/cgroup on one
/// with cgroup2 alone.
pub fn cgroup2_root() -> PathBuf {
    mountinfo()
        .into_iter()
        .find(|m| m.fs_type == "cgroup2")
        .map(|m| PathBuf::from(m.mount_point))
        .expect("no cgroup2 mount on this host")
}

/// Mount points at or under `dir`.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let dir = dir.to_string_lossy().into_owned();
    let prefix = format!("{}/", normalize(&dir));
    let mut points: Vec<String> = mountinfo()
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|mp| *mp == dir || mp.starts_with(&prefix))
        .collect();
    points.dedup();
    points
}

fn loop_sys(device: &str) -> PathBuf {
    let name = device.rsplit('/').next().unwrap_or(device);
    Path::new("/sys/block").join(name).join("loop")
}

/// The backing file of a bound loop device (`/dev/loopN` or `loopN`), `None` when unbound.
pub fn loop_backing_file(device: &str) -> Option<String> {
    fs::read_to_string(loop_sys(device).join("backing_file"))
        .ok()
        .map(|s| s.trim_end_matches('\n').to_string())
        .filter(|s| !s.is_empty())
}

/// The partscan flag of a bound loop device.
pub fn loop_partscan(device: &str) -> Option<bool> {
    fs::read_to_string(loop_sys(device).join("partscan"))
        .ok()
        .map(|s| s.trim() == "1")
}

/// Every bound loop device: (`/dev/loopN`, backing file).
pub fn loop_devices() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir("/sys/block") else {
        return out;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") {
            continue;
        }
        if let Some(backing) = loop_backing_file(&name) {
            out.push((format!("/dev/{name}"), backing));
        }
    }
    out.sort();
    out
}

/// Loop devices whose backing file lies under `dir`.
pub fn loops_under(dir: &Path) -> Vec<(String, String)> {
    let prefix = format!("{}/", dir.to_string_lossy().trim_end_matches('/'));
    loop_devices()
        .into_iter()
        .filter(|(_, backing)| backing.starts_with(&prefix))
        .collect()
}

/// Kernel resources under a test's temp dir.
#[derive(Debug, Clone, Default)]
pub struct Leaks {
    pub mounts: Vec<String>,
    pub loops: Vec<(String, String)>,
}

impl Leaks {
    pub fn is_empty(&self) -> bool {
        self.mounts.is_empty() && self.loops.is_empty()
    }
}

impl std::fmt::Display for Leaks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "mounts {:?}, loop devices {:?}", self.mounts, self.loops)
    }
}

pub fn leaks_under(dir: &Path) -> Leaks {
    Leaks {
        mounts: mounts_under(dir),
        loops: loops_under(dir),
    }
}

/// Asserts that no mount lies under `dir` and no loop device is backed by a file in it
/// (allowing [`RELEASE_GRACE`] for the kernel to finish releasing).
pub fn assert_no_leaks(dir: &Path) {
    let mut leaks = leaks_under(dir);
    if !leaks.is_empty() {
        wait_for(RELEASE_GRACE, || {
            leaks = leaks_under(dir);
            leaks.is_empty()
        });
    }
    assert!(leaks.is_empty(), "kernel resources left: {leaks}");
}

/// Last resort: releases every mount under `dir` and every loop device backed by a file in it.
///
/// Mounts are unmounted deepest first and loop devices detached in rounds, so that a loop device
/// backed by a file inside a mount (loopback base mount) is detached before that mount, while its
/// backing path still names a file under `dir`. Whatever is still busy after that is unmounted
/// lazily.
/// Kills what still runs in the container cgroups of the service whose state dir is under
/// `dir` (a test that failed before deleting its containers), and removes those cgroups.
fn kill_containers_of(dir: &Path) {
    let Ok(store) = fs::read(dir.join("state/state.json")) else {
        return;
    };
    let Some(instance) = serde_json::from_slice::<Value>(&store)
        .ok()
        .and_then(|v| v["instance"].as_str().map(str::to_string))
    else {
        return;
    };
    let prefix = format!("{instance}-");
    for root in [
        "/sys/fs/cgroup",
        "/sys/fs/cgroup/unified",
        "/sys/fs/cgroup/freezer",
        "/sys/fs/cgroup/systemd",
    ] {
        let Ok(entries) = fs::read_dir(Path::new(root).join("imageapi")) else {
            continue;
        };
        for entry in entries.flatten() {
            if !entry.file_name().to_string_lossy().starts_with(&prefix) {
                continue;
            }
            let cgroup = entry.path();
            let _ = fs::write(cgroup.join("freezer.state"), "THAWED");
            let _ = fs::write(cgroup.join("cgroup.kill"), "1");
            let procs = fs::read_to_string(cgroup.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines().filter_map(|p| p.parse::<libc::pid_t>().ok()) {
                // SAFETY: kill(2) on a pid read from the test's own container cgroup.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            wait_for(Duration::from_secs(3), || {
                remove_cgroup_tree(&cgroup);
                !cgroup.exists()
            });
        }
    }
}

fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&entry.path());
            }
        }
    }
    let _ = fs::remove_dir(dir);
}

pub fn force_cleanup(dir: &Path) {
    kill_containers_of(dir);
    let umount = |point: &str, flags: libc::c_int| -> std::io::Result<()> {
        let c = std::ffi::CString::new(point).unwrap();
        // SAFETY: umount2 with a valid NUL-terminated path; no memory is shared.
        let rc = unsafe { libc::umount2(c.as_ptr(), flags) };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    for _round in 0..10 {
        let mut points = mounts_under(dir);
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for point in &points {
            let _ = umount(point, 0);
        }
        for (device, _) in loops_under(dir) {
            // Detaches an unused device now; a busy one is marked to detach on its last close.
            let _ = Command::new("losetup").arg("-d").arg(&device).output();
        }
        if leaks_under(dir).is_empty() {
            return;
        }
        thread::sleep(Duration::from_millis(100));
    }
    let mut points = mounts_under(dir);
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for point in points {
        if let Err(e) = umount(&point, libc::MNT_DETACH) {
            eprintln!("cleanup: umount {point}: {e}");
        }
    }
    thread::sleep(Duration::from_millis(200));
    for (device, backing) in loops_under(dir) {
        let out = Command::new("losetup").arg("-d").arg(&device).output();
        if let Ok(out) = out {
            if !out.status.success() {
                eprintln!(
                    "cleanup: losetup -d {device} ({backing}): {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }
}

/// Polls `f` every 50 ms until it is true or `timeout` passed; returns its last value.
pub fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Asserts that `mount_point` is not mounted (allowing [`RELEASE_GRACE`]).
pub fn assert_unmounted(mount_point: &str) {
    assert!(
        wait_for(RELEASE_GRACE, || !is_mounted(mount_point)),
        "{mount_point} is still mounted: {:?}",
        mount_entry(mount_point)
    );
}

/// Asserts that `device` is no longer bound (allowing [`RELEASE_GRACE`]), or bound to a file
/// other than `backing` (the device number may have been reused by another test).
pub fn assert_detached(device: &str, backing: &Path) {
    let backing = backing.to_string_lossy().into_owned();
    assert!(
        wait_for(RELEASE_GRACE, || loop_backing_file(device).as_deref()
            != Some(backing.as_str())),
        "{device} is still bound to {backing}"
    );
}

// ---------------------------------------------------------------------------------------------
// Images
// ---------------------------------------------------------------------------------------------

/// Runs a command, panicking with its output when it fails.
pub fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}: {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes `files` (relative path, content) under `root`, making parent dirs.
pub fn write_tree(root: &Path, files: &[(&str, &str)]) {
    for (rel, content) in files {
        let path = root.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, content).unwrap();
    }
}

/// Content of `hello.txt` in the image named `name`.
pub fn hello_text(name: &str) -> String {
    format!("hello from {name}\n")
}

/// Content of `dir/nested.txt` in every standard image.
pub const NESTED_TEXT: &str = "nested file\n";

/// The standard image tree: `hello.txt`, `dir/nested.txt`, an absolute symlink `escape -> /etc`,
/// `up -> ../../..`, `bin/busybox` and `bin/sh -> busybox`.
pub fn standard_tree(root: &Path, name: &str) {
    fs::create_dir_all(root.join("bin")).unwrap();
    write_tree(
        root,
        &[
            ("hello.txt", &hello_text(name)),
            ("dir/nested.txt", NESTED_TEXT),
        ],
    );
    symlink("/etc", root.join("escape")).unwrap();
    symlink("../../..", root.join("up")).unwrap();
    fs::copy(BUSYBOX, root.join("bin/busybox")).expect("copy busybox");
    symlink("busybox", root.join("bin/sh")).unwrap();
}

pub fn mksquashfs(src: &Path, out: &Path) {
    run(Command::new("mksquashfs").arg(src).arg(out).args([
        "-noappend",
        "-no-progress",
        "-quiet",
        "-no-xattrs",
    ]));
}

pub fn mkext4(src: &Path, out: &Path, size_mib: u64) {
    let f = fs::File::create(out).unwrap();
    f.set_len(size_mib * 1024 * 1024).unwrap();
    drop(f);
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(src)
        .arg(out));
}

/// `dir/<name>.squashfs`: the standard tree plus `extra` files.
pub fn squashfs_with(dir: &Path, name: &str, extra: &[(&str, &str)]) -> PathBuf {
    let src = dir.join(format!("{name}.src"));
    standard_tree(&src, name);
    write_tree(&src, extra);
    let out = dir.join(format!("{name}.squashfs"));
    mksquashfs(&src, &out);
    out
}

/// `dir/<name>.squashfs` with the standard tree.
/// `dir/<name>.squashfs`: the standard tree plus the directories a container init mounts on
/// (`proc`, `sys`, `dev`, `tmp`), for read-only container roots.
pub fn busybox_image(svc: &Service, name: &str) -> PathBuf {
    squashfs_with(
        svc.dir(),
        name,
        &[
            ("proc/.keep", ""),
            ("sys/.keep", ""),
            ("dev/.keep", ""),
            ("tmp/.keep", ""),
        ],
    )
}

pub fn squashfs_image(dir: &Path, name: &str) -> PathBuf {
    squashfs_with(dir, name, &[])
}

/// `dir/<name>.ext4` (16 MiB) with the standard tree.
pub fn ext4_image(dir: &Path, name: &str) -> PathBuf {
    let src = dir.join(format!("{name}.src"));
    standard_tree(&src, name);
    let out = dir.join(format!("{name}.ext4"));
    mkext4(&src, &out, 16);
    out
}

/// Name of the image file inside [`outer_squashfs_image`].
pub const INNER_IMAGE: &str = "inner.squashfs";

/// `dir/<name>.squashfs`: the standard tree plus `inner.squashfs`, itself a standard image
/// named `inner` (its `hello.txt` says [`hello_text`]`("inner")`).
pub fn outer_squashfs_image(dir: &Path, name: &str) -> PathBuf {
    let inner_src = dir.join(format!("{name}-inner.src"));
    standard_tree(&inner_src, "inner");
    let inner = dir.join(format!("{name}-inner.squashfs"));
    mksquashfs(&inner_src, &inner);
    let src = dir.join(format!("{name}.src"));
    standard_tree(&src, name);
    fs::copy(&inner, src.join(INNER_IMAGE)).unwrap();
    let out = dir.join(format!("{name}.squashfs"));
    mksquashfs(&src, &out);
    out
}

// ---------------------------------------------------------------------------------------------
// Request builders
// ---------------------------------------------------------------------------------------------

/// `{"id": N}`: a reference to an existing object.
pub fn by_id(id: i64) -> Value {
    json!({ "id": id })
}

/// A loopback attach of a host file (base root).
pub fn loopback(path: &Path) -> Value {
    json!({
        "kind": "loopback",
        "loopback": { "path": path.to_string_lossy(), "base": "root" }
    })
}

/// A loopback attach of `path` relative to `mount` (a definition or a reference).
pub fn loopback_in(mount: Value, path: &str) -> Value {
    json!({
        "kind": "loopback",
        "loopback": { "path": path, "base": "mount", "mount": mount }
    })
}

/// A local attach of a host block device.
pub fn local(path: &str) -> Value {
    json!({ "kind": "local", "local": { "path": path } })
}

/// A mount of an attach (a definition or a reference).
pub fn attach_mount(attach: Value, fs_type: &str, options: &[&str]) -> Value {
    json!({
        "kind": "attach",
        "attach": { "attach": attach, "fs_type": fs_type, "mount_options": options }
    })
}

/// A read-only squashfs mount of a loopback of `image`.
pub fn squashfs_mount(image: &Path) -> Value {
    attach_mount(loopback(image), "squashfs", &["ro"])
}

/// A bind mount of a host path.
pub fn bind_root(path: &Path, recursive: bool, ro: bool) -> Value {
    json!({
        "kind": "bind",
        "bind": { "path": path.to_string_lossy(), "base": "root", "recursive": recursive, "ro": ro }
    })
}

/// A bind mount of `path` relative to `mount` (a definition or a reference).
pub fn bind_in(mount: Value, path: &str, recursive: bool, ro: bool) -> Value {
    json!({
        "kind": "bind",
        "bind": { "path": path, "base": "mount", "mount": mount, "recursive": recursive, "ro": ro }
    })
}

/// An overlay of `lower` (first is topmost).
pub fn overlay(lower: Vec<Value>) -> Value {
    json!({ "kind": "overlay", "overlay": { "lower": lower } })
}

// ---------------------------------------------------------------------------------------------
// Response helpers
// ---------------------------------------------------------------------------------------------

pub fn id_of(v: &Value) -> i64 {
    v["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("no integer id in {v}"))
}

pub fn refs_of(v: &Value) -> i64 {
    v["refs"]
        .as_i64()
        .unwrap_or_else(|| panic!("no integer refs in {v}"))
}

pub fn str_of<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string at {pointer} in {v}"))
}

/// `device_file` of an attach.
pub fn device_of(v: &Value) -> String {
    str_of(v, "/device_file").to_string()
}

/// `mountpoint` of a mount.
pub fn mountpoint_of(v: &Value) -> String {
    str_of(v, "/mountpoint").to_string()
}

/// Ids of a list, sorted.
pub fn ids(items: &[Value]) -> Vec<i64> {
    let mut ids: Vec<i64> = items.iter().map(id_of).collect();
    ids.sort();
    ids
}

/// Asserts an error answer: `status`, JSON body with `code == status` and a string `message`.
/// Returns the body.
pub fn assert_error(resp: &Response, status: u16) -> Value {
    assert_eq!(resp.status, status, "expected HTTP {status}, got {resp}");
    let body = resp.json();
    assert_eq!(
        body["code"].as_i64(),
        Some(i64::from(status)),
        "code of {resp}"
    );
    assert!(body["message"].is_string(), "message of {resp}");
    body
}

/// Asserts a non-2xx answer with a well-formed error body; returns the body.
pub fn assert_any_error(resp: &Response) -> Value {
    assert!(
        (400..600).contains(&resp.status),
        "expected an error, got {resp}"
    );
    assert_error(resp, resp.status)
}

/// Asserts a 422 naming `field` (its own name, e.g. `path`) in `field` and in `message`.
pub fn assert_invalid(resp: &Response, field: &str) -> Value {
    let body = assert_error(resp, 422);
    let named = body["field"]
        .as_str()
        .unwrap_or_else(|| panic!("no field in {resp}"));
    assert!(
        named.contains(field),
        "field {named:?} does not name {field:?}: {resp}"
    );
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains(field),
        "message does not name {field:?}: {resp}"
    );
    body
}

/// Asserts an error answer carrying `object`, `stage` (when given) and a non-empty `reason`.
pub fn assert_nested_failure(resp: &Response, object: &str, stage: Option<&str>) -> Value {
    let body = assert_any_error(resp);
    assert_eq!(body["object"].as_str(), Some(object), "object of {resp}");
    let got_stage = body["stage"]
        .as_str()
        .unwrap_or_else(|| panic!("no stage in {resp}"));
    if let Some(stage) = stage {
        assert_eq!(got_stage, stage, "stage of {resp}");
    }
    let reason = body["reason"]
        .as_str()
        .unwrap_or_else(|| panic!("no reason in {resp}"));
    assert!(!reason.is_empty(), "empty reason in {resp}");
    body
}
