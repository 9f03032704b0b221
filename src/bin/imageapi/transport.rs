//! A small blocking HTTP/1.1 client: one request per connection (`Connection: close`), over the
//! service's unix socket or TCP, with rustls for https (server CA and optional client
//! certificate, as the server's mutual TLS expects). The body is handed back as a reader so
//! that a Server-Sent Events stream can be read as it arrives.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

/// Where the system keeps its trusted CAs (Debian's ca-certificates), used when `--ca` is not
/// given for an https URL.
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Time to connect, and the longest silence a plain request accepts from the service.
const IO_TIMEOUT: Duration = Duration::from_secs(330);

trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

/// How to reach the service.
pub enum Endpoint {
    Unix(PathBuf),
    Tcp {
        host: String,
        port: u16,
        /// The path prefix of the URL (without a trailing `/`).
        prefix: String,
        tls: Option<Arc<ClientConfig>>,
    },
}

/// The TLS material of `--ca`, `--cert` and `--key`.
pub struct TlsFiles<'a> {
    pub ca: Option<&'a Path>,
    pub cert: Option<&'a Path>,
    pub key: Option<&'a Path>,
}

impl Endpoint {
    /// An endpoint for `url` (`http://host[:port][/prefix]` or `https://...`).
    pub fn from_url(url: &str, files: &TlsFiles) -> Result<Endpoint, String> {
        let (https, rest) = if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(format!(
                "--url {url}: only http:// and https:// are supported"
            ));
        };
        let (authority, prefix) = match rest.find('/') {
            Some(slash) => (&rest[..slash], rest[slash..].trim_end_matches('/')),
            None => (rest, ""),
        };
        let (host, port) = split_authority(authority, if https { 443 } else { 80 })
            .ok_or_else(|| format!("--url {url}: bad host or port"))?;
        let tls = if https {
            Some(Arc::new(client_config(files)?))
        } else {
            if files.ca.is_some() || files.cert.is_some() {
                return Err("--ca and --cert need an https:// --url".into());
            }
            None
        };
        Ok(Endpoint::Tcp {
            host,
            port,
            prefix: prefix.to_string(),
            tls,
        })
    }

    /// A description for error messages.
    pub fn describe(&self) -> String {
        match self {
            Endpoint::Unix(path) => format!("unix socket {}", path.display()),
            Endpoint::Tcp {
                host, port, tls, ..
            } => format!(
                "{}://{host}:{port}",
                if tls.is_some() { "https" } else { "http" }
            ),
        }
    }

    fn connect(&self) -> io::Result<(Box<dyn Stream>, String)> {
        match self {
            Endpoint::Unix(path) => {
                let stream = UnixStream::connect(path)?;
                stream.set_read_timeout(Some(IO_TIMEOUT))?;
                Ok((Box::new(stream), "localhost".to_string()))
            }
            Endpoint::Tcp {
                host, port, tls, ..
            } => {
                let stream = TcpStream::connect((host.trim_matches(['[', ']']), *port))?;
                stream.set_read_timeout(Some(IO_TIMEOUT))?;
                stream.set_nodelay(true)?;
                let host_header = format!("{host}:{port}");
                match tls {
                    None => Ok((Box::new(stream), host_header)),
                    Some(config) => {
                        let name = ServerName::try_from(host.trim_matches(['[', ']']).to_string())
                            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                        let connection = ClientConnection::new(config.clone(), name)
                            .map_err(io::Error::other)?;
                        Ok((Box::new(StreamOwned::new(connection, stream)), host_header))
                    }
                }
            }
        }
    }

    fn prefix(&self) -> &str {
        match self {
            Endpoint::Unix(_) => "",
            Endpoint::Tcp { prefix, .. } => prefix,
        }
    }

    /// Sends one request; `path` starts with `/`. An error here means the service could not be
    /// reached or answered something that is not HTTP.
    pub fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> io::Result<Response> {
        let (mut stream, host) = self.connect()?;
        stream.write_all(&request_bytes(
            method,
            &format!("{}{path}", self.prefix()),
            &host,
            headers,
            body,
        ))?;
        stream.flush()?;
        read_response(BufReader::new(stream))
    }
}

fn split_authority(authority: &str, default_port: u16) -> Option<(String, u16)> {
    if authority.is_empty() {
        return None;
    }
    let port_at = if authority.starts_with('[') {
        authority.find("]:").map(|end| end + 1)
    } else {
        authority.rfind(':')
    };
    match port_at {
        Some(colon) => Some((
            authority[..colon].to_string(),
            authority[colon + 1..].parse().ok()?,
        )),
        None => Some((authority.to_string(), default_port)),
    }
}

fn client_config(files: &TlsFiles) -> Result<ClientConfig, String> {
    let ca = files.ca.unwrap_or(Path::new(SYSTEM_CA_BUNDLE));
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("--ca {}: {e}", ca.display()))?;
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(format!("--ca {}: no usable certificate", ca.display()));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    match (files.cert, files.key) {
        (None, None) => Ok(builder.with_no_client_auth()),
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("--cert {}: {e}", cert.display()))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("--key {}: {e}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("--cert/--key: {e}"))
        }
        _ => Err("--cert and --key go together".into()),
    }
}

fn request_bytes(
    method: &str,
    target: &str,
    host: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Vec<u8> {
    let mut head = format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = body {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body.unwrap_or_default());
    bytes
}

/// An answer whose body has not been read yet.
pub struct Response {
    pub status: u16,
    headers: Vec<(String, String)>,
    pub body: Box<dyn BufRead + Send>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn read_body(mut self) -> io::Result<Vec<u8>> {
        let mut bytes = Vec::new();
        self.body.read_to_end(&mut bytes)?;
        Ok(bytes)
    }
}

fn broken(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

fn read_line(reader: &mut impl BufRead) -> io::Result<String> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(broken("the connection closed in the middle of an answer"));
    }
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

fn read_response<R: BufRead + Send + 'static>(mut reader: R) -> io::Result<Response> {
    let status_line = read_line(&mut reader)?;
    let mut parts = status_line.splitn(3, ' ');
    let status = match (parts.next(), parts.next()) {
        (Some(version), Some(code)) if version.starts_with("HTTP/1.") => code
            .parse()
            .map_err(|_| broken(format!("bad status line {status_line:?}")))?,
        _ => return Err(broken(format!("not an HTTP answer: {status_line:?}"))),
    };
    let mut headers = Vec::new();
    loop {
        let line = read_line(&mut reader)?;
        if line.is_empty() {
            break;
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| broken(format!("bad header line {line:?}")))?;
        headers.push((name.trim().to_string(), value.trim().to_string()));
    }
    let find = |name: &str| {
        headers
            .iter()
            .find(|(n, _): &&(String, String)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let body: Box<dyn BufRead + Send> =
        if find("Transfer-Encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
            Box::new(BufReader::new(Chunked {
                inner: reader,
                left: 0,
                done: false,
            }))
        } else if let Some(length) = find("Content-Length") {
            let length: u64 = length
                .parse()
                .map_err(|_| broken(format!("bad Content-Length {length:?}")))?;
            Box::new(reader.take(length))
        } else {
            Box::new(reader)
        };
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// The body of a `Transfer-Encoding: chunked` answer, as it arrives.
struct Chunked<R> {
    inner: R,
    left: u64,
    done: bool,
}

impl<R: BufRead> Read for Chunked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            let line = read_line(&mut self.inner)?;
            let size = line.split(';').next().unwrap_or_default().trim();
            self.left = u64::from_str_radix(size, 16)
                .map_err(|_| broken(format!("bad chunk size {line:?}")))?;
            if self.left == 0 {
                self.done = true;
                // Trailers, up to the blank line that ends the answer.
                while !read_line(&mut self.inner)?.is_empty() {}
                return Ok(0);
            }
        }
        let want = buf.len().min(self.left as usize);
        let read = self.inner.read(&mut buf[..want])?;
        if read == 0 {
            return Err(broken("the connection closed in the middle of a chunk"));
        }
        self.left -= read as u64;
        if self.left == 0 {
            read_line(&mut self.inner)?;
        }
        Ok(read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &'static [u8]) -> io::Result<(u16, String)> {
        let response = read_response(io::Cursor::new(bytes))?;
        let status = response.status;
        Ok((status, String::from_utf8(response.read_body()?).unwrap()))
    }

    #[test]
    fn reads_length_chunked_and_until_close_bodies() {
        assert_eq!(
            parse(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n[]extra").unwrap(),
            (200, "[]".into())
        );
        assert_eq!(
            parse(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n")
                .unwrap(),
            (200, "abcde".into())
        );
        assert_eq!(
            parse(b"HTTP/1.1 404 Not Found\r\n\r\nrest").unwrap(),
            (404, "rest".into())
        );
    }

    #[test]
    fn refuses_what_is_not_http() {
        assert!(parse(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
        assert!(parse(b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n").is_err());
        assert!(parse(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n").is_err());
        assert!(parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").is_err());
    }

    #[test]
    fn writes_one_request_per_connection() {
        let bytes = request_bytes(
            "POST",
            "/imageapi/v1/mount",
            "localhost",
            &[("Content-Type", "application/json")],
            Some(b"{}"),
        );
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            "POST /imageapi/v1/mount HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
        );
    }

    #[test]
    fn urls_name_host_port_and_prefix() {
        let files = TlsFiles {
            ca: None,
            cert: None,
            key: None,
        };
        match Endpoint::from_url("http://127.0.0.1:8080/base/", &files).unwrap() {
            Endpoint::Tcp {
                host,
                port,
                prefix,
                tls,
            } => {
                assert_eq!(
                    (host.as_str(), port, prefix.as_str()),
                    ("127.0.0.1", 8080, "/base")
                );
                assert!(tls.is_none());
            }
            Endpoint::Unix(_) => panic!("not tcp"),
        }
        assert_eq!(split_authority("[::1]:99", 80), Some(("[::1]".into(), 99)));
        assert_eq!(split_authority("node", 443), Some(("node".into(), 443)));
        assert!(Endpoint::from_url("ftp://x", &files).is_err());
        assert!(Endpoint::from_url("http://x:notaport", &files).is_err());
    }
}
