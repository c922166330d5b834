//! Shared test code: scratch directories, the fixture tree, and a handle on
//! a spawned `worker-guest --worker` talking over pipes.

#![allow(dead_code)]

pub mod boss;
pub mod fixture;
pub mod task;
pub mod tftp;
pub mod uboot;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// A scratch directory under cargo's per-target temporary directory,
/// removed when dropped (kept if `KEEP_TEST_DIRS` is set).
pub struct TestDir {
    pub path: PathBuf,
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

impl TestDir {
    pub fn new(name: &str) -> TestDir {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create test dir");
        TestDir { path }
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::env::var_os("KEEP_TEST_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// The toolchains the tests hand to the worker in `configure`.
pub fn toolchains() -> Value {
    json!({
        "sandbox": "/usr/bin/gcc",
        "aarch64": "/usr/bin/aarch64-linux-gnu-gcc",
    })
}

/// The worker binary under test.
pub fn worker_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_worker-guest"))
}

/// A running worker process and its protocol streams.
pub struct Worker {
    pub child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<Option<String>>,
    /// Non-protocol lines seen on stdout (there should be none).
    pub stray: Vec<String>,
    pub stderr_path: PathBuf,
}

impl Worker {
    /// Start `worker-guest --worker -g <work_dir> <extra...>`, with stderr
    /// going to a file in `log_dir`.
    pub fn start(work_dir: &Path, log_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Worker {
        let stderr_path = log_dir.join(format!(
            "worker-stderr-{}.log",
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        let stderr = std::fs::File::create(&stderr_path).expect("create stderr log");
        let mut cmd = Command::new(worker_bin());
        cmd.arg("--worker")
            .arg("-g")
            .arg(work_dir)
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            // Do not let a developer's ~/.buildman change the results.
            .env("HOME", log_dir);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn worker");
        let stdout = child.stdout.take().expect("stdout");
        let stdin = child.stdin.take();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                match line {
                    Ok(l) => {
                        if tx.send(Some(l)).is_err() {
                            return;
                        }
                    }
                    Err(_) => break,
                }
            }
            let _ = tx.send(None);
        });
        Worker {
            child,
            stdin,
            lines: rx,
            stray: Vec::new(),
            stderr_path,
        }
    }

    /// Send one raw line.
    pub fn send_raw(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(line.as_bytes()).expect("write to worker");
        stdin.write_all(b"\n").expect("write to worker");
        stdin.flush().expect("flush to worker");
    }

    /// Send a command.
    pub fn send(&mut self, cmd: Value) {
        self.send_raw(&cmd.to_string());
    }

    /// Close the worker's stdin (the boss going away).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// The next protocol message, or `None` at EOF. Panics after `timeout`.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(Some(line)) => match line.strip_prefix("BM> ") {
                    Some(json) => {
                        return Some(
                            serde_json::from_str(json)
                                .unwrap_or_else(|e| panic!("bad JSON from worker: {e}: {json}")),
                        )
                    }
                    None => self.stray.push(line),
                },
                Ok(None) => return None,
                Err(mpsc::RecvTimeoutError::Disconnected) => return None,
                Err(mpsc::RecvTimeoutError::Timeout) => panic!(
                    "no message from the worker within {timeout:?}; stderr:\n{}",
                    self.stderr()
                ),
            }
        }
    }

    /// The next protocol message (60 s timeout); panics at EOF.
    pub fn recv(&mut self) -> Value {
        match self.recv_timeout(Duration::from_secs(60)) {
            Some(v) => v,
            None => panic!("worker closed stdout; stderr:\n{}", self.stderr()),
        }
    }

    /// Messages up to and including the first whose `resp` is `name`.
    pub fn recv_until(&mut self, name: &str) -> Vec<Value> {
        let mut got = Vec::new();
        loop {
            let m = self.recv();
            let done = m["resp"] == name;
            assert_ne!(m["resp"], "error", "unexpected error: {m}; so far {got:?}");
            got.push(m);
            if done {
                return got;
            }
        }
    }

    /// The worker's stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Wait for the process to exit (with a timeout) and return its status.
    pub fn wait(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                return st;
            }
            assert!(Instant::now() < deadline, "worker did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Expect `ready`, then configure with the test toolchains.
    pub fn handshake(&mut self, settings: Value) -> Value {
        let ready = self.recv();
        assert_eq!(ready["resp"], "ready", "{ready}");
        self.send(json!({"cmd": "configure", "settings": settings, "toolchains": toolchains()}));
        let done = self.recv();
        assert_eq!(done["resp"], "configure_done", "{done}");
        ready
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Processes (pid, command line) whose working directory lies under `dir`.
pub fn processes_under(dir: &Path) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cwd) = std::fs::read_link(format!("/proc/{pid}/cwd")) else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let zombie = stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            == Some("Z");
        if cwd.starts_with(dir) && !zombie {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            found.push((pid, cmdline));
        }
    }
    found
}

/// Results of a build keyed by (board, commit_upto).
pub fn results_by_key(msgs: &[Value]) -> std::collections::BTreeMap<(String, u64), Value> {
    let mut map = std::collections::BTreeMap::new();
    for m in msgs.iter().filter(|m| m["resp"] == "build_result") {
        let key = (
            m["board"].as_str().expect("board").to_string(),
            m["commit_upto"].as_u64().expect("commit_upto"),
        );
        assert!(
            map.insert(key.clone(), m.clone()).is_none(),
            "duplicate result for {key:?}"
        );
    }
    map
}
