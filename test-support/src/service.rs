//! The service under test: a running `imageapi-server` with its own temp dir, that fails the
//! test when it does not stop cleanly or leaves kernel resources behind.

use std::ffi::OsString;
use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{
    force_cleanup, free_port, http_request, id_of, leaks_under, private_dirs_args, refs_of,
    wait_for, EventStream, NotReady, Response, ServerProcess, Transport, BASE, RELEASE_GRACE,
};

/// Generous: under software emulation (the guest suite), a start that adopts objects has been
/// seen to take more than 10 s.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// Options of [`Service::launch`].
#[derive(Debug, Clone, Default)]
pub struct ServiceOptions {
    /// Also listen on plain HTTP at 127.0.0.1 on a free port.
    pub http: bool,
    /// Start without `--cleanup-on-exit`: a SIGTERM then leaves every object in place for the
    /// next start (see [`Service::restart`]).
    pub keep_objects: bool,
    /// `IMAGEAPI_LOGLEVEL` (a logrus level word); `DEBUG` when `None`.
    pub log_level: Option<&'static str>,
    /// More flags for every start (e.g. `--uri-cache-limit`).
    pub extra_args: Vec<OsString>,
    /// The state dir; by default `state` in the service's temp dir.
    pub state_dir: Option<PathBuf>,
}

/// A running `imageapi-server` with its own temp dir (socket, mount dir, log dir, images).
///
/// Drop stops it with SIGTERM, fails the test if it does not exit 0 within 15 s or if it left a
/// mount or a loop device under the temp dir, and releases any such leftovers as a last resort.
/// When the test fails, the service's stderr is printed.
pub struct Service {
    tmp: Option<tempfile::TempDir>,
    dir: PathBuf,
    /// The service binary.
    server: PathBuf,
    /// The command line of every start, but for `--cleanup-on-exit`.
    args: Vec<OsString>,
    process: ServerProcess,
    /// `IMAGEAPI_LOGLEVEL` of every start.
    log_level: &'static str,
    transport: Transport,
    http: Option<SocketAddr>,
}

impl Service {
    /// Starts `server` (the `imageapi-server` binary) on a unix socket, and on plain HTTP
    /// (127.0.0.1, a free port) with `options.http`, and waits until it answers.
    pub fn launch(server: &Path, options: ServiceOptions) -> Service {
        let tmp = tempfile::Builder::new()
            .prefix("imageapi-e2e-")
            .tempdir()
            .expect("temp dir");
        let dir = fs::canonicalize(tmp.path()).expect("canonical temp dir");
        let socket = dir.join("api.sock");
        let mut args = private_dirs_args(
            &socket,
            &dir.join("mounts"),
            &dir.join("logs"),
            &options
                .state_dir
                .clone()
                .unwrap_or_else(|| dir.join("state")),
        );
        let http = if options.http {
            let port = free_port();
            args.extend(["--scheme", "http", "--host", "127.0.0.1", "--port"].map(OsString::from));
            args.push(port.to_string().into());
            Some(SocketAddr::from(([127, 0, 0, 1], port)))
        } else {
            None
        };
        args.extend(options.extra_args.iter().cloned());
        let log_level = options.log_level.unwrap_or("DEBUG");
        let process = spawn_service(server, &dir, &args, !options.keep_objects, log_level);
        let mut service = Service {
            tmp: Some(tmp),
            dir,
            server: server.to_owned(),
            args,
            process,
            log_level,
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
        let _ = self.process.kill();
        self.start_again(keep_objects);
    }

    /// The command line the service is started with (without `--cleanup-on-exit`).
    pub fn args(&self) -> &[OsString] {
        &self.args
    }

    fn start_again(&mut self, keep_objects: bool) {
        self.process = spawn_service(
            &self.server,
            &self.dir,
            &self.args,
            !keep_objects,
            self.log_level,
        );
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        let Transport::Unix(socket) = self.transport.clone() else {
            unreachable!()
        };
        let poll = Duration::from_millis(50);
        match self
            .process
            .wait_ready(&socket, READY_TIMEOUT, poll, || Ok(()))
        {
            Ok(()) => {}
            Err(NotReady::Exited(status)) => {
                panic!("imageapi-server exited during startup with {status}")
            }
            Err(NotReady::TimedOut(last)) => {
                panic!("imageapi-server not ready within {READY_TIMEOUT:?}: {last}")
            }
            Err(NotReady::Stopped(why)) => panic!("imageapi-server not ready: {why}"),
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
        self.process.pid()
    }

    /// The service binary it runs.
    pub fn server(&self) -> &Path {
        &self.server
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

    /// Opens `GET BASE + path` as an event stream on the unix socket, resuming after
    /// `last_event_id` when given.
    pub fn events(&self, path: &str, last_event_id: Option<u64>) -> EventStream {
        let Transport::Unix(socket) = &self.transport else {
            unreachable!("the service always listens on its unix socket")
        };
        let headers: Vec<(&str, String)> = last_event_id
            .map(|id| ("Last-Event-ID", id.to_string()))
            .into_iter()
            .collect();
        EventStream::open(
            socket,
            &format!("{BASE}{path}"),
            &headers,
            Duration::from_secs(30),
        )
        .expect("opening the event stream")
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
        match self.process.terminate(STOP_TIMEOUT) {
            Ok(status) => status,
            Err(e) => panic!("{e}"),
        }
    }

    /// [`Service::stop`] and assert exit code 0.
    pub fn stop_ok(&mut self) {
        let status = self.stop();
        assert!(status.success(), "imageapi-server exited with {status}");
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let panicking = thread::panicking();
        let mut problems = Vec::new();
        match self.process.terminate(STOP_TIMEOUT) {
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

/// Starts `server` with `args`; its stdout and stderr are appended to files in `dir`.
fn spawn_service(
    server: &Path,
    dir: &Path,
    args: &[OsString],
    cleanup_on_exit: bool,
    log_level: &str,
) -> ServerProcess {
    let log = |name: &str| {
        fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(name))
            .expect("service log file")
    };
    let mut cmd = Command::new(server);
    cmd.args(args);
    if cleanup_on_exit {
        cmd.arg("--cleanup-on-exit");
    }
    cmd.env("IMAGEAPI_LOGLEVEL", log_level)
        .stdin(Stdio::null())
        .stdout(log("service.stdout"))
        .stderr(log("service.stderr"));
    ServerProcess::spawn(&mut cmd).unwrap_or_else(|e| panic!("spawn {}: {e}", server.display()))
}
