//! Command line, compatible with the reference service's flags (go-swagger's server options):
//! every flag it documents is accepted with the same name, environment variable, default and
//! value syntax (Go durations such as `30s` or `1m30s`, sizes such as `1MiB`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};

/// The file name of the container init program the package installs.
pub const INIT_PROGRAM: &str = "imageapi-init";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum)]
pub enum Scheme {
    /// Plain HTTP on --host:--port; for tests and trusted loopback use only.
    Http,
    /// HTTPS on --tls-host:--tls-port; with --tls-ca, clients need a certificate signed by it.
    Https,
    /// HTTP over the unix socket at --socket-path, guarded by its file mode.
    Unix,
}

/// How log lines are written (to standard error).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event, fields as `key=value`.
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `fields` (with `message` and
    /// the event's fields, `id` among them for object lines) and `span`s.
    Json,
}

/// ImageAPI: attach images, mount them, overlay them and run system containers, over REST.
#[derive(Debug, Parser)]
#[command(name = "imageapi-server", version)]
pub struct Options {
    /// Listeners to serve (repeatable); they all serve the same objects.
    #[arg(long = "scheme", value_enum, default_values_t = [Scheme::Http])]
    pub schemes: Vec<Scheme>,

    /// Idle time after which a keep-alive connection is closed.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub cleanup_timeout: Duration,

    /// How long a stop waits for requests in flight before closing their connections.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub graceful_timeout: Duration,

    /// Largest request head (request line and headers); a larger one gets 431. The HTTP
    /// library caps it at 128 KiB whatever the value.
    #[arg(long, default_value = "1MiB", value_parser = parse_byte_size)]
    pub max_header_size: usize,

    /// Unix socket to listen on for the unix scheme.
    #[arg(long, default_value = "/var/run/imageapi.sock")]
    pub socket_path: PathBuf,

    /// File mode of the unix socket (octal). Whoever can connect to it has root's power.
    #[arg(long, default_value = "0600", value_parser = parse_mode)]
    pub socket_mode: u32,

    /// Group (name or number) given the unix socket; use with --socket-mode 0660.
    #[arg(long)]
    pub socket_group: Option<String>,

    /// Address to listen on for http.
    #[arg(long, env = "HOST", default_value = "localhost")]
    pub host: String,

    /// Port to listen on for http (Kraken's client expects 8080).
    #[arg(long, env = "PORT", default_value_t = 8080)]
    pub port: u16,

    /// Most connections the http listener holds at once (0: no limit); more wait in the
    /// kernel's accept queue.
    #[arg(long, default_value_t = 0)]
    pub listen_limit: usize,

    /// TCP keep-alive period of accepted connections, which prunes dead peers; 0 also turns
    /// HTTP keep-alive off (one request per connection).
    #[arg(long, default_value = "3m", value_parser = parse_duration)]
    pub keep_alive: Duration,

    /// Time a client has to send a whole request head, and again its body (0: no limit).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub read_timeout: Duration,

    /// Time a client has to take a response once it is ready (0: no limit).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub write_timeout: Duration,

    /// Address to listen on for https [default: --host].
    #[arg(long, env = "TLS_HOST")]
    pub tls_host: Option<String>,

    /// Port to listen on for https.
    #[arg(long, env = "TLS_PORT", default_value_t = 8443)]
    pub tls_port: u16,

    /// The server's certificate chain (PEM), leaf first.
    #[arg(long, env = "TLS_CERTIFICATE")]
    pub tls_certificate: Option<PathBuf>,

    /// The server's private key (PEM).
    #[arg(long, env = "TLS_PRIVATE_KEY")]
    pub tls_key: Option<PathBuf>,

    /// CA certificates (PEM): when given, every https client must present a certificate
    /// signed by one of them (mutual TLS).
    #[arg(long, env = "TLS_CA_CERTIFICATE")]
    pub tls_ca: Option<PathBuf>,

    /// --listen-limit for the https listener [default: --listen-limit].
    #[arg(long, value_name = "LIMIT")]
    pub tls_listen_limit: Option<usize>,

    /// --keep-alive for the https listener [default: --keep-alive].
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub tls_keep_alive: Option<Duration>,

    /// --read-timeout for the https listener [default: --read-timeout].
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub tls_read_timeout: Option<Duration>,

    /// --write-timeout for the https listener [default: --write-timeout].
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub tls_write_timeout: Option<Duration>,

    /// Parent directory of the mountpoints the service makes.
    #[arg(long, default_value = "/var/run/imageapi/mounts")]
    pub mount_dir: PathBuf,

    /// Directory of the container console logs.
    #[arg(long, default_value = "/var/run/imageapi/logs")]
    pub log_dir: PathBuf,

    /// Where the service keeps its objects across restarts (a crash-safe store).
    #[arg(long, default_value = "/var/lib/imageapi")]
    pub state_dir: PathBuf,

    /// How many of the latest events `/events` keeps for clients that resume (Last-Event-ID).
    #[arg(long, default_value_t = actors::events::DEFAULT_BUFFER, value_name = "EVENTS",
          value_parser = clap::value_parser!(usize))]
    pub event_buffer: usize,

    /// The program container inits run: imageapi-init, a small binary of its own that sets up
    /// the container and executes its command [default: imageapi-init next to this binary, or
    /// in ../libexec/imageapi/ from its directory, as the package installs it].
    #[arg(long, value_name = "PATH")]
    pub init_program: Option<PathBuf>,

    /// Release every object at exit instead of leaving them for the next start to adopt.
    #[arg(long)]
    pub cleanup_on_exit: bool,

    /// Where uri mounts keep their downloads [default: <state-dir>/uri-cache].
    #[arg(long, value_name = "DIR")]
    pub uri_cache_dir: Option<PathBuf>,

    /// How much the uri cache keeps; past it, unused downloads go, least recently used first.
    #[arg(long, default_value = "10GiB", value_parser = parse_byte_size, value_name = "SIZE")]
    pub uri_cache_limit: usize,

    /// The largest download of a uri mount.
    #[arg(long, default_value = "8GiB", value_parser = parse_byte_size, value_name = "SIZE")]
    pub uri_max_size: usize,

    /// How long a uri download may go without receiving a byte (also the name lookup and connect
    /// timeout).
    #[arg(long, default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    pub uri_stall_timeout: Duration,

    /// CA certificates (PEM) that https downloads trust instead of the system's roots.
    #[arg(long, value_name = "FILE")]
    pub uri_ca: Option<PathBuf>,

    /// Format of the log lines on standard error (the level is IMAGEAPI_LOGLEVEL or RUST_LOG).
    #[arg(long, env = "IMAGEAPI_LOGFORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// The limits of one listener, from the flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Time for a request head, and again for its body; `None`: no limit.
    pub read_timeout: Option<Duration>,
    /// Time for a ready response to be taken by the client; `None`: no limit.
    pub write_timeout: Option<Duration>,
    /// Idle keep-alive time between requests; `None`: HTTP keep-alive is off.
    pub idle_timeout: Option<Duration>,
    /// TCP keep-alive period; `None`: the kernel's default (off).
    pub tcp_keep_alive: Option<Duration>,
    /// Most connections at once; `None`: no limit of ours.
    pub listen_limit: Option<usize>,
    /// Largest request head, in bytes.
    pub max_header_size: usize,
}

fn non_zero(duration: Duration) -> Option<Duration> {
    (!duration.is_zero()).then_some(duration)
}

impl Options {
    /// The schemes asked for, each once, in the order given.
    pub fn unique_schemes(&self) -> Vec<Scheme> {
        let mut schemes = Vec::new();
        for scheme in &self.schemes {
            if !schemes.contains(scheme) {
                schemes.push(*scheme);
            }
        }
        schemes
    }

    /// The limits of the listener of `scheme`: the `--tls-*` values for https where given.
    pub fn limits(&self, scheme: Scheme) -> Limits {
        let tls = scheme == Scheme::Https;
        let pick = |general: Duration, specific: Option<Duration>| {
            if tls {
                specific.unwrap_or(general)
            } else {
                general
            }
        };
        let read_timeout = non_zero(pick(self.read_timeout, self.tls_read_timeout));
        let keep_alive = pick(self.keep_alive, self.tls_keep_alive);
        // As go-swagger: --cleanup-timeout is the idle timeout, else the read timeout is.
        let idle_timeout = if keep_alive.is_zero() {
            None
        } else {
            non_zero(self.cleanup_timeout).or(read_timeout)
        };
        let listen_limit = if tls {
            self.tls_listen_limit.unwrap_or(self.listen_limit)
        } else if scheme == Scheme::Http {
            self.listen_limit
        } else {
            0
        };
        Limits {
            read_timeout,
            write_timeout: non_zero(pick(self.write_timeout, self.tls_write_timeout)),
            idle_timeout,
            tcp_keep_alive: non_zero(keep_alive),
            listen_limit: (listen_limit > 0).then_some(listen_limit),
            max_header_size: self.max_header_size,
        }
    }

    /// The init program: `--init-program`, or where the package or a cargo build puts it.
    pub fn init_program(&self) -> anyhow::Result<PathBuf> {
        if let Some(path) = &self.init_program {
            anyhow::ensure!(
                path.is_file(),
                "the init program {} (--init-program) is not a file",
                path.display()
            );
            return Ok(path.clone());
        }
        let own = std::env::current_exe().context("finding this program's path")?;
        let dir = own.parent().unwrap_or(Path::new("/"));
        let candidates = [
            dir.join(INIT_PROGRAM),
            dir.join("../libexec/imageapi").join(INIT_PROGRAM),
        ];
        candidates
            .iter()
            .find(|path| path.is_file())
            .cloned()
            .with_context(|| {
                format!(
                    "no init program: neither {} nor {} exists (give --init-program)",
                    candidates[0].display(),
                    candidates[1].display()
                )
            })
    }

    /// The flags of uri mounts.
    pub fn uri(&self) -> actors::mount::uri::UriConfig {
        actors::mount::uri::UriConfig {
            cache_dir: self
                .uri_cache_dir
                .clone()
                .unwrap_or_else(|| self.state_dir.join("uri-cache")),
            cache_limit: self.uri_cache_limit as u64,
            max_size: self.uri_max_size as u64,
            stall_timeout: self.uri_stall_timeout,
            ca_file: self.uri_ca.clone(),
        }
    }

    /// Address the https listener binds.
    pub fn tls_host(&self) -> &str {
        self.tls_host.as_deref().unwrap_or(&self.host)
    }
}

/// Parses a Go duration (`time.ParseDuration`): a sequence of decimal numbers, each with a unit
/// (`ns`, `us`, `µs`, `ms`, `s`, `m`, `h`), such as `300ms`, `1.5h` or `2h45m`; `0` alone is
/// zero. Negative durations are refused.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text:?} is not a duration such as 30s, 1m30s or 500ms");
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    if text.is_empty() || text.starts_with('-') {
        return Err(bad());
    }
    let rest = text.strip_prefix('+').unwrap_or(text);
    let mut total: f64 = 0.0;
    let mut rest = rest;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let number: f64 = rest[..number_len].parse().map_err(|_| bad())?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let nanos_per_unit = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(bad()),
        };
        total += number * nanos_per_unit;
        rest = &rest[unit_len..];
    }
    // Go's durations are int64 nanoseconds: about 292 years.
    if !total.is_finite() || total > i64::MAX as f64 {
        return Err(format!("{text:?} is too long a duration"));
    }
    Ok(Duration::from_nanos(total as u64))
}

/// Parses a size in bytes: a number with an optional unit, `B`, decimal `kB`, `MB`, `GB` (also
/// `K`, `M`, `G`) or binary `KiB`, `MiB`, `GiB`, case-insensitive; `1MiB` is 1048576.
pub fn parse_byte_size(text: &str) -> Result<usize, String> {
    let bad = || format!("{text:?} is not a size such as 1MiB, 64KiB or 65536");
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let number: f64 = trimmed[..split].parse().map_err(|_| bad())?;
    let multiplier: f64 = match trimmed[split..].trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "ki" | "kib" => 1024.0,
        "mi" | "mib" => 1024.0 * 1024.0,
        "gi" | "gib" => 1024.0 * 1024.0 * 1024.0,
        _ => return Err(bad()),
    };
    let bytes = number * multiplier;
    if !bytes.is_finite() || bytes > usize::MAX as f64 {
        return Err(format!("{text:?} is too large"));
    }
    Ok(bytes as usize)
}

/// Parses an octal file mode such as `0600`, `660` or `0o640` (permission bits only).
pub fn parse_mode(text: &str) -> Result<u32, String> {
    let digits = text
        .strip_prefix("0o")
        .or_else(|| text.strip_prefix("0O"))
        .unwrap_or(text);
    match u32::from_str_radix(digits, 8) {
        Ok(mode) if mode <= 0o777 && !digits.is_empty() => Ok(mode),
        _ => Err(format!(
            "{text:?} is not an octal file mode between 0000 and 0777"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_go() {
        let ok = |text: &str, expected: Duration| assert_eq!(parse_duration(text), Ok(expected));
        ok("0", Duration::ZERO);
        ok("30s", Duration::from_secs(30));
        ok("3m", Duration::from_secs(180));
        ok("1m30s", Duration::from_secs(90));
        ok("1.5h", Duration::from_secs(5400));
        ok("500ms", Duration::from_millis(500));
        ok("250us", Duration::from_micros(250));
        ok("10ns", Duration::from_nanos(10));
        for bad in ["", "30", "-1s", "1x", "s", "1s2", "..s", "1e3s", "+"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(parse_duration("9999999999h").is_err());
    }

    #[test]
    fn sizes_read_binary_and_decimal_units() {
        assert_eq!(parse_byte_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_byte_size("64KiB"), Ok(64 << 10));
        assert_eq!(parse_byte_size("4096"), Ok(4096));
        assert_eq!(parse_byte_size("1kB"), Ok(1000));
        assert_eq!(parse_byte_size("2 MB"), Ok(2_000_000));
        assert_eq!(parse_byte_size("1.5KiB"), Ok(1536));
        for bad in ["", "MiB", "1XB", "-1", "1 MiB B"] {
            assert!(parse_byte_size(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn modes_are_octal_permission_bits() {
        assert_eq!(parse_mode("0600"), Ok(0o600));
        assert_eq!(parse_mode("660"), Ok(0o660));
        assert_eq!(parse_mode("0o640"), Ok(0o640));
        for bad in ["", "0800", "01777", "rw", "0o"] {
            assert!(parse_mode(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn reference_defaults() {
        let options = Options::parse_from(["imageapi-server"]);
        assert_eq!(options.unique_schemes(), [Scheme::Http]);
        assert_eq!(options.port, 8080);
        assert_eq!(options.max_header_size, 1 << 20);
        let http = options.limits(Scheme::Http);
        assert_eq!(http.read_timeout, Some(Duration::from_secs(30)));
        assert_eq!(http.write_timeout, Some(Duration::from_secs(60)));
        assert_eq!(http.idle_timeout, Some(Duration::from_secs(10)));
        assert_eq!(http.tcp_keep_alive, Some(Duration::from_secs(180)));
        assert_eq!(http.listen_limit, None);
        assert_eq!(options.graceful_timeout, Duration::from_secs(15));
        assert_eq!(options.socket_mode, 0o600);
        assert_eq!(options.log_format, LogFormat::Text);
        let uri = options.uri();
        assert_eq!(uri.cache_dir, PathBuf::from("/var/lib/imageapi/uri-cache"));
        assert_eq!(uri.cache_limit, 10 << 30);
        assert_eq!(uri.stall_timeout, Duration::from_secs(30));
    }

    #[test]
    fn tls_limits_default_to_the_general_ones() {
        let options = Options::parse_from([
            "imageapi-server",
            "--scheme=https",
            "--scheme",
            "unix",
            "--scheme=https",
            "--listen-limit=4",
            "--read-timeout=5s",
            "--tls-write-timeout=2s",
            "--keep-alive=0",
        ]);
        assert_eq!(options.unique_schemes(), [Scheme::Https, Scheme::Unix]);
        let tls = options.limits(Scheme::Https);
        assert_eq!(tls.read_timeout, Some(Duration::from_secs(5)));
        assert_eq!(tls.write_timeout, Some(Duration::from_secs(2)));
        assert_eq!(tls.listen_limit, Some(4));
        assert_eq!(
            tls.idle_timeout, None,
            "keep-alive 0 turns HTTP keep-alive off"
        );
        assert_eq!(options.limits(Scheme::Unix).listen_limit, None);
        assert_eq!(options.tls_host(), "localhost");
    }
}
