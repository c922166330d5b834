//! Jobs and how they become tasks (PROTOCOLS.md section 6).
//!
//! A job is a repository, a ref, commits and boards; its result is a
//! board × commit table of cells. It is split into tasks of a few boards
//! across ALL commits each, because that is the unit a guest builds well:
//! one board's worktree is configured once and rebuilt incrementally
//! commit after commit (buildman's way), so splitting by commit would
//! repeat the expensive first build.
//!
//! Everything here is pure: the database stores what this module decides.

use manifests::{Board, BuildSetting, Document, TaskManifest};
use serde::{Deserialize, Serialize};

/// Boards per task unless the job or `--boards-per-task` says otherwise:
/// a first build of a U-Boot board is about a minute in a 2-CPU guest and
/// each further commit an incremental rebuild of seconds to a minute, so
/// four boards across a handful of commits is a few minutes of work —
/// short enough that an interrupted task loses little, long enough that
/// booting a guest (seconds) stays a small overhead.
pub const DEFAULT_BOARDS_PER_TASK: usize = 4;
/// Attempts a task gets (interrupted, aborted, lease expired) before its
/// cells are marked `abort`.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// The `target` of task manifests when a job names none: the guests'
/// own triplet (the build machines are x86_64 Debian).
pub const DEFAULT_TARGET: &str = "x86_64-linux-gnu";

const MAX_BOARDS: usize = 10_000;
const MAX_COMMITS: usize = 1_000;
const MAX_CELLS: usize = 1_000_000;

/// A job as submitted (`POST /api/jobs`, `bbot-controller submit`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    /// Git URL of the source, without `#ref`.
    pub repository: String,
    /// Branch, tag or other ref; the remote's default head when absent.
    #[serde(default, rename = "ref")]
    pub reference: Option<String>,
    /// Commits to build, oldest first; empty = the ref's head once.
    #[serde(default)]
    pub commits: Vec<String>,
    /// Boards as `"<target> <arch>"` (or `"<target>:<arch>"`).
    pub boards: Vec<String>,
    /// buildman settings as `key=value`.
    #[serde(default)]
    pub build_settings: Vec<String>,
    /// Glob (`*`, `?`, `[...]`) the offered machine's name must match.
    pub machine: String,
    /// Package name in task manifests (default: the repository's name).
    #[serde(default)]
    pub name: Option<String>,
    /// Package version in task manifests (default `0`).
    #[serde(default)]
    pub version: Option<String>,
    /// Target triplet in task manifests (default [`DEFAULT_TARGET`]).
    #[serde(default)]
    pub target: Option<String>,
    /// Boards per task (default: the controller's `--boards-per-task`).
    #[serde(default)]
    pub boards_per_task: Option<usize>,
    /// Attempts per task (default: the controller's `--max-attempts`).
    #[serde(default)]
    pub max_attempts: Option<u32>,
}

/// What a job request got wrong.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// A field has an unusable value.
    #[error("invalid {field}: {message}")]
    Invalid {
        /// The field (`boards`, `commits`, ...).
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// Stored data does not fit together (a task naming a board the job
    /// does not have): the database was changed behind our back.
    #[error("inconsistent stored job {job}: {message}")]
    Corrupt {
        /// The job.
        job: i64,
        /// What does not fit.
        message: String,
    },
}

fn invalid(field: &'static str, message: impl Into<String>) -> JobError {
    JobError::Invalid {
        field,
        message: message.into(),
    }
}

/// A checked job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    /// Package name.
    pub name: String,
    /// Package version.
    pub version: String,
    /// Git URL without `#ref`.
    pub repository: String,
    /// The ref, if any.
    pub reference: Option<String>,
    /// Target triplet.
    pub target: String,
    /// Machine name glob.
    pub machine: String,
    /// Boards, in table order.
    pub boards: Vec<Board>,
    /// Commits, in table order (index = column); empty = the head.
    pub commits: Vec<String>,
    /// buildman settings.
    pub settings: Vec<BuildSetting>,
    /// Boards per task.
    pub boards_per_task: usize,
    /// Attempts per task.
    pub max_attempts: u32,
}

/// Controller-wide defaults for what a request leaves out.
#[derive(Debug, Clone, Copy)]
pub struct Defaults {
    /// `--boards-per-task`.
    pub boards_per_task: usize,
    /// `--max-attempts`.
    pub max_attempts: u32,
}

/// A value that goes into a manifest field or a URL: printable, no
/// whitespace (a URL or ref with a space is surely a mistake).
fn check_word(field: &'static str, v: &str) -> Result<(), JobError> {
    if v.is_empty() {
        return Err(invalid(field, "empty"));
    }
    if v.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(field, format!("'{v}' contains whitespace")));
    }
    if v.len() > 4096 {
        return Err(invalid(field, "longer than 4096 characters"));
    }
    Ok(())
}

fn check_name(field: &'static str, v: &str) -> Result<(), JobError> {
    check_word(field, v)?;
    if !v
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_.+-".contains(c))
    {
        return Err(invalid(
            field,
            format!("'{v}' (letters, digits and _.+- only)"),
        ));
    }
    Ok(())
}

/// The repository's name: its last path component without `.git`.
fn default_name(repository: &str) -> String {
    let last = repository
        .trim_end_matches('/')
        .rsplit(['/', ':'])
        .next()
        .unwrap_or_default();
    let name = last.strip_suffix(".git").unwrap_or(last);
    if name.is_empty() {
        "project".into()
    } else {
        name.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "_.+-".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    }
}

impl JobRequest {
    /// Checks the request and fills in defaults.
    pub fn into_spec(self, defaults: Defaults) -> Result<JobSpec, JobError> {
        check_word("repository", &self.repository)?;
        if self.repository.contains('#') {
            return Err(invalid(
                "repository",
                "give the ref separately, not as '#ref'",
            ));
        }
        if let Some(r) = &self.reference {
            check_word("ref", r)?;
            if r.contains('#') {
                return Err(invalid("ref", format!("'{r}' contains '#'")));
            }
        }
        check_word("machine", &self.machine)?;
        if self.boards.is_empty() {
            return Err(invalid("boards", "no boards"));
        }
        if self.boards.len() > MAX_BOARDS {
            return Err(invalid("boards", format!("more than {MAX_BOARDS}")));
        }
        let mut boards: Vec<Board> = Vec::with_capacity(self.boards.len());
        for b in &self.boards {
            let board: Board = b
                .replacen(':', " ", 1)
                .parse()
                .map_err(|e: String| invalid("boards", e))?;
            check_name("boards", &board.target)?;
            check_name("boards", &board.arch)?;
            if boards.iter().any(|o| o.target == board.target) {
                // Results name operations by target only.
                return Err(invalid(
                    "boards",
                    format!("board '{}' given twice", board.target),
                ));
            }
            boards.push(board);
        }
        if self.commits.len() > MAX_COMMITS {
            return Err(invalid("commits", format!("more than {MAX_COMMITS}")));
        }
        let mut commits: Vec<String> = Vec::with_capacity(self.commits.len());
        for c in &self.commits {
            let c = c.trim().to_ascii_lowercase();
            if !(4..=64).contains(&c.len()) || !c.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(invalid(
                    "commits",
                    format!("'{c}' is not a commit hash (4 to 64 hex digits)"),
                ));
            }
            if commits.contains(&c) {
                return Err(invalid("commits", format!("commit '{c}' given twice")));
            }
            commits.push(c);
        }
        if boards.len() * commits.len().max(1) > MAX_CELLS {
            return Err(invalid("boards", format!("more than {MAX_CELLS} cells")));
        }
        let settings = self
            .build_settings
            .iter()
            .map(|s| {
                s.parse::<BuildSetting>()
                    .map_err(|e| invalid("build_settings", e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let name = self.name.unwrap_or_else(|| default_name(&self.repository));
        check_name("name", &name)?;
        let version = self.version.unwrap_or_else(|| "0".into());
        check_word("version", &version)?;
        let target = self.target.unwrap_or_else(|| DEFAULT_TARGET.into());
        check_name("target", &target)?;
        let boards_per_task = self.boards_per_task.unwrap_or(defaults.boards_per_task);
        if !(1..=1000).contains(&boards_per_task) {
            return Err(invalid("boards_per_task", "must be 1 to 1000"));
        }
        let max_attempts = self.max_attempts.unwrap_or(defaults.max_attempts);
        if !(1..=100).contains(&max_attempts) {
            return Err(invalid("max_attempts", "must be 1 to 100"));
        }
        let spec = JobSpec {
            name,
            version,
            repository: self.repository,
            reference: self.reference,
            target,
            machine: self.machine,
            boards,
            commits,
            settings,
            boards_per_task,
            max_attempts,
        };
        // Every task of the job must serialize: try the largest one now
        // rather than fail when handing it out.
        let all = TaskCells {
            boards: (0..spec.boards.len()).collect(),
            commits: (0..spec.columns()).collect(),
        };
        let probe = task_manifest(0, &spec, &all, &spec.machine.replace(['*', '?'], "x"))?;
        probe
            .to_text()
            .map_err(|e| invalid("job", format!("cannot be written as a task manifest: {e}")))?;
        Ok(spec)
    }
}

impl JobSpec {
    /// Number of table columns: the commits, or one for the head.
    pub fn columns(&self) -> usize {
        self.commits.len().max(1)
    }

    /// Number of cells.
    pub fn cells(&self) -> usize {
        self.boards.len() * self.columns()
    }

    /// The repository URL as task manifests carry it (`url#ref`).
    pub fn repository_url(&self) -> String {
        match &self.reference {
            Some(r) => format!("{}#{r}", self.repository),
            None => self.repository.clone(),
        }
    }

    /// The splitting of the whole job into tasks.
    pub fn split(&self) -> Vec<TaskCells> {
        split(self.boards.len(), self.columns(), self.boards_per_task)
    }
}

/// The cells of one task: these boards at these commits (indices into the
/// job's lists, so a retry can carry any subset and map back).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskCells {
    /// Board indices, ascending.
    pub boards: Vec<usize>,
    /// Commit (column) indices, ascending; `[0]` for a head-only job.
    pub commits: Vec<usize>,
}

impl TaskCells {
    /// Every (board, commit) cell.
    pub fn cells(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.boards
            .iter()
            .flat_map(move |&b| self.commits.iter().map(move |&c| (b, c)))
    }

    /// Number of cells.
    pub fn len(&self) -> usize {
        self.boards.len() * self.commits.len()
    }

    /// No cells at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Groups of `per_task` boards, each across every column.
pub fn split(boards: usize, columns: usize, per_task: usize) -> Vec<TaskCells> {
    let all: Vec<usize> = (0..columns).collect();
    (0..boards)
        .collect::<Vec<_>>()
        .chunks(per_task.max(1))
        .map(|chunk| TaskCells {
            boards: chunk.to_vec(),
            commits: all.clone(),
        })
        .collect()
}

/// The task manifest handed to an agent for `cells` of job `job_id`, on
/// `machine` (the offered machine's name). A head-only job has no
/// `commit` fields.
pub fn task_manifest(
    job_id: i64,
    spec: &JobSpec,
    cells: &TaskCells,
    machine: &str,
) -> Result<TaskManifest, JobError> {
    let corrupt = |message: String| JobError::Corrupt {
        job: job_id,
        message,
    };
    let boards = cells
        .boards
        .iter()
        .map(|&i| {
            spec.boards
                .get(i)
                .cloned()
                .ok_or_else(|| corrupt(format!("task names board #{i}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let commits = if spec.commits.is_empty() {
        if cells.commits != [0] {
            return Err(corrupt("head-only job with a task of commits".into()));
        }
        Vec::new()
    } else {
        cells
            .commits
            .iter()
            .map(|&i| {
                spec.commits
                    .get(i)
                    .cloned()
                    .ok_or_else(|| corrupt(format!("task names commit #{i}")))
            })
            .collect::<Result<Vec<_>, _>>()?
    };
    Ok(TaskManifest {
        name: spec.name.clone(),
        version: spec.version.clone(),
        repository_url: spec.repository_url(),
        repository_type: Some("git".into()),
        trust: Vec::new(),
        machine: machine.to_string(),
        target: spec.target.clone(),
        environment: None,
        target_config: None,
        package_config: None,
        warning_regex: Vec::new(),
        interactive: None,
        worker_checksum: None,
        dependency_checksum: None,
        auxiliary_machines: Vec::new(),
        commits,
        boards,
        build_settings: spec.settings.clone(),
        extra: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: Defaults = Defaults {
        boards_per_task: 2,
        max_attempts: 3,
    };

    fn request() -> JobRequest {
        JobRequest {
            repository: "https://example.org/u-boot.git".into(),
            reference: Some("master".into()),
            commits: vec!["AAAA".into(), "bbbb".into(), "cccc".into()],
            boards: vec![
                "sandbox sandbox".into(),
                "qemu_arm64:aarch64".into(),
                "qemu_arm arm".into(),
            ],
            build_settings: vec!["no_lto=true".into()],
            machine: "x86_64-debian_12-*".into(),
            ..JobRequest::default()
        }
    }

    #[test]
    fn a_request_becomes_a_spec_with_defaults() {
        let s = request().into_spec(D).expect("valid");
        assert_eq!(s.name, "u-boot");
        assert_eq!(s.version, "0");
        assert_eq!(s.target, DEFAULT_TARGET);
        assert_eq!(s.commits, ["aaaa", "bbbb", "cccc"]);
        assert_eq!(s.boards[1].arch, "aarch64");
        assert_eq!(s.repository_url(), "https://example.org/u-boot.git#master");
        assert_eq!((s.boards_per_task, s.max_attempts, s.cells()), (2, 3, 9));
    }

    #[test]
    fn bad_requests_name_the_field() {
        type Change = Box<dyn Fn(&mut JobRequest)>;
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|r| r.boards.clear()), "invalid boards: no boards"),
            (
                Box::new(|r| r.boards.push("sandbox x".into())),
                "given twice",
            ),
            (Box::new(|r| r.boards.push("lonely".into())), "not a board"),
            (Box::new(|r| r.commits.push("xyz1".into())), "not a commit"),
            (Box::new(|r| r.commits.push("aaaa".into())), "given twice"),
            (Box::new(|r| r.repository = "a b".into()), "whitespace"),
            (Box::new(|r| r.repository.push_str("#x")), "ref separately"),
            (Box::new(|r| r.machine.clear()), "invalid machine: empty"),
            (
                Box::new(|r| r.build_settings.push("=x".into())),
                "build setting",
            ),
            (Box::new(|r| r.boards_per_task = Some(0)), "boards_per_task"),
            (Box::new(|r| r.name = Some("a/b".into())), "invalid name"),
        ];
        for (change, expect) in cases {
            let mut r = request();
            change(&mut r);
            let e = r.into_spec(D).expect_err(expect).to_string();
            assert!(e.contains(expect), "{e:?} should contain {expect:?}");
        }
    }

    #[test]
    fn split_groups_boards_across_all_commits() {
        let t = split(5, 3, 2);
        assert_eq!(t.len(), 3);
        assert_eq!(t[0].boards, [0, 1]);
        assert_eq!(t[2].boards, [4]);
        assert!(t.iter().all(|t| t.commits == [0, 1, 2]));
        assert_eq!(t.iter().map(TaskCells::len).sum::<usize>(), 15);
    }

    #[test]
    fn task_manifest_carries_the_subset() {
        let s = request().into_spec(D).expect("valid");
        let cells = TaskCells {
            boards: vec![2],
            commits: vec![1, 2],
        };
        let m = task_manifest(1, &s, &cells, "x86_64-debian_12-uboot").expect("manifest");
        assert_eq!(m.commits, ["bbbb", "cccc"]);
        assert_eq!(m.boards[0].target, "qemu_arm");
        assert_eq!(m.machine, "x86_64-debian_12-uboot");
        assert_eq!(m.build_settings[0].to_string(), "no_lto=true");
        let bad = TaskCells {
            boards: vec![7],
            commits: vec![0],
        };
        assert!(task_manifest(1, &s, &bad, "m").is_err());
    }

    #[test]
    fn head_only_job_has_one_column_and_no_commit_fields() {
        let mut r = request();
        r.commits.clear();
        r.reference = None;
        let s = r.into_spec(D).expect("valid");
        assert_eq!(s.columns(), 1);
        let t = s.split();
        let m = task_manifest(1, &s, &t[0], "m").expect("manifest");
        assert!(m.commits.is_empty());
        assert_eq!(m.repository_url, "https://example.org/u-boot.git");
    }
}
