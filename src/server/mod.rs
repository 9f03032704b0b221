//! The listeners: a unix socket, plain HTTP and HTTPS (optionally with client certificates),
//! each an actix-web server of its own with its own limits (as the reference's go-swagger
//! servers were), all over the one engine, so they serve the same objects.

pub mod conn;
pub mod limits;
pub mod listen;
pub mod tls;

use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::time::Duration;

use actix_web::dev::ServerHandle;
use actix_web::http::KeepAlive;
use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};
use actors::Engine;
use anyhow::{bail, Context};
use rustls::ServerConfig;
use tracing::info;

use crate::api;
use crate::cli::{Limits, Options, Scheme};
use listen::SocketFile;

/// A bound listening socket, not served yet.
enum Socket {
    Tcp(Vec<TcpListener>),
    Tls(Vec<TcpListener>, Box<ServerConfig>),
    Unix(UnixListener),
}

/// Every listener the options ask for, bound, with its limits.
pub struct Bound {
    sockets: Vec<(Scheme, Socket, Limits)>,
    socket_file: Option<SocketFile>,
    graceful_timeout: Duration,
}

/// Binds the listeners of `options` (and reads the TLS files): done before anything else, so
/// that a wrong flag, a busy port or a bad certificate stops the service before it touches the
/// host. Must run while the process has a single thread (the unix socket is created under a
/// temporary umask).
pub fn bind(options: &Options) -> anyhow::Result<Bound> {
    let mut sockets = Vec::new();
    let mut socket_file = None;
    for scheme in options.unique_schemes() {
        let limits = options.limits(scheme);
        let socket = match scheme {
            Scheme::Http => Socket::Tcp(listen::bind_tcp(&options.host, options.port, "--host")?),
            Scheme::Https => {
                let (Some(certificate), Some(key)) = (&options.tls_certificate, &options.tls_key)
                else {
                    bail!("--scheme https needs --tls-certificate and --tls-key");
                };
                let config = tls::server_config(certificate, key, options.tls_ca.as_deref())?;
                let listeners =
                    listen::bind_tcp(options.tls_host(), options.tls_port, "--tls-host")?;
                Socket::Tls(listeners, Box::new(config))
            }
            Scheme::Unix => {
                let (listener, file) = listen::bind_unix(
                    &options.socket_path,
                    options.socket_mode,
                    options.socket_group.as_deref(),
                )?;
                socket_file = Some(file);
                Socket::Unix(listener)
            }
        };
        sockets.push((scheme, socket, limits));
    }
    if options.tls_ca.is_some() && !options.unique_schemes().contains(&Scheme::Https) {
        tracing::warn!("--tls-ca is only used by --scheme https");
    }
    Ok(Bound {
        sockets,
        socket_file,
        graceful_timeout: options.graceful_timeout,
    })
}

/// The running servers.
pub struct Servers {
    handles: Vec<(Scheme, ServerHandle)>,
    tasks: Vec<actix_web::rt::task::JoinHandle<std::io::Result<()>>>,
    socket_file: Option<SocketFile>,
}

fn serve_one(
    engine: &Engine,
    readiness: &api::Readiness,
    socket: Socket,
    limits: Limits,
    graceful_timeout: Duration,
) -> anyhow::Result<actix_web::dev::Server> {
    let app_engine = engine.clone();
    let app_readiness = readiness.clone();
    let keep_alive = match limits.idle_timeout {
        Some(idle) => KeepAlive::Timeout(idle),
        None => KeepAlive::Disabled,
    };
    let mut server = HttpServer::new(move || {
        App::new()
            .wrap(from_fn(move |request, next| {
                crate::server::limits::guard(limits, request, next)
            }))
            .app_data(web::Data::new(app_engine.clone()))
            .app_data(web::Data::new(app_readiness.clone()))
            .configure(api::configure)
    })
    .disable_signals()
    .shutdown_timeout(graceful_timeout.as_secs_f64().ceil() as u64)
    .keep_alive(keep_alive)
    .client_request_timeout(limits.read_timeout.unwrap_or(Duration::ZERO))
    .client_disconnect_timeout(Duration::from_secs(1))
    .on_connect(conn::on_connect(limits));
    if let Some(timeout) = limits.read_timeout {
        server = server.tls_handshake_timeout(timeout.min(Duration::from_secs(10)));
    }
    if let Some(limit) = limits.listen_limit {
        // actix counts connections per worker: one worker makes the limit exact. Handlers only
        // await the engine, so one worker thread is plenty.
        server = server.workers(1).max_connections(limit);
    }
    let server = match socket {
        Socket::Tcp(listeners) => {
            for listener in listeners {
                server = server.listen(listener)?;
            }
            server
        }
        Socket::Tls(listeners, config) => {
            for listener in listeners {
                server = server.listen_rustls_0_23(listener, (*config).clone())?;
            }
            server
        }
        Socket::Unix(listener) => server.listen_uds(listener)?,
    };
    Ok(server.run())
}

/// Serves every bound listener with `engine`; their `/readyz` answers from `readiness`.
pub fn start(bound: Bound, engine: &Engine, readiness: &api::Readiness) -> anyhow::Result<Servers> {
    let mut servers = Servers {
        handles: Vec::new(),
        tasks: Vec::new(),
        socket_file: bound.socket_file,
    };
    for (scheme, socket, limits) in bound.sockets {
        let addresses = match &socket {
            Socket::Tcp(listeners) | Socket::Tls(listeners, _) => listeners
                .iter()
                .filter_map(|listener| listener.local_addr().ok())
                .map(|address| address.to_string())
                .collect::<Vec<_>>()
                .join(" "),
            Socket::Unix(_) => servers
                .socket_file
                .as_ref()
                .map(|file| file.path().display().to_string())
                .unwrap_or_default(),
        };
        let server = serve_one(engine, readiness, socket, limits, bound.graceful_timeout)
            .with_context(|| format!("serving {scheme:?} on {addresses}"))?;
        servers.handles.push((scheme, server.handle()));
        servers.tasks.push(actix_web::rt::spawn(server));
        info!(scheme = ?scheme, %addresses, ?limits, "listening");
    }
    Ok(servers)
}

impl Servers {
    /// Stops accepting, lets requests in flight finish (up to the graceful timeout), then
    /// closes every connection and removes the unix socket.
    pub async fn stop(mut self) {
        let stops = self
            .handles
            .iter()
            .map(|(_, handle)| handle.stop(true))
            .collect::<Vec<_>>();
        futures::future::join_all(stops).await;
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
        drop(self.socket_file.take());
    }
}
