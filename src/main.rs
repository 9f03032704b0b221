//! imageapi-server: the ImageAPI service binary.

use std::io::IsTerminal;
use std::os::unix::fs::PermissionsExt;

use actix_web::{web, App, HttpServer};
use actors::{Engine, EngineConfig};
use anyhow::Context;
use clap::Parser;
use futures::StreamExt;
use signal_hook::consts::{SIGINT, SIGTERM};
use tracing::info;
use tracing_subscriber::EnvFilter;

use imageapi::api;
use imageapi::cli::{Options, Scheme};

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
    // A container init is this binary re-executed: it must take over before any thread exists.
    actors::container::run_if_init();
    let options = Options::parse();
    tracing_subscriber::fmt()
        .with_env_filter(log_filter())
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    actix_web::rt::System::new().block_on(serve(options))
}

async fn serve(options: Options) -> anyhow::Result<()> {
    let engine = Engine::start(EngineConfig {
        mount_dir: options.mount_dir.clone(),
        log_dir: options.log_dir.clone(),
        state_dir: Some(options.state_dir.clone()),
        cleanup_on_exit: options.cleanup_on_exit,
    })
    .await
    .context("starting the engine")?;

    let app_engine = engine.clone();
    let mut server = HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(app_engine.clone()))
            .configure(api::configure)
    })
    .disable_signals();
    for scheme in &options.schemes {
        server = match scheme {
            Scheme::Http => server
                .bind((options.host.as_str(), options.port))
                .with_context(|| format!("binding http on {}:{}", options.host, options.port))?,
            Scheme::Unix => {
                // bind_uds replaces a stale socket file left by a crashed run.
                let bound = server.bind_uds(&options.socket_path).with_context(|| {
                    format!("binding unix socket {}", options.socket_path.display())
                })?;
                std::fs::set_permissions(
                    &options.socket_path,
                    std::fs::Permissions::from_mode(0o600),
                )
                .context("restricting the unix socket to root")?;
                bound
            }
        };
    }
    let server = server.run();
    let handle = server.handle();
    let running = actix_web::rt::spawn(server);
    info!(schemes = ?options.schemes, "serving");

    let mut signals =
        signal_hook_tokio::Signals::new([SIGTERM, SIGINT]).context("installing signal handlers")?;
    let signal = signals.next().await;
    info!(
        ?signal,
        "stopping: no new requests, then releasing every object"
    );
    signals.handle().close();
    handle.stop(true).await;
    let _ = running.await;
    engine.shutdown().await;
    if options.schemes.contains(&Scheme::Unix) {
        let _ = std::fs::remove_file(&options.socket_path);
    }
    info!("stopped");
    Ok(())
}
