//! A minimal HTTP/1.1 client: one request a connection over a unix socket or TCP
//! ([`http_request`]), or a kept-alive unix socket connection ([`Client`]). Both read answers
//! with [`read_response`].

use std::io::{self, BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Read and write timeout of every connection.
pub const IO_TIMEOUT: Duration = Duration::from_secs(120);

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

    /// Whether the server closes the connection after this answer: it said so, or the body
    /// ran to the end of the connection (neither a length nor chunks).
    pub fn closes_connection(&self) -> bool {
        let has = |name: &str, word: &str| {
            self.header(name)
                .is_some_and(|v| v.to_ascii_lowercase().contains(word))
        };
        has("connection", "close")
            || (self.header("content-length").is_none() && !has("transfer-encoding", "chunked"))
    }
}

impl std::fmt::Display for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP {} {}", self.status, self.body)
    }
}

fn invalid(message: String) -> io::Error {
    io::Error::new(ErrorKind::InvalidData, message)
}

/// The bytes of one request: `headers` after `Host: localhost`, then `Content-Type` (when
/// given) and `Content-Length` (when there is a body), then the body.
pub fn request_bytes(
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    content_type: Option<&str>,
    body: Option<&[u8]>,
) -> Vec<u8> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
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
    request
}

/// Reads one answer: the status line, the header, and a body of `Content-Length` bytes, in
/// chunks, or up to the end of the stream.
pub fn read_response(reader: &mut impl BufRead) -> io::Result<Response> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(invalid("connection closed before an answer".into()));
    }
    let status_line = line.trim_end().to_string();
    let mut parts = status_line.split_whitespace();
    if !parts.next().unwrap_or("").starts_with("HTTP/1.") {
        return Err(invalid(format!("bad status line {status_line:?}")));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid(format!("bad status line {status_line:?}")))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(invalid("connection closed in the header".into()));
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header
            .split_once(':')
            .ok_or_else(|| invalid(format!("bad header line {header:?}")))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    let find = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let mut body = Vec::new();
    if find("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                return Err(invalid("unterminated chunk size".into()));
            }
            let size_hex = line.trim_end().split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_hex, 16)
                .map_err(|_| invalid(format!("bad chunk size {line:?}")))?;
            if size == 0 {
                // Trailers, then the empty line.
                loop {
                    line.clear();
                    if reader.read_line(&mut line)? == 0 || line.trim_end().is_empty() {
                        break;
                    }
                }
                break;
            }
            let start = body.len();
            body.resize(start + size, 0);
            reader.read_exact(&mut body[start..])?;
            let mut crlf = [0u8; 2];
            reader.read_exact(&mut crlf)?;
        }
    } else if let Some(length) = find("content-length") {
        let length: usize = length
            .parse()
            .map_err(|_| invalid(format!("bad content-length {length:?}")))?;
        body.resize(length, 0);
        reader
            .read_exact(&mut body)
            .map_err(|e| invalid(format!("body shorter than content-length {length} ({e})")))?;
    } else {
        reader.read_to_end(&mut body)?;
    }
    let body = String::from_utf8(body).map_err(|e| invalid(format!("body is not UTF-8: {e}")))?;
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// Sends one request over a fresh connection (`Connection: close`) and reads the whole answer.
/// `path` is the full request target, with its query. A `content_type` of `None` sends no
/// `Content-Type` header; a `body` of `None` sends no body and no `Content-Length`.
///
/// Panics on any error; see [`try_http_request`].
pub fn http_request(
    transport: &Transport,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: Option<&[u8]>,
) -> Response {
    try_http_request(transport, method, path, content_type, body).unwrap_or_else(|e| panic!("{e}"))
}

/// [`http_request`] that says what went wrong instead of panicking.
pub fn try_http_request(
    transport: &Transport,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: Option<&[u8]>,
) -> Result<Response, String> {
    let request = request_bytes(
        method,
        path,
        &[("Connection", "close"), ("Accept", "application/json")],
        content_type,
        body,
    );
    let timeout = |e: io::Error| format!("socket timeout: {e}");
    match transport {
        Transport::Unix(socket) => {
            let stream = UnixStream::connect(socket)
                .map_err(|e| format!("connect to {}: {e}", socket.display()))?;
            stream.set_read_timeout(Some(IO_TIMEOUT)).map_err(timeout)?;
            stream
                .set_write_timeout(Some(IO_TIMEOUT))
                .map_err(timeout)?;
            exchange(stream, method, path, &request)
        }
        Transport::Tcp(addr) => {
            let stream = TcpStream::connect(addr).map_err(|e| format!("connect to {addr}: {e}"))?;
            stream.set_read_timeout(Some(IO_TIMEOUT)).map_err(timeout)?;
            stream
                .set_write_timeout(Some(IO_TIMEOUT))
                .map_err(timeout)?;
            exchange(stream, method, path, &request)
        }
    }
}

fn exchange<S: Read + Write>(
    mut stream: S,
    method: &str,
    path: &str,
    request: &[u8],
) -> Result<Response, String> {
    // The server may answer early (413) and close before reading everything: keep what it said.
    if let Err(e) = stream.write_all(request) {
        if !matches!(
            e.kind(),
            ErrorKind::BrokenPipe | ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
        ) {
            return Err(format!("{method} {path}: write: {e}"));
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
            Err(e) => {
                return Err(format!(
                    "{method} {path}: read: {e} (got {} bytes)",
                    raw.len()
                ))
            }
        }
    }
    read_response(&mut &raw[..]).map_err(|e| {
        format!(
            "{method} {path}: bad HTTP answer ({e}): {:?}",
            String::from_utf8_lossy(&raw)
        )
    })
}

/// One kept-alive connection to a unix socket, reopened when it has been idle longer than
/// `max_idle` or broke.
pub struct Client {
    socket: PathBuf,
    max_idle: Duration,
    conn: Option<(BufReader<UnixStream>, Instant)>,
}

impl Client {
    pub fn new(socket: PathBuf, max_idle: Duration) -> Client {
        Client {
            socket,
            max_idle,
            conn: None,
        }
    }

    /// Sends one request (`path` is the full target) and reads its answer. A GET that fails on
    /// a reused connection (the server may just have closed it) is sent once more on a new one.
    pub fn send(
        &mut self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Option<&[u8]>,
    ) -> io::Result<Response> {
        let reused = self.conn.is_some();
        match self.exchange(method, path, content_type, body) {
            Ok(resp) => Ok(resp),
            Err(_) if reused && method == "GET" => {
                self.conn = None;
                self.exchange(method, path, content_type, body)
            }
            Err(e) => {
                self.conn = None;
                Err(e)
            }
        }
    }

    fn exchange(
        &mut self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Option<&[u8]>,
    ) -> io::Result<Response> {
        if self
            .conn
            .as_ref()
            .is_some_and(|(_, used)| used.elapsed() > self.max_idle)
        {
            self.conn = None;
        }
        let (reader, _) = match &mut self.conn {
            Some(conn) => conn,
            None => {
                let stream = UnixStream::connect(&self.socket).map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("connecting to {}: {e}", self.socket.display()),
                    )
                })?;
                stream.set_read_timeout(Some(IO_TIMEOUT))?;
                stream.set_write_timeout(Some(IO_TIMEOUT))?;
                self.conn.insert((BufReader::new(stream), Instant::now()))
            }
        };
        let request = request_bytes(method, path, &[], content_type, body);
        reader.get_mut().write_all(&request)?;
        let resp = read_response(reader)?;
        if resp.closes_connection() {
            self.conn = None;
        } else if let Some((_, used)) = &mut self.conn {
            *used = Instant::now();
        }
        Ok(resp)
    }
}

/// One Server-Sent Event (comments are skipped).
#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    pub id: Option<u64>,
    pub event: String,
    pub data: Value,
}

/// A Server-Sent Events stream read from a unix socket as it comes (a chunked response).
pub struct EventStream {
    pub status: u16,
    reader: BufReader<UnixStream>,
    /// Decoded body text not yet parsed into events.
    pending: String,
}

impl EventStream {
    /// Sends `GET path` (the full target) with the extra `headers`, reads the answer's head and
    /// keeps the connection for the events; each read waits at most `wait`.
    pub fn open(
        socket: &std::path::Path,
        path: &str,
        headers: &[(&str, String)],
        wait: Duration,
    ) -> io::Result<EventStream> {
        let stream = UnixStream::connect(socket)?;
        stream.set_read_timeout(Some(wait))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        let mut head = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n");
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        (&stream).write_all(head.as_bytes())?;
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| invalid(format!("bad status line {line:?}")))?;
        let mut chunked = false;
        loop {
            line.clear();
            reader.read_line(&mut line)?;
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            let lower = header.to_ascii_lowercase();
            chunked |= lower.starts_with("transfer-encoding:") && lower.contains("chunked");
        }
        if status == 200 && !chunked {
            return Err(invalid("an event stream must be chunked".to_string()));
        }
        Ok(EventStream {
            status,
            reader,
            pending: String::new(),
        })
    }

    /// Reads one chunk into `pending`; false at the end of the stream.
    fn read_chunk(&mut self) -> io::Result<bool> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Ok(false);
        }
        let size = usize::from_str_radix(line.trim(), 16)
            .map_err(|_| invalid(format!("bad chunk size {line:?}")))?;
        let mut chunk = vec![0; size + 2];
        self.reader.read_exact(&mut chunk)?;
        if size == 0 {
            return Ok(false);
        }
        chunk.truncate(size);
        self.pending
            .push_str(&String::from_utf8(chunk).map_err(|err| invalid(err.to_string()))?);
        Ok(true)
    }

    /// The next event; `None` when the server ended the stream.
    pub fn next_event(&mut self) -> io::Result<Option<SseEvent>> {
        loop {
            while let Some(end) = self.pending.find("\n\n") {
                let block: String = self.pending.drain(..end + 2).collect();
                let (mut id, mut event, mut data) = (None, String::from("message"), String::new());
                for line in block.lines() {
                    if let Some(value) = line.strip_prefix("id: ") {
                        id = value.parse().ok();
                    } else if let Some(value) = line.strip_prefix("event: ") {
                        event = value.to_string();
                    } else if let Some(value) = line.strip_prefix("data: ") {
                        data.push_str(value);
                    }
                }
                if data.is_empty() {
                    continue; // a comment (keep-alive)
                }
                let data = serde_json::from_str(&data)
                    .map_err(|err| invalid(format!("bad event data {data:?}: {err}")))?;
                return Ok(Some(SseEvent { id, event, data }));
            }
            if !self.read_chunk()? {
                return Ok(None);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_lengths_chunks_and_the_rest() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
        let resp = read_response(&mut &raw[..]).unwrap();
        assert_eq!((resp.status, resp.body.as_str()), (200, "{}"));
        assert!(!resp.closes_connection());

        let raw = b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n1;x\r\nd\r\n0\r\n\r\n";
        let resp = read_response(&mut &raw[..]).unwrap();
        assert_eq!((resp.status, resp.body.as_str()), (201, "abcd"));

        let raw = b"HTTP/1.0 400 Bad Request\r\nConnection: close\r\n\r\nrest";
        let resp = read_response(&mut &raw[..]).unwrap();
        assert_eq!(resp.body, "rest");
        assert!(resp.closes_connection());
    }

    #[test]
    fn refuses_broken_answers() {
        for raw in [
            &b""[..],
            b"SSH-2.0 hello\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab",
            b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
        ] {
            assert!(read_response(&mut &raw[..]).is_err(), "{raw:?}");
        }
    }
}
