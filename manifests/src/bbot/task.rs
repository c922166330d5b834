//! The task and the request/response exchanged with a controller to get
//! one (PROTOCOLS.md sections 2, 3 and 6).

use super::fields::{push_unknown, Fields};
use super::machine::MachineHeader;
use super::{Document, SingleManifest};
use crate::error::Error;
use crate::text::{Manifest, Position};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// One board to build: buildman's target (defconfig name without
/// `_defconfig`) and the architecture whose toolchain builds it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Board {
    /// The board target, e.g. `sandbox`.
    pub target: String,
    /// The toolchain architecture, e.g. `aarch64`.
    pub arch: String,
}

impl fmt::Display for Board {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.target, self.arch)
    }
}

impl FromStr for Board {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let words: Vec<&str> = s.split_whitespace().collect();
        match words.as_slice() {
            [target, arch] => Ok(Board {
                target: target.to_string(),
                arch: arch.to_string(),
            }),
            _ => Err(format!(
                "'{s}' is not a board (expected '<target> <arch>', e.g. 'sandbox sandbox')"
            )),
        }
    }
}

/// A buildman `configure` setting (`no_lto=true`), passed through to the
/// worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildSetting {
    /// Setting name: letters, digits and `_`.
    pub key: String,
    /// Setting value (may be empty).
    pub value: String,
}

impl fmt::Display for BuildSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.key, self.value)
    }
}

impl FromStr for BuildSetting {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!("'{s}' is not a build setting (expected '<key>=<value>', e.g. 'no_lto=true')")
        };
        let (key, value) = s.split_once('=').ok_or_else(bad)?;
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(bad());
        }
        Ok(BuildSetting {
            key: key.to_string(),
            value: value.to_string(),
        })
    }
}

fn check_commit(s: &str) -> Result<(), String> {
    if (4..=64).contains(&s.len()) && s.chars().all(|c| c.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(format!(
            "'{s}' is not a commit hash (expected 4 to 64 hex digits)"
        ))
    }
}

/// A build task as the controller hands it out and the guest fetches it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskManifest {
    /// Package (project) name.
    pub name: String,
    /// Package version.
    pub version: String,
    /// Git URL of the source, `#<ref>` may follow (old name `repository`).
    pub repository_url: String,
    /// Repository type (`git`).
    pub repository_type: Option<String>,
    /// Trusted repository certificate fingerprints.
    pub trust: Vec<String>,
    /// The machine to run on: one the agent offered.
    pub machine: String,
    /// Target triplet of the build.
    pub target: String,
    /// Build environment name.
    pub environment: Option<String>,
    /// Target configuration (old name `config`).
    pub target_config: Option<String>,
    /// Package configuration.
    pub package_config: Option<String>,
    /// Regexes that mark a log line as a warning.
    pub warning_regex: Vec<String>,
    /// Interactive breakpoint, if the task is interactive.
    pub interactive: Option<String>,
    /// Checksum of the worker that last ran this task.
    pub worker_checksum: Option<String>,
    /// Checksum of the dependencies the task was last built with.
    pub dependency_checksum: Option<String>,
    /// `auxiliary-machine[-<env>]` pairs: `(env, machine)`, env empty when
    /// the name has no suffix.
    pub auxiliary_machines: Vec<(String, String)>,
    /// Commits to build, in order (index = buildman's `commit_upto`);
    /// empty means the ref's head once.
    pub commits: Vec<String>,
    /// Boards to build at every commit.
    pub boards: Vec<Board>,
    /// buildman settings.
    pub build_settings: Vec<BuildSetting>,
    /// Unknown fields, in order.
    pub extra: Vec<(String, String)>,
}

const AUXILIARY_MACHINE: &str = "auxiliary-machine";

impl TaskManifest {
    /// The repository URL without a `#<ref>` fragment, and the ref.
    pub fn repository(&self) -> (&str, Option<&str>) {
        match self.repository_url.split_once('#') {
            Some((url, reference)) if !reference.is_empty() => (url, Some(reference)),
            Some((url, _)) => (url, None),
            None => (&self.repository_url, None),
        }
    }

    /// Name of the result operation for a board at a commit index:
    /// `<target>@<commit_upto>`.
    pub fn operation_name(board: &Board, commit_upto: usize) -> String {
        format!("{}@{commit_upto}", board.target)
    }
}

impl SingleManifest for TaskManifest {
    const KIND: &'static str = "task";

    fn from_manifest(manifest: &Manifest) -> Result<Self, Error> {
        let mut f = Fields::new(manifest, <Self as SingleManifest>::KIND);
        let name = f.required("name")?;
        let version = f.required("version")?;
        let repository_url = match f.optional_renamed("repository-url", "repository")? {
            Some(nv) if !nv.value.is_empty() => nv.value.clone(),
            Some(nv) => return Err(f.error_at(nv, "empty value for field 'repository-url'")),
            None => {
                return Err(f.error_here("missing required field 'repository-url' in task manifest"))
            }
        };
        let repository_type = f.optional_string("repository-type")?;
        let trust = f
            .repeated("trust")
            .iter()
            .map(|nv| nv.value.clone())
            .collect();
        let machine = f.required("machine")?;
        let target = f.required("target")?;
        let environment = f.optional_string("environment")?;
        let target_config = f
            .optional_renamed("target-config", "config")?
            .map(|nv| nv.value.clone());
        let package_config = f.optional("package-config")?.map(|nv| nv.value.clone());
        let warning_regex = f
            .repeated("warning-regex")
            .iter()
            .map(|nv| nv.value.clone())
            .collect();
        let interactive = f.optional_string("interactive")?;
        let worker_checksum = f.optional_string("worker-checksum")?;
        let dependency_checksum = f.optional_string("dependency-checksum")?;
        let mut auxiliary_machines = Vec::new();
        for nv in f.take_where(|n| {
            n == AUXILIARY_MACHINE
                || n.strip_prefix(AUXILIARY_MACHINE)
                    .is_some_and(|s| s.starts_with('-') && s.len() > 1)
        }) {
            let env = nv
                .name
                .strip_prefix(AUXILIARY_MACHINE)
                .unwrap_or_default()
                .trim_start_matches('-');
            if nv.value.is_empty() {
                return Err(f.error_at(nv, format!("empty value for field '{}'", nv.name)));
            }
            auxiliary_machines.push((env.to_string(), nv.value.clone()));
        }
        let mut commits = Vec::new();
        for nv in f.repeated("commit") {
            check_commit(&nv.value)
                .map_err(|e| f.error_at(nv, format!("invalid 'commit' value: {e}")))?;
            commits.push(nv.value.clone());
        }
        let mut boards = Vec::new();
        for nv in f.repeated("board") {
            boards.push(f.parse_value::<Board>(nv)?);
        }
        let mut build_settings = Vec::new();
        for nv in f.repeated("build-setting") {
            build_settings.push(f.parse_value::<BuildSetting>(nv)?);
        }
        Ok(TaskManifest {
            name,
            version,
            repository_url,
            repository_type,
            trust,
            machine,
            target,
            environment,
            target_config,
            package_config,
            warning_regex,
            interactive,
            worker_checksum,
            dependency_checksum,
            auxiliary_machines,
            commits,
            boards,
            build_settings,
            extra: f.unknown(),
        })
    }

    fn to_manifest(&self) -> Manifest {
        let mut m = Manifest::new("");
        m.push("name", &self.name);
        m.push("version", &self.version);
        m.push("repository-url", &self.repository_url);
        m.push_opt("repository-type", self.repository_type.as_deref());
        for t in &self.trust {
            m.push("trust", t);
        }
        m.push("machine", &self.machine);
        m.push("target", &self.target);
        m.push_opt("environment", self.environment.as_deref());
        m.push_opt("target-config", self.target_config.as_deref());
        m.push_opt("package-config", self.package_config.as_deref());
        for r in &self.warning_regex {
            m.push("warning-regex", r);
        }
        m.push_opt("interactive", self.interactive.as_deref());
        m.push_opt("worker-checksum", self.worker_checksum.as_deref());
        m.push_opt("dependency-checksum", self.dependency_checksum.as_deref());
        for (env, machine) in &self.auxiliary_machines {
            let name = if env.is_empty() {
                AUXILIARY_MACHINE.to_string()
            } else {
                format!("{AUXILIARY_MACHINE}-{env}")
            };
            m.push(name, machine);
        }
        for c in &self.commits {
            m.push("commit", c);
        }
        for b in &self.boards {
            m.push("board", b.to_string());
        }
        for s in &self.build_settings {
            m.push("build-setting", s.to_string());
        }
        push_unknown(&mut m, &self.extra);
        m
    }
}

/// What the agent POSTs to a controller to ask for work: who it is, its
/// toolchain, and the machines it offers (one header manifest each).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRequestManifest {
    /// The agent's host name.
    pub agent: String,
    /// Toolchain name (the agent instance).
    pub toolchain_name: String,
    /// Toolchain version.
    pub toolchain_version: String,
    /// `false`, `true` or `both`.
    pub interactive_mode: Option<String>,
    /// How to log in to an interactive build.
    pub interactive_login: Option<String>,
    /// SHA-256 of the agent's public key (authentication).
    pub fingerprint: Option<String>,
    /// RAM available for auxiliary machines, KiB.
    pub auxiliary_ram: Option<u64>,
    /// The machines offered.
    pub machines: Vec<MachineHeader>,
    /// Unknown fields of the request manifest, in order.
    pub extra: Vec<(String, String)>,
}

impl Document for TaskRequestManifest {
    const KIND: &'static str = "task request";

    fn from_stream(stream: &[Manifest], source: &str) -> Result<Self, Error> {
        let Some((first, machines)) = stream.split_first() else {
            return Err(Error::invalid(
                source,
                Position { line: 1, column: 1 },
                "empty input: expected a task request manifest",
            ));
        };
        let mut f = Fields::new(first, Self::KIND);
        let agent = f.required("agent")?;
        let toolchain_name = f.required("toolchain-name")?;
        let toolchain_version = f.required("toolchain-version")?;
        let interactive_mode = match f.optional("interactive-mode")? {
            Some(nv) if matches!(nv.value.as_str(), "false" | "true" | "both") => {
                Some(nv.value.clone())
            }
            Some(nv) => {
                return Err(f.error_at(
                    nv,
                    format!(
                        "invalid 'interactive-mode' value '{}' (expected false, true or both)",
                        nv.value
                    ),
                ))
            }
            None => None,
        };
        let interactive_login = f.optional_string("interactive-login")?;
        let fingerprint = f.optional_string("fingerprint")?;
        let auxiliary_ram = f.optional_positive("auxiliary-ram")?;
        let extra = f.unknown();
        if machines.is_empty() {
            return Err(Error::invalid(
                source,
                first.start,
                "task request offers no machines (expected a machine header manifest after the request)",
            ));
        }
        let machines = machines
            .iter()
            .map(MachineHeader::from_manifest)
            .collect::<Result<_, _>>()?;
        Ok(TaskRequestManifest {
            agent,
            toolchain_name,
            toolchain_version,
            interactive_mode,
            interactive_login,
            fingerprint,
            auxiliary_ram,
            machines,
            extra,
        })
    }

    fn to_stream(&self) -> Vec<Manifest> {
        let mut m = Manifest::new("");
        m.push("agent", &self.agent);
        m.push("toolchain-name", &self.toolchain_name);
        m.push("toolchain-version", &self.toolchain_version);
        m.push_opt("interactive-mode", self.interactive_mode.as_deref());
        m.push_opt("interactive-login", self.interactive_login.as_deref());
        m.push_opt("fingerprint", self.fingerprint.as_deref());
        m.push_opt("auxiliary-ram", self.auxiliary_ram.map(|n| n.to_string()));
        push_unknown(&mut m, &self.extra);
        let mut stream = vec![m];
        stream.extend(self.machines.iter().map(MachineHeader::to_manifest));
        stream
    }
}

/// A controller's answer to a task request: an empty `session` means no
/// work; otherwise the task follows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskResponseManifest {
    /// Session id to quote when uploading the result; empty = no task.
    pub session: String,
    /// Bytes to sign with the agent's key (authentication).
    pub challenge: Option<String>,
    /// Where to POST the result.
    pub result_url: Option<String>,
    /// Where to upload build artifacts.
    pub upload_urls: Vec<String>,
    /// Checksum the controller has for this agent.
    pub agent_checksum: Option<String>,
    /// The task, present exactly when `session` is non-empty.
    pub task: Option<TaskManifest>,
    /// Unknown fields of the response manifest, in order.
    pub extra: Vec<(String, String)>,
}

impl TaskResponseManifest {
    /// The answer "no work".
    pub fn no_task() -> Self {
        TaskResponseManifest {
            session: String::new(),
            challenge: None,
            result_url: None,
            upload_urls: Vec::new(),
            agent_checksum: None,
            task: None,
            extra: Vec::new(),
        }
    }
}

impl Document for TaskResponseManifest {
    const KIND: &'static str = "task response";

    fn from_stream(stream: &[Manifest], source: &str) -> Result<Self, Error> {
        let Some((first, rest)) = stream.split_first() else {
            return Err(Error::invalid(
                source,
                Position { line: 1, column: 1 },
                "empty input: expected a task response manifest",
            ));
        };
        let mut f = Fields::new(first, Self::KIND);
        let session = f.required_nv("session")?.value.clone();
        let challenge = f.optional_string("challenge")?;
        let result_url = f.optional_string("result-url")?;
        let upload_urls = f
            .repeated("upload-url")
            .iter()
            .map(|nv| nv.value.clone())
            .collect();
        let agent_checksum = f.optional_string("agent-checksum")?;
        let extra = f.unknown();
        let task = match (session.is_empty(), rest) {
            (true, []) => None,
            (true, [next, ..]) => {
                return Err(Error::invalid(
                    source,
                    next.start,
                    "task response with an empty session must not carry a task",
                ))
            }
            (false, [task]) => Some(TaskManifest::from_manifest(task)?),
            (false, []) => {
                return Err(Error::invalid(
                    source,
                    first.start,
                    "task response has a session but no task manifest",
                ))
            }
            (false, [_, extra, ..]) => {
                return Err(Error::invalid(
                    source,
                    extra.start,
                    "unexpected manifest after the task in task response",
                ))
            }
        };
        Ok(TaskResponseManifest {
            session,
            challenge,
            result_url,
            upload_urls,
            agent_checksum,
            task,
            extra,
        })
    }

    fn to_stream(&self) -> Vec<Manifest> {
        let mut m = Manifest::new("");
        m.push("session", &self.session);
        m.push_opt("challenge", self.challenge.as_deref());
        m.push_opt("result-url", self.result_url.as_deref());
        for u in &self.upload_urls {
            m.push("upload-url", u);
        }
        m.push_opt("agent-checksum", self.agent_checksum.as_deref());
        push_unknown(&mut m, &self.extra);
        let mut stream = vec![m];
        stream.extend(self.task.iter().map(TaskManifest::to_manifest));
        stream
    }
}
