//! What the controller shows about its jobs and agents: one set of types
//! for the JSON API, the HTML pages and the `status` command, so the three
//! can never disagree. Sessions and challenges are never part of a view:
//! a session is what lets a result in.

use std::collections::BTreeMap;

use manifests::{Board, ResultStatus};
use serde::{Deserialize, Serialize};

/// Whether a job still has cells without a final status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Some cells are still queued or building.
    Running,
    /// Every cell has its final status.
    Finished,
}

impl JobState {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Running => "running",
            JobState::Finished => "finished",
        }
    }
}

/// A line of the jobs list.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobSummary {
    /// Job id.
    pub id: i64,
    /// Package name.
    pub name: String,
    /// Git URL.
    pub repository: String,
    /// The ref, if any.
    #[serde(rename = "ref")]
    pub reference: Option<String>,
    /// Machine name glob.
    pub machine: String,
    /// Number of boards.
    pub boards: usize,
    /// Number of columns (commits, or 1 for the head).
    pub columns: usize,
    /// Cells per status (`pending` for those without one yet).
    pub counts: BTreeMap<String, usize>,
    /// Running or finished.
    pub state: JobState,
    /// Submitted, Unix seconds.
    pub created: f64,
    /// Finished, Unix seconds.
    pub finished: Option<f64>,
}

/// Where a cell stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CellState {
    /// Waiting for an agent.
    Queued,
    /// An agent holds the task.
    Building,
    /// Final status known.
    Done,
}

/// One cell of the board × commit table.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CellView {
    /// Board index.
    pub board: usize,
    /// Column (commit) index.
    pub commit: usize,
    /// Final status, once known.
    pub status: Option<ResultStatus>,
    /// Queued, building or done.
    pub state: CellState,
    /// The task that produced the status, or that holds the cell now.
    pub task: Option<i64>,
    /// Size of the stored log.
    pub log_bytes: u64,
}

/// One task of a job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskView {
    /// Task id.
    pub id: i64,
    /// Board indices.
    pub boards: Vec<usize>,
    /// Column indices.
    pub commits: Vec<usize>,
    /// `queued`, `leased` or `done`.
    pub state: String,
    /// Which attempt this is (1 = first).
    pub attempt: u32,
    /// Overall status of the result that completed it.
    pub result_status: Option<ResultStatus>,
    /// Why it exists or what became of it (retries, lease expiries).
    pub note: Option<String>,
    /// The agent holding it (while leased).
    pub agent: Option<String>,
    /// The machine it runs on (while leased).
    pub machine: Option<String>,
    /// When the lease runs out, Unix seconds.
    pub lease_expires: Option<f64>,
}

/// A job with its table and tasks.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobView {
    /// Job id.
    pub id: i64,
    /// Package name.
    pub name: String,
    /// Package version.
    pub version: String,
    /// Git URL.
    pub repository: String,
    /// The ref, if any.
    #[serde(rename = "ref")]
    pub reference: Option<String>,
    /// Target triplet.
    pub target: String,
    /// Machine name glob.
    pub machine: String,
    /// Boards (rows).
    pub boards: Vec<Board>,
    /// Commits (columns); empty = one column, the ref's head.
    pub commits: Vec<String>,
    /// buildman settings, `key=value`.
    pub build_settings: Vec<String>,
    /// Boards per task.
    pub boards_per_task: usize,
    /// Attempts per task.
    pub max_attempts: u32,
    /// Running or finished.
    pub state: JobState,
    /// Submitted, Unix seconds.
    pub created: f64,
    /// Finished, Unix seconds.
    pub finished: Option<f64>,
    /// Cells per status (`pending` for those without one yet).
    pub counts: BTreeMap<String, usize>,
    /// Every cell, board by board.
    pub cells: Vec<CellView>,
    /// Every task.
    pub tasks: Vec<TaskView>,
}

impl JobView {
    /// Number of columns.
    pub fn columns(&self) -> usize {
        self.commits.len().max(1)
    }

    /// The cell at (board, commit).
    pub fn cell(&self, board: usize, commit: usize) -> Option<&CellView> {
        self.cells
            .get(board * self.columns() + commit)
            .filter(|c| c.board == board && c.commit == commit)
            .or_else(|| {
                self.cells
                    .iter()
                    .find(|c| c.board == board && c.commit == commit)
            })
    }

    /// The column's label: the commit's short hash, or `HEAD`.
    pub fn column_label(&self, commit: usize) -> String {
        self.commits
            .get(commit)
            .map(|c| c.chars().take(12).collect())
            .unwrap_or_else(|| "HEAD".into())
    }
}

/// One cell with its log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CellLog {
    /// Job id.
    pub job: i64,
    /// The board.
    pub board: Board,
    /// Board index.
    pub board_index: usize,
    /// The commit (None for the head).
    pub commit: Option<String>,
    /// Column index.
    pub commit_index: usize,
    /// Final status, once known.
    pub status: Option<ResultStatus>,
    /// The task that produced it.
    pub task: Option<i64>,
    /// The build's log.
    pub log: Option<String>,
}

/// A machine an agent offered.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MachineView {
    /// Machine name.
    pub name: String,
    /// One line for people.
    pub summary: String,
}

/// A task an agent holds now.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaseView {
    /// Agent name.
    pub agent: String,
    /// Its toolchain.
    pub toolchain: String,
    /// Machine the task runs on.
    pub machine: String,
    /// Job id.
    pub job: i64,
    /// Task id.
    pub task: i64,
    /// Handed out, Unix seconds.
    pub issued: f64,
    /// Lease runs out, Unix seconds.
    pub expires: f64,
}

/// An agent that asked for work recently.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentView {
    /// Host name the agent gave.
    pub name: String,
    /// Its toolchain (one agent instance per toolchain).
    pub toolchain: String,
    /// Its key fingerprint, when it sent one.
    pub fingerprint: Option<String>,
    /// Where it asked from.
    pub address: Option<String>,
    /// Last task request, Unix seconds.
    pub last_seen: f64,
    /// Task requests since the controller started.
    pub requests: u64,
    /// The machines of its last request.
    pub machines: Vec<MachineView>,
    /// Tasks it holds.
    pub tasks: Vec<LeaseView>,
}

/// Cell counts keyed the way views show them.
pub fn count_key(status: Option<ResultStatus>) -> String {
    status.map_or_else(|| "pending".to_string(), |s| s.as_str().to_string())
}
