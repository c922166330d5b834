//! `bbot-agent`: the build host's agent. Parses the command line, wires the
//! library's modules together and maps the outcome to an exit status (0 for a
//! clean stop or a finished one-shot mode, 1 for errors).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use bbot_agent::control::auth::AgentKey;
use bbot_agent::control::controller::{Client, ClientConfig};
use bbot_agent::control::inflight::InFlight;
use bbot_agent::control::spool::Spool;
use bbot_agent::control::task::TaskConfig;
use bbot_agent::control::work_loop::{Agent, Exit, LoopConfig};
use bbot_agent::daemon::cli::Cli;
use bbot_agent::daemon::notify::Notifier;
use bbot_agent::daemon::{instance, logging, signals};
use bbot_agent::host::machine_source::{FakeMachineFile, MachineSource};
use bbot_agent::host::machines::{Machines, MachinesConfig};
use bbot_agent::vm::cgroup;
use bbot_agent::vm::confine::QemuUser;
use bbot_agent::vm::fake::FakeRunner;
use bbot_agent::vm::mirror::MirrorConfig;
use bbot_agent::vm::qemu_runner::{QemuConfig, QemuRunner, VmConfig};

fn main() -> ExitCode {
    let cli = match Cli::parse_args() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    if cli.controllers.is_empty() && cli.needs_controller() {
        eprintln!("error: controller url expected");
        eprintln!("  info: run 'bbot-agent --help' for more information");
        return ExitCode::from(1);
    }
    if let Err(e) = logging::init(cli.verbose, cli.systemd_daemon) {
        eprintln!("error: {e}");
        return ExitCode::from(1);
    }
    match run(&cli) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::from(1)
        }
    }
}

/// The host name reported as `agent` in task requests.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

fn run(cli: &Cli) -> anyhow::Result<Exit> {
    let signals = signals::install().context("cannot install signal handlers")?;
    let notifier = Notifier::from_env();
    // The longest step that polls nothing is an upload while stopping
    // (bounded by the request timeout); a minute on top for the rest.
    let budget = Duration::from_secs(cli.request_timeout.saturating_add(60));
    let stall = cli.watchdog_stall.map_or(budget, Duration::from_secs);
    notifier.start(stall, signals.stop_token().flag(), budget);
    let role = if cli.instance_max > 0 && cli.instance > cli.instance_max {
        " (priority monitor)"
    } else {
        ""
    };
    tracing::info!(
        "bbot-agent {} starting (toolchain {} #{}, instance {}{role})",
        bbot_agent::base::version::AGENT_VERSION,
        cli.toolchain_name,
        cli.toolchain_num,
        cli.instance
    );
    let dumping = cli.dump_machines || cli.dump_task || cli.dump_result;
    // This instance's own directory, locked for the process's life: a
    // second process with the same instance number refuses to start, and
    // what this directory holds (spool, run directories, TFTP directory,
    // VM names) is ours alone. `--dump-machines` runs no task VM and may
    // run beside the service without one; it takes the toolchain and
    // machine locks like everyone.
    let _instance_lock = if cli.dump_machines {
        None
    } else {
        Some(instance::claim(
            &cli.state_dir(),
            &cli.instance_dir(),
            cli.instance,
        )?)
    };
    let state = cli.instance_dir();
    let vm = VmConfig {
        cpu: cli.cpu,
        ram_kib: cli.ram,
        bridge: cli.bridge.clone(),
        tftp: cli.tftp.clone(),
        toolchain_name: cli.toolchain_name.clone(),
        toolchain_num: cli.toolchain_num,
        instance: cli.instance,
    };
    tracing::debug!("VM settings: {vm:?}");
    // Real guests unless both phases are faked (then QEMU and KVM are not
    // needed at all).
    let runner = if cli.fake_bootstrap && cli.fake_build {
        FakeRunner::all_fake(Duration::from_secs(cli.fake_build_duration))
    } else {
        // Before the agent starts any process: under a delegated v2 group
        // it moves itself into a leaf first.
        let placement = if cli.cgroup_delegated {
            cgroup::Placement::Delegated
        } else {
            cgroup::Placement::Shared
        };
        let cgroups = cgroup::Hierarchy::detect(placement).context(if cli.cgroup_delegated {
            "--cgroup-delegated"
        } else {
            "the VMs' cgroups"
        })?;
        let qemu = QemuRunner::new(QemuConfig {
            vm,
            qemu: cli.qemu.clone(),
            accel: cli.accel,
            bootstrap_startup: Duration::from_secs(cli.bootstrap_startup),
            build_startup: Duration::from_secs(cli.build_startup),
            bootstrap_shutdown: Duration::from_secs(cli.bootstrap_shutdown),
            suspend_time: Duration::from_secs(cli.suspend_time),
            run_root: state.join("run"),
            log_dir: state.join("logs"),
            mirrors: MirrorConfig::under(&cli.state_dir()),
            qemu_user: QemuUser::lookup(&cli.qemu_user).context("--qemu-user")?,
            cgroups,
        })
        .context("--accel kvm")?;
        if _instance_lock.is_some() {
            // Before anything else touches VMs: what a dead predecessor of
            // this instance left (QEMU, run directories, taps, the task's
            // TFTP directory).
            let removed = qemu.leftovers().clean();
            if removed > 0 {
                tracing::info!("removed {removed} leftover(s) of a dead agent's VMs");
            }
        }
        FakeRunner::new(
            cli.fake_bootstrap,
            cli.fake_build,
            Duration::from_secs(cli.fake_build_duration),
            Box::new(qemu),
        )
    }
    .with_build_result(cli.fake_build_result);
    let source = match &cli.fake_machine {
        Some(p) => {
            let file = FakeMachineFile {
                path: p.clone(),
                machines: cli.machines.clone(),
                toolchain_id: cli
                    .toolchain_id
                    .clone()
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| cli.toolchain_name.clone()),
            };
            let m = file.read()?;
            let again = file.rereadable().then_some(file);
            MachineSource::Fake(Box::new(m), again)
        }
        None => {
            let m = Machines::new(
                MachinesConfig {
                    machines: cli.machines.clone(),
                    toolchain_name: cli.toolchain_name.clone(),
                    toolchain_id: cli.toolchain_id.clone().filter(|s| !s.is_empty()),
                    toolchain_num: cli.toolchain_num,
                    instance: cli.instance,
                    toolchain_lock: cli.toolchain_lock_file(),
                    bootstrap_timeout: Duration::from_secs(cli.bootstrap_timeout),
                },
                &runner,
                signals.stop_token(),
            );
            m.check()?;
            m.clean_leftovers()?;
            MachineSource::Enumerate(m)
        }
    };
    let auth = match &cli.auth_key {
        Some(p) => Some(std::sync::Arc::new(
            AgentKey::load(p).context("--auth-key")?,
        )),
        None => None,
    };
    if let Some(k) = &auth {
        tracing::info!("authenticating with key {}", k.fingerprint());
    }
    let (spool, inflight) = if dumping {
        (None, None)
    } else {
        let dir = &state;
        let spool = Spool::open(dir).with_context(|| format!("state {}", dir.display()))?;
        let inflight = InFlight::open(dir).with_context(|| format!("state {}", dir.display()))?;
        // A task a dead predecessor was running becomes an interrupt
        // result, delivered with the spool in the first round.
        let recovered = inflight.recover(&spool, auth.as_deref());
        if recovered > 0 {
            tracing::warn!("{recovered} task(s) of a dead agent reported as interrupted");
        }
        (Some(spool), Some(inflight))
    };
    let client = Client::new(ClientConfig {
        connect_timeout: Duration::from_secs(cli.connect_timeout),
        request_timeout: Duration::from_secs(cli.request_timeout),
        retries: cli.request_retries,
    })?;
    let cfg = LoopConfig {
        controllers: cli.controllers.clone(),
        agent_name: host_name(),
        toolchain_name: cli.toolchain_name.clone(),
        toolchain_version: cli.toolchain_version(),
        task: TaskConfig {
            toolchain_name: cli.toolchain_name.clone(),
            instance: cli.instance,
            build_timeout: Duration::from_secs(cli.build_timeout),
            trust: cli.trust.clone(),
        },
        idle_sleep: Duration::from_secs(cli.idle_sleep),
        dump_machines: cli.dump_machines,
        dump_task: cli.dump_task,
        dump_result: cli.dump_result,
        fake_request: cli.fake_request.clone(),
        auth,
        instance: cli.instance,
        instance_max: cli.instance_max,
    };
    let mut agent = Agent::new(
        cfg,
        source,
        &runner,
        client,
        (spool, inflight),
        signals,
        Box::new(notifier.clone()),
    );
    let exit = agent.run()?;
    if exit == Exit::Stopped {
        tracing::info!("stopped");
    }
    notifier.stopping();
    Ok(exit)
}
