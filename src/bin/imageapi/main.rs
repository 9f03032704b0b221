//! `imageapi`: the command-line client of the ImageAPI service (docs/cli.md).
//!
//! It talks to the service over its unix socket by default, or over http(s) with `--url`, and
//! maps every outcome to an exit code scripts can test: see [`Failure::exit_code`].

mod apply;
mod output;
mod progress;
mod transport;
mod watch;

use std::io::{self, IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use serde_json::Value;

use output::Format;
use transport::{Endpoint, TlsFiles};

/// The service's API prefix.
const BASE: &str = "/imageapi/v1";

/// The socket the service listens on by default (`imageapi-server --socket-path`).
const DEFAULT_SOCKET: &str = "/var/run/imageapi.sock";

/// Attach images, mount them and run system containers through the ImageAPI service.
///
/// Exit codes: 0 done; 1 the service refused the request (its message, stage and reason are
/// printed); 2 bad usage or input file; 3 the service cannot be reached or answered something
/// that is not its API; 4 `wait` timed out; 5 a local file could not be read or written.
#[derive(Debug, Parser)]
#[command(name = "imageapi", version)]
struct Cli {
    /// The service's unix socket (used unless --url is given).
    #[arg(long, global = true, env = "IMAGEAPI_SOCKET", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,

    /// Talk to the service over http(s) instead, e.g. https://node:8443.
    #[arg(long, global = true, env = "IMAGEAPI_URL")]
    url: Option<String>,

    /// CA certificates (PEM) that sign the service's https certificate [default: the system's].
    #[arg(long, global = true, env = "IMAGEAPI_CA")]
    ca: Option<PathBuf>,

    /// Client certificate chain (PEM) for a service that asks for mutual TLS.
    #[arg(long, global = true, env = "IMAGEAPI_CERT", requires = "key")]
    cert: Option<PathBuf>,

    /// The client certificate's private key (PEM).
    #[arg(long, global = true, env = "IMAGEAPI_KEY", requires = "cert")]
    key: Option<PathBuf>,

    /// Output format.
    #[arg(short, long, global = true, value_enum, default_value_t = Format::Table)]
    output: Format,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Block devices: loopback, local, rbd, iscsi.
    #[command(subcommand)]
    Attach(ObjectCommand),
    /// Filesystems: attach, bind, nfs, overlay, uri.
    #[command(subcommand)]
    Mount(ObjectCommand),
    /// System containers.
    #[command(subcommand)]
    Container(ContainerCommand),
    /// Create what a nested definition file describes (JSON or YAML; see docs/cli.md).
    Apply(FileArg),
    /// Wait until a container is in a state.
    Wait {
        /// The container's name or id.
        container: String,
        /// The state to wait for.
        #[arg(long, value_enum)]
        state: ContainerState,
        /// How long to wait, e.g. 30s, 2m, 500ms.
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Print a container's log (its init's output and the service's lifecycle lines).
    Logs {
        /// Keep printing what is appended, until the container is deleted or Ctrl-C.
        #[arg(short, long)]
        follow: bool,
        /// The container's name or id.
        container: String,
    },
    /// Print the service's event stream, one line per event.
    Events,
    /// Print a shell completion script.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write man pages (imageapi.1, one per subcommand, and the service's imageapi-server.8)
    /// into DIR.
    Man { dir: PathBuf },
}

#[derive(Debug, Subcommand)]
enum ObjectCommand {
    /// List them.
    Ls,
    /// Show one.
    Get { id: i64 },
    /// Create one from a definition (JSON or YAML).
    Create(FileArg),
    /// Delete one.
    Rm {
        /// Also delete what still references it.
        #[arg(long)]
        force: bool,
        id: i64,
    },
}

#[derive(Debug, Subcommand)]
enum ContainerCommand {
    /// List them.
    Ls,
    /// Show one.
    Get { container: String },
    /// Create one from a definition (JSON or YAML).
    Create(FileArg),
    /// Delete one.
    Rm {
        /// Kill it first if it runs.
        #[arg(long)]
        force: bool,
        container: String,
    },
    /// Start (or resume) it.
    Start { container: String },
    /// Stop it (its init gets SIGTERM, then SIGKILL).
    Stop { container: String },
    /// Freeze it.
    Pause { container: String },
}

#[derive(Debug, Args)]
struct FileArg {
    /// The definition file, or `-` for standard input.
    #[arg(short, long)]
    file: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ContainerState {
    Created,
    Running,
    Paused,
    Stopping,
    Exited,
    Dead,
}

impl ContainerState {
    fn as_str(self) -> &'static str {
        match self {
            ContainerState::Created => "created",
            ContainerState::Running => "running",
            ContainerState::Paused => "paused",
            ContainerState::Stopping => "stopping",
            ContainerState::Exited => "exited",
            ContainerState::Dead => "dead",
        }
    }
}

/// Why a command did not succeed; each maps to one exit code.
#[derive(Debug)]
enum Failure {
    /// The service answered with an error status and (usually) its `{code, message, ...}` body.
    Refused {
        status: u16,
        body: Value,
    },
    /// Bad usage or input.
    Usage(String),
    /// The service could not be reached, or what answered is not the service.
    Unreachable(String),
    TimedOut(String),
    Local(String),
}

impl Failure {
    fn exit_code(&self) -> u8 {
        match self {
            Failure::Refused { .. } => 1,
            Failure::Usage(_) => 2,
            Failure::Unreachable(_) => 3,
            Failure::TimedOut(_) => 4,
            Failure::Local(_) => 5,
        }
    }

    fn report(&self) -> String {
        match self {
            Failure::Refused { status, body } => refusal_text(*status, body),
            Failure::Usage(text)
            | Failure::Unreachable(text)
            | Failure::TimedOut(text)
            | Failure::Local(text) => text.clone(),
        }
    }
}

/// `message` first, then where it failed: `(status 422, mount stage attach: reason)`.
fn refusal_text(status: u16, body: &Value) -> String {
    let text = |key: &str| body.get(key).and_then(Value::as_str);
    let mut report = text("message")
        .map(str::to_string)
        .unwrap_or_else(|| format!("the service answered {status}: {body}"));
    let mut place = vec![format!("status {status}")];
    if let Some(object) = text("object") {
        place.push(format!("object {object}"));
    }
    if let Some(stage) = text("stage") {
        place.push(format!("stage {stage}"));
    }
    if let Some(field) = text("field") {
        place.push(format!("field {field}"));
    }
    report.push_str(&format!(" ({})", place.join(", ")));
    if let Some(reason) = text("reason") {
        report.push_str(&format!("\n  reason: {reason}"));
    }
    report
}

type Outcome<T = ()> = Result<T, Failure>;

/// The service, as the global flags name it.
pub struct Api {
    endpoint: Endpoint,
}

impl Api {
    fn from_cli(cli: &Cli) -> Outcome<Api> {
        let endpoint = match &cli.url {
            Some(url) => Endpoint::from_url(
                url,
                &TlsFiles {
                    ca: cli.ca.as_deref(),
                    cert: cli.cert.as_deref(),
                    key: cli.key.as_deref(),
                },
            )
            .map_err(Failure::Usage)?,
            None => Endpoint::Unix(cli.socket.clone()),
        };
        Ok(Api { endpoint })
    }

    fn unreachable(&self, error: io::Error) -> Failure {
        Failure::Unreachable(format!(
            "cannot reach the service at {}: {error}",
            self.endpoint.describe()
        ))
    }

    /// Opens `path` (under [`BASE`]) and hands back the unread answer, whatever its status.
    fn open(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Outcome<transport::Response> {
        self.endpoint
            .send(method, &format!("{BASE}{path}"), headers, None)
            .map_err(|e| self.unreachable(e))
    }

    /// One JSON exchange: the answer's JSON on 2xx, [`Failure::Refused`] otherwise.
    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Outcome<Value> {
        let bytes = body.map(|b| serde_json::to_vec(b).expect("JSON values serialize"));
        let headers: &[(&str, &str)] = if body.is_some() {
            &[
                ("Content-Type", "application/json"),
                ("Accept", "application/json"),
            ]
        } else {
            &[("Accept", "application/json")]
        };
        let exchange = || {
            self.endpoint
                .send(method, &format!("{BASE}{path}"), headers, bytes.as_deref())
                .and_then(|response| Ok((response.status, response.read_body()?)))
        };
        let (status, bytes) = if method == "GET" {
            exchange()
        } else {
            progress::during(&format!("{method} {path}"), exchange)
        }
        .map_err(|e| self.unreachable(e))?;
        let value: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).map_err(|e| {
                if (200..300).contains(&status) {
                    Failure::Unreachable(format!(
                        "{} answered {status} with a body that is not JSON ({e}): is it the ImageAPI service?",
                        self.endpoint.describe()
                    ))
                } else {
                    // Not the service's error body; keep what it said.
                    Failure::Refused {
                        status,
                        body: Value::String(String::from_utf8_lossy(&bytes).into_owned()),
                    }
                }
            })?
        };
        if (200..300).contains(&status) {
            Ok(value)
        } else {
            Err(Failure::Refused {
                status,
                body: value,
            })
        }
    }

    fn list(&self, path: &str) -> Outcome<Vec<Value>> {
        match self.call("GET", path, None)? {
            Value::Array(items) => Ok(items),
            other => Err(Failure::Unreachable(format!(
                "GET {path} answered {other} instead of a list: is it the ImageAPI service?"
            ))),
        }
    }

    /// The container that `container` names (an id when it is a number), if it exists.
    /// The service answers 404 for a name or id it does not know.
    fn find_container(&self, container: &str) -> Outcome<Option<Value>> {
        self.find_container_where(container, "")
    }

    /// [`Api::find_container`] with more query parameters (`a=b&c=d`, may be empty).
    fn find_container_where(&self, container: &str, query: &str) -> Outcome<Option<Value>> {
        let mut path = format!("/container?{}", container_query(container));
        if !query.is_empty() {
            path = format!("{path}&{query}");
        }
        match self.list(&path) {
            Ok(found) => Ok(found.into_iter().next()),
            Err(Failure::Refused { status: 404, .. }) => Ok(None),
            Err(other) => Err(other),
        }
    }

    fn container(&self, container: &str) -> Outcome<Value> {
        self.find_container(container)?
            .ok_or_else(|| Failure::Refused {
                status: 404,
                body: serde_json::json!({
                    "code": 404,
                    "message": format!("no container {container}"),
                    "object": "container",
                }),
            })
    }
}

/// `id=N` for a number, `name=X` (URL-encoded) otherwise.
fn container_query(container: &str) -> String {
    if !container.is_empty() && container.bytes().all(|b| b.is_ascii_digit()) {
        format!("id={container}")
    } else {
        serde_urlencoded::to_string([("name", container)]).expect("strings encode")
    }
}

/// Reads a definition (JSON or YAML: JSON is YAML) from a file or `-`.
fn read_definition(file: &FileArg) -> Outcome<Value> {
    let mut text = String::new();
    let read = if file.file.as_os_str() == "-" {
        io::stdin().read_to_string(&mut text).map(|_| ())
    } else {
        std::fs::read_to_string(&file.file).map(|t| text = t)
    };
    read.map_err(|e| Failure::Usage(format!("{}: {e}", file.file.display())))?;
    serde_norway::from_str(&text)
        .map_err(|e| Failure::Usage(format!("{}: not JSON or YAML: {e}", file.file.display())))
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a number and a unit (ms, s, m, h)"))?;
    let seconds = match unit {
        "ms" => number / 1000.0,
        "" | "s" => number,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (ms, s, m, h)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))
}

fn run(cli: Cli) -> Outcome {
    let format = cli.output;
    match &cli.command {
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "imageapi", &mut script);
            let mut out = io::stdout().lock();
            return out
                .write_all(&script)
                .and_then(|()| out.flush())
                .or_else(|e| match e.kind() {
                    io::ErrorKind::BrokenPipe => Ok(()),
                    _ => Err(Failure::Local(format!("standard output: {e}"))),
                });
        }
        Command::Man { dir } => return write_man_pages(dir),
        _ => {}
    }
    let api = Api::from_cli(&cli)?;
    match cli.command {
        Command::Attach(command) => object_command(&api, "attach", command, format),
        Command::Mount(command) => object_command(&api, "mount", command, format),
        Command::Container(command) => container_command(&api, command, format),
        Command::Apply(file) => {
            let (object, applied) = apply::apply(&api, &read_definition(&file)?)?;
            output::print_objects(object, &[applied], format);
            Ok(())
        }
        Command::Wait {
            container,
            state,
            timeout,
        } => {
            let reached = watch::wait(&api, &container, state.as_str(), timeout)?;
            output::print_objects("container", &[reached], format);
            Ok(())
        }
        Command::Logs { follow, container } => watch::logs(&api, &container, follow),
        Command::Events => watch::events(&api, format),
        Command::Completions { .. } | Command::Man { .. } => unreachable!("handled above"),
    }
}

fn object_command(api: &Api, object: &str, command: ObjectCommand, format: Format) -> Outcome {
    let shown = match command {
        ObjectCommand::Ls => api.list(&format!("/{object}"))?,
        // The service answers 404 for an id it does not hold.
        ObjectCommand::Get { id } => api.list(&format!("/{object}?id={id}"))?,
        ObjectCommand::Create(file) => {
            let body = read_definition(&file)?;
            vec![api.call("POST", &format!("/{object}"), Some(&body))?]
        }
        ObjectCommand::Rm { force, id } => {
            let force = if force { "&force=true" } else { "" };
            vec![api.call("DELETE", &format!("/{object}?id={id}{force}"), None)?]
        }
    };
    output::print_objects(object, &shown, format);
    Ok(())
}

fn container_command(api: &Api, command: ContainerCommand, format: Format) -> Outcome {
    let patch = |container: &str, state: &str| {
        let path = format!("/container?{}&state={state}", container_query(container));
        api.call("PATCH", &path, None)
    };
    let shown = match command {
        ContainerCommand::Ls => api.list("/container")?,
        ContainerCommand::Get { container } => vec![api.container(&container)?],
        ContainerCommand::Create(file) => {
            vec![api.call("POST", "/container", Some(&read_definition(&file)?))?]
        }
        ContainerCommand::Rm { force, container } => {
            let force = if force { "&force=true" } else { "" };
            let path = format!("/container?{}{force}", container_query(&container));
            vec![api.call("DELETE", &path, None)?]
        }
        ContainerCommand::Start { container } => vec![patch(&container, "running")?],
        ContainerCommand::Stop { container } => vec![patch(&container, "exited")?],
        ContainerCommand::Pause { container } => vec![patch(&container, "paused")?],
    };
    output::print_objects("container", &shown, format);
    Ok(())
}

fn write_man_pages(dir: &std::path::Path) -> Outcome {
    let local = |e: io::Error| Failure::Local(format!("{}: {e}", dir.display()));
    std::fs::create_dir_all(dir).map_err(local)?;
    clap_mangen::generate_to(Cli::command(), dir).map_err(local)?;
    // The service's page too, in section 8 (system administration), so that a package has
    // both from one command.
    let server = imageapi::cli::Options::command();
    let mut page = Vec::new();
    clap_mangen::Man::new(server)
        .section("8")
        .render(&mut page)
        .map_err(local)?;
    std::fs::write(dir.join("imageapi-server.8"), page).map_err(local)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            let prefix = if io::stderr().is_terminal() {
                "\x1b[1;31merror:\x1b[0m"
            } else {
                "error:"
            };
            eprintln!("{prefix} {}", failure.report());
            ExitCode::from(failure.exit_code())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations_take_go_like_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("3d").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn containers_are_named_by_id_or_name() {
        assert_eq!(container_query("12"), "id=12");
        assert_eq!(container_query("web 01"), "name=web+01");
    }

    #[test]
    fn refusals_show_message_stage_and_reason() {
        let body = serde_json::json!({
            "code": 422, "message": "cannot mount", "object": "mount", "stage": "attach",
            "reason": "bad superblock"
        });
        assert_eq!(
            refusal_text(422, &body),
            "cannot mount (status 422, object mount, stage attach)\n  reason: bad superblock"
        );
        assert_eq!(
            refusal_text(502, &Value::String("bad gateway".into())),
            "the service answered 502: \"bad gateway\" (status 502)"
        );
    }
}
