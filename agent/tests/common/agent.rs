//! Runs the `bbot-agent` binary as a child process, captures its stderr and
//! sends it signals, the way systemd would.

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running agent.
pub struct AgentProc {
    child: Child,
    stderr: Arc<Mutex<String>>,
}

/// A header manifest for `--fake-machine`.
pub const FAKE_MACHINE: &str = ": 1\nid: linux-1\nname: linux\nsummary: fake test machine\n";

impl AgentProc {
    /// Starts `bbot-agent args...`.
    pub fn spawn<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Self {
        Self::start(Command::new(env!("CARGO_BIN_EXE_bbot-agent")).args(args))
    }

    /// Starts `bbot-agent args...` inside the test's cgroup `group` (as
    /// systemd starts a unit in its delegated group).
    pub fn spawn_in<S: AsRef<std::ffi::OsStr>>(
        args: &[S],
        group: &super::cgroup::TestCgroup,
    ) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_bbot-agent"));
        cmd.args(args);
        group.join_on_spawn(&mut cmd);
        Self::start(&mut cmd)
    }

    fn start(cmd: &mut Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start bbot-agent");
        let stderr: Arc<Mutex<String>> = Arc::default();
        let mut pipe = child.stderr.take().expect("stderr pipe");
        let sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .expect("lock")
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Self { child, stderr }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (e.g. "TERM", "HUP").
    pub fn signal(&self, signal: &str) {
        let st = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill");
        assert!(st.success(), "kill -{signal} failed");
    }

    /// What the agent logged so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("lock").clone()
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits up to `timeout` for exit; panics (with the log) if it does not.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let end = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                // Let the stderr thread drain.
                std::thread::sleep(Duration::from_millis(50));
                return st;
            }
            if Instant::now() > end {
                let _ = self.child.kill();
                panic!(
                    "agent did not exit within {timeout:?}; log:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then wait for a clean exit (status 0) and return the log.
    pub fn stop(&mut self) -> String {
        self.signal("TERM");
        let st = self.wait(Duration::from_secs(15));
        let log = self.stderr();
        assert_eq!(st.code(), Some(0), "agent exit status {st:?}; log:\n{log}");
        assert!(!log.contains("panicked"), "agent panicked:\n{log}");
        log
    }
}

impl Drop for AgentProc {
    /// A test that fails while the agent runs (a panic unwinds through
    /// here) stops it the way systemd would: SIGTERM first, so that it
    /// forces its VM down and deletes its snapshot, and SIGKILL only if it
    /// has not exited after 20 s. A bare SIGKILL would leave a running
    /// QEMU behind (the agent cleans up only when it gets to).
    fn drop(&mut self) {
        if !self.running() {
            return;
        }
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) on our own child's pid; no memory involved.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
            let end = Instant::now() + Duration::from_secs(20);
            while Instant::now() < end && self.running() {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        if self.running() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// A scratch directory for an agent with `--fake-machine` and
/// `--fake-build`: the machine file and a state directory.
pub struct Scratch {
    dir: tempfile::TempDir,
}

impl Default for Scratch {
    fn default() -> Self {
        Self::new()
    }
}

impl Scratch {
    /// A fresh one.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("machine"), FAKE_MACHINE).expect("machine");
        Self { dir }
    }
    /// The directory itself.
    pub fn path(&self) -> &std::path::Path {
        self.dir.path()
    }
    /// The fake machine file.
    pub fn machine(&self) -> std::path::PathBuf {
        self.dir.path().join("machine")
    }
    /// The agent's `--state`.
    pub fn state(&self) -> std::path::PathBuf {
        self.dir.path().join("state")
    }
    /// Instance 1's own state directory inside `--state`.
    pub fn instance_state(&self) -> std::path::PathBuf {
        self.state().join("instance-1")
    }
    /// Results waiting in the spool.
    pub fn spooled(&self) -> usize {
        std::fs::read_dir(self.instance_state().join("results"))
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".manifest"))
                    .count()
            })
            .unwrap_or(0)
    }
    /// Common arguments: fake machine and build, our state dir, chatty log,
    /// a 2 s request timeout and no retries.
    pub fn args(&self, extra: &[&str]) -> Vec<String> {
        self.args_retrying(0, extra)
    }
    /// [`Scratch::args`] with `--request-retries retries`.
    pub fn args_retrying(&self, retries: u32, extra: &[&str]) -> Vec<String> {
        self.args_with(2, retries, extra)
    }
    /// [`Scratch::args`] with `--request-timeout request_timeout` and
    /// `--request-retries retries`.
    pub fn args_with(&self, request_timeout: u32, retries: u32, extra: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = vec![
            "--fake-machine".into(),
            self.machine().display().to_string(),
            "--fake-build".into(),
            "--state".into(),
            self.state().display().to_string(),
            "--verbose".into(),
            "2".into(),
            "--request-timeout".into(),
            request_timeout.to_string(),
            "--request-retries".into(),
            retries.to_string(),
        ];
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    }
}
