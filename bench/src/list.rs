//! What a list costs: `GET /container` timed back to back on one kept-alive HTTP/1.1
//! connection, over the unix socket and over TCP on 127.0.0.1, at a few container counts as
//! part 3 makes them (hooked into its create loop), so that the growth with the number of
//! objects shows.
//!
//! The client is the bench's own minimal HTTP/1.1 one (test_support's request writer and
//! response reader): it writes the request, reads the status line, the headers and the whole
//! body, as any real client must, and parses nothing else, so the figure is the service's
//! answer plus one round trip through the kernel.

use std::io::{self, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use test_support::{read_response, request_bytes, BASE};

use crate::{median, quantile, us};

/// The container counts at which lists are timed (those up to the run's count, and the count).
pub const POINTS: [usize; 4] = [1, 20, 100, 1000];

/// Requests timed at each point, after a few untimed ones; fewer for the long answers of many
/// containers, so that one point takes seconds, not minutes.
fn requests_at(containers: usize) -> usize {
    (100_000 / containers.max(1)).clamp(200, 1000)
}

/// Untimed requests first on each connection (its first request pays for the accept).
const WARM_UP: usize = 20;

/// Whether the list is timed with `containers` running, for a run of `count` in all.
pub fn is_point(containers: usize, count: usize) -> bool {
    containers == count || POINTS.contains(&containers)
}

/// The lists timed at one container count over one transport.
pub struct Point {
    pub containers: usize,
    pub transport: &'static str,
    pub samples: Vec<Duration>,
    /// Length of one answer's body.
    pub bytes: usize,
}

/// Where the service listens.
pub struct Endpoints<'a> {
    pub socket: &'a Path,
    pub tcp: Option<SocketAddr>,
}

/// One kept-alive connection that sends the same GET again and again.
struct KeptAlive<S: Read + Write> {
    stream: BufReader<S>,
    request: Vec<u8>,
}

impl<S: Read + Write> KeptAlive<S> {
    fn new(stream: S, target: &str) -> KeptAlive<S> {
        KeptAlive {
            stream: BufReader::new(stream),
            request: request_bytes("GET", target, &[], None, None),
        }
    }

    /// One request and its whole answer: the body's length.
    fn get(&mut self) -> Result<usize> {
        self.stream.get_mut().write_all(&self.request)?;
        let response = read_response(&mut self.stream)?;
        ensure!(
            response.status == 200,
            "HTTP {}: {}",
            response.status,
            response.body
        );
        ensure!(
            !response.closes_connection(),
            "the service closed the kept-alive connection"
        );
        Ok(response.body.len())
    }

    fn time(&mut self, containers: usize, transport: &'static str) -> Result<Point> {
        // The answer lists what the bench made, no more, no less.
        self.stream.get_mut().write_all(&self.request)?;
        let first = read_response(&mut self.stream)?;
        let listed = first.json().as_array().map_or(0, Vec::len);
        ensure!(
            listed == containers,
            "GET /container listed {listed} containers, expected {containers}"
        );
        for _ in 0..WARM_UP {
            self.get()?;
        }
        let n = requests_at(containers);
        let mut samples = Vec::with_capacity(n);
        let mut bytes = 0;
        for _ in 0..n {
            let start = Instant::now();
            bytes = self.get()?;
            samples.push(start.elapsed());
        }
        Ok(Point {
            containers,
            transport,
            samples,
            bytes,
        })
    }
}

/// Times `GET /container` with `containers` listed, over each transport in turn.
pub fn measure(endpoints: &Endpoints<'_>, containers: usize) -> Result<Vec<Point>> {
    let target = format!("{BASE}/container");
    let mut points = Vec::new();
    let unix = UnixStream::connect(endpoints.socket)
        .with_context(|| format!("connecting to {}", endpoints.socket.display()))?;
    points.push(
        KeptAlive::new(unix, &target)
            .time(containers, "unix")
            .context("GET /container over the unix socket")?,
    );
    if let Some(addr) = endpoints.tcp {
        let tcp = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
        // As any HTTP client does: a request is one small write that must not wait for an ack.
        tcp.set_nodelay(true)?;
        points.push(
            KeptAlive::new(tcp, &target)
                .time(containers, "tcp")
                .with_context(|| format!("GET /container over TCP {addr}"))?,
        );
    }
    Ok(points)
}

pub fn print(points: &[Point]) {
    if points.is_empty() {
        return;
    }
    out!("  GET /container (all listed) back to back on one kept-alive connection, µs:");
    out!(
        "  {:>6} {:>9} {:>9} {:>9} {:>9} {:>10} {:>14}",
        "listed",
        "transport",
        "requests",
        "median",
        "p99",
        "body kB",
        "median/listed"
    );
    for p in points {
        let med = median(&p.samples);
        out!(
            "  {:>6} {:>9} {:>9} {:>9} {:>9} {:>10.1} {:>14.1}",
            p.containers,
            p.transport,
            p.samples.len(),
            us(med),
            us(quantile(&p.samples, 0.99)),
            p.bytes as f64 / 1024.0,
            med.as_secs_f64() * 1e6 / p.containers as f64
        );
    }
}
