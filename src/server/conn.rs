//! One watchdog per connection, so that no client can hold a connection by going slow.
//!
//! actix-web bounds the first request head (`client_request_timeout`) and idle keep-alive time,
//! but not the head of a later request on the same connection, nor a client that stops reading
//! its response. So each connection gets a task holding a duplicate of its socket and two
//! deadlines, kept by the request middleware ([`super::limits`]):
//!
//! - *read*: the client must have sent what it owes by then: the first request head, a request
//!   body, or after a response the next head (idle time plus read timeout);
//! - *write*: a ready response must have left the socket's send queue by then.
//!
//! An event stream ([`Watch::stream_ready`]) has no read deadline: it lasts as long as the
//! client listens, and ends its connection.
//!
//! A read deadline that passes, or a write deadline that passes with bytes still unsent, shuts
//! the socket down (both ways): the connection ends, the service goes on.

use std::any::Any;
use std::cell::Cell;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use actix_web::dev::Extensions;
use actix_web::rt::net::{TcpStream, UnixStream};
use tokio::sync::{oneshot, Notify};
use tracing::{debug, warn};

use crate::cli::Limits;

/// Extra time the watchdog gives over a read deadline the middleware enforces itself, so that
/// the middleware's 408 answer goes out before the socket is cut.
pub const GRACE: Duration = Duration::from_secs(1);

/// What a connection's watchdog knows; reached from requests through `conn_data`.
pub struct Watch {
    socket: OwnedFd,
    peer: String,
    limits: Limits,
    read: Cell<Option<Instant>>,
    write: Cell<Option<Instant>>,
    changed: Notify,
}

/// Lives in the connection's extensions: when the connection ends, it is dropped and its
/// watchdog stops.
pub struct ConnGuard {
    watch: Rc<Watch>,
    _stop: oneshot::Sender<()>,
}

impl ConnGuard {
    /// The connection's watch, for a request to keep informed.
    pub fn watch(&self) -> Rc<Watch> {
        self.watch.clone()
    }
}

/// Bytes written to the socket that the peer has not taken yet (SIOCOUTQ).
fn unsent_bytes(socket: BorrowedFd<'_>) -> Option<usize> {
    let mut unsent: libc::c_int = 0;
    // SAFETY: SIOCOUTQ (same number as TIOCOUTQ) writes one int through the pointer, which
    // points to a live local int; `socket` is an open socket for the duration of the call.
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), libc::TIOCOUTQ, &mut unsent) };
    (rc == 0).then_some(usize::try_from(unsent).unwrap_or(0))
}

impl Watch {
    /// The client, as the log names it.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    fn set_read(&self, deadline: Option<Instant>) {
        self.read.set(deadline);
        self.changed.notify_one();
    }

    /// A request head arrived: no read deadline while the request is handled.
    pub fn request_started(&self) {
        self.set_read(None);
    }

    /// The handler started reading the request body, which must all have come by `deadline`.
    pub fn body_started(&self, deadline: Instant) {
        self.set_read(Some(deadline + GRACE));
    }

    /// The request body has been read in full.
    pub fn body_done(&self) {
        self.set_read(None);
    }

    /// A response is ready: the client has the write timeout to take it, and then idle time
    /// plus the read timeout to send its next request head (actix closes the connection at the
    /// end of the idle time if nothing came).
    pub fn response_ready(&self) {
        let now = Instant::now();
        if let Some(timeout) = self.limits.write_timeout {
            // A client that has not taken an earlier response yet keeps that earlier deadline.
            let pending = self
                .write
                .get()
                .filter(|_| unsent_bytes(self.socket.as_fd()).is_some_and(|unsent| unsent > 0));
            self.write.set(pending.or(Some(now + timeout)));
        }
        let next_head = match (self.limits.idle_timeout, self.limits.read_timeout) {
            (Some(idle), Some(read)) => Some(now + idle + read + GRACE),
            _ => None,
        };
        self.set_read(next_head);
    }

    /// A long-lived response (an event stream) is ready: its head must leave within the write
    /// timeout as any response's, but no next request is awaited (the stream ends the
    /// connection), so there is no read deadline while it lasts.
    pub fn stream_ready(&self) {
        self.response_ready();
        self.set_read(None);
    }

    fn next_deadline(&self) -> Option<Instant> {
        match (self.read.get(), self.write.get()) {
            (Some(read), Some(write)) => Some(read.min(write)),
            (read, write) => read.or(write),
        }
    }

    /// Checks the deadlines at `now`; true when the connection was cut.
    fn expire(&self, now: Instant) -> bool {
        if self.read.get().is_some_and(|deadline| deadline <= now) {
            self.cut("the client was too slow sending its request");
            return true;
        }
        if self.write.get().is_some_and(|deadline| deadline <= now) {
            match unsent_bytes(self.socket.as_fd()) {
                Some(0) => self.write.set(None),
                _ => {
                    self.cut("the client was too slow taking its response");
                    return true;
                }
            }
        }
        false
    }

    fn cut(&self, why: &str) {
        warn!(peer = %self.peer, "closing a connection: {why}");
        if let Err(err) = rustix::net::shutdown(&self.socket, rustix::net::Shutdown::Both) {
            debug!(peer = %self.peer, %err, "shutdown of a connection");
        }
    }
}

async fn watchdog(watch: Rc<Watch>, mut stop: oneshot::Receiver<()>) {
    loop {
        let deadline = watch.next_deadline();
        let expiry = async move {
            match deadline {
                Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut stop => return,
            _ = watch.changed.notified() => {}
            _ = expiry => {
                if watch.expire(Instant::now()) {
                    return;
                }
            }
        }
    }
}

/// The socket of an accepted connection (plain TCP, TLS over TCP, or unix) and how to name
/// its peer in the log.
fn socket_of(connection: &dyn Any) -> Option<(BorrowedFd<'_>, String, bool)> {
    if let Some(tcp) = connection.downcast_ref::<TcpStream>() {
        let peer = tcp.peer_addr().map(|a| a.to_string()).unwrap_or_default();
        return Some((tcp.as_fd(), peer, true));
    }
    if let Some(tls) =
        connection.downcast_ref::<actix_tls::accept::rustls_0_23::TlsStream<TcpStream>>()
    {
        let (tcp, session) = tls.get_ref();
        let peer = tcp.peer_addr().map(|a| a.to_string()).unwrap_or_default();
        let certified = session
            .peer_certificates()
            .is_some_and(|chain| !chain.is_empty());
        let peer = if certified {
            format!("{peer} (client certificate verified)")
        } else {
            peer
        };
        return Some((tcp.as_fd(), peer, true));
    }
    if let Some(unix) = connection.downcast_ref::<UnixStream>() {
        // nix, not rustix: a peer outside the service's pid namespace has pid 0, which rustix's
        // non-zero `Pid` cannot hold.
        let peer =
            match nix::sys::socket::getsockopt(unix, nix::sys::socket::sockopt::PeerCredentials) {
                Ok(cred) => format!(
                    "unix pid {} uid {} gid {}",
                    cred.pid(),
                    cred.uid(),
                    cred.gid()
                ),
                Err(_) => "unix".to_string(),
            };
        return Some((unix.as_fd(), peer, false));
    }
    None
}

/// The `on_connect` callback of a listener with `limits`: sets TCP keep-alive and starts the
/// connection's watchdog.
pub fn on_connect(limits: Limits) -> impl Fn(&dyn Any, &mut Extensions) + Send + Sync + 'static {
    move |connection, extensions| {
        let Some((socket, peer, tcp)) = socket_of(connection) else {
            return;
        };
        debug!(%peer, "connection accepted");
        if let (true, Some(period)) = (tcp, limits.tcp_keep_alive) {
            let set = rustix::net::sockopt::set_socket_keepalive(socket, true)
                .and_then(|()| rustix::net::sockopt::set_tcp_keepidle(socket, period))
                .and_then(|()| rustix::net::sockopt::set_tcp_keepintvl(socket, period));
            if let Err(err) = set {
                debug!(%peer, %err, "TCP keep-alive");
            }
        }
        let socket = match socket.try_clone_to_owned() {
            Ok(socket) => socket,
            Err(err) => {
                warn!(%peer, %err, "no watchdog for a connection: cannot duplicate its socket");
                return;
            }
        };
        let watch = Rc::new(Watch {
            socket,
            peer,
            limits,
            // actix answers 408 to a late first head; the watchdog is the backstop.
            read: Cell::new(
                limits
                    .read_timeout
                    .map(|timeout| Instant::now() + timeout + GRACE),
            ),
            write: Cell::new(None),
            changed: Notify::new(),
        });
        let (stop, stopped) = oneshot::channel();
        actix_web::rt::spawn(watchdog(watch.clone(), stopped));
        extensions.insert(ConnGuard { watch, _stop: stop });
    }
}
