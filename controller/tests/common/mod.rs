//! Shared by the controller's integration tests: the real `bbot-controller`
//! binary as a child process on loopback, HTTP helpers that speak the
//! agent's wire format (the manifests crate, exactly as the agent does),
//! and the real `bbot-agent` binary.
#![allow(dead_code)]

pub mod agent;
pub mod browser;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use bbot_controller::views::JobView;
use manifests::{
    Document, MachineHeader, OperationResult, ResultManifest, ResultRequestManifest, ResultStatus,
    TaskManifest, TaskRequestManifest, TaskResponseManifest,
};

/// Generous bound for anything a test waits for.
pub const WAIT: Duration = Duration::from_secs(60);

/// Polls `f` until it returns `Some`, or panics after `timeout` naming `what`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A running controller.
pub struct Controller {
    child: Option<Child>,
    /// Base URL, ending in `/`.
    pub url: String,
    /// Its `--data`.
    pub data: PathBuf,
    port: u16,
    args: Vec<String>,
    log: Arc<Mutex<String>>,
    _tmp: Option<tempfile::TempDir>,
}

impl Controller {
    /// Starts `bbot-controller serve` on a fresh data directory and a free
    /// loopback port, with `args` added.
    pub fn start(args: &[&str]) -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data = tmp.path().join("data");
        let mut c = Self::spawn(
            &data,
            0,
            args.iter().map(|s| s.to_string()).collect(),
            Arc::default(),
        );
        c._tmp = Some(tmp);
        c
    }

    fn spawn(data: &Path, port: u16, args: Vec<String>, log: Arc<Mutex<String>>) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_bbot-controller"))
            .arg("serve")
            .arg("--data")
            .arg(data)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .args(&args)
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start bbot-controller");
        let mut stderr = child.stderr.take().expect("stderr");
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .expect("lock")
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let url = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_default()
            .trim()
            .to_string();
        assert!(
            url.starts_with("http://127.0.0.1:"),
            "controller did not print its URL; log:\n{}",
            log.lock().expect("lock")
        );
        let port = url
            .trim_start_matches("http://127.0.0.1:")
            .trim_end_matches('/')
            .parse()
            .expect("port");
        Self {
            child: Some(child),
            url,
            data: data.to_path_buf(),
            port,
            args,
            log,
            _tmp: None,
        }
    }

    /// The task request URL (`?build-task`).
    pub fn task_url(&self) -> String {
        format!("{}?build-task", self.url)
    }

    /// The result URL (`?build-result`).
    pub fn result_url(&self) -> String {
        format!("{}?build-result", self.url)
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        self.log.lock().expect("lock").clone()
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same data directory and port (after [`kill`]).
    pub fn restart(&mut self) {
        self.kill();
        let tmp = self._tmp.take();
        let log = Arc::clone(&self.log);
        log.lock().expect("lock").push_str("\n=== restart ===\n");
        *self = Self::spawn(&self.data.clone(), self.port, self.args.clone(), log);
        self._tmp = tmp;
    }

    /// SIGTERM and a clean exit; returns the log.
    pub fn stop(&mut self) -> String {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let end = Instant::now() + Duration::from_secs(20);
            loop {
                if let Ok(Some(st)) = c.try_wait() {
                    assert!(st.success(), "controller exit {st:?}; log:\n{}", self.log());
                    break;
                }
                assert!(Instant::now() < end, "controller did not stop");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        std::thread::sleep(Duration::from_millis(50));
        let log = self.log();
        assert!(!log.contains("panicked"), "controller panicked:\n{log}");
        log
    }

    /// Submits a job (JSON) through the API; returns its id.
    pub fn submit(&self, job: serde_json::Value) -> i64 {
        let (status, body) = http()
            .post(format!("{}api/jobs", self.url))
            .header("Content-Type", "application/json")
            .body(job.to_string())
            .send()
            .map(|r| (r.status().as_u16(), r.text().unwrap_or_default()))
            .expect("submit");
        assert_eq!(status, 201, "submit: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        v["id"].as_i64().expect("id")
    }

    /// The job as the API shows it.
    pub fn job(&self, id: i64) -> JobView {
        let text = get(&format!("{}api/jobs/{id}", self.url)).1;
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("job JSON: {e}: {text}"))
    }

    /// `/metrics`.
    pub fn metrics(&self) -> String {
        get(&format!("{}metrics", self.url)).1
    }

    /// A sample's value in `/metrics` (`name{labels}` as printed).
    pub fn metric(&self, sample: &str) -> Option<f64> {
        self.metrics()
            .lines()
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
    }

    /// Waits until job `id` is finished and returns it.
    pub fn wait_finished(&self, id: i64, timeout: Duration) -> JobView {
        let end = Instant::now() + timeout;
        loop {
            let j = self.job(id);
            if j.finished.is_some() {
                return j;
            }
            assert!(
                Instant::now() < end,
                "job {id} not finished: {:?}\nlog:\n{}",
                j.counts,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A blocking HTTP client like the agent's.
pub fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// GET: status and body.
pub fn get(url: &str) -> (u16, String) {
    let r = http().get(url).send().expect("GET");
    (r.status().as_u16(), r.text().unwrap_or_default())
}

/// POSTs a manifest as the agent does: status and body.
pub fn post_manifest(url: &str, body: &str) -> (u16, String) {
    let r = http()
        .post(url)
        .header("Content-Type", "text/manifest")
        .body(body.to_string())
        .send()
        .expect("POST");
    (r.status().as_u16(), r.text().unwrap_or_default())
}

/// A task request from `agent` offering `machines`.
pub fn task_request(agent: &str, machines: &[&str], fingerprint: Option<&str>) -> String {
    TaskRequestManifest {
        agent: agent.into(),
        toolchain_name: "default".into(),
        toolchain_version: "0.1.0".into(),
        interactive_mode: None,
        interactive_login: None,
        fingerprint: fingerprint.map(String::from),
        auxiliary_ram: None,
        machines: machines
            .iter()
            .map(|m| MachineHeader {
                id: format!("{m}-1"),
                name: m.to_string(),
                summary: format!("test machine {m}"),
                role: None,
                ram_minimum: None,
                ram_maximum: None,
                extra: Vec::new(),
            })
            .collect(),
        extra: Vec::new(),
    }
    .to_text()
    .expect("task request text")
}

/// Asks for a task; returns the parsed response (asserting 200).
pub fn ask(c: &Controller, agent: &str, machines: &[&str]) -> TaskResponseManifest {
    let (status, body) = post_manifest(&c.task_url(), &task_request(agent, machines, None));
    assert_eq!(status, 200, "task request: {body}");
    TaskResponseManifest::parse(body.as_bytes(), "response").expect("task response")
}

/// A result for `task` with `status_of(target, commit_upto, commit)` per
/// cell (`None` leaves the cell out), logs naming board and commit.
pub fn result_for(
    task: &TaskManifest,
    status_of: impl Fn(&str, usize, &str) -> Option<ResultStatus>,
) -> ResultManifest {
    let mut r = ResultManifest::new(task.name.clone(), task.version.clone());
    let commits: Vec<&str> = if task.commits.is_empty() {
        vec!["HEAD"]
    } else {
        task.commits.iter().map(String::as_str).collect()
    };
    for b in &task.boards {
        for (i, c) in commits.iter().enumerate() {
            if let Some(st) = status_of(&b.target, i, c) {
                r.push_operation(OperationResult {
                    name: TaskManifest::operation_name(b, i),
                    status: st,
                    log: Some(format!("built {} at {c}: {st}\n", b.target)),
                });
            }
        }
    }
    r
}

/// The result request text for `session`.
pub fn result_request(session: &str, signature: Option<String>, result: ResultManifest) -> String {
    ResultRequestManifest {
        session: session.into(),
        challenge: signature,
        agent_checksum: None,
        result,
        extra: Vec::new(),
    }
    .to_text()
    .expect("result request text")
}

/// Takes a task for `agent` and reports every cell with `status`.
pub fn take_and_report(c: &Controller, agent: &str, machine: &str, status: ResultStatus) -> bool {
    let resp = ask(c, agent, &[machine]);
    let Some(task) = resp.task else {
        return false;
    };
    let r = result_for(&task, |_, _, _| Some(status));
    let (st, body) = post_manifest(
        resp.result_url.as_deref().expect("result-url"),
        &result_request(&resp.session, None, r),
    );
    assert_eq!(st, 200, "{body}");
    true
}
