//! Command line: `serve` runs the controller; `submit` and `status` are
//! clients of a running one (over its JSON API, see [`crate::client`]).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::db::SyncMode;
use crate::jobs::{DEFAULT_BOARDS_PER_TASK, DEFAULT_MAX_ATTEMPTS};
use crate::lease::DEFAULT_LEASE_SECS;

/// Where clients look for the controller unless told.
pub const DEFAULT_CONTROLLER: &str = "http://127.0.0.1:8080";

/// `bbot-controller <command>`
#[derive(Parser, Debug)]
#[command(
    name = "bbot-controller",
    version,
    about = "bbot controller for the build farm: splits board × commit jobs into tasks for bbot agents and merges their results"
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the controller (HTTP: agents' protocol, pages, JSON API, metrics).
    Serve(ServeArgs),
    /// Submit a job to a running controller; prints its id.
    Submit(SubmitArgs),
    /// Print a job's board × commit table (or, without JOB, the jobs).
    Status(StatusArgs),
}

/// `serve` options.
#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// Directory of the database (created if missing).
    #[arg(long, value_name = "DIR", default_value = "/var/lib/bbot-controller")]
    pub data: PathBuf,
    /// Address to listen on (port 0 picks a free port; the URL is printed).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// URL agents reach this controller at (task responses carry
    /// `<URL>?build-result`); default http://<listen address>/.
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// Directory of trusted agents' RSA public keys (*.pem): turns on
    /// authentication (fingerprints, signed challenges).
    #[arg(long, value_name = "DIR")]
    pub agent_keys: Option<PathBuf>,
    /// Seconds an agent may hold a task before it is handed out again.
    #[arg(long, value_name = "SEC", default_value_t = DEFAULT_LEASE_SECS)]
    pub lease: u64,
    /// Attempts a task gets (interrupt, abort, abnormal, expired lease)
    /// before its cells are marked abort.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_ATTEMPTS)]
    pub max_attempts: u32,
    /// Boards per task (each across all of the job's commits).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_BOARDS_PER_TASK)]
    pub boards_per_task: usize,
    /// Most simultaneous HTTP connections.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    pub max_connections: usize,
    /// Durability: full (a result or job is fsynced before it is answered,
    /// so it survives a power cut) or normal (nothing waits for the disk:
    /// survives a crash of the controller, not of the machine).
    #[arg(long, value_enum, default_value = "full")]
    pub sync: SyncMode,
    /// File holding a token that `POST /api/jobs` must present as
    /// `Authorization: Bearer <token>`.
    #[arg(long, value_name = "FILE")]
    pub submit_token_file: Option<PathBuf>,
    /// Log filter (error, warn, info, debug, trace, or tracing directives);
    /// RUST_LOG wins when set.
    #[arg(long, value_name = "FILTER", default_value = "info")]
    pub log: String,
    /// Log JSON lines instead of text.
    #[arg(long)]
    pub log_json: bool,
}

/// Where a client finds the controller.
#[derive(Args, Debug, Clone)]
pub struct ControllerArgs {
    /// The controller's base URL.
    #[arg(long, value_name = "URL", env = "BBOT_CONTROLLER", default_value = DEFAULT_CONTROLLER)]
    pub controller: String,
    /// File with the controller's submit token.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
}

/// How to wait for a job.
#[derive(Args, Debug, Clone)]
pub struct WaitArgs {
    /// Wait until the job is finished, then print its table.
    #[arg(long)]
    pub wait: bool,
    /// Seconds between looks while waiting.
    #[arg(long, value_name = "SEC", default_value_t = 2.0)]
    pub poll: f64,
    /// Give up waiting after this many seconds (0: never).
    #[arg(long, value_name = "SEC", default_value_t = 0)]
    pub timeout: u64,
}

/// `submit` options.
#[derive(Args, Debug, Clone)]
pub struct SubmitArgs {
    /// Controller.
    #[command(flatten)]
    pub controller: ControllerArgs,
    /// Git URL of the source (without #ref).
    #[arg(long, value_name = "URL")]
    pub repository: String,
    /// Branch, tag or ref to build (default: the remote's head).
    #[arg(long = "ref", value_name = "REF")]
    pub reference: Option<String>,
    /// Commit to build (repeatable, oldest first); none: the ref's head.
    #[arg(long = "commit", value_name = "HASH")]
    pub commits: Vec<String>,
    /// Board as TARGET:ARCH or "TARGET ARCH" (repeatable).
    #[arg(long = "board", value_name = "TARGET:ARCH", required = true)]
    pub boards: Vec<String>,
    /// buildman setting KEY=VALUE (repeatable).
    #[arg(long = "setting", value_name = "KEY=VALUE")]
    pub settings: Vec<String>,
    /// Glob the machine name must match, e.g. 'x86_64-debian_12-*'.
    #[arg(long, value_name = "GLOB")]
    pub machine: String,
    /// Package name in task manifests (default: the repository's name).
    #[arg(long)]
    pub name: Option<String>,
    /// Package version in task manifests (default 0).
    #[arg(long = "package-version", value_name = "VERSION")]
    pub version: Option<String>,
    /// Target triplet in task manifests (default x86_64-linux-gnu).
    #[arg(long)]
    pub target: Option<String>,
    /// Boards per task (default: the controller's).
    #[arg(long, value_name = "N")]
    pub boards_per_task: Option<usize>,
    /// Attempts per task (default: the controller's).
    #[arg(long, value_name = "N")]
    pub max_attempts: Option<u32>,
    /// Waiting.
    #[command(flatten)]
    pub wait: WaitArgs,
}

/// `status` options.
#[derive(Args, Debug, Clone)]
pub struct StatusArgs {
    /// Controller.
    #[command(flatten)]
    pub controller: ControllerArgs,
    /// The job; without it, one line per job.
    #[arg(value_name = "JOB")]
    pub job: Option<i64>,
    /// Waiting.
    #[command(flatten)]
    pub wait: WaitArgs,
}
