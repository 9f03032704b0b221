//! imageapi-server: the ImageAPI service binary.

use std::io::IsTerminal;

use actors::{Engine, EngineConfig};
use anyhow::Context;
use clap::Parser;
use futures::StreamExt;
use sd_notify::NotifyState;
use signal_hook::consts::{SIGINT, SIGTERM};
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;

use imageapi::api::Readiness;
use imageapi::cli::{LogFormat, Options};
use imageapi::server;

/// Maps the reference's IMAGEAPI_LOGLEVEL words (logrus levels) to a tracing filter.
fn log_filter() -> EnvFilter {
    if let Ok(filter) = EnvFilter::try_from_env("RUST_LOG") {
        return filter;
    }
    let level = match std::env::var("IMAGEAPI_LOGLEVEL")
        .unwrap_or_default()
        .to_ascii_uppercase()
        .as_str()
    {
        "PANIC" | "FATAL" | "ERROR" => "error",
        "WARN" | "WARNING" => "warn",
        "DEBUG" => "debug",
        "TRACE" => "trace",
        _ => "info",
    };
    EnvFilter::new(level)
}

fn main() -> anyhow::Result<()> {
    let tunables_failed = actors::sys::malloc::reexec_with_tunables();
    // rustls needs its crypto provider chosen before any TLS configuration is built.
    server::tls::install_crypto_provider();
    let options = Options::parse();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(log_filter())
        .with_writer(std::io::stderr);
    match options.log_format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs.json().init(),
    }
    if let Some(error) = tunables_failed {
        tracing::warn!(%error, "cannot execute again with the allocator's tunables");
    }
    raise_open_file_limit();
    actors::sys::malloc::return_large_frees();
    // Listeners first, while the process has one thread: a wrong flag, a busy port or a bad
    // certificate stops the service before it touches the host.
    let init_program = options.init_program()?;
    let bound = server::bind(&options)?;
    actix_web::rt::System::new().block_on(serve(options, bound, init_program))
}

/// Lifts the soft limit of open files: see [`actors::sys::rlimit::raise_open_files`].
fn raise_open_file_limit() {
    match actors::sys::rlimit::raise_open_files() {
        Ok(Some((from, to))) => info!(?from, ?to, "raised the open file limit"),
        Ok(None) => {}
        Err(error) => tracing::warn!(%error, "cannot raise the open file limit"),
    }
}

async fn serve(
    options: Options,
    bound: server::Bound,
    init_program: std::path::PathBuf,
) -> anyhow::Result<()> {
    let mut signals =
        signal_hook_tokio::Signals::new([SIGTERM, SIGINT]).context("installing signal handlers")?;
    let engine = Engine::start(EngineConfig {
        mount_dir: options.mount_dir.clone(),
        log_dir: options.log_dir.clone(),
        state_dir: Some(options.state_dir.clone()),
        cleanup_on_exit: options.cleanup_on_exit,
        uri: options.uri(),
        event_buffer: options.event_buffer,
        init_program,
    })
    .await
    .context("starting the engine")?;
    let readiness = Readiness::default();
    let servers = match server::start(bound, &engine, &readiness) {
        Ok(servers) => servers,
        Err(err) => {
            engine.shutdown().await;
            return Err(err);
        }
    };
    // The engine's start did the restore, and every listener is up.
    readiness.set_ready();
    info!(schemes = ?options.unique_schemes(), "serving");
    tell_systemd(&[NotifyState::Ready, NotifyState::Status("serving")]);

    let signal = signals.next().await;
    info!(
        ?signal,
        "stopping: no new requests, then releasing every object"
    );
    signals.handle().close();
    tell_systemd(&[NotifyState::Stopping]);
    // Event streams and long polls never end by themselves: end them, or the stop would wait
    // its whole graceful timeout for them.
    engine.close_events();
    servers.stop().await;
    engine.shutdown().await;
    info!("stopped");
    Ok(())
}

/// Tells systemd (a `Type=notify` unit) where the service is; outside systemd ($NOTIFY_SOCKET
/// unset) it does nothing. The variable stays set: unsetting it races with other threads, and
/// the inits the service starts get an environment of their own.
fn tell_systemd(state: &[NotifyState]) {
    if let Err(error) = sd_notify::notify(state) {
        warn!(%error, "could not notify systemd");
    }
}
