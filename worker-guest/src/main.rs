//! `worker-guest`: runs inside the build VM. This binary is a thin command
//! line over the `worker_guest` library; see its documentation.

use std::io::BufReader;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use worker_guest::engine::HEARTBEAT_INTERVAL;
use worker_guest::process::{kill_group_on_signals, ProcessGroup};
use worker_guest::protocol::ResponseWriter;
use worker_guest::settings_file::BuildmanSettings;
use worker_guest::worker::{default_nthreads, resolve_work_dir, run_worker, WorkerOptions};

/// Command line of the guest side. `--worker` is accepted as a flag (not
/// only as the `worker` subcommand) because buildman's boss starts its
/// workers as `main.py --worker -g DIR [-D]`.
#[derive(Parser, Debug)]
#[command(
    name = "worker-guest",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    /// Run as a buildman-compatible build worker on stdin/stdout.
    #[arg(long)]
    worker: bool,

    #[command(flatten)]
    worker_args: WorkerArgs,

    #[command(subcommand)]
    command: Option<Mode>,
}

/// What the guest does (the task and bootstrap modes come later).
#[derive(Subcommand, Debug)]
enum Mode {
    /// Run as a buildman-compatible build worker on stdin/stdout.
    Worker(WorkerArgs),
}

/// Options of the worker mode, named as buildman names them.
#[derive(Args, Debug, Clone)]
struct WorkerArgs {
    /// Directory holding the source repository to build (buildman's -g).
    #[arg(short = 'g', long = "git", value_name = "DIR", default_value = ".")]
    git: PathBuf,

    /// Debug output on stderr.
    #[arg(short = 'D', long)]
    debug: bool,

    /// buildman-style settings file with [toolchain] and [toolchain-prefix]
    /// sections (default: ~/.buildman).
    #[arg(short = 'G', long = "config-file", value_name = "FILE")]
    config_file: Option<PathBuf>,

    /// Build threads to offer (default: the number of CPUs).
    #[arg(short = 'T', long)]
    threads: Option<usize>,

    /// Seconds between heartbeats while a board builds.
    #[arg(long, value_name = "SECS", default_value_t = HEARTBEAT_INTERVAL.as_secs_f64())]
    heartbeat_interval: f64,
}

fn init_logging(debug: bool) {
    let default = if debug { "debug" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
}

fn worker(args: WorkerArgs) -> anyhow::Result<ExitCode> {
    // Lead our own process group first, so every make we start joins it.
    let group = ProcessGroup::become_leader();
    init_logging(args.debug);
    if !group.is_leader() {
        tracing::warn!("not a process group leader: only our own children will be killed");
    }
    kill_group_on_signals(group).context("setting up signal handling")?;
    let settings_path = args
        .config_file
        .clone()
        .or_else(BuildmanSettings::default_path);
    let settings_file = match &settings_path {
        Some(p) => BuildmanSettings::load(p)?,
        None => BuildmanSettings::default(),
    };
    if !(args.heartbeat_interval > 0.0 && args.heartbeat_interval.is_finite()) {
        anyhow::bail!("--heartbeat-interval must be a positive number of seconds");
    }
    let opts = WorkerOptions {
        work_dir: resolve_work_dir(&args.git),
        nthreads: args.threads.unwrap_or_else(default_nthreads).max(1),
        settings_file,
        heartbeat_interval: Duration::from_secs_f64(args.heartbeat_interval),
    };
    let out = ResponseWriter::new(Box::new(std::io::stdout()));
    let input = BufReader::new(std::io::stdin());
    // The boss is gone: kill every make and compiler at once.
    let on_eof = Box::new(move || group.kill_all_and_exit());
    let code = run_worker(opts, input, out, on_eof, &|| group.kill_others());
    Ok(ExitCode::from(code as u8))
}

fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Some(Mode::Worker(args)) => worker(args),
        None if cli.worker => worker(cli.worker_args),
        None => {
            use clap::CommandFactory;
            Cli::command().print_help()?;
            Ok(ExitCode::from(2))
        }
    }
}
