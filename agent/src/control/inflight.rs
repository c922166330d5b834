//! Tasks in flight, recorded under the state directory while their VM runs,
//! so that a task whose agent died (SIGKILL, panic-abort, the watchdog's
//! SIGABRT, a power cut) still gets a result: at the next start the record
//! becomes an `interrupt` result with a `machine` operation saying so, which
//! goes through the spool like any result. The controller can then hand the
//! task out again at once instead of waiting hours for its own timeout.
//!
//! A record is one manifest stream, written atomically before the VM
//! starts: a header (`agent-pid`), then the task response as the controller
//! sent it (session, challenge, result URL, task). It is removed once the
//! task's real result is in the spool. Should the agent die between the
//! two, recovery sees the spooled result for the session and sends nothing
//! more: every session gets exactly one result.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use manifests::{
    parse_stream, serialize_stream, Document, Manifest, OperationResult, ResultRequestManifest,
    ResultStatus, TaskResponseManifest,
};

use crate::base::fsutil;
use crate::control::auth::AgentKey;
use crate::control::spool::Spool;
use crate::control::task::{status_result, MACHINE_OPERATION};
use crate::control::work_loop::answer_challenge;

const PID_NAME: &str = "agent-pid";
const SUFFIX: &str = ".manifest";

/// A record could not be written.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct InFlightError {
    /// The file or directory concerned.
    pub path: PathBuf,
    /// What went wrong.
    pub message: String,
}

/// The records' directory (`<state>/in-flight`).
#[derive(Debug, Clone)]
pub struct InFlight {
    dir: PathBuf,
}

/// One recorded task, to be cleared with [`InFlight::done`].
#[derive(Debug)]
pub struct Record {
    path: PathBuf,
}

impl InFlight {
    /// Opens (creating it if needed) the directory under `state_dir`.
    pub fn open(state_dir: &Path) -> Result<Self, InFlightError> {
        let dir = state_dir.join("in-flight");
        std::fs::create_dir_all(&dir).map_err(|e| InFlightError {
            path: dir.clone(),
            message: e.to_string(),
        })?;
        Ok(Self { dir })
    }

    /// Records a task about to run.
    pub fn record(&self, response: &TaskResponseManifest) -> Result<Record, InFlightError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let pid = std::process::id();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.join(format!("{pid}-{n}{SUFFIX}"));
        let mut header = Manifest::new("in-flight");
        header.push(PID_NAME, pid.to_string());
        let mut stream = vec![header];
        stream.extend(response.to_stream());
        let text = serialize_stream(&stream).map_err(|e| InFlightError {
            path: path.clone(),
            message: e.to_string(),
        })?;
        fsutil::write_atomic(&path, text.as_bytes()).map_err(|e| InFlightError {
            path: path.clone(),
            message: e.to_string(),
        })?;
        Ok(Record { path })
    }

    /// The task's result is safe (spooled or delivered): forget the record.
    pub fn done(&self, record: Record) {
        if let Err(e) = std::fs::remove_file(&record.path) {
            tracing::error!("{}: {e}", record.path.display());
        }
    }

    /// Turns every record of a dead agent into an `interrupt` result in
    /// `spool` (unless the spool already holds a result for its session),
    /// then removes the record. Returns how many results were made.
    pub fn recover(&self, spool: &Spool, key: Option<&AgentKey>) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return 0;
        };
        let mut paths: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.to_str().is_some_and(|s| s.ends_with(SUFFIX)))
            .collect();
        paths.sort();
        if paths.is_empty() {
            return 0;
        }
        let spooled = spooled_sessions(spool);
        let me = std::process::id();
        let mut made = 0;
        for path in paths {
            let (pid, response) = match load(&path) {
                Ok(x) => x,
                Err(why) => {
                    tracing::error!("{}: unusable in-flight record: {why}", path.display());
                    let mut bad = path.clone().into_os_string();
                    bad.push(".corrupt");
                    let _ = std::fs::rename(&path, &bad);
                    continue;
                }
            };
            if pid == me || fsutil::process_alive(pid, "bbot-agent") {
                continue;
            }
            let (Some(task), Some(url)) = (&response.task, &response.result_url) else {
                let _ = std::fs::remove_file(&path);
                continue;
            };
            if spooled.contains(&response.session) {
                tracing::info!(
                    "task {} {} of dead agent {pid}: its result is already spooled",
                    task.name,
                    task.version
                );
            } else {
                let mut result = status_result(task, ResultStatus::Skip);
                result.push_operation(OperationResult {
                    name: MACHINE_OPERATION.to_string(),
                    status: ResultStatus::Interrupt,
                    log: Some(format!(
                        "the agent (pid {pid}) died while this task ran; \
                         its VM is gone and the task can be built again\n"
                    )),
                });
                let req = ResultRequestManifest {
                    session: response.session.clone(),
                    challenge: answer_challenge(response.challenge.as_deref(), key),
                    agent_checksum: None,
                    result,
                    extra: Vec::new(),
                };
                if let Err(e) = spool.add(url, &req) {
                    // Keep the record: the next start tries again.
                    tracing::error!(
                        "cannot spool the interrupt result of task {} {}: {e}",
                        task.name,
                        task.version
                    );
                    continue;
                }
                tracing::warn!(
                    "task {} {} was in flight when agent {pid} died: reporting interrupt",
                    task.name,
                    task.version
                );
                made += 1;
            }
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::error!("{}: {e}", path.display());
            }
        }
        made
    }
}

/// Sessions with a result waiting in the spool.
fn spooled_sessions(spool: &Spool) -> HashSet<String> {
    spool
        .pending()
        .unwrap_or_default()
        .into_iter()
        .map(|s| s.session)
        .collect()
}

fn load(path: &Path) -> Result<(u32, TaskResponseManifest), String> {
    let text = std::fs::read(path).map_err(|e| e.to_string())?;
    let source = path.display().to_string();
    let stream = parse_stream(&text, &source).map_err(|e| e.to_string())?;
    let (header, rest) = stream.split_first().ok_or("empty")?;
    let pid = header
        .get(PID_NAME)
        .and_then(|p| p.parse().ok())
        .ok_or("no agent-pid")?;
    let response = TaskResponseManifest::from_stream(rest, &source).map_err(|e| e.to_string())?;
    Ok((pid, response))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(session: &str) -> TaskResponseManifest {
        let text = format!(
            ": 1\nsession: {session}\nresult-url: http://c/?build-result\n:\nname: u-boot\n\
             version: 1\nrepository-url: https://x/u.git#m\nmachine: m\n\
             target: x86_64-linux-gnu\nboard: sandbox sandbox\n"
        );
        TaskResponseManifest::parse(text.as_bytes(), "test").unwrap()
    }

    #[test]
    fn a_dead_agents_task_becomes_one_interrupt_result() {
        let state = tempfile::tempdir().unwrap();
        let spool = Spool::open(state.path()).unwrap();
        let f = InFlight::open(state.path()).unwrap();
        // A live record of this agent stays; "dead" ones are faked by
        // rewriting the pid to 1 (init, never a bbot-agent).
        let live = f.record(&response("live")).unwrap();
        let dead = f.record(&response("dead")).unwrap();
        let twice = f.record(&response("spooled")).unwrap();
        for r in [&dead, &twice] {
            let text = std::fs::read_to_string(&r.path).unwrap();
            let text = text.replace(
                &format!("agent-pid: {}", std::process::id()),
                "agent-pid: 1",
            );
            std::fs::write(&r.path, text).unwrap();
        }
        // "spooled" had its real result spooled before its agent died.
        let mut real = status_result(
            response("spooled").task.as_ref().unwrap(),
            ResultStatus::Success,
        );
        real.name = "u-boot".into();
        spool
            .add(
                "http://c/?build-result",
                &ResultRequestManifest {
                    session: "spooled".into(),
                    challenge: None,
                    agent_checksum: None,
                    result: real,
                    extra: Vec::new(),
                },
            )
            .unwrap();
        assert_eq!(f.recover(&spool, None), 1);
        let sessions: Vec<(String, ResultStatus)> = spool
            .pending()
            .unwrap()
            .iter()
            .map(|s| {
                let r = ResultRequestManifest::parse(s.body.as_bytes(), "t").unwrap();
                (r.session, r.result.status)
            })
            .collect();
        assert_eq!(
            sessions,
            [
                ("spooled".to_string(), ResultStatus::Success),
                ("dead".to_string(), ResultStatus::Interrupt)
            ]
        );
        assert!(live.path.exists() && !dead.path.exists() && !twice.path.exists());
        assert_eq!(f.recover(&spool, None), 0, "once only");
        f.done(live);
    }
}
