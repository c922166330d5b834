//! Task mode: what the guest does in a build VM (PROTOCOLS.md sections 5
//! and 6). GET `manifest` (the task), clone its repository, build every
//! board at every commit through the [`engine`](crate::engine), PUT the
//! result as `manifest`.
//!
//! Whatever goes wrong once the server answered (a task that does not
//! parse, a clone that fails, an engine that cannot start) still ends in an
//! uploaded result, status `abnormal`, whose `worker` operation says what
//! happened: the agent and the controller's users then read the reason in
//! the result instead of guessing from a build timeout.

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;

use manifests::{Board, BuildSetting, ResultManifest, TaskManifest};
use serde_json::{Map, Value};

use crate::build_settings::{BuildSettings, MakeFlags};
use crate::engine::{self, EngineConfig, EngineError, HEARTBEAT_INTERVAL};
use crate::protocol::BoardSpec;
use crate::repository::{self, CloneError, CloneTimeouts};
use crate::results::{self, MAX_RESULT_BYTES};
use crate::settings_file::BuildmanSettings;
use crate::tftp_client::{TftpClient, TftpError};
use crate::toolchain::Toolchains;

/// The file the task is fetched as and the result uploaded as.
pub use manifests::guest::MANIFEST_FILE as MANIFEST;

/// How the guest builds.
#[derive(Debug, Clone)]
pub struct TaskOptions {
    /// Where the repository is cloned (it must not exist or be empty).
    pub work_dir: PathBuf,
    /// CPU threads for the build.
    pub nthreads: usize,
    /// A buildman settings file to take toolchains and make flags from;
    /// `None`: find a compiler per board architecture on `search_path`.
    pub settings_file: Option<BuildmanSettings>,
    /// `PATH`-style list searched for compilers when there is no settings
    /// file.
    pub search_path: OsString,
    /// Time limits of the git commands (clone, checkouts).
    pub git_timeouts: CloneTimeouts,
    /// The agent's mirror of the task's repository (a `git://` URL), from
    /// which only the task's commits are fetched; `None`: clone the task's
    /// `repository-url`.
    pub source: Option<String>,
}

/// Why a task ended without an uploaded result, or why a build could not
/// be made (the latter become the `worker` operation's log).
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// The task manifest could not be fetched.
    #[error("cannot fetch the task manifest: {0}")]
    Fetch(TftpError),
    /// The task names no board.
    #[error("the task names no board to build (expected 'board: <target> <arch>' fields)")]
    NoBoards,
    /// The source could not be cloned.
    #[error("cannot get the source: {0}")]
    Clone(#[from] CloneError),
    /// The engine could not start.
    #[error("cannot start the build: {0}")]
    Engine(#[from] EngineError),
    /// The result could not be serialized.
    #[error("cannot write the result manifest: {0}")]
    Serialize(manifests::Error),
    /// The result could not be uploaded.
    #[error("cannot upload the result: {0}")]
    Upload(TftpError),
}

/// Runs the task the server hands out and uploads its result. Returns the
/// result as uploaded; an error only when no result could be uploaded
/// (the server never answered, or the upload itself failed).
pub fn run_task(client: &TftpClient, opts: &TaskOptions) -> Result<ResultManifest, TaskError> {
    let result = match client.get(MANIFEST) {
        Ok(raw) => perform(&raw, opts),
        // Nobody is listening: an upload would only wait as long again.
        Err(e) if e.is_timeout() => return Err(TaskError::Fetch(e)),
        Err(e) => {
            tracing::error!("cannot fetch the task manifest: {e}");
            results::abnormal_result(
                ResultManifest::new("unknown", "unknown"),
                &TaskError::Fetch(e).to_string(),
            )
        }
    };
    upload(client, result)
}

/// Reports a failure of the guest's own set-up (an unreadable settings
/// file, say) as the task's result: the task is fetched only to name it,
/// and an abnormal result saying `error` is uploaded. An error only when
/// nothing could be uploaded.
pub fn report_failure(client: &TftpClient, error: &str) -> Result<ResultManifest, TaskError> {
    use manifests::Document;
    let base = match client.get(MANIFEST) {
        Ok(raw) => match TaskManifest::parse(&raw, MANIFEST) {
            Ok(task) => results::result_for(&task),
            Err(_) => {
                let (name, version) = results::identity_of_raw(&raw);
                ResultManifest::new(name, version)
            }
        },
        Err(e) if e.is_timeout() => return Err(TaskError::Fetch(e)),
        Err(_) => ResultManifest::new("unknown", "unknown"),
    };
    upload(client, results::abnormal_result(base, error))
}

/// Serializes (within the size cap) and uploads a result.
pub fn upload(
    client: &TftpClient,
    mut result: ResultManifest,
) -> Result<ResultManifest, TaskError> {
    let text = match results::to_text_within(&mut result, MAX_RESULT_BYTES) {
        Ok(text) => text,
        Err(e) => {
            // Cannot happen with sanitized logs; report it rather than
            // upload nothing.
            tracing::error!("cannot serialize the result: {e}");
            let base = ResultManifest::new(&result.name, &result.version);
            result =
                results::abnormal_result(base, &format!("cannot write the result manifest: {e}"));
            results::to_text_within(&mut result, MAX_RESULT_BYTES).map_err(TaskError::Serialize)?
        }
    };
    tracing::info!(
        "uploading the result: status {}, {} operation(s), {} bytes",
        result.status,
        result.operations.len(),
        text.len()
    );
    client
        .put(MANIFEST, text.as_bytes())
        .map_err(TaskError::Upload)?;
    Ok(result)
}

/// Parses and builds a fetched task; never fails: a failure is the
/// returned (abnormal) result.
pub fn perform(raw: &[u8], opts: &TaskOptions) -> ResultManifest {
    use manifests::Document;
    let task = match TaskManifest::parse(raw, MANIFEST) {
        Ok(task) => task,
        Err(e) => {
            tracing::error!("invalid task manifest: {e}");
            let (name, version) = results::identity_of_raw(raw);
            return results::abnormal_result(
                ResultManifest::new(name, version),
                &format!("invalid task manifest: {e}"),
            );
        }
    };
    tracing::info!(
        "task {} {}: {} board(s) × {} commit(s) from {}",
        task.name,
        task.version,
        task.boards.len(),
        task.commits.len().max(1),
        task.repository_url
    );
    match build(&task, opts) {
        Ok(result) => result,
        Err(e) => {
            tracing::error!("{e}");
            results::abnormal_result(results::result_for(&task), &e.to_string())
        }
    }
}

/// The task's boards without repeats (a board named twice would give two
/// operations of one name, which no result manifest can hold).
fn unique_boards(task: &TaskManifest) -> Vec<Board> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for b in &task.boards {
        if seen.insert(b.target.clone()) {
            out.push(b.clone());
        } else {
            tracing::warn!("board {} named more than once; built once", b.target);
        }
    }
    out
}

/// `build-setting` values as the JSON a boss would send in `configure`:
/// `true`/`false` (and yes/no/on/off) as booleans, integers as numbers,
/// anything else as a string, so `no_lto=false` means false.
pub fn settings_json(settings: &[BuildSetting]) -> Map<String, Value> {
    let mut map = Map::new();
    for s in settings {
        let v = s.value.trim();
        let value = match v.to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" => Value::Bool(true),
            "false" | "no" | "off" | "" => Value::Bool(false),
            _ => match v.parse::<i64>() {
                Ok(n) => Value::from(n),
                Err(_) => Value::String(v.to_string()),
            },
        };
        map.insert(s.key.clone(), value);
    }
    map
}

fn build(task: &TaskManifest, opts: &TaskOptions) -> Result<ResultManifest, TaskError> {
    let boards = unique_boards(task);
    if boards.is_empty() {
        return Err(TaskError::NoBoards);
    }
    let (url, reference) = task.repository();
    let head = match &opts.source {
        Some(source) => repository::fetch_from_mirror(
            source,
            reference,
            &task.commits,
            &opts.work_dir,
            opts.git_timeouts,
        )?,
        None => repository::clone(url, reference, &opts.work_dir, opts.git_timeouts)?,
    };
    tracing::info!("source at {head}");
    let toolchains = match &opts.settings_file {
        Some(s) => Toolchains::from_settings(s),
        None => Toolchains::detect(boards.iter().map(|b| b.arch.as_str()), &opts.search_path),
    };
    let make_flags = opts
        .settings_file
        .as_ref()
        .map(MakeFlags::from_settings)
        .unwrap_or_default();
    let cfg = Arc::new(EngineConfig {
        work_dir: opts.work_dir.clone(),
        nthreads: opts.nthreads.max(1),
        settings: BuildSettings::from_json(&settings_json(&task.build_settings)),
        toolchains,
        make_flags,
        heartbeat_interval: HEARTBEAT_INTERVAL,
        git_timeout: opts.git_timeouts.local,
    });
    let specs: Vec<BoardSpec> = boards
        .iter()
        .map(|b| BoardSpec {
            board: b.target.clone(),
            arch: b.arch.clone(),
        })
        .collect();
    let commits = (!task.commits.is_empty()).then(|| task.commits.clone());
    // build_boards logs each board × commit as it finishes.
    let outcomes = engine::build_boards(cfg, &specs, commits)?;
    Ok(results::build_result(
        task,
        &boards,
        task.commits.len(),
        &outcomes,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_become_boss_json() {
        let s = |t: &str| t.parse::<BuildSetting>().unwrap();
        let map = settings_json(&[s("no_lto=true"), s("mrproper=false"), s("x=3"), s("y=abc")]);
        assert_eq!(map["no_lto"], Value::Bool(true));
        assert_eq!(map["mrproper"], Value::Bool(false));
        assert_eq!(map["x"], Value::from(3));
        assert_eq!(map["y"], Value::from("abc"));
        let b = BuildSettings::from_json(&map);
        assert!(b.no_lto && !b.mrproper);
    }

    #[test]
    fn a_task_without_boards_is_abnormal_before_cloning() {
        let work = std::env::temp_dir().join(format!("task-noboard-{}", std::process::id()));
        let opts = TaskOptions {
            work_dir: work.clone(),
            nthreads: 1,
            settings_file: None,
            search_path: OsString::new(),
            git_timeouts: CloneTimeouts::default(),
            source: None,
        };
        let raw = b": 1\nname: fx\nversion: 1\nrepository-url: file:///x\nmachine: m\ntarget: t\n";
        let r = perform(raw, &opts);
        assert_eq!(r.status, manifests::ResultStatus::Abnormal);
        let log = r
            .operation("worker")
            .and_then(|o| o.log.clone())
            .unwrap_or_default();
        assert!(log.contains("names no board"), "{log}");
        assert!(!work.exists(), "nothing cloned");
    }
}
