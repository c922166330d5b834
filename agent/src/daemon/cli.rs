//! Command line, with bbot-agent's option names so that admins' unit files and
//! habits carry over, plus `--state` for the result spool.

use std::path::PathBuf;

use clap::Parser;

use crate::control::controller_url::ControllerUrl;

/// A path option made absolute at parse time (against the working
/// directory at start): paths end up in QEMU's arguments, in sockets' names
/// and in other processes' working directories, where a relative path
/// would mean something else or nothing.
fn absolute_path(s: &str) -> Result<PathBuf, String> {
    if s.is_empty() {
        return Err("empty path".into());
    }
    std::path::absolute(s).map_err(|e| format!("cannot make '{s}' absolute: {e}"))
}

/// Longest duration option, in seconds (ten years): far beyond any real
/// timeout, and far from overflowing when added to a clock reading.
pub const MAX_SECONDS: u64 = 10 * 365 * 24 * 3600;

/// A `--toolchain-name`: it becomes part of directory names (the TFTP
/// tree, the state directory), machine names and snapshot names, so it is
/// a plain name: 1..=64 of `A-Z a-z 0-9 . _ + -`, not starting with `.`
/// or `-` (so never `.` or `..`, never an option).
fn toolchain_name(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > 64 {
        return Err("must be 1 to 64 characters".into());
    }
    if s.starts_with(['.', '-']) {
        return Err("must not start with '.' or '-'".into());
    }
    match s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-')))
    {
        Some(c) => Err(format!(
            "'{}' is not allowed (only letters, digits, '.', '_', '+' and '-')",
            c.escape_debug()
        )),
        None => Ok(s.to_string()),
    }
}

/// `--systemd-instance`: `<toolchain-name>-<instance>`, split at the last
/// dash.
fn unit_instance(s: &str) -> Result<(String, u16), String> {
    let Some((tc, n)) = s.rsplit_once('-') else {
        return Err("expected <toolchain-name>-<instance>, e.g. gcc-1".into());
    };
    let n: u16 = match n.parse() {
        Ok(n) if (1..=99).contains(&n) => n,
        _ => return Err(format!("'{n}' is not an instance number 1..99")),
    };
    Ok((toolchain_name(tc)?, n))
}

/// A duration option in seconds, `min..=MAX_SECONDS`.
fn seconds(min: u64) -> clap::builder::RangedU64ValueParser<u64> {
    clap::value_parser!(u64).range(min..=MAX_SECONDS)
}

/// `bbot-agent [options] [[F]DCBA=]<url>...`
#[derive(Parser, Debug, Clone)]
#[command(
    name = "bbot-agent",
    version,
    about = "Build-farm node agent: polls controllers and runs each task in a throw-away VM booted from a btrfs snapshot"
)]
pub struct Cli {
    /// Directory (on btrfs) holding the machine volumes.
    #[arg(long, value_name = "DIR", default_value = "/build/machines", value_parser = absolute_path)]
    pub machines: PathBuf,
    /// Directory served to guests over TFTP.
    #[arg(long, value_name = "DIR", default_value = "/build/tftp", value_parser = absolute_path)]
    pub tftp: PathBuf,
    /// Directory for state that must survive restarts (results awaiting upload).
    /// Default: /var/lib/bbot-agent/<toolchain-name>.
    #[arg(long, value_name = "DIR", value_parser = absolute_path)]
    pub state: Option<PathBuf>,
    /// Toolchain name: bootstrapped machines are `<name>-<toolchain-name>`.
    #[arg(long, value_name = "STR", default_value = "default", value_parser = toolchain_name)]
    pub toolchain_name: String,
    /// Toolchain instance number on this host (1..99).
    #[arg(long, value_name = "NUM", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=99))]
    pub toolchain_num: u16,
    /// This process's instance number among the toolchain's agents on this
    /// host (1..99). Each instance runs at most one VM; every per-process
    /// name (snapshots, TFTP and run directories, taps, namespaces,
    /// cgroups, the spool) carries it.
    #[arg(long, value_name = "NUM", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=99))]
    pub instance: u16,
    /// How many instances run tasks (0: no limit). Instances numbered
    /// above it are priority monitors: they take only tasks that may
    /// interrupt running ones (controller priority C or D).
    #[arg(long, value_name = "NUM", default_value_t = 0,
          value_parser = clap::value_parser!(u16).range(0..=99))]
    pub instance_max: u16,
    /// The toolchain lock, held while enumerating and bootstrapping
    /// (default: `.bbot-agent-<toolchain-name>.lock` in --machines).
    #[arg(long, value_name = "FILE", value_parser = absolute_path)]
    pub toolchain_lock: Option<PathBuf>,
    /// Toolchain id; when given, a change re-bootstraps every machine.
    #[arg(long, value_name = "STR")]
    pub toolchain_id: Option<String>,
    /// Toolchain version reported to controllers (default: the agent's version).
    #[arg(long, value_name = "STR")]
    pub toolchain_ver: Option<String>,
    /// Number of CPUs given to each VM (1..1024).
    #[arg(long, value_name = "NUM", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub cpu: u16,
    /// RAM given to each VM, in KiB (64 MiB .. 1 TiB).
    #[arg(long, value_name = "NUM", default_value_t = 1024 * 1024,
          value_parser = clap::value_parser!(u64).range(64 * 1024..=1024 * 1024 * 1024))]
    pub ram: u64,
    /// Attach each VM through a tap device of its own to this host bridge
    /// (which needs DHCP for the guests and an IPv4 address, where the
    /// TFTP server listens; the agent runs as root) instead of QEMU
    /// user-mode networking (the default, no privileges: guests reach the
    /// host as 10.0.2.2).
    #[arg(long, value_name = "IFACE")]
    pub bridge: Option<String>,
    /// The unprivileged user QEMU runs as (with the `kvm` group): QEMU
    /// never runs as root.
    #[arg(long, value_name = "USER", default_value = "bbot-qemu")]
    pub qemu_user: String,
    /// Make the VMs' cgroups inside the agent's own cgroup, which the
    /// service manager delegated to it (systemd's `Delegate=yes`, as in
    /// systemd/bbot-agent@.service); on cgroup v2 the agent moves itself
    /// into `<own>/agent` first. Without it they go under `bbot-agent` at
    /// the top of each cgroup hierarchy.
    #[arg(long)]
    pub cgroup_delegated: bool,
    /// QEMU binary that runs the guests.
    #[arg(long, value_name = "PATH", default_value = "qemu-system-x86_64")]
    pub qemu: PathBuf,
    /// How guests' CPUs are provided: kvm (hardware) or tcg (emulation, slow).
    #[arg(long, value_name = "kvm|tcg", default_value = "kvm")]
    pub accel: crate::vm::lifecycle::Accel,
    /// Seconds a bootstrapping guest has to make its first TFTP request.
    #[arg(long, value_name = "SEC", default_value_t = 300, value_parser = seconds(1))]
    pub bootstrap_startup: u64,
    /// Seconds a building guest has to make its first TFTP request.
    #[arg(long, value_name = "SEC", default_value_t = 60, value_parser = seconds(1))]
    pub build_startup: u64,
    /// Seconds a guest has to power off after uploading its bootstrap manifest.
    #[arg(long, value_name = "SEC", default_value_t = 120, value_parser = seconds(1))]
    pub bootstrap_shutdown: u64,
    /// Seconds a guest that missed a deadline stays suspended for
    /// investigation before it is forced down and its snapshot deleted.
    #[arg(long, value_name = "SEC", default_value_t = 600, value_parser = seconds(0))]
    pub suspend_time: u64,
    /// Bootstrap timeout in seconds.
    #[arg(long, value_name = "SEC", default_value_t = 3600, value_parser = seconds(1))]
    pub bootstrap_timeout: u64,
    /// Build timeout in seconds (keep well below the controller's 3 hours).
    #[arg(long, value_name = "SEC", default_value_t = 5400, value_parser = seconds(1))]
    pub build_timeout: u64,
    /// Controller request timeout in seconds (a whole exchange).
    #[arg(long, value_name = "SEC", default_value_t = 300, value_parser = seconds(1))]
    pub request_timeout: u64,
    /// Seconds to establish a connection to a controller, so that an
    /// unreachable one costs this, not the request timeout.
    #[arg(long, value_name = "SEC", default_value_t = 10, value_parser = seconds(1))]
    pub connect_timeout: u64,
    /// Times a controller request is retried after a transient failure
    /// (no connection, timeout, 408, 429, 5xx), pausing 1, 2, 4 ... s
    /// (0..20).
    #[arg(long, value_name = "NUM", default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(0..=20))]
    pub request_retries: u32,
    /// PEM RSA private key that authenticates this agent to controllers
    /// (bbot's `--auth-key`: its fingerprint in task requests, challenges
    /// signed in results).
    #[arg(long, value_name = "FILE", value_parser = absolute_path)]
    pub auth_key: Option<PathBuf>,
    /// Trust repository certificate fingerprint (repeatable); replaces the task's list.
    #[arg(long, value_name = "FP")]
    pub trust: Vec<String>,
    /// Verbosity level 0 (errors and warnings) .. 6.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u8).range(0..=6))]
    pub verbose: u8,
    /// Run as a systemd daemon: journald priority prefixes on log lines.
    #[arg(long)]
    pub systemd_daemon: bool,
    /// The template unit's instance string `<toolchain-name>-<instance>`
    /// (`bbot-agent@gcc-2`): sets both (the number is always last, so a
    /// toolchain name may contain dashes).
    #[arg(long, value_name = "TC-N", value_parser = unit_instance,
          conflicts_with_all = ["toolchain_name", "instance"])]
    pub systemd_instance: Option<(String, u16)>,
    /// Print the machine headers that would be offered and exit.
    #[arg(long)]
    pub dump_machines: bool,
    /// Print the task received and exit.
    #[arg(long)]
    pub dump_task: bool,
    /// Print the result instead of uploading it and exit.
    #[arg(long)]
    pub dump_result: bool,
    /// Pretend every bootstrap succeeded (no VM).
    #[arg(long)]
    pub fake_bootstrap: bool,
    /// Do not build: report an `abort` result with no operations (no VM).
    #[arg(long)]
    pub fake_build: bool,
    /// What a fake build reports (testing aid: `success` makes up one
    /// successful operation per board and commit).
    #[arg(
        long,
        value_name = "abort|success",
        default_value = "abort",
        hide = true,
        requires = "fake_build"
    )]
    pub fake_build_result: crate::vm::fake::FakeBuildResult,
    /// Use this machine header manifest (`-` for stdin) instead of enumerating.
    #[arg(long, value_name = "FILE")]
    pub fake_machine: Option<PathBuf>,
    /// Use this task response or task manifest (`-` for stdin) instead of asking controllers.
    #[arg(long, value_name = "FILE")]
    pub fake_request: Option<PathBuf>,
    /// How long a fake build takes, in seconds (testing aid).
    #[arg(long, value_name = "SEC", default_value_t = 0, hide = true, value_parser = seconds(0))]
    pub fake_build_duration: u64,
    /// Seconds without progress after which the systemd watchdog is left to
    /// fire (default: the request timeout plus a minute; testing aid).
    #[arg(long, value_name = "SEC", hide = true, value_parser = seconds(1))]
    pub watchdog_stall: Option<u64>,
    /// Seconds to sleep when no controller has a task.
    #[arg(long, value_name = "SEC", default_value_t = 60, hide = true, value_parser = seconds(0))]
    pub idle_sleep: u64,
    /// Controller URLs, optionally prefixed with `[F]DCBA=` priority.
    #[arg(value_name = "URL")]
    pub controllers: Vec<ControllerUrl>,
}

impl Cli {
    /// Parses the command line (or fails as clap does) and applies
    /// `--systemd-instance`.
    pub fn parse_args() -> Result<Cli, clap::Error> {
        Self::try_parse().map(Self::with_unit_instance)
    }

    /// Applies `--systemd-instance` to the toolchain name and instance.
    pub fn with_unit_instance(mut self) -> Self {
        if let Some((tc, n)) = self.systemd_instance.clone() {
            self.toolchain_name = tc;
            self.instance = n;
        }
        self
    }

    /// The toolchain's state directory, shared by its instances (the
    /// source mirrors live there).
    pub fn state_dir(&self) -> PathBuf {
        self.state
            .clone()
            .unwrap_or_else(|| PathBuf::from("/var/lib/bbot-agent").join(&self.toolchain_name))
    }

    /// This instance's own state (`<state>/instance-<N>`): its lock, spool,
    /// task in flight, run directories and console logs.
    pub fn instance_dir(&self) -> PathBuf {
        self.state_dir().join(format!("instance-{}", self.instance))
    }

    /// The toolchain lock's file.
    pub fn toolchain_lock_file(&self) -> PathBuf {
        self.toolchain_lock.clone().unwrap_or_else(|| {
            self.machines
                .join(format!(".bbot-agent-{}.lock", self.toolchain_name))
        })
    }

    /// The toolchain version reported to controllers.
    pub fn toolchain_version(&self) -> String {
        self.toolchain_ver
            .clone()
            .unwrap_or_else(|| crate::base::version::AGENT_VERSION.to_string())
    }

    /// Tells whether the command line asks for work that needs no controller.
    pub fn needs_controller(&self) -> bool {
        !(self.dump_machines || self.fake_request.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_options_become_absolute() {
        let cli = Cli::try_parse_from([
            "bbot-agent",
            "--state",
            "agent",
            "--tftp",
            "t",
            "--machines",
            "/m",
        ])
        .unwrap();
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(cli.state_dir(), cwd.join("agent"));
        assert_eq!(cli.instance_dir(), cwd.join("agent/instance-1"));
        assert_eq!(
            cli.toolchain_lock_file(),
            PathBuf::from("/m/.bbot-agent-default.lock")
        );
        assert_eq!(cli.tftp, cwd.join("t"));
        assert_eq!(cli.machines, PathBuf::from("/m"));
        assert!(Cli::try_parse_from(["bbot-agent", "--state", ""]).is_err());
        assert_eq!(cli.connect_timeout, 10);
        assert_eq!(cli.request_retries, 4);
    }

    fn refused(args: &[&str]) -> String {
        let mut v = vec!["bbot-agent"];
        v.extend_from_slice(args);
        match Cli::try_parse_from(v) {
            Ok(_) => panic!("{args:?} was accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn toolchain_name_is_a_plain_name() {
        for bad in [
            "",
            "..",
            ".",
            "a/b",
            "../x",
            "-x",
            "a b",
            "a\nb",
            "x\u{feff}",
            &"n".repeat(65),
        ] {
            let e = refused(&[&format!("--toolchain-name={bad}")]);
            assert!(e.contains("--toolchain-name"), "{bad:?}: {e}");
        }
        for good in ["default", "gcc-12.2", "u_boot+arm", &"n".repeat(64)] {
            let cli = Cli::try_parse_from(["bbot-agent", "--toolchain-name", good]);
            assert_eq!(cli.map(|c| c.toolchain_name).ok().as_deref(), Some(good));
        }
    }

    #[test]
    fn a_unit_instance_names_toolchain_and_instance() {
        let cli = Cli::try_parse_from(["bbot-agent", "--systemd-instance", "gcc-12-3"])
            .unwrap()
            .with_unit_instance();
        assert_eq!((cli.toolchain_name.as_str(), cli.instance), ("gcc-12", 3));
        for bad in ["gcc", "gcc-0", "gcc-100", "-1", "../x-1", "gcc-x"] {
            let e = refused(&[&format!("--systemd-instance={bad}")]);
            assert!(e.contains("--systemd-instance"), "{bad}: {e}");
        }
        refused(&["--systemd-instance", "gcc-1", "--instance", "2"]);
    }

    #[test]
    fn numbers_and_durations_have_ranges() {
        for args in [
            &["--toolchain-num", "0"][..],
            &["--toolchain-num", "100"],
            &["--instance", "0"],
            &["--instance", "100"],
            &["--instance-max", "100"],
            &["--cpu", "0"],
            &["--ram", "1"],
            &["--verbose", "7"],
            &["--request-retries", "21"],
            &["--build-timeout", "0"],
            &["--build-timeout", "18446744073709551615"],
            &["--request-timeout", "315360001"],
            &["--connect-timeout", "0"],
            &["--watchdog-stall", "99999999999"],
        ] {
            let e = refused(args);
            assert!(e.contains(args[0]), "{args:?}: {e}");
        }
        let cli = Cli::try_parse_from([
            "bbot-agent",
            "--build-timeout",
            "315360000",
            "--suspend-time",
            "0",
            "--toolchain-num",
            "99",
        ])
        .expect("limits themselves are accepted");
        assert_eq!(cli.build_timeout, MAX_SECONDS);
    }
}
