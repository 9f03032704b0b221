//! A service started with any command line (schemes, TLS, limits, log level), for the transport
//! and hostile input tests; plus a test PKI and an HTTPS client. Included with
//! `#[path = "contract/harness.rs"] mod harness;` next to `mod common;`.

#![allow(dead_code)]

use std::ffi::OsString;
use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

pub use crate::common::free_port;
use crate::common::{force_cleanup, leaks_under, Response, ServerProcess, RELEASE_GRACE};

const READY_TIMEOUT: Duration = Duration::from_secs(15);
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// An `imageapi-server` in its own temp dir, started with the given flags (the dirs and
/// `--cleanup-on-exit` are added). Dropping it stops it with SIGTERM, fails the test if it does
/// not exit 0 or left a mount or loop device under its dir, and removes the dir.
pub struct Server {
    tmp: Option<tempfile::TempDir>,
    dir: PathBuf,
    process: ServerProcess,
    /// Expect a non-zero exit (a test of a refused start).
    expect_failure: bool,
}

/// The command line of a service in `dir`, with `args` after the dir flags.
fn command(dir: &Path, args: &[OsString], envs: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(crate::common::SERVER);
    cmd.arg("--mount-dir")
        .arg(dir.join("mounts"))
        .arg("--log-dir")
        .arg(dir.join("logs"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--cleanup-on-exit")
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("HOST")
        .env_remove("PORT")
        .env_remove("TLS_HOST")
        .env_remove("TLS_PORT")
        .env_remove("TLS_CERTIFICATE")
        .env_remove("TLS_PRIVATE_KEY")
        .env_remove("TLS_CA_CERTIFICATE")
        .env("IMAGEAPI_LOGLEVEL", "DEBUG")
        .envs(envs.iter().copied())
        .stdin(Stdio::null());
    cmd
}

fn new_dir() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::Builder::new()
        .prefix("imageapi-sec-")
        .tempdir()
        .expect("temp dir");
    let dir = fs::canonicalize(tmp.path()).expect("canonical temp dir");
    (tmp, dir)
}

pub fn os_args(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

impl Server {
    /// Starts a service and waits until it logged that it serves.
    pub fn start(args: &[OsString]) -> Server {
        Server::start_env(args, &[])
    }

    pub fn start_env(args: &[OsString], envs: &[(&str, &str)]) -> Server {
        let (tmp, dir) = new_dir();
        Server::start_in(tmp, dir, args, envs)
    }

    /// Starts a service in a temp dir prepared by the caller (`prepare` gets the dir and
    /// returns the flags, which may name files in it).
    pub fn start_prepared(
        prepare: impl FnOnce(&Path) -> Vec<OsString>,
        envs: &[(&str, &str)],
    ) -> Server {
        let (tmp, dir) = new_dir();
        let args = prepare(&dir);
        Server::start_in(tmp, dir, &args, envs)
    }

    fn start_in(
        tmp: tempfile::TempDir,
        dir: PathBuf,
        args: &[OsString],
        envs: &[(&str, &str)],
    ) -> Server {
        let stderr = fs::File::create(dir.join("service.stderr")).expect("stderr file");
        let process = ServerProcess::spawn(
            command(&dir, args, envs)
                .stdout(Stdio::null())
                .stderr(stderr),
        )
        .expect("spawn imageapi-server");
        let mut server = Server {
            tmp: Some(tmp),
            dir,
            process,
            expect_failure: false,
        };
        server.wait_ready();
        server
    }

    /// Runs a service that must refuse to start; returns its exit status and stderr.
    pub fn refused(prepare: impl FnOnce(&Path) -> Vec<OsString>) -> (ExitStatus, String) {
        let (tmp, dir) = new_dir();
        let args = prepare(&dir);
        let output = command(&dir, &args, &[])
            .output()
            .expect("run imageapi-server");
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(
            leaks_under(&dir).is_empty(),
            "a refused start left kernel resources"
        );
        drop(tmp);
        (output.status, stderr)
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.process.try_exit().expect("try_wait") {
                panic!(
                    "imageapi-server exited during startup with {status}:\n{}",
                    self.stderr()
                );
            }
            if self.stderr().contains("serving") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "imageapi-server not serving within {READY_TIMEOUT:?}:\n{}",
                self.stderr()
            );
            thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// What the service wrote on stderr so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(self.dir.join("service.stderr")).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for the exit; `None` if it did not exit in time (then killed).
    pub fn stop_within(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.process.terminate(timeout).ok()
    }

    /// Stops the service and asserts it exited 0 within the stop timeout.
    pub fn stop_ok(&mut self) {
        match self.stop_within(STOP_TIMEOUT) {
            Some(status) if status.success() => {}
            Some(status) => panic!("imageapi-server exited with {status}:\n{}", self.stderr()),
            None => panic!(
                "imageapi-server did not stop within {STOP_TIMEOUT:?}:\n{}",
                self.stderr()
            ),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let panicking = thread::panicking();
        let mut problems = Vec::new();
        match self.stop_within(STOP_TIMEOUT) {
            Some(status) if status.success() || self.expect_failure => {}
            Some(status) => problems.push(format!("imageapi-server exited with {status}")),
            None => problems.push("imageapi-server did not stop in time (killed)".to_string()),
        }
        let mut leaks = leaks_under(&self.dir);
        let deadline = Instant::now() + RELEASE_GRACE;
        while !leaks.is_empty() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
            leaks = leaks_under(&self.dir);
        }
        if !leaks.is_empty() {
            problems.push(format!("left behind: {leaks}"));
            force_cleanup(&self.dir);
            if !leaks_under(&self.dir).is_empty() {
                if let Some(tmp) = self.tmp.take() {
                    let kept = tmp.keep();
                    eprintln!("could not release everything; keeping {}", kept.display());
                }
            }
        }
        if panicking || !problems.is_empty() {
            eprintln!(
                "---- imageapi-server stderr ({}) ----\n{}\n---- end ----",
                self.dir.display(),
                self.stderr()
            );
        }
        if !problems.is_empty() && !panicking {
            panic!("server fixture: {}", problems.join("; "));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP over any stream
// ---------------------------------------------------------------------------------------------

/// A request with `Connection: close`, as bytes.
pub fn request_bytes(method: &str, path: &str, body: Option<&[u8]>) -> Vec<u8> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    if let Some(body) = body {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    if let Some(body) = body {
        bytes.extend_from_slice(body);
    }
    bytes
}

/// Parses one whole HTTP/1.1 answer with a `Content-Length` (or none: to the end).
pub fn parse_response(raw: &[u8]) -> Result<Response, String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("no end of head in {:?}", String::from_utf8_lossy(raw)))?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|e| e.to_string())?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let rest = &raw[end + 4..];
    let length = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(rest.len());
    if rest.len() < length {
        return Err(format!("body shorter than {length}: {}", rest.len()));
    }
    Ok(Response {
        status,
        headers,
        body: String::from_utf8_lossy(&rest[..length]).into_owned(),
    })
}

/// Writes `request` and reads until the peer closes; an error or reset after some bytes ends
/// the answer too.
pub fn exchange<S: Read + Write>(stream: &mut S, request: &[u8]) -> Result<Response, String> {
    // The server may answer early (413) and close before reading everything: keep what it said.
    let written = stream.write_all(request).and_then(|()| stream.flush());
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if !raw.is_empty() => {
                let _ = e;
                break;
            }
            Err(e) => {
                return Err(match written {
                    Err(w) => format!("write: {w}; read: {e}"),
                    Ok(()) => format!("read: {e}"),
                })
            }
        }
    }
    if raw.is_empty() {
        if let Err(w) = written {
            return Err(format!("write: {w}"));
        }
    }
    parse_response(&raw)
}

/// One request over plain TCP.
pub fn tcp_request(
    address: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> Result<Response, String> {
    let mut stream = TcpStream::connect(address).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    exchange(&mut stream, &request_bytes(method, path, body))
}

// ---------------------------------------------------------------------------------------------
// PKI and HTTPS client
// ---------------------------------------------------------------------------------------------

/// A certificate and its key, in PEM.
#[derive(Clone)]
pub struct Pem {
    pub certificate: String,
    pub key: String,
}

impl Pem {
    /// Writes `<name>.crt` and `<name>.key` (mode 0600) into `dir`; returns their paths.
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        use std::os::unix::fs::PermissionsExt;
        let certificate = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        fs::write(&certificate, &self.certificate).unwrap();
        fs::write(&key, &self.key).unwrap();
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
        (certificate, key)
    }
}

/// A certificate authority that signs server and client certificates.
pub struct Authority {
    pub pem: Pem,
    issuer: Issuer<'static, KeyPair>,
}

impl Authority {
    pub fn new(name: &str) -> Authority {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let certificate = params.self_signed(&key).unwrap();
        let pem = Pem {
            certificate: certificate.pem(),
            key: key.serialize_pem(),
        };
        Authority {
            pem,
            issuer: Issuer::new(params, key),
        }
    }

    fn sign(&self, name: &str, sans: &[&str], usage: ExtendedKeyUsagePurpose) -> Pem {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![usage];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let certificate = params.signed_by(&key, &self.issuer).unwrap();
        Pem {
            certificate: certificate.pem(),
            key: key.serialize_pem(),
        }
    }

    /// A server certificate for localhost and 127.0.0.1.
    pub fn server(&self) -> Pem {
        self.sign(
            "imageapi test server",
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A client certificate.
    pub fn client(&self, name: &str) -> Pem {
        self.sign(name, &[], ExtendedKeyUsagePurpose::ClientAuth)
    }

    /// The flags of a server on https://127.0.0.1:`port` with a certificate of this authority,
    /// asking clients for one of its certificates too (mutual TLS); its files go into `dir`.
    pub fn mutual_tls_server_args(&self, dir: &Path, port: u16) -> Vec<OsString> {
        let (certificate, key) = self.server().write(dir, "server");
        let ca_file = dir.join("ca.crt");
        fs::write(&ca_file, &self.pem.certificate).unwrap();
        let mut args = os_args(&["--scheme", "https", "--tls-host", "127.0.0.1"]);
        args.extend([
            "--tls-port".into(),
            port.to_string().into(),
            "--tls-certificate".into(),
            certificate.into(),
            "--tls-key".into(),
            key.into(),
            "--tls-ca".into(),
            ca_file.into(),
        ]);
        args
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A TLS client trusting `ca` (PEM), presenting `client` if given.
pub fn tls_client(ca: &str, client: Option<&Pem>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(certificate.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match client {
        Some(pem) => {
            let chain = CertificateDer::pem_slice_iter(pem.certificate.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_slice(pem.key.as_bytes()).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    Arc::new(config)
}

/// One HTTPS request to `address` (certificate name `localhost`). An `Err` is a refused
/// handshake or a connection cut before any answer.
pub fn tls_request(
    config: &Arc<rustls::ClientConfig>,
    address: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> Result<Response, String> {
    let tcp = TcpStream::connect(address).map_err(|e| format!("connect: {e}"))?;
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let connection =
        rustls::ClientConnection::new(config.clone(), ServerName::try_from("localhost").unwrap())
            .map_err(|e| e.to_string())?;
    let mut stream = rustls::StreamOwned::new(connection, tcp);
    exchange(&mut stream, &request_bytes(method, path, body))
}
