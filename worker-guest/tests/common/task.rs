//! Running `worker-guest task` against a TFTP server and reading back the
//! result it uploads.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use manifests::{Document, ResultManifest};

use super::tftp::wait_for_file;
use super::worker_bin;

/// `worker-guest task` against `server` with `HOME` in `home` (no
/// ~/.buildman there: toolchains come from PATH).
pub fn task_command(server: &str, work: &Path, home: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(worker_bin());
    cmd.args(["task", "--tftp", server, "--work-dir"])
        .arg(work)
        .args(["-T", "2"])
        .args(extra)
        .env("HOME", home)
        .env_remove("RUST_LOG");
    cmd
}

/// Runs [`task_command`].
pub fn run_task(server: &str, work: &Path, home: &Path, extra: &[&str]) -> Output {
    task_command(server, work, home, extra)
        .output()
        .expect("run worker-guest task")
}

/// The uploaded result: the served `manifest` is overwritten by the PUT;
/// wait until the file parses as a result and stops changing (the server
/// may finish writing just after acknowledging the last block).
pub fn uploaded_result(dir: &Path) -> ResultManifest {
    let path = dir.join("manifest");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last: Option<Vec<u8>> = None;
    loop {
        let bytes = wait_for_file(&path, Duration::from_secs(10), |b| {
            ResultManifest::parse(b, "result").is_ok()
        });
        if last.as_ref() == Some(&bytes) {
            return ResultManifest::parse(&bytes, "result").expect("result parses");
        }
        last = Some(bytes);
        assert!(Instant::now() < deadline, "result kept changing");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn show(out: &Output) -> String {
    format!(
        "status {}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    )
}
