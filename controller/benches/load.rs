//! Load test: N simulated agents poll the controller concurrently, each
//! once a second, for a fixed time; every task they get is answered at
//! once with a fake result (every cell `success`, a 200-byte log each).
//! Then a shorter idle phase with nothing to hand out. Loopback only,
//! bounded, stops by itself.
//!
//! `cargo bench -p bbot-controller --bench load` (release build of the
//! controller). Knobs: BBOT_LOAD_AGENTS (200), BBOT_LOAD_SECS (60),
//! BBOT_LOAD_IDLE_SECS (15), BBOT_LOAD_SYNC (full|normal), BBOT_LOAD_COMMITS
//! (3, cells per task), BBOT_LOAD_NICE (0; e.g. -10 to favour the
//! controller on a shared machine). Figures and conditions:
//! controller/BENCH.md.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use manifests::{
    Document, MachineHeader, OperationResult, ResultManifest, ResultRequestManifest, ResultStatus,
    TaskManifest, TaskRequestManifest, TaskResponseManifest,
};

const MACHINE: &str = "x86_64-debian_12-uboot";

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Default)]
struct Samples {
    task: Vec<Duration>,
    result: Vec<Duration>,
    tasks_got: usize,
    failures: Vec<String>,
}

fn request_text(agent: &str, machine: &str) -> String {
    TaskRequestManifest {
        agent: agent.into(),
        toolchain_name: "default".into(),
        toolchain_version: "0.1.0".into(),
        interactive_mode: None,
        interactive_login: None,
        fingerprint: None,
        auxiliary_ram: None,
        machines: vec![MachineHeader {
            id: "m-1".into(),
            name: machine.into(),
            summary: "load test machine".into(),
            role: None,
            ram_minimum: None,
            ram_maximum: None,
            extra: Vec::new(),
        }],
        extra: Vec::new(),
    }
    .to_text()
    .expect("request")
}

fn fake_result(task: &TaskManifest) -> ResultManifest {
    let mut r = ResultManifest::new(task.name.clone(), task.version.clone());
    for b in &task.boards {
        for (i, c) in task.commits.iter().enumerate() {
            r.push_operation(OperationResult {
                name: TaskManifest::operation_name(b, i),
                status: ResultStatus::Success,
                log: Some(format!(
                    "{:<200}\n",
                    format!("fake build of {} at {c}", b.target)
                )),
            });
        }
    }
    r
}

/// A keep-alive HTTP/1.1 connection, as lean as possible: the simulated
/// agents share the controller's two cores, and a heavier client (reqwest
/// runs a runtime thread per blocking client) would measure itself.
struct Conn {
    addr: String,
    stream: Option<BufReader<TcpStream>>,
}

impl Conn {
    fn new(url: &str) -> Self {
        let addr = url
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap_or_default()
            .to_string();
        Self { addr, stream: None }
    }

    fn post(&mut self, target: &str, body: &str) -> std::io::Result<(u16, String)> {
        if self.stream.is_none() {
            let s = TcpStream::connect(&self.addr)?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(Duration::from_secs(30)))?;
            self.stream = Some(BufReader::new(s));
        }
        let r = self.exchange(target, body);
        if r.is_err() {
            self.stream = None;
        }
        r
    }

    fn exchange(&mut self, target: &str, body: &str) -> std::io::Result<(u16, String)> {
        let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
        let s = self.stream.as_mut().ok_or_else(|| bad("not connected"))?;
        let head = format!(
            "POST {target} HTTP/1.1\r\nHost: {}\r\nContent-Type: text/manifest\r\nContent-Length: {}\r\n\r\n",
            self.addr,
            body.len()
        );
        let w = s.get_mut();
        w.write_all(head.as_bytes())?;
        w.write_all(body.as_bytes())?;
        let mut line = String::new();
        s.read_line(&mut line)?;
        let status: u16 = line
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| bad("bad status line"))?;
        let mut length = 0usize;
        loop {
            line.clear();
            s.read_line(&mut line)?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((n, v)) = l.split_once(':') {
                if n.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().map_err(|_| bad("bad length"))?;
                }
            }
        }
        let mut buf = vec![0; length];
        s.read_exact(&mut buf)?;
        Ok((status, String::from_utf8_lossy(&buf).into_owned()))
    }
}

/// One agent offering `machine`: polls every second (phase offset
/// `offset`) until `end`.
fn agent(
    name: String,
    machine: &str,
    url: String,
    offset: Duration,
    start: Instant,
    end: Instant,
) -> Samples {
    let mut conn = Conn::new(&url);
    let body = request_text(&name, machine);
    let mut s = Samples::default();
    let mut tick = start + offset;
    while tick < end {
        if let Some(wait) = tick.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        tick += Duration::from_secs(1);
        let t = Instant::now();
        let resp = conn.post("/?build-task", &body);
        s.task.push(t.elapsed());
        let text = match resp {
            Ok((200, text)) => text,
            Ok((code, text)) => {
                s.failures.push(format!("task request {code}: {text}"));
                continue;
            }
            Err(e) => {
                s.failures.push(format!("task request: {e}"));
                continue;
            }
        };
        let Ok(resp) = TaskResponseManifest::parse(text.as_bytes(), "response") else {
            s.failures.push("unparsable task response".into());
            continue;
        };
        let Some(task) = resp.task else { continue };
        s.tasks_got += 1;
        let upload = ResultRequestManifest {
            session: resp.session,
            challenge: None,
            agent_checksum: None,
            result: fake_result(&task),
            extra: Vec::new(),
        }
        .to_text()
        .expect("result");
        let target = resp
            .result_url
            .as_deref()
            .and_then(|u| u.find("/?").map(|i| u[i..].to_string()))
            .unwrap_or_else(|| "/?build-result".into());
        let t = Instant::now();
        let r = conn.post(&target, &upload);
        s.result.push(t.elapsed());
        match r {
            Ok((200, _)) => {}
            Ok((code, _)) => s.failures.push(format!("result {code}")),
            Err(e) => s.failures.push(format!("result: {e}")),
        }
    }
    s
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i].as_secs_f64() * 1000.0
}

fn phase(
    url: &str,
    agents: usize,
    secs: u64,
    label: &'static str,
    machine: &'static str,
) -> Samples {
    let start = Instant::now() + Duration::from_millis(500);
    let end = start + Duration::from_secs(secs);
    let barrier = Arc::new(Barrier::new(agents));
    let all = Arc::new(Mutex::new(Samples::default()));
    let threads: Vec<_> = (0..agents)
        .map(|i| {
            let (url, barrier, all) = (url.to_string(), Arc::clone(&barrier), Arc::clone(&all));
            // Spread the polls over the second, as independent agents are.
            let offset = Duration::from_secs(1).mul_f64(i as f64 / agents as f64);
            std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || {
                    barrier.wait();
                    let s = agent(
                        format!("{label}-agent-{i}"),
                        machine,
                        url,
                        offset,
                        start,
                        end,
                    );
                    let mut a = all.lock().expect("lock");
                    a.task.extend(s.task);
                    a.result.extend(s.result);
                    a.tasks_got += s.tasks_got;
                    a.failures.extend(s.failures);
                })
                .expect("thread")
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    Arc::try_unwrap(all)
        .ok()
        .expect("samples")
        .into_inner()
        .expect("lock")
}

fn report(label: &str, secs: u64, mut s: Samples) -> usize {
    println!(
        "{label}: {} task requests ({:.1}/s), {} tasks handed out, {} results ({:.1}/s), {} failed",
        s.task.len(),
        s.task.len() as f64 / secs as f64,
        s.tasks_got,
        s.result.len(),
        s.result.len() as f64 / secs as f64,
        s.failures.len()
    );
    println!(
        "  task request ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}",
        pct(&mut s.task, 0.5),
        pct(&mut s.task, 0.9),
        pct(&mut s.task, 0.99),
        pct(&mut s.task, 1.0)
    );
    if !s.result.is_empty() {
        println!(
            "  result upload ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}",
            pct(&mut s.result, 0.5),
            pct(&mut s.result, 0.9),
            pct(&mut s.result, 0.99),
            pct(&mut s.result, 1.0)
        );
    }
    for f in s.failures.iter().take(5) {
        println!("  failure: {f}");
    }
    s.failures.len()
}

fn main() {
    let agents: usize = env_or("BBOT_LOAD_AGENTS", 200);
    let secs: u64 = env_or("BBOT_LOAD_SECS", 60);
    let idle: u64 = env_or("BBOT_LOAD_IDLE_SECS", 15);
    let commits: usize = env_or("BBOT_LOAD_COMMITS", 3);
    let sync: String = env_or("BBOT_LOAD_SYNC", "full".to_string());
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("data");
    // BBOT_LOAD_NICE=-10 runs the controller at a higher CPU priority than
    // the simulated agents and whatever else shares the machine.
    let nice: i32 = env_or("BBOT_LOAD_NICE", 0);
    let mut child = Command::new("nice")
        .arg(format!("-n{nice}"))
        .arg(env!("CARGO_BIN_EXE_bbot-controller"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--log",
            "warn",
            "--lease",
            "600",
        ])
        .args(["--sync", &sync, "--data"])
        .arg(&data)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("controller");
    let mut url = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut url)
        .expect("url");
    let url = url.trim().to_string();
    // Enough work for every poll of the busy phase.
    let tasks_needed = agents * secs as usize + agents;
    let per_job = 1000;
    let http = reqwest::blocking::Client::new();
    let commit_list: Vec<String> = (0..commits)
        .map(|i| format!("{:08x}", 0xc0ffee00u32 + i as u32))
        .collect();
    for j in 0..tasks_needed.div_ceil(per_job) {
        let boards: Vec<String> = (0..per_job).map(|b| format!("board{j}_{b} arm")).collect();
        let job = serde_json::json!({
            "repository": "https://example.org/u-boot.git",
            "ref": "master",
            "commits": commit_list,
            "boards": boards,
            "machine": "x86_64-*",
            "boards_per_task": 1,
        });
        let r = http
            .post(format!("{url}api/jobs"))
            .header("Content-Type", "application/json")
            .body(job.to_string())
            .send()
            .expect("submit");
        assert_eq!(r.status().as_u16(), 201);
    }
    println!(
        "load: {agents} agents polling every second, {secs} s busy + {idle} s idle, sync={sync}, \
         nice={nice}, {commits} cells per task, {} tasks queued",
        tasks_needed.div_ceil(per_job) * per_job
    );
    let busy = phase(&url, agents, secs, "busy", MACHINE);
    let mut failed = report("busy", secs, busy);
    if idle > 0 {
        // A machine no job wants: every poll is answered "no task".
        let s = phase(&url, agents, idle, "idle", "riscv64-none");
        assert_eq!(s.tasks_got, 0);
        failed += report("idle", idle, s);
    }
    let metrics = http
        .get(format!("{url}metrics"))
        .send()
        .and_then(|r| r.text())
        .unwrap_or_default();
    for line in metrics.lines().filter(|l| {
        l.starts_with(
            "bbot_controller_http_request_duration_seconds_bucket{route=\"task\",le=\"0.05\"",
        ) || l.starts_with("bbot_controller_http_request_duration_seconds_count{route=\"task\"")
            || l.starts_with(
                "bbot_controller_http_request_duration_seconds_bucket{route=\"result\",le=\"0.05\"",
            )
            || l.starts_with("bbot_controller_http_request_duration_seconds_count{route=\"result\"")
            || l.starts_with("bbot_controller_cells{")
            || l.starts_with("bbot_controller_database_bytes")
    }) {
        println!("  server: {line}");
    }
    // CPU the controller used (utime + stime, clock ticks of 100 Hz).
    if let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", child.id())) {
        let f: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        let ticks: u64 = f.get(11).and_then(|u| u.parse().ok()).unwrap_or(0)
            + f.get(12).and_then(|s| s.parse().ok()).unwrap_or(0);
        println!(
            "  controller CPU: {:.1} s over {} s ({:.0}% of one core)",
            ticks as f64 / 100.0,
            secs + idle,
            ticks as f64 / (secs + idle) as f64
        );
    }
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
    let size: u64 = std::fs::read_dir(&data)
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0);
    println!(
        "database after stop (checkpointed): {:.1} MiB",
        size as f64 / 1048576.0
    );
    assert_eq!(failed, 0, "requests failed");
}
