//! Getting the bytes behind a `uri` mount's URL into a partial file of the cache: streamed,
//! hashed while streaming, never held whole in memory, with progress in the log.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tracing::info;
use ureq::tls::{Certificate, PemItem, RootCerts, TlsConfig, TlsProvider};

use super::{UriConfig, DOWNLOAD};
use crate::error::Error;
use crate::model::wire::Id;

/// How much is read from the network or a file at a time.
const CHUNK: usize = 256 * 1024;

/// A progress line at least this often while bytes arrive (and at every tenth of a known size).
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Redirects followed before the download is refused.
const MAX_REDIRECTS: u32 = 10;

/// Where a `uri` mount's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Http(String),
    File(PathBuf),
}

impl Source {
    /// The source of a URL the definition check let through (`http`, `https`, `file`).
    pub fn of(url: &str) -> Source {
        match url.strip_prefix("file://") {
            Some(path) => Source::File(PathBuf::from(path)),
            None => Source::Http(url.to_string()),
        }
    }
}

/// What the cache knows of its copy, so that the server can say it is still current.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Validator {
    /// An HTTP `ETag`, or for a file its size and change time.
    pub etag: Option<String>,
    pub last_modified: Option<String>,
}

impl Validator {
    fn is_empty(&self) -> bool {
        self.etag.is_none() && self.last_modified.is_none()
    }
}

/// The outcome of a fetch.
#[derive(Debug)]
pub enum Fetched {
    /// The server says the cached copy (whose validator was sent) is current.
    NotModified,
    /// The whole body is in the partial file.
    Body {
        sha256: String,
        size: u64,
        validator: Validator,
    },
}

/// The HTTP client of a driver: built at its first download, from the driver's flags.
pub fn agent(config: &UriConfig) -> Result<ureq::Agent, String> {
    let roots = match &config.ca_file {
        Some(path) => {
            let pem = fs::read(path).map_err(|err| format!("CA file {}: {err}", path.display()))?;
            let certs: Vec<Certificate<'static>> = ureq::tls::parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(PemItem::Certificate(cert)) => Some(Ok(cert)),
                    Ok(_) => None,
                    Err(err) => Some(Err(err)),
                })
                .collect::<Result<_, _>>()
                .map_err(|err| format!("CA file {}: {err}", path.display()))?;
            if certs.is_empty() {
                return Err(format!("CA file {} holds no certificate", path.display()));
            }
            RootCerts::Specific(Arc::new(certs))
        }
        None => RootCerts::PlatformVerifier,
    };
    let tls = TlsConfig::builder()
        .provider(TlsProvider::Rustls)
        .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .root_certs(roots)
        .build();
    Ok(ureq::Agent::config_builder()
        .tls_config(tls)
        .http_status_as_error(false)
        .max_redirects(MAX_REDIRECTS)
        .timeout_resolve(Some(config.stall_timeout))
        .timeout_connect(Some(config.stall_timeout))
        .timeout_per_read(Some(config.stall_timeout))
        .user_agent(concat!("imageapi/", env!("CARGO_PKG_VERSION")))
        .build()
        .new_agent())
}

/// Fetches `url` into `partial` (created, truncated), sending `known` so that the server can
/// answer that the cached copy is still current. At most `config.max_size` bytes.
pub fn http(
    agent: &ureq::Agent,
    config: &UriConfig,
    id: Id,
    url: &str,
    known: &Validator,
    partial: &Path,
) -> Result<Fetched, Error> {
    let mut request = agent.get(url);
    if let Some(etag) = &known.etag {
        request = request.header("If-None-Match", etag);
    }
    if let Some(last_modified) = &known.last_modified {
        request = request.header("If-Modified-Since", last_modified);
    }
    let response = request.call().map_err(|err| request_failed(url, err))?;
    let status = response.status();
    if status == 304 && !known.is_empty() {
        return Ok(Fetched::NotModified);
    }
    if !status.is_success() {
        let reason = format!(
            "{url}: the server answered HTTP {} {}",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        );
        return Err(if status.is_server_error() {
            Error::unreachable(DOWNLOAD, reason)
        } else {
            Error::rejected(DOWNLOAD, reason)
        });
    }
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_string)
    };
    let validator = Validator {
        etag: header("ETag"),
        last_modified: header("Last-Modified"),
    };
    let length = header("Content-Length").and_then(|value| value.parse::<u64>().ok());
    if let Some(length) = length.filter(|length| *length > config.max_size) {
        return Err(Error::rejected(
            DOWNLOAD,
            format!(
                "{url} is {length} bytes, more than the limit of {} (--uri-max-size)",
                config.max_size
            ),
        ));
    }
    let mut body = response.into_body().into_reader();
    let (sha256, size) = stream(id, url, &mut body, length, config.max_size, partial)?;
    if let Some(length) = length.filter(|length| *length != size) {
        return Err(Error::unreachable(
            DOWNLOAD,
            format!("{url}: the body ended after {size} of {length} bytes (Content-Length)"),
        ));
    }
    Ok(Fetched::Body {
        sha256,
        size,
        validator,
    })
}

/// Copies the file of a `file://` URL into `partial`; its size and change time are its
/// validator.
pub fn file(
    config: &UriConfig,
    id: Id,
    path: &Path,
    known: &Validator,
    partial: &Path,
) -> Result<Fetched, Error> {
    let url = format!("file://{}", path.display());
    let mut source =
        File::open(path).map_err(|err| Error::rejected(DOWNLOAD, format!("{url}: {err}")))?;
    let metadata = source
        .metadata()
        .map_err(|err| Error::rejected(DOWNLOAD, format!("{url}: {err}")))?;
    if !metadata.is_file() {
        return Err(Error::rejected(
            DOWNLOAD,
            format!("{url} is not a regular file"),
        ));
    }
    let validator = Validator {
        etag: Some(format!(
            "{}-{}.{}",
            metadata.len(),
            metadata.ctime(),
            metadata.ctime_nsec()
        )),
        last_modified: None,
    };
    if known.etag.is_some() && *known == validator {
        return Ok(Fetched::NotModified);
    }
    if metadata.len() > config.max_size {
        return Err(Error::rejected(
            DOWNLOAD,
            format!(
                "{url} is {} bytes, more than the limit of {} (--uri-max-size)",
                metadata.len(),
                config.max_size
            ),
        ));
    }
    let (sha256, size) = stream(
        id,
        &url,
        &mut source,
        Some(metadata.len()),
        config.max_size,
        partial,
    )?;
    Ok(Fetched::Body {
        sha256,
        size,
        validator,
    })
}

fn request_failed(url: &str, err: ureq::Error) -> Error {
    use ureq::Error as E;
    let reason = format!("{url}: {err}");
    match err {
        // A certificate the service does not trust is the server's refusal, not its absence.
        E::Io(io)
            if io
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>()) =>
        {
            Error::rejected(DOWNLOAD, reason)
        }
        E::Io(_) | E::Timeout(_) | E::HostNotFound | E::ConnectionFailed | E::BodyStalled => {
            Error::unreachable(DOWNLOAD, reason)
        }
        _ => Error::rejected(DOWNLOAD, reason),
    }
}

/// Writes `body` to `partial`, hashing it; answers its SHA-256 (hex) and size.
fn stream(
    id: Id,
    url: &str,
    body: &mut dyn Read,
    length: Option<u64>,
    max_size: u64,
    partial: &Path,
) -> Result<(String, u64), Error> {
    let mut out = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(partial)
        .map_err(|err| cache_failed(partial, &err))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; CHUNK];
    let mut size: u64 = 0;
    let started = Instant::now();
    let mut progress = Progress::new(length);
    loop {
        let read = match body.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => read,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => {
                let timed_out = err.kind() == io::ErrorKind::TimedOut
                    || err
                        .get_ref()
                        .and_then(|inner| inner.downcast_ref::<ureq::Error>())
                        .is_some_and(|inner| matches!(inner, ureq::Error::Timeout(_)));
                let reason = if timed_out {
                    format!("{url}: the transfer stalled after {size} bytes: {err}")
                } else {
                    format!("{url}: the transfer broke off after {size} bytes: {err}")
                };
                return Err(Error::unreachable(DOWNLOAD, reason));
            }
        };
        size += read as u64;
        if size > max_size {
            return Err(Error::rejected(
                DOWNLOAD,
                format!("{url} is larger than the limit of {max_size} bytes (--uri-max-size)"),
            ));
        }
        hasher.update(&buffer[..read]);
        out.write_all(&buffer[..read])
            .map_err(|err| cache_failed(partial, &err))?;
        if progress.due(size) {
            match length {
                Some(total) => info!(
                    id,
                    url,
                    bytes = size,
                    total,
                    percent = size * 100 / total.max(1),
                    "downloading"
                ),
                None => info!(id, url, bytes = size, "downloading"),
            }
        }
    }
    // No fsync: an entry torn by a crash fails its hash check before its first reuse.
    let seconds = started.elapsed().as_secs_f64();
    info!(
        id,
        url,
        bytes = size,
        seconds,
        mib_per_second = size as f64 / (1 << 20) as f64 / seconds.max(1e-6),
        "downloaded"
    );
    Ok((hex(&hasher.finalize()), size))
}

/// When the next progress line is due: every [`PROGRESS_EVERY`], and at every tenth of a known
/// size.
struct Progress {
    length: Option<u64>,
    last_line: Instant,
    last_tenth: u64,
}

impl Progress {
    fn new(length: Option<u64>) -> Progress {
        Progress {
            length,
            last_line: Instant::now(),
            last_tenth: 0,
        }
    }

    fn due(&mut self, size: u64) -> bool {
        let tenth = self
            .length
            .map_or(0, |total| size * 10 / total.max(1))
            .min(10);
        if tenth > self.last_tenth || self.last_line.elapsed() >= PROGRESS_EVERY {
            self.last_tenth = tenth;
            self.last_line = Instant::now();
            return true;
        }
        false
    }
}

fn cache_failed(path: &Path, err: &io::Error) -> Error {
    Error::Kernel {
        origin: DOWNLOAD,
        source: crate::sys::SysError {
            op: format!("write {}", path.display()),
            errno: crate::sys::errno_of_io(err),
        },
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// SHA-256 (hex) of the file at `path`.
pub fn sha256_of(path: &Path) -> io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; CHUNK];
    loop {
        match file.read(&mut buffer)? {
            0 => break,
            read => hasher.update(&buffer[..read]),
        }
    }
    Ok(hex(&hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_comes_at_every_tenth_of_a_known_size() {
        let mut progress = Progress::new(Some(1000));
        let lines: Vec<u64> = (1..=100)
            .map(|step| step * 10)
            .filter(|size| progress.due(*size))
            .collect();
        assert_eq!(lines, [100, 200, 300, 400, 500, 600, 700, 800, 900, 1000]);
    }

    #[test]
    fn sources_by_scheme() {
        assert_eq!(
            Source::of("file:///srv/a.img"),
            Source::File("/srv/a.img".into())
        );
        assert_eq!(
            Source::of("https://x/a.img"),
            Source::Http("https://x/a.img".into())
        );
    }

    #[test]
    fn hex_is_lower_case() {
        assert_eq!(hex(&[0x00, 0xab, 0x10]), "00ab10");
    }
}
