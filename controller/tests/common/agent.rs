//! The real `bbot-agent` binary, run with its diagnosis modes
//! (`--fake-machine`, `--fake-build`), polling a controller over HTTP.
//!
//! The binary is not built by `cargo test -p bbot-controller` (one package
//! cannot depend on another's binary, and a nested `cargo build` would wait
//! on the build lock this test run holds). It is found next to this test's
//! own target directory (`cargo test --workspace`, as scripts/test runs,
//! builds it; or `cargo build -p bbot-agent` first), or at `$BBOT_AGENT`.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where the agent binary is.
pub fn agent_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("BBOT_AGENT") {
        return PathBuf::from(p);
    }
    // <target>/debug/deps/<test> -> <target>/debug/bbot-agent
    let exe = std::env::current_exe().expect("test executable");
    let candidate = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|d| d.join("bbot-agent"))
        .expect("target directory");
    assert!(
        candidate.exists(),
        "the real bbot-agent binary is needed at {} (run `cargo build -p bbot-agent` with the same \
         CARGO_TARGET_DIR first, or set BBOT_AGENT)",
        candidate.display()
    );
    candidate
}

/// A running agent with a fake machine and fake builds.
pub struct Agent {
    child: Child,
    log: Arc<Mutex<String>>,
    _dir: tempfile::TempDir,
}

impl Agent {
    /// Starts an agent offering `machine`, asking `controller_url`; each
    /// fake build takes `build_secs`.
    pub fn start(machine: &str, controller_url: &str, build_secs: u64) -> Self {
        Self::start_with(machine, controller_url, build_secs, &[])
    }

    /// [`Agent::start`] with `extra` options.
    pub fn start_with(
        machine: &str,
        controller_url: &str,
        build_secs: u64,
        extra: &[&str],
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = dir.path().join("machine");
        std::fs::write(
            &m,
            format!(": 1\nid: {machine}-1\nname: {machine}\nsummary: fake test machine\n"),
        )
        .expect("machine");
        let mut child = Command::new(agent_bin())
            .arg("--fake-machine")
            .arg(&m)
            .arg("--fake-build")
            .args(["--fake-build-result", "success"])
            .arg("--fake-build-duration")
            .arg(build_secs.to_string())
            .arg("--state")
            .arg(dir.path().join("state"))
            .args([
                "--idle-sleep",
                "1",
                "--request-timeout",
                "5",
                "--verbose",
                "3",
            ])
            .args(extra)
            .arg(controller_url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start bbot-agent");
        let log: Arc<Mutex<String>> = Arc::default();
        let mut pipe = child.stderr.take().expect("stderr");
        let sink = Arc::clone(&log);
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
        Self {
            child,
            log,
            _dir: dir,
        }
    }

    /// What it logged.
    pub fn log(&self) -> String {
        self.log.lock().expect("lock").clone()
    }

    /// Sends `signal` ("TERM", "KILL").
    pub fn signal(&self, signal: &str) {
        let st = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(st.success());
    }

    /// Waits for it to exit.
    pub fn wait(&mut self, timeout: Duration) {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("agent did not exit; log:\n{}", self.log());
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
