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
use worker_guest::tftp_client::{self, TftpClient};
use worker_guest::worker::{default_nthreads, resolve_work_dir, run_worker, WorkerOptions};
use worker_guest::{bootstrap, git, locate, task};

/// A positive, finite number of seconds from the command line.
fn seconds(value: f64, option: &str) -> anyhow::Result<Duration> {
    if value > 0.0 && value.is_finite() {
        Ok(Duration::from_secs_f64(value))
    } else {
        anyhow::bail!("{option} must be a positive number of seconds")
    }
}

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

/// What the guest does.
#[derive(Subcommand, Debug)]
enum Mode {
    /// Run as a buildman-compatible build worker on stdin/stdout.
    Worker(WorkerArgs),
    /// Fetch the task over TFTP, build it, upload the result (build VM).
    Task(TaskArgs),
    /// Install the toolchain's worker-guest and upload the bootstrap
    /// manifest (bootstrap VM).
    Bootstrap(BootstrapArgs),
}

/// How to reach the agent's TFTP server (both VM modes).
#[derive(Args, Debug, Clone)]
struct TftpArgs {
    /// The agent's TFTP server (default: fw_cfg opt/bbot/tftp, then
    /// bbot.tftp= on the kernel command line, then the default gateway
    /// port 69).
    #[arg(long, value_name = "HOST:PORT")]
    tftp: Option<String>,

    /// Seconds to wait for each TFTP answer before resending.
    #[arg(long, value_name = "SECS", default_value_t = tftp_client::DEFAULT_TIMEOUT.as_secs_f64())]
    tftp_timeout: f64,

    /// Resends of a TFTP packet before the server counts as gone.
    #[arg(long, value_name = "N", default_value_t = tftp_client::DEFAULT_RETRIES)]
    tftp_retries: u32,

    /// TFTP block size to ask for (512 asks for none; larger ones mean
    /// fewer round trips but IP fragments beyond the link's MTU).
    #[arg(long, value_name = "BYTES", default_value_t = tftp_client::DEFAULT_BLKSIZE)]
    tftp_blksize: u16,

    /// Blocks per round trip in downloads and uploads (RFC 7440
    /// windowsize; 1 asks for none, for servers that mishandle it).
    #[arg(long, value_name = "BLOCKS", default_value_t = tftp_client::DEFAULT_WINDOWSIZE,
          value_parser = clap::value_parser!(u16).range(1..=64))]
    tftp_windowsize: u16,

    /// Debug output on stderr.
    #[arg(short = 'D', long)]
    debug: bool,
}

/// Options of the task mode.
#[derive(Args, Debug, Clone)]
struct TaskArgs {
    #[command(flatten)]
    tftp: TftpArgs,

    /// Directory the source is cloned into (must not exist or be empty).
    #[arg(long, value_name = "DIR", default_value = "/work")]
    work_dir: PathBuf,

    /// Build threads (default: the number of CPUs).
    #[arg(short = 'T', long)]
    threads: Option<usize>,

    /// buildman-style settings file for toolchains and make flags
    /// (default: ~/.buildman if it exists; without one, a compiler is
    /// found on PATH for each board architecture).
    #[arg(short = 'G', long = "config-file", value_name = "FILE")]
    config_file: Option<PathBuf>,

    /// Seconds each local git command (checkout, worktree set-up) may
    /// take.
    #[arg(long, value_name = "SECS", default_value_t = git::LOCAL_TIMEOUT.as_secs_f64())]
    git_timeout: f64,

    /// Seconds `git clone` and `git fetch` of the task's repository may
    /// take.
    #[arg(long, value_name = "SECS", default_value_t = git::NETWORK_TIMEOUT.as_secs_f64())]
    clone_timeout: f64,

    /// git:// URL of the agent's mirror of the task's repository, to
    /// fetch just the task's commits from (default: what the agent names
    /// in fw_cfg opt/bbot/source or bbot.source= on the kernel command
    /// line; without either, the task's repository-url is cloned).
    #[arg(long, value_name = "URL")]
    source: Option<String>,
}

/// Options of the bootstrap mode.
#[derive(Args, Debug, Clone)]
struct BootstrapArgs {
    #[command(flatten)]
    tftp: TftpArgs,

    /// Where the served worker-guest is installed (default: this
    /// executable).
    #[arg(long, value_name = "PATH")]
    install: Option<PathBuf>,
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

    /// Seconds each git command (checkout, worktree set-up) may take
    /// before its process group is killed and the step fails.
    #[arg(long, value_name = "SECS", default_value_t = git::LOCAL_TIMEOUT.as_secs_f64())]
    git_timeout: f64,
}

fn init_logging(debug: bool, quiet_default: &str) {
    let default = if debug { "debug" } else { quiet_default };
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
    init_logging(args.debug, "warn");
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
    let opts = WorkerOptions {
        work_dir: resolve_work_dir(&args.git),
        nthreads: args.threads.unwrap_or_else(default_nthreads).max(1),
        settings_file,
        heartbeat_interval: seconds(args.heartbeat_interval, "--heartbeat-interval")?,
        git_timeout: seconds(args.git_timeout, "--git-timeout")?,
    };
    let out = ResponseWriter::new(Box::new(std::io::stdout()));
    let input = BufReader::new(std::io::stdin());
    // The boss is gone: kill every make and compiler at once.
    let on_eof = Box::new(move || group.kill_all_and_exit());
    let code = run_worker(opts, input, out, on_eof, &|| group.kill_others());
    Ok(ExitCode::from(code as u8))
}

/// The TFTP client for the agent's server: `--tftp`, or wherever the
/// agent said (see `locate`).
fn tftp_client(args: &TftpArgs) -> anyhow::Result<TftpClient> {
    let server = match &args.tftp {
        Some(value) => locate::parse_address(value, "--tftp")?,
        None => {
            let (addr, source) = locate::locate(&locate::Sources::default())
                .context("finding the agent's TFTP server")?;
            tracing::info!("TFTP server {addr} (from {source:?})");
            addr
        }
    };
    if !(args.tftp_timeout > 0.0 && args.tftp_timeout.is_finite()) {
        anyhow::bail!("--tftp-timeout must be a positive number of seconds");
    }
    Ok(TftpClient::new(server)
        .with_blksize(args.tftp_blksize)
        .with_windowsize(args.tftp_windowsize)
        .with_timeout(
            Duration::from_secs_f64(args.tftp_timeout),
            args.tftp_retries,
        ))
}

/// The settings file of the task mode: `-G FILE` (which must exist), else
/// `~/.buildman` when it exists, else none (toolchains found on PATH).
fn task_settings(explicit: Option<&std::path::Path>) -> anyhow::Result<Option<BuildmanSettings>> {
    if let Some(p) = explicit.filter(|p| !p.exists()) {
        anyhow::bail!("settings file {} does not exist", p.display());
    }
    let path = explicit
        .map(std::path::Path::to_path_buf)
        .or_else(|| BuildmanSettings::default_path().filter(|p| p.exists()));
    match path {
        Some(p) => {
            tracing::info!("toolchains and make flags from {}", p.display());
            Ok(Some(
                BuildmanSettings::load(&p).context("reading the settings file")?,
            ))
        }
        None => Ok(None),
    }
}

fn task_mode(args: TaskArgs) -> anyhow::Result<ExitCode> {
    let group = ProcessGroup::become_leader();
    init_logging(args.tftp.debug, "info");
    kill_group_on_signals(group).context("setting up signal handling")?;
    let client = tftp_client(&args.tftp)?;
    let git_timeouts = worker_guest::repository::CloneTimeouts {
        network: seconds(args.clone_timeout, "--clone-timeout")?,
        local: seconds(args.git_timeout, "--git-timeout")?,
    };
    let settings_file = match task_settings(args.config_file.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            // Still a result for the agent: the task failed, and why.
            let error = format!("{e:#}");
            tracing::error!("{error}");
            task::report_failure(&client, &error).context("no result uploaded")?;
            return Ok(ExitCode::SUCCESS);
        }
    };
    let source = match args.source {
        Some(s) => Some(s),
        // Only where the agent could have said so: with an explicit
        // --tftp (a test on a host) there is no fw_cfg to read.
        None if args.tftp.tftp.is_none() => worker_guest::locate::locate_source_here()
            .context("finding the agent's source mirror")?,
        None => None,
    };
    if let Some(s) = &source {
        tracing::info!("source: the agent's mirror {s}");
    }
    let opts = task::TaskOptions {
        source,
        work_dir: args.work_dir,
        nthreads: args.threads.unwrap_or_else(default_nthreads).max(1),
        settings_file,
        search_path: std::env::var_os("PATH").unwrap_or_default(),
        git_timeouts,
    };
    let result = task::run_task(&client, &opts).context("task failed with no result uploaded")?;
    tracing::info!("result uploaded: {}", result.status);
    Ok(ExitCode::SUCCESS)
}

fn bootstrap_mode(args: BootstrapArgs) -> anyhow::Result<ExitCode> {
    init_logging(args.tftp.debug, "info");
    let client = tftp_client(&args.tftp)?;
    let install = match args.install {
        Some(p) => p,
        None => std::env::current_exe().context("finding this executable")?,
    };
    let search_path = std::env::var_os("PATH").unwrap_or_default();
    let report =
        bootstrap::run_bootstrap(&client, &install, &search_path).context("bootstrap failed")?;
    tracing::info!(
        "bootstrap manifest uploaded ({} worker-guest)",
        if report.installed {
            "installed the served"
        } else {
            "kept the current"
        }
    );
    Ok(ExitCode::SUCCESS)
}

fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Some(Mode::Worker(args)) => worker(args),
        Some(Mode::Task(args)) => task_mode(args),
        Some(Mode::Bootstrap(args)) => bootstrap_mode(args),
        None if cli.worker => worker(cli.worker_args),
        None => {
            use clap::CommandFactory;
            Cli::command().print_help()?;
            Ok(ExitCode::from(2))
        }
    }
}
