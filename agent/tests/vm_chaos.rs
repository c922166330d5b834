//! Chaos with real guests: the agent is SIGKILLed 20 times at points
//! spread over bootstrap, task start, build, upload and idle (each phase in
//! turn, at a pseudo-random moment inside it), and restarted each time, on a real loop btrfs
//! with real QEMU guests (TCG) running the scripted worker-guest, which
//! fetches its task, "builds" for a few seconds and uploads a result.
//!
//! After each kill QEMU is gone within seconds (it dies with its agent);
//! after each restart, once the agent has reconciled, no temporary snapshot
//! and no run directory of a dead agent remains; at the end every task that
//! was handed out has exactly one result at the controller (its real one,
//! or `interrupt` when its agent died; a result the controller received
//! while its agent was killed before the 200 is sent again, the same), and
//! the bootstrapped machine is whole. The figures are printed: kill points,
//! leaks found, tasks without a result.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::agent::AgentProc;
use common::controller::{task_response_from, Reply, TestController};
use common::vm::{self, MACHINE};
use manifests::{Document, ResultRequestManifest, ResultStatus};

const KILLS: usize = 20;
const TC: &str = "tc-chaos";

/// What the controller handed out and received.
#[derive(Default)]
struct Ledger {
    /// Sessions in the order handed out.
    handed: Vec<String>,
    /// Per session, the distinct result bodies received (a re-sent result
    /// is the same body).
    results: BTreeMap<String, Vec<String>>,
    /// Hand out tasks (off for the final drain).
    open: bool,
}

/// Where the agent was when killed, from the last telling line of its log.
fn phase(log: &str) -> &'static str {
    let marks = [
        ("bootstrapping ", "bootstrap"),
        ("bootstrapped ", "after bootstrap"),
        ("task of ", "task start"),
        ("guest's first TFTP request", "build"),
        ("guest uploaded its manifest", "build end"),
        ("status: uploading results", "upload"),
        ("result delivered", "after upload"),
        ("status: idle", "idle"),
        ("status: asking controllers", "poll"),
    ];
    let mut best = ("start", 0usize);
    for (needle, name) in marks {
        if let Some(at) = log.rfind(needle) {
            if at >= best.1 {
                best = (name, at);
            }
        }
    }
    // A bootstrap guest's first request is still the bootstrap.
    if best.0 == "build" && log.rfind("bootstrapping ") > log.rfind("task of ") {
        return "bootstrap";
    }
    best.0
}

/// The agent pid in a `-bbot-tmp-<pid>-<n>` or `<machine>-<pid>-<n>` name.
fn owner(name: &str) -> Option<u32> {
    let mut parts = name.rsplitn(3, '-');
    parts.next()?;
    parts.next()?.parse().ok()
}

/// Temporary snapshots and run directories not owned by `live`.
fn leaks(fs: &Path, run: &Path, live: u32) -> Vec<String> {
    let mut v: Vec<String> = common::temporaries(fs)
        .into_iter()
        .filter(|p| {
            p.file_name()
                .and_then(|n| owner(&n.to_string_lossy()))
                .is_none_or(|pid| pid != live)
        })
        .map(|p| p.display().to_string())
        .collect();
    for e in std::fs::read_dir(run).into_iter().flatten().flatten() {
        if owner(&e.file_name().to_string_lossy()).is_none_or(|pid| pid != live) {
            v.push(e.path().display().to_string());
        }
    }
    v
}

#[test]
fn sigkilled_agents_lose_no_task_and_leak_nothing() {
    let (fs, work) = vm::scripted_machine();
    let tftp = work.path().join("tftp");
    let toolchain_dir = tftp.join("toolchain").join(TC);
    std::fs::create_dir_all(&toolchain_dir).expect("toolchain dir");
    std::fs::write(toolchain_dir.join("behaviour"), "builds\n").expect("behaviour");
    let state = work.path().join(format!("state-{TC}"));
    let run = state.join("instance-1/run");

    let repo = vm::TinyRepo::serve(work.path(), None);
    let repo_url = repo.url.clone();
    let ledger: Arc<Mutex<Ledger>> = Arc::new(Mutex::new(Ledger {
        open: true,
        ..Ledger::default()
    }));
    let result_url: Arc<std::sync::OnceLock<String>> = Default::default();
    let (l, slot) = (Arc::clone(&ledger), Arc::clone(&result_url));
    let ctl = TestController::start(move |req, i| {
        let mut l = l.lock().expect("ledger");
        if req.path.starts_with("/result") {
            if let Ok(r) = ResultRequestManifest::parse(req.body.as_bytes(), "result") {
                let bodies = l.results.entry(r.session).or_default();
                if !bodies.contains(&req.body) {
                    bodies.push(req.body.clone());
                }
            }
            // Slow answers, so that kills also land in uploads.
            return Reply {
                delay: Duration::from_secs(3),
                ..Reply::ok("")
            };
        }
        // Every third request finds nothing: idle rounds.
        if !l.open || i % 3 == 2 {
            return Reply::no_task();
        }
        let session = format!("chaos-{}", l.handed.len() + 1);
        l.handed.push(session.clone());
        Reply::ok(task_response_from(
            MACHINE,
            slot.get().map_or("", String::as_str),
            &session,
            &repo_url,
        ))
    });
    let _ = result_url.set(ctl.url("/result"));
    let args = vm::agent_args(fs.path(), work.path(), TC, &[], &ctl.url("/"));

    // Kill points: the first two in the bootstrap (while the guest boots,
    // and a little later; the second start redoes the bootstrap the first
    // kill cut short), then task start, build, upload and idle in turn,
    // each at a pseudo-random moment (a fixed LCG) inside that phase.
    let targets = ["task start", "build", "upload", "idle"];
    let mut seed: u64 = 0x5eed_cafe;
    let mut jitter = || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        Duration::from_millis((seed >> 33) % 800)
    };
    let mut kill_points: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut leaks_found: Vec<String> = Vec::new();
    for k in 0..KILLS {
        let mut agent = AgentProc::spawn(&args);
        let pid = agent.pid();
        let target = match k {
            0 | 1 => "bootstrap",
            _ => targets[k % targets.len()],
        };
        let started = Instant::now();
        let mut checked = false;
        loop {
            let log = agent.stderr();
            // Once this agent has reconciled (its first round), nothing of
            // a dead agent may remain.
            if !checked && log.contains("status: enumerating machines") {
                for leak in leaks(fs.path(), &run, pid) {
                    leaks_found.push(format!("after restart {k}: {leak}"));
                }
                // Namespaces and cgroups carry their agent's pid.
                for leak in vm::netns_of(TC).into_iter().chain(vm::cgroups_of(TC)) {
                    if owner(&leak).is_none_or(|p| p != pid) {
                        leaks_found.push(format!("after restart {k}: {leak}"));
                    }
                }
                checked = true;
            }
            let now = phase(&log);
            if now == target {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(300),
                "kill {k}: the agent never reached {target} (last: {now}):\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(jitter());
        let where_ = phase(&agent.stderr());
        *kill_points.entry(where_).or_default() += 1;
        agent.signal("KILL");
        agent.wait(Duration::from_secs(10));
        let gone = Instant::now() + Duration::from_secs(10);
        while !vm::qemu_processes(TC).is_empty() && Instant::now() < gone {
            std::thread::sleep(Duration::from_millis(100));
        }
        for q in vm::qemu_processes(TC) {
            leaks_found.push(format!("after kill {k} ({where_}): QEMU {q}"));
        }
        eprintln!(
            "kill {k}: aimed at {target}, landed in {where_} after {:.1?}",
            started.elapsed()
        );
    }

    // The last start: no new tasks; every handed-out one gets its result.
    ledger.lock().expect("ledger").open = false;
    let mut agent = AgentProc::spawn(&args);
    let pid = agent.pid();
    // It has reconciled and delivered what its predecessors left once it
    // asks for work.
    common::wait_for("the last agent polling", Duration::from_secs(600), || {
        agent
            .stderr()
            .contains("status: asking controllers")
            .then_some(())
    });
    common::wait_for("every task's result", Duration::from_secs(600), || {
        let l = ledger.lock().expect("ledger");
        l.handed
            .iter()
            .all(|s| l.results.contains_key(s))
            .then_some(())
    });
    for leak in leaks(fs.path(), &run, pid) {
        leaks_found.push(format!("at the end: {leak}"));
    }
    let log = agent.stop();
    for leak in leaks(fs.path(), &run, 0) {
        leaks_found.push(format!("after the last stop: {leak}"));
    }
    if !vm::qemu_processes(TC).is_empty() {
        leaks_found.push("QEMU after the last stop".into());
    }
    for leak in vm::netns_of(TC).into_iter().chain(vm::cgroups_of(TC)) {
        leaks_found.push(format!("after the last stop: {leak}"));
    }

    let l = ledger.lock().expect("ledger");
    let mut statuses: BTreeMap<String, usize> = BTreeMap::new();
    let mut without = Vec::new();
    let mut twice = Vec::new();
    for s in &l.handed {
        match l.results.get(s).map(Vec::as_slice) {
            None | Some([]) => without.push(s.clone()),
            Some([one]) => {
                let r = ResultRequestManifest::parse(one.as_bytes(), "result").expect("result");
                *statuses
                    .entry(r.result.status.as_str().to_string())
                    .or_default() += 1;
                assert!(
                    matches!(
                        r.result.status,
                        ResultStatus::Success | ResultStatus::Interrupt
                    ),
                    "{s}: {:?}",
                    r.result.status
                );
            }
            Some(many) => twice.push(format!("{s}: {} different results", many.len())),
        }
    }
    eprintln!(
        "chaos: {KILLS} kills at {kill_points:?}; {} tasks handed out, results {statuses:?}; \
         leaks found: {}; tasks without a result: {}; sessions with two results: {}",
        l.handed.len(),
        leaks_found.len(),
        without.len(),
        twice.len()
    );
    assert!(leaks_found.is_empty(), "leaks: {leaks_found:#?}\n{log}");
    assert!(without.is_empty(), "without a result: {without:?}\n{log}");
    assert!(twice.is_empty(), "{twice:?}\n{log}");
    assert!(
        l.handed.len() >= 5,
        "too few tasks to mean anything: {}",
        l.handed.len()
    );
    for p in ["bootstrap", "task start", "build", "upload", "idle"] {
        assert!(
            kill_points.contains_key(p),
            "no kill landed in {p}: {kill_points:?}"
        );
    }
    // The bootstrapped machine is whole (bootstraps killed halfway were
    // redone, never left half-made).
    let xp = fs
        .path()
        .join("default")
        .join(MACHINE)
        .join(format!("{MACHINE}-{TC}"));
    let manifest = std::fs::read(xp.join(bbot_agent::host::layout::MANIFEST_FILE))
        .expect("bootstrapped machine manifest");
    manifests::BootstrappedMachineManifest::parse(&manifest, "bootstrapped").expect("whole");
}
