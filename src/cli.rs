//! Command line, compatible with the reference service's flags.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scheme {
    /// Plain HTTP on --host:--port.
    Http,
    /// HTTP over the unix socket at --socket-path.
    Unix,
}

/// ImageAPI: attach images, mount them, overlay them and run system containers, over REST.
#[derive(Debug, Parser)]
#[command(name = "imageapi-server", version)]
pub struct Options {
    /// Listeners to serve (repeatable).
    #[arg(long = "scheme", value_enum, default_values_t = [Scheme::Http])]
    pub schemes: Vec<Scheme>,

    /// Address to listen on for http.
    #[arg(long, env = "HOST", default_value = "localhost")]
    pub host: String,

    /// Port to listen on for http (Kraken's client expects 8080).
    #[arg(long, env = "PORT", default_value_t = 8080)]
    pub port: u16,

    /// Unix socket to listen on for the unix scheme.
    #[arg(long, default_value = "/var/run/imageapi.sock")]
    pub socket_path: PathBuf,

    /// Parent directory of the mountpoints the service makes.
    #[arg(long, default_value = "/var/run/imageapi/mounts")]
    pub mount_dir: PathBuf,

    /// Directory of the container console logs.
    #[arg(long, default_value = "/var/run/imageapi/logs")]
    pub log_dir: PathBuf,

    /// Where the service keeps its objects across restarts (a crash-safe store).
    #[arg(long, default_value = "/var/lib/imageapi")]
    pub state_dir: PathBuf,

    /// Release every object at exit instead of leaving them for the next start to adopt.
    #[arg(long)]
    pub cleanup_on_exit: bool,
}
