//! The buildman worker protocol (PROTOCOLS.md section 7): the one place that
//! knows the JSON-lines messages exchanged with a buildman boss.
//!
//! The boss writes one JSON object per line to our stdin (`{"cmd": ...}`);
//! we answer with `BM> ` followed by one JSON object (`{"resp": ...}`) per
//! line on stdout. Keeping every message shape here means the command loop
//! and the build engine never touch raw JSON, and the exact error texts the
//! boss (and our tests) see are defined once.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Prefix of every protocol line we write, so the boss can tell protocol
/// messages from stray output (login banners, warnings) on the same pipe.
pub const RESPONSE_PREFIX: &str = "BM> ";

/// A board to build, as the boss names it: the make target and the
/// architecture used to pick a toolchain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BoardSpec {
    /// Board target, e.g. `sandbox` (built with `sandbox_defconfig`).
    pub board: String,
    /// Architecture of the board (`sandbox`, `arm`, `aarch64` ...); selects
    /// the toolchain. Empty when the boss did not say.
    #[serde(default)]
    pub arch: String,
}

/// A command from the boss, already checked for the fields it needs.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// `setup {work_dir}`: create (or reuse) a work directory with a git repo.
    Setup {
        /// Requested directory; `None` or empty means "make a temporary one".
        work_dir: Option<String>,
    },
    /// `configure {settings, toolchains}`: build settings and toolchains.
    Configure {
        /// Build settings (`no_lto`, `verbose_build` ...), kept as JSON so
        /// unknown keys from newer bosses do not break us.
        settings: Map<String, Value>,
        /// Architecture → path of the toolchain's gcc (`~` allowed).
        toolchains: BTreeMap<String, String>,
    },
    /// `build_boards {boards, commits}`: batch build, answered by results and
    /// `build_done`.
    BuildBoards {
        /// Boards to build.
        boards: Vec<BoardSpec>,
        /// Commits to build, `None` for the checked-out source.
        commits: Option<Vec<String>>,
    },
    /// `build_prepare {commits, max_boards}`: start a demand-driven build.
    BuildPrepare {
        /// Commits to build, `None` for the checked-out source.
        commits: Option<Vec<String>>,
        /// How many boards the boss keeps in flight (0: number of threads).
        max_boards: usize,
    },
    /// `build_board {board, arch}`: queue one board of a demand-driven build.
    BuildBoard(BoardSpec),
    /// `build_done`: no more boards; answer `build_done` when drained.
    BuildDone,
    /// `quit`: answer `quit_ack` and exit.
    Quit,
}

/// Why a line from the boss is not a usable command. The `Display` texts
/// are the `msg` of the `error` response the boss receives.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    /// The line is not JSON (or not a JSON object).
    #[error("invalid JSON: {0}")]
    InvalidJson(String),
    /// The `cmd` field names no command we know.
    #[error("unknown command: {0}")]
    UnknownCommand(String),
    /// A known command with missing or mistyped fields.
    #[error("invalid {cmd} command: {reason}")]
    BadArguments {
        /// The command name.
        cmd: String,
        /// What is wrong with it.
        reason: String,
    },
}

#[derive(Deserialize)]
struct SetupArgs {
    #[serde(default)]
    work_dir: Option<String>,
}

#[derive(Deserialize)]
struct ConfigureArgs {
    #[serde(default)]
    settings: Option<Map<String, Value>>,
    #[serde(default)]
    toolchains: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
struct BuildBoardsArgs {
    #[serde(default)]
    boards: Vec<BoardSpec>,
    #[serde(default)]
    commits: Option<Vec<Option<String>>>,
}

#[derive(Deserialize)]
struct BuildPrepareArgs {
    #[serde(default)]
    commits: Option<Vec<Option<String>>>,
    #[serde(default)]
    max_boards: Option<usize>,
}

fn args<T: serde::de::DeserializeOwned>(cmd: &str, value: Value) -> Result<T, ProtocolError> {
    serde_json::from_value(value).map_err(|e| ProtocolError::BadArguments {
        cmd: cmd.to_string(),
        reason: e.to_string(),
    })
}

/// Turn the boss's commit list into ours: `[null]` (or nothing) means the
/// checked-out source, otherwise every entry must be a hash.
fn commit_list(
    cmd: &str,
    commits: Option<Vec<Option<String>>>,
) -> Result<Option<Vec<String>>, ProtocolError> {
    let commits = commits.unwrap_or_default();
    match commits.first() {
        None | Some(None) => Ok(None),
        Some(Some(_)) => commits
            .into_iter()
            .map(|c| {
                c.ok_or_else(|| ProtocolError::BadArguments {
                    cmd: cmd.to_string(),
                    reason: "null commit after a hash".to_string(),
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
    }
}

/// Parse one line from the boss into a command.
///
/// The error texts are the ones the boss expects: "invalid JSON: ..." and
/// "unknown command: X" (with X empty when `cmd` is missing, as buildman's
/// own worker does).
pub fn parse_command(line: &str) -> Result<Command, ProtocolError> {
    let value: Value =
        serde_json::from_str(line).map_err(|e| ProtocolError::InvalidJson(e.to_string()))?;
    let Value::Object(obj) = value else {
        return Err(ProtocolError::InvalidJson(format!(
            "expected an object, got {}",
            kind_of(&value)
        )));
    };
    let cmd = match obj.get("cmd") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
    let value = Value::Object(obj);
    match cmd.as_str() {
        "setup" => {
            let a: SetupArgs = args(&cmd, value)?;
            Ok(Command::Setup {
                work_dir: a.work_dir.filter(|w| !w.is_empty()),
            })
        }
        "configure" => {
            let a: ConfigureArgs = args(&cmd, value)?;
            Ok(Command::Configure {
                settings: a.settings.unwrap_or_default(),
                toolchains: a.toolchains.unwrap_or_default(),
            })
        }
        "build_boards" => {
            let a: BuildBoardsArgs = args(&cmd, value)?;
            Ok(Command::BuildBoards {
                boards: a.boards,
                commits: commit_list(&cmd, a.commits)?,
            })
        }
        "build_prepare" => {
            let a: BuildPrepareArgs = args(&cmd, value)?;
            Ok(Command::BuildPrepare {
                commits: commit_list(&cmd, a.commits)?,
                max_boards: a.max_boards.unwrap_or(0),
            })
        }
        "build_board" => Ok(Command::BuildBoard(args(&cmd, value)?)),
        "build_done" => Ok(Command::BuildDone),
        "quit" => Ok(Command::Quit),
        _ => Err(ProtocolError::UnknownCommand(cmd)),
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Image sizes of a successful build, in the form a local buildman writes
/// its `sizes` file: one line per ELF image (`size` output without its
/// header, then the `.rodata` size).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sizes {
    /// The size lines, joined with `\n`.
    pub raw: String,
}

/// The outcome of one board at one commit, as sent to the boss.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildResultMsg {
    /// Board target.
    pub board: String,
    /// Index of the commit in the build's commit list.
    pub commit_upto: usize,
    /// make's exit status (10: no toolchain; 0 with stderr: warnings).
    pub return_code: i32,
    /// The build's stderr (source paths made relative).
    pub stderr: String,
    /// The build's stdout.
    pub stdout: String,
    /// 1-minute load average, which the boss logs to judge its workers.
    pub load_avg: f64,
    /// Image sizes, only for a successful build.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sizes: Option<Sizes>,
    /// Config files of a failed build (output name → contents).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config: BTreeMap<String, String>,
    /// Source-lines manifest of a successful build (setting `lines`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub lines: String,
}

/// A response to the boss. Serialises to `{"resp": "<name>", ...}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "resp", rename_all = "snake_case")]
pub enum Response {
    /// First message: how many build threads this worker runs.
    Ready {
        /// Build threads.
        nthreads: usize,
        /// Boards the boss may keep in flight.
        slots: usize,
    },
    /// Answer to `setup`.
    SetupDone {
        /// The work directory in use.
        work_dir: String,
        /// Its git directory, for the boss to push to.
        git_dir: String,
    },
    /// Answer to `configure`.
    ConfigureDone,
    /// A build began; worktree set-up follows.
    BuildStarted {
        /// Threads (and worktrees) of this build.
        num_threads: usize,
    },
    /// One thread's worktree is ready (set-up progress for the boss).
    WorktreeCreated {
        /// Thread number.
        thread: usize,
    },
    /// Answer to `build_prepare`: ready for `build_board`.
    BuildPrepareDone,
    /// Keeps the boss's 300 s silence timeout from firing during builds.
    Heartbeat {
        /// Board being built.
        board: String,
        /// Thread building it.
        thread: usize,
    },
    /// One board at one commit.
    BuildResult(BuildResultMsg),
    /// The build has drained.
    BuildDone {
        /// Internal failures of build threads (0 normally).
        exceptions: usize,
    },
    /// A command could not be handled.
    Error {
        /// What went wrong.
        msg: String,
    },
    /// Answer to `quit`; stdout closes after it.
    QuitAck,
}

/// Format a response as one protocol line, prefix and newline included.
pub fn format_response(resp: &Response) -> String {
    // Serialising these plain types cannot fail (string keys only), but do
    // not panic on it: fall back to an error message the boss can read.
    let json = serde_json::to_string(resp)
        .unwrap_or_else(|e| format!(r#"{{"resp":"error","msg":"cannot encode response: {e}"}}"#));
    format!("{RESPONSE_PREFIX}{json}\n")
}

/// The single writer of protocol lines: every thread sends through a clone
/// of this, so lines are never interleaved and each is flushed at once.
#[derive(Clone)]
pub struct ResponseWriter {
    out: Arc<Mutex<Box<dyn Write + Send>>>,
    closed: Arc<AtomicBool>,
}

impl ResponseWriter {
    /// Wrap an output stream (normally stdout).
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        Self {
            out: Arc::new(Mutex::new(out)),
            closed: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Write one response line and flush it. After [`Self::send_last`]
    /// nothing more is written: the boss has been told we are gone.
    pub fn send(&self, resp: &Response) -> std::io::Result<()> {
        let line = format_response(resp);
        let mut out = self
            .out
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.closed.load(Ordering::SeqCst) {
            return Ok(());
        }
        out.write_all(line.as_bytes())?;
        out.flush()
    }

    /// Write a final response (`quit_ack`); later sends from build threads
    /// that are being killed are dropped, so nothing follows it.
    pub fn send_last(&self, resp: &Response) -> std::io::Result<()> {
        let mut out = self
            .out
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        out.write_all(format_response(resp).as_bytes())?;
        out.flush()
    }

    /// Send an `error` response.
    pub fn error(&self, msg: impl Into<String>) -> std::io::Result<()> {
        self.send(&Response::Error { msg: msg.into() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_commands() {
        assert_eq!(parse_command(r#"{"cmd":"quit"}"#), Ok(Command::Quit));
        assert_eq!(
            parse_command(r#"{"cmd":"build_prepare","commits":[null],"max_boards":3}"#),
            Ok(Command::BuildPrepare {
                commits: None,
                max_boards: 3
            })
        );
        assert_eq!(
            parse_command(r#"{"cmd":"build_board","board":"b"}"#),
            Ok(Command::BuildBoard(BoardSpec {
                board: "b".into(),
                arch: String::new()
            }))
        );
    }

    #[test]
    fn error_texts() {
        let e = parse_command("{nope").unwrap_err().to_string();
        assert!(e.starts_with("invalid JSON: "), "{e}");
        assert_eq!(
            parse_command(r#"{"cmd":"frob"}"#).unwrap_err().to_string(),
            "unknown command: frob"
        );
        assert_eq!(
            parse_command(r#"{}"#).unwrap_err().to_string(),
            "unknown command: "
        );
        let e = parse_command(r#"{"cmd":"build_board"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("board"), "{e}");
    }

    #[test]
    fn response_shape() {
        let line = format_response(&Response::BuildDone { exceptions: 0 });
        assert_eq!(line, "BM> {\"resp\":\"build_done\",\"exceptions\":0}\n");
        let line = format_response(&Response::QuitAck);
        assert_eq!(line, "BM> {\"resp\":\"quit_ack\"}\n");
    }
}
