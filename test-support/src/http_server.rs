//! A small HTTP/1.1 server on 127.0.0.1 for the `uri` mount tests and the benchmark: it serves
//! files and byte strings (with an `ETag`, answering `If-None-Match` with 304), 404s what it
//! does not know, and on request redirects, truncates a body or stalls in the middle of one.
//! [`HttpServer::start_https`] serves the same over TLS with a certificate of a fresh test CA.
//!
//! One request a connection (`Connection: close`); every request is counted by path. Drop
//! stops it: the listener and the connections it still serves (a stalled one ends too).

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// What the server answers for a path.
#[derive(Debug, Clone)]
pub enum Reply {
    /// The file's content (read as it is sent).
    File(PathBuf),
    Bytes(Arc<Vec<u8>>),
    /// The bytes' full `Content-Length`, but the connection closes after `after` of them.
    Truncated {
        bytes: Arc<Vec<u8>>,
        after: usize,
    },
    /// `after` bytes of the body, then nothing until the server stops.
    Stall {
        bytes: Arc<Vec<u8>>,
        after: usize,
    },
    /// The file's content at about `bytes_per_second`: a download that takes a while.
    Throttled {
        file: PathBuf,
        bytes_per_second: u64,
    },
    /// 302 to another path of this server.
    Redirect(String),
}

impl Reply {
    pub fn bytes(bytes: Vec<u8>) -> Reply {
        Reply::Bytes(Arc::new(bytes))
    }
}

#[derive(Default)]
struct Shared {
    routes: HashMap<String, Reply>,
    requests: HashMap<String, usize>,
    /// 200 answers whose body was sent, by path.
    bodies: HashMap<String, usize>,
}

/// A test certificate authority and the server certificate it signed (PEM).
pub struct TestCa {
    pub ca_pem: String,
    server: Arc<rustls::ServerConfig>,
}

impl TestCa {
    fn new() -> TestCa {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
        };
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "imageapi test CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().expect("server key");
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .expect("server params");
        params
            .distinguished_name
            .push(DnType::CommonName, "imageapi test server");
        let cert = params.signed_by(&key, &issuer).expect("server certificate");
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .expect("server TLS config");
        TestCa {
            ca_pem: ca_cert.pem(),
            server: Arc::new(server),
        }
    }
}

/// The running server.
pub struct HttpServer {
    addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
    tls: Option<TestCa>,
}

impl HttpServer {
    /// Plain HTTP on a free port of 127.0.0.1.
    pub fn start() -> HttpServer {
        Self::start_with(None)
    }

    /// HTTPS on a free port of 127.0.0.1, with a certificate (for `localhost` and `127.0.0.1`)
    /// of a fresh CA: see [`HttpServer::ca_pem`].
    pub fn start_https() -> HttpServer {
        Self::start_with(Some(TestCa::new()))
    }

    fn start_with(tls: Option<TestCa>) -> HttpServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let addr = listener.local_addr().expect("local address");
        let shared = Arc::new(Mutex::new(Shared::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let tls_config = tls.as_ref().map(|ca| ca.server.clone());
        let accept = {
            let (shared, stop) = (shared.clone(), stop.clone());
            thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let (shared, stop, tls) = (shared.clone(), stop.clone(), tls_config.clone());
                    thread::spawn(move || {
                        let _ = serve_connection(stream, &shared, &stop, tls);
                    });
                }
            })
        };
        HttpServer {
            addr,
            shared,
            stop,
            accept: Some(accept),
            tls,
        }
    }

    /// The test CA's certificate (PEM), for an https server.
    pub fn ca_pem(&self) -> Option<&str> {
        self.tls.as_ref().map(|ca| ca.ca_pem.as_str())
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What `path` (starting with `/`) answers from now on.
    pub fn serve(&self, path: &str, reply: Reply) {
        self.lock().routes.insert(path.to_string(), reply);
    }

    /// The URL of `path` on this server.
    pub fn url(&self, path: &str) -> String {
        match self.tls {
            Some(_) => format!("https://localhost:{}{path}", self.addr.port()),
            None => format!("http://{}{path}", self.addr),
        }
    }

    /// Requests for `path` so far.
    pub fn requests(&self, path: &str) -> usize {
        self.lock().requests.get(path).copied().unwrap_or(0)
    }

    /// 200 answers for `path` whose body the server sent (304s and errors not counted).
    pub fn bodies(&self, path: &str) -> usize {
        self.lock().bodies.get(path).copied().unwrap_or(0)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop up.
        let _ = TcpStream::connect(self.addr);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

/// One request, one answer.
fn serve_connection(
    stream: TcpStream,
    shared: &Mutex<Shared>,
    stop: &AtomicBool,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let raw = stream.try_clone()?;
    match tls {
        Some(config) => {
            let connection = rustls::ServerConnection::new(config).map_err(io::Error::other)?;
            let mut tls_stream = rustls::StreamOwned::new(connection, stream);
            let result = answer(&mut tls_stream, shared, stop);
            tls_stream.conn.send_close_notify();
            let _ = tls_stream.flush();
            result
        }
        None => {
            let mut stream = stream;
            answer(&mut stream, shared, stop)
        }
    }?;
    let _ = raw.shutdown(Shutdown::Both);
    Ok(())
}

fn answer(
    stream: &mut (impl Read + Write),
    shared: &Mutex<Shared>,
    stop: &AtomicBool,
) -> io::Result<()> {
    let (path, headers) = read_head(stream)?;
    let reply = {
        let mut shared = shared.lock().unwrap_or_else(PoisonError::into_inner);
        *shared.requests.entry(path.clone()).or_default() += 1;
        shared.routes.get(&path).cloned()
    };
    let Some(reply) = reply else {
        return write_head(stream, "404 Not Found", 0, &[]);
    };
    let if_none_match = headers.get("if-none-match").cloned();
    let mut rate: Option<u64> = None;
    let (body, length, cut, stall): (Box<dyn Read>, u64, Option<usize>, Option<usize>) = match reply
    {
        Reply::Redirect(to) => {
            return write_head(stream, "302 Found", 0, &[("Location", to.as_str())]);
        }
        Reply::File(file) => {
            let length = std::fs::metadata(&file)?.len();
            (Box::new(File::open(&file)?), length, None, None)
        }
        Reply::Throttled {
            file,
            bytes_per_second,
        } => {
            rate = Some(bytes_per_second.max(1));
            let length = std::fs::metadata(&file)?.len();
            (Box::new(File::open(&file)?), length, None, None)
        }
        Reply::Bytes(bytes) => {
            let length = bytes.len() as u64;
            (
                Box::new(io::Cursor::new(bytes.to_vec())),
                length,
                None,
                None,
            )
        }
        Reply::Truncated { bytes, after } => {
            let length = bytes.len() as u64;
            (
                Box::new(io::Cursor::new(bytes.to_vec())),
                length,
                Some(after),
                None,
            )
        }
        Reply::Stall { bytes, after } => {
            let length = bytes.len() as u64;
            (
                Box::new(io::Cursor::new(bytes.to_vec())),
                length,
                None,
                Some(after),
            )
        }
    };
    let etag = format!("\"{path}-{length}\"");
    if if_none_match.as_deref() == Some(etag.as_str()) {
        return write_head(stream, "304 Not Modified", 0, &[("ETag", etag.as_str())]);
    }
    {
        let mut shared = shared.lock().unwrap_or_else(PoisonError::into_inner);
        *shared.bodies.entry(path.clone()).or_default() += 1;
    }
    write_head(stream, "200 OK", length, &[("ETag", etag.as_str())])?;
    let limit = cut.or(stall).map_or(u64::MAX, |after| after as u64);
    let mut body = body.take(limit);
    match rate {
        None => {
            io::copy(&mut body, stream)?;
        }
        Some(bytes_per_second) => {
            let mut chunk = vec![0u8; 64 << 10];
            loop {
                let read = body.read(&mut chunk)?;
                if read == 0 || stop.load(Ordering::SeqCst) {
                    break;
                }
                stream.write_all(&chunk[..read])?;
                thread::sleep(Duration::from_secs_f64(
                    read as f64 / bytes_per_second as f64,
                ));
            }
        }
    }
    stream.flush()?;
    if stall.is_some() {
        while !stop.load(Ordering::SeqCst) {
            thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(())
}

fn read_head(stream: &mut impl Read) -> io::Result<(String, HashMap<String, String>)> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line
        .split_whitespace()
        .nth(1)
        .ok_or_else(|| io::Error::other("no request line"))?
        .to_string();
    let mut headers = HashMap::new();
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header == "\r\n" || header == "\n" {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
        }
    }
    Ok((path, headers))
}

fn write_head(
    stream: &mut impl Write,
    status: &str,
    length: u64,
    headers: &[(&str, &str)],
) -> io::Result<()> {
    let mut head =
        format!("HTTP/1.1 {status}\r\nContent-Length: {length}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.flush()
}

/// Writes the server's CA certificate to `path` (for `--uri-ca`).
pub fn write_ca(server: &HttpServer, path: &Path) -> io::Result<()> {
    std::fs::write(
        path,
        server
            .ca_pem()
            .ok_or_else(|| io::Error::other("not https"))?,
    )
}
